/* SPDX-License-Identifier: MIT */
/* The SQLite implementation of srv_store.h: users, devices and their token
 * hashes, visit assignments, and every version ever pushed (the history),
 * with the current versions of each record marked and numbered for the
 * change feed and indexed by scope for scoped feeds. Pushes are authorised
 * with srv_policy.h inside their own transaction. One sqlite3 handle per
 * srv_store_conn, opened NOMUTEX: a connection is used by one thread at a
 * time and never shared. */
#define _DEFAULT_SOURCE /* getentropy() */
#include "srv_store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "fsp_alloc.h"
#include "fsp_merge.h"
#include "fsp_payload.h"
#include "fsp_vv.h"
#include "srv_policy.h"

/* PRAGMA application_id of a server database ("FSSV"), so that a client
 * database (which has the same user_version) is never mistaken for one. */
#define SRV_APP_ID 0x46535356
/* Version 2 (issue 5): device revocation and replica binding, record
 * owners, visit assignments and the per-scope feed index. */
#define SRV_SCHEMA_VERSION 2
#define SRV_TOKEN_PREFIX "fst_"
#define SRV_TOKEN_RANDOM 24 /* bytes behind the prefix, as hex */
#define SRV_BUSY_MS 5000
/* How long a handshake waits to record last_seen_ms before giving up on
 * it (the handshake itself still succeeds). */
#define SRV_SEEN_BUSY_MS 100
/* Stored vectors were validated when they were written; reading them back
 * is not limited by the (possibly lowered) session limits. */
#define SRV_STORED_MAX_VV ((size_t)1 << 20)
/* Rows a backfill page may pass over unread (versions the device may not
 * read) beyond its max_records, so that one page's work stays bounded. */
#define SRV_BACKFILL_SKIP 1024

/* The index of the scoped feed: covering (current included, as SQLite
 * wants every column the query names), so that one scope's part of a page
 * is read from the index alone, whatever the store's size. */
#define SCOPE_INDEX_SQL                                                        \
  "CREATE INDEX versions_scope ON versions(scope_kind, scope_id, seq, "        \
  "collection, owner, current) WHERE current = 1"
/* Visit teams: until_ms NULL means no end. */
#define ASSIGNMENTS_SQL                                                        \
  "CREATE TABLE assignments("                                                  \
  "  visit_id BLOB NOT NULL,"                                                  \
  "  user_id INTEGER NOT NULL REFERENCES users(id),"                           \
  "  until_ms INTEGER,"                                                        \
  "  created_ms INTEGER NOT NULL,"                                             \
  "  PRIMARY KEY(user_id, visit_id)) WITHOUT ROWID"

static const char *const schema_sql =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE users("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT UNIQUE NOT NULL,"
    "  role INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  deleted INTEGER NOT NULL DEFAULT 0);"
    /* replica_id: bound by the first successful handshake (NULL before);
     * revoked_epoch: the auth epoch of the revocation. */
    "CREATE TABLE devices("
    "  id INTEGER PRIMARY KEY,"
    "  user_id INTEGER NOT NULL REFERENCES users(id),"
    "  token_hash BLOB UNIQUE NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  revoked INTEGER NOT NULL DEFAULT 0,"
    "  revoked_ms INTEGER,"
    "  revoked_epoch INTEGER,"
    "  replica_id BLOB,"
    "  last_seen_ms INTEGER);"
    "CREATE INDEX devices_user ON devices(user_id);"
    "CREATE INDEX devices_revoked ON devices(revoked_epoch);"
    /* reuse: a replica id was reused on this record (DESIGN.md 2).
     * owner: the owner named by the latest applied live version;
     * service_id: a visit's service (kept across tombstones). */
    "CREATE TABLE records("
    "  id BLOB PRIMARY KEY,"
    "  collection INTEGER NOT NULL,"
    "  scope_kind INTEGER NOT NULL,"
    "  scope_id BLOB NOT NULL,"
    "  reuse INTEGER NOT NULL DEFAULT 0,"
    "  owner TEXT,"
    "  service_id BLOB) WITHOUT ROWID;"
    /* seq is the rowid: never deleted, so it only grows. owner: the
     * payload's owner; for a tombstone, its record's owner. */
    "CREATE TABLE versions("
    "  seq INTEGER PRIMARY KEY,"
    "  record BLOB NOT NULL,"
    "  hash BLOB NOT NULL,"
    "  vv BLOB NOT NULL,"
    "  deleted INTEGER NOT NULL,"
    "  payload BLOB,"
    "  author TEXT,"
    "  device_time_ms INTEGER,"
    "  collection INTEGER NOT NULL,"
    "  scope_kind INTEGER NOT NULL,"
    "  scope_id BLOB NOT NULL,"
    "  user_id INTEGER,"
    "  device_id INTEGER,"
    "  received_ms INTEGER NOT NULL,"
    "  current INTEGER NOT NULL,"
    "  owner TEXT,"
    "  UNIQUE(record, hash, vv));"
    "CREATE INDEX versions_current ON versions(record) WHERE current = 1;"
    "CREATE INDEX versions_feed ON versions(seq) WHERE current = 1;"
    /* The scoped feed's index and visit teams (as the upgrade makes them). */
    SCOPE_INDEX_SQL ";" ASSIGNMENTS_SQL ";"
    /* The auth epoch: stepped by every revocation. */
    "INSERT INTO meta(key, value) VALUES('auth_epoch', 0);";

/* Cached statements, prepared on first use and kept for the connection's
 * life (SQLITE_PREPARE_PERSISTENT). */
enum stmt_id {
  ST_BEGIN,
  ST_BEGIN_READ,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_SAVEPOINT,
  ST_RELEASE,
  ST_ROLLBACK_TO,
  ST_LOAD_RECORD,
  ST_FIND_VERSION,
  ST_LOAD_CURRENT,
  ST_INSERT_VERSION,
  ST_SUPERSEDE,
  ST_UPSERT_RECORD,
  ST_PULL,
  ST_SCOPE_FEED,
  ST_SCOPE_BACKFILL,
  ST_VERSION_BY_SEQ,
  ST_MAX_SEQ,
  ST_SCOPES,
  ST_AUTH,
  ST_BIND,
  ST_DEVICE_REPLICA,
  ST_SEEN,
  ST_EPOCH,
  ST_EPOCH_SET,
  ST_REVOKED_SINCE,
  ST_USER_ADD,
  ST_USER_FIND,
  ST_USER_ANY,
  ST_USER_DELETE,
  ST_DEVICE_ADD,
  ST_DEVICE_GET,
  ST_DEVICE_REVOKE,
  ST_USER_REVOKE,
  ST_ASSIGN,
  ST_UNASSIGN,
  ST_COUNT
};

/* The columns build_change reads, in its order. */
#define CHANGE_COLUMNS                                                         \
  "seq, record, collection, scope_kind, scope_id, hash, vv, deleted, "         \
  "payload, author, device_time_ms "

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT srv_sp",
    [ST_RELEASE] = "RELEASE srv_sp",
    [ST_ROLLBACK_TO] = "ROLLBACK TO srv_sp",
    /* Column 3 says whether the stored owner is ?2 (the pushing user). */
    [ST_LOAD_RECORD] = "SELECT collection, scope_kind, scope_id, "
                       "coalesce(owner = ?2, 0), service_id "
                       "FROM records WHERE id = ?1",
    [ST_FIND_VERSION] = "SELECT current FROM versions "
                        "WHERE record = ?1 AND hash = ?2 AND vv = ?3",
    [ST_LOAD_CURRENT] =
        "SELECT seq, hash, vv FROM versions WHERE record = ?1 AND current = 1",
    /* A tombstone (?4) takes its record's owner. */
    [ST_INSERT_VERSION] =
        "INSERT INTO versions(record, hash, vv, deleted, payload, author, "
        "device_time_ms, collection, scope_kind, scope_id, user_id, "
        "device_id, received_ms, current, owner) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, "
        "CASE WHEN ?4 THEN (SELECT owner FROM records WHERE id = ?1) "
        "ELSE ?15 END)",
    [ST_SUPERSEDE] = "UPDATE versions SET current = 0 WHERE seq = ?1",
    /* ?8: the version is a tombstone, which keeps owner and service. */
    [ST_UPSERT_RECORD] =
        "INSERT INTO records(id, collection, scope_kind, scope_id, reuse, "
        "owner, service_id) "
        "VALUES(?1, ?2, ?3, ?4, ?5, CASE WHEN ?8 THEN NULL ELSE ?6 END, "
        "CASE WHEN ?8 THEN NULL ELSE ?7 END) "
        "ON CONFLICT(id) DO UPDATE SET scope_kind = ?3, scope_id = ?4, "
        "reuse = max(reuse, ?5), "
        "owner = CASE WHEN ?8 THEN owner ELSE ?6 END, "
        "service_id = CASE WHEN ?8 THEN service_id ELSE ?7 END",
    /* LIMIT ?2 is max_records + 1: the extra row tells `more`. */
    [ST_PULL] =
        "SELECT " CHANGE_COLUMNS "FROM versions WHERE current = 1 AND seq > ?1 "
        "ORDER BY seq LIMIT ?2",
    /* One scope's part of a scoped feed, from the covering index. */
    [ST_SCOPE_FEED] = "SELECT seq, collection, owner FROM versions "
                      "WHERE scope_kind = ?1 AND scope_id = ?2 AND "
                      "current = 1 AND seq > ?3 ORDER BY seq LIMIT ?4",
    [ST_SCOPE_BACKFILL] = "SELECT seq, collection, owner FROM versions "
                          "WHERE scope_kind = ?1 AND scope_id = ?2 AND "
                          "current = 1 AND seq > ?3 AND seq <= ?4 "
                          "ORDER BY seq",
    [ST_VERSION_BY_SEQ] =
        "SELECT " CHANGE_COLUMNS "FROM versions WHERE seq = ?1",
    [ST_MAX_SEQ] = "SELECT max(seq) FROM versions",
    /* The user's visits at ?2 and, for visits the server holds, their
     * services. */
    [ST_SCOPES] = "SELECT a.visit_id, r.service_id FROM assignments a "
                  "LEFT JOIN records r ON r.id = a.visit_id "
                  "WHERE a.user_id = ?1 AND "
                  "(a.until_ms IS NULL OR a.until_ms > ?2)",
    [ST_AUTH] = "SELECT d.id, d.user_id, d.token_hash, d.revoked, u.name, "
                "u.role, u.deleted, d.replica_id "
                "FROM devices d JOIN users u ON u.id = d.user_id "
                "WHERE d.token_hash = ?1",
    [ST_BIND] = "UPDATE devices SET replica_id = ?2, last_seen_ms = ?3 "
                "WHERE id = ?1 AND replica_id IS NULL",
    [ST_DEVICE_REPLICA] = "SELECT replica_id FROM devices WHERE id = ?1",
    [ST_SEEN] = "UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1",
    [ST_EPOCH] = "SELECT value FROM meta WHERE key = 'auth_epoch'",
    [ST_EPOCH_SET] = "INSERT INTO meta(key, value) VALUES('auth_epoch', ?1) "
                     "ON CONFLICT(key) DO UPDATE SET value = ?1",
    [ST_REVOKED_SINCE] = "SELECT id FROM devices WHERE revoked_epoch > ?1",
    [ST_USER_ADD] =
        "INSERT INTO users(name, role, created_ms) VALUES(?1, ?2, ?3)",
    [ST_USER_FIND] =
        "SELECT id, role FROM users WHERE name = ?1 AND deleted = 0",
    [ST_USER_ANY] = "SELECT id, role, deleted FROM users WHERE name = ?1",
    [ST_USER_DELETE] = "UPDATE users SET deleted = 1 WHERE id = ?1",
    [ST_DEVICE_ADD] = "INSERT INTO devices(user_id, token_hash, created_ms) "
                      "VALUES(?1, ?2, ?3)",
    [ST_DEVICE_GET] = "SELECT revoked FROM devices WHERE id = ?1",
    [ST_DEVICE_REVOKE] = "UPDATE devices SET revoked = 1, revoked_ms = ?2, "
                         "revoked_epoch = ?3 WHERE id = ?1",
    [ST_USER_REVOKE] = "UPDATE devices SET revoked = 1, revoked_ms = ?2, "
                       "revoked_epoch = ?3 WHERE user_id = ?1 AND "
                       "revoked = 0",
    /* until_ms NULL: no end. Assigning again replaces the end only. */
    [ST_ASSIGN] = "INSERT INTO assignments(visit_id, user_id, until_ms, "
                  "created_ms) VALUES(?1, ?2, ?3, ?4) "
                  "ON CONFLICT(user_id, visit_id) DO UPDATE SET until_ms = ?3",
    [ST_UNASSIGN] =
        "DELETE FROM assignments WHERE user_id = ?1 AND visit_id = ?2",
};

/* The statements that must be answered from an index (srv_store_check),
 * and the index each one needs, if a particular one. */
static const struct {
  enum stmt_id id;
  const char *index;
} indexed_stmts[] = {
    {ST_LOAD_RECORD, NULL},
    {ST_FIND_VERSION, NULL},
    {ST_LOAD_CURRENT, "versions_current"},
    {ST_INSERT_VERSION, NULL},
    {ST_PULL, "versions_feed"},
    {ST_SCOPE_FEED, "COVERING INDEX versions_scope"},
    {ST_SCOPE_BACKFILL, "COVERING INDEX versions_scope"},
    {ST_VERSION_BY_SEQ, NULL},
    {ST_MAX_SEQ, NULL},
    {ST_SCOPES, NULL},
    {ST_AUTH, NULL},
    {ST_BIND, NULL},
    {ST_SEEN, NULL},
    {ST_EPOCH, NULL},
    {ST_REVOKED_SINCE, "devices_revoked"},
    {ST_USER_FIND, NULL},
    {ST_USER_REVOKE, "devices_user"},
};

struct srv_store {
  char *path;
  uint8_t server_id[FSP_ID_LEN];
};

/* One current version of the record being merged. */
struct cur_version {
  int64_t seq;
  uint8_t hash[FSP_HASH_LEN];
  struct fsp_vv vv;
};

