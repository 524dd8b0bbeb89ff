/* SPDX-License-Identifier: MIT */
/* Opening, creating and migrating a replica's database, and the error
 * plumbing every module uses. A database is recognised by its schema
 * version (PRAGMA user_version) and its meta row holding the replica id;
 * anything else is refused before a byte of it is changed. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fsc_int.h"
#include "fsc_os.h"

/* Schema migrations: migrations[k] takes a database from version k to
 * k + 1. Append only; a released entry never changes. */
static const char *const migrations[] = {
    /* 0 -> 1: the initial schema. */
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    /* One row per record; the columns are derived from the display
     * winner, for queries. Ids are time-ordered, so inserts append. */
    "CREATE TABLE records("
    "  id BLOB PRIMARY KEY,"
    "  collection INTEGER NOT NULL,"
    "  scope_kind INTEGER NOT NULL,"
    "  scope_id BLOB NOT NULL,"
    "  visit_id BLOB,"
    "  service_id BLOB,"
    "  nversions INTEGER NOT NULL,"
    "  deleted INTEGER NOT NULL,"
    /* Two current versions with equal vectors but different content: a
     * replica id was reused (restored backup). Kept, flagged, reported. */
    "  reuse INTEGER NOT NULL DEFAULT 0"
    ") WITHOUT ROWID;"
    "CREATE INDEX records_collection ON records(collection, id);"
    "CREATE INDEX records_visit ON records(visit_id, id)"
    "  WHERE visit_id IS NOT NULL;"
    "CREATE INDEX records_service ON records(service_id, id)"
    "  WHERE service_id IS NOT NULL;"
    "CREATE INDEX records_scope ON records(scope_kind, scope_id);"
    "CREATE INDEX records_conflict ON records(id) WHERE nversions > 1;"
    /* The current versions of every record. pending > 0 orders local
     * versions the server has not acknowledged yet. */
    "CREATE TABLE versions("
    "  record BLOB NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  vv BLOB NOT NULL,"
    "  deleted INTEGER NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  author TEXT,"
    "  device_time_ms INTEGER,"
    "  pending INTEGER NOT NULL DEFAULT 0,"
    /* A version is its (vector, content): two replicas may write the
     * same content concurrently, and a resolution may keep a sibling's
     * content under a new vector. */
    "  PRIMARY KEY(record, hash, vv)"
    ") WITHOUT ROWID;"
    "CREATE INDEX versions_pending ON versions(pending) WHERE pending > 0;",
    /* 1 -> 2: scoped sync (PROTOCOL.md "Scopes"). A version the server
     * refused stays pending but is marked (code, text, when); it is not
     * offered again until the user retries, so the outgoing query's
     * partial index leaves refused versions out. held_scopes lists the
     * scopes this replica holds completely; a backfill in progress is in
     * meta (backfill_kind, backfill_id, backfill_after). The quarantine
     * keeps unacknowledged versions of records the server took away
     * (scope removed, device revoked) until the user discards them; qids
     * are never reused, so an exported qid always names one version. */
    "ALTER TABLE versions ADD COLUMN refused_code INTEGER;"
    "ALTER TABLE versions ADD COLUMN refused_reason TEXT;"
    "ALTER TABLE versions ADD COLUMN refused_ms INTEGER;"
    "DROP INDEX versions_pending;"
    "CREATE INDEX versions_pending ON versions(pending)"
    "  WHERE pending > 0 AND refused_code IS NULL;"
    "CREATE INDEX versions_refused ON versions(pending)"
    "  WHERE refused_code IS NOT NULL;"
    "CREATE TABLE held_scopes("
    "  kind INTEGER NOT NULL,"
    "  id BLOB NOT NULL,"
    "  PRIMARY KEY(kind, id)"
    ") WITHOUT ROWID;"
    "CREATE TABLE quarantine("
    "  qid INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  quarantined_ms INTEGER NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  collection INTEGER NOT NULL,"
    "  record BLOB NOT NULL,"
    "  scope_kind INTEGER NOT NULL,"
    "  scope_id BLOB NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  vv BLOB NOT NULL,"
    "  deleted INTEGER NOT NULL,"
    "  payload BLOB NOT NULL,"
    "  author TEXT,"
    "  device_time_ms INTEGER,"
    "  refused_code INTEGER,"
    "  refused_reason TEXT"
    ");",
};

#define NMIGRATIONS (sizeof(migrations) / sizeof(migrations[0]))

