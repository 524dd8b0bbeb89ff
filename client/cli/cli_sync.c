/* SPDX-License-Identifier: MIT */
/* `fieldsync sync`: one sync session with a server, with a progress bar on
 * a terminal (plain lines otherwise), refused records and quarantined
 * versions reported on stderr, a summary, and an exit status that tells a
 * refusal (3) and a revoked device (4) apart from a failure (1). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"

enum {
  OPT_SERVER = CLI_OPT_FIRST,
  OPT_TOKEN,
  OPT_TIMEOUT,
  OPT_SYNC_JSON,
  OPT_CA,
  OPT_PIN,
  OPT_PLAINTEXT
};

const struct cli_opt cli_sync_opts[] = {
    {"server", "HOST:PORT", OPT_SERVER, "the server to sync with"},
    {"ca", "FILE", OPT_CA,
     "CA certificates (PEM) to verify the server with"},
    {"pin", "HEX", OPT_PIN,
     "also require this SHA-256 of the server's public key"},
    {"plaintext", NULL, OPT_PLAINTEXT,
     "no TLS (servers allow it on loopback only)"},
    {"token", "TOKEN", OPT_TOKEN,
     "this device's token (default: $FIELDSYNC_TOKEN)"},
    {"timeout-ms", "MS", OPT_TIMEOUT,
     "give up when the network stalls this long (default 30000)"},
    {"json", NULL, OPT_SYNC_JSON, "print the summary as JSON"},
    {NULL, NULL, 0, NULL},
};

struct progress {
  bool tty;
  const char *last_phase;
  size_t refused;
};

static void on_progress(const char *phase, size_t done, size_t total,
                        void *data) {
  struct progress *p = data;

  if (p->tty) {
    char bar[31];
    size_t fill = total > 0 ? (done * 30) / total : 0;
    size_t i;

    for (i = 0; i < 30; i++)
      bar[i] = i < fill ? '#' : '.';
    bar[30] = '\0';
    if (total > 0)
      fprintf(stderr, "\r%-4s [%s] %zu/%zu", phase, bar, done, total);
    else
      fprintf(stderr, "\r%-4s %zu received", phase, done);
    if (p->last_phase != NULL && strcmp(p->last_phase, phase) != 0)
      fputc('\n', stderr);
  } else {
    fprintf(stderr, "%s: %zu%s%.0zu\n", phase, done, total > 0 ? " of " : "",
            total);
  }
  fflush(stderr);
  p->last_phase = phase;
}

static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  struct progress *p = data;

  if (strcmp(outcome, "refused") != 0)
    return;
  p->refused++;
  if (p->tty)
    fputc('\n', stderr);
  fprintf(stderr, "fieldsync: sync: refused %s %s: %s\n", collection, id,
          reason != NULL ? reason : "no reason given");
}

int cli_cmd_sync(struct cli *cli, const struct cli_args *a) {
  struct fieldsync_sync_opts opts;
  struct fieldsync_sync_stats st;
  struct progress prog;
  bool json = false;
  size_t i;
  int ret;
  int rc;

  memset(&opts, 0, sizeof(opts));
  memset(&st, 0, sizeof(st));
  memset(&prog, 0, sizeof(prog));
  opts.token = getenv("FIELDSYNC_TOKEN");
  for (i = 0; i < a->nitems; i++) {
    const struct cli_item *it = &a->items[i];
    if (it->id == OPT_SERVER) {
      opts.server = it->value;
    } else if (it->id == OPT_TOKEN) {
      opts.token = it->value;
    } else if (it->id == OPT_SYNC_JSON) {
      json = true;
    } else if (it->id == OPT_CA) {
      opts.ca_file = it->value;
    } else if (it->id == OPT_PIN) {
      opts.pin_sha256 = it->value;
    } else if (it->id == OPT_PLAINTEXT) {
      opts.plaintext = 1;
    } else if (it->id == OPT_TIMEOUT) {
      char *end = NULL;
      long v;
      errno = 0;
      v = strtol(it->value, &end, 10);
      if (errno != 0 || end == it->value || *end != '\0' || v <= 0 ||
          v > 3600000)
        return cli_out_usage(cli->cmd, "--timeout-ms: \"%s\" is not 1..3600000",
                             it->value);
      opts.timeout_ms = (int)v;
    }
  }
  if (opts.server == NULL)
    return cli_out_usage(cli->cmd, "--server HOST:PORT is required");
  if (opts.plaintext && (opts.ca_file != NULL || opts.pin_sha256 != NULL))
    return cli_out_usage(cli->cmd, "--plaintext excludes --ca and --pin");
  if (opts.token == NULL || opts.token[0] == '\0')
    return cli_out_usage(cli->cmd,
                         "a device token is required (--token or "
                         "$FIELDSYNC_TOKEN)");
  ret = cli_open_db(cli);
  if (ret != CLI_EXIT_OK)
    return ret;
  prog.tty = isatty(STDERR_FILENO) != 0;
  opts.progress = on_progress;
  opts.progress_data = &prog;
  opts.outcome = on_outcome;
  opts.outcome_data = &prog;
  rc = fieldsync_sync(cli->db, &opts, &st);
  if (prog.tty && prog.last_phase != NULL)
    fputc('\n', stderr);
  if (json) {
    json_t *o = json_pack(
        "{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}",
        "complete", rc == 0, "pushed", (json_int_t)st.pushed, "acked",
        (json_int_t)st.acked, "conflicts", (json_int_t)st.conflicts, "refused",
        (json_int_t)st.refused, "pulled", (json_int_t)st.pulled, "applied",
        (json_int_t)st.applied, "pull_conflicts", (json_int_t)st.pull_conflicts,
        "cursor", (json_int_t)st.cursor, "removed", (json_int_t)st.removed,
        "quarantined", (json_int_t)st.quarantined, "revoked",
        rc == FIELDSYNC_EREVOKED);
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s != NULL)
      printf("%s\n", s);
    free(s);
    json_decref(o);
  } else {
    printf("pushed %zu (acknowledged %zu, conflicts %zu, refused %zu); "
           "pulled %zu (new %zu, conflicts %zu); removed %zu (quarantined "
           "%zu)\n",
           st.pushed, st.acked, st.conflicts, st.refused, st.pulled, st.applied,
           st.pull_conflicts, st.removed, st.quarantined);
  }
  if (rc == FIELDSYNC_EREVOKED) {
    /* The library's message says what was wiped and what was kept. */
    cli_out_libfail(cli, rc);
    fprintf(stderr, "fieldsync: sync: this tablet may no longer sync; "
                    "export the quarantine ('fieldsync quarantine export "
                    "FILE') before handing it back\n");
    return CLI_EXIT_REVOKED;
  }
  if (st.quarantined > 0)
    fprintf(stderr,
            "fieldsync: sync: %zu record%s removed with scopes the server "
            "withdrew; %zu unacknowledged version%s kept in the quarantine "
            "('fieldsync quarantine')\n",
            st.removed, st.removed == 1 ? "" : "s", st.quarantined,
            st.quarantined == 1 ? "" : "s");
  if (rc != 0) {
    cli_out_libfail(cli, rc);
    fprintf(stderr, "fieldsync: sync did not complete; nothing is lost: run "
                    "it again\n");
    return CLI_EXIT_FAIL;
  }
  ret = cli_out_finish(cli);
  if (ret == CLI_EXIT_OK && st.refused > 0)
    return CLI_EXIT_REFUSED;
  return ret;
}
