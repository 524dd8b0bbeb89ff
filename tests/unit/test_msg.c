/* SPDX-License-Identifier: MIT */
/* Envelope decoding and validation: every message type round-trips, each
 * validation error code is produced by a hand-made bad message, unknown
 * fields survive re-encoding, and decoding respects its byte budget. */
#include <string.h>

#include "fsp_err.h"
#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"

static uint8_t buf[1 << 18]; /* room for 4,097 scope keys */

static const Fieldsync__Envelope__BodyCase all_bodies[] = {
    FIELDSYNC__ENVELOPE__BODY_HELLO,   FIELDSYNC__ENVELOPE__BODY_WELCOME,
    FIELDSYNC__ENVELOPE__BODY_PUSH,    FIELDSYNC__ENVELOPE__BODY_PUSH_ACK,
    FIELDSYNC__ENVELOPE__BODY_PULL,    FIELDSYNC__ENVELOPE__BODY_CHANGES,
    FIELDSYNC__ENVELOPE__BODY_ERROR,   FIELDSYNC__ENVELOPE__BODY_BYE,
};

/* Packs the sample, decodes it with limits lim (or the defaults) and
 * returns the code; the decoded message is released. */
static int decode_with(const struct sample_envelope *s,
                       const struct fsp_limits *lim, struct fsp_error *err) {
  struct fsp_limits dflt;
  struct fsp_msg m;
  size_t n;
  int rc;

  if (lim == NULL) {
    fsp_limits_default(&dflt);
    lim = &dflt;
  }
  n = sample_envelope_pack(s, buf, sizeof(buf));
  ASSERT_GT(n, 0);
  memset(err, 0, sizeof(*err));
  rc = fsp_msg_decode(&m, buf, n, lim, err);
  if (rc == 0)
    ASSERT(m.env != NULL);
  else
    ASSERT(m.env == NULL);
  fsp_msg_close(&m);
  fsp_msg_close(&m); /* closing twice is harmless */
  ASSERT_EQ(m.budget.used, 0); /* everything unpacked was freed */
  return rc;
}

/* Asserts that the sample fails with want and a message mentioning what. */
static void expect(const struct sample_envelope *s, int want,
                   const char *what) {
  struct fsp_error err;
  int rc = decode_with(s, NULL, &err);

  if (rc != want)
    test_fail(__FILE__, __LINE__, "want %s, got %s: %s", fsp_err_name(want),
              fsp_err_name(rc), err.msg);
  ASSERT_EQ(err.code, want);
  if (strstr(err.msg, what) == NULL)
    test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", err.msg,
              what);
}

TEST(every_body_round_trips) {
  size_t i;

  for (i = 0; i < sizeof(all_bodies) / sizeof(all_bodies[0]); i++) {
    struct sample_envelope s;
    struct fsp_limits lim;
    struct fsp_error err;
    struct fsp_msg m;
    size_t n;

    sample_envelope_init(&s, all_bodies[i]);
    fsp_limits_default(&lim);
    n = sample_envelope_pack(&s, buf, sizeof(buf));
    ASSERT_OK(fsp_msg_decode(&m, buf, n, &lim, &err));
    ASSERT_EQ(m.env->body_case, all_bodies[i]);
    ASSERT_EQ(fieldsync__envelope__get_packed_size(m.env), n);
    {
      static uint8_t again[1 << 16];
      ASSERT_EQ(fieldsync__envelope__pack(m.env, again), n);
      ASSERT_MEM_EQ(again, buf, n);
    }
    ASSERT(strcmp(fsp_msg_body_name(m.env), "none") != 0);
    fsp_msg_close(&m);
  }
}

