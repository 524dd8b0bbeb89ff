/* SPDX-License-Identifier: MIT */
/* POSIX implementation of fsc_os.h: getentropy() where the C library has it
 * (glibc 2.25+, bionic, Apple), else /dev/urandom; non-blocking TCP sockets
 * driven by poll() with deadlines; pthreads for the asynchronous sync. */
#define _DEFAULT_SOURCE
#include "fsc_os.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "fieldsync.h"
#include "fsp_alloc.h"

/* Linux and the BSDs have MSG_NOSIGNAL; Apple has SO_NOSIGPIPE instead,
 * set on the socket in set_options(). */
#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL
#else
#define SEND_FLAGS 0
#endif

static int urandom(unsigned char *p, size_t n) {
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);

  if (fd < 0)
    return FIELDSYNC_EIO;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0) {
      close(fd);
      return FIELDSYNC_EIO;
    }
    p += r;
    n -= (size_t)r;
  }
  close(fd);
  return 0;
}

int fsc_os_random(void *buf, size_t n) {
  unsigned char *p = buf;

  while (n > 0) {
    size_t k = n > 256 ? 256 : n; /* getentropy's per-call limit */
    if (getentropy(p, k) != 0)
      return urandom(p, n);
    p += k;
    n -= k;
  }
  return 0;
}

int64_t fsc_os_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- sockets ----------------------------------------------------------- */

/* Monotonic milliseconds, for deadlines that wall-clock jumps cannot move. */
static int64_t mono_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for events or the deadline (monotonic ms)
 * passes. A signal (EINTR) does not shorten or lengthen the wait.
 * Returns 0 when ready (or on a socket error, which the next call on the
 * socket reports), FIELDSYNC_ETIMEOUT or FIELDSYNC_ENETWORK. */
static int wait_fd(int fd, short events, int64_t deadline) {
  struct pollfd p;

  for (;;) {
    int64_t left = deadline - mono_ms();
    int r;

    if (left <= 0)
      return FIELDSYNC_ETIMEOUT;
    p.fd = fd;
    p.events = events;
    p.revents = 0;
    r = poll(&p, 1, left > 0x7fffffff ? 0x7fffffff : (int)left);
    if (r > 0)
      return 0;
    if (r == 0)
      return FIELDSYNC_ETIMEOUT;
    if (errno != EINTR)
      return FIELDSYNC_ENETWORK;
  }
}

/* Writes strerror_r's text for e into err (the XSI form: it returns int). */
static void errno_text(int e, char *err, size_t errlen) {
  char buf[128];

  if (err == NULL || errlen == 0)
    return;
  if (strerror_r(e, buf, sizeof(buf)) != 0)
    snprintf(buf, sizeof(buf), "error %d", e);
  snprintf(err, errlen, "%s", buf);
}

/* Non-blocking, close-on-exec, no SIGPIPE. 0 or -1 with errno set. */
static int set_options(int fd) {
  int flags = fcntl(fd, F_GETFL);

  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
    return -1;
  flags = fcntl(fd, F_GETFD);
  if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
    return -1;
#ifdef SO_NOSIGPIPE
  {
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) < 0)
      return -1;
  }
#endif
  return 0;
}

/* Connects fd to one address by the deadline. 0, or a FIELDSYNC_E* code
 * with *e set to the errno that explains it. */
static int connect_one(int fd, const struct addrinfo *ai, int64_t deadline,
                       int *e) {
  int rc;
  int soerr = 0;
  socklen_t len = sizeof(soerr);

  if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
    return 0;
  if (errno != EINPROGRESS && errno != EINTR) {
    *e = errno;
    return FIELDSYNC_ENETWORK;
  }
  /* After EINTR the connect goes on in the background, as after
   * EINPROGRESS: wait for writability, then read its result. */
  rc = wait_fd(fd, POLLOUT, deadline);
  if (rc != 0) {
    *e = rc == FIELDSYNC_ETIMEOUT ? ETIMEDOUT : errno;
    return rc;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) {
    *e = errno;
    return FIELDSYNC_ENETWORK;
  }
  if (soerr != 0) {
    *e = soerr;
    return FIELDSYNC_ENETWORK;
  }
  return 0;
}

