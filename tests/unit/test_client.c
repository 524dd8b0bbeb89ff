/* SPDX-License-Identifier: MIT */
/* libfieldsync: opening and refusing databases, records and versions,
 * indexed queries, conflicts made by exchanging versions between two
 * replicas through the sync layer's slots, resolution, import and export. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "fieldsync.h"
#include "fsc_int.h"
#include "harness.h"

static char dir[64];

static void setup_dir(void) {
  snprintf(dir, sizeof(dir), "/tmp/fs-client-XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
}

static void path_in(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", dir, name);
}

static fieldsync_db *open_new(const char *name) {
  char path[128];
  fieldsync_db *db = NULL;

  path_in(path, sizeof(path), name);
  if (fieldsync_open(path, FIELDSYNC_OPEN_CREATE, name, &db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", path, fieldsync_errmsg(db));
  return db;
}

/* Creates a record of collection from "field=value" pairs; returns 0 or
 * the error, id in id_out. */
static int add(fieldsync_db *db, const char *collection, char id_out[33],
               const char *const *kv) {
  fieldsync_draft *d;
  int rc = fieldsync_draft_new(db, collection, &d);
  size_t i;

  if (rc != 0)
    return rc;
  for (i = 0; kv[i] != NULL; i += 2) {
    rc = fieldsync_draft_set(d, kv[i], kv[i + 1]);
    if (rc != 0)
      break;
  }
  if (rc == 0)
    rc = fieldsync_create(db, d, id_out);
  fieldsync_draft_free(d);
  return rc;
}

static int edit(fieldsync_db *db, const char *id, const char *field,
                const char *value) {
  fieldsync_draft *d;
  int rc = fieldsync_draft_for_edit(db, id, &d);

  if (rc != 0)
    return rc;
  rc = fieldsync_draft_set(d, field, value);
  if (rc == 0)
    rc = fieldsync_edit(db, d);
  fieldsync_draft_free(d);
  return rc;
}

static json_t *get(fieldsync_db *db, const char *id) {
  char *s = NULL;
  json_t *j;

  if (fieldsync_get_json(db, id, &s) != 0)
    test_fail(__FILE__, __LINE__, "get %s: %s", id, fieldsync_errmsg(db));
  j = json_loads(s, 0, NULL);
  fieldsync_free(s);
  ASSERT(j != NULL);
  return j;
}

static const char *vfield(json_t *rec, size_t v, const char *field) {
  json_t *x = json_object_get(
      json_object_get(json_array_get(json_object_get(rec, "versions"), v),
                      "fields"),
      field);
  return json_is_string(x) ? json_string_value(x) : NULL;
}

static const char *visit_a = "0194a1b2c3d4e5f60718293a4b5c6d7e";
static const char *visit_b = "0194a1b2c3d4e5f60718293a4b5c6d7f";
static const char *service_a = "0194a1b2c3d4e5f60718293a4b5c0000";

/* ---- opening ----------------------------------------------------------- */

TEST(open_create_and_reopen) {
  char path[128];
  char hex1[33];
  char hex2[33];
  fieldsync_db *db;

  setup_dir();
  db = open_new("a.db");
  fieldsync_replica_id(db, hex1);
  ASSERT_EQ(strlen(hex1), 32);
  ASSERT_OK(fieldsync_close(db));
  path_in(path, sizeof(path), "a.db");
  ASSERT_OK(fieldsync_open(path, 0, NULL, &db));
  fieldsync_replica_id(db, hex2);
  ASSERT_STR_EQ(hex1, hex2); /* the replica id is persistent */
  ASSERT_STR_EQ(fieldsync_errmsg(db), "ok");
  fieldsync_close(db);
  /* Two databases never share a replica id. */
  db = open_new("b.db");
  fieldsync_replica_id(db, hex2);
  ASSERT(strcmp(hex1, hex2) != 0);
  fieldsync_close(db);
  ASSERT_OK(fieldsync_close(NULL));
  ASSERT_EQ(fieldsync_version(), FIELDSYNC_VERSION_NUM);
}

TEST(open_refuses_bad_files) {
  char path[128];
  fieldsync_db *db;
  FILE *f;
  int fd;
  static const char text[] =
      "Resident said the food is lovely. This is not a database, though "
      "it is long enough to look like a header to a careless reader.\n";

  setup_dir();
  /* Missing without CREATE. */
  path_in(path, sizeof(path), "missing.db");
  ASSERT_EQ(fieldsync_open(path, 0, NULL, &db), FIELDSYNC_ECANTOPEN);
  ASSERT(strstr(fieldsync_errmsg(db), "no database at") != NULL);
  fieldsync_close(db);
  ASSERT(access(path, F_OK) != 0); /* nothing created */

  /* A directory. */
  ASSERT_EQ(fieldsync_open(dir, FIELDSYNC_OPEN_CREATE, NULL, &db),
            FIELDSYNC_ECANTOPEN);
  ASSERT(strstr(fieldsync_errmsg(db), "directory") != NULL);
  fieldsync_close(db);

  /* A text file: refused, and left byte-for-byte as it was. */
  path_in(path, sizeof(path), "notes.txt");
  f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs(text, f);
  fclose(f);
  ASSERT_EQ(fieldsync_open(path, FIELDSYNC_OPEN_CREATE, NULL, &db),
            FIELDSYNC_ENOTDB);
  ASSERT(strstr(fieldsync_errmsg(db), "not a fieldsync database") != NULL);
  fieldsync_close(db);
  {
    struct stat sb;
    ASSERT_OK(stat(path, &sb));
    ASSERT_EQ(sb.st_size, (long long)strlen(text));
  }

  /* Unwritable location. */
  ASSERT_NE(fieldsync_open("/proc/fieldsync-test.db", FIELDSYNC_OPEN_CREATE,
                           NULL, &db),
            0);
  fieldsync_close(db);
  path_in(path, sizeof(path), "no/such/dir.db");
  ASSERT_EQ(fieldsync_open(path, FIELDSYNC_OPEN_CREATE, NULL, &db),
            FIELDSYNC_ECANTOPEN);
  fieldsync_close(db);

  /* Corrupt: garbage over the first page of a real database. */
  db = open_new("c.db");
  fieldsync_close(db);
  path_in(path, sizeof(path), "c.db");
  fd = open(path, O_WRONLY);
  ASSERT(fd >= 0);
  {
    char junk[4096];
    memset(junk, 0x5a, sizeof(junk));
    ASSERT_EQ(pwrite(fd, junk, sizeof(junk), 100), (ssize_t)sizeof(junk));
  }
  close(fd);
  {
    int rc = fieldsync_open(path, 0, NULL, &db);
    ASSERT(rc == FIELDSYNC_ENOTDB || rc == FIELDSYNC_ECORRUPT);
    fieldsync_close(db);
  }

  /* Bad arguments. */
  ASSERT_EQ(fieldsync_open(NULL, 0, NULL, &db), FIELDSYNC_EINVAL);
  fieldsync_close(db);
  ASSERT_EQ(fieldsync_open("x", 0, NULL, NULL), FIELDSYNC_EINVAL);
}

TEST(open_refuses_newer_schema) {
  char path[128];
  fieldsync_db *db;
  char sql[64];

  setup_dir();
  db = open_new("new.db");
  snprintf(sql, sizeof(sql), "PRAGMA user_version = %d",
           FSC_SCHEMA_VERSION + 1);
  ASSERT_OK(sqlite3_exec(db->sql, sql, NULL, NULL, NULL));
  fieldsync_close(db);
  path_in(path, sizeof(path), "new.db");
  ASSERT_EQ(fieldsync_open(path, 0, NULL, &db), FIELDSYNC_ENEWER);
  ASSERT(strstr(fieldsync_errmsg(db), "newer") != NULL);
  fieldsync_close(db);
}

TEST(open_refuses_foreign_sqlite) {
  char path[128];
  sqlite3 *s;
  fieldsync_db *db;

  setup_dir();
  path_in(path, sizeof(path), "other.db");
  ASSERT_OK(sqlite3_open(path, &s));
  ASSERT_OK(sqlite3_exec(s, "CREATE TABLE t(x); INSERT INTO t VALUES(1)",
                         NULL, NULL, NULL));
  sqlite3_close(s);
  ASSERT_EQ(fieldsync_open(path, FIELDSYNC_OPEN_CREATE, NULL, &db),
            FIELDSYNC_ENOTDB);
  fieldsync_close(db);
  ASSERT_OK(sqlite3_open(path, &s));
  {
    sqlite3_stmt *st;
    ASSERT_OK(sqlite3_prepare_v2(s, "SELECT count(*) FROM sqlite_master", -1,
                                 &st, NULL));
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(st, 0), 1); /* untouched */
    sqlite3_finalize(st);
  }
  sqlite3_close(s);
}

/* ---- records ----------------------------------------------------------- */

TEST(create_get_edit_delete) {
  const char *obs[] = {"visit_id", visit_a, "standard_code", "OP9",
                       "judgement", "2", "evidence_text", "MAR gaps",
                       "case_refs", "C1", "case_refs", "C3", NULL};
  fieldsync_db *db;
  char id[33];
  json_t *j;

  setup_dir();
  db = open_new("r.db");
  ASSERT_OK(add(db, "observation", id, obs));
  ASSERT_EQ(strlen(id), 32);
  j = get(db, id);
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "collection")),
                "observation");
  ASSERT_STR_EQ(json_string_value(json_object_get(j, "id")), id);
  ASSERT(json_is_false(json_object_get(j, "deleted")));
  ASSERT(json_is_false(json_object_get(j, "conflict")));
  ASSERT_EQ(json_array_size(json_object_get(j, "versions")), 1);
  ASSERT_STR_EQ(vfield(j, 0, "standard_code"), "OP9");
  ASSERT_EQ(json_array_size(json_object_get(
                json_object_get(json_array_get(json_object_get(j, "versions"),
                                               0),
                                "fields"),
                "case_refs")),
            2);
  json_decref(j);

  ASSERT_OK(edit(db, id, "judgement", "3"));
  ASSERT_OK(edit(db, id, "case_refs", "C2")); /* replaces the list */
  j = get(db, id);
  {
    json_t *v0 = json_array_get(json_object_get(j, "versions"), 0);
    json_t *vv = json_object_get(v0, "vv");
    char me[33];
    fieldsync_replica_id(db, me);
    ASSERT_EQ(json_integer_value(json_object_get(vv, me)), 3);
    ASSERT_EQ(json_integer_value(json_object_get(json_object_get(v0, "fields"),
                                                 "judgement")),
              3);
    ASSERT_EQ(json_array_size(
                  json_object_get(json_object_get(v0, "fields"), "case_refs")),
              1);
  }
  json_decref(j);

  ASSERT_OK(fieldsync_delete(db, id));
  j = get(db, id);
  ASSERT(json_is_true(json_object_get(j, "deleted")));
  json_decref(j);
  ASSERT_EQ(fieldsync_delete(db, id), FIELDSYNC_EDELETED);
  ASSERT_EQ(edit(db, id, "judgement", "1"), FIELDSYNC_EDELETED);
  fieldsync_close(db);
}

