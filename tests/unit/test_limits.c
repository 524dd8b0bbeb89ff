/* SPDX-License-Identifier: MIT */
/* Every decoder limit at limit - 1, limit and limit + 1 (PROTOCOL.md
 * "Limits"), with the shipped defaults: the frame body, records per batch
 * (changes and outcomes), version-vector entries, held and removed scopes,
 * every session string, the payload and its strings, every kind of
 * repeated payload field, and the decode budget. The first two are
 * accepted, the third gets its FSP_E* code and a message naming the field.
 * Then nesting: the schema is not recursive (checked on the descriptors),
 * so protobuf-c's recursion is bounded by it, and input cannot add depth:
 * unknown fields nested 100,000 deep are kept as opaque bytes, and groups
 * are refused. test_msg and test_frame hold the other halves of these
 * checks (the frame header's own limit, 4,097 held scopes, ...). */
#include <string.h>

#include "fsp_err.h"
#include "fsp_frame.h"
#include "fsp_merge.h"
#include "fsp_msg.h"
#include "fsp_payload.h"
#include "fsp_samples.h"
#include "harness.h"

/* The largest body these tests pack: a default-size frame and a little. */
#define BUF_MAX (FSP_DEFAULT_MAX_FRAME + 64u)
/* Entries for the count tests: the default batch limit plus one. */
#define COUNT_MAX (FSP_DEFAULT_MAX_BATCH + 1u)
/* Unknown field number used for nesting (not in the schema). */
#define UNKNOWN_FIELD 15u
#define NEST_DEPTH 100000u

static uint8_t buf[BUF_MAX];
static uint8_t pad[BUF_MAX];
static void *ptrs[COUNT_MAX];

/* Packs env into buf and returns its length. */
static size_t pack(const Fieldsync__Envelope *env) {
  size_t n = fieldsync__envelope__get_packed_size(env);

  ASSERT_LE(n, sizeof(buf));
  ASSERT_EQ(fieldsync__envelope__pack(env, buf), n);
  return n;
}

/* Decodes buf[0..n) with lim (NULL: the defaults) and returns the code;
 * the message is released and its budget must come back to zero. */
static int decode(size_t n, const struct fsp_limits *lim,
                  struct fsp_error *err) {
  struct fsp_limits dflt;
  struct fsp_msg m;
  int rc;

  if (lim == NULL) {
    fsp_limits_default(&dflt);
    lim = &dflt;
  }
  memset(err, 0, sizeof(*err));
  rc = fsp_msg_decode(&m, buf, n, lim, err);
  ASSERT(rc == 0 ? m.env != NULL : m.env == NULL);
  fsp_msg_close(&m);
  ASSERT_EQ(m.budget.used, 0);
  return rc;
}

/* Asserts that decoding env at limit - 1 and at the limit succeeds and one
 * over it fails with want, naming what. set(env, k) puts k into the
 * limited quantity; limit is where it stops being accepted. */
static void triple(Fieldsync__Envelope *env, void (*set)(size_t k),
                   size_t limit, int want, const char *what) {
  struct fsp_error err;
  size_t k;

  for (k = limit - 1; k <= limit + 1; k++) {
    int rc;

    set(k);
    rc = decode(pack(env), NULL, &err);
    if (k <= limit && rc != 0)
      test_fail(__FILE__, __LINE__, "%s at %zu (limit %zu): %s: %s", what, k,
                limit, fsp_err_name(rc), err.msg);
    if (k > limit && rc != want)
      test_fail(__FILE__, __LINE__, "%s at %zu (limit %zu): want %s, got %s",
                what, k, limit, fsp_err_name(want), fsp_err_name(rc));
    if (k > limit && strstr(err.msg, what) == NULL)
      test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", err.msg,
                what);
  }
  printf("# %s: %zu and %zu accepted, %zu refused with %s\n", what, limit - 1,
         limit, limit + 1, fsp_err_name(want));
}

/* ---- frame body -------------------------------------------------------- */

