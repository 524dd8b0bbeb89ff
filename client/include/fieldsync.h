/* SPDX-License-Identifier: MIT */
/* libfieldsync: the offline-first client library for fieldsync.
 *
 * A fieldsync_db is one replica: a local SQLite database holding records of
 * the inspection collections (service, visit, observation, interview_note,
 * requirement, recommendation, concern, attachment), each with its current
 * versions. Recording never needs the network. Every edit makes a new
 * version whose version vector dominates everything this replica has seen
 * of the record; concurrent edits from elsewhere become siblings (a
 * conflict) that are listed and resolved, never silently dropped.
 *
 * Threads: a handle may be used from any thread, but from one thread at a
 * time; different handles (even on the same file) are independent. The
 * library keeps no global state.
 *
 * Errors: functions return 0 (FIELDSYNC_OK) or a negative FIELDSYNC_E*
 * code; fieldsync_errmsg(db) then describes the failure in one line.
 * Memory handed out by the library is freed with fieldsync_free(). */
#ifndef FIELDSYNC_H
#define FIELDSYNC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(FIELDSYNC_BUILDING_SHARED)
#define FIELDSYNC_EXTERN __declspec(dllexport)
#elif defined(_WIN32) && defined(FIELDSYNC_SHARED)
#define FIELDSYNC_EXTERN __declspec(dllimport)
#elif defined(__GNUC__)
#define FIELDSYNC_EXTERN __attribute__((visibility("default")))
#else
#define FIELDSYNC_EXTERN
#endif

#define FIELDSYNC_VERSION_MAJOR 0
#define FIELDSYNC_VERSION_MINOR 1
#define FIELDSYNC_VERSION_PATCH 0
#define FIELDSYNC_VERSION_NUM                                                  \
  ((FIELDSYNC_VERSION_MAJOR << 16) | (FIELDSYNC_VERSION_MINOR << 8) |          \
   FIELDSYNC_VERSION_PATCH)

/** The library's version as FIELDSYNC_VERSION_NUM at its build time; compare
 * with the macro to detect a header/library mismatch. */
FIELDSYNC_EXTERN unsigned fieldsync_version(void);
/** The version as a static string, e.g. "0.1.0". */
FIELDSYNC_EXTERN const char *fieldsync_version_string(void);

/* Error codes. Never renumbered or reused. XX(name, value, message). */
#define FIELDSYNC_ERRNO_MAP(XX)                                                \
  XX(NOMEM, -1, "out of memory")                                               \
  XX(INVAL, -2, "invalid argument")                                            \
  XX(NOTDB, -3, "file is not a fieldsync database")                            \
  XX(CORRUPT, -4, "database is corrupt")                                       \
  XX(NEWER, -5, "database was made by a newer fieldsync")                      \
  XX(IO, -6, "input/output error")                                             \
  XX(CANTOPEN, -7, "cannot open the database")                                 \
  XX(READONLY, -8, "database is read-only")                                    \
  XX(NOTFOUND, -9, "no such record")                                           \
  XX(COLLECTION, -10, "unknown collection")                                    \
  XX(FIELD, -11, "unknown field")                                              \
  XX(VALUE, -12, "bad field value")                                            \
  XX(CONFLICT, -13, "record is in conflict")                                   \
  XX(DELETED, -14, "record is deleted")                                        \
  XX(BUSY, -15, "database is busy")                                            \
  XX(FORMAT, -16, "bad input file")                                            \
  XX(EXISTS, -17, "already exists")                                            \
  XX(CALLBACK, -18, "stopped by the callback")                                 \
  XX(INTERNAL, -19, "internal error")                                          \
  XX(NETWORK, -20, "network error")                                            \
  XX(AUTH, -21, "server refused the device token")                             \
  XX(PROTOCOL, -22, "server broke the protocol")                               \
  XX(SERVER, -23, "server reported an error")                                  \
  XX(TIMEOUT, -24, "network timeout")                                          \
  XX(TLS, -25, "TLS failure")                                                  \
  XX(REVOKED, -26, "device revoked by the server; local data wiped")

