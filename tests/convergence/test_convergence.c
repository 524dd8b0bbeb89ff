/* SPDX-License-Identifier: MIT */
/* Convergence (DESIGN.md section 2). Per seed, three or four fresh
 * replicas (one device each) make random creates, edits, deletes and
 * resolutions, mostly on a few hot records, with small value sets so that
 * edits often repeat content, and sync with a real fieldsyncd in random
 * order: in this process (sometimes one to five versions per batch),
 * through a proxy that cuts the connection after a random number of bytes,
 * in a forked child that is often SIGKILLed after 0-30 ms and sometimes
 * runs while the replica keeps writing through its own handle, and now and
 * then while the server is SIGKILLed and restarted. Then every replica
 * syncs, in random order, until a whole round pushes nothing and brings
 * nothing new (at most ten rounds), and the test checks every record of
 * the seed:
 *   - the server's current versions are exactly the maximal versions (by
 *     version vector) among all versions any replica wrote: no write is
 *     lost, every concurrent edit is there as a sibling until something
 *     that saw it resolves it, and nothing that was superseded survives;
 *   - every replica holds exactly those versions, shows the record the same
 *     way (display winner, flags, fields, authors) and has nothing pending;
 *     queries by visit agree;
 *   - every version a replica ever held as acknowledged ("pending": false
 *     after any sync, finished, cut or killed) is in the server's history
 *     and is current or dominated by a current version.
 * Before each server is retired (every SEEDS_PER_SERVER seeds), a new
 * replica pulls everything with small batches and its export must equal
 * the server's current rows.
 *
 * The network-fault mode (FIELDSYNC_CONV_NETFAULT=1; ctest's
 * convergence_netfault runs part 0 so) sends every sync of a seed's steps
 * through faultnet (tests/harness/faultnet.h) with random per-mille
 * probabilities of dropped, duplicated, delayed and reordered frames and
 * cut connections, both ways; a sync may then fail as network faults
 * explain. Then the faults stop, and the replicas must sync until quiet
 * and converge as above, with no upload queue left.
 *
 * A failure prints its seed and the steps; FIELDSYNC_SEED=N with the test
 * name one_seed replays seed N, with FIELDSYNC_CONV_NETFAULT=1 in the
 * network-fault mode (the choices repeat; the timing of kills, of writes
 * beside a sync and of network faults does not). FIELDSYNC_TEST_SCALE
 * multiplies the seed count (the convergence_long target),
 * FIELDSYNC_CONV_SEEDS sets the seeds per part, FIELDSYNC_CONV_VERBOSE=1
 * prints every step, FIELDSYNC_CONV_KEEP=1 keeps a failed part's
 * databases, and FIELDSYNC_TEST_TMPDIR says where they go. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "faultnet.h"
#include "fieldsync.h"
#include "harness.h"
#include "proc.h"

/* Replicas per seed at most; devices registered per server. */
#define MAXC 4
/* Seeds per part; a ctest run has four parts, each times the scale. */
#define SEEDS_PER_PART 50u
/* A fresh server database after this many seeds, so that the first pull
 * of each seed's new replicas (all earlier seeds' records) stays short. */
#define SEEDS_PER_SERVER 10u
/* Device tokens per server: a token is bound to the first replica that
 * uses it, and every seed makes new replicas, so each seed's replica ci
 * takes token seed_index * MAXC + ci; the observer takes the last. */
#define NTOKENS (SEEDS_PER_SERVER * MAXC + 1)
/* "Syncing until quiet" gives up after this many rounds. */
#define MAX_QUIET_ROUNDS 10
#define SYNC_TIMEOUT_MS 15000
/* Under network faults a sync waits this long for each frame, so that a
 * lost one costs little. */
#define NETFAULT_TIMEOUT_MS 500
/* Seeds of the network-fault mode at scale 1. */
#define NETFAULT_SEEDS 12u
/* The largest probability (per mille) of each fault kind in that mode. */
#define NETFAULT_MAX_PERMILLE 80u
#define CHILD_DEADLINE_MS 60000
#define HASH_HEX 64

static const char *fieldsyncd;
static const char *admin;

static const char *const visits[] = {"0190f0e0a0b0c0d0e0f0a1b2c3d4e5f6",
                                     "0190f0e0a0b0c0d0e0f0a1b2c3d4e5f7"};
static const char *const service = "0190f0e0a0b0c0d0e0f0a1b2c3d4e500";

/* ---- versions ---------------------------------------------------------- */

/* One version as the test sees it: content hash, version vector over the
 * seed's replicas (by index) and the tombstone flag. */
struct ver {
  char hash[HASH_HEX + 1];
  uint64_t vv[MAXC];
  bool deleted;
  int maker; /* the replica that wrote it, -1 if not known; not compared */
};

struct vlist {
  struct ver *v;
  size_t n;
  size_t cap;
};

static void vlist_add(struct vlist *l, const struct ver *v) {
  if (l->n == l->cap) {
    size_t cap = l->cap == 0 ? 8 : l->cap * 2;
    struct ver *nv = realloc(l->v, cap * sizeof(*nv));
    ASSERT(nv != NULL);
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n++] = *v;
}

static void vlist_free(struct vlist *l) {
  free(l->v);
  memset(l, 0, sizeof(*l));
}

static bool ver_eq(const struct ver *a, const struct ver *b) {
  return a->deleted == b->deleted && strcmp(a->hash, b->hash) == 0 &&
         memcmp(a->vv, b->vv, sizeof(a->vv)) == 0;
}

static bool vlist_has(const struct vlist *l, const struct ver *v) {
  size_t i;

  for (i = 0; i < l->n; i++)
    if (ver_eq(&l->v[i], v))
      return true;
  return false;
}

/* a <= b: b has seen everything a has. */
static bool vv_le(const uint64_t *a, const uint64_t *b) {
  int i;

  for (i = 0; i < MAXC; i++)
    if (a[i] > b[i])
      return false;
  return true;
}

/* a < b. */
static bool vv_lt(const uint64_t *a, const uint64_t *b) {
  return vv_le(a, b) && memcmp(a, b, MAXC * sizeof(*a)) != 0;
}

static void ver_format(const struct ver *v, char *buf, size_t cap) {
  snprintf(buf, cap, "%.12s%s {%llu,%llu,%llu,%llu}", v->hash,
           v->deleted ? " (tombstone)" : "", (unsigned long long)v->vv[0],
           (unsigned long long)v->vv[1], (unsigned long long)v->vv[2],
           (unsigned long long)v->vv[3]);
}

/* Same versions, in any order. */
static bool vlist_same(const struct vlist *a, const struct vlist *b) {
  size_t i;

  if (a->n != b->n)
    return false;
  for (i = 0; i < a->n; i++)
    if (!vlist_has(b, &a->v[i]))
      return false;
  for (i = 0; i < b->n; i++)
    if (!vlist_has(a, &b->v[i]))
      return false;
  return true;
}

/* ---- one seed's state -------------------------------------------------- */

struct rec {
  char id[33];
  bool obs;           /* observation, else requirement */
  struct vlist made;  /* every version any replica wrote */
  struct vlist acked; /* every version a replica held as acknowledged */
};

struct client {
  fieldsync_db *db;
  char path[300];
  char name[16];
  char replica[33];
  const char *token;
};

/* A server instance and the devices registered on it. */
struct server {
  struct test_server srv;
  char dir[240];
  char db[280];
  char tokens[NTOKENS][128];
  unsigned seeds; /* seeds run on this server so far */
  bool up;
};

struct run {
  uint64_t seed;
  uint64_t rng;
  struct server *s;
  int nc;
  struct client c[MAXC];
  struct rec *recs;
  size_t nrec;
  size_t cap;
  char dir[300];
  int step;
  char *log; /* the steps so far, printed on failure */
  size_t loglen;
  size_t logcap;
  /* counts for the summary */
  unsigned syncs;
  unsigned killed;
  unsigned bg_writes;
  unsigned crashes;
  unsigned resolutions;
  unsigned cuts;
  unsigned netfails; /* syncs that network faults made fail */
  bool beside;       /* a sync of the written replica runs in a child */
  /* The network-fault mode: the proxy every sync goes through, and
   * whether its faults are on. */
  struct faultnet *fn;
  bool faults_on;
  char refusal[512]; /* the last version the server refused, and why */
};

static bool verbose;

/* What a part did, for its summary line. */
static struct totals {
  unsigned long seeds;
  unsigned long records;
  unsigned long syncs;
  unsigned long killed;
  unsigned long bg_writes;
  unsigned long crashes;
  unsigned long cuts;
  unsigned long resolutions;
  unsigned long push_conflicts;
  unsigned long left_in_conflict;
  unsigned long netfails;
  struct faultnet_stats net; /* summed over the seeds */
} tot;

/* Switches that avoid known defects, to look past them (each has a
 * deterministic reproducer in test_convergence_repro.c):
 * FIELDSYNC_CONV_NO_WRITES_BESIDE=1 makes no local writes while a sync of
 * the same replica runs (ack_keeps_later_version), and
 * FIELDSYNC_CONV_NO_MOVES=1 never changes an observation's visit_id, its
 * scope (tombstone_after_move, resolve_keep_after_move). */
static bool no_writes_beside;
static bool no_moves;
/* The network-fault mode (FIELDSYNC_CONV_NETFAULT=1 for one_seed). */
static bool netfault;
/* FIELDSYNC_CONV_KEEP=1 keeps a failed part's databases. */
static bool keep_files;
static struct server *cleanup_server;
static char cleanup_dir[200];

