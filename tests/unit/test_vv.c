/* SPDX-License-Identifier: MIT */
/* Unit tests for proto/fsp_vv.c: comparison, set/increment, join, the
 * canonical encoding and its validation, allocation failures, and seeded
 * randomized checks of the join/compare laws against a dense model. */
#include "harness.h"

#include "fsp_alloc.h"
#include "fsp_err.h"
#include "fsp_vv.h"

/* Named replicas for hand-written cases, in ascending byte order. B differs
 * from A only in the last byte; D sorts after C only when bytes compare as
 * unsigned (0x80 > 0x7f). */
enum { RA, RB, RC, RD, RZ, NAMED };

static const uint8_t named_ids[NAMED][FSP_ID_LEN] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
    {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
    {0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff},
    {0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
     0xff, 0xff, 0xff, 0xff},
};

struct pr {
  int id;
  uint64_t c;
};

/* Builds v (initialised here) from a list of {replica, counter} pairs, set
 * in the order given. */
#define MKVV(v, ...)                                                           \
  mkvv((v), (const struct pr[]){__VA_ARGS__},                                  \
       sizeof((const struct pr[]){__VA_ARGS__}) / sizeof(struct pr))

static void mkvv(struct fsp_vv *v, const struct pr *p, size_t n) {
  size_t i;

  fsp_vv_init(v);
  for (i = 0; i < n; i++)
    ASSERT_OK(fsp_vv_set(v, named_ids[p[i].id], p[i].c));
}

/* The representation invariant: strictly ascending replicas, counters >= 1,
 * n <= cap. */
static bool canonical(const struct fsp_vv *v) {
  size_t i;

  if (v->n > v->cap)
    return false;
  for (i = 0; i < v->n; i++) {
    if (v->e[i].counter == 0)
      return false;
    if (i > 0 && memcmp(v->e[i - 1].replica, v->e[i].replica, FSP_ID_LEN) >= 0)
      return false;
  }
  return true;
}

static bool vv_eq(const struct fsp_vv *a, const struct fsp_vv *b) {
  size_t i;

  if (a->n != b->n)
    return false;
  for (i = 0; i < a->n; i++) {
    if (memcmp(a->e[i].replica, b->e[i].replica, FSP_ID_LEN) != 0 ||
        a->e[i].counter != b->e[i].counter)
      return false;
  }
  return true;
}

static int cmp(const struct fsp_vv *a, const struct fsp_vv *b) {
  return (int)fsp_vv_compare(a, b);
}

TEST(vv_compare_by_hand) {
  struct fsp_vv e1;
  struct fsp_vv e2;
  struct fsp_vv a;
  struct fsp_vv b;

  fsp_vv_init(&e1);
  fsp_vv_init(&e2);
  ASSERT_EQ(cmp(&e1, &e2), FSP_VV_EQUAL);
  ASSERT_EQ(cmp(&e1, &e1), FSP_VV_EQUAL);

  /* Equal, built in different orders. */
  MKVV(&a, {RA, 1}, {RB, 2}, {RZ, 7});
  MKVV(&b, {RZ, 7}, {RA, 1}, {RB, 2});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_EQUAL);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_EQUAL);
  fsp_vv_close(&a);
  fsp_vv_close(&b);

  /* One empty side. */
  MKVV(&a, {RC, 1});
  ASSERT_EQ(cmp(&a, &e1), FSP_VV_DOMINATES);
  ASSERT_EQ(cmp(&e1, &a), FSP_VV_DOMINATED);
  fsp_vv_close(&a);

  /* Dominates by a larger counter. */
  MKVV(&a, {RA, 2}, {RB, 5});
  MKVV(&b, {RA, 1}, {RB, 5});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_DOMINATES);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_DOMINATED);
  fsp_vv_close(&a);
  fsp_vv_close(&b);

  /* Dominates by an extra replica, first, middle and last. */
  MKVV(&a, {RA, 1}, {RC, 3}, {RD, 1}, {RZ, 2});
  MKVV(&b, {RC, 3}, {RD, 1}, {RZ, 2});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_DOMINATES);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_DOMINATED);
  fsp_vv_close(&b);
  MKVV(&b, {RA, 1}, {RD, 1}, {RZ, 2});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_DOMINATES);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_DOMINATED);
  fsp_vv_close(&b);
  MKVV(&b, {RA, 1}, {RC, 3}, {RD, 1});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_DOMINATES);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_DOMINATED);
  fsp_vv_close(&a);
  fsp_vv_close(&b);

  /* Concurrent: each ahead on a shared replica. */
  MKVV(&a, {RA, 2}, {RB, 1});
  MKVV(&b, {RA, 1}, {RB, 2});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_CONCURRENT);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_CONCURRENT);
  fsp_vv_close(&a);
  fsp_vv_close(&b);

  /* Concurrent: disjoint replicas, interleaved and not. */
  MKVV(&a, {RA, 1});
  MKVV(&b, {RB, 1});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_CONCURRENT);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_CONCURRENT);
  fsp_vv_close(&a);
  fsp_vv_close(&b);
  MKVV(&a, {RA, 1}, {RD, 4});
  MKVV(&b, {RC, 9}, {RZ, 1});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_CONCURRENT);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_CONCURRENT);
  fsp_vv_close(&a);
  fsp_vv_close(&b);

  /* Concurrent: a has a replica b lacks, b is ahead on another; the
   * deciding difference comes last in the walk. */
  MKVV(&a, {RA, 1}, {RB, 2}, {RZ, 1});
  MKVV(&b, {RA, 1}, {RZ, 3});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_CONCURRENT);
  ASSERT_EQ(cmp(&b, &a), FSP_VV_CONCURRENT);
  fsp_vv_close(&a);
  fsp_vv_close(&b);

  /* Counters at the top of the range compare as unsigned. */
  MKVV(&a, {RA, UINT64_MAX});
  MKVV(&b, {RA, UINT64_MAX - 1});
  ASSERT_EQ(cmp(&a, &b), FSP_VV_DOMINATES);
  fsp_vv_close(&a);
  fsp_vv_close(&b);
}

