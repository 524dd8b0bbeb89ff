/* SPDX-License-Identifier: MIT */
/* The sync transport (fsc_tls.h): plain TCP, or TLS through OpenSSL with
 * the SSL between two memory BIOs and the socket driven by fsc_os, which
 * keeps the deadlines and the platform code in one place. Each connection
 * has its own SSL_CTX, so nothing is shared between threads or handles.
 * OpenSSL's error queue is per thread: it is cleared before each SSL call
 * and emptied after reading a failure's reason. */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "fsc_os.h"
#include "fsc_tls.h"
#include "fsp_alloc.h"
#include "fsp_tls.h"

/* Ciphertext moved between the socket and OpenSSL at a time. */
#define TLS_IO_CHUNK (FSP_TLS_RECORD_MAX + 512u)
/* Plaintext encrypted per SSL_write, so the write BIO stays small. */
#define TLS_WRITE_CHUNK (4u * FSP_TLS_RECORD_MAX)
/* A rough bound on the host text kept for messages. */
#define TLS_HOST_MAX 255u

struct fsc_tls {
  int fd;
  SSL_CTX *ctx; /* NULL: plaintext */
  SSL *ssl;
  BIO *rbio;    /* ciphertext from the server; owned by ssl */
  BIO *wbio;    /* ciphertext for the server; owned by ssl */
  bool got_any; /* some byte has come from the server */
  char host[TLS_HOST_MAX + 1];
  char err[256];
  uint8_t io[TLS_IO_CHUNK];
};

const char *fsc_tls_errmsg(const struct fsc_tls *t) {
  return t != NULL && t->err[0] != '\0' ? t->err : "TLS failure";
}

/* The oldest queued OpenSSL error's reason ("wrong version number"), or
 * fallback; empties the queue. */
static void take_reason(char *buf, size_t len, const char *fallback) {
  unsigned long e = ERR_get_error();
  const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

  snprintf(buf, len, "%s", r != NULL ? r : fallback);
  ERR_clear_error();
}

/* Hex digit value, or -1. */
static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* ---- plumbing between OpenSSL and the socket --------------------------- */

/* Sends every byte OpenSSL has queued for the server. */
static int flush_out(struct fsc_tls *t, int timeout_ms) {
  while (BIO_ctrl_pending(t->wbio) > 0) {
    int n = BIO_read(t->wbio, t->io, (int)sizeof(t->io));
    int rc;

    if (n <= 0)
      break;
    rc = fsc_os_send_all(t->fd, t->io, (size_t)n, timeout_ms);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* True when b starts like a TLS record: a content type from 20 (change
 * cipher spec) to 24 (heartbeat), then major version 3. An FSP frame never
 * does, because its length would be over 335 MiB. */
static bool looks_like_tls(const uint8_t *b, size_t n) {
  if (n >= 1 && (b[0] < 20 || b[0] > 24))
    return false;
  return n < 2 || b[1] == 3;
}

/* Reads what the socket has into OpenSSL's read BIO. *eof is set when the
 * server closed the connection. */
static int fill_in(struct fsc_tls *t, int timeout_ms, bool *eof) {
  size_t got = 0;
  int rc = fsc_os_recv(t->fd, t->io, sizeof(t->io), timeout_ms, &got);

  *eof = false;
  if (rc != 0)
    return rc;
  if (got == 0) {
    *eof = true;
    return 0;
  }
  if (!t->got_any && !looks_like_tls(t->io, got)) {
    snprintf(t->err, sizeof(t->err),
             "server did not speak TLS (is it a fieldsyncd started with "
             "--plaintext? then sync with plaintext, on loopback only)");
    return FIELDSYNC_ETLS;
  }
  t->got_any = true;
  if (BIO_write(t->rbio, t->io, (int)got) != (int)got) {
    ERR_clear_error();
    return FIELDSYNC_ENOMEM;
  }
  return 0;
}

/* ---- opening ----------------------------------------------------------- */

/* The TLS context: the shared policy (fsp_tls.h), peer verification
 * against ca_file or the default store, and no session resumption (each
 * sync makes a new context, so a session would never be reused). */
static int make_ctx(struct fsc_tls *t, const char *ca_file) {
  char why[160];

  t->ctx = SSL_CTX_new(TLS_client_method());
  if (t->ctx == NULL) {
    take_reason(why, sizeof(why), "out of memory");
    snprintf(t->err, sizeof(t->err), "cannot make a TLS context: %s", why);
    return FIELDSYNC_ENOMEM;
  }
  if (SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(t->ctx, FSP_TLS12_CIPHERS) != 1) {
    take_reason(why, sizeof(why), "unknown reason");
    snprintf(t->err, sizeof(t->err), "cannot set the TLS policy: %s", why);
    return FIELDSYNC_ETLS;
  }
  SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                  SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
  if (ca_file != NULL) {
    FILE *f = fopen(ca_file, "r");

    /* OpenSSL names a missing file less clearly than the C library. */
    if (f == NULL) {
      snprintf(t->err, sizeof(t->err), "cannot open the CA file %.120s: %s",
               ca_file, strerror(errno));
      return FIELDSYNC_ETLS;
    }
    fclose(f);
    if (SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL) != 1) {
      take_reason(why, sizeof(why), "unreadable");
      snprintf(t->err, sizeof(t->err), "cannot load the CA file %.120s: %.100s",
               ca_file, why);
      return FIELDSYNC_ETLS;
    }
  } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
    take_reason(why, sizeof(why), "unknown reason");
    snprintf(t->err, sizeof(t->err),
             "cannot load the system's CA certificates: %s (give a CA file)",
             why);
    return FIELDSYNC_ETLS;
  }
  return 0;
}

