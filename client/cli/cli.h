/* SPDX-License-Identifier: MIT */
/* Internal interface between the parts of the `fieldsync` command-line tool:
 * argument parsing (cli_args.c), text and JSON output (cli_out.c) and the
 * commands (cli_cmd.c), driven by cli_main.c. Like curl's src/, the tool
 * uses only the public header fieldsync.h. */
#ifndef CLI_H
#define CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fieldsync.h"

/* The database used without --db or $FIELDSYNC_DB. */
#define CLI_DEFAULT_DB "./fieldsync.db"

/* Exit statuses: success, a failed operation, bad usage; and for `sync`:
 * completed but the server refused some records, and the server revoked
 * this device (local data wiped, unacknowledged work quarantined). */
enum {
  CLI_EXIT_OK = 0,
  CLI_EXIT_FAIL = 1,
  CLI_EXIT_USAGE = 2,
  CLI_EXIT_REFUSED = 3,
  CLI_EXIT_REVOKED = 4
};

/* Option ids every command accepts (command-specific ids start at
 * CLI_OPT_FIRST). */
enum { CLI_OPT_POSITIONAL = 0, CLI_OPT_HELP, CLI_OPT_DB, CLI_OPT_FIRST };

/* One option a command accepts: "--name" or "--name VALUE"/"--name=VALUE".
 * A table of them ends with a NULL name. */
struct cli_opt {
  const char *name; /* long name without the dashes */
  const char *arg;  /* placeholder of its value ("ID"), NULL for a flag */
  int id;           /* CLI_OPT_FIRST or above */
  const char *desc; /* one line for the command's help */
};

/* One parsed argument, in command-line order. */
struct cli_item {
  int id;            /* CLI_OPT_POSITIONAL or the option's id */
  const char *value; /* the positional, the option's value, or NULL */
};

/* A command's arguments after parsing. Positionals are also listed
 * separately, in order, for convenience. */
struct cli_args {
  struct cli_item *items;
  size_t nitems;
  const char **pos;
  size_t npos;
};

/* The state of one run of the tool. */
struct cli {
  const char *db_path; /* --db, else $FIELDSYNC_DB, else ./fieldsync.db */
  const char *cmd;     /* the command's name, for messages */
  fieldsync_db *db;    /* open database, or NULL */
};

/* One command: its name, help texts, options and positional limits. */
struct cli_cmd {
  const char *name;
  const char *synopsis;         /* after "usage: fieldsync " */
  const char *summary;          /* one line for `fieldsync --help` */
  const char *help;             /* paragraphs after the usage line */
  const struct cli_opt *opts;   /* NULL-name-terminated, or NULL */
  const char *const *pos_names; /* names of required positionals */
  size_t min_pos;               /* positionals required */
  size_t max_pos;               /* positionals allowed (SIZE_MAX: any) */
  int (*run)(struct cli *cli, const struct cli_args *a);
};

/* The command table (cli_cmd.c), ending with a NULL name. */
extern const struct cli_cmd cli_cmd_table[];

/* Opens cli->db_path (never creating it); reports failures. Returns
 * CLI_EXIT_OK or an exit status (cli_cmd.c). */
int cli_open_db(struct cli *cli);

/* cli_sync.c: the sync command and its options. */
extern const struct cli_opt cli_sync_opts[];
int cli_cmd_sync(struct cli *cli, const struct cli_args *a);

/* cli_args.c */

/* Results of cli_args_parse(). */
enum cli_parse {
  CLI_PARSE_OK,
  CLI_PARSE_HELP,
  CLI_PARSE_USAGE,
  CLI_PARSE_NOMEM
};

/* Parses the arguments after the command name. "--" ends the options; -h
 * and --help anywhere before it ask for help; --db PATH is accepted by
 * every command and stored in cli->db_path. On CLI_PARSE_USAGE the message
 * has been printed. On CLI_PARSE_OK, free *out with cli_args_free(). */
enum cli_parse cli_args_parse(struct cli *cli, const struct cli_cmd *cmd,
                              int argc, char **argv, struct cli_args *out);
void cli_args_free(struct cli_args *a);

/* Splits "FIELD=VALUE" at the first '='. *field gets a malloc'd copy of
 * the name (free it); *value points into arg. Returns CLI_EXIT_OK, or
 * prints the problem and returns CLI_EXIT_USAGE (no '=', or no name before
 * it: the message names arg) or CLI_EXIT_FAIL (out of memory). */
int cli_args_split(const struct cli *cli, const char *arg, char **field,
                   const char **value);

/* Prints the usage and help of one command, or of the tool (cmd NULL), to
 * stdout. */
void cli_args_help(const struct cli_cmd *cmd);

/* cli_out.c */

/* Prints a usage error "fieldsync: CMD: MESSAGE" and a hint to stderr and
 * returns CLI_EXIT_USAGE. cmd may be NULL (global). */
int cli_out_usage(const char *cmd, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Prints a runtime failure "fieldsync: CMD: MESSAGE" to stderr and
 * returns CLI_EXIT_FAIL. */
int cli_out_fail(const struct cli *cli, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Reports a library failure: "fieldsync: CMD: <fieldsync_errmsg>" (or the
 * code's text when there is no handle). Returns CLI_EXIT_FAIL. */
int cli_out_libfail(const struct cli *cli, int rc);

/* Writes n bytes to stdout; false on a write error (errno set). */
bool cli_out_write(const char *buf, size_t n);
/* Flushes stdout. Returns CLI_EXIT_OK, or reports the write error and
 * returns CLI_EXIT_FAIL. */
int cli_out_finish(const struct cli *cli);

/* Prints one record (the library's JSON) in the readable form of `show`.
 * Returns false (message in err) when the JSON cannot be read. */
bool cli_out_record(const char *json, char *err, size_t errcap);

/* Prints the one-line summary of a record used by `list`. Returns false
 * (message in err) when the JSON cannot be read. */
bool cli_out_summary(const char *json, char *err, size_t errcap);

/* One line of `refused` from a fieldsync_refused() JSON object, and of
 * `quarantine list` from a fieldsync_quarantine() one. false (message in
 * err) when the JSON cannot be read. */
bool cli_out_refused(const char *json, char *err, size_t errcap);
bool cli_out_quarantined(const char *json, char *err, size_t errcap);

#endif
