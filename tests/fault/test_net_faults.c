/* SPDX-License-Identifier: MIT */
/* Network faults (issue 6): three replicas sync with fieldsyncd through
 * faultnet (tests/harness/faultnet.h), which drops, duplicates, delays or
 * reorders frames, or cuts the connection, client to server, server to
 * client (PushAcks and Changes included) or both, from a seeded PRNG.
 *
 * Every run starts from the same files (a server and three replicas that
 * share five records) and plays the same script: an update, a concurrent
 * edit of one record on two replicas (a conflict), a delete and new
 * records on every replica, then two rounds of syncs (two versions per
 * Push and per Pull, so a sync has many frames) in which each replica
 * retries a failed sync a bounded number of times; then more edits and
 * records, and two more rounds. The script's writes never depend on what
 * a sync brought, so its outcome does not depend on which syncs failed.
 * Then the faults stop and the replicas sync until a whole round moves
 * nothing. The run must end exactly as the same script ends with no
 * faults: every replica's records (versions, vectors, hashes, conflicts)
 * and the server's whole history (every stored version once: the same
 * rows, count and last seq, so no push was applied twice), every upload
 * queue empty, nothing refused, and the server still up (it exits 0 on
 * SIGTERM). A failed sync may only fail as the faults explain
 * (faultnet_failure): a network error, a timeout, a protocol error (a
 * duplicated or reordered answer out of turn) or the server's Error for a
 * request out of turn.
 *
 * One test per fault kind, one for reordering with duplicates and one for
 * a mix; each runs SEEDS_PER_KIND seeds times FIELDSYNC_TEST_SCALE, with
 * the faults on both directions, client to server only and server to
 * client only in turn. The seed is printed; FIELDSYNC_SEED repeats the
 * runs (the faults fall on the same frames as long as the frames come in
 * the same order), and FIELDSYNC_NET_VERBOSE=1 prints every failed sync.
 *
 * Usage: test_net_faults FIELDSYNCD FIELDSYNC-ADMIN [TEST | --list]. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "faultnet.h"
#include "fieldsync.h"
#include "harness.h"
#include "proc.h"
#include "replica_export.h"

#define NCLIENTS 3
#define NBASE 5 /* records every run starts with */
/* Records each replica creates in each phase of the script. */
#define NPER 2
#define MAXNEW (2 * NCLIENTS * NPER)
/* Versions per Push and per Pull: small, so that a sync has many frames
 * and a fault can fall between batches. */
#define BATCH 2
/* Seeds per fault kind at scale 1. */
#define SEEDS_PER_KIND 3
/* A faulty sync waits this long for each frame; a clean one much longer. */
#define FAULT_TIMEOUT_MS 400
#define CLEAN_TIMEOUT_MS 20000
/* In the faulty phase a replica tries a sync at most this often and for
 * at most this long, then gives up (its work waits for the clean phase). */
#define MAX_TRIES 6
#define TRY_BUDGET_MS 15000
/* The clean phase gives up on quiet after this many rounds. */
#define QUIET_ROUNDS 5
#define SRV_IDLE_MS "5000"
#define SRV_HANDSHAKE_MS "3000"

static const char *fieldsyncd;
static const char *admin;
/* FIELDSYNC_NET_VERBOSE=1 prints every failed sync. */
static bool verbose;

static const char *const visits[] = {"0190f0e0a0b0c0d0e0f0a1b2c3d4e5f6",
                                     "0190f0e0a0b0c0d0e0f0a1b2c3d4e5f7"};
static const char *const service = "0190f0e0a0b0c0d0e0f0a1b2c3d4e500";

/* The files every run copies: the server's database and the replicas'
 * after the shared setup. */
static char root[256];
static char base[300];
static char tokens[NCLIENTS][128];
static char base_ids[NBASE][33];