static void rm_rf(const char *dir);

/* Kills the server and removes the part's files if the test ends early
 * (test_fail calls exit). Forked sync children leave with _exit, so they
 * never run this. */
static void cleanup_at_exit(void) {
  if (cleanup_server != NULL && cleanup_server->up)
    server_kill(&cleanup_server->srv);
  if (cleanup_dir[0] != '\0' && !keep_files)
    rm_rf(cleanup_dir);
}

/* The harness ends a test that runs too long with SIGALRM, and a user may
 * interrupt it: take the server down with it. */
static void on_signal(int sig) {
  if (cleanup_server != NULL && cleanup_server->up &&
      cleanup_server->srv.pid > 0)
    kill(cleanup_server->srv.pid, SIGKILL);
  signal(sig, SIG_DFL);
  raise(sig);
}

static void step_log(struct run *r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void step_log(struct run *r, const char *fmt, ...) {
  char line[512];
  size_t n;
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  n = strlen(line);
  if (verbose)
    printf("#   seed %llu step %d: %s\n", (unsigned long long)r->seed, r->step,
           line);
  if (r->loglen + n + 32 > r->logcap) {
    size_t cap = (r->logcap + n + 32) * 2;
    char *nl = realloc(r->log, cap);
    if (nl == NULL)
      return;
    r->log = nl;
    r->logcap = cap;
  }
  r->loglen += (size_t)snprintf(r->log + r->loglen, r->logcap - r->loglen,
                                "%4d %s\n", r->step, line);
}

static void run_fail(struct run *r, const char *file, int line, const char *fmt,
                     ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5), noreturn))
#endif
    ;

static void run_fail(struct run *r, const char *file, int line, const char *fmt,
                     ...) {
  char msg[4096];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  fflush(stdout);
  fprintf(stderr, "# --- seed %llu: the steps ---\n%s",
          (unsigned long long)r->seed, r->log != NULL ? r->log : "");
  fprintf(stderr,
          "# seed %llu failed at step %d (%s %s). Replay (with the same "
          "FIELDSYNC_CONV_* settings): %sFIELDSYNC_SEED=%llu "
          "test_convergence FIELDSYNCD ADMIN one_seed\n",
          (unsigned long long)r->seed, r->step,
          keep_files ? "files kept in" : "FIELDSYNC_CONV_KEEP=1 keeps", r->dir,
          netfault ? "FIELDSYNC_CONV_NETFAULT=1 " : "",
          (unsigned long long)r->seed);
  test_fail(file, line, "seed %llu: %s", (unsigned long long)r->seed, msg);
}

#define CHECK(r, cond, ...)                                                    \
  do {                                                                         \
    if (!(cond))                                                               \
      run_fail((r), __FILE__, __LINE__, __VA_ARGS__);                          \
  } while (0)

static uint64_t rnd(struct run *r, uint64_t n) {
  return test_rand_below(&r->rng, n);
}

static bool chance(struct run *r, unsigned percent) {
  return rnd(r, 100) < percent;
}

/* ---- reading a replica's records --------------------------------------- */

/* The index of a replica hex id among the seed's replicas, or -1. */
static int replica_index(const struct run *r, const char *hex) {
  int i;

  for (i = 0; i < r->nc; i++)
    if (strcmp(r->c[i].replica, hex) == 0)
      return i;
  return -1;
}

