/* SPDX-License-Identifier: MIT */
/* The server store (srv_store.h): creating, upgrading and refusing
 * databases, users, devices, token auth with replica binding and
 * revocation, visit assignments and scopes, every push outcome of the merge
 * and of the role policy, the history, the change feed's paging, cursors,
 * scoped feeds and backfills, its query plans, transactions, and failed
 * allocations. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include "fsp_alloc.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"
#include "srv_store.h"

#define OUT_APPLIED FIELDSYNC__OUTCOME__OUTCOME_APPLIED
#define OUT_KNOWN FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN
#define OUT_CONFLICT FIELDSYNC__OUTCOME__OUTCOME_CONFLICT
#define OUT_REFUSED FIELDSYNC__OUTCOME__OUTCOME_REFUSED
#define OUT_STALE FIELDSYNC__OUTCOME__OUTCOME_STALE
#define ERR_INVALID FIELDSYNC__ERROR_CODE__ERR_INVALID
#define ERR_FORBIDDEN FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN
#define ROLE_INSPECTOR FIELDSYNC__ROLE__ROLE_INSPECTOR
#define ROLE_EXPERT FIELDSYNC__ROLE__ROLE_EXPERT
#define ROLE_HEAD_OFFICE FIELDSYNC__ROLE__ROLE_HEAD_OFFICE
#define K_VISIT FIELDSYNC__SCOPE_KIND__SCOPE_VISIT
#define K_SERVICE FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE

/* The change-feed query of srv_store_sqlite.c (ST_PULL), for its plan. */
#define PULL_SQL                                                               \
  "SELECT seq, record, collection, scope_kind, scope_id, hash, vv, deleted, "  \
  "payload, author, device_time_ms FROM versions WHERE current = 1 AND "       \
  "seq > ?1 ORDER BY seq LIMIT ?2"

static char dir[64];
static char dbpath[128];
static struct srv_store *store;
static struct srv_store_conn *conn;
/* Head office: the policy allows it everything, in every scope. */
static const struct srv_identity tester = {7, 3, "tester",
                                           FIELDSYNC__ROLE__ROLE_HEAD_OFFICE};

static void setup_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/fs-srvstore-XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
}

static void path_in(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

/* A fresh directory and a new store with one connection in it. */
static void open_fresh(void) {
  char err[256];

  setup_dir();
  path_in(dbpath, sizeof(dbpath), "server.db");
  if (srv_store_open(dbpath, &store, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", dbpath, err);
  if (srv_store_conn_open(store, &conn, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "conn %s: %s", dbpath, err);
}

static void close_all(void) {
  srv_store_conn_close(conn);
  srv_store_close(store);
  conn = NULL;
  store = NULL;
}

/* Runs sql on the database with a connection of its own. */
static void sql_exec(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  char *msg = NULL;

  ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, msg);
  sqlite3_close(db);
}

/* The integer the query returns, or -1 for no row. */
static int64_t sql_int(const char *path, const char *sql) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int64_t v = -1;

  ASSERT_EQ(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
  if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(db));
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return v;
}

static void counts(int64_t *records, int64_t *history, int64_t *current) {
  if (srv_store_counts(conn, records, history, current) != 0)
    test_fail(__FILE__, __LINE__, "counts: %s", srv_store_errmsg(conn));
}

/* Reads a whole file (at most cap bytes); returns its length. */
static size_t slurp(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  size_t n;

  ASSERT(f != NULL);
  n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

/* True when needle[0..n) occurs in hay[0..len). */
static bool contains(const char *hay, size_t len, const char *needle,
                     size_t n) {
  size_t i;

  for (i = 0; i + n <= len; i++)
    if (memcmp(hay + i, needle, n) == 0)
      return true;
  return false;
}

static bool file_exists(const char *path) {
  struct stat sb;

  return stat(path, &sb) == 0;
}

/* Sets a sample's two vector counters. */
static void set_vv(struct sample_change *s, uint64_t a, uint64_t b) {
  s->e[0].counter = a;
  s->e[1].counter = b;
}

/* Gives a sample other content (and so another hash). */
static void set_evidence(struct sample_change *s, const char *text) {
  snprintf(s->evidence, sizeof(s->evidence), "%s", text);
  sample_change_repack(s);
}

/* Pushes n changes in a transaction of their own and commits. */
static void push(Fieldsync__Change *const *ch, size_t n,
                 struct srv_outcome *out) {
  struct fsp_limits lim;

  fsp_limits_default(&lim);
  ASSERT_OK(srv_store_begin(conn));
  if (srv_store_push(conn, &tester, ch, n, &lim, out) != 0)
    test_fail(__FILE__, __LINE__, "push: %s", srv_store_errmsg(conn));
  if (srv_store_commit(conn) != 0)
    test_fail(__FILE__, __LINE__, "commit: %s", srv_store_errmsg(conn));
}

/* Pushes one change; returns its outcome. */
static int push1(struct sample_change *s, struct srv_outcome *o) {
  Fieldsync__Change *ch = &s->c;
  struct srv_outcome local;

  if (o == NULL)
    o = &local;
  push(&ch, 1, o);
  return o->outcome;
}

/* Current versions of the sample's record, by direct SQL. */
static int64_t current_of(const uint8_t id[16]) {
  char sql[160];
  char hex[33];
  int i;

  for (i = 0; i < 16; i++)
    snprintf(hex + 2 * i, 3, "%02x", id[i]);
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM versions WHERE record = x'%s' AND "
           "current = 1",
           hex);
  return sql_int(dbpath, sql);
}

/* A Pull of the whole feed (no scopes). */
static struct srv_pull_req feed_req(uint64_t cursor, uint32_t max,
                                    size_t max_bytes) {
  struct srv_pull_req req;

  memset(&req, 0, sizeof(req));
  req.cursor = cursor;
  req.max_records = max;
  req.max_bytes = max_bytes;
  return req;
}

/* Pulls a page and checks every change is a valid server change. */
static void pull(uint64_t cursor, uint32_t max, size_t max_bytes,
                 struct srv_page *page) {
  struct srv_pull_req req = feed_req(cursor, max, max_bytes);
  struct fsp_limits lim;
  struct fsp_error err;
  size_t i;

  fsp_limits_default(&lim);
  if (srv_store_pull(conn, NULL, &req, page) != 0)
    test_fail(__FILE__, __LINE__, "pull: %s", srv_store_errmsg(conn));
  for (i = 0; i < page->n; i++) {
    if (fsp_msg_validate_change(page->changes[i], &lim, true, "pulled", &err) !=
        0)
      test_fail(__FILE__, __LINE__, "pulled change %zu: %s", i, err.msg);
  }
}

/* ---- opening ----------------------------------------------------------- */

TEST(store_open_create_reopen) {
  uint8_t id1[16];
  uint8_t id2[16];
  uint8_t zero[16] = {0};
  char err[256];

  open_fresh();
  srv_store_server_id(store, id1);
  ASSERT(memcmp(id1, zero, 16) != 0);
  ASSERT_OK(srv_store_check(conn));
  close_all();
  ASSERT_OK(srv_store_open(dbpath, &store, err, sizeof(err)));
  srv_store_server_id(store, id2);
  ASSERT_MEM_EQ(id1, id2, 16);
  srv_store_close(store);
  store = NULL;
  ASSERT_EQ(sql_int(dbpath, "PRAGMA user_version"), 2);
  ASSERT_EQ(sql_int(dbpath, "SELECT value FROM meta WHERE key = "
                            "'auth_epoch'"),
            0);
  ASSERT_EQ(sql_int(dbpath, "SELECT journal_mode = 'wal' FROM "
                            "pragma_journal_mode"),
            1);
  ASSERT_EQ(sql_int(dbpath, "SELECT length(value) FROM meta "
                            "WHERE key = 'server_id'"),
            16);
}

TEST(store_two_servers_have_different_ids) {
  struct srv_store *other = NULL;
  uint8_t a[16];
  uint8_t b[16];
  char path[128];
  char err[256];

  open_fresh();
  path_in(path, sizeof(path), "other.db");
  ASSERT_OK(srv_store_open(path, &other, err, sizeof(err)));
  srv_store_server_id(store, a);
  srv_store_server_id(other, b);
  ASSERT(memcmp(a, b, 16) != 0);
  srv_store_close(other);
  close_all();
}

TEST(store_refuses_text_file) {
  static const char text[] = "this is not a database, just some notes\n";
  char path[128];
  char wal[160];
  char buf[256];
  char err[256];
  struct srv_store *s = NULL;
  FILE *f;

  setup_dir();
  path_in(path, sizeof(path), "notes.txt");
  f = fopen(path, "wb");
  ASSERT(f != NULL);
  fputs(text, f);
  fclose(f);
  ASSERT_EQ(srv_store_open(path, &s, err, sizeof(err)), SRV_STORE_ECORRUPT);
  ASSERT(s == NULL);
  ASSERT(strstr(err, "not a fieldsync server database") != NULL);
  ASSERT_EQ(slurp(path, buf, sizeof(buf)), strlen(text));
  ASSERT_MEM_EQ(buf, text, strlen(text));
  snprintf(wal, sizeof(wal), "%s-wal", path);
  ASSERT(!file_exists(wal));
}

/* Copies a file's bytes to compare it later. */
static size_t snapshot(const char *path, char *buf, size_t cap) {
  size_t n = slurp(path, buf, cap);

  ASSERT(n < cap);
  return n;
}

TEST(store_refuses_foreign_sqlite) {
  static char before[1 << 16];
  static char after[1 << 16];
  char path[128];
  char err[256];
  struct srv_store *s = NULL;
  size_t n;

  setup_dir();
  path_in(path, sizeof(path), "foreign.db");
  sql_exec(path, "CREATE TABLE t(a, b); INSERT INTO t VALUES(1, 2);");
  n = snapshot(path, before, sizeof(before));
  ASSERT_EQ(srv_store_open(path, &s, err, sizeof(err)), SRV_STORE_ECORRUPT);
  ASSERT(strstr(err, "not a fieldsync server database") != NULL);
  ASSERT_EQ(snapshot(path, after, sizeof(after)), n);
  ASSERT_MEM_EQ(before, after, n);
  ASSERT_EQ(sql_int(path, "PRAGMA user_version"), 0);
  ASSERT_EQ(sql_int(path, "SELECT journal_mode = 'delete' FROM "
                          "pragma_journal_mode"),
            1);
}

TEST(store_refuses_client_database) {
  static char before[1 << 16];
  static char after[1 << 16];
  char path[128];
  char err[256];
  struct srv_store *s = NULL;
  size_t n;

  /* What a libfieldsync database looks like from outside: user_version 1,
   * a meta table with a replica id. */
  setup_dir();
  path_in(path, sizeof(path), "client.db");
  sql_exec(path, "CREATE TABLE meta(key TEXT PRIMARY KEY, value) "
                 "WITHOUT ROWID;"
                 "INSERT INTO meta VALUES('replica_id', randomblob(16));"
                 "PRAGMA user_version = 1;");
  n = snapshot(path, before, sizeof(before));
  ASSERT_EQ(srv_store_open(path, &s, err, sizeof(err)), SRV_STORE_ECORRUPT);
  ASSERT(strstr(err, "client database") != NULL);
  ASSERT_EQ(snapshot(path, after, sizeof(after)), n);
  ASSERT_MEM_EQ(before, after, n);
}

TEST(store_refuses_unopenable_paths) {
  char path[160];
  char err[256];
  struct srv_store *s = NULL;

  setup_dir();
  ASSERT_EQ(srv_store_open(dir, &s, err, sizeof(err)), SRV_STORE_EIO);
  ASSERT(strstr(err, "directory") != NULL);
  path_in(path, sizeof(path), "no/such/dir/server.db");
  ASSERT_EQ(srv_store_open(path, &s, err, sizeof(err)), SRV_STORE_EIO);
  ASSERT(strstr(err, "cannot open") != NULL);
  ASSERT_EQ(srv_store_open("", &s, err, sizeof(err)), SRV_STORE_EINVAL);
  ASSERT(s == NULL);
}

/* ---- users, devices, auth ---------------------------------------------- */

TEST(users_and_devices) {
  char token[SRV_TOKEN_LEN + 1];
  char name[80];
  int64_t dev = 0;
  size_t i;

  open_fresh();
  ASSERT_OK(srv_store_user_add(conn, "j.smith", 1));
  ASSERT_EQ(srv_store_user_add(conn, "j.smith", 2), SRV_STORE_EEXISTS);
  ASSERT(strstr(srv_store_errmsg(conn), "already exists") != NULL);
  ASSERT_EQ(srv_store_user_add(conn, "", 1), SRV_STORE_EINVAL);
  ASSERT_EQ(srv_store_user_add(conn, "bad name", 1), SRV_STORE_EINVAL);
  ASSERT_EQ(srv_store_user_add(conn, "bad/name", 1), SRV_STORE_EINVAL);
  memset(name, 'a', sizeof(name));
  name[SRV_NAME_MAX] = '\0';
  ASSERT_OK(srv_store_user_add(conn, name, 3));
  name[SRV_NAME_MAX] = 'a';
  name[SRV_NAME_MAX + 1] = '\0';
  ASSERT_EQ(srv_store_user_add(conn, name, 3), SRV_STORE_EINVAL);
  ASSERT_EQ(srv_store_user_add(conn, "x", 0), SRV_STORE_EINVAL);
  ASSERT_EQ(srv_store_user_add(conn, "x", 4), SRV_STORE_EINVAL);

  ASSERT_EQ(srv_store_device_add(conn, "nobody", token, &dev),
            SRV_STORE_ENOTFOUND);
  ASSERT_OK(srv_store_device_add(conn, "j.smith", token, &dev));
  ASSERT_GT(dev, 0);
  ASSERT_EQ(strlen(token), SRV_TOKEN_LEN);
  ASSERT(strncmp(token, "fst_", 4) == 0);
  for (i = 4; i < SRV_TOKEN_LEN; i++)
    ASSERT(strchr("0123456789abcdef", token[i]) != NULL);
  ASSERT_EQ(sql_int(dbpath, "SELECT count(*) FROM devices"), 1);
  ASSERT_EQ(sql_int(dbpath, "SELECT length(token_hash) FROM devices"), 32);
  close_all();
}

static const uint8_t replica_a[16] = {0xa1, 1, 2,  3,  4,  5,  6,  7,
                                      8,    9, 10, 11, 12, 13, 14, 15};
static const uint8_t replica_b[16] = {0xb2, 1, 2,  3,  4,  5,  6,  7,
                                      8,    9, 10, 11, 12, 13, 14, 15};

TEST(auth_tokens) {
  char t1[SRV_TOKEN_LEN + 1];
  char t2[SRV_TOKEN_LEN + 1];
  char bad[SRV_TOKEN_LEN + 8];
  struct srv_identity who;
  int64_t d1 = 0;
  int64_t d2 = 0;

  open_fresh();
  ASSERT_OK(srv_store_user_add(conn, "insp", 1));
  ASSERT_OK(srv_store_user_add(conn, "office", 3));
  ASSERT_OK(srv_store_device_add(conn, "insp", t1, &d1));
  ASSERT_OK(srv_store_device_add(conn, "office", t2, &d2));
  ASSERT(strcmp(t1, t2) != 0);

  ASSERT_OK(srv_store_auth(conn, t1, replica_a, &who));
  ASSERT_EQ(who.device_id, d1);
  ASSERT_STR_EQ(who.user, "insp");
  ASSERT_EQ(who.role, FIELDSYNC__ROLE__ROLE_INSPECTOR);
  ASSERT_OK(srv_store_auth(conn, t2, replica_b, &who));
  ASSERT_EQ(who.device_id, d2);
  ASSERT_STR_EQ(who.user, "office");
  ASSERT_EQ(who.role, FIELDSYNC__ROLE__ROLE_HEAD_OFFICE);
  ASSERT_GT(who.user_id, 0);

  /* A well-formed token nobody was given. */
  memcpy(bad, t1, sizeof(t1));
  bad[10] = bad[10] == 'a' ? 'b' : 'a';
  ASSERT_EQ(srv_store_auth(conn, bad, replica_a, &who), SRV_STORE_ENOTFOUND);
  ASSERT(strstr(srv_store_errmsg(conn), bad) == NULL);
  ASSERT_EQ(who.device_id, 0);
  /* Malformed: short, long, upper case, wrong prefix, empty, NULL. */
  memcpy(bad, t1, sizeof(t1));
  bad[SRV_TOKEN_LEN - 1] = '\0';
  ASSERT_EQ(srv_store_auth(conn, bad, replica_a, &who), SRV_STORE_ENOTFOUND);
  snprintf(bad, sizeof(bad), "%s0", t1);
  ASSERT_EQ(srv_store_auth(conn, bad, replica_a, &who), SRV_STORE_ENOTFOUND);
  memcpy(bad, t1, sizeof(t1));
  bad[20] = 'A';
  ASSERT_EQ(srv_store_auth(conn, bad, replica_a, &who), SRV_STORE_ENOTFOUND);
  memcpy(bad, t1, sizeof(t1));
  bad[0] = 'x';
  ASSERT_EQ(srv_store_auth(conn, bad, replica_a, &who), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_auth(conn, "", replica_a, &who), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_auth(conn, NULL, replica_a, &who), SRV_STORE_ENOTFOUND);

  /* Revoked device, then deleted user (the other device). */
  ASSERT_OK(srv_store_device_revoke(conn, d1));
  ASSERT_EQ(srv_store_auth(conn, t1, replica_a, &who), SRV_STORE_EREVOKED);
  ASSERT(strstr(srv_store_errmsg(conn), "revoked") != NULL);
  ASSERT_EQ(who.device_id, 0);
  ASSERT_OK(srv_store_auth(conn, t2, replica_b, &who));
  ASSERT_OK(srv_store_user_delete(conn, "office"));
  ASSERT_EQ(srv_store_auth(conn, t2, replica_b, &who), SRV_STORE_EREVOKED);
  ASSERT(strstr(srv_store_errmsg(conn), "deleted") != NULL ||
         strstr(srv_store_errmsg(conn), "revoked") != NULL);
  /* A deleted user gets no new device, and is not deleted twice. */
  ASSERT_EQ(srv_store_device_add(conn, "office", t2, &d2), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_user_delete(conn, "office"), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_user_delete(conn, "nobody"), SRV_STORE_ENOTFOUND);
  close_all();
}

TEST(tokens_are_not_stored) {
  static char buf[1 << 20];
  char t[SRV_TOKEN_LEN + 1];
  char wal[160];
  size_t n;

  open_fresh();
  ASSERT_OK(srv_store_user_add(conn, "insp", 1));
  ASSERT_OK(srv_store_device_add(conn, "insp", t, NULL));
  close_all();
  n = slurp(dbpath, buf, sizeof(buf));
  snprintf(wal, sizeof(wal), "%s-wal", dbpath);
  if (file_exists(wal))
    n += slurp(wal, buf + n, sizeof(buf) - n);
  ASSERT(!contains(buf, n, t + 4, SRV_TOKEN_LEN - 4));
}

/* ---- push -------------------------------------------------------------- */

TEST(push_new_known_stale) {
  struct sample_change v1;
  struct sample_change v2;
  struct sample_change old;
  int64_t r;
  int64_t h;
  int64_t cur;

  open_fresh();
  sample_change_init(&v1, 1, 40);
  set_vv(&v1, 2, 2);
  ASSERT_EQ(push1(&v1, NULL), OUT_APPLIED);
  ASSERT_EQ(push1(&v1, NULL), OUT_KNOWN);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 1);
  ASSERT_EQ(h, 1);
  ASSERT_EQ(cur, 1);

  /* v2 dominates v1: applied, v1 leaves the current set. */
  sample_change_init(&v2, 1, 40);
  set_vv(&v2, 3, 2);
  set_evidence(&v2, "second look at the medication records");
  ASSERT_EQ(push1(&v2, NULL), OUT_APPLIED);
  counts(&r, &h, &cur);
  ASSERT_EQ(h, 2);
  ASSERT_EQ(cur, 1);
  ASSERT_EQ(current_of(v1.id), 1);

  /* v1 again: known but superseded; nothing is inserted. */
  ASSERT_EQ(push1(&v1, NULL), OUT_STALE);
  counts(&r, &h, &cur);
  ASSERT_EQ(h, 2);

  /* A version never seen that v2 dominates: kept in history only. */
  sample_change_init(&old, 1, 40);
  set_vv(&old, 1, 1);
  set_evidence(&old, "an early draft");
  ASSERT_EQ(push1(&old, NULL), OUT_STALE);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 1);
  ASSERT_EQ(h, 3);
  ASSERT_EQ(cur, 1);
  ASSERT_EQ(sql_int(dbpath, "SELECT current FROM versions WHERE seq = 3"), 0);
  /* And pushing it again is still stale, still not inserted. */
  ASSERT_EQ(push1(&old, NULL), OUT_STALE);
  counts(&r, &h, &cur);
  ASSERT_EQ(h, 3);
  ASSERT_OK(srv_store_check(conn));
  close_all();
}

