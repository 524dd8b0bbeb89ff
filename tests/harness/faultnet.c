/* SPDX-License-Identifier: MIT */
/* The frame-aware fault proxy: see faultnet.h. Bytes from each side are
 * cut into frames (4-byte big-endian length, body); each whole frame gets
 * its fault and goes into a per-direction queue of frames with a time to
 * leave, which keeps their order (a delayed frame holds back the frames
 * behind it, as TCP would). Ends of stream travel as half-closes once a
 * direction's queue is empty. */
#define _POSIX_C_SOURCE 200809L
#include "faultnet.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "fieldsync.h"
#include "harness.h"
#include "proc.h"

#define FN_DEFAULT_DELAY_MS 200u
#define FN_DEFAULT_REORDER_MS 100u
#define FN_DEFAULT_DEADLINE_MS 600000u
/* A session with no byte either way for this long is closed. */
#define FN_IDLE_MS 60000
/* A send to a peer that does not read gives up after this long. */
#define FN_SEND_TIMEOUT_S 5
/* A length above this is not a frame of ours (PROTOCOL.md's largest is 4
 * MiB): the rest of that direction passes through unframed. */
#define FN_MAX_FRAME (64u * 1024u * 1024u)
#define FN_POLL_MS 50
/* faultnet_pause waits at most this long (a send may block for
 * FN_SEND_TIMEOUT_S). */
#define FN_PAUSE_WAIT_MS 30000
/* Bytes read at a time (on the proxy's stack: several proxies may run). */
#define FN_RX_CHUNK 16384

/* One frame (or a part of one) waiting to leave. */
struct fn_out {
  uint8_t *p; /* malloc'd; NULL when n is 0 */
  size_t n;
  long long due; /* proc_now_ms() at which it may leave */
  bool cut;      /* after it (or instead, when n is 0), cut the session */
  bool rst;      /* and cut it with a reset rather than a close */
};

/* One direction of a session. */
struct fn_dir {
  int src;
  int dst;
  uint8_t hdr[4];
  unsigned hdr_n;
  uint8_t *frame; /* the frame being assembled, header included */
  size_t have;
  size_t want;
  unsigned frames; /* whole frames received */
  bool raw;        /* not frames: bytes pass through */
  struct fn_out *q;
  size_t qn;
  size_t qcap;
  struct fn_out reo; /* a frame held for reordering */
  bool has_reo;
  long long reo_due;
  size_t fwd;  /* bytes of whole frames received, for cut_after */
  bool eof;    /* src ended */
  bool shut;   /* nothing more goes to dst */
  bool broken; /* dst is gone: what src sends is discarded */
};

struct faultnet_session {
  int cfd;
  int sfd;
  struct fn_dir d[2];
  long long last_io;
  bool first; /* the first session: hold_frame applies */
  bool cut;   /* cut: close both sides now */
  bool rst;   /* with a reset (RST) rather than a close (FIN) */
};

const char *faultnet_fault_name(enum faultnet_fault k) {
  static const char *const names[FAULTNET_NFAULTS] = {
      "pass", "drop", "dup", "delay", "reorder", "cut"};

  return (unsigned)k < FAULTNET_NFAULTS ? names[k] : "?";
}

int faultnet_failure(int rc, const char *msg) {
  switch (rc) {
  case FIELDSYNC_ENETWORK:
    return FAULTNET_F_NETWORK;
  case FIELDSYNC_ETIMEOUT:
    return FAULTNET_F_TIMEOUT;
  case FIELDSYNC_EPROTOCOL:
    return FAULTNET_F_PROTOCOL;
  case FIELDSYNC_ESERVER:
    if (msg == NULL || strstr(msg, "ERR_UNEXPECTED_MESSAGE") != NULL ||
        strstr(msg, "ERR_TIMEOUT") != NULL)
      return FAULTNET_F_SERVER;
    return -1;
  default:
    return -1;
  }
}

const char *faultnet_failure_name(int kind) {
  static const char *const names[FAULTNET_F_NKINDS] = {"network", "timeout",
                                                       "protocol", "server"};

  return kind >= 0 && kind < FAULTNET_F_NKINDS ? names[kind] : "?";
}

/* ---- queues ------------------------------------------------------------ */

