/* SPDX-License-Identifier: MIT */
/* Tests of the `fieldsync` command-line tool, run as a user runs it: each
 * case forks and execs the real binary with captured stdout and stderr, in
 * its own directory under a mkdtemp one in /tmp that is removed at the end.
 * The binary is the first argument when it contains a '/', else
 * $FIELDSYNC_CLI. Every bad input must give a clear one-line message, a
 * non-zero exit and an unchanged database. */
#define _XOPEN_SOURCE 700
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* The binary under test and the directory holding every test's files. */
static char cli_path[PATH_MAX];
static char top_dir[PATH_MAX];

/* A growing, NUL-terminated byte buffer. */
struct buf {
  char *p;
  size_t n;
  size_t cap;
};

/* The outcome of the last run of the tool. */
static struct {
  int status;     /* exit status (a crash fails the test) */
  struct buf cmd; /* the command line, for failure messages */
  struct buf out;
  struct buf err;
} r;

/* Extra settings of a run. */
struct run_opts {
  const char *cwd;      /* directory to run in, or NULL */
  const char *out_path; /* file for stdout instead of a pipe, or NULL */
};

static void buf_add(struct buf *b, const char *p, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap == 0 ? 4096 : b->cap;
    char *q;

    while (b->n + n + 1 > cap)
      cap *= 2;
    q = realloc(b->p, cap);
    if (q == NULL)
      test_fail(__FILE__, __LINE__, "out of memory");
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->n, p, n);
  b->n += n;
  b->p[b->n] = '\0';
}

static void buf_reset(struct buf *b) {
  b->n = 0;
  buf_add(b, "", 0);
}

/* Runs the tool with "--db db" (unless db is NULL) and args. Fails the
 * test if the tool crashed or a sanitizer reported anything. Returns the
 * exit status; the output is in r.out and r.err. */
static int run_ex(const struct run_opts *o, const char *db,
                  const char *const *args) {
  const char *argv[64];
  size_t n = 0;
  size_t i;
  int out[2];
  int err[2];
  pid_t pid;
  int status;
  struct pollfd pfd[2];
  int open_fds;

  argv[n++] = cli_path;
  if (db != NULL) {
    argv[n++] = "--db";
    argv[n++] = db;
  }
  for (; *args != NULL; args++) {
    ASSERT_LT(n, 63);
    argv[n++] = *args;
  }
  argv[n] = NULL;
  buf_reset(&r.cmd);
  for (i = 0; i < n; i++) {
    buf_add(&r.cmd, i == 0 ? "fieldsync" : " ", i == 0 ? 9 : 1);
    if (i > 0)
      buf_add(&r.cmd, argv[i], strlen(argv[i]));
  }
  buf_reset(&r.out);
  buf_reset(&r.err);
  ASSERT_OK(pipe(out));
  ASSERT_OK(pipe(err));
  fflush(stdout);
  fflush(stderr);
  pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);

    if (o != NULL && o->out_path != NULL) {
      int f = open(o->out_path, O_WRONLY);

      if (f < 0)
        _exit(126);
      dup2(f, 1);
      close(f);
    } else {
      dup2(out[1], 1);
    }
    dup2(err[1], 2);
    if (null >= 0) {
      dup2(null, 0);
      close(null);
    }
    close(out[0]);
    close(out[1]);
    close(err[0]);
    close(err[1]);
    if (o != NULL && o->cwd != NULL && chdir(o->cwd) != 0)
      _exit(126);
    execv(cli_path, (char *const *)argv);
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  pfd[0].fd = out[0];
  pfd[1].fd = err[0];
  pfd[0].events = POLLIN;
  pfd[1].events = POLLIN;
  open_fds = 2;
  while (open_fds > 0) {
    if (poll(pfd, 2, -1) < 0) {
      ASSERT(errno == EINTR);
      continue;
    }
    for (i = 0; i < 2; i++) {
      char chunk[4096];
      ssize_t got;

      if (pfd[i].fd < 0 || pfd[i].revents == 0)
        continue;
      got = read(pfd[i].fd, chunk, sizeof(chunk));
      if (got > 0) {
        buf_add(i == 0 ? &r.out : &r.err, chunk, (size_t)got);
      } else if (got == 0 || errno != EINTR) {
        close(pfd[i].fd);
        pfd[i].fd = -1;
        open_fds--;
      }
    }
  }
  while (waitpid(pid, &status, 0) < 0)
    ASSERT(errno == EINTR);
  if (WIFSIGNALED(status))
    test_fail(__FILE__, __LINE__, "%s: killed by signal %d; stderr:\n%s",
              r.cmd.p, WTERMSIG(status), r.err.p);
  r.status = WEXITSTATUS(status);
  if (r.status == 126 || r.status == 127)
    test_fail(__FILE__, __LINE__, "could not run %s", cli_path);
  if (strstr(r.err.p, "Sanitizer") != NULL ||
      strstr(r.err.p, "runtime error:") != NULL)
    test_fail(__FILE__, __LINE__, "%s: sanitizer report:\n%s", r.cmd.p,
              r.err.p);
  return r.status;
}

static int run(const char *db, const char *const *args) {
  return run_ex(NULL, db, args);
}

/* Describes the last run for failure messages. */
#define RUN_FAIL(line, what)                                                   \
  test_fail(__FILE__, (line), "%s\n# %s: exit %d\n# stdout: %s\n# stderr: %s", \
            (what), r.cmd.p, r.status, r.out.p, r.err.p)

/* Expects success and a quiet stderr. */
#define OK(db, ...) ok_(__LINE__, (db), ARGS(__VA_ARGS__))
static void ok_(int line, const char *db, const char *const *args) {
  if (run(db, args) != 0)
    RUN_FAIL(line, "expected success");
  if (r.err.n != 0)
    RUN_FAIL(line, "expected nothing on stderr");
}

static bool is_hex(const char *s, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  }
  return true;
}

/* Expects stdout to be one 32-hex-digit id and copies it to id. */
#define TAKE_ID(id) take_id_(__LINE__, (id))
static void take_id_(int line, char id[33]) {
  if (r.out.n != 33 || !is_hex(r.out.p, 32) || r.out.p[32] != '\n')
    RUN_FAIL(line, "expected a 32-hex-digit id on stdout");
  memcpy(id, r.out.p, 32);
  id[32] = '\0';
}

/* Runs `add` and returns the new id in id. */
#define ADD(db, id, ...)                                                       \
  do {                                                                         \
    ok_(__LINE__, (db), ARGS("add", __VA_ARGS__));                             \
    take_id_(__LINE__, (id));                                                  \
  } while (0)

/* The database that FAILS() checks is left unchanged, or NULL. */
static const char *guard_db;

static char *snapshot(const char *db);

/* Expects the tool to fail with status (1: the operation failed, 2: bad
 * usage): nothing on stdout, and on stderr "fieldsync: " with `want`
 * (unless NULL) on one line, plus a "Try ..." hint for bad usage. When
 * guard_db is set, its export must be the same before and after. */
#define FAILS(status, want, db, ...)                                           \
  fails_(__LINE__, (status), (want), (db), ARGS(__VA_ARGS__))
static void fails_(int line, int status, const char *want, const char *db,
                   const char *const *args) {
  char *before = guard_db != NULL ? snapshot(guard_db) : NULL;
  const char *nl;

  if (run(db, args) != status)
    RUN_FAIL(line, status == 2 ? "expected a usage error (2)"
                               : "expected a failure (1)");
  if (r.out.n != 0)
    RUN_FAIL(line, "expected nothing on stdout");
  if (strncmp(r.err.p, "fieldsync: ", 11) != 0)
    RUN_FAIL(line, "expected stderr to start with 'fieldsync: '");
  nl = strchr(r.err.p, '\n');
  if (nl == NULL)
    RUN_FAIL(line, "expected a complete line on stderr");
  if (want != NULL &&
      (strstr(r.err.p, want) == NULL || strstr(r.err.p, want) > nl))
    test_fail(__FILE__, line,
              "expected '%s' in the message\n# %s\n# stderr: %s", want, r.cmd.p,
              r.err.p);
  if (status == 1 && nl[1] != '\0')
    RUN_FAIL(line, "expected exactly one line on stderr");
  if (status == 2 &&
      (strncmp(nl + 1, "Try 'fieldsync", 14) != 0 ||
       strchr(nl + 1, '\n') == NULL || strchr(nl + 1, '\n')[1] != '\0'))
    RUN_FAIL(line, "expected the message and one hint line");
  if (before != NULL) {
    char *cmd = strdup(r.cmd.p);
    char *after = snapshot(guard_db);

    if (strcmp(before, after) != 0)
      test_fail(__FILE__, line, "%s changed the database:\n%s\n---\n%s",
                cmd != NULL ? cmd : "?", before, after);
    free(cmd);
    free(after);
    free(before);
  }
}

/* Joins dir and name into out (cap bytes) and returns out. */
static const char *path_in(char *out, size_t cap, const char *dir,
                           const char *name) {
  ASSERT((size_t)snprintf(out, cap, "%s/%s", dir, name) < cap);
  return out;
}

/* A new directory for one test, under top_dir. */
static void new_dir(char *dir, size_t cap) {
  ASSERT((size_t)snprintf(dir, cap, "%s/t-XXXXXX", top_dir) < cap);
  ASSERT(mkdtemp(dir) != NULL);
}

/* Creates a database in a new directory; db gets its path. */
static void new_db(char *db, size_t cap) {
  char dir[PATH_MAX];

  new_dir(dir, sizeof(dir));
  path_in(db, cap, dir, "field.db");
  OK(db, "init");
  ASSERT_EQ(r.out.n, 33);
}