/* ---- errors ------------------------------------------------------------ */

int fsc_err(fieldsync_db *db, int code, const char *fmt, ...) {
  va_list ap;

  if (db == NULL)
    return code;
  va_start(ap, fmt);
  vsnprintf(db->errmsg, sizeof(db->errmsg), fmt, ap);
  va_end(ap);
  return code;
}

int fsc_sqlerr(fieldsync_db *db, int rc, const char *what) {
  const char *msg = db->sql != NULL ? sqlite3_errmsg(db->sql)
                                    : sqlite3_errstr(rc);
  int code;

  switch (rc & 0xff) {
  case SQLITE_NOMEM:
    code = FIELDSYNC_ENOMEM;
    break;
  case SQLITE_NOTADB:
    code = FIELDSYNC_ENOTDB;
    break;
  case SQLITE_CORRUPT:
    code = FIELDSYNC_ECORRUPT;
    break;
  case SQLITE_CANTOPEN:
    code = FIELDSYNC_ECANTOPEN;
    break;
  case SQLITE_READONLY:
  case SQLITE_PERM:
    code = FIELDSYNC_EREADONLY;
    break;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    code = FIELDSYNC_EBUSY;
    break;
  case SQLITE_IOERR:
  case SQLITE_FULL:
    code = FIELDSYNC_EIO;
    break;
  default:
    code = FIELDSYNC_EINTERNAL;
    break;
  }
  if (code == FIELDSYNC_EIO || code == FIELDSYNC_ECORRUPT)
    db->io_failed = true;
  return fsc_err(db, code, "%s: %s", what, msg);
}

int fsc_fsperr(fieldsync_db *db, const struct fsp_error *err) {
  int code = err->code == FSP_ENOMEM ? FIELDSYNC_ENOMEM : FIELDSYNC_EVALUE;

  return fsc_err(db, code, "%s", err->msg);
}

const char *fieldsync_strerror(int code) {
  switch (code) {
  case FIELDSYNC_OK:
    return "success";
#define XX(name, val, msg)                                                     \
  case FIELDSYNC_E##name:                                                      \
    return msg;
    FIELDSYNC_ERRNO_MAP(XX)
#undef XX
  default:
    return "unknown error";
  }
}

const char *fieldsync_errname(int code) {
  switch (code) {
  case FIELDSYNC_OK:
    return "FIELDSYNC_OK";
#define XX(name, val, msg)                                                     \
  case FIELDSYNC_E##name:                                                      \
    return "FIELDSYNC_E" #name;
    FIELDSYNC_ERRNO_MAP(XX)
#undef XX
  default:
    return "FIELDSYNC_EUNKNOWN";
  }
}

const char *fieldsync_errmsg(fieldsync_db *db) {
  if (db == NULL)
    return "out of memory";
  return db->errmsg[0] != '\0' ? db->errmsg : "ok";
}

unsigned fieldsync_version(void) { return FIELDSYNC_VERSION_NUM; }

const char *fieldsync_version_string(void) {
#define FSC_STR_(x) #x
#define FSC_STR(x) FSC_STR_(x)
  return FSC_STR(FIELDSYNC_VERSION_MAJOR) "." FSC_STR(
      FIELDSYNC_VERSION_MINOR) "." FSC_STR(FIELDSYNC_VERSION_PATCH);
}

void fieldsync_free(void *p) { fsp_free(p); }

/* ---- ids and hex ------------------------------------------------------- */

void fsc_hex(const uint8_t *b, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < n; i++) {
    out[2 * i] = digits[b[i] >> 4];
    out[2 * i + 1] = digits[b[i] & 15];
  }
  out[2 * n] = '\0';
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

bool fsc_unhex(const char *s, uint8_t *b, size_t n) {
  size_t i;

  if (s == NULL || strlen(s) != 2 * n)
    return false;
  for (i = 0; i < n; i++) {
    int hi = hexval(s[2 * i]);
    int lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return false;
    b[i] = (uint8_t)(hi << 4 | lo);
  }
  return true;
}

int fsc_parse_id(fieldsync_db *db, const char *text, uint8_t id[16]) {
  if (!fsc_unhex(text, id, 16))
    return fsc_err(db, FIELDSYNC_EINVAL,
                   "\"%.40s\" is not a record id (32 hex digits)",
                   text != NULL ? text : "(null)");
  return 0;
}

