/* SPDX-License-Identifier: MIT */
/* The event loop around the connections: listening (and pausing it when
 * accept fails), the housekeeping timer (deadlines, revocations, shutdown
 * progress; Redis's serverCron), SIGINT/SIGTERM, the pool of reader
 * connections lent to worker threads, and start/stop. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srv.h"
#include "srv_loop.h"
#include "srv_tls.h"

#define CRON_MS 100
/* How often the auth epoch is polled: a revoked device's sessions end
 * within this (plus one job) of the revocation's commit. */
#define REVOKE_POLL_MS 200
/* How long accepting pauses after accept failed and libuv could not shed
 * the connection (on_connection). */
#define ACCEPT_PAUSE_MS 500

struct srv_store_conn *srv_reader_take(struct srv *srv) {
  struct srv_store_conn *c;

  uv_mutex_lock(&srv->readers_lock);
  while (srv->nreaders_free == 0)
    uv_cond_wait(&srv->readers_cond, &srv->readers_lock);
  c = srv->readers[--srv->nreaders_free];
  uv_mutex_unlock(&srv->readers_lock);
  return c;
}

void srv_reader_give(struct srv *srv, struct srv_store_conn *c) {
  uv_mutex_lock(&srv->readers_lock);
  srv->readers[srv->nreaders_free++] = c;
  uv_cond_signal(&srv->readers_cond);
  uv_mutex_unlock(&srv->readers_lock);
}

/* ---- revoked devices ---------------------------------------------------- */

static int cmp_id(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a;
  int64_t y = *(const int64_t *)b;

  return x < y ? -1 : x > y;
}

bool srv_revoked_has(const struct srv *srv, int64_t device_id) {
  return srv->nrevoked > 0 &&
         bsearch(&device_id, srv->revoked, srv->nrevoked,
                 sizeof(*srv->revoked), cmp_id) != NULL;
}

/* Adds ids[0..n) to the sorted set. Returns how many were new, or -1
 * when out of memory (then nothing is added). */
static long revoked_add(struct srv *srv, const int64_t *ids, size_t n) {
  int64_t *set;
  size_t k = 0;
  size_t i;

  if (n == 0)
    return 0;
  if (n > SIZE_MAX / sizeof(int64_t) - srv->nrevoked)
    return -1;
  set = fsp_realloc(srv->revoked, (srv->nrevoked + n) * sizeof(*set));
  if (set == NULL)
    return -1;
  memcpy(set + srv->nrevoked, ids, n * sizeof(*ids));
  qsort(set, srv->nrevoked + n, sizeof(*set), cmp_id);
  for (i = 0; i < srv->nrevoked + n; i++) /* drop duplicates */
    if (k == 0 || set[k - 1] != set[i])
      set[k++] = set[i];
  i = srv->nrevoked;
  srv->revoked = set;
  srv->nrevoked = k;
  return (long)(k - i);
}

/* Polls the auth epoch on the loop's own store connection (one indexed
 * read; a WAL reader never waits for the writer). When it moved, loads the
 * devices revoked since and ends their sessions. A failure is logged once
 * and retried at the next poll, from the same epoch. */
static void revoke_poll(struct srv *srv) {
  uint64_t epoch = 0;
  int64_t *ids = NULL;
  size_t n = 0;
  long fresh;
  int rc;

  if (srv->watch == NULL)
    return;
  rc = srv_store_auth_epoch(srv->watch, &epoch);
  if (rc == 0 && epoch != srv->auth_epoch)
    rc = srv_store_revoked_since(srv->watch, srv->auth_epoch, &ids, &n);
  if (rc != 0) {
    if (!srv->watch_failing)
      srv_log(SRV_ERROR, "revocation_watch",
              "error=\"%s\" (retrying every %d ms)",
              srv_store_errmsg(srv->watch), REVOKE_POLL_MS);
    srv->watch_failing = true;
    return;
  }
  if (srv->watch_failing)
    srv_log(SRV_INFO, "revocation_watch", "recovered epoch=%llu",
            (unsigned long long)epoch);
  srv->watch_failing = false;
  if (epoch == srv->auth_epoch)
    return;
  fresh = revoked_add(srv, ids, n);
  fsp_free(ids);
  if (fresh < 0) {
    srv_log(SRV_ERROR, "revocation_watch", "error=\"out of memory\"");
    return; /* the epoch stays: retried at the next poll */
  }
  srv_log(SRV_INFO, "revocations",
          "epoch=%llu devices=%zu new=%ld revoked_total=%zu",
          (unsigned long long)epoch, n, fresh, srv->nrevoked);
  srv->auth_epoch = epoch;
  if (fresh > 0)
    srv_conn_revoke(srv);
}