TEST(vv_set_get_increment_order) {
  static const int order[] = {RZ, RA, RD, RB, RC};
  struct fsp_vv v;
  size_t i;

  fsp_vv_init(&v);
  ASSERT_EQ(v.n, 0);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RA]), 0);
  for (i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
    ASSERT_OK(fsp_vv_set(&v, named_ids[order[i]], 10 + (uint64_t)order[i]));
    ASSERT(canonical(&v));
    ASSERT_EQ(v.n, i + 1);
  }
  for (i = 0; i < NAMED; i++) {
    ASSERT_MEM_EQ(v.e[i].replica, named_ids[i], FSP_ID_LEN);
    ASSERT_EQ(fsp_vv_get(&v, named_ids[i]), 10 + i);
  }

  /* Overwrite in place: same size, same order. */
  ASSERT_OK(fsp_vv_set(&v, named_ids[RC], 3));
  ASSERT_EQ(v.n, NAMED);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RC]), 3);
  ASSERT_OK(fsp_vv_increment(&v, named_ids[RC]));
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RC]), 4);
  ASSERT(canonical(&v));
  fsp_vv_close(&v);

  /* Increment inserts at 1, in the middle. */
  MKVV(&v, {RA, 5}, {RZ, 5});
  ASSERT_OK(fsp_vv_increment(&v, named_ids[RC]));
  ASSERT_EQ(v.n, 3);
  ASSERT(canonical(&v));
  ASSERT_MEM_EQ(v.e[1].replica, named_ids[RC], FSP_ID_LEN);
  ASSERT_EQ(v.e[1].counter, 1);
  ASSERT_OK(fsp_vv_increment(&v, named_ids[RC]));
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RC]), 2);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RB]), 0);
  fsp_vv_close(&v);
  fsp_vv_close(&v); /* closing twice is harmless */
  fsp_vv_close(NULL);
}

TEST(vv_increment_overflow) {
  struct fsp_vv v;

  MKVV(&v, {RA, 1}, {RB, UINT64_MAX - 1});
  ASSERT_OK(fsp_vv_increment(&v, named_ids[RB]));
  ASSERT(fsp_vv_get(&v, named_ids[RB]) == UINT64_MAX);
  ASSERT_EQ(fsp_vv_increment(&v, named_ids[RB]), FSP_EINVAL);
  ASSERT(fsp_vv_get(&v, named_ids[RB]) == UINT64_MAX);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RA]), 1);
  ASSERT_EQ(v.n, 2);
  fsp_vv_close(&v);
}

TEST(vv_set_zero_is_einval) {
  struct fsp_vv v;

  fsp_vv_init(&v);
  ASSERT_EQ(fsp_vv_set(&v, named_ids[RA], 0), FSP_EINVAL);
  ASSERT_EQ(v.n, 0);
  MKVV(&v, {RA, 4});
  ASSERT_EQ(fsp_vv_set(&v, named_ids[RA], 0), FSP_EINVAL);
  ASSERT_EQ(fsp_vv_set(&v, named_ids[RB], 0), FSP_EINVAL);
  ASSERT_EQ(v.n, 1);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RA]), 4);
  fsp_vv_close(&v);
}

