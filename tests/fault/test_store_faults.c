/* SPDX-License-Identifier: MIT */
/* Storage faults under the server store (srv_store.h), in process, through
 * the fault VFS: a scripted workload drives the store exactly as
 * fieldsyncd's writer thread does (begin, one push per job in its own
 * savepoint, commit; an I/O-class failure closes the connection and the
 * next transaction opens a new one) while a reader pulls the feed after
 * each transaction. For k over the workload's counted I/O operations and
 * each fault (EIO on any operation, ENOSPC on writes, fsync failure, once
 * or from k on), and for power loss (drop or garble) at every sync point:
 * after reset and reopen the store passes its check, every acknowledged
 * job's versions are there with their exact bytes, every version a reader
 * was given survived, no job or transaction is half there, and a new push
 * commits. */
#define _POSIX_C_SOURCE 200809L
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "faultvfs.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"
#include "proc.h"
#include "srv_store.h"
#include "storage_common.h"

/* The workload: TXNS transactions of JOBS pushes of CHANGES changes over
 * RECORDS records, so later jobs update earlier jobs' records. */
#define TXNS 8
#define JOBS 2
#define CHANGES 3
#define RECORDS 10
#define NJOBS (TXNS * JOBS)
#define EVIDENCE 400
/* Fault points per kind in CI (every k at SF_FULL_SCALE). */
#define CI_POINTS 60

static char dir[256];
static char base_path[512];
static char run_path[512];
static struct srv_identity ids[2]; /* an inspector and head office */

struct job_state {
  bool pushed; /* srv_store_push returned 0 */
  bool acked;  /* pushed and its transaction's commit returned 0 */
};

struct run {
  struct job_state job[NJOBS];
  /* Versions a reader was given (job index * CHANGES + change). */
  bool seen[NJOBS * CHANGES];
  uint64_t ops;
  uint64_t ops_before[TXNS]; /* counted operations before transaction t */
  uint64_t injected;
  int fault_txn; /* first transaction during which a fault hit; -1 */
  int reopens;   /* connections replaced after an I/O-class error */
};

/* The change c of job j: record (j * CHANGES + c) % RECORDS, whose first
 * vector counter is j + 1, so each job's version dominates the earlier
 * ones, and whose evidence names the job. */
static void job_change(int j, int c, struct sample_change *s) {
  uint32_t rec = (uint32_t)((j * CHANGES + c) % RECORDS);
  int len;

  sample_change_init(s, rec, EVIDENCE);
  s->e[0].counter = (uint64_t)j + 1;
  s->e[1].counter = 1;
  len = snprintf(s->evidence, sizeof(s->evidence), "job %d change %d ", j, c);
  memset(s->evidence + len, 'a' + j % 26, EVIDENCE - (size_t)len);
  s->evidence[EVIDENCE] = '\0';
  sample_change_repack(s);
}

static bool io_class(int rc) {
  return rc == SRV_STORE_EIO || rc == SRV_STORE_ECORRUPT;
}

/* Replaces the run's database with a copy of the baseline. */
static void fresh_copy(void) {
  sf_remove_db(run_path);
  sf_copy_file(base_path, run_path);
}

/* The baseline: two users with devices bound to replicas, the inspector
 * assigned to the workload's visit, and no data; closed cleanly (so it is
 * one file). */
