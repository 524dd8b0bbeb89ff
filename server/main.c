/* SPDX-License-Identifier: MIT */
/* fieldsyncd: the fieldsync server. Parses its configuration and runs the
 * loop (srv_loop.c). */
#include <stdio.h>

#include "srv.h"
#include "srv_loop.h"
#include "srv_fault.h"

int main(int argc, char **argv) {
  struct srv_config cfg;
  int rc;

  srv_config_default(&cfg);
  rc = srv_config_parse(&cfg, argc, argv);
  if (rc != 0)
    return rc > 0 ? 0 : 2;
  srv_log_init(cfg.quiet);
#ifdef FIELDSYNC_FAULT_SEAMS
  srv_fault_init();
#endif
  return srv_run(&cfg);
}
