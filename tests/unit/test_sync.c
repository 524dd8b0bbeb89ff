/* SPDX-License-Identifier: MIT */
/* Unit tests for the client's sync session (client/src/fsc_sync.c) against
 * an in-test fake server: a thread on 127.0.0.1 port 0 that speaks the
 * protocol through fsp_frame/fsp_msg, keeps a real store (a second
 * fieldsync_db plus a change feed) and can be scripted to misbehave: refuse
 * the token, close mid-session, answer with bad acks, garbage, oversize
 * frames or nothing at all, revoke the device. With `scoped` set it serves
 * the scopes of PROTOCOL.md "Scopes" (removals, backfills), and a pull hook
 * lets a test answer Pulls itself (a hostile server). Every failure must
 * leave the client able to sync again without losing or duplicating
 * anything. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fieldsync.h"
#include "fsc_int.h"
#include "fsp_frame.h"
#include "harness.h"

/* The fake server's own waits; every test ends long before. */
#define FAKE_WAIT_MS 10000
#define FEED_MAX 128
#define LOG_MAX 64

static const char *visit_a = "0194a1b2c3d4e5f60718293a4b5c6d7e";
static const char *service_a = "0194a1b2c3d4e5f60718293a4b5c0000";
static const char *token = "tok-tablet-7-secret";

static char dir[64];

static void setup_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/fs-sync-XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
}

