/* SPDX-License-Identifier: MIT */
/* What the storage-fault tests (storage.cmake) share: copying and removing
 * database files between runs, the integrity check, and how far apart the
 * fault points of a sweep lie. Every helper fails the running test on an
 * unexpected error. */
#ifndef TEST_STORAGE_COMMON_H
#define TEST_STORAGE_COMMON_H

#include <stdint.h>

/* FIELDSYNC_TEST_SCALE from which every sweep tries every k (tools/long.sh
 * runs at 20). */
#define SF_FULL_SCALE 20

/* Copies the file from to to (replacing it). */
void sf_copy_file(const char *from, const char *to);
/* Removes the database at path with its -wal, -shm and .log files (the
 * test server's log lives beside its database), where present. */
void sf_remove_db(const char *path);
/* The stride of a sweep over n fault points that tries about points x
 * FIELDSYNC_TEST_SCALE of them: 1 (every k) when that covers all, or at
 * SF_FULL_SCALE and above. A sweep starts at 1 + seed % stride, so runs
 * with other seeds cover other points. */
uint64_t sf_stride(uint64_t n, uint64_t points);

#endif