TEST(bad_input_leaves_db_unchanged) {
  const char *ok[] = {"visit_id", visit_a, "standard_code", "OP9", NULL};
  const char *bad_judgement[] = {"visit_id", visit_a, "judgement", "5", NULL};
  const char *bad_field[] = {"visit_id", visit_a, "judgment", "3", NULL};
  const char *bad_int[] = {"visit_id", visit_a, "judgement", "high", NULL};
  const char *no_scope[] = {"standard_code", "OP9", NULL};
  const char *bad_date[] = {"service_id", service_a, "timescale_due",
                            "31/12/2026", NULL};
  fieldsync_db *db;
  char id[33];
  char *s = NULL;

  setup_dir();
  db = open_new("bad.db");
  ASSERT_OK(add(db, "observation", id, ok));
  ASSERT_EQ(add(db, "observations", id, ok), FIELDSYNC_ECOLLECTION);
  ASSERT(strstr(fieldsync_errmsg(db), "observations") != NULL);
  ASSERT_EQ(add(db, "observation", id, bad_field), FIELDSYNC_EFIELD);
  ASSERT(strstr(fieldsync_errmsg(db), "judgment") != NULL);
  ASSERT_EQ(add(db, "observation", id, bad_int), FIELDSYNC_EVALUE);
  ASSERT(strstr(fieldsync_errmsg(db), "judgement") != NULL);
  ASSERT_EQ(add(db, "observation", id, bad_judgement), FIELDSYNC_EVALUE);
  ASSERT(strstr(fieldsync_errmsg(db), "1-4") != NULL);
  ASSERT_EQ(add(db, "observation", id, no_scope), FIELDSYNC_EVALUE);
  ASSERT(strstr(fieldsync_errmsg(db), "visit_id") != NULL);
  ASSERT_EQ(add(db, "requirement", id, bad_date), FIELDSYNC_EVALUE);
  ASSERT_EQ(fieldsync_get_json(db, "zz", &s), FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_get_json(db, "00000000000000000000000000000001", &s),
            FIELDSYNC_ENOTFOUND);
  ASSERT_EQ(fieldsync_delete(db, "00000000000000000000000000000001"),
            FIELDSYNC_ENOTFOUND);
  {
    int64_t n = 0;
    sqlite3_stmt *st;
    ASSERT_OK(sqlite3_prepare_v2(db->sql, "SELECT count(*) FROM versions", -1,
                                 &st, NULL));
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    ASSERT_EQ(n, 1);
  }
  fieldsync_close(db);
}

struct collect {
  size_t n;
  char ids[64][33];
};

static int collect_cb(const char *json, void *data) {
  struct collect *c = data;
  json_t *j = json_loads(json, 0, NULL);

  ASSERT(j != NULL);
  if (c->n < 64)
    snprintf(c->ids[c->n], 33, "%s",
             json_string_value(json_object_get(j, "id")));
  c->n++;
  json_decref(j);
  return 0;
}

TEST(queries_use_filters) {
  const char *in_a[] = {"visit_id", visit_a, "standard_code", "OP7", NULL};
  const char *in_b[] = {"visit_id", visit_b, "standard_code", "OP8", NULL};
  const char *req[] = {"service_id", service_a, "raised_visit_id", visit_a,
                       "text", "Sign MAR charts", "status", "open", NULL};
  struct fieldsync_query q;
  struct collect c;
  fieldsync_db *db;
  char id[33];
  char del[33];
  int i;

  setup_dir();
  db = open_new("q.db");
  for (i = 0; i < 5; i++)
    ASSERT_OK(add(db, "observation", id, in_a));
  for (i = 0; i < 3; i++)
    ASSERT_OK(add(db, "observation", del, in_b));
  ASSERT_OK(add(db, "requirement", id, req));
  ASSERT_OK(fieldsync_delete(db, del));

  memset(&q, 0, sizeof(q));
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 8); /* the deleted one is hidden */
  for (i = 1; i < 8; i++)
    ASSERT(strcmp(c.ids[i - 1], c.ids[i]) < 0); /* id order */

  q.include_deleted = 1;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 9);

  memset(&q, 0, sizeof(q));
  q.visit_id = visit_a;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 6); /* 5 observations + the requirement raised there */
  q.collection = "observation";
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 5);

  memset(&q, 0, sizeof(q));
  q.service_id = service_a;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 1);

  memset(&q, 0, sizeof(q));
  q.conflicts_only = 1;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 0);

  q.collection = "nope";
  ASSERT_EQ(fieldsync_query(db, &q, collect_cb, &c), FIELDSYNC_ECOLLECTION);
  memset(&q, 0, sizeof(q));
  q.visit_id = "xyz";
  ASSERT_EQ(fieldsync_query(db, &q, collect_cb, &c), FIELDSYNC_EINVAL);

  /* The visit query is served by the index, never a full scan. */
  {
    sqlite3_stmt *st;
    bool uses_index = false;
    ASSERT_OK(sqlite3_prepare_v2(
        db->sql,
        "EXPLAIN QUERY PLAN SELECT id FROM records WHERE 1 AND visit_id = ?2 "
        "AND deleted = 0 ORDER BY id",
        -1, &st, NULL));
    while (sqlite3_step(st) == SQLITE_ROW)
      if (strstr((const char *)sqlite3_column_text(st, 3), "records_visit"))
        uses_index = true;
    sqlite3_finalize(st);
    ASSERT(uses_index);
  }
  fieldsync_close(db);
}

/* ---- conflicts through the sync slots ---------------------------------- */

/* Builds a wire Change from an outgoing version (as a server would relay
 * it, with a seq). Storage lives in the arrays passed in. */
struct wire {
  Fieldsync__Change c;
  Fieldsync__RecordKey k;
  Fieldsync__ScopeKey s;
  Fieldsync__Version v;
  Fieldsync__VvEntry e[8];
  Fieldsync__VvEntry *ep[8];
};

static void to_wire(const struct fsc_outgoing *o, struct wire *w,
                    uint64_t seq) {
  fieldsync__change__init(&w->c);
  fieldsync__record_key__init(&w->k);
  fieldsync__scope_key__init(&w->s);
  fieldsync__version__init(&w->v);
  w->k.has_collection = 1;
  w->k.collection = (Fieldsync__Collection)o->collection;
  w->k.has_id = 1;
  w->k.id.data = (uint8_t *)o->id;
  w->k.id.len = 16;
  w->s.has_kind = 1;
  w->s.kind = (Fieldsync__ScopeKind)o->scope_kind;
  w->s.has_id = 1;
  w->s.id.data = (uint8_t *)o->scope_id;
  w->s.id.len = 16;
  ASSERT(o->v.vv.n <= 8);
  fsp_msg_vv_to_pb(&o->v.vv, w->e, w->ep);
  w->v.n_vv = o->v.vv.n;
  w->v.vv = w->ep;
  w->v.has_deleted = 1;
  w->v.deleted = o->v.deleted;
  w->v.has_hash = 1;
  w->v.hash.data = (uint8_t *)o->v.hash;
  w->v.hash.len = 32;
  w->v.has_payload = 1;
  w->v.payload.data = o->v.payload;
  w->v.payload.len = o->v.len;
  w->v.author = o->v.author;
  w->c.key = &w->k;
  w->c.scope = &w->s;
  w->c.version = &w->v;
  w->c.has_seq = 1;
  w->c.seq = seq;
}

/* Sends every unacknowledged version of `from` to `to` (as a server would)
 * and acknowledges it at `from`. Returns how many were sent. */
static size_t relay(fieldsync_db *from, fieldsync_db *to, uint64_t *seq,
                    struct fsc_apply_stats *st) {
  struct fsc_outgoing *o;
  size_t n;
  size_t i;
  struct wire w[32];
  Fieldsync__Change *cp[32];
  struct fsc_ack acks[32];
  struct fsp_limits lim;
  struct fsp_error err;

  fsp_limits_default(&lim);
  ASSERT_OK(fsc_store_outgoing(from, 0, 32, &o, &n));
  for (i = 0; i < n; i++) {
    to_wire(&o[i], &w[i], ++*seq);
    cp[i] = &w[i].c;
    ASSERT_OK(fsp_msg_validate_change(cp[i], &lim, true, "c", &err));
    memcpy(acks[i].id, o[i].id, 16);
    memcpy(acks[i].hash, o[i].v.hash, 32);
    acks[i].pending = o[i].v.pending;
  }
  ASSERT_OK(fsc_store_apply(to, cp, n, *seq, st));
  ASSERT_OK(fsc_store_ack(from, acks, n));
  fsc_outgoing_free(o, n);
  return n;
}

