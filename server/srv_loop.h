/* SPDX-License-Identifier: MIT */
/* Starting and stopping fieldsyncd (srv_loop.c). */
#ifndef SRV_LOOP_H
#define SRV_LOOP_H

#include "srv.h"

/* Runs the server until SIGINT/SIGTERM has drained it. Returns the exit
 * status (0, or 1 when it could not start). */
int srv_run(const struct srv_config *cfg);
/* Begins a clean stop: no new connections, sessions end after their
 * request in flight, then the store is closed. */
void srv_stop(struct srv *srv, const char *why);

#endif
