/* SPDX-License-Identifier: MIT */
/* The writer thread: every write to the store happens here, with group
 * commit. While one transaction commits (and fsyncs), pushes queue up; the
 * next transaction takes them all, so many sessions' batches share one
 * fsync. A job's reply is built only after its transaction committed, and
 * handed back to the loop thread through a uv_async. After an I/O error
 * (disk full, EIO, a failed fsync) the writer never commits on that
 * connection again: it closes it and opens another (PostgreSQL's lesson
 * from "fsyncgate": a failed fsync cannot be retried), and while that
 * fails every push gets ERR_STORAGE and the reopen is retried with a
 * bounded backoff. */
#include <stdio.h>
#include <string.h>

#include "srv.h"

/* Most records one group-commit transaction takes from the queue. */
#define SRV_GROUP_COMMIT_RECORDS 20000u
/* Backoff between attempts to reopen a failed store connection: it
 * doubles from the first to the last (ms). Attempts are made only when a
 * push is waiting, so an idle server does nothing. */
#define SRV_REOPEN_FIRST_MS 50u
#define SRV_REOPEN_MAX_MS 1000u

/* Store errors after which a connection is not trusted: an I/O error, a
 * full disk or a failed fsync (EIO), or a damaged page (ECORRUPT). */
static bool io_class(int rc) {
  return rc == SRV_STORE_EIO || rc == SRV_STORE_ECORRUPT;
}

/* Builds job's PushAck from its outcomes (writer thread). */
static void build_ack(struct srv *srv, struct srv_job *job,
                      const struct srv_outcome *out, size_t n) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__PushAck ack = FIELDSYNC__PUSH_ACK__INIT;
  Fieldsync__RecordOutcome *o = NULL;
  Fieldsync__RecordOutcome **op = NULL;
  Fieldsync__Change *const *ch = job->msg.env->push->changes;
  size_t i;

  if (n > 0) {
    o = fsp_calloc(n, sizeof(*o));
    op = fsp_calloc(n, sizeof(*op));
    if (o == NULL || op == NULL) {
      job->rc = SRV_STORE_ENOMEM;
      snprintf(job->err, sizeof(job->err), "out of memory building the ack");
      goto done;
    }
  }
  for (i = 0; i < n; i++) {
    fieldsync__record_outcome__init(&o[i]);
    o[i].key = ch[i]->key;
    o[i].has_hash = 1;
    o[i].hash = ch[i]->version->hash;
    o[i].has_outcome = 1;
    o[i].outcome = (Fieldsync__Outcome)out[i].outcome;
    if (out[i].outcome == FIELDSYNC__OUTCOME__OUTCOME_REFUSED) {
      o[i].has_reason_code = 1;
      o[i].reason_code = (Fieldsync__ErrorCode)out[i].reason_code;
      job->refused++;
    }
    if (out[i].outcome == FIELDSYNC__OUTCOME__OUTCOME_CONFLICT)
      job->conflicts++;
    if (out[i].reason[0] != '\0')
      o[i].reason = (char *)out[i].reason;
    op[i] = &o[i];
  }
  ack.has_batch_id = 1;
  ack.batch_id = job->msg.env->push->batch_id;
  ack.n_outcomes = n;
  ack.outcomes = op;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH_ACK;
  env.push_ack = &ack;
  if (fsp_msg_encode_frame(&env, srv->cfg.max_frame, &job->frame,
                           &job->frame_len) != 0) {
    job->rc = SRV_STORE_ENOMEM;
    snprintf(job->err, sizeof(job->err), "cannot encode the ack");
  }
done:
  fsp_free(o);
  fsp_free(op);
}

/* Runs one transaction over a list of jobs. Returns true when the store
 * reported an I/O-class error (then no job of a failed commit is acked). */
