/* SPDX-License-Identifier: MIT */
/* Allocation failure at every k in libfieldsync, with SQLite's and
 * jansson's own allocations routed through fsp_malloc as well
 * (tests/harness/faultmem.c, json_set_alloc_funcs), so "the k-th
 * allocation" counts everything the library makes happen in this process
 * (but OpenSSL's):
 *
 *  - opening a database (an existing one, and creating a new one): a clean
 *    FIELDSYNC_ENOMEM, and the file opens cleanly afterwards with the same
 *    content, or as a usable new database;
 *  - recording (create, edit, delete, resolve a conflict): the failed call
 *    changes nothing, the database stays intact, and the same call on the
 *    same handle succeeds once memory is back;
 *  - a batch of calls (fieldsync_batch_begin ... _commit), the k-th
 *    allocation failing once or from then on: a failed call leaves nothing
 *    of itself, and the commit keeps exactly the calls that succeeded (or
 *    nothing, when it fails);
 *  - a whole sync with a real fieldsyncd (the scenario of alloc_common.h,
 *    in batches of 3 so push and pull take several rounds), the k-th
 *    allocation failing once, or every one from the k-th on (sticky): the
 *    sync returns FIELDSYNC_ENOMEM with a message (or succeeds: SQLite
 *    treats some allocations as optional), no crash, no leak, the database
 *    intact and nothing lost; then syncs without faults on the same handle
 *    succeed, the upload queue ends empty, and client and server hold
 *    exactly what a fault-free sync gives them.
 *
 * Sweeps try a stride of k in CI (printed; the first and last points are
 * always in) and every k at FIELDSYNC_TEST_SCALE >= 10.
 *
 * Usage: test_alloc_client FIELDSYNCD FIELDSYNC-ADMIN [TEST | --list]. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "alloc_common.h"
#include "faultmem.h"
#include "fieldsync.h"
#include "fsp_alloc.h"
#include "harness.h"
#include "proc.h"
#include "replica_export.h"

/* Points of each sweep at scale 1. */
#define OPEN_POINTS 150
#define CREATE_POINTS 250
#define RECORD_POINTS 150
#define SYNC_POINTS 70
#define SYNC_STICKY_POINTS 40

static const char *fieldsyncd;
static const char *admin;
static struct ac_base b;
static struct test_server srv;

static void setup(void) {
  if (faultmem_install() != 0)
    test_fail(__FILE__, __LINE__, "faultmem_install: SQLite initialised");
  json_set_alloc_funcs(fsp_malloc, fsp_free);
  ac_base_make(&b, "fs-alloc-client", fieldsyncd, admin, &srv);
}

/* Checks a failed call's code and message: out of memory, said as such. */
static void expect_nomem(fieldsync_db *db, int rc, const char *what,
                         uint64_t k) {
  const char *msg = fieldsync_errmsg(db);

  if (rc != FIELDSYNC_ENOMEM)
    test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": %s: %s: %s", k, what,
              fieldsync_errname(rc), msg);
  if (strstr(msg, "out of memory") == NULL)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 ": %s: FIELDSYNC_ENOMEM with message \"%s\"", k,
              what, msg);
}

/* The database is intact (integrity_check) and its tables agree: every
 * version belongs to a record, and every record counts its versions, so no
 * failed write left half of itself behind. */
static void intact(const char *path, uint64_t k) {
  char r[64];

  ac_integrity(path, k);
  ac_sql_text(path,
              "SELECT (SELECT count(*) FROM versions WHERE record NOT IN "
              "(SELECT id FROM records)) || ' ' || (SELECT count(*) FROM "
              "records r WHERE nversions != (SELECT count(*) FROM versions v "
              "WHERE v.record = r.id))",
              r, sizeof(r));
  if (strcmp(r, "0 0") != 0)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 ": %s: orphan versions, miscounted records: %s", k,
              path, r);
}

/* ---- a replica's state, to prove a failed call changed nothing ---------- */

struct snap {
  struct fieldsync_counts c;
  char *exp; /* normalised export (malloc'd) */
};

static void snap_take(fieldsync_db *db, struct snap *s) {
  s->c = ac_counts(db);
  s->exp = test_export_normalised(db);
}

