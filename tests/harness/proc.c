/* SPDX-License-Identifier: MIT */
/* Test processes: see proc.h. */
#define _POSIX_C_SOURCE 200809L
#include "proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

long long proc_now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for pid until deadline (ms); SIGKILLs it after. */
static int wait_deadline(pid_t pid, long long deadline, int *status) {
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid)
      return 0;
    if (r < 0 && errno != EINTR)
      return -1;
    if (proc_now_ms() >= deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, status, 0);
      return 1;
    }
    {
      struct timespec ts = {0, 2 * 1000 * 1000};
      nanosleep(&ts, NULL);
    }
  }
}

int proc_run(char *const argv[], char *out, size_t outcap, char *err,
             size_t errcap, int timeout_ms) {
  int po[2];
  int pe[2];
  size_t no = 0;
  size_t ne = 0;
  long long deadline = proc_now_ms() + timeout_ms;
  pid_t pid;
  int status = 0;
  bool open_o = true;
  bool open_e = true;

  if (pipe(po) != 0 || pipe(pe) != 0)
    return -1;
  pid = fork();
  if (pid < 0)
    return -1;
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(po[1], 1);
    dup2(pe[1], 2);
    close(po[0]);
    close(pe[0]);
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(po[1]);
  close(pe[1]);
  while ((open_o || open_e) && proc_now_ms() < deadline) {
    struct pollfd p[2];
    int np = 0;
    int i;

    if (open_o) {
      p[np].fd = po[0];
      p[np++].events = POLLIN;
    }
    if (open_e) {
      p[np].fd = pe[0];
      p[np++].events = POLLIN;
    }
    if (poll(p, (nfds_t)np, 100) < 0 && errno != EINTR)
      break;
    for (i = 0; i < np; i++) {
      char buf[4096];
      ssize_t r;
      bool is_o = p[i].fd == po[0];

      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      r = read(p[i].fd, buf, sizeof(buf));
      if (r <= 0) {
        if (is_o)
          open_o = false;
        else
          open_e = false;
        continue;
      }
      if (is_o && out != NULL && no + 1 < outcap) {
        size_t k = (size_t)r < outcap - 1 - no ? (size_t)r : outcap - 1 - no;
        memcpy(out + no, buf, k);
        no += k;
      } else if (!is_o && err != NULL && ne + 1 < errcap) {
        size_t k = (size_t)r < errcap - 1 - ne ? (size_t)r : errcap - 1 - ne;
        memcpy(err + ne, buf, k);
        ne += k;
      }
    }
  }
  close(po[0]);
  close(pe[0]);
  if (out != NULL && outcap > 0)
    out[no] = '\0';
  if (err != NULL && errcap > 0)
    err[ne] = '\0';
  if (wait_deadline(pid, deadline, &status) != 0)
    return 128 + SIGKILL;
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

pid_t proc_start(char *const argv[]) {
  pid_t pid = fork();

  ASSERT(pid >= 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    execv(argv[0], argv);
    _exit(127);
  }
  return pid;
}

int proc_wait(pid_t pid, int timeout_ms) {
  int status = 0;
  int rc = wait_deadline(pid, proc_now_ms() + timeout_ms, &status);

  if (rc < 0)
    return -1;
  if (WIFSIGNALED(status))
    return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

/* True when the NULL-terminated list (may be NULL) holds arg. */
static bool has_arg(const char *const *list, const char *arg) {
  while (list != NULL && *list != NULL)
    if (strcmp(*list++, arg) == 0)
      return true;
  return false;
}

void server_start(struct test_server *s, const char *path, const char *db,
                  const char *const *extra) {
  server_start_nofile(s, path, db, extra, 0);
}

void server_start_nofile(struct test_server *s, const char *path,
                         const char *db, const char *const *extra,
                         unsigned long nofile) {
  char *argv[64];
  int po[2];
  int n = 0;
  int logfd;
  char line[256];
  size_t got = 0;
  long long deadline = proc_now_ms() + 20000;

  memset(s, 0, sizeof(*s));
  snprintf(s->log, sizeof(s->log), "%s.log", db);
  argv[n++] = (char *)path;
  argv[n++] = "--db";
  argv[n++] = (char *)db;
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  if (!has_arg(extra, "--tls-cert"))
    argv[n++] = "--plaintext"; /* allowed: it listens on loopback */
  while (extra != NULL && *extra != NULL && n < 62)
    argv[n++] = (char *)*extra++;
  argv[n] = NULL;
  ASSERT_OK(pipe(po));
  logfd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
  ASSERT(logfd >= 0);
  s->pid = fork();
  ASSERT(s->pid >= 0);
  if (s->pid == 0) {
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(po[1], 1);
    dup2(logfd, 2);
    close(po[0]);
    if (nofile > 0) {
      struct rlimit rl;

      rl.rlim_cur = (rlim_t)nofile;
      rl.rlim_max = (rlim_t)nofile;
      if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        _exit(126);
    }
    execv(path, argv);
    _exit(127);
  }
  close(po[1]);
  close(logfd);
  /* Read the ready line. */
  while (got + 1 < sizeof(line) && proc_now_ms() < deadline) {
    struct pollfd p = {po[0], POLLIN, 0};
    ssize_t r;

    if (poll(&p, 1, 100) <= 0)
      continue;
    r = read(po[0], line + got, 1);
    if (r <= 0)
      break;
    if (line[got] == '\n')
      break;
    got++;
  }
  line[got] = '\0';
  close(po[0]);
  if (sscanf(line, "listening on 127.0.0.1:%d", &s->port) != 1) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    test_fail(__FILE__, __LINE__, "fieldsyncd did not start (\"%s\"; see %s)",
              line, s->log);
  }
  snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%d", s->port);
}

int server_stop(struct test_server *s) {
  int status = 0;

  if (s->pid <= 0)
    return -1;
  kill(s->pid, SIGTERM);
  if (wait_deadline(s->pid, proc_now_ms() + 20000, &status) != 0)
    test_fail(__FILE__, __LINE__, "fieldsyncd did not stop on SIGTERM");
  s->pid = 0;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void server_kill(struct test_server *s) {
  if (s->pid <= 0)
    return;
  kill(s->pid, SIGKILL);
  waitpid(s->pid, NULL, 0);
  s->pid = 0;
}

void proc_sleep_ms(double ms) {
  struct timespec ts;

  ts.tv_sec = (time_t)(ms / 1e3);
  ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    continue;
}

/* ---- temporary directory and its cleanup at exit ------------------------ */

#define MAX_EXIT_SERVERS 8

static char *tmp_dir;
static struct test_server *exit_servers[MAX_EXIT_SERVERS];
static int n_exit_servers;
static bool cleanup_registered;

/* Removes path: a directory with everything under it (depth limited), or a
 * file. */
static void remove_tree(const char *path, int depth) {
  struct stat st;
  DIR *d;

  if (lstat(path, &st) != 0)
    return;
  if (!S_ISDIR(st.st_mode)) {
    unlink(path);
    return;
  }
  d = depth < 16 ? opendir(path) : NULL;
  if (d != NULL) {
    for (;;) {
      struct dirent *e = readdir(d);
      char p[1024];
      int n;

      if (e == NULL)
        break;
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
        continue;
      n = snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
      if (n > 0 && (size_t)n < sizeof(p))
        remove_tree(p, depth + 1);
    }
    closedir(d);
  }
  rmdir(path);
}

static void tmpdir_cleanup(void) {
  const char *keep = getenv("FIELDSYNC_KEEP_TMP");
  int i;

  for (i = 0; i < n_exit_servers; i++)
    if (exit_servers[i]->pid > 0)
      server_kill(exit_servers[i]);
  if (tmp_dir == NULL || tmp_dir[0] == '\0')
    return;
  if (keep != NULL && strcmp(keep, "1") == 0) {
    printf("# kept %s\n", tmp_dir);
    return;
  }
  remove_tree(tmp_dir, 0);
  tmp_dir[0] = '\0';
}

static void register_cleanup(void) {
  if (cleanup_registered)
    return;
  ASSERT_OK(atexit(tmpdir_cleanup));
  cleanup_registered = true;
}

void tmpdir_make(char *dir, size_t cap, const char *prefix) {
  const char *tmp = getenv("TMPDIR");
  int n;

  if (tmp == NULL || tmp[0] == '\0')
    tmp = "/tmp";
  n = snprintf(dir, cap, "%s/%s-XXXXXX", tmp, prefix);
  ASSERT(n > 0 && (size_t)n < cap);
  if (mkdtemp(dir) == NULL)
    test_fail(__FILE__, __LINE__, "mkdtemp %s: %s", dir, strerror(errno));
  tmp_dir = dir;
  register_cleanup();
}

void tmpdir_kill_at_exit(struct test_server *s) {
  int i;

  for (i = 0; i < n_exit_servers; i++)
    if (exit_servers[i] == s)
      return;
  ASSERT(n_exit_servers < MAX_EXIT_SERVERS);
  exit_servers[n_exit_servers++] = s;
  register_cleanup();
}

/* ---- fieldsync-admin ---------------------------------------------------- */

void proc_admin_run(const char *admin, const char *db, const char *const *args,
                    char *out, size_t cap) {
  char *argv[16];
  char err[1024];
  int n = 0;
  int rc;

  argv[n++] = (char *)admin;
  argv[n++] = "--db";
  argv[n++] = (char *)db;
  while (*args != NULL && n < 15)
    argv[n++] = (char *)*args++;
  argv[n] = NULL;
  rc = proc_run(argv, out, cap, err, sizeof(err), 30000);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "fieldsync-admin %s %s: exit %d: %s", argv[3],
              argv[4], rc, err);
}

void admin_user_device(const char *admin, const char *db, const char *user,
                       const char *role, char *token, size_t cap) {
  const char *ua[] = {"user", "add", user, "--role", role, NULL};
  const char *da[] = {"device", "add", user, NULL};
  char out[256];
  char tok[256];
  size_t len;

  proc_admin_run(admin, db, ua, out, sizeof(out));
  proc_admin_run(admin, db, da, out, sizeof(out));
  ASSERT(sscanf(out, "%255s", tok) == 1);
  len = strlen(tok);
  ASSERT(len < cap);
  memcpy(token, tok, len + 1);
}
