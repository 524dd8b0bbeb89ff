/* SPDX-License-Identifier: MIT */
/* The record-state merge of DESIGN.md section 2 as a pure function: a
 * multi-value register. The state of a record is the set of its maximal
 * versions under version-vector dominance; merging an incoming version gives
 * max(state + incoming). Versions are identified by (vector, content hash):
 * equal vector and equal hash is the same version (idempotent); equal vector
 * with a different hash means a replica id was reused, and both are kept.
 * The merge is commutative, associative and idempotent. */
#ifndef FSP_MERGE_H
#define FSP_MERGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fsp_vv.h"

#define FSP_HASH_LEN 32u

/* What the merge needs to know of a version: its vector and content hash.
 * The caller keeps payloads and metadata alongside. */
struct fsp_vref {
  const struct fsp_vv *vv;
  const uint8_t *hash; /* FSP_HASH_LEN bytes */
};

enum fsp_merge_outcome {
  FSP_MERGE_NEW = 1,        /* no current versions; incoming is the state */
  FSP_MERGE_KNOWN = 2,      /* incoming is already a current version */
  FSP_MERGE_SUPERSEDED = 3, /* incoming replaced every current version */
  FSP_MERGE_STALE = 4,      /* a current version dominates incoming */
  FSP_MERGE_CONFLICT = 5,   /* incoming is kept beside concurrent siblings */
  FSP_MERGE_REUSE = 6       /* equal vector, different hash: both kept */
};

struct fsp_merge_result {
  enum fsp_merge_outcome outcome;
  bool add_incoming;  /* incoming joins the state */
  size_t removed;     /* how many current versions it superseded */
};

/* Merges incoming into the current state cur[0..ncur). keep must have room
 * for ncur flags; keep[i] says whether cur[i] stays in the state. The new
 * state is { cur[i] : keep[i] } plus incoming when res->add_incoming.
 * cur must itself be a valid state (no version dominating another).
 * Never allocates; cannot fail. */
void fsp_merge(const struct fsp_vref *cur, size_t ncur,
               const struct fsp_vref *incoming, bool *keep,
               struct fsp_merge_result *res);

/* Name of an outcome, e.g. "conflict". */
const char *fsp_merge_outcome_name(enum fsp_merge_outcome o);

/* The content hash of a version: SHA-256 over one byte (1 for a tombstone,
 * 0 otherwise) followed by the payload bytes. out gets FSP_HASH_LEN bytes. */
void fsp_merge_hash(bool deleted, const uint8_t *payload, size_t len,
                    uint8_t out[FSP_HASH_LEN]);

#endif
