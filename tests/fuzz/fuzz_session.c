/* SPDX-License-Identifier: MIT */
/* libFuzzer target over whole sessions against the real server code, in
 * process: srv_run (server/srv_loop.h, linked from the server's sources)
 * serves plain TCP on 127.0.0.1 from a background thread, started once.
 * Each input decodes (fuzz_common.h's reader) into
 *   - an initial store state made through the srv_store API, as
 *     fieldsync-admin makes it: users with roles, their devices (some
 *     revoked, some users deleted), visit assignments (some expired) and
 *     records stored without policy, as head-office tools store them;
 *   - then up to MAX_OPS operations over SLOTS connections: Hello with a
 *     good, revoked, unknown or missing token and the device's own replica
 *     or another; Push of changes whose ids, vectors, payloads and scopes
 *     come from the input (some flawed); Pull with cursors, held scopes and
 *     backfill positions; Bye; messages only a server sends; raw and
 *     mutated bytes; frames split in pieces; pipelined requests; abrupt
 *     closes and half-closes; assignments changed and devices revoked
 *     mid-session.
 * Every reply is checked against what the protocol says (PROTOCOL.md):
 * well-formed frames only; Welcome names the token's user and role, or the
 * right Error; every message that fails validation gets the Error that
 * fsp_msg_decode's code maps to, and the connection closes after an
 * Error; a PushAck has one outcome per change, in order, naming its key
 * and hash; no reply is late (FZ_WAIT_MS) and every connection closes
 * after our FIN. After each input: every version answered as stored is
 * in the store with its vector and hash; a refused version nobody else
 * sent is not; the store passes srv_store_check (integrity_check and its
 * query plans; sampled every CHECK_EVERY_MS while fuzzing, every input on
 * replay); and a fresh session still works.
 *
 * Fresh state per input: the server and its store live for the whole run
 * (restarting srv_run per input would cost more than the input), so every
 * input works in its own namespace: user names and every id (visits,
 * services, records, replicas) carry a salt unique to the input, and Pull
 * cursors count from the store's last seq when the input began. Other
 * inputs' data is invisible to scoped users; a head_office user may see it
 * in a pull, which the checks allow. The store grows with the run. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "fuzz_common.h"
#include "srv.h"
#include "srv_loop.h"
#include "srv_store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_USERS 4
#define MAX_DEVICES 8
#define SLOTS 4
#define MAX_OPS 40
#define MAX_PUSH 20 /* > SERVER_MAX_BATCH, so the limit is crossed */
#define FIFO_MAX 4
#define TRACK_MAX 1024
#define SERVER_MAX_BATCH 16
#define SERVER_MAX_FRAME (256u * 1024u)
#define CHECK_EVERY_MS 10000

/* ---- the server, its store and the harness's connections --------------- */

static struct {
  bool up;
  char dir[256];
  char db[320];
  struct srv_config cfg;
  pthread_t thread;
  volatile int exited; /* srv_run returned */
  int status;
  struct srv_store *store;
  struct srv_store_conn *hc; /* the harness's admin connection */
  sqlite3 *sql;              /* read-only, for the checks */
  sqlite3_stmt *has_version;
  sqlite3_stmt *max_seq;
  char health[SRV_TOKEN_LEN + 1];
  struct fsp_limits lim; /* the server's */
  uint32_t salt;
  long long last_check;
  /* Figures for the log at exit. */
  unsigned long long inputs, sessions, frames, acks, outcomes, checked,
      refused_checked, pulls, errors, integrity, log_warn;
} g;

static long long mono_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static int64_t wall_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The server's log: this target links no srv_log.c. Warnings (every
 * protocol error the fuzzer provokes) are counted, not printed, unless
 * FIELDSYNC_FUZZ_VERBOSE is set; errors are always printed. */
void srv_log_init(bool quiet) { (void)quiet; }

void srv_log(enum srv_log_level level, const char *event, const char *fmt,
             ...) {
  static int verbose = -1;
  va_list ap;

  if (verbose < 0)
    verbose = getenv("FIELDSYNC_FUZZ_VERBOSE") != NULL;
  if (level == SRV_WARN)
    __atomic_add_fetch(&g.log_warn, 1, __ATOMIC_RELAXED);
  if (level < SRV_ERROR && !verbose)
    return;
  fprintf(stderr, "fieldsyncd: %s ", event);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
}

static void *server_main(void *arg) {
  (void)arg;
  g.status = srv_run(&g.cfg);
  __atomic_store_n(&g.exited, 1, __ATOMIC_RELEASE);
  return NULL;
}

/* A directory for the store: tmpfs when there is one (the store syncs on
 * every commit), else $TMPDIR. */
static void make_dir(void) {
  const char *bases[] = {"/dev/shm", getenv("TMPDIR"), "/tmp"};
  size_t i;

  for (i = 0; i < sizeof(bases) / sizeof(bases[0]); i++) {
    struct stat st;

    if (bases[i] == NULL || stat(bases[i], &st) != 0 || !S_ISDIR(st.st_mode))
      continue;
    snprintf(g.dir, sizeof(g.dir), "%s/fs-fuzz-session-XXXXXX", bases[i]);
    if (mkdtemp(g.dir) != NULL)
      return;
  }
  fz_fail("cannot make a temporary directory");
}

static void remove_dir(void) {
  static const char *const files[] = {"server.db", "server.db-wal",
                                      "server.db-shm", "server.db-journal"};
  char path[400];
  size_t i;

  for (i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
    snprintf(path, sizeof(path), "%s/%s", g.dir, files[i]);
    (void)unlink(path);
  }
  (void)rmdir(g.dir);
}

/* Stops the server (SIGTERM, as an operator would: srv_run's handler
 * drains it) and checks that it stops, then removes the store. */