static void make_baseline(void) {
  struct srv_store *s = NULL;
  struct srv_store_conn *c = NULL;
  struct sample_change sc;
  char token[2][SRV_TOKEN_LEN + 1];
  uint8_t replica[16];
  char err[256];
  int i;

  ASSERT_OK(faultvfs_install());
  tmpdir_make(dir, sizeof(dir), "fieldsync-storefault");
  snprintf(base_path, sizeof(base_path), "%s/base.db", dir);
  snprintf(run_path, sizeof(run_path), "%s/run.db", dir);
  if (srv_store_open(base_path, &s, err, sizeof(err)) != 0 ||
      srv_store_conn_open(s, &c, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "baseline: %s", err);
  ASSERT_OK(srv_store_user_add(c, "ins", FIELDSYNC__ROLE__ROLE_INSPECTOR));
  ASSERT_OK(srv_store_user_add(c, "office", FIELDSYNC__ROLE__ROLE_HEAD_OFFICE));
  ASSERT_OK(srv_store_device_add(c, "ins", token[0], NULL));
  ASSERT_OK(srv_store_device_add(c, "office", token[1], NULL));
  sample_change_init(&sc, 0, 1);
  ASSERT_OK(srv_store_assign(c, sc.visit, "ins", 0));
  for (i = 0; i < 2; i++) {
    memset(replica, 0x40 + i, sizeof(replica));
    ASSERT_OK(srv_store_auth(c, token[i], replica, &ids[i]));
  }
  srv_store_conn_close(c);
  srv_store_close(s);
}

/* Pushes job j on c: its changes as one batch. */
static int push_job(struct srv_store_conn *c, int j) {
  struct sample_change s[CHANGES];
  Fieldsync__Change *ch[CHANGES];
  struct srv_outcome out[CHANGES];
  struct fsp_limits lim;
  int i;
  int rc;

  fsp_limits_default(&lim);
  for (i = 0; i < CHANGES; i++) {
    job_change(j, i, &s[i]);
    ch[i] = &s[i].c;
  }
  rc = srv_store_push(c, &ids[j % 2], ch, CHANGES, &lim, out);
  if (rc == 0)
    for (i = 0; i < CHANGES; i++)
      if (out[i].outcome != FIELDSYNC__OUTCOME__OUTCOME_APPLIED)
        test_fail(__FILE__, __LINE__, "job %d change %d: outcome %d (%s)", j, i,
                  out[i].outcome, out[i].reason);
  return rc;
}

/* Which workload version a pulled change is, or -1. */
static int version_of(const Fieldsync__Change *ch) {
  struct sample_change s;
  int j;
  int c;

  for (j = 0; j < NJOBS; j++) {
    for (c = 0; c < CHANGES; c++) {
      job_change(j, c, &s);
      if (ch->version != NULL && ch->version->hash.len == FSP_HASH_LEN &&
          memcmp(ch->version->hash.data, s.hash, FSP_HASH_LEN) == 0)
        return j * CHANGES + c;
    }
  }
  return -1;
}

/* The reader: pulls the whole feed from *cursor; on an I/O-class error the
 * connection is closed (the next pull opens another). */
static void reader_pull(struct srv_store *st, struct srv_store_conn **rd,
                        uint64_t *cursor, struct run *r) {
  char err[256];
  int rounds;

  if (*rd == NULL && srv_store_conn_open(st, rd, err, sizeof(err)) != 0)
    return;
  for (rounds = 0; rounds < 10; rounds++) {
    struct srv_pull_req req;
    struct srv_page page;
    size_t i;
    int rc;

    memset(&req, 0, sizeof(req));
    req.cursor = *cursor;
    req.max_records = 50;
    req.max_bytes = 1 << 20;
    req.now_ms = 1;
    memset(&page, 0, sizeof(page));
    rc = srv_store_pull(*rd, NULL, &req, &page);
    if (rc != 0) {
      ASSERT_EQ(page.n, 0);
      if (io_class(rc)) {
        srv_store_conn_close(*rd);
        *rd = NULL;
      }
      srv_page_free(&page);
      return;
    }
    for (i = 0; i < page.n; i++) {
      int v = version_of(page.changes[i]);
      ASSERT_GE(v, 0);
      r->seen[v] = true;
    }
    *cursor = page.next_cursor;
    srv_page_free(&page);
    if (!page.more)
      break;
  }
}

/* Runs the workload on a fresh copy of the baseline under plan; before
 * transaction clear_at (if < TXNS) the fault clears (faultvfs_disarm). */
static void run_workload(const struct faultvfs_plan *plan, int clear_at,
                         struct run *r) {
  struct srv_store *st = NULL;
  struct srv_store_conn *w = NULL;
  struct srv_store_conn *rd = NULL;
  uint64_t cursor = 0;
  char err[256];
  int t;

  memset(r, 0, sizeof(*r));
  r->fault_txn = -1;
  faultvfs_reset();
  fresh_copy();
  if (srv_store_open(run_path, &st, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "open: %s", err);
  faultvfs_arm(plan);
  for (t = 0; t < TXNS; t++) {
    bool io_failed = false;
    int j;
    int rc;

    r->ops_before[t] = faultvfs_count();
    if (t == clear_at)
      faultvfs_disarm();
    if (w == NULL) {
      rc = srv_store_conn_open(st, &w, err, sizeof(err));
      if (rc != 0)
        ASSERT(io_class(rc) || rc == SRV_STORE_EBUSY);
    }
    rc = w != NULL ? srv_store_begin(w) : SRV_STORE_EIO;
    for (j = t * JOBS; j < (t + 1) * JOBS; j++) {
      int prc;
      if (rc != 0)
        break;
      prc = push_job(w, j);
      r->job[j].pushed = prc == 0;
      io_failed |= io_class(prc);
    }
    if (rc == 0) {
      rc = srv_store_commit(w);
      if (rc != 0)
        srv_store_rollback(w);
      for (j = t * JOBS; j < (t + 1) * JOBS; j++)
        r->job[j].acked = rc == 0 && r->job[j].pushed;
    }
    io_failed |= io_class(rc);
    if (r->fault_txn < 0 && faultvfs_injected() > 0)
      r->fault_txn = t;
    /* The writer's rule: never commit again on a connection that had an
     * I/O error (its fsync may have failed); open a new one. */
    if (io_failed && w != NULL) {
      srv_store_conn_close(w);
      w = NULL;
      r->reopens++;
    }
    reader_pull(st, &rd, &cursor, r);
  }
  srv_store_conn_close(rd);
  srv_store_conn_close(w);
  srv_store_close(st);
  r->ops = faultvfs_count();
  r->injected = faultvfs_injected();
  faultvfs_reset();
}

/* Whether version (j, c) is in the history with its exact bytes. */
static bool has_version(sqlite3 *db, int j, int c) {
  struct sample_change s;
  sqlite3_stmt *st = NULL;
  bool found = false;

  job_change(j, c, &s);
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "SELECT payload, deleted FROM versions WHERE "
                               "record = ?1 AND hash = ?2",
                               -1, &st, NULL),
            SQLITE_OK);
  sqlite3_bind_blob(st, 1, s.id, 16, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, s.hash, FSP_HASH_LEN, SQLITE_STATIC);
  if (sqlite3_step(st) == SQLITE_ROW) {
    found = true;
    ASSERT_EQ(sqlite3_column_int(st, 1), 0);
    ASSERT_EQ(sqlite3_column_bytes(st, 0), s.v.payload.len);
    ASSERT_MEM_EQ(sqlite3_column_blob(st, 0), s.payload, s.v.payload.len);
  }
  ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
  return found;
}

