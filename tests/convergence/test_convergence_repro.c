/* SPDX-License-Identifier: MIT */
/* Minimal, deterministic reproducers of the defects the convergence test
 * (test_convergence.c) found, each against the real fieldsyncd on
 * 127.0.0.1. Each test states what must hold; it fails while the defect
 * is there.
 *   ack_keeps_later_version: an acknowledgement marks a later local
 *     version with the same content as acknowledged, so it is never sent.
 *   tombstone_after_move: a delete of a record whose visit was changed
 *     concurrently is refused by the server on every sync.
 *   resolve_keep_after_move: keeping a sibling whose visit differs from
 *     the last version pulled makes a version the server refuses on every
 *     sync (its scope is the pulled version's, its payload the kept one's).
 *   open_create_waits_for_lock: fieldsync_open with FIELDSYNC_OPEN_CREATE
 *     fails at once with FIELDSYNC_EBUSY when another connection holds a
 *     lock, instead of waiting like an open without the flag. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "fieldsync.h"
#include "harness.h"
#include "proc.h"
#include "faultnet.h"

#define VISIT1 "0190f0e0a0b0c0d0e0f0a1b2c3d4e5f6"
#define VISIT2 "0190f0e0a0b0c0d0e0f0a1b2c3d4e5f7"

static const char *fieldsyncd;
static const char *admin;
static char dir[128];
static char srvdb[192];
static char tokens[2][128];
static struct test_server srv;

static void admin_run(char **argv, char *out, size_t cap) {
  char err[512];
  int st = proc_run(argv, out, cap, err, sizeof(err), 30000);

  if (st != 0)
    test_fail(__FILE__, __LINE__, "fieldsync-admin: status %d: %s", st, err);
}

static void rm_dir(void) {
  char *a[] = {"/bin/rm", "-rf", dir, NULL};

  if (dir[0] != '\0' && proc_run(a, NULL, 0, NULL, 0, 30000) != 0)
    fprintf(stderr, "# could not remove %s\n", dir);
  dir[0] = '\0';
}

/* These tests fail while their defect is there, and test_fail exits: take
 * the server and the files down then too. */
static void cleanup_at_exit(void) {
  if (srv.pid > 0)
    server_kill(&srv);
  rm_dir();
}

static void make_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/fs-repro-XXXXXX");
  if (mkdtemp(dir) == NULL)
    test_fail(__FILE__, __LINE__, "mkdtemp: %s", strerror(errno));
  atexit(cleanup_at_exit);
}

/* A server with one user and two devices. */
static void setup(void) {
  char out[256];
  int i;

  make_dir();
  snprintf(srvdb, sizeof(srvdb), "%s/server.db", dir);
  {
    char *a[] = {(char *)admin, "--db",   srvdb,       "user", "add",
                 "lead",        "--role", "head_office", NULL};
    admin_run(a, out, sizeof(out));
  }
  for (i = 0; i < 2; i++) {
    char *a[] = {(char *)admin, "--db", srvdb, "device", "add", "lead", NULL};
    admin_run(a, out, sizeof(out));
    ASSERT(sscanf(out, "%127s", tokens[i]) == 1);
  }
  server_start(&srv, fieldsyncd, srvdb, NULL);
}

static void teardown(void) {
  if (srv.pid > 0)
    ASSERT_EQ(server_stop(&srv), 0);
  rm_dir();
}

static fieldsync_db *open_db(const char *name, int flags) {
  char path[256];
  fieldsync_db *db = NULL;
  int rc;

  snprintf(path, sizeof(path), "%s/%s.db", dir, name);
  rc = fieldsync_open(path, flags, name, &db);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", path, fieldsync_errmsg(db));
  return db;
}

static char refusal[512];

static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  (void)collection;
  (void)id;
  (void)data;
  if (strcmp(outcome, "refused") == 0)
    snprintf(refusal, sizeof(refusal), "%s", reason != NULL ? reason : "?");
}

/* Syncs db with server (an address, or NULL for fieldsyncd itself). */
static struct fieldsync_sync_stats sync_db(fieldsync_db *db, const char *addr,
                                           int device) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  int rc;

  memset(&o, 0, sizeof(o));
  o.server = addr != NULL ? addr : srv.addr;
  o.plaintext = 1; /* the test server listens on loopback only */
  o.token = tokens[device];
  o.timeout_ms = 15000;
  o.outcome = on_outcome;
  rc = fieldsync_sync(db, &o, &st);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "sync: %s", fieldsync_errmsg(db));
  return st;
}

