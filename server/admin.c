/* SPDX-License-Identifier: MIT */
/* fieldsync-admin: the operator's tool for a server database. It manages
 * users, devices and visit assignments through srv_store.h only; `device
 * add` prints the new token alone on stdout so scripts can capture it, and
 * the list commands print a table or, with --json, one JSON array. Exit
 * status: 0 success, 1 a runtime failure, 2 a usage error. */
#define _POSIX_C_SOURCE 200809L /* gmtime_r */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "fsp_alloc.h"
#include "srv_policy.h"
#include "srv_store.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: fieldsync-admin --db PATH COMMAND\n"
    "\n"
    "commands:\n"
    "  user add NAME --role ROLE     add a user; ROLE is inspector, expert or\n"
    "                                head_office (creates the database if it\n"
    "                                does not exist)\n"
    "  user delete NAME              delete a user and revoke all of their\n"
    "                                devices (their history stays)\n"
    "  user list [--json]            list users\n"
    "  device add USER               make a device for USER and print its\n"
    "                                token on stdout (shown once; only its\n"
    "                                hash is kept) and its id on stderr\n"
    "  device list [USER] [--json]   list devices (of USER): id, user, role,\n"
    "                                created, revoked, bound replica, last "
    "seen\n"
    "  device revoke DEVICE_ID       revoke a device: its token is refused "
    "and\n"
    "                                its sessions are closed\n"
    "  assign VISIT USER [--until WHEN]\n"
    "                                assign USER to the visit; WHEN is\n"
    "                                YYYY-MM-DD (through the end of that day,\n"
    "                                UTC) or YYYY-MM-DDTHH:MM:SSZ; assigning\n"
    "                                again replaces the end\n"
    "  unassign VISIT USER           end an assignment now\n"
    "  assignments [USER] [--json]   list assignments (of USER)\n"
    "\n"
    "VISIT is the visit's record id as the client prints it: 32 hex digits\n"
    "(a dashed UUID is accepted too). Times are printed in UTC.\n"
    "\n"
    "options:\n"
    "  --db PATH                     the server database\n"
    "  --json                        list commands: one JSON array on stdout\n"
    "  -h, --help                    show this help\n";

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

static int bad_name(const char *what, const char *s) {
  char msg[320];

  snprintf(msg, sizeof(msg),
           "bad %s '%.80s': 1 to %d characters of A-Z a-z 0-9 . _ -", what, s,
           SRV_NAME_MAX);
  return usage_error(msg);
}

/* ---- values: ids and times --------------------------------------------- */

