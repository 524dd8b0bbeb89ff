/* SPDX-License-Identifier: MIT */
/* Text and JSON conversion for protobuf-c messages, driven only by their
 * descriptors: one parser and one printer per field type, so every
 * collection gets FIELD=VALUE editing, JSON and CSV output for free. */
#include "fsc_fields.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fieldsync.h"
#include "fsp_alloc.h"
#include "fsp_msg.h"

/* Longest dotted path ("service.council_placements[3].council") we keep
 * for error messages; longer ones are cut, which only shortens the text. */
#define WHERE_MAX 160
/* Most bytes of a bad value quoted back in an error message. */
#define QUOTE_MAX 40
/* Most bytes of the list of allowed enum names in an error message. */
#define ENUM_LIST_MAX 160
/* Nesting limit for message fields given as JSON. The schema has no
 * recursive message, so this only stops hostile or broken input. */
#define MAX_DEPTH 16

/* One parsed value of any field type, owned until it is stored in a
 * message. Every member starts at offset 0, so memcpy of elt_size(f)
 * bytes moves the member that matches f->type. */
union slot {
  int32_t i32;
  int64_t i64;
  uint32_t u32;
  uint64_t u64;
  float f32;
  double f64;
  protobuf_c_boolean b;
  char *s;
  ProtobufCBinaryData bd;
  ProtobufCMessage *m;
};

static void *pc_alloc(void *data, size_t size) {
  (void)data;
  return fsp_malloc(size);
}

static void pc_free(void *data, void *p) {
  (void)data;
  fsp_free(p);
}

ProtobufCAllocator fsc_fields_allocator = {pc_alloc, pc_free, NULL};

/* ---- small helpers ------------------------------------------------------*/

static void seterr(char *err, size_t cap, const char *fmt, ...) {
  va_list ap;

  if (err == NULL || cap == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
}

/* Copies s for quoting in an error message: printable ASCII only (others
 * become '?'), so the message stays one line of valid UTF-8, and at most
 * QUOTE_MAX bytes, with "..." when cut. Returns buf. */
static const char *quote(char *buf, size_t cap, const char *s) {
  size_t i;
  size_t o = 0;

  assert(cap > QUOTE_MAX + 3);
  (void)cap;
  for (i = 0; s[i] != '\0'; i++) {
    unsigned char c = (unsigned char)s[i];

    if (i == QUOTE_MAX) {
      memcpy(buf + o, "...", 3);
      o += 3;
      break;
    }
    buf[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
  }
  buf[o] = '\0';
  return buf;
}

static int lower(int c) {
  return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c;
}

/* ASCII case-insensitive equality (strcasecmp is POSIX, not C11). */
static bool eq_nocase(const char *a, const char *b) {
  while (*a != '\0' && lower((unsigned char)*a) == lower((unsigned char)*b)) {
    a++;
    b++;
  }
  return *a == '\0' && *b == '\0';
}

/* "InterviewNote" -> "interview_note": the name the registry and the
 * CLI use for a message type. */
static void snake_name(char *buf, size_t cap, const char *camel) {
  size_t o = 0;
  size_t i;

  for (i = 0; camel[i] != '\0' && o + 2 < cap; i++) {
    char c = camel[i];

    if (c >= 'A' && c <= 'Z') {
      if (i > 0)
        buf[o++] = '_';
      c = (char)lower(c);
    }
    buf[o++] = c;
  }
  buf[o] = '\0';
}

static const char *json_kind(const json_t *j) {
  switch (json_typeof(j)) {
  case JSON_OBJECT:
    return "a JSON object";
  case JSON_ARRAY:
    return "a JSON array";
  case JSON_STRING:
    return "a JSON string";
  case JSON_INTEGER:
  case JSON_REAL:
    return "a JSON number";
  case JSON_TRUE:
  case JSON_FALSE:
    return "a JSON boolean";
  case JSON_NULL:
    return "null";
  }
  return "a JSON value";
}

/* ---- field layout -------------------------------------------------------*/

static size_t elt_size(const ProtobufCFieldDescriptor *f) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
  case PROTOBUF_C_TYPE_SINT32:
  case PROTOBUF_C_TYPE_SFIXED32:
  case PROTOBUF_C_TYPE_UINT32:
  case PROTOBUF_C_TYPE_FIXED32:
  case PROTOBUF_C_TYPE_ENUM:
    return sizeof(int32_t);
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return sizeof(int64_t);
  case PROTOBUF_C_TYPE_FLOAT:
    return sizeof(float);
  case PROTOBUF_C_TYPE_DOUBLE:
    return sizeof(double);
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  case PROTOBUF_C_TYPE_STRING:
    return sizeof(char *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(ProtobufCMessage *);
  }
  assert(false); /* not a protobuf-c field type */
  return 0;
}

static bool is_repeated(const ProtobufCFieldDescriptor *f) {
  return f->label == PROTOBUF_C_LABEL_REPEATED;
}

static bool is_oneof(const ProtobufCFieldDescriptor *f) {
  return (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
}

/* The has_* flag of a proto2 optional scalar or bytes field; NULL for
 * fields whose presence is a pointer, a count, a oneof case or implicit. */
static protobuf_c_boolean *has_flag(ProtobufCMessage *m,
                                    const ProtobufCFieldDescriptor *f) {
  if (f->label != PROTOBUF_C_LABEL_OPTIONAL || is_oneof(f) ||
      f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE)
    return NULL;
  return (protobuf_c_boolean *)((char *)m + f->quantifier_offset);
}

static size_t rep_count(const ProtobufCMessage *m,
                        const ProtobufCFieldDescriptor *f) {
  size_t n;

  memcpy(&n, (const char *)m + f->quantifier_offset, sizeof(n));
  return n;
}

static char *rep_array(const ProtobufCMessage *m,
                       const ProtobufCFieldDescriptor *f) {
  char *arr;

  memcpy(&arr, (const char *)m + f->offset, sizeof(arr));
  return arr;
}

static uint32_t oneof_case(const ProtobufCMessage *m,
                           const ProtobufCFieldDescriptor *f) {
  uint32_t c;

  memcpy(&c, (const char *)m + f->quantifier_offset, sizeof(c));
  return c;
}

/* True when a single (not repeated) field is present, with protobuf-c's
 * own rules: a pointer that is neither NULL nor the default, a has_*
 * flag, a oneof case, or (proto3 fields without presence) a non-zero
 * value. */
static bool single_present(const ProtobufCMessage *m,
                           const ProtobufCFieldDescriptor *f) {
  const char *p = (const char *)m + f->offset;
  protobuf_c_boolean *has;

  if (is_oneof(f))
    return oneof_case(m, f) == f->id;
  if (f->type == PROTOBUF_C_TYPE_STRING) {
    const char *s;

    memcpy(&s, p, sizeof(s));
    if (s == NULL)
      return false;
    if (f->label == PROTOBUF_C_LABEL_NONE)
      return s[0] != '\0';
    return f->label == PROTOBUF_C_LABEL_REQUIRED || s != f->default_value;
  }
  if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
    const void *sm;

    memcpy(&sm, p, sizeof(sm));
    return sm != NULL;
  }
  has = has_flag((ProtobufCMessage *)m, f);
  if (has != NULL)
    return *has != 0;
  if (f->label == PROTOBUF_C_LABEL_NONE) {
    if (f->type == PROTOBUF_C_TYPE_BYTES) {
      ProtobufCBinaryData bd;

      memcpy(&bd, p, sizeof(bd));
      return bd.len > 0;
    } else {
      static const unsigned char zero[sizeof(double)];

      return memcmp(p, zero, elt_size(f)) != 0;
    }
  }
  return true; /* required */
}

static bool field_present(const ProtobufCMessage *m,
                          const ProtobufCFieldDescriptor *f) {
  if (is_repeated(f))
    return rep_count(m, f) > 0;
  return single_present(m, f);
}

/* Frees what a stored value at p owns (string, bytes data, sub-message),
 * skipping the field's default, exactly as free_unpacked would. */
static void elem_free(const ProtobufCFieldDescriptor *f, const void *p) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING: {
    char *s;

    memcpy(&s, p, sizeof(s));
    if (s != NULL && s != f->default_value)
      fsp_free(s);
    break;
  }
  case PROTOBUF_C_TYPE_BYTES: {
    ProtobufCBinaryData bd;
    const ProtobufCBinaryData *def = f->default_value;

    memcpy(&bd, p, sizeof(bd));
    if (bd.data != NULL && (def == NULL || def->data != bd.data))
      fsp_free(bd.data);
    break;
  }
  case PROTOBUF_C_TYPE_MESSAGE: {
    ProtobufCMessage *sm;

    memcpy(&sm, p, sizeof(sm));
    if (sm != NULL && (const void *)sm != f->default_value)
      protobuf_c_message_free_unpacked(sm, &fsc_fields_allocator);
    break;
  }
  default:
    break;
  }
}

