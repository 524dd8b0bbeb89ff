/* SPDX-License-Identifier: MIT */
/* fieldsync-admin: the operator's tool for a server database. It adds users
 * and devices through srv_store.h only; `device add` prints the new token
 * alone on stdout so scripts can capture it. Exit status: 0 success, 1 a
 * runtime failure, 2 a usage error. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "srv_store.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: fieldsync-admin --db PATH COMMAND\n"
    "\n"
    "commands:\n"
    "  user add NAME --role ROLE   add a user; ROLE is inspector, expert or\n"
    "                              head_office (creates the database if it\n"
    "                              does not exist)\n"
    "  device add USER             make a device for USER and print its\n"
    "                              token (shown once; only its hash is "
    "kept)\n"
    "\n"
    "options:\n"
    "  --db PATH                   the server database\n"
    "  -h, --help                  show this help\n";

/* Prints "fieldsync-admin: msg" to stderr and returns status. */
static int fail(int status, const char *msg) {
  fprintf(stderr, "fieldsync-admin: %s\n", msg);
  return status;
}

static int usage_error(const char *msg) {
  fprintf(stderr, "fieldsync-admin: %s\n", msg);
  fprintf(stderr, "Try 'fieldsync-admin --help'.\n");
  return EXIT_USAGE;
}

static int parse_role(const char *s) {
  if (strcmp(s, "inspector") == 0)
    return FIELDSYNC__ROLE__ROLE_INSPECTOR;
  if (strcmp(s, "expert") == 0)
    return FIELDSYNC__ROLE__ROLE_EXPERT;
  if (strcmp(s, "head_office") == 0)
    return FIELDSYNC__ROLE__ROLE_HEAD_OFFICE;
  return 0;
}

/* The name rule of srv_store.h, checked before the database is touched. */
static bool name_ok(const char *s) {
  size_t i;

  for (i = 0; s[i] != '\0'; i++) {
    char ch = s[i];
    if (i >= SRV_NAME_MAX)
      return false;
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
      return false;
  }
  return i > 0;
}

/* A runtime exit status for a store error (a bad argument is usage). */
static int store_status(int rc) {
  return rc == SRV_STORE_EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
}

struct args {
  const char *db;
  const char *role;
  const char *pos[4];
  size_t npos;
  bool help;
};

/* Splits argv into options (anywhere) and positional words. Returns 0 or
 * a usage status, with the message printed. */
static int parse_args(int argc, char **argv, struct args *a) {
  char msg[160];
  int i;

  memset(a, 0, sizeof(*a));
  for (i = 1; i < argc; i++) {
    const char *s = argv[i];
    const char **slot = NULL;
    const char *name = NULL;

    if (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0) {
      a->help = true;
      continue;
    }
    if (strcmp(s, "--db") == 0 || strncmp(s, "--db=", 5) == 0) {
      slot = &a->db;
      name = "--db";
    } else if (strcmp(s, "--role") == 0 || strncmp(s, "--role=", 7) == 0) {
      slot = &a->role;
      name = "--role";
    } else if (strcmp(s, "--") == 0) {
      for (i++; i < argc; i++) {
        if (a->npos == sizeof(a->pos) / sizeof(a->pos[0]))
          return usage_error("too many arguments");
        a->pos[a->npos++] = argv[i];
      }
      break;
    } else if (s[0] == '-' && s[1] != '\0') {
      snprintf(msg, sizeof(msg), "unknown option '%s'", s);
      return usage_error(msg);
    } else {
      if (a->npos == sizeof(a->pos) / sizeof(a->pos[0]))
        return usage_error("too many arguments");
      a->pos[a->npos++] = s;
      continue;
    }
    if (*slot != NULL) {
      snprintf(msg, sizeof(msg), "%s given twice", name);
      return usage_error(msg);
    }
    if (strchr(s, '=') != NULL) {
      *slot = strchr(s, '=') + 1;
    } else if (i + 1 < argc) {
      *slot = argv[++i];
    } else {
      snprintf(msg, sizeof(msg), "%s needs a value", name);
      return usage_error(msg);
    }
    if ((*slot)[0] == '\0') {
      snprintf(msg, sizeof(msg), "%s needs a value", name);
      return usage_error(msg);
    }
  }
  return 0;
}

/* Opens the store and one connection; prints the error and returns the
 * exit status on failure. */
