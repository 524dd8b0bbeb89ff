/* SPDX-License-Identifier: MIT */
/* The client side of a sync session (PROTOCOL.md "Session", "Push
 * Semantics", "Pull Semantics", "Scopes"): connect, Hello/Welcome, push
 * every unacknowledged local version in batches (refusals are marked),
 * pull the server's feed and backfills with the held scopes, Bye; a
 * revoked device quarantines its unacknowledged work and wipes the rest.
 * Bytes (fsc_tls: TLS, or plain TCP when asked for) -> frames (fsp_frame)
 * -> messages (fsp_msg) -> the store's sync slots (fsc_store_*) are
 * separate steps. Also the asynchronous form, which runs one sync on a
 * thread of its own. */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fsc_int.h"
#include "fsc_os.h"
#include "fsc_tls.h"
#include "fsp_frame.h"

#define SYNC_DEFAULT_TIMEOUT_MS 30000
#define SYNC_DEFAULT_BATCH 1000u
/* Bytes read from the transport at a time (one TLS record's worth). */
#define SYNC_RX_CHUNK 16384u
/* Hex digits of opts->pin_sha256. */
#define SYNC_PIN_HEX 64u
#define SYNC_HOST_MAX 255u
/* Bytes a Push frame body holds besides its changes: the envelope's
 * protocol_version (2), the push field's tag and length (1 + 5) and the
 * batch_id (1 + 10), rounded up. */
#define SYNC_PUSH_OVERHEAD 32u
/* Backfills one session may begin (a continued one counts once): twice the
 * scopes a replica may hold, so a legitimate session never meets it. */
#define SYNC_MAX_BACKFILLS (2u * FSP_MAX_HELD_SCOPES)

/* One session's state. */
struct sync {
  fieldsync_db *db;
  const struct fieldsync_sync_opts *opts;
  struct fieldsync_sync_stats *st;
  char host[SYNC_HOST_MAX + 1];
  uint16_t port;
  int timeout_ms;
  struct fsc_tls *net; /* the connection (TLS or plain TCP) */
  struct fsp_frame_decoder dec;
  uint8_t *rbuf; /* bytes received and not yet fed to dec: [roff, rlen) */
  size_t rlen;
  size_t roff;
  struct fsp_limits rx; /* what we accept from the server */
  struct fsp_limits tx; /* what the server accepts: its Welcome limits */
  size_t batch;         /* versions per Push and per Pull */
  uint64_t batch_id;    /* of the last Push sent */
  size_t push_done;     /* versions handled by the push phase so far */
  /* Backfills in this session: the scope of the last backfill page, and
   * whether it was unfinished (the next page may continue it). */
  struct fsc_scope bf_cur;
  bool bf_open;
  size_t bf_begun;   /* backfills begun, for SYNC_MAX_BACKFILLS */
  char revoked[256]; /* ERR_REVOKED's message, when the server sent it */
};

/* A Change built from an outgoing version; it points into the version. */
struct wire {
  Fieldsync__Change c;
  Fieldsync__RecordKey k;
  Fieldsync__ScopeKey sc;
  Fieldsync__Version v;
};

/* A pushed batch: wire changes plus, per outgoing version, why it was not
 * sent (NULL: it was). */
struct batch {
  struct wire *w;
  Fieldsync__Change **cp; /* the changes sent, in order */
  size_t *idx;            /* cp[j] is outgoing version idx[j] */
  char **why;             /* fsp_strdup'd reasons for unsent versions */
  Fieldsync__VvEntry *e;
  Fieldsync__VvEntry **ep;
  size_t n; /* outgoing versions looked at */
  size_t k; /* changes sent */
};

/* ---- messages ---------------------------------------------------------- */

/* Makes text from the network safe to show: control bytes become '?', and
 * a UTF-8 sequence cut short by truncation is dropped. */
static void sanitize(char *s) {
  size_t n = strlen(s);
  size_t i;
  size_t k = 0;

  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f)
      s[i] = '?';
  while (k < n && k < 3 && ((unsigned char)s[n - 1 - k] & 0xc0) == 0x80)
    k++;
  if (k < n) {
    unsigned char lead = (unsigned char)s[n - 1 - k];
    size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (want > k + 1)
      s[n - 1 - k] = '\0';
  }
}

/* The wire name of an ErrorCode, e.g. "ERR_FORBIDDEN". */
static const char *wire_code_name(int code) {
  return fsc_wire_code_name(code);
}

static const char *outcome_name(Fieldsync__Outcome o) {
  switch (o) {
  case FIELDSYNC__OUTCOME__OUTCOME_APPLIED:
    return "applied";
  case FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN:
    return "already_known";
  case FIELDSYNC__OUTCOME__OUTCOME_CONFLICT:
    return "conflict";
  case FIELDSYNC__OUTCOME__OUTCOME_STALE:
    return "stale";
  default:
    return "refused";
  }
}

/* Encodes env and sends it. Records no message: returns 0, an encoding
 * failure as FIELDSYNC_ENOMEM or FIELDSYNC_EINTERNAL, or
 * fsc_tls_send_all's code. */
static int send_frame(struct sync *s, Fieldsync__Envelope *env) {
  uint8_t *buf;
  size_t len;
  int rc = fsp_msg_encode_frame(env, s->tx.max_frame, &buf, &len);

  if (rc != 0)
    return rc == FSP_ENOMEM ? FIELDSYNC_ENOMEM : FIELDSYNC_EINTERNAL;
  rc = fsc_tls_send_all(s->net, buf, len, s->timeout_ms);
  fsp_free(buf);
  return rc;
}

/* Records a network failure (FIELDSYNC_ENETWORK, FIELDSYNC_ETIMEOUT or
 * FIELDSYNC_ETLS) while doing `what` and returns its code. */
static int net_fail(struct sync *s, int rc, const char *what) {
  if (rc == FIELDSYNC_ETLS)
    return fsc_err(s->db, rc, "TLS with %s: %s (while %s)", s->opts->server,
                   fsc_tls_errmsg(s->net), what);
  if (rc == FIELDSYNC_ETIMEOUT)
    return fsc_err(s->db, rc, "no progress with %s within %d ms while %s",
                   s->opts->server, s->timeout_ms, what);
  if (rc == FIELDSYNC_ENETWORK)
    return fsc_err(s->db, rc, "lost the connection to %s while %s",
                   s->opts->server, what);
  if (rc == FIELDSYNC_ENOMEM)
    return fsc_err(s->db, rc, "out of memory while %s", what);
  return fsc_err(s->db, rc, "cannot encode a message while %s", what);
}

