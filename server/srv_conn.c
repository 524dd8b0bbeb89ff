/* SPDX-License-Identifier: MIT */
/* One connection: an explicit state machine over the proto/ framing and
 * validation. HELLO -> AUTH -> READY <-> BUSY -> CLOSING. Until the token
 * is checked nothing but a Hello is decoded: bytes after it wait unread,
 * and another message first is refused from its envelope tag alone.
 * A revoked device's session ends with ERR_REVOKED, and a reply in flight
 * for it is dropped (srv_conn_revoke). A request puts
 * the connection in BUSY and reading stops until its reply is queued
 * (backpressure), and stays stopped while too much is queued to the peer.
 * A protocol error sends Error, logs one line with a bounded dump of the
 * bad bytes, and closes this connection only. A connection is freed only
 * in its close_cb, and never while a job still refers to it.
 * With TLS (srv_tls.c), ciphertext read from the socket goes into the
 * connection's SSL, the plaintext that comes out takes the same path as
 * plain TCP bytes, and replies are encrypted before they are queued.
 *
 * Deadlines (srv_conn_sweep, every 100 ms): the handshake (connect to a
 * checked Hello), idle (between requests, from the moment the last reply
 * has left), frame (from a frame's first byte to its last, so a peer
 * cannot dribble one), write (a peer that takes none of the bytes queued
 * for it is dropped without an Error, which it would not read either), and
 * 2 s for a failing peer to take its Error.
 *
 * Memory: what one connection can hold, at most. The struct and its libuv
 * handle, under 1 KiB. A frame in progress: max(4 KiB, 2 x its bytes
 * received), never over max_frame, for at most frame_timeout_ms
 * (fsp_frame.h). Bytes read while busy (pending): one socket read, 64 KiB.
 * The write queue: max_write_queue plus one reply (max_frame) and one
 * Error, because requests wait while more than max_write_queue is queued,
 * and for at most write_timeout_ms while the peer takes nothing. While a
 * request is served (no frame is then in progress): its decoded message,
 * under the decode budget (8 x max_frame + 64 KiB), then its reply. The
 * socket read buffer is shared by all connections. So the cap per
 * connection is 10 x max_frame + max_write_queue + 130 KiB (41 MiB with
 * the defaults), reached only by a peer sending and fetching the largest
 * frames; an idle or dribbling peer holds a few KiB, a peer that never
 * reads max_write_queue + max_frame (5 MiB). TLS adds its session
 * (srv_tls.h: about 16 KiB idle, 50 KiB in a handshake, and a read BIO of
 * at most one socket read and a record). */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fsp_tls.h"
#include "srv.h"
#include "srv_fault.h"
#include "srv_tls.h"

/* The Error a revoked device gets, wherever it is in its session. */
#define REVOKED_MSG "this device has been revoked; wipe local data"
/* Bytes one ScopeKey adds to Changes.removed_scopes, at most: the field's
 * tag and length, then kind (tag, 1-byte varint: a known kind) and id
 * (tag, length, 16 bytes). */
#define SCOPE_WIRE_MAX 24u

/* One read buffer for the whole loop: libuv calls alloc_cb and read_cb
 * back to back for one connection, and read_cb consumes or copies every
 * byte before returning, so idle connections cost no buffer. */
static char read_buf[64 * 1024];
static bool read_buf_busy;
/* Plaintext out of one SSL_read (one TLS record at most). Like read_buf,
 * every byte is consumed or copied before tls_pump returns, and nothing
 * tls_pump calls can call it again. */
static uint8_t plain_buf[FSP_TLS_RECORD_MAX];

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void process(struct srv_conn *c, const uint8_t *data, size_t len);
static size_t feed(struct srv_conn *c, const uint8_t *data, size_t len);
static void tls_pump(struct srv_conn *c);

struct write_req {
  uv_write_t req;
  uint8_t *frame;
  size_t len;
};

/* ---- closing ----------------------------------------------------------- */

static void on_close(uv_handle_t *h) {
  struct srv_conn *c = h->data;
  struct srv *srv = c->srv;

  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  srv->stats.connections--;
  srv_tls_conn_close(c->tls);
  fsp_frame_decoder_close(&c->dec);
  fsp_free(c->pending);
  fsp_free(c);
}

/* Closes c unless a job still refers to it; then the job's completion
 * closes it. Safe to call more than once. */