enum fieldsync_errno {
  FIELDSYNC_OK = 0,
#define FIELDSYNC_ERR_ENUM_(name, val, msg) FIELDSYNC_E##name = (val),
  FIELDSYNC_ERRNO_MAP(FIELDSYNC_ERR_ENUM_)
#undef FIELDSYNC_ERR_ENUM_
};

/** Static English text for an error code. */
FIELDSYNC_EXTERN const char *fieldsync_strerror(int code);
/** Static name for an error code, e.g. "FIELDSYNC_ENOTFOUND". */
FIELDSYNC_EXTERN const char *fieldsync_errname(int code);

/** Frees memory the library handed out (strings, JSON). NULL is a no-op. */
FIELDSYNC_EXTERN void fieldsync_free(void *p);

/* ---- databases --------------------------------------------------------- */

typedef struct fieldsync_db fieldsync_db;

/** Open flags. */
#define FIELDSYNC_OPEN_CREATE 0x1 /**< create the database if it is absent */

/**
 * Opens (and with FIELDSYNC_OPEN_CREATE, creates) a database. A new database
 * gets a random 128-bit replica id from the OS's secure random source, and
 * `name` (may be NULL) as a label. The schema is migrated forward when it is
 * older; a database from a newer schema gives FIELDSYNC_ENEWER.
 * Commits are durable (WAL, synchronous=FULL): a returned write survives a
 * power cut.
 * @param path  file path (UTF-8)
 * @param flags FIELDSYNC_OPEN_* flags
 * @param name  label stored at creation, or NULL
 * @param out   receives the handle. On failure *out is still set when
 *              memory allowed, so fieldsync_errmsg(*out) explains; close it
 *              with fieldsync_close().
 * @return 0, FIELDSYNC_ECANTOPEN, FIELDSYNC_ENOTDB, FIELDSYNC_ECORRUPT,
 *         FIELDSYNC_ENEWER, FIELDSYNC_EREADONLY, FIELDSYNC_ENOMEM, ...
 */
FIELDSYNC_EXTERN int fieldsync_open(const char *path, int flags,
                                    const char *name, fieldsync_db **out);

/** Closes the database. NULL is a no-op. Returns 0 or FIELDSYNC_EIO. */
FIELDSYNC_EXTERN int fieldsync_close(fieldsync_db *db);

/** One line describing the last failure on db (or "ok"). Owned by db and
 * valid until the next call on it. db may be NULL ("out of memory"). */
FIELDSYNC_EXTERN const char *fieldsync_errmsg(fieldsync_db *db);

/** This replica's id as 32 lowercase hex digits plus NUL. */
FIELDSYNC_EXTERN void fieldsync_replica_id(fieldsync_db *db, char hex[33]);

/* ---- drafts: typed record content built from text ---------------------- */

/**
 * A draft holds one record's field values on its way into the database.
 * Field names are the collection payload's protobuf field names; values are
 * text parsed by the field's type: strings as is (UTF-8), integers in
 * decimal, bools as true/false/yes/no/1/0, enums by value name without the
 * enum's prefix and case-insensitively ("met", "given", "safeguarding_referral"),
 * ids as 32 hex digits, and nested messages as a JSON object. Setting a
 * repeated field appends; the first set of a repeated field in a draft made
 * for an edit replaces the old list.
 */
typedef struct fieldsync_draft fieldsync_draft;

/** A new, empty draft for collection ("observation", ...).
 * @return 0, FIELDSYNC_ECOLLECTION or FIELDSYNC_ENOMEM (message in db). */
FIELDSYNC_EXTERN int fieldsync_draft_new(fieldsync_db *db,
                                         const char *collection,
                                         fieldsync_draft **out);

