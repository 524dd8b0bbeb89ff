/* SPDX-License-Identifier: MIT */
/* Output of the fieldsync tool: one-line error reports on stderr, writes
 * to stdout with error checks, and the readable forms of records (`show`,
 * `list`) rendered from the library's record JSON with jansson. Text from
 * records is printed with control characters escaped, so a field cannot move
 * the cursor or recolour the user's terminal. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"

/* How many fields a `list` line shows, and how many characters of each. */
#define SUMMARY_FIELDS 3
#define SUMMARY_WIDTH 24
/* How many hex digits of a content hash and of a replica id are shown. */
#define HASH_SHOWN 12
#define REPLICA_SHOWN 8

static void vreport(const char *cmd, const char *fmt, va_list ap) {
  fputs("fieldsync: ", stderr);
  if (cmd != NULL)
    fprintf(stderr, "%s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
}

int cli_out_usage(const char *cmd, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vreport(cmd, fmt, ap);
  va_end(ap);
  if (cmd != NULL)
    fprintf(stderr, "Try 'fieldsync %s --help'.\n", cmd);
  else
    fputs("Try 'fieldsync --help'.\n", stderr);
  return CLI_EXIT_USAGE;
}

int cli_out_fail(const struct cli *cli, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vreport(cli->cmd, fmt, ap);
  va_end(ap);
  return CLI_EXIT_FAIL;
}

int cli_out_libfail(const struct cli *cli, int rc) {
  const char *msg;

  if (cli->db != NULL)
    msg = fieldsync_errmsg(cli->db);
  else
    msg = fieldsync_strerror(rc);
  if (msg == NULL || *msg == '\0')
    msg = fieldsync_strerror(rc);
  return cli_out_fail(cli, "%s", msg);
}

bool cli_out_write(const char *buf, size_t n) {
  if (n == 0)
    return true;
  errno = 0;
  if (fwrite(buf, 1, n, stdout) != n) {
    if (errno == 0)
      errno = EIO;
    return false;
  }
  return true;
}

int cli_out_finish(const struct cli *cli) {
  errno = 0;
  if (fflush(stdout) != 0 || ferror(stdout)) {
    int e = errno != 0 ? errno : EIO;

    return cli_out_fail(cli, "cannot write to standard output: %s",
                        strerror(e));
  }
  return CLI_EXIT_OK;
}

/* Prints s with control characters escaped. In a block (`show`), a newline
 * continues on a new line indented by `indent` spaces; on one line
 * (`list`), newlines and tabs become spaces. */
static void put_text(const char *s, bool block, int indent) {
  const unsigned char *p = (const unsigned char *)s;

  for (; *p != '\0'; p++) {
    if (*p == '\n' && block) {
      printf("\n%*s", indent, "");
    } else if ((*p == '\n' || *p == '\t' || *p == '\r') && !block) {
      putchar(' ');
    } else if (*p == '\t') {
      putchar('\t');
    } else if (*p < 0x20 || *p == 0x7f) {
      printf("\\x%02x", *p);
    } else {
      putchar(*p);
    }
  }
}

/* Prints at most `width` characters (UTF-8 code points) of s on one line,
 * then "..." when it was longer. */
static void put_short(const char *s, size_t width) {
  size_t chars = 0;
  size_t i;
  char *cut;

  for (i = 0; s[i] != '\0'; i++) {
    if (((unsigned char)s[i] & 0xc0) != 0x80) {
      if (chars == width)
        break;
      chars++;
    }
  }
  if (s[i] == '\0') {
    put_text(s, false, 0);
    return;
  }
  cut = strndup(s, i);
  if (cut == NULL) {
    fputs("...", stdout);
    return;
  }
  put_text(cut, false, 0);
  fputs("...", stdout);
  free(cut);
}

/* Prints the first n bytes of an id or hash (hex digits), unmarked, so
 * that it can be copied into `resolve --keep`. */
static void put_prefix(const char *s, size_t n) {
  size_t len = strlen(s);
  char *cut = strndup(s, len < n ? len : n);

  if (cut == NULL)
    return;
  put_text(cut, false, 0);
  free(cut);
}

/* Prints a JSON value in compact form (for nested messages). */
static void put_compact(const json_t *v, bool block, int indent) {
  char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

  if (s == NULL) {
    fputs("?", stdout);
    return;
  }
  put_text(s, block, indent);
  free(s);
}

/* Prints a scalar value as text: strings bare, numbers, booleans; arrays
 * and objects compact. */
static void put_value(const json_t *v, bool block, int indent) {
  switch (json_typeof(v)) {
  case JSON_STRING:
    put_text(json_string_value(v), block, indent);
    break;
  case JSON_INTEGER:
    printf("%" JSON_INTEGER_FORMAT, json_integer_value(v));
    break;
  case JSON_REAL:
    printf("%g", json_real_value(v));
    break;
  case JSON_TRUE:
    fputs("true", stdout);
    break;
  case JSON_FALSE:
    fputs("false", stdout);
    break;
  case JSON_NULL:
    fputs("null", stdout);
    break;
  default:
    put_compact(v, block, indent);
    break;
  }
}

/* Prints a field's value for `show`: a repeated field's values are joined
 * with ", ". */
static void put_field(const json_t *v) {
  size_t i;
  const json_t *e;

  if (!json_is_array(v)) {
    put_value(v, true, 4);
    return;
  }
  json_array_foreach(v, i, e) {
    if (i > 0)
      fputs(", ", stdout);
    put_value(e, true, 4);
  }
}

/* Prints a version's time: milliseconds since 1970 as UTC ISO 8601, or a
 * string as it is. */
static void put_time(const json_t *t) {
  if (json_is_integer(t)) {
    json_int_t ms = json_integer_value(t);
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char buf[64];

    if (gmtime_r(&secs, &tm) != NULL &&
        strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm) > 0) {
      fputs(buf, stdout);
      return;
    }
  }
  put_value(t, false, 0);
}