/* Frees n stored values of f at arr, then arr. */
static void array_free(const ProtobufCFieldDescriptor *f, char *arr, size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    elem_free(f, arr + i * elt_size(f));
  fsp_free(arr);
}

/* Makes f absent: frees what it owns and puts back the state
 * protobuf_c_message_init leaves (the default, has_* 0, no oneof case). */
static void field_clear(ProtobufCMessage *m,
                        const ProtobufCFieldDescriptor *f) {
  char *p = (char *)m + f->offset;
  size_t size = elt_size(f);
  protobuf_c_boolean *has;

  if (is_repeated(f)) {
    char *arr = rep_array(m, f);
    size_t zero = 0;

    if (arr != NULL)
      array_free(f, arr, rep_count(m, f));
    arr = NULL;
    memcpy(p, &arr, sizeof(arr));
    memcpy((char *)m + f->quantifier_offset, &zero, sizeof(zero));
    return;
  }
  if (is_oneof(f)) {
    uint32_t none = 0;

    /* The storage is shared with the other members of the oneof. */
    if (oneof_case(m, f) != f->id)
      return;
    elem_free(f, p);
    memset(p, 0, size);
    memcpy((char *)m + f->quantifier_offset, &none, sizeof(none));
    return;
  }
  elem_free(f, p);
  if (f->type == PROTOBUF_C_TYPE_STRING) {
    const void *def = f->default_value;

    memcpy(p, &def, sizeof(def));
  } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
    const ProtobufCBinaryData *def = f->default_value;
    ProtobufCBinaryData bd = {0, NULL};

    if (def != NULL)
      bd = *def;
    memcpy(p, &bd, sizeof(bd));
  } else if (f->type != PROTOBUF_C_TYPE_MESSAGE && f->default_value != NULL) {
    memcpy(p, f->default_value, size);
  } else {
    memset(p, 0, size);
  }
  has = has_flag(m, f);
  if (has != NULL)
    *has = 0;
}

/* Stores v in a single field, freeing the old value (or the oneof
 * sibling that was set). Takes ownership of v; cannot fail. */
static void store_single(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                         union slot *v) {
  protobuf_c_boolean *has;

  if (is_oneof(f)) {
    uint32_t c = oneof_case(m, f);

    if (c != 0 && c != f->id) {
      const ProtobufCFieldDescriptor *other =
          protobuf_c_message_descriptor_get_field(m->descriptor, c);

      if (other != NULL)
        field_clear(m, other);
    }
    field_clear(m, f);
    memcpy((char *)m + f->quantifier_offset, &f->id, sizeof(f->id));
  } else {
    field_clear(m, f);
  }
  memcpy((char *)m + f->offset, v, elt_size(f));
  has = has_flag(m, f);
  if (has != NULL)
    *has = 1;
}

/* Replaces the repeated field's list by arr (n values), freeing the old
 * one. Takes ownership of arr. */
static void store_array(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                        char *arr, size_t n) {
  field_clear(m, f);
  memcpy((char *)m + f->offset, &arr, sizeof(arr));
  memcpy((char *)m + f->quantifier_offset, &n, sizeof(n));
}

/* Appends v to a repeated field. Takes ownership of v: on failure
 * (FIELDSYNC_ENOMEM) it is freed and the list is unchanged. */
static int store_append(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                        union slot *v) {
  size_t size = elt_size(f);
  size_t n = rep_count(m, f);
  char *arr = rep_array(m, f);

  if (n >= SIZE_MAX / size - 1) {
    elem_free(f, v);
    return FIELDSYNC_ENOMEM;
  }
  arr = fsp_realloc(arr, (n + 1) * size);
  if (arr == NULL) {
    elem_free(f, v);
    return FIELDSYNC_ENOMEM;
  }
  memcpy(arr + n * size, v, size);
  n++;
  memcpy((char *)m + f->offset, &arr, sizeof(arr));
  memcpy((char *)m + f->quantifier_offset, &n, sizeof(n));
  return 0;
}

/* ---- enums --------------------------------------------------------------*/

/* Finds the prefix the enum's non-zero value names share, cut back to its
 * last '_' ("VISIT_KEY", "VISIT_RANDOM" -> "VISIT_"). *pfx points at a
 * name that starts with it; returns its length: 0 when there is none, or
 * when stripping it would leave some name empty. */
static size_t enum_prefix(const ProtobufCEnumDescriptor *d, const char **pfx) {
  const char *first = NULL;
  size_t len = 0;
  unsigned i;

  for (i = 0; i < d->n_values; i++) {
    const char *name = d->values[i].name;
    size_t k = 0;

    if (d->values[i].value == 0)
      continue;
    if (first == NULL) {
      first = name;
      len = strlen(name);
      continue;
    }
    while (k < len && name[k] == first[k])
      k++;
    len = k;
  }
  while (len > 0 && first[len - 1] != '_')
    len--;
  for (i = 0; i < d->n_values && len > 0; i++)
    if (d->values[i].value != 0 && strlen(d->values[i].name) == len)
      len = 0;
  *pfx = first;
  return len;
}

/* A value name without the enum's prefix (a name that lacks the prefix,
 * such as an alias or the zero value, is kept whole). */
