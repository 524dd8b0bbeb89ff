/* SPDX-License-Identifier: MIT */
/* fieldsyncd internals: the server state (one struct srv, reached through
 * handle->data), connections, jobs handed to the writer thread and the
 * worker pool, configuration and logging. */
#ifndef SRV_H
#define SRV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "fsp_frame.h"
#include "fsp_msg.h"
#include "srv_store.h"

#define SRV_VERSION "fieldsyncd/0.1.0"

/* ---- configuration (srv_config.c) -------------------------------------- */

struct srv_config {
  char db_path[1024];
  char host[256];
  int port;                      /* 0: any free port */
  unsigned max_connections;
  uint32_t max_frame;
  uint32_t max_batch;
  unsigned handshake_timeout_ms; /* Hello must arrive (and auth finish) */
  unsigned idle_timeout_ms;      /* between requests */
  unsigned frame_timeout_ms;     /* a frame begun must be whole by then */
  unsigned write_timeout_ms;     /* a peer must take queued bytes */
  size_t max_write_queue;        /* bytes queued to one peer before its
                                    requests wait (srv_conn.c, "Memory") */
  unsigned max_requests_per_s;   /* per connection, with a burst of as
                                    many; more wait. 0 = no limit */
  unsigned readers;              /* reader connections for workers */
  bool quiet;                    /* log warnings and errors only */
  char tls_cert[1024];           /* PEM certificate chain; "" = none */
  char tls_key[1024];            /* PEM private key of tls_cert */
  bool plaintext;                /* plain TCP, allowed on loopback only */
};

/* Descriptors fieldsyncd needs beside its connections: stdio, the
 * listener and its spare (srv->listen_fd), libuv's (epoll, its async and
 * signal pipes, its EMFILE spare), and room for the store's temporary
 * files; the store's own files are counted per connection to it
 * (SRV_FDS_PER_STORE_CONN: database, WAL and shared memory). */
#define SRV_RESERVED_FDS 32u
#define SRV_FDS_PER_STORE_CONN 3u
/* Connections past max_connections that are still told ERR_BUSY; past
 * these, new ones are closed at once, without an Error, so refusals cannot
 * use up the descriptors the store needs. */
#define SRV_BUSY_SLACK 32u

void srv_config_default(struct srv_config *c);
/* Parses argv (flags override a --config file). Prints usage and returns
 * 1 for --help; returns -1 with a message on stderr for bad input. The
 * result serves either TLS (tls_cert and tls_key) or, with plaintext,
 * plain TCP on a loopback address; anything else is bad input. */
int srv_config_parse(struct srv_config *c, int argc, char **argv);
/* True when host (an IP literal or "localhost") is a loopback address:
 * 127.0.0.0/8, ::1 or ::ffff:127.0.0.0/104. */
bool srv_config_is_loopback(const char *host);

/* ---- logging (srv_log.c): one line per event on stderr ----------------- */