/* ---- accepting ---------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
  struct srv *srv = h->data;

  srv->listener_closed = true;
}

/* Stops accepting for ACCEPT_PAUSE_MS. libuv reports an accept error only
 * when it could not shed the connection itself (out of descriptors, it
 * accepts and closes the waiting peers on a spare descriptor it keeps, and
 * reports EMFILE/ENFILE only once that spare is gone too), and then tries
 * to accept again at once, in a loop, until accept stops failing: closing
 * the handle is the only way out of that loop. The socket, and its
 * backlog, live on in srv->listen_fd meanwhile. Logged once per episode (up
 * to the next connection accepted), not once per failure. */
static void accept_pause(struct srv *srv, int status) {
  uint64_t now = uv_now(srv->loop);

  srv->accept_refused++;
  if (srv->accept_paused_at == 0) {
    srv->accept_paused_at = now;
    srv_log(SRV_WARN, "accept_paused",
            "error=\"%s\" connections=%llu retry_ms=%d", uv_strerror(status),
            (unsigned long long)srv->stats.connections, ACCEPT_PAUSE_MS);
  }
  srv->accept_paused = true;
  srv->accept_resume_at = now + ACCEPT_PAUSE_MS;
  if (!uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

static void on_connection(uv_stream_t *server, int status);

/* Listens again on a new descriptor of the paused socket (cron). Out of
 * descriptors still, it stays paused and tries again later, silently. */
static void accept_resume(struct srv *srv) {
  int fd;
  int rc;

  if (!srv->accept_paused || srv->stopping || !srv->listener_closed ||
      uv_now(srv->loop) < srv->accept_resume_at)
    return;
  fd = fcntl(srv->listen_fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) {
    srv->accept_resume_at = uv_now(srv->loop) + ACCEPT_PAUSE_MS;
    return;
  }
  rc = uv_tcp_init(srv->loop, &srv->listener);
  if (rc != 0) {
    close(fd);
    goto fail;
  }
  srv->listener_closed = false;
  srv->listener.data = srv;
  rc = uv_tcp_open(&srv->listener, fd);
  if (rc != 0)
    close(fd); /* not the handle's: closing it leaves fd alone */
  else
    rc = uv_listen((uv_stream_t *)&srv->listener, SOMAXCONN, on_connection);
  if (rc != 0) {
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
    goto fail;
  }
  srv->accept_paused = false;
  return;
fail:
  srv_log(SRV_ERROR, "accept_resume_failed", "error=\"%s\"", uv_strerror(rc));
  srv->accept_resume_at = uv_now(srv->loop) + ACCEPT_PAUSE_MS;
}

/* A connection that could not be taken off the listener (out of memory)
 * pauses accepting like an accept error does: libuv would otherwise stop
 * watching the listener for good, and closing it closes that connection,
 * so its peer is refused at once instead of waiting unanswered. */
static void on_connection(uv_stream_t *server, int status) {
  struct srv *srv = server->data;

  if (status == 0)
    status = srv_conn_accept(srv);
  if (status != 0) {
    accept_pause(srv, status);
    return;
  }
  if (srv->accept_paused_at != 0) {
    srv_log(SRV_INFO, "accept_resumed", "paused_ms=%llu failures=%llu",
            (unsigned long long)(uv_now(srv->loop) - srv->accept_paused_at),
            (unsigned long long)srv->accept_refused);
    srv->accept_paused_at = 0;
    srv->accept_refused = 0;
  }
}

/* Makes room for max_connections descriptors beside the server's own
 * (Redis's adjustOpenFilesLimit): raises RLIMIT_NOFILE's soft limit as far
 * as needed and allowed, else lowers max_connections to fit, with a
 * warning. Then one connection past the limit is told ERR_BUSY, instead of
 * libuv shedding it without a word once descriptors run out. */
static void fit_fd_limit(struct srv *srv) {
  rlim_t own = SRV_RESERVED_FDS + SRV_BUSY_SLACK +
               SRV_FDS_PER_STORE_CONN * ((rlim_t)srv->cfg.readers + 2u);
  rlim_t need = (rlim_t)srv->cfg.max_connections + own;
  rlim_t fit; /* the connections that fit the limit we could get */
  struct rlimit rl;

  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
      rl.rlim_cur >= need)
    return;
  if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > rl.rlim_cur) {
    struct rlimit want = rl;

    want.rlim_cur =
        rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need ? rl.rlim_max : need;
    if (setrlimit(RLIMIT_NOFILE, &want) == 0)
      rl = want;
  }
  if (rl.rlim_cur >= need)
    return;
  fit = rl.rlim_cur > own + 1 ? rl.rlim_cur - own : 1;
  srv_log(SRV_WARN, "fd_limit",
          "rlimit_nofile=%llu max_connections=%u lowered_to=%llu",
          (unsigned long long)rl.rlim_cur, srv->cfg.max_connections,
          (unsigned long long)fit);
  srv->cfg.max_connections = (unsigned)fit;
}

