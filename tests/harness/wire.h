/* SPDX-License-Identifier: MIT */
/* Raw protocol sessions for integration tests (Redis tests/unit/protocol.tcl
 * style): dial fieldsyncd on 127.0.0.1, send envelopes or raw bytes, read
 * whole frames back through the proto/ decoder. Every wait has a deadline
 * and a failure fails the running test. */
#ifndef TEST_WIRE_H
#define TEST_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fieldsync.pb-c.h"
#include "fsp_frame.h"
#include "fsp_msg.h"

/* Connects to 127.0.0.1:port (TCP_NODELAY); returns the socket. */
int wire_dial(int port);
/* Sends all n bytes. */
void wire_send_bytes(int fd, const void *p, size_t n);
/* Encodes env as one frame and sends it. */
void wire_send_env(int fd, Fieldsync__Envelope *env);
/* Encodes env as one frame into a new fsp_malloc buffer (*frame, *len;
 * the caller frees it), so tests can send it with other bytes in one
 * write. */
void wire_frame(Fieldsync__Envelope *env, uint8_t **frame, size_t *len);
/* Reads one frame (within 10 s) and decodes it into m (release with
 * fsp_msg_close); returns false on EOF. A frame that does not decode
 * fails the test. Reads byte by byte, so it never consumes past it. */
bool wire_recv_env(int fd, struct fsp_msg *m);
/* Waits (within 10 s) for the peer to close: fails the test if any byte
 * arrives instead. */
void wire_expect_closed(int fd);
/* Expects an Error with code (and a message), then the connection closed;
 * closes fd. Returns the monotonic time (proc_now_ms) the Error arrived. */
long long wire_expect_error(int fd, int code);

/* A bulk reader for a session whose replies come faster than one recv a
 * byte can take them: reads up to 64 KiB at a time and hands out frames
 * one by one. */
struct wire_reader {
  int fd;
  struct fsp_frame_decoder dec;
  uint8_t buf[64 * 1024];
  size_t off;
  size_t len;
};

void wire_reader_init(struct wire_reader *r, int fd);
void wire_reader_close(struct wire_reader *r);
/* The next frame, decoded into m (within 10 s); false when the peer
 * closed (EOF or a reset) before a whole frame. */
bool wire_reader_next(struct wire_reader *r, struct fsp_msg *m);

#endif
