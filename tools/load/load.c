/* SPDX-License-Identifier: MIT */
/* fieldsync-load: hostile load on fieldsyncd (issue 6, "Hostile load").
 * Starts its own fieldsyncd on 127.0.0.1 port 0 (--plaintext; never another
 * address), makes a user and devices with fieldsync-admin, and keeps
 * healthy clients syncing (each sync: a Push of one change and its PushAck,
 * then Pulls to the end of the feed, over a raw wire session) while it
 * measures their sync times: first a quiet baseline, then under each
 * hostile scenario in turn:
 *   idle       many connections that send nothing (half of them after a
 *              Hello), closed by the handshake and idle deadlines;
 *   slowloris  sessions dribbling a frame, a byte at a time, header first,
 *              declaring the largest frame, closed by the frame deadline;
 *   noread     sessions that pipeline Pulls and never read a reply, closed
 *              by the write deadline (or the idle one, when the kernel's
 *              socket buffers took every reply);
 *   tiny       sessions flooding tiny Pulls, many in flight, held to the
 *              server's default --max-requests-per-s (100);
 *   errors     connections flooding error-provoking frames (six kinds), one
 *              each, and reconnecting; each must get its Error;
 *   fd         a restart with a low RLIMIT_NOFILE ("fd-base" measures it
 *              quiet): connections opened past the limit (ERR_BUSY, then
 *              shed; "fd-limit"), then every descriptor taken (RLIMIT_NOFILE
 *              lowered under the server's use with prlimit; "fd-gone"),
 *              which leaves libuv without its spare descriptor: the server
 *              must pause accepting, log once, not spin, and resume.
 * For each: the healthy clients' p99 against the baseline (goal: at most
 * 2x and under 250 ms), none of their syncs failing, the server still up
 * and accepting, its RSS growth against connections x the per-connection
 * cap that applies (srv_conn.c, "Memory"), its CPU, and how many hostile
 * peers it closed by their deadlines (counted from its log). The server
 * runs with short deadlines and a request rate limit (printed first).
 * Prints a table and the goals; exits 1 when a goal fails. --quick (small
 * counts, a few seconds each; the ctest smoke test) judges the functional
 * goals only: timing, CPU and memory belong to the full run, on a Release
 * build (about 3 minutes).
 * Usage: fieldsync-load [--quick] [--only NAME,...] [--fieldsyncd PATH]
 *                       [--admin PATH]
 * Files go in a fresh directory under $TMPDIR (or /tmp), removed at exit
 * unless FIELDSYNC_KEEP_TMP=1. Linux: it reads /proc and uses prlimit. */
#define _GNU_SOURCE /* prlimit(2) */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "proc.h"

#ifndef LOAD_FIELDSYNCD
#define LOAD_FIELDSYNCD "fieldsyncd"
#endif
#ifndef LOAD_ADMIN
#define LOAD_ADMIN "fieldsync-admin"
#endif

/* The goals for the healthy clients' p99 under hostile load. */
#define GOAL_P99_RATIO 2.0
#define GOAL_P99_MS 250.0
/* Server CPU (percent of one core) that out of descriptors may add to the
 * healthy load's: a listener spinning on accept takes a whole core. */
#define GOAL_CPU_PCT 25.0
/* The server's per-connection memory (srv_conn.c, "Memory"): the struct,
 * its libuv handle and allocator overhead, rounded up. */
#define CONN_STRUCT_BYTES 4096.0

/* fieldsyncd's default --max-requests-per-s, which the run measures. */
#define MAX_REQUESTS_PER_S 100
#define MAX_HEALTHY 64
#define SYNC_WAIT_MS 10000
#define TICK_MS 10
#define MAX_CONNECTING 512

/* Sizes of a run. */
struct plan {
  unsigned healthy;     /* healthy clients */
  unsigned think_ms;    /* mean pause between one client's syncs */
  unsigned window_ms;   /* measuring time per scenario */
  unsigned deadline_ms; /* the server's four deadlines, for the run */
  unsigned idle;        /* idle connections (every second one says Hello) */
  unsigned slowloris;
  unsigned dribble_ms; /* a slowloris peer's pause between bytes */
  unsigned noread;
  unsigned noread_pulls; /* Pulls each never-reading session pipelines */
  unsigned tiny;         /* tiny-frame flooders */
  unsigned tiny_depth;   /* requests each keeps in flight */
  unsigned errflood;     /* error-frame flooders */
  unsigned nofile;       /* the fd scenario's RLIMIT_NOFILE */
  unsigned over;         /* connections the fd scenario opens */
  bool judge_timing;     /* p99, RSS and CPU goals (not in --quick) */
};

static const struct plan full_plan = {.healthy = 50,
                                      .think_ms = 250,
                                      .window_ms = 10000,
                                      .deadline_ms = 30000,
                                      .idle = 10000,
                                      .slowloris = 1000,
                                      .dribble_ms = 1000,
                                      .noread = 100,
                                      .noread_pulls = 64,
                                      .tiny = 20,
                                      .tiny_depth = 16,
                                      .errflood = 20,
                                      .nofile = 512,
                                      .over = 800,
                                      .judge_timing = true};
static const struct plan quick_plan = {.healthy = 8,
                                       .think_ms = 100,
                                       .window_ms = 1500,
                                       .deadline_ms = 4000,
                                       .idle = 200,
                                       .slowloris = 40,
                                       .dribble_ms = 200,
                                       .noread = 8,
                                       .noread_pulls = 32,
                                       .tiny = 4,
                                       .tiny_depth = 8,
                                       .errflood = 4,
                                       .nofile = 160,
                                       .over = 260,
                                       .judge_timing = false};

/* ---- process-wide state ------------------------------------------------ */

static struct plan P;
static struct test_server srv;
static volatile sig_atomic_t srv_pid_for_signal;
static char dir[256];
static char db[320];
static const char *fieldsyncd_path = LOAD_FIELDSYNCD;
static const char *admin_path = LOAD_ADMIN;
static char *server_args[24];
static char server_arg_buf[8][32];
static char healthy_tokens[MAX_HEALTHY][96];
static char hostile_token[96];
static const uint8_t hostile_replica[16] = {0x4c, 0x0a, 0xd0};
static _Atomic int srv_port;
static size_t log_mark; /* server log offset at the scenario's start */

static double now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void nap_ms(double ms) {
  proc_sleep_ms(ms);
}