/* A change's place in the batch, for applying in key order. */
struct order_entry {
  const uint8_t *id; /* NULL for a change without a valid key */
  size_t i;
};

struct srv_store_conn {
  struct srv_store *store;
  sqlite3 *db;
  sqlite3_stmt *st[ST_COUNT];
  bool in_txn; /* between srv_store_begin and commit/rollback */
  char errmsg[256];
  /* Scratch reused by every push, grown on demand. */
  struct cur_version *cur;
  struct fsp_vref *refs;
  bool *keep;
  size_t cur_cap;
  struct fsp_vv in_vv;
  uint8_t *vvbuf;
  size_t vvbuf_cap;
  struct order_entry *order;
  size_t order_cap;
};

/* ---- errors, time, randomness ------------------------------------------ */

#if defined(__GNUC__)
#define SRV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define SRV_PRINTF(f, a)
#endif

static int set_err(struct srv_store_conn *c, int code, const char *fmt, ...)
    SRV_PRINTF(3, 4);
static int refuse(struct srv_outcome *o, int code, const char *fmt, ...)
    SRV_PRINTF(3, 4);

static int set_err(struct srv_store_conn *c, int code, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
  va_end(ap);
  return code;
}

/* Maps an SQLite result code to a store code. */
static int map_sqlite(int rc) {
  switch (rc & 0xff) {
  case SQLITE_NOMEM:
    return SRV_STORE_ENOMEM;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return SRV_STORE_EBUSY;
  case SQLITE_CORRUPT:
  case SQLITE_NOTADB:
    return SRV_STORE_ECORRUPT;
  default:
    return SRV_STORE_EIO;
  }
}

/* Records an SQLite failure on c ("what: message") and returns its code. */
static int sql_err(struct srv_store_conn *c, int rc, const char *what) {
  return set_err(c, map_sqlite(rc), "%s: %s (%s)", what, sqlite3_errmsg(c->db),
                 sqlite3_errstr(rc));
}

static int64_t now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Fills buf with n bytes from the OS's secure source: getentropy() (at most
 * 256 bytes a call), else /dev/urandom. Returns 0 or -1. */
static int os_random(uint8_t *buf, size_t n) {
  int fd;

  while (n > 0) {
    size_t k = n > 256 ? 256 : n;
    if (getentropy(buf, k) != 0)
      break;
    buf += k;
    n -= k;
  }
  if (n == 0)
    return 0;
  fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -1;
  while (n > 0) {
    ssize_t r = read(fd, buf, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      close(fd);
      return -1;
    }
    buf += r;
    n -= (size_t)r;
  }
  close(fd);
  return 0;
}

static void hex_encode(const uint8_t *p, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  size_t i;

  for (i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
}

/* SHA-256 of a token. Returns 0, or -1 when OpenSSL fails. */
static int token_hash(const char *token, size_t len,
                      uint8_t out[FSP_HASH_LEN]) {
  unsigned int n = 0;

  if (EVP_Digest(token, len, out, &n, EVP_sha256(), NULL) != 1 ||
      n != FSP_HASH_LEN)
    return -1;
  return 0;
}

/* ---- statements -------------------------------------------------------- */

/* The cached statement id, reset and with its bindings cleared. */
static int get_stmt(struct srv_store_conn *c, enum stmt_id id,
                    sqlite3_stmt **out) {
  int rc;

  if (c->st[id] == NULL) {
    rc = sqlite3_prepare_v3(c->db, stmt_sql[id], -1, SQLITE_PREPARE_PERSISTENT,
                            &c->st[id], NULL);
    if (rc != SQLITE_OK) {
      *out = NULL;
      return sql_err(c, rc, "preparing a statement");
    }
  } else {
    sqlite3_reset(c->st[id]);
    sqlite3_clear_bindings(c->st[id]);
  }
  *out = c->st[id];
  return 0;
}

/* Steps a statement that returns no rows, then resets it. */
static int step_done(struct srv_store_conn *c, sqlite3_stmt *st,
                     const char *what) {
  int rc = sqlite3_step(st);

  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : sql_err(c, rc, what);
}

/* Runs a cached statement without parameters. */
static int run(struct srv_store_conn *c, enum stmt_id id, const char *what) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, id, &st);

  return rc != 0 ? rc : step_done(c, st, what);
}

/* Undoes and ends the savepoint srv_sp. Errors are ignored: the caller is
 * already failing, and its message is the one worth keeping. */
static void savepoint_abort(struct srv_store_conn *c) {
  char keep[sizeof(c->errmsg)];

  memcpy(keep, c->errmsg, sizeof(keep));
  if (run(c, ST_ROLLBACK_TO, "rolling back a savepoint") == 0)
    run(c, ST_RELEASE, "releasing a savepoint");
  memcpy(c->errmsg, keep, sizeof(keep));
}

/* Runs sql (one or more statements) with sqlite3_exec. */
static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen,
                    const char *what) {
  int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "%s: %s", what, sqlite3_errmsg(db));
    return map_sqlite(rc);
  }
  return 0;
}

/* Reads one integer (the first column of the first row) of sql. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out, char *err,
                     size_t errlen) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

  if (rc == SQLITE_OK) {
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      *out = sqlite3_column_int64(st, 0);
      rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
      *out = 0;
      rc = SQLITE_OK;
    }
  }
  if (rc != SQLITE_OK)
    snprintf(err, errlen, "%s", sqlite3_errmsg(db));
  sqlite3_finalize(st);
  return rc == SQLITE_OK ? 0 : map_sqlite(rc);
}

/* ---- opening ----------------------------------------------------------- */

/* Switches db to WAL (a no-op when it already is) and checks that SQLite
 * agreed: some file systems cannot do WAL. */
static int enable_wal(sqlite3 *db, const char *path, char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  const unsigned char *mode = NULL;
  int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    mode = sqlite3_column_text(st, 0);
  if (rc != SQLITE_ROW) {
    snprintf(err, errlen, "%s: enabling WAL: %s", path, sqlite3_errmsg(db));
    rc = map_sqlite(rc);
  } else if (mode == NULL || strcmp((const char *)mode, "wal") != 0) {
    snprintf(err, errlen, "%s: cannot use WAL (journal mode stays %s)", path,
             mode != NULL ? (const char *)mode : "unknown");
    rc = SRV_STORE_EIO;
  } else {
    rc = 0;
  }
  sqlite3_finalize(st);
  return rc;
}

/* Opens path with SQLite's own connection settings for this store. */
static int open_handle(const char *path, bool create, sqlite3 **out, char *err,
                       size_t errlen) {
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
  int rc;

  if (create)
    flags |= SQLITE_OPEN_CREATE;
  rc = sqlite3_open_v2(path, out, flags, NULL);
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "cannot open %s: %s", path,
             *out != NULL ? sqlite3_errmsg(*out) : sqlite3_errstr(rc));
    sqlite3_close(*out);
    *out = NULL;
    return rc == SQLITE_NOMEM ? SRV_STORE_ENOMEM : SRV_STORE_EIO;
  }
  sqlite3_extended_result_codes(*out, 1);
  sqlite3_busy_timeout(*out, SRV_BUSY_MS);
  return 0;
}

/* Creates the schema and the server id in a new, empty database. Another
 * process may be doing the same: the check is repeated under the write
 * lock, and whoever comes second finds the schema made. */
static int create_schema(sqlite3 *db, const char *path, char *err,
                         size_t errlen) {
  uint8_t id[FSP_ID_LEN];
  sqlite3_stmt *st = NULL;
  int64_t tables = 0;
  char sql[128];
  int rc;

  rc = enable_wal(db, path, err, errlen);
  if (rc != 0)
    return rc;
  rc = exec_sql(db, "BEGIN IMMEDIATE", err, errlen, "creating the schema");
  if (rc != 0)
    return rc;
  rc =
      query_int(db, "SELECT count(*) FROM sqlite_master", &tables, err, errlen);
  if (rc != 0 || tables > 0)
    goto done; /* made by another process meanwhile: checked by caller */
  rc = exec_sql(db, schema_sql, err, errlen, "creating the schema");
  if (rc != 0)
    goto done;
  if (os_random(id, sizeof(id)) != 0) {
    snprintf(err, errlen, "%s: no secure random source for the server id",
             path);
    rc = SRV_STORE_EIO;
    goto done;
  }
  rc = sqlite3_prepare_v2(db,
                          "INSERT INTO meta(key, value) VALUES('server_id', "
                          "?1), ('created_ms', ?2)",
                          -1, &st, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_blob(st, 1, id, sizeof(id), SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now_ms());
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE)
      rc = SQLITE_OK;
  }
  if (rc != SQLITE_OK) {
    snprintf(err, errlen, "writing the server id: %s", sqlite3_errmsg(db));
    rc = map_sqlite(rc);
    goto done;
  }
  snprintf(sql, sizeof(sql),
           "PRAGMA application_id = %d; PRAGMA user_version = %d", SRV_APP_ID,
           SRV_SCHEMA_VERSION);
  rc = exec_sql(db, sql, err, errlen, "setting the schema version");
done:
  sqlite3_finalize(st);
  if (rc == 0)
    rc = exec_sql(db, "COMMIT", err, errlen, "creating the schema");
  if (rc != 0)
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

/* The SQL functions srv_payload_owner(collection, payload) and
 * srv_payload_service(collection, payload) (user data non-NULL for the
 * owner): what fsp_payload_owner / fsp_payload_service say of a stored
 * payload, or NULL (no such field, unset, or a payload that no longer
 * decodes). The schema upgrade uses them to fill the new columns. */
static void sql_payload_fact(sqlite3_context *ctx, int argc,
                             sqlite3_value **argv) {
  static const uint8_t empty[1];
  bool want_owner = sqlite3_user_data(ctx) != NULL;
  const struct fsp_collection *col;
  ProtobufCMessage *msg = NULL;
  struct fsp_budget budget;
  struct fsp_limits lim;
  struct fsp_error err;
  uint8_t service[FSP_ID_LEN];
  const uint8_t *data;
  int rc;

  (void)argc;
  sqlite3_result_null(ctx);
  col = fsp_payload_by_id(sqlite3_value_int(argv[0]));
  if (col == NULL || sqlite3_value_type(argv[1]) != SQLITE_BLOB ||
      (want_owner ? col->owner_field : col->service_field) == NULL)
    return;
  data = sqlite3_value_blob(argv[1]);
  fsp_limits_default(&lim);
  rc = fsp_payload_decode(col, data != NULL ? data : empty,
                          (size_t)sqlite3_value_bytes(argv[1]), &lim, &budget,
                          &msg, &err);
  if (rc == FSP_ENOMEM) {
    sqlite3_result_error_nomem(ctx);
    return;
  }
  if (rc != 0)
    return;
  if (want_owner) {
    const char *owner = fsp_payload_owner(col, msg);
    if (owner[0] != '\0')
      sqlite3_result_text(ctx, owner, -1, SQLITE_TRANSIENT);
  } else if (fsp_payload_service(col, msg, service)) {
    sqlite3_result_blob(ctx, service, FSP_ID_LEN, SQLITE_TRANSIENT);
  }
  fsp_payload_free(msg, &budget);
}

/* Schema version 1 to 2, in one transaction. The new columns of existing
 * rows are derived from the stored payloads: a record's owner and service
 * from its newest live current version (else its newest live version),
 * a tombstone's owner from its record. Devices revoked under version 1
 * keep no revocation time or epoch (their sessions ended long ago). */
static const char *const migrate_1_2_sql =
    "ALTER TABLE devices ADD COLUMN revoked_ms INTEGER;"
    "ALTER TABLE devices ADD COLUMN revoked_epoch INTEGER;"
    "ALTER TABLE devices ADD COLUMN replica_id BLOB;"
    "ALTER TABLE devices ADD COLUMN last_seen_ms INTEGER;"
    "CREATE INDEX devices_revoked ON devices(revoked_epoch);"
    "ALTER TABLE records ADD COLUMN owner TEXT;"
    "ALTER TABLE records ADD COLUMN service_id BLOB;"
    "ALTER TABLE versions ADD COLUMN owner TEXT;"
    "UPDATE versions SET owner = srv_payload_owner(collection, payload) "
    "  WHERE deleted = 0;"
    "UPDATE records SET "
    "  owner = (SELECT v.owner FROM versions v WHERE v.record = records.id "
    "    AND v.deleted = 0 ORDER BY v.current DESC, v.seq DESC LIMIT 1),"
    "  service_id = (SELECT srv_payload_service(v.collection, v.payload) "
    "    FROM versions v WHERE v.record = records.id AND v.deleted = 0 "
    "    ORDER BY v.current DESC, v.seq DESC LIMIT 1);"
    "UPDATE versions SET owner = (SELECT r.owner FROM records r "
    "  WHERE r.id = versions.record) WHERE deleted = 1;"
    /* Then what version 2 adds outright, as schema_sql makes it. */
    SCOPE_INDEX_SQL ";" ASSIGNMENTS_SQL ";"
    "INSERT INTO meta(key, value) VALUES('auth_epoch', 0);"
    "PRAGMA user_version = 2;";

/* Upgrades a version 1 database to this version under the write lock;
 * another process may have done it meanwhile, which is checked under the
 * lock. *version gets the version found afterwards. */