TEST(push_conflict_and_resolution) {
  struct sample_change base;
  struct sample_change a;
  struct sample_change b;
  struct sample_change fix;
  struct srv_page page;
  int64_t r;
  int64_t h;
  int64_t cur;

  open_fresh();
  sample_change_init(&base, 5, 40);
  set_vv(&base, 1, 1);
  ASSERT_EQ(push1(&base, NULL), OUT_APPLIED);
  sample_change_init(&a, 5, 40);
  set_vv(&a, 2, 1);
  set_evidence(&a, "edit made on tablet A");
  sample_change_init(&b, 5, 40);
  set_vv(&b, 1, 2);
  set_evidence(&b, "edit made on tablet B");
  ASSERT_EQ(push1(&a, NULL), OUT_APPLIED);
  ASSERT_EQ(push1(&b, NULL), OUT_CONFLICT);
  ASSERT_EQ(current_of(a.id), 2);
  counts(&r, &h, &cur);
  ASSERT_EQ(h, 3);
  ASSERT_EQ(cur, 2);
  /* Both siblings are in the feed. */
  pull(0, 100, 1 << 20, &page);
  ASSERT_EQ(page.n, 2);
  ASSERT_MEM_EQ(page.changes[0]->version->hash.data, a.hash, 32);
  ASSERT_MEM_EQ(page.changes[1]->version->hash.data, b.hash, 32);
  srv_page_free(&page);

  /* Resolution: join (2,2) plus one for the resolver. */
  sample_change_init(&fix, 5, 40);
  set_vv(&fix, 3, 2);
  set_evidence(&fix, "resolved by head office");
  ASSERT_EQ(push1(&fix, NULL), OUT_APPLIED);
  ASSERT_EQ(current_of(a.id), 1);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 1);
  ASSERT_EQ(h, 4);
  ASSERT_EQ(cur, 1);
  ASSERT_EQ(sql_int(dbpath, "SELECT count(*) FROM versions WHERE seq IN "
                            "(2, 3) AND current = 0"),
            2);
  /* The late sibling of a resolved conflict is stale. */
  ASSERT_EQ(push1(&b, NULL), OUT_STALE);
  close_all();
}

TEST(push_replica_id_reuse) {
  struct sample_change a;
  struct sample_change b;
  struct srv_outcome o;

  open_fresh();
  sample_change_init(&a, 9, 40);
  sample_change_init(&b, 9, 40);
  set_evidence(&b, "same vector, other content: a restored backup");
  ASSERT_EQ(push1(&a, NULL), OUT_APPLIED);
  ASSERT_EQ(push1(&b, &o), OUT_CONFLICT);
  ASSERT(strstr(o.reason, "replica id reused") != NULL);
  ASSERT_EQ(current_of(a.id), 2);
  ASSERT_EQ(sql_int(dbpath, "SELECT reuse FROM records"), 1);
  /* Both are known now. */
  ASSERT_EQ(push1(&a, &o), OUT_KNOWN);
  ASSERT_EQ(push1(&b, &o), OUT_KNOWN);
  close_all();
}

TEST(push_refusals_do_not_stop_the_batch) {
  struct sample_change s[4];
  Fieldsync__Change *ch[4];
  struct srv_outcome out[4];
  static uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  int64_t r;
  int64_t h;
  int64_t cur;
  size_t i;

  open_fresh();
  for (i = 0; i < 4; i++) {
    sample_change_init(&s[i], (uint32_t)(100 + i), 30);
    ch[i] = &s[i].c;
  }
  /* 1: a payload that is not an observation. */
  s[1].v.payload.data = junk;
  s[1].v.payload.len = sizeof(junk);
  fsp_merge_hash(false, junk, sizeof(junk), s[1].hash);
  /* 2: filed under another visit than its payload names. */
  s[2].scope.id.data = s[0].id;
  push(ch, 4, out);
  ASSERT_EQ(out[0].outcome, OUT_APPLIED);
  ASSERT_EQ(out[1].outcome, OUT_REFUSED);
  ASSERT_EQ(out[1].reason_code, ERR_INVALID);
  ASSERT(out[1].reason[0] != '\0');
  ASSERT_EQ(out[2].outcome, OUT_REFUSED);
  ASSERT_EQ(out[2].reason_code, ERR_INVALID);
  ASSERT(strstr(out[2].reason, "scope does not match the payload") != NULL);
  ASSERT_EQ(out[3].outcome, OUT_APPLIED);
  ASSERT_EQ(out[0].reason_code, 0);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 2);
  ASSERT_EQ(h, 2);
  close_all();
}

TEST(push_tombstones) {
  struct sample_change live;
  struct sample_change del;
  struct sample_change orphan;
  struct srv_outcome o;
  struct srv_page page;

  open_fresh();
  sample_change_init(&live, 20, 30);
  set_vv(&live, 1, 1);
  ASSERT_EQ(push1(&live, NULL), OUT_APPLIED);

  sample_change_init(&del, 20, 30);
  set_vv(&del, 2, 1);
  del.v.has_deleted = 1;
  del.v.deleted = 1;
  del.v.has_payload = 0;
  del.v.payload.len = 0;
  fsp_merge_hash(true, NULL, 0, del.hash);
  /* A tombstone naming a scope the server never saw (the replica moved
   * the record and deleted it before syncing) is still applied: refusing
   * it would refuse it on every sync. */
  del.scope.id.data = del.id;
  ASSERT_EQ(push1(&del, &o), OUT_APPLIED);
  ASSERT_EQ(current_of(del.id), 1);
  pull(0, 10, 1 << 20, &page);
  ASSERT_EQ(page.n, 1);
  ASSERT(page.changes[0]->version->has_deleted);
  ASSERT(page.changes[0]->version->deleted);
  ASSERT(!page.changes[0]->version->has_payload);
  srv_page_free(&page);

  /* A tombstone for a record never seen: its scope kind must fit the
   * collection (an observation lives in a visit). */
  sample_change_init(&orphan, 21, 30);
  orphan.v.has_deleted = 1;
  orphan.v.deleted = 1;
  orphan.v.has_payload = 0;
  orphan.v.payload.len = 0;
  fsp_merge_hash(true, NULL, 0, orphan.hash);
  orphan.scope.kind = FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE;
  ASSERT_EQ(push1(&orphan, &o), OUT_REFUSED);
  orphan.scope.kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
  ASSERT_EQ(push1(&orphan, &o), OUT_APPLIED);
  close_all();
}

TEST(push_several_versions_of_one_record_in_a_batch) {
  struct sample_change s[3];
  Fieldsync__Change *ch[3];
  struct srv_outcome out[3];
  int64_t r;
  int64_t h;
  int64_t cur;

  open_fresh();
  /* A later record first, then two versions of an earlier one: they are
   * merged in their batch order. */
  sample_change_init(&s[0], 31, 30);
  sample_change_init(&s[1], 30, 30);
  set_vv(&s[1], 1, 1);
  sample_change_init(&s[2], 30, 30);
  set_vv(&s[2], 2, 1);
  set_evidence(&s[2], "edited again before the sync");
  ch[0] = &s[0].c;
  ch[1] = &s[1].c;
  ch[2] = &s[2].c;
  push(ch, 3, out);
  ASSERT_EQ(out[0].outcome, OUT_APPLIED);
  ASSERT_EQ(out[1].outcome, OUT_APPLIED);
  ASSERT_EQ(out[2].outcome, OUT_APPLIED);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 2);
  ASSERT_EQ(h, 3);
  ASSERT_EQ(cur, 2);
  /* The same batch again: the old version is stale, the rest known. */
  push(ch, 3, out);
  ASSERT_EQ(out[0].outcome, OUT_KNOWN);
  ASSERT_EQ(out[1].outcome, OUT_STALE);
  ASSERT_EQ(out[2].outcome, OUT_KNOWN);
  close_all();
}

