/* SPDX-License-Identifier: MIT */
/* faultvfs: the SQLite fault-injection VFS described in faultvfs.h. It
 * wraps the platform VFS found at install time; every file it opens is the
 * platform file followed by a small header of ours. Writes to named files
 * are tracked per path (an fsync covers the inode, whichever handle made
 * the writes): each keeps an undo list of the bytes and size it replaced
 * since that path's last successful xSync, which power loss replays
 * backwards (DROP) or turns into garbage (GARBLE). */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include "faultvfs.h"

#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FV_NAME "faultvfs"

/* One write or truncate to undo: before it, the file was old_size bytes
 * long and [off, off + old_len) held old (old_len may be 0). len is the
 * span the operation wrote (0 for a truncate). */
struct fv_undo {
  struct fv_undo *next;
  sqlite3_int64 off;
  sqlite3_int64 len;
  sqlite3_int64 old_size;
  sqlite3_int64 old_len;
  unsigned char *old;
};

/* A named file, shared by every handle open on the path. */
struct fv_node {
  struct fv_node *next;
  char *path;
  int handles;
  int restore_fd;       /* kept open from power loss until reset */
  struct fv_undo *undo; /* newest first */
};

struct fv_file {
  sqlite3_file base;
  struct fv_node *node; /* NULL: not tracked (temporary file) */
  bool sync_failed;     /* an xSync on this handle has failed */
  sqlite3_file *real;   /* the platform file, right after this struct */
};

static pthread_mutex_t fv_mu = PTHREAD_MUTEX_INITIALIZER;
static sqlite3_vfs *fv_base;
static sqlite3_vfs fv_vfs;
static struct fv_node *fv_nodes;
static struct faultvfs_plan fv_plan;
static _Atomic uint64_t fv_count;
static _Atomic uint64_t fv_injected;
static _Atomic uint64_t fv_resynced;
static _Atomic bool fv_off;
static _Atomic bool fv_armed;
static uint64_t fv_rng;

enum fv_kind { FV_READ, FV_WRITE, FV_TRUNCATE, FV_SYNC, FV_OPEN };

static uint64_t rng_next(void) {
  uint64_t z = (fv_rng += 0x9e3779b97f4a7c15ULL);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static void free_undo(struct fv_node *n) {
  while (n->undo != NULL) {
    struct fv_undo *u = n->undo;
    n->undo = u->next;
    free(u->old);
    free(u);
  }
}

/* Finds (or with create, makes) the node of path. Called locked. */
static struct fv_node *node_find(const char *path, bool create) {
  struct fv_node *n;

  for (n = fv_nodes; n != NULL; n = n->next)
    if (strcmp(n->path, path) == 0)
      return n;
  if (!create)
    return NULL;
  n = calloc(1, sizeof(*n));
  if (n == NULL)
    return NULL;
  n->path = strdup(path);
  if (n->path == NULL) {
    free(n);
    return NULL;
  }
  n->restore_fd = -1;
  n->next = fv_nodes;
  fv_nodes = n;
  return n;
}

/* Frees n if nothing refers to it any more. Called locked. */
static void node_release(struct fv_node *n) {
  struct fv_node **p;

  if (n->handles > 0 || n->undo != NULL || n->restore_fd >= 0)
    return;
  for (p = &fv_nodes; *p != NULL; p = &(*p)->next) {
    if (*p == n) {
      *p = n->next;
      break;
    }
  }
  free(n->path);
  free(n);
}

static void pwrite_all(int fd, const unsigned char *buf, size_t n, off_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, buf, n, off);
    if (w <= 0)
      return;
    buf += w;
    n -= (size_t)w;
    off += w;
  }
}

/* Power loss: every node's unsynced writes are undone or garbled, through
 * a descriptor of our own kept until reset (closing one would drop the
 * process's POSIX locks on the inode). Called locked. */
