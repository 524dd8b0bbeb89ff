/* SPDX-License-Identifier: MIT */
/* Storage faults under the real daemon: fieldsyncd-fault runs with the
 * SQLite fault VFS armed when the test's first connection is accepted
 * (FIELDSYNC_FAULT_VFS="PLAN@1"), and for k over that session's counted
 * I/O operations (EIO on any, ENOSPC on writes, fsync failure; once, or
 * sticky until SIGUSR1 clears it) a raw-wire client handshakes, pushes
 * batches and pulls. Each run proves: every failure reaches the peer as
 * Error ERR_STORAGE and nothing else; the daemon stays up, and another
 * device's session works; after the fault clears the same client re-syncs
 * and the server holds exactly what the clients pushed; the writer never
 * retried a failed fsync on the same file handle; and after the daemon
 * stops, the store passes integrity_check and holds every acknowledged
 * version. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsp_samples.h"
#include "harness.h"
#include "proc.h"
#include "sqlcheck.h"
#include "storage_common.h"
#include "wire.h"

/* The faulted session pushes BATCHES batches of two changes; the healthy
 * device pushes one more. */
#define BATCHES 4
#define HEALTHY_BATCH BATCHES
#define ALL_BATCHES (BATCHES + 1)
#define EVIDENCE 300
/* Fault points per kind in CI (every k at SF_FULL_SCALE). */
#define CI_POINTS 36
/* How long a client keeps retrying a storage error after the fault has
 * cleared (the writer's reopen backoff is at most a second). */
#define RESYNC_DEADLINE_MS 15000

static const char *daemon_path;
static const char *admin;
static char dir[256];
static char base_db[320];
static char run_db[320];
static char report[320];
static char token[2][128]; /* the faulted client's, the healthy device's */
static struct test_server srv;

struct run {
  bool acked[ALL_BATCHES];
  bool storage_error; /* some reply was Error ERR_STORAGE */
  uint64_t ops;       /* from the daemon's report */
  uint64_t injected;
  uint64_t resynced;
  int resets;        /* "storage_failed" lines in the daemon's log */
  int reopen_failed; /* "store_reopen_failed" lines */
  int retries;       /* sessions the re-sync needed */
};

static void make_baseline(const char *prefix) {
  tmpdir_make(dir, sizeof(dir), prefix);
  snprintf(base_db, sizeof(base_db), "%s/base.db", dir);
  snprintf(run_db, sizeof(run_db), "%s/run.db", dir);
  snprintf(report, sizeof(report), "%s/report.txt", dir);
  admin_user_device(admin, base_db, "lead", "head_office", token[0],
                    sizeof(token[0]));
  admin_user_device(admin, base_db, "office", "head_office", token[1],
                    sizeof(token[1]));
  tmpdir_kill_at_exit(&srv);
}

/* The run's database: a copy of the baseline (closed cleanly by
 * fieldsync-admin, so one file), with no log or report left over. */
static void fresh_run(void) {
  sf_remove_db(run_db);
  remove(report);
  sf_copy_file(base_db, run_db);
}

/* Change i (0 or 1) of batch b. */
static void batch_change(int b, int i, struct sample_change *c) {
  sample_change_init(c, (uint32_t)(1000 + b * 2 + i), EVIDENCE);
}

/* Opens a session as client c (0: the faulted one, 1: the healthy one).
 * Returns the socket, or -1 when the server answered Error ERR_STORAGE
 * (any other answer fails the test). */
static int hello(int c, struct run *r) {
  struct sample_envelope s;
  struct fsp_msg m;
  int fd = wire_dial(srv.port);

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  memset(s.replica, 0x50 + c, sizeof(s.replica));
  s.hello.device_token = token[c];
  wire_send_env(fd, &s.env);
  if (!wire_recv_env(fd, &m))
    test_fail(__FILE__, __LINE__, "hello: closed without an answer");
  if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR) {
    if (m.env->error->code != FIELDSYNC__ERROR_CODE__ERR_STORAGE)
      test_fail(__FILE__, __LINE__, "hello: Error %d: %s", m.env->error->code,
                m.env->error->message);
    r->storage_error = true;
    fsp_msg_close(&m);
    close(fd);
    return -1;
  }
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_WELCOME);
  fsp_msg_close(&m);
  return fd;
}

/* Answers a request: true for the expected body, false (and the socket
 * closed) for Error ERR_STORAGE; anything else fails the test. */
