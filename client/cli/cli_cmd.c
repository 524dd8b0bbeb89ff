/* SPDX-License-Identifier: MIT */
/* The commands of the fieldsync tool and their help texts. Each command
 * checks its arguments before it opens the database, so bad usage never
 * touches it, then makes one library call per step and reports the first
 * failure with the library's message. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"

/* Command-specific option ids. */
enum {
  OPT_JSON = CLI_OPT_FIRST,
  OPT_NAME,
  OPT_VISIT,
  OPT_SERVICE,
  OPT_DELETED,
  OPT_CLEAR,
  OPT_KEEP,
  OPT_FORMAT,
  OPT_FORCE,
  OPT_ALL
};

/* ---- helpers ----------------------------------------------------------- */

/* Returns the value of the last option `id` in a, or NULL. */
static const char *opt_value(const struct cli_args *a, int id) {
  const char *v = NULL;
  size_t i;

  for (i = 0; i < a->nitems; i++) {
    if (a->items[i].id == id)
      v = a->items[i].value;
  }
  return v;
}

/* True when option `id` was given. */
static bool opt_given(const struct cli_args *a, int id) {
  size_t i;

  for (i = 0; i < a->nitems; i++) {
    if (a->items[i].id == id)
      return true;
  }
  return false;
}

/* Reports a failed open: the library's message, prefixed by the path
 * unless it already names it. A missing file (when not creating) gets a
 * hint to `fieldsync init` instead. Closes the handle. Returns
 * CLI_EXIT_FAIL. */
static int open_failed(struct cli *cli, int rc, bool creating) {
  struct stat st;
  const char *msg;
  int ret;

  if (!creating && stat(cli->db_path, &st) != 0 && errno == ENOENT) {
    if (strcmp(cli->db_path, CLI_DEFAULT_DB) == 0)
      ret = cli_out_fail(cli,
                         "no database at %s (create one with 'fieldsync "
                         "init')",
                         cli->db_path);
    else
      ret = cli_out_fail(cli,
                         "no database at %s (create one with 'fieldsync "
                         "--db %s init')",
                         cli->db_path, cli->db_path);
  } else {
    msg = cli->db != NULL ? fieldsync_errmsg(cli->db) : NULL;
    if (msg == NULL || *msg == '\0')
      msg = fieldsync_strerror(rc);
    if (strstr(msg, cli->db_path) != NULL)
      ret = cli_out_fail(cli, "%s", msg);
    else
      ret = cli_out_fail(cli, "%s: %s", cli->db_path, msg);
  }
  fieldsync_close(cli->db);
  cli->db = NULL;
  return ret;
}

/* Opens the existing database (every command but init). */
int cli_open_db(struct cli *cli) {
  int rc = fieldsync_open(cli->db_path, 0, NULL, &cli->db);

  if (rc != 0)
    return open_failed(cli, rc, false);
  return CLI_EXIT_OK;
}

/* Checks that every positional after the first is FIELD=VALUE, before
 * anything is opened. Returns an exit status (a problem is printed). */
static int check_assignments(const struct cli *cli, const struct cli_args *a) {
  size_t i;

  for (i = 1; i < a->npos; i++) {
    char *field;
    const char *value;
    int ret = cli_args_split(cli, a->pos[i], &field, &value);

    if (ret != CLI_EXIT_OK)
      return ret;
    free(field);
  }
  return CLI_EXIT_OK;
}

/* Applies the FIELD=VALUE positionals (after the first) and --clear
 * options to d, in command-line order. Returns an exit status. */
static int apply_changes(struct cli *cli, const struct cli_args *a,
                         fieldsync_draft *d) {
  size_t i;
  bool first_pos = true;

  for (i = 0; i < a->nitems; i++) {
    const struct cli_item *it = &a->items[i];
    char *field;
    const char *value;
    int rc;

    if (it->id == OPT_CLEAR) {
      rc = fieldsync_draft_clear(d, it->value);
      if (rc != 0)
        return cli_out_libfail(cli, rc);
      continue;
    }
    if (it->id != CLI_OPT_POSITIONAL)
      continue;
    if (first_pos) {
      first_pos = false; /* the collection or the record id */
      continue;
    }
    rc = cli_args_split(cli, it->value, &field, &value);
    if (rc != CLI_EXIT_OK)
      return rc;
    rc = fieldsync_draft_set(d, field, value);
    free(field);
    if (rc != 0)
      return cli_out_libfail(cli, rc);
  }
  return CLI_EXIT_OK;
}

