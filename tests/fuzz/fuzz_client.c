/* SPDX-License-Identifier: MIT */
/* libFuzzer target for libfieldsync facing what it cannot trust.
 *
 * (a) A hostile server: a fake server thread on 127.0.0.1 answers
 * fieldsync_sync with frames the input chooses, most of them well-formed
 * (structure-aware): Welcome with odd or invalid limits and server ids;
 * PushAck right, or with a wrong batch_id, missing or extra outcomes, a
 * key or hash that differs, a bad outcome; Changes pages with changes of
 * every collection (fuzz_common.h's builder), cursors that move, stay or
 * go back, more set or not, removed scopes, backfill fields consistent or
 * not; Errors of any code (ERR_REVOKED wipes); garbage, truncated frames,
 * oversize lengths, a close or silence. The client's timeout is short.
 * Invariants: fieldsync_sync returns 0 or a code it documents, within a
 * bounded time; every frame the client sends is valid under the limits
 * the server announced; every local version that no well-formed,
 * matching PushAck acknowledged is still unacknowledged (pending,
 * refused) or in the quarantine; the database passes integrity_check.
 * (A Changes page never names the client's replica in a vector here: a
 * server that forges one can supersede any local version, by the merge
 * rule itself.)
 *
 * (b) A corrupt local database: a valid database with pending work
 * (made once), changed by the input either byte by byte or, structure-
 * aware, through SQL (a column of a row set to bytes, a number, text or
 * NULL; a row deleted; the schema version changed), then fieldsync_open
 * and a few reads and writes. Each returns 0 or a clean error; nothing
 * crashes, leaks or hangs.
 *
 * The first input byte picks (a) or (b). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "fieldsync.h"
#include "fsc_int.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CLIENT_TIMEOUT_MS 150
#define MAX_REPLIES 24
#define MAX_CHANGES 8
#define MAX_UNACKED 256
#define VISIT_HEX "0194a1b2c3d4e5f60718293a4b5c6d7e"

static struct {
  bool up;
  char dir[256];
  char tmpl[320]; /* the template database */
  char path[320]; /* each input's copy */
  uint8_t *tmpl_bytes;
  size_t tmpl_len;
  char ids[4][33]; /* records of the template */
  int listen_fd;
  int port;
  /* The template's tables and columns, for SQL corruption. */
  char cols[64][2][40];
  size_t ncols;
  unsigned long long inputs, syncs, rc_count[32], acked, kept, opened,
      integrity;
} g;

/* ---- setup ------------------------------------------------------------- */

static void write_file(const char *path, const uint8_t *p, size_t n) {
  FILE *f = fopen(path, "wb");

  if (f == NULL || fwrite(p, 1, n, f) != n)
    fz_fail("cannot write %s", path);
  if (fclose(f) != 0)
    fz_fail("cannot write %s", path);
}

static void remove_db(const char *path) {
  static const char *const ext[] = {"", "-wal", "-shm", "-journal"};
  char p[400];
  size_t i;

  for (i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
    snprintf(p, sizeof(p), "%s%s", path, ext[i]);
    (void)unlink(p);
  }
}

static void client_shutdown(void) {
  size_t i;

  if (!g.up)
    return;
  g.up = false;
  close(g.listen_fd);
  remove_db(g.tmpl);
  remove_db(g.path);
  (void)rmdir(g.dir);
  free(g.tmpl_bytes);
  fprintf(stderr,
          "# fuzz_client: %llu inputs, %llu syncs, %llu versions acked by "
          "good acks, %llu unacknowledged ones checked kept, %llu corrupt "
          "databases opened, %llu integrity checks; sync results:",
          g.inputs, g.syncs, g.acked, g.kept, g.opened, g.integrity);
  for (i = 0; i < 32; i++)
    if (g.rc_count[i] > 0)
      fprintf(stderr, " %s=%llu", i == 0 ? "ok" : fieldsync_errname(-(int)i),
              g.rc_count[i]);
  fprintf(stderr, "\n");
}

