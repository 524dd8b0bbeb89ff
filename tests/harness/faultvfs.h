/* SPDX-License-Identifier: MIT */
/* faultvfs: a SQLite VFS shim for fault injection (after SQLite's own
 * test_vfs.c / test6.c crash simulation, rewritten for fieldsync). It wraps
 * the platform VFS and, once installed as the default, sits under every
 * database the process opens (the server store and the client database
 * both open with the default VFS), so no production code knows about it.
 *
 * It can:
 *  - fail the k-th I/O operation (of a chosen class) with EIO or ENOSPC,
 *    once or from then on ("sticky"), as SQLITE_IOERR_* / SQLITE_FULL;
 *  - fail the k-th xSync (fsync) with SQLITE_IOERR_FSYNC;
 *  - simulate power loss at the k-th xSync: writes made since each file's
 *    last successful sync are dropped (the old bytes restored) or garbled
 *    (overwritten with pseudo-random bytes), and from then on every I/O
 *    operation fails, until faultvfs_reset(). A test then closes its
 *    handles, calls faultvfs_reset() and reopens to check what survived.
 *
 * Operations are counted process-wide and atomically (any thread's I/O
 * counts). Counting starts at faultvfs_arm(). */
#ifndef FIELDSYNC_FAULTVFS_H
#define FIELDSYNC_FAULTVFS_H

#include <stdbool.h>
#include <stdint.h>

enum faultvfs_op {
  FAULTVFS_ANY,   /* every xRead, xWrite, xTruncate, xSync, xOpen */
  FAULTVFS_WRITE, /* xWrite and xTruncate */
  FAULTVFS_SYNC,  /* xSync */
};

enum faultvfs_fault {
  FAULTVFS_NONE,
  FAULTVFS_EIO,        /* the operation fails as an I/O error */
  FAULTVFS_ENOSPC,     /* writes fail as disk full (SQLITE_FULL) */
  FAULTVFS_FSYNC,      /* the sync fails (SQLITE_IOERR_FSYNC); the bytes
                          written before it are NOT made durable */
  FAULTVFS_POWER_DROP, /* power loss at the sync: unsynced writes vanish */
  FAULTVFS_POWER_GARBLE, /* power loss: unsynced writes become garbage */
};

struct faultvfs_plan {
  enum faultvfs_fault fault;
  enum faultvfs_op op;   /* which operations count towards k */
  uint64_t k;            /* the k-th counted operation faults (k >= 1) */
  bool sticky;           /* every counted operation after k faults too */
  uint64_t seed;         /* for GARBLE's bytes */
};

/* Registers the shim as the default VFS (idempotent). 0 or a SQLite code. */
int faultvfs_install(void);
/* Starts counting from zero under plan (FAULTVFS_NONE: count only). */
void faultvfs_arm(const struct faultvfs_plan *plan);
/* Stops injecting (counting goes on) until the next arm; a sticky fault
 * clears. Async-signal-safe: a signal handler may call it. */
void faultvfs_disarm(void);
/* Counted operations since the last arm. */
uint64_t faultvfs_count(void);
/* Faults injected since the last arm. */
uint64_t faultvfs_injected(void);
/* Syncs since the last arm that succeeded on a file handle whose earlier
 * sync had failed: a failed fsync retried on the same descriptor, which
 * may report success for data the kernel already dropped (PostgreSQL's
 * "fsyncgate"). SQLite's automatic checkpoint ignores its own failures and
 * retries, so this counts only where no checkpoint runs meanwhile. */
uint64_t faultvfs_resynced(void);
/* True once power loss has happened (every I/O now fails). */
bool faultvfs_powered_off(void);
/* Disarms, forgets unsynced-write tracking and restores power. Call after
 * every handle opened during the power loss has been closed. */
void faultvfs_reset(void);
/* Parses a plan from text "FAULT:OP:K[:sticky][:seed=N]", FAULT one of
 * none|eio|enospc|fsync|power-drop|power-garble, OP any|write|sync, for
 * environment variables (the fault daemon's FIELDSYNC_FAULT_VFS).
 * 0 or -1 on bad text. */
int faultvfs_parse(const char *text, struct faultvfs_plan *plan);

#endif