/* True when a has changes to apply: FIELD=VALUE after the first
 * positional, or --clear. */
static bool has_changes(const struct cli_args *a) {
  return a->npos > 1 || opt_given(a, OPT_CLEAR);
}

/* ---- commands ---------------------------------------------------------- */

static int cmd_init(struct cli *cli, const struct cli_args *a) {
  const char *name = opt_value(a, OPT_NAME);
  char hex[33];
  struct stat st;
  int rc;

  /* fieldsync_open(CREATE) would quietly open an existing database (and
   * initialise an empty file); init must never reuse one, so look first. */
  if (stat(cli->db_path, &st) == 0) {
    if (S_ISREG(st.st_mode) && st.st_size == 0)
      return cli_out_fail(cli,
                          "%s exists but is empty; remove it to create a "
                          "database there",
                          cli->db_path);
    rc = fieldsync_open(cli->db_path, 0, NULL, &cli->db);
    if (rc == 0) {
      fieldsync_replica_id(cli->db, hex);
      return cli_out_fail(cli,
                          "%s is already initialised (replica %s); not "
                          "creating another database",
                          cli->db_path, hex);
    }
    rc = cli_out_fail(
        cli, "%s already exists; not overwriting it: %s", cli->db_path,
        cli->db != NULL ? fieldsync_errmsg(cli->db) : fieldsync_strerror(rc));
    fieldsync_close(cli->db);
    cli->db = NULL;
    return rc;
  }
  rc = fieldsync_open(cli->db_path, FIELDSYNC_OPEN_CREATE, name, &cli->db);
  if (rc != 0)
    return open_failed(cli, rc, true);
  fieldsync_replica_id(cli->db, hex);
  printf("%s\n", hex);
  return CLI_EXIT_OK;
}

static int cmd_add(struct cli *cli, const struct cli_args *a) {
  fieldsync_draft *d = NULL;
  char id[33];
  int ret;
  int rc;

  ret = check_assignments(cli, a);
  if (ret != CLI_EXIT_OK)
    return ret;
  ret = cli_open_db(cli);
  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_draft_new(cli->db, a->pos[0], &d);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  ret = apply_changes(cli, a, d);
  if (ret != CLI_EXIT_OK)
    goto done;
  rc = fieldsync_create(cli->db, d, id);
  if (rc != 0) {
    ret = cli_out_libfail(cli, rc);
    goto done;
  }
  printf("%s\n", id);

done:
  fieldsync_draft_free(d);
  return ret;
}

static int cmd_edit(struct cli *cli, const struct cli_args *a) {
  fieldsync_draft *d = NULL;
  int ret;
  int rc;

  if (!has_changes(a))
    return cli_out_usage(cli->cmd, "nothing to change (give FIELD=VALUE "
                                   "or --clear FIELD)");
  ret = check_assignments(cli, a);
  if (ret != CLI_EXIT_OK)
    return ret;
  ret = cli_open_db(cli);
  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_draft_for_edit(cli->db, a->pos[0], &d);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  ret = apply_changes(cli, a, d);
  if (ret != CLI_EXIT_OK)
    goto done;
  rc = fieldsync_edit(cli->db, d);
  if (rc != 0)
    ret = cli_out_libfail(cli, rc);

done:
  fieldsync_draft_free(d);
  return ret;
}

static int cmd_delete(struct cli *cli, const struct cli_args *a) {
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_delete(cli->db, a->pos[0]);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  return CLI_EXIT_OK;
}

static int cmd_show(struct cli *cli, const struct cli_args *a) {
  char *json = NULL;
  char err[256];
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_get_json(cli->db, a->pos[0], &json);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  if (opt_given(a, OPT_JSON)) {
    if (cli_out_write(json, strlen(json)))
      cli_out_write("\n", 1);
  } else if (!cli_out_record(json, err, sizeof(err))) {
    ret = cli_out_fail(cli, "%s", err);
  }
  fieldsync_free(json);
  return ret;
}

/* State of a listing (`list`, `conflicts`, `refused`, `quarantine`)
 * while the library's JSON objects arrive. */
struct list_state {
  bool json;
  /* the readable form of one object (cli_out_summary, ...) */
  bool (*render)(const char *json, char *err, size_t errcap);
  size_t n;
  bool write_failed;
  int write_errno;
  char err[256]; /* a record the readable form could not render */
};

