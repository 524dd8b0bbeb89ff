/* SPDX-License-Identifier: MIT */
/* Descriptor-driven conversion between text or JSON and protobuf-c
 * payload messages: one code path serves every collection (the CLI's
 * FIELD=VALUE, JSON output, CSV cells, JSON-lines import). Messages built
 * here are allocated with fsc_fields_allocator, so protobuf-c's
 * free_unpacked releases them (fsc_fields_free). */
#ifndef FSC_FIELDS_H
#define FSC_FIELDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* fsp_malloc/fsp_free as a protobuf-c allocator (no budget: for our own
 * messages and trusted local data; network input uses fsp_budget). */
extern ProtobufCAllocator fsc_fields_allocator;

/* A new message of type d, initialised; NULL when out of memory. */
ProtobufCMessage *fsc_fields_new(const ProtobufCMessageDescriptor *d);
/* Unpacks data as d with fsc_fields_allocator; NULL when the bytes do not
 * decode (or out of memory). */
ProtobufCMessage *fsc_fields_unpack(const ProtobufCMessageDescriptor *d,
                                    const uint8_t *data, size_t len);
/* The same, telling why it failed: 0 (*out set), FIELDSYNC_ENOMEM or
 * FIELDSYNC_ECORRUPT (the bytes do not decode; *out is NULL). */
int fsc_fields_decode(const ProtobufCMessageDescriptor *d, const uint8_t *data,
                      size_t len, ProtobufCMessage **out);
/* Frees a message from fsc_fields_new/unpack. NULL is a no-op. */
void fsc_fields_free(ProtobufCMessage *m);
/* Packs m into a new fsp_malloc buffer; 0 or FIELDSYNC_ENOMEM. An empty
 * message gives *len 0 and a non-NULL *out. */
int fsc_fields_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len);

/* Text form of an enum value: the value's name without the prefix its
 * enum's values share, lowercased ("CONSENT_GIVEN" -> "given"). The prefix
 * is the common start of the non-zero value names, cut back to its last
 * '_'. Writes at most cap bytes (NUL-terminated, cut if longer); returns
 * false for an unknown value. */
bool fsc_fields_enum_name(const ProtobufCEnumDescriptor *d, int value,
                          char *buf, size_t cap);

/* Sets field from text, parsed by its type:
 * - string: as is (must be valid UTF-8)
 * - bool: true/false/yes/no/1/0 (case-insensitive)
 * - int32/int64/uint32/uint64: decimal, range-checked (strtoll/strtoull);
 *   an optional '-' (signed types only) and digits, nothing else
 * - enum: short name (see fsc_fields_enum_name) or full value name,
 *   case-insensitive; the zero "unspecified" value is refused
 * - bytes: hex (32 digits for *_id fields, 64 for sha256; even length else)
 * - message: a JSON object of its fields
 * Only the type is checked: value rules such as judgement 1..4 belong to
 * payload validation (fsp_payload_validate).
 * A repeated field gets the value appended; with replace_repeated the list
 * is first emptied. Returns 0, FIELDSYNC_EFIELD (unknown field name),
 * FIELDSYNC_EVALUE or FIELDSYNC_ENOMEM; err (cap errcap; may be NULL) gets
 * a one-line message naming the field and the bad value, such as
 * 'observation.judgement: "high" is not a number'. On error m is
 * unchanged. */
int fsc_fields_set(ProtobufCMessage *m, const char *field, const char *text,
                   bool replace_repeated, char *err, size_t errcap);

/* Same, from a JSON value: strings are parsed as text; JSON numbers,
 * booleans and objects are taken directly (an enum takes the number of a
 * known non-zero value, a bool 0 or 1); a JSON array sets a repeated field
 * to exactly its elements, and a single value sets it to that one element;
 * null clears the field. An unknown key inside a message value is
 * FIELDSYNC_EVALUE. On error m is unchanged. Used for JSON-lines import. */
int fsc_fields_set_json(ProtobufCMessage *m, const char *field,
                        const json_t *value, char *err, size_t errcap);

/* Sets every field of a JSON object (keys = field names), each as
 * fsc_fields_set_json. An unknown key is FIELDSYNC_EFIELD. On error the
 * fields before the bad one are already set: discard m. */
int fsc_fields_from_json(ProtobufCMessage *m, const json_t *obj, char *err,
                         size_t errcap);

/* Makes field absent (repeated: empty). 0 or FIELDSYNC_EFIELD. */
int fsc_fields_clear(ProtobufCMessage *m, const char *field, char *err,
                     size_t errcap);

/* JSON object of m's present fields, in field-number order: strings as
 * strings, integers as numbers (64-bit as numbers too; only a uint64 above
 * the JSON integer range becomes a decimal string, which the parsers read
 * back), bools as booleans, enums by short name (an unknown value as its
 * number), bytes as lowercase hex, repeated fields as arrays, messages as
 * objects. Absent optional fields and empty repeated fields are omitted.
 * fsc_fields_from_json reads it back to an equal message. NULL when out
 * of memory. The caller json_decref()s it. */
json_t *fsc_fields_to_json(const ProtobufCMessage *m);

/* Text of one field (f must be one of m's descriptor's fields) for a CSV
 * cell: as fsc_fields_to_json would show it, but strings bare, repeated
 * values joined with "|" (a '|' inside a value is not escaped), messages
 * as compact JSON; "" when absent. The caller does any CSV quoting.
 * Returns a new fsp_malloc string (fsp_free) or NULL (OOM). */
char *fsc_fields_cell(const ProtobufCMessage *m,
                      const ProtobufCFieldDescriptor *f);

/* Describes each field of d, in field-number order: name and a type text
 * such as "string", "uint32", "bool", "id" (32 hex digits), "sha256" (64),
 * "hex", "enum: key|random|thematic", "repeated string",
 * "message CouncilPlacement (JSON object)". Both strings are valid only
 * during the callback. */
void fsc_fields_describe(const ProtobufCMessageDescriptor *d,
                         void (*cb)(const char *name, const char *type,
                                    void *data),
                         void *data);

#endif
