/* SPDX-License-Identifier: MIT */
/* Helpers of the allocation-fault tests: see alloc_common.h. */
#define _POSIX_C_SOURCE 200809L
#include "alloc_common.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

#include "harness.h"
#include "sqlcheck.h"

/* ---- files and SQL ------------------------------------------------------ */

static void copy_file(const char *from, const char *to) {
  char buf[65536];
  FILE *in = fopen(from, "rb");
  FILE *out;
  size_t n;

  if (in == NULL)
    test_fail(__FILE__, __LINE__, "open %s: %s", from, strerror(errno));
  out = fopen(to, "wb");
  if (out == NULL)
    test_fail(__FILE__, __LINE__, "create %s: %s", to, strerror(errno));
  while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
    ASSERT_EQ(fwrite(buf, 1, n, out), n);
  ASSERT(!ferror(in));
  fclose(in);
  ASSERT_OK(fclose(out));
}

void ac_remove_db(const char *path) {
  char p[400];

  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

void ac_restore(const char *base, const char *path) {
  char wal[400];

  snprintf(wal, sizeof(wal), "%s-wal", base);
  ASSERT(access(wal, F_OK) != 0);
  ac_remove_db(path);
  copy_file(base, path);
}

void ac_sql_text(const char *path, const char *sql, char *out, size_t cap) {
  sqlite3 *s = NULL;
  sqlite3_stmt *st = NULL;
  const unsigned char *t;

  if (sqlite3_open_v2(path, &s, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "sqlite3 open %s: %s", path,
              sqlite3_errmsg(s));
  sqlite3_busy_timeout(s, 10000);
  if (sqlite3_prepare_v2(s, sql, -1, &st, NULL) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_ROW)
    test_fail(__FILE__, __LINE__, "%s: %s: %s", path, sql, sqlite3_errmsg(s));
  t = sqlite3_column_text(st, 0);
  snprintf(out, cap, "%s", t != NULL ? (const char *)t : "");
  sqlite3_finalize(st);
  sqlite3_close(s);
}

void ac_integrity(const char *path, uint64_t k) {
  char what[400]; /* paths here are under 320 bytes */

  snprintf(what, sizeof(what), "k=%" PRIu64 ": %s", k, path);
  sqlcheck_integrity_file(path, what);
}

void ac_server_digest(const char *srvdb, char *out, size_t cap) {
  ac_sql_text(srvdb,
              "SELECT count(*) || ' ' || ifnull(group_concat(v, ','), '') FROM "
              "(SELECT hex(record) || ':' || hex(hash) || ':' || current AS v "
              "FROM versions ORDER BY record, hash)",
              out, cap);
}

/* ---- libfieldsync -------------------------------------------------------- */

fieldsync_db *ac_open(const char *path, int flags) {
  fieldsync_db *db = NULL;

  if (fieldsync_open(path, flags, flags != 0 ? "office" : NULL, &db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", path, fieldsync_errmsg(db));
  return db;
}

int ac_create(fieldsync_db *db, const char *collection, const struct ac_kv *kv,
              char id[33]) {
  fieldsync_draft *d = NULL;
  size_t i;
  int rc = fieldsync_draft_new(db, collection, &d);

  for (i = 0; rc == 0 && kv[i].field != NULL; i++)
    rc = fieldsync_draft_set(d, kv[i].field, kv[i].value);
  if (rc == 0)
    rc = fieldsync_create(db, d, id);
  fieldsync_draft_free(d);
  return rc;
}

static void must_create(fieldsync_db *db, const char *collection,
                        const struct ac_kv *kv, char id[33]) {
  if (ac_create(db, collection, kv, id) != 0)
    test_fail(__FILE__, __LINE__, "create %s: %s", collection,
              fieldsync_errmsg(db));
}

int ac_edit(fieldsync_db *db, const char *id, const char *field,
            const char *value) {
  fieldsync_draft *d = NULL;
  int rc = fieldsync_draft_for_edit(db, id, &d);

  if (rc == 0)
    rc = fieldsync_draft_set(d, field, value);
  if (rc == 0)
    rc = fieldsync_edit(db, d);
  fieldsync_draft_free(d);
  return rc;
}

int ac_sync(fieldsync_db *db, const char *addr, const char *token,
            int timeout_ms, struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_opts o;

  memset(&o, 0, sizeof(o));
  o.server = addr;
  o.token = token;
  o.plaintext = 1;
  o.timeout_ms = timeout_ms;
  o.batch = AC_BATCH;
  return fieldsync_sync(db, &o, st);
}

void ac_must_sync(fieldsync_db *db, const char *addr, const char *token,
                  struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_stats local;
  int rc = ac_sync(db, addr, token, 20000, st != NULL ? st : &local);

  if (rc != 0)
    test_fail(__FILE__, __LINE__, "sync: %s: %s", fieldsync_errname(rc),
              fieldsync_errmsg(db));
}

struct fieldsync_counts ac_counts(fieldsync_db *db) {
  struct fieldsync_counts c;

  if (fieldsync_counts(db, &c) != 0)
    test_fail(__FILE__, __LINE__, "counts: %s", fieldsync_errmsg(db));
  return c;
}

/* ---- the scenario -------------------------------------------------------- */

/* n observations of the visit, standards OP<first>.., on db. */
static void observations(struct ac_base *b, fieldsync_db *db, int first, int n,
                         char last_id[33]) {
  int i;

  for (i = 0; i < n; i++) {
    char sc[16];
    char ev[64];
    const struct ac_kv kv[] = {{"visit_id", b->visit},
                               {"standard_code", sc},
                               {"judgement", "4"},
                               {"evidence_text", ev},
                               {"evidence_category", "observation"},
                               {NULL, NULL}};
    snprintf(sc, sizeof(sc), "OP%d", first + i);
    snprintf(ev, sizeof(ev), "Evidence for standard %s.", sc);
    must_create(db, "observation", kv, last_id);
  }
}

/* What office records offline after its first sync. */
static void offline_work(struct ac_base *b, fieldsync_db *office) {
  char id[33];
  int i;

  ASSERT_OK(ac_edit(office, b->req, "text",
                    "Care plans must be agreed and reviewed monthly."));
  ASSERT_OK(ac_edit(office, b->obs_synced, "judgement", "2"));
  observations(b, office, 10, 1, b->obs_local);
  observations(b, office, 11, 4, id);
  for (i = 0; i < 2; i++) {
    char pc[8];
    const struct ac_kv kv[] = {{"visit_id", b->visit},
                               {"expert", "expert"},
                               {"participant_code", pc},
                               {"consent", "given"},
                               {"said", "Staff are kind and the food is good."},
                               {NULL, NULL}};
    snprintf(pc, sizeof(pc), "R%d", i + 1);
    must_create(office, "interview_note", kv, id);
  }
  {
    const struct ac_kv kv[] = {{"service_id", b->service},
                               {"raised_visit_id", b->visit},
                               {"standard_code", "OP12"},
                               {"text", "Record fridge temperatures daily."},
                               {NULL, NULL}};
    must_create(office, "recommendation", kv, id);
  }
  {
    const struct ac_kv kv[] = {{"service_id", b->service},
                               {"summary", "A relative reports missed meals."},
                               {NULL, NULL}};
    must_create(office, "concern", kv, id);
  }
  {
    const struct ac_kv kv[] = {{"service_id", b->service},
                               {"raised_visit_id", b->visit},
                               {"standard_code", "OP14"},
                               {"text", "Medicines must be stored securely."},
                               {"status", "open"},
                               {NULL, NULL}};
    must_create(office, "requirement", kv, id);
  }
  ASSERT_OK(fieldsync_delete(office, id));
}

void ac_base_make(struct ac_base *b, const char *prefix, const char *fieldsyncd,
                  const char *admin, struct test_server *srv) {
  fieldsync_db *office;
  fieldsync_db *other;
  char id[33];

  memset(b, 0, sizeof(*b));
  tmpdir_make(b->dir, sizeof(b->dir), prefix);
  tmpdir_kill_at_exit(srv);
  snprintf(b->srvdb, sizeof(b->srvdb), "%s/server.db", b->dir);
  snprintf(b->base_srv, sizeof(b->base_srv), "%s/base-server.db", b->dir);
  snprintf(b->base_cli, sizeof(b->base_cli), "%s/base-office.db", b->dir);
  snprintf(b->base_cli2, sizeof(b->base_cli2), "%s/base-office2.db", b->dir);
  snprintf(b->cli, sizeof(b->cli), "%s/office.db", b->dir);
  snprintf(b->cli2, sizeof(b->cli2), "%s/office2.db", b->dir);
  admin_user_device(admin, b->srvdb, "office", "head_office", b->token,
                    sizeof(b->token));
  admin_user_device(admin, b->srvdb, "office2", "head_office", b->token2,
                    sizeof(b->token2));
  admin_user_device(admin, b->srvdb, "keeper", "head_office", b->token3,
                    sizeof(b->token3));
  server_start(srv, fieldsyncd, b->srvdb, NULL);

  office = ac_open(b->cli, FIELDSYNC_OPEN_CREATE);
  {
    const struct ac_kv kv[] = {{"name", "Hillview House"},
                               {"council", "Fife"},
                               {"places", "40"},
                               {"nursing", "true"},
                               {NULL, NULL}};
    must_create(office, "service", kv, b->service);
  }
  {
    const struct ac_kv kv[] = {
        {"service_id", b->service},     {"kind", "key"},
        {"planned_date", "2025-03-12"}, {"lead_inspector", "lead"},
        {"status", "planned"},          {NULL, NULL}};
    must_create(office, "visit", kv, b->visit);
  }
  {
    const struct ac_kv kv[] = {{"service_id", b->service},
                               {"raised_visit_id", b->visit},
                               {"standard_code", "OP9"},
                               {"text", "Care plans must be reviewed monthly."},
                               {"timescale_due", "2025-04-30"},
                               {"status", "open"},
                               {NULL, NULL}};
    must_create(office, "requirement", kv, b->req);
  }
  {
    const struct ac_kv kv[] = {{"visit_id", b->visit},
                               {"standard_code", "OP7"},
                               {"judgement", "3"},
                               {"evidence_text", "Menus seen; choice offered."},
                               {NULL, NULL}};
    must_create(office, "observation", kv, b->obs_synced);
  }
  ac_must_sync(office, srv->addr, b->token, NULL);

  other = ac_open(b->cli2, FIELDSYNC_OPEN_CREATE);
  ac_must_sync(other, srv->addr, b->token2, NULL);
  ASSERT_OK(ac_edit(other, b->req, "timescale_due", "2025-05-30"));
  observations(b, other, 40, 5, id);
  ac_must_sync(other, srv->addr, b->token2, NULL);
  ASSERT_OK(fieldsync_close(other));

  offline_work(b, office);
  ASSERT_OK(fieldsync_close(office));
  ASSERT_EQ(server_stop(srv), 0);
  ac_restore(b->srvdb, b->base_srv);
  ac_restore(b->cli, b->base_cli);
  ac_restore(b->cli2, b->base_cli2);
  ac_integrity(b->base_srv, 0);
  ac_integrity(b->base_cli, 0);
}

/* ---- the sweep ----------------------------------------------------------- */

void ac_sweep_init(struct ac_sweep *s, const char *what, uint64_t total,
                   uint64_t points, uint64_t seed) {
  memset(s, 0, sizeof(*s));
  s->total = total;
  s->stride = 1;
  points *= test_scale();
  if (test_scale() < AC_FULL_SCALE && total > points) {
    s->edge = points / 8 > 0 ? points / 8 : 1;
    s->stride = (total + points - 1) / points;
    s->offset = seed % s->stride;
  }
  if (s->stride == 1)
    printf("# %s: every k of %" PRIu64 "\n", what, total);
  else
    printf("# %s: k = 1..%" PRIu64 ", %" PRIu64 "..%" PRIu64
           " and one in every %" PRIu64 " from %" PRIu64 " (of %" PRIu64
           "; FIELDSYNC_TEST_SCALE >= %d tries every k)\n",
           what, s->edge, total - s->edge + 1, total, s->stride, 1 + s->offset,
           total, AC_FULL_SCALE);
}

bool ac_sweep_pick(const struct ac_sweep *s, uint64_t k) {
  if (s->stride == 1 || k <= s->edge || k + s->edge > s->total)
    return true;
  return (k - 1) % s->stride == s->offset;
}