TEST(push_history_records_who_and_when) {
  struct sample_change a;
  struct sample_change b;
  struct srv_identity w1;
  struct srv_identity w2;
  char t1[SRV_TOKEN_LEN + 1];
  char t2[SRV_TOKEN_LEN + 1];
  struct fsp_limits lim;
  struct srv_outcome o;
  Fieldsync__Change *ch;
  int64_t t0 = (int64_t)time(NULL) * 1000 - 1000;
  int64_t tend;

  open_fresh();
  fsp_limits_default(&lim);
  ASSERT_OK(srv_store_user_add(conn, "insp", 1));
  ASSERT_OK(srv_store_user_add(conn, "insp2", 1));
  ASSERT_OK(srv_store_device_add(conn, "insp", t1, NULL));
  ASSERT_OK(srv_store_device_add(conn, "insp2", t2, NULL));
  ASSERT_OK(srv_store_auth(conn, t1, replica_a, &w1));
  ASSERT_OK(srv_store_auth(conn, t2, replica_b, &w2));

  sample_change_init(&a, 40, 30);
  ASSERT_OK(srv_store_assign(conn, a.visit, "insp", 0));
  ASSERT_OK(srv_store_assign(conn, a.visit, "insp2", 0));
  set_vv(&a, 1, 1);
  sample_change_init(&b, 40, 30);
  set_vv(&b, 2, 1);
  set_evidence(&b, "the second inspector's version");
  ch = &a.c;
  ASSERT_OK(srv_store_push(conn, &w1, &ch, 1, &lim, &o));
  ASSERT_EQ(o.outcome, OUT_APPLIED);
  ch = &b.c;
  ASSERT_OK(srv_store_push(conn, &w2, &ch, 1, &lim, &o));
  ASSERT_EQ(o.outcome, OUT_APPLIED);
  tend = (int64_t)time(NULL) * 1000 + 1000;

  ASSERT_EQ(sql_int(dbpath, "SELECT count(*) FROM versions"), 2);
  ASSERT_EQ(sql_int(dbpath, "SELECT user_id FROM versions WHERE seq = 1"),
            w1.user_id);
  ASSERT_EQ(sql_int(dbpath, "SELECT device_id FROM versions WHERE seq = 1"),
            w1.device_id);
  ASSERT_EQ(sql_int(dbpath, "SELECT user_id FROM versions WHERE seq = 2"),
            w2.user_id);
  ASSERT_EQ(sql_int(dbpath, "SELECT device_id FROM versions WHERE seq = 2"),
            w2.device_id);
  ASSERT_GE(sql_int(dbpath, "SELECT min(received_ms) FROM versions"), t0);
  ASSERT_LE(sql_int(dbpath, "SELECT max(received_ms) FROM versions"), tend);
  ASSERT_EQ(sql_int(dbpath, "SELECT device_time_ms FROM versions "
                            "WHERE seq = 1"),
            a.v.device_time_ms);
  ASSERT_EQ(sql_int(dbpath, "SELECT author = 'inspector.lead' FROM versions "
                            "WHERE seq = 1"),
            1);
  close_all();
}

/* ---- pull -------------------------------------------------------------- */

#define NREC 10

TEST(pull_pages_by_count_and_bytes) {
  static struct sample_change s[NREC];
  Fieldsync__Change *ch[NREC];
  struct srv_outcome out[NREC];
  struct srv_page page;
  bool seen[NREC] = {false};
  uint64_t cursor = 0;
  uint64_t last = 0;
  size_t got = 0;
  size_t one;
  size_t i;
  size_t j;
  int pages = 0;

  open_fresh();
  for (i = 0; i < NREC; i++) {
    sample_change_init(&s[i], (uint32_t)(200 + i), 100);
    ch[i] = &s[i].c;
  }
  push(ch, NREC, out);

  /* By count: 3, 3, 3, 1. */
  do {
    pull(cursor, 3, 1 << 20, &page);
    ASSERT_LE(page.n, 3);
    for (i = 0; i < page.n; i++) {
      const Fieldsync__Change *c = page.changes[i];
      const struct sample_change *want;

      /* The store applies a batch in key order, so find the sample. */
      for (j = 0; j < NREC; j++)
        if (memcmp(c->key->id.data, s[j].id, 16) == 0)
          break;
      ASSERT_LT(j, NREC);
      ASSERT(!seen[j]);
      seen[j] = true;
      want = &s[j];
      ASSERT(c->has_seq);
      ASSERT_GT(c->seq, last);
      last = c->seq;
      ASSERT_MEM_EQ(c->key->id.data, want->id, 16);
      ASSERT_MEM_EQ(c->scope->id.data, want->visit, 16);
      ASSERT_EQ(c->key->collection, want->key.collection);
      ASSERT_EQ(c->version->payload.len, want->v.payload.len);
      ASSERT_MEM_EQ(c->version->payload.data, want->payload,
                    want->v.payload.len);
      ASSERT_MEM_EQ(c->version->hash.data, want->hash, 32);
      ASSERT_EQ(c->version->n_vv, 2);
      ASSERT_EQ(c->version->vv[0]->counter, want->e[0].counter);
      ASSERT_EQ(c->version->vv[1]->counter, want->e[1].counter);
      ASSERT_STR_EQ(c->version->author, "inspector.lead");
      ASSERT_EQ(c->version->device_time_ms, want->v.device_time_ms);
    }
    got += page.n;
    ASSERT_EQ(page.next_cursor, last);
    ASSERT_EQ(page.more, got < NREC);
    cursor = page.next_cursor;
    srv_page_free(&page);
    pages++;
  } while (got < NREC);
  ASSERT_EQ(pages, 4);

  /* Nothing after the end. */
  pull(cursor, 3, 1 << 20, &page);
  ASSERT_EQ(page.n, 0);
  ASSERT_EQ(page.next_cursor, cursor);
  ASSERT(!page.more);
  srv_page_free(&page);

  /* By bytes: a tiny limit still gives one change a page. */
  pull(0, 100, 1, &page);
  ASSERT_EQ(page.n, 1);
  ASSERT(page.more);
  one = fieldsync__change__get_packed_size(page.changes[0]);
  srv_page_free(&page);
  /* Room for two (tag and length included) but not three. */
  pull(0, 100, 2 * (one + 3), &page);
  ASSERT_EQ(page.n, 2);
  ASSERT(page.more);
  srv_page_free(&page);
  /* Exactly max_records: more is false at the end. */
  pull(0, NREC, 1 << 20, &page);
  ASSERT_EQ(page.n, NREC);
  ASSERT(!page.more);
  srv_page_free(&page);
  close_all();
}

TEST(pull_only_current_and_seq_grows_across_commits) {
  struct sample_change a1;
  struct sample_change a2;
  struct sample_change b;
  struct srv_page page;
  uint64_t first;

  open_fresh();
  sample_change_init(&a1, 50, 30);
  set_vv(&a1, 1, 1);
  ASSERT_EQ(push1(&a1, NULL), OUT_APPLIED);
  pull(0, 10, 1 << 20, &page);
  ASSERT_EQ(page.n, 1);
  first = page.next_cursor;
  srv_page_free(&page);

  sample_change_init(&a2, 50, 30);
  set_vv(&a2, 1, 2);
  set_evidence(&a2, "superseding edit");
  ASSERT_EQ(push1(&a2, NULL), OUT_APPLIED);
  sample_change_init(&b, 51, 30);
  ASSERT_EQ(push1(&b, NULL), OUT_APPLIED);

  /* From 0: only a2 and b, in seq order, both after the first commit. */
  pull(0, 10, 1 << 20, &page);
  ASSERT_EQ(page.n, 2);
  ASSERT_MEM_EQ(page.changes[0]->version->hash.data, a2.hash, 32);
  ASSERT_MEM_EQ(page.changes[1]->version->hash.data, b.hash, 32);
  ASSERT_GT(page.changes[0]->seq, first);
  ASSERT_GT(page.changes[1]->seq, page.changes[0]->seq);
  srv_page_free(&page);
  /* From the first cursor: the same two. */
  pull(first, 10, 1 << 20, &page);
  ASSERT_EQ(page.n, 2);
  srv_page_free(&page);
  close_all();
}

TEST(pull_query_uses_an_index) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  bool indexed = false;

  open_fresh();
  ASSERT_OK(srv_store_check(conn)); /* includes the store's own plans */
  ASSERT_EQ(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL),
            SQLITE_OK);
  ASSERT_EQ(
      sqlite3_prepare_v2(db, "EXPLAIN QUERY PLAN " PULL_SQL, -1, &st, NULL),
      SQLITE_OK);
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *d = (const char *)sqlite3_column_text(st, 3);
    printf("# plan: %s\n", d);
    ASSERT(strncmp(d, "SCAN", 4) != 0);
    ASSERT(strstr(d, "TEMP B-TREE") == NULL);
    if (strstr(d, "USING INDEX versions_feed") != NULL)
      indexed = true;
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  ASSERT(indexed);
  /* Without the index, srv_store_check says so. */
  sql_exec(dbpath, "DROP INDEX versions_feed");
  srv_store_conn_close(conn);
  {
    char err[256];
    ASSERT_OK(srv_store_conn_open(store, &conn, err, sizeof(err)));
  }
  ASSERT_EQ(srv_store_check(conn), SRV_STORE_ECORRUPT);
  ASSERT(strstr(srv_store_errmsg(conn), "versions_feed") != NULL);
  close_all();
}

/* ---- transactions and readers ------------------------------------------ */

TEST(rollback_leaves_nothing) {
  struct sample_change s[3];
  Fieldsync__Change *ch[3];
  struct srv_outcome out[3];
  struct fsp_limits lim;
  struct srv_page page;
  int64_t r;
  int64_t h;
  int64_t cur;
  size_t i;

  open_fresh();
  fsp_limits_default(&lim);
  for (i = 0; i < 3; i++) {
    sample_change_init(&s[i], (uint32_t)(60 + i), 30);
    ch[i] = &s[i].c;
  }
  ASSERT_OK(srv_store_begin(conn));
  ASSERT_OK(srv_store_push(conn, &tester, ch, 2, &lim, out));
  ASSERT_OK(srv_store_push(conn, &tester, ch + 2, 1, &lim, out + 2));
  srv_store_rollback(conn);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 0);
  ASSERT_EQ(h, 0);
  pull(0, 10, 1 << 20, &page);
  ASSERT_EQ(page.n, 0);
  srv_page_free(&page);
  /* The same changes apply afresh; seq restarts at 1 (never seen). */
  push(ch, 3, out);
  for (i = 0; i < 3; i++)
    ASSERT_EQ(out[i].outcome, OUT_APPLIED);
  counts(&r, &h, &cur);
  ASSERT_EQ(h, 3);
  ASSERT_EQ(sql_int(dbpath, "SELECT min(seq) FROM versions"), 1);
  /* A rollback with no transaction is harmless. */
  srv_store_rollback(conn);
  ASSERT_OK(srv_store_check(conn));
  close_all();
}

TEST(reader_sees_only_committed) {
  struct srv_store_conn *reader = NULL;
  struct sample_change s;
  Fieldsync__Change *ch = &s.c;
  struct srv_outcome o;
  struct fsp_limits lim;
  struct srv_page page;
  struct srv_pull_req req;
  char err[256];

  open_fresh();
  fsp_limits_default(&lim);
  ASSERT_OK(srv_store_conn_open(store, &reader, err, sizeof(err)));
  sample_change_init(&s, 70, 30);
  ASSERT_OK(srv_store_begin(conn));
  ASSERT_OK(srv_store_push(conn, &tester, &ch, 1, &lim, &o));
  req = feed_req(0, 10, 1 << 20);
  ASSERT_OK(srv_store_pull(reader, NULL, &req, &page));
  ASSERT_EQ(page.n, 0);
  srv_page_free(&page);
  ASSERT_OK(srv_store_commit(conn));
  ASSERT_OK(srv_store_pull(reader, NULL, &req, &page));
  ASSERT_EQ(page.n, 1);
  srv_page_free(&page);
  srv_store_conn_close(reader);
  close_all();
}

/* ---- records of every collection (policy and scope tests) -------------- */

#define C_SERVICE FIELDSYNC__COLLECTION__COLLECTION_SERVICE
#define C_VISIT FIELDSYNC__COLLECTION__COLLECTION_VISIT
#define C_OBSERVATION FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION
#define C_NOTE FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE
#define C_REQUIREMENT FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT

/* A change of any collection, built from a payload message (or a
 * tombstone), with a one-entry vector. It points into itself: never copy
 * one by value. */
struct rec {
  Fieldsync__Change c;
  Fieldsync__RecordKey key;
  Fieldsync__ScopeKey scope;
  Fieldsync__Version v;
  Fieldsync__VvEntry e;
  Fieldsync__VvEntry *ep;
  uint8_t id[16];
  uint8_t scope_id[16];
  uint8_t replica[16];
  uint8_t hash[32];
  uint8_t payload[512];
};

/* An id tagged with tag and n, distinct from the samples' ids. */
static void mkid(uint8_t id[16], uint8_t tag, uint32_t n) {
  memset(id, 0x5a, 16);
  id[0] = tag;
  id[12] = (uint8_t)(n >> 24);
  id[13] = (uint8_t)(n >> 16);
  id[14] = (uint8_t)(n >> 8);
  id[15] = (uint8_t)n;
}

static void rec_init(struct rec *r, int collection, const uint8_t id[16],
                     int kind, const uint8_t scope[16],
                     const ProtobufCMessage *msg, uint64_t counter) {
  memset(r, 0, sizeof(*r));
  fieldsync__change__init(&r->c);
  fieldsync__record_key__init(&r->key);
  fieldsync__scope_key__init(&r->scope);
  fieldsync__version__init(&r->v);
  fieldsync__vv_entry__init(&r->e);
  memcpy(r->id, id, 16);
  memcpy(r->scope_id, scope, 16);
  memset(r->replica, 0xee, 16);
  r->key.has_collection = 1;
  r->key.collection = (Fieldsync__Collection)collection;
  r->key.has_id = 1;
  r->key.id.data = r->id;
  r->key.id.len = 16;
  r->scope.has_kind = 1;
  r->scope.kind = (Fieldsync__ScopeKind)kind;
  r->scope.has_id = 1;
  r->scope.id.data = r->scope_id;
  r->scope.id.len = 16;
  r->e.has_replica = 1;
  r->e.replica.data = r->replica;
  r->e.replica.len = 16;
  r->e.has_counter = 1;
  r->e.counter = counter;
  r->ep = &r->e;
  r->v.n_vv = 1;
  r->v.vv = &r->ep;
  if (msg != NULL) {
    size_t len = protobuf_c_message_get_packed_size(msg);
    ASSERT_LE(len, sizeof(r->payload));
    protobuf_c_message_pack(msg, r->payload);
    r->v.has_payload = 1;
    r->v.payload.data = r->payload;
    r->v.payload.len = len;
    fsp_merge_hash(false, r->payload, len, r->hash);
  } else {
    r->v.has_deleted = 1;
    r->v.deleted = 1;
    fsp_merge_hash(true, NULL, 0, r->hash);
  }
  r->v.has_hash = 1;
  r->v.hash.data = r->hash;
  r->v.hash.len = 32;
  r->v.author = "tester";
  r->c.key = &r->key;
  r->c.scope = &r->scope;
  r->c.version = &r->v;
}