TEST(encode_frame_adds_header_and_version) {
  struct sample_envelope s;
  struct fsp_frame_decoder d;
  uint8_t *frame;
  uint8_t *body;
  size_t len;
  size_t blen;
  size_t used;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.env.has_protocol_version = 0;
  ASSERT_OK(fsp_msg_encode_frame(&s.env, FSP_DEFAULT_MAX_FRAME, &frame, &len));
  ASSERT_EQ(s.env.protocol_version, FSP_PROTOCOL_VERSION);
  fsp_frame_decoder_init(&d, 0);
  ASSERT_EQ(fsp_frame_feed(&d, frame, len, &used), 1);
  ASSERT_EQ(used, len);
  fsp_frame_take(&d, &body, &blen);
  ASSERT_EQ(blen + FSP_FRAME_HEADER, len);
  ASSERT_MEM_EQ(body, frame + FSP_FRAME_HEADER, blen);
  fsp_free(body);
  fsp_free(frame);
  fsp_frame_decoder_close(&d);

  /* Over the frame limit: refused, nothing handed out. */
  ASSERT_EQ(fsp_msg_encode_frame(&s.env, 4, &frame, &len), FSP_EFRAME_TOO_BIG);
  ASSERT(frame == NULL);
  /* Out of memory: a clean error. */
  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_msg_encode_frame(&s.env, FSP_DEFAULT_MAX_FRAME, &frame, &len),
            FSP_ENOMEM);
  fsp_alloc_fail_at(0, false);
}

/* ---- one test per error code -------------------------------------------*/

TEST(err_nomem) {
  struct sample_envelope s;
  struct fsp_error err;
  uint64_t k;
  int nomem = 0;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  /* Fail each allocation of the decode in turn: always a clean NOMEM. */
  for (k = 1; k < 200; k++) {
    int rc;
    fsp_alloc_fail_at(k, false);
    rc = decode_with(&s, NULL, &err);
    if (fsp_alloc_failed() == 0) {
      ASSERT_OK(rc);
      break;
    }
    ASSERT_EQ(rc, FSP_ENOMEM);
    nomem++;
  }
  fsp_alloc_fail_at(0, false);
  ASSERT_GT(nomem, 5);
}

TEST(err_frame_too_big) {
  struct sample_envelope s;
  struct fsp_limits lim;
  struct fsp_error err;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  fsp_limits_default(&lim);
  lim.max_frame = 64;
  ASSERT_EQ(decode_with(&s, &lim, &err), FSP_EFRAME_TOO_BIG);
}

TEST(err_decode) {
  static const uint8_t garbage[][6] = {
      {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, /* endless varint */
      {0x12, 0x7f, 0x00, 0x00, 0x00, 0x00}, /* hello length past the end */
      {0x0f, 0x00, 0x00, 0x00, 0x00, 0x00}, /* wire type 7 */
  };
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  size_t i;

  fsp_limits_default(&lim);
  for (i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
    ASSERT_EQ(fsp_msg_decode(&m, garbage[i], 6, &lim, &err), FSP_EDECODE);
    ASSERT(m.env == NULL);
  }
}

TEST(err_budget) {
  struct sample_envelope s;
  struct fsp_limits lim;
  struct fsp_error err;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  fsp_limits_default(&lim);
  lim.budget = 256;
  ASSERT_EQ(decode_with(&s, &lim, &err), FSP_EBUDGET);
}

/* A frame of many empty sub-messages costs far more to unpack than its
 * size; the budget is what stops it. */
TEST(budget_bounds_amplification) {
  static uint8_t bomb[1 << 16];
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  size_t n = 0;

  bomb[n++] = 0x08; /* protocol_version = 1 */
  bomb[n++] = 0x01;
  bomb[n++] = 0x22; /* push, length-delimited: 3-byte length follows */
  bomb[n++] = 0x80 | ((sizeof(bomb) - 6) & 0x7f);
  bomb[n++] = 0x80 | (((sizeof(bomb) - 6) >> 7) & 0x7f);
  bomb[n++] = (uint8_t)((sizeof(bomb) - 6) >> 14);
  bomb[n++] = 0x08; /* push.batch_id = 1 */
  bomb[n++] = 0x01;
  while (n + 2 <= sizeof(bomb)) {
    bomb[n++] = 0x12; /* changes: empty Change */
    bomb[n++] = 0x00;
  }
  fsp_limits_default(&lim);
  lim.budget = 64 * 1024;
  ASSERT_EQ(fsp_msg_decode(&m, bomb, n, &lim, &err), FSP_EBUDGET);
  ASSERT(m.budget.peak <= lim.budget);
  lim.budget = 64u << 20;
  /* With room to decode, validation refuses the empty changes instead. */
  ASSERT_NE(fsp_msg_decode(&m, bomb, n, &lim, &err), 0);
  ASSERT_EQ(err.code, FSP_ETOO_MANY);
}

TEST(err_version) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.env.protocol_version = 2;
  expect(&s, FSP_EVERSION, "envelope.protocol_version");
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.protocol_version = 9;
  expect(&s, FSP_EVERSION, "hello.protocol_version");
}

