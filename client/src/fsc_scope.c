/* SPDX-License-Identifier: MIT */
/* Scoped sync on the replica's side (PROTOCOL.md "Scopes"): the scopes it
 * holds and the backfill in progress, the removal of a scope's records and
 * the wipe of a revoked device, both of which first copy every
 * unacknowledged version into the quarantine; and the public calls that
 * list refused versions, retry them, and list or discard the quarantine.
 * Nothing unacknowledged is deleted without a quarantined copy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fsc_fields.h"
#include "fsc_int.h"
#include "fsc_os.h"

/* Copies the unacknowledged versions of the records that `where` selects
 * (a condition on records r and versions v; ?1 and ?2 are bound to kind and
 * id when sc is given) into the quarantine, oldest first. */
#define QUARANTINE_SQL                                                         \
  "INSERT INTO quarantine(quarantined_ms, reason, collection, record, "        \
  "scope_kind, scope_id, hash, vv, deleted, payload, author, device_time_ms, " \
  "refused_code, refused_reason) "                                             \
  "SELECT ?3, ?4, r.collection, v.record, r.scope_kind, r.scope_id, v.hash, "  \
  "v.vv, v.deleted, v.payload, v.author, v.device_time_ms, v.refused_code, "   \
  "v.refused_reason FROM records r JOIN versions v ON v.record = r.id "        \
  "WHERE v.pending > 0 "

/* Runs sql once with optional scope (?1 kind, ?2 id), time (?3) and reason
 * (?4) bindings; *changes (may be NULL) gets the rows it changed. */
static int run(fieldsync_db *db, const char *sql, const struct fsc_scope *sc,
               const char *reason, size_t *changes, const char *what) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db->sql, sql, -1, &st, NULL);

  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, what);
  if (sc != NULL) {
    sqlite3_bind_int(st, 1, sc->kind);
    sqlite3_bind_blob(st, 2, sc->id, FSP_ID_LEN, SQLITE_STATIC);
  }
  if (reason != NULL) {
    sqlite3_bind_int64(st, 3, fsc_os_now_ms());
    sqlite3_bind_text(st, 4, reason, -1, SQLITE_STATIC);
  }
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return fsc_sqlerr(db, rc, what);
  if (changes != NULL)
    *changes = (size_t)sqlite3_changes(db->sql);
  return 0;
}

/* ---- held scopes and the backfill position ----------------------------- */

int fsc_scope_held(fieldsync_db *db, struct fsc_scope **out, size_t *n) {
  sqlite3_stmt *st = NULL;
  struct fsc_scope *v = NULL;
  size_t cap = 0;
  size_t k = 0;
  int rc;

  *out = NULL;
  *n = 0;
  /* Blobs compare bytewise, and every id has 16 bytes: this is the order
   * of fsp_scope_cmp, which Pull.held_scopes must follow. */
  rc = sqlite3_prepare_v2(db->sql,
                          "SELECT kind, id FROM held_scopes ORDER BY kind, id",
                          -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "reading the held scopes");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_bytes(st, 1) != FSP_ID_LEN) {
      rc = fsc_err(db, FIELDSYNC_ECORRUPT, "a held scope is damaged");
      goto fail;
    }
    if (k == cap) {
      size_t ncap = cap == 0 ? 16 : cap * 2;
      struct fsc_scope *nv = fsp_realloc(v, ncap * sizeof(*nv));
      if (nv == NULL) {
        rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
        goto fail;
      }
      v = nv;
      cap = ncap;
    }
    v[k].kind = sqlite3_column_int(st, 0);
    memcpy(v[k].id, sqlite3_column_blob(st, 1), FSP_ID_LEN);
    k++;
  }
  if (rc != SQLITE_DONE) {
    rc = fsc_sqlerr(db, rc, "reading the held scopes");
    goto fail;
  }
  sqlite3_finalize(st);
  *out = v;
  *n = k;
  return 0;