static fieldsync_db *open_new(const char *name) {
  char path[128];
  fieldsync_db *db = NULL;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  if (fieldsync_open(path, FIELDSYNC_OPEN_CREATE, name, &db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", path, fieldsync_errmsg(db));
  /* These tests are about the session, not power loss: skip the fsyncs,
   * which would otherwise take most of their time. */
  ASSERT_OK(
      sqlite3_exec(db->sql, "PRAGMA synchronous = OFF", NULL, NULL, NULL));
  return db;
}

/* Creates a record of collection from "field=value" pairs. */
static void add(fieldsync_db *db, const char *collection, char id[33],
                const char *const *kv) {
  fieldsync_draft *d;
  size_t i;

  ASSERT_OK(fieldsync_draft_new(db, collection, &d));
  for (i = 0; kv[i] != NULL; i += 2)
    ASSERT_OK(fieldsync_draft_set(d, kv[i], kv[i + 1]));
  if (fieldsync_create(db, d, id) != 0)
    test_fail(__FILE__, __LINE__, "create: %s", fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

static void add_obs(fieldsync_db *db, char id[33], const char *code) {
  const char *kv[] = {"visit_id", visit_a, "standard_code", code, NULL};
  add(db, "observation", id, kv);
}

static void edit(fieldsync_db *db, const char *id, const char *field,
                 const char *value) {
  fieldsync_draft *d;

  ASSERT_OK(fieldsync_draft_for_edit(db, id, &d));
  ASSERT_OK(fieldsync_draft_set(d, field, value));
  ASSERT_OK(fieldsync_edit(db, d));
  fieldsync_draft_free(d);
}

/* Number of local versions not yet acknowledged by a server. */
static size_t pending(fieldsync_db *db) {
  struct fsc_outgoing *o;
  size_t n;

  ASSERT_OK(fsc_store_outgoing(db, 0, 1000, &o, &n));
  fsc_outgoing_free(o, n);
  return n;
}

static uint64_t cursor_of(fieldsync_db *db) {
  uint64_t c;

  ASSERT_OK(fsc_store_cursor(db, &c));
  return c;
}

/* Number of current versions of record id, or 0 when db lacks it. */
static size_t versions_of(fieldsync_db *db, const char *id) {
  struct fsc_record r;
  uint8_t bin[16];
  size_t n;
  int rc;

  ASSERT(fsc_unhex(id, bin, 16));
  rc = fsc_store_load(db, bin, &r);
  if (rc == FIELDSYNC_ENOTFOUND)
    return 0;
  ASSERT_OK(rc);
  n = r.n;
  fsc_record_close(&r);
  return n;
}

static int64_t mono_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the fake server's store ------------------------------------------- */

/* The server side's data: a replica, and its change feed as packed Change
 * messages whose seq is their index + 1. */
struct store {
  fieldsync_db *db;
  uint8_t *feed[FEED_MAX];
  size_t len[FEED_MAX];
  size_t n;
};

/* Appends c to the feed with the next seq. */
static void feed_add(struct store *s, Fieldsync__Change *c) {
  ASSERT(s->n < FEED_MAX);
  c->has_seq = 1;
  c->seq = s->n + 1;
  s->len[s->n] = fieldsync__change__get_packed_size(c);
  s->feed[s->n] = malloc(s->len[s->n] + 1);
  ASSERT(s->feed[s->n] != NULL);
  fieldsync__change__pack(c, s->feed[s->n]);
  s->n++;
  c->has_seq = 0;
}

/* A wire change built from an outgoing version; storage in the struct. */
struct wire {
  Fieldsync__Change c;
  Fieldsync__RecordKey k;
  Fieldsync__ScopeKey s;
  Fieldsync__Version v;
  Fieldsync__VvEntry e[8];
  Fieldsync__VvEntry *ep[8];
};

static void to_wire(const struct fsc_outgoing *o, struct wire *w) {
  fieldsync__change__init(&w->c);
  fieldsync__record_key__init(&w->k);
  fieldsync__scope_key__init(&w->s);
  fieldsync__version__init(&w->v);
  w->k.has_collection = 1;
  w->k.collection = (Fieldsync__Collection)o->collection;
  w->k.has_id = 1;
  w->k.id.data = (uint8_t *)o->id;
  w->k.id.len = 16;
  w->s.has_kind = 1;
  w->s.kind = (Fieldsync__ScopeKind)o->scope_kind;
  w->s.has_id = 1;
  w->s.id.data = (uint8_t *)o->scope_id;
  w->s.id.len = 16;
  ASSERT(o->v.vv.n <= 8);
  fsp_msg_vv_to_pb(&o->v.vv, w->e, w->ep);
  w->v.n_vv = o->v.vv.n;
  w->v.vv = w->ep;
  w->v.has_deleted = o->v.deleted;
  w->v.deleted = o->v.deleted;
  w->v.has_hash = 1;
  w->v.hash.data = (uint8_t *)o->v.hash;
  w->v.hash.len = 32;
  w->v.has_payload = !o->v.deleted;
  w->v.payload.data = o->v.payload;
  w->v.payload.len = o->v.len;
  w->v.author = o->v.author;
  w->c.key = &w->k;
  w->c.scope = &w->s;
  w->c.version = &w->v;
}

/* Records written "by other devices": n observations of visit made in
 * the server's replica and put in the feed. Their ids go to ids (may be
 * NULL). */
static void store_seed_in(struct store *s, const char *visit, size_t n,
                          char ids[][33]) {
  const char *kv[] = {"visit_id", visit, "standard_code", "SRV", NULL};
  struct fsc_outgoing *o;
  size_t k;
  size_t i;
  char scratch[33];

  for (i = 0; i < n; i++)
    add(s->db, "observation", ids != NULL ? ids[i] : scratch, kv);
  ASSERT_OK(fsc_store_outgoing(s->db, 0, 100, &o, &k));
  ASSERT_EQ(k, n);
  for (i = 0; i < k; i++) {
    struct wire w;
    struct fsc_ack a;
    to_wire(&o[i], &w);
    feed_add(s, &w.c);
    memcpy(a.id, o[i].id, 16);
    memcpy(a.hash, o[i].v.hash, 32);
    a.pending = o[i].v.pending;
    ASSERT_OK(fsc_store_ack(s->db, &a, 1));
  }
  fsc_outgoing_free(o, k);
}

static void store_seed(struct store *s, size_t n, char ids[][33]) {
  store_seed_in(s, visit_a, n, ids);
}

/* A change that passes envelope validation (its hash matches) but whose
 * payload is not an Observation, so applying it must fail. */
static void store_poison(struct store *s) {
  static uint8_t payload[] = {0xff, 0xff, 0xff};
  static uint8_t id[16] = {0x01, 0x94, 0xa1, 0xb2, 0xc3, 0xd4, 0x7f, 0x60,
                           0x87, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x99};
  static uint8_t replica[16] = {0xaa, 0xbb};
  static uint8_t hash[32];
  uint8_t scope[16];
  Fieldsync__Change c = FIELDSYNC__CHANGE__INIT;
  Fieldsync__RecordKey k = FIELDSYNC__RECORD_KEY__INIT;
  Fieldsync__ScopeKey sk = FIELDSYNC__SCOPE_KEY__INIT;
  Fieldsync__Version v = FIELDSYNC__VERSION__INIT;
  Fieldsync__VvEntry e = FIELDSYNC__VV_ENTRY__INIT;
  Fieldsync__VvEntry *ep = &e;

  ASSERT(fsc_unhex(visit_a, scope, 16));
  fsp_merge_hash(false, payload, sizeof(payload), hash);
  k.has_collection = 1;
  k.collection = FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION;
  k.has_id = 1;
  k.id.data = id;
  k.id.len = 16;
  sk.has_kind = 1;
  sk.kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
  sk.has_id = 1;
  sk.id.data = scope;
  sk.id.len = 16;
  e.has_replica = 1;
  e.replica.data = replica;
  e.replica.len = 16;
  e.has_counter = 1;
  e.counter = 1;
  v.n_vv = 1;
  v.vv = &ep;
  v.has_hash = 1;
  v.hash.data = hash;
  v.hash.len = 32;
  v.has_payload = 1;
  v.payload.data = payload;
  v.payload.len = sizeof(payload);
  c.key = &k;
  c.scope = &sk;
  c.version = &v;
  feed_add(s, &c);
}

static void store_open(struct store *s, const char *name) {
  memset(s, 0, sizeof(*s));
  s->db = open_new(name);
}

static void store_close(struct store *s) {
  size_t i;

  for (i = 0; i < s->n; i++)
    free(s->feed[i]);
  fieldsync_close(s->db);
}

/* ---- the fake server --------------------------------------------------- */

enum script {
  SCRIPT_NORMAL,
  SCRIPT_CLOSE_AT,      /* handle message close_at, answer nothing, close */
  SCRIPT_AUTH_FAIL,     /* Error ERR_UNAUTHENTICATED for the Hello */
  SCRIPT_SILENT,        /* never answer the Hello */
  SCRIPT_ACK_BATCH_ID,  /* PushAck with another batch_id */
  SCRIPT_ACK_COUNT,     /* PushAck with one outcome too few */
  SCRIPT_ACK_HASH,      /* PushAck naming another hash */
  SCRIPT_GARBAGE,       /* answer Hello with bytes that are no Envelope */
  SCRIPT_HUGE_HEADER,   /* answer Hello with a 2 GiB frame length */
  SCRIPT_ZERO_FRAME,    /* answer Hello with a zero-length frame */
  SCRIPT_TRUNCATED,     /* answer Hello with half a frame, then close */
  SCRIPT_OVER_LIMIT,    /* answer Pull with a frame over max_frame */
  SCRIPT_STORAGE_ERROR, /* answer Push with Error ERR_STORAGE */
  SCRIPT_WRONG_REPLY,   /* answer Pull with a PushAck */
  SCRIPT_DRAIN,         /* Welcome, then at once Error ERR_SHUTTING_DOWN
                           and close, as a draining server does */
  SCRIPT_REVOKE_HELLO,  /* Error ERR_REVOKED for the Hello */
  SCRIPT_REVOKE_PUSH,   /* store the first Push, then Error ERR_REVOKED */
  SCRIPT_REVOKE_PULL    /* Error ERR_REVOKED for the first Pull */
};

struct fake;
/* Answers a Pull in place of the fake's own logic (a test's script). */
typedef void (*pull_hook)(struct fake *f, const Fieldsync__Pull *p);

struct fake {
  /* Set by the test. */
  struct store *store;
  enum script script;
  int close_at;       /* SCRIPT_CLOSE_AT: 1-based message number */
  uint32_t max_frame; /* announced in Welcome; 0: not announced */
  uint32_t max_batch;
  uint32_t pull_cap; /* most changes per Changes; 0: no cap of its own */
  int refuse;        /* pushed changes of this collection are refused */
  const struct fsc_scope *refuse_scope; /* and those of this scope */
  bool scoped; /* serve only `visible` (PROTOCOL.md "Scopes") */
  struct fsc_scope visible[4];
  size_t nvisible;
  pull_hook on_pull; /* answers every Pull when set */
  void *hook_data;
  bool small_rcvbuf; /* a tiny receive buffer */
  bool tolerant;     /* out of memory (fault tests) ends the connection
                        instead of failing the test */
  /* The fake's own. */
  bool dead; /* tolerant, and something failed: hang up */
  int lfd;
  int fd;
  uint16_t port;
  pthread_t th;
  struct fsp_frame_decoder dec;
  struct fsp_limits lim;
  uint8_t buf[4096];
  size_t have;
  size_t off;
  /* What it saw. */
  int msgs;
  uint32_t env_version;
  uint32_t hello_version;
  char token[64];
  char client_version[64];
  uint8_t replica[16];
  int pushes;
  size_t push_n[LOG_MAX];
  uint64_t batch_id[LOG_MAX];
  int pulls;
  uint64_t pull_cursor[LOG_MAX];
  uint32_t pull_max[LOG_MAX];
  size_t pull_nheld[LOG_MAX];
  struct fsc_scope pull_held[LOG_MAX][4]; /* the first four */
  bool pull_bf[LOG_MAX];                  /* carried a backfill_scope */
  struct fsc_scope pull_bf_scope[LOG_MAX];
  uint64_t pull_bf_after[LOG_MAX];
  bool bye;
  int client_error; /* ErrorCode the client sent, 0 when none */
  size_t max_body;  /* longest frame body received */
};

static void fake_send_raw(struct fake *f, const void *p, size_t len) {
  const uint8_t *b = p;

  while (len > 0) {
    ssize_t w = send(f->fd, b, len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return; /* the client has gone; what it did about it is the test */
    b += w;
    len -= (size_t)w;
  }
}

static void fake_send(struct fake *f, Fieldsync__Envelope *env) {
  uint8_t *buf;
  size_t len;

  if (fsp_msg_encode_frame(env, FSP_DEFAULT_MAX_FRAME, &buf, &len) != 0) {
    ASSERT(f->tolerant);
    f->dead = true;
    return;
  }
  fake_send_raw(f, buf, len);
  fsp_free(buf);
}

static void fake_send_error(struct fake *f, Fieldsync__ErrorCode code,
                            const char *msg) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Error e = FIELDSYNC__ERROR__INIT;

  e.has_code = 1;
  e.code = code;
  e.message = (char *)msg;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_ERROR;
  env.error = &e;
  fake_send(f, &env);
}

/* Reads the next message into m: 1, or 0 at the end of the stream. Bytes
 * that fail framing or validation fail the test. */
static int fake_read(struct fake *f, struct fsp_msg *m) {
  for (;;) {
    struct fsp_error err;
    struct pollfd p;
    uint8_t *body;
    size_t used = 0;
    size_t len;
    ssize_t r;
    int rc = fsp_frame_feed(&f->dec, f->buf + f->off, f->have - f->off, &used);

    f->off += used;
    if (rc == 1) {
      fsp_frame_take(&f->dec, &body, &len);
      if (len > f->max_body)
        f->max_body = len;
      rc = fsp_msg_decode(m, body, len, &f->lim, &err);
      fsp_free(body);
      if (rc == FSP_ENOMEM && f->tolerant)
        return 0;
      if (rc != 0)
        test_fail(__FILE__, __LINE__, "fake server: %s", err.msg);
      return 1;
    }
    if (rc == FSP_ENOMEM && f->tolerant)
      return 0;
    if (rc != 0)
      test_fail(__FILE__, __LINE__, "fake server: frame: %s",
                fsp_err_strerror(rc));
    p.fd = f->fd;
    p.events = POLLIN;
    ASSERT_EQ(poll(&p, 1, FAKE_WAIT_MS), 1);
    r = recv(f->fd, f->buf, sizeof(f->buf), 0);
    if (r <= 0)
      return 0; /* closed or reset by the client */
    f->have = (size_t)r;
    f->off = 0;
  }
}

static void fake_welcome(struct fake *f) {
  static uint8_t server_id[16] = {0x5e, 0x7e, 0x01};
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Welcome w = FIELDSYNC__WELCOME__INIT;
  Fieldsync__Limits l = FIELDSYNC__LIMITS__INIT;

  w.has_server_id = 1;
  w.server_id.data = server_id;
  w.server_id.len = 16;
  w.user = "j.smith";
  w.has_role = 1;
  w.role = FIELDSYNC__ROLE__ROLE_INSPECTOR;
  w.server_version = "fake/1";
  if (f->max_frame != 0) {
    l.has_max_frame_bytes = 1;
    l.max_frame_bytes = f->max_frame;
  }
  if (f->max_batch != 0) {
    l.has_max_batch_records = 1;
    l.max_batch_records = f->max_batch;
  }
  w.limits = &l;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_WELCOME;
  env.welcome = &w;
  fake_send(f, &env);
}

static void fake_hello(struct fake *f, const Fieldsync__Envelope *env) {
  const Fieldsync__Hello *h = env->hello;
  static const uint8_t garbage[] = {0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff};
  static const uint8_t huge[] = {0x80, 0, 0, 0};
  static const uint8_t zero[] = {0, 0, 0, 0};
  static const uint8_t half[] = {0, 0, 0, 40, 0x08, 0x01};

  f->env_version = env->protocol_version;
  f->hello_version = h->protocol_version;
  snprintf(f->token, sizeof(f->token), "%s", h->device_token);
  snprintf(f->client_version, sizeof(f->client_version), "%s",
           h->client_version != NULL ? h->client_version : "");
  memcpy(f->replica, h->replica_id.data, 16);
  switch (f->script) {
  case SCRIPT_AUTH_FAIL:
    fake_send_error(f, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED,
                    "device token revoked on 2026-03-01");
    break;
  case SCRIPT_SILENT:
    break;
  case SCRIPT_GARBAGE:
    fake_send_raw(f, garbage, sizeof(garbage));
    break;
  case SCRIPT_HUGE_HEADER:
    fake_send_raw(f, huge, sizeof(huge));
    break;
  case SCRIPT_ZERO_FRAME:
    fake_send_raw(f, zero, sizeof(zero));
    break;
  case SCRIPT_TRUNCATED:
    fake_send_raw(f, half, sizeof(half));
    break;
  case SCRIPT_DRAIN:
    fake_welcome(f);
    fake_send_error(f, FIELDSYNC__ERROR_CODE__ERR_SHUTTING_DOWN,
                    "draining; retry later");
    break;
  case SCRIPT_REVOKE_HELLO:
    fake_send_error(f, FIELDSYNC__ERROR_CODE__ERR_REVOKED,
                    "device reported lost");
    break;
  default:
    fake_welcome(f);
    break;
  }
}

/* Applies a Push to the store like a server: each change merged on its
 * own, new versions appended to the feed; answers with a PushAck unless
 * answer is false (a server that committed and then died). */
static void fake_push(struct fake *f, Fieldsync__Push *p, bool answer) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__PushAck ack = FIELDSYNC__PUSH_ACK__INIT;
  Fieldsync__RecordOutcome *oc;
  Fieldsync__RecordOutcome **op;
  static uint8_t other_hash[32] = {0x42};
  size_t i;

  if (f->pushes < LOG_MAX) {
    f->push_n[f->pushes] = p->n_changes;
    f->batch_id[f->pushes] = p->batch_id;
  }
  f->pushes++;
  if (f->script == SCRIPT_STORAGE_ERROR) {
    fake_send_error(f, FIELDSYNC__ERROR_CODE__ERR_STORAGE,
                    "disk full; nothing was stored");
    return;
  }
  oc = calloc(p->n_changes + 1, sizeof(*oc));
  op = calloc(p->n_changes + 1, sizeof(*op));
  ASSERT(oc != NULL && op != NULL);
  for (i = 0; i < p->n_changes; i++) {
    Fieldsync__Change *c = p->changes[i];
    Fieldsync__RecordOutcome *o = &oc[i];

    fieldsync__record_outcome__init(o);
    op[i] = o;
    o->key = c->key;
    o->has_hash = 1;
    o->hash = c->version->hash;
    o->has_outcome = 1;
    if ((int)c->key->collection == f->refuse ||
        (f->refuse_scope != NULL &&
         (int)c->scope->kind == f->refuse_scope->kind &&
         memcmp(c->scope->id.data, f->refuse_scope->id, 16) == 0)) {
      o->outcome = FIELDSYNC__OUTCOME__OUTCOME_REFUSED;
      o->has_reason_code = 1;
      o->reason_code = FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN;
      o->reason = "requirements are head office's";
    } else {
      struct fsc_apply_stats st;
      int rc = fsc_store_apply(f->store->db, &c, 1, f->store->n, &st);
      if (rc != 0 && f->tolerant) {
        f->dead = true; /* died before committing the rest */
        answer = false;
        break;
      }
      ASSERT_OK(rc);
      o->outcome = st.known       ? FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN
                   : st.stale     ? FIELDSYNC__OUTCOME__OUTCOME_STALE
                   : st.conflicts ? FIELDSYNC__OUTCOME__OUTCOME_CONFLICT
                                  : FIELDSYNC__OUTCOME__OUTCOME_APPLIED;
      if (!st.known)
        feed_add(f->store, c);
    }
  }
  ack.has_batch_id = 1;
  ack.batch_id = p->batch_id;
  ack.n_outcomes = p->n_changes;
  ack.outcomes = op;
  if (f->script == SCRIPT_ACK_BATCH_ID)
    ack.batch_id++;
  if (f->script == SCRIPT_ACK_COUNT)
    ack.n_outcomes--;
  if (f->script == SCRIPT_ACK_HASH && ack.n_outcomes > 0) {
    oc[ack.n_outcomes - 1].hash.data = other_hash;
    oc[ack.n_outcomes - 1].hash.len = 32;
  }
  if (f->script == SCRIPT_REVOKE_PUSH && answer) {
    /* Stored and committed; the revocation closes the session before the
     * PushAck goes out. */
    answer = false;
    f->dead = true;
    fake_send_error(f, FIELDSYNC__ERROR_CODE__ERR_REVOKED,
                    "device reported lost");
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH_ACK;
  env.push_ack = &ack;
  if (answer)
    fake_send(f, &env);
  free(oc);
  free(op);
}

static bool scope_is(const Fieldsync__ScopeKey *k, const struct fsc_scope *sc) {
  return (int)k->kind == sc->kind && memcmp(k->id.data, sc->id, 16) == 0;
}

static bool visible(const struct fake *f, const Fieldsync__ScopeKey *k) {
  size_t i;

  for (i = 0; i < f->nvisible; i++)
    if (scope_is(k, &f->visible[i]))
      return true;
  return false;
}

static void scope_pb(Fieldsync__ScopeKey *k, const struct fsc_scope *sc) {
  fieldsync__scope_key__init(k);
  k->has_kind = 1;
  k->kind = (Fieldsync__ScopeKind)sc->kind;
  k->has_id = 1;
  k->id.data = (uint8_t *)sc->id;
  k->id.len = 16;
}

/* A scoped server (PROTOCOL.md "Scopes", as fieldsyncd does it): removes
 * held scopes that are not visible; backfills the first visible scope not
 * held (versions with backfill_after < seq <= cursor, at most max); else
 * answers from the feed, skipping what is not visible. */
static void fake_pull_scoped(struct fake *f, const Fieldsync__Pull *p,
                             uint32_t max) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;
  Fieldsync__Change *cp[FEED_MAX];
  Fieldsync__ScopeKey rk[8];
  Fieldsync__ScopeKey *rkp[8];
  Fieldsync__ScopeKey bk;
  const struct fsc_scope *best = NULL;
  uint64_t end;
  uint64_t seq;
  uint64_t examined;
  size_t k = 0;
  size_t i;
  size_t j;

  if (f->pull_cap != 0 && f->pull_cap < max)
    max = f->pull_cap;
  for (i = 0; i < p->n_held_scopes; i++) {
    if (!visible(f, p->held_scopes[i])) {
      ASSERT_LT(ch.n_removed_scopes, 8);
      rk[ch.n_removed_scopes] = *p->held_scopes[i];
      rkp[ch.n_removed_scopes] = &rk[ch.n_removed_scopes];
      ch.n_removed_scopes++;
    }
  }
  ch.removed_scopes = rkp;
  for (i = 0; i < f->nvisible; i++) {
    bool held = false;
    for (j = 0; j < p->n_held_scopes; j++)
      held = held || scope_is(p->held_scopes[j], &f->visible[i]);
    if (!held &&
        (best == NULL || fsp_scope_cmp(f->visible[i].kind, f->visible[i].id,
                                       best->kind, best->id) < 0))
      best = &f->visible[i];
  }
  ch.has_next_cursor = 1;
  ch.has_more = 1;
  if (best != NULL) {
    end = p->cursor < f->store->n ? p->cursor : f->store->n;
    examined = p->backfill_scope != NULL && scope_is(p->backfill_scope, best)
                   ? p->backfill_after
                   : 0;
    for (seq = examined + 1; seq <= end && k < max; seq++) {
      Fieldsync__Change *c = fieldsync__change__unpack(
          NULL, f->store->len[seq - 1], f->store->feed[seq - 1]);
      ASSERT(c != NULL);
      examined = seq;
      if (scope_is(c->scope, best))
        cp[k++] = c;
      else
        fieldsync__change__free_unpacked(c, NULL);
    }
    scope_pb(&bk, best);
    ch.backfill_scope = &bk;
    ch.has_backfill_next = 1;
    ch.backfill_next = examined;
    ch.has_backfill_done = 1;
    ch.backfill_done = examined >= end;
    ch.next_cursor = p->cursor;
    ch.more = 1;
  } else {
    examined = p->cursor;
    for (seq = p->cursor + 1; seq <= f->store->n && k < max; seq++) {
      Fieldsync__Change *c = fieldsync__change__unpack(
          NULL, f->store->len[seq - 1], f->store->feed[seq - 1]);
      ASSERT(c != NULL);
      examined = seq;
      if (visible(f, c->scope))
        cp[k++] = c;
      else
        fieldsync__change__free_unpacked(c, NULL);
    }
    ch.next_cursor = examined > p->cursor ? examined : p->cursor;
    ch.more = examined < f->store->n;
  }
  ch.n_changes = k;
  ch.changes = cp;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_CHANGES;
  env.changes = &ch;
  fake_send(f, &env);
  for (i = 0; i < k; i++)
    fieldsync__change__free_unpacked(cp[i], NULL);
}

/* Answers a Pull from the feed: changes with seq > cursor, at most
 * max_records (and pull_cap), within the announced frame limit. */
static void fake_pull(struct fake *f, const Fieldsync__Pull *p) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;
  Fieldsync__Change *cp[FEED_MAX];
  uint32_t max = p->has_max_records ? p->max_records : FSP_DEFAULT_MAX_BATCH;
  size_t room = (f->max_frame != 0 ? f->max_frame : FSP_DEFAULT_MAX_FRAME) - 64;
  size_t start = p->cursor < f->store->n ? (size_t)p->cursor : f->store->n;
  size_t size = 0;
  size_t k = 0;
  size_t i;

  if (f->pulls < LOG_MAX) {
    int n = f->pulls;
    f->pull_cursor[n] = p->cursor;
    f->pull_max[n] = max;
    f->pull_nheld[n] = p->n_held_scopes;
    for (i = 0; i < p->n_held_scopes && i < 4; i++) {
      f->pull_held[n][i].kind = (int)p->held_scopes[i]->kind;
      memcpy(f->pull_held[n][i].id, p->held_scopes[i]->id.data, 16);
    }
    f->pull_bf[n] = p->backfill_scope != NULL;
    if (p->backfill_scope != NULL) {
      f->pull_bf_scope[n].kind = (int)p->backfill_scope->kind;
      memcpy(f->pull_bf_scope[n].id, p->backfill_scope->id.data, 16);
      f->pull_bf_after[n] = p->backfill_after;
    }
  }
  f->pulls++;
  if (f->script == SCRIPT_REVOKE_PULL) {
    fake_send_error(f, FIELDSYNC__ERROR_CODE__ERR_REVOKED,
                    "device reported lost");
    f->dead = true;
    return;
  }
  if (f->on_pull != NULL) {
    f->on_pull(f, p);
    return;
  }
  if (f->scoped) {
    fake_pull_scoped(f, p, max);
    return;
  }
  if (f->script == SCRIPT_WRONG_REPLY) {
    Fieldsync__PushAck ack = FIELDSYNC__PUSH_ACK__INIT;
    ack.has_batch_id = 1;
    ack.batch_id = 1;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH_ACK;
    env.push_ack = &ack;
    fake_send(f, &env);
    return;
  }
  if (f->script == SCRIPT_OVER_LIMIT) {
    uint8_t hdr[4];
    fsp_frame_header(f->max_frame + 1, hdr);
    fake_send_raw(f, hdr, sizeof(hdr));
    return;
  }
  if (f->pull_cap != 0 && f->pull_cap < max)
    max = f->pull_cap;
  for (i = start; i < f->store->n && k < max; i++) {
    Fieldsync__Change *c =
        fieldsync__change__unpack(NULL, f->store->len[i], f->store->feed[i]);
    ASSERT(c != NULL);
    if (k > 0 && size + f->store->len[i] + 6 > room) {
      fieldsync__change__free_unpacked(c, NULL);
      break;
    }
    size += f->store->len[i] + 6;
    cp[k++] = c;
  }
  ch.n_changes = k;
  ch.changes = cp;
  ch.has_next_cursor = 1;
  ch.next_cursor = p->cursor > start + k ? p->cursor : start + k;
  ch.has_more = 1;
  ch.more = start + k < f->store->n;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_CHANGES;
  env.changes = &ch;
  fake_send(f, &env);
  for (i = 0; i < k; i++)
    fieldsync__change__free_unpacked(cp[i], NULL);
}

static void *fake_main(void *arg) {
  struct fake *f = arg;
  struct pollfd p;
  struct fsp_msg m;
  bool stop = false;

  p.fd = f->lfd;
  p.events = POLLIN;
  ASSERT_EQ(poll(&p, 1, FAKE_WAIT_MS), 1);
  f->fd = accept(f->lfd, NULL, NULL);
  ASSERT(f->fd >= 0);
  while (!stop && !f->dead && fake_read(f, &m) == 1) {
    bool answer = !(f->script == SCRIPT_CLOSE_AT && f->msgs + 1 == f->close_at);

    f->msgs++;
    switch (m.env->body_case) {
    case FIELDSYNC__ENVELOPE__BODY_HELLO:
      if (answer)
        fake_hello(f, m.env);
      stop = f->script == SCRIPT_TRUNCATED || f->script == SCRIPT_DRAIN;
      break;
    case FIELDSYNC__ENVELOPE__BODY_PUSH:
      fake_push(f, m.env->push, answer);
      break;
    case FIELDSYNC__ENVELOPE__BODY_PULL:
      if (answer)
        fake_pull(f, m.env->pull);
      break;
    case FIELDSYNC__ENVELOPE__BODY_BYE:
      f->bye = true;
      break;
    case FIELDSYNC__ENVELOPE__BODY_ERROR:
      f->client_error = (int)m.env->error->code;
      break;
    default:
      test_fail(__FILE__, __LINE__, "fake server: client sent %s",
                fsp_msg_body_name(m.env));
    }
    fsp_msg_close(&m);
    if (!answer)
      stop = true;
  }
  close(f->fd);
  fsp_frame_decoder_close(&f->dec);
  return NULL;
}

/* Zeroes f for a connection to store s. Set the script, then start. */
static void fake_init(struct fake *f, struct store *s, enum script script) {
  memset(f, 0, sizeof(*f));
  f->store = s;
  f->script = script;
  f->fd = -1;
  f->lfd = -1;
}

/* Listens on 127.0.0.1 port 0 and serves one connection on a thread. */
static void fake_start(struct fake *f) {
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);

  fsp_limits_default(&f->lim);
  if (f->max_frame != 0)
    f->lim.max_frame = f->max_frame;
  if (f->max_batch != 0)
    f->lim.max_batch = f->max_batch;
  fsp_frame_decoder_init(&f->dec, f->lim.max_frame);
  f->lfd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT(f->lfd >= 0);
  if (f->small_rcvbuf) {
    /* Inherited by the accepted socket: a large Push then cannot sit in
     * buffers when the fake hangs up, and the client's send breaks. */
    int sz = 4096;
    ASSERT_OK(setsockopt(f->lfd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)));
  }
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ASSERT_OK(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)));
  ASSERT_OK(listen(f->lfd, 4));
  ASSERT_OK(getsockname(f->lfd, (struct sockaddr *)&a, &alen));
  f->port = ntohs(a.sin_port);
  ASSERT_OK(pthread_create(&f->th, NULL, fake_main, f));
}