static void conn_close(struct srv_conn *c, const char *why) {
  if (c->state != CONN_CLOSING) {
    if (c->authed)
      srv_log(SRV_INFO, "session_close",
              "conn=%llu user=%s device=%lld records_in=%llu "
              "records_out=%llu reason=\"%s\"",
              (unsigned long long)c->id, c->who.user,
              (long long)c->who.device_id, (unsigned long long)c->records_in,
              (unsigned long long)c->records_out, why);
    else
      srv_log(SRV_DEBUG, "conn_close", "conn=%llu peer=%s reason=\"%s\"",
              (unsigned long long)c->id, c->peer, why);
    c->state = CONN_CLOSING;
  }
  if (c->job_in_flight || c->close_requested)
    return;
  c->close_requested = true;
  uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* ---- writing ----------------------------------------------------------- */

static void read_resume(struct srv_conn *c);

static void on_shutdown(uv_shutdown_t *req, int status) {
  struct srv_conn *c = req->data;

  /* UV_ECANCELED: the handle is closing; c is freed in its close_cb. */
  (void)status;
  c->shutdown_pending = false;
}

/* The Error is written: ends the connection without destroying it.
 * Closing a socket whose peer sent bytes we never read makes the kernel
 * reset the connection and drop what it has not sent yet, which can be
 * the Error itself. So send FIN after the Error, then read and discard
 * until the peer closes; the Error's deadline bounds the wait. May close
 * c. */
static void conn_linger(struct srv_conn *c) {
  int rc;

  if (c->lingering)
    return;
  c->lingering = true;
  c->shutdown_req.data = c;
  rc = uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown);
  if (rc == 0) {
    c->shutdown_pending = true;
    if (!c->reading)
      rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
  if (rc != 0) {
    conn_close(c, "closed after error");
    return;
  }
  c->reading = true;
}

static void on_write(uv_write_t *req, int status) {
  struct write_req *w = (struct write_req *)req;
  struct srv_conn *c = req->data;

  c->write_queue -= w->len;
  fsp_free(w->frame);
  fsp_free(w);
  if (c->state == CONN_CLOSING)
    return;
  if (status != 0) {
    conn_close(c, uv_strerror(status));
    return;
  }
  c->write_deadline = 0; /* the peer is taking bytes; the sweep re-arms */
  /* Idle time counts from the moment the reply has left, so a slow link
   * that is still taking a large reply is not idle. */
  if (c->write_queue == 0 && c->state == CONN_READY && !c->close_after_write)
    c->deadline = uv_now(c->srv->loop) + c->srv->cfg.idle_timeout_ms;
  if (c->close_after_write && c->write_queue == 0) {
    conn_linger(c);
    return;
  }
  if (c->state == CONN_READY || c->state == CONN_HELLO)
    read_resume(c);
}

/* Queues bytes for the socket as they are (takes ownership of buf, which
 * holds a frame or TLS ciphertext). Returns false when the connection is
 * closing or the write failed (then it is closing). */
static bool queue_write(struct srv_conn *c, uint8_t *frame, size_t len) {
  struct write_req *w;
  uv_buf_t b;
  int rc;

  if (c->state == CONN_CLOSING) {
    fsp_free(frame);
    return false;
  }
  w = fsp_malloc(sizeof(*w));
  if (w == NULL) {
    fsp_free(frame);
    conn_close(c, "out of memory");
    return false;
  }
  w->frame = frame;
  w->len = len;
  w->req.data = c;
  b = uv_buf_init((char *)frame, (unsigned)len);
  rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc != 0) {
    fsp_free(frame);
    fsp_free(w);
    conn_close(c, uv_strerror(rc));
    return false;
  }
  c->write_queue += len;
  return true;
}

/* Queues whatever ciphertext TLS has for the peer (handshake messages,
 * records, alerts). Returns false when the connection is closing. */
static bool tls_flush(struct srv_conn *c) {
  uint8_t *out;
  size_t len;

  if (srv_tls_conn_output(c->tls, &out, &len) != 0) {
    conn_close(c, "out of memory");
    return false;
  }
  if (out == NULL)
    return c->state != CONN_CLOSING;
  return queue_write(c, out, len);
}

/* Queues a frame (takes ownership), encrypted when the connection is TLS,
 * a chunk at a time so the ciphertext waiting in OpenSSL stays small.
 * Returns false when the connection is closing or the write failed (then
 * it is closing). */
static bool conn_send(struct srv_conn *c, uint8_t *frame, size_t len) {
  char err[256];
  size_t off = 0;

  if (c->tls == NULL)
    return queue_write(c, frame, len);
  while (off < len && c->state != CONN_CLOSING) {
    size_t n = len - off < SRV_TLS_WRITE_CHUNK ? len - off
                                               : SRV_TLS_WRITE_CHUNK;

    if (srv_tls_conn_write(c->tls, frame + off, n, err, sizeof(err)) != 0) {
      srv_log(SRV_WARN, "tls_error",
              "conn=%llu peer=%s phase=write error=\"%s\"",
              (unsigned long long)c->id, c->peer, err);
      c->srv->stats.errors++;
      conn_close(c, "TLS write failed");
      break;
    }
    off += n;
    if (!tls_flush(c))
      break;
  }
  fsp_free(frame);
  return c->state != CONN_CLOSING;
}

/* True while a TLS handshake is due or under way: nothing can be sent to
 * the peer in a form it can read, so failures close without an Error. */
static bool tls_pending(const struct srv_conn *c) {
  return c->srv->tls != NULL && !c->tls_up;
}

/* Sends Error(code, message) and closes after it is written. */
static void conn_fail(struct srv_conn *c, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

static void conn_fail(struct srv_conn *c, int code, const char *fmt, ...) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Error e = FIELDSYNC__ERROR__INIT;
  char msg[256];
  uint8_t *frame;
  size_t len;
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (c->state == CONN_CLOSING || c->close_after_write)
    return; /* closing, or failing already: the first Error stands */
  c->srv->stats.errors++;
  if (tls_pending(c)) {
    conn_close(c, msg);
    return;
  }
  e.has_code = 1;
  e.code = (Fieldsync__ErrorCode)code;
  e.message = msg;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_ERROR;
  env.error = &e;
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
  }
  c->close_after_write = true;
  /* A peer that does not read its Error must not hold the connection. */
  c->deadline = uv_now(c->srv->loop) + 2000;
  if (fsp_msg_encode_frame(&env, c->srv->cfg.max_frame, &frame, &len) != 0 ||
      !conn_send(c, frame, len))
    conn_close(c, msg);
}

/* Logs a protocol error with a bounded hex dump of the offending bytes,
 * then fails the connection. */
static void protocol_error(struct srv_conn *c, int fsp_code, const char *msg,
                           const uint8_t *bytes, size_t len) {
  char hex[2 * 32 + 1];
  size_t n = len < 32 ? len : 32;
  size_t i;

  if (fsp_code == FSP_ENOMEM) {
    /* Our failure, not the peer's: no protocol error, no dump. */
    srv_log(SRV_ERROR, "out_of_memory", "conn=%llu peer=%s while=\"%s\"",
            (unsigned long long)c->id, c->peer, msg);
    conn_fail(c, fsp_err_to_wire(fsp_code), "%s", msg);
    return;
  }
  for (i = 0; i < n; i++)
    snprintf(hex + 2 * i, 3, "%02x", bytes[i]);
  hex[2 * n] = '\0';
  srv_log(SRV_WARN, "protocol_error",
          "conn=%llu peer=%s code=%s error=\"%s\" bytes=%zu head=%s",
          (unsigned long long)c->id, c->peer, fsp_err_name(fsp_code), msg,
          len, hex);
  conn_fail(c, fsp_err_to_wire(fsp_code), "%s", msg);
}

/* ---- reading ----------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  if (read_buf_busy) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS; retried */
    return;
  }
  read_buf_busy = true;
  *buf = uv_buf_init(read_buf, sizeof(read_buf));
}

