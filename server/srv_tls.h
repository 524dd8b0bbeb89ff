/* SPDX-License-Identifier: MIT */
/* fieldsyncd's TLS through OpenSSL: the server context made from
 * --tls-cert/--tls-key, and per connection an SSL object between two memory
 * BIOs. libuv does all socket I/O; this module only turns ciphertext into
 * plaintext and back (sans-I/O, like the frame decoder), so srv_conn.c
 * feeds what it reads and writes out what it is given. Loop thread only.
 * No OpenSSL type appears here, so srv.h stays free of OpenSSL headers. */
#ifndef SRV_TLS_H
#define SRV_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Return codes besides 0. */
enum {
  SRV_TLS_EOF = -1,   /* the peer ended TLS (close_notify) */
  SRV_TLS_EFAIL = -2, /* a TLS failure; the message says which */
  SRV_TLS_ENOMEM = -3
};

/* At most this much plaintext goes into one srv_tls_conn_write call, so
 * the ciphertext waiting in the write BIO stays small: the caller takes it
 * out (srv_tls_conn_output) after every call. */
#define SRV_TLS_WRITE_CHUNK (64u * 1024u)

struct srv_tls;      /* the server context (an SSL_CTX) */
struct srv_tls_conn; /* one connection (an SSL and its two memory BIOs) */

/* Makes the server context: the certificate chain from cert and its
 * private key from key (both PEM), TLS 1.2 at least, ECDHE with AEAD
 * ciphers only under TLS 1.2, TLS 1.3's defaults, no renegotiation, no
 * session resumption (clients make a new context per sync). Logs a
 * warning when the certificate has expired or is not yet valid. Returns 0
 * with *out set, or -1 with a message in err ("cannot load ..."). Free it
 * with srv_tls_close. */
int srv_tls_open(struct srv_tls **out, const char *cert, const char *key,
                 char *err, size_t errlen);
/* Frees the context. NULL is a no-op. */
void srv_tls_close(struct srv_tls *t);

/* A new server-side connection in the accept state. 0 or SRV_TLS_ENOMEM.
 * Memory: about 16 KiB per idle session after the handshake (bench_tls
 * measures the server's RSS; plain TCP costs under 1 KiB), because the
 * record buffers are given back while idle; a handshake, or a record in
 * flight, holds about 34 KiB more for a moment. The read BIO holds at most
 * one socket read (64 KiB) and a partial record, because srv_conn.c reads
 * only once it is drained; the write BIO is emptied after every call. */
int srv_tls_conn_open(struct srv_tls *t, struct srv_tls_conn **out);
/* Frees a connection's TLS state. NULL is a no-op. */
void srv_tls_conn_close(struct srv_tls_conn *tc);

/* Hands len bytes of ciphertext from the peer to TLS (kept until read).
 * 0 or SRV_TLS_ENOMEM. */
int srv_tls_conn_feed(struct srv_tls_conn *tc, const uint8_t *data, size_t len);

/* Moves the handshake on and then decrypts: on 0, *got bytes of plaintext
 * (at most cap) are in buf, and *got == 0 means TLS needs more ciphertext.
 * SRV_TLS_EOF when the peer closed TLS; SRV_TLS_EFAIL with OpenSSL's
 * reason in err (errlen bytes) for a failed handshake, bytes that are not
 * TLS, or a bad record. Either way, take the output afterwards: it may
 * hold handshake messages or an alert for the peer. */
int srv_tls_conn_read(struct srv_tls_conn *tc, uint8_t *buf, size_t cap,
                      size_t *got, char *err, size_t errlen);

/* Encrypts len (<= SRV_TLS_WRITE_CHUNK) bytes of plaintext. Only after the
 * handshake. 0 or SRV_TLS_EFAIL (message in err). */
int srv_tls_conn_write(struct srv_tls_conn *tc, const uint8_t *data, size_t len,
                       char *err, size_t errlen);

/* Takes the ciphertext waiting for the peer: *out is an fsp_malloc'd
 * buffer of *len bytes that the caller frees, or NULL when nothing waits.
 * 0 or SRV_TLS_ENOMEM. */
int srv_tls_conn_output(struct srv_tls_conn *tc, uint8_t **out, size_t *len);

/* True once the handshake has finished. */
bool srv_tls_conn_ready(const struct srv_tls_conn *tc);
/* The negotiated version and cipher ("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
 * static strings, for logs. */
const char *srv_tls_conn_version(const struct srv_tls_conn *tc);
const char *srv_tls_conn_cipher(const struct srv_tls_conn *tc);

#endif
