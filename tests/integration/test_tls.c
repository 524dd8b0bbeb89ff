/* SPDX-License-Identifier: MIT */
/* TLS between libfieldsync and the real fieldsyncd on 127.0.0.1. The test
 * makes its own throwaway PKI with the OpenSSL C API (a CA, a server
 * certificate for IP 127.0.0.1 and DNS localhost, an expired one, one for
 * another host, and an unrelated CA), then checks that good syncs work and
 * that each failure (wrong CA, expired certificate, wrong host, pin
 * mismatch, plaintext on the TLS port, TLS to a plaintext server, a stalled
 * handshake) fails cleanly with a clear message, while a healthy session
 * on another thread keeps completing. Also the server's refusals to start.
 * Usage: test_tls FIELDSYNCD FIELDSYNC-ADMIN [TEST] */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "fieldsync.h"
#include "fsp_frame.h"
#include "fsp_msg.h"
#include "harness.h"
#include "proc.h"

#define SYNC_TIMEOUT_MS 20000
#define HANDSHAKE_TIMEOUT "300"
#define MAX_SERVERS 4

static const char *fieldsyncd;
static const char *admin;
static char pki[128]; /* the certificates, made once by main() */
static char dir[128]; /* the running test's files */
static char pin_good[65];

static struct test_server *servers[MAX_SERVERS];
static size_t nservers;

/* ---- a throwaway PKI --------------------------------------------------- */

static void path_in(char *out, size_t cap, const char *d, const char *name) {
  int n = snprintf(out, cap, "%s/%s", d, name);

  ASSERT(n > 0 && (size_t)n < cap);
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509_EXTENSION *e;

  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
  e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  ASSERT(e != NULL);
  ASSERT_EQ(X509_add_ext(x, e, -1), 1);
  X509_EXTENSION_free(e);
}

/* A certificate for key, valid from `from` to `to` seconds from now,
 * signed by issuer/issuer_key (NULL: self-signed). A CA gets CA:TRUE;
 * a server gets serverAuth and the subjectAltName san. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer,
                       EVP_PKEY *issuer_key, const char *san, long from,
                       long to, long serial) {
  X509 *x = X509_new();
  X509_NAME *name;

  ASSERT(x != NULL);
  ASSERT_EQ(X509_set_version(x, 2), 1);
  ASSERT_EQ(ASN1_INTEGER_set(X509_get_serialNumber(x), serial), 1);
  ASSERT(X509_gmtime_adj(X509_getm_notBefore(x), from) != NULL);
  ASSERT(X509_gmtime_adj(X509_getm_notAfter(x), to) != NULL);
  ASSERT_EQ(X509_set_pubkey(x, key), 1);
  name = X509_get_subject_name(x);
  ASSERT_EQ(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                       (const unsigned char *)cn, -1, -1, 0),
            1);
  ASSERT_EQ(X509_set_issuer_name(
                x, issuer != NULL ? X509_get_subject_name(issuer) : name),
            1);
  if (san == NULL) {
    add_ext(x, issuer != NULL ? issuer : x, NID_basic_constraints,
            "critical,CA:TRUE");
    add_ext(x, issuer != NULL ? issuer : x, NID_key_usage,
            "critical,keyCertSign,cRLSign");
  } else {
    add_ext(x, issuer, NID_basic_constraints, "CA:FALSE");
    add_ext(x, issuer, NID_key_usage, "critical,digitalSignature");
    add_ext(x, issuer, NID_ext_key_usage, "serverAuth");
    add_ext(x, issuer, NID_subject_alt_name, san);
  }
  ASSERT(X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) > 0);
  return x;
}

static void write_cert(X509 *x, const char *name) {
  char p[256];
  FILE *f;

  path_in(p, sizeof(p), pki, name);
  f = fopen(p, "w");
  ASSERT(f != NULL);
  ASSERT_EQ(PEM_write_X509(f, x), 1);
  ASSERT_OK(fclose(f));
}

static void write_key(EVP_PKEY *k, const char *name) {
  char p[256];
  FILE *f;

  path_in(p, sizeof(p), pki, name);
  f = fopen(p, "w");
  ASSERT(f != NULL);
  ASSERT_EQ(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
  ASSERT_OK(fclose(f));
}

/* The SHA-256 of k's SubjectPublicKeyInfo, in hex: what a pin holds. */
static void spki_sha256(EVP_PKEY *k, char hex[65]) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  unsigned char *der = NULL;
  int n = i2d_PUBKEY(k, &der);
  int i;

  ASSERT(n > 0);
  SHA256(der, (size_t)n, md);
  OPENSSL_free(der);
  for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* ca.pem (the CA) and, signed by it: good.pem (127.0.0.1 and localhost,
 * valid now), expired.pem (ended yesterday), elsewhere.pem (only
 * inspections.example); other-ca.pem, an unrelated CA. One server key
 * (server.key) serves all three server certificates. */