/* The database's content as `export --format json` prints it. */
static char *snapshot(const char *db) {
  char *s;

  if (run(db, ARGS("export", "--format", "json")) != 0)
    RUN_FAIL(__LINE__, "export for a snapshot failed");
  s = strdup(r.out.p);
  ASSERT(s != NULL);
  return s;
}

static json_t *parse(const char *s) {
  json_error_t e;
  json_t *j = json_loads(s, 0, &e);

  if (j == NULL)
    test_fail(__FILE__, __LINE__, "bad JSON (%s, line %d): %s", e.text, e.line,
              s);
  return j;
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");

  ASSERT(f != NULL);
  ASSERT_EQ(fwrite(text, 1, strlen(text), f), strlen(text));
  ASSERT_OK(fclose(f));
}

/* Reads a whole file (malloc'd, NUL-terminated); *n gets its length. */
static char *read_file(const char *path, size_t *n) {
  struct buf b = {NULL, 0, 0};
  char chunk[4096];
  int fd = open(path, O_RDONLY);
  ssize_t got;

  ASSERT(fd >= 0);
  buf_reset(&b);
  for (;;) {
    got = read(fd, chunk, sizeof(chunk));
    if (got <= 0)
      break;
    buf_add(&b, chunk, (size_t)got);
  }
  ASSERT(got == 0);
  close(fd);
  *n = b.n;
  return b.p;
}

/* Checks the documented shape of a record's JSON and returns its first
 * (display winner) version. */
static json_t *check_shape(json_t *rec, const char *collection,
                           const char *id) {
  json_t *versions = json_object_get(rec, "versions");
  json_t *v;
  size_t i;

  ASSERT(json_is_object(rec));
  ASSERT_STR_EQ(json_string_value(json_object_get(rec, "collection")),
                collection);
  if (id != NULL)
    ASSERT_STR_EQ(json_string_value(json_object_get(rec, "id")), id);
  ASSERT(json_is_boolean(json_object_get(rec, "deleted")));
  ASSERT(json_is_boolean(json_object_get(rec, "conflict")));
  ASSERT(json_is_array(versions));
  ASSERT_GE(json_array_size(versions), 1);
  json_array_foreach(versions, i, v) {
    json_t *vv = json_object_get(v, "vv");
    const char *replica;
    json_t *counter;
    const char *hash = json_string_value(json_object_get(v, "hash"));

    ASSERT(json_is_object(vv));
    ASSERT_GE(json_object_size(vv), 1);
    json_object_foreach(vv, replica, counter) {
      ASSERT_EQ(strlen(replica), 32);
      ASSERT(is_hex(replica, 32));
      ASSERT(json_is_integer(counter));
      ASSERT_GE(json_integer_value(counter), 1);
    }
    ASSERT(hash != NULL);
    ASSERT_GE(strlen(hash), 12);
    ASSERT(is_hex(hash, strlen(hash)));
    ASSERT(json_is_boolean(json_object_get(v, "deleted")));
    ASSERT(json_object_get(v, "author") != NULL);
    ASSERT(json_object_get(v, "time") != NULL);
    if (!json_is_true(json_object_get(v, "deleted")))
      ASSERT(json_is_object(json_object_get(v, "fields")));
  }
  return json_array_get(versions, 0);
}

/* `show ID --json` as parsed JSON (json_decref it). */
static json_t *show_json(const char *db, const char *id) {
  OK(db, "show", id, "--json");
  return parse(r.out.p);
}

/* The ids in a JSON array of records, checked for shape. */
static size_t count_ids(const char *json, const char *id) {
  json_t *a = parse(json);
  json_t *rec;
  size_t i;
  size_t hits = 0;

  ASSERT(json_is_array(a));
  json_array_foreach(a, i, rec) {
    ASSERT(json_is_object(rec));
    ASSERT(json_is_string(json_object_get(rec, "id")));
    ASSERT(json_is_array(json_object_get(rec, "versions")));
    if (id == NULL ||
        strcmp(json_string_value(json_object_get(rec, "id")), id) == 0)
      hits++;
  }
  json_decref(a);
  return hits;
}

static size_t count_lines(const char *s) {
  size_t n = 0;

  for (; *s != '\0'; s++)
    n += *s == '\n';
  return n;
}

/* ---- tests ------------------------------------------------------------- */

TEST(init_prints_replica_id) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  char id[33];
  char *before;
  size_t n1;
  size_t n2;
  char *bytes1;
  char *bytes2;

  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "a.db");
  OK(db, "init", "--name", "Tablet 7");
  TAKE_ID(id);
  before = snapshot(db);
  ASSERT_STR_EQ(before, "[]\n");
  bytes1 = read_file(db, &n1);
  /* A second init refuses, whatever the name, and changes nothing. */
  FAILS(1, "already initialised", db, "init");
  FAILS(1, id, db, "init", "--name", "other");
  bytes2 = read_file(db, &n2);
  ASSERT_EQ(n1, n2);
  ASSERT_MEM_EQ(bytes1, bytes2, n1);
  free(bytes1);
  free(bytes2);
  free(before);

  /* Two databases have different replica ids. */
  path_in(db, sizeof(db), dir, "b.db");
  OK(db, "init");
  ASSERT(strncmp(r.out.p, id, 32) != 0);
}

TEST(missing_database) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  struct stat st;

  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "none.db");
  FAILS(1, "fieldsync", db, "list");
  ASSERT(strstr(r.err.p, "init") != NULL);
  FAILS(1, "init", db, "add", "visit");
  FAILS(1, "init", db, "show", "0123456789abcdef0123456789abcdef");
  FAILS(1, "init", db, "export");
  FAILS(1, "init", db, "conflicts");
  /* Nothing was created by trying. */
  ASSERT(stat(db, &st) != 0 && errno == ENOENT);
}

TEST(default_database_paths) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  struct run_opts o = {NULL, NULL};
  struct stat st;
  char id[33];

  new_dir(dir, sizeof(dir));
  o.cwd = dir;
  /* No --db and no $FIELDSYNC_DB: ./fieldsync.db. */
  ASSERT_EQ(run_ex(&o, NULL, ARGS("list")), 1);
  ASSERT(strstr(r.err.p, "fieldsync init") != NULL);
  ASSERT_EQ(run_ex(&o, NULL, ARGS("init")), 0);
  path_in(db, sizeof(db), dir, "fieldsync.db");
  ASSERT_OK(stat(db, &st));
  ASSERT_EQ(run_ex(&o, NULL, ARGS("add", "visit", "kind=key")), 0);
  TAKE_ID(id);
  OK(db, "show", id);

  /* $FIELDSYNC_DB, overridden by --db. */
  path_in(db, sizeof(db), dir, "env.db");
  ASSERT_OK(setenv("FIELDSYNC_DB", db, 1));
  OK(NULL, "init");
  ASSERT_OK(stat(db, &st));
  OK(NULL, "list");
  ASSERT_EQ(r.out.n, 0);
  path_in(db, sizeof(db), dir, "fieldsync.db");
  OK(db, "show", id);
  ASSERT_OK(unsetenv("FIELDSYNC_DB"));
}

TEST(add_show) {
  char db[PATH_MAX];
  char visit[33];
  char obs[33];
  char vid[64];
  char want[160];
  json_t *rec;
  json_t *ver;
  json_t *fields;
  json_t *refs;
  const char *hash;

  new_db(db, sizeof(db));
  ADD(db, visit, "visit"); /* nothing is mandatory in a visit */
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid, "standard_code=OP9", "judgement=3",
      "evidence_text=MAR charts unsigned for two residents", "case_refs=C1",
      "case_refs=C2");

  rec = show_json(db, obs);
  ver = check_shape(rec, "observation", obs);
  ASSERT(json_is_false(json_object_get(rec, "deleted")));
  ASSERT(json_is_false(json_object_get(rec, "conflict")));
  ASSERT_EQ(json_array_size(json_object_get(rec, "versions")), 1);
  ASSERT(json_is_false(json_object_get(ver, "deleted")));
  fields = json_object_get(ver, "fields");
  ASSERT_STR_EQ(json_string_value(json_object_get(fields, "visit_id")), visit);
  ASSERT_STR_EQ(json_string_value(json_object_get(fields, "standard_code")),
                "OP9");
  ASSERT_EQ(json_integer_value(json_object_get(fields, "judgement")), 3);
  refs = json_object_get(fields, "case_refs");
  ASSERT_EQ(json_array_size(refs), 2); /* repeated: one value per FIELD= */
  ASSERT_STR_EQ(json_string_value(json_array_get(refs, 0)), "C1");
  ASSERT_STR_EQ(json_string_value(json_array_get(refs, 1)), "C2");
  hash = json_string_value(json_object_get(ver, "hash"));

  /* The readable form shows the same. */
  OK(db, "show", obs);
  ASSERT(strstr(r.out.p, "collection: observation\n") != NULL);
  snprintf(want, sizeof(want), "id: %s\n", obs);
  ASSERT(strstr(r.out.p, want) != NULL);
  ASSERT(strstr(r.out.p, "state: current\n") != NULL);
  snprintf(want, sizeof(want), "hash %.12s ", hash);
  ASSERT(strstr(r.out.p, want) != NULL);
  snprintf(want, sizeof(want), "\n  visit_id: %s\n", visit);
  ASSERT(strstr(r.out.p, want) != NULL);
  ASSERT(strstr(r.out.p, "\n  standard_code: OP9\n") != NULL);
  ASSERT(strstr(r.out.p, "\n  judgement: 3\n") != NULL);
  ASSERT(strstr(r.out.p, "\n  case_refs: C1, C2\n") != NULL);
  json_decref(rec);

  /* The empty visit. */
  rec = show_json(db, visit);
  check_shape(rec, "visit", visit);
  json_decref(rec);

  /* Enums by name (any case), booleans, dates, repeated strings. */
  ADD(db, visit, "visit", "kind=Random", "announced=no",
      "planned_date=2024-02-29", "inspectors=Ann", "inspectors=Bo");
  rec = show_json(db, visit);
  fields = json_object_get(check_shape(rec, "visit", visit), "fields");
  ASSERT_STR_EQ(json_string_value(json_object_get(fields, "kind")), "random");
  ASSERT(json_is_false(json_object_get(fields, "announced")));
  ASSERT_STR_EQ(json_string_value(json_object_get(fields, "planned_date")),
                "2024-02-29");
  ASSERT_EQ(json_array_size(json_object_get(fields, "inspectors")), 2);
  json_decref(rec);

  /* Text from a record cannot send escape sequences to the terminal. */
  ADD(db, obs, "observation", vid,
      "evidence_text=line one\nline two\x1b[31m red");
  OK(db, "show", obs);
  ASSERT(strchr(r.out.p, '\x1b') == NULL);
  ASSERT(strstr(r.out.p, "line one\n    line two\\x1b[31m red\n") != NULL);
  OK(db, "list");
  ASSERT(strchr(r.out.p, '\x1b') == NULL);
}

