/* SPDX-License-Identifier: MIT */
/* Storage faults under the client database: libfieldsync runs in this
 * process over the fault VFS (its database opens with the default VFS),
 * against a real fieldsyncd. A scripted session (local creates, edits,
 * deletes and a batch, then a sync that pushes them, pulls a peer's
 * records and records the acks) runs with the k-th counted I/O operation
 * of one phase failing (EIO on any, ENOSPC on writes, fsync failure; once
 * or sticky), and with power loss (drop or garble) at every sync point.
 * Each run proves: every call returns success or a clean storage error
 * with a message; after reopening, the database passes integrity_check,
 * every edit whose call succeeded is there (sent or still queued) and no
 * operation is half there; a single fault leaves the handle usable (the
 * next sync succeeds); and a clean sync then leaves client and server with
 * the same content (a fresh replica's export equals the client's) and an
 * empty upload queue. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "faultvfs.h"
#include "fieldsync.h"
#include "harness.h"
#include "proc.h"
#include "replica_export.h"
#include "sqlcheck.h"
#include "storage_common.h"

#define VISIT "0123456789abcdef0123456789abcdef"
#define CREATES 6
#define BATCH 3
#define BASE_RECORDS 4
/* Fault points per kind in CI (every k at SF_FULL_SCALE); power loss
 * covers up to POWER_POINTS sync points in CI. */
#define CI_POINTS 14
#define POWER_POINTS 32
#define SYNC_TIMEOUT_MS 20000

static const char *daemon_path;
static const char *admin;
static char dir[256];
static char srv_base[320];
static char srv_run[320];
static char cli_base[320];
static char cli_run[320];
static char obs_run[320];
static char tok_alpha[128];
static char tok_beta[128];
static char tok_obs[128];
static struct test_server srv;
/* The client's baseline records (synced) and its pending local ones. */
static char base_id[BASE_RECORDS][33];

enum phase { PHASE_EDITS, PHASE_SYNC, PHASE_ALL };

/* What the scripted session did. */
struct run {
  int create_rc[CREATES];
  char create_id[CREATES][33];
  int edit_rc[2]; /* edits of creates 0 and 1; 1 = not attempted */
  int delete_rc;  /* delete of create 2; 1 = not attempted */
  int batch_begin_rc;
  int batch_rc[BATCH]; /* 1 = not attempted */
  int batch_commit_rc; /* 1 = not attempted */
  int base_edit_rc;
  int base_delete_rc;
  int sync_rc;
  uint64_t ops; /* counted in the faulted phase */
  uint64_t injected;
  uint64_t resynced;
  bool powered_off;
};

/* ---- setup ------------------------------------------------------------- */

static fieldsync_db *db_open(const char *path, bool create) {
  fieldsync_db *db = NULL;
  int rc =
      fieldsync_open(path, create ? FIELDSYNC_OPEN_CREATE : 0, "tablet", &db);

  if (rc != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s (%s)", path,
              fieldsync_errmsg(db), fieldsync_errname(rc));
  return db;
}

static int sync_db(fieldsync_db *db, const char *token) {
  struct fieldsync_sync_opts o;

  memset(&o, 0, sizeof(o));
  o.server = srv.addr;
  o.token = token;
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.batch = 2; /* several Push and Pull rounds, each its own transaction */
  return fieldsync_sync(db, &o, NULL);
}

static void sync_ok(fieldsync_db *db, const char *token) {
  int rc = sync_db(db, token);

  if (rc != 0)
    test_fail(__FILE__, __LINE__, "sync: %s: %s", fieldsync_errname(rc),
              fieldsync_errmsg(db));
}

/* Creates an observation with evidence text; returns the call's code. */
static int create(fieldsync_db *db, const char *evidence, char id[33]) {
  fieldsync_draft *d = NULL;
  int rc = fieldsync_draft_new(db, "observation", &d);

  if (rc == 0)
    rc = fieldsync_draft_set(d, "visit_id", VISIT);
  if (rc == 0)
    rc = fieldsync_draft_set(d, "standard_code", "OP1");
  if (rc == 0)
    rc = fieldsync_draft_set(d, "judgement", "2");
  if (rc == 0)
    rc = fieldsync_draft_set(d, "evidence_text", evidence);
  if (rc == 0)
    rc = fieldsync_create(db, d, id);
  fieldsync_draft_free(d);
  return rc;
}