/* Creates a record of collection from "field=value" pairs. */
static void add(fieldsync_db *db, const char *collection,
                const char *const *kv, char id[33]) {
  fieldsync_draft *d;
  size_t i;

  FZ_CHECK(fieldsync_draft_new(db, collection, &d) == 0);
  for (i = 0; kv[i] != NULL; i += 2)
    FZ_CHECK(fieldsync_draft_set(d, kv[i], kv[i + 1]) == 0);
  if (fieldsync_create(db, d, id) != 0)
    fz_fail("create: %s", fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

/* The template: a visit, observations (one edited, one deleted), an
 * interview note, all unacknowledged. */
static void make_template(void) {
  static const char *const visit[] = {"service_id", VISIT_HEX, "kind", "key",
                                      NULL};
  static const char *const obs[] = {"visit_id", VISIT_HEX, "standard_code",
                                    "OP9", "evidence_text", "clean", NULL};
  static const char *const note[] = {"visit_id", VISIT_HEX, "expert", "ann",
                                     "said", "kind staff", NULL};
  fieldsync_db *db = NULL;
  fieldsync_draft *d;
  struct stat st;
  FILE *f;

  if (fieldsync_open(g.tmpl, FIELDSYNC_OPEN_CREATE, "tablet", &db) != 0)
    fz_fail("open: %s", fieldsync_errmsg(db));
  add(db, "visit", visit, g.ids[0]);
  add(db, "observation", obs, g.ids[1]);
  add(db, "observation", obs, g.ids[2]);
  add(db, "interview_note", note, g.ids[3]);
  FZ_CHECK(fieldsync_draft_for_edit(db, g.ids[1], &d) == 0);
  FZ_CHECK(fieldsync_draft_set(d, "judgement", "3") == 0);
  FZ_CHECK(fieldsync_edit(db, d) == 0);
  fieldsync_draft_free(d);
  FZ_CHECK(fieldsync_delete(db, g.ids[2]) == 0);
  {
    sqlite3_stmt *q;

    FZ_CHECK(sqlite3_prepare_v2(db->sql,
                                "SELECT m.name, p.name FROM sqlite_master m, "
                                "pragma_table_info(m.name) p WHERE m.type = "
                                "'table' AND m.name NOT LIKE 'sqlite_%'",
                                -1, &q, NULL) == SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW && g.ncols < 64) {
      snprintf(g.cols[g.ncols][0], 40, "%s",
               (const char *)sqlite3_column_text(q, 0));
      snprintf(g.cols[g.ncols][1], 40, "%s",
               (const char *)sqlite3_column_text(q, 1));
      g.ncols++;
    }
    sqlite3_finalize(q);
  }
  FZ_CHECK(fieldsync_close(db) == 0);
  f = fopen(g.tmpl, "rb");
  FZ_CHECK(f != NULL && stat(g.tmpl, &st) == 0);
  g.tmpl_len = (size_t)st.st_size;
  g.tmpl_bytes = malloc(g.tmpl_len);
  FZ_CHECK(g.tmpl_bytes != NULL &&
           fread(g.tmpl_bytes, 1, g.tmpl_len, f) == g.tmpl_len);
  fclose(f);
}

static void client_init(void) {
  const char *bases[] = {"/dev/shm", getenv("TMPDIR"), "/tmp"};
  size_t i;

  for (i = 0; i < sizeof(bases) / sizeof(bases[0]) && g.dir[0] == '\0'; i++) {
    struct stat st;

    if (bases[i] == NULL || stat(bases[i], &st) != 0 || !S_ISDIR(st.st_mode))
      continue;
    snprintf(g.dir, sizeof(g.dir), "%s/fs-fuzz-client-XXXXXX", bases[i]);
    if (mkdtemp(g.dir) == NULL)
      g.dir[0] = '\0';
  }
  if (g.dir[0] == '\0')
    fz_fail("cannot make a temporary directory");
  snprintf(g.tmpl, sizeof(g.tmpl), "%s/template.db", g.dir);
  snprintf(g.path, sizeof(g.path), "%s/client.db", g.dir);
  make_template();
  g.port = 0;
  g.listen_fd = fz_listen(&g.port);
  FZ_CHECK(g.listen_fd >= 0);
  g.up = true;
  atexit(client_shutdown);
}

/* ---- (a) the hostile server -------------------------------------------- */

struct acked {
  uint8_t id[16];
  uint8_t hash[FSP_HASH_LEN];
};

struct fake {
  struct fz_in *in;
  struct fz_ids ids;
  int fd;
  struct fz_reader rd;
  struct fsp_limits lim; /* what the client must keep to */
  bool welcomed;
  uint64_t seq;
  /* Versions a well-formed, matching PushAck acknowledged. */
  struct acked acked[MAX_UNACKED];
  size_t nacked;
  bool quiet; /* stalled on purpose: the client times out */
};

/* Sends env as a frame (as is: no limit applies to what we send). */
static void fake_send(struct fake *f, Fieldsync__Envelope *env) {
  size_t n;
  uint8_t *buf;

  env->has_protocol_version = 1;
  env->protocol_version = FSP_PROTOCOL_VERSION;
  n = fieldsync__envelope__get_packed_size(env);
  buf = malloc(FSP_FRAME_HEADER + n);
  FZ_CHECK(buf != NULL);
  fsp_frame_header((uint32_t)n, buf);
  fieldsync__envelope__pack(env, buf + FSP_FRAME_HEADER);
  (void)fz_send(f->fd, buf, FSP_FRAME_HEADER + n);
  free(buf);
}

static void fake_error(struct fake *f) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Error e = FIELDSYNC__ERROR__INIT;

  e.has_code = fz_chance(f->in, 95);
  e.code = (Fieldsync__ErrorCode)fz_below(f->in, 16);
  if (fz_chance(f->in, 10))
    e.code = FIELDSYNC__ERROR_CODE__ERR_REVOKED;
  e.message = fz_chance(f->in, 80) ? "fuzzed error" : NULL;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_ERROR;
  env.error = &e;
  fake_send(f, &env);
}

/* Something other than the reply: returns true when the session is over
 * (closed, or left silent for the client to time out). */
static bool fake_misbehave(struct fake *f) {
  uint8_t buf[FSP_FRAME_HEADER + 256];
  size_t n;

  switch (fz_below(f->in, 6)) {
  case 0: /* garbage in a right-sized frame */
    n = fz_bytes(f->in, buf + FSP_FRAME_HEADER, 256);
    fsp_frame_header((uint32_t)n, buf);
    (void)fz_send(f->fd, buf, FSP_FRAME_HEADER + n);
    return false;
  case 1: /* a length over every limit */
    fsp_frame_header(0x7fffffffu - fz_below(f->in, 16), buf);
    (void)fz_send(f->fd, buf, FSP_FRAME_HEADER);
    return false;
  case 2: /* a frame cut short, then gone */
    fsp_frame_header(100, buf);
    memset(buf + FSP_FRAME_HEADER, 0x0a, 10);
    (void)fz_send(f->fd, buf, FSP_FRAME_HEADER + fz_below(f->in, 14));
    return true;
  case 3: /* zero length */
    fsp_frame_header(0, buf);
    (void)fz_send(f->fd, buf, FSP_FRAME_HEADER);
    return false;
  case 4:
    f->quiet = true; /* silence: the client's timeout ends it */
    return true;
  default:
    return true; /* hang up */
  }
}

static uint32_t pick(struct fz_in *in, const uint32_t *v, size_t n) {
  return v[fz_below(in, (uint32_t)n)];
}

static void fake_welcome(struct fake *f) {
  static const uint32_t frames[] = {64,    256,     1024,     4096,
                                    65536, 4194304, 16777216, 0};
  static const uint32_t batches[] = {1, 2, 3, 5, 4096, 100000, 0};
  static const uint32_t vvs[] = {1, 2, 4, 256, 1000, 0};
  static const uint32_t payloads[] = {16, 100, 600, 1048576, 0};
  static const uint8_t sids[2][16] = {{0x5e, 1}, {0x5e, 2}};
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Welcome w = FIELDSYNC__WELCOME__INIT;
  Fieldsync__Limits l = FIELDSYNC__LIMITS__INIT;

  w.has_server_id = fz_chance(f->in, 98);
  w.server_id.data = (uint8_t *)sids[fz_below(f->in, 2)];
  w.server_id.len = fz_chance(f->in, 98) ? 16 : 15;
  w.user = fz_chance(f->in, 98) ? "fz" : NULL;
  w.has_role = 1;
  w.role = (Fieldsync__Role)fz_below(f->in, 5); /* 0 and 4: invalid */
  if (fz_chance(f->in, 70))
    w.role = (Fieldsync__Role)(1 + fz_below(f->in, 3));
  if (fz_chance(f->in, 60)) {
    l.has_max_frame_bytes = fz_chance(f->in, 50);
    l.max_frame_bytes = pick(f->in, frames, 8);
    l.has_max_batch_records = fz_chance(f->in, 50);
    l.max_batch_records = pick(f->in, batches, 7);
    l.has_max_vv_entries = fz_chance(f->in, 50);
    l.max_vv_entries = pick(f->in, vvs, 6);
    l.has_max_payload_bytes = fz_chance(f->in, 50);
    l.max_payload_bytes = pick(f->in, payloads, 5);
    w.limits = &l;
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_WELCOME;
  env.welcome = &w;
  fake_send(f, &env);
  /* What the client must keep to from now on (PROTOCOL.md "Limits": a
   * larger value than the default keeps the default). */
  fsp_limits_default(&f->lim);
#define TAKE(has, v, field)                                                    \
  if (w.limits != NULL && l.has && l.v > 0 && l.v < f->lim.field)              \
    f->lim.field = l.v;
  TAKE(has_max_frame_bytes, max_frame_bytes, max_frame)
  TAKE(has_max_batch_records, max_batch_records, max_batch)
  TAKE(has_max_vv_entries, max_vv_entries, max_vv)
  TAKE(has_max_payload_bytes, max_payload_bytes, max_payload)
#undef TAKE
  f->lim.budget = (size_t)f->lim.max_frame * 8u + 64u * 1024u;
  f->welcomed = true;
}

/* A PushAck for p: right, or wrong in one way the input picks. */
static void fake_ack(struct fake *f, const Fieldsync__Push *p) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__PushAck a = FIELDSYNC__PUSH_ACK__INIT;
  Fieldsync__RecordOutcome o[MAX_UNACKED + 1];
  Fieldsync__RecordOutcome *op[MAX_UNACKED + 1];
  uint8_t bad_hash[FSP_HASH_LEN];
  uint32_t flaw = fz_chance(f->in, 70) ? 0 : 1 + fz_below(f->in, 5);
  size_t n = p->n_changes < MAX_UNACKED ? p->n_changes : MAX_UNACKED;
  size_t i;

  memset(bad_hash, 0xee, sizeof(bad_hash));
  a.has_batch_id = 1;
  a.batch_id = p->batch_id + (flaw == 1 ? 1 : 0);
  for (i = 0; i < n; i++) {
    fieldsync__record_outcome__init(&o[i]);
    o[i].key = p->changes[i]->key;
    o[i].has_hash = 1;
    o[i].hash = p->changes[i]->version->hash;
    o[i].has_outcome = 1;
    o[i].outcome = (Fieldsync__Outcome)(1 + fz_below(f->in, 5));
    if (o[i].outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED) {
      static const int codes[] = {FIELDSYNC__ERROR_CODE__ERR_INVALID,
                                  FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN,
                                  FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED};
      o[i].has_reason_code = 1;
      o[i].reason_code = (Fieldsync__ErrorCode)codes[fz_below(f->in, 3)];
      o[i].reason = fz_chance(f->in, 50) ? "not your visit" : NULL;
    } else if (o[i].outcome == FIELDSYNC__OUTCOME__OUTCOME_CONFLICT &&
               fz_chance(f->in, 30)) {
      o[i].reason = "replica id reused";
    }
    op[i] = &o[i];
  }
  if (flaw == 2 && n > 0 && fz_chance(f->in, 50))
    n--; /* one missing */
  else if (flaw == 2) { /* one extra */
    if (n > 0) {
      o[n] = o[0];
    } else {
      static uint8_t id[16];
      static Fieldsync__RecordKey k = FIELDSYNC__RECORD_KEY__INIT;

      k.has_collection = 1;
      k.collection = FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION;
      k.has_id = 1;
      k.id.data = id;
      k.id.len = 16;
      fieldsync__record_outcome__init(&o[0]);
      o[0].key = &k;
      o[0].has_hash = 1;
      o[0].hash.data = bad_hash;
      o[0].hash.len = FSP_HASH_LEN;
      o[0].has_outcome = 1;
      o[0].outcome = FIELDSYNC__OUTCOME__OUTCOME_APPLIED;
    }
    op[n] = &o[n];
    n++;
  }
  if (flaw == 3 && n > 0) { /* one names another version */
    size_t k = fz_below(f->in, (uint32_t)n);
    memcpy(bad_hash, o[k].hash.data, FSP_HASH_LEN);
    bad_hash[fz_below(f->in, FSP_HASH_LEN)] ^= 1;
    o[k].hash.data = bad_hash;
  }
  if (flaw == 4 && n > 0) /* an outcome the schema does not define */
    o[fz_below(f->in, (uint32_t)n)].outcome =
        (Fieldsync__Outcome)(fz_chance(f->in, 50) ? 0 : 9);
  a.n_outcomes = n;
  a.outcomes = op;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH_ACK;
  env.push_ack = &a;
  if (flaw == 5) {
    fake_error(f);
    return;
  }
  fake_send(f, &env);
  if (flaw != 0 || n != p->n_changes)
    return;
  /* Well-formed and matching: what it does not refuse is acknowledged. */
  for (i = 0; i < n && f->nacked < MAX_UNACKED; i++) {
    if (o[i].outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED)
      continue;
    memcpy(f->acked[f->nacked].id, o[i].key->id.data, 16);
    memcpy(f->acked[f->nacked].hash, o[i].hash.data, FSP_HASH_LEN);
    f->nacked++;
  }
}

/* A Changes page for pl, built from the input. */
static void fake_changes(struct fake *f, const Fieldsync__Pull *pl) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;
  static struct fz_change c[MAX_CHANGES];
  Fieldsync__Change *cp[MAX_CHANGES];
  Fieldsync__ScopeKey rm[8];
  Fieldsync__ScopeKey *rmp[8];
  uint8_t rm_id[8][16];
  Fieldsync__ScopeKey bf;
  uint8_t bf_id[16];
  size_t n = fz_below(f->in, MAX_CHANGES + 1);
  size_t i;

  for (i = 0; i < n; i++) {
    fz_change_make(&c[i], f->in, &f->ids);
    c[i].c.has_seq = fz_chance(f->in, 98);
    c[i].c.seq = ++f->seq;
    cp[i] = &c[i].c;
  }
  ch.n_changes = n;
  ch.changes = cp;
  ch.has_next_cursor = fz_chance(f->in, 98);
  switch (fz_below(f->in, 6)) {
  case 0:
    ch.next_cursor = pl->cursor;
    break;
  case 1:
    ch.next_cursor = pl->cursor > 0 ? pl->cursor - 1 : 0;
    break;
  case 2:
    ch.next_cursor = fz_u64(f->in);
    break;
  default:
    ch.next_cursor = pl->cursor + 1 + fz_below(f->in, 20);
    break;
  }
  ch.has_more = fz_chance(f->in, 70);
  ch.more = fz_chance(f->in, 40);
  /* Removed scopes: some the Pull held, some it did not. */
  for (i = 0; i < 8 && fz_chance(f->in, 25); i++) {
    if (pl->n_held_scopes > 0 && fz_chance(f->in, 60)) {
      rm[i] = *pl->held_scopes[fz_below(f->in, (uint32_t)pl->n_held_scopes)];
    } else {
      fz_scope_make(&rm[i], rm_id[i], f->in, &f->ids);
    }
    rmp[i] = &rm[i];
    ch.n_removed_scopes = i + 1;
  }
  ch.removed_scopes = rmp;
  if (fz_chance(f->in, 25)) {
    if (pl->backfill_scope != NULL && fz_chance(f->in, 50))
      bf = *pl->backfill_scope;
    else
      fz_scope_make(&bf, bf_id, f->in, &f->ids);
    ch.backfill_scope = &bf;
    ch.next_cursor = fz_chance(f->in, 90) ? pl->cursor : ch.next_cursor;
    ch.has_backfill_next = fz_chance(f->in, 90);
    ch.backfill_next = (pl->has_backfill_after ? pl->backfill_after : 0) +
                       fz_below(f->in, 10);
    ch.has_backfill_done = fz_chance(f->in, 60);
    ch.backfill_done = fz_chance(f->in, 50);
  } else if (fz_chance(f->in, 3)) {
    ch.has_backfill_done = 1; /* without a scope: invalid */
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_CHANGES;
  env.changes = &ch;
  fake_send(f, &env);
}

/* Checks one client frame: a valid message under the announced limits. */
static bool fake_decode(struct fake *f, const uint8_t *body, size_t len,
                        struct fsp_msg *m) {
  struct fsp_limits dflt;
  struct fsp_error err;
  int rc;

  fsp_limits_default(&dflt);
  memset(&err, 0, sizeof(err));
  rc = fsp_msg_decode(m, body, len, f->welcomed ? &f->lim : &dflt, &err);
  if (rc != 0)
    fz_fail("the client sent an invalid message: %s", err.msg);
  return true;
}

/* Accepts the sync's connection (false when none came) and serves it:
 * one reply per client message, at most MAX_REPLIES, then hangs up. */
static void *fake_main(void *arg) {
  struct fake *f = arg;
  struct pollfd pf = {g.listen_fd, POLLIN, 0};
  int replies;

  f->fd = -1;
  if (poll(&pf, 1, FZ_WAIT_MS) != 1)
    return NULL;
  f->fd = accept(g.listen_fd, NULL, NULL);
  if (f->fd < 0)
    return NULL;
  fz_reader_init(&f->rd, f->fd, FSP_DEFAULT_MAX_FRAME);
  for (replies = 0; replies < MAX_REPLIES; replies++) {
    struct fsp_msg m;
    uint8_t *body = NULL;
    size_t len = 0;
    int rc = fz_reader_next(&f->rd, FZ_WAIT_MS, &body, &len);

    if (rc == 0)
      break; /* the client closed */
    if (rc == -1)
      fz_fail("the client neither sent nor closed for %d ms", FZ_WAIT_MS);
    if (rc == -2)
      fz_fail("the client sent a broken frame stream");
    fake_decode(f, body, len, &m);
    fsp_free(body);
    if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR ||
        m.env->body_case == FIELDSYNC__ENVELOPE__BODY_BYE) {
      fsp_msg_close(&m);
      continue; /* it closes next */
    }
    if (f->quiet) {
      fsp_msg_close(&m);
      continue; /* still silent */
    }
    if (fz_chance(f->in, 8)) {
      fsp_msg_close(&m);
      if (fz_chance(f->in, 50))
        fake_error(f);
      else if (fake_misbehave(f) && !f->quiet)
        break;
      continue;
    }
    switch (m.env->body_case) {
    case FIELDSYNC__ENVELOPE__BODY_HELLO:
      if (f->welcomed)
        fz_fail("the client sent a second Hello");
      fake_welcome(f);
      break;
    case FIELDSYNC__ENVELOPE__BODY_PUSH:
      if (!f->welcomed)
        fz_fail("the client pushed before Welcome");
      if (fz_chance(f->in, 3)) {
        Fieldsync__Pull none = FIELDSYNC__PULL__INIT;
        fake_changes(f, &none); /* not what it asked for */
      } else {
        fake_ack(f, m.env->push);
      }
      break;
    case FIELDSYNC__ENVELOPE__BODY_PULL:
      if (!f->welcomed)
        fz_fail("the client pulled before Welcome");
      fake_changes(f, m.env->pull);
      break;
    default:
      fz_fail("the client sent %s", fsp_msg_body_name(m.env));
    }
    fsp_msg_close(&m);
  }
  fz_reader_close(&f->rd);
  close(f->fd);
  return NULL;
}

