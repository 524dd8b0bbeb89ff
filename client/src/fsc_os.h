/* SPDX-License-Identifier: MIT */
/* The library's only OS calls (SQLite's os_unix/os_win split): secure
 * random bytes and the wall clock. os_posix.c implements them for Linux,
 * Android, macOS and iOS; a Windows port adds os_win.c. */
#ifndef FSC_OS_H
#define FSC_OS_H

#include <stddef.h>
#include <stdint.h>

/* Fills buf with n bytes from the OS's secure random source. 0 or
 * FIELDSYNC_EIO. */
int fsc_os_random(void *buf, size_t n);

/* Milliseconds since the Unix epoch (wall clock; informational only). */
int64_t fsc_os_now_ms(void);

#endif
