/* SPDX-License-Identifier: MIT */
/* End-to-end sync: the real fieldsyncd on 127.0.0.1 and several replicas
 * syncing through libfieldsync. A field visit from first sync to a
 * resolved conflict, re-pushing acknowledged data (a restored backup, a
 * replica whose acks were lost), and a client SIGKILLed again and again in
 * the middle of a 20,000-version push. Every scenario ends with the same
 * check: all replicas hold the same versions (their JSON exports, with the
 * replica-local "pending" flag dropped, are identical).
 *
 * Usage: test_sync_e2e FIELDSYNCD FIELDSYNC-ADMIN [TEST | --list].
 * $FIELDSYNC_SEED repeats a run, $FIELDSYNC_TEST_SCALE multiplies the
 * kills, and $FIELDSYNC_KEEP_TMP=1 keeps the temporary directory. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "fieldsync.h"
#include "harness.h"
#include "proc.h"
#include "replica_export.h"

/* Versions created by the client that is killed mid-push (task (c)). */
#define BULK_RECORDS 20000
#define BULK_BATCH 500u
/* Kills of the pushing client per run at scale 1. */
#define BULK_KILLS 8
/* Deadlines (ms) for a child's first progress report and for a sync. */
#define CHILD_WAIT_MS 60000
#define SYNC_TIMEOUT_MS 30000

static const char *fieldsyncd;
static const char *admin;
static char dir[256];
static char srvdb[320];
static struct test_server srv;

/* One replica: a user, its device token and its client database. */
struct replica {
  const char *user;
  const char *role;
  char token[128];
  char path[320];
  fieldsync_db *db;
};

/* What the outcome callback saw during one sync. */
struct tally {
  size_t applied;
  size_t known;
  size_t conflict;
  size_t stale;
  size_t refused;
  char last_refusal[256];
};

/* ---- files and processes ----------------------------------------------- */

static double now_ms(void) {
  return (double)proc_now_ms();
}

static void setup_dir(void) {
  tmpdir_make(dir, sizeof(dir), "fs-e2e");
  tmpdir_kill_at_exit(&srv);
  snprintf(srvdb, sizeof(srvdb), "%s/server.db", dir);
}

/* Adds r's user and a device for it; the replica's database is made. */
static void replica_init(struct replica *r, const char *user,
                         const char *role) {
  memset(r, 0, sizeof(*r));
  r->user = user;
  r->role = role;
  admin_user_device(admin, srvdb, user, role, r->token, sizeof(r->token));
  ASSERT_EQ(strncmp(r->token, "fst_", 4), 0);
  snprintf(r->path, sizeof(r->path), "%s/%s.db", dir, user);
  if (fieldsync_open(r->path, FIELDSYNC_OPEN_CREATE, user, &r->db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", r->path,
              fieldsync_errmsg(r->db));
}

static void replica_reopen(struct replica *r) {
  ASSERT(r->db == NULL);
  if (fieldsync_open(r->path, 0, NULL, &r->db) != 0)
    test_fail(__FILE__, __LINE__, "reopen %s: %s", r->path,
              fieldsync_errmsg(r->db));
}

static void replica_close(struct replica *r) {
  ASSERT_OK(fieldsync_close(r->db));
  r->db = NULL;
}

/* ---- sync -------------------------------------------------------------- */

static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  struct tally *t = data;

  (void)collection;
  (void)id;
  if (strcmp(outcome, "applied") == 0) {
    t->applied++;
  } else if (strcmp(outcome, "already_known") == 0) {
    t->known++;
  } else if (strcmp(outcome, "conflict") == 0) {
    t->conflict++;
  } else if (strcmp(outcome, "stale") == 0) {
    t->stale++;
  } else {
    ASSERT_STR_EQ(outcome, "refused");
    t->refused++;
    snprintf(t->last_refusal, sizeof(t->last_refusal), "%s %s: %s", collection,
             id, reason != NULL ? reason : "(no reason)");
  }
}

/* Syncs r with the server; the sync must succeed and nothing be refused
 * (the server does not enforce roles yet, PROTOCOL.md "Security"). */
static void sync_one(struct replica *r, struct tally *t,
                     struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats local;
  struct tally tl;
  int rc;

  if (t == NULL)
    t = &tl;
  if (st == NULL)
    st = &local;
  memset(t, 0, sizeof(*t));
  memset(&o, 0, sizeof(o));
  o.server = srv.addr;
  o.token = r->token;
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.outcome = on_outcome;
  o.outcome_data = t;
  rc = fieldsync_sync(r->db, &o, st);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "sync %s: %s: %s", r->user,
              fieldsync_errname(rc), fieldsync_errmsg(r->db));
  if (t->refused != 0)
    test_fail(__FILE__, __LINE__, "sync %s: %zu refused, e.g. %s", r->user,
              t->refused, t->last_refusal);
  ASSERT_EQ(st->refused, 0);
  ASSERT_EQ(st->acked, st->pushed);
  ASSERT_EQ(t->applied + t->known + t->conflict + t->stale, st->pushed);
  ASSERT_EQ(t->conflict, st->conflicts);
}