TEST(concurrent_edits_become_siblings) {
  const char *req[] = {"service_id", service_a, "text", "Sign MAR charts",
                       "timescale_due", "2026-12-01", NULL};
  struct fsc_apply_stats st;
  fieldsync_db *a;
  fieldsync_db *b;
  uint64_t seq = 0;
  uint64_t cursor;
  char id[33];
  json_t *j;
  struct fieldsync_query q;
  struct collect c;

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(add(a, "requirement", id, req));
  ASSERT_EQ(relay(a, b, &seq, &st), 1);
  ASSERT_EQ(st.applied, 1);
  ASSERT_EQ(relay(a, b, &seq, &st), 0); /* acked: nothing left to send */
  ASSERT_OK(fsc_store_cursor(b, &cursor));
  ASSERT_EQ(cursor, seq);

  /* Both edit offline. */
  ASSERT_OK(edit(a, id, "timescale_due", "2027-01-05"));
  ASSERT_OK(edit(b, id, "text", "Sign and date every MAR chart entry"));
  ASSERT_EQ(relay(a, b, &seq, &st), 1);
  ASSERT_EQ(st.conflicts, 1);
  ASSERT_EQ(relay(b, a, &seq, &st), 1);
  ASSERT_EQ(st.conflicts, 1);

  /* Both replicas show the same two siblings, same winner first. */
  {
    json_t *ja = get(a, id);
    json_t *jb = get(b, id);
    char *sa;
    char *sb;
    ASSERT(json_is_true(json_object_get(ja, "conflict")));
    ASSERT_EQ(json_array_size(json_object_get(ja, "versions")), 2);
    json_object_del(ja, "_");
    /* "pending" differs by replica; compare hashes and vectors. */
    sa = json_dumps(json_object_get(json_array_get(json_object_get(ja,
                                                                   "versions"),
                                                   0),
                                    "vv"),
                    JSON_SORT_KEYS);
    sb = json_dumps(json_object_get(json_array_get(json_object_get(jb,
                                                                   "versions"),
                                                   0),
                                    "vv"),
                    JSON_SORT_KEYS);
    ASSERT_STR_EQ(sa, sb);
    free(sa);
    free(sb);
    json_decref(ja);
    json_decref(jb);
  }

  memset(&q, 0, sizeof(q));
  q.conflicts_only = 1;
  memset(&c, 0, sizeof(c));
  ASSERT_OK(fieldsync_query(a, &q, collect_cb, &c));
  ASSERT_EQ(c.n, 1);

  /* An edit is refused until the conflict is resolved. */
  ASSERT_EQ(edit(a, id, "text", "x"), FIELDSYNC_ECONFLICT);

  /* Resolve at b by keeping a's sibling; the resolution wins everywhere. */
  j = get(b, id);
  {
    const char *h0 = json_string_value(json_object_get(
        json_array_get(json_object_get(j, "versions"), 0), "hash"));
    const char *h1 = json_string_value(json_object_get(
        json_array_get(json_object_get(j, "versions"), 1), "hash"));
    const char *keep = strcmp(vfield(j, 0, "timescale_due"), "2027-01-05") == 0
                           ? h0
                           : h1;
    char prefix[13];
    snprintf(prefix, sizeof(prefix), "%s", keep);
    ASSERT_EQ(fieldsync_resolve_keep(b, id, "1234"), FIELDSYNC_EINVAL);
    ASSERT_EQ(fieldsync_resolve_keep(b, id, "ffffffffffff"),
              FIELDSYNC_ENOTFOUND);
    ASSERT_OK(fieldsync_resolve_keep(b, id, prefix));
  }
  json_decref(j);
  ASSERT_EQ(relay(b, a, &seq, &st), 1);
  ASSERT_EQ(st.applied, 1);
  j = get(a, id);
  ASSERT(json_is_false(json_object_get(j, "conflict")));
  ASSERT_STR_EQ(vfield(j, 0, "timescale_due"), "2027-01-05");
  json_decref(j);
  ASSERT_EQ(fieldsync_resolve_keep(a, id, "00000000"), FIELDSYNC_EINVAL);

  /* Re-applying old versions changes nothing (idempotent, stale). */
  ASSERT_EQ(relay(a, b, &seq, &st), 0);
  fieldsync_close(a);
  fieldsync_close(b);
}

TEST(resolve_with_new_content) {
  const char *req[] = {"service_id", service_a, "text", "v1", NULL};
  struct fsc_apply_stats st;
  fieldsync_db *a;
  fieldsync_db *b;
  fieldsync_draft *d;
  uint64_t seq = 0;
  char id[33];
  json_t *j;

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(add(a, "requirement", id, req));
  relay(a, b, &seq, &st);
  ASSERT_OK(edit(a, id, "status", "met"));
  ASSERT_OK(edit(b, id, "status", "not_met_outstanding"));
  relay(a, b, &seq, &st);
  ASSERT_EQ(fieldsync_draft_for_resolve(a, id, &d), FIELDSYNC_EINVAL);
  ASSERT_OK(fieldsync_draft_for_resolve(b, id, &d));
  ASSERT_OK(fieldsync_draft_set(d, "status", "escalated"));
  ASSERT_OK(fieldsync_resolve_with(b, id, d));
  fieldsync_draft_free(d);
  j = get(b, id);
  ASSERT(json_is_false(json_object_get(j, "conflict")));
  ASSERT_STR_EQ(vfield(j, 0, "status"), "escalated");
  ASSERT_STR_EQ(vfield(j, 0, "text"), "v1");
  json_decref(j);
  relay(b, a, &seq, &st);
  j = get(a, id);
  ASSERT_STR_EQ(vfield(j, 0, "status"), "escalated");
  json_decref(j);
  fieldsync_close(a);
  fieldsync_close(b);
}

TEST(delete_vs_edit_is_a_conflict) {
  const char *obs[] = {"visit_id", visit_a, "standard_code", "OP10", NULL};
  struct fsc_apply_stats st;
  fieldsync_db *a;
  fieldsync_db *b;
  uint64_t seq = 0;
  char id[33];
  json_t *j;

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(add(a, "observation", id, obs));
  relay(a, b, &seq, &st);
  ASSERT_OK(fieldsync_delete(a, id));
  ASSERT_OK(edit(b, id, "evidence_text", "Dignity respected at lunch"));
  relay(a, b, &seq, &st);
  j = get(b, id);
  /* Not silently deleted, not silently kept: both are shown. */
  ASSERT(json_is_true(json_object_get(j, "conflict")));
  ASSERT(json_is_false(json_object_get(j, "deleted")));
  ASSERT(json_is_false(json_object_get(
      json_array_get(json_object_get(j, "versions"), 0), "deleted")));
  json_decref(j);
  fieldsync_close(a);
  fieldsync_close(b);
}

/* Two replicas write the same content concurrently: two versions with one
 * hash and different vectors. Both are kept; nothing gets stuck. */
TEST(same_content_concurrently) {
  const char *req[] = {"service_id", service_a, "text", "v1", NULL};
  struct fsc_apply_stats st;
  fieldsync_db *a;
  fieldsync_db *b;
  uint64_t seq = 0;
  char id[33];
  json_t *j;

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(add(a, "requirement", id, req));
  relay(a, b, &seq, &st);
  ASSERT_OK(edit(a, id, "status", "met"));
  ASSERT_OK(edit(b, id, "status", "met"));
  relay(a, b, &seq, &st);
  ASSERT_EQ(st.conflicts, 1);
  relay(b, a, &seq, &st);
  ASSERT_EQ(st.conflicts, 1);
  j = get(a, id);
  ASSERT_EQ(json_array_size(json_object_get(j, "versions")), 2);
  json_decref(j);
  /* Keeping "either" (same hash, so not ambiguous) resolves it. */
  j = get(a, id);
  {
    char prefix[13];
    snprintf(prefix, sizeof(prefix), "%s",
             json_string_value(json_object_get(
                 json_array_get(json_object_get(j, "versions"), 0), "hash")));
    ASSERT_OK(fieldsync_resolve_keep(a, id, prefix));
  }
  json_decref(j);
  relay(a, b, &seq, &st);
  j = get(b, id);
  ASSERT(json_is_false(json_object_get(j, "conflict")));
  json_decref(j);
  fieldsync_close(a);
  fieldsync_close(b);
}

static size_t count_records(fieldsync_db *db);

TEST(new_server_resets_cursor) {
  const char *obs[] = {"visit_id", visit_a, NULL};
  struct fsc_apply_stats st;
  fieldsync_db *a;
  fieldsync_db *b;
  uint64_t seq = 0;
  uint64_t cursor;
  uint8_t s1[16] = {1};
  uint8_t s2[16] = {2};
  char id[33];

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(fsc_store_server(b, s1));
  ASSERT_OK(add(a, "observation", id, obs));
  relay(a, b, &seq, &st);
  ASSERT_OK(fsc_store_cursor(b, &cursor));
  ASSERT_EQ(cursor, 1);
  ASSERT_OK(fsc_store_server(b, s1)); /* same server: kept */
  ASSERT_OK(fsc_store_cursor(b, &cursor));
  ASSERT_EQ(cursor, 1);
  {
    struct fsc_scope sc;
    struct fsc_backfill bf;
    struct fieldsync_counts c;

    memset(&sc, 0, sizeof(sc));
    sc.kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
    ASSERT_OK(fsc_scope_hold(b, &sc));
    bf.active = true;
    bf.scope = sc;
    bf.scope.id[0] = 1;
    bf.after = 3;
    ASSERT_OK(fsc_scope_set_backfill(b, &bf));
    ASSERT_OK(fsc_store_server(b, s1)); /* same server: kept */
    ASSERT_OK(fieldsync_counts(b, &c));
    ASSERT_EQ(c.held_scopes, 1);
    ASSERT_OK(fsc_scope_backfill(b, &bf));
    ASSERT(bf.active);
    ASSERT_OK(fsc_store_server(b, s2)); /* another server: from 0 */
    ASSERT_OK(fieldsync_counts(b, &c));
    ASSERT_EQ(c.held_scopes, 0); /* nothing is held from the new one */
    ASSERT_OK(fsc_scope_backfill(b, &bf));
    ASSERT(!bf.active);
  }
  ASSERT_OK(fsc_store_cursor(b, &cursor));
  ASSERT_EQ(cursor, 0);
  ASSERT_EQ(count_records(b), 1); /* local data untouched */
  fieldsync_close(a);
  fieldsync_close(b);
}

/* Two replicas delete the same record concurrently: two tombstones.
 * Resolving from content is refused with a clear message; keeping one (or
 * deleting again) settles it everywhere. */
