/* SPDX-License-Identifier: MIT */
/* The collection registry and payload validation. Validation walks
 * protobuf-c's descriptors, so one code path serves every collection; the
 * few field rules that depend on meaning (ids, dates, the 1-4 judgement
 * scale) are keyed by field name here, in one table-like place. */
#include "fsp_payload.h"

#include <stdio.h>
#include <string.h>

#include "fieldsync.pb-c.h"

#define SVC FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE
#define VIS FIELDSYNC__SCOPE_KIND__SCOPE_VISIT

static const struct fsp_collection collections[] = {
    {FIELDSYNC__COLLECTION__COLLECTION_SERVICE, "service",
     &fieldsync__service__descriptor, SVC, NULL, NULL, NULL},
    {FIELDSYNC__COLLECTION__COLLECTION_VISIT, "visit",
     &fieldsync__visit__descriptor, VIS, NULL, "lead_inspector", "service_id"},
    {FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION, "observation",
     &fieldsync__observation__descriptor, VIS, "visit_id", "assessor", NULL},
    {FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE, "interview_note",
     &fieldsync__interview_note__descriptor, VIS, "visit_id", "expert", NULL},
    {FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT, "requirement",
     &fieldsync__requirement__descriptor, SVC, "service_id", "owner", NULL},
    {FIELDSYNC__COLLECTION__COLLECTION_RECOMMENDATION, "recommendation",
     &fieldsync__recommendation__descriptor, SVC, "service_id", NULL, NULL},
    {FIELDSYNC__COLLECTION__COLLECTION_CONCERN, "concern",
     &fieldsync__concern__descriptor, SVC, "service_id", NULL, NULL},
    {FIELDSYNC__COLLECTION__COLLECTION_ATTACHMENT, "attachment",
     &fieldsync__attachment__descriptor, VIS, "visit_id", "captured_by", NULL},
};

#define NCOLL (sizeof(collections) / sizeof(collections[0]))

const struct fsp_collection *fsp_payload_collections(size_t *n) {
  *n = NCOLL;
  return collections;
}

const struct fsp_collection *fsp_payload_by_id(int id) {
  size_t i;

  for (i = 0; i < NCOLL; i++)
    if (collections[i].id == id)
      return &collections[i];
  return NULL;
}

const struct fsp_collection *fsp_payload_by_name(const char *name) {
  size_t i;

  for (i = 0; i < NCOLL; i++)
    if (strcmp(collections[i].name, name) == 0)
      return &collections[i];
  return NULL;
}

/* ---- value rules keyed by field name -----------------------------------*/

enum str_kind { STR_TEXT, STR_DATE, STR_TIME };

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s);
  size_t b = strlen(suffix);

  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static enum str_kind string_kind(const char *field) {
  if (ends_with(field, "_date") || ends_with(field, "_due") ||
      strcmp(field, "as_of") == 0)
    return STR_DATE;
  if (ends_with(field, "_at"))
    return STR_TIME;
  return STR_TEXT;
}

/* Exact byte length a bytes field must have, or 0 for "any". */
static size_t bytes_len(const char *field) {
  if (strcmp(field, "sha256") == 0)
    return 32;
  if (ends_with(field, "_id"))
    return 16;
  return 0;
}

static bool digits(const char *s, size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    if (s[i] < '0' || s[i] > '9')
      return false;
  return true;
}

static int num(const char *s, size_t n) {
  int v = 0;
  size_t i;

  for (i = 0; i < n; i++)
    v = v * 10 + (s[i] - '0');
  return v;
}

/* "YYYY-MM-DD" at the start of s, with a real month and day (leap years
 * included). valid_date() wants nothing after it. */
