/* SPDX-License-Identifier: MIT */
/* TLS for fieldsyncd (srv_tls.h): an SSL_CTX built from PEM files, and per
 * connection an SSL between a read and a write memory BIO. OpenSSL's error
 * queue is per thread and shared by every connection on the loop, so each
 * SSL call is preceded by ERR_clear_error() and its reason is taken (and
 * the queue emptied) right after a failure. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "fsp_alloc.h"
#include "fsp_tls.h"
#include "srv.h"
#include "srv_tls.h"

struct srv_tls {
  SSL_CTX *ctx;
};

struct srv_tls_conn {
  SSL *ssl;
  BIO *rbio; /* ciphertext from the peer; owned by ssl */
  BIO *wbio; /* ciphertext for the peer; owned by ssl */
};

/* Writes the oldest queued OpenSSL error as ERR_error_string_n formats it
 * ("error:0A00010B:SSL routines::wrong version number"), or `fallback`
 * when the queue is empty, and empties the queue. */
static void take_error(char *err, size_t errlen, const char *fallback) {
  unsigned long e = ERR_get_error();

  if (err != NULL && errlen > 0) {
    if (e != 0)
      ERR_error_string_n(e, err, errlen);
    else
      snprintf(err, errlen, "%s", fallback);
  }
  ERR_clear_error();
}

/* The first queued error's reason alone ("no start line"), for start-up
 * messages: the first is the cause, later ones only say who noticed. */
static void take_reason(char *buf, size_t len) {
  unsigned long e = ERR_peek_error();
  const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

  snprintf(buf, len, "%s", r != NULL ? r : "unknown OpenSSL error");
  ERR_clear_error();
}

/* True when the first queued error says a key and a certificate differ. */
static bool key_mismatch(void) {
  unsigned long e = ERR_peek_error();

  return ERR_GET_LIB(e) == ERR_LIB_X509 &&
         ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
}

/* Checks that path can be opened, so a missing file gets the OS's words
 * rather than OpenSSL's. */
static int readable(const char *flag, const char *path, char *err,
                    size_t errlen) {
  FILE *f = fopen(path, "r");

  if (f == NULL) {
    snprintf(err, errlen, "cannot open %s %s: %s", flag, path, strerror(errno));
    return -1;
  }
  fclose(f);
  return 0;
}

/* Logs a warning when the certificate in use is outside its validity
 * period: clients will refuse it, and operators should hear why first. */
static void check_validity(SSL_CTX *ctx, const char *path) {
  X509 *x = SSL_CTX_get0_certificate(ctx);

  if (x == NULL)
    return;
  if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
    srv_log(SRV_WARN, "tls_cert_expired",
            "file=%s note=\"clients will refuse this certificate\"", path);
  else if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0)
    srv_log(SRV_WARN, "tls_cert_not_yet_valid",
            "file=%s note=\"clients will refuse this certificate\"", path);
}

int srv_tls_open(struct srv_tls **out, const char *cert, const char *key,
                 char *err, size_t errlen) {
  struct srv_tls *t = NULL;
  SSL_CTX *ctx = NULL;
  char why[160];

  *out = NULL;
  ERR_clear_error();
  if (readable("--tls-cert", cert, err, errlen) != 0 ||
      readable("--tls-key", key, err, errlen) != 0)
    return -1;
  ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == NULL) {
    take_reason(why, sizeof(why));
    snprintf(err, errlen, "cannot make a TLS context: %s", why);
    goto fail;
  }
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(ctx, FSP_TLS12_CIPHERS) != 1) {
    take_reason(why, sizeof(why));
    snprintf(err, errlen, "cannot set the TLS policy: %s", why);
    goto fail;
  }
  /* Renegotiation only costs the server; compression leaks (CRIME). The
   * server's cipher order wins. Clients never resume a session (each sync
   * makes a new context), so neither tickets nor a cache are worth their
   * memory and bytes. Idle connections give their buffers back. */
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE |
                               SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    take_reason(why, sizeof(why));
    snprintf(err, errlen,
             "cannot load --tls-cert %s: %s (want a PEM certificate)", cert,
             why);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    if (key_mismatch()) {
      ERR_clear_error();
      snprintf(err, errlen, "--tls-key %s is not the key of --tls-cert %s", key,
               cert);
      goto fail;
    }
    take_reason(why, sizeof(why));
    snprintf(err, errlen,
             "cannot load --tls-key %s: %s (want a PEM private key)", key, why);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    take_reason(why, sizeof(why));
    snprintf(err, errlen, "--tls-key %s does not match --tls-cert %s: %s", key,
             cert, why);
    goto fail;
  }
  check_validity(ctx, cert);
  t = fsp_malloc(sizeof(*t));
  if (t == NULL) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  t->ctx = ctx;
  *out = t;
  return 0;
fail:
  SSL_CTX_free(ctx);
  return -1;
}

void srv_tls_close(struct srv_tls *t) {
  if (t == NULL)
    return;
  SSL_CTX_free(t->ctx);
  fsp_free(t);
}