TEST(vv_join_by_hand) {
  struct fsp_vv a;
  struct fsp_vv b;
  struct fsp_vv want;
  struct fsp_vv empty;

  fsp_vv_init(&empty);

  /* Interleaved replicas, larger counter wins on each side. */
  MKVV(&a, {RA, 3}, {RC, 1}, {RZ, 2});
  MKVV(&b, {RB, 1}, {RC, 4}, {RD, 2}, {RZ, 1});
  MKVV(&want, {RA, 3}, {RB, 1}, {RC, 4}, {RD, 2}, {RZ, 2});
  ASSERT_OK(fsp_vv_join(&a, &b));
  ASSERT(canonical(&a));
  ASSERT(vv_eq(&a, &want));
  fsp_vv_close(&a);
  fsp_vv_close(&want);

  /* No new replica: counters only, in place. */
  MKVV(&a, {RA, 3}, {RC, 1}, {RZ, 2});
  fsp_vv_close(&b);
  MKVV(&b, {RC, 5}, {RZ, 1});
  MKVV(&want, {RA, 3}, {RC, 5}, {RZ, 2});
  ASSERT_OK(fsp_vv_join(&a, &b));
  ASSERT(vv_eq(&a, &want));
  fsp_vv_close(&want);

  /* Empty on either side, and a vector with itself. */
  MKVV(&want, {RA, 3}, {RC, 5}, {RZ, 2});
  ASSERT_OK(fsp_vv_join(&a, &empty));
  ASSERT(vv_eq(&a, &want));
  ASSERT_OK(fsp_vv_join(&a, &a));
  ASSERT(vv_eq(&a, &want));
  ASSERT_OK(fsp_vv_join(&empty, &a));
  ASSERT(vv_eq(&empty, &want));
  ASSERT(canonical(&empty));

  /* All of src sorts before dst, then after it. */
  fsp_vv_close(&a);
  fsp_vv_close(&b);
  fsp_vv_close(&want);
  MKVV(&a, {RD, 1}, {RZ, 1});
  MKVV(&b, {RA, 2}, {RB, 2});
  MKVV(&want, {RA, 2}, {RB, 2}, {RD, 1}, {RZ, 1});
  ASSERT_OK(fsp_vv_join(&a, &b));
  ASSERT(vv_eq(&a, &want));
  ASSERT_OK(fsp_vv_join(&b, &a));
  ASSERT(vv_eq(&b, &want));

  fsp_vv_close(&a);
  fsp_vv_close(&b);
  fsp_vv_close(&want);
  fsp_vv_close(&empty);
}

TEST(vv_copy) {
  struct fsp_vv a;
  struct fsp_vv b;

  MKVV(&a, {RA, 3}, {RC, 1}, {RZ, 2});
  MKVV(&b, {RB, 9});
  ASSERT_OK(fsp_vv_copy(&b, &a));
  ASSERT(vv_eq(&a, &b));
  ASSERT(b.e != a.e);
  ASSERT_OK(fsp_vv_copy(&b, &b));
  ASSERT(vv_eq(&a, &b));
  fsp_vv_close(&a);
  ASSERT_OK(fsp_vv_copy(&b, &a)); /* copying an empty vector */
  ASSERT_EQ(b.n, 0);
  fsp_vv_close(&b);
}

