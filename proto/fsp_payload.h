/* SPDX-License-Identifier: MIT */
/* The collection registry both sides agree on: each collection's name, its
 * typed payload descriptor, how its scope is derived, and payload
 * validation. Generic code (CLI, JSON, validation) walks the descriptors, so
 * adding a collection means adding a row here, not a new code path. */
#ifndef FSP_PAYLOAD_H
#define FSP_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "fsp_err.h"
#include "fsp_msg.h"

struct fsp_collection {
  int id;                 /* FIELDSYNC__COLLECTION__COLLECTION_* */
  const char *name;       /* "observation" */
  const ProtobufCMessageDescriptor *desc;
  int scope_kind;         /* FIELDSYNC__SCOPE_KIND__SCOPE_* */
  /* Payload field holding the scope id; NULL: the record's own id. */
  const char *scope_field;
  /* String field naming the user who owns the record (an expert's own
   * interview notes, a visit's lead inspector); NULL: none. */
  const char *owner_field;
  /* Bytes field naming the service a visit-scoped record's visit belongs
   * to (only visits have one); NULL: none. */
  const char *service_field;
};

/* The registry, in collection-id order; *n gets its length. */
const struct fsp_collection *fsp_payload_collections(size_t *n);
/* Lookup by id or name; NULL when unknown. */
const struct fsp_collection *fsp_payload_by_id(int id);
const struct fsp_collection *fsp_payload_by_name(const char *name);

/* Unpacks payload as col's message under lim->budget and validates it:
 * id fields are 16 bytes (sha256 32), enums are known values, strings are
 * UTF-8 and at most lim->max_payload, dates are YYYY-MM-DD and times
 * YYYY-MM-DDTHH:MM[:SS], judgement is 1..4, rating_stars 0..3.
 * On success and when out is non-NULL, *out is the unpacked message, freed
 * with fsp_payload_free(*out, budget); budget must then be kept alive.
 * Returns 0, FSP_EBAD_PAYLOAD (not decodable), FSP_EBUDGET, FSP_ENOMEM,
 * or a field's code (FSP_EBAD_ID, FSP_EBAD_ENUM, FSP_EBAD_VALUE, ...). */
int fsp_payload_decode(const struct fsp_collection *col, const uint8_t *payload,
                       size_t len, const struct fsp_limits *lim,
                       struct fsp_budget *budget, ProtobufCMessage **out,
                       struct fsp_error *err);
void fsp_payload_free(ProtobufCMessage *msg, struct fsp_budget *budget);

/* Validates an already unpacked (or locally built) payload message. */
int fsp_payload_validate(const ProtobufCMessage *msg,
                         const struct fsp_limits *lim, struct fsp_error *err);

/* The scope of a record: its own id for visits and services, else the
 * payload's scope field. Returns 0 or FSP_EBAD_SCOPE when the field is
 * absent or not 16 bytes. */
int fsp_payload_scope(const struct fsp_collection *col,
                      const uint8_t record_id[16], const ProtobufCMessage *msg,
                      int *kind, uint8_t scope_id[16], struct fsp_error *err);

/* The owner named in msg (col->owner_field), or "" when the collection has
 * no owner field or it is unset. The string belongs to msg. */
const char *fsp_payload_owner(const struct fsp_collection *col,
                              const ProtobufCMessage *msg);
/* The service msg belongs to (col->service_field): true and service_id
 * filled when set and 16 bytes. */
bool fsp_payload_service(const struct fsp_collection *col,
                         const ProtobufCMessage *msg, uint8_t service_id[16]);

#endif
