/* SPDX-License-Identifier: MIT */
/* Unit tests for the frame decoder (proto/fsp_frame.c): every way of
 * splitting a byte stream yields the same frames, bad lengths fail from the
 * header alone without allocating, the body buffer grows only as body bytes
 * arrive (a header alone holds nothing), errors are sticky, and nothing
 * leaks. */
#include "fsp_frame.h"

#include <stdio.h>

#include "fsp_alloc.h"
#include "fsp_err.h"
#include "harness.h"

#define STREAM_CAP 16384
#define STREAM_MAX_FRAMES 1024

/* A byte stream of frames plus where each body sits in it. */
struct stream {
  uint8_t bytes[STREAM_CAP];
  size_t n;
  size_t nframes;
  size_t off[STREAM_MAX_FRAMES];
  size_t size[STREAM_MAX_FRAMES];
};

/* The reference stream: five frames, 1-byte and multi-KiB bodies mixed. */
static const size_t ref_sizes[] = {1, 517, 4096, 1, 3001};
#define REF_FRAMES (sizeof(ref_sizes) / sizeof(ref_sizes[0]))

/* Fills s with one frame per entry of sizes. Bodies come from a fixed PRNG
 * state, so they differ from frame to frame but not from run to run. */
static void build_stream(struct stream *s, const size_t *sizes, size_t count) {
  uint64_t state = 42;
  size_t i;
  size_t j;

  ASSERT_LE(count, STREAM_MAX_FRAMES);
  s->n = 0;
  s->nframes = count;
  for (i = 0; i < count; i++) {
    ASSERT_LE(s->n + FSP_FRAME_HEADER + sizes[i], STREAM_CAP);
    fsp_frame_header((uint32_t)sizes[i], s->bytes + s->n);
    s->n += FSP_FRAME_HEADER;
    s->off[i] = s->n;
    s->size[i] = sizes[i];
    for (j = 0; j < sizes[i]; j++)
      s->bytes[s->n++] = (uint8_t)test_rand(&state);
  }
}

static void build_ref(struct stream *s) {
  build_stream(s, ref_sizes, REF_FRAMES);
}

/* A decoder fed pieces of a stream, checking each frame as it comes out. */
struct checker {
  struct fsp_frame_decoder d;
  const struct stream *s;
  size_t next; /* index of the next expected frame */
};

/* Also resets the allocation counter, so checker_end can prove that each
 * frame cost exactly one allocation. */
static void checker_init(struct checker *c, const struct stream *s,
                         uint32_t max_frame) {
  fsp_frame_decoder_init(&c->d, max_frame);
  c->s = s;
  c->next = 0;
  fsp_alloc_fail_at(0, false);
}

static void take_and_check(struct checker *c) {
  uint8_t *body = NULL;
  size_t len = 0;

  ASSERT_LT(c->next, c->s->nframes);
  fsp_frame_take(&c->d, &body, &len);
  ASSERT(body != NULL);
  ASSERT_EQ(len, c->s->size[c->next]);
  ASSERT_MEM_EQ(body, c->s->bytes + c->s->off[c->next], len);
  fsp_free(body);
  c->next++;
}

/* Feeds one piece (n may be 0), looping on `used` so that every frame that
 * ends inside the piece comes out. A return of 0 must consume everything. */
static void feed_piece(struct checker *c, const uint8_t *p, size_t n) {
  for (;;) {
    size_t used = (size_t)-1;
    int rc = fsp_frame_feed(&c->d, p, n, &used);

    ASSERT_GE(rc, 0);
    ASSERT_LE(used, n);
    if (rc == 0) {
      ASSERT_EQ(used, n);
      return;
    }
    ASSERT_EQ(rc, 1);
    ASSERT_GT(used, 0);
    take_and_check(c);
    p += used;
    n -= used;
    if (n == 0)
      return;
  }
}

static void checker_end(struct checker *c) {
  ASSERT_EQ(c->next, c->s->nframes);
  ASSERT_OK(fsp_frame_finish(&c->d));
  ASSERT(!fsp_frame_partial(&c->d));
  ASSERT_EQ(fsp_alloc_count(), c->s->nframes);
  fsp_frame_decoder_close(&c->d);
}

/* Feeds `len` bytes in one call and expects the given result and `used`. */
static void feed_expect(struct fsp_frame_decoder *d, const uint8_t *p,
                        size_t len, int want_rc, size_t want_used) {
  size_t used = (size_t)-1;

  ASSERT_EQ(fsp_frame_feed(d, p, len, &used), want_rc);
  ASSERT_EQ(used, want_used);
}

