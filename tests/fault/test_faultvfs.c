/* SPDX-License-Identifier: MIT */
/* The fault VFS (tests/harness/faultvfs.c) tested on its own: it counts,
 * fails exactly the k-th operation (or every one from k), reports disk full
 * and fsync failure with SQLite's codes, and power loss drops or garbles
 * exactly the writes not yet synced, through the raw file API and through
 * a WAL database. */
#define _POSIX_C_SOURCE 200809L
#include <sqlite3.h>
#include <stdio.h>

#include "faultvfs.h"
#include "harness.h"
#include "proc.h"

static char dir[256];

static void path_in(char *out, size_t cap, const char *name) {
  tmpdir_make(dir, sizeof(dir), "fieldsync-faultvfs");
  snprintf(out, cap, "%s/%s", dir, name);
}

static void arm(enum faultvfs_fault fault, enum faultvfs_op op, uint64_t k,
                bool sticky) {
  struct faultvfs_plan plan = {fault, op, k, sticky, 42};

  faultvfs_arm(&plan);
}

static sqlite3 *db_open(const char *path) {
  sqlite3 *db = NULL;

  ASSERT_EQ(sqlite3_open_v2(path, &db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
            SQLITE_OK);
  sqlite3_extended_result_codes(db, 1);
  ASSERT_EQ(sqlite3_exec(db,
                         "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
                         "CREATE TABLE IF NOT EXISTS t(k INTEGER PRIMARY KEY,"
                         " v BLOB)",
                         NULL, NULL, NULL),
            SQLITE_OK);
  return db;
}

static int insert(sqlite3 *db, int k) {
  char sql[128];

  snprintf(sql, sizeof(sql), "INSERT INTO t VALUES(%d, randomblob(3000 + %d))",
           k, k);
  return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

static long long rows(sqlite3 *db) {
  sqlite3_stmt *st = NULL;
  long long n = -1;

  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &st, NULL),
            SQLITE_OK);
  if (sqlite3_step(st) == SQLITE_ROW)
    n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

static void assert_intact(sqlite3 *db) {
  sqlite3_stmt *st = NULL;

  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  ASSERT_STR_EQ((const char *)sqlite3_column_text(st, 0), "ok");
  sqlite3_finalize(st);
}

TEST(faultvfs_parse) {
  struct faultvfs_plan p;

  ASSERT_OK(faultvfs_parse("eio:any:7", &p));
  ASSERT_EQ(p.fault, FAULTVFS_EIO);
  ASSERT_EQ(p.op, FAULTVFS_ANY);
  ASSERT_EQ(p.k, 7);
  ASSERT(!p.sticky);
  ASSERT_OK(faultvfs_parse("power-garble:sync:3:sticky:seed=99", &p));
  ASSERT_EQ(p.fault, FAULTVFS_POWER_GARBLE);
  ASSERT_EQ(p.op, FAULTVFS_SYNC);
  ASSERT(p.sticky);
  ASSERT_EQ(p.seed, 99);
  ASSERT_OK(faultvfs_parse("enospc:write:1", &p));
  ASSERT_EQ(p.fault, FAULTVFS_ENOSPC);
  ASSERT_EQ(p.op, FAULTVFS_WRITE);
  ASSERT_EQ(faultvfs_parse("eio:any:0", &p), -1);
  ASSERT_EQ(faultvfs_parse("eio:any", &p), -1);
  ASSERT_EQ(faultvfs_parse("eio:read:1", &p), -1);
  ASSERT_EQ(faultvfs_parse("boom:any:1", &p), -1);
  ASSERT_EQ(faultvfs_parse("eio:any:1x", &p), -1);
  ASSERT_EQ(faultvfs_parse("eio:any:1:seed=", &p), -1);
  ASSERT_EQ(faultvfs_parse("eio:any:1:often", &p), -1);
}

/* Counting, then failing exactly the k-th operation for every k of a
 * fixed statement; then sticky from k. */
TEST(faultvfs_kth_fault) {
  char path[512];
  sqlite3 *db;
  uint64_t n;
  uint64_t k;
  uint64_t failed = 0;

  ASSERT_OK(faultvfs_install());
  ASSERT_OK(faultvfs_install());
  ASSERT_STR_EQ(sqlite3_vfs_find(NULL)->zName, "faultvfs");
  path_in(path, sizeof(path), "k.db");
  db = db_open(path);
  arm(FAULTVFS_NONE, FAULTVFS_ANY, 1, false);
  ASSERT_EQ(insert(db, 1), SQLITE_OK);
  n = faultvfs_count();
  ASSERT_GT(n, 0);
  ASSERT_EQ(faultvfs_injected(), 0);
  printf("# one insert: %" PRIu64 " counted operations\n", n);
  for (k = 1; k <= n + 2; k++) {
    int rc;
    arm(FAULTVFS_EIO, FAULTVFS_ANY, k, false);
    rc = insert(db, (int)(k + 10));
    if (faultvfs_injected() > 0) {
      ASSERT_EQ(faultvfs_injected(), 1);
      failed += rc != SQLITE_OK;
    }
    /* Non-sticky: the next statement works again. */
    arm(FAULTVFS_NONE, FAULTVFS_ANY, 1, false);
    ASSERT_EQ(insert(db, (int)(k + 1000)), SQLITE_OK);
  }
  printf("# k swept 1..%" PRIu64 ": %" PRIu64 " statements failed\n", n + 2,
         failed);
  ASSERT_GT(failed, 0);
  arm(FAULTVFS_EIO, FAULTVFS_ANY, 2, true);
  ASSERT_NE(insert(db, 5000), SQLITE_OK);
  ASSERT_NE(insert(db, 5001), SQLITE_OK);
  ASSERT_GE(faultvfs_injected(), 2);
  faultvfs_disarm();
  ASSERT_EQ(insert(db, 5002), SQLITE_OK);
  faultvfs_reset();
  assert_intact(db);
  ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

/* Disk full on the first write is SQLITE_FULL; fsync failure is
 * SQLITE_IOERR_FSYNC; a failed open is SQLITE_CANTOPEN. */
TEST(faultvfs_codes) {
  char path[512];
  sqlite3 *db;
  sqlite3 *db2 = NULL;

  ASSERT_OK(faultvfs_install());
  path_in(path, sizeof(path), "c.db");
  db = db_open(path);
  arm(FAULTVFS_ENOSPC, FAULTVFS_WRITE, 1, false);
  ASSERT_EQ(insert(db, 1), SQLITE_FULL);
  arm(FAULTVFS_FSYNC, FAULTVFS_SYNC, 1, false);
  ASSERT_EQ(insert(db, 2), SQLITE_IOERR_FSYNC);
  ASSERT_EQ(sqlite3_extended_errcode(db), SQLITE_IOERR_FSYNC);
  ASSERT_EQ(faultvfs_injected(), 1);
  ASSERT_EQ(faultvfs_resynced(), 0);
  /* Committing again on the same connection syncs the handle whose sync
   * failed: counted as a retried fsync. */
  ASSERT_EQ(insert(db, 3), SQLITE_OK);
  ASSERT_EQ(faultvfs_resynced(), 1);
  faultvfs_reset();
  /* sqlite3_open_v2 opens lazily; reading the schema opens the file. */
  ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
  arm(FAULTVFS_EIO, FAULTVFS_ANY, 1, false);
  if (sqlite3_open_v2(path, &db2, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK)
    ASSERT_NE(sqlite3_exec(db2, "SELECT * FROM t", NULL, NULL, NULL),
              SQLITE_OK);
  ASSERT_EQ(faultvfs_injected(), 1);
  sqlite3_close(db2);
  faultvfs_reset();
  db = db_open(path);
  assert_intact(db);
  ASSERT_EQ(rows(db), 1);
  ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

/* Reads the whole file at path into buf (cap bytes); returns its size. */
static size_t slurp(const char *path, unsigned char *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  size_t n;

  ASSERT(f != NULL);
  n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

/* Through the raw file API: synced bytes stay, the unsynced overwrite and
 * extension vanish (DROP) or turn into garbage (GARBLE), and every
 * operation fails until reset. */
static void raw_power_loss(enum faultvfs_fault how) {
  sqlite3_vfs *vfs;
  sqlite3_file *f;
  char path[512];
  unsigned char a[4096];
  unsigned char b[8192];
  unsigned char got[16384];
  int out = 0;
  size_t n;

  ASSERT_OK(faultvfs_install());
  vfs = sqlite3_vfs_find(NULL);
  path_in(path, sizeof(path), "raw.bin");
  f = sqlite3_malloc(vfs->szOsFile);
  ASSERT(f != NULL);
  memset(a, 'A', sizeof(a));
  memset(b, 'B', sizeof(b));
  ASSERT_EQ(vfs->xOpen(vfs, path, f,
                       SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_CREATE |
                           SQLITE_OPEN_READWRITE,
                       &out),
            SQLITE_OK);
  ASSERT_EQ(f->pMethods->xWrite(f, a, sizeof(a), 0), SQLITE_OK);
  ASSERT_EQ(f->pMethods->xSync(f, SQLITE_SYNC_NORMAL), SQLITE_OK);
  ASSERT_EQ(f->pMethods->xWrite(f, b, 1000, 100), SQLITE_OK);
  ASSERT_EQ(f->pMethods->xWrite(f, b, sizeof(b), 4096), SQLITE_OK);
  ASSERT_EQ(f->pMethods->xTruncate(f, 6000), SQLITE_OK);
  arm(how, FAULTVFS_SYNC, 1, false);
  ASSERT_EQ(f->pMethods->xSync(f, SQLITE_SYNC_NORMAL), SQLITE_IOERR_FSYNC);
  ASSERT(faultvfs_powered_off());
  ASSERT_NE(f->pMethods->xRead(f, got, 10, 0), SQLITE_OK);
  ASSERT_NE(f->pMethods->xWrite(f, a, 10, 0), SQLITE_OK);
  f->pMethods->xClose(f);
  faultvfs_reset();
  ASSERT(!faultvfs_powered_off());
  n = slurp(path, got, sizeof(got));
  if (how == FAULTVFS_POWER_DROP) {
    ASSERT_EQ(n, sizeof(a));
    ASSERT_MEM_EQ(got, a, sizeof(a));
  } else {
    size_t i;
    size_t same = 0;
    ASSERT_EQ(n, 6000);
    ASSERT_MEM_EQ(got, a, 100);
    ASSERT_MEM_EQ(got + 1100, a, 4096 - 1100);
    for (i = 100; i < 1100; i++)
      same += got[i] == 'A' || got[i] == 'B';
    for (i = 4096; i < 6000; i++)
      same += got[i] == 'A' || got[i] == 'B';
    /* 2904 random bytes: a handful may match by chance. */
    ASSERT_LT(same, 100);
  }
  sqlite3_free(f);
}

TEST(faultvfs_drop_restores_bytes) {
  raw_power_loss(FAULTVFS_POWER_DROP);
}

TEST(faultvfs_garble_writes_garbage) {
  raw_power_loss(FAULTVFS_POWER_GARBLE);
}

/* One insert, then with ckpt a checkpoint that copies the WAL into the
 * database file and truncates the WAL. Returns the insert's code. */
static int step(sqlite3 *db, int k, bool ckpt) {
  int rc = insert(db, k);

  if (rc == SQLITE_OK && ckpt)
    sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
  return rc;
}

/* A WAL database: power loss at each sync point of one more transaction
 * (and of a checkpoint after it) loses exactly the transaction whose
 * commit failed; committed ones survive and integrity holds. Without the
 * drop the failed commit's frames, complete and checksummed, would be
 * recovered. */
TEST(faultvfs_wal_power_loss) {
  char path[512];
  sqlite3 *db;
  uint64_t syncs;
  uint64_t k;
  int f;

  ASSERT_OK(faultvfs_install());
  path_in(path, sizeof(path), "w.db");
  for (f = 0; f < 4; f++) {
    enum faultvfs_fault how =
        f % 2 == 0 ? FAULTVFS_POWER_DROP : FAULTVFS_POWER_GARBLE;
    bool ckpt = f >= 2;
    db = db_open(path);
    ASSERT_EQ(sqlite3_exec(db, "DELETE FROM t", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(insert(db, 1), SQLITE_OK);
    arm(FAULTVFS_NONE, FAULTVFS_SYNC, 1, false);
    ASSERT_EQ(step(db, 2, ckpt), SQLITE_OK);
    syncs = faultvfs_count();
    ASSERT_GT(syncs, 0);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
    for (k = 1; k <= syncs; k++) {
      int rc;
      long long before;
      db = db_open(path);
      before = rows(db);
      arm(how, FAULTVFS_SYNC, k, false);
      rc = step(db, (int)(100 + k), ckpt);
      ASSERT(faultvfs_powered_off());
      sqlite3_close(db);
      faultvfs_reset();
      db = db_open(path);
      assert_intact(db);
      ASSERT_EQ(rows(db), before + (rc == SQLITE_OK));
      ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
    }
    printf("# %s%s: %" PRIu64 " sync points\n",
           how == FAULTVFS_POWER_DROP ? "drop" : "garble",
           ckpt ? " (commit + checkpoint)" : " (commit)", syncs);
  }
}

TEST_LIST(TEST_ENTRY(faultvfs_parse) TEST_ENTRY(faultvfs_kth_fault)
              TEST_ENTRY(faultvfs_codes)
                  TEST_ENTRY(faultvfs_drop_restores_bytes)
                      TEST_ENTRY(faultvfs_garble_writes_garbage)
                          TEST_ENTRY(faultvfs_wal_power_loss))
