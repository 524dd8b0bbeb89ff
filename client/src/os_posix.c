/* SPDX-License-Identifier: MIT */
/* POSIX implementation of fsc_os.h: getentropy() where the C library has it
 * (glibc 2.25+, bionic, Apple), else /dev/urandom. */
#define _DEFAULT_SOURCE
#include "fsc_os.h"

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include "fieldsync.h"

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