/* A record as one replica holds it. */
struct view {
  bool found;
  struct vlist v;   /* versions, in the replica's order (winner first) */
  bool pending[64]; /* per version, "pending" */
  char norm[8192];  /* JSON with versions sorted and "pending" dropped */
  bool conflict;
  bool deleted;
};

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Parses fieldsync_get_json output into v, checking its shape. */
static void parse_view(struct run *r, int ci, const char *rid, const char *json,
                       struct view *v) {
  json_error_t jerr;
  json_t *o = json_loads(json, 0, &jerr);
  json_t *arr;
  json_t *x;
  char *parts[64];
  size_t i;
  size_t n;
  size_t off = 0;
  bool all_deleted = true;

  CHECK(r, o != NULL, "%s: bad JSON for %s: %s", r->c[ci].name, rid, jerr.text);
  arr = json_object_get(o, "versions");
  CHECK(r, json_is_array(arr) && json_array_size(arr) > 0,
        "%s: record %s has no versions", r->c[ci].name, rid);
  n = json_array_size(arr);
  CHECK(r, n <= 64, "%s: record %s has %zu versions", r->c[ci].name, rid, n);
  v->conflict = json_is_true(json_object_get(o, "conflict"));
  v->deleted = json_is_true(json_object_get(o, "deleted"));
  json_array_foreach(arr, i, x) {
    struct ver nv;
    json_t *vv = json_object_get(x, "vv");
    json_t *h = json_object_get(x, "hash");
    const char *key;
    json_t *val;

    memset(&nv, 0, sizeof(nv));
    nv.maker = -1;
    CHECK(r, json_is_string(h) && strlen(json_string_value(h)) == HASH_HEX,
          "%s: record %s: bad hash", r->c[ci].name, rid);
    snprintf(nv.hash, sizeof(nv.hash), "%s", json_string_value(h));
    nv.deleted = json_is_true(json_object_get(x, "deleted"));
    if (!nv.deleted)
      all_deleted = false;
    CHECK(r, json_is_object(vv), "%s: record %s: no vv", r->c[ci].name, rid);
    json_object_foreach(vv, key, val) {
      int k = replica_index(r, key);
      CHECK(r, k >= 0 && json_is_integer(val) && json_integer_value(val) > 0,
            "%s: record %s: vv names an unknown replica %s", r->c[ci].name, rid,
            key);
      nv.vv[k] = (uint64_t)json_integer_value(val);
    }
    v->pending[i] = json_is_true(json_object_get(x, "pending"));
    vlist_add(&v->v, &nv);
    /* Per-replica state goes before the comparison. */
    json_object_del(x, "pending");
    parts[i] = json_dumps(x, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK(r, parts[i] != NULL, "out of memory");
  }
  CHECK(r, v->conflict == (n > 1),
        "%s: record %s: conflict flag %d with %zu versions", r->c[ci].name, rid,
        v->conflict, n);
  CHECK(r, v->deleted == all_deleted, "%s: record %s: deleted flag wrong",
        r->c[ci].name, rid);
  /* The winner's place is kept; siblings are compared as a set. */
  if (n > 2)
    qsort(parts + 1, n - 1, sizeof(parts[0]), cmp_str);
  off = (size_t)snprintf(v->norm, sizeof(v->norm), "%s|%s|%s|",
                         json_string_value(json_object_get(o, "collection")),
                         v->deleted ? "deleted" : "live",
                         v->conflict ? "conflict" : "single");
  for (i = 0; i < n; i++) {
    if (off < sizeof(v->norm))
      off += (size_t)snprintf(v->norm + off, sizeof(v->norm) - off, "%s;",
                              parts[i]);
    free(parts[i]);
  }
  CHECK(r, off < sizeof(v->norm), "record %s: JSON too long", rid);
  json_decref(o);
  v->found = true;
}

/* Reads record rec on client ci into v (v->found false if absent). */
static void get_view(struct run *r, int ci, const struct rec *rec,
                     struct view *v) {
  char *json = NULL;
  int rc;

  memset(v, 0, sizeof(*v));
  rc = fieldsync_get_json(r->c[ci].db, rec->id, &json);
  if (rc == FIELDSYNC_ENOTFOUND)
    return;
  CHECK(r, rc == 0, "%s: get_json %s: %s: %s", r->c[ci].name, rec->id,
        fieldsync_errname(rc), fieldsync_errmsg(r->c[ci].db));
  parse_view(r, ci, rec->id, json, v);
  fieldsync_free(json);
}

static void view_free(struct view *v) {
  vlist_free(&v->v);
}

/* Records the version a local write on client ci just made: the one with
 * the largest counter of ci (a sync running beside the write may have
 * added siblings already). */
static void note_made(struct run *r, int ci, struct rec *rec,
                      const char *what) {
  struct view v;
  size_t best = 0;
  size_t i;
  char buf[128];

  get_view(r, ci, rec, &v);
  CHECK(r, v.found, "%s: record %s vanished after %s", r->c[ci].name, rec->id,
        what);
  for (i = 1; i < v.v.n; i++)
    if (v.v.v[i].vv[ci] > v.v.v[best].vv[ci])
      best = i;
  for (i = 0; i < v.v.n; i++)
    CHECK(r, i == best || v.v.v[i].vv[ci] < v.v.v[best].vv[ci],
          "%s: after %s of %s two versions share counter %llu", r->c[ci].name,
          what, rec->id, (unsigned long long)v.v.v[best].vv[ci]);
  CHECK(r, !vlist_has(&rec->made, &v.v.v[best]),
        "%s: %s of %s made no new version", r->c[ci].name, what, rec->id);
  v.v.v[best].maker = ci;
  vlist_add(&rec->made, &v.v.v[best]);
  ver_format(&v.v.v[best], buf, sizeof(buf));
  step_log(r, "%s %s %s -> %s", r->c[ci].name, what, rec->id + 20, buf);
  view_free(&v);
}

/* ---- local writes ------------------------------------------------------ */

static const char *pick(struct run *r, const char *const *list, size_t n) {
  return list[rnd(r, n)];
}

#define PICK(r, a) pick((r), (a), sizeof(a) / sizeof((a)[0]))

/* Sets one random field of d (of an observation or a requirement) to a
 * value from a small set, so edits often repeat content. */
static void random_field(struct run *r, fieldsync_draft *d, bool obs,
                         char *what, size_t cap) {
  static const char *const judgement[] = {"1", "2", "3", "4"};
  static const char *const evidence[] = {"seen", "not seen", "partly seen"};
  static const char *const code[] = {"OP1", "OP9", "OP14"};
  static const char *const who[] = {"ann", "bo"};
  static const char *const refs[] = {"C1", "C2", "C3"};
  static const char *const text[] = {"fix the door", "train staff", "review"};
  static const char *const status[] = {"open", "met", "not_met_outstanding"};
  static const char *const reg[] = {"Reg 13(2)", "Reg 12"};
  const char *field;
  const char *value;
  int rc;

  if (obs) {
    switch (rnd(r, 7)) {
    case 0:
      field = "judgement";
      value = PICK(r, judgement);
      break;
    case 1:
      field = "evidence_text";
      value = PICK(r, evidence);
      break;
    case 2:
      field = "standard_code";
      value = PICK(r, code);
      break;
    case 3:
      field = "assessor";
      value = PICK(r, who);
      break;
    case 4:
      field = "case_refs";
      value = PICK(r, refs);
      break;
    case 5:
      field = "evidence_text";
      value = NULL; /* cleared */
      break;
    default:
      /* Rarely, the record moves to the other visit (its scope). */
      field = chance(r, 30) && !no_moves ? "visit_id" : "judgement";
      value = field[0] == 'v' ? PICK(r, visits) : PICK(r, judgement);
      break;
    }
  } else {
    switch (rnd(r, 3)) {
    case 0:
      field = "text";
      value = PICK(r, text);
      break;
    case 1:
      field = "status";
      value = PICK(r, status);
      break;
    default:
      field = "regulation";
      value = PICK(r, reg);
      break;
    }
  }
  rc = value != NULL ? fieldsync_draft_set(d, field, value)
                     : fieldsync_draft_clear(d, field);
  CHECK(r, rc == 0, "draft_set %s=%s: %s", field, value ? value : "(clear)",
        fieldsync_errname(rc));
  snprintf(what, cap, "%s=%s", field, value != NULL ? value : "(clear)");
}

static void op_create(struct run *r, int ci) {
  fieldsync_db *db = r->c[ci].db;
  fieldsync_draft *d = NULL;
  bool obs = chance(r, 70);
  struct rec *rec;
  char what[64];
  int rc;

  rc = fieldsync_draft_new(db, obs ? "observation" : "requirement", &d);
  CHECK(r, rc == 0, "draft_new: %s", fieldsync_errname(rc));
  if (obs) {
    ASSERT_OK(fieldsync_draft_set(d, "visit_id", PICK(r, visits)));
    ASSERT_OK(fieldsync_draft_set(d, "standard_code", "OP9"));
  } else {
    ASSERT_OK(fieldsync_draft_set(d, "service_id", service));
    ASSERT_OK(fieldsync_draft_set(d, "status", "open"));
  }
  random_field(r, d, obs, what, sizeof(what));
  if (r->nrec == r->cap) {
    size_t cap = r->cap == 0 ? 16 : r->cap * 2;
    struct rec *nr = realloc(r->recs, cap * sizeof(*nr));
    ASSERT(nr != NULL);
    r->recs = nr;
    r->cap = cap;
  }
  rec = &r->recs[r->nrec];
  memset(rec, 0, sizeof(*rec));
  rec->obs = obs;
  rc = fieldsync_create(db, d, rec->id);
  fieldsync_draft_free(d);
  CHECK(r, rc == 0, "%s: create: %s: %s", r->c[ci].name, fieldsync_errname(rc),
        fieldsync_errmsg(db));
  r->nrec++;
  note_made(r, ci, rec, obs ? "create observation" : "create requirement");
}

/* A record client ci holds, for an edit or a delete: most often one of the
 * first three it holds (the hot ones, where conflicts happen). */
static struct rec *pick_rec(struct run *r, int ci) {
  size_t have[512];
  size_t n = 0;
  size_t i;

  for (i = 0; i < r->nrec && n < 512; i++) {
    char *json = NULL;
    int rc = fieldsync_get_json(r->c[ci].db, r->recs[i].id, &json);
    if (rc == 0)
      have[n++] = i;
    fieldsync_free(json);
  }
  if (n == 0)
    return NULL;
  if (chance(r, 70))
    return &r->recs[have[rnd(r, n < 3 ? n : 3)]];
  return &r->recs[have[rnd(r, n)]];
}

static bool skippable(int rc) {
  return rc == FIELDSYNC_ENOTFOUND || rc == FIELDSYNC_EDELETED ||
         rc == FIELDSYNC_ECONFLICT;
}

static void op_edit(struct run *r, int ci) {
  fieldsync_db *db = r->c[ci].db;
  struct rec *rec = pick_rec(r, ci);
  fieldsync_draft *d = NULL;
  char what[80];
  int rc;

  if (rec == NULL)
    return;
  rc = fieldsync_draft_for_edit(db, rec->id, &d);
  if (skippable(rc)) {
    step_log(r, "%s edit %s skipped: %s", r->c[ci].name, rec->id + 20,
             fieldsync_errname(rc));
    return;
  }
  CHECK(r, rc == 0, "%s: draft_for_edit %s: %s: %s", r->c[ci].name, rec->id,
        fieldsync_errname(rc), fieldsync_errmsg(db));
  random_field(r, d, rec->obs, what, sizeof(what));
  rc = fieldsync_edit(db, d);
  fieldsync_draft_free(d);
  if (r->beside && (rc == FIELDSYNC_ECONFLICT || rc == FIELDSYNC_EDELETED)) {
    /* The sync running beside brought a sibling or a tombstone in. */
    step_log(r, "%s edit %s: %s (changed meanwhile)", r->c[ci].name,
             rec->id + 20, fieldsync_errname(rc));
    return;
  }
  CHECK(r, rc == 0, "%s: edit %s: %s: %s", r->c[ci].name, rec->id,
        fieldsync_errname(rc), fieldsync_errmsg(db));
  {
    char label[96];
    snprintf(label, sizeof(label), "edit %s", what);
    note_made(r, ci, rec, label);
  }
}

static void op_delete(struct run *r, int ci) {
  fieldsync_db *db = r->c[ci].db;
  struct rec *rec = pick_rec(r, ci);
  int rc;

  if (rec == NULL)
    return;
  rc = fieldsync_delete(db, rec->id);
  if (skippable(rc)) {
    step_log(r, "%s delete %s skipped: %s", r->c[ci].name, rec->id + 20,
             fieldsync_errname(rc));
    return;
  }
  CHECK(r, rc == 0, "%s: delete %s: %s: %s", r->c[ci].name, rec->id,
        fieldsync_errname(rc), fieldsync_errmsg(db));
  note_made(r, ci, rec, "delete");
}

/* Resolves one of the seed's conflicted records on client ci: keep a
 * sibling, write new content, or delete. */
static void op_resolve(struct run *r, int ci) {
  fieldsync_db *db = r->c[ci].db;
  size_t cand[256];
  size_t nc = 0;
  size_t i;
  struct rec *rec;
  struct view v;
  bool all_deleted;
  size_t k;
  size_t same = 0;
  char label[128];
  int rc;

  for (i = 0; i < r->nrec && nc < 256; i++) {
    get_view(r, ci, &r->recs[i], &v);
    if (v.found && v.conflict)
      cand[nc++] = i;
    view_free(&v);
  }
  if (nc == 0) {
    step_log(r, "%s resolve: no conflict", r->c[ci].name);
    return;
  }
  rec = &r->recs[cand[rnd(r, nc)]];
  get_view(r, ci, rec, &v);
  all_deleted = v.deleted;
  k = rnd(r, v.v.n);
  for (i = 0; i < v.v.n; i++)
    if (strcmp(v.v.v[i].hash, v.v.v[k].hash) == 0)
      same++;
  if (all_deleted || chance(r, 10)) {
    rc = fieldsync_delete(db, rec->id);
    snprintf(label, sizeof(label), "resolve by delete");
  } else if (same == 1 && chance(r, 50)) {
    char prefix[HASH_HEX + 1];
    /* A random length of prefix, at least 8 digits. */
    snprintf(prefix, sizeof(prefix), "%.*s", 8 + (int)rnd(r, HASH_HEX - 7),
             v.v.v[k].hash);
    rc = fieldsync_resolve_keep(db, rec->id, prefix);
    snprintf(label, sizeof(label), "resolve keep %s%s", prefix,
             v.v.v[k].deleted ? " (tombstone)" : "");
  } else {
    fieldsync_draft *d = NULL;
    char what[80];

    rc = fieldsync_draft_for_resolve(db, rec->id, &d);
    if (rc == 0) {
      random_field(r, d, rec->obs, what, sizeof(what));
      rc = fieldsync_resolve_with(db, rec->id, d);
      fieldsync_draft_free(d);
    }
    snprintf(label, sizeof(label), "resolve with %s",
             rc == 0 ? what : "new content");
  }
  view_free(&v);
  if (rc != 0 && r->beside &&
      (rc == FIELDSYNC_EINVAL || rc == FIELDSYNC_ENOTFOUND ||
       rc == FIELDSYNC_EDELETED || rc == FIELDSYNC_ECONFLICT)) {
    /* The sync running beside changed the record since we looked. */
    step_log(r, "%s %s %s: %s (changed meanwhile)", r->c[ci].name, label,
             rec->id + 20, fieldsync_errname(rc));
    return;
  }
  CHECK(r, rc == 0, "%s: %s %s: %s: %s", r->c[ci].name, label, rec->id,
        fieldsync_errname(rc), fieldsync_errmsg(db));
  note_made(r, ci, rec, label);
  r->resolutions++;
}

/* One random local write on client ci. */
static void op_write(struct run *r, int ci) {
  unsigned x = (unsigned)rnd(r, 100);

  if (x < 15 || r->nrec == 0)
    op_create(r, ci);
  else if (x < 70)
    op_edit(r, ci);
  else if (x < 80)
    op_delete(r, ci);
  else
    op_resolve(r, ci);
}

/* ---- syncs ------------------------------------------------------------- */

/* Opens client ci's database (creating it the first time). A reopen
 * beside a running sync child does not pass FIELDSYNC_OPEN_CREATE: with it,
 * fieldsync_open touches the file before it sets its busy timeout, and
 * fails at once while the child holds a lock (test
 * open_create_waits_for_lock). */
static void client_open(struct run *r, int ci, bool create) {
  int rc = fieldsync_open(r->c[ci].path, create ? FIELDSYNC_OPEN_CREATE : 0,
                          r->c[ci].name, &r->c[ci].db);

  CHECK(r, rc == 0, "%s: open %s: %s: %s", r->c[ci].name, r->c[ci].path,
        fieldsync_errname(rc), fieldsync_errmsg(r->c[ci].db));
}

static void client_close(struct run *r, int ci) {
  int rc = fieldsync_close(r->c[ci].db);

  r->c[ci].db = NULL;
  CHECK(r, rc == 0, "%s: close: %s", r->c[ci].name, fieldsync_errname(rc));
}

/* After any sync of client ci (finished, failed or killed): every version
 * it holds as acknowledged (pending false) must be on the server, so it
 * joins the acknowledged set checked at the end; its versions of each
 * record are maximal ones; and it still holds, or has superseded, every
 * version it wrote. With all_acked, the sync succeeded and nothing may
 * still be pending. */
static void check_after_sync(struct run *r, int ci, bool all_acked) {
  size_t i;
  size_t j;
  size_t k;

  for (i = 0; i < r->nrec; i++) {
    struct rec *rec = &r->recs[i];
    struct view v;
    char buf[128];

    get_view(r, ci, rec, &v);
    for (j = 0; j < v.v.n; j++) {
      ver_format(&v.v.v[j], buf, sizeof(buf));
      CHECK(r, !all_acked || !v.pending[j],
            "%s: version %s of %s still pending after a good sync",
            r->c[ci].name, buf, rec->id);
      if (!v.pending[j] && !vlist_has(&rec->acked, &v.v.v[j]))
        vlist_add(&rec->acked, &v.v.v[j]);
      /* The merge keeps only maximal versions. */
      for (k = 0; k < v.v.n; k++)
        CHECK(r,
              k == j ||
                  (!vv_lt(v.v.v[j].vv, v.v.v[k].vv) &&
                   memcmp(v.v.v[j].vv, v.v.v[k].vv, sizeof(v.v.v[j].vv)) != 0),
              "%s: record %s keeps version %s beside one that supersedes "
              "or equals it",
              r->c[ci].name, rec->id, buf);
    }
    /* A replica never loses its own writes: each is held, or superseded
     * by a version it holds. */
    for (j = 0; j < rec->made.n; j++) {
      bool covered = false;
      if (rec->made.v[j].maker != ci)
        continue;
      for (k = 0; k < v.v.n && !covered; k++)
        covered = vv_le(rec->made.v[j].vv, v.v.v[k].vv);
      ver_format(&rec->made.v[j], buf, sizeof(buf));
      CHECK(r, covered,
            "%s: lost its own version %s of record %s: it holds neither it "
            "nor a version that supersedes it",
            r->c[ci].name, buf, rec->id);
    }
    view_free(&v);
  }
}

/* Keeps the reason of the last refusal for the failure message. */
static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  struct run *r = data;

  if (strcmp(outcome, "refused") == 0) {
    step_log(r, "  refused: %s %s: %s", collection, id + 20,
             reason != NULL ? reason : "?");
    snprintf(r->refusal, sizeof(r->refusal), "%s %s: %s", collection, id,
             reason != NULL ? reason : "?");
  }
}

