/* SPDX-License-Identifier: MIT */
/* What the structure-aware fuzz targets (fuzz_session, fuzz_client) share:
 * a reader that turns the fuzzer's bytes into choices (in the style of
 * libFuzzer's FuzzedDataProvider: every read succeeds, an exhausted input
 * reads as zeros), a builder of Changes whose ids, scopes, version vectors
 * and payloads come from those choices, and loopback sockets whose every
 * wait has a deadline. A broken invariant calls fz_fail, which prints and
 * aborts, so libFuzzer saves the input. */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fieldsync.pb-c.h"
#include "fsp_frame.h"
#include "fsp_merge.h"
#include "fsp_msg.h"

/* Every network wait of a fuzz target: past it, the peer is hung. */
#define FZ_WAIT_MS 5000

/* Prints "fuzz invariant broken: ..." and aborts. */
void fz_fail(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2), noreturn))
#endif
    ;
#define FZ_CHECK(expr)                                                         \
  do {                                                                         \
    if (!(expr))                                                               \
      fz_fail("%s:%d: %s", __FILE__, __LINE__, #expr);                         \
  } while (0)

/* ---- choices from the input -------------------------------------------- */

struct fz_in {
  const uint8_t *p;
  size_t n;
};

uint8_t fz_u8(struct fz_in *in);
uint32_t fz_u32(struct fz_in *in);
uint64_t fz_u64(struct fz_in *in);
/* Uniform enough in [0, n); n > 0. */
uint32_t fz_below(struct fz_in *in, uint32_t n);
/* True with probability about pct / 100. */
bool fz_chance(struct fz_in *in, unsigned pct);
/* Up to max bytes into out (length from the input); returns the count. */
size_t fz_bytes(struct fz_in *in, uint8_t *out, size_t max);
bool fz_done(const struct fz_in *in);

/* ---- ids and changes --------------------------------------------------- */

/* Ids of one input: a 4-byte salt keeps inputs apart in a shared store,
 * then a kind byte and an index. */
#define FZ_VISITS 4
#define FZ_SERVICES 2
#define FZ_RECORDS 6
#define FZ_REPLICAS 4

struct fz_ids {
  uint8_t visit[FZ_VISITS][16];
  uint8_t service[FZ_SERVICES][16];
  uint8_t record[FZ_RECORDS][16];
  uint8_t replica[FZ_REPLICAS][16]; /* ascending */
};

void fz_ids_init(struct fz_ids *ids, uint32_t salt);

#define FZ_MAX_VV 4
#define FZ_PAYLOAD_MAX 600

/* One Change and all it points to. */
struct fz_change {
  Fieldsync__Change c;
  Fieldsync__RecordKey key;
  Fieldsync__ScopeKey scope;
  Fieldsync__Version v;
  Fieldsync__VvEntry e[FZ_MAX_VV];
  Fieldsync__VvEntry *ep[FZ_MAX_VV];
  uint8_t id[16];
  uint8_t scope_id[16];
  uint8_t hash[FSP_HASH_LEN];
  uint8_t payload[FZ_PAYLOAD_MAX];
  char text[48];
};

/* Fills c from the input: mostly a valid change of a record of ids (a
 * visit, a service or a visit- or service-scoped record, whose payload
 * names its scope) with a canonical version vector over ids' replicas,
 * sometimes a tombstone, and now and then a flaw the server must refuse
 * (a scope that differs from the payload's, a payload that does not
 * decode, a wrong hash). The hash is right unless the flaw is the hash. */
void fz_change_make(struct fz_change *c, struct fz_in *in,
                    const struct fz_ids *ids);

/* A scope key of ids chosen by the input (kind and id). */
void fz_scope_make(Fieldsync__ScopeKey *k, uint8_t id[16], struct fz_in *in,
                   const struct fz_ids *ids);

/* ---- sockets ----------------------------------------------------------- */

/* A listening socket on 127.0.0.1 (port 0: any); *port gets the port. */
int fz_listen(int *port);
/* Connects to 127.0.0.1:port (non-blocking afterwards); -1 on failure. */
int fz_dial(int port);
/* Sends all of p within FZ_WAIT_MS. Returns 0, or -1 when the peer reset
 * or closed (an ordinary outcome); a stall past the deadline is a hang
 * and fails. */
int fz_send(int fd, const void *p, size_t n);

/* Reads frames from a socket through the proto/ framing. */
struct fz_reader {
  int fd;
  struct fsp_frame_decoder dec;
  uint8_t buf[16384];
  size_t off;
  size_t len;
  bool eof;
};

void fz_reader_init(struct fz_reader *r, int fd, uint32_t max_frame);
void fz_reader_close(struct fz_reader *r);
/* The next frame body (fsp_malloc'd, the caller frees it) into *body: 1,
 * or 0 at end of stream (EOF or reset), or -1 when wait_ms passed first,
 * or -2 when the bytes are not a valid frame stream. */
int fz_reader_next(struct fz_reader *r, int wait_ms, uint8_t **body,
                   size_t *len);

#endif