/* Records that the server broke the protocol, tells it why (best effort:
 * PROTOCOL.md says the receiver SHOULD send an Error before it closes) and
 * returns FIELDSYNC_EPROTOCOL. wire is the ErrorCode to send. */
static int proto_fail(struct sync *s, int wire, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static int proto_fail(struct sync *s, int wire, const char *fmt, ...) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Error e = FIELDSYNC__ERROR__INIT;
  char msg[300];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  sanitize(msg);
  fsc_err(s->db, FIELDSYNC_EPROTOCOL, "server %s broke the protocol: %s",
          s->opts->server, msg);
  e.has_code = 1;
  e.code = (Fieldsync__ErrorCode)wire;
  e.message = msg;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_ERROR;
  env.error = &e;
  (void)send_frame(s, &env);
  return FIELDSYNC_EPROTOCOL;
}

/* Turns an Error from the server into FIELDSYNC_EAUTH, FIELDSYNC_EREVOKED
 * (its message kept in s->revoked for the wipe that follows) or
 * FIELDSYNC_ESERVER with "server: ERR_<CODE>: <message>". */
static int server_error(struct sync *s, const Fieldsync__Error *e) {
  int code =
      e->code == FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED ? FIELDSYNC_EAUTH
      : e->code == FIELDSYNC__ERROR_CODE__ERR_REVOKED       ? FIELDSYNC_EREVOKED
                                                            : FIELDSYNC_ESERVER;

  if (code == FIELDSYNC_EREVOKED) {
    snprintf(s->revoked, sizeof(s->revoked), "%s",
             e->message != NULL ? e->message : "");
    sanitize(s->revoked);
  }

  if (e->message != NULL && e->message[0] != '\0')
    fsc_err(s->db, code, "server: %s: %s", wire_code_name((int)e->code),
            e->message);
  else
    fsc_err(s->db, code, "server: %s", wire_code_name((int)e->code));
  sanitize(s->db->errmsg);
  return code;
}

/* After a failed send: a server that ends a session sends an Error and
 * closes, and the close can break our send before we read its reason. If
 * an Error already sits in the socket, returns its FIELDSYNC_EAUTH or
 * FIELDSYNC_ESERVER (message recorded); otherwise 0. */
static int salvage_error(struct sync *s) {
  struct fsp_error err;
  struct fsp_msg m;
  uint8_t *body;
  size_t len;
  int rc;

  for (;;) {
    size_t used = 0;
    size_t got = 0;

    rc = fsp_frame_feed(&s->dec, s->rbuf + s->roff, s->rlen - s->roff, &used);
    s->roff += used;
    if (rc == 1)
      break;
    if (rc < 0)
      return 0;
    s->roff = 0;
    s->rlen = 0;
    /* The peer is gone, so this returns at once unless bytes are late. */
    if (fsc_tls_recv(s->net, s->rbuf, SYNC_RX_CHUNK, 100, &got) != 0 ||
        got == 0)
      return 0;
    s->rlen = got;
  }
  fsp_frame_take(&s->dec, &body, &len);
  rc = fsp_msg_decode(&m, body, len, &s->rx, &err);
  fsp_free(body);
  if (rc != 0)
    return 0;
  rc = m.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
           ? server_error(s, m.env->error)
           : 0;
  fsp_msg_close(&m);
  return rc;
}

/* Sends env, recording a clear message on failure (the server's own
 * reason when it sent one before it hung up). */
static int send_env(struct sync *s, Fieldsync__Envelope *env,
                    const char *what) {
  int rc = send_frame(s, env);

  if (rc == FIELDSYNC_ENETWORK) {
    int why = salvage_error(s);
    if (why != 0)
      return why;
  }
  return rc == 0 ? 0 : net_fail(s, rc, what);
}

/* Reports a failed fsp_frame_feed. */
static int frame_fail(struct sync *s, int rc, const char *what) {
  if (rc == FSP_ENOMEM)
    return fsc_err(s->db, FIELDSYNC_ENOMEM, "out of memory receiving %s", what);
  if (rc == FSP_EFRAME_TOO_BIG)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE,
                      "frame: longer than the limit of %u bytes (awaiting "
                      "%s)",
                      s->rx.max_frame, what);
  return proto_fail(s, fsp_err_to_wire(rc), "frame: %s (awaiting %s)",
                    fsp_err_strerror(rc), what);
}

/* Receives one message: reads until the decoder holds a whole frame, then
 * decodes and validates it (fsp_msg_decode). An Error from the server
 * becomes FIELDSYNC_EAUTH or FIELDSYNC_ESERVER, and any body other than
 * want FIELDSYNC_EPROTOCOL. what names the awaited message. On 0 the
 * caller releases m with fsp_msg_close; on failure m holds nothing. */
static int recv_msg(struct sync *s, Fieldsync__Envelope__BodyCase want,
                    const char *what, struct fsp_msg *m) {
  struct fsp_error err;
  char doing[64];
  uint8_t *body;
  size_t len;
  int rc;

  m->env = NULL;
  for (;;) {
    size_t used = 0;
    size_t got = 0;

    rc = fsp_frame_feed(&s->dec, s->rbuf + s->roff, s->rlen - s->roff, &used);
    s->roff += used;
    if (rc == 1)
      break;
    if (rc < 0)
      return frame_fail(s, rc, what);
    s->roff = 0;
    s->rlen = 0;
    rc = fsc_tls_recv(s->net, s->rbuf, SYNC_RX_CHUNK, s->timeout_ms, &got);
    if (rc != 0) {
      snprintf(doing, sizeof(doing), "awaiting %s", what);
      return net_fail(s, rc, doing);
    }
    if (got == 0 && s->opts->plaintext && strcmp(what, "welcome") == 0 &&
        fsp_frame_finish(&s->dec) != FSP_ETRUNCATED) {
      /* A plaintext fieldsyncd answers a bad Hello with an Error; a TLS
       * one cannot, and just hangs up. */
      return fsc_err(s->db, FIELDSYNC_ENETWORK,
                     "server %s closed the connection before sending "
                     "welcome (if it serves TLS, sync with TLS rather than "
                     "plaintext)",
                     s->opts->server);
    }
    if (got == 0) {
      /* A truncated frame is ERR_MALFORMED on the wire, but the peer has
       * gone, so for the caller it is a lost connection. */
      return fsc_err(s->db, FIELDSYNC_ENETWORK,
                     "server %s closed the connection %s %s", s->opts->server,
                     fsp_frame_finish(&s->dec) == FSP_ETRUNCATED
                         ? "in the middle of"
                         : "before sending",
                     what);
    }
    s->rlen = got;
  }
  fsp_frame_take(&s->dec, &body, &len);
  rc = fsp_msg_decode(m, body, len, &s->rx, &err);
  fsp_free(body);
  if (rc == FSP_ENOMEM)
    return fsc_err(s->db, FIELDSYNC_ENOMEM, "out of memory decoding %s", what);
  if (rc != 0)
    return proto_fail(s, fsp_err_to_wire(rc), "%s", err.msg);
  if (m->env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR) {
    rc = server_error(s, m->env->error);
    fsp_msg_close(m);
    return rc;
  }
  if (m->env->body_case != want) {
    char got_name[16];
    snprintf(got_name, sizeof(got_name), "%s", fsp_msg_body_name(m->env));
    fsp_msg_close(m);
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE,
                      "expected %s, got %s", what, got_name);
  }
  return 0;
}

