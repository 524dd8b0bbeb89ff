/* SPDX-License-Identifier: MIT */
/* Crash test for fieldsyncd: SIGKILL the server at random moments while
 * three clients (threads syncing through libfieldsync) push and pull, at
 * least 50 times a run. After each kill, before the restart, the server's
 * store must pass PRAGMA integrity_check and hold every version any client
 * ever recorded as acknowledged (a server acks a push only after its
 * commit). Between kills the clients create, edit, delete and resolve
 * records. At the end, after a restart and syncs until nothing moves, all
 * replicas hold the same versions, which are exactly the server's current
 * versions.
 *
 * Usage: test_crash_server FIELDSYNCD FIELDSYNC-ADMIN [TEST | --list].
 * $FIELDSYNC_SEED repeats a run's choices (thread timing still varies),
 * $FIELDSYNC_TEST_SCALE multiplies the kills, and $FIELDSYNC_KEEP_TMP=1
 * keeps the temporary directory. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "fieldsync.h"
#include "harness.h"
#include "proc.h"
#include "replica_export.h"

#define NCLIENTS 3
/* Kills per run at scale 1. */
#define KILLS 50
/* The server lives this long (at most, in ms) after its restart. */
#define MAX_KILL_DELAY_MS 150
/* Records each client makes before the first start, and per round. */
#define INITIAL_RECORDS 400
#define ROUND_CREATES 8
#define ROUND_EDITS 6
#define ROUND_DELETES 1
/* Half the edits go to the first HOT_RECORDS records, so that replicas
 * edit the same records concurrently and conflicts arise. */
#define HOT_RECORDS 24
/* Versions per Push and Pull: small, so a sync has many acks to die in. */
#define SYNC_BATCH 50u
#define SYNC_TIMEOUT_MS 10000

static const char *fieldsyncd;
static const char *admin;
static char dir[256];
static char srvdb[320];
static char checkdb[320];
static struct test_server srv;
static uint64_t rng;

/* One client: a user with a device, its database and its sync thread. */
struct client {
  char user[16];
  char token[128];
  char path[320];
  fieldsync_db *db;
  pthread_t thread;
  /* Written by the thread, read after the join. */
  int rc;
  char err[512];
  size_t syncs; /* completed */
  size_t acked; /* versions acknowledged, summed over all syncs */
  size_t pulled;
};

static struct client clients[NCLIENTS];
static char server_addr[64];
static atomic_bool stop_syncing;
/* Syncs completed and sync threads ended in this round, for a kill timed
 * from the first completed sync. */
static pthread_mutex_t round_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t round_cond = PTHREAD_COND_INITIALIZER;
static int round_syncs;
static int round_ended;

/* Every observation id created by any client (hex), for random edits. */
static char (*ids)[33];
static size_t nids;
static size_t ids_cap;

/* ---- files and processes ----------------------------------------------- */

static double now_ms(void) {
  return (double)proc_now_ms();
}

static void setup_dir(void) {
  tmpdir_make(dir, sizeof(dir), "fs-crash-srv");
  tmpdir_kill_at_exit(&srv);
  snprintf(srvdb, sizeof(srvdb), "%s/server.db", dir);
  snprintf(checkdb, sizeof(checkdb), "%s/acked.db", dir);
}

/* Copies the end of the server's log to stderr, to explain a failure. */
static void dump_server_log(void) {
  char log[400];
  char buf[4096];
  FILE *f;
  long size;
  size_t n;

  snprintf(log, sizeof(log), "%s.log", srvdb);
  f = fopen(log, "r");
  if (f == NULL)
    return;
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0,
        SEEK_SET);
  n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  fprintf(stderr, "# --- end of %s ---\n%s# ---\n", log, buf);
}

/* ---- SQL --------------------------------------------------------------- */