static bool run_batch(struct srv *srv, struct srv_job *jobs) {
  struct srv_writer *w = &srv->writer;
  struct srv_job *job;
  struct srv_outcome **outs;
  size_t njobs = 0;
  size_t k;
  bool io_failed = false;
  int rc;

  for (job = jobs; job != NULL; job = job->next)
    njobs++;
  outs = fsp_calloc(njobs, sizeof(*outs));
  rc = outs == NULL ? SRV_STORE_ENOMEM : srv_store_begin(w->conn);
  io_failed = io_class(rc);
  for (job = jobs, k = 0; job != NULL; job = job->next, k++) {
    const Fieldsync__Push *p = job->msg.env->push;

    job->records = p->n_changes;
    if (rc != 0) {
      job->rc = rc;
      continue;
    }
    outs[k] = fsp_calloc(p->n_changes > 0 ? p->n_changes : 1,
                         sizeof(struct srv_outcome));
    if (outs[k] == NULL) {
      job->rc = SRV_STORE_ENOMEM;
      continue;
    }
    job->rc = srv_store_push(w->conn, &job->who, p->changes, p->n_changes,
                             &srv->lim, outs[k]);
    if (job->rc != 0)
      snprintf(job->err, sizeof(job->err), "%s", srv_store_errmsg(w->conn));
    io_failed |= io_class(job->rc);
  }
  if (rc == 0) {
    rc = srv_store_commit(w->conn);
    io_failed |= io_class(rc);
    if (rc != 0) {
      /* Nothing of this transaction is durable: no job gets an ack. */
      srv_store_rollback(w->conn);
      for (job = jobs; job != NULL; job = job->next) {
        job->rc = rc;
        snprintf(job->err, sizeof(job->err), "commit failed: %s",
                 srv_store_errmsg(w->conn));
      }
    }
  } else {
    for (job = jobs; job != NULL; job = job->next)
      snprintf(job->err, sizeof(job->err), "%s",
               outs != NULL ? srv_store_errmsg(w->conn) : "out of memory");
  }
  for (job = jobs, k = 0; job != NULL; job = job->next, k++) {
    if (job->rc == 0)
      build_ack(srv, job, outs[k], job->msg.env->push->n_changes);
    if (outs != NULL)
      fsp_free(outs[k]);
  }
  fsp_free(outs);
  w->commits++;
  w->batches += njobs;
  return io_failed;
}

/* Fails every job of a batch that cannot run: the store connection is
 * closed and reopening it has failed. */
static void fail_batch(struct srv_job *jobs) {
  struct srv_job *job;

  for (job = jobs; job != NULL; job = job->next) {
    job->records = job->msg.env->push->n_changes;
    job->rc = SRV_STORE_EIO;
    snprintf(job->err, sizeof(job->err),
             "the store is unavailable after an I/O error");
  }
}

/* Opens the writer's store connection again, unless the last attempt
 * failed less than its backoff ago. Logs the first failure of a run of
 * them, and the success that ends it. */
static void reopen(struct srv *srv) {
  struct srv_writer *w = &srv->writer;
  uint64_t now = uv_hrtime();
  char err[256];
  int rc;

  if (w->backoff_ms > 0 && now < w->retry_at)
    return;
  rc = srv_store_conn_open(srv->store, &w->conn, err, sizeof(err));
  if (rc == 0) {
    if (w->backoff_ms > 0)
      srv_log(SRV_INFO, "store_reopened", "last_backoff_ms=%u",
              w->backoff_ms);
    w->backoff_ms = 0;
    return;
  }
  if (w->backoff_ms == 0) {
    srv_log(SRV_ERROR, "store_reopen_failed", "error=\"%s\" retry_max_ms=%u",
            err, SRV_REOPEN_MAX_MS);
    w->backoff_ms = SRV_REOPEN_FIRST_MS;
  } else if (w->backoff_ms * 2 <= SRV_REOPEN_MAX_MS) {
    w->backoff_ms *= 2;
  } else {
    w->backoff_ms = SRV_REOPEN_MAX_MS;
  }
  w->retry_at = now + (uint64_t)w->backoff_ms * 1000000u;
}

/* Runs a batch on the writer's connection, first reopening it if an
 * earlier I/O error closed it; after an I/O error, closes it (a failed
 * fsync is never retried on it) and opens a new one, whose WAL read starts
 * from what was really committed. Logs once per change of state: the
 * first failure, and the commit that ends a run of them. */
static void run_or_fail(struct srv *srv, struct srv_job *jobs) {
  struct srv_writer *w = &srv->writer;

  if (w->conn == NULL)
    reopen(srv);
  if (w->conn == NULL) {
    fail_batch(jobs);
    return;
  }
  if (!run_batch(srv, jobs)) {
    if (w->failing)
      srv_log(SRV_INFO, "storage_recovered", "commits=%llu",
              (unsigned long long)w->commits);
    w->failing = false;
    return;
  }
  if (!w->failing)
    srv_log(SRV_ERROR, "storage_failed",
            "error=\"%s\" action=\"closing the store connection, nothing "
            "of the batch acknowledged\"",
            srv_store_errmsg(w->conn));
  w->failing = true;
  srv_store_conn_close(w->conn);
  w->conn = NULL;
  reopen(srv);
}