static void power_loss(enum faultvfs_fault how) {
  struct fv_node *n;

  atomic_store(&fv_off, true);
  for (n = fv_nodes; n != NULL; n = n->next) {
    struct fv_undo *u;
    if (n->undo == NULL)
      continue;
    if (n->restore_fd < 0)
      n->restore_fd = open(n->path, O_RDWR);
    if (n->restore_fd < 0) {
      free_undo(n);
      continue;
    }
    for (u = n->undo; u != NULL; u = u->next) {
      if (how == FAULTVFS_POWER_DROP) {
        /* Newest first: each step puts back the state before it. */
        if (ftruncate(n->restore_fd, (off_t)u->old_size) != 0)
          continue;
        if (u->old_len > 0)
          pwrite_all(n->restore_fd, u->old, (size_t)u->old_len, (off_t)u->off);
      } else if (u->len > 0) {
        off_t end = lseek(n->restore_fd, 0, SEEK_END);
        sqlite3_int64 len = u->len;
        unsigned char junk[512];
        sqlite3_int64 done = 0;
        if (end < 0 || u->off >= (sqlite3_int64)end)
          continue;
        if (u->off + len > (sqlite3_int64)end)
          len = (sqlite3_int64)end - u->off;
        while (done < len) {
          size_t k = (size_t)(len - done) < sizeof(junk) ? (size_t)(len - done)
                                                         : sizeof(junk);
          size_t i;
          for (i = 0; i < k; i++)
            junk[i] = (unsigned char)rng_next();
          pwrite_all(n->restore_fd, junk, k, (off_t)(u->off + done));
          done += (sqlite3_int64)k;
        }
      }
    }
    free_undo(n);
  }
}

static bool counts(enum fv_kind kind) {
  switch (fv_plan.op) {
  case FAULTVFS_ANY:
    return true;
  case FAULTVFS_WRITE:
    return kind == FV_WRITE || kind == FV_TRUNCATE;
  case FAULTVFS_SYNC:
    return kind == FV_SYNC;
  }
  return false;
}

static int fault_code(enum fv_kind kind) {
  if (kind == FV_OPEN)
    return SQLITE_CANTOPEN;
  if (kind == FV_SYNC)
    return SQLITE_IOERR_FSYNC;
  if (fv_plan.fault == FAULTVFS_ENOSPC &&
      (kind == FV_WRITE || kind == FV_TRUNCATE))
    return SQLITE_FULL;
  switch (kind) {
  case FV_READ:
    return SQLITE_IOERR_READ;
  case FV_WRITE:
    return SQLITE_IOERR_WRITE;
  case FV_TRUNCATE:
    return SQLITE_IOERR_TRUNCATE;
  default:
    return SQLITE_IOERR;
  }
}

static int off_code(enum fv_kind kind) {
  switch (kind) {
  case FV_READ:
    return SQLITE_IOERR_READ;
  case FV_WRITE:
    return SQLITE_IOERR_WRITE;
  case FV_TRUNCATE:
    return SQLITE_IOERR_TRUNCATE;
  case FV_SYNC:
    return SQLITE_IOERR_FSYNC;
  case FV_OPEN:
    return SQLITE_CANTOPEN;
  }
  return SQLITE_IOERR;
}

/* Counts one operation and decides its fate: SQLITE_OK to perform it, or
 * the code to fail it with. */
static int check(enum fv_kind kind) {
  int rc = SQLITE_OK;
  uint64_t n;

  if (atomic_load(&fv_off))
    return off_code(kind);
  pthread_mutex_lock(&fv_mu);
  if (atomic_load(&fv_off)) {
    rc = off_code(kind);
  } else if (counts(kind)) {
    n = atomic_fetch_add(&fv_count, 1) + 1;
    if (atomic_load(&fv_armed) && fv_plan.fault != FAULTVFS_NONE &&
        (n == fv_plan.k || (fv_plan.sticky && n > fv_plan.k))) {
      atomic_fetch_add(&fv_injected, 1);
      if (fv_plan.fault == FAULTVFS_POWER_DROP ||
          fv_plan.fault == FAULTVFS_POWER_GARBLE) {
        power_loss(fv_plan.fault);
        rc = off_code(kind);
      } else {
        rc = fault_code(kind);
      }
    }
  }
  pthread_mutex_unlock(&fv_mu);
  return rc;
}

/* ---- file methods ------------------------------------------------------ */

static int fv_close(sqlite3_file *f) {
  struct fv_file *p = (struct fv_file *)f;
  int rc = p->real->pMethods->xClose(p->real);

  if (p->node != NULL) {
    pthread_mutex_lock(&fv_mu);
    p->node->handles--;
    node_release(p->node);
    pthread_mutex_unlock(&fv_mu);
    p->node = NULL;
  }
  return rc;
}

static int fv_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off) {
  struct fv_file *p = (struct fv_file *)f;
  int rc = check(FV_READ);

  if (rc != SQLITE_OK)
    return rc;
  return p->real->pMethods->xRead(p->real, buf, amt, off);
}

/* Records what a write of len bytes at off (or, with len 0, a truncate to
 * off) is about to replace. Called locked. */
