/* SPDX-License-Identifier: MIT */
/* The record store: every SQL statement on records and versions. Local
 * writes make a version that dominates all current ones; incoming versions
 * go through the proto/ merge (fsp_merge); the sync layer takes outgoing
 * versions in batches and acknowledges them; records render as JSON. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "fsc_fields.h"
#include "fsc_int.h"
#include "fsc_os.h"

static const char *const stmt_sql[FSC_ST_COUNT] = {
    [FSC_ST_LOAD_RECORD] =
        "SELECT collection, scope_kind, scope_id, reuse FROM records "
        "WHERE id = ?1",
    [FSC_ST_LOAD_VERSIONS] =
        "SELECT hash, vv, deleted, payload, author, device_time_ms, pending, "
        "refused_code, refused_reason FROM versions WHERE record = ?1",
    [FSC_ST_DELETE_VERSIONS] = "DELETE FROM versions WHERE record = ?1",
    [FSC_ST_DELETE_VERSION] =
        "DELETE FROM versions WHERE record = ?1 AND hash = ?2 AND vv = ?3",
    [FSC_ST_INSERT_VERSION] =
        "INSERT INTO versions(record, hash, vv, deleted, payload, author, "
        "device_time_ms, pending) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [FSC_ST_UPSERT_RECORD] =
        "INSERT INTO records(id, collection, scope_kind, scope_id, visit_id, "
        "service_id, nversions, deleted, reuse) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
        "ON CONFLICT(id) DO UPDATE SET scope_kind = ?3, scope_id = ?4, "
        "visit_id = coalesce(?5, visit_id), "
        "service_id = coalesce(?6, service_id), nversions = ?7, "
        "deleted = ?8, reuse = ?9",
    [FSC_ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [FSC_ST_META_SET] =
        "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
    [FSC_ST_OUTGOING] =
        "SELECT v.record, r.collection, r.scope_kind, r.scope_id, v.hash, "
        "v.vv, v.deleted, v.payload, v.author, v.device_time_ms, v.pending, "
        "v.refused_code, v.refused_reason "
        "FROM versions v JOIN records r ON r.id = v.record "
        /* "pending > 0 AND refused_code IS NULL" is the WHERE of the
         * partial index versions_pending, spelled out so SQLite uses it (it
         * cannot infer it from "pending > ?1"): without it every batch
         * scans and sorts the whole table. Refused versions wait for
         * fieldsync_retry_refused() outside the index. */
        "WHERE v.pending > 0 AND v.refused_code IS NULL AND v.pending > ?1 "
        "ORDER BY v.pending LIMIT ?2",
    [FSC_ST_ACK] = "UPDATE versions SET pending = 0 "
                   "WHERE record = ?1 AND hash = ?2 AND pending = ?3",
    [FSC_ST_REFUSE] = "UPDATE versions SET refused_code = ?4, "
                      "refused_reason = ?5, refused_ms = ?6 "
                      "WHERE record = ?1 AND hash = ?2 AND pending = ?3",
    [FSC_ST_SAVEPOINT] = "SAVEPOINT fsc_op",
    [FSC_ST_RELEASE] = "RELEASE fsc_op",
    [FSC_ST_ROLLBACK] = "ROLLBACK",
    [FSC_ST_ROLLBACK_TO] = "ROLLBACK TO fsc_op",
};

int fsc_stmt(fieldsync_db *db, enum fsc_stmt_id id, sqlite3_stmt **out) {
  int rc;

  if (db->st[id] == NULL) {
    rc = sqlite3_prepare_v3(db->sql, stmt_sql[id], -1,
                            SQLITE_PREPARE_PERSISTENT, &db->st[id], NULL);
    if (rc != SQLITE_OK)
      return fsc_sqlerr(db, rc, "preparing a statement");
  } else {
    sqlite3_reset(db->st[id]);
    sqlite3_clear_bindings(db->st[id]);
  }
  *out = db->st[id];
  return 0;
}

/* Steps a write statement to completion and resets it. */
static int step_done(fieldsync_db *db, sqlite3_stmt *st, const char *what) {
  int rc = sqlite3_step(st);

  sqlite3_reset(st);
  return rc == SQLITE_DONE ? 0 : fsc_sqlerr(db, rc, what);
}

/* ---- records in memory ------------------------------------------------- */

static void version_close(struct fsc_version *v) {
  fsp_vv_close(&v->vv);
  fsp_free(v->payload);
  fsp_free(v->author);
  fsp_free(v->refused_reason);
  memset(v, 0, sizeof(*v));
}

void fsc_record_close(struct fsc_record *r) {
  size_t i;

  for (i = 0; i < r->n; i++)
    version_close(&r->v[i]);
  fsp_free(r->v);
  r->v = NULL;
  r->n = 0;
  r->cap = 0;
}

/* Appends an empty version to r; NULL when out of memory. */
static struct fsc_version *record_push(struct fsc_record *r) {
  struct fsc_version *v;