static ProtobufCBinaryData bin(const uint8_t *p) {
  ProtobufCBinaryData b;

  b.len = 16;
  b.data = (uint8_t *)p;
  return b;
}

static void mk_service(struct rec *r, const uint8_t id[16], uint64_t n) {
  Fieldsync__Service m;

  fieldsync__service__init(&m);
  m.name = "Oak House";
  rec_init(r, C_SERVICE, id, K_SERVICE, id, &m.base, n);
}

static void mk_visit(struct rec *r, const uint8_t id[16],
                     const uint8_t service[16], const char *lead, uint64_t n) {
  Fieldsync__Visit m;

  fieldsync__visit__init(&m);
  m.has_service_id = 1;
  m.service_id = bin(service);
  m.lead_inspector = (char *)lead;
  rec_init(r, C_VISIT, id, K_VISIT, id, &m.base, n);
}

static void mk_obs(struct rec *r, const uint8_t id[16], const uint8_t visit[16],
                   const char *assessor, uint64_t n) {
  Fieldsync__Observation m;

  fieldsync__observation__init(&m);
  m.has_visit_id = 1;
  m.visit_id = bin(visit);
  m.standard_code = "OP9";
  m.evidence_text = n > 1 ? "looked again" : "medication records checked";
  m.assessor = (char *)assessor;
  rec_init(r, C_OBSERVATION, id, K_VISIT, visit, &m.base, n);
}

static void mk_note(struct rec *r, const uint8_t id[16],
                    const uint8_t visit[16], const char *expert, uint64_t n) {
  Fieldsync__InterviewNote m;

  fieldsync__interview_note__init(&m);
  m.has_visit_id = 1;
  m.visit_id = bin(visit);
  m.expert = (char *)expert;
  m.participant_code = "R1";
  m.said = n > 1 ? "the food is better now" : "the food is cold";
  rec_init(r, C_NOTE, id, K_VISIT, visit, &m.base, n);
}

static void mk_req(struct rec *r, const uint8_t id[16],
                   const uint8_t service[16], const char *owner, uint64_t n) {
  Fieldsync__Requirement m;

  fieldsync__requirement__init(&m);
  m.has_service_id = 1;
  m.service_id = bin(service);
  m.owner = (char *)owner;
  m.text = n > 1 ? "review care plans weekly" : "review care plans monthly";
  rec_init(r, C_REQUIREMENT, id, K_SERVICE, service, &m.base, n);
}

static void mk_tomb(struct rec *r, int collection, const uint8_t id[16],
                    int kind, const uint8_t scope[16], uint64_t n) {
  rec_init(r, collection, id, kind, scope, NULL, n);
}

/* Pushes n records as who in a transaction of their own. */
static void push_as(const struct srv_identity *who, struct rec *const *rs,
                    size_t n, struct srv_outcome *out) {
  Fieldsync__Change *ch[16];
  size_t i;

  ASSERT_LE(n, 16);
  for (i = 0; i < n; i++)
    ch[i] = &rs[i]->c;
  ASSERT_OK(srv_store_begin(conn));
  if (srv_store_push(conn, who, ch, n, NULL, out) != 0)
    test_fail(__FILE__, __LINE__, "push: %s", srv_store_errmsg(conn));
  if (srv_store_commit(conn) != 0)
    test_fail(__FILE__, __LINE__, "commit: %s", srv_store_errmsg(conn));
}

/* Pushes one record as who; returns its outcome. */
static int push_one_as(const struct srv_identity *who, struct rec *r,
                       struct srv_outcome *o) {
  struct srv_outcome local;

  if (o == NULL)
    o = &local;
  push_as(who, &r, 1, o);
  return o->outcome;
}

/* Pushes each of n records as who in a push of its own (so their seqs
 * follow the array), all in one transaction; each must apply. */
static void push_each_as(const struct srv_identity *who, struct rec *rs,
                         size_t n) {
  struct srv_outcome o;
  size_t i;

  ASSERT_OK(srv_store_begin(conn));
  for (i = 0; i < n; i++) {
    Fieldsync__Change *ch = &rs[i].c;
    if (srv_store_push(conn, who, &ch, 1, NULL, &o) != 0)
      test_fail(__FILE__, __LINE__, "push: %s", srv_store_errmsg(conn));
    ASSERT_EQ(o.outcome, OUT_APPLIED);
  }
  ASSERT_OK(srv_store_commit(conn));
}

/* Asserts o is a refusal for policy or scope whose reason contains what. */
#define ASSERT_FORBIDDEN(o, what)                                              \
  do {                                                                         \
    ASSERT_EQ((o).outcome, OUT_REFUSED);                                       \
    ASSERT_EQ((o).reason_code, ERR_FORBIDDEN);                                 \
    if (strstr((o).reason, (what)) == NULL)                                    \
      test_fail(__FILE__, __LINE__, "reason \"%s\" lacks \"%s\"", (o).reason,  \
                (what));                                                       \
  } while (0)

/* Adds a user with a device, authenticated from a replica of its own. */
static void make_user(const char *name, int role, struct srv_identity *who) {
  char token[SRV_TOKEN_LEN + 1];
  uint8_t replica[16];

  memset(replica, 0, sizeof(replica));
  snprintf((char *)replica, sizeof(replica), "r-%s", name);
  ASSERT_OK(srv_store_user_add(conn, name, role));
  ASSERT_OK(srv_store_device_add(conn, name, token, NULL));
  if (srv_store_auth(conn, token, replica, who) != 0)
    test_fail(__FILE__, __LINE__, "auth %s: %s", name, srv_store_errmsg(conn));
}

static int64_t wall_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hex32(const uint8_t id[16], char out[33]) {
  int i;

  for (i = 0; i < 16; i++)
    snprintf(out + 2 * i, 3, "%02x", id[i]);
}

/* A world of two services, a visit of each, an observation, two
 * interview notes and a requirement, stored by head office. */
struct world {
  uint8_t s1[16]; /* services, and their visits */
  uint8_t s2[16];
  uint8_t v1[16]; /* of s1, led by alice */
  uint8_t v2[16]; /* of s2, led by bob */
  struct rec svc1;
  struct rec svc2;
  struct rec vis1;
  struct rec vis2;
  struct rec obs1;       /* in v1 */
  struct rec obs2;       /* in v2 */
  struct rec note_eve;   /* in v1 */
  struct rec note_frank; /* in v1 */
  struct rec req1;       /* of s1 */
  struct rec req2;       /* of s2 */
  struct srv_identity ho;
  struct srv_identity alice;
  struct srv_identity bob;
  struct srv_identity eve;
  struct srv_identity frank;
};
static struct world W;

static void world_init(void) {
  struct rec *all[10];
  struct srv_outcome out[10];
  uint8_t id[16];
  size_t i;

  open_fresh();
  make_user("office", ROLE_HEAD_OFFICE, &W.ho);
  make_user("alice", ROLE_INSPECTOR, &W.alice);
  make_user("bob", ROLE_INSPECTOR, &W.bob);
  make_user("eve", ROLE_EXPERT, &W.eve);
  make_user("frank", ROLE_EXPERT, &W.frank);
  mkid(W.s1, 0x51, 1);
  mkid(W.s2, 0x51, 2);
  mkid(W.v1, 0x71, 1);
  mkid(W.v2, 0x71, 2);
  mk_service(&W.svc1, W.s1, 1);
  mk_service(&W.svc2, W.s2, 1);
  mk_visit(&W.vis1, W.v1, W.s1, "alice", 1);
  mk_visit(&W.vis2, W.v2, W.s2, "bob", 1);
  mkid(id, 0x0b, 1);
  mk_obs(&W.obs1, id, W.v1, "alice", 1);
  mkid(id, 0x0b, 2);
  mk_obs(&W.obs2, id, W.v2, "bob", 1);
  mkid(id, 0x1e, 1);
  mk_note(&W.note_eve, id, W.v1, "eve", 1);
  mkid(id, 0x1e, 2);
  mk_note(&W.note_frank, id, W.v1, "frank", 1);
  mkid(id, 0x3e, 1);
  mk_req(&W.req1, id, W.s1, "alice", 1);
  mkid(id, 0x3e, 2);
  mk_req(&W.req2, id, W.s2, "bob", 1);
  all[0] = &W.svc1;
  all[1] = &W.svc2;
  all[2] = &W.vis1;
  all[3] = &W.vis2;
  all[4] = &W.obs1;
  all[5] = &W.obs2;
  all[6] = &W.note_eve;
  all[7] = &W.note_frank;
  all[8] = &W.req1;
  all[9] = &W.req2;
  push_as(&W.ho, all, 10, out);
  for (i = 0; i < 10; i++)
    if (out[i].outcome != OUT_APPLIED)
      test_fail(__FILE__, __LINE__, "world record %zu: outcome %d (%s)", i,
                out[i].outcome, out[i].reason);
}

/* ---- a client's side of scoped pulls ----------------------------------- */

#define SIM_RECS 1024
#define SIM_SCOPES 64

/* What a replica holds after following the Scopes rules of PROTOCOL.md:
 * its held scopes, cursor, backfill position and records; every page is
 * checked against the rules as it is applied. */
struct sim {
  struct srv_scope held[SIM_SCOPES];
  size_t nheld;
  uint64_t cursor;
  bool bf;
  struct srv_scope bf_scope;
  uint64_t bf_after;
  struct {
    uint8_t id[16];
    struct srv_scope scope;
    int collection;
    bool deleted;
  } rec[SIM_RECS];
  size_t nrec;
  struct srv_scope removed[SIM_SCOPES];
  size_t nremoved;
  size_t pages;
  size_t backfill_pages;
  size_t empty_pages;
  uint32_t max_records;
  int64_t now;
};

static int scope_sort_cmp(const void *pa, const void *pb) {
  const struct srv_scope *a = pa;
  const struct srv_scope *b = pb;

  return fsp_scope_cmp(a->kind, a->id, b->kind, b->id);
}

static bool scope_eq(const struct srv_scope *a, int kind, const uint8_t *id) {
  return a->kind == kind && memcmp(a->id, id, 16) == 0;
}

static void sim_init(struct sim *s, uint32_t max_records) {
  memset(s, 0, sizeof(*s));
  s->max_records = max_records;
  s->now = wall_ms();
}

static bool sim_has(const struct sim *s, const uint8_t id[16]) {
  size_t i;

  for (i = 0; i < s->nrec; i++)
    if (memcmp(s->rec[i].id, id, 16) == 0)
      return true;
  return false;
}

static bool sim_holds(const struct sim *s, int kind, const uint8_t id[16]) {
  size_t i;

  for (i = 0; i < s->nheld; i++)
    if (scope_eq(&s->held[i], kind, id))
      return true;
  return false;
}

/* One Pull and its application; returns the page's `more`. */
static bool sim_pull(struct sim *s, const struct srv_identity *who) {
  struct srv_pull_req req;
  struct srv_page page;
  struct srv_scope *vis = NULL;
  struct fsp_limits lim;
  struct fsp_error err;
  size_t nvis = 0;
  bool all = false;
  bool more;
  uint64_t prev = 0;
  size_t i;
  size_t j;

  memset(&req, 0, sizeof(req));
  req.cursor = s->cursor;
  req.max_records = s->max_records;
  req.max_bytes = 1 << 20;
  req.held = s->held;
  req.nheld = s->nheld;
  req.backfill = s->bf ? &s->bf_scope : NULL;
  req.backfill_after = s->bf ? s->bf_after : 0;
  req.now_ms = s->now;
  if (srv_store_pull(conn, who, &req, &page) != 0)
    test_fail(__FILE__, __LINE__, "pull: %s", srv_store_errmsg(conn));
  ASSERT_OK(srv_store_scopes(conn, who, s->now, &vis, &nvis, &all));
  fsp_limits_default(&lim);
  s->pages++;
  ASSERT_LE(page.n, s->max_records);
  ASSERT_GE(page.next_cursor, s->cursor);
  if (page.n == 0)
    s->empty_pages++;
  for (i = 0; i < page.nremoved; i++) {
    const struct srv_scope *r = &page.removed[i];
    size_t k;

    ASSERT(sim_holds(s, r->kind, r->id));
    for (j = 0, k = 0; j < s->nheld; j++)
      if (!scope_eq(&s->held[j], r->kind, r->id))
        s->held[k++] = s->held[j];
    s->nheld = k;
    for (j = 0, k = 0; j < s->nrec; j++)
      if (!scope_eq(&s->rec[j].scope, r->kind, r->id))
        s->rec[k++] = s->rec[j];
    s->nrec = k;
    ASSERT_LT(s->nremoved, SIM_SCOPES);
    s->removed[s->nremoved++] = *r;
  }
  for (i = 0; i < page.n; i++) {
    const Fieldsync__Change *ch = page.changes[i];

    if (fsp_msg_validate_change(ch, &lim, true, "pulled", &err) != 0)
      test_fail(__FILE__, __LINE__, "pulled change %zu: %s", i, err.msg);
    ASSERT_GT(ch->seq, prev);
    prev = ch->seq;
    if (page.backfilling) {
      ASSERT_LE(ch->seq, s->cursor);
      ASSERT(
          scope_eq(&page.backfill, (int)ch->scope->kind, ch->scope->id.data));
    } else {
      ASSERT_GT(ch->seq, s->cursor);
      ASSERT_LE(ch->seq, page.next_cursor);
    }
    /* Nothing outside the device's scopes, ever. */
    if (!all) {
      bool ok = false;
      for (j = 0; j < nvis; j++)
        if (scope_eq(&vis[j], (int)ch->scope->kind, ch->scope->id.data))
          ok = true;
      ASSERT(ok);
    }
    for (j = 0; j < s->nrec; j++)
      if (memcmp(s->rec[j].id, ch->key->id.data, 16) == 0)
        break;
    if (j == s->nrec) {
      ASSERT_LT(s->nrec, SIM_RECS);
      s->nrec++;
    }
    memcpy(s->rec[j].id, ch->key->id.data, 16);
    s->rec[j].scope.kind = (int)ch->scope->kind;
    memcpy(s->rec[j].scope.id, ch->scope->id.data, 16);
    s->rec[j].collection = (int)ch->key->collection;
    s->rec[j].deleted = ch->version->has_deleted && ch->version->deleted;
  }
  if (page.backfilling) {
    s->backfill_pages++;
    ASSERT(page.more);
    ASSERT_EQ(page.next_cursor, s->cursor);
    ASSERT(!sim_holds(s, page.backfill.kind, page.backfill.id));
    if (s->bf && scope_eq(&s->bf_scope, page.backfill.kind, page.backfill.id))
      ASSERT_GE(page.backfill_next, s->bf_after);
    if (page.backfill_done) {
      ASSERT_LT(s->nheld, SIM_SCOPES);
      s->held[s->nheld++] = page.backfill;
      qsort(s->held, s->nheld, sizeof(s->held[0]), scope_sort_cmp);
      s->bf = false;
    } else {
      s->bf = true;
      s->bf_scope = page.backfill;
      s->bf_after = page.backfill_next;
    }
  } else {
    /* The client refuses a page that would make it pull forever. */
    ASSERT(!(page.more && page.n == 0 && page.next_cursor == s->cursor));
    s->cursor = page.next_cursor;
    s->bf = false;
  }
  more = page.more;
  fsp_free(vis);
  srv_page_free(&page);
  return more;
}

