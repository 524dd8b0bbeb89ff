/* SPDX-License-Identifier: MIT */
/* The TLS policy both ends of FSP use (PROTOCOL.md "Security"): TLS 1.2 or
 * newer, and under TLS 1.2 only ECDHE key exchange with AEAD ciphers
 * (AES-GCM, ChaCha20-Poly1305). TLS 1.3's own suites are all AEAD and keep
 * OpenSSL's defaults. One definition, so server and client cannot drift. */
#ifndef FSP_TLS_H
#define FSP_TLS_H

/* For SSL_CTX_set_cipher_list (TLS 1.2 only). */
#define FSP_TLS12_CIPHERS                                                      \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                 \
  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                 \
  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* The largest TLS record's plaintext (RFC 8446 5.1): SSL_read returns at
 * most this much at a time. */
#define FSP_TLS_RECORD_MAX 16384u

#endif
