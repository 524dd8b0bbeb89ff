/* SPDX-License-Identifier: MIT */
/* The incremental, sans-I/O frame decoder declared in fsp_frame.h. A length
 * is judged as soon as its four header bytes are in; the body buffer is
 * allocated only after the length has passed that check and only as body
 * bytes arrive, growing geometrically up to the declared length. A body
 * that arrives in one piece costs one allocation of exactly its length. */
#include "fsp_frame.h"

#include <assert.h>
#include <string.h>

#include "fsp_alloc.h"
#include "fsp_err.h"

void fsp_frame_decoder_init(struct fsp_frame_decoder *d, uint32_t max_frame) {
  memset(d, 0, sizeof(*d));
  d->max_frame = max_frame == 0 ? FSP_DEFAULT_MAX_FRAME : max_frame;
}

/* Forgets the current frame without freeing its body: callers either free
 * it first or have just handed it over with fsp_frame_take. */
static void reset_frame(struct fsp_frame_decoder *d) {
  d->hdr_have = 0;
  d->len = 0;
  d->buf = NULL;
  d->cap = 0;
  d->have = 0;
  d->ready = false;
}

/* The limit and any sticky error are kept, so calling close twice, or
 * feeding a closed decoder by mistake, is harmless. */
void fsp_frame_decoder_close(struct fsp_frame_decoder *d) {
  if (d == NULL)
    return;
  fsp_free(d->buf);
  reset_frame(d);
}

/* Called once the header is whole: checks the length against the limit.
 * Allocates nothing (the body buffer waits for body bytes). Returns 0 or a
 * negative FSP_E* code, which the caller makes sticky. */
static int start_body(struct fsp_frame_decoder *d) {
  uint32_t len = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
                 (uint32_t)d->hdr[2] << 8 | (uint32_t)d->hdr[3];

  if (len == 0)
    return FSP_EFRAME_EMPTY;
  if (len > d->max_frame)
    return FSP_EFRAME_TOO_BIG;
  d->len = len;
  d->have = 0;
  return 0;
}

/* Makes room for n more body bytes (have + n <= len): the capacity at
 * least doubles, starts at FSP_FRAME_FIRST_ALLOC, and never passes the
 * declared length. Returns 0 or FSP_ENOMEM; on failure the partial body is
 * freed, since the stream is dead. */
static int grow_body(struct fsp_frame_decoder *d, size_t n) {
  size_t need = d->have + n;
  size_t cap;
  uint8_t *p;

  assert(need <= d->len);
  if (need <= d->cap)
    return 0;
  cap = d->cap > d->len / 2 ? d->len : d->cap * 2;
  if (cap < FSP_FRAME_FIRST_ALLOC)
    cap = FSP_FRAME_FIRST_ALLOC;
  if (cap < need)
    cap = need;
  if (cap > d->len)
    cap = d->len;
  p = fsp_realloc(d->buf, cap);
  if (p == NULL) {
    fsp_free(d->buf);
    d->buf = NULL;
    d->cap = 0;
    return FSP_ENOMEM;
  }
  d->buf = p;
  d->cap = cap;
  return 0;
}

/* On top of the contract in fsp_frame.h: while a whole frame waits to be
 * taken, feeding consumes nothing and returns 1 again, so the frame cannot be
 * overwritten. When the call fails, *used counts the bytes it consumed
 * before the failure (header bytes, or body bytes copied before the buffer
 * could not grow); when a sticky error is repeated, it is 0. A NULL d or
 * used, or
 * NULL data with len > 0, returns FSP_EINVAL, which is not sticky because the
 * stream itself is still intact. */
int fsp_frame_feed(struct fsp_frame_decoder *d, const uint8_t *data, size_t len,
                   size_t *used) {
  size_t off = 0;
  size_t n;
  int rc = 0;

  if (used != NULL)
    *used = 0;
  if (d == NULL || used == NULL || (data == NULL && len > 0))
    return FSP_EINVAL;
  if (d->err != 0)
    return d->err;
  if (d->ready)
    return 1;

  assert(d->hdr_have <= FSP_FRAME_HEADER);
  if (d->hdr_have < FSP_FRAME_HEADER) {
    n = FSP_FRAME_HEADER - d->hdr_have;
    if (n > len)
      n = len;
    if (n > 0)
      memcpy(d->hdr + d->hdr_have, data, n);
    d->hdr_have += n;
    off += n;
    if (d->hdr_have < FSP_FRAME_HEADER)
      goto done;
    rc = start_body(d);
    if (rc != 0) {
      d->err = rc;
      goto done;
    }
  }

  /* The header is whole and valid; the body buffer grows as bytes come. */
  assert(d->have < d->len && d->cap <= d->len);
  n = d->len - d->have;
  if (n > len - off)
    n = len - off;
  if (n == 0)
    goto done;
  rc = grow_body(d, n);
  if (rc != 0) {
    d->err = rc;
    goto done;
  }
  memcpy(d->buf + d->have, data + off, n);
  d->have += n;
  off += n;
  if (d->have == d->len) {
    d->ready = true;
    rc = 1;
  }

done:
  *used = off;
  return rc;
}

/* Without a ready frame (or with NULL arguments) this hands out nothing:
 * *body is set to NULL and *len to 0. */
void fsp_frame_take(struct fsp_frame_decoder *d, uint8_t **body, size_t *len) {
  if (body != NULL)
    *body = NULL;
  if (len != NULL)
    *len = 0;
  if (d == NULL || !d->ready || body == NULL || len == NULL)
    return;
  *body = d->buf;
  *len = d->len;
  reset_frame(d);
}

/* A whole frame that waits untaken counts as a clean boundary: the stream
 * did end between frames. */
int fsp_frame_finish(const struct fsp_frame_decoder *d) {
  if (d == NULL)
    return FSP_EINVAL;
  if (d->err != 0)
    return d->err;
  return fsp_frame_partial(d) ? FSP_ETRUNCATED : 0;
}

/* A failed decoder holds no frame in progress: the stream is dead, and its
 * owner closes the connection rather than waiting for more bytes. */
bool fsp_frame_partial(const struct fsp_frame_decoder *d) {
  if (d == NULL)
    return false;
  return d->err == 0 && !d->ready && d->hdr_have > 0;
}

size_t fsp_frame_held(const struct fsp_frame_decoder *d) {
  return d == NULL ? 0 : d->cap;
}

void fsp_frame_header(uint32_t len, uint8_t hdr[FSP_FRAME_HEADER]) {
  hdr[0] = (uint8_t)(len >> 24);
  hdr[1] = (uint8_t)(len >> 16);
  hdr[2] = (uint8_t)(len >> 8);
  hdr[3] = (uint8_t)len;
}