/* Where syncs go: the proxy in the network-fault mode, else the server. */
static const char *sync_addr(const struct run *r) {
  return r->fn != NULL ? r->fn->addr : r->s->srv.addr;
}

/* Each network wait of a sync: short while the faults are on. */
static int sync_timeout(const struct run *r) {
  return r->faults_on ? NETFAULT_TIMEOUT_MS : SYNC_TIMEOUT_MS;
}

/* Syncs client ci in this process; it must succeed, unless network faults
 * are on and explain its failure. Returns versions pushed plus versions
 * new here (0 after a failure). */
static size_t sync_now(struct run *r, int ci, unsigned batch) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  int rc;

  memset(&o, 0, sizeof(o));
  o.outcome = on_outcome;
  o.outcome_data = r;
  o.server = sync_addr(r);
  o.token = r->c[ci].token;
  o.plaintext = 1;
  o.timeout_ms = sync_timeout(r);
  o.batch = batch;
  rc = fieldsync_sync(r->c[ci].db, &o, &st);
  if (rc != 0 && r->faults_on) {
    CHECK(r, faultnet_failure(rc, fieldsync_errmsg(r->c[ci].db)) >= 0,
          "%s: sync (batch %u) under network faults: %s: %s", r->c[ci].name,
          batch, fieldsync_errname(rc), fieldsync_errmsg(r->c[ci].db));
    CHECK(r, st.refused == 0, "%s: sync refused %zu (%s)", r->c[ci].name,
          st.refused, r->refusal);
    step_log(r,
             "%s sync batch %u under network faults: %s: %s (pushed %zu, "
             "acked %zu, pulled %zu)",
             r->c[ci].name, batch, fieldsync_errname(rc),
             fieldsync_errmsg(r->c[ci].db), st.pushed, st.acked, st.pulled);
    r->syncs++;
    r->netfails++;
    check_after_sync(r, ci, false);
    return 0;
  }
  CHECK(r, rc == 0, "%s: sync (batch %u): %s: %s", r->c[ci].name, batch,
        fieldsync_errname(rc), fieldsync_errmsg(r->c[ci].db));
  CHECK(r, st.refused == 0 && st.acked == st.pushed,
        "%s: sync refused %zu of %zu (%s)", r->c[ci].name, st.refused,
        st.pushed, r->refusal);
  tot.push_conflicts += st.conflicts;
  step_log(
      r, "%s sync batch %u: pushed %zu (conflict %zu) pulled %zu applied %zu",
      r->c[ci].name, batch, st.pushed, st.conflicts, st.pulled, st.applied);
  r->syncs++;
  check_after_sync(r, ci, true);
  return st.pushed + st.applied;
}

/* A sync in this process through a proxy (faultnet, one session) that
 * cuts the connection after a random number of bytes in a random
 * direction: the sync fails with a network error (or, when the cut comes
 * too late, succeeds), and the replica must lose and duplicate nothing. */
static void op_sync_cut(struct run *r, int ci) {
  struct fieldsync_sync_opts o;
  struct fieldsync_sync_stats st;
  struct faultnet_stats fst;
  struct faultnet rl;
  int rc;

  memset(&rl, 0, sizeof(rl));
  rl.server_port = r->s->srv.port;
  rl.seed = r->seed;
  rl.max_sessions = 1;
  rl.deadline_ms = 30000;
  rl.cut_dir = chance(r, 50) ? FAULTNET_UP : FAULTNET_DOWN;
  rl.cut_after = 1 + (size_t)rnd(r, chance(r, 70) ? 300 : 1500);
  faultnet_start(&rl);
  memset(&o, 0, sizeof(o));
  o.server = rl.addr;
  o.token = r->c[ci].token;
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.batch = chance(r, 50) ? 1 + (unsigned)rnd(r, 5) : 0;
  o.outcome = on_outcome;
  o.outcome_data = r;
  rc = fieldsync_sync(r->c[ci].db, &o, &st);
  faultnet_join(&rl);
  faultnet_stats(&rl, &fst);
  r->syncs++;
  step_log(r,
           "%s sync batch %u cut after %zu bytes %s: %s%s%s (pushed %zu, "
           "acked %zu, pulled %zu)",
           r->c[ci].name, o.batch, rl.cut_after,
           rl.cut_dir == FAULTNET_UP ? "up" : "down",
           rc == 0 ? "ok" : fieldsync_errname(rc), rc == 0 ? "" : ": ",
           rc == 0 ? "" : fieldsync_errmsg(r->c[ci].db), st.pushed, st.acked,
           st.pulled);
  if (rc != 0)
    r->cuts++;
  CHECK(r, rc == 0 || (fst.cut && rc == FIELDSYNC_ENETWORK),
        "%s: sync through a proxy (cut %d after %zu bytes %s): %s: %s",
        r->c[ci].name, fst.cut, rl.cut_after,
        rl.cut_dir == FAULTNET_UP ? "up" : "down", fieldsync_errname(rc),
        fieldsync_errmsg(r->c[ci].db));
  CHECK(r, st.refused == 0, "%s: sync refused %zu (%s)", r->c[ci].name,
        st.refused, r->refusal);
  check_after_sync(r, ci, rc == 0);
}

