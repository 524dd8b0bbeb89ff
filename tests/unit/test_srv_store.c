/* SPDX-License-Identifier: MIT */
/* The server store (srv_store.h): creating and refusing databases, users,
 * devices and token auth, every push outcome of the merge, the history, the
 * change feed's paging and cursors, its query plan, transactions, and
 * failed allocations. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* The change-feed query of srv_store_sqlite.c (ST_PULL), for its plan. */
#define PULL_SQL                                                               \
  "SELECT seq, record, collection, scope_kind, scope_id, hash, vv, deleted, "  \
  "payload, author, device_time_ms FROM versions WHERE current = 1 AND "       \
  "seq > ?1 ORDER BY seq LIMIT ?2"

static char dir[64];
static char dbpath[128];
static struct srv_store *store;
static struct srv_store_conn *conn;
static const struct srv_identity tester = {7, 3, "tester",
                                           FIELDSYNC__ROLE__ROLE_INSPECTOR};

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

/* Pulls a page and checks every change is a valid server change. */
static void pull(uint64_t cursor, uint32_t max, size_t max_bytes,
                 struct srv_page *page) {
  struct fsp_limits lim;
  struct fsp_error err;
  size_t i;

  fsp_limits_default(&lim);
  if (srv_store_pull(conn, cursor, max, max_bytes, page) != 0)
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
  ASSERT_EQ(sql_int(dbpath, "PRAGMA user_version"), 1);
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

  ASSERT_OK(srv_store_auth(conn, t1, &who));
  ASSERT_EQ(who.device_id, d1);
  ASSERT_STR_EQ(who.user, "insp");
  ASSERT_EQ(who.role, FIELDSYNC__ROLE__ROLE_INSPECTOR);
  ASSERT_OK(srv_store_auth(conn, t2, &who));
  ASSERT_EQ(who.device_id, d2);
  ASSERT_STR_EQ(who.user, "office");
  ASSERT_EQ(who.role, FIELDSYNC__ROLE__ROLE_HEAD_OFFICE);
  ASSERT_GT(who.user_id, 0);

  /* A well-formed token nobody was given. */
  memcpy(bad, t1, sizeof(t1));
  bad[10] = bad[10] == 'a' ? 'b' : 'a';
  ASSERT_EQ(srv_store_auth(conn, bad, &who), SRV_STORE_ENOTFOUND);
  ASSERT(strstr(srv_store_errmsg(conn), bad) == NULL);
  /* Malformed: short, long, upper case, wrong prefix, empty, NULL. */
  memcpy(bad, t1, sizeof(t1));
  bad[SRV_TOKEN_LEN - 1] = '\0';
  ASSERT_EQ(srv_store_auth(conn, bad, &who), SRV_STORE_ENOTFOUND);
  snprintf(bad, sizeof(bad), "%s0", t1);
  ASSERT_EQ(srv_store_auth(conn, bad, &who), SRV_STORE_ENOTFOUND);
  memcpy(bad, t1, sizeof(t1));
  bad[20] = 'A';
  ASSERT_EQ(srv_store_auth(conn, bad, &who), SRV_STORE_ENOTFOUND);
  memcpy(bad, t1, sizeof(t1));
  bad[0] = 'x';
  ASSERT_EQ(srv_store_auth(conn, bad, &who), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_auth(conn, "", &who), SRV_STORE_ENOTFOUND);
  ASSERT_EQ(srv_store_auth(conn, NULL, &who), SRV_STORE_ENOTFOUND);

  /* Revoked device, then deleted user (the other device). */
  sql_exec(dbpath, "UPDATE devices SET revoked = 1 WHERE id = 1");
  ASSERT_EQ(srv_store_auth(conn, t1, &who), SRV_STORE_ENOTFOUND);
  ASSERT(strstr(srv_store_errmsg(conn), "revoked") != NULL);
  ASSERT_OK(srv_store_auth(conn, t2, &who));
  sql_exec(dbpath, "UPDATE users SET deleted = 1 WHERE name = 'office'");
  ASSERT_EQ(srv_store_auth(conn, t2, &who), SRV_STORE_ENOTFOUND);
  /* A deleted user gets no new device. */
  ASSERT_EQ(srv_store_device_add(conn, "office", t2, &d2), SRV_STORE_ENOTFOUND);
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
  ASSERT_OK(srv_store_user_add(conn, "expert", 2));
  ASSERT_OK(srv_store_device_add(conn, "insp", t1, NULL));
  ASSERT_OK(srv_store_device_add(conn, "expert", t2, NULL));
  ASSERT_OK(srv_store_auth(conn, t1, &w1));
  ASSERT_OK(srv_store_auth(conn, t2, &w2));

  sample_change_init(&a, 40, 30);
  set_vv(&a, 1, 1);
  sample_change_init(&b, 40, 30);
  set_vv(&b, 2, 1);
  set_evidence(&b, "the expert's version");
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
  char err[256];

  open_fresh();
  fsp_limits_default(&lim);
  ASSERT_OK(srv_store_conn_open(store, &reader, err, sizeof(err)));
  sample_change_init(&s, 70, 30);
  ASSERT_OK(srv_store_begin(conn));
  ASSERT_OK(srv_store_push(conn, &tester, &ch, 1, &lim, &o));
  ASSERT_OK(srv_store_pull(reader, 0, 10, 1 << 20, &page));
  ASSERT_EQ(page.n, 0);
  srv_page_free(&page);
  ASSERT_OK(srv_store_commit(conn));
  ASSERT_OK(srv_store_pull(reader, 0, 10, 1 << 20, &page));
  ASSERT_EQ(page.n, 1);
  srv_page_free(&page);
  srv_store_conn_close(reader);
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
    fsp_alloc_fail_at(k, true);
    rc = srv_store_pull(conn, 0, 10, 1 << 20, &page);
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
)
/* clang-format on */