static size_t varint_len(uint64_t v) {
  size_t n = 1;

  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/* A body of max_frame - 1 and max_frame bytes decodes; max_frame + 1 is
 * FSP_EFRAME_TOO_BIG, checked before any unpacking, and the encoder
 * refuses to make it. With a small limit and with the 4 MiB default. */
TEST(limit_frame_body) {
  static const uint32_t limits[] = {1000u, FSP_DEFAULT_MAX_FRAME};
  struct sample_envelope s;
  struct sample_pad sp;
  struct fsp_limits lim;
  struct fsp_error err;
  size_t i;
  size_t k;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_BYE);
  for (i = 0; i < sizeof(limits) / sizeof(limits[0]); i++) {
    fsp_limits_default(&lim);
    lim.max_frame = limits[i];
    for (k = limits[i] - 1; k <= (size_t)limits[i] + 1; k++) {
      uint8_t *frame = NULL;
      size_t len = 0;
      int rc;

      ASSERT(sample_envelope_pad(&s.env, k, &sp, pad, sizeof(pad)));
      rc = decode(pack(&s.env), &lim, &err);
      ASSERT_EQ(rc, k <= limits[i] ? 0 : FSP_EFRAME_TOO_BIG);
      rc = fsp_msg_encode_frame(&s.env, limits[i], &frame, &len);
      ASSERT_EQ(rc, k <= limits[i] ? 0 : FSP_EFRAME_TOO_BIG);
      ASSERT_EQ(len, k <= limits[i] ? k + FSP_FRAME_HEADER : 0);
      fsp_free(frame);
    }
    printf("# frame body: %u and %u bytes decode, %u is FSP_EFRAME_TOO_BIG\n",
           limits[i] - 1, limits[i], limits[i] + 1);
  }
  s.env.base.n_unknown_fields = 0;
  s.env.base.unknown_fields = NULL;
}

/* ---- records per batch ------------------------------------------------- */

static struct sample_envelope batch_env;

static void set_push_changes(size_t k) {
  size_t i;

  for (i = 0; i < k; i++)
    ptrs[i] = &batch_env.ch[0].c;
  batch_env.push.n_changes = k;
  batch_env.push.changes = (Fieldsync__Change **)ptrs;
}

static void set_changes_changes(size_t k) {
  size_t i;

  for (i = 0; i < k; i++)
    ptrs[i] = &batch_env.ch[0].c;
  batch_env.changes.n_changes = k;
  batch_env.changes.changes = (Fieldsync__Change **)ptrs;
}

static void set_outcomes(size_t k) {
  size_t i;

  for (i = 0; i < k; i++)
    ptrs[i] = &batch_env.outcome[0];
  batch_env.ack.n_outcomes = k;
  batch_env.ack.outcomes = (Fieldsync__RecordOutcome **)ptrs;
}

/* max_batch (4,096): changes per Push and per Changes, outcomes per
 * PushAck. */
TEST(limit_batch) {
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PUSH);
  triple(&batch_env.env, set_push_changes, FSP_DEFAULT_MAX_BATCH,
         FSP_ETOO_MANY, "push.changes");
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  triple(&batch_env.env, set_changes_changes, FSP_DEFAULT_MAX_BATCH,
         FSP_ETOO_MANY, "changes.changes");
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK);
  triple(&batch_env.env, set_outcomes, FSP_DEFAULT_MAX_BATCH, FSP_ETOO_MANY,
         "push_ack.outcomes");
}

/* ---- version vectors --------------------------------------------------- */

static Fieldsync__VvEntry vv_e[FSP_DEFAULT_MAX_VV + 1];
static Fieldsync__VvEntry *vv_p[FSP_DEFAULT_MAX_VV + 1];
static uint8_t vv_r[FSP_DEFAULT_MAX_VV + 1][16];

static void set_vv(size_t k) {
  size_t i;

  for (i = 0; i < k; i++) {
    fieldsync__vv_entry__init(&vv_e[i]);
    memset(vv_r[i], 0x5a, 16);
    vv_r[i][14] = (uint8_t)(i >> 8); /* ascending */
    vv_r[i][15] = (uint8_t)i;
    vv_e[i].has_replica = 1;
    vv_e[i].replica.data = vv_r[i];
    vv_e[i].replica.len = 16;
    vv_e[i].has_counter = 1;
    vv_e[i].counter = 1 + i;
    vv_p[i] = &vv_e[i];
  }
  batch_env.ch[0].v.n_vv = k;
  batch_env.ch[0].v.vv = vv_p;
}

/* max_vv (256) entries in a pushed version, in a pulled one, and through
 * the conversion to struct fsp_vv. */
