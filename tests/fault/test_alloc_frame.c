/* SPDX-License-Identifier: MIT */
/* Allocation failure at every k over the proto/ path a peer's bytes take:
 * frames encoded, the frame decoder fed a multi-frame stream in odd splits,
 * each envelope decoded under its byte budget and validated, and the steps
 * both sides then take per change (version vector, vector join, payload
 * decode). For every k from 1 to the allocations of a clean run, once and
 * sticky: the failure is a clean FSP_ENOMEM with a message, never a crash
 * and never a success; nothing leaks (LeakSanitizer in the ASan build); and
 * once injection stops, the same decoder (or, after the frame decoder's
 * sticky error, a fresh one) decodes the whole stream correctly.
 *
 * Every split pattern has its own allocation count (the decoder grows a
 * body buffer as it arrives), and every k of each is tried, once and
 * sticky: a few thousand runs of a few hundred microseconds. */
#include <string.h>

#include "fsp_alloc.h"
#include "fsp_err.h"
#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_payload.h"
#include "fsp_samples.h"
#include "fsp_vv.h"
#include "harness.h"

/* The stream: one envelope of every body type, a four-change Push, and a
 * Pull padded with an unknown field to BIG_FRAME bytes, whose body buffer
 * the frame decoder grows in several steps when it arrives in pieces. */
static const Fieldsync__Envelope__BodyCase bodies[] = {
    FIELDSYNC__ENVELOPE__BODY_HELLO, FIELDSYNC__ENVELOPE__BODY_WELCOME,
    FIELDSYNC__ENVELOPE__BODY_PUSH,  FIELDSYNC__ENVELOPE__BODY_PUSH_ACK,
    FIELDSYNC__ENVELOPE__BODY_PULL,  FIELDSYNC__ENVELOPE__BODY_CHANGES,
    FIELDSYNC__ENVELOPE__BODY_ERROR, FIELDSYNC__ENVELOPE__BODY_BYE,
    FIELDSYNC__ENVELOPE__BODY_PUSH,  FIELDSYNC__ENVELOPE__BODY_PULL,
};
#define NMSG (sizeof(bodies) / sizeof(bodies[0]))
#define PUSH4 (NMSG - 2)
#define BIG (NMSG - 1)
#define BIG_FRAME 40000u
#define STREAM_CAP 65536

static struct sample_envelope samples[NMSG];
static struct sample_pad pad;
static uint8_t pad_bulk[BIG_FRAME];
static uint8_t stream[STREAM_CAP];
static size_t stream_len;
static size_t body_off[NMSG];
static size_t body_len[NMSG];
static struct fsp_limits lim;
static uint8_t repack[STREAM_CAP];

/* Split patterns: the stream is fed in pieces of these sizes, cycling. */
static const size_t patterns[][5] = {
    {1, 0},       {2, 3, 0},         {3, 5, 7, 0},    {4, 0}, {5, 11, 2, 97, 0},
    {1, 4096, 0}, {13, 1, 1, 64, 0}, {STREAM_CAP, 0},
};
#define NPAT (sizeof(patterns) / sizeof(patterns[0]))

/* Where an injected failure surfaced; figures for the report. */
enum phase { PH_ENCODE, PH_FRAME, PH_DECODE, PH_VV, PH_JOIN, PH_PAYLOAD, NPH };
static const char *const phase_name[NPH] = {"encode", "frame", "decode",
                                            "vv",     "join",  "payload"};

/* One execution of the pipeline. */
struct run {
  uint64_t k;
  bool sticky;
  size_t pat;
  bool armed;        /* injection still on */
  bool sticky_retry; /* retrying under sticky: the call must fail again */
  int failures;      /* FSP_ENOMEM results seen */
  int first;         /* phase of the first one */
  size_t frames;     /* frames decoded and checked, over all decoders */
  struct fsp_vv acc; /* join of every change's vector */
};

static size_t hits[NPH];