TEST(err_no_body) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY__NOT_SET);
  expect(&s, FSP_ENO_BODY, "no body");
}

TEST(err_missing) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.push.has_batch_id = 0;
  expect(&s, FSP_EMISSING, "push.batch_id");

  /* A Hello without a token decodes: the server refuses it with
   * ERR_UNAUTHENTICATED, like any other token it does not know. */
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = NULL;
  {
    struct fsp_error err;
    ASSERT_OK(decode_with(&s, NULL, &err));
  }

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[1].c.scope = NULL;
  expect(&s, FSP_EMISSING, "push.changes[1].scope");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  s.ch[0].c.has_seq = 0;
  expect(&s, FSP_EMISSING, "changes.changes[0].seq");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.has_cursor = 0;
  expect(&s, FSP_EMISSING, "pull.cursor");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].v.has_hash = 0;
  expect(&s, FSP_EMISSING, "version.hash");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].c.version = NULL;
  expect(&s, FSP_EMISSING, "push.changes[0].version");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.env.has_protocol_version = 0;
  expect(&s, FSP_EMISSING, "envelope.protocol_version");
}

TEST(err_bad_id) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].key.id.len = 15;
  expect(&s, FSP_EBAD_ID, "push.changes[0].key.id");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.replica_id.len = 17;
  expect(&s, FSP_EBAD_ID, "hello.replica_id");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[1].e[0].replica.len = 8;
  expect(&s, FSP_EBAD_ID, "vv[0].replica");
}

TEST(err_bad_vv) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].e[1].replica.data = s.ch[0].replica[0]; /* duplicate replica */
  expect(&s, FSP_EBAD_VV, "not strictly ascending");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].ep[0] = &s.ch[0].e[1]; /* unsorted */
  s.ch[0].ep[1] = &s.ch[0].e[0];
  expect(&s, FSP_EBAD_VV, "not strictly ascending");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].e[1].counter = 0;
  expect(&s, FSP_EBAD_VV, "zero counter");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  s.ch[1].v.n_vv = 0;
  expect(&s, FSP_EBAD_VV, "vv: empty");
}

TEST(err_too_many) {
  struct sample_envelope s;
  struct fsp_limits lim;
  struct fsp_error err;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  fsp_limits_default(&lim);
  lim.max_batch = 1;
  ASSERT_EQ(decode_with(&s, &lim, &err), FSP_ETOO_MANY);
  ASSERT(strstr(err.msg, "push.changes") != NULL);

  fsp_limits_default(&lim);
  lim.max_vv = 1;
  ASSERT_EQ(decode_with(&s, &lim, &err), FSP_ETOO_MANY);
  ASSERT(strstr(err.msg, ".vv") != NULL);

  /* At the limit: accepted. */
  lim.max_vv = 2;
  lim.max_batch = 2;
  ASSERT_OK(decode_with(&s, &lim, &err));
}

TEST(err_bad_enum) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].key.collection = (Fieldsync__Collection)99;
  expect(&s, FSP_EBAD_ENUM, "key.collection");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].key.collection = FIELDSYNC__COLLECTION__COLLECTION_UNSPECIFIED;
  expect(&s, FSP_EBAD_ENUM, "key.collection");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_WELCOME);
  s.welcome.role = (Fieldsync__Role)4;
  expect(&s, FSP_EBAD_ENUM, "welcome.role");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK);
  s.outcome[0].outcome = (Fieldsync__Outcome)42;
  expect(&s, FSP_EBAD_ENUM, "outcomes[0].outcome");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_ERROR);
  s.error.code = (Fieldsync__ErrorCode)-3;
  expect(&s, FSP_EBAD_ENUM, "error.code");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[1].scope.kind = (Fieldsync__ScopeKind)7;
  expect(&s, FSP_EBAD_ENUM, "scope.kind");
}

