/* SPDX-License-Identifier: MIT */
/* Crash tests: SIGKILL the `fieldsync` CLI in the middle of large imports,
 * and crash_writer (writing through libfieldsync) in the middle of single
 * and batched commits, many times over. After every kill the database must
 * open clean (PRAGMA integrity_check says "ok") with every committed record
 * intact: an import is all or nothing, and no id the writer acknowledged
 * after its commit returned is lost.
 *
 * Usage: test_crash_client CLI WRITER [TEST | --list]. The two paths may
 * instead come from $FIELDSYNC_CLI and $FIELDSYNC_CRASH_WRITER.
 * $FIELDSYNC_SEED repeats a run, $FIELDSYNC_TEST_SCALE multiplies the
 * kills, and $FIELDSYNC_KEEP_TMP=1 keeps the temporary directory. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "fieldsync.h"
#include "harness.h"
#include "proc.h"
#include "sqlcheck.h"

extern char **environ;

/* Kills per run at scale 1 (the issue asks for at least 50 in all). */
#define CLI_KILLS 30
#define WRITER_KILLS 25

/* Rows per imported file (one transaction each) and rows per visit. */
#define CSV_ROWS 3000
#define ROWS_PER_VISIT 50
#define EVIDENCE_LEN 300

/* A writer lives up to this long after its first acknowledged commit. */
#define WRITER_MAX_LIFE_MS 250
/* Older acknowledged ids read back after each writer kill. */
#define WRITER_RECHECK 200
/* Deadlines for a child's first acknowledgement and for its end. */
#define FIRST_ACK_MS 60000.0
#define DRAIN_MS 30000.0

static const char *cli_path;
static const char *writer_path;
static char dir[256];
static uint64_t rng;

/* ---- processes and files ----------------------------------------------- */

static double now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void path_in(char *out, size_t cap, const char *name) {
  int n = snprintf(out, cap, "%s/%s", dir, name);

  ASSERT(n > 0 && (size_t)n < cap);
}

static void setup_dir(void) {
  tmpdir_make(dir, sizeof(dir), "fieldsync-crash");
}

/* Copies the start of a child's log to stderr, to explain a failure. */
static void dump_log(const char *log) {
  char buf[4096];
  FILE *f = fopen(log, "r");
  size_t n;

  if (f == NULL)
    return;
  n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  fprintf(stderr, "# --- %s ---\n%s# ---\n", log, buf);
}

/* Starts argv[0] with stdin from /dev/null. Its stdout goes to out_fd, or
 * to log when out_fd is -1; its stderr always goes to log. */
static pid_t spawn(char *const argv[], const char *log, int out_fd) {
  posix_spawn_file_actions_t fa;
  pid_t pid;
  int rc;

  ASSERT_OK(posix_spawn_file_actions_init(&fa));
  ASSERT_OK(posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0));
  ASSERT_OK(posix_spawn_file_actions_addopen(
      &fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0644));
  if (out_fd >= 0)
    ASSERT_OK(posix_spawn_file_actions_adddup2(&fa, out_fd, 1));
  else
    ASSERT_OK(posix_spawn_file_actions_adddup2(&fa, 2, 1));
  rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "spawn %s: %s", argv[0], strerror(rc));
  return pid;
}

static int wait_child(pid_t pid) {
  int status = 0;

  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      test_fail(__FILE__, __LINE__, "waitpid: %s", strerror(errno));
  }
  return status;
}

