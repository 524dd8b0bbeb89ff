/* SPDX-License-Identifier: MIT */
/* Helpers of the storage-fault tests; see storage_common.h. */
#define _POSIX_C_SOURCE 200809L
#include "storage_common.h"

#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "harness.h"

void sf_copy_file(const char *from, const char *to) {
  static unsigned char buf[1 << 16];
  FILE *in = fopen(from, "rb");
  FILE *out = fopen(to, "wb");
  size_t n;

  if (in == NULL || out == NULL)
    test_fail(__FILE__, __LINE__, "copying %s to %s", from, to);
  while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
    ASSERT_EQ(fwrite(buf, 1, n, out), n);
  fclose(in);
  ASSERT_OK(fclose(out));
}

void sf_remove_db(const char *path) {
  static const char *const suffix[] = {"", "-wal", "-shm", ".log"};
  char p[1100];
  size_t i;

  for (i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
    snprintf(p, sizeof(p), "%s%s", path, suffix[i]);
    remove(p);
  }
}

uint64_t sf_stride(uint64_t n, uint64_t points) {
  uint64_t want = points * test_scale();

  if (test_scale() >= SF_FULL_SCALE || n <= want)
    return 1;
  return (n + want - 1) / want;
}