static void read_stop(struct srv_conn *c) {
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
  }
}

/* Resumes reading when the connection waits for a request and the peer
 * is taking its replies; first feeds any bytes held back while busy. */
static void read_resume(struct srv_conn *c) {
  if ((c->state != CONN_READY && c->state != CONN_HELLO) ||
      c->close_after_write)
    return;
  if (c->throttled) {
    read_stop(c); /* resumed by the sweep */
    return;
  }
  /* Requests held back count too: a peer that pipelines requests and
   * reads no replies must not make us queue replies without bound. */
  if (c->write_queue > c->srv->cfg.max_write_queue) {
    read_stop(c); /* resumed by on_write */
    return;
  }
  if (c->pending != NULL) {
    /* Consumed in place, one request at a time: a peer that pipelines
     * many small requests costs no copying per request. */
    c->pending_off +=
        feed(c, c->pending + c->pending_off, c->pending_len - c->pending_off);
    if (c->pending_off == c->pending_len || c->state == CONN_CLOSING ||
        c->close_after_write) {
      fsp_free(c->pending);
      c->pending = NULL;
      c->pending_len = 0;
      c->pending_off = 0;
    }
    if ((c->state != CONN_READY && c->state != CONN_HELLO) || c->throttled)
      return;
  } else if (c->dec.ready) {
    (void)feed(c, NULL, 0); /* the request that waited for credit */
    if ((c->state != CONN_READY && c->state != CONN_HELLO) || c->throttled)
      return;
  }
  if (c->tls != NULL) {
    /* Records that arrived while busy wait, still encrypted, in the SSL. */
    tls_pump(c);
    if ((c->state != CONN_READY && c->state != CONN_HELLO) ||
        c->close_after_write)
      return;
  }
  if (c->write_queue > c->srv->cfg.max_write_queue) {
    read_stop(c); /* resumed by on_write */
    return;
  }
  if (!c->reading) {
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) {
      conn_close(c, uv_strerror(rc));
      return;
    }
    c->reading = true;
  }
}

static struct srv_job *job_new(struct srv_conn *c, enum srv_job_kind kind) {
  struct srv_job *job = fsp_calloc(1, sizeof(*job));

  if (job == NULL) {
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_INTERNAL, "out of memory");
    return NULL;
  }
  job->kind = kind;
  job->srv = c->srv;
  job->conn = c;
  job->work.data = job;
  job->who = c->who;
  c->job_in_flight = true;
  c->deadline = 0;
  read_stop(c);
  return job;
}

void srv_job_free(struct srv_job *job) {
  if (job == NULL)
    return;
  fsp_msg_close(&job->msg);
  fsp_free(job->frame);
  fsp_free(job->held);
  fsp_free(job);
}

static void work_cb(uv_work_t *req);
static void after_work_cb(uv_work_t *req, int status);

static void start_pool_job(struct srv_conn *c, struct srv_job *job) {
  int rc = uv_queue_work(c->srv->loop, &job->work, work_cb, after_work_cb);

  if (rc != 0) {
    c->job_in_flight = false;
    srv_job_free(job);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_INTERNAL, "cannot queue work");
    return;
  }
  c->srv->jobs_in_pool++;
}

/* Reads a base-128 varint from p[*off..len). False when it is truncated
 * or longer than 10 bytes. */
static bool read_varint(const uint8_t *p, size_t len, size_t *off,
                        uint64_t *v) {
  unsigned shift = 0;

  *v = 0;
  while (*off < len && shift < 70) {
    uint8_t b = p[(*off)++];

    *v |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0)
      return true;
    shift += 7;
  }
  return false;
}

/* Which body an encoded Envelope carries, found from its top-level tags
 * and lengths alone, so a message that is not a Hello can be refused
 * before a byte of it is decoded. Returns the body field (for a repeated
 * body the last, as the decoder would keep), or NULL when there is none or
 * the bytes are not well-formed at the top level: the full decode then
 * says why. */
static const ProtobufCFieldDescriptor *peek_body(const uint8_t *p,
                                                 size_t len) {
  const ProtobufCFieldDescriptor *body = NULL;
  size_t off = 0;

  while (off < len) {
    const ProtobufCFieldDescriptor *f;
    uint64_t tag;
    uint64_t n;

    if (!read_varint(p, len, &off, &tag) || tag >> 3 == 0 ||
        tag >> 3 > UINT32_MAX)
      return NULL;
    switch (tag & 7) {
    case 0:
      if (!read_varint(p, len, &off, &n))
        return NULL;
      break;
    case 1:
      if (len - off < 8)
        return NULL;
      off += 8;
      break;
    case 2:
      if (!read_varint(p, len, &off, &n) || n > len - off)
        return NULL;
      off += (size_t)n;
      break;
    case 5:
      if (len - off < 4)
        return NULL;
      off += 4;
      break;
    default:
      return NULL; /* groups and reserved wire types */
    }
    f = protobuf_c_message_descriptor_get_field(
        &fieldsync__envelope__descriptor, (unsigned)(tag >> 3));
    if (f != NULL && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0) {
      if ((tag & 7) != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED)
        return NULL;
      body = f;
    }
  }
  return body;
}

/* Starts the token check for a decoded Hello. A Hello without a token is
 * refused here, without touching the store. May close c. */
static void start_auth(struct srv_conn *c, const Fieldsync__Hello *h) {
  struct srv_job *job;

  if (h->device_token == NULL || h->device_token[0] == '\0') {
    srv_log(SRV_WARN, "auth_refused", "conn=%llu peer=%s reason=no_token",
            (unsigned long long)c->id, c->peer);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED,
              "hello carries no device token");
    return;
  }
  job = job_new(c, SRV_JOB_AUTH);
  if (job == NULL)
    return;
  snprintf(job->token, sizeof(job->token), "%s", h->device_token);
  /* fsp_msg checked that replica_id is present and 16 bytes. */
  memcpy(job->replica, h->replica_id.data, sizeof(job->replica));
  c->state = CONN_AUTH;
  start_pool_job(c, job);
}