static bool killed_by_sigkill(int status) {
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

static bool exited_ok(int status) {
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* ---- checks through SQLite and the library ------------------------------ */

static sqlite3 *sql_open(const char *path) {
  sqlite3 *s = NULL;
  int rc = sqlite3_open_v2(path, &s, SQLITE_OPEN_READWRITE, NULL);

  if (rc != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "sqlite3_open_v2 %s: %s", path,
              s != NULL ? sqlite3_errmsg(s) : sqlite3_errstr(rc));
  sqlite3_busy_timeout(s, 5000);
  return s;
}

static void sql_close(sqlite3 *s) {
  ASSERT_EQ(sqlite3_close(s), SQLITE_OK);
}

/* Runs a query giving one integer, with an optional blob parameter. */
static int64_t sql_int(sqlite3 *s, const char *sql, const void *blob, int len) {
  sqlite3_stmt *st = NULL;
  int64_t v;

  if (sqlite3_prepare_v2(s, sql, -1, &st, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(s));
  if (blob != NULL)
    ASSERT_EQ(sqlite3_bind_blob(st, 1, blob, len, SQLITE_STATIC), SQLITE_OK);
  if (sqlite3_step(st) != SQLITE_ROW)
    test_fail(__FILE__, __LINE__, "%s: %s", sql, sqlite3_errmsg(s));
  v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static fieldsync_db *lib_open(const char *path) {
  fieldsync_db *db = NULL;
  int rc = fieldsync_open(path, 0, NULL, &db);

  if (rc != 0)
    test_fail(__FILE__, __LINE__, "fieldsync_open %s: %s (%s)", path,
              fieldsync_errmsg(db), fieldsync_errname(rc));
  return db;
}

/* Creates one observation of visit (32 hex); its id goes to id_out. */
static void lib_create(fieldsync_db *db, const char *visit, char id_out[33]) {
  fieldsync_draft *d = NULL;
  int rc = fieldsync_draft_new(db, "observation", &d);

  ASSERT_OK(rc);
  ASSERT_OK(fieldsync_draft_set(d, "visit_id", visit));
  ASSERT_OK(fieldsync_draft_set(d, "standard_code", "OP1"));
  ASSERT_OK(fieldsync_draft_set(d, "judgement", "2"));
  ASSERT_OK(
      fieldsync_draft_set(d, "evidence_text", "recorded after the kills"));
  rc = fieldsync_create(db, d, id_out);
  fieldsync_draft_free(d);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "fieldsync_create: %s", fieldsync_errmsg(db));
}

/* Record id must be readable through the library. */
static void lib_expect(fieldsync_db *db, const char *id) {
  char *json = NULL;
  int rc = fieldsync_get_json(db, id, &json);

  if (rc != 0)
    test_fail(__FILE__, __LINE__, "committed record %s: %s (%s)", id,
              fieldsync_errmsg(db), fieldsync_errname(rc));
  if (strstr(json, id) == NULL)
    test_fail(__FILE__, __LINE__, "record %s reads back as %.200s", id, json);
  fieldsync_free(json);
}

/* Writes the db's state to be usable: one record alone and a batch of ten
 * more, read back. Returns the number of records added. */
static int64_t lib_still_usable(const char *path) {
  fieldsync_db *db = lib_open(path);
  const char *visit = "ffffffff00000000000000000000ffff";
  char ids[11][33];
  int i;

  lib_create(db, visit, ids[0]);
  ASSERT_OK(fieldsync_batch_begin(db));
  for (i = 1; i < 11; i++)
    lib_create(db, visit, ids[i]);
  ASSERT_OK(fieldsync_batch_commit(db));
  for (i = 0; i < 11; i++)
    lib_expect(db, ids[i]);
  ASSERT_OK(fieldsync_close(db));
  return 11;
}

struct count_ctx {
  int64_t n;
};

static int count_cb(const char *json, void *data) {
  struct count_ctx *c = data;

  (void)json;
  c->n++;
  return 0;
}

/* ---- CLI kills ---------------------------------------------------------- */

/* Record ids (16-byte blobs) in ascending order. */
struct idset {
  uint8_t (*id)[16];
  size_t n;
  size_t cap;
};

struct cli_state {
  char db[300];
  char csv[300];
  char log[300];
  struct idset known; /* every id present after the last check */
  int64_t records;    /* records after the last check */
};

/* Writes file `file` of the CLI test: CSV_ROWS observations whose visit
 * ids start with the file's number, so the rows of one import can be
 * counted; each row's evidence is EVIDENCE_LEN bytes of random words. */
static void write_csv(const char *path, uint32_t file) {
  static const char words[] = "resident staff medication plan care review "
                              "record consent safeguarding risk training ";
  char pool[4096];
  FILE *f = fopen(path, "w");
  uint32_t i;
  size_t k;

  if (f == NULL)
    test_fail(__FILE__, __LINE__, "%s: %s", path, strerror(errno));
  for (k = 0; k < sizeof(pool); k++)
    pool[k] = words[test_rand_below(&rng, sizeof(words) - 1)];
  fputs("visit_id,standard_code,judgement,evidence_text\n", f);
  for (i = 0; i < CSV_ROWS; i++) {
    size_t off = (size_t)test_rand_below(&rng, sizeof(pool) - EVIDENCE_LEN);

    fprintf(
        f, "%08x0000000000000000%08x,OP%u,%u,file %u row %u ", (unsigned)file,
        (unsigned)(i / ROWS_PER_VISIT), (unsigned)test_rand_below(&rng, 40),
        1 + (unsigned)test_rand_below(&rng, 4), (unsigned)file, (unsigned)i);
    fwrite(pool + off, 1, EVIDENCE_LEN, f);
    fputc('\n', f);
  }
  if (ferror(f) || fclose(f) != 0)
    test_fail(__FILE__, __LINE__, "writing %s failed", path);
}

static void idset_load(sqlite3 *s, struct idset *out) {
  sqlite3_stmt *st = NULL;
  int rc;

  memset(out, 0, sizeof(*out));
  ASSERT_EQ(sqlite3_prepare_v2(s, "SELECT id FROM records ORDER BY id", -1, &st,
                               NULL),
            SQLITE_OK);
  for (;;) {
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW)
      break;
    ASSERT_EQ(sqlite3_column_bytes(st, 0), 16);
    if (out->n == out->cap) {
      out->cap = out->cap == 0 ? 4096 : out->cap * 2;
      out->id = realloc(out->id, out->cap * sizeof(out->id[0]));
      ASSERT(out->id != NULL);
    }
    memcpy(out->id[out->n++], sqlite3_column_blob(st, 0), 16);
  }
  if (rc != SQLITE_DONE)
    test_fail(__FILE__, __LINE__, "reading ids: %s", sqlite3_errmsg(s));
  sqlite3_finalize(st);
}

/* Fails unless every id of old is in cur (both ascending). */
static void idset_expect_subset(const struct idset *old,
                                const struct idset *cur) {
  size_t i = 0;
  size_t j = 0;

  for (i = 0; i < old->n; i++) {
    while (j < cur->n && memcmp(cur->id[j], old->id[i], 16) < 0)
      j++;
    if (j == cur->n || memcmp(cur->id[j], old->id[i], 16) != 0) {
      char hex[33];
      int k;

      for (k = 0; k < 16; k++)
        snprintf(hex + 2 * k, 3, "%02x", old->id[i][k]);
      test_fail(__FILE__, __LINE__, "committed record %s is gone", hex);
    }
  }
}

/* Checks the database after an import of `file` ended (killed or not):
 * it is intact, it holds either the records it held before or those plus
 * all CSV_ROWS of the file (never part of it, never fewer), and every id
 * seen before is still there. must_grow: the CLI reported success.
 * Returns whether the import was committed. */
static bool cli_check(struct cli_state *cs, uint32_t file, bool must_grow) {
  uint8_t prefix[4];
  struct idset cur;
  struct count_ctx c = {0};
  struct fieldsync_query q;
  fieldsync_db *db;
  sqlite3 *s = sql_open(cs->db);
  char visit[33];
  int64_t count;
  int64_t in_file;
  bool grew;

  sqlcheck_integrity(s, cs->db);
  count = sql_int(s, "SELECT count(*) FROM records", NULL, 0);
  if (count != cs->records && count != cs->records + CSV_ROWS)
    test_fail(__FILE__, __LINE__,
              "import %u: %lld records, expected %lld or %lld", (unsigned)file,
              (long long)count, (long long)cs->records,
              (long long)(cs->records + CSV_ROWS));
  grew = count != cs->records;
  if (must_grow && !grew)
    test_fail(__FILE__, __LINE__,
              "import %u reported success but added nothing", (unsigned)file);
  prefix[0] = (uint8_t)(file >> 24);
  prefix[1] = (uint8_t)(file >> 16);
  prefix[2] = (uint8_t)(file >> 8);
  prefix[3] = (uint8_t)file;
  in_file = sql_int(s,
                    "SELECT count(*) FROM records "
                    "WHERE substr(visit_id, 1, 4) = ?",
                    prefix, 4);
  ASSERT_EQ(in_file, grew ? CSV_ROWS : 0);
  idset_load(s, &cur);
  ASSERT_EQ(cur.n, count);
  idset_expect_subset(&cs->known, &cur);
  free(cs->known.id);
  cs->known = cur;
  cs->records = count;
  sql_close(s);

  /* The library opens it, and a visit of a committed file is whole. */
  db = lib_open(cs->db);
  if (grew) {
    snprintf(visit, sizeof(visit), "%08x0000000000000000%08x", (unsigned)file,
             (unsigned)test_rand_below(&rng, CSV_ROWS / ROWS_PER_VISIT));
    memset(&q, 0, sizeof(q));
    q.collection = "observation";
    q.visit_id = visit;
    ASSERT_OK(fieldsync_query(db, &q, count_cb, &c));
    ASSERT_EQ(c.n, ROWS_PER_VISIT);
  }
  ASSERT_OK(fieldsync_close(db));
  return grew;
}

/* Runs the CLI on the test's database to completion; it must succeed.
 * Returns how long it took (ms). */
static double cli_run_ok(struct cli_state *cs, const char *a1, const char *a2,
                         const char *a3) {
  char *argv[] = {(char *)cli_path, "--db",     cs->db, (char *)a1,
                  (char *)a2,       (char *)a3, NULL};
  double t0 = now_ms();
  int status = wait_child(spawn(argv, cs->log, -1));

  if (!exited_ok(status)) {
    dump_log(cs->log);
    test_fail(__FILE__, __LINE__, "fieldsync %s failed (status 0x%x)", a1,
              (unsigned)status);
  }
  return now_ms() - t0;
}

TEST(crash_cli_import) {
  struct cli_state cs;
  uint64_t target = CLI_KILLS * test_scale();
  uint64_t attempts = 0;
  uint64_t kills = 0;
  uint64_t kills_committed = 0;
  uint64_t finished = 0;
  uint32_t file = 0;
  double t0 = now_ms();
  double t_start;
  double t_full;
  double t_end;
  double t_check;
  double checking = 0;
  char *version_argv[] = {(char *)cli_path, "--version", NULL};
  sqlite3 *s;

  if (cli_path == NULL)
    test_fail(__FILE__, __LINE__, "no CLI: pass its path or set FIELDSYNC_CLI");
  rng = test_seed();
  setup_dir();
  memset(&cs, 0, sizeof(cs));
  path_in(cs.db, sizeof(cs.db), "cli.db");
  path_in(cs.csv, sizeof(cs.csv), "import.csv");
  path_in(cs.log, sizeof(cs.log), "cli.log");
  cli_run_ok(&cs, "init", NULL, NULL);

  /* Calibrate the kill delays: how long the CLI takes to start, and how
   * long a whole import takes (this one is left to finish). */
  t_start = now_ms();
  ASSERT(exited_ok(wait_child(spawn(version_argv, cs.log, -1))));
  t_start = now_ms() - t_start;
  write_csv(cs.csv, file);
  t_full = cli_run_ok(&cs, "import", "observation", cs.csv);
  cli_check(&cs, file, true);
  file++;
  write_csv(cs.csv, file);
  t_end = cli_run_ok(&cs, "import", "observation", cs.csv);
  cli_check(&cs, file, true);
  if (t_end < t_full)
    t_full = t_end;
  printf("# cli: start %.0f ms, import of %d rows %.0f ms\n", t_start, CSV_ROWS,
         t_full);

  t_end = t_full;
  while (kills < target) {
    char *argv[] = {(char *)cli_path, "--db", cs.db, "import",
                    "observation",    cs.csv, NULL};
    double delay;
    int status;
    bool grew;
    pid_t pid;

    if (attempts >= 3 * target)
      test_fail(__FILE__, __LINE__,
                "only %llu kills in %llu imports: they end too fast",
                (unsigned long long)kills, (unsigned long long)attempts);
    attempts++;
    file++;
    write_csv(cs.csv, file);
    /* Mostly during the import, from start-up to t_end, sometimes during
     * start-up, when the previous import's WAL is being recovered. */
    if (test_rand_below(&rng, 8) == 0)
      delay = t_start * (double)test_rand_below(&rng, 1000) / 1000.0;
    else
      delay = t_start +
              (t_end - t_start) * (double)test_rand_below(&rng, 1000) / 1000.0;
    pid = spawn(argv, cs.log, -1);
    proc_sleep_ms(delay);
    ASSERT_OK(kill(pid, SIGKILL));
    status = wait_child(pid);
    /* t_end follows the import's real length (which varies with the
     * machine and grows with the database) so that about a fifth of the
     * imports outlive their delay: kills then land on the commit too. */
    if (killed_by_sigkill(status)) {
      kills++;
      if (delay > t_start)
        t_end *= 1.03;
    } else if (exited_ok(status)) {
      finished++;
      t_end = t_end * 0.9 > t_start + 1.0 ? t_end * 0.9 : t_start + 1.0;
    } else {
      dump_log(cs.log);
      test_fail(__FILE__, __LINE__, "import %u failed (status 0x%x)",
                (unsigned)file, (unsigned)status);
    }
    t_check = now_ms();
    grew = cli_check(&cs, file, exited_ok(status));
    checking += now_ms() - t_check;
    if (grew && killed_by_sigkill(status))
      kills_committed++;
  }

  /* Still usable: a whole import through the CLI, then records through
   * the library. */
  file++;
  write_csv(cs.csv, file);
  cli_run_ok(&cs, "import", "observation", cs.csv);
  cli_check(&cs, file, true);
  cs.records += lib_still_usable(cs.db);
  s = sql_open(cs.db);
  sqlcheck_integrity(s, cs.db);
  ASSERT_EQ(sql_int(s, "SELECT count(*) FROM records", NULL, 0), cs.records);
  sql_close(s);
  free(cs.known.id);

  printf("# cli: %llu kills in %llu imports (%llu committed before their "
         "kill, %llu finished first); %lld records; kill window %.0f ms; "
         "%.1f s (checks %.1f s)\n",
         (unsigned long long)kills, (unsigned long long)attempts,
         (unsigned long long)kills_committed, (unsigned long long)finished,
         (long long)cs.records, t_end, (now_ms() - t0) / 1e3, checking / 1e3);
}

/* ---- library kills ------------------------------------------------------ */

/* Ids the writers acknowledged, as 32 hex digits plus NUL. */
struct acked {
  char (*id)[33];
  size_t n;
  size_t cap;
};

/* The writer's output between reads: an unfinished line. */
struct reader {
  char line[40];
  size_t len;
};

static bool is_hex_id(const char *s, size_t n) {
  size_t i;

  if (n != 32)
    return false;
  for (i = 0; i < n; i++) {
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  }
  return true;
}

/* Takes bytes from the writer: each whole line is an acknowledged id. */
static void feed(struct reader *r, const char *buf, size_t n, struct acked *a) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (buf[i] != '\n') {
      if (r->len == sizeof(r->line))
        test_fail(__FILE__, __LINE__, "writer sent a line too long");
      r->line[r->len++] = buf[i];
      continue;
    }
    if (!is_hex_id(r->line, r->len))
      test_fail(__FILE__, __LINE__, "writer sent a bad line '%.*s'",
                (int)r->len, r->line);
    if (a->n == a->cap) {
      a->cap = a->cap == 0 ? 4096 : a->cap * 2;
      a->id = realloc(a->id, a->cap * sizeof(a->id[0]));
      ASSERT(a->id != NULL);
    }
    memcpy(a->id[a->n], r->line, 32);
    a->id[a->n][32] = '\0';
    a->n++;
    r->len = 0;
  }
}