static int migrate(sqlite3 *db, const char *path, int64_t *version, char *err,
                   size_t errlen) {
  char what[160];
  int rc;

  if (sqlite3_create_function_v2(
          db, "srv_payload_owner", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
          (void *)1, sql_payload_fact, NULL, NULL, NULL) != SQLITE_OK ||
      sqlite3_create_function_v2(
          db, "srv_payload_service", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC,
          NULL, sql_payload_fact, NULL, NULL, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "%s: upgrading the schema: %s", path,
             sqlite3_errmsg(db));
    return SRV_STORE_ENOMEM;
  }
  snprintf(what, sizeof(what),
           "%.100s: upgrading the server database from schema version 1", path);
  rc = exec_sql(db, "BEGIN IMMEDIATE", err, errlen, what);
  if (rc != 0)
    return rc;
  rc = query_int(db, "PRAGMA user_version", version, err, errlen);
  if (rc == 0 && *version == 1) {
    rc = exec_sql(db, migrate_1_2_sql, err, errlen, what);
    if (rc == 0)
      rc = exec_sql(db, "COMMIT", err, errlen, what);
    if (rc == 0)
      *version = 2;
  } else if (rc == 0) {
    rc = exec_sql(db, "COMMIT", err, errlen, what);
  }
  if (rc != 0)
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

/* Says what a foreign database looks like, for the error message. */
static const char *foreign_hint(sqlite3 *db) {
  sqlite3_stmt *st = NULL;
  const char *hint = "an SQLite database with other tables";

  if (sqlite3_prepare_v2(db, "SELECT 1 FROM meta WHERE key = 'replica_id'", -1,
                         &st, NULL) == SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW)
    hint = "it is a fieldsync client database";
  sqlite3_finalize(st);
  return hint;
}

/* Recognises the file, creating the schema in an empty database, and reads
 * the server id. Nothing is written to a file that is not ours. */
static int setup(sqlite3 *db, const char *path, uint8_t id[FSP_ID_LEN],
                 char *err, size_t errlen) {
  sqlite3_stmt *st = NULL;
  int64_t app = 0;
  int64_t version = 0;
  int64_t tables = 0;
  int rc;

  rc = query_int(db, "PRAGMA application_id", &app, err, errlen);
  if (rc == 0)
    rc = query_int(db, "PRAGMA user_version", &version, err, errlen);
  if (rc == 0)
    rc = query_int(db, "SELECT count(*) FROM sqlite_master", &tables, err,
                   errlen);
  if (rc == SRV_STORE_ECORRUPT) {
    snprintf(err, errlen,
             "%s: not a fieldsync server database (not an "
             "SQLite database)",
             path);
    return rc;
  }
  if (rc != 0)
    return rc;
  if (app == 0 && version == 0 && tables == 0) {
    rc = create_schema(db, path, err, errlen);
    if (rc != 0)
      return rc;
    rc = query_int(db, "PRAGMA application_id", &app, err, errlen);
    if (rc == 0)
      rc = query_int(db, "PRAGMA user_version", &version, err, errlen);
    if (rc != 0)
      return rc;
  }
  if (app != SRV_APP_ID) {
    snprintf(err, errlen, "%s: not a fieldsync server database (%s)", path,
             foreign_hint(db));
    return SRV_STORE_ECORRUPT;
  }
  if (version == 1) {
    rc = migrate(db, path, &version, err, errlen);
    if (rc != 0)
      return rc;
  }
  if (version != SRV_SCHEMA_VERSION) {
    snprintf(err, errlen,
             "%s: server database schema version %lld is not the one this "
             "fieldsync supports (%d)",
             path, (long long)version, SRV_SCHEMA_VERSION);
    return SRV_STORE_ECORRUPT;
  }
  rc = enable_wal(db, path, err, errlen);
  if (rc != 0)
    return rc;
  rc = sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'server_id'",
                          -1, &st, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_BLOB &&
      sqlite3_column_bytes(st, 0) == FSP_ID_LEN) {
    memcpy(id, sqlite3_column_blob(st, 0), FSP_ID_LEN);
    rc = 0;
  } else if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
    snprintf(err, errlen, "%s: server database has no valid server id", path);
    rc = SRV_STORE_ECORRUPT;
  } else {
    snprintf(err, errlen, "%s: reading the server id: %s", path,
             sqlite3_errmsg(db));
    rc = map_sqlite(rc);
  }
  sqlite3_finalize(st);
  return rc;
}

int srv_store_open(const char *path, struct srv_store **out, char *err,
                   size_t errlen) {
  struct srv_store *s = NULL;
  sqlite3 *db = NULL;
  struct stat sb;
  bool create = false;
  int rc;

  *out = NULL;
  if (path == NULL || path[0] == '\0') {
    snprintf(err, errlen, "no database path given");
    return SRV_STORE_EINVAL;
  }
  if (stat(path, &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) {
      snprintf(err, errlen, "cannot open %s: it is a directory", path);
      return SRV_STORE_EIO;
    }
  } else if (errno == ENOENT) {
    create = true;
  } else {
    snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return SRV_STORE_EIO;
  }
  s = fsp_calloc(1, sizeof(*s));
  if (s != NULL)
    s->path = fsp_strdup(path);
  if (s == NULL || s->path == NULL) {
    snprintf(err, errlen, "out of memory");
    rc = SRV_STORE_ENOMEM;
    goto fail;
  }
  rc = open_handle(path, create, &db, err, errlen);
  if (rc != 0)
    goto fail;
  rc = setup(db, path, s->server_id, err, errlen);
  if (rc != 0)
    goto fail;
  sqlite3_close_v2(db);
  *out = s;
  return 0;
fail:
  sqlite3_close_v2(db);
  srv_store_close(s);
  return rc;
}

void srv_store_close(struct srv_store *s) {
  if (s == NULL)
    return;
  fsp_free(s->path);
  fsp_free(s);
}

void srv_store_server_id(const struct srv_store *s, uint8_t id[16]) {
  memcpy(id, s->server_id, FSP_ID_LEN);
}

int srv_store_conn_open(struct srv_store *s, struct srv_store_conn **out,
                        char *err, size_t errlen) {
  struct srv_store_conn *c;
  int rc;

  *out = NULL;
  c = fsp_calloc(1, sizeof(*c));
  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return SRV_STORE_ENOMEM;
  }
  c->store = s;
  fsp_vv_init(&c->in_vv);
  rc = open_handle(s->path, false, &c->db, err, errlen);
  if (rc != 0)
    goto fail;
  /* synchronous is per connection; the others tune this connection. */
  rc = exec_sql(c->db,
                "PRAGMA synchronous = FULL; PRAGMA cache_size = -16384; "
                "PRAGMA temp_store = MEMORY",
                err, errlen, "setting up the connection");
  if (rc != 0)
    goto fail;
  *out = c;
  return 0;
fail:
  srv_store_conn_close(c);
  return rc;
}

void srv_store_conn_close(struct srv_store_conn *c) {
  size_t i;

  if (c == NULL)
    return;
  for (i = 0; i < ST_COUNT; i++)
    sqlite3_finalize(c->st[i]);
  /* sqlite3_close_v2 rolls back an open transaction and cannot fail for
   * unfinalized statements: all of ours are finalized above. */
  sqlite3_close_v2(c->db);
  for (i = 0; i < c->cur_cap; i++)
    fsp_vv_close(&c->cur[i].vv);
  fsp_free(c->cur);
  fsp_free(c->refs);
  fsp_free(c->keep);
  fsp_vv_close(&c->in_vv);
  fsp_free(c->vvbuf);
  fsp_free(c->order);
  fsp_free(c);
}

const char *srv_store_errmsg(const struct srv_store_conn *c) {
  return c->errmsg;
}

/* ---- users and devices ------------------------------------------------- */

static bool name_valid(const char *name) {
  size_t i;

  if (name == NULL || name[0] == '\0')
    return false;
  for (i = 0; name[i] != '\0'; i++) {
    char ch = name[i];
    if (i >= SRV_NAME_MAX)
      return false;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
      return false;
  }
  return true;
}

/* Undoes the open transaction or savepoint of write_begin. Errors are
 * ignored: the caller is already failing with a better message. */
static void write_abort(struct srv_store_conn *c, bool outer) {
  char keep[sizeof(c->errmsg)];

  if (!outer) {
    savepoint_abort(c);
    return;
  }
  if (sqlite3_get_autocommit(c->db))
    return;
  memcpy(keep, c->errmsg, sizeof(keep));
  run(c, ST_ROLLBACK, "rolling back");
  memcpy(c->errmsg, keep, sizeof(keep));
}

/* Starts an operator's (or a handshake's) write: BEGIN IMMEDIATE when c
 * has no transaction open, so the write lock is taken (waiting up to the
 * busy timeout) before anything is read and a read-then-write never fails
 * on a snapshot another writer moved; else a savepoint in the caller's
 * transaction. *outer says which, for write_commit / write_abort. */
static int write_begin(struct srv_store_conn *c, bool *outer) {
  *outer = sqlite3_get_autocommit(c->db) != 0;
  return run(c, *outer ? ST_BEGIN : ST_SAVEPOINT, "starting a transaction");
}

static int write_commit(struct srv_store_conn *c, bool outer) {
  int rc = run(c, outer ? ST_COMMIT : ST_RELEASE, "committing");

  if (rc != 0)
    write_abort(c, outer);
  return rc;
}

/* A user by name: live ones only unless any. ENOTFOUND (with a message)
 * when there is none. role and deleted may be NULL. */
static int find_user(struct srv_store_conn *c, const char *name, bool any,
                     int64_t *id, int *role, bool *deleted) {
  sqlite3_stmt *st;
  int rc;

  if (!name_valid(name))
    return set_err(c, SRV_STORE_ENOTFOUND, "no such user");
  rc = get_stmt(c, any ? ST_USER_ANY : ST_USER_FIND, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *id = sqlite3_column_int64(st, 0);
    if (role != NULL)
      *role = sqlite3_column_int(st, 1);
    if (deleted != NULL)
      *deleted = any && sqlite3_column_int(st, 2) != 0;
    rc = 0;
  } else if (rc == SQLITE_DONE) {
    rc = set_err(c, SRV_STORE_ENOTFOUND, "no user %s", name);
  } else {
    rc = sql_err(c, rc, "looking a user up");
  }
  sqlite3_reset(st);
  return rc;
}

/* Steps the auth epoch inside the caller's write; *epoch gets the new one. */
static int next_epoch(struct srv_store_conn *c, int64_t *epoch) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, ST_EPOCH, &st);

  if (rc != 0)
    return rc;
  rc = sqlite3_step(st);
  *epoch = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) + 1 : 1;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return sql_err(c, rc, "reading the auth epoch");
  rc = get_stmt(c, ST_EPOCH_SET, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, *epoch);
  return step_done(c, st, "stepping the auth epoch");
}

int srv_store_user_add(struct srv_store_conn *c, const char *name, int role) {
  sqlite3_stmt *st;
  int rc;

  if (!name_valid(name))
    return set_err(c, SRV_STORE_EINVAL,
                   "bad user name: 1 to %d characters of A-Z a-z 0-9 . _ -",
                   SRV_NAME_MAX);
  if (role < FIELDSYNC__ROLE__ROLE_INSPECTOR ||
      role > FIELDSYNC__ROLE__ROLE_HEAD_OFFICE)
    return set_err(c, SRV_STORE_EINVAL, "bad role %d", role);
  rc = get_stmt(c, ST_USER_ADD, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, role);
  sqlite3_bind_int64(st, 3, now_ms());
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc == SQLITE_CONSTRAINT_UNIQUE)
    return set_err(c, SRV_STORE_EEXISTS, "user %s already exists", name);
  if (rc != SQLITE_DONE)
    return sql_err(c, rc, "adding a user");
  return 0;
}

int srv_store_user_delete(struct srv_store_conn *c, const char *name) {
  sqlite3_stmt *st;
  int64_t user_id;
  int64_t epoch;
  bool outer;
  int rc;

  if (!name_valid(name))
    return set_err(c, SRV_STORE_ENOTFOUND, "no such user");
  rc = write_begin(c, &outer);
  if (rc != 0)
    return rc;
  rc = find_user(c, name, false, &user_id, NULL, NULL);
  if (rc == SRV_STORE_ENOTFOUND)
    set_err(c, rc, "no user %s (or it was deleted already)", name);
  if (rc == 0)
    rc = next_epoch(c, &epoch);
  if (rc == 0)
    rc = get_stmt(c, ST_USER_DELETE, &st);
  if (rc == 0) {
    sqlite3_bind_int64(st, 1, user_id);
    rc = step_done(c, st, "deleting a user");
  }
  if (rc == 0)
    rc = get_stmt(c, ST_USER_REVOKE, &st);
  if (rc == 0) {
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_int64(st, 2, now_ms());
    sqlite3_bind_int64(st, 3, epoch);
    rc = step_done(c, st, "revoking a user's devices");
  }
  if (rc != 0) {
    write_abort(c, outer);
    return rc;
  }
  return write_commit(c, outer);
}

/* The walk every operator listing shares: runs sql (?1 bound to user's
 * id, or NULL for everyone) and calls row for each result row; row's
 * non-zero return stops the walk and is returned. ENOTFOUND when user is
 * given and does not exist. */
static int list_rows(struct srv_store_conn *c, const char *user,
                     const char *sql, const char *what,
                     int (*row)(sqlite3_stmt *st, void *arg), void *arg) {
  sqlite3_stmt *st = NULL;
  int64_t user_id = 0;
  int rc;

  if (user != NULL) {
    rc = find_user(c, user, true, &user_id, NULL, NULL);
    if (rc != 0)
      return rc;
  }
  rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
  if (rc != SQLITE_OK) {
    rc = sql_err(c, rc, what);
    goto done;
  }
  if (user != NULL)
    sqlite3_bind_int64(st, 1, user_id);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int r = row(st, arg);
    if (r != 0) {
      rc = r;
      goto done;
    }
  }
  rc = rc == SQLITE_DONE ? 0 : sql_err(c, rc, what);
done:
  sqlite3_finalize(st);
  return rc;
}

/* Text column i, or "" for NULL. */
static const char *column_str(sqlite3_stmt *st, int i) {
  const unsigned char *t = sqlite3_column_text(st, i);
  return t != NULL ? (const char *)t : "";
}

struct user_walk {
  int (*cb)(const char *name, int role, bool deleted, int64_t created_ms,
            void *data);
  void *data;
};

static int user_row(sqlite3_stmt *st, void *arg) {
  struct user_walk *w = arg;

  return w->cb(column_str(st, 0), sqlite3_column_int(st, 1),
               sqlite3_column_int(st, 2) != 0, sqlite3_column_int64(st, 3),
               w->data);
}