fail:
  sqlite3_finalize(st);
  fsp_free(v);
  return rc;
}

int fsc_scope_backfill(fieldsync_db *db, struct fsc_backfill *bf) {
  sqlite3_stmt *st = NULL;
  int found = 0;
  int rc;

  memset(bf, 0, sizeof(*bf));
  rc = sqlite3_prepare_v2(db->sql,
                          "SELECT key, value FROM meta WHERE key IN "
                          "('backfill_kind', 'backfill_id', 'backfill_after')",
                          -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "reading the backfill position");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const char *key = (const char *)sqlite3_column_text(st, 0);

    if (key == NULL)
      continue;
    if (strcmp(key, "backfill_kind") == 0) {
      bf->scope.kind = sqlite3_column_int(st, 1);
      found |= 1;
    } else if (strcmp(key, "backfill_id") == 0 &&
               sqlite3_column_bytes(st, 1) == FSP_ID_LEN) {
      memcpy(bf->scope.id, sqlite3_column_blob(st, 1), FSP_ID_LEN);
      found |= 2;
    } else if (strcmp(key, "backfill_after") == 0) {
      bf->after = (uint64_t)sqlite3_column_int64(st, 1);
      found |= 4;
    }
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return fsc_sqlerr(db, rc, "reading the backfill position");
  if (found != 0 && found != 7)
    return fsc_err(db, FIELDSYNC_ECORRUPT, "the backfill position is damaged");
  bf->active = found == 7;
  return 0;
}

int fsc_scope_set_backfill(fieldsync_db *db, const struct fsc_backfill *bf) {
  sqlite3_stmt *st = NULL;
  int rc;

  if (!bf->active)
    return run(db,
               "DELETE FROM meta WHERE key IN ('backfill_kind', "
               "'backfill_id', 'backfill_after')",
               NULL, NULL, NULL, "clearing the backfill position");
  rc = sqlite3_prepare_v2(db->sql,
                          "INSERT OR REPLACE INTO meta(key, value) "
                          "VALUES('backfill_kind', ?1), ('backfill_id', ?2), "
                          "('backfill_after', ?3)",
                          -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "storing the backfill position");
  sqlite3_bind_int(st, 1, bf->scope.kind);
  sqlite3_bind_blob(st, 2, bf->scope.id, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)bf->after);
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  return rc == SQLITE_DONE
             ? 0
             : fsc_sqlerr(db, rc, "storing the backfill position");
}

int fsc_scope_hold(fieldsync_db *db, const struct fsc_scope *sc) {
  int64_t n = 0;
  int rc = run(db, "INSERT OR IGNORE INTO held_scopes(kind, id) VALUES(?1, ?2)",
               sc, NULL, NULL, "adding a held scope");

  /* Every Pull lists them all, and a Pull may list no more. */
  if (rc == 0)
    rc = fsc_query_int(db, "SELECT count(*) FROM held_scopes", &n);
  if (rc == 0 && n > (int64_t)FSP_MAX_HELD_SCOPES)
    rc = fsc_err(db, FIELDSYNC_EVALUE,
                 "a finished backfill would make more than %u held scopes",
                 FSP_MAX_HELD_SCOPES);
  return rc;
}

int fsc_scope_forget(fieldsync_db *db) {
  struct fsc_backfill none;
  int rc = run(db, "DELETE FROM held_scopes", NULL, NULL, NULL,
               "forgetting the held scopes");

  memset(&none, 0, sizeof(none));
  return rc == 0 ? fsc_scope_set_backfill(db, &none) : rc;
}

/* ---- removal and revocation -------------------------------------------- */

