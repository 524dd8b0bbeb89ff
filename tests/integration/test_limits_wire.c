/* SPDX-License-Identifier: MIT */
/* fieldsyncd's limits on the wire, each at limit - 1, limit and limit + 1
 * (PROTOCOL.md "Limits"): the frame size, records per Push and per Pull,
 * version-vector entries, the payload, session strings and held scopes,
 * with the shipped defaults and with lowered ones (--max-frame,
 * --max-batch). The first two are served; the third gets its Error
 * (ERR_FRAME_TOO_LARGE, ERR_LIMIT_EXCEEDED) and a closed connection, while
 * a healthy session, open throughout, still pushes and pulls. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsp_frame.h"
#include "fsp_merge.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"
#include "proc.h"
#include "wire.h"

#define BIG_MAX (FSP_DEFAULT_MAX_FRAME + 64u)

static const char *fieldsyncd;
static const char *admin;
static char dir[256];
static char db[320];
static char tok_boss[128]; /* head_office */
static char tok_ann[128];  /* inspector, assigned to nothing */
static struct test_server srv;
static uint8_t bulk[BIG_MAX];
static uint32_t next_record = 1; /* record numbers for sample changes */
static size_t refusals; /* limit + 1 cases refused (each test forks) */

/* A new store with a head_office and an inspector device, served with the
 * extra flags (NULL: the defaults). */
static void start(const char *const *extra) {
  static int stores;
  int n;

  /* One directory per test (removed at exit), one store per start. */
  if (stores == 0)
    tmpdir_make(dir, sizeof(dir), "fs-limits");
  n = snprintf(db, sizeof(db), "%s/server-%d.db", dir, ++stores);
  ASSERT(n > 0 && (size_t)n < sizeof(db));
  admin_user_device(admin, db, "boss", "head_office", tok_boss,
                    sizeof(tok_boss));
  admin_user_device(admin, db, "ann", "inspector", tok_ann, sizeof(tok_ann));
  tmpdir_kill_at_exit(&srv);
  server_start(&srv, fieldsyncd, db, extra);
}

static void stop(void) { ASSERT_EQ(server_stop(&srv), 0); }

/* Reads one reply (a bulk read: replies here can be large). */
static void reply(int fd, struct fsp_msg *m,
                  Fieldsync__Envelope__BodyCase want) {
  struct wire_reader *r = malloc(sizeof(*r));

  ASSERT(r != NULL);
  wire_reader_init(r, fd);
  ASSERT(wire_reader_next(r, m));
  ASSERT_EQ(r->off, r->len); /* nothing after the reply */
  wire_reader_close(r);
  free(r);
  if (m->env->body_case != want)
    test_fail(__FILE__, __LINE__, "want %d, got %s: %s", (int)want,
              fsp_msg_body_name(m->env),
              m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
                  ? m->env->error->message
                  : "");
}

/* Sends hello (whatever it carries) and expects a Welcome. */
static int open_with(struct sample_envelope *hello) {
  struct fsp_msg m;
  int fd = wire_dial(srv.port);

  wire_send_env(fd, &hello->env);
  reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_WELCOME);
  fsp_msg_close(&m);
  return fd;
}

static int session(const char *tok) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = (char *)tok;
  return open_with(&s);
}

/* Sends env on a new session of tok, expects Error code and a close. */
static void refused_in_session(const char *tok, Fieldsync__Envelope *env,
                               int code) {
  int fd = session(tok);

  wire_send_env(fd, env);
  (void)wire_expect_error(fd, code);
  refusals++;
}

/* Pushes changes on fd and expects one outcome each, all of want. */
static void push_expect(int fd, Fieldsync__Change **changes, size_t n,
                        Fieldsync__Outcome want) {
  struct sample_envelope s;
  struct fsp_msg m;
  size_t i;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.push.n_changes = n;
  s.push.changes = changes;
  wire_send_env(fd, &s.env);
  reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK);
  ASSERT_EQ(m.env->push_ack->n_outcomes, n);
  for (i = 0; i < n; i++)
    if (m.env->push_ack->outcomes[i]->outcome != want)
      test_fail(__FILE__, __LINE__, "outcome %zu of %zu: %d, want %d: %s", i,
                n, (int)m.env->push_ack->outcomes[i]->outcome, (int)want,
                m.env->push_ack->outcomes[i]->reason != NULL
                    ? m.env->push_ack->outcomes[i]->reason
                    : "");
  fsp_msg_close(&m);
}