static void session_shutdown(void) {
  long long deadline;

  if (!g.up)
    return;
  g.up = false;
  (void)kill(getpid(), SIGTERM);
  deadline = mono_ms() + 20000;
  while (!__atomic_load_n(&g.exited, __ATOMIC_ACQUIRE)) {
    if (mono_ms() > deadline)
      fz_fail("the server did not stop within 20 s of SIGTERM");
    nap_ms(1);
  }
  pthread_join(g.thread, NULL);
  if (g.status != 0)
    fz_fail("srv_run returned %d", g.status);
  sqlite3_finalize(g.has_version);
  sqlite3_finalize(g.max_seq);
  sqlite3_close(g.sql);
  srv_store_conn_close(g.hc);
  srv_store_close(g.store);
  remove_dir();
  fprintf(stderr,
          "# fuzz_session: %llu inputs, %llu sessions, %llu frames sent, "
          "%llu acks (%llu outcomes), %llu pulls, %llu errors received, "
          "%llu stored versions and %llu refused ones checked, %llu "
          "integrity checks, %llu server warnings\n",
          g.inputs, g.sessions, g.frames, g.acks, g.outcomes, g.pulls,
          g.errors, g.checked, g.refused_checked, g.integrity, g.log_warn);
}

static void session_init(void) {
  char err[256];
  int64_t dev;
  int attempt;

  make_dir();
  snprintf(g.db, sizeof(g.db), "%s/server.db", g.dir);
  if (srv_store_open(g.db, &g.store, err, sizeof(err)) != 0 ||
      srv_store_conn_open(g.store, &g.hc, err, sizeof(err)) != 0)
    fz_fail("store: %s", err);
  FZ_CHECK(srv_store_user_add(g.hc, "health",
                              FIELDSYNC__ROLE__ROLE_HEAD_OFFICE) == 0);
  FZ_CHECK(srv_store_device_add(g.hc, "health", g.health, &dev) == 0);
  FZ_CHECK(sqlite3_open_v2(g.db, &g.sql, SQLITE_OPEN_READONLY, NULL) ==
           SQLITE_OK);
  sqlite3_busy_timeout(g.sql, 5000);
  FZ_CHECK(sqlite3_prepare_v2(g.sql,
                              "SELECT count(*) FROM versions v JOIN records r "
                              "ON r.id = v.record WHERE v.record = ?1 AND "
                              "v.hash = ?2 AND v.vv = ?3 AND r.collection = ?4",
                              -1, &g.has_version, NULL) == SQLITE_OK);
  FZ_CHECK(sqlite3_prepare_v2(g.sql, "SELECT max(seq) FROM versions", -1,
                              &g.max_seq, NULL) == SQLITE_OK);

  srv_config_default(&g.cfg);
  snprintf(g.cfg.db_path, sizeof(g.cfg.db_path), "%s", g.db);
  snprintf(g.cfg.host, sizeof(g.cfg.host), "127.0.0.1");
  g.cfg.plaintext = true;
  g.cfg.quiet = true;
  g.cfg.readers = 2;
  g.cfg.max_connections = 64;
  g.cfg.max_frame = SERVER_MAX_FRAME;
  g.cfg.max_batch = SERVER_MAX_BATCH;
  /* No input lasts this long: a deadline met is a hang. */
  g.cfg.handshake_timeout_ms = 60000;
  g.cfg.idle_timeout_ms = 60000;
  fsp_limits_default(&g.lim);
  g.lim.max_frame = SERVER_MAX_FRAME;
  g.lim.max_batch = SERVER_MAX_BATCH;
  g.lim.budget = (size_t)SERVER_MAX_FRAME * 8u + 64u * 1024u;

  /* A free port (another process may take it before srv_run binds it:
   * then srv_run fails and we try another). */
  for (attempt = 0; attempt < 5 && !g.up; attempt++) {
    long long deadline = mono_ms() + 20000;
    int port = 0;
    int fd = fz_listen(&port);

    FZ_CHECK(fd >= 0);
    close(fd);
    g.cfg.port = port;
    g.exited = 0;
    FZ_CHECK(pthread_create(&g.thread, NULL, server_main, NULL) == 0);
    while (!__atomic_load_n(&g.exited, __ATOMIC_ACQUIRE) &&
           mono_ms() < deadline) {
      fd = fz_dial(port);
      if (fd >= 0) {
        close(fd);
        g.up = true;
        break;
      }
      nap_ms(2);
    }
    if (!g.up)
      pthread_join(g.thread, NULL);
  }
  if (!g.up)
    fz_fail("fieldsyncd did not start");
  atexit(session_shutdown);
}

/* ---- what the input pushed, for the checks after it -------------------- */

struct tracked {
  uint8_t id[16];
  uint8_t hash[FSP_HASH_LEN];
  uint8_t vv[FZ_MAX_VV * 24];
  size_t vvlen;
  int collection;
  bool stored;  /* answered as stored, or stored by the setup */
  bool refused; /* answered refused */
  bool unknown; /* pushed, answer never seen */
};

static struct tracked track[TRACK_MAX];
static size_t ntrack;

/* The entry of change c, added if new (NULL when the table is full or the
 * change has no canonical vector to key it by). */
static struct tracked *track_of(const Fieldsync__Change *c) {
  struct fsp_error err;
  struct fsp_vv vv;
  struct tracked t;
  size_t i;

  memset(&t, 0, sizeof(t));
  fsp_vv_init(&vv);
  if (c->key == NULL || c->key->id.len != 16 || c->version == NULL ||
      c->version->hash.len != FSP_HASH_LEN ||
      fsp_msg_vv_from_pb(&vv, c->version->vv, c->version->n_vv, FZ_MAX_VV,
                         &err) != 0) {
    fsp_vv_close(&vv);
    return NULL;
  }
  memcpy(t.id, c->key->id.data, 16);
  memcpy(t.hash, c->version->hash.data, FSP_HASH_LEN);
  t.vvlen = fsp_vv_encoded_size(&vv);
  fsp_vv_encode(&vv, t.vv);
  fsp_vv_close(&vv);
  t.collection = (int)c->key->collection;
  for (i = 0; i < ntrack; i++)
    if (memcmp(track[i].id, t.id, 16) == 0 &&
        memcmp(track[i].hash, t.hash, FSP_HASH_LEN) == 0 &&
        track[i].vvlen == t.vvlen && memcmp(track[i].vv, t.vv, t.vvlen) == 0)
      return &track[i];
  if (ntrack == TRACK_MAX)
    return NULL;
  track[ntrack] = t;
  return &track[ntrack++];
}