TEST(frame_header_roundtrip) {
  static const uint32_t lens[] = {
      0u, 1u, 255u, 256u, 0x01020304u, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu};
  /* Small enough to decode for real; 65539 needs all of the low 3 bytes. */
  static const uint32_t small[] = {1u, 255u, 256u, 65539u};
  static uint8_t buf[FSP_FRAME_HEADER + 65539];
  size_t i;

  for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    uint32_t v = lens[i];

    fsp_frame_header(v, buf);
    ASSERT_EQ(buf[0], (v >> 24) & 0xFF);
    ASSERT_EQ(buf[1], (v >> 16) & 0xFF);
    ASSERT_EQ(buf[2], (v >> 8) & 0xFF);
    ASSERT_EQ(buf[3], v & 0xFF);
  }
  /* And the decoder reads back what fsp_frame_header wrote. */
  for (i = 0; i < sizeof(small) / sizeof(small[0]); i++) {
    struct fsp_frame_decoder d;
    uint8_t *body = NULL;
    size_t len = 0;
    uint32_t v = small[i];

    fsp_frame_header(v, buf);
    memset(buf + FSP_FRAME_HEADER, 0xA5, v);
    fsp_frame_decoder_init(&d, 0);
    feed_expect(&d, buf, FSP_FRAME_HEADER + v, 1, FSP_FRAME_HEADER + v);
    fsp_frame_take(&d, &body, &len);
    ASSERT(body != NULL);
    ASSERT_EQ(len, v);
    ASSERT_MEM_EQ(body, buf + FSP_FRAME_HEADER, len);
    fsp_free(body);
    fsp_frame_decoder_close(&d);
  }
}

TEST(frame_default_limit) {
  struct fsp_frame_decoder d;
  uint8_t hdr[FSP_FRAME_HEADER];

  fsp_frame_decoder_init(&d, 0);
  ASSERT_EQ(d.max_frame, FSP_DEFAULT_MAX_FRAME);
  ASSERT(!fsp_frame_partial(&d));
  ASSERT_OK(fsp_frame_finish(&d));
  fsp_frame_header(FSP_DEFAULT_MAX_FRAME + 1u, hdr);
  fsp_alloc_fail_at(0, false);
  feed_expect(&d, hdr, sizeof(hdr), FSP_EFRAME_TOO_BIG, sizeof(hdr));
  ASSERT_EQ(fsp_alloc_count(), 0);
  fsp_frame_decoder_close(&d);

  fsp_frame_decoder_init(&d, UINT32_MAX);
  ASSERT_EQ(d.max_frame, UINT32_MAX);
  fsp_frame_decoder_close(&d);
}

/* All five frames in one call: the caller loops on `used`. */
TEST(frame_stream_one_call) {
  static struct stream s;
  struct checker c;

  build_ref(&s);
  checker_init(&c, &s, 0);
  feed_piece(&c, s.bytes, s.n);
  checker_end(&c);
}

TEST(frame_stream_every_split) {
  static struct stream s;
  struct checker c;
  size_t cut;

  build_ref(&s);
  for (cut = 0; cut <= s.n; cut++) {
    checker_init(&c, &s, 0);
    feed_piece(&c, s.bytes, cut);
    feed_piece(&c, s.bytes + cut, s.n - cut);
    checker_end(&c);
  }
}

TEST(frame_stream_byte_at_a_time) {
  static struct stream s;
  struct checker c;
  size_t i;

  build_ref(&s);
  checker_init(&c, &s, 0);
  for (i = 0; i < s.n; i++)
    feed_piece(&c, s.bytes + i, 1);
  checker_end(&c);
}

/* Random piece lengths, empty pieces included. Each round picks a maximum
 * piece length so that tiny, medium and large pieces all get exercised. */
TEST(frame_stream_random_splits) {
  static const size_t max_piece[] = {1, 3, 5, 17, 600, 5000, STREAM_CAP};
  static struct stream s;
  struct checker c;
  uint64_t state = test_seed();
  uint64_t rounds = 500 * test_scale();
  uint64_t r;

  build_ref(&s);
  for (r = 0; r < rounds; r++) {
    size_t maxp = max_piece[test_rand_below(&state, 7)];
    size_t off = 0;

    checker_init(&c, &s, 0);
    while (off < s.n) {
      size_t n = (size_t)test_rand_below(&state, maxp + 1);

      if (n > s.n - off)
        n = s.n - off;
      feed_piece(&c, s.bytes + off, n);
      off += n;
    }
    checker_end(&c);
  }
}

/* A thousand small frames in one buffer, all taken from a single piece. */
TEST(frame_many_frames_one_call) {
  static struct stream s;
  static size_t sizes[1000];
  struct checker c;
  size_t i;

  for (i = 0; i < 1000; i++)
    sizes[i] = 1 + i % 8;
  build_stream(&s, sizes, 1000);
  checker_init(&c, &s, 0);
  feed_piece(&c, s.bytes, s.n);
  checker_end(&c);
}

/* Nothing is allocated for the header, even once it is whole; the first
 * body byte allocates, and a short body needs no second allocation. */