static void snap_expect(fieldsync_db *db, const struct snap *s,
                        const char *what, uint64_t k) {
  struct snap now;

  snap_take(db, &now);
  if (memcmp(&now.c, &s->c, sizeof(now.c)) != 0 || strcmp(now.exp, s->exp) != 0)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 ": a failed %s changed the database (records "
              "%zu -> %zu, pending %zu -> %zu, conflicts %zu -> %zu)",
              k, what, s->c.records, now.c.records, s->c.pending, now.c.pending,
              s->c.conflicts, now.c.conflicts);
  free(now.exp);
}

static void snap_free(struct snap *s) {
  free(s->exp);
  s->exp = NULL;
}

/* ---- opening ------------------------------------------------------------- */

/* Opens path (creating it when create) with the k-th allocation failing
 * (k = 0: none); then it must open cleanly, with the content want (NULL:
 * as a usable new database). Returns the allocation count of the first
 * open, and whether it failed in *failed. */
static uint64_t open_at(const char *path, bool create, uint64_t k,
                        const char *want, bool *failed) {
  fieldsync_db *db = NULL;
  uint64_t n;
  int flags = create ? FIELDSYNC_OPEN_CREATE : 0;
  int rc;

  if (create)
    ac_remove_db(path);
  else
    ac_restore(b.base_cli, path);
  fsp_alloc_fail_at(k, false);
  rc = fieldsync_open(path, flags, "office", &db);
  n = fsp_alloc_count();
  if (k != 0)
    ASSERT_GT(fsp_alloc_failed(), 0);
  fsp_alloc_fail_at(0, false);
  *failed = rc != 0;
  if (rc != 0)
    expect_nomem(db, rc, create ? "create" : "open", k);
  ASSERT_OK(fieldsync_close(db));
  db = ac_open(path, flags);
  if (want == NULL) {
    const struct ac_kv kv[] = {{"name", "Seaview Lodge"}, {NULL, NULL}};
    char id[33];
    if (ac_create(db, "service", kv, id) != 0)
      test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": create after: %s", k,
                fieldsync_errmsg(db));
    ASSERT_EQ(ac_counts(db).records, 1);
  } else {
    char *got = test_export_normalised(db);
    if (strcmp(got, want) != 0)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": the database changed after a failed open", k);
    free(got);
  }
  ASSERT_OK(fieldsync_close(db));
  intact(path, k);
  return n;
}

TEST(open_fails_cleanly_at_every_k) {
  static const char *const name[2] = {"open", "create"};
  static const uint64_t points[2] = {OPEN_POINTS, CREATE_POINTS};
  uint64_t seed = test_seed();
  char fresh[320];
  char *want;
  fieldsync_db *db;
  int create;

  setup();
  snprintf(fresh, sizeof(fresh), "%s/fresh.db", b.dir);
  db = ac_open(b.base_cli, 0);
  want = test_export_normalised(db);
  ASSERT_OK(fieldsync_close(db));
  for (create = 0; create < 2; create++) {
    const char *path = create ? fresh : b.cli;
    const char *content = create ? NULL : want;
    struct ac_sweep sw;
    uint64_t covered = 0;
    uint64_t fails = 0;
    bool failed;
    uint64_t k;
    uint64_t total = open_at(path, create, 0, content, &failed);

    ASSERT(!failed);
    ac_sweep_init(&sw, name[create], total, points[create], seed);
    for (k = 1; k <= total; k++) {
      if (!ac_sweep_pick(&sw, k))
        continue;
      open_at(path, create, k, content, &failed);
      covered++;
      fails += failed;
    }
    printf("# %s: fault points covered %" PRIu64 " of %" PRIu64
           ", FIELDSYNC_ENOMEM %" PRIu64 ", benign %" PRIu64 "\n",
           name[create], covered, total, fails, covered - fails);
    ASSERT_GT(fails, 0);
  }
  free(want);
}

/* ---- recording ----------------------------------------------------------- */

static int op_create(fieldsync_db *db) {
  char id[33];
  const struct ac_kv kv[] = {{"visit_id", b.visit},
                             {"standard_code", "OP21"},
                             {"judgement", "1"},
                             {"evidence_text", "No fire drill since June."},
                             {"evidence_category", "processes"},
                             {NULL, NULL}};

  return ac_create(db, "observation", kv, id);
}

static int op_edit(fieldsync_db *db) {
  return ac_edit(db, b.obs_synced, "evidence_text",
                 "Menus seen; choice offered; drinks within reach.");
}

static int op_delete(fieldsync_db *db) {
  return fieldsync_delete(db, b.obs_local);
}