/* What a part (one fault kind) did, for its summary. */
struct figures {
  unsigned runs;
  unsigned long syncs;
  unsigned long failed[FAULTNET_F_NKINDS];
  unsigned long gave_up; /* faulty-phase syncs that never succeeded */
  struct faultnet_stats net;
};

/* One run of the script. */
struct run {
  char dir[300];
  char srvdb[340];
  struct test_server srv;
  struct faultnet fn;
  int timeout_ms; /* of the syncs before the faults stop */
  fieldsync_db *db[NCLIENTS];
  char new_ids[MAXNEW][33];
  size_t nnew;
  uint64_t seed;
  struct figures *fig;
};

/* A run's end state, in a form that does not depend on when things
 * happened: ids the script made are replaced by labels, times dropped. */
struct result {
  char *replica[NCLIENTS];
  char *history; /* the server's versions, one line each, sorted */
  char *records; /* the server's records, one line each, sorted */
  long long versions;
  long long max_seq;
};

/* ---- files ------------------------------------------------------------- */

static void run_cmd(const char *const *argv) {
  char err[512];
  int rc = proc_run((char *const *)argv, NULL, 0, err, sizeof(err), 30000);

  if (rc != 0)
    test_fail(__FILE__, __LINE__, "%s: exit %d: %s", argv[0], rc, err);
}

/* Copies every file of base into dir (made here). */
static void copy_base(const char *dir) {
  char src[320];

  if (mkdir(dir, 0700) != 0)
    test_fail(__FILE__, __LINE__, "mkdir %s: %s", dir, strerror(errno));
  snprintf(src, sizeof(src), "%s/.", base);
  {
    const char *a[] = {"/bin/cp", "-R", src, dir, NULL};
    run_cmd(a);
  }
}

/* Removes a run's directory, unless FIELDSYNC_KEEP_TMP=1 keeps them all
 * (with the servers' logs). */
static void remove_tree(const char *dir) {
  const char *a[] = {"/bin/rm", "-rf", dir, NULL};
  const char *keep = getenv("FIELDSYNC_KEEP_TMP");

  if (keep == NULL || strcmp(keep, "1") != 0)
    run_cmd(a);
}