enum pump_result { PUMP_DEADLINE, PUMP_WANTED, PUMP_EOF };

/* Reads the writer's pipe until the deadline (ms on now_ms()'s clock), end
 * of file, or (want > 0) until a holds want ids. */
static enum pump_result pump(int fd, double deadline, size_t want,
                             struct reader *r, struct acked *a) {
  char buf[8192];

  for (;;) {
    struct pollfd p;
    double left = deadline - now_ms();
    ssize_t n;
    int rc;

    if (want > 0 && a->n >= want)
      return PUMP_WANTED;
    if (left <= 0)
      return PUMP_DEADLINE;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    rc = poll(&p, 1, (int)left + 1);
    if (rc < 0 && errno != EINTR)
      test_fail(__FILE__, __LINE__, "poll: %s", strerror(errno));
    if (rc <= 0)
      continue;
    n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno != EINTR)
      test_fail(__FILE__, __LINE__, "read: %s", strerror(errno));
    if (n == 0)
      return PUMP_EOF;
    if (n > 0)
      feed(r, buf, (size_t)n, a);
  }
}

/* One writer's life: start it, read its acknowledgements until some time
 * after the first, SIGKILL it, then read what was still in the pipe. */
static void writer_round(const char *db, const char *log, struct acked *a) {
  char seed[32];
  char *argv[] = {(char *)writer_path, (char *)db, seed, NULL};
  struct reader r = {{0}, 0};
  size_t first = a->n;
  double life = (double)test_rand_below(&rng, WRITER_MAX_LIFE_MS + 1);
  enum pump_result pr;
  int fds[2];
  int status;
  pid_t pid;

  snprintf(seed, sizeof(seed), "%llu", (unsigned long long)test_rand(&rng));
  ASSERT_OK(pipe(fds));
  ASSERT_OK(fcntl(fds[0], F_SETFD, FD_CLOEXEC));
  ASSERT_OK(fcntl(fds[1], F_SETFD, FD_CLOEXEC));
  pid = spawn(argv, log, fds[1]);
  ASSERT_OK(close(fds[1]));
  pr = pump(fds[0], now_ms() + FIRST_ACK_MS, first + 1, &r, a);
  if (pr == PUMP_WANTED)
    pr = pump(fds[0], now_ms() + life, 0, &r, a);
  if (pr != PUMP_DEADLINE) {
    kill(pid, SIGKILL);
    wait_child(pid);
    dump_log(log);
    test_fail(__FILE__, __LINE__, "writer %s",
              pr == PUMP_EOF ? "ended by itself" : "acknowledged nothing");
  }
  ASSERT_OK(kill(pid, SIGKILL));
  /* Lines already in the pipe were written after their commit. A line cut
   * short by the kill stays in r and is not counted. */
  pr = pump(fds[0], now_ms() + DRAIN_MS, 0, &r, a);
  ASSERT_EQ(pr, PUMP_EOF);
  ASSERT_OK(close(fds[0]));
  status = wait_child(pid);
  if (!killed_by_sigkill(status)) {
    dump_log(log);
    test_fail(__FILE__, __LINE__, "writer ended with status 0x%x",
              (unsigned)status);
  }
}