static int hex_digit(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* A record id: 32 hex digits (either case), or the dashed 8-4-4-4-12
 * UUID form. */
static bool parse_id(const char *s, uint8_t id[16]) {
  size_t len = strlen(s);
  bool dashed = len == 36;
  size_t i;
  size_t k = 0;

  if (len != 32 && !dashed)
    return false;
  for (i = 0; i < len; i++) {
    int hi;
    int lo;

    if (dashed && (i == 8 || i == 13 || i == 18 || i == 23)) {
      if (s[i] != '-')
        return false;
      continue;
    }
    hi = hex_digit(s[i]);
    lo = i + 1 < len ? hex_digit(s[i + 1]) : -1;
    if (hi < 0 || lo < 0)
      return false;
    id[k++] = (uint8_t)(hi << 4 | lo);
    i++;
  }
  return k == 16;
}

static void id_hex(const uint8_t id[16], char out[33]) {
  static const char digits[] = "0123456789abcdef";
  int i;

  for (i = 0; i < 16; i++) {
    out[2 * i] = digits[id[i] >> 4];
    out[2 * i + 1] = digits[id[i] & 15];
  }
  out[32] = '\0';
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  int64_t era;
  int64_t yoe;
  int64_t doy;
  int64_t doe;

  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* Reads exactly n digits at s into *v. */
static bool digits(const char *s, int n, int *v) {
  int i;

  *v = 0;
  for (i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    *v = *v * 10 + (s[i] - '0');
  }
  return true;
}

/* --until WHEN: YYYY-MM-DD means through the end of that day (UTC), so the
 * exclusive end is the next midnight; YYYY-MM-DDTHH:MM:SSZ is the instant
 * itself. *ms gets Unix milliseconds. */
static bool parse_when(const char *s, int64_t *ms) {
  static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  size_t len = strlen(s);
  int y;
  int mo;
  int d;
  int h = 0;
  int mi = 0;
  int sec = 0;
  int dim;

  if (len != 10 && len != 20)
    return false;
  if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
      s[7] != '-' || !digits(s + 8, 2, &d))
    return false;
  if (len == 20 && (s[10] != 'T' || !digits(s + 11, 2, &h) || s[13] != ':' ||
                    !digits(s + 14, 2, &mi) || s[16] != ':' ||
                    !digits(s + 17, 2, &sec) || s[19] != 'Z'))
    return false;
  if (y < 1970 || mo < 1 || mo > 12 || h > 23 || mi > 59 || sec > 59)
    return false;
  dim = mdays[mo - 1];
  if (mo == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
    dim = 29;
  if (d < 1 || d > dim)
    return false;
  if (len == 10)
    *ms = (days_from_civil(y, mo, d) + 1) * 86400 * 1000;
  else
    *ms = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec) * 1000;
  return true;
}

/* Unix ms as "YYYY-MM-DDTHH:MM:SSZ" (UTC). */
static void fmt_time(int64_t ms, char out[32]) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;

  if (gmtime_r(&t, &tm) == NULL ||
      strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
    snprintf(out, 32, "%" PRId64 "ms", ms);
}

static int64_t now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- output: a table or a JSON array ----------------------------------- */

#define MAX_COLS 8
#define CELL_MAX 80

/* Rows of a list, kept until the end so that the table's columns fit
 * their widest cell; with --json, only the array is kept. */
struct listing {
  bool json;
  json_t *array;
  size_t ncol;
  const char *const *head;
  char (*cells)[MAX_COLS][CELL_MAX];
  size_t nrows;
  size_t cap;
  bool nomem;
};

static void listing_init(struct listing *l, bool json, size_t ncol,
                         const char *const *head) {
  memset(l, 0, sizeof(*l));
  l->json = json;
  l->ncol = ncol;
  l->head = head;
  if (json) {
    l->array = json_array();
    l->nomem = l->array == NULL;
  }
}

static void listing_close(struct listing *l) {
  json_decref(l->array);
  fsp_free(l->cells);
}

/* Adds a row: obj (its reference is taken) or, for the table, the ncol
 * strings of row. Returns 0, or 1 when out of memory (stops the walk). */
static int listing_add(struct listing *l, json_t *obj, const char *const *row) {
  size_t i;

  if (l->json) {
    if (obj == NULL || json_array_append_new(l->array, obj) != 0) {
      l->nomem = true;
      return 1;
    }
    return 0;
  }
  json_decref(obj);
  if (l->nrows == l->cap) {
    size_t ncap = l->cap == 0 ? 16 : l->cap * 2;
    void *n = fsp_realloc(l->cells, ncap * sizeof(*l->cells));
    if (n == NULL) {
      l->nomem = true;
      return 1;
    }
    l->cells = n;
    l->cap = ncap;
  }
  for (i = 0; i < l->ncol; i++)
    snprintf(l->cells[l->nrows][i], CELL_MAX, "%s", row[i]);
  l->nrows++;
  return 0;
}

/* Prints the listing to stdout; returns an exit status. */
static int listing_print(struct listing *l) {
  size_t width[MAX_COLS];
  size_t i;
  size_t r;
  int ok = 1;

  if (l->nomem)
    return fail(EXIT_RUNTIME, "out of memory");
  if (l->json) {
    ok = json_dumpf(l->array, stdout, JSON_INDENT(2)) == 0 &&
         fputc('\n', stdout) != EOF;
  } else {
    for (i = 0; i < l->ncol; i++) {
      width[i] = strlen(l->head[i]);
      for (r = 0; r < l->nrows; r++)
        if (strlen(l->cells[r][i]) > width[i])
          width[i] = strlen(l->cells[r][i]);
    }
    for (r = 0; r <= l->nrows && ok; r++) {
      for (i = 0; i < l->ncol; i++) {
        const char *cell = r == 0 ? l->head[i] : l->cells[r - 1][i];
        if (i + 1 < l->ncol)
          ok = printf("%-*s  ", (int)width[i], cell) >= 0;
        else
          ok = printf("%s\n", cell) >= 0;
      }
    }
  }
  if (!ok || fflush(stdout) != 0)
    return fail(EXIT_RUNTIME, "cannot write to stdout");
  return 0;
}

/* A time as a JSON string, or null for 0 (never / none). */
static json_t *json_time(int64_t ms) {
  char buf[32];

  if (ms == 0)
    return json_null();
  fmt_time(ms, buf);
  return json_string(buf);
}

/* ---- arguments --------------------------------------------------------- */

struct args {
  const char *db;
  const char *role;
  const char *until;
  bool json;
  const char *pos[5];
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
    if (strcmp(s, "--json") == 0) {
      a->json = true;
      continue;
    }
    if (strcmp(s, "--db") == 0 || strncmp(s, "--db=", 5) == 0) {
      slot = &a->db;
      name = "--db";
    } else if (strcmp(s, "--role") == 0 || strncmp(s, "--role=", 7) == 0) {
      slot = &a->role;
      name = "--role";
    } else if (strcmp(s, "--until") == 0 || strncmp(s, "--until=", 8) == 0) {
      slot = &a->until;
      name = "--until";
    } else if (strcmp(s, "--") == 0) {
      for (i++; i < argc; i++) {
        if (a->npos == sizeof(a->pos) / sizeof(a->pos[0]))
          return usage_error("too many arguments");
        a->pos[a->npos++] = argv[i];
      }
      break;
    } else if (s[0] == '-' && s[1] != '\0') {
      snprintf(msg, sizeof(msg), "unknown option '%.80s'", s);
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

/* A command's shape: its words, how many arguments follow them (min..max)
 * and which options apply. */
struct command {
  const char *w1;
  const char *w2; /* NULL: a one-word command */
  size_t min_args;
  size_t max_args;
  bool role;
  bool until;
  bool json;
  bool creates; /* may create the database */
  int (*run)(struct srv_store_conn *c, const struct args *a,
             const char *const *arg);
  const char *syntax;
};

/* ---- commands ---------------------------------------------------------- */

/* Prints the store's last message and returns the runtime status. */
static int store_fail(struct srv_store_conn *c) {
  return fail(EXIT_RUNTIME, srv_store_errmsg(c));
}

static int cmd_user_add(struct srv_store_conn *c, const struct args *a,
                        const char *const *arg) {
  if (srv_store_user_add(c, arg[0], srv_policy_role_parse(a->role)) != 0)
    return store_fail(c);
  return 0;
}

static int cmd_user_delete(struct srv_store_conn *c, const struct args *a,
                           const char *const *arg) {
  char msg[160];

  (void)a;
  if (srv_store_user_delete(c, arg[0]) == 0)
    return 0;
  snprintf(msg, sizeof(msg), "no user '%s' (or it was deleted already)",
           arg[0]);
  return fail(EXIT_RUNTIME, msg);
}

static int user_row(const char *name, int role, bool deleted,
                    int64_t created_ms, void *data) {
  struct listing *l = data;
  char created[32];
  const char *row[4];

  fmt_time(created_ms, created);
  row[0] = name;
  row[1] = srv_policy_role_name(role);
  row[2] = created;
  row[3] = deleted ? "deleted" : "active";
  return listing_add(l,
                     l->json ? json_pack("{s:s, s:s, s:b, s:o}", "name", name,
                                         "role", row[1], "deleted", deleted,
                                         "created", json_time(created_ms))
                             : NULL,
                     row);
}

static int cmd_user_list(struct srv_store_conn *c, const struct args *a,
                         const char *const *arg) {
  static const char *const head[] = {"NAME", "ROLE", "CREATED", "STATUS"};
  struct listing l;
  int rc;

  (void)arg;
  listing_init(&l, a->json, 4, head);
  rc = srv_store_user_list(c, user_row, &l);
  if (rc < 0)
    rc = store_fail(c);
  else
    rc = listing_print(&l);
  listing_close(&l);
  return rc;
}

static int cmd_device_add(struct srv_store_conn *c, const struct args *a,
                          const char *const *arg) {
  char token[SRV_TOKEN_LEN + 1];
  char msg[160];
  int64_t id = 0;
  int rc;

  (void)a;
  rc = srv_store_device_add(c, arg[0], token, &id);
  if (rc == SRV_STORE_ENOTFOUND) {
    snprintf(msg, sizeof(msg), "no user '%s' (add it with: user add)", arg[0]);
    return fail(EXIT_RUNTIME, msg);
  }
  if (rc != 0)
    return store_fail(c);
  if (printf("%s\n", token) < 0 || fflush(stdout) != 0)
    rc = fail(EXIT_RUNTIME, "cannot write the token to stdout");
  else
    fprintf(stderr, "device %" PRId64 "\n", id);
  memset(token, 0, sizeof(token));
  return rc;
}

static int device_row(const struct srv_device_info *d, void *data) {
  struct listing *l = data;
  char id[24];
  char created[32];
  char revoked[32];
  char seen[32];
  char replica[33];
  const char *row[7];

  snprintf(id, sizeof(id), "%" PRId64, d->id);
  fmt_time(d->created_ms, created);
  if (!d->revoked)
    snprintf(revoked, sizeof(revoked), "-");
  else if (d->revoked_ms == 0)
    snprintf(revoked, sizeof(revoked), "yes");
  else
    fmt_time(d->revoked_ms, revoked);
  if (d->bound)
    id_hex(d->replica, replica);
  else
    snprintf(replica, sizeof(replica), "-");
  if (d->last_seen_ms != 0)
    fmt_time(d->last_seen_ms, seen);
  else
    snprintf(seen, sizeof(seen), "never");
  row[0] = id;
  row[1] = d->user;
  row[2] = d->user_deleted ? "(user deleted)" : srv_policy_role_name(d->role);
  row[3] = created;
  row[4] = revoked;
  row[5] = replica;
  row[6] = seen;
  return listing_add(
      l,
      l->json ? json_pack("{s:I, s:s, s:s, s:b, s:o, s:b, s:o, s:o, s:o}", "id",
                          (json_int_t)d->id, "user", d->user, "role",
                          srv_policy_role_name(d->role), "user_deleted",
                          d->user_deleted, "created", json_time(d->created_ms),
                          "revoked", d->revoked, "revoked_at",
                          json_time(d->revoked_ms), "replica",
                          d->bound ? json_string(replica) : json_null(),
                          "last_seen", json_time(d->last_seen_ms))
              : NULL,
      row);
}

static int cmd_device_list(struct srv_store_conn *c, const struct args *a,
                           const char *const *arg) {
  static const char *const head[] = {
      "ID", "USER", "ROLE", "CREATED", "REVOKED", "REPLICA", "LAST SEEN"};
  struct listing l;
  char msg[160];
  int rc;

  listing_init(&l, a->json, 7, head);
  rc = srv_store_device_list(c, arg[0], device_row, &l);
  if (rc == SRV_STORE_ENOTFOUND) {
    snprintf(msg, sizeof(msg), "no user '%s'", arg[0]);
    rc = fail(EXIT_RUNTIME, msg);
  } else if (rc < 0) {
    rc = store_fail(c);
  } else {
    rc = listing_print(&l);
  }
  listing_close(&l);
  return rc;
}

static int cmd_device_revoke(struct srv_store_conn *c, const struct args *a,
                             const char *const *arg) {
  char msg[160];
  char *end = NULL;
  long long id;
  int rc;

  (void)a;
  errno = 0;
  id = strtoll(arg[0], &end, 10);
  if (errno != 0 || end == arg[0] || *end != '\0' || id <= 0) {
    snprintf(msg, sizeof(msg),
             "bad DEVICE_ID '%.40s' (a number, as device list shows)", arg[0]);
    return usage_error(msg);
  }
  rc = srv_store_device_revoke(c, (int64_t)id);
  if (rc == SRV_STORE_ENOTFOUND) {
    snprintf(msg, sizeof(msg), "no device %lld", id);
    return fail(EXIT_RUNTIME, msg);
  }
  return rc == 0 ? 0 : store_fail(c);
}

static int cmd_assign(struct srv_store_conn *c, const struct args *a,
                      const char *const *arg) {
  uint8_t visit[16];
  char msg[200];
  int64_t until = 0;
  int rc;

  (void)parse_id(arg[0], visit); /* checked by check_args */
  if (a->until != NULL) {
    (void)parse_when(a->until, &until);
    if (until <= now_ms())
      fprintf(stderr,
              "fieldsync-admin: warning: --until %s is in the past; "
              "the assignment is expired already\n",
              a->until);
  }
  rc = srv_store_assign(c, visit, arg[1], until);
  if (rc == SRV_STORE_ENOTFOUND) {
    snprintf(msg, sizeof(msg), "no user '%s' (or it was deleted)", arg[1]);
    return fail(EXIT_RUNTIME, msg);
  }
  return rc == 0 ? 0 : store_fail(c);
}

static int cmd_unassign(struct srv_store_conn *c, const struct args *a,
                        const char *const *arg) {
  uint8_t visit[16];

  (void)a;
  (void)parse_id(arg[0], visit);
  return srv_store_unassign(c, visit, arg[1]) == 0 ? 0 : store_fail(c);
}

struct assignment_rows {
  struct listing l;
  int64_t now;
};

static int assignment_row(const struct srv_assignment *as, void *data) {
  struct assignment_rows *ar = data;
  char visit[33];
  char until[32];
  char created[32];
  const char *row[6];
  bool expired = as->until_ms != 0 && as->until_ms <= ar->now;

  id_hex(as->visit, visit);
  if (as->until_ms != 0)
    fmt_time(as->until_ms, until);
  else
    snprintf(until, sizeof(until), "-");
  fmt_time(as->created_ms, created);
  row[0] = visit;
  row[1] = as->user;
  row[2] = srv_policy_role_name(as->role);
  row[3] = until;
  row[4] = created;
  row[5] = expired ? "expired" : "active";
  return listing_add(
      &ar->l,
      ar->l.json ? json_pack("{s:s, s:s, s:s, s:o, s:o, s:b}", "visit", visit,
                             "user", as->user, "role", row[2], "until",
                             json_time(as->until_ms), "created",
                             json_time(as->created_ms), "expired", expired)
                 : NULL,
      row);
}

static int cmd_assignments(struct srv_store_conn *c, const struct args *a,
                           const char *const *arg) {
  static const char *const head[] = {"VISIT", "USER",    "ROLE",
                                     "UNTIL", "CREATED", "STATUS"};
  struct assignment_rows ar;
  char msg[160];
  int rc;

  listing_init(&ar.l, a->json, 6, head);
  ar.now = now_ms();
  rc = srv_store_assignment_list(c, arg[0], assignment_row, &ar);
  if (rc == SRV_STORE_ENOTFOUND) {
    snprintf(msg, sizeof(msg), "no user '%s'", arg[0]);
    rc = fail(EXIT_RUNTIME, msg);
  } else if (rc < 0) {
    rc = store_fail(c);
  } else {
    rc = listing_print(&ar.l);
  }
  listing_close(&ar.l);
  return rc;
}

static const struct command commands[] = {
    {"user", "add", 1, 1, true, false, false, true, cmd_user_add,
     "user add NAME --role ROLE"},
    {"user", "delete", 1, 1, false, false, false, false, cmd_user_delete,
     "user delete NAME"},
    {"user", "list", 0, 0, false, false, true, false, cmd_user_list,
     "user list [--json]"},
    {"device", "add", 1, 1, false, false, false, false, cmd_device_add,
     "device add USER"},
    {"device", "list", 0, 1, false, false, true, false, cmd_device_list,
     "device list [USER] [--json]"},
    {"device", "revoke", 1, 1, false, false, false, false, cmd_device_revoke,
     "device revoke DEVICE_ID"},
    {"assign", NULL, 2, 2, false, true, false, false, cmd_assign,
     "assign VISIT USER [--until WHEN]"},
    {"unassign", NULL, 2, 2, false, false, false, false, cmd_unassign,
     "unassign VISIT USER"},
    {"assignments", NULL, 0, 1, false, false, true, false, cmd_assignments,
     "assignments [USER] [--json]"},
};

/* Checks a command's arguments and options before the database is
 * opened. Returns 0 or a usage status (message printed). */
static int check_args(const struct command *cmd, const struct args *a,
                      const char *const *arg, size_t narg) {
  char msg[320];
  uint8_t id[16];
  int64_t ms;

  if (narg < cmd->min_args || narg > cmd->max_args) {
    snprintf(msg, sizeof(msg), "%s arguments; usage: %s",
             narg < cmd->min_args ? "missing" : "too many", cmd->syntax);
    return usage_error(msg);
  }
  if ((a->role != NULL && !cmd->role) || (a->until != NULL && !cmd->until) ||
      (a->json && !cmd->json)) {
    snprintf(msg, sizeof(msg), "%s does not apply; usage: %s",
             a->role != NULL && !cmd->role     ? "--role"
             : a->until != NULL && !cmd->until ? "--until"
                                               : "--json",
             cmd->syntax);
    return usage_error(msg);
  }
  if (cmd->role) {
    if (a->role == NULL)
      return usage_error("user add: missing --role "
                         "(inspector, expert or head_office)");
    if (srv_policy_role_parse(a->role) == 0) {
      snprintf(msg, sizeof(msg),
               "bad role '%.64s' (use inspector, expert or head_office)",
               a->role);
      return usage_error(msg);
    }
  }
  if (a->until != NULL && !parse_when(a->until, &ms)) {
    snprintf(msg, sizeof(msg),
             "bad --until '%.40s': use YYYY-MM-DD (through the end of that "
             "day, UTC) or YYYY-MM-DDTHH:MM:SSZ",
             a->until);
    return usage_error(msg);
  }
  if (cmd->run == cmd_assign || cmd->run == cmd_unassign) {
    if (!parse_id(arg[0], id)) {
      snprintf(msg, sizeof(msg),
               "bad VISIT '%.40s': the visit's record id, 32 hex digits (or a "
               "dashed UUID)",
               arg[0]);
      return usage_error(msg);
    }
    if (!name_ok(arg[1]))
      return bad_name("user name", arg[1]);
  } else if (cmd->run != cmd_device_revoke && narg == 1 && !name_ok(arg[0])) {
    return bad_name("user name", arg[0]);
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

int main(int argc, char **argv) {
  const struct command *cmd = NULL;
  struct srv_store *s;
  struct srv_store_conn *c;
  const char *arg[4] = {NULL, NULL, NULL, NULL};
  struct args a;
  char msg[160];
  size_t words;
  size_t narg;
  size_t i;
  int rc = parse_args(argc, argv, &a);

  if (rc != 0)
    return rc;
  if (a.help) {
    fputs(usage_text, stdout);
    return 0;
  }
  if (a.npos == 0)
    return usage_error("missing command (user, device, assign, unassign, "
                       "assignments)");
  for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
    if (strcmp(a.pos[0], commands[i].w1) != 0)
      continue;
    if (commands[i].w2 == NULL ||
        (a.npos >= 2 && strcmp(a.pos[1], commands[i].w2) == 0)) {
      cmd = &commands[i];
      break;
    }
  }
  if (cmd == NULL) {
    snprintf(msg, sizeof(msg), "unknown command '%.40s%s%.40s'", a.pos[0],
             a.npos >= 2 ? " " : "", a.npos >= 2 ? a.pos[1] : "");
    return usage_error(msg);
  }
  words = cmd->w2 != NULL ? 2 : 1;
  narg = a.npos - words;
  for (i = 0; i < narg && i < 4; i++)
    arg[i] = a.pos[words + i];
  rc = check_args(cmd, &a, arg, narg);
  if (rc != 0)
    return rc;
  if (a.db == NULL)
    return usage_error("missing --db PATH");
  rc = open_store(a.db, !cmd->creates, &s, &c);
  if (rc != 0)
    return rc;
  rc = cmd->run(c, &a, arg);
  srv_store_conn_close(c);
  srv_store_close(s);
  return rc;
}