/* Starts a Pull: copies what the store needs out of the message (which
 * the caller frees). May close c. */
static void start_pull(struct srv_conn *c, const Fieldsync__Pull *pl) {
  struct srv *srv = c->srv;
  struct srv_scope *held = NULL;
  struct srv_job *job;
  uv_timeval64_t tv;
  size_t i;

  /* fsp_msg checked the count (<= FSP_MAX_HELD_SCOPES), each key and the
   * order. */
  if (pl->n_held_scopes > 0) {
    held = fsp_malloc(pl->n_held_scopes * sizeof(*held));
    if (held == NULL) {
      conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_INTERNAL, "out of memory");
      return;
    }
    for (i = 0; i < pl->n_held_scopes; i++) {
      held[i].kind = (int)pl->held_scopes[i]->kind;
      memcpy(held[i].id, pl->held_scopes[i]->id.data, sizeof(held[i].id));
    }
  }
  job = job_new(c, SRV_JOB_PULL);
  if (job == NULL) {
    fsp_free(held);
    return;
  }
  job->held = held;
  job->nheld = pl->n_held_scopes;
  job->cursor = pl->cursor;
  job->max_records =
      pl->has_max_records ? pl->max_records : srv->cfg.max_batch;
  if (job->max_records > srv->cfg.max_batch)
    job->max_records = srv->cfg.max_batch;
  if (pl->backfill_scope != NULL) {
    job->has_backfill = true;
    job->backfill.kind = (int)pl->backfill_scope->kind;
    memcpy(job->backfill.id, pl->backfill_scope->id.data,
           sizeof(job->backfill.id));
    job->backfill_after = pl->has_backfill_after ? pl->backfill_after : 0;
  }
  job->now_ms = 0;
  if (uv_gettimeofday(&tv) == 0)
    job->now_ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
  c->state = CONN_BUSY;
  start_pool_job(c, job);
}

/* Handles one whole frame body. May change state or close c. */
static void handle_frame(struct srv_conn *c, uint8_t *body, size_t len) {
  struct srv *srv = c->srv;
  struct fsp_error err;
  struct fsp_msg m;
  struct srv_job *job;
  int rc;

  if (c->state == CONN_HELLO) {
    const ProtobufCFieldDescriptor *f = peek_body(body, len);

    if (f != NULL && f->id != FIELDSYNC__ENVELOPE__BODY_HELLO) {
      conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE,
                "expected hello, got %s", f->name);
      return;
    }
  }
  memset(&err, 0, sizeof(err));
  rc = fsp_msg_decode(&m, body, len, &srv->lim, &err);
  if (rc != 0) {
    protocol_error(c, rc, err.msg, body, len);
    return;
  }
  switch (c->state) {
  case CONN_HELLO:
    if (m.env->body_case != FIELDSYNC__ENVELOPE__BODY_HELLO) {
      conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE,
                "expected hello, got %s", fsp_msg_body_name(m.env));
      break;
    }
    start_auth(c, m.env->hello);
    break;
  case CONN_READY:
    switch (m.env->body_case) {
    case FIELDSYNC__ENVELOPE__BODY_PUSH:
      job = job_new(c, SRV_JOB_PUSH);
      if (job == NULL)
        break;
      fsp_msg_move(&job->msg, &m); /* the job owns it now */
      c->state = CONN_BUSY;
      srv_writer_submit(srv, job);
      break;
    case FIELDSYNC__ENVELOPE__BODY_PULL:
      start_pull(c, m.env->pull);
      break;
    case FIELDSYNC__ENVELOPE__BODY_BYE:
      conn_close(c, "bye");
      break;
    case FIELDSYNC__ENVELOPE__BODY_ERROR:
      /* PROTOCOL.md "Session": the receiver of an Error closes, and
       * answers nothing (a client reports a reply it could not use). */
      conn_close(c, "peer error");
      break;
    default:
      conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE,
                "unexpected %s in a session", fsp_msg_body_name(m.env));
      break;
    }
    break;
  default:
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNEXPECTED_MESSAGE,
              "request while another is in flight");
    break;
  }
  fsp_msg_close(&m);
}

/* Refills the connection's request credit (max_requests_per_s, up to one
 * second's worth) and, with credit for a request, takes it. */
static bool credit_refill(struct srv_conn *c) {
  unsigned rate = c->srv->cfg.max_requests_per_s;
  uint64_t now = uv_now(c->srv->loop);

  if (rate == 0)
    return true;
  c->credit += (now - c->credit_at) * rate; /* ms x requests/s */
  if (c->credit > (uint64_t)rate * 1000u)
    c->credit = (uint64_t)rate * 1000u;
  c->credit_at = now;
  return c->credit >= 1000u;
}

static bool take_credit(struct srv_conn *c) {
  if (!credit_refill(c))
    return false;
  if (c->srv->cfg.max_requests_per_s != 0)
    c->credit -= 1000u;
  return true;
}

/* Feeds bytes through the frame decoder, handling whole frames while the
 * connection can take requests, and starts or clears the frame deadline.
 * At most one request is started: it leaves the connection busy. A
 * request beyond the connection's rate (max_requests_per_s) waits whole in
 * the decoder, and reading stops until the sweep finds credit for it.
 * Returns how many bytes were consumed: fewer than len when the connection
 * became busy or throttled (the caller keeps the rest), failing or closing
 * (the rest is dropped). */
static size_t feed(struct srv_conn *c, const uint8_t *data, size_t len) {
  size_t off = 0;

  /* A whole request held back for credit (c->dec.ready) is fed first. */
  while ((off < len || c->dec.ready) &&
         (c->state == CONN_READY || c->state == CONN_HELLO) &&
         !c->close_after_write && !c->throttled) {
    size_t used = 0;
    int rc = fsp_frame_feed(&c->dec, data + off, len - off, &used);

    off += used;
    if (rc < 0) {
      protocol_error(c, rc, fsp_err_strerror(rc), data, len);
      break;
    }
    if (rc == 1) {
      uint8_t *body;
      size_t blen;

      if (c->state == CONN_READY && !take_credit(c)) {
        /* The request stays whole in the decoder; the sweep resumes. */
        c->throttled = true;
        read_stop(c);
        break;
      }
      c->frame_deadline = 0; /* the next frame gets its own */
      fsp_frame_take(&c->dec, &body, &blen);
      handle_frame(c, body, blen);
      fsp_free(body);
    }
  }
  if (!fsp_frame_partial(&c->dec))
    c->frame_deadline = 0;
  else if (c->frame_deadline == 0)
    c->frame_deadline = uv_now(c->srv->loop) + c->srv->cfg.frame_timeout_ms;
  return off;
}