static const char *strip_prefix(const char *name, const char *pfx,
                                size_t plen) {
  if (plen > 0 && strncmp(name, pfx, plen) == 0 && name[plen] != '\0')
    return name + plen;
  return name;
}

static void copy_lower(char *buf, size_t cap, const char *s) {
  size_t i;

  if (cap == 0)
    return;
  for (i = 0; s[i] != '\0' && i + 1 < cap; i++)
    buf[i] = (char)lower((unsigned char)s[i]);
  buf[i] = '\0';
}

bool fsc_fields_enum_name(const ProtobufCEnumDescriptor *d, int value,
                          char *buf, size_t cap) {
  const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);
  const char *pfx;
  size_t plen;

  if (v == NULL)
    return false;
  plen = enum_prefix(d, &pfx);
  copy_lower(buf, cap, strip_prefix(v->name, pfx, plen));
  return true;
}

/* Writes the short names of the enum's non-zero values, joined with '|',
 * to buf; a list longer than cap ends in "...". */
static void enum_list(const ProtobufCEnumDescriptor *d, char *buf, size_t cap) {
  const char *pfx;
  size_t plen = enum_prefix(d, &pfx);
  size_t o = 0;
  unsigned i;

  assert(cap >= 4);
  buf[0] = '\0';
  for (i = 0; i < d->n_values; i++) {
    const char *name = strip_prefix(d->values[i].name, pfx, plen);
    size_t need = strlen(name) + (o > 0 ? 1 : 0);

    if (d->values[i].value == 0)
      continue;
    if (o + need + 4 > cap) {
      memcpy(buf + o, "...", 4);
      return;
    }
    if (o > 0)
      buf[o++] = '|';
    copy_lower(buf + o, cap - o, name);
    o += strlen(buf + o);
  }
}

/* ---- parsing ------------------------------------------------------------*/

static int nomem(const char *where, char *err, size_t cap) {
  seterr(err, cap, "%s: out of memory", where);
  return FIELDSYNC_ENOMEM;
}

static const char *type_name(const ProtobufCFieldDescriptor *f) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_INT32:
    return "int32";
  case PROTOBUF_C_TYPE_SINT32:
    return "sint32";
  case PROTOBUF_C_TYPE_SFIXED32:
    return "sfixed32";
  case PROTOBUF_C_TYPE_INT64:
    return "int64";
  case PROTOBUF_C_TYPE_SINT64:
    return "sint64";
  case PROTOBUF_C_TYPE_SFIXED64:
    return "sfixed64";
  case PROTOBUF_C_TYPE_UINT32:
    return "uint32";
  case PROTOBUF_C_TYPE_FIXED32:
    return "fixed32";
  case PROTOBUF_C_TYPE_UINT64:
    return "uint64";
  case PROTOBUF_C_TYPE_FIXED64:
    return "fixed64";
  case PROTOBUF_C_TYPE_FLOAT:
    return "float";
  case PROTOBUF_C_TYPE_DOUBLE:
    return "double";
  case PROTOBUF_C_TYPE_BOOL:
    return "bool";
  case PROTOBUF_C_TYPE_ENUM:
    return "enum";
  case PROTOBUF_C_TYPE_STRING:
    return "string";
  case PROTOBUF_C_TYPE_BYTES:
    return "bytes";
  case PROTOBUF_C_TYPE_MESSAGE:
    return "message";
  }
  return "?";
}

/* What a JSON value for f should be, for "expected ..." messages. */
static const char *expected(const ProtobufCFieldDescriptor *f) {
  switch (f->type) {
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_DOUBLE:
    return "a number";
  case PROTOBUF_C_TYPE_BOOL:
    return "true or false";
  case PROTOBUF_C_TYPE_ENUM:
    return "an enum name";
  case PROTOBUF_C_TYPE_STRING:
    return "a string";
  case PROTOBUF_C_TYPE_BYTES:
    return "hex text";
  case PROTOBUF_C_TYPE_MESSAGE:
    return "a JSON object";
  default:
    return "an integer";
  }
}

static bool is_signed32(const ProtobufCFieldDescriptor *f) {
  return f->type == PROTOBUF_C_TYPE_INT32 ||
         f->type == PROTOBUF_C_TYPE_SINT32 ||
         f->type == PROTOBUF_C_TYPE_SFIXED32;
}

static bool is_signed64(const ProtobufCFieldDescriptor *f) {
  return f->type == PROTOBUF_C_TYPE_INT64 ||
         f->type == PROTOBUF_C_TYPE_SINT64 ||
         f->type == PROTOBUF_C_TYPE_SFIXED64;
}

static bool is_unsigned32(const ProtobufCFieldDescriptor *f) {
  return f->type == PROTOBUF_C_TYPE_UINT32 ||
         f->type == PROTOBUF_C_TYPE_FIXED32;
}

static bool is_unsigned64(const ProtobufCFieldDescriptor *f) {
  return f->type == PROTOBUF_C_TYPE_UINT64 ||
         f->type == PROTOBUF_C_TYPE_FIXED64;
}

/* Hex digits a bytes field needs: 32 for ids ("id", "*_id"), 64 for
 * "sha256", 0 for any even count. */
static size_t hex_digits(const ProtobufCFieldDescriptor *f) {
  size_t n = strlen(f->name);

  if (strcmp(f->name, "id") == 0 ||
      (n > 3 && strcmp(f->name + n - 3, "_id") == 0))
    return 32;
  if (strcmp(f->name, "sha256") == 0)
    return 64;
  return 0;
}