/* The unacknowledged versions of db: record, hash. */
struct unacked {
  uint8_t id[16];
  uint8_t hash[FSP_HASH_LEN];
};

static size_t list_unacked(fieldsync_db *db, const char *sql,
                           struct unacked *out, size_t cap) {
  sqlite3_stmt *st;
  size_t n = 0;

  FZ_CHECK(sqlite3_prepare_v2(db->sql, sql, -1, &st, NULL) == SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW && n < cap) {
    if (sqlite3_column_bytes(st, 0) != 16 ||
        sqlite3_column_bytes(st, 1) != FSP_HASH_LEN)
      fz_fail("a stored version with a malformed key");
    memcpy(out[n].id, sqlite3_column_blob(st, 0), 16);
    memcpy(out[n].hash, sqlite3_column_blob(st, 1), FSP_HASH_LEN);
    n++;
  }
  sqlite3_finalize(st);
  return n;
}

static bool listed(const struct unacked *u, size_t n, const uint8_t id[16],
                   const uint8_t hash[FSP_HASH_LEN]) {
  size_t i;

  for (i = 0; i < n; i++)
    if (memcmp(u[i].id, id, 16) == 0 &&
        memcmp(u[i].hash, hash, FSP_HASH_LEN) == 0)
      return true;
  return false;
}

