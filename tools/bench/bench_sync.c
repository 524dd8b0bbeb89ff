/* SPDX-License-Identifier: MIT */
/* Benchmark of sync between libfieldsync and fieldsyncd against the issue's
 * targets: bulk push and pull (1) with the server's peak memory (6),
 * incremental sync on a small and a large server (2), no-op sync latency
 * (3), many concurrent clients (4a: raw push-only sessions; 4b:
 * libfieldsync clients, which also pull the whole feed) and many idle
 * sessions (5). Each scenario starts its own fieldsyncd on 127.0.0.1 port
 * 0 (never another address), reads its "listening on" line, and stops it
 * by PID at the end, also when the benchmark fails; the server dies with
 * us on Linux even if we are killed. Prints a table of results, targets
 * and PASS/MISS, plus the CPU time each side spent, which is less skewed
 * than wall time when the machine is shared.
 * Raw sessions (4a, 5) speak the wire protocol through proto/, as
 * bench_proto and the integration tests do; everything else goes through
 * fieldsync.h.
 * Usage: bench_sync [--quick] [--only N[,N...]] [--dir DIR]
 *                   [--fieldsyncd PATH] [--admin PATH]
 * Files go in a fresh directory under DIR ($TMPDIR or /tmp), removed at
 * the end (and on a failure) unless BENCH_KEEP is set; a run stopped by a
 * signal kills its server but leaves the directory. Build it as Release, without
 * sanitizers. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

#include "fieldsync.h"
#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_samples.h"

#ifndef BENCH_FIELDSYNCD
#define BENCH_FIELDSYNCD "fieldsyncd"
#endif
#ifndef BENCH_ADMIN
#define BENCH_ADMIN "fieldsync-admin"
#endif

#define EVIDENCE_LEN 420
#define RECORDS_PER_VISIT 50
#define SYNC_TIMEOUT_MS 300000
#define NSCENARIOS 6

/* The targets. */
#define TARGET_RPS 50000.0
#define TARGET_INCR_RATIO 1.5
#define TARGET_NOOP_MS 1.0
#define TARGET_IDLE_RSS_MB 256.0

/* Sizes of a full run and of --quick. */
struct sizes {
  uint64_t bulk;          /* 1: records pushed and pulled */
  uint64_t incr_small;    /* 2: server sizes */
  uint64_t incr_large;
  unsigned incr_changes;  /* 2: records edited per run */
  unsigned incr_runs;     /* 2: timed runs (plus one warm-up) */
  unsigned noop_runs;     /* 3 */
  unsigned clients;       /* 4a: raw push-only sessions */
  unsigned client_records;
  unsigned lib_clients;   /* 4b: libfieldsync sessions (each pulls all) */
  unsigned idle;          /* 5 */
};

static const struct sizes full_sizes = {100000, 10000, 1000000, 100, 9,
                                        200,    1000,  100,     100, 10000};
static const struct sizes quick_sizes = {10000, 1000, 20000, 100, 5,
                                         50,    100,  100,   20,  1000};

/* ---- process-wide state ------------------------------------------------ */

struct server {
  pid_t pid;
  int port;
  char addr[64]; /* "127.0.0.1:PORT" */
  char db[600];
  char log[640];
};

/* The one server running, if any: stopped by fail() and the signal
 * handler, so no fieldsyncd outlives the benchmark. */
static struct server srv;
static volatile sig_atomic_t srv_pid_for_signal;
static char dir[512];
static const char *fieldsyncd_path = BENCH_FIELDSYNCD;
static const char *admin_path = BENCH_ADMIN;
/* Device tokens of the current server: a token is bound to the first
 * replica that uses it, so each replica takes its own (token_for); the
 * raw sessions of 4a and 5 are one device, with token[0] and one replica
 * id. */
#define MAX_TOKENS 128
static char tokens[MAX_TOKENS][128];
static char token_replica[MAX_TOKENS][33];
static size_t ntokens;
static char *const token = tokens[0];
static uint64_t rng = 0x5eed5eed5eedull;
static char pool[8192]; /* random words that evidence texts are cut from */
static pthread_mutex_t rng_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- results ----------------------------------------------------------- */

#define MAX_ROWS 48

struct row {
  char what[64];
  char result[32];
  char target[24];
  int verdict; /* 1 PASS, 0 MISS, -1 information only */
};

static struct row rows[MAX_ROWS];
static size_t nrows;

static void add_row(const char *what, const char *target, int verdict,
                    const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static void add_row(const char *what, const char *target, int verdict,
                    const char *fmt, ...) {
  struct row *r;
  va_list ap;

  if (nrows == MAX_ROWS)
    return;
  r = &rows[nrows++];
  snprintf(r->what, sizeof(r->what), "%s", what);
  snprintf(r->target, sizeof(r->target), "%s", target);
  r->verdict = verdict;
  va_start(ap, fmt);
  vsnprintf(r->result, sizeof(r->result), fmt, ap);
  va_end(ap);
}

static void print_table(void) {
  size_t i;

  printf("\n%-46s %16s %16s  %s\n", "measure", "measured", "target",
         "verdict");
  for (i = 0; i < nrows; i++) {
    const struct row *r = &rows[i];
    const char *v = r->verdict > 0 ? "PASS" : r->verdict == 0 ? "MISS" : "";

    printf("%-46s %16s %16s  %s\n", r->what, r->result, r->target, v);
  }
  fflush(stdout);
}

/* ---- small helpers ----------------------------------------------------- */

static double now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

static uint64_t next_rand(void) {
  uint64_t z;

  pthread_mutex_lock(&rng_lock);
  z = (rng += 0x9e3779b97f4a7c15ull);
  pthread_mutex_unlock(&rng_lock);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a;
  double y = *(const double *)b;

  return x < y ? -1 : x > y;
}

/* The q-quantile (nearest rank) of a[0..n-1], which it sorts. */
static double quantile(double *a, size_t n, double q) {
  size_t k = (size_t)(q * (double)n + 0.999999);

  qsort(a, n, sizeof(double), cmp_double);
  if (k == 0)
    k = 1;
  if (k > n)
    k = n;
  return a[k - 1];
}

/* Removes path, recursively for directories. */
static void remove_tree(const char *path) {
  char p[1024];
  struct stat st;
  DIR *d;

  if (lstat(path, &st) != 0)
    return;
  if (!S_ISDIR(st.st_mode)) {
    unlink(path);
    return;
  }
  d = opendir(path);
  if (d != NULL) {
    for (;;) {
      struct dirent *e = readdir(d);

      if (e == NULL)
        break;
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
        continue;
      snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
      remove_tree(p);
    }
    closedir(d);
  }
  rmdir(path);
}

/* ---- the server process ------------------------------------------------ */

/* Waits for pid until deadline (ms of now_ms); returns 0 when it was
 * reaped, 1 when the deadline passed. */
static int wait_until(pid_t pid, double deadline, int *status) {
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);

    if (r == pid)
      return 0;
    if (r < 0 && errno != EINTR)
      return 0;
    if (now_ms() >= deadline)
      return 1;
    sleep_ms(5);
  }
}

/* SIGTERM, then SIGKILL after 60 s. Returns the exit status (128 + signal
 * when killed), or -1 when no server runs. */