/* Appends a frame (taking p) to d's queue. */
static struct fn_out *push(struct fn_dir *d, uint8_t *p, size_t n,
                           long long due, bool cut) {
  if (d->qn == d->qcap) {
    size_t cap = d->qcap == 0 ? 8 : d->qcap * 2;
    struct fn_out *nq = realloc(d->q, cap * sizeof(*nq));
    ASSERT(nq != NULL);
    d->q = nq;
    d->qcap = cap;
  }
  d->q[d->qn].p = p;
  d->q[d->qn].n = n;
  d->q[d->qn].due = due;
  d->q[d->qn].cut = cut;
  d->q[d->qn].rst = false;
  return &d->q[d->qn++];
}

static uint8_t *copy_bytes(const uint8_t *p, size_t n) {
  uint8_t *c = malloc(n > 0 ? n : 1);

  ASSERT(c != NULL);
  if (n > 0)
    memcpy(c, p, n);
  return c;
}

static void dir_free(struct fn_dir *d) {
  size_t i;

  for (i = 0; i < d->qn; i++)
    free(d->q[i].p);
  free(d->q);
  if (d->has_reo)
    free(d->reo.p);
  free(d->frame);
  memset(d, 0, sizeof(*d));
}

/* ---- sockets ----------------------------------------------------------- */

/* Writes all of p to fd; false when the peer is gone or stopped reading. */
static bool send_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    p += w;
    n -= (size_t)w;
  }
  return true;
}

