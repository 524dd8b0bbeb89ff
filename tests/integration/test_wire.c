/* SPDX-License-Identifier: MIT */
/* fieldsyncd on the wire (Redis tests/unit/protocol.tcl style): a real
 * server on 127.0.0.1, raw sockets sending each kind of bad input. Each
 * gets its Error code and a closed connection, while a healthy session on
 * another connection, open throughout, still completes. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fsp_frame.h"
#include "fsp_msg.h"
#include "fsp_samples.h"
#include "harness.h"
#include "proc.h"
#include "wire.h"

static const char *fieldsyncd;
static const char *admin;
static char dir[64];
static char db[128];
static char token[128];
static struct test_server srv;

static void setup(const char *const *extra) {
  char *argv[8];
  char out[256];
  char err[512];

  snprintf(dir, sizeof(dir), "/tmp/fs-wire-XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
  snprintf(db, sizeof(db), "%s/server.db", dir);
  argv[0] = (char *)admin;
  argv[1] = "--db";
  argv[2] = db;
  argv[3] = "user";
  argv[4] = "add";
  argv[5] = "lead";
  argv[6] = "--role";
  argv[7] = "head_office"; /* sees and writes every scope: this test is
                              about the wire, not the policy */
  {
    char *a[] = {argv[0], argv[1], argv[2], argv[3], argv[4], argv[5],
                 argv[6], argv[7], NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
  }
  {
    char *a[] = {(char *)admin, "--db", db, "device", "add", "lead", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
    ASSERT(sscanf(out, "%127s", token) == 1);
  }
  server_start(&srv, fieldsyncd, db, extra);
}

static void teardown(void) {
  char cmd[128];

  ASSERT_EQ(server_stop(&srv), 0);
  snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "# could not remove %s\n", dir);
}

static int hello(const char *tok) {
  struct sample_envelope s;
  struct fsp_msg m;
  int fd = wire_dial(srv.port);

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = (char *)tok;
  wire_send_env(fd, &s.env);
  if (strcmp(tok, token) == 0) {
    ASSERT(wire_recv_env(fd, &m));
    ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_WELCOME);
    ASSERT_STR_EQ(m.env->welcome->user, "lead");
    ASSERT_EQ(m.env->welcome->role, FIELDSYNC__ROLE__ROLE_HEAD_OFFICE);
    fsp_msg_close(&m);
  }
  return fd;
}

/* A healthy push + pull on an open session. */
static void healthy_round(int fd, uint32_t n) {
  struct sample_envelope s;
  struct fsp_msg m;

  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  sample_change_init(&s.ch[0], n, 100);
  sample_change_init(&s.ch[1], n + 1, 100);
  wire_send_env(fd, &s.env);
  ASSERT(wire_recv_env(fd, &m));
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK);
  ASSERT_EQ(m.env->push_ack->n_outcomes, 2);
  ASSERT_EQ(m.env->push_ack->outcomes[0]->outcome,
            FIELDSYNC__OUTCOME__OUTCOME_APPLIED);
  fsp_msg_close(&m);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  s.pull.cursor = 0;
  wire_send_env(fd, &s.env);
  ASSERT(wire_recv_env(fd, &m));
  ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_CHANGES);
  ASSERT_GE(m.env->changes->n_changes, 2);
  fsp_msg_close(&m);
}

TEST(bad_input_gets_error_and_others_go_on) {
  struct sample_envelope s;
  int healthy;
  int fd;

  setup(NULL);
  healthy = hello(token);
  healthy_round(healthy, 100);

  /* Oversize frame: refused from the header alone. */
  fd = wire_dial(srv.port);
  wire_send_bytes(fd, "\x7f\xff\xff\xff", 4);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE);

  /* Zero length. */
  fd = wire_dial(srv.port);
  wire_send_bytes(fd, "\x00\x00\x00\x00", 4);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_MALFORMED);

  /* Garbage body. */
  fd = wire_dial(srv.port);
  wire_send_bytes(fd, "\x00\x00\x00\x06garbag", 10);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_MALFORMED);

  /* Out of order: pull before hello. */
  fd = wire_dial(srv.port);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE);

  /* Out of order: a second hello in a session. */
  fd = hello(token);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = token;
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE);

  /* Wrong protocol version. */
  fd = wire_dial(srv.port);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
  s.hello.device_token = token;
  s.env.protocol_version = 2;
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_PROTOCOL_VERSION);

  /* Bad token, malformed token, empty token (test_auth has the rest). */
  (void)wire_expect_error(
      hello("fst_000000000000000000000000000000000000000000000000"),
      FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  (void)wire_expect_error(hello("not-a-token"),
                          FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);
  (void)wire_expect_error(hello(""),
                          FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED);

  /* A bad version vector (unsorted) in a push. */
  fd = hello(token);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[0].ep[0] = &s.ch[0].e[1];
  s.ch[0].ep[1] = &s.ch[0].e[0];
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_INVALID);

  /* A hash that does not match its payload. */
  fd = hello(token);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PUSH);
  s.ch[1].hash[0] ^= 1;
  wire_send_env(fd, &s.env);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_INVALID);

  /* Trailing garbage after a valid hello (a second, broken frame). */
  fd = wire_dial(srv.port);
  {
    uint8_t *frame;
    size_t len;
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_HELLO);
    s.hello.device_token = token;
    ASSERT_OK(fsp_msg_encode_frame(&s.env, FSP_DEFAULT_MAX_FRAME, &frame,
                                   &len));
    wire_send_bytes(fd, frame, len);
    wire_send_bytes(fd, "\x00\x00\x00\x03\xff\xff\xff", 7);
    fsp_free(frame);
    {
      struct fsp_msg m;
      ASSERT(wire_recv_env(fd, &m));
      ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_WELCOME);
      fsp_msg_close(&m);
    }
  }
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_MALFORMED);

  /* Truncated frame then hang-up: the server just closes that one. */
  fd = wire_dial(srv.port);
  wire_send_bytes(fd, "\x00\x00\x01\x00\x08\x01", 6);
  close(fd);

  /* Through all of that the healthy session carried on. */
  healthy_round(healthy, 200);
  close(healthy);
  teardown();
}