int srv_store_user_list(struct srv_store_conn *c,
                        int (*cb)(const char *name, int role, bool deleted,
                                  int64_t created_ms, void *data),
                        void *data) {
  struct user_walk w = {cb, data};

  return list_rows(c, NULL,
                   "SELECT name, role, deleted, created_ms FROM users "
                   "ORDER BY name",
                   "listing users", user_row, &w);
}

int srv_store_device_add(struct srv_store_conn *c, const char *user,
                         char token_out[SRV_TOKEN_LEN + 1],
                         int64_t *device_id) {
  uint8_t raw[SRV_TOKEN_RANDOM];
  uint8_t hash[FSP_HASH_LEN];
  char token[SRV_TOKEN_LEN + 1];
  sqlite3_stmt *st;
  int64_t user_id;
  int64_t id = 0;
  bool outer;
  int rc;

  token_out[0] = '\0';
  if (!name_valid(user))
    return set_err(c, SRV_STORE_ENOTFOUND, "no such user");
  if (os_random(raw, sizeof(raw)) != 0)
    return set_err(c, SRV_STORE_EIO, "no secure random source for a token");
  memcpy(token, SRV_TOKEN_PREFIX, 4);
  hex_encode(raw, sizeof(raw), token + 4);
  if (token_hash(token, SRV_TOKEN_LEN, hash) != 0) {
    rc = set_err(c, SRV_STORE_EIO, "SHA-256 failed (OpenSSL)");
    goto out;
  }
  rc = write_begin(c, &outer);
  if (rc != 0)
    goto out;
  rc = find_user(c, user, false, &user_id, NULL, NULL);
  if (rc == 0)
    rc = get_stmt(c, ST_DEVICE_ADD, &st);
  if (rc == 0) {
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_blob(st, 2, hash, sizeof(hash), SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, now_ms());
    rc = step_done(c, st, "adding a device");
    id = sqlite3_last_insert_rowid(c->db);
  }
  if (rc != 0) {
    write_abort(c, outer);
    goto out;
  }
  rc = write_commit(c, outer);
  if (rc != 0)
    goto out;
  if (device_id != NULL)
    *device_id = id;
  memcpy(token_out, token, sizeof(token));
out:
  OPENSSL_cleanse(token, sizeof(token));
  OPENSSL_cleanse(raw, sizeof(raw));
  return rc;
}

struct device_walk {
  int (*cb)(const struct srv_device_info *, void *);
  void *data;
};

static int device_row(sqlite3_stmt *st, void *arg) {
  struct device_walk *w = arg;
  struct srv_device_info d;

  memset(&d, 0, sizeof(d));
  d.id = sqlite3_column_int64(st, 0);
  snprintf(d.user, sizeof(d.user), "%s", column_str(st, 1));
  d.role = sqlite3_column_int(st, 2);
  d.user_deleted = sqlite3_column_int(st, 3) != 0;
  d.created_ms = sqlite3_column_int64(st, 4);
  d.revoked = sqlite3_column_int(st, 5) != 0;
  d.revoked_ms = d.revoked ? sqlite3_column_int64(st, 6) : 0;
  d.bound = sqlite3_column_bytes(st, 7) == FSP_ID_LEN;
  if (d.bound)
    memcpy(d.replica, sqlite3_column_blob(st, 7), FSP_ID_LEN);
  d.last_seen_ms = sqlite3_column_int64(st, 8);
  return w->cb(&d, w->data);
}

int srv_store_device_list(struct srv_store_conn *c, const char *user,
                          int (*cb)(const struct srv_device_info *, void *),
                          void *data) {
  struct device_walk w = {cb, data};

  return list_rows(c, user,
                   "SELECT d.id, u.name, u.role, u.deleted, d.created_ms, "
                   "d.revoked, d.revoked_ms, d.replica_id, d.last_seen_ms "
                   "FROM devices d JOIN users u ON u.id = d.user_id "
                   "WHERE ?1 IS NULL OR d.user_id = ?1 ORDER BY d.id",
                   "listing devices", device_row, &w);
}

int srv_store_device_revoke(struct srv_store_conn *c, int64_t device_id) {
  sqlite3_stmt *st;
  int64_t epoch;
  bool outer;
  int rc;

  rc = write_begin(c, &outer);
  if (rc != 0)
    return rc;
  rc = get_stmt(c, ST_DEVICE_GET, &st);
  if (rc != 0)
    goto fail;
  sqlite3_bind_int64(st, 1, device_id);
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    sqlite3_reset(st);
    rc =
        set_err(c, SRV_STORE_ENOTFOUND, "no device %lld", (long long)device_id);
    goto fail;
  }
  if (rc != SQLITE_ROW) {
    rc = sql_err(c, rc, "looking a device up");
    sqlite3_reset(st);
    goto fail;
  }
  if (sqlite3_column_int(st, 0) != 0) {
    sqlite3_reset(st);
    return write_commit(c, outer); /* revoked already: nothing changes */
  }
  sqlite3_reset(st);
  rc = next_epoch(c, &epoch);
  if (rc == 0)
    rc = get_stmt(c, ST_DEVICE_REVOKE, &st);
  if (rc != 0)
    goto fail;
  sqlite3_bind_int64(st, 1, device_id);
  sqlite3_bind_int64(st, 2, now_ms());
  sqlite3_bind_int64(st, 3, epoch);
  rc = step_done(c, st, "revoking a device");
  if (rc != 0)
    goto fail;
  return write_commit(c, outer);
fail:
  write_abort(c, outer);
  return rc;
}

/* ---- visit teams ------------------------------------------------------- */

int srv_store_assign(struct srv_store_conn *c, const uint8_t visit[16],
                     const char *user, int64_t until_ms) {
  sqlite3_stmt *st;
  int64_t user_id;
  int role = 0;
  bool outer;
  int rc;

  if (visit == NULL || until_ms < 0)
    return set_err(c, SRV_STORE_EINVAL, "bad visit id or end time");
  if (!name_valid(user))
    return set_err(c, SRV_STORE_ENOTFOUND, "no such user");
  rc = write_begin(c, &outer);
  if (rc != 0)
    return rc;
  rc = find_user(c, user, false, &user_id, &role, NULL);
  if (rc == 0 && role == FIELDSYNC__ROLE__ROLE_HEAD_OFFICE)
    rc = set_err(c, SRV_STORE_EINVAL,
                 "%s is head_office: head office sees every visit and is "
                 "never assigned",
                 user);
  if (rc == 0)
    rc = get_stmt(c, ST_ASSIGN, &st);
  if (rc == 0) {
    sqlite3_bind_blob(st, 1, visit, FSP_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, user_id);
    if (until_ms > 0)
      sqlite3_bind_int64(st, 3, until_ms);
    sqlite3_bind_int64(st, 4, now_ms());
    rc = step_done(c, st, "assigning a visit");
  }
  if (rc != 0) {
    write_abort(c, outer);
    return rc;
  }
  return write_commit(c, outer);
}

int srv_store_unassign(struct srv_store_conn *c, const uint8_t visit[16],
                       const char *user) {
  char hex[2 * FSP_ID_LEN + 1];
  sqlite3_stmt *st;
  int64_t user_id;
  bool outer;
  int rc;

  if (visit == NULL)
    return set_err(c, SRV_STORE_EINVAL, "no visit id");
  if (!name_valid(user))
    return set_err(c, SRV_STORE_ENOTFOUND, "no such user");
  rc = write_begin(c, &outer);
  if (rc != 0)
    return rc;
  rc = find_user(c, user, true, &user_id, NULL, NULL);
  if (rc == 0)
    rc = get_stmt(c, ST_UNASSIGN, &st);
  if (rc == 0) {
    sqlite3_bind_int64(st, 1, user_id);
    sqlite3_bind_blob(st, 2, visit, FSP_ID_LEN, SQLITE_STATIC);
    rc = step_done(c, st, "ending an assignment");
  }
  if (rc == 0 && sqlite3_changes(c->db) == 0) {
    hex_encode(visit, FSP_ID_LEN, hex);
    rc = set_err(c, SRV_STORE_ENOTFOUND, "visit %s is not assigned to %s", hex,
                 user);
  }
  if (rc != 0) {
    write_abort(c, outer);
    return rc;
  }
  return write_commit(c, outer);
}

struct assignment_walk {
  int (*cb)(const struct srv_assignment *, void *);
  void *data;
};

static int assignment_row(sqlite3_stmt *st, void *arg) {
  struct assignment_walk *w = arg;
  struct srv_assignment a;

  memset(&a, 0, sizeof(a));
  if (sqlite3_column_bytes(st, 0) == FSP_ID_LEN)
    memcpy(a.visit, sqlite3_column_blob(st, 0), FSP_ID_LEN);
  snprintf(a.user, sizeof(a.user), "%s", column_str(st, 1));
  a.role = sqlite3_column_int(st, 2);
  a.until_ms = sqlite3_column_int64(st, 3); /* NULL reads as 0 */
  a.created_ms = sqlite3_column_int64(st, 4);
  return w->cb(&a, w->data);
}

int srv_store_assignment_list(struct srv_store_conn *c, const char *user,
                              int (*cb)(const struct srv_assignment *, void *),
                              void *data) {
  struct assignment_walk w = {cb, data};

  return list_rows(c, user,
                   "SELECT a.visit_id, u.name, u.role, a.until_ms, "
                   "a.created_ms "
                   "FROM assignments a JOIN users u ON u.id = a.user_id "
                   "WHERE ?1 IS NULL OR a.user_id = ?1 "
                   "ORDER BY u.name, a.visit_id",
                   "listing assignments", assignment_row, &w);
}

/* ---- authentication ---------------------------------------------------- */

/* True when token has the shape of one we issue: "fst_" + 48 lowercase
 * hex digits. */
static bool token_shape_ok(const char *token) {
  size_t i;

  if (token == NULL || strncmp(token, SRV_TOKEN_PREFIX, 4) != 0)
    return false;
  for (i = 4; i < SRV_TOKEN_LEN; i++) {
    char ch = token[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
      return false;
  }
  return token[SRV_TOKEN_LEN] == '\0';
}

/* Binds device id to replica (its first successful handshake). Another
 * handshake may have bound it meanwhile: then the binding it made must be
 * this replica, else EMISMATCH. A failure to write fails the handshake:
 * the binding is what stops a copied token later. */
static int bind_replica(struct srv_store_conn *c, int64_t id,
                        const uint8_t replica[16]) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, ST_BIND, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_blob(st, 2, replica, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, now_ms());
  rc = step_done(c, st, "binding a device to its replica");
  if (rc != 0 || sqlite3_changes(c->db) == 1)
    return rc;
  rc = get_stmt(c, ST_DEVICE_REPLICA, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, id);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW && sqlite3_column_bytes(st, 0) == FSP_ID_LEN &&
      memcmp(sqlite3_column_blob(st, 0), replica, FSP_ID_LEN) == 0)
    rc = 0;
  else if (rc == SQLITE_ROW || rc == SQLITE_DONE)
    rc = set_err(c, SRV_STORE_EMISMATCH,
                 "device %lld is bound to another replica (a copied token?)",
                 (long long)id);
  else
    rc = sql_err(c, rc, "reading a device's replica");
  sqlite3_reset(st);
  return rc;
}

/* Records a handshake's time as the device's last_seen_ms, waiting only
 * briefly for the write lock: when the writer holds it, the time is not
 * recorded and the handshake goes on (it is operator information). */
static int note_seen(struct srv_store_conn *c, int64_t id) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, ST_SEEN, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, now_ms());
  sqlite3_busy_timeout(c->db, SRV_SEEN_BUSY_MS);
  rc = sqlite3_step(st);
  sqlite3_reset(st);
  sqlite3_busy_timeout(c->db, SRV_BUSY_MS);
  if (rc == SQLITE_DONE || (rc & 0xff) == SQLITE_BUSY ||
      (rc & 0xff) == SQLITE_LOCKED)
    return 0;
  return sql_err(c, rc, "recording a device's last handshake");
}

int srv_store_auth(struct srv_store_conn *c, const char *token,
                   const uint8_t replica[16], struct srv_identity *who) {
  struct srv_identity id;
  uint8_t hash[FSP_HASH_LEN];
  const unsigned char *name;
  sqlite3_stmt *st;
  bool bound;
  int rc;

  memset(who, 0, sizeof(*who));
  memset(&id, 0, sizeof(id));
  /* The message never contains the token (PROTOCOL.md, Security). */
  if (token == NULL || token[0] == '\0')
    return set_err(c, SRV_STORE_ENOTFOUND, "no device token");
  if (!token_shape_ok(token))
    return set_err(c, SRV_STORE_ENOTFOUND, "malformed device token");
  if (replica == NULL)
    return set_err(c, SRV_STORE_EINVAL, "no replica id");
  if (token_hash(token, SRV_TOKEN_LEN, hash) != 0)
    return set_err(c, SRV_STORE_EIO, "SHA-256 failed (OpenSSL)");
  rc = get_stmt(c, ST_AUTH, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, hash, sizeof(hash), SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    rc = set_err(c, SRV_STORE_ENOTFOUND, "unknown device token");
    goto done;
  }
  if (rc != SQLITE_ROW) {
    rc = sql_err(c, rc, "looking a device token up");
    goto done;
  }
  if (sqlite3_column_bytes(st, 2) != FSP_HASH_LEN ||
      CRYPTO_memcmp(sqlite3_column_blob(st, 2), hash, FSP_HASH_LEN) != 0) {
    rc = set_err(c, SRV_STORE_ENOTFOUND, "unknown device token");
    goto done;
  }
  id.device_id = sqlite3_column_int64(st, 0);
  /* A copied token learns nothing more, not even that it was revoked: only
   * the bound replica is told (and wipes itself). */
  bound = sqlite3_column_bytes(st, 7) == FSP_ID_LEN;
  if (bound && memcmp(sqlite3_column_blob(st, 7), replica, FSP_ID_LEN) != 0) {
    rc = set_err(c, SRV_STORE_EMISMATCH,
                 "device %lld is bound to another replica (a copied token?)",
                 (long long)id.device_id);
    goto done;
  }
  if (sqlite3_column_int(st, 3) != 0) {
    rc = set_err(c, SRV_STORE_EREVOKED, "device %lld was revoked",
                 (long long)id.device_id);
    goto done;
  }
  if (sqlite3_column_int(st, 6) != 0) {
    rc = set_err(c, SRV_STORE_EREVOKED, "the user of device %lld was deleted",
                 (long long)id.device_id);
    goto done;
  }
  id.user_id = sqlite3_column_int64(st, 1);
  name = sqlite3_column_text(st, 4);
  snprintf(id.user, sizeof(id.user), "%s",
           name != NULL ? (const char *)name : "");
  id.role = sqlite3_column_int(st, 5);
  sqlite3_reset(st); /* ends the read before writing */
  rc = bound ? note_seen(c, id.device_id)
             : bind_replica(c, id.device_id, replica);
  if (rc == 0)
    *who = id;
  return rc;
done:
  sqlite3_reset(st);
  return rc;
}

