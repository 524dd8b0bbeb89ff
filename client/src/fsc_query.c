/* SPDX-License-Identifier: MIT */
/* Reading and bulk paths: one record as JSON, indexed queries, export as
 * JSON or CSV, and import from CSV or JSON lines in one transaction. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsc_fields.h"
#include "fsc_int.h"

/* Largest import file read into memory. */
#define FSC_MAX_IMPORT (512u * 1024u * 1024u)

int fieldsync_get_json(fieldsync_db *db, const char *id, char **json_out) {
  struct fsc_record r;
  uint8_t rid[FSP_ID_LEN];
  int rc;

  if (db == NULL || json_out == NULL)
    return FIELDSYNC_EINVAL;
  *json_out = NULL;
  rc = fsc_parse_id(db, id, rid);
  if (rc == 0)
    rc = fsc_store_load(db, rid, &r);
  if (rc != 0)
    return rc;
  *json_out = fsc_record_json(&r);
  fsc_record_close(&r);
  return *json_out != NULL ? 0 : fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
}

/* Calls fn for each record id matching q, in id order. */
static int for_each_id(fieldsync_db *db, const struct fieldsync_query *q,
                       int (*fn)(fieldsync_db *db, const uint8_t id[16],
                                 void *data),
                       void *data) {
  const struct fsp_collection *col = NULL;
  uint8_t visit[FSP_ID_LEN];
  uint8_t service[FSP_ID_LEN];
  char sql[256];
  sqlite3_stmt *st = NULL;
  int n = 0;
  int rc;

  if (q->collection != NULL) {
    col = fsp_payload_by_name(q->collection);
    if (col == NULL)
      return fsc_err(db, FIELDSYNC_ECOLLECTION, "unknown collection \"%.40s\"",
                     q->collection);
  }
  if ((q->visit_id != NULL && fsc_parse_id(db, q->visit_id, visit) != 0) ||
      (q->service_id != NULL && fsc_parse_id(db, q->service_id, service) != 0))
    return FIELDSYNC_EINVAL;
  n = snprintf(sql, sizeof(sql), "SELECT id FROM records WHERE 1%s%s%s%s%s "
               "ORDER BY id",
               col != NULL ? " AND collection = ?1" : "",
               q->visit_id != NULL ? " AND visit_id = ?2" : "",
               q->service_id != NULL ? " AND service_id = ?3" : "",
               q->conflicts_only ? " AND nversions > 1" : "",
               q->include_deleted ? "" : " AND deleted = 0");
  if (n < 0 || (size_t)n >= sizeof(sql))
    return fsc_err(db, FIELDSYNC_EINTERNAL, "query too long");
  rc = sqlite3_prepare_v2(db->sql, sql, -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "preparing a query");
  if (col != NULL)
    sqlite3_bind_int(st, 1, col->id);
  if (q->visit_id != NULL)
    sqlite3_bind_blob(st, 2, visit, FSP_ID_LEN, SQLITE_STATIC);
  if (q->service_id != NULL)
    sqlite3_bind_blob(st, 3, service, FSP_ID_LEN, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    uint8_t id[FSP_ID_LEN];

    if (sqlite3_column_bytes(st, 0) != FSP_ID_LEN) {
      rc = fsc_err(db, FIELDSYNC_ECORRUPT, "stored record id is damaged");
      goto done;
    }
    memcpy(id, sqlite3_column_blob(st, 0), FSP_ID_LEN);
    rc = fn(db, id, data);
    if (rc != 0)
      goto done;
  }
  rc = rc == SQLITE_DONE ? 0 : fsc_sqlerr(db, rc, "running a query");
done:
  sqlite3_finalize(st);
  return rc;
}

struct json_cb {
  fieldsync_record_cb cb;
  void *data;
};