static int edit(fieldsync_db *db, const char *id, const char *evidence) {
  fieldsync_draft *d = NULL;
  int rc = fieldsync_draft_for_edit(db, id, &d);

  if (rc == 0)
    rc = fieldsync_draft_set(d, "evidence_text", evidence);
  if (rc == 0)
    rc = fieldsync_edit(db, d);
  fieldsync_draft_free(d);
  return rc;
}

static void must(int rc, fieldsync_db *db, const char *what) {
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "%s: %s (%s)", what, fieldsync_errmsg(db),
              fieldsync_errname(rc));
}

/* The baselines: a server store with three head-office devices, where a
 * peer (beta) has synced records before and after the client (alpha),
 * and alpha's database holding BASE_RECORDS synced records and none
 * pending. Each run starts from copies of both. */
static void make_baselines(const char *prefix) {
  fieldsync_db *alpha;
  fieldsync_db *beta;
  char id[33];
  char text[64];
  char beta_db[320];
  int i;

  ASSERT_OK(faultvfs_install());
  tmpdir_make(dir, sizeof(dir), prefix);
  tmpdir_kill_at_exit(&srv);
  snprintf(srv_base, sizeof(srv_base), "%s/server-base.db", dir);
  snprintf(srv_run, sizeof(srv_run), "%s/server.db", dir);
  snprintf(cli_base, sizeof(cli_base), "%s/alpha-base.db", dir);
  snprintf(cli_run, sizeof(cli_run), "%s/alpha.db", dir);
  snprintf(obs_run, sizeof(obs_run), "%s/observer.db", dir);
  snprintf(beta_db, sizeof(beta_db), "%s/beta.db", dir);
  admin_user_device(admin, srv_base, "alpha", "head_office", tok_alpha,
                    sizeof(tok_alpha));
  admin_user_device(admin, srv_base, "beta", "head_office", tok_beta,
                    sizeof(tok_beta));
  admin_user_device(admin, srv_base, "obs", "head_office", tok_obs,
                    sizeof(tok_obs));
  server_start(&srv, daemon_path, srv_base, NULL);
  beta = db_open(beta_db, true);
  alpha = db_open(cli_base, true);
  for (i = 0; i < 3; i++) {
    snprintf(text, sizeof(text), "peer early %d", i);
    must(create(beta, text, id), beta, "peer create");
  }
  sync_ok(beta, tok_beta);
  for (i = 0; i < BASE_RECORDS; i++) {
    snprintf(text, sizeof(text), "base %d", i);
    must(create(alpha, text, base_id[i]), alpha, "base create");
  }
  sync_ok(alpha, tok_alpha);
  /* New on the server since alpha's last pull: the faulted sync pulls
   * them. */
  for (i = 0; i < 3; i++) {
    snprintf(text, sizeof(text), "peer late %d", i);
    must(create(beta, text, id), beta, "peer create");
  }
  sync_ok(beta, tok_beta);
  ASSERT_OK(fieldsync_close(beta));
  ASSERT_OK(fieldsync_close(alpha));
  ASSERT_EQ(server_stop(&srv), 0);
}

/* ---- the scripted session ---------------------------------------------- */

static void check_rc(int rc, fieldsync_db *db, const char *what) {
  if (rc == 0)
    return;
  /* A storage fault is a clean error: I/O, or a file SQLite could not
   * open (the WAL, lazily), with a message. */
  if (rc != FIELDSYNC_EIO && rc != FIELDSYNC_ECANTOPEN)
    test_fail(__FILE__, __LINE__, "%s: %s: %s", what, fieldsync_errname(rc),
              fieldsync_errmsg(db));
  ASSERT(strlen(fieldsync_errmsg(db)) > 0);
  ASSERT(strcmp(fieldsync_errmsg(db), "ok") != 0);
}