/* ---- handshake --------------------------------------------------------- */

/* Takes one announced limit: absent keeps the default; a server MUST NOT
 * announce more than the default, so a larger value also keeps it; zero
 * would make every message impossible and is refused. */
static int take_limit(struct sync *s, const char *name, bool has,
                      uint32_t value, uint32_t *limit) {
  if (!has)
    return 0;
  if (value == 0)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "welcome.limits.%s: zero", name);
  if (value < *limit)
    *limit = value;
  return 0;
}

/* Adopts the limits of a Welcome for the rest of the session. */
static int adopt_limits(struct sync *s, const Fieldsync__Limits *l) {
  unsigned want = s->opts->batch != 0 ? s->opts->batch : SYNC_DEFAULT_BATCH;
  int rc = 0;

  fsp_limits_default(&s->tx);
  if (l != NULL) {
    rc = take_limit(s, "max_frame_bytes", l->has_max_frame_bytes,
                    l->max_frame_bytes, &s->tx.max_frame);
    if (rc == 0)
      rc = take_limit(s, "max_batch_records", l->has_max_batch_records,
                      l->max_batch_records, &s->tx.max_batch);
    if (rc == 0)
      rc = take_limit(s, "max_vv_entries", l->has_max_vv_entries,
                      l->max_vv_entries, &s->tx.max_vv);
    if (rc == 0)
      rc = take_limit(s, "max_payload_bytes", l->has_max_payload_bytes,
                      l->max_payload_bytes, &s->tx.max_payload);
    if (rc != 0)
      return rc;
  }
  s->tx.budget = (size_t)s->tx.max_frame * 8u + 64u * 1024u;
  /* Both sides decode with the session's limits (PROTOCOL.md "Limits"). */
  fsp_limits_default(&s->rx);
  s->rx.max_frame = s->tx.max_frame;
  s->rx.budget = s->tx.budget;
  /* The decoder sits between frames (Welcome was taken), so it can be
   * reset to the new frame limit without losing bytes: unfed ones stay in
   * rbuf. */
  fsp_frame_decoder_close(&s->dec);
  fsp_frame_decoder_init(&s->dec, s->rx.max_frame);
  s->batch = want < s->tx.max_batch ? want : s->tx.max_batch;
  return 0;
}

/* Hello, then Welcome (adopting its limits) or the server's Error. */
static int handshake(struct sync *s) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello hello = FIELDSYNC__HELLO__INIT;
  struct fsp_msg m;
  char version[32];
  int rc;

  snprintf(version, sizeof(version), "fieldsync/%s",
           fieldsync_version_string());
  hello.has_protocol_version = 1;
  hello.protocol_version = FSP_PROTOCOL_VERSION;
  hello.has_replica_id = 1;
  hello.replica_id.data = s->db->replica;
  hello.replica_id.len = FSP_ID_LEN;
  /* protobuf-c's string fields are not const; packing only reads them. */
  hello.device_token = (char *)s->opts->token;
  hello.client_version = version;
  env.has_protocol_version = 1;
  env.protocol_version = FSP_PROTOCOL_VERSION;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
  env.hello = &hello;
  rc = send_env(s, &env, "sending Hello");
  if (rc != 0)
    return rc;
  rc = recv_msg(s, FIELDSYNC__ENVELOPE__BODY_WELCOME, "welcome", &m);
  if (rc != 0)
    return rc;
  rc = adopt_limits(s, m.env->welcome->limits);
  if (rc == 0)
    rc = fsc_store_server(s->db, m.env->welcome->server_id.data);
  fsp_msg_close(&m);
  return rc;
}

/* ---- push -------------------------------------------------------------- */

