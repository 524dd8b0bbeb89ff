/* SPDX-License-Identifier: MIT */
/* What the allocation-fault tests with a real server share: the scenario
 * they sync (a head-office device with offline work across several
 * collections, an update, and a conflict made by a second device), files
 * and SQL beside the programs, records and syncs through libfieldsync, and
 * the plan of a sweep over k. Every helper fails the running test on an
 * unexpected error. */
#ifndef TEST_ALLOC_COMMON_H
#define TEST_ALLOC_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fieldsync.h"
#include "proc.h"

/* Versions per Push and Pull: small, so each phase takes several rounds. */
#define AC_BATCH 3
/* Scale from which a sweep tries every k. */
#define AC_FULL_SCALE 10

/* The scenario. Head office's device "office" has synced a service, a
 * visit, a requirement and an observation. A second head-office device,
 * "office2", has then edited the requirement and recorded observations of
 * its own, and synced. Offline, "office" edited the requirement too (a
 * conflict once it syncs) and its observation, recorded observations,
 * interview notes, a recommendation, a concern and a requirement it then
 * deleted. A third device, "keeper", exists for raw sessions. Both stores
 * are saved closed (no WAL): base_srv, base_cli and base_cli2. */
struct ac_base {
  char dir[256];
  char srvdb[320];     /* the working server store */
  char base_srv[320];  /* the server store before office syncs */
  char base_cli[320];  /* office's database before it syncs */
  char base_cli2[320]; /* office2's database at the same moment */
  char cli[320];       /* office's working copy */
  char cli2[320];      /* office2's working copy */
  char token[128];     /* office's device token */
  char token2[128];    /* office2's */
  char token3[128];    /* keeper's */
  char service[33];
  char visit[33];
  char req[33];        /* the requirement both devices edit */
  char obs_synced[33]; /* an observation both devices hold */
  char obs_local[33];  /* an observation office has not synced yet */
};

/* Makes the scenario in a new temporary directory (removed at exit),
 * running fieldsyncd (path) as srv, which is registered to be killed at
 * exit and is stopped when this returns. */
void ac_base_make(struct ac_base *b, const char *prefix, const char *fieldsyncd,
                  const char *admin, struct test_server *srv);

/* ---- files and SQL ------------------------------------------------------ */

/* Removes a database with its WAL and shared-memory files. */
void ac_remove_db(const char *path);
/* Copies the closed database base (it must have no WAL) over path. */
void ac_restore(const char *base, const char *path);
/* The one text value sql returns from the database at path, into out. */
void ac_sql_text(const char *path, const char *sql, char *out, size_t cap);
/* PRAGMA integrity_check of path must say "ok" (k names the fault point
 * in the failure message). */
void ac_integrity(const char *path, uint64_t k);
/* A server store's versions (record, hash, current) in a fixed order:
 * two stores with equal digests hold the same history. */
void ac_server_digest(const char *srvdb, char *out, size_t cap);

/* ---- libfieldsync -------------------------------------------------------- */

struct ac_kv {
  const char *field;
  const char *value;
};

fieldsync_db *ac_open(const char *path, int flags);
/* Creates a record from field values (a list ending with NULLs); returns 0
 * or the failing call's code. */
int ac_create(fieldsync_db *db, const char *collection, const struct ac_kv *kv,
              char id[33]);
/* Sets one field of record id in a new version; 0 or the failing code. */
int ac_edit(fieldsync_db *db, const char *id, const char *field,
            const char *value);
/* Syncs with the server at addr in AC_BATCH batches, each network wait
 * bounded by timeout_ms; returns fieldsync_sync's code. */
int ac_sync(fieldsync_db *db, const char *addr, const char *token,
            int timeout_ms, struct fieldsync_sync_stats *st);
/* ac_sync, which must succeed (st may be NULL). */
void ac_must_sync(fieldsync_db *db, const char *addr, const char *token,
                  struct fieldsync_sync_stats *st);
struct fieldsync_counts ac_counts(fieldsync_db *db);

/* ---- the sweep ----------------------------------------------------------- */

/* Which k of 1..total a sweep tries: every one at AC_FULL_SCALE, else
 * about `points` times the scale of them: the first and last few (the start and
 * end of the workload) and one in every stride in between, from an offset taken
 * from the seed, so that CI runs cover different points and a seed repeats one.
 */
struct ac_sweep {
  uint64_t total;
  uint64_t stride;
  uint64_t offset;
  uint64_t edge;
};

/* Plans the sweep and prints the plan as a TAP comment naming what. */
void ac_sweep_init(struct ac_sweep *s, const char *what, uint64_t total,
                   uint64_t points, uint64_t seed);
bool ac_sweep_pick(const struct ac_sweep *s, uint64_t k);

#endif