static void edits(fieldsync_db *db, struct run *r) {
  char text[64];
  int i;

  for (i = 0; i < CREATES; i++) {
    snprintf(text, sizeof(text), "create %d", i);
    r->create_rc[i] = create(db, text, r->create_id[i]);
    check_rc(r->create_rc[i], db, "create");
  }
  for (i = 0; i < 2; i++) {
    r->edit_rc[i] = 1;
    if (r->create_rc[i] == 0) {
      snprintf(text, sizeof(text), "edit %d", i);
      r->edit_rc[i] = edit(db, r->create_id[i], text);
      check_rc(r->edit_rc[i], db, "edit");
    }
  }
  r->delete_rc = 1;
  if (r->create_rc[2] == 0) {
    r->delete_rc = fieldsync_delete(db, r->create_id[2]);
    check_rc(r->delete_rc, db, "delete");
  }
  r->batch_commit_rc = 1;
  for (i = 0; i < BATCH; i++)
    r->batch_rc[i] = 1;
  r->batch_begin_rc = fieldsync_batch_begin(db);
  check_rc(r->batch_begin_rc, db, "batch begin");
  if (r->batch_begin_rc == 0) {
    for (i = 0; i < BATCH; i++) {
      char id[33];
      snprintf(text, sizeof(text), "batch %d", i);
      r->batch_rc[i] = create(db, text, id);
      check_rc(r->batch_rc[i], db, "create in batch");
    }
    r->batch_commit_rc = fieldsync_batch_commit(db);
    check_rc(r->batch_commit_rc, db, "batch commit");
  }
  r->base_edit_rc = edit(db, base_id[0], "edit base");
  check_rc(r->base_edit_rc, db, "edit base");
  r->base_delete_rc = fieldsync_delete(db, base_id[1]);
  check_rc(r->base_delete_rc, db, "delete base");
}

/* Runs the session with plan armed over phase; with clear, the fault
 * clears at the end of the phase (a sticky one too). */
static void run_session(const struct faultvfs_plan *plan, enum phase phase,
                        struct run *r) {
  fieldsync_db *db;

  memset(r, 0, sizeof(*r));
  faultvfs_reset();
  sf_remove_db(srv_run);
  sf_remove_db(cli_run);
  sf_remove_db(obs_run);
  sf_copy_file(srv_base, srv_run);
  sf_copy_file(cli_base, cli_run);
  server_start(&srv, daemon_path, srv_run, NULL);
  db = db_open(cli_run, false);
  if (phase == PHASE_EDITS || phase == PHASE_ALL)
    faultvfs_arm(plan);
  edits(db, r);
  if (phase == PHASE_EDITS) {
    r->ops = faultvfs_count();
    faultvfs_disarm();
  }
  if (phase == PHASE_SYNC)
    faultvfs_arm(plan);
  r->sync_rc = sync_db(db, tok_alpha);
  check_rc(r->sync_rc, db, "sync");
  if (phase == PHASE_SYNC) {
    r->ops = faultvfs_count();
    faultvfs_disarm();
  }
  fieldsync_close(db);
  if (phase == PHASE_ALL)
    r->ops = faultvfs_count();
  r->injected = faultvfs_injected();
  r->resynced = faultvfs_resynced();
  r->powered_off = faultvfs_powered_off();
  faultvfs_reset();
}

/* ---- checks ------------------------------------------------------------ */

/* A record as the checks see it. */
struct rec {
  char id[33];
  char evidence[64];
  bool deleted;
};

struct recs {
  struct rec r[64];
  size_t n;
};

