/* SPDX-License-Identifier: MIT */
/* SQLite's allocations through the fsp_alloc wrappers: see faultmem.h.
 * SQLite asks for the size of a block (xSize), so each block starts with a
 * header holding it, sized to keep malloc's alignment. */
#include "faultmem.h"

#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <sqlite3.h>

#include "fsp_alloc.h"

#define HDR                                                                    \
  ((sizeof(sqlite3_int64) + alignof(max_align_t) - 1) / alignof(max_align_t) * \
   alignof(max_align_t))

static void *mem_malloc(int n) {
  unsigned char *p;
  sqlite3_int64 size = n;

  if (n <= 0)
    return NULL;
  p = fsp_malloc(HDR + (size_t)n);
  if (p == NULL)
    return NULL;
  memcpy(p, &size, sizeof(size));
  return p + HDR;
}

static void mem_free(void *p) {
  if (p != NULL)
    fsp_free((unsigned char *)p - HDR);
}

/* SQLite calls it with a live block and n > 0; on failure the block is
 * left as it was. */
static void *mem_realloc(void *p, int n) {
  unsigned char *q;
  sqlite3_int64 size = n;

  if (n <= 0)
    return NULL;
  q = fsp_realloc((unsigned char *)p - HDR, HDR + (size_t)n);
  if (q == NULL)
    return NULL;
  memcpy(q, &size, sizeof(size));
  return q + HDR;
}

static int mem_size(void *p) {
  sqlite3_int64 size;

  if (p == NULL)
    return 0;
  memcpy(&size, (unsigned char *)p - HDR, sizeof(size));
  return (int)size;
}

static int mem_roundup(int n) {
  return (n + 7) & ~7;
}

static int mem_init(void *data) {
  (void)data;
  return SQLITE_OK;
}

static void mem_shutdown(void *data) {
  (void)data;
}

int faultmem_install(void) {
  static const sqlite3_mem_methods methods = {
      mem_malloc,  mem_free, mem_realloc,  mem_size,
      mem_roundup, mem_init, mem_shutdown, NULL,
  };
  static bool done;

  if (done)
    return 0;
  if (sqlite3_config(SQLITE_CONFIG_MALLOC, &methods) != SQLITE_OK)
    return -1;
  done = true;
  return 0;
}