static void fake_join(struct fake *f) {
  if (f->tolerant) {
    /* The client may have failed before it connected: connect and hang
     * up, so a fake still waiting in accept sees an empty session. */
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT(fd >= 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(f->port);
    ASSERT_OK(connect(fd, (struct sockaddr *)&a, sizeof(a)));
    close(fd);
  }
  ASSERT_OK(pthread_join(f->th, NULL));
  close(f->lfd);
}

/* ---- the client side --------------------------------------------------- */

/* What the callbacks saw. */
struct log {
  int outcomes;
  char outcome[LOG_MAX][16];
  char reason[LOG_MAX][200];
  char collection[LOG_MAX][24];
  char id[LOG_MAX][33];
  int progress;
  char phase[LOG_MAX][8];
  size_t done[LOG_MAX];
  size_t total[LOG_MAX];
};

static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  struct log *l = data;
  int i = l->outcomes++;

  if (i >= LOG_MAX)
    return;
  snprintf(l->outcome[i], sizeof(l->outcome[i]), "%s", outcome);
  snprintf(l->reason[i], sizeof(l->reason[i]), "%s",
           reason != NULL ? reason : "(null)");
  snprintf(l->collection[i], sizeof(l->collection[i]), "%s", collection);
  snprintf(l->id[i], sizeof(l->id[i]), "%s", id);
}

