/* SPDX-License-Identifier: MIT */
/* libFuzzer target over the whole receive path: frame decoding (input fed
 * in pieces whose sizes come from the input), envelope unpack under the
 * budget, validation, and typed payload validation of every change. The
 * same function is replayed over the committed corpus as a plain test. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_payload.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_payloads(Fieldsync__Change *const *c, size_t n,
                           const struct fsp_limits *lim) {
  size_t i;

  for (i = 0; i < n; i++) {
    const struct fsp_collection *col =
        fsp_payload_by_id((int)c[i]->key->collection);
    const Fieldsync__Version *v = c[i]->version;
    struct fsp_budget b;
    struct fsp_error err;
    ProtobufCMessage *msg;
    uint8_t scope[16];
    int kind;

    if (col == NULL || v->deleted)
      continue;
    if (fsp_payload_decode(col, v->payload.data, v->payload.len, lim, &b, &msg,
                           &err) != 0)
      continue;
    (void)fsp_payload_scope(col, c[i]->key->id.data, msg, &kind, scope, &err);
    fsp_payload_free(msg, &b);
  }
}

static void handle_body(const uint8_t *body, size_t len,
                        const struct fsp_limits *lim) {
  struct fsp_error err;
  struct fsp_msg m;

  if (fsp_msg_decode(&m, body, len, lim, &err) != 0)
    return;
  if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_PUSH)
    check_payloads(m.env->push->changes, m.env->push->n_changes, lim);
  else if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_CHANGES)
    check_payloads(m.env->changes->changes, m.env->changes->n_changes, lim);
  fsp_msg_close(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct fsp_frame_decoder d;
  struct fsp_limits lim;
  size_t off = 0;
  size_t step = 1;
  int rc = 0;

  fsp_limits_default(&lim);
  lim.max_frame = 1u << 20;
  lim.budget = 8u << 20;
  /* The first byte picks how the stream is chopped, as a network would. */
  if (size > 0) {
    step = 1 + data[0] % 64;
    if (data[0] >= 192)
      step = size; /* all at once */
  }
  fsp_frame_decoder_init(&d, lim.max_frame);
  while (off < size && rc >= 0) {
    size_t chunk = size - off < step ? size - off : step;
    size_t used = 0;

    rc = fsp_frame_feed(&d, data + off, chunk, &used);
    off += used;
    if (rc == 1) {
      uint8_t *body;
      size_t len;

      fsp_frame_take(&d, &body, &len);
      handle_body(body, len, &lim);
      fsp_free(body);
      rc = 0;
    }
  }
  (void)fsp_frame_finish(&d);
  fsp_frame_decoder_close(&d);
  /* Also treat the whole input as one frame body. */
  handle_body(data, size, &lim);
  return 0;
}