TEST(list_and_filters) {
  char db[PATH_MAX];
  char v1[33];
  char v2[33];
  char o1[33];
  char o2[33];
  char s1[33];
  char s2[33];
  char req[33];
  char kv[3][64];
  char opt[64];
  const char *line;

  new_db(db, sizeof(db));
  ADD(db, v1, "visit", "kind=key");
  ADD(db, v2, "visit", "kind=random");
  snprintf(kv[0], sizeof(kv[0]), "visit_id=%s", v1);
  snprintf(kv[1], sizeof(kv[1]), "visit_id=%s", v2);
  ADD(db, o1, "observation", kv[0], "standard_code=OP1",
      "evidence_text=Residents said the food is good and varied");
  ADD(db, o2, "observation", kv[1], "standard_code=OP2");
  ADD(db, s1, "service", "name=Oak House");
  ADD(db, s2, "service", "name=Elm Lodge");
  snprintf(kv[2], sizeof(kv[2]), "service_id=%s", s1);
  ADD(db, req, "requirement", kv[2], "text=Sign MAR charts");

  OK(db, "list");
  ASSERT_EQ(count_lines(r.out.p), 7);
  line = strstr(r.out.p, o1);
  ASSERT(line != NULL);
  ASSERT(strncmp(line + 32, "  observation", 13) == 0);
  ASSERT(strstr(line, "standard_code=OP1") != NULL);
  ASSERT(strstr(line, "...") != NULL); /* the long text is shortened */
  ASSERT(strstr(r.out.p, "name=\"Oak House\"") != NULL);

  OK(db, "list", "observation");
  ASSERT_EQ(count_lines(r.out.p), 2);
  ASSERT(strstr(r.out.p, o1) != NULL && strstr(r.out.p, o2) != NULL);

  OK(db, "list", "--visit", v1);
  ASSERT(strstr(r.out.p, o1) != NULL);
  ASSERT(strstr(r.out.p, o2) == NULL);
  ASSERT(strstr(r.out.p, v2) == NULL);
  OK(db, "list", "observation", "--visit", v1, "--json");
  ASSERT_EQ(count_ids(r.out.p, NULL), 1);
  ASSERT_EQ(count_ids(r.out.p, o1), 1);
  snprintf(opt, sizeof(opt), "--visit=%s", v2);
  OK(db, "list", "--json", opt, "observation");
  ASSERT_EQ(count_ids(r.out.p, NULL), 1);
  ASSERT_EQ(count_ids(r.out.p, o2), 1);

  OK(db, "list", "--json", "--service", s1);
  ASSERT_EQ(count_ids(r.out.p, req), 1);
  ASSERT_EQ(count_ids(r.out.p, s2), 0);
  ASSERT_EQ(count_ids(r.out.p, o1), 0);

  OK(db, "list", "--json");
  ASSERT_EQ(count_ids(r.out.p, NULL), 7);
  {
    json_t *a = parse(r.out.p);
    json_t *rec;
    size_t i;

    json_array_foreach(a, i, rec) {
      check_shape(rec, json_string_value(json_object_get(rec, "collection")),
                  NULL);
    }
    json_decref(a);
  }

  OK(db, "list", "concern");
  ASSERT_EQ(r.out.n, 0);
  OK(db, "list", "concern", "--json");
  ASSERT_EQ(count_ids(r.out.p, NULL), 0);
  ASSERT_STR_EQ(r.out.p, "[]\n");
}

/* The counter of replica in the first version's vector of rec. */
static json_int_t counter_of(json_t *rec, const char *replica) {
  json_t *ver = json_array_get(json_object_get(rec, "versions"), 0);

  return json_integer_value(
      json_object_get(json_object_get(ver, "vv"), replica));
}

TEST(edit_record) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  char replica[33];
  char visit[33];
  char obs[33];
  char vid[64];
  char *hash0;
  json_t *rec;
  json_t *fields;
  json_t *refs;
  json_int_t c0;

  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "e.db");
  OK(db, "init");
  TAKE_ID(replica);
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid, "standard_code=OP9", "judgement=2",
      "evidence_text=first look", "case_refs=C1", "case_refs=C2");
  rec = show_json(db, obs);
  hash0 = strdup(json_string_value(json_object_get(
      json_array_get(json_object_get(rec, "versions"), 0), "hash")));
  c0 = counter_of(rec, replica);
  ASSERT_GE(c0, 1);
  json_decref(rec);

  /* Set, replace a repeated field's list, clear: in one new version. */
  OK(db, "edit", obs, "judgement=4", "case_refs=C9", "--clear",
     "evidence_text");
  ASSERT_EQ(r.out.n, 0);
  rec = show_json(db, obs);
  fields = json_object_get(check_shape(rec, "observation", obs), "fields");
  ASSERT_EQ(json_array_size(json_object_get(rec, "versions")), 1);
  ASSERT_EQ(json_integer_value(json_object_get(fields, "judgement")), 4);
  ASSERT_STR_EQ(json_string_value(json_object_get(fields, "standard_code")),
                "OP9");
  ASSERT(json_object_get(fields, "evidence_text") == NULL);
  refs = json_object_get(fields, "case_refs");
  ASSERT_EQ(json_array_size(refs), 1);
  ASSERT_STR_EQ(json_string_value(json_array_get(refs, 0)), "C9");
  ASSERT(
      strcmp(json_string_value(json_object_get(
                 json_array_get(json_object_get(rec, "versions"), 0), "hash")),
             hash0) != 0);
  ASSERT_GT(counter_of(rec, replica), c0);
  json_decref(rec);
  free(hash0);

  /* Several values for a repeated field; changes apply in order. */
  OK(db, "edit", obs, "case_refs=C3", "case_refs=C4", "judgement=1",
     "--clear=judgement");
  rec = show_json(db, obs);
  fields = json_object_get(check_shape(rec, "observation", obs), "fields");
  ASSERT_EQ(json_array_size(json_object_get(fields, "case_refs")), 2);
  ASSERT(json_object_get(fields, "judgement") == NULL);
  json_decref(rec);

  /* FIELD= is an empty string for a string field. */
  OK(db, "edit", obs, "evidence_text=");
  rec = show_json(db, obs);
  fields = json_object_get(check_shape(rec, "observation", obs), "fields");
  ASSERT(json_object_get(fields, "evidence_text") == NULL ||
         strcmp(json_string_value(json_object_get(fields, "evidence_text")),
                "") == 0);
  json_decref(rec);

  OK(db, "edit", visit, "--clear", "kind", "status=in_progress");
  rec = show_json(db, visit);
  fields = json_object_get(check_shape(rec, "visit", visit), "fields");
  ASSERT(json_object_get(fields, "kind") == NULL);
  ASSERT_STR_EQ(json_string_value(json_object_get(fields, "status")),
                "in_progress");
  json_decref(rec);
}

TEST(delete_record) {
  char db[PATH_MAX];
  char visit[33];
  char obs[33];
  char vid[64];
  json_t *rec;
  json_t *ver;

  new_db(db, sizeof(db));
  ADD(db, visit, "visit");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid, "standard_code=OP9");
  OK(db, "delete", obs);
  ASSERT_EQ(r.out.n, 0);
  OK(db, "list");
  ASSERT(strstr(r.out.p, obs) == NULL);
  ASSERT(strstr(r.out.p, visit) != NULL);
  OK(db, "list", "--deleted");
  ASSERT(strstr(r.out.p, obs) != NULL);
  ASSERT(strstr(r.out.p, "[deleted]") != NULL);

  rec = show_json(db, obs);
  ver = check_shape(rec, "observation", obs);
  ASSERT(json_is_true(json_object_get(rec, "deleted")));
  ASSERT(json_is_true(json_object_get(ver, "deleted")));
  json_decref(rec);
  OK(db, "show", obs);
  ASSERT(strstr(r.out.p, "state: deleted\n") != NULL);

  guard_db = db;
  FAILS(1, "delete: ", db, "delete", obs);
  FAILS(1, "edit: ", db, "edit", obs, "judgement=2");
  guard_db = NULL;
}