  if (r->n == r->cap) {
    size_t cap = r->cap == 0 ? 2 : r->cap * 2;
    struct fsc_version *nv = fsp_realloc(r->v, cap * sizeof(*nv));
    if (nv == NULL)
      return NULL;
    r->v = nv;
    r->cap = cap;
  }
  v = &r->v[r->n++];
  memset(v, 0, sizeof(*v));
  fsp_vv_init(&v->vv);
  return v;
}

/* Copies a blob column into fresh memory (NULL for an empty blob). */
static int copy_blob(sqlite3_stmt *st, int col, uint8_t **out, size_t *len) {
  int n = sqlite3_column_bytes(st, col);
  const void *p = sqlite3_column_blob(st, col);

  *out = NULL;
  *len = (size_t)n;
  if (n == 0)
    return 0;
  *out = fsp_malloc((size_t)n);
  if (*out == NULL)
    return FIELDSYNC_ENOMEM;
  memcpy(*out, p, (size_t)n);
  return 0;
}

/* Reads a version row (columns from `base`: hash, vv, deleted, payload,
 * author, time, pending, refused_code, refused_reason) into v. */
static int read_version(fieldsync_db *db, sqlite3_stmt *st, int base,
                        struct fsc_version *v) {
  const unsigned char *author;
  int rc;

  if (sqlite3_column_bytes(st, base) != FSP_HASH_LEN)
    return fsc_err(db, FIELDSYNC_ECORRUPT, "stored version hash is damaged");
  memcpy(v->hash, sqlite3_column_blob(st, base), FSP_HASH_LEN);
  rc = fsp_vv_decode(&v->vv, sqlite3_column_blob(st, base + 1),
                     (size_t)sqlite3_column_bytes(st, base + 1),
                     db->lim.max_vv);
  if (rc != 0)
    return rc == FSP_ENOMEM
               ? fsc_err(db, FIELDSYNC_ENOMEM, "out of memory")
               : fsc_err(db, FIELDSYNC_ECORRUPT,
                         "stored version vector is damaged");
  v->deleted = sqlite3_column_int(st, base + 2) != 0;
  if (copy_blob(st, base + 3, &v->payload, &v->len) != 0)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  author = sqlite3_column_text(st, base + 4);
  if (author != NULL) {
    v->author = fsp_strdup((const char *)author);
    if (v->author == NULL)
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  }
  v->time_ms = sqlite3_column_int64(st, base + 5);
  v->pending = sqlite3_column_int64(st, base + 6);
  v->refused = sqlite3_column_type(st, base + 7) != SQLITE_NULL;
  if (v->refused) {
    const unsigned char *why = sqlite3_column_text(st, base + 8);
    v->refused_code = sqlite3_column_int(st, base + 7);
    v->refused_reason = fsp_strdup(why != NULL ? (const char *)why : "");
    if (v->refused_reason == NULL)
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  }
  return 0;
}

static int cmp_versions(const void *a, const void *b) {
  const struct fsc_version *x = a;
  const struct fsc_version *y = b;

  if (x->deleted != y->deleted)
    return x->deleted ? 1 : -1;
  return -memcmp(x->hash, y->hash, FSP_HASH_LEN);
}

void fsc_store_sort(struct fsc_record *r) {
  if (r->n > 1)
    qsort(r->v, r->n, sizeof(r->v[0]), cmp_versions);
}

int fsc_store_load(fieldsync_db *db, const uint8_t id_in[16],
                   struct fsc_record *r) {
  uint8_t id[FSP_ID_LEN];
  sqlite3_stmt *st = NULL;
  int rc;

  memcpy(id, id_in, FSP_ID_LEN); /* id_in may point into r */
  memset(r, 0, sizeof(*r));
  memcpy(r->id, id, FSP_ID_LEN);
  rc = fsc_stmt(db, FSC_ST_LOAD_RECORD, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, id, FSP_ID_LEN, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    char hex[33];
    sqlite3_reset(st);
    fsc_hex(id, FSP_ID_LEN, hex);
    return fsc_err(db, FIELDSYNC_ENOTFOUND, "no record %s", hex);
  }
  if (rc != SQLITE_ROW) {
    rc = fsc_sqlerr(db, rc, "loading a record");
    sqlite3_reset(st);
    return rc;
  }
  r->col = fsp_payload_by_id(sqlite3_column_int(st, 0));
  r->scope_kind = sqlite3_column_int(st, 1);
  r->reuse = sqlite3_column_int(st, 3) != 0;
  if (r->col == NULL || sqlite3_column_bytes(st, 2) != FSP_ID_LEN) {
    sqlite3_reset(st);
    return fsc_err(db, FIELDSYNC_ECORRUPT, "stored record is damaged");
  }
  memcpy(r->scope_id, sqlite3_column_blob(st, 2), FSP_ID_LEN);
  sqlite3_reset(st);

  rc = fsc_stmt(db, FSC_ST_LOAD_VERSIONS, &st);
  if (rc != 0)
    return rc;
  sqlite3_bind_blob(st, 1, id, FSP_ID_LEN, SQLITE_STATIC);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    struct fsc_version *v = record_push(r);
    if (v == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto fail;
    }
    rc = read_version(db, st, 0, v);
    if (rc != 0)
      goto fail;
  }
  if (rc != SQLITE_DONE) {
    rc = fsc_sqlerr(db, rc, "loading versions");
    goto fail;
  }
  sqlite3_reset(st);
  if (r->n == 0) {
    fsc_record_close(r);
    return fsc_err(db, FIELDSYNC_ECORRUPT, "stored record has no versions");
  }
  fsc_store_sort(r);
  return 0;