/* The healthy session's round: a push of two new records, a pull. */
static void healthy_round(int fd) {
  struct sample_change *c = calloc(2, sizeof(*c));
  Fieldsync__Change *cp[2];
  struct sample_envelope s;
  struct fsp_msg m;

  ASSERT(c != NULL);
  sample_change_init(&c[0], next_record++, 16);
  sample_change_init(&c[1], next_record++, 16);
  cp[0] = &c[0].c;
  cp[1] = &c[1].c;
  push_expect(fd, cp, 2, FIELDSYNC__OUTCOME__OUTCOME_APPLIED);
  free(c);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  s.pull.max_records = 1;
  wire_send_env(fd, &s.env);
  reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  ASSERT_EQ(m.env->changes->n_changes, 1);
  fsp_msg_close(&m);
}

/* n sample changes of new records, on the heap (free with free). */
static struct sample_change *changes_new(size_t n, Fieldsync__Change ***cp) {
  struct sample_change *c = calloc(n, sizeof(*c));
  size_t i;

  *cp = calloc(n, sizeof(**cp));
  ASSERT(c != NULL && *cp != NULL);
  for (i = 0; i < n; i++) {
    sample_change_init(&c[i], next_record++, 8);
    (*cp)[i] = &c[i].c;
  }
  return c;
}

/* ---- frame size ---------------------------------------------------------*/

/* Hello and then Pull bodies of exactly max - 1 and max bytes are served;
 * a header announcing max + 1 gets ERR_FRAME_TOO_LARGE, before Hello and
 * inside a session. */
static void frame_triple(int healthy, uint32_t max) {
  struct sample_envelope s;
  struct sample_pad sp;
  struct fsp_msg m;
  uint8_t hdr[FSP_FRAME_HEADER];
  size_t k;
  int fd;

  for (k = max - 1; k <= max; k++) {
    uint8_t *frame;
    size_t len;

    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
    s.hello.device_token = tok_boss;
    ASSERT(sample_envelope_pad(&s.env, k, &sp, bulk, sizeof(bulk)));
    fd = open_with(&s);
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
    s.pull.cursor = 0;
    s.pull.max_records = 1;
    ASSERT(sample_envelope_pad(&s.env, k, &sp, bulk, sizeof(bulk)));
    ASSERT_OK(fsp_msg_encode_frame(&s.env, max, &frame, &len));
    ASSERT_EQ(len, k + FSP_FRAME_HEADER);
    wire_send_bytes(fd, frame, len);
    fsp_free(frame);
    reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_CHANGES);
    fsp_msg_close(&m);
    close(fd);
  }
  /* max + 1: refused from the header, with part of the body sent. */
  fsp_frame_header(max + 1, hdr);
  memset(bulk, 'p', 4096);
  fd = wire_dial(srv.port);
  wire_send_bytes(fd, hdr, sizeof(hdr));
  wire_send_bytes(fd, bulk, 4096);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE);
  fd = session(tok_boss);
  wire_send_bytes(fd, hdr, sizeof(hdr));
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE);
  refusals += 2;
  healthy_round(healthy);
  printf("# frame limit %u: %u and %u byte bodies served, %u refused "
         "(ERR_FRAME_TOO_LARGE)\n",
         max, max - 1, max, max + 1);
}