static size_t varint_len(size_t v) {
  size_t n = 1;

  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

/* Fills w from an outgoing version (as relay() in test_client.c does, but
 * without a seq, which only the server sets). vv entries go to e/ep. */
static void to_wire(const struct fsc_outgoing *o, struct wire *w,
                    Fieldsync__VvEntry *e, Fieldsync__VvEntry **ep) {
  static uint8_t empty[1];

  fieldsync__change__init(&w->c);
  fieldsync__record_key__init(&w->k);
  fieldsync__scope_key__init(&w->sc);
  fieldsync__version__init(&w->v);
  w->k.has_collection = 1;
  w->k.collection = (Fieldsync__Collection)o->collection;
  w->k.has_id = 1;
  w->k.id.data = (uint8_t *)o->id;
  w->k.id.len = FSP_ID_LEN;
  w->sc.has_kind = 1;
  w->sc.kind = (Fieldsync__ScopeKind)o->scope_kind;
  w->sc.has_id = 1;
  w->sc.id.data = (uint8_t *)o->scope_id;
  w->sc.id.len = FSP_ID_LEN;
  fsp_msg_vv_to_pb(&o->v.vv, e, ep);
  w->v.n_vv = o->v.vv.n;
  w->v.vv = ep;
  if (o->v.deleted) {
    w->v.has_deleted = 1;
    w->v.deleted = 1; /* a tombstone carries no payload */
  } else {
    w->v.has_payload = 1;
    w->v.payload.data = o->v.payload != NULL ? o->v.payload : empty;
    w->v.payload.len = o->v.len;
  }
  w->v.has_hash = 1;
  w->v.hash.data = (uint8_t *)o->v.hash;
  w->v.hash.len = FSP_HASH_LEN;
  w->v.author = o->v.author;
  if (o->v.time_ms != 0) {
    w->v.has_device_time_ms = 1;
    w->v.device_time_ms = o->v.time_ms;
  }
  w->c.key = &w->k;
  w->c.scope = &w->sc;
  w->c.version = &w->v;
}

static void batch_close(struct batch *b) {
  size_t i;

  if (b->why != NULL)
    for (i = 0; i < b->n; i++)
      fsp_free(b->why[i]);
  fsp_free(b->why);
  fsp_free(b->w);
  fsp_free(b->cp);
  fsp_free(b->idx);
  fsp_free(b->e);
  fsp_free(b->ep);
  memset(b, 0, sizeof(*b));
}

/* Marks outgoing version i as not sent, for why. 0 or FIELDSYNC_ENOMEM. */
static int hold_back(struct sync *s, struct batch *b, size_t i,
                     const char *why) {
  b->why[i] = fsp_strdup(why);
  return b->why[i] != NULL ? 0
                           : fsc_err(s->db, FIELDSYNC_ENOMEM, "out of memory");
}

/* Builds the next Push from o[0..n): wire changes in order, as many as fit
 * in the server's frame limit. A version the server could not take (over
 * its vv or payload limits, or alone larger than a frame) is held back with
 * a reason. Sets b->n to the versions looked at (sent or held back), which
 * is at least 1. */
static int build_batch(struct sync *s, const struct fsc_outgoing *o, size_t n,
                       struct batch *b) {
  size_t size = SYNC_PUSH_OVERHEAD;
  size_t nvv = 1;
  size_t i;
  int rc;

  memset(b, 0, sizeof(*b));
  for (i = 0; i < n; i++)
    nvv += o[i].v.vv.n;
  b->w = fsp_calloc(n, sizeof(*b->w));
  b->cp = fsp_calloc(n, sizeof(*b->cp));
  b->idx = fsp_calloc(n, sizeof(*b->idx));
  b->why = fsp_calloc(n, sizeof(*b->why));
  b->e = fsp_calloc(nvv, sizeof(*b->e));
  b->ep = fsp_calloc(nvv, sizeof(*b->ep));
  if (b->w == NULL || b->cp == NULL || b->idx == NULL || b->why == NULL ||
      b->e == NULL || b->ep == NULL)
    return fsc_err(s->db, FIELDSYNC_ENOMEM, "out of memory");
  b->n = n;
  nvv = 0;
  for (i = 0; i < n; i++) {
    struct fsp_error err;
    size_t csz;
    char why[256];

    to_wire(&o[i], &b->w[i], b->e + nvv, b->ep + nvv);
    nvv += o[i].v.vv.n;
    if (fsp_msg_validate_change(&b->w[i].c, &s->tx, false, "change", &err) !=
        0) {
      snprintf(why, sizeof(why), "not sent: %s", err.msg);
      rc = hold_back(s, b, i, why);
      if (rc != 0)
        return rc;
      continue;
    }
    csz = fieldsync__change__get_packed_size(&b->w[i].c);
    csz += 1 + varint_len(csz); /* the field's tag and length */
    if (SYNC_PUSH_OVERHEAD + csz > s->tx.max_frame) {
      snprintf(why, sizeof(why),
               "not sent: %zu bytes encoded, over the server's frame limit "
               "of %u bytes",
               csz, s->tx.max_frame);
      rc = hold_back(s, b, i, why);
      if (rc != 0)
        return rc;
      continue;
    }
    if (size + csz > s->tx.max_frame)
      break; /* the rest goes in the next Push */
    size += csz;
    b->idx[b->k] = i;
    b->cp[b->k++] = &b->w[i].c;
  }
  /* The first version always fits a frame or is held back. */
  assert(i > 0);
  b->n = i;
  return 0;
}

/* Tells the caller what became of outgoing version o. */
static void report(struct sync *s, const struct fsc_outgoing *o,
                   const char *outcome, const char *reason) {
  const struct fsp_collection *col;
  char hex[2 * FSP_ID_LEN + 1];

  if (s->opts->outcome == NULL)
    return;
  col = fsp_payload_by_id(o->collection);
  fsc_hex(o->id, FSP_ID_LEN, hex);
  s->opts->outcome(col != NULL ? col->name : "unknown", hex, outcome, reason,
                   s->opts->outcome_data);
}

/* Checks that a PushAck answers the Push of b: the same batch_id, and one
 * outcome per change, in order, naming the change's key and hash. */
static int check_ack(struct sync *s, const struct batch *b,
                     const Fieldsync__PushAck *a) {
  size_t j;

  if (a->batch_id != s->batch_id)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "push_ack.batch_id: %llu, the Push had %llu",
                      (unsigned long long)a->batch_id,
                      (unsigned long long)s->batch_id);
  if (a->n_outcomes != b->k)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "push_ack: %zu outcomes for %zu pushed changes",
                      a->n_outcomes, b->k);
  for (j = 0; j < b->k; j++) {
    const Fieldsync__RecordOutcome *r = a->outcomes[j];
    const struct wire *w = &b->w[b->idx[j]];

    /* fsp_msg checked that the key id has 16 bytes and the hash 32. */
    if (r->key->collection != w->k.collection ||
        memcmp(r->key->id.data, w->k.id.data, FSP_ID_LEN) != 0 ||
        memcmp(r->hash.data, w->v.hash.data, FSP_HASH_LEN) != 0)
      return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                        "push_ack.outcomes[%zu]: key or hash differs from "
                        "push.changes[%zu]",
                        j, j);
  }
  return 0;
}

/* Sends the Push of b (unless every version was held back), waits for its
 * PushAck, records in one transaction every version not refused as
 * acknowledged and every refused one as refused, and only then reports
 * the outcomes, in the order the versions were made. Held-back versions
 * stay pending, unmarked. */
