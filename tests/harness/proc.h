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

/* Starts argv (argv[0] is the path) in the background, with stdin,
 * stdout and stderr on /dev/null; returns its pid (fails the test if it
 * cannot fork). Reap it with proc_wait. */
pid_t proc_start(char *const argv[]);
/* Waits at most timeout_ms for pid, then SIGKILLs it. Returns its exit
 * status, 128+signal when killed by a signal, or -1 on error. */
int proc_wait(pid_t pid, int timeout_ms);

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
/* The same, with RLIMIT_NOFILE (soft and hard) set to nofile in the
 * server's process before it runs; 0 keeps the one it inherits. */
void server_start_nofile(struct test_server *s, const char *path,
                         const char *db, const char *const *extra,
                         unsigned long nofile);
/* SIGTERM, wait up to 20 s (then SIGKILL and fail the test). Returns the
 * exit status. */
int server_stop(struct test_server *s);
/* SIGKILL and reap. */
void server_kill(struct test_server *s);

/* Milliseconds of a monotonic clock. */
long long proc_now_ms(void);

/* Sleeps ms milliseconds (resuming after signals); for random delays,
 * never to wait for an event. */
void proc_sleep_ms(double ms);

/* Makes a fresh directory $TMPDIR/PREFIX-XXXXXX (or under /tmp) into dir
 * (cap bytes; fails the test on error) and, at exit of the process (also
 * after a failed assertion), kills the servers registered with
 * tmpdir_kill_at_exit, then removes the directory tree, unless
 * $FIELDSYNC_KEEP_TMP is 1. dir must live until exit; a later call
 * replaces the directory to remove. */
void tmpdir_make(char *dir, size_t cap, const char *prefix);
/* Registers s (which must live until exit) to be killed at exit, before
 * the directory is removed, when its pid is still set. */
void tmpdir_kill_at_exit(struct test_server *s);

/* Runs admin (fieldsync-admin) with --db db and args (NULL-terminated, at
 * most 12), capturing its stdout into out (cap bytes). Fails the test
 * when it does not exit 0 within 30 s. */
void proc_admin_run(const char *admin, const char *db, const char *const *args,
                    char *out, size_t cap);
/* Adds user with role and a device for it; its token goes to token (cap
 * bytes). Fails the test unless the token is printed. */
void admin_user_device(const char *admin, const char *db, const char *user,
                       const char *role, char *token, size_t cap);

#endif
