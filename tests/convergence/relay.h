/* SPDX-License-Identifier: MIT */
/* A one-session TCP relay on 127.0.0.1 for the convergence tests: a client
 * connects to the relay, the relay connects to fieldsyncd, and bytes flow
 * both ways on a thread of the relay's own. It can cut the session after a
 * number of bytes in one direction (a network drop at any point of a
 * sync), and it can hold one of the client's frames until a callback has
 * run (to act at an exact point of a sync: after the client read what it
 * pushes, before the server answers). Every wait has a deadline. */
#ifndef TEST_RELAY_H
#define TEST_RELAY_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#define RELAY_UP 0   /* client to server */
#define RELAY_DOWN 1 /* server to client */

struct relay {
  /* Set before relay_start (zero-initialise first). */
  int server_port;  /* fieldsyncd's port on 127.0.0.1 */
  int cut_dir;      /* RELAY_UP or RELAY_DOWN */
  size_t cut_after; /* cut after this many bytes in cut_dir; 0: never */
  /* Hold the client's frame number hold_frame (1 is its Hello) until
   * hold_cb(hold_data) has returned; 0: hold nothing. hold_cb runs on the
   * relay's thread. */
  unsigned hold_frame;
  void (*hold_cb)(void *data);
  void *hold_data;

  /* Results. */
  char addr[64]; /* "127.0.0.1:PORT" to give the client */
  bool cut;      /* the relay cut the session */
  bool held;     /* hold_cb ran */
  size_t up;     /* bytes relayed client to server */
  size_t down;   /* bytes relayed server to client */

  /* Private. */
  int lfd;
  pthread_t th;
  bool started;
};

/* Listens on 127.0.0.1 port 0 and starts the relay's thread, which serves
 * one session. Fails the test on error. */
void relay_start(struct relay *r);
/* Waits for the session to end (the relay gives up after 30 s) and joins
 * the thread. Call exactly once after relay_start. */
void relay_join(struct relay *r);

#endif