static void on_progress(const char *phase, size_t done, size_t total,
                        void *data) {
  struct log *l = data;
  int i = l->progress++;

  if (i >= LOG_MAX)
    return;
  snprintf(l->phase[i], sizeof(l->phase[i]), "%s", phase);
  l->done[i] = done;
  l->total[i] = total;
}

static char server_buf[64];

/* Options for a sync with f (or with any "host:port" when f is NULL). */
static struct fieldsync_sync_opts opts_for(const struct fake *f, unsigned batch,
                                           struct log *l) {
  struct fieldsync_sync_opts o;

  memset(&o, 0, sizeof(o));
  if (f != NULL)
    snprintf(server_buf, sizeof(server_buf), "127.0.0.1:%u", (unsigned)f->port);
  o.server = server_buf;
  o.token = token;
  o.timeout_ms = 5000;
  o.plaintext = 1; /* the fake server speaks plain TCP */
  o.batch = batch;
  if (l != NULL) {
    memset(l, 0, sizeof(*l));
    o.outcome = on_outcome;
    o.outcome_data = l;
    o.progress = on_progress;
    o.progress_data = l;
  }
  return o;
}

/* One session between db and a fake server with the given script. */
static int sync_once(fieldsync_db *db, struct store *s, enum script script,
                     unsigned batch, struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_opts o;
  struct fake f;
  int rc;

  fake_init(&f, s, script);
  fake_start(&f);
  o = opts_for(&f, batch, NULL);
  rc = fieldsync_sync(db, &o, st);
  fake_join(&f);
  return rc;
}

/* ---- tests ------------------------------------------------------------- */

TEST(happy_session) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  struct log l;
  fieldsync_db *db;
  char mine[3][33];
  char theirs[2][33];
  char hex[33];
  int i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  store_seed(&s, 2, theirs);
  add_obs(db, mine[0], "OP1");
  add_obs(db, mine[1], "OP2");
  add_obs(db, mine[2], "OP3");
  ASSERT_EQ(pending(db), 3);

  fake_init(&f, &s, SCRIPT_NORMAL);
  fake_start(&f);
  o = opts_for(&f, 2, &l);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);

  /* The Hello. */
  ASSERT_EQ(f.env_version, 1);
  ASSERT_EQ(f.hello_version, 1);
  ASSERT_STR_EQ(f.token, token);
  ASSERT(strncmp(f.client_version, "fieldsync/", 10) == 0);
  ASSERT_STR_EQ(f.client_version + 10, fieldsync_version_string());
  fsc_hex(f.replica, 16, hex);
  {
    char want[33];
    fieldsync_replica_id(db, want);
    ASSERT_STR_EQ(hex, want);
  }
  /* Push: batches of 2 then 1, batch ids that differ. */
  ASSERT_EQ(f.pushes, 2);
  ASSERT_EQ(f.push_n[0], 2);
  ASSERT_EQ(f.push_n[1], 1);
  ASSERT_NE(f.batch_id[0], f.batch_id[1]);
  ASSERT_EQ(st.pushed, 3);
  ASSERT_EQ(st.acked, 3);
  ASSERT_EQ(st.conflicts, 0);
  ASSERT_EQ(st.refused, 0);
  ASSERT_EQ(pending(db), 0);
  for (i = 0; i < 3; i++)
    ASSERT_EQ(versions_of(s.db, mine[i]), 1); /* the server has them */
  ASSERT_EQ(l.outcomes, 3);
  for (i = 0; i < 3; i++) {
    ASSERT_STR_EQ(l.outcome[i], "applied");
    ASSERT_STR_EQ(l.reason[i], "(null)");
    ASSERT_STR_EQ(l.collection[i], "observation");
    ASSERT_STR_EQ(l.id[i], mine[i]); /* in the order they were made */
  }
  /* Pull: the 2 from elsewhere plus our own 3 coming back as known. */
  ASSERT_EQ(f.pulls, 3);
  ASSERT_EQ(f.pull_cursor[0], 0);
  ASSERT_EQ(f.pull_max[0], 2);
  ASSERT_EQ(f.pull_cursor[1], 2);
  ASSERT_EQ(f.pull_cursor[2], 4);
  ASSERT_EQ(st.pulled, 5);
  ASSERT_EQ(st.applied, 2);
  ASSERT_EQ(st.pull_conflicts, 0);
  ASSERT_EQ(st.cursor, 5);
  ASSERT_EQ(cursor_of(db), 5);
  ASSERT_EQ(versions_of(db, theirs[0]), 1);
  ASSERT_EQ(versions_of(db, theirs[1]), 1);
  ASSERT(f.bye);
  ASSERT_EQ(f.client_error, 0);
  ASSERT_STR_EQ(fieldsync_errmsg(db), "ok");
  /* Progress: after each batch, per phase, total unknown. */
  ASSERT_EQ(l.progress, 5);
  ASSERT_STR_EQ(l.phase[0], "push");
  ASSERT_EQ(l.done[0], 2);
  ASSERT_STR_EQ(l.phase[1], "push");
  ASSERT_EQ(l.done[1], 3);
  ASSERT_STR_EQ(l.phase[2], "pull");
  ASSERT_EQ(l.done[2], 2);
  ASSERT_EQ(l.done[3], 4);
  ASSERT_STR_EQ(l.phase[4], "pull");
  ASSERT_EQ(l.done[4], 5);
  ASSERT_EQ(l.total[4], 0);

  /* A second sync pushes nothing and pulls nothing new. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  fake_start(&f);
  o = opts_for(&f, 0, &l);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.pushes, 0);
  ASSERT_EQ(f.pulls, 1);
  ASSERT_EQ(f.pull_cursor[0], 5);
  ASSERT_EQ(f.pull_max[0], 1000); /* batch 0 means 1000 */
  ASSERT_EQ(st.pushed, 0);
  ASSERT_EQ(st.pulled, 0);
  ASSERT_EQ(st.cursor, 5);
  ASSERT_EQ(l.outcomes, 0);
  ASSERT(f.bye);
  ASSERT_EQ(s.n, 5); /* nothing was stored twice */
  store_close(&s);
  fieldsync_close(db);
}

TEST(auth_refused) {
  struct fieldsync_sync_stats st;
  struct store s;
  fieldsync_db *db;
  char id[33];

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  add_obs(db, id, "OP1");
  ASSERT_EQ(sync_once(db, &s, SCRIPT_AUTH_FAIL, 0, &st), FIELDSYNC_EAUTH);
  ASSERT_STR_EQ(fieldsync_errmsg(db), "server: ERR_UNAUTHENTICATED: device "
                                      "token revoked on 2026-03-01");
  ASSERT(strstr(fieldsync_errmsg(db), token) == NULL);
  ASSERT_EQ(st.pushed, 0);
  ASSERT_EQ(pending(db), 1);
  ASSERT_STR_EQ(fieldsync_errname(FIELDSYNC_EAUTH), "FIELDSYNC_EAUTH");
  ASSERT_STR_EQ(fieldsync_strerror(FIELDSYNC_EAUTH),
                "server refused the device token");
  store_close(&s);
  fieldsync_close(db);
}

TEST(server_error_mid_push) {
  struct fieldsync_sync_stats st;
  struct store s;
  fieldsync_db *db;
  char id[33];

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  add_obs(db, id, "OP1");
  ASSERT_EQ(sync_once(db, &s, SCRIPT_STORAGE_ERROR, 0, &st), FIELDSYNC_ESERVER);
  ASSERT_STR_EQ(fieldsync_errmsg(db),
                "server: ERR_STORAGE: disk full; nothing was stored");
  ASSERT_EQ(pending(db), 1);
  ASSERT_EQ(st.acked, 0);
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(st.acked, 1);
  ASSERT_EQ(pending(db), 0);
  store_close(&s);
  fieldsync_close(db);
}

/* The server says why it ends the session, then hangs up while we are
 * sending: its reason is what we report, not a broken pipe. */
TEST(server_error_then_close) {
  struct fieldsync_sync_stats st;
  struct store s;
  fieldsync_db *db;
  char id[33];
  char text[60000];
  const char *kv[] = {"visit_id", visit_a, "evidence_text", text, NULL};
  int i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  /* One Push of about 2.4 MB into a peer with a tiny receive buffer that
   * has already closed: the send fails with a reset, after the Error
   * arrived. */
  memset(text, 'x', sizeof(text) - 1);
  text[sizeof(text) - 1] = '\0';
  for (i = 0; i < 40; i++)
    add(db, "observation", id, kv);
  for (i = 0; i < 5; i++) {
    struct fieldsync_sync_opts o;
    struct fake f;

    fake_init(&f, &s, SCRIPT_DRAIN);
    f.small_rcvbuf = true;
    fake_start(&f);
    o = opts_for(&f, 0, NULL);
    ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ESERVER);
    fake_join(&f);
    ASSERT_STR_EQ(fieldsync_errmsg(db),
                  "server: ERR_SHUTTING_DOWN: draining; retry later");
  }
  ASSERT_EQ(pending(db), 40);
  store_close(&s);
  fieldsync_close(db);
}

TEST(server_closes_mid_push) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char id[3][33];

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  add_obs(db, id[0], "OP1");
  add_obs(db, id[1], "OP2");
  add_obs(db, id[2], "OP3");
  /* Message 2 is the Push: the server stores it, then dies before the
   * PushAck. */
  fake_init(&f, &s, SCRIPT_CLOSE_AT);
  f.close_at = 2;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ENETWORK);
  fake_join(&f);
  ASSERT(strstr(fieldsync_errmsg(db), "closed the connection") != NULL ||
         strstr(fieldsync_errmsg(db), "lost the connection") != NULL);
  ASSERT_EQ(f.pushes, 1);
  ASSERT_EQ(st.acked, 0);
  ASSERT_EQ(pending(db), 3); /* not acknowledged: still to send */
  ASSERT_EQ(s.n, 3);

  /* The next sync resends them; the server knows them already. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.push_n[0], 3);
  ASSERT_EQ(st.acked, 3);
  ASSERT_EQ(pending(db), 0);
  ASSERT_EQ(s.n, 3); /* no duplicates in the feed */
  ASSERT_EQ(st.pulled, 3);
  ASSERT_EQ(st.applied, 0);
  ASSERT_EQ(cursor_of(db), 3);
  store_close(&s);
  fieldsync_close(db);
}