/** A draft holding the current content of record id, for fieldsync_edit().
 * @return 0, FIELDSYNC_ENOTFOUND, FIELDSYNC_EDELETED, FIELDSYNC_ECONFLICT
 *         (resolve first), FIELDSYNC_EINVAL (bad id text), ... */
FIELDSYNC_EXTERN int fieldsync_draft_for_edit(fieldsync_db *db, const char *id,
                                              fieldsync_draft **out);

/** Sets field to the value parsed from text (see above).
 * @return 0, FIELDSYNC_EFIELD (no such field) or FIELDSYNC_EVALUE; the
 *         message, in the draft's db, names the field and the value. */
FIELDSYNC_EXTERN int fieldsync_draft_set(fieldsync_draft *d, const char *field,
                                         const char *text);

/** Clears field (absent = "not recorded"). 0 or FIELDSYNC_EFIELD. */
FIELDSYNC_EXTERN int fieldsync_draft_clear(fieldsync_draft *d,
                                           const char *field);

/** Frees a draft. NULL is a no-op. */
FIELDSYNC_EXTERN void fieldsync_draft_free(fieldsync_draft *d);

/* ---- records ----------------------------------------------------------- */

/**
 * Creates a record from the draft (validated as its collection requires:
 * for example an observation needs visit_id, its scope). The new record's
 * id is time-ordered (like UUIDv7).
 * @param id_out receives the id as 32 hex digits plus NUL (may be NULL)
 * @return 0, FIELDSYNC_EVALUE, FIELDSYNC_EIO, ...
 */
FIELDSYNC_EXTERN int fieldsync_create(fieldsync_db *db,
                                      const fieldsync_draft *d,
                                      char id_out[33]);

/** Saves a draft made by fieldsync_draft_for_edit() as a new version of its
 * record. @return 0, FIELDSYNC_ECONFLICT when siblings appeared meanwhile,
 * FIELDSYNC_EVALUE, FIELDSYNC_EINVAL (draft not made for an edit), ... */
FIELDSYNC_EXTERN int fieldsync_edit(fieldsync_db *db, const fieldsync_draft *d);

/** Deletes record id: a tombstone version that supersedes every current
 * version. @return 0, FIELDSYNC_ENOTFOUND, FIELDSYNC_EDELETED, ... */
FIELDSYNC_EXTERN int fieldsync_delete(fieldsync_db *db, const char *id);

/** Resolves a conflict by keeping the sibling whose content hash starts
 * with hash_prefix (at least 8 hex digits, unambiguous): a new version with
 * that content whose vector is the join of all siblings plus one.
 * @return 0, FIELDSYNC_ENOTFOUND (record or hash), FIELDSYNC_EINVAL
 *         (not in conflict, or ambiguous prefix), ... */
FIELDSYNC_EXTERN int fieldsync_resolve_keep(fieldsync_db *db, const char *id,
                                            const char *hash_prefix);

/** Resolves a conflict with new content: d must be a draft of the record's
 * collection (fieldsync_draft_new, or fieldsync_draft_for_resolve). */
FIELDSYNC_EXTERN int fieldsync_resolve_with(fieldsync_db *db, const char *id,
                                            const fieldsync_draft *d);

/** A draft holding the display winner's content of a conflicted record, to
 * change some fields and pass to fieldsync_resolve_with(). */
FIELDSYNC_EXTERN int fieldsync_draft_for_resolve(fieldsync_db *db,
                                                 const char *id,
                                                 fieldsync_draft **out);

/* ---- batches ----------------------------------------------------------- */

/**
 * Groups many writes into one durable transaction (far faster than one
 * commit per record). Between fieldsync_batch_begin() and
 * fieldsync_batch_commit(), each write (create, edit, delete, resolve)
 * still succeeds or fails on its own: a failed write is undone alone and
 * the batch goes on. Nothing in the batch is durable until commit returns
 * 0; fieldsync_batch_rollback() (or closing the handle) discards it.
 * @return 0, FIELDSYNC_EINVAL (a batch is already open / none is open),
 *         FIELDSYNC_EBUSY, FIELDSYNC_EIO, ...
 */
