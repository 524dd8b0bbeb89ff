/* SPDX-License-Identifier: MIT */
/* The record-state merge (a multi-value register over version vectors) and
 * the content hash that, with the vector, identifies a version. */
#include "fsp_merge.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* Sets every keep flag and the result for an incoming version that leaves
 * the state as it is (KNOWN or STALE). */
static void unchanged(size_t ncur, bool *keep, enum fsp_merge_outcome o,
                      struct fsp_merge_result *res) {
  size_t i;

  for (i = 0; i < ncur; i++)
    keep[i] = true;
  res->outcome = o;
  res->add_incoming = false;
  res->removed = 0;
}

/* One pass over the state, one vector comparison per current version. An
 * incoming version that is already current (KNOWN) or that a current
 * version dominates (STALE) must leave the state unchanged whatever came
 * before it in the scan, so on finding one we reset every keep flag and
 * stop: the result is the same as scanning for KNOWN/STALE first, at half
 * the comparisons. */
void fsp_merge(const struct fsp_vref *cur, size_t ncur,
               const struct fsp_vref *incoming, bool *keep,
               struct fsp_merge_result *res) {
  bool reuse = false;
  bool any_kept = false;
  size_t removed = 0;
  size_t i;

  for (i = 0; i < ncur; i++) {
    enum fsp_vv_order o = fsp_vv_compare(incoming->vv, cur[i].vv);

    switch (o) {
    case FSP_VV_EQUAL:
      if (memcmp(incoming->hash, cur[i].hash, FSP_HASH_LEN) == 0) {
        unchanged(ncur, keep, FSP_MERGE_KNOWN, res);
        return;
      }
      /* Same vector, other content: a reused replica id. Keep both. */
      reuse = true;
      keep[i] = true;
      any_kept = true;
      break;
    case FSP_VV_DOMINATED:
      unchanged(ncur, keep, FSP_MERGE_STALE, res);
      return;
    case FSP_VV_DOMINATES:
      keep[i] = false;
      removed++;
      break;
    case FSP_VV_CONCURRENT:
      keep[i] = true;
      any_kept = true;
      break;
    }
  }

  res->add_incoming = true;
  res->removed = removed;
  if (reuse)
    res->outcome = FSP_MERGE_REUSE;
  else if (any_kept)
    res->outcome = FSP_MERGE_CONFLICT;
  else if (ncur == 0)
    res->outcome = FSP_MERGE_NEW;
  else
    res->outcome = FSP_MERGE_SUPERSEDED;
}

const char *fsp_merge_outcome_name(enum fsp_merge_outcome o) {
  switch (o) {
  case FSP_MERGE_NEW:
    return "new";
  case FSP_MERGE_KNOWN:
    return "known";
  case FSP_MERGE_SUPERSEDED:
    return "superseded";
  case FSP_MERGE_STALE:
    return "stale";
  case FSP_MERGE_CONFLICT:
    return "conflict";
  case FSP_MERGE_REUSE:
    return "reuse";
  }
  return "unknown";
}

/* SHA-256 over the tombstone flag byte and then the payload. The streaming
 * EVP calls hash the payload where it lies; the one-shot EVP_Digest takes a
 * single buffer and would need a copy of the payload behind the flag byte.
 * OpenSSL can still fail here (it allocates the context), and this function
 * has no way to report that: we abort rather than hand back a wrong hash,
 * since a wrong hash could make two different versions look the same. */
void fsp_merge_hash(bool deleted, const uint8_t *payload, size_t len,
                    uint8_t out[FSP_HASH_LEN]) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  unsigned char flag = deleted ? 1 : 0;
  unsigned int outlen = 0;

  if (ctx == NULL)
    goto fail;
  if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
    goto fail;
  if (EVP_DigestUpdate(ctx, &flag, 1) != 1)
    goto fail;
  if (len > 0 && EVP_DigestUpdate(ctx, payload, len) != 1)
    goto fail;
  if (EVP_DigestFinal_ex(ctx, out, &outlen) != 1)
    goto fail;
  assert(outlen == FSP_HASH_LEN);
  EVP_MD_CTX_free(ctx);
  return;

fail:
  EVP_MD_CTX_free(ctx);
  abort();
}