static void integrity(fieldsync_db *db) {
  sqlite3_stmt *st;

  FZ_CHECK(sqlite3_prepare_v2(db->sql, "PRAGMA integrity_check", -1, &st,
                              NULL) == SQLITE_OK);
  if (sqlite3_step(st) != SQLITE_ROW ||
      strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0)
    fz_fail("integrity_check: %s", sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  g.integrity++;
}

/* fieldsync's result codes are 0 or one of its negative codes. */
static void check_rc(int rc, const char *what) {
  if (rc > 0 || (rc < 0 && strcmp(fieldsync_errname(rc),
                                  "FIELDSYNC_EUNKNOWN") == 0))
    fz_fail("%s returned %d", what, rc);
}

/* Local work before the sync: new records, edits and deletes. With
 * strict (a sound database) each succeeds; otherwise each may fail, but
 * only with one of fieldsync's codes. */
static void local_edits(fieldsync_db *db, struct fz_in *in, bool strict) {
  static const char *const codes[] = {"OP1", "OP9", "OP38"};
  size_t n = fz_below(in, 4);
  size_t i;

  for (i = 0; i < n; i++) {
    fieldsync_draft *d = NULL;
    char id[33];
    int rc;

    switch (fz_below(in, 3)) {
    case 0:
      rc = fieldsync_draft_new(db, "observation", &d);
      if (rc == 0)
        rc = fieldsync_draft_set(d, "visit_id", VISIT_HEX);
      if (rc == 0)
        rc = fieldsync_draft_set(d, "standard_code", codes[fz_below(in, 3)]);
      if (rc == 0)
        rc = fieldsync_create(db, d, id);
      break;
    case 1:
      rc = fieldsync_draft_for_edit(db, g.ids[1 + fz_below(in, 2)], &d);
      if (rc == 0)
        rc = fieldsync_draft_set(d, "standard_code", codes[fz_below(in, 3)]);
      if (rc == 0)
        rc = fieldsync_edit(db, d);
      if (rc == FIELDSYNC_EDELETED || rc == FIELDSYNC_ENOTFOUND ||
          rc == FIELDSYNC_ECONFLICT)
        rc = 0; /* a record deleted, or in conflict after a pull */
      break;
    default:
      rc = fieldsync_delete(db, g.ids[1 + fz_below(in, 3)]);
      if (rc == FIELDSYNC_EDELETED || rc == FIELDSYNC_ENOTFOUND)
        rc = 0;
      break;
    }
    fieldsync_draft_free(d);
    if (strict && rc != 0)
      fz_fail("a local edit failed: %s", fieldsync_errmsg(db));
    check_rc(rc, "a local edit");
  }
}

static bool documented_sync_rc(int rc) {
  return rc == 0 || rc == FIELDSYNC_ENETWORK || rc == FIELDSYNC_ETIMEOUT ||
         rc == FIELDSYNC_EAUTH || rc == FIELDSYNC_EREVOKED ||
         rc == FIELDSYNC_ESERVER || rc == FIELDSYNC_EPROTOCOL;
}

/* One sync against the fake server. With check, the invariants of (a)
 * are checked after it; returns the sync's result. */
static int sync_round(fieldsync_db *db, struct fz_in *in, bool check) {
  static struct unacked before[MAX_UNACKED];
  static struct unacked after[2 * MAX_UNACKED];
  static struct fake f;
  struct fieldsync_sync_opts opts;
  struct fieldsync_sync_stats st;
  char server[32];
  pthread_t th;
  size_t nbefore = 0;
  size_t nafter;
  size_t i;
  int rc;

  memset(&opts, 0, sizeof(opts));
  snprintf(server, sizeof(server), "127.0.0.1:%d", g.port);
  opts.server = server;
  opts.token = "fst_fuzz";
  opts.plaintext = 1;
  opts.timeout_ms = CLIENT_TIMEOUT_MS;
  opts.batch = fz_chance(in, 50) ? 1 + fz_below(in, 6) : 0;
  if (check)
    nbefore = list_unacked(db, "SELECT record, hash FROM versions WHERE "
                               "pending > 0",
                           before, MAX_UNACKED);
  memset(&f, 0, sizeof(f));
  f.in = in;
  /* The server's ids; the first visit and records are the template's, so
   * pulled versions meet local ones (concurrent: no vector here names
   * the client's replica). */
  fz_ids_init(&f.ids, 1);
  FZ_CHECK(fsc_unhex(VISIT_HEX, f.ids.visit[0], 16));
  FZ_CHECK(fsc_unhex(g.ids[1], f.ids.record[0], 16));
  FZ_CHECK(fsc_unhex(g.ids[2], f.ids.record[1], 16));
  FZ_CHECK(fsc_unhex(g.ids[3], f.ids.record[2], 16));
  f.seq = fz_below(in, 3) * 1000;
  /* The input is the fake's alone until it is joined. */
  FZ_CHECK(pthread_create(&th, NULL, fake_main, &f) == 0);
  rc = fieldsync_sync(db, &opts, &st);
  pthread_join(th, NULL);
  g.syncs++;
  g.rc_count[rc <= 0 && rc > -32 ? -rc : 31]++;
  if (!check) {
    /* On a damaged database any of fieldsync's codes is clean; with
     * FIELDSYNC_FUZZ_VERBOSE the odd ones say why. */
    if (getenv("FIELDSYNC_FUZZ_VERBOSE") != NULL && rc == FIELDSYNC_EINTERNAL)
      fprintf(stderr, "EINTERNAL: %s\n", fieldsync_errmsg(db));
    return rc;
  }
  if (!documented_sync_rc(rc))
    fz_fail("fieldsync_sync returned %s: %s", fieldsync_errname(rc),
            fieldsync_errmsg(db));
  nafter = list_unacked(db, "SELECT record, hash FROM versions WHERE "
                            "pending > 0",
                        after, MAX_UNACKED);
  nafter += list_unacked(db, "SELECT record, hash FROM quarantine",
                         after + nafter, MAX_UNACKED);
  g.acked += f.nacked;
  for (i = 0; i < nbefore; i++) {
    bool acked = false;
    size_t k;

    for (k = 0; k < f.nacked && !acked; k++)
      acked = memcmp(f.acked[k].id, before[i].id, 16) == 0 &&
              memcmp(f.acked[k].hash, before[i].hash, FSP_HASH_LEN) == 0;
    if (acked)
      continue;
    if (!listed(after, nafter, before[i].id, before[i].hash))
      fz_fail("an unacknowledged version left the queue (sync: %s: %s)",
              fieldsync_errname(rc), fieldsync_errmsg(db));
    g.kept++;
  }
  integrity(db);
  return rc;
}

static void hostile_server(struct fz_in *in) {
  fieldsync_db *db = NULL;
  int rounds = 1 + (int)fz_below(in, 2);
  int r;

  remove_db(g.path);
  write_file(g.path, g.tmpl_bytes, g.tmpl_len);
  if (fieldsync_open(g.path, 0, NULL, &db) != 0)
    fz_fail("open: %s", fieldsync_errmsg(db));
  local_edits(db, in, true);
  for (r = 0; r < rounds; r++)
    (void)sync_round(db, in, true);
  FZ_CHECK(fieldsync_close(db) == 0);
}

/* ---- (b) a corrupt database -------------------------------------------- */

static int count_cb(const char *json, void *data) {
  (void)json;
  (*(size_t *)data)++;
  return 0;
}

/* Changes the file's bytes: set, flip or zero some, or cut it short. */
static void corrupt_bytes(struct fz_in *in) {
  uint8_t *b = malloc(g.tmpl_len);
  size_t len = g.tmpl_len;
  size_t k = 1 + fz_below(in, 8);
  size_t i;

  FZ_CHECK(b != NULL);
  memcpy(b, g.tmpl_bytes, len);
  for (i = 0; i < k && len > 0; i++) {
    size_t at = fz_u32(in) % len;

    switch (fz_below(in, 4)) {
    case 0:
      b[at] = fz_u8(in);
      break;
    case 1:
      b[at] ^= (uint8_t)(1u << fz_below(in, 8));
      break;
    case 2:
      memset(b + at, 0, len - at < 64 ? len - at : 64);
      break;
    default:
      len = at; /* truncated */
      break;
    }
  }
  write_file(g.path, b, len);
  free(b);
}

/* Changes the database through SQL: values of the wrong type or shape
 * where fieldsync keeps vectors, payloads, hashes, ids and counters. */
static void corrupt_sql(struct fz_in *in) {
  sqlite3 *sql = NULL;
  size_t k = 1 + fz_below(in, 4);
  size_t i;

  write_file(g.path, g.tmpl_bytes, g.tmpl_len);
  FZ_CHECK(sqlite3_open(g.path, &sql) == SQLITE_OK);
  for (i = 0; i < k; i++) {
    char q[256];
    sqlite3_stmt *st = NULL;
    const char *t;
    const char *c;

    if (g.ncols == 0)
      break;
    t = g.cols[fz_below(in, (uint32_t)g.ncols)][0];
    c = g.cols[fz_below(in, (uint32_t)g.ncols)][1];
    switch (fz_below(in, 6)) {
    case 0:
      snprintf(q, sizeof(q), "PRAGMA user_version = %d",
               (int)fz_below(in, 8) - 2);
      break;
    case 1:
      snprintf(q, sizeof(q), "DELETE FROM \"%s\"", t);
      break;
    default:
      /* One column of every row, or of the rows whose column matches. */
      {
        size_t ci = fz_below(in, (uint32_t)g.ncols);
        t = g.cols[ci][0];
        c = g.cols[ci][1];
      }
      snprintf(q, sizeof(q), "UPDATE \"%s\" SET \"%s\" = ?1%s", t, c,
               fz_chance(in, 50) ? "" : " WHERE length(\"%s\") > 0");
      break;
    }
    if (strstr(q, "%s") != NULL) { /* the WHERE names the column */
      char q2[256];
      snprintf(q2, sizeof(q2), "UPDATE \"%s\" SET \"%s\" = ?1 WHERE "
                               "length(\"%s\") > 0",
               t, c, c);
      memcpy(q, q2, sizeof(q));
    }
    if (sqlite3_prepare_v2(sql, q, -1, &st, NULL) == SQLITE_OK) {
      uint8_t blob[64];
      size_t n;

      switch (fz_below(in, 5)) {
      case 0:
        n = fz_bytes(in, blob, sizeof(blob));
        sqlite3_bind_blob(st, 1, blob, (int)n, SQLITE_TRANSIENT);
        break;
      case 1:
        sqlite3_bind_int64(st, 1, (int64_t)fz_u64(in));
        break;
      case 2:
        n = fz_bytes(in, blob, sizeof(blob));
        sqlite3_bind_text(st, 1, (const char *)blob, (int)n,
                          SQLITE_TRANSIENT);
        break;
      case 3:
        sqlite3_bind_int64(st, 1, (int64_t)fz_below(in, 4) - 1);
        break;
      default:
        sqlite3_bind_null(st, 1);
        break;
      }
      (void)sqlite3_step(st);
    }
    sqlite3_finalize(st);
  }
  FZ_CHECK(sqlite3_close(sql) == SQLITE_OK);
}

static void corrupt_and_open(struct fz_in *in) {
  fieldsync_db *db = NULL;
  struct fieldsync_counts counts;
  struct fieldsync_query q;
  char *json = NULL;
  size_t n = 0;
  int rc;

  remove_db(g.path);
  if (fz_chance(in, 50))
    corrupt_bytes(in);
  else
    corrupt_sql(in);
  rc = fieldsync_open(g.path, fz_chance(in, 50) ? FIELDSYNC_OPEN_CREATE : 0,
                      NULL, &db);
  check_rc(rc, "fieldsync_open");
  if (rc != 0) {
    (void)fieldsync_errmsg(db);
    fieldsync_close(db);
    return;
  }
  g.opened++;
  check_rc(fieldsync_counts(db, &counts), "fieldsync_counts");
  memset(&q, 0, sizeof(q));
  q.include_deleted = 1;
  check_rc(fieldsync_query(db, &q, count_cb, &n), "fieldsync_query");
  rc = fieldsync_get_json(db, g.ids[fz_below(in, 4)], &json);
  check_rc(rc, "fieldsync_get_json");
  fieldsync_free(json);
  check_rc(fieldsync_refused(db, count_cb, &n), "fieldsync_refused");
  check_rc(fieldsync_quarantine(db, count_cb, &n), "fieldsync_quarantine");
  local_edits(db, in, false);
  if (fz_chance(in, 50))
    check_rc(sync_round(db, in, false), "fieldsync_sync");
  check_rc(fieldsync_close(db), "fieldsync_close");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fz_in in = {data, size};

  if (!g.up)
    client_init();
  g.inputs++;
  if (fz_u8(&in) % 4 == 3)
    corrupt_and_open(&in);
  else
    hostile_server(&in);
  return 0;
}
