/* SPDX-License-Identifier: MIT */
/* The library's only OS calls (SQLite's os_unix/os_win split): secure
 * random bytes, the wall clock, TCP sockets with deadlines and a thread for
 * the asynchronous sync. os_posix.c implements them for Linux, Android,
 * macOS and iOS; a Windows port adds os_win.c. Every function returns 0 or
 * a negative FIELDSYNC_E* code; errno never leaves this layer. */
#ifndef FSC_OS_H
#define FSC_OS_H

#include <stddef.h>
#include <stdint.h>

/* Fills buf with n bytes from the OS's secure random source. 0 or
 * FIELDSYNC_EIO. */
int fsc_os_random(void *buf, size_t n);

/* Milliseconds since the Unix epoch (wall clock; informational only). */
int64_t fsc_os_now_ms(void);

/* ---- TCP sockets ------------------------------------------------------- */

/* Resolves host (a name or a numeric address; IPv6 without brackets) and
 * connects to port, trying each address in turn until one answers, all
 * within timeout_ms (> 0) in total. Name resolution itself (getaddrinfo)
 * cannot be bounded portably and is not counted. The socket is
 * non-blocking, close-on-exec, has TCP_NODELAY set and never raises
 * SIGPIPE. On success *fd is the socket (close it with fsc_os_close).
 * Returns 0, FIELDSYNC_ENETWORK (cannot resolve, refused, unreachable...)
 * or FIELDSYNC_ETIMEOUT; err (errlen bytes, may be NULL) then says why in
 * a few words, such as "connection refused". */
int fsc_os_connect(const char *host, uint16_t port, int timeout_ms, int *fd,
                   char *err, size_t errlen);

/* Sends all len bytes, waiting at most timeout_ms each time the socket
 * cannot take more. 0, FIELDSYNC_ENETWORK (peer gone, reset) or
 * FIELDSYNC_ETIMEOUT. */
int fsc_os_send_all(int fd, const void *buf, size_t len, int timeout_ms);

/* Waits at most timeout_ms for bytes, then reads up to cap of them into
 * buf and stores the count in *got. *got == 0 means the peer closed the
 * connection. 0, FIELDSYNC_ENETWORK (reset, ...) or FIELDSYNC_ETIMEOUT. */
int fsc_os_recv(int fd, void *buf, size_t cap, int timeout_ms, size_t *got);

/* Closes a socket from fsc_os_connect. A negative fd is a no-op. */
void fsc_os_close(int fd);

/* ---- threads ----------------------------------------------------------- */

struct fsc_os_thread;

/* Starts fn(arg) on a new thread; *t receives its handle, which must be
 * passed to fsc_os_thread_join exactly once. 0, FIELDSYNC_ENOMEM (no
 * memory or the OS refused another thread) or FIELDSYNC_EINTERNAL. */
int fsc_os_thread_start(struct fsc_os_thread **t, void (*fn)(void *),
                        void *arg);

/* Waits for the thread to end and frees its handle. NULL is a no-op. */
void fsc_os_thread_join(struct fsc_os_thread *t);

#endif