FIELDSYNC_EXTERN int fieldsync_batch_begin(fieldsync_db *db);
FIELDSYNC_EXTERN int fieldsync_batch_commit(fieldsync_db *db);
FIELDSYNC_EXTERN int fieldsync_batch_rollback(fieldsync_db *db);

/* ---- reading ----------------------------------------------------------- */

/**
 * JSON of one record, in the stable shape documented in README.md:
 * {"collection", "id", "deleted", "conflict", "versions": [{"vv":
 * {"<replica hex>": counter}, "hash", "deleted", "author", "time",
 * "pending", "refused", "fields": {...}}]}. "time" is the author's device
 * clock as ISO 8601 UTC (informational); "author" is the writing replica's
 * label (or null); "pending" is true for a local version no server has
 * acknowledged yet; "refused" is null, or {"code", "reason"} (e.g.
 * {"code": "ERR_FORBIDDEN", "reason": "..."}) for a local version the
 * server refused (still pending; see fieldsync_refused()).
 * "replica_reuse": true is added when two versions share a vector (a
 * replica id was reused). Versions are ordered display winner first;
 * "deleted" is true when every version is a tombstone.
 * @param json_out receives a NUL-terminated string; free with fieldsync_free
 * @return 0, FIELDSYNC_ENOTFOUND, FIELDSYNC_EINVAL (bad id), ...
 */
FIELDSYNC_EXTERN int fieldsync_get_json(fieldsync_db *db, const char *id,
                                        char **json_out);

/** What fieldsync_query() selects. Zero-initialise, then set filters. */
struct fieldsync_query {
  const char *collection; /**< NULL: every collection */
  const char *visit_id;   /**< records of this visit (32 hex), or NULL */
  const char *service_id; /**< records of this service (32 hex), or NULL */
  int conflicts_only;     /**< only records with more than one version */
  int include_deleted;    /**< also records whose winner is a tombstone */
};

/** Called once per matching record, in id order, with its JSON (valid
 * during the call only). Return 0 to go on, non-zero to stop (the query
 * then returns FIELDSYNC_ECALLBACK). Called on the caller's thread; it must
 * not call into the same db. */
typedef int (*fieldsync_record_cb)(const char *json, void *data);

/** Runs a query; uses an index for each filter (never a full scan when a
 * visit or service is given). @return 0, FIELDSYNC_ECOLLECTION,
 * FIELDSYNC_EINVAL, FIELDSYNC_ECALLBACK, ... */
FIELDSYNC_EXTERN int fieldsync_query(fieldsync_db *db,
                                     const struct fieldsync_query *q,
                                     fieldsync_record_cb cb, void *data);

/* ---- bulk -------------------------------------------------------------- */

/** Output sink for exports: write n bytes; return 0 or non-zero to stop. */
typedef int (*fieldsync_write_cb)(const char *buf, size_t n, void *data);

#define FIELDSYNC_FORMAT_JSON 1 /**< a JSON array of records */
#define FIELDSYNC_FORMAT_CSV 2  /**< one row per record: id, then fields */

/** Exports records (collection NULL: all; CSV needs a collection) through
 * write. CSV has columns id, deleted, conflict, then the fields; cells hold
 * the display winner's fields (repeated fields joined with "|", with "|"
 * and "\\" inside a value escaped by "\\"; nested messages as JSON). A CSV
 * export imports back with fieldsync_import (deleted rows are skipped).
 * @return 0, FIELDSYNC_EINVAL, ... */
FIELDSYNC_EXTERN int fieldsync_export(fieldsync_db *db, const char *collection,
                                      int format, fieldsync_write_cb write,
                                      void *data);