TEST(limit_vv) {
  struct fsp_error err;
  struct fsp_vv v;
  size_t k;

  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PUSH);
  triple(&batch_env.env, set_vv, FSP_DEFAULT_MAX_VV, FSP_ETOO_MANY,
         "push.changes[0].vv");
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  triple(&batch_env.env, set_vv, FSP_DEFAULT_MAX_VV, FSP_ETOO_MANY,
         "changes.changes[0].vv");
  fsp_vv_init(&v);
  for (k = FSP_DEFAULT_MAX_VV - 1; k <= FSP_DEFAULT_MAX_VV + 1; k++) {
    set_vv(k);
    ASSERT_EQ(fsp_msg_vv_from_pb(&v, vv_p, k, FSP_DEFAULT_MAX_VV, &err),
              k <= FSP_DEFAULT_MAX_VV ? 0 : FSP_ETOO_MANY);
    if (k <= FSP_DEFAULT_MAX_VV)
      ASSERT_EQ(v.n, k);
  }
  fsp_vv_close(&v);
}

/* ---- scope lists ------------------------------------------------------- */

static Fieldsync__ScopeKey sk[FSP_MAX_HELD_SCOPES + 1];
static uint8_t sk_id[FSP_MAX_HELD_SCOPES + 1][16];

static void scopes_fill(size_t k) {
  size_t i;

  for (i = 0; i < k; i++) {
    fieldsync__scope_key__init(&sk[i]);
    memset(sk_id[i], 0, 16);
    sk_id[i][14] = (uint8_t)(i >> 8);
    sk_id[i][15] = (uint8_t)i;
    sk[i].has_kind = 1;
    sk[i].kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
    sk[i].has_id = 1;
    sk[i].id.data = sk_id[i];
    sk[i].id.len = 16;
    ptrs[i] = &sk[i];
  }
}

static void set_held(size_t k) {
  scopes_fill(k);
  batch_env.pull.n_held_scopes = k;
  batch_env.pull.held_scopes = (Fieldsync__ScopeKey **)ptrs;
}

static void set_removed(size_t k) {
  scopes_fill(k);
  batch_env.changes.n_removed_scopes = k;
  batch_env.changes.removed_scopes = (Fieldsync__ScopeKey **)ptrs;
}

/* FSP_MAX_HELD_SCOPES (4,096) in Pull.held_scopes and
 * Changes.removed_scopes. */
TEST(limit_scope_lists) {
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PULL);
  triple(&batch_env.env, set_held, FSP_MAX_HELD_SCOPES, FSP_ETOO_MANY,
         "pull.held_scopes");
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  triple(&batch_env.env, set_removed, FSP_MAX_HELD_SCOPES, FSP_ETOO_MANY,
         "changes.removed_scopes");
}

/* ---- session strings --------------------------------------------------- */

/* The session strings of PROTOCOL.md "Limits" (max_string), each as the
 * body that carries it and the path a refusal names. */
static const struct {
  Fieldsync__Envelope__BodyCase body;
  const char *path;
} strings[] = {
    {FIELDSYNC__ENVELOPE__BODY_HELLO, "hello.device_token"},
    {FIELDSYNC__ENVELOPE__BODY_HELLO, "hello.client_version"},
    {FIELDSYNC__ENVELOPE__BODY_WELCOME, "welcome.user"},
    {FIELDSYNC__ENVELOPE__BODY_WELCOME, "welcome.server_version"},
    {FIELDSYNC__ENVELOPE__BODY_PUSH, "push.changes[1].version.author"},
    {FIELDSYNC__ENVELOPE__BODY_CHANGES, "changes.changes[1].version.author"},
    {FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, "push_ack.outcomes[1].reason"},
    {FIELDSYNC__ENVELOPE__BODY_ERROR, "error.message"},
    {FIELDSYNC__ENVELOPE__BODY_BYE, "bye.reason"},
};
static size_t string_case;
static char text[FSP_DEFAULT_MAX_STRING + 2];

static void set_string(size_t k) {
  struct sample_envelope *s = &batch_env;
  size_t i;

  /* Two-byte characters up to the last byte: the limit is in bytes. */
  memset(text, 0, sizeof(text));
  for (i = 0; i + 1 < k; i += 2) {
    text[i] = (char)0xc3;
    text[i + 1] = (char)0xa9; /* U+00E9 */
  }
  if (k % 2 == 1)
    text[k - 1] = 'x';
  switch (string_case) {
  case 0:
    s->hello.device_token = text;
    break;
  case 1:
    s->hello.client_version = text;
    break;
  case 2:
    s->welcome.user = text;
    break;
  case 3:
    s->welcome.server_version = text;
    break;
  case 4:
  case 5:
    s->ch[1].v.author = text;
    break;
  case 6:
    s->outcome[1].reason = text;
    break;
  case 7:
    s->error.message = text;
    break;
  default:
    s->bye.reason = text;
    break;
  }
}