TEST(vv_encode_decode) {
  struct fsp_vv a;
  struct fsp_vv b;
  struct fsp_vv c;
  uint8_t buf[5 * FSP_VV_ENTRY_BYTES];
  uint8_t buf2[5 * FSP_VV_ENTRY_BYTES];
  static const uint8_t be[8] = {1, 2, 3, 4, 5, 6, 7, 8};

  /* The byte layout: replica, then the counter big-endian. */
  MKVV(&a, {RC, 0x0102030405060708ull});
  ASSERT_EQ(fsp_vv_encoded_size(&a), FSP_VV_ENTRY_BYTES);
  fsp_vv_encode(&a, buf);
  ASSERT_MEM_EQ(buf, named_ids[RC], FSP_ID_LEN);
  ASSERT_MEM_EQ(buf + FSP_ID_LEN, be, 8);
  fsp_vv_close(&a);

  /* Equal vectors from different insertion orders encode identically, and
   * decode back to the same vector. */
  MKVV(&a, {RZ, 1}, {RA, UINT64_MAX}, {RD, 256}, {RB, 2}, {RC, 70000});
  MKVV(&b, {RC, 70000}, {RB, 2}, {RA, UINT64_MAX}, {RZ, 1}, {RD, 256});
  ASSERT_EQ(fsp_vv_encoded_size(&a), sizeof(buf));
  ASSERT_EQ(fsp_vv_encoded_size(&b), sizeof(buf2));
  fsp_vv_encode(&a, buf);
  fsp_vv_encode(&b, buf2);
  ASSERT_MEM_EQ(buf, buf2, sizeof(buf));

  MKVV(&c, {RA, 1}); /* decode replaces whatever was there */
  ASSERT_OK(fsp_vv_decode(&c, buf, sizeof(buf), 5));
  ASSERT(canonical(&c));
  ASSERT(vv_eq(&a, &c));

  /* Empty input is the empty vector, even with max_entries 0. */
  ASSERT_OK(fsp_vv_decode(&c, NULL, 0, 0));
  ASSERT_EQ(c.n, 0);
  ASSERT_EQ(fsp_vv_encoded_size(&c), 0);

  fsp_vv_close(&a);
  fsp_vv_close(&b);
  fsp_vv_close(&c);
}

/* Expects decode to fail with want and leave v (holding {A:7}) alone. */
static void decode_fails(const uint8_t *in, size_t len, size_t max, int want) {
  struct fsp_vv v;

  MKVV(&v, {RA, 7});
  ASSERT_EQ(fsp_vv_decode(&v, in, len, max), want);
  ASSERT_EQ(v.n, 1);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RA]), 7);
  fsp_vv_close(&v);
}

TEST(vv_decode_errors) {
  struct fsp_vv v;
  uint8_t good[3 * FSP_VV_ENTRY_BYTES];
  uint8_t bad[3 * FSP_VV_ENTRY_BYTES];
  const size_t E = FSP_VV_ENTRY_BYTES;

  MKVV(&v, {RA, 1}, {RC, 2}, {RZ, 3});
  fsp_vv_encode(&v, good);
  fsp_vv_close(&v);

  /* Lengths that are not a whole number of entries. */
  decode_fails(good, 1, 3, FSP_EBAD_VV);
  decode_fails(good, E - 1, 3, FSP_EBAD_VV);
  decode_fails(good, E + 1, 3, FSP_EBAD_VV);
  decode_fails(good, 3 * E - 1, 3, FSP_EBAD_VV);

  /* Unsorted: the last two entries swapped. */
  memcpy(bad, good, E);
  memcpy(bad + E, good + 2 * E, E);
  memcpy(bad + 2 * E, good + E, E);
  decode_fails(bad, sizeof(bad), 3, FSP_EBAD_VV);

  /* Duplicate replica (same counter, then a different one). */
  memcpy(bad, good, sizeof(good));
  memcpy(bad + 2 * E, good + E, E);
  decode_fails(bad, sizeof(bad), 3, FSP_EBAD_VV);
  bad[3 * E - 1] ^= 1;
  decode_fails(bad, sizeof(bad), 3, FSP_EBAD_VV);

  /* A zero counter, first and last. */
  memcpy(bad, good, sizeof(good));
  memset(bad + FSP_ID_LEN, 0, 8);
  decode_fails(bad, sizeof(bad), 3, FSP_EBAD_VV);
  memcpy(bad, good, sizeof(good));
  memset(bad + 2 * E + FSP_ID_LEN, 0, 8);
  decode_fails(bad, sizeof(bad), 3, FSP_EBAD_VV);

  /* More entries than allowed; exactly the limit is fine. */
  decode_fails(good, sizeof(good), 2, FSP_ETOO_MANY);
  decode_fails(good, E, 0, FSP_ETOO_MANY);
  fsp_vv_init(&v);
  ASSERT_OK(fsp_vv_decode(&v, good, sizeof(good), 3));
  ASSERT_EQ(v.n, 3);
  fsp_vv_close(&v);
}

