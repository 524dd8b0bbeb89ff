/* SPDX-License-Identifier: MIT */
/* Allocation failure at every k over a whole server session, in the fault
 * daemon fieldsyncd-fault (server/srv_fault.h): FIELDSYNC_FAULT_ALLOC=
 * "K[:sticky]@2" makes the k-th allocation from the moment connection 2 is
 * accepted fail, in whichever thread makes it (loop, worker pool, writer).
 *
 * Each run: connection 1 opens a raw session as device "keeper" (Hello,
 * Welcome) and waits; connection 2 is a whole libfieldsync sync of the
 * scenario of alloc_common.h (Hello, Push batches with a conflict, Pull
 * pages); connection 1 then pushes and pulls; connection 3 is another
 * device's whole sync; then office syncs again. SIGTERM ends the daemon.
 *
 * Once (only the k-th allocation fails): connection 2 succeeds or ends with
 * a clean Error (ERR_INTERNAL, ERR_STORAGE) or a close, never a hang
 * (every wait is bounded), never a wrong refusal (ERR_UNAUTHENTICATED) or
 * a broken message; connection 1 and every later session are unaffected;
 * the daemon exits 0 on SIGTERM with no sanitizer report in its log; the
 * store is intact and ends exactly as in a fault-free run, and office's
 * upload queue ends empty.
 *
 * Sticky (every allocation from the k-th on fails, for good): the daemon
 * may refuse everything from then on, and that is what it must do cleanly:
 * every session, connection 1's and new ones, ends with an Error or a
 * close, promptly, never a hang (a new connection is refused, not left
 * unanswered); the daemon does not spin (its CPU time while idle stays
 * low) and exits 0 on SIGTERM without a sanitizer report. After a restart
 * without faults the store is intact, everything acknowledged is there,
 * and syncs end exactly as in a fault-free run.
 *
 * Each mode runs twice: counting our allocations (fsp_malloc), and with
 * ":sqlite", SQLite's as well (tests/harness/faultmem.c), so the store's
 * out-of-memory paths are swept too. The allocation count of connection
 * 2's session comes from a clean run with FIELDSYNC_FAULT_REPORT. ctest
 * tries a stride of k (printed, with a seeded offset, the first and last
 * points always in); FIELDSYNC_TEST_SCALE >= 10 tries every k.
 *
 * Usage: test_alloc_server FIELDSYNCD-FAULT FIELDSYNC-ADMIN [TEST|--list]. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "alloc_common.h"
#include "fieldsync.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"
#include "proc.h"
#include "replica_export.h"
#include "wire.h"

/* Points of each sweep at scale 1. */
#define ONCE_POINTS 45
#define STICKY_POINTS 30
#define SQLITE_POINTS 30
/* A network wait of libfieldsync; longer means the daemon hung. */
#define WAIT_MS 5000
/* The idle daemon's CPU time is sampled over this long after a sticky
 * fault; it may use at most half of it. */
#define SPIN_SAMPLE_MS 400

static const char *fieldsyncd;
static const char *admin;
static struct ac_base b;
static struct test_server srv;
static char report[320];

/* The end state of a run: office's export, office2's, the server's
 * digest. */
struct outcome {
  char *exp;
  char *exp2;
  char digest[65536];
};

/* Figures over a sweep. */
struct tally {
  uint64_t points;
  uint64_t ok;         /* connection 2 succeeded */
  uint64_t error;      /* ... ended with an Error */
  uint64_t closed;     /* ... was closed without one */
  uint64_t later;      /* once: the fault landed after connection 2 */
  uint64_t refused;    /* sticky: later sessions refused (Error/close) */
  uint64_t max_cpu_ms; /* sticky: most CPU time used while idle */
};

/* ---- the daemon ---------------------------------------------------------- */

/* Starts fieldsyncd-fault on the working store with FIELDSYNC_FAULT_ALLOC
 * set to alloc (NULL: no fault) and the report path set. */
static void daemon_start(const char *alloc) {
  if (alloc != NULL)
    ASSERT_OK(setenv("FIELDSYNC_FAULT_ALLOC", alloc, 1));
  ASSERT_OK(setenv("FIELDSYNC_FAULT_REPORT", report, 1));
  unlink(report);
  server_start(&srv, fieldsyncd, b.srvdb, NULL);
  unsetenv("FIELDSYNC_FAULT_ALLOC");
  unsetenv("FIELDSYNC_FAULT_REPORT");
}