static void build_stream(void) {
  size_t i;

  fsp_limits_default(&lim);
  stream_len = 0;
  for (i = 0; i < NMSG; i++) {
    size_t n;

    sample_envelope_init(&samples[i], bodies[i]);
    if (i == BIG)
      ASSERT(sample_envelope_pad(&samples[i].env, BIG_FRAME, &pad, pad_bulk,
                                 sizeof(pad_bulk)));
    if (i == PUSH4) {
      size_t c;
      for (c = 2; c < SAMPLE_MAX_CHANGES; c++) {
        sample_change_init(&samples[i].ch[c], (uint32_t)(c + 10), 100 * c);
        samples[i].chp[c] = &samples[i].ch[c].c;
      }
      samples[i].push.n_changes = SAMPLE_MAX_CHANGES;
    }
    n = sample_envelope_pack(&samples[i],
                             stream + stream_len + FSP_FRAME_HEADER,
                             sizeof(stream) - stream_len - FSP_FRAME_HEADER);
    ASSERT_GT(n, 0);
    fsp_frame_header((uint32_t)n, stream + stream_len);
    body_off[i] = stream_len + FSP_FRAME_HEADER;
    body_len[i] = n;
    stream_len += FSP_FRAME_HEADER + n;
  }
}

/* Records a failed call: it must be FSP_ENOMEM while injection was armed and
 * did make an allocation fail. Under sticky, the first failure is retried
 * with injection still on (every allocation fails, so the retry must fail
 * too); otherwise injection stops and the caller retries cleanly. */
static void on_failure(struct run *r, int rc, enum phase ph,
                       const struct fsp_error *err) {
  if (rc != FSP_ENOMEM)
    test_fail(__FILE__, __LINE__, "k=%" PRIu64 "%s %s: %s (%s)", r->k,
              r->sticky ? " sticky" : "", phase_name[ph], fsp_err_name(rc),
              err != NULL ? err->msg : "");
  if (!r->armed || fsp_alloc_failed() == 0)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 " %s: FSP_ENOMEM with no injected failure", r->k,
              phase_name[ph]);
  if (err != NULL) {
    ASSERT_EQ(err->code, FSP_ENOMEM);
    ASSERT(strstr(err->msg, "out of memory") != NULL);
  }
  if (r->failures++ == 0) {
    r->first = (int)ph;
    hits[ph]++;
  }
  if (r->sticky && r->failures == 1) {
    r->sticky_retry = true;
    return;
  }
  r->sticky_retry = false;
  r->armed = false;
  fsp_alloc_fail_at(0, false);
}

/* Records a successful call: under a sticky retry that is a wrong success. */
static void on_success(struct run *r, enum phase ph) {
  if (r->sticky_retry)
    test_fail(__FILE__, __LINE__,
              "k=%" PRIu64 " sticky %s: succeeded while every allocation "
              "fails",
              r->k, phase_name[ph]);
}

/* Each frame encoded on its own must give the stream's bytes. */
static void encode_all(struct run *r) {
  size_t i;

  for (i = 0; i < NMSG; i++) {
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    for (;;) {
      rc = fsp_msg_encode_frame(&samples[i].env, lim.max_frame, &buf, &len);
      if (rc == 0)
        break;
      ASSERT(buf == NULL);
      on_failure(r, rc, PH_ENCODE, NULL);
    }
    on_success(r, PH_ENCODE);
    ASSERT_EQ(len, FSP_FRAME_HEADER + body_len[i]);
    ASSERT_MEM_EQ(buf, stream + body_off[i] - FSP_FRAME_HEADER, len);
    fsp_free(buf);
  }
}

/* The per-change steps: vector from the wire, joined into r->acc, and the
 * payload decoded as its collection. */