static int hex_value(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int parse_hex(const ProtobufCFieldDescriptor *f, const char *text,
                     union slot *v, const char *where, char *err, size_t cap) {
  char q[QUOTE_MAX + 4];
  size_t need = hex_digits(f);
  size_t n = strlen(text);
  size_t i;

  for (i = 0; i < n; i++)
    if (hex_value((unsigned char)text[i]) < 0) {
      seterr(err, cap, "%s: \"%s\" is not hex", where,
             quote(q, sizeof(q), text));
      return FIELDSYNC_EVALUE;
    }
  if (need != 0 && n != need) {
    seterr(err, cap, "%s: \"%s\" is not %zu hex digits", where,
           quote(q, sizeof(q), text), need);
    return FIELDSYNC_EVALUE;
  }
  if (n % 2 != 0) {
    seterr(err, cap, "%s: \"%s\" has an odd number of hex digits", where,
           quote(q, sizeof(q), text));
    return FIELDSYNC_EVALUE;
  }
  v->bd.len = n / 2;
  v->bd.data = fsp_malloc(v->bd.len);
  if (v->bd.data == NULL)
    return nomem(where, err, cap);
  for (i = 0; i < v->bd.len; i++)
    v->bd.data[i] = (uint8_t)(hex_value((unsigned char)text[2 * i]) * 16 +
                              hex_value((unsigned char)text[2 * i + 1]));
  return 0;
}

/* Decimal text to a signed integer in [min, max]: an optional '-' and
 * digits, nothing else (no space, no '+'). */
static int parse_signed(const ProtobufCFieldDescriptor *f, const char *text,
                        long long min, long long max, long long *out,
                        const char *where, char *err, size_t cap) {
  char q[QUOTE_MAX + 4];
  const char *s = text[0] == '-' ? text + 1 : text;
  char *end;
  long long x;

  if (*s < '0' || *s > '9')
    goto not_number;
  errno = 0;
  x = strtoll(text, &end, 10);
  if (*end != '\0')
    goto not_number;
  if (errno == ERANGE || x < min || x > max) {
    seterr(err, cap, "%s: \"%s\" is out of range for %s", where,
           quote(q, sizeof(q), text), type_name(f));
    return FIELDSYNC_EVALUE;
  }
  *out = x;
  return 0;

not_number:
  seterr(err, cap, "%s: \"%s\" is not a number", where,
         quote(q, sizeof(q), text));
  return FIELDSYNC_EVALUE;
}

/* Decimal text to an unsigned integer at most max: digits only (strtoull
 * alone would take "-1" as its largest value). */
static int parse_unsigned(const ProtobufCFieldDescriptor *f, const char *text,
                          unsigned long long max, unsigned long long *out,
                          const char *where, char *err, size_t cap) {
  char q[QUOTE_MAX + 4];
  char *end;
  unsigned long long x;

  if (text[0] == '-' && text[1] >= '0' && text[1] <= '9') {
    seterr(err, cap, "%s: \"%s\" is negative but %s is unsigned", where,
           quote(q, sizeof(q), text), type_name(f));
    return FIELDSYNC_EVALUE;
  }
  if (text[0] < '0' || text[0] > '9')
    goto not_number;
  errno = 0;
  x = strtoull(text, &end, 10);
  if (*end != '\0')
    goto not_number;
  if (errno == ERANGE || x > max) {
    seterr(err, cap, "%s: \"%s\" is out of range for %s", where,
           quote(q, sizeof(q), text), type_name(f));
    return FIELDSYNC_EVALUE;
  }
  *out = x;
  return 0;

not_number:
  seterr(err, cap, "%s: \"%s\" is not a number", where,
         quote(q, sizeof(q), text));
  return FIELDSYNC_EVALUE;
}

/* Stores a finite double in a float or double slot. */
static int put_real(const ProtobufCFieldDescriptor *f, double x, union slot *v,
                    const char *what, const char *where, char *err,
                    size_t cap) {
  if (!isfinite(x) ||
      (f->type == PROTOBUF_C_TYPE_FLOAT && (x > FLT_MAX || x < -FLT_MAX))) {
    seterr(err, cap, "%s: %s is out of range for %s", where, what,
           type_name(f));
    return FIELDSYNC_EVALUE;
  }
  if (f->type == PROTOBUF_C_TYPE_FLOAT)
    v->f32 = (float)x;
  else
    v->f64 = x;
  return 0;
}

static int parse_real(const ProtobufCFieldDescriptor *f, const char *text,
                      union slot *v, const char *where, char *err, size_t cap) {
  char q[QUOTE_MAX + 4];
  char what[QUOTE_MAX + 8];
  const char *s = text[0] == '-' ? text + 1 : text;
  char *end;
  double x;

  quote(q, sizeof(q), text);
  if ((*s < '0' || *s > '9') && *s != '.')
    goto not_number;
  errno = 0;
  x = strtod(text, &end);
  if (*end != '\0' || end == text)
    goto not_number;
  if (errno == ERANGE && (x == HUGE_VAL || x == -HUGE_VAL))
    x = HUGE_VAL; /* refused as out of range below */
  snprintf(what, sizeof(what), "\"%s\"", q);
  return put_real(f, x, v, what, where, err, cap);

not_number:
  seterr(err, cap, "%s: \"%s\" is not a number", where, q);
  return FIELDSYNC_EVALUE;
}

static int parse_bool(const char *text, union slot *v, const char *where,
                      char *err, size_t cap) {
  static const char *const yes[] = {"true", "yes", "1"};
  static const char *const no[] = {"false", "no", "0"};
  char q[QUOTE_MAX + 4];
  size_t i;

  for (i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
    if (eq_nocase(text, yes[i])) {
      v->b = 1;
      return 0;
    }
    if (eq_nocase(text, no[i])) {
      v->b = 0;
      return 0;
    }
  }
  seterr(err, cap, "%s: \"%s\" is not a boolean (true/false/yes/no/1/0)", where,
         quote(q, sizeof(q), text));
  return FIELDSYNC_EVALUE;
}

/* The message for the zero value or an unknown one; what is the bad
 * value as already quoted text. */
static int enum_refused(const ProtobufCEnumDescriptor *d, bool zero,
                        const char *what, const char *where, char *err,
                        size_t cap) {
  char list[ENUM_LIST_MAX];

  enum_list(d, list, sizeof(list));
  if (zero)
    seterr(err, cap, "%s: %s is not allowed (unspecified); use one of %s",
           where, what, list);
  else
    seterr(err, cap, "%s: %s is not one of %s", where, what, list);
  return FIELDSYNC_EVALUE;
}

static int parse_enum(const ProtobufCFieldDescriptor *f, const char *text,
                      union slot *v, const char *where, char *err, size_t cap) {
  const ProtobufCEnumDescriptor *d = f->descriptor;
  char q[QUOTE_MAX + 4];
  char what[QUOTE_MAX + 8];
  const char *pfx;
  size_t plen = enum_prefix(d, &pfx);
  unsigned i;
  bool zero = false;

  for (i = 0; i < d->n_value_names && !zero; i++) {
    const char *name = d->values_by_name[i].name;
    int value = d->values[d->values_by_name[i].index].value;

    if (eq_nocase(text, name) ||
        eq_nocase(text, strip_prefix(name, pfx, plen))) {
      if (value == 0)
        zero = true;
      else {
        v->i32 = value;
        return 0;
      }
    }
  }
  if (eq_nocase(text, "unspecified"))
    zero = true;
  snprintf(what, sizeof(what), "\"%s\"", quote(q, sizeof(q), text));
  return enum_refused(d, zero, what, where, err, cap);
}

static int parse_msg_json(const ProtobufCFieldDescriptor *f, const json_t *j,
                          union slot *v, const char *where, int depth,
                          char *err, size_t cap);

/* A message field from text: the text is a JSON object of its fields. */
static int parse_msg_text(const ProtobufCFieldDescriptor *f, const char *text,
                          union slot *v, const char *where, int depth,
                          char *err, size_t cap) {
  char q[QUOTE_MAX + 4];
  json_error_t jerr;
  json_t *j;
  int rc;

  memset(&jerr, 0, sizeof(jerr));
  j = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
  if (j == NULL) {
    /* jansson describes every syntax error; some of its allocation
     * failures leave the text empty instead of setting the code. */
    if (json_error_code(&jerr) == json_error_out_of_memory ||
        jerr.text[0] == '\0')
      return nomem(where, err, cap);
    seterr(err, cap, "%s: bad JSON at column %d: %s", where, jerr.column,
           quote(q, sizeof(q), jerr.text));
    return FIELDSYNC_EVALUE;
  }
  rc = parse_msg_json(f, j, v, where, depth, err, cap);
  json_decref(j);
  return rc;
}

/* Parses text as f's type into *v, which the caller then owns. Returns 0,
 * FIELDSYNC_EVALUE or FIELDSYNC_ENOMEM (message in err). */
static int parse_text(const ProtobufCFieldDescriptor *f, const char *text,
                      union slot *v, const char *where, int depth, char *err,
                      size_t cap) {
  long long sx;
  unsigned long long ux;
  int rc;

  memset(v, 0, sizeof(*v));
  if (is_signed32(f) || is_signed64(f)) {
    if (is_signed32(f))
      rc = parse_signed(f, text, INT32_MIN, INT32_MAX, &sx, where, err, cap);
    else
      rc = parse_signed(f, text, INT64_MIN, INT64_MAX, &sx, where, err, cap);
    if (rc == 0 && is_signed32(f))
      v->i32 = (int32_t)sx;
    else if (rc == 0)
      v->i64 = (int64_t)sx;
    return rc;
  }
  if (is_unsigned32(f) || is_unsigned64(f)) {
    rc = parse_unsigned(f, text, is_unsigned32(f) ? UINT32_MAX : UINT64_MAX,
                        &ux, where, err, cap);
    if (rc == 0 && is_unsigned32(f))
      v->u32 = (uint32_t)ux;
    else if (rc == 0)
      v->u64 = (uint64_t)ux;
    return rc;
  }
  switch (f->type) {
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_DOUBLE:
    return parse_real(f, text, v, where, err, cap);
  case PROTOBUF_C_TYPE_BOOL:
    return parse_bool(text, v, where, err, cap);
  case PROTOBUF_C_TYPE_ENUM:
    return parse_enum(f, text, v, where, err, cap);
  case PROTOBUF_C_TYPE_STRING:
    if (!fsp_msg_utf8_valid(text, strlen(text))) {
      seterr(err, cap, "%s: value is not valid UTF-8", where);
      return FIELDSYNC_EVALUE;
    }
    v->s = fsp_strdup(text);
    return v->s == NULL ? nomem(where, err, cap) : 0;
  case PROTOBUF_C_TYPE_BYTES:
    return parse_hex(f, text, v, where, err, cap);
  case PROTOBUF_C_TYPE_MESSAGE:
    return parse_msg_text(f, text, v, where, depth, err, cap);
  default:
    break;
  }
  seterr(err, cap, "%s: %s fields are not supported", where, type_name(f));
  return FIELDSYNC_EVALUE;
}

static int type_mismatch(const ProtobufCFieldDescriptor *f, const json_t *j,
                         const char *where, char *err, size_t cap) {
  seterr(err, cap, "%s: expected %s, got %s", where, expected(f), json_kind(j));
  return FIELDSYNC_EVALUE;
}

/* A JSON integer into an integer, float, bool (0 or 1) or enum field. */
static int parse_json_int(const ProtobufCFieldDescriptor *f, const json_t *j,
                          union slot *v, const char *where, char *err,
                          size_t cap) {
  json_int_t x = json_integer_value(j);
  char what[32];

  snprintf(what, sizeof(what), "%" JSON_INTEGER_FORMAT, x);
  if (is_signed32(f) || is_signed64(f) || is_unsigned32(f) ||
      is_unsigned64(f)) {
    if ((is_unsigned32(f) || is_unsigned64(f)) && x < 0) {
      seterr(err, cap, "%s: %s is negative but %s is unsigned", where, what,
             type_name(f));
      return FIELDSYNC_EVALUE;
    }
    if ((is_signed32(f) && (x < INT32_MIN || x > INT32_MAX)) ||
        (is_unsigned32(f) && (uint64_t)x > UINT32_MAX)) {
      seterr(err, cap, "%s: %s is out of range for %s", where, what,
             type_name(f));
      return FIELDSYNC_EVALUE;
    }
    if (is_signed32(f))
      v->i32 = (int32_t)x;
    else if (is_signed64(f))
      v->i64 = (int64_t)x;
    else if (is_unsigned32(f))
      v->u32 = (uint32_t)x;
    else
      v->u64 = (uint64_t)x;
    return 0;
  }
  switch (f->type) {
  case PROTOBUF_C_TYPE_FLOAT:
  case PROTOBUF_C_TYPE_DOUBLE:
    return put_real(f, (double)x, v, what, where, err, cap);
  case PROTOBUF_C_TYPE_BOOL:
    if (x != 0 && x != 1) {
      seterr(err, cap, "%s: expected true or false, got %s", where, what);
      return FIELDSYNC_EVALUE;
    }
    v->b = x == 1;
    return 0;
  case PROTOBUF_C_TYPE_ENUM:
    if (x == 0 || x < INT32_MIN || x > INT32_MAX ||
        protobuf_c_enum_descriptor_get_value(f->descriptor, (int)x) == NULL)
      return enum_refused(f->descriptor, x == 0, what, where, err, cap);
    v->i32 = (int32_t)x;
    return 0;
  default:
    return type_mismatch(f, j, where, err, cap);
  }
}

/* Parses one JSON value (not an array, not null) as f's type into *v,
 * which the caller then owns. */
static int parse_json_elem(const ProtobufCFieldDescriptor *f, const json_t *j,
                           union slot *v, const char *where, int depth,
                           char *err, size_t cap) {
  memset(v, 0, sizeof(*v));
  switch (json_typeof(j)) {
  case JSON_STRING:
    /* jansson strings may hold U+0000; C strings cannot. */
    if (json_string_length(j) != strlen(json_string_value(j))) {
      seterr(err, cap, "%s: value contains a NUL character", where);
      return FIELDSYNC_EVALUE;
    }
    return parse_text(f, json_string_value(j), v, where, depth, err, cap);
  case JSON_INTEGER:
    return parse_json_int(f, j, v, where, err, cap);
  case JSON_REAL:
    if (f->type == PROTOBUF_C_TYPE_FLOAT || f->type == PROTOBUF_C_TYPE_DOUBLE)
      return put_real(f, json_real_value(j), v, "the number", where, err, cap);
    if (is_signed32(f) || is_signed64(f) || is_unsigned32(f) ||
        is_unsigned64(f)) {
      seterr(err, cap, "%s: %g is not an integer", where, json_real_value(j));
      return FIELDSYNC_EVALUE;
    }
    return type_mismatch(f, j, where, err, cap);
  case JSON_TRUE:
  case JSON_FALSE:
    if (f->type != PROTOBUF_C_TYPE_BOOL)
      return type_mismatch(f, j, where, err, cap);
    v->b = json_is_true(j);
    return 0;
  case JSON_OBJECT:
    if (f->type != PROTOBUF_C_TYPE_MESSAGE)
      return type_mismatch(f, j, where, err, cap);
    return parse_msg_json(f, j, v, where, depth, err, cap);
  default:
    return type_mismatch(f, j, where, err, cap);
  }
}

static int msg_from_json(ProtobufCMessage *m, const json_t *obj,
                         const char *where, int depth, char *err, size_t cap);

/* A JSON object into a new sub-message for f. An unknown key inside it is
 * a bad value of f, so FIELDSYNC_EFIELD becomes FIELDSYNC_EVALUE. */
static int parse_msg_json(const ProtobufCFieldDescriptor *f, const json_t *j,
                          union slot *v, const char *where, int depth,
                          char *err, size_t cap) {
  ProtobufCMessage *sub;
  int rc;

  if (!json_is_object(j))
    return type_mismatch(f, j, where, err, cap);
  sub = fsc_fields_new(f->descriptor);
  if (sub == NULL)
    return nomem(where, err, cap);
  rc = msg_from_json(sub, j, where, depth + 1, err, cap);
  if (rc != 0) {
    fsc_fields_free(sub);
    return rc == FIELDSYNC_EFIELD ? FIELDSYNC_EVALUE : rc;
  }
  v->m = sub;
  return 0;
}

/* Sets f from a JSON value: null clears it; a repeated field gets exactly
 * the array's elements (or the one value given). m is unchanged on
 * error. */
static int set_json_field(ProtobufCMessage *m,
                          const ProtobufCFieldDescriptor *f,
                          const json_t *value, const char *where, int depth,
                          char *err, size_t cap) {
  size_t size = elt_size(f);
  bool list = json_is_array(value);
  size_t n = list ? json_array_size(value) : 1;
  char *arr = NULL;
  union slot v = {0};
  size_t i;
  int rc;

  if (json_is_null(value)) {
    field_clear(m, f);
    return 0;
  }
  if (!is_repeated(f)) {
    if (list) {
      seterr(err, cap, "%s: expected one value, got a JSON array", where);
      return FIELDSYNC_EVALUE;
    }
    rc = parse_json_elem(f, value, &v, where, depth, err, cap);
    if (rc == 0)
      store_single(m, f, &v);
    return rc;
  }
  if (n > SIZE_MAX / size)
    return nomem(where, err, cap);
  if (n > 0) {
    arr = fsp_malloc(n * size);
    if (arr == NULL)
      return nomem(where, err, cap);
  }
  for (i = 0; i < n; i++) {
    char ew[WHERE_MAX];

    if (list)
      snprintf(ew, sizeof(ew), "%s[%zu]", where, i);
    else
      snprintf(ew, sizeof(ew), "%s", where);
    rc = parse_json_elem(f, list ? json_array_get(value, i) : value, &v, ew,
                         depth, err, cap);
    if (rc != 0) {
      array_free(f, arr, i);
      return rc;
    }
    memcpy(arr + i * size, &v, size);
  }
  store_array(m, f, arr, n);
  return 0;
}

/* Sets m's fields from the JSON object obj. Returns 0, FIELDSYNC_EFIELD
 * (unknown key), FIELDSYNC_EVALUE or FIELDSYNC_ENOMEM; fields before the
 * bad one stay set. */
static int msg_from_json(ProtobufCMessage *m, const json_t *obj,
                         const char *where, int depth, char *err, size_t cap) {
  char q[QUOTE_MAX + 4];
  void *it;

  if (depth > MAX_DEPTH) {
    seterr(err, cap, "%s: nested too deeply", where);
    return FIELDSYNC_EVALUE;
  }
  if (!json_is_object(obj)) {
    seterr(err, cap, "%s: expected a JSON object, got %s", where,
           json_kind(obj));
    return FIELDSYNC_EVALUE;
  }
  for (it = json_object_iter((json_t *)obj); it != NULL;
       it = json_object_iter_next((json_t *)obj, it)) {
    const char *key = json_object_iter_key(it);
    const ProtobufCFieldDescriptor *f = NULL;
    char fw[WHERE_MAX];
    int rc;

    if (json_object_iter_key_len(it) == strlen(key))
      f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, key);
    if (f == NULL) {
      seterr(err, cap, "%s: no field \"%s\"", where, quote(q, sizeof(q), key));
      return FIELDSYNC_EFIELD;
    }
    snprintf(fw, sizeof(fw), "%s.%s", where, f->name);
    rc = set_json_field(m, f, json_object_iter_value(it), fw, depth, err, cap);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* Finds field in m's type and writes "message.field" to where (WHERE_MAX
 * bytes); NULL (message in err) when there is no such field. */
static const ProtobufCFieldDescriptor *lookup(const ProtobufCMessage *m,
                                              const char *field, char *where,
                                              char *err, size_t cap) {
  const ProtobufCFieldDescriptor *f = NULL;
  char name[64];
  char q[QUOTE_MAX + 4];

  assert(m != NULL && m->descriptor != NULL);
  snake_name(name, sizeof(name), m->descriptor->short_name);
  if (field != NULL)
    f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, field);
  if (f == NULL) {
    seterr(err, cap, "%s: no field \"%s\"", name,
           quote(q, sizeof(q), field != NULL ? field : ""));
    return NULL;
  }
  snprintf(where, WHERE_MAX, "%s.%s", name, f->name);
  return f;
}