int srv_store_auth_epoch(struct srv_store_conn *c, uint64_t *epoch) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, ST_EPOCH, &st);

  *epoch = 0;
  if (rc != 0)
    return rc;
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    int64_t v = sqlite3_column_int64(st, 0);
    *epoch = v > 0 ? (uint64_t)v : 0;
    rc = 0;
  } else if (rc == SQLITE_DONE) {
    rc = 0;
  } else {
    rc = sql_err(c, rc, "reading the auth epoch");
  }
  sqlite3_reset(st);
  return rc;
}

static int id_cmp(const void *pa, const void *pb) {
  int64_t a = *(const int64_t *)pa;
  int64_t b = *(const int64_t *)pb;

  return a < b ? -1 : a > b;
}

int srv_store_revoked_since(struct srv_store_conn *c, uint64_t epoch,
                            int64_t **ids, size_t *n) {
  sqlite3_stmt *st;
  int64_t *v = NULL;
  size_t cap = 0;
  size_t k = 0;
  int rc;

  *ids = NULL;
  *n = 0;
  if (epoch >= (uint64_t)INT64_MAX)
    return 0;
  rc = get_stmt(c, ST_REVOKED_SINCE, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, (sqlite3_int64)epoch);
  for (;;) {
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
      break;
    if (k == cap) {
      size_t ncap = cap == 0 ? 8 : cap * 2;
      int64_t *nv = fsp_realloc(v, ncap * sizeof(*nv));
      if (nv == NULL) {
        rc = set_err(c, SRV_STORE_ENOMEM, "out of memory");
        goto fail;
      }
      v = nv;
      cap = ncap;
    }
    v[k++] = sqlite3_column_int64(st, 0);
  }
  if (rc != SQLITE_DONE) {
    rc = sql_err(c, rc, "reading revoked devices");
    goto fail;
  }
  sqlite3_reset(st);
  if (k > 1)
    qsort(v, k, sizeof(*v), id_cmp);
  *ids = v;
  *n = k;
  return 0;
fail:
  sqlite3_reset(st);
  fsp_free(v);
  return rc;
}

/* ---- scopes ------------------------------------------------------------ */

static int scope_cmp(const void *pa, const void *pb) {
  const struct srv_scope *a = pa;
  const struct srv_scope *b = pb;

  return fsp_scope_cmp(a->kind, a->id, b->kind, b->id);
}

/* True when the sorted set (v, n) holds (kind, id). */
static bool scope_in(const struct srv_scope *v, size_t n, int kind,
                     const uint8_t *id) {
  struct srv_scope key;

  if (n == 0)
    return false;
  key.kind = kind;
  memcpy(key.id, id, FSP_ID_LEN);
  return bsearch(&key, v, n, sizeof(*v), scope_cmp) != NULL;
}

/* Appends a scope to (*v, *n, *cap). */
static int scope_push(struct srv_store_conn *c, struct srv_scope **v, size_t *n,
                      size_t *cap, int kind, const void *id) {
  if (*n == *cap) {
    size_t ncap = *cap == 0 ? 8 : *cap * 2;
    struct srv_scope *nv = fsp_realloc(*v, ncap * sizeof(*nv));
    if (nv == NULL)
      return set_err(c, SRV_STORE_ENOMEM, "out of memory");
    *v = nv;
    *cap = ncap;
  }
  (*v)[*n].kind = kind;
  memcpy((*v)[*n].id, id, FSP_ID_LEN);
  (*n)++;
  return 0;
}

int srv_store_scopes(struct srv_store_conn *c, const struct srv_identity *who,
                     int64_t now, struct srv_scope **out, size_t *n,
                     bool *all) {
  struct srv_scope *v = NULL;
  sqlite3_stmt *st;
  size_t k = 0;
  size_t cap = 0;
  size_t i;
  size_t j;
  int rc;

  *out = NULL;
  *n = 0;
  *all = false;
  if (who == NULL || who->role == FIELDSYNC__ROLE__ROLE_HEAD_OFFICE) {
    *all = true;
    return 0;
  }
  if (who->role != FIELDSYNC__ROLE__ROLE_INSPECTOR &&
      who->role != FIELDSYNC__ROLE__ROLE_EXPERT)
    return 0; /* an unknown role sees nothing */
  rc = get_stmt(c, ST_SCOPES, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, who->user_id);
  sqlite3_bind_int64(st, 2, now);
  for (;;) {
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
      break;
    if (sqlite3_column_bytes(st, 0) != FSP_ID_LEN)
      continue;
    rc = scope_push(c, &v, &k, &cap, FIELDSYNC__SCOPE_KIND__SCOPE_VISIT,
                    sqlite3_column_blob(st, 0));
    if (rc == 0 && who->role == FIELDSYNC__ROLE__ROLE_INSPECTOR &&
        sqlite3_column_bytes(st, 1) == FSP_ID_LEN)
      rc = scope_push(c, &v, &k, &cap, FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE,
                      sqlite3_column_blob(st, 1));
    if (rc != 0)
      goto fail;
  }
  if (rc != SQLITE_DONE) {
    rc = sql_err(c, rc, "reading assignments");
    goto fail;
  }
  sqlite3_reset(st);
  if (k > 1)
    qsort(v, k, sizeof(*v), scope_cmp);
  for (i = 0, j = 0; i < k; i++)
    if (j == 0 || scope_cmp(&v[j - 1], &v[i]) != 0)
      v[j++] = v[i];
  *out = v;
  *n = j;
  if (j == 0) {
    fsp_free(v);
    *out = NULL;
  }
  return 0;
fail:
  sqlite3_reset(st);
  fsp_free(v);
  return rc;
}

/* ---- transactions ------------------------------------------------------ */

int srv_store_begin(struct srv_store_conn *c) {
  int rc = run(c, ST_BEGIN, "starting a transaction");

  c->in_txn = rc == 0;
  return rc;
}

int srv_store_commit(struct srv_store_conn *c) {
  int rc = run(c, ST_COMMIT, "committing");

  if (rc != 0)
    srv_store_rollback(c);
  c->in_txn = false;
  return rc;
}

void srv_store_rollback(struct srv_store_conn *c) {
  char keep[sizeof(c->errmsg)];

  c->in_txn = false;
  if (sqlite3_get_autocommit(c->db))
    return; /* no transaction (SQLite may have rolled it back itself) */
  memcpy(keep, c->errmsg, sizeof(keep));
  run(c, ST_ROLLBACK, "rolling back");
  memcpy(c->errmsg, keep, sizeof(keep));
}

/* ---- push -------------------------------------------------------------- */

/* Marks o refused with a wire code and a message; returns 0 (a refusal is
 * not a store error). */
static int refuse(struct srv_outcome *o, int code, const char *fmt, ...) {
  va_list ap;

  o->outcome = FIELDSYNC__OUTCOME__OUTCOME_REFUSED;
  o->reason_code = code;
  va_start(ap, fmt);
  vsnprintf(o->reason, sizeof(o->reason), fmt, ap);
  va_end(ap);
  return 0;
}

/* Refuses for a proto/ failure, or fails the batch when it is ours (out of
 * memory). */
static int refuse_fsp(struct srv_store_conn *c, struct srv_outcome *o,
                      const struct fsp_error *err) {
  int wire;

  if (err->code == FSP_ENOMEM)
    return set_err(c, SRV_STORE_ENOMEM, "out of memory (%s)", err->msg);
  wire = fsp_err_to_wire(err->code);
  if (wire != FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED)
    wire = FIELDSYNC__ERROR_CODE__ERR_INVALID;
  return refuse(o, wire, "%s", err->msg);
}

static bool bytes_ok(protobuf_c_boolean has, const ProtobufCBinaryData *b,
                     size_t len) {
  return has && b->len == len && b->data != NULL;
}

/* The shape fsp_msg_validate_change guarantees, re-checked cheaply so a
 * caller's mistake is a refusal and never a crash. */
static bool change_shape_ok(const Fieldsync__Change *ch) {
  return ch != NULL && ch->key != NULL && ch->scope != NULL &&
         ch->version != NULL && ch->key->has_collection &&
         bytes_ok(ch->key->has_id, &ch->key->id, FSP_ID_LEN) &&
         ch->scope->has_kind &&
         bytes_ok(ch->scope->has_id, &ch->scope->id, FSP_ID_LEN) &&
         bytes_ok(ch->version->has_hash, &ch->version->hash, FSP_HASH_LEN) &&
         !ch->has_seq;
}

/* Makes room for n current versions in c's scratch. */
static int reserve_cur(struct srv_store_conn *c, size_t n) {
  struct cur_version *cur;
  struct fsp_vref *refs;
  bool *keep;
  size_t cap = c->cur_cap == 0 ? 8 : c->cur_cap;
  size_t i;

  if (n <= c->cur_cap)
    return 0;
  while (cap < n)
    cap *= 2;
  /* cur_cap is the capacity of all three arrays, so it moves only once
   * each has grown: after a failure, the next call grows them again. */
  refs = fsp_realloc(c->refs, cap * sizeof(*refs));
  if (refs == NULL)
    return set_err(c, SRV_STORE_ENOMEM, "out of memory");
  c->refs = refs;
  keep = fsp_realloc(c->keep, cap * sizeof(*keep));
  if (keep == NULL)
    return set_err(c, SRV_STORE_ENOMEM, "out of memory");
  c->keep = keep;
  cur = fsp_realloc(c->cur, cap * sizeof(*cur));
  if (cur == NULL)
    return set_err(c, SRV_STORE_ENOMEM, "out of memory");
  c->cur = cur;
  for (i = c->cur_cap; i < cap; i++)
    fsp_vv_init(&c->cur[i].vv);
  c->cur_cap = cap;
  return 0;
}

/* Reads the current versions of record into c->cur; *n gets their count. */
static int load_current(struct srv_store_conn *c, const uint8_t *record,
                        size_t *n) {
  sqlite3_stmt *st;
  size_t k = 0;
  int rc;

  *n = 0;
  rc = get_stmt(c, ST_LOAD_CURRENT, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, record, FSP_ID_LEN, SQLITE_STATIC);
  for (;;) {
    struct cur_version *v;

    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
      break;
    rc = reserve_cur(c, k + 1);
    if (rc != 0)
      goto done;
    v = &c->cur[k];
    v->seq = sqlite3_column_int64(st, 0);
    if (sqlite3_column_bytes(st, 1) != FSP_HASH_LEN) {
      rc = set_err(c, SRV_STORE_ECORRUPT, "stored version %lld is damaged",
                   (long long)v->seq);
      goto done;
    }
    memcpy(v->hash, sqlite3_column_blob(st, 1), FSP_HASH_LEN);
    rc = fsp_vv_decode(&v->vv, sqlite3_column_blob(st, 2),
                       (size_t)sqlite3_column_bytes(st, 2), SRV_STORED_MAX_VV);
    if (rc == FSP_ENOMEM) {
      rc = set_err(c, SRV_STORE_ENOMEM, "out of memory");
      goto done;
    }
    if (rc != 0) {
      rc = set_err(c, SRV_STORE_ECORRUPT,
                   "stored version %lld has a damaged version vector",
                   (long long)v->seq);
      goto done;
    }
    k++;
  }
  if (rc != SQLITE_DONE) {
    rc = sql_err(c, rc, "reading current versions");
    goto done;
  }
  rc = 0;
  *n = k;
done:
  sqlite3_reset(st);
  return rc;
}

/* The stored row of a record, when there is one. */
struct record_row {
  bool exists;
  int collection;
  int scope_kind;
  uint8_t scope_id[FSP_ID_LEN];
  bool owned; /* its owner is the pushing user */
  bool has_service; /* a visit's stored service */
  uint8_t service[FSP_ID_LEN];
};

/* Reads record id; user (may be NULL) is the pushing user, for owned. */
static int load_record(struct srv_store_conn *c, const uint8_t *id,
                       const char *user, struct record_row *r) {
  sqlite3_stmt *st;
  int rc;

  memset(r, 0, sizeof(*r));
  rc = get_stmt(c, ST_LOAD_RECORD, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, id, FSP_ID_LEN, SQLITE_STATIC);
  if (user != NULL)
    sqlite3_bind_text(st, 2, user, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    r->exists = true;
    r->collection = sqlite3_column_int(st, 0);
    r->scope_kind = sqlite3_column_int(st, 1);
    if (sqlite3_column_bytes(st, 2) == FSP_ID_LEN)
      memcpy(r->scope_id, sqlite3_column_blob(st, 2), FSP_ID_LEN);
    r->owned = sqlite3_column_int(st, 3) != 0;
    if (sqlite3_column_bytes(st, 4) == FSP_ID_LEN) {
      r->has_service = true;
      memcpy(r->service, sqlite3_column_blob(st, 4), FSP_ID_LEN);
    }
    rc = 0;
  } else if (rc == SQLITE_DONE) {
    rc = 0;
  } else {
    rc = sql_err(c, rc, "reading a record");
  }
  sqlite3_reset(st);
  return rc;
}

/* Looks (record, hash, vv) up in the history: *found, and *current when
 * found. The vector is c->vvbuf (len bytes). */