/* SIGTERM: the daemon must exit 0 with no sanitizer report in its log. */
static void daemon_stop(uint64_t k) {
  static const char *const bad[] = {"LeakSanitizer", "AddressSanitizer",
                                    "runtime error:", "UndefinedBehavior"};
  static char log[1 << 20];
  FILE *f;
  size_t n;
  size_t i;
  int status = server_stop(&srv);

  f = fopen(srv.log, "r");
  ASSERT(f != NULL);
  n = fread(log, 1, sizeof(log) - 1, f);
  log[n] = '\0';
  fclose(f);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    const char *at = strstr(log, bad[i]);
    if (at != NULL)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": the daemon's log has: %.600s", k, at);
  }
  if (status != 0)
    test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": fieldsyncd-fault exited %d",
              k, status);
  /* Each run appends to the same log: start the next one empty. */
  ASSERT_OK(truncate(srv.log, 0));
}

/* alloc_count from the report written at exit. */
static uint64_t report_count(void) {
  unsigned long long n = 0;
  char line[256];
  const char *p;
  FILE *f = fopen(report, "r");

  ASSERT(f != NULL);
  ASSERT(fgets(line, sizeof(line), f) != NULL);
  fclose(f);
  p = strstr(line, "alloc_count=");
  ASSERT(p != NULL);
  ASSERT(sscanf(p, "alloc_count=%llu", &n) == 1);
  return n;
}

/* CPU time (ms) the daemon used over SPIN_SAMPLE_MS of quiet. */
static uint64_t idle_cpu_ms(void) {
  long tick = sysconf(_SC_CLK_TCK);
  unsigned long long t[2];
  char path[64];
  int i;

  snprintf(path, sizeof(path), "/proc/%d/stat", (int)srv.pid);
  for (i = 0; i < 2; i++) {
    char buf[1024];
    unsigned long long ut = 0;
    unsigned long long st = 0;
    const char *p;
    FILE *f = fopen(path, "r");
    size_t n;

    ASSERT(f != NULL);
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields 14 and 15 (utime, stime) follow the ")" ending field 2. */
    p = strrchr(buf, ')');
    ASSERT(p != NULL);
    ASSERT(sscanf(p + 2,
                  "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu "
                  "%llu",
                  &ut, &st) == 2);
    t[i] = ut + st;
    if (i == 0)
      proc_sleep_ms(SPIN_SAMPLE_MS);
  }
  return (t[1] - t[0]) * 1000u / (unsigned long long)tick;
}

/* ---- connection 1: a raw session ---------------------------------------- */

enum reply { REPLY_OK, REPLY_ERROR, REPLY_CLOSED };

/* Sends env; a peer that has closed gives REPLY_CLOSED. */
static enum reply send_env(int fd, Fieldsync__Envelope *env) {
  uint8_t *frame;
  size_t len;
  size_t off = 0;

  wire_frame(env, &frame, &len);
  while (off < len) {
    ssize_t w = send(fd, frame + off, len - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      fsp_free(frame);
      return REPLY_CLOSED;
    }
    off += (size_t)w;
  }
  fsp_free(frame);
  return REPLY_OK;
}

/* Receives the reply to a request (within wire_recv_env's deadline: a
 * hang fails the test): want's body (kept in m), an Error (its text in
 * why) or a close. Any other body fails the test. */
static enum reply recv_reply(int fd, Fieldsync__Envelope__BodyCase want,
                             struct fsp_msg *m, char *why, size_t cap) {
  m->env = NULL;
  if (!wire_recv_env(fd, m)) {
    snprintf(why, cap, "closed");
    return REPLY_CLOSED;
  }
  if (m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR) {
    snprintf(why, cap, "error %d: %s", (int)m->env->error->code,
             m->env->error->message != NULL ? m->env->error->message : "");
    fsp_msg_close(m);
    return REPLY_ERROR;
  }
  if (m->env->body_case != want)
    test_fail(__FILE__, __LINE__, "want %d, got %s", (int)want,
              fsp_msg_body_name(m->env));
  return REPLY_OK;
}

/* Opens keeper's session; it must be welcomed. */
static int keeper_open(void) {
  struct sample_envelope s;
  struct fsp_msg m;
  char why[300];
  int fd = wire_dial(srv.port);

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = b.token3;
  ASSERT_EQ(send_env(fd, &s.env), REPLY_OK);
  if (recv_reply(fd, FIELDSYNC__ENVELOPE__BODY_WELCOME, &m, why, sizeof(why)) !=
      REPLY_OK)
    test_fail(__FILE__, __LINE__, "keeper not welcomed: %s", why);
  ASSERT_STR_EQ(m.env->welcome->user, "keeper");
  fsp_msg_close(&m);
  return fd;
}