TEST(frame_header_split) {
  uint8_t buf[FSP_FRAME_HEADER + 300];
  size_t k;

  fsp_frame_header(300, buf);
  memset(buf + FSP_FRAME_HEADER, 0x5A, 300);
  for (k = 1; k < FSP_FRAME_HEADER; k++) {
    struct fsp_frame_decoder d;
    uint8_t *body = NULL;
    size_t len = 0;

    fsp_frame_decoder_init(&d, 1000);
    fsp_alloc_fail_at(0, false);
    feed_expect(&d, buf, k, 0, k);
    ASSERT(fsp_frame_partial(&d));
    ASSERT_EQ(fsp_alloc_count(), 0);
    feed_expect(&d, buf + k, FSP_FRAME_HEADER - k, 0, FSP_FRAME_HEADER - k);
    ASSERT_EQ(fsp_alloc_count(), 0);
    ASSERT_EQ(fsp_frame_held(&d), 0);
    feed_expect(&d, buf + FSP_FRAME_HEADER, k, 0, k);
    ASSERT_EQ(fsp_alloc_count(), 1);
    ASSERT_EQ(fsp_frame_held(&d), 300); /* the frame is under 4 KiB */
    feed_expect(&d, buf + FSP_FRAME_HEADER + k, 300 - k, 1, 300 - k);
    ASSERT_EQ(fsp_alloc_count(), 1);
    fsp_frame_take(&d, &body, &len);
    ASSERT_EQ(len, 300);
    ASSERT_MEM_EQ(body, buf + FSP_FRAME_HEADER, 300);
    fsp_free(body);
    fsp_frame_decoder_close(&d);
  }
}

TEST(frame_zero_length) {
  static const uint8_t buf[] = {0, 0, 0, 0, 0, 0, 0, 1, 'x'};
  struct fsp_frame_decoder d;

  /* In one call, followed by a valid frame that must not be consumed. */
  fsp_frame_decoder_init(&d, 0);
  fsp_alloc_fail_at(0, false);
  feed_expect(&d, buf, sizeof(buf), FSP_EFRAME_EMPTY, FSP_FRAME_HEADER);
  ASSERT_EQ(fsp_alloc_count(), 0);
  ASSERT_EQ(fsp_frame_finish(&d), FSP_EFRAME_EMPTY);
  fsp_frame_decoder_close(&d);

  /* Split inside the header. */
  fsp_frame_decoder_init(&d, 0);
  feed_expect(&d, buf, 1, 0, 1);
  feed_expect(&d, buf + 1, 3, FSP_EFRAME_EMPTY, 3);
  ASSERT_EQ(fsp_alloc_count(), 0);
  fsp_frame_decoder_close(&d);
}

/* Over the limit is refused from the header alone, before any allocation,
 * even when the whole body is already there. */
TEST(frame_too_big) {
  static const uint32_t lens[] = {1001u, 1002u, 0x80000000u, 0xFFFFFFFFu};
  uint8_t buf[FSP_FRAME_HEADER + 1001];
  struct fsp_frame_decoder d;
  size_t i;

  memset(buf, 0, sizeof(buf));
  for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
    fsp_frame_header(lens[i], buf);
    fsp_frame_decoder_init(&d, 1000);
    fsp_alloc_fail_at(0, false);
    feed_expect(&d, buf, sizeof(buf), FSP_EFRAME_TOO_BIG, FSP_FRAME_HEADER);
    ASSERT_EQ(fsp_alloc_count(), 0);
    ASSERT_EQ(fsp_frame_finish(&d), FSP_EFRAME_TOO_BIG);
    fsp_frame_decoder_close(&d);
  }

  /* With the default limit: one past it, and the largest length there is. */
  fsp_frame_header(FSP_DEFAULT_MAX_FRAME + 1u, buf);
  fsp_frame_decoder_init(&d, 0);
  feed_expect(&d, buf, FSP_FRAME_HEADER, FSP_EFRAME_TOO_BIG, FSP_FRAME_HEADER);
  fsp_frame_decoder_close(&d);
  fsp_frame_header(0xFFFFFFFFu, buf);
  fsp_frame_decoder_init(&d, 0);
  feed_expect(&d, buf, FSP_FRAME_HEADER, FSP_EFRAME_TOO_BIG, FSP_FRAME_HEADER);
  fsp_frame_decoder_close(&d);
  ASSERT_EQ(fsp_alloc_count(), 0);
}

/* Exactly at the limit and one under it are accepted, with a small limit,
 * with limit 1, and with the 4 MiB default (body fed in 64 KiB pieces). */
TEST(frame_at_limit) {
  static const size_t sizes[] = {1000, 999, 1000, 1};
  static struct stream s;
  static uint8_t chunk[65536];
  struct checker c;
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t one[FSP_FRAME_HEADER + 2] = {0};
  uint8_t *body = NULL;
  size_t len = 0;
  size_t fed;
  size_t i;

  build_stream(&s, sizes, 4);
  checker_init(&c, &s, 1000);
  feed_piece(&c, s.bytes, s.n);
  checker_end(&c);

  fsp_frame_decoder_init(&c.d, 1);
  fsp_frame_header(1, one);
  feed_expect(&c.d, one, FSP_FRAME_HEADER + 1, 1, FSP_FRAME_HEADER + 1);
  fsp_frame_take(&c.d, &body, &len);
  ASSERT_EQ(len, 1);
  fsp_free(body);
  fsp_frame_header(2, one);
  feed_expect(&c.d, one, FSP_FRAME_HEADER + 2, FSP_EFRAME_TOO_BIG,
              FSP_FRAME_HEADER);
  fsp_frame_decoder_close(&c.d);

  for (i = 0; i < sizeof(chunk); i++)
    chunk[i] = (uint8_t)(i * 7 + 3);
  fsp_frame_decoder_init(&c.d, 0);
  fsp_frame_header(FSP_DEFAULT_MAX_FRAME, hdr);
  feed_expect(&c.d, hdr, sizeof(hdr), 0, sizeof(hdr));
  for (fed = 0; fed < FSP_DEFAULT_MAX_FRAME; fed += sizeof(chunk)) {
    int want = fed + sizeof(chunk) == FSP_DEFAULT_MAX_FRAME ? 1 : 0;

    feed_expect(&c.d, chunk, sizeof(chunk), want, sizeof(chunk));
  }
  fsp_frame_take(&c.d, &body, &len);
  ASSERT_EQ(len, FSP_DEFAULT_MAX_FRAME);
  for (fed = 0; fed < FSP_DEFAULT_MAX_FRAME; fed += sizeof(chunk))
    ASSERT_MEM_EQ(body + fed, chunk, sizeof(chunk));
  fsp_free(body);
  fsp_frame_decoder_close(&c.d);
}