/* Prints a version vector {"<replica hex>": counter} as "abcd1234:2 ...",
 * replicas shortened to REPLICA_SHOWN digits. */
static void put_vv(const json_t *vv) {
  const char *replica;
  const json_t *counter;
  bool first = true;

  if (!json_is_object(vv)) {
    put_value(vv, false, 0);
    return;
  }
  json_object_foreach((json_t *)vv, replica, counter) {
    if (!first)
      putchar(' ');
    first = false;
    put_prefix(replica, REPLICA_SHOWN);
    putchar(':');
    put_value(counter, false, 0);
  }
  if (first)
    fputs("{}", stdout);
}

/* Prints a "refused" object {"code", "reason"} between before and after;
 * nothing for null. */
static void put_refused(const json_t *r, const char *before,
                        const char *after) {
  const char *code = json_string_value(json_object_get(r, "code"));
  const char *why = json_string_value(json_object_get(r, "reason"));

  if (!json_is_object(r))
    return;
  fputs(before, stdout);
  put_text(code != NULL ? code : "?", false, 0);
  if (why != NULL && *why != '\0') {
    fputs(": ", stdout);
    put_text(why, false, 0);
  }
  fputs(after, stdout);
}

/* Loads a record's JSON and checks the parts both renderings need. */
static json_t *load_record(const char *json, char *err, size_t errcap) {
  json_error_t jerr;
  json_t *rec = json_loads(json, 0, &jerr);

  if (rec == NULL) {
    snprintf(err, errcap, "cannot read the record's JSON: %s (line %d)",
             jerr.text, jerr.line);
    return NULL;
  }
  if (!json_is_object(rec) ||
      !json_is_string(json_object_get(rec, "collection")) ||
      !json_is_string(json_object_get(rec, "id")) ||
      !json_is_array(json_object_get(rec, "versions"))) {
    snprintf(err, errcap,
             "the record's JSON lacks collection, id or "
             "versions");
    json_decref(rec);
    return NULL;
  }
  return rec;
}

