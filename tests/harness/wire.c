/* SPDX-License-Identifier: MIT */
/* Raw protocol sessions for integration tests: see wire.h. */
#define _POSIX_C_SOURCE 200809L
#include "wire.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fsp_frame.h"
#include "harness.h"
#include "proc.h"

int wire_dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;

  ASSERT(fd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(connect(fd, (struct sockaddr *)&a, sizeof(a)));
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

void wire_send_bytes(int fd, const void *p, size_t n) {
  const char *c = p;

  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    ASSERT(w > 0);
    c += w;
    n -= (size_t)w;
  }
}

void wire_frame(Fieldsync__Envelope *env, uint8_t **frame, size_t *len) {
  ASSERT_OK(fsp_msg_encode_frame(env, FSP_DEFAULT_MAX_FRAME, frame, len));
}

void wire_send_env(int fd, Fieldsync__Envelope *env) {
  uint8_t *frame;
  size_t len;

  wire_frame(env, &frame, &len);
  wire_send_bytes(fd, frame, len);
  fsp_free(frame);
}

bool wire_recv_env(int fd, struct fsp_msg *m) {
  struct fsp_frame_decoder d;
  struct fsp_limits lim;
  struct fsp_error err;
  long long deadline = proc_now_ms() + 10000;
  bool ok = false;

  fsp_limits_default(&lim);
  fsp_frame_decoder_init(&d, 0);
  for (;;) {
    uint8_t buf[1];
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t r;
    size_t used = 0;
    int rc;

    ASSERT(proc_now_ms() < deadline);
    if (poll(&p, 1, 100) <= 0)
      continue;
    r = recv(fd, buf, 1, 0); /* byte by byte: never read past the frame */
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    rc = fsp_frame_feed(&d, buf, 1, &used);
    ASSERT(rc >= 0);
    if (rc == 1) {
      uint8_t *body;
      size_t len;

      fsp_frame_take(&d, &body, &len);
      memset(&err, 0, sizeof(err));
      if (fsp_msg_decode(m, body, len, &lim, &err) != 0)
        test_fail(__FILE__, __LINE__, "server sent bad frame: %s", err.msg);
      fsp_free(body);
      ok = true;
      break;
    }
  }
  fsp_frame_decoder_close(&d);
  return ok;
}

void wire_expect_closed(int fd) {
  long long deadline = proc_now_ms() + 10000;
  char buf[16];

  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t r;

    ASSERT(proc_now_ms() < deadline);
    if (poll(&p, 1, 100) <= 0)
      continue;
    r = recv(fd, buf, sizeof(buf), 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && errno == ECONNRESET)
      return; /* closed with unread bytes of ours: closed all the same */
    ASSERT_EQ(r, 0);
    return;
  }
}

long long wire_expect_error(int fd, int code) {
  struct fsp_msg m;
  long long at;

  if (!wire_recv_env(fd, &m))
    test_fail(__FILE__, __LINE__, "want error %d, got a closed connection",
              code);
  at = proc_now_ms();
  if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_ERROR)
    test_fail(__FILE__, __LINE__, "want error %d, got %s", code,
              fsp_msg_body_name(m.env));
  if ((int)m.env->error->code != code)
    test_fail(__FILE__, __LINE__, "want error %d, got %d: %s", code,
              (int)m.env->error->code, m.env->error->message);
  ASSERT(m.env->error->message != NULL && m.env->error->message[0] != '\0');
  fsp_msg_close(&m);
  wire_expect_closed(fd);
  close(fd);
  return at;
}

void wire_reader_init(struct wire_reader *r, int fd) {
  memset(r, 0, sizeof(*r));
  r->fd = fd;
  fsp_frame_decoder_init(&r->dec, 0);
}

void wire_reader_close(struct wire_reader *r) {
  fsp_frame_decoder_close(&r->dec);
}

bool wire_reader_next(struct wire_reader *r, struct fsp_msg *m) {
  long long deadline = proc_now_ms() + 10000;

  for (;;) {
    while (r->off < r->len) {
      size_t used = 0;
      int rc = fsp_frame_feed(&r->dec, r->buf + r->off, r->len - r->off, &used);

      ASSERT(rc >= 0);
      r->off += used;
      if (rc == 1) {
        struct fsp_limits lim;
        struct fsp_error err;
        uint8_t *body;
        size_t len;

        fsp_limits_default(&lim);
        fsp_frame_take(&r->dec, &body, &len);
        memset(&err, 0, sizeof(err));
        if (fsp_msg_decode(m, body, len, &lim, &err) != 0)
          test_fail(__FILE__, __LINE__, "server sent bad frame: %s", err.msg);
        fsp_free(body);
        return true;
      }
    }
    {
      struct pollfd p = {r->fd, POLLIN, 0};
      ssize_t n;

      ASSERT(proc_now_ms() < deadline);
      if (poll(&p, 1, 100) <= 0)
        continue;
      n = recv(r->fd, r->buf, sizeof(r->buf), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return false;
      r->off = 0;
      r->len = (size_t)n;
    }
  }
}
