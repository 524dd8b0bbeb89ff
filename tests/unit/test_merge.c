/* SPDX-License-Identifier: MIT */
/* Unit tests for proto/fsp_merge.c: every merge outcome by hand, the content
 * hash, and the seeded convergence property: any order and duplication of a
 * random history's versions merges to the same set, its maximal elements. */
#include "harness.h"

#include "fsp_merge.h"
#include "fsp_vv.h"

/* --- hand-written cases -------------------------------------------------- */

enum { RA, RB, RC, NAMED };

static const uint8_t named_ids[NAMED][FSP_ID_LEN] = {
    {0xaa, 1}, {0xbb, 2}, {0xcc, 3}};

struct pr {
  int id;
  uint64_t c;
};

/* A version: a vector and a content hash. */
struct ver {
  struct fsp_vv vv;
  uint8_t hash[FSP_HASH_LEN];
};

/* Builds ver (vector from {replica, counter} pairs, hash of label). */
#define MKVER(v, label, ...)                                                   \
  mkver((v), (label), (const struct pr[]){__VA_ARGS__},                        \
        sizeof((const struct pr[]){__VA_ARGS__}) / sizeof(struct pr))

static void mkver(struct ver *v, const char *label, const struct pr *p,
                  size_t n) {
  size_t i;

  fsp_vv_init(&v->vv);
  for (i = 0; i < n; i++)
    ASSERT_OK(fsp_vv_set(&v->vv, named_ids[p[i].id], p[i].c));
  fsp_merge_hash(false, (const uint8_t *)label, strlen(label), v->hash);
}

static void closever(struct ver *v, size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    fsp_vv_close(&v[i].vv);
}

#define MAXH 8

/* Runs fsp_merge of in into cur[0..n), with keep and res pre-filled with
 * garbage that fsp_merge must overwrite. */
static void merge_vers(const struct ver *cur, size_t n, const struct ver *in,
                       bool *keep, struct fsp_merge_result *res) {
  struct fsp_vref refs[MAXH];
  struct fsp_vref iref;
  size_t i;

  ASSERT_LE(n, MAXH);
  for (i = 0; i < n; i++) {
    refs[i].vv = &cur[i].vv;
    refs[i].hash = cur[i].hash;
    keep[i] = (i % 2) == 0;
  }
  iref.vv = &in->vv;
  iref.hash = in->hash;
  memset(res, 0xa5, sizeof(*res));
  fsp_merge(refs, n, &iref, keep, res);
}

static void assert_unchanged(const bool *keep, size_t n,
                             const struct fsp_merge_result *res) {
  size_t i;

  ASSERT(!res->add_incoming);
  ASSERT_EQ(res->removed, 0);
  for (i = 0; i < n; i++)
    ASSERT(keep[i]);
}

TEST(merge_new) {
  struct ver in;
  struct fsp_merge_result res;
  bool keep[1];

  MKVER(&in, "first", {RA, 1});
  merge_vers(NULL, 0, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_NEW);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 0);
  closever(&in, 1);
}

TEST(merge_known) {
  struct ver cur[2];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[2];

  /* The same version again, as separate objects. */
  MKVER(&cur[0], "x", {RA, 1}, {RB, 2});
  MKVER(&in, "x", {RB, 2}, {RA, 1});
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_KNOWN);
  assert_unchanged(keep, 1, &res);

  /* Known as the second of two siblings. */
  MKVER(&cur[1], "y", {RC, 1});
  closever(&in, 1);
  MKVER(&in, "y", {RC, 1});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_KNOWN);
  assert_unchanged(keep, 2, &res);

  closever(cur, 2);
  closever(&in, 1);
}

TEST(merge_superseded) {
  struct ver cur[2];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[2];

  MKVER(&cur[0], "old", {RA, 1});
  MKVER(&in, "new", {RA, 2});
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_SUPERSEDED);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 1);
  ASSERT(!keep[0]);
  closever(&in, 1);

  /* Equal counters, one more replica. */
  MKVER(&in, "new", {RA, 1}, {RC, 1});
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_SUPERSEDED);
  ASSERT_EQ(res.removed, 1);
  ASSERT(!keep[0]);
  closever(&in, 1);

  /* One version that has seen both siblings. */
  MKVER(&cur[1], "other", {RB, 1});
  MKVER(&in, "both", {RA, 1}, {RB, 3});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_SUPERSEDED);
  ASSERT_EQ(res.removed, 2);
  ASSERT(!keep[0]);
  ASSERT(!keep[1]);

  closever(cur, 2);
  closever(&in, 1);
}