/* max_string (4,096 bytes) for every session string. */
TEST(limit_session_strings) {
  for (string_case = 0; string_case < sizeof(strings) / sizeof(strings[0]);
       string_case++) {
    sample_envelope_init(&batch_env, strings[string_case].body);
    triple(&batch_env.env, set_string, FSP_DEFAULT_MAX_STRING, FSP_ETOO_LONG,
           strings[string_case].path);
  }
}

/* ---- payloads ---------------------------------------------------------- */

static uint8_t payload[FSP_DEFAULT_MAX_PAYLOAD + 1];

static void set_payload(size_t k) {
  struct sample_change *c = &batch_env.ch[1];

  c->v.payload.data = payload;
  c->v.payload.len = k;
  c->v.hash.data = c->hash;
  fsp_merge_hash(false, payload, k, c->hash);
}

/* Decodes p[0..n) as col's payload with the default limits. */
static int payload_decode(const struct fsp_collection *col, const uint8_t *p,
                          size_t n, struct fsp_error *err) {
  struct fsp_limits lim;
  struct fsp_budget b;
  ProtobufCMessage *msg = NULL;
  int rc;

  fsp_limits_default(&lim);
  memset(err, 0, sizeof(*err));
  rc = fsp_payload_decode(col, p, n, &lim, &b, &msg, err);
  if (rc == 0) {
    ASSERT(msg != NULL);
    fsp_payload_free(msg, &b);
    ASSERT_EQ(b.used, 0);
  }
  return rc;
}

/* max_payload (1 MiB): the bytes of a version's payload in the envelope,
 * then a whole Observation payload of that size through payload
 * validation, whose one long string is also at its own limit's edge. */
TEST(limit_payload) {
  const struct fsp_collection *col =
      fsp_payload_by_id(FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION);
  Fieldsync__Observation o = FIELDSYNC__OBSERVATION__INIT;
  static char evidence[FSP_DEFAULT_MAX_PAYLOAD + 2];
  static uint8_t visit[16] = {1, 2, 3};
  struct fsp_error err;
  size_t k;

  memset(payload, 0xa5, sizeof(payload));
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PUSH);
  triple(&batch_env.env, set_payload, FSP_DEFAULT_MAX_PAYLOAD, FSP_ETOO_LONG,
         "push.changes[1].version.payload");

  o.has_visit_id = 1;
  o.visit_id.data = visit;
  o.visit_id.len = 16;
  o.evidence_text = evidence;
  for (k = FSP_DEFAULT_MAX_PAYLOAD - 1; k <= FSP_DEFAULT_MAX_PAYLOAD + 1; k++) {
    size_t n = 0;
    size_t size;

    /* The longest evidence text that keeps the payload within k bytes. */
    memset(evidence, 'e', sizeof(evidence) - 1);
    evidence[sizeof(evidence) - 1] = '\0';
    evidence[k] = '\0';
    while ((size = fieldsync__observation__get_packed_size(&o)) > k)
      evidence[strlen(evidence) - 1] = '\0';
    n = fieldsync__observation__pack(&o, payload);
    ASSERT_EQ(n, size);
    ASSERT_EQ(n, k);
    ASSERT_EQ(payload_decode(col, payload, n, &err),
              k <= FSP_DEFAULT_MAX_PAYLOAD ? 0 : FSP_ETOO_LONG);
  }
  printf("# observation payload: %u and %u bytes valid, %u FSP_ETOO_LONG\n",
         FSP_DEFAULT_MAX_PAYLOAD - 1, FSP_DEFAULT_MAX_PAYLOAD,
         FSP_DEFAULT_MAX_PAYLOAD + 1);
}

/* Every kind of repeated payload field (string, enum, message) at
 * max_batch - 1, max_batch and max_batch + 1 entries. */