bool cli_out_record(const char *json, char *err, size_t errcap) {
  json_t *rec = load_record(json, err, errcap);
  const json_t *versions;
  const json_t *ver;
  size_t nver;
  size_t i;

  if (rec == NULL)
    return false;
  versions = json_object_get(rec, "versions");
  nver = json_array_size(versions);
  fputs("collection: ", stdout);
  put_text(json_string_value(json_object_get(rec, "collection")), false, 0);
  fputs("\nid: ", stdout);
  put_text(json_string_value(json_object_get(rec, "id")), false, 0);
  fputs("\nstate: ", stdout);
  if (json_is_true(json_object_get(rec, "conflict")))
    printf("conflict (%zu versions; see 'fieldsync resolve --help')\n", nver);
  else if (json_is_true(json_object_get(rec, "deleted")))
    fputs("deleted\n", stdout);
  else
    fputs("current\n", stdout);

  json_array_foreach(versions, i, ver) {
    const json_t *hash = json_object_get(ver, "hash");
    const json_t *author = json_object_get(ver, "author");
    const json_t *tm = json_object_get(ver, "time");
    const json_t *fields = json_object_get(ver, "fields");
    const char *name;
    const json_t *v;

    printf("version %zu of %zu", i + 1, nver);
    if (json_is_string(hash)) {
      fputs("  hash ", stdout);
      put_prefix(json_string_value(hash), HASH_SHOWN);
    }
    fputs("  vv ", stdout);
    put_vv(json_object_get(ver, "vv"));
    if (json_is_string(author) && *json_string_value(author) != '\0') {
      fputs("  by ", stdout);
      put_text(json_string_value(author), false, 0);
    }
    if (tm != NULL && !json_is_null(tm)) {
      fputs("  at ", stdout);
      put_time(tm);
    }
    putchar('\n');
    if (json_is_true(json_object_get(ver, "deleted")))
      fputs("  (deleted)\n", stdout);
    put_refused(json_object_get(ver, "refused"), "  (refused: ", ")\n");
    if (!json_is_object(fields))
      continue;
    json_object_foreach((json_t *)fields, name, v) {
      fputs("  ", stdout);
      put_text(name, false, 0);
      fputs(": ", stdout);
      put_field(v);
      putchar('\n');
    }
  }
  json_decref(rec);
  return true;
}

/* True for fields that only link to other records (visit_id, ...): they
 * make poor summaries. */
static bool is_link(const char *name) {
  size_t n = strlen(name);

  return n >= 3 && strcmp(name + n - 3, "_id") == 0;
}

bool cli_out_summary(const char *json, char *err, size_t errcap) {
  json_t *rec = load_record(json, err, errcap);
  const json_t *versions;
  const json_t *fields;
  const char *name;
  const json_t *v;
  size_t shown = 0;

  if (rec == NULL)
    return false;
  versions = json_object_get(rec, "versions");
  put_text(json_string_value(json_object_get(rec, "id")), false, 0);
  fputs("  ", stdout);
  printf("%-14s", json_string_value(json_object_get(rec, "collection")));
  if (json_is_true(json_object_get(rec, "conflict")))
    printf("  [conflict: %zu versions]", json_array_size(versions));
  if (json_is_true(json_object_get(rec, "deleted")))
    fputs("  [deleted]", stdout);
  /* The display winner is the first version. */
  fields = json_object_get(json_array_get(versions, 0), "fields");
  if (json_is_object(fields)) {
    json_object_foreach((json_t *)fields, name, v) {
      const char *s;

      if (shown == SUMMARY_FIELDS)
        break;
      if (is_link(name) || json_is_object(v) || json_is_array(v))
        continue;
      fputs(shown == 0 ? "  " : " ", stdout);
      put_text(name, false, 0);
      putchar('=');
      s = json_string_value(v);
      if (s != NULL && (*s == '\0' || strpbrk(s, " \t\n") != NULL)) {
        putchar('"');
        put_short(s, SUMMARY_WIDTH);
        putchar('"');
      } else if (s != NULL) {
        put_short(s, SUMMARY_WIDTH);
      } else {
        put_value(v, false, 0);
      }
      shown++;
    }
  }
  putchar('\n');
  json_decref(rec);
  return true;
}