/* Pulls until the server says nothing more is due. */
static void sim_sync(struct sim *s, const struct srv_identity *who) {
  int guard = 0;

  while (sim_pull(s, who))
    ASSERT_LT(++guard, 5000);
}

/* Asserts the devices revoked after epoch are want[0..n). */
static void revoked_ids(uint64_t epoch, const int64_t *want, size_t n) {
  int64_t *ids = NULL;
  size_t got = 99;
  size_t i;

  ASSERT_OK(srv_store_revoked_since(conn, epoch, &ids, &got));
  ASSERT_EQ(got, n);
  if (n == 0)
    ASSERT(ids == NULL);
  for (i = 0; i < n; i++)
    ASSERT_EQ(ids[i], want[i]);
  fsp_free(ids);
}

/* ---- schema upgrade ---------------------------------------------------- */

/* The version 1 schema, as fieldsync 0.1 created it (a fixture: it must
 * not follow later changes). */
static const char v1_schema[] =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE users("
    "  id INTEGER PRIMARY KEY,"
    "  name TEXT UNIQUE NOT NULL,"
    "  role INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  deleted INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE devices("
    "  id INTEGER PRIMARY KEY,"
    "  user_id INTEGER NOT NULL REFERENCES users(id),"
    "  token_hash BLOB UNIQUE NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  revoked INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX devices_user ON devices(user_id);"
    "CREATE TABLE records("
    "  id BLOB PRIMARY KEY,"
    "  collection INTEGER NOT NULL,"
    "  scope_kind INTEGER NOT NULL,"
    "  scope_id BLOB NOT NULL,"
    "  reuse INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
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
    "  UNIQUE(record, hash, vv));"
    "CREATE INDEX versions_current ON versions(record) WHERE current = 1;"
    "CREATE INDEX versions_feed ON versions(seq) WHERE current = 1;"
    "INSERT INTO meta(key, value) VALUES('server_id', "
    "  x'0f0e0d0c0b0a09080706050403020100'), ('created_ms', 1700000000000);"
    "INSERT INTO users(id, name, role, created_ms) VALUES"
    "  (1, 'alice', 1, 1700000000000), (2, 'eve', 2, 1700000000000),"
    "  (3, 'office', 3, 1700000000000);"
    "PRAGMA application_id = 1179865942; PRAGMA user_version = 1;"
    "PRAGMA journal_mode = WAL;";

/* Writes a version 1 row of rec r (and its record row when current). */
static void v1_insert(sqlite3 *db, const struct rec *r, int64_t seq,
                      bool current) {
  uint8_t vv[24];
  sqlite3_stmt *st = NULL;
  int i;

  memcpy(vv, r->replica, 16);
  for (i = 0; i < 8; i++)
    vv[16 + i] = (uint8_t)(r->e.counter >> (56 - 8 * i));
  ASSERT_EQ(sqlite3_prepare_v2(
                db,
                "INSERT INTO versions(seq, record, hash, vv, deleted, payload, "
                "author, device_time_ms, collection, scope_kind, scope_id, "
                "user_id, device_id, received_ms, current) VALUES(?1, ?2, ?3, "
                "?4, ?5, ?6, 'tester', NULL, ?7, ?8, ?9, 3, NULL, "
                "1700000000000, ?10)",
                -1, &st, NULL),
            SQLITE_OK);
  sqlite3_bind_int64(st, 1, seq);
  sqlite3_bind_blob(st, 2, r->id, 16, SQLITE_STATIC);
  sqlite3_bind_blob(st, 3, r->hash, 32, SQLITE_STATIC);
  sqlite3_bind_blob(st, 4, vv, 24, SQLITE_STATIC);
  sqlite3_bind_int(st, 5, r->v.has_deleted ? 1 : 0);
  if (!r->v.has_deleted)
    sqlite3_bind_blob(st, 6, r->payload, (int)r->v.payload.len, SQLITE_STATIC);
  sqlite3_bind_int(st, 7, (int)r->key.collection);
  sqlite3_bind_int(st, 8, (int)r->scope.kind);
  sqlite3_bind_blob(st, 9, r->scope_id, 16, SQLITE_STATIC);
  sqlite3_bind_int(st, 10, current ? 1 : 0);
  ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
  if (!current)
    return;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "INSERT OR REPLACE INTO records(id, collection, "
                               "scope_kind, scope_id) VALUES(?1, ?2, ?3, ?4)",
                               -1, &st, NULL),
            SQLITE_OK);
  sqlite3_bind_blob(st, 1, r->id, 16, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, (int)r->key.collection);
  sqlite3_bind_int(st, 3, (int)r->scope.kind);
  sqlite3_bind_blob(st, 4, r->scope_id, 16, SQLITE_STATIC);
  ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
}

/* A version 1 device row for token (its SHA-256 stored). */
static void v1_device(sqlite3 *db, int64_t id, int64_t user, const char *token,
                      bool revoked) {
  uint8_t hash[32];
  unsigned int n = 0;
  sqlite3_stmt *st = NULL;

  ASSERT_EQ(EVP_Digest(token, strlen(token), hash, &n, EVP_sha256(), NULL), 1);
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "INSERT INTO devices(id, user_id, token_hash, "
                               "created_ms, revoked) VALUES(?1, ?2, ?3, "
                               "1700000000000, ?4)",
                               -1, &st, NULL),
            SQLITE_OK);
  sqlite3_bind_int64(st, 1, id);
  sqlite3_bind_int64(st, 2, user);
  sqlite3_bind_blob(st, 3, hash, 32, SQLITE_STATIC);
  sqlite3_bind_int(st, 4, revoked ? 1 : 0);
  ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
}

static const char tok_alice[] =
    "fst_0123456789abcdef0123456789abcdef0123456789abcdef";
static const char tok_eve[] =
    "fst_fedcba9876543210fedcba9876543210fedcba9876543210";

static int count_devices(const struct srv_device_info *d, void *data) {
  int *n = data;

  if (d->id == 2) {
    ASSERT(d->revoked);
    ASSERT_EQ(d->revoked_ms, 0); /* not known from version 1 */
  }
  (*n)++;
  return 0;
}

TEST(store_upgrades_a_version_1_database) {
  static struct rec vis;
  static struct rec obs;
  static struct rec note1;
  static struct rec note1_del;
  static struct rec note2;
  static struct rec req;
  static struct rec edit;
  uint8_t s[16];
  uint8_t v[16];
  uint8_t id[16];
  uint8_t sid[16];
  uint8_t want_sid[16] = {15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0};
  struct srv_identity alice;
  struct srv_identity eve;
  struct srv_scope *sc = NULL;
  struct srv_outcome o;
  struct sim sim;
  size_t nsc = 0;
  bool all = false;
  sqlite3 *db = NULL;
  char err[256];
  char *msg = NULL;
  int64_t r;
  int64_t h;
  int64_t cur;
  int ndev = 0;
  uint64_t epoch = 9;
  char token[SRV_TOKEN_LEN + 1];

  setup_dir();
  path_in(dbpath, sizeof(dbpath), "v1.db");
  mkid(s, 0x51, 1);
  mkid(v, 0x71, 1);
  mk_visit(&vis, v, s, "alice", 1);
  mkid(id, 0x0b, 1);
  mk_obs(&obs, id, v, "alice", 1);
  mkid(id, 0x1e, 1);
  mk_note(&note1, id, v, "eve", 1);
  mk_tomb(&note1_del, C_NOTE, id, K_VISIT, v, 2);
  mkid(id, 0x1e, 2);
  mk_note(&note2, id, v, "eve", 1);
  mkid(id, 0x3e, 1);
  mk_req(&req, id, s, "alice", 1);
  ASSERT_EQ(sqlite3_open(dbpath, &db), SQLITE_OK);
  if (sqlite3_exec(db, v1_schema, NULL, NULL, &msg) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "v1 fixture: %s", msg);
  v1_insert(db, &vis, 1, true);
  v1_insert(db, &obs, 2, true);
  v1_insert(db, &note1, 3, false);
  v1_insert(db, &note1_del, 4, true);
  v1_insert(db, &note2, 5, true);
  v1_insert(db, &req, 6, true);
  v1_device(db, 1, 1, tok_alice, false);
  v1_device(db, 2, 2, tok_eve, true);
  sqlite3_close(db);

  if (srv_store_open(dbpath, &store, err, sizeof(err)) != 0)
    test_fail(__FILE__, __LINE__, "open v1: %s", err);
  ASSERT_OK(srv_store_conn_open(store, &conn, err, sizeof(err)));
  ASSERT_EQ(sql_int(dbpath, "PRAGMA user_version"), 2);
  srv_store_server_id(store, sid);
  ASSERT_MEM_EQ(sid, want_sid, 16);
  counts(&r, &h, &cur);
  ASSERT_EQ(r, 5);
  ASSERT_EQ(h, 6);
  ASSERT_EQ(cur, 5);
  ASSERT_OK(srv_store_check(conn));
  /* Owners and the visit's service, derived from the stored payloads; the
   * tombstone's owner from its record, whose owner comes from history. */
  ASSERT_EQ(sql_int(dbpath, "SELECT count(*) FROM records WHERE "
                            "owner = 'alice'"),
            3);
  ASSERT_EQ(sql_int(dbpath, "SELECT count(*) FROM records WHERE "
                            "owner = 'eve'"),
            2);
  ASSERT_EQ(sql_int(dbpath, "SELECT count(*) FROM records WHERE "
                            "service_id IS NOT NULL"),
            1);
  ASSERT_EQ(sql_int(dbpath, "SELECT owner = 'eve' FROM versions "
                            "WHERE seq = 4"),
            1);
  ASSERT_OK(srv_store_auth_epoch(conn, &epoch));
  ASSERT_EQ(epoch, 0);

  /* Version 1 devices: the live one binds on its first handshake, the
   * revoked one is told so. */
  ASSERT_OK(srv_store_auth(conn, tok_alice, replica_a, &alice));
  ASSERT_EQ(alice.user_id, 1);
  ASSERT_EQ(srv_store_auth(conn, tok_alice, replica_b, &eve),
            SRV_STORE_EMISMATCH);
  ASSERT_EQ(srv_store_auth(conn, tok_eve, replica_b, &eve), SRV_STORE_EREVOKED);
  revoked_ids(0, NULL, 0); /* revoked before epochs existed */
  ASSERT_OK(srv_store_device_list(conn, NULL, count_devices, &ndev));
  ASSERT_EQ(ndev, 2);

  /* The new features on the old data: the inspector's scopes include the
   * migrated visit's service; the expert pulls the visit and her notes
   * (the tombstone too), and may edit her own migrated note. */
  ASSERT_OK(srv_store_assign(conn, v, "alice", 0));
  ASSERT_OK(srv_store_assign(conn, v, "eve", 0));
  ASSERT_OK(srv_store_scopes(conn, &alice, wall_ms(), &sc, &nsc, &all));
  ASSERT_EQ(nsc, 2);
  ASSERT(scope_eq(&sc[0], K_VISIT, v));
  ASSERT(scope_eq(&sc[1], K_SERVICE, s));
  fsp_free(sc);
  /* Eve's version 1 device was revoked: she gets a new one. */
  ASSERT_OK(srv_store_device_add(conn, "eve", token, NULL));
  ASSERT_OK(srv_store_auth(conn, token, replica_b, &eve));
  ASSERT_EQ(eve.user_id, 2);
  sim_init(&sim, 2);
  sim_sync(&sim, &eve);
  ASSERT_EQ(sim.nrec, 3);
  ASSERT(sim_has(&sim, vis.id));
  ASSERT(sim_has(&sim, note1.id));
  ASSERT(sim_has(&sim, note2.id));
  ASSERT_EQ(sim.cursor, 6);
  mk_note(&edit, note2.id, v, "eve", 2);
  ASSERT_EQ(push_one_as(&eve, &edit, &o), OUT_APPLIED);
  ASSERT_OK(srv_store_check(conn));
  close_all();
}

TEST(store_refuses_a_newer_schema) {
  char err[256];
  struct srv_store *s = NULL;

  open_fresh();
  close_all();
  sql_exec(dbpath, "PRAGMA user_version = 3");
  ASSERT_EQ(srv_store_open(dbpath, &s, err, sizeof(err)), SRV_STORE_ECORRUPT);
  ASSERT(strstr(err, "schema version 3") != NULL);
  ASSERT(s == NULL);
  ASSERT_EQ(sql_int(dbpath, "PRAGMA user_version"), 3);
}

/* ---- devices: binding, revocation, the auth epoch ---------------------- */

struct dev_seen {
  int64_t id;
  struct srv_device_info d;
  int calls;
};