TEST(export_json_csv) {
  char db[PATH_MAX];
  char visit[33];
  char o1[33];
  char o2[33];
  char vid[64];
  struct run_opts full = {NULL, "/dev/full"};
  struct stat st;

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, o1, "observation", vid, "standard_code=OP9", "case_refs=C1",
      "case_refs=C2", "evidence_text=Said: \"fine\", mostly");
  ADD(db, o2, "observation", vid, "standard_code=OP10");

  OK(db, "export");
  ASSERT_EQ(count_ids(r.out.p, NULL), 3);
  ASSERT_EQ(count_ids(r.out.p, o1), 1);
  OK(db, "export", "--format", "json", "observation");
  ASSERT_EQ(count_ids(r.out.p, NULL), 2);

  OK(db, "export", "--format=csv", "observation");
  ASSERT(strncmp(r.out.p, "id,", 3) == 0);
  ASSERT(strstr(r.out.p, "standard_code") < strchr(r.out.p, '\n'));
  ASSERT_EQ(count_lines(r.out.p), 3);
  ASSERT(strstr(r.out.p, o1) != NULL);
  ASSERT(strstr(r.out.p, o2) != NULL);
  ASSERT(strstr(r.out.p, "C1|C2") != NULL);
  ASSERT(strstr(r.out.p, "\"Said: \"\"fine\"\", mostly\"") != NULL);

  FAILS(2, "COLLECTION", db, "export", "--format", "csv");
  FAILS(2, "xml", db, "export", "--format", "xml");
  FAILS(1, "nosuch", db, "export", "nosuch");

  /* A full disk is a failure, not a silent truncation. */
  if (stat("/dev/full", &st) == 0) {
    ASSERT_EQ(run_ex(&full, db, ARGS("export")), 1);
    ASSERT(strstr(r.err.p, "cannot write") != NULL);
    ASSERT_EQ(run_ex(&full, db, ARGS("list", "--json")), 1);
    ASSERT(strstr(r.err.p, "cannot write") != NULL);
    ASSERT_EQ(run_ex(&full, db, ARGS("show", o1)), 1);
    ASSERT_EQ(count_lines(r.err.p), 1);
  }
}

/* Fills dir/name with text and returns the path in path. */
static const char *make_file(char *path, size_t cap, const char *dir,
                             const char *name, const char *text) {
  path_in(path, cap, dir, name);
  write_file(path, text);
  return path;
}

TEST(import_files) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  char path[PATH_MAX];
  char visit[33];
  char text[512];
  json_t *a;
  json_t *rec;
  size_t i;
  size_t with_two = 0;

  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "i.db");
  OK(db, "init");
  ADD(db, visit, "visit");
  snprintf(text, sizeof(text),
           "visit_id,standard_code,judgement,case_refs\n"
           "%s,OP9,3,C1|C2\n"
           "%s,OP10,2,C3\n",
           visit, visit);
  OK(db, "import", "observation",
     make_file(path, sizeof(path), dir, "obs.csv", text));
  ASSERT_STR_EQ(r.out.p, "imported 2 records\n");
  OK(db, "list", "observation", "--json");
  a = parse(r.out.p);
  ASSERT_EQ(json_array_size(a), 2);
  json_array_foreach(a, i, rec) {
    json_t *f = json_object_get(
        json_array_get(json_object_get(rec, "versions"), 0), "fields");

    ASSERT_STR_EQ(json_string_value(json_object_get(f, "visit_id")), visit);
    with_two += json_array_size(json_object_get(f, "case_refs")) == 2;
  }
  ASSERT_EQ(with_two, 1);
  json_decref(a);

  OK(db, "import", "visit",
     make_file(path, sizeof(path), dir, "visits.jsonl",
               "{\"kind\":\"key\",\"announced\":true}\n"
               "{\"kind\":\"random\",\"planned_date\":\"2024-05-01\","
               "\"inspectors\":[\"Ann\",\"Bo\"]}\n"));
  ASSERT_STR_EQ(r.out.p, "imported 2 records\n");
  OK(db, "list", "visit", "--json");
  ASSERT_EQ(count_ids(r.out.p, NULL), 3);

  OK(db, "import", "service",
     make_file(path, sizeof(path), dir, "one.csv", "name\nOak House\n"));
  ASSERT_STR_EQ(r.out.p, "imported 1 record\n");
}

TEST(import_bad_row) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  char path[PATH_MAX];
  char visit[33];
  char text[512];

  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "i.db");
  OK(db, "init");
  ADD(db, visit, "visit");
  guard_db = db;

  /* The bad row is at line 3; the good one before it is not kept. */
  snprintf(text, sizeof(text),
           "visit_id,standard_code,judgement\n"
           "%s,OP9,3\n"
           "%s,OP10,lots\n"
           "%s,OP11,2\n",
           visit, visit, visit);
  FAILS(1, "line 3", db, "import", "observation",
        make_file(path, sizeof(path), dir, "bad.csv", text));
  FAILS(1, "line 3", db, "import", "visit",
        make_file(path, sizeof(path), dir, "bad.jsonl",
                  "{\"kind\":\"key\"}\n"
                  "{\"kind\":\"random\"}\n"
                  "{\"kind\":\"weekly\"}\n"
                  "{\"kind\":\"key\"}\n"));
  FAILS(1, "line 3", db, "import", "visit",
        make_file(path, sizeof(path), dir, "broken.jsonl",
                  "{\"kind\":\"key\"}\n"
                  "{\"kind\":\"random\"}\n"
                  "{\"kind\":\n"));
  FAILS(
      1, "colour", db, "import", "visit",
      make_file(path, sizeof(path), dir, "cols.csv", "kind,colour\nkey,red\n"));
  FAILS(1, "missing.csv", db, "import", "visit",
        (path_in(path, sizeof(path), dir, "missing.csv"), path));
  FAILS(1, "nosuch", db, "import", "nosuch",
        make_file(path, sizeof(path), dir, "ok.csv", "kind\nkey\n"));
  guard_db = NULL;
  OK(db, "list", "observation");
  ASSERT_EQ(r.out.n, 0);
  OK(db, "list", "visit", "--json");
  ASSERT_EQ(count_ids(r.out.p, NULL), 1);
}

/* What `export --format csv` writes, `import` reads back: the header
 * promises "id, then fields", so the same records with the same fields
 * arrive in a new database. */
TEST(csv_export_reimports) {
  char dir[PATH_MAX];
  char a[PATH_MAX];
  char b[PATH_MAX];
  char path[PATH_MAX];
  char visit[33];
  char obs[33];
  char vid[64];
  json_t *ja;
  json_t *jb;
  json_t *rec;
  size_t i;

  new_dir(dir, sizeof(dir));
  path_in(a, sizeof(a), dir, "a.db");
  path_in(b, sizeof(b), dir, "b.db");
  OK(a, "init");
  OK(b, "init");
  ADD(a, visit, "visit");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(a, obs, "observation", vid, "standard_code=OP9", "judgement=2",
      "case_refs=C1", "case_refs=C2",
      "evidence_text=Said \"fine\", mostly\nand more");
  ADD(a, obs, "observation", vid, "standard_code=OP10");
  OK(a, "export", "--format", "csv", "observation");
  make_file(path, sizeof(path), dir, "obs.csv", r.out.p);
  OK(b, "import", "observation", path);
  ASSERT_STR_EQ(r.out.p, "imported 2 records\n");

  OK(a, "list", "observation", "--json");
  ja = parse(r.out.p);
  OK(b, "list", "observation", "--json");
  jb = parse(r.out.p);
  ASSERT_EQ(json_array_size(ja), json_array_size(jb));
  json_array_foreach(ja, i, rec) {
    json_t *other = json_array_get(jb, i);

    ASSERT(
        json_equal(json_object_get(rec, "id"), json_object_get(other, "id")));
    ASSERT(json_equal(
        json_object_get(json_array_get(json_object_get(rec, "versions"), 0),
                        "fields"),
        json_object_get(json_array_get(json_object_get(other, "versions"), 0),
                        "fields")));
  }
  json_decref(ja);
  json_decref(jb);
}

/* Fails the test unless path's bytes equal want (n bytes). */
static void same_bytes(const char *path, const char *want, size_t n) {
  size_t got_n;
  char *got = read_file(path, &got_n);

  ASSERT_EQ(got_n, n);
  ASSERT_MEM_EQ(got, want, n);
  free(got);
}

/* Fails the test if db has a non-empty write-ahead log, so that its main
 * file is the whole database (a clean close checkpoints the log). */
static void no_wal(const char *db) {
  char wal[PATH_MAX];
  struct stat st;

  snprintf(wal, sizeof(wal), "%s-wal", db);
  if (stat(wal, &st) == 0 && st.st_size > 0)
    test_fail(__FILE__, __LINE__, "%s has %lld bytes after a clean close", wal,
              (long long)st.st_size);
}

/* Writes n bytes at offset off of path. */
static void poke(const char *path, long off, const void *p, size_t n) {
  int fd = open(path, O_WRONLY);

  ASSERT(fd >= 0);
  ASSERT_EQ(pwrite(fd, p, n, off), (ssize_t)n);
  ASSERT_OK(close(fd));
}

/* Every command on a file that is not a usable database fails with one
 * line naming the problem (want) and leaves the file as it was. */
static void refuses(const char *path, const char *want) {
  size_t n;
  char *bytes = read_file(path, &n);

  FAILS(1, want, path, "list");
  FAILS(1, want, path, "add", "visit", "kind=key");
  FAILS(1, want, path, "show", "0123456789abcdef0123456789abcdef");
  FAILS(1, want, path, "export");
  FAILS(1, want, path, "conflicts");
  FAILS(1, "exists", path, "init");
  same_bytes(path, bytes, n);
  free(bytes);
}