/**
 * Imports records of one collection from a file: CSV (".csv"; header row =
 * field names; a repeated field's cell holds "|"-separated values; an "id"
 * column, if present, gives the record id; "deleted" and "conflict" columns
 * from an export are understood, and rows with deleted=true skipped) or
 * JSON lines (".jsonl"/".json";
 * one object of fields per line, optional "id"). The whole file is applied
 * in one transaction: a bad row stops the import, the message names its
 * line, and nothing from the file is kept.
 * @param count_out receives the number of records imported (may be NULL)
 * @return 0, FIELDSYNC_EFORMAT, FIELDSYNC_EFIELD, FIELDSYNC_EVALUE,
 *         FIELDSYNC_EEXISTS (an id already present), FIELDSYNC_EIO, ...
 */
FIELDSYNC_EXTERN int fieldsync_import(fieldsync_db *db, const char *collection,
                                      const char *path, size_t *count_out);

/** Field names of a collection's payload, for help texts: calls cb once per
 * field with its name and a type description ("string", "enum: met|...",
 * "id", "repeated string", ...). @return 0 or FIELDSYNC_ECOLLECTION. */
typedef void (*fieldsync_field_cb)(const char *name, const char *type,
                                   void *data);
FIELDSYNC_EXTERN int fieldsync_fields(fieldsync_db *db, const char *collection,
                                      fieldsync_field_cb cb, void *data);

/** Names of all collections, NULL-terminated, static. */
FIELDSYNC_EXTERN const char *const *fieldsync_collections(void);

/* ---- refused versions and the quarantine ------------------------------- */

/**
 * Calls cb once per local version the server refused, oldest first, with
 * JSON: {"collection", "id", "hash", "code" (e.g. "ERR_FORBIDDEN"),
 * "reason", "refused_at" (ISO 8601 UTC)}. A refused version stays in its
 * record (fieldsync_get_json shows it with "refused": {"code", "reason"})
 * and is not sent again until fieldsync_retry_refused().
 * @return 0, FIELDSYNC_ECALLBACK, ...
 */
FIELDSYNC_EXTERN int fieldsync_refused(fieldsync_db *db, fieldsync_record_cb cb,
                                       void *data);

/**
 * Clears the refused mark of the record id's versions (id NULL: of every
 * record), so the next sync sends them again (after an assignment was
 * fixed, say). @param count_out versions cleared (may be NULL)
 * @return 0 (also when id is NULL and nothing was refused),
 *         FIELDSYNC_EINVAL (bad id), FIELDSYNC_ENOTFOUND (no refused
 *         version of that record), ...
 */
FIELDSYNC_EXTERN int fieldsync_retry_refused(fieldsync_db *db, const char *id,
                                             size_t *count_out);

/**
 * Calls cb once per quarantined version, oldest first, with JSON:
 * {"qid" (a number), "collection", "id", "scope": {"kind", "id"},
 * "reason" (why it was quarantined: "scope removed by the server" or
 * "device revoked"), "quarantined_at", "deleted", "vv", "hash", "author",
 * "time", "refused" (null or {"code", "reason"}), "fields" (null for a
 * tombstone)}. One JSON object per line is the export format.
 * @return 0, FIELDSYNC_ECALLBACK, ...
 */
FIELDSYNC_EXTERN int fieldsync_quarantine(fieldsync_db *db,
                                          fieldsync_record_cb cb, void *data);

/**
 * Deletes quarantined version qid (qid 0: all of them), once the user
 * has exported what they need. A qid is never reused.
 * @param count_out versions deleted (may be NULL)
 * @return 0, FIELDSYNC_ENOTFOUND (no such qid), FIELDSYNC_EINVAL
 *         (negative qid), ...
 */
FIELDSYNC_EXTERN int fieldsync_quarantine_discard(fieldsync_db *db, int64_t qid,
                                                  size_t *count_out);