static bool date_prefix(const char *s) {
  static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  int y;
  int m;
  int d;

  if (!digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
      !digits(s + 8, 2))
    return false;
  y = num(s, 4);
  m = num(s + 5, 2);
  d = num(s + 8, 2);
  if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
    return false;
  if (m == 2 && d == 29 && !(y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
    return false;
  return true;
}

static bool valid_date(const char *s) {
  return strlen(s) == 10 && date_prefix(s);
}

/* A date, or "YYYY-MM-DDTHH:MM", optionally ":SS", optionally "Z". */
static bool valid_time(const char *s) {
  size_t n = strlen(s);

  if (n < 10 || !date_prefix(s))
    return false;
  if (n == 10)
    return true;
  s += 10;
  n -= 10;
  if (n > 0 && s[n - 1] == 'Z')
    n--;
  if (n != 6 && n != 9)
    return false;
  if (s[0] != 'T' || !digits(s + 1, 2) || s[3] != ':' || !digits(s + 4, 2) ||
      num(s + 1, 2) > 23 || num(s + 4, 2) > 59)
    return false;
  if (n == 9 && (s[6] != ':' || !digits(s + 7, 2) || num(s + 7, 2) > 60))
    return false;
  return true;
}

static int check_message(const ProtobufCMessage *msg, const char *path,
                         const struct fsp_limits *lim, struct fsp_error *err);

/* Checks one value of field f; v points at it inside the message (or the
 * repeated array). */
static int check_value(const ProtobufCFieldDescriptor *f, const void *v,
                       const char *path, const struct fsp_limits *lim,
                       struct fsp_error *err) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    {
      const char *s = *(char *const *)v;
      size_t n;
      enum str_kind kind = string_kind(f->name);

      if (s == NULL)
        return 0;
      n = strlen(s);
      if (n > lim->max_payload)
        return fsp_error_set(err, FSP_ETOO_LONG, "%s: %zu bytes", path, n);
      if (!fsp_msg_utf8_valid(s, n))
        return fsp_error_set(err, FSP_EBAD_VALUE, "%s: not valid UTF-8",
                             path);
      if (kind == STR_DATE && !valid_date(s))
        return fsp_error_set(err, FSP_EBAD_VALUE,
                             "%s: \"%.40s\" is not a YYYY-MM-DD date", path,
                             s);
      if (kind == STR_TIME && !valid_time(s))
        return fsp_error_set(err, FSP_EBAD_VALUE,
                             "%s: \"%.40s\" is not YYYY-MM-DD[THH:MM[:SS]]",
                             path, s);
      return 0;
    }
  case PROTOBUF_C_TYPE_BYTES:
    {
      const ProtobufCBinaryData *b = v;
      size_t want = bytes_len(f->name);

      if (want != 0 && b->len != want)
        return fsp_error_set(err, want == 16 ? FSP_EBAD_ID : FSP_EBAD_VALUE,
                             "%s: %zu bytes, want %zu", path, b->len, want);
      return 0;
    }
  case PROTOBUF_C_TYPE_ENUM:
    {
      int e = *(const int *)v;
      const ProtobufCEnumDescriptor *d = f->descriptor;

      if (e == 0 || protobuf_c_enum_descriptor_get_value(d, e) == NULL)
        return fsp_error_set(err, FSP_EBAD_ENUM, "%s: %d is not a %s value",
                             path, e, d->short_name);
      return 0;
    }
  case PROTOBUF_C_TYPE_UINT32:
    {
      uint32_t u = *(const uint32_t *)v;

      if (strcmp(f->name, "judgement") == 0 && (u < 1 || u > 4))
        return fsp_error_set(err, FSP_EBAD_VALUE,
                             "%s: %u is not on the 1-4 scale", path, u);
      if (strcmp(f->name, "rating_stars") == 0 && u > 3)
        return fsp_error_set(err, FSP_EBAD_VALUE, "%s: %u stars, max 3", path,
                             u);
      return 0;
    }
  case PROTOBUF_C_TYPE_MESSAGE:
    {
      const ProtobufCMessage *sub = *(ProtobufCMessage *const *)v;

      return sub == NULL ? 0 : check_message(sub, path, lim, err);
    }
  default:
    return 0;
  }
}

/* True when an optional field is present. */
static bool present(const ProtobufCMessage *msg,
                    const ProtobufCFieldDescriptor *f) {
  const char *base = (const char *)msg;

  if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
    return *(const void *const *)(base + f->offset) != NULL;
  if (f->quantifier_offset == 0)
    return true;
  return *(const protobuf_c_boolean *)(base + f->quantifier_offset) != 0;
}

static size_t elem_size(const ProtobufCFieldDescriptor *f) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(void *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_FIXED64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_DOUBLE:
    return 8;
  default:
    return 4;
  }
}

static int check_message(const ProtobufCMessage *msg, const char *path,
                         const struct fsp_limits *lim, struct fsp_error *err) {
  const ProtobufCMessageDescriptor *d = msg->descriptor;
  const char *base = (const char *)msg;
  char p[160];
  unsigned i;
  int rc;

  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];

    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      size_t n = *(const size_t *)(base + f->quantifier_offset);
      const char *arr = *(char *const *)(base + f->offset);
      size_t j;

      if (n > lim->max_batch)
        return fsp_error_set(err, FSP_ETOO_MANY, "%s.%s: %zu entries, limit %u",
                             path, f->name, n, lim->max_batch);
      for (j = 0; j < n; j++) {
        snprintf(p, sizeof(p), "%s.%s[%zu]", path, f->name, j);
        rc = check_value(f, arr + j * elem_size(f), p, lim, err);
        if (rc != 0)
          return rc;
      }
    } else if (present(msg, f)) {
      snprintf(p, sizeof(p), "%s.%s", path, f->name);
      rc = check_value(f, base + f->offset, p, lim, err);
      if (rc != 0)
        return rc;
    }
  }
  return 0;
}