TEST(merge_stale) {
  struct ver cur[2];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[2];

  MKVER(&cur[0], "new", {RA, 2});
  MKVER(&in, "old", {RA, 1});
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_STALE);
  assert_unchanged(keep, 1, &res);
  closever(&in, 1);

  /* Dominated by the second sibling, concurrent with the first. */
  MKVER(&cur[1], "b", {RB, 4}, {RC, 1});
  MKVER(&in, "b-old", {RB, 3});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_STALE);
  assert_unchanged(keep, 2, &res);

  /* An old vector with a new hash is still stale: dominance decides. */
  closever(&in, 1);
  MKVER(&in, "b", {RB, 1});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_STALE);
  assert_unchanged(keep, 2, &res);

  closever(cur, 2);
  closever(&in, 1);
}

TEST(merge_conflict) {
  struct ver cur[2];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[2];

  /* Two-way. */
  MKVER(&cur[0], "a", {RA, 1});
  MKVER(&in, "b", {RB, 1});
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_CONFLICT);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 0);
  ASSERT(keep[0]);
  closever(&in, 1);

  /* Three-way: a third concurrent edit joins two siblings. */
  MKVER(&cur[1], "b", {RB, 1});
  MKVER(&in, "c", {RC, 1});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_CONFLICT);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 0);
  ASSERT(keep[0]);
  ASSERT(keep[1]);
  closever(&in, 1);

  /* Concurrent with shared history: all three edited after seeing A:1. */
  closever(cur, 2);
  closever(&in, 1);
  MKVER(&cur[0], "a2", {RA, 2}, {RB, 1});
  MKVER(&cur[1], "c2", {RA, 1}, {RC, 1});
  MKVER(&in, "b2", {RA, 1}, {RB, 2});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_CONFLICT);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 0);
  ASSERT(keep[0]);
  ASSERT(keep[1]);

  closever(cur, 2);
  closever(&in, 1);
}

TEST(merge_dominates_one_concurrent_with_other) {
  struct ver cur[2];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[2];

  MKVER(&cur[0], "a", {RA, 1});
  MKVER(&cur[1], "b", {RB, 1});
  MKVER(&in, "a2", {RA, 2});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_CONFLICT);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 1);
  ASSERT(!keep[0]);
  ASSERT(keep[1]);

  /* The same with the dominated sibling second. */
  closever(&in, 1);
  MKVER(&in, "b2", {RB, 1}, {RC, 1});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_CONFLICT);
  ASSERT_EQ(res.removed, 1);
  ASSERT(keep[0]);
  ASSERT(!keep[1]);

  closever(cur, 2);
  closever(&in, 1);
}

TEST(merge_reuse) {
  struct ver cur[2];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[2];

  MKVER(&cur[0], "from the original", {RA, 3}, {RB, 1});
  MKVER(&in, "from a restored backup", {RA, 3}, {RB, 1});
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_REUSE);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 0);
  ASSERT(keep[0]);

  /* REUSE wins over CONFLICT when a concurrent sibling is also there. */
  MKVER(&cur[1], "concurrent", {RC, 1});
  merge_vers(cur, 2, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_REUSE);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 0);
  ASSERT(keep[0]);
  ASSERT(keep[1]);

  /* Hashes that differ in their last byte only are different versions. */
  memcpy(in.hash, cur[0].hash, FSP_HASH_LEN);
  in.hash[FSP_HASH_LEN - 1] ^= 0x80;
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_REUSE);
  in.hash[FSP_HASH_LEN - 1] ^= 0x80;
  merge_vers(cur, 1, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_KNOWN);

  closever(cur, 2);
  closever(&in, 1);
}