static void client_open(fieldsync_db **db, const char *dir, int ci,
                        bool create) {
  char path[360];
  char name[8];

  snprintf(path, sizeof(path), "%s/c%d.db", dir, ci);
  snprintf(name, sizeof(name), "c%d", ci);
  if (fieldsync_open(path, create ? FIELDSYNC_OPEN_CREATE : 0, name, db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", path, fieldsync_errmsg(*db));
}

static void client_close(fieldsync_db **db) {
  ASSERT_OK(fieldsync_close(*db));
  *db = NULL;
}

/* ---- local writes ------------------------------------------------------ */

static void create(fieldsync_db *db, bool obs, int visit, const char *field,
                   const char *value, char id[33]) {
  fieldsync_draft *d = NULL;

  ASSERT_OK(fieldsync_draft_new(db, obs ? "observation" : "requirement", &d));
  if (obs) {
    ASSERT_OK(fieldsync_draft_set(d, "visit_id", visits[visit]));
    ASSERT_OK(fieldsync_draft_set(d, "standard_code", "OP9"));
  } else {
    ASSERT_OK(fieldsync_draft_set(d, "service_id", service));
    ASSERT_OK(fieldsync_draft_set(d, "status", "open"));
  }
  ASSERT_OK(fieldsync_draft_set(d, field, value));
  if (fieldsync_create(db, d, id) != 0)
    test_fail(__FILE__, __LINE__, "create: %s", fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

static void edit(fieldsync_db *db, const char *id, const char *field,
                 const char *value) {
  fieldsync_draft *d = NULL;

  if (fieldsync_draft_for_edit(db, id, &d) != 0)
    test_fail(__FILE__, __LINE__, "draft_for_edit %s: %s", id,
              fieldsync_errmsg(db));
  ASSERT_OK(fieldsync_draft_set(d, field, value));
  if (fieldsync_edit(db, d) != 0)
    test_fail(__FILE__, __LINE__, "edit %s: %s", id, fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

/* ---- syncs ------------------------------------------------------------- */

static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  (void)data;
  if (strcmp(outcome, "refused") == 0)
    test_fail(__FILE__, __LINE__, "the server refused %s %s: %s", collection,
              id, reason != NULL ? reason : "?");
}

/* One sync of replica ci through addr. Returns its code; the stats go to
 * st. */
static int sync_once(struct run *w, int ci, const char *addr, int timeout_ms,
                     struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_opts o;

  memset(&o, 0, sizeof(o));
  o.server = addr;
  o.token = tokens[ci];
  o.plaintext = 1;
  o.timeout_ms = timeout_ms;
  o.batch = BATCH;
  o.outcome = on_outcome;
  if (w->fig != NULL)
    w->fig->syncs++;
  return fieldsync_sync(w->db[ci], &o, st);
}

/* Files a failed faulty sync under its kind; one that network faults do
 * not explain fails the test. */
static void count_failure(struct run *w, int ci, int rc) {
  int k = faultnet_failure(rc, fieldsync_errmsg(w->db[ci]));

  if (k < 0)
    test_fail(__FILE__, __LINE__,
              "seed %llu: c%d: a sync under network faults failed with %s: "
              "%s",
              (unsigned long long)w->seed, ci, fieldsync_errname(rc),
              fieldsync_errmsg(w->db[ci]));
  w->fig->failed[k]++;
  if (verbose)
    printf("#   seed %llu: c%d: %s: %s\n", (unsigned long long)w->seed, ci,
           fieldsync_errname(rc), fieldsync_errmsg(w->db[ci]));
}

/* Faulty phase: syncs replica ci, retrying a bounded number of times. */
static void sync_retry(struct run *w, int ci) {
  long long end = proc_now_ms() + TRY_BUDGET_MS;
  int tries;

  for (tries = 0; tries < MAX_TRIES && proc_now_ms() < end; tries++) {
    struct fieldsync_sync_stats st;
    int rc = sync_once(w, ci, w->fn.addr, w->timeout_ms, &st);

    ASSERT_EQ(st.refused, 0);
    if (rc == 0)
      return;
    count_failure(w, ci, rc);
  }
  w->fig->gave_up++;
}

/* Clean phase (or setup): the sync must succeed. Returns versions pushed
 * plus versions new here. */
static size_t sync_clean(struct run *w, int ci, const char *addr) {
  struct fieldsync_sync_stats st;
  int rc = sync_once(w, ci, addr, CLEAN_TIMEOUT_MS, &st);

  if (rc != 0)
    test_fail(__FILE__, __LINE__,
              "seed %llu: c%d: sync with faults off: %s: %s",
              (unsigned long long)w->seed, ci, fieldsync_errname(rc),
              fieldsync_errmsg(w->db[ci]));
  ASSERT_EQ(st.refused, 0);
  ASSERT_EQ(st.acked, st.pushed);
  return st.pushed + st.applied;
}

/* ---- the shared setup -------------------------------------------------- */

/* base/: a server database with three head-office devices, and three
 * replicas that hold the NBASE records c0 made. */
static void setup_base(void) {
  static struct run w; /* tmpdir_kill_at_exit keeps a pointer to w.srv */
  const char *extra[] = {"--quiet", NULL};
  int ci;

  memset(&w, 0, sizeof(w));
  tmpdir_make(root, sizeof(root), "fs-netfault");
  snprintf(base, sizeof(base), "%s/base", root);
  if (mkdir(base, 0700) != 0)
    test_fail(__FILE__, __LINE__, "mkdir %s: %s", base, strerror(errno));
  snprintf(w.srvdb, sizeof(w.srvdb), "%s/server.db", base);
  for (ci = 0; ci < NCLIENTS; ci++) {
    char user[16];
    snprintf(user, sizeof(user), "lead%d", ci);
    admin_user_device(admin, w.srvdb, user, "head_office", tokens[ci],
                      sizeof(tokens[ci]));
    client_open(&w.db[ci], base, ci, true);
  }
  tmpdir_kill_at_exit(&w.srv);
  server_start(&w.srv, fieldsyncd, w.srvdb, extra);
  create(w.db[0], true, 0, "judgement", "2", base_ids[0]);
  create(w.db[0], true, 0, "evidence_text", "seen", base_ids[1]);
  create(w.db[0], false, 0, "text", "fix the door", base_ids[2]);
  create(w.db[0], true, 1, "judgement", "1", base_ids[3]);
  create(w.db[0], false, 0, "regulation", "Reg 12", base_ids[4]);
  for (ci = 0; ci < NCLIENTS; ci++)
    (void)sync_clean(&w, ci, w.srv.addr);
  for (ci = 0; ci < NCLIENTS; ci++)
    client_close(&w.db[ci]);
  ASSERT_EQ(server_stop(&w.srv), 0);
}

/* ---- one run ----------------------------------------------------------- */

/* Each replica creates NPER records in each phase besides the script's
 * special writes. */
static void create_some(struct run *w, int phase) {
  static const char *const texts[] = {"review", "train staff", "fix the door",
                                      "check the rota"};
  int ci;
  int i;

  for (ci = 0; ci < NCLIENTS; ci++)
    for (i = 0; i < NPER; i++) {
      ASSERT(w->nnew < MAXNEW);
      if ((ci + i) % 2 == 0)
        create(w->db[ci], true, (ci + i + phase) % 2, "evidence_text",
               texts[(ci + i + phase) % 4], w->new_ids[w->nnew++]);
      else
        create(w->db[ci], false, 0, "text", texts[(ci + i + phase) % 4],
               w->new_ids[w->nnew++]);
    }
}

/* The script's local writes before the first syncs: c0 updates a record,
 * c1 and c2 edit another one concurrently (a conflict), c1 deletes a
 * third, and every replica creates records. */
static void edits_first(struct run *w) {
  edit(w->db[0], base_ids[0], "judgement", "3");
  edit(w->db[1], base_ids[1], "evidence_text", "seen by c1");
  edit(w->db[2], base_ids[1], "evidence_text", "seen by c2");
  ASSERT_OK(fieldsync_delete(w->db[1], base_ids[2]));
  create_some(w, 0);
}

/* The writes after them: each touches a record no other replica writes in
 * the script and that the writer did not write before, so none depends on
 * what the syncs between brought, and every version the script makes
 * reaches the server however the syncs went. */
static void edits_second(struct run *w) {
  edit(w->db[2], base_ids[3], "assessor", "bo");
  edit(w->db[1], base_ids[4], "status", "met");
  create_some(w, 1);
}

static void faulty_rounds(struct run *w, int rounds) {
  int r;
  int ci;

  for (r = 0; r < rounds; r++)
    for (ci = 0; ci < NCLIENTS; ci++)
      sync_retry(w, ci);
}

/* A set of faults: the probability (per mille, per frame) of each, and
 * the longest delay (ms). */
struct profile {
  const char *name;
  unsigned p[FAULTNET_NFAULTS];
  unsigned delay_max_ms;
};

/* Each kind alone, then reordering with duplicates (one request is in
 * flight at a time, so a frame is seldom followed by another of its
 * direction before its answer: a duplicate makes the second frame that a
 * reordered one can swap with), then everything at once. Delays reach
 * past FAULT_TIMEOUT_MS, so that a client sometimes gives up on a session
 * whose request still reaches the server, beside its next attempt. */
static const struct profile profiles[] = {
    {"drop", {0, 60, 0, 0, 0, 0}, 0},
    {"dup", {0, 0, 150, 0, 0, 0}, 0},
    {"delay", {0, 0, 0, 150, 0, 0}, 2 * FAULT_TIMEOUT_MS},
    {"reorder", {0, 0, 0, 0, 250, 0}, 0},
    {"reorder_dup", {0, 0, 120, 0, 300, 0}, 0},
    {"cut", {0, 0, 0, 0, 0, 60}, 0},
    {"mix", {0, 20, 40, 60, 60, 20}, 2 * FAULT_TIMEOUT_MS},
};

static void set_faults(struct faultnet *fn, const struct profile *pr, int dir) {
  int i;

  for (i = FAULTNET_DROP; i < FAULTNET_NFAULTS; i++)
    faultnet_set(fn, dir, (enum faultnet_fault)i, pr->p[i]);
}

/* Replaces the ids the script made with labels ("new-N", N in the order
 * they were made; in a static buffer, valid until the next call). */
static const char *label(const struct run *w, const char *id) {
  static char buf[32];
  size_t i;

  for (i = 0; i < w->nnew; i++)
    if (strcmp(w->new_ids[i], id) == 0) {
      snprintf(buf, sizeof(buf), "new-%zu", i);
      return buf;
    }
  return id;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts n malloc'd lines and joins them (each followed by '\n') into one
 * malloc'd string; frees the lines. */
static char *join_sorted(char **lines, size_t n) {
  size_t len = 1;
  size_t i;
  char *out;
  char *p;

  qsort(lines, n, sizeof(*lines), cmp_str);
  for (i = 0; i < n; i++)
    len += strlen(lines[i]) + 1;
  out = malloc(len);
  ASSERT(out != NULL);
  p = out;
  for (i = 0; i < n; i++) {
    size_t k = strlen(lines[i]);
    memcpy(p, lines[i], k);
    p[k] = '\n';
    p += k + 1;
    free(lines[i]);
  }
  *p = '\0';
  return out;
}

/* A replica's records: its export without "pending" (replica_export.h),
 * with each version's "time" dropped, labels for the script's ids and the
 * siblings after the display winner sorted. */
static char *replica_state(const struct run *w, fieldsync_db *db) {
  char *raw = test_export_normalised(db);
  json_error_t jerr;
  json_t *arr = json_loads(raw, 0, &jerr);
  char **lines;
  json_t *rec;
  size_t i;
  char *out;

  if (arr == NULL)
    test_fail(__FILE__, __LINE__, "export: bad JSON: %s", jerr.text);
  free(raw);
  lines = calloc(json_array_size(arr) + 1, sizeof(*lines));
  ASSERT(lines != NULL);
  json_array_foreach(arr, i, rec) {
    json_t *vs = json_object_get(rec, "versions");
    char *parts[16];
    size_t nv = json_array_size(vs);
    size_t k;
    size_t len = 64;
    json_t *v;
    char *head;

    ASSERT(nv > 0 && nv <= 16);
    json_object_set_new(
        rec, "id",
        json_string(label(w, json_string_value(json_object_get(rec, "id")))));
    json_array_foreach(vs, k, v) {
      json_object_del(v, "time");
      parts[k] = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
      ASSERT(parts[k] != NULL);
      len += strlen(parts[k]) + 1;
    }
    json_object_del(rec, "versions");
    if (nv > 2)
      qsort(parts + 1, nv - 1, sizeof(parts[0]), cmp_str);
    head = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
    ASSERT(head != NULL);
    len += strlen(head);
    lines[i] = malloc(len);
    ASSERT(lines[i] != NULL);
    snprintf(lines[i], len, "%s", head);
    free(head);
    for (k = 0; k < nv; k++) {
      size_t at = strlen(lines[i]);
      snprintf(lines[i] + at, len - at, " %s", parts[k]);
      free(parts[k]);
    }
  }
  out = join_sorted(lines, json_array_size(arr));
  free(lines);
  json_decref(arr);
  return out;
}

/* The lines of a query over the server's database, columns joined by
 * spaces, the first column (a record id in hex) through label(). */
static char *server_lines(const struct run *w, sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  char **lines = NULL;
  size_t n = 0;
  size_t cap = 0;
  int rc;

  ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    char line[1024];
    size_t off = 0;
    int c;

    for (c = 0; c < sqlite3_column_count(st); c++) {
      const char *t = (const char *)sqlite3_column_text(st, c);
      if (t == NULL)
        t = "NULL";
      off += (size_t)snprintf(line + off, sizeof(line) - off, "%s%s",
                              c > 0 ? " " : "", c == 0 ? label(w, t) : t);
      ASSERT(off < sizeof(line));
    }
    if (n == cap) {
      char **nl;
      cap = cap == 0 ? 64 : cap * 2;
      nl = realloc(lines, cap * sizeof(*nl));
      ASSERT(nl != NULL);
      lines = nl;
    }
    lines[n] = strdup(line);
    ASSERT(lines[n] != NULL);
    n++;
  }
  ASSERT_EQ(rc, SQLITE_DONE);
  sqlite3_finalize(st);
  {
    char *out = join_sorted(lines, n);
    free(lines);
    return out;
  }
}

static long long server_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  long long v;

  ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* The server's whole history and its records, read from its database
 * after it stopped. */
static void server_state(const struct run *w, struct result *res) {
  sqlite3 *db = NULL;

  ASSERT_EQ(sqlite3_open_v2(w->srvdb, &db, SQLITE_OPEN_READONLY, NULL),
            SQLITE_OK);
  res->history = server_lines(
      w, db,
      "SELECT lower(hex(record)), lower(hex(hash)), lower(hex(vv)), deleted, "
      "current, collection, scope_kind, lower(hex(scope_id)), author, "
      "user_id, device_id FROM versions");
  res->records =
      server_lines(w, db,
                   "SELECT lower(hex(id)), collection, scope_kind, "
                   "lower(hex(scope_id)), reuse, owner FROM records");
  res->versions = server_int(db, "SELECT count(*) FROM versions");
  res->max_seq = server_int(db, "SELECT max(seq) FROM versions");
  sqlite3_close(db);
}

static void result_free(struct result *res) {
  int ci;

  for (ci = 0; ci < NCLIENTS; ci++)
    free(res->replica[ci]);
  free(res->history);
  free(res->records);
  memset(res, 0, sizeof(*res));
}

/* Plays the script in dir (a copy of base) with the faults of pr on the
 * directions dirs (bit FAULTNET_UP, bit FAULTNET_DOWN; 0: no faults), and
 * fills res with the end state. */
static void play(const char *dir, uint64_t seed, const struct profile *pr,
                 unsigned dirs, struct figures *fig, struct result *res) {
  const char *extra[] = {"--idle-timeout-ms", SRV_IDLE_MS,
                         "--handshake-timeout-ms", SRV_HANDSHAKE_MS, NULL};
  static struct run w; /* tmpdir_kill_at_exit keeps a pointer to w.srv */
  struct faultnet_stats fst;
  struct fieldsync_counts cnt;
  int round;
  int ci;
  int d;

  memset(&w, 0, sizeof(w));
  w.seed = seed;
  w.fig = fig;
  /* Without faults, a slow machine must not fail a sync. */
  w.timeout_ms = dirs != 0 ? FAULT_TIMEOUT_MS : CLEAN_TIMEOUT_MS;
  snprintf(w.dir, sizeof(w.dir), "%s", dir);
  copy_base(dir);
  snprintf(w.srvdb, sizeof(w.srvdb), "%s/server.db", dir);
  tmpdir_kill_at_exit(&w.srv);
  server_start(&w.srv, fieldsyncd, w.srvdb, extra);
  w.fn.server_port = w.srv.port;
  w.fn.seed = seed;
  w.fn.delay_max_ms = pr->delay_max_ms;
  faultnet_start(&w.fn);
  for (d = 0; d < 2; d++)
    if (dirs & (1u << d))
      set_faults(&w.fn, pr, d);
  for (ci = 0; ci < NCLIENTS; ci++)
    client_open(&w.db[ci], dir, ci, false);

  edits_first(&w);
  faulty_rounds(&w, 2);
  edits_second(&w);
  faulty_rounds(&w, 2);

  /* The faults stop: sync until a whole round moves nothing. */
  faultnet_off(&w.fn);
  for (round = 0;; round++) {
    size_t moved = 0;
    if (round == QUIET_ROUNDS)
      test_fail(__FILE__, __LINE__, "seed %llu: not quiet after %d rounds",
                (unsigned long long)seed, QUIET_ROUNDS);
    for (ci = 0; ci < NCLIENTS; ci++)
      moved += sync_clean(&w, ci, w.fn.addr);
    if (moved == 0)
      break;
  }
  for (ci = 0; ci < NCLIENTS; ci++) {
    ASSERT_OK(fieldsync_counts(w.db[ci], &cnt));
    if (cnt.pending != 0 || cnt.refused != 0 || cnt.quarantined != 0)
      test_fail(__FILE__, __LINE__,
                "seed %llu: c%d: %zu versions still queued, %zu refused, "
                "%zu quarantined after the faults stopped",
                (unsigned long long)seed, ci, cnt.pending, cnt.refused,
                cnt.quarantined);
    res->replica[ci] = replica_state(&w, w.db[ci]);
  }
  faultnet_stop(&w.fn);
  faultnet_stats(&w.fn, &fst);
  for (d = 0; d < 2; d++) {
    int i;
    fig->net.bytes[d] += fst.bytes[d];
    for (i = 0; i < FAULTNET_NFAULTS; i++)
      fig->net.frames[d][i] += fst.frames[d][i];
  }
  fig->net.swaps += fst.swaps;
  fig->net.cuts_mid += fst.cuts_mid;
  fig->net.cuts_rst += fst.cuts_rst;
  fig->net.sessions += fst.sessions;
  for (ci = 0; ci < NCLIENTS; ci++)
    client_close(&w.db[ci]);
  /* The server stayed up through it all: it exits 0 on SIGTERM (a crash
   * would show as 128 + its signal). */
  ASSERT_EQ(server_stop(&w.srv), 0);
  server_state(&w, res);
}

/* Fails unless a and b are the same text, showing the first difference. */
static void same_text(uint64_t seed, const char *what, const char *a,
                      const char *b) {
  size_t i = 0;
  size_t from;

  if (strcmp(a, b) == 0)
    return;
  while (a[i] == b[i])
    i++;
  from = i > 200 ? i - 200 : 0;
  test_fail(__FILE__, __LINE__,
            "seed %llu: %s differs from the run without faults at byte %zu:"
            "\n  no faults: ...%.400s\n  faults:    ...%.400s",
            (unsigned long long)seed, what, i, a + from, b + from);
}

static void compare(uint64_t seed, const struct result *clean,
                    const struct result *got) {
  int ci;

  for (ci = 0; ci < NCLIENTS; ci++) {
    char what[32];
    snprintf(what, sizeof(what), "replica c%d", ci);
    same_text(seed, what, clean->replica[ci], got->replica[ci]);
    same_text(seed, "a replica against c0", got->replica[0], got->replica[ci]);
  }
  same_text(seed, "the server's history", clean->history, got->history);
  same_text(seed, "the server's records", clean->records, got->records);
  ASSERT_EQ(got->versions, clean->versions);
  ASSERT_EQ(got->max_seq, got->versions);
}

/* ---- the tests --------------------------------------------------------- */

static void print_figures(const char *name, const struct figures *fig,
                          long long ms) {
  static const char *const dn[2] = {"client->server", "server->client"};
  unsigned long failed = 0;
  char line[256];
  size_t off = 0;
  int d;
  int i;

  for (i = 0; i < FAULTNET_F_NKINDS; i++) {
    failed += fig->failed[i];
    off += (size_t)snprintf(line + off, sizeof(line) - off, "%s%s %lu",
                            i > 0 ? ", " : "", faultnet_failure_name(i),
                            fig->failed[i]);
  }
  printf("# %s: %u runs with faults in %lld ms; %lu syncs, %lu failed (%s), "
         "%lu gave up until the faults stopped\n",
         name, fig->runs, ms, fig->syncs, failed, line, fig->gave_up);
  for (d = 0; d < 2; d++) {
    off = 0;
    for (i = 0; i < FAULTNET_NFAULTS; i++)
      off += (size_t)snprintf(
          line + off, sizeof(line) - off, "%s%s %lu", i > 0 ? ", " : "",
          faultnet_fault_name((enum faultnet_fault)i), fig->net.frames[d][i]);
    printf("# %s: frames %s: %s\n", name, dn[d], line);
  }
  printf("# %s: %lu sessions, %lu reordered frames passed by the next, %lu "
         "cuts inside a frame, %lu cuts by reset\n",
         name, fig->net.sessions, fig->net.swaps, fig->net.cuts_mid,
         fig->net.cuts_rst);
}

/* The script with no faults once, then with the faults of profile pi
 * for SEEDS_PER_KIND * scale seeds: both directions, client to server,
 * server to client in turn. */
static void run_kind(size_t pi) {
  static const unsigned dirsets[3] = {3u, 1u << FAULTNET_UP,
                                      1u << FAULTNET_DOWN};
  const struct profile *pr = &profiles[pi];
  const char *name = pr->name;
  uint64_t seed = test_seed();
  uint64_t n = SEEDS_PER_KIND * test_scale();
  struct figures fig;
  struct figures none;
  struct result clean;
  char dir[320];
  long long t0;
  uint64_t i;

  memset(&fig, 0, sizeof(fig));
  memset(&none, 0, sizeof(none));
  setup_base();
  snprintf(dir, sizeof(dir), "%s/clean", root);
  memset(&clean, 0, sizeof(clean));
  play(dir, seed, pr, 0, &none, &clean);
  remove_tree(dir);
  for (i = 0; i < FAULTNET_F_NKINDS; i++)
    ASSERT_EQ(none.failed[i], 0);
  t0 = proc_now_ms();
  for (i = 0; i < n; i++) {
    struct result got;
    unsigned dirs = dirsets[i % 3];

    memset(&got, 0, sizeof(got));
    snprintf(dir, sizeof(dir), "%s/run%llu", root, (unsigned long long)i);
    play(dir, seed + i, pr, dirs, &fig, &got);
    compare(seed + i, &clean, &got);
    result_free(&got);
    remove_tree(dir);
    fig.runs++;
  }
  print_figures(name, &fig, proc_now_ms() - t0);
  printf("# %s: seeds %llu..%llu (faults both ways, client->server, "
         "server->client in turn)\n",
         name, (unsigned long long)seed, (unsigned long long)(seed + n - 1));
  result_free(&clean);
}

TEST(net_drop) {
  run_kind(0);
}

TEST(net_dup) {
  run_kind(1);
}

TEST(net_delay) {
  run_kind(2);
}

TEST(net_reorder) {
  run_kind(3);
}

TEST(net_reorder_dup) {
  run_kind(4);
}

TEST(net_cut) {
  run_kind(5);
}

TEST(net_mix) {
  run_kind(6);
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(net_drop) TEST_ENTRY(net_dup) TEST_ENTRY(net_delay)
          TEST_ENTRY(net_reorder) TEST_ENTRY(net_reorder_dup)
              TEST_ENTRY(net_cut) TEST_ENTRY(net_mix)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_net_faults FIELDSYNCD FIELDSYNC-ADMIN "
                    "[TEST | --list]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  verbose = getenv("FIELDSYNC_NET_VERBOSE") != NULL;
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