fail:
  sqlite3_reset(st);
  fsc_record_close(r);
  return rc;
}

/* ---- writing ----------------------------------------------------------- */

/* The visit and service a payload belongs to, for the query columns.
 * Returns 0, or FIELDSYNC_ENOMEM when the winner's payload cannot be
 * unpacked (it was validated before it was stored). */
static int derive_links(const struct fsc_record *r, const uint8_t **visit,
                        const uint8_t **service, ProtobufCMessage **msg) {
  static const char *const visit_fields[] = {"visit_id", "raised_visit_id",
                                             "linked_visit_id"};
  const struct fsc_version *w = &r->v[0];
  const ProtobufCFieldDescriptor *f;
  size_t i;

  *visit = NULL;
  *service = NULL;
  *msg = NULL;
  if (r->col->id == FIELDSYNC__COLLECTION__COLLECTION_VISIT)
    *visit = r->id;
  if (r->col->id == FIELDSYNC__COLLECTION__COLLECTION_SERVICE)
    *service = r->id;
  if (w->deleted)
    return 0;
  *msg = fsc_fields_unpack(r->col->desc, w->payload, w->len);
  if (*msg == NULL)
    return FIELDSYNC_ENOMEM;
  for (i = 0; *visit == NULL && i < 3; i++) {
    f = protobuf_c_message_descriptor_get_field_by_name(r->col->desc,
                                                        visit_fields[i]);
    if (f != NULL) {
      const char *base = (const char *)*msg;
      const ProtobufCBinaryData *b =
          (const ProtobufCBinaryData *)(base + f->offset);
      if (*(const protobuf_c_boolean *)(base + f->quantifier_offset) &&
          b->len == FSP_ID_LEN)
        *visit = b->data;
    }
  }
  f = protobuf_c_message_descriptor_get_field_by_name(r->col->desc,
                                                      "service_id");
  if (*service == NULL && f != NULL) {
    const char *base = (const char *)*msg;
    const ProtobufCBinaryData *b =
        (const ProtobufCBinaryData *)(base + f->offset);
    if (*(const protobuf_c_boolean *)(base + f->quantifier_offset) &&
        b->len == FSP_ID_LEN)
      *service = b->data;
  }
  return 0;
}

/* Writes the records row for r's current version set (sorted). */
static int write_record_row(fieldsync_db *db, struct fsc_record *r) {
  const uint8_t *visit;
  const uint8_t *service;
  ProtobufCMessage *msg;
  sqlite3_stmt *st = NULL;
  bool all_deleted = true;
  size_t i;
  int rc;

  for (i = 0; i < r->n; i++)
    if (!r->v[i].deleted)
      all_deleted = false;
  if (derive_links(r, &visit, &service, &msg) != 0)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  /* The record's scope is its display winner's: a version that lost, or
   * arrived later, does not move the record. */
  if (msg != NULL) {
    struct fsp_error err;
    int kind = 0;
    uint8_t scope[FSP_ID_LEN];
    if (fsp_payload_scope(r->col, r->id, msg, &kind, scope, &err) == 0) {
      r->scope_kind = kind;
      memcpy(r->scope_id, scope, FSP_ID_LEN);
    }
  }
  rc = fsc_stmt(db, FSC_ST_UPSERT_RECORD, &st);
  if (rc != 0) {
    fsc_fields_free(msg);
    return rc;
  }
  sqlite3_bind_blob(st, 1, r->id, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, r->col->id);
  sqlite3_bind_int(st, 3, r->scope_kind);
  sqlite3_bind_blob(st, 4, r->scope_id, FSP_ID_LEN, SQLITE_STATIC);
  if (visit != NULL)
    sqlite3_bind_blob(st, 5, visit, FSP_ID_LEN, SQLITE_STATIC);
  if (service != NULL)
    sqlite3_bind_blob(st, 6, service, FSP_ID_LEN, SQLITE_STATIC);
  sqlite3_bind_int64(st, 7, (sqlite3_int64)r->n);
  sqlite3_bind_int(st, 8, all_deleted);
  sqlite3_bind_int(st, 9, r->reuse);
  rc = step_done(db, st, "writing a record");
  fsc_fields_free(msg);
  return rc;
}