int fsc_new_id(fieldsync_db *db, uint8_t id[16]) {
  uint64_t ms = (uint64_t)fsc_os_now_ms();
  int i;

  if (fsc_os_random(id + 6, 10) != 0)
    return fsc_err(db, FIELDSYNC_EIO, "no secure random source");
  for (i = 0; i < 6; i++)
    id[i] = (uint8_t)(ms >> (40 - 8 * i));
  id[6] = (uint8_t)(0x70 | (id[6] & 0x0f)); /* version 7 */
  id[8] = (uint8_t)(0x80 | (id[8] & 0x3f)); /* RFC 4122 variant */
  return 0;
}

/* ---- transactions ------------------------------------------------------ */

static int exec(fieldsync_db *db, const char *sql, const char *what) {
  int rc = sqlite3_exec(db->sql, sql, NULL, NULL, NULL);

  return rc == SQLITE_OK ? 0 : fsc_sqlerr(db, rc, what);
}

/* Runs a cached statement (savepoints inside batches are hot). */
static int exec_cached(fieldsync_db *db, enum fsc_stmt_id id,
                       const char *what) {
  sqlite3_stmt *st;
  int rc = fsc_stmt(db, id, &st);

  if (rc != 0)
    return rc;
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : fsc_sqlerr(db, rc, what);
}

/* Replaces the SQLite connection after an I/O error (disk full, EIO, a
 * failed fsync): a later fsync on the same descriptor may report success
 * for data the kernel has dropped (PostgreSQL's "fsyncgate"), so nothing
 * is committed through it again. The new connection opens first, so on
 * failure the old one stays (for reads) and the next write tries again.
 * The old one closes without a checkpoint: the next connection to find
 * the WAL alone recovers it from what was really written. */
static int reconnect(fieldsync_db *db) {
  sqlite3 *sql = NULL;
  size_t i;
  int rc = sqlite3_open_v2(db->path, &sql,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);

  if (rc == SQLITE_OK) {
    sqlite3_extended_result_codes(sql, 1);
    sqlite3_busy_timeout(sql, 5000);
    rc = sqlite3_exec(sql,
                      "PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;"
                      " PRAGMA cache_size = -16384",
                      NULL, NULL, NULL);
  }
  if (rc != SQLITE_OK) {
    fsc_err(db, FIELDSYNC_EIO,
            "reopening the database after an I/O error: %s",
            sql != NULL ? sqlite3_errmsg(sql) : sqlite3_errstr(rc));
    sqlite3_close(sql);
    return FIELDSYNC_EIO;
  }
  for (i = 0; i < FSC_ST_COUNT; i++) {
    sqlite3_finalize(db->st[i]);
    db->st[i] = NULL;
  }
  sqlite3_db_config(db->sql, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)NULL);
  sqlite3_close_v2(db->sql);
  db->sql = sql;
  db->io_failed = false;
  return 0;
}

/* Prepares what undoes a transaction (and, for a batch operation, its
 * savepoint) before it begins, so that undoing needs no memory: after an
 * allocation failure a ROLLBACK still to be prepared could fail as well
 * and leave the transaction open, to be committed by the next operation
 * or to refuse it. */
static int ready_undo(fieldsync_db *db, bool op) {
  sqlite3_stmt *st;
  int rc = fsc_stmt(db, FSC_ST_ROLLBACK, &st);

  if (rc == 0 && op)
    rc = fsc_stmt(db, FSC_ST_ROLLBACK_TO, &st);
  if (rc == 0 && op)
    rc = fsc_stmt(db, FSC_ST_RELEASE, &st);
  return rc;
}

/* Runs an undo statement ready_undo prepared; false when it failed. */
static bool run_undo(fieldsync_db *db, enum fsc_stmt_id id) {
  sqlite3_stmt *st = db->st[id];
  int rc;

  if (st == NULL)
    return false;
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  return rc == SQLITE_DONE;
}

int fsc_begin(fieldsync_db *db) {
  int rc;

  if (db->batch) {
    /* An I/O error rolled the batch's transaction back: nothing more may
     * be written as if it were still open (it would commit on its own). */
    if (sqlite3_get_autocommit(db->sql))
      return fsc_err(db, FIELDSYNC_EIO,
                     "the batch was rolled back by an earlier error; end it "
                     "with fieldsync_batch_rollback()");
    rc = ready_undo(db, true);
    return rc != 0 ? rc : exec_cached(db, FSC_ST_SAVEPOINT, "begin operation");
  }
  rc = db->io_failed ? reconnect(db) : 0;
  if (rc == 0)
    rc = ready_undo(db, false);
  return rc != 0 ? rc : exec(db, "BEGIN IMMEDIATE", "begin transaction");
}