/* A sync in a forked child: it opens its own handle, syncs and leaves with
 * _exit (0 on success). The parent's handle is closed across the fork so
 * the child inherits no SQLite state for that file. */
static pid_t sync_child(struct run *r, int ci, unsigned batch) {
  pid_t pid;

  r->syncs++;
  client_close(r, ci);
  fflush(stdout);
  fflush(stderr);
  /* The proxy's thread must hold no lock (malloc's) across the fork. */
  if (r->fn != NULL)
    faultnet_pause(r->fn);
  pid = fork();
  if (pid != 0 && r->fn != NULL)
    faultnet_resume(r->fn);
  CHECK(r, pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    struct fieldsync_sync_opts o;
    fieldsync_db *db = NULL;
    int rc;

    memset(&o, 0, sizeof(o));
    o.server = sync_addr(r);
    o.token = r->c[ci].token;
    o.plaintext = 1;
    o.timeout_ms = sync_timeout(r);
    o.batch = batch;
    rc = fieldsync_open(r->c[ci].path, 0, NULL, &db);
    if (rc == 0)
      rc = fieldsync_sync(db, &o, NULL);
    if (rc != 0 && verbose)
      fprintf(stderr, "#   child sync: %s\n", fieldsync_errmsg(db));
    fieldsync_close(db);
    _exit(rc == 0 ? 0 : 10 + (-rc));
  }
  client_open(r, ci, false);
  return pid;
}

static void sleep_ms(long ms) {
  struct timespec ts;

  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Waits for a sync child (at most CHILD_DEADLINE_MS); returns its exit
 * status, or 128 + signal. */
static int child_wait(struct run *r, pid_t pid) {
  long long deadline = proc_now_ms() + CHILD_DEADLINE_MS;
  int status = 0;

  for (;;) {
    pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid)
      break;
    CHECK(r, w == 0 || errno == EINTR, "waitpid: %s", strerror(errno));
    if (proc_now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      run_fail(r, __FILE__, __LINE__, "sync child did not end within %d ms",
               CHILD_DEADLINE_MS);
    }
    sleep_ms(1);
  }
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* A sync of client ci in a child, maybe with local writes beside it, maybe
 * killed after a short random delay. */
static void op_sync_child(struct run *r, int ci) {
  unsigned batch = chance(r, 50) ? 1 + (unsigned)rnd(r, 5) : 0;
  bool writes = chance(r, 50) && !no_writes_beside;
  bool kill_it = chance(r, 65);
  long delay = (long)rnd(r, 31);
  long long t0;
  pid_t pid;
  int nw = 0;
  int status;

  t0 = proc_now_ms();
  pid = sync_child(r, ci, batch);
  if (writes) {
    int k;
    nw = 1 + (int)rnd(r, 3);
    r->beside = true;
    for (k = 0; k < nw; k++) {
      /* Spread the writes over the child's session (it takes a few ms
       * to start), so some land between its reading what to push and
       * its storing the server's answer. */
      sleep_ms((long)rnd(r, 12));
      op_write(r, ci);
    }
    r->beside = false;
    r->bg_writes++;
  }
  if (kill_it) {
    long long left = t0 + delay - proc_now_ms();
    if (left > 0)
      sleep_ms((long)left);
    kill(pid, SIGKILL);
  }
  status = child_wait(r, pid);
  if (status == 128 + SIGKILL)
    r->killed++;
  step_log(r,
           "%s child sync batch %u, %d writes beside it, %s %ldms: status %d",
           r->c[ci].name, batch, nw, kill_it ? "kill after" : "no kill",
           kill_it ? delay : 0L, status);
  /* Under network faults the child may fail as faults explain (it exits
   * 10 + -code; its message stays in the child). */
  CHECK(r,
        kill_it || status == 0 ||
            (r->faults_on && status >= 10 && status < 128 &&
             faultnet_failure(-(status - 10), NULL) >= 0),
        "%s: sync in a child failed with status %d (FIELDSYNC error %d)",
        r->c[ci].name, status,
        status >= 10 && status < 128 ? -(status - 10) : 0);
  if (!kill_it && status != 0)
    r->netfails++;
  check_after_sync(r, ci, false);
}

/* SIGKILLs the server while client ci syncs in a child, then restarts it
 * on the same database: what it acknowledged must have survived. */
static void op_server_crash(struct run *r, int ci) {
  long delay = (long)rnd(r, 31);
  pid_t pid = sync_child(r, ci, chance(r, 50) ? 1 + (unsigned)rnd(r, 3) : 0);
  int status;

  sleep_ms(delay);
  server_kill(&r->s->srv);
  r->s->up = false;
  status = child_wait(r, pid);
  server_start(&r->s->srv, fieldsyncd, r->s->db, NULL);
  r->s->up = true;
  if (r->fn != NULL)
    faultnet_set_server_port(r->fn, r->s->srv.port);
  r->crashes++;
  step_log(r,
           "server killed %ldms into a sync of %s (child status %d); "
           "restarted on %s",
           delay, r->c[ci].name, status, r->s->srv.addr);
  check_after_sync(r, ci, false);
}

/* ---- the final checks -------------------------------------------------- */

/* Decodes a stored vector (entries of 16-byte replica + big-endian u64). */
static void decode_vv(struct run *r, const char *rid, const uint8_t *p, int len,
                      uint64_t vv[MAXC]) {
  int i;

  memset(vv, 0, MAXC * sizeof(*vv));
  CHECK(r, len >= 0 && len % 24 == 0, "server vv of %s: %d bytes", rid, len);
  for (i = 0; i < len; i += 24) {
    char hex[33];
    uint64_t c = 0;
    int k;

    for (k = 0; k < 16; k++)
      snprintf(hex + 2 * k, 3, "%02x", p[i + k]);
    for (k = 0; k < 8; k++)
      c = c << 8 | p[i + 16 + k];
    k = replica_index(r, hex);
    CHECK(r, k >= 0, "server vv of %s names an unknown replica %s", rid, hex);
    vv[k] = c;
  }
}

static void hex_to_bytes(const char *hex, uint8_t *out, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    unsigned v = 0;
    sscanf(hex + 2 * i, "%2x", &v);
    out[i] = (uint8_t)v;
  }
}

/* The server's current versions of rec, read from its database. */
static void server_current(struct run *r, sqlite3 *sdb, const struct rec *rec,
                           struct vlist *out) {
  sqlite3_stmt *st = NULL;
  uint8_t id[16];
  int rc;

  hex_to_bytes(rec->id, id, 16);
  rc = sqlite3_prepare_v2(sdb,
                          "SELECT lower(hex(hash)), vv, deleted FROM versions "
                          "WHERE record = ?1 AND current = 1",
                          -1, &st, NULL);
  CHECK(r, rc == SQLITE_OK, "server db: %s", sqlite3_errmsg(sdb));
  sqlite3_bind_blob(st, 1, id, 16, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    struct ver v;
    memset(&v, 0, sizeof(v));
    v.maker = -1;
    snprintf(v.hash, sizeof(v.hash), "%s",
             (const char *)sqlite3_column_text(st, 0));
    decode_vv(r, rec->id, sqlite3_column_blob(st, 1),
              sqlite3_column_bytes(st, 1), v.vv);
    v.deleted = sqlite3_column_int(st, 2) != 0;
    vlist_add(out, &v);
  }
  CHECK(r, rc == SQLITE_DONE, "server db: %s", sqlite3_errmsg(sdb));
  sqlite3_finalize(st);
}

/* Whether the server's history holds exactly this version. */
static bool server_has(struct run *r, sqlite3 *sdb, const struct rec *rec,
                       const struct ver *v) {
  struct vlist all;
  sqlite3_stmt *st = NULL;
  uint8_t id[16];
  uint8_t hash[32];
  bool found = false;
  int rc;

  memset(&all, 0, sizeof(all));
  hex_to_bytes(rec->id, id, 16);
  hex_to_bytes(v->hash, hash, 32);
  rc = sqlite3_prepare_v2(sdb,
                          "SELECT vv, deleted FROM versions "
                          "WHERE record = ?1 AND hash = ?2",
                          -1, &st, NULL);
  CHECK(r, rc == SQLITE_OK, "server db: %s", sqlite3_errmsg(sdb));
  sqlite3_bind_blob(st, 1, id, 16, SQLITE_STATIC);
  sqlite3_bind_blob(st, 2, hash, 32, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    uint64_t vv[MAXC];
    decode_vv(r, rec->id, sqlite3_column_blob(st, 0),
              sqlite3_column_bytes(st, 0), vv);
    if (memcmp(vv, v->vv, sizeof(vv)) == 0 &&
        (sqlite3_column_int(st, 1) != 0) == v->deleted)
      found = true;
  }
  CHECK(r, rc == SQLITE_DONE, "server db: %s", sqlite3_errmsg(sdb));
  sqlite3_finalize(st);
  return found;
}