/* The SSL for one connection, told which host to expect: an IP literal is
 * matched against the certificate's IP addresses, a name against its DNS
 * names (and sent as SNI). */
static int make_ssl(struct fsc_tls *t) {
  t->ssl = SSL_new(t->ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    t->rbio = NULL;
    t->wbio = NULL;
    ERR_clear_error();
    snprintf(t->err, sizeof(t->err), "out of memory");
    return FIELDSYNC_ENOMEM;
  }
  BIO_set_mem_eof_return(t->rbio, -1);
  BIO_set_mem_eof_return(t->wbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  SSL_set_connect_state(t->ssl);
  if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), t->host) != 1) {
    ERR_clear_error(); /* not an IP literal: a name */
    if (SSL_set1_host(t->ssl, t->host) != 1 ||
        SSL_set_tlsext_host_name(t->ssl, t->host) != 1) {
      ERR_clear_error();
      snprintf(t->err, sizeof(t->err), "cannot set the expected host name");
      return FIELDSYNC_ETLS;
    }
    /* "*.example.org" matches one label only, never "*a.example.org". */
    SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  }
  return 0;
}

/* Explains a failed handshake: a certificate the chain check refused
 * (OpenSSL's words, "certificate has expired"), or OpenSSL's reason, such
 * as an alert from the server. */
static int handshake_fail(struct fsc_tls *t) {
  long v = SSL_get_verify_result(t->ssl);
  char why[160];

  if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
    snprintf(t->err, sizeof(t->err),
             "certificate verify failed: hostname mismatch (the server's "
             "certificate is not for \"%.100s\")",
             t->host);
  else if (v != X509_V_OK)
    snprintf(t->err, sizeof(t->err), "certificate verify failed: %s",
             X509_verify_cert_error_string(v));
  else {
    take_reason(why, sizeof(why), "the connection failed");
    snprintf(t->err, sizeof(t->err), "TLS handshake failed: %s", why);
  }
  ERR_clear_error();
  return FIELDSYNC_ETLS;
}

/* The handshake, each wait bounded by timeout_ms. */
static int handshake(struct fsc_tls *t, int timeout_ms) {
  for (;;) {
    bool eof = false;
    int r;
    int rc;

    ERR_clear_error();
    r = SSL_do_handshake(t->ssl);
    /* Whatever happened, OpenSSL's output goes out first: the next step of
     * the handshake, or the alert that tells the server why we stop. */
    rc = flush_out(t, timeout_ms);
    if (r == 1)
      return rc;
    if (SSL_get_error(t->ssl, r) != SSL_ERROR_WANT_READ)
      return handshake_fail(t);
    if (rc == 0)
      rc = fill_in(t, timeout_ms, &eof);
    if (rc == FIELDSYNC_ETIMEOUT) {
      snprintf(t->err, sizeof(t->err),
               "no TLS handshake from the server within %d ms", timeout_ms);
      return rc;
    }
    if (rc == FIELDSYNC_ENETWORK) {
      snprintf(t->err, sizeof(t->err),
               "lost the connection during the TLS handshake");
      return rc;
    }
    if (rc != 0)
      return rc;
    if (eof) {
      /* No alert, so no TLS verdict: a server that is at its connection
       * limit or stopping closes like this. Transient, like the network. */
      snprintf(t->err, sizeof(t->err),
               "the server closed the connection during the TLS handshake "
               "(it may be busy or stopping; try again later)");
      return FIELDSYNC_ENETWORK;
    }
  }
}

/* Compares the SHA-256 of the server's SubjectPublicKeyInfo with the pin
 * (64 hex digits). On a mismatch the message shows the server's value,
 * which is what an operator needs to fix a stale pin. */