/* Syncs every replica in turn until a whole round moves nothing. */
static void sync_until_quiet(struct replica *const *rs, size_t n) {
  int round;

  for (round = 0; round < 6; round++) {
    size_t moved = 0;
    size_t i;

    for (i = 0; i < n; i++) {
      struct fieldsync_sync_stats st;
      sync_one(rs[i], NULL, &st);
      moved += st.pushed + st.applied;
    }
    if (moved == 0)
      return;
  }
  test_fail(__FILE__, __LINE__, "replicas still exchanging after 6 rounds");
}

/* ---- records ----------------------------------------------------------- */

/* A field and its value as text, for a draft; a list ends with NULLs. */
struct kv {
  const char *field;
  const char *value;
};

/* Creates a record of collection from field values. */
static void create(fieldsync_db *db, const char *collection,
                   const struct kv *kv, char id[33]) {
  fieldsync_draft *d = NULL;
  size_t i;

  ASSERT_OK(fieldsync_draft_new(db, collection, &d));
  for (i = 0; kv[i].field != NULL; i++)
    if (fieldsync_draft_set(d, kv[i].field, kv[i].value) != 0)
      test_fail(__FILE__, __LINE__, "%s.%s = %s: %s", collection, kv[i].field,
                kv[i].value, fieldsync_errmsg(db));
  if (fieldsync_create(db, d, id) != 0)
    test_fail(__FILE__, __LINE__, "create %s: %s", collection,
              fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

static void edit(fieldsync_db *db, const char *id, const char *field,
                 const char *value) {
  fieldsync_draft *d = NULL;

  if (fieldsync_draft_for_edit(db, id, &d) != 0)
    test_fail(__FILE__, __LINE__, "edit %s: %s", id, fieldsync_errmsg(db));
  ASSERT_OK(fieldsync_draft_set(d, field, value));
  if (fieldsync_edit(db, d) != 0)
    test_fail(__FILE__, __LINE__, "edit %s: %s", id, fieldsync_errmsg(db));
  fieldsync_draft_free(d);
}

static int count_cb(const char *json, void *data) {
  (void)json;
  (*(size_t *)data)++;
  return 0;
}

/* Records of collection (NULL: all), or only those in conflict. */
static size_t count(fieldsync_db *db, const char *collection, int conflicts) {
  struct fieldsync_query q;
  size_t n = 0;

  memset(&q, 0, sizeof(q));
  q.collection = collection;
  q.conflicts_only = conflicts;
  q.include_deleted = 1;
  if (fieldsync_query(db, &q, count_cb, &n) != 0)
    test_fail(__FILE__, __LINE__, "query: %s", fieldsync_errmsg(db));
  return n;
}

/* The record's JSON, parsed. */
static json_t *record(fieldsync_db *db, const char *id) {
  json_error_t e;
  char *s = NULL;
  json_t *j;

  if (fieldsync_get_json(db, id, &s) != 0)
    test_fail(__FILE__, __LINE__, "get %s: %s", id, fieldsync_errmsg(db));
  j = json_loads(s, 0, &e);
  if (j == NULL)
    test_fail(__FILE__, __LINE__, "record JSON: %s: %s", e.text, s);
  fieldsync_free(s);
  return j;
}

static const char *field_of(json_t *version, const char *name) {
  json_t *v = json_object_get(json_object_get(version, "fields"), name);

  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- exports ----------------------------------------------------------- */

/* Every replica's normalised export equals the first one's; *nrecords
 * gets the number of records. */
static void assert_exports_equal(struct replica *const *rs, size_t n,
                                 size_t *nrecords) {
  char *first = test_export_normalised(rs[0]->db);
  size_t i;

  for (i = 1; i < n; i++) {
    size_t k;
    char *other = test_export_normalised(rs[i]->db);
    if (strcmp(first, other) != 0) {
      for (k = 0; first[k] != '\0' && first[k] == other[k]; k++)
        continue;
      test_fail(__FILE__, __LINE__,
                "exports of %s and %s differ at byte %zu:\n# %s: %.200s\n# "
                "%s: %.200s",
                rs[0]->user, rs[i]->user, k, rs[0]->user,
                first + (k > 80 ? k - 80 : 0), rs[i]->user,
                other + (k > 80 ? k - 80 : 0));
    }
    free(other);
  }
  free(first);
  *nrecords = count(rs[0]->db, NULL, 0);
}

/* ---- direct SQL (server store, client schema) --------------------------- */

static sqlite3 *sql_open(const char *path) {
  sqlite3 *s = NULL;

  if (sqlite3_open_v2(path, &s, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "sqlite3 open %s: %s", path,
              sqlite3_errmsg(s));
  sqlite3_busy_timeout(s, 10000);
  return s;
}

static int64_t sql_int(sqlite3 *s, const char *sql) {
  sqlite3_stmt *st = NULL;
  int64_t v = 0;

  if (sqlite3_prepare_v2(s, sql, -1, &st, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(s));
  if (sqlite3_step(st) == SQLITE_ROW)
    v = sqlite3_column_int64(st, 0);
  else
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(s));
  sqlite3_finalize(st);
  return v;
}

static void sql_exec(sqlite3 *s, const char *sql) {
  char *err = NULL;

  if (sqlite3_exec(s, sql, NULL, NULL, &err) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, err);
}

/* One integer from the server's store (read beside the running server). */
static int64_t srv_int(const char *sql) {
  sqlite3 *s = sql_open(srvdb);
  int64_t v = sql_int(s, sql);

  sqlite3_close(s);
  return v;
}

/* Versions of a client database not acknowledged by the server. */
static int64_t pending_of(const char *path) {
  sqlite3 *s = sql_open(path);
  int64_t v = sql_int(s, "SELECT count(*) FROM versions WHERE pending > 0");

  sqlite3_close(s);
  return v;
}

/* ---- the field visit ---------------------------------------------------- */

static const char *const req_text = "Care plans must record each person's "
                                    "assessed needs and be reviewed monthly.";
static const char *const req_text_lead =
    "Care plans must record each person's assessed needs, be agreed with "
    "them, and be reviewed monthly.";
static const char *const req_due = "2025-04-30";
static const char *const req_due_second = "2025-05-30";

/* Assigns the visit (32 hex) to user on the server. */
static void assign(const char *visit, const char *user) {
  char out[256];
  const char *a[] = {"assign", visit, user, NULL};

  proc_admin_run(admin, srvdb, a, out, sizeof(out));
}

/* (a) A key inspection: head office sets it up and assigns the team, the
 * team records offline, two inspectors edit one requirement concurrently,
 * head office resolves it, and every replica ends with the same data of
 * its scope and no conflict: the inspectors and head office everything of
 * the visit, the Expert by Experience the visit and their own notes. */
TEST(field_visit_conflict_resolution) {
  struct replica lead;
  struct replica second;
  struct replica expert;
  struct replica office;
  struct replica *all[4] = {&lead, &second, &expert, &office};
  struct replica *full[3] = {&lead, &second, &office}; /* see everything */
  struct tally t;
  struct fieldsync_sync_stats st;
  uint64_t rng = test_seed();
  char service[33];
  char visit[33];
  char req[33];
  char id[33];
  size_t nrec = 0;
  size_t i;
  int code;
  double t0 = now_ms();

  setup_dir();
  replica_init(&lead, "lead", "inspector");
  replica_init(&second, "second", "inspector");
  replica_init(&expert, "expert", "expert");
  replica_init(&office, "office", "head_office");
  server_start(&srv, fieldsyncd, srvdb, NULL);

  /* Head office registers the service and plans the key visit. */
  {
    const struct kv kv[] = {
        {"name", "Hillview House"},
        {"csci_ref", "CS2003012345"},
        {"address", "12 Brae Road, Dunfermline"},
        {"postcode", "KY11 4AB"},
        {"provider", "Hillview Care Ltd"},
        {"sector", "private"},
        {"council", "Fife"},
        {"registered_manager", "A. Morrison"},
        {"registration_categories", "older_people"},
        {"places", "40"},
        {"nursing", "true"},
        {"next_key_inspection_due", "2025-03-31"},
        {NULL, NULL},
    };
    create(office.db, "service", kv, service);
  }
  {
    const struct kv kv[] = {
        {"service_id", service},    {"kind", "key"},
        {"announced", "false"},     {"planned_date", "2025-03-12"},
        {"lead_inspector", "lead"}, {"inspectors", "lead"},
        {"inspectors", "second"},   {"experts", "expert"},
        {"status", "planned"},      {NULL, NULL},
    };
    create(office.db, "visit", kv, visit);
  }
  sync_one(&office, &t, &st);
  ASSERT_EQ(st.pushed, 2);
  ASSERT_EQ(t.applied, 2);
  /* Before the assignment the team's tablets receive nothing. */
  for (i = 0; i < 3; i++) {
    sync_one(all[i], &t, &st);
    ASSERT_EQ(st.pulled, 0);
    ASSERT_EQ(count(all[i]->db, NULL, 0), 0);
  }
  assign(visit, "lead");
  assign(visit, "second");
  assign(visit, "expert");
  /* Now the visit and its service arrive, although their seqs are below
   * each tablet's cursor (backfill); the expert gets the visit only. */
  for (i = 0; i < 3; i++) {
    size_t want = all[i] == &expert ? 1 : 2;
    sync_one(all[i], &t, &st);
    ASSERT_EQ(st.pushed, 0);
    ASSERT_EQ(st.applied, want);
    ASSERT_EQ(count(all[i]->db, NULL, 0), want);
  }

  /* Offline fieldwork: OP7..OP30 split between the two inspectors. */
  for (code = 7; code <= 30; code++) {
    struct replica *who = code <= 18 ? &lead : &second;
    char sc[16];
    char judgement[16];
    char evidence[128];
    const struct kv kv[] = {
        {"visit_id", visit},
        {"standard_code", sc},
        {"judgement", judgement},
        {"evidence_text", evidence},
        {"evidence_category", "observation"},
        {"assessor", who->user},
        {NULL, NULL},
    };
    snprintf(sc, sizeof(sc), "OP%d", code);
    snprintf(judgement, sizeof(judgement), "%d",
             1 + (int)test_rand_below(&rng, 4));
    snprintf(evidence, sizeof(evidence),
             "Standard %s: evidence seen on the %s floor.", sc,
             code % 2 == 0 ? "ground" : "first");
    create(who->db, "observation", kv, id);
  }
  for (i = 1; i <= 3; i++) {
    char pc[8];
    const struct kv kv[] = {
        {"visit_id", visit},
        {"expert", "expert"},
        {"participant_code", pc},
        {"participant_role", "resident"},
        {"consent", "given"},
        {"mode", "face"},
        {"said", "The food is good and there is always a choice."},
        {"themes", "{\"theme\":\"food\",\"sentiment\":\"positive\"}"},
        {NULL, NULL},
    };
    snprintf(pc, sizeof(pc), "R%zu", i);
    create(expert.db, "interview_note", kv, id);
  }
  {
    const struct kv kv[] = {
        {"service_id", service},    {"raised_visit_id", visit},
        {"standard_code", "OP9"},   {"regulation", "Reg 13(2)"},
        {"text", req_text},         {"kind", "statutory"},
        {"timescale_due", req_due}, {"status", "open"},
        {"owner", "lead"},          {NULL, NULL},
    };
    create(lead.db, "requirement", kv, req);
  }
  ASSERT_EQ(count(second.db, "observation", 0), 12);
  ASSERT_EQ(count(lead.db, "interview_note", 0), 0);

  /* Back in the office: everyone syncs (twice, so the first to sync also
   * gets what the later ones pushed). */
  sync_until_quiet(all, 4);
  for (i = 0; i < 3; i++) {
    ASSERT_EQ(count(full[i]->db, "observation", 0), 24);
    ASSERT_EQ(count(full[i]->db, "interview_note", 0), 3);
    ASSERT_EQ(count(full[i]->db, "requirement", 0), 1);
    ASSERT_EQ(count(full[i]->db, NULL, 1), 0);
  }
  assert_exports_equal(full, 3, &nrec);
  ASSERT_EQ(nrec, 2 + 24 + 3 + 1);
  /* The expert's tablet: the visit and their own notes, nothing else. */
  ASSERT_EQ(count(expert.db, NULL, 0), 1 + 3);
  ASSERT_EQ(count(expert.db, "visit", 0), 1);
  ASSERT_EQ(count(expert.db, "interview_note", 0), 3);

  /* Both inspectors change the requirement offline, different fields. */
  edit(lead.db, req, "text", req_text_lead);
  edit(second.db, req, "timescale_due", req_due_second);

  sync_one(&lead, &t, &st);
  ASSERT_EQ(t.applied, 1);
  sync_one(&second, &t, &st);
  ASSERT_EQ(t.conflict, 1); /* concurrent with the lead's edit */
  ASSERT_EQ(st.pull_conflicts, 1);
  sync_one(&expert, NULL, NULL);
  sync_one(&office, NULL, NULL);
  sync_one(&lead, &t, &st); /* now gets the second's sibling */
  ASSERT_EQ(st.pull_conflicts, 1);
  sync_one(&second, NULL, NULL);

  for (i = 0; i < 3; i++) {
    json_t *j = record(full[i]->db, req);
    json_t *vs = json_object_get(j, "versions");
    bool lead_edit = false;
    bool second_edit = false;
    size_t k;

    ASSERT_EQ(count(full[i]->db, NULL, 1), 1);
    ASSERT(json_is_true(json_object_get(j, "conflict")));
    ASSERT_EQ(json_array_size(vs), 2);
    for (k = 0; k < 2; k++) {
      json_t *v = json_array_get(vs, k);
      const char *text = field_of(v, "text");
      const char *due = field_of(v, "timescale_due");
      ASSERT(text != NULL && due != NULL);
      ASSERT_STR_EQ(field_of(v, "regulation"), "Reg 13(2)");
      if (strcmp(text, req_text_lead) == 0 && strcmp(due, req_due) == 0)
        lead_edit = true;
      if (strcmp(text, req_text) == 0 && strcmp(due, req_due_second) == 0)
        second_edit = true;
    }
    if (!lead_edit || !second_edit)
      test_fail(__FILE__, __LINE__, "%s: siblings lack an edit: %s",
                full[i]->user, json_dumps(j, JSON_COMPACT));
    json_decref(j);
  }
  /* An edit of a conflicted record is refused until it is resolved. */
  {
    fieldsync_draft *d = NULL;
    ASSERT_EQ(fieldsync_draft_for_edit(lead.db, req, &d), FIELDSYNC_ECONFLICT);
    ASSERT(d == NULL);
  }
  assert_exports_equal(full, 3, &nrec);

  /* Head office merges both changes. */
  {
    fieldsync_draft *d = NULL;
    ASSERT_OK(fieldsync_draft_for_resolve(office.db, req, &d));
    ASSERT_OK(fieldsync_draft_set(d, "text", req_text_lead));
    ASSERT_OK(fieldsync_draft_set(d, "timescale_due", req_due_second));
    if (fieldsync_resolve_with(office.db, req, d) != 0)
      test_fail(__FILE__, __LINE__, "resolve: %s", fieldsync_errmsg(office.db));
    fieldsync_draft_free(d);
  }
  ASSERT_EQ(count(office.db, NULL, 1), 0);
  sync_one(&office, &t, &st);
  ASSERT_EQ(st.pushed, 1);
  ASSERT_EQ(t.applied, 1); /* supersedes both siblings on the server */
  sync_until_quiet(all, 4);

  for (i = 0; i < 3; i++) {
    json_t *j = record(full[i]->db, req);
    json_t *vs = json_object_get(j, "versions");

    ASSERT_EQ(count(full[i]->db, NULL, 1), 0);
    ASSERT(json_is_false(json_object_get(j, "conflict")));
    ASSERT_EQ(json_array_size(vs), 1);
    ASSERT_STR_EQ(field_of(json_array_get(vs, 0), "text"), req_text_lead);
    ASSERT_STR_EQ(field_of(json_array_get(vs, 0), "timescale_due"),
                  req_due_second);
    ASSERT(json_is_false(json_object_get(json_array_get(vs, 0), "pending")));
    ASSERT_EQ(pending_of(full[i]->path), 0);
    json_decref(j);
  }
  assert_exports_equal(full, 3, &nrec);
  ASSERT_EQ(nrec, 30);
  ASSERT_EQ(count(expert.db, NULL, 0), 1 + 3);
  ASSERT_EQ(pending_of(expert.path), 0);
  /* The server kept the whole history of the requirement: the original,
   * both edits and the resolution, with only the resolution current. */
  {
    char sql[256];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM versions WHERE hex(record) = upper('%s')",
             req);
    ASSERT_EQ(srv_int(sql), 4);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM versions WHERE hex(record) = upper('%s') "
             "AND current = 1",
             req);
    ASSERT_EQ(srv_int(sql), 1);
  }
  ASSERT_EQ(srv_int("SELECT count(*) FROM records"), 30);
  ASSERT_EQ(srv_int("SELECT count(*) FROM versions WHERE current = 1"), 30);

  for (i = 0; i < 4; i++)
    replica_close(all[i]);
  ASSERT_EQ(server_stop(&srv), 0);
  printf("# field visit: 4 replicas, %zu records, %.1f s\n", nrec,
         (now_ms() - t0) / 1e3);
}

/* ---- re-pushing acknowledged data ---------------------------------------- */

/* Marks every version of the client database at path pending again, in a
 * fresh order, as if no ack had ever been recorded. Returns their number. */
static int64_t mark_all_pending(const char *path) {
  sqlite3 *s = sql_open(path);
  int64_t n;

  sql_exec(s, "BEGIN IMMEDIATE;"
              "CREATE TEMP TABLE o AS SELECT record, hash, vv, "
              "  row_number() OVER (ORDER BY record, hash, vv) AS k "
              "  FROM versions;"
              "UPDATE versions SET pending = (SELECT k FROM o WHERE "
              "  o.record = versions.record AND o.hash = versions.hash AND "
              "  o.vv = versions.vv);"
              "UPDATE meta SET value = (SELECT count(*) + 1 FROM o) "
              "  WHERE key = 'next_pending';"
              "COMMIT;");
  n = sql_int(s, "SELECT count(*) FROM versions WHERE pending > 0");
  ASSERT_EQ(n, sql_int(s, "SELECT count(*) FROM versions"));
  sqlite3_close(s);
  return n;
}

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  FILE *out = fopen(to, "wb");
  char b[65536];
  size_t n;

  ASSERT(in != NULL && out != NULL);
  while ((n = fread(b, 1, sizeof(b), in)) > 0)
    ASSERT_EQ(fwrite(b, 1, n, out), n);
  ASSERT_OK(ferror(in));
  fclose(in);
  ASSERT_OK(fclose(out));
}

/* (b) Pushing versions the server already acknowledged changes nothing:
 * a backup restored from before its sync, and a replica whose acks were
 * all lost (every version, its own and pulled ones, pending again). */
TEST(repush_acked_changes_nothing) {
  struct replica lead;
  struct replica second;
  struct replica *all[2] = {&lead, &second};
  struct tally t;
  struct fieldsync_sync_stats st;
  char backup[352];
  char service[33];
  char visit[33];
  char req[33];
  char id[33];
  int64_t history;
  int64_t current;
  int64_t maxseq;
  int64_t n;
  size_t nrec = 0;
  int i;

  setup_dir();
  replica_init(&lead, "lead", "head_office");
  replica_init(&second, "second", "head_office");
  server_start(&srv, fieldsyncd, srvdb, NULL);
  {
    const struct kv kv[] = {
        {"name", "Seaview Lodge"},
        {"council", "Argyll and Bute"},
        {NULL, NULL},
    };
    create(lead.db, "service", kv, service);
  }
  {
    const struct kv kv[] = {
        {"service_id", service},
        {"kind", "random"},
        {NULL, NULL},
    };
    create(lead.db, "visit", kv, visit);
  }
  for (i = 0; i < 40; i++) {
    char sc[8];
    const struct kv kv[] = {
        {"visit_id", visit},
        {"standard_code", sc},
        {"judgement", "3"},
        {NULL, NULL},
    };
    snprintf(sc, sizeof(sc), "OP%d", 1 + i % 30);
    create(lead.db, "observation", kv, id);
  }
  {
    const struct kv kv[] = {
        {"service_id", service},
        {"raised_visit_id", visit},
        {"standard_code", "OP9"},
        {"regulation", "Reg 13(2)"},
        {"text", req_text},
        {"timescale_due", req_due},
        {NULL, NULL},
    };
    create(lead.db, "requirement", kv, req);
  }
  /* A backup of the lead's tablet before it ever synced (closed first,
   * so the database file holds everything). */
  replica_close(&lead);
  snprintf(backup, sizeof(backup), "%s/lead-backup.db", dir);
  copy_file(lead.path, backup);
  replica_reopen(&lead);

  sync_one(&lead, &t, &st);
  ASSERT_EQ(t.applied, 43);
  sync_one(&second, NULL, NULL);
  /* History on the server: the requirement edited by second and synced. */
  edit(second.db, req, "status", "met");
  sync_one(&second, &t, &st);
  ASSERT_EQ(t.applied, 1);
  sync_until_quiet(all, 2);
  history = srv_int("SELECT count(*) FROM versions");
  current = srv_int("SELECT count(*) FROM versions WHERE current = 1");
  maxseq = srv_int("SELECT max(seq) FROM versions");
  ASSERT_EQ(history, 44);
  ASSERT_EQ(current, 43);

  /* 1. Second's acks are lost: all 43 current versions pending again. */
  replica_close(&second);
  n = mark_all_pending(second.path);
  ASSERT_EQ(n, 43);
  replica_reopen(&second);
  sync_one(&second, &t, &st);
  ASSERT_EQ(st.pushed, 43);
  ASSERT_EQ(t.known, 43);
  ASSERT_EQ(t.applied + t.conflict + t.stale, 0);
  ASSERT_EQ(st.applied, 0);
  ASSERT_EQ(pending_of(second.path), 0);

  /* 2. The lead's tablet restored from the backup: its 43 original
   * versions again, one of them since superseded on the server. */
  replica_close(&lead);
  copy_file(backup, lead.path);
  replica_reopen(&lead);
  ASSERT_EQ(pending_of(lead.path), 43);
  sync_one(&lead, &t, &st);
  ASSERT_EQ(st.pushed, 43);
  ASSERT_EQ(t.known, 42);
  ASSERT_EQ(t.stale, 1); /* the requirement's first version */
  ASSERT_EQ(t.applied + t.conflict, 0);
  ASSERT_EQ(st.pull_conflicts, 0);
  ASSERT_EQ(pending_of(lead.path), 0);
  {
    json_t *j = record(lead.db, req);
    json_t *vs = json_object_get(j, "versions");
    ASSERT_EQ(json_array_size(vs), 1);
    ASSERT_STR_EQ(field_of(json_array_get(vs, 0), "status"), "met");
    json_decref(j);
  }

  /* Nothing changed on the server; the replicas agree. */
  ASSERT_EQ(srv_int("SELECT count(*) FROM versions"), history);
  ASSERT_EQ(srv_int("SELECT count(*) FROM versions WHERE current = 1"),
            current);
  ASSERT_EQ(srv_int("SELECT max(seq) FROM versions"), maxseq);
  sync_until_quiet(all, 2);
  ASSERT_EQ(srv_int("SELECT count(*) FROM versions"), history);
  assert_exports_equal(all, 2, &nrec);
  ASSERT_EQ(nrec, 43);

  replica_close(&lead);
  replica_close(&second);
  ASSERT_EQ(server_stop(&srv), 0);
}

/* ---- a client killed mid-push -------------------------------------------- */

static int progress_fd = -1;

/* In the child: one byte to the parent per pushed batch. */
static void child_progress(const char *phase, size_t done, size_t total,
                           void *data) {
  char c = strcmp(phase, "push") == 0 ? 'p' : 'l';
  ssize_t w;

  (void)done;
  (void)total;
  (void)data;
  do
    w = write(progress_fd, &c, 1);
  while (w < 0 && errno == EINTR);
}

/* The forked child: opens the database itself and syncs it. Never returns
 * (and never runs the parent's atexit handlers). */
static void child_sync(const struct replica *r, int fd) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  fieldsync_db *db = NULL;
  int rc;

  progress_fd = fd;
  if (fieldsync_open(r->path, 0, NULL, &db) != 0)
    _exit(3);
  memset(&o, 0, sizeof(o));
  o.server = srv.addr;
  o.token = r->token;
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.batch = BULK_BATCH;
  o.progress = child_progress;
  rc = fieldsync_sync(db, &o, &st);
  if (rc != 0)
    fprintf(stderr, "# child sync: %s\n", fieldsync_errmsg(db));
  fieldsync_close(db);
  _exit(rc == 0 ? 0 : 1);
}