TEST(vv_set_enomem) {
  struct fsp_vv v;
  struct fsp_vv snap;
  uint8_t id[FSP_ID_LEN];
  const struct fsp_vv_entry *before;
  unsigned k;

  /* An empty vector has no storage: the first set must allocate. */
  fsp_vv_init(&v);
  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_vv_set(&v, named_ids[RC], 1), FSP_ENOMEM);
  ASSERT_EQ(fsp_vv_increment(&v, named_ids[RC]), FSP_OK); /* 2nd: no fault */
  fsp_alloc_fail_at(0, false);
  ASSERT_EQ(fsp_vv_get(&v, named_ids[RC]), 1);

  /* Fill to capacity, then an insert in the middle must grow. */
  memset(id, 0, sizeof(id));
  for (k = 0; v.n < v.cap || v.n < 3; k++) {
    id[0] = (uint8_t)(0x81 + 2 * k);
    ASSERT_OK(fsp_vv_set(&v, id, k + 1));
  }
  fsp_vv_init(&snap);
  ASSERT_OK(fsp_vv_copy(&snap, &v));
  before = v.e;

  id[0] = 0x82; /* between the first two entries above */
  fsp_alloc_fail_at(1, true);
  ASSERT_EQ(fsp_vv_set(&v, id, 5), FSP_ENOMEM);
  ASSERT_EQ(fsp_vv_increment(&v, id), FSP_ENOMEM);
  /* Changing an existing counter needs no memory. */
  ASSERT_OK(fsp_vv_set(&v, named_ids[RC], 1));
  ASSERT_EQ(fsp_alloc_failed(), 2);
  fsp_alloc_fail_at(0, false);
  ASSERT(v.e == before);
  ASSERT(vv_eq(&v, &snap));
  ASSERT(canonical(&v));

  ASSERT_OK(fsp_vv_set(&v, id, 5));
  ASSERT_EQ(v.n, snap.n + 1);
  ASSERT(canonical(&v));
  fsp_vv_close(&v);
  fsp_vv_close(&snap);
}

TEST(vv_join_copy_decode_enomem) {
  struct fsp_vv dst;
  struct fsp_vv src;
  struct fsp_vv snap;
  struct fsp_vv want;
  uint8_t id[FSP_ID_LEN];
  uint8_t enc[64 * FSP_VV_ENTRY_BYTES];
  size_t enclen;
  uint64_t k;
  unsigned i;

  /* src brings 50 new replicas, more than any small capacity holds. */
  MKVV(&dst, {RA, 2}, {RZ, 1});
  fsp_vv_init(&src);
  memset(id, 0x40, sizeof(id));
  for (i = 0; i < 50; i++) {
    id[15] = (uint8_t)i;
    ASSERT_OK(fsp_vv_set(&src, id, i + 1));
  }
  ASSERT_OK(fsp_vv_set(&src, named_ids[RA], 1));
  fsp_vv_init(&snap);
  ASSERT_OK(fsp_vv_copy(&snap, &dst));
  fsp_vv_init(&want);
  ASSERT_OK(fsp_vv_copy(&want, &dst));
  ASSERT_OK(fsp_vv_join(&want, &src));
  ASSERT_EQ(want.n, 52);

  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_vv_join(&dst, &src), FSP_ENOMEM);
  fsp_alloc_fail_at(0, false);
  ASSERT(vv_eq(&dst, &snap));

  /* Torture style: fail the k-th allocation until the join needs fewer. */
  for (k = 1;; k++) {
    int rc;

    fsp_alloc_fail_at(k, true);
    rc = fsp_vv_join(&dst, &src);
    fsp_alloc_fail_at(0, false);
    if (rc == FSP_ENOMEM) {
      ASSERT(vv_eq(&dst, &snap));
      continue;
    }
    ASSERT_OK(rc);
    ASSERT(vv_eq(&dst, &want));
    break;
  }

  /* copy and decode into an empty vector leave it empty on failure. */
  fsp_vv_close(&snap);
  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_vv_copy(&snap, &want), FSP_ENOMEM);
  fsp_alloc_fail_at(0, false);
  ASSERT_EQ(snap.n, 0);

  enclen = fsp_vv_encoded_size(&want);
  ASSERT_LE(enclen, sizeof(enc));
  fsp_vv_encode(&want, enc);
  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_vv_decode(&snap, enc, enclen, FSP_DEFAULT_MAX_VV), FSP_ENOMEM);
  fsp_alloc_fail_at(0, false);
  ASSERT_EQ(snap.n, 0);
  ASSERT_OK(fsp_vv_decode(&snap, enc, enclen, FSP_DEFAULT_MAX_VV));
  ASSERT(vv_eq(&snap, &want));

  /* decode into a vector too small to hold the result keeps it too. */
  fsp_vv_close(&dst);
  MKVV(&dst, {RB, 9});
  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_vv_decode(&dst, enc, enclen, FSP_DEFAULT_MAX_VV), FSP_ENOMEM);
  fsp_alloc_fail_at(0, false);
  ASSERT_EQ(dst.n, 1);
  ASSERT_EQ(fsp_vv_get(&dst, named_ids[RB]), 9);

  fsp_vv_close(&dst);
  fsp_vv_close(&src);
  fsp_vv_close(&snap);
  fsp_vv_close(&want);
}

