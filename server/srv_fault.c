/* SPDX-License-Identifier: MIT */
/* The test daemon's fault seams: see srv_fault.h. */
#ifdef FIELDSYNC_FAULT_SEAMS
#include "srv_fault.h"

#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultmem.h"
#include "faultvfs.h"
#include "fsp_alloc.h"

static struct faultvfs_plan vfs_plan;
static uint64_t vfs_at_conn; /* 0: armed at start */
static bool vfs_wanted;
static uint64_t alloc_k;
static bool alloc_sticky;
static uint64_t alloc_at_conn; /* 0: no allocation fault */
static const char *report_path;

static void die(const char *var, const char *text) {
  fprintf(stderr, "fieldsyncd-fault: bad %s \"%s\"\n", var, text);
  exit(2);
}

/* Splits "TEXT@N": copies TEXT into out and returns N (0 without @). */
static uint64_t split_at(const char *var, const char *text, char *out,
                         size_t cap) {
  const char *at = strrchr(text, '@');
  size_t n = at != NULL ? (size_t)(at - text) : strlen(text);
  char *end;
  unsigned long long conn = 0;

  if (n >= cap)
    die(var, text);
  memcpy(out, text, n);
  out[n] = '\0';
  if (at != NULL) {
    conn = strtoull(at + 1, &end, 10);
    if (at[1] == '\0' || *end != '\0' || conn == 0)
      die(var, text);
  }
  return conn;
}

static void write_report(void) {
  FILE *f = fopen(report_path, "w");

  if (f == NULL)
    return;
  fprintf(f,
          "vfs_ops=%" PRIu64 " vfs_injected=%" PRIu64 " alloc_count=%" PRIu64
          " alloc_failed=%" PRIu64 " vfs_resynced=%" PRIu64 "\n",
          faultvfs_count(), faultvfs_injected(), fsp_alloc_count(),
          fsp_alloc_failed(), faultvfs_resynced());
  fclose(f);
}

/* SIGUSR1: the storage fault clears (faultvfs_disarm is
 * async-signal-safe: one atomic store). */
static void on_clear(int sig) {
  (void)sig;
  faultvfs_disarm();
}

void srv_fault_init(void) {
  const char *v = getenv("FIELDSYNC_FAULT_VFS");
  const char *a = getenv("FIELDSYNC_FAULT_ALLOC");
  struct sigaction sa;
  char text[128];

  report_path = getenv("FIELDSYNC_FAULT_REPORT");
  /* ":sqlite": SQLite's allocations count too. Its allocator must be set
   * before faultvfs_install initialises SQLite. */
  if (a != NULL && strstr(a, ":sqlite") != NULL && faultmem_install() != 0) {
    fprintf(stderr, "fieldsyncd-fault: cannot route SQLite's allocations\n");
    exit(2);
  }
  if (faultvfs_install() != 0) {
    fprintf(stderr, "fieldsyncd-fault: cannot install the fault VFS\n");
    exit(2);
  }
  if (v != NULL && v[0] != '\0') {
    vfs_at_conn = split_at("FIELDSYNC_FAULT_VFS", v, text, sizeof(text));
    if (faultvfs_parse(text, &vfs_plan) != 0)
      die("FIELDSYNC_FAULT_VFS", v);
    vfs_wanted = true;
    if (vfs_at_conn == 0)
      faultvfs_arm(&vfs_plan);
  }
  if (a != NULL && a[0] != '\0') {
    char *end;
    alloc_at_conn = split_at("FIELDSYNC_FAULT_ALLOC", a, text, sizeof(text));
    alloc_k = strtoull(text, &end, 10);
    if (end == text || alloc_k == 0 || alloc_at_conn == 0)
      die("FIELDSYNC_FAULT_ALLOC", a);
    while (*end == ':') {
      if (strncmp(end, ":sticky", 7) == 0)
        alloc_sticky = true;
      else if (strncmp(end, ":sqlite", 7) != 0)
        die("FIELDSYNC_FAULT_ALLOC", a);
      end += 7;
    }
    if (*end != '\0')
      die("FIELDSYNC_FAULT_ALLOC", a);
  }
  if (report_path != NULL && report_path[0] != '\0')
    atexit(write_report);
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_clear;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
}

void srv_fault_on_accept(uint64_t conn_id) {
  if (vfs_wanted && vfs_at_conn == conn_id)
    faultvfs_arm(&vfs_plan);
  if (alloc_at_conn != 0 && alloc_at_conn == conn_id)
    fsp_alloc_fail_at(alloc_k, alloc_sticky);
}
#endif