TEST(concurrent_deletes) {
  const char *obs[] = {"visit_id", visit_a, NULL};
  struct fsc_apply_stats st;
  fieldsync_db *a;
  fieldsync_db *b;
  fieldsync_draft *d = NULL;
  uint64_t seq = 0;
  char id[33];
  json_t *j;

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(add(a, "observation", id, obs));
  relay(a, b, &seq, &st);
  ASSERT_OK(fieldsync_delete(a, id));
  ASSERT_OK(fieldsync_delete(b, id));
  relay(a, b, &seq, &st);
  relay(b, a, &seq, &st);
  j = get(a, id);
  ASSERT(json_is_true(json_object_get(j, "deleted")));
  ASSERT(json_is_true(json_object_get(j, "conflict")));
  json_decref(j);
  ASSERT_EQ(fieldsync_draft_for_resolve(a, id, &d), FIELDSYNC_EDELETED);
  ASSERT(d == NULL);
  ASSERT(strstr(fieldsync_errmsg(a), "deletion") != NULL);
  j = get(a, id);
  {
    char prefix[13];
    snprintf(prefix, sizeof(prefix), "%s",
             json_string_value(json_object_get(
                 json_array_get(json_object_get(j, "versions"), 0), "hash")));
    ASSERT_OK(fieldsync_resolve_keep(a, id, prefix));
  }
  json_decref(j);
  relay(a, b, &seq, &st);
  j = get(b, id);
  ASSERT(json_is_true(json_object_get(j, "deleted")));
  ASSERT(json_is_false(json_object_get(j, "conflict")));
  json_decref(j);
  fieldsync_close(a);
  fieldsync_close(b);
}

TEST(outgoing_batches_in_order) {
  const char *obs[] = {"visit_id", visit_a, NULL};
  struct fsc_outgoing *o;
  size_t n;
  fieldsync_db *db;
  char ids[10][33];
  int i;

  setup_dir();
  db = open_new("o.db");
  for (i = 0; i < 10; i++)
    ASSERT_OK(add(db, "observation", ids[i], obs));
  ASSERT_OK(edit(db, ids[0], "standard_code", "OP1")); /* supersedes #1 */
  ASSERT_OK(fsc_store_outgoing(db, 0, 4, &o, &n));
  ASSERT_EQ(n, 4);
  ASSERT(o[0].v.pending < o[1].v.pending);
  {
    char hex[33];
    fsc_hex(o[0].id, 16, hex);
    ASSERT_STR_EQ(hex, ids[1]); /* ids[0]'s first version is gone */
  }
  {
    int64_t after = o[3].v.pending;
    fsc_outgoing_free(o, n);
    ASSERT_OK(fsc_store_outgoing(db, after, 100, &o, &n));
    ASSERT_EQ(n, 6); /* 5 remaining creates + the edit */
  }
  fsc_outgoing_free(o, n);
  /* Every batch reads only pending rows, through the partial index, in
   * order: a sync costs what changed, not the database's size. */
  {
    sqlite3_stmt *st = NULL;
    char plan[512] = "";
    ASSERT_OK(fsc_stmt(db, FSC_ST_OUTGOING, &st));
    {
      sqlite3_stmt *ex = NULL;
      char sql[1024];
      snprintf(sql, sizeof(sql), "EXPLAIN QUERY PLAN %s", sqlite3_sql(st));
      ASSERT_OK(sqlite3_prepare_v2(db->sql, sql, -1, &ex, NULL));
      while (sqlite3_step(ex) == SQLITE_ROW) {
        size_t len = strlen(plan);
        snprintf(plan + len, sizeof(plan) - len, "%s; ",
                 (const char *)sqlite3_column_text(ex, 3));
      }
      sqlite3_finalize(ex);
    }
    if (strstr(plan, "versions_pending") == NULL ||
        strstr(plan, "TEMP B-TREE") != NULL)
      test_fail(__FILE__, __LINE__, "outgoing query plan: %s", plan);
  }
  fieldsync_close(db);
}

TEST(apply_is_atomic_with_cursor) {
  const char *obs[] = {"visit_id", visit_a, NULL};
  struct fsc_outgoing *o;
  struct fsc_apply_stats st;
  struct wire w[2];
  Fieldsync__Change *cp[2];
  fieldsync_db *a;
  fieldsync_db *b;
  uint64_t cursor;
  size_t n;
  char id[33];

  setup_dir();
  a = open_new("a.db");
  b = open_new("b.db");
  ASSERT_OK(add(a, "observation", id, obs));
  ASSERT_OK(add(a, "observation", id, obs));
  ASSERT_OK(fsc_store_outgoing(a, 0, 2, &o, &n));
  ASSERT_EQ(n, 2);
  to_wire(&o[0], &w[0], 1);
  to_wire(&o[1], &w[1], 2);
  /* The second change names a different collection than... itself stored
   * as? No: make it fail by corrupting its vector (counter 0). */
  w[1].e[0].counter = 0;
  cp[0] = &w[0].c;
  cp[1] = &w[1].c;
  ASSERT_NE(fsc_store_apply(b, cp, 2, 2, &st), 0);
  ASSERT_OK(fsc_store_cursor(b, &cursor));
  ASSERT_EQ(cursor, 0); /* nothing applied, cursor unchanged */
  {
    struct fieldsync_query q;
    struct collect c;
    memset(&q, 0, sizeof(q));
    memset(&c, 0, sizeof(c));
    ASSERT_OK(fieldsync_query(b, &q, collect_cb, &c));
    ASSERT_EQ(c.n, 0);
  }
  w[1].e[0].counter = o[1].v.vv.e[0].counter;
  ASSERT_OK(fsc_store_apply(b, cp, 2, 2, &st));
  ASSERT_EQ(st.applied, 2);
  ASSERT_OK(fsc_store_cursor(b, &cursor));
  ASSERT_EQ(cursor, 2);
  /* The same batch again: known, nothing changes. */
  ASSERT_OK(fsc_store_apply(b, cp, 2, 2, &st));
  ASSERT_EQ(st.known, 2);
  fsc_outgoing_free(o, n);
  fieldsync_close(a);
  fieldsync_close(b);
}

/* ---- bulk -------------------------------------------------------------- */

static int buf_write(const char *s, size_t n, void *data) {
  char **b = data;
  size_t old = *b != NULL ? strlen(*b) : 0;
  char *nb = realloc(*b, old + n + 1);

  ASSERT(nb != NULL);
  memcpy(nb + old, s, n);
  nb[old + n] = '\0';
  *b = nb;
  return 0;
}

static void write_text(const char *name, const char *text, char *path,
                       size_t cap) {
  FILE *f;

  path_in(path, cap, name);
  f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs(text, f);
  fclose(f);
}

TEST(import_csv_and_jsonl) {
  char path[128];
  char *out = NULL;
  fieldsync_db *db;
  size_t n;
  json_t *arr;

  setup_dir();
  db = open_new("i.db");
  write_text("services.csv",
             "name,council,places,sector,registration_categories\r\n"
             "Rosebank House,Council X,32,private,OP|DE(E)\r\n"
             "\"Oak Lodge, The\",Council Y,18,voluntary,OP\r\n"
             "\"Elm \"\"Court\"\"\",Council X,40,council,\r\n",
             path, sizeof(path));
  ASSERT_OK(fieldsync_import(db, "service", path, &n));
  ASSERT_EQ(n, 3);
  write_text("obs.jsonl",
             "{\"visit_id\":\"0194a1b2c3d4e5f60718293a4b5c6d7e\","
             "\"standard_code\":\"OP27\",\"judgement\":2}\n"
             "\n"
             "{\"id\":\"0194a1b2c3d4e5f60718293a4b5c6000\",\"visit_id\":"
             "\"0194a1b2c3d4e5f60718293a4b5c6d7e\",\"case_refs\":[\"C1\","
             "\"C2\"]}\n",
             path, sizeof(path));
  ASSERT_OK(fieldsync_import(db, "observation", path, &n));
  ASSERT_EQ(n, 2);
  ASSERT_EQ(fieldsync_import(db, "observation", path, &n), FIELDSYNC_EEXISTS);
  ASSERT_EQ(n, 0);

  ASSERT_OK(fieldsync_export(db, NULL, FIELDSYNC_FORMAT_JSON, buf_write, &out));
  arr = json_loads(out, 0, NULL);
  ASSERT(json_is_array(arr));
  ASSERT_EQ(json_array_size(arr), 5);
  json_decref(arr);
  free(out);
  out = NULL;
  ASSERT_OK(fieldsync_export(db, "service", FIELDSYNC_FORMAT_CSV, buf_write,
                             &out));
  ASSERT(strstr(out, "\"Oak Lodge, The\"") != NULL);
  ASSERT(strstr(out, "\"Elm \"\"Court\"\"\"") != NULL);
  ASSERT(strstr(out, "OP|DE(E)") != NULL);
  free(out);
  out = NULL;
  ASSERT_EQ(fieldsync_export(db, NULL, FIELDSYNC_FORMAT_CSV, buf_write, &out),
            FIELDSYNC_EINVAL);
  fieldsync_close(db);
}

TEST(import_bad_row_keeps_nothing) {
  char path[128];
  char *before = NULL;
  char *after = NULL;
  fieldsync_db *db;
  size_t n = 99;

  setup_dir();
  db = open_new("i.db");
  ASSERT_OK(fieldsync_export(db, NULL, FIELDSYNC_FORMAT_JSON, buf_write,
                             &before));
  write_text("bad.csv",
             "name,places\nA,1\nB,two\nC,3\n", path, sizeof(path));
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EVALUE);
  ASSERT_EQ(n, 0);
  ASSERT(strstr(fieldsync_errmsg(db), "line 3") != NULL);
  ASSERT(strstr(fieldsync_errmsg(db), "nothing imported") != NULL);
  write_text("bad.jsonl", "{\"name\":\"A\"}\n{\"name\":\n", path,
             sizeof(path));
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EFORMAT);
  ASSERT(strstr(fieldsync_errmsg(db), "line 2") != NULL);
  write_text("bad2.csv", "name,colour\nA,red\n", path, sizeof(path));
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EFIELD);
  ASSERT(strstr(fieldsync_errmsg(db), "colour") != NULL);
  write_text("cells.csv", "name,places\nA\n", path, sizeof(path));
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EFORMAT);
  write_text("q.csv", "name\n\"open\n", path, sizeof(path));
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EFORMAT);
  write_text("x.txt", "name\nA\n", path, sizeof(path));
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EFORMAT);
  path_in(path, sizeof(path), "missing.csv");
  ASSERT_EQ(fieldsync_import(db, "service", path, &n), FIELDSYNC_EIO);
  ASSERT_EQ(fieldsync_import(db, "nope", path, &n), FIELDSYNC_ECOLLECTION);
  ASSERT_OK(fieldsync_export(db, NULL, FIELDSYNC_FORMAT_JSON, buf_write,
                             &after));
  ASSERT_STR_EQ(before, after);
  free(before);
  free(after);
  fieldsync_close(db);
}