TEST(merge_resolution_supersedes_siblings) {
  struct ver cur[4];
  struct ver res_ver;
  struct fsp_merge_result res;
  bool keep[4];
  size_t i;

  /* Three concurrent siblings plus a replica-id reuse pair. */
  MKVER(&cur[0], "a", {RA, 2}, {RB, 1});
  MKVER(&cur[1], "b", {RA, 1}, {RB, 2});
  MKVER(&cur[2], "c", {RC, 1});
  MKVER(&cur[3], "c again", {RC, 1});

  /* Resolution: join of all siblings, plus one on the resolving replica. */
  fsp_vv_init(&res_ver.vv);
  for (i = 0; i < 4; i++)
    ASSERT_OK(fsp_vv_join(&res_ver.vv, &cur[i].vv));
  ASSERT_OK(fsp_vv_increment(&res_ver.vv, named_ids[RB]));
  fsp_merge_hash(false, (const uint8_t *)"merged", 6, res_ver.hash);

  merge_vers(cur, 4, &res_ver, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_SUPERSEDED);
  ASSERT(res.add_incoming);
  ASSERT_EQ(res.removed, 4);
  for (i = 0; i < 4; i++)
    ASSERT(!keep[i]);

  /* And every sibling arriving afterwards is stale. */
  for (i = 0; i < 4; i++) {
    merge_vers(&res_ver, 1, &cur[i], keep, &res);
    ASSERT_EQ(res.outcome, FSP_MERGE_STALE);
    assert_unchanged(keep, 1, &res);
  }

  closever(cur, 4);
  closever(&res_ver, 1);
}

/* KNOWN and STALE leave the state alone even when the scan has already met
 * versions that incoming dominates. Such a state breaks fsp_merge's
 * precondition (one current version dominates another), which is exactly
 * why the precedence must hold. */
TEST(merge_known_stale_take_precedence) {
  struct ver cur[3];
  struct ver in;
  struct fsp_merge_result res;
  bool keep[3];

  MKVER(&cur[0], "low", {RA, 1});
  MKVER(&cur[1], "mid", {RA, 2});
  MKVER(&cur[2], "high", {RA, 3});
  MKVER(&in, "mid", {RA, 2});
  merge_vers(cur, 3, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_KNOWN);
  assert_unchanged(keep, 3, &res);

  closever(&in, 1);
  MKVER(&in, "other mid", {RA, 2});
  merge_vers(cur, 3, &in, keep, &res);
  ASSERT_EQ(res.outcome, FSP_MERGE_STALE);
  assert_unchanged(keep, 3, &res);

  closever(cur, 3);
  closever(&in, 1);
}

TEST(merge_outcome_names) {
  ASSERT_STR_EQ(fsp_merge_outcome_name(FSP_MERGE_NEW), "new");
  ASSERT_STR_EQ(fsp_merge_outcome_name(FSP_MERGE_KNOWN), "known");
  ASSERT_STR_EQ(fsp_merge_outcome_name(FSP_MERGE_SUPERSEDED), "superseded");
  ASSERT_STR_EQ(fsp_merge_outcome_name(FSP_MERGE_STALE), "stale");
  ASSERT_STR_EQ(fsp_merge_outcome_name(FSP_MERGE_CONFLICT), "conflict");
  ASSERT_STR_EQ(fsp_merge_outcome_name(FSP_MERGE_REUSE), "reuse");
  ASSERT_STR_EQ(fsp_merge_outcome_name((enum fsp_merge_outcome)0), "unknown");
}

static void unhex(const char *hex, uint8_t out[FSP_HASH_LEN]) {
  size_t i;

  ASSERT_EQ(strlen(hex), 2 * FSP_HASH_LEN);
  for (i = 0; i < FSP_HASH_LEN; i++) {
    char pair[3] = {hex[2 * i], hex[2 * i + 1], '\0'};

    out[i] = (uint8_t)strtoul(pair, NULL, 16);
  }
}

