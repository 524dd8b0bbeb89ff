/* SPDX-License-Identifier: MIT */
/* The victim of the library crash test: writes observations through
 * libfieldsync until it is killed, mixing one record per transaction with
 * batches of 50 to 500, and after each commit returns 0 prints the ids it
 * committed (32 hex digits, one per line) and flushes them. So every id the
 * parent reads from our stdout was durably committed before it was sent.
 * Usage: crash_writer DB SEED */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fieldsync.h"

/* Records written before the writer stops by itself, so a writer whose
 * parent went away cannot fill the disk. */
#define WRITER_MAX_RECORDS 2000000

#define WRITER_MAX_BATCH 500

static uint64_t rng;

/* splitmix64, as in the test harness, so a run repeats from its seed. */
static uint64_t next_rand(void) {
  uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void die(fieldsync_db *db, const char *what, int rc) {
  fprintf(stderr, "crash_writer: %s: %s (%s)\n", what,
          db != NULL ? fieldsync_errmsg(db) : fieldsync_strerror(rc),
          fieldsync_errname(rc));
  exit(1);
}

/* Creates one observation of about 400 bytes; its id goes to id_out. */
static void create_one(fieldsync_db *db, uint64_t serial, char id_out[33]) {
  static const char words[] = "resident staff medication plan care review "
                              "record consent safeguarding risk ";
  fieldsync_draft *d = NULL;
  char visit[33];
  char code[16];
  char judgement[4];
  char evidence[320];
  const char *const fields[] = {"visit_id", "standard_code", "judgement",
                                "evidence_text", "case_refs"};
  const char *values[5];
  size_t n = 0;
  size_t i;
  int rc;

  snprintf(visit, sizeof(visit), "%016llx%016llx", 0xc4a5000000000000ull,
           (unsigned long long)(next_rand() % 64));
  snprintf(code, sizeof(code), "OP%u", (unsigned)(next_rand() % 40));
  snprintf(judgement, sizeof(judgement), "%u", 1 + (unsigned)(next_rand() % 4));
  n = (size_t)snprintf(evidence, sizeof(evidence),
                       "serial %llu: ", (unsigned long long)serial);
  while (n + 1 < sizeof(evidence)) {
    size_t off = (size_t)(next_rand() % (sizeof(words) - 1));

    evidence[n++] = words[off];
  }
  evidence[n] = '\0';
  values[0] = visit;
  values[1] = code;
  values[2] = judgement;
  values[3] = evidence;
  values[4] = "C1";
  rc = fieldsync_draft_new(db, "observation", &d);
  if (rc != 0)
    die(db, "draft_new", rc);
  for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
    rc = fieldsync_draft_set(d, fields[i], values[i]);
    if (rc != 0)
      die(db, "draft_set", rc);
  }
  rc = fieldsync_create(db, d, id_out);
  if (rc != 0)
    die(db, "create", rc);
  fieldsync_draft_free(d);
}

/* Prints n committed ids and flushes them; exits when stdout is gone. */
static void ack(char (*ids)[33], size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    printf("%s\n", ids[i]);
  if (fflush(stdout) != 0) {
    fprintf(stderr, "crash_writer: stdout: %s\n", strerror(errno));
    exit(1);
  }
}

int main(int argc, char **argv) {
  static char ids[WRITER_MAX_BATCH][33];
  fieldsync_db *db = NULL;
  uint64_t serial = 0;
  char *end = NULL;
  int rc;

  if (argc != 3) {
    fprintf(stderr, "usage: crash_writer DB SEED\n");
    return 2;
  }
  errno = 0;
  rng = strtoull(argv[2], &end, 10);
  if (errno != 0 || end == argv[2] || *end != '\0') {
    fprintf(stderr, "crash_writer: bad seed '%s'\n", argv[2]);
    return 2;
  }
  rc = fieldsync_open(argv[1], FIELDSYNC_OPEN_CREATE, "crash-writer", &db);
  if (rc != 0)
    die(db, "open", rc);
  while (serial < WRITER_MAX_RECORDS) {
    if (next_rand() % 2 == 0) {
      /* A run of single-record transactions: each create commits. */
      size_t k = 1 + (size_t)(next_rand() % 20);

      while (k-- > 0) {
        create_one(db, serial++, ids[0]);
        ack(ids, 1);
      }
    } else {
      size_t n = 50 + (size_t)(next_rand() % (WRITER_MAX_BATCH - 50 + 1));
      size_t i;

      rc = fieldsync_batch_begin(db);
      if (rc != 0)
        die(db, "batch_begin", rc);
      for (i = 0; i < n; i++)
        create_one(db, serial++, ids[i]);
      rc = fieldsync_batch_commit(db);
      if (rc != 0)
        die(db, "batch_commit", rc);
      ack(ids, n);
    }
  }
  rc = fieldsync_close(db);
  if (rc != 0)
    die(NULL, "close", rc);
  return 0;
}