static void create_obs(fieldsync_db *db, const char *visit, char id[33]) {
  fieldsync_draft *d = NULL;

  ASSERT_OK(fieldsync_draft_new(db, "observation", &d));
  ASSERT_OK(fieldsync_draft_set(d, "visit_id", visit));
  ASSERT_OK(fieldsync_draft_set(d, "judgement", "3"));
  ASSERT_OK(fieldsync_create(db, d, id));
  fieldsync_draft_free(d);
}

static void edit_field(fieldsync_db *db, const char *id, const char *field,
                       const char *value) {
  fieldsync_draft *d = NULL;

  ASSERT_OK(fieldsync_draft_for_edit(db, id, &d));
  ASSERT_OK(fieldsync_draft_set(d, field, value));
  if (fieldsync_edit(db, d) != 0)
    test_fail(__FILE__, __LINE__, "edit: %s", fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

/* The record's versions as "vv hash pending" lines, winner first, into
 * out (vv as compact JSON with sorted keys). Returns the count. */
static size_t versions(fieldsync_db *db, const char *id, char *out,
                       size_t cap) {
  char *json = NULL;
  json_t *o;
  json_t *v;
  size_t i;
  size_t off = 0;
  size_t n;

  ASSERT_OK(fieldsync_get_json(db, id, &json));
  o = json_loads(json, 0, NULL);
  ASSERT(o != NULL);
  out[0] = '\0';
  json_array_foreach(json_object_get(o, "versions"), i, v) {
    char *vv =
        json_dumps(json_object_get(v, "vv"), JSON_COMPACT | JSON_SORT_KEYS);
    if (off < cap)
      off += (size_t)snprintf(
          out + off, cap - off, "%s%s %.12s%s%s", i > 0 ? "; " : "", vv,
          json_string_value(json_object_get(v, "hash")),
          json_is_true(json_object_get(v, "deleted")) ? " tombstone" : "",
          json_is_true(json_object_get(v, "pending")) ? " pending" : "");
    free(vv);
  }
  n = json_array_size(json_object_get(o, "versions"));
  json_decref(o);
  fieldsync_free(json);
  return n;
}

/* ---- ack_keeps_later_version ------------------------------------------- */

struct noop_edit {
  fieldsync_db *db; /* a second handle on the syncing replica's file */
  const char *id;
  char after[1024];
};

/* Runs on the proxy's thread while the client waits for its PushAck: the
 * user saves the record again without changing it, through the app's
 * other handle. The new version has a new vector but the same content
 * hash as the version in flight. */
static void noop_edit_cb(void *data) {
  struct noop_edit *e = data;

  edit_field(e->db, e->id, "judgement", "3");
  versions(e->db, e->id, e->after, sizeof(e->after));
}

TEST(ack_keeps_later_version) {
  char id[33];
  char a1[1024];
  char a2[1024];
  char c[1024];
  struct fieldsync_sync_stats st;
  size_t first_pushed;
  struct noop_edit e;
  struct faultnet_stats fst;
  struct faultnet rl;
  fieldsync_db *a;
  fieldsync_db *fresh;

  setup();
  a = open_db("tablet", FIELDSYNC_OPEN_CREATE);
  create_obs(a, VISIT1, id);
  memset(&e, 0, sizeof(e));
  e.db = open_db("tablet", 0);
  e.id = id;
  /* Sync through a proxy (faultnet, one session) that holds the Push (the
   * client's second frame, after Hello) until the edit is saved. */
  memset(&rl, 0, sizeof(rl));
  rl.server_port = srv.port;
  rl.max_sessions = 1;
  rl.deadline_ms = 30000;
  rl.hold_frame = 2;
  rl.hold_cb = noop_edit_cb;
  rl.hold_data = &e;
  faultnet_start(&rl);
  st = sync_db(a, rl.addr, 0);
  faultnet_join(&rl);
  faultnet_stats(&rl, &fst);
  ASSERT(fst.held);
  /* The session may already send the version saved meanwhile (its push
   * loop takes what became pending); if it did not, it must stay pending. */
  ASSERT(st.pushed == 1 || st.pushed == 2);
  first_pushed = st.pushed;
  versions(a, id, a1, sizeof(a1));
  /* Another sync must send the second version, since nothing acknowledged
   * it; then a new replica must receive it. */
  st = sync_db(a, NULL, 0);
  versions(a, id, a2, sizeof(a2));
  fresh = open_db("fresh", FIELDSYNC_OPEN_CREATE);
  (void)sync_db(fresh, NULL, 1);
  versions(fresh, id, c, sizeof(c));
  {
    /* Compare vectors only: "pending" is per replica. */
    char va[256];
    char vc[256];
    snprintf(va, sizeof(va), "%.*s", (int)strcspn(a2, " "), a2);
    snprintf(vc, sizeof(vc), "%.*s", (int)strcspn(c, " "), c);
    if (strcmp(va, vc) != 0 ||
        (first_pushed == 1 && strstr(a1, "pending") == NULL))
      test_fail(__FILE__, __LINE__,
                "a version saved while its same-content predecessor was in "
                "flight was marked acknowledged without being sent:\n"
                "  saved during the push: %s\n"
                "  after that sync:       %s (want it still pending)\n"
                "  the next sync pushed %zu; after it: %s\n"
                "  a new replica holds:   %s (want the same vector)",
                e.after, a1, st.pushed, a2, c);
  }
  fieldsync_close(e.db);
  fieldsync_close(a);
  fieldsync_close(fresh);
  teardown();
}

/* ---- tombstone_after_move ---------------------------------------------- */

TEST(tombstone_after_move) {
  char id[33];
  char v1[1024];
  char v2[1024];
  char first_refusal[512];
  struct fieldsync_sync_stats st1;
  struct fieldsync_sync_stats st2;
  fieldsync_db *c1;
  fieldsync_db *c2;

  setup();
  c1 = open_db("c1", FIELDSYNC_OPEN_CREATE);
  c2 = open_db("c2", FIELDSYNC_OPEN_CREATE);
  create_obs(c1, VISIT1, id);
  (void)sync_db(c1, NULL, 0);
  (void)sync_db(c2, NULL, 1);
  /* Concurrently: c1 moves the observation to the other visit, c2 edits
   * it where it was. */
  edit_field(c1, id, "visit_id", VISIT2);
  edit_field(c2, id, "judgement", "2");
  (void)sync_db(c1, NULL, 0);
  (void)sync_db(c2, NULL, 1); /* a conflict: both versions are kept */
  /* c2 resolves the conflict by deleting the record. */
  ASSERT_OK(fieldsync_delete(c2, id));
  refusal[0] = '\0';
  st1 = sync_db(c2, NULL, 1);
  snprintf(first_refusal, sizeof(first_refusal), "%s", refusal);
  st2 = sync_db(c2, NULL, 1);
  (void)sync_db(c1, NULL, 0);
  versions(c1, id, v1, sizeof(v1));
  versions(c2, id, v2, sizeof(v2));
  if (st1.refused != 0 || st2.refused != 0)
    test_fail(__FILE__, __LINE__,
              "the server refused the delete of a record whose visit was "
              "changed concurrently (\"%s\"), on the first sync (%zu) and "
              "again on the next (%zu), so the replicas never converge:\n"
              "  c1: %s\n  c2: %s",
              first_refusal, st1.refused, st2.refused, v1, v2);
  fieldsync_close(c1);
  fieldsync_close(c2);
  teardown();
}

/* ---- resolve_keep_after_move ------------------------------------------- */

/* The hash of the version of record id (on db) whose fields hold
 * visit_id == visit. */
static void hash_with_visit(fieldsync_db *db, const char *id, const char *visit,
                            char out[65]) {
  char *json = NULL;
  json_t *o;
  json_t *v;
  size_t i;

  out[0] = '\0';
  ASSERT_OK(fieldsync_get_json(db, id, &json));
  o = json_loads(json, 0, NULL);
  ASSERT(o != NULL);
  json_array_foreach(json_object_get(o, "versions"), i, v) {
    const char *vis = json_string_value(
        json_object_get(json_object_get(v, "fields"), "visit_id"));
    if (vis != NULL && strcmp(vis, visit) == 0)
      snprintf(out, 65, "%s", json_string_value(json_object_get(v, "hash")));
  }
  json_decref(o);
  fieldsync_free(json);
  ASSERT(out[0] != '\0');
}

TEST(resolve_keep_after_move) {
  char id[33];
  char keep[65];
  char v1[1024];
  char v2[1024];
  char first_refusal[512];
  struct fieldsync_sync_stats st1;
  struct fieldsync_sync_stats st2;
  fieldsync_db *c1;
  fieldsync_db *c2;

  setup();
  c1 = open_db("c1", FIELDSYNC_OPEN_CREATE);
  c2 = open_db("c2", FIELDSYNC_OPEN_CREATE);
  create_obs(c1, VISIT1, id);
  (void)sync_db(c1, NULL, 0);
  (void)sync_db(c2, NULL, 1);
  /* c2 moves the observation to the other visit; c1 edits it where it
   * was, then pulls the move: a conflict between a version in VISIT1 and
   * one in VISIT2. */
  edit_field(c2, id, "visit_id", VISIT2);
  (void)sync_db(c2, NULL, 1);
  edit_field(c1, id, "judgement", "2");
  (void)sync_db(c1, NULL, 0);
  /* c1 keeps its own version, in VISIT1. */
  hash_with_visit(c1, id, VISIT1, keep);
  ASSERT_OK(fieldsync_resolve_keep(c1, id, keep));
  refusal[0] = '\0';
  st1 = sync_db(c1, NULL, 0);
  snprintf(first_refusal, sizeof(first_refusal), "%s", refusal);
  st2 = sync_db(c1, NULL, 0);
  (void)sync_db(c2, NULL, 1);
  versions(c1, id, v1, sizeof(v1));
  versions(c2, id, v2, sizeof(v2));
  if (st1.refused != 0 || st2.refused != 0)
    test_fail(__FILE__, __LINE__,
              "the server refused the resolution that keeps the VISIT1 "
              "sibling after a VISIT2 version was pulled (\"%s\"), on the "
              "first sync (%zu) and again on the next (%zu), so the replicas "
              "never converge:\n  c1: %s\n  c2: %s",
              first_refusal, st1.refused, st2.refused, v1, v2);
  fieldsync_close(c1);
  fieldsync_close(c2);
  teardown();
}

/* ---- open_create_waits_for_lock ---------------------------------------- */

/* Holds an exclusive lock on a database for a while on a thread of its
 * own, then lets go. */
struct locker {
  sqlite3 *sql;
  pthread_t th;
  int hold_ms;
};

static void *locker_main(void *arg) {
  struct locker *l = arg;
  struct timespec ts;

  ts.tv_sec = l->hold_ms / 1000;
  ts.tv_nsec = (long)(l->hold_ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
  sqlite3_exec(l->sql, "COMMIT", NULL, NULL, NULL);
  sqlite3_close(l->sql);
  return NULL;
}

static void lock_for(struct locker *l, const char *path, int ms) {
  ASSERT_EQ(sqlite3_open(path, &l->sql), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(l->sql,
                         "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE",
                         NULL, NULL, NULL),
            SQLITE_OK);
  l->hold_ms = ms;
  ASSERT_OK(pthread_create(&l->th, NULL, locker_main, l));
}

/* Opens path with flags while another connection holds a lock for 300 ms;
 * returns fieldsync_open's code. (If this machine is so slow that the lock
 * is gone before the open, the open succeeds: the test can miss the
 * defect, never invent it.) */
static int open_while_locked(const char *path, int flags, char *msg,
                             size_t cap) {
  struct locker l;
  fieldsync_db *db = NULL;
  int rc;

  lock_for(&l, path, 300);
  rc = fieldsync_open(path, flags, NULL, &db);
  snprintf(msg, cap, "%s", fieldsync_errmsg(db));
  fieldsync_close(db);
  pthread_join(l.th, NULL);
  return rc;
}

TEST(open_create_waits_for_lock) {
  char path[256];
  char msg[256];
  fieldsync_db *db = NULL;
  int rc;

  make_dir();
  snprintf(path, sizeof(path), "%s/tablet.db", dir);
  ASSERT_OK(fieldsync_open(path, FIELDSYNC_OPEN_CREATE, "tablet", &db));
  ASSERT_OK(fieldsync_close(db));
  /* Without the flag, the open waits for the lock (busy timeout). */
  rc = open_while_locked(path, 0, msg, sizeof(msg));
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "open without CREATE: %s: %s",
              fieldsync_errname(rc), msg);
  /* With it, the open must wait just the same. */
  rc = open_while_locked(path, FIELDSYNC_OPEN_CREATE, msg, sizeof(msg));
  if (rc != 0)
    test_fail(__FILE__, __LINE__,
              "fieldsync_open(FIELDSYNC_OPEN_CREATE) on an existing database "
              "that another connection has locked for 300 ms: %s: %s (an "
              "open without the flag waits and succeeds)",
              fieldsync_errname(rc), msg);
  teardown();
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(ack_keeps_later_version) TEST_ENTRY(tombstone_after_move)
          TEST_ENTRY(resolve_keep_after_move)
              TEST_ENTRY(open_create_waits_for_lock)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_convergence_repro FIELDSYNCD FIELDSYNC-ADMIN "
                    "[TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