TEST(limit_repeated_payload_fields) {
  static uint8_t id[16] = {9, 8, 7};
  Fieldsync__Observation obs = FIELDSYNC__OBSERVATION__INIT;
  Fieldsync__Visit visit = FIELDSYNC__VISIT__INIT;
  Fieldsync__Concern concern = FIELDSYNC__CONCERN__INIT;
  Fieldsync__InterviewNote note = FIELDSYNC__INTERVIEW_NOTE__INIT;
  Fieldsync__Service svc = FIELDSYNC__SERVICE__INIT;
  Fieldsync__ThemeNote theme = FIELDSYNC__THEME_NOTE__INIT;
  Fieldsync__CouncilPlacement place = FIELDSYNC__COUNCIL_PLACEMENT__INIT;
  static Fieldsync__AbuseType abuse[COUNT_MAX];
  static uint8_t out[1 << 17];
  const struct {
    const ProtobufCMessage *msg;
    int collection;
    const char *field;
  } cases[] = {
      {&obs.base, FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION, "case_refs"},
      {&visit.base, FIELDSYNC__COLLECTION__COLLECTION_VISIT, "inspectors"},
      {&concern.base, FIELDSYNC__COLLECTION__COLLECTION_CONCERN,
       "abuse_types"},
      {&note.base, FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE, "themes"},
      {&svc.base, FIELDSYNC__COLLECTION__COLLECTION_SERVICE,
       "council_placements"},
  };
  struct fsp_error err;
  size_t c;
  size_t i;

  for (i = 0; i < COUNT_MAX; i++)
    abuse[i] = FIELDSYNC__ABUSE_TYPE__ABUSE_NEGLECT;
  theme.has_theme = 1;
  theme.theme = FIELDSYNC__THEME__THEME_FOOD;
  place.council = "Leeds";
  obs.has_visit_id = note.has_visit_id = 1;
  obs.visit_id.data = note.visit_id.data = id;
  obs.visit_id.len = note.visit_id.len = 16;
  visit.has_service_id = concern.has_service_id = 1;
  visit.service_id.data = concern.service_id.data = id;
  visit.service_id.len = concern.service_id.len = 16;
  for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    const struct fsp_collection *col = fsp_payload_by_id(cases[c].collection);
    size_t k;

    for (k = FSP_DEFAULT_MAX_BATCH - 1; k <= FSP_DEFAULT_MAX_BATCH + 1; k++) {
      size_t n;
      int rc;

      for (i = 0; i < k; i++)
        ptrs[i] = c == 3 ? (void *)&theme : c == 4 ? (void *)&place : "C1";
      obs.n_case_refs = visit.n_inspectors = concern.n_abuse_types = 0;
      note.n_themes = svc.n_council_placements = 0;
      switch (c) {
      case 0:
        obs.n_case_refs = k;
        obs.case_refs = (char **)ptrs;
        break;
      case 1:
        visit.n_inspectors = k;
        visit.inspectors = (char **)ptrs;
        break;
      case 2:
        concern.n_abuse_types = k;
        concern.abuse_types = abuse;
        break;
      case 3:
        note.n_themes = k;
        note.themes = (Fieldsync__ThemeNote **)ptrs;
        break;
      default:
        svc.n_council_placements = k;
        svc.council_placements = (Fieldsync__CouncilPlacement **)ptrs;
        break;
      }
      n = protobuf_c_message_get_packed_size(cases[c].msg);
      ASSERT_LE(n, sizeof(out));
      ASSERT_EQ(protobuf_c_message_pack(cases[c].msg, out), n);
      rc = payload_decode(col, out, n, &err);
      if (rc != (k <= FSP_DEFAULT_MAX_BATCH ? 0 : FSP_ETOO_MANY))
        test_fail(__FILE__, __LINE__, "%s.%s with %zu entries: %s: %s",
                  col->name, cases[c].field, k, fsp_err_name(rc), err.msg);
      if (rc != 0)
        ASSERT(strstr(err.msg, cases[c].field) != NULL);
    }
    printf("# %s.%s: %u and %u entries valid, %u FSP_ETOO_MANY\n", col->name,
           cases[c].field, FSP_DEFAULT_MAX_BATCH - 1, FSP_DEFAULT_MAX_BATCH,
           FSP_DEFAULT_MAX_BATCH + 1);
  }
}

/* ---- the decode budget ------------------------------------------------- */

/* The budget is exact: a message whose unpack peaks at P bytes decodes
 * with budget P and is FSP_EBUDGET with P - 1 (envelope and payload). */