/* A peer that declares the largest frame and then dribbles costs what it
 * has sent: nothing for the header, FSP_FRAME_FIRST_ALLOC for the first
 * byte, and never more than twice its bytes after that. A thousand such
 * headers hold no memory at all. The body still decodes when it arrives a
 * byte at a time, in a handful of allocations. */
TEST(frame_memory_follows_bytes) {
  static struct fsp_frame_decoder many[1000];
  struct fsp_frame_decoder d;
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t *body = NULL;
  size_t len = 0;
  size_t peak = 0;
  size_t i;

  fsp_frame_header(FSP_DEFAULT_MAX_FRAME, hdr);
  fsp_alloc_fail_at(0, false);
  for (i = 0; i < 1000; i++) {
    fsp_frame_decoder_init(&many[i], 0);
    feed_expect(&many[i], hdr, sizeof(hdr), 0, sizeof(hdr));
    ASSERT(fsp_frame_partial(&many[i]));
    ASSERT_EQ(fsp_frame_held(&many[i]), 0);
  }
  ASSERT_EQ(fsp_alloc_count(), 0);
  for (i = 0; i < 1000; i++)
    fsp_frame_decoder_close(&many[i]);

  fsp_frame_decoder_init(&d, 0);
  feed_expect(&d, hdr, sizeof(hdr), 0, sizeof(hdr));
  for (i = 0; i < FSP_DEFAULT_MAX_FRAME; i++) {
    uint8_t b = (uint8_t)(i * 31 + 7);
    int want = i + 1 == FSP_DEFAULT_MAX_FRAME ? 1 : 0;
    size_t held;

    feed_expect(&d, &b, 1, want, 1);
    held = fsp_frame_held(&d);
    ASSERT_LE(held, FSP_DEFAULT_MAX_FRAME);
    ASSERT(held <= FSP_FRAME_FIRST_ALLOC || held <= 2 * (i + 1));
    if (held > peak)
      peak = held;
  }
  ASSERT_EQ(peak, FSP_DEFAULT_MAX_FRAME);
  /* 4 KiB doubling to 4 MiB: 11 allocations. */
  ASSERT_EQ(fsp_alloc_count(), 11);
  fsp_frame_take(&d, &body, &len);
  ASSERT_EQ(len, FSP_DEFAULT_MAX_FRAME);
  for (i = 0; i < FSP_DEFAULT_MAX_FRAME; i++)
    if (body[i] != (uint8_t)(i * 31 + 7))
      ASSERT_EQ(body[i], (uint8_t)(i * 31 + 7));
  fsp_free(body);
  ASSERT_EQ(fsp_frame_held(&d), 0);
  fsp_frame_decoder_close(&d);
  printf("# 4 MiB frame fed byte by byte: %d allocations, peak held %zu\n", 11,
         peak);
}

/* A body that arrives in one piece costs one allocation of its exact
 * length, however large; pieces bigger than the doubling step grow the
 * buffer straight to what they need. */
TEST(frame_growth_by_pieces) {
  static uint8_t chunk[100000];
  struct fsp_frame_decoder d;
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t *body = NULL;
  size_t len = 0;
  size_t i;

  for (i = 0; i < sizeof(chunk); i++)
    chunk[i] = (uint8_t)(i ^ (i >> 8));
  fsp_frame_header(sizeof(chunk), hdr);
  fsp_frame_decoder_init(&d, 0);
  fsp_alloc_fail_at(0, false);
  feed_expect(&d, hdr, sizeof(hdr), 0, sizeof(hdr));
  feed_expect(&d, chunk, sizeof(chunk), 1, sizeof(chunk));
  ASSERT_EQ(fsp_alloc_count(), 1);
  ASSERT_EQ(fsp_frame_held(&d), sizeof(chunk));
  fsp_frame_take(&d, &body, &len);
  ASSERT_MEM_EQ(body, chunk, sizeof(chunk));
  fsp_free(body);

  /* 10 bytes (4 KiB held), then 50,000 (straight to 50,010), then the rest
   * (the declared length: doubling would pass it). */
  fsp_alloc_fail_at(0, false);
  feed_expect(&d, hdr, sizeof(hdr), 0, sizeof(hdr));
  feed_expect(&d, chunk, 10, 0, 10);
  ASSERT_EQ(fsp_frame_held(&d), FSP_FRAME_FIRST_ALLOC);
  feed_expect(&d, chunk + 10, 50000, 0, 50000);
  ASSERT_EQ(fsp_frame_held(&d), 50010);
  feed_expect(&d, chunk + 50010, sizeof(chunk) - 50010, 1,
              sizeof(chunk) - 50010);
  ASSERT_EQ(fsp_frame_held(&d), sizeof(chunk));
  ASSERT_EQ(fsp_alloc_count(), 3);
  fsp_frame_take(&d, &body, &len);
  ASSERT_EQ(len, sizeof(chunk));
  ASSERT_MEM_EQ(body, chunk, sizeof(chunk));
  fsp_free(body);
  fsp_frame_decoder_close(&d);
}