TEST(vv_format) {
  struct fsp_vv v;
  char buf[64];
  size_t cap;

  fsp_vv_init(&v);
  memset(buf, 'x', sizeof(buf));
  fsp_vv_format(&v, buf, sizeof(buf));
  ASSERT_STR_EQ(buf, "");

  MKVV(&v, {RZ, UINT64_MAX}, {RA, 1}, {RD, 42});
  fsp_vv_format(&v, buf, sizeof(buf));
  ASSERT_STR_EQ(buf, "00000000:1,80000000:42,ffffffff:18446744073709551615");

  /* Small buffers: a NUL-terminated prefix, nothing written past cap. */
  for (cap = 0; cap < 20; cap++) {
    static const char full[] = "00000000:1,80000000:42";
    size_t j;

    memset(buf, '#', sizeof(buf));
    fsp_vv_format(&v, buf, cap);
    for (j = cap; j < sizeof(buf); j++)
      ASSERT_EQ(buf[j], '#');
    if (cap == 0)
      continue;
    ASSERT_EQ(strlen(buf), cap - 1);
    ASSERT(strncmp(buf, full, cap - 1) == 0);
  }
  fsp_vv_format(&v, NULL, 0);
  fsp_vv_close(&v);
}

/* --- randomized checks ---------------------------------------------------
 * Vectors over a few replicas (the named ones plus random ids) with small
 * counters, so equal, dominated and concurrent pairs all come up often.
 * Each vector is checked against a dense model: one counter per replica,
 * 0 meaning absent. */

#define NREP 7

struct model {
  uint64_t c[NREP];
};

struct rnd {
  uint64_t seed; /* printed by test_seed() and in every failure */
  uint64_t iter;
  uint64_t st;
  uint8_t ids[NREP][FSP_ID_LEN];
};