TEST(frame_size) {
  const char *small[] = {"--max-frame", "65536", "--max-batch", "4", NULL};
  struct fsp_msg m;
  int healthy;
  int fd;

  start(NULL);
  healthy = session(tok_boss);
  healthy_round(healthy);
  frame_triple(healthy, FSP_DEFAULT_MAX_FRAME);
  close(healthy);
  stop();

  /* Lowered limits are announced in Welcome and enforced. */
  start(small);
  healthy = session(tok_boss);
  healthy_round(healthy);
  fd = wire_dial(srv.port);
  {
    struct sample_envelope s;
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
    s.hello.device_token = tok_boss;
    wire_send_env(fd, &s.env);
  }
  reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_WELCOME);
  ASSERT(m.env->welcome->limits != NULL);
  ASSERT_EQ(m.env->welcome->limits->max_frame_bytes, 65536);
  ASSERT_EQ(m.env->welcome->limits->max_batch_records, 4);
  ASSERT_EQ(m.env->welcome->limits->max_vv_entries, FSP_DEFAULT_MAX_VV);
  ASSERT_EQ(m.env->welcome->limits->max_payload_bytes,
            FSP_DEFAULT_MAX_PAYLOAD);
  fsp_msg_close(&m);
  close(fd);
  frame_triple(healthy, 65536);
  close(healthy);
  stop();
}

/* ---- records per batch --------------------------------------------------*/

/* A Pull for max_records on fd gets want changes. */
static void pull_count(int fd, uint32_t max_records, size_t want) {
  struct sample_envelope s;
  struct fsp_msg m;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  s.pull.max_records = max_records;
  wire_send_env(fd, &s.env);
  reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  ASSERT_EQ(m.env->changes->n_changes, want);
  ASSERT(m.env->changes->more);
  fsp_msg_close(&m);
}

/* Pushes of max - 1 and max changes are all applied, max + 1 is refused;
 * a Pull asking for max - 1, max or max + 1 gets at most max. */
static void batch_triple(int healthy, uint32_t max) {
  Fieldsync__Change **cp;
  struct sample_change *c = changes_new(max + 1, &cp);
  struct sample_envelope s;
  size_t k;
  int fd = session(tok_boss);

  for (k = max - 1; k <= max; k++) {
    push_expect(fd, cp, k, FIELDSYNC__OUTCOME__OUTCOME_APPLIED);
    /* The same again: every one is already known. */
    push_expect(fd, cp, k, FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN);
    free(c);
    free(cp);
    c = changes_new(max + 1, &cp);
  }
  /* The store now holds more than max + 1 records. */
  pull_count(fd, max - 1, max - 1);
  pull_count(fd, max, max);
  pull_count(fd, max + 1, max);
  close(fd);

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.push.n_changes = max + 1;
  s.push.changes = cp;
  refused_in_session(tok_boss, &s.env,
                     FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
  free(c);
  free(cp);
  healthy_round(healthy);
  printf("# batch limit %u: pushes of %u and %u applied, %u refused "
         "(ERR_LIMIT_EXCEEDED); pulls of %u, %u, %u get %u, %u, %u\n",
         max, max - 1, max, max + 1, max - 1, max, max + 1, max - 1, max,
         max);
}

TEST(records_per_batch) {
  const char *small[] = {"--max-batch", "4", NULL};
  int healthy;

  start(NULL);
  healthy = session(tok_boss);
  batch_triple(healthy, FSP_DEFAULT_MAX_BATCH);
  close(healthy);
  stop();
  start(small);
  healthy = session(tok_boss);
  batch_triple(healthy, 4);
  close(healthy);
  stop();
}

/* ---- version vectors, payloads, strings ----------------------------------*/

static Fieldsync__VvEntry vv_e[FSP_DEFAULT_MAX_VV + 1];
static Fieldsync__VvEntry *vv_p[FSP_DEFAULT_MAX_VV + 1];
static uint8_t vv_r[FSP_DEFAULT_MAX_VV + 1][16];

/* Gives c a version vector of n entries (ascending replicas). */
static void set_vv(struct sample_change *c, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    fieldsync__vv_entry__init(&vv_e[i]);
    memset(vv_r[i], 0x3c, 16);
    vv_r[i][14] = (uint8_t)(i >> 8);
    vv_r[i][15] = (uint8_t)i;
    vv_e[i].has_replica = 1;
    vv_e[i].replica.data = vv_r[i];
    vv_e[i].replica.len = 16;
    vv_e[i].has_counter = 1;
    vv_e[i].counter = 1;
    vv_p[i] = &vv_e[i];
  }
  c->v.n_vv = n;
  c->v.vv = vv_p;
}