static int collect(const char *json, void *data) {
  struct recs *rs = data;
  json_error_t err;
  json_t *o = json_loads(json, 0, &err);
  json_t *v;
  json_t *ev;
  struct rec *r;

  ASSERT(o != NULL);
  ASSERT(rs->n < sizeof(rs->r) / sizeof(rs->r[0]));
  r = &rs->r[rs->n++];
  memset(r, 0, sizeof(*r));
  snprintf(r->id, sizeof(r->id), "%s",
           json_string_value(json_object_get(o, "id")));
  r->deleted = json_is_true(json_object_get(o, "deleted"));
  v = json_array_get(json_object_get(o, "versions"), 0);
  ASSERT(v != NULL);
  ev = json_object_get(json_object_get(v, "fields"), "evidence_text");
  if (ev != NULL)
    snprintf(r->evidence, sizeof(r->evidence), "%s", json_string_value(ev));
  json_decref(o);
  return 0;
}

static const struct rec *by_id(const struct recs *rs, const char *id) {
  size_t i;

  for (i = 0; i < rs->n; i++)
    if (strcmp(rs->r[i].id, id) == 0)
      return &rs->r[i];
  return NULL;
}

static int count_evidence(const struct recs *rs, const char *a, const char *b) {
  size_t i;
  int n = 0;

  for (i = 0; i < rs->n; i++)
    n += strcmp(rs->r[i].evidence, a) == 0 ||
         (b != NULL && strcmp(rs->r[i].evidence, b) == 0);
  return n;
}

/* A record an operation with result rc changed from before to after: a
 * success must show after; a failure either (never anything else). */
static void expect_field(int rc, const char *got, const char *before,
                         const char *after, const char *what) {
  if (rc == 1)
    after = before; /* not attempted */
  if (strcmp(got, after) == 0)
    return;
  if (rc != 0 && strcmp(got, before) == 0)
    return;
  test_fail(__FILE__, __LINE__, "%s: \"%s\", want \"%s\"%s%s%s", what, got,
            after, rc != 0 ? " or \"" : "", rc != 0 ? before : "",
            rc != 0 ? "\"" : "");
}

static void expect_deleted(int rc, bool got, const char *what) {
  if (rc == 0 && !got)
    test_fail(__FILE__, __LINE__, "%s: a successful delete was lost", what);
  if (rc == 1 && got)
    test_fail(__FILE__, __LINE__, "%s: deleted without a delete", what);
}

/* After reopening: every successful operation is there, no operation is
 * half there. once: the fault was a single one (not sticky, no power
 * loss). */
static void check_edits(fieldsync_db *db, const struct run *r, bool once,
                        const char *what) {
  struct fieldsync_query q;
  struct recs rs;
  char text[64];
  char text2[64];
  int i;
  int n;
  int ok;
  const struct rec *x;

  memset(&q, 0, sizeof(q));
  q.include_deleted = 1;
  rs.n = 0;
  must(fieldsync_query(db, &q, collect, &rs), db, "query");
  for (i = 0; i < CREATES; i++) {
    snprintf(text, sizeof(text), "create %d", i);
    snprintf(text2, sizeof(text2), "edit %d", i);
    n = count_evidence(&rs, text, i < 2 ? text2 : NULL);
    if (n > 1)
      test_fail(__FILE__, __LINE__, "%s: create %d there %d times", what, i, n);
    if (r->create_rc[i] != 0)
      continue; /* failed: there (whole) or not */
    x = by_id(&rs, r->create_id[i]);
    if (x == NULL)
      test_fail(__FILE__, __LINE__, "%s: successful create %d lost", what, i);
    if (i < 2) {
      expect_field(r->edit_rc[i], x->evidence, text, text2, what);
    } else if (!x->deleted) {
      ASSERT_STR_EQ(x->evidence, text);
    }
    if (i == 2)
      expect_deleted(r->delete_rc, x->deleted, what);
    else
      ASSERT(!x->deleted);
  }
  /* The batch: with its commit, every create that succeeded in it; without,
   * those or none. */
  n = 0;
  ok = 0;
  for (i = 0; i < BATCH; i++) {
    snprintf(text, sizeof(text), "batch %d", i);
    n += count_evidence(&rs, text, NULL);
    ok += r->batch_rc[i] == 0;
  }
  if (r->batch_commit_rc == 0 ? n != ok : n != 0 && n != ok)
    test_fail(__FILE__, __LINE__,
              "%s: batch half there: %d records, %d creates succeeded, "
              "commit %d",
              what, n, ok, r->batch_commit_rc);
  /* A single fault that failed a write in the batch cannot also fail its
   * commit: a commit failing after it means the batch's transaction had
   * ended, and then nothing of the batch may be kept (no write after the
   * failure may have committed on its own). */
  if (once && r->batch_commit_rc != 0 && r->batch_commit_rc != 1 &&
      ok < BATCH && n != 0)
    test_fail(__FILE__, __LINE__,
              "%s: the batch failed (commit %d) but %d of its records were "
              "kept",
              what, r->batch_commit_rc, n);
  x = by_id(&rs, base_id[0]);
  ASSERT(x != NULL);
  expect_field(r->base_edit_rc, x->evidence, "base 0", "edit base", what);
  x = by_id(&rs, base_id[1]);
  ASSERT(x != NULL);
  expect_deleted(r->base_delete_rc == 0 ? 0 : 2, x->deleted, what);
  for (i = 2; i < BASE_RECORDS; i++) {
    x = by_id(&rs, base_id[i]);
    ASSERT(x != NULL);
    snprintf(text, sizeof(text), "base %d", i);
    ASSERT_STR_EQ(x->evidence, text);
  }
}