static int find_device(const struct srv_device_info *d, void *data) {
  struct dev_seen *s = data;

  s->calls++;
  if (d->id == s->id)
    s->d = *d;
  return 0;
}

static int stop_at_first(const struct srv_device_info *d, void *data) {
  (void)d;
  (*(int *)data)++;
  return 42;
}

TEST(auth_binds_replicas_and_revocation_steps_the_epoch) {
  char t1[SRV_TOKEN_LEN + 1];
  char t2[SRV_TOKEN_LEN + 1];
  char tb[3][SRV_TOKEN_LEN + 1];
  int64_t d1 = 0;
  int64_t d2 = 0;
  int64_t db[3];
  int64_t want[4];
  struct srv_identity who;
  struct dev_seen seen;
  uint64_t epoch = 99;
  int calls = 0;
  sqlite3 *lock = NULL;
  int i;

  open_fresh();
  ASSERT_OK(srv_store_user_add(conn, "alice", 1));
  ASSERT_OK(srv_store_user_add(conn, "bob", 1));
  ASSERT_OK(srv_store_device_add(conn, "alice", t1, &d1));
  ASSERT_OK(srv_store_device_add(conn, "alice", t2, &d2));
  for (i = 0; i < 3; i++)
    ASSERT_OK(srv_store_device_add(conn, "bob", tb[i], &db[i]));

  /* The first handshake binds; another replica is refused; the bound one
   * goes on. */
  ASSERT_OK(srv_store_auth(conn, t1, replica_a, &who));
  memset(&seen, 0, sizeof(seen));
  seen.id = d1;
  ASSERT_OK(srv_store_device_list(conn, "alice", find_device, &seen));
  ASSERT_EQ(seen.calls, 2);
  ASSERT(seen.d.bound);
  ASSERT_MEM_EQ(seen.d.replica, replica_a, 16);
  ASSERT_GT(seen.d.last_seen_ms, 0);
  ASSERT(!seen.d.revoked);
  ASSERT_STR_EQ(seen.d.user, "alice");
  ASSERT_EQ(seen.d.role, ROLE_INSPECTOR);
  ASSERT_EQ(srv_store_auth(conn, t1, replica_b, &who), SRV_STORE_EMISMATCH);
  ASSERT(strstr(srv_store_errmsg(conn), "another replica") != NULL);
  ASSERT_EQ(who.device_id, 0);
  ASSERT_OK(srv_store_auth(conn, t1, replica_a, &who));
  ASSERT_EQ(who.device_id, d1);
  seen.id = d2;
  ASSERT_OK(srv_store_device_list(conn, NULL, find_device, &seen));
  ASSERT(!seen.d.bound);
  ASSERT_EQ(seen.d.last_seen_ms, 0);
  ASSERT_EQ(srv_store_device_list(conn, "nobody", find_device, &seen),
            SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_device_list(conn, NULL, stop_at_first, &calls), 42);
  ASSERT_EQ(calls, 1);

  /* A handshake of a bound device succeeds while another connection
   * holds the write lock (its last_seen_ms is simply not recorded). */
  ASSERT_EQ(sqlite3_open(dbpath, &lock), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(lock, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
  ASSERT_OK(srv_store_auth(conn, t1, replica_a, &who));
  sqlite3_exec(lock, "ROLLBACK", NULL, NULL, NULL);
  sqlite3_close(lock);

  /* Revocations step the epoch once each. */
  ASSERT_OK(srv_store_auth_epoch(conn, &epoch));
  ASSERT_EQ(epoch, 0);
  revoked_ids(0, NULL, 0);
  ASSERT_OK(srv_store_device_revoke(conn, d2)); /* never bound */
  ASSERT_OK(srv_store_auth_epoch(conn, &epoch));
  ASSERT_EQ(epoch, 1);
  ASSERT_EQ(srv_store_auth(conn, t2, replica_b, &who), SRV_STORE_EREVOKED);
  ASSERT_OK(srv_store_device_revoke(conn, d2)); /* again: no change */
  ASSERT_EQ(srv_store_device_revoke(conn, 999), SRV_STORE_ENOTFOUND);
  ASSERT_OK(srv_store_auth_epoch(conn, &epoch));
  ASSERT_EQ(epoch, 1);
  ASSERT_OK(srv_store_device_revoke(conn, d1));
  ASSERT_OK(srv_store_auth_epoch(conn, &epoch));
  ASSERT_EQ(epoch, 2);
  /* Only the bound replica learns of the revocation. */
  ASSERT_EQ(srv_store_auth(conn, t1, replica_a, &who), SRV_STORE_EREVOKED);
  ASSERT_EQ(srv_store_auth(conn, t1, replica_b, &who), SRV_STORE_EMISMATCH);
  seen.id = d1;
  ASSERT_OK(srv_store_device_list(conn, NULL, find_device, &seen));
  ASSERT(seen.d.revoked);
  ASSERT_GT(seen.d.revoked_ms, 0);
  want[0] = d1;
  want[1] = d2;
  revoked_ids(0, want, 2);
  revoked_ids(1, want, 1);
  revoked_ids(2, NULL, 0);

  /* Deleting a user revokes their live devices in one step. */
  ASSERT_OK(srv_store_device_revoke(conn, db[1]));
  ASSERT_OK(srv_store_user_delete(conn, "bob"));
  ASSERT_OK(srv_store_auth_epoch(conn, &epoch));
  ASSERT_EQ(epoch, 4);
  want[0] = db[0];
  want[1] = db[2];
  revoked_ids(3, want, 2);
  want[0] = d1;
  want[1] = db[0];
  want[2] = db[1];
  want[3] = db[2];
  revoked_ids(1, want, 4);
  for (i = 0; i < 3; i++)
    ASSERT_EQ(srv_store_auth(conn, tb[i], replica_b, &who), SRV_STORE_EREVOKED);
  seen.id = db[0];
  ASSERT_OK(srv_store_device_list(conn, "bob", find_device, &seen));
  ASSERT(seen.d.user_deleted);
  ASSERT(seen.d.revoked);
  ASSERT_OK(srv_store_check(conn));
  close_all();
}

/* ---- assignments and scopes -------------------------------------------- */

struct assignment_seen {
  struct srv_assignment a[8];
  int n;
};

static int collect_assignment(const struct srv_assignment *a, void *data) {
  struct assignment_seen *s = data;

  ASSERT_LT(s->n, 8);
  s->a[s->n++] = *a;
  return 0;
}

/* The scopes of who at now, as a count and an order check. */
static size_t scopes_at(const struct srv_identity *who, int64_t now,
                        struct srv_scope *copy, size_t cap) {
  struct srv_scope *sc = NULL;
  size_t n = 0;
  size_t i;
  bool all = true;

  ASSERT_OK(srv_store_scopes(conn, who, now, &sc, &n, &all));
  ASSERT(!all);
  for (i = 1; i < n; i++)
    ASSERT_LT(fsp_scope_cmp(sc[i - 1].kind, sc[i - 1].id, sc[i].kind, sc[i].id),
              0);
  for (i = 0; i < n && i < cap; i++)
    copy[i] = sc[i];
  fsp_free(sc);
  return n;
}

TEST(assignments_expire_and_make_scopes) {
  struct srv_scope sc[8];
  struct assignment_seen seen;
  struct srv_scope *none = NULL;
  struct rec vis3;
  struct srv_outcome o;
  uint8_t v3[16];
  uint8_t v9[16];
  size_t n = 9;
  bool all = false;
  int64_t now = wall_ms();
  int64_t end = now + 3600 * 1000;

  world_init();
  ASSERT_EQ(scopes_at(&W.alice, now, sc, 8), 0);
  ASSERT_OK(srv_store_scopes(conn, &W.ho, now, &none, &n, &all));
  ASSERT(all);
  ASSERT_EQ(n, 0);
  ASSERT(none == NULL);

  /* An inspector sees the visit and its service; an expert the visit. */
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  ASSERT_OK(srv_store_assign(conn, W.v1, "eve", 0));
  ASSERT_EQ(scopes_at(&W.alice, now, sc, 8), 2);
  ASSERT(scope_eq(&sc[0], K_VISIT, W.v1));
  ASSERT(scope_eq(&sc[1], K_SERVICE, W.s1));
  ASSERT_EQ(scopes_at(&W.eve, now, sc, 8), 1);
  ASSERT(scope_eq(&sc[0], K_VISIT, W.v1));

  /* Until an end (exclusive); assigning again replaces it. */
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", end));
  ASSERT_EQ(scopes_at(&W.alice, end - 1, sc, 8), 4);
  ASSERT(scope_eq(&sc[0], K_VISIT, W.v1));
  ASSERT(scope_eq(&sc[1], K_VISIT, W.v2));
  ASSERT(scope_eq(&sc[2], K_SERVICE, W.s1));
  ASSERT(scope_eq(&sc[3], K_SERVICE, W.s2));
  ASSERT_EQ(scopes_at(&W.alice, end, sc, 8), 2);
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", now - 1000)); /* past */
  ASSERT_EQ(scopes_at(&W.alice, now, sc, 8), 2);
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", 0));
  ASSERT_EQ(scopes_at(&W.alice, end + 1000000, sc, 8), 4);

  /* A visit the server does not hold yet: no service for it; a second
   * visit of the same service: the service once. */
  mkid(v9, 0x71, 9);
  ASSERT_OK(srv_store_assign(conn, v9, "alice", 0));
  mkid(v3, 0x71, 3);
  mk_visit(&vis3, v3, W.s1, "bob", 1);
  ASSERT_EQ(push_one_as(&W.ho, &vis3, &o), OUT_APPLIED);
  ASSERT_OK(srv_store_assign(conn, v3, "alice", 0));
  ASSERT_EQ(scopes_at(&W.alice, now, sc, 8), 6);

  /* Who cannot be assigned. */
  ASSERT_EQ(srv_store_assign(conn, W.v1, "office", 0), SRV_STORE_EINVAL);
  ASSERT(strstr(srv_store_errmsg(conn), "head_office") != NULL);
  ASSERT_EQ(srv_store_assign(conn, W.v1, "nobody", 0), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_assign(conn, W.v1, "alice", -5), SRV_STORE_EINVAL);

  /* The list: by user, then visit. */
  memset(&seen, 0, sizeof(seen));
  ASSERT_OK(srv_store_assignment_list(conn, NULL, collect_assignment, &seen));
  ASSERT_EQ(seen.n, 5);
  ASSERT_STR_EQ(seen.a[0].user, "alice");
  ASSERT_MEM_EQ(seen.a[0].visit, W.v1, 16);
  ASSERT_MEM_EQ(seen.a[1].visit, W.v2, 16);
  ASSERT_EQ(seen.a[1].until_ms, 0);
  ASSERT_MEM_EQ(seen.a[2].visit, v3, 16);
  ASSERT_MEM_EQ(seen.a[3].visit, v9, 16);
  ASSERT_STR_EQ(seen.a[4].user, "eve");
  ASSERT_EQ(seen.a[4].role, ROLE_EXPERT);
  ASSERT_GT(seen.a[4].created_ms, 0);
  memset(&seen, 0, sizeof(seen));
  ASSERT_OK(srv_store_assignment_list(conn, "eve", collect_assignment, &seen));
  ASSERT_EQ(seen.n, 1);
  ASSERT_EQ(
      srv_store_assignment_list(conn, "nobody", collect_assignment, &seen),
      SRV_STORE_ENOTFOUND);

  /* Unassigning ends it at once, and only once. */
  ASSERT_OK(srv_store_unassign(conn, W.v2, "alice"));
  ASSERT_EQ(srv_store_unassign(conn, W.v2, "alice"), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_unassign(conn, W.v2, "nobody"), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(scopes_at(&W.alice, now, sc, 8), 4);
  /* A deleted user sees nothing new and cannot be assigned. */
  ASSERT_OK(srv_store_user_delete(conn, "eve"));
  ASSERT_EQ(srv_store_assign(conn, W.v2, "eve", 0), SRV_STORE_ENOTFOUND);
  close_all();
}

/* ---- push policy -------------------------------------------------------- */

TEST(push_policy_inspector) {
  static struct rec r[10];
  struct rec *batch[10];
  struct srv_outcome out[10];
  char v2hex[33];
  char s2hex[33];
  uint8_t id[16];
  int64_t rec0;
  int64_t h0;
  int64_t cur0;
  int64_t rec1;
  int64_t h1;
  int64_t cur1;
  size_t i;

  world_init();
  hex32(W.v2, v2hex);
  hex32(W.s2, s2hex);
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  counts(&rec0, &h0, &cur0);

  mkid(id, 0x0b, 100);
  mk_obs(&r[0], id, W.v1, "alice", 1); /* 0: new, assigned visit */
  mkid(id, 0x0b, 101);
  mk_obs(&r[1], id, W.v2, "alice", 1);        /* 1: new, visit not assigned */
  mk_obs(&r[2], W.obs1.id, W.v2, "alice", 2); /* 2: moved out of V1 */
  mk_visit(&r[3], W.v1, W.s1, "alice", 2);    /* 3: the visit she leads */
  mk_visit(&r[4], W.v2, W.s2, "bob", 2);      /* 4: bob's visit */
  mkid(id, 0x1e, 100);
  mk_note(&r[5], id, W.v1, "alice", 1); /* 5: interview note */
  mkid(id, 0x3e, 100);
  mk_req(&r[6], id, W.s1, "alice", 1); /* 6: the visit's service */
  mkid(id, 0x3e, 101);
  mk_req(&r[7], id, W.s2, "alice", 1); /* 7: another service */
  mk_tomb(&r[8], C_OBSERVATION, W.obs1.id, K_VISIT, W.v1, 3); /* 8 */
  mk_visit(&r[9], W.v1, W.s1, "bob", 3); /* 9: handing the lead over */
  for (i = 0; i < 10; i++)
    batch[i] = &r[i];
  push_as(&W.alice, batch, 9, out);
  ASSERT_EQ(out[0].outcome, OUT_APPLIED);
  ASSERT_FORBIDDEN(out[1], "is not assigned to alice");
  ASSERT(strstr(out[1].reason, v2hex) != NULL);
  ASSERT_FORBIDDEN(out[2], v2hex);
  ASSERT_EQ(out[3].outcome, OUT_APPLIED);
  ASSERT_FORBIDDEN(out[4], "visits they lead");
  ASSERT_FORBIDDEN(out[5], "interview notes");
  ASSERT_EQ(out[6].outcome, OUT_APPLIED);
  ASSERT_FORBIDDEN(out[7], "not the service of a visit assigned to alice");
  ASSERT(strstr(out[7].reason, s2hex) != NULL);
  ASSERT_FORBIDDEN(out[8], "not delete");
  /* Refused changes stored nothing; the others did. */
  counts(&rec1, &h1, &cur1);
  ASSERT_EQ(rec1, rec0 + 2);
  ASSERT_EQ(h1, h0 + 3);
  ASSERT_EQ(cur1, cur0 + 2);
  ASSERT_EQ(push_one_as(&W.alice, &r[9], &out[9]), OUT_REFUSED);
  ASSERT_FORBIDDEN(out[9], "visits they lead");

  /* An expired assignment is no assignment; a current one is. */
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", wall_ms() - 1));
  ASSERT_EQ(push_one_as(&W.alice, &r[1], &out[1]), OUT_REFUSED);
  ASSERT_FORBIDDEN(out[1], "or the assignment expired");
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", wall_ms() + 3600000));
  ASSERT_EQ(push_one_as(&W.alice, &r[1], &out[1]), OUT_APPLIED);
  ASSERT_EQ(push_one_as(&W.alice, &r[7], &out[7]), OUT_APPLIED);

  /* Moving in from a visit she may not see: the stored scope counts. */
  ASSERT_OK(srv_store_unassign(conn, W.v2, "alice"));
  mk_obs(&r[2], W.obs2.id, W.v1, "alice", 2);
  ASSERT_EQ(push_one_as(&W.alice, &r[2], &out[2]), OUT_REFUSED);
  ASSERT_FORBIDDEN(out[2], "the record is stored under visit");
  ASSERT(strstr(out[2].reason, v2hex) != NULL);
  counts(&rec1, &h1, &cur1);
  ASSERT_EQ(rec1, rec0 + 4);
  ASSERT_EQ(h1, h0 + 5);

  /* The lead may not move their visit to another service: their scopes
   * follow it, so that would widen what they see. Head office may. */
  mk_visit(&r[3], W.v1, W.s2, "alice", 4);
  ASSERT_EQ(push_one_as(&W.alice, &r[3], &out[3]), OUT_REFUSED);
  ASSERT_FORBIDDEN(out[3], "only head office may move a visit");
  ASSERT_EQ(push_one_as(&W.ho, &r[3], &out[3]), OUT_APPLIED);
  close_all();
}

TEST(push_policy_expert) {
  static struct rec r[8];
  struct rec *batch[8];
  struct srv_outcome out[8];
  uint8_t id[16];
  int64_t rec0;
  int64_t h0;
  int64_t cur0;
  int64_t rec1;
  int64_t h1;
  int64_t cur1;
  size_t i;

  world_init();
  ASSERT_OK(srv_store_assign(conn, W.v1, "eve", 0));
  counts(&rec0, &h0, &cur0);
  mkid(id, 0x1e, 200);
  mk_note(&r[0], id, W.v1, "eve", 1); /* 0: her own new note */
  mkid(id, 0x1e, 201);
  mk_note(&r[1], id, W.v1, "frank", 1); /* 1: a note in frank's name */
  mkid(id, 0x0b, 200);
  mk_obs(&r[2], id, W.v1, "eve", 1);               /* 2: an observation */
  mk_note(&r[3], W.note_frank.id, W.v1, "eve", 2); /* 3: taking frank's */
  mk_note(&r[4], W.note_eve.id, W.v1, "eve", 2);   /* 4: editing hers */
  mk_visit(&r[5], W.v1, W.s1, "alice", 2);         /* 5: the visit */
  mk_tomb(&r[6], C_NOTE, W.note_frank.id, K_VISIT, W.v1, 3); /* 6 */
  mkid(id, 0x1e, 202);
  mk_note(&r[7], id, W.v2, "eve", 1); /* 7: a visit not hers */
  for (i = 0; i < 8; i++)
    batch[i] = &r[i];
  push_as(&W.eve, batch, 8, out);
  ASSERT_EQ(out[0].outcome, OUT_APPLIED);
  ASSERT_FORBIDDEN(out[1], "experts may write only their own interview notes");
  ASSERT_FORBIDDEN(out[2], "experts may write only their own interview notes");
  ASSERT_FORBIDDEN(out[3], "experts may write only their own interview notes");
  ASSERT_EQ(out[4].outcome, OUT_APPLIED);
  ASSERT_FORBIDDEN(out[5], "experts may write only their own interview notes");
  ASSERT_FORBIDDEN(out[6], "experts may write only their own interview notes");
  ASSERT_FORBIDDEN(out[7], "is not assigned to eve");
  counts(&rec1, &h1, &cur1);
  ASSERT_EQ(rec1, rec0 + 1);
  ASSERT_EQ(h1, h0 + 2);
  ASSERT_EQ(cur1, cur0 + 1);

  /* Consent withdrawn: she deletes her own note. */
  mk_tomb(&r[6], C_NOTE, W.note_eve.id, K_VISIT, W.v1, 3);
  ASSERT_EQ(push_one_as(&W.eve, &r[6], &out[6]), OUT_APPLIED);
  ASSERT_EQ(sql_int(dbpath, "SELECT owner = 'eve' FROM versions WHERE "
                            "deleted = 1"),
            1);
  close_all();
}

TEST(push_policy_head_office_may_do_everything) {
  static struct rec r[6];
  struct rec *batch[6];
  struct srv_outcome out[6];
  uint8_t id[16];
  uint8_t s9[16];
  size_t i;

  world_init(); /* head office stored everything, assigned nowhere */
  mkid(s9, 0x51, 9);
  mk_service(&r[0], s9, 1);
  mk_visit(&r[1], W.v2, W.s2, "alice", 2);
  mk_note(&r[2], W.note_frank.id, W.v1, "frank", 2);
  mk_tomb(&r[3], C_OBSERVATION, W.obs1.id, K_VISIT, W.v1, 2);
  mk_obs(&r[4], W.obs2.id, W.v1, "bob", 2); /* moved between visits */
  mkid(id, 0x3e, 300);
  mk_req(&r[5], id, s9, "office", 1);
  for (i = 0; i < 6; i++)
    batch[i] = &r[i];
  push_as(&W.ho, batch, 6, out);
  for (i = 0; i < 6; i++)
    if (out[i].outcome != OUT_APPLIED)
      test_fail(__FILE__, __LINE__, "change %zu: %d %s", i, out[i].outcome,
                out[i].reason);
  close_all();
}

TEST(push_known_versions_pass_after_unassignment) {
  static struct rec v1;
  static struct rec v2;
  static struct rec v3;
  struct srv_outcome o;
  uint8_t id[16];

  world_init();
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  mkid(id, 0x0b, 400);
  mk_obs(&v1, id, W.v1, "alice", 1);
  mk_obs(&v2, id, W.v1, "alice", 2);
  mk_obs(&v3, id, W.v1, "alice", 3);
  ASSERT_EQ(push_one_as(&W.alice, &v1, &o), OUT_APPLIED);
  ASSERT_EQ(push_one_as(&W.alice, &v2, &o), OUT_APPLIED);
  ASSERT_OK(srv_store_unassign(conn, W.v1, "alice"));
  /* A retried push is answered as before; anything new is refused. */
  ASSERT_EQ(push_one_as(&W.alice, &v2, &o), OUT_KNOWN);
  ASSERT_EQ(push_one_as(&W.alice, &v1, &o), OUT_STALE);
  ASSERT_EQ(push_one_as(&W.alice, &v3, &o), OUT_REFUSED);
  ASSERT_FORBIDDEN(o, "is not assigned to alice");
  close_all();
}

/* ---- scoped pulls ------------------------------------------------------- */

TEST(pull_scoped_inspector_and_expert) {
  static struct sim s;
  static struct rec del;
  static struct rec del_frank;
  struct srv_outcome o;

  world_init();
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  ASSERT_OK(srv_store_assign(conn, W.v1, "eve", 0));

  sim_init(&s, 3);
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.nrec, 6);
  ASSERT(sim_has(&s, W.vis1.id));
  ASSERT(sim_has(&s, W.svc1.id));
  ASSERT(sim_has(&s, W.obs1.id));
  ASSERT(sim_has(&s, W.note_eve.id));
  ASSERT(sim_has(&s, W.note_frank.id));
  ASSERT(sim_has(&s, W.req1.id));
  ASSERT_EQ(s.nheld, 2);
  ASSERT_EQ(s.cursor, 10); /* the store's last seq */

  sim_init(&s, 3);
  sim_sync(&s, &W.eve);
  ASSERT_EQ(s.nrec, 2);
  ASSERT(sim_has(&s, W.vis1.id));
  ASSERT(sim_has(&s, W.note_eve.id));
  ASSERT_EQ(s.nheld, 1);
  ASSERT_EQ(s.cursor, 10);

  /* Her own deletion comes back to her; frank's does not. */
  mk_tomb(&del, C_NOTE, W.note_eve.id, K_VISIT, W.v1, 2);
  ASSERT_EQ(push_one_as(&W.eve, &del, &o), OUT_APPLIED);
  mk_tomb(&del_frank, C_NOTE, W.note_frank.id, K_VISIT, W.v1, 2);
  ASSERT_EQ(push_one_as(&W.ho, &del_frank, &o), OUT_APPLIED);
  sim_sync(&s, &W.eve);
  ASSERT_EQ(s.nrec, 2);
  ASSERT(s.rec[1].deleted || s.rec[0].deleted);
  ASSERT_EQ(s.cursor, 12);

  /* Head office: everything, through the plain feed. */
  sim_init(&s, 4);
  sim_sync(&s, &W.ho);
  ASSERT_EQ(s.nrec, 10);
  ASSERT_EQ(s.backfill_pages, 0);
  ASSERT_EQ(s.nheld, 0);
  close_all();
}

TEST(pull_backfills_a_new_assignment) {
  static struct sim s;
  static struct rec extra[9];
  struct rec *batch[9];
  struct srv_outcome out[9];
  struct srv_pull_req req;
  struct srv_page page;
  struct srv_scope held[2];
  struct srv_scope other;
  uint8_t id[16];
  uint64_t cursor;
  uint64_t after;
  size_t i;

  world_init();
  /* Six more observations in V2 and two more requirements of S2. */
  for (i = 0; i < 6; i++) {
    mkid(id, 0x0b, (uint32_t)(500 + i));
    mk_obs(&extra[i], id, W.v2, "bob", 1);
  }
  for (i = 6; i < 8; i++) {
    mkid(id, 0x3e, (uint32_t)(500 + i));
    mk_req(&extra[i], id, W.s2, "bob", 1);
  }
  for (i = 0; i < 8; i++)
    batch[i] = &extra[i];
  push_as(&W.ho, batch, 8, out);
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  sim_init(&s, 2);
  sim_sync(&s, &W.alice);
  cursor = s.cursor;
  ASSERT_EQ(cursor, 18);
  /* From cursor 0, V1 and S1 were backfilled empty (nothing <= 0). */
  ASSERT_EQ(s.backfill_pages, 2);
  s.backfill_pages = 0;
  ASSERT(!sim_has(&s, W.obs2.id));

  /* Assigned V2; one more V2 observation arrives after the cursor. */
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", 0));
  mkid(id, 0x0b, 600);
  mk_obs(&extra[8], id, W.v2, "bob", 1);
  ASSERT_EQ(push_one_as(&W.ho, &extra[8], &out[8]), OUT_APPLIED);

  /* Resuming and restarting a backfill, by hand first: V2 holds 8
   * versions up to the cursor, 2 a page. */
  held[0].kind = K_VISIT;
  memcpy(held[0].id, W.v1, 16);
  held[1].kind = K_SERVICE;
  memcpy(held[1].id, W.s1, 16);
  memset(&req, 0, sizeof(req));
  req.cursor = cursor;
  req.max_records = 2;
  req.max_bytes = 1 << 20;
  req.held = held;
  req.nheld = 2;
  req.now_ms = wall_ms();
  ASSERT_OK(srv_store_pull(conn, &W.alice, &req, &page));
  ASSERT(page.backfilling);
  ASSERT(scope_eq(&page.backfill, K_VISIT, W.v2));
  ASSERT_EQ(page.n, 2);
  ASSERT(!page.backfill_done);
  ASSERT_EQ(page.backfill_next, page.changes[1]->seq);
  ASSERT_EQ(page.next_cursor, cursor);
  ASSERT(page.more);
  after = page.backfill_next;
  other = page.backfill;
  srv_page_free(&page);
  req.backfill = &other;
  req.backfill_after = after;
  ASSERT_OK(srv_store_pull(conn, &W.alice, &req, &page));
  ASSERT_EQ(page.n, 2);
  ASSERT_GT(page.changes[0]->seq, after);
  srv_page_free(&page);
  ASSERT_OK(srv_store_pull(conn, &W.alice, &req, &page)); /* repeats */
  ASSERT_EQ(page.n, 2);
  ASSERT_GT(page.changes[0]->seq, after);
  srv_page_free(&page);
  /* A position for another scope does not apply: it starts over. */
  other.kind = K_SERVICE;
  memcpy(other.id, W.s2, 16);
  req.backfill = &other;
  ASSERT_OK(srv_store_pull(conn, &W.alice, &req, &page));
  ASSERT(scope_eq(&page.backfill, K_VISIT, W.v2));
  ASSERT_EQ(page.n, 2);
  ASSERT_LE(page.changes[0]->seq, after);
  srv_page_free(&page);

  /* The client's way: V2 (8 versions) in 4 pages, S2 (4) in 2, then the
   * feed with the new observation. */
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.backfill_pages, 6);
  ASSERT_EQ(s.nheld, 4);
  ASSERT(sim_has(&s, W.vis2.id));
  ASSERT(sim_has(&s, W.svc2.id));
  ASSERT(sim_has(&s, W.obs2.id));
  ASSERT(sim_has(&s, W.req2.id));
  for (i = 0; i < 9; i++)
    ASSERT(sim_has(&s, extra[i].id));
  ASSERT_EQ(s.nrec, 6 + 13);
  ASSERT_EQ(s.cursor, 19);
  close_all();
}

TEST(pull_removes_unassigned_and_expired_scopes) {
  static struct sim s;
  struct srv_pull_req req;
  struct srv_page page;
  struct srv_scope held;
  int64_t end = wall_ms() + 3600 * 1000;

  world_init();
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  ASSERT_OK(srv_store_assign(conn, W.v2, "alice", end));
  sim_init(&s, 4);
  s.now = end - 1;
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.nheld, 4);
  ASSERT_EQ(s.nrec, 10);

  /* At the end the V2 assignment has expired: V2 and S2 go. */
  s.now = end;
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.nremoved, 2);
  ASSERT(scope_eq(&s.removed[0], K_VISIT, W.v2));
  ASSERT(scope_eq(&s.removed[1], K_SERVICE, W.s2));
  ASSERT_EQ(s.nheld, 2);
  ASSERT(!sim_has(&s, W.obs2.id));
  ASSERT(!sim_has(&s, W.svc2.id));
  ASSERT(sim_has(&s, W.obs1.id));
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.nremoved, 2); /* said once the client stops holding them */

  /* Unassigned: the rest goes. */
  ASSERT_OK(srv_store_unassign(conn, W.v1, "alice"));
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.nremoved, 4);
  ASSERT_EQ(s.nheld, 0);
  ASSERT_EQ(s.nrec, 0);

  /* Head office is never told to remove anything. */
  held.kind = K_VISIT;
  memcpy(held.id, W.v1, 16);
  memset(&req, 0, sizeof(req));
  req.max_records = 10;
  req.max_bytes = 1 << 20;
  req.held = &held;
  req.nheld = 1;
  ASSERT_OK(srv_store_pull(conn, &W.ho, &req, &page));
  ASSERT_EQ(page.nremoved, 0);
  ASSERT(!page.backfilling);
  srv_page_free(&page);

  /* A backfill cut short by the unassignment: the device may hold part of
   * the scope without holding the scope, so the scope is removed too. */
  req.held = NULL;
  req.nheld = 0;
  req.backfill = &held;
  req.backfill_after = 3;
  ASSERT_OK(srv_store_pull(conn, &W.alice, &req, &page));
  ASSERT_EQ(page.nremoved, 1);
  ASSERT(scope_eq(&page.removed[0], K_VISIT, W.v1));
  srv_page_free(&page);
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  ASSERT_OK(srv_store_pull(conn, &W.alice, &req, &page));
  ASSERT_EQ(page.nremoved, 0); /* visible again: the backfill goes on */
  srv_page_free(&page);
  close_all();
}

