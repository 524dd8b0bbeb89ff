/* SPDX-License-Identifier: MIT */
/* Internals of libfieldsync shared by its modules: the database handle,
 * error reporting, hex ids, and the record store (fsc_store.c), which owns
 * every SQL statement on records and versions. Never installed. */
#ifndef FSC_INT_H
#define FSC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "fieldsync.h"
#include "fieldsync.pb-c.h"
#include "fsp_merge.h"
#include "fsp_msg.h"
#include "fsp_payload.h"
#include "fsp_vv.h"

/* The schema version this library writes (PRAGMA user_version). */
#define FSC_SCHEMA_VERSION 1

/* Prepared statements kept for the life of the handle (fsc_store.c). */
enum fsc_stmt_id {
  FSC_ST_LOAD_RECORD,
  FSC_ST_LOAD_VERSIONS,
  FSC_ST_DELETE_VERSIONS,
  FSC_ST_DELETE_VERSION,
  FSC_ST_INSERT_VERSION,
  FSC_ST_UPSERT_RECORD,
  FSC_ST_META_GET,
  FSC_ST_META_SET,
  FSC_ST_OUTGOING,
  FSC_ST_ACK,
  FSC_ST_SAVEPOINT,
  FSC_ST_RELEASE,
  FSC_ST_COUNT
};

struct fieldsync_db {
  sqlite3 *sql;
  sqlite3_stmt *st[FSC_ST_COUNT];
  bool batch;           /* a fieldsync_batch_begin transaction is open */
  int64_t batch_pending; /* in a batch: next change number, kept in memory
                            and written at commit; 0 = not loaded */
  char name[128];       /* replica label: the author of local versions */
  uint8_t replica[FSP_ID_LEN];
  struct fsp_limits lim;
  char errmsg[512];
};

