/* SPDX-License-Identifier: MIT */
/* The commands of the fieldsync tool and their help texts. Each command
 * checks its arguments before it opens the database, so bad usage never
 * touches it, then makes one library call per step and reports the first
 * failure with the library's message. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
  OPT_FORMAT
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

/* State of a `list` or `conflicts` query while records arrive. */
struct list_state {
  bool json;
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
  } else if (!cli_out_summary(json, s->err, sizeof(s->err))) {
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
  if (json)
    cli_out_write("[", 1);
  rc = fieldsync_query(cli->db, q, list_cb, &s);
  if (rc == FIELDSYNC_ECALLBACK && s.write_failed)
    return cli_out_fail(cli, "cannot write to standard output: %s",
                        strerror(s.write_errno));
  if (rc == FIELDSYNC_ECALLBACK && s.err[0] != '\0')
    return cli_out_fail(cli, "%s", s.err);
  if (rc != 0)
    return cli_out_libfail(cli, rc);
  if (json)
    cli_out_write(s.n > 0 ? "\n]\n" : "]\n", s.n > 0 ? 3 : 2);
  return CLI_EXIT_OK;
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
     "(--json: as a JSON object). Exits 1 when the sync did not complete\n"
     "and 3 when it completed but the server refused some records.\n"
     "\n"
     "The connection is TLS: the server's certificate must chain to the CA\n"
     "in --ca FILE (default: the system's CA store) and name the host in\n"
     "--server; --pin also requires its public key's SHA-256. --plaintext\n"
     "syncs over plain TCP, which servers allow on loopback only.\n",
     cli_sync_opts, names_none, 0, 0, cli_cmd_sync},
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