/* One interrupted session from a fixed starting state, cut after the
 * server handled message k (1 = Hello) and before it answered, then a
 * clean session: nothing is lost, nothing is duplicated, both sides
 * converge. Returns the interrupted session's result. */
static int interrupt_at(int k) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char name[32];
  char mine[3][33];
  char theirs[3][33];
  char *json = NULL;
  int rc;
  int i;

  snprintf(name, sizeof(name), "tablet-%d.db", k);
  db = open_new(name);
  snprintf(name, sizeof(name), "server-%d.db", k);
  store_open(&s, name);
  store_seed(&s, 3, theirs);
  add_obs(db, mine[0], "OP1");
  add_obs(db, mine[1], "OP2");
  add_obs(db, mine[2], "OP3");
  edit(db, mine[0], "standard_code", "OP1b");
  ASSERT_OK(fieldsync_delete(db, mine[1])); /* a tombstone travels too */
  ASSERT_EQ(pending(db), 3);

  fake_init(&f, &s, SCRIPT_CLOSE_AT);
  f.close_at = k;
  f.pull_cap = 1;
  fake_start(&f);
  o = opts_for(&f, 1, NULL);
  rc = fieldsync_sync(db, &o, &st);
  fake_join(&f);

  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(pending(db), 0);
  ASSERT_EQ(s.n, 6); /* 3 seeded + 3 pushed, each stored once */
  ASSERT_EQ(cursor_of(db), 6);
  for (i = 0; i < 3; i++) {
    ASSERT_EQ(versions_of(db, theirs[i]), 1);
    ASSERT_EQ(versions_of(db, mine[i]), 1);
    ASSERT_EQ(versions_of(s.db, mine[i]), 1);
  }
  ASSERT_OK(fieldsync_get_json(s.db, mine[1], &json));
  ASSERT(strstr(json, "\"deleted\":true") != NULL);
  fieldsync_free(json);
  ASSERT_OK(fieldsync_get_json(s.db, mine[0], &json));
  ASSERT(strstr(json, "OP1b") != NULL);
  fieldsync_free(json);
  store_close(&s);
  fieldsync_close(db);
  return rc;
}

/* With batch 1 and one change per Changes a whole session is 11 client
 * messages: Hello, 3 Push, 6 Pull (cursor 0 to 5; the 6th answer says no
 * more), Bye. Cut it after each one in turn. */
TEST(interrupt_anywhere_loses_nothing) {
  int k;
  int rc;

  setup_dir();
  for (k = 1;; k++) {
    rc = interrupt_at(k);
    if (rc == 0)
      break;
    ASSERT_EQ(rc, FIELDSYNC_ENETWORK);
  }
  /* Hello + 3 Push + 6 Pull were each cut; the Bye is the first message
   * whose loss does not matter. */
  ASSERT_EQ(k, 11);
}

TEST(bad_push_ack) {
  static const enum script scripts[] = {SCRIPT_ACK_BATCH_ID, SCRIPT_ACK_COUNT,
                                        SCRIPT_ACK_HASH};
  static const char *const why[] = {"batch_id", "outcomes for",
                                    "key or hash differs"};
  struct fieldsync_sync_stats st;
  struct store s;
  fieldsync_db *db;
  char id[2][33];
  size_t i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  add_obs(db, id[0], "OP1");
  add_obs(db, id[1], "OP2");
  for (i = 0; i < 3; i++) {
    struct fieldsync_sync_opts o;
    struct fake f;

    fake_init(&f, &s, scripts[i]);
    fake_start(&f);
    o = opts_for(&f, 0, NULL);
    ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EPROTOCOL);
    fake_join(&f);
    if (strstr(fieldsync_errmsg(db), why[i]) == NULL)
      test_fail(__FILE__, __LINE__, "errmsg: %s", fieldsync_errmsg(db));
    ASSERT(strstr(fieldsync_errmsg(db), "broke the protocol") != NULL);
    ASSERT_EQ(f.client_error, FIELDSYNC__ERROR_CODE__ERR_INVALID);
    ASSERT_EQ(st.acked, 0);
    ASSERT_EQ(pending(db), 2); /* nothing recorded from a bad ack */
  }
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(st.acked, 2);
  ASSERT_EQ(pending(db), 0);
  store_close(&s);
  fieldsync_close(db);
}

TEST(bad_bytes_from_server) {
  static const enum script scripts[] = {SCRIPT_GARBAGE, SCRIPT_HUGE_HEADER,
                                        SCRIPT_ZERO_FRAME};
  static const int wire[] = {FIELDSYNC__ERROR_CODE__ERR_MALFORMED,
                             FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE,
                             FIELDSYNC__ERROR_CODE__ERR_MALFORMED};
  struct fieldsync_sync_stats st;
  struct store s;
  fieldsync_db *db;
  size_t i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  for (i = 0; i < 3; i++) {
    struct fieldsync_sync_opts o;
    struct fake f;

    fake_init(&f, &s, scripts[i]);
    fake_start(&f);
    o = opts_for(&f, 0, NULL);
    ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EPROTOCOL);
    fake_join(&f);
    ASSERT(strstr(fieldsync_errmsg(db), "broke the protocol") != NULL);
    ASSERT_EQ(f.client_error, wire[i]); /* told the server why */
  }
  /* A frame over the limit the server itself announced. */
  {
    struct fieldsync_sync_opts o;
    struct fake f;

    store_seed(&s, 1, NULL);
    fake_init(&f, &s, SCRIPT_OVER_LIMIT);
    f.max_frame = 2048;
    fake_start(&f);
    o = opts_for(&f, 0, NULL);
    ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EPROTOCOL);
    fake_join(&f);
    ASSERT(strstr(fieldsync_errmsg(db), "2048") != NULL);
    ASSERT_EQ(f.client_error, FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE);
    ASSERT_EQ(cursor_of(db), 0);
  }
  /* Half a frame, then the server goes: a lost connection. */
  ASSERT_EQ(sync_once(db, &s, SCRIPT_TRUNCATED, 0, &st), FIELDSYNC_ENETWORK);
  ASSERT(strstr(fieldsync_errmsg(db), "in the middle of") != NULL);
  /* An answer of the wrong type. */
  ASSERT_EQ(sync_once(db, &s, SCRIPT_WRONG_REPLY, 0, &st), FIELDSYNC_EPROTOCOL);
  ASSERT(strstr(fieldsync_errmsg(db), "expected changes, got push_ack") !=
         NULL);
  store_close(&s);
  fieldsync_close(db);
}

TEST(server_never_answers) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  int64_t t0;
  int64_t took;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  fake_init(&f, &s, SCRIPT_SILENT);
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  o.timeout_ms = 300;
  t0 = mono_ms();
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ETIMEOUT);
  took = mono_ms() - t0;
  fake_join(&f);
  ASSERT_GE(took, 250);
  ASSERT_LT(took, 3000);
  ASSERT(strstr(fieldsync_errmsg(db), "300 ms") != NULL);
  store_close(&s);
  fieldsync_close(db);
}

TEST(refused_not_resent_until_retry) {
  const char *req[] = {"service_id", service_a, "text", "Sign MAR charts",
                       NULL};
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct fieldsync_counts c;
  struct store s;
  struct fake f;
  struct log l;
  fieldsync_db *db;
  char obs1[33];
  char obs2[33];
  char rq[33];
  char *json = NULL;
  size_t n;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  add_obs(db, obs1, "OP1");
  add(db, "requirement", rq, req);
  add_obs(db, obs2, "OP2");
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.refuse = FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT;
  fake_start(&f);
  o = opts_for(&f, 1, &l);
  snprintf(server_buf, sizeof(server_buf), "localhost:%u", (unsigned)f.port);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.pushes, 3); /* the refused one is not offered twice */
  ASSERT_EQ(st.pushed, 3);
  ASSERT_EQ(st.acked, 2);
  ASSERT_EQ(st.refused, 1);
  ASSERT_EQ(l.outcomes, 3);
  ASSERT_STR_EQ(l.outcome[0], "applied");
  ASSERT_STR_EQ(l.outcome[1], "refused");
  ASSERT_STR_EQ(l.collection[1], "requirement");
  ASSERT_STR_EQ(l.id[1], rq);
  ASSERT_STR_EQ(l.reason[1], "ERR_FORBIDDEN: requirements are head office's");
  ASSERT_STR_EQ(l.outcome[2], "applied");
  ASSERT_EQ(versions_of(s.db, rq), 0);
  /* It stays here, unacknowledged and marked refused. */
  ASSERT_EQ(pending(db), 0);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.refused, 1);
  ASSERT_EQ(c.pending, 0);
  ASSERT_OK(fieldsync_get_json(db, rq, &json));
  ASSERT(strstr(json, "\"pending\":true,\"refused\":{\"code\":"
                      "\"ERR_FORBIDDEN\",\"reason\":\"requirements are head "
                      "office's\"}") != NULL);
  fieldsync_free(json);

  /* The next sync, to a server that would take it, does not send it. */
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(st.pushed, 0);
  ASSERT_EQ(st.refused, 0);
  ASSERT_EQ(versions_of(s.db, rq), 0);

  /* After a retry it does. */
  ASSERT_OK(fieldsync_retry_refused(db, rq, &n));
  ASSERT_EQ(n, 1);
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(st.pushed, 1);
  ASSERT_EQ(st.acked, 1);
  ASSERT_EQ(pending(db), 0);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(versions_of(s.db, rq), 1);
  store_close(&s);
  fieldsync_close(db);
}

TEST(conflict_outcome) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  struct log l;
  fieldsync_db *db;
  fieldsync_db *other;
  char id[33];

  setup_dir();
  db = open_new("tablet.db");
  other = open_new("other.db");
  store_open(&s, "server.db");
  add_obs(db, id, "OP1");
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_OK(sync_once(other, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(versions_of(other, id), 1);
  /* Both edit offline; the other tablet syncs first. */
  edit(db, id, "standard_code", "OP1-mine");
  edit(other, id, "standard_code", "OP1-theirs");
  ASSERT_OK(sync_once(other, &s, SCRIPT_NORMAL, 0, &st));
  fake_init(&f, &s, SCRIPT_NORMAL);
  fake_start(&f);
  o = opts_for(&f, 0, &l);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(st.conflicts, 1);
  ASSERT_EQ(st.acked, 1);
  ASSERT_STR_EQ(l.outcome[0], "conflict");
  ASSERT_EQ(st.pull_conflicts, 1); /* the other's edit arrived */
  ASSERT_EQ(versions_of(db, id), 2);
  store_close(&s);
  fieldsync_close(other);
  fieldsync_close(db);
}

/* A pulled batch is applied with its cursor in one transaction: a batch
 * that cannot be applied leaves nothing of itself behind. */
TEST(pull_batch_is_atomic) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char theirs[3][33];

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  store_seed(&s, 3, theirs);
  store_poison(&s); /* seq 4 */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.pull_cap = 2;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EPROTOCOL);
  fake_join(&f);
  ASSERT(strstr(fieldsync_errmsg(db), "changes:") != NULL);
  ASSERT_EQ(f.client_error, FIELDSYNC__ERROR_CODE__ERR_INVALID);
  ASSERT_EQ(f.pulls, 2);
  /* Batch 1 (seq 1-2) is in; batch 2 (seq 3 and the poison) is not. */
  ASSERT_EQ(versions_of(db, theirs[0]), 1);
  ASSERT_EQ(versions_of(db, theirs[1]), 1);
  ASSERT_EQ(versions_of(db, theirs[2]), 0);
  ASSERT_EQ(cursor_of(db), 2);
  ASSERT_EQ(st.cursor, 2);
  ASSERT_EQ(st.pulled, 2);
  store_close(&s);
  fieldsync_close(db);
}