TEST(bad_database_files) {
  char dir[PATH_MAX];
  char path[PATH_MAX];
  char text[8192];
  char garbage[4096];
  char id[33];
  size_t i;
  struct stat st;
  static const unsigned char newer[4] = {0, 0, 0x27, 0x0f}; /* 9999 */

  new_dir(dir, sizeof(dir));

  /* A text file. */
  text[0] = '\0';
  for (i = 0; i < 100; i++)
    strncat(text, "This is not a database, just notes.\n",
            sizeof(text) - strlen(text) - 1);
  refuses(make_file(path, sizeof(path), dir, "notes.db", text),
          "not a fieldsync database");

  /* An empty file is not quietly made into a database. */
  refuses(make_file(path, sizeof(path), dir, "empty.db", ""), NULL);
  FAILS(1, "empty", path, "init");

  /* A database with garbage over most of its first page. */
  path_in(path, sizeof(path), dir, "corrupt.db");
  OK(path, "init");
  ADD(path, id, "visit", "kind=key");
  ADD(path, id, "service", "name=Oak House");
  no_wal(path);
  for (i = 0; i < sizeof(garbage); i++)
    garbage[i] = (char)(i * 37 + 11);
  poke(path, 100, garbage, 4096);
  refuses(path, NULL);

  /* A directory. */
  path_in(path, sizeof(path), dir, "dir.db");
  ASSERT_OK(mkdir(path, 0700));
  FAILS(1, NULL, path, "list");
  FAILS(1, NULL, path, "add", "visit");
  FAILS(1, "already exists", path, "init");

  /* Paths where no database can be made. A failed init names the path
   * and does not suggest running init. */
  FAILS(1, "/proc/x.db", "/proc/x.db", "init");
  ASSERT(strstr(r.err.p, "create one") == NULL);
  FAILS(1, NULL, "/proc/x.db", "list");
  path_in(path, sizeof(path), dir, "no/such/dir/x.db");
  FAILS(1, path, path, "init");
  ASSERT(strstr(r.err.p, "create one") == NULL);
  FAILS(1, "init", path, "list");
  path_in(path, sizeof(path), dir, "notes.db/x.db");
  FAILS(1, path, path, "init");
  ASSERT(stat(path, &st) != 0);

  /* A database from a newer schema: PRAGMA user_version is the 4-byte
   * big-endian integer at offset 60. */
  path_in(path, sizeof(path), dir, "newer.db");
  OK(path, "init");
  ADD(path, id, "visit", "kind=key");
  no_wal(path);
  poke(path, 60, newer, 4);
  refuses(path, "newer");
}

/* The message for a file that is not a database says so once, cleanly
 * (it once came out as "not a fieldsync database (not a fieldsync database
 * ( is not a database)"). */
TEST(not_a_database_message) {
  char dir[PATH_MAX];
  char path[PATH_MAX];
  const char *hit;

  new_dir(dir, sizeof(dir));
  make_file(path, sizeof(path), dir, "notes.db",
            "These are notes, not a database; long enough to have a "
            "header's worth of bytes in them, which SQLite reads first.\n");
  FAILS(1, "not a fieldsync database", path, "list");
  hit = strstr(r.err.p, "not a fieldsync database");
  ASSERT(strstr(hit + 1, "not a fieldsync database") == NULL);
  ASSERT(strstr(r.err.p, "( ") == NULL);
}

TEST(bad_ids) {
  char db[PATH_MAX];
  char visit[33];
  size_t i;
  static const char unknown[] = "0123456789abcdef0123456789abcdef";
  static const char *const bad[] = {
      "xyz",
      "0123456789abcdef0123456789abcde",   /* 31 digits */
      "0123456789abcdef0123456789abcdef0", /* 33 digits */
      "g123456789abcdef0123456789abcdef",  /* not hex */
      "0123456789abcdef 123456789abcdef",
      "",
  };

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  guard_db = db;
  FAILS(1, "show: ", db, "show", unknown);
  FAILS(1, "edit: ", db, "edit", unknown, "kind=key");
  FAILS(1, "delete: ", db, "delete", unknown);
  FAILS(1, "resolve: ", db, "resolve", unknown, "--keep", "12345678");
  FAILS(1, "resolve: ", db, "resolve", unknown, "kind=key");
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    FAILS(1, "show: ", db, "show", bad[i]);
    FAILS(1, "edit: ", db, "edit", bad[i], "kind=key");
    FAILS(1, "delete: ", db, "delete", bad[i]);
    FAILS(1, "list: ", db, "list", "--visit", bad[i]);
  }
  FAILS(1, "list: ", db, "list", "--service", "nothex");
  guard_db = NULL;
}

TEST(bad_fields_values) {
  char db[PATH_MAX];
  char visit[33];
  char vid[64];

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  guard_db = db;
  FAILS(1, "nosuch", db, "add", "nosuch", "a=b");
  FAILS(1, "nosuch", db, "list", "nosuch");
  FAILS(1, "nosuch", db, "fields", "nosuch");
  FAILS(1, "colour", db, "add", "visit", "colour=red");
  FAILS(1, "announced", db, "add", "visit", "announced=maybe");
  FAILS(1, "kind", db, "add", "visit", "kind=weekly");
  FAILS(1, "planned_date", db, "add", "visit", "planned_date=2023-02-29");
  FAILS(1, "rating_stars", db, "add", "visit", "rating_stars=-1");
  FAILS(1, "judgement", db, "add", "observation", vid, "judgement=abc");
  FAILS(1, "judgement", db, "add", "observation", vid, "judgement=9");
  FAILS(1, "visit_id", db, "add", "observation", "visit_id=xyz");
  FAILS(1, "visit_id", db, "add", "observation", "standard_code=OP9");
  FAILS(1, "colour", db, "edit", visit, "colour=red");
  FAILS(1, "colour", db, "edit", visit, "--clear", "colour");
  FAILS(1, "kind", db, "edit", visit, "kind=weekly");
  /* Not FIELD=VALUE: bad usage, named, before the database is opened. */
  FAILS(2, "'kind'", db, "add", "visit", "kind");
  FAILS(2, "'=key'", db, "add", "visit", "=key");
  FAILS(2, "'announced'", db, "edit", visit, "kind=key", "announced");
  FAILS(2, "'x'", db, "resolve", visit, "x");
  guard_db = NULL;
}

TEST(usage_errors) {
  char db[PATH_MAX];
  char visit[33];

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  guard_db = db;
  FAILS(2, "frobnicate", db, "frobnicate");
  fails_(__LINE__, 2, "no command", db, (const char *const[]){NULL});
  FAILS(2, "--bogus", db, "--bogus", "list");
  FAILS(2, "--bogus", db, "list", "--bogus");
  FAILS(2, "-x", db, "list", "-x");
  FAILS(2, "after the command", db, "--json", "list");
  FAILS(2, "missing ID", db, "show");
  FAILS(2, "missing ID", db, "edit");
  FAILS(2, "missing COLLECTION", db, "add");
  FAILS(2, "missing COLLECTION", db, "fields");
  FAILS(2, "missing FILE", db, "import", "visit");
  FAILS(2, "--visit", db, "list", "--visit");
  FAILS(2, "--visit", db, "list", "--visit", "--json");
  FAILS(2, "--db", db, "list", "--db");
  FAILS(2, "--db", NULL, "--db");
  FAILS(2, "--json", db, "show", visit, "--json=yes");
  FAILS(2, "'extra'", db, "show", visit, "extra");
  FAILS(2, "'extra'", db, "delete", visit, "extra");
  FAILS(2, "'extra'", db, "list", "visit", "extra");
  FAILS(2, "'extra'", db, "collections", "extra");
  FAILS(2, "'extra'", db, "import", "visit", "f.csv", "extra");
  FAILS(2, "nothing to change", db, "edit", visit);
  FAILS(2, "--keep", db, "resolve", visit);
  FAILS(2, "not both", db, "resolve", visit, "--keep", "12345678", "kind=key");
  FAILS(2, "--json", db, "add", "visit", "--json");
  guard_db = NULL;
  /* "--" ends the options. */
  FAILS(1, "--json", db, "add", "visit", "--", "--json=1");
}

TEST(help_everywhere) {
  char dir[PATH_MAX];
  char db[PATH_MAX];
  struct stat st;
  size_t i;
  static const char *const cmds[] = {
      "init",      "add",     "edit",    "delete", "show",       "list",
      "conflicts", "resolve", "export",  "import", "fields",     "collections",
      "help",      "status",  "refused", "retry",  "quarantine",
  };

  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "none.db");
  for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
    char want[64];

    snprintf(want, sizeof(want), "usage: fieldsync [--db PATH] %s", cmds[i]);
    OK(db, cmds[i], "--help");
    ASSERT(strncmp(r.out.p, want, strlen(want)) == 0);
    OK(db, cmds[i], "-h");
    ASSERT(strncmp(r.out.p, want, strlen(want)) == 0);
    OK(db, "help", cmds[i]);
    ASSERT(strncmp(r.out.p, want, strlen(want)) == 0);
    /* Help wins over other arguments, good or bad. */
    OK(db, cmds[i], "x", "--bogus", "--help");
    ASSERT(strncmp(r.out.p, want, strlen(want)) == 0);
  }
  OK(db, "--help");
  for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
    ASSERT(strstr(r.out.p, cmds[i]) != NULL);
  OK(db, "-h");
  ASSERT(strncmp(r.out.p, "usage: fieldsync", 16) == 0);
  OK(db, "help");
  ASSERT(strncmp(r.out.p, "usage: fieldsync", 16) == 0);
  OK(NULL, "--version");
  ASSERT(strncmp(r.out.p, "fieldsync 0.1.0", 15) == 0);
  FAILS(2, "'frob'", db, "help", "frob");
  /* Asking for help creates nothing. */
  ASSERT(stat(db, &st) != 0 && errno == ENOENT);
}

TEST(conflicts_without_sync) {
  char db[PATH_MAX];
  char visit[33];
  char obs[33];
  char vid[64];
  char hash[13];
  json_t *rec;
  json_t *a;

  new_db(db, sizeof(db));
  OK(db, "conflicts");
  ASSERT_EQ(r.out.n, 0);
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid, "standard_code=OP9");
  OK(db, "conflicts");
  ASSERT_EQ(r.out.n, 0);
  OK(db, "conflicts", "--json");
  a = parse(r.out.p);
  ASSERT(json_is_array(a));
  ASSERT_EQ(json_array_size(a), 0);
  json_decref(a);

  rec = show_json(db, obs);
  snprintf(hash, sizeof(hash), "%s",
           json_string_value(json_object_get(
               json_array_get(json_object_get(rec, "versions"), 0), "hash")));
  json_decref(rec);
  guard_db = db;
  FAILS(1, "resolve: ", db, "resolve", obs, "--keep", hash);
  FAILS(1, "resolve: ", db, "resolve", obs, "judgement=2");
  FAILS(1, "resolve: ", db, "resolve", obs, "--keep", "zz");
  guard_db = NULL;
}