static void count_field(const char *name, const char *type, void *data) {
  (void)name;
  ASSERT(type != NULL && type[0] != '\0');
  (*(int *)data)++;
}

TEST(introspection) {
  const char *const *names = fieldsync_collections();
  size_t n;
  size_t i;
  const struct fsp_collection *reg = fsp_payload_collections(&n);
  int fields = 0;

  for (i = 0; i < n; i++)
    ASSERT_STR_EQ(names[i], reg[i].name);
  ASSERT(names[n] == NULL);
  ASSERT_OK(fieldsync_fields(NULL, "observation", count_field, &fields));
  ASSERT_EQ(fields, 7);
  ASSERT_STR_EQ(fieldsync_errname(FIELDSYNC_ENEWER), "FIELDSYNC_ENEWER");
  ASSERT_STR_EQ(fieldsync_strerror(FIELDSYNC_ENOTFOUND), "no such record");
  ASSERT_STR_EQ(fieldsync_strerror(12345), "unknown error");
}

TEST(allocation_failures_are_clean) {
  const char *obs[] = {"visit_id", visit_a, "standard_code", "OP9",
                       "evidence_text", "text", NULL};
  fieldsync_db *db;
  char id[33];
  uint64_t k;
  int failures = 0;

  setup_dir();
  db = open_new("m.db");
  for (k = 1; k < 400; k++) {
    int rc;
    fsp_alloc_fail_at(k, false);
    rc = add(db, "observation", id, obs);
    if (fsp_alloc_failed() == 0) {
      ASSERT_OK(rc);
      break;
    }
    fsp_alloc_fail_at(0, false);
    if (rc == 0)
      continue; /* an optional allocation failed harmlessly */
    ASSERT(rc == FIELDSYNC_ENOMEM || rc == FIELDSYNC_EVALUE);
    failures++;
  }
  fsp_alloc_fail_at(0, false);
  ASSERT_GT(failures, 3);
  fieldsync_close(db);
}

static size_t count_records(fieldsync_db *db) {
  struct fieldsync_query q;
  struct collect c;

  memset(&q, 0, sizeof(q));
  memset(&c, 0, sizeof(c));
  q.include_deleted = 1;
  ASSERT_OK(fieldsync_query(db, &q, collect_cb, &c));
  return c.n;
}

TEST(batches) {
  const char *ok[] = {"visit_id", visit_a, "standard_code", "OP12", NULL};
  const char *bad[] = {"visit_id", visit_a, "judgement", "9", NULL};
  char path[128];
  fieldsync_db *db;
  char id[33];
  int i;

  setup_dir();
  db = open_new("batch.db");
  ASSERT_EQ(fieldsync_batch_commit(db), FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_batch_rollback(db), FIELDSYNC_EINVAL);
  ASSERT_OK(fieldsync_batch_begin(db));
  ASSERT_EQ(fieldsync_batch_begin(db), FIELDSYNC_EINVAL);
  for (i = 0; i < 20; i++)
    ASSERT_OK(add(db, "observation", id, ok));
  ASSERT_EQ(add(db, "observation", id, bad), FIELDSYNC_EVALUE); /* alone */
  ASSERT_OK(edit(db, id, "standard_code", "OP13"));
  ASSERT_OK(fieldsync_batch_commit(db));
  ASSERT_EQ(count_records(db), 20);

  ASSERT_OK(fieldsync_batch_begin(db));
  for (i = 0; i < 5; i++)
    ASSERT_OK(add(db, "observation", id, ok));
  ASSERT_OK(fieldsync_batch_rollback(db));
  ASSERT_EQ(count_records(db), 20);

  /* An uncommitted batch is gone after close. */
  ASSERT_OK(fieldsync_batch_begin(db));
  ASSERT_OK(add(db, "observation", id, ok));
  fieldsync_close(db);
  path_in(path, sizeof(path), "batch.db");
  ASSERT_OK(fieldsync_open(path, 0, NULL, &db));
  ASSERT_EQ(count_records(db), 20);
  fieldsync_close(db);
}

/* ---- schema 2: refused versions, scopes, the quarantine ---------------- */

/* Number of current versions of record id (0: db lacks it). */
static size_t versions_count(fieldsync_db *db, const char *id) {
  struct fsc_record r;
  uint8_t bin[16];
  size_t n;
  int rc;

  ASSERT(fsc_unhex(id, bin, 16));
  rc = fsc_store_load(db, bin, &r);
  if (rc == FIELDSYNC_ENOTFOUND)
    return 0;
  ASSERT_OK(rc);
  n = r.n;
  fsc_record_close(&r);
  return n;
}

/* One integer from a query on db's connection. */
static int64_t sql_int(fieldsync_db *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v;

  ASSERT_OK(sqlite3_prepare_v2(db->sql, sql, -1, &st, NULL));
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

/* The query plan of a cached statement, as one line. */
static void plan_of(fieldsync_db *db, enum fsc_stmt_id id, char *plan,
                    size_t cap) {
  sqlite3_stmt *st = NULL;
  sqlite3_stmt *ex = NULL;
  char sql[1024];

  plan[0] = '\0';
  ASSERT_OK(fsc_stmt(db, id, &st));
  snprintf(sql, sizeof(sql), "EXPLAIN QUERY PLAN %s", sqlite3_sql(st));
  ASSERT_OK(sqlite3_prepare_v2(db->sql, sql, -1, &ex, NULL));
  while (sqlite3_step(ex) == SQLITE_ROW) {
    size_t len = strlen(plan);
    snprintf(plan + len, cap - len, "%s; ",
             (const char *)sqlite3_column_text(ex, 3));
  }
  sqlite3_finalize(ex);
}

/* Unacknowledged versions the next sync would send (refused ones are not). */
static size_t outgoing_count(fieldsync_db *db) {
  struct fsc_outgoing *o;
  size_t n;

  ASSERT_OK(fsc_store_outgoing(db, 0, 1000, &o, &n));
  fsc_outgoing_free(o, n);
  return n;
}

/* Answers every outgoing version of db as a server would: those of record
 * refuse_id (NULL: none) refused with ERR_FORBIDDEN and why, the rest
 * acknowledged. */
static void answer_all(fieldsync_db *db, const char *refuse_id,
                       const char *why) {
  struct fsc_outgoing *o;
  struct fsc_ack a[64];
  struct fsc_refusal r[64];
  uint8_t rid[16];
  size_t na = 0;
  size_t nr = 0;
  size_t n;
  size_t i;

  if (refuse_id != NULL)
    ASSERT(fsc_unhex(refuse_id, rid, 16));
  ASSERT_OK(fsc_store_outgoing(db, 0, 64, &o, &n));
  for (i = 0; i < n; i++) {
    if (refuse_id != NULL && memcmp(o[i].id, rid, 16) == 0) {
      memcpy(r[nr].id, o[i].id, 16);
      memcpy(r[nr].hash, o[i].v.hash, 32);
      r[nr].pending = o[i].v.pending;
      r[nr].code = FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN;
      r[nr].reason = why;
      nr++;
    } else {
      memcpy(a[na].id, o[i].id, 16);
      memcpy(a[na].hash, o[i].v.hash, 32);
      a[na].pending = o[i].v.pending;
      na++;
    }
  }
  ASSERT_OK(fsc_store_answer(db, a, na, r, nr));
  fsc_outgoing_free(o, n);
}

/* Collected JSON objects of a listing (fieldsync_refused, _quarantine). */
struct objs {
  size_t n;
  json_t *o[32];
};

static int objs_cb(const char *json, void *data) {
  struct objs *c = data;
  json_t *j = json_loads(json, 0, NULL);

  ASSERT(j != NULL);
  ASSERT_LT(c->n, 32);
  c->o[c->n++] = j;
  return 0;
}

static void objs_free(struct objs *c) {
  size_t i;

  for (i = 0; i < c->n; i++)
    json_decref(c->o[i]);
  c->n = 0;
}

static const char *str_of(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);

  if (!json_is_string(v))
    test_fail(__FILE__, __LINE__, "\"%s\" is not a string", key);
  return json_string_value(v);
}

/* A scope key from its kind and 32 hex digits. */
static struct fsc_scope scope_of(int kind, const char *hex) {
  struct fsc_scope sc;

  sc.kind = kind;
  ASSERT(fsc_unhex(hex, sc.id, 16));
  return sc;
}