/* Allocation failure at each growth step of a large frame fed in small
 * pieces: FSP_ENOMEM, *used counts only the bytes consumed before it, the
 * partial body is freed at once (held 0, LSan finds no leak), the error is
 * sticky; with injection off a fresh decoder takes the same stream. */
TEST(frame_growth_enomem) {
  static uint8_t stream[FSP_FRAME_HEADER + 70000];
  const size_t piece = 1000;
  uint64_t k;
  uint64_t steps = 0;

  fsp_frame_header(70000, stream);
  memset(stream + FSP_FRAME_HEADER, 0x3C, 70000);
  for (k = 1;; k++) {
    struct fsp_frame_decoder d;
    size_t off = 0;
    int rc = 0;

    fsp_frame_decoder_init(&d, 0);
    fsp_alloc_fail_at(k, false);
    while (off < sizeof(stream)) {
      size_t n = sizeof(stream) - off < piece ? sizeof(stream) - off : piece;
      size_t used = 0;

      rc = fsp_frame_feed(&d, stream + off, n, &used);
      ASSERT_LE(used, n);
      off += used;
      if (rc != 0)
        break;
      ASSERT_EQ(used, n);
    }
    if (fsp_alloc_failed() == 0) {
      /* k is past the last allocation: the frame came out whole. */
      uint8_t *body = NULL;
      size_t len = 0;

      ASSERT_EQ(rc, 1);
      fsp_frame_take(&d, &body, &len);
      ASSERT_EQ(len, 70000);
      fsp_free(body);
      fsp_frame_decoder_close(&d);
      break;
    }
    ASSERT_EQ(rc, FSP_ENOMEM);
    ASSERT_EQ(fsp_frame_held(&d), 0);
    ASSERT(!fsp_frame_partial(&d));
    /* The failing piece's body bytes were not consumed (the first piece
     * also carried the header, which was). */
    ASSERT(off == FSP_FRAME_HEADER || off % piece == 0);
    {
      size_t used = 1;
      ASSERT_EQ(fsp_frame_feed(&d, stream + off, 1, &used), FSP_ENOMEM);
      ASSERT_EQ(used, 0);
    }
    ASSERT_EQ(fsp_frame_finish(&d), FSP_ENOMEM);
    fsp_frame_decoder_close(&d);
    steps++;
  }
  /* 4 KiB, 8, 16, 32, 64 KiB, then the declared 70,000. */
  ASSERT_EQ(steps, 6);
  printf("# growth steps failed one by one: %" PRIu64 "\n", steps);
}

/* finish: 0 at a clean boundary, FSP_ETRUNCATED inside a header or body. */
TEST(frame_truncated) {
  static struct stream s;
  struct fsp_frame_decoder d;
  uint8_t *body = NULL;
  size_t len = 0;
  size_t k;

  build_ref(&s); /* frame 0: 1-byte body; frame 1: 517 bytes */
  fsp_frame_decoder_init(&d, 0);
  ASSERT_OK(fsp_frame_finish(&d)); /* an empty stream is clean */
  fsp_frame_decoder_close(&d);

  for (k = 1; k < FSP_FRAME_HEADER; k++) {
    fsp_frame_decoder_init(&d, 0);
    feed_expect(&d, s.bytes, k, 0, k);
    ASSERT_EQ(fsp_frame_finish(&d), FSP_ETRUNCATED);
    fsp_frame_decoder_close(&d);
  }

  /* Whole first frame, then the second ends in its header, at its header's
   * end and inside its body. */
  for (k = 1; k < FSP_FRAME_HEADER + s.size[1]; k++) {
    fsp_frame_decoder_init(&d, 0);
    feed_expect(&d, s.bytes, s.off[1], 1, s.off[0] + s.size[0]);
    /* A whole frame that waits untaken still ends the stream cleanly. */
    ASSERT_OK(fsp_frame_finish(&d));
    fsp_frame_take(&d, &body, &len);
    fsp_free(body);
    ASSERT_OK(fsp_frame_finish(&d));
    feed_expect(&d, s.bytes + s.off[0] + s.size[0], k, 0, k);
    ASSERT_EQ(fsp_frame_finish(&d), FSP_ETRUNCATED);
    fsp_frame_decoder_close(&d);
  }
}

