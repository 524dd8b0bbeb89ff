/* SPDX-License-Identifier: MIT */
/* Fault seams of the test daemon, fieldsyncd-fault: the same sources as
 * fieldsyncd, built with FIELDSYNC_FAULT_SEAMS and linked with the test
 * harness's SQLite fault VFS. The shipping fieldsyncd has none of this.
 *
 * Environment (read once at start):
 *   FIELDSYNC_FAULT_VFS="PLAN[@N]"  a faultvfs plan (faultvfs_parse); with
 *       @N it is armed when connection N is accepted, else at start.
 *   FIELDSYNC_FAULT_ALLOC="K[:sticky][:sqlite]@N"  fsp_alloc_fail_at(K,
 *       sticky) when connection N is accepted (N >= 1), so the k-th
 *       allocation made from that moment fails, in whichever session makes
 *       it. With :sqlite, SQLite's own allocations go through fsp_malloc
 *       too (tests/harness/faultmem.h), so they count and fail alike.
 *   FIELDSYNC_FAULT_REPORT=PATH  at exit, writes counters to PATH as
 *       "vfs_ops=N vfs_injected=N alloc_count=N alloc_failed=N
 *       vfs_resynced=N\n" (vfs_resynced: syncs that succeeded on a file
 *       handle whose earlier sync had failed; see faultvfs_resynced).
 * Signal:
 *   SIGUSR1  the VFS fault clears (faultvfs_disarm): a sticky fault stops,
 *       as when an operator frees the full disk; counting goes on. */
#ifndef SRV_FAULT_H
#define SRV_FAULT_H

#include <stdint.h>

#ifdef FIELDSYNC_FAULT_SEAMS
/* Reads the environment; exits with status 2 and a message on bad text. */
void srv_fault_init(void);
/* Called by srv_conn_accept with each new connection's id (1, 2, ...). */
void srv_fault_on_accept(uint64_t conn_id);
#endif

#endif