#define CHECK(r, cond)                                                         \
  do {                                                                         \
    if (!(cond))                                                               \
      test_fail(__FILE__, __LINE__,                                            \
                "seed %" PRIu64 " case %" PRIu64 ": %s "                       \
                "(FIELDSYNC_SEED=%" PRIu64 " repeats it)",                     \
                (r)->seed, (r)->iter, #cond, (r)->seed);                       \
  } while (0)

static void rnd_init(struct rnd *r) {
  size_t i;
  size_t j;

  r->seed = test_seed();
  r->st = r->seed;
  r->iter = 0;
  for (i = 0; i < NAMED; i++)
    memcpy(r->ids[i], named_ids[i], FSP_ID_LEN);
  for (; i < NREP; i++)
    for (j = 0; j < FSP_ID_LEN; j++)
      r->ids[i][j] = (uint8_t)test_rand(&r->st);
}

static uint64_t rnd_counter(struct rnd *r) {
  uint64_t x = test_rand_below(&r->st, 16);

  if (x < 6)
    return 0;
  if (x < 14)
    return x - 5; /* 1..8 */
  if (x == 14)
    return UINT64_MAX - test_rand_below(&r->st, 2);
  return 1 + (test_rand(&r->st) >> 1);
}

/* A random model, and v built from it by sets in a random order. */
static void rnd_vv(struct rnd *r, struct model *m, struct fsp_vv *v) {
  size_t order[NREP];
  size_t i;

  for (i = 0; i < NREP; i++) {
    m->c[i] = rnd_counter(r);
    order[i] = i;
  }
  for (i = NREP - 1; i > 0; i--) {
    size_t j = (size_t)test_rand_below(&r->st, i + 1);
    size_t t = order[i];

    order[i] = order[j];
    order[j] = t;
  }
  fsp_vv_init(v);
  for (i = 0; i < NREP; i++)
    if (m->c[order[i]] != 0)
      CHECK(r, fsp_vv_set(v, r->ids[order[i]], m->c[order[i]]) == 0);
  CHECK(r, canonical(v));
}

static enum fsp_vv_order model_compare(const struct model *a,
                                       const struct model *b) {
  bool ga = false;
  bool gb = false;
  size_t i;

  for (i = 0; i < NREP; i++) {
    ga = ga || a->c[i] > b->c[i];
    gb = gb || a->c[i] < b->c[i];
  }
  if (ga && gb)
    return FSP_VV_CONCURRENT;
  return ga ? FSP_VV_DOMINATES : gb ? FSP_VV_DOMINATED : FSP_VV_EQUAL;
}

static bool matches_model(const struct rnd *r, const struct fsp_vv *v,
                          const struct model *m) {
  size_t i;
  size_t n = 0;

  for (i = 0; i < NREP; i++) {
    if (fsp_vv_get(v, r->ids[i]) != m->c[i])
      return false;
    n += m->c[i] != 0;
  }
  return v->n == n && canonical(v);
}

/* dst = join(a, b), through copy + join. */
static void joined(struct rnd *r, struct fsp_vv *dst, const struct fsp_vv *a,
                   const struct fsp_vv *b) {
  fsp_vv_init(dst);
  CHECK(r, fsp_vv_copy(dst, a) == 0);
  CHECK(r, fsp_vv_join(dst, b) == 0);
  CHECK(r, canonical(dst));
}

TEST(vv_random_against_model) {
  struct rnd r;
  uint64_t n = 10000 * test_scale();
  uint8_t buf[NREP * FSP_VV_ENTRY_BYTES];
  uint8_t buf2[NREP * FSP_VV_ENTRY_BYTES];

  rnd_init(&r);
  for (r.iter = 0; r.iter < n; r.iter++) {
    struct model ma;
    struct model mb;
    struct model mj;
    struct fsp_vv a;
    struct fsp_vv b;
    struct fsp_vv j;
    struct fsp_vv d;
    size_t i;
    int inc;

    rnd_vv(&r, &ma, &a);
    rnd_vv(&r, &mb, &b);
    CHECK(&r, matches_model(&r, &a, &ma));
    CHECK(&r, fsp_vv_compare(&a, &b) == model_compare(&ma, &mb));

    for (i = 0; i < NREP; i++)
      mj.c[i] = ma.c[i] > mb.c[i] ? ma.c[i] : mb.c[i];
    joined(&r, &j, &a, &b);
    CHECK(&r, matches_model(&r, &j, &mj));

    /* Encoding round trip; equal models give equal bytes whatever the
     * insertion order (a fresh random order for b here). */
    fsp_vv_encode(&a, buf);
    fsp_vv_init(&d);
    CHECK(&r, fsp_vv_decode(&d, buf, fsp_vv_encoded_size(&a), NREP) == 0);
    CHECK(&r, vv_eq(&a, &d));
    if (model_compare(&ma, &mb) == FSP_VV_EQUAL) {
      fsp_vv_encode(&b, buf2);
      CHECK(&r, fsp_vv_encoded_size(&a) == fsp_vv_encoded_size(&b));
      CHECK(&r, memcmp(buf, buf2, fsp_vv_encoded_size(&a)) == 0);
    }

    /* Increment agrees with the model, including at the overflow edge. */
    i = (size_t)test_rand_below(&r.st, NREP);
    inc = fsp_vv_increment(&a, r.ids[i]);
    if (ma.c[i] == UINT64_MAX) {
      CHECK(&r, inc == FSP_EINVAL);
    } else {
      CHECK(&r, inc == 0);
      ma.c[i]++;
    }
    CHECK(&r, matches_model(&r, &a, &ma));

    fsp_vv_close(&a);
    fsp_vv_close(&b);
    fsp_vv_close(&j);
    fsp_vv_close(&d);
  }
}

TEST(vv_random_join_compare_laws) {
  struct rnd r;
  uint64_t n = 10000 * test_scale();

  rnd_init(&r);
  for (r.iter = 0; r.iter < n; r.iter++) {
    struct model m;
    struct fsp_vv a;
    struct fsp_vv b;
    struct fsp_vv c;
    struct fsp_vv ab;
    struct fsp_vv ba;
    struct fsp_vv aa;
    struct fsp_vv ab_c;
    struct fsp_vv bc;
    struct fsp_vv a_bc;
    enum fsp_vv_order o;
    enum fsp_vv_order ro;

    rnd_vv(&r, &m, &a);
    rnd_vv(&r, &m, &b);
    rnd_vv(&r, &m, &c);
    /* Now and then b copies a, or dominates it, so that the EQUAL and
     * DOMINATED branches of the laws are exercised too. */
    if (test_rand_below(&r.st, 4) == 0) {
      CHECK(&r, fsp_vv_copy(&b, &a) == 0);
      if (test_rand_below(&r.st, 2) == 0)
        CHECK(&r, fsp_vv_set(&b, r.ids[test_rand_below(&r.st, NREP)],
                             1 + test_rand_below(&r.st, 9)) == 0);
    }

    joined(&r, &ab, &a, &b);
    joined(&r, &ba, &b, &a);
    joined(&r, &aa, &a, &a);
    joined(&r, &ab_c, &ab, &c);
    joined(&r, &bc, &b, &c);
    joined(&r, &a_bc, &a, &bc);

    /* Commutative, associative, idempotent. */
    CHECK(&r, vv_eq(&ab, &ba));
    CHECK(&r, vv_eq(&ab_c, &a_bc));
    CHECK(&r, vv_eq(&aa, &a));
    CHECK(&r, fsp_vv_join(&ab, &b) == 0);
    CHECK(&r, vv_eq(&ab, &ba));

    /* The join is an upper bound. */
    o = fsp_vv_compare(&a, &ab);
    CHECK(&r, o == FSP_VV_EQUAL || o == FSP_VV_DOMINATED);
    o = fsp_vv_compare(&b, &ab);
    CHECK(&r, o == FSP_VV_EQUAL || o == FSP_VV_DOMINATED);

    /* compare agrees with join: a >= b iff join(a, b) == a. */
    o = fsp_vv_compare(&a, &b);
    CHECK(&r, (o == FSP_VV_EQUAL || o == FSP_VV_DOMINATES) == vv_eq(&ab, &a));
    CHECK(&r, (o == FSP_VV_EQUAL || o == FSP_VV_DOMINATED) == vv_eq(&ab, &b));

    /* Antisymmetric, and EQUAL/CONCURRENT are symmetric. */
    ro = fsp_vv_compare(&b, &a);
    CHECK(&r, (o == FSP_VV_DOMINATES) == (ro == FSP_VV_DOMINATED));
    CHECK(&r, (o == FSP_VV_DOMINATED) == (ro == FSP_VV_DOMINATES));
    CHECK(&r, (o == FSP_VV_EQUAL) == (ro == FSP_VV_EQUAL));
    CHECK(&r, (o == FSP_VV_CONCURRENT) == (ro == FSP_VV_CONCURRENT));
    CHECK(&r, (o == FSP_VV_EQUAL) == vv_eq(&a, &b));

    fsp_vv_close(&a);
    fsp_vv_close(&b);
    fsp_vv_close(&c);
    fsp_vv_close(&ab);
    fsp_vv_close(&ba);
    fsp_vv_close(&aa);
    fsp_vv_close(&ab_c);
    fsp_vv_close(&bc);
    fsp_vv_close(&a_bc);
  }
}

TEST(vv_random_format_bounds) {
  struct rnd r;
  uint64_t n = 10000 * test_scale();

  rnd_init(&r);
  for (r.iter = 0; r.iter < n; r.iter++) {
    struct model m;
    struct fsp_vv v;
    char full[NREP * 32];
    char small[64];
    size_t cap = (size_t)test_rand_below(&r.st, 48);
    size_t want;
    size_t j;

    rnd_vv(&r, &m, &v);
    fsp_vv_format(&v, full, sizeof(full));
    CHECK(&r, strlen(full) < sizeof(full) - 1);
    memset(small, '#', sizeof(small));
    fsp_vv_format(&v, small, cap);
    for (j = cap; j < sizeof(small); j++)
      CHECK(&r, small[j] == '#');
    if (cap > 0) {
      want = strlen(full) < cap - 1 ? strlen(full) : cap - 1;
      CHECK(&r, strlen(small) == want);
      CHECK(&r, strncmp(small, full, want) == 0);
    }
    fsp_vv_close(&v);
  }
}

/* clang-format off */
TEST_LIST(
  TEST_ENTRY(vv_compare_by_hand)
  TEST_ENTRY(vv_set_get_increment_order)
  TEST_ENTRY(vv_increment_overflow)
  TEST_ENTRY(vv_set_zero_is_einval)
  TEST_ENTRY(vv_join_by_hand)
  TEST_ENTRY(vv_copy)
  TEST_ENTRY(vv_encode_decode)
  TEST_ENTRY(vv_decode_errors)
  TEST_ENTRY(vv_set_enomem)
  TEST_ENTRY(vv_join_copy_decode_enomem)
  TEST_ENTRY(vv_format)
  TEST_ENTRY(vv_random_against_model)
  TEST_ENTRY(vv_random_join_compare_laws)
  TEST_ENTRY(vv_random_format_bounds)
)
/* clang-format on */
