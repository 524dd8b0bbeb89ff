/* SPDX-License-Identifier: MIT */
/* The proto/ error table: names, messages and wire codes from one X-macro. */
#include "fsp_err.h"

#include <stdarg.h>
#include <stdio.h>

#include "fieldsync.pb-c.h"

const char *fsp_err_strerror(int code) {
  switch (code) {
  case FSP_OK:
    return "success";
#define XX(name, val, wire, msg)                                               \
  case FSP_E##name:                                                            \
    return msg;
    FSP_ERRNO_MAP(XX)
#undef XX
  default:
    return "unknown error";
  }
}

const char *fsp_err_name(int code) {
  switch (code) {
  case FSP_OK:
    return "FSP_OK";
#define XX(name, val, wire, msg)                                               \
  case FSP_E##name:                                                            \
    return "FSP_E" #name;
    FSP_ERRNO_MAP(XX)
#undef XX
  default:
    return "FSP_EUNKNOWN";
  }
}

int fsp_err_to_wire(int code) {
  switch (code) {
#define XX(name, val, wire, msg)                                               \
  case FSP_E##name:                                                            \
    return FIELDSYNC__ERROR_CODE__ERR_##wire;
    FSP_ERRNO_MAP(XX)
#undef XX
  default:
    return FIELDSYNC__ERROR_CODE__ERR_INTERNAL;
  }
}

int fsp_error_set(struct fsp_error *err, int code, const char *fmt, ...) {
  va_list ap;

  if (err == NULL)
    return code;
  err->code = code;
  va_start(ap, fmt);
  vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
  va_end(ap);
  return code;
}