/* The schema of version 1, as released: a fixture for the migration. */
static const char *const schema_v1 =
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE records(id BLOB PRIMARY KEY, collection INTEGER NOT NULL,"
    "  scope_kind INTEGER NOT NULL, scope_id BLOB NOT NULL, visit_id BLOB,"
    "  service_id BLOB, nversions INTEGER NOT NULL, deleted INTEGER NOT NULL,"
    "  reuse INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;"
    "CREATE INDEX records_collection ON records(collection, id);"
    "CREATE INDEX records_visit ON records(visit_id, id)"
    "  WHERE visit_id IS NOT NULL;"
    "CREATE INDEX records_service ON records(service_id, id)"
    "  WHERE service_id IS NOT NULL;"
    "CREATE INDEX records_scope ON records(scope_kind, scope_id);"
    "CREATE INDEX records_conflict ON records(id) WHERE nversions > 1;"
    "CREATE TABLE versions(record BLOB NOT NULL, hash BLOB NOT NULL,"
    "  vv BLOB NOT NULL, deleted INTEGER NOT NULL, payload BLOB NOT NULL,"
    "  author TEXT, device_time_ms INTEGER,"
    "  pending INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(record, hash, vv)) WITHOUT ROWID;"
    "CREATE INDEX versions_pending ON versions(pending) WHERE pending > 0;"
    "PRAGMA user_version = 1;";

/* A database written by schema 1 opens: it is migrated forward in place,
 * keeping its replica id, records, pending versions, cursor and server,
 * and gains the refused marks, held scopes and the quarantine. */
TEST(migrate_from_schema_1) {
  const char *obs[] = {"visit_id", visit_a, "standard_code", "OP9", NULL};
  char path[128];
  char src[128];
  char sql[512];
  char acked[33];
  char waiting[33];
  char hex_before[33];
  char hex_after[33];
  char plan[512];
  sqlite3 *s;
  fieldsync_db *db;
  json_t *j;
  struct fieldsync_counts c;

  setup_dir();
  /* Content made by today's library, copied into a schema-1 file. */
  db = open_new("src.db");
  ASSERT_OK(add(db, "observation", acked, obs));
  answer_all(db, NULL, NULL);
  ASSERT_OK(add(db, "observation", waiting, obs));
  fieldsync_replica_id(db, hex_before);
  fieldsync_close(db);
  path_in(src, sizeof(src), "src.db");
  path_in(path, sizeof(path), "v1.db");
  ASSERT_OK(sqlite3_open(path, &s));
  ASSERT_OK(sqlite3_exec(s, schema_v1, NULL, NULL, NULL));
  snprintf(sql, sizeof(sql), "ATTACH '%s' AS src", src);
  ASSERT_OK(sqlite3_exec(s, sql, NULL, NULL, NULL));
  ASSERT_OK(sqlite3_exec(
      s,
      "INSERT INTO meta SELECT key, value FROM src.meta;"
      "UPDATE meta SET value = 42 WHERE key = 'pull_cursor';"
      "INSERT INTO meta VALUES('server_id', "
      "x'5e7e0100000000000000000000000000');"
      "INSERT INTO records SELECT id, collection, scope_kind, scope_id, "
      "  visit_id, service_id, nversions, deleted, reuse FROM src.records;"
      "INSERT INTO versions SELECT record, hash, vv, deleted, payload, "
      "  author, device_time_ms, pending FROM src.versions;"
      "DETACH src",
      NULL, NULL, NULL));
  sqlite3_close(s);

  ASSERT_OK(fieldsync_open(path, 0, NULL, &db));
  ASSERT_EQ(sql_int(db, "PRAGMA user_version"), FSC_SCHEMA_VERSION);
  ASSERT_EQ(FSC_SCHEMA_VERSION, 2);
  fieldsync_replica_id(db, hex_after);
  ASSERT_STR_EQ(hex_before, hex_after);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.records, 2);
  ASSERT_EQ(c.pending, 1);
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(c.quarantined, 0);
  ASSERT_EQ(c.held_scopes, 0);
  ASSERT_EQ(c.cursor, 42);
  ASSERT_EQ(sql_int(db, "SELECT count(*) FROM meta WHERE key = 'server_id'"),
            1);
  j = get(db, waiting);
  {
    json_t *v = json_array_get(json_object_get(j, "versions"), 0);
    ASSERT(json_is_true(json_object_get(v, "pending")));
    ASSERT(json_is_null(json_object_get(v, "refused")));
  }
  json_decref(j);
  ASSERT_EQ(outgoing_count(db), 1);
  /* The outgoing query is still served by the (rebuilt) partial index. */
  plan_of(db, FSC_ST_OUTGOING, plan, sizeof(plan));
  if (strstr(plan, "versions_pending") == NULL ||
      strstr(plan, "TEMP B-TREE") != NULL)
    test_fail(__FILE__, __LINE__, "outgoing query plan: %s", plan);
  /* The new parts work. */
  answer_all(db, waiting, "not your visit");
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.refused, 1);
  ASSERT_EQ(c.pending, 0);
  fieldsync_close(db);
  /* Opening again changes nothing. */
  ASSERT_OK(fieldsync_open(path, 0, NULL, &db));
  ASSERT_EQ(sql_int(db, "PRAGMA user_version"), 2);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.refused, 1);
  fieldsync_close(db);
}

/* A refused version is marked (code, reason, time) with the acks, shown
 * in the record's JSON and by fieldsync_refused(), left out of the
 * outgoing versions, and offered again after fieldsync_retry_refused(). */
TEST(refused_marked_until_retry) {
  const char *obs[] = {"visit_id", visit_a, "standard_code", "OP9", NULL};
  struct fieldsync_counts c;
  struct objs l;
  fieldsync_db *db;
  char ok1[33];
  char bad1[33];
  char bad2[33];
  char plan[512];
  size_t n;
  json_t *j;
  json_t *v;

  setup_dir();
  db = open_new("r.db");
  ASSERT_OK(add(db, "observation", ok1, obs));
  ASSERT_OK(add(db, "observation", bad1, obs));
  answer_all(db, bad1, "only inspectors write observations");
  ASSERT_OK(add(db, "observation", bad2, obs));
  answer_all(db, bad2, "visit not assigned");
  ASSERT_EQ(outgoing_count(db), 0);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.pending, 0);
  ASSERT_EQ(c.refused, 2);

  j = get(db, bad1);
  v = json_array_get(json_object_get(j, "versions"), 0);
  ASSERT(json_is_true(json_object_get(v, "pending"))); /* unacknowledged */
  ASSERT_STR_EQ(str_of(json_object_get(v, "refused"), "code"), "ERR_FORBIDDEN");
  ASSERT_STR_EQ(str_of(json_object_get(v, "refused"), "reason"),
                "only inspectors write observations");
  json_decref(j);
  j = get(db, ok1);
  v = json_array_get(json_object_get(j, "versions"), 0);
  ASSERT(json_is_false(json_object_get(v, "pending")));
  ASSERT(json_is_null(json_object_get(v, "refused")));
  json_decref(j);

  /* Listed oldest first, in the documented shape. */
  memset(&l, 0, sizeof(l));
  ASSERT_OK(fieldsync_refused(db, objs_cb, &l));
  ASSERT_EQ(l.n, 2);
  ASSERT_STR_EQ(str_of(l.o[0], "id"), bad1);
  ASSERT_STR_EQ(str_of(l.o[0], "collection"), "observation");
  ASSERT_EQ(strlen(str_of(l.o[0], "hash")), 64);
  ASSERT_STR_EQ(str_of(l.o[0], "code"), "ERR_FORBIDDEN");
  ASSERT_STR_EQ(str_of(l.o[0], "reason"), "only inspectors write observations");
  ASSERT_EQ(strlen(str_of(l.o[0], "refused_at")), 24);
  ASSERT_EQ(json_object_size(l.o[0]), 6);
  ASSERT_STR_EQ(str_of(l.o[1], "id"), bad2);
  objs_free(&l);

  /* Retrying one record; bad and unknown ids. */
  ASSERT_EQ(fieldsync_retry_refused(db, "xyz", &n), FIELDSYNC_EINVAL);
  ASSERT_EQ(fieldsync_retry_refused(db, ok1, &n), FIELDSYNC_ENOTFOUND);
  ASSERT(strstr(fieldsync_errmsg(db), "no refused version") != NULL);
  ASSERT_OK(fieldsync_retry_refused(db, bad1, &n));
  ASSERT_EQ(n, 1);
  ASSERT_EQ(outgoing_count(db), 1);
  j = get(db, bad1);
  v = json_array_get(json_object_get(j, "versions"), 0);
  ASSERT(json_is_null(json_object_get(v, "refused")));
  json_decref(j);
  /* Refused again; then an edit makes a new version, which is sent, and
   * the refused one is superseded. */
  answer_all(db, bad1, "still not");
  ASSERT_EQ(outgoing_count(db), 0);
  ASSERT_OK(edit(db, bad2, "standard_code", "OP10"));
  ASSERT_EQ(outgoing_count(db), 1);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.refused, 1);
  ASSERT_EQ(c.pending, 1);
  /* Retrying everything. */
  ASSERT_OK(fieldsync_retry_refused(db, NULL, &n));
  ASSERT_EQ(n, 1);
  ASSERT_EQ(outgoing_count(db), 2);
  ASSERT_OK(fieldsync_retry_refused(db, NULL, &n));
  ASSERT_EQ(n, 0);
  /* The refused listing and the outgoing query each read a partial index. */
  plan_of(db, FSC_ST_OUTGOING, plan, sizeof(plan));
  ASSERT(strstr(plan, "versions_pending") != NULL);
  fieldsync_close(db);
}

/* Records the held scope and a backfill position; builds a Changes. */
static void changes_init(Fieldsync__Changes *ch, uint64_t next_cursor) {
  fieldsync__changes__init(ch);
  ch->has_next_cursor = 1;
  ch->next_cursor = next_cursor;
}

static void scope_pb(Fieldsync__ScopeKey *k, struct fsc_scope *sc) {
  fieldsync__scope_key__init(k);
  k->has_kind = 1;
  k->kind = (Fieldsync__ScopeKind)sc->kind;
  k->has_id = 1;
  k->id.data = sc->id;
  k->id.len = 16;
}

/* A replica with visit A (an acknowledged record, a pending one, a refused
 * one and a pending deletion), visit B (pending) and service S
 * (acknowledged), holding scopes A, B and S. */
struct scoped {
  fieldsync_db *db;
  char a_acked[33];
  char a_pending[33];
  char a_refused[33];
  char a_deleted[33];
  char b_pending[33];
  char s_acked[33];
};

static void scoped_setup(struct scoped *x, const char *name) {
  const char *oa[] = {"visit_id", visit_a, "standard_code", "OP1", NULL};
  const char *ob[] = {"visit_id", visit_b, "standard_code", "OP2", NULL};
  const char *rq[] = {"service_id", service_a, "text", "Sign MAR", NULL};
  struct fsc_scope sc;

  x->db = open_new(name);
  ASSERT_OK(add(x->db, "observation", x->a_acked, oa));
  ASSERT_OK(add(x->db, "observation", x->a_deleted, oa));
  ASSERT_OK(add(x->db, "requirement", x->s_acked, rq));
  ASSERT_OK(add(x->db, "observation", x->a_refused, oa));
  answer_all(x->db, x->a_refused, "no");
  ASSERT_OK(fieldsync_delete(x->db, x->a_deleted));
  ASSERT_OK(add(x->db, "observation", x->a_pending, oa));
  ASSERT_OK(edit(x->db, x->a_pending, "judgement", "2"));
  ASSERT_OK(add(x->db, "observation", x->b_pending, ob));
  sc = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_a);
  ASSERT_OK(fsc_scope_hold(x->db, &sc));
  sc = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_b);
  ASSERT_OK(fsc_scope_hold(x->db, &sc));
  sc = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE, service_a);
  ASSERT_OK(fsc_scope_hold(x->db, &sc));
}