static void close_readers(struct srv *srv) {
  size_t i;

  for (i = 0; i < srv->nreaders_free; i++)
    srv_store_conn_close(srv->readers[i]);
  srv->nreaders_free = 0;
  fsp_free(srv->readers);
  srv->readers = NULL;
}

/* Once every session has ended and no work is left: stop the writer,
 * close the store's connections and every handle, so uv_run returns. */
static void maybe_finish(struct srv *srv) {
  if (!srv->stopping || srv->conns != NULL || srv->jobs_in_pool > 0)
    return;
  srv_writer_stop(srv);
  close_readers(srv);
  if (srv->watch != NULL)
    srv_store_conn_close(srv->watch);
  srv->watch = NULL;
  uv_close((uv_handle_t *)&srv->cron, NULL);
  uv_close((uv_handle_t *)&srv->sigint, NULL);
  uv_close((uv_handle_t *)&srv->sigterm, NULL);
  srv_log(SRV_INFO, "stopped",
          "sessions=%llu records_in=%llu records_out=%llu conflicts=%llu "
          "refused=%llu errors=%llu commits=%llu",
          (unsigned long long)srv->stats.sessions,
          (unsigned long long)srv->stats.records_in,
          (unsigned long long)srv->stats.records_out,
          (unsigned long long)srv->stats.conflicts,
          (unsigned long long)srv->stats.refused,
          (unsigned long long)srv->stats.errors,
          (unsigned long long)srv->writer.commits);
}

static void on_cron(uv_timer_t *t) {
  struct srv *srv = t->data;

  srv->cron_ticks++;
  if (!srv->stopping && srv->cron_ticks % (REVOKE_POLL_MS / CRON_MS) == 0)
    revoke_poll(srv);
  accept_resume(srv);
  srv_conn_sweep(srv);
  maybe_finish(srv);
}

void srv_stop(struct srv *srv, const char *why) {
  if (srv->stopping)
    return;
  srv->stopping = true;
  srv_log(SRV_INFO, "stopping", "reason=%s connections=%llu", why,
          (unsigned long long)srv->stats.connections);
  if (!uv_is_closing((uv_handle_t *)&srv->listener))
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
  if (srv->listen_fd >= 0)
    close(srv->listen_fd); /* the socket closes with the handle */
  srv->listen_fd = -1;
  srv_conn_drain_all(srv);
  maybe_finish(srv);
}