static int find_version(struct srv_store_conn *c, const Fieldsync__Change *ch,
                        size_t len, bool *found, bool *current) {
  sqlite3_stmt *st;
  int rc;

  *found = false;
  *current = false;
  rc = get_stmt(c, ST_FIND_VERSION, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, ch->key->id.data, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, ch->version->hash.data, FSP_HASH_LEN, SQLITE_STATIC);
  sqlite3_bind_blob(st, 3, c->vvbuf, (int)len, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *found = true;
    *current = sqlite3_column_int(st, 0) != 0;
    rc = 0;
  } else if (rc == SQLITE_DONE) {
    rc = 0;
  } else {
    rc = sql_err(c, rc, "looking a version up");
  }
  sqlite3_reset(st);
  return rc;
}

/* What the payload of a live version says beyond its scope. */
struct payload_facts {
  const char *owner; /* "" for none; belongs to the decoded payload */
  bool has_service;
  uint8_t service[FSP_ID_LEN];
};

/* Stores ch's version in the history; vector in c->vvbuf (len bytes). A
 * tombstone's owner is its record's (the statement reads it). */
static int insert_version(struct srv_store_conn *c,
                          const struct srv_identity *who,
                          const Fieldsync__Change *ch, size_t len, bool deleted,
                          bool current, int64_t received,
                          const struct payload_facts *pf) {
  const Fieldsync__Version *v = ch->version;
  sqlite3_stmt *st;
  int rc;

  rc = get_stmt(c, ST_INSERT_VERSION, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, ch->key->id.data, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, v->hash.data, FSP_HASH_LEN, SQLITE_STATIC);
  sqlite3_bind_blob(st, 3, c->vvbuf, (int)len, SQLITE_STATIC);
  sqlite3_bind_int(st, 4, deleted ? 1 : 0);
  if (deleted)
    sqlite3_bind_null(st, 5);
  else if (v->payload.len == 0)
    sqlite3_bind_zeroblob(st, 5, 0); /* empty, not NULL */
  else
    sqlite3_bind_blob64(st, 5, v->payload.data, v->payload.len, SQLITE_STATIC);
  if (v->author != NULL)
    sqlite3_bind_text(st, 6, v->author, -1, SQLITE_STATIC);
  if (v->has_device_time_ms)
    sqlite3_bind_int64(st, 7, v->device_time_ms);
  sqlite3_bind_int(st, 8, (int)ch->key->collection);
  sqlite3_bind_int(st, 9, (int)ch->scope->kind);
  sqlite3_bind_blob(st, 10, ch->scope->id.data, FSP_ID_LEN, SQLITE_STATIC);
  if (who != NULL) {
    sqlite3_bind_int64(st, 11, who->user_id);
    sqlite3_bind_int64(st, 12, who->device_id);
  }
  sqlite3_bind_int64(st, 13, received);
  sqlite3_bind_int(st, 14, current ? 1 : 0);
  if (!deleted && pf->owner[0] != '\0')
    sqlite3_bind_text(st, 15, pf->owner, -1, SQLITE_STATIC);
  return step_done(c, st, "storing a version");
}

static int supersede(struct srv_store_conn *c, int64_t seq) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, ST_SUPERSEDE, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, seq);
  return step_done(c, st, "superseding a version");
}

/* Writes the record row after a version of it became current: its scope,
 * and unless the version is a tombstone its owner and (visits) service. */
