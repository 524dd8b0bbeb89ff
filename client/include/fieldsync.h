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
  XX(INTERNAL, -19, "internal error")

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
 * "fields": {...}}]}. Versions are ordered display winner first.
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
 * write. CSV cells hold the display winner's fields (repeated fields joined
 * with "|", nested messages as JSON). @return 0, FIELDSYNC_EINVAL, ... */
FIELDSYNC_EXTERN int fieldsync_export(fieldsync_db *db, const char *collection,
                                      int format, fieldsync_write_cb write,
                                      void *data);

/**
 * Imports records of one collection from a file: CSV (".csv"; header row =
 * field names; a repeated field's cell holds "|"-separated values; an "id"
 * column, if present, gives the record id) or JSON lines (".jsonl"/".json";
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

#ifdef __cplusplus
}
#endif

#endif