static int list_cb(const char *json, void *data) {
  struct list_state *s = data;

  if (s->json) {
    if (!cli_out_write(s->n == 0 ? "\n" : ",\n", s->n == 0 ? 1 : 2) ||
        !cli_out_write(json, strlen(json))) {
      s->write_failed = true;
      s->write_errno = errno;
      return 1;
    }
  } else if (!s->render(json, s->err, sizeof(s->err))) {
    return 1;
  }
  s->n++;
  if (ferror(stdout)) {
    s->write_failed = true;
    s->write_errno = errno != 0 ? errno : EIO;
    return 1;
  }
  return 0;
}

/* Finishes a listing that the library call (its result rc) fed to list_cb:
 * closes a JSON array, or reports why it stopped. */
static int end_listing(struct cli *cli, const struct list_state *s, int rc) {
  if (rc == FIELDSYNC_ECALLBACK && s->write_failed)
    return cli_out_fail(cli, "cannot write to standard output: %s",
                        strerror(s->write_errno));
  if (rc == FIELDSYNC_ECALLBACK && s->err[0] != '\0')
    return cli_out_fail(cli, "%s", s->err);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  if (s->json)
    cli_out_write(s->n > 0 ? "\n]\n" : "]\n", s->n > 0 ? 3 : 2);
  return CLI_EXIT_OK;
}

/* Runs a query and prints its records as `list` does. */
static int run_query(struct cli *cli, const struct fieldsync_query *q,
                     bool json) {
  struct list_state s;
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  memset(&s, 0, sizeof(s));
  s.json = json;
  s.render = cli_out_summary;
  if (json)
    cli_out_write("[", 1);
  rc = fieldsync_query(cli->db, q, list_cb, &s);
  return end_listing(cli, &s, rc);
}

static int cmd_list(struct cli *cli, const struct cli_args *a) {
  struct fieldsync_query q;

  memset(&q, 0, sizeof(q));
  q.collection = a->npos > 0 ? a->pos[0] : NULL;
  q.visit_id = opt_value(a, OPT_VISIT);
  q.service_id = opt_value(a, OPT_SERVICE);
  q.include_deleted = opt_given(a, OPT_DELETED);
  return run_query(cli, &q, opt_given(a, OPT_JSON));
}

static int cmd_conflicts(struct cli *cli, const struct cli_args *a) {
  struct fieldsync_query q;

  memset(&q, 0, sizeof(q));
  q.conflicts_only = 1;
  /* A conflict whose display winner is a deletion is still a conflict the
   * user must see. */
  q.include_deleted = 1;
  return run_query(cli, &q, opt_given(a, OPT_JSON));
}

static int cmd_resolve(struct cli *cli, const struct cli_args *a) {
  const char *keep = opt_value(a, OPT_KEEP);
  fieldsync_draft *d = NULL;
  int ret;
  int rc;

  if (keep != NULL && has_changes(a))
    return cli_out_usage(cli->cmd, "give either --keep HASH or "
                                   "FIELD=VALUE changes, not both");
  if (keep == NULL && !has_changes(a))
    return cli_out_usage(cli->cmd, "nothing to resolve with (give --keep "
                                   "HASH or FIELD=VALUE)");
  ret = check_assignments(cli, a);
  if (ret != CLI_EXIT_OK)
    return ret;
  ret = cli_open_db(cli);
  if (ret != CLI_EXIT_OK)
    return ret;
  if (keep != NULL) {
    rc = fieldsync_resolve_keep(cli->db, a->pos[0], keep);
    return rc != 0 ? cli_out_libfail(cli, rc) : CLI_EXIT_OK;
  }
  rc = fieldsync_draft_for_resolve(cli->db, a->pos[0], &d);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  ret = apply_changes(cli, a, d);
  if (ret != CLI_EXIT_OK)
    goto done;
  rc = fieldsync_resolve_with(cli->db, a->pos[0], d);
  if (rc != 0)
    ret = cli_out_libfail(cli, rc);

done:
  fieldsync_draft_free(d);
  return ret;
}

/* Where export output goes: stdout, remembering the first write error. */
struct sink {
  bool failed;
  int err;
};

static int sink_cb(const char *buf, size_t n, void *data) {
  struct sink *s = data;

  if (!cli_out_write(buf, n)) {
    s->failed = true;
    s->err = errno;
    return 1;
  }
  return 0;
}