/* After a failure, every call returns the same error, consumes nothing and
 * allocates nothing, even when the bytes that follow are a valid frame. */
TEST(frame_sticky_error) {
  static struct stream s;
  struct fsp_frame_decoder d;
  uint8_t hdr[FSP_FRAME_HEADER];
  uint8_t *body = NULL;
  size_t len = 1;
  int i;

  build_ref(&s);
  fsp_frame_decoder_init(&d, 100);
  fsp_frame_header(101, hdr);
  fsp_alloc_fail_at(0, false);
  feed_expect(&d, hdr, sizeof(hdr), FSP_EFRAME_TOO_BIG, sizeof(hdr));
  for (i = 0; i < 3; i++) {
    feed_expect(&d, s.bytes, s.n, FSP_EFRAME_TOO_BIG, 0);
    feed_expect(&d, s.bytes, 1, FSP_EFRAME_TOO_BIG, 0);
    feed_expect(&d, s.bytes, 0, FSP_EFRAME_TOO_BIG, 0);
  }
  ASSERT_EQ(fsp_frame_finish(&d), FSP_EFRAME_TOO_BIG);
  ASSERT(!fsp_frame_partial(&d));
  fsp_frame_take(&d, &body, &len);
  ASSERT(body == NULL);
  ASSERT_EQ(len, 0);
  ASSERT_EQ(fsp_alloc_count(), 0);
  fsp_frame_decoder_close(&d);
}

/* The body allocation fails: FSP_ENOMEM, sticky, nothing leaks (ASan/LSan
 * checks the last part). */
TEST(frame_enomem) {
  static struct stream s;
  struct checker c;
  struct fsp_frame_decoder d;

  build_ref(&s);
  /* Whole frame in one call: the failure happens at the first body byte,
   * and only the header was consumed. */
  fsp_frame_decoder_init(&d, 0);
  fsp_alloc_fail_at(1, false);
  feed_expect(&d, s.bytes, s.n, FSP_ENOMEM, FSP_FRAME_HEADER);
  ASSERT_EQ(fsp_alloc_failed(), 1);
  ASSERT(d.buf == NULL);
  ASSERT_EQ(fsp_frame_held(&d), 0);
  /* Sticky, although the allocator would now succeed. */
  feed_expect(&d, s.bytes + FSP_FRAME_HEADER, 1, FSP_ENOMEM, 0);
  ASSERT_EQ(fsp_alloc_count(), 1);
  ASSERT_EQ(fsp_frame_finish(&d), FSP_ENOMEM);
  fsp_frame_decoder_close(&d);

  /* Header split: no allocation, hence no failure, for the header at all;
   * the first body byte fails. */
  fsp_frame_decoder_init(&d, 0);
  fsp_alloc_fail_at(1, false);
  feed_expect(&d, s.bytes, 3, 0, 3);
  feed_expect(&d, s.bytes + 3, 1, 0, 1);
  ASSERT_EQ(fsp_alloc_failed(), 0);
  feed_expect(&d, s.bytes + 4, 1, FSP_ENOMEM, 0);
  ASSERT_EQ(fsp_alloc_failed(), 1);
  fsp_frame_decoder_close(&d);

  /* Failing the Nth allocation fails the Nth frame; earlier ones are whole
   * and the partial one is not leaked. */
  checker_init(&c, &s, 0);
  fsp_alloc_fail_at(3, false);
  feed_expect(&c.d, s.bytes, s.n, 1, s.off[0] + s.size[0]);
  take_and_check(&c);
  feed_expect(&c.d, s.bytes + s.off[1] - FSP_FRAME_HEADER,
              s.n - (s.off[1] - FSP_FRAME_HEADER), 1,
              FSP_FRAME_HEADER + s.size[1]);
  take_and_check(&c);
  feed_expect(&c.d, s.bytes + s.off[2] - FSP_FRAME_HEADER, 2, 0, 2);
  feed_expect(&c.d, s.bytes + s.off[2] - FSP_FRAME_HEADER + 2, 100, FSP_ENOMEM,
              2);
  ASSERT_EQ(fsp_alloc_failed(), 1);
  fsp_frame_decoder_close(&c.d);
}

/* Random headers, then random bytes: every outcome is the one the length
 * implies, and nothing crashes. Half the headers have a small length so
 * that bodies are also read, not only refused. */
