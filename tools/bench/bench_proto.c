/* SPDX-License-Identifier: MIT */
/* Micro-benchmark of the protocol core: encode and decode (with validation)
 * of a Push envelope carrying one ~500-byte observation, version-vector
 * compare and join, and the record merge. Prints ns/op for each.
 * Usage: bench_proto [iterations]   (default 200000) */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fsp_merge.h"
#include "fsp_msg.h"
#include "fsp_samples.h"

static double now_ns(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static void report(const char *what, double t0, long iters) {
  printf("%-44s %10.1f ns/op\n", what, (now_ns() - t0) / (double)iters);
}

/* Sink so the compiler keeps the work. */
static volatile size_t sink;

static void make_vv(struct fsp_vv *v, int replicas, uint64_t base) {
  uint8_t r[16];
  int i;

  fsp_vv_init(v);
  for (i = 0; i < replicas; i++) {
    memset(r, 0, sizeof(r));
    r[0] = (uint8_t)(i * 37 + 1);
    if (fsp_vv_set(v, r, base + (uint64_t)i) != 0) {
      fprintf(stderr, "bench_proto: out of memory\n");
      exit(1);
    }
  }
}

int main(int argc, char **argv) {
  long iters = 200000;
  struct sample_envelope s;
  struct fsp_limits lim;
  static uint8_t body[1 << 16];
  size_t n;
  long i;
  double t0;

  if (argc > 1) {
    char *end = NULL;
    errno = 0;
    iters = strtol(argv[1], &end, 10);
    if (errno != 0 || end == argv[1] || *end != '\0' || iters <= 0) {
      fprintf(stderr, "usage: bench_proto [iterations > 0]\n");
      return 2;
    }
  }
  fsp_limits_default(&lim);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  sample_change_init(&s.ch[0], 1, 300);
  s.push.n_changes = 1;
  n = sample_envelope_pack(&s, body, sizeof(body));
  printf("envelope: Push with one observation, %zu bytes\n", n);

  t0 = now_ns();
  for (i = 0; i < iters; i++)
    sink += fieldsync__envelope__pack(&s.env, body);
  report("encode (pack)", t0, iters);

  t0 = now_ns();
  for (i = 0; i < iters; i++) {
    uint8_t *frame;
    size_t len;
    if (fsp_msg_encode_frame(&s.env, lim.max_frame, &frame, &len) != 0)
      return 1;
    sink += len;
    fsp_free(frame);
  }
  report("encode frame (pack + header + malloc)", t0, iters);

  t0 = now_ns();
  for (i = 0; i < iters; i++) {
    struct fsp_msg m;
    struct fsp_error err;
    if (fsp_msg_decode(&m, body, n, &lim, &err) != 0) {
      fprintf(stderr, "decode failed: %s\n", err.msg);
      return 1;
    }
    sink += m.env->push->n_changes;
    fsp_msg_close(&m);
  }
  report("decode + validate (incl. SHA-256 check)", t0, iters);

  {
    struct fsp_vv a;
    struct fsp_vv b;
    struct fsp_vv c;
    int replicas[] = {2, 8, 32};
    size_t k;

    for (k = 0; k < sizeof(replicas) / sizeof(replicas[0]); k++) {
      char label[64];
      make_vv(&a, replicas[k], 5);
      make_vv(&b, replicas[k], 5);
      fsp_vv_increment(&b, b.e[0].replica);
      fsp_vv_init(&c);
      t0 = now_ns();
      for (i = 0; i < iters; i++)
        sink += (size_t)fsp_vv_compare(&a, &b);
      snprintf(label, sizeof(label), "vv compare (%d replicas)", replicas[k]);
      report(label, t0, iters);
      t0 = now_ns();
      for (i = 0; i < iters; i++) {
        c.n = 0;
        fsp_vv_join(&c, &a);
        fsp_vv_join(&c, &b);
        sink += c.n;
      }
      snprintf(label, sizeof(label), "vv join x2 (%d replicas)", replicas[k]);
      report(label, t0, iters);
      fsp_vv_close(&a);
      fsp_vv_close(&b);
      fsp_vv_close(&c);
    }
  }

  {
    struct fsp_vv v[3];
    uint8_t h[3][FSP_HASH_LEN];
    struct fsp_vref cur[2];
    struct fsp_vref in;
    struct fsp_merge_result res;
    bool keep[2];
    int j;

    for (j = 0; j < 3; j++) {
      make_vv(&v[j], 4, 3);
      memset(h[j], j, sizeof(h[j]));
    }
    /* Two concurrent siblings; incoming resolves both. */
    fsp_vv_increment(&v[0], v[0].e[1].replica);
    fsp_vv_increment(&v[1], v[1].e[2].replica);
    fsp_vv_join(&v[2], &v[0]);
    fsp_vv_join(&v[2], &v[1]);
    fsp_vv_increment(&v[2], v[2].e[3].replica);
    cur[0].vv = &v[0];
    cur[0].hash = h[0];
    cur[1].vv = &v[1];
    cur[1].hash = h[1];
    in.vv = &v[2];
    in.hash = h[2];
    t0 = now_ns();
    for (i = 0; i < iters; i++) {
      fsp_merge(cur, 2, &in, keep, &res);
      sink += res.removed;
    }
    report("merge (2 siblings + resolving version)", t0, iters);
    t0 = now_ns();
    for (i = 0; i < iters; i++) {
      fsp_merge(cur, 1, &cur[1], keep, &res);
      sink += res.outcome;
    }
    report("merge (concurrent -> conflict)", t0, iters);
    for (j = 0; j < 3; j++)
      fsp_vv_close(&v[j]);
  }

  {
    uint8_t h[FSP_HASH_LEN];
    t0 = now_ns();
    for (i = 0; i < iters; i++) {
      fsp_merge_hash(false, body, 500, h);
      sink += h[0];
    }
    report("content hash (SHA-256 of 500 bytes)", t0, iters);
  }
  return 0;
}
