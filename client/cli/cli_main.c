/* SPDX-License-Identifier: MIT */
/* The `fieldsync` command-line tool: records inspections in a local
 * fieldsync database from a shell or a script. This file reads the global
 * options, finds the command, runs it and turns the outcome into an exit
 * status: 0 success, 1 a failed operation, 2 bad usage (and for sync, 3
 * records refused, 4 device revoked). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* Prints the tool's version and the library's (they differ when the tool
 * runs against another build of a shared libfieldsync). */
static void print_version(void) {
  printf("fieldsync %d.%d.%d (libfieldsync %s)\n", FIELDSYNC_VERSION_MAJOR,
         FIELDSYNC_VERSION_MINOR, FIELDSYNC_VERSION_PATCH,
         fieldsync_version_string());
}

/* True when some command has option `--name` (for a better hint when it
 * is given before the command). */
static bool is_command_option(const char *arg) {
  const struct cli_cmd *c;
  const struct cli_opt *o;
  size_t len;

  if (strncmp(arg, "--", 2) != 0)
    return false;
  arg += 2;
  len = strcspn(arg, "=");
  for (c = cli_cmd_table; c->name != NULL; c++) {
    for (o = c->opts; o != NULL && o->name != NULL; o++) {
      if (strlen(o->name) == len && strncmp(o->name, arg, len) == 0)
        return true;
    }
  }
  return false;
}

/* Runs the tool; returns the exit status. */
static int run(struct cli *cli, int argc, char **argv) {
  const struct cli_cmd *cmd;
  struct cli_args args;
  int i = 1;
  int ret;

  while (i < argc && argv[i][0] == '-' && argv[i][1] != '\0') {
    const char *arg = argv[i];

    if (strcmp(arg, "--") == 0) {
      i++;
      break;
    }
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
      cli_args_help(NULL);
      return CLI_EXIT_OK;
    }
    if (strcmp(arg, "--version") == 0) {
      print_version();
      return CLI_EXIT_OK;
    }
    if (strcmp(arg, "--db") == 0) {
      if (i + 1 >= argc || argv[i + 1][0] == '\0' ||
          (argv[i + 1][0] == '-' && argv[i + 1][1] != '\0'))
        return cli_out_usage(NULL, "option '--db' needs a path");
      cli->db_path = argv[i + 1];
      i += 2;
      continue;
    }
    if (strncmp(arg, "--db=", 5) == 0) {
      if (arg[5] == '\0')
        return cli_out_usage(NULL, "option '--db' needs a path");
      cli->db_path = arg + 5;
      i++;
      continue;
    }
    if (is_command_option(arg))
      return cli_out_usage(NULL, "option '%s' goes after the command", arg);
    return cli_out_usage(NULL, "unknown option '%s'", arg);
  }
  if (i >= argc)
    return cli_out_usage(NULL, "no command given");
  for (cmd = cli_cmd_table; cmd->name != NULL; cmd++) {
    if (strcmp(cmd->name, argv[i]) == 0)
      break;
  }
  if (cmd->name == NULL)
    return cli_out_usage(NULL, "'%s' is not a command", argv[i]);
  cli->cmd = cmd->name;
  switch (cli_args_parse(cli, cmd, argc - i - 1, argv + i + 1, &args)) {
  case CLI_PARSE_OK:
    break;
  case CLI_PARSE_HELP:
    cli_args_help(cmd);
    return CLI_EXIT_OK;
  case CLI_PARSE_USAGE:
    return CLI_EXIT_USAGE;
  default:
    return cli_out_fail(cli, "out of memory");
  }
  ret = cmd->run(cli, &args);
  cli_args_free(&args);
  return ret;
}

int main(int argc, char **argv) {
  struct cli cli;
  const char *env = getenv("FIELDSYNC_DB");
  int ret;
  int rc;

  memset(&cli, 0, sizeof(cli));
  cli.db_path = env != NULL && *env != '\0' ? env : CLI_DEFAULT_DB;
  ret = run(&cli, argc, argv);
  if (cli.db != NULL) {
    rc = fieldsync_close(cli.db);
    cli.db = NULL;
    if (rc != 0 && ret == CLI_EXIT_OK)
      ret = cli_out_fail(&cli, "closing %s: %s", cli.db_path,
                         fieldsync_strerror(rc));
  }
  if (cli_out_finish(&cli) != CLI_EXIT_OK && ret == CLI_EXIT_OK)
    ret = CLI_EXIT_FAIL;
  return ret;
}