/* After a run: the store opens and passes its check, acknowledged and
 * pulled versions are there, nothing is half there, and a new push
 * commits. what names the run in failure messages. */
static void verify(const struct run *r, const char *what) {
  struct srv_store *st = NULL;
  struct srv_store_conn *c = NULL;
  sqlite3 *db = NULL;
  char err[256];
  int t;

  if (srv_store_open(run_path, &st, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "%s: reopen: %s", what, err);
  if (srv_store_conn_open(st, &c, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "%s: conn: %s", what, err);
  if (srv_store_check(c) != 0)
    test_fail(__FILE__, __LINE__, "%s: check: %s", what, srv_store_errmsg(c));
  ASSERT_EQ(sqlite3_open_v2(run_path, &db, SQLITE_OPEN_READONLY, NULL),
            SQLITE_OK);
  for (t = 0; t < TXNS; t++) {
    int present_jobs = 0;
    int pushed_jobs = 0;
    int j;
    for (j = t * JOBS; j < (t + 1) * JOBS; j++) {
      int n = 0;
      int ch;
      for (ch = 0; ch < CHANGES; ch++) {
        bool has = has_version(db, j, ch);
        n += has;
        if (r->seen[j * CHANGES + ch] && !has)
          test_fail(__FILE__, __LINE__,
                    "%s: job %d change %d was pulled, then lost", what, j, ch);
      }
      if (n != 0 && n != CHANGES)
        test_fail(__FILE__, __LINE__, "%s: job %d half there (%d of %d)", what,
                  j, n, CHANGES);
      if (r->job[j].acked && n == 0)
        test_fail(__FILE__, __LINE__, "%s: acknowledged job %d lost", what, j);
      if (!r->job[j].pushed && n != 0)
        test_fail(__FILE__, __LINE__,
                  "%s: job %d failed its push but is stored", what, j);
      present_jobs += n != 0;
      pushed_jobs += r->job[j].pushed;
    }
    /* A transaction is all there or not at all. */
    if (present_jobs != 0 && present_jobs != pushed_jobs)
      test_fail(__FILE__, __LINE__, "%s: transaction %d half there (%d of %d)",
                what, t, present_jobs, pushed_jobs);
  }
  sqlite3_close(db);
  /* Service resumes: the next job commits. */
  ASSERT_OK(srv_store_begin(c));
  ASSERT_OK(push_job(c, NJOBS));
  ASSERT_OK(srv_store_commit(c));
  srv_store_conn_close(c);
  srv_store_close(st);
}

static const char *fault_name(enum faultvfs_fault f) {
  switch (f) {
  case FAULTVFS_EIO:
    return "EIO";
  case FAULTVFS_ENOSPC:
    return "ENOSPC";
  case FAULTVFS_FSYNC:
    return "FSYNC";
  case FAULTVFS_POWER_DROP:
    return "power-drop";
  case FAULTVFS_POWER_GARBLE:
    return "power-garble";
  default:
    return "none";
  }
}

static const char *op_name(enum faultvfs_op op) {
  return op == FAULTVFS_ANY     ? "any op"
         : op == FAULTVFS_WRITE ? "writes"
                                : "syncs";
}

/* Counts the workload's operations of class op in a clean run (which must
 * acknowledge everything): all of them, or with before those before
 * transaction before. */
static uint64_t clean_count(enum faultvfs_op op, int before) {
  struct faultvfs_plan plan;
  struct run clean;
  int j;

  memset(&plan, 0, sizeof(plan));
  plan.op = op;
  run_workload(&plan, TXNS, &clean);
  for (j = 0; j < NJOBS; j++)
    ASSERT(clean.job[j].acked);
  verify(&clean, "clean run");
  ASSERT_GT(clean.ops, 0);
  return before < TXNS ? clean.ops_before[before] : clean.ops;
}

/* Sweeps k over the workload's counted operations of class op (a stride
 * in CI, every k at full scale) with the fault once, or sticky until it
 * clears before the last two transactions. Returns the points covered. */
static uint64_t sweep(enum faultvfs_fault fault, enum faultvfs_op op,
                      bool sticky, uint64_t seed) {
  struct faultvfs_plan plan;
  struct run r;
  int clear_at = sticky ? TXNS - 2 : TXNS;
  /* A sticky fault is swept over the operations before it clears. */
  uint64_t n = clean_count(op, clear_at);
  uint64_t stride = sf_stride(n, sticky ? CI_POINTS / 3 : CI_POINTS);
  uint64_t k;
  uint64_t covered = 0;
  uint64_t failed_jobs = 0;
  char what[96];
  long long t0 = proc_now_ms();

  memset(&plan, 0, sizeof(plan));
  plan.fault = fault;
  plan.op = op;
  plan.sticky = sticky;
  plan.seed = seed;
  for (k = 1 + seed % stride; k <= n; k += stride) {
    int j;
    int from;
    plan.k = k;
    run_workload(&plan, clear_at, &r);
    snprintf(what, sizeof(what), "%s%s k=%" PRIu64, fault_name(fault),
             sticky ? " sticky" : "", k);
    ASSERT_GE(r.injected, 1);
    if (!sticky)
      ASSERT_EQ(r.injected, 1);
    if (fault == FAULTVFS_POWER_DROP || fault == FAULTVFS_POWER_GARBLE)
      ASSERT(faultvfs_powered_off() == false);
    verify(&r, what);
    for (j = 0; j < NJOBS; j++)
      failed_jobs += !r.job[j].acked;
    /* Service resumes: every transaction that began after a single fault,
     * or after a sticky one cleared, commits. */
    from = sticky ? clear_at : r.fault_txn + 1;
    if (fault != FAULTVFS_POWER_DROP && fault != FAULTVFS_POWER_GARBLE &&
        r.fault_txn >= 0)
      for (j = from * JOBS; j < NJOBS; j++)
        if (!r.job[j].acked)
          test_fail(__FILE__, __LINE__,
                    "%s: job %d after the fault was not acknowledged", what, j);
    covered++;
  }
  printf("# %s%s on %s: %" PRIu64 " of %" PRIu64
         " fault points (stride %" PRIu64 "), %" PRIu64
         " jobs unacknowledged, %lld ms\n",
         fault_name(fault), sticky ? " sticky" : "", op_name(op), covered, n,
         stride, failed_jobs, proc_now_ms() - t0);
  fflush(stdout);
  return covered;
}

TEST(store_eio_any) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline();
  n = sweep(FAULTVFS_EIO, FAULTVFS_ANY, false, seed);
  n += sweep(FAULTVFS_EIO, FAULTVFS_ANY, true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST(store_enospc_write) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline();
  n = sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, false, seed);
  n += sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST(store_fsync_fail) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline();
  n = sweep(FAULTVFS_FSYNC, FAULTVFS_SYNC, false, seed);
  n += sweep(FAULTVFS_FSYNC, FAULTVFS_SYNC, true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

/* Power loss at every sync point of the workload (each is one). */
TEST(store_power_loss) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline();
  n = sweep(FAULTVFS_POWER_DROP, FAULTVFS_SYNC, false, seed);
  n += sweep(FAULTVFS_POWER_GARBLE, FAULTVFS_SYNC, false, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST_LIST(TEST_ENTRY(store_eio_any) TEST_ENTRY(store_enospc_write)
              TEST_ENTRY(store_fsync_fail) TEST_ENTRY(store_power_loss))