static int server_stop(struct server *s) {
  int status = 0;
  int ret;

  if (s->pid <= 0)
    return -1;
  kill(s->pid, SIGTERM);
  if (wait_until(s->pid, now_ms() + 60000, &status) != 0) {
    fprintf(stderr, "bench_sync: fieldsyncd %d ignored SIGTERM for 60 s; "
                    "killing it\n",
            (int)s->pid);
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &status, 0);
  }
  ret = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  s->pid = 0;
  srv_pid_for_signal = 0;
  return ret;
}

static void cleanup(void) {
  if (srv.pid > 0) {
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    srv.pid = 0;
    srv_pid_for_signal = 0;
  }
  if (dir[0] != '\0' && getenv("BENCH_KEEP") == NULL)
    remove_tree(dir);
  dir[0] = '\0';
}

static void fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

/* Reports a failure, stops the server, removes the files and exits 1.
 * Only from the main thread. */
static void fail(const char *fmt, ...) {
  va_list ap;

  fflush(stdout);
  fprintf(stderr, "bench_sync: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  if (srv.pid > 0)
    fprintf(stderr, "bench_sync: server log: %s (kept when BENCH_KEEP is "
                    "set)\n",
            srv.log);
  print_table();
  cleanup();
  exit(1);
}

static void fail_db(fieldsync_db *db, const char *what, int rc) {
  fail("%s: %s (%s)", what,
       db != NULL ? fieldsync_errmsg(db) : fieldsync_strerror(rc),
       fieldsync_errname(rc));
}

static void on_signal(int sig) {
  pid_t pid = (pid_t)srv_pid_for_signal;

  if (pid > 0)
    kill(pid, SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* Runs argv with stdout captured in out (cap bytes, NUL-terminated) and
 * stderr in the server log directory's admin.log. Returns the exit status
 * or -1. */
static int run_capture(char *const argv[], char *out, size_t cap) {
  char log[640];
  int po[2];
  size_t n = 0;
  pid_t pid;
  int status = 0;

  snprintf(log, sizeof(log), "%s/admin.log", dir);
  if (pipe(po) != 0)
    return -1;
  pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDONLY);
    int errfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);

    dup2(devnull, 0);
    dup2(po[1], 1);
    if (errfd >= 0)
      dup2(errfd, 2);
    close(po[0]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(po[1]);
  for (;;) {
    ssize_t r = read(po[0], out + n, cap - 1 - n);

    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0 || n + (size_t)r >= cap - 1) {
      if (r > 0)
        n += (size_t)r;
      break;
    }
    n += (size_t)r;
  }
  out[n] = '\0';
  close(po[0]);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Makes a fresh server database at dir/name with user "bench" and
 * MAX_TOKENS devices, whose tokens go to tokens[]. */
static void make_server_db(const char *name, char *db, size_t cap) {
  char out[256];
  size_t i;

  snprintf(db, cap, "%s/%s", dir, name);
  {
    char *a[] = {(char *)admin_path, "--db", db, "user", "add", "bench",
                 "--role", "head_office", NULL};
    if (run_capture(a, out, sizeof(out)) != 0)
      fail("%s user add failed (see %s/admin.log)", admin_path, dir);
  }
  for (i = 0; i < MAX_TOKENS; i++) {
    char *a[] = {(char *)admin_path, "--db", db, "device", "add", "bench",
                 NULL};
    if (run_capture(a, out, sizeof(out)) != 0 ||
        sscanf(out, "%127s", tokens[i]) != 1)
      fail("%s device add failed (see %s/admin.log)", admin_path, dir);
    token_replica[i][0] = '\0';
  }
  ntokens = 1; /* tokens[0] is the raw sessions' */
}

/* The token of db's replica on the current server. */
static const char *token_for(fieldsync_db *db) {
  char hex[33];
  size_t i;

  fieldsync_replica_id(db, hex);
  for (i = 1; i < ntokens; i++)
    if (strcmp(token_replica[i], hex) == 0)
      return tokens[i];
  if (ntokens == MAX_TOKENS)
    fail("more than %d replicas on one server", MAX_TOKENS - 1);
  snprintf(token_replica[ntokens], sizeof(token_replica[0]), "%s", hex);
  return tokens[ntokens++];
}

/* Starts fieldsyncd on db with --listen 127.0.0.1:0 plus extra
 * (NULL-terminated) and waits (20 s at most) for its ready line. Its
 * stderr goes to db.log. It inherits our RLIMIT_NOFILE. */
static void server_start(struct server *s, const char *db,
                          const char *const *extra) {
  char *argv[32];
  char line[256];
  size_t got = 0;
  double deadline = now_ms() + 20000;
  int po[2];
  int logfd;
  int n = 0;

  memset(s, 0, sizeof(*s));
  snprintf(s->db, sizeof(s->db), "%s", db);
  snprintf(s->log, sizeof(s->log), "%s.log", db);
  argv[n++] = (char *)fieldsyncd_path;
  argv[n++] = "--db";
  argv[n++] = s->db;
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  argv[n++] = "--plaintext"; /* loopback only; TLS is bench_tls */
  while (extra != NULL && *extra != NULL && n < 30)
    argv[n++] = (char *)*extra++;
  argv[n] = NULL;
  if (pipe(po) != 0)
    fail("pipe: %s", strerror(errno));
  logfd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (logfd < 0)
    fail("open %s: %s", s->log, strerror(errno));
  fflush(stdout);
  s->pid = fork();
  if (s->pid < 0)
    fail("fork: %s", strerror(errno));
  if (s->pid == 0) {
    int devnull = open("/dev/null", O_RDONLY);

#if defined(__linux__)
    /* Dies with us even if we are SIGKILLed. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    dup2(devnull, 0);
    dup2(po[1], 1);
    dup2(logfd, 2);
    close(po[0]);
    execv(fieldsyncd_path, argv);
    _exit(127);
  }
  srv_pid_for_signal = s->pid;
  close(po[1]);
  close(logfd);
  while (got + 1 < sizeof(line) && now_ms() < deadline) {
    struct pollfd p = {po[0], POLLIN, 0};
    ssize_t r;

    if (poll(&p, 1, 100) <= 0)
      continue;
    r = read(po[0], line + got, 1);
    if (r <= 0 || line[got] == '\n')
      break;
    got++;
  }
  line[got] = '\0';
  close(po[0]);
  if (sscanf(line, "listening on 127.0.0.1:%d", &s->port) != 1)
    fail("fieldsyncd (%s) did not start: \"%s\"; see %s", fieldsyncd_path,
         line, s->log);
  snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%d", s->port);
}

/* A fresh server database name and a running server on it. */
static void fresh_server(const char *name, const char *const *extra) {
  char db[600];

  make_server_db(name, db, sizeof(db));
  server_start(&srv, db, extra);
}

static void stop_server(void) {
  int rc = server_stop(&srv);

  if (rc != 0)
    fail("fieldsyncd exited with status %d (see %s)", rc, srv.log);
}

/* A field of /proc/PID/status in kB ("VmRSS", "VmHWM"), or -1. */
static long proc_kb(pid_t pid, const char *field) {
  char path[64];
  char line[256];
  size_t flen = strlen(field);
  long kb = -1;
  FILE *f;

  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  f = fopen(path, "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
      kb = strtol(line + flen + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kb;
}

static double file_mb(const char *path) {
  char p[700];
  struct stat st;
  double total = 0;

  if (stat(path, &st) == 0)
    total += (double)st.st_size;
  snprintf(p, sizeof(p), "%s-wal", path);
  if (stat(p, &st) == 0)
    total += (double)st.st_size;
  return total / (1024.0 * 1024.0);
}

/* The 1-minute load average, or -1: other work on the machine skews every
 * figure here, so the run reports it. */
static double loadavg(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");

  if (f != NULL) {
    if (fscanf(f, "%lf", &l) != 1)
      l = -1;
    fclose(f);
  }
  return l;
}

/* The kernel's count of connections dropped because a listen queue was
 * full (TcpExt ListenOverflows, Linux), or -1. Machine-wide, so a delta
 * over a scenario is only ours on an otherwise quiet machine. */
static long long listen_overflows(void) {
  char names[4096];
  char values[4096];
  long long v = -1;
  FILE *f = fopen("/proc/net/netstat", "r");

  if (f == NULL)
    return -1;
  while (fgets(names, sizeof(names), f) != NULL &&
         fgets(values, sizeof(values), f) != NULL) {
    const char *n = names;
    const char *x = values;

    if (strncmp(names, "TcpExt:", 7) != 0)
      continue;
    /* Walk the header and value lines word by word, in step. */
    for (;;) {
      char word[64];
      long long val;
      int an = 0;
      int ax = 0;

      if (sscanf(n, "%63s%n", word, &an) != 1 ||
          sscanf(x, "%*s%n", &ax) != 0 || ax == 0)
        break;
      if (strcmp(word, "ListenOverflows") == 0) {
        if (sscanf(x, "%lld", &val) == 1)
          v = val;
        break;
      }
      n += an;
      x += ax;
    }
    break;
  }
  fclose(f);
  return v;
}

/* ---- clients ----------------------------------------------------------- */

static fieldsync_db *open_client(const char *name) {
  char path[600];
  fieldsync_db *db = NULL;
  int rc;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  rc = fieldsync_open(path, FIELDSYNC_OPEN_CREATE, name, &db);
  if (rc != 0)
    fail_db(db, "open", rc);
  return db;
}

static void close_client(fieldsync_db *db) {
  int rc = fieldsync_close(db);

  if (rc != 0)
    fail_db(NULL, "close", rc);
}

/* Visit v's id: 32 hex digits. */
static void visit_hex(uint64_t v, char out[33]) {
  snprintf(out, 33, "b15175000000000000000000%08x", (unsigned)v);
}

/* Fills evidence with a ~EVIDENCE_LEN text starting with a tag. */
static void make_evidence(char *evidence, const char *tag) {
  size_t off = (size_t)(next_rand() % (sizeof(pool) - EVIDENCE_LEN));
  size_t n = (size_t)snprintf(evidence, EVIDENCE_LEN + 1, "%s ", tag);

  if (n < EVIDENCE_LEN)
    memcpy(evidence + n, pool + off, EVIDENCE_LEN - n);
  evidence[EVIDENCE_LEN] = '\0';
}

/* Creates observation `serial` of about 500 bytes of payload (a 420-byte
 * evidence text, the visit id, standard, judgement, assessor and two case
 * references), as bench_client does. Returns 0 or the library's code. */
static int create_obs(fieldsync_db *db, uint64_t serial, char id_out[33]) {
  const char *fields[] = {"visit_id",      "standard_code", "judgement",
                          "evidence_text", "assessor",      "case_refs",
                          "case_refs"};
  const char *values[7];
  char visit[33];
  char code[16];
  char judgement[4];
  char evidence[EVIDENCE_LEN + 1];
  char tag[32];
  char case1[16];
  char case2[16];
  fieldsync_draft *d = NULL;
  size_t i;
  int rc;

  visit_hex(serial / RECORDS_PER_VISIT, visit);
  snprintf(code, sizeof(code), "OP%u", (unsigned)(serial % 40));
  snprintf(judgement, sizeof(judgement), "%u", 1 + (unsigned)(serial % 4));
  snprintf(tag, sizeof(tag), "#%llu", (unsigned long long)serial);
  make_evidence(evidence, tag);
  snprintf(case1, sizeof(case1), "C%u", (unsigned)(serial % 97));
  snprintf(case2, sizeof(case2), "C%u", (unsigned)(serial % 89));
  values[0] = visit;
  values[1] = code;
  values[2] = judgement;
  values[3] = evidence;
  values[4] = "inspector-07";
  values[5] = case1;
  values[6] = case2;
  rc = fieldsync_draft_new(db, "observation", &d);
  for (i = 0; rc == 0 && i < sizeof(fields) / sizeof(fields[0]); i++)
    rc = fieldsync_draft_set(d, fields[i], values[i]);
  if (rc == 0)
    rc = fieldsync_create(db, d, id_out);
  fieldsync_draft_free(d);
  return rc;
}

/* Records n observations, serials first..first+n-1, in batches of
 * `batch`; ids (may be NULL) receives their ids. Returns the ms taken. */
static double record_many(fieldsync_db *db, uint64_t first, uint64_t n,
                          uint64_t batch, char (*ids)[33]) {
  double t0 = now_ms();
  uint64_t i = 0;
  int rc;

  while (i < n) {
    uint64_t end = i + batch < n ? i + batch : n;

    rc = fieldsync_batch_begin(db);
    if (rc != 0)
      fail_db(db, "batch_begin", rc);
    for (; i < end; i++) {
      rc = create_obs(db, first + i, ids != NULL ? ids[i] : NULL);
      if (rc != 0)
        fail_db(db, "create", rc);
    }
    rc = fieldsync_batch_commit(db);
    if (rc != 0)
      fail_db(db, "batch_commit", rc);
  }
  return now_ms() - t0;
}

/* When each phase of a sync ended, from its progress callbacks. */
struct phase_times {
  double t0;
  double push_end; /* last "push" callback; t0 when nothing was pushed */
  double pull_end; /* last "pull" callback */
  double first_pull;
  /* CPU time (ms) used by the server and by this process: at the start,
   * at push_end and at the end of the sync. */
  double srv_cpu[3];
  double own_cpu[3];
};

/* CPU time (user + system, ms) of process pid so far, or 0. */
static double proc_cpu_ms(pid_t pid) {
  char path[64];
  char buf[1024];
  unsigned long long ut = 0;
  unsigned long long stime = 0;
  size_t n;
  char *p;
  FILE *f;

  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  f = fopen(path, "r");
  if (f == NULL)
    return 0;
  n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* Fields 14 and 15, counted after the ")" that ends the command. */
  p = strrchr(buf, ')');
  if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
                                 "%*u %llu %llu",
                          &ut, &stime) != 2)
    return 0;
  return (double)(ut + stime) * 1e3 / (double)sysconf(_SC_CLK_TCK);
}

/* CPU time (ms) of this process, all threads. */
static double own_cpu_ms(void) {
  struct rusage ru;

  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 +
         (double)ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3;
}

static void on_progress(const char *phase, size_t done, size_t total,
                        void *data) {
  struct phase_times *pt = data;
  double t = now_ms();

  (void)done;
  (void)total;
  if (strcmp(phase, "push") == 0) {
    pt->push_end = t;
    pt->srv_cpu[1] = proc_cpu_ms(srv.pid);
    pt->own_cpu[1] = own_cpu_ms();
  } else {
    if (pt->first_pull == 0)
      pt->first_pull = t;
    pt->pull_end = t;
  }
}

/* Syncs db with the server; returns the ms taken. pt (may be NULL) gets
 * the phase times. Fails the benchmark on an error. */
static double sync_once(fieldsync_db *db, unsigned batch,
                        struct fieldsync_sync_stats *st,
                        struct phase_times *pt) {
  struct fieldsync_sync_opts o;
  struct phase_times local;
  double t0;
  double t;
  int rc;

  if (pt == NULL)
    pt = &local;
  memset(&o, 0, sizeof(o));
  memset(pt, 0, sizeof(*pt));
  o.server = srv.addr;
  o.token = token_for(db);
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.batch = batch;
  o.progress = on_progress;
  o.progress_data = pt;
  pt->srv_cpu[0] = proc_cpu_ms(srv.pid);
  pt->own_cpu[0] = own_cpu_ms();
  pt->srv_cpu[1] = pt->srv_cpu[0];
  pt->own_cpu[1] = pt->own_cpu[0];
  t0 = now_ms();
  pt->t0 = t0;
  pt->push_end = t0;
  rc = fieldsync_sync(db, &o, st);
  t = now_ms() - t0;
  pt->srv_cpu[2] = proc_cpu_ms(srv.pid);
  pt->own_cpu[2] = own_cpu_ms();
  if (rc != 0)
    fail_db(db, "sync", rc);
  return t;
}

static int count_cb(const char *json, void *data) {
  (void)json;
  (*(uint64_t *)data)++;
  return 0;
}

/* The number of observations in db. */
static uint64_t count_records(fieldsync_db *db) {
  struct fieldsync_query q;
  uint64_t n = 0;
  int rc;

  memset(&q, 0, sizeof(q));
  q.collection = "observation";
  rc = fieldsync_query(db, &q, count_cb, &n);
  if (rc != 0)
    fail_db(db, "query", rc);
  return n;
}

/* ---- 1 and 6: bulk push and pull, server memory ------------------------ */

/* Kept from scenario 1 (batch 1000) for scenario 3: the server and a
 * client that is in sync with it. */
static fieldsync_db *synced_client;

static void scenario_bulk(const struct sizes *z, unsigned batch,
                          bool keep_for_noop) {
  struct fieldsync_sync_stats st;
  struct phase_times pt;
  fieldsync_db *a;
  fieldsync_db *b;
  char name[64];
  char what[64];
  double rec_ms;
  double total_ms;
  double push_ms;
  double pull_ms;
  double push_rps;
  double pull_rps;
  uint64_t n = z->bulk;
  uint64_t got;
  long rss_idle;
  long hwm_push;
  long hwm;

  printf("[1] push %llu records from one client, pull them into a fresh "
         "one (batch %u)\n",
         (unsigned long long)n, batch);
  fflush(stdout);
  snprintf(name, sizeof(name), "bulk%u.srv", batch);
  fresh_server(name, NULL);
  rss_idle = proc_kb(srv.pid, "VmRSS");
  snprintf(name, sizeof(name), "bulk%u-a.db", batch);
  a = open_client(name);
  rec_ms = record_many(a, 0, n, 1000, NULL);
  printf("    recorded in the client: %.0f ms (%.0f rec/s, untimed)\n", rec_ms,
         (double)n / (rec_ms / 1e3));
  fflush(stdout);

  /* Push: from the start of the sync (connect and handshake included) to
   * the last PushAck stored. The same session then pulls the records back
   * (the feed holds the client's own versions too). */
  total_ms = sync_once(a, batch, &st, &pt);
  if (st.pushed != n || st.acked != n || st.refused != 0 ||
      st.conflicts != 0)
    fail("push: pushed %zu acked %zu refused %zu conflicts %zu, want %llu "
         "applied",
         st.pushed, st.acked, st.refused, st.conflicts,
         (unsigned long long)n);
  if (st.pulled != n)
    fail("pusher pulled %zu versions back, want %llu", st.pulled,
         (unsigned long long)n);
  push_ms = pt.push_end - pt.t0;
  push_rps = (double)n / (push_ms / 1e3);
  hwm_push = proc_kb(srv.pid, "VmHWM");
  printf("    push: %.0f ms (CPU: server %.0f ms, client %.0f ms); the same "
         "session then pulled its own %zu back in %.0f ms (sync total %.0f "
         "ms)\n",
         push_ms, pt.srv_cpu[1] - pt.srv_cpu[0], pt.own_cpu[1] - pt.own_cpu[0],
         st.pulled, total_ms - push_ms, total_ms);
  fflush(stdout);

  /* Pull into a fresh client: the whole sync, handshake included. */
  snprintf(name, sizeof(name), "bulk%u-b.db", batch);
  b = open_client(name);
  pull_ms = sync_once(b, batch, &st, &pt);
  if (st.pulled != n || st.applied != n || st.pushed != 0)
    fail("pull: pulled %zu applied %zu pushed %zu, want %llu", st.pulled,
         st.applied, st.pushed, (unsigned long long)n);
  pull_rps = (double)n / (pull_ms / 1e3);
  hwm = proc_kb(srv.pid, "VmHWM");
  got = count_records(b);
  if (got != n)
    fail("the fresh client holds %llu observations, want %llu",
         (unsigned long long)got, (unsigned long long)n);
  printf("    pull: %.0f ms (CPU: server %.0f ms, client %.0f ms); server RSS "
         "idle %ld kB, peak after push %ld kB, peak after pull %ld kB; "
         "server db %.1f MB\n",
         pull_ms, pt.srv_cpu[2] - pt.srv_cpu[0], pt.own_cpu[2] - pt.own_cpu[0],
         rss_idle, hwm_push, hwm, file_mb(srv.db));
  fflush(stdout);

  snprintf(what, sizeof(what), "1. push %llu x ~500 B, batch %u",
           (unsigned long long)n, batch);
  add_row(what, ">= 50000 rec/s", push_rps >= TARGET_RPS, "%.0f rec/s",
          push_rps);
  snprintf(what, sizeof(what), "1. pull %llu into fresh client, batch %u",
           (unsigned long long)n, batch);
  add_row(what, ">= 50000 rec/s", pull_rps >= TARGET_RPS, "%.0f rec/s",
          pull_rps);
  snprintf(what, sizeof(what), "   pusher's pull-back of own %llu, batch %u",
           (unsigned long long)n, batch);
  add_row(what, "-", -1, "%.0f rec/s",
          (double)n / ((total_ms - push_ms) / 1e3));
  snprintf(what, sizeof(what), "6. server peak RSS, push+pull, batch %u",
           batch);
  add_row(what, "-", -1, "%.1f MB", (double)hwm / 1024.0);

  close_client(a);
  if (keep_for_noop) {
    synced_client = b;
    return; /* the server stays up for scenario 3 */
  }
  close_client(b);
  stop_server();
}

/* ---- 2: incremental sync on a small and a large server ----------------- */

/* Builds a server with n records pushed by client `db` (kept in sync),
 * then times `runs` syncs of `changes` edited records each (after one
 * warm-up run). Returns the median ms. */
static double incremental(const struct sizes *z, uint64_t n) {
  struct fieldsync_sync_stats st;
  struct phase_times pt;
  char (*ids)[33];
  double *t;
  double srv_cpu = 0;
  double own_cpu = 0;
  double rec_ms;
  double sync_ms;
  double med;
  char name[64];
  char what[64];
  fieldsync_db *db;
  unsigned run;

  printf("[2] incremental sync of %u changed records, %llu on the server\n",
         z->incr_changes, (unsigned long long)n);
  fflush(stdout);
  ids = malloc(n * sizeof(*ids));
  t = malloc(z->incr_runs * sizeof(*t));
  if (ids == NULL || t == NULL)
    fail("out of memory");
  snprintf(name, sizeof(name), "incr%llu.srv", (unsigned long long)n);
  fresh_server(name, NULL);
  snprintf(name, sizeof(name), "incr%llu.db", (unsigned long long)n);
  db = open_client(name);
  rec_ms = record_many(db, 0, n, 10000, ids);
  sync_ms = sync_once(db, FSP_DEFAULT_MAX_BATCH, &st, &pt);
  if (st.acked != n || st.pulled != n)
    fail("build: acked %zu pulled %zu, want %llu", st.acked, st.pulled,
         (unsigned long long)n);
  printf("    built: recorded in %.1f s, pushed in %.1f s, pulled back in "
         "%.1f s (%.1f s in all); server db %.0f MB\n",
         rec_ms / 1e3, (pt.push_end - pt.t0) / 1e3,
         (sync_ms - (pt.push_end - pt.t0)) / 1e3, (rec_ms + sync_ms) / 1e3,
         file_mb(srv.db));
  fflush(stdout);
  snprintf(what, sizeof(what), "2. build %llu-record server (rec+push+pull)",
           (unsigned long long)n);
  add_row(what, "-", -1, "%.1f s", (rec_ms + sync_ms) / 1e3);

  for (run = 0; run <= z->incr_runs; run++) {
    uint64_t *pick = malloc(z->incr_changes * sizeof(*pick));
    unsigned i;
    int rc;

    if (pick == NULL)
      fail("out of memory");
    /* Distinct random records, edited in one batch (untimed). */
    for (i = 0; i < z->incr_changes; i++) {
      unsigned j;

      do {
        pick[i] = next_rand() % n;
        for (j = 0; j < i && pick[j] != pick[i]; j++)
          ;
      } while (j < i);
    }
    rc = fieldsync_batch_begin(db);
    if (rc != 0)
      fail_db(db, "batch_begin", rc);
    for (i = 0; i < z->incr_changes; i++) {
      fieldsync_draft *d = NULL;
      char evidence[EVIDENCE_LEN + 1];
      char tag[48];

      snprintf(tag, sizeof(tag), "#%llu edit %u",
               (unsigned long long)pick[i], run);
      make_evidence(evidence, tag);
      rc = fieldsync_draft_for_edit(db, ids[pick[i]], &d);
      if (rc == 0)
        rc = fieldsync_draft_set(d, "evidence_text", evidence);
      if (rc == 0)
        rc = fieldsync_edit(db, d);
      fieldsync_draft_free(d);
      if (rc != 0)
        fail_db(db, "edit", rc);
    }
    rc = fieldsync_batch_commit(db);
    if (rc != 0)
      fail_db(db, "batch_commit", rc);
    free(pick);
    sync_ms = sync_once(db, 0, &st, &pt);
    if (st.pushed != z->incr_changes || st.acked != z->incr_changes ||
        st.conflicts != 0 || st.pulled != z->incr_changes)
      fail("incremental sync: pushed %zu acked %zu conflicts %zu pulled %zu, "
           "want %u each (no conflicts)",
           st.pushed, st.acked, st.conflicts, st.pulled, z->incr_changes);
    if (run > 0) {
      t[run - 1] = sync_ms;
      srv_cpu += pt.srv_cpu[2] - pt.srv_cpu[0];
      own_cpu += pt.own_cpu[2] - pt.own_cpu[0];
    }
  }
  med = quantile(t, z->incr_runs, 0.5);
  printf("    %u runs: median %.2f ms, min %.2f ms, max %.2f ms; mean CPU per "
         "sync: server %.1f ms, client %.1f ms\n",
         z->incr_runs, med, t[0], t[z->incr_runs - 1],
         srv_cpu / z->incr_runs, own_cpu / z->incr_runs);
  fflush(stdout);
  snprintf(what, sizeof(what), "2. sync %u changes, %llu on server, median",
           z->incr_changes, (unsigned long long)n);
  add_row(what, "-", -1, "%.2f ms", med);
  close_client(db);
  stop_server();
  free(ids);
  free(t);
  return med;
}

static void scenario_incremental(const struct sizes *z) {
  double small = incremental(z, z->incr_small);
  double large = incremental(z, z->incr_large);
  char what[64];
  double ratio = large / small;

  snprintf(what, sizeof(what), "2. time ratio %lluk / %lluk records",
           (unsigned long long)(z->incr_large / 1000),
           (unsigned long long)(z->incr_small / 1000));
  add_row(what, "<= 1.5", ratio <= TARGET_INCR_RATIO, "%.2f", ratio);
}

/* ---- 3: no-op sync ----------------------------------------------------- */

static void scenario_noop(const struct sizes *z) {
  struct fieldsync_sync_stats st;
  double *t = malloc(z->noop_runs * sizeof(*t));
  double med;
  double p99;
  bool own = synced_client == NULL;
  unsigned i;

  if (t == NULL)
    fail("out of memory");
  printf("[3] no-op sync (handshake included), %u times\n", z->noop_runs);
  fflush(stdout);
  if (own) {
    /* Without scenario 1: a server and a client with 1,000 records. */
    fieldsync_db *a;

    fresh_server("noop.srv", NULL);
    a = open_client("noop-a.db");
    record_many(a, 0, 1000, 1000, NULL);
    sync_once(a, 0, &st, NULL);
    close_client(a);
    synced_client = open_client("noop-b.db");
    sync_once(synced_client, 0, &st, NULL);
  }
  for (i = 0; i < 5; i++) /* warm-up */
    sync_once(synced_client, 0, &st, NULL);
  for (i = 0; i < z->noop_runs; i++) {
    t[i] = sync_once(synced_client, 0, &st, NULL);
    if (st.pushed != 0 || st.pulled != 0)
      fail("no-op sync moved records: pushed %zu pulled %zu", st.pushed,
           st.pulled);
  }
  med = quantile(t, z->noop_runs, 0.5);
  p99 = quantile(t, z->noop_runs, 0.99);
  printf("    median %.3f ms, p99 %.3f ms, max %.3f ms\n", med, p99,
         t[z->noop_runs - 1]);
  fflush(stdout);
  add_row("3. no-op sync, handshake included, median", "<= 1 ms",
          med <= TARGET_NOOP_MS, "%.3f ms", med);
  add_row("3. no-op sync, p99", "-", -1, "%.3f ms", p99);
  close_client(synced_client);
  synced_client = NULL;
  stop_server();
  free(t);
}

/* ---- raw sessions (4a, 5): the wire protocol without libfieldsync ------ */

static int dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;

  if (fd < 0)
    return -1;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only */
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

/* Reads exactly n bytes within the deadline; 0 or -1. */
static int read_exact(int fd, uint8_t *p, size_t n, double deadline) {
  while (n > 0) {
    struct pollfd pf = {fd, POLLIN, 0};
    double left = deadline - now_ms();
    ssize_t r;

    if (left <= 0)
      return -1;
    if (poll(&pf, 1, (int)left + 1) <= 0)
      continue;
    r = recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* A Hello frame for the global token (fsp_malloc'd, caller frees). */
static int hello_frame(uint8_t **frame, size_t *len) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello hello = FIELDSYNC__HELLO__INIT;
  static const uint8_t replica[16] = {0xbe, 0x4c, 0x40}; /* one device */

  hello.has_protocol_version = 1;
  hello.protocol_version = FSP_PROTOCOL_VERSION;
  hello.has_replica_id = 1;
  hello.replica_id.data = (uint8_t *)replica;
  hello.replica_id.len = sizeof(replica);
  hello.device_token = token;
  hello.client_version = "bench_sync";
  env.has_protocol_version = 1;
  env.protocol_version = FSP_PROTOCOL_VERSION;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
  env.hello = &hello;
  return fsp_msg_encode_frame(&env, FSP_DEFAULT_MAX_FRAME, frame, len);
}

/* Sends all of p; 0 or -1. */
static int send_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads one frame before the deadline and decodes it into m (release with
 * fsp_msg_close). An Error from the server, or a body other than want, is
 * a failure. Returns 0 or -1 with why filled in. */
static int recv_msg(int fd, double deadline, Fieldsync__Envelope__BodyCase want,
                    struct fsp_msg *m, char *why, size_t cap) {
  struct fsp_limits lim;
  struct fsp_error err;
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t *body;
  uint32_t blen;
  int rc;

  m->env = NULL;
  if (read_exact(fd, hdr, sizeof(hdr), deadline) != 0) {
    snprintf(why, cap, "no reply (closed or timed out)");
    return -1;
  }
  blen = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
         (uint32_t)hdr[2] << 8 | hdr[3];
  if (blen == 0 || blen > FSP_DEFAULT_MAX_FRAME) {
    snprintf(why, cap, "reply frame of %u bytes", (unsigned)blen);
    return -1;
  }
  body = malloc(blen);
  if (body == NULL || read_exact(fd, body, blen, deadline) != 0) {
    free(body);
    snprintf(why, cap, "truncated reply");
    return -1;
  }
  fsp_limits_default(&lim);
  rc = fsp_msg_decode(m, body, blen, &lim, &err);
  free(body);
  if (rc != 0) {
    snprintf(why, cap, "bad reply: %s", err.msg);
    return -1;
  }
  if (m->env->body_case != want) {
    snprintf(why, cap, "got %s%s%s", fsp_msg_body_name(m->env),
             m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR ? ": " : "",
             m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
                 ? m->env->error->message
                 : "");
    fsp_msg_close(m);
    return -1;
  }
  return 0;
}

/* Opens a session: connect, Hello, Welcome. Returns the socket or -1 with
 * why filled in. */
static int open_session(int port, char *why, size_t cap) {
  struct fsp_msg m;
  uint8_t *frame = NULL;
  size_t len;
  int fd = dial(port);

  if (fd < 0) {
    snprintf(why, cap, "connect: %s", strerror(errno));
    return -1;
  }
  if (hello_frame(&frame, &len) != 0) {
    snprintf(why, cap, "cannot encode Hello");
    goto fail;
  }
  if (send_all(fd, frame, len) != 0) {
    snprintf(why, cap, "send Hello: %s", strerror(errno));
    goto fail;
  }
  if (recv_msg(fd, now_ms() + SYNC_TIMEOUT_MS,
               FIELDSYNC__ENVELOPE__BODY_WELCOME, &m, why, cap) != 0)
    goto fail;
  fsp_msg_close(&m);
  fsp_free(frame);
  return fd;
fail:
  fsp_free(frame);
  close(fd);
  return -1;
}

/* ---- 4: many concurrent clients ---------------------------------------- */

/* 4a: one raw push-only session: Hello, Push of `records` changes, PushAck
 * (sent by the server after its durable commit), Bye. No pull: with scope
 * enforcement still pending every client pulls the whole feed, so 1,000
 * libfieldsync sessions would pull each other's records 1,000 times over
 * (4b measures that with fewer clients). */
struct push_job {
  pthread_t thread;
  pthread_barrier_t *go;
  unsigned index;
  unsigned records;
  int port;
  bool ok;
  char err[256];
  double ms;        /* connect to PushAck */
  unsigned applied; /* outcomes "applied" */
};

/* Encodes the Push of job j: changes j->index * records + i, each with a
 * 420-byte evidence text (about 500 bytes of payload). */
static int push_frame(const struct push_job *j, uint8_t **frame,
                      size_t *len) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Push push = FIELDSYNC__PUSH__INIT;
  struct sample_change *ch = malloc(j->records * sizeof(*ch));
  Fieldsync__Change **cp = malloc(j->records * sizeof(*cp));
  unsigned i;
  int rc = -1;

  if (ch != NULL && cp != NULL) {
    for (i = 0; i < j->records; i++) {
      sample_change_init(&ch[i], j->index * j->records + i, EVIDENCE_LEN);
      cp[i] = &ch[i].c;
    }
    push.has_batch_id = 1;
    push.batch_id = 1;
    push.n_changes = j->records;
    push.changes = cp;
    env.has_protocol_version = 1;
    env.protocol_version = FSP_PROTOCOL_VERSION;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH;
    env.push = &push;
    rc = fsp_msg_encode_frame(&env, FSP_DEFAULT_MAX_FRAME, frame, len);
  }
  free(ch);
  free(cp);
  return rc;
}

static void *push_main(void *arg) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Bye bye = FIELDSYNC__BYE__INIT;
  struct push_job *j = arg;
  struct fsp_msg m;
  uint8_t *frame = NULL;
  uint8_t *bframe = NULL;
  size_t len = 0;
  size_t blen = 0;
  double t0;
  size_t i;
  int fd = -1;
  bool ready;

  env.body_case = FIELDSYNC__ENVELOPE__BODY_BYE;
  env.bye = &bye;
  ready = push_frame(j, &frame, &len) == 0 &&
          fsp_msg_encode_frame(&env, FSP_DEFAULT_MAX_FRAME, &bframe, &blen) ==
              0;
  if (!ready)
    snprintf(j->err, sizeof(j->err), "cannot encode the Push");
  pthread_barrier_wait(j->go);
  if (!ready)
    goto done;
  t0 = now_ms();
  fd = open_session(j->port, j->err, sizeof(j->err));
  if (fd < 0)
    goto done;
  if (send_all(fd, frame, len) != 0) {
    snprintf(j->err, sizeof(j->err), "send Push: %s", strerror(errno));
    goto done;
  }
  if (recv_msg(fd, t0 + SYNC_TIMEOUT_MS, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK,
               &m, j->err, sizeof(j->err)) != 0)
    goto done;
  j->ms = now_ms() - t0;
  for (i = 0; i < m.env->push_ack->n_outcomes; i++)
    if (m.env->push_ack->outcomes[i]->outcome ==
        FIELDSYNC__OUTCOME__OUTCOME_APPLIED)
      j->applied++;
  if (m.env->push_ack->n_outcomes != j->records)
    snprintf(j->err, sizeof(j->err), "%zu outcomes for %u changes",
             m.env->push_ack->n_outcomes, j->records);
  else
    j->ok = true;
  fsp_msg_close(&m);
  (void)send_all(fd, bframe, blen);
done:
  if (fd >= 0)
    close(fd);
  fsp_free(frame);
  fsp_free(bframe);
  return NULL;
}

static void scenario_push_sessions(const struct sizes *z) {
  const char *extra[] = {"--max-connections", "2000", NULL};
  struct push_job *jobs = calloc(z->clients, sizeof(*jobs));
  double *t = malloc(z->clients * sizeof(*t));
  pthread_barrier_t go;
  pthread_attr_t attr;
  char what[64];
  unsigned ok = 0;
  unsigned i;
  size_t applied = 0;
  long long overflows;
  double t0;
  double wall;
  long hwm;

  if (jobs == NULL || t == NULL)
    fail("out of memory");
  printf("[4a] %u concurrent push-only sessions (raw protocol), %u records "
         "each\n",
         z->clients, z->client_records);
  fflush(stdout);
  fresh_server("push.srv", extra);
  pthread_barrier_init(&go, NULL, z->clients + 1);
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (i = 0; i < z->clients; i++) {
    jobs[i].go = &go;
    jobs[i].index = i;
    jobs[i].records = z->client_records;
    jobs[i].port = srv.port;
    if (pthread_create(&jobs[i].thread, &attr, push_main, &jobs[i]) != 0)
      /* The barrier can never open now; fail() ends the process. */
      fail("cannot start client thread %u", i);
  }
  overflows = listen_overflows();
  pthread_barrier_wait(&go); /* every Push is encoded */
  t0 = now_ms();
  for (i = 0; i < z->clients; i++)
    pthread_join(jobs[i].thread, NULL);
  wall = now_ms() - t0;
  hwm = proc_kb(srv.pid, "VmHWM");
  if (overflows >= 0 && listen_overflows() >= overflows)
    overflows = listen_overflows() - overflows;
  for (i = 0; i < z->clients; i++) {
    if (!jobs[i].ok) {
      fprintf(stderr, "    session %u: %s\n", i, jobs[i].err);
      continue;
    }
    t[ok++] = jobs[i].ms;
    applied += jobs[i].applied;
  }
  printf("    %u of %u completed in %.0f ms; %zu records applied; server "
         "peak RSS %.1f MB; listen queue overflows meanwhile: %lld\n",
         ok, z->clients, wall, applied, (double)hwm / 1024.0, overflows);
  snprintf(what, sizeof(what), "4a. %u push sessions x %u: completed",
           z->clients, z->client_records);
  add_row(what, "all", ok == z->clients &&
                           applied == (size_t)z->clients * z->client_records,
          "%u/%u", ok, z->clients);
  add_row("4a. aggregate rate (durable acks)", "-", -1, "%.0f rec/s",
          (double)applied / (wall / 1e3));
  if (ok > 0) {
    double p50 = quantile(t, ok, 0.5);
    double p99 = quantile(t, ok, 0.99);

    printf("    session time: median %.1f ms, p99 %.1f ms, max %.1f ms\n",
           p50, p99, t[ok - 1]);
    add_row("4a. session time median", "-", -1, "%.1f ms", p50);
    add_row("4a. session time p99", "-", -1, "%.1f ms", p99);
  }
  add_row("4a. server peak RSS", "-", -1, "%.1f MB", (double)hwm / 1024.0);
  fflush(stdout);
  pthread_barrier_destroy(&go);
  pthread_attr_destroy(&attr);
  stop_server();
  free(jobs);
  free(t);
}

/* 4b: libfieldsync clients, each with its own database. */

struct client_job {
  pthread_t thread;
  pthread_barrier_t *go;
  unsigned index;
  unsigned records;
  const char *token; /* its own device's */
  fieldsync_db *db;
  int rc;          /* 0, or the failing call's code */
  char err[256];   /* what failed */
  double ms;       /* session time */
  size_t pushed;
  size_t acked;
  size_t pulled;
};

/* One client thread: records its records (before the barrier, untimed),
 * then syncs once when every client is ready. */
static void *client_main(void *arg) {
  struct client_job *j = arg;
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  char path[600];
  unsigned i;
  double t0;
  int rc;

  snprintf(path, sizeof(path), "%s/clients/c%04u.db", dir, j->index);
  rc = fieldsync_open(path, FIELDSYNC_OPEN_CREATE, NULL, &j->db);
  if (rc == 0)
    rc = fieldsync_batch_begin(j->db);
  for (i = 0; rc == 0 && i < j->records; i++)
    rc = create_obs(j->db, (uint64_t)j->index * 1000000u + i, NULL);
  if (rc == 0)
    rc = fieldsync_batch_commit(j->db);
  if (rc != 0) {
    j->rc = rc;
    snprintf(j->err, sizeof(j->err), "prepare: %s",
             j->db != NULL ? fieldsync_errmsg(j->db) : fieldsync_strerror(rc));
  }
  pthread_barrier_wait(j->go);
  if (j->rc == 0) {
    memset(&o, 0, sizeof(o));
    o.server = srv.addr;
    o.token = j->token;
    o.plaintext = 1;
    o.timeout_ms = SYNC_TIMEOUT_MS;
    t0 = now_ms();
    rc = fieldsync_sync(j->db, &o, &st);
    j->ms = now_ms() - t0;
    j->pushed = st.pushed;
    j->acked = st.acked;
    j->pulled = st.pulled;
    if (rc != 0) {
      j->rc = rc;
      snprintf(j->err, sizeof(j->err), "sync: %s", fieldsync_errmsg(j->db));
    }
  }
  fieldsync_close(j->db);
  j->db = NULL;
  return NULL;
}

static void scenario_concurrent(const struct sizes *z) {
  const char *extra[] = {"--max-connections", "2000", NULL};
  struct client_job *jobs = calloc(z->lib_clients, sizeof(*jobs));
  double *t = malloc(z->lib_clients * sizeof(*t));
  pthread_barrier_t go;
  pthread_attr_t attr;
  char path[600];
  char what[64];
  unsigned ok = 0;
  unsigned i;
  size_t pulled = 0;
  size_t acked = 0;
  double t0;
  double wall;
  long hwm;

  if (jobs == NULL || t == NULL)
    fail("out of memory");
  printf("[4b] %u concurrent libfieldsync clients, %u records each "
         "(each also pulls the whole feed)\n",
         z->lib_clients, z->client_records);
  fflush(stdout);
  snprintf(path, sizeof(path), "%s/clients", dir);
  if (mkdir(path, 0700) != 0 && errno != EEXIST)
    fail("mkdir %s: %s", path, strerror(errno));
  fresh_server("concurrent.srv", extra);
  if (z->lib_clients >= MAX_TOKENS)
    fail("at most %d libfieldsync clients", MAX_TOKENS - 1);
  pthread_barrier_init(&go, NULL, z->lib_clients + 1);
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 512 * 1024);
  for (i = 0; i < z->lib_clients; i++) {
    jobs[i].go = &go;
    jobs[i].index = i;
    jobs[i].records = z->client_records;
    jobs[i].token = tokens[1 + i];
    if (pthread_create(&jobs[i].thread, &attr, client_main, &jobs[i]) != 0)
      /* The barrier can never open now: the threads made so far would
       * wait forever, and fail() ends the process. */
      fail("cannot start client thread %u", i);
  }
  pthread_barrier_wait(&go); /* every client has its records */
  t0 = now_ms();
  for (i = 0; i < z->lib_clients; i++)
    pthread_join(jobs[i].thread, NULL);
  wall = now_ms() - t0;
  hwm = proc_kb(srv.pid, "VmHWM");
  for (i = 0; i < z->lib_clients; i++) {
    if (jobs[i].rc != 0) {
      fprintf(stderr, "    client %u: %s (%s)\n", i, jobs[i].err,
              fieldsync_errname(jobs[i].rc));
      continue;
    }
    if (jobs[i].acked != z->client_records) {
      fprintf(stderr, "    client %u: %zu of %u acknowledged\n", i,
              jobs[i].acked, z->client_records);
      continue;
    }
    t[ok++] = jobs[i].ms;
    acked += jobs[i].acked;
    pulled += jobs[i].pulled;
  }
  printf("    %u of %u completed in %.0f ms; %zu records acknowledged, "
         "%zu pulled in all; server peak RSS %.1f MB\n",
         ok, z->lib_clients, wall, acked, pulled, (double)hwm / 1024.0);
  fflush(stdout);
  snprintf(what, sizeof(what), "4b. %u lib clients x %u: completed",
           z->lib_clients, z->client_records);
  add_row(what, "all", ok == z->lib_clients, "%u/%u", ok, z->lib_clients);
  add_row("4b. aggregate push rate (pulls included)", "-", -1, "%.0f rec/s",
          (double)acked / (wall / 1e3));
  if (ok > 0) {
    double p50 = quantile(t, ok, 0.5);
    double p99 = quantile(t, ok, 0.99);

    printf("    session time: median %.0f ms, p99 %.0f ms, max %.0f ms\n", p50,
           p99, t[ok - 1]);
    add_row("4b. session time p99", "-", -1, "%.0f ms", p99);
    add_row("4b. session time median", "-", -1, "%.0f ms", p50);
  }
  add_row("4b. server peak RSS", "-", -1, "%.1f MB", (double)hwm / 1024.0);
  pthread_barrier_destroy(&go);
  pthread_attr_destroy(&attr);
  stop_server();
  remove_tree(path);
  free(jobs);
  free(t);
}

static void scenario_idle(const struct sizes *z) {
  const char *extra[] = {"--max-connections", "20000", "--idle-timeout-ms",
                         "600000", NULL};
  struct fieldsync_sync_stats st;
  int *fds = malloc(z->idle * sizeof(*fds));
  char why[256];
  char what[64];
  unsigned i;
  unsigned open = 0;
  long rss0;
  long rss;
  long hwm;
  double t0;
  double open_ms;
  double noop_ms;
  fieldsync_db *db;

  if (fds == NULL)
    fail("out of memory");
  printf("[5] %u idle sessions (Hello/Welcome, then nothing)\n", z->idle);
  fflush(stdout);
  fresh_server("idle.srv", extra);
  rss0 = proc_kb(srv.pid, "VmRSS");
  t0 = now_ms();
  for (i = 0; i < z->idle; i++) {
    fds[i] = open_session(srv.port, why, sizeof(why));
    if (fds[i] < 0) {
      unsigned k;

      for (k = 0; k < i; k++)
        close(fds[k]);
      free(fds);
      fail("idle session %u: %s", i, why);
    }
    open++;
  }
  open_ms = now_ms() - t0;
  sleep_ms(1000); /* let the server settle (housekeeping, pool threads) */
  rss = proc_kb(srv.pid, "VmRSS");
  hwm = proc_kb(srv.pid, "VmHWM");
  /* The server still serves a real client with every session open. */
  db = open_client("idle-client.db");
  record_many(db, 0, 10, 10, NULL);
  noop_ms = sync_once(db, 0, &st, NULL);
  if (st.acked != 10)
    fail("sync beside idle sessions: %zu acknowledged, want 10", st.acked);
  close_client(db);
  printf("    opened %u in %.0f ms; server RSS %.1f MB before, %.1f MB with "
         "them (%.1f kB each), peak %.1f MB; a real sync meanwhile took "
         "%.1f ms\n",
         open, open_ms, (double)rss0 / 1024.0,
         (double)rss / 1024.0, (double)(rss - rss0) / (double)open,
         (double)hwm / 1024.0, noop_ms);
  fflush(stdout);
  snprintf(what, sizeof(what), "5. server RSS with %u idle sessions", open);
  add_row(what, "<= 256 MB", (double)rss / 1024.0 <= TARGET_IDLE_RSS_MB,
          "%.1f MB", (double)rss / 1024.0);
  add_row("5. server RSS per idle session", "-", -1, "%.1f kB",
          (double)(rss - rss0) / (double)open);
  for (i = 0; i < open; i++)
    close(fds[i]);
  free(fds);
  stop_server();
}

/* ---- main -------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: bench_sync [--quick] [--only N[,N...]] [--dir DIR]\n"
          "                  [--fieldsyncd PATH] [--admin PATH]\n"
          "scenarios: 1 bulk push/pull, 2 incremental, 3 no-op sync,\n"
          "           4 concurrent clients, 5 idle sessions, 6 server peak\n"
          "           RSS (measured with 1)\n");
  exit(2);
}

/* Raises RLIMIT_NOFILE to its hard limit; fieldsyncd inherits it. */
static rlim_t raise_nofile(void) {
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

int main(int argc, char **argv) {
  static const char words[] = "resident staff medication plan care review "
                              "record consent safeguarding risk training "
                              "observed explained confirmed evidence ";
  const struct sizes *z = &full_sizes;
  const char *parent = getenv("TMPDIR");
  bool only[NSCENARIOS + 1];
  bool any_only = false;
  rlim_t nofile;
  size_t i;
  int a;

  memset(only, 0, sizeof(only));
  for (a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--quick") == 0) {
      z = &quick_sizes;
    } else if (strcmp(argv[a], "--only") == 0 && a + 1 < argc) {
      const char *p = argv[++a];

      while (*p != '\0') {
        char *end = NULL;
        long v = strtol(p, &end, 10);

        if (end == p || v < 1 || v > NSCENARIOS)
          usage();
        only[v] = true;
        any_only = true;
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0')
          usage();
      }
    } else if (strcmp(argv[a], "--dir") == 0 && a + 1 < argc) {
      parent = argv[++a];
    } else if (strcmp(argv[a], "--fieldsyncd") == 0 && a + 1 < argc) {
      fieldsyncd_path = argv[++a];
    } else if (strcmp(argv[a], "--admin") == 0 && a + 1 < argc) {
      admin_path = argv[++a];
    } else {
      usage();
    }
  }
  if (!any_only)
    for (a = 1; a <= NSCENARIOS; a++)
      only[a] = true;
  if (only[6])
    only[1] = true; /* the peak is measured during scenario 1 */

  nofile = raise_nofile();
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  if (parent == NULL || parent[0] == '\0')
    parent = "/tmp";
  snprintf(dir, sizeof(dir), "%s/fieldsync-bsync-XXXXXX", parent);
  if (mkdtemp(dir) == NULL) {
    fprintf(stderr, "bench_sync: mkdtemp %s: %s\n", dir, strerror(errno));
    return 1;
  }
  atexit(cleanup);
  for (i = 0; i < sizeof(pool); i++)
    pool[i] = words[next_rand() % (sizeof(words) - 1)];
  printf("bench_sync: libfieldsync %s, %s run, files in %s, "
         "RLIMIT_NOFILE %llu, %ld CPUs, load average %.2f\n",
         fieldsync_version_string(), z == &quick_sizes ? "quick" : "full", dir,
         (unsigned long long)nofile, sysconf(_SC_NPROCESSORS_ONLN), loadavg());
  fflush(stdout);
  if (only[5] && nofile < (rlim_t)z->idle + 100)
    fprintf(stderr, "bench_sync: RLIMIT_NOFILE %llu is below %u idle "
                    "sessions; scenario 5 will fail\n",
            (unsigned long long)nofile, z->idle);

  if (only[1]) {
    scenario_bulk(z, 1000, only[3]);
    if (only[3])
      scenario_noop(z);
    scenario_bulk(z, FSP_DEFAULT_MAX_BATCH, false);
  } else if (only[3]) {
    scenario_noop(z);
  }
  if (only[2])
    scenario_incremental(z);
  if (only[4]) {
    scenario_push_sessions(z);
    scenario_concurrent(z);
  }
  if (only[5])
    scenario_idle(z);
  print_table();
  printf("load average at the end: %.2f (figures assume an otherwise idle "
         "machine)\n",
         loadavg());
  cleanup();
  return 0;
}
