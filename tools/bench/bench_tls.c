/* SPDX-License-Identifier: MIT */
/* Benchmark of TLS in sync: full TLS handshakes plus Hello/Welcome per
 * second (one client, then 4 threads), beside the same over plain TCP;
 * push and pull of 20,000 records through libfieldsync with TLS and
 * without (and their ratio); and the server's memory per idle session with
 * TLS and without. Starts its own fieldsyncd on 127.0.0.1 port 0 (never
 * another address) with a throwaway CA it makes with the OpenSSL C API,
 * and stops it by PID at the end, also when the benchmark fails.
 * Usage: bench_tls [--quick] [--dir DIR] [--fieldsyncd PATH] [--admin PATH]
 * Build it as Release, without sanitizers. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
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
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "fieldsync.h"
#include "fsp_frame.h"
#include "fsp_msg.h"

#ifndef BENCH_FIELDSYNCD
#define BENCH_FIELDSYNCD "fieldsyncd"
#endif
#ifndef BENCH_ADMIN
#define BENCH_ADMIN "fieldsync-admin"
#endif

#define THREADS 4
#define ROUNDS 3 /* push/pull rounds of each transport; the best counts */
#define EVIDENCE_LEN 420
#define IO_TIMEOUT_S 30

struct sizes {
  unsigned handshakes; /* per run (sequential; split over THREADS) */
  unsigned records;    /* pushed, then pulled */
  unsigned idle;       /* idle sessions held open */
};

static const struct sizes full_sizes = {2000, 20000, 1000};
static const struct sizes quick_sizes = {200, 2000, 100};

struct server {
  pid_t pid;
  int port;
  char addr[64];
  char log[640];
};

static struct server srv;
static volatile sig_atomic_t srv_pid_for_signal;
static char dir[512];
static const char *fieldsyncd_path = BENCH_FIELDSYNCD;
static const char *admin_path = BENCH_ADMIN;
static char db_path[600];
static char token[128];   /* the raw sessions' device (one replica id) */
static char token_a[128]; /* a token is bound to one replica: one each */
static char token_b[128];
static char ca_path[600];
static char cert_path[600];
static char key_path[600];
static SSL_CTX *client_ctx;

/* ---- basics ------------------------------------------------------------ */

static double now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void cleanup(void) {
  char cmd[600];

  if (srv.pid > 0) {
    kill(srv.pid, SIGKILL);
    waitpid(srv.pid, NULL, 0);
    srv.pid = 0;
  }
  if (dir[0] != '\0' && getenv("BENCH_KEEP") == NULL) {
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
      fprintf(stderr, "bench_tls: could not remove %s\n", dir);
  }
}

static void fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;

static void fail(const char *fmt, ...) {
  va_list ap;

  fprintf(stderr, "bench_tls: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  cleanup();
  exit(1);
}

static void on_signal(int sig) {
  if (srv_pid_for_signal > 0)
    kill((pid_t)srv_pid_for_signal, SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* ---- a throwaway CA and server certificate ----------------------------- */

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509_EXTENSION *e;

  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
  e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (e == NULL || X509_add_ext(x, e, -1) != 1)
    fail("cannot add a certificate extension");
  X509_EXTENSION_free(e);
}

static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer,
                       EVP_PKEY *issuer_key, const char *san) {
  X509 *x = X509_new();
  X509_NAME *name;

  if (x == NULL)
    fail("out of memory");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), issuer != NULL ? 2 : 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             (const unsigned char *)cn, -1, -1, 0);
  X509_set_issuer_name(x,
                       issuer != NULL ? X509_get_subject_name(issuer) : name);
  if (san == NULL) {
    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, x, NID_key_usage, "critical,keyCertSign");
  } else {
    add_ext(x, issuer, NID_basic_constraints, "CA:FALSE");
    add_ext(x, issuer, NID_ext_key_usage, "serverAuth");
    add_ext(x, issuer, NID_subject_alt_name, san);
  }
  if (X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) <= 0)
    fail("cannot sign a certificate");
  return x;
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *k) {
  FILE *f = fopen(path, "w");

  if (f == NULL)
    fail("open %s: %s", path, strerror(errno));
  if ((x != NULL && PEM_write_X509(f, x) != 1) ||
      (k != NULL && PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1))
    fail("cannot write %s", path);
  fclose(f);
}

