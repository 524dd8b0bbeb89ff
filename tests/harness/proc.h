/* SPDX-License-Identifier: MIT */
/* Processes for tests: run a program and capture its output, and start
 * fieldsyncd on 127.0.0.1 port 0, reading the real port from its
 * "listening on HOST:PORT" line, then stop it by PID (Redis's
 * tests/support/server.tcl, libuv's test/echo-server.c). Every wait has a
 * deadline. */
#ifndef TEST_PROC_H
#define TEST_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* Runs argv (argv[0] is the path), with stdin from /dev/null, capturing
 * stdout and stderr (each truncated to cap-1 bytes, NUL-terminated; either
 * may be NULL). Waits at most timeout_ms, then SIGKILLs. Returns the exit
 * status, 128+signal when killed by a signal, or -1 when it could not run. */
int proc_run(char *const argv[], char *out, size_t outcap, char *err,
             size_t errcap, int timeout_ms);

struct test_server {
  pid_t pid;
  int port;
  char addr[64];   /* "127.0.0.1:PORT" */
  char log[512];   /* stderr log file */
};

/* Starts fieldsyncd (path) with --db db --listen 127.0.0.1:0 plus extra
 * (NULL-terminated, may be NULL), and --plaintext unless extra has
 * --tls-cert. Fails the test if it is not ready within 20 s. Its stderr
 * goes to a log file next to db. */
void server_start(struct test_server *s, const char *path, const char *db,
                  const char *const *extra);
/* SIGTERM, wait up to 20 s (then SIGKILL and fail the test). Returns the
 * exit status. */
int server_stop(struct test_server *s);
/* SIGKILL and reap. */
void server_kill(struct test_server *s);

/* Milliseconds of a monotonic clock. */
long long proc_now_ms(void);

#endif
