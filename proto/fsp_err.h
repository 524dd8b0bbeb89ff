/* SPDX-License-Identifier: MIT */
/* Error codes of the proto/ layer. Each code is defined once, in
 * FSP_ERRNO_MAP, which generates the enum, fsp_err_strerror() and
 * fsp_err_name(). Codes are never renumbered or reused; fsp_err_to_wire()
 * translates them to the wire ErrorCode sent in an Error message. */
#ifndef FSP_ERR_H
#define FSP_ERR_H

#include <stddef.h>

/* XX(name, value, wire code suffix, message) */
#define FSP_ERRNO_MAP(XX)                                                      \
  XX(NOMEM, -1, INTERNAL, "out of memory")                                     \
  XX(INVAL, -2, INTERNAL, "invalid argument")                                  \
  XX(FRAME_EMPTY, -3, MALFORMED, "frame length is zero")                       \
  XX(FRAME_TOO_BIG, -4, FRAME_TOO_LARGE, "frame is larger than the limit")     \
  XX(TRUNCATED, -5, MALFORMED, "input ends inside a frame")                    \
  XX(DECODE, -6, MALFORMED, "message is not valid protobuf")                   \
  XX(BUDGET, -7, LIMIT_EXCEEDED, "message needs more memory than allowed")     \
  XX(VERSION, -8, PROTOCOL_VERSION, "unsupported protocol version")            \
  XX(NO_BODY, -9, INVALID, "envelope has no body")                             \
  XX(MISSING, -10, INVALID, "a required field is missing")                     \
  XX(BAD_ID, -11, INVALID, "an id is not 16 bytes")                            \
  XX(BAD_VV, -12, INVALID, "version vector is not canonical")                  \
  XX(TOO_MANY, -13, LIMIT_EXCEEDED, "a count is over its limit")               \
  XX(BAD_ENUM, -14, INVALID, "an enum value is out of range")                  \
  XX(BAD_HASH, -15, INVALID, "content hash does not match the payload")        \
  XX(BAD_VALUE, -16, INVALID, "a field value is out of range")                 \
  XX(TOO_LONG, -17, LIMIT_EXCEEDED, "a string or bytes field is too long")     \
  XX(BAD_PAYLOAD, -18, INVALID, "payload does not decode as its collection")   \
  XX(BAD_SCOPE, -19, INVALID, "scope does not match the record")

enum fsp_err {
  FSP_OK = 0,
#define FSP_ERR_ENUM_(name, val, wire, msg) FSP_E##name = (val),
  FSP_ERRNO_MAP(FSP_ERR_ENUM_)
#undef FSP_ERR_ENUM_
};

/* A failure with its human detail, e.g. "push.changes[3].version.vv[1]:
 * replica ids not in ascending order". Filled by decoders and validators. */
struct fsp_error {
  int code;       /* FSP_E*, or FSP_OK */
  char msg[200];  /* always NUL-terminated */
};

/* Static English text for code; "unknown error" for an unknown code. */
const char *fsp_err_strerror(int code);
/* Static name such as "FSP_EBAD_VV"; "FSP_EUNKNOWN" for an unknown code. */
const char *fsp_err_name(int code);
/* The wire ErrorCode (FIELDSYNC__ERROR_CODE__ERR_*) for code, as an int so
 * this header needs no generated code. */
int fsp_err_to_wire(int code);

/* Sets err->code and formats err->msg (printf-style). Returns code, so a
 * caller can write `return fsp_error_set(err, FSP_EBAD_ID, "...")`.
 * err may be NULL. */
int fsp_error_set(struct fsp_error *err, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
