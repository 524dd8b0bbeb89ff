/* SPDX-License-Identifier: MIT */
/* Benchmark of libfieldsync against the targets: record N (default
 * 100,000) observations of about 500 bytes in batches, then 2,000 one per
 * durable transaction, and list one visit's 50 records in the N-record
 * database. Prints a table of results, targets and PASS/MISS.
 * Usage: bench_client [--records N] [--dir DIR]
 * The databases go in a fresh directory under DIR (default $TMPDIR or
 * /tmp), removed at the end; put DIR on the storage you care about, since
 * durable commits cost what its fsync costs. Build it as Release. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fieldsync.h"

#define RECORDS_PER_VISIT 50
#define SINGLES 2000
#define QUERIES 1000
#define EVIDENCE_LEN 420

/* The targets. */
#define TARGET_BATCH_RPS 50000.0
#define TARGET_SINGLE_MS 2.0
#define TARGET_QUERY_MS 1.0

static char dir[512];
static uint64_t rng = 0x5eed5eed5eedull;
static char pool[8192]; /* random words that evidence texts are cut from */

static uint64_t next_rand(void) {
  uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void remove_dir(void) {
  char p[1024];
  DIR *d;

  if (dir[0] == '\0')
    return;
  d = opendir(dir);
  if (d != NULL) {
    for (;;) {
      struct dirent *e = readdir(d);

      if (e == NULL)
        break;
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
        continue;
      snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(dir);
  dir[0] = '\0';
}

static void die(fieldsync_db *db, const char *what, int rc) {
  fprintf(stderr, "bench_client: %s: %s (%s)\n", what,
          db != NULL ? fieldsync_errmsg(db) : fieldsync_strerror(rc),
          fieldsync_errname(rc));
  remove_dir();
  exit(1);
}

static fieldsync_db *open_db(const char *name) {
  char path[600];
  fieldsync_db *db = NULL;
  int rc;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  rc = fieldsync_open(path, FIELDSYNC_OPEN_CREATE, name, &db);
  if (rc != 0)
    die(db, "open", rc);
  return db;
}

/* Visit v's id: 32 hex digits. */
static void visit_hex(uint64_t v, char out[33]) {
  snprintf(out, 33, "b15175000000000000000000%08x", (unsigned)v);
}

/* Creates observation `serial` of visit v: about 500 bytes of payload (a
 * 420-character evidence text, the visit id, a standard, a judgement, an
 * assessor and two case references). Building the draft is timed too:
 * it is part of recording through the library. */
static void create_obs(fieldsync_db *db, uint64_t serial, uint64_t v) {
  const char *fields[] = {"visit_id",      "standard_code", "judgement",
                          "evidence_text", "assessor",      "case_refs",
                          "case_refs"};
  const char *values[7];
  char visit[33];
  char code[16];
  char judgement[4];
  char evidence[EVIDENCE_LEN + 1];
  char case1[16];
  char case2[16];
  fieldsync_draft *d = NULL;
  size_t off = (size_t)(next_rand() % (sizeof(pool) - EVIDENCE_LEN));
  size_t n;
  size_t i;
  int rc;

  visit_hex(v, visit);
  snprintf(code, sizeof(code), "OP%u", (unsigned)(serial % 40));
  snprintf(judgement, sizeof(judgement), "%u", 1 + (unsigned)(serial % 4));
  n = (size_t)snprintf(evidence, sizeof(evidence), "#%llu ",
                       (unsigned long long)serial);
  memcpy(evidence + n, pool + off, EVIDENCE_LEN - n);
  evidence[EVIDENCE_LEN] = '\0';
  snprintf(case1, sizeof(case1), "C%u", (unsigned)(serial % 97));
  snprintf(case2, sizeof(case2), "C%u", (unsigned)(serial % 89));
  values[0] = visit;
  values[1] = code;
  values[2] = judgement;
  values[3] = evidence;
  values[4] = "inspector-07";
  values[5] = case1;
  values[6] = case2;
  rc = fieldsync_draft_new(db, "observation", &d);
  if (rc != 0)
    die(db, "draft_new", rc);
  for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
    rc = fieldsync_draft_set(d, fields[i], values[i]);
    if (rc != 0)
      die(db, "draft_set", rc);
  }
  rc = fieldsync_create(db, d, NULL);
  if (rc != 0)
    die(db, "create", rc);
  fieldsync_draft_free(d);
}

/* Records n observations in batches of `batch`; returns records/s. With
 * interleave, record i belongs to visit i % nvisits, so a visit's records
 * lie far apart (the worst case for listing a visit); otherwise each visit's
 * records are recorded together, as an inspector records one visit. */
static double load(fieldsync_db *db, uint64_t n, uint64_t batch,
                   uint64_t nvisits, bool interleave) {
  double t0 = now_ms();
  uint64_t i = 0;
  int rc;

  while (i < n) {
    uint64_t end = i + batch < n ? i + batch : n;

    rc = fieldsync_batch_begin(db);
    if (rc != 0)
      die(db, "batch_begin", rc);
    for (; i < end; i++)
      create_obs(db, i,
                 interleave ? i % nvisits : (i / RECORDS_PER_VISIT) % nvisits);
    rc = fieldsync_batch_commit(db);
    if (rc != 0)
      die(db, "batch_commit", rc);
  }
  return (double)n / ((now_ms() - t0) / 1e3);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a;
  double y = *(const double *)b;

  return x < y ? -1 : x > y;
}

/* The q-quantile (nearest rank) of sorted a[0..n-1]. */
static double quantile(const double *a, size_t n, double q) {
  size_t k = (size_t)(q * (double)n + 0.999999);

  if (k == 0)
    k = 1;
  if (k > n)
    k = n;
  return a[k - 1];
}

static int count_cb(const char *json, void *data) {
  (void)json;
  (*(size_t *)data)++;
  return 0;
}

static long long file_size(const char *name) {
  char path[600];
  struct stat st;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

static void usage(void) {
  fprintf(stderr, "usage: bench_client [--records N] [--dir DIR]\n");
  exit(2);
}

static void row(const char *what, const char *result, const char *target,
                int verdict) {
  const char *v = "";

  if (verdict > 0)
    v = "PASS";
  else if (verdict == 0)
    v = "MISS";
  if (verdict < 0)
    printf("%-44s %14s\n", what, result);
  else
    printf("%-44s %14s %16s  %s\n", what, result, target, v);
}

/* Lists QUERIES random visits of the database `name` (reopened, as an
 * application would) and stores the median and p99 in ms. */
static void visit_queries(const char *name, uint64_t nvisits, double *lat,
                          double out[2]) {
  fieldsync_db *db = open_db(name);
  size_t i;
  int rc;

  for (i = 0; i < QUERIES; i++) {
    struct fieldsync_query q;
    char visit[33];
    size_t got = 0;
    double t0;

    memset(&q, 0, sizeof(q));
    visit_hex(next_rand() % nvisits, visit);
    q.collection = "observation";
    q.visit_id = visit;
    t0 = now_ms();
    rc = fieldsync_query(db, &q, count_cb, &got);
    lat[i] = now_ms() - t0;
    if (rc != 0)
      die(db, "query", rc);
    if (got != RECORDS_PER_VISIT) {
      fprintf(stderr, "bench_client: visit %s gave %zu records, not %d\n",
              visit, got, RECORDS_PER_VISIT);
      remove_dir();
      exit(1);
    }
  }
  rc = fieldsync_close(db);
  if (rc != 0)
    die(NULL, "close", rc);
  qsort(lat, QUERIES, sizeof(double), cmp_double);
  out[0] = quantile(lat, QUERIES, 0.5);
  out[1] = quantile(lat, QUERIES, 0.99);
}

int main(int argc, char **argv) {
  static const char words[] = "resident staff medication plan care review "
                              "record consent safeguarding risk training "
                              "observed explained confirmed evidence ";
  uint64_t n = 100000;
  uint64_t nvisits;
  const char *parent = getenv("TMPDIR");
  fieldsync_db *db;
  double rps1000;
  double rps10000;
  double *lat;
  double t0;
  double single[3];
  double query[2];
  double query_grouped[2];
  char buf[64];
  size_t i;
  int rc;
  int a;

  for (a = 1; a < argc; a++) {
    if (strcmp(argv[a], "--records") == 0 && a + 1 < argc) {
      char *end = NULL;

      errno = 0;
      n = strtoull(argv[++a], &end, 10);
      if (errno != 0 || end == argv[a] || *end != '\0' || n < RECORDS_PER_VISIT)
        usage();
    } else if (strcmp(argv[a], "--dir") == 0 && a + 1 < argc) {
      parent = argv[++a];
    } else {
      usage();
    }
  }
  if (parent == NULL || parent[0] == '\0')
    parent = "/tmp";
  snprintf(dir, sizeof(dir), "%s/fieldsync-bench-XXXXXX", parent);
  if (mkdtemp(dir) == NULL) {
    fprintf(stderr, "bench_client: mkdtemp %s: %s\n", dir, strerror(errno));
    return 1;
  }
  for (i = 0; i < sizeof(pool); i++)
    pool[i] = words[next_rand() % (sizeof(words) - 1)];
  nvisits = n / RECORDS_PER_VISIT;
  lat = malloc(sizeof(double) * (SINGLES > QUERIES ? SINGLES : QUERIES));
  if (lat == NULL)
    die(NULL, "malloc", FIELDSYNC_ENOMEM);
  printf("libfieldsync %s: %llu observations (%llu visits of %d), "
         "databases in %s\n",
         fieldsync_version_string(), (unsigned long long)n,
         (unsigned long long)nvisits, RECORDS_PER_VISIT, dir);
  fflush(stdout);

  /* (a) batched, 1,000 per commit, visits interleaved: the database of
   * the other measures. */
  db = open_db("bench.db");
  rps1000 = load(db, n, 1000, nvisits, true);
  rc = fieldsync_close(db);
  if (rc != 0)
    die(NULL, "close", rc);
  printf("database: %.0f bytes per record (file and WAL)\n",
         (double)(file_size("bench.db") + file_size("bench.db-wal")) /
             (double)n);
  fflush(stdout);

  /* (a) batched, 10,000 per commit, each visit recorded together. */
  db = open_db("grouped.db");
  rps10000 = load(db, n, 10000, nvisits, false);
  rc = fieldsync_close(db);
  if (rc != 0)
    die(NULL, "close", rc);

  /* (c) one visit's records, in both databases. */
  visit_queries("bench.db", nvisits, lat, query);
  visit_queries("grouped.db", nvisits, lat, query_grouped);

  /* (b) one record per durable transaction, in the N-record database. */
  db = open_db("bench.db");
  for (i = 0; i < SINGLES; i++) {
    t0 = now_ms();
    create_obs(db, n + i, nvisits + i % 40);
    lat[i] = now_ms() - t0;
  }
  qsort(lat, SINGLES, sizeof(double), cmp_double);
  single[0] = quantile(lat, SINGLES, 0.5);
  single[1] = quantile(lat, SINGLES, 0.9);
  single[2] = quantile(lat, SINGLES, 0.99);
  rc = fieldsync_close(db);
  if (rc != 0)
    die(NULL, "close", rc);

  printf("\n%-44s %14s %16s\n", "measure", "result", "target");
  snprintf(buf, sizeof(buf), "%.0f rec/s", rps1000);
  row("batched, 1,000 per commit, visits spread", buf, ">= 50000 rec/s",
      rps1000 >= TARGET_BATCH_RPS);
  snprintf(buf, sizeof(buf), "%.0f rec/s", rps10000);
  row("batched, 10,000 per commit, visits together", buf, ">= 50000 rec/s",
      rps10000 >= TARGET_BATCH_RPS);
  snprintf(buf, sizeof(buf), "%.3f ms", single[0]);
  row("one per transaction (durable), median", buf, "<= 2 ms",
      single[0] <= TARGET_SINGLE_MS);
  snprintf(buf, sizeof(buf), "%.3f ms", single[1]);
  row("one per transaction (durable), p90", buf, "", -1);
  snprintf(buf, sizeof(buf), "%.3f ms", single[2]);
  row("one per transaction (durable), p99", buf, "", -1);
  snprintf(buf, sizeof(buf), "%.3f ms", query[0]);
  row("visit query, 50 records spread, median", buf, "<= 1 ms",
      query[0] <= TARGET_QUERY_MS);
  snprintf(buf, sizeof(buf), "%.3f ms", query[1]);
  row("visit query, 50 records spread, p99", buf, "", -1);
  snprintf(buf, sizeof(buf), "%.3f ms", query_grouped[0]);
  row("visit query, 50 records together, median", buf, "<= 1 ms",
      query_grouped[0] <= TARGET_QUERY_MS);
  snprintf(buf, sizeof(buf), "%.3f ms", query_grouped[1]);
  row("visit query, 50 records together, p99", buf, "", -1);
  free(lat);
  remove_dir();
  return 0;
}