static void check_changes(struct run *r, Fieldsync__Change **changes,
                          size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    const Fieldsync__Change *c = changes[i];
    const struct fsp_collection *col = fsp_payload_by_id(c->key->collection);
    struct fsp_error err;
    struct fsp_budget budget;
    ProtobufCMessage *msg = NULL;
    struct fsp_vv vv;
    int rc;

    fsp_vv_init(&vv);
    for (;;) {
      rc = fsp_msg_vv_from_pb(&vv, c->version->vv, c->version->n_vv, lim.max_vv,
                              &err);
      if (rc == 0)
        break;
      on_failure(r, rc, PH_VV, &err);
    }
    on_success(r, PH_VV);
    ASSERT_EQ(vv.n, c->version->n_vv);
    for (;;) {
      rc = fsp_vv_join(&r->acc, &vv);
      if (rc == 0)
        break;
      on_failure(r, rc, PH_JOIN, NULL);
    }
    on_success(r, PH_JOIN);
    fsp_vv_close(&vv);

    ASSERT(col != NULL);
    for (;;) {
      rc = fsp_payload_decode(col, c->version->payload.data,
                              c->version->payload.len, &lim, &budget, &msg,
                              &err);
      if (rc == 0)
        break;
      ASSERT(msg == NULL);
      ASSERT_EQ(budget.used, 0);
      on_failure(r, rc, PH_PAYLOAD, &err);
    }
    on_success(r, PH_PAYLOAD);
    ASSERT(msg != NULL);
    fsp_payload_free(msg, &budget);
    ASSERT_EQ(budget.used, 0);
  }
}

/* Frame i's body came out of the decoder: it must be the stream's bytes,
 * decode to the sample's body type and re-encode to the same bytes. */
static void check_frame(struct run *r, size_t i, const uint8_t *body,
                        size_t len) {
  struct fsp_error err;
  struct fsp_msg m;
  int rc;

  ASSERT_LT(i, NMSG);
  ASSERT_EQ(len, body_len[i]);
  ASSERT_MEM_EQ(body, stream + body_off[i], len);
  for (;;) {
    memset(&err, 0, sizeof(err));
    rc = fsp_msg_decode(&m, body, len, &lim, &err);
    if (rc == 0)
      break;
    ASSERT(m.env == NULL);
    ASSERT_EQ(m.budget.used, 0);
    on_failure(r, rc, PH_DECODE, &err);
  }
  on_success(r, PH_DECODE);
  ASSERT_EQ(m.env->body_case, bodies[i]);
  ASSERT_EQ(fieldsync__envelope__get_packed_size(m.env), len);
  ASSERT_EQ(fieldsync__envelope__pack(m.env, repack), len);
  ASSERT_MEM_EQ(repack, body, len);
  if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_PUSH)
    check_changes(r, m.env->push->changes, m.env->push->n_changes);
  if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_CHANGES)
    check_changes(r, m.env->changes->changes, m.env->changes->n_changes);
  fsp_msg_close(&m);
  ASSERT_EQ(m.budget.used, 0);
  r->frames++;
}

/* The frame decoder failed: its error must be sticky (the same code again,
 * nothing consumed, no partial frame) and closing it frees everything. */
static void frame_failed(struct run *r, struct fsp_frame_decoder *d, int rc,
                         size_t off) {
  size_t used = 1;

  on_failure(r, rc, PH_FRAME, NULL);
  ASSERT_EQ(fsp_frame_feed(d, stream + off, stream_len - off, &used), rc);
  ASSERT_EQ(used, 0);
  ASSERT(!fsp_frame_partial(d));
  ASSERT_EQ(fsp_frame_finish(d), rc);
  fsp_frame_decoder_close(d);
  if (r->armed) { /* the sticky retry: the stream is dead, retry fresh */
    r->armed = false;
    r->sticky_retry = false;
    fsp_alloc_fail_at(0, false);
  }
}

/* Feeds the whole stream in r->pat's pieces. Returns false when the frame
 * decoder failed (it is closed; the caller starts a fresh one). */