TEST(err_bad_hash) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].hash[5] ^= 1;
  expect(&s, FSP_EBAD_HASH, "does not match");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].v.hash.len = 31;
  expect(&s, FSP_EBAD_HASH, "want 32");

  /* The payload changed after hashing. */
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  s.ch[1].payload[3] ^= 0x20;
  expect(&s, FSP_EBAD_HASH, "does not match");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK);
  s.outcome[1].hash.len = 3;
  expect(&s, FSP_EBAD_HASH, "outcomes[1].hash");
}

TEST(err_bad_value) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].v.has_deleted = 1;
  s.ch[0].v.deleted = 1;
  expect(&s, FSP_EBAD_VALUE, "tombstone carries no payload");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].c.has_seq = 1;
  s.ch[0].c.seq = 5;
  expect(&s, FSP_EBAD_VALUE, "set by the server only");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.max_records = 0;
  expect(&s, FSP_EBAD_VALUE, "pull.max_records");

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[1].v.author = "caf\xc3";
  expect(&s, FSP_EBAD_VALUE, "version.author: not valid UTF-8");
}

TEST(tombstone_is_valid) {
  struct sample_envelope s;
  struct fsp_error err;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].v.has_deleted = 1;
  s.ch[0].v.deleted = 1;
  s.ch[0].v.has_payload = 0;
  fsp_merge_hash(true, NULL, 0, s.ch[0].hash);
  ASSERT_OK(decode_with(&s, NULL, &err));
  /* A tombstone hashed as a live empty payload is refused. */
  fsp_merge_hash(false, NULL, 0, s.ch[0].hash);
  expect(&s, FSP_EBAD_HASH, "does not match");
}

TEST(err_too_long) {
  struct sample_envelope s;
  struct fsp_limits lim;
  struct fsp_error err;
  static char big[FSP_DEFAULT_MAX_STRING + 2];

  memset(big, 'x', sizeof(big) - 1);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = big;
  expect(&s, FSP_ETOO_LONG, "hello.device_token");
  big[FSP_DEFAULT_MAX_STRING] = '\0'; /* exactly at the limit: fine */
  ASSERT_OK(decode_with(&s, NULL, &err));

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  fsp_limits_default(&lim);
  lim.max_payload = 16;
  ASSERT_EQ(decode_with(&s, &lim, &err), FSP_ETOO_LONG);
  ASSERT(strstr(err.msg, "payload") != NULL);
}

/* ---- evolution ----------------------------------------------------------*/

/* A newer peer's fields (unknown here) survive decode + re-encode. */
TEST(unknown_fields_preserved) {
  static const uint8_t extra[] = {
      0xa0, 0x06, 0x2a,                  /* field 100, varint 42 */
      0xaa, 0x06, 0x03, 'n', 'e', 'w',   /* field 101, bytes "new" */
  };
  struct sample_envelope s;
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  static uint8_t out[1 << 16];
  size_t n;
  size_t n2;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  n = sample_envelope_pack(&s, buf, sizeof(buf));
  memcpy(buf + n, extra, sizeof(extra));
  n += sizeof(extra);
  fsp_limits_default(&lim);
  ASSERT_OK(fsp_msg_decode(&m, buf, n, &lim, &err));
  ASSERT_EQ(m.env->base.n_unknown_fields, 2);
  n2 = fieldsync__envelope__pack(m.env, out);
  ASSERT_EQ(n2, n);
  ASSERT_MEM_EQ(out, buf, n);
  fsp_msg_close(&m);
}

/* ---- error table --------------------------------------------------------*/