static bool reply(int fd, Fieldsync__Envelope__BodyCase want, struct fsp_msg *m,
                  struct run *r) {
  if (!wire_recv_env(fd, m))
    test_fail(__FILE__, __LINE__, "closed without an answer");
  if (m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR) {
    if (m->env->error->code != FIELDSYNC__ERROR_CODE__ERR_STORAGE)
      test_fail(__FILE__, __LINE__, "Error %d: %s", m->env->error->code,
                m->env->error->message);
    ASSERT(m->env->error->message != NULL && m->env->error->message[0] != '\0');
    r->storage_error = true;
    fsp_msg_close(m);
    close(fd);
    return false;
  }
  ASSERT_EQ(m->env->body_case, want);
  return true;
}

/* Pushes batch b; true when acknowledged (each change applied or already
 * known), false on ERR_STORAGE (the socket is then closed). */
static bool push_batch(int fd, int b, struct run *r) {
  struct sample_envelope s;
  struct fsp_msg m;
  size_t i;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  for (i = 0; i < 2; i++)
    batch_change(b, (int)i, &s.ch[i]);
  s.push.batch_id = (uint64_t)b + 1;
  wire_send_env(fd, &s.env);
  if (!reply(fd, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, &m, r))
    return false;
  ASSERT_EQ(m.env->push_ack->batch_id, (uint64_t)b + 1);
  ASSERT_EQ(m.env->push_ack->n_outcomes, 2);
  for (i = 0; i < 2; i++) {
    int o = m.env->push_ack->outcomes[i]->outcome;
    if (o != FIELDSYNC__OUTCOME__OUTCOME_APPLIED &&
        o != FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN)
      test_fail(__FILE__, __LINE__, "batch %d change %zu: outcome %d", b, i, o);
  }
  fsp_msg_close(&m);
  r->acked[b] = true;
  return true;
}

/* Which batch change a pulled change is (b * 2 + i), or -1. */
static int change_of(const Fieldsync__Change *ch) {
  struct sample_change c;
  int b;
  int i;

  for (b = 0; b < ALL_BATCHES; b++) {
    for (i = 0; i < 2; i++) {
      batch_change(b, i, &c);
      if (ch->version != NULL && ch->version->hash.len == FSP_HASH_LEN &&
          memcmp(ch->version->hash.data, c.hash, FSP_HASH_LEN) == 0)
        return b * 2 + i;
    }
  }
  return -1;
}

/* Pulls the whole feed; seen[b * 2 + i] marks what came. False on
 * ERR_STORAGE (the socket is then closed). */
static bool pull_all(int fd, bool seen[ALL_BATCHES * 2], struct run *r) {
  struct sample_envelope s;
  struct fsp_msg m;
  uint64_t cursor = 0;
  int pages;

  memset(seen, 0, sizeof(bool) * ALL_BATCHES * 2);
  for (pages = 0; pages < 100; pages++) {
    size_t i;
    bool more;
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
    s.pull.cursor = cursor;
    wire_send_env(fd, &s.env);
    if (!reply(fd, FIELDSYNC__ENVELOPE__BODY_CHANGES, &m, r))
      return false;
    for (i = 0; i < m.env->changes->n_changes; i++) {
      int v = change_of(m.env->changes->changes[i]);
      ASSERT_GE(v, 0);
      seen[v] = true;
    }
    cursor = m.env->changes->next_cursor;
    more = m.env->changes->more;
    fsp_msg_close(&m);
    if (!more)
      return true;
  }
  test_fail(__FILE__, __LINE__, "the feed never ended");
}

/* The faulted client's session: hello, its batches, a pull. */
static void faulted_session(struct run *r) {
  bool seen[ALL_BATCHES * 2];
  int fd = hello(0, r);
  int b;

  if (fd < 0)
    return;
  for (b = 0; b < BATCHES; b++)
    if (!push_batch(fd, b, r))
      return;
  if (pull_all(fd, seen, r)) {
    for (b = 0; b < BATCHES * 2; b++)
      ASSERT(seen[b]); /* its own acknowledged batches */
    close(fd);
  }
}

/* One session of client c pushing batches [from, to) and pulling; true
 * when all of it went through. */
static bool sync_once(int c, int from, int to, bool seen[ALL_BATCHES * 2],
                      struct run *r) {
  int fd = hello(c, r);
  int b;

  if (fd < 0)
    return false;
  for (b = from; b < to; b++)
    if (!push_batch(fd, b, r))
      return false;
  if (!pull_all(fd, seen, r))
    return false;
  close(fd);
  return true;
}

