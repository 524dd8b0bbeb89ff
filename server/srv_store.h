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
#define SRV_STORE_EREVOKED (-8)   /* token known, but its device is revoked
                                     or its user deleted */
#define SRV_STORE_EMISMATCH (-9)  /* token bound to another replica id */

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
/* Marks user deleted and revokes all of their devices (one auth epoch
 * step). ENOTFOUND for no such (or an already deleted) user. Their history
 * stays. */
int srv_store_user_delete(struct srv_store_conn *c, const char *name);
/* Calls cb for each user, deleted ones included, in name order; cb's
 * non-zero return stops the walk and is returned. */
int srv_store_user_list(struct srv_store_conn *c,
                        int (*cb)(const char *name, int role, bool deleted,
                                  int64_t created_ms, void *data),
                        void *data);
/* Makes a device for user: writes a new random token (SRV_TOKEN_LEN chars +
 * NUL) to token_out, and stores only its SHA-256. ENOTFOUND for no user
 * (or a deleted one). device_id may be NULL. */
int srv_store_device_add(struct srv_store_conn *c, const char *user,
                         char token_out[SRV_TOKEN_LEN + 1],
                         int64_t *device_id);

/* One device, as listed for operators (never its token or hash). */
struct srv_device_info {
  int64_t id;
  char user[SRV_NAME_MAX + 1];
  int role;
  bool user_deleted;
  int64_t created_ms;
  bool revoked;
  int64_t revoked_ms;     /* 0 unless revoked */
  bool bound;             /* a replica has used the token */
  uint8_t replica[16];    /* with bound: the replica id it is bound to */
  int64_t last_seen_ms;   /* last successful handshake; 0 = never */
};
/* Calls cb for each device (of user, or all when user is NULL), in id
 * order; a non-zero return from cb stops the walk and is returned.
 * ENOTFOUND when user is given and does not exist. */
int srv_store_device_list(struct srv_store_conn *c, const char *user,
                          int (*cb)(const struct srv_device_info *, void *),
                          void *data);
/* Revokes a device: its token is refused from now on and its open sessions
 * are closed by the server within a second (srv_store_revoked_since).
 * Revoking a revoked device again succeeds and changes nothing.
 * ENOTFOUND for no such device. */
int srv_store_device_revoke(struct srv_store_conn *c, int64_t device_id);

/* ---- visit teams -------------------------------------------------------- */

/* Assigns user to the visit with id visit (which need not be on the
 * server yet) until until_ms (Unix ms, exclusive; 0 = no end). Assigning
 * again replaces the end. EINVAL for a head_office user (they see every
 * visit), ENOTFOUND for no such user. */
int srv_store_assign(struct srv_store_conn *c, const uint8_t visit[16],
                     const char *user, int64_t until_ms);
/* Ends an assignment at once. ENOTFOUND when there is none. */
int srv_store_unassign(struct srv_store_conn *c, const uint8_t visit[16],
                       const char *user);

struct srv_assignment {
  uint8_t visit[16];
  char user[SRV_NAME_MAX + 1];
  int role;
  int64_t until_ms;   /* 0 = no end */
  int64_t created_ms;
};
/* Calls cb for each assignment (of user, or all when NULL), ordered by
 * user then visit; cb's non-zero return stops the walk and is returned. */
int srv_store_assignment_list(struct srv_store_conn *c, const char *user,
                              int (*cb)(const struct srv_assignment *, void *),
                              void *data);

/* ---- authentication ----------------------------------------------------- */

/* Who a device token belongs to. */
struct srv_identity {
  int64_t device_id;
  int64_t user_id;
  char user[SRV_NAME_MAX + 1];
  int role; /* FIELDSYNC__ROLE__ROLE_* */
};

/* Looks a token up by its hash (constant-time compare of the stored hash)
 * for the replica presenting it. The first successful handshake binds the
 * device to that replica id; later handshakes with another replica id get
 * EMISMATCH (a token copied to another tablet). ENOTFOUND for a missing
 * or malformed token (checked without touching the database) or an
 * unknown one; EREVOKED for a revoked device or a deleted user's device.
 * Success also records the time as the device's last_seen_ms. The error
 * message never contains the token. */
int srv_store_auth(struct srv_store_conn *c, const char *token,
                   const uint8_t replica[16], struct srv_identity *who);

/* The auth epoch: a counter that grows whenever a device is revoked or a
 * user deleted. Cheap (one indexed read): the server polls it. */
int srv_store_auth_epoch(struct srv_store_conn *c, uint64_t *epoch);
/* The ids of devices revoked at an epoch after `epoch` (ascending),
 * in a fsp_malloc'd array (*ids, free with fsp_free; NULL when *n is 0). */
int srv_store_revoked_since(struct srv_store_conn *c, uint64_t epoch,
                            int64_t **ids, size_t *n);

/* ---- scopes ------------------------------------------------------------- */