static void make_pki(void) {
  EVP_PKEY *ca_key = EVP_EC_gen("P-256");
  EVP_PKEY *other_key = EVP_EC_gen("P-256");
  EVP_PKEY *srv_key = EVP_EC_gen("P-256");
  const long day = 86400;
  X509 *ca;
  X509 *other;
  X509 *x;

  ASSERT(ca_key != NULL && other_key != NULL && srv_key != NULL);
  ca = make_cert(ca_key, "fieldsync test CA", NULL, NULL, NULL, -day, 30 * day,
                 1);
  other = make_cert(other_key, "some other CA", NULL, NULL, NULL, -day,
                    30 * day, 1);
  write_cert(ca, "ca.pem");
  write_cert(other, "other-ca.pem");
  write_key(srv_key, "server.key");
  x = make_cert(srv_key, "127.0.0.1", ca, ca_key, "IP:127.0.0.1,DNS:localhost",
                -day, 30 * day, 2);
  write_cert(x, "good.pem");
  X509_free(x);
  x = make_cert(srv_key, "127.0.0.1", ca, ca_key, "IP:127.0.0.1,DNS:localhost",
                -30 * day, -day, 3);
  write_cert(x, "expired.pem");
  X509_free(x);
  x = make_cert(srv_key, "inspections.example", ca, ca_key,
                "DNS:inspections.example", -day, 30 * day, 4);
  write_cert(x, "elsewhere.pem");
  X509_free(x);
  spki_sha256(srv_key, pin_good);
  X509_free(ca);
  X509_free(other);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(other_key);
  EVP_PKEY_free(srv_key);
}

/* ---- servers and files ------------------------------------------------- */

/* At exit of a test's process, also after a failed assertion: no server
 * outlives it, and its files go. */
static void cleanup(void) {
  char cmd[256];
  size_t i;

  for (i = 0; i < nservers; i++)
    if (servers[i]->pid > 0)
      server_kill(servers[i]);
  if (dir[0] != '\0' && getenv("FIELDSYNC_KEEP_TMP") == NULL) {
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
      fprintf(stderr, "# could not remove %s\n", dir);
  }
}

static void setup_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/fs-tls-XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
  ASSERT_OK(atexit(cleanup));
}

/* Adds a device for "lead" to server database db; token gets its token.
 * A token is bound to the first replica that uses it, so each replica
 * needs its own. */
static void add_device(const char *db, char token[128]) {
  char out[256];
  char err[512];
  char *a[] = {(char *)admin, "--db", (char *)db, "device", "add", "lead",
               NULL};

  ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
  ASSERT(sscanf(out, "%127s", token) == 1);
}

/* Makes server database name with a head office user "lead" and returns a
 * device token for it. */