static bool decode_stream(struct run *r) {
  struct fsp_frame_decoder d;
  const size_t *pat = patterns[r->pat];
  size_t off = 0;
  size_t step = 0;
  size_t frame = 0;

  fsp_frame_decoder_init(&d, lim.max_frame);
  while (off < stream_len) {
    size_t n = pat[step];
    size_t used = 0;
    int rc;

    step = pat[step + 1] == 0 ? 0 : step + 1;
    if (n > stream_len - off)
      n = stream_len - off;
    /* A ready frame stops consumption; feed the rest of the piece after. */
    for (;;) {
      rc = fsp_frame_feed(&d, stream + off, n, &used);
      if (rc < 0) {
        frame_failed(r, &d, rc, off);
        return false;
      }
      off += used;
      n -= used;
      if (rc == 1) {
        uint8_t *body = NULL;
        size_t len = 0;

        fsp_frame_take(&d, &body, &len);
        check_frame(r, frame++, body, len);
        fsp_free(body);
      }
      if (n == 0)
        break;
    }
  }
  ASSERT_EQ(frame, NMSG);
  ASSERT_OK(fsp_frame_finish(&d));
  fsp_frame_decoder_close(&d);
  return true;
}

/* One execution; with k = 0 a clean run. Returns its allocation count. */
static uint64_t run_pipeline(uint64_t k, bool sticky, size_t pat,
                             struct fsp_vv *acc_out) {
  struct run r;
  uint64_t count;
  int tries = 0;

  memset(&r, 0, sizeof(r));
  r.k = k;
  r.sticky = sticky;
  r.pat = pat;
  r.first = -1;
  fsp_vv_init(&r.acc);
  r.armed = k != 0;
  fsp_alloc_fail_at(k, sticky);
  encode_all(&r);
  while (!decode_stream(&r))
    ASSERT_LT(++tries, 2); /* injection is off after one decoder failed */
  count = fsp_alloc_count();
  fsp_alloc_fail_at(0, false);
  if (k != 0) {
    /* k is within a clean run's allocations, so one of them failed, and
     * that failure must have surfaced. */
    ASSERT(!r.armed);
    ASSERT_GE(r.failures, 1);
    ASSERT_LE(r.failures, 2);
  }
  ASSERT_GE(r.frames, NMSG);
  if (acc_out != NULL) {
    ASSERT_OK(fsp_vv_copy(acc_out, &r.acc));
  }
  fsp_vv_close(&r.acc);
  return count;
}

TEST(every_k_fails_cleanly) {
  struct fsp_vv clean;
  struct fsp_vv acc;
  uint64_t total[NPAT];
  uint64_t points = 0;
  uint64_t k;
  size_t p;
  int s;

  build_stream();
  fsp_vv_init(&clean);
  fsp_vv_init(&acc);
  /* The frame decoder grows a body buffer as the body arrives, so each
   * split pattern has its own allocation count. */
  for (p = 0; p < NPAT; p++) {
    total[p] = run_pipeline(0, false, p, p == 0 ? &clean : NULL);
    ASSERT_GT(total[p], 0);
  }
  ASSERT_GT(clean.n, 0);
  printf("# stream: %zu frames, %zu bytes; a clean run makes %" PRIu64
         " (whole stream at once) to %" PRIu64 " (byte by byte) allocations\n",
         NMSG, stream_len, total[NPAT - 1], total[0]);
  ASSERT_GT(total[0], total[NPAT - 1]);

  for (p = 0; p < NPAT; p++) {
    for (k = 1; k <= total[p]; k++) {
      for (s = 0; s < 2; s++) {
        run_pipeline(k, s == 1, p, &acc);
        ASSERT_EQ(fsp_vv_compare(&acc, &clean), FSP_VV_EQUAL);
        points++;
      }
    }
  }
  fsp_vv_close(&acc);
  fsp_vv_close(&clean);
  printf("# fault points covered: %" PRIu64 " (every k, once and sticky, "
         "under each of %zu split patterns)\n",
         points, (size_t)NPAT);
  printf("# failures surfaced in: encode %zu, frame %zu, decode %zu, vv %zu, "
         "join %zu, payload %zu\n",
         hits[PH_ENCODE], hits[PH_FRAME], hits[PH_DECODE], hits[PH_VV],
         hits[PH_JOIN], hits[PH_PAYLOAD]);
  ASSERT_GT(hits[PH_ENCODE], 0);
  ASSERT_GT(hits[PH_FRAME], 0);
  ASSERT_GT(hits[PH_DECODE], 0);
  ASSERT_GT(hits[PH_PAYLOAD], 0);
}

TEST_LIST(TEST_ENTRY(every_k_fails_cleanly))