/* keeper pushes one observation (the same in every run: applied, or
 * already known when repeated after a restart) and pulls a page. */
static enum reply keeper_push_pull(int fd, char *why, size_t cap) {
  struct sample_envelope s;
  struct fsp_msg m;
  enum reply r;
  int outcome;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.push.n_changes = 1;
  r = send_env(fd, &s.env);
  if (r == REPLY_OK)
    r = recv_reply(fd, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, &m, why, cap);
  else
    snprintf(why, cap, "closed");
  if (r != REPLY_OK)
    return r;
  ASSERT_EQ(m.env->push_ack->n_outcomes, 1);
  outcome = (int)m.env->push_ack->outcomes[0]->outcome;
  if (outcome != FIELDSYNC__OUTCOME__OUTCOME_APPLIED &&
      outcome != FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN)
    test_fail(__FILE__, __LINE__, "keeper's push: outcome %d: %s", outcome,
              m.env->push_ack->outcomes[0]->reason != NULL
                  ? m.env->push_ack->outcomes[0]->reason
                  : "");
  fsp_msg_close(&m);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  s.pull.max_records = 5;
  r = send_env(fd, &s.env);
  if (r == REPLY_OK)
    r = recv_reply(fd, FIELDSYNC__ENVELOPE__BODY_CHANGES, &m, why, cap);
  else
    snprintf(why, cap, "closed");
  if (r != REPLY_OK)
    return r;
  ASSERT_GT(m.env->changes->n_changes, 0);
  fsp_msg_close(&m);
  return REPLY_OK;
}

/* ---- libfieldsync sessions ---------------------------------------------- */

/* Classifies a sync's result: success, a clean Error of the kind an out-of-
 * memory server sends, or a close; anything else (a hang, a wrong
 * refusal, a broken message, a local error) fails the test. */
static enum reply classify(fieldsync_db *db, int rc, uint64_t k,
                           const char *who) {
  const char *msg = fieldsync_errmsg(db);

  if (rc == 0)
    return REPLY_OK;
  if (rc == FIELDSYNC_ENETWORK)
    return REPLY_CLOSED;
  if (rc == FIELDSYNC_ESERVER && (strstr(msg, "ERR_INTERNAL") != NULL ||
                                  strstr(msg, "ERR_STORAGE") != NULL))
    return REPLY_ERROR;
  test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": %s: %s: %s", k, who,
            fieldsync_errname(rc), msg);
  return REPLY_ERROR;
}

static void tally_reply(struct tally *t, enum reply r) {
  if (r == REPLY_OK)
    t->ok++;
  else if (r == REPLY_ERROR)
    t->error++;
  else
    t->closed++;
}

/* The syncs that end a run once the daemon serves again: office2, then
 * office, then office2 again, so both hold everything. Each must
 * succeed. */
static void settle(fieldsync_db *office, fieldsync_db *office2, uint64_t k) {
  fieldsync_db *order[3] = {office2, office, office2};
  struct fieldsync_sync_stats st;
  int i;

  for (i = 0; i < 3; i++) {
    const char *tok = order[i] == office ? b.token : b.token2;
    int rc = ac_sync(order[i], srv.addr, tok, WAIT_MS, &st);
    if (rc != 0)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": settling sync %d of %s: %s: %s", k, i + 1,
                order[i] == office ? "office" : "office2",
                fieldsync_errname(rc), fieldsync_errmsg(order[i]));
  }
}

/* Records the end state and checks it against want (NULL: none yet). */
static void finish(fieldsync_db *office, fieldsync_db *office2, uint64_t k,
                   struct outcome *out, const struct outcome *want) {
  struct fieldsync_counts c = ac_counts(office);

  ASSERT_EQ(c.pending, 0);
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(ac_counts(office2).pending, 0);
  out->exp = test_export_normalised(office);
  out->exp2 = test_export_normalised(office2);
  ASSERT_OK(fieldsync_close(office));
  ASSERT_OK(fieldsync_close(office2));
  if (strcmp(out->exp, out->exp2) != 0)
    test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": office and office2 differ",
              k);
  daemon_stop(k);
  ac_integrity(b.srvdb, k);
  ac_server_digest(b.srvdb, out->digest, sizeof(out->digest));
  if (want == NULL)
    return;
  if (strcmp(out->exp, want->exp) != 0)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 ": the replicas differ from a fault-free run's", k);
  if (strcmp(out->digest, want->digest) != 0)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 ": the server's versions differ from a fault-free "
              "run's:\n# want %.300s\n# got  %.300s",
              k, want->digest, out->digest);
}