static void on_signal(uv_signal_t *h, int signum) {
  srv_stop(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static int bind_listener(struct srv *srv) {
  struct sockaddr_storage ss;
  char name[64];
  int len = sizeof(ss);
  int rc;

  memset(&ss, 0, sizeof(ss));
  if (strcmp(srv->cfg.host, "localhost") == 0)
    rc = uv_ip4_addr("127.0.0.1", srv->cfg.port, (struct sockaddr_in *)&ss);
  else if (strchr(srv->cfg.host, ':') != NULL)
    rc = uv_ip6_addr(srv->cfg.host, srv->cfg.port,
                     (struct sockaddr_in6 *)&ss);
  else
    rc = uv_ip4_addr(srv->cfg.host, srv->cfg.port, (struct sockaddr_in *)&ss);
  if (rc != 0) {
    fprintf(stderr, "fieldsyncd: listen: \"%s\" is not an IP address\n",
            srv->cfg.host);
    return rc;
  }
  rc = uv_tcp_init(srv->loop, &srv->listener);
  if (rc != 0)
    return rc;
  srv->listener.data = srv;
  rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&srv->listener, SOMAXCONN, on_connection);
  if (rc == 0)
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
  if (rc == 0) {
    uv_os_fd_t fd;

    rc = uv_fileno((uv_handle_t *)&srv->listener, &fd);
    if (rc == 0) {
      srv->listen_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (srv->listen_fd < 0)
        rc = uv_translate_sys_error(errno);
    }
  }
  if (rc != 0) {
    fprintf(stderr, "fieldsyncd: cannot listen on %s:%d: %s\n", srv->cfg.host,
            srv->cfg.port, uv_strerror(rc));
    uv_close((uv_handle_t *)&srv->listener, NULL);
    return rc;
  }
  if (ss.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&ss, name, sizeof(name));
    printf("listening on [%s]:%d\n", name,
           ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  } else {
    uv_ip4_name((struct sockaddr_in *)&ss, name, sizeof(name));
    printf("listening on %s:%d\n", name,
           ntohs(((struct sockaddr_in *)&ss)->sin_port));
  }
  fflush(stdout);
  srv_log(SRV_INFO, "listening", "addr=%s db=%s transport=%s", name,
          srv->cfg.db_path, srv->tls != NULL ? "tls" : "plaintext");
  return 0;
}

int srv_run(const struct srv_config *cfg) {
  struct srv srv;
  char err[256];
  size_t i;
  int rc;

  memset(&srv, 0, sizeof(srv));
  srv.cfg = *cfg;
  srv.listen_fd = -1;
  srv.loop = uv_default_loop();
  fsp_limits_default(&srv.lim);
  srv.lim.max_frame = cfg->max_frame;
  srv.lim.max_batch = cfg->max_batch;
  srv.lim.budget = (size_t)cfg->max_frame * 8u + 64u * 1024u;
  signal(SIGPIPE, SIG_IGN);

  /* The certificate first: a bad one must stop the start before the store
   * is touched. */
  if (cfg->tls_cert[0] != '\0' &&
      srv_tls_open(&srv.tls, cfg->tls_cert, cfg->tls_key, err,
                   sizeof(err)) != 0) {
    fprintf(stderr, "fieldsyncd: %s\n", err);
    return 1;
  }
  rc = srv_store_open(cfg->db_path, &srv.store, err, sizeof(err));
  if (rc != 0) {
    fprintf(stderr, "fieldsyncd: %s\n", err);
    srv_tls_close(srv.tls);
    return 1;
  }
  srv_store_server_id(srv.store, srv.server_id);
  uv_mutex_init(&srv.readers_lock);
  uv_cond_init(&srv.readers_cond);
  srv.nreaders = cfg->readers;
  srv.readers = fsp_calloc(srv.nreaders, sizeof(*srv.readers));
  if (srv.readers == NULL) {
    fprintf(stderr, "fieldsyncd: out of memory\n");
    goto fail;
  }
  for (i = 0; i < srv.nreaders; i++) {
    if (srv_store_conn_open(srv.store, &srv.readers[i], err, sizeof(err)) !=
        0) {
      fprintf(stderr, "fieldsyncd: %s\n", err);
      goto fail;
    }
    srv.nreaders_free++;
  }
  /* The revocation watch starts from epoch 0, so the set begins with
   * every device revoked before this start. */
  if (srv_store_conn_open(srv.store, &srv.watch, err, sizeof(err)) != 0) {
    fprintf(stderr, "fieldsyncd: %s\n", err);
    goto fail;
  }
  revoke_poll(&srv);
  if (srv.watch_failing) {
    fprintf(stderr, "fieldsyncd: cannot read revoked devices: %s\n",
            srv_store_errmsg(srv.watch));
    goto fail;
  }
  fit_fd_limit(&srv);
  if (srv_writer_start(&srv) != 0) {
    fprintf(stderr, "fieldsyncd: cannot start the writer\n");
    goto fail;
  }
  if (bind_listener(&srv) != 0) {
    srv_writer_stop(&srv);
    goto fail;
  }
  uv_signal_init(srv.loop, &srv.sigint);
  uv_signal_init(srv.loop, &srv.sigterm);
  srv.sigint.data = &srv;
  srv.sigterm.data = &srv;
  uv_signal_start(&srv.sigint, on_signal, SIGINT);
  uv_signal_start(&srv.sigterm, on_signal, SIGTERM);
  uv_timer_init(srv.loop, &srv.cron);
  srv.cron.data = &srv;
  uv_timer_start(&srv.cron, on_cron, CRON_MS, CRON_MS);

  uv_run(srv.loop, UV_RUN_DEFAULT);

  uv_loop_close(srv.loop);
  srv_store_close(srv.store);
  srv_tls_close(srv.tls);
  uv_mutex_destroy(&srv.readers_lock);
  uv_cond_destroy(&srv.readers_cond);
  fsp_free(srv.revoked);
  return 0;
fail:
  uv_run(srv.loop, UV_RUN_DEFAULT); /* let closed handles finish */
  close_readers(&srv);
  if (srv.watch != NULL)
    srv_store_conn_close(srv.watch);
  fsp_free(srv.revoked);
  srv_store_close(srv.store);
  srv_tls_close(srv.tls);
  return 1;
}