int fsc_commit(fieldsync_db *db) {
  int rc;

  if (db->batch)
    return exec_cached(db, FSC_ST_RELEASE, "finish operation");
  rc = exec(db, "COMMIT", "commit");
  if (rc != 0)
    fsc_rollback(db);
  return rc;
}

void fsc_rollback(fieldsync_db *db) {
  if (sqlite3_get_autocommit(db->sql))
    return;
  if (db->batch) {
    /* Undoing the operation alone can fail (a savepoint's rollback may
     * allocate): then the whole batch is undone, as a failed operation must
     * never be committed with it. */
    if (!run_undo(db, FSC_ST_ROLLBACK_TO) || !run_undo(db, FSC_ST_RELEASE))
      (void)run_undo(db, FSC_ST_ROLLBACK);
    /* An I/O error may have ended the whole transaction: the batch stays
     * open (failing every write) until the caller ends it. */
    if (sqlite3_get_autocommit(db->sql))
      db->batch_pending = 0;
    return;
  }
  if (!run_undo(db, FSC_ST_ROLLBACK))
    sqlite3_exec(db->sql, "ROLLBACK", NULL, NULL, NULL);
}

int fieldsync_batch_begin(fieldsync_db *db) {
  int rc;

  if (db == NULL)
    return FIELDSYNC_EINVAL;
  if (db->batch)
    return fsc_err(db, FIELDSYNC_EINVAL, "a batch is already open");
  rc = db->io_failed ? reconnect(db) : 0;
  if (rc == 0)
    rc = ready_undo(db, false);
  if (rc == 0)
    rc = exec(db, "BEGIN IMMEDIATE", "begin batch");
  if (rc == 0)
    db->batch = true;
  return rc;
}

int fieldsync_batch_commit(fieldsync_db *db) {
  int rc;

  if (db == NULL)
    return FIELDSYNC_EINVAL;
  if (!db->batch)
    return fsc_err(db, FIELDSYNC_EINVAL, "no batch is open");
  if (sqlite3_get_autocommit(db->sql)) {
    db->batch = false;
    db->batch_pending = 0;
    return fsc_err(db, FIELDSYNC_EIO,
                   "the batch was rolled back by an earlier error; nothing "
                   "of it was kept");
  }
  rc = fsc_store_flush_pending(db);
  db->batch = false;
  if (rc == 0)
    rc = exec(db, "COMMIT", "commit batch");
  if (rc != 0)
    fsc_rollback(db);
  return rc;
}

int fieldsync_batch_rollback(fieldsync_db *db) {
  if (db == NULL)
    return FIELDSYNC_EINVAL;
  if (!db->batch)
    return fsc_err(db, FIELDSYNC_EINVAL, "no batch is open");
  db->batch = false;
  db->batch_pending = 0;
  fsc_rollback(db);
  return 0;
}

/* ---- open -------------------------------------------------------------- */

int fsc_query_int(fieldsync_db *db, const char *sql, int64_t *out) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db->sql, sql, -1, &st, NULL);

  if (rc == SQLITE_OK) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *out = sqlite3_column_int64(st, 0);
      rc = SQLITE_OK;
    }
  }
  sqlite3_finalize(st);
  return rc == SQLITE_OK ? 0 : fsc_sqlerr(db, rc, "reading the database");
}

static int meta_put(fieldsync_db *db, const char *key, const void *blob,
                    int len, const char *text) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(
      db->sql, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", -1, &st,
      NULL);

  if (rc == SQLITE_OK) {
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (blob != NULL)
      sqlite3_bind_blob(st, 2, blob, len, SQLITE_STATIC);
    else
      sqlite3_bind_text(st, 2, text, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      rc = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return rc == SQLITE_OK ? 0 : fsc_sqlerr(db, rc, "writing meta");
}

/* Loads the replica's label (the author of its local versions). */
static int load_name(fieldsync_db *db) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db->sql,
                              "SELECT value FROM meta WHERE key = 'name'", -1,
                              &st, NULL);

  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "reading the replica name");
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
    snprintf(db->name, sizeof(db->name), "%s",
             (const char *)sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  return 0;
}