/* Binds v's canonical encoding (copied by SQLite) to parameter idx. */
static int bind_vv(fieldsync_db *db, sqlite3_stmt *st, int idx,
                   const struct fsp_vv *v) {
  size_t len = fsp_vv_encoded_size(v);
  uint8_t *buf = fsp_malloc(len);

  if (buf == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  fsp_vv_encode(v, buf);
  sqlite3_bind_blob(st, idx, buf, (int)len, SQLITE_TRANSIENT);
  fsp_free(buf);
  return 0;
}

static int insert_version(fieldsync_db *db, const uint8_t id[16],
                          const struct fsc_version *v) {
  uint8_t vvbuf[FSP_VV_ENTRY_BYTES * 16];
  uint8_t *vvp = vvbuf;
  size_t vvlen = fsp_vv_encoded_size(&v->vv);
  sqlite3_stmt *st = NULL;
  int rc;

  if (vvlen > sizeof(vvbuf)) {
    vvp = fsp_malloc(vvlen);
    if (vvp == NULL)
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  }
  fsp_vv_encode(&v->vv, vvp);
  rc = fsc_stmt(db, FSC_ST_INSERT_VERSION, &st);
  if (rc == 0) {
    sqlite3_bind_blob(st, 1, id, FSP_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, v->hash, FSP_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, vvp, (int)vvlen, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, v->deleted);
    sqlite3_bind_blob(st, 5, v->payload != NULL ? (const void *)v->payload
                                                : (const void *)"",
                      (int)v->len, SQLITE_STATIC);
    if (v->author != NULL)
      sqlite3_bind_text(st, 6, v->author, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 7, v->time_ms);
    sqlite3_bind_int64(st, 8, v->pending);
    rc = step_done(db, st, "writing a version");
  }
  if (vvp != vvbuf)
    fsp_free(vvp);
  return rc;
}

static int meta_get_int(fieldsync_db *db, const char *key, int64_t *out) {
  sqlite3_stmt *st = NULL;
  int rc = fsc_stmt(db, FSC_ST_META_GET, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *out = sqlite3_column_int64(st, 0);
    rc = 0;
  } else if (rc == SQLITE_DONE) {
    rc = fsc_err(db, FIELDSYNC_ECORRUPT, "database lacks meta %s", key);
  } else {
    rc = fsc_sqlerr(db, rc, "reading meta");
  }
  sqlite3_reset(st);
  return rc;
}

static int meta_set_int(fieldsync_db *db, const char *key, int64_t v) {
  sqlite3_stmt *st = NULL;
  int rc = fsc_stmt(db, FSC_ST_META_SET, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, v);
  return step_done(db, st, "writing meta");
}

/* The next local change number, inside the caller's write transaction.
 * Inside a batch the counter stays in memory until the batch commits (a
 * rolled-back write leaves a gap, which is harmless: only order matters). */
static int next_pending(fieldsync_db *db, int64_t *out) {
  int64_t next = 0;
  int rc;

  if (db->batch && db->batch_pending > 0) {
    *out = db->batch_pending++;
    return 0;
  }
  rc = meta_get_int(db, "next_pending", &next);
  if (rc != 0)
    return rc;
  *out = next;
  if (db->batch) {
    db->batch_pending = next + 1;
    return 0;
  }
  return meta_set_int(db, "next_pending", next + 1);
}

int fsc_store_flush_pending(fieldsync_db *db) {
  int rc = 0;

  if (db->batch_pending > 0)
    rc = meta_set_int(db, "next_pending", db->batch_pending);
  db->batch_pending = 0;
  return rc;
}

int fsc_store_put_local(fieldsync_db *db, struct fsc_record *r, bool deleted,
                        const uint8_t *payload, size_t len) {
  struct fsc_version nv;
  sqlite3_stmt *st = NULL;
  size_t i;
  int rc;

  memset(&nv, 0, sizeof(nv));
  fsp_vv_init(&nv.vv);
  for (i = 0; i < r->n; i++) {
    if (fsp_vv_join(&nv.vv, &r->v[i].vv) != 0) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto fail;
    }
  }
  if (fsp_vv_increment(&nv.vv, db->replica) != 0) {
    rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
    goto fail;
  }
  if (nv.vv.n > db->lim.max_vv) {
    rc = fsc_err(db, FIELDSYNC_EVALUE,
                 "record has been edited by more than %u replicas",
                 db->lim.max_vv);
    goto fail;
  }
  nv.deleted = deleted;
  if (!deleted && len > 0) {
    nv.payload = fsp_malloc(len);
    if (nv.payload == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto fail;
    }
    memcpy(nv.payload, payload, len);
    nv.len = len;
  }
  fsp_merge_hash(deleted, nv.payload, nv.len, nv.hash);
  nv.time_ms = fsc_os_now_ms();
  if (db->name[0] != '\0') {
    nv.author = fsp_strdup(db->name);
    if (nv.author == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto fail;
    }
  }
  rc = next_pending(db, &nv.pending);
  if (rc != 0)
    goto fail;

  if (r->n > 0) { /* a new record has no versions to replace */
    rc = fsc_stmt(db, FSC_ST_DELETE_VERSIONS, &st);
    if (rc != 0)
      goto fail;
    sqlite3_bind_blob(st, 1, r->id, FSP_ID_LEN, SQLITE_STATIC);
    rc = step_done(db, st, "replacing versions");
  }
  if (rc == 0)
    rc = insert_version(db, r->id, &nv);
  if (rc != 0)
    goto fail;
  /* The new version is now the whole state. */
  for (i = 0; i < r->n; i++)
    version_close(&r->v[i]);
  r->n = 0;
  r->reuse = false;
  {
    struct fsc_version *slot = record_push(r);
    if (slot == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto fail;
    }
    *slot = nv;
    memset(&nv, 0, sizeof(nv));
  }
  return write_record_row(db, r);
fail:
  version_close(&nv);
  return rc;
}