static void sock_opts(int fd) {
  struct timeval tv = {FN_SEND_TIMEOUT_S, 0};
  int one = 1;

  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int dial(int port) {
  struct sockaddr_in a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  if (fd < 0)
    return -1;
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  sock_opts(fd);
  return fd;
}

/* ---- faults ------------------------------------------------------------ */

static void flush(struct faultnet_session *s, int dir, long long now);

/* Picks the fault for one frame of direction dir and counts it. Called
 * with f->mu held. */
static enum faultnet_fault roll(struct faultnet *f, int dir) {
  uint64_t r = test_rand_below(&f->rng, 1000);
  unsigned acc = 0;
  int k;

  for (k = FAULTNET_DROP; k < FAULTNET_NFAULTS; k++) {
    acc += f->prob[dir][k];
    if (r < acc)
      break;
  }
  if (k == FAULTNET_NFAULTS)
    k = FAULTNET_PASS;
  f->st.frames[dir][k]++;
  return (enum faultnet_fault)k;
}

/* A whole frame p[0..n) (malloc'd; taken) arrived in direction dir of s:
 * the scripted faults first, then a random one. */
static void on_frame(struct faultnet *f, struct faultnet_session *s, int dir,
                     uint8_t *p, size_t n) {
  struct fn_dir *d = &s->d[dir];
  long long now = proc_now_ms();
  enum faultnet_fault k;
  long long due = now;
  size_t part = 0;
  bool mid = false;
  bool rst = false;

  d->frames++;
  if (dir == FAULTNET_UP && s->first && f->hold_frame == d->frames &&
      f->hold_cb != NULL) {
    flush(s, dir, now); /* what came before the held frame goes first */
    f->hold_cb(f->hold_data);
    pthread_mutex_lock(&f->mu);
    f->st.held = true;
    pthread_mutex_unlock(&f->mu);
  }
  if (f->cut_after > 0 && dir == f->cut_dir && d->fwd + n >= f->cut_after) {
    part = f->cut_after - d->fwd;
    d->fwd += n;
    pthread_mutex_lock(&f->mu);
    f->st.cut = true;
    pthread_mutex_unlock(&f->mu);
    push(d, p, part, now, true);
    return;
  }
  d->fwd += n;
  pthread_mutex_lock(&f->mu);
  k = roll(f, dir);
  if (k == FAULTNET_DELAY)
    due = now + 1 + (long long)test_rand_below(&f->rng, f->delay_max_ms);
  if (k == FAULTNET_CUT && n > 1 && test_rand_below(&f->rng, 2) == 0) {
    mid = true;
    part = 1 + (size_t)test_rand_below(&f->rng, n - 1);
    f->st.cuts_mid++;
  }
  if (k == FAULTNET_CUT && test_rand_below(&f->rng, 2) == 0) {
    rst = true;
    f->st.cuts_rst++;
  }
  if (k == FAULTNET_REORDER && d->has_reo)
    k = FAULTNET_PASS; /* it passes the frame held before it */
  if (d->has_reo && k != FAULTNET_DROP && k != FAULTNET_CUT)
    f->st.swaps++;
  pthread_mutex_unlock(&f->mu);

  switch (k) {
  case FAULTNET_DROP:
    free(p);
    break;
  case FAULTNET_DUP:
    push(d, copy_bytes(p, n), n, now, false);
    push(d, p, n, now, false);
    break;
  case FAULTNET_REORDER:
    d->reo.p = p;
    d->reo.n = n;
    d->has_reo = true;
    d->reo_due = now + f->reorder_wait_ms;
    return;
  case FAULTNET_CUT:
    if (mid) {
      push(d, p, part, now, true)->rst = rst;
    } else {
      free(p);
      push(d, NULL, 0, now, true)->rst = rst;
    }
    break;
  default: /* PASS, DELAY */
    push(d, p, n, due, false);
    break;
  }
  if (d->has_reo) {
    /* The held frame goes out behind this one (or with the cut, never). */
    if (k == FAULTNET_CUT)
      free(d->reo.p);
    else
      push(d, d->reo.p, d->reo.n, now, false);
    d->has_reo = false;
  }
}

/* Feeds bytes received in direction dir into its frame assembly. */
static void feed(struct faultnet *f, struct faultnet_session *s, int dir,
                 const uint8_t *p, size_t n) {
  struct fn_dir *d = &s->d[dir];

  while (n > 0) {
    size_t take;

    if (d->raw) {
      push(d, copy_bytes(p, n), n, proc_now_ms(), false);
      return;
    }
    if (d->hdr_n < 4) {
      take = 4 - d->hdr_n < n ? 4 - d->hdr_n : n;
      memcpy(d->hdr + d->hdr_n, p, take);
      d->hdr_n += (unsigned)take;
      if (d->hdr_n == 4) {
        uint32_t len = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
                       (uint32_t)d->hdr[2] << 8 | d->hdr[3];
        if (len > FN_MAX_FRAME) {
          d->raw = true;
          push(d, copy_bytes(d->hdr, 4), 4, proc_now_ms(), false);
        } else {
          d->want = 4 + (size_t)len;
          d->frame = malloc(d->want);
          ASSERT(d->frame != NULL);
          memcpy(d->frame, d->hdr, 4);
          d->have = 4;
        }
      }
    } else {
      take = d->want - d->have < n ? d->want - d->have : n;
      memcpy(d->frame + d->have, p, take);
      d->have += take;
    }
    p += take;
    n -= take;
    if (!d->raw && d->hdr_n == 4 && d->have == d->want) {
      uint8_t *fr = d->frame;
      size_t len = d->want;
      d->frame = NULL;
      d->hdr_n = 0;
      d->have = 0;
      d->want = 0;
      on_frame(f, s, dir, fr, len);
    }
  }
}

/* Sends what is due in direction dir; half-closes dst once src ended and
 * everything went. A scripted or random cut marks s->cut. */
static void flush(struct faultnet_session *s, int dir, long long now) {
  struct fn_dir *d = &s->d[dir];

  if (s->cut)
    return;
  if (d->has_reo && now >= d->reo_due) {
    push(d, d->reo.p, d->reo.n, now, false);
    d->has_reo = false;
  }
  while (d->qn > 0 && d->q[0].due <= now) {
    struct fn_out o = d->q[0];

    d->qn--;
    memmove(d->q, d->q + 1, d->qn * sizeof(*d->q));
    if (o.n > 0 && !d->broken && !send_all(d->dst, o.p, o.n))
      d->broken = true;
    free(o.p);
    if (o.cut) {
      s->cut = true;
      s->rst = o.rst;
      return;
    }
  }
  if (d->broken && !d->shut) {
    size_t i;
    for (i = 0; i < d->qn; i++)
      free(d->q[i].p);
    d->qn = 0;
    d->shut = true;
  }
  if (d->eof && !d->shut && d->qn == 0 && !d->has_reo) {
    /* A frame cut short by the sender's end goes on as it is. */
    if (d->have > 0)
      (void)send_all(d->dst, d->frame, d->have);
    else if (d->hdr_n > 0 && !d->raw)
      (void)send_all(d->dst, d->hdr, d->hdr_n);
    shutdown(d->dst, SHUT_WR);
    d->shut = true;
  }
}

/* The earliest time something of s is due, or -1. */
static long long next_due(const struct faultnet_session *s) {
  long long t = -1;
  int k;

  for (k = 0; k < 2; k++) {
    const struct fn_dir *d = &s->d[k];
    if (d->qn > 0 && (t < 0 || d->q[0].due < t))
      t = d->q[0].due;
    if (d->has_reo && (t < 0 || d->reo_due < t))
      t = d->reo_due;
  }
  return t;
}

/* ---- sessions ---------------------------------------------------------- */

static void session_end(struct faultnet *f, int i) {
  struct faultnet_session *s = f->sess[i];

  if (s->rst) {
    /* A zero linger time makes close send RST: the connection was reset
     * (a mobile network dropping its state), not closed. */
    struct linger l = {1, 0};
    setsockopt(s->cfd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    setsockopt(s->sfd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }
  close(s->cfd);
  close(s->sfd);
  dir_free(&s->d[0]);
  dir_free(&s->d[1]);
  free(s);
  f->sess[i] = NULL;
}

static void session_new(struct faultnet *f, int cfd) {
  struct faultnet_session *s;
  int port;
  int sfd;
  int i;

  pthread_mutex_lock(&f->mu);
  port = f->server_port;
  f->st.sessions++;
  pthread_mutex_unlock(&f->mu);
  sock_opts(cfd);
  sfd = dial(port);
  if (sfd < 0) {
    close(cfd);
    return;
  }
  for (i = 0; i < FAULTNET_MAX_SESSIONS && f->sess[i] != NULL; i++)
    ;
  ASSERT(i < FAULTNET_MAX_SESSIONS); /* we accept only with a free slot */
  s = calloc(1, sizeof(*s));
  ASSERT(s != NULL);
  s->cfd = cfd;
  s->sfd = sfd;
  s->d[FAULTNET_UP].src = cfd;
  s->d[FAULTNET_UP].dst = sfd;
  s->d[FAULTNET_DOWN].src = sfd;
  s->d[FAULTNET_DOWN].dst = cfd;
  s->last_io = proc_now_ms();
  s->first = f->st.sessions == 1;
  f->sess[i] = s;
}

/* Reads what src of direction dir has. */
static void session_read(struct faultnet *f, struct faultnet_session *s,
                         int dir) {
  uint8_t buf[FN_RX_CHUNK];
  struct fn_dir *d = &s->d[dir];
  ssize_t n = recv(d->src, buf, sizeof(buf), 0);

  if (n < 0 && errno == EINTR)
    return;
  if (n <= 0) {
    d->eof = true;
    return;
  }
  s->last_io = proc_now_ms();
  pthread_mutex_lock(&f->mu);
  f->st.bytes[dir] += (size_t)n;
  pthread_mutex_unlock(&f->mu);
  if (d->broken)
    return;
  feed(f, s, dir, buf, (size_t)n);
}

/* ---- the thread -------------------------------------------------------- */

static void *fn_main(void *arg) {
  struct faultnet *f = arg;
  long long deadline = proc_now_ms() + f->deadline_ms;
  bool listening = true;
  int j;

  for (;;) {
    struct pollfd p[1 + 2 * FAULTNET_MAX_SESSIONS];
    int who[1 + 2 * FAULTNET_MAX_SESSIONS]; /* session * 2 + dir */
    long long now = proc_now_ms();
    long long wake = now + FN_POLL_MS;
    int np = 0;
    int nsess = 0;
    bool room = false;
    bool stop;
    int i;

    pthread_mutex_lock(&f->mu);
    /* Paused (faultnet_pause): wait here, holding nothing else. */
    while (f->pause && !f->stopping) {
      f->paused = true;
      pthread_cond_broadcast(&f->cv);
      pthread_cond_wait(&f->cv, &f->mu);
    }
    f->paused = false;
    stop = f->stopping;
    if (f->max_sessions > 0 && f->st.sessions >= f->max_sessions)
      listening = false;
    pthread_mutex_unlock(&f->mu);
    if (stop || now >= deadline)
      break;
    for (i = 0; i < FAULTNET_MAX_SESSIONS; i++) {
      struct faultnet_session *s = f->sess[i];
      long long t;
      int k;

      if (s == NULL) {
        room = true;
        continue;
      }
      nsess++;
      t = next_due(s);
      if (t >= 0 && t < wake)
        wake = t;
      for (k = 0; k < 2; k++) {
        if (s->d[k].eof)
          continue;
        p[np].fd = s->d[k].src;
        p[np].events = POLLIN;
        p[np].revents = 0;
        who[np++] = i * 2 + k;
      }
    }
    if (!listening && nsess == 0)
      break;
    if (listening && room) {
      p[np].fd = f->lfd;
      p[np].events = POLLIN;
      p[np].revents = 0;
      who[np++] = -1;
    }
    if (poll(p, (nfds_t)np, wake > now ? (int)(wake - now) : 0) < 0 &&
        errno != EINTR)
      break;
    for (i = 0; i < np; i++) {
      if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
        continue;
      if (who[i] < 0) {
        int cfd = accept(f->lfd, NULL, NULL);
        if (cfd >= 0)
          session_new(f, cfd);
        continue;
      }
      if (f->sess[who[i] / 2] != NULL)
        session_read(f, f->sess[who[i] / 2], who[i] % 2);
    }
    now = proc_now_ms();
    for (i = 0; i < FAULTNET_MAX_SESSIONS; i++) {
      struct faultnet_session *s = f->sess[i];

      if (s == NULL)
        continue;
      flush(s, FAULTNET_UP, now);
      flush(s, FAULTNET_DOWN, now);
      if (s->cut ||
          (s->d[0].shut && s->d[1].shut && s->d[0].eof && s->d[1].eof) ||
          now - s->last_io > FN_IDLE_MS)
        session_end(f, i);
    }
  }
  for (j = 0; j < FAULTNET_MAX_SESSIONS; j++)
    if (f->sess[j] != NULL)
      session_end(f, j);
  pthread_mutex_lock(&f->mu);
  f->ended = true;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  close(f->lfd);
  f->lfd = -1;
  return NULL;
}

/* ---- the interface ----------------------------------------------------- */

void faultnet_start(struct faultnet *f) {
  struct sockaddr_in a;
  socklen_t len = sizeof(a);
  int rc;

  if (f->delay_max_ms == 0)
    f->delay_max_ms = FN_DEFAULT_DELAY_MS;
  if (f->reorder_wait_ms == 0)
    f->reorder_wait_ms = FN_DEFAULT_REORDER_MS;
  if (f->deadline_ms == 0)
    f->deadline_ms = FN_DEFAULT_DEADLINE_MS;
  memset(f->prob, 0, sizeof(f->prob));
  memset(&f->st, 0, sizeof(f->st));
  memset(f->sess, 0, sizeof(f->sess));
  f->rng = f->seed;
  f->stopping = false;
  f->pause = false;
  f->paused = false;
  f->ended = false;
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  f->lfd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT(f->lfd >= 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_OK(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)));
  ASSERT_OK(listen(f->lfd, 16));
  ASSERT_OK(getsockname(f->lfd, (struct sockaddr *)&a, &len));
  snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", (int)ntohs(a.sin_port));
  rc = pthread_create(&f->th, NULL, fn_main, f);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "pthread_create: %s", strerror(rc));
  f->started = true;
}

void faultnet_set(struct faultnet *f, int dir, enum faultnet_fault k,
                  unsigned permille) {
  unsigned sum = 0;
  int i;

  ASSERT(dir == FAULTNET_UP || dir == FAULTNET_DOWN);
  ASSERT(k > FAULTNET_PASS && k < FAULTNET_NFAULTS);
  pthread_mutex_lock(&f->mu);
  f->prob[dir][k] = permille;
  for (i = FAULTNET_DROP; i < FAULTNET_NFAULTS; i++)
    sum += f->prob[dir][i];
  pthread_mutex_unlock(&f->mu);
  ASSERT_LE(sum, 1000);
}

void faultnet_off(struct faultnet *f) {
  pthread_mutex_lock(&f->mu);
  memset(f->prob, 0, sizeof(f->prob));
  pthread_mutex_unlock(&f->mu);
}

void faultnet_set_server_port(struct faultnet *f, int port) {
  pthread_mutex_lock(&f->mu);
  f->server_port = port;
  pthread_mutex_unlock(&f->mu);
}

void faultnet_stats(struct faultnet *f, struct faultnet_stats *out) {
  if (!f->started) {
    *out = f->st; /* the thread has ended */
    return;
  }
  pthread_mutex_lock(&f->mu);
  *out = f->st;
  pthread_mutex_unlock(&f->mu);
}

void faultnet_join(struct faultnet *f) {
  if (!f->started)
    return;
  pthread_join(f->th, NULL);
  pthread_mutex_destroy(&f->mu);
  pthread_cond_destroy(&f->cv);
  f->started = false;
}

void faultnet_pause(struct faultnet *f) {
  long long deadline = proc_now_ms() + FN_PAUSE_WAIT_MS;

  pthread_mutex_lock(&f->mu);
  f->pause = true;
  while (!f->paused && !f->ended) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 10 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    (void)pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    if (proc_now_ms() > deadline) {
      pthread_mutex_unlock(&f->mu);
      test_fail(__FILE__, __LINE__, "faultnet: the proxy did not pause");
    }
  }
  pthread_mutex_unlock(&f->mu);
}

void faultnet_resume(struct faultnet *f) {
  pthread_mutex_lock(&f->mu);
  f->pause = false;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
}

void faultnet_stop(struct faultnet *f) {
  if (!f->started)
    return;
  pthread_mutex_lock(&f->mu);
  f->stopping = true;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  faultnet_join(f);
}