int fsc_scope_remove(fieldsync_db *db, const struct fsc_scope *sc,
                     size_t *removed, size_t *quarantined) {
  struct fsc_backfill bf;
  size_t q = 0;
  size_t r = 0;
  int rc;

  /* records_scope finds the records; each record's versions are reached
   * by their primary key. */
  rc = run(db,
           QUARANTINE_SQL "AND r.scope_kind = ?1 AND r.scope_id = ?2 "
                          "ORDER BY v.pending",
           sc, FSC_Q_SCOPE_REMOVED, &q, "quarantining a removed scope");
  if (rc == 0)
    rc = run(db,
             "DELETE FROM versions WHERE record IN (SELECT id FROM records "
             "WHERE scope_kind = ?1 AND scope_id = ?2)",
             sc, NULL, NULL, "removing a scope's versions");
  if (rc == 0)
    rc = run(db, "DELETE FROM records WHERE scope_kind = ?1 AND scope_id = ?2",
             sc, NULL, &r, "removing a scope's records");
  if (rc == 0)
    rc = run(db, "DELETE FROM held_scopes WHERE kind = ?1 AND id = ?2", sc,
             NULL, NULL, "dropping a held scope");
  if (rc == 0)
    rc = fsc_scope_backfill(db, &bf);
  if (rc == 0 && bf.active && bf.scope.kind == sc->kind &&
      memcmp(bf.scope.id, sc->id, FSP_ID_LEN) == 0) {
    bf.active = false;
    rc = fsc_scope_set_backfill(db, &bf);
  }
  if (rc != 0)
    return rc;
  *removed += r;
  *quarantined += q;
  return 0;
}

int fsc_scope_wipe(fieldsync_db *db, size_t *removed, size_t *quarantined) {
  size_t q = 0;
  size_t r = 0;
  int rc;

  *removed = 0;
  *quarantined = 0;
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = run(db, QUARANTINE_SQL "ORDER BY v.pending", NULL, FSC_Q_REVOKED, &q,
           "quarantining unacknowledged versions");
  if (rc == 0)
    rc = run(db, "DELETE FROM versions", NULL, NULL, NULL,
             "wiping the versions");
  if (rc == 0)
    rc = run(db, "DELETE FROM records", NULL, NULL, &r, "wiping the records");
  if (rc == 0)
    rc = fsc_scope_forget(db);
  if (rc == 0)
    rc = run(db, "UPDATE meta SET value = 0 WHERE key = 'pull_cursor'", NULL,
             NULL, NULL, "resetting the cursor");
  if (rc == 0)
    rc = run(db, "DELETE FROM meta WHERE key = 'server_id'", NULL, NULL, NULL,
             "forgetting the server");
  if (rc == 0)
    rc = fsc_commit(db);
  else
    fsc_rollback(db);
  if (rc != 0)
    return rc;
  *removed = r;
  *quarantined = q;
  return 0;
}

/* ---- counts ------------------------------------------------------------ */

int fieldsync_counts(fieldsync_db *db, struct fieldsync_counts *out) {
  /* Each count reads an index (versions_pending and versions_refused are
   * partial, so the cost follows what is waiting, not the database). */
  static const char *const sql[] = {
      "SELECT count(*) FROM records",
      "SELECT count(*) FROM records WHERE nversions > 1",
      /* Parenthesised: one element split over two lines (clang's
       * -Wstring-concatenation would take it for a missing comma). */
      ("SELECT count(*) FROM versions WHERE pending > 0 AND "
       "refused_code IS NULL"),
      "SELECT count(*) FROM versions WHERE refused_code IS NOT NULL",
      "SELECT count(*) FROM quarantine",
      "SELECT count(*) FROM held_scopes",
      "SELECT value FROM meta WHERE key = 'pull_cursor'",
  };
  int64_t v[sizeof(sql) / sizeof(sql[0])];
  size_t i;
  int rc;

  if (db == NULL || out == NULL)
    return FIELDSYNC_EINVAL;
  memset(out, 0, sizeof(*out));
  for (i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
    v[i] = 0;
    rc = fsc_query_int(db, sql[i], &v[i]);
    if (rc != 0)
      return rc;
  }
  out->records = (size_t)v[0];
  out->conflicts = (size_t)v[1];
  out->pending = (size_t)v[2];
  out->refused = (size_t)v[3];
  out->quarantined = (size_t)v[4];
  out->held_scopes = (size_t)v[5];
  out->cursor = (uint64_t)v[6];
  return 0;
}