static int push_batch(struct sync *s, const struct fsc_outgoing *o,
                      const struct batch *b) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Push push = FIELDSYNC__PUSH__INIT;
  const Fieldsync__PushAck *a = NULL;
  struct fsc_ack *acks = NULL;
  struct fsc_refusal *refs = NULL;
  struct fsp_msg m;
  char reason[FSP_DEFAULT_MAX_STRING + 64];
  size_t nack = 0;
  size_t nref = 0;
  size_t i;
  size_t j;
  int rc = 0;

  m.env = NULL;
  if (b->k > 0) {
    push.has_batch_id = 1;
    push.batch_id = ++s->batch_id;
    push.n_changes = b->k;
    push.changes = b->cp;
    env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH;
    env.push = &push;
    rc = send_env(s, &env, "sending Push");
    if (rc != 0)
      goto done;
    rc = recv_msg(s, FIELDSYNC__ENVELOPE__BODY_PUSH_ACK, "push_ack", &m);
    if (rc != 0)
      goto done;
    a = m.env->push_ack;
    rc = check_ack(s, b, a);
    if (rc != 0)
      goto done;
    acks = fsp_malloc(b->k * sizeof(*acks));
    refs = fsp_malloc(b->k * sizeof(*refs));
    if (acks == NULL || refs == NULL) {
      rc = fsc_err(s->db, FIELDSYNC_ENOMEM, "out of memory");
      goto done;
    }
    for (j = 0; j < b->k; j++) {
      const Fieldsync__RecordOutcome *r = a->outcomes[j];
      const struct fsc_outgoing *x = &o[b->idx[j]];

      if (r->outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED) {
        /* fsp_msg checked that a refusal has a known reason_code. */
        memcpy(refs[nref].id, x->id, FSP_ID_LEN);
        memcpy(refs[nref].hash, x->v.hash, FSP_HASH_LEN);
        refs[nref].pending = x->v.pending;
        refs[nref].code = (int)r->reason_code;
        refs[nref].reason = r->reason;
        nref++;
        continue;
      }
      memcpy(acks[nack].id, x->id, FSP_ID_LEN);
      memcpy(acks[nack].hash, x->v.hash, FSP_HASH_LEN);
      acks[nack].pending = x->v.pending;
      nack++;
    }
    rc = fsc_store_answer(s->db, acks, nack, refs, nref);
    if (rc != 0)
      goto done;
    s->st->pushed += b->k;
    s->st->acked += nack;
  }
  for (i = 0, j = 0; i < b->n; i++) {
    const Fieldsync__RecordOutcome *r;

    if (b->why[i] != NULL) {
      s->st->refused++;
      report(s, &o[i], "refused", b->why[i]);
      continue;
    }
    assert(a != NULL && j < a->n_outcomes);
    r = a->outcomes[j++];
    if (r->outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED) {
      s->st->refused++;
      if (r->reason != NULL && r->reason[0] != '\0')
        snprintf(reason, sizeof(reason), "%s: %s",
                 wire_code_name((int)r->reason_code), r->reason);
      else
        snprintf(reason, sizeof(reason), "%s",
                 wire_code_name((int)r->reason_code));
      report(s, &o[i], "refused", reason);
      continue;
    }
    if (r->outcome == FIELDSYNC__OUTCOME__OUTCOME_CONFLICT)
      s->st->conflicts++;
    report(s, &o[i], outcome_name(r->outcome),
           r->outcome == FIELDSYNC__OUTCOME__OUTCOME_CONFLICT &&
                   r->reason != NULL && r->reason[0] != '\0'
               ? r->reason
               : NULL);
  }
  s->push_done += b->n;
  if (s->opts->progress != NULL)
    s->opts->progress("push", s->push_done, 0, s->opts->progress_data);
done:
  fsp_free(acks);
  fsp_free(refs);
  fsp_msg_close(&m);
  return rc;
}

/* Pushes every pending version, batch by batch, in the order they were
 * made. Versions the server refused are marked and no longer offered;
 * `last` moves past each batch, so versions held back (too large for the
 * server, which stay pending unmarked) are not offered twice in one
 * session either. */
static int push_all(struct sync *s) {
  int64_t last = 0;

  for (;;) {
    struct fsc_outgoing *o = NULL;
    struct batch b;
    size_t n = 0;
    int rc = fsc_store_outgoing(s->db, last, s->batch, &o, &n);

    if (rc != 0)
      return rc;
    if (n == 0) {
      fsc_outgoing_free(o, n);
      return 0;
    }
    rc = build_batch(s, o, n, &b);
    if (rc == 0)
      rc = push_batch(s, o, &b);
    if (rc == 0) {
      /* The queue is read in pending order, so `last` must move on; a
       * damaged pending column (a value that is not an integer) would
       * offer the same versions for ever. */
      if (o[b.n - 1].v.pending <= last)
        rc = fsc_err(s->db, FIELDSYNC_ECORRUPT,
                     "the upload queue is damaged: pending order does not "
                     "advance");
      else
        last = o[b.n - 1].v.pending;
    }
    batch_close(&b);
    fsc_outgoing_free(o, n);
    if (rc != 0)
      return rc;
  }
}

/* ---- pull -------------------------------------------------------------- */

/* What one Pull carries besides its cursor: the held scopes (sorted, as
 * the protocol requires) and the stored backfill position, as wire
 * messages pointing into held and bf. */
struct pull_req {
  struct fsc_scope *held; /* fsp_malloc'd */
  size_t nheld;
  Fieldsync__ScopeKey *keys;
  Fieldsync__ScopeKey **kp;
  Fieldsync__ScopeKey bfkey;
  struct fsc_backfill bf;
};

static void scope_to_pb(const struct fsc_scope *sc, Fieldsync__ScopeKey *k) {
  fieldsync__scope_key__init(k);
  k->has_kind = 1;
  k->kind = (Fieldsync__ScopeKind)sc->kind;
  k->has_id = 1;
  k->id.data = (uint8_t *)sc->id;
  k->id.len = FSP_ID_LEN;
}

static bool scope_eq(const struct fsc_scope *a, const struct fsc_scope *b) {
  return a->kind == b->kind && memcmp(a->id, b->id, FSP_ID_LEN) == 0;
}

/* "visit 0194...", for messages. */
static void scope_text(const Fieldsync__ScopeKey *k, char *out, size_t cap) {
  char hex[2 * FSP_ID_LEN + 1];

  fsc_hex(k->id.data, FSP_ID_LEN, hex);
  if (k->kind == FIELDSYNC__SCOPE_KIND__SCOPE_VISIT)
    snprintf(out, cap, "visit %s", hex);
  else if (k->kind == FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE)
    snprintf(out, cap, "service %s", hex);
  else
    snprintf(out, cap, "scope %d:%s", (int)k->kind, hex);
}

static void pull_req_close(struct pull_req *p) {
  fsp_free(p->held);
  fsp_free(p->keys);
  fsp_free(p->kp);
  memset(p, 0, sizeof(*p));
}

/* Loads the held scopes and the backfill position and fills pull with
 * them (and the cursor and batch size). */