/* Feeds bytes that are not ours to keep (the shared read buffer, or TLS
 * plaintext): what a busy connection cannot take yet is copied to
 * c->pending, at most one read, since reading stops while busy. */
static void process(struct srv_conn *c, const uint8_t *data, size_t len) {
  size_t used = feed(c, data, len);

  if (used == len || c->state == CONN_CLOSING || c->close_after_write)
    return;
  assert(c->pending == NULL);
  c->pending = fsp_malloc(len - used);
  if (c->pending == NULL) {
    conn_close(c, "out of memory");
    return;
  }
  memcpy(c->pending, data + used, len - used);
  c->pending_len = len - used;
  c->pending_off = 0;
}

/* A TLS failure: logs one line with OpenSSL's reason, then closes this
 * connection only, after the alert OpenSSL may have queued for the peer
 * (bounded by the Error deadline). No Error frame: before the handshake
 * the peer could not read it, and after a bad record the stream is gone. */
static void tls_fail(struct srv_conn *c, const char *err) {
  srv_log(SRV_WARN, "tls_error", "conn=%llu peer=%s phase=%s error=\"%s\"",
          (unsigned long long)c->id, c->peer,
          c->tls_up ? "session" : "handshake", err);
  c->srv->stats.errors++;
  read_stop(c);
  c->close_after_write = true;
  c->deadline = uv_now(c->srv->loop) + 2000;
  if (!tls_flush(c))
    return;
  if (c->write_queue == 0)
    conn_close(c, "TLS failure");
}

/* Drives TLS over the ciphertext fed so far: the handshake, then records,
 * whose plaintext goes through process(). Stops when TLS needs more bytes,
 * or when the connection cannot take a request now (busy, failing,
 * closing); records not yet decrypted then wait in the SSL. Queues any
 * output TLS made. May close c. */
static void tls_pump(struct srv_conn *c) {
  char err[256];

  while ((c->state == CONN_READY || c->state == CONN_HELLO) &&
         !c->close_after_write && !c->throttled) {
    size_t got = 0;
    int rc = srv_tls_conn_read(c->tls, plain_buf, sizeof(plain_buf), &got,
                               err, sizeof(err));

    if (rc == SRV_TLS_EFAIL) {
      tls_fail(c, err);
      return;
    }
    if (!c->tls_up && srv_tls_conn_ready(c->tls)) {
      c->tls_up = true;
      srv_log(SRV_DEBUG, "tls_up", "conn=%llu peer=%s version=%s cipher=%s",
              (unsigned long long)c->id, c->peer,
              srv_tls_conn_version(c->tls), srv_tls_conn_cipher(c->tls));
    }
    if (rc == SRV_TLS_EOF) {
      conn_close(c, "peer closed TLS");
      return;
    }
    if (rc == SRV_TLS_ENOMEM) {
      conn_close(c, "out of memory");
      return;
    }
    if (got == 0)
      break; /* TLS wants more ciphertext */
    process(c, plain_buf, got);
  }
  if (c->state != CONN_CLOSING)
    (void)tls_flush(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  struct srv_conn *c = s->data;

  if (buf->base == read_buf)
    read_buf_busy = false; /* consumed or copied before we return */
  if (c->lingering && c->state != CONN_CLOSING && nread < 0 &&
      nread != UV_ENOBUFS) {
    conn_close(c, "closed after error");
    return;
  }
  if (c->state == CONN_CLOSING || c->close_after_write)
    return; /* failing: what the peer still sends is dropped */
  if (nread == UV_ENOBUFS)
    return;
  if (nread < 0) {
    conn_close(c, nread == UV_EOF ? "peer closed" : uv_strerror((int)nread));
    return;
  }
  if (nread == 0)
    return;
  if (c->state == CONN_READY)
    c->deadline = uv_now(c->srv->loop) + c->srv->cfg.idle_timeout_ms;
  if (c->tls != NULL) {
    /* Reading resumes only after tls_pump has drained the read BIO, so it
     * holds at most this buffer and a partial record. */
    if (srv_tls_conn_feed(c->tls, (const uint8_t *)buf->base,
                          (size_t)nread) != 0) {
      conn_close(c, "out of memory");
      return;
    }
    tls_pump(c);
    return;
  }
  process(c, (const uint8_t *)buf->base, (size_t)nread);
}

/* ---- jobs -------------------------------------------------------------- */

static void build_welcome(struct srv_job *job) {
  struct srv *srv = job->srv;
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Welcome w = FIELDSYNC__WELCOME__INIT;
  Fieldsync__Limits l = FIELDSYNC__LIMITS__INIT;

  w.has_server_id = 1;
  w.server_id.data = srv->server_id;
  w.server_id.len = 16;
  w.user = job->who.user;
  w.has_role = 1;
  w.role = (Fieldsync__Role)job->who.role;
  w.server_version = SRV_VERSION;
  l.has_max_frame_bytes = 1;
  l.max_frame_bytes = srv->lim.max_frame;
  l.has_max_batch_records = 1;
  l.max_batch_records = srv->lim.max_batch;
  l.has_max_vv_entries = 1;
  l.max_vv_entries = srv->lim.max_vv;
  l.has_max_payload_bytes = 1;
  l.max_payload_bytes = srv->lim.max_payload;
  w.limits = &l;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_WELCOME;
  env.welcome = &w;
  if (fsp_msg_encode_frame(&env, srv->cfg.max_frame, &job->frame,
                           &job->frame_len) != 0)
    job->rc = SRV_STORE_ENOMEM;
}

/* Points k at scope s (whose memory must outlive k). */
static void scope_to_pb(const struct srv_scope *s, Fieldsync__ScopeKey *k) {
  fieldsync__scope_key__init(k);
  k->has_kind = 1;
  k->kind = (Fieldsync__ScopeKind)s->kind;
  k->has_id = 1;
  k->id.data = (uint8_t *)s->id;
  k->id.len = sizeof(s->id);
}

/* Encodes page as the job's Changes frame (worker thread). */
static void build_changes(struct srv_job *job, const struct srv_page *page) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Changes ch = FIELDSYNC__CHANGES__INIT;
  Fieldsync__ScopeKey backfill;
  Fieldsync__ScopeKey *removed = NULL;
  Fieldsync__ScopeKey **removedp = NULL;
  size_t i;

  if (page->nremoved > 0) {
    removed = fsp_malloc(page->nremoved * sizeof(*removed));
    removedp = fsp_malloc(page->nremoved * sizeof(*removedp));
    if (removed == NULL || removedp == NULL) {
      job->rc = SRV_STORE_ENOMEM;
      snprintf(job->err, sizeof(job->err), "out of memory");
      goto done;
    }
    for (i = 0; i < page->nremoved; i++) {
      scope_to_pb(&page->removed[i], &removed[i]);
      removedp[i] = &removed[i];
    }
  }
  ch.n_changes = page->n;
  ch.changes = page->changes;
  ch.has_next_cursor = 1;
  ch.next_cursor = page->next_cursor;
  ch.has_more = 1;
  ch.more = page->more;
  ch.n_removed_scopes = page->nremoved;
  ch.removed_scopes = removedp;
  if (page->backfilling) {
    scope_to_pb(&page->backfill, &backfill);
    ch.backfill_scope = &backfill;
    ch.has_backfill_next = 1;
    ch.backfill_next = page->backfill_next;
    ch.has_backfill_done = 1;
    ch.backfill_done = page->backfill_done;
  }
  env.body_case = FIELDSYNC__ENVELOPE__BODY_CHANGES;
  env.changes = &ch;
  job->records = page->n;
  job->removed = page->nremoved;
  job->backfilling = page->backfilling;
  if (fsp_msg_encode_frame(&env, job->srv->cfg.max_frame, &job->frame,
                           &job->frame_len) != 0) {
    job->rc = SRV_STORE_ENOMEM;
    snprintf(job->err, sizeof(job->err), "cannot encode changes");
  }
done:
  fsp_free(removed);
  fsp_free(removedp);
}