/* Rows of the store holding version t (0 or 1). */
static int64_t stored_rows(const struct tracked *t) {
  int64_t n = -1;

  sqlite3_reset(g.has_version);
  sqlite3_bind_blob(g.has_version, 1, t->id, 16, SQLITE_STATIC);
  sqlite3_bind_blob(g.has_version, 2, t->hash, FSP_HASH_LEN, SQLITE_STATIC);
  sqlite3_bind_blob(g.has_version, 3, t->vv, (int)t->vvlen, SQLITE_STATIC);
  sqlite3_bind_int(g.has_version, 4, t->collection);
  if (sqlite3_step(g.has_version) == SQLITE_ROW)
    n = sqlite3_column_int64(g.has_version, 0);
  sqlite3_reset(g.has_version);
  if (n < 0)
    fz_fail("reading the store: %s", sqlite3_errmsg(g.sql));
  return n;
}

/* ---- one input's world ------------------------------------------------- */

struct user {
  char name[40];
  int role;
  bool deleted;
};

struct device {
  char token[SRV_TOKEN_LEN + 1];
  int64_t id;
  int user;
  uint8_t replica[16];
  bool revoked;      /* revoked (or its user deleted) before now */
  bool revoked_live; /* ... while sessions may be open: racy */
  bool bound;        /* a Welcome bound the token to bound_to */
  uint8_t bound_to[16];
};

/* What the next reply on a connection must be. */
enum expect {
  EXP_WELCOME, /* for Hello: Welcome for dev, or the Error code */
  EXP_PUSH_ACK,
  EXP_CHANGES,
  EXP_ERROR, /* the Error code */
  EXP_CLOSE  /* Bye: the server closes without a word */
};

struct pending {
  enum expect what;
  int code;
  int dev;                /* EXP_WELCOME */
  uint64_t batch_id;      /* EXP_PUSH_ACK */
  struct fz_change *push; /* EXP_PUSH_ACK: the changes sent (owned) */
  size_t npush;
  uint32_t max_records; /* EXP_CHANGES */
};

/* What the server will make of the next frame on a connection, given
 * everything sent on it so far. */
enum model {
  M_FRESH,  /* it waits for Hello */
  M_READY,  /* a session: it waits for a request */
  M_DEAD,   /* an Error or a close is due or came: nothing more counts */
  M_UNKNOWN /* raw bytes went: replies are checked, not predicted */
};

struct slot {
  bool open;
  enum model model;
  int fd;
  int dev; /* the device of the session's Hello, or -1 */
  struct fz_reader rd;
  struct pending fifo[FIFO_MAX];
  size_t nfifo;
};

struct world {
  struct fz_in in;
  struct fz_ids ids;
  struct user users[MAX_USERS];
  size_t nusers;
  struct device devs[MAX_DEVICES];
  size_t ndevs;
  struct slot slots[SLOTS];
  uint64_t base; /* the store's last seq when the input began */
  uint64_t batch;
};

static void pending_free(struct pending *p) {
  free(p->push);
  p->push = NULL;
}

/* The device may be told ERR_REVOKED at any moment. */
static bool may_be_revoked(const struct world *w, int dev) {
  return dev >= 0 && (w->devs[dev].revoked || w->devs[dev].revoked_live);
}

static void slot_close(struct slot *s) {
  size_t i;

  for (i = 0; i < s->nfifo; i++)
    pending_free(&s->fifo[i]);
  s->nfifo = 0;
  if (s->open) {
    fz_reader_close(&s->rd);
    close(s->fd);
  }
  s->open = false;
}

/* Checks a PushAck against the Push it answers and records outcomes. */
static void check_ack(const Fieldsync__PushAck *a, const struct pending *p) {
  size_t i;

  if (a->batch_id != p->batch_id)
    fz_fail("push_ack.batch_id %llu for a push of %llu",
            (unsigned long long)a->batch_id, (unsigned long long)p->batch_id);
  if (a->n_outcomes != p->npush)
    fz_fail("push_ack: %zu outcomes for %zu changes", a->n_outcomes,
            p->npush);
  g.acks++;
  for (i = 0; i < p->npush; i++) {
    const Fieldsync__RecordOutcome *o = a->outcomes[i];
    const struct fz_change *c = &p->push[i];
    struct tracked *t;

    if (o->key->collection != c->key.collection ||
        memcmp(o->key->id.data, c->id, 16) != 0 ||
        memcmp(o->hash.data, c->hash, FSP_HASH_LEN) != 0)
      fz_fail("push_ack.outcomes[%zu] names another change", i);
    g.outcomes++;
    t = track_of(&c->c);
    if (t == NULL)
      continue;
    if (o->outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED)
      t->refused = true;
    else
      t->stored = true;
  }
}

/* Checks a Changes page. */
static void check_changes(const Fieldsync__Changes *ch,
                          const struct pending *p) {
  uint32_t cap = p->max_records < SERVER_MAX_BATCH ? p->max_records
                                                    : SERVER_MAX_BATCH;

  g.pulls++;
  if (ch->n_changes > cap)
    fz_fail("changes: %zu changes for max_records %u (max_batch %u)",
            ch->n_changes, p->max_records, SERVER_MAX_BATCH);
}