/* Gives c an observation payload of exactly n bytes (in bulk). */
static void set_payload(struct sample_change *c, size_t n) {
  static char evidence[FSP_DEFAULT_MAX_PAYLOAD + 2];
  Fieldsync__Observation o = FIELDSYNC__OBSERVATION__INIT;
  size_t size;

  o.has_visit_id = 1;
  o.visit_id.data = c->visit;
  o.visit_id.len = 16;
  o.evidence_text = evidence;
  memset(evidence, 'e', n);
  evidence[n] = '\0';
  while ((size = fieldsync__observation__get_packed_size(&o)) > n)
    evidence[strlen(evidence) - 1] = '\0';
  ASSERT_EQ(size, n);
  ASSERT_EQ(fieldsync__observation__pack(&o, bulk), n);
  c->v.payload.data = bulk;
  c->v.payload.len = n;
  fsp_merge_hash(false, bulk, n, c->hash);
}

static char text[FSP_DEFAULT_MAX_STRING + 2];

static char *text_of(size_t n) {
  memset(text, 's', n);
  text[n] = '\0';
  return text;
}

/* Runs the triple for one per-change limit: set(c, k) for k = limit - 1
 * and limit is applied, limit + 1 refused. */
static void change_triple(int healthy, const char *what, size_t limit,
                          void (*set)(struct sample_change *, size_t)) {
  struct sample_change *c = calloc(1, sizeof(*c));
  Fieldsync__Change *cp[1];
  struct sample_envelope s;
  size_t k;
  int fd = session(tok_boss);

  ASSERT(c != NULL);
  cp[0] = &c->c;
  for (k = limit - 1; k <= limit; k++) {
    sample_change_init(c, next_record++, 8);
    set(c, k);
    push_expect(fd, cp, 1, FIELDSYNC__OUTCOME__OUTCOME_APPLIED);
  }
  close(fd);
  sample_change_init(c, next_record++, 8);
  set(c, limit + 1);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.push.n_changes = 1;
  s.push.changes = cp;
  refused_in_session(tok_boss, &s.env,
                     FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
  free(c);
  healthy_round(healthy);
  printf("# %s: %zu and %zu applied, %zu refused (ERR_LIMIT_EXCEEDED)\n",
         what, limit - 1, limit, limit + 1);
}

/* Gives c an observation payload whose case_refs has n entries. */
static void set_case_refs(struct sample_change *c, size_t n) {
  static char *refs[FSP_DEFAULT_MAX_BATCH + 1];
  Fieldsync__Observation o = FIELDSYNC__OBSERVATION__INIT;
  size_t size;
  size_t i;

  for (i = 0; i < n; i++)
    refs[i] = "C1";
  o.has_visit_id = 1;
  o.visit_id.data = c->visit;
  o.visit_id.len = 16;
  o.n_case_refs = n;
  o.case_refs = refs;
  size = fieldsync__observation__get_packed_size(&o);
  ASSERT_LE(size, sizeof(bulk));
  ASSERT_EQ(fieldsync__observation__pack(&o, bulk), size);
  c->v.payload.data = bulk;
  c->v.payload.len = size;
  fsp_merge_hash(false, bulk, size, c->hash);
}

/* A payload's repeated field (Observation.case_refs): max_batch entries
 * are applied; one more refuses that record alone (OUTCOME_REFUSED,
 * ERR_LIMIT_EXCEEDED) and the session goes on. */
static void payload_count_triple(int healthy) {
  struct sample_change *c = calloc(1, sizeof(*c));
  Fieldsync__Change *cp[1];
  struct sample_envelope s;
  struct fsp_msg m;
  size_t k;
  int fd = session(tok_boss);

  ASSERT(c != NULL);
  cp[0] = &c->c;
  for (k = FSP_DEFAULT_MAX_BATCH - 1; k <= FSP_DEFAULT_MAX_BATCH + 1; k++) {
    sample_change_init(c, next_record++, 8);
    set_case_refs(c, k);
    if (k <= FSP_DEFAULT_MAX_BATCH) {
      push_expect(fd, cp, 1, FIELDSYNC__OUTCOME__OUTCOME_APPLIED);
      continue;
    }
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
    s.push.n_changes = 1;
    s.push.changes = cp;
    wire_send_env(fd, &s.env);
    reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK);
    ASSERT_EQ(m.env->push_ack->n_outcomes, 1);
    ASSERT_EQ(m.env->push_ack->outcomes[0]->outcome,
              FIELDSYNC__OUTCOME__OUTCOME_REFUSED);
    ASSERT_EQ(m.env->push_ack->outcomes[0]->reason_code,
              FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
    fsp_msg_close(&m);
  }
  healthy_round(fd); /* the same session goes on */
  close(fd);
  free(c);
  healthy_round(healthy);
  printf("# observation.case_refs: %u and %u entries applied, %u refused "
         "(OUTCOME_REFUSED, ERR_LIMIT_EXCEEDED), session kept\n",
         FSP_DEFAULT_MAX_BATCH - 1, FSP_DEFAULT_MAX_BATCH,
         FSP_DEFAULT_MAX_BATCH + 1);
}

static void set_author(struct sample_change *c, size_t n) {
  c->v.author = text_of(n);
}

TEST(vv_payload_and_strings) {
  struct sample_envelope s;
  size_t k;
  int healthy;
  int fd;

  start(NULL);
  healthy = session(tok_boss);
  change_triple(healthy, "version vector entries", FSP_DEFAULT_MAX_VV,
                set_vv);
  change_triple(healthy, "payload bytes", FSP_DEFAULT_MAX_PAYLOAD,
                set_payload);
  change_triple(healthy, "author bytes", FSP_DEFAULT_MAX_STRING, set_author);
  payload_count_triple(healthy);

  /* Hello's strings: a client_version at the limit is served; one byte
   * more, or a token one byte over, is refused before the token check. */
  for (k = FSP_DEFAULT_MAX_STRING - 1; k <= FSP_DEFAULT_MAX_STRING; k++) {
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
    s.hello.device_token = tok_boss;
    s.hello.client_version = text_of(k);
    close(open_with(&s));
  }
  s.hello.client_version = text_of(FSP_DEFAULT_MAX_STRING + 1);
  fd = wire_dial(srv.port);
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = text_of(FSP_DEFAULT_MAX_STRING);
  fd = wire_dial(srv.port);
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  s.hello.device_token = text_of(FSP_DEFAULT_MAX_STRING + 1);
  fd = wire_dial(srv.port);
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
  refusals += 2;

  /* Bye's reason: at the limit the server just closes. */
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_BYE);
  s.bye.reason = text_of(FSP_DEFAULT_MAX_STRING);
  fd = session(tok_boss);
  wire_send_env(fd, &s.env);
  wire_expect_closed(fd);
  close(fd);
  s.bye.reason = text_of(FSP_DEFAULT_MAX_STRING + 1);
  refused_in_session(tok_boss, &s.env,
                     FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
  healthy_round(healthy);
  printf("# hello.client_version, hello.device_token, bye.reason: %u bytes "
         "served, %u refused\n",
         FSP_DEFAULT_MAX_STRING, FSP_DEFAULT_MAX_STRING + 1);
  close(healthy);
  stop();
}

/* ---- held scopes, nesting ------------------------------------------------*/

static Fieldsync__ScopeKey sk[FSP_MAX_HELD_SCOPES + 1];
static Fieldsync__ScopeKey *skp[FSP_MAX_HELD_SCOPES + 1];
static uint8_t sk_id[FSP_MAX_HELD_SCOPES + 1][16];

/* An inspector assigned to nothing pulls with n held scopes: each comes
 * back in removed_scopes, up to the limit; one more is refused. Then a
 * change whose version is sent twice is ERR_MALFORMED (protobuf would
 * merge it, at quadratic cost). */
TEST(held_scopes_and_nesting) {
  struct sample_envelope s;
  size_t k;
  int healthy;

  start(NULL);
  healthy = session(tok_boss);
  for (k = 0; k <= FSP_MAX_HELD_SCOPES; k++) {
    fieldsync__scope_key__init(&sk[k]);
    memset(sk_id[k], 0x11, 16);
    sk_id[k][14] = (uint8_t)(k >> 8);
    sk_id[k][15] = (uint8_t)k;
    sk[k].has_kind = 1;
    sk[k].kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
    sk[k].has_id = 1;
    sk[k].id.data = sk_id[k];
    sk[k].id.len = 16;
    skp[k] = &sk[k];
  }
  for (k = FSP_MAX_HELD_SCOPES - 1; k <= FSP_MAX_HELD_SCOPES; k++) {
    struct fsp_msg m;
    int fd = session(tok_ann);

    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
    s.pull.cursor = 0;
    s.pull.n_held_scopes = k;
    s.pull.held_scopes = skp;
    wire_send_env(fd, &s.env);
    reply(fd, &m, FIELDSYNC__ENVELOPE__BODY_CHANGES);
    ASSERT_EQ(m.env->changes->n_removed_scopes, k);
    fsp_msg_close(&m);
    close(fd);
  }
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  s.pull.n_held_scopes = FSP_MAX_HELD_SCOPES + 1;
  s.pull.held_scopes = skp;
  refused_in_session(tok_ann, &s.env,
                     FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED);
  healthy_round(healthy);
  printf("# held scopes: %u and %u come back removed, %u refused\n",
         FSP_MAX_HELD_SCOPES - 1, FSP_MAX_HELD_SCOPES,
         FSP_MAX_HELD_SCOPES + 1);

  /* A Change whose version field appears twice. */
  {
    uint8_t *frame;
    uint8_t *twice;
    size_t len;
    size_t vlen;
    int fd = session(tok_boss);

    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
    s.push.n_changes = 1;
    vlen = fieldsync__version__get_packed_size(&s.ch[0].v);
    ASSERT(vlen >= 128 && vlen < 16384);
    /* The version again, as one more field 3 at the end of the Change:
     * tag, a two-byte length, the version. */
    twice = malloc(3 + vlen);
    ASSERT(twice != NULL);
    twice[0] = 0x1a;
    twice[1] = (uint8_t)(0x80 | (vlen & 0x7f));
    twice[2] = (uint8_t)(vlen >> 7);
    ASSERT_EQ(fieldsync__version__pack(&s.ch[0].v, twice + 3), vlen);
    s.ch[0].c.base.n_unknown_fields = 0;
    {
      ProtobufCMessageUnknownField uf;

      /* Appended as an "unknown" field 3 of the Change: protobuf-c writes
       * it as is, after the known fields. Its data holds the length. */
      memset(&uf, 0, sizeof(uf));
      uf.tag = 3;
      uf.wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED;
      uf.len = 2 + vlen;
      uf.data = twice + 1;
      s.ch[0].c.base.n_unknown_fields = 1;
      s.ch[0].c.base.unknown_fields = &uf;
      wire_frame(&s.env, &frame, &len);
      s.ch[0].c.base.n_unknown_fields = 0;
    }
    wire_send_bytes(fd, frame, len);
    fsp_free(frame);
    free(twice);
    (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_MALFORMED);
    refusals++;
  }
  healthy_round(healthy);
  close(healthy);
  stop();
  printf("# limit + 1 cases refused in this test: %zu\n", refusals);
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(frame_size) TEST_ENTRY(records_per_batch)
          TEST_ENTRY(vv_payload_and_strings)
              TEST_ENTRY(held_scopes_and_nesting)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_limits_wire FIELDSYNCD FIELDSYNC-ADMIN "
                    "[TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