TEST(merge_hash) {
  uint8_t h[FSP_HASH_LEN];
  uint8_t h2[FSP_HASH_LEN];
  uint8_t want[FSP_HASH_LEN];
  static uint8_t big[3u << 20];
  size_t i;

  /* printf '\x00abc' | sha256sum */
  unhex("609f6e36d2405585188d5cfd761f407c7cc46a7d3f314c88270469dde315fcd1",
        want);
  memset(h, 0, sizeof(h));
  fsp_merge_hash(false, (const uint8_t *)"abc", 3, h);
  ASSERT_MEM_EQ(h, want, FSP_HASH_LEN);

  /* printf '\x01' | sha256sum: a tombstone, no payload. */
  unhex("4bf5122f344554c53bde2ebb8cd2b7e3d1600ad631c385a5d7cce23c7785459a",
        want);
  fsp_merge_hash(true, NULL, 0, h);
  ASSERT_MEM_EQ(h, want, FSP_HASH_LEN);

  /* printf '\x00' | sha256sum: an empty live payload differs from it. */
  unhex("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        want);
  fsp_merge_hash(false, (const uint8_t *)"", 0, h2);
  ASSERT_MEM_EQ(h2, want, FSP_HASH_LEN);
  ASSERT(memcmp(h, h2, FSP_HASH_LEN) != 0);

  /* The flag counts with a payload too. */
  fsp_merge_hash(true, (const uint8_t *)"abc", 3, h);
  fsp_merge_hash(false, (const uint8_t *)"abc", 3, h2);
  ASSERT(memcmp(h, h2, FSP_HASH_LEN) != 0);

  /* A payload of a few MiB is hashed in place, deterministically. */
  for (i = 0; i < (3u << 20); i++)
    big[i] = (uint8_t)(i * 131u);
  fsp_merge_hash(false, big, 3u << 20, h);
  fsp_merge_hash(false, big, 3u << 20, h2);
  ASSERT_MEM_EQ(h, h2, FSP_HASH_LEN);
  big[12345] ^= 1;
  fsp_merge_hash(false, big, 3u << 20, h2);
  ASSERT(memcmp(h, h2, FSP_HASH_LEN) != 0);
}

/* --- convergence property ------------------------------------------------
 * A case simulates a small history: 3-5 replicas editing (an edit joins the
 * vectors of the replica's current versions and increments its own entry),
 * partially syncing with each other (so edits are often concurrent), making
 * some tombstones, and now and then reusing a replica id (a version with
 * the vector of an existing one and another payload, or the same tombstone
 * again, which is then the same version). Every version made goes into the
 * universe. The universe is then applied to an empty state in random orders
 * with random duplication; each final state, as a set, must equal the set of
 * maximal versions computed by brute force. One more order applies two
 * halves to two states and then one state's versions to the other, as two
 * replicas syncing do. */

#define MAXR 5
#define MAXE 14
#define MAXU (2 * MAXE)
#define MAXM (3 * MAXU)

struct sim {
  uint64_t seed;
  uint64_t iter;
  uint64_t st;
  size_t nrep;
  uint8_t rid[MAXR][FSP_ID_LEN];
  struct ver u[MAXU];
  size_t nu;
  uint8_t enc[MAXU][MAXR * FSP_VV_ENTRY_BYTES];
  size_t enclen[MAXU];
  size_t rs[MAXR][MAXU]; /* each replica's state, as indices into u */
  size_t nrs[MAXR];
};

#define CHECK(s, cond)                                                         \
  do {                                                                         \
    if (!(cond))                                                               \
      test_fail(__FILE__, __LINE__,                                            \
                "seed %" PRIu64 " case %" PRIu64 ": %s "                       \
                "(FIELDSYNC_SEED=%" PRIu64 " repeats it)",                     \
                (s)->seed, (s)->iter, #cond, (s)->seed);                       \
  } while (0)

static size_t below(struct sim *s, size_t n) {
  return (size_t)test_rand_below(&s->st, n);
}

/* The merge rule stated the slow way, as the brief gives it: first look for
 * KNOWN/STALE over the whole state, then classify each version. */
static void oracle(const struct fsp_vref *cur, size_t n,
                   const struct fsp_vref *in, bool *keep,
                   struct fsp_merge_result *res) {
  enum fsp_vv_order o[MAXU];
  bool reuse = false;
  bool kept = false;
  size_t i;

  for (i = 0; i < n; i++)
    o[i] = fsp_vv_compare(in->vv, cur[i].vv);
  for (i = 0; i < n; i++)
    keep[i] = true;
  res->add_incoming = false;
  res->removed = 0;
  for (i = 0; i < n; i++) {
    if (o[i] == FSP_VV_EQUAL &&
        memcmp(in->hash, cur[i].hash, FSP_HASH_LEN) == 0) {
      res->outcome = FSP_MERGE_KNOWN;
      return;
    }
  }
  for (i = 0; i < n; i++) {
    if (o[i] == FSP_VV_DOMINATED) {
      res->outcome = FSP_MERGE_STALE;
      return;
    }
  }
  for (i = 0; i < n; i++) {
    keep[i] = o[i] != FSP_VV_DOMINATES;
    res->removed += !keep[i];
    kept = kept || keep[i];
    reuse = reuse || o[i] == FSP_VV_EQUAL;
  }
  res->add_incoming = true;
  res->outcome = reuse    ? FSP_MERGE_REUSE
                 : kept   ? FSP_MERGE_CONFLICT
                 : n == 0 ? FSP_MERGE_NEW
                          : FSP_MERGE_SUPERSEDED;
}

/* Merges u[x] into the state st[0..*n) with fsp_merge, checks the result
 * against the oracle, and updates the state. Returns the outcome. */
static enum fsp_merge_outcome apply(struct sim *s, size_t *st, size_t *n,
                                    size_t x) {
  struct fsp_vref cur[MAXU];
  struct fsp_vref in;
  bool keep[MAXU];
  bool okeep[MAXU];
  struct fsp_merge_result res;
  struct fsp_merge_result ores;
  size_t i;
  size_t m = 0;

  CHECK(s, *n <= MAXU);
  for (i = 0; i < *n; i++) {
    cur[i].vv = &s->u[st[i]].vv;
    cur[i].hash = s->u[st[i]].hash;
    keep[i] = i % 2 == 0; /* garbage fsp_merge must overwrite */
  }
  in.vv = &s->u[x].vv;
  in.hash = s->u[x].hash;
  fsp_merge(cur, *n, &in, keep, &res);
  oracle(cur, *n, &in, okeep, &ores);
  CHECK(s, res.outcome == ores.outcome);
  CHECK(s, res.add_incoming == ores.add_incoming);
  CHECK(s, res.removed == ores.removed);
  for (i = 0; i < *n; i++)
    CHECK(s, keep[i] == okeep[i]);

  for (i = 0; i < *n; i++)
    if (keep[i])
      st[m++] = st[i];
  CHECK(s, m + res.removed == *n);
  if (res.add_incoming) {
    CHECK(s, m < MAXU);
    st[m++] = x;
  }
  *n = m;
  return res.outcome;
}

/* Adds a version to the universe: vector vv (taken over), hash of a fresh
 * payload, or of an empty tombstone. Returns its index. */
static size_t add_version(struct sim *s, struct fsp_vv *vv, bool tombstone) {
  size_t x = s->nu++;
  uint8_t payload[16];

  CHECK(s, x < MAXU);
  s->u[x].vv = *vv;
  fsp_vv_init(vv);
  if (tombstone) {
    fsp_merge_hash(true, NULL, 0, s->u[x].hash);
  } else {
    memcpy(payload, &s->iter, 8);
    memcpy(payload + 8, &x, sizeof(x) < 8 ? sizeof(x) : 8);
    fsp_merge_hash(false, payload, sizeof(payload), s->u[x].hash);
  }
  CHECK(s, fsp_vv_encoded_size(&s->u[x].vv) <= sizeof(s->enc[x]));
  s->enclen[x] = fsp_vv_encoded_size(&s->u[x].vv);
  fsp_vv_encode(&s->u[x].vv, s->enc[x]);
  return x;
}

/* Replica r edits: the new version's vector joins those of r's current
 * versions and increments r's own entry, so it supersedes all r has. */
static void sim_edit(struct sim *s, size_t r) {
  struct fsp_vv vv;
  size_t before = s->nrs[r];
  enum fsp_merge_outcome o;
  size_t i;

  fsp_vv_init(&vv);
  for (i = 0; i < s->nrs[r]; i++)
    CHECK(s, fsp_vv_join(&vv, &s->u[s->rs[r][i]].vv) == 0);
  CHECK(s, fsp_vv_increment(&vv, s->rid[r]) == 0);
  o = apply(s, s->rs[r], &s->nrs[r], add_version(s, &vv, below(s, 8) == 0));
  CHECK(s, o == (before == 0 ? FSP_MERGE_NEW : FSP_MERGE_SUPERSEDED));
  CHECK(s, s->nrs[r] == 1);
}

/* r receives q's current versions: all of them, or about three in four. */
static void sim_sync(struct sim *s, size_t r, size_t q, bool all) {
  size_t take[MAXU];
  size_t nq = s->nrs[q];
  size_t i;

  if (q == r)
    return;
  memcpy(take, s->rs[q], nq * sizeof(take[0]));
  for (i = 0; i < nq; i++)
    if (all || below(s, 4) != 0)
      apply(s, s->rs[r], &s->nrs[r], take[i]);
}

/* Replica id reuse: r was restored from a backup and makes a version again
 * with the vector of one it has, with another payload or the same empty
 * tombstone (which makes it the very same version). */
static void sim_reuse(struct sim *s, size_t r) {
  struct fsp_vv vv;
  size_t base;

  if (s->nrs[r] == 0)
    return;
  base = s->rs[r][below(s, s->nrs[r])];
  fsp_vv_init(&vv);
  CHECK(s, fsp_vv_copy(&vv, &s->u[base].vv) == 0);
  apply(s, s->rs[r], &s->nrs[r], add_version(s, &vv, below(s, 2) == 0));
}

static void gen_history(struct sim *s) {
  size_t nev = 4 + below(s, MAXE - 4);
  size_t ev;
  size_t i;
  size_t j;

  s->nrep = 3 + below(s, MAXR - 2);
  for (i = 0; i < s->nrep; i++) {
    for (j = 0; j < FSP_ID_LEN; j++)
      s->rid[i][j] = (uint8_t)test_rand(&s->st);
    s->nrs[i] = 0;
  }
  s->nu = 0;

  sim_edit(s, below(s, s->nrep));
  for (ev = 1; ev < nev; ev++) {
    size_t r = below(s, s->nrep);
    size_t kind = below(s, 10);

    if (kind < 4) {
      sim_edit(s, r);
    } else if (kind < 7) {
      sim_sync(s, r, below(s, s->nrep), false);
    } else if (kind < 9) {
      for (i = 0; i < s->nrep; i++)
        sim_sync(s, r, i, true);
    } else {
      sim_reuse(s, r);
    }
  }
  /* A third of histories end with a resolution: one replica gathers
   * everything and edits, leaving a single maximal version. */
  if (below(s, 3) == 0) {
    size_t r = below(s, s->nrep);

    for (i = 0; i < s->nrep; i++)
      sim_sync(s, r, i, true);
    sim_edit(s, r);
  }
}

/* Orders versions by canonical vector encoding, then by hash. */
static int ver_cmp(const struct sim *s, size_t a, size_t b) {
  size_t la = s->enclen[a];
  size_t lb = s->enclen[b];
  int c = memcmp(s->enc[a], s->enc[b], la < lb ? la : lb);

  if (c != 0)
    return c;
  if (la != lb)
    return la < lb ? -1 : 1;
  return memcmp(s->u[a].hash, s->u[b].hash, FSP_HASH_LEN);
}

/* Sorts a set of indices (insertion sort: sets are small) and drops
 * entries equal in content. Returns the new size. */
static size_t canon_set(const struct sim *s, size_t *x, size_t n) {
  size_t i;
  size_t m = 0;

  for (i = 1; i < n; i++) {
    size_t v = x[i];
    size_t j = i;

    while (j > 0 && ver_cmp(s, x[j - 1], v) > 0) {
      x[j] = x[j - 1];
      j--;
    }
    x[j] = v;
  }
  for (i = 0; i < n; i++)
    if (m == 0 || ver_cmp(s, x[m - 1], x[i]) != 0)
      x[m++] = x[i];
  return m;
}

static bool same_set(const struct sim *s, const size_t *a, size_t na,
                     const size_t *b, size_t nb) {
  size_t i;

  if (na != nb)
    return false;
  for (i = 0; i < na; i++)
    if (ver_cmp(s, a[i], b[i]) != 0)
      return false;
  return true;
}

/* The maximal versions of the universe, by brute force. */
static size_t brute_max(const struct sim *s, size_t *out) {
  size_t n = 0;
  size_t i;
  size_t j;

  for (i = 0; i < s->nu; i++) {
    bool dominated = false;

    for (j = 0; j < s->nu && !dominated; j++)
      dominated = fsp_vv_compare(&s->u[j].vv, &s->u[i].vv) == FSP_VV_DOMINATES;
    if (!dominated)
      out[n++] = i;
  }
  return canon_set(s, out, n);
}

/* A random multiset of the universe (each version one to three times) in
 * random order. Returns its size. */
static size_t gen_order(struct sim *s, size_t *m) {
  size_t n = 0;
  size_t i;

  for (i = 0; i < s->nu; i++) {
    size_t copies = below(s, 2) == 0 ? 1 : 1 + below(s, 3);

    while (copies-- > 0)
      m[n++] = i;
  }
  for (i = n - 1; i > 0; i--) {
    size_t j = below(s, i + 1);
    size_t t = m[i];

    m[i] = m[j];
    m[j] = t;
  }
  return n;
}

TEST(merge_random_convergence) {
  static struct sim sim;
  struct sim *s = &sim;
  uint64_t cases = 10000 * test_scale();
  uint64_t reuse_seen = 0;
  uint64_t conflict_seen = 0;
  uint64_t hist[4] = {0, 0, 0, 0};

  s->seed = test_seed();
  s->st = s->seed;
  for (s->iter = 0; s->iter < cases; s->iter++) {
    size_t want[MAXU];
    size_t nwant;
    size_t order[MAXM];
    size_t norder;
    size_t st[MAXU];
    size_t nst;
    size_t st2[MAXU];
    size_t nst2;
    size_t k;
    size_t i;

    gen_history(s);
    nwant = brute_max(s, want);
    CHECK(s, nwant >= 1);
    conflict_seen += nwant > 1;
    hist[nwant < 4 ? nwant : 3]++;

    for (k = 0; k < 3; k++) {
      norder = gen_order(s, order);
      nst = 0;
      for (i = 0; i < norder; i++)
        reuse_seen += apply(s, st, &nst, order[i]) == FSP_MERGE_REUSE;
      nst = canon_set(s, st, nst);
      CHECK(s, same_set(s, st, nst, want, nwant));
    }

    /* Two replicas each see part of the history, then sync. */
    norder = gen_order(s, order);
    k = below(s, norder + 1);
    nst = 0;
    nst2 = 0;
    for (i = 0; i < norder; i++) {
      if (i < k)
        apply(s, st, &nst, order[i]);
      else
        apply(s, st2, &nst2, order[i]);
    }
    for (i = 0; i < nst2; i++)
      apply(s, st, &nst, st2[i]);
    nst = canon_set(s, st, nst);
    CHECK(s, same_set(s, st, nst, want, nwant));

    for (i = 0; i < s->nu; i++)
      fsp_vv_close(&s->u[i].vv);
  }
  /* The generator must actually produce the interesting cases. */
  CHECK(s, conflict_seen > cases / 10);
  CHECK(s, reuse_seen > 0);
  printf("# %" PRIu64 " cases; maximal sets of 1, 2, 3+ versions: %" PRIu64
         ", %" PRIu64 ", %" PRIu64 "; %" PRIu64 " reuse merges\n",
         cases, hist[1], hist[2], hist[3], reuse_seen);
}

/* clang-format off */
TEST_LIST(
  TEST_ENTRY(merge_new)
  TEST_ENTRY(merge_known)
  TEST_ENTRY(merge_superseded)
  TEST_ENTRY(merge_stale)
  TEST_ENTRY(merge_conflict)
  TEST_ENTRY(merge_dominates_one_concurrent_with_other)
  TEST_ENTRY(merge_reuse)
  TEST_ENTRY(merge_resolution_supersedes_siblings)
  TEST_ENTRY(merge_known_stale_take_precedence)
  TEST_ENTRY(merge_outcome_names)
  TEST_ENTRY(merge_hash)
  TEST_ENTRY(merge_random_convergence)
)
/* clang-format on */
