/* SPDX-License-Identifier: MIT */
/* Replays fuzz corpus files through a fuzz target without libFuzzer, so CI
 * runs every corpus input (and every past crash) under the sanitizers on
 * each build. With --valid DIR, each file there must also decode cleanly:
 * the seed corpus stays a set of valid frames. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsp_frame.h"
#include "fsp_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  unsigned char *buf = NULL;
  long n;

  if (f == NULL)
    return NULL;
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 ||
      fseek(f, 0, SEEK_SET) != 0)
    goto done;
  buf = malloc((size_t)n + 1);
  if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  *len = (size_t)n;
done:
  fclose(f);
  return buf;
}

/* Every frame in a valid seed must decode and validate. */
static int check_valid(const char *path, const unsigned char *d, size_t n) {
  struct fsp_limits lim;
  size_t off = 0;
  int frames = 0;

  fsp_limits_default(&lim);
  while (off < n) {
    struct fsp_error err;
    struct fsp_msg m;
    size_t len;

    if (n - off < FSP_FRAME_HEADER)
      break;
    len = (size_t)d[off] << 24 | (size_t)d[off + 1] << 16 |
          (size_t)d[off + 2] << 8 | d[off + 3];
    off += FSP_FRAME_HEADER;
    if (len > n - off)
      break;
    if (fsp_msg_decode(&m, d + off, len, &lim, &err) != 0) {
      fprintf(stderr, "%s: frame %d invalid: %s\n", path, frames, err.msg);
      return 1;
    }
    fsp_msg_close(&m);
    off += len;
    frames++;
  }
  if (off != n || frames == 0) {
    fprintf(stderr, "%s: not a whole number of frames\n", path);
    return 1;
  }
  return 0;
}

static int replay_dir(const char *dir, int valid, size_t *count) {
  DIR *dp = opendir(dir);
  struct dirent *e;
  int bad = 0;

  if (dp == NULL) {
    fprintf(stderr, "cannot open corpus %s\n", dir);
    return 1;
  }
  while ((e = readdir(dp)) != NULL) {
    char path[4096];
    unsigned char *data;
    size_t n = 0;

    if (e->d_name[0] == '.')
      continue;
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    data = read_file(path, &n);
    if (data == NULL) {
      fprintf(stderr, "cannot read %s\n", path);
      bad = 1;
      continue;
    }
    LLVMFuzzerTestOneInput(data, n);
    if (valid)
      bad |= check_valid(path, data, n);
    free(data);
    (*count)++;
  }
  closedir(dp);
  return bad;
}

int main(int argc, char **argv) {
  size_t count = 0;
  int bad = 0;
  int valid = 0;
  int i;

  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--valid") == 0) {
      valid = 1;
      continue;
    }
    bad |= replay_dir(argv[i], valid, &count);
    valid = 0;
  }
  printf("# replayed %zu inputs%s\n", count, bad ? ", with failures" : "");
  return bad || count == 0 ? 1 : 0;
}