/* Syncs client c until a session goes through (retrying storage errors,
 * which end when the fault has cleared and the writer has reopened). */
static void sync_until_ok(int c, int from, int to, bool seen[ALL_BATCHES * 2],
                          struct run *r) {
  long long deadline = proc_now_ms() + RESYNC_DEADLINE_MS;

  while (!sync_once(c, from, to, seen, r)) {
    r->retries++;
    if (proc_now_ms() > deadline)
      test_fail(__FILE__, __LINE__,
                "client %d still gets storage errors after the fault cleared",
                c);
    proc_sleep_ms(50); /* a pause between attempts, not a synchronisation */
  }
}

static void read_report(struct run *r) {
  FILE *f = fopen(report, "r");
  unsigned long long ops = 0;
  unsigned long long injected = 0;
  unsigned long long count = 0;
  unsigned long long failed = 0;
  unsigned long long resynced = 0;

  if (f == NULL)
    test_fail(__FILE__, __LINE__, "no fault report at %s", report);
  if (fscanf(f,
             "vfs_ops=%llu vfs_injected=%llu alloc_count=%llu "
             "alloc_failed=%llu vfs_resynced=%llu",
             &ops, &injected, &count, &failed, &resynced) != 5)
    test_fail(__FILE__, __LINE__, "bad fault report");
  fclose(f);
  r->ops = ops;
  r->injected = injected;
  r->resynced = resynced;
}

static int count_in_log(const char *what) {
  char path[400];
  char line[1024];
  FILE *f;
  int n = 0;

  snprintf(path, sizeof(path), "%s.log", run_db);
  f = fopen(path, "r");
  if (f == NULL)
    return 0;
  while (fgets(line, sizeof(line), f) != NULL)
    n += strstr(line, what) != NULL;
  fclose(f);
  return n;
}

/* After the daemon stopped: integrity_check passes, every acknowledged
 * batch is stored with its exact bytes. */
static void check_store(const struct run *r) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int b;

  sqlcheck_integrity_file(run_db, run_db);
  ASSERT_EQ(sqlite3_open_v2(run_db, &db, SQLITE_OPEN_READWRITE, NULL),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "SELECT payload FROM versions WHERE record = "
                               "?1 AND hash = ?2",
                               -1, &st, NULL),
            SQLITE_OK);
  for (b = 0; b < ALL_BATCHES; b++) {
    int i;
    if (!r->acked[b])
      continue;
    for (i = 0; i < 2; i++) {
      struct sample_change c;
      batch_change(b, i, &c);
      sqlite3_bind_blob(st, 1, c.id, 16, SQLITE_STATIC);
      sqlite3_bind_blob(st, 2, c.hash, FSP_HASH_LEN, SQLITE_STATIC);
      if (sqlite3_step(st) != SQLITE_ROW)
        test_fail(__FILE__, __LINE__, "acknowledged batch %d change %d lost", b,
                  i);
      ASSERT_EQ(sqlite3_column_bytes(st, 0), c.v.payload.len);
      ASSERT_MEM_EQ(sqlite3_column_blob(st, 0), c.payload, c.v.payload.len);
      sqlite3_reset(st);
    }
  }
  sqlite3_finalize(st);
  ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

/* One run with the VFS plan text (armed at connection 1); with clear, the
 * fault is switched off (SIGUSR1) after the faulted session; with
 * session_only, only that session runs (to count its operations). */
