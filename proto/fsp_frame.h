/* SPDX-License-Identifier: MIT */
/* Framing: each frame is a 4-byte big-endian length followed by that many
 * bytes (one encoded Envelope). The decoder is sans-I/O (hiredis
 * redisReaderFeed style): feed it bytes split in any way and take whole
 * frames out. The length is checked against the limit before anything is
 * allocated, so a hostile peer cannot make us allocate more than the limit.
 * Nor can it make us hold memory for bytes it has not sent: the body buffer
 * grows as the body arrives (doubling, from FSP_FRAME_FIRST_ALLOC, never
 * past the declared length), so a frame in progress holds at most
 * max(FSP_FRAME_FIRST_ALLOC, 2 x its bytes received) and a header alone
 * holds nothing. A peer that declares 4 MiB and then dribbles costs what it
 * has sent, not 4 MiB (curl dynbuf). */
#ifndef FSP_FRAME_H
#define FSP_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FSP_FRAME_HEADER 4u
/* Default frame size limit (payload bytes, header excluded). */
#define FSP_DEFAULT_MAX_FRAME (4u * 1024u * 1024u)
/* The first body allocation, unless the frame is shorter or more of its
 * body is already at hand. */
#define FSP_FRAME_FIRST_ALLOC 4096u

struct fsp_frame_decoder {
  uint32_t max_frame;   /* frames longer than this are refused */
  uint8_t hdr[FSP_FRAME_HEADER];
  size_t hdr_have;      /* header bytes received for the current frame */
  uint32_t len;         /* current frame's length, once the header is whole */
  uint8_t *buf;         /* current frame's body so far; NULL until its
                           first byte */
  size_t cap;           /* bytes allocated at buf (have <= cap <= len) */
  size_t have;          /* body bytes received */
  bool ready;           /* a whole frame waits in buf for fsp_frame_take */
  int err;              /* sticky error: once failed, the stream is dead */
};

/* Initialises d with a frame size limit (1 .. UINT32_MAX; 0 means
 * FSP_DEFAULT_MAX_FRAME). Cannot fail. */
void fsp_frame_decoder_init(struct fsp_frame_decoder *d, uint32_t max_frame);

/* Frees any partial or untaken frame. d may be reinitialised afterwards. */
void fsp_frame_decoder_close(struct fsp_frame_decoder *d);

/* Feeds up to len bytes. Consumes bytes until one frame is complete or the
 * input is used up, and stores how many bytes it consumed in *used.
 * Returns 1 when a whole frame is ready (take it with fsp_frame_take before
 * feeding more), 0 when it needs more bytes, or a negative FSP_E* code:
 * FSP_EFRAME_EMPTY (length 0), FSP_EFRAME_TOO_BIG (length over the limit,
 * found from the header alone), FSP_ENOMEM (the body buffer could not be
 * allocated or grown; the partial body is freed at once). On an error
 * *used counts the bytes consumed before it. After an error the decoder
 * returns the same error for every further call and consumes nothing.
 * While a frame waits untaken it returns 1 again and consumes nothing.
 * NULL d or used, or NULL data with len > 0, gives FSP_EINVAL (not sticky). */
int fsp_frame_feed(struct fsp_frame_decoder *d, const uint8_t *data,
                   size_t len, size_t *used);

/* Hands over the ready frame's body (exactly *len bytes allocated): *body
 * is owned by the caller and freed with fsp_free. Without a ready frame it
 * sets *body = NULL and *len = 0. */
void fsp_frame_take(struct fsp_frame_decoder *d, uint8_t **body, size_t *len);

/* Call at end of stream: returns 0 when the stream ended between frames,
 * FSP_ETRUNCATED when it ended inside a header or a body, or the sticky
 * error if there was one. */
int fsp_frame_finish(const struct fsp_frame_decoder *d);

/* True when the decoder holds part of a frame (a slowloris check); false
 * once the decoder has failed. */
bool fsp_frame_partial(const struct fsp_frame_decoder *d);

/* Bytes of heap the decoder holds now (its body buffer); 0 for NULL. */
size_t fsp_frame_held(const struct fsp_frame_decoder *d);

/* Writes the 4-byte header for a body of len bytes. */
void fsp_frame_header(uint32_t len, uint8_t hdr[FSP_FRAME_HEADER]);
#endif