/* ---- refused versions -------------------------------------------------- */

/* Hands one JSON object to cb; FIELDSYNC_ENOMEM or FIELDSYNC_ECALLBACK. */
static int emit(fieldsync_db *db, json_t *o, fieldsync_record_cb cb,
                void *data) {
  char *s =
      o != NULL ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_free_t jfree;
  int rc;

  json_decref(o);
  if (s == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  rc = cb(s, data);
  /* json_dumps allocates with jansson's allocator, which the application
   * may have replaced (json_set_alloc_funcs): free it with that one. */
  json_get_alloc_funcs(NULL, &jfree);
  jfree(s);
  return rc != 0 ? fsc_err(db, FIELDSYNC_ECALLBACK, "stopped by the callback")
                 : 0;
}

/* Lowercase hex of a blob column of n bytes; false when its size differs. */
static bool hex_column(sqlite3_stmt *st, int col, size_t n, char *out) {
  if ((size_t)sqlite3_column_bytes(st, col) != n)
    return false;
  fsc_hex(sqlite3_column_blob(st, col), n, out);
  return true;
}

static const char *text_column(sqlite3_stmt *st, int col) {
  const unsigned char *t = sqlite3_column_text(st, col);

  return t != NULL ? (const char *)t : "";
}

int fieldsync_refused(fieldsync_db *db, fieldsync_record_cb cb, void *data) {
  sqlite3_stmt *st = NULL;
  int rc;

  if (db == NULL || cb == NULL)
    return FIELDSYNC_EINVAL;
  /* versions_refused holds exactly these rows, in the order they were
   * made. */
  rc = sqlite3_prepare_v2(
      db->sql,
      "SELECT r.collection, v.record, v.hash, v.refused_code, "
      "v.refused_reason, v.refused_ms FROM versions v "
      "JOIN records r ON r.id = v.record "
      "WHERE v.refused_code IS NOT NULL ORDER BY v.pending",
      -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "listing refused versions");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    const struct fsp_collection *col =
        fsp_payload_by_id(sqlite3_column_int(st, 0));
    char id[2 * FSP_ID_LEN + 1];
    char hash[2 * FSP_HASH_LEN + 1];
    char when[64];

    if (col == NULL || !hex_column(st, 1, FSP_ID_LEN, id) ||
        !hex_column(st, 2, FSP_HASH_LEN, hash)) {
      rc = fsc_err(db, FIELDSYNC_ECORRUPT, "a refused version is damaged");
      goto done;
    }
    fsc_iso_time(sqlite3_column_int64(st, 5), when, sizeof(when));
    rc = emit(db,
              json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "collection",
                        col->name, "id", id, "hash", hash, "code",
                        fsc_wire_code_name(sqlite3_column_int(st, 3)), "reason",
                        text_column(st, 4), "refused_at", when),
              cb, data);
    if (rc != 0)
      goto done;
  }
  rc = rc == SQLITE_DONE ? 0 : fsc_sqlerr(db, rc, "listing refused versions");
done:
  sqlite3_finalize(st);
  return rc;
}