/* Welcome's limits: max_batch_records caps the batch, max_frame_bytes
 * splits it, and a version too large for any frame is held back. */
TEST(server_limits_respected) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  struct log l;
  fieldsync_db *db;
  char id[8][33];
  char big[33];
  char text[1500];
  int i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  for (i = 0; i < 3; i++)
    add_obs(db, id[i], "OP1");
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.max_batch = 2;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.pushes, 2);
  ASSERT_EQ(f.push_n[0], 2);
  ASSERT_EQ(f.push_n[1], 1);
  ASSERT_EQ(f.pull_max[0], 2);

  for (i = 3; i < 8; i++)
    add_obs(db, id[i], "OP2");
  memset(text, 'x', sizeof(text) - 1);
  text[sizeof(text) - 1] = '\0';
  {
    const char *kv[] = {"visit_id", visit_a, "evidence_text", text, NULL};
    add(db, "observation", big, kv);
  }
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.max_frame = 600; /* room for about three small observations */
  fake_start(&f);
  o = opts_for(&f, 0, &l);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_GT(f.pushes, 1);
  ASSERT_LE(f.max_body, 600);
  ASSERT_EQ(st.pushed, 5);
  ASSERT_EQ(st.acked, 5);
  ASSERT_EQ(st.refused, 1);
  ASSERT_EQ(l.outcomes, 6);
  ASSERT_STR_EQ(l.outcome[5], "refused");
  ASSERT_STR_EQ(l.id[5], big);
  ASSERT(strstr(l.reason[5], "frame limit") != NULL);
  ASSERT_EQ(pending(db), 1);
  /* Pulls were split to fit as well (the fake packs to the limit). */
  ASSERT_EQ(cursor_of(db), s.n);
  store_close(&s);
  fieldsync_close(db);
}

TEST(bad_addresses) {
  static const char *const bad[] = {
      "",         "localhost",  "localhost:", ":7420",
      "host:0",   "host:65536", "host:12a",   "host:-1",
      "host: 80", "[::1]",      "[::1",       "[::1]7420",
      "::1:7420", "[]:7420",    "a b:80",     "host:123456"};
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  fieldsync_db *db;
  char longhost[300];
  size_t i;

  setup_dir();
  db = open_new("tablet.db");
  o = opts_for(NULL, 0, NULL);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    o.server = bad[i];
    if (fieldsync_sync(db, &o, &st) != FIELDSYNC_EINVAL)
      test_fail(__FILE__, __LINE__, "\"%s\" accepted", bad[i]);
    ASSERT(strstr(fieldsync_errmsg(db), "bad server address") != NULL);
  }
  memset(longhost, 'a', 280);
  snprintf(longhost + 280, sizeof(longhost) - 280, ":80");
  o.server = longhost;
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EINVAL);
  o.server = NULL;
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EINVAL);
  /* Other bad options. */
  o.server = "127.0.0.1:1";
  o.token = NULL;
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EINVAL);
  ASSERT(strstr(fieldsync_errmsg(db), "token") != NULL);
  o.token = "bad\xff";
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EINVAL);
  o.token = token;
  o.timeout_ms = -1;
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_sync(db, NULL, &st), FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_sync(NULL, &o, &st), FIELDSYNC_EINVAL);
  o.timeout_ms = 0;
  ASSERT_OK(fieldsync_batch_begin(db));
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EINVAL);
  ASSERT(strstr(fieldsync_errmsg(db), "batch") != NULL);
  ASSERT_OK(fieldsync_batch_rollback(db));
  fieldsync_close(db);
}

/* A port that was bound and closed: nothing listens there. */
static uint16_t dead_port(void) {
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  ASSERT(fd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(bind(fd, (struct sockaddr *)&a, sizeof(a)));
  ASSERT_OK(getsockname(fd, (struct sockaddr *)&a, &alen));
  close(fd);
  return ntohs(a.sin_port);
}

TEST(connection_refused) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  fieldsync_db *db;
  char id[33];
  uint16_t port = dead_port();

  setup_dir();
  db = open_new("tablet.db");
  add_obs(db, id, "OP1");
  o = opts_for(NULL, 0, NULL);
  snprintf(server_buf, sizeof(server_buf), "127.0.0.1:%u", (unsigned)port);
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ENETWORK);
  ASSERT(strstr(fieldsync_errmsg(db), "cannot connect to 127.0.0.1:") != NULL);
  ASSERT_EQ(pending(db), 1);
  /* A bracketed IPv6 address parses; nothing listens there either (or
   * the host has no IPv6): a network error, not a bad address. */
  snprintf(server_buf, sizeof(server_buf), "[::1]:%u", (unsigned)port);
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ENETWORK);
  /* An unresolvable name. */
  snprintf(server_buf, sizeof(server_buf), "no-such-host.invalid:7420");
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ENETWORK);
  ASSERT(strstr(fieldsync_errmsg(db), "resolve") != NULL);
  fieldsync_close(db);
}

/* What the done callback saw. */
struct done_log {
  int calls;
  int rc;
  struct fieldsync_sync_stats st;
  char errmsg[200];
  fieldsync_db *db;
};

static void on_done(int rc, const struct fieldsync_sync_stats *st, void *data) {
  struct done_log *d = data;

  d->calls++;
  d->rc = rc;
  d->st = *st;
  snprintf(d->errmsg, sizeof(d->errmsg), "%s", fieldsync_errmsg(d->db));
}

TEST(async_start_join) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_job *job;
  struct done_log d;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char id[33];
  char server[64];
  char tok[32];

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  store_seed(&s, 1, NULL);
  add_obs(db, id, "OP1");
  memset(&d, 0, sizeof(d));
  d.db = db;
  fake_init(&f, &s, SCRIPT_NORMAL);
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  /* The options are copied: scribbling over them after start is fine. */
  snprintf(server, sizeof(server), "127.0.0.1:%u", (unsigned)f.port);
  snprintf(tok, sizeof(tok), "%s", token);
  o.server = server;
  o.token = tok;
  ASSERT_OK(fieldsync_sync_start(db, &o, on_done, &d, &job));
  ASSERT(job != NULL);
  memset(server, 'z', sizeof(server) - 1);
  memset(tok, 'z', sizeof(tok) - 1);
  ASSERT_OK(fieldsync_sync_join(job));
  fake_join(&f);
  ASSERT_EQ(d.calls, 1);
  ASSERT_EQ(d.rc, 0);
  ASSERT_EQ(d.st.acked, 1);
  ASSERT_EQ(d.st.pulled, 2);
  ASSERT_STR_EQ(f.token, token);
  ASSERT_EQ(pending(db), 0);

  /* A failing sync reports through done, and join returns its code. */
  memset(&d, 0, sizeof(d));
  d.db = db;
  fake_init(&f, &s, SCRIPT_AUTH_FAIL);
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync_start(db, &o, on_done, &d, &job));
  ASSERT_EQ(fieldsync_sync_join(job), FIELDSYNC_EAUTH);
  fake_join(&f);
  ASSERT_EQ(d.calls, 1);
  ASSERT_EQ(d.rc, FIELDSYNC_EAUTH);
  ASSERT(strstr(d.errmsg, "ERR_UNAUTHENTICATED") != NULL);

  /* Refused at start: done never runs, no job. */
  memset(&d, 0, sizeof(d));
  o.server = "nonsense";
  job = (struct fieldsync_sync_job *)&d; /* must be reset to NULL */
  ASSERT_EQ(fieldsync_sync_start(db, &o, on_done, &d, &job), FIELDSYNC_EINVAL);
  ASSERT(job == NULL);
  ASSERT_EQ(d.calls, 0);
  ASSERT(strstr(fieldsync_errmsg(db), "bad server address") != NULL);
  ASSERT_EQ(fieldsync_sync_start(db, &o, NULL, &d, &job), FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_sync_start(NULL, &o, on_done, &d, &job),
            FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_sync_join(NULL), FIELDSYNC_EINVAL);
  store_close(&s);
  fieldsync_close(db);
}

/* ---- scopes, removals, backfills, revocation --------------------------- */

static const char *visit_b = "0194a1b2c3d4e5f60718293a4b5c6d7f";
static const char *visit_c = "0194a1b2c3d4e5f60718293a4b5c0001";

static struct fsc_scope scope_of(int kind, const char *hex) {
  struct fsc_scope sc;

  sc.kind = kind;
  ASSERT(fsc_unhex(hex, sc.id, 16));
  return sc;
}

static struct fsc_scope visit_scope(const char *hex) {
  return scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, hex);
}

static bool same_scope(const struct fsc_scope *a, const struct fsc_scope *b) {
  return a->kind == b->kind && memcmp(a->id, b->id, 16) == 0;
}

static struct fieldsync_counts counts(fieldsync_db *db) {
  struct fieldsync_counts c;

  ASSERT_OK(fieldsync_counts(db, &c));
  return c;
}

/* Every Pull carries the held scopes sorted by (kind, id), whatever order
 * they were granted in (the fake's decoder refuses anything else), and no
 * backfill position when there is none. */
TEST(pull_lists_held_scopes_sorted) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct fsc_scope held[3];
  struct store s;
  struct fake f;
  fieldsync_db *db;
  size_t i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  held[0] = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE, service_a);
  held[1] = visit_scope(visit_a);
  held[2] = visit_scope(visit_c);
  /* Held scopes belong to a server: bind to this one first. */
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  for (i = 0; i < 3; i++)
    ASSERT_OK(fsc_scope_hold(db, &held[i]));
  fake_init(&f, &s, SCRIPT_NORMAL);
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.pulls, 1);
  ASSERT_EQ(f.pull_nheld[0], 3);
  /* visit_c sorts before visit_a; visits (1) before services (2). */
  ASSERT(same_scope(&f.pull_held[0][0], &held[2]));
  ASSERT(same_scope(&f.pull_held[0][1], &held[1]));
  ASSERT(same_scope(&f.pull_held[0][2], &held[0]));
  ASSERT(!f.pull_bf[0]);
  store_close(&s);
  fieldsync_close(db);
}

/* A newly visible visit is backfilled in pages that leave the cursor
 * alone; an interrupted backfill resumes from the stored position; at the
 * end the visit is held and the position is gone. */