static int upsert_record(struct srv_store_conn *c, const Fieldsync__Change *ch,
                         bool reuse, bool deleted,
                         const struct payload_facts *pf) {
  sqlite3_stmt *st;
  int rc = get_stmt(c, ST_UPSERT_RECORD, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, ch->key->id.data, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, (int)ch->key->collection);
  sqlite3_bind_int(st, 3, (int)ch->scope->kind);
  sqlite3_bind_blob(st, 4, ch->scope->id.data, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int(st, 5, reuse ? 1 : 0);
  if (!deleted && pf->owner[0] != '\0')
    sqlite3_bind_text(st, 6, pf->owner, -1, SQLITE_STATIC);
  if (!deleted && pf->has_service)
    sqlite3_bind_blob(st, 7, pf->service, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int(st, 8, deleted ? 1 : 0);
  return step_done(c, st, "writing a record");
}

/* Checks a non-tombstone's payload: it decodes as its collection and its
 * derived scope is the change's scope. On success *msg is the decoded
 * payload (free with fsp_payload_free(*msg, budget)), from which the
 * caller reads the owner and service; on a refusal or error it is NULL.
 * Returns 0 (o refused or not) or a store error. */
static int check_payload(struct srv_store_conn *c,
                         const struct fsp_collection *col,
                         const Fieldsync__Change *ch,
                         const struct fsp_limits *lim,
                         struct fsp_budget *budget, ProtobufCMessage **msg,
                         struct srv_outcome *o) {
  const Fieldsync__Version *v = ch->version;
  struct fsp_error err;
  uint8_t scope_id[FSP_ID_LEN];
  int kind = 0;
  int rc;

  *msg = NULL;
  rc = fsp_payload_decode(col, v->payload.data, v->payload.len, lim, budget,
                          msg, &err);
  if (rc != 0)
    return refuse_fsp(c, o, &err);
  rc = fsp_payload_scope(col, ch->key->id.data, *msg, &kind, scope_id, &err);
  if (rc == 0 && (kind != (int)ch->scope->kind ||
                  memcmp(scope_id, ch->scope->id.data, FSP_ID_LEN) != 0))
    rc = refuse(o, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                "scope does not match the payload");
  else if (rc != 0)
    rc = refuse_fsp(c, o, &err);
  if (rc != 0 || o->outcome != 0) {
    fsp_payload_free(*msg, budget);
    *msg = NULL;
  }
  return rc;
}

/* Checks a tombstone's scope. For a record the server holds, any scope is
 * accepted: a replica may move a record (edit its visit) and delete it
 * before syncing, so its tombstone names a scope the server never saw, and
 * refusing it would refuse it forever. (Whether the device may delete in
 * the record's scopes is the roles-and-scope check, not this one.) For a
 * record not seen yet, the scope must be one its collection allows.
 * Returns 0 (o refused or not). */
static int check_tombstone(struct srv_store_conn *c,
                           const struct fsp_collection *col,
                           const Fieldsync__Change *ch,
                           const struct record_row *r, struct srv_outcome *o) {
  (void)c;
  if (r->exists)
    return 0;
  if ((int)ch->scope->kind != col->scope_kind ||
      (col->scope_field == NULL &&
       memcmp(ch->scope->id.data, ch->key->id.data, FSP_ID_LEN) != 0))
    refuse(o, FIELDSYNC__ERROR_CODE__ERR_INVALID,
           "scope does not match the record");
  return 0;
}

/* Copies ch's vector into c->in_vv and its canonical encoding into
 * c->vvbuf; *len gets the encoding's size. 0 with o refused when the
 * vector is bad, else a store error. */
static int take_vv(struct srv_store_conn *c, const Fieldsync__Change *ch,
                   const struct fsp_limits *lim, size_t *len,
                   struct srv_outcome *o) {
  struct fsp_error err;
  size_t need;

  *len = 0;
  if (fsp_msg_vv_from_pb(&c->in_vv, ch->version->vv, ch->version->n_vv,
                         lim->max_vv, &err) != 0)
    return refuse_fsp(c, o, &err);
  need = fsp_vv_encoded_size(&c->in_vv);
  if (need > c->vvbuf_cap) {
    uint8_t *b = fsp_realloc(c->vvbuf, need);
    if (b == NULL)
      return set_err(c, SRV_STORE_ENOMEM, "out of memory");
    c->vvbuf = b;
    c->vvbuf_cap = need;
  }
  fsp_vv_encode(&c->in_vv, c->vvbuf);
  *len = need;
  return 0;
}

/* The policy facts of one srv_store_push call: who pushes and, unless
 * they see everything, the scopes they see (srv_store_scopes at the
 * push's time, read once per call inside its transaction). */
struct push_auth {
  const struct srv_identity *who; /* NULL: no policy (tests, tools) */
  struct srv_scope *scopes;
  size_t nscopes;
  bool all;
};

static const char *scope_kind_name(int kind) {
  return kind == FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE ? "service" : "visit";
}

/* Refuses o with ERR_FORBIDDEN for a scope who may not see. stored: the
 * scope is the one of the record the server holds, not the change's. */
static int refuse_scope(struct srv_outcome *o, const struct srv_identity *who,
                        int kind, const uint8_t *id, bool stored) {
  char hex[2 * FSP_ID_LEN + 1];

  hex_encode(id, FSP_ID_LEN, hex);
  if (kind == FIELDSYNC__SCOPE_KIND__SCOPE_VISIT)
    return refuse(o, FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN,
                  "%svisit %s is not assigned to %s, or the assignment "
                  "expired",
                  stored ? "the record is stored under " : "", hex, who->user);
  return refuse(o, FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN,
                "%s%s %s is not the service of a visit assigned to %s",
                stored ? "the record is stored under " : "",
                scope_kind_name(kind), hex, who->user);
}

/* Authorises one change for a->who (srv_policy.h, then the scopes): the
 * operation, whether the stored record and the new version are the user's,
 * the change's scope and the stored record's. Returns 0 (o refused or
 * not); never a store error. */
static int authorize(const struct push_auth *a,
                     const struct fsp_collection *col,
                     const Fieldsync__Change *ch, const struct record_row *rec,
                     bool deleted, const struct payload_facts *pf,
                     struct srv_outcome *o) {
  const struct srv_identity *who = a->who;
  const char *why;
  enum srv_op op;
  bool owns_new;

  if (who == NULL)
    return 0;
  if (!rec->exists)
    op = SRV_OP_CREATE;
  else if (deleted)
    op = SRV_OP_DELETE;
  else
    op = SRV_OP_UPDATE;
  owns_new =
      !deleted && who->user[0] != '\0' && strcmp(pf->owner, who->user) == 0;
  why = srv_policy_write(who->role, col->id, op, rec->exists && rec->owned,
                         owns_new);
  if (why != NULL)
    return refuse(o, FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN, "%s", why);
  if (a->all)
    return 0;
  /* An inspector's scopes follow their visits' services: moving a visit to
   * another service would widen them, so only head office may do it. */
  if (op == SRV_OP_UPDATE && rec->has_service &&
      (!pf->has_service ||
       memcmp(pf->service, rec->service, FSP_ID_LEN) != 0))
    return refuse(o, FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN,
                  "only head office may move a visit to another service");
  if (!scope_in(a->scopes, a->nscopes, (int)ch->scope->kind,
                ch->scope->id.data))
    return refuse_scope(o, who, (int)ch->scope->kind, ch->scope->id.data,
                        false);
  if (rec->exists &&
      !scope_in(a->scopes, a->nscopes, rec->scope_kind, rec->scope_id))
    return refuse_scope(o, who, rec->scope_kind, rec->scope_id, true);
  return 0;
}

/* Checks, authorises, merges and stores one change (inside the push
 * savepoint). A refused change fills o and returns 0; a store error is
 * returned. */
static int push_one(struct srv_store_conn *c, const struct push_auth *a,
                    const Fieldsync__Change *ch, const struct fsp_limits *lim,
                    int64_t received, struct srv_outcome *o) {
  const struct srv_identity *who = a->who;
  const struct fsp_collection *col;
  struct payload_facts pf;
  struct fsp_merge_result res;
  struct fsp_budget budget;
  struct fsp_vref inref;
  struct record_row rec;
  ProtobufCMessage *msg = NULL;
  size_t ncur = 0;
  size_t len = 0;
  size_t i;
  bool deleted;
  bool found;
  bool current;
  int rc;

  memset(o, 0, sizeof(*o));
  memset(&pf, 0, sizeof(pf));
  pf.owner = "";
  if (!change_shape_ok(ch))
    return refuse(o, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                  "change is missing its key, scope, version or hash");
  col = fsp_payload_by_id((int)ch->key->collection);
  if (col == NULL)
    return refuse(o, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                  "unknown collection %d", (int)ch->key->collection);
  deleted = ch->version->has_deleted && ch->version->deleted;
  if (!deleted) {
    /* One decode gives the checks and the facts the policy needs. */
    rc = check_payload(c, col, ch, lim, &budget, &msg, o);
    if (rc != 0 || o->outcome != 0)
      return rc;
    pf.owner = fsp_payload_owner(col, msg);
    pf.has_service = fsp_payload_service(col, msg, pf.service);
  }
  rc = load_record(c, ch->key->id.data, who != NULL ? who->user : NULL, &rec);
  if (rc != 0)
    goto done;
  if (rec.exists && rec.collection != col->id) {
    rc = refuse(o, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                "record id already belongs to another collection");
    goto done;
  }
  if (deleted) {
    rc = check_tombstone(c, col, ch, &rec, o);
    if (rc != 0 || o->outcome != 0)
      goto done;
  }
  rc = take_vv(c, ch, lim, &len, o);
  if (rc != 0 || o->outcome != 0)
    goto done;
  if (rec.exists) {
    /* A version the server holds is answered whatever the policy says
     * now, so a retried push stays idempotent (PROTOCOL.md, Scopes). */
    rc = find_version(c, ch, len, &found, &current);
    if (rc != 0)
      goto done;
    if (found) {
      o->outcome = current ? FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN
                           : FIELDSYNC__OUTCOME__OUTCOME_STALE;
      goto done;
    }
  }
  rc = authorize(a, col, ch, &rec, deleted, &pf, o);
  if (rc != 0 || o->outcome != 0)
    goto done;
  if (rec.exists) {
    rc = load_current(c, ch->key->id.data, &ncur);
    if (rc != 0)
      goto done;
  }
  rc = reserve_cur(c, ncur + 1);
  if (rc != 0)
    goto done;
  for (i = 0; i < ncur; i++) {
    c->refs[i].vv = &c->cur[i].vv;
    c->refs[i].hash = c->cur[i].hash;
  }
  inref.vv = &c->in_vv;
  inref.hash = ch->version->hash.data;
  fsp_merge(c->refs, ncur, &inref, c->keep, &res);
  switch (res.outcome) {
  case FSP_MERGE_KNOWN:
    o->outcome = FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN;
    goto done;
  case FSP_MERGE_STALE:
    o->outcome = FIELDSYNC__OUTCOME__OUTCOME_STALE;
    rc = insert_version(c, who, ch, len, deleted, false, received, &pf);
    goto done;
  case FSP_MERGE_CONFLICT:
    o->outcome = FIELDSYNC__OUTCOME__OUTCOME_CONFLICT;
    break;
  case FSP_MERGE_REUSE:
    o->outcome = FIELDSYNC__OUTCOME__OUTCOME_CONFLICT;
    snprintf(o->reason, sizeof(o->reason),
             "replica id reused: an equal version vector with different "
             "content; both versions kept");
    break;
  case FSP_MERGE_NEW:
  case FSP_MERGE_SUPERSEDED:
    o->outcome = FIELDSYNC__OUTCOME__OUTCOME_APPLIED;
    break;
  }
  for (i = 0; i < ncur; i++) {
    if (!c->keep[i]) {
      rc = supersede(c, c->cur[i].seq);
      if (rc != 0)
        goto done;
    }
  }
  rc = insert_version(c, who, ch, len, deleted, true, received, &pf);
  if (rc == 0)
    rc = upsert_record(c, ch, res.outcome == FSP_MERGE_REUSE, deleted, &pf);
done:
  fsp_payload_free(msg, &budget);
  return rc;
}

/* Orders by record id, then by place in the batch, so versions of one
 * record keep their order (PROTOCOL.md: merged in order). */
static int order_cmp(const void *pa, const void *pb) {
  const struct order_entry *a = pa;
  const struct order_entry *b = pb;
  int d;

  if (a->id != NULL && b->id != NULL) {
    d = memcmp(a->id, b->id, FSP_ID_LEN);
    if (d != 0)
      return d;
  } else if (a->id != b->id) {
    return a->id == NULL ? -1 : 1;
  }
  return a->i < b->i ? -1 : a->i > b->i;
}

int srv_store_push(struct srv_store_conn *c, const struct srv_identity *who,
                   Fieldsync__Change *const *changes, size_t n,
                   const struct fsp_limits *lim, struct srv_outcome *out) {
  struct fsp_limits deflim;
  struct push_auth auth;
  int64_t received = now_ms();
  size_t k;
  int rc;

  if (lim == NULL) {
    fsp_limits_default(&deflim);
    lim = &deflim;
  }
  if (n == 0)
    return 0;
  if (c->in_txn && sqlite3_get_autocommit(c->db))
    return set_err(c, SRV_STORE_EIO,
                   "the transaction was rolled back by an earlier error");
  if (n > c->order_cap) {
    struct order_entry *o = fsp_realloc(c->order, n * sizeof(*o));
    if (o == NULL)
      return set_err(c, SRV_STORE_ENOMEM, "out of memory");
    c->order = o;
    c->order_cap = n;
  }
  /* Applying in key order keeps SQLite's B-tree inserts local. */
  for (k = 0; k < n; k++) {
    const Fieldsync__Change *ch = changes[k];
    c->order[k].i = k;
    c->order[k].id = ch != NULL && ch->key != NULL &&
                             bytes_ok(ch->key->has_id, &ch->key->id, FSP_ID_LEN)
                         ? ch->key->id.data
                         : NULL;
  }
  qsort(c->order, n, sizeof(*c->order), order_cmp);
  memset(&auth, 0, sizeof(auth));
  auth.who = who;
  auth.all = true;
  rc = run(c, ST_SAVEPOINT, "starting a savepoint");
  if (rc != 0)
    return rc;
  /* The scopes are read in the push's own transaction, so no assignment
   * can change between the check and the write. */
  if (who != NULL) {
    rc = srv_store_scopes(c, who, received, &auth.scopes, &auth.nscopes,
                          &auth.all);
    if (rc != 0)
      goto fail;
  }
  for (k = 0; k < n; k++) {
    size_t i = c->order[k].i;
    rc = push_one(c, &auth, changes[i], lim, received, &out[i]);
    if (rc != 0)
      goto fail;
  }
  rc = run(c, ST_RELEASE, "releasing a savepoint");
  if (rc != 0)
    goto fail;
  fsp_free(auth.scopes);
  return 0;
fail:
  savepoint_abort(c);
  fsp_free(auth.scopes);
  return rc;
}

/* ---- pull -------------------------------------------------------------- */

/* A feed change and everything it points to, in one allocation: this
 * struct, then nvv VvEntry, nvv pointers, the vector's bytes, the payload
 * and the author. `c` comes first, so the Change pointer is the block. */
struct page_change {
  Fieldsync__Change c;
  Fieldsync__RecordKey key;
  Fieldsync__ScopeKey scope;
  Fieldsync__Version v;
  uint8_t id[FSP_ID_LEN];
  uint8_t scope_id[FSP_ID_LEN];
  uint8_t hash[FSP_HASH_LEN];
};

static uint64_t load_be64(const uint8_t *p) {
  uint64_t x = 0;
  int i;

  for (i = 0; i < 8; i++)
    x = (x << 8) | p[i];
  return x;
}

/* Builds the change of the current pull row. */
static int build_change(struct srv_store_conn *c, sqlite3_stmt *st,
                        Fieldsync__Change **out) {
  struct page_change *pc;
  Fieldsync__VvEntry *e;
  Fieldsync__VvEntry **ep;
  uint8_t *vvb;
  uint8_t *bytes;
  int64_t seq = sqlite3_column_int64(st, 0);
  size_t vvlen = (size_t)sqlite3_column_bytes(st, 6);
  size_t plen = (size_t)sqlite3_column_bytes(st, 8);
  size_t alen = (size_t)sqlite3_column_bytes(st, 9);
  bool deleted = sqlite3_column_int(st, 7) != 0;
  bool has_author = sqlite3_column_type(st, 9) != SQLITE_NULL;
  size_t nvv = vvlen / FSP_VV_ENTRY_BYTES;
  size_t i;

  *out = NULL;
  if (sqlite3_column_bytes(st, 1) != FSP_ID_LEN ||
      sqlite3_column_bytes(st, 4) != FSP_ID_LEN ||
      sqlite3_column_bytes(st, 5) != FSP_HASH_LEN || vvlen == 0 ||
      vvlen % FSP_VV_ENTRY_BYTES != 0)
    return set_err(c, SRV_STORE_ECORRUPT, "stored version %lld is damaged",
                   (long long)seq);
  pc = fsp_malloc(sizeof(*pc) + nvv * (sizeof(*e) + sizeof(*ep)) + vvlen +
                  plen + alen + 1);
  if (pc == NULL)
    return set_err(c, SRV_STORE_ENOMEM, "out of memory");
  e = (Fieldsync__VvEntry *)(pc + 1);
  ep = (Fieldsync__VvEntry **)(e + nvv);
  vvb = (uint8_t *)(ep + nvv);
  bytes = vvb + vvlen;

  fieldsync__change__init(&pc->c);
  fieldsync__record_key__init(&pc->key);
  fieldsync__scope_key__init(&pc->scope);
  fieldsync__version__init(&pc->v);
  memcpy(pc->id, sqlite3_column_blob(st, 1), FSP_ID_LEN);
  memcpy(pc->scope_id, sqlite3_column_blob(st, 4), FSP_ID_LEN);
  memcpy(pc->hash, sqlite3_column_blob(st, 5), FSP_HASH_LEN);
  memcpy(vvb, sqlite3_column_blob(st, 6), vvlen);

  pc->key.has_collection = 1;
  pc->key.collection = (Fieldsync__Collection)sqlite3_column_int(st, 2);
  pc->key.has_id = 1;
  pc->key.id.data = pc->id;
  pc->key.id.len = FSP_ID_LEN;
  pc->scope.has_kind = 1;
  pc->scope.kind = (Fieldsync__ScopeKind)sqlite3_column_int(st, 3);
  pc->scope.has_id = 1;
  pc->scope.id.data = pc->scope_id;
  pc->scope.id.len = FSP_ID_LEN;

  for (i = 0; i < nvv; i++) {
    uint8_t *p = vvb + i * FSP_VV_ENTRY_BYTES;
    fieldsync__vv_entry__init(&e[i]);
    e[i].has_replica = 1;
    e[i].replica.data = p;
    e[i].replica.len = FSP_ID_LEN;
    e[i].has_counter = 1;
    e[i].counter = load_be64(p + FSP_ID_LEN);
    ep[i] = &e[i];
  }
  pc->v.n_vv = nvv;
  pc->v.vv = ep;
  pc->v.has_hash = 1;
  pc->v.hash.data = pc->hash;
  pc->v.hash.len = FSP_HASH_LEN;
  if (deleted) {
    pc->v.has_deleted = 1;
    pc->v.deleted = 1;
  } else {
    if (plen > 0)
      memcpy(bytes, sqlite3_column_blob(st, 8), plen);
    pc->v.has_payload = 1;
    pc->v.payload.data = bytes;
    pc->v.payload.len = plen;
  }
  bytes += plen;
  if (has_author) {
    if (alen > 0)
      memcpy(bytes, sqlite3_column_text(st, 9), alen);
    bytes[alen] = '\0';
    pc->v.author = (char *)bytes;
  }
  if (sqlite3_column_type(st, 10) != SQLITE_NULL) {
    pc->v.has_device_time_ms = 1;
    pc->v.device_time_ms = sqlite3_column_int64(st, 10);
  }
  pc->c.key = &pc->key;
  pc->c.scope = &pc->scope;
  pc->c.version = &pc->v;
  pc->c.has_seq = 1;
  pc->c.seq = (uint64_t)seq;
  *out = &pc->c;
  return 0;
}

/* Bytes a change adds to an encoded Changes message: the field tag, the
 * length varint and the change itself. */
static size_t change_wire_size(const Fieldsync__Change *ch) {
  size_t n = fieldsync__change__get_packed_size(ch);
  size_t len = 1;
  size_t x;

  for (x = n; x >= 0x80; x >>= 7)
    len++;
  return 1 + len + n;
}

/* Appends ch to the page, or says it does not fit. Returns 0 and sets
 * *taken, or ENOMEM. A change that would pass max_bytes is not taken
 * (and is freed) unless the page is empty: a page holds at least one. */
static int page_add(struct srv_store_conn *c, struct srv_page *page,
                    size_t *cap, size_t *total, size_t max_bytes,
                    uint32_t max_records, Fieldsync__Change *ch, bool *taken) {
  size_t size = change_wire_size(ch);

  *taken = false;
  if (page->n > 0 && (size > max_bytes || *total > max_bytes - size)) {
    fsp_free(ch);
    return 0;
  }
  if (page->n == *cap) {
    size_t ncap = *cap == 0 ? 16 : *cap * 2;
    Fieldsync__Change **nc;
    if (ncap > max_records)
      ncap = max_records;
    nc = fsp_realloc(page->changes, ncap * sizeof(*nc));
    if (nc == NULL) {
      fsp_free(ch);
      return set_err(c, SRV_STORE_ENOMEM, "out of memory");
    }
    page->changes = nc;
    *cap = ncap;
  }
  page->changes[page->n++] = ch;
  *total += size;
  *taken = true;
  return 0;
}

/* The whole feed, for head office and for who NULL: every current version
 * with seq > cursor. next_cursor is the last seq sent (or cursor). */
static int pull_all(struct srv_store_conn *c, const struct srv_pull_req *req,
                    struct srv_page *page) {
  Fieldsync__Change *ch = NULL;
  sqlite3_stmt *st;
  size_t cap = 0;
  size_t total = 0;
  bool taken;
  int rc;

  if (req->cursor >= (uint64_t)INT64_MAX)
    return 0; /* no seq is that large */
  rc = get_stmt(c, ST_PULL, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_int64(st, 1, (sqlite3_int64)req->cursor);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)req->max_records + 1);
  for (;;) {
    int step = sqlite3_step(st);

    if (step == SQLITE_DONE)
      break;
    if (step != SQLITE_ROW) {
      rc = sql_err(c, step, "reading the change feed");
      break;
    }
    if (page->n == req->max_records) {
      page->more = true;
      break;
    }
    rc = build_change(c, st, &ch);
    if (rc == 0)
      rc = page_add(c, page, &cap, &total, req->max_bytes, req->max_records, ch,
                    &taken);
    if (rc != 0)
      break;
    if (!taken) {
      page->more = true; /* this row is after next_cursor */
      break;
    }
    page->next_cursor = ch->seq;
  }
  sqlite3_reset(st);
  return rc;
}

/* One candidate of a scoped page: a current version in a visible scope,
 * and whether who may read it. */
struct cand {
  int64_t seq;
  bool readable;
};

static int cand_cmp(const void *pa, const void *pb) {
  const struct cand *a = pa;
  const struct cand *b = pb;

  return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Whether who may read the row (seq, collection, owner) of a scope query. */
static bool row_readable(const struct srv_identity *who, sqlite3_stmt *st) {
  const unsigned char *owner = sqlite3_column_text(st, 2);
  bool own = owner != NULL && who->user[0] != '\0' &&
             strcmp((const char *)owner, who->user) == 0;

  return srv_policy_may_read(who->role, sqlite3_column_int(st, 1), own);
}

/* Outcome of filling a page from candidates. */
enum fill_end {
  FILL_ALL, /* every candidate was looked at */
  FILL_FULL /* the page is full: candidates from *last on remain */
};

/* Takes the readable versions among cand[0..n) (in seq order) into the
 * page, fetching each by seq, until max_records or max_bytes. *last gets
 * the last seq looked at (taken or passed over as unreadable), or is left
 * alone when none was. */
static int fill_page(struct srv_store_conn *c, const struct srv_pull_req *req,
                     uint32_t max_records, const struct cand *cand, size_t n,
                     struct srv_page *page, uint64_t *last,
                     enum fill_end *end) {
  size_t cap = 0;
  size_t total = 0;
  size_t i;
  int rc = 0;

  *end = FILL_ALL;
  for (i = 0; i < n; i++) {
    Fieldsync__Change *ch = NULL;
    sqlite3_stmt *st;
    bool taken;
    int step;

    if (!cand[i].readable) {
      *last = (uint64_t)cand[i].seq;
      continue;
    }
    if (page->n == max_records) {
      *end = FILL_FULL;
      return 0;
    }
    rc = get_stmt(c, ST_VERSION_BY_SEQ, &st);
    if (rc != 0)
      return rc;
    sqlite3_bind_int64(st, 1, cand[i].seq);
    step = sqlite3_step(st);
    if (step == SQLITE_ROW)
      rc = build_change(c, st, &ch);
    else if (step == SQLITE_DONE) /* cannot be: same read transaction */
      rc = set_err(c, SRV_STORE_ECORRUPT, "version %lld vanished",
                   (long long)cand[i].seq);
    else
      rc = sql_err(c, step, "reading a version");
    sqlite3_reset(st);
    if (rc == 0)
      rc = page_add(c, page, &cap, &total, req->max_bytes, max_records, ch,
                    &taken);
    if (rc != 0)
      return rc;
    if (!taken) {
      *end = FILL_FULL;
      return 0;
    }
    *last = (uint64_t)cand[i].seq;
  }
  return 0;
}

/* Appends a candidate to (*v, *n, *cap). */
static int cand_push(struct srv_store_conn *c, struct cand **v, size_t *n,
                     size_t *cap, int64_t seq, bool readable) {
  if (*n == *cap) {
    size_t ncap = *cap == 0 ? 64 : *cap * 2;
    struct cand *nv = fsp_realloc(*v, ncap * sizeof(*nv));
    if (nv == NULL)
      return set_err(c, SRV_STORE_ENOMEM, "out of memory");
    *v = nv;
    *cap = ncap;
  }
  (*v)[*n].seq = seq;
  (*v)[*n].readable = readable;
  (*n)++;
  return 0;
}

/* A backfill page of scope s (PROTOCOL.md, Scopes): the current versions
 * of s that who may read with after < seq <= cursor, in seq order. Rows
 * who may not read are passed over, at most max_records +
 * SRV_BACKFILL_SKIP rows a page, so one page's work stays bounded. */
static int pull_backfill(struct srv_store_conn *c,
                         const struct srv_identity *who,
                         const struct srv_pull_req *req, uint32_t max_records,
                         const struct srv_scope *s, struct srv_page *page) {
  struct cand *cand = NULL;
  size_t ncand = 0;
  size_t cap = 0;
  uint64_t after = 0;
  uint64_t last;
  size_t examine = (size_t)max_records + SRV_BACKFILL_SKIP;
  size_t readable = 0;
  enum fill_end end;
  sqlite3_stmt *st;
  bool done = true;
  int rc;

  if (req->backfill != NULL && req->backfill->kind == s->kind &&
      memcmp(req->backfill->id, s->id, FSP_ID_LEN) == 0)
    after = req->backfill_after;
  page->backfilling = true;
  page->backfill = *s;
  page->more = true;
  page->next_cursor = req->cursor;
  last = after;
  if (after < req->cursor && after < (uint64_t)INT64_MAX) {
    rc = get_stmt(c, ST_SCOPE_BACKFILL, &st);
    if (rc != 0)
      return rc;
    sqlite3_bind_int(st, 1, s->kind);
    sqlite3_bind_blob(st, 2, s->id, FSP_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)after);
    sqlite3_bind_int64(st, 4,
                       req->cursor > (uint64_t)INT64_MAX
                           ? INT64_MAX
                           : (sqlite3_int64)req->cursor);
    /* One readable row beyond max_records tells whether the page ends
     * the backfill. */
    for (;;) {
      bool r;

      rc = sqlite3_step(st);
      if (rc != SQLITE_ROW)
        break;
      r = row_readable(who, st);
      if (ncand == examine || (r && readable == max_records)) {
        done = false;
        break;
      }
      rc = cand_push(c, &cand, &ncand, &cap, sqlite3_column_int64(st, 0), r);
      if (rc != 0)
        break;
      readable += r;
    }
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
      rc = 0;
    else if (rc > 0)
      rc = sql_err(c, rc, "reading a backfill");
    sqlite3_reset(st);
    if (rc == 0)
      rc = fill_page(c, req, max_records, cand, ncand, page, &last, &end);
    if (rc == 0 && end == FILL_FULL)
      done = false; /* max_bytes stopped it */
    fsp_free(cand);
    if (rc != 0)
      return rc;
  }
  page->backfill_next = last;
  page->backfill_done = done;
  return 0;
}

/* The feed restricted to scopes (PROTOCOL.md, Scopes): per scope, its
 * first max_records + 1 current versions after the cursor from the
 * covering index; a scope that fills that limit bounds the page at its
 * last seq (a version of another scope past it may come before that
 * scope's next ones), and the rest are merged by seq. */
static int pull_feed(struct srv_store_conn *c, const struct srv_identity *who,
                     const struct srv_pull_req *req, uint32_t max_records,
                     const struct srv_scope *scopes, size_t nscopes,
                     struct srv_page *page) {
  struct cand *cand = NULL;
  size_t ncand = 0;
  size_t cap = 0;
  int64_t bound = INT64_MAX;
  bool bounded = false;
  uint64_t last = req->cursor;
  enum fill_end end;
  sqlite3_stmt *st;
  size_t i;
  size_t j;
  int rc = 0;

  page->next_cursor = req->cursor;
  if (req->cursor >= (uint64_t)INT64_MAX)
    return 0;
  for (i = 0; i < nscopes && rc == 0; i++) {
    int64_t k = 0;
    int64_t lastseq = 0;

    rc = get_stmt(c, ST_SCOPE_FEED, &st);
    if (rc != 0)
      break;
    sqlite3_bind_int(st, 1, scopes[i].kind);
    sqlite3_bind_blob(st, 2, scopes[i].id, FSP_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)req->cursor);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)max_records + 1);
    for (;;) {
      rc = sqlite3_step(st);
      if (rc != SQLITE_ROW)
        break;
      lastseq = sqlite3_column_int64(st, 0);
      k++;
      if (lastseq > bound)
        continue; /* not sent this page anyway */
      rc = cand_push(c, &cand, &ncand, &cap, lastseq, row_readable(who, st));
      if (rc != 0)
        break;
    }
    if (rc == SQLITE_DONE)
      rc = 0;
    else if (rc > 0)
      rc = sql_err(c, rc, "reading the change feed");
    sqlite3_reset(st);
    if (rc == 0 && k == (int64_t)max_records + 1 && lastseq < bound) {
      bound = lastseq;
      bounded = true;
    }
  }
  if (rc != 0)
    goto done;
  if (bounded) {
    for (i = 0, j = 0; i < ncand; i++)
      if (cand[i].seq <= bound)
        cand[j++] = cand[i];
    ncand = j;
  }
  if (ncand > 1)
    qsort(cand, ncand, sizeof(*cand), cand_cmp);
  rc = fill_page(c, req, max_records, cand, ncand, page, &last, &end);
  if (rc != 0)
    goto done;
  if (end == FILL_FULL) {
    page->next_cursor = last;
    page->more = true;
  } else if (bounded) {
    page->next_cursor = (uint64_t)bound;
    page->more = true;
  } else {
    /* Nothing more is due: skip to the store's last seq, so an idle
     * device's cursor keeps up (versions of scopes it may see later come
     * by backfill). */
    rc = get_stmt(c, ST_MAX_SEQ, &st);
    if (rc != 0)
      goto done;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      int64_t max = sqlite3_column_int64(st, 0);
      page->next_cursor =
          (uint64_t)max > req->cursor ? (uint64_t)max : req->cursor;
      rc = 0;
    } else {
      rc = sql_err(c, rc, "reading the last seq");
    }
    sqlite3_reset(st);
  }