static void outcome_free(struct outcome *o) {
  free(o->exp);
  free(o->exp2);
  o->exp = NULL;
  o->exp2 = NULL;
}

/* Restores the stores and opens both replicas. */
static void restore_all(fieldsync_db **office, fieldsync_db **office2) {
  ac_restore(b.base_srv, b.srvdb);
  ac_restore(b.base_cli, b.cli);
  ac_restore(b.base_cli2, b.cli2);
  *office = ac_open(b.cli, 0);
  *office2 = ac_open(b.cli2, 0);
}

/* ---- once ---------------------------------------------------------------- */

/* One run with the k-th allocation failing once (k = 0: none). The fault
 * is meant for connection 2; when that session saw nothing of it, it
 * landed later, and exactly one later step may then fail cleanly (and
 * succeed when repeated). */
static void once_at(uint64_t k, const char *opt, struct outcome *out,
                    const struct outcome *want, struct tally *t) {
  fieldsync_db *office;
  fieldsync_db *office2;
  struct fieldsync_sync_stats st;
  enum reply r2;
  enum reply r;
  bool spare; /* the fault may still be ahead */
  char env[64];
  char why[300];
  int fd;
  int rc;

  restore_all(&office, &office2);
  snprintf(env, sizeof(env), "%" PRIu64 "%s@2", k, opt);
  daemon_start(k != 0 ? env : NULL);
  fd = keeper_open();
  rc = ac_sync(office, srv.addr, b.token, WAIT_MS, &st);
  r2 = classify(office, rc, k, "connection 2");
  tally_reply(t, r2);
  spare = k != 0 && r2 == REPLY_OK;

  r = keeper_push_pull(fd, why, sizeof(why));
  if (r != REPLY_OK) {
    if (!spare)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": connection 1 affected by connection 2's "
                "fault: %s",
                k, why);
    spare = false;
    t->later++;
    close(fd);
    fd = keeper_open();
    r = keeper_push_pull(fd, why, sizeof(why));
    if (r != REPLY_OK)
      test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": connection 1 again: %s", k,
                why);
  }
  close(fd);
  rc = ac_sync(office2, srv.addr, b.token2, WAIT_MS, &st);
  if (rc != 0) {
    if (!spare)
      test_fail(__FILE__, __LINE__,
                "k=%" PRIu64 ": a later session failed: %s: %s", k,
                fieldsync_errname(rc), fieldsync_errmsg(office2));
    (void)classify(office2, rc, k, "connection 3");
    spare = false;
    t->later++;
  }
  if (spare) {
    /* Where the fault went is unknown: let the settling syncs absorb it. */
    rc = ac_sync(office, srv.addr, b.token, WAIT_MS, &st);
    if (rc != 0) {
      (void)classify(office, rc, k, "a later sync");
      t->later++;
    }
  }
  settle(office, office2, k);
  finish(office, office2, k, out, want);
}

/* ---- sticky -------------------------------------------------------------- */

/* One run with every allocation from the k-th on failing: see the file's
 * comment. Then a restart without faults, and the end state against
 * want. */
static void sticky_at(uint64_t k, const char *opt, struct outcome *out,
                      const struct outcome *want, struct tally *t) {
  fieldsync_db *office;
  fieldsync_db *office2;
  struct fieldsync_sync_stats st;
  enum reply r;
  uint64_t cpu;
  char env[64];
  char why[300];
  int fd;
  int rc;

  restore_all(&office, &office2);
  snprintf(env, sizeof(env), "%" PRIu64 ":sticky%s@2", k, opt);
  daemon_start(env);
  fd = keeper_open();
  rc = ac_sync(office, srv.addr, b.token, WAIT_MS, &st);
  tally_reply(t, classify(office, rc, k, "connection 2"));
  /* Connection 1 and a new session: served or refused, cleanly. */
  r = keeper_push_pull(fd, why, sizeof(why));
  close(fd);
  rc = ac_sync(office2, srv.addr, b.token2, WAIT_MS, &st);
  if (classify(office2, rc, k, "connection 3") != REPLY_OK || r != REPLY_OK)
    t->refused++;
  cpu = idle_cpu_ms();
  if (cpu > t->max_cpu_ms)
    t->max_cpu_ms = cpu;
  if (cpu * 2 > SPIN_SAMPLE_MS)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 ": the idle daemon used %" PRIu64 " ms of CPU in "
              "%d ms",
              k, cpu, SPIN_SAMPLE_MS);
  daemon_stop(k);
  ac_integrity(b.srvdb, k);

  /* Restarted without faults: everything is served again. */
  daemon_start(NULL);
  fd = keeper_open();
  r = keeper_push_pull(fd, why, sizeof(why));
  if (r != REPLY_OK)
    test_fail(__FILE__, __LINE__, "k=%" PRIu64 ": after restart: %s", k, why);
  close(fd);
  settle(office, office2, k);
  finish(office, office2, k, out, want);
}