/** What a replica holds and owes, for a status display. */
struct fieldsync_counts {
  size_t records;     /**< records, deleted ones included */
  size_t conflicts;   /**< records in conflict */
  size_t pending;     /**< local versions waiting to be sent (not refused) */
  size_t refused;     /**< local versions the server refused
                           (fieldsync_refused()); not sent until retried */
  size_t quarantined; /**< versions in the quarantine */
  size_t held_scopes; /**< scopes held completely (always 0 on a
                           head_office device) */
  uint64_t cursor;    /**< the pull cursor */
};

/**
 * Fills out with the replica's counts, read from indexes: the record
 * counts scan one, the others read only what is pending, refused or
 * quarantined. Fields are only ever added at the end.
 * @return 0, FIELDSYNC_EINVAL (NULL argument), or a database error
 */
FIELDSYNC_EXTERN int fieldsync_counts(fieldsync_db *db,
                                      struct fieldsync_counts *out);

/* ---- sync -------------------------------------------------------------- */

/**
 * Progress of a sync, called after each batch: phase is "push" or "pull",
 * done counts the versions handled so far in that phase (pushed and
 * answered, or refused before sending; pulled and applied), total is the
 * number expected or 0 when unknown (the protocol does not tell how many
 * are waiting, so it is 0 today). Called on the thread running the sync;
 * it must not call into the db being synced.
 */
typedef void (*fieldsync_progress_cb)(const char *phase, size_t done,
                                      size_t total, void *data);

/**
 * The server's answer for one pushed version, called once per version in
 * the order they were made, after the answer is stored locally.
 * @param collection the record's collection, e.g. "observation"
 * @param id         the record id, 32 lowercase hex digits
 * @param outcome    "applied" (stored), "already_known" (the server had
 *                   it), "conflict" (stored beside a concurrent version),
 *                   "stale" (stored in history; a newer version wins) or
 *                   "refused" (not stored; it stays here, unacknowledged
 *                   and marked refused with this reason, listed by
 *                   fieldsync_refused(), and is not sent again until
 *                   fieldsync_retry_refused())
 * @param reason     NULL, except for "refused" (the server's error code
 *                   name and text, e.g. "ERR_FORBIDDEN: not your visit",
 *                   or why the library did not send it, e.g. a version
 *                   larger than the server's limits: such a version is
 *                   not marked refused, and the next sync tries it again)
 *                   and for a "conflict" the server explains (replica-id
 *                   reuse). Text from the server; valid during the call
 *                   only.
 * Called on the thread running the sync; it must not call into the db
 * being synced.
 */
typedef void (*fieldsync_outcome_cb)(const char *collection, const char *id,
                                     const char *outcome, const char *reason,
                                     void *data);

/** How to sync. Zero-initialise, then set server and token (and usually
 * ca_file). The connection is TLS unless plaintext is set. Fields are only
 * ever added at the end. */
struct fieldsync_sync_opts {
  const char *server; /**< "host:port", "192.0.2.7:7420", "[::1]:7420" */
  const char *token;  /**< the device token (never logged or echoed) */
  int timeout_ms;     /**< limit on each network wait; 0 means 30000 */
  unsigned batch;     /**< versions per Push or Pull; 0 means 1000. The
                           server's max_batch_records caps it */
  fieldsync_progress_cb progress; /**< may be NULL */
  void *progress_data;
  fieldsync_outcome_cb outcome; /**< may be NULL */
  void *outcome_data;
  const char *ca_file;    /**< PEM CA bundle to verify the server; NULL with
                               plaintext=0 means the system default store
                               (which apps on Android and iOS must not rely
                               on: give a file) */
  const char *pin_sha256; /**< optional: hex SHA-256 of the server's
                               SubjectPublicKeyInfo (64 hex digits); the
                               connection fails unless it matches, on top of
                               the CA check. `openssl x509 -pubkey -noout
                               -in cert.pem | openssl pkey -pubin -outform
                               der | sha256sum` prints it */
  int plaintext;          /**< 1: plain TCP (only for loopback or a trusted
                               tunnel); ca_file and pin_sha256 must then be
                               NULL */
};