int fsp_payload_validate(const ProtobufCMessage *msg,
                         const struct fsp_limits *lim, struct fsp_error *err) {
  const char *name = msg->descriptor->short_name;
  size_t i;

  for (i = 0; i < NCOLL; i++)
    if (collections[i].desc == msg->descriptor)
      name = collections[i].name;
  return check_message(msg, name, lim, err);
}

int fsp_payload_decode(const struct fsp_collection *col, const uint8_t *payload,
                       size_t len, const struct fsp_limits *lim,
                       struct fsp_budget *budget, ProtobufCMessage **out,
                       struct fsp_error *err) {
  ProtobufCMessage *msg;
  int rc;

  if (out != NULL)
    *out = NULL;
  fsp_budget_init(budget, lim->budget);
  if (len > lim->max_payload)
    return fsp_error_set(err, FSP_ETOO_LONG, "%s payload: %zu bytes, limit %u",
                         col->name, len, lim->max_payload);
  msg = protobuf_c_message_unpack(col->desc, &budget->pc, len, payload);
  if (msg == NULL) {
    if (budget->nomem)
      return fsp_error_set(err, FSP_ENOMEM, "%s payload: out of memory",
                           col->name);
    if (budget->exceeded)
      return fsp_error_set(err, FSP_EBUDGET,
                           "%s payload: needs more than %zu bytes to decode",
                           col->name, lim->budget);
    return fsp_error_set(err, FSP_EBAD_PAYLOAD,
                         "payload does not decode as a %s", col->name);
  }
  rc = check_message(msg, col->name, lim, err);
  if (rc != 0 || out == NULL) {
    protobuf_c_message_free_unpacked(msg, &budget->pc);
    return rc;
  }
  *out = msg;
  return 0;
}

void fsp_payload_free(ProtobufCMessage *msg, struct fsp_budget *budget) {
  if (msg != NULL)
    protobuf_c_message_free_unpacked(msg, &budget->pc);
}

int fsp_payload_scope(const struct fsp_collection *col,
                      const uint8_t record_id[16], const ProtobufCMessage *msg,
                      int *kind, uint8_t scope_id[16], struct fsp_error *err) {
  const ProtobufCFieldDescriptor *f;
  const ProtobufCBinaryData *b;

  *kind = col->scope_kind;
  if (col->scope_field == NULL) {
    memcpy(scope_id, record_id, 16);
    return 0;
  }
  f = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor,
                                                      col->scope_field);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_BYTES || !present(msg, f))
    return fsp_error_set(err, FSP_EBAD_SCOPE, "%s.%s: missing (it sets the "
                         "record's scope)", col->name, col->scope_field);
  b = (const ProtobufCBinaryData *)((const char *)msg + f->offset);
  if (b->len != 16)
    return fsp_error_set(err, FSP_EBAD_SCOPE, "%s.%s: %zu bytes, want 16",
                         col->name, col->scope_field, b->len);
  memcpy(scope_id, b->data, 16);
  return 0;
}

const char *fsp_payload_owner(const struct fsp_collection *col,
                              const ProtobufCMessage *msg) {
  const ProtobufCFieldDescriptor *f;
  const char *v;

  if (col->owner_field == NULL || msg == NULL)
    return "";
  f = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor,
                                                      col->owner_field);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_STRING ||
      f->label == PROTOBUF_C_LABEL_REPEATED)
    return "";
  v = *(const char *const *)((const char *)msg + f->offset);
  return v != NULL ? v : "";
}

bool fsp_payload_service(const struct fsp_collection *col,
                         const ProtobufCMessage *msg, uint8_t service_id[16]) {
  const ProtobufCFieldDescriptor *f;
  const ProtobufCBinaryData *b;

  if (col->service_field == NULL || msg == NULL)
    return false;
  f = protobuf_c_message_descriptor_get_field_by_name(msg->descriptor,
                                                      col->service_field);
  if (f == NULL || f->type != PROTOBUF_C_TYPE_BYTES || !present(msg, f))
    return false;
  b = (const ProtobufCBinaryData *)((const char *)msg + f->offset);
  if (b->len != 16)
    return false;
  memcpy(service_id, b->data, 16);
  return true;
}