/* ---- the sweeps ---------------------------------------------------------- */

/* Sweeps k over connection 2's session, once or sticky, counting SQLite's
 * allocations too when sqlite. The count comes from a clean run stopped
 * right after connection 2's sync (FIELDSYNC_FAULT_REPORT). */
static void sweep(bool sticky, bool sqlite, uint64_t points) {
  static struct outcome want;
  static struct outcome got;
  const char *opt = sqlite ? ":sqlite" : "";
  uint64_t seed = test_seed();
  struct ac_sweep sw;
  struct tally t;
  uint64_t total;
  uint64_t k;
  char what[64];
  char env[64];
  long long t0;

  ac_base_make(&b, "fs-alloc-server", fieldsyncd, admin, &srv);
  snprintf(report, sizeof(report), "%s/fault-report", b.dir);
  memset(&t, 0, sizeof(t));
  t0 = proc_now_ms();
  {
    fieldsync_db *office;
    fieldsync_db *office2;
    int fd;

    restore_all(&office, &office2);
    snprintf(env, sizeof(env), "1000000000000%s@2", opt);
    daemon_start(env);
    fd = keeper_open();
    ac_must_sync(office, srv.addr, b.token, NULL);
    close(fd);
    ASSERT_OK(fieldsync_close(office));
    ASSERT_OK(fieldsync_close(office2));
    daemon_stop(0);
    total = report_count();
    ASSERT_GT(total, 0);
  }
  once_at(0, "", &want, NULL, &t);
  printf("# connection 2's session makes %" PRIu64 " allocations in the "
         "daemon%s (%.1f s a run)\n",
         total, sqlite ? ", SQLite's included" : "",
         (double)(proc_now_ms() - t0) / 2e3);
  memset(&t, 0, sizeof(t));
  snprintf(what, sizeof(what), "%s%s", sticky ? "sticky" : "once",
           sqlite ? " with SQLite" : "");
  ac_sweep_init(&sw, what, total, points, seed);
  for (k = 1; k <= total; k++) {
    if (!ac_sweep_pick(&sw, k))
      continue;
    if (sticky)
      sticky_at(k, opt, &got, &want, &t);
    else
      once_at(k, opt, &got, &want, &t);
    outcome_free(&got);
    t.points++;
  }
  outcome_free(&want);
  if (sticky)
    printf("# %s: fault points covered %" PRIu64 " of %" PRIu64
           "; connection 2: ok %" PRIu64 ", Error %" PRIu64 ", closed %" PRIu64
           "; later sessions refused in %" PRIu64 "; idle CPU at most %" PRIu64
           " ms in %d ms; %.1f s\n",
           what, t.points, total, t.ok, t.error, t.closed, t.refused,
           t.max_cpu_ms, SPIN_SAMPLE_MS, (double)(proc_now_ms() - t0) / 1e3);
  else
    printf("# %s: fault points covered %" PRIu64 " of %" PRIu64
           "; connection 2: ok %" PRIu64 ", Error %" PRIu64 ", closed %" PRIu64
           "; fault landed after it %" PRIu64 "; %.1f s\n",
           what, t.points, total, t.ok, t.error, t.closed, t.later,
           (double)(proc_now_ms() - t0) / 1e3);
  ASSERT_GT(t.error + t.closed, 0);
}

TEST(server_session_once_at_every_k) {
  sweep(false, false, ONCE_POINTS);
}

TEST(server_session_sticky_at_every_k) {
  sweep(true, false, STICKY_POINTS);
}

TEST(server_session_once_sqlite_at_every_k) {
  sweep(false, true, SQLITE_POINTS);
}

TEST(server_session_sticky_sqlite_at_every_k) {
  sweep(true, true, SQLITE_POINTS);
}

static const struct test_entry tests[] = {
    TEST_ENTRY(server_session_once_at_every_k)
        TEST_ENTRY(server_session_sticky_at_every_k)
            TEST_ENTRY(server_session_once_sqlite_at_every_k)
                TEST_ENTRY(server_session_sticky_sqlite_at_every_k)};

/* TEST_LIST's main, after taking the two program paths from the front of
 * the arguments, so that a test name or --list may follow them. */
int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_alloc_server FIELDSYNCD-FAULT "
                    "FIELDSYNC-ADMIN [TEST | --list]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  signal(SIGPIPE, SIG_IGN);
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