/* Reads the reply a pending expectation waits for and checks it. Returns
 * false when the connection is over (an Error, or closed). */
static bool await_reply(struct world *w, struct slot *s, struct pending *p) {
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  uint8_t *body = NULL;
  size_t len = 0;
  bool go_on = true;
  int rc = fz_reader_next(&s->rd, FZ_WAIT_MS, &body, &len);

  if (rc == -1)
    fz_fail("no reply within %d ms (waiting for %d)", FZ_WAIT_MS,
            (int)p->what);
  if (rc == -2)
    fz_fail("the server sent a broken frame stream");
  if (rc == 0) {
    if (p->what != EXP_CLOSE && !may_be_revoked(w, s->dev))
      fz_fail("the server closed the connection instead of replying "
              "(waiting for %d)",
              (int)p->what);
    return false;
  }
  fsp_limits_default(&lim);
  lim.max_frame = SERVER_MAX_FRAME;
  lim.budget = g.lim.budget;
  memset(&err, 0, sizeof(err));
  rc = fsp_msg_decode(&m, body, len, &lim, &err);
  fsp_free(body);
  if (rc != 0)
    fz_fail("the server sent an invalid message: %s", err.msg);
  if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR) {
    int code = (int)m.env->error->code;

    g.errors++;
    if (!(p->what == EXP_ERROR && code == p->code) &&
        !(p->what == EXP_WELCOME && p->code != 0 && code == p->code) &&
        !(code == FIELDSYNC__ERROR_CODE__ERR_REVOKED &&
          may_be_revoked(w, s->dev)))
      fz_fail("unexpected Error %d (%s) while waiting for %d (code %d)", code,
              m.env->error->message, (int)p->what, p->code);
    go_on = false;
  } else {
    switch (p->what) {
    case EXP_WELCOME:
      if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_WELCOME ||
          p->code != 0)
        fz_fail("hello: got %s, want %s %d", fsp_msg_body_name(m.env),
                p->code != 0 ? "error" : "welcome", p->code);
      {
        struct device *d = &w->devs[p->dev];
        const struct user *u = &w->users[d->user];

        if (strcmp(m.env->welcome->user, u->name) != 0 ||
            (int)m.env->welcome->role != u->role)
          fz_fail("welcome for %s (role %d), want %s (role %d)",
                  m.env->welcome->user, (int)m.env->welcome->role, u->name,
                  u->role);
        g.sessions++;
      }
      break;
    case EXP_PUSH_ACK:
      if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_PUSH_ACK)
        fz_fail("push: got %s", fsp_msg_body_name(m.env));
      check_ack(m.env->push_ack, p);
      break;
    case EXP_CHANGES:
      if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_CHANGES)
        fz_fail("pull: got %s", fsp_msg_body_name(m.env));
      check_changes(m.env->changes, p);
      break;
    default:
      fz_fail("got %s, want %s", fsp_msg_body_name(m.env),
              p->what == EXP_CLOSE ? "a close" : "an error");
    }
  }
  fsp_msg_close(&m);
  return go_on;
}

/* Marks the changes of p as pushed with no answer seen. */
static void unanswered(struct pending *p) {
  size_t j;

  for (j = 0; p->push != NULL && j < p->npush; j++) {
    struct tracked *t = track_of(&p->push[j].c);
    if (t != NULL)
      t->unknown = true;
  }
}

/* Waits for every reply due on s, in order. After an Error or a close,
 * whatever else was sent is not answered (its pushes may or may not have
 * been stored). */
static void settle(struct world *w, struct slot *s) {
  size_t i;
  bool over = false;

  for (i = 0; i < s->nfifo; i++) {
    if (over || !await_reply(w, s, &s->fifo[i])) {
      over = true;
      s->model = M_DEAD;
      unanswered(&s->fifo[i]);
    }
    pending_free(&s->fifo[i]);
  }
  s->nfifo = 0;
}

/* Ends a connection: waits for what is due, half-closes, and reads until
 * the server closes too, checking every frame on the way. */
static void slot_finish(struct world *w, struct slot *s) {
  bool error_seen = false;

  if (!s->open)
    return;
  settle(w, s);
  (void)shutdown(s->fd, SHUT_WR);
  for (;;) {
    uint8_t *body = NULL;
    size_t len = 0;
    struct fsp_error err;
    struct fsp_msg m;
    int rc = fz_reader_next(&s->rd, FZ_WAIT_MS, &body, &len);

    if (rc == 0)
      break;
    if (rc == -1)
      fz_fail("the server kept a connection open %d ms after our FIN",
              FZ_WAIT_MS);
    if (rc == -2)
      fz_fail("the server sent a broken frame stream");
    if (error_seen)
      fz_fail("the server sent a frame after its Error");
    /* Nothing is due: only a revocation may speak. */
    if ((s->model == M_READY || s->model == M_FRESH) &&
        !may_be_revoked(w, s->dev))
      fz_fail("the server sent a frame nobody asked for");
    memset(&err, 0, sizeof(err));
    if (fsp_msg_decode(&m, body, len, &g.lim, &err) != 0)
      fz_fail("the server sent an invalid message: %s", err.msg);
    fsp_free(body);
    error_seen = m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR;
    fsp_msg_close(&m);
  }
  slot_close(s);
}

/* ---- operations -------------------------------------------------------- */

static void slot_open(struct slot *s) {
  if (s->open)
    return;
  s->fd = fz_dial(g.cfg.port);
  if (s->fd < 0)
    fz_fail("cannot connect to the server");
  fz_reader_init(&s->rd, s->fd, SERVER_MAX_FRAME);
  s->open = true;
  s->model = M_FRESH;
  s->dev = -1;
  s->nfifo = 0;
}

/* Sends bytes on s, in pieces when the input says so. False when the
 * server has gone (then the slot is dead). */