TEST(limit_budget_exact) {
  static const Fieldsync__Envelope__BodyCase bodies[] = {
      FIELDSYNC__ENVELOPE__BODY_HELLO, FIELDSYNC__ENVELOPE__BODY_PUSH,
      FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, FIELDSYNC__ENVELOPE__BODY_CHANGES};
  const struct fsp_collection *col =
      fsp_payload_by_id(FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION);
  struct fsp_limits lim;
  struct fsp_error err;
  size_t i;

  for (i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
    struct fsp_msg m;
    size_t n;
    size_t peak;

    sample_envelope_init(&batch_env, bodies[i]);
    n = pack(&batch_env.env);
    fsp_limits_default(&lim);
    ASSERT_OK(fsp_msg_decode(&m, buf, n, &lim, &err));
    peak = m.budget.peak;
    fsp_msg_close(&m);
    lim.budget = peak;
    ASSERT_OK(decode(n, &lim, &err));
    lim.budget = peak - 1;
    ASSERT_EQ(decode(n, &lim, &err), FSP_EBUDGET);
    printf("# %s: budget %zu decodes, %zu is FSP_EBUDGET\n",
           fsp_msg_body_name(&batch_env.env), peak, peak - 1);
  }
  {
    const struct sample_change *c = &batch_env.ch[0];
    struct fsp_budget b;
    ProtobufCMessage *msg;

    fsp_limits_default(&lim);
    ASSERT_OK(fsp_payload_decode(col, c->payload, c->v.payload.len, &lim, &b,
                                 &msg, &err));
    lim.budget = b.peak;
    fsp_payload_free(msg, &b);
    ASSERT_OK(fsp_payload_decode(col, c->payload, c->v.payload.len, &lim, &b,
                                 &msg, &err));
    fsp_payload_free(msg, &b);
    lim.budget--;
    ASSERT_EQ(fsp_payload_decode(col, c->payload, c->v.payload.len, &lim, &b,
                                 &msg, &err),
              FSP_EBUDGET);
  }
}

/* ---- nesting ----------------------------------------------------------- */

/* The deepest chain of message fields below d (d itself is depth 1).
 * Fails the test on a cycle: a recursive message would let input choose
 * protobuf-c's recursion depth. */
static unsigned schema_depth(const ProtobufCMessageDescriptor *d,
                             const ProtobufCMessageDescriptor **stack,
                             unsigned on_stack) {
  unsigned best = 1;
  unsigned i;

  for (i = 0; i < on_stack; i++)
    if (stack[i] == d)
      test_fail(__FILE__, __LINE__, "%s is recursive", d->name);
  ASSERT_LT(on_stack, 32);
  stack[on_stack] = d;
  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];

    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      unsigned sub = 1 + schema_depth(f->descriptor, stack, on_stack + 1);
      if (sub > best)
        best = sub;
    }
  }
  return best;
}

/* The schema bounds the nesting: Envelope > Push/Changes > Change >
 * Version > VvEntry is the deepest chain (5), and a payload's is 2
 * (Service > CouncilPlacement, InterviewNote > ThemeNote). No message is
 * recursive. */
TEST(nesting_bounded_by_schema) {
  const ProtobufCMessageDescriptor *stack[32];
  const struct fsp_collection *cols;
  unsigned deepest = 0;
  size_t n;
  size_t i;

  ASSERT_EQ(schema_depth(&fieldsync__envelope__descriptor, stack, 0), 5);
  cols = fsp_payload_collections(&n);
  ASSERT_EQ(n, 8);
  for (i = 0; i < n; i++) {
    unsigned d = schema_depth(cols[i].desc, stack, 0);
    ASSERT_LE(d, 2);
    if (d > deepest)
      deepest = d;
  }
  ASSERT_EQ(deepest, 2);
  /* Payload messages have no singular message field, so protobuf's merge
   * (see nesting_repeated_singular_refused) cannot happen in them. */
  for (i = 0; i < n; i++) {
    unsigned f;

    for (f = 0; f < cols[i].desc->n_fields; f++)
      if (cols[i].desc->fields[f].type == PROTOBUF_C_TYPE_MESSAGE)
        ASSERT_EQ(cols[i].desc->fields[f].label, PROTOBUF_C_LABEL_REPEATED);
  }
  printf("# schema nesting: envelope depth 5, payload depth %u, no "
         "recursion\n",
         deepest);
}

/* Writes NEST_DEPTH length-delimited UNKNOWN_FIELD fields, each inside
 * the previous one, ending at out + cap; returns where they start. */