static void describe(const struct vlist *l, char *buf, size_t cap) {
  size_t i;
  size_t off = 0;

  buf[0] = '\0';
  for (i = 0; i < l->n && off + 1 < cap; i++) {
    char one[128];
    ver_format(&l->v[i], one, sizeof(one));
    off += (size_t)snprintf(buf + off, cap - off, "%s[%s]", i ? " " : "", one);
  }
}

/* For each version of want missing from have: which replicas hold it,
 * whether as pending, and whether the server's history has it. */
static void explain_missing(struct run *r, const struct rec *rec,
                            const struct vlist *want, const struct vlist *have,
                            char *out, size_t cap) {
  size_t off = 0;
  size_t i;

  out[0] = '\0';
  for (i = 0; i < want->n && off < cap; i++) {
    char one[128];
    int ci;

    if (vlist_has(have, &want->v[i]))
      continue;
    ver_format(&want->v[i], one, sizeof(one));
    off += (size_t)snprintf(out + off, cap - off, "\n  missing %s:%s", one,
                            vlist_has(&rec->acked, &want->v[i])
                                ? " a replica marked it acknowledged;"
                                : "");
    for (ci = 0; ci < r->nc && off < cap; ci++) {
      struct view v;
      size_t j;
      get_view(r, ci, rec, &v);
      for (j = 0; j < v.v.n && off < cap; j++)
        if (ver_eq(&v.v.v[j], &want->v[i]))
          off += (size_t)snprintf(
              out + off, cap - off, " %s holds it%s;", r->c[ci].name,
              v.pending[j] ? " (pending)" : " (not pending)");
      view_free(&v);
    }
  }
}

/* The ids of the seed's live records in visit vi, as client ci's query
 * gives them, joined. */
struct ids {
  const struct run *r;
  char buf[4096];
};

static int collect_id(const char *json, void *data) {
  struct ids *x = data;
  json_t *o = json_loads(json, 0, NULL);
  const char *id =
      o != NULL ? json_string_value(json_object_get(o, "id")) : NULL;
  size_t i;

  for (i = 0; id != NULL && i < x->r->nrec; i++) {
    if (strcmp(x->r->recs[i].id, id) == 0) {
      size_t len = strlen(x->buf);
      snprintf(x->buf + len, sizeof(x->buf) - len, "%s,", id + 20);
      break;
    }
  }
  json_decref(o);
  return 0;
}

static void visit_ids(struct run *r, int ci, int vi, char *out, size_t cap) {
  struct fieldsync_query q;
  struct ids x;
  int rc;

  memset(&q, 0, sizeof(q));
  q.collection = "observation";
  q.visit_id = visits[vi];
  x.r = r;
  x.buf[0] = '\0';
  rc = fieldsync_query(r->c[ci].db, &q, collect_id, &x);
  CHECK(r, rc == 0, "%s: query: %s", r->c[ci].name, fieldsync_errname(rc));
  snprintf(out, cap, "%s", x.buf);
}

/* Every replica, the server and the oracle agree on every record. */
static void check_converged(struct run *r) {
  static char buf1[4096];
  static char buf2[4096];
  sqlite3 *sdb = NULL;
  size_t i;
  size_t j;
  int ci;
  int rc;

  rc = sqlite3_open_v2(r->s->db, &sdb, SQLITE_OPEN_READONLY, NULL);
  CHECK(r, rc == SQLITE_OK, "open server db %s: %s", r->s->db,
        sqlite3_errmsg(sdb));
  sqlite3_busy_timeout(sdb, 5000);
  for (i = 0; i < r->nrec; i++) {
    struct rec *rec = &r->recs[i];
    struct vlist want;
    struct vlist srv;
    struct view v0;

    memset(&want, 0, sizeof(want));
    memset(&srv, 0, sizeof(srv));
    /* The oracle: the maximal versions among all that were made. */
    for (j = 0; j < rec->made.n; j++) {
      size_t k;
      bool dominated = false;
      for (k = 0; k < rec->made.n && !dominated; k++)
        dominated = vv_lt(rec->made.v[j].vv, rec->made.v[k].vv);
      if (!dominated)
        vlist_add(&want, &rec->made.v[j]);
    }
    server_current(r, sdb, rec, &srv);
    if (want.n > 1)
      tot.left_in_conflict++;
    if (!vlist_same(&srv, &want)) {
      char where[1024];
      describe(&want, buf1, sizeof(buf1));
      describe(&srv, buf2, sizeof(buf2));
      explain_missing(r, rec, &want, &srv, where, sizeof(where));
      run_fail(r, __FILE__, __LINE__,
               "record %s: server's current versions differ from the "
               "maximal versions made.\n  made (maximal): %s\n  server: %s"
               "%s",
               rec->id, buf1, buf2, where);
    }
    get_view(r, 0, rec, &v0);
    for (ci = 0; ci < r->nc; ci++) {
      struct view v;
      get_view(r, ci, rec, &v);
      CHECK(r, v.found, "%s lacks record %s", r->c[ci].name, rec->id);
      for (j = 0; j < v.v.n; j++)
        CHECK(r, !v.pending[j], "%s: record %s still pending when quiet",
              r->c[ci].name, rec->id);
      if (!vlist_same(&v.v, &want)) {
        describe(&want, buf1, sizeof(buf1));
        describe(&v.v, buf2, sizeof(buf2));
        run_fail(r, __FILE__, __LINE__,
                 "record %s: %s's versions differ from the server's.\n"
                 "  server: %s\n  %s: %s",
                 rec->id, r->c[ci].name, buf1, r->c[ci].name, buf2);
      }
      if (strcmp(v.norm, v0.norm) != 0)
        run_fail(r, __FILE__, __LINE__,
                 "record %s: %s and %s show it differently:\n  %s\n  %s",
                 rec->id, r->c[0].name, r->c[ci].name, v0.norm, v.norm);
      view_free(&v);
    }
    view_free(&v0);
    /* Every acknowledged version is in the history, and is current or
     * dominated by a current one. */
    for (j = 0; j < rec->acked.n; j++) {
      const struct ver *a = &rec->acked.v[j];
      size_t k;
      bool covered = false;
      ver_format(a, buf1, sizeof(buf1));
      CHECK(r, server_has(r, sdb, rec, a),
            "record %s: version %s was acknowledged to a replica but is not "
            "in the server's history",
            rec->id, buf1);
      for (k = 0; k < srv.n && !covered; k++)
        covered = vv_le(a->vv, srv.v[k].vv);
      CHECK(r, covered,
            "record %s: acknowledged version %s is neither current nor "
            "dominated by a current version",
            rec->id, buf1);
    }
    vlist_free(&want);
    vlist_free(&srv);
  }
  sqlite3_close(sdb);
  /* Queries by visit (the display winner's scope) agree too. */
  for (i = 0; i < 2; i++) {
    visit_ids(r, 0, (int)i, buf1, sizeof(buf1));
    for (ci = 1; ci < r->nc; ci++) {
      visit_ids(r, ci, (int)i, buf2, sizeof(buf2));
      CHECK(r, strcmp(buf1, buf2) == 0, "visit %zu lists %s on %s but %s on %s",
            i, buf1, r->c[0].name, buf2, r->c[ci].name);
    }
  }
}

/* ---- servers ----------------------------------------------------------- */

/* Where the databases go: $FIELDSYNC_TEST_TMPDIR, else /dev/shm when it
 * is there, else $TMPDIR or /tmp. The test is about the merge and the
 * protocol, and a killed process loses no page cache, so a RAM disk loses
 * nothing it checks; fsync on a real disk made the run four times slower. */
static const char *tmp_base(void) {
  const char *t = getenv("FIELDSYNC_TEST_TMPDIR");
  struct stat sb;

  if (t != NULL && t[0] != '\0')
    return t;
  if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) &&
      access("/dev/shm", W_OK | X_OK) == 0)
    return "/dev/shm";
  t = getenv("TMPDIR");
  return t != NULL && t[0] != '\0' ? t : "/tmp";
}

/* The part's directory and a template server database holding one user
 * and MAXC devices (fieldsync-admin is slow to start under ASan, so it
 * runs once per part and each server starts from a copy). */
struct part {
  char dir[200];
  char tmpl[260];
  char tokens[NTOKENS][128];
  unsigned servers;
};

static void part_init(struct part *p) {
  char out[256];
  int i;

  memset(p, 0, sizeof(*p));
  snprintf(p->dir, sizeof(p->dir), "%s/fs-conv-XXXXXX", tmp_base());
  if (mkdtemp(p->dir) == NULL)
    test_fail(__FILE__, __LINE__, "mkdtemp %s: %s", p->dir, strerror(errno));
  snprintf(p->tmpl, sizeof(p->tmpl), "%s/template.db", p->dir);
  /* A head office user: every replica sees every record, so all must
   * converge to the same state (scoped devices: integration_scope). */
  {
    const char *a[] = {"user", "add", "lead", "--role", "head_office", NULL};
    proc_admin_run(admin, p->tmpl, a, out, sizeof(out));
  }
  for (i = 0; i < (int)NTOKENS; i++) {
    const char *a[] = {"device", "add", "lead", NULL};
    proc_admin_run(admin, p->tmpl, a, out, sizeof(out));
    ASSERT(sscanf(out, "%127s", p->tokens[i]) == 1);
  }
}