static bool send_bytes(struct world *w, struct slot *s, const uint8_t *p,
                       size_t n) {
  size_t pieces = fz_chance(&w->in, 15) ? 2 + fz_below(&w->in, 6) : 1;
  size_t off = 0;

  g.frames++;
  while (off < n) {
    size_t k = pieces > 1 ? 1 + fz_below(&w->in, (uint32_t)(n - off)) : n;

    if (k > n - off)
      k = n - off;
    if (fz_send(s->fd, p + off, k) != 0) {
      s->model = M_DEAD; /* the server has gone: fine after an Error */
      return false;
    }
    off += k;
    if (pieces > 1)
      pieces--;
  }
  return true;
}

/* What the server must answer to env (encoded as body) on s: predicted
 * from fsp_msg_decode under the server's own limits and the connection's
 * model, which moves on. Returns false when nothing can be predicted. */
static bool predict(struct world *w, struct slot *s, const uint8_t *body,
                    size_t len, Fieldsync__Envelope *env, int dev,
                    struct pending *p) {
  struct fsp_error err;
  struct fsp_msg m;
  int rc;

  memset(p, 0, sizeof(*p));
  p->dev = dev;
  if (s->model == M_DEAD || s->model == M_UNKNOWN)
    return false;
  if (s->model == M_FRESH &&
      env->body_case != FIELDSYNC__ENVELOPE__BODY_HELLO &&
      env->body_case != FIELDSYNC__ENVELOPE__BODY__NOT_SET) {
    /* Refused from the envelope's tag, before decoding. */
    p->what = EXP_ERROR;
    p->code = FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE;
    s->model = M_DEAD;
    return true;
  }
  rc = fsp_msg_decode(&m, body, len, &g.lim, &err);
  if (rc != 0) {
    p->what = EXP_ERROR;
    p->code = fsp_err_to_wire(rc);
    s->model = M_DEAD;
    return true;
  }
  fsp_msg_close(&m);
  if (s->model == M_FRESH) { /* a valid Hello */
    struct device *d = dev >= 0 ? &w->devs[dev] : NULL;

    p->what = EXP_WELCOME;
    /* srv_store_auth's order: the token, the binding, the revocation. */
    if (d == NULL || env->hello->device_token == NULL ||
        strcmp(env->hello->device_token, d->token) != 0)
      p->code = FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED;
    else if (d->bound &&
             memcmp(d->bound_to, env->hello->replica_id.data, 16) != 0)
      p->code = FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED;
    else if (d->revoked)
      p->code = FIELDSYNC__ERROR_CODE__ERR_REVOKED;
    if (p->code == 0 && !d->bound) {
      d->bound = true; /* the first good handshake binds the token */
      memcpy(d->bound_to, env->hello->replica_id.data, 16);
    }
    s->model = p->code == 0 ? M_READY : M_DEAD;
    return true;
  }
  switch (env->body_case) {
  case FIELDSYNC__ENVELOPE__BODY_PUSH:
    p->what = EXP_PUSH_ACK;
    p->batch_id = env->push->batch_id;
    break;
  case FIELDSYNC__ENVELOPE__BODY_PULL:
    p->what = EXP_CHANGES;
    p->max_records = env->pull->has_max_records ? env->pull->max_records
                                                : SERVER_MAX_BATCH;
    break;
  case FIELDSYNC__ENVELOPE__BODY_BYE:
  case FIELDSYNC__ENVELOPE__BODY_ERROR: /* the receiver just closes */
    p->what = EXP_CLOSE;
    s->model = M_DEAD;
    break;
  default:
    p->what = EXP_ERROR;
    p->code = FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE;
    s->model = M_DEAD;
    break;
  }
  return true;
}

/* Encodes env, sends it on s, and queues or awaits its reply. push (owned
 * from here) holds the changes of a Push. A Hello is always awaited, so
 * that which replica binds a token never depends on timing. */
static void request(struct world *w, struct slot *s, Fieldsync__Envelope *env,
                    int dev, struct fz_change *push, size_t npush) {
  struct pending p;
  uint8_t *frame = NULL;
  size_t len = 0;
  bool known;
  bool wait = fz_chance(&w->in, 80) ||
              env->body_case == FIELDSYNC__ENVELOPE__BODY_HELLO;

  env->has_protocol_version = 1;
  env->protocol_version = FSP_PROTOCOL_VERSION;
  if (fz_chance(&w->in, 2))
    env->protocol_version = 2;
  if (fsp_msg_encode_frame(env, SERVER_MAX_FRAME, &frame, &len) != 0) {
    free(push);
    return;
  }
  if (s->nfifo == FIFO_MAX)
    settle(w, s);
  known = predict(w, s, frame + FSP_FRAME_HEADER, len - FSP_FRAME_HEADER, env,
                  dev, &p);
  if (dev >= 0 && s->dev < 0 &&
      env->body_case == FIELDSYNC__ENVELOPE__BODY_HELLO)
    s->dev = dev;
  p.push = push;
  p.npush = npush;
  if (!send_bytes(w, s, frame, len)) {
    fsp_free(frame);
    unanswered(&p);
    pending_free(&p);
    return;
  }
  fsp_free(frame);
  if (!known) {
    unanswered(&p);
    pending_free(&p);
    return;
  }
  s->fifo[s->nfifo++] = p;
  if (p.what == EXP_ERROR || p.what == EXP_CLOSE || wait)
    settle(w, s);
}