/* The bytes of changes one Changes frame may carry: the frame less a
 * margin for the envelope around them, the removed scopes (at most the
 * held ones) and the backfill fields. */
static size_t pull_max_bytes(uint32_t max_frame, size_t nheld) {
  size_t margin = max_frame > 128u * 1024u ? 64u * 1024u : max_frame / 2u;

  margin += nheld * SCOPE_WIRE_MAX + 64u;
  /* The Pull that listed nheld scopes fit in a frame, so its removed
   * scopes do too; with a tiny frame the page gets a quarter of it. */
  if (margin + max_frame / 4u > max_frame)
    return max_frame / 4u;
  return max_frame - margin;
}

/* Worker thread: auth and pull read the store on a lent connection. A
 * connection that had an I/O error is closed, not lent again (auth
 * commits, and a failed fsync is never retried on the same connection);
 * the next job to take its place opens a new one, or fails with EIO. */
static void work_cb(uv_work_t *req) {
  struct srv_job *job = req->data;
  struct srv *srv = job->srv;
  struct srv_store_conn *rc = srv_reader_take(srv);
  char err[160];

  if (rc == NULL &&
      srv_store_conn_open(srv->store, &rc, err, sizeof(err)) != 0) {
    job->rc = SRV_STORE_EIO;
    snprintf(job->err, sizeof(job->err), "the store is unavailable: %s",
             err);
  } else if (job->kind == SRV_JOB_AUTH) {
    job->rc = srv_store_auth(rc, job->token, job->replica, &job->who);
    if (job->rc == 0)
      build_welcome(job);
    else if (job->rc != SRV_STORE_ENOTFOUND)
      snprintf(job->err, sizeof(job->err), "%s", srv_store_errmsg(rc));
  } else {
    struct srv_pull_req pr;
    struct srv_page page;

    memset(&pr, 0, sizeof(pr));
    pr.cursor = job->cursor;
    pr.max_records = job->max_records;
    pr.max_bytes = pull_max_bytes(srv->cfg.max_frame, job->nheld);
    pr.held = job->held;
    pr.nheld = job->nheld;
    pr.backfill = job->has_backfill ? &job->backfill : NULL;
    pr.backfill_after = job->backfill_after;
    pr.now_ms = job->now_ms;
    memset(&page, 0, sizeof(page));
    job->rc = srv_store_pull(rc, &job->who, &pr, &page);
    if (job->rc == 0)
      build_changes(job, &page);
    else
      snprintf(job->err, sizeof(job->err), "%s", srv_store_errmsg(rc));
    srv_page_free(&page);
  }
  memset(job->token, 0, sizeof(job->token));
  if (job->rc == SRV_STORE_EIO || job->rc == SRV_STORE_ECORRUPT) {
    srv_store_conn_close(rc);
    rc = NULL;
  }
  srv_reader_give(srv, rc);
}

static void after_work_cb(uv_work_t *req, int status) {
  struct srv_job *job = req->data;

  job->srv->jobs_in_pool--;
  if (status == UV_ECANCELED && job->rc == 0)
    job->rc = SRV_STORE_EIO;
  srv_conn_job_done(job);
}

/* Answers a failed token check: each cause has its own Error and log
 * reason (never the token). */
