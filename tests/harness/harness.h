/* SPDX-License-Identifier: MIT */
/* A small test runner in the style of libuv's test/runner.c and task.h:
 * TEST(name) defines a test, TEST_LIST names them, ASSERT_* print both
 * values on failure. Each test runs in a forked child with a time limit
 * (FIELDSYNC_TEST_TIMEOUT seconds, default 120, times FIELDSYNC_TEST_SCALE),
 * so a crash or a hang fails that test only. Output is TAP: "ok N - name". */
#ifndef FIELDSYNC_TEST_HARNESS_H
#define FIELDSYNC_TEST_HARNESS_H

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct test_entry {
  const char *name;
  void (*fn)(void);
};

#define TEST(name) static void test_##name(void)
#define TEST_ENTRY(name) {#name, test_##name},
#define TEST_LIST(...)                                                         \
  static const struct test_entry test_entries_[] = {__VA_ARGS__};              \
  int main(int argc, char **argv) {                                            \
    return test_run_all(test_entries_,                                         \
                        sizeof(test_entries_) / sizeof(test_entries_[0]),      \
                        argc, argv);                                           \
  }

int test_run_all(const struct test_entry *t, size_t n, int argc, char **argv);

/* Fails the running test with a message (the child exits non-zero). */
void test_fail(const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4), noreturn))
#endif
    ;

/* A seed for randomized tests: $FIELDSYNC_SEED if set, else from the clock.
 * It is printed as "# seed: N" so a failing run can be repeated. */
uint64_t test_seed(void);
/* A small, fast PRNG (splitmix64) so runs repeat exactly from a seed. */
uint64_t test_rand(uint64_t *state);
/* Uniform in [0, n); n > 0. */
uint64_t test_rand_below(uint64_t *state, uint64_t n);

/* Scale factor for randomized iteration counts: $FIELDSYNC_TEST_SCALE
 * (default 1). The `long` targets set it higher. */
uint64_t test_scale(void);

#define ASSERT(expr)                                                           \
  do {                                                                         \
    if (!(expr))                                                               \
      test_fail(__FILE__, __LINE__, "assertion failed: %s", #expr);            \
  } while (0)

#define ASSERT_INT_(a, op, b)                                                  \
  do {                                                                         \
    long long a_ = (long long)(a);                                             \
    long long b_ = (long long)(b);                                             \
    if (!(a_ op b_))                                                           \
      test_fail(__FILE__, __LINE__, "%s %s %s (%lld vs %lld)", #a, #op, #b,    \
                a_, b_);                                                       \
  } while (0)

#define ASSERT_EQ(a, b) ASSERT_INT_(a, ==, b)
#define ASSERT_NE(a, b) ASSERT_INT_(a, !=, b)
#define ASSERT_LT(a, b) ASSERT_INT_(a, <, b)
#define ASSERT_LE(a, b) ASSERT_INT_(a, <=, b)
#define ASSERT_GT(a, b) ASSERT_INT_(a, >, b)
#define ASSERT_GE(a, b) ASSERT_INT_(a, >=, b)
#define ASSERT_OK(a) ASSERT_INT_(a, ==, 0)

#define ASSERT_STR_EQ(a, b)                                                    \
  do {                                                                         \
    const char *a_ = (a);                                                      \
    const char *b_ = (b);                                                      \
    if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)                       \
      test_fail(__FILE__, __LINE__, "%s == %s (\"%s\" vs \"%s\")", #a, #b,     \
                a_ ? a_ : "(null)", b_ ? b_ : "(null)");                       \
  } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                 \
  do {                                                                         \
    if (memcmp((a), (b), (n)) != 0)                                            \
      test_fail(__FILE__, __LINE__, "memory differs: %s vs %s (%zu bytes)",    \
                #a, #b, (size_t)(n));                                          \
  } while (0)

#endif