int fsc_fields_set(ProtobufCMessage *m, const char *field, const char *text,
                   bool replace_repeated, char *err, size_t errcap) {
  char where[WHERE_MAX];
  const ProtobufCFieldDescriptor *f = lookup(m, field, where, err, errcap);
  union slot v = {0};
  char *arr;
  int rc;

  if (f == NULL)
    return FIELDSYNC_EFIELD;
  if (text == NULL) {
    seterr(err, errcap, "%s: no value", where);
    return FIELDSYNC_EVALUE;
  }
  rc = parse_text(f, text, &v, where, 0, err, errcap);
  if (rc != 0)
    return rc;
  if (!is_repeated(f)) {
    store_single(m, f, &v);
    return 0;
  }
  if (!replace_repeated) {
    rc = store_append(m, f, &v);
    return rc == 0 ? 0 : nomem(where, err, errcap);
  }
  /* Allocate the new list before emptying the old, so an allocation
   * failure leaves m as it was. */
  arr = fsp_malloc(elt_size(f));
  if (arr == NULL) {
    elem_free(f, &v);
    return nomem(where, err, errcap);
  }
  memcpy(arr, &v, elt_size(f));
  store_array(m, f, arr, 1);
  return 0;
}

int fsc_fields_set_json(ProtobufCMessage *m, const char *field,
                        const json_t *value, char *err, size_t errcap) {
  char where[WHERE_MAX];
  const ProtobufCFieldDescriptor *f = lookup(m, field, where, err, errcap);

  if (f == NULL)
    return FIELDSYNC_EFIELD;
  if (value == NULL) {
    seterr(err, errcap, "%s: no value", where);
    return FIELDSYNC_EVALUE;
  }
  return set_json_field(m, f, value, where, 0, err, errcap);
}

