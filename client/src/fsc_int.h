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
#define FSC_SCHEMA_VERSION 2

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
  FSC_ST_REFUSE,
  FSC_ST_SAVEPOINT,
  FSC_ST_RELEASE,
  FSC_ST_ROLLBACK,    /* prepared before each transaction (fsc_begin) */
  FSC_ST_ROLLBACK_TO, /* and before each batch operation */
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
  char *path;           /* for reconnecting (fsp_malloc) */
  bool io_failed;       /* an I/O error: the next transaction reconnects */
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
/* Reads the one integer a pragma or query returns (a count, a version). */
int fsc_query_int(fieldsync_db *db, const char *sql, int64_t *out);
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
  bool refused;    /* the server refused it (pending stays > 0) */
  int refused_code;     /* its wire ErrorCode, when refused */
  char *refused_reason; /* the server's text, when refused (owned) */
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

/* Up to max unacknowledged versions with pending > after that the server
 * has not refused, in the order they were made. *out (fsp_malloc) is
 * freed by fsc_outgoing_free. */
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
/* A version the server refused: marked refused (not offered again until
 * fieldsync_retry_refused) with the server's code and text. */
struct fsc_refusal {
  uint8_t id[FSP_ID_LEN];
  uint8_t hash[FSP_HASH_LEN];
  int64_t pending;    /* as in struct fsc_ack */
  int code;           /* the wire ErrorCode */
  const char *reason; /* the server's text (may be NULL) */
};
/* Records a PushAck's answers in one transaction: acks as fsc_store_ack
 * does, refusals marked refused. */
int fsc_store_answer(fieldsync_db *db, const struct fsc_ack *a, size_t na,
                     const struct fsc_refusal *r, size_t nr);

/* What applying a batch of incoming changes did. */
struct fsc_apply_stats {
  size_t applied;    /* became current (new, superseding or conflict) */
  size_t known;      /* already held */
  size_t stale;      /* dominated by a current version */
  size_t conflicts;  /* left the record with siblings */
  size_t reuse;      /* replica-id reuse detected */
  size_t removed;    /* records removed with their scope */
  size_t quarantined; /* unacknowledged versions quarantined first */
};
/* Applies one Changes (validated by fsp_msg, checked against its Pull by
 * the sync layer) in one transaction, so a crash leaves all of it or none:
 * first its removed_scopes (fsc_scope_remove), then its changes (merged),
 * then either its backfill state (backfill_scope set: the position
 * backfill_next is stored, or with backfill_done the scope becomes held
 * and the position is cleared; the cursor stays) or, for a feed page, its
 * next_cursor (and a stale backfill position is cleared). */
int fsc_store_apply_changes(fieldsync_db *db, const Fieldsync__Changes *ch,
                            struct fsc_apply_stats *st);
/* fsc_store_apply_changes of a feed page holding only changes[0..n) and
 * next_cursor = cursor. */
int fsc_store_apply(fieldsync_db *db, Fieldsync__Change *const *changes,
                    size_t n, uint64_t cursor, struct fsc_apply_stats *st);
/* The pull cursor (0 for a new replica). */
int fsc_store_cursor(fieldsync_db *db, uint64_t *cursor);
/* Records which server the cursor belongs to: a different server id (a
 * new or rebuilt server store) resets the cursor to 0 and forgets the
 * held scopes and any backfill position in the same transaction, so
 * nothing is skipped. Local records and versions stay as they are. */
int fsc_store_server(fieldsync_db *db, const uint8_t server_id[16]);

/* ---- scopes, the quarantine and refused versions (fsc_scope.c) -------- */

/* A scope key: kind (FIELDSYNC__SCOPE_KIND__*) and 16-byte id. */
struct fsc_scope {
  int kind;
  uint8_t id[FSP_ID_LEN];
};

/* A backfill in progress (PROTOCOL.md "Scopes"): the scope and the last
 * seq the server examined. */
struct fsc_backfill {
  bool active;
  struct fsc_scope scope;
  uint64_t after;
};

/* Why versions are quarantined (the "reason" of fieldsync_quarantine). */
#define FSC_Q_SCOPE_REMOVED "scope removed by the server"
#define FSC_Q_REVOKED "device revoked"

/* The held scopes, sorted as fsp_scope_cmp orders them. *out (fsp_malloc,
 * NULL when there are none) is freed with fsp_free. */
int fsc_scope_held(fieldsync_db *db, struct fsc_scope **out, size_t *n);
/* The stored backfill position (bf->active false when there is none). */
int fsc_scope_backfill(fieldsync_db *db, struct fsc_backfill *bf);
/* Inside the caller's transaction: stores (bf->active) or clears the
 * backfill position. */
int fsc_scope_set_backfill(fieldsync_db *db, const struct fsc_backfill *bf);
/* Inside the caller's transaction: adds sc to the held scopes. */
int fsc_scope_hold(fieldsync_db *db, const struct fsc_scope *sc);
/* Inside the caller's transaction: removes every record of scope sc
 * after copying its unacknowledged versions (pending or refused) to the
 * quarantine, drops sc from the held scopes and clears a backfill
 * position for sc. Adds to *removed (records) and *quarantined
 * (versions). */
int fsc_scope_remove(fieldsync_db *db, const struct fsc_scope *sc,
                     size_t *removed, size_t *quarantined);
/* Forgets the held scopes and backfill position, inside the caller's
 * transaction (a new server, fsc_store_server). */
int fsc_scope_forget(fieldsync_db *db);
/* The device was revoked: in one transaction, quarantines every
 * unacknowledged version, deletes every record and version, forgets the
 * held scopes, the backfill position, the cursor and the server binding.
 * The quarantine, the replica id and its label stay. */
int fsc_scope_wipe(fieldsync_db *db, size_t *removed, size_t *quarantined);

/* The name of a wire ErrorCode ("ERR_FORBIDDEN"), static. */
const char *fsc_wire_code_name(int code);
/* ms since the epoch as "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC) into out. */
void fsc_iso_time(int64_t ms, char *out, size_t cap);

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