TEST(handshake_and_idle_deadlines) {
  const char *extra[] = {"--handshake-timeout-ms", "300", "--idle-timeout-ms",
                         "600", NULL};
  long long t0;
  int fd;

  setup(extra);
  /* Slowloris: dribble a header and never finish. */
  fd = wire_dial(srv.port);
  t0 = proc_now_ms();
  wire_send_bytes(fd, "\x00\x00", 2);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_TIMEOUT);
  ASSERT_GE(proc_now_ms() - t0, 250);

  /* Idle after the handshake. */
  fd = hello(token);
  (void)wire_expect_error(fd, FIELDSYNC__ERROR_CODE__ERR_TIMEOUT);
  teardown();
}

TEST(connection_limit) {
  const char *extra[] = {"--max-connections", "2", NULL};
  int a;
  int b;
  int c;

  setup(extra);
  a = hello(token);
  b = hello(token);
  c = wire_dial(srv.port);
  (void)wire_expect_error(c, FIELDSYNC__ERROR_CODE__ERR_BUSY);
  /* The two admitted sessions still work. */
  healthy_round(a, 300);
  healthy_round(b, 400);
  close(a);
  close(b);
  teardown();
}

/* A client that could not use a reply reports it with an Error and the
 * server just closes: no Error answers an Error (PROTOCOL.md "Session"),
 * and the session counts as ended, not as failed. */
TEST(client_error_is_answered_by_a_close) {
  struct sample_envelope s;
  int fd;

  setup(NULL);
  fd = hello(token);
  sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_ERROR);
  wire_send_env(fd, &s.env);
  wire_expect_closed(fd);
  close(fd);
  /* Others go on. */
  fd = hello(token);
  healthy_round(fd, 600);
  close(fd);
  teardown();
}

TEST(sigterm_stops_cleanly_with_open_sessions) {
  int fd;

  setup(NULL);
  fd = hello(token);
  healthy_round(fd, 500);
  ASSERT_EQ(server_stop(&srv), 0);
  /* The session was told, then closed. */
  {
    struct fsp_msg m;
    if (wire_recv_env(fd, &m)) {
      ASSERT_EQ(m.env->body_case, FIELDSYNC__ENVELOPE__BODY_ERROR);
      ASSERT_EQ(m.env->error->code, FIELDSYNC__ERROR_CODE__ERR_SHUTTING_DOWN);
      fsp_msg_close(&m);
    }
  }
  close(fd);
  /* A restart finds everything acknowledged before. */
  server_start(&srv, fieldsyncd, db, NULL);
  fd = hello(token);
  {
    struct sample_envelope s;
    struct fsp_msg m;
    sample_envelope_init(&s, FIELDSYNC__ENVELOPE__BODY_PULL);
    s.pull.cursor = 0;
    wire_send_env(fd, &s.env);
    ASSERT(wire_recv_env(fd, &m));
    ASSERT_EQ(m.env->changes->n_changes, 2);
    fsp_msg_close(&m);
  }
  close(fd);
  teardown();
}

/* fieldsync-admin: every bad input is a one-line error and a non-zero exit,
 * and a file that is not a server database is left untouched. */