static int json_one(fieldsync_db *db, const uint8_t id[16], void *data) {
  struct json_cb *j = data;
  struct fsc_record r;
  char *json;
  int rc = fsc_store_load(db, id, &r);

  if (rc != 0)
    return rc;
  json = fsc_record_json(&r);
  fsc_record_close(&r);
  if (json == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  rc = j->cb(json, j->data);
  fsp_free(json);
  return rc != 0 ? fsc_err(db, FIELDSYNC_ECALLBACK, "stopped by the callback")
                 : 0;
}

int fieldsync_query(fieldsync_db *db, const struct fieldsync_query *q,
                    fieldsync_record_cb cb, void *data) {
  struct json_cb j;

  if (db == NULL || q == NULL || cb == NULL)
    return FIELDSYNC_EINVAL;
  j.cb = cb;
  j.data = data;
  return for_each_id(db, q, json_one, &j);
}

/* ---- export ------------------------------------------------------------ */

struct export_state {
  fieldsync_write_cb write;
  void *data;
  const struct fsp_collection *col; /* CSV */
  size_t count;
};

static int emit(fieldsync_db *db, struct export_state *x, const char *s,
                size_t n) {
  if (n > 0 && x->write(s, n, x->data) != 0)
    return fsc_err(db, FIELDSYNC_ECALLBACK, "export output failed");
  return 0;
}

static int export_json_cb(const char *json, void *data) {
  struct export_state *x = data;

  if (x->write(x->count == 0 ? "[\n" : ",\n", 2, x->data) != 0 ||
      x->write(json, strlen(json), x->data) != 0)
    return 1;
  x->count++;
  return 0;
}

/* Writes one CSV cell, quoted when it holds a comma, quote or newline. */
static int csv_cell(fieldsync_db *db, struct export_state *x, const char *s,
                    bool first) {
  int rc = first ? 0 : emit(db, x, ",", 1);

  if (rc != 0)
    return rc;
  if (strpbrk(s, ",\"\r\n") == NULL)
    return emit(db, x, s, strlen(s));
  rc = emit(db, x, "\"", 1);
  while (rc == 0 && *s != '\0') {
    const char *q = strchr(s, '"');
    size_t n = q != NULL ? (size_t)(q - s) + 1 : strlen(s);
    rc = emit(db, x, s, n);
    if (rc == 0 && q != NULL)
      rc = emit(db, x, "\"", 1); /* double the quote */
    s += n;
  }
  return rc == 0 ? emit(db, x, "\"", 1) : rc;
}

static int export_csv_one(fieldsync_db *db, const uint8_t id[16], void *data) {
  struct export_state *x = data;
  struct fsc_record r;
  ProtobufCMessage *msg = NULL;
  char hex[33];
  unsigned i;
  int rc = fsc_store_load(db, id, &r);

  if (rc != 0)
    return rc;
  fsc_hex(id, FSP_ID_LEN, hex);
  if (!r.v[0].deleted) {
    rc = fsc_fields_decode(r.col->desc, r.v[0].payload, r.v[0].len, &msg);
    if (rc != 0) {
      rc = rc == FIELDSYNC_ENOMEM
               ? fsc_err(db, rc, "out of memory")
               : fsc_err(db, rc, "stored content of %s is damaged", hex);
      goto done;
    }
  }
  rc = csv_cell(db, x, hex, true);
  if (rc == 0)
    rc = csv_cell(db, x, r.v[0].deleted ? "true" : "false", false);
  if (rc == 0)
    rc = csv_cell(db, x, r.n > 1 ? "true" : "false", false);
  for (i = 0; rc == 0 && i < r.col->desc->n_fields; i++) {
    char *cell = msg != NULL ? fsc_fields_cell(msg, &r.col->desc->fields[i])
                             : fsp_strdup("");
    if (cell == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      break;
    }
    rc = csv_cell(db, x, cell, false);
    fsp_free(cell);
  }
  if (rc == 0)
    rc = emit(db, x, "\r\n", 2);
done:
  fsc_fields_free(msg);
  fsc_record_close(&r);
  return rc;
}

int fieldsync_export(fieldsync_db *db, const char *collection, int format,
                     fieldsync_write_cb write, void *data) {
  struct fieldsync_query q;
  struct export_state x;
  unsigned i;
  int rc;

  if (db == NULL || write == NULL)
    return FIELDSYNC_EINVAL;
  memset(&q, 0, sizeof(q));
  memset(&x, 0, sizeof(x));
  q.collection = collection;
  q.include_deleted = 1;
  x.write = write;
  x.data = data;
  if (format == FIELDSYNC_FORMAT_JSON) {
    rc = fieldsync_query(db, &q, export_json_cb, &x);
    if (rc == FIELDSYNC_ECALLBACK)
      return fsc_err(db, rc, "export output failed");
    if (rc != 0)
      return rc;
    return emit(db, &x, x.count == 0 ? "[]\n" : "\n]\n", 3);
  }
  if (format != FIELDSYNC_FORMAT_CSV)
    return fsc_err(db, FIELDSYNC_EINVAL, "unknown export format %d", format);
  if (collection == NULL)
    return fsc_err(db, FIELDSYNC_EINVAL, "CSV export needs a collection");
  x.col = fsp_payload_by_name(collection);
  if (x.col == NULL)
    return fsc_err(db, FIELDSYNC_ECOLLECTION, "unknown collection \"%.40s\"",
                   collection);
  rc = csv_cell(db, &x, "id", true);
  if (rc == 0)
    rc = csv_cell(db, &x, "deleted", false);
  if (rc == 0)
    rc = csv_cell(db, &x, "conflict", false);
  for (i = 0; rc == 0 && i < x.col->desc->n_fields; i++)
    rc = csv_cell(db, &x, x.col->desc->fields[i].name, false);
  if (rc == 0)
    rc = emit(db, &x, "\r\n", 2);
  if (rc == 0)
    rc = for_each_id(db, &q, export_csv_one, &x);
  return rc;
}

/* ---- import ------------------------------------------------------------ */

static int read_all(fieldsync_db *db, const char *path, char **out,
                    size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t cap = 0;
  size_t n = 0;

  *out = NULL;
  if (f == NULL)
    return fsc_err(db, FIELDSYNC_EIO, "cannot open %s: %s", path,
                   strerror(errno));
  for (;;) {
    size_t got;
    if (n + 65536 + 1 > cap) {
      char *nb;
      cap = cap == 0 ? 131072 : cap * 2;
      if (cap > FSC_MAX_IMPORT + 1) {
        fsp_free(buf);
        fclose(f);
        return fsc_err(db, FIELDSYNC_EFORMAT, "%s is larger than %u bytes",
                       path, FSC_MAX_IMPORT);
      }
      nb = fsp_realloc(buf, cap);
      if (nb == NULL) {
        fsp_free(buf);
        fclose(f);
        return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory reading %s", path);
      }
      buf = nb;
    }
    got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0)
      break;
  }
  if (ferror(f)) {
    fsp_free(buf);
    fclose(f);
    return fsc_err(db, FIELDSYNC_EIO, "cannot read %s", path);
  }
  fclose(f);
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

/* Imports one row: fields set on a new message, then written. The row's
 * "id" (if any) names the record. */
static int import_row(fieldsync_db *db, const struct fsp_collection *col,
                      ProtobufCMessage *msg, const char *id_text,
                      const char *where) {
  struct fsc_record r;
  int rc;

  memset(&r, 0, sizeof(r));
  r.col = col;
  if (id_text != NULL && id_text[0] != '\0') {
    if (!fsc_unhex(id_text, r.id, FSP_ID_LEN))
      return fsc_err(db, FIELDSYNC_EVALUE, "%s: id \"%.40s\" is not 32 hex "
                     "digits", where, id_text);
    rc = fsc_store_load(db, r.id, &r);
    if (rc == 0) {
      fsc_record_close(&r);
      return fsc_err(db, FIELDSYNC_EEXISTS, "%s: record %s already exists",
                     where, id_text);
    }
    if (rc != FIELDSYNC_ENOTFOUND)
      return rc;
    memset(&r, 0, sizeof(r));
    r.col = col;
    fsc_unhex(id_text, r.id, FSP_ID_LEN);
  } else {
    rc = fsc_new_id(db, r.id);
    if (rc != 0)
      return rc;
  }
  rc = fsc_record_write(db, col, msg, &r);
  if (rc != 0)
    fsc_err(db, rc, "%s: %s", where, fieldsync_errmsg(db));
  fsc_record_close(&r);
  return rc;
}

/* Parses one CSV record starting at *p into cells (NUL-terminated in
 * place); *line advances by the newlines consumed. Returns the number of
 * cells, 0 at end of input, or -1 for an unterminated quote. */
static int csv_record(char **p, char **cells, int max, size_t *line) {
  char *s = *p;
  int n = 0;

  if (*s == '\0')
    return 0;
  for (;;) {
    char *out = s;
    char *start = s;

    if (*s == '"') {
      s++;
      for (;;) {
        if (*s == '\0')
          return -1;
        if (*s == '"' && s[1] == '"') {
          *out++ = '"';
          s += 2;
        } else if (*s == '"') {
          s++;
          break;
        } else {
          if (*s == '\n')
            (*line)++;
          *out++ = *s++;
        }
      }
      while (*s != ',' && *s != '\n' && *s != '\r' && *s != '\0')
        s++; /* ignore junk after a closing quote */
    } else {
      while (*s != ',' && *s != '\n' && *s != '\r' && *s != '\0')
        s++;
      out = s;
    }
    {
      char sep = *s;
      *out = '\0';
      if (n < max)
        cells[n] = start;
      n++;
      if (sep == ',') {
        s++;
        continue;
      }
      /* The terminator may have been overwritten: test sep, not *s. */
      if (sep == '\r' || sep == '\n') {
        s++;
        if (sep == '\r' && *s == '\n')
          s++;
        (*line)++;
      }
      *p = s;
      return n;
    }
  }
}

#define MAX_COLS 64

static int import_csv(fieldsync_db *db, const struct fsp_collection *col,
                      char *text, size_t *count) {
  char *hdr[MAX_COLS];
  char *cells[MAX_COLS];
  char where[64];
  size_t line = 1;
  size_t row_line;
  char *p = text;
  int ncols;
  int id_col = -1;
  int deleted_col = -1;
  int i;
  int rc;

  ncols = csv_record(&p, hdr, MAX_COLS, &line);
  if (ncols <= 0)
    return fsc_err(db, FIELDSYNC_EFORMAT, "line 1: no header row");
  if (ncols > MAX_COLS)
    return fsc_err(db, FIELDSYNC_EFORMAT, "line 1: more than %d columns",
                   MAX_COLS);
  for (i = 0; i < ncols; i++) {
    if (strcmp(hdr[i], "id") == 0) {
      id_col = i;
      continue;
    }
    if (strcmp(hdr[i], "deleted") == 0) {
      deleted_col = i;
      continue;
    }
    if (strcmp(hdr[i], "conflict") == 0)
      continue; /* written by export; says nothing to keep */
    if (protobuf_c_message_descriptor_get_field_by_name(col->desc, hdr[i]) ==
        NULL)
      return fsc_err(db, FIELDSYNC_EFIELD, "line 1: %s has no field \"%.40s\"",
                     col->name, hdr[i]);
  }
  for (;;) {
    ProtobufCMessage *msg;
    int n;

    row_line = line;
    n = csv_record(&p, cells, MAX_COLS, &line);
    if (n == 0)
      break;
    snprintf(where, sizeof(where), "line %zu", row_line);
    if (n < 0)
      return fsc_err(db, FIELDSYNC_EFORMAT, "%s: unterminated quote", where);
    if (n == 1 && cells[0][0] == '\0')
      continue; /* blank line */
    if (n != ncols)
      return fsc_err(db, FIELDSYNC_EFORMAT, "%s: %d cells, header has %d",
                     where, n, ncols);
    if (deleted_col >= 0 && strcmp(cells[deleted_col], "true") == 0)
      continue; /* an exported tombstone: nothing to import */
    msg = fsc_fields_new(col->desc);
    if (msg == NULL)
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
    rc = 0;
    for (i = 0; rc == 0 && i < ncols; i++) {
      const ProtobufCFieldDescriptor *f;
      char err[256];
      char *v = cells[i];

      f = protobuf_c_message_descriptor_get_field_by_name(col->desc, hdr[i]);
      if (f == NULL || v[0] == '\0')
        continue; /* id, deleted, conflict, or an empty cell */
      if (f->label == PROTOBUF_C_LABEL_REPEATED &&
          f->type != PROTOBUF_C_TYPE_MESSAGE) {
        /* "a|b\\|c": values split on unescaped "|", unescaped in place. */
        for (;;) {
          char *r = v;
          char *w = v;
          bool last;
          while (*r != '\0' && *r != '|') {
            if (*r == '\\' && r[1] != '\0')
              r++;
            *w++ = *r++;
          }
          last = *r == '\0';
          *w = '\0';
          rc = fsc_fields_set(msg, hdr[i], v, false, err, sizeof(err));
          if (rc != 0 || last)
            break;
          v = r + 1;
        }
      } else {
        rc = fsc_fields_set(msg, hdr[i], v, false, err, sizeof(err));
      }
      if (rc != 0)
        fsc_err(db, rc, "%s: %s", where, err);
    }
    if (rc == 0)
      rc = import_row(db, col, msg, id_col >= 0 ? cells[id_col] : NULL,
                      where);
    fsc_fields_free(msg);
    if (rc != 0)
      return rc;
    (*count)++;
  }
  return 0;
}

static int import_jsonl(fieldsync_db *db, const struct fsp_collection *col,
                        char *text, size_t *count) {
  char where[64];
  size_t line = 0;
  char *p = text;

  while (*p != '\0') {
    char *nl = strchr(p, '\n');
    json_error_t jerr;
    json_t *obj;
    json_t *idv;
    ProtobufCMessage *msg;
    char err[256];
    int rc;

    line++;
    if (nl != NULL)
      *nl = '\0';
    snprintf(where, sizeof(where), "line %zu", line);
    if (strspn(p, " \t\r") == strlen(p))
      goto next; /* blank line */
    obj = json_loads(p, JSON_REJECT_DUPLICATES, &jerr);
    if (obj == NULL || !json_is_object(obj)) {
      json_decref(obj);
      return fsc_err(db, FIELDSYNC_EFORMAT, "%s: not a JSON object%s%s", where,
                     obj == NULL ? ": " : "", obj == NULL ? jerr.text : "");
    }
    msg = fsc_fields_new(col->desc);
    if (msg == NULL) {
      json_decref(obj);
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
    }
    idv = json_object_get(obj, "id");
    if (idv != NULL && !json_is_string(idv)) {
      rc = fsc_err(db, FIELDSYNC_EVALUE, "%s: id must be a string", where);
    } else {
      json_t *fields = json_deep_copy(obj);
      if (fields == NULL) {
        rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      } else {
        json_object_del(fields, "id");
        rc = fsc_fields_from_json(msg, fields, err, sizeof(err));
        if (rc != 0)
          fsc_err(db, rc, "%s: %s", where, err);
        json_decref(fields);
      }
    }
    if (rc == 0)
      rc = import_row(db, col, msg, idv != NULL ? json_string_value(idv) : NULL,
                      where);
    fsc_fields_free(msg);
    json_decref(obj);
    if (rc != 0)
      return rc;
    (*count)++;
  next:
    if (nl == NULL)
      break;
    p = nl + 1;
  }
  return 0;
}

static bool has_suffix(const char *s, const char *suffix) {
  size_t a = strlen(s);
  size_t b = strlen(suffix);
  size_t i;

  if (a < b)
    return false;
  for (i = 0; i < b; i++) {
    char c = s[a - b + i];
    if (c >= 'A' && c <= 'Z')
      c = (char)(c + 32);
    if (c != suffix[i])
      return false;
  }
  return true;
}

int fieldsync_import(fieldsync_db *db, const char *collection,
                     const char *path, size_t *count_out) {
  const struct fsp_collection *col;
  char *text = NULL;
  size_t len = 0;
  size_t count = 0;
  bool csv;
  int rc;

  if (count_out != NULL)
    *count_out = 0;
  if (db == NULL || path == NULL)
    return FIELDSYNC_EINVAL;
  col = collection != NULL ? fsp_payload_by_name(collection) : NULL;
  if (col == NULL)
    return fsc_err(db, FIELDSYNC_ECOLLECTION, "unknown collection \"%.40s\"",
                   collection != NULL ? collection : "(null)");
  if (has_suffix(path, ".csv"))
    csv = true;
  else if (has_suffix(path, ".jsonl") || has_suffix(path, ".json") ||
           has_suffix(path, ".ndjson"))
    csv = false;
  else
    return fsc_err(db, FIELDSYNC_EFORMAT,
                   "%s: name the file .csv or .jsonl to say its format", path);
  rc = read_all(db, path, &text, &len);
  if (rc != 0)
    return rc;
  if (strlen(text) != len) {
    fsp_free(text);
    return fsc_err(db, FIELDSYNC_EFORMAT, "%s contains a NUL byte", path);
  }
  rc = fsc_begin(db);
  if (rc != 0)
    goto done;
  rc = csv ? import_csv(db, col, text, &count)
           : import_jsonl(db, col, text, &count);
  if (rc == 0)
    rc = fsc_commit(db);
  else
    fsc_rollback(db);
  if (rc != 0) {
    char msg[sizeof(db->errmsg)];
    snprintf(msg, sizeof(msg), "%s", db->errmsg);
    fsc_err(db, rc, "%s: %s (nothing imported)", path, msg);
    count = 0;
  }
done:
  fsp_free(text);
  if (count_out != NULL)
    *count_out = count;
  return rc;
}

/* ---- introspection ----------------------------------------------------- */

int fieldsync_fields(fieldsync_db *db, const char *collection,
                     fieldsync_field_cb cb, void *data) {
  const struct fsp_collection *col;

  if (cb == NULL)
    return FIELDSYNC_EINVAL;
  col = collection != NULL ? fsp_payload_by_name(collection) : NULL;
  if (col == NULL)
    return fsc_err(db, FIELDSYNC_ECOLLECTION, "unknown collection \"%.40s\"",
                   collection != NULL ? collection : "(null)");
  fsc_fields_describe(col->desc, cb, data);
  return 0;
}

/* The registry's names, in collection-id order (test_client checks that
 * they match fsp_payload_collections). */
const char *const *fieldsync_collections(void) {
  static const char *const fixed[] = {
      "service",     "visit",          "observation", "interview_note",
      "requirement", "recommendation", "concern",     "attachment",
      NULL};

  return fixed;
}
