/* SPDX-License-Identifier: MIT */
/* Writes the seed corpus: one valid frame per message type, plus a whole
 * session (hello, push, pull, bye) in one file. Run it when the schema
 * changes: gen_corpus tests/fuzz/corpus/envelope */
#include <stdio.h>
#include <string.h>

#include "fsp_frame.h"
#include "fsp_samples.h"

static uint8_t body[1 << 16];

static size_t frame(Fieldsync__Envelope__BodyCase c, uint8_t *out) {
  struct sample_envelope s;
  size_t n;

  sample_envelope_init(&s, c);
  n = sample_envelope_pack(&s, body, sizeof(body));
  fsp_frame_header((uint32_t)n, out);
  memcpy(out + FSP_FRAME_HEADER, body, n);
  return n + FSP_FRAME_HEADER;
}

static int write_file(const char *dir, const char *name, const uint8_t *d,
                      size_t n) {
  char path[4096];
  FILE *f;

  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "wb");
  if (f == NULL || fwrite(d, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s\n", path);
    if (f != NULL)
      fclose(f);
    return 1;
  }
  return fclose(f) != 0;
}

int main(int argc, char **argv) {
  static const struct {
    Fieldsync__Envelope__BodyCase c;
    const char *name;
  } seeds[] = {
      {FIELDSYNC__ENVELOPE__BODY_HELLO, "valid-hello"},
      {FIELDSYNC__ENVELOPE__BODY_WELCOME, "valid-welcome"},
      {FIELDSYNC__ENVELOPE__BODY_PUSH, "valid-push"},
      {FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, "valid-push-ack"},
      {FIELDSYNC__ENVELOPE__BODY_PULL, "valid-pull"},
      {FIELDSYNC__ENVELOPE__BODY_CHANGES, "valid-changes"},
      {FIELDSYNC__ENVELOPE__BODY_ERROR, "valid-error"},
      {FIELDSYNC__ENVELOPE__BODY_BYE, "valid-bye"},
  };
  static uint8_t out[1 << 18];
  size_t i;
  size_t n = 0;
  int bad = 0;

  if (argc != 2) {
    fprintf(stderr, "usage: gen_corpus DIR\n");
    return 2;
  }
  for (i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
    size_t k = frame(seeds[i].c, out);
    bad |= write_file(argv[1], seeds[i].name, out, k);
  }
  n += frame(FIELDSYNC__ENVELOPE__BODY_HELLO, out + n);
  n += frame(FIELDSYNC__ENVELOPE__BODY_PUSH, out + n);
  n += frame(FIELDSYNC__ENVELOPE__BODY_PULL, out + n);
  n += frame(FIELDSYNC__ENVELOPE__BODY_BYE, out + n);
  bad |= write_file(argv[1], "valid-session", out, n);
  return bad;
}