TEST(admin_bad_input) {
  char out[512];
  char err[512];
  char path[160];
  FILE *f;

  snprintf(dir, sizeof(dir), "/tmp/fs-admin-XXXXXX");
  ASSERT(mkdtemp(dir) != NULL);
  snprintf(db, sizeof(db), "%s/server.db", dir);
  {
    char *a[] = {(char *)admin, "--db", db, "user", "add", "ann", "--role",
                 "inspector", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
    ASSERT_STR_EQ(out, "");
    /* The same user again. */
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 1);
    ASSERT(strstr(err, "fieldsync-admin: ") == err);
  }
  {
    char *a[] = {(char *)admin, "--db", db, "user", "add", "bob", "--role",
                 "janitor", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "janitor") != NULL);
  }
  {
    char *a[] = {(char *)admin, "--db", db, "device", "add", "nobody", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 1);
    ASSERT_STR_EQ(out, "");
  }
  {
    char *a[] = {(char *)admin, "--db", db, "frobnicate", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
  }
  {
    char *a[] = {(char *)admin, "user", "add", "x", "--role", "expert", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
  }
  {
    char *a[] = {(char *)admin, "--help", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
    ASSERT(strstr(out, "usage") != NULL);
  }
  /* Visit teams and devices: each bad argument gets its exit status (2
   * usage, 1 refused) and a message naming it; nothing is assigned. */
  {
    static const struct {
      const char *argv[7];
      int status;
      const char *says;
    } bad[] = {
        {{"assign", "0123", "ann"}, 2, "0123"},
        {{"assign", "0123456789abcdef0123456789abcdeg", "ann"}, 2, "VISIT"},
        {{"assign", "0123456789abcdef0123456789abcdef", "ann", "--until",
          "2009-02-30"},
         2, "2009-02-30"},
        {{"assign", "0123456789abcdef0123456789abcdef", "ann", "--until",
          "tomorrow"},
         2, "tomorrow"},
        {{"assign", "0123456789abcdef0123456789abcdef", "nobody"}, 1, "nobody"},
        {{"assign", "0123456789abcdef0123456789abcdef", "boss"}, 1,
         "head_office"},
        {{"unassign", "0123456789abcdef0123456789abcdef", "ann"}, 1, ""},
        {{"device", "revoke", "seven"}, 2, "seven"},
        {{"device", "revoke", "999"}, 1, "999"},
        {{"device", "list", "--until", "2030-01-01"}, 2, "--until"},
        {{"user", "delete", "nobody"}, 1, "nobody"},
    };
    char *a[12];
    size_t i;
    size_t k;

    {
      char *u[] = {(char *)admin, "--db", db, "user", "add", "boss", "--role",
                   "head_office", NULL};
      ASSERT_EQ(proc_run(u, out, sizeof(out), err, sizeof(err), 20000), 0);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
      a[0] = (char *)admin;
      a[1] = "--db";
      a[2] = db;
      for (k = 0; bad[i].argv[k] != NULL; k++)
        a[3 + k] = (char *)bad[i].argv[k];
      a[3 + k] = NULL;
      if (proc_run(a, out, sizeof(out), err, sizeof(err), 20000) !=
          bad[i].status)
        test_fail(__FILE__, __LINE__, "case %zu (%s %s): want exit %d: %s", i,
                  bad[i].argv[0], bad[i].argv[1], bad[i].status, err);
      ASSERT(strstr(err, "fieldsync-admin: ") == err);
      ASSERT(strstr(err, bad[i].says) != NULL);
    }
    {
      char *l[] = {(char *)admin, "--db", db, "assignments", "--json", NULL};
      ASSERT_EQ(proc_run(l, out, sizeof(out), err, sizeof(err), 20000), 0);
      ASSERT(strstr(out, "[]") != NULL); /* nothing was assigned */
    }
  }
  /* Not a server database: refused, unchanged. */
  snprintf(path, sizeof(path), "%s/notes.txt", dir);
  f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs("not a database at all, just some inspection notes\n", f);
  fclose(f);
  {
    char *a[] = {(char *)admin, "--db", path, "device", "add", "ann", NULL};
    char buf[128];
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 1);
    f = fopen(path, "r");
    ASSERT(f != NULL && fgets(buf, sizeof(buf), f) != NULL);
    fclose(f);
    ASSERT_STR_EQ(buf, "not a database at all, just some inspection notes\n");
  }
  /* fieldsyncd refuses it too, with a message and a non-zero exit. */
  {
    char *a[] = {(char *)fieldsyncd, "--db", path, "--listen", "127.0.0.1:0",
                 "--plaintext", NULL};
    ASSERT_NE(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 0);
    ASSERT(strstr(err, "fieldsyncd: ") != NULL);
  }
  {
    char *a[] = {(char *)fieldsyncd, "--listen", "nowhere", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
    ASSERT(strstr(err, "HOST:PORT") != NULL);
  }
  {
    char *a[] = {(char *)fieldsyncd, "--max-frame", "-5", NULL};
    ASSERT_EQ(proc_run(a, out, sizeof(out), err, sizeof(err), 20000), 2);
  }
  {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ASSERT_EQ(system(cmd), 0);
  }
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(admin_bad_input)
      TEST_ENTRY(bad_input_gets_error_and_others_go_on)
      TEST_ENTRY(handshake_and_idle_deadlines)
      TEST_ENTRY(connection_limit)
      TEST_ENTRY(client_error_is_answered_by_a_close)
      TEST_ENTRY(sigterm_stops_cleanly_with_open_sessions)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_wire FIELDSYNCD FIELDSYNC-ADMIN [TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