int fsc_fields_from_json(ProtobufCMessage *m, const json_t *obj, char *err,
                         size_t errcap) {
  char name[64];

  assert(m != NULL && m->descriptor != NULL);
  snake_name(name, sizeof(name), m->descriptor->short_name);
  if (obj == NULL) {
    seterr(err, errcap, "%s: no JSON object", name);
    return FIELDSYNC_EVALUE;
  }
  return msg_from_json(m, obj, name, 0, err, errcap);
}

int fsc_fields_clear(ProtobufCMessage *m, const char *field, char *err,
                     size_t errcap) {
  char where[WHERE_MAX];
  const ProtobufCFieldDescriptor *f = lookup(m, field, where, err, errcap);

  if (f == NULL)
    return FIELDSYNC_EFIELD;
  field_clear(m, f);
  return 0;
}

/* ---- output -------------------------------------------------------------*/

/* A copy of s with each byte that is not part of valid UTF-8 replaced by
 * U+FFFD, for output of a string that skipped validation. NULL when out
 * of memory. */
static char *utf8_fix(const char *s) {
  size_t n = strlen(s);
  size_t i = 0;
  size_t o = 0;
  char *out;

  if (n > (SIZE_MAX - 1) / 3)
    return NULL;
  out = fsp_malloc(3 * n + 1);
  if (out == NULL)
    return NULL;
  while (i < n) {
    size_t k;

    for (k = 1; k <= 4 && i + k <= n; k++)
      if (fsp_msg_utf8_valid(s + i, k))
        break;
    if (k <= 4 && i + k <= n) {
      memcpy(out + o, s + i, k);
      o += k;
      i += k;
    } else {
      memcpy(out + o, "\xef\xbf\xbd", 3);
      o += 3;
      i++;
    }
  }
  out[o] = '\0';
  return out;
}

