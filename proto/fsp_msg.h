/* SPDX-License-Identifier: MIT */
/* Envelope decoding and validation: protobuf-c unpack under a byte budget,
 * then semantic checks, each failure a stable FSP_E* code with a message
 * naming the offending field. Also the encoder from Envelope to frame. */
#ifndef FSP_MSG_H
#define FSP_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fieldsync.pb-c.h"
#include "fsp_alloc.h"
#include "fsp_err.h"
#include "fsp_vv.h"

/* The protocol version this code speaks (Envelope and Hello). */
#define FSP_PROTOCOL_VERSION 1u

/* Defaults; a server may lower them and announces its values in Welcome. */
#define FSP_DEFAULT_MAX_BATCH 4096u
#define FSP_DEFAULT_MAX_PAYLOAD (1024u * 1024u)
#define FSP_DEFAULT_MAX_STRING 4096u
/* Scope keys in one Pull.held_scopes or Changes.removed_scopes. */
#define FSP_MAX_HELD_SCOPES 4096u

struct fsp_limits {
  uint32_t max_frame;   /* frame body bytes */
  uint32_t max_batch;   /* changes per Push/Changes, outcomes per PushAck */
  uint32_t max_vv;      /* entries per version vector */
  uint32_t max_payload; /* bytes of one version's payload */
  uint32_t max_string;  /* bytes of a session string (token, reason, ...) */
  size_t budget;        /* bytes one unpack may allocate */
};

/* Fills l with the defaults above (budget: 8 x max_frame + 64 KiB). */
void fsp_limits_default(struct fsp_limits *l);

/* A decoded envelope and the budget allocator that owns its memory. */
struct fsp_msg {
  Fieldsync__Envelope *env; /* NULL when nothing is decoded */
  struct fsp_budget budget;
};

/* Unpacks buf (one frame body) under lim->budget and validates it.
 * On success m->env is set; release with fsp_msg_close. On failure m->env
 * is NULL, err says why (FSP_EDECODE, FSP_EBUDGET, FSP_ENOMEM or any
 * validation code) and the code is returned. */
int fsp_msg_decode(struct fsp_msg *m, const uint8_t *buf, size_t len,
                   const struct fsp_limits *lim, struct fsp_error *err);
/* Frees m->env. Safe on a zeroed or already-closed m. */
void fsp_msg_close(struct fsp_msg *m);
/* Moves a decoded message to dst (which takes ownership) and empties src.
 * Never copy a struct fsp_msg by assignment: its allocator points at its
 * own budget, so a copy would free through the old struct. */
void fsp_msg_move(struct fsp_msg *dst, struct fsp_msg *src);

/* Checks a decoded envelope against the rules of PROTOCOL.md. */
int fsp_msg_validate(const Fieldsync__Envelope *env,
                     const struct fsp_limits *lim, struct fsp_error *err);

/* Orders scope keys by (kind, id), as Pull.held_scopes is sorted:
 * negative, zero or positive like memcmp. Ids are 16 bytes. */
int fsp_scope_cmp(int akind, const uint8_t *aid, int bkind,
                  const uint8_t *bid);

/* Checks one change. from_server: the change comes from a Changes message
 * and must carry a seq; otherwise (Push) it must not. path prefixes err. */
int fsp_msg_validate_change(const Fieldsync__Change *c,
                            const struct fsp_limits *lim, bool from_server,
                            const char *path, struct fsp_error *err);

/* Encodes env as one frame (4-byte length + body) in a new fsp_malloc
 * buffer owned by the caller. Sets env's protocol_version if unset.
 * Returns 0, FSP_EFRAME_TOO_BIG (body over max_frame) or FSP_ENOMEM. */
int fsp_msg_encode_frame(Fieldsync__Envelope *env, uint32_t max_frame,
                         uint8_t **out, size_t *len);

/* Converts between wire vector entries and struct fsp_vv. to_vv validates
 * like fsp_msg_validate_change does (sorted, 16-byte ids, counters >= 1,
 * at most max_entries); v must be initialised. */
int fsp_msg_vv_from_pb(struct fsp_vv *v, Fieldsync__VvEntry *const *e,
                       size_t n, size_t max_entries, struct fsp_error *err);
/* Fills a caller-provided array of n entries (and n pointers) from v; the
 * entries point into v's memory, so v must outlive them. */
void fsp_msg_vv_to_pb(const struct fsp_vv *v, Fieldsync__VvEntry *entries,
                      Fieldsync__VvEntry **ptrs);

/* True when s[0..n) is strict UTF-8: no overlong forms, no surrogates,
 * nothing past U+10FFFF. Every string the protocol carries must be. */
bool fsp_msg_utf8_valid(const char *s, size_t n);

/* Name of a body case, e.g. "hello"; "none" for an unset body. */
const char *fsp_msg_body_name(const Fieldsync__Envelope *env);

#endif