static void record(struct fv_file *p, sqlite3_int64 off, sqlite3_int64 len,
                   bool truncate) {
  struct fv_undo *u;
  sqlite3_int64 size = 0;

  if (p->real->pMethods->xFileSize(p->real, &size) != SQLITE_OK)
    return;
  u = calloc(1, sizeof(*u));
  if (u == NULL)
    return;
  u->off = off;
  u->len = len;
  u->old_size = size;
  if (off < size)
    u->old_len = truncate ? size - off : (len < size - off ? len : size - off);
  if (u->old_len > 0) {
    u->old = malloc((size_t)u->old_len);
    if (u->old == NULL ||
        p->real->pMethods->xRead(p->real, u->old, (int)u->old_len, off) !=
            SQLITE_OK) {
      free(u->old);
      free(u);
      return;
    }
  }
  u->next = p->node->undo;
  p->node->undo = u;
}

static int fv_write(sqlite3_file *f, const void *buf, int amt,
                    sqlite3_int64 off) {
  struct fv_file *p = (struct fv_file *)f;
  int rc = check(FV_WRITE);

  if (rc != SQLITE_OK)
    return rc;
  if (p->node == NULL)
    return p->real->pMethods->xWrite(p->real, buf, amt, off);
  pthread_mutex_lock(&fv_mu);
  record(p, off, amt, false);
  rc = p->real->pMethods->xWrite(p->real, buf, amt, off);
  pthread_mutex_unlock(&fv_mu);
  return rc;
}

static int fv_truncate(sqlite3_file *f, sqlite3_int64 size) {
  struct fv_file *p = (struct fv_file *)f;
  int rc = check(FV_TRUNCATE);

  if (rc != SQLITE_OK)
    return rc;
  if (p->node == NULL)
    return p->real->pMethods->xTruncate(p->real, size);
  pthread_mutex_lock(&fv_mu);
  record(p, size, 0, true);
  rc = p->real->pMethods->xTruncate(p->real, size);
  pthread_mutex_unlock(&fv_mu);
  return rc;
}

static int fv_sync(sqlite3_file *f, int flags) {
  struct fv_file *p = (struct fv_file *)f;
  int rc = check(FV_SYNC);

  /* A failed sync leaves the file's writes unsynced: the undo list stays,
   * so a later power loss still loses them. */
  if (rc != SQLITE_OK) {
    p->sync_failed = true;
    return rc;
  }
  if (p->node == NULL) {
    rc = p->real->pMethods->xSync(p->real, flags);
  } else {
    pthread_mutex_lock(&fv_mu);
    rc = p->real->pMethods->xSync(p->real, flags);
    if (rc == SQLITE_OK)
      free_undo(p->node);
    pthread_mutex_unlock(&fv_mu);
  }
  if (rc != SQLITE_OK)
    p->sync_failed = true;
  else if (p->sync_failed)
    atomic_fetch_add(&fv_resynced, 1);
  return rc;
}

static int fv_file_size(sqlite3_file *f, sqlite3_int64 *size) {
  struct fv_file *p = (struct fv_file *)f;

  if (atomic_load(&fv_off))
    return SQLITE_IOERR_FSTAT;
  return p->real->pMethods->xFileSize(p->real, size);
}

static int fv_lock(sqlite3_file *f, int level) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xLock(p->real, level);
}

static int fv_unlock(sqlite3_file *f, int level) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xUnlock(p->real, level);
}

static int fv_check_reserved(sqlite3_file *f, int *out) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xCheckReservedLock(p->real, out);
}

static int fv_file_control(sqlite3_file *f, int op, void *arg) {
  struct fv_file *p = (struct fv_file *)f;

  /* SQLITE_FCNTL_VFSNAME and friends could name us; pass all through. */
  return p->real->pMethods->xFileControl(p->real, op, arg);
}

static int fv_sector_size(sqlite3_file *f) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xSectorSize(p->real);
}

static int fv_device_characteristics(sqlite3_file *f) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xDeviceCharacteristics(p->real);
}

static int fv_shm_map(sqlite3_file *f, int pg, int pgsz, int extend,
                      void volatile **pp) {
  struct fv_file *p = (struct fv_file *)f;

  if (atomic_load(&fv_off))
    return SQLITE_IOERR_SHMMAP;
  return p->real->pMethods->xShmMap(p->real, pg, pgsz, extend, pp);
}

static int fv_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xShmLock(p->real, offset, n, flags);
}

static void fv_shm_barrier(sqlite3_file *f) {
  struct fv_file *p = (struct fv_file *)f;

  p->real->pMethods->xShmBarrier(p->real);
}

static int fv_shm_unmap(sqlite3_file *f, int del) {
  struct fv_file *p = (struct fv_file *)f;

  return p->real->pMethods->xShmUnmap(p->real, del);
}