static uint8_t *nest_unknown(uint8_t *out, size_t cap) {
  uint8_t *p = out + cap;
  size_t i;

  for (i = 0; i < NEST_DEPTH; i++) {
    size_t len = (size_t)(out + cap - p);
    uint8_t v[10];
    size_t nv = 0;

    do {
      v[nv++] = (uint8_t)((len & 0x7f) | (len >= 0x80 ? 0x80 : 0));
      len >>= 7;
    } while (len > 0);
    ASSERT((size_t)(p - out) > nv + 1);
    p -= nv;
    memcpy(p, v, nv);
    *--p = (uint8_t)(UNKNOWN_FIELD << 3 | PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED);
  }
  return p;
}

/* Input cannot add depth: unknown fields nested 100,000 deep, in the
 * envelope and inside a pushed version, are kept as opaque bytes (no
 * recursion, bounded budget), and groups nested as deep are refused as
 * FSP_EDECODE; a payload the same. */
TEST(nesting_unknown_fields_flat) {
  const struct fsp_collection *col =
      fsp_payload_by_id(FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION);
  ProtobufCMessageUnknownField uf;
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  uint8_t *nest = nest_unknown(pad, sizeof(pad));
  size_t nest_len = (size_t)(pad + sizeof(pad) - nest);
  size_t n;
  size_t i;

  /* An envelope whose tail is the nest. */
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_BYE);
  n = pack(&batch_env.env);
  ASSERT_LE(n + nest_len, sizeof(buf));
  memcpy(buf + n, nest, nest_len);
  n += nest_len;
  fsp_limits_default(&lim);
  ASSERT_OK(fsp_msg_decode(&m, buf, n, &lim, &err));
  ASSERT_EQ(m.env->base.n_unknown_fields, 1);
  ASSERT_LE(m.budget.peak, 2 * n + 4096);
  printf("# %u nested unknown fields (%zu bytes): decoded flat, peak %zu "
         "bytes\n",
         NEST_DEPTH, n, m.budget.peak);
  fsp_msg_close(&m);

  /* The same inside a version of a Push: the envelope's own depth is 5.
   * The outermost level is the unknown field (protobuf-c keeps its length
   * prefix in the data, without its tag). */
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PUSH);
  memset(&uf, 0, sizeof(uf));
  uf.tag = UNKNOWN_FIELD;
  uf.wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
  uf.len = nest_len - 1;
  uf.data = nest + 1;
  batch_env.ch[1].v.base.n_unknown_fields = 1;
  batch_env.ch[1].v.base.unknown_fields = &uf;
  n = pack(&batch_env.env);
  ASSERT_OK(fsp_msg_decode(&m, buf, n, &lim, &err));
  ASSERT_EQ(m.env->push->changes[1]->version->base.n_unknown_fields, 1);
  fsp_msg_close(&m);

  /* A payload ending in the nest still validates. */
  {
    const struct sample_change *c = &batch_env.ch[0];
    n = c->v.payload.len;
    memcpy(buf, c->payload, n);
    ASSERT_LE(n + nest_len, sizeof(buf));
    memcpy(buf + n, nest, nest_len);
    ASSERT_OK(payload_decode(col, buf, n + nest_len, &err));
  }

  /* Groups (wire types 3, start, and 4, end; protobuf-c names neither)
   * nested as deep: refused, not recursed. */
  for (i = 0; i < NEST_DEPTH; i++)
    buf[i] = (uint8_t)(UNKNOWN_FIELD << 3 | 3u);
  for (i = 0; i < NEST_DEPTH; i++)
    buf[NEST_DEPTH + i] = (uint8_t)(UNKNOWN_FIELD << 3 | 4u);
  ASSERT_EQ(decode(2 * NEST_DEPTH, NULL, &err), FSP_EDECODE);
  ASSERT_EQ(payload_decode(col, buf, 2 * NEST_DEPTH, &err), FSP_EBAD_PAYLOAD);
}

/* A oneof body sent again and again replaces the one before (protobuf-c
 * frees it): 30,000 copies of a Hello leave one, at a cost linear in the
 * body. */
TEST(nesting_repeated_body_merges) {
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  size_t one;
  size_t n = 0;
  size_t i;

  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_HELLO);
  one = pack(&batch_env.env);
  ASSERT_LE(one * 30000, sizeof(pad));
  for (i = 0; i < 30000; i++) {
    memcpy(pad + n, buf, one);
    n += one;
  }
  memcpy(buf, pad, n);
  fsp_limits_default(&lim);
  ASSERT_OK(fsp_msg_decode(&m, buf, n, &lim, &err));
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_HELLO);
  printf("# 30,000 hellos in one body (%zu bytes): one hello, peak %zu "
         "bytes\n",
         n, m.budget.peak);
  ASSERT_LE(m.budget.peak, n);
  fsp_msg_close(&m);
}

