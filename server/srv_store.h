/* SPDX-License-Identifier: MIT */
/* The server's store interface. fieldsyncd talks to storage only through
 * this header, so a PostgreSQL store can replace the SQLite one
 * (srv_store_sqlite.c) without touching sessions.
 *
 * Threads: a struct srv_store is shared; each struct srv_store_conn is one
 * database connection used by one thread at a time. fieldsyncd gives the
 * writer thread one connection (all writes, group commit) and lends
 * reader connections to worker threads (auth, pull). The store keeps every
 * version it ever received (the history) and a change feed: each stored
 * version has a sequence number, increasing with every commit. */
#ifndef SRV_STORE_H
#define SRV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fieldsync.pb-c.h"
#include "fsp_msg.h"

struct srv_store;
struct srv_store_conn;

/* Store errors (negative) carry a message in the err buffer given. */
#define SRV_STORE_OK 0
#define SRV_STORE_EIO (-1)        /* I/O error, disk full, fsync failure */
#define SRV_STORE_ENOTFOUND (-2)  /* no such user, device or token */
#define SRV_STORE_EEXISTS (-3)    /* user already exists */
#define SRV_STORE_EINVAL (-4)     /* bad argument (role, name) */
#define SRV_STORE_ECORRUPT (-5)   /* not a fieldsync server database */
#define SRV_STORE_ENOMEM (-6)
#define SRV_STORE_EBUSY (-7)

#define SRV_NAME_MAX 64     /* user names: 1..64 bytes of [A-Za-z0-9._-] */
#define SRV_TOKEN_LEN 52    /* "fst_" + 48 hex digits */

/* Opens (creating if absent) the server database at path: WAL,
 * synchronous=FULL, schema created or checked, a random server id made on
 * creation. err (errlen bytes) gets a message on failure: ECORRUPT for a
 * file that is not a fieldsync server database (a text file, a client
 * database, any other SQLite file), which is left untouched; EIO for a path
 * that cannot be opened (a directory, a missing parent); EINVAL for an
 * empty path. */
int srv_store_open(const char *path, struct srv_store **out, char *err,
                   size_t errlen);
/* Closes the store; every connection must be closed first. NULL: no-op. */
void srv_store_close(struct srv_store *s);
/* The server's 16-byte id. */
void srv_store_server_id(const struct srv_store *s, uint8_t id[16]);

/* A new connection to the store (for one thread at a time). */
int srv_store_conn_open(struct srv_store *s, struct srv_store_conn **out,
                        char *err, size_t errlen);
void srv_store_conn_close(struct srv_store_conn *c);
/* The last error message on c. */
const char *srv_store_errmsg(const struct srv_store_conn *c);

/* ---- users and devices (fieldsync-admin) ------------------------------- */

/* role: FIELDSYNC__ROLE__ROLE_* (1..3). EEXISTS, EINVAL. */
int srv_store_user_add(struct srv_store_conn *c, const char *name, int role);
/* Makes a device for user: writes a new random token (SRV_TOKEN_LEN chars +
 * NUL) to token_out, and stores only its SHA-256. ENOTFOUND for no user
 * (or a deleted one). device_id may be NULL. */
int srv_store_device_add(struct srv_store_conn *c, const char *user,
                         char token_out[SRV_TOKEN_LEN + 1],
                         int64_t *device_id);

/* Who a device token belongs to. */
struct srv_identity {
  int64_t device_id;
  int64_t user_id;
  char user[SRV_NAME_MAX + 1];
  int role; /* FIELDSYNC__ROLE__ROLE_* */
};

/* Looks a token up by its hash (constant-time compare of the stored hash).
 * ENOTFOUND for a malformed token (checked without touching the database),
 * an unknown or revoked token, or a deleted user. The error message never
 * contains the token. */
int srv_store_auth(struct srv_store_conn *c, const char *token,
                   struct srv_identity *who);

/* ---- writes (the writer thread) ---------------------------------------- */

/* Transactions for group commit: the writer calls begin, then push for
 * each queued batch (each inside its own savepoint), then commit once.
 * When commit fails the transaction is rolled back (nothing of it is
 * kept); rollback with no transaction open does nothing. If SQLite itself
 * rolled the transaction back (disk full, I/O error), every later push in
 * it fails with EIO and so does commit: no batch of it may be acked. */
int srv_store_begin(struct srv_store_conn *c);
int srv_store_commit(struct srv_store_conn *c);
void srv_store_rollback(struct srv_store_conn *c);

/* The outcome of one pushed change. */
struct srv_outcome {
  int outcome;      /* FIELDSYNC__OUTCOME__OUTCOME_* */
  int reason_code;  /* FIELDSYNC__ERROR_CODE__ERR_* with OUTCOME_REFUSED
                       (ERR_INVALID or ERR_LIMIT_EXCEEDED), else 0 */
  char reason[160]; /* human text with OUTCOME_REFUSED, and with
                       OUTCOME_CONFLICT for a reused replica id; else "" */
};

/* Applies a validated Push (changes[0..n)) from who, inside the caller's
 * transaction and its own savepoint: each change is checked (payload
 * decodes as its collection, scope matches the payload; a tombstone's
 * scope matches the stored record's) and merged with fsp_merge against the
 * record's current versions; every version that is not already known is
 * stored in the history with who's user and device, the arrival time and
 * the next sequence number. out[i] gets change i's outcome. A refused
 * change does not stop the others. Changes are applied in record-id order
 * (versions of one record in their batch order), so seq order within a
 * batch follows the ids. who NULL stores no user or device; lim NULL means
 * the defaults. Without an open transaction the savepoint is the
 * transaction. Roles and scopes are not checked here (the caller's job).
 * Returns 0, or SRV_STORE_EIO / ENOMEM / EBUSY / ECORRUPT (a damaged stored
 * version), in which case the savepoint is rolled back and nothing of this
 * batch is kept. */
int srv_store_push(struct srv_store_conn *c, const struct srv_identity *who,
                   Fieldsync__Change *const *changes, size_t n,
                   const struct fsp_limits *lim, struct srv_outcome *out);

/* ---- reads (worker threads) -------------------------------------------- */

/* A page of the change feed: current versions with seq > cursor, in seq
 * order, at most max_records of them and at most max_bytes of encoded
 * changes (at least one change when any exists). A change counts as the
 * bytes it adds to an encoded Changes message (tag, length and body); the
 * Changes and Envelope fields around them are the caller's margin. There is
 * no scope filter: every current version is in the feed. On failure the
 * page is empty (n 0, next_cursor = cursor). */
struct srv_page {
  Fieldsync__Change **changes; /* n entries, owned by the page */
  size_t n;
  uint64_t next_cursor;        /* seq of the last change, or cursor */
  bool more;                   /* more changes exist after next_cursor */
};

int srv_store_pull(struct srv_store_conn *c, uint64_t cursor,
                   uint32_t max_records, size_t max_bytes,
                   struct srv_page *page);
void srv_page_free(struct srv_page *page);

/* ---- for tests and operators ------------------------------------------- */

/* Counts: records, versions in history, current versions. */
int srv_store_counts(struct srv_store_conn *c, int64_t *records,
                     int64_t *history, int64_t *current);
/* Runs PRAGMA integrity_check, then checks that the hot queries (pull,
 * the merge's lookups, auth) are answered from their indexes; 0 when all
 * is well, else ECORRUPT with the detail in srv_store_errmsg. */
int srv_store_check(struct srv_store_conn *c);

#endif