int fieldsync_retry_refused(fieldsync_db *db, const char *id,
                            size_t *count_out) {
  static const char *const sql_all =
      "UPDATE versions SET refused_code = NULL, refused_reason = NULL, "
      "refused_ms = NULL WHERE refused_code IS NOT NULL";
  static const char *const sql_one =
      "UPDATE versions SET refused_code = NULL, refused_reason = NULL, "
      "refused_ms = NULL WHERE record = ?1 AND refused_code IS NOT NULL";
  uint8_t rid[FSP_ID_LEN];
  sqlite3_stmt *st = NULL;
  size_t n = 0;
  int rc;

  if (count_out != NULL)
    *count_out = 0;
  if (db == NULL)
    return FIELDSYNC_EINVAL;
  if (id != NULL) {
    rc = fsc_parse_id(db, id, rid);
    if (rc != 0)
      return rc;
  }
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = sqlite3_prepare_v2(db->sql, id != NULL ? sql_one : sql_all, -1, &st,
                          NULL);
  if (rc != SQLITE_OK) {
    rc = fsc_sqlerr(db, rc, "clearing refused marks");
    goto fail;
  }
  if (id != NULL)
    sqlite3_bind_blob(st, 1, rid, FSP_ID_LEN, SQLITE_STATIC);
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) {
    rc = fsc_sqlerr(db, rc, "clearing refused marks");
    goto fail;
  }
  n = (size_t)sqlite3_changes(db->sql);
  if (id != NULL && n == 0) {
    rc =
        fsc_err(db, FIELDSYNC_ENOTFOUND, "no refused version of record %s", id);
    goto fail;
  }
  rc = fsc_commit(db);
  if (rc != 0)
    return rc;
  if (count_out != NULL)
    *count_out = n;
  return 0;
fail:
  fsc_rollback(db);
  return rc;
}

/* ---- the quarantine ---------------------------------------------------- */

/* "visit" for FIELDSYNC__SCOPE_KIND__SCOPE_VISIT: the enum value's name,
 * lowercase, without its prefix. */
static void scope_kind_name(int kind, char *out, size_t cap) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
      &fieldsync__scope_kind__descriptor, kind);
  const char *name = v != NULL ? v->name : "SCOPE_UNKNOWN";
  size_t i;

  if (strncmp(name, "SCOPE_", 6) == 0)
    name += 6;
  for (i = 0; i + 1 < cap && name[i] != '\0'; i++)
    out[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a'
                                                     : name[i]);
  out[i] = '\0';
}

/* The version vector blob at column col as {"<replica hex>": counter}. */
static json_t *vv_json(fieldsync_db *db, sqlite3_stmt *st, int col) {
  struct fsp_vv vv;
  json_t *o;
  size_t i;

  fsp_vv_init(&vv);
  if (fsp_vv_decode(&vv, sqlite3_column_blob(st, col),
                    (size_t)sqlite3_column_bytes(st, col),
                    db->lim.max_vv) != 0) {
    fsp_vv_close(&vv);
    return NULL;
  }
  o = json_object();
  for (i = 0; o != NULL && i < vv.n; i++) {
    char hex[2 * FSP_ID_LEN + 1];

    fsc_hex(vv.e[i].replica, FSP_ID_LEN, hex);
    if (json_object_set_new(o, hex,
                            json_integer((json_int_t)vv.e[i].counter)) != 0) {
      json_decref(o);
      o = NULL;
    }
  }
  fsp_vv_close(&vv);
  return o;
}

/* One quarantine row (the columns of fieldsync_quarantine's query) as the
 * documented JSON; NULL when it cannot be read (damaged, or no memory). */
