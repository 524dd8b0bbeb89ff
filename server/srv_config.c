/* SPDX-License-Identifier: MIT */
/* fieldsyncd configuration: defaults, then a config file of "key = value"
 * lines (keys are the long flag names), then flags. Every value is checked;
 * a bad one is an error naming it. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"

void srv_config_default(struct srv_config *c) {
  memset(c, 0, sizeof(*c));
  snprintf(c->db_path, sizeof(c->db_path), "fieldsyncd.db");
  snprintf(c->host, sizeof(c->host), "127.0.0.1");
  c->port = 7340;
  c->max_connections = 1000;
  c->max_frame = FSP_DEFAULT_MAX_FRAME;
  c->max_batch = FSP_DEFAULT_MAX_BATCH;
  c->handshake_timeout_ms = 10000;
  c->idle_timeout_ms = 120000;
  c->frame_timeout_ms = 60000;
  c->write_timeout_ms = 60000;
  /* A client that waits for each reply before its next request never has
   * more than one reply queued, so this only holds back peers that
   * pipeline requests without reading (srv_conn.c, "Memory"). */
  c->max_write_queue = 1u << 20;
  /* A flood of tiny requests waits instead of taking the loop and the
   * workers from everyone else (tools/load: 20 flooding peers without a
   * limit put healthy clients' p99 at 10x its quiet value). A sync never
   * comes near it: a second's burst of 100 requests, each carrying up to
   * max_batch records, then 100 a second. */
  c->max_requests_per_s = 100;
  c->readers = 4;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: fieldsyncd --tls-cert FILE --tls-key FILE [OPTIONS]\n"
          "       fieldsyncd --plaintext [OPTIONS]   (loopback only)\n"
          "options: [--db PATH] [--listen HOST:PORT] [--config FILE]\n"
          "         [--max-connections N] [--max-frame BYTES]\n"
          "         [--max-batch N] [--handshake-timeout-ms MS]\n"
          "         [--idle-timeout-ms MS] [--frame-timeout-ms MS]\n"
          "         [--write-timeout-ms MS] [--max-write-queue BYTES]\n"
          "         [--max-requests-per-s N] [--quiet]\n"
          "\n"
          "Serves fieldsync replicas over TLS (1.2 or newer): --tls-cert is\n"
          "the server's certificate chain and --tls-key its private key, both\n"
          "PEM. --plaintext serves plain TCP instead, and only on a loopback\n"
          "address (127.0.0.0/8, ::1), for tests and TLS-terminating proxies\n"
          "on the same host. One of the two is required.\n"
          "Listens on 127.0.0.1:7340 by default; port 0 picks a free port.\n"
          "Prints \"listening on HOST:PORT\" on stdout when ready; logs one\n"
          "line per event on stderr. SIGINT/SIGTERM stop it cleanly.\n"
          "\n"
          "Limits and deadlines (a peer that passes one gets Error and is\n"
          "closed; only that connection):\n"
          "  --max-connections N     served at once (1000); more get\n"
          "                          ERR_BUSY. Lowered, with a warning, to\n"
          "                          what RLIMIT_NOFILE allows\n"
          "  --max-frame BYTES       largest frame accepted (4194304)\n"
          "  --handshake-timeout-ms  connect to a checked Hello (10000)\n"
          "  --idle-timeout-ms       between requests, counted from the\n"
          "                          last reply's end (120000)\n"
          "  --frame-timeout-ms      a frame's first byte to its last, so\n"
          "                          no peer can dribble one (60000)\n"
          "  --write-timeout-ms      a peer that takes none of the bytes\n"
          "                          queued for it this long is dropped,\n"
          "                          without an Error (60000)\n"
          "  --max-write-queue BYTES replies queued to a peer before its\n"
          "                          next request waits (1048576)\n"
          "  --max-requests-per-s N  requests one connection may start per\n"
          "                          second, in bursts of as many; more\n"
          "                          wait (100; 0: no limit)\n");
}

static int parse_u64(const char *key, const char *v, uint64_t min,
                     uint64_t max, uint64_t *out) {
  char *end = NULL;
  unsigned long long x;

  errno = 0;
  x = strtoull(v, &end, 10);
  if (v[0] == '\0' || v[0] == '-' || errno != 0 || *end != '\0' || x < min ||
      x > max) {
    fprintf(stderr, "fieldsyncd: %s: \"%s\" is not a number in %llu..%llu\n",
            key, v, (unsigned long long)min, (unsigned long long)max);
    return -1;
  }
  *out = x;
  return 0;
}

