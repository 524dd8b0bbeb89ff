/* SPDX-License-Identifier: MIT */
/* Device tokens and revocation against a real fieldsyncd on 127.0.0.1:
 * every bad token gets its Error before any later frame is decoded,
 * revoking a device (or deleting its user) ends its open sessions within a
 * second and refuses its next handshake, and a Pull's held scopes reach the
 * store and come back as removed scopes and backfills. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"
#include "proc.h"
#include "wire.h"

/* The revocation bound (PROTOCOL.md: "within a second"), from the exit of
 * fieldsync-admin to the session's Error and close. */
#define REVOKE_BOUND_MS 1000
#define REVOKE_SAMPLES 5

static const char *fieldsyncd;
static const char *admin;
static char dir[256];
static char db[320];
static struct test_server srv;

/* A fresh directory and database; the server is killed at exit if a test
 * fails with it running. */
static void setup(void) {
  int n;

  tmpdir_make(dir, sizeof(dir), "fs-auth");
  n = snprintf(db, sizeof(db), "%s/server.db", dir);
  ASSERT(n > 0 && (size_t)n < sizeof(db));
  tmpdir_kill_at_exit(&srv);
}

static void start(void) {
  server_start(&srv, fieldsyncd, db, NULL);
}

/* The same, without the per-connection request rate, for a test that
 * pipelines thousands of requests. */
static void start_unlimited(void) {
  const char *extra[] = {"--max-requests-per-s", "0", NULL};

  server_start(&srv, fieldsyncd, db, extra);
}

static void stop(void) {
  ASSERT_EQ(server_stop(&srv), 0);
}

static void admin_run(const char *const *args, char *out, size_t cap) {
  proc_admin_run(admin, db, args, out, cap);
}

static void user_add(const char *name, const char *role) {
  const char *a[] = {"user", "add", name, "--role", role, NULL};
  char out[256];

  admin_run(a, out, sizeof(out));
}

/* Makes a device for user: its token (SRV_TOKEN_LEN chars) and its id,
 * read back from `device list USER --json` (in id order: the newest is
 * the last). */
static void device_add(const char *user, char token[64], long long *id) {
  const char *a[] = {"device", "add", user, NULL};
  const char *l[] = {"device", "list", user, "--json", NULL};
  char out[8192];
  const char *p;

  admin_run(a, out, sizeof(out));
  ASSERT(sscanf(out, "%63s", token) == 1);
  ASSERT_EQ(strlen(token), 52);
  admin_run(l, out, sizeof(out));
  *id = -1;
  for (p = strstr(out, "\"id\""); p != NULL; p = strstr(p, "\"id\"")) {
    char *end;
    long long v;

    p += 4;
    while (*p == ' ' || *p == ':')
      p++;
    errno = 0;
    v = strtoll(p, &end, 10);
    ASSERT(end != p && errno == 0);
    *id = v;
  }
  if (*id < 0)
    test_fail(__FILE__, __LINE__, "no device id in: %s", out);
}

static void device_revoke(long long id) {
  char num[32];
  const char *a[] = {"device", "revoke", num, NULL};
  char out[256];

  snprintf(num, sizeof(num), "%lld", id);
  admin_run(a, out, sizeof(out));
}

static void fill_replica(uint8_t r[16], uint8_t n) {
  int i;

  for (i = 0; i < 16; i++)
    r[i] = (uint8_t)(0xa0 + n * 7 + i);
}

/* A Hello with token (NULL: no token field at all) from replica n. */
static void hello_init(struct sample_envelope *s, const char *tok, uint8_t n) {
  sample_envelope_init(s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  fill_replica(s->replica, n);
  s->hello.device_token = (char *)tok;
}

/* Opens a session: Hello (token from replica n), then Welcome as user. */
static int session(const char *tok, uint8_t n, const char *user) {
  struct sample_envelope s;
  struct fsp_msg m;
  int fd = wire_dial(srv.port);

  hello_init(&s, tok, n);
  wire_send_env(fd, &s.env);
  ASSERT(wire_recv_env(fd, &m));
  if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_WELCOME)
    test_fail(__FILE__, __LINE__, "want welcome, got %s: %s",
              fsp_msg_body_name(m.env),
              m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
                  ? m.env->error->message
                  : "");
  ASSERT_STR_EQ(m.env->welcome->user, user);
  fsp_msg_close(&m);
  return fd;
}