static int op_resolve(fieldsync_db *db) {
  fieldsync_draft *d = NULL;
  int rc = fieldsync_draft_for_resolve(db, b.req, &d);

  if (rc == 0)
    rc = fieldsync_draft_set(d, "timescale_due", "2025-05-30");
  if (rc == 0)
    rc = fieldsync_resolve_with(db, b.req, d);
  fieldsync_draft_free(d);
  return rc;
}

struct op {
  const char *name;
  int (*fn)(fieldsync_db *);
  bool after_sync; /* runs on the database after a sync (in conflict) */
  int new_records;
};

/* Runs op on a fresh copy of base with the k-th allocation failing (k = 0:
 * none), after a snapshot (which also warms the handle's statement cache,
 * as in every run). A failure must change nothing, and the same call then
 * works. Returns the allocation count of the op; *failed tells whether it
 * failed. */
static uint64_t op_at(const struct op *op, const char *base, uint64_t k,
                      bool *failed) {
  fieldsync_db *db;
  struct snap before;
  uint64_t n;
  int rc;

  ac_restore(base, b.cli);
  db = ac_open(b.cli, 0);
  snap_take(db, &before);
  fsp_alloc_fail_at(k, false);
  rc = op->fn(db);
  n = fsp_alloc_count();
  if (k != 0)
    ASSERT_GT(fsp_alloc_failed(), 0);
  fsp_alloc_fail_at(0, false);
  *failed = rc != 0;
  if (rc != 0) {
    expect_nomem(db, rc, op->name, k);
    snap_expect(db, &before, op->name, k);
    rc = op->fn(db);
  }
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": %s: %s", k, op->name,
              fieldsync_errmsg(db));
  ASSERT_EQ(ac_counts(db).records, before.c.records + (size_t)op->new_records);
  snap_free(&before);
  ASSERT_OK(fieldsync_close(db));
  intact(b.cli, k);
  return n;
}

TEST(recording_fails_cleanly_at_every_k) {
  static const struct op ops[] = {
      {"create", op_create, false, 1},
      {"edit", op_edit, false, 0},
      {"delete", op_delete, false, 0},
      {"resolve", op_resolve, true, 0},
  };
  uint64_t seed = test_seed();
  char after[320];
  uint64_t covered = 0;
  uint64_t fails = 0;
  size_t i;

  setup();
  /* The requirement is in conflict once office has synced. */
  snprintf(after, sizeof(after), "%s/after-office.db", b.dir);
  ac_restore(b.base_cli, after);
  ac_restore(b.base_srv, b.srvdb);
  server_start(&srv, fieldsyncd, b.srvdb, NULL);
  {
    fieldsync_db *db = ac_open(after, 0);
    ac_must_sync(db, srv.addr, b.token, NULL);
    ASSERT_EQ(ac_counts(db).conflicts, 1);
    ASSERT_OK(fieldsync_close(db));
  }
  ASSERT_EQ(server_stop(&srv), 0);

  for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
    const char *base = ops[i].after_sync ? after : b.base_cli;
    struct ac_sweep sw;
    bool failed;
    uint64_t k;
    uint64_t total = op_at(&ops[i], base, 0, &failed);

    ac_sweep_init(&sw, ops[i].name, total, RECORD_POINTS, seed);
    for (k = 1; k <= total; k++) {
      if (!ac_sweep_pick(&sw, k))
        continue;
      op_at(&ops[i], base, k, &failed);
      covered++;
      fails += failed;
    }
  }
  printf("# recording: fault points covered %" PRIu64
         ", FIELDSYNC_ENOMEM %" PRIu64 ", benign %" PRIu64 "\n",
         covered, fails, covered - fails);
  ASSERT_GT(fails, 0);
}

/* ---- a batch ------------------------------------------------------------- */

/* Records created in the batch (then one edit). */
#define BATCH_CREATES 4

/* True for the error of a call in a batch whose transaction an earlier
 * failure ended (SQLite may roll a transaction back on SQLITE_NOMEM, and
 * so does fsc_rollback when a savepoint's rollback fails). */
static bool batch_gone(fieldsync_db *db, int rc) {
  return rc == FIELDSYNC_EIO &&
         strstr(fieldsync_errmsg(db), "rolled back by an earlier error") !=
             NULL;
}