/* After a kill: the file is intact and holds at least what was
 * acknowledged; the ids acknowledged since `first`, and a sample of the
 * older ones, read back through the library. */
static void writer_check(const char *path, const struct acked *a,
                         size_t first) {
  sqlite3 *s = sql_open(path);
  fieldsync_db *db;
  size_t i;

  sqlcheck_integrity(s, path);
  ASSERT_GE(sql_int(s, "SELECT count(*) FROM records", NULL, 0), (int64_t)a->n);
  sql_close(s);
  db = lib_open(path);
  for (i = first; i < a->n; i++)
    lib_expect(db, a->id[i]);
  for (i = 0; first > 0 && i < WRITER_RECHECK; i++)
    lib_expect(db, a->id[test_rand_below(&rng, first)]);
  ASSERT_OK(fieldsync_close(db));
}

TEST(crash_library_writer) {
  uint64_t target = WRITER_KILLS * test_scale();
  uint64_t kills = 0;
  struct acked a = {NULL, 0, 0};
  fieldsync_db *db;
  double t0 = now_ms();
  char path[300];
  char log[300];
  int64_t records;
  sqlite3 *s;
  size_t i;

  if (writer_path == NULL)
    test_fail(__FILE__, __LINE__,
              "no crash_writer: pass its path or set "
              "FIELDSYNC_CRASH_WRITER");
  rng = test_seed();
  setup_dir();
  path_in(path, sizeof(path), "writer.db");
  path_in(log, sizeof(log), "writer.log");
  while (kills < target) {
    size_t first = a.n;

    writer_round(path, log, &a);
    kills++;
    writer_check(path, &a, first);
  }

  /* Every acknowledged id, then the database still takes writes. */
  db = lib_open(path);
  for (i = 0; i < a.n; i++)
    lib_expect(db, a.id[i]);
  ASSERT_OK(fieldsync_close(db));
  s = sql_open(path);
  records = sql_int(s, "SELECT count(*) FROM records", NULL, 0);
  sql_close(s);
  records += lib_still_usable(path);
  s = sql_open(path);
  sqlcheck_integrity(s, path);
  ASSERT_EQ(sql_int(s, "SELECT count(*) FROM records", NULL, 0), records);
  sql_close(s);
  free(a.id);

  printf("# library: %llu kills; %zu acknowledged ids all present; %lld "
         "records; %.1f s\n",
         (unsigned long long)kills, a.n, (long long)records,
         (now_ms() - t0) / 1e3);
}

static const struct test_entry tests[] = {TEST_ENTRY(crash_cli_import)
                                              TEST_ENTRY(crash_library_writer)};

/* TEST_LIST's main, after taking the two program paths from the front of
 * the arguments (a path has a '/'; ctest passes absolute ones), so that a
 * test name or --list may follow them. */
int main(int argc, char **argv) {
  int skip = 0;

  cli_path = getenv("FIELDSYNC_CLI");
  writer_path = getenv("FIELDSYNC_CRASH_WRITER");
  if (argc > 2 && strchr(argv[1], '/') != NULL &&
      strchr(argv[2], '/') != NULL) {
    cli_path = argv[1];
    writer_path = argv[2];
    skip = 2;
  }
  argv[skip] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - skip,
                      argv + skip);
}