static void make_db(const char *name, char *db, size_t cap, char token[128]) {
  char out[256];
  char err[512];

  path_in(db, cap, dir, name);
  {
    char *a[] = {(char *)admin, "--db",   db,          "user", "add",
                 "lead",        "--role", "head_office", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
  }
  add_device(db, token);
}

/* Starts fieldsyncd on db with TLS from cert (in the PKI directory) and
 * the server key, or with --plaintext when cert is NULL; the handshake
 * deadline is 300 ms. */
static void start(struct test_server *s, const char *db, const char *cert) {
  static char certp[MAX_SERVERS][256];
  static char keyp[256];
  const char *extra[8];
  int n = 0;

  ASSERT(nservers < MAX_SERVERS);
  extra[n++] = "--handshake-timeout-ms";
  extra[n++] = HANDSHAKE_TIMEOUT;
  if (cert != NULL) {
    path_in(certp[nservers], sizeof(certp[0]), pki, cert);
    path_in(keyp, sizeof(keyp), pki, "server.key");
    extra[n++] = "--tls-cert";
    extra[n++] = certp[nservers];
    extra[n++] = "--tls-key";
    extra[n++] = keyp;
  }
  extra[n] = NULL;
  servers[nservers++] = s;
  server_start(s, fieldsyncd, db, extra);
}

/* Stops s; it must exit 0 (under ASan: nothing leaked). */
static void stop(struct test_server *s) {
  ASSERT_EQ(server_stop(s), 0);
}

/* Waits up to 10 s for needle in s's log (the server logs after the
 * client has seen the failure). */
static void wait_log(const struct test_server *s, const char *needle) {
  long long deadline = proc_now_ms() + 10000;
  static char buf[1 << 16];

  for (;;) {
    FILE *f = fopen(s->log, "r");
    size_t n = 0;

    if (f != NULL) {
      n = fread(buf, 1, sizeof(buf) - 1, f);
      fclose(f);
    }
    buf[n] = '\0';
    if (strstr(buf, needle) != NULL)
      return;
    if (proc_now_ms() >= deadline)
      test_fail(__FILE__, __LINE__, "no \"%s\" in %s:\n%s", needle, s->log,
                buf);
    {
      struct timespec ts = {0, 20 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
}

/* ---- clients ----------------------------------------------------------- */

static fieldsync_db *open_replica(const char *name) {
  char p[256];
  fieldsync_db *db = NULL;

  path_in(p, sizeof(p), dir, name);
  if (fieldsync_open(p, FIELDSYNC_OPEN_CREATE, name, &db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", p, fieldsync_errmsg(db));
  return db;
}

/* Records n observations of one new visit. */
static void record(fieldsync_db *db, int n) {
  static const char service[] = "0123456789abcdef0123456789abcdef";
  char visit[33];
  fieldsync_draft *d = NULL;
  int i;

  ASSERT_OK(fieldsync_draft_new(db, "visit", &d));
  ASSERT_OK(fieldsync_draft_set(d, "service_id", service));
  ASSERT_OK(fieldsync_draft_set(d, "kind", "key"));
  ASSERT_OK(fieldsync_draft_set(d, "lead_inspector", "lead"));
  ASSERT_OK(fieldsync_create(db, d, visit));
  fieldsync_draft_free(d);
  ASSERT_OK(fieldsync_batch_begin(db));
  for (i = 0; i < n; i++) {
    char code[16];
    snprintf(code, sizeof(code), "OP%d", i % 38 + 1);
    ASSERT_OK(fieldsync_draft_new(db, "observation", &d));
    ASSERT_OK(fieldsync_draft_set(d, "visit_id", visit));
    ASSERT_OK(fieldsync_draft_set(d, "standard_code", code));
    ASSERT_OK(fieldsync_draft_set(d, "judgement", "3"));
    ASSERT_OK(fieldsync_draft_set(
        d, "evidence_text",
        "Case tracked three residents; care plans, MAR charts and daily "
        "notes were checked against what staff and residents said, and "
        "practice on the floor was observed over the lunchtime meal."));
    ASSERT_OK(fieldsync_create(db, d, NULL));
    fieldsync_draft_free(d);
  }
  ASSERT_OK(fieldsync_batch_commit(db));
}

/* Options for a TLS sync with addr, verified against the CA file ca (in
 * the PKI directory; NULL: none) and optionally pinned. */
static struct fieldsync_sync_opts tls_opts(const char *addr, const char *token,
                                           const char *ca, const char *pin) {
  static char cap[4][256];
  static int next;
  struct fieldsync_sync_opts o;

  memset(&o, 0, sizeof(o));
  o.server = addr;
  o.token = token;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  if (ca != NULL) {
    char *p = cap[next++ % 4];
    path_in(p, 256, pki, ca);
    o.ca_file = p;
  }
  o.pin_sha256 = pin;
  return o;
}

/* Syncs; the result must be code and, on failure, the message must hold
 * each of the NULL-terminated words. */
static void expect_sync(fieldsync_db *db, const struct fieldsync_sync_opts *o,
                        int code, const char *const *words) {
  struct fieldsync_sync_stats st;
  int rc = fieldsync_sync(db, o, &st);
  const char *msg = fieldsync_errmsg(db);

  if (rc != code)
    test_fail(__FILE__, __LINE__, "sync with %s: %s (%s), wanted %s", o->server,
              fieldsync_errname(rc), msg, fieldsync_errname(code));
  printf("# %s: %s\n", fieldsync_errname(rc), msg);
  for (; words != NULL && *words != NULL; words++)
    if (strstr(msg, *words) == NULL)
      test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", msg, *words);
  ASSERT_EQ(st.pushed, 0);
  ASSERT_EQ(st.pulled, 0);
}

/* A replica syncing over and over on its own thread while failures happen
 * beside it: every one of its syncs must succeed. */
struct healthy {
  pthread_t thread;
  fieldsync_db *db;
  struct fieldsync_sync_opts o;
  atomic_int stop;
  atomic_int ok;
  atomic_int failed;
  char why[512];
};

static void *healthy_main(void *arg) {
  struct healthy *h = arg;

  while (!atomic_load(&h->stop)) {
    struct fieldsync_sync_stats st;
    int rc = fieldsync_sync(h->db, &h->o, &st);

    if (rc != 0) {
      snprintf(h->why, sizeof(h->why), "%s: %s", fieldsync_errname(rc),
               fieldsync_errmsg(h->db));
      atomic_fetch_add(&h->failed, 1);
      break;
    }
    atomic_fetch_add(&h->ok, 1);
  }
  return NULL;
}

static void healthy_start(struct healthy *h, const char *name,
                          const struct fieldsync_sync_opts *o) {
  memset(h, 0, sizeof(*h));
  h->db = open_replica(name);
  record(h->db, 5);
  h->o = *o;
  ASSERT_OK(pthread_create(&h->thread, NULL, healthy_main, h));
  /* One good sync first, so the failures below overlap live sessions. */
  while (atomic_load(&h->ok) == 0 && atomic_load(&h->failed) == 0) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

/* Lets at least one more sync complete after the failures, then stops:
 * none may have failed. */
static void healthy_stop(struct healthy *h) {
  int seen = atomic_load(&h->ok);
  long long deadline = proc_now_ms() + 30000;

  while (atomic_load(&h->ok) <= seen + 1 && atomic_load(&h->failed) == 0 &&
         proc_now_ms() < deadline) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  atomic_store(&h->stop, 1);
  ASSERT_OK(pthread_join(h->thread, NULL));
  if (atomic_load(&h->failed) != 0)
    test_fail(__FILE__, __LINE__, "the healthy session failed: %s", h->why);
  ASSERT_GT(atomic_load(&h->ok), seen);
  printf("# healthy session: %d syncs, none failed\n", atomic_load(&h->ok));
  ASSERT_OK(fieldsync_close(h->db));
}

/* A raw TCP connection to port on 127.0.0.1. */
static int dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  ASSERT(fd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(connect(fd, (struct sockaddr *)&a, sizeof(a)));
  return fd;
}

/* Waits (at most 5 s) for the server to close fd, reading and dropping
 * what it sends; returns the milliseconds that took. */
static long long wait_closed(int fd) {
  long long t0 = proc_now_ms();

  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    char buf[512];
    ssize_t r;

    ASSERT(proc_now_ms() - t0 < 5000);
    if (poll(&p, 1, 100) <= 0)
      continue;
    r = recv(fd, buf, sizeof(buf), 0);
    if (r == 0 || (r < 0 && errno == ECONNRESET))
      return proc_now_ms() - t0;
    ASSERT(r > 0 || errno == EINTR);
  }
}

/* A raw TLS session over a blocking socket (OpenSSL's own socket BIO),
 * verified against ca.pem, for what libfieldsync never sends. */
static SSL *raw_tls(int port, SSL_CTX **ctx_out) {
  struct timeval tv = {10, 0};
  char ca[256];
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl;
  int fd = dial(port);

  ASSERT(ctx != NULL);
  path_in(ca, sizeof(ca), pki, "ca.pem");
  ASSERT_EQ(SSL_CTX_load_verify_locations(ctx, ca, NULL), 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ssl = SSL_new(ctx);
  ASSERT(ssl != NULL);
  ASSERT_EQ(SSL_set_fd(ssl, fd), 1);
  ASSERT_EQ(SSL_connect(ssl), 1);
  *ctx_out = ctx;
  return ssl;
}

/* Encrypts env as one TLS record into the SSL's write BIO. */
static void raw_record(SSL *ssl, Fieldsync__Envelope *env) {
  uint8_t *frame;
  size_t len;

  ASSERT_OK(fsp_msg_encode_frame(env, FSP_DEFAULT_MAX_FRAME, &frame, &len));
  ASSERT_EQ(SSL_write(ssl, frame, (int)len), (int)len);
  fsp_free(frame);
}

/* Reads one frame from ssl into m (release with fsp_msg_close). */
static void raw_recv(SSL *ssl, struct fsp_msg *m) {
  struct fsp_limits lim;
  struct fsp_error err;
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t *body;
  uint32_t len;
  size_t got = 0;

  while (got < sizeof(hdr)) {
    int r = SSL_read(ssl, hdr + got, (int)(sizeof(hdr) - got));
    ASSERT(r > 0);
    got += (size_t)r;
  }
  len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 |
        (uint32_t)hdr[2] << 8 | hdr[3];
  ASSERT(len > 0 && len <= FSP_DEFAULT_MAX_FRAME);
  body = fsp_malloc(len);
  ASSERT(body != NULL);
  for (got = 0; got < len;) {
    int r = SSL_read(ssl, body + got, (int)(len - got));
    ASSERT(r > 0);
    got += (size_t)r;
  }
  fsp_limits_default(&lim);
  if (fsp_msg_decode(m, body, len, &lim, &err) != 0)
    test_fail(__FILE__, __LINE__, "bad frame from the server: %s", err.msg);
  fsp_free(body);
}

/* ---- tests ------------------------------------------------------------- */

/* Push and pull through TLS, by IP address and by host name, with and
 * without a pin; more than one TLS write chunk each way. */
TEST(tls_sync_push_pull) {
  struct test_server s;
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  char db[256];
  char token[128];
  char token_b[128];
  char byname[64];
  fieldsync_db *a;
  fieldsync_db *b;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  add_device(db, token_b);
  start(&s, db, "good.pem");
  a = open_replica("a.db");
  b = open_replica("b.db");
  record(a, 400); /* a Push and a Changes frame of about 150 KiB */
  o = tls_opts(s.addr, token, "ca.pem", NULL);
  ASSERT_OK(fieldsync_sync(a, &o, &st));
  ASSERT_EQ(st.pushed, 401);
  ASSERT_EQ(st.acked, 401);
  snprintf(byname, sizeof(byname), "localhost:%d", s.port);
  o = tls_opts(byname, token_b, "ca.pem", pin_good);
  ASSERT_OK(fieldsync_sync(b, &o, &st));
  ASSERT_EQ(st.pulled, 401);
  ASSERT_EQ(st.applied, 401);
  ASSERT_STR_EQ(fieldsync_errmsg(b), "ok");
  wait_log(&s, "transport=TLSv1.3");
  ASSERT_OK(fieldsync_close(a));
  ASSERT_OK(fieldsync_close(b));
  stop(&s);
}

/* A certificate the client's CA did not sign: refused by the client, and
 * the server logs the client's alert and goes on serving. */
TEST(tls_wrong_ca) {
  static const char *const words[] = {"TLS with", "certificate verify failed",
                                      "unable to get local issuer certificate",
                                      NULL};
  struct test_server s;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char token[128];
  fieldsync_db *c;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  start(&s, db, "good.pem");
  o = tls_opts(s.addr, token, "ca.pem", NULL);
  healthy_start(&h, "healthy.db", &o);
  c = open_replica("c.db");
  record(c, 3);
  o = tls_opts(s.addr, token, "other-ca.pem", NULL);
  expect_sync(c, &o, FIELDSYNC_ETLS, words);
  wait_log(&s, "event=tls_error");
  wait_log(&s, "unknown ca");
  healthy_stop(&h);
  ASSERT_OK(fieldsync_close(c));
  stop(&s);
}

/* An expired server certificate: the client refuses it; the server warned
 * at start. */
TEST(tls_expired_certificate) {
  static const char *const words[] = {"certificate verify failed",
                                      "certificate has expired", NULL};
  struct test_server good;
  struct test_server old;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char db2[256];
  char token[128];
  char token2[128];
  fieldsync_db *c;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  make_db("old.db", db2, sizeof(db2), token2);
  start(&good, db, "good.pem");
  start(&old, db2, "expired.pem");
  wait_log(&old, "event=tls_cert_expired");
  o = tls_opts(good.addr, token, "ca.pem", NULL);
  healthy_start(&h, "healthy.db", &o);
  c = open_replica("c.db");
  o = tls_opts(old.addr, token2, "ca.pem", NULL);
  expect_sync(c, &o, FIELDSYNC_ETLS, words);
  wait_log(&old, "certificate expired");
  healthy_stop(&h);
  ASSERT_OK(fieldsync_close(c));
  stop(&old);
  stop(&good);
}

/* A certificate for another host (DNS inspections.example only) reached
 * as 127.0.0.1. */
TEST(tls_wrong_host) {
  static const char *const words[] = {"certificate verify failed",
                                      "hostname mismatch", "127.0.0.1", NULL};
  struct test_server good;
  struct test_server other;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char db2[256];
  char token[128];
  char token2[128];
  fieldsync_db *c;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  make_db("other.db", db2, sizeof(db2), token2);
  start(&good, db, "good.pem");
  start(&other, db2, "elsewhere.pem");
  o = tls_opts(good.addr, token, "ca.pem", NULL);
  healthy_start(&h, "healthy.db", &o);
  c = open_replica("c.db");
  o = tls_opts(other.addr, token2, "ca.pem", NULL);
  expect_sync(c, &o, FIELDSYNC_ETLS, words);
  wait_log(&other, "event=tls_error");
  healthy_stop(&h);
  ASSERT_OK(fieldsync_close(c));
  stop(&other);
  stop(&good);
}

/* The right key passes the pin (tls_sync_push_pull); another fails after a
 * good chain, and the message shows the server's value. */
TEST(tls_pin_mismatch) {
  static const char *const words[] = {
      "server public key does not match the pin", pin_good, NULL};
  static const char *const bad_pin[] = {"64 hex digits", NULL};
  struct test_server s;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char token[128];
  char pin[65];
  fieldsync_db *c;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  start(&s, db, "good.pem");
  o = tls_opts(s.addr, token, "ca.pem", pin_good);
  healthy_start(&h, "healthy.db", &o);
  c = open_replica("c.db");
  snprintf(pin, sizeof(pin), "%s", pin_good);
  pin[0] = pin[0] == '0' ? '1' : '0';
  o = tls_opts(s.addr, token, "ca.pem", pin);
  expect_sync(c, &o, FIELDSYNC_ETLS, words);
  o = tls_opts(s.addr, token, "ca.pem", "abc");
  expect_sync(c, &o, FIELDSYNC_EINVAL, bad_pin);
  o = tls_opts(s.addr, token, "ca.pem", NULL);
  o.plaintext = 1;
  expect_sync(c, &o, FIELDSYNC_EINVAL, NULL);
  healthy_stop(&h);
  ASSERT_OK(fieldsync_close(c));
  stop(&s);
}

/* Plain bytes to the TLS port, from libfieldsync and raw (an HTTP
 * request): the client fails cleanly, the server logs the TLS error, closes
 * that connection only and serves the healthy session throughout. */
TEST(tls_plaintext_to_tls_port) {
  static const char *const words[] = {"TLS", NULL};
  struct test_server s;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char token[128];
  fieldsync_db *c;
  int fd;
  int rc;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  start(&s, db, "good.pem");
  o = tls_opts(s.addr, token, "ca.pem", NULL);
  healthy_start(&h, "healthy.db", &o);
  c = open_replica("c.db");
  memset(&o, 0, sizeof(o));
  o.server = s.addr;
  o.token = token;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.plaintext = 1;
  rc = fieldsync_sync(c, &o, NULL);
  printf("# %s: %s\n", fieldsync_errname(rc), fieldsync_errmsg(c));
  ASSERT(rc == FIELDSYNC_ENETWORK || rc == FIELDSYNC_EPROTOCOL ||
         rc == FIELDSYNC_ETLS);
  expect_sync(c, &o, rc, words);
  wait_log(&s, "wrong version number");
  fd = dial(s.port);
  {
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL),
              (ssize_t)sizeof(req) - 1);
  }
  ASSERT_LT(wait_closed(fd), 2000);
  close(fd);
  wait_log(&s, "http request");
  healthy_stop(&h);
  ASSERT_OK(fieldsync_close(c));
  stop(&s);
}

/* A TLS client at a plaintext server: "server did not speak TLS", and the
 * server goes on serving its plaintext clients. */
TEST(tls_client_to_plaintext_server) {
  static const char *const words[] = {"server did not speak TLS", NULL};
  struct test_server s;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char token[128];
  fieldsync_db *c;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  start(&s, db, NULL);
  memset(&o, 0, sizeof(o));
  o.server = s.addr;
  o.token = token;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.plaintext = 1;
  healthy_start(&h, "healthy.db", &o);
  c = open_replica("c.db");
  o = tls_opts(s.addr, token, "ca.pem", NULL);
  expect_sync(c, &o, FIELDSYNC_ETLS, words);
  wait_log(&s, "event=protocol_error");
  healthy_stop(&h);
  ASSERT_OK(fieldsync_close(c));
  stop(&s);
}

/* A peer that connects and never finishes the TLS handshake (sends
 * nothing, or half a ClientHello) is dropped at the handshake deadline
 * (300 ms here), while the healthy session, whose handshakes are quick,
 * goes on. */
TEST(tls_slow_handshake_hits_deadline) {
  struct test_server s;
  struct fieldsync_sync_opts o;
  struct healthy h;
  char db[256];
  char token[128];
  long long ms;
  int fd;
  int fd2;

  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  start(&s, db, "good.pem");
  o = tls_opts(s.addr, token, "ca.pem", NULL);
  healthy_start(&h, "healthy.db", &o);
  fd = dial(s.port);
  fd2 = dial(s.port);
  {
    /* A TLS record header announcing 512 bytes of ClientHello, and 4 of
     * them. */
    static const unsigned char part[] = {0x16, 0x03, 0x01, 0x02, 0x00,
                                         0x01, 0x00, 0x01, 0xfc};
    ASSERT_EQ(send(fd2, part, sizeof(part), MSG_NOSIGNAL),
              (ssize_t)sizeof(part));
  }
  ms = wait_closed(fd);
  printf("# silent peer closed after %lld ms\n", ms);
  ASSERT_GE(ms, 150);
  ASSERT_LT(ms, 3000);
  ms = wait_closed(fd2);
  ASSERT_LT(ms, 3000);
  close(fd);
  close(fd2);
  wait_log(&s, "phase=tls_handshake");
  healthy_stop(&h);
  stop(&s);
}

/* Hello and Pull in two TLS records that reach the server in one segment:
 * the Pull's record waits, still encrypted, while the token is checked,
 * and is answered after Welcome, as over plain TCP. */
TEST(tls_records_wait_while_busy) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello hello = FIELDSYNC__HELLO__INIT;
  Fieldsync__Pull pull = FIELDSYNC__PULL__INIT;
  Fieldsync__Bye bye = FIELDSYNC__BYE__INIT;
  struct test_server s;
  struct fsp_msg m;
  uint8_t replica[16] = {7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7};
  char buf[4096];
  char db[256];
  char token[128];
  SSL_CTX *ctx;
  BIO *mem = BIO_new(BIO_s_mem());
  SSL *ssl;
  int n;

  ASSERT(mem != NULL);
  setup_dir();
  make_db("server.db", db, sizeof(db), token);
  start(&s, db, "good.pem");
  ssl = raw_tls(s.port, &ctx);
  /* Both records go to memory first, then to the socket in one send. */
  BIO_up_ref(SSL_get_wbio(ssl));
  {
    BIO *sock = SSL_get_wbio(ssl);
    SSL_set0_wbio(ssl, mem);
    hello.has_protocol_version = 1;
    hello.protocol_version = FSP_PROTOCOL_VERSION;
    hello.has_replica_id = 1;
    hello.replica_id.data = replica;
    hello.replica_id.len = sizeof(replica);
    hello.device_token = token;
    hello.client_version = "test_tls";
    env.has_protocol_version = 1;
    env.protocol_version = FSP_PROTOCOL_VERSION;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
    env.hello = &hello;
    raw_record(ssl, &env);
    pull.has_cursor = 1;
    pull.cursor = 0;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_PULL;
    env.pull = &pull;
    raw_record(ssl, &env);
    n = BIO_read(mem, buf, (int)sizeof(buf));
    ASSERT(n > 0 && BIO_ctrl_pending(mem) == 0);
    ASSERT_EQ(send(SSL_get_fd(ssl), buf, (size_t)n, MSG_NOSIGNAL), n);
    SSL_set0_wbio(ssl, sock); /* frees mem */
  }
  raw_recv(ssl, &m);
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_WELCOME);
  fsp_msg_close(&m);
  raw_recv(ssl, &m);
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  fsp_msg_close(&m);
  env.body_case = FIELDSYNC__ENVELOPE__BODY_BYE;
  env.bye = &bye;
  raw_record(ssl, &env);
  close(SSL_get_fd(ssl));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  wait_log(&s, "reason=\"bye\"");
  stop(&s);
}

/* fieldsyncd starts only with TLS, or with --plaintext on loopback, and
 * refuses unusable certificates; none of these binds anything. */
TEST(tls_server_refuses_to_start) {
  char out[512];
  char err[1024];
  char db[256];
  char cert[256];
  char key[256];
  char ca[256];

  setup_dir();
  path_in(db, sizeof(db), dir, "server.db");
  path_in(cert, sizeof(cert), pki, "good.pem");
  path_in(key, sizeof(key), pki, "server.key");
  path_in(ca, sizeof(ca), pki, "ca.pem");
  {
    char *a[] = {(char *)fieldsyncd, "--db",        db,
                 "--listen",         "127.0.0.1:0", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "no TLS certificate") != NULL);
    ASSERT(strstr(err, "--plaintext") != NULL);
  }
  {
    /* Refused while reading the configuration: 0.0.0.0 is never bound. */
    char *a[] = {(char *)fieldsyncd, "--db",        db,  "--listen",
                 "0.0.0.0:0",        "--plaintext", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "plaintext is only allowed on loopback") != NULL);
    ASSERT_STR_EQ(out, "");
  }
  {
    char *a[] = {(char *)fieldsyncd, "--db",        db,  "--listen",
                 "[::]:0",           "--plaintext", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "only allowed on loopback") != NULL);
  }
  {
    char *a[] = {(char *)fieldsyncd, "--db", db, "--tls-cert", cert,
                 "--plaintext",      NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "--tls-key") != NULL);
  }
  {
    char *a[] = {
        (char *)fieldsyncd, "--db", db, "--tls-cert", cert, "--tls-key", key,
        "--plaintext",      NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "exclude each other") != NULL);
  }
  {
    char missing[300];
    snprintf(missing, sizeof(missing), "%s/missing.pem", dir);
    char *a[] = {
        (char *)fieldsyncd, "--db",  db,          "--listen", "127.0.0.1:0",
        "--tls-cert",       missing, "--tls-key", key,        NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 1);
    ASSERT(strstr(err, "cannot open --tls-cert") != NULL);
    ASSERT(strstr(err, "No such file") != NULL);
  }
  {
    /* The CA's certificate with the server's key. */
    char *a[] = {
        (char *)fieldsyncd, "--db", db,          "--listen", "127.0.0.1:0",
        "--tls-cert",       ca,     "--tls-key", key,        NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 1);
    ASSERT(strstr(err, "is not the key of --tls-cert") != NULL);
  }
  {
    /* A key where the certificate belongs. */
    char *a[] = {
        (char *)fieldsyncd, "--db", db,          "--listen", "127.0.0.1:0",
        "--tls-cert",       key,    "--tls-key", key,        NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 1);
    ASSERT(strstr(err, "cannot load --tls-cert") != NULL);
  }
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(tls_sync_push_pull) TEST_ENTRY(tls_wrong_ca)
          TEST_ENTRY(tls_expired_certificate) TEST_ENTRY(tls_wrong_host)
              TEST_ENTRY(tls_pin_mismatch) TEST_ENTRY(tls_plaintext_to_tls_port)
                  TEST_ENTRY(tls_client_to_plaintext_server)
                      TEST_ENTRY(tls_slow_handshake_hits_deadline)
                          TEST_ENTRY(tls_records_wait_while_busy)
                              TEST_ENTRY(tls_server_refuses_to_start)};
  char cmd[256];
  int rc;

  if (argc < 3) {
    fprintf(stderr, "usage: test_tls FIELDSYNCD FIELDSYNC-ADMIN [TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  snprintf(pki, sizeof(pki), "/tmp/fs-pki-XXXXXX");
  if (mkdtemp(pki) == NULL) {
    perror("mkdtemp");
    return 1;
  }
  make_pki();
  rc =
      test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2, argv + 2);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", pki);
  if (system(cmd) != 0)
    fprintf(stderr, "# could not remove %s\n", pki);
  return rc;
}