TEST(fields_and_collections) {
  char dir[PATH_MAX];
  char db[PATH_MAX];

  /* collections needs no database. */
  new_dir(dir, sizeof(dir));
  path_in(db, sizeof(db), dir, "none.db");
  OK(db, "collections");
  ASSERT_EQ(count_lines(r.out.p), 8);
  ASSERT(strstr(r.out.p, "observation\n") != NULL);
  ASSERT(strstr(r.out.p, "interview_note\n") != NULL);

  new_db(db, sizeof(db));
  OK(db, "fields", "observation");
  ASSERT_EQ(count_lines(r.out.p), 7);
  ASSERT(strncmp(r.out.p, "visit_id ", 9) == 0);
  ASSERT(strstr(r.out.p, "\njudgement ") != NULL);
  ASSERT(strstr(r.out.p, "\ncase_refs ") != NULL);
  OK(db, "fields", "visit");
  ASSERT(strstr(r.out.p, "key") != NULL);
}

/* ---- a scripted sync server -------------------------------------------- */

/* The tool is tested as a user runs it, so its server is a child process
 * speaking the wire protocol (proto/PROTOCOL.md) directly, with a few
 * lines of protobuf encoding: enough for Hello/Welcome, Push/PushAck,
 * Pull/Changes and Error, as each test scripts them. */

enum srv_mode {
  SRV_ACCEPT, /* every pushed version applied; nothing to pull */
  SRV_REFUSE, /* every pushed version refused with ERR_FORBIDDEN */
  SRV_REMOVE, /* as SRV_REFUSE, and every Changes removes one visit */
  SRV_REVOKE  /* the Hello gets Error ERR_REVOKED */
};

struct srv {
  pid_t pid;
  unsigned port;
  char addr[32];
};

struct pb {
  uint8_t p[65536];
  size_t n;
};