/* Parses one JSON object of the library; false (message in err) when it
 * is not one or lacks a string member of `need`. */
static json_t *load_object(const char *json, const char *const *need,
                           const char *what, char *err, size_t errcap) {
  json_error_t jerr;
  json_t *o = json_loads(json, 0, &jerr);
  size_t i;

  if (o == NULL) {
    snprintf(err, errcap, "cannot read the %s JSON: %s (line %d)", what,
             jerr.text, jerr.line);
    return NULL;
  }
  for (i = 0; need[i] != NULL; i++) {
    if (!json_is_string(json_object_get(o, need[i]))) {
      snprintf(err, errcap, "the %s JSON lacks %s", what, need[i]);
      json_decref(o);
      return NULL;
    }
  }
  return o;
}

static void put_member(const json_t *o, const char *name) {
  put_text(json_string_value(json_object_get(o, name)), false, 0);
}

bool cli_out_refused(const char *json, char *err, size_t errcap) {
  static const char *const need[] = {"collection", "id",         "hash", "code",
                                     "reason",     "refused_at", NULL};
  json_t *o = load_object(json, need, "refused version's", err, errcap);

  if (o == NULL)
    return false;
  put_member(o, "id");
  printf("  %-14s  hash ", json_string_value(json_object_get(o, "collection")));
  put_prefix(json_string_value(json_object_get(o, "hash")), HASH_SHOWN);
  fputs("  ", stdout);
  put_member(o, "refused_at");
  fputs("  ", stdout);
  put_member(o, "code");
  if (*json_string_value(json_object_get(o, "reason")) != '\0') {
    fputs(": ", stdout);
    put_member(o, "reason");
  }
  putchar('\n');
  json_decref(o);
  return true;
}

bool cli_out_quarantined(const char *json, char *err, size_t errcap) {
  static const char *const need[] = {"collection",     "id",   "reason",
                                     "quarantined_at", "hash", NULL};
  json_t *o = load_object(json, need, "quarantined version's", err, errcap);
  const json_t *qid;
  const json_t *scope;

  if (o == NULL)
    return false;
  qid = json_object_get(o, "qid");
  scope = json_object_get(o, "scope");
  if (!json_is_integer(qid) || !json_is_object(scope) ||
      !json_is_string(json_object_get(scope, "kind")) ||
      !json_is_string(json_object_get(scope, "id"))) {
    snprintf(err, errcap, "the quarantined version's JSON lacks qid or scope");
    json_decref(o);
    return false;
  }
  printf("%-4" JSON_INTEGER_FORMAT "  %-14s  ", json_integer_value(qid),
         json_string_value(json_object_get(o, "collection")));
  put_member(o, "id");
  fputs("  hash ", stdout);
  put_prefix(json_string_value(json_object_get(o, "hash")), HASH_SHOWN);
  fputs("  ", stdout);
  put_member(scope, "kind");
  putchar(' ');
  put_member(scope, "id");
  fputs("  ", stdout);
  put_member(o, "quarantined_at");
  fputs("  ", stdout);
  put_member(o, "reason");
  if (json_is_true(json_object_get(o, "deleted")))
    fputs("  [deleted]", stdout);
  put_refused(json_object_get(o, "refused"), "  [refused: ", "]");
  putchar('\n');
  json_decref(o);
  return true;
}