static int pull_req_init(struct sync *s, struct pull_req *p, uint64_t cursor,
                         Fieldsync__Pull *pull) {
  size_t i;
  int rc;

  memset(p, 0, sizeof(*p));
  rc = fsc_scope_held(s->db, &p->held, &p->nheld);
  if (rc == 0)
    rc = fsc_scope_backfill(s->db, &p->bf);
  if (rc != 0)
    return rc;
  /* fsc_scope_hold never lets the set grow past the limit. */
  assert(p->nheld <= FSP_MAX_HELD_SCOPES);
  if (p->nheld > 0) {
    p->keys = fsp_calloc(p->nheld, sizeof(*p->keys));
    p->kp = fsp_calloc(p->nheld, sizeof(*p->kp));
    if (p->keys == NULL || p->kp == NULL)
      return fsc_err(s->db, FIELDSYNC_ENOMEM, "out of memory");
  }
  for (i = 0; i < p->nheld; i++) {
    scope_to_pb(&p->held[i], &p->keys[i]);
    p->kp[i] = &p->keys[i];
    assert(i == 0 || fsp_scope_cmp(p->held[i - 1].kind, p->held[i - 1].id,
                                   p->held[i].kind, p->held[i].id) < 0);
  }
  fieldsync__pull__init(pull);
  pull->has_cursor = 1;
  pull->cursor = cursor;
  pull->has_max_records = 1;
  pull->max_records = (uint32_t)s->batch;
  pull->n_held_scopes = p->nheld;
  pull->held_scopes = p->kp;
  if (p->bf.active) {
    scope_to_pb(&p->bf.scope, &p->bfkey);
    pull->backfill_scope = &p->bfkey;
    pull->has_backfill_after = 1;
    pull->backfill_after = p->bf.after;
  }
  return 0;
}

/* Checks one Changes against the Pull p that asked for it (fsp_msg has
 * validated each field on its own). Every answer that asks for another
 * Pull (more) must make progress, or a server could keep us pulling
 * forever: a feed page moves the cursor; a backfill page finishes its
 * scope or moves backfill_next past the position the Pull sent (0 for a
 * scope other than the stored one); and one session begins at most
 * SYNC_MAX_BACKFILLS backfills. *cont is set when the page continues this
 * session's unfinished backfill. */
static int check_changes(struct sync *s, const Fieldsync__Changes *ch,
                         uint64_t cursor, const struct pull_req *p,
                         bool *cont) {
  bool more = ch->has_more && ch->more;
  bool done = ch->has_backfill_done && ch->backfill_done;
  struct fsc_scope sc;
  char what[80];
  uint64_t prev;

  *cont = false;
  if (ch->n_changes > s->batch)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "changes: %zu changes, the Pull asked for at most %zu",
                      ch->n_changes, s->batch);
  if (ch->next_cursor < cursor)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "changes.next_cursor: %llu, behind the cursor %llu",
                      (unsigned long long)ch->next_cursor,
                      (unsigned long long)cursor);
  if (ch->backfill_scope == NULL) {
    if (more && ch->next_cursor == cursor)
      return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                        "changes: more is set, but next_cursor did not move "
                        "from %llu",
                        (unsigned long long)cursor);
    return 0;
  }
  scope_text(ch->backfill_scope, what, sizeof(what));
  sc.kind = (int)ch->backfill_scope->kind;
  memcpy(sc.id, ch->backfill_scope->id.data, FSP_ID_LEN);
  if (ch->next_cursor != cursor)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "changes.next_cursor: %llu in a backfill of %s, not "
                      "the Pull's cursor %llu",
                      (unsigned long long)ch->next_cursor, what,
                      (unsigned long long)cursor);
  if (!done && !ch->has_backfill_next)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "changes.backfill_next: missing in an unfinished "
                      "backfill of %s",
                      what);
  *cont = s->bf_open && scope_eq(&s->bf_cur, &sc);
  if (!*cont && s->bf_begun >= SYNC_MAX_BACKFILLS)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_LIMIT_EXCEEDED,
                      "changes: a backfill of %s, but %u backfills began in "
                      "this session already",
                      what, SYNC_MAX_BACKFILLS);
  prev = p->bf.active && scope_eq(&p->bf.scope, &sc) ? p->bf.after : 0;
  if (more && !done && ch->backfill_next <= prev)
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID,
                      "changes: more is set, but the backfill of %s did not "
                      "advance (backfill_next %llu, position %llu)",
                      what, (unsigned long long)ch->backfill_next,
                      (unsigned long long)prev);
  return 0;
}

/* Checks one Changes and applies it (removals, changes, backfill state or
 * next_cursor) in one transaction. *cursor moves on success. */
static int apply_changes(struct sync *s, const Fieldsync__Changes *ch,
                         const struct pull_req *p, uint64_t *cursor) {
  struct fsc_apply_stats ast;
  bool cont;
  int rc = check_changes(s, ch, *cursor, p, &cont);

  if (rc != 0)
    return rc;
  if (ch->n_changes == 0 && ch->n_removed_scopes == 0 &&
      ch->backfill_scope == NULL && ch->next_cursor == *cursor && !p->bf.active)
    return 0; /* nothing new: no transaction needed */
  rc = fsc_store_apply_changes(s->db, ch, &ast);
  if (rc == FIELDSYNC_EVALUE) {
    /* fsp_msg validated the envelope, but a payload failed its
     * collection's rules, a change contradicts a stored record, or the
     * held scopes would pass their limit: the server sent data it should
     * not have. Nothing of the batch is kept. */
    char why[sizeof(s->db->errmsg)];
    snprintf(why, sizeof(why), "%s", s->db->errmsg);
    return proto_fail(s, FIELDSYNC__ERROR_CODE__ERR_INVALID, "changes: %s",
                      why);
  }
  if (rc != 0)
    return rc;
  s->st->pulled += ch->n_changes;
  s->st->applied += ast.applied;
  s->st->pull_conflicts += ast.conflicts;
  s->st->removed += ast.removed;
  s->st->quarantined += ast.quarantined;
  if (ch->backfill_scope != NULL) {
    if (!cont)
      s->bf_begun++;
    s->bf_cur.kind = (int)ch->backfill_scope->kind;
    memcpy(s->bf_cur.id, ch->backfill_scope->id.data, FSP_ID_LEN);
    s->bf_open = !(ch->has_backfill_done && ch->backfill_done);
  } else {
    s->bf_open = false;
  }
  *cursor = ch->next_cursor;
  s->st->cursor = *cursor;
  return 0;
}

/* Pulls from the stored cursor while the server says there is more. Each
 * Pull carries the held scopes and the backfill position as stored after
 * the previous answer. */