/* ---- the sync layer's slots -------------------------------------------- */

void fsc_outgoing_free(struct fsc_outgoing *o, size_t n) {
  size_t i;

  if (o == NULL)
    return;
  for (i = 0; i < n; i++)
    version_close(&o[i].v);
  fsp_free(o);
}

int fsc_store_outgoing(fieldsync_db *db, int64_t after, size_t max,
                       struct fsc_outgoing **out, size_t *n) {
  struct fsc_outgoing *o;
  sqlite3_stmt *st = NULL;
  size_t k = 0;
  int rc;

  *out = NULL;
  *n = 0;
  if (max == 0)
    return 0;
  o = fsp_calloc(max, sizeof(*o));
  if (o == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  rc = fsc_stmt(db, FSC_ST_OUTGOING, &st);
  if (rc != 0)
    goto fail;
  sqlite3_bind_int64(st, 1, after);
  sqlite3_bind_int64(st, 2, (sqlite3_int64)max);
  while (k < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    struct fsc_outgoing *x = &o[k];

    fsp_vv_init(&x->v.vv);
    k++;
    if (sqlite3_column_bytes(st, 0) != FSP_ID_LEN ||
        sqlite3_column_bytes(st, 3) != FSP_ID_LEN) {
      rc = fsc_err(db, FIELDSYNC_ECORRUPT, "stored record is damaged");
      goto fail;
    }
    memcpy(x->id, sqlite3_column_blob(st, 0), FSP_ID_LEN);
    x->collection = sqlite3_column_int(st, 1);
    x->scope_kind = sqlite3_column_int(st, 2);
    memcpy(x->scope_id, sqlite3_column_blob(st, 3), FSP_ID_LEN);
    rc = read_version(db, st, 4, &x->v);
    if (rc != 0)
      goto fail;
    /* A live version's scope is its own payload's (the row's may have
     * moved with a later pull); a tombstone keeps the record's scope. */
    if (!x->v.deleted) {
      const struct fsp_collection *col = fsp_payload_by_id(x->collection);
      ProtobufCMessage *msg = NULL;
      struct fsp_budget budget;
      struct fsp_error err;
      if (col == NULL) {
        rc = fsc_err(db, FIELDSYNC_ECORRUPT, "a stored record is damaged");
        goto fail;
      }
      if (fsp_payload_decode(col, x->v.payload, x->v.len, &db->lim, &budget,
                             &msg, &err) != 0 ||
          fsp_payload_scope(col, x->id, msg, &x->scope_kind, x->scope_id,
                            &err) != 0) {
        fsp_payload_free(msg, &budget);
        rc = err.code == FSP_ENOMEM
                 ? fsc_err(db, FIELDSYNC_ENOMEM, "out of memory")
                 : fsc_err(db, FIELDSYNC_ECORRUPT, "stored version: %s",
                           err.msg);
        goto fail;
      }
      fsp_payload_free(msg, &budget);
    }
  }
  if (k < max && rc != SQLITE_DONE) {
    rc = fsc_sqlerr(db, rc, "reading outgoing versions");
    goto fail;
  }
  sqlite3_reset(st);
  *out = o;
  *n = k;
  return 0;
fail:
  sqlite3_reset(st);
  fsc_outgoing_free(o, k);
  return rc;
}

int fsc_store_answer(fieldsync_db *db, const struct fsc_ack *a, size_t na,
                     const struct fsc_refusal *r, size_t nr) {
  sqlite3_stmt *st = NULL;
  int64_t now = fsc_os_now_ms();
  size_t i;
  int rc = fsc_begin(db);

  if (rc != 0)
    return rc;
  for (i = 0; i < na; i++) {
    rc = fsc_stmt(db, FSC_ST_ACK, &st);
    if (rc != 0)
      goto fail;
    sqlite3_bind_blob(st, 1, a[i].id, FSP_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, a[i].hash, FSP_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, a[i].pending);
    rc = step_done(db, st, "acknowledging a version");
    if (rc != 0)
      goto fail;
  }
  /* A refused version keeps its change number (it is still not
   * acknowledged); a later save of the same content is not marked. */
  for (i = 0; i < nr; i++) {
    rc = fsc_stmt(db, FSC_ST_REFUSE, &st);
    if (rc != 0)
      goto fail;
    sqlite3_bind_blob(st, 1, r[i].id, FSP_ID_LEN, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, r[i].hash, FSP_HASH_LEN, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, r[i].pending);
    sqlite3_bind_int(st, 4, r[i].code);
    sqlite3_bind_text(st, 5, r[i].reason != NULL ? r[i].reason : "", -1,
                      SQLITE_STATIC);
    sqlite3_bind_int64(st, 6, now);
    rc = step_done(db, st, "marking a version refused");
    if (rc != 0)
      goto fail;
  }
  return fsc_commit(db);
fail:
  fsc_rollback(db);
  return rc;
}

int fsc_store_ack(fieldsync_db *db, const struct fsc_ack *a, size_t n) {
  return fsc_store_answer(db, a, n, NULL, 0);
}

int fsc_store_cursor(fieldsync_db *db, uint64_t *cursor) {
  int64_t c = 0;
  int rc = meta_get_int(db, "pull_cursor", &c);

  *cursor = (uint64_t)c;
  return rc;
}

int fsc_store_server(fieldsync_db *db, const uint8_t server_id[16]) {
  sqlite3_stmt *st = NULL;
  bool same = false;
  int rc = fsc_stmt(db, FSC_ST_META_GET, &st);

  if (rc != 0)
    return rc;
  sqlite3_bind_text(st, 1, "server_id", -1, SQLITE_STATIC);
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW)
    same = sqlite3_column_bytes(st, 0) == FSP_ID_LEN &&
           memcmp(sqlite3_column_blob(st, 0), server_id, FSP_ID_LEN) == 0;
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    return fsc_sqlerr(db, rc, "reading the server id");
  if (same)
    return 0;
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = fsc_stmt(db, FSC_ST_META_SET, &st);
  if (rc == 0) {
    sqlite3_bind_text(st, 1, "server_id", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, server_id, FSP_ID_LEN, SQLITE_STATIC);
    rc = step_done(db, st, "writing the server id");
  }
  if (rc == 0)
    rc = meta_set_int(db, "pull_cursor", 0);
  if (rc == 0)
    rc = fsc_scope_forget(db);
  if (rc == 0)
    return fsc_commit(db);
  fsc_rollback(db);
  return rc;
}