TEST(pull_cursor_keeps_up_and_pages_merge_scopes) {
  static struct sim s;
  static struct sim e;
  static struct rec r[20];
  struct rec *batch[1];
  struct srv_outcome out[1];
  uint8_t id[16];
  uint64_t last = 0;
  size_t i;

  world_init();
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  ASSERT_OK(srv_store_assign(conn, W.v1, "eve", 0));
  sim_init(&s, 3);
  sim_sync(&s, &W.alice);
  sim_init(&e, 2);
  sim_sync(&e, &W.eve);

  /* Twenty versions elsewhere: an idle device's cursor follows. */
  for (i = 0; i < 20; i++) {
    mkid(id, 0x0b, (uint32_t)(700 + i));
    mk_obs(&r[i], id, W.v2, "bob", 1);
  }
  push_each_as(&W.ho, r, 20);
  ASSERT(!sim_pull(&s, &W.alice));
  ASSERT_EQ(s.cursor, 30);
  ASSERT_EQ(s.nrec, 6);

  /* Versions of V1 and S1 in alternation: every one arrives, in seq
   * order, three a page. */
  for (i = 0; i < 20; i++) {
    mkid(id, (uint8_t)(i % 2 ? 0x3e : 0x0b), (uint32_t)(800 + i));
    if (i % 2)
      mk_req(&r[i], id, W.s1, "alice", 1);
    else
      mk_obs(&r[i], id, W.v1, "alice", 1);
  }
  push_each_as(&W.ho, r, 20);
  s.pages = 0;
  sim_sync(&s, &W.alice);
  ASSERT_EQ(s.nrec, 26);
  ASSERT_EQ(s.cursor, 50);
  ASSERT_GE(s.pages, 7);

  /* The expert reads none of those observations; they bound her pages
   * (two rows a page per scope) and her cursor moves past them until
   * her own note comes. */
  mk_note(&r[0], W.note_eve.id, W.v1, "eve", 2);
  batch[0] = &r[0];
  push_as(&W.eve, batch, 1, out);
  ASSERT_EQ(out[0].outcome, OUT_APPLIED);
  e.pages = 0;
  e.empty_pages = 0;
  last = e.cursor;
  sim_sync(&e, &W.eve);
  ASSERT_EQ(e.empty_pages, 3);
  ASSERT_EQ(e.pages, 4);
  ASSERT_EQ(e.nrec, 2);
  ASSERT_EQ(e.cursor, 51);
  ASSERT_GT(e.cursor, last);
  close_all();
}