static void pb_varint(struct pb *b, uint64_t v) {
  do {
    ASSERT_LT(b->n, sizeof(b->p));
    b->p[b->n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v != 0);
}

static void pb_uint(struct pb *b, unsigned field, uint64_t v) {
  pb_varint(b, (uint64_t)field << 3);
  pb_varint(b, v);
}

static void pb_bytes(struct pb *b, unsigned field, const void *p, size_t n) {
  pb_varint(b, (uint64_t)field << 3 | 2);
  pb_varint(b, n);
  ASSERT_LE(b->n + n, sizeof(b->p));
  memcpy(b->p + b->n, p, n);
  b->n += n;
}

/* The next field of a message: 1, or 0 at its end. Length-delimited
 * fields give their bytes, varints their value; fixed ones are skipped. */
static int pb_next(const uint8_t **p, const uint8_t *end, unsigned *field,
                   uint64_t *v, const uint8_t **bytes, size_t *len) {
  uint64_t key = 0;
  int shift = 0;
  unsigned wt;

  if (*p >= end)
    return 0;
  do {
    ASSERT(*p < end && shift < 64);
    key |= (uint64_t)(**p & 0x7f) << shift;
    shift += 7;
  } while (*(*p)++ & 0x80);
  *field = (unsigned)(key >> 3);
  wt = (unsigned)(key & 7);
  *v = 0;
  *bytes = NULL;
  *len = 0;
  if (wt == 0 || wt == 2) {
    shift = 0;
    do {
      ASSERT(*p < end && shift < 64);
      *v |= (uint64_t)(**p & 0x7f) << shift;
      shift += 7;
    } while (*(*p)++ & 0x80);
    if (wt == 2) {
      ASSERT_LE(*v, (uint64_t)(end - *p));
      *bytes = *p;
      *len = (size_t)*v;
      *p += *len;
    }
  } else {
    *p += wt == 1 ? 8 : 4;
  }
  return 1;
}

static void srv_send(int fd, unsigned body_field, const struct pb *body) {
  static struct pb env;
  uint8_t hdr[4];

  env.n = 0;
  pb_uint(&env, 1, 1); /* protocol_version */
  pb_bytes(&env, body_field, body->p, body->n);
  hdr[0] = (uint8_t)(env.n >> 24);
  hdr[1] = (uint8_t)(env.n >> 16);
  hdr[2] = (uint8_t)(env.n >> 8);
  hdr[3] = (uint8_t)env.n;
  ASSERT_EQ(write(fd, hdr, 4), 4);
  ASSERT_EQ(write(fd, env.p, env.n), (ssize_t)env.n);
}

/* Reads exactly n bytes; false at the end of the stream. */
static bool srv_read(int fd, uint8_t *p, size_t n) {
  while (n > 0) {
    struct pollfd pfd = {fd, POLLIN, 0};
    ssize_t got;

    ASSERT_EQ(poll(&pfd, 1, 10000), 1);
    got = read(fd, p, n);
    if (got <= 0)
      return false;
    p += got;
    n -= (size_t)got;
  }
  return true;
}

/* A PushAck answering the Push in body: one outcome per change. */
static void srv_push_ack(int fd, enum srv_mode mode, const uint8_t *body,
                         size_t len) {
  static struct pb ack;
  static struct pb oc;
  const uint8_t *p = body;
  const uint8_t *b;
  unsigned field;
  uint64_t v;
  size_t n;

  ack.n = 0;
  while (pb_next(&p, body + len, &field, &v, &b, &n)) {
    const uint8_t *q = b;
    const uint8_t *key = NULL;
    const uint8_t *hash = NULL;
    size_t keylen = 0;
    const uint8_t *vb;
    size_t vn;

    if (field == 1) {
      pb_uint(&ack, 1, v); /* batch_id */
      continue;
    }
    if (field != 2)
      continue;
    while (pb_next(&q, b + n, &field, &v, &vb, &vn)) {
      if (field == 1) {
        key = vb;
        keylen = vn;
      } else if (field == 3) {
        const uint8_t *w = vb;
        const uint8_t *hb;
        size_t hn;
        uint64_t hv;
        unsigned f2;
        while (pb_next(&w, vb + vn, &f2, &hv, &hb, &hn))
          if (f2 == 3)
            hash = hb;
      }
    }
    ASSERT(key != NULL && hash != NULL);
    oc.n = 0;
    pb_bytes(&oc, 1, key, keylen);
    pb_bytes(&oc, 2, hash, 32);
    if (mode == SRV_REFUSE || mode == SRV_REMOVE) {
      pb_uint(&oc, 3, 4); /* OUTCOME_REFUSED */
      pb_uint(&oc, 4, 7); /* ERR_FORBIDDEN */
      pb_bytes(&oc, 5, "not your visit", 14);
    } else {
      pb_uint(&oc, 3, 1); /* OUTCOME_APPLIED */
    }
    pb_bytes(&ack, 2, oc.p, oc.n);
  }
  srv_send(fd, 5, &ack);
}

/* The child: serves one session on lfd as mode says, then exits. */
static void srv_main(int lfd, enum srv_mode mode, const uint8_t visit[16]) {
  static uint8_t buf[1 << 20];
  static const uint8_t server_id[16] = {0x5e, 0x7e, 0x02};
  struct pollfd pfd = {lfd, POLLIN, 0};
  struct pb m;
  int fd;

  if (poll(&pfd, 1, 10000) != 1)
    _exit(3);
  fd = accept(lfd, NULL, NULL);
  if (fd < 0)
    _exit(4);
  for (;;) {
    uint8_t hdr[4];
    size_t len;
    const uint8_t *p = buf;
    const uint8_t *b = NULL;
    size_t n = 0;
    unsigned body = 0;
    unsigned field;
    uint64_t v;
    const uint8_t *fb;
    size_t fn;

    if (!srv_read(fd, hdr, 4))
      break;
    len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 |
          hdr[3];
    ASSERT_LE(len, sizeof(buf));
    if (!srv_read(fd, buf, len))
      break;
    while (pb_next(&p, buf + len, &field, &v, &fb, &fn)) {
      if (field >= 2) {
        body = field;
        b = fb;
        n = fn;
      }
    }
    m.n = 0;
    if (body == 2 && mode == SRV_REVOKE) { /* Hello */
      pb_uint(&m, 1, 14);                  /* ERR_REVOKED */
      pb_bytes(&m, 2, "device reported lost", 20);
      srv_send(fd, 8, &m);
      break;
    } else if (body == 2) {
      pb_bytes(&m, 1, server_id, 16);
      pb_bytes(&m, 2, "j.smith", 7);
      pb_uint(&m, 3, 1); /* ROLE_INSPECTOR */
      srv_send(fd, 3, &m);
    } else if (body == 4) {
      srv_push_ack(fd, mode, b, n);
    } else if (body == 6) {
      pb_uint(&m, 2, 0); /* next_cursor: the feed is empty */
      if (mode == SRV_REMOVE) {
        struct pb k;
        k.n = 0;
        pb_uint(&k, 1, 1); /* SCOPE_VISIT */
        pb_bytes(&k, 2, visit, 16);
        pb_bytes(&m, 4, k.p, k.n);
      }
      srv_send(fd, 7, &m);
    } else if (body == 9) {
      break;
    }
  }
  close(fd);
  _exit(0);
}

/* Starts a server on 127.0.0.1 (port 0) for one session. visit_hex is the
 * visit SRV_REMOVE removes. */
static void srv_start(struct srv *s, enum srv_mode mode,
                      const char *visit_hex) {
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  uint8_t visit[16] = {0};
  size_t i;
  int lfd = socket(AF_INET, SOCK_STREAM, 0);

  for (i = 0; visit_hex != NULL && i < 16; i++) {
    unsigned x;
    ASSERT_EQ(sscanf(visit_hex + 2 * i, "%2x", &x), 1);
    visit[i] = (uint8_t)x;
  }
  ASSERT(lfd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(bind(lfd, (struct sockaddr *)&a, sizeof(a)));
  ASSERT_OK(listen(lfd, 1));
  ASSERT_OK(getsockname(lfd, (struct sockaddr *)&a, &alen));
  s->port = ntohs(a.sin_port);
  snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", s->port);
  fflush(stdout);
  fflush(stderr);
  s->pid = fork();
  ASSERT(s->pid >= 0);
  if (s->pid == 0)
    srv_main(lfd, mode, visit);
  close(lfd);
}

static void srv_wait(struct srv *s) {
  int status;

  while (waitpid(s->pid, &status, 0) < 0)
    ASSERT(errno == EINTR);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    test_fail(__FILE__, __LINE__, "the test server failed (status %d)", status);
}

/* `fieldsync sync` against a server in mode; returns the exit status. */
static int sync_with(const char *db, enum srv_mode mode, const char *visit,
                     bool json) {
  struct srv s;
  int rc;

  srv_start(&s, mode, visit);
  rc = run(db, json ? ARGS("sync", "--server", s.addr, "--plaintext", "--token",
                           "tok", "--json")
                    : ARGS("sync", "--server", s.addr, "--plaintext", "--token",
                           "tok"));
  srv_wait(&s);
  return rc;
}

/* The value of "key: " in `status` output. */
static long status_of(const char *db, const char *key) {
  char want[64];
  const char *p;

  OK(db, "status");
  snprintf(want, sizeof(want), "%s: ", key);
  p = strstr(r.out.p, want);
  if (p == NULL)
    RUN_FAIL(__LINE__, "no such line in status");
  return strtol(p + strlen(want), NULL, 10);
}

TEST(status_counts) {
  char db[PATH_MAX];
  char visit[33];
  char vid[64];
  char obs[33];
  json_t *j;

  new_db(db, sizeof(db));
  OK(db, "status");
  ASSERT(strncmp(r.out.p, "replica: ", 9) == 0);
  ASSERT(strstr(r.out.p,
                "\nrecords: 0\nconflicts: 0\npending: 0\nrefused: "
                "0\nquarantined: 0\nheld_scopes: 0\ncursor: 0\n") != NULL);
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid);
  OK(db, "status", "--json");
  j = parse(r.out.p);
  ASSERT_EQ(json_object_size(j), 8);
  ASSERT_EQ(strlen(json_string_value(json_object_get(j, "replica"))), 32);
  ASSERT_EQ(json_integer_value(json_object_get(j, "records")), 2);
  ASSERT_EQ(json_integer_value(json_object_get(j, "pending")), 2);
  ASSERT_EQ(json_integer_value(json_object_get(j, "refused")), 0);
  ASSERT_EQ(json_integer_value(json_object_get(j, "quarantined")), 0);
  ASSERT(json_is_integer(json_object_get(j, "conflicts")));
  ASSERT(json_is_integer(json_object_get(j, "held_scopes")));
  ASSERT(json_is_integer(json_object_get(j, "cursor")));
  json_decref(j);
  guard_db = db;
  FAILS(2, "'extra'", db, "status", "extra");
  FAILS(2, "--all", db, "status", "--all");
  guard_db = NULL;
}

/* Refused versions: sync exits 3 and names them; `refused` lists them;
 * the next sync does not send them; `retry` does; bad arguments fail. */
TEST(refused_and_retry) {
  char db[PATH_MAX];
  char visit[33];
  char vid[64];
  char obs[2][33];
  json_t *a;
  json_t *o;
  size_t i;

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs[0], "observation", vid, "standard_code=OP9");
  ADD(db, obs[1], "observation", vid, "standard_code=OP10");
  OK(db, "refused");
  ASSERT_EQ(r.out.n, 0);
  OK(db, "refused", "--json");
  ASSERT_STR_EQ(r.out.p, "[]\n");

  ASSERT_EQ(sync_with(db, SRV_REFUSE, NULL, false), 3);
  ASSERT(strstr(r.out.p, "pushed 3 (acknowledged 0, conflicts 0, refused 3)"
                         "; pulled 0 (new 0, conflicts 0); removed 0 "
                         "(quarantined 0)\n") != NULL);
  ASSERT(strstr(r.err.p, "refused observation") != NULL);
  ASSERT(strstr(r.err.p, "ERR_FORBIDDEN: not your visit") != NULL);
  ASSERT_EQ(status_of(db, "refused"), 3);
  ASSERT_EQ(status_of(db, "pending"), 0);

  OK(db, "refused");
  ASSERT_EQ(count_lines(r.out.p), 3);
  ASSERT(strncmp(r.out.p, visit, 32) == 0); /* oldest first */
  ASSERT(strstr(r.out.p, obs[1]) != NULL);
  ASSERT(strstr(r.out.p, "  observation     hash ") != NULL);
  ASSERT(strstr(r.out.p, "ERR_FORBIDDEN: not your visit\n") != NULL);
  OK(db, "refused", "--json");
  a = parse(r.out.p);
  ASSERT(json_is_array(a));
  ASSERT_EQ(json_array_size(a), 3);
  json_array_foreach(a, i, o) {
    ASSERT_EQ(json_object_size(o), 6);
    ASSERT(json_is_string(json_object_get(o, "collection")));
    ASSERT(json_is_string(json_object_get(o, "id")));
    ASSERT_EQ(strlen(json_string_value(json_object_get(o, "hash"))), 64);
    ASSERT_STR_EQ(json_string_value(json_object_get(o, "code")),
                  "ERR_FORBIDDEN");
    ASSERT_STR_EQ(json_string_value(json_object_get(o, "reason")),
                  "not your visit");
    ASSERT(json_is_string(json_object_get(o, "refused_at")));
  }
  ASSERT_STR_EQ(json_string_value(json_object_get(json_array_get(a, 2), "id")),
                obs[1]);
  json_decref(a);
  /* show marks the version. */
  OK(db, "show", obs[0]);
  ASSERT(strstr(r.out.p, "  (refused: ERR_FORBIDDEN: not your visit)\n") !=
         NULL);

  /* Not sent again. */
  ASSERT_EQ(sync_with(db, SRV_ACCEPT, NULL, true), 0);
  o = parse(r.out.p);
  ASSERT_EQ(json_integer_value(json_object_get(o, "pushed")), 0);
  ASSERT_EQ(json_integer_value(json_object_get(o, "removed")), 0);
  ASSERT_EQ(json_integer_value(json_object_get(o, "quarantined")), 0);
  ASSERT(json_is_false(json_object_get(o, "revoked")));
  ASSERT(json_is_true(json_object_get(o, "complete")));
  json_decref(o);

  /* Retry one, then the rest. */
  guard_db = db;
  FAILS(1, "retry: ", db, "retry", "xyz");
  FAILS(1, "no refused version", db, "retry",
        "0123456789abcdef0123456789abcdef");
  FAILS(2, "'extra'", db, "retry", obs[0], "extra");
  FAILS(2, "--json", db, "retry", "--json");
  guard_db = NULL;
  OK(db, "retry", obs[0]);
  ASSERT_STR_EQ(r.out.p, "1 refused version will be sent again at the next "
                         "sync\n");
  ASSERT_EQ(status_of(db, "pending"), 1);
  ASSERT_EQ(status_of(db, "refused"), 2);
  OK(db, "retry");
  ASSERT_STR_EQ(r.out.p, "2 refused versions will be sent again at the next "
                         "sync\n");
  OK(db, "retry");
  ASSERT(strncmp(r.out.p, "0 refused versions", 18) == 0);
  ASSERT_EQ(sync_with(db, SRV_ACCEPT, NULL, false), 0);
  ASSERT(strstr(r.out.p, "pushed 3 (acknowledged 3,") != NULL);
  ASSERT_EQ(status_of(db, "pending"), 0);
  ASSERT_EQ(status_of(db, "refused"), 0);
}

/* A withdrawn visit: sync removes its records, quarantining what the
 * server never acknowledged; `quarantine` lists, exports and discards. */