static int cmd_export(struct cli *cli, const struct cli_args *a) {
  const char *fmt = opt_value(a, OPT_FORMAT);
  const char *collection = a->npos > 0 ? a->pos[0] : NULL;
  int format;
  struct sink s;
  int ret;
  int rc;

  if (fmt == NULL || strcmp(fmt, "json") == 0) {
    format = FIELDSYNC_FORMAT_JSON;
  } else if (strcmp(fmt, "csv") == 0) {
    format = FIELDSYNC_FORMAT_CSV;
  } else {
    return cli_out_usage(cli->cmd, "unknown format '%s' (use json or csv)",
                         fmt);
  }
  if (format == FIELDSYNC_FORMAT_CSV && collection == NULL)
    return cli_out_usage(cli->cmd, "CSV export needs a COLLECTION (its "
                                   "columns are that collection's fields)");
  ret = cli_open_db(cli);
  if (ret != CLI_EXIT_OK)
    return ret;
  memset(&s, 0, sizeof(s));
  rc = fieldsync_export(cli->db, collection, format, sink_cb, &s);
  if (rc == FIELDSYNC_ECALLBACK && s.failed)
    return cli_out_fail(cli, "cannot write to standard output: %s",
                        strerror(s.err));
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  return CLI_EXIT_OK;
}

static int cmd_import(struct cli *cli, const struct cli_args *a) {
  size_t n = 0;
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_import(cli->db, a->pos[0], a->pos[1], &n);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  printf("imported %zu record%s\n", n, n == 1 ? "" : "s");
  return CLI_EXIT_OK;
}

static void field_cb(const char *name, const char *type, void *data) {
  (void)data;
  printf("%-26s %s\n", name, type);
}

static int cmd_fields(struct cli *cli, const struct cli_args *a) {
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_fields(cli->db, a->pos[0], field_cb, NULL);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  return CLI_EXIT_OK;
}

static int cmd_collections(struct cli *cli, const struct cli_args *a) {
  const char *const *c = fieldsync_collections();

  (void)cli;
  (void)a;
  for (; c != NULL && *c != NULL; c++)
    printf("%s\n", *c);
  return CLI_EXIT_OK;
}

/* ---- status, refused versions and the quarantine ----------------------- */

static int cmd_status(struct cli *cli, const struct cli_args *a) {
  struct fieldsync_counts c;
  char hex[33];
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_counts(cli->db, &c);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  fieldsync_replica_id(cli->db, hex);
  if (opt_given(a, OPT_JSON)) {
    json_t *o = json_pack(
        "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "replica", hex, "records",
        (json_int_t)c.records, "conflicts", (json_int_t)c.conflicts, "pending",
        (json_int_t)c.pending, "refused", (json_int_t)c.refused, "quarantined",
        (json_int_t)c.quarantined, "held_scopes", (json_int_t)c.held_scopes,
        "cursor", (json_int_t)c.cursor);
    char *s =
        o != NULL ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

    json_decref(o);
    if (s == NULL)
      return cli_out_fail(cli, "out of memory");
    printf("%s\n", s);
    free(s);
    return CLI_EXIT_OK;
  }
  printf("replica: %s\nrecords: %zu\nconflicts: %zu\npending: %zu\n"
         "refused: %zu\nquarantined: %zu\nheld_scopes: %zu\ncursor: %llu\n",
         hex, c.records, c.conflicts, c.pending, c.refused, c.quarantined,
         c.held_scopes, (unsigned long long)c.cursor);
  return CLI_EXIT_OK;
}

static int cmd_refused(struct cli *cli, const struct cli_args *a) {
  struct list_state s;
  int ret = cli_open_db(cli);

  if (ret != CLI_EXIT_OK)
    return ret;
  memset(&s, 0, sizeof(s));
  s.json = opt_given(a, OPT_JSON);
  s.render = cli_out_refused;
  if (s.json)
    cli_out_write("[", 1);
  return end_listing(cli, &s, fieldsync_refused(cli->db, list_cb, &s));
}

static int cmd_retry(struct cli *cli, const struct cli_args *a) {
  size_t n = 0;
  int ret = cli_open_db(cli);
  int rc;

  if (ret != CLI_EXIT_OK)
    return ret;
  rc = fieldsync_retry_refused(cli->db, a->npos > 0 ? a->pos[0] : NULL, &n);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  printf("%zu refused version%s will be sent again at the next sync\n", n,
         n == 1 ? "" : "s");
  return CLI_EXIT_OK;
}