static void op_hello(struct world *w, struct slot *s, bool good) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello h = FIELDSYNC__HELLO__INIT;
  uint8_t replica[16];
  char bad[64];
  int dev = w->ndevs > 0 ? (int)fz_below(&w->in, (uint32_t)w->ndevs) : -1;

  /* Mostly a device that may still sync. */
  if (good && dev >= 0 && w->devs[dev].revoked && fz_chance(&w->in, 80)) {
    size_t k;
    for (k = 0; k < w->ndevs; k++)
      if (!w->devs[(dev + k) % w->ndevs].revoked) {
        dev = (int)((dev + k) % w->ndevs);
        break;
      }
  }

  h.has_protocol_version = 1;
  h.protocol_version = FSP_PROTOCOL_VERSION;
  h.has_replica_id = 1;
  h.replica_id.data = replica;
  h.replica_id.len = 16;
  if (dev >= 0)
    memcpy(replica, w->devs[dev].replica, 16);
  else
    memcpy(replica, w->ids.replica[0], 16);
  h.client_version = "fuzz/1";
  if (dev >= 0)
    h.device_token = w->devs[dev].token;
  if (!good) {
    switch (fz_below(&w->in, 6)) {
    case 0: /* another replica: unbound tokens take it */
      replica[15] ^= 0x5a;
      break;
    case 1:
      h.device_token = NULL;
      break;
    case 2:
      h.device_token = "";
      break;
    case 3: /* a token of the right shape that no device has */
      snprintf(bad, sizeof(bad), "fst_%048u", fz_u32(&w->in));
      h.device_token = bad;
      break;
    case 4:
      h.replica_id.len = fz_below(&w->in, 17);
      break;
    default:
      h.has_protocol_version = fz_chance(&w->in, 50);
      h.protocol_version = fz_u8(&w->in);
      break;
    }
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  request(w, s, &env, dev, NULL, 0);
}

static void op_push(struct world *w, struct slot *s) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Push push = FIELDSYNC__PUSH__INIT;
  Fieldsync__Change *cp[MAX_PUSH];
  size_t n = fz_chance(&w->in, 5) ? fz_below(&w->in, MAX_PUSH + 1)
                                  : fz_below(&w->in, 5);
  struct fz_change *c = calloc(n > 0 ? n : 1, sizeof(*c));
  size_t i;

  FZ_CHECK(c != NULL);
  for (i = 0; i < n; i++) {
    if (i > 0 && fz_chance(&w->in, 10))
      c[i] = c[i - 1]; /* the same change twice in one batch */
    else
      fz_change_make(&c[i], &w->in, &w->ids);
  }
  /* A copy shares its original's storage, which lives as long. */
  for (i = 0; i < n; i++)
    cp[i] = &c[i].c;
  push.has_batch_id = fz_chance(&w->in, 97);
  push.batch_id = fz_chance(&w->in, 10) ? w->batch : ++w->batch;
  if (n > 0 && fz_chance(&w->in, 3))
    c[0].c.has_seq = 1; /* only the server sets seq */
  push.n_changes = n;
  push.changes = cp;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH;
  env.push = &push;
  request(w, s, &env, s->dev, c, n);
}

static void op_pull(struct world *w, struct slot *s) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Pull pl = FIELDSYNC__PULL__INIT;
  Fieldsync__ScopeKey held[FZ_VISITS + FZ_SERVICES];
  Fieldsync__ScopeKey *hp[FZ_VISITS + FZ_SERVICES];
  Fieldsync__ScopeKey bf;
  uint8_t bf_id[16];
  size_t n = 0;
  size_t i;

  pl.has_cursor = fz_chance(&w->in, 98);
  switch (fz_below(&w->in, 8)) {
  case 0:
    pl.cursor = 0;
    break;
  case 1:
    pl.cursor = fz_u64(&w->in);
    break;
  default:
    pl.cursor = w->base + fz_below(&w->in, 48);
    break;
  }
  if (fz_chance(&w->in, 70)) {
    pl.has_max_records = 1;
    pl.max_records = fz_below(&w->in, SERVER_MAX_BATCH + 4);
  }
  /* Held scopes in the protocol's order: visits (kind 1), then
   * services (kind 2); ids ascend within a kind by construction. */
  for (i = 0; i < FZ_VISITS + FZ_SERVICES; i++) {
    bool visit = i < FZ_VISITS;

    if (!fz_chance(&w->in, 30))
      continue;
    fieldsync__scope_key__init(&held[n]);
    held[n].has_kind = 1;
    held[n].kind = visit ? FIELDSYNC__SCOPE_KIND__SCOPE_VISIT
                         : FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE;
    held[n].has_id = 1;
    held[n].id.data =
        (uint8_t *)(visit ? w->ids.visit[i] : w->ids.service[i - FZ_VISITS]);
    held[n].id.len = 16;
    hp[n] = &held[n];
    n++;
  }
  if (n > 1 && fz_chance(&w->in, 5)) { /* out of order, or a duplicate */
    hp[0] = hp[1];
  }
  pl.n_held_scopes = n;
  pl.held_scopes = hp;
  if (fz_chance(&w->in, 20)) {
    fz_scope_make(&bf, bf_id, &w->in, &w->ids);
    pl.backfill_scope = &bf;
    pl.has_backfill_after = fz_chance(&w->in, 70);
    pl.backfill_after = w->base + fz_below(&w->in, 48);
  } else if (fz_chance(&w->in, 2)) {
    pl.has_backfill_after = 1; /* without a scope: invalid */
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PULL;
  env.pull = &pl;
  request(w, s, &env, s->dev, NULL, 0);
}

