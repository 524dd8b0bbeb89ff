/* SPDX-License-Identifier: MIT */
/* Structured logs: one line per event on stderr,
 *   ts=2026-11-22T21:52:03.123Z level=info event=session_open conn=3 ...
 * so operators can grep and count. stdout carries only the ready line. */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "srv.h"

static bool log_quiet;

void srv_log_init(bool quiet) { log_quiet = quiet; }

void srv_log(enum srv_log_level level, const char *event, const char *fmt,
             ...) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  char line[1024];
  char ts[40];
  struct timespec now;
  struct tm tm;
  va_list ap;
  int n;

  if (level < (log_quiet ? SRV_WARN : SRV_INFO))
    return;
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  n = snprintf(line, sizeof(line), "ts=%s.%03ldZ level=%s event=%s", ts,
               now.tv_nsec / 1000000, names[level], event);
  if (n > 0 && (size_t)n < sizeof(line) && fmt != NULL && fmt[0] != '\0') {
    line[n++] = ' ';
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
  }
  fprintf(stderr, "%s\n", line);
}