/* Waits (bounded) for n push-progress bytes from the child, or its end.
 * Returns the number seen. */
static int wait_pushes(int fd, int n, pid_t pid) {
  double deadline = now_ms() + CHILD_WAIT_MS;
  int seen = 0;

  while (seen < n) {
    struct pollfd p = {fd, POLLIN, 0};
    char c;
    int r;

    if (now_ms() > deadline) {
      kill(pid, SIGKILL);
      test_fail(__FILE__, __LINE__, "child made no progress in %d ms",
                CHILD_WAIT_MS);
    }
    r = poll(&p, 1, 100);
    if (r <= 0)
      continue;
    if (read(fd, &c, 1) != 1)
      break; /* the child ended */
    if (c == 'p')
      seen++;
  }
  return seen;
}

/* (c) A client SIGKILLed again and again while pushing 20,000 versions
 * (batches of 500) resumes each time: the final sync completes, the server
 * holds each version exactly once, and a fresh replica pulls all of it. */
TEST(client_killed_mid_push_resumes) {
  struct replica lead;
  struct replica bulk;
  struct replica fresh;
  struct replica *all[3] = {&lead, &bulk, &fresh};
  struct tally t;
  struct fieldsync_sync_stats st;
  uint64_t rng = test_seed();
  uint64_t kills_wanted = BULK_KILLS * test_scale();
  uint64_t kills = 0;
  uint64_t finished_early = 0;
  char service[33];
  char visit[33];
  char id[33];
  char sql[512];
  int64_t pend;
  int64_t last_pend;
  int64_t bulk_dev;
  size_t nrec = 0;
  int i;
  double t0 = now_ms();
  double t1;

  setup_dir();
  replica_init(&lead, "lead", "head_office");
  replica_init(&bulk, "bulk", "head_office");
  replica_init(&fresh, "fresh", "head_office");
  server_start(&srv, fieldsyncd, srvdb, NULL);
  {
    const struct kv kv[] = {
        {"name", "Riverside Court"},
        {NULL, NULL},
    };
    create(lead.db, "service", kv, service);
  }
  {
    const struct kv kv[] = {
        {"service_id", service},
        {"kind", "thematic"},
        {NULL, NULL},
    };
    create(lead.db, "visit", kv, visit);
  }
  for (i = 0; i < 10; i++) {
    const struct kv kv[] = {
        {"visit_id", visit},
        {"standard_code", "OP12"},
        {"judgement", "2"},
        {NULL, NULL},
    };
    create(lead.db, "observation", kv, id);
  }
  sync_one(&lead, NULL, NULL);
  sync_one(&bulk, NULL, NULL);

  ASSERT_OK(fieldsync_batch_begin(bulk.db));
  for (i = 0; i < BULK_RECORDS; i++) {
    char sc[8];
    char j[4];
    char ev[96];
    const struct kv kv[] = {
        {"visit_id", visit},   {"standard_code", sc}, {"judgement", j},
        {"evidence_text", ev}, {NULL, NULL},
    };
    snprintf(sc, sizeof(sc), "OP%d", 1 + i % 38);
    snprintf(j, sizeof(j), "%d", 1 + i % 4);
    snprintf(ev, sizeof(ev), "Bulk evidence item %d of the thematic visit.", i);
    create(bulk.db, "observation", kv, NULL);
  }
  ASSERT_OK(fieldsync_batch_commit(bulk.db));
  replica_close(&bulk);
  last_pend = pending_of(bulk.path);
  ASSERT_EQ(last_pend, BULK_RECORDS);
  printf("# created %d versions in %.1f s\n", BULK_RECORDS,
         (now_ms() - t0) / 1e3);

  while (kills < kills_wanted) {
    int fds[2];
    pid_t pid;
    int status = 0;
    /* Mostly a random moment after a random number of acknowledged
     * batches (a batch takes 100 to 300 ms under ASan), else a random
     * moment from the start (open, connect, Hello, the first Push). */
    bool by_progress = test_rand_below(&rng, 4) != 0;
    int batches = (int)test_rand_below(&rng, 3);
    double delay = (double)test_rand_below(&rng, by_progress ? 300 : 400);

    ASSERT_OK(pipe(fds));
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      child_sync(&bulk, fds[1]);
    }
    close(fds[1]);
    if (by_progress)
      wait_pushes(fds[0], batches, pid);
    proc_sleep_ms(delay);
    kill(pid, SIGKILL);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    close(fds[0]);
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {
      kills++;
    } else {
      /* It finished first: nothing was left to push. */
      ASSERT(WIFEXITED(status));
      ASSERT_EQ(WEXITSTATUS(status), 0);
      finished_early++;
    }
    pend = pending_of(bulk.path);
    ASSERT_LE(pend, last_pend);
    printf("# %s %d pushed batches + %.0f ms: %lld pending\n",
           WIFSIGNALED(status) ? "killed after" : "finished before",
           by_progress ? batches : 0, delay, (long long)pend);
    last_pend = pend;
    if (pend == 0)
      break;
  }
  printf("# %llu kills (%llu syncs finished first); %lld versions still "
         "pending\n",
         (unsigned long long)kills, (unsigned long long)finished_early,
         (long long)last_pend);

  /* The final sync completes what the killed ones left. */
  replica_reopen(&bulk);
  t1 = now_ms();
  sync_one(&bulk, &t, &st);
  ASSERT_EQ(st.pushed, (size_t)last_pend);
  ASSERT_EQ(t.applied + t.known, (size_t)last_pend);
  ASSERT_EQ(t.conflict + t.stale, 0);
  ASSERT_EQ(pending_of(bulk.path), 0);
  printf("# final sync: %zu applied, %zu already known, %.1f s\n", t.applied,
         t.known, (now_ms() - t1) / 1e3);

  /* Exactly one version per record on the server, none duplicated. */
  bulk_dev = srv_int("SELECT d.id FROM devices d JOIN users u "
                     "ON u.id = d.user_id WHERE u.name = 'bulk'");
  snprintf(sql, sizeof(sql),
           "SELECT count(DISTINCT record) FROM versions WHERE device_id = "
           "%lld",
           (long long)bulk_dev);
  ASSERT_EQ(srv_int(sql), BULK_RECORDS);
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM versions WHERE device_id = %lld",
           (long long)bulk_dev);
  ASSERT_EQ(srv_int(sql), BULK_RECORDS);
  snprintf(sql, sizeof(sql),
           "SELECT count(*) FROM versions WHERE device_id = %lld AND "
           "current = 1",
           (long long)bulk_dev);
  ASSERT_EQ(srv_int(sql), BULK_RECORDS);
  ASSERT_EQ(srv_int("SELECT count(*) FROM records"), BULK_RECORDS + 12);
  ASSERT_EQ(srv_int("SELECT count(*) FROM versions"), BULK_RECORDS + 12);

  /* A fresh replica pulls everything; all three agree. */
  t1 = now_ms();
  sync_one(&fresh, &t, &st);
  printf("# fresh replica pulled %zu versions in %.1f s\n", st.pulled,
         (now_ms() - t1) / 1e3);
  ASSERT_EQ(st.pulled, BULK_RECORDS + 12);
  ASSERT_EQ(count(fresh.db, NULL, 0), BULK_RECORDS + 12);
  ASSERT_EQ(count(fresh.db, "observation", 0), BULK_RECORDS + 10);
  sync_until_quiet(all, 3);
  assert_exports_equal(all, 3, &nrec);
  ASSERT_EQ(nrec, BULK_RECORDS + 12);

  for (i = 0; i < 3; i++)
    replica_close(all[i]);
  ASSERT_EQ(server_stop(&srv), 0);
  printf("# kill mid-push: %.1f s\n", (now_ms() - t0) / 1e3);
}

static const struct test_entry tests[] = {
    TEST_ENTRY(field_visit_conflict_resolution)
        TEST_ENTRY(repush_acked_changes_nothing)
            TEST_ENTRY(client_killed_mid_push_resumes)};

/* TEST_LIST's main, after taking the two program paths from the front of
 * the arguments, so that a test name or --list may follow them. */
int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(
        stderr,
        "usage: test_sync_e2e FIELDSYNCD FIELDSYNC-ADMIN [TEST | --list]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