/* Version 2: shared memory (WAL) but no xFetch, so SQLite reads every page
 * through xRead, where it is counted. */
static const sqlite3_io_methods fv_io = {
    2,
    fv_close,
    fv_read,
    fv_write,
    fv_truncate,
    fv_sync,
    fv_file_size,
    fv_lock,
    fv_unlock,
    fv_check_reserved,
    fv_file_control,
    fv_sector_size,
    fv_device_characteristics,
    fv_shm_map,
    fv_shm_lock,
    fv_shm_barrier,
    fv_shm_unmap,
    NULL,
    NULL,
};

/* ---- VFS methods ------------------------------------------------------- */

static int fv_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f,
                   int flags, int *out_flags) {
  struct fv_file *p = (struct fv_file *)f;
  int rc = check(FV_OPEN);

  (void)vfs;
  p->base.pMethods = NULL;
  p->node = NULL;
  p->sync_failed = false;
  p->real = (sqlite3_file *)(p + 1);
  if (rc != SQLITE_OK)
    return rc;
  rc = fv_base->xOpen(fv_base, name, p->real, flags, out_flags);
  if (rc != SQLITE_OK)
    return rc;
  if (name != NULL && (flags & SQLITE_OPEN_DELETEONCLOSE) == 0) {
    pthread_mutex_lock(&fv_mu);
    p->node = node_find(name, true);
    if (p->node != NULL)
      p->node->handles++;
    pthread_mutex_unlock(&fv_mu);
  }
  p->base.pMethods = &fv_io;
  return SQLITE_OK;
}

static int fv_delete(sqlite3_vfs *vfs, const char *name, int sync_dir) {
  struct fv_node *n;
  int rc;

  (void)vfs;
  if (atomic_load(&fv_off))
    return SQLITE_IOERR_DELETE;
  rc = fv_base->xDelete(fv_base, name, sync_dir);
  /* A deleted file has nothing left to lose. */
  pthread_mutex_lock(&fv_mu);
  n = node_find(name, false);
  if (n != NULL && rc == SQLITE_OK) {
    free_undo(n);
    node_release(n);
  }
  pthread_mutex_unlock(&fv_mu);
  return rc;
}

static int fv_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
  (void)vfs;
  if (atomic_load(&fv_off))
    return SQLITE_IOERR_ACCESS;
  return fv_base->xAccess(fv_base, name, flags, out);
}

static int fv_full_pathname(sqlite3_vfs *vfs, const char *name, int n,
                            char *out) {
  (void)vfs;
  return fv_base->xFullPathname(fv_base, name, n, out);
}

static void *fv_dl_open(sqlite3_vfs *vfs, const char *path) {
  (void)vfs;
  return fv_base->xDlOpen(fv_base, path);
}

static void fv_dl_error(sqlite3_vfs *vfs, int n, char *msg) {
  (void)vfs;
  fv_base->xDlError(fv_base, n, msg);
}

static void (*fv_dl_sym(sqlite3_vfs *vfs, void *h, const char *sym))(void) {
  (void)vfs;
  return fv_base->xDlSym(fv_base, h, sym);
}

static void fv_dl_close(sqlite3_vfs *vfs, void *h) {
  (void)vfs;
  fv_base->xDlClose(fv_base, h);
}

static int fv_randomness(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return fv_base->xRandomness(fv_base, n, out);
}

static int fv_sleep(sqlite3_vfs *vfs, int us) {
  (void)vfs;
  return fv_base->xSleep(fv_base, us);
}

static int fv_current_time(sqlite3_vfs *vfs, double *out) {
  (void)vfs;
  return fv_base->xCurrentTime(fv_base, out);
}

static int fv_get_last_error(sqlite3_vfs *vfs, int n, char *out) {
  (void)vfs;
  return fv_base->xGetLastError(fv_base, n, out);
}

static int fv_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
  (void)vfs;
  return fv_base->xCurrentTimeInt64(fv_base, out);
}