/** What a sync did. On failure it holds what was done before the failure
 * (every counted push was acknowledged, every counted pull applied). */
struct fieldsync_sync_stats {
  size_t pushed;    /**< versions sent in Push batches */
  size_t acked;     /**< of those, acknowledged (not refused) */
  size_t conflicts; /**< of those, acknowledged as a conflict */
  size_t refused;   /**< refused by the server (now marked refused) or
                         unsendable (left as it was); unacknowledged */
  size_t pulled;    /**< versions received in Changes batches */
  size_t applied;   /**< of those, new here (became current) */
  size_t pull_conflicts; /**< of those, left their record in conflict */
  uint64_t cursor;       /**< the pull cursor after the sync */
  size_t removed;        /**< records removed because the server withdrew
                              their scope (unassigned, expired, revoked) */
  size_t quarantined;    /**< unacknowledged versions moved to the
                              quarantine before their records were removed */
};

/**
 * Syncs db with a server over one TCP session (proto/PROTOCOL.md): Hello,
 * then pushes every local version the server has not acknowledged, in
 * batches, then pulls the server's changes until it has no more, then Bye.
 * Each pushed batch is recorded as acknowledged only after the server's
 * PushAck (which it sends after its commit); each pulled batch is applied
 * together with its new cursor in one local transaction. So a sync that
 * fails or is killed at any point loses nothing and duplicates nothing:
 * the next sync resends what was not acknowledged and refetches what was
 * not applied. Versions the server refuses are reported through
 * opts->outcome and stay here, marked refused (fieldsync_refused()).
 *
 * Scopes (PROTOCOL.md "Scopes"): an inspector's or expert's device holds
 * only the visits assigned to its user (and, for inspectors, those visits'
 * services). When a visit is newly assigned, the pull backfills its
 * existing records. When the server withdraws a scope (unassigned, the
 * assignment expired), the records of that scope are removed here, in the
 * transaction that applies the server's message; their unacknowledged
 * versions (pending or refused) are first copied to the quarantine
 * (fieldsync_quarantine()). When the server says the device is revoked,
 * every unacknowledged version is quarantined, then every record, the
 * cursor and the held scopes are wiped, and the sync returns
 * FIELDSYNC_EREVOKED. Nothing unacknowledged is ever deleted without a
 * quarantined copy.
 *
 * Transport: TLS 1.2 or newer (PROTOCOL.md "Security"). The server's
 * certificate must chain to opts->ca_file (or to the system's default
 * store) and be valid now and for the host in opts->server (a DNS name, or
 * an IP address for an IP literal); with opts->pin_sha256 its public key
 * must match too. opts->plaintext = 1 speaks plain TCP instead, which a
 * server accepts on a loopback address only. Each step of the TLS handshake
 * is a network wait bounded by timeout_ms. Resolving the host name is not
 * bounded by timeout_ms. The pull cursor belongs to the server's id: a
 * different server (a new store) restarts the pull from the beginning. A
 * server store restored from a backup keeps its id and is not detected
 * yet: do not restore a server store without resetting its id.
 *
 * @param db    the database; no fieldsync_batch_begin() batch may be open
 * @param opts  server, token, limits and callbacks (see the struct)
 * @param stats receives the counts, also on failure (may be NULL)
 * @return 0;
 *   FIELDSYNC_EINVAL (NULL opts, missing token, "bad server address", an
 *   open batch, negative timeout, a pin that is not 64 hex digits, a CA
 *   file or pin with plaintext);
 *   FIELDSYNC_ENETWORK (cannot resolve or connect, or the connection was
 *   lost or closed early);
 *   FIELDSYNC_ETIMEOUT (a network wait passed timeout_ms);
 *   FIELDSYNC_ETLS (TLS failed; errmsg reads "TLS with HOST:PORT: ..." and
 *   names the reason, e.g. "certificate verify failed: unable to get local
 *   issuer certificate" (not signed by the CA given), "certificate verify
 *   failed: certificate has expired", "certificate verify failed: hostname
 *   mismatch ...", "server public key does not match the pin ...", "server
 *   did not speak TLS ..." (a plaintext server), "cannot load the CA file
 *   ...", or, with plaintext, "the server speaks TLS ...". Not transient:
 *   retrying will not help until the configuration is fixed);
 *   FIELDSYNC_EAUTH (the server refused the token);
 *   FIELDSYNC_EREVOKED (the server revoked this device: local data was
 *   wiped after quarantining unacknowledged versions; errmsg says how
 *   many);
 *   FIELDSYNC_ESERVER (the server sent an Error; errmsg reads
 *   "server: ERR_<CODE>: <its message>". ERR_STORAGE, ERR_TIMEOUT,
 *   ERR_SHUTTING_DOWN and ERR_BUSY are transient: retry later, with backoff);
 *   FIELDSYNC_EPROTOCOL (the server sent bytes or messages the protocol does
 *   not allow, a change this replica cannot apply, or asked for another
 *   Pull without progress: a feed page must move the cursor, a backfill
 *   page must finish its scope or move past the position; nothing of that
 *   batch is kept);
 *   or a local database error (FIELDSYNC_EIO, FIELDSYNC_EBUSY, ...).
 *   fieldsync_errmsg(db) says what happened in one line.
 *
 * Threads and callbacks: the call blocks; progress and outcome callbacks
 * run on the calling thread, during the call.
 */