/* Records the failure on db (printf-style) and returns code. */
int fsc_err(fieldsync_db *db, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Maps a SQLite result code to FIELDSYNC_E*, records "what: sqlite's
 * message", and returns the code. */
int fsc_sqlerr(fieldsync_db *db, int rc, const char *what);
/* Maps an FSP_E* code (payload validation) to FIELDSYNC_E* with err's text. */
int fsc_fsperr(fieldsync_db *db, const struct fsp_error *err);

/* Lowercase hex of n bytes into out (2n+1 bytes). */
void fsc_hex(const uint8_t *b, size_t n, char *out);
/* Parses exactly 2n hex digits; false on anything else. */
bool fsc_unhex(const char *s, uint8_t *b, size_t n);
/* Parses a record id argument, recording a clear error when malformed. */
int fsc_parse_id(fieldsync_db *db, const char *text, uint8_t id[16]);
/* A new time-ordered record id: 48-bit ms timestamp, version 7, random. */
int fsc_new_id(fieldsync_db *db, uint8_t id[16]);

/* BEGIN IMMEDIATE / COMMIT / ROLLBACK with error reporting. Inside a
 * caller's batch they become SAVEPOINT / RELEASE / ROLLBACK TO, so one
 * operation fails alone and the batch stays open. */
int fsc_begin(fieldsync_db *db);
int fsc_commit(fieldsync_db *db);
void fsc_rollback(fieldsync_db *db);

/* ---- the record store (fsc_store.c) ------------------------------------ */

/* One stored version. Strings and blobs are owned (fsp_malloc). */
struct fsc_version {
  uint8_t hash[FSP_HASH_LEN];
  struct fsp_vv vv;
  bool deleted;
  uint8_t *payload;
  size_t len;
  char *author;
  int64_t time_ms;
  int64_t pending; /* > 0: local, not yet acknowledged by a server */
};

/* A record and its current versions, display winner first. */
struct fsc_record {
  uint8_t id[FSP_ID_LEN];
  const struct fsp_collection *col;
  int scope_kind;
  uint8_t scope_id[FSP_ID_LEN];
  bool reuse; /* replica-id reuse seen among the versions */
  struct fsc_version *v;
  size_t n;
  size_t cap;
};

void fsc_record_close(struct fsc_record *r);
/* Loads record id: 0, FIELDSYNC_ENOTFOUND or an error. */
int fsc_store_load(fieldsync_db *db, const uint8_t id[16],
                   struct fsc_record *r);
/* Writes a new local version of r (or a new record when r->n == 0) that
 * supersedes every current version: vv = join(current) + 1 for this
 * replica. payload NULL/0 with deleted = a tombstone. Runs inside the
 * caller's transaction. */
int fsc_store_put_local(fieldsync_db *db, struct fsc_record *r, bool deleted,
                        const uint8_t *payload, size_t len);
/* Writes a batch's cached change counter (before its COMMIT). */
int fsc_store_flush_pending(fieldsync_db *db);
/* Sorts versions display winner first: live before tombstones, then by
 * hash descending, so every replica shows the same winner. */
void fsc_store_sort(struct fsc_record *r);
/* JSON of a record in the documented shape; NULL when out of memory. */
char *fsc_record_json(const struct fsc_record *r);

/* A prepared statement, reset and unbound, for db's lifetime. */
int fsc_stmt(fieldsync_db *db, enum fsc_stmt_id id, sqlite3_stmt **out);

/* ---- the sync layer's slots (fsc_store.c) ------------------------------ */

/* A local version the server has not acknowledged, for a Push. */
struct fsc_outgoing {
  uint8_t id[FSP_ID_LEN];
  int collection;
  int scope_kind;
  uint8_t scope_id[FSP_ID_LEN];
  struct fsc_version v; /* owned */
};

/* Up to max unacknowledged versions with pending > after, in the order
 * they were made. *out (fsp_malloc) is freed by fsc_outgoing_free. */
int fsc_store_outgoing(fieldsync_db *db, int64_t after, size_t max,
                       struct fsc_outgoing **out, size_t *n);
void fsc_outgoing_free(struct fsc_outgoing *o, size_t n);
/* Marks versions acknowledged (one transaction). A version superseded
 * meanwhile is simply gone; that is not an error. */
struct fsc_ack {
  uint8_t id[FSP_ID_LEN];
  uint8_t hash[FSP_HASH_LEN];
  int64_t pending; /* the version's change number when it was sent: a
                      later save of the same content stays pending */
};
int fsc_store_ack(fieldsync_db *db, const struct fsc_ack *a, size_t n);

/* What applying a batch of incoming changes did. */
struct fsc_apply_stats {
  size_t applied;    /* became current (new, superseding or conflict) */
  size_t known;      /* already held */
  size_t stale;      /* dominated by a current version */
  size_t conflicts;  /* left the record with siblings */
  size_t reuse;      /* replica-id reuse detected */
};
/* Merges incoming changes (validated by fsp_msg) into the store and sets
 * the pull cursor, all in one transaction: a crash leaves either all of
 * it or none. */
int fsc_store_apply(fieldsync_db *db, Fieldsync__Change *const *changes,
                    size_t n, uint64_t cursor, struct fsc_apply_stats *st);
/* The pull cursor (0 for a new replica). */
int fsc_store_cursor(fieldsync_db *db, uint64_t *cursor);
/* Records which server the cursor belongs to: a different server id (a
 * new or rebuilt server store) resets the cursor to 0 in the same
 * transaction, so nothing is skipped. Local versions stay as they are. */
int fsc_store_server(fieldsync_db *db, const uint8_t server_id[16]);

/* Validates msg (a payload of col), derives its scope and writes it as a
 * new local version of r (r->n == 0: a new record with id r->id). Runs
 * inside the caller's transaction (fsc_record.c). */
int fsc_record_write(fieldsync_db *db, const struct fsp_collection *col,
                     const ProtobufCMessage *msg, struct fsc_record *r);

/* Validates a payload message of col and derives its scope. */
int fsc_check_payload(fieldsync_db *db, const struct fsp_collection *col,
                      const uint8_t id[16], const ProtobufCMessage *msg,
                      int *scope_kind, uint8_t scope_id[16]);

#endif