static int open_store(const char *path, bool must_exist, struct srv_store **s,
                      struct srv_store_conn **c) {
  char err[512];
  char msg[640];
  struct stat sb;
  int rc;

  *s = NULL;
  *c = NULL;
  if (must_exist && stat(path, &sb) != 0) {
    snprintf(msg, sizeof(msg), "cannot open %s: %s", path,
             errno == ENOENT ? "no such database" : strerror(errno));
    return fail(EXIT_RUNTIME, msg);
  }
  rc = srv_store_open(path, s, err, sizeof(err));
  if (rc == 0)
    rc = srv_store_conn_open(*s, c, err, sizeof(err));
  if (rc != 0) {
    srv_store_close(*s);
    *s = NULL;
    return fail(EXIT_RUNTIME, err);
  }
  return 0;
}

static int cmd_user_add(const struct args *a) {
  struct srv_store *s;
  struct srv_store_conn *c;
  char msg[320];
  int role;
  int rc;

  if (a->npos < 3)
    return usage_error("user add: missing NAME");
  if (a->npos > 3)
    return usage_error("user add: too many arguments");
  if (a->role == NULL)
    return usage_error("user add: missing --role "
                       "(inspector, expert or head_office)");
  role = parse_role(a->role);
  if (role == 0) {
    snprintf(msg, sizeof(msg),
             "bad role '%.64s' (use inspector, expert or head_office)",
             a->role);
    return usage_error(msg);
  }
  if (!name_ok(a->pos[2])) {
    snprintf(msg, sizeof(msg),
             "bad user name '%.80s': 1 to %d characters of A-Z a-z 0-9 . _ -",
             a->pos[2], SRV_NAME_MAX);
    return usage_error(msg);
  }
  rc = open_store(a->db, false, &s, &c);
  if (rc != 0)
    return rc;
  rc = srv_store_user_add(c, a->pos[2], role);
  if (rc != 0) {
    snprintf(msg, sizeof(msg), "%s", srv_store_errmsg(c));
    rc = fail(store_status(rc), msg);
  }
  srv_store_conn_close(c);
  srv_store_close(s);
  return rc;
}

static int cmd_device_add(const struct args *a) {
  struct srv_store *s;
  struct srv_store_conn *c;
  char token[SRV_TOKEN_LEN + 1];
  char msg[320];
  int64_t id = 0;
  int rc;

  if (a->npos < 3)
    return usage_error("device add: missing USER");
  if (a->npos > 3)
    return usage_error("device add: too many arguments");
  if (a->role != NULL)
    return usage_error("device add: --role does not apply");
  rc = open_store(a->db, true, &s, &c);
  if (rc != 0)
    return rc;
  rc = srv_store_device_add(c, a->pos[2], token, &id);
  if (rc != 0) {
    if (rc == SRV_STORE_ENOTFOUND)
      snprintf(msg, sizeof(msg), "no user '%.80s' (add it with: user add)",
               a->pos[2]);
    else
      snprintf(msg, sizeof(msg), "%s", srv_store_errmsg(c));
    rc = fail(EXIT_RUNTIME, msg);
  } else if (printf("%s\n", token) < 0 || fflush(stdout) != 0) {
    rc = fail(EXIT_RUNTIME, "cannot write the token to stdout");
  }
  memset(token, 0, sizeof(token));
  srv_store_conn_close(c);
  srv_store_close(s);
  return rc;
}

int main(int argc, char **argv) {
  struct args a;
  char msg[160];
  int rc = parse_args(argc, argv, &a);

  if (rc != 0)
    return rc;
  if (a.help) {
    fputs(usage_text, stdout);
    return 0;
  }
  if (a.npos == 0)
    return usage_error("missing command (user add, device add)");
  if (a.db == NULL)
    return usage_error("missing --db PATH");
  if (a.npos >= 2 && strcmp(a.pos[0], "user") == 0 &&
      strcmp(a.pos[1], "add") == 0)
    return cmd_user_add(&a);
  if (a.npos >= 2 && strcmp(a.pos[0], "device") == 0 &&
      strcmp(a.pos[1], "add") == 0)
    return cmd_device_add(&a);
  snprintf(msg, sizeof(msg), "unknown command '%.40s%s%.40s'", a.pos[0],
           a.npos >= 2 ? " " : "", a.npos >= 2 ? a.pos[1] : "");
  return usage_error(msg);
}