/* ca.pem, and server.pem/server.key for IP 127.0.0.1, all EC P-256. */
static void make_pki(void) {
  EVP_PKEY *ca_key = EVP_EC_gen("P-256");
  EVP_PKEY *srv_key = EVP_EC_gen("P-256");
  X509 *ca;
  X509 *x;

  if (ca_key == NULL || srv_key == NULL)
    fail("cannot make EC keys");
  ca = make_cert(ca_key, "bench CA", NULL, NULL, NULL);
  x = make_cert(srv_key, "127.0.0.1", ca, ca_key, "IP:127.0.0.1");
  snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", dir);
  snprintf(cert_path, sizeof(cert_path), "%s/server.pem", dir);
  snprintf(key_path, sizeof(key_path), "%s/server.key", dir);
  write_pem(ca_path, ca, NULL);
  write_pem(cert_path, x, NULL);
  write_pem(key_path, NULL, srv_key);
  X509_free(ca);
  X509_free(x);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(srv_key);
}

/* ---- the server -------------------------------------------------------- */

/* Runs argv, capturing stdout into out; returns the exit status. */
static int run_capture(char *const argv[], char *out, size_t cap) {
  int p[2];
  size_t got = 0;
  int status = 0;
  pid_t pid;

  if (pipe(p) != 0)
    fail("pipe: %s", strerror(errno));
  pid = fork();
  if (pid < 0)
    fail("fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(p[1], 1);
    close(p[0]);
    execv(argv[0], argv);
    _exit(127);
  }
  close(p[1]);
  for (;;) {
    ssize_t r = read(p[0], out + got, cap - 1 - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0 || got + (size_t)r >= cap - 1)
      break;
    got += (size_t)r;
  }
  out[got] = '\0';
  close(p[0]);
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* A fresh server database with user "lead" and three devices (token,
 * token_a, token_b). */
static void make_db(const char *name) {
  char *const toks[] = {token, token_a, token_b};
  char out[256];
  size_t i;

  snprintf(db_path, sizeof(db_path), "%s/%s", dir, name);
  {
    char *a[] = {
        (char *)admin_path, "--db",      db_path, "user", "add", "lead",
        "--role",           "head_office", NULL};
    if (run_capture(a, out, sizeof(out)) != 0)
      fail("%s user add failed", admin_path);
  }
  for (i = 0; i < 3; i++) {
    char *a[] = {
        (char *)admin_path, "--db", db_path, "device", "add", "lead", NULL};
    if (run_capture(a, out, sizeof(out)) != 0 ||
        sscanf(out, "%127s", toks[i]) != 1)
      fail("%s device add failed", admin_path);
  }
}

/* Starts fieldsyncd on db_path: with TLS, or --plaintext (loopback). */
static void server_start(bool tls) {
  char *argv[16];
  char line[256];
  size_t got = 0;
  double deadline = now_ms() + 20000;
  int po[2];
  int logfd;
  int n = 0;

  memset(&srv, 0, sizeof(srv));
  snprintf(srv.log, sizeof(srv.log), "%s.log", db_path);
  argv[n++] = (char *)fieldsyncd_path;
  argv[n++] = "--db";
  argv[n++] = db_path;
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  argv[n++] = "--max-connections";
  argv[n++] = "100000";
  argv[n++] = "--quiet";
  if (tls) {
    argv[n++] = "--tls-cert";
    argv[n++] = cert_path;
    argv[n++] = "--tls-key";
    argv[n++] = key_path;
  } else {
    argv[n++] = "--plaintext";
  }
  argv[n] = NULL;
  if (pipe(po) != 0)
    fail("pipe: %s", strerror(errno));
  logfd = open(srv.log, O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (logfd < 0)
    fail("open %s: %s", srv.log, strerror(errno));
  fflush(stdout);
  srv.pid = fork();
  if (srv.pid < 0)
    fail("fork: %s", strerror(errno));
  if (srv.pid == 0) {
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(po[1], 1);
    dup2(logfd, 2);
    close(po[0]);
    execv(fieldsyncd_path, argv);
    _exit(127);
  }
  srv_pid_for_signal = srv.pid;
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
  if (sscanf(line, "listening on 127.0.0.1:%d", &srv.port) != 1)
    fail("fieldsyncd did not start: \"%s\"; see %s", line, srv.log);
  snprintf(srv.addr, sizeof(srv.addr), "127.0.0.1:%d", srv.port);
}

static void server_stop(void) {
  int status = 0;
  double deadline = now_ms() + 60000;

  if (srv.pid <= 0)
    return;
  kill(srv.pid, SIGTERM);
  while (waitpid(srv.pid, &status, WNOHANG) == 0) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    if (now_ms() > deadline)
      fail("fieldsyncd ignored SIGTERM");
    nanosleep(&ts, NULL);
  }
  srv.pid = 0;
  srv_pid_for_signal = 0;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("fieldsyncd exited with status %d (see %s)", status, srv.log);
}

/* The server's resident memory in KiB. */
static long server_rss_kb(void) {
  char path[64];
  char line[256];
  long kb = -1;
  FILE *f;

  snprintf(path, sizeof(path), "/proc/%d/status", (int)srv.pid);
  f = fopen(path, "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
      break;
  fclose(f);
  return kb;
}

/* The server's CPU time (user + system) in milliseconds. */
static double server_cpu_ms(void) {
  char path[64];
  char buf[1024];
  unsigned long long ut = 0;
  unsigned long long st = 0;
  char *p;
  FILE *f;
  size_t n;

  snprintf(path, sizeof(path), "/proc/%d/stat", (int)srv.pid);
  f = fopen(path, "r");
  if (f == NULL)
    return 0;
  n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  p = strrchr(buf, ')'); /* the command name may hold spaces */
  if (p == NULL || sscanf(p + 2,
                          "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u "
                          "%*u %llu %llu",
                          &ut, &st) != 2)
    return 0;
  return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* ---- raw sessions: TLS (blocking OpenSSL over the socket) or plain ----- */

struct session {
  int fd;
  SSL *ssl; /* NULL: plain TCP */
};

static int s_write(struct session *s, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w;

    if (s->ssl != NULL) {
      int r = SSL_write(s->ssl, p, (int)n);
      if (r <= 0)
        return -1;
      w = r;
    } else {
      w = send(s->fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR)
        continue;
      if (w <= 0)
        return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int s_read(struct session *s, uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t r;

    if (s->ssl != NULL) {
      int k = SSL_read(s->ssl, p, (int)n);
      if (k <= 0)
        return -1;
      r = k;
    } else {
      r = recv(s->fd, p, n, 0);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        return -1;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static void s_close(struct session *s) {
  SSL_free(s->ssl);
  if (s->fd >= 0)
    close(s->fd);
  s->ssl = NULL;
  s->fd = -1;
}

/* Connects, runs the TLS handshake (verifying the server against the CA),
 * sends Hello and reads Welcome. 0 or -1 with why. */
static int session_open(struct session *s, bool tls, char *why, size_t cap) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello hello = FIELDSYNC__HELLO__INIT;
  struct sockaddr_in a;
  struct timeval tv = {IO_TIMEOUT_S, 0};
  struct fsp_limits lim;
  struct fsp_error err;
  struct fsp_msg m;
  uint8_t replica[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t body[4096];
  uint8_t *frame = NULL;
  size_t len = 0;
  uint32_t blen;
  int one = 1;

  s->ssl = NULL;
  s->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (s->fd < 0) {
    snprintf(why, cap, "socket: %s", strerror(errno));
    return -1;
  }
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)srv.port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only */
  setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(s->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(s->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    snprintf(why, cap, "connect: %s", strerror(errno));
    goto fail;
  }
  setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (tls) {
    s->ssl = SSL_new(client_ctx);
    if (s->ssl == NULL || SSL_set_fd(s->ssl, s->fd) != 1 ||
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), "127.0.0.1") !=
            1 ||
        SSL_connect(s->ssl) != 1) {
      unsigned long e = ERR_get_error();
      snprintf(why, cap, "TLS: %s",
               e != 0 ? ERR_reason_error_string(e) : "handshake failed");
      ERR_clear_error();
      goto fail;
    }
  }
  hello.has_protocol_version = 1;
  hello.protocol_version = FSP_PROTOCOL_VERSION;
  hello.has_replica_id = 1;
  hello.replica_id.data = replica;
  hello.replica_id.len = sizeof(replica);
  hello.device_token = token;
  hello.client_version = "bench_tls";
  env.has_protocol_version = 1;
  env.protocol_version = FSP_PROTOCOL_VERSION;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
  env.hello = &hello;
  if (fsp_msg_encode_frame(&env, FSP_DEFAULT_MAX_FRAME, &frame, &len) != 0) {
    snprintf(why, cap, "cannot encode Hello");
    goto fail;
  }
  if (s_write(s, frame, len) != 0) {
    fsp_free(frame);
    snprintf(why, cap, "cannot send Hello");
    goto fail;
  }
  fsp_free(frame);
  if (s_read(s, hdr, sizeof(hdr)) != 0) {
    snprintf(why, cap, "no Welcome");
    goto fail;
  }
  blen = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
         (uint32_t)hdr[2] << 8 | hdr[3];
  if (blen == 0 || blen > sizeof(body) || s_read(s, body, blen) != 0) {
    snprintf(why, cap, "bad Welcome frame (%u bytes)", (unsigned)blen);
    goto fail;
  }
  fsp_limits_default(&lim);
  if (fsp_msg_decode(&m, body, blen, &lim, &err) != 0) {
    snprintf(why, cap, "bad Welcome: %.150s", err.msg);
    goto fail;
  }
  if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_WELCOME) {
    snprintf(why, cap, "got %s, not Welcome", fsp_msg_body_name(m.env));
    fsp_msg_close(&m);
    goto fail;
  }
  fsp_msg_close(&m);
  return 0;
fail:
  s_close(s);
  return -1;
}

/* ---- 1: handshakes per second ------------------------------------------ */

struct hs_job {
  bool tls;
  unsigned n;
  char why[200];
  int failed;
};

static void *hs_main(void *arg) {
  struct hs_job *j = arg;
  unsigned i;

  for (i = 0; i < j->n; i++) {
    struct session s;
    if (session_open(&s, j->tls, j->why, sizeof(j->why)) != 0) {
      j->failed = 1;
      return NULL;
    }
    s_close(&s);
  }
  return NULL;
}

/* Sessions opened per second with `threads` clients; *cpu gets the
 * server's CPU milliseconds per session. */
static double handshakes(bool tls, unsigned n, unsigned threads, double *cpu) {
  pthread_t th[THREADS];
  struct hs_job jobs[THREADS];
  double cpu0 = server_cpu_ms();
  double t0;
  double ms;
  unsigned i;

  memset(jobs, 0, sizeof(jobs));
  t0 = now_ms();
  for (i = 0; i < threads; i++) {
    jobs[i].tls = tls;
    jobs[i].n = n / threads;
    if (pthread_create(&th[i], NULL, hs_main, &jobs[i]) != 0)
      fail("pthread_create");
  }
  for (i = 0; i < threads; i++)
    pthread_join(th[i], NULL);
  ms = now_ms() - t0;
  *cpu = (server_cpu_ms() - cpu0) / (double)(n / threads * threads);
  for (i = 0; i < threads; i++)
    if (jobs[i].failed)
      fail("%s session failed: %s", tls ? "TLS" : "plain", jobs[i].why);
  return (double)(n / threads * threads) * 1000.0 / ms;
}

/* ---- 2: push and pull through libfieldsync ----------------------------- */

static fieldsync_db *open_client(const char *name) {
  char path[700];
  fieldsync_db *db = NULL;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  if (fieldsync_open(path, FIELDSYNC_OPEN_CREATE, name, &db) != 0)
    fail("open %s: %s", path, fieldsync_errmsg(db));
  return db;
}

static void record_many(fieldsync_db *db, unsigned n) {
  char evidence[EVIDENCE_LEN + 1];
  char visit[33];
  fieldsync_draft *d = NULL;
  unsigned i;

  memset(evidence, 'e', EVIDENCE_LEN);
  evidence[EVIDENCE_LEN] = '\0';
  if (fieldsync_draft_new(db, "visit", &d) != 0 ||
      fieldsync_draft_set(d, "service_id",
                          "0123456789abcdef0123456789abcdef") != 0 ||
      fieldsync_draft_set(d, "kind", "key") != 0 ||
      fieldsync_draft_set(d, "lead_inspector", "lead") != 0 ||
      fieldsync_create(db, d, visit) != 0)
    fail("visit: %s", fieldsync_errmsg(db));
  fieldsync_draft_free(d);
  if (fieldsync_batch_begin(db) != 0)
    fail("batch: %s", fieldsync_errmsg(db));
  for (i = 0; i < n; i++) {
    char code[16];
    snprintf(code, sizeof(code), "OP%u", i % 38 + 1);
    memcpy(evidence, code, strlen(code));
    if (fieldsync_draft_new(db, "observation", &d) != 0 ||
        fieldsync_draft_set(d, "visit_id", visit) != 0 ||
        fieldsync_draft_set(d, "standard_code", code) != 0 ||
        fieldsync_draft_set(d, "judgement", "3") != 0 ||
        fieldsync_draft_set(d, "evidence_text", evidence) != 0 ||
        fieldsync_create(db, d, NULL) != 0)
      fail("observation: %s", fieldsync_errmsg(db));
    fieldsync_draft_free(d);
  }
  if (fieldsync_batch_commit(db) != 0)
    fail("commit: %s", fieldsync_errmsg(db));
}

/* When the last push batch was answered. */
static void on_progress(const char *phase, size_t done, size_t total,
                        void *data) {
  (void)done;
  (void)total;
  if (strcmp(phase, "push") == 0)
    *(double *)data = now_ms();
}

/* Syncs db; returns the milliseconds the whole sync took, and in
 * *push_ms those until the last push batch was acknowledged. */
static double sync_ms(fieldsync_db *db, const char *tok, bool tls,
                      size_t *moved, double *push_ms) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  double pushed_at = 0;
  double t0;

  memset(&o, 0, sizeof(o));
  o.server = srv.addr;
  o.token = tok;
  o.timeout_ms = 300000;
  o.progress = on_progress;
  o.progress_data = &pushed_at;
  if (tls)
    o.ca_file = ca_path;
  else
    o.plaintext = 1;
  t0 = now_ms();
  if (fieldsync_sync(db, &o, &st) != 0)
    fail("sync: %s", fieldsync_errmsg(db));
  *moved = st.pushed + st.pulled;
  *push_ms = pushed_at > 0 ? pushed_at - t0 : 0;
  return now_ms() - t0;
}

struct transfer {
  double push_rps;
  double pull_rps;
};

/* Records pushed, then pulled by a new replica, per second; run is the
 * round, so every round starts with new databases. */
static struct transfer push_pull(bool tls, unsigned records, int run) {
  struct transfer t;
  fieldsync_db *a;
  fieldsync_db *b;
  char name[64];
  size_t moved = 0;
  double push_ms = 0;
  double ms;

  snprintf(name, sizeof(name), "%s%d.db", tls ? "tls" : "plain", run);
  make_db(name);
  server_start(tls);
  snprintf(name, sizeof(name), "%s%d-a.db", tls ? "tls" : "plain", run);
  a = open_client(name);
  snprintf(name, sizeof(name), "%s%d-b.db", tls ? "tls" : "plain", run);
  b = open_client(name);
  record_many(a, records);
  /* The push's session then pulls its own records back (already known);
   * only the push phase counts here. */
  (void)sync_ms(a, token_a, tls, &moved, &push_ms);
  t.push_rps = (double)(records + 1) * 1000.0 / push_ms;
  ms = sync_ms(b, token_b, tls, &moved, &push_ms);
  if (moved != records + 1)
    fail("pulled %zu of %u", moved, records + 1);
  t.pull_rps = (double)moved * 1000.0 / ms;
  fieldsync_close(a);
  fieldsync_close(b);
  server_stop();
  return t;
}

/* ---- 3: memory per idle session ----------------------------------------- */

/* Opens n sessions and keeps them; returns the server's RSS growth per
 * session in KiB. */
static double idle_kib(bool tls, unsigned n) {
  struct session *s = calloc(n, sizeof(*s));
  char why[200];
  long before;
  long after;
  unsigned i;

  if (s == NULL)
    fail("out of memory");
  before = server_rss_kb();
  for (i = 0; i < n; i++)
    if (session_open(&s[i], tls, why, sizeof(why)) != 0)
      fail("idle session %u: %s", i, why);
  after = server_rss_kb();
  for (i = 0; i < n; i++)
    s_close(&s[i]);
  free(s);
  return (double)(after - before) / n;
}

/* ---- main --------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr, "usage: bench_tls [--quick] [--dir DIR] "
                  "[--fieldsyncd PATH] [--admin PATH]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const struct sizes *z = &full_sizes;
  const char *base = "/tmp";
  struct transfer tls_t;
  struct transfer plain_t;
  double hs[2][2];
  double cpu[2][2];
  double kib[2];
  struct rlimit rl;
  int a;
  int i;

  for (a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--quick") == 0)
      z = &quick_sizes;
    else if (strcmp(argv[a], "--dir") == 0 && a + 1 < argc)
      base = argv[++a];
    else if (strcmp(argv[a], "--fieldsyncd") == 0 && a + 1 < argc)
      fieldsyncd_path = argv[++a];
    else if (strcmp(argv[a], "--admin") == 0 && a + 1 < argc)
      admin_path = argv[++a];
    else
      usage();
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  snprintf(dir, sizeof(dir), "%s/bench-tls-XXXXXX", base);
  if (mkdtemp(dir) == NULL)
    fail("mkdtemp %s: %s", dir, strerror(errno));
  make_pki();
  client_ctx = SSL_CTX_new(TLS_client_method());
  if (client_ctx == NULL ||
      SSL_CTX_set_min_proto_version(client_ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_load_verify_locations(client_ctx, ca_path, NULL) != 1)
    fail("cannot make the client's TLS context");
  SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, NULL);
  SSL_CTX_set_session_cache_mode(client_ctx, SSL_SESS_CACHE_OFF);

  printf("fieldsync TLS benchmark (%s): %u handshakes per run, %u records, "
         "%u idle sessions\n",
         z == &quick_sizes ? "quick" : "full", z->handshakes, z->records,
         z->idle);
  for (i = 0; i < 2; i++) {
    bool tls = i == 0;
    make_db(tls ? "hs-tls.db" : "hs-plain.db");
    server_start(tls);
    (void)handshakes(tls, 20, 1, &cpu[i][0]); /* warm-up */
    hs[i][0] = handshakes(tls, z->handshakes, 1, &cpu[i][0]);
    hs[i][1] = handshakes(tls, z->handshakes, THREADS, &cpu[i][1]);
    kib[i] = idle_kib(tls, z->idle);
    server_stop();
  }
  /* Alternating rounds, best of each: the disk and the page cache treat
   * whichever runs first or second differently. */
  memset(&tls_t, 0, sizeof(tls_t));
  memset(&plain_t, 0, sizeof(plain_t));
  for (i = 0; i < ROUNDS; i++) {
    struct transfer p = push_pull(false, z->records, i);
    struct transfer t = push_pull(true, z->records, i);
    if (p.push_rps > plain_t.push_rps)
      plain_t.push_rps = p.push_rps;
    if (p.pull_rps > plain_t.pull_rps)
      plain_t.pull_rps = p.pull_rps;
    if (t.push_rps > tls_t.push_rps)
      tls_t.push_rps = t.push_rps;
    if (t.pull_rps > tls_t.pull_rps)
      tls_t.pull_rps = t.pull_rps;
  }

  printf("\n%-52s %12s %12s %8s\n", "", "TLS", "plain TCP", "ratio");
  printf("%-52s %12.0f %12.0f %8.2f\n",
         "sessions/s: connect+TLS+Hello/Welcome, 1 client", hs[0][0], hs[1][0],
         hs[0][0] / hs[1][0]);
  printf("%-52s %12.0f %12.0f %8.2f\n",
         "sessions/s: connect+TLS+Hello/Welcome, 4 threads", hs[0][1], hs[1][1],
         hs[0][1] / hs[1][1]);
  printf("%-52s %12.3f %12.3f %8.2f\n",
         "server CPU ms per session (4 threads run)", cpu[0][1], cpu[1][1],
         cpu[1][1] > 0 ? cpu[0][1] / cpu[1][1] : 0.0);
  printf("%-52s %12.0f %12.0f %8.2f\n", "push records/s (best of 3)",
         tls_t.push_rps, plain_t.push_rps, tls_t.push_rps / plain_t.push_rps);
  printf("%-52s %12.0f %12.0f %8.2f\n", "pull records/s (best of 3)",
         tls_t.pull_rps, plain_t.pull_rps, tls_t.pull_rps / plain_t.pull_rps);
  printf("%-52s %12.1f %12.1f %8.2f\n", "server RSS per idle session (KiB)",
         kib[0], kib[1], kib[1] > 0 ? kib[0] / kib[1] : 0.0);
  SSL_CTX_free(client_ctx);
  cleanup();
  return 0;
}