static void auth_refused(struct srv_conn *c, const struct srv_job *job) {
  switch (job->rc) {
  case SRV_STORE_EREVOKED:
    srv_log(SRV_WARN, "auth_refused", "conn=%llu peer=%s reason=revoked",
            (unsigned long long)c->id, c->peer);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_REVOKED, REVOKED_MSG);
    break;
  case SRV_STORE_EMISMATCH:
    srv_log(SRV_WARN, "auth_refused",
            "conn=%llu peer=%s reason=replica_mismatch",
            (unsigned long long)c->id, c->peer);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED,
              "device token belongs to another device");
    break;
  case SRV_STORE_ENOTFOUND:
    srv_log(SRV_WARN, "auth_refused", "conn=%llu peer=%s reason=unknown_token",
            (unsigned long long)c->id, c->peer);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_UNAUTHENTICATED,
              "device token not recognised");
    break;
  case SRV_STORE_ENOMEM:
    srv_log(SRV_ERROR, "auth_failed", "conn=%llu peer=%s error=\"%s\"",
            (unsigned long long)c->id, c->peer,
            job->err[0] != '\0' ? job->err : "out of memory");
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_INTERNAL, "out of memory");
    break;
  default:
    /* The store failed: the token may be good, so the client is told to
     * retry rather than that its token is wrong. */
    srv_log(SRV_ERROR, "storage_error", "conn=%llu peer=%s op=auth "
            "error=\"%s\"", (unsigned long long)c->id, c->peer, job->err);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_STORAGE,
              "cannot check the device token now; try again later");
    break;
  }
}

/* Ends a revoked device's session whose job just finished: its reply is
 * dropped. What a push committed stays committed (PROTOCOL.md). */
static void revoked_job_done(struct srv_conn *c, struct srv_job *job) {
  struct srv *srv = c->srv;

  if (job->kind == SRV_JOB_AUTH) {
    srv_log(SRV_WARN, "auth_refused",
            "conn=%llu peer=%s reason=revoked device=%lld",
            (unsigned long long)c->id, c->peer,
            (long long)job->who.device_id);
  } else {
    if (job->kind == SRV_JOB_PUSH && job->rc == 0) {
      c->records_in += job->records;
      srv->stats.records_in += job->records;
    }
    srv_log(SRV_INFO, "reply_dropped",
            "conn=%llu device=%lld op=%s records=%zu reason=revoked",
            (unsigned long long)c->id, (long long)c->who.device_id,
            job->kind == SRV_JOB_PUSH ? "push" : "pull", job->records);
  }
  conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_REVOKED, REVOKED_MSG);
}

void srv_conn_job_done(struct srv_job *job) {
  struct srv_conn *c = job->conn;
  struct srv *srv = job->srv;
  uint8_t *frame = job->frame;

  c->job_in_flight = false;
  job->frame = NULL;
  if (c->state == CONN_CLOSING) {
    fsp_free(frame);
    srv_job_free(job);
    conn_close(c, "closed while busy");
    return;
  }
  /* A token read before its device was revoked must not open a session
   * (the revocation watch may have run while the check was in flight). */
  if (c->revoked || (job->kind == SRV_JOB_AUTH && job->rc == 0 &&
                     srv_revoked_has(srv, job->who.device_id))) {
    revoked_job_done(c, job);
    fsp_free(frame);
    srv_job_free(job);
    return;
  }
  if (job->kind == SRV_JOB_AUTH) {
    if (job->rc != 0) {
      auth_refused(c, job);
    } else {
      c->who = job->who;
      c->authed = true;
      c->state = CONN_READY;
      c->deadline = uv_now(srv->loop) + srv->cfg.idle_timeout_ms;
      srv->stats.sessions++;
      srv_log(SRV_INFO, "session_open",
              "conn=%llu peer=%s user=%s device=%lld transport=%s",
              (unsigned long long)c->id, c->peer, c->who.user,
              (long long)c->who.device_id,
              c->tls != NULL ? srv_tls_conn_version(c->tls) : "plaintext");
      if (conn_send(c, frame, job->frame_len))
        read_resume(c);
      frame = NULL;
    }
  } else if (job->rc != 0) {
    srv_log(SRV_ERROR, "storage_error", "conn=%llu user=%s op=%s error=\"%s\"",
            (unsigned long long)c->id, c->who.user,
            job->kind == SRV_JOB_PUSH ? "push" : "pull", job->err);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_STORAGE,
              "storage failed; nothing was acknowledged: %s", job->err);
  } else {
    if (job->kind == SRV_JOB_PUSH) {
      c->records_in += job->records;
      srv->stats.records_in += job->records;
      srv->stats.conflicts += job->conflicts;
      srv->stats.refused += job->refused;
      srv_log(SRV_INFO, "push",
              "conn=%llu user=%s device=%lld records=%zu conflicts=%zu "
              "refused=%zu",
              (unsigned long long)c->id, c->who.user,
              (long long)c->who.device_id, job->records, job->conflicts,
              job->refused);
    } else {
      c->records_out += job->records;
      srv->stats.records_out += job->records;
      srv_log(SRV_DEBUG, "pull",
              "conn=%llu user=%s cursor=%llu held=%zu records=%zu "
              "removed=%zu backfill=%s",
              (unsigned long long)c->id, c->who.user,
              (unsigned long long)job->cursor, job->nheld, job->records,
              job->removed, job->backfilling ? "yes" : "no");
    }
    c->state = CONN_READY;
    c->deadline = uv_now(srv->loop) + srv->cfg.idle_timeout_ms;
    if (conn_send(c, frame, job->frame_len)) {
      if (c->draining)
        conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_SHUTTING_DOWN,
                  "server is shutting down; sync again later");
      else
        read_resume(c);
    }
    frame = NULL;
  }
  fsp_free(frame);
  srv_job_free(job);
}

/* ---- accepting, deadlines, draining ------------------------------------ */