int faultvfs_install(void) {
  int rc = SQLITE_OK;

  pthread_mutex_lock(&fv_mu);
  if (fv_base == NULL) {
    sqlite3_vfs *base = sqlite3_vfs_find(NULL);
    if (base == NULL) {
      rc = SQLITE_ERROR;
    } else {
      fv_vfs.iVersion = base->iVersion >= 2 ? 2 : 1;
      fv_vfs.szOsFile = (int)sizeof(struct fv_file) + base->szOsFile;
      fv_vfs.mxPathname = base->mxPathname;
      fv_vfs.zName = FV_NAME;
      fv_vfs.xOpen = fv_open;
      fv_vfs.xDelete = fv_delete;
      fv_vfs.xAccess = fv_access;
      fv_vfs.xFullPathname = fv_full_pathname;
      fv_vfs.xDlOpen = fv_dl_open;
      fv_vfs.xDlError = fv_dl_error;
      fv_vfs.xDlSym = fv_dl_sym;
      fv_vfs.xDlClose = fv_dl_close;
      fv_vfs.xRandomness = fv_randomness;
      fv_vfs.xSleep = fv_sleep;
      fv_vfs.xCurrentTime = fv_current_time;
      fv_vfs.xGetLastError = fv_get_last_error;
      if (fv_vfs.iVersion >= 2)
        fv_vfs.xCurrentTimeInt64 = fv_current_time64;
      fv_base = base;
      rc = sqlite3_vfs_register(&fv_vfs, 1);
      if (rc != SQLITE_OK)
        fv_base = NULL;
    }
  }
  pthread_mutex_unlock(&fv_mu);
  return rc;
}

void faultvfs_arm(const struct faultvfs_plan *plan) {
  pthread_mutex_lock(&fv_mu);
  fv_plan = *plan;
  fv_rng = plan->seed;
  atomic_store(&fv_count, 0);
  atomic_store(&fv_injected, 0);
  atomic_store(&fv_resynced, 0);
  atomic_store(&fv_armed, plan->fault != FAULTVFS_NONE);
  pthread_mutex_unlock(&fv_mu);
}

void faultvfs_disarm(void) {
  atomic_store(&fv_armed, false);
}

uint64_t faultvfs_count(void) {
  return atomic_load(&fv_count);
}

uint64_t faultvfs_injected(void) {
  return atomic_load(&fv_injected);
}

uint64_t faultvfs_resynced(void) {
  return atomic_load(&fv_resynced);
}

bool faultvfs_powered_off(void) {
  return atomic_load(&fv_off);
}

void faultvfs_reset(void) {
  struct fv_node *n;
  struct fv_node *next;

  pthread_mutex_lock(&fv_mu);
  memset(&fv_plan, 0, sizeof(fv_plan));
  atomic_store(&fv_armed, false);
  atomic_store(&fv_count, 0);
  for (n = fv_nodes; n != NULL; n = next) {
    next = n->next;
    free_undo(n);
    if (n->restore_fd >= 0) {
      close(n->restore_fd);
      n->restore_fd = -1;
    }
    node_release(n);
  }
  atomic_store(&fv_off, false);
  pthread_mutex_unlock(&fv_mu);
}

/* Parses the unsigned decimal number at s (all of it). */
static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  unsigned long long v;

  if (*s < '0' || *s > '9')
    return -1;
  v = strtoull(s, &end, 10);
  if (*end != '\0')
    return -1;
  *out = v;
  return 0;
}

int faultvfs_parse(const char *text, struct faultvfs_plan *plan) {
  static const char *const faults[] = {"none",  "eio",        "enospc",
                                       "fsync", "power-drop", "power-garble"};
  static const char *const ops[] = {"any", "write", "sync"};
  char buf[128];
  char *field[5];
  size_t nfield = 0;
  size_t i;
  char *s;

  if (text == NULL || strlen(text) >= sizeof(buf))
    return -1;
  memcpy(buf, text, strlen(text) + 1);
  memset(plan, 0, sizeof(*plan));
  s = buf;
  for (;;) {
    char *colon = strchr(s, ':');
    if (nfield == sizeof(field) / sizeof(field[0]))
      return -1;
    field[nfield++] = s;
    if (colon == NULL)
      break;
    *colon = '\0';
    s = colon + 1;
  }
  if (nfield < 3)
    return -1;
  for (i = 0; i < sizeof(faults) / sizeof(faults[0]); i++)
    if (strcmp(field[0], faults[i]) == 0)
      break;
  if (i == sizeof(faults) / sizeof(faults[0]))
    return -1;
  plan->fault = (enum faultvfs_fault)i;
  for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
    if (strcmp(field[1], ops[i]) == 0)
      break;
  if (i == sizeof(ops) / sizeof(ops[0]))
    return -1;
  plan->op = (enum faultvfs_op)i;
  if (parse_u64(field[2], &plan->k) != 0 || plan->k == 0)
    return -1;
  for (i = 3; i < nfield; i++) {
    if (strcmp(field[i], "sticky") == 0)
      plan->sticky = true;
    else if (strncmp(field[i], "seed=", 5) == 0 &&
             parse_u64(field[i] + 5, &plan->seed) == 0)
      continue;
    else
      return -1;
  }
  return 0;
}
