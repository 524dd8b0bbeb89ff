/* SPDX-License-Identifier: MIT */
/* Version vectors (DESIGN.md section 2): a sorted array of (replica id,
 * counter) entries with comparison, join and the canonical byte encoding that
 * makes equal vectors encode to equal bytes. */
#include "fsp_vv.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "fsp_alloc.h"
#include "fsp_err.h"

void fsp_vv_init(struct fsp_vv *v) {
  v->e = NULL;
  v->n = 0;
  v->cap = 0;
}

void fsp_vv_close(struct fsp_vv *v) {
  if (v == NULL)
    return;
  fsp_free(v->e);
  fsp_vv_init(v);
}

/* Makes room for at least want entries, growing geometrically. Returns 0 or
 * FSP_ENOMEM; on failure v is untouched, and on success only its capacity
 * has changed, so callers can reserve first and then mutate without a
 * failure path that would have to undo anything. */
static int reserve(struct fsp_vv *v, size_t want) {
  const size_t max = SIZE_MAX / sizeof(struct fsp_vv_entry);
  struct fsp_vv_entry *p;
  size_t cap;

  if (want <= v->cap)
    return 0;
  if (want > max)
    return FSP_ENOMEM;
  cap = v->cap < 4 ? 4 : v->cap;
  while (cap < want)
    cap = cap > max / 2 ? max : cap * 2;
  p = fsp_realloc(v->e, cap * sizeof(*p));
  if (p == NULL)
    return FSP_ENOMEM;
  v->e = p;
  v->cap = cap;
  return 0;
}

/* Binary search for replica. Returns true when it is present, with *pos its
 * index; otherwise *pos is the index where it would be inserted to keep the
 * vector sorted. */
static bool find(const struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN],
                 size_t *pos) {
  size_t lo = 0;
  size_t hi = v->n;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = memcmp(v->e[mid].replica, replica, FSP_ID_LEN);

    if (c == 0) {
      *pos = mid;
      return true;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *pos = lo;
  return false;
}

/* Inserts (replica, counter) at pos, which find() returned for an absent
 * replica. Returns 0 or FSP_ENOMEM (v unchanged). */
static int insert_at(struct fsp_vv *v, size_t pos,
                     const uint8_t replica[FSP_ID_LEN], uint64_t counter) {
  int rc;

  assert(pos <= v->n);
  assert(counter >= 1);
  rc = reserve(v, v->n + 1);
  if (rc != 0)
    return rc;
  memmove(&v->e[pos + 1], &v->e[pos], (v->n - pos) * sizeof(v->e[0]));
  memcpy(v->e[pos].replica, replica, FSP_ID_LEN);
  v->e[pos].counter = counter;
  v->n++;
  return 0;
}

int fsp_vv_copy(struct fsp_vv *dst, const struct fsp_vv *src) {
  if (dst == src)
    return 0;
  if (src->n > dst->cap) {
    /* A fresh block rather than realloc: the old contents are not needed,
     * and dst stays intact if the allocation fails. */
    struct fsp_vv_entry *p = fsp_malloc(src->n * sizeof(*p));

    if (p == NULL)
      return FSP_ENOMEM;
    fsp_free(dst->e);
    dst->e = p;
    dst->cap = src->n;
  }
  if (src->n > 0)
    memcpy(dst->e, src->e, src->n * sizeof(src->e[0]));
  dst->n = src->n;
  return 0;
}

uint64_t fsp_vv_get(const struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN]) {
  size_t pos;

  return find(v, replica, &pos) ? v->e[pos].counter : 0;
}

int fsp_vv_set(struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN],
               uint64_t counter) {
  size_t pos;

  if (counter == 0)
    return FSP_EINVAL;
  if (find(v, replica, &pos)) {
    v->e[pos].counter = counter;
    return 0;
  }
  return insert_at(v, pos, replica, counter);
}

int fsp_vv_increment(struct fsp_vv *v, const uint8_t replica[FSP_ID_LEN]) {
  size_t pos;

  if (!find(v, replica, &pos))
    return insert_at(v, pos, replica, 1);
  if (v->e[pos].counter == UINT64_MAX)
    return FSP_EINVAL;
  v->e[pos].counter++;
  return 0;
}

/* One merge walk over both sorted arrays. Counters are never 0, so a replica
 * present on one side only puts that side ahead. The walk stops as soon as
 * each side is ahead somewhere: the answer can only be "concurrent". */
enum fsp_vv_order fsp_vv_compare(const struct fsp_vv *a,
                                 const struct fsp_vv *b) {
  bool a_ahead = false; /* a has an entry that b lacks or has lower */
  bool b_ahead = false;
  size_t i = 0;
  size_t j = 0;

  while (i < a->n && j < b->n) {
    int c = memcmp(a->e[i].replica, b->e[j].replica, FSP_ID_LEN);

    if (c < 0) {
      a_ahead = true;
      i++;
    } else if (c > 0) {
      b_ahead = true;
      j++;
    } else {
      if (a->e[i].counter > b->e[j].counter)
        a_ahead = true;
      else if (a->e[i].counter < b->e[j].counter)
        b_ahead = true;
      i++;
      j++;
    }
    if (a_ahead && b_ahead)
      return FSP_VV_CONCURRENT;
  }
  if (i < a->n)
    a_ahead = true;
  if (j < b->n)
    b_ahead = true;
  if (a_ahead && b_ahead)
    return FSP_VV_CONCURRENT;
  if (a_ahead)
    return FSP_VV_DOMINATES;
  if (b_ahead)
    return FSP_VV_DOMINATED;
  return FSP_VV_EQUAL;
}