static int pull_all(struct sync *s) {
  uint64_t cursor;
  bool more = true;
  int rc = fsc_store_cursor(s->db, &cursor);

  if (rc != 0)
    return rc;
  s->st->cursor = cursor;
  while (more) {
    Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
    Fieldsync__Pull pull;
    struct pull_req p;
    struct fsp_msg m;

    rc = pull_req_init(s, &p, cursor, &pull);
    if (rc != 0) {
      pull_req_close(&p);
      return rc;
    }
    env.body_case = FIELDSYNC__ENVELOPE__BODY_PULL;
    env.pull = &pull;
    rc = send_env(s, &env, "sending Pull");
    if (rc == 0)
      rc = recv_msg(s, FIELDSYNC__ENVELOPE__BODY_CHANGES, "changes", &m);
    if (rc != 0) {
      pull_req_close(&p);
      return rc;
    }
    more = m.env->changes->has_more && m.env->changes->more;
    rc = apply_changes(s, m.env->changes, &p, &cursor);
    fsp_msg_close(&m);
    pull_req_close(&p);
    if (rc != 0)
      return rc;
    if (s->opts->progress != NULL)
      s->opts->progress("pull", s->st->pulled, 0, s->opts->progress_data);
  }
  return 0;
}

/* Ends the session politely. The work is done and stored, so a failure to
 * say goodbye changes nothing and is not reported. */
static void say_bye(struct sync *s) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Bye bye = FIELDSYNC__BYE__INIT;

  env.body_case = FIELDSYNC__ENVELOPE__BODY_BYE;
  env.bye = &bye;
  (void)send_frame(s, &env);
}

/* ---- options ----------------------------------------------------------- */

static int bad_address(fieldsync_db *db, const char *text, const char *why) {
  fsc_err(db, FIELDSYNC_EINVAL,
          "bad server address \"%.100s\": %s (want host:port or "
          "[ipv6]:port)",
          text, why);
  sanitize(db->errmsg);
  return FIELDSYNC_EINVAL;
}

/* Splits "host:port" or "[v6 address]:port" into host (NUL-terminated,
 * without brackets) and port (1..65535). */
static int parse_server(fieldsync_db *db, const char *text,
                        char host[SYNC_HOST_MAX + 1], uint16_t *port) {
  const char *h;
  const char *p;
  size_t hlen;
  size_t i;
  unsigned long v = 0;

  if (text == NULL || text[0] == '\0')
    return bad_address(db, text != NULL ? text : "", "empty");
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (close == NULL)
      return bad_address(db, text, "no ']' after the IPv6 address");
    h = text + 1;
    hlen = (size_t)(close - h);
    if (close[1] != ':')
      return bad_address(db, text, "no :port after ']'");
    p = close + 2;
  } else {
    const char *colon = strrchr(text, ':');
    if (colon == NULL)
      return bad_address(db, text, "no :port");
    h = text;
    hlen = (size_t)(colon - text);
    if (memchr(h, ':', hlen) != NULL)
      return bad_address(db, text,
                         "an IPv6 address needs brackets, as in [::1]:7420");
    p = colon + 1;
  }
  if (hlen == 0)
    return bad_address(db, text, "no host");
  if (hlen > SYNC_HOST_MAX)
    return bad_address(db, text, "host name longer than 255 bytes");
  for (i = 0; i < hlen; i++) {
    unsigned char c = (unsigned char)h[i];
    if (c <= 0x20 || c == 0x7f || c == '[' || c == ']' || c == '/')
      return bad_address(db, text,
                         "the host has a character hosts never "
                         "have");
  }
  if (p[0] == '\0')
    return bad_address(db, text, "no port");
  for (i = 0; p[i] != '\0'; i++) {
    if (p[i] < '0' || p[i] > '9' || i >= 5)
      return bad_address(db, text,
                         "the port is not a number from 1 to "
                         "65535");
    v = v * 10 + (unsigned long)(p[i] - '0');
  }
  if (v == 0 || v > 65535)
    return bad_address(db, text, "the port is not a number from 1 to 65535");
  memcpy(host, h, hlen);
  host[hlen] = '\0';
  *port = (uint16_t)v;
  return 0;
}

/* The transport options: a pin is 64 hex digits; plaintext takes no CA
 * file or pin, which would otherwise look like protection it lacks. */
static int check_transport(fieldsync_db *db,
                           const struct fieldsync_sync_opts *o) {
  size_t i;

  if (o->plaintext && (o->ca_file != NULL || o->pin_sha256 != NULL))
    return fsc_err(db, FIELDSYNC_EINVAL,
                   "sync: plaintext excludes a CA file and a pin (they "
                   "only apply to TLS)");
  if (o->ca_file != NULL && o->ca_file[0] == '\0')
    return fsc_err(db, FIELDSYNC_EINVAL, "sync: empty CA file name");
  if (o->pin_sha256 == NULL)
    return 0;
  for (i = 0; i < SYNC_PIN_HEX; i++) {
    char c = o->pin_sha256[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
          (c >= 'A' && c <= 'F')))
      break;
  }
  if (i != SYNC_PIN_HEX || o->pin_sha256[i] != '\0')
    return fsc_err(db, FIELDSYNC_EINVAL,
                   "sync: the pin is not a SHA-256 in hex (64 hex digits)");
  return 0;
}

/* The checks both sync forms make before touching the network. */
static int check_opts(fieldsync_db *db, const struct fieldsync_sync_opts *o,
                      char host[SYNC_HOST_MAX + 1], uint16_t *port) {
  size_t len;
  int rc;

  if (o == NULL)
    return fsc_err(db, FIELDSYNC_EINVAL, "sync: no options");
  if (db->batch)
    return fsc_err(db, FIELDSYNC_EINVAL,
                   "sync: a batch is open; commit or roll it back first");
  if (o->token == NULL || o->token[0] == '\0')
    return fsc_err(db, FIELDSYNC_EINVAL, "sync: no device token");
  len = strlen(o->token);
  if (len > FSP_DEFAULT_MAX_STRING || !fsp_msg_utf8_valid(o->token, len))
    return fsc_err(db, FIELDSYNC_EINVAL,
                   "sync: the device token is not UTF-8 of at most %u bytes",
                   FSP_DEFAULT_MAX_STRING);
  if (o->timeout_ms < 0)
    return fsc_err(db, FIELDSYNC_EINVAL, "sync: negative timeout_ms (%d)",
                   o->timeout_ms);
  rc = check_transport(db, o);
  if (rc != 0)
    return rc;
  return parse_server(db, o->server, host, port);
}

/* ---- the session ------------------------------------------------------- */

/* The server revoked this device (PROTOCOL.md "Tokens, scope and logs"):
 * quarantine every unacknowledged version, then wipe the records, cursor,
 * held scopes and server binding, in one transaction. Returns
 * FIELDSYNC_EREVOKED, or the local error that kept the wipe from
 * happening (nothing changed; the next sync tries again). */