/* Writes each quarantined version as one line of JSON to f. */
struct export_lines {
  FILE *f;
  size_t n;
};

static int export_line_cb(const char *json, void *data) {
  struct export_lines *x = data;

  if (fputs(json, x->f) == EOF || fputc('\n', x->f) == EOF)
    return 1;
  x->n++;
  return 0;
}

/* `quarantine export FILE [--force]`: JSON lines, written and flushed to
 * disk before it reports success, so the user can discard afterwards. A
 * file that is left half-written is removed. */
static int quarantine_export(struct cli *cli, const char *path, bool force) {
  struct export_lines x;
  int flags = O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL);
  int fd;
  int rc;
  int err = 0;

  /* The quarantine holds personal data: only the owner may read it. */
  fd = open(path, flags, 0600);
  if (fd < 0 && errno == EEXIST)
    return cli_out_fail(cli,
                        "%s exists; not overwriting it (use --force to "
                        "replace it)",
                        path);
  if (fd < 0)
    return cli_out_fail(cli, "cannot create %s: %s", path, strerror(errno));
  x.n = 0;
  x.f = fdopen(fd, "w");
  if (x.f == NULL) {
    err = errno;
    close(fd);
    unlink(path);
    return cli_out_fail(cli, "cannot write %s: %s", path, strerror(err));
  }
  rc = fieldsync_quarantine(cli->db, export_line_cb, &x);
  if (rc == FIELDSYNC_ECALLBACK || fflush(x.f) != 0 || ferror(x.f) ||
      fsync(fileno(x.f)) != 0)
    err = errno != 0 ? errno : EIO;
  if (fclose(x.f) != 0 && err == 0)
    err = errno != 0 ? errno : EIO;
  if (rc != 0 && rc != FIELDSYNC_ECALLBACK) {
    unlink(path);
    return cli_out_libfail(cli, rc);
  }
  if (err != 0) {
    unlink(path);
    return cli_out_fail(cli, "cannot write %s: %s", path, strerror(err));
  }
  printf("exported %zu quarantined version%s to %s\n", x.n, x.n == 1 ? "" : "s",
         path);
  return CLI_EXIT_OK;
}

/* Parses a qid: a decimal number from 1 up. */
static bool parse_qid(const char *s, int64_t *out) {
  char *end = NULL;
  long long v;

  if (s[0] < '0' || s[0] > '9')
    return false;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno != 0 || *end != '\0' || v <= 0)
    return false;
  *out = (int64_t)v;
  return true;
}

static int cmd_quarantine(struct cli *cli, const struct cli_args *a) {
  const char *sub = a->npos > 0 ? a->pos[0] : "list";
  bool json = opt_given(a, OPT_JSON);
  bool force = opt_given(a, OPT_FORCE);
  bool all = opt_given(a, OPT_ALL);
  int64_t qid = 0;
  size_t n = 0;
  int ret;
  int rc;

  /* Every combination is checked before the database is opened. */
  if (strcmp(sub, "list") == 0) {
    if (a->npos > 1)
      return cli_out_usage(cli->cmd, "unexpected argument '%s'", a->pos[1]);
    if (force || all)
      return cli_out_usage(cli->cmd,
                           "'%s' goes with export or discard, not "
                           "list",
                           force ? "--force" : "--all");
  } else if (strcmp(sub, "export") == 0) {
    if (a->npos < 2)
      return cli_out_usage(cli->cmd, "missing FILE (quarantine export FILE)");
    if (json || all)
      return cli_out_usage(cli->cmd, "'%s' does not go with export",
                           json ? "--json" : "--all");
  } else if (strcmp(sub, "discard") == 0) {
    if (json || force)
      return cli_out_usage(cli->cmd, "'%s' does not go with discard",
                           json ? "--json" : "--force");
    if (all && a->npos > 1)
      return cli_out_usage(cli->cmd, "give either QID or --all, not both");
    if (!all && a->npos < 2)
      return cli_out_usage(cli->cmd,
                           "missing QID (or --all to discard everything)");
    if (!all && !parse_qid(a->pos[1], &qid))
      return cli_out_usage(cli->cmd,
                           "'%s' is not a quarantine id (the number "
                           "'fieldsync quarantine' shows first)",
                           a->pos[1]);
  } else {
    return cli_out_usage(cli->cmd, "'%s' is not list, export or discard", sub);
  }
  ret = cli_open_db(cli);
  if (ret != CLI_EXIT_OK)
    return ret;
  if (strcmp(sub, "export") == 0)
    return quarantine_export(cli, a->pos[1], force);
  if (strcmp(sub, "discard") == 0) {
    rc = fieldsync_quarantine_discard(cli->db, all ? 0 : qid, &n);
    if (rc != 0)
      return cli_out_libfail(cli, rc);
    printf("discarded %zu quarantined version%s\n", n, n == 1 ? "" : "s");
    return CLI_EXIT_OK;
  }
  {
    struct list_state s;

    memset(&s, 0, sizeof(s));
    s.json = json;
    s.render = cli_out_quarantined;
    if (json)
      cli_out_write("[", 1);
    return end_listing(cli, &s, fieldsync_quarantine(cli->db, list_cb, &s));
  }
}