/* First counts the union of replicas. If src brings no new replica, dst only
 * takes the larger counters in place. Otherwise dst grows to the union size
 * (the only step that can fail, and it leaves dst's contents alone) and the
 * two arrays are merged from the back, so no entry of dst is overwritten
 * before it has been moved. */
int fsp_vv_join(struct fsp_vv *dst, const struct fsp_vv *src) {
  size_t common = 0;
  size_t nu;
  size_t i = 0;
  size_t j = 0;
  size_t k;
  int rc;

  if (dst == src)
    return 0;
  while (i < dst->n && j < src->n) {
    int c = memcmp(dst->e[i].replica, src->e[j].replica, FSP_ID_LEN);

    if (c < 0) {
      i++;
    } else if (c > 0) {
      j++;
    } else {
      common++;
      i++;
      j++;
    }
  }
  nu = dst->n + (src->n - common);

  if (nu == dst->n) {
    for (i = 0, j = 0; j < src->n; i++) {
      assert(i < dst->n);
      if (memcmp(dst->e[i].replica, src->e[j].replica, FSP_ID_LEN) != 0)
        continue;
      if (src->e[j].counter > dst->e[i].counter)
        dst->e[i].counter = src->e[j].counter;
      j++;
    }
    return 0;
  }

  rc = reserve(dst, nu);
  if (rc != 0)
    return rc;
  i = dst->n;
  j = src->n;
  k = nu;
  /* Once src is used up, dst's remaining prefix is already in place. */
  while (j > 0) {
    int c = -1; /* dst used up: the rest comes from src */

    if (i > 0)
      c = memcmp(dst->e[i - 1].replica, src->e[j - 1].replica, FSP_ID_LEN);
    if (c > 0) {
      dst->e[--k] = dst->e[--i];
    } else if (c < 0) {
      dst->e[--k] = src->e[--j];
    } else {
      struct fsp_vv_entry e = dst->e[--i];

      j--;
      if (src->e[j].counter > e.counter)
        e.counter = src->e[j].counter;
      dst->e[--k] = e;
    }
  }
  assert(k == i);
  dst->n = nu;
  return 0;
}

size_t fsp_vv_encoded_size(const struct fsp_vv *v) {
  return v->n * FSP_VV_ENTRY_BYTES;
}

void fsp_vv_encode(const struct fsp_vv *v, uint8_t *out) {
  size_t i;

  for (i = 0; i < v->n; i++) {
    uint64_t c = v->e[i].counter;
    int b;

    memcpy(out, v->e[i].replica, FSP_ID_LEN);
    for (b = 7; b >= 0; b--) {
      out[FSP_ID_LEN + (size_t)b] = (uint8_t)(c & 0xffu);
      c >>= 8;
    }
    out += FSP_VV_ENTRY_BYTES;
  }
}

static uint64_t load_be64(const uint8_t *p) {
  uint64_t c = 0;
  int b;

  for (b = 0; b < 8; b++)
    c = c << 8 | p[b];
  return c;
}

/* Validates the whole input before touching v, so hostile bytes cost no
 * allocation and v is left unchanged on every error. */
int fsp_vv_decode(struct fsp_vv *v, const uint8_t *in, size_t len,
                  size_t max_entries) {
  size_t count;
  size_t i;

  if (len % FSP_VV_ENTRY_BYTES != 0)
    return FSP_EBAD_VV;
  count = len / FSP_VV_ENTRY_BYTES;
  if (count > max_entries)
    return FSP_ETOO_MANY;
  for (i = 0; i < count; i++) {
    const uint8_t *p = in + i * FSP_VV_ENTRY_BYTES;

    if (load_be64(p + FSP_ID_LEN) == 0)
      return FSP_EBAD_VV;
    /* Strictly ascending rules out both disorder and duplicates. */
    if (i > 0 && memcmp(p - FSP_VV_ENTRY_BYTES, p, FSP_ID_LEN) >= 0)
      return FSP_EBAD_VV;
  }

  if (count > v->cap) {
    struct fsp_vv_entry *e = fsp_malloc(count * sizeof(*e));

    if (e == NULL)
      return FSP_ENOMEM;
    fsp_free(v->e);
    v->e = e;
    v->cap = count;
  }
  for (i = 0; i < count; i++) {
    const uint8_t *p = in + i * FSP_VV_ENTRY_BYTES;

    memcpy(v->e[i].replica, p, FSP_ID_LEN);
    v->e[i].counter = load_be64(p + FSP_ID_LEN);
  }
  v->n = count;
  return 0;
}

/* Appends "xxxxxxxx:N" per entry, comma-separated, and stops at the first
 * entry that does not fit whole (that entry is cut short). An empty vector
 * gives "". cap 0 writes nothing, not even the terminator. */
void fsp_vv_format(const struct fsp_vv *v, char *buf, size_t cap) {
  size_t pos = 0;
  size_t i;

  if (cap == 0)
    return;
  for (i = 0; i < v->n; i++) {
    /* ',' + 8 hex digits + ':' + 20 decimal digits + NUL fits easily. */
    char item[48];
    const uint8_t *r = v->e[i].replica;
    int k = snprintf(item, sizeof(item), "%s%02x%02x%02x%02x:%" PRIu64,
                     i > 0 ? "," : "", r[0], r[1], r[2], r[3], v->e[i].counter);
    size_t len;

    assert(k > 0 && (size_t)k < sizeof(item));
    len = (size_t)k;
    if (len > cap - 1 - pos) {
      memcpy(buf + pos, item, cap - 1 - pos);
      pos = cap - 1;
      break;
    }
    memcpy(buf + pos, item, len);
    pos += len;
  }
  buf[pos] = '\0';
}
