/* SPDX-License-Identifier: MIT */
/* faultnet: a frame-aware fault proxy on 127.0.0.1 for network-fault tests
 * (issue 6), the transport seam between libfieldsync clients and
 * fieldsyncd. A client connects to the proxy, the proxy dials the server,
 * and every frame (PROTOCOL.md "Framing": a 4-byte big-endian length and a
 * body) is, per direction and from a seeded PRNG with per-mille
 * probabilities, passed, dropped, duplicated, delayed, swapped with the
 * next frame of its direction, or the connection is cut (both sides
 * closed, between frames or after part of one). Acks travel through it
 * too, so a lost PushAck leaves the client to retry. Faults can be turned
 * off at run time (the "faults stop" phase); frames already held still go
 * out, in order. It also does the two scripted faults of the convergence
 * tests: a cut after N bytes in one direction, and holding one client
 * frame until a callback has run.
 *
 * It works on plaintext only. Under TLS a dropped, duplicated or reordered
 * record, or a changed byte, fails the record's authentication, and TLS
 * (correctly) refuses the rest of the stream: frames are not visible and
 * the only faults that make sense there are cuts and delays.
 *
 * The proxy runs one thread of its own with poll, serves several sessions
 * at once, and is bounded by a deadline (its whole life) and by an idle
 * limit per session; sends to a peer that stops reading time out. */
#ifndef TEST_FAULTNET_H
#define TEST_FAULTNET_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAULTNET_UP 0   /* client to server */
#define FAULTNET_DOWN 1 /* server to client */

/* What happens to one frame. */
enum faultnet_fault {
  FAULTNET_PASS,    /* forwarded as it is */
  FAULTNET_DROP,    /* never forwarded */
  FAULTNET_DUP,     /* forwarded twice */
  FAULTNET_DELAY,   /* held 1..delay_max_ms; later frames wait behind it */
  FAULTNET_REORDER, /* held until the next frame of its direction has gone
                     * out first; alone after reorder_wait_ms */
  FAULTNET_CUT,     /* both sides closed instead: before the frame, or
                     * after a random part of it; by FIN or by RST */
  FAULTNET_NFAULTS
};

/* Sessions served at once; more wait in the listen queue. */
#define FAULTNET_MAX_SESSIONS 16

/* What the proxy did so far. */
struct faultnet_stats {
  unsigned long frames[2][FAULTNET_NFAULTS]; /* per direction and fault */
  unsigned long swaps;    /* reordered frames that a later frame passed */
  unsigned long cuts_mid; /* cuts inside a frame (the others: between) */
  unsigned long cuts_rst; /* cuts by a reset (RST; the others: FIN) */
  unsigned long sessions; /* sessions accepted */
  size_t bytes[2];        /* bytes received per direction */
  bool cut;               /* a scripted cut (cut_after) happened */
  bool held;              /* hold_cb ran */
};

struct faultnet_session;

struct faultnet {
  /* Set before faultnet_start (zero-initialise first). */
  int server_port;          /* fieldsyncd's port on 127.0.0.1 */
  uint64_t seed;            /* the PRNG's seed */
  unsigned delay_max_ms;    /* 0: 200 */
  unsigned reorder_wait_ms; /* 0: 100 */
  unsigned deadline_ms;     /* the proxy's whole life; 0: 600,000 */
  unsigned max_sessions;    /* stop accepting after this many; 0: no limit */
  /* Scripted: cut a session after cut_after bytes in direction cut_dir,
   * forwarding exactly those bytes (0: never). */
  int cut_dir;
  size_t cut_after;
  /* Scripted: hold the client's frame number hold_frame (1 is its Hello)
   * of the first session until hold_cb(hold_data) has returned (0: hold
   * nothing). hold_cb runs on the proxy's thread, and no byte moves in any
   * session meanwhile. */
  unsigned hold_frame;
  void (*hold_cb)(void *data);
  void *hold_data;

  /* Result: "127.0.0.1:PORT", the address to give the client. */
  char addr[64];

  /* Private. From prob to ended, guarded by mu while the thread runs; the
   * sessions belong to the thread. */
  pthread_mutex_t mu;
  unsigned prob[2][FAULTNET_NFAULTS]; /* per mille; PASS is the rest */
  struct faultnet_stats st;
  uint64_t rng;
  bool stopping;
  pthread_cond_t cv; /* pause, paused and ended change */
  bool pause;        /* faultnet_pause asks the thread to wait */
  bool paused;       /* the thread waits */
  bool ended;        /* the thread has left its loop */
  int lfd;
  pthread_t th;
  bool started;
  struct faultnet_session *sess[FAULTNET_MAX_SESSIONS];
};

/* Listens on 127.0.0.1 port 0 (f->addr) and starts the proxy's thread.
 * Faults start off. Fails the test on error. */
void faultnet_start(struct faultnet *f);
/* Sets the probability (per mille, per frame) of fault k in direction dir
 * (FAULTNET_UP or FAULTNET_DOWN); takes effect for the next frame. The
 * probabilities of one direction must add up to at most 1000. Call it (and
 * the functions below) after faultnet_start, from any thread. */
void faultnet_set(struct faultnet *f, int dir, enum faultnet_fault k,
                  unsigned permille);
/* Turns every fault off, in both directions: the faults stop. */
void faultnet_off(struct faultnet *f);
/* New sessions dial this port from now on (the server restarted). */
void faultnet_set_server_port(struct faultnet *f, int port);
/* Makes the proxy's thread wait, holding no lock (the allocator's
 * included), until faultnet_resume: call it around fork() when the child
 * does more than exec, since a lock held by another thread at the fork
 * stays held in the child forever. Sessions make no progress meanwhile. */
void faultnet_pause(struct faultnet *f);
void faultnet_resume(struct faultnet *f);
/* Copies the figures so far into out. */
void faultnet_stats(struct faultnet *f, struct faultnet_stats *out);
/* Waits for the thread to end by itself (max_sessions served, or the
 * deadline) and joins it. */
void faultnet_join(struct faultnet *f);
/* Ends every session, stops the thread and joins it. Call once, after
 * faultnet_start; faultnet_join or faultnet_stop, not both. */
void faultnet_stop(struct faultnet *f);
/* "pass", "drop", "dup", "delay", "reorder" or "cut". */
const char *faultnet_fault_name(enum faultnet_fault k);

/* How a libfieldsync sync through the proxy may fail when the faults
 * explain it. */
enum faultnet_failure {
  FAULTNET_F_NETWORK,  /* FIELDSYNC_ENETWORK: a cut, or the peer gave up */
  FAULTNET_F_TIMEOUT,  /* FIELDSYNC_ETIMEOUT: a frame lost or late */
  FAULTNET_F_PROTOCOL, /* FIELDSYNC_EPROTOCOL: a duplicated or reordered
                        * answer came out of turn */
  FAULTNET_F_SERVER,   /* FIELDSYNC_ESERVER with ERR_UNEXPECTED_MESSAGE
                        * (a duplicated or reordered request) or
                        * ERR_TIMEOUT (a lost request) */
  FAULTNET_F_NKINDS
};
/* The kind of a failed fieldsync_sync (rc its code, msg its
 * fieldsync_errmsg; msg NULL when unknown, e.g. from a child process), or
 * -1 when network faults do not explain it (a storage error, an internal
 * error, a refusal of the token...). */
int faultnet_failure(int rc, const char *msg);
/* "network", "timeout", "protocol" or "server". */
const char *faultnet_failure_name(int kind);

#endif
