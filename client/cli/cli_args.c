/* SPDX-License-Identifier: MIT */
/* Argument parsing and help texts of the fieldsync tool. Every command
 * takes "--name VALUE"/"--name=VALUE" options anywhere among its
 * positionals, "--" to end them, and -h/--help; a problem is reported once,
 * naming the argument, before anything is opened. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Finds option `name` (length len) among the command's options and the
 * ones every command has. Returns NULL when it is unknown. */
static const struct cli_opt *find_opt(const struct cli_cmd *cmd,
                                      const char *name, size_t len) {
  static const struct cli_opt common[] = {
      {"help", NULL, CLI_OPT_HELP, "show this help"},
      {"db", "PATH", CLI_OPT_DB,
       "the database (default: $FIELDSYNC_DB or ./fieldsync.db)"},
      {NULL, NULL, 0, NULL},
  };
  const struct cli_opt *tables[2];
  size_t t;

  tables[0] = common;
  tables[1] = cmd->opts;
  for (t = 0; t < 2; t++) {
    const struct cli_opt *o = tables[t];

    for (; o != NULL && o->name != NULL; o++) {
      if (strlen(o->name) == len && memcmp(o->name, name, len) == 0)
        return o;
    }
  }
  return NULL;
}

/* True when arg looks like an option rather than a value. */
static bool is_option(const char *arg) {
  return arg[0] == '-' && arg[1] != '\0';
}

enum cli_parse cli_args_parse(struct cli *cli, const struct cli_cmd *cmd,
                              int argc, char **argv, struct cli_args *out) {
  size_t n = argc > 0 ? (size_t)argc : 1;
  bool only_pos = false;
  int i;

  memset(out, 0, sizeof(*out));
  /* Help wins over everything else, so `fieldsync add --help` works
   * whatever else is on the line. */
  for (i = 0; i < argc && strcmp(argv[i], "--") != 0; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
      return CLI_PARSE_HELP;
  }
  out->items = calloc(n, sizeof(*out->items));
  out->pos = calloc(n, sizeof(*out->pos));
  if (out->items == NULL || out->pos == NULL)
    goto nomem;
  for (i = 0; i < argc; i++) {
    const char *arg = argv[i];
    const struct cli_opt *o;
    const char *name;
    const char *eq;
    const char *value = NULL;
    size_t len;

    if (!only_pos && strcmp(arg, "--") == 0) {
      only_pos = true;
      continue;
    }
    if (only_pos || !is_option(arg)) {
      if (out->npos >= cmd->max_pos) {
        cli_out_usage(cmd->name, "unexpected argument '%s'", arg);
        goto usage;
      }
      out->pos[out->npos++] = arg;
      out->items[out->nitems].id = CLI_OPT_POSITIONAL;
      out->items[out->nitems++].value = arg;
      continue;
    }
    if (arg[1] != '-') {
      cli_out_usage(cmd->name, "unknown option '%s'", arg);
      goto usage;
    }
    name = arg + 2;
    eq = strchr(name, '=');
    len = eq != NULL ? (size_t)(eq - name) : strlen(name);
    o = find_opt(cmd, name, len);
    if (o == NULL) {
      cli_out_usage(cmd->name, "unknown option '--%.*s'", (int)len, name);
      goto usage;
    }
    if (o->arg == NULL && eq != NULL) {
      cli_out_usage(cmd->name, "option '--%s' takes no value", o->name);
      goto usage;
    }
    if (o->arg != NULL) {
      if (eq != NULL) {
        value = eq + 1;
      } else if (i + 1 < argc && !is_option(argv[i + 1])) {
        value = argv[++i];
      } else {
        cli_out_usage(cmd->name, "option '--%s' needs a value (%s)", o->name,
                      o->arg);
        goto usage;
      }
    }
    if (o->id == CLI_OPT_DB) {
      if (*value == '\0') {
        cli_out_usage(cmd->name, "option '--db' needs a path");
        goto usage;
      }
      cli->db_path = value;
      continue;
    }
    out->items[out->nitems].id = o->id;
    out->items[out->nitems++].value = value;
  }
  if (out->npos < cmd->min_pos) {
    cli_out_usage(cmd->name, "missing %s", cmd->pos_names[out->npos]);
    goto usage;
  }
  return CLI_PARSE_OK;

nomem:
  cli_args_free(out);
  return CLI_PARSE_NOMEM;
usage:
  cli_args_free(out);
  return CLI_PARSE_USAGE;
}

void cli_args_free(struct cli_args *a) {
  free(a->items);
  free(a->pos);
  memset(a, 0, sizeof(*a));
}

int cli_args_split(const struct cli *cli, const char *arg, char **field,
                   const char **value) {
  const char *eq = strchr(arg, '=');

  *field = NULL;
  *value = NULL;
  if (eq == NULL)
    return cli_out_usage(cli->cmd, "'%s' is not FIELD=VALUE (no '=')", arg);
  if (eq == arg)
    return cli_out_usage(cli->cmd, "'%s' has no field name before '='", arg);
  *field = strndup(arg, (size_t)(eq - arg));
  if (*field == NULL)
    return cli_out_fail(cli, "out of memory");
  *value = eq + 1;
  return CLI_EXIT_OK;
}

/* Prints one line per option of a table. */
static void print_opts(FILE *f, const struct cli_opt *o) {
  for (; o != NULL && o->name != NULL; o++) {
    char left[64];

    if (o->arg != NULL)
      snprintf(left, sizeof(left), "--%s %s", o->name, o->arg);
    else
      snprintf(left, sizeof(left), "--%s", o->name);
    fprintf(f, "  %-18s  %s\n", left, o->desc);
  }
}

void cli_args_help(const struct cli_cmd *cmd) {
  FILE *f = stdout;
  const struct cli_cmd *c;

  if (cmd != NULL) {
    fprintf(f, "usage: fieldsync [--db PATH] %s\n\n%s\nOptions:\n",
            cmd->synopsis, cmd->help);
    print_opts(f, cmd->opts);
    fprintf(f, "  %-18s  %s\n  %-18s  %s\n", "--db PATH",
            "the database (default: $FIELDSYNC_DB or ./fieldsync.db)",
            "-h, --help", "show this help");
    return;
  }
  fputs("usage: fieldsync [--db PATH] COMMAND [ARGS...]\n"
        "       fieldsync --help | --version\n\n"
        "Records care-home inspections offline in a local fieldsync\n"
        "database: services, visits, observations, interview notes,\n"
        "requirements, recommendations, concerns and attachments.\n\n"
        "Commands:\n",
        f);
  for (c = cli_cmd_table; c->name != NULL; c++)
    fprintf(f, "  %-12s %s\n", c->name, c->summary);
  fputs("\nGlobal options (before the command):\n"
        "  --db PATH    the database (default: $FIELDSYNC_DB, else "
        "./fieldsync.db)\n"
        "  -h, --help   show this help; 'fieldsync COMMAND --help' for one "
        "command\n"
        "  --version    print the tool's and the library's version\n\n"
        "Exit status: 0 success, 1 the operation failed, 2 bad usage;\n"
        "sync also 3 (the server refused some records) and 4 (the server\n"
        "revoked this device).\n",
        f);
}