static void run_daemon(const char *plan, bool clear, bool session_only,
                       struct run *r) {
  bool seen[ALL_BATCHES * 2];
  char env[160];
  bool fault_seen;
  int i;

  memset(r, 0, sizeof(*r));
  fresh_run();
  snprintf(env, sizeof(env), "%s@1", plan);
  ASSERT_OK(setenv("FIELDSYNC_FAULT_VFS", env, 1));
  ASSERT_OK(setenv("FIELDSYNC_FAULT_REPORT", report, 1));
  server_start(&srv, daemon_path, run_db, NULL);
  unsetenv("FIELDSYNC_FAULT_VFS");
  unsetenv("FIELDSYNC_FAULT_REPORT");

  faulted_session(r);
  fault_seen = r->storage_error;
  if (clear)
    ASSERT_OK(kill(srv.pid, SIGUSR1));
  if (!session_only) {
    /* Another device: after a single fault that has fired, its session
     * goes through at once; else it may meet the fault and retries. */
    if (fault_seen && !clear)
      ASSERT(sync_once(1, HEALTHY_BATCH, HEALTHY_BATCH + 1, seen, r));
    else
      sync_until_ok(1, HEALTHY_BATCH, HEALTHY_BATCH + 1, seen, r);
    /* The faulted client again: everything, then the server holds exactly
     * what both pushed. */
    sync_until_ok(0, 0, BATCHES, seen, r);
    for (i = 0; i < ALL_BATCHES * 2; i++)
      if (!seen[i])
        test_fail(__FILE__, __LINE__, "%s: change %d missing after re-sync",
                  plan, i);
  }
  /* The daemon is still up: SIGTERM stops it cleanly (exit 0). */
  ASSERT_EQ(kill(srv.pid, 0), 0);
  ASSERT_EQ(server_stop(&srv), 0);
  read_report(r);
  r->resets = count_in_log("storage_failed");
  r->reopen_failed = count_in_log("store_reopen_failed");
  check_store(r);
  if (r->resynced != 0)
    test_fail(__FILE__, __LINE__,
              "%s: %llu syncs retried on a handle whose fsync had failed", plan,
              (unsigned long long)r->resynced);
}

/* Sweeps k over the operations of class op counted in a clean run (from
 * the faulted session's accept to the daemon's exit; sticky faults over
 * the faulted session alone, as they clear after it). */
static uint64_t sweep(const char *fault, const char *op, bool sticky,
                      uint64_t seed) {
  struct run r;
  char plan[96];
  uint64_t n;
  uint64_t stride;
  uint64_t k;
  uint64_t covered = 0;
  uint64_t errors = 0;
  uint64_t resets = 0;
  uint64_t reopen_failed = 0;
  uint64_t retries = 0;
  long long t0 = proc_now_ms();

  snprintf(plan, sizeof(plan), "none:%s:1", op);
  run_daemon(plan, false, sticky, &r);
  for (k = 0; k < BATCHES; k++)
    ASSERT(r.acked[k]);
  ASSERT(!r.storage_error);
  n = r.ops;
  ASSERT_GT(n, 0);
  stride = sf_stride(n, sticky ? CI_POINTS / 2 : CI_POINTS);
  for (k = 1 + seed % stride; k <= n; k += stride) {
    snprintf(plan, sizeof(plan), "%s:%s:%" PRIu64 "%s", fault, op, k,
             sticky ? ":sticky" : "");
    run_daemon(plan, sticky, false, &r);
    errors += r.storage_error;
    resets += r.resets > 0;
    reopen_failed += r.reopen_failed > 0;
    retries += (uint64_t)r.retries;
    covered++;
  }
  printf("# %s%s on %s: %" PRIu64 " of %" PRIu64
         " fault points (stride %" PRIu64 "): %" PRIu64
         " runs with ERR_STORAGE, %" PRIu64
         " with the writer's connection replaced, %" PRIu64
         " with its reopen failing (backoff), %" PRIu64
         " re-sync retries, %lld ms\n",
         fault, sticky ? " sticky" : "", op, covered, n, stride, errors, resets,
         reopen_failed, retries, proc_now_ms() - t0);
  fflush(stdout);
  ASSERT_GT(errors, 0);
  /* A sticky fault on every operation also fails the writer's reopen: the
   * backoff path runs. */
  if (sticky && strcmp(op, "any") == 0)
    ASSERT_GT(reopen_failed, 0);
  return covered;
}

TEST(daemon_eio_any) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline("fs-dstore-eio");
  n = sweep("eio", "any", false, seed);
  n += sweep("eio", "any", true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST(daemon_enospc_write) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline("fs-dstore-enospc");
  n = sweep("enospc", "write", false, seed);
  n += sweep("enospc", "write", true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

TEST(daemon_fsync_fail) {
  uint64_t seed = test_seed();
  uint64_t n;

  make_baseline("fs-dstore-fsync");
  n = sweep("fsync", "sync", false, seed);
  n += sweep("fsync", "sync", true, seed);
  printf("# fault points covered: %" PRIu64 "\n", n);
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(daemon_eio_any) TEST_ENTRY(daemon_enospc_write)
          TEST_ENTRY(daemon_fsync_fail)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_daemon_storage FIELDSYNCD-FAULT "
                    "FIELDSYNC-ADMIN [TEST | --list]\n");
    return 2;
  }
  daemon_path = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