/* Copies an incoming wire version into v. */
static int version_from_pb(fieldsync_db *db, const Fieldsync__Version *pv,
                           struct fsc_version *v) {
  struct fsp_error err;

  memcpy(v->hash, pv->hash.data, FSP_HASH_LEN);
  if (fsp_msg_vv_from_pb(&v->vv, pv->vv, pv->n_vv, db->lim.max_vv, &err) != 0)
    return fsc_fsperr(db, &err);
  v->deleted = pv->has_deleted && pv->deleted;
  if (!v->deleted && pv->has_payload && pv->payload.len > 0) {
    v->payload = fsp_malloc(pv->payload.len);
    if (v->payload == NULL)
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
    memcpy(v->payload, pv->payload.data, pv->payload.len);
    v->len = pv->payload.len;
  }
  if (pv->author != NULL) {
    v->author = fsp_strdup(pv->author);
    if (v->author == NULL)
      return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  }
  v->time_ms = pv->has_device_time_ms ? pv->device_time_ms : 0;
  v->pending = 0;
  return 0;
}

/* Merges one incoming change into the store (inside a transaction). */
static int apply_one(fieldsync_db *db, const Fieldsync__Change *c,
                     struct fsc_apply_stats *stats) {
  struct fsc_record r;
  struct fsc_version in;
  struct fsp_vref refs[16];
  struct fsp_vref *cur = refs;
  bool keepbuf[16];
  bool *keep = keepbuf;
  struct fsp_vref inref;
  struct fsp_merge_result res;
  sqlite3_stmt *st = NULL;
  size_t i;
  size_t j;
  int rc;

  memset(&in, 0, sizeof(in));
  fsp_vv_init(&in.vv);
  rc = fsc_store_load(db, c->key->id.data, &r);
  if (rc == FIELDSYNC_ENOTFOUND) {
    memset(&r, 0, sizeof(r));
    memcpy(r.id, c->key->id.data, FSP_ID_LEN);
    r.col = fsp_payload_by_id((int)c->key->collection);
    rc = 0;
  }
  if (rc != 0)
    return rc;
  if (r.col == NULL || (int)c->key->collection != r.col->id) {
    rc = fsc_err(db, FIELDSYNC_EVALUE,
                 "incoming change names a different collection than the "
                 "stored record");
    goto done;
  }
  if (!(c->version->has_deleted && c->version->deleted)) {
    struct fsp_budget budget;
    struct fsp_error err;
    rc = fsp_payload_decode(r.col, c->version->payload.data,
                            c->version->payload.len, &db->lim, &budget, NULL,
                            &err);
    if (rc != 0) {
      rc = fsc_fsperr(db, &err);
      goto done;
    }
  }
  rc = version_from_pb(db, c->version, &in);
  if (rc != 0)
    goto done;
  if (r.n > 16) {
    cur = fsp_malloc(r.n * sizeof(*cur));
    keep = fsp_malloc(r.n * sizeof(*keep));
    if (cur == NULL || keep == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto done;
    }
  }
  for (i = 0; i < r.n; i++) {
    cur[i].vv = &r.v[i].vv;
    cur[i].hash = r.v[i].hash;
  }
  inref.vv = &in.vv;
  inref.hash = in.hash;
  fsp_merge(cur, r.n, &inref, keep, &res);
  switch (res.outcome) {
  case FSP_MERGE_KNOWN:
    stats->known++;
    goto done;
  case FSP_MERGE_STALE:
    stats->stale++;
    goto done;
  case FSP_MERGE_CONFLICT:
    stats->conflicts++;
    stats->applied++;
    break;
  case FSP_MERGE_REUSE:
    stats->reuse++;
    stats->conflicts++;
    stats->applied++;
    r.reuse = true;
    break;
  default:
    stats->applied++;
    break;
  }
  /* Drop superseded versions, in the database and in memory. */
  for (i = 0, j = 0; i < r.n; i++) {
    if (!keep[i]) {
      rc = fsc_stmt(db, FSC_ST_DELETE_VERSION, &st);
      if (rc != 0)
        goto done;
      sqlite3_bind_blob(st, 1, r.id, FSP_ID_LEN, SQLITE_STATIC);
      sqlite3_bind_blob(st, 2, r.v[i].hash, FSP_HASH_LEN, SQLITE_STATIC);
      rc = bind_vv(db, st, 3, &r.v[i].vv);
      if (rc == 0)
        rc = step_done(db, st, "removing a superseded version");
      if (rc != 0)
        goto done;
      version_close(&r.v[i]);
    } else {
      r.v[j++] = r.v[i];
    }
  }
  r.n = j;
  rc = insert_version(db, r.id, &in);
  if (rc != 0)
    goto done;
  {
    struct fsc_version *slot = record_push(&r);
    if (slot == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto done;
    }
    *slot = in;
    memset(&in, 0, sizeof(in));
  }
  fsc_store_sort(&r);
  /* The winner's scope is the record's scope. */
  r.scope_kind = (int)c->scope->kind;
  memcpy(r.scope_id, c->scope->id.data, FSP_ID_LEN);
  rc = write_record_row(db, &r);
done:
  if (cur != refs)
    fsp_free(cur);
  if (keep != keepbuf)
    fsp_free(keep);
  version_close(&in);
  fsc_record_close(&r);
  return rc;
}