static void copy_file(const char *from, const char *to) {
  FILE *in = fopen(from, "rb");
  FILE *out = fopen(to, "wb");
  char buf[8192];
  size_t n;

  if (in == NULL || out == NULL)
    test_fail(__FILE__, __LINE__, "copy %s to %s: %s", from, to,
              strerror(errno));
  while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
    ASSERT_EQ(fwrite(buf, 1, n, out), n);
  ASSERT(!ferror(in));
  fclose(in);
  ASSERT_OK(fclose(out));
}

/* A fresh server database (a copy of the template) and fieldsyncd on it. */
static void server_up(struct server *s, struct part *p) {
  int i;

  memset(s, 0, sizeof(*s));
  snprintf(s->dir, sizeof(s->dir), "%s/srv%u", p->dir, p->servers++);
  if (mkdir(s->dir, 0700) != 0)
    test_fail(__FILE__, __LINE__, "mkdir %s: %s", s->dir, strerror(errno));
  snprintf(s->db, sizeof(s->db), "%s/server.db", s->dir);
  copy_file(p->tmpl, s->db);
  for (i = 0; i < (int)NTOKENS; i++)
    snprintf(s->tokens[i], sizeof(s->tokens[i]), "%s", p->tokens[i]);
  s->seeds = 0;
  cleanup_server = s;
  server_start(&s->srv, fieldsyncd, s->db, NULL);
  s->up = true;
}

static void rm_rf(const char *dir) {
  char *a[] = {"/bin/rm", "-rf", (char *)dir, NULL};

  if (proc_run(a, NULL, 0, NULL, 0, 30000) != 0)
    fprintf(stderr, "# could not remove %s\n", dir);
}

struct buf {
  char *p;
  size_t n;
  size_t cap;
};

static int buf_write(const char *s, size_t n, void *data) {
  struct buf *b = data;

  if (b->n + n + 1 > b->cap) {
    size_t cap = (b->n + n + 1) * 2;
    char *np = realloc(b->p, cap);
    if (np == NULL)
      return 1;
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
  b->p[b->n] = '\0';
  return 0;
}

/* Canonical line of one version: "id hash vv deleted", vv as sorted
 * "replica:counter" pairs. */
static int cmp_line(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

struct lines {
  char **v;
  size_t n;
  size_t cap;
};

static void lines_add(struct lines *l, const char *s) {
  if (l->n == l->cap) {
    size_t cap = l->cap == 0 ? 256 : l->cap * 2;
    char **nv = realloc(l->v, cap * sizeof(*nv));
    ASSERT(nv != NULL);
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n] = strdup(s);
  ASSERT(l->v[l->n] != NULL);
  l->n++;
}

static void lines_free(struct lines *l) {
  size_t i;

  for (i = 0; i < l->n; i++)
    free(l->v[i]);
  free(l->v);
}

/* Before a server is retired: a brand-new replica pulls everything (with
 * small batches), and its whole export must match the server's current
 * rows exactly, for every seed's records. */
static void check_whole_server(struct server *s, uint64_t seed) {
  char path[300];
  fieldsync_db *db = NULL;
  struct fieldsync_sync_opts o;
  struct buf b = {NULL, 0, 0};
  struct lines fromdb = {NULL, 0, 0};
  struct lines fromsrv = {NULL, 0, 0};
  json_t *arr;
  json_t *rec;
  sqlite3 *sdb = NULL;
  sqlite3_stmt *st = NULL;
  size_t i;
  int rc;

  snprintf(path, sizeof(path), "%s/observer.db", s->dir);
  ASSERT_OK(fieldsync_open(path, FIELDSYNC_OPEN_CREATE, "observer", &db));
  memset(&o, 0, sizeof(o));
  o.server = s->srv.addr;
  o.token = s->tokens[NTOKENS - 1];
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.batch = 1 + (unsigned)(seed % 97);
  rc = fieldsync_sync(db, &o, NULL);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "observer sync: %s", fieldsync_errmsg(db));
  ASSERT_OK(fieldsync_export(db, NULL, FIELDSYNC_FORMAT_JSON, buf_write, &b));
  arr = json_loads(b.p, 0, NULL);
  ASSERT(json_is_array(arr));
  json_array_foreach(arr, i, rec) {
    const char *id = json_string_value(json_object_get(rec, "id"));
    json_t *vs = json_object_get(rec, "versions");
    json_t *v;
    size_t k;
    json_array_foreach(vs, k, v) {
      json_t *vv = json_object_get(v, "vv");
      const char *keys[MAXC * 4];
      size_t nk = 0;
      const char *key;
      json_t *val;
      char line[1024];
      size_t off;
      size_t m;
      json_object_foreach(vv, key, val) {
        ASSERT(nk < MAXC * 4);
        keys[nk++] = key;
      }
      qsort(keys, nk, sizeof(keys[0]), cmp_line);
      off = (size_t)snprintf(line, sizeof(line), "%s %s %d ", id,
                             json_string_value(json_object_get(v, "hash")),
                             json_is_true(json_object_get(v, "deleted")));
      for (m = 0; m < nk && off < sizeof(line); m++)
        off += (size_t)snprintf(
            line + off, sizeof(line) - off, "%s:%lld,", keys[m],
            (long long)json_integer_value(json_object_get(vv, keys[m])));
      lines_add(&fromdb, line);
    }
  }
  json_decref(arr);
  free(b.p);
  ASSERT_OK(fieldsync_close(db));

  ASSERT_EQ(sqlite3_open_v2(s->db, &sdb, SQLITE_OPEN_READONLY, NULL),
            SQLITE_OK);
  sqlite3_busy_timeout(sdb, 5000);
  ASSERT_EQ(sqlite3_prepare_v2(sdb,
                               "SELECT lower(hex(record)), lower(hex(hash)), "
                               "deleted, vv FROM versions WHERE current = 1",
                               -1, &st, NULL),
            SQLITE_OK);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    char line[1024];
    const uint8_t *p = sqlite3_column_blob(st, 3);
    int len = sqlite3_column_bytes(st, 3);
    size_t off;
    int e;
    off = (size_t)snprintf(line, sizeof(line), "%s %s %d ",
                           (const char *)sqlite3_column_text(st, 0),
                           (const char *)sqlite3_column_text(st, 1),
                           sqlite3_column_int(st, 2) != 0);
    for (e = 0; e + 24 <= len && off < sizeof(line); e += 24) {
      uint64_t c = 0;
      int k;
      for (k = 0; k < 16; k++)
        off +=
            (size_t)snprintf(line + off, sizeof(line) - off, "%02x", p[e + k]);
      for (k = 0; k < 8; k++)
        c = c << 8 | p[e + 16 + k];
      off += (size_t)snprintf(line + off, sizeof(line) - off, ":%llu,",
                              (unsigned long long)c);
    }
    lines_add(&fromsrv, line);
  }
  ASSERT_EQ(rc, SQLITE_DONE);
  sqlite3_finalize(st);
  sqlite3_close(sdb);
  qsort(fromdb.v, fromdb.n, sizeof(char *), cmp_line);
  qsort(fromsrv.v, fromsrv.n, sizeof(char *), cmp_line);
  for (i = 0; i < fromdb.n && i < fromsrv.n; i++)
    if (strcmp(fromdb.v[i], fromsrv.v[i]) != 0)
      test_fail(__FILE__, __LINE__,
                "a fresh replica's export differs from the server (%s):\n"
                "  replica: %s\n  server:  %s",
                s->dir, fromdb.v[i], fromsrv.v[i]);
  if (fromdb.n != fromsrv.n)
    test_fail(__FILE__, __LINE__,
              "a fresh replica holds %zu versions, the server %zu current",
              fromdb.n, fromsrv.n);
  lines_free(&fromdb);
  lines_free(&fromsrv);
}

static void server_down(struct server *s, uint64_t seed) {
  check_whole_server(s, seed);
  ASSERT_EQ(server_stop(&s->srv), 0);
  s->up = false;
  cleanup_server = NULL;
  rm_rf(s->dir);
}

/* ---- one seed ---------------------------------------------------------- */

static void remove_db(const char *path) {
  char p[320];

  unlink(path);
  snprintf(p, sizeof(p), "%s-wal", path);
  unlink(p);
  snprintf(p, sizeof(p), "%s-shm", path);
  unlink(p);
}

/* The network-fault mode: from now on every sync of r goes through fn,
 * with a random probability (0 to NETFAULT_MAX_PERMILLE per mille) of
 * each fault kind in each direction. */
static void netfault_start(struct run *r, struct faultnet *fn) {
  char line[512];
  size_t off = 0;
  int d;
  int k;

  memset(fn, 0, sizeof(*fn));
  fn->server_port = r->s->srv.port;
  fn->seed = r->seed ^ 0x6e65746661756c74ull;
  fn->delay_max_ms = 150;
  fn->reorder_wait_ms = 50;
  faultnet_start(fn);
  line[0] = '\0';
  for (d = 0; d < 2; d++)
    for (k = FAULTNET_DROP; k < FAULTNET_NFAULTS; k++) {
      unsigned p = (unsigned)rnd(r, NETFAULT_MAX_PERMILLE + 1);
      faultnet_set(fn, d, (enum faultnet_fault)k, p);
      off += (size_t)snprintf(line + off, sizeof(line) - off, " %s %s %u",
                              d == FAULTNET_UP ? "up" : "down",
                              faultnet_fault_name((enum faultnet_fault)k), p);
    }
  step_log(r, "network faults on (per mille):%s", line);
  r->fn = fn;
  r->faults_on = true;
}