static int cmd_help(struct cli *cli, const struct cli_args *a) {
  const struct cli_cmd *c;

  if (a->npos == 0) {
    cli_args_help(NULL);
    return CLI_EXIT_OK;
  }
  for (c = cli_cmd_table; c->name != NULL; c++) {
    if (strcmp(c->name, a->pos[0]) == 0) {
      cli_args_help(c);
      return CLI_EXIT_OK;
    }
  }
  return cli_out_usage(cli->cmd, "'%s' is not a command", a->pos[0]);
}

/* ---- the table --------------------------------------------------------- */

static const struct cli_opt init_opts[] = {
    {"name", "LABEL", OPT_NAME,
     "a label for this replica (the tablet or its user)"},
    {NULL, NULL, 0, NULL},
};
static const struct cli_opt edit_opts[] = {
    {"clear", "FIELD", OPT_CLEAR, "remove FIELD's value (may be repeated)"},
    {NULL, NULL, 0, NULL},
};
static const struct cli_opt json_opts[] = {
    {"json", NULL, OPT_JSON, "print JSON"},
    {NULL, NULL, 0, NULL},
};
static const struct cli_opt list_opts[] = {
    {"visit", "ID", OPT_VISIT, "only records of visit ID"},
    {"service", "ID", OPT_SERVICE, "only records of service ID"},
    {"deleted", NULL, OPT_DELETED, "also list deleted records"},
    {"json", NULL, OPT_JSON, "print a JSON array of records"},
    {NULL, NULL, 0, NULL},
};
static const struct cli_opt resolve_opts[] = {
    {"keep", "HASH", OPT_KEEP, "keep the version whose hash starts with HASH"},
    {"clear", "FIELD", OPT_CLEAR, "remove FIELD's value (may be repeated)"},
    {NULL, NULL, 0, NULL},
};
static const struct cli_opt export_opts[] = {
    {"format", "FORMAT", OPT_FORMAT, "json (the default) or csv"},
    {NULL, NULL, 0, NULL},
};

static const struct cli_opt quarantine_opts[] = {
    {"json", NULL, OPT_JSON, "list: print a JSON array"},
    {"force", NULL, OPT_FORCE, "export: replace an existing FILE"},
    {"all", NULL, OPT_ALL, "discard: every quarantined version"},
    {NULL, NULL, 0, NULL},
};

static const char *const names_collection[] = {"COLLECTION", "FILE"};
static const char *const names_id[] = {"ID"};
static const char *const names_none[] = {NULL};