static json_t *string_json(const char *s) {
  char *fixed;
  json_t *j;

  if (fsp_msg_utf8_valid(s, strlen(s)))
    return json_string(s);
  fixed = utf8_fix(s);
  if (fixed == NULL)
    return NULL;
  j = json_string(fixed);
  fsp_free(fixed);
  return j;
}

/* Lowercase hex of bd in a new fsp_malloc string; NULL when out of
 * memory. */
static char *hex_of(const ProtobufCBinaryData *bd) {
  static const char digits[] = "0123456789abcdef";
  char *s;
  size_t i;

  if (bd->len > (SIZE_MAX - 1) / 2)
    return NULL;
  s = fsp_malloc(2 * bd->len + 1);
  if (s == NULL)
    return NULL;
  for (i = 0; i < bd->len; i++) {
    s[2 * i] = digits[bd->data[i] >> 4];
    s[2 * i + 1] = digits[bd->data[i] & 15];
  }
  s[2 * bd->len] = '\0';
  return s;
}

/* A 64-bit integer as a JSON number when json_int_t holds it, else as a
 * decimal string (which the parsers read back as text). */
static json_t *int_json(int64_t x) {
  char buf[24];

  if (sizeof(json_int_t) >= sizeof(int64_t) ||
      (x >= INT32_MIN && x <= INT32_MAX))
    return json_integer((json_int_t)x);
  snprintf(buf, sizeof(buf), "%" PRId64, x);
  return json_string(buf);
}

static json_t *uint_json(uint64_t x) {
  char buf[24];

  if (x <= (uint64_t)INT32_MAX ||
      (sizeof(json_int_t) >= sizeof(int64_t) && x <= (uint64_t)INT64_MAX))
    return json_integer((json_int_t)x);
  snprintf(buf, sizeof(buf), "%" PRIu64, x);
  return json_string(buf);
}

/* One stored value of f at p as JSON; NULL when out of memory. */
static json_t *elem_json(const ProtobufCFieldDescriptor *f, const void *p) {
  union slot v = {0};
  char name[256];
  char *hex;
  json_t *j;

  memcpy(&v, p, elt_size(f));
  if (is_signed32(f))
    return json_integer(v.i32);
  if (is_signed64(f))
    return int_json(v.i64);
  if (is_unsigned32(f))
    return uint_json(v.u32);
  if (is_unsigned64(f))
    return uint_json(v.u64);
  switch (f->type) {
  case PROTOBUF_C_TYPE_FLOAT:
    /* JSON has no NaN or infinity. */
    return isfinite(v.f32) ? json_real(v.f32) : json_null();
  case PROTOBUF_C_TYPE_DOUBLE:
    return isfinite(v.f64) ? json_real(v.f64) : json_null();
  case PROTOBUF_C_TYPE_BOOL:
    return json_boolean(v.b);
  case PROTOBUF_C_TYPE_ENUM:
    /* An unknown value (from a newer peer) stays a number. */
    if (fsc_fields_enum_name(f->descriptor, v.i32, name, sizeof(name)))
      return json_string(name);
    return json_integer(v.i32);
  case PROTOBUF_C_TYPE_STRING:
    return string_json(v.s);
  case PROTOBUF_C_TYPE_BYTES:
    hex = hex_of(&v.bd);
    if (hex == NULL)
      return NULL;
    j = json_string(hex);
    fsp_free(hex);
    return j;
  case PROTOBUF_C_TYPE_MESSAGE:
    return fsc_fields_to_json(v.m);
  default:
    return NULL;
  }
}

json_t *fsc_fields_to_json(const ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  json_t *obj = json_object();
  json_t *arr = NULL;
  unsigned i;

  if (obj == NULL)
    return NULL;
  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    json_t *v;

    if (!field_present(m, f))
      continue;
    if (is_repeated(f)) {
      const char *base = rep_array(m, f);
      size_t n = rep_count(m, f);
      size_t k;

      arr = json_array();
      if (arr == NULL)
        goto fail;
      for (k = 0; k < n; k++) {
        json_t *e = elem_json(f, base + k * elt_size(f));

        /* Takes e (also on failure); a NULL e fails. */
        if (json_array_append_new(arr, e) != 0)
          goto fail;
      }
      v = arr;
      arr = NULL;
    } else {
      v = elem_json(f, (const char *)m + f->offset);
    }
    /* Takes v (also on failure); a NULL v fails. */
    if (json_object_set_new(obj, f->name, v) != 0)
      goto fail;
  }
  return obj;

fail:
  json_decref(arr);
  json_decref(obj);
  return NULL;
}

/* A growing fsp_malloc string; oom sticks once an allocation fails. */
struct sbuf {
  char *p;
  size_t len;
  size_t cap;
  bool oom;
};

/* Makes room for n more bytes and the NUL; false when out of memory. */
static bool sb_reserve(struct sbuf *b, size_t n) {
  size_t cap = b->cap > 0 ? b->cap : 64;
  char *p;

  if (b->oom || n > SIZE_MAX - b->len - 1) {
    b->oom = true;
    return false;
  }
  if (b->p != NULL && b->len + n + 1 <= b->cap)
    return true;
  while (cap < b->len + n + 1)
    cap = cap <= SIZE_MAX / 2 ? cap * 2 : b->len + n + 1;
  p = fsp_realloc(b->p, cap);
  if (p == NULL) {
    b->oom = true;
    return false;
  }
  b->p = p;
  b->cap = cap;
  return true;
}

static void sb_add(struct sbuf *b, const char *s, size_t n) {
  if (!sb_reserve(b, n))
    return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s) {
  sb_add(b, s, strlen(s));
}