/* A Pull from cursor 0 on an open session gets Changes. */
static void pull_ok(int fd) {
  struct sample_envelope s;
  struct fsp_msg m;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  wire_send_env(fd, &s.env);
  ASSERT(wire_recv_env(fd, &m));
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  fsp_msg_close(&m);
}

/* A frame that says Push in its envelope but whose Push is not protobuf:
 * protocol_version 1, then field 4 (push) holding an overlong varint. */
static const uint8_t garbage_push[] = {
    0x00, 0x00, 0x00, 0x0f, 0x08, 0x01, 0x22, 0x0b, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/* Sends Hello(tok, replica n) and the garbage Push in one write, so the
 * server holds both before it checks the token; expects Error code, then
 * a close. */
static void refused(const char *tok, uint8_t n, int code) {
  struct sample_envelope s;
  uint8_t buf[512];
  uint8_t *frame;
  size_t len;
  int fd = wire_dial(srv.port);

  hello_init(&s, tok, n);
  wire_frame(&s.env, &frame, &len);
  ASSERT_LE(len + sizeof(garbage_push), sizeof(buf));
  memcpy(buf, frame, len);
  memcpy(buf + len, garbage_push, sizeof(garbage_push));
  fsp_free(frame);
  wire_send_bytes(fd, buf, len + sizeof(garbage_push));
  (void)wire_expect_error(fd, code);
}

/* Reads the server's log (stderr) into buf. */
static void read_log(char *buf, size_t cap) {
  FILE *f = fopen(srv.log, "r");
  size_t n;

  ASSERT(f != NULL);
  n = fread(buf, 1, cap - 1, f);
  buf[n] = '\0';
  fclose(f);
}

static size_t count(const char *hay, const char *needle) {
  size_t n = 0;
  const char *p;

  for (p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
    n++;
  return n;
}

TEST(bad_tokens_refused_before_decode) {
  static char log[1 << 20];
  char ann1[64];
  char ann2[64];
  char bob[64];
  char carl[64];
  char unknown[64];
  long long ann1_id;
  long long ann2_id;
  long long bob_id;
  long long carl_id;
  const char *del[] = {"user", "delete", "carl", NULL};
  struct sample_envelope s;
  int fd;

  setup();
  user_add("ann", "inspector");
  user_add("bob", "expert");
  user_add("carl", "inspector");
  device_add("ann", ann1, &ann1_id);
  device_add("ann", ann2, &ann2_id);
  device_add("bob", bob, &bob_id);
  device_add("carl", carl, &carl_id);
  ASSERT_NE(ann1_id, ann2_id);
  start();
  /* Bind ann's first token to replica 1, and carl's to replica 3, by a
   * good handshake each. */
  close(session(ann1, 1, "ann"));
  close(session(carl, 3, "carl"));
  device_revoke(bob_id);
  admin_run(del, NULL, 0);

  /* No token, an empty one, malformed ones (length, prefix, not hex), a
   * well-formed unknown one, and ann's token from another replica. */
  refused(NULL, 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  refused("", 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  refused("fst_0123", 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  {
    char t[128];

    snprintf(t, sizeof(t), "%s00", ann1); /* too long */
    refused(t, 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
    snprintf(t, sizeof(t), "%s", ann1);
    t[0] = 'x'; /* wrong prefix */
    refused(t, 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
    snprintf(t, sizeof(t), "%s", ann1);
    t[20] = 'g'; /* not hex */
    refused(t, 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  }
  snprintf(unknown, sizeof(unknown), "fst_%s",
           "0123456789abcdef0123456789abcdef0123456789abcdef");
  refused(unknown, 1, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  refused(ann1, 2, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  /* A revoked device (never bound), and a deleted user's device. Only
   * the replica a token is bound to learns that it was revoked; a copy
   * elsewhere is just not that device. */
  refused(bob, 4, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  refused(carl, 3, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  refused(carl, 5, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);

  /* Anything but a Hello first is refused from its envelope alone: a
   * valid Push, and the garbage one. */
  fd = wire_dial(srv.port);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE);
  fd = wire_dial(srv.port);
  wire_send_bytes(fd, garbage_push, sizeof(garbage_push));
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE);

  /* Nothing was decoded past a Hello, each refusal logged its own
   * reason, and no token reached the log. */
  read_log(log, sizeof(log));
  ASSERT_EQ(count(log, "protocol_error"), 0);
  ASSERT_EQ(count(log, "reason=no_token"), 2);
  ASSERT_EQ(count(log, "reason=unknown_token"), 5);
  ASSERT_EQ(count(log, "reason=replica_mismatch"), 2);
  ASSERT_EQ(count(log, "reason=revoked"), 2);
  ASSERT(strstr(log, ann1) == NULL && strstr(log, ann2) == NULL);
  ASSERT(strstr(log, bob) == NULL && strstr(log, carl) == NULL);
  ASSERT(strstr(log, ann1 + 4) == NULL); /* not even the hex part */

  /* The server kept serving: ann's devices work, and in a session the
   * garbage Push is what it is, malformed. */
  fd = session(ann1, 1, "ann");
  pull_ok(fd);
  close(session(ann2, 2, "ann"));
  wire_send_bytes(fd, garbage_push, sizeof(garbage_push));
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_MALFORMED);
  stop();
}

/* Compares for qsort. */
static int cmp_ll(const void *a, const void *b) {
  long long x = *(const long long *)a;
  long long y = *(const long long *)b;

  return x < y ? -1 : x > y;
}

/* Revokes devices of dan one at a time while each has an open session:
 * the session gets ERR_REVOKED and is closed, its token is refused from
 * then on, and dan's other device and another user's session go on.
 *
 * The bound is 1 s from the exit of fieldsync-admin (after its commit) to
 * the Error and the close, asserted on each sample. The server polls every
 * 200 ms, so the margin is wide: with ASan on a 2-core box kept busy by
 * four spinning processes, the worst of 15 samples was 120 ms (admin
 * itself then took up to 1 s to exit, and the session was often closed
 * before it had). */
TEST(revoke_closes_sessions) {
  char tok[REVOKE_SAMPLES][64];
  long long id[REVOKE_SAMPLES];
  long long lat[REVOKE_SAMPLES];
  char keep[64];
  char other[64];
  long long keep_id;
  long long other_id;
  int keep_fd;
  int other_fd;
  int i;

  setup();
  user_add("dan", "inspector");
  user_add("erin", "head_office");
  for (i = 0; i < REVOKE_SAMPLES; i++)
    device_add("dan", tok[i], &id[i]);
  device_add("dan", keep, &keep_id);
  device_add("erin", other, &other_id);
  start();
  keep_fd = session(keep, 50, "dan");
  other_fd = session(other, 51, "erin");
  for (i = 0; i < REVOKE_SAMPLES; i++) {
    int fd = session(tok[i], (uint8_t)(10 + i), "dan");
    long long t0;
    long long t;

    pull_ok(fd); /* READY again after a request */
    t0 = proc_now_ms();
    device_revoke(id[i]);
    t = proc_now_ms();
    (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
    lat[i] = proc_now_ms() - t;
    printf("# revocation %d: session closed %lld ms after fieldsync-admin "
           "exited (%lld ms after it started)\n",
           i, lat[i], proc_now_ms() - t0);
    ASSERT_LE(lat[i], REVOKE_BOUND_MS);
    /* Its next handshake is refused (a copy elsewhere is told less). */
    refused(tok[i], (uint8_t)(10 + i), FIELDSYNC__ERROR_CODE__ERR_REVOKED);
    refused(tok[i], 99, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
    /* The rest go on. */
    pull_ok(keep_fd);
    pull_ok(other_fd);
  }
  qsort(lat, REVOKE_SAMPLES, sizeof(lat[0]), cmp_ll);
  printf("# revocation latency: median %lld ms, max %lld ms\n",
         lat[REVOKE_SAMPLES / 2], lat[REVOKE_SAMPLES - 1]);
  /* Revoking again changes nothing; a new session of dan still opens. */
  device_revoke(id[0]);
  close(session(keep, 50, "dan"));
  pull_ok(keep_fd);
  close(keep_fd);
  close(other_fd);
  stop();
  /* After a restart the revocations still hold. */
  start();
  refused(tok[0], 10, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  close(session(keep, 50, "dan"));
  stop();
}

/* Deleting a user ends all of their sessions at once; other users go on. */
TEST(user_delete_closes_sessions) {
  const char *del[] = {"user", "delete", "fay", NULL};
  char f1[64];
  char f2[64];
  char g[64];
  long long f1_id;
  long long f2_id;
  long long g_id;
  long long t;
  int fd1;
  int fd2;
  int gfd;

  setup();
  user_add("fay", "expert");
  user_add("gus", "inspector");
  device_add("fay", f1, &f1_id);
  device_add("fay", f2, &f2_id);
  device_add("gus", g, &g_id);
  start();
  fd1 = session(f1, 1, "fay");
  fd2 = session(f2, 2, "fay");
  gfd = session(g, 3, "gus");
  admin_run(del, NULL, 0);
  t = proc_now_ms();
  (void)wire_expect_error(fd1, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  (void)wire_expect_error(fd2, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  printf("# user delete: both sessions closed %lld ms after\n",
         proc_now_ms() - t);
  ASSERT_LE(proc_now_ms() - t, REVOKE_BOUND_MS);
  refused(f1, 1, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  refused(f2, 2, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  pull_ok(gfd);
  close(gfd);
  stop();
}

/* Sends n bytes unless the peer has gone (then returns false). */
static bool send_unless_closed(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
      return false;
    ASSERT(w > 0);
    p += w;
    n -= (size_t)w;
  }
  return true;
}

#define BURST 2000

/* A revocation that lands while the session has a request in flight: the
 * reply is dropped and the Error takes its place, and no reply follows
 * it. To have a request in flight whenever the server's revocation watch
 * runs, the session pipelines Pulls in bursts of BURST in one write
 * (the server answers them one at a time from what it read) and sends the
 * next burst before the last is done; the revocation starts once the
 * server is halfway through the first. */
TEST(revoke_with_request_in_flight) {
  static uint8_t burst[BURST * 32];
  static char log[1 << 20];
  struct sample_envelope s;
  struct wire_reader r;
  struct fsp_msg m;
  char tok[64];
  char keep[64];
  char idnum[32];
  char needle[96];
  long long id;
  long long keep_id;
  long long deadline;
  size_t flen = 0;
  size_t sent = 0;
  size_t replies = 0;
  bool can_send = true;
  pid_t pid = 0;
  uint8_t *frame;
  int keep_fd;
  int fd;
  int i;

  setup();
  user_add("ivy", "head_office");
  device_add("ivy", tok, &id);
  device_add("ivy", keep, &keep_id);
  start_unlimited();
  keep_fd = session(keep, 2, "ivy");
  fd = session(tok, 1, "ivy");
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  s.pull.max_records = 1;
  wire_frame(&s.env, &frame, &flen);
  ASSERT_LE(flen, 32);
  for (i = 0; i < BURST; i++)
    memcpy(burst + (size_t)i * flen, frame, flen);
  fsp_free(frame);
  wire_reader_init(&r, fd);
  ASSERT(send_unless_closed(fd, burst, BURST * flen));
  sent = BURST;
  deadline = proc_now_ms() + 60000;
  for (;;) {
    ASSERT(proc_now_ms() < deadline);
    if (!wire_reader_next(&r, &m))
      test_fail(__FILE__, __LINE__, "closed after %zu replies, no Error",
                replies);
    if (m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR)
      break;
    ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_CHANGES);
    fsp_msg_close(&m);
    replies++;
    if (can_send && sent - replies < BURST) {
      can_send = send_unless_closed(fd, burst, BURST * flen);
      if (can_send)
        sent += BURST;
    }
    if (replies == BURST / 2 && pid == 0) {
      char *a[] = {(char *)admin, "--db", db, "device", "revoke", idnum, NULL};

      snprintf(idnum, sizeof(idnum), "%lld", id);
      pid = proc_start(a);
    }
  }
  ASSERT_EQ(m.env->error->code, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  fsp_msg_close(&m);
  /* Nothing after the Error: the connection is closed. */
  ASSERT(!wire_reader_next(&r, &m));
  wire_reader_close(&r);
  close(fd);
  ASSERT(pid > 0);
  ASSERT_EQ(proc_wait(pid, 30000), 0);
  printf("# revoked after %zu of %zu pulls answered\n", replies, sent);
  ASSERT_LT(replies, sent);

  /* The server saw a request in flight and dropped its reply. */
  read_log(log, sizeof(log));
  snprintf(needle, sizeof(needle), "device=%lld user=ivy in_flight=yes", id);
  ASSERT(strstr(log, needle) != NULL);
  snprintf(needle, sizeof(needle), "device=%lld op=pull", id);
  ASSERT(strstr(log, needle) != NULL && strstr(log, "reply_dropped") != NULL);
  refused(tok, 1, FIELDSYNC__ERROR_CODE__ERR_REVOKED);
  pull_ok(keep_fd);
  close(keep_fd);
  stop();
}

/* The hex of a 16-byte id, as fieldsync-admin takes it. */
static void hex16(const uint8_t id[16], char out[33]) {
  int i;

  for (i = 0; i < 16; i++)
    snprintf(out + 2 * i, 3, "%02x", id[i]);
}

/* Pull{cursor 0, held} and its Changes. */
static void pull_held(int fd, Fieldsync__ScopeKey **held, size_t n,
                      struct fsp_msg *m) {
  struct sample_envelope s;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  s.pull.n_held_scopes = n;
  s.pull.held_scopes = held;
  wire_send_env(fd, &s.env);
  ASSERT(wire_recv_env(fd, m));
  ASSERT_EQ(m->env->body_case, FIELDSYNC__ENVELOPE__BODY_CHANGES);
}

static bool scope_is(const Fieldsync__ScopeKey *k, const uint8_t id[16]) {
  return k->kind == FIELDSYNC__SCOPE_KIND__SCOPE_VISIT && k->id.len == 16 &&
         memcmp(k->id.data, id, 16) == 0;
}

/* A smoke test of Pull.held_scopes through the session to the store and
 * back (the scope rules are tested with the store): an expert with no
 * assignment holds nothing, one assignment keeps its visit, and a new one
 * is backfilled. */
TEST(pull_held_scopes_round_trip) {
  uint8_t v[3][16];
  char hex[33];
  char tok[64];
  long long tok_id;
  Fieldsync__ScopeKey k[3];
  Fieldsync__ScopeKey *held[3];
  struct fsp_msg m;
  int fd;
  int i;

  setup();
  user_add("hal", "expert");
  device_add("hal", tok, &tok_id);
  for (i = 0; i < 3; i++) {
    memset(v[i], 0x30 + i, 16); /* ascending: v[0] < v[1] < v[2] */
    fieldsync__scope_key__init(&k[i]);
    k[i].has_kind = 1;
    k[i].kind = FIELDSYNC__SCOPE_KIND__SCOPE_VISIT;
    k[i].has_id = 1;
    k[i].id.data = v[i];
    k[i].id.len = 16;
    held[i] = &k[i];
  }
  start();
  fd = session(tok, 1, "hal");

  /* Nothing assigned: both held visits come back removed. */
  pull_held(fd, held, 2, &m);
  ASSERT_EQ(m.env->changes->n_removed_scopes, 2);
  ASSERT(scope_is(m.env->changes->removed_scopes[0], v[0]) ||
         scope_is(m.env->changes->removed_scopes[1], v[0]));
  ASSERT(scope_is(m.env->changes->removed_scopes[0], v[1]) ||
         scope_is(m.env->changes->removed_scopes[1], v[1]));
  ASSERT(m.env->changes->backfill_scope == NULL);
  fsp_msg_close(&m);

  /* v[0] assigned: only v[1] is removed. */
  hex16(v[0], hex);
  {
    const char *a[] = {"assign", hex, "hal", NULL};
    admin_run(a, NULL, 0);
  }
  pull_held(fd, held, 2, &m);
  ASSERT_EQ(m.env->changes->n_removed_scopes, 1);
  ASSERT(scope_is(m.env->changes->removed_scopes[0], v[1]));
  ASSERT(m.env->changes->backfill_scope == NULL);
  fsp_msg_close(&m);

  /* v[2] assigned but not held: backfilled (nothing to send, so done). */
  hex16(v[2], hex);
  {
    const char *a[] = {"assign", hex, "hal", NULL};
    admin_run(a, NULL, 0);
  }
  pull_held(fd, held, 1, &m);
  ASSERT_EQ(m.env->changes->n_removed_scopes, 0);
  ASSERT(m.env->changes->backfill_scope != NULL);
  ASSERT(scope_is(m.env->changes->backfill_scope, v[2]));
  ASSERT(m.env->changes->has_backfill_done && m.env->changes->backfill_done);
  ASSERT_EQ(m.env->changes->next_cursor, 0);
  fsp_msg_close(&m);

  /* Holding both: neither removed nor backfilled. */
  held[1] = &k[2];
  pull_held(fd, held, 2, &m);
  ASSERT_EQ(m.env->changes->n_removed_scopes, 0);
  ASSERT(m.env->changes->backfill_scope == NULL);
  fsp_msg_close(&m);
  close(fd);
  stop();
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(bad_tokens_refused_before_decode)
      TEST_ENTRY(revoke_closes_sessions)
      TEST_ENTRY(revoke_with_request_in_flight)
      TEST_ENTRY(user_delete_closes_sessions)
      TEST_ENTRY(pull_held_scopes_round_trip)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_auth FIELDSYNCD FIELDSYNC-ADMIN [TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