static void die(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

/* Reports and exits 1; the harness's exit hook kills the server and
 * removes the directory. */
static void die(const char *fmt, ...) {
  va_list ap;

  fflush(stdout);
  fprintf(stderr, "fieldsync-load: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  if (srv.pid > 0)
    fprintf(stderr,
            "fieldsync-load: server log %s (kept with "
            "FIELDSYNC_KEEP_TMP=1)\n",
            srv.log);
  exit(1);
}

static void on_signal(int sig) {
  pid_t pid = (pid_t)srv_pid_for_signal;

  if (pid > 0)
    kill(pid, SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* ---- /proc ------------------------------------------------------------- */

/* Reads up to cap-1 bytes of path into buf (NUL-terminated); false when it
 * cannot be opened. */
static bool slurp(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  size_t n;

  if (f == NULL)
    return false;
  n = fread(buf, 1, cap - 1, f);
  buf[n] = '\0';
  fclose(f);
  return true;
}

/* A "Name:   N kB" field of /proc/PID/status in KiB, or -1. */
static long status_kb(pid_t pid, const char *name) {
  char path[64];
  char buf[4096];
  const char *p;

  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  if (!slurp(path, buf, sizeof(buf)))
    return -1;
  p = strstr(buf, name);
  if (p == NULL || p[strlen(name)] != ':')
    return -1;
  return strtol(p + strlen(name) + 1, NULL, 10);
}

/* User + system CPU of pid in ms (/proc/PID/stat fields 14 and 15). */
static double cpu_ms(pid_t pid) {
  char path[64];
  char buf[1024];
  unsigned long long ticks[2] = {0, 0};
  const char *p;
  int field = 3;

  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  if (!slurp(path, buf, sizeof(buf)) || (p = strrchr(buf, ')')) == NULL)
    return 0;
  for (p += 2; *p != '\0' && field <= 15; field++) {
    if (field >= 14)
      ticks[field - 14] = strtoull(p, NULL, 10);
    p = strchr(p, ' ');
    if (p == NULL)
      break;
    p++;
  }
  return (double)(ticks[0] + ticks[1]) * 1e3 / (double)sysconf(_SC_CLK_TCK);
}

/* Open descriptors of pid. */
static unsigned count_fds(pid_t pid) {
  char path[64];
  unsigned n = 0;
  struct dirent *e;
  DIR *d;

  snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
  d = opendir(path);
  if (d == NULL)
    return 0;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.')
      n++;
  closedir(d);
  return n;
}

static double load_average(void) {
  char buf[128];

  return slurp("/proc/loadavg", buf, sizeof(buf)) ? strtod(buf, NULL) : -1;
}

/* Lines of the server log written since log_mark that contain every one of
 * the NULL-terminated words. */
static unsigned log_count(const char *const *words) {
  char line[2048];
  unsigned n = 0;
  FILE *f = fopen(srv.log, "r");

  if (f == NULL)
    return 0;
  if (fseek(f, (long)log_mark, SEEK_SET) != 0) {
    fclose(f);
    return 0;
  }
  while (fgets(line, sizeof(line), f) != NULL) {
    const char *const *w = words;

    while (*w != NULL && strstr(line, *w) != NULL)
      w++;
    if (*w == NULL)
      n++;
  }
  fclose(f);
  return n;
}

/* Deadline closes the server logged for phase ("phase=idle" ends its line,
 * "phase=frame" has more after it). */
static unsigned log_timeouts(const char *phase) {
  char want[32];
  const char *words[] = {"event=timeout", want, NULL};
  unsigned n;

  snprintf(want, sizeof(want), "phase=%s ", phase);
  n = log_count(words);
  snprintf(want, sizeof(want), "phase=%s\n", phase);
  return n + log_count(words);
}

static void log_set_mark(void) {
  FILE *f = fopen(srv.log, "r");

  log_mark = 0;
  if (f != NULL && fseek(f, 0, SEEK_END) == 0)
    log_mark = (size_t)ftell(f);
  if (f != NULL)
    fclose(f);
}

/* ---- frames ------------------------------------------------------------ */

static void encode(Fieldsync__Envelope *env, uint8_t **frame, size_t *len) {
  if (fsp_msg_encode_frame(env, FSP_DEFAULT_MAX_FRAME, frame, len) != 0)
    die("cannot encode a %s", fsp_msg_body_name(env));
}

static void hello_frame(const char *token, const uint8_t replica[16],
                        uint8_t **frame, size_t *len) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello h = FIELDSYNC__HELLO__INIT;

  h.has_protocol_version = 1;
  h.protocol_version = FSP_PROTOCOL_VERSION;
  h.has_replica_id = 1;
  h.replica_id.data = (uint8_t *)replica;
  h.replica_id.len = 16;
  h.device_token = (char *)token;
  h.client_version = "fieldsync-load";
  env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  encode(&env, frame, len);
}

static void pull_frame(uint64_t cursor, uint32_t max_records, uint8_t **frame,
                       size_t *len) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Pull pl = FIELDSYNC__PULL__INIT;

  pl.has_cursor = 1;
  pl.cursor = cursor;
  pl.has_max_records = 1;
  pl.max_records = max_records;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PULL;
  env.pull = &pl;
  encode(&env, frame, len);
}

/* A Push of one ~200-byte observation, change number n (distinct per
 * client and sync, so every push applies). */
static void push_frame(uint32_t n, uint64_t batch_id, uint8_t **frame,
                       size_t *len) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Push push = FIELDSYNC__PUSH__INIT;
  struct sample_change ch;
  Fieldsync__Change *cp = &ch.c;

  sample_change_init(&ch, n, 200);
  push.has_batch_id = 1;
  push.batch_id = batch_id;
  push.n_changes = 1;
  push.changes = &cp;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH;
  env.push = &push;
  encode(&env, frame, len);
}

/* ---- healthy clients: blocking raw sessions, one thread each ------------ */

struct healthy {
  pthread_t thread;
  unsigned index;
  uint8_t replica[16];
  int fd;
  struct fsp_frame_decoder dec;
  uint8_t in[32 * 1024];
  size_t in_off;
  size_t in_len;
  uint64_t cursor;
  uint32_t seq;
  uint64_t rng;
};

static struct healthy *healthy;
static atomic_bool h_stop;
static atomic_bool h_pause;
static atomic_uint h_parked;
/* Samples of the window being measured (window >= 0). */
static _Atomic int h_window = -1;
static pthread_mutex_t h_lock = PTHREAD_MUTEX_INITIALIZER;
static double *h_samples;
static size_t h_nsamples;
static size_t h_cap;
static unsigned h_fails;
static char h_last_err[256];

static int h_dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
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

/* Waits for fd to be ready for events before deadline: 0, or -1. */
static int h_wait(int fd, short events, double deadline) {
  for (;;) {
    struct pollfd p = {fd, events, 0};
    double left = deadline - now_ms();
    int r;

    if (left <= 0)
      return -1;
    r = poll(&p, 1, (int)left + 1);
    if (r > 0)
      return 0;
    if (r < 0 && errno != EINTR)
      return -1;
  }
}

static int h_send(struct healthy *h, const uint8_t *p, size_t n,
                  double deadline) {
  while (n > 0) {
    ssize_t w;

    if (h_wait(h->fd, POLLOUT, deadline) != 0)
      return -1;
    w = send(h->fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Reads the next message; it must be `want` (an Error is a failure with
 * its text). Returns 0, or -1 with why filled in. */
static int h_recv(struct healthy *h, Fieldsync__Envelope__BodyCase want,
                  struct fsp_msg *m, double deadline, char *why, size_t cap) {
  for (;;) {
    while (h->in_off < h->in_len) {
      size_t used = 0;
      int rc = fsp_frame_feed(&h->dec, h->in + h->in_off, h->in_len - h->in_off,
                              &used);
      struct fsp_limits lim;
      struct fsp_error err;
      uint8_t *body;
      size_t len;

      h->in_off += used;
      if (rc < 0) {
        snprintf(why, cap, "bad frame from the server: %s",
                 fsp_err_strerror(rc));
        return -1;
      }
      if (rc == 0)
        continue;
      fsp_frame_take(&h->dec, &body, &len);
      fsp_limits_default(&lim);
      memset(&err, 0, sizeof(err));
      rc = fsp_msg_decode(m, body, len, &lim, &err);
      fsp_free(body);
      if (rc != 0) {
        snprintf(why, cap, "bad reply: %s", err.msg);
        return -1;
      }
      if (m->env->body_case == want)
        return 0;
      if (m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR)
        snprintf(why, cap, "Error %d: %s", (int)m->env->error->code,
                 m->env->error->message);
      else
        snprintf(why, cap, "got %s", fsp_msg_body_name(m->env));
      fsp_msg_close(m);
      return -1;
    }
    {
      ssize_t r;

      if (h_wait(h->fd, POLLIN, deadline) != 0) {
        snprintf(why, cap, "no reply within %d ms", SYNC_WAIT_MS);
        return -1;
      }
      r = recv(h->fd, h->in, sizeof(h->in), 0);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0) {
        snprintf(why, cap, "connection %s", r == 0 ? "closed" : "reset");
        return -1;
      }
      h->in_off = 0;
      h->in_len = (size_t)r;
    }
  }
}

/* One request and its reply. */
static int h_call(struct healthy *h, uint8_t *frame, size_t len,
                  Fieldsync__Envelope__BodyCase want, struct fsp_msg *m,
                  char *why, size_t cap) {
  double deadline = now_ms() + SYNC_WAIT_MS;
  int rc = h_send(h, frame, len, deadline);

  fsp_free(frame);
  if (rc != 0) {
    snprintf(why, cap, "send failed: %s", strerror(errno));
    return -1;
  }
  return h_recv(h, want, m, deadline, why, cap);
}

static void h_hangup(struct healthy *h) {
  if (h->fd >= 0)
    close(h->fd);
  h->fd = -1;
  fsp_frame_decoder_close(&h->dec);
  fsp_frame_decoder_init(&h->dec, 0);
  h->in_off = h->in_len = 0;
}

/* Connect, Hello, Welcome. */
static int h_open(struct healthy *h, const char *token, char *why, size_t cap) {
  struct fsp_msg m;
  uint8_t *frame;
  size_t len;

  h_hangup(h);
  h->fd = h_dial(atomic_load(&srv_port));
  if (h->fd < 0) {
    snprintf(why, cap, "connect: %s", strerror(errno));
    return -1;
  }
  hello_frame(token, h->replica, &frame, &len);
  if (h_call(h, frame, len, FIELDSYNC__ENVELOPE__BODY_WELCOME, &m, why, cap) !=
      0) {
    h_hangup(h);
    return -1;
  }
  fsp_msg_close(&m);
  return 0;
}

/* One sync: Push one change (PushAck), then Pull until nothing more. */
static int h_sync(struct healthy *h, char *why, size_t cap) {
  struct fsp_msg m;
  uint8_t *frame;
  size_t len;
  bool more = true;
  int pulls = 0;

  h->seq++;
  push_frame(h->index * 10000000u + h->seq, h->seq, &frame, &len);
  if (h_call(h, frame, len, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, &m, why, cap) !=
      0)
    return -1;
  if (m.env->push_ack->n_outcomes != 1 ||
      m.env->push_ack->outcomes[0]->outcome !=
          FIELDSYNC__OUTCOME__OUTCOME_APPLIED) {
    snprintf(why, cap, "push not applied");
    fsp_msg_close(&m);
    return -1;
  }
  fsp_msg_close(&m);
  while (more && pulls++ < 1000) {
    pull_frame(h->cursor, 1000, &frame, &len);
    if (h_call(h, frame, len, FIELDSYNC__ENVELOPE__BODY_CHANGES, &m, why,
               cap) != 0)
      return -1;
    h->cursor = m.env->changes->next_cursor;
    more = m.env->changes->has_more && m.env->changes->more;
    fsp_msg_close(&m);
  }
  return 0;
}

/* Slow syncs of the window (over SLOW_SYNC_MS): how many, and the first
 * and last one's end, so a report can tell one stall from many. */
#define SLOW_SYNC_MS 100.0
static unsigned h_slow;
static double h_slow_first;
static double h_slow_last;

static void h_record(int window, double ms, const char *err) {
  pthread_mutex_lock(&h_lock);
  if (window >= 0 && window == atomic_load(&h_window)) {
    if (err != NULL) {
      h_fails++;
      snprintf(h_last_err, sizeof(h_last_err), "%s", err);
    } else {
      if (h_nsamples == h_cap) {
        size_t cap = h_cap == 0 ? 4096 : h_cap * 2;
        double *p = realloc(h_samples, cap * sizeof(*p));

        if (p != NULL) {
          h_samples = p;
          h_cap = cap;
        }
      }
      if (h_nsamples < h_cap)
        h_samples[h_nsamples++] = ms;
      if (ms > SLOW_SYNC_MS) {
        if (h_slow++ == 0)
          h_slow_first = now_ms();
        h_slow_last = now_ms();
      }
    }
  }
  pthread_mutex_unlock(&h_lock);
}

static void *h_main(void *arg) {
  struct healthy *h = arg;
  char why[256];

  while (!atomic_load(&h_stop)) {
    int window;
    double t0;
    int rc;

    if (atomic_load(&h_pause)) {
      h_hangup(h);
      atomic_fetch_add(&h_parked, 1);
      while (atomic_load(&h_pause) && !atomic_load(&h_stop))
        nap_ms(10);
      atomic_fetch_sub(&h_parked, 1);
      continue;
    }
    window = atomic_load(&h_window);
    t0 = now_ms();
    rc = 0;
    if (h->fd < 0)
      rc = h_open(h, healthy_tokens[h->index], why, sizeof(why));
    if (rc == 0) {
      t0 = now_ms(); /* a sync, not the handshake */
      rc = h_sync(h, why, sizeof(why));
    }
    if (rc != 0) {
      h_record(window, 0, why);
      h_hangup(h);
      nap_ms(100);
      continue;
    }
    h_record(window, now_ms() - t0, NULL);
    h->rng = h->rng * 6364136223846793005ull + 1442695040888963407ull;
    nap_ms(P.think_ms / 2.0 + (double)((h->rng >> 33) % (P.think_ms + 1)));
  }
  h_hangup(h);
  fsp_frame_decoder_close(&h->dec);
  return NULL;
}

static void healthy_start(void) {
  unsigned i;

  healthy = calloc(P.healthy, sizeof(*healthy));
  if (healthy == NULL)
    die("out of memory");
  for (i = 0; i < P.healthy; i++) {
    struct healthy *h = &healthy[i];

    h->index = i;
    h->fd = -1;
    h->rng = 0x9e3779b97f4a7c15ull * (i + 1);
    memset(h->replica, 0x70, sizeof(h->replica));
    h->replica[14] = (uint8_t)(i >> 8);
    h->replica[15] = (uint8_t)i;
    fsp_frame_decoder_init(&h->dec, 0);
    if (pthread_create(&h->thread, NULL, h_main, h) != 0)
      die("pthread_create failed");
  }
}

static void healthy_stop(void) {
  unsigned i;

  atomic_store(&h_stop, true);
  for (i = 0; i < P.healthy; i++)
    pthread_join(healthy[i].thread, NULL);
  free(healthy);
  healthy = NULL;
}

/* Parks every healthy client, sessions closed (before a restart). */
static void healthy_park(void) {
  double deadline = now_ms() + 3 * SYNC_WAIT_MS;

  atomic_store(&h_pause, true);
  while (atomic_load(&h_parked) < P.healthy) {
    if (now_ms() > deadline)
      die("healthy clients did not stop");
    nap_ms(10);
  }
}

static void healthy_resume(void) {
  atomic_store(&h_pause, false);
}

/* A fresh session gets its Welcome within 5 s: the server is up and
 * accepting. */
static bool probe(void) {
  static struct healthy h;
  char why[256];
  double deadline = now_ms() + 5000;
  bool ok = false;

  if (srv.pid <= 0 || waitpid(srv.pid, NULL, WNOHANG) != 0)
    return false;
  memset(&h, 0, sizeof(h));
  h.fd = -1;
  memcpy(h.replica, hostile_replica, 16);
  fsp_frame_decoder_init(&h.dec, 0);
  while (!ok && now_ms() < deadline) {
    ok = h_open(&h, hostile_token, why, sizeof(why)) == 0;
    if (!ok)
      nap_ms(100);
  }
  if (!ok)
    fprintf(stderr, "fieldsync-load: probe failed: %s\n", why);
  h_hangup(&h);
  fsp_frame_decoder_close(&h.dec);
  return ok;
}

/* ---- hostile peers: one libuv loop in the main thread ------------------- */

enum pkind {
  PK_IDLE,      /* connects, sends nothing */
  PK_IDLE_AUTH, /* Hello, then nothing */
  PK_SLOW,      /* Hello, then a frame a byte at a time */
  PK_NOREAD,    /* Hello, then Pulls, never reads */
  PK_TINY,      /* Hello, then tiny Pulls, many in flight */
  PK_ERR,       /* one error-provoking frame, then reconnects */
  PK_OVER       /* fd scenario: connects and holds */
};

#define NERRKINDS 6
static const char *const errkind_name[NERRKINDS] = {
    "zero length",       "length over the limit", "garbage body",
    "pull before hello", "unknown token",         "wrong protocol version"};
static const int errkind_code[NERRKINDS] = {
    FIELDSYNC__ERROR_CODE__ERR_MALFORMED,
    FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE,
    FIELDSYNC__ERROR_CODE__ERR_MALFORMED,
    FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE,
    FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED,
    FIELDSYNC__ERROR_CODE__ERR_PROTOCOL_VERSION};

struct peer {
  uv_tcp_t tcp;
  uv_connect_t creq;
  enum pkind kind;
  bool open;    /* uv_tcp_init done, close_cb not yet run */
  bool closing; /* uv_close called */
  bool connected;
  bool authed;
  bool lost;      /* the server closed it (EOF, reset) or refused it */
  bool by_us;     /* we closed it */
  bool draining;  /* noread: reading at last, to see the close */
  int error_code; /* the first Error's code; -1 = none */
  int errkind;
  double t_start;
  double next_at; /* slowloris: next byte; errors: next connect */
  uint32_t dribbled;
  unsigned inflight;
  struct fsp_frame_decoder dec;
};

struct counters {
  unsigned started;
  unsigned connect_failed;
  unsigned connected;
  unsigned authed;
  unsigned lost;
  unsigned timeouts;  /* Error ERR_TIMEOUT received */
  unsigned busy;      /* Error ERR_BUSY received */
  unsigned other_err; /* an unexpected Error */
  unsigned silent;    /* lost without an Error */
  uint64_t tiny_replies;
  uint64_t err_cycles; /* error-flood connections that got their Error */
  uint64_t err_wrong;  /* ... that got another code or none */
  uint64_t err_by_kind[NERRKINDS];
  char last_wrong[160];
};

static uv_loop_t *loop;
static uv_timer_t tick;
static struct sockaddr_in srv_addr;
static struct peer **peers;
static size_t npeers;
static size_t peers_cap;
static unsigned connecting;
static unsigned open_handles;
static struct counters hc;
static uint8_t read_buf[64 * 1024];
static bool flooding;        /* tiny/errors: keep going */
static double trickle_every; /* fd: ms between extra connects; 0 = off */
static double trickle_next;
static unsigned trickled;
/* RSS sampled while measuring. */
static bool rss_sampling;
static double rss_next;
static long rss_peak_kb;
static long vsz_peak_kb;
static const uint8_t *frame_tiny;
static size_t frame_tiny_len;
static uint8_t *frame_hello;
static size_t frame_hello_len;
static uint8_t *frame_pull0;
static size_t frame_pull0_len;

static void peer_connect(struct peer *p);

static struct peer *peer_add(enum pkind kind) {
  struct peer *p = calloc(1, sizeof(*p));

  if (p == NULL)
    die("out of memory");
  if (npeers == peers_cap) {
    size_t cap = peers_cap == 0 ? 1024 : peers_cap * 2;
    struct peer **np = realloc(peers, cap * sizeof(*np));

    if (np == NULL)
      die("out of memory");
    peers = np;
    peers_cap = cap;
  }
  p->kind = kind;
  p->error_code = -1;
  peers[npeers++] = p;
  return p;
}

static void on_peer_closed(uv_handle_t *h) {
  struct peer *p = h->data;

  p->open = false;
  open_handles--;
  fsp_frame_decoder_close(&p->dec);
}

static void peer_close(struct peer *p) {
  if (p->open && !p->closing) {
    p->closing = true;
    uv_close((uv_handle_t *)&p->tcp, on_peer_closed);
  }
}

/* The server ended the connection (or refused it): counts why. */
static void peer_lost(struct peer *p) {
  if (!p->lost && !p->by_us) {
    p->lost = true;
    hc.lost++;
    if (p->error_code < 0)
      hc.silent++;
    if (p->kind == PK_ERR) {
      if (p->error_code == errkind_code[p->errkind]) {
        hc.err_cycles++;
        hc.err_by_kind[p->errkind]++;
      } else {
        hc.err_wrong++;
        snprintf(hc.last_wrong, sizeof(hc.last_wrong), "%s: got %d",
                 errkind_name[p->errkind], p->error_code);
      }
    }
  }
  peer_close(p);
}

struct wreq {
  uv_write_t req;
  struct peer *p;
  uint8_t data[];
};

static void on_written(uv_write_t *req, int status) {
  struct wreq *w = (struct wreq *)req;

  if (status < 0 && status != UV_ECANCELED && !w->p->closing)
    peer_lost(w->p);
  free(w);
}

static void peer_write(struct peer *p, const uint8_t *data, size_t len) {
  struct wreq *w;
  uv_buf_t b;

  if (!p->open || p->closing)
    return;
  w = malloc(sizeof(*w) + len);
  if (w == NULL)
    die("out of memory");
  w->p = p;
  memcpy(w->data, data, len);
  b = uv_buf_init((char *)w->data, (unsigned)len);
  if (uv_write(&w->req, (uv_stream_t *)&p->tcp, &b, 1, on_written) != 0) {
    free(w);
    peer_lost(p);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  *buf = uv_buf_init((char *)read_buf, sizeof(read_buf));
}

/* The bad frame of error kind k. */
static void err_frame(int k, uint8_t **frame, size_t *len) {
  static const uint8_t zero[] = {0, 0, 0, 0};
  static const uint8_t huge[] = {0x7f, 0xff, 0xff, 0xff};
  static const uint8_t garbage[] = {0, 0, 0, 6, 'g', 'a', 'r', 'b', 'a', 'g'};
  const uint8_t *fixed = NULL;
  size_t n = 0;

  switch (k) {
  case 0:
    fixed = zero;
    n = sizeof(zero);
    break;
  case 1:
    fixed = huge;
    n = sizeof(huge);
    break;
  case 2:
    fixed = garbage;
    n = sizeof(garbage);
    break;
  case 3:
    pull_frame(0, 10, frame, len);
    return;
  case 4:
    hello_frame(
        "0000000000000000000000000000000000000000000000000000000000000000",
        hostile_replica, frame, len);
    return;
  default: {
    struct sample_envelope s;

    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
    s.env.protocol_version = 99;
    s.hello.protocol_version = 99;
    s.hello.device_token = hostile_token;
    encode(&s.env, frame, len);
    return;
  }
  }
  *frame = fsp_malloc(n);
  if (*frame == NULL)
    die("out of memory");
  memcpy(*frame, fixed, n);
  *len = n;
}

/* A session is up: each kind starts its part. */
static void on_welcome(struct peer *p) {
  unsigned i;

  p->authed = true;
  hc.authed++;
  switch (p->kind) {
  case PK_SLOW:
    p->next_at = now_ms() + (double)(rand() % (int)(P.dribble_ms + 1));
    break;
  case PK_NOREAD:
    uv_read_stop((uv_stream_t *)&p->tcp);
    for (i = 0; i < P.noread_pulls; i++)
      peer_write(p, frame_pull0, frame_pull0_len);
    break;
  case PK_TINY:
    for (i = 0; i < P.tiny_depth; i++)
      peer_write(p, frame_tiny, frame_tiny_len);
    p->inflight = P.tiny_depth;
    break;
  default:
    break;
  }
}

static void on_message(struct peer *p, const Fieldsync__Envelope *env) {
  switch (env->body_case) {
  case FIELDSYNC__ENVELOPE__BODY_WELCOME:
    on_welcome(p);
    break;
  case FIELDSYNC__ENVELOPE__BODY_ERROR:
    if (p->error_code < 0) {
      p->error_code = (int)env->error->code;
      if (p->error_code == FIELDSYNC__ERROR_CODE__ERR_TIMEOUT)
        hc.timeouts++;
      else if (p->error_code == FIELDSYNC__ERROR_CODE__ERR_BUSY)
        hc.busy++;
      else if (p->kind != PK_ERR)
        hc.other_err++;
    }
    break;
  case FIELDSYNC__ENVELOPE__BODY_CHANGES:
    if (p->kind == PK_TINY) {
      hc.tiny_replies++;
      p->inflight--;
      if (flooding) {
        peer_write(p, frame_tiny, frame_tiny_len);
        p->inflight++;
      }
    }
    break;
  default:
    break;
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct peer *p = s->data;
  size_t off = 0;

  if (nread < 0) {
    peer_lost(p);
    return;
  }
  if (p->draining || p->closing)
    return; /* a never-reading peer's backlog: only the close matters */
  while (off < (size_t)nread) {
    size_t used = 0;
    int rc = fsp_frame_feed(&p->dec, (const uint8_t *)buf->base + off,
                            (size_t)nread - off, &used);
    struct fsp_limits lim;
    struct fsp_error err;
    struct fsp_msg m;
    uint8_t *body;
    size_t len;

    off += used;
    if (rc < 0)
      die("bad frame from the server: %s", fsp_err_strerror(rc));
    if (rc == 0)
      continue;
    fsp_frame_take(&p->dec, &body, &len);
    fsp_limits_default(&lim);
    memset(&err, 0, sizeof(err));
    rc = fsp_msg_decode(&m, body, len, &lim, &err);
    fsp_free(body);
    if (rc != 0)
      die("bad message from the server: %s", err.msg);
    on_message(p, m.env);
    fsp_msg_close(&m);
    if (p->closing)
      return;
  }
}

static void on_connect(uv_connect_t *req, int status) {
  struct peer *p = req->data;
  uint8_t *frame;
  size_t len;

  connecting--;
  if (status == UV_ECANCELED)
    return;
  if (status != 0) {
    hc.connect_failed++;
    peer_lost(p);
    return;
  }
  p->connected = true;
  hc.connected++;
  uv_tcp_nodelay(&p->tcp, 1);
  if (uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read) != 0) {
    peer_lost(p);
    return;
  }
  switch (p->kind) {
  case PK_IDLE_AUTH:
  case PK_SLOW:
  case PK_NOREAD:
  case PK_TINY:
    peer_write(p, frame_hello, frame_hello_len);
    break;
  case PK_ERR:
    err_frame(p->errkind, &frame, &len);
    peer_write(p, frame, len);
    fsp_free(frame);
    break;
  default:
    break;
  }
}

static void peer_connect(struct peer *p) {
  int rc;

  p->open = p->closing = p->connected = p->authed = false;
  p->lost = p->by_us = p->draining = false;
  p->error_code = -1;
  p->dribbled = 0;
  p->inflight = 0;
  p->t_start = now_ms();
  fsp_frame_decoder_init(&p->dec, 0);
  uv_tcp_init(loop, &p->tcp);
  p->tcp.data = p;
  p->creq.data = p;
  p->open = true;
  open_handles++;
  hc.started++;
  rc = uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&srv_addr,
                      on_connect);
  if (rc != 0) {
    hc.connect_failed++;
    p->lost = true;
    peer_close(p);
    return;
  }
  connecting++;
}

/* Sends the next slowloris byte: the header of a frame of the largest
 * size, then its body, one byte each time. */
static void dribble(struct peer *p, double now) {
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t b;

  fsp_frame_header(FSP_DEFAULT_MAX_FRAME, hdr);
  b = p->dribbled < FSP_FRAME_HEADER ? hdr[p->dribbled] : (uint8_t)'x';
  peer_write(p, &b, 1);
  p->dribbled++;
  p->next_at = now + P.dribble_ms;
}

static void on_tick(uv_timer_t *t) {
  double now = now_ms();
  size_t i;

  (void)t;
  for (i = 0; i < npeers; i++) {
    struct peer *p = peers[i];

    if (p->kind == PK_SLOW && p->authed && !p->closing && now >= p->next_at)
      dribble(p, now);
    else if (p->kind == PK_ERR && flooding && !p->open && now >= p->next_at) {
      /* One connection per flooder per tick at most: the flood's rate is
       * bounded so it cannot use up the loopback's ephemeral ports. */
      p->errkind = (p->errkind + 1) % NERRKINDS;
      p->next_at = now + TICK_MS;
      peer_connect(p);
    }
  }
  if (trickle_every > 0 && now >= trickle_next) {
    trickle_next = now + trickle_every;
    trickled++;
    peer_connect(peer_add(PK_OVER));
  }
  if (rss_sampling && now >= rss_next) {
    long rss = status_kb(srv.pid, "VmRSS");
    long vsz = status_kb(srv.pid, "VmSize");

    rss_next = now + 250;
    if (rss > rss_peak_kb)
      rss_peak_kb = rss;
    if (vsz > vsz_peak_kb)
      vsz_peak_kb = vsz;
  }
}

/* Runs the loop until done() or the deadline (ms of now_ms). Returns
 * whether done() came true. */
static bool pump_until(double deadline, bool (*done)(void)) {
  while (now_ms() < deadline) {
    if (done != NULL && done())
      return true;
    uv_run(loop, UV_RUN_ONCE);
  }
  return done != NULL && done();
}

static void pump_ms(double ms) {
  (void)pump_until(now_ms() + ms, NULL);
}

/* Opens n peers of kind (every second one of kind2 when alt), at most
 * MAX_CONNECTING connects in flight. Returns the ms it took. */
static double open_peers(unsigned n, enum pkind kind, enum pkind kind2,
                         bool alt) {
  double t0 = now_ms();
  unsigned i = 0;

  while (i < n) {
    while (i < n && connecting < MAX_CONNECTING) {
      peer_connect(peer_add(alt && i % 2 == 1 ? kind2 : kind));
      i++;
    }
    uv_run(loop, UV_RUN_ONCE);
    if (now_ms() - t0 > 60000)
      die("opening %u connections took over a minute", n);
  }
  return now_ms() - t0;
}

/* Every peer that says Hello has its Welcome or is gone. */
static bool all_settled(void) {
  size_t i;

  if (connecting > 0)
    return false;
  for (i = 0; i < npeers; i++) {
    const struct peer *p = peers[i];

    if (p->kind != PK_IDLE && p->kind != PK_OVER && p->kind != PK_ERR &&
        !p->authed && !p->lost)
      return false;
  }
  return true;
}

static bool all_lost(void) {
  size_t i;

  for (i = 0; i < npeers; i++)
    if (!peers[i]->lost && !peers[i]->by_us)
      return false;
  return true;
}

static bool no_handles(void) {
  return open_handles == 0;
}

/* Closes every peer, waits for their handles, frees them. */
static void peers_reset(void) {
  size_t i;

  flooding = false;
  trickle_every = 0;
  for (i = 0; i < npeers; i++) {
    struct peer *p = peers[i];

    if (p->open && !p->lost)
      p->by_us = true;
    peer_close(p);
  }
  if (!pump_until(now_ms() + 10000, no_handles))
    die("%u connections did not close", open_handles);
  for (i = 0; i < npeers; i++) {
    fsp_frame_decoder_close(&peers[i]->dec);
    free(peers[i]);
  }
  npeers = 0;
  memset(&hc, 0, sizeof(hc));
}

/* ---- server ------------------------------------------------------------ */

static void server_up(unsigned long nofile) {
  server_start_nofile(&srv, fieldsyncd_path, db,
                      (const char *const *)server_args, nofile);
  tmpdir_kill_at_exit(&srv);
  srv_pid_for_signal = srv.pid;
  atomic_store(&srv_port, srv.port);
  memset(&srv_addr, 0, sizeof(srv_addr));
  uv_ip4_addr("127.0.0.1", srv.port, &srv_addr);
}

static int server_down(void) {
  int rc = server_stop(&srv);

  srv_pid_for_signal = 0;
  return rc;
}

static void make_db(void) {
  char out[256];
  unsigned i;

  snprintf(db, sizeof(db), "%s/server.db", dir);
  admin_user_device(admin_path, db, "load", "head_office", hostile_token,
                    sizeof(hostile_token));
  for (i = 0; i < P.healthy; i++) {
    const char *args[] = {"device", "add", "load", NULL};

    proc_admin_run(admin_path, db, args, out, sizeof(out));
    if (sscanf(out, "%95s", healthy_tokens[i]) != 1)
      die("fieldsync-admin device add printed no token");
  }
}

static void server_flags(void) {
  const char *names[] = {"--handshake-timeout-ms", "--idle-timeout-ms",
                         "--frame-timeout-ms", "--write-timeout-ms"};
  int n = 0;
  int i;

  server_args[n++] = "--max-connections";
  snprintf(server_arg_buf[0], sizeof(server_arg_buf[0]), "%u",
           P.idle + P.slowloris + P.healthy + 1000);
  server_args[n++] = server_arg_buf[0];
  for (i = 0; i < 4; i++) {
    server_args[n++] = (char *)names[i];
    snprintf(server_arg_buf[i + 1], sizeof(server_arg_buf[0]), "%u",
             P.deadline_ms);
    server_args[n++] = server_arg_buf[i + 1];
  }
  server_args[n] = NULL;
}

/* ---- scenarios and results --------------------------------------------- */

struct result {
  char name[32];
  unsigned peers; /* hostile peers set up */
  double ramp_ms;
  size_t syncs;
  double p50;
  double p99;
  double quiet_p99; /* the quiet window just before; 0 = none */
  double max;
  unsigned slow;    /* syncs over SLOW_SYNC_MS */
  double slow_from; /* s into the window: first and last of them */
  double slow_to;
  unsigned fails;
  char fail_msg[256];
  bool up;
  long rss_kb;      /* server VmRSS before the hostile peers */
  long rss_peak_kb; /* while they were there */
  long vsz_kb;
  long vsz_peak_kb;
  double cap;             /* bytes per hostile connection allowed */
  double cpu_pct;         /* server CPU during the window, % of one core */
  unsigned expect_closed; /* peers the deadlines should close */
  unsigned closed;        /* ... that the server's log shows closed */
  char closed_how[96];
  char note[200];
};

#define MAX_RESULTS 16
static struct result results[MAX_RESULTS];
static size_t nresults;
static struct result *base; /* the baseline */

struct goal {
  char what[96];
  char value[64];
  int verdict; /* 1 PASS, 0 MISS */
};

#define MAX_GOALS 64
static struct goal goals[MAX_GOALS];
static size_t ngoals;

static void goal(bool ok, const char *what, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void goal(bool ok, const char *what, const char *fmt, ...) {
  struct goal *g;
  va_list ap;

  if (ngoals == MAX_GOALS)
    return;
  g = &goals[ngoals++];
  snprintf(g->what, sizeof(g->what), "%s", what);
  va_start(ap, fmt);
  vsnprintf(g->value, sizeof(g->value), fmt, ap);
  va_end(ap);
  g->verdict = ok ? 1 : 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a;
  double y = *(const double *)b;

  return x < y ? -1 : x > y;
}

/* Nearest-rank quantile of sorted a[0..n). */
static double quantile(const double *a, size_t n, double q) {
  size_t k = (size_t)(q * (double)n + 0.999999);

  if (n == 0)
    return 0;
  if (k == 0)
    k = 1;
  return a[(k > n ? n : k) - 1];
}

static struct result *result_new(const char *name, unsigned npeers_) {
  struct result *r;

  if (nresults == MAX_RESULTS)
    die("too many results");
  r = &results[nresults++];
  memset(r, 0, sizeof(*r));
  snprintf(r->name, sizeof(r->name), "%s", name);
  r->peers = npeers_;
  r->rss_kb = status_kb(srv.pid, "VmRSS");
  r->vsz_kb = status_kb(srv.pid, "VmSize");
  return r;
}

/* Measures the healthy clients for window_ms while the loop serves the
 * hostile peers: sync times, failures, server CPU and peak RSS. */
static void measure(struct result *r, unsigned window_ms) {
  static int next_window;
  double c0 = cpu_ms(srv.pid);
  double t0 = now_ms();

  pthread_mutex_lock(&h_lock);
  h_nsamples = 0;
  h_slow = 0;
  h_fails = 0;
  h_last_err[0] = '\0';
  atomic_store(&h_window, next_window++);
  pthread_mutex_unlock(&h_lock);
  rss_peak_kb = r->rss_kb;
  vsz_peak_kb = r->vsz_kb;
  rss_sampling = true;
  rss_next = 0;
  pump_ms(window_ms);
  rss_sampling = false;
  pthread_mutex_lock(&h_lock);
  atomic_store(&h_window, -1);
  qsort(h_samples, h_nsamples, sizeof(double), cmp_double);
  r->syncs = h_nsamples;
  r->p50 = quantile(h_samples, h_nsamples, 0.50);
  r->p99 = quantile(h_samples, h_nsamples, 0.99);
  r->max = h_nsamples > 0 ? h_samples[h_nsamples - 1] : 0;
  r->slow = h_slow;
  r->slow_from = h_slow > 0 ? (h_slow_first - t0) / 1e3 : 0;
  r->slow_to = h_slow > 0 ? (h_slow_last - t0) / 1e3 : 0;
  r->fails = h_fails;
  snprintf(r->fail_msg, sizeof(r->fail_msg), "%s", h_last_err);
  pthread_mutex_unlock(&h_lock);
  r->cpu_pct = (cpu_ms(srv.pid) - c0) * 100.0 / (now_ms() - t0);
  r->rss_peak_kb = rss_peak_kb;
  r->vsz_peak_kb = vsz_peak_kb;
}

/* The quiet p99 a scenario is judged against: its own quiet window, else
 * the baseline. */
static double quiet_ref(const struct result *r) {
  return r->quiet_p99 > 0 ? r->quiet_p99 : base->p99;
}

/* Measures a quiet window just before a scenario's peers come, on the
 * same server and store. The scenario's p99 is judged against it, so that
 * drift over the run (the machine's other load, the store's growth) does
 * not count as harm done by the peers; the first baseline is shown too. */
static void quiet_before(struct result *r) {
  struct result q;

  memset(&q, 0, sizeof(q));
  q.rss_kb = r->rss_kb;
  q.vsz_kb = r->vsz_kb;
  measure(&q, P.window_ms);
  r->quiet_p99 = q.p99;
  r->rss_kb = status_kb(srv.pid, "VmRSS");
  r->vsz_kb = status_kb(srv.pid, "VmSize");
}

/* The goals every scenario shares: healthy clients unharmed, server up,
 * memory within peers x cap. */
static void judge(struct result *r) {
  char what[96];

  r->up = probe();
  snprintf(what, sizeof(what), "%s: server up, accepting", r->name);
  goal(r->up, what, "%s", r->up ? "yes" : "no");
  snprintf(what, sizeof(what), "%s: healthy syncs without failure", r->name);
  goal(r->fails == 0 && r->syncs > 0, what, "%zu ok, %u failed", r->syncs,
       r->fails);
  if (r == base || !P.judge_timing)
    return;
  snprintf(what, sizeof(what), "%s: healthy p99 <= %.0fx quiet", r->name,
           GOAL_P99_RATIO);
  goal(r->p99 <= GOAL_P99_RATIO * quiet_ref(r), what, "%.1f ms vs %.1f ms",
       r->p99, quiet_ref(r));
  snprintf(what, sizeof(what), "%s: healthy p99 < %.0f ms", r->name,
           GOAL_P99_MS);
  goal(r->p99 < GOAL_P99_MS, what, "%.1f ms", r->p99);
  if (r->cap > 0) {
    /* From the RSS just before the peers came: earlier scenarios' freed
     * memory stays in the allocator, and is reused. */
    double grew = (double)(r->rss_peak_kb - r->rss_kb) * 1024.0;
    double allowed = (double)r->peers * r->cap;

    snprintf(what, sizeof(what), "%s: RSS <= before + %u x %.0f KiB", r->name,
             r->peers, r->cap / 1024.0);
    goal(grew <= allowed, what, "+%.1f of %.1f MiB", grew / 1048576.0,
         allowed / 1048576.0);
  }
}

/* The deadline goal: the server's log shows each peer closed by the
 * deadline meant for it. */
static void judge_closed(struct result *r) {
  char what[96];

  snprintf(what, sizeof(what), "%s: closed by their deadlines", r->name);
  goal(r->closed == r->expect_closed, what, "%u of %u (%s)", r->closed,
       r->expect_closed, r->closed_how);
}

/* Serves the peers until the server's CPU over half a second is back near
 * the healthy load's (the work the ramp gave it is done), 10 s at most, so
 * that the window measures the hostile peers' presence, not their arrival;
 * a window's length at most. Returns the ms it took. */
static double settle(void) {
  double limit = base->cpu_pct * 1.5 + 10;
  double t0 = now_ms();

  for (;;) {
    double c0 = cpu_ms(srv.pid);
    double w0 = now_ms();
    double pct;

    pump_ms(500);
    pct = (cpu_ms(srv.pid) - c0) * 100.0 / (now_ms() - w0);
    if (pct <= limit || now_ms() - t0 > P.window_ms)
      return now_ms() - t0;
  }
}

/* Waits until every hostile peer is closed or the deadline has passed
 * for all of them (plus sweep time). */
static void wait_deadlines(double last_start) {
  (void)pump_until(last_start + P.deadline_ms + 3000, all_lost);
}

static void scenario_baseline(void) {
  struct result *r = result_new("baseline", 0);

  base = r;
  measure(r, P.window_ms);
  judge(r);
}

static void scenario_idle(void) {
  struct result *r = result_new("idle", P.idle);
  double t_last;

  if (P.judge_timing)
    quiet_before(r);
  log_set_mark();
  r->ramp_ms = open_peers(P.idle, PK_IDLE, PK_IDLE_AUTH, true);
  t_last = now_ms();
  if (!pump_until(now_ms() + 30000, all_settled))
    die("idle: sessions did not settle");
  r->ramp_ms += now_ms() - t_last + settle();
  r->cap = CONN_STRUCT_BYTES;
  measure(r, P.window_ms);
  snprintf(r->note, sizeof(r->note),
           "%u connected, %u sent Hello and got Welcome", hc.connected,
           hc.authed);
  wait_deadlines(t_last);
  {
    unsigned hs = log_timeouts("handshake");
    unsigned idle = log_timeouts("idle");

    r->expect_closed = P.idle;
    r->closed = hs + idle;
    snprintf(r->closed_how, sizeof(r->closed_how),
             "handshake %u, idle %u; %u got ERR_TIMEOUT", hs, idle,
             hc.timeouts);
  }
  judge(r);
  judge_closed(r);
  peers_reset();
}

static void scenario_slowloris(void) {
  struct result *r = result_new("slowloris", P.slowloris);
  double t_last;
  uint32_t most = 0;
  size_t i;

  if (P.judge_timing)
    quiet_before(r);
  log_set_mark();
  r->ramp_ms = open_peers(P.slowloris, PK_SLOW, PK_SLOW, false);
  if (!pump_until(now_ms() + 30000, all_settled))
    die("slowloris: sessions did not settle");
  t_last = now_ms();
  /* The frame started after the Welcome; each dribbled byte counts twice
   * (the buffer doubles), the first buys FSP_FRAME_FIRST_ALLOC. */
  r->cap = CONN_STRUCT_BYTES + FSP_FRAME_FIRST_ALLOC +
           2.0 * (double)(P.deadline_ms / P.dribble_ms + 2);
  r->ramp_ms += settle();
  measure(r, P.window_ms);
  for (i = 0; i < npeers; i++)
    if (peers[i]->dribbled > most)
      most = peers[i]->dribbled;
  snprintf(r->note, sizeof(r->note),
           "each declared a %u-byte frame, sent up to %u bytes of it; "
           "VmSize %+.1f MiB",
           FSP_DEFAULT_MAX_FRAME, (unsigned)most,
           (double)(r->vsz_peak_kb - r->vsz_kb) / 1024.0);
  wait_deadlines(t_last);
  r->expect_closed = P.slowloris;
  r->closed = log_timeouts("frame");
  snprintf(r->closed_how, sizeof(r->closed_how),
           "frame %u; idle %u; %u got ERR_TIMEOUT", r->closed,
           log_timeouts("idle"), hc.timeouts);
  judge(r);
  judge_closed(r);
  if (P.judge_timing) {
    /* A decoder that allocated the declared length at the header would
     * reserve 4 MiB a peer here (RSS hides it: the pages stay untouched,
     * but they are committed); the allocator's own arenas come and go in
     * 64 MiB reservations, hence the slack. */
    double grew = (double)(r->vsz_peak_kb - r->vsz_kb) * 1024.0;
    double allowed = (double)r->peers * r->cap + 128.0 * 1048576.0;

    goal(grew <= allowed, "slowloris: virtual memory <= before + peers x cap",
         "+%.1f of %.1f MiB", grew / 1048576.0, allowed / 1048576.0);
  }
  peers_reset();
}

static void scenario_noread(void) {
  struct result *r = result_new("noread", P.noread);
  double t_last;
  unsigned drained = 0;
  size_t i;

  if (P.judge_timing)
    quiet_before(r);
  log_set_mark();
  r->ramp_ms = open_peers(P.noread, PK_NOREAD, PK_NOREAD, false);
  if (!pump_until(now_ms() + 30000, all_settled))
    die("noread: sessions did not settle");
  t_last = now_ms();
  /* A session's queue: max_write_queue (the default, 1 MiB) plus one
   * reply (at most max_frame). */
  r->cap = CONN_STRUCT_BYTES + (1u << 20) + FSP_DEFAULT_MAX_FRAME;
  /* The server answers the Pulls it reads until the queue passes
   * max_write_queue; that burst is ordinary pulling, not the hostility. */
  r->ramp_ms += settle();
  measure(r, P.window_ms);
  /* Nothing was read, so nothing shows the close yet: the server's log
   * does. The write deadline runs from the last byte the kernel took, or
   * the idle one from the last reply when the kernel's socket buffers took
   * every reply and nothing waited in the server. Then read, and count the
   * peers found closed. */
  r->expect_closed = P.noread;
  t_last = now_ms() + P.deadline_ms + 5000;
  while (now_ms() < t_last) {
    r->closed = log_timeouts("write") + log_timeouts("idle");
    if (r->closed >= r->expect_closed)
      break;
    pump_ms(500);
  }
  for (i = 0; i < npeers; i++) {
    peers[i]->draining = true;
    if (peers[i]->open && !peers[i]->closing)
      uv_read_start((uv_stream_t *)&peers[i]->tcp, on_alloc, on_read);
  }
  (void)pump_until(now_ms() + 3000, all_lost);
  for (i = 0; i < npeers; i++)
    drained += peers[i]->lost;
  snprintf(r->closed_how, sizeof(r->closed_how),
           "write %u, idle %u; %u found closed when read at last",
           log_timeouts("write"), log_timeouts("idle"), drained);
  snprintf(r->note, sizeof(r->note), "each pipelined %u Pulls from cursor 0",
           P.noread_pulls);
  judge(r);
  judge_closed(r);
  peers_reset();
}

static void scenario_tiny(void) {
  struct result *r = result_new("tiny", P.tiny);
  uint64_t before;
  double t0;
  double rate;
  char what[96];

  if (P.judge_timing)
    quiet_before(r);
  log_set_mark();
  flooding = true;
  r->ramp_ms = open_peers(P.tiny, PK_TINY, PK_TINY, false);
  if (!pump_until(now_ms() + 30000, all_settled))
    die("tiny: sessions did not settle");
  pump_ms(500);
  before = hc.tiny_replies;
  t0 = now_ms();
  measure(r, P.window_ms);
  rate = (double)(hc.tiny_replies - before) * 1e3 / (now_ms() - t0);
  snprintf(r->note, sizeof(r->note),
           "%.0f tiny requests answered per second, %u in flight each", rate,
           P.tiny_depth);
  judge(r);
  /* Credit for one second's burst, then MAX_REQUESTS_PER_S. */
  snprintf(what, sizeof(what), "tiny: each flooder held to %d requests/s",
           MAX_REQUESTS_PER_S);
  goal(rate / P.tiny <= MAX_REQUESTS_PER_S * (1.0 + 1e3 / P.window_ms), what,
       "%.0f/s each", rate / P.tiny);
  snprintf(what, sizeof(what), "tiny: flooders served, none dropped");
  goal(hc.lost == 0 && hc.tiny_replies > 0, what,
       "%" PRIu64 " replies, %u dropped", hc.tiny_replies, hc.lost);
  peers_reset();
}

static void scenario_errors(void) {
  struct result *r = result_new("errors", P.errflood);
  char what[96];
  char kinds[96];
  double t0;
  double rate;
  uint64_t c0;
  unsigned i;
  int n = 0;

  if (P.judge_timing)
    quiet_before(r);
  log_set_mark();
  flooding = true;
  for (i = 0; i < P.errflood; i++) {
    struct peer *p = peer_add(PK_ERR);

    p->errkind = (int)(i % NERRKINDS);
    p->next_at = 0;
  }
  pump_ms(500);
  t0 = now_ms();
  c0 = hc.err_cycles + hc.err_wrong;
  measure(r, P.window_ms);
  rate = (double)(hc.err_cycles + hc.err_wrong - c0) * 1e3 / (now_ms() - t0);
  flooding = false;
  (void)pump_until(now_ms() + 5000, no_handles);
  for (i = 0; i < NERRKINDS; i++)
    n += snprintf(kinds + n, sizeof(kinds) - (size_t)n, "%s%" PRIu64,
                  i == 0 ? "" : "/", hc.err_by_kind[i]);
  snprintf(r->note, sizeof(r->note),
           "%.0f bad connections per second, each its Error (by kind %s)", rate,
           kinds);
  judge(r);
  snprintf(what, sizeof(what), "errors: each bad frame got its Error");
  goal(hc.err_wrong == 0 && hc.err_cycles > 0, what,
       "%" PRIu64 " ok, %" PRIu64 " not%s%s", hc.err_cycles, hc.err_wrong,
       hc.err_wrong > 0 ? ": " : "", hc.err_wrong > 0 ? hc.last_wrong : "");
  peers_reset();
}

/* Restarts the server with a low RLIMIT_NOFILE ("fd-base" measures the
 * healthy load on it). Part A ("fd-limit") opens connections past it: the
 * server lowered max_connections to fit and keeps its own descriptors, so
 * SRV_BUSY_SLACK more at a time are told ERR_BUSY and the rest closed at
 * once. Part B ("fd-gone") takes every descriptor (prlimit under the
 * server's use), so libuv cannot shed a connection on its spare
 * descriptor: the server must pause accepting, log once, use no CPU for
 * it, and resume when descriptors come back. Healthy p99 is judged against
 * fd-base, the same server's quiet figure. */
static void scenario_fd(void) {
  const char *paused[] = {"event=accept_paused", NULL};
  const char *resumed[] = {"event=accept_resumed", NULL};
  const char *failed[] = {"event=accept_failed", NULL};
  const char *warned[] = {"event=fd_limit", NULL};
  struct result *main_base = base;
  struct result *rf;
  struct result *ra;
  struct result *rb;
  struct rlimit rl;
  char what[96];
  unsigned fds;
  unsigned held = 0;
  unsigned busy;
  unsigned shed;
  size_t i;

  healthy_park();
  if (server_down() != 0)
    die("fieldsyncd did not stop cleanly before the fd scenario");
  log_set_mark();
  server_up(P.nofile);
  healthy_resume();
  pump_ms(1000);
  rf = result_new("fd-base", 0);
  measure(rf, P.window_ms);
  snprintf(rf->note, sizeof(rf->note),
           "restarted with RLIMIT_NOFILE %u: fd_limit warnings logged %u",
           P.nofile, log_count(warned));
  base = rf;
  judge(rf);

  /* Part A: past the limit. */
  ra = result_new("fd-limit", P.over);
  ra->quiet_p99 = rf->p99;
  log_set_mark();
  ra->ramp_ms = open_peers(P.over, PK_OVER, PK_OVER, false);
  pump_ms(1000);
  trickle_every = 50;
  trickle_next = now_ms();
  measure(ra, P.window_ms);
  trickle_every = 0;
  for (i = 0; i < npeers; i++)
    held += peers[i]->connected && !peers[i]->lost;
  busy = hc.busy;
  shed = hc.silent;
  fds = count_fds(srv.pid);
  snprintf(ra->note, sizeof(ra->note),
           "%u opened + %u trickled: %u held, %u ERR_BUSY, %u closed at "
           "once, %u connect failures; server fds %u",
           P.over, trickled, held, busy, shed, hc.connect_failed, fds);
  peers_reset(); /* the probe needs a free slot */
  judge(ra);
  snprintf(what, sizeof(what), "fd-limit: past the limit, ERR_BUSY");
  goal(busy > 0 && held > 0, what, "%u held, %u ERR_BUSY", held, busy);
  if (P.judge_timing) {
    snprintf(what, sizeof(what), "fd-limit: no busy loop (CPU vs fd-base)");
    goal(ra->cpu_pct - rf->cpu_pct < GOAL_CPU_PCT, what, "%+.1f%% of a core",
         ra->cpu_pct - rf->cpu_pct);
  }

  /* Part B: no descriptor left at all. */
  rb = result_new("fd-gone", 0);
  rb->quiet_p99 = rf->p99;
  log_set_mark();
  fds = count_fds(srv.pid);
  rl.rlim_cur = 3;
  rl.rlim_max = P.nofile;
  if (prlimit(srv.pid, RLIMIT_NOFILE, &rl, NULL) != 0)
    die("prlimit: %s", strerror(errno));
  trickle_every = 20;
  trickle_next = now_ms();
  trickled = 0;
  measure(rb, P.window_ms < 3000 ? P.window_ms : 3000);
  trickle_every = 0;
  rb->peers = trickled;
  rl.rlim_cur = P.nofile;
  if (prlimit(srv.pid, RLIMIT_NOFILE, &rl, NULL) != 0)
    die("prlimit: %s", strerror(errno));
  peers_reset();
  judge(rb); /* its probe waits for the server to resume accepting */
  {
    unsigned np = log_count(paused);
    unsigned nr = log_count(resumed);
    unsigned nf = log_count(failed);

    snprintf(rb->note, sizeof(rb->note),
             "RLIMIT_NOFILE 3 under %u open fds, %u connects trickled: "
             "accept_paused logged %u, accept_failed %u, accept_resumed %u",
             fds, trickled, np, nf, nr);
    snprintf(what, sizeof(what), "fd-gone: paused, logged once, resumed");
    goal(np == 1 && nr == 1 && nf == 0, what, "paused %u, resumed %u", np, nr);
  }
  if (P.judge_timing) {
    snprintf(what, sizeof(what), "fd-gone: no busy loop (CPU vs fd-base)");
    goal(rb->cpu_pct - rf->cpu_pct < GOAL_CPU_PCT, what, "%+.1f%% of a core",
         rb->cpu_pct - rf->cpu_pct);
  }
  base = main_base;
}

/* ---- report ------------------------------------------------------------ */

static void print_report(double started, double load0) {
  size_t i;
  int bad = 0;

  printf("\n%-10s %6s %6s %6s %6s %6s %6s %5s %5s %4s %15s %8s %5s  %s\n",
         "scenario", "peers", "ramp s", "syncs", "p50", "p99", "quiet", "x q",
         "fails", "up", "srv RSS MiB", "cap/conn", "CPU%",
         "closed by deadline");
  for (i = 0; i < nresults; i++) {
    const struct result *r = &results[i];
    char rss[32];
    char cap[16];
    char closed[32];

    snprintf(rss, sizeof(rss), "%.1f (%+.1f)", r->rss_peak_kb / 1024.0,
             (r->rss_peak_kb - r->rss_kb) / 1024.0);
    if (r->cap > 0)
      snprintf(cap, sizeof(cap), "%.0f KiB", r->cap / 1024.0);
    else
      snprintf(cap, sizeof(cap), "-");
    if (r->expect_closed > 0)
      snprintf(closed, sizeof(closed), "%u/%u", r->closed, r->expect_closed);
    else
      snprintf(closed, sizeof(closed), "-");
    printf("%-10s %6u %6.1f %6zu %6.1f %6.1f %6.1f %5.2f %5u %4s %15s %8s "
           "%5.1f  %s\n",
           r->name, r->peers, r->ramp_ms / 1e3, r->syncs, r->p50, r->p99,
           quiet_ref(r), quiet_ref(r) > 0 ? r->p99 / quiet_ref(r) : 0, r->fails,
           r->up ? "yes" : "NO", rss, cap, r->cpu_pct, closed);
  }
  printf("# healthy sync times in ms: p50, p99, and quiet = the p99 of the "
         "quiet window\n# just before the scenario (the baseline's for "
         "baseline and fd-base; fd-base's\n# for fd-limit and fd-gone; with "
         "--quick, the baseline's); x q = "
         "p99 / quiet. srv RSS: peak (growth while\n# the peers were there). "
         "CPU%%: the server's, of one core, while measuring.\n\n");
  for (i = 0; i < nresults; i++) {
    const struct result *r = &results[i];

    if (r->note[0] != '\0' || r->closed_how[0] != '\0')
      printf("# %s: %s%s%s\n", r->name, r->note,
             r->note[0] != '\0' && r->closed_how[0] != '\0' ? "; " : "",
             r->closed_how);
    if (r->fails > 0)
      printf("# %s: last healthy failure: %s\n", r->name, r->fail_msg);
    if (r->slow > 0)
      printf("# %s: %u syncs over %.0f ms, from %.1f s to %.1f s into the "
             "window; slowest %.0f ms\n",
             r->name, r->slow, SLOW_SYNC_MS, r->slow_from, r->slow_to, r->max);
  }
  printf("\n%-62s %-28s %s\n", "goal", "measured", "verdict");
  for (i = 0; i < ngoals; i++) {
    printf("%-62s %-28s %s\n", goals[i].what, goals[i].value,
           goals[i].verdict ? "PASS" : "MISS");
    bad += !goals[i].verdict;
  }
  printf("\n# %s run: %.0f s, load average %.2f at start, %.2f at end; "
         "%d of %zu goals missed\n",
         P.judge_timing ? "full" : "quick", (now_ms() - started) / 1e3, load0,
         load_average(), bad, ngoals);
  fflush(stdout);
}

static const struct {
  const char *name;
  void (*run)(void);
} scenarios[] = {{"baseline", scenario_baseline},
                 {"idle", scenario_idle},
                 {"slowloris", scenario_slowloris},
                 {"noread", scenario_noread},
                 {"tiny", scenario_tiny},
                 {"errors", scenario_errors},
                 {"fd", scenario_fd}};

static void usage(void) {
  fprintf(stderr,
          "usage: fieldsync-load [--quick] [--only NAME[,NAME...]]\n"
          "                      [--fieldsyncd PATH] [--admin PATH]\n"
          "scenarios: idle slowloris noread tiny errors fd (the baseline "
          "always runs)\n");
  exit(2);
}

static bool wanted(const char *only, const char *name) {
  const char *p = only;
  size_t n = strlen(name);

  if (only == NULL)
    return true;
  while ((p = strstr(p, name)) != NULL) {
    if ((p == only || p[-1] == ',') && (p[n] == '\0' || p[n] == ','))
      return true;
    p += n;
  }
  return false;
}

/* Raises RLIMIT_NOFILE to its hard limit (fieldsyncd inherits it). */
static void raise_nofile(void) {
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < (rlim_t)P.idle + P.healthy + 256)
    die("RLIMIT_NOFILE is %llu; %u idle connections need more (raise the "
        "hard limit, or use --quick)",
        (unsigned long long)rl.rlim_cur, P.idle);
}

int main(int argc, char **argv) {
  const char *only = NULL;
  double started = now_ms();
  double load0 = load_average();
  bool missed = false;
  int i;
  size_t g;

  P = full_plan;
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0)
      P = quick_plan;
    else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
      only = argv[++i];
    else if (strcmp(argv[i], "--fieldsyncd") == 0 && i + 1 < argc)
      fieldsyncd_path = argv[++i];
    else if (strcmp(argv[i], "--admin") == 0 && i + 1 < argc)
      admin_path = argv[++i];
    else
      usage();
  }
  if (P.healthy > MAX_HEALTHY)
    die("at most %d healthy clients", MAX_HEALTHY);
  raise_nofile();
  signal(SIGPIPE, SIG_IGN);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  tmpdir_make(dir, sizeof(dir), "fieldsync-load");
  make_db();
  server_flags();
  server_up(0);

  loop = uv_default_loop();
  uv_timer_init(loop, &tick);
  uv_timer_start(&tick, on_tick, TICK_MS, TICK_MS);
  hello_frame(hostile_token, hostile_replica, &frame_hello, &frame_hello_len);
  pull_frame(0, FSP_DEFAULT_MAX_BATCH, &frame_pull0, &frame_pull0_len);
  {
    uint8_t *f;

    pull_frame(1ull << 40, 1, &f, &frame_tiny_len);
    frame_tiny = f;
  }
  printf("# fieldsync-load (%s): %u healthy clients syncing every ~%u ms; "
         "load average %.2f\n# %s",
         P.judge_timing ? "full" : "quick", P.healthy, P.think_ms, load0,
         fieldsyncd_path);
  for (i = 0; server_args[i] != NULL; i++)
    printf(" %s", server_args[i]);
  printf("\n");
  fflush(stdout);
  healthy_start();
  pump_ms(1000); /* sessions open, caches warm */

  for (i = 0; i < (int)(sizeof(scenarios) / sizeof(scenarios[0])); i++) {
    if (i > 0 && !wanted(only, scenarios[i].name))
      continue;
    printf("# %s (%.0f s)\n", scenarios[i].name, (now_ms() - started) / 1e3);
    fflush(stdout);
    scenarios[i].run();
  }

  healthy_stop();
  {
    int rc = server_down();

    goal(rc == 0, "server stops cleanly (SIGTERM) after it all", "exit %d", rc);
  }
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  fsp_free(frame_hello);
  fsp_free(frame_pull0);
  fsp_free((void *)frame_tiny);
  free(h_samples);
  free(peers);
  print_report(started, load0);
  for (g = 0; g < ngoals; g++)
    missed |= !goals[g].verdict;
  return missed ? 1 : 0;
}