/* "HOST:PORT" or "[V6]:PORT". */
static int parse_listen(struct srv_config *c, const char *v) {
  const char *colon = strrchr(v, ':');
  const char *host = v;
  size_t hlen;
  uint64_t port;

  if (colon == NULL) {
    fprintf(stderr, "fieldsyncd: listen: \"%s\" is not HOST:PORT\n", v);
    return -1;
  }
  hlen = (size_t)(colon - v);
  if (hlen >= 2 && v[0] == '[' && v[hlen - 1] == ']') {
    host = v + 1;
    hlen -= 2;
  }
  if (hlen == 0 || hlen >= sizeof(c->host)) {
    fprintf(stderr, "fieldsyncd: listen: bad host in \"%s\"\n", v);
    return -1;
  }
  if (parse_u64("listen port", colon + 1, 0, 65535, &port) != 0)
    return -1;
  memcpy(c->host, host, hlen);
  c->host[hlen] = '\0';
  c->port = (int)port;
  return 0;
}

static int set(struct srv_config *c, const char *key, const char *v) {
  uint64_t x;

  if (strcmp(key, "db") == 0) {
    if (strlen(v) >= sizeof(c->db_path) || v[0] == '\0') {
      fprintf(stderr, "fieldsyncd: db: bad path\n");
      return -1;
    }
    snprintf(c->db_path, sizeof(c->db_path), "%s", v);
    return 0;
  }
  if (strcmp(key, "listen") == 0)
    return parse_listen(c, v);
  if (strcmp(key, "max-connections") == 0) {
    if (parse_u64(key, v, 1, 1000000, &x) != 0)
      return -1;
    c->max_connections = (unsigned)x;
    return 0;
  }
  if (strcmp(key, "max-frame") == 0) {
    if (parse_u64(key, v, 1024, 64u << 20, &x) != 0)
      return -1;
    c->max_frame = (uint32_t)x;
    return 0;
  }
  if (strcmp(key, "max-batch") == 0) {
    if (parse_u64(key, v, 1, FSP_DEFAULT_MAX_BATCH, &x) != 0)
      return -1;
    c->max_batch = (uint32_t)x;
    return 0;
  }
  if (strcmp(key, "handshake-timeout-ms") == 0) {
    if (parse_u64(key, v, 10, 3600000, &x) != 0)
      return -1;
    c->handshake_timeout_ms = (unsigned)x;
    return 0;
  }
  if (strcmp(key, "idle-timeout-ms") == 0) {
    if (parse_u64(key, v, 10, 86400000, &x) != 0)
      return -1;
    c->idle_timeout_ms = (unsigned)x;
    return 0;
  }
  if (strcmp(key, "frame-timeout-ms") == 0) {
    if (parse_u64(key, v, 10, 3600000, &x) != 0)
      return -1;
    c->frame_timeout_ms = (unsigned)x;
    return 0;
  }
  if (strcmp(key, "write-timeout-ms") == 0) {
    if (parse_u64(key, v, 10, 3600000, &x) != 0)
      return -1;
    c->write_timeout_ms = (unsigned)x;
    return 0;
  }
  if (strcmp(key, "max-write-queue") == 0) {
    if (parse_u64(key, v, 4096, 1u << 30, &x) != 0)
      return -1;
    c->max_write_queue = (size_t)x;
    return 0;
  }
  if (strcmp(key, "max-requests-per-s") == 0) {
    if (parse_u64(key, v, 0, 1000000, &x) != 0)
      return -1;
    c->max_requests_per_s = (unsigned)x;
    return 0;
  }
  if (strcmp(key, "quiet") == 0) {
    c->quiet = strcmp(v, "true") == 0 || strcmp(v, "1") == 0;
    return 0;
  }
  if (strcmp(key, "plaintext") == 0) {
    c->plaintext = strcmp(v, "true") == 0 || strcmp(v, "1") == 0;
    return 0;
  }
  if (strcmp(key, "tls-cert") == 0 || strcmp(key, "tls-key") == 0) {
    char *dst = strcmp(key, "tls-cert") == 0 ? c->tls_cert : c->tls_key;
    if (v[0] == '\0' || strlen(v) >= sizeof(c->tls_cert)) {
      fprintf(stderr, "fieldsyncd: %s: bad path\n", key);
      return -1;
    }
    snprintf(dst, sizeof(c->tls_cert), "%s", v);
    return 0;
  }
  fprintf(stderr, "fieldsyncd: unknown setting \"%s\" (see --help)\n", key);
  return -1;
}

