/* SPDX-License-Identifier: MIT */
/* The public record API: drafts (typed content built from text), create,
 * edit, delete and conflict resolution. Every write is one transaction and
 * makes one new version that dominates all the record's current versions. */
#include <string.h>

#include "fsc_fields.h"
#include "fsc_int.h"

enum draft_kind { DRAFT_NEW, DRAFT_EDIT, DRAFT_RESOLVE };

/* Compares n bytes of two hex strings, ignoring case (strncasecmp is not
 * C11 and depends on the locale). */
static int strncasecmp_ascii(const char *a, const char *b, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? (char)(a[i] + 32) : a[i];
    char y = b[i] >= 'A' && b[i] <= 'Z' ? (char)(b[i] + 32) : b[i];
    if (x != y || x == '\0')
      return x - y;
  }
  return 0;
}

struct fieldsync_draft {
  fieldsync_db *db;
  const struct fsp_collection *col;
  enum draft_kind kind;
  uint8_t id[FSP_ID_LEN];   /* the record, for edits and resolutions */
  ProtobufCMessage *msg;    /* the content (fsc_fields_allocator) */
  uint64_t touched;         /* repeated fields already replaced (bit = index) */
};

static int draft_alloc(fieldsync_db *db, const struct fsp_collection *col,
                       enum draft_kind kind, fieldsync_draft **out) {
  fieldsync_draft *d = fsp_calloc(1, sizeof(*d));

  if (d == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  d->db = db;
  d->col = col;
  d->kind = kind;
  *out = d;
  return 0;
}

int fieldsync_draft_new(fieldsync_db *db, const char *collection,
                        fieldsync_draft **out) {
  const struct fsp_collection *col;
  fieldsync_draft *d = NULL;
  int rc;

  if (db == NULL || out == NULL)
    return FIELDSYNC_EINVAL;
  *out = NULL;
  col = collection != NULL ? fsp_payload_by_name(collection) : NULL;
  if (col == NULL)
    return fsc_err(db, FIELDSYNC_ECOLLECTION,
                   "unknown collection \"%.40s\"",
                   collection != NULL ? collection : "(null)");
  rc = draft_alloc(db, col, DRAFT_NEW, &d);
  if (rc != 0)
    return rc;
  d->msg = fsc_fields_new(col->desc);
  if (d->msg == NULL) {
    fieldsync_draft_free(d);
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  }
  *out = d;
  return 0;
}

/* A draft of record id's display winner, for an edit or a resolution. */
static int draft_from_record(fieldsync_db *db, const char *id,
                             enum draft_kind kind, fieldsync_draft **out) {
  struct fsc_record r;
  fieldsync_draft *d = NULL;
  uint8_t rid[FSP_ID_LEN];
  int rc;

  if (db == NULL || out == NULL)
    return FIELDSYNC_EINVAL;
  *out = NULL;
  rc = fsc_parse_id(db, id, rid);
  if (rc == 0)
    rc = fsc_store_load(db, rid, &r);
  if (rc != 0)
    return rc;
  if (kind == DRAFT_EDIT && r.n > 1) {
    rc = fsc_err(db, FIELDSYNC_ECONFLICT,
                 "record %s has %zu conflicting versions; resolve it first",
                 id, r.n);
    goto done;
  }
  if (kind == DRAFT_RESOLVE && r.n < 2) {
    rc = fsc_err(db, FIELDSYNC_EINVAL, "record %s is not in conflict", id);
    goto done;
  }
  if (kind == DRAFT_EDIT && r.v[0].deleted) {
    rc = fsc_err(db, FIELDSYNC_EDELETED, "record %s is deleted", id);
    goto done;
  }
  /* Live versions sort first: a deleted winner means all are deletions,
   * and there is no content to start a resolution from. */
  if (kind == DRAFT_RESOLVE && r.v[0].deleted) {
    rc = fsc_err(db, FIELDSYNC_EDELETED,
                 "every version of record %s is a deletion; keep one "
                 "(resolve --keep) or delete the record",
                 id);
    goto done;
  }
  rc = draft_alloc(db, r.col, kind, &d);
  if (rc != 0)
    goto done;
  memcpy(d->id, rid, FSP_ID_LEN);
  if (r.v[0].deleted) {
    d->msg = fsc_fields_new(r.col->desc);
    rc = d->msg != NULL ? 0 : FIELDSYNC_ENOMEM;
  } else {
    rc = fsc_fields_decode(r.col->desc, r.v[0].payload, r.v[0].len, &d->msg);
  }
  if (rc != 0) {
    rc = rc == FIELDSYNC_ENOMEM
             ? fsc_err(db, rc, "out of memory")
             : fsc_err(db, rc, "stored content of %s does not decode", id);
    goto done;
  }
  *out = d;
  d = NULL;
done:
  fieldsync_draft_free(d);
  fsc_record_close(&r);
  return rc;
}

int fieldsync_draft_for_edit(fieldsync_db *db, const char *id,
                             fieldsync_draft **out) {
  return draft_from_record(db, id, DRAFT_EDIT, out);
}

int fieldsync_draft_for_resolve(fieldsync_db *db, const char *id,
                                fieldsync_draft **out) {
  return draft_from_record(db, id, DRAFT_RESOLVE, out);
}

/* Index of field in the draft's message, or -1. */
static int field_index(const fieldsync_draft *d, const char *field) {
  const ProtobufCFieldDescriptor *f;

  f = protobuf_c_message_descriptor_get_field_by_name(d->col->desc, field);
  return f == NULL ? -1 : (int)(f - d->col->desc->fields);
}

int fieldsync_draft_set(fieldsync_draft *d, const char *field,
                        const char *text) {
  char err[256];
  bool replace = false;
  int idx;
  int rc;

  if (d == NULL || field == NULL || text == NULL)
    return FIELDSYNC_EINVAL;
  idx = field_index(d, field);
  /* In a draft made from a stored record, the first value given for a
   * repeated field replaces the stored list; later ones append. */
  if (idx >= 0 && idx < 64 && d->kind != DRAFT_NEW &&
      !(d->touched & (1ull << idx))) {
    replace = true;
    d->touched |= 1ull << idx;
  }
  rc = fsc_fields_set(d->msg, field, text, replace, err, sizeof(err));
  if (rc != 0)
    return fsc_err(d->db, rc, "%s", err);
  return 0;
}

int fieldsync_draft_clear(fieldsync_draft *d, const char *field) {
  char err[256];
  int rc;

  if (d == NULL || field == NULL)
    return FIELDSYNC_EINVAL;
  rc = fsc_fields_clear(d->msg, field, err, sizeof(err));
  if (rc != 0)
    return fsc_err(d->db, rc, "%s", err);
  return 0;
}

void fieldsync_draft_free(fieldsync_draft *d) {
  if (d == NULL)
    return;
  fsc_fields_free(d->msg);
  fsp_free(d);
}

int fsc_record_write(fieldsync_db *db, const struct fsp_collection *col,
                     const ProtobufCMessage *msg, struct fsc_record *r) {
  uint8_t *payload = NULL;
  size_t len = 0;
  int rc;

  rc = fsc_check_payload(db, col, r->id, msg, &r->scope_kind, r->scope_id);
  if (rc != 0)
    return rc;
  if (fsc_fields_pack(msg, &payload, &len) != 0)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  if (len > db->lim.max_payload) {
    fsp_free(payload);
    return fsc_err(db, FIELDSYNC_EVALUE, "%s is %zu bytes; the limit is %u",
                   col->name, len, db->lim.max_payload);
  }
  rc = fsc_store_put_local(db, r, false, payload, len);
  fsp_free(payload);
  return rc;
}

int fieldsync_create(fieldsync_db *db, const fieldsync_draft *d,
                     char id_out[33]) {
  struct fsc_record r;
  int rc;

  if (db == NULL || d == NULL || d->db != db || d->kind != DRAFT_NEW)
    return db != NULL ? fsc_err(db, FIELDSYNC_EINVAL,
                                "fieldsync_create needs a new draft")
                      : FIELDSYNC_EINVAL;
  memset(&r, 0, sizeof(r));
  r.col = d->col;
  rc = fsc_new_id(db, r.id);
  if (rc != 0)
    return rc;
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = fsc_record_write(db, d->col, d->msg, &r);
  if (rc == 0)
    rc = fsc_commit(db);
  else
    fsc_rollback(db);
  if (rc == 0 && id_out != NULL)
    fsc_hex(r.id, FSP_ID_LEN, id_out);
  fsc_record_close(&r);
  return rc;
}

/* Loads the record of a stored-record draft inside a transaction and checks
 * that it is still in the state the draft expects. */
static int reload(fieldsync_db *db, const fieldsync_draft *d,
                  struct fsc_record *r) {
  char hex[33];
  int rc = fsc_store_load(db, d->id, r);

  if (rc != 0)
    return rc;
  fsc_hex(d->id, FSP_ID_LEN, hex);
  if (d->kind == DRAFT_EDIT && r->n > 1)
    return fsc_err(db, FIELDSYNC_ECONFLICT,
                   "record %s is now in conflict; resolve it first", hex);
  if (d->kind == DRAFT_EDIT && r->v[0].deleted)
    return fsc_err(db, FIELDSYNC_EDELETED, "record %s is deleted", hex);
  return 0;
}

int fieldsync_edit(fieldsync_db *db, const fieldsync_draft *d) {
  struct fsc_record r;
  int rc;

  if (db == NULL || d == NULL || d->db != db || d->kind != DRAFT_EDIT)
    return db != NULL ? fsc_err(db, FIELDSYNC_EINVAL,
                                "fieldsync_edit needs a draft from "
                                "fieldsync_draft_for_edit")
                      : FIELDSYNC_EINVAL;
  memset(&r, 0, sizeof(r));
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = reload(db, d, &r);
  if (rc == 0)
    rc = fsc_record_write(db, d->col, d->msg, &r);
  if (rc == 0)
    rc = fsc_commit(db);
  else
    fsc_rollback(db);
  fsc_record_close(&r);
  return rc;
}

int fieldsync_delete(fieldsync_db *db, const char *id) {
  struct fsc_record r;
  uint8_t rid[FSP_ID_LEN];
  int rc;

  if (db == NULL)
    return FIELDSYNC_EINVAL;
  memset(&r, 0, sizeof(r));
  rc = fsc_parse_id(db, id, rid);
  if (rc != 0)
    return rc;
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = fsc_store_load(db, rid, &r);
  if (rc == 0 && r.n == 1 && r.v[0].deleted)
    rc = fsc_err(db, FIELDSYNC_EDELETED, "record %s is already deleted", id);
  if (rc == 0)
    rc = fsc_store_put_local(db, &r, true, NULL, 0);
  if (rc == 0)
    rc = fsc_commit(db);
  else
    fsc_rollback(db);
  fsc_record_close(&r);
  return rc;
}

int fieldsync_resolve_keep(fieldsync_db *db, const char *id,
                           const char *hash_prefix) {
  struct fsc_record r;
  uint8_t rid[FSP_ID_LEN];
  char hex[2 * FSP_HASH_LEN + 1];
  size_t plen;
  size_t i;
  size_t match = 0;
  size_t found = 0;
  uint8_t *payload = NULL;
  int rc;

  if (db == NULL)
    return FIELDSYNC_EINVAL;
  memset(&r, 0, sizeof(r));
  rc = fsc_parse_id(db, id, rid);
  if (rc != 0)
    return rc;
  plen = hash_prefix != NULL ? strlen(hash_prefix) : 0;
  if (plen < 8 || plen > 2 * FSP_HASH_LEN)
    return fsc_err(db, FIELDSYNC_EINVAL,
                   "give at least 8 hex digits of the version's hash");
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = fsc_store_load(db, rid, &r);
  if (rc != 0)
    goto fail;
  if (r.n < 2) {
    rc = fsc_err(db, FIELDSYNC_EINVAL, "record %s is not in conflict", id);
    goto fail;
  }
  /* Versions with identical content (same hash) count once: keeping
   * either gives the same record. */
  for (i = 0; i < r.n; i++) {
    fsc_hex(r.v[i].hash, FSP_HASH_LEN, hex);
    if (strncasecmp_ascii(hex, hash_prefix, plen) == 0) {
      if (match == 0 ||
          memcmp(r.v[found].hash, r.v[i].hash, FSP_HASH_LEN) != 0)
        match++;
      found = i;
    }
  }
  if (match != 1) {
    rc = match == 0 ? fsc_err(db, FIELDSYNC_ENOTFOUND,
                              "record %s has no version %s", id, hash_prefix)
                    : fsc_err(db, FIELDSYNC_EINVAL,
                              "hash prefix %s is ambiguous", hash_prefix);
    goto fail;
  }
  if (r.v[found].len > 0) {
    payload = fsp_malloc(r.v[found].len);
    if (payload == NULL) {
      rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
      goto fail;
    }
    memcpy(payload, r.v[found].payload, r.v[found].len);
  }
  rc = fsc_store_put_local(db, &r, r.v[found].deleted, payload,
                           r.v[found].len);
  if (rc != 0)
    goto fail;
  fsp_free(payload);
  fsc_record_close(&r);
  return fsc_commit(db);
fail:
  fsp_free(payload);
  fsc_rollback(db);
  fsc_record_close(&r);
  return rc;
}

int fieldsync_resolve_with(fieldsync_db *db, const char *id,
                           const fieldsync_draft *d) {
  struct fsc_record r;
  uint8_t rid[FSP_ID_LEN];
  int rc;

  if (db == NULL || d == NULL || d->db != db)
    return FIELDSYNC_EINVAL;
  memset(&r, 0, sizeof(r));
  rc = fsc_parse_id(db, id, rid);
  if (rc != 0)
    return rc;
  rc = fsc_begin(db);
  if (rc != 0)
    return rc;
  rc = fsc_store_load(db, rid, &r);
  if (rc == 0 && r.n < 2)
    rc = fsc_err(db, FIELDSYNC_EINVAL, "record %s is not in conflict", id);
  if (rc == 0 && r.col != d->col)
    rc = fsc_err(db, FIELDSYNC_EINVAL, "record %s is a %s, not a %s", id,
                 r.col->name, d->col->name);
  if (rc == 0)
    rc = fsc_record_write(db, d->col, d->msg, &r);
  if (rc == 0)
    rc = fsc_commit(db);
  else
    fsc_rollback(db);
  fsc_record_close(&r);
  return rc;
}