TEST(error_table_complete) {
  int codes[] = {
#define XX(name, val, wire, msg) FSP_E##name,
      FSP_ERRNO_MAP(XX)
#undef XX
  };
  size_t i;
  size_t j;

  for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
    int w = fsp_err_to_wire(codes[i]);
    ASSERT(codes[i] < 0);
    ASSERT(strcmp(fsp_err_strerror(codes[i]), "unknown error") != 0);
    ASSERT(strncmp(fsp_err_name(codes[i]), "FSP_E", 5) == 0);
    ASSERT(protobuf_c_enum_descriptor_get_value(
               &fieldsync__error_code__descriptor, w) != NULL);
    ASSERT_NE(w, 0);
    for (j = 0; j < i; j++)
      ASSERT_NE(codes[i], codes[j]);
  }
  ASSERT_STR_EQ(fsp_err_name(0), "FSP_OK");
  ASSERT_STR_EQ(fsp_err_name(-999), "FSP_EUNKNOWN");
  ASSERT_STR_EQ(fsp_err_strerror(-999), "unknown error");
  ASSERT_EQ(fsp_err_to_wire(-999), FIELDSYNC__ERROR_CODE__ERR_INTERNAL);
  ASSERT_EQ(fsp_err_to_wire(FSP_EFRAME_TOO_BIG),
            FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE);
  ASSERT_EQ(fsp_error_set(NULL, FSP_EBAD_ID, "x"), FSP_EBAD_ID);
}

/* A decoded message moved to another struct frees through its new home
 * (its allocator must not point at the old struct). */
TEST(move_keeps_allocator) {
  struct sample_envelope s;
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg *a = fsp_calloc(1, sizeof(*a));
  struct fsp_msg b;
  size_t n;

  ASSERT(a != NULL);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  n = sample_envelope_pack(&s, buf, sizeof(buf));
  fsp_limits_default(&lim);
  ASSERT_OK(fsp_msg_decode(a, buf, n, &lim, &err));
  fsp_msg_move(&b, a);
  ASSERT(a->env == NULL);
  memset(a, 0xa5, sizeof(*a)); /* the old home is gone */
  fsp_free(a);
  ASSERT(b.env != NULL && b.env->push->n_changes == 2);
  ASSERT(b.budget.pc.allocator_data == &b.budget);
  fsp_msg_close(&b);
  ASSERT_EQ(b.budget.used, 0);
}

TEST(vv_pb_conversion) {
  struct sample_change c;
  struct fsp_error err;
  struct fsp_vv v;
  Fieldsync__VvEntry e[2];
  Fieldsync__VvEntry *ep[2];

  sample_change_init(&c, 3, 10);
  fsp_vv_init(&v);
  ASSERT_OK(fsp_msg_vv_from_pb(&v, c.v.vv, c.v.n_vv, 8, &err));
  ASSERT_EQ(v.n, 2);
  ASSERT_EQ(fsp_vv_get(&v, c.replica[1]), c.e[1].counter);
  fsp_msg_vv_to_pb(&v, e, ep);
  ASSERT_EQ(e[0].counter, c.e[0].counter);
  ASSERT_MEM_EQ(e[1].replica.data, c.replica[1], 16);
  ASSERT_EQ(fsp_msg_vv_from_pb(&v, c.v.vv, c.v.n_vv, 1, &err), FSP_ETOO_MANY);
  c.e[0].counter = 0;
  ASSERT_EQ(fsp_msg_vv_from_pb(&v, c.v.vv, c.v.n_vv, 8, &err), FSP_EBAD_VV);
  fsp_vv_close(&v);
}

/* Pull.held_scopes and the scope fields of Changes (PROTOCOL.md "Scopes"):
 * valid lists pass; order, duplicates, kinds, id lengths, counts at the
 * limit and one past it, and orphaned backfill fields are refused. */