/* Removing scope A quarantines A's unacknowledged versions (pending,
 * refused, a pending deletion), deletes A's records (acknowledged ones
 * too) and drops A from the held scopes; B and S are untouched. */
TEST(scope_removal_quarantines) {
  struct fsc_apply_stats st;
  struct fieldsync_counts c;
  struct scoped x;
  struct fsc_scope a = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_a);
  struct fsc_scope *held;
  Fieldsync__Changes ch;
  Fieldsync__ScopeKey k;
  Fieldsync__ScopeKey *kp = &k;
  struct objs q;
  size_t n;
  size_t i;

  setup_dir();
  scoped_setup(&x, "s.db");
  changes_init(&ch, 7);
  scope_pb(&k, &a);
  ch.n_removed_scopes = 1;
  ch.removed_scopes = &kp;
  ASSERT_OK(fsc_store_apply_changes(x.db, &ch, &st));
  ASSERT_EQ(st.removed, 4);
  ASSERT_EQ(st.quarantined, 3);
  ASSERT_EQ(versions_count(x.db, x.a_acked), 0);
  ASSERT_EQ(versions_count(x.db, x.a_pending), 0);
  ASSERT_EQ(versions_count(x.db, x.a_refused), 0);
  ASSERT_EQ(versions_count(x.db, x.a_deleted), 0);
  ASSERT_EQ(versions_count(x.db, x.b_pending), 1);
  ASSERT_EQ(versions_count(x.db, x.s_acked), 1);
  ASSERT_OK(fieldsync_counts(x.db, &c));
  ASSERT_EQ(c.records, 2);
  ASSERT_EQ(c.pending, 1);
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(c.quarantined, 3);
  ASSERT_EQ(c.held_scopes, 2);
  ASSERT_EQ(c.cursor, 7);
  ASSERT_OK(fsc_scope_held(x.db, &held, &n));
  ASSERT_EQ(n, 2);
  ASSERT_EQ(held[0].kind, FIELDSYNC__SCOPE_KIND__SCOPE_VISIT);
  {
    struct fsc_scope b = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_b);
    ASSERT_MEM_EQ(held[0].id, b.id, 16);
  }
  ASSERT_EQ(held[1].kind, FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE);
  fsp_free(held);

  /* The quarantine, oldest first, in the documented shape. */
  memset(&q, 0, sizeof(q));
  ASSERT_OK(fieldsync_quarantine(x.db, objs_cb, &q));
  ASSERT_EQ(q.n, 3);
  ASSERT_STR_EQ(str_of(q.o[0], "id"), x.a_refused);
  ASSERT_STR_EQ(str_of(q.o[1], "id"), x.a_deleted);
  ASSERT_STR_EQ(str_of(q.o[2], "id"), x.a_pending);
  for (i = 0; i < q.n; i++) {
    static const char *const keys[] = {
        "qid",     "collection", "id",   "scope",  "reason", "quarantined_at",
        "deleted", "vv",         "hash", "author", "time",   "refused",
        "fields"};
    json_t *o = q.o[i];
    size_t k2;

    ASSERT_EQ(json_object_size(o), 13);
    for (k2 = 0; k2 < 13; k2++)
      if (json_object_get(o, keys[k2]) == NULL)
        test_fail(__FILE__, __LINE__, "no \"%s\"", keys[k2]);
    ASSERT(json_is_integer(json_object_get(o, "qid")));
    ASSERT_EQ(json_integer_value(json_object_get(o, "qid")), (int)i + 1);
    ASSERT_STR_EQ(str_of(o, "collection"), "observation");
    ASSERT_STR_EQ(str_of(json_object_get(o, "scope"), "kind"), "visit");
    ASSERT_STR_EQ(str_of(json_object_get(o, "scope"), "id"), visit_a);
    ASSERT_STR_EQ(str_of(o, "reason"), "scope removed by the server");
    ASSERT_EQ(strlen(str_of(o, "quarantined_at")), 24);
    ASSERT_EQ(strlen(str_of(o, "hash")), 64);
    ASSERT_EQ(json_object_size(json_object_get(o, "vv")), 1);
    ASSERT_STR_EQ(str_of(o, "author"), "s.db");
    ASSERT_EQ(strlen(str_of(o, "time")), 24);
  }
  ASSERT_STR_EQ(str_of(json_object_get(q.o[0], "refused"), "code"),
                "ERR_FORBIDDEN");
  ASSERT_STR_EQ(str_of(json_object_get(q.o[0], "refused"), "reason"), "no");
  ASSERT(json_is_object(json_object_get(q.o[0], "fields")));
  ASSERT(json_is_true(json_object_get(q.o[1], "deleted")));
  ASSERT(json_is_null(json_object_get(q.o[1], "fields")));
  ASSERT(json_is_null(json_object_get(q.o[1], "refused")));
  ASSERT(json_is_false(json_object_get(q.o[2], "deleted")));
  ASSERT(json_is_null(json_object_get(q.o[2], "refused")));
  ASSERT_STR_EQ(str_of(json_object_get(q.o[2], "fields"), "standard_code"),
                "OP1");
  ASSERT_EQ(json_integer_value(json_object_get(
                json_object_get(q.o[2], "fields"), "judgement")),
            2);
  ASSERT_EQ(
      json_integer_value(json_object_get(json_object_get(q.o[2], "vv"),
                                         json_object_iter_key(json_object_iter(
                                             json_object_get(q.o[2], "vv"))))),
      2); /* the edit's version, not the superseded create */
  objs_free(&q);

  /* The same removal again changes nothing. */
  ASSERT_OK(fsc_store_apply_changes(x.db, &ch, &st));
  ASSERT_EQ(st.removed, 0);
  ASSERT_EQ(st.quarantined, 0);
  ASSERT_OK(fieldsync_counts(x.db, &c));
  ASSERT_EQ(c.quarantined, 3);
  fieldsync_close(x.db);
}

/* A Changes is applied whole or not at all: a removal followed by a change
 * that cannot be applied leaves the scope, its records, the held scopes,
 * the quarantine and the cursor as they were. */
TEST(scope_removal_is_atomic) {
  const char *obs[] = {"visit_id", visit_b, NULL};
  struct fsc_apply_stats st;
  struct fieldsync_counts before;
  struct fieldsync_counts after;
  struct scoped x;
  struct fsc_scope a = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_a);
  struct fsc_outgoing *o;
  fieldsync_db *other;
  struct wire w;
  Fieldsync__Change *cp;
  Fieldsync__Changes ch;
  Fieldsync__ScopeKey k;
  Fieldsync__ScopeKey *kp = &k;
  char id[33];
  size_t n;

  setup_dir();
  scoped_setup(&x, "s.db");
  other = open_new("o.db");
  ASSERT_OK(add(other, "observation", id, obs));
  ASSERT_OK(fsc_store_outgoing(other, 0, 1, &o, &n));
  ASSERT_EQ(n, 1);
  to_wire(&o[0], &w, 9);
  w.e[0].counter = 0; /* a vector the merge refuses */
  cp = &w.c;
  changes_init(&ch, 9);
  scope_pb(&k, &a);
  ch.n_removed_scopes = 1;
  ch.removed_scopes = &kp;
  ch.n_changes = 1;
  ch.changes = &cp;
  ASSERT_OK(fieldsync_counts(x.db, &before));
  ASSERT_NE(fsc_store_apply_changes(x.db, &ch, &st), 0);
  ASSERT_OK(fieldsync_counts(x.db, &after));
  ASSERT_MEM_EQ(&before, &after, sizeof(before));
  ASSERT_EQ(after.quarantined, 0);
  ASSERT_EQ(after.held_scopes, 3);
  ASSERT_EQ(versions_count(x.db, x.a_acked), 1);
  ASSERT_EQ(versions_count(x.db, x.a_refused), 1);
  /* With the change repaired, the whole message applies. */
  w.e[0].counter = o[0].v.vv.e[0].counter;
  ASSERT_OK(fsc_store_apply_changes(x.db, &ch, &st));
  ASSERT_EQ(st.removed, 4);
  ASSERT_EQ(st.applied, 1);
  ASSERT_EQ(versions_count(x.db, id), 1);
  fsc_outgoing_free(o, n);
  fieldsync_close(other);
  fieldsync_close(x.db);
}

/* Backfill pages store their position and leave the cursor; the last one
 * makes the scope held; a feed page clears a stale position; removing the
 * backfilled scope clears it too. */
TEST(backfill_state) {
  struct fsc_apply_stats st;
  struct fsc_backfill bf;
  struct fieldsync_counts c;
  struct fsc_scope a = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_a);
  Fieldsync__Changes ch;
  Fieldsync__ScopeKey k;
  Fieldsync__ScopeKey *kp = &k;
  fieldsync_db *db;

  setup_dir();
  db = open_new("b.db");
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(!bf.active);
  changes_init(&ch, 20);
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st)); /* cursor 20 */
  scope_pb(&k, &a);
  ch.backfill_scope = &k;
  ch.has_backfill_next = 1;
  ch.backfill_next = 5;
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(bf.active);
  ASSERT_EQ(bf.scope.kind, a.kind);
  ASSERT_MEM_EQ(bf.scope.id, a.id, 16);
  ASSERT_EQ(bf.after, 5);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.cursor, 20);
  ASSERT_EQ(c.held_scopes, 0);
  /* Survives a close. */
  fieldsync_close(db);
  {
    char path[128];
    path_in(path, sizeof(path), "b.db");
    ASSERT_OK(fieldsync_open(path, 0, NULL, &db));
  }
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(bf.active);
  ASSERT_EQ(bf.after, 5);
  /* Done: held, position cleared. */
  ch.backfill_next = 20;
  ch.has_backfill_done = 1;
  ch.backfill_done = 1;
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(!bf.active);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.held_scopes, 1);
  ASSERT_EQ(c.cursor, 20);
  /* A position, then a feed page: cleared, cursor moves. */
  ch.backfill_scope = &k;
  ch.has_backfill_done = 0;
  ch.backfill_done = 0;
  ch.backfill_next = 3;
  k.id.data[15] ^= 1; /* another scope */
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(bf.active);
  changes_init(&ch, 25);
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(!bf.active);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.cursor, 25);
  /* A position for a scope the same message removes: cleared. */
  changes_init(&ch, 25);
  ch.backfill_scope = &k;
  ch.has_backfill_next = 1;
  ch.backfill_next = 3;
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  changes_init(&ch, 25);
  ch.n_removed_scopes = 1;
  ch.removed_scopes = &kp;
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  ASSERT_OK(fsc_scope_backfill(db, &bf));
  ASSERT(!bf.active);
  fieldsync_close(db);
}

