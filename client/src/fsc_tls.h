/* SPDX-License-Identifier: MIT */
/* The sync session's transport: a TCP connection (fsc_os.h) carrying FSP
 * either inside TLS (OpenSSL, the default) or, when the caller asks for
 * plaintext, as it is. OpenSSL works between two memory BIOs and every
 * socket call stays in fsc_os, so this file has no OS calls and
 * fsc_sync.c sees one byte stream whichever the transport. Every function
 * returns 0 or a negative FIELDSYNC_E* code. */
#ifndef FSC_TLS_H
#define FSC_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "fieldsync.h"

struct fsc_tls;

/* Connects to host:port within timeout_ms (fsc_os_connect), then, unless
 * o->plaintext, runs the TLS handshake with each wait bounded by
 * timeout_ms: TLS 1.2 or newer, the server's chain verified against
 * o->ca_file (or the system's default store when it is NULL), the
 * certificate checked against host (a name, or an IP address literal), and
 * when o->pin_sha256 is set, the SHA-256 of the server's public key
 * (SubjectPublicKeyInfo, DER) compared with it. o->pin_sha256 must already
 * be 64 hex digits (fieldsync_sync checks).
 * On 0, *out is the connection; close it with fsc_tls_close. Otherwise
 * *out is NULL and err (errlen bytes) says why in a few words, such as
 * "certificate verify failed: certificate has expired":
 * FIELDSYNC_ENETWORK, FIELDSYNC_ETIMEOUT, FIELDSYNC_ETLS or
 * FIELDSYNC_ENOMEM. */
int fsc_tls_open(struct fsc_tls **out, const char *host, uint16_t port,
                 const struct fieldsync_sync_opts *o, int timeout_ms, char *err,
                 size_t errlen);

/* Sends all len bytes (encrypted with TLS), waiting at most timeout_ms
 * each time the socket cannot take more. 0, FIELDSYNC_ENETWORK,
 * FIELDSYNC_ETIMEOUT or FIELDSYNC_ETLS (fsc_tls_errmsg says why). */
int fsc_tls_send_all(struct fsc_tls *t, const void *buf, size_t len,
                     int timeout_ms);

/* Waits at most timeout_ms for bytes each time the socket has none, then
 * stores up to cap bytes of the stream in buf and their count in *got.
 * *got == 0 means the server ended the connection. 0, FIELDSYNC_ENETWORK,
 * FIELDSYNC_ETIMEOUT or FIELDSYNC_ETLS (a bad TLS record, or TLS bytes on
 * a plaintext connection: fsc_tls_errmsg says which). */
int fsc_tls_recv(struct fsc_tls *t, void *buf, size_t cap, int timeout_ms,
                 size_t *got);

/* What the last FIELDSYNC_ETLS from send or recv was about. Owned by t. */
const char *fsc_tls_errmsg(const struct fsc_tls *t);

/* Closes the connection and frees t. NULL is a no-op. */
void fsc_tls_close(struct fsc_tls *t);

#endif