static void writer_main(void *arg) {
  struct srv *srv = arg;
  struct srv_writer *w = &srv->writer;

  for (;;) {
    struct srv_job *jobs;
    struct srv_job *last;

    uv_mutex_lock(&w->lock);
    while (w->queue == NULL && !w->stop)
      uv_cond_wait(&w->cond, &w->lock);
    if (w->queue == NULL && w->stop) {
      uv_mutex_unlock(&w->lock);
      break;
    }
    /* Take queued pushes up to a cap of records per transaction, so one
     * commit cannot hold thousands of sessions' acks (or their memory)
     * while it grows; the rest wait for the next transaction. */
    {
      size_t records = 0;
      jobs = w->queue;
      last = jobs;
      records += jobs->msg.env->push->n_changes;
      while (last->next != NULL &&
             records + last->next->msg.env->push->n_changes <=
                 SRV_GROUP_COMMIT_RECORDS) {
        last = last->next;
        records += last->msg.env->push->n_changes;
      }
      w->queue = last->next;
      if (w->queue == NULL)
        w->queue_tail = NULL;
      last->next = NULL;
    }
    uv_mutex_unlock(&w->lock);

    run_or_fail(srv, jobs);

    uv_mutex_lock(&w->lock);
    if (w->done_tail != NULL)
      w->done_tail->next = jobs;
    else
      w->done = jobs;
    w->done_tail = last;
    uv_mutex_unlock(&w->lock);
    uv_async_send(&w->async);
  }
}

/* Loop thread: hands finished jobs to their connections. */
static void on_done(uv_async_t *handle) {
  struct srv *srv = handle->data;
  struct srv_writer *w = &srv->writer;
  struct srv_job *jobs;

  uv_mutex_lock(&w->lock);
  jobs = w->done;
  w->done = NULL;
  w->done_tail = NULL;
  uv_mutex_unlock(&w->lock);
  while (jobs != NULL) {
    struct srv_job *next = jobs->next;
    jobs->next = NULL;
    srv_conn_job_done(jobs);
    jobs = next;
  }
}

int srv_writer_start(struct srv *srv) {
  struct srv_writer *w = &srv->writer;
  char err[256];
  int rc;

  memset(w, 0, sizeof(*w));
  rc = srv_store_conn_open(srv->store, &w->conn, err, sizeof(err));
  if (rc != 0) {
    srv_log(SRV_ERROR, "writer_failed", "error=\"%s\"", err);
    return rc;
  }
  if (uv_mutex_init(&w->lock) != 0 || uv_cond_init(&w->cond) != 0)
    return SRV_STORE_ENOMEM;
  rc = uv_async_init(srv->loop, &w->async, on_done);
  if (rc != 0)
    return rc;
  w->async.data = srv;
  rc = uv_thread_create(&w->thread, writer_main, srv);
  if (rc != 0)
    return rc;
  w->started = true;
  return 0;
}

void srv_writer_submit(struct srv *srv, struct srv_job *job) {
  struct srv_writer *w = &srv->writer;

  job->next = NULL;
  uv_mutex_lock(&w->lock);
  if (w->queue_tail != NULL)
    w->queue_tail->next = job;
  else
    w->queue = job;
  w->queue_tail = job;
  uv_cond_signal(&w->cond);
  uv_mutex_unlock(&w->lock);
}

void srv_writer_stop(struct srv *srv) {
  struct srv_writer *w = &srv->writer;

  if (!w->started)
    return;
  uv_mutex_lock(&w->lock);
  w->stop = true;
  uv_cond_signal(&w->cond);
  uv_mutex_unlock(&w->lock);
  uv_thread_join(&w->thread);
  on_done(&w->async); /* anything finished after the last wake-up */
  uv_close((uv_handle_t *)&w->async, NULL);
  srv_store_conn_close(w->conn);
  w->conn = NULL;
  uv_mutex_destroy(&w->lock);
  uv_cond_destroy(&w->cond);
  w->started = false;
}