/* After the fault: reopen, integrity, the edits, then a clean sync leaves
 * nothing queued and the client equal to a fresh replica of the server. */
static void verify(const struct run *r, bool once, const char *what) {
  struct fieldsync_counts c;
  fieldsync_db *db;
  fieldsync_db *obs;
  char *a;
  char *b;

  sqlcheck_integrity_file(cli_run, cli_run);
  db = db_open(cli_run, false);
  check_edits(db, r, once, what);
  sync_ok(db, tok_alpha);
  must(fieldsync_counts(db, &c), db, "counts");
  if (c.pending != 0)
    test_fail(__FILE__, __LINE__, "%s: %zu versions still queued", what,
              c.pending);
  obs = db_open(obs_run, true);
  sync_ok(obs, tok_obs);
  a = test_export_normalised(db);
  b = test_export_normalised(obs);
  if (strcmp(a, b) != 0)
    test_fail(__FILE__, __LINE__, "%s: client and server differ:\n%s\n%s", what,
              a, b);
  free(a);
  free(b);
  ASSERT_OK(fieldsync_close(obs));
  ASSERT_OK(fieldsync_close(db));
  sqlcheck_integrity_file(cli_run, cli_run);
  ASSERT_EQ(server_stop(&srv), 0);
}

/* ---- sweeps ------------------------------------------------------------ */

static const char *const fault_names[] = {
    "none", "EIO", "ENOSPC", "FSYNC", "power-drop", "power-garble"};
static const char *const phase_names[] = {"edits", "sync", "session"};