static int load_replica(fieldsync_db *db) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(
      db->sql, "SELECT value FROM meta WHERE key = 'replica_id'", -1, &st,
      NULL);
  int ret = 0;

  /* A missing table is SQLITE_ERROR; anything else (out of memory, I/O)
   * says nothing about what the file is. */
  if (rc != SQLITE_OK)
    return (rc & 0xff) == SQLITE_ERROR
               ? fsc_err(db, FIELDSYNC_ENOTDB,
                         "not a fieldsync database (no meta table)")
               : fsc_sqlerr(db, rc, "reading the replica id");
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == FSP_ID_LEN &&
      sqlite3_column_type(st, 0) == SQLITE_BLOB)
    memcpy(db->replica, sqlite3_column_blob(st, 0), FSP_ID_LEN);
  else if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    ret = fsc_err(db, FIELDSYNC_ECORRUPT,
                  "database has no valid replica id");
  else
    ret = fsc_sqlerr(db, rc, "reading the replica id");
  sqlite3_finalize(st);
  return ret;
}

/* Brings the schema from version `from` to FSC_SCHEMA_VERSION in one
 * transaction. A fresh database (from 0) also gets its replica id. */
static int migrate(fieldsync_db *db, int64_t from, const char *name) {
  char sql[64];
  int rc;
  int64_t v;

  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  for (v = from; v < (int64_t)NMIGRATIONS; v++) {
    rc = exec(db, migrations[v], "migrating the schema");
    if (rc != 0)
      goto fail;
  }
  if (from == 0) {
    uint8_t replica[FSP_ID_LEN];
    char created[32];

    if (fsc_os_random(replica, sizeof(replica)) != 0) {
      rc = fsc_err(db, FIELDSYNC_EIO, "no secure random source");
      goto fail;
    }
    snprintf(created, sizeof(created), "%lld", (long long)fsc_os_now_ms());
    rc = meta_put(db, "replica_id", replica, FSP_ID_LEN, NULL);
    if (rc == 0)
      rc = meta_put(db, "name", NULL, 0, name != NULL ? name : "");
    if (rc == 0)
      rc = meta_put(db, "created_ms", NULL, 0, created);
    if (rc == 0)
      rc = meta_put(db, "next_pending", NULL, 0, "1");
    if (rc == 0)
      rc = meta_put(db, "pull_cursor", NULL, 0, "0");
    if (rc != 0)
      goto fail;
  }
  snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", FSC_SCHEMA_VERSION);
  rc = exec(db, sql, "setting the schema version");
  if (rc != 0)
    goto fail;
  return fsc_commit(db);
fail:
  fsc_rollback(db);
  return rc;
}

/* Recognises the file and brings it to the current schema. Nothing is
 * written to a file that is not (or not yet) a fieldsync database, except
 * creating the schema in an empty one when create is set. */
static int setup(fieldsync_db *db, bool create, const char *name) {
  int64_t version = 0;
  int64_t tables = 0;
  int rc;

  rc = fsc_query_int(db, "PRAGMA user_version", &version);
  if (rc == 0)
    rc = fsc_query_int(db, "SELECT count(*) FROM sqlite_master", &tables);
  if (rc != 0) {
    if (rc == FIELDSYNC_EINTERNAL || rc == FIELDSYNC_ENOTDB)
      return fsc_err(db, FIELDSYNC_ENOTDB, "not a fieldsync database (%s)",
                     sqlite3_errmsg(db->sql));
    return rc;
  }
  if (version > FSC_SCHEMA_VERSION)
    return fsc_err(db, FIELDSYNC_ENEWER,
                   "database schema version %lld is newer than this "
                   "fieldsync (%s) supports (%d); upgrade fieldsync",
                   (long long)version, fieldsync_version_string(),
                   FSC_SCHEMA_VERSION);
  /* Only a damaged (or hand-edited) file has a negative version, and
   * migrate() would index its table with it. */
  if (version < 0)
    return fsc_err(db, FIELDSYNC_ECORRUPT,
                   "database schema version %lld is not valid",
                   (long long)version);
  if (version == 0 && tables > 0)
    return fsc_err(db, FIELDSYNC_ENOTDB,
                   "not a fieldsync database (an SQLite file with other "
                   "tables)");
  if (version == 0 && !create)
    return fsc_err(db, FIELDSYNC_ENOTDB,
                   "empty file, not a fieldsync database");
  rc = exec(db, "PRAGMA journal_mode = WAL", "enabling WAL");
  if (rc == 0)
    rc = exec(db, "PRAGMA synchronous = FULL", "setting durability");
  /* A batch's per-write savepoints keep their undo data in memory, not in
   * a temp file; a 16 MiB page cache keeps a visit's records' pages warm. */
  if (rc == 0)
    rc = exec(db, "PRAGMA temp_store = MEMORY", "setting temp store");
  if (rc == 0)
    rc = exec(db, "PRAGMA cache_size = -16384", "setting the cache");
  if (rc != 0)
    return rc;
  if (version < FSC_SCHEMA_VERSION) {
    rc = migrate(db, version, name);
    if (rc != 0)
      return rc;
  }
  rc = load_replica(db);
  return rc == 0 ? load_name(db) : rc;
}