/* One batch on a fresh copy of base: BATCH_CREATES records created and one
 * edited between fieldsync_batch_begin and fieldsync_batch_commit, the
 * k-th allocation failing once or, sticky, from then on (k = 0: none). A
 * call that fails must leave nothing of itself in the batch: the commit
 * keeps exactly the calls that succeeded, or nothing when it fails.
 * Returns the allocation count; *failed tells whether any call failed. */
static uint64_t batch_at(uint64_t k, bool sticky, bool *failed) {
  struct fieldsync_counts before;
  fieldsync_db *db;
  size_t made = 0;
  uint64_t n;
  int rc;
  int i;

  ac_restore(b.base_cli, b.cli);
  db = ac_open(b.cli, 0);
  before = ac_counts(db);
  *failed = false;
  fsp_alloc_fail_at(k, sticky);
  rc = fieldsync_batch_begin(db);
  for (i = 0; rc == 0 && i <= BATCH_CREATES; i++) {
    char sc[16];
    char id[33];
    const struct ac_kv kv[] = {{"visit_id", b.visit},
                               {"standard_code", sc},
                               {"judgement", "2"},
                               {NULL, NULL}};
    int one;

    snprintf(sc, sizeof(sc), "OP%d", 30 + i);
    if (i < BATCH_CREATES)
      one = ac_create(db, "observation", kv, id);
    else
      one = ac_edit(db, b.obs_synced, "judgement", "1");
    if (one != 0) {
      /* SQLite may end the whole transaction on SQLITE_NOMEM: the calls
       * after it are refused as in a batch an I/O error ended. */
      if (!*failed || !batch_gone(db, one))
        expect_nomem(db, one, "a call in a batch", k);
      *failed = true;
    } else if (i < BATCH_CREATES) {
      made++;
    }
  }
  if (rc == 0)
    rc = fieldsync_batch_commit(db);
  n = fsp_alloc_count();
  if (k != 0)
    ASSERT_GT(fsp_alloc_failed(), 0);
  fsp_alloc_fail_at(0, false);
  if (rc != 0) {
    if (!batch_gone(db, rc))
      expect_nomem(db, rc, "a batch", k);
    *failed = true;
    made = 0;
  }
  if (ac_counts(db).records != before.records + made)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 "%s: %zu records, want %zu + %zu made", k,
              sticky ? " sticky" : "", ac_counts(db).records, before.records,
              made);
  ASSERT_OK(fieldsync_close(db));
  intact(b.cli, k);
  return n;
}

TEST(batch_fails_cleanly_at_every_k) {
  uint64_t seed = test_seed();
  uint64_t covered = 0;
  uint64_t fails = 0;
  int sticky;

  setup();
  for (sticky = 0; sticky < 2; sticky++) {
    struct ac_sweep sw;
    bool failed;
    uint64_t k;
    uint64_t total = batch_at(0, false, &failed);

    ASSERT(!failed);
    ac_sweep_init(&sw, sticky ? "batch, sticky" : "batch", total, RECORD_POINTS,
                  seed);
    for (k = 1; k <= total; k++) {
      if (!ac_sweep_pick(&sw, k))
        continue;
      batch_at(k, sticky, &failed);
      covered++;
      fails += failed;
    }
  }
  printf("# batch: fault points covered %" PRIu64 ", a call failed in %" PRIu64
         ", benign %" PRIu64 "\n",
         covered, fails, covered - fails);
  ASSERT_GT(fails, 0);
}

/* ---- a whole sync -------------------------------------------------------- */

/* The end state: office's export and the server's digest. */
struct outcome {
  char *exp;
  char digest[65536];
};

/* Restores both stores, starts the server, syncs office with the k-th
 * allocation failing (k = 0: none) and checks the failure; then syncs
 * again without faults on the same handle (twice: the second moves
 * nothing) and records the end state in out. Returns the allocation count
 * of the first sync; *failed tells whether it failed. */