TEST(pull_scoped_reads_only_its_scope) {
  static struct rec r[100];
  static struct rec mine[3];
  struct srv_identity alice;
  struct srv_pull_req req;
  struct srv_page page;
  struct srv_scope held;
  uint8_t v[16];
  uint8_t other[16];
  uint8_t id[16];
  size_t i;
  int b;

  open_fresh();
  make_user("alice", ROLE_INSPECTOR, &alice);
  mkid(v, 0x71, 1);
  for (i = 0; i < 3; i++) {
    mkid(id, 0x0b, (uint32_t)(10 + i));
    mk_obs(&mine[i], id, v, "alice", 1);
  }
  /* 3 of her versions among 800 of 80 other visits. */
  for (b = 0; b < 8; b++) {
    for (i = 0; i < 100; i++) {
      mkid(other, 0x72, (uint32_t)(b * 10 + i % 10));
      mkid(id, 0x0c, (uint32_t)(b * 100 + i));
      mk_obs(&r[i], id, other, "bob", 1);
    }
    push_each_as(&tester, r, 100);
    if (b == 3)
      push_each_as(&tester, mine, 3);
  }
  ASSERT_OK(srv_store_assign(conn, v, "alice", 0));
  held.kind = K_VISIT;
  memcpy(held.id, v, 16);
  memset(&req, 0, sizeof(req));
  req.max_records = 100;
  req.max_bytes = 1 << 20;
  req.held = &held;
  req.nheld = 1;
  req.now_ms = wall_ms();
  ASSERT_OK(srv_store_pull(conn, &alice, &req, &page));
  ASSERT_EQ(page.n, 3);
  ASSERT(!page.more);
  ASSERT_EQ(page.next_cursor, 803);
  for (i = 0; i < 3; i++)
    ASSERT_MEM_EQ(page.changes[i]->scope->id.data, v, 16);
  srv_page_free(&page);
  /* Each scope's part of a page comes from the covering index alone. */
  ASSERT_OK(srv_store_check(conn));
  sql_exec(dbpath, "DROP INDEX versions_scope");
  srv_store_conn_close(conn);
  {
    char err[256];
    ASSERT_OK(srv_store_conn_open(store, &conn, err, sizeof(err)));
  }
  ASSERT_EQ(srv_store_check(conn), SRV_STORE_ECORRUPT);
  ASSERT(strstr(srv_store_errmsg(conn), "versions_scope") != NULL);
  close_all();
}

TEST(scoped_push_and_pull_survive_failed_allocations) {
  static struct rec a;
  static struct rec b;
  struct srv_outcome out[2];
  struct srv_pull_req req;
  struct srv_page page;
  struct srv_scope held;
  uint8_t id[16];
  int64_t r0;
  int64_t h0;
  int64_t c0;
  int64_t r1;
  int64_t h1;
  int64_t c1;
  uint64_t k;
  int rc;

  world_init();
  ASSERT_OK(srv_store_assign(conn, W.v1, "alice", 0));
  mkid(id, 0x0b, 900);
  mk_obs(&a, id, W.v1, "alice", 1);
  mkid(id, 0x0b, 901);
  mk_obs(&b, id, W.v2, "alice", 1);
  counts(&r0, &h0, &c0);
  for (k = 1;; k++) {
    Fieldsync__Change *ch[2] = {&a.c, &b.c};

    ASSERT_OK(srv_store_begin(conn));
    fsp_alloc_fail_at(k, true);
    rc = srv_store_push(conn, &W.alice, ch, 2, NULL, out);
    fsp_alloc_fail_at(0, false);
    if (rc == 0) {
      ASSERT_OK(srv_store_commit(conn));
      break;
    }
    ASSERT_EQ(rc, SRV_STORE_ENOMEM);
    srv_store_rollback(conn);
    counts(&r1, &h1, &c1);
    ASSERT_EQ(h1, h0);
    ASSERT_LT(k, 1000);
  }
  ASSERT_EQ(out[0].outcome, OUT_APPLIED);
  ASSERT_EQ(out[1].outcome, OUT_REFUSED);

  /* A page that removes a scope and backfills another. */
  held.kind = K_VISIT;
  memcpy(held.id, W.v2, 16);
  memset(&req, 0, sizeof(req));
  req.cursor = 11;
  req.max_records = 10;
  req.max_bytes = 1 << 20;
  req.held = &held;
  req.nheld = 1;
  req.now_ms = wall_ms();
  for (k = 1;; k++) {
    fsp_alloc_fail_at(k, true);
    rc = srv_store_pull(conn, &W.alice, &req, &page);
    fsp_alloc_fail_at(0, false);
    if (rc == 0)
      break;
    ASSERT_EQ(rc, SRV_STORE_ENOMEM);
    ASSERT_EQ(page.n, 0);
    ASSERT_EQ(page.nremoved, 0);
    ASSERT(page.removed == NULL);
    ASSERT_EQ(page.next_cursor, 11);
    ASSERT_LT(k, 1000);
  }
  ASSERT_EQ(page.nremoved, 1);
  ASSERT(page.backfilling);
  ASSERT(scope_eq(&page.backfill, K_VISIT, W.v1));
  ASSERT_EQ(page.n, 5); /* visit, observation, two notes, the new one */
  ASSERT(page.backfill_done);
  srv_page_free(&page);
  close_all();
}

/* ---- failed allocations ------------------------------------------------ */

TEST(push_and_pull_survive_failed_allocations) {
  struct sample_change s[3];
  struct sample_change conflict;
  Fieldsync__Change *ch[4];
  struct srv_outcome out[4];
  struct fsp_limits lim;
  struct srv_page page;
  int64_t r;
  int64_t h;
  int64_t cur;
  uint64_t k;
  size_t i;
  int rc;

  open_fresh();
  fsp_limits_default(&lim);
  for (i = 0; i < 3; i++) {
    sample_change_init(&s[i], (uint32_t)(80 + i), 30);
    ch[i] = &s[i].c;
  }
  push(ch, 1, out);
  sample_change_init(&conflict, 80, 30);
  set_vv(&conflict, 9, 1);
  set_evidence(&conflict, "a concurrent edit");
  ch[3] = &conflict.c;
  /* Fail the k-th allocation: the push either succeeds or fails as a
   * whole, with nothing of it kept. */
  for (k = 1;; k++) {
    ASSERT_OK(srv_store_begin(conn));
    fsp_alloc_fail_at(k, true);
    rc = srv_store_push(conn, &tester, ch, 4, &lim, out);
    fsp_alloc_fail_at(0, false);
    if (rc == 0) {
      ASSERT_OK(srv_store_commit(conn));
      break;
    }
    ASSERT_EQ(rc, SRV_STORE_ENOMEM);
    srv_store_rollback(conn);
    counts(&r, &h, &cur);
    ASSERT_EQ(h, 1);
    ASSERT_LT(k, 1000);
  }
  counts(&r, &h, &cur);
  ASSERT_EQ(h, 4);
  for (k = 1;; k++) {
    struct srv_pull_req req = feed_req(0, 10, 1 << 20);

    fsp_alloc_fail_at(k, true);
    rc = srv_store_pull(conn, NULL, &req, &page);
    fsp_alloc_fail_at(0, false);
    if (rc == 0)
      break;
    ASSERT_EQ(rc, SRV_STORE_ENOMEM);
    ASSERT_EQ(page.n, 0);
    ASSERT_LT(k, 1000);
  }
  ASSERT_EQ(page.n, 4);
  srv_page_free(&page);
  close_all();
}

/* clang-format off */
TEST_LIST(
  TEST_ENTRY(store_open_create_reopen)
  TEST_ENTRY(store_two_servers_have_different_ids)
  TEST_ENTRY(store_refuses_text_file)
  TEST_ENTRY(store_refuses_foreign_sqlite)
  TEST_ENTRY(store_refuses_client_database)
  TEST_ENTRY(store_refuses_unopenable_paths)
  TEST_ENTRY(users_and_devices)
  TEST_ENTRY(auth_tokens)
  TEST_ENTRY(tokens_are_not_stored)
  TEST_ENTRY(push_new_known_stale)
  TEST_ENTRY(push_conflict_and_resolution)
  TEST_ENTRY(push_replica_id_reuse)
  TEST_ENTRY(push_refusals_do_not_stop_the_batch)
  TEST_ENTRY(push_tombstones)
  TEST_ENTRY(push_several_versions_of_one_record_in_a_batch)
  TEST_ENTRY(push_history_records_who_and_when)
  TEST_ENTRY(pull_pages_by_count_and_bytes)
  TEST_ENTRY(pull_only_current_and_seq_grows_across_commits)
  TEST_ENTRY(pull_query_uses_an_index)
  TEST_ENTRY(rollback_leaves_nothing)
  TEST_ENTRY(reader_sees_only_committed)
  TEST_ENTRY(push_and_pull_survive_failed_allocations)
  TEST_ENTRY(store_upgrades_a_version_1_database)
  TEST_ENTRY(store_refuses_a_newer_schema)
  TEST_ENTRY(auth_binds_replicas_and_revocation_steps_the_epoch)
  TEST_ENTRY(assignments_expire_and_make_scopes)
  TEST_ENTRY(push_policy_inspector)
  TEST_ENTRY(push_policy_expert)
  TEST_ENTRY(push_policy_head_office_may_do_everything)
  TEST_ENTRY(push_known_versions_pass_after_unassignment)
  TEST_ENTRY(pull_scoped_inspector_and_expert)
  TEST_ENTRY(pull_backfills_a_new_assignment)
  TEST_ENTRY(pull_removes_unassigned_and_expired_scopes)
  TEST_ENTRY(pull_cursor_keeps_up_and_pages_merge_scopes)
  TEST_ENTRY(pull_scoped_reads_only_its_scope)
  TEST_ENTRY(scoped_push_and_pull_survive_failed_allocations)
)
/* clang-format on */