/* A wire ScopeKey (validated: a known kind and a 16-byte id) as ours. */
static void scope_from_pb(const Fieldsync__ScopeKey *k, struct fsc_scope *sc) {
  sc->kind = (int)k->kind;
  memcpy(sc->id, k->id.data, FSP_ID_LEN);
}

int fsc_store_apply_changes(fieldsync_db *db, const Fieldsync__Changes *ch,
                            struct fsc_apply_stats *stats) {
  struct fsc_backfill bf;
  size_t i;
  int rc;

  memset(stats, 0, sizeof(*stats));
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  /* Removals first: a change of a removed scope in the same message is a
   * newer grant, and is kept. */
  for (i = 0; i < ch->n_removed_scopes; i++) {
    struct fsc_scope sc;

    scope_from_pb(ch->removed_scopes[i], &sc);
    rc = fsc_scope_remove(db, &sc, &stats->removed, &stats->quarantined);
    if (rc != 0)
      goto fail;
  }
  for (i = 0; i < ch->n_changes; i++) {
    rc = apply_one(db, ch->changes[i], stats);
    if (rc != 0)
      goto fail;
  }
  memset(&bf, 0, sizeof(bf));
  if (ch->backfill_scope != NULL) {
    /* A backfill page: the cursor stays where it is. */
    scope_from_pb(ch->backfill_scope, &bf.scope);
    if (ch->has_backfill_done && ch->backfill_done) {
      rc = fsc_scope_hold(db, &bf.scope);
    } else {
      bf.active = true;
      bf.after = ch->backfill_next;
    }
    if (rc == 0)
      rc = fsc_scope_set_backfill(db, &bf);
  } else {
    /* A feed page: the server has no scope left to backfill, so a stored
     * position is stale. */
    rc = meta_set_int(db, "pull_cursor", (int64_t)ch->next_cursor);
    if (rc == 0)
      rc = fsc_scope_set_backfill(db, &bf);
  }
  if (rc != 0)
    goto fail;
  return fsc_commit(db);
fail:
  fsc_rollback(db);
  return rc;
}

int fsc_store_apply(fieldsync_db *db, Fieldsync__Change *const *changes,
                    size_t n, uint64_t cursor, struct fsc_apply_stats *stats) {
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;

  ch.n_changes = n;
  ch.changes = (Fieldsync__Change **)changes;
  ch.has_next_cursor = 1;
  ch.next_cursor = cursor;
  return fsc_store_apply_changes(db, &ch, stats);
}

/* ---- payload checks and JSON ------------------------------------------- */