static int check_pin(struct fsc_tls *t, const char *pin) {
  unsigned char want[SHA256_DIGEST_LENGTH];
  unsigned char got[SHA256_DIGEST_LENGTH];
  unsigned char *der = NULL;
  char hex[2 * SHA256_DIGEST_LENGTH + 1];
  X509 *x;
  int n;
  int i;

  for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
    want[i] = (unsigned char)(hexval(pin[2 * i]) << 4 | hexval(pin[2 * i + 1]));
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
  x = SSL_get1_peer_certificate(t->ssl);
#else
  x = SSL_get_peer_certificate(t->ssl);
#endif
  if (x == NULL) {
    snprintf(t->err, sizeof(t->err), "the server sent no certificate");
    return FIELDSYNC_ETLS;
  }
  n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
  X509_free(x);
  if (n <= 0) {
    ERR_clear_error();
    snprintf(t->err, sizeof(t->err), "cannot read the server's public key");
    return FIELDSYNC_ETLS;
  }
  SHA256(der, (size_t)n, got);
  OPENSSL_free(der);
  if (CRYPTO_memcmp(want, got, sizeof(got)) == 0)
    return 0;
  for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
    snprintf(hex + 2 * i, 3, "%02x", got[i]);
  snprintf(t->err, sizeof(t->err),
           "server public key does not match the pin (its SHA-256 is %s)", hex);
  return FIELDSYNC_ETLS;
}

int fsc_tls_open(struct fsc_tls **out, const char *host, uint16_t port,
                 const struct fieldsync_sync_opts *o, int timeout_ms, char *err,
                 size_t errlen) {
  struct fsc_tls *t = fsp_calloc(1, sizeof(*t));
  int rc;

  *out = NULL;
  if (t == NULL) {
    snprintf(err, errlen, "out of memory");
    return FIELDSYNC_ENOMEM;
  }
  t->fd = -1;
  snprintf(t->host, sizeof(t->host), "%s", host);
  rc = fsc_os_connect(host, port, timeout_ms, &t->fd, t->err, sizeof(t->err));
  if (rc != 0 || o->plaintext)
    goto done;
  rc = make_ctx(t, o->ca_file);
  if (rc == 0)
    rc = make_ssl(t);
  if (rc == 0)
    rc = handshake(t, timeout_ms);
  if (rc == 0 && o->pin_sha256 != NULL)
    rc = check_pin(t, o->pin_sha256);
done:
  if (rc != 0) {
    snprintf(err, errlen, "%s", t->err);
    fsc_tls_close(t);
    return rc;
  }
  t->err[0] = '\0';
  *out = t;
  return 0;
}

void fsc_tls_close(struct fsc_tls *t) {
  if (t == NULL)
    return;
  SSL_free(t->ssl); /* and both BIOs */
  SSL_CTX_free(t->ctx);
  fsc_os_close(t->fd);
  fsp_free(t);
}

/* ---- the byte stream --------------------------------------------------- */

int fsc_tls_send_all(struct fsc_tls *t, const void *buf, size_t len,
                     int timeout_ms) {
  const uint8_t *p = buf;

  if (t->ssl == NULL)
    return fsc_os_send_all(t->fd, buf, len, timeout_ms);
  while (len > 0) {
    size_t n = len < TLS_WRITE_CHUNK ? len : TLS_WRITE_CHUNK;
    int r;
    int rc;

    ERR_clear_error();
    r = SSL_write(t->ssl, p, (int)n);
    if (r <= 0) {
      char why[160];
      take_reason(why, sizeof(why), "write failed");
      snprintf(t->err, sizeof(t->err), "TLS: %s", why);
      return FIELDSYNC_ETLS;
    }
    p += r;
    len -= (size_t)r;
    rc = flush_out(t, timeout_ms);
    if (rc != 0)
      return rc;
  }
  return 0;
}

int fsc_tls_recv(struct fsc_tls *t, void *buf, size_t cap, int timeout_ms,
                 size_t *got) {
  *got = 0;
  if (t->ssl == NULL) {
    int rc = fsc_os_recv(t->fd, buf, cap, timeout_ms, got);

    /* TLS where plaintext was asked for: say so, rather than fail on the
     * "frame" a TLS alert would make. */
    if (rc == 0 && *got > 0 && !t->got_any) {
      t->got_any = true;
      if (looks_like_tls(buf, *got)) {
        snprintf(t->err, sizeof(t->err),
                 "the server speaks TLS, but this sync is plaintext: sync "
                 "with TLS and the server's CA");
        return FIELDSYNC_ETLS;
      }
    }
    return rc;
  }
  for (;;) {
    bool eof = false;
    int r;
    int rc;

    ERR_clear_error();
    r = SSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
    if (r > 0) {
      *got = (size_t)r;
      return 0;
    }
    switch (SSL_get_error(t->ssl, r)) {
    case SSL_ERROR_ZERO_RETURN:
      return 0; /* the server closed TLS */
    case SSL_ERROR_WANT_READ:
      break;
    default: {
      char why[160];
      take_reason(why, sizeof(why), "read failed");
      snprintf(t->err, sizeof(t->err), "TLS: %s", why);
      return FIELDSYNC_ETLS;
    }
    }
    rc = flush_out(t, timeout_ms);
    if (rc == 0)
      rc = fill_in(t, timeout_ms, &eof);
    if (rc != 0)
      return rc;
    if (eof)
      return 0; /* the frame decoder tells a cut frame from a clean end */
  }
}