int fieldsync_open(const char *path, int flags, const char *name,
                   fieldsync_db **out) {
  fieldsync_db *db;
  struct stat sb;
  bool create = (flags & FIELDSYNC_OPEN_CREATE) != 0;
  int oflags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
  int rc;

  if (out == NULL)
    return FIELDSYNC_EINVAL;
  *out = NULL;
  db = fsp_calloc(1, sizeof(*db));
  if (db == NULL)
    return FIELDSYNC_ENOMEM;
  *out = db;
  fsp_limits_default(&db->lim);
  if (path == NULL || path[0] == '\0' || (flags & ~FIELDSYNC_OPEN_CREATE))
    return fsc_err(db, FIELDSYNC_EINVAL, "bad arguments to fieldsync_open");
  db->path = fsp_strdup(path);
  if (db->path == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  if (stat(path, &sb) == 0) {
    if (S_ISDIR(sb.st_mode))
      return fsc_err(db, FIELDSYNC_ECANTOPEN, "%s is a directory", path);
  } else if (errno == ENOENT && !create) {
    return fsc_err(db, FIELDSYNC_ECANTOPEN, "no database at %s", path);
  }
  if (create)
    oflags |= SQLITE_OPEN_CREATE;
  rc = sqlite3_open_v2(path, &db->sql, oflags, NULL);
  if (rc == SQLITE_OK)
    sqlite3_busy_timeout(db->sql, 5000); /* before any statement runs */
  if (rc == SQLITE_OK && create) {
    /* SQLite opens lazily; touch the file now so an unwritable path fails
     * here, with the OS's reason. */
    rc = sqlite3_exec(db->sql, "PRAGMA user_version", NULL, NULL, NULL);
  }
  if (rc != SQLITE_OK) {
    int os = db->sql != NULL ? sqlite3_system_errno(db->sql) : 0;
    if ((rc & 0xff) == SQLITE_NOTADB)
      return fsc_err(db, FIELDSYNC_ENOTDB, "not a fieldsync database (%s)",
                     sqlite3_errmsg(db->sql));
    if (os != 0)
      return fsc_err(db, FIELDSYNC_ECANTOPEN, "cannot open %s: %s", path,
                     strerror(os));
    rc = fsc_sqlerr(db, rc, path);
    return rc == FIELDSYNC_EINTERNAL ? fsc_err(db, FIELDSYNC_ECANTOPEN,
                                               "cannot open %s", path)
                                     : rc;
  }
  sqlite3_extended_result_codes(db->sql, 1);
  sqlite3_busy_timeout(db->sql, 5000);
  rc = setup(db, create, name);
  if (rc == FIELDSYNC_ECANTOPEN) {
    char why[sizeof(db->errmsg)];
    snprintf(why, sizeof(why), "%s", db->errmsg); /* fsc_err writes errmsg */
    fsc_err(db, rc, "cannot open %s: %s", path, why);
  }
  if (rc == 0)
    db->errmsg[0] = '\0';
  return rc;
}

int fieldsync_close(fieldsync_db *db) {
  int rc = 0;
  size_t i;

  if (db == NULL)
    return 0;
  for (i = 0; i < FSC_ST_COUNT; i++)
    sqlite3_finalize(db->st[i]);
  /* After an I/O error the connection syncs nothing more (see reconnect):
   * the next open recovers the WAL instead of this close checkpointing. */
  if (db->sql != NULL && db->io_failed)
    sqlite3_db_config(db->sql, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1,
                      (int *)NULL);
  if (db->sql != NULL && sqlite3_close(db->sql) != SQLITE_OK)
    rc = FIELDSYNC_EIO;
  fsp_free(db->path);
  fsp_free(db);
  return rc;
}

void fieldsync_replica_id(fieldsync_db *db, char hex[33]) {
  fsc_hex(db->replica, FSP_ID_LEN, hex);
}
