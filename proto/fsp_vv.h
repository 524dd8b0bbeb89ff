/* SPDX-License-Identifier: MIT */
/* Version vectors (DESIGN.md section 2): replica id -> counter, kept sorted by
 * replica id (bytewise) with no duplicate replica and no zero counter. That
 * canonical form makes equal vectors byte-for-byte equal when encoded. */
#ifndef FSP_VV_H
#define FSP_VV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FSP_ID_LEN 16u
/* Default cap on entries (distinct replicas that edited one record). */
#define FSP_DEFAULT_MAX_VV 256u
/* Bytes per entry in the canonical encoding: replica id + big-endian u64. */
#define FSP_VV_ENTRY_BYTES (FSP_ID_LEN + 8u)

struct fsp_vv_entry {
  uint8_t replica[FSP_ID_LEN];
  uint64_t counter; /* >= 1 */
};

struct fsp_vv {
  struct fsp_vv_entry *e; /* sorted by replica, owned (fsp_malloc) */
  size_t n;
  size_t cap;
};

enum fsp_vv_order {
  FSP_VV_EQUAL = 0,
  FSP_VV_DOMINATES = 1,  /* a > b: a has seen everything b has, and more */
  FSP_VV_DOMINATED = 2,  /* a < b */
  FSP_VV_CONCURRENT = 3  /* neither has seen all of the other */
};

/* An empty vector; needs no allocation. */
void fsp_vv_init(struct fsp_vv *v);
void fsp_vv_close(struct fsp_vv *v);
/* Makes dst a copy of src (dst must be initialised). 0 or FSP_ENOMEM. */
int fsp_vv_copy(struct fsp_vv *dst, const struct fsp_vv *src);

/* The counter for replica, 0 if absent. */
uint64_t fsp_vv_get(const struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN]);
/* Sets replica's counter (counter >= 1), keeping the vector sorted.
 * 0, FSP_EINVAL (counter 0) or FSP_ENOMEM. */
int fsp_vv_set(struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN],
               uint64_t counter);
/* Adds one to replica's counter (inserting it at 1). 0, FSP_ENOMEM or
 * FSP_EINVAL if the counter would overflow. */
int fsp_vv_increment(struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN]);

/* Compares a with b in one merge-walk: O(a->n + b->n). */
enum fsp_vv_order fsp_vv_compare(const struct fsp_vv *a, const struct fsp_vv *b);

/* dst = join(dst, src): per replica, the larger counter. 0 or FSP_ENOMEM
 * (dst is unchanged on failure). */
int fsp_vv_join(struct fsp_vv *dst, const struct fsp_vv *src);

/* Canonical encoding: n entries of (16-byte replica, 8-byte big-endian
 * counter) in order, so equal vectors encode to equal bytes.
 * fsp_vv_encoded_size(v) gives the size; fsp_vv_encode writes it to out
 * (which must hold that many bytes). */
size_t fsp_vv_encoded_size(const struct fsp_vv *v);
void fsp_vv_encode(const struct fsp_vv *v, uint8_t *out);
/* Decodes and validates a canonical encoding into v (initialised, replaced).
 * Returns 0, FSP_EBAD_VV (length not a multiple of 24, unsorted, duplicate
 * or zero counter), FSP_ETOO_MANY (more than max_entries) or FSP_ENOMEM. */
int fsp_vv_decode(struct fsp_vv *v, const uint8_t *in, size_t len,
                  size_t max_entries);

/* Writes "replica-hex-prefix:counter,..." for logs (always NUL-terminated,
 * truncated to cap). */
void fsp_vv_format(const struct fsp_vv *v, char *buf, size_t cap);

#endif
