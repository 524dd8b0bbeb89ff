/* SPDX-License-Identifier: MIT */
/* All allocation in fieldsync goes through these wrappers, so tests can fail
 * the Nth allocation (curl's torture mode, SQLite's faultsim), and so a
 * decoder can run under a byte budget that bounds what hostile input costs. */
#ifndef FSP_ALLOC_H
#define FSP_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

/* Like malloc/calloc/realloc/free/strdup, but subject to fault injection.
 * fsp_malloc(0) returns a unique pointer or NULL. fsp_free(NULL) is a no-op. */
void *fsp_malloc(size_t n);
void *fsp_calloc(size_t count, size_t size);
void *fsp_realloc(void *p, size_t n);
void fsp_free(void *p);
char *fsp_strdup(const char *s);

/* Fault injection (tests only). After fsp_alloc_fail_at(k, sticky), the k-th
 * allocation from now (k >= 1) fails, and with sticky every one after it
 * too. k = 0 turns injection off. Counters are atomic: any thread's
 * allocation counts. */
void fsp_alloc_fail_at(uint64_t k, bool sticky);
/* Number of allocations made since the last fsp_alloc_fail_at() call. */
uint64_t fsp_alloc_count(void);
/* Number of allocations that injection made fail since the last call. */
uint64_t fsp_alloc_failed(void);

/* A protobuf-c allocator with a byte budget: unpacking a message fails once
 * the total it has allocated would pass `limit`. Each budget serves one
 * unpack and its matching free_unpacked. */
struct fsp_budget {
  ProtobufCAllocator pc; /* pass &b->pc to protobuf-c */
  size_t used;           /* bytes currently allocated, headers included */
  size_t peak;           /* highest `used` seen */
  size_t limit;
  bool exceeded;         /* an allocation was refused for the budget */
  bool nomem;            /* an allocation failed: out of memory */
};

void fsp_budget_init(struct fsp_budget *b, size_t limit);

#endif