int srv_tls_conn_open(struct srv_tls *t, struct srv_tls_conn **out) {
  struct srv_tls_conn *tc = fsp_calloc(1, sizeof(*tc));

  *out = NULL;
  if (tc == NULL)
    return SRV_TLS_ENOMEM;
  tc->ssl = SSL_new(t->ctx);
  tc->rbio = BIO_new(BIO_s_mem());
  tc->wbio = BIO_new(BIO_s_mem());
  if (tc->ssl == NULL || tc->rbio == NULL || tc->wbio == NULL) {
    BIO_free(tc->rbio);
    BIO_free(tc->wbio);
    SSL_free(tc->ssl);
    fsp_free(tc);
    ERR_clear_error();
    return SRV_TLS_ENOMEM;
  }
  /* An empty read BIO means "wait for more", not end of stream: the end
   * comes from the socket, which srv_conn.c watches. */
  BIO_set_mem_eof_return(tc->rbio, -1);
  BIO_set_mem_eof_return(tc->wbio, -1);
  SSL_set_bio(tc->ssl, tc->rbio, tc->wbio);
  SSL_set_accept_state(tc->ssl);
  *out = tc;
  return 0;
}

void srv_tls_conn_close(struct srv_tls_conn *tc) {
  if (tc == NULL)
    return;
  SSL_free(tc->ssl); /* frees both BIOs */
  fsp_free(tc);
}

int srv_tls_conn_feed(struct srv_tls_conn *tc, const uint8_t *data,
                      size_t len) {
  while (len > 0) {
    int n = len > INT_MAX ? INT_MAX : (int)len;
    int w = BIO_write(tc->rbio, data, n);

    if (w <= 0) {
      ERR_clear_error();
      return SRV_TLS_ENOMEM;
    }
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Maps the result r of an SSL call to 0 (wants more bytes), SRV_TLS_EOF
 * or SRV_TLS_EFAIL with the reason in err. */
static int ssl_result(struct srv_tls_conn *tc, int r, char *err,
                      size_t errlen) {
  switch (SSL_get_error(tc->ssl, r)) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE: /* never with a memory BIO; harmless */
    return 0;
  case SSL_ERROR_ZERO_RETURN:
    return SRV_TLS_EOF;
  default:
    take_error(err, errlen, "TLS failure without a reason");
    return SRV_TLS_EFAIL;
  }
}

int srv_tls_conn_read(struct srv_tls_conn *tc, uint8_t *buf, size_t cap,
                      size_t *got, char *err, size_t errlen) {
  int r;

  *got = 0;
  ERR_clear_error();
  if (!SSL_is_init_finished(tc->ssl)) {
    r = SSL_do_handshake(tc->ssl);
    if (r != 1)
      return ssl_result(tc, r, err, errlen);
  }
  r = SSL_read(tc->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
  if (r > 0) {
    *got = (size_t)r;
    return 0;
  }
  return ssl_result(tc, r, err, errlen);
}

int srv_tls_conn_write(struct srv_tls_conn *tc, const uint8_t *data, size_t len,
                       char *err, size_t errlen) {
  int r;

  if (len == 0)
    return 0;
  if (len > SRV_TLS_WRITE_CHUNK || !SSL_is_init_finished(tc->ssl)) {
    snprintf(err, errlen, "internal: write before the handshake or too big");
    return SRV_TLS_EFAIL;
  }
  ERR_clear_error();
  /* Without SSL_MODE_ENABLE_PARTIAL_WRITE, and with a memory BIO that
   * always takes everything, SSL_write writes all or fails. */
  r = SSL_write(tc->ssl, data, (int)len);
  if (r == (int)len)
    return 0;
  take_error(err, errlen, "TLS write failed");
  return SRV_TLS_EFAIL;
}

int srv_tls_conn_output(struct srv_tls_conn *tc, uint8_t **out, size_t *len) {
  size_t n = BIO_ctrl_pending(tc->wbio);
  uint8_t *p;

  *out = NULL;
  *len = 0;
  if (n == 0)
    return 0;
  p = fsp_malloc(n);
  if (p == NULL)
    return SRV_TLS_ENOMEM;
  /* A memory BIO hands out everything it holds in one read. */
  if (n > INT_MAX || BIO_read(tc->wbio, p, (int)n) != (int)n) {
    fsp_free(p);
    ERR_clear_error();
    return SRV_TLS_ENOMEM;
  }
  *out = p;
  *len = n;
  return 0;
}

bool srv_tls_conn_ready(const struct srv_tls_conn *tc) {
  return SSL_is_init_finished(tc->ssl) != 0;
}

const char *srv_tls_conn_version(const struct srv_tls_conn *tc) {
  return SSL_get_version(tc->ssl);
}

const char *srv_tls_conn_cipher(const struct srv_tls_conn *tc) {
  const char *c = SSL_get_cipher_name(tc->ssl);

  return c != NULL ? c : "?";
}