static uint64_t sweep(enum faultvfs_fault fault, enum faultvfs_op op,
                      enum phase phase, bool sticky, uint64_t seed) {
  struct faultvfs_plan plan;
  struct run r;
  uint64_t n;
  uint64_t stride;
  uint64_t k;
  uint64_t covered = 0;
  uint64_t failed_calls = 0;
  char what[96];
  long long t0 = proc_now_ms();
  bool power = fault == FAULTVFS_POWER_DROP || fault == FAULTVFS_POWER_GARBLE;

  memset(&plan, 0, sizeof(plan));
  plan.op = op;
  run_session(&plan, phase, &r);
  ASSERT_OK(r.sync_rc);
  verify(&r, true, "clean run");
  n = r.ops;
  ASSERT_GT(n, 0);
  stride = sf_stride(n, power    ? POWER_POINTS
                        : sticky ? CI_POINTS / 2
                                 : CI_POINTS);
  plan.fault = fault;
  plan.sticky = sticky;
  plan.seed = seed;
  for (k = 1 + seed % stride; k <= n; k += stride) {
    int i;
    plan.k = k;
    snprintf(what, sizeof(what), "%s%s in %s, k=%" PRIu64, fault_names[fault],
             sticky ? " sticky" : "", phase_names[phase], k);
    run_session(&plan, phase, &r);
    ASSERT_GE(r.injected, 1);
    ASSERT_EQ(r.powered_off, power);
    /* A single fault in the edits leaves the handle working: the sync
     * after them succeeds. */
    if (phase == PHASE_EDITS && !sticky && r.sync_rc != 0)
      test_fail(__FILE__, __LINE__, "%s: the sync after the fault: %s", what,
                fieldsync_errname(r.sync_rc));
    for (i = 0; i < CREATES; i++)
      failed_calls += r.create_rc[i] != 0;
    failed_calls += r.sync_rc != 0;
    if (r.resynced != 0)
      test_fail(__FILE__, __LINE__,
                "%s: %" PRIu64 " syncs retried on a handle whose fsync had "
                "failed",
                what, r.resynced);
    verify(&r, !sticky && !power, what);
    covered++;
  }
  printf("# %s%s in %s (%s): %" PRIu64 " of %" PRIu64
         " fault points (stride %" PRIu64 "), %" PRIu64
         " failed creates and syncs, %lld ms\n",
         fault_names[fault], sticky ? " sticky" : "", phase_names[phase],
         op == FAULTVFS_ANY     ? "any op"
         : op == FAULTVFS_WRITE ? "writes"
                                : "syncs",
         covered, n, stride, failed_calls, proc_now_ms() - t0);
  fflush(stdout);
  return covered;
}

TEST(client_eio) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baselines("fs-cfault-eio");
  n = sweep(FAULTVFS_EIO, FAULTVFS_ANY, PHASE_EDITS, false, seed);
  n += sweep(FAULTVFS_EIO, FAULTVFS_ANY, PHASE_SYNC, false, seed);
  n += sweep(FAULTVFS_EIO, FAULTVFS_ANY, PHASE_EDITS, true, seed);
  n += sweep(FAULTVFS_EIO, FAULTVFS_ANY, PHASE_SYNC, true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST(client_enospc) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baselines("fs-cfault-enospc");
  n = sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, PHASE_EDITS, false, seed);
  n += sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, PHASE_SYNC, false, seed);
  n += sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, PHASE_EDITS, true, seed);
  n += sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, PHASE_SYNC, true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST(client_fsync) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baselines("fs-cfault-fsync");
  n = sweep(FAULTVFS_FSYNC, FAULTVFS_SYNC, PHASE_EDITS, false, seed);
  n += sweep(FAULTVFS_FSYNC, FAULTVFS_SYNC, PHASE_SYNC, false, seed);
  n += sweep(FAULTVFS_FSYNC, FAULTVFS_SYNC, PHASE_EDITS, true, seed);
  n += sweep(FAULTVFS_FSYNC, FAULTVFS_SYNC, PHASE_SYNC, true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

/* A batch alone (no server), for every k over it: begin, BATCH creates,
 * commit. A write that fails inside the batch may end its transaction (an
 * I/O error makes SQLite roll it all back); then every later write of the
 * batch must fail too and nothing of it be kept, rather than commit on
 * its own outside the batch. */
static int count_batch(fieldsync_db *db) {
  struct fieldsync_query q;
  struct recs rs;
  char text[64];
  int n = 0;
  int i;

  memset(&q, 0, sizeof(q));
  rs.n = 0;
  must(fieldsync_query(db, &q, collect, &rs), db, "query");
  for (i = 0; i < BATCH; i++) {
    snprintf(text, sizeof(text), "batch %d", i);
    n += count_evidence(&rs, text, NULL);
  }
  return n;
}

static uint64_t batch_sweep(enum faultvfs_fault fault, enum faultvfs_op op,
                            uint64_t *killed) {
  struct faultvfs_plan plan;
  uint64_t n = 0;
  uint64_t k;
  fieldsync_db *db;

  memset(&plan, 0, sizeof(plan));
  plan.fault = fault;
  plan.op = op;
  for (k = 0; k == 0 || k <= n; k++) {
    struct run r;
    char text[64];
    int ok = 0;
    int kept;
    int i;

    memset(&r, 0, sizeof(r));
    faultvfs_reset();
    sf_remove_db(cli_run);
    sf_copy_file(cli_base, cli_run);
    db = db_open(cli_run, false);
    plan.k = k == 0 ? 1 : k;
    plan.fault = k == 0 ? FAULTVFS_NONE : fault;
    faultvfs_arm(&plan);
    r.batch_begin_rc = fieldsync_batch_begin(db);
    check_rc(r.batch_begin_rc, db, "batch begin");
    r.batch_commit_rc = 1;
    if (r.batch_begin_rc == 0) {
      for (i = 0; i < BATCH; i++) {
        char id[33];
        snprintf(text, sizeof(text), "batch %d", i);
        r.batch_rc[i] = create(db, text, id);
        check_rc(r.batch_rc[i], db, "create in batch");
        ok += r.batch_rc[i] == 0;
      }
      r.batch_commit_rc = fieldsync_batch_commit(db);
      check_rc(r.batch_commit_rc, db, "batch commit");
    }
    if (k == 0)
      n = faultvfs_count();
    fieldsync_close(db);
    faultvfs_reset();
    sqlcheck_integrity_file(cli_run, cli_run);
    db = db_open(cli_run, false);
    kept = count_batch(db);
    ASSERT_OK(fieldsync_close(db));
    if (r.batch_commit_rc == 0 && kept != ok)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": committed batch: %d of "
                "%d records kept",
                k, kept, ok);
    /* One fault: if it failed a write, the commit's failure comes from
     * the transaction having ended, and nothing may be kept. */
    if (r.batch_commit_rc != 0 && ok < BATCH && kept != 0)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": failed batch (a write "
                "and the commit failed) kept %d records",
                k, kept);
    if (r.batch_commit_rc != 0 && kept != 0 && kept != ok)
      test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": batch half there", k);
    *killed += r.batch_commit_rc != 0 && ok < BATCH;
  }
  return n;
}