TEST(quarantine_commands) {
  char db[PATH_MAX];
  char dir[PATH_MAX];
  char file[PATH_MAX];
  char visit[33];
  char other[33];
  char vid[64];
  char obs[33];
  char qid[32];
  char *text;
  char *line;
  size_t n;
  json_t *a;
  json_t *o;
  size_t i;
  struct stat st;

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid, "standard_code=OP9",
      "evidence_text=Call bells unanswered");
  ASSERT_EQ(sync_with(db, SRV_REFUSE, NULL, false), 3);
  ADD(db, other, "visit", "kind=random"); /* another visit: stays */
  OK(db, "edit", obs, "judgement=2");     /* a new version */
  OK(db, "quarantine");
  ASSERT_EQ(r.out.n, 0);

  /* The server refuses both new versions, then withdraws the visit. */
  ASSERT_EQ(sync_with(db, SRV_REMOVE, visit, false), 3);
  if (strstr(r.out.p, "; removed 2 (quarantined 2)\n") == NULL)
    RUN_FAIL(__LINE__, "expected 2 records removed, 2 versions quarantined");
  ASSERT(strstr(r.err.p, "fieldsync: sync: 2 records removed with scopes the "
                         "server withdrew; 2 unacknowledged versions kept in "
                         "the quarantine ('fieldsync quarantine')\n") != NULL);
  OK(db, "list");
  ASSERT_EQ(count_lines(r.out.p), 1);
  ASSERT(strncmp(r.out.p, other, 32) == 0);
  ASSERT_EQ(status_of(db, "quarantined"), 2);
  ASSERT_EQ(status_of(db, "refused"), 1); /* the other visit's */
  ASSERT_EQ(status_of(db, "records"), 1);

  /* The list: the refused visit first, then the edited observation. */
  OK(db, "quarantine");
  ASSERT_EQ(count_lines(r.out.p), 2);
  ASSERT(strncmp(r.out.p, "1     visit           ", 22) == 0);
  ASSERT(strstr(r.out.p, "scope removed by the server  [refused: "
                         "ERR_FORBIDDEN: not your visit]\n") != NULL);
  line = strchr(r.out.p, '\n') + 1;
  ASSERT(strncmp(line, "2     observation     ", 22) == 0);
  ASSERT(strstr(line, obs) != NULL);
  snprintf(vid, sizeof(vid), "  visit %s  ", visit);
  ASSERT(strstr(line, vid) != NULL);
  ASSERT(strstr(line, "  [refused: ERR_FORBIDDEN") != NULL);
  OK(db, "quarantine", "list", "--json");
  a = parse(r.out.p);
  ASSERT_EQ(json_array_size(a), 2);
  o = json_array_get(a, 1);
  ASSERT_EQ(json_object_size(o), 13);
  ASSERT_EQ(json_integer_value(json_object_get(o, "qid")), 2);
  ASSERT_STR_EQ(json_string_value(json_object_get(o, "id")), obs);
  ASSERT_STR_EQ(
      json_string_value(json_object_get(json_object_get(o, "scope"), "kind")),
      "visit");
  ASSERT_STR_EQ(json_string_value(json_object_get(o, "reason")),
                "scope removed by the server");
  ASSERT_EQ(json_integer_value(
                json_object_get(json_object_get(o, "fields"), "judgement")),
            2);
  ASSERT(json_is_false(json_object_get(o, "deleted")));
  ASSERT_STR_EQ(json_string_value(json_object_get(
                    json_object_get(json_array_get(a, 0), "refused"), "code")),
                "ERR_FORBIDDEN");
  json_decref(a);

  /* Export: JSON lines, no overwrite without --force. */
  new_dir(dir, sizeof(dir));
  path_in(file, sizeof(file), dir, "q.jsonl");
  OK(db, "quarantine", "export", file);
  {
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "exported 2 quarantined versions to %s\n",
             file);
    ASSERT_STR_EQ(r.out.p, want);
  }
  text = read_file(file, &n);
  ASSERT_EQ(count_lines(text), 2);
  line = text;
  for (i = 0; i < 2; i++) {
    char *nl = strchr(line, '\n');
    *nl = '\0';
    o = parse(line);
    ASSERT_EQ(json_integer_value(json_object_get(o, "qid")), (int)i + 1);
    ASSERT_EQ(json_object_size(o), 13);
    json_decref(o);
    line = nl + 1;
  }
  free(text);
  ASSERT_OK(stat(file, &st));
  ASSERT_EQ(st.st_mode & 0777, 0600);
  FAILS(1, "exists; not overwriting it", db, "quarantine", "export", file);
  write_file(file, "keep me\n");
  FAILS(1, "--force", db, "quarantine", "export", file);
  text = read_file(file, &n);
  ASSERT_STR_EQ(text, "keep me\n");
  free(text);
  OK(db, "quarantine", "export", file, "--force");
  text = read_file(file, &n);
  ASSERT_EQ(count_lines(text), 2);
  free(text);

  /* Bad arguments, before anything is touched. */
  guard_db = db;
  FAILS(2, "missing FILE", db, "quarantine", "export");
  FAILS(2, "--json", db, "quarantine", "export", file, "--json");
  FAILS(2, "missing QID", db, "quarantine", "discard");
  FAILS(2, "'x1' is not a quarantine id", db, "quarantine", "discard", "x1");
  FAILS(2, "is not a quarantine id", db, "quarantine", "discard", "0");
  FAILS(2, "'-3'", db, "quarantine", "discard", "-3");
  FAILS(2, "not both", db, "quarantine", "discard", "1", "--all");
  FAILS(2, "--force", db, "quarantine", "discard", "1", "--force");
  FAILS(2, "'frob' is not list, export or discard", db, "quarantine", "frob");
  FAILS(2, "unexpected argument 'x'", db, "quarantine", "list", "x");
  FAILS(2, "--all", db, "quarantine", "list", "--all");
  FAILS(2, "'c'", db, "quarantine", "discard", "1", "c");
  FAILS(1, "no quarantined version 9", db, "quarantine", "discard", "9");
  guard_db = NULL;

  /* Discard one, then the rest. */
  snprintf(qid, sizeof(qid), "%d", 1);
  OK(db, "quarantine", "discard", qid);
  ASSERT_STR_EQ(r.out.p, "discarded 1 quarantined version\n");
  FAILS(1, "no quarantined version 1", db, "quarantine", "discard", qid);
  OK(db, "quarantine", "discard", "--all");
  ASSERT_STR_EQ(r.out.p, "discarded 1 quarantined version\n");
  OK(db, "quarantine", "--json");
  ASSERT_STR_EQ(r.out.p, "[]\n");
  ASSERT_EQ(status_of(db, "quarantined"), 0);
}

/* A revoked device: sync exits 4, says what happened on stderr, and the
 * database is empty but for the quarantine; it still opens and works. */
TEST(sync_revoked) {
  char db[PATH_MAX];
  char visit[33];
  char vid[64];
  char obs[33];
  json_t *o;

  new_db(db, sizeof(db));
  ADD(db, visit, "visit", "kind=key");
  snprintf(vid, sizeof(vid), "visit_id=%s", visit);
  ADD(db, obs, "observation", vid);
  ASSERT_EQ(sync_with(db, SRV_REVOKE, NULL, false), 4);
  ASSERT(strstr(r.out.p, "; removed 2 (quarantined 2)\n") != NULL);
  ASSERT(strstr(r.err.p,
                "fieldsync: sync: server: this device was revoked "
                "(ERR_REVOKED: device reported lost): local data wiped; 2 "
                "unacknowledged versions kept in the quarantine (fieldsync "
                "quarantine)\n") != NULL);
  ASSERT(strstr(r.err.p, "quarantine export FILE") != NULL);
  ASSERT(strstr(r.err.p, "run it again") == NULL);
  OK(db, "list");
  ASSERT_EQ(r.out.n, 0);
  ASSERT_EQ(status_of(db, "quarantined"), 2);
  ASSERT_EQ(status_of(db, "pending"), 0);
  OK(db, "quarantine");
  ASSERT_EQ(count_lines(r.out.p), 2);
  ASSERT(strstr(r.out.p, "device revoked") != NULL);
  ASSERT_EQ(sync_with(db, SRV_REVOKE, NULL, true), 4);
  o = parse(r.out.p);
  ASSERT(json_is_true(json_object_get(o, "revoked")));
  ASSERT(json_is_false(json_object_get(o, "complete")));
  ASSERT_EQ(json_integer_value(json_object_get(o, "quarantined")), 0);
  json_decref(o);
  ADD(db, obs, "visit", "kind=key"); /* still a working database */
}

static int rm_cb(const char *path, const struct stat *st, int flag,
                 struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static const struct test_entry entries[] = {
    TEST_ENTRY(init_prints_replica_id) TEST_ENTRY(missing_database)
        TEST_ENTRY(default_database_paths) TEST_ENTRY(add_show) TEST_ENTRY(
            list_and_filters) TEST_ENTRY(edit_record) TEST_ENTRY(delete_record)
            TEST_ENTRY(export_json_csv) TEST_ENTRY(import_files)
                TEST_ENTRY(import_bad_row) TEST_ENTRY(csv_export_reimports)
                    TEST_ENTRY(bad_database_files) TEST_ENTRY(
                        not_a_database_message) TEST_ENTRY(bad_ids)
                        TEST_ENTRY(bad_fields_values) TEST_ENTRY(usage_errors)
                            TEST_ENTRY(help_everywhere)
                                TEST_ENTRY(conflicts_without_sync)
                                    TEST_ENTRY(fields_and_collections)
                                        TEST_ENTRY(status_counts)
                                            TEST_ENTRY(refused_and_retry)
                                                TEST_ENTRY(quarantine_commands)
                                                    TEST_ENTRY(sync_revoked)};

/* Like TEST_LIST's main, but the first argument may be the binary under
 * test (it contains a '/'; test names never do). */
int main(int argc, char **argv) {
  const char *bin = getenv("FIELDSYNC_CLI");
  int rc;

  if (argc > 1 && strchr(argv[1], '/') != NULL) {
    bin = argv[1];
    argv[1] = argv[0];
    argc--;
    argv++;
  }
  if (argc > 1 && strcmp(argv[1], "--list") == 0)
    return test_run_all(entries, sizeof(entries) / sizeof(entries[0]), argc,
                        argv);
  if (bin == NULL || *bin == '\0' || realpath(bin, cli_path) == NULL ||
      access(cli_path, X_OK) != 0) {
    fprintf(stderr, "test_cli: no fieldsync binary: pass its path as the "
                    "first argument or set FIELDSYNC_CLI\n");
    return 2;
  }
  /* The tests choose their databases themselves. */
  unsetenv("FIELDSYNC_DB");
  snprintf(top_dir, sizeof(top_dir), "/tmp/fieldsync-cli-XXXXXX");
  if (mkdtemp(top_dir) == NULL) {
    fprintf(stderr, "test_cli: mkdtemp: %s\n", strerror(errno));
    return 2;
  }
  rc = test_run_all(entries, sizeof(entries) / sizeof(entries[0]), argc, argv);
  nftw(top_dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  return rc;
}