/* Messages only a server sends, a Bye, or a second Hello. */
static void op_other(struct world *w, struct slot *s, bool bye) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Welcome wel = FIELDSYNC__WELCOME__INIT;
  Fieldsync__PushAck ack = FIELDSYNC__PUSH_ACK__INIT;
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;
  Fieldsync__Error e = FIELDSYNC__ERROR__INIT;
  Fieldsync__Bye b = FIELDSYNC__BYE__INIT;

  switch (bye ? 0 : 1 + fz_below(&w->in, 5)) {
  case 0:
    b.reason = fz_chance(&w->in, 50) ? "done" : NULL;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_BYE;
    env.bye = &b;
    break;
  case 1:
    wel.has_server_id = 1;
    wel.server_id.data = w->ids.replica[0];
    wel.server_id.len = 16;
    wel.user = "x";
    wel.has_role = 1;
    wel.role = FIELDSYNC__ROLE__ROLE_INSPECTOR;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_WELCOME;
    env.welcome = &wel;
    break;
  case 2:
    ack.has_batch_id = 1;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH_ACK;
    env.push_ack = &ack;
    break;
  case 3:
    ch.has_next_cursor = 1;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_CHANGES;
    env.changes = &ch;
    break;
  case 4:
    e.has_code = 1;
    e.code = (Fieldsync__ErrorCode)(1 + fz_below(&w->in, 14));
    e.message = "client error";
    env.body_case = FIELDSYNC__ENVELOPE__BODY_ERROR;
    env.error = &e;
    break;
  default:
    op_hello(w, s, true);
    return;
  }
  request(w, s, &env, s->dev, NULL, 0);
}

/* Raw bytes: a frame header (right, zero, huge or random) and a body from
 * the input, or a valid frame with bytes flipped, cut or added. */
static void op_raw(struct world *w, struct slot *s) {
  uint8_t buf[FSP_FRAME_HEADER + 512];
  size_t n = fz_bytes(&w->in, buf + FSP_FRAME_HEADER, 512);
  uint32_t hdr;

  switch (fz_below(&w->in, 5)) {
  case 0:
    hdr = 0;
    break;
  case 1:
    hdr = SERVER_MAX_FRAME + 1 + fz_below(&w->in, 2) * 0x7fff0000u;
    break;
  case 2:
    hdr = fz_u32(&w->in);
    break;
  default:
    hdr = (uint32_t)n + (fz_chance(&w->in, 20) ? fz_below(&w->in, 8) : 0);
    break;
  }
  fsp_frame_header(hdr, buf);
  settle(w, s);
  if (s->model != M_DEAD)
    s->model = M_UNKNOWN;
  (void)send_bytes(w, s, buf, FSP_FRAME_HEADER + n);
}

/* Changes the world while sessions run: assignments, revocations. */
static void op_admin(struct world *w) {
  uint32_t what = fz_below(&w->in, 4);
  size_t u = w->nusers > 0 ? fz_below(&w->in, (uint32_t)w->nusers) : 0;
  const uint8_t *visit = w->ids.visit[fz_below(&w->in, FZ_VISITS)];
  size_t i;

  if (w->nusers == 0)
    return;
  switch (what) {
  case 0:
    (void)srv_store_assign(g.hc, visit, w->users[u].name,
                           fz_chance(&w->in, 30) ? wall_ms() - 1000 : 0);
    break;
  case 1:
    (void)srv_store_unassign(g.hc, visit, w->users[u].name);
    break;
  case 2:
    if (w->ndevs > 0) {
      struct device *d = &w->devs[fz_below(&w->in, (uint32_t)w->ndevs)];
      if (srv_store_device_revoke(g.hc, d->id) == 0)
        d->revoked = d->revoked_live = true;
    }
    break;
  default:
    if (srv_store_user_delete(g.hc, w->users[u].name) == 0) {
      w->users[u].deleted = true;
      for (i = 0; i < w->ndevs; i++)
        if (w->devs[i].user == (int)u)
          w->devs[i].revoked = w->devs[i].revoked_live = true;
    }
    break;
  }
}

/* ---- setup and checks -------------------------------------------------- */

/* The input's users, devices, assignments and records. */
static void setup(struct world *w) {
  size_t nrec;
  size_t i;

  w->nusers = 1 + fz_below(&w->in, MAX_USERS);
  for (i = 0; i < w->nusers; i++) {
    struct user *u = &w->users[i];
    size_t k;
    size_t nd = 1 + fz_below(&w->in, 2);

    snprintf(u->name, sizeof(u->name), "f%u_%zu", g.salt, i);
    u->role = 1 + (int)fz_below(&w->in, 3);
    FZ_CHECK(srv_store_user_add(g.hc, u->name, u->role) == 0);
    for (k = 0; k < nd && w->ndevs < MAX_DEVICES; k++) {
      struct device *d = &w->devs[w->ndevs];

      d->user = (int)i;
      FZ_CHECK(srv_store_device_add(g.hc, u->name, d->token, &d->id) == 0);
      memcpy(d->replica, w->ids.replica[w->ndevs % FZ_REPLICAS], 16);
      d->replica[7] = (uint8_t)(0xd0 + w->ndevs); /* one per device */
      if (fz_chance(&w->in, 8)) {
        FZ_CHECK(srv_store_device_revoke(g.hc, d->id) == 0);
        d->revoked = true;
      }
      w->ndevs++;
    }
    if (u->role != FIELDSYNC__ROLE__ROLE_HEAD_OFFICE)
      for (k = 0; k < FZ_VISITS; k++)
        if (fz_chance(&w->in, 45))
          FZ_CHECK(srv_store_assign(g.hc, w->ids.visit[k], u->name,
                                    fz_chance(&w->in, 10) ? wall_ms() - 1000
                                                          : 0) == 0);
    if (fz_chance(&w->in, 3)) {
      FZ_CHECK(srv_store_user_delete(g.hc, u->name) == 0);
      u->deleted = true;
      for (k = 0; k < w->ndevs; k++)
        if (w->devs[k].user == (int)i)
          w->devs[k].revoked = true;
    }
  }
  nrec = fz_below(&w->in, 7);
  for (i = 0; i < nrec; i++) {
    struct fz_change c;
    Fieldsync__Change *cp = &c.c;
    struct srv_outcome out;
    struct fsp_error err;

    fz_change_make(&c, &w->in, &w->ids);
    if (fsp_msg_validate_change(&c.c, &g.lim, false, "setup", &err) != 0)
      continue; /* srv_store_push takes validated changes only */
    FZ_CHECK(srv_store_push(g.hc, NULL, &cp, 1, &g.lim, &out) == 0);
    if (out.outcome != FIELDSYNC__OUTCOME__OUTCOME_REFUSED) {
      struct tracked *t = track_of(&c.c);
      if (t != NULL)
        t->stored = true;
    }
  }
}