static sqlite3 *sql_open(const char *path) {
  sqlite3 *s = NULL;

  if (sqlite3_open_v2(path, &s, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                      NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "sqlite3 open %s: %s", path,
              sqlite3_errmsg(s));
  sqlite3_busy_timeout(s, 10000);
  return s;
}

static void sql_exec(sqlite3 *s, const char *sql) {
  char *err = NULL;

  if (sqlite3_exec(s, sql, NULL, NULL, &err) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, err);
}

static int64_t sql_int(sqlite3 *s, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v = 0;

  if (sqlite3_prepare_v2(s, sql, -1, &st, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(s));
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  else
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(s));
  sqlite3_finalize(st);
  return v;
}

static void sql_attach(sqlite3 *s, const char *path, const char *as) {
  char *sql = sqlite3_mprintf("ATTACH %Q AS %s", path, as);

  ASSERT(sql != NULL);
  sql_exec(s, sql);
  sqlite3_free(sql);
}

static void sql_detach(sqlite3 *s, const char *as) {
  char sql[64];

  snprintf(sql, sizeof(sql), "DETACH %s", as);
  sql_exec(s, sql);
}

/* The server's store after a kill, before the restart: SQLite's own
 * integrity check, then the store's invariants: every version belongs to
 * a stored record and every record has a current version. */
static void check_server_store(void) {
  sqlite3 *s = sql_open(srvdb);
  sqlite3_stmt *st = NULL;
  const unsigned char *text;

  ASSERT_EQ(sqlite3_prepare_v2(s, "PRAGMA integrity_check", -1, &st, NULL),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  text = sqlite3_column_text(st, 0);
  if (text == NULL || strcmp((const char *)text, "ok") != 0) {
    dump_server_log();
    test_fail(__FILE__, __LINE__, "server store: integrity_check: %s",
              text != NULL ? (const char *)text : "(null)");
  }
  sqlite3_finalize(st);
  ASSERT_EQ(sql_int(s, "SELECT count(*) FROM versions v WHERE NOT EXISTS "
                       "(SELECT 1 FROM records r WHERE r.id = v.record)"),
            0);
  ASSERT_EQ(sql_int(s, "SELECT count(*) FROM records r WHERE NOT EXISTS "
                       "(SELECT 1 FROM versions v WHERE v.record = r.id "
                       "AND v.current = 1)"),
            0);
  sqlite3_close(s);
}

/* Adds every version the clients hold as acknowledged (pending = 0: acked
 * by the server, or pulled from it) to the check database, which keeps
 * them even after a client's later edit drops them, then fails unless all
 * of them, ever, are in the server's history. Also checks that no client's
 * pull cursor is ahead of the server's feed. Returns the number known. */
static int64_t check_acked_on_server(void) {
  sqlite3 *s = sql_open(checkdb);
  int64_t missing;
  int64_t n;
  int64_t maxseq;
  int i;

  sql_exec(s, "CREATE TABLE IF NOT EXISTS acked(record BLOB, hash BLOB, "
              "vv BLOB, PRIMARY KEY(record, hash, vv)) WITHOUT ROWID");
  for (i = 0; i < NCLIENTS; i++) {
    sql_attach(s, clients[i].path, "c");
    sql_exec(s, "INSERT OR IGNORE INTO acked SELECT record, hash, vv "
                "FROM c.versions WHERE pending = 0");
    sql_detach(s, "c");
  }
  sql_attach(s, srvdb, "s");
  missing = sql_int(s, "SELECT count(*) FROM acked a WHERE NOT EXISTS "
                       "(SELECT 1 FROM s.versions v WHERE v.record = "
                       "a.record AND v.hash = a.hash AND v.vv = a.vv)");
  n = sql_int(s, "SELECT count(*) FROM acked");
  maxseq = sql_int(s, "SELECT coalesce(max(seq), 0) FROM s.versions");
  if (missing != 0) {
    sqlite3_stmt *st = NULL;
    ASSERT_EQ(sqlite3_prepare_v2(
                  s,
                  "SELECT hex(record), hex(hash) FROM acked a WHERE NOT "
                  "EXISTS (SELECT 1 FROM s.versions v WHERE v.record = "
                  "a.record AND v.hash = a.hash AND v.vv = a.vv) LIMIT 5",
                  -1, &st, NULL),
              SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
      fprintf(stderr, "# lost: record %s hash %.16s...\n",
              sqlite3_column_text(st, 0), sqlite3_column_text(st, 1));
    sqlite3_finalize(st);
    dump_server_log();
    test_fail(__FILE__, __LINE__,
              "%lld of %lld acknowledged versions are not on the server",
              (long long)missing, (long long)n);
  }
  sql_detach(s, "s");
  for (i = 0; i < NCLIENTS; i++) {
    int64_t cursor;
    sql_attach(s, clients[i].path, "c");
    cursor = sql_int(s, "SELECT coalesce((SELECT value FROM c.meta WHERE "
                        "key = 'pull_cursor'), 0)");
    sql_detach(s, "c");
    if (cursor > maxseq)
      test_fail(__FILE__, __LINE__,
                "%s's pull cursor %lld is past the server's last seq %lld",
                clients[i].user, (long long)cursor, (long long)maxseq);
  }
  sqlite3_close(s);
  return n;
}

/* ---- version vectors (the canonical encoding, decoded here so the check
 * does not share code with what it checks) ------------------------------- */

static uint64_t vv_counter(const uint8_t *e) {
  uint64_t x = 0;
  int i;

  for (i = 0; i < 8; i++)
    x = x << 8 | e[16 + i];
  return x;
}

/* -1: a < b (dominated), 1: a > b, 0: equal, 2: concurrent. */
static int vv_cmp(const uint8_t *a, size_t na, const uint8_t *b, size_t nb) {
  bool a_more = false;
  bool b_more = false;
  size_t i = 0;
  size_t j = 0;

  ASSERT(na % 24 == 0 && nb % 24 == 0);
  na /= 24;
  nb /= 24;
  while (i < na || j < nb) {
    int d = i == na ? 1 : j == nb ? -1 : memcmp(a + 24 * i, b + 24 * j, 16);
    if (d < 0) {
      a_more = true;
      i++;
    } else if (d > 0) {
      b_more = true;
      j++;
    } else {
      uint64_t x = vv_counter(a + 24 * i);
      uint64_t y = vv_counter(b + 24 * j);
      if (x > y)
        a_more = true;
      if (y > x)
        b_more = true;
      i++;
      j++;
    }
  }
  if (a_more && b_more)
    return 2;
  return a_more ? 1 : b_more ? -1 : 0;
}

/* The server's current versions of each record are pairwise concurrent
 * (the merge keeps only maximal versions). Returns the conflicted records. */
static int64_t check_current_maximal(void) {
  sqlite3 *s = sql_open(srvdb);
  sqlite3_stmt *st = NULL;
  uint8_t rec[16];
  uint8_t *vv[64];
  size_t len[64];
  size_t n = 0;
  int64_t conflicted = 0;
  bool have = false;
  int step;

  ASSERT_EQ(sqlite3_prepare_v2(
                s,
                "SELECT record, vv FROM versions WHERE current = 1 AND "
                "record IN (SELECT record FROM versions WHERE current = 1 "
                "GROUP BY record HAVING count(*) > 1) ORDER BY record",
                -1, &st, NULL),
            SQLITE_OK);
  for (;;) {
    step = sqlite3_step(st);
    if (step == SQLITE_ROW && have &&
        memcmp(rec, sqlite3_column_blob(st, 0), 16) == 0) {
      ASSERT_LT(n, 64);
    } else if (have) {
      size_t a;
      size_t b;
      for (a = 0; a < n; a++)
        for (b = a + 1; b < n; b++)
          if (vv_cmp(vv[a], len[a], vv[b], len[b]) != 2)
            test_fail(__FILE__, __LINE__,
                      "a record has current versions that are not "
                      "concurrent");
      for (a = 0; a < n; a++)
        free(vv[a]);
      n = 0;
      have = false;
      conflicted++;
    }
    if (step != SQLITE_ROW)
      break;
    ASSERT_EQ(sqlite3_column_bytes(st, 0), 16);
    memcpy(rec, sqlite3_column_blob(st, 0), 16);
    have = true;
    len[n] = (size_t)sqlite3_column_bytes(st, 1);
    vv[n] = malloc(len[n] + 1);
    ASSERT(vv[n] != NULL);
    memcpy(vv[n], sqlite3_column_blob(st, 1), len[n]);
    n++;
  }
  ASSERT_EQ(step, SQLITE_DONE);
  sqlite3_finalize(st);
  sqlite3_close(s);
  return conflicted;
}

/* ---- clients ------------------------------------------------------------- */

static void client_init(struct client *c, int i, const char *role) {
  memset(c, 0, sizeof(*c));
  snprintf(c->user, sizeof(c->user), "tablet%d", i);
  admin_user_device(admin, srvdb, c->user, role, c->token, sizeof(c->token));
  snprintf(c->path, sizeof(c->path), "%.255s/%.15s.db", dir, c->user);
  if (fieldsync_open(c->path, FIELDSYNC_OPEN_CREATE, c->user, &c->db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", c->path,
              fieldsync_errmsg(c->db));
}

/* The sync thread: syncs again and again until a sync fails (the server
 * was killed) or it is told to stop. */
static void *client_main(void *arg) {
  struct client *c = arg;

  c->rc = 0;
  c->err[0] = '\0';
  while (!atomic_load(&stop_syncing)) {
    struct fieldsync_sync_opts o;
    struct fieldsync_sync_stats st;
    int rc;

    memset(&o, 0, sizeof(o));
    memset(&st, 0, sizeof(st));
    o.server = server_addr;
    o.token = c->token;
    o.plaintext = 1;
    o.timeout_ms = SYNC_TIMEOUT_MS;
    o.batch = SYNC_BATCH;
    rc = fieldsync_sync(c->db, &o, &st);
    c->acked += st.acked;
    c->pulled += st.pulled;
    if (rc != 0) {
      c->rc = rc;
      snprintf(c->err, sizeof(c->err), "%s", fieldsync_errmsg(c->db));
      break;
    }
    c->syncs++;
    pthread_mutex_lock(&round_lock);
    round_syncs++;
    pthread_cond_broadcast(&round_cond);
    pthread_mutex_unlock(&round_lock);
  }
  pthread_mutex_lock(&round_lock);
  round_ended++;
  pthread_cond_broadcast(&round_cond);
  pthread_mutex_unlock(&round_lock);
  return NULL;
}

/* Waits (at most 20 s) until some client completed a sync this round or
 * every sync thread ended. */
static void wait_first_sync(void) {
  struct timespec dl;

  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 20;
  pthread_mutex_lock(&round_lock);
  while (round_syncs == 0 && round_ended < NCLIENTS) {
    if (pthread_cond_timedwait(&round_cond, &round_lock, &dl) == ETIMEDOUT) {
      pthread_mutex_unlock(&round_lock);
      test_fail(__FILE__, __LINE__, "no sync completed within 20 s");
    }
  }
  pthread_mutex_unlock(&round_lock);
}

/* Syncs c on this thread; the server is up, so it must succeed. */
static void sync_now(struct client *c, struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_opts o;
  int rc;

  memset(&o, 0, sizeof(o));
  o.server = server_addr;
  o.token = c->token;
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.batch = SYNC_BATCH;
  rc = fieldsync_sync(c->db, &o, st);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "sync %s: %s: %s", c->user,
              fieldsync_errname(rc), fieldsync_errmsg(c->db));
  ASSERT_EQ(st->refused, 0);
}

static void add_id(const char *id) {
  ASSERT_LT(nids, ids_cap);
  memcpy(ids[nids++], id, 33);
}

/* A new observation in visit. */
static void create_obs(struct client *c, const char *visit) {
  fieldsync_draft *d = NULL;
  char code[16];
  char j[16];
  char ev[128];
  char id[33];

  snprintf(code, sizeof(code), "OP%d", 1 + (int)test_rand_below(&rng, 38));
  snprintf(j, sizeof(j), "%d", 1 + (int)test_rand_below(&rng, 4));
  snprintf(ev, sizeof(ev), "%s saw this (item %zu).", c->user, nids);
  ASSERT_OK(fieldsync_draft_new(c->db, "observation", &d));
  ASSERT_OK(fieldsync_draft_set(d, "visit_id", visit));
  ASSERT_OK(fieldsync_draft_set(d, "standard_code", code));
  ASSERT_OK(fieldsync_draft_set(d, "judgement", j));
  ASSERT_OK(fieldsync_draft_set(d, "evidence_text", ev));
  if (fieldsync_create(c->db, d, id) != 0)
    test_fail(__FILE__, __LINE__, "create: %s", fieldsync_errmsg(c->db));
  fieldsync_draft_free(d);
  add_id(id);
}

/* True when every current version of record id is a tombstone. */
static bool all_deleted(fieldsync_db *db, const char *id) {
  json_t *j;
  char *s = NULL;
  bool deleted;

  ASSERT_OK(fieldsync_get_json(db, id, &s));
  j = json_loads(s, 0, NULL);
  ASSERT(j != NULL);
  deleted = json_is_true(json_object_get(j, "deleted"));
  json_decref(j);
  fieldsync_free(s);
  return deleted;
}

/* Edits a random known record; a record in conflict is resolved instead,
 * one this replica has not pulled yet or that is deleted is left alone.
 * Returns 1 for an edit, 2 for a resolution, 3 for concurrent deletions
 * settled by one more deletion, 0 for nothing. */
static int edit_random(struct client *c) {
  bool hot = test_rand_below(&rng, 2) == 0;
  const char *id = ids[test_rand_below(&rng, hot ? HOT_RECORDS : nids)];
  fieldsync_draft *d = NULL;
  char text[128];
  int rc;

  snprintf(text, sizeof(text), "%.40s edited this (%llu).", c->user,
           (unsigned long long)test_rand_below(&rng, 1000000));
  rc = fieldsync_draft_for_edit(c->db, id, &d);
  if (rc == FIELDSYNC_ENOTFOUND || rc == FIELDSYNC_EDELETED)
    return 0;
  if (rc == FIELDSYNC_ECONFLICT && all_deleted(c->db, id)) {
    /* Two replicas deleted it concurrently: sibling tombstones. Their
     * resolution draft would be empty (no visit_id), so settle it with a
     * tombstone that supersedes both. */
    if (fieldsync_delete(c->db, id) != 0)
      test_fail(__FILE__, __LINE__, "delete %s: %s", id,
                fieldsync_errmsg(c->db));
    return 3;
  }
  if (rc == FIELDSYNC_ECONFLICT) {
    ASSERT_OK(fieldsync_draft_for_resolve(c->db, id, &d));
    ASSERT_OK(fieldsync_draft_set(d, "evidence_text", text));
    if (fieldsync_resolve_with(c->db, id, d) != 0)
      test_fail(__FILE__, __LINE__, "resolve %s: %s", id,
                fieldsync_errmsg(c->db));
    fieldsync_draft_free(d);
    return 2;
  }
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "draft for %s: %s", id,
              fieldsync_errmsg(c->db));
  ASSERT_OK(fieldsync_draft_set(d, "evidence_text", text));
  if (fieldsync_edit(c->db, d) != 0)
    test_fail(__FILE__, __LINE__, "edit %s: %s", id, fieldsync_errmsg(c->db));
  fieldsync_draft_free(d);
  return 1;
}

/* Deletes a random known record, if this replica has it live (a record in
 * conflict too: the tombstone supersedes every sibling). */
static void delete_random(struct client *c) {
  const char *id = ids[test_rand_below(&rng, nids)];
  int rc = fieldsync_delete(c->db, id);

  if (rc != 0 && rc != FIELDSYNC_ENOTFOUND && rc != FIELDSYNC_EDELETED)
    test_fail(__FILE__, __LINE__, "delete %s: %s", id, fieldsync_errmsg(c->db));
}

/* ---- exports ------------------------------------------------------------- */


/* ---- the test ------------------------------------------------------------ */

TEST(server_killed_while_clients_push) {
  uint64_t kills_wanted = KILLS * test_scale();
  uint64_t kills = 0;
  uint64_t late_kills = 0;
  size_t interrupted = 0;
  size_t completed = 0;
  size_t edits = 0;
  size_t resolutions = 0;
  size_t double_deletes = 0;
  int64_t known = 0;
  int64_t conflicted;
  char visits[NCLIENTS][33];
  char *exports[NCLIENTS];
  double t0 = now_ms();
  double restart_ms = 0;
  int round;
  int i;
  int k;

  rng = test_seed();
  setup_dir();
  ids_cap = NCLIENTS * (INITIAL_RECORDS + kills_wanted * ROUND_CREATES);
  ids = calloc(ids_cap, sizeof(*ids));
  ASSERT(ids != NULL);
  /* Head office devices see and write everything: this test is about
   * durability under kills, not scope (integration_scope tests that). */
  for (i = 0; i < NCLIENTS; i++)
    client_init(&clients[i], i, "head_office");

  /* Each client plans its own visit and records its first observations. */
  for (i = 0; i < NCLIENTS; i++) {
    struct client *c = &clients[i];
    fieldsync_draft *d = NULL;

    ASSERT_OK(fieldsync_batch_begin(c->db));
    ASSERT_OK(fieldsync_draft_new(c->db, "visit", &d));
    ASSERT_OK(fieldsync_draft_set(d, "kind", "random"));
    ASSERT_OK(fieldsync_draft_set(d, "lead_inspector", c->user));
    ASSERT_OK(fieldsync_create(c->db, d, visits[i]));
    fieldsync_draft_free(d);
    for (k = 0; k < INITIAL_RECORDS; k++)
      create_obs(c, visits[i]);
    ASSERT_OK(fieldsync_batch_commit(c->db));
  }

  for (round = 0; kills < kills_wanted; round++) {
    double delay = (double)test_rand_below(&rng, MAX_KILL_DELAY_MS + 1);
    /* A sync lasts about as long as the kill window, so most kills land
     * in the first syncs' handshakes and pushes; every third round the
     * window opens when a sync has completed instead, to land in pulls,
     * in later syncs and between them. */
    bool after_sync = test_rand_below(&rng, 3) == 0;
    double t1 = now_ms();

    server_start(&srv, fieldsyncd, srvdb, NULL);
    restart_ms += now_ms() - t1;
    snprintf(server_addr, sizeof(server_addr), "%s", srv.addr);
    atomic_store(&stop_syncing, false);
    round_syncs = 0;
    round_ended = 0;
    for (i = 0; i < NCLIENTS; i++)
      ASSERT_OK(
          pthread_create(&clients[i].thread, NULL, client_main, &clients[i]));
    if (after_sync) {
      wait_first_sync();
      late_kills++;
    }
    proc_sleep_ms(delay);
    server_kill(&srv);
    kills++;
    atomic_store(&stop_syncing, true);
    for (i = 0; i < NCLIENTS; i++) {
      struct client *c = &clients[i];
      ASSERT_OK(pthread_join(c->thread, NULL));
      /* A sync cut off by the kill loses its connection; anything else
       * (a protocol error, a local failure) is a bug. */
      if (c->rc != 0 && c->rc != FIELDSYNC_ENETWORK)
        test_fail(__FILE__, __LINE__, "round %d: %s: %s: %s", round, c->user,
                  fieldsync_errname(c->rc), c->err);
      if (c->rc != 0)
        interrupted++;
    }

    check_server_store();
    known = check_acked_on_server();

    /* Life goes on offline until the next restart. */
    for (i = 0; i < NCLIENTS; i++) {
      struct client *c = &clients[i];
      ASSERT_OK(fieldsync_batch_begin(c->db));
      for (k = 0; k < ROUND_CREATES; k++)
        create_obs(c, visits[test_rand_below(&rng, NCLIENTS)]);
      for (k = 0; k < ROUND_EDITS; k++) {
        int what = edit_random(c);
        edits += what == 1;
        resolutions += what == 2;
        double_deletes += what == 3;
      }
      for (k = 0; k < ROUND_DELETES; k++)
        delete_random(c);
      ASSERT_OK(fieldsync_batch_commit(c->db));
    }
  }
  for (i = 0; i < NCLIENTS; i++)
    completed += clients[i].syncs;
  printf("# %llu kills (%llu timed from a completed sync), server restart "
         "%.0f ms on average; %zu syncs completed, %zu cut off\n",
         (unsigned long long)kills, (unsigned long long)late_kills,
         restart_ms / (double)round, completed, interrupted);
  printf("# %zu edits, %zu conflicts resolved, %zu concurrent deletions "
         "settled\n",
         edits, resolutions, double_deletes);
  printf("# %lld versions seen acknowledged, all on the server after every "
         "kill\n",
         (long long)known);

  /* Restart, then sync until a whole round moves nothing. */
  server_start(&srv, fieldsyncd, srvdb, NULL);
  snprintf(server_addr, sizeof(server_addr), "%s", srv.addr);
  for (round = 0;; round++) {
    size_t moved = 0;

    if (round == 8)
      test_fail(__FILE__, __LINE__, "still syncing after 8 rounds");
    for (i = 0; i < NCLIENTS; i++) {
      struct fieldsync_sync_stats st;
      sync_now(&clients[i], &st);
      moved += st.pushed + st.applied;
    }
    if (moved == 0)
      break;
  }
  known = check_acked_on_server();

  /* All replicas equal, and equal to the server's current versions. */
  for (i = 0; i < NCLIENTS; i++)
    exports[i] = test_export_normalised(clients[i].db);
  for (i = 1; i < NCLIENTS; i++) {
    if (strcmp(exports[0], exports[i]) != 0) {
      size_t p;
      for (p = 0; exports[0][p] != '\0' && exports[0][p] == exports[i][p]; p++)
        continue;
      test_fail(__FILE__, __LINE__,
                "exports of %s and %s differ at byte %zu:\n# %.160s\n# "
                "%.160s",
                clients[0].user, clients[i].user, p,
                exports[0] + (p > 60 ? p - 60 : 0),
                exports[i] + (p > 60 ? p - 60 : 0));
    }
  }
  for (i = 0; i < NCLIENTS; i++)
    free(exports[i]);
  {
    sqlite3 *s = sql_open(checkdb);
    int64_t current;

    sql_attach(s, srvdb, "s");
    current = sql_int(s, "SELECT count(*) FROM s.versions WHERE current = 1");
    for (i = 0; i < NCLIENTS; i++) {
      sql_attach(s, clients[i].path, "c");
      ASSERT_EQ(sql_int(s, "SELECT count(*) FROM c.versions WHERE "
                           "pending > 0"),
                0);
      ASSERT_EQ(sql_int(s, "SELECT count(*) FROM c.versions"), current);
      ASSERT_EQ(sql_int(s, "SELECT count(*) FROM c.versions cv WHERE NOT "
                           "EXISTS (SELECT 1 FROM s.versions sv WHERE "
                           "sv.current = 1 AND sv.record = cv.record AND "
                           "sv.hash = cv.hash AND sv.vv = cv.vv)"),
                0);
      ASSERT_EQ(sql_int(s, "SELECT count(*) FROM c.records"),
                sql_int(s, "SELECT count(*) FROM s.records"));
      sql_detach(s, "c");
    }
    printf("# converged: %lld records, %lld current versions, %lld in "
           "history\n",
           (long long)sql_int(s, "SELECT count(*) FROM s.records"),
           (long long)current,
           (long long)sql_int(s, "SELECT count(*) FROM s.versions"));
    sqlite3_close(s);
  }
  conflicted = check_current_maximal();
  ASSERT_EQ(server_stop(&srv), 0);
  check_server_store();
  for (i = 0; i < NCLIENTS; i++) {
    ASSERT_OK(fieldsync_close(clients[i].db));
    clients[i].db = NULL;
  }
  free(ids);
  printf("# %lld records left in conflict; %lld versions acknowledged; "
         "%.1f s\n",
         (long long)conflicted, (long long)known, (now_ms() - t0) / 1e3);
}

static const struct test_entry tests[] = {
    TEST_ENTRY(server_killed_while_clients_push)};

/* TEST_LIST's main, after taking the two program paths from the front of
 * the arguments, so that a test name or --list may follow them. */
int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_crash_server FIELDSYNCD FIELDSYNC-ADMIN "
                    "[TEST | --list]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