TEST(frame_garbage_headers) {
  static const uint32_t limits[] = {1, 2, 255, 4096, 65536};
  uint64_t state = test_seed();
  uint64_t rounds = 20000 * test_scale();
  uint8_t buf[FSP_FRAME_HEADER + 300];
  uint64_t r;

  for (r = 0; r < rounds; r++) {
    struct fsp_frame_decoder d;
    uint32_t limit = limits[test_rand_below(&state, 5)];
    size_t tail = (size_t)test_rand_below(&state, 301);
    uint32_t len;
    int rc;
    size_t used = 0;
    size_t i;

    for (i = 0; i < sizeof(buf); i++)
      buf[i] = (uint8_t)test_rand(&state);
    if (test_rand_below(&state, 2) == 0) {
      buf[0] = 0;
      buf[1] = 0;
      buf[2] &= 0x01;
    }
    len = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 |
          (uint32_t)buf[2] << 8 | buf[3];
    fsp_frame_decoder_init(&d, limit);
    fsp_alloc_fail_at(0, false);
    rc = fsp_frame_feed(&d, buf, FSP_FRAME_HEADER + tail, &used);
    if (len == 0) {
      ASSERT_EQ(rc, FSP_EFRAME_EMPTY);
      ASSERT_EQ(used, FSP_FRAME_HEADER);
      ASSERT_EQ(fsp_alloc_count(), 0);
    } else if (len > limit) {
      ASSERT_EQ(rc, FSP_EFRAME_TOO_BIG);
      ASSERT_EQ(used, FSP_FRAME_HEADER);
      ASSERT_EQ(fsp_alloc_count(), 0);
    } else if (len <= tail) {
      uint8_t *body = NULL;
      size_t blen = 0;

      ASSERT_EQ(rc, 1);
      ASSERT_EQ(used, FSP_FRAME_HEADER + len);
      fsp_frame_take(&d, &body, &blen);
      ASSERT_EQ(blen, len);
      ASSERT_MEM_EQ(body, buf + FSP_FRAME_HEADER, len);
      fsp_free(body);
    } else {
      ASSERT_EQ(rc, 0);
      ASSERT_EQ(used, FSP_FRAME_HEADER + tail);
      ASSERT(fsp_frame_partial(&d));
      ASSERT_EQ(fsp_frame_finish(&d), FSP_ETRUNCATED);
    }
    fsp_frame_decoder_close(&d);
  }
}

/* A stream of pure noise fed in random pieces: frames or a length error,
 * never anything else. */
TEST(frame_garbage_stream) {
  uint64_t state = test_seed();
  uint64_t rounds = 2000 * test_scale();
  uint8_t buf[512];
  uint64_t r;

  for (r = 0; r < rounds; r++) {
    struct fsp_frame_decoder d;
    size_t off = 0;
    size_t i;
    int rc = 0;

    for (i = 0; i < sizeof(buf); i++)
      buf[i] = (uint8_t)test_rand(&state);
    /* Bias the stream towards short lengths some of the time. */
    if (test_rand_below(&state, 2) == 0)
      for (i = 0; i < sizeof(buf); i++)
        if (test_rand_below(&state, 3) == 0)
          buf[i] = 0;
    fsp_frame_decoder_init(&d, 300);
    while (off < sizeof(buf)) {
      size_t n = 1 + (size_t)test_rand_below(&state, 64);
      size_t used = 0;

      if (n > sizeof(buf) - off)
        n = sizeof(buf) - off;
      rc = fsp_frame_feed(&d, buf + off, n, &used);
      ASSERT_LE(used, n);
      off += used;
      if (rc < 0)
        break;
      if (rc == 1) {
        uint8_t *body = NULL;
        size_t blen = 0;

        fsp_frame_take(&d, &body, &blen);
        ASSERT(body != NULL);
        ASSERT(blen >= 1 && blen <= 300);
        fsp_free(body);
      }
    }
    ASSERT(rc == 0 || rc == 1 || rc == FSP_EFRAME_EMPTY ||
           rc == FSP_EFRAME_TOO_BIG);
    rc = fsp_frame_finish(&d);
    ASSERT(rc == 0 || rc == FSP_ETRUNCATED || rc == FSP_EFRAME_EMPTY ||
           rc == FSP_EFRAME_TOO_BIG);
    fsp_frame_decoder_close(&d);
  }
}

/* partial is true from the first header byte until the frame is whole. */
TEST(frame_partial) {
  uint8_t buf[FSP_FRAME_HEADER + 10];
  struct fsp_frame_decoder d;
  uint8_t *body = NULL;
  size_t len = 0;

  fsp_frame_header(10, buf);
  memset(buf + FSP_FRAME_HEADER, 1, 10);
  fsp_frame_decoder_init(&d, 0);
  ASSERT(!fsp_frame_partial(&d));
  feed_expect(&d, buf, 1, 0, 1);
  ASSERT(fsp_frame_partial(&d));
  feed_expect(&d, buf + 1, 3, 0, 3);
  ASSERT(fsp_frame_partial(&d));
  feed_expect(&d, buf + 4, 9, 0, 9);
  ASSERT(fsp_frame_partial(&d));
  feed_expect(&d, buf + 13, 1, 1, 1);
  ASSERT(!fsp_frame_partial(&d)); /* whole, waiting to be taken */
  fsp_frame_take(&d, &body, &len);
  fsp_free(body);
  ASSERT(!fsp_frame_partial(&d));
  /* A failed decoder holds no frame in progress. */
  buf[0] = 0xFF;
  feed_expect(&d, buf, 2, 0, 2);
  ASSERT(fsp_frame_partial(&d));
  feed_expect(&d, buf + 2, 2, FSP_EFRAME_TOO_BIG, 2);
  ASSERT(!fsp_frame_partial(&d));
  fsp_frame_decoder_close(&d);
}