enum srv_log_level { SRV_DEBUG, SRV_INFO, SRV_WARN, SRV_ERROR };
void srv_log_init(bool quiet);
void srv_log(enum srv_log_level level, const char *event, const char *fmt,
             ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- jobs -------------------------------------------------------------- */

enum srv_job_kind { SRV_JOB_AUTH, SRV_JOB_PUSH, SRV_JOB_PULL };

struct srv_conn;
struct srv_tls;
struct srv_tls_conn;

/* Work done off the loop for one connection. The loop thread owns a job
 * until it is queued; the worker or writer fills in the result; the loop
 * thread finishes it (srv_conn_job_done) and frees it. */
struct srv_job {
  enum srv_job_kind kind;
  struct srv *srv;
  struct srv_conn *conn;
  struct srv_job *next;          /* writer queues */
  uv_work_t work;                /* worker pool */
  /* input */
  char token[FSP_DEFAULT_MAX_STRING + 1]; /* Auth; wiped after use */
  uint8_t replica[16];           /* Auth: Hello.replica_id */
  struct srv_identity who;
  struct fsp_msg msg;            /* Push: the decoded envelope */
  uint64_t cursor;               /* Pull */
  uint32_t max_records;          /* Pull */
  struct srv_scope *held;        /* Pull.held_scopes (sorted), fsp_malloc */
  size_t nheld;
  bool has_backfill;             /* Pull.backfill_scope was given */
  struct srv_scope backfill;
  uint64_t backfill_after;
  int64_t now_ms;                /* Pull: Unix ms when it arrived */
  /* output */
  int rc;                        /* 0 or an SRV_STORE_E* code */
  char err[200];
  uint8_t *frame;                /* the reply frame, fsp_malloc */
  size_t frame_len;
  size_t records;                /* changes pushed or pulled */
  size_t conflicts;
  size_t refused;
  size_t removed;                /* Pull: scopes in removed_scopes */
  bool backfilling;              /* Pull: the page was a backfill */
};

void srv_job_free(struct srv_job *job);

/* ---- connections (srv_conn.c) ------------------------------------------ */

enum srv_conn_state {
  CONN_HELLO,   /* waiting for Hello */
  CONN_AUTH,    /* token check in flight */
  CONN_READY,   /* waiting for a request */
  CONN_BUSY,    /* a request is in flight; not reading */
  CONN_CLOSING  /* closing; freed in close_cb */
};

struct srv_conn {
  uv_tcp_t tcp;                 /* first: the handle's data is the conn */
  struct srv *srv;
  enum srv_conn_state state;
  struct srv_tls_conn *tls;     /* NULL: plain TCP */
  bool tls_up;                  /* the TLS handshake has finished */
  uint64_t id;
  char peer[64];
  struct fsp_frame_decoder dec;
  uint8_t *pending;             /* plaintext read while busy, not yet fed
                                   (with TLS, ciphertext not yet
                                   decrypted waits in the SSL's BIO) */
  size_t pending_len;
  size_t pending_off;           /* pending[0..off) already fed */
  size_t write_queue;           /* bytes handed to uv_write, not done */
  bool reading;
  bool close_after_write;       /* failing: an Error is on its way out */
  bool lingering;               /* the Error is out: FIN sent, input
                                   dropped until the peer closes */
  bool shutdown_pending;
  uv_shutdown_t shutdown_req;
  bool close_requested;         /* uv_close called */
  bool job_in_flight;
  bool draining;                /* server shutting down */
  uint64_t deadline;            /* uv_now() ms; 0 = none */
  uint64_t frame_deadline;      /* the frame in progress must be whole by
                                   then; 0 = no frame in progress */
  uint64_t write_deadline;      /* queued bytes must move by then; 0 =
                                   nothing waits in libuv's queue */
  size_t write_seen;            /* libuv's queue size at the last sweep */
  uint64_t credit;              /* requests it may start now, x 1000 */
  uint64_t credit_at;           /* uv_now() when credit was last filled */
  bool throttled;               /* a whole request waits in dec for credit;
                                   not reading (the sweep resumes it) */
  struct srv_identity who;
  bool authed;
  bool revoked;                 /* device revoked while a job was in
                                   flight: its reply is never sent */
  uint64_t records_in;
  uint64_t records_out;
  struct srv_conn *prev;
  struct srv_conn *next;
};

/* Accepts a pending connection on the listener. Returns 0, or a libuv
 * error (UV_ENOMEM) when the connection could not even be taken off the
 * listener: libuv then stops watching the listener until one is taken, so
 * the caller must pause accepting (srv_loop.c), which closes it. */
int srv_conn_accept(struct srv *srv);
/* Finishes a job on the loop thread: sends its reply and moves the
 * connection on. May close the connection. Frees the job. */
void srv_conn_job_done(struct srv_job *job);
/* Checks deadlines (housekeeping timer). */
void srv_conn_sweep(struct srv *srv);
/* Tells every connection the server is stopping. */
void srv_conn_drain_all(struct srv *srv);
/* Ends the sessions of devices in the revoked set (srv_revoked_has):
 * an idle one gets Error ERR_REVOKED and is closed; one with a job in
 * flight is marked, and the job's reply is replaced by that Error. */
void srv_conn_revoke(struct srv *srv);

/* ---- revoked devices (srv_loop.c) -------------------------------------- */

/* True when device_id has been revoked since the server started (or was
 * revoked before it: the set starts with every revoked device). Loop
 * thread only. */
bool srv_revoked_has(const struct srv *srv, int64_t device_id);

/* ---- the writer thread (srv_writer.c) ---------------------------------- */

struct srv_writer {
  uv_thread_t thread;
  uv_mutex_t lock;
  uv_cond_t cond;
  struct srv_job *queue;        /* waiting for the next transaction */
  struct srv_job *queue_tail;
  struct srv_job *done;         /* finished, for the loop thread */
  struct srv_job *done_tail;
  uv_async_t async;             /* wakes the loop for done jobs */
  struct srv_store_conn *conn;  /* NULL after an I/O error until reopened */
  bool stop;
  bool started;
  bool failing;                 /* an I/O error, no commit since (logged
                                   once) */
  uint64_t retry_at;            /* uv_hrtime() of the next reopen attempt */
  unsigned backoff_ms;
  uint64_t commits;
  uint64_t batches;
};

int srv_writer_start(struct srv *srv);
/* Queues a push job (loop thread). */
void srv_writer_submit(struct srv *srv, struct srv_job *job);
/* Stops the thread after the queue drains (loop thread). */
void srv_writer_stop(struct srv *srv);

/* ---- reader connections for the worker pool (srv_loop.c) --------------- */

struct srv_store_conn *srv_reader_take(struct srv *srv);
void srv_reader_give(struct srv *srv, struct srv_store_conn *c);

/* ---- the server -------------------------------------------------------- */

struct srv_stats {
  uint64_t sessions;      /* authenticated sessions opened */
  uint64_t connections;   /* currently open */
  uint64_t records_in;
  uint64_t records_out;
  uint64_t conflicts;
  uint64_t refused;
  uint64_t errors;        /* protocol, TLS and storage errors */
};

struct srv {
  uv_loop_t *loop;
  struct srv_config cfg;
  struct fsp_limits lim;
  struct srv_store *store;
  struct srv_tls *tls;          /* NULL: plain TCP (--plaintext) */
  uint8_t server_id[16];
  uv_tcp_t listener;
  /* A second descriptor of the listening socket: accepting pauses by
   * closing the listener handle (the only way out of libuv's accept loop
   * when it cannot shed a connection), and resumes on a dup of this, with
   * the socket and its backlog kept meanwhile (srv_loop.c). */
  int listen_fd;
  bool listener_closed;         /* the handle is closed (paused or stopping) */
  bool accept_paused;
  uint64_t accept_paused_at;    /* uv_now() ms */
  uint64_t accept_resume_at;
  uint64_t accept_refused;      /* accept errors in this pause episode */
  uv_signal_t sigint;
  uv_signal_t sigterm;
  uv_timer_t cron;
  uint64_t cron_ticks;
  /* Revocation watch (loop thread): its own store connection, the last
   * auth epoch seen, and the revoked device ids, sorted (grows only). */
  struct srv_store_conn *watch;
  uint64_t auth_epoch;
  bool watch_failing;           /* the last poll failed (logged once) */
  int64_t *revoked;
  size_t nrevoked;
  struct srv_writer writer;
  uv_mutex_t readers_lock;
  uv_cond_t readers_cond;
  struct srv_store_conn **readers;
  size_t nreaders_free;
  size_t nreaders;
  struct srv_conn *conns;
  uint64_t next_conn_id;
  unsigned jobs_in_pool;
  bool stopping;
  struct srv_stats stats;
};

#endif