static int revoke(struct sync *s) {
  size_t removed = 0;
  size_t quarantined = 0;
  char why[sizeof(s->revoked) + 32];
  int rc = fsc_scope_wipe(s->db, &removed, &quarantined);

  if (s->revoked[0] != '\0')
    snprintf(why, sizeof(why), " (ERR_REVOKED: %.200s)", s->revoked);
  else
    snprintf(why, sizeof(why), " (ERR_REVOKED)");
  if (rc != 0) {
    char err[sizeof(s->db->errmsg)];
    snprintf(err, sizeof(err), "%s", s->db->errmsg);
    return fsc_err(s->db, rc,
                   "server: this device was revoked%s, but wiping the local "
                   "data failed (the next sync tries again): %.200s",
                   why, err);
  }
  s->st->removed += removed;
  s->st->quarantined += quarantined;
  s->st->cursor = 0;
  return fsc_err(s->db, FIELDSYNC_EREVOKED,
                 "server: this device was revoked%s: local data wiped; %zu "
                 "unacknowledged version%s kept in the quarantine (fieldsync "
                 "quarantine)",
                 why, quarantined, quarantined == 1 ? "" : "s");
}

int fieldsync_sync(fieldsync_db *db, const struct fieldsync_sync_opts *opts,
                   struct fieldsync_sync_stats *stats) {
  struct fieldsync_sync_stats local;
  struct sync s;
  char why[256];
  int rc;

  if (stats == NULL)
    stats = &local;
  memset(stats, 0, sizeof(*stats));
  if (db == NULL)
    return FIELDSYNC_EINVAL;
  memset(&s, 0, sizeof(s));
  s.db = db;
  s.opts = opts;
  s.st = stats;
  fsp_frame_decoder_init(&s.dec, FSP_DEFAULT_MAX_FRAME);
  /* Until Welcome tells otherwise, both directions use the defaults. */
  fsp_limits_default(&s.rx);
  fsp_limits_default(&s.tx);
  rc = check_opts(db, opts, s.host, &s.port);
  if (rc != 0)
    goto done;
  s.timeout_ms =
      opts->timeout_ms != 0 ? opts->timeout_ms : SYNC_DEFAULT_TIMEOUT_MS;
  s.rbuf = fsp_malloc(SYNC_RX_CHUNK);
  if (s.rbuf == NULL) {
    rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
    goto done;
  }
  rc = fsc_tls_open(&s.net, s.host, s.port, opts, s.timeout_ms, why,
                    sizeof(why));
  if (rc == FIELDSYNC_ETLS) {
    fsc_err(db, rc, "TLS with %s: %s", opts->server, why);
    sanitize(db->errmsg);
    goto done;
  }
  if (rc != 0) {
    fsc_err(db, rc, "cannot connect to %s: %s", opts->server, why);
    goto done;
  }
  rc = handshake(&s);
  if (rc == 0)
    rc = push_all(&s);
  if (rc == 0)
    rc = pull_all(&s);
  if (rc == FIELDSYNC_EREVOKED)
    rc = revoke(&s);
  if (rc == 0) {
    say_bye(&s);
    /* Lookups inside the store leave notes such as "no record ..." that
     * were no failure: after a good sync, errmsg says "ok". */
    db->errmsg[0] = '\0';
  }
done:
  fsc_tls_close(s.net);
  fsp_frame_decoder_close(&s.dec);
  fsp_free(s.rbuf);
  return rc;
}

/* ---- the asynchronous form --------------------------------------------- */

struct fieldsync_sync_job {
  fieldsync_db *db;
  struct fieldsync_sync_opts opts; /* its strings point at the copies */
  char *server;
  char *token;
  char *ca_file;
  char *pin;
  fieldsync_sync_done_cb done;
  void *data;
  struct fsc_os_thread *thread;
  int rc;
};

/* Frees a secret, overwriting it first so it does not linger in freed
 * memory. */
static void free_secret(char *p) {
  volatile char *v = p;

  if (p == NULL)
    return;
  while (*v != '\0')
    *v++ = '\0';
  fsp_free(p);
}

static void job_free(struct fieldsync_sync_job *j) {
  fsp_free(j->server);
  free_secret(j->token);
  fsp_free(j->ca_file);
  fsp_free(j->pin);
  fsp_free(j);
}

/* The job's thread: the sync, then done, then nothing touches the db. */
static void job_main(void *arg) {
  struct fieldsync_sync_job *j = arg;
  struct fieldsync_sync_stats st;

  j->rc = fieldsync_sync(j->db, &j->opts, &st);
  j->done(j->rc, &st, j->data);
}

int fieldsync_sync_start(fieldsync_db *db,
                         const struct fieldsync_sync_opts *opts,
                         fieldsync_sync_done_cb done, void *data,
                         fieldsync_sync_job **job) {
  struct fieldsync_sync_job *j;
  char host[SYNC_HOST_MAX + 1];
  uint16_t port;
  int rc;

  if (job != NULL)
    *job = NULL;
  if (db == NULL)
    return FIELDSYNC_EINVAL;
  if (done == NULL || job == NULL)
    return fsc_err(db, FIELDSYNC_EINVAL, "sync: no done callback or job");
  rc = check_opts(db, opts, host, &port);
  if (rc != 0)
    return rc;
  j = fsp_calloc(1, sizeof(*j));
  if (j == NULL)
    return fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
  j->db = db;
  j->opts = *opts;
  j->server = fsp_strdup(opts->server);
  j->token = fsp_strdup(opts->token);
  j->done = done;
  j->data = data;
  if (opts->ca_file != NULL)
    j->ca_file = fsp_strdup(opts->ca_file);
  if (opts->pin_sha256 != NULL)
    j->pin = fsp_strdup(opts->pin_sha256);
  if (j->server == NULL || j->token == NULL ||
      (opts->ca_file != NULL && j->ca_file == NULL) ||
      (opts->pin_sha256 != NULL && j->pin == NULL)) {
    rc = fsc_err(db, FIELDSYNC_ENOMEM, "out of memory");
    goto fail;
  }
  j->opts.server = j->server;
  j->opts.token = j->token;
  j->opts.ca_file = j->ca_file;
  j->opts.pin_sha256 = j->pin;
  rc = fsc_os_thread_start(&j->thread, job_main, j);
  if (rc != 0) {
    fsc_err(db, rc, "sync: cannot start a thread");
    goto fail;
  }
  *job = j;
  return 0;
fail:
  job_free(j);
  return rc;
}

int fieldsync_sync_join(fieldsync_sync_job *job) {
  int rc;

  if (job == NULL)
    return FIELDSYNC_EINVAL;
  fsc_os_thread_join(job->thread);
  rc = job->rc;
  job_free(job);
  return rc;
}
