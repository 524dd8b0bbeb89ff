/* SPDX-License-Identifier: MIT */
/* The test relay: see relay.h. Frames are a 4-byte big-endian length and
 * a body (PROTOCOL.md "Framing"); the relay only counts them. */
#define _POSIX_C_SOURCE 200809L
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "proc.h"

#define RELAY_DEADLINE_MS 30000

/* Where the client's byte stream stands in its frames. */
struct upstream {
  uint8_t hdr[4];
  unsigned hdr_n;
  uint32_t body_left;
  unsigned frame; /* frames started so far */
  uint8_t *hold;  /* the held frame's bytes so far */
  size_t hold_n;
  size_t hold_cap;
};

/* Writes all of p to fd; false when the peer is gone. */
static bool write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    p += w;
    n -= (size_t)w;
  }
  return true;
}

static void hold_add(struct upstream *u, uint8_t b) {
  if (u->hold_n == u->hold_cap) {
    size_t cap = u->hold_cap == 0 ? 1024 : u->hold_cap * 2;
    uint8_t *nh = realloc(u->hold, cap);
    ASSERT(nh != NULL);
    u->hold = nh;
    u->hold_cap = cap;
  }
  u->hold[u->hold_n++] = b;
}

/* Relays client bytes to the server, holding frame r->hold_frame until
 * hold_cb has run. False when the server is gone. */
static bool relay_up(struct relay *r, struct upstream *u, int sfd,
                     const uint8_t *p, size_t n) {
  size_t run = 0; /* start of the pass-through bytes not yet written */
  size_t i;

  for (i = 0; i < n; i++) {
    bool done = false;
    bool held;

    if (u->hdr_n == 0 && u->body_left == 0)
      u->frame++; /* this byte starts a frame */
    held = r->hold_frame != 0 && u->frame == r->hold_frame && !r->held;
    if (u->hdr_n < 4) {
      u->hdr[u->hdr_n++] = p[i];
      if (u->hdr_n == 4) {
        u->body_left = (uint32_t)u->hdr[0] << 24 | (uint32_t)u->hdr[1] << 16 |
                       (uint32_t)u->hdr[2] << 8 | u->hdr[3];
        done = u->body_left == 0;
      }
    } else {
      done = --u->body_left == 0;
    }
    if (done)
      u->hdr_n = 0;
    if (!held)
      continue;
    /* Bytes before the held frame go out first. */
    if (i > run && !write_all(sfd, p + run, i - run))
      return false;
    run = i + 1;
    hold_add(u, p[i]);
    if (done) {
      r->hold_cb(r->hold_data);
      r->held = true;
      if (!write_all(sfd, u->hold, u->hold_n))
        return false;
    }
  }
  return n <= run || write_all(sfd, p + run, n - run);
}

static int dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;

  if (fd < 0)
    return -1;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

/* The relay's thread: one session, then everything is closed. */
static void *relay_main(void *arg) {
  struct relay *r = arg;
  struct upstream u;
  long long deadline = proc_now_ms() + RELAY_DEADLINE_MS;
  int cfd = -1;
  int sfd = -1;
  int one = 1;

  memset(&u, 0, sizeof(u));
  while (cfd < 0 && proc_now_ms() < deadline) {
    struct pollfd p = {r->lfd, POLLIN, 0};
    if (poll(&p, 1, 100) > 0)
      cfd = accept(r->lfd, NULL, NULL);
  }
  if (cfd < 0)
    goto done;
  setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  sfd = dial(r->server_port);
  if (sfd < 0)
    goto done;
  while (proc_now_ms() < deadline) {
    struct pollfd p[2] = {{cfd, POLLIN, 0}, {sfd, POLLIN, 0}};
    int k;

    if (poll(p, 2, 100) < 0 && errno != EINTR)
      break;
    for (k = 0; k < 2; k++) {
      uint8_t buf[4096];
      size_t want = sizeof(buf);
      size_t *count = k == 0 ? &r->up : &r->down;
      int dir = k == 0 ? RELAY_UP : RELAY_DOWN;
      ssize_t n;

      if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      if (r->cut_after > 0 && dir == r->cut_dir && r->cut_after - *count < want)
        want = r->cut_after - *count;
      n = recv(p[k].fd, buf, want, 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        goto done;
      *count += (size_t)n;
      if (k == 0 ? !relay_up(r, &u, sfd, buf, (size_t)n)
                 : !write_all(cfd, buf, (size_t)n))
        goto done;
      if (r->cut_after > 0 && dir == r->cut_dir && *count >= r->cut_after) {
        r->cut = true;
        goto done;
      }
    }
  }
done:
  if (cfd >= 0)
    close(cfd);
  if (sfd >= 0)
    close(sfd);
  close(r->lfd);
  free(u.hold);
  return NULL;
}

void relay_start(struct relay *r) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int rc;

  r->cut = false;
  r->held = false;
  r->up = 0;
  r->down = 0;
  r->lfd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT(r->lfd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(bind(r->lfd, (struct sockaddr *)&a, sizeof(a)));
  ASSERT_OK(listen(r->lfd, 4));
  ASSERT_OK(getsockname(r->lfd, (struct sockaddr *)&a, &len));
  snprintf(r->addr, sizeof(r->addr), "127.0.0.1:%d", (int)ntohs(a.sin_port));
  rc = pthread_create(&r->th, NULL, relay_main, r);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "pthread_create: %s", strerror(rc));
  r->started = true;
}

void relay_join(struct relay *r) {
  if (!r->started)
    return;
  pthread_join(r->th, NULL);
  r->started = false;
}