const struct cli_cmd cli_cmd_table[] = {
    {"init", "init [--name LABEL]",
     "create the database and print its replica id",
     "Creates a new database at the --db path and prints this replica's id\n"
     "(32 hex digits). If anything already exists at that path, nothing is\n"
     "created or changed: an existing database is never reused.\n",
     init_opts, names_none, 0, 0, cmd_init},
    {"add", "add COLLECTION [FIELD=VALUE]...", "add a record and print its id",
     "Adds a record to COLLECTION and prints its id (32 hex digits).\n"
     "Each FIELD=VALUE sets one field; give a repeated field several times\n"
     "for several values. Values are text: numbers in decimal, booleans as\n"
     "true/false/yes/no, enum values by name (kind=key, consent=given),\n"
     "ids of other records as 32 hex digits, nested messages as a JSON\n"
     "object. 'fieldsync fields COLLECTION' lists the fields and types.\n\n"
     "Examples:\n"
     "  fieldsync add visit kind=key planned_date=2024-05-01\n"
     "  fieldsync add observation visit_id=ID standard_code=OP9 "
     "judgement=3 \\\n"
     "      case_refs=C1 case_refs=C2\n",
     NULL, names_collection, 1, SIZE_MAX, cmd_add},
    {"edit", "edit ID [FIELD=VALUE]... [--clear FIELD]...",
     "change fields of a record",
     "Saves a new version of record ID with the changes, applied in the\n"
     "order given. FIELD=VALUE sets a field (for a repeated field, the\n"
     "first value replaces the list and later ones append); FIELD= sets an\n"
     "empty value; --clear FIELD removes the value (\"not recorded\"). A\n"
     "record in conflict must be resolved first.\n",
     edit_opts, names_id, 1, SIZE_MAX, cmd_edit},
    {"delete", "delete ID", "delete a record",
     "Deletes record ID. The deletion is a new version, synced like an\n"
     "edit; 'fieldsync list --deleted' still lists the record.\n",
     NULL, names_id, 1, 1, cmd_delete},
    {"show", "show ID [--json]", "show a record and its versions",
     "Shows record ID with every current version: one normally, several\n"
     "when it is in conflict (the display winner first). For each version:\n"
     "the start of its content hash, its version vector, author, time and\n"
     "fields. --json prints the record as the library's JSON:\n"
     "{\"collection\", \"id\", \"deleted\", \"conflict\", \"versions\": "
     "[{\"vv\",\n"
     "\"hash\", \"deleted\", \"author\", \"time\", \"fields\"}]}.\n",
     json_opts, names_id, 1, 1, cmd_show},
    {"list",
     "list [COLLECTION] [--visit ID] [--service ID]\n"
     "                                  [--deleted] [--json]",
     "list records",
     "Lists records, one a line: id, collection, conflict and deletion\n"
     "marks, and the first few fields. COLLECTION, --visit and --service\n"
     "narrow the list. --json prints a JSON array of records, each as\n"
     "'fieldsync show --json' prints it.\n",
     list_opts, names_none, 0, 1, cmd_list},
    {"conflicts", "conflicts [--json]", "list records in conflict",
     "Lists records in conflict: edited concurrently on different\n"
     "replicas, so each has several current versions. Nothing is lost;\n"
     "resolve each with 'fieldsync resolve'. --json prints a JSON array.\n",
     json_opts, names_none, 0, 0, cmd_conflicts},
    {"resolve",
     "resolve ID --keep HASH\n"
     "       fieldsync [--db PATH] resolve ID FIELD=VALUE... "
     "[--clear FIELD]...",
     "resolve a conflict",
     "Resolves the conflict on record ID. --keep HASH keeps one version,\n"
     "named by the start of its hash as 'fieldsync show ID' prints it (at\n"
     "least 8 hex digits). Otherwise FIELD=VALUE and --clear FIELD change\n"
     "the displayed version's content, and the result becomes the record.\n"
     "Either way the new version supersedes every conflicting one.\n",
     resolve_opts, names_id, 1, SIZE_MAX, cmd_resolve},
    {"export", "export [--format json|csv] [COLLECTION]",
     "write records to standard output",
     "Writes the records (of COLLECTION, or all) to standard output as\n"
     "JSON, an array of records as 'show --json' prints them, or as CSV,\n"
     "one row per record: id, then the displayed version's fields, with\n"
     "repeated values joined by '|'. CSV needs a COLLECTION.\n",
     export_opts, names_none, 0, 1, cmd_export},
    {"import", "import COLLECTION FILE", "import records from a file",
     "Imports records of COLLECTION from FILE, either CSV (.csv: a header\n"
     "row of field names, then a row per record; '|' separates a repeated\n"
     "field's values; an 'id' column keeps record ids) or JSON lines\n"
     "(.jsonl or .json: an object of fields per line). A file is imported\n"
     "whole or not at all: a bad row stops the import, the message names\n"
     "its line, and nothing from the file is kept.\n",
     NULL, names_collection, 2, 2, cmd_import},
    {"sync",
     "sync --server HOST:PORT [--ca FILE [--pin HEX] | --plaintext] "
     "[OPTIONS]",
     "sync with a fieldsync server",
     "Pushes every local change the server has not acknowledged, then pulls\n"
     "everyone else's changes. The token may also come from\n"
     "$FIELDSYNC_TOKEN (keeps it out of the process list). Concurrent edits\n"
     "arrive as conflicts ('fieldsync conflicts'); nothing is overwritten.\n"
     "A sync that is interrupted loses nothing: run it again. Shows a\n"
     "progress bar on a terminal, plain lines otherwise, then a summary\n"
     "(--json: as a JSON object). Records of a visit the server no longer\n"
     "gives this device are removed; what of them it had not acknowledged\n"
     "goes to the quarantine first ('fieldsync quarantine'). Exits 1 when\n"
     "the sync did not complete, 3 when it completed but the server refused\n"
     "some records ('fieldsync refused'), and 4 when the server revoked\n"
     "this device: local data was wiped after unacknowledged versions were\n"
     "quarantined.\n"
     "\n"
     "The connection is TLS: the server's certificate must chain to the CA\n"
     "in --ca FILE (default: the system's CA store) and name the host in\n"
     "--server; --pin also requires its public key's SHA-256. --plaintext\n"
     "syncs over plain TCP, which servers allow on loopback only.\n",
     cli_sync_opts, names_none, 0, 0, cli_cmd_sync},
    {"status", "status [--json]",
     "show what the replica holds and what it owes the server",
     "Shows this replica's id and counts: records, records in conflict,\n"
     "versions pending (waiting to be sent), versions refused by the server\n"
     "('fieldsync refused'), versions in the quarantine ('fieldsync\n"
     "quarantine'), scopes held (visits and services the server gave this\n"
     "device; 0 for head office) and the pull cursor. --json prints\n"
     "{\"replica\", \"records\", \"conflicts\", \"pending\", \"refused\",\n"
     "\"quarantined\", \"held_scopes\", \"cursor\"}.\n",
     json_opts, names_none, 0, 0, cmd_status},
    {"refused", "refused [--json]", "list versions the server refused",
     "Lists the local versions the server refused, oldest first, one a\n"
     "line: record id, collection, the start of the version's hash, when it\n"
     "was refused, and the server's code and reason. They stay here, and\n"
     "are not sent again until 'fieldsync retry'. --json prints a JSON array\n"
     "of {\"collection\", \"id\", \"hash\", \"code\", \"reason\",\n"
     "\"refused_at\"}.\n",
     json_opts, names_none, 0, 0, cmd_refused},
    {"retry", "retry [ID]", "send refused versions again at the next sync",
     "Clears the refused mark of record ID's versions (of every record\n"
     "without ID), so the next sync sends them again: after the reason was\n"
     "fixed on the server (an assignment, say) or the record was edited.\n"
     "Fails when record ID has no refused version.\n",
     NULL, names_none, 0, 1, cmd_retry},
    {"quarantine",
     "quarantine [list] [--json]\n"
     "       fieldsync [--db PATH] quarantine export FILE [--force]\n"
     "       fieldsync [--db PATH] quarantine discard (QID | --all)",
     "list, export or discard quarantined versions",
     "The quarantine keeps the versions this device made that no server\n"
     "acknowledged, of records the server took away: a visit no longer\n"
     "assigned (\"scope removed by the server\"), or everything when the\n"
     "device was revoked (\"device revoked\"). Nothing else ever deletes\n"
     "them.\n\n"
     "list (the default) prints one line per version, oldest first: its\n"
     "QID, collection, record id, the start of its hash, its scope, when\n"
     "and why it was quarantined, and the server's refusal if it had one.\n"
     "--json prints a JSON array of the objects export writes.\n"
     "export FILE writes one JSON object per line (qid, collection, id,\n"
     "scope, reason, quarantined_at, deleted, vv, hash, author, time,\n"
     "refused, fields) and flushes it to disk; it will not replace an\n"
     "existing FILE without --force.\n"
     "discard QID deletes one version, --all every one: export first.\n",
     quarantine_opts, names_none, 0, 2, cmd_quarantine},
    {"fields", "fields COLLECTION", "list a collection's fields and types",
     "Lists the fields of COLLECTION with their types: what FIELD=VALUE\n"
     "accepts in add, edit and resolve.\n",
     NULL, names_collection, 1, 1, cmd_fields},
    {"collections", "collections", "list the collections",
     "Lists the names of the collections.\n", NULL, names_none, 0, 0,
     cmd_collections},
    {"help", "help [COMMAND]", "show the help of the tool or a command",
     "Shows the help of the tool, or of COMMAND.\n", NULL, names_none, 0, 1,
     cmd_help},
    {NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, NULL},
};
