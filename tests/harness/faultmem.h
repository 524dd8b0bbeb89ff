/* SPDX-License-Identifier: MIT */
/* Test-only: routes SQLite's own allocations through fsp_malloc/
 * fsp_realloc/fsp_free (SQLITE_CONFIG_MALLOC), so fsp_alloc_fail_at() fails
 * them as well as ours and a sweep over k covers what SQLite allocates on
 * our behalf. Used by the client's allocation-fault test and, with
 * FIELDSYNC_FAULT_ALLOC="K:sqlite@N", by fieldsyncd-fault (srv_fault.h).
 * (jansson has json_set_alloc_funcs for the same; OpenSSL and libuv keep
 * their own allocators.) */
#ifndef TEST_FAULTMEM_H
#define TEST_FAULTMEM_H

/* Installs the allocator. Must run before SQLite is initialised (the first
 * sqlite3_open, sqlite3_vfs_register or sqlite3_initialize); a second call
 * does nothing. Returns 0, or -1 when SQLite refused the configuration (it
 * was initialised already). */
int faultmem_install(void);

#endif
