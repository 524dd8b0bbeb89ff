/* SPDX-License-Identifier: MIT */
/* Choices, changes and sockets for the structure-aware fuzz targets; see
 * fuzz_common.h. */
#define _POSIX_C_SOURCE 200809L
#include "fuzz_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

void fz_fail(const char *fmt, ...) {
  va_list ap;

  fprintf(stderr, "fuzz invariant broken: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  fflush(stderr);
  abort();
}

/* ---- choices ----------------------------------------------------------- */

uint8_t fz_u8(struct fz_in *in) {
  uint8_t b;

  if (in->n == 0)
    return 0;
  b = in->p[0];
  in->p++;
  in->n--;
  return b;
}

uint32_t fz_u32(struct fz_in *in) {
  uint32_t v = 0;
  int i;

  for (i = 0; i < 4; i++)
    v = v << 8 | fz_u8(in);
  return v;
}

uint64_t fz_u64(struct fz_in *in) {
  uint64_t hi = fz_u32(in);

  return hi << 32 | fz_u32(in);
}

uint32_t fz_below(struct fz_in *in, uint32_t n) {
  uint32_t v = fz_u8(in);

  if (n > 256)
    v = v << 8 | fz_u8(in);
  return v % n;
}

bool fz_chance(struct fz_in *in, unsigned pct) {
  return fz_below(in, 100) < pct;
}

size_t fz_bytes(struct fz_in *in, uint8_t *out, size_t max) {
  size_t n = fz_below(in, (uint32_t)(max < 65535 ? max + 1 : 65536));

  if (n > in->n)
    n = in->n;
  memcpy(out, in->p, n);
  in->p += n;
  in->n -= n;
  return n;
}

bool fz_done(const struct fz_in *in) { return in->n == 0; }

/* ---- ids and changes --------------------------------------------------- */

static void make_id(uint8_t id[16], uint32_t salt, uint8_t kind, uint8_t i) {
  memset(id, 0, 16);
  /* The first bytes make ids time-ordered, as real ids are, and differ
   * from every other input's. */
  id[0] = 0x01;
  id[1] = (uint8_t)(salt >> 24);
  id[2] = (uint8_t)(salt >> 16);
  id[3] = (uint8_t)(salt >> 8);
  id[4] = (uint8_t)salt;
  id[5] = kind;
  id[6] = i;
  id[15] = (uint8_t)(kind * 17u + i);
}

void fz_ids_init(struct fz_ids *ids, uint32_t salt) {
  uint8_t i;

  for (i = 0; i < FZ_VISITS; i++)
    make_id(ids->visit[i], salt, 'v', i);
  for (i = 0; i < FZ_SERVICES; i++)
    make_id(ids->service[i], salt, 's', i);
  for (i = 0; i < FZ_RECORDS; i++)
    make_id(ids->record[i], salt, 'r', i);
  for (i = 0; i < FZ_REPLICAS; i++)
    make_id(ids->replica[i], salt, 'p', i);
}

/* Text from the input: mostly letters; sometimes the raw bytes (which may
 * not be UTF-8). */
static char *text(struct fz_change *c, struct fz_in *in) {
  size_t n = fz_bytes(in, (uint8_t *)c->text, sizeof(c->text) - 1);
  bool raw = fz_chance(in, 5);
  size_t i;

  for (i = 0; i < n; i++) {
    if (!raw || c->text[i] == '\0')
      c->text[i] = (char)('a' + (uint8_t)c->text[i] % 26);
  }
  c->text[n] = '\0';
  return c->text;
}

/* An enum value: mostly in 1..max, sometimes 0 or past the end. */
static int enum_value(struct fz_in *in, int max) {
  if (fz_chance(in, 4))
    return fz_chance(in, 50) ? 0 : max + 1 + (int)fz_below(in, 3);
  return 1 + (int)fz_below(in, (uint32_t)max);
}

/* Packs the payload message of collection col into c->payload: its scope
 * field is scope_id (its own id for visits and services, which carry
 * none). Returns the length (0 when it did not fit). */
static size_t payload_make(struct fz_change *c, struct fz_in *in, int col,
                           const uint8_t *scope_id, const struct fz_ids *ids) {
  ProtobufCBinaryData sid = {16, (uint8_t *)scope_id};
  ProtobufCBinaryData svc = {16, (uint8_t *)ids->service[fz_below(
                                      in, FZ_SERVICES)]};
  const ProtobufCMessage *m;
  Fieldsync__Service s = FIELDSYNC__SERVICE__INIT;
  Fieldsync__Visit v = FIELDSYNC__VISIT__INIT;
  Fieldsync__Observation o = FIELDSYNC__OBSERVATION__INIT;
  Fieldsync__InterviewNote n = FIELDSYNC__INTERVIEW_NOTE__INIT;
  Fieldsync__Requirement r = FIELDSYNC__REQUIREMENT__INIT;
  Fieldsync__Recommendation rc = FIELDSYNC__RECOMMENDATION__INIT;
  Fieldsync__Concern cn = FIELDSYNC__CONCERN__INIT;
  Fieldsync__Attachment a = FIELDSYNC__ATTACHMENT__INIT;
  Fieldsync__ThemeNote th = FIELDSYNC__THEME_NOTE__INIT;
  Fieldsync__ThemeNote *thp[1] = {&th};
  size_t len;

  switch (col) {
  case FIELDSYNC__COLLECTION__COLLECTION_SERVICE:
    s.name = text(c, in);
    s.has_rating_stars = fz_chance(in, 50);
    s.rating_stars = fz_below(in, 5); /* 4 is out of range */
    m = &s.base;
    break;
  case FIELDSYNC__COLLECTION__COLLECTION_VISIT:
    v.has_service_id = 1;
    v.service_id = svc;
    v.has_kind = 1;
    v.kind = (Fieldsync__VisitKind)enum_value(in, 5);
    if (fz_chance(in, 50))
      v.lead_inspector = text(c, in);
    m = &v.base;
    break;
  case FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION:
    o.has_visit_id = 1;
    o.visit_id = sid;
    o.standard_code = "OP9";
    o.has_judgement = fz_chance(in, 70);
    o.judgement = fz_below(in, 6); /* 0 and 5 are out of range */
    o.evidence_text = text(c, in);
    m = &o.base;
    break;
  case FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE:
    n.has_visit_id = 1;
    n.visit_id = sid;
    n.expert = text(c, in);
    th.has_theme = 1;
    th.theme = (Fieldsync__Theme)enum_value(in, 10);
    n.n_themes = fz_below(in, 2);
    n.themes = thp;
    m = &n.base;
    break;
  case FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT:
    r.has_service_id = 1;
    r.service_id = sid;
    r.text = text(c, in);
    m = &r.base;
    break;
  case FIELDSYNC__COLLECTION__COLLECTION_RECOMMENDATION:
    rc.has_service_id = 1;
    rc.service_id = sid;
    rc.text = text(c, in);
    m = &rc.base;
    break;
  case FIELDSYNC__COLLECTION__COLLECTION_CONCERN:
    cn.has_service_id = 1;
    cn.service_id = sid;
    cn.summary = text(c, in);
    cn.has_risk = fz_chance(in, 50);
    cn.risk = (Fieldsync__Risk)enum_value(in, 3);
    m = &cn.base;
    break;
  default:
    a.has_visit_id = 1;
    a.visit_id = sid;
    a.has_sha256 = 1;
    a.sha256.len = fz_chance(in, 95) ? 32 : 31;
    a.sha256.data = c->hash; /* any 32 bytes do */
    a.caption = text(c, in);
    m = &a.base;
    break;
  }
  len = protobuf_c_message_get_packed_size(m);
  if (len > sizeof(c->payload))
    return 0;
  return protobuf_c_message_pack(m, c->payload);
}

void fz_scope_make(Fieldsync__ScopeKey *k, uint8_t id[16], struct fz_in *in,
                   const struct fz_ids *ids) {
  bool visit = fz_chance(in, 70);

  fieldsync__scope_key__init(k);
  k->has_kind = 1;
  k->kind = visit ? FIELDSYNC__SCOPE_KIND__SCOPE_VISIT
                  : FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE;
  memcpy(id,
         visit ? ids->visit[fz_below(in, FZ_VISITS)]
               : ids->service[fz_below(in, FZ_SERVICES)],
         16);
  k->has_id = 1;
  k->id.data = id;
  k->id.len = 16;
}

void fz_change_make(struct fz_change *c, struct fz_in *in,
                    const struct fz_ids *ids) {
  int col = 1 + (int)fz_below(in, 8);
  unsigned flaw = fz_chance(in, 8) ? 1 + fz_below(in, 5) : 0;
  bool visit_scoped;
  size_t n = 0;
  size_t i;

  memset(c, 0, sizeof(*c));
  fieldsync__change__init(&c->c);
  fieldsync__record_key__init(&c->key);
  fieldsync__scope_key__init(&c->scope);
  fieldsync__version__init(&c->v);

  /* The record and its scope. */
  visit_scoped = col == FIELDSYNC__COLLECTION__COLLECTION_VISIT ||
                 col == FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION ||
                 col == FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE ||
                 col == FIELDSYNC__COLLECTION__COLLECTION_ATTACHMENT;
  if (col == FIELDSYNC__COLLECTION__COLLECTION_VISIT) {
    memcpy(c->id, ids->visit[fz_below(in, FZ_VISITS)], 16);
    memcpy(c->scope_id, c->id, 16);
  } else if (col == FIELDSYNC__COLLECTION__COLLECTION_SERVICE) {
    memcpy(c->id, ids->service[fz_below(in, FZ_SERVICES)], 16);
    memcpy(c->scope_id, c->id, 16);
  } else {
    memcpy(c->id, ids->record[fz_below(in, FZ_RECORDS)], 16);
    memcpy(c->scope_id,
           visit_scoped ? ids->visit[fz_below(in, FZ_VISITS)]
                        : ids->service[fz_below(in, FZ_SERVICES)],
           16);
  }
  c->key.has_collection = 1;
  c->key.collection = (Fieldsync__Collection)(flaw == 3 ? 9 : col);
  c->key.has_id = 1;
  c->key.id.data = c->id;
  c->key.id.len = 16;
  c->scope.has_kind = 1;
  c->scope.kind = visit_scoped ? FIELDSYNC__SCOPE_KIND__SCOPE_VISIT
                               : FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE;
  c->scope.has_id = 1;
  c->scope.id.data = c->scope_id;
  c->scope.id.len = 16;

  /* A canonical vector over the input's replicas, unless that is the
   * flaw (then a zero counter or descending ids). */
  for (i = 0; i < FZ_REPLICAS && n < FZ_MAX_VV; i++) {
    if (!fz_chance(in, 40) && !(i + 1 == FZ_REPLICAS && n == 0))
      continue;
    fieldsync__vv_entry__init(&c->e[n]);
    c->e[n].has_replica = 1;
    c->e[n].replica.data = (uint8_t *)ids->replica[i];
    c->e[n].replica.len = 16;
    c->e[n].has_counter = 1;
    c->e[n].counter = 1 + fz_below(in, 6);
    c->ep[n] = &c->e[n];
    n++;
  }
  if (flaw == 4) {
    c->e[0].counter = 0;
    if (n > 1) {
      c->ep[0] = &c->e[1];
      c->ep[1] = &c->e[0];
    }
  }
  c->v.n_vv = n;
  c->v.vv = c->ep;

  /* The content: a tombstone, raw bytes, or the collection's payload. */
  if (fz_chance(in, 12)) {
    c->v.has_deleted = 1;
    c->v.deleted = 1;
  } else {
    size_t len;

    if (flaw == 2) {
      len = fz_bytes(in, c->payload, sizeof(c->payload));
    } else {
      const uint8_t *sid = c->scope_id;
      uint8_t other[16];

      if (flaw == 1) { /* the payload names another scope */
        memcpy(other, c->scope_id, 16);
        other[6] ^= 1;
        sid = other;
      }
      len = payload_make(c, in, col, sid, ids);
    }
    c->v.has_payload = 1;
    c->v.payload.data = c->payload;
    c->v.payload.len = len;
  }
  fsp_merge_hash(c->v.deleted, c->v.has_payload ? c->payload : NULL,
                 c->v.has_payload ? c->v.payload.len : 0, c->hash);
  if (flaw == 5)
    c->hash[0] ^= 0x80;
  c->v.has_hash = 1;
  c->v.hash.data = c->hash;
  c->v.hash.len = FSP_HASH_LEN;
  if (fz_chance(in, 30))
    c->v.author = text(c, in);
  if (fz_chance(in, 30)) {
    c->v.has_device_time_ms = 1;
    c->v.device_time_ms = (int64_t)fz_u32(in) * 1000;
  }
  c->c.key = &c->key;
  c->c.scope = &c->scope;
  c->c.version = &c->v;
}

/* ---- sockets ----------------------------------------------------------- */

static long long now_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void loopback(struct sockaddr_in *a, int port) {
  memset(a, 0, sizeof(*a));
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

int fz_listen(int *port) {
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;

  FZ_CHECK(fd >= 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  loopback(&a, *port);
  if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &alen) != 0) {
    close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

int fz_dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;

  FZ_CHECK(fd >= 0);
  loopback(&a, port);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  FZ_CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
  return fd;
}

int fz_send(int fd, const void *p, size_t n) {
  const uint8_t *b = p;
  long long deadline = now_ms() + FZ_WAIT_MS;

  while (n > 0) {
    ssize_t w = send(fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);

    if (w > 0) {
      b += w;
      n -= (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd pf = {fd, POLLOUT, 0};
      long long left = deadline - now_ms();

      if (left <= 0)
        fz_fail("the peer took no bytes for %d ms", FZ_WAIT_MS);
      (void)poll(&pf, 1, (int)left);
      continue;
    }
    return -1; /* EPIPE, ECONNRESET: the peer has gone */
  }
  return 0;
}

void fz_reader_init(struct fz_reader *r, int fd, uint32_t max_frame) {
  memset(r, 0, sizeof(*r));
  r->fd = fd;
  fsp_frame_decoder_init(&r->dec, max_frame);
}

void fz_reader_close(struct fz_reader *r) {
  fsp_frame_decoder_close(&r->dec);
}

int fz_reader_next(struct fz_reader *r, int wait_ms, uint8_t **body,
                   size_t *len) {
  long long deadline = now_ms() + wait_ms;

  for (;;) {
    struct pollfd pf = {r->fd, POLLIN, 0};
    long long left;
    ssize_t got;

    while (r->off < r->len) {
      size_t used = 0;
      int rc = fsp_frame_feed(&r->dec, r->buf + r->off, r->len - r->off, &used);

      r->off += used;
      if (rc < 0)
        return -2;
      if (rc == 1) {
        fsp_frame_take(&r->dec, body, len);
        return 1;
      }
    }
    if (r->eof)
      return 0;
    left = deadline - now_ms();
    if (left <= 0)
      return -1;
    if (poll(&pf, 1, (int)left) <= 0)
      continue;
    got = recv(r->fd, r->buf, sizeof(r->buf), 0);
    if (got < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    r->off = 0;
    r->len = got > 0 ? (size_t)got : 0;
    if (got <= 0)
      r->eof = true; /* closed or reset */
  }
}