int fsc_os_connect(const char *host, uint16_t port, int timeout_ms, int *fd,
                   char *err, size_t errlen) {
  struct addrinfo hints;
  struct addrinfo *res = NULL;
  struct addrinfo *ai;
  char service[8];
  int64_t deadline;
  int rc = FIELDSYNC_ENETWORK;
  int e = 0;
  int g;

  *fd = -1;
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICSERV;
  snprintf(service, sizeof(service), "%u", (unsigned)port);
  g = getaddrinfo(host, service, &hints, &res);
  if (g != 0) {
    if (g == EAI_SYSTEM)
      errno_text(errno, err, errlen);
    else if (err != NULL && errlen > 0)
      snprintf(err, errlen, "cannot resolve host: %s", gai_strerror(g));
    return FIELDSYNC_ENETWORK;
  }
  deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);
  for (ai = res; ai != NULL; ai = ai->ai_next) {
    int s = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    int one = 1;

    if (s < 0) {
      e = errno;
      rc = FIELDSYNC_ENETWORK;
      continue;
    }
    if (set_options(s) < 0) {
      e = errno;
      rc = FIELDSYNC_ENETWORK;
      close(s);
      continue;
    }
    rc = connect_one(s, ai, deadline, &e);
    if (rc == 0) {
      /* Requests are small and answered one at a time: Nagle's delay would
       * only add latency. Failing to set it is harmless. */
      (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      *fd = s;
      break;
    }
    close(s);
    if (rc == FIELDSYNC_ETIMEOUT)
      break; /* the deadline is shared: no time left for the others */
  }
  freeaddrinfo(res);
  if (rc == FIELDSYNC_ETIMEOUT && err != NULL && errlen > 0)
    snprintf(err, errlen, "no answer within %d ms", timeout_ms);
  else if (rc != 0)
    errno_text(e, err, errlen);
  return rc;
}

int fsc_os_send_all(int fd, const void *buf, size_t len, int timeout_ms) {
  const unsigned char *p = buf;

  while (len > 0) {
    ssize_t w = send(fd, p, len, SEND_FLAGS);

    if (w > 0) {
      p += w;
      len -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      int rc = wait_fd(fd, POLLOUT, mono_ms() + timeout_ms);
      if (rc != 0)
        return rc;
      continue;
    }
    return FIELDSYNC_ENETWORK; /* EPIPE, ECONNRESET, ... */
  }
  return 0;
}

int fsc_os_recv(int fd, void *buf, size_t cap, int timeout_ms, size_t *got) {
  int64_t deadline = mono_ms() + timeout_ms;

  *got = 0;
  for (;;) {
    ssize_t r = recv(fd, buf, cap, 0);

    if (r >= 0) {
      *got = (size_t)r;
      return 0;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      int rc = wait_fd(fd, POLLIN, deadline);
      if (rc != 0)
        return rc;
      continue;
    }
    return FIELDSYNC_ENETWORK;
  }
}

void fsc_os_close(int fd) {
  if (fd >= 0)
    close(fd); /* not retried on EINTR: the descriptor is gone either way */
}

/* ---- threads ----------------------------------------------------------- */

struct fsc_os_thread {
  pthread_t id;
  void (*fn)(void *);
  void *arg;
};

static void *thread_main(void *p) {
  struct fsc_os_thread *t = p;

  t->fn(t->arg);
  return NULL;
}

int fsc_os_thread_start(struct fsc_os_thread **t, void (*fn)(void *),
                        void *arg) {
  struct fsc_os_thread *nt = fsp_malloc(sizeof(*nt));
  int r;

  *t = NULL;
  if (nt == NULL)
    return FIELDSYNC_ENOMEM;
  nt->fn = fn;
  nt->arg = arg;
  r = pthread_create(&nt->id, NULL, thread_main, nt);
  if (r != 0) {
    fsp_free(nt);
    return r == EAGAIN ? FIELDSYNC_ENOMEM : FIELDSYNC_EINTERNAL;
  }
  *t = nt;
  return 0;
}

void fsc_os_thread_join(struct fsc_os_thread *t) {
  if (t == NULL)
    return;
  pthread_join(t->id, NULL);
  fsp_free(t);
}