TEST(backfill_pages_and_resume) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct fsc_backfill bf;
  struct fsc_scope a = visit_scope(visit_a);
  struct fsc_scope b = visit_scope(visit_b);
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char in_a[5][33];
  char in_b[2][33];
  int i;

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  store_seed_in(&s, visit_a, 3, in_a);     /* seq 1-3 */
  store_seed_in(&s, visit_b, 2, in_b);     /* seq 4-5 */
  store_seed_in(&s, visit_a, 2, in_a + 3); /* seq 6-7 */

  /* Only B is assigned: B is backfilled (nothing below cursor 0), held,
   * and its records come through the feed. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.pulls, 2);
  ASSERT_EQ(st.pulled, 2);
  ASSERT_EQ(cursor_of(db), 7);
  ASSERT_EQ(counts(db).held_scopes, 1);
  ASSERT_EQ(versions_of(db, in_b[0]), 1);
  ASSERT_EQ(versions_of(db, in_a[0]), 0);

  /* A is assigned; two versions a page; the session is cut when the
   * second backfill Pull arrives (message 3). */
  fake_init(&f, &s, SCRIPT_CLOSE_AT);
  f.close_at = 3;
  f.scoped = true;
  f.pull_cap = 2;
  f.visible[f.nvisible++] = a;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_ENETWORK);
  fake_join(&f);
  ASSERT_EQ(st.pulled, 2);
  ASSERT_EQ(versions_of(db, in_a[0]), 1);
  ASSERT_EQ(versions_of(db, in_a[1]), 1);
  ASSERT_EQ(versions_of(db, in_a[2]), 0);
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(bf.active);
  ASSERT(same_scope(&bf.scope, &a));
  ASSERT_EQ(bf.after, 2);
  ASSERT_EQ(cursor_of(db), 7); /* a backfill never moves the cursor */
  ASSERT_EQ(counts(db).held_scopes, 1);

  /* The next session resumes after seq 2. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.pull_cap = 2;
  f.visible[f.nvisible++] = a;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT(f.pull_bf[0]);
  ASSERT(same_scope(&f.pull_bf_scope[0], &a));
  ASSERT_EQ(f.pull_bf_after[0], 2);
  ASSERT_EQ(f.pull_nheld[0], 1);
  ASSERT_EQ(f.pulls, 3); /* seq 3-6, seq 7 (done), then the feed */
  ASSERT_EQ(f.pull_bf_after[1], 6);
  ASSERT(!f.pull_bf[2]);
  ASSERT_EQ(f.pull_nheld[2], 2);
  ASSERT_EQ(st.pulled, 3); /* nothing fetched twice */
  for (i = 0; i < 5; i++)
    ASSERT_EQ(versions_of(db, in_a[i]), 1);
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(!bf.active);
  ASSERT_EQ(counts(db).held_scopes, 2);
  ASSERT_EQ(cursor_of(db), 7);
  store_close(&s);
  fieldsync_close(db);
}

/* A stored position names a scope the server no longer backfills (the
 * visit was unassigned before it finished): the server starts another
 * scope from the beginning, and the client follows. */
TEST(backfill_restarts_for_another_scope) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct fsc_backfill bf;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char in_c[3][33];

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  /* Bound to the server and pulled up to seq 3 while C was not visible;
   * a backfill of A was under way at seq 2. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  store_seed_in(&s, visit_c, 3, in_c);
  {
    struct fsc_apply_stats ast;
    ASSERT_OK(fsc_store_apply(db, NULL, 0, 3, &ast));
  }
  bf.active = true;
  bf.scope = visit_scope(visit_a);
  bf.after = 2;
  ASSERT_OK(fsc_scope_set_backfill(db, &bf));
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.pull_cap = 1;
  f.visible[f.nvisible++] = visit_scope(visit_c);
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT(f.pull_bf[0]);
  ASSERT(same_scope(&f.pull_bf_scope[0], &bf.scope)); /* asked for A */
  ASSERT(f.pull_bf[1]);
  ASSERT_EQ(f.pull_bf_after[1], 1); /* C from its start, a page at a time */
  ASSERT_EQ(st.pulled, 3);
  ASSERT_EQ(versions_of(db, in_c[2]), 1);
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(!bf.active);
  ASSERT_EQ(counts(db).held_scopes, 1);
  ASSERT_EQ(cursor_of(db), 3);
  store_close(&s);
  fieldsync_close(db);
}

/* What a hostile or broken server's pull hook answers. */
enum hostile {
  HOSTILE_SAME_BACKFILL_PAGE, /* an empty backfill page, backfill_next 5 */
  HOSTILE_EMPTY_FEED_PAGE,    /* more, nothing, next_cursor = cursor */
  HOSTILE_STUCK_FEED_PAGE,    /* more, a change, next_cursor = cursor */
  HOSTILE_BACKFILL_CURSOR,    /* a backfill page moving the cursor */
  HOSTILE_BACKFILL_NO_NEXT,   /* unfinished backfill without backfill_next */
  HOSTILE_REMOVE_AND_POISON   /* removes A, plus a change that cannot apply */
};

/* The hook's settings. */
struct hostile_cfg {
  enum hostile h;
  const struct store *poison; /* its first change cannot be applied */
};

static void hostile_pull(struct fake *f, const Fieldsync__Pull *p) {
  const struct hostile_cfg *cfg = f->hook_data;
  enum hostile h = cfg->h;
  static struct fsc_scope a;
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;
  Fieldsync__ScopeKey k;
  Fieldsync__ScopeKey *kp = &k;
  Fieldsync__Change *c = NULL;

  a = visit_scope(visit_a);
  scope_pb(&k, &a);
  ch.has_next_cursor = 1;
  ch.next_cursor = p->cursor;
  ch.has_more = 1;
  ch.more = 1;
  if (h == HOSTILE_REMOVE_AND_POISON) {
    c = fieldsync__change__unpack(NULL, cfg->poison->len[0],
                                  cfg->poison->feed[0]);
    ASSERT(c != NULL);
  } else if (f->store->n > 0) {
    c = fieldsync__change__unpack(NULL, f->store->len[0], f->store->feed[0]);
    ASSERT(c != NULL);
  }
  switch (h) {
  case HOSTILE_SAME_BACKFILL_PAGE:
    ch.backfill_scope = &k;
    ch.has_backfill_next = 1;
    ch.backfill_next = 5;
    break;
  case HOSTILE_EMPTY_FEED_PAGE:
    break;
  case HOSTILE_STUCK_FEED_PAGE:
    ch.n_changes = 1;
    ch.changes = &c;
    break;
  case HOSTILE_BACKFILL_CURSOR:
    ch.backfill_scope = &k;
    ch.has_backfill_next = 1;
    ch.backfill_next = 5;
    ch.next_cursor = p->cursor + 10;
    break;
  case HOSTILE_BACKFILL_NO_NEXT:
    ch.backfill_scope = &k;
    break;
  case HOSTILE_REMOVE_AND_POISON:
    ch.n_removed_scopes = 1;
    ch.removed_scopes = &kp;
    ch.n_changes = 1;
    ch.changes = &c;
    ch.next_cursor = p->cursor + 1;
    ch.more = 0;
    break;
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_CHANGES;
  env.changes = &ch;
  fake_send(f, &env);
  if (c != NULL)
    fieldsync__change__free_unpacked(c, NULL);
}

/* One session against a hostile pull hook; returns its result. */
static int sync_hostile(fieldsync_db *db, struct store *s, enum hostile h,
                        struct fake *f) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct hostile_cfg cfg;
  struct store poison;
  int rc;

  memset(&poison, 0, sizeof(poison));
  store_poison(&poison);
  cfg.h = h;
  cfg.poison = &poison;
  fake_init(f, s, SCRIPT_NORMAL);
  f->on_pull = hostile_pull;
  f->hook_data = &cfg;
  fake_start(f);
  o = opts_for(f, 0, NULL);
  rc = fieldsync_sync(db, &o, &st);
  fake_join(f);
  store_close(&poison);
  return rc;
}

/* A server that asks for another Pull must have made progress: the same
 * empty backfill page twice, an empty or stuck feed page, a backfill page
 * that moves the cursor or gives no position are protocol errors, each
 * reported to the server, and nothing of the bad page is kept. */
TEST(pull_must_progress) {
  static const struct {
    enum hostile h;
    int pulls;
    const char *why;
  } cases[] = {
      {HOSTILE_SAME_BACKFILL_PAGE, 2, "did not advance"},
      {HOSTILE_EMPTY_FEED_PAGE, 1, "next_cursor did not move"},
      {HOSTILE_STUCK_FEED_PAGE, 1, "next_cursor did not move"},
      {HOSTILE_BACKFILL_CURSOR, 1, "not the Pull's cursor"},
      {HOSTILE_BACKFILL_NO_NEXT, 1, "backfill_next: missing"},
  };
  struct fsc_backfill bf;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  size_t i;

  setup_dir();
  store_open(&s, "server.db");
  store_seed(&s, 1, NULL);
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    char name[32];

    snprintf(name, sizeof(name), "tablet-%zu.db", i);
    db = open_new(name);
    ASSERT_EQ(sync_hostile(db, &s, cases[i].h, &f), FIELDSYNC_EPROTOCOL);
    if (strstr(fieldsync_errmsg(db), cases[i].why) == NULL)
      test_fail(__FILE__, __LINE__, "case %zu: %s", i, fieldsync_errmsg(db));
    ASSERT_EQ(f.pulls, cases[i].pulls);
    ASSERT_EQ(f.client_error, FIELDSYNC__ERROR_CODE__ERR_INVALID);
    ASSERT_EQ(cursor_of(db), 0);
    ASSERT_OK(fsc_scope_backfill(db, &bf));
    /* Only the first, progressing page of the repeated one was kept. */
    ASSERT_EQ(bf.active, cases[i].h == HOSTILE_SAME_BACKFILL_PAGE);
    if (bf.active)
      ASSERT_EQ(bf.after, 5);
    ASSERT_EQ(counts(db).records, 0);
    fieldsync_close(db);
  }
  store_close(&s);
}

/* When the server withdraws a scope, its records go, acknowledged or not,
 * after the unacknowledged ones (here: refused by the server) were
 * quarantined; other scopes stay, and the next Pull no longer lists it. A
 * message that cannot be applied whole removes nothing. */