int fsc_check_payload(fieldsync_db *db, const struct fsp_collection *col,
                      const uint8_t id[16], const ProtobufCMessage *msg,
                      int *scope_kind, uint8_t scope_id[16]) {
  struct fsp_error err;

  if (fsp_payload_validate(msg, &db->lim, &err) != 0 ||
      fsp_payload_scope(col, id, msg, scope_kind, scope_id, &err) != 0)
    return fsc_fsperr(db, &err);
  return 0;
}

const char *fsc_wire_code_name(int code) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
      &fieldsync__error_code__descriptor, code);

  return v != NULL ? v->name : "ERR_UNKNOWN";
}

/* Formats ms since the epoch as "YYYY-MM-DDTHH:MM:SS.mmmZ" (UTC), with the
 * civil-from-days algorithm, so no OS time call is needed. */
void fsc_iso_time(int64_t ms, char *out, size_t cap) {
  int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
  int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
  int64_t rem = secs - days * 86400;
  int64_t z = days + 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t y = yoe + era * 400;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int64_t d = doy - (153 * mp + 2) / 5 + 1;
  int64_t m = mp < 10 ? mp + 3 : mp - 9;

  if (m <= 2)
    y++;
  snprintf(out, cap, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ",
           (long long)y, (long long)m, (long long)d, (long long)(rem / 3600),
           (long long)(rem / 60 % 60), (long long)(rem % 60),
           (long long)(ms - secs * 1000));
}

static json_t *version_json(const struct fsp_collection *col,
                            const struct fsc_version *v) {
  json_t *o = json_object();
  json_t *vv = json_object();
  json_t *fields = NULL;
  char hex[2 * FSP_HASH_LEN + 1];
  char when[128];
  size_t i;

  if (o == NULL || vv == NULL)
    goto fail;
  for (i = 0; i < v->vv.n; i++) {
    fsc_hex(v->vv.e[i].replica, FSP_ID_LEN, hex);
    if (json_object_set_new(vv, hex, json_integer((json_int_t)v->vv.e[i]
                                                      .counter)) != 0)
      goto fail;
  }
  if (json_object_set_new(o, "vv", vv) != 0) {
    vv = NULL;
    goto fail;
  }
  vv = NULL;
  fsc_hex(v->hash, FSP_HASH_LEN, hex);
  fsc_iso_time(v->time_ms, when, sizeof(when));
  if (!v->deleted) {
    ProtobufCMessage *msg = fsc_fields_unpack(col->desc, v->payload, v->len);
    if (msg == NULL)
      goto fail;
    fields = fsc_fields_to_json(msg);
    fsc_fields_free(msg);
  } else {
    fields = json_object();
  }
  if (fields == NULL || json_object_set_new(o, "hash", json_string(hex)) != 0 ||
      json_object_set_new(o, "deleted", json_boolean(v->deleted)) != 0 ||
      json_object_set_new(o, "author",
                          v->author != NULL ? json_string(v->author)
                                            : json_null()) != 0 ||
      json_object_set_new(o, "time", json_string(when)) != 0 ||
      json_object_set_new(o, "pending", json_boolean(v->pending > 0)) != 0 ||
      json_object_set_new(o, "refused",
                          v->refused
                              ? json_pack("{s:s, s:s}", "code",
                                          fsc_wire_code_name(v->refused_code),
                                          "reason", v->refused_reason)
                              : json_null()) != 0 ||
      json_object_set_new(o, "fields", fields) != 0)
    goto fail;
  return o;
fail:
  json_decref(vv);
  json_decref(o);
  return NULL;
}

char *fsc_record_json(const struct fsc_record *r) {
  json_t *o = json_object();
  json_t *arr = json_array();
  char hex[33];
  char *s = NULL;
  char *out = NULL;
  bool all_deleted = true;
  json_free_t jfree;
  size_t i;

  if (o == NULL || arr == NULL)
    goto done;
  fsc_hex(r->id, FSP_ID_LEN, hex);
  for (i = 0; i < r->n; i++) {
    json_t *v = version_json(r->col, &r->v[i]);
    if (v == NULL || json_array_append_new(arr, v) != 0)
      goto done;
    if (!r->v[i].deleted)
      all_deleted = false;
  }
  if (json_object_set_new(o, "collection", json_string(r->col->name)) != 0 ||
      json_object_set_new(o, "id", json_string(hex)) != 0 ||
      json_object_set_new(o, "deleted", json_boolean(all_deleted)) != 0 ||
      json_object_set_new(o, "conflict", json_boolean(r->n > 1)) != 0)
    goto done;
  if (r->reuse &&
      json_object_set_new(o, "replica_reuse", json_true()) != 0)
    goto done;
  if (json_object_set_new(o, "versions", arr) != 0) {
    arr = NULL;
    goto done;
  }
  arr = NULL;
  s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (s != NULL)
    out = fsp_strdup(s);
done:
  /* json_dumps allocates with jansson's allocator, which the application
   * may have replaced (json_set_alloc_funcs): free it with that one. */
  json_get_alloc_funcs(NULL, &jfree);
  if (s != NULL)
    jfree(s);
  json_decref(arr);
  json_decref(o);
  return out;
}
