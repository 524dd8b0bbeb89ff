/* SPDX-License-Identifier: MIT */
/* Allocation wrappers with fault injection, and the budgeted protobuf-c
 * allocator used to decode untrusted frames. */
#include "fsp_alloc.h"

#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_uint_fast64_t alloc_count;
static atomic_uint_fast64_t alloc_failed;
static atomic_uint_fast64_t fail_at;
static atomic_bool fail_sticky;

void fsp_alloc_fail_at(uint64_t k, bool sticky) {
  atomic_store(&alloc_count, 0);
  atomic_store(&alloc_failed, 0);
  atomic_store(&fail_sticky, sticky);
  atomic_store(&fail_at, k);
}

uint64_t fsp_alloc_count(void) { return atomic_load(&alloc_count); }

uint64_t fsp_alloc_failed(void) { return atomic_load(&alloc_failed); }

/* Returns true when this allocation must fail by injection. */
static bool inject(void) {
  uint64_t n = atomic_fetch_add(&alloc_count, 1) + 1;
  uint64_t k = atomic_load(&fail_at);

  if (k == 0)
    return false;
  if (n == k || (n > k && atomic_load(&fail_sticky))) {
    atomic_fetch_add(&alloc_failed, 1);
    return true;
  }
  return false;
}

void *fsp_malloc(size_t n) {
  if (inject())
    return NULL;
  return malloc(n == 0 ? 1 : n);
}

void *fsp_calloc(size_t count, size_t size) {
  if (inject())
    return NULL;
  if (count == 0 || size == 0)
    return calloc(1, 1);
  return calloc(count, size);
}

void *fsp_realloc(void *p, size_t n) {
  if (inject())
    return NULL;
  return realloc(p, n == 0 ? 1 : n);
}

void fsp_free(void *p) { free(p); }

char *fsp_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = fsp_malloc(n);

  if (d != NULL)
    memcpy(d, s, n);
  return d;
}

/* Each budgeted block starts with a header holding its size, aligned so the
 * caller's part keeps malloc's alignment. */
#define HDR ((sizeof(size_t) + alignof(max_align_t) - 1) / alignof(max_align_t) * alignof(max_align_t))

static void *budget_alloc(void *data, size_t size) {
  struct fsp_budget *b = data;
  unsigned char *p;

  if (size > b->limit || b->used > b->limit - size ||
      HDR > b->limit - b->used - size) {
    b->exceeded = true;
    return NULL;
  }
  p = fsp_malloc(HDR + size);
  if (p == NULL) {
    b->nomem = true;
    return NULL;
  }
  memcpy(p, &size, sizeof(size));
  b->used += HDR + size;
  if (b->used > b->peak)
    b->peak = b->used;
  return p + HDR;
}

static void budget_free(void *data, void *ptr) {
  struct fsp_budget *b = data;
  unsigned char *p;
  size_t size;

  if (ptr == NULL)
    return;
  p = (unsigned char *)ptr - HDR;
  memcpy(&size, p, sizeof(size));
  b->used -= HDR + size;
  fsp_free(p);
}

void fsp_budget_init(struct fsp_budget *b, size_t limit) {
  memset(b, 0, sizeof(*b));
  b->limit = limit;
  b->pc.alloc = budget_alloc;
  b->pc.free = budget_free;
  b->pc.allocator_data = b;
}
