/* SPDX-License-Identifier: MIT */
/* Envelope decoding under a byte budget, the validation rules of
 * PROTOCOL.md ("Validation"), and the Envelope -> frame encoder. Decoding
 * never trusts a length or count: protobuf-c checks lengths against the
 * input, the budget bounds what unpacking allocates, and every count is
 * checked against fsp_limits here. */
#include "fsp_msg.h"

#include <stdio.h>
#include <string.h>

#include "fsp_frame.h"
#include "fsp_merge.h"

void fsp_limits_default(struct fsp_limits *l) {
  l->max_frame = FSP_DEFAULT_MAX_FRAME;
  l->max_batch = FSP_DEFAULT_MAX_BATCH;
  l->max_vv = FSP_DEFAULT_MAX_VV;
  l->max_payload = FSP_DEFAULT_MAX_PAYLOAD;
  l->max_string = FSP_DEFAULT_MAX_STRING;
  l->budget = (size_t)l->max_frame * 8u + 64u * 1024u;
}

const char *fsp_msg_body_name(const Fieldsync__Envelope *env) {
  switch (env->body_case) {
  case FIELDSYNC__ENVELOPE__BODY_HELLO:
    return "hello";
  case FIELDSYNC__ENVELOPE__BODY_WELCOME:
    return "welcome";
  case FIELDSYNC__ENVELOPE__BODY_PUSH:
    return "push";
  case FIELDSYNC__ENVELOPE__BODY_PUSH_ACK:
    return "push_ack";
  case FIELDSYNC__ENVELOPE__BODY_PULL:
    return "pull";
  case FIELDSYNC__ENVELOPE__BODY_CHANGES:
    return "changes";
  case FIELDSYNC__ENVELOPE__BODY_ERROR:
    return "error";
  case FIELDSYNC__ENVELOPE__BODY_BYE:
    return "bye";
  default:
    return "none";
  }
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF. */
bool fsp_msg_utf8_valid(const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;

  while (i < n) {
    unsigned char c = s[i];
    size_t len;
    unsigned long cp;
    size_t k;

    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (n - i < len)
      return false;
    for (k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        return false;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

/* ---- small field checks; each returns 0 or sets err ---------------------*/

static int check_id(const char *path, const char *field, bool has,
                    const ProtobufCBinaryData *b, struct fsp_error *err) {
  if (!has)
    return fsp_error_set(err, FSP_EMISSING, "%s.%s: missing", path, field);
  if (b->len != FSP_ID_LEN)
    return fsp_error_set(err, FSP_EBAD_ID, "%s.%s: %zu bytes, want 16", path,
                         field, b->len);
  return 0;
}

static int check_string(const char *path, const char *field, const char *s,
                        bool required, uint32_t max, struct fsp_error *err) {
  size_t n;

  if (s == NULL) {
    if (required)
      return fsp_error_set(err, FSP_EMISSING, "%s.%s: missing", path, field);
    return 0;
  }
  n = strlen(s);
  if (n > max)
    return fsp_error_set(err, FSP_ETOO_LONG, "%s.%s: %zu bytes, limit %u",
                         path, field, n, max);
  if (!fsp_msg_utf8_valid(s, n))
    return fsp_error_set(err, FSP_EBAD_VALUE, "%s.%s: not valid UTF-8", path,
                         field);
  return 0;
}

/* An enum value must be one the schema defines (0, "unspecified", is not). */
static int check_enum(const char *path, const char *field, bool has, int v,
                      const ProtobufCEnumDescriptor *d, struct fsp_error *err) {
  if (!has)
    return fsp_error_set(err, FSP_EMISSING, "%s.%s: missing", path, field);
  if (v == 0 || protobuf_c_enum_descriptor_get_value(d, v) == NULL)
    return fsp_error_set(err, FSP_EBAD_ENUM, "%s.%s: %d is not a %s value",
                         path, field, v, d->short_name);
  return 0;
}

static int check_count(const char *path, const char *field, size_t n,
                       uint32_t max, struct fsp_error *err) {
  if (n > max)
    return fsp_error_set(err, FSP_ETOO_MANY, "%s.%s: %zu entries, limit %u",
                         path, field, n, max);
  return 0;
}

static int check_key(const char *path, const Fieldsync__RecordKey *k,
                     struct fsp_error *err) {
  char p[96];
  int rc;

  if (k == NULL)
    return fsp_error_set(err, FSP_EMISSING, "%s.key: missing", path);
  snprintf(p, sizeof(p), "%s.key", path);
  rc = check_enum(p, "collection", k->has_collection, (int)k->collection,
                  &fieldsync__collection__descriptor, err);
  if (rc == 0)
    rc = check_id(p, "id", k->has_id, &k->id, err);
  return rc;
}

/* Validates wire vector entries as a canonical version vector. */
static int check_vv(const char *path, Fieldsync__VvEntry *const *e, size_t n,
                    size_t max, struct fsp_error *err) {
  size_t i;

  if (n == 0)
    return fsp_error_set(err, FSP_EBAD_VV, "%s.vv: empty", path);
  if (n > max)
    return fsp_error_set(err, FSP_ETOO_MANY, "%s.vv: %zu entries, limit %zu",
                         path, n, max);
  for (i = 0; i < n; i++) {
    if (!e[i]->has_replica)
      return fsp_error_set(err, FSP_EMISSING, "%s.vv[%zu].replica: missing",
                           path, i);
    if (e[i]->replica.len != FSP_ID_LEN)
      return fsp_error_set(err, FSP_EBAD_ID,
                           "%s.vv[%zu].replica: %zu bytes, want 16", path, i,
                           e[i]->replica.len);
    if (!e[i]->has_counter || e[i]->counter == 0)
      return fsp_error_set(err, FSP_EBAD_VV, "%s.vv[%zu]: zero counter", path,
                           i);
    if (i > 0 && memcmp(e[i - 1]->replica.data, e[i]->replica.data,
                        FSP_ID_LEN) >= 0)
      return fsp_error_set(err, FSP_EBAD_VV,
                           "%s.vv[%zu]: replica ids not strictly ascending",
                           path, i);
  }
  return 0;
}

int fsp_msg_vv_from_pb(struct fsp_vv *v, Fieldsync__VvEntry *const *e,
                       size_t n, size_t max_entries, struct fsp_error *err) {
  size_t i;
  int rc;

  rc = check_vv("version", e, n, max_entries, err);
  if (rc != 0)
    return rc;
  if (n > v->cap) {
    struct fsp_vv_entry *ne = fsp_realloc(v->e, n * sizeof(*ne));
    if (ne == NULL)
      return fsp_error_set(err, FSP_ENOMEM, "version.vv: out of memory");
    v->e = ne;
    v->cap = n;
  }
  for (i = 0; i < n; i++) {
    memcpy(v->e[i].replica, e[i]->replica.data, FSP_ID_LEN);
    v->e[i].counter = e[i]->counter;
  }
  v->n = n;
  return 0;
}

void fsp_msg_vv_to_pb(const struct fsp_vv *v, Fieldsync__VvEntry *entries,
                      Fieldsync__VvEntry **ptrs) {
  size_t i;

  for (i = 0; i < v->n; i++) {
    fieldsync__vv_entry__init(&entries[i]);
    entries[i].has_replica = true;
    entries[i].replica.data = v->e[i].replica;
    entries[i].replica.len = FSP_ID_LEN;
    entries[i].has_counter = true;
    entries[i].counter = v->e[i].counter;
    ptrs[i] = &entries[i];
  }
}

static int check_version(const char *path, const Fieldsync__Version *v,
                         const struct fsp_limits *lim, struct fsp_error *err) {
  uint8_t h[FSP_HASH_LEN];
  bool deleted;
  int rc;

  if (v == NULL)
    return fsp_error_set(err, FSP_EMISSING, "%s.version: missing", path);
  rc = check_vv(path, v->vv, v->n_vv, lim->max_vv, err);
  if (rc != 0)
    return rc;
  deleted = v->has_deleted && v->deleted;
  if (v->has_payload && v->payload.len > lim->max_payload)
    return fsp_error_set(err, FSP_ETOO_LONG,
                         "%s.version.payload: %zu bytes, limit %u", path,
                         v->payload.len, lim->max_payload);
  if (deleted && v->has_payload && v->payload.len > 0)
    return fsp_error_set(err, FSP_EBAD_VALUE,
                         "%s.version: a tombstone carries no payload", path);
  if (!deleted && !v->has_payload)
    return fsp_error_set(err, FSP_EMISSING, "%s.version.payload: missing",
                         path);
  if (!v->has_hash)
    return fsp_error_set(err, FSP_EMISSING, "%s.version.hash: missing", path);
  if (v->hash.len != FSP_HASH_LEN)
    return fsp_error_set(err, FSP_EBAD_HASH,
                         "%s.version.hash: %zu bytes, want 32", path,
                         v->hash.len);
  fsp_merge_hash(deleted, v->has_payload ? v->payload.data : NULL,
                 v->has_payload ? v->payload.len : 0, h);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
  /* A fuzzer cannot forge SHA-256; let it reach the checks behind this. */
  memcpy(h, v->hash.data, FSP_HASH_LEN);
#endif
  if (memcmp(h, v->hash.data, FSP_HASH_LEN) != 0)
    return fsp_error_set(err, FSP_EBAD_HASH,
                         "%s.version.hash: does not match the payload", path);
  return check_string(path, "version.author", v->author, false,
                      lim->max_string, err);
}

/* One scope key: a known kind and a 16-byte id. */
static int check_scope(const char *path, const Fieldsync__ScopeKey *k,
                       struct fsp_error *err) {
  int rc = check_enum(path, "kind", k->has_kind, (int)k->kind,
                      &fieldsync__scope_kind__descriptor, err);

  if (rc == 0)
    rc = check_id(path, "id", k->has_id, &k->id, err);
  return rc;
}

int fsp_scope_cmp(int akind, const uint8_t *aid, int bkind,
                  const uint8_t *bid) {
  if (akind != bkind)
    return akind < bkind ? -1 : 1;
  return memcmp(aid, bid, FSP_ID_LEN);
}

/* A list of scope keys: at most FSP_MAX_HELD_SCOPES, each valid and, when
 * sorted is set, in strictly ascending (kind, id) order. */
static int check_scopes(const char *path, const char *field,
                        Fieldsync__ScopeKey *const *k, size_t n, bool sorted,
                        struct fsp_error *err) {
  char p[96];
  size_t i;
  int rc = check_count(path, field, n, FSP_MAX_HELD_SCOPES, err);

  for (i = 0; rc == 0 && i < n; i++) {
    snprintf(p, sizeof(p), "%s.%s[%zu]", path, field, i);
    rc = check_scope(p, k[i], err);
    if (rc == 0 && sorted && i > 0 &&
        fsp_scope_cmp((int)k[i - 1]->kind, k[i - 1]->id.data, (int)k[i]->kind,
                      k[i]->id.data) >= 0)
      rc = fsp_error_set(err, FSP_EBAD_VALUE,
                         "%s: not after the previous scope (sorted, no "
                         "duplicates)",
                         p);
  }
  return rc;
}

static int check_pull(const Fieldsync__Pull *pl, struct fsp_error *err) {
  int rc;

  if (!pl->has_cursor)
    return fsp_error_set(err, FSP_EMISSING, "pull.cursor: missing");
  if (pl->has_max_records && pl->max_records == 0)
    return fsp_error_set(err, FSP_EBAD_VALUE, "pull.max_records: zero");
  rc = check_scopes("pull", "held_scopes", pl->held_scopes, pl->n_held_scopes,
                    true, err);
  if (rc == 0 && pl->backfill_scope != NULL)
    rc = check_scope("pull.backfill_scope", pl->backfill_scope, err);
  if (rc == 0 && pl->has_backfill_after && pl->backfill_scope == NULL)
    rc = fsp_error_set(err, FSP_EBAD_VALUE,
                       "pull.backfill_after: set without backfill_scope");
  return rc;
}

int fsp_msg_validate_change(const Fieldsync__Change *c,
                            const struct fsp_limits *lim, bool from_server,
                            const char *path, struct fsp_error *err) {
  char p[96];
  int rc;

  rc = check_key(path, c->key, err);
  if (rc != 0)
    return rc;
  if (c->scope == NULL)
    return fsp_error_set(err, FSP_EMISSING, "%s.scope: missing", path);
  snprintf(p, sizeof(p), "%s.scope", path);
  rc = check_enum(p, "kind", c->scope->has_kind, (int)c->scope->kind,
                  &fieldsync__scope_kind__descriptor, err);
  if (rc == 0)
    rc = check_id(p, "id", c->scope->has_id, &c->scope->id, err);
  if (rc == 0)
    rc = check_version(path, c->version, lim, err);
  if (rc != 0)
    return rc;
  if (from_server && !c->has_seq)
    return fsp_error_set(err, FSP_EMISSING, "%s.seq: missing", path);
  if (!from_server && c->has_seq)
    return fsp_error_set(err, FSP_EBAD_VALUE,
                         "%s.seq: set by the server only", path);
  return 0;
}

static int check_changes(const char *path, Fieldsync__Change *const *c,
                         size_t n, const struct fsp_limits *lim,
                         bool from_server, struct fsp_error *err) {
  char p[64];
  size_t i;
  int rc;

  rc = check_count(path, "changes", n, lim->max_batch, err);
  for (i = 0; rc == 0 && i < n; i++) {
    snprintf(p, sizeof(p), "%s.changes[%zu]", path, i);
    rc = fsp_msg_validate_change(c[i], lim, from_server, p, err);
  }
  return rc;
}

static int check_hello(const Fieldsync__Hello *m, const struct fsp_limits *lim,
                       struct fsp_error *err) {
  int rc;

  if (!m->has_protocol_version)
    return fsp_error_set(err, FSP_EMISSING, "hello.protocol_version: missing");
  if (m->protocol_version != FSP_PROTOCOL_VERSION)
    return fsp_error_set(err, FSP_EVERSION,
                         "hello.protocol_version: %u, this side speaks %u",
                         m->protocol_version, FSP_PROTOCOL_VERSION);
  rc = check_id("hello", "replica_id", m->has_replica_id, &m->replica_id, err);
  if (rc == 0)
    rc = check_string("hello", "device_token", m->device_token, false,
                      lim->max_string, err);
  if (rc == 0)
    rc = check_string("hello", "client_version", m->client_version, false,
                      lim->max_string, err);
  return rc;
}

static int check_welcome(const Fieldsync__Welcome *m,
                         const struct fsp_limits *lim, struct fsp_error *err) {
  int rc;

  rc = check_id("welcome", "server_id", m->has_server_id, &m->server_id, err);
  if (rc == 0)
    rc = check_string("welcome", "user", m->user, true, lim->max_string, err);
  if (rc == 0)
    rc = check_enum("welcome", "role", m->has_role, (int)m->role,
                    &fieldsync__role__descriptor, err);
  if (rc == 0)
    rc = check_string("welcome", "server_version", m->server_version, false,
                      lim->max_string, err);
  return rc;
}

static int check_push_ack(const Fieldsync__PushAck *m,
                          const struct fsp_limits *lim, struct fsp_error *err) {
  char p[64];
  size_t i;
  int rc;

  if (!m->has_batch_id)
    return fsp_error_set(err, FSP_EMISSING, "push_ack.batch_id: missing");
  rc = check_count("push_ack", "outcomes", m->n_outcomes, lim->max_batch, err);
  for (i = 0; rc == 0 && i < m->n_outcomes; i++) {
    const Fieldsync__RecordOutcome *o = m->outcomes[i];
    snprintf(p, sizeof(p), "push_ack.outcomes[%zu]", i);
    rc = check_key(p, o->key, err);
    if (rc == 0 && !o->has_hash)
      rc = fsp_error_set(err, FSP_EMISSING, "%s.hash: missing", p);
    if (rc == 0 && o->hash.len != FSP_HASH_LEN)
      rc = fsp_error_set(err, FSP_EBAD_HASH, "%s.hash: %zu bytes, want 32", p,
                         o->hash.len);
    if (rc == 0)
      rc = check_enum(p, "outcome", o->has_outcome, (int)o->outcome,
                      &fieldsync__outcome__descriptor, err);
    if (rc == 0 && o->outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED)
      rc = check_enum(p, "reason_code", o->has_reason_code,
                      (int)o->reason_code, &fieldsync__error_code__descriptor,
                      err);
    if (rc == 0)
      rc = check_string(p, "reason", o->reason, false, lim->max_string, err);
  }
  return rc;
}

static int check_changes_msg(const Fieldsync__Changes *ch,
                             const struct fsp_limits *lim,
                             struct fsp_error *err) {
  int rc;

  if (!ch->has_next_cursor)
    return fsp_error_set(err, FSP_EMISSING, "changes.next_cursor: missing");
  rc = check_scopes("changes", "removed_scopes", ch->removed_scopes,
                    ch->n_removed_scopes, false, err);
  if (rc == 0 && ch->backfill_scope != NULL)
    rc = check_scope("changes.backfill_scope", ch->backfill_scope, err);
  if (rc == 0 && ch->backfill_scope == NULL &&
      (ch->has_backfill_next || ch->has_backfill_done))
    rc = fsp_error_set(err, FSP_EBAD_VALUE,
                       "changes.backfill_next/done: set without "
                       "backfill_scope");
  if (rc == 0)
    rc = check_changes("changes", ch->changes, ch->n_changes, lim, true, err);
  return rc;
}

int fsp_msg_validate(const Fieldsync__Envelope *env,
                     const struct fsp_limits *lim, struct fsp_error *err) {
  if (!env->has_protocol_version)
    return fsp_error_set(err, FSP_EMISSING,
                         "envelope.protocol_version: missing");
  if (env->protocol_version != FSP_PROTOCOL_VERSION)
    return fsp_error_set(err, FSP_EVERSION,
                         "envelope.protocol_version: %u, this side speaks %u",
                         env->protocol_version, FSP_PROTOCOL_VERSION);
  switch (env->body_case) {
  case FIELDSYNC__ENVELOPE__BODY_HELLO:
    return check_hello(env->hello, lim, err);
  case FIELDSYNC__ENVELOPE__BODY_WELCOME:
    return check_welcome(env->welcome, lim, err);
  case FIELDSYNC__ENVELOPE__BODY_PUSH:
    if (!env->push->has_batch_id)
      return fsp_error_set(err, FSP_EMISSING, "push.batch_id: missing");
    return check_changes("push", env->push->changes, env->push->n_changes, lim,
                         false, err);
  case FIELDSYNC__ENVELOPE__BODY_PUSH_ACK:
    return check_push_ack(env->push_ack, lim, err);
  case FIELDSYNC__ENVELOPE__BODY_PULL:
    return check_pull(env->pull, err);
  case FIELDSYNC__ENVELOPE__BODY_CHANGES:
    return check_changes_msg(env->changes, lim, err);
  case FIELDSYNC__ENVELOPE__BODY_ERROR:
    {
      int rc = check_enum("error", "code", env->error->has_code,
                          (int)env->error->code,
                          &fieldsync__error_code__descriptor, err);
      if (rc == 0)
        rc = check_string("error", "message", env->error->message, false,
                          lim->max_string, err);
      return rc;
    }
  case FIELDSYNC__ENVELOPE__BODY_BYE:
    return check_string("bye", "reason", env->bye->reason, false,
                        lim->max_string, err);
  default:
    return fsp_error_set(err, FSP_ENO_BODY, "envelope: no body");
  }
}

/* Reads a varint from p[*off..len); false when it is cut short or longer
 * than ten bytes. */
static bool scan_varint(const uint8_t *p, size_t len, size_t *off,
                        uint64_t *v) {
  unsigned i;

  *v = 0;
  for (i = 0; i < 10 && *off < len; i++) {
    *v |= (uint64_t)(p[*off] & 0x7f) << (7 * i);
    if ((p[(*off)++] & 0x80) == 0)
      return true;
  }
  return false;
}

/* Protobuf merges a singular message field (not repeated, not in a oneof)
 * that appears more than once in one message, and protobuf-c merges by
 * copying every repeated field gathered so far: n copies of Change.version
 * would cost O(n^2) time inside the byte budget (minutes for one 4 MiB
 * frame, on the thread that decodes). No sender has a reason to repeat
 * such a field, so it is refused before unpacking. Walks p[0..len) as a
 * message of type d through the known message fields (the schema bounds
 * the depth: no message is recursive) and returns the first singular
 * message field seen twice, or NULL. Bytes that are not well-formed are
 * left to the decoder to refuse. */
static const ProtobufCFieldDescriptor *
repeated_singular(const ProtobufCMessageDescriptor *d, const uint8_t *p,
                  size_t len) {
  uint64_t seen = 0;
  size_t off = 0;

  while (off < len) {
    const ProtobufCFieldDescriptor *f;
    const ProtobufCFieldDescriptor *dup;
    uint64_t tag;
    uint64_t n;

    if (!scan_varint(p, len, &off, &tag))
      return NULL;
    if ((tag & 7) == PROTOBUF_C_WIRE_TYPE_VARINT) {
      if (!scan_varint(p, len, &off, &n))
        return NULL;
      continue;
    }
    if ((tag & 7) == PROTOBUF_C_WIRE_TYPE_64BIT ||
        (tag & 7) == PROTOBUF_C_WIRE_TYPE_32BIT) {
      n = (tag & 7) == PROTOBUF_C_WIRE_TYPE_64BIT ? 8 : 4;
      if (n > len - off)
        return NULL;
      off += (size_t)n;
      continue;
    }
    if ((tag & 7) != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED ||
        !scan_varint(p, len, &off, &n) || n > len - off)
      return NULL;
    f = tag >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(
                                     d, (unsigned)(tag >> 3))
                               : NULL;
    if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
      size_t i = (size_t)(f - d->fields);

      if (f->label != PROTOBUF_C_LABEL_REPEATED &&
          (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) == 0 && i < 64) {
        if ((seen & (UINT64_C(1) << i)) != 0)
          return f;
        seen |= UINT64_C(1) << i;
      }
      dup = repeated_singular(f->descriptor, p + off, (size_t)n);
      if (dup != NULL)
        return dup;
    }
    off += (size_t)n;
  }
  return NULL;
}

int fsp_msg_decode(struct fsp_msg *m, const uint8_t *buf, size_t len,
                   const struct fsp_limits *lim, struct fsp_error *err) {
  const ProtobufCFieldDescriptor *dup;
  int rc;

  m->env = NULL;
  fsp_budget_init(&m->budget, lim->budget);
  if (len > lim->max_frame)
    return fsp_error_set(err, FSP_EFRAME_TOO_BIG,
                         "frame: %zu bytes, limit %u", len, lim->max_frame);
  dup = repeated_singular(&fieldsync__envelope__descriptor, buf, len);
  if (dup != NULL)
    return fsp_error_set(err, FSP_EDECODE,
                         "envelope: %s appears more than once in one message",
                         dup->name);
  m->env = fieldsync__envelope__unpack(&m->budget.pc, len, buf);
  if (m->env == NULL) {
    if (m->budget.exceeded)
      return fsp_error_set(err, FSP_EBUDGET,
                           "envelope: needs more than %zu bytes to decode",
                           lim->budget);
    /* protobuf-c does not tell an allocation failure from bad bytes, so
     * the budget allocator records which one it was. */
    if (m->budget.nomem)
      return fsp_error_set(err, FSP_ENOMEM, "envelope: out of memory");
    return fsp_error_set(err, FSP_EDECODE,
                         "envelope: not a valid protobuf Envelope");
  }
  rc = fsp_msg_validate(m->env, lim, err);
  if (rc != 0)
    fsp_msg_close(m);
  return rc;
}

void fsp_msg_move(struct fsp_msg *dst, struct fsp_msg *src) {
  *dst = *src;
  dst->budget.pc.allocator_data = &dst->budget;
  src->env = NULL;
}

void fsp_msg_close(struct fsp_msg *m) {
  if (m->env != NULL) {
    fieldsync__envelope__free_unpacked(m->env, &m->budget.pc);
    m->env = NULL;
  }
}

int fsp_msg_encode_frame(Fieldsync__Envelope *env, uint32_t max_frame,
                         uint8_t **out, size_t *len) {
  size_t body;
  uint8_t *buf;

  *out = NULL;
  *len = 0;
  if (!env->has_protocol_version) {
    env->has_protocol_version = true;
    env->protocol_version = FSP_PROTOCOL_VERSION;
  }
  body = fieldsync__envelope__get_packed_size(env);
  if (body == 0 || body > max_frame)
    return body == 0 ? FSP_EFRAME_EMPTY : FSP_EFRAME_TOO_BIG;
  buf = fsp_malloc(FSP_FRAME_HEADER + body);
  if (buf == NULL)
    return FSP_ENOMEM;
  fsp_frame_header((uint32_t)body, buf);
  fieldsync__envelope__pack(env, buf + FSP_FRAME_HEADER);
  *out = buf;
  *len = FSP_FRAME_HEADER + body;
  return 0;
}