/* A fresh session still works: Hello, Welcome, Pull, Changes, Bye. */
static void health_check(void) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello h = FIELDSYNC__HELLO__INIT;
  Fieldsync__Pull pl = FIELDSYNC__PULL__INIT;
  Fieldsync__Bye b = FIELDSYNC__BYE__INIT;
  static const uint8_t replica[16] = {0x01, 'h', 'e', 'a', 'l', 't', 'h'};
  static const Fieldsync__Envelope__BodyCase want[] = {
      FIELDSYNC__ENVELOPE__BODY_WELCOME, FIELDSYNC__ENVELOPE__BODY_CHANGES};
  struct fz_reader rd;
  int fd = fz_dial(g.cfg.port);
  size_t i;

  if (fd < 0)
    fz_fail("health: cannot connect");
  fz_reader_init(&rd, fd, SERVER_MAX_FRAME);
  for (i = 0; i < 3; i++) {
    uint8_t *frame;
    size_t len;

    env.has_protocol_version = 1;
    env.protocol_version = FSP_PROTOCOL_VERSION;
    if (i == 0) {
      h.has_protocol_version = 1;
      h.protocol_version = FSP_PROTOCOL_VERSION;
      h.has_replica_id = 1;
      h.replica_id.data = (uint8_t *)replica;
      h.replica_id.len = 16;
      h.device_token = g.health;
      env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
      env.hello = &h;
    } else if (i == 1) {
      pl.has_cursor = 1;
      pl.cursor = 0;
      env.body_case = FIELDSYNC__ENVELOPE__BODY_PULL;
      env.pull = &pl;
    } else {
      env.body_case = FIELDSYNC__ENVELOPE__BODY_BYE;
      env.bye = &b;
    }
    FZ_CHECK(fsp_msg_encode_frame(&env, SERVER_MAX_FRAME, &frame, &len) == 0);
    if (fz_send(fd, frame, len) != 0)
      fz_fail("health: the server hung up");
    fsp_free(frame);
    {
      uint8_t *body = NULL;
      struct fsp_error err;
      struct fsp_msg m;
      int rc = fz_reader_next(&rd, FZ_WAIT_MS, &body, &len);

      if (i == 2) {
        if (rc != 0)
          fz_fail("health: no close after Bye (%d)", rc);
        break;
      }
      if (rc != 1)
        fz_fail("health: no reply (%d)", rc);
      if (fsp_msg_decode(&m, body, len, &g.lim, &err) != 0)
        fz_fail("health: %s", err.msg);
      fsp_free(body);
      if (m.env->body_case != want[i])
        fz_fail("health: got %s", fsp_msg_body_name(m.env));
      fsp_msg_close(&m);
    }
  }
  fz_reader_close(&rd);
  close(fd);
}

static void check_store(void) {
  size_t i;

  for (i = 0; i < ntrack; i++) {
    const struct tracked *t = &track[i];
    int64_t rows = stored_rows(t);

    if (t->stored && rows != 1)
      fz_fail("a version answered as stored is not in the store (record "
              "%02x%02x..., collection %d)",
              t->id[0], t->id[1], t->collection);
    if (t->stored)
      g.checked++;
    if (t->refused && !t->stored && !t->unknown) {
      if (rows != 0)
        fz_fail("a refused version is in the store");
      g.refused_checked++;
    }
  }
#ifndef FUZZ_REPLAY
  if (mono_ms() - g.last_check < CHECK_EVERY_MS)
    return;
#endif
  g.last_check = mono_ms();
  if (srv_store_check(g.hc) != 0)
    fz_fail("srv_store_check: %s", srv_store_errmsg(g.hc));
  g.integrity++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static struct world w;
  size_t ops = 0;
  size_t i;

  if (!g.up)
    session_init();
  memset(&w, 0, sizeof(w));
  ntrack = 0;
  w.in.p = data;
  w.in.n = size;
  g.salt++;
  g.inputs++;
  fz_ids_init(&w.ids, g.salt);
  sqlite3_reset(g.max_seq);
  if (sqlite3_step(g.max_seq) == SQLITE_ROW)
    w.base = (uint64_t)sqlite3_column_int64(g.max_seq, 0);
  sqlite3_reset(g.max_seq);
  setup(&w);

  while (!fz_done(&w.in) && ops++ < MAX_OPS) {
    struct slot *s = &w.slots[fz_below(&w.in, SLOTS)];
    uint32_t op = fz_below(&w.in, 16);

    if (op == 13) { /* a half-close and wait, or an abrupt close */
      if (fz_chance(&w.in, 50)) {
        slot_finish(&w, s);
      } else {
        size_t k;
        for (k = 0; k < s->nfifo; k++)
          unanswered(&s->fifo[k]);
        slot_close(s);
      }
      continue;
    }
    if (op == 14) {
      op_admin(&w);
      continue;
    }
    if (op == 15) { /* wait for what is due */
      if (s->open)
        settle(&w, s);
      continue;
    }
    slot_open(s);
    /* Requests mostly go on a session: Hello first when there is none. */
    if (op <= 8 && s->model == M_FRESH && fz_chance(&w.in, 90))
      op_hello(&w, s, true);
    if (op <= 5)
      op_push(&w, s);
    else if (op <= 8)
      op_pull(&w, s);
    else if (op == 9)
      op_hello(&w, s, true);
    else if (op == 10)
      op_hello(&w, s, false);
    else if (op == 11)
      op_other(&w, s, fz_chance(&w.in, 50));
    else
      op_raw(&w, s);
  }
  for (i = 0; i < SLOTS; i++)
    slot_finish(&w, &w.slots[i]);
  check_store();
  health_check();
  return 0;
}