static char *trim(char *s) {
  char *e;

  while (*s == ' ' || *s == '\t')
    s++;
  e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' ||
                   e[-1] == '\r'))
    *--e = '\0';
  return s;
}

static int load_file(struct srv_config *c, const char *path) {
  FILE *f = fopen(path, "r");
  char line[1200];
  int lineno = 0;

  if (f == NULL) {
    fprintf(stderr, "fieldsyncd: cannot open config %s: %s\n", path,
            strerror(errno));
    return -1;
  }
  while (fgets(line, sizeof(line), f) != NULL) {
    char *s = trim(line);
    char *eq;

    lineno++;
    if (s[0] == '\0' || s[0] == '#')
      continue;
    eq = strchr(s, '=');
    if (eq == NULL) {
      fprintf(stderr, "fieldsyncd: %s:%d: expected key = value\n", path,
              lineno);
      fclose(f);
      return -1;
    }
    *eq = '\0';
    if (set(c, trim(s), trim(eq + 1)) != 0) {
      fprintf(stderr, "fieldsyncd: in %s line %d\n", path, lineno);
      fclose(f);
      return -1;
    }
  }
  fclose(f);
  return 0;
}

bool srv_config_is_loopback(const char *host) {
  unsigned char a[16];
  static const unsigned char v6_loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                                0, 0, 0, 0, 0, 0, 0, 1};
  static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0,    0,
                                              0, 0, 0, 0, 0xff, 0xff};

  if (strcmp(host, "localhost") == 0) /* bound as 127.0.0.1 */
    return true;
  if (inet_pton(AF_INET, host, a) == 1)
    return a[0] == 127;
  if (inet_pton(AF_INET6, host, a) == 1)
    return memcmp(a, v6_loopback, 16) == 0 ||
           (memcmp(a, v4_mapped, 12) == 0 && a[12] == 127);
  return false;
}

/* The transport rules: TLS needs both files; plain TCP must be asked for,
 * and only on loopback, because device tokens and personal data must never
 * cross a network in clear (PROTOCOL.md "Security"). Checked before
 * anything is opened or bound. */
static int check_transport(const struct srv_config *c) {
  bool cert = c->tls_cert[0] != '\0';
  bool key = c->tls_key[0] != '\0';

  if (cert != key) {
    fprintf(stderr, "fieldsyncd: --tls-cert and --tls-key go together: "
                    "give both\n");
    return -1;
  }
  if (cert && c->plaintext) {
    fprintf(stderr, "fieldsyncd: --plaintext and --tls-cert/--tls-key "
                    "exclude each other: choose one\n");
    return -1;
  }
  if (!cert && !c->plaintext) {
    fprintf(stderr,
            "fieldsyncd: no TLS certificate: give --tls-cert FILE and "
            "--tls-key FILE (PEM), or --plaintext to serve plain TCP on a "
            "loopback address\n");
    return -1;
  }
  if (c->plaintext && !srv_config_is_loopback(c->host)) {
    fprintf(stderr,
            "fieldsyncd: plaintext is only allowed on loopback (127.0.0.0/8 "
            "or ::1), not on %s: give --tls-cert and --tls-key\n",
            c->host);
    return -1;
  }
  return 0;
}

int srv_config_parse(struct srv_config *c, int argc, char **argv) {
  int i;

  /* The config file first, so flags override it wherever they stand. */
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--config") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "fieldsyncd: --config needs a file\n");
        return -1;
      }
      if (load_file(c, argv[i + 1]) != 0)
        return -1;
    }
  }
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];

    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 1;
    }
    if (strcmp(a, "--quiet") == 0) {
      c->quiet = true;
      continue;
    }
    if (strcmp(a, "--plaintext") == 0) {
      c->plaintext = true;
      continue;
    }
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
      fprintf(stderr, "fieldsyncd: unexpected argument \"%s\"\n", a);
      usage(stderr);
      return -1;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "fieldsyncd: %s needs a value\n", a);
      return -1;
    }
    if (strcmp(a, "--config") != 0 && set(c, a + 2, argv[i + 1]) != 0)
      return -1;
    i++;
  }
  return check_transport(c);
}