/* A scope key: FIELDSYNC__SCOPE_KIND__SCOPE_* and the visit or service id. */
struct srv_scope {
  int kind;
  uint8_t id[16];
};

/* The scopes who may see at now_ms, sorted by (kind, id) (fsp_scope_cmp),
 * no duplicates: for an inspector, each visit assigned and not expired,
 * plus the service of each such visit the server holds; for an expert,
 * those visits only. *all is set (and *n 0) for head_office, who sees
 * everything. *out is fsp_malloc'd (free with fsp_free). */
int srv_store_scopes(struct srv_store_conn *c, const struct srv_identity *who,
                     int64_t now_ms, struct srv_scope **out, size_t *n,
                     bool *all);

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
                       (ERR_INVALID, ERR_LIMIT_EXCEEDED or ERR_FORBIDDEN),
                       else 0 */
  char reason[160]; /* human text with OUTCOME_REFUSED, and with
                       OUTCOME_CONFLICT for a reused replica id; else "" */
};

/* Applies a validated Push (changes[0..n)) from who, inside the caller's
 * transaction and its own savepoint: each change is checked (payload
 * decodes as its collection, scope matches the payload; a tombstone's
 * scope matches the stored record's), then, unless the exact version is
 * already stored (ALREADY_KNOWN / STALE answer a re-push whatever the
 * policy says now), authorised by srv_policy.h for who: the operation
 * (create: the server has no such record; delete: a tombstone; else
 * update), the collection, the owner, and the scopes: the change's scope
 * and, for a record the server holds, its stored scope must both be among
 * srv_store_scopes(who, now) unless who is head_office. A refused change
 * gets OUTCOME_REFUSED with ERR_FORBIDDEN and a reason naming the rule.
 * Then it is merged with fsp_merge against the record's current versions;
 * every version that is not already known is stored in the history with
 * who's user and device, the arrival time and the next sequence number.
 * out[i] gets change i's outcome. A refused change does not stop the
 * others. Changes are applied in record-id order (versions of one record
 * in their batch order), so seq order within a batch follows the ids. who
 * NULL stores no user or device and checks no policy (tests, tools); lim
 * NULL means the defaults. Without an open transaction the savepoint is
 * the transaction. Returns 0, or SRV_STORE_EIO / ENOMEM / EBUSY / ECORRUPT
 * (a damaged stored version), in which case the savepoint is rolled back
 * and nothing of this batch is kept. */
int srv_store_push(struct srv_store_conn *c, const struct srv_identity *who,
                   Fieldsync__Change *const *changes, size_t n,
                   const struct fsp_limits *lim, struct srv_outcome *out);

/* ---- reads (worker threads) -------------------------------------------- */

/* One Pull, as the server received it (PROTOCOL.md "Scopes"). */
struct srv_pull_req {
  uint64_t cursor;
  uint32_t max_records;
  size_t max_bytes;
  const struct srv_scope *held;     /* Pull.held_scopes, sorted */
  size_t nheld;
  const struct srv_scope *backfill; /* Pull.backfill_scope or NULL */
  uint64_t backfill_after;
  int64_t now_ms;                   /* for assignment expiry */
};

/* A page of the change feed, as one Changes message. Changes are current
 * versions in seq order, at most max_records of them and at most max_bytes
 * of encoded changes (at least one change when any is due). A change
 * counts as the bytes it adds to an encoded Changes message (tag, length
 * and body); the Changes and Envelope fields around them are the caller's
 * margin. On failure the page is empty (n 0, next_cursor = cursor). */
struct srv_page {
  Fieldsync__Change **changes; /* n entries, owned by the page */
  size_t n;
  uint64_t next_cursor;
  bool more;                   /* another Pull would return more now */
  struct srv_scope *removed;   /* held scopes no longer visible */
  size_t nremoved;
  bool backfilling;            /* the changes backfill `backfill` */
  struct srv_scope backfill;
  uint64_t backfill_next;
  bool backfill_done;
};

/* One Pull for who (NULL: everything, no scope logic, as for head_office),
 * all read in one read transaction:
 *  - removed: held scopes not in srv_store_scopes(who, now);
 *  - if a visible scope is not held, a backfill page of the first such
 *    scope (in fsp_scope_cmp order): its current versions readable by who
 *    with backfill_after < seq <= cursor (backfill_after counts only when
 *    req->backfill names that same scope; else 0), next_cursor = cursor,
 *    more = true, backfill_next = the last seq looked at, backfill_done
 *    when none is left;
 *  - otherwise the feed: current versions with seq > cursor that who may
 *    read (srv_policy_may_read, in a visible scope), next_cursor the last
 *    seq looked at (the store's last seq when nothing more is due, so an
 *    idle device's cursor keeps up), more when some may remain.
 * Scoped feeds are read per scope from an index, so a device's cost
 * follows its scope, not the store's size. */
int srv_store_pull(struct srv_store_conn *c, const struct srv_identity *who,
                   const struct srv_pull_req *req, struct srv_page *page);
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