/* While a frame waits, feeding consumes nothing and reports it again. */
TEST(frame_feed_while_ready) {
  static struct stream s;
  struct checker c;

  build_ref(&s);
  checker_init(&c, &s, 0);
  feed_expect(&c.d, s.bytes, s.n, 1, s.off[0] + s.size[0]);
  feed_expect(&c.d, s.bytes + s.off[1] - FSP_FRAME_HEADER, 10, 1, 0);
  take_and_check(&c);
  feed_piece(&c, s.bytes + s.off[1] - FSP_FRAME_HEADER,
             s.n - (s.off[1] - FSP_FRAME_HEADER));
  checker_end(&c);
}

/* take without a whole frame hands out nothing and disturbs nothing. */
TEST(frame_take_without_frame) {
  static struct stream s;
  struct checker c;
  static uint8_t dummy;
  uint8_t *body = &dummy;
  size_t len = 99;

  build_ref(&s);
  checker_init(&c, &s, 0);
  fsp_frame_take(&c.d, &body, &len);
  ASSERT(body == NULL);
  ASSERT_EQ(len, 0);
  feed_piece(&c, s.bytes, s.off[1] + 5);
  fsp_frame_take(&c.d, &body, &len);
  ASSERT(body == NULL);
  ASSERT_EQ(len, 0);
  feed_piece(&c, s.bytes + s.off[1] + 5, s.n - s.off[1] - 5);
  checker_end(&c);
}

/* close frees a partial or untaken frame (LSan reports a leak otherwise),
 * may be called twice or on NULL, and d can be reinitialised and reused. */
TEST(frame_close_frees_partial) {
  static struct stream s;
  struct checker c;
  struct fsp_frame_decoder d;

  build_ref(&s);
  fsp_frame_decoder_init(&d, 0);
  feed_expect(&d, s.bytes, s.off[2] + 100, 1, s.off[0] + s.size[0]);
  fsp_frame_decoder_close(&d); /* frees the untaken frame */
  fsp_frame_decoder_close(&d);
  fsp_frame_decoder_close(NULL);

  fsp_frame_decoder_init(&d, 0);
  feed_expect(&d, s.bytes + s.off[2] - FSP_FRAME_HEADER, FSP_FRAME_HEADER + 100,
              0, FSP_FRAME_HEADER + 100);
  ASSERT(d.buf != NULL);
  fsp_frame_decoder_close(&d); /* frees the partial body */
  ASSERT(d.buf == NULL);
  ASSERT(!fsp_frame_partial(&d));

  checker_init(&c, &s, 0);
  feed_piece(&c, s.bytes, s.off[4] + 1);
  fsp_frame_decoder_close(&c.d);
  checker_init(&c, &s, 0);
  feed_piece(&c, s.bytes, s.n);
  checker_end(&c);
}

/* Bad arguments are refused with FSP_EINVAL without killing the stream. */
TEST(frame_bad_args) {
  static struct stream s;
  struct checker c;
  size_t used = 5;

  build_ref(&s);
  checker_init(&c, &s, 0);
  ASSERT_EQ(fsp_frame_feed(NULL, s.bytes, 1, &used), FSP_EINVAL);
  ASSERT_EQ(used, 0);
  ASSERT_EQ(fsp_frame_feed(&c.d, s.bytes, 1, NULL), FSP_EINVAL);
  used = 5;
  ASSERT_EQ(fsp_frame_feed(&c.d, NULL, 1, &used), FSP_EINVAL);
  ASSERT_EQ(used, 0);
  ASSERT_EQ(fsp_frame_feed(&c.d, NULL, 0, &used), 0);
  ASSERT_EQ(used, 0);
  ASSERT_EQ(fsp_frame_finish(NULL), FSP_EINVAL);
  ASSERT(!fsp_frame_partial(NULL));
  feed_piece(&c, s.bytes, s.n);
  checker_end(&c);
}

/* One entry per line, which clang-format would reflow. */
/* clang-format off */
TEST_LIST(TEST_ENTRY(frame_header_roundtrip)
          TEST_ENTRY(frame_default_limit)
          TEST_ENTRY(frame_stream_one_call)
          TEST_ENTRY(frame_stream_every_split)
          TEST_ENTRY(frame_stream_byte_at_a_time)
          TEST_ENTRY(frame_stream_random_splits)
          TEST_ENTRY(frame_many_frames_one_call)
          TEST_ENTRY(frame_header_split)
          TEST_ENTRY(frame_zero_length)
          TEST_ENTRY(frame_too_big)
          TEST_ENTRY(frame_at_limit)
          TEST_ENTRY(frame_memory_follows_bytes)
          TEST_ENTRY(frame_growth_by_pieces)
          TEST_ENTRY(frame_growth_enomem)
          TEST_ENTRY(frame_truncated)
          TEST_ENTRY(frame_sticky_error)
          TEST_ENTRY(frame_enomem)
          TEST_ENTRY(frame_garbage_headers)
          TEST_ENTRY(frame_garbage_stream)
          TEST_ENTRY(frame_partial)
          TEST_ENTRY(frame_feed_while_ready)
          TEST_ENTRY(frame_take_without_frame)
          TEST_ENTRY(frame_close_frees_partial)
          TEST_ENTRY(frame_bad_args))
/* clang-format on */