/* Adds what the proxy did to the totals and stops it. */
static void netfault_stop(struct run *r) {
  struct faultnet_stats st;
  int d;
  int k;

  faultnet_stop(r->fn);
  faultnet_stats(r->fn, &st);
  for (d = 0; d < 2; d++) {
    tot.net.bytes[d] += st.bytes[d];
    for (k = 0; k < FAULTNET_NFAULTS; k++)
      tot.net.frames[d][k] += st.frames[d][k];
  }
  tot.net.swaps += st.swaps;
  tot.net.cuts_mid += st.cuts_mid;
  tot.net.cuts_rst += st.cuts_rst;
  tot.net.sessions += st.sessions;
  r->fn = NULL;
}

static void run_seed(struct server *s, uint64_t seed) {
  long long t0 = proc_now_ms();
  struct faultnet fn;
  struct run r;
  int nsteps;
  int crash_at;
  int ci;
  int round;
  size_t i;

  memset(&r, 0, sizeof(r));
  r.seed = seed;
  r.rng = seed;
  r.s = s;
  r.nc = 3 + (int)rnd(&r, MAXC - 2);
  snprintf(r.dir, sizeof(r.dir), "%s", s->dir);
  for (ci = 0; ci < r.nc; ci++) {
    snprintf(r.c[ci].name, sizeof(r.c[ci].name), "c%d", ci);
    snprintf(r.c[ci].path, sizeof(r.c[ci].path), "%s/s%llu-c%d.db", s->dir,
             (unsigned long long)seed, ci);
    r.c[ci].token = s->tokens[(s->seeds % SEEDS_PER_SERVER) * MAXC +
                              (unsigned)ci];
    remove_db(r.c[ci].path);
    client_open(&r, ci, true);
    fieldsync_replica_id(r.c[ci].db, r.c[ci].replica);
  }
  s->seeds++;
  /* Catch up on earlier seeds' records first (those are not compared). */
  for (ci = 0; ci < r.nc; ci++)
    (void)sync_now(&r, ci, 0);
  if (netfault)
    netfault_start(&r, &fn);
  nsteps = 30 + (int)rnd(&r, 41);
  crash_at = chance(&r, 12) ? (int)rnd(&r, (uint64_t)nsteps) : -1;
  for (r.step = 1; r.step <= nsteps; r.step++) {
    unsigned x = (unsigned)rnd(&r, 100);
    ci = (int)rnd(&r, (uint64_t)r.nc);
    if (r.step - 1 == crash_at)
      op_server_crash(&r, ci);
    else if (x < 60)
      op_write(&r, ci);
    else if (x < 82)
      (void)sync_now(&r, ci, chance(&r, 40) ? 1 + (unsigned)rnd(&r, 5) : 0);
    else if (x < 94)
      op_sync_cut(&r, ci);
    else
      op_sync_child(&r, ci); /* forks: the slowest step, so the rarest */
  }
  /* The network faults stop (the proxy stays); what any replica still
   * holds unacknowledged must go now. */
  if (r.fn != NULL) {
    faultnet_off(r.fn);
    r.faults_on = false;
    step_log(&r, "network faults off");
  }
  /* Sync until quiet: a whole round (every replica, random order) that
   * pushes nothing and brings nothing new. */
  for (round = 0;; round++) {
    size_t moved = 0;
    int order[MAXC];
    CHECK(&r, round < MAX_QUIET_ROUNDS, "not quiet after %d rounds",
          MAX_QUIET_ROUNDS);
    for (ci = 0; ci < r.nc; ci++)
      order[ci] = ci;
    for (ci = r.nc - 1; ci > 0; ci--) {
      int k = (int)rnd(&r, (uint64_t)ci + 1);
      int t = order[ci];
      order[ci] = order[k];
      order[k] = t;
    }
    for (ci = 0; ci < r.nc; ci++)
      moved += sync_now(&r, order[ci], 0);
    r.step++;
    if (moved == 0)
      break;
  }
  check_converged(&r);
  if (r.fn != NULL)
    netfault_stop(&r);
  tot.seeds++;
  tot.records += r.nrec;
  tot.syncs += r.syncs;
  tot.killed += r.killed;
  tot.bg_writes += r.bg_writes;
  tot.crashes += r.crashes;
  tot.cuts += r.cuts;
  tot.resolutions += r.resolutions;
  tot.netfails += r.netfails;
  if (verbose)
    printf("# seed %llu: %d replicas, %zu records, %d steps, %u syncs (%u "
           "failed under network faults), %u killed, %u with writes beside, "
           "%u server crashes, %u resolutions, quiet after %d rounds, %lld "
           "ms\n",
           (unsigned long long)seed, r.nc, r.nrec, nsteps, r.syncs, r.netfails,
           r.killed, r.bg_writes, r.crashes, r.resolutions, round + 1,
           proc_now_ms() - t0);
  for (ci = 0; ci < r.nc; ci++) {
    client_close(&r, ci);
    remove_db(r.c[ci].path);
  }
  for (i = 0; i < r.nrec; i++) {
    vlist_free(&r.recs[i].made);
    vlist_free(&r.recs[i].acked);
  }
  free(r.recs);
  free(r.log);
}

/* Runs n seeds from first, with a fresh server every SEEDS_PER_SERVER. */
static void run_seeds(uint64_t first, uint64_t n) {
  struct part p;
  struct server s;
  uint64_t i;
  long long t0 = proc_now_ms();

  verbose = getenv("FIELDSYNC_CONV_VERBOSE") != NULL;
  no_writes_beside = getenv("FIELDSYNC_CONV_NO_WRITES_BESIDE") != NULL;
  no_moves = getenv("FIELDSYNC_CONV_NO_MOVES") != NULL;
  keep_files = getenv("FIELDSYNC_CONV_KEEP") != NULL;
  netfault = getenv("FIELDSYNC_CONV_NETFAULT") != NULL;
  atexit(cleanup_at_exit);
  signal(SIGALRM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  part_init(&p);
  snprintf(cleanup_dir, sizeof(cleanup_dir), "%s", p.dir);
  for (i = 0; i < n; i++) {
    if (i % SEEDS_PER_SERVER == 0) {
      if (i > 0)
        server_down(&s, first + i);
      server_up(&s, &p);
    }
    run_seed(&s, first + i);
  }
  server_down(&s, first + n);
  rm_rf(p.dir);
  cleanup_dir[0] = '\0';
  printf("# %lu seeds from %llu converged in %lld ms: %lu records, %lu "
         "syncs (%lu cut, %lu killed, %lu with writes beside them, %lu "
         "server crashes), %lu pushes answered conflict, %lu resolutions, "
         "%lu records left in conflict\n",
         tot.seeds, (unsigned long long)first, proc_now_ms() - t0, tot.records,
         tot.syncs, tot.cuts, tot.killed, tot.bg_writes, tot.crashes,
         tot.push_conflicts, tot.resolutions, tot.left_in_conflict);
  if (netfault) {
    int d;
    printf("# network faults: %lu syncs failed while they were on; %lu "
           "sessions through the proxy, %lu reordered frames passed by the "
           "next, %lu cuts inside a frame, %lu cuts by reset\n",
           tot.netfails, tot.net.sessions, tot.net.swaps, tot.net.cuts_mid,
           tot.net.cuts_rst);
    for (d = 0; d < 2; d++) {
      char line[256];
      size_t off = 0;
      int k;
      for (k = 0; k < FAULTNET_NFAULTS; k++)
        off += (size_t)snprintf(
            line + off, sizeof(line) - off, "%s%s %lu", k > 0 ? ", " : "",
            faultnet_fault_name((enum faultnet_fault)k), tot.net.frames[d][k]);
      printf("# network faults: frames %s: %s\n",
             d == FAULTNET_UP ? "client->server" : "server->client", line);
    }
  }
}

/* Each part runs SEEDS_PER_PART * scale seeds from its own base, so a
 * seed printed by any part replays with one_seed; NETFAULT_SEEDS * scale
 * in the network-fault mode (FIELDSYNC_CONV_NETFAULT=1, as ctest's
 * convergence_netfault runs part 0). */
static void run_part(int part) {
  uint64_t base = test_seed();
  uint64_t n = getenv("FIELDSYNC_CONV_NETFAULT") != NULL ? NETFAULT_SEEDS
                                                         : SEEDS_PER_PART;
  const char *e = getenv("FIELDSYNC_CONV_SEEDS");

  /* For development: fewer (or more) seeds per part. */
  if (e != NULL && strtoull(e, NULL, 10) > 0)
    n = strtoull(e, NULL, 10);
  run_seeds(base + (uint64_t)part * 1000000007ull, n * test_scale());
}

TEST(converge_part0) {
  run_part(0);
}
TEST(converge_part1) {
  run_part(1);
}
TEST(converge_part2) {
  run_part(2);
}
TEST(converge_part3) {
  run_part(3);
}

/* One seed: FIELDSYNC_SEED=N replays seed N. */
TEST(one_seed) {
  run_seeds(test_seed(), 1);
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(converge_part0) TEST_ENTRY(converge_part1)
          TEST_ENTRY(converge_part2) TEST_ENTRY(converge_part3)
              TEST_ENTRY(one_seed)};

  if (argc < 3) {
    fprintf(stderr,
            "usage: test_convergence FIELDSYNCD FIELDSYNC-ADMIN [TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