/* A replica never holds more scopes than a Pull may list. */
TEST(held_scopes_limit) {
  struct fsc_apply_stats st;
  struct fieldsync_counts c;
  struct fsc_scope sc;
  Fieldsync__Changes ch;
  Fieldsync__ScopeKey k;
  fieldsync_db *db;
  uint32_t i;

  setup_dir();
  db = open_new("l.db");
  memset(&sc, 0, sizeof(sc));
  sc.kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
  ASSERT_OK(sqlite3_exec(db->sql, "BEGIN", NULL, NULL, NULL));
  for (i = 0; i < FSP_MAX_HELD_SCOPES; i++) {
    memcpy(sc.id, &i, sizeof(i));
    ASSERT_OK(fsc_scope_hold(db, &sc));
  }
  ASSERT_OK(sqlite3_exec(db->sql, "COMMIT", NULL, NULL, NULL));
  changes_init(&ch, 0);
  i = FSP_MAX_HELD_SCOPES;
  memcpy(sc.id, &i, sizeof(i));
  scope_pb(&k, &sc);
  ch.backfill_scope = &k;
  ch.has_backfill_done = 1;
  ch.backfill_done = 1;
  ASSERT_EQ(fsc_store_apply_changes(db, &ch, &st), FIELDSYNC_EVALUE);
  ASSERT(strstr(fieldsync_errmsg(db), "held scopes") != NULL);
  ASSERT_OK(fieldsync_counts(db, &c));
  ASSERT_EQ(c.held_scopes, FSP_MAX_HELD_SCOPES);
  /* One already held is no growth. */
  i = 7;
  memcpy(sc.id, &i, sizeof(i));
  ASSERT_OK(fsc_store_apply_changes(db, &ch, &st));
  fieldsync_close(db);
}

TEST(quarantine_discard) {
  struct fsc_apply_stats st;
  struct fieldsync_counts c;
  struct scoped x;
  struct fsc_scope a = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_a);
  struct fsc_scope b = scope_of(FIELDSYNC__SCOPE_KIND__SCOPE_VISIT, visit_b);
  Fieldsync__Changes ch;
  Fieldsync__ScopeKey k;
  Fieldsync__ScopeKey *kp = &k;
  struct objs q;
  size_t n = 99;

  setup_dir();
  scoped_setup(&x, "q.db");
  changes_init(&ch, 1);
  scope_pb(&k, &a);
  ch.n_removed_scopes = 1;
  ch.removed_scopes = &kp;
  ASSERT_OK(fsc_store_apply_changes(x.db, &ch, &st));
  ASSERT_EQ(fieldsync_quarantine_discard(x.db, 9, &n), FIELDSYNC_ENOTFOUND);
  ASSERT_EQ(n, 0);
  ASSERT_EQ(fieldsync_quarantine_discard(x.db, -1, &n), FIELDSYNC_EINVAL);
  ASSERT_OK(fieldsync_quarantine_discard(x.db, 2, &n));
  ASSERT_EQ(n, 1);
  ASSERT_EQ(fieldsync_quarantine_discard(x.db, 2, &n), FIELDSYNC_ENOTFOUND);
  memset(&q, 0, sizeof(q));
  ASSERT_OK(fieldsync_quarantine(x.db, objs_cb, &q));
  ASSERT_EQ(q.n, 2);
  ASSERT_EQ(json_integer_value(json_object_get(q.o[0], "qid")), 1);
  ASSERT_EQ(json_integer_value(json_object_get(q.o[1], "qid")), 3);
  objs_free(&q);
  ASSERT_OK(fieldsync_quarantine_discard(x.db, 0, &n));
  ASSERT_EQ(n, 2);
  /* A qid is never reused: B's pending version gets 4. */
  scope_pb(&k, &b);
  ASSERT_OK(fsc_store_apply_changes(x.db, &ch, &st));
  ASSERT_EQ(st.quarantined, 1);
  memset(&q, 0, sizeof(q));
  ASSERT_OK(fieldsync_quarantine(x.db, objs_cb, &q));
  ASSERT_EQ(q.n, 1);
  ASSERT_EQ(json_integer_value(json_object_get(q.o[0], "qid")), 4);
  ASSERT_STR_EQ(str_of(q.o[0], "id"), x.b_pending);
  objs_free(&q);
  ASSERT_OK(fieldsync_counts(x.db, &c));
  ASSERT_EQ(c.quarantined, 1);
  ASSERT_OK(fieldsync_quarantine_discard(x.db, 0, NULL));
  ASSERT_OK(fieldsync_quarantine_discard(x.db, 0, &n)); /* empty: fine */
  ASSERT_EQ(n, 0);
  fieldsync_close(x.db);
}

/* A revoked device: every unacknowledged version quarantined, everything
 * else wiped; the replica id, the quarantine and the database stay
 * usable. */
TEST(revoke_wipes_but_quarantines) {
  struct fieldsync_counts c;
  struct scoped x;
  struct objs q;
  uint8_t server[16] = {7};
  char hex1[33];
  char hex2[33];
  char path[128];
  char id[33];
  size_t removed;
  size_t quarantined;
  const char *obs[] = {"visit_id", visit_a, NULL};

  setup_dir();
  scoped_setup(&x, "w.db");
  ASSERT_OK(fsc_store_server(x.db, server));
  ASSERT_OK(sqlite3_exec(x.db->sql,
                         "UPDATE meta SET value = 77 WHERE key = 'pull_cursor'",
                         NULL, NULL, NULL));
  fieldsync_replica_id(x.db, hex1);
  ASSERT_OK(fsc_scope_wipe(x.db, &removed, &quarantined));
  ASSERT_EQ(removed, 6);
  ASSERT_EQ(quarantined, 4); /* A: deletion, refused, pending; B: pending */
  ASSERT_OK(fieldsync_counts(x.db, &c));
  ASSERT_EQ(c.records, 0);
  ASSERT_EQ(c.pending, 0);
  ASSERT_EQ(c.refused, 0);
  ASSERT_EQ(c.held_scopes, 0);
  ASSERT_EQ(c.cursor, 0);
  ASSERT_EQ(c.quarantined, 4);
  ASSERT_EQ(sql_int(x.db, "SELECT count(*) FROM versions"), 0);
  ASSERT_EQ(sql_int(x.db, "SELECT count(*) FROM meta WHERE key = "
                          "'server_id'"),
            0);
  memset(&q, 0, sizeof(q));
  ASSERT_OK(fieldsync_quarantine(x.db, objs_cb, &q));
  ASSERT_EQ(q.n, 4);
  ASSERT_STR_EQ(str_of(q.o[0], "reason"), "device revoked");
  ASSERT_STR_EQ(str_of(q.o[3], "id"), x.b_pending);
  ASSERT_STR_EQ(str_of(json_object_get(q.o[3], "scope"), "id"), visit_b);
  objs_free(&q);
  fieldsync_close(x.db);
  path_in(path, sizeof(path), "w.db");
  ASSERT_OK(fieldsync_open(path, 0, NULL, &x.db));
  fieldsync_replica_id(x.db, hex2);
  ASSERT_STR_EQ(hex1, hex2);
  ASSERT_OK(add(x.db, "observation", id, obs));
  ASSERT_OK(fieldsync_counts(x.db, &c));
  ASSERT_EQ(c.records, 1);
  ASSERT_EQ(c.pending, 1);
  ASSERT_EQ(c.quarantined, 4);
  fieldsync_close(x.db);
}

TEST_LIST(
    TEST_ENTRY(open_create_and_reopen) TEST_ENTRY(batches) TEST_ENTRY(
        open_refuses_bad_files) TEST_ENTRY(open_refuses_newer_schema)
        TEST_ENTRY(open_refuses_foreign_sqlite) TEST_ENTRY(
            create_get_edit_delete) TEST_ENTRY(bad_input_leaves_db_unchanged)
            TEST_ENTRY(queries_use_filters) TEST_ENTRY(
                concurrent_edits_become_siblings)
                TEST_ENTRY(resolve_with_new_content) TEST_ENTRY(
                    delete_vs_edit_is_a_conflict)
                    TEST_ENTRY(same_content_concurrently) TEST_ENTRY(
                        new_server_resets_cursor) TEST_ENTRY(concurrent_deletes)
                        TEST_ENTRY(outgoing_batches_in_order) TEST_ENTRY(
                            apply_is_atomic_with_cursor)
                            TEST_ENTRY(import_csv_and_jsonl) TEST_ENTRY(
                                import_bad_row_keeps_nothing)
                                TEST_ENTRY(introspection) TEST_ENTRY(
                                    allocation_failures_are_clean)
                                    TEST_ENTRY(migrate_from_schema_1) TEST_ENTRY(
                                        refused_marked_until_retry)
                                        TEST_ENTRY(scope_removal_quarantines) TEST_ENTRY(
                                            scope_removal_is_atomic)
                                            TEST_ENTRY(backfill_state) TEST_ENTRY(
                                                held_scopes_limit)
                                                TEST_ENTRY(quarantine_discard)
                                                    TEST_ENTRY(
                                                        revoke_wipes_but_quarantines))