/* Appends one stored value of f at p as cell text. */
static void elem_text(struct sbuf *b, const ProtobufCFieldDescriptor *f,
                      const void *p) {
  union slot v = {0};
  char num[64];
  char *s;
  json_t *j;
  size_t n;

  memcpy(&v, p, elt_size(f));
  if (is_signed32(f))
    snprintf(num, sizeof(num), "%" PRId32, v.i32);
  else if (is_signed64(f))
    snprintf(num, sizeof(num), "%" PRId64, v.i64);
  else if (is_unsigned32(f))
    snprintf(num, sizeof(num), "%" PRIu32, v.u32);
  else if (is_unsigned64(f))
    snprintf(num, sizeof(num), "%" PRIu64, v.u64);
  else if (f->type == PROTOBUF_C_TYPE_FLOAT)
    snprintf(num, sizeof(num), "%.9g", (double)v.f32);
  else if (f->type == PROTOBUF_C_TYPE_DOUBLE)
    snprintf(num, sizeof(num), "%.17g", v.f64);
  else if (f->type == PROTOBUF_C_TYPE_BOOL)
    snprintf(num, sizeof(num), "%s", v.b ? "true" : "false");
  else if (f->type == PROTOBUF_C_TYPE_ENUM) {
    char name[256];

    if (fsc_fields_enum_name(f->descriptor, v.i32, name, sizeof(name))) {
      sb_puts(b, name);
      return;
    }
    snprintf(num, sizeof(num), "%" PRId32, v.i32);
  } else if (f->type == PROTOBUF_C_TYPE_STRING) {
    if (fsp_msg_utf8_valid(v.s, strlen(v.s))) {
      sb_puts(b, v.s);
      return;
    }
    s = utf8_fix(v.s);
    if (s == NULL)
      b->oom = true;
    else
      sb_puts(b, s);
    fsp_free(s);
    return;
  } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
    s = hex_of(&v.bd);
    if (s == NULL)
      b->oom = true;
    else
      sb_puts(b, s);
    fsp_free(s);
    return;
  } else {
    assert(f->type == PROTOBUF_C_TYPE_MESSAGE);
    j = fsc_fields_to_json(v.m);
    /* json_dumpb returns the size it needs, 0 on failure (it allocates
     * too); an object is never empty text. */
    n = j != NULL ? json_dumpb(j, NULL, 0, JSON_COMPACT) : 0;
    if (n == 0 || !sb_reserve(b, n) ||
        json_dumpb(j, b->p + b->len, n, JSON_COMPACT) != n) {
      b->oom = true;
    } else {
      b->len += n;
      b->p[b->len] = '\0';
    }
    json_decref(j);
    return;
  }
  sb_puts(b, num);
}

char *fsc_fields_cell(const ProtobufCMessage *m,
                      const ProtobufCFieldDescriptor *f) {
  struct sbuf b = {NULL, 0, 0, false};

  assert(f >= m->descriptor->fields &&
         f < m->descriptor->fields + m->descriptor->n_fields);
  sb_add(&b, "", 0);
  if (is_repeated(f)) {
    const char *base = rep_array(m, f);
    size_t n = rep_count(m, f);
    size_t i;

    for (i = 0; i < n; i++) {
      struct sbuf e = {NULL, 0, 0, false};
      size_t k;

      if (i > 0)
        sb_add(&b, "|", 1);
      /* Escape the separator (and the escape) inside each value. */
      sb_add(&e, "", 0);
      elem_text(&e, f, base + i * elt_size(f));
      for (k = 0; !e.oom && k < e.len; k++) {
        if (e.p[k] == '|' || e.p[k] == '\\')
          sb_add(&b, "\\", 1);
        sb_add(&b, &e.p[k], 1);
      }
      if (e.oom)
        b.oom = true;
      fsp_free(e.p);
    }
  } else if (single_present(m, f)) {
    elem_text(&b, f, (const char *)m + f->offset);
  }
  if (b.oom) {
    fsp_free(b.p);
    return NULL;
  }
  return b.p;
}

void fsc_fields_describe(const ProtobufCMessageDescriptor *d,
                         void (*cb)(const char *name, const char *type,
                                    void *data),
                         void *data) {
  unsigned i;

  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    const char *rep = is_repeated(f) ? "repeated " : "";
    char type[ENUM_LIST_MAX + 64];
    char list[ENUM_LIST_MAX];
    size_t hex;

    if (f->type == PROTOBUF_C_TYPE_ENUM) {
      enum_list(f->descriptor, list, sizeof(list));
      snprintf(type, sizeof(type), "%senum: %s", rep, list);
    } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
      const ProtobufCMessageDescriptor *sd = f->descriptor;

      snprintf(type, sizeof(type), "%smessage %s (JSON object)", rep,
               sd->short_name);
    } else if (f->type == PROTOBUF_C_TYPE_BYTES) {
      hex = hex_digits(f);
      snprintf(type, sizeof(type), "%s%s", rep,
               hex == 32   ? "id"
               : hex == 64 ? "sha256"
                           : "hex");
    } else {
      snprintf(type, sizeof(type), "%s%s", rep, type_name(f));
    }
    cb(f->name, type, data);
  }
}

/* ---- messages -----------------------------------------------------------*/

ProtobufCMessage *fsc_fields_new(const ProtobufCMessageDescriptor *d) {
  ProtobufCMessage *m = fsp_malloc(d->sizeof_message);

  if (m != NULL)
    protobuf_c_message_init(d, m);
  return m;
}

ProtobufCMessage *fsc_fields_unpack(const ProtobufCMessageDescriptor *d,
                                    const uint8_t *data, size_t len) {
  return protobuf_c_message_unpack(d, &fsc_fields_allocator, len, data);
}

/* pc_alloc that notes a failure in the bool at data: protobuf-c returns
 * NULL alike for bad bytes and for a failed allocation. */
static void *pc_alloc_noted(void *data, size_t size) {
  void *p = fsp_malloc(size);

  if (p == NULL)
    *(bool *)data = true;
  return p;
}

int fsc_fields_decode(const ProtobufCMessageDescriptor *d, const uint8_t *data,
                      size_t len, ProtobufCMessage **out) {
  bool nomem = false;
  ProtobufCAllocator a = {pc_alloc_noted, pc_free, &nomem};

  /* Freed later with fsc_fields_allocator: the same pc_free. */
  *out = protobuf_c_message_unpack(d, &a, len, data);
  if (*out != NULL)
    return 0;
  return nomem ? FIELDSYNC_ENOMEM : FIELDSYNC_ECORRUPT;
}

void fsc_fields_free(ProtobufCMessage *m) {
  if (m != NULL)
    protobuf_c_message_free_unpacked(m, &fsc_fields_allocator);
}

int fsc_fields_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = fsp_malloc(n);
  size_t packed;

  *out = NULL;
  *len = 0;
  if (buf == NULL)
    return FIELDSYNC_ENOMEM;
  packed = protobuf_c_message_pack(m, buf);
  assert(packed == n);
  (void)packed;
  *out = buf;
  *len = n;
  return 0;
}