/* Appends a varint to p; returns its length. */
static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;

  do {
    p[n++] = (uint8_t)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
    v >>= 7;
  } while (v > 0);
  return n;
}

/* Regression: a singular message field repeated in one message is merged
 * by protobuf-c at O(n^2) cost (Change.version 40,000 times took 13 s to
 * unpack, a 4 MiB Push minutes, on fieldsyncd's loop thread). It is
 * refused before unpacking, at every depth; repeated and oneof fields are
 * unaffected. */
TEST(nesting_repeated_singular_refused) {
  static const struct {
    uint8_t tag;     /* the repeated field inside a Change */
    const char *name;
  } cases[] = {{0x1a, "version"}, {0x0a, "key"}, {0x12, "scope"}};
  const size_t copies = 200000;
  struct fsp_error err;
  size_t c;

  for (c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
    size_t change_len = 4 * copies;
    size_t n = 0;
    size_t i;

    /* Envelope{1, push{batch_id 1, changes{<field>{0a 00} x copies}}} */
    buf[n++] = 0x08;
    buf[n++] = 0x01;
    buf[n++] = 0x22;
    n += put_varint(buf + n, 2 + 1 + varint_len(change_len) + change_len);
    buf[n++] = 0x08;
    buf[n++] = 0x01;
    buf[n++] = 0x12;
    n += put_varint(buf + n, change_len);
    ASSERT_LE(n + change_len, sizeof(buf));
    for (i = 0; i < copies; i++) {
      buf[n++] = cases[c].tag;
      buf[n++] = 0x02;
      buf[n++] = 0x0a;
      buf[n++] = 0x00;
    }
    ASSERT_EQ(decode(n, NULL, &err), FSP_EDECODE);
    if (strstr(err.msg, cases[c].name) == NULL)
      test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", err.msg,
                cases[c].name);
  }
  /* Sent twice is enough to be refused. */
  sample_envelope_init(&batch_env, FIELDSYNC__ENVELOPE__BODY_PULL);
  scopes_fill(1);
  batch_env.pull.backfill_scope = &sk[0];
  {
    size_t n = pack(&batch_env.env);
    uint8_t field[64];
    size_t k;

    ASSERT_OK(decode(n, NULL, &err));
    /* Append the backfill_scope field (Pull field 4) once more, inside the
     * pull body: rebuild the envelope as version, pull{body + field}. */
    k = 0;
    field[k++] = 0x22;
    field[k++] = 18;
    field[k++] = 0x08;
    field[k++] = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
    field[k++] = 0x12;
    field[k++] = 16;
    memset(field + k, 7, 16);
    k += 16;
    {
      size_t pull_len = fieldsync__pull__get_packed_size(&batch_env.pull);
      size_t m = 0;

      buf[m++] = 0x08;
      buf[m++] = 0x01;
      buf[m++] = 0x32; /* Envelope.pull */
      m += put_varint(buf + m, pull_len + k);
      m += fieldsync__pull__pack(&batch_env.pull, buf + m);
      memcpy(buf + m, field, k);
      m += k;
      ASSERT_EQ(decode(m, NULL, &err), FSP_EDECODE);
      ASSERT(strstr(err.msg, "backfill_scope") != NULL);
    }
  }
  printf("# a singular message field sent twice (or %zu times): "
         "FSP_EDECODE before unpacking\n",
         copies);
}

TEST_LIST(TEST_ENTRY(limit_frame_body)
          TEST_ENTRY(limit_batch)
          TEST_ENTRY(limit_vv)
          TEST_ENTRY(limit_scope_lists)
          TEST_ENTRY(limit_session_strings)
          TEST_ENTRY(limit_payload)
          TEST_ENTRY(limit_repeated_payload_fields)
          TEST_ENTRY(limit_budget_exact)
          TEST_ENTRY(nesting_bounded_by_schema)
          TEST_ENTRY(nesting_unknown_fields_flat)
          TEST_ENTRY(nesting_repeated_body_merges)
          TEST_ENTRY(nesting_repeated_singular_refused))