FIELDSYNC_EXTERN int fieldsync_sync(fieldsync_db *db,
                                    const struct fieldsync_sync_opts *opts,
                                    struct fieldsync_sync_stats *stats);

/** A sync running on its own thread (fieldsync_sync_start). */
typedef struct fieldsync_sync_job fieldsync_sync_job;

/** Called once when an asynchronous sync ends, on the sync's thread, with
 * fieldsync_sync()'s result code and stats (valid during the call only).
 * It may call fieldsync_errmsg(db) for the sync's db; after it returns the
 * job's thread touches the db no more. */
typedef void (*fieldsync_sync_done_cb)(int rc,
                                       const struct fieldsync_sync_stats *stats,
                                       void *data);

/**
 * Starts fieldsync_sync(db, opts, ...) on a new thread, for apps whose UI
 * thread must not block. opts is copied (with its strings: server, token,
 * ca_file and pin_sha256), so it need not outlive this call. The progress
 * and outcome callbacks run on the job's thread. Until done has run, the
 * caller must not use db; after that it may, from any one thread at a time.
 * @param done called exactly once, on the job's thread, if this returns 0;
 *             never if it returns an error
 * @param data passed to done
 * @param job  receives the job; pass it to fieldsync_sync_join() exactly
 *             once (even after done has run), which frees it
 * @return 0, FIELDSYNC_EINVAL (a NULL argument, or the options fail the
 *         checks fieldsync_sync() makes first, such as a bad server
 *         address; message in db), FIELDSYNC_ENOMEM (no memory, or the OS
 *         refused a thread)
 */
FIELDSYNC_EXTERN int
fieldsync_sync_start(fieldsync_db *db, const struct fieldsync_sync_opts *opts,
                     fieldsync_sync_done_cb done, void *data,
                     fieldsync_sync_job **job);

/**
 * Waits until the job's sync has ended and its done callback has returned,
 * then frees the job. Must not be called from the done callback.
 * @return the result code the job passed to done, or FIELDSYNC_EINVAL for
 *         a NULL job
 */
FIELDSYNC_EXTERN int fieldsync_sync_join(fieldsync_sync_job *job);

#ifdef __cplusplus
}
#endif

#endif
