/* SPDX-License-Identifier: MIT */
/* The test runner behind harness.h: forks each test, enforces a time limit
 * and prints TAP lines. */
#define _POSIX_C_SOURCE 200809L
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *current_test = "?";

void test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;

  fflush(stdout);
  fprintf(stderr, "# %s: %s:%d: ", current_test, file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  exit(1);
}

static uint64_t env_u64(const char *name, uint64_t dflt) {
  const char *s = getenv(name);
  char *end = NULL;
  unsigned long long v;

  if (s == NULL || *s == '\0')
    return dflt;
  errno = 0;
  v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    fprintf(stderr, "# bad %s=%s, using %llu\n", name, s,
            (unsigned long long)dflt);
    return dflt;
  }
  return v;
}

uint64_t test_seed(void) {
  struct timespec ts;
  uint64_t seed;

  clock_gettime(CLOCK_REALTIME, &ts);
  seed = env_u64("FIELDSYNC_SEED",
                 (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^
                     (uint64_t)getpid() << 32);
  printf("# seed: %" PRIu64 " (set FIELDSYNC_SEED to repeat)\n", seed);
  fflush(stdout);
  return seed;
}

uint64_t test_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t test_rand_below(uint64_t *state, uint64_t n) {
  return test_rand(state) % n;
}

uint64_t test_scale(void) {
  uint64_t s = env_u64("FIELDSYNC_TEST_SCALE", 1);
  return s == 0 ? 1 : s;
}

/* Runs one test in a child; returns true when it passed. */
static bool run_one(const struct test_entry *t, unsigned timeout) {
  pid_t pid;
  int status = 0;

  fflush(stdout);
  fflush(stderr);
  pid = fork();
  if (pid < 0) {
    fprintf(stderr, "# fork: %s\n", strerror(errno));
    return false;
  }
  if (pid == 0) {
    current_test = t->name;
    alarm(timeout); /* SIGALRM's default action ends the child */
    t->fn();
    fflush(stdout);
    exit(0);
  }
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR)
      return false;
  }
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    fprintf(stderr, "# %s: %s\n", t->name,
            sig == SIGALRM ? "timed out" : strsignal(sig));
    return false;
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int test_run_all(const struct test_entry *t, size_t n, int argc, char **argv) {
  /* Iteration counts grow with the scale, so the time limit does too. */
  unsigned timeout =
      (unsigned)(env_u64("FIELDSYNC_TEST_TIMEOUT", 120) * test_scale());
  size_t i;
  size_t run = 0;
  size_t failed = 0;

  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc > 1 && strcmp(argv[1], "--list") == 0) {
    for (i = 0; i < n; i++)
      printf("%s\n", t[i].name);
    return 0;
  }
  if (argc > 1) {
    for (i = 0; i < n; i++)
      if (strcmp(argv[1], t[i].name) == 0)
        break;
    if (i == n) {
      fprintf(stderr, "no test named %s (try --list)\n", argv[1]);
      return 2;
    }
    printf("1..1\n");
    if (run_one(&t[i], timeout)) {
      printf("ok 1 - %s\n", t[i].name);
      return 0;
    }
    printf("not ok 1 - %s\n", t[i].name);
    return 1;
  }
  printf("1..%zu\n", n);
  for (i = 0; i < n; i++) {
    run++;
    if (run_one(&t[i], timeout)) {
      printf("ok %zu - %s\n", run, t[i].name);
    } else {
      printf("not ok %zu - %s\n", run, t[i].name);
      failed++;
    }
  }
  printf("# %zu passed, %zu failed\n", run - failed, failed);
  return failed == 0 ? 0 : 1;
}