static uint64_t sync_at(uint64_t k, bool sticky, struct outcome *out,
                        bool *failed) {
  struct fieldsync_sync_stats st;
  struct fieldsync_counts before;
  struct fieldsync_counts c;
  fieldsync_db *db;
  uint64_t n;
  int rc;
  int i;

  ac_restore(b.base_srv, b.srvdb);
  ac_restore(b.base_cli, b.cli);
  server_start(&srv, fieldsyncd, b.srvdb, NULL);
  db = ac_open(b.cli, 0);
  before = ac_counts(db);
  fsp_alloc_fail_at(k, sticky);
  rc = ac_sync(db, srv.addr, b.token, 20000, &st);
  n = fsp_alloc_count();
  if (k != 0)
    ASSERT_GT(fsp_alloc_failed(), 0);
  fsp_alloc_fail_at(0, false);
  *failed = rc != 0;
  if (rc != 0) {
    expect_nomem(db, rc, "sync", k);
    /* What the stats count was acknowledged or applied; nothing local was
     * lost meanwhile. */
    c = ac_counts(db);
    ASSERT_LE(st.acked, st.pushed);
    ASSERT_GE(c.records, before.records);
    ASSERT_EQ(c.pending + st.acked, before.pending);
    intact(b.cli, k);
  }
  for (i = 0; i < 2; i++) {
    rc = ac_sync(db, srv.addr, b.token, 20000, &st);
    if (rc != 0)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": sync %d after the fault: %s: %s", k, i + 1,
                fieldsync_errname(rc), fieldsync_errmsg(db));
  }
  ASSERT_EQ(st.pushed, 0);
  ASSERT_EQ(st.pulled, 0);
  c = ac_counts(db);
  ASSERT_EQ(c.pending, 0);
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(c.conflicts, 1);
  out->exp = test_export_normalised(db);
  ASSERT_OK(fieldsync_close(db));
  intact(b.cli, k);
  ASSERT_EQ(server_stop(&srv), 0);
  ac_integrity(b.srvdb, k);
  ac_server_digest(b.srvdb, out->digest, sizeof(out->digest));
  return n;
}

/* Sweeps k over a whole sync, the k-th allocation failing once, or every
 * one from the k-th on (sticky: then nothing the sync does after the
 * failure, error paths included, gets memory until it returns). */
static void sync_sweep(bool sticky, uint64_t points) {
  static struct outcome want;
  static struct outcome got;
  uint64_t seed = test_seed();
  struct ac_sweep sw;
  uint64_t total;
  uint64_t k;
  uint64_t covered = 0;
  uint64_t fails = 0;
  bool failed;
  long long t0;

  setup();
  t0 = proc_now_ms();
  total = sync_at(0, false, &want, &failed);
  ASSERT(!failed);
  printf("# a clean sync makes %" PRIu64 " allocations (%.2f s a run)\n", total,
         (double)(proc_now_ms() - t0) / 1e3);
  ac_sweep_init(&sw, sticky ? "sync, sticky" : "sync", total, points, seed);
  for (k = 1; k <= total; k++) {
    if (!ac_sweep_pick(&sw, k))
      continue;
    sync_at(k, sticky, &got, &failed);
    covered++;
    fails += failed;
    if (strcmp(got.exp, want.exp) != 0)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": office's data differs from a fault-free "
                "sync's",
                k);
    if (strcmp(got.digest, want.digest) != 0)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": the server's versions differ from a "
                "fault-free sync's:\n# want %.300s\n# got  %.300s",
                k, want.digest, got.digest);
    free(got.exp);
  }
  free(want.exp);
  printf("# sync%s: fault points covered %" PRIu64 " of %" PRIu64
         ", FIELDSYNC_ENOMEM %" PRIu64 ", benign %" PRIu64 "; %.1f s\n",
         sticky ? ", sticky" : "", covered, total, fails, covered - fails,
         (double)(proc_now_ms() - t0) / 1e3);
  ASSERT_GT(fails, 0);
}

TEST(sync_fails_cleanly_at_every_k) {
  sync_sweep(false, SYNC_POINTS);
}

TEST(sync_sticky_fails_cleanly_at_every_k) {
  sync_sweep(true, SYNC_STICKY_POINTS);
}

static const struct test_entry tests[] = {
    TEST_ENTRY(open_fails_cleanly_at_every_k)
        TEST_ENTRY(recording_fails_cleanly_at_every_k)
            TEST_ENTRY(batch_fails_cleanly_at_every_k)
                TEST_ENTRY(sync_fails_cleanly_at_every_k)
                    TEST_ENTRY(sync_sticky_fails_cleanly_at_every_k)};

/* TEST_LIST's main, after taking the two program paths from the front of
 * the arguments, so that a test name or --list may follow them. */
int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_alloc_client FIELDSYNCD FIELDSYNC-ADMIN "
                    "[TEST | --list]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