static json_t *quarantine_json(fieldsync_db *db, sqlite3_stmt *st) {
  const struct fsp_collection *col =
      fsp_payload_by_id(sqlite3_column_int(st, 3));
  char id[2 * FSP_ID_LEN + 1];
  char scope[2 * FSP_ID_LEN + 1];
  char hash[2 * FSP_HASH_LEN + 1];
  char kind[32];
  char when[64];
  char made[64];
  bool deleted = sqlite3_column_int(st, 9) != 0;
  json_t *vv;
  json_t *fields = json_null();
  json_t *refused = json_null();

  if (col == NULL || !hex_column(st, 4, FSP_ID_LEN, id) ||
      !hex_column(st, 6, FSP_ID_LEN, scope) ||
      !hex_column(st, 7, FSP_HASH_LEN, hash))
    return NULL;
  vv = vv_json(db, st, 8);
  if (vv == NULL)
    return NULL;
  if (!deleted) {
    ProtobufCMessage *msg =
        fsc_fields_unpack(col->desc, sqlite3_column_blob(st, 10),
                          (size_t)sqlite3_column_bytes(st, 10));
    if (msg == NULL) {
      json_decref(vv);
      return NULL;
    }
    fields = fsc_fields_to_json(msg);
    fsc_fields_free(msg);
  }
  if (sqlite3_column_type(st, 13) != SQLITE_NULL)
    refused = json_pack("{s:s, s:s}", "code",
                        fsc_wire_code_name(sqlite3_column_int(st, 13)),
                        "reason", text_column(st, 14));
  scope_kind_name(sqlite3_column_int(st, 5), kind, sizeof(kind));
  fsc_iso_time(sqlite3_column_int64(st, 1), when, sizeof(when));
  fsc_iso_time(sqlite3_column_int64(st, 12), made, sizeof(made));
  /* "o" takes the references, also when json_pack fails. */
  return json_pack(
      "{s:I, s:s, s:s, s:{s:s, s:s}, s:s, s:s, s:b, s:o, s:s, s:o, s:s, "
      "s:o, s:o}",
      "qid", (json_int_t)sqlite3_column_int64(st, 0), "collection", col->name,
      "id", id, "scope", "kind", kind, "id", scope, "reason",
      text_column(st, 2), "quarantined_at", when, "deleted", (int)deleted, "vv",
      vv, "hash", hash, "author",
      sqlite3_column_type(st, 11) != SQLITE_NULL
          ? json_string(text_column(st, 11))
          : json_null(),
      "time", made, "refused", refused, "fields", fields);
}

int fieldsync_quarantine(fieldsync_db *db, fieldsync_record_cb cb, void *data) {
  sqlite3_stmt *st = NULL;
  int rc;

  if (db == NULL || cb == NULL)
    return FIELDSYNC_EINVAL;
  rc = sqlite3_prepare_v2(
      db->sql,
      "SELECT qid, quarantined_ms, reason, collection, record, scope_kind, "
      "scope_id, hash, vv, deleted, payload, author, device_time_ms, "
      "refused_code, refused_reason FROM quarantine ORDER BY qid",
      -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "listing the quarantine");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    json_t *o = quarantine_json(db, st);

    if (o == NULL) {
      rc =
          fsc_err(db, FIELDSYNC_ECORRUPT, "quarantined version %lld is damaged",
                  (long long)sqlite3_column_int64(st, 0));
      goto done;
    }
    rc = emit(db, o, cb, data);
    if (rc != 0)
      goto done;
  }
  rc = rc == SQLITE_DONE ? 0 : fsc_sqlerr(db, rc, "listing the quarantine");
done:
  sqlite3_finalize(st);
  return rc;
}

int fieldsync_quarantine_discard(fieldsync_db *db, int64_t qid,
                                 size_t *count_out) {
  sqlite3_stmt *st = NULL;
  size_t n;
  int rc;

  if (count_out != NULL)
    *count_out = 0;
  if (db == NULL)
    return FIELDSYNC_EINVAL;
  if (qid < 0)
    return fsc_err(db, FIELDSYNC_EINVAL, "no quarantined version %lld",
                   (long long)qid);
  rc = sqlite3_prepare_v2(db->sql,
                          qid == 0 ? "DELETE FROM quarantine"
                                   : "DELETE FROM quarantine WHERE qid = ?1",
                          -1, &st, NULL);
  if (rc != SQLITE_OK)
    return fsc_sqlerr(db, rc, "discarding from the quarantine");
  if (qid != 0)
    sqlite3_bind_int64(st, 1, qid);
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE)
    return fsc_sqlerr(db, rc, "discarding from the quarantine");
  n = (size_t)sqlite3_changes(db->sql);
  if (qid != 0 && n == 0)
    return fsc_err(db, FIELDSYNC_ENOTFOUND, "no quarantined version %lld",
                   (long long)qid);
  if (count_out != NULL)
    *count_out = n;
  return 0;
}