int srv_conn_accept(struct srv *srv) {
  struct srv_conn *c = fsp_calloc(1, sizeof(*c));
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  int rc;

  if (c == NULL) {
    srv_log(SRV_ERROR, "accept_failed", "error=\"out of memory\"");
    return UV_ENOMEM;
  }
  rc = uv_tcp_init(srv->loop, &c->tcp);
  if (rc != 0) {
    srv_log(SRV_ERROR, "accept_failed", "error=\"%s\"", uv_strerror(rc));
    fsp_free(c);
    return rc;
  }
  c->srv = srv;
  c->id = ++srv->next_conn_id;
#ifdef FIELDSYNC_FAULT_SEAMS
  srv_fault_on_accept(c->id);
#endif
  c->tcp.data = c;
  c->state = CONN_HELLO;
  fsp_frame_decoder_init(&c->dec, srv->cfg.max_frame);
  c->next = srv->conns;
  if (srv->conns != NULL)
    srv->conns->prev = c;
  srv->conns = c;
  srv->stats.connections++;
  rc = uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp);
  if (rc != 0) {
    srv_log(SRV_WARN, "accept_failed", "error=\"%s\"", uv_strerror(rc));
    conn_close(c, "accept failed");
    return 0;
  }
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    char ip[48] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (srv->stopping) {
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_SHUTTING_DOWN,
              "server is shutting down");
    return 0;
  }
  if (srv->stats.connections >
      (uint64_t)srv->cfg.max_connections + SRV_BUSY_SLACK) {
    /* So many are being refused that an Error each could use up the
     * descriptors kept for the store: shed this one at once. */
    srv_log(SRV_DEBUG, "conn_refused", "peer=%s reason=limit limit=%u", c->peer,
            srv->cfg.max_connections);
    conn_close(c, "over the connection limit");
    return 0;
  }
  if (srv->stats.connections > srv->cfg.max_connections) {
    srv_log(SRV_WARN, "conn_refused", "peer=%s reason=limit limit=%u",
            c->peer, srv->cfg.max_connections);
    conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_BUSY,
              "too many connections (limit %u); try again later",
              srv->cfg.max_connections);
    return 0;
  }
  if (srv->tls != NULL && srv_tls_conn_open(srv->tls, &c->tls) != 0) {
    srv_log(SRV_ERROR, "accept_failed", "peer=%s error=\"out of memory\"",
            c->peer);
    conn_close(c, "out of memory");
    return 0;
  }
  /* One deadline for the TLS handshake and Hello together: a peer that
   * stalls in either is dropped (cleared when the token check starts). */
  c->deadline = uv_now(srv->loop) + srv->cfg.handshake_timeout_ms;
  c->credit = (uint64_t)srv->cfg.max_requests_per_s * 1000u; /* a burst */
  c->credit_at = uv_now(srv->loop);
  read_resume(c);
  return 0;
}

/* The write deadline: armed while bytes wait in libuv's queue (the
 * kernel's buffer is full), moved on whenever the queue shrinks or a write
 * completes. Returns true when it has passed: the peer took nothing for
 * write_timeout_ms. */
static bool write_stalled(struct srv_conn *c, uint64_t now) {
  size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);

  if (q == 0) {
    c->write_deadline = 0;
  } else if (c->write_deadline == 0 || q < c->write_seen) {
    c->write_deadline = now + c->srv->cfg.write_timeout_ms;
  }
  c->write_seen = q;
  return c->write_deadline != 0 && now >= c->write_deadline;
}

void srv_conn_sweep(struct srv *srv) {
  uint64_t now = uv_now(srv->loop);
  struct srv_conn *c = srv->conns;

  while (c != NULL) {
    struct srv_conn *next = c->next;

    if (c->state == CONN_CLOSING) {
      c = next;
      continue;
    }
    if (!c->close_after_write && write_stalled(c, now)) {
      /* An Error would wait behind what the peer is not reading. */
      srv_log(SRV_INFO, "timeout", "conn=%llu peer=%s phase=write queued=%zu",
              (unsigned long long)c->id, c->peer, c->write_queue);
      conn_close(c, "peer took no bytes before the write deadline");
    } else if (c->frame_deadline != 0 && now >= c->frame_deadline &&
               !c->close_after_write) {
      srv_log(SRV_INFO, "timeout", "conn=%llu peer=%s phase=frame held=%zu",
              (unsigned long long)c->id, c->peer, fsp_frame_held(&c->dec));
      c->frame_deadline = 0;
      conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_TIMEOUT,
                "frame not complete before the frame deadline");
    } else if (c->throttled && !c->close_after_write) {
      /* Not idle: a request waits for credit. */
      if (credit_refill(c)) {
        c->throttled = false;
        read_resume(c); /* may close c */
      }
    } else if (c->deadline != 0 && now >= c->deadline &&
               (c->close_after_write || c->state == CONN_HELLO ||
                c->write_queue == 0)) {
      if (c->close_after_write) {
        conn_close(c, c->lingering ? "peer kept the connection after its error"
                                   : "peer did not read its error");
      } else {
        bool hello = c->state == CONN_HELLO;
        srv_log(SRV_INFO, "timeout", "conn=%llu peer=%s phase=%s",
                (unsigned long long)c->id, c->peer,
                !hello           ? "idle"
                : tls_pending(c) ? "tls_handshake"
                                 : "handshake");
        conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_TIMEOUT,
                  hello ? "no hello before the handshake deadline"
                        : "idle for too long");
      }
    }
    c = next;
  }
}

void srv_conn_drain_all(struct srv *srv) {
  struct srv_conn *c = srv->conns;

  while (c != NULL) {
    struct srv_conn *next = c->next;

    c->draining = true;
    if (c->state == CONN_HELLO || c->state == CONN_READY)
      conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_SHUTTING_DOWN,
                "server is shutting down; sync again later");
    c = next;
  }
}

void srv_conn_revoke(struct srv *srv) {
  struct srv_conn *c = srv->conns;

  while (c != NULL) {
    struct srv_conn *next = c->next;

    if (c->authed && !c->revoked && c->state != CONN_CLOSING &&
        srv_revoked_has(srv, c->who.device_id)) {
      srv_log(SRV_INFO, "session_revoked",
              "conn=%llu device=%lld user=%s in_flight=%s",
              (unsigned long long)c->id, (long long)c->who.device_id,
              c->who.user, c->job_in_flight ? "yes" : "no");
      c->revoked = true;
      /* With a job in flight, its completion sends the Error instead of
       * the reply. A session already failing keeps its first Error. */
      if (!c->job_in_flight && !c->close_after_write)
        conn_fail(c, FIELDSYNC__ERROR_CODE__ERR_REVOKED, REVOKED_MSG);
    }
    c = next;
  }
}