TEST(scope_lists) {
  static Fieldsync__ScopeKey k[FSP_MAX_HELD_SCOPES + 1];
  static Fieldsync__ScopeKey *kp[FSP_MAX_HELD_SCOPES + 1];
  static uint8_t ids[FSP_MAX_HELD_SCOPES + 1][16];
  struct sample_envelope s;
  struct fsp_error err;
  size_t i;

  for (i = 0; i <= FSP_MAX_HELD_SCOPES; i++) {
    fieldsync__scope_key__init(&k[i]);
    k[i].has_kind = 1;
    k[i].kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
    memset(ids[i], 0, 16);
    ids[i][14] = (uint8_t)(i >> 8);
    ids[i][15] = (uint8_t)i;
    k[i].has_id = 1;
    k[i].id.data = ids[i];
    k[i].id.len = 16;
    kp[i] = &k[i];
  }
  ASSERT(fsp_scope_cmp(1, ids[1], 1, ids[2]) < 0);
  ASSERT(fsp_scope_cmp(2, ids[1], 1, ids[2]) > 0);
  ASSERT_EQ(fsp_scope_cmp(1, ids[3], 1, ids[3]), 0);

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.n_held_scopes = FSP_MAX_HELD_SCOPES; /* at the limit */
  s.pull.held_scopes = kp;
  ASSERT_OK(decode_with(&s, NULL, &err));
  s.pull.n_held_scopes = FSP_MAX_HELD_SCOPES + 1;
  expect(&s, FSP_ETOO_MANY, "pull.held_scopes");
  s.pull.n_held_scopes = 3;
  s.pull.held_scopes = &kp[0];
  ASSERT_OK(decode_with(&s, NULL, &err));
  /* The kind sorts first: VISIT (1) before SERVICE (2). */
  k[1].kind = FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE;
  expect(&s, FSP_EBAD_VALUE, "pull.held_scopes[2]");
  k[2].kind = FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE;
  ASSERT_OK(decode_with(&s, NULL, &err));
  k[0].kind = k[1].kind = k[2].kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
  kp[1] = &k[0]; /* duplicate */
  expect(&s, FSP_EBAD_VALUE, "pull.held_scopes[1]");
  kp[1] = &k[2];
  kp[2] = &k[1]; /* out of order */
  expect(&s, FSP_EBAD_VALUE, "pull.held_scopes[2]");
  kp[2] = &k[2];
  kp[1] = &k[1];
  k[1].id.len = 15;
  expect(&s, FSP_EBAD_ID, "pull.held_scopes[1]");
  k[1].id.len = 16;
  k[1].kind = (Fieldsync__ScopeKind)9;
  expect(&s, FSP_EBAD_ENUM, "pull.held_scopes[1]");
  k[1].kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
  s.pull.has_backfill_after = 1;
  s.pull.backfill_after = 7;
  expect(&s, FSP_EBAD_VALUE, "pull.backfill_after");
  s.pull.backfill_scope = &k[3];
  ASSERT_OK(decode_with(&s, NULL, &err));
  k[3].has_id = 0;
  expect(&s, FSP_EMISSING, "pull.backfill_scope");
  k[3].has_id = 1;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  s.changes.n_removed_scopes = 2;
  s.changes.removed_scopes = &kp[0];
  ASSERT_OK(decode_with(&s, NULL, &err));
  s.changes.n_removed_scopes = FSP_MAX_HELD_SCOPES + 1;
  expect(&s, FSP_ETOO_MANY, "changes.removed_scopes");
  s.changes.n_removed_scopes = 2;
  s.changes.has_backfill_done = 1;
  s.changes.backfill_done = 1;
  expect(&s, FSP_EBAD_VALUE, "changes.backfill_next/done");
  s.changes.backfill_scope = &k[3];
  s.changes.has_backfill_next = 1;
  s.changes.backfill_next = 3;
  ASSERT_OK(decode_with(&s, NULL, &err));
  k[3].id.len = 3;
  expect(&s, FSP_EBAD_ID, "changes.backfill_scope");
  k[3].id.len = 16;
}

TEST_LIST(TEST_ENTRY(every_body_round_trips)
          TEST_ENTRY(scope_lists)
          TEST_ENTRY(encode_frame_adds_header_and_version)
          TEST_ENTRY(err_nomem)
          TEST_ENTRY(err_frame_too_big)
          TEST_ENTRY(err_decode)
          TEST_ENTRY(err_budget)
          TEST_ENTRY(budget_bounds_amplification)
          TEST_ENTRY(err_version)
          TEST_ENTRY(err_no_body)
          TEST_ENTRY(err_missing)
          TEST_ENTRY(err_bad_id)
          TEST_ENTRY(err_bad_vv)
          TEST_ENTRY(err_too_many)
          TEST_ENTRY(err_bad_enum)
          TEST_ENTRY(err_bad_hash)
          TEST_ENTRY(err_bad_value)
          TEST_ENTRY(tombstone_is_valid)
          TEST_ENTRY(err_too_long)
          TEST_ENTRY(unknown_fields_preserved)
          TEST_ENTRY(error_table_complete)
          TEST_ENTRY(move_keeps_allocator)
          TEST_ENTRY(vv_pb_conversion))