TEST(client_batch_faults) {
  fieldsync_db *db;
  uint64_t killed = 0;
  uint64_t n;
  long long t0 = proc_now_ms();

  ASSERT_OK(faultvfs_install());
  tmpdir_make(dir, sizeof(dir), "fs-cfault-batch");
  snprintf(cli_base, sizeof(cli_base), "%s/base.db", dir);
  snprintf(cli_run, sizeof(cli_run), "%s/run.db", dir);
  db = db_open(cli_base, true);
  ASSERT_OK(fieldsync_close(db));
  n = batch_sweep(FAULTVFS_EIO, FAULTVFS_ANY, &killed);
  n += batch_sweep(FAULTVFS_ENOSPC, FAULTVFS_WRITE, &killed);
  printf("# batch: %" PRIu64 " fault points (every k, EIO and ENOSPC), %" PRIu64
         " batches ended by a failed write, %lld ms\n",
         n, killed, proc_now_ms() - t0);
  printf("# fault points covered: %" PRIu64 "\n", n);
  ASSERT_GT(killed, 0);
}

/* Power loss at every sync point of the whole session (in CI too, up to
 * POWER_POINTS of them). */
TEST(client_power_drop) {
  uint64_t seed = test_seed();

  make_baselines("fs-cfault-drop");
  printf("# fault points covered: %" PRIu64 "\n",
         sweep(FAULTVFS_POWER_DROP, FAULTVFS_SYNC, PHASE_ALL, false, seed));
}

TEST(client_power_garble) {
  uint64_t seed = test_seed();

  make_baselines("fs-cfault-garble");
  printf("# fault points covered: %" PRIu64 "\n",
         sweep(FAULTVFS_POWER_GARBLE, FAULTVFS_SYNC, PHASE_ALL, false, seed));
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(client_batch_faults) TEST_ENTRY(client_eio)
          TEST_ENTRY(client_enospc) TEST_ENTRY(client_fsync)
              TEST_ENTRY(client_power_drop) TEST_ENTRY(client_power_garble)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_client_faults FIELDSYNCD FIELDSYNC-ADMIN "
                    "[TEST | --list]\n");
    return 2;
  }
  daemon_path = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