TEST(scope_removed_by_server) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct fieldsync_counts c;
  struct fsc_scope a = visit_scope(visit_a);
  struct fsc_scope b = visit_scope(visit_b);
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char a_acked[33];
  char a_refused[33];
  char b_acked[33];
  char theirs_a[33];
  const char *kv_b[] = {"visit_id", visit_b, "standard_code", "B1", NULL};

  setup_dir();
  db = open_new("tablet.db");
  store_open(&s, "server.db");
  add_obs(db, a_acked, "A1");
  add(db, "observation", b_acked, kv_b);
  /* A and B assigned: everything is pushed and held. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.visible[f.nvisible++] = a;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(st.acked, 2);
  ASSERT_EQ(counts(db).held_scopes, 2);
  store_seed_in(&s, visit_a, 1, &theirs_a);
  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(versions_of(db, theirs_a), 1);
  /* A new observation in A, which the server now refuses. */
  add_obs(db, a_refused, "A2");
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.refuse_scope = &a;
  f.visible[f.nvisible++] = a;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(st.refused, 1);

  /* A hostile answer: removing A together with a change that cannot be
   * applied. Nothing of it is kept. */
  c = counts(db);
  {
    struct fieldsync_counts c2;
    ASSERT_EQ(sync_hostile(db, &s, HOSTILE_REMOVE_AND_POISON, &f),
              FIELDSYNC_EPROTOCOL);
    c2 = counts(db);
    ASSERT_MEM_EQ(&c, &c2, sizeof(c));
    ASSERT_EQ(c2.quarantined, 0);
    ASSERT_EQ(versions_of(db, a_acked), 1);
  }

  /* A is unassigned. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(st.pushed, 0); /* the refused version was not sent again */
  ASSERT_EQ(st.removed, 3);
  ASSERT_EQ(st.quarantined, 1);
  ASSERT_EQ(versions_of(db, a_acked), 0);
  ASSERT_EQ(versions_of(db, a_refused), 0);
  ASSERT_EQ(versions_of(db, theirs_a), 0);
  ASSERT_EQ(versions_of(db, b_acked), 1);
  ASSERT_EQ(f.pull_nheld[0], 2);
  c = counts(db);
  ASSERT_EQ(c.quarantined, 1);
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(c.held_scopes, 1);
  ASSERT_EQ(c.records, 1);
  {
    char *json = NULL;
    ASSERT_EQ(fieldsync_get_json(db, a_refused, &json), FIELDSYNC_ENOTFOUND);
  }
  /* The next Pull no longer lists A, and the server repeats nothing. */
  fake_init(&f, &s, SCRIPT_NORMAL);
  f.scoped = true;
  f.visible[f.nvisible++] = b;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  ASSERT_OK(fieldsync_sync(db, &o, &st));
  fake_join(&f);
  ASSERT_EQ(f.pull_nheld[0], 1);
  ASSERT(same_scope(&f.pull_held[0][0], &b));
  ASSERT_EQ(st.removed, 0);
  store_close(&s);
  fieldsync_close(db);
}

/* ERR_REVOKED at the handshake, instead of a PushAck (after the server
 * stored the Push) or instead of Changes: every unacknowledged version is
 * quarantined, everything else is wiped, the sync says so, and the
 * database stays usable. */
TEST(revoked_wipes_with_quarantine) {
  static const struct {
    enum script script;
    size_t quarantined; /* the refused version, and the new one unless it
                           was acknowledged before the revocation */
  } cases[] = {
      {SCRIPT_REVOKE_HELLO, 2},
      {SCRIPT_REVOKE_PUSH, 2},
      {SCRIPT_REVOKE_PULL, 1},
  };
  const char *req[] = {"service_id", service_a, "text", "Sign MAR charts",
                       NULL};
  size_t i;

  setup_dir();
  for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct fieldsync_sync_opts o;
    struct fieldsync_sync_stats st;
    struct fieldsync_counts c;
    struct fsc_scope a = visit_scope(visit_a);
    struct store s;
    struct fake f;
    fieldsync_db *db;
    char name[32];
    char path[128];
    char want[256];
    char hex1[33];
    char hex2[33];
    char acked[33];
    char refused[33];
    char fresh[33];

    snprintf(name, sizeof(name), "tablet-%zu.db", i);
    db = open_new(name);
    snprintf(name, sizeof(name), "server-%zu.db", i);
    store_open(&s, name);
    add_obs(db, acked, "OP1");
    add(db, "requirement", refused, req);
    fake_init(&f, &s, SCRIPT_NORMAL);
    f.refuse = FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT;
    fake_start(&f);
    o = opts_for(&f, 0, NULL);
    ASSERT_OK(fieldsync_sync(db, &o, &st));
    fake_join(&f);
    ASSERT_OK(fsc_scope_hold(db, &a));
    add_obs(db, fresh, "OP2");
    fieldsync_replica_id(db, hex1);

    fake_init(&f, &s, cases[i].script);
    fake_start(&f);
    o = opts_for(&f, 0, NULL);
    ASSERT_EQ(fieldsync_sync(db, &o, &st), FIELDSYNC_EREVOKED);
    fake_join(&f);
    snprintf(want, sizeof(want),
             "server: this device was revoked (ERR_REVOKED: device reported "
             "lost): local data wiped; %zu unacknowledged version%s kept in "
             "the quarantine (fieldsync quarantine)",
             cases[i].quarantined, cases[i].quarantined == 1 ? "" : "s");
    ASSERT_STR_EQ(fieldsync_errmsg(db), want);
    ASSERT_EQ(st.quarantined, cases[i].quarantined);
    ASSERT_EQ(st.removed, 3);
    ASSERT_EQ(st.cursor, 0);
    c = counts(db);
    ASSERT_EQ(c.records, 0);
    ASSERT_EQ(c.pending, 0);
    ASSERT_EQ(c.refused, 0);
    ASSERT_EQ(c.held_scopes, 0);
    ASSERT_EQ(c.cursor, 0);
    ASSERT_EQ(c.quarantined, cases[i].quarantined);
    ASSERT_EQ(versions_of(db, acked), 0);
    ASSERT_STR_EQ(fieldsync_errname(FIELDSYNC_EREVOKED), "FIELDSYNC_EREVOKED");
    fieldsync_close(db);

    /* It opens again, with its replica id and quarantine, and can sync
     * with a server that takes it back. */
    snprintf(path, sizeof(path), "%s/tablet-%zu.db", dir, i);
    ASSERT_OK(fieldsync_open(path, 0, NULL, &db));
    fieldsync_replica_id(db, hex2);
    ASSERT_STR_EQ(hex1, hex2);
    ASSERT_EQ(counts(db).quarantined, cases[i].quarantined);
    ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
    ASSERT_EQ(versions_of(db, acked), 1); /* pulled from the start */
    ASSERT_EQ(cursor_of(db), s.n);
    store_close(&s);
    fieldsync_close(db);
  }
}

/* Copies a closed database file. */
static void copy_file(const char *from, const char *to) {
  char buf[8192];
  FILE *in = fopen(from, "rb");
  FILE *out = fopen(to, "wb");
  size_t n;

  ASSERT(in != NULL && out != NULL);
  while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
    ASSERT_EQ(fwrite(buf, 1, n, out), n);
  ASSERT_OK(ferror(in));
  fclose(in);
  ASSERT_OK(fclose(out));
}

/* Starting from copies of tablet.db and server.db (plus the template's
 * feed), syncs with the k-th allocation failing, then syncs cleanly and
 * checks that both sides converged. Returns the first sync's result. */
static int alloc_fail_at(uint64_t k, const struct store *tmpl) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct store s;
  struct fake f;
  fieldsync_db *db;
  char from[128];
  char to[128];
  size_t i;
  int rc;

  snprintf(from, sizeof(from), "%s/tablet.db", dir);
  snprintf(to, sizeof(to), "%s/t.db", dir);
  copy_file(from, to);
  db = open_new("t.db");
  snprintf(from, sizeof(from), "%s/server.db", dir);
  snprintf(to, sizeof(to), "%s/s.db", dir);
  copy_file(from, to);
  store_open(&s, "s.db");
  for (i = 0; i < tmpl->n; i++) {
    s.feed[i] = malloc(tmpl->len[i]);
    ASSERT(s.feed[i] != NULL);
    memcpy(s.feed[i], tmpl->feed[i], tmpl->len[i]);
    s.len[i] = tmpl->len[i];
  }
  s.n = tmpl->n;

  fake_init(&f, &s, SCRIPT_NORMAL);
  f.tolerant = true;
  fake_start(&f);
  o = opts_for(&f, 0, NULL);
  /* The counter is global, so the k-th allocation may be the fake
   * server's: it then hangs up, which the client sees as a lost
   * connection. Either way the error must be a clean one. */
  fsp_alloc_fail_at(k, false);
  rc = fieldsync_sync(db, &o, &st);
  fsp_alloc_fail_at(0, false);
  fake_join(&f);
  if (rc != 0 && rc != FIELDSYNC_ENOMEM && rc != FIELDSYNC_ENETWORK)
    test_fail(__FILE__, __LINE__, "allocation %llu: %s: %s",
              (unsigned long long)k, fieldsync_errname(rc),
              fieldsync_errmsg(db));

  ASSERT_OK(sync_once(db, &s, SCRIPT_NORMAL, 0, &st));
  ASSERT_EQ(pending(db), 0);
  ASSERT_EQ(s.n, 4);
  ASSERT_EQ(cursor_of(db), 4);
  store_close(&s);
  fieldsync_close(db);
  return rc;
}

/* Out of memory at each allocation of a session in turn, each time from
 * the same starting state: every failure is a clean error (no crash, no
 * leak under ASan), and a clean sync afterwards converges. */
TEST(alloc_failures) {
  struct store tmpl;
  fieldsync_db *db;
  char id[33];
  uint64_t k;
  int nomem = 0;

  setup_dir();
  db = open_new("tablet.db");
  add_obs(db, id, "OP1");
  add_obs(db, id, "OP2");
  fieldsync_close(db);
  store_open(&tmpl, "server.db");
  store_seed(&tmpl, 2, NULL);
  fieldsync_close(tmpl.db);
  tmpl.db = NULL;
  for (k = 1; k < 1000; k++) {
    int rc = alloc_fail_at(k, &tmpl);
    if (rc == 0)
      break; /* past the session's last allocation */
    if (rc == FIELDSYNC_ENOMEM)
      nomem++;
  }
  ASSERT_LT(k, 1000);
  ASSERT_GT(nomem, 10);
  printf("# %llu allocation points, %d out-of-memory errors\n",
         (unsigned long long)k - 1, nomem);
  store_close(&tmpl);
}

/* clang-format off */
TEST_LIST(TEST_ENTRY(happy_session)
          TEST_ENTRY(auth_refused)
          TEST_ENTRY(server_error_mid_push)
          TEST_ENTRY(server_error_then_close)
          TEST_ENTRY(server_closes_mid_push)
          TEST_ENTRY(interrupt_anywhere_loses_nothing)
          TEST_ENTRY(bad_push_ack)
          TEST_ENTRY(bad_bytes_from_server)
          TEST_ENTRY(server_never_answers)
          TEST_ENTRY(refused_not_resent_until_retry)
          TEST_ENTRY(conflict_outcome)
          TEST_ENTRY(pull_batch_is_atomic)
          TEST_ENTRY(server_limits_respected)
          TEST_ENTRY(bad_addresses)
          TEST_ENTRY(connection_refused)
          TEST_ENTRY(async_start_join)
          TEST_ENTRY(pull_lists_held_scopes_sorted)
          TEST_ENTRY(backfill_pages_and_resume)
          TEST_ENTRY(backfill_restarts_for_another_scope)
          TEST_ENTRY(pull_must_progress)
          TEST_ENTRY(scope_removed_by_server)
          TEST_ENTRY(revoked_wipes_with_quarantine)
          TEST_ENTRY(alloc_failures))
/* clang-format on */