done:
  fsp_free(cand);
  return rc;
}

/* A Pull for an inspector or an expert: removals, then a backfill or the
 * scoped feed. */
static int pull_scoped(struct srv_store_conn *c, const struct srv_identity *who,
                       const struct srv_pull_req *req, struct srv_page *page) {
  struct srv_scope *scopes = NULL;
  uint32_t max_records = req->max_records > 0 ? req->max_records : 1;
  size_t nscopes = 0;
  size_t i;
  bool all = false;
  int rc;

  rc = srv_store_scopes(c, who, req->now_ms, &scopes, &nscopes, &all);
  if (rc != 0)
    return rc;
  /* Held scopes no longer visible, and a half-done backfill of one: its
   * records already on the device must go too. */
  for (i = 0; i <= req->nheld; i++) {
    const struct srv_scope *h = i < req->nheld ? &req->held[i] : req->backfill;
    if (h == NULL || scope_in(scopes, nscopes, h->kind, h->id) ||
        (i == req->nheld && scope_in(req->held, req->nheld, h->kind, h->id)))
      continue;
    if (page->removed == NULL) {
      page->removed = fsp_malloc((req->nheld + 1) * sizeof(*page->removed));
      if (page->removed == NULL) {
        rc = set_err(c, SRV_STORE_ENOMEM, "out of memory");
        goto done;
      }
    }
    page->removed[page->nremoved++] = *h;
  }
  for (i = 0; i < nscopes; i++) {
    if (!scope_in(req->held, req->nheld, scopes[i].kind, scopes[i].id)) {
      rc = pull_backfill(c, who, req, max_records, &scopes[i], page);
      goto done;
    }
  }
  rc = pull_feed(c, who, req, max_records, scopes, nscopes, page);
done:
  fsp_free(scopes);
  return rc;
}

int srv_store_pull(struct srv_store_conn *c, const struct srv_identity *who,
                   const struct srv_pull_req *req, struct srv_page *page) {
  bool own_txn;
  int rc;

  memset(page, 0, sizeof(*page));
  page->next_cursor = req->cursor;
  /* One read transaction: scopes, feed and the last seq are one snapshot. */
  own_txn = sqlite3_get_autocommit(c->db) != 0;
  if (own_txn) {
    rc = run(c, ST_BEGIN_READ, "starting a read");
    if (rc != 0)
      return rc;
  }
  if (who == NULL || who->role == FIELDSYNC__ROLE__ROLE_HEAD_OFFICE)
    rc = pull_all(c, req, page);
  else
    rc = pull_scoped(c, who, req, page);
  if (own_txn) {
    if (rc == 0) {
      rc = run(c, ST_COMMIT, "ending a read");
    }
    if (rc != 0 && !sqlite3_get_autocommit(c->db)) {
      char keep[sizeof(c->errmsg)];
      memcpy(keep, c->errmsg, sizeof(keep));
      run(c, ST_ROLLBACK, "ending a read");
      memcpy(c->errmsg, keep, sizeof(keep));
    }
  }
  if (rc != 0) {
    srv_page_free(page);
    memset(page, 0, sizeof(*page));
    page->next_cursor = req->cursor;
  }
  return rc;
}

void srv_page_free(struct srv_page *page) {
  size_t i;

  if (page == NULL)
    return;
  for (i = 0; i < page->n; i++)
    fsp_free(page->changes[i]); /* one block per change (build_change) */
  fsp_free(page->changes);
  fsp_free(page->removed);
  page->changes = NULL;
  page->n = 0;
  page->more = false;
  page->removed = NULL;
  page->nremoved = 0;
}

/* ---- for tests and operators ------------------------------------------- */

int srv_store_counts(struct srv_store_conn *c, int64_t *records,
                     int64_t *history, int64_t *current) {
  sqlite3_stmt *st = NULL;
  int rc =
      sqlite3_prepare_v2(c->db,
                         "SELECT (SELECT count(*) FROM records), "
                         "(SELECT count(*) FROM versions), "
                         "(SELECT count(*) FROM versions WHERE current = 1)",
                         -1, &st, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *records = sqlite3_column_int64(st, 0);
    *history = sqlite3_column_int64(st, 1);
    *current = sqlite3_column_int64(st, 2);
    rc = 0;
  } else {
    rc = sql_err(c, rc, "counting");
  }
  sqlite3_finalize(st);
  return rc;
}

/* Fails unless every hot statement is answered from an index (its own
 * one where it needs a particular one): no full scan and no sort, whatever
 * the database's size. */
static int check_plans(struct srv_store_conn *c) {
  char sql[1024];
  size_t i;

  for (i = 0; i < sizeof(indexed_stmts) / sizeof(indexed_stmts[0]); i++) {
    const char *q = stmt_sql[indexed_stmts[i].id];
    const char *want = indexed_stmts[i].index;
    sqlite3_stmt *st = NULL;
    bool found = want == NULL;
    int ret = 0;
    int rc;

    snprintf(sql, sizeof(sql), "EXPLAIN QUERY PLAN %s", q);
    rc = sqlite3_prepare_v2(c->db, sql, -1, &st, NULL);
    for (;;) {
      const char *d;

      if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
      if (rc != SQLITE_ROW)
        break;
      rc = SQLITE_OK;
      d = (const char *)sqlite3_column_text(st, 3);
      if (d == NULL)
        continue;
      if (strncmp(d, "SCAN", 4) == 0 || strstr(d, "TEMP B-TREE") != NULL) {
        ret = set_err(c, SRV_STORE_ECORRUPT,
                      "query plan without an index (%s) for: %s", d, q);
        break;
      }
      if (want != NULL && strstr(d, want) != NULL)
        found = true;
    }
    if (ret == 0 && rc != SQLITE_DONE)
      ret = sql_err(c, rc, "explaining a query");
    if (ret == 0 && !found)
      ret = set_err(c, SRV_STORE_ECORRUPT,
                    "query plan does not use index %s for: %s", want, q);
    sqlite3_finalize(st);
    if (ret != 0)
      return ret;
  }
  return 0;
}

int srv_store_check(struct srv_store_conn *c) {
  sqlite3_stmt *st = NULL;
  const unsigned char *text;
  int rc = sqlite3_prepare_v2(c->db, "PRAGMA integrity_check", -1, &st, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    rc = sql_err(c, rc, "checking the database");
    goto done;
  }
  text = sqlite3_column_text(st, 0);
  if (text == NULL || strcmp((const char *)text, "ok") != 0) {
    rc = set_err(c, SRV_STORE_ECORRUPT, "integrity check: %s",
                 text != NULL ? (const char *)text : "(no answer)");
    goto done;
  }
  rc = check_plans(c);
done:
  sqlite3_finalize(st);
  return rc;
}
