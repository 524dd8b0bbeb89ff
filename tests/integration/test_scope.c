/* SPDX-License-Identifier: MIT */
/* Scopes and roles end to end (issue 5). Raw FSP sessions against the real
 * fieldsyncd on 127.0.0.1 capture every frame the server sends, and each
 * pushed outcome and each pulled change is judged by an oracle written in
 * this file from the text of server/srv_policy.h, PROTOCOL.md "Scopes" and
 * srv_store.h (it never calls the server's policy code): the full matrix
 * role x collection x operation x (assigned / not assigned / expired), and
 * 10,000 random (device, record id, operation) triples with assignments
 * changing under open sessions. Then libfieldsync itself: backfill after
 * an assignment, removal with quarantine after unassignment and expiry,
 * revocation with a wipe, and a refused version kept until retried.
 *
 * Usage: test_scope FIELDSYNCD FIELDSYNC-ADMIN [TEST | --list].
 * $FIELDSYNC_SEED repeats the random run, $FIELDSYNC_KEEP_TMP=1 keeps the
 * temporary directory. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "fieldsync.h"
#include "fieldsync.pb-c.h"
#include "fsp_frame.h"
#include "fsp_merge.h"
#include "fsp_msg.h"
#include "harness.h"
#include "proc.h"
#include "wire.h"

/* Random triples, and how often an assignment changes among them. */
#define RANDOM_TRIPLES 10000
#define RANDOM_ADMIN_EVERY 200
/* Changes per Push in the random run (at most). */
#define RANDOM_BATCH 20
/* Devices that push (each owns one version-vector slot). */
#define MAXVV 16
/* Deadline (ms) for one frame from the server, and for a libfieldsync sync. */
#define RECV_TIMEOUT_MS 30000
#define SYNC_TIMEOUT_MS 30000
/* Bound on Pull round trips in one pull cycle. */
#define MAX_PULLS_PER_CYCLE 20000
/* Violations printed in full (all are counted). */
#define MAX_PRINTED 40

#define NCOLL 9 /* collection ids 1..8 */
#define NROLE 4 /* role ids 1..3 */

#define C_SERVICE FIELDSYNC__COLLECTION__COLLECTION_SERVICE
#define C_VISIT FIELDSYNC__COLLECTION__COLLECTION_VISIT
#define C_OBSERVATION FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION
#define C_NOTE FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE
#define C_REQUIREMENT FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT
#define C_RECOMMENDATION FIELDSYNC__COLLECTION__COLLECTION_RECOMMENDATION
#define C_CONCERN FIELDSYNC__COLLECTION__COLLECTION_CONCERN
#define C_ATTACHMENT FIELDSYNC__COLLECTION__COLLECTION_ATTACHMENT

#define R_INSPECTOR FIELDSYNC__ROLE__ROLE_INSPECTOR
#define R_EXPERT FIELDSYNC__ROLE__ROLE_EXPERT
#define R_HEAD_OFFICE FIELDSYNC__ROLE__ROLE_HEAD_OFFICE

#define K_VISIT FIELDSYNC__SCOPE_KIND__SCOPE_VISIT
#define K_SERVICE FIELDSYNC__SCOPE_KIND__SCOPE_SERVICE

#define O_APPLIED FIELDSYNC__OUTCOME__OUTCOME_APPLIED
#define O_KNOWN FIELDSYNC__OUTCOME__OUTCOME_ALREADY_KNOWN
#define O_CONFLICT FIELDSYNC__OUTCOME__OUTCOME_CONFLICT
#define O_REFUSED FIELDSYNC__OUTCOME__OUTCOME_REFUSED
#define O_STALE FIELDSYNC__OUTCOME__OUTCOME_STALE

static const char *fieldsyncd;
static const char *admin;
static char dir[256];
static char srvdb[320];
static struct test_server srv;
static uint64_t rng;

/* ==== the oracle ========================================================
 * Written from the comment in server/srv_policy.h and PROTOCOL.md
 * "Scopes", as explicit tables.
 *
 * Write: W_NO refused; W_YES allowed; W_OWN allowed when the user owns it:
 * for a create, the new version names the user; for an update, both the
 * stored record and the new version do; for a delete, the stored record
 * does. Index: [role][collection][op]. */
enum op { OP_C, OP_U, OP_D };
enum { W_NO, W_YES, W_OWN };

static const unsigned char write_rule[NROLE][NCOLL][3] =
    {
        [R_INSPECTOR] =
            {
                [C_SERVICE] = {W_NO, W_NO, W_NO},
                [C_VISIT] = {W_NO, W_OWN, W_NO},
                [C_OBSERVATION] = {W_YES, W_YES, W_NO},
                [C_NOTE] = {W_NO, W_NO, W_NO},
                [C_REQUIREMENT] = {W_YES, W_YES, W_NO},
                [C_RECOMMENDATION] = {W_YES, W_YES, W_NO},
                [C_CONCERN] = {W_YES, W_NO, W_NO},
                [C_ATTACHMENT] = {W_OWN, W_OWN, W_OWN},
            },
        [R_EXPERT] =
            {
                [C_SERVICE] = {W_NO, W_NO, W_NO},
                [C_VISIT] = {W_NO, W_NO, W_NO},
                [C_OBSERVATION] = {W_NO, W_NO, W_NO},
                [C_NOTE] = {W_OWN, W_OWN, W_OWN},
                [C_REQUIREMENT] = {W_NO, W_NO, W_NO},
                [C_RECOMMENDATION] = {W_NO, W_NO, W_NO},
                [C_CONCERN] = {W_NO, W_NO, W_NO},
                [C_ATTACHMENT] = {W_NO, W_NO, W_NO},
            },
        [R_HEAD_OFFICE] =
            {
                [C_SERVICE] = {W_YES, W_YES, W_YES},
                [C_VISIT] = {W_YES, W_YES, W_YES},
                [C_OBSERVATION] = {W_YES, W_YES, W_YES},
                [C_NOTE] = {W_YES, W_YES, W_YES},
                [C_REQUIREMENT] = {W_YES, W_YES, W_YES},
                [C_RECOMMENDATION] = {W_YES, W_YES, W_YES},
                [C_CONCERN] = {W_YES, W_YES, W_YES},
                [C_ATTACHMENT] = {W_YES, W_YES, W_YES},
            },
};

/* Read, within the device's visible scopes: [role][collection]. W_OWN: the
 * version's owner field names the user (a tombstone: the record's last
 * live version did). */
static const unsigned char read_rule[NROLE][NCOLL] = {
    [R_INSPECTOR] = {[C_SERVICE] = W_YES,
                     [C_VISIT] = W_YES,
                     [C_OBSERVATION] = W_YES,
                     [C_NOTE] = W_YES,
                     [C_REQUIREMENT] = W_YES,
                     [C_RECOMMENDATION] = W_YES,
                     [C_CONCERN] = W_YES,
                     [C_ATTACHMENT] = W_YES},
    [R_EXPERT] = {[C_SERVICE] = W_NO,
                  [C_VISIT] = W_YES,
                  [C_OBSERVATION] = W_NO,
                  [C_NOTE] = W_OWN,
                  [C_REQUIREMENT] = W_NO,
                  [C_RECOMMENDATION] = W_NO,
                  [C_CONCERN] = W_NO,
                  [C_ATTACHMENT] = W_NO},
    [R_HEAD_OFFICE] = {[C_SERVICE] = W_YES,
                       [C_VISIT] = W_YES,
                       [C_OBSERVATION] = W_YES,
                       [C_NOTE] = W_YES,
                       [C_REQUIREMENT] = W_YES,
                       [C_RECOMMENDATION] = W_YES,
                       [C_CONCERN] = W_YES,
                       [C_ATTACHMENT] = W_YES},
};

/* Scope kind per collection (proto/fsp_payload.c's registry) and whether
 * the scope is the record's own id, and whether it has an owner field. */
static const int coll_kind[NCOLL] = {
    [C_SERVICE] = K_SERVICE,     [C_VISIT] = K_VISIT,
    [C_OBSERVATION] = K_VISIT,   [C_NOTE] = K_VISIT,
    [C_REQUIREMENT] = K_SERVICE, [C_RECOMMENDATION] = K_SERVICE,
    [C_CONCERN] = K_SERVICE,     [C_ATTACHMENT] = K_VISIT};
static const bool coll_has_owner[NCOLL] = {[C_VISIT] = true,
                                           [C_OBSERVATION] = true,
                                           [C_NOTE] = true,
                                           [C_REQUIREMENT] = true,
                                           [C_ATTACHMENT] = true};
static const char *const coll_name[NCOLL] = {
    "?",           "service",        "visit",   "observation", "interview_note",
    "requirement", "recommendation", "concern", "attachment"};
static const char *const role_name[NROLE] = {"?", "inspector", "expert",
                                             "head_office"};
static const char *const op_name[3] = {"create", "update", "delete"};

static bool own_id_scope(int coll) {
  return coll == C_SERVICE || coll == C_VISIT;
}

/* ==== small helpers ===================================================== */

static void hex16(const uint8_t id[16], char out[33]) {
  static const char d[] = "0123456789abcdef";
  int i;

  for (i = 0; i < 16; i++) {
    out[2 * i] = d[id[i] >> 4];
    out[2 * i + 1] = d[id[i] & 15];
  }
  out[32] = '\0';
}

/* A fresh random id; tag and a counter make them distinct and readable in
 * dumps. */
static void new_id(uint8_t id[16], uint8_t tag) {
  static uint32_t n;
  uint64_t a = test_rand(&rng);
  uint64_t b = test_rand(&rng);

  memcpy(id, &a, 8);
  memcpy(id + 8, &b, 8);
  n++;
  id[0] = tag;
  id[1] = (uint8_t)(n >> 16);
  id[2] = (uint8_t)(n >> 8);
  id[3] = (uint8_t)n;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n == 0 ? 1 : n, size);

  ASSERT(p != NULL);
  return p;
}

static void *xrealloc(void *p, size_t size) {
  void *q = realloc(p, size == 0 ? 1 : size);

  ASSERT(q != NULL);
  return q;
}

/* ==== scopes ============================================================ */

struct skey {
  int kind;
  uint8_t id[16];
};

static int skey_cmp(const struct skey *a, const struct skey *b) {
  return fsp_scope_cmp(a->kind, a->id, b->kind, b->id);
}

static bool skey_eq(const struct skey *a, const struct skey *b) {
  return a->kind == b->kind && memcmp(a->id, b->id, 16) == 0;
}

static const char *skey_str(const struct skey *k, char buf[48]) {
  char h[33];

  hex16(k->id, h);
  snprintf(buf, 48, "%s:%s", k->kind == K_VISIT ? "visit" : "service", h);
  return buf;
}

/* A sorted set of scope keys. */
struct sset {
  struct skey *k;
  size_t n;
  size_t cap;
};

static bool sset_has(const struct sset *s, const struct skey *k) {
  size_t i;

  for (i = 0; i < s->n; i++)
    if (skey_eq(&s->k[i], k))
      return true;
  return false;
}

static void sset_add(struct sset *s, const struct skey *k) {
  size_t i;

  if (sset_has(s, k))
    return;
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 16;
    s->k = xrealloc(s->k, s->cap * sizeof(*s->k));
  }
  for (i = s->n; i > 0 && skey_cmp(&s->k[i - 1], k) > 0; i--)
    s->k[i] = s->k[i - 1];
  s->k[i] = *k;
  s->n++;
}

static void sset_del(struct sset *s, const struct skey *k) {
  size_t i;

  for (i = 0; i < s->n; i++)
    if (skey_eq(&s->k[i], k)) {
      memmove(&s->k[i], &s->k[i + 1], (s->n - i - 1) * sizeof(*s->k));
      s->n--;
      return;
    }
}

static void sset_free(struct sset *s) {
  free(s->k);
  memset(s, 0, sizeof(*s));
}

/* ==== version vectors (one slot per pushing device) ===================== */

struct vvec {
  uint64_t c[MAXVV];
};

/* The replica id of each slot: its first byte orders the slots, so slot
 * order is the wire's bytewise order. */
static uint8_t slot_replica[MAXVV][16];
static int nslots;

enum { VV_EQ, VV_GT, VV_LT, VV_CONC };

static int vv_cmp(const struct vvec *a, const struct vvec *b) {
  bool ge = true;
  bool le = true;
  int i;

  for (i = 0; i < MAXVV; i++) {
    if (a->c[i] < b->c[i])
      ge = false;
    if (a->c[i] > b->c[i])
      le = false;
  }
  if (ge && le)
    return VV_EQ;
  if (ge)
    return VV_GT;
  if (le)
    return VV_LT;
  return VV_CONC;
}

static void vv_join(struct vvec *a, const struct vvec *b) {
  int i;

  for (i = 0; i < MAXVV; i++)
    if (b->c[i] > a->c[i])
      a->c[i] = b->c[i];
}

/* From the wire; false when a replica is not one of ours. */
static bool vv_from_pb(struct vvec *v, const Fieldsync__Version *ver) {
  size_t i;

  memset(v, 0, sizeof(*v));
  for (i = 0; i < ver->n_vv; i++) {
    int s;
    for (s = 0; s < nslots; s++)
      if (memcmp(ver->vv[i]->replica.data, slot_replica[s], 16) == 0)
        break;
    if (s == nslots)
      return false;
    v->c[s] = ver->vv[i]->counter;
  }
  return true;
}

/* ==== the model of the server =========================================== */

struct mver {
  struct vvec vv;
  uint8_t hash[FSP_HASH_LEN];
  bool deleted;
  struct skey scope;
  char owner[40];
  bool has_service; /* visits: the service they belong to */
  uint8_t service[16];
};

struct mrec {
  uint8_t id[16];
  int coll;
  struct mver *cur; /* current versions (a conflict has several) */
  size_t ncur;
  struct mver *hist; /* every version the server stored */
  size_t nhist;
  char live_owner[40]; /* owner of the last live version stored */
  bool has_live;
  bool mixed;  /* current versions disagree on scope, owner or deletion */
  bool pinned; /* scope visits: never deleted by the generator */
};

struct user {
  char name[32];
  int role;
};

struct asg {
  int user;
  uint8_t visit[16];
  bool active;  /* assigned, no end */
  bool expired; /* assigned with an end in the past */
};

struct model {
  struct mrec *r;
  size_t n;
  size_t cap;
  int32_t *slot; /* open addressing: record index + 1, 0 free */
  size_t nslot;
  struct user u[16];
  int nusers;
  struct asg *a;
  size_t na;
  size_t capa;
};

static size_t id_hash(const uint8_t id[16]) {
  uint64_t h = 1469598103934665603ull;
  int i;

  for (i = 0; i < 16; i++)
    h = (h ^ id[i]) * 1099511628211ull;
  return (size_t)h;
}

static void model_rehash(struct model *m) {
  size_t i;

  free(m->slot);
  m->nslot = m->nslot ? m->nslot * 2 : 4096;
  m->slot = xcalloc(m->nslot, sizeof(*m->slot));
  for (i = 0; i < m->n; i++) {
    size_t h = id_hash(m->r[i].id) & (m->nslot - 1);
    while (m->slot[h] != 0)
      h = (h + 1) & (m->nslot - 1);
    m->slot[h] = (int32_t)i + 1;
  }
}

static struct mrec *model_find(struct model *m, const uint8_t id[16]) {
  size_t h;

  if (m->nslot == 0)
    return NULL;
  h = id_hash(id) & (m->nslot - 1);
  while (m->slot[h] != 0) {
    struct mrec *r = &m->r[m->slot[h] - 1];
    if (memcmp(r->id, id, 16) == 0)
      return r;
    h = (h + 1) & (m->nslot - 1);
  }
  return NULL;
}

/* The record id (collection coll), added empty when new. A known id of
 * another collection is a generator bug. */
static struct mrec *model_get(struct model *m, const uint8_t id[16], int coll) {
  struct mrec *r = model_find(m, id);

  if (r != NULL) {
    ASSERT_EQ(r->coll, coll);
    return r;
  }
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 1024;
    m->r = xrealloc(m->r, m->cap * sizeof(*m->r));
  }
  r = &m->r[m->n++];
  memset(r, 0, sizeof(*r));
  memcpy(r->id, id, 16);
  r->coll = coll;
  if ((m->n + 1) * 2 > m->nslot)
    model_rehash(m);
  else {
    size_t h = id_hash(id) & (m->nslot - 1);
    while (m->slot[h] != 0)
      h = (h + 1) & (m->nslot - 1);
    m->slot[h] = (int32_t)m->n;
  }
  return r;
}

static void model_free(struct model *m) {
  size_t i;

  for (i = 0; i < m->n; i++) {
    free(m->r[i].cur);
    free(m->r[i].hist);
  }
  free(m->r);
  free(m->slot);
  free(m->a);
  memset(m, 0, sizeof(*m));
}

static int model_user(struct model *m, const char *name, int role) {
  ASSERT(m->nusers < 16);
  snprintf(m->u[m->nusers].name, sizeof(m->u[0].name), "%s", name);
  m->u[m->nusers].role = role;
  return m->nusers++;
}

static int model_user_index(const struct model *m, const char *name) {
  int i;

  for (i = 0; i < m->nusers; i++)
    if (strcmp(m->u[i].name, name) == 0)
      return i;
  return -1;
}

static struct asg *model_asg(struct model *m, int user, const uint8_t visit[16],
                             bool add) {
  size_t i;

  for (i = 0; i < m->na; i++)
    if (m->a[i].user == user && memcmp(m->a[i].visit, visit, 16) == 0)
      return &m->a[i];
  if (!add)
    return NULL;
  if (m->na == m->capa) {
    m->capa = m->capa ? m->capa * 2 : 64;
    m->a = xrealloc(m->a, m->capa * sizeof(*m->a));
  }
  memset(&m->a[m->na], 0, sizeof(m->a[0]));
  m->a[m->na].user = user;
  memcpy(m->a[m->na].visit, visit, 16);
  return &m->a[m->na++];
}

static const struct mver *rec_stored(const struct mrec *r,
                                     const struct vvec *vv,
                                     const uint8_t hash[FSP_HASH_LEN]) {
  size_t i;

  for (i = 0; i < r->nhist; i++)
    if (vv_cmp(&r->hist[i].vv, vv) == VV_EQ &&
        memcmp(r->hist[i].hash, hash, FSP_HASH_LEN) == 0)
      return &r->hist[i];
  return NULL;
}

static bool rec_in_hist(const struct mrec *r, const struct vvec *vv,
                        const uint8_t hash[FSP_HASH_LEN]) {
  return rec_stored(r, vv, hash) != NULL;
}

static const struct mver *rec_current(const struct mrec *r,
                                      const struct vvec *vv,
                                      const uint8_t hash[FSP_HASH_LEN]) {
  size_t i;

  for (i = 0; i < r->ncur; i++)
    if (vv_cmp(&r->cur[i].vv, vv) == VV_EQ &&
        memcmp(r->cur[i].hash, hash, FSP_HASH_LEN) == 0)
      return &r->cur[i];
  return NULL;
}

/* The merge rule of PROTOCOL.md, on the model: the outcome a correct
 * server gives v, ignoring the policy. */
static int merge_outcome(const struct mrec *r, const struct mver *v) {
  size_t i;
  bool dominates_all = true;

  if (rec_current(r, &v->vv, v->hash) != NULL)
    return O_KNOWN;
  for (i = 0; i < r->ncur; i++)
    if (vv_cmp(&r->cur[i].vv, &v->vv) == VV_GT)
      return O_STALE;
  if (r->ncur == 0)
    return O_APPLIED;
  for (i = 0; i < r->ncur; i++)
    if (vv_cmp(&v->vv, &r->cur[i].vv) != VV_GT)
      dominates_all = false;
  return dominates_all ? O_APPLIED : O_CONFLICT;
}

/* Stores v in the model the way the server reported it. */
static void model_store(struct mrec *r, const struct mver *v, int outcome) {
  size_t i;
  size_t k = 0;

  if (outcome != O_APPLIED && outcome != O_CONFLICT && outcome != O_STALE)
    return;
  if (!rec_in_hist(r, &v->vv, v->hash)) {
    r->hist = xrealloc(r->hist, (r->nhist + 1) * sizeof(*r->hist));
    r->hist[r->nhist++] = *v;
  }
  if (outcome == O_STALE || rec_current(r, &v->vv, v->hash) != NULL)
    return;
  for (i = 0; i < r->ncur; i++)
    if (vv_cmp(&v->vv, &r->cur[i].vv) != VV_GT)
      r->cur[k++] = r->cur[i];
  r->cur = xrealloc(r->cur, (k + 1) * sizeof(*r->cur));
  r->cur[k++] = *v;
  r->ncur = k;
  if (!v->deleted) {
    snprintf(r->live_owner, sizeof(r->live_owner), "%s", v->owner);
    r->has_live = true;
  }
  r->mixed = false;
  for (i = 1; i < r->ncur; i++)
    if (!skey_eq(&r->cur[i].scope, &r->cur[0].scope) ||
        strcmp(r->cur[i].owner, r->cur[0].owner) != 0 ||
        r->cur[i].deleted != r->cur[0].deleted)
      r->mixed = true;
}

/* The service of visit record v as the server holds it: its live current
 * version's service_id. *ambiguous when the server's answer is not
 * pinned down by the written rules (a deleted or conflicting visit). */
static bool visit_service(const struct model *m, const uint8_t visit[16],
                          uint8_t service[16], bool *ambiguous) {
  const struct mrec *r = model_find((struct model *)m, visit);
  size_t i;

  if (r == NULL || r->ncur == 0)
    return false;
  for (i = 0; i < r->ncur; i++)
    if (r->cur[i].deleted || !r->cur[i].has_service ||
        memcmp(r->cur[i].service, r->cur[0].service, 16) != 0)
      *ambiguous = true;
  if (r->cur[0].deleted || !r->cur[0].has_service)
    return false;
  memcpy(service, r->cur[0].service, 16);
  return true;
}

/* Is scope k visible to user now? head_office: always. Inspector: an
 * active (assigned, not expired) visit, or the service of one. Expert:
 * an active visit. *ambiguous is set when the answer hangs on a visit the
 * written rules leave open (deleted, or in conflict over its service). */
static bool visible(const struct model *m, int user, const struct skey *k,
                    bool *ambiguous) {
  int role = m->u[user].role;
  size_t i;

  if (role == R_HEAD_OFFICE)
    return true;
  for (i = 0; i < m->na; i++) {
    const struct asg *a = &m->a[i];
    const struct mrec *r;
    bool amb = false;
    uint8_t svc[16];
    size_t j;
    if (a->user != user || !a->active)
      continue;
    if (k->kind == K_VISIT && memcmp(a->visit, k->id, 16) == 0)
      return true;
    if (k->kind != K_SERVICE || role != R_INSPECTOR)
      continue;
    if (visit_service(m, a->visit, svc, &amb) && !amb &&
        memcmp(svc, k->id, 16) == 0)
      return true;
    if (!amb)
      continue;
    r = model_find((struct model *)m, a->visit);
    for (j = 0; r != NULL && j < r->ncur; j++)
      if (r->cur[j].deleted ||
          (r->cur[j].has_service && memcmp(r->cur[j].service, k->id, 16) == 0))
        *ambiguous = true;
  }
  return false;
}

/* Every scope user may see now, sorted. */
static void visible_set(const struct model *m, int user, struct sset *out,
                        bool *ambiguous) {
  size_t i;

  out->n = 0;
  for (i = 0; i < m->na; i++) {
    const struct asg *a = &m->a[i];
    struct skey k;
    bool amb = false;
    if (a->user != user || !a->active)
      continue;
    k.kind = K_VISIT;
    memcpy(k.id, a->visit, 16);
    sset_add(out, &k);
    /* A visit in conflict over its service: which one counts is not
     * written down, so neither is listed (and *ambiguous says so). */
    if (m->u[user].role == R_INSPECTOR &&
        visit_service(m, a->visit, k.id, &amb) && !amb) {
      k.kind = K_SERVICE;
      sset_add(out, &k);
    }
    if (amb)
      *ambiguous = true;
  }
}

/* May user read version v of record r (in scope or not)? */
static bool readable(const struct model *m, int user, const struct mrec *r,
                     const struct mver *v) {
  int rule = read_rule[m->u[user].role][r->coll];

  if (rule == W_YES)
    return true;
  if (rule == W_NO)
    return false;
  if (!v->deleted)
    return strcmp(v->owner, m->u[user].name) == 0;
  return r->has_live && strcmp(r->live_owner, m->u[user].name) == 0;
}

/* For a tombstone readable() refuses: did user own some earlier live
 * version of r? The written rules do not say whose a tombstone is when the
 * record changed owner before it was deleted (the last owner's, the
 * first's, anyone's who held it), so that case is not judged; a tombstone
 * of a record the user never owned is. */
static bool tombstone_undecided(const struct model *m, int user,
                                const struct mrec *r, const struct mver *v) {
  size_t i;

  if (!v->deleted || read_rule[m->u[user].role][r->coll] != W_OWN)
    return false;
  for (i = 0; i < r->nhist; i++)
    if (!r->hist[i].deleted && strcmp(r->hist[i].owner, m->u[user].name) == 0)
      return true;
  return false;
}

/* ==== the oracle's verdict on one pushed version ======================== */

enum verdict { V_ALLOW, V_REFUSE, V_AMBIG };

struct expect {
  enum verdict v;
  int outcome;     /* with V_ALLOW: the merge outcome */
  int op;          /* OP_* as the server sees it */
  bool lie;        /* a tombstone naming another scope: ERR_INVALID is fine */
  const char *why; /* the rule that decides */
};

/* Is k visible to user: 1 yes, 0 no, -1 not decided by the written
 * rules. snap: the user's visible scopes when the Push arrived (NULL: the
 * model as it is now); snap_amb: that set was ambiguous. */
static int scope_vis(const struct model *m, int user, const struct skey *k,
                     const struct sset *snap, bool snap_amb) {
  bool amb = false;

  if (m->u[user].role == R_HEAD_OFFICE)
    return 1;
  if (snap != NULL) {
    if (sset_has(snap, k))
      return 1;
    return snap_amb && k->kind == K_SERVICE ? -1 : 0;
  }
  if (visible(m, user, k, &amb))
    return 1;
  return amb ? -1 : 0;
}

static struct expect oracle_push(const struct model *m, int user,
                                 const struct mrec *r, const struct mver *v,
                                 bool lie, const struct sset *snap,
                                 bool snap_amb) {
  struct expect e = {V_ALLOW, 0, OP_C, lie, "allowed"};
  int role = m->u[user].role;
  const char *name = m->u[user].name;
  bool owns_new;
  bool owns_stored = false;
  bool stored_known = true;
  int rule;
  size_t i;

  /* A version the server stored is answered before any authorisation. */
  if (rec_in_hist(r, &v->vv, v->hash)) {
    e.outcome = merge_outcome(r, v);
    e.why = "already stored: answered whatever the policy";
    return e;
  }
  e.op = r->ncur == 0 ? OP_C : v->deleted ? OP_D : OP_U;
  if (e.op == OP_C && v->deleted) {
    /* The generator never sends a tombstone of an unknown record. */
    e.v = V_AMBIG;
    e.why = "tombstone of a record the server lacks";
    return e;
  }
  if (role != R_HEAD_OFFICE) {
    /* Scopes: the new version's, and the stored record's. */
    bool any_vis = false;
    bool any_invis = false;
    bool undecided = false;
    int sv = scope_vis(m, user, &v->scope, snap, snap_amb);
    if (sv == 0) {
      e.v = V_REFUSE;
      e.why = "the version's scope is not visible to the user";
      return e;
    }
    for (i = 0; i < r->ncur; i++) {
      int c = scope_vis(m, user, &r->cur[i].scope, snap, snap_amb);
      if (c == 1)
        any_vis = true;
      else if (c == 0)
        any_invis = true;
      else
        undecided = true;
    }
    if (any_invis && !any_vis && !undecided) {
      e.v = V_REFUSE;
      e.why = "the stored record's scope is not visible to the user";
      return e;
    }
    if (any_invis || undecided || sv < 0) {
      e.v = V_AMBIG;
      e.why = any_invis
                  ? "stored versions in visible and invisible scopes"
                  : "a scope that hangs on a deleted or conflicting visit";
      return e;
    }
    if (lie) {
      e.v = V_REFUSE;
      e.why = "a tombstone naming another scope than the record's";
      return e;
    }
  }
  owns_new = !v->deleted && strcmp(v->owner, name) == 0;
  if (e.op != OP_C) {
    if (r->mixed || r->cur[0].deleted)
      stored_known = false;
    else
      owns_stored = strcmp(r->cur[0].owner, name) == 0;
  }
  rule = write_rule[role][r->coll][e.op];
  if (rule == W_NO) {
    e.v = V_REFUSE;
    e.why = "the role may not do this on this collection";
  } else if (rule == W_OWN) {
    bool ok;
    if (e.op != OP_C && !stored_known) {
      e.v = V_AMBIG;
      e.why = "owner of a deleted or conflicting record";
      return e;
    }
    ok = e.op == OP_C   ? owns_new
         : e.op == OP_U ? owns_stored && owns_new
                        : owns_stored;
    if (!ok) {
      e.v = V_REFUSE;
      e.why = "only the owner may do this";
    }
  }
  /* Written rule (srv_policy.h): an inspector's scopes follow their
   * visits' services, so only head office may move a visit to another
   * service. */
  if (e.v == V_ALLOW && role != R_HEAD_OFFICE && r->coll == C_VISIT &&
      e.op == OP_U) {
    if (!stored_known) {
      e.v = V_AMBIG;
      e.why = "service of a deleted or conflicting visit";
    } else if (r->cur[0].has_service &&
               (!v->has_service ||
                memcmp(r->cur[0].service, v->service, 16) != 0)) {
      e.v = V_REFUSE;
      e.why = "only head office may move a visit to another service";
    }
  }
  if (e.v == V_ALLOW)
    e.outcome = merge_outcome(r, v);
  return e;
}

static const char *outcome_name(int o) {
  switch (o) {
  case O_APPLIED:
    return "APPLIED";
  case O_KNOWN:
    return "ALREADY_KNOWN";
  case O_CONFLICT:
    return "CONFLICT";
  case O_REFUSED:
    return "REFUSED";
  case O_STALE:
    return "STALE";
  default:
    return "?";
  }
}

/* ==== counters and violations =========================================== */

struct tally_raw {
  uint64_t cells;
  uint64_t allowed;
  uint64_t refused;
  uint64_t ambiguous;
  uint64_t changes_pushed;
  uint64_t batches;
  uint64_t pull_cycles;
  uint64_t frames;
  uint64_t changes_checked;
  uint64_t backfill_frames;
  uint64_t removed_scopes;
  uint64_t violations; /* the oracle said no, the server did it */
  uint64_t contract;   /* other breaches of PROTOCOL.md/srv_store.h */
  uint64_t missing;    /* a readable current version never arrived */
  uint64_t printed;
};

static struct tally_raw T;
static uint64_t seed_used;

/* Records one failure of kind (a counter in T) with a description. */
static void flag(uint64_t *counter, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static void flag(uint64_t *counter, const char *fmt, ...) {
  va_list ap;

  (*counter)++;
  if (T.printed++ >= MAX_PRINTED)
    return;
  fprintf(stderr, "# %s: ",
          counter == &T.violations ? "VIOLATION"
          : counter == &T.missing  ? "MISSING"
                                   : "CONTRACT");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

/* ==== raw sessions ====================================================== */

/* One connection (dialled and written through tests/harness/wire.h) with a
 * buffered frame reader: wire_recv_env reads byte by byte, which costs a
 * system call per byte of a large Changes frame; this one reads in 64 KiB
 * chunks and keeps the bytes past a frame for the next. */
struct sess {
  int fd;
  struct fsp_frame_decoder dec;
  uint8_t in[65536];
  size_t off;
  size_t len;
};

static void sess_dial(struct sess *w) {
  memset(w, 0, sizeof(*w));
  w->fd = wire_dial(srv.port);
  fsp_frame_decoder_init(&w->dec, 0);
}

static void sess_close(struct sess *w) {
  if (w->fd >= 0)
    close(w->fd);
  w->fd = -1;
  fsp_frame_decoder_close(&w->dec);
}

static void sess_send(struct sess *w, Fieldsync__Envelope *env) {
  wire_send_env(w->fd, env);
}

/* Reads one frame into m (decoded and validated as a client would); false
 * when the server closed the connection first. A frame that does not
 * decode fails the test. */
static bool sess_recv(struct sess *w, struct fsp_msg *m) {
  long long deadline = proc_now_ms() + RECV_TIMEOUT_MS;
  struct fsp_limits lim;

  fsp_limits_default(&lim);
  memset(m, 0, sizeof(*m));
  for (;;) {
    while (w->off < w->len) {
      size_t used = 0;
      int rc = fsp_frame_feed(&w->dec, w->in + w->off, w->len - w->off, &used);
      if (rc < 0)
        test_fail(__FILE__, __LINE__, "server sent a bad frame header (%d)",
                  rc);
      w->off += used;
      if (rc == 1) {
        struct fsp_error err;
        uint8_t *body;
        size_t blen;
        fsp_frame_take(&w->dec, &body, &blen);
        if (fsp_msg_decode(m, body, blen, &lim, &err) != 0)
          test_fail(__FILE__, __LINE__, "server sent an invalid frame: %s",
                    err.msg);
        fsp_free(body);
        return true;
      }
    }
    {
      struct pollfd p = {w->fd, POLLIN, 0};
      ssize_t r;
      if (proc_now_ms() > deadline)
        test_fail(__FILE__, __LINE__, "no frame from the server in %d ms",
                  RECV_TIMEOUT_MS);
      if (poll(&p, 1, 200) <= 0)
        continue;
      r = recv(w->fd, w->in, sizeof(w->in), 0);
      if (r < 0 && errno == EINTR)
        continue;
      if (r <= 0)
        return false;
      w->off = 0;
      w->len = (size_t)r;
    }
  }
}

/* ==== devices =========================================================== */

struct local; /* what a device holds, per record (completeness) */

struct dev {
  int user; /* model user index */
  char label[48];
  char token[128];
  uint8_t replica[16];
  int slot; /* version-vector slot, or -1 for a device that never pushes */
  struct sess w;
  bool up;
  uint64_t ctr;   /* this replica's last counter */
  uint64_t batch; /* last batch id */
  /* pull state, as a client keeps it */
  uint64_t cursor;
  struct sset held;
  bool bf;
  struct skey bf_scope;
  uint64_t bf_next;
  /* per model record index: hashes received or acknowledged */
  struct local *loc;
  size_t nloc;
};

#define LOCAL_KEEP 8
struct local {
  bool has;
  uint8_t n;
  struct skey scope;      /* of the newest version held */
  uint32_t h[LOCAL_KEEP]; /* the versions held, as indexes into hist */
};

static struct local *dev_local(struct dev *d, size_t idx) {
  if (idx >= d->nloc) {
    size_t n = d->nloc ? d->nloc : 1024;
    while (n <= idx)
      n *= 2;
    d->loc = xrealloc(d->loc, n * sizeof(*d->loc));
    memset(d->loc + d->nloc, 0, (n - d->nloc) * sizeof(*d->loc));
    d->nloc = n;
  }
  return &d->loc[idx];
}

/* Keeps stored version h of record r (model index idx) in d's copy as a
 * replica merges it: a version dominated by one held is ignored, and ones
 * it dominates go. */
static void dev_hold(struct dev *d, size_t idx, const struct mrec *r,
                     size_t h) {
  struct local *l = dev_local(d, idx);
  const struct vvec *vv = &r->hist[h].vv;
  int i;
  int k = 0;

  if (!l->has)
    l->n = 0;
  for (i = 0; i < l->n; i++) {
    int c = vv_cmp(&r->hist[l->h[i]].vv, vv);
    if (l->h[i] == h || c == VV_GT)
      return;
  }
  for (i = 0; i < l->n; i++)
    if (vv_cmp(vv, &r->hist[l->h[i]].vv) != VV_GT)
      l->h[k++] = l->h[i];
  if (k == LOCAL_KEEP) {
    /* More siblings than kept: drop the oldest. */
    memmove(&l->h[0], &l->h[1], (LOCAL_KEEP - 1) * sizeof(l->h[0]));
    k--;
  }
  l->h[k] = (uint32_t)h;
  l->n = (uint8_t)(k + 1);
  l->has = true;
  l->scope = r->hist[h].scope;
}

static bool dev_holds(struct dev *d, size_t idx, const struct mrec *r,
                      const struct mver *v) {
  const struct local *l;
  int k;

  if (idx >= d->nloc || !d->loc[idx].has)
    return false;
  l = &d->loc[idx];
  for (k = 0; k < l->n; k++)
    if (vv_cmp(&r->hist[l->h[k]].vv, &v->vv) == VV_EQ &&
        memcmp(r->hist[l->h[k]].hash, v->hash, FSP_HASH_LEN) == 0)
      return true;
  return false;
}

/* Hello and Welcome on a new connection. */
static void dev_connect(struct model *m, struct dev *d) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Hello h = FIELDSYNC__HELLO__INIT;
  struct fsp_msg msg;

  sess_dial(&d->w);
  env.has_protocol_version = 1;
  env.protocol_version = FSP_PROTOCOL_VERSION;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_HELLO;
  env.hello = &h;
  h.has_protocol_version = 1;
  h.protocol_version = FSP_PROTOCOL_VERSION;
  h.has_replica_id = 1;
  h.replica_id.data = d->replica;
  h.replica_id.len = 16;
  h.device_token = d->token;
  h.client_version = "test_scope";
  sess_send(&d->w, &env);
  if (!sess_recv(&d->w, &msg))
    test_fail(__FILE__, __LINE__, "%s: closed instead of Welcome", d->label);
  if (msg.env->body_case != FIELDSYNC__ENVELOPE__BODY_WELCOME)
    test_fail(__FILE__, __LINE__, "%s: %s instead of Welcome (%s)", d->label,
              fsp_msg_body_name(msg.env),
              msg.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
                  ? msg.env->error->message
                  : "");
  ASSERT_STR_EQ(msg.env->welcome->user, m->u[d->user].name);
  ASSERT_EQ(msg.env->welcome->role, m->u[d->user].role);
  fsp_msg_close(&msg);
  d->up = true;
}

/* A device of user: a new token from fieldsync-admin and a new replica.
 * push: it gets a version-vector slot. */
static void dev_init(struct model *m, struct dev *d, int user, bool push) {
  const char *args[] = {"device", "add", m->u[user].name, NULL};
  char out[256];
  static int nth;

  memset(d, 0, sizeof(*d));
  d->w.fd = -1;
  d->user = user;
  snprintf(d->label, sizeof(d->label), "%s#%d", m->u[user].name, ++nth);
  proc_admin_run(admin, srvdb, args, out, sizeof(out));
  ASSERT(sscanf(out, "%127s", d->token) == 1);
  new_id(d->replica, 0x70);
  d->slot = -1;
  if (push) {
    ASSERT(nslots < MAXVV);
    d->slot = nslots;
    d->replica[0] = (uint8_t)(0x40 + nslots); /* slot order = byte order */
    memcpy(slot_replica[nslots], d->replica, 16);
    nslots++;
  }
}

static void dev_free(struct dev *d) {
  if (d->up)
    sess_close(&d->w);
  d->up = false;
  sset_free(&d->held);
  free(d->loc);
  d->loc = NULL;
  d->nloc = 0;
}

/* ==== building versions ================================================= */

#define MAX_PAYLOAD 384

/* One version to push, with everything the wire message points to. */
struct wchange {
  int coll;
  uint8_t id[16];
  struct mver v; /* as the model sees it */
  bool lie;      /* tombstone naming another scope */
  uint8_t payload[MAX_PAYLOAD];
  size_t plen;
  /* wire */
  Fieldsync__Change c;
  Fieldsync__RecordKey key;
  Fieldsync__ScopeKey scope;
  Fieldsync__Version ver;
  Fieldsync__VvEntry e[MAXVV];
  Fieldsync__VvEntry *ep[MAXVV];
};

/* Encodes the payload of a live version of collection coll: scope is the
 * visit or service it belongs to (for a visit: its service; for a service:
 * unused), owner goes to the collection's owner field. */
static size_t make_payload(int coll, const uint8_t scope[16], const char *owner,
                           uint64_t salt, uint8_t out[MAX_PAYLOAD]) {
  char text[48];
  char *inspectors[1] = {text};
  ProtobufCBinaryData sid;
  const ProtobufCMessage *msg = NULL;
  Fieldsync__Service svc = FIELDSYNC__SERVICE__INIT;
  Fieldsync__Visit vis = FIELDSYNC__VISIT__INIT;
  Fieldsync__Observation obs = FIELDSYNC__OBSERVATION__INIT;
  Fieldsync__InterviewNote note = FIELDSYNC__INTERVIEW_NOTE__INIT;
  Fieldsync__Requirement req = FIELDSYNC__REQUIREMENT__INIT;
  Fieldsync__Recommendation rec = FIELDSYNC__RECOMMENDATION__INIT;
  Fieldsync__Concern con = FIELDSYNC__CONCERN__INIT;
  Fieldsync__Attachment att = FIELDSYNC__ATTACHMENT__INIT;
  size_t len;

  snprintf(text, sizeof(text), "t%016llx", (unsigned long long)salt);
  sid.data = (uint8_t *)scope;
  sid.len = 16;
  switch (coll) {
  case C_SERVICE:
    svc.name = text;
    svc.postcode = "AB1 2CD";
    msg = &svc.base;
    break;
  case C_VISIT:
    vis.has_service_id = 1;
    vis.service_id = sid;
    vis.lead_inspector = (char *)owner;
    vis.planned_date = "2008-05-01";
    vis.has_status = 1;
    vis.status = FIELDSYNC__VISIT_STATUS__VISIT_PLANNED;
    vis.n_inspectors = 1;
    vis.inspectors = inspectors;
    msg = &vis.base;
    break;
  case C_OBSERVATION:
    obs.has_visit_id = 1;
    obs.visit_id = sid;
    obs.standard_code = "OP9";
    obs.has_judgement = 1;
    obs.judgement = (uint32_t)(1 + salt % 4);
    obs.evidence_text = text;
    obs.assessor = (char *)owner;
    msg = &obs.base;
    break;
  case C_NOTE:
    note.has_visit_id = 1;
    note.visit_id = sid;
    note.expert = (char *)owner;
    note.participant_code = "P1";
    note.said = text;
    msg = &note.base;
    break;
  case C_REQUIREMENT:
    req.has_service_id = 1;
    req.service_id = sid;
    req.standard_code = "OP9";
    req.text = text;
    req.owner = (char *)owner;
    msg = &req.base;
    break;
  case C_RECOMMENDATION:
    rec.has_service_id = 1;
    rec.service_id = sid;
    rec.text = text;
    msg = &rec.base;
    break;
  case C_CONCERN:
    con.has_service_id = 1;
    con.service_id = sid;
    con.summary = text;
    msg = &con.base;
    break;
  case C_ATTACHMENT:
    att.has_visit_id = 1;
    att.visit_id = sid;
    att.captured_by = (char *)owner;
    att.mime = "image/jpeg";
    att.caption = text;
    msg = &att.base;
    break;
  default:
    ASSERT(0);
  }
  len = protobuf_c_message_get_packed_size(msg);
  ASSERT(len <= MAX_PAYLOAD);
  protobuf_c_message_pack(msg, out);
  return len;
}

/* Fills the wire side of w from its model side (and payload). */
static void wchange_wire(struct wchange *w) {
  int i;
  size_t n = 0;

  fieldsync__change__init(&w->c);
  fieldsync__record_key__init(&w->key);
  fieldsync__scope_key__init(&w->scope);
  fieldsync__version__init(&w->ver);
  w->key.has_collection = 1;
  w->key.collection = (Fieldsync__Collection)w->coll;
  w->key.has_id = 1;
  w->key.id.data = w->id;
  w->key.id.len = 16;
  w->scope.has_kind = 1;
  w->scope.kind = (Fieldsync__ScopeKind)w->v.scope.kind;
  w->scope.has_id = 1;
  w->scope.id.data = w->v.scope.id;
  w->scope.id.len = 16;
  for (i = 0; i < MAXVV; i++) {
    if (w->v.vv.c[i] == 0)
      continue;
    fieldsync__vv_entry__init(&w->e[n]);
    w->e[n].has_replica = 1;
    w->e[n].replica.data = slot_replica[i];
    w->e[n].replica.len = 16;
    w->e[n].has_counter = 1;
    w->e[n].counter = w->v.vv.c[i];
    w->ep[n] = &w->e[n];
    n++;
  }
  w->ver.n_vv = n;
  w->ver.vv = w->ep;
  if (w->v.deleted) {
    w->ver.has_deleted = 1;
    w->ver.deleted = 1;
  } else {
    w->ver.has_payload = 1;
    w->ver.payload.data = w->payload;
    w->ver.payload.len = w->plen;
  }
  w->ver.has_hash = 1;
  w->ver.hash.data = w->v.hash;
  w->ver.hash.len = FSP_HASH_LEN;
  w->ver.author = "test_scope";
  w->c.key = &w->key;
  w->c.scope = &w->scope;
  w->c.version = &w->ver;
}

/* A new version of record id by device d.
 * payload_scope: the visit or service the payload names (for a visit
 * record: its service); scope: the Change's scope (for a tombstone, any);
 * base: the vector the device has seen (NULL: nothing). */
static void wchange_make(struct wchange *w, struct dev *d, int coll,
                         const uint8_t id[16], bool deleted,
                         const struct skey *scope,
                         const uint8_t payload_scope[16], const char *owner,
                         const struct vvec *base) {
  memset(w, 0, sizeof(*w));
  ASSERT(d->slot >= 0);
  w->coll = coll;
  memcpy(w->id, id, 16);
  if (base != NULL)
    w->v.vv = *base;
  w->v.vv.c[d->slot] = ++d->ctr;
  w->v.deleted = deleted;
  w->v.scope = *scope;
  if (!deleted) {
    snprintf(w->v.owner, sizeof(w->v.owner), "%s",
             coll_has_owner[coll] ? owner : "");
    w->plen =
        make_payload(coll, payload_scope, owner, test_rand(&rng), w->payload);
    if (coll == C_VISIT) {
      w->v.has_service = true;
      memcpy(w->v.service, payload_scope, 16);
    }
  }
  fsp_merge_hash(deleted, w->payload, w->plen, w->v.hash);
  wchange_wire(w);
}

/* ==== push ============================================================== */

/* What one pushed change was, for the matrix summary. */
struct pushed {
  struct expect e;
  int got;
  int reason_code;
};

static void describe(char *buf, size_t cap, const struct model *m,
                     const struct dev *d, const struct wchange *w) {
  char id[33];
  char sc[48];

  hex16(w->id, id);
  snprintf(buf, cap, "seed %llu, device %s (%s), %s %s %s in %s, owner \"%s\"",
           (unsigned long long)seed_used, d->label,
           role_name[m->u[d->user].role], w->v.deleted ? "tombstone" : "live",
           coll_name[w->coll], id, skey_str(&w->v.scope, sc), w->v.owner);
}

/* Pushes w[0..n) on d's session as one batch, judges each outcome with the
 * oracle (evaluated change by change, in batch order, as the server merges
 * them) and stores what the server accepted in the model. res (may be
 * NULL) gets each change's expectation and outcome. */
static void push_batch(struct model *m, struct dev *d, struct wchange *w,
                       size_t n, struct pushed *res) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Push p = FIELDSYNC__PUSH__INIT;
  Fieldsync__Change **cp = xcalloc(n, sizeof(*cp));
  struct expect *ex = xcalloc(n, sizeof(*ex));
  size_t *order = xcalloc(n, sizeof(*order));
  struct sset snap = {0};
  bool snap_amb = false;
  struct fsp_msg msg;
  size_t i;
  size_t oi;

  if (!d->up)
    dev_connect(m, d);
  for (i = 0; i < n; i++)
    cp[i] = &w[i].c;
  env.has_protocol_version = 1;
  env.protocol_version = FSP_PROTOCOL_VERSION;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PUSH;
  env.push = &p;
  p.has_batch_id = 1;
  p.batch_id = ++d->batch;
  p.n_changes = n;
  p.changes = cp;
  sess_send(&d->w, &env);
  if (!sess_recv(&d->w, &msg))
    test_fail(__FILE__, __LINE__, "%s: connection closed instead of PushAck",
              d->label);
  if (msg.env->body_case != FIELDSYNC__ENVELOPE__BODY_PUSH_ACK)
    test_fail(__FILE__, __LINE__, "%s: %s instead of PushAck: %s", d->label,
              fsp_msg_body_name(msg.env),
              msg.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
                  ? msg.env->error->message
                  : "");
  ASSERT_EQ(msg.env->push_ack->batch_id, p.batch_id);
  ASSERT_EQ(msg.env->push_ack->n_outcomes, n);
  T.batches++;
  /* The server applies a batch in record-id order (one record's versions
   * in batch order): judge and store in that order. It computes the
   * device's scopes for the Push; if a change earlier in the batch (a
   * visit moved to another service) would alter them, whether it counts
   * for the later changes is not written down, so such a change is judged
   * only when both readings agree. */
  visible_set(m, d->user, &snap, &snap_amb);
  for (i = 0; i < n; i++)
    order[i] = i;
  for (i = 1; i < n; i++) {
    size_t j = i;
    size_t t = order[i];
    while (j > 0 && memcmp(w[order[j - 1]].id, w[t].id, 16) > 0) {
      order[j] = order[j - 1];
      j--;
    }
    order[j] = t;
  }
  for (oi = 0; oi < n; oi++) {
    size_t x = order[oi];
    const Fieldsync__RecordOutcome *o = msg.env->push_ack->outcomes[x];
    struct mrec *r = model_get(m, w[x].id, w[x].coll);
    int got = (int)o->outcome;
    char what[256];
    struct expect live;

    T.changes_pushed++;
    ex[x] = oracle_push(m, d->user, r, &w[x].v, w[x].lie, &snap, snap_amb);
    live = oracle_push(m, d->user, r, &w[x].v, w[x].lie, NULL, false);
    if (live.v != ex[x].v) {
      ex[x].v = V_AMBIG;
      ex[x].why = "the batch itself changed the user's scopes";
    }
    describe(what, sizeof(what), m, d, &w[x]);
    if (o->key->collection != (Fieldsync__Collection)w[x].coll ||
        memcmp(o->key->id.data, w[x].id, 16) != 0 ||
        memcmp(o->hash.data, w[x].v.hash, FSP_HASH_LEN) != 0)
      flag(&T.contract, "outcome %zu names another version: %s", x, what);
    if (got == O_REFUSED) {
      bool code_ok =
          o->reason_code == FIELDSYNC__ERROR_CODE__ERR_FORBIDDEN ||
          (ex[x].lie && o->reason_code == FIELDSYNC__ERROR_CODE__ERR_INVALID);
      if (!code_ok || o->reason == NULL || o->reason[0] == '\0')
        flag(&T.contract,
             "refusal without ERR_FORBIDDEN and a reason (code %d, \"%s\"): "
             "%s",
             (int)o->reason_code, o->reason ? o->reason : "", what);
    }
    if (ex[x].v == V_ALLOW && got == O_REFUSED)
      flag(&T.violations,
           "%s %s refused (%s) but the policy allows it (%s): %s",
           role_name[m->u[d->user].role], op_name[ex[x].op],
           o->reason ? o->reason : "", ex[x].why, what);
    else if (ex[x].v == V_REFUSE && got != O_REFUSED)
      flag(&T.violations, "%s %s got %s, want REFUSED (%s): %s",
           role_name[m->u[d->user].role], op_name[ex[x].op], outcome_name(got),
           ex[x].why, what);
    else if (ex[x].v == V_ALLOW && got != ex[x].outcome)
      flag(&T.contract, "%s %s got %s, the merge rule says %s: %s",
           role_name[m->u[d->user].role], op_name[ex[x].op], outcome_name(got),
           outcome_name(ex[x].outcome), what);
    if (ex[x].v == V_ALLOW)
      T.allowed++;
    else if (ex[x].v == V_REFUSE)
      T.refused++;
    else
      T.ambiguous++;
    if (res != NULL) {
      res[x].e = ex[x];
      res[x].got = got;
      res[x].reason_code = (int)o->reason_code;
    }
    if (got != O_REFUSED) {
      const struct mver *sv;
      model_store(r, &w[x].v, got);
      sv = rec_stored(r, &w[x].v.vv, w[x].v.hash);
      if (sv != NULL)
        dev_hold(d, (size_t)(r - m->r), r, (size_t)(sv - r->hist));
    }
  }
  fsp_msg_close(&msg);
  sset_free(&snap);
  free(order);
  free(cp);
  free(ex);
}

/* ==== pull, with every frame checked ==================================== */

/* Judges one pulled change for device d now; holds it locally. */
static void check_change(struct model *m, struct dev *d,
                         const Fieldsync__Change *c) {
  struct mrec *r = model_find(m, c->key->id.data);
  const struct mver *v;
  struct skey k;
  struct vvec vv;
  bool amb = false;
  char id[33];
  char sc[48];
  const char *who = m->u[d->user].name;
  const char *role = role_name[m->u[d->user].role];

  T.changes_checked++;
  hex16(c->key->id.data, id);
  k.kind = (int)c->scope->kind;
  memcpy(k.id, c->scope->id.data, 16);
  skey_str(&k, sc);
  if (r == NULL || r->coll != (int)c->key->collection) {
    flag(&T.violations,
         "seed %llu: %s (%s) was sent %s %s in %s, a record the server "
         "never accepted",
         (unsigned long long)seed_used, who, role,
         coll_name[c->key->collection < NCOLL ? c->key->collection : 0], id,
         sc);
    return;
  }
  if (!vv_from_pb(&vv, c->version) ||
      (v = rec_stored(r, &vv, c->version->hash.data)) == NULL) {
    flag(&T.violations,
         "seed %llu: %s (%s) was sent a version of %s %s in %s that the "
         "server never accepted (a refused version?)",
         (unsigned long long)seed_used, who, role, coll_name[r->coll], id, sc);
    return;
  }
  if (!skey_eq(&k, &v->scope))
    flag(&T.violations,
         "seed %llu: %s %s sent to %s under scope %s, pushed under another",
         (unsigned long long)seed_used, coll_name[r->coll], id, who, sc);
  if (!visible(m, d->user, &v->scope, &amb)) {
    if (amb)
      T.ambiguous++;
    else
      flag(&T.violations,
           "seed %llu: out-of-scope version left the server: %s %s in %s "
           "sent to %s (%s)",
           (unsigned long long)seed_used, coll_name[r->coll], id, sc, who,
           role);
  }
  if (!readable(m, d->user, r, v) && tombstone_undecided(m, d->user, r, v)) {
    T.ambiguous++;
  } else if (!readable(m, d->user, r, v)) {
    char owners[160] = "";
    size_t i;
    size_t o = 0;
    /* The owners its live versions named, oldest first. */
    for (i = 0; i < r->nhist && o + 40 < sizeof(owners); i++)
      if (!r->hist[i].deleted)
        o += (size_t)snprintf(owners + o, sizeof(owners) - o, "%s%s",
                              o ? "," : "", r->hist[i].owner);
    flag(&T.violations,
         "seed %llu: unreadable version left the server: %s %s (%s, owner "
         "\"%s\"; live versions by %s) in %s sent to %s (%s)",
         (unsigned long long)seed_used, coll_name[r->coll], id,
         v->deleted ? "tombstone" : "live", v->owner, o ? owners : "nobody", sc,
         who, role);
  }
  if (rec_current(r, &vv, c->version->hash.data) == NULL)
    flag(&T.contract,
         "seed %llu: %s %s: a version that is no longer current was sent "
         "to %s",
         (unsigned long long)seed_used, coll_name[r->coll], id, who);
  dev_hold(d, (size_t)(r - m->r), r, (size_t)(v - r->hist));
}

/* The client's part of removed_scopes: drop the records held in them. */
static void dev_remove_scope(struct dev *d, const struct skey *k) {
  size_t i;

  sset_del(&d->held, k);
  for (i = 0; i < d->nloc; i++)
    if (d->loc[i].has && skey_eq(&d->loc[i].scope, k))
      memset(&d->loc[i], 0, sizeof(d->loc[i]));
}

/* One Pull from d's state and its Changes, checked. Returns `more`. */
static bool pull_once(struct model *m, struct dev *d, uint32_t max_records) {
  Fieldsync__Envelope env = FIELDSYNC__ENVELOPE__INIT;
  Fieldsync__Pull p = FIELDSYNC__PULL__INIT;
  Fieldsync__ScopeKey *hk = xcalloc(d->held.n, sizeof(*hk));
  Fieldsync__ScopeKey **hp = xcalloc(d->held.n, sizeof(*hp));
  Fieldsync__ScopeKey bk = FIELDSYNC__SCOPE_KEY__INIT;
  const Fieldsync__Changes *ch;
  struct fsp_msg msg;
  uint64_t cursor = d->cursor;
  uint64_t after = 0;
  struct skey bscope;
  bool was_bf = d->bf;
  bool is_bf;
  bool more;
  uint64_t prev = 0;
  int role = m->u[d->user].role;
  const char *who = d->label;
  size_t i;

  bscope = d->bf_scope;
  for (i = 0; i < d->held.n; i++) {
    fieldsync__scope_key__init(&hk[i]);
    hk[i].has_kind = 1;
    hk[i].kind = (Fieldsync__ScopeKind)d->held.k[i].kind;
    hk[i].has_id = 1;
    hk[i].id.data = d->held.k[i].id;
    hk[i].id.len = 16;
    hp[i] = &hk[i];
  }
  env.has_protocol_version = 1;
  env.protocol_version = FSP_PROTOCOL_VERSION;
  env.body_case = FIELDSYNC__ENVELOPE__BODY_PULL;
  env.pull = &p;
  p.has_cursor = 1;
  p.cursor = cursor;
  p.has_max_records = 1;
  p.max_records = max_records;
  p.n_held_scopes = d->held.n;
  p.held_scopes = hp;
  if (d->bf) {
    bk.has_kind = 1;
    bk.kind = (Fieldsync__ScopeKind)d->bf_scope.kind;
    bk.has_id = 1;
    bk.id.data = d->bf_scope.id;
    bk.id.len = 16;
    p.backfill_scope = &bk;
    p.has_backfill_after = 1;
    p.backfill_after = d->bf_next;
  }
  sess_send(&d->w, &env);
  if (!sess_recv(&d->w, &msg))
    test_fail(__FILE__, __LINE__, "%s: connection closed instead of Changes",
              who);
  if (msg.env->body_case != FIELDSYNC__ENVELOPE__BODY_CHANGES)
    test_fail(__FILE__, __LINE__, "%s: %s instead of Changes: %s", who,
              fsp_msg_body_name(msg.env),
              msg.env->body_case == FIELDSYNC__ENVELOPE__BODY_ERROR
                  ? msg.env->error->message
                  : "");
  free(hk);
  free(hp);
  T.frames++;
  ch = msg.env->changes;
  is_bf = ch->backfill_scope != NULL;
  if (is_bf) {
    T.backfill_frames++;
    bscope.kind = (int)ch->backfill_scope->kind;
    memcpy(bscope.id, ch->backfill_scope->id.data, 16);
    if (was_bf && skey_eq(&bscope, &d->bf_scope))
      after = d->bf_next;
  }
  if (role == R_HEAD_OFFICE && (is_bf || ch->n_removed_scopes > 0))
    flag(&T.contract, "%s: head office sent a backfill or removal", who);

  /* Removals come first: the client applies them in the same transaction
   * as the changes. A visible scope must never be removed. */
  for (i = 0; i < ch->n_removed_scopes; i++) {
    struct skey k;
    bool amb = false;
    char sc[48];
    k.kind = (int)ch->removed_scopes[i]->kind;
    memcpy(k.id, ch->removed_scopes[i]->id.data, 16);
    T.removed_scopes++;
    if (visible(m, d->user, &k, &amb) && !amb)
      flag(&T.violations,
           "seed %llu: %s told to remove %s, which it may still see "
           "(unacknowledged work would be quarantined for nothing)",
           (unsigned long long)seed_used, who, skey_str(&k, sc));
    if (!sset_has(&d->held, &k))
      flag(&T.contract, "%s: removed_scopes names %s, which it did not hold",
           who, skey_str(&k, sc));
    dev_remove_scope(d, &k);
    if (d->bf && skey_eq(&d->bf_scope, &k))
      d->bf = false;
  }

  for (i = 0; i < ch->n_changes; i++) {
    const Fieldsync__Change *c = ch->changes[i];
    if (c->seq <= prev)
      flag(&T.contract, "%s: seq %llu after %llu in one Changes", who,
           (unsigned long long)c->seq, (unsigned long long)prev);
    prev = c->seq;
    if (is_bf) {
      struct skey k;
      k.kind = (int)c->scope->kind;
      memcpy(k.id, c->scope->id.data, 16);
      if (c->seq <= after || c->seq > cursor)
        flag(&T.contract, "%s: backfill change seq %llu outside (%llu, %llu]",
             who, (unsigned long long)c->seq, (unsigned long long)after,
             (unsigned long long)cursor);
      if (!skey_eq(&k, &bscope))
        flag(&T.contract, "%s: backfill change outside its backfill scope",
             who);
    } else if (c->seq <= cursor || c->seq > ch->next_cursor) {
      flag(&T.contract, "%s: feed change seq %llu outside (%llu, %llu]", who,
           (unsigned long long)c->seq, (unsigned long long)cursor,
           (unsigned long long)ch->next_cursor);
    }
    check_change(m, d, c);
  }

  if (is_bf) {
    bool amb = false;
    char sc[48];
    if (ch->next_cursor != cursor)
      flag(&T.contract, "%s: backfill moved the cursor %llu -> %llu", who,
           (unsigned long long)cursor, (unsigned long long)ch->next_cursor);
    if (!visible(m, d->user, &bscope, &amb) && !amb)
      flag(&T.violations,
           "seed %llu: %s is backfilled %s, which it may "
           "not see",
           (unsigned long long)seed_used, who, skey_str(&bscope, sc));
    if (sset_has(&d->held, &bscope))
      flag(&T.contract, "%s: backfill of %s, which it holds", who,
           skey_str(&bscope, sc));
    if (ch->has_backfill_done && ch->backfill_done) {
      sset_add(&d->held, &bscope);
      d->bf = false;
    } else {
      if (!ch->has_backfill_next)
        flag(&T.contract, "%s: backfill neither done nor continued", who);
      d->bf = true;
      d->bf_scope = bscope;
      d->bf_next = ch->backfill_next;
    }
  } else {
    if (ch->next_cursor < cursor)
      flag(&T.contract, "%s: cursor went back %llu -> %llu", who,
           (unsigned long long)cursor, (unsigned long long)ch->next_cursor);
    else
      d->cursor = ch->next_cursor;
    d->bf = false;
  }
  more = ch->has_more && ch->more;
  if (d->bf && !more)
    flag(&T.contract, "%s: backfill not done but more is false", who);
  fsp_msg_close(&msg);
  return more || d->bf;
}

/* After a whole pull: the device holds exactly the scopes it may see, and
 * every current version it may read. */
static void check_complete(struct model *m, struct dev *d) {
  struct sset vis = {0};
  bool amb = false;
  bool all = m->u[d->user].role == R_HEAD_OFFICE;
  size_t i;
  size_t j;
  char sc[48];

  visible_set(m, d->user, &vis, &amb);
  if (!all) {
    for (i = 0; i < vis.n && !amb; i++)
      if (!sset_has(&d->held, &vis.k[i])) {
        char why[160] = "";
        if (vis.k[i].kind == K_SERVICE) {
          /* Through which visit, and did that visit name it from the
           * start (a visit moved to another service is the suspect)? */
          for (j = 0; j < m->na; j++) {
            const struct asg *a = &m->a[j];
            const struct mrec *r = model_find(m, a->visit);
            char vh[33];
            if (a->user != d->user || !a->active || r == NULL || r->ncur == 0 ||
                !r->cur[0].has_service ||
                memcmp(r->cur[0].service, vis.k[i].id, 16) != 0)
              continue;
            hex16(a->visit, vh);
            snprintf(why, sizeof(why),
                     " (the service of visit %s%s, %zu versions)", vh,
                     r->hist[0].has_service &&
                             memcmp(r->hist[0].service, vis.k[i].id, 16) != 0
                         ? ", which was moved there from another service"
                         : "",
                     r->nhist);
          }
        }
        flag(&T.missing, "seed %llu: %s never backfilled %s%s",
             (unsigned long long)seed_used, d->label, skey_str(&vis.k[i], sc),
             why);
      }
    for (i = 0; i < d->held.n && !amb; i++)
      if (!sset_has(&vis, &d->held.k[i]))
        flag(&T.violations,
             "seed %llu: %s still holds %s, which it may no longer see "
             "(never listed in removed_scopes)",
             (unsigned long long)seed_used, d->label,
             skey_str(&d->held.k[i], sc));
  }
  for (i = 0; i < m->n; i++) {
    const struct mrec *r = &m->r[i];
    if (r->mixed)
      continue;
    for (j = 0; j < r->ncur; j++) {
      const struct mver *v = &r->cur[j];
      char id[33];
      if (amb || (!all && !sset_has(&vis, &v->scope)) ||
          !readable(m, d->user, r, v))
        continue;
      /* Whether an expert is sent the tombstone of their own note is not
       * written down; do not require it. */
      if (v->deleted && read_rule[m->u[d->user].role][r->coll] == W_OWN)
        continue;
      if (dev_holds(d, i, r, v))
        continue;
      hex16(r->id, id);
      flag(&T.missing,
           "seed %llu: %s (%s) never received the current %s of %s %s in %s",
           (unsigned long long)seed_used, d->label,
           role_name[m->u[d->user].role], v->deleted ? "tombstone" : "version",
           coll_name[r->coll], id, skey_str(&v->scope, sc));
    }
  }
  sset_free(&vis);
}

/* Pulls until the server has nothing more for d, then checks it holds
 * what it may see. */
static void pull_cycle(struct model *m, struct dev *d, uint32_t max_records) {
  int i;

  if (!d->up)
    dev_connect(m, d);
  T.pull_cycles++;
  for (i = 0; i < MAX_PULLS_PER_CYCLE; i++)
    if (!pull_once(m, d, max_records))
      break;
  if (i == MAX_PULLS_PER_CYCLE)
    test_fail(__FILE__, __LINE__, "%s: the pull did not end after %d Pulls",
              d->label, MAX_PULLS_PER_CYCLE);
  check_complete(m, d);
}

/* ==== fieldsync-admin ==================================================== */

static void admin_assign(struct model *m, int user, const uint8_t visit[16],
                         bool expired) {
  char hex[33];
  char out[256];
  struct asg *a;

  hex16(visit, hex);
  if (expired) {
    const char *args[] = {"assign",  hex,          m->u[user].name,
                          "--until", "2000-01-01", NULL};
    proc_admin_run(admin, srvdb, args, out, sizeof(out));
  } else {
    const char *args[] = {"assign", hex, m->u[user].name, NULL};
    proc_admin_run(admin, srvdb, args, out, sizeof(out));
  }
  a = model_asg(m, user, visit, true);
  a->active = !expired;
  a->expired = expired;
}

static void admin_unassign(struct model *m, int user, const uint8_t visit[16]) {
  char hex[33];
  char out[256];
  struct asg *a = model_asg(m, user, visit, false);
  const char *args[] = {"unassign", hex, m->u[user].name, NULL};

  ASSERT(a != NULL);
  hex16(visit, hex);
  proc_admin_run(admin, srvdb, args, out, sizeof(out));
  a->active = false;
  a->expired = false;
}

static void admin_user(struct model *m, const char *name, int role) {
  const char *args[] = {"user", "add", name, "--role", role_name[role], NULL};
  char out[256];

  proc_admin_run(admin, srvdb, args, out, sizeof(out));
  model_user(m, name, role);
}

/* A fresh directory for the server's store. */
static void raw_setup(const char *prefix) {
  tmpdir_make(dir, sizeof(dir), prefix);
  tmpdir_kill_at_exit(&srv);
  snprintf(srvdb, sizeof(srvdb), "%s/server.db", dir);
}

/* The daemon on the store, with an idle deadline longer than the test. */
static void raw_start(void) {
  static const char *const extra[] = {"--idle-timeout-ms", "900000", NULL};

  server_start(&srv, fieldsyncd, srvdb, extra);
}

/* ==== the matrix ========================================================= */

enum mop {
  M_C_OWN,    /* create naming the user as owner */
  M_C_OTHER,  /* create naming another user */
  M_U_OWN,    /* update: stored own, new own */
  M_U_OTHER,  /* update: stored other's, new other's */
  M_U_TAKE,   /* update: stored other's, new own */
  M_U_GIVE,   /* update: stored own, new other's */
  M_D_OWN,    /* delete the user's record */
  M_D_OTHER,  /* delete another user's record */
  M_C,        /* create (collections without an owner) */
  M_U,        /* update */
  M_D,        /* delete */
  M_MOVE_IN,  /* update moving a record from this state's scope into V1/S1 */
  M_MOVE_OUT, /* update moving a record from V1/S1 into this state's scope */
  M_D_LIE,    /* tombstone of a record here that names V1/S1 as its scope */
  M_C_OVER,   /* a "create" (no base) reusing the id of a record here, in
                 V1/S1: an update of a record the device cannot see */
  M_U_SVC,    /* visits: the user's own visit updated to name another
                 service (only head office may) */
  NMOP
};
static const char *const mop_name[NMOP] = {
    "create-own",  "create-other", "update-own",  "update-other",
    "update-take", "update-give",  "delete-own",  "delete-other",
    "create",      "update",       "delete",      "move-in",
    "move-out",    "delete-lie",   "create-over", "update-service"};

enum state { ST_ASSIGNED, ST_UNASSIGNED, ST_EXPIRED, NSTATE };
static const char *const st_name[NSTATE] = {"assigned", "not-assigned",
                                            "expired"};

struct cell {
  int tester; /* index into the testers */
  int coll;
  int mop;
  int st;
  uint8_t id[16];
  bool has_target;
  struct skey tscope; /* the target's scope */
  uint8_t tref[16];   /* the target payload's visit/service */
  char towner[32];
  bool deleted;
  struct skey nscope; /* the pushed version's scope */
  uint8_t nref[16];
  char nowner[32];
  bool lie;
  bool blind; /* pushed without the target's vector */
  struct pushed res;
};

struct matrix_base {
  uint8_t svc[NSTATE][16];   /* S1 (via V1), S2, S3 (via V4 only) */
  uint8_t visit[NSTATE][16]; /* V1, V2, V3 (in S1, expired) */
  uint8_t v4[16];            /* V4 in S3, expired */
};

static void state_scope(const struct matrix_base *b, int kind, int st,
                        struct skey *k) {
  k->kind = kind;
  memcpy(k->id, kind == K_VISIT ? b->visit[st] : b->svc[st], 16);
}

/* Plans one cell's records and assignments; the visits a service cell
 * needs are added to extra (created by head office). */
static void cell_plan(struct cell *c, struct model *m,
                      const struct matrix_base *b, int me, int other,
                      struct wchange *extra, size_t *nextra, struct dev *ho) {
  const char *mine = m->u[me].name;
  const char *theirs = m->u[other].name;
  int kind = coll_kind[c->coll];
  bool scoped = m->u[me].role != R_HEAD_OFFICE;

  new_id(c->id, (uint8_t)(0x10 + c->coll));
  c->has_target = !(c->mop == M_C_OWN || c->mop == M_C_OTHER || c->mop == M_C);
  c->blind = c->mop == M_C_OVER;
  c->deleted = c->mop == M_D_OWN || c->mop == M_D_OTHER || c->mop == M_D ||
               c->mop == M_D_LIE;
  c->lie = c->mop == M_D_LIE;
  switch (c->mop) {
  case M_C_OTHER:
  case M_U_OTHER:
  case M_D_OTHER:
    snprintf(c->towner, sizeof(c->towner), "%s", theirs);
    snprintf(c->nowner, sizeof(c->nowner), "%s", theirs);
    break;
  case M_U_TAKE:
    snprintf(c->towner, sizeof(c->towner), "%s", theirs);
    snprintf(c->nowner, sizeof(c->nowner), "%s", mine);
    break;
  case M_U_GIVE:
    snprintf(c->towner, sizeof(c->towner), "%s", mine);
    snprintf(c->nowner, sizeof(c->nowner), "%s", theirs);
    break;
  default:
    snprintf(c->towner, sizeof(c->towner), "%s", mine);
    snprintf(c->nowner, sizeof(c->nowner), "%s", mine);
    break;
  }
  if (c->coll == C_VISIT) {
    /* The record is its own scope: a fresh visit, assigned as the state
     * says, in S1, S2 or S3. */
    c->tscope.kind = K_VISIT;
    memcpy(c->tscope.id, c->id, 16);
    memcpy(c->tref, b->svc[c->st], 16);
    if (scoped && c->st != ST_UNASSIGNED)
      admin_assign(m, me, c->id, c->st == ST_EXPIRED);
  } else if (c->coll == C_SERVICE) {
    /* A fresh service, visible through a fresh visit assigned as the
     * state says. */
    c->tscope.kind = K_SERVICE;
    memcpy(c->tscope.id, c->id, 16);
    if (scoped) {
      struct wchange *z = &extra[(*nextra)++];
      struct skey zk;
      uint8_t zid[16];
      new_id(zid, 0x0f);
      zk.kind = K_VISIT;
      memcpy(zk.id, zid, 16);
      wchange_make(z, ho, C_VISIT, zid, false, &zk, c->id, "ins2", NULL);
      if (c->st != ST_UNASSIGNED)
        admin_assign(m, me, zid, c->st == ST_EXPIRED);
    }
  } else if (c->mop == M_MOVE_OUT) {
    state_scope(b, kind, ST_ASSIGNED, &c->tscope);
    memcpy(c->tref, c->tscope.id, 16);
  } else {
    state_scope(b, kind, c->st, &c->tscope);
    memcpy(c->tref, c->tscope.id, 16);
  }
  c->nscope = c->tscope;
  memcpy(c->nref, c->tref, 16);
  if (c->mop == M_MOVE_IN || c->mop == M_D_LIE || c->mop == M_C_OVER)
    state_scope(b, kind, ST_ASSIGNED, &c->nscope);
  else if (c->mop == M_MOVE_OUT)
    state_scope(b, kind, c->st, &c->nscope);
  if (!own_id_scope(c->coll))
    memcpy(c->nref, c->nscope.id, 16);
  if (c->mop == M_U_SVC)
    new_id(c->nref, 0x0c); /* a service nothing else uses */
}

/* Does operation mop apply to collection coll in state st (tester_ho: the
 * tester is head office)? */
static bool cell_applies(int coll, int mop, int st, bool tester_ho) {
  if (mop == M_U_SVC)
    return coll == C_VISIT;
  if (mop >= M_MOVE_IN)
    return !own_id_scope(coll) && st != ST_ASSIGNED &&
           !(mop == M_D_LIE && tester_ho);
  return coll_has_owner[coll] == (mop <= M_D_OTHER);
}

/* Pushes ws[0..n) in batches of at most per. */
static void push_all(struct model *m, struct dev *d, struct wchange *ws,
                     size_t n, size_t per) {
  size_t i;

  for (i = 0; i < n; i += per)
    push_batch(m, d, ws + i, n - i < per ? n - i : per, NULL);
}

static void print_summary(const char *what, long long t0) {
  printf("# %s: %llu changes pushed in %llu batches (%llu allowed, %llu "
         "refused, %llu not decided by the written rules); %llu pull cycles, "
         "%llu Changes frames (%llu backfill), %llu changes checked, %llu "
         "scope removals; %llu violations, %llu contract breaches, %llu "
         "missing; %.1f s\n",
         what, (unsigned long long)T.changes_pushed,
         (unsigned long long)T.batches, (unsigned long long)T.allowed,
         (unsigned long long)T.refused, (unsigned long long)T.ambiguous,
         (unsigned long long)T.pull_cycles, (unsigned long long)T.frames,
         (unsigned long long)T.backfill_frames,
         (unsigned long long)T.changes_checked,
         (unsigned long long)T.removed_scopes, (unsigned long long)T.violations,
         (unsigned long long)T.contract, (unsigned long long)T.missing,
         (double)(proc_now_ms() - t0) / 1000.0);
  fflush(stdout);
}

static void assert_clean(void) {
  if (T.violations != 0 || T.contract != 0 || T.missing != 0)
    test_fail(__FILE__, __LINE__,
              "%llu violations, %llu contract breaches, %llu missing "
              "(seed %llu; details above)",
              (unsigned long long)T.violations, (unsigned long long)T.contract,
              (unsigned long long)T.missing, (unsigned long long)seed_used);
}

TEST(scope_matrix) {
  struct model m;
  struct matrix_base b;
  struct dev ho;
  struct dev testers[3];
  int tuser[3];
  int tother[3];
  struct cell *cells = xcalloc(3 * NCOLL * NSTATE * NMOP, sizeof(*cells));
  struct wchange *ws = xcalloc(3 * NCOLL * NSTATE * NMOP + 64, sizeof(*ws));
  size_t ncell = 0;
  size_t nw = 0;
  size_t i;
  int t;
  int coll;
  int st;
  int u_ins1, u_ins2, u_exp1, u_exp2, u_ho;
  long long t0 = proc_now_ms();
  uint64_t per_role[NROLE][3];

  memset(&T, 0, sizeof(T));
  memset(&m, 0, sizeof(m));
  memset(per_role, 0, sizeof(per_role));
  seed_used = test_seed();
  rng = seed_used;
  nslots = 0;
  raw_setup("fs-scope-matrix");
  admin_user(&m, "ins1", R_INSPECTOR);
  admin_user(&m, "ins2", R_INSPECTOR);
  admin_user(&m, "exp1", R_EXPERT);
  admin_user(&m, "exp2", R_EXPERT);
  admin_user(&m, "ho", R_HEAD_OFFICE);
  u_ins1 = model_user_index(&m, "ins1");
  u_ins2 = model_user_index(&m, "ins2");
  u_exp1 = model_user_index(&m, "exp1");
  u_exp2 = model_user_index(&m, "exp2");
  u_ho = model_user_index(&m, "ho");
  raw_start();

  dev_init(&m, &ho, u_ho, true);
  tuser[0] = u_ins1;
  tother[0] = u_ins2;
  tuser[1] = u_exp1;
  tother[1] = u_exp2;
  tuser[2] = u_ho;
  tother[2] = u_ins2;
  for (t = 0; t < 2; t++)
    dev_init(&m, &testers[t], tuser[t], true);

  /* Services S1 S2 S3; visits V1 (S1) assigned, V2 (S2) not, V3 (S1)
   * expired, and V4 (S3) expired so that S3 is seen only through an
   * expired assignment. */
  for (st = 0; st < NSTATE; st++) {
    struct skey k;
    new_id(b.svc[st], 0x01);
    new_id(b.visit[st], 0x02);
    k.kind = K_SERVICE;
    memcpy(k.id, b.svc[st], 16);
    wchange_make(&ws[nw++], &ho, C_SERVICE, b.svc[st], false, &k, b.svc[st], "",
                 NULL);
  }
  new_id(b.v4, 0x02);
  for (st = 0; st <= NSTATE; st++) {
    const uint8_t *v = st < NSTATE ? b.visit[st] : b.v4;
    const uint8_t *s = st == ST_UNASSIGNED ? b.svc[1]
                       : st == NSTATE      ? b.svc[2]
                                           : b.svc[0];
    struct skey k;
    k.kind = K_VISIT;
    memcpy(k.id, v, 16);
    wchange_make(&ws[nw++], &ho, C_VISIT, v, false, &k, s, "ins1", NULL);
  }
  push_all(&m, &ho, ws, nw, 50);
  nw = 0;
  for (t = 0; t < 2; t++) {
    admin_assign(&m, tuser[t], b.visit[ST_ASSIGNED], false);
    admin_assign(&m, tuser[t], b.visit[ST_EXPIRED], true);
    admin_assign(&m, tuser[t], b.v4, true);
  }
  admin_assign(&m, u_ins2, b.visit[ST_UNASSIGNED], false);
  admin_assign(&m, u_exp2, b.visit[ST_ASSIGNED], false);

  /* Plan every cell; head office creates the targets. */
  for (t = 0; t < 3; t++) {
    for (coll = 1; coll < NCOLL; coll++) {
      for (st = 0; st < NSTATE; st++) {
        int mop;
        for (mop = 0; mop < NMOP; mop++) {
          struct cell *c;
          if (!cell_applies(coll, mop, st, t == 2))
            continue;
          c = &cells[ncell++];
          c->tester = t;
          c->coll = coll;
          c->mop = mop;
          c->st = st;
          cell_plan(c, &m, &b, tuser[t], tother[t], ws, &nw, &ho);
          if (c->has_target)
            wchange_make(&ws[nw++], &ho, coll, c->id, false, &c->tscope,
                         c->tref, c->towner, NULL);
        }
      }
    }
  }
  push_all(&m, &ho, ws, nw, 50);
  nw = 0;
  if (T.violations + T.contract != 0)
    test_fail(__FILE__, __LINE__, "head office could not set up the cells");

  /* Each tester pushes its cells, 20 to a batch. */
  for (t = 0; t < 3; t++) {
    struct dev *td = t < 2 ? &testers[t] : &ho;
    size_t idx[20];
    size_t k = 0;
    for (i = 0; i <= ncell; i++) {
      if (i < ncell && cells[i].tester == t) {
        struct cell *c = &cells[i];
        struct mrec *r = model_find(&m, c->id);
        struct vvec base;
        memset(&base, 0, sizeof(base));
        if (c->has_target) {
          ASSERT(r != NULL && r->ncur == 1);
          base = r->cur[0].vv;
        }
        wchange_make(&ws[k], td, c->coll, c->id, c->deleted, &c->nscope,
                     c->nref, c->nowner,
                     c->has_target && !c->blind ? &base : NULL);
        ws[k].lie = c->lie;
        idx[k++] = i;
      }
      if (k == 20 || (i == ncell && k > 0)) {
        struct pushed res[20];
        size_t j;
        push_batch(&m, td, ws, k, res);
        for (j = 0; j < k; j++) {
          struct cell *c = &cells[idx[j]];
          int role = m.u[tuser[c->tester]].role;
          c->res = res[j];
          per_role[role][0]++;
          per_role[role][c->res.e.v == V_ALLOW ? 1 : 2]++;
        }
        k = 0;
      }
    }
  }
  T.cells = ncell;

  /* Every pushing session pulls, then a fresh device of every user pulls
   * from cursor 0; every frame is judged. */
  for (t = 0; t < 3; t++)
    pull_cycle(&m, t < 2 ? &testers[t] : &ho, 100);
  {
    int users[] = {u_ins1, u_ins2, u_exp1, u_exp2, u_ho};
    for (i = 0; i < sizeof(users) / sizeof(users[0]); i++) {
      struct dev f;
      dev_init(&m, &f, users[i], false);
      pull_cycle(&m, &f, i % 2 == 0 ? 7 : 500);
      dev_free(&f);
    }
  }

  /* Lying clients: Pull.held_scopes claims scopes the user may not see,
   * and a backfill of a hidden visit is asked for at the store's last seq.
   * The server must list the claimed scopes in removed_scopes, backfill
   * only what the user may see, and send nothing of the rest. */
  {
    int liars[] = {u_ins1, u_exp1};
    for (t = 0; t < 2; t++) {
      struct dev f;
      struct skey k;
      dev_init(&m, &f, liars[t], false);
      for (st = ST_UNASSIGNED; st < NSTATE; st++) {
        state_scope(&b, K_VISIT, st, &k);
        sset_add(&f.held, &k);
        state_scope(&b, K_SERVICE, st, &k);
        sset_add(&f.held, &k);
      }
      if (m.u[liars[t]].role == R_EXPERT) {
        state_scope(&b, K_SERVICE, ST_ASSIGNED, &k);
        sset_add(&f.held, &k);
      }
      k.kind = K_VISIT;
      new_id(k.id, 0x0e);
      sset_add(&f.held, &k);
      f.cursor = ho.cursor;
      f.bf = true;
      state_scope(&b, K_VISIT, ST_UNASSIGNED, &f.bf_scope);
      f.bf_next = 0;
      pull_cycle(&m, &f, 50);
      dev_free(&f);
    }
  }

  printf("# matrix: %zu cells: inspector %llu (%llu allowed, %llu refused), "
         "expert %llu (%llu, %llu), head_office %llu (%llu, %llu)\n",
         ncell, (unsigned long long)per_role[R_INSPECTOR][0],
         (unsigned long long)per_role[R_INSPECTOR][1],
         (unsigned long long)per_role[R_INSPECTOR][2],
         (unsigned long long)per_role[R_EXPERT][0],
         (unsigned long long)per_role[R_EXPERT][1],
         (unsigned long long)per_role[R_EXPERT][2],
         (unsigned long long)per_role[R_HEAD_OFFICE][0],
         (unsigned long long)per_role[R_HEAD_OFFICE][1],
         (unsigned long long)per_role[R_HEAD_OFFICE][2]);
  /* One line per cell that went the wrong way, for the report. */
  for (i = 0; i < ncell; i++) {
    const struct cell *c = &cells[i];
    bool bad = (c->res.e.v == V_ALLOW && c->res.got == O_REFUSED) ||
               (c->res.e.v == V_REFUSE && c->res.got != O_REFUSED);
    if (bad)
      printf("# cell %s %s %s %s: want %s, got %s\n",
             role_name[m.u[tuser[c->tester]].role], coll_name[c->coll],
             mop_name[c->mop], st_name[c->st],
             c->res.e.v == V_ALLOW ? "allowed" : "REFUSED",
             outcome_name(c->res.got));
  }
  print_summary("matrix", t0);
  for (t = 0; t < 2; t++)
    dev_free(&testers[t]);
  dev_free(&ho);
  ASSERT_EQ(server_stop(&srv), 0);
  free(cells);
  free(ws);
  model_free(&m);
  assert_clean();
}

/* ==== 10,000 random triples ============================================= */

#define RING 128

struct rdev {
  struct dev d;
  struct wchange *ring; /* the last RING versions it pushed */
  size_t nring;
};

struct rworld {
  struct model m;
  struct rdev dv[MAXVV];
  int ndev;
  uint8_t svc[4][16];
  uint8_t visit[8][16];
  uint8_t visit_svc[8]; /* index into svc */
};

static const struct mrec *pick_record(const struct rworld *w, bool live) {
  int tries;
  const struct mrec *r = NULL;

  if (w->m.n == 0)
    return NULL;
  for (tries = 0; tries < 8; tries++) {
    r = &w->m.r[test_rand_below(&rng, w->m.n)];
    if (r->mixed)
      continue;
    if (!live || (r->ncur > 0 && !r->cur[0].deleted))
      return r;
  }
  return r->mixed ? NULL : r;
}

/* A scope of kind for a new version by user: mostly one they can see. */
static void pick_scope(const struct rworld *w, int user, int kind,
                       struct skey *k) {
  struct sset vis = {0};
  bool amb = false;
  uint64_t r = test_rand_below(&rng, 100);
  size_t i;
  size_t nk = 0;

  k->kind = kind;
  if (r < 65 && w->m.u[user].role != R_HEAD_OFFICE) {
    visible_set(&w->m, user, &vis, &amb);
    for (i = 0; i < vis.n; i++)
      nk += vis.k[i].kind == kind;
    if (nk > 0) {
      size_t want = test_rand_below(&rng, nk);
      for (i = 0; i < vis.n; i++)
        if (vis.k[i].kind == kind && want-- == 0) {
          *k = vis.k[i];
          break;
        }
      sset_free(&vis);
      return;
    }
    sset_free(&vis);
  }
  if (r >= 95) {
    new_id(k->id, kind == K_VISIT ? 0x0e : 0x0d); /* a scope nobody has */
    return;
  }
  if (kind == K_VISIT)
    memcpy(k->id, w->visit[test_rand_below(&rng, 8)], 16);
  else
    memcpy(k->id, w->svc[test_rand_below(&rng, 4)], 16);
}

static int pick_coll(int role) {
  if (role == R_EXPERT && test_rand_below(&rng, 2) == 0)
    return C_NOTE;
  return 1 + (int)test_rand_below(&rng, NCOLL - 1);
}

static const char *pick_owner(const struct rworld *w, int user) {
  if (test_rand_below(&rng, 100) < 70)
    return w->m.u[user].name;
  return w->m.u[test_rand_below(&rng, (uint64_t)w->m.nusers)].name;
}

/* The service a visit record's payload names: the one the server holds
 * (or the pool's first choice); with may_move (an update on top of what
 * the server holds) sometimes another. A blind concurrent version never
 * moves it: a visit in conflict over its service leaves the scopes
 * undecided. */
static void visit_ref(const struct rworld *w, const uint8_t id[16],
                      bool may_move, uint8_t ref[16]) {
  const struct mrec *r = model_find((struct model *)&w->m, id);
  int i;

  if (may_move && test_rand_below(&rng, 100) < 8) {
    /* Now and then the visit moves to another service (head office
     * correcting it, or its lead inspector: the rules allow that). */
    memcpy(ref, w->svc[test_rand_below(&rng, 4)], 16);
    return;
  }
  if (r != NULL && r->ncur > 0 && r->cur[0].has_service) {
    memcpy(ref, r->cur[0].service, 16);
    return;
  }
  for (i = 0; i < 8; i++)
    if (memcmp(w->visit[i], id, 16) == 0) {
      memcpy(ref, w->svc[w->visit_svc[i]], 16);
      return;
    }
  memcpy(ref, w->svc[test_rand_below(&rng, 4)], 16);
}

/* One random change by device x into out; false when it made none. */
static bool random_change(struct rworld *w, struct rdev *x,
                          struct wchange *out) {
  struct dev *d = &x->d;
  int user = d->user;
  uint64_t r = test_rand_below(&rng, 100);
  const struct mrec *rec = NULL;
  struct vvec base;
  struct skey scope;
  uint8_t ref[16];
  uint8_t id[16];
  int coll;
  bool deleted = false;
  const char *owner;
  size_t i;

  memset(&base, 0, sizeof(base));
  if (r >= 95 && x->nring > 0) {
    /* Re-push one of its own earlier versions, as a client that lost an
     * acknowledgement does. */
    *out = x->ring[test_rand_below(&rng, x->nring < RING ? x->nring : RING)];
    wchange_wire(out);
    return true;
  }
  if (r >= 40)
    rec = pick_record(w, test_rand_below(&rng, 10) != 0);
  if (rec == NULL) {
    /* create: a new record id */
    coll = pick_coll(w->m.u[user].role);
    new_id(id, (uint8_t)(0x10 + coll));
  } else {
    coll = rec->coll;
    memcpy(id, rec->id, 16);
  }
  owner = pick_owner(w, user);
  if (own_id_scope(coll)) {
    scope.kind = coll_kind[coll];
    memcpy(scope.id, id, 16);
  } else {
    pick_scope(w, user, coll_kind[coll], &scope);
  }
  if (coll == C_VISIT)
    visit_ref(w, id, rec != NULL && r < 75 && rec->ncur > 0, ref);
  else
    memcpy(ref, scope.id, 16);

  if (rec != NULL && r < 75 && rec->ncur > 0) {
    /* update: on top of what the server holds; mostly same scope and
     * owner, sometimes moved or handed over */
    for (i = 0; i < rec->ncur; i++)
      vv_join(&base, &rec->cur[i].vv);
    if (!rec->cur[0].deleted) {
      if (!own_id_scope(coll) && test_rand_below(&rng, 100) < 85) {
        scope = rec->cur[0].scope;
        memcpy(ref, scope.id, 16);
      }
      if (coll_has_owner[coll] && test_rand_below(&rng, 100) < 75)
        owner = rec->cur[0].owner;
    }
  } else if (rec != NULL && r >= 85 && rec->ncur > 0) {
    /* delete: a tombstone under the record's scope; scope visits stay */
    bool pinned = false;
    for (i = 0; i < 8; i++)
      if (memcmp(w->visit[i], id, 16) == 0)
        pinned = true;
    for (i = 0; i < rec->ncur; i++)
      vv_join(&base, &rec->cur[i].vv);
    if (!pinned) {
      deleted = true;
      scope = rec->cur[0].scope;
    }
  }
  /* else: a create, on a new id or (75 <= r < 85) blind on an existing
   * one, concurrent with what the server holds */
  wchange_make(out, d, coll, id, deleted, &scope, ref, owner,
               rec != NULL && (r < 75 || r >= 85) ? &base : NULL);
  return true;
}

static void random_admin(struct rworld *w) {
  int scoped[8];
  int ns = 0;
  int i;
  int user;
  const uint8_t *visit;
  struct asg *a;
  uint64_t r = test_rand_below(&rng, 100);

  for (i = 0; i < w->m.nusers; i++)
    if (w->m.u[i].role != R_HEAD_OFFICE)
      scoped[ns++] = i;
  user = scoped[test_rand_below(&rng, (uint64_t)ns)];
  visit = w->visit[test_rand_below(&rng, 8)];
  a = model_asg(&w->m, user, visit, false);
  if (a != NULL && a->active && r < 45)
    admin_unassign(&w->m, user, visit);
  else if (r < 70)
    admin_assign(&w->m, user, visit, true);
  else
    admin_assign(&w->m, user, visit, false);
}

TEST(scope_random_triples) {
  static struct rworld w;
  struct wchange *batch = xcalloc(RANDOM_BATCH, sizeof(*batch));
  long long t0 = proc_now_ms();
  uint64_t triples = 0;
  uint64_t admin_ops = 0;
  uint64_t pulls = 0;
  static const struct {
    const char *name;
    int role;
    int devices;
  } people[] = {{"ins1", R_INSPECTOR, 2}, {"ins2", R_INSPECTOR, 1},
                {"ins3", R_INSPECTOR, 1}, {"exp1", R_EXPERT, 2},
                {"exp2", R_EXPERT, 1},    {"ho1", R_HEAD_OFFICE, 1},
                {"ho2", R_HEAD_OFFICE, 1}};
  size_t i;
  int j;
  struct rdev *hod = NULL;

  memset(&T, 0, sizeof(T));
  memset(&w, 0, sizeof(w));
  seed_used = test_seed();
  rng = seed_used;
  nslots = 0;
  raw_setup("fs-scope-random");
  for (i = 0; i < sizeof(people) / sizeof(people[0]); i++)
    admin_user(&w.m, people[i].name, people[i].role);
  raw_start();
  for (i = 0; i < sizeof(people) / sizeof(people[0]); i++)
    for (j = 0; j < people[i].devices; j++) {
      struct rdev *x = &w.dv[w.ndev++];
      dev_init(&w.m, &x->d, (int)i, true);
      x->ring = xcalloc(RING, sizeof(*x->ring));
      if (people[i].role == R_HEAD_OFFICE && hod == NULL)
        hod = x;
    }

  /* The scope pool: four services, eight visits, made by head office,
   * with a few records in each; assignments to start with. */
  {
    struct wchange *ws = xcalloc(80, sizeof(*ws));
    size_t n = 0;
    for (i = 0; i < 4; i++) {
      struct skey k;
      new_id(w.svc[i], 0x01);
      k.kind = K_SERVICE;
      memcpy(k.id, w.svc[i], 16);
      wchange_make(&ws[n++], &hod->d, C_SERVICE, w.svc[i], false, &k, w.svc[i],
                   "", NULL);
    }
    for (i = 0; i < 8; i++) {
      struct skey k;
      new_id(w.visit[i], 0x02);
      w.visit_svc[i] = (uint8_t)test_rand_below(&rng, 4);
      k.kind = K_VISIT;
      memcpy(k.id, w.visit[i], 16);
      wchange_make(&ws[n++], &hod->d, C_VISIT, w.visit[i], false, &k,
                   w.svc[w.visit_svc[i]], "ins1", NULL);
    }
    while (n < 72) {
      int coll = 3 + (int)test_rand_below(&rng, 6); /* not service, visit */
      struct skey k;
      uint8_t id[16];
      k.kind = coll_kind[coll];
      if (k.kind == K_VISIT)
        memcpy(k.id, w.visit[test_rand_below(&rng, 8)], 16);
      else
        memcpy(k.id, w.svc[test_rand_below(&rng, 4)], 16);
      new_id(id, (uint8_t)(0x10 + coll));
      wchange_make(&ws[n++], &hod->d, coll, id, false, &k, k.id,
                   w.m.u[test_rand_below(&rng, (uint64_t)w.m.nusers)].name,
                   NULL);
    }
    push_all(&w.m, &hod->d, ws, n, RANDOM_BATCH);
    free(ws);
  }
  for (i = 0; i < (size_t)w.m.nusers; i++) {
    if (w.m.u[i].role == R_HEAD_OFFICE)
      continue;
    for (j = 0; j < 3; j++)
      admin_assign(&w.m, (int)i, w.visit[test_rand_below(&rng, 8)],
                   test_rand_below(&rng, 100) < 30);
  }

  while (triples < RANDOM_TRIPLES) {
    struct rdev *x = &w.dv[test_rand_below(&rng, (uint64_t)w.ndev)];
    size_t k;
    size_t n = 0;

    if (triples / RANDOM_ADMIN_EVERY > admin_ops) {
      random_admin(&w);
      admin_ops++;
    }
    if (test_rand_below(&rng, 100) < 30) {
      /* Now and then a new session for the same device. */
      if (x->d.up && test_rand_below(&rng, 20) == 0) {
        sess_close(&x->d.w);
        x->d.up = false;
      }
      pull_cycle(&w.m, &x->d, 1 + (uint32_t)test_rand_below(&rng, 64));
      triples++;
      pulls++;
      continue;
    }
    k = 1 + test_rand_below(&rng, RANDOM_BATCH);
    if (k > RANDOM_TRIPLES - triples)
      k = RANDOM_TRIPLES - triples;
    while (n < k)
      if (random_change(&w, x, &batch[n]))
        n++;
    push_batch(&w.m, &x->d, batch, n, NULL);
    for (i = 0; i < n; i++) {
      x->ring[x->nring % RING] = batch[i];
      x->nring++;
    }
    triples += n;
  }

  /* Every device pulls to the end; fresh devices of every user pull from
   * cursor 0; head office's fresh pull must equal the model exactly. */
  for (j = 0; j < w.ndev; j++)
    pull_cycle(&w.m, &w.dv[j].d, 200);
  for (i = 0; i < (size_t)w.m.nusers; i++) {
    struct dev f;
    dev_init(&w.m, &f, (int)i, false);
    pull_cycle(&w.m, &f, 1000);
    dev_free(&f);
  }
  printf("# random: %llu triples (%llu pulls, %llu changes pushed), %llu "
         "assignment changes, %zu records\n",
         (unsigned long long)triples, (unsigned long long)pulls,
         (unsigned long long)T.changes_pushed, (unsigned long long)admin_ops,
         w.m.n);
  print_summary("random", t0);
  for (j = 0; j < w.ndev; j++) {
    dev_free(&w.dv[j].d);
    free(w.dv[j].ring);
  }
  ASSERT_EQ(server_stop(&srv), 0);
  free(batch);
  model_free(&w.m);
  assert_clean();
}

/* ==== end to end through libfieldsync ==================================== */

/* One replica of the real client: a user, its device token, its database. */
struct cli {
  const char *user;
  char token[128];
  char path[320];
  fieldsync_db *db;
};

/* What the outcome callback saw during one sync. */
struct seen {
  size_t ok;
  size_t refused;
  char refusal[256];
};

/* Named records made by head office (hex ids). */
struct e2e {
  struct cli ho, ins1, exp1, ins2;
  char s1[33], s2[33], v1[33], v2[33];
  char o1[33], n1[33], n2[33], a1[33], r1[33], c1[33];
  char o2[33], r2[33];
};

static void cli_init(struct cli *c, const char *user, const char *role) {
  memset(c, 0, sizeof(*c));
  c->user = user;
  admin_user_device(admin, srvdb, user, role, c->token, sizeof(c->token));
  snprintf(c->path, sizeof(c->path), "%s/%s.db", dir, user);
  if (fieldsync_open(c->path, FIELDSYNC_OPEN_CREATE, user, &c->db) != 0)
    test_fail(__FILE__, __LINE__, "open %s: %s", c->path,
              fieldsync_errmsg(c->db));
}

static void cli_close(struct cli *c) {
  ASSERT_OK(fieldsync_close(c->db));
  c->db = NULL;
}

static void on_outcome(const char *collection, const char *id,
                       const char *outcome, const char *reason, void *data) {
  struct seen *s = data;

  if (strcmp(outcome, "refused") != 0) {
    s->ok++;
    return;
  }
  s->refused++;
  snprintf(s->refusal, sizeof(s->refusal), "%s %s: %s", collection, id,
           reason != NULL ? reason : "");
}

/* Syncs c; returns fieldsync_sync's code. */
static int cli_sync_rc(struct cli *c, struct seen *s,
                       struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_opts o;

  memset(s, 0, sizeof(*s));
  memset(st, 0, sizeof(*st));
  memset(&o, 0, sizeof(o));
  o.server = srv.addr;
  o.token = c->token;
  o.plaintext = 1;
  o.timeout_ms = SYNC_TIMEOUT_MS;
  o.outcome = on_outcome;
  o.outcome_data = s;
  return fieldsync_sync(c->db, &o, st);
}

/* Syncs c, which must succeed with refused versions as said. */
static void cli_sync(struct cli *c, size_t refused,
                     struct fieldsync_sync_stats *st) {
  struct fieldsync_sync_stats local;
  struct seen s;
  int rc;

  if (st == NULL)
    st = &local;
  rc = cli_sync_rc(c, &s, st);
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "sync %s: %s: %s", c->user,
              fieldsync_errname(rc), fieldsync_errmsg(c->db));
  if (s.refused != refused)
    test_fail(__FILE__, __LINE__, "sync %s: %zu refused, want %zu (last: %s)",
              c->user, s.refused, refused, s.refusal);
  if (refused > 0 && strstr(s.refusal, "ERR_FORBIDDEN") == NULL)
    test_fail(__FILE__, __LINE__, "sync %s: refusal without ERR_FORBIDDEN: %s",
              c->user, s.refusal);
}

struct kv {
  const char *field;
  const char *value;
};

static void cli_create(struct cli *c, const char *coll, const struct kv *kv,
                       char id[33]) {
  fieldsync_draft *d = NULL;
  size_t i;

  ASSERT_OK(fieldsync_draft_new(c->db, coll, &d));
  for (i = 0; kv[i].field != NULL; i++)
    if (fieldsync_draft_set(d, kv[i].field, kv[i].value) != 0)
      test_fail(__FILE__, __LINE__, "%s.%s = %s: %s", coll, kv[i].field,
                kv[i].value, fieldsync_errmsg(c->db));
  if (fieldsync_create(c->db, d, id) != 0)
    test_fail(__FILE__, __LINE__, "create %s: %s", coll,
              fieldsync_errmsg(c->db));
  fieldsync_draft_free(d);
}

static void cli_edit(struct cli *c, const char *id, const char *field,
                     const char *value) {
  fieldsync_draft *d = NULL;

  if (fieldsync_draft_for_edit(c->db, id, &d) != 0)
    test_fail(__FILE__, __LINE__, "edit %s: %s", id, fieldsync_errmsg(c->db));
  ASSERT_OK(fieldsync_draft_set(d, field, value));
  if (fieldsync_edit(c->db, d) != 0)
    test_fail(__FILE__, __LINE__, "edit %s: %s", id, fieldsync_errmsg(c->db));
  fieldsync_draft_free(d);
}

/* JSON lines gathered from a record callback. */
struct lines {
  json_t *arr;
};

static int lines_cb(const char *json, void *data) {
  struct lines *l = data;
  json_error_t e;
  json_t *j = json_loads(json, 0, &e);

  if (j == NULL)
    test_fail(__FILE__, __LINE__, "library JSON: %s: %s", e.text, json);
  json_array_append_new(l->arr, j);
  return 0;
}

/* Every local record of c (deleted ones too), as a JSON array. */
static json_t *cli_records(struct cli *c) {
  struct fieldsync_query q;
  struct lines l = {json_array()};

  memset(&q, 0, sizeof(q));
  q.include_deleted = 1;
  if (fieldsync_query(c->db, &q, lines_cb, &l) != 0)
    test_fail(__FILE__, __LINE__, "query %s: %s", c->user,
              fieldsync_errmsg(c->db));
  return l.arr;
}

static json_t *cli_quarantine(struct cli *c) {
  struct lines l = {json_array()};

  if (fieldsync_quarantine(c->db, lines_cb, &l) != 0)
    test_fail(__FILE__, __LINE__, "quarantine %s: %s", c->user,
              fieldsync_errmsg(c->db));
  return l.arr;
}

static json_t *cli_refused(struct cli *c) {
  struct lines l = {json_array()};

  if (fieldsync_refused(c->db, lines_cb, &l) != 0)
    test_fail(__FILE__, __LINE__, "refused %s: %s", c->user,
              fieldsync_errmsg(c->db));
  return l.arr;
}

static const char *jstr(json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);

  return json_is_string(v) ? json_string_value(v) : "";
}

/* Fails unless c holds exactly the records named (a NULL-terminated list). */
static void expect_records(struct cli *c, const char *const *want) {
  json_t *got = cli_records(c);
  size_t n = 0;
  size_t i;
  size_t k;

  for (n = 0; want[n] != NULL; n++) {
    bool found = false;
    for (i = 0; i < json_array_size(got); i++)
      if (strcmp(jstr(json_array_get(got, i), "id"), want[n]) == 0)
        found = true;
    if (!found)
      test_fail(__FILE__, __LINE__, "%s lacks record %s", c->user, want[n]);
  }
  for (i = 0; i < json_array_size(got); i++) {
    const char *id = jstr(json_array_get(got, i), "id");
    bool expected = false;
    for (k = 0; want[k] != NULL; k++)
      if (strcmp(want[k], id) == 0)
        expected = true;
    if (!expected)
      test_fail(__FILE__, __LINE__, "%s holds %s %s, which it may not see",
                c->user, jstr(json_array_get(got, i), "collection"), id);
  }
  json_decref(got);
}

/* The quarantine of c holds exactly the records named, each with a reason
 * containing why; returns it (the caller frees). */
static json_t *expect_quarantine(struct cli *c, const char *const *want,
                                 const char *why) {
  json_t *q = cli_quarantine(c);
  size_t n;
  size_t i;

  for (n = 0; want[n] != NULL; n++)
    continue;
  if (json_array_size(q) != n) {
    char *dump = json_dumps(q, JSON_COMPACT);
    test_fail(__FILE__, __LINE__, "%s: %zu quarantined, want %zu: %s", c->user,
              json_array_size(q), n, dump ? dump : "");
  }
  for (n = 0; want[n] != NULL; n++) {
    bool found = false;
    for (i = 0; i < json_array_size(q); i++) {
      json_t *e = json_array_get(q, i);
      if (strcmp(jstr(e, "id"), want[n]) != 0)
        continue;
      found = true;
      if (strstr(jstr(e, "reason"), why) == NULL)
        test_fail(__FILE__, __LINE__, "%s: quarantined %s: reason \"%s\"",
                  c->user, want[n], jstr(e, "reason"));
    }
    if (!found)
      test_fail(__FILE__, __LINE__, "%s: %s is not in the quarantine", c->user,
                want[n]);
  }
  return q;
}

/* The quarantined version of record id, from q. */
static json_t *quarantined(json_t *q, const char *id) {
  size_t i;

  for (i = 0; i < json_array_size(q); i++)
    if (strcmp(jstr(json_array_get(q, i), "id"), id) == 0)
      return json_array_get(q, i);
  return NULL;
}

/* Field of the display winner of record id on c, or NULL. */
static char *cli_field(struct cli *c, const char *id, const char *field) {
  json_error_t e;
  char *s = NULL;
  char *out = NULL;
  json_t *j;
  json_t *v;
  int rc = fieldsync_get_json(c->db, id, &s);

  if (rc == FIELDSYNC_ENOTFOUND)
    return NULL;
  if (rc != 0)
    test_fail(__FILE__, __LINE__, "get %s: %s", id, fieldsync_errmsg(c->db));
  j = json_loads(s, 0, &e);
  ASSERT(j != NULL);
  v = json_object_get(
      json_object_get(json_array_get(json_object_get(j, "versions"), 0),
                      "fields"),
      field);
  if (json_is_string(v))
    out = strdup(json_string_value(v));
  json_decref(j);
  fieldsync_free(s);
  return out;
}

static bool cli_has(struct cli *c, const char *id) {
  char *s = NULL;
  int rc = fieldsync_get_json(c->db, id, &s);

  fieldsync_free(s);
  if (rc != 0 && rc != FIELDSYNC_ENOTFOUND)
    test_fail(__FILE__, __LINE__, "get %s: %s", id, fieldsync_errmsg(c->db));
  return rc == 0;
}

static void admin_do(const char *const *args) {
  char out[4096];

  proc_admin_run(admin, srvdb, args, out, sizeof(out));
}

/* Users, the daemon, and head office's records: S1 with V1 (observation
 * O1, interview notes N1 by exp1 and N2 by exp2, attachment A1,
 * requirement R1, concern C1), S2 with V2 (O2, R2). */
static void e2e_setup(struct e2e *e, const char *prefix) {
  memset(e, 0, sizeof(*e));
  tmpdir_make(dir, sizeof(dir), prefix);
  tmpdir_kill_at_exit(&srv);
  snprintf(srvdb, sizeof(srvdb), "%s/server.db", dir);
  cli_init(&e->ho, "ho", "head_office");
  cli_init(&e->ins1, "ins1", "inspector");
  cli_init(&e->exp1, "exp1", "expert");
  cli_init(&e->ins2, "ins2", "inspector");
  server_start(&srv, fieldsyncd, srvdb, NULL);
  {
    const struct kv k[] = {{"name", "Sunny Bank"}, {NULL, NULL}};
    cli_create(&e->ho, "service", k, e->s1);
  }
  {
    const struct kv k[] = {{"name", "Oak Lodge"}, {NULL, NULL}};
    cli_create(&e->ho, "service", k, e->s2);
  }
  {
    const struct kv k[] = {{"service_id", e->s1},
                           {"lead_inspector", "ins1"},
                           {"planned_date", "2008-05-01"},
                           {NULL, NULL}};
    cli_create(&e->ho, "visit", k, e->v1);
  }
  {
    const struct kv k[] = {{"service_id", e->s2},
                           {"lead_inspector", "ins2"},
                           {"planned_date", "2008-06-01"},
                           {NULL, NULL}};
    cli_create(&e->ho, "visit", k, e->v2);
  }
  {
    const struct kv k[] = {{"visit_id", e->v1},
                           {"standard_code", "OP9"},
                           {"judgement", "3"},
                           {"assessor", "ins1"},
                           {"evidence_text", "MAR charts complete"},
                           {NULL, NULL}};
    cli_create(&e->ho, "observation", k, e->o1);
  }
  {
    const struct kv k[] = {{"visit_id", e->v1},
                           {"expert", "exp1"},
                           {"participant_code", "P1"},
                           {"said", "the food is good"},
                           {NULL, NULL}};
    cli_create(&e->ho, "interview_note", k, e->n1);
  }
  {
    const struct kv k[] = {{"visit_id", e->v1},
                           {"expert", "exp2"},
                           {"participant_code", "P2"},
                           {"said", "staff are kind"},
                           {NULL, NULL}};
    cli_create(&e->ho, "interview_note", k, e->n2);
  }
  {
    const struct kv k[] = {{"visit_id", e->v1},
                           {"captured_by", "ins1"},
                           {"mime", "image/jpeg"},
                           {"caption", "fire door"},
                           {NULL, NULL}};
    cli_create(&e->ho, "attachment", k, e->a1);
  }
  {
    const struct kv k[] = {{"service_id", e->s1},
                           {"standard_code", "OP9"},
                           {"text", "Keep MAR charts"},
                           {"owner", "ins1"},
                           {NULL, NULL}};
    cli_create(&e->ho, "requirement", k, e->r1);
  }
  {
    const struct kv k[] = {
        {"service_id", e->s1}, {"summary", "night staffing"}, {NULL, NULL}};
    cli_create(&e->ho, "concern", k, e->c1);
  }
  {
    const struct kv k[] = {{"visit_id", e->v2},
                           {"standard_code", "OP7"},
                           {"assessor", "ins2"},
                           {NULL, NULL}};
    cli_create(&e->ho, "observation", k, e->o2);
  }
  {
    const struct kv k[] = {
        {"service_id", e->s2}, {"text", "Fix the lift"}, {NULL, NULL}};
    cli_create(&e->ho, "requirement", k, e->r2);
  }
  cli_sync(&e->ho, 0, NULL);
}

static void e2e_teardown(struct e2e *e) {
  cli_close(&e->ho);
  cli_close(&e->ins1);
  cli_close(&e->exp1);
  cli_close(&e->ins2);
  ASSERT_EQ(server_stop(&srv), 0);
}

static void assign_hex(const char *visit, const char *user, const char *until) {
  if (until != NULL) {
    const char *a[] = {"assign", visit, user, "--until", until, NULL};
    admin_do(a);
  } else {
    const char *a[] = {"assign", visit, user, NULL};
    admin_do(a);
  }
}

/* (a) After an assignment the next sync also brings the visit's existing
 * records and its service's, though their seq is below the cursor. */
TEST(scope_e2e_backfill) {
  struct e2e e;
  struct fieldsync_sync_stats st;
  uint64_t cursor;

  e2e_setup(&e, "fs-scope-backfill");
  cli_sync(&e.ins1, 0, &st);
  cursor = st.cursor;
  ASSERT_GT(cursor, 0);
  {
    const char *none[] = {NULL};
    expect_records(&e.ins1, none);
  }
  cli_sync(&e.exp1, 0, NULL);
  assign_hex(e.v1, "ins1", NULL);
  assign_hex(e.v1, "exp1", NULL);

  cli_sync(&e.ins1, 0, &st);
  ASSERT_GE(st.cursor, cursor);
  ASSERT_GE(st.pulled, 8);
  {
    const char *want[] = {e.s1, e.v1, e.o1, e.n1, e.n2, e.a1, e.r1, e.c1, NULL};
    expect_records(&e.ins1, want);
  }
  /* The expert: the visit and their own interview note, nothing else. */
  cli_sync(&e.exp1, 0, NULL);
  {
    const char *want[] = {e.v1, e.n1, NULL};
    expect_records(&e.exp1, want);
  }
  /* Nothing more arrives on a second sync. */
  cli_sync(&e.ins1, 0, &st);
  ASSERT_EQ(st.applied, 0);
  e2e_teardown(&e);
}

/* (b) Unassignment: the visit's and its service's records are removed;
 * the unacknowledged edit and record are quarantined first, the
 * acknowledged one is not. */
TEST(scope_e2e_unassign) {
  struct e2e e;
  struct fieldsync_sync_stats st;
  char o3[33];
  char o4[33];
  json_t *q;
  char *f;

  e2e_setup(&e, "fs-scope-unassign");
  assign_hex(e.v1, "ins1", NULL);
  cli_sync(&e.ins1, 0, NULL);
  {
    const struct kv k[] = {{"visit_id", e.v1},
                           {"standard_code", "OP10"},
                           {"assessor", "ins1"},
                           {NULL, NULL}};
    cli_create(&e.ins1, "observation", k, o3);
  }
  cli_sync(&e.ins1, 0, &st);
  ASSERT_EQ(st.acked, 1);
  /* Offline work, then the assignment ends. */
  cli_edit(&e.ins1, e.o1, "evidence_text", "edited offline");
  {
    const struct kv k[] = {{"visit_id", e.v1},
                           {"standard_code", "OP12"},
                           {"assessor", "ins1"},
                           {NULL, NULL}};
    cli_create(&e.ins1, "observation", k, o4);
  }
  {
    const char *a[] = {"unassign", e.v1, "ins1", NULL};
    admin_do(a);
  }
  /* The push comes first and is refused (the visit is no longer this
   * device's), then the pull removes the scopes. */
  cli_sync(&e.ins1, 2, &st);
  ASSERT_EQ(st.quarantined, 2);
  ASSERT_GE(st.removed, 9);
  {
    const char *none[] = {NULL};
    const char *want[] = {e.o1, o4, NULL};
    expect_records(&e.ins1, none);
    q = expect_quarantine(&e.ins1, want, "scope removed");
  }
  ASSERT(quarantined(q, o3) == NULL);
  ASSERT_STR_EQ(
      jstr(json_object_get(quarantined(q, e.o1), "fields"), "evidence_text"),
      "edited offline");
  /* The push before the removal was refused: the mark travels along. */
  ASSERT_STR_EQ(jstr(json_object_get(quarantined(q, e.o1), "refused"), "code"),
                "ERR_FORBIDDEN");
  json_decref(q);
  /* The server has the acknowledged record and neither unacked one. */
  cli_sync(&e.ho, 0, NULL);
  ASSERT(cli_has(&e.ho, o3));
  ASSERT(!cli_has(&e.ho, o4));
  f = cli_field(&e.ho, e.o1, "evidence_text");
  ASSERT_STR_EQ(f, "MAR charts complete");
  free(f);
  /* A later sync removes nothing more and loses nothing. */
  cli_sync(&e.ins1, 0, &st);
  ASSERT_EQ(st.quarantined, 0);
  {
    const char *want[] = {e.o1, o4, NULL};
    json_decref(expect_quarantine(&e.ins1, want, "scope removed"));
  }
  e2e_teardown(&e);
}

/* (b) for an expert whose assignment expires: the scenario on visit, with
 * the assignment ending window_s seconds from now. Returns false when the
 * machine was too slow to finish the part before the end in time. */
static bool expiry_scenario(struct e2e *e, const char *visit, const char *own,
                            int window_s, time_t *end_out) {
  struct fieldsync_sync_stats st;
  struct seen s;
  char until[32];
  char n3[33];
  char n4[33];
  time_t end = time(NULL) + window_s;
  struct tm tm;
  long long deadline;
  int rc;

  *end_out = end;
  gmtime_r(&end, &tm);
  strftime(until, sizeof(until), "%Y-%m-%dT%H:%M:%SZ", &tm);
  assign_hex(visit, "exp1", until);
  cli_sync(&e->exp1, 0, NULL);
  {
    const struct kv k[] = {{"visit_id", visit},
                           {"expert", "exp1"},
                           {"participant_code", "P3"},
                           {"said", "I like the garden"},
                           {NULL, NULL}};
    cli_create(&e->exp1, "interview_note", k, n3);
  }
  rc = cli_sync_rc(&e->exp1, &s, &st);
  if (time(NULL) >= end - 1)
    return false; /* too slow: the end may have passed during the sync */
  ASSERT_OK(rc);
  ASSERT_EQ(s.refused, 0);
  ASSERT_EQ(st.acked, 1);
  {
    const char *want[] = {visit, own, n3, NULL};
    expect_records(&e->exp1, want);
  }
  /* Offline work, then wait (bounded) until the assignment has ended. */
  cli_edit(&e->exp1, own, "said", "changed my mind");
  {
    const struct kv k[] = {{"visit_id", visit},
                           {"expert", "exp1"},
                           {"participant_code", "P4"},
                           {NULL, NULL}};
    cli_create(&e->exp1, "interview_note", k, n4);
  }
  deadline = proc_now_ms() + (long long)(window_s + 30) * 1000;
  while (time(NULL) <= end) {
    ASSERT(proc_now_ms() < deadline);
    proc_sleep_ms(200);
  }
  cli_sync(&e->exp1, 2, &st);
  ASSERT_EQ(st.quarantined, 2);
  {
    const char *none[] = {NULL};
    const char *want[] = {own, n4, NULL};
    json_t *q;
    expect_records(&e->exp1, none);
    q = expect_quarantine(&e->exp1, want, "scope removed");
    ASSERT(quarantined(q, n3) == NULL);
    json_decref(q);
  }
  cli_sync(&e->ho, 0, NULL);
  ASSERT(cli_has(&e->ho, n3));
  ASSERT(!cli_has(&e->ho, n4));
  return true;
}

TEST(scope_e2e_expiry) {
  struct e2e e;
  time_t end;

  e2e_setup(&e, "fs-scope-expiry");
  if (!expiry_scenario(&e, e.v1, e.n1, 15, &end)) {
    /* A slow machine: let the first assignment end and its removal go
     * through, then again on a fresh visit with a longer window. */
    char v9[33];
    char n9[33];
    long long deadline = proc_now_ms() + 60000;
    printf("# slow machine: repeating the expiry with a 90 s window\n");
    while (time(NULL) <= end) {
      ASSERT(proc_now_ms() < deadline);
      proc_sleep_ms(200);
    }
    cli_sync(&e.exp1, 0, NULL);
    {
      const struct kv k[] = {{"service_id", e.s1}, {NULL, NULL}};
      cli_create(&e.ho, "visit", k, v9);
    }
    {
      const struct kv k[] = {
          {"visit_id", v9}, {"expert", "exp1"}, {NULL, NULL}};
      cli_create(&e.ho, "interview_note", k, n9);
    }
    cli_sync(&e.ho, 0, NULL);
    {
      size_t n = 0;
      ASSERT_OK(fieldsync_quarantine_discard(e.exp1.db, 0, &n));
    }
    ASSERT(expiry_scenario(&e, v9, n9, 90, &end));
  }
  e2e_teardown(&e);
}

/* The id of user's (unrevoked) device from `device list --json`. */
static long long device_id_of(const char *user) {
  const char *args[] = {"device", "list", "--json", NULL};
  static char out[65536];
  json_error_t err;
  json_t *all;
  json_t *list;
  long long id = -1;
  size_t i;

  proc_admin_run(admin, srvdb, args, out, sizeof(out));
  all = json_loads(out, JSON_DISABLE_EOF_CHECK, &err);
  if (all != NULL && json_is_array(all)) {
    list = all;
  } else {
    /* One JSON object per line. */
    char *line = out;
    json_decref(all);
    all = NULL;
    list = json_array();
    while (line != NULL && *line != '\0') {
      char *nl = strchr(line, '\n');
      json_t *o;
      if (nl != NULL)
        *nl = '\0';
      o = json_loads(line, 0, &err);
      if (o != NULL)
        json_array_append_new(list, o);
      line = nl != NULL ? nl + 1 : NULL;
    }
    all = list;
  }
  for (i = 0; i < json_array_size(list); i++) {
    json_t *d = json_array_get(list, i);
    if (strcmp(jstr(d, "user"), user) == 0 &&
        !json_is_true(json_object_get(d, "revoked")) &&
        json_is_integer(json_object_get(d, "id")))
      id = (long long)json_integer_value(json_object_get(d, "id"));
  }
  json_decref(all);
  if (id < 0)
    test_fail(__FILE__, __LINE__, "no device of %s in device list --json: %s",
              user, out);
  return id;
}

/* (c) Revocation: the next sync is refused with FIELDSYNC_EREVOKED, the
 * unacknowledged work goes to the quarantine and the rest is wiped. */
TEST(scope_e2e_revoke) {
  struct e2e e;
  struct fieldsync_sync_stats st;
  struct seen s;
  char o5[33];
  char idtext[32];
  char *f;
  int rc;

  e2e_setup(&e, "fs-scope-revoke");
  assign_hex(e.v1, "ins1", NULL);
  cli_sync(&e.ins1, 0, NULL);
  cli_edit(&e.ins1, e.o1, "evidence_text", "edited before revocation");
  {
    const struct kv k[] = {{"visit_id", e.v1},
                           {"standard_code", "OP18"},
                           {"assessor", "ins1"},
                           {NULL, NULL}};
    cli_create(&e.ins1, "observation", k, o5);
  }
  snprintf(idtext, sizeof(idtext), "%lld", device_id_of("ins1"));
  {
    const char *a[] = {"device", "revoke", idtext, NULL};
    admin_do(a);
  }
  rc = cli_sync_rc(&e.ins1, &s, &st);
  if (rc != FIELDSYNC_EREVOKED)
    test_fail(__FILE__, __LINE__, "sync of a revoked device: %s (%s)",
              fieldsync_errname(rc), fieldsync_errmsg(e.ins1.db));
  {
    const char *none[] = {NULL};
    const char *want[] = {e.o1, o5, NULL};
    json_t *q;
    expect_records(&e.ins1, none);
    q = expect_quarantine(&e.ins1, want, "revoked");
    ASSERT_STR_EQ(
        jstr(json_object_get(quarantined(q, e.o1), "fields"), "evidence_text"),
        "edited before revocation");
    json_decref(q);
  }
  /* Another attempt neither syncs nor quarantines anything twice. */
  rc = cli_sync_rc(&e.ins1, &s, &st);
  if (rc != FIELDSYNC_EREVOKED && rc != FIELDSYNC_EAUTH)
    test_fail(__FILE__, __LINE__, "second sync of a revoked device: %s (%s)",
              fieldsync_errname(rc), fieldsync_errmsg(e.ins1.db));
  {
    const char *want[] = {e.o1, o5, NULL};
    json_decref(expect_quarantine(&e.ins1, want, "revoked"));
  }
  /* Nothing of it reached the server; other devices carry on. */
  cli_sync(&e.ho, 0, NULL);
  ASSERT(!cli_has(&e.ho, o5));
  f = cli_field(&e.ho, e.o1, "evidence_text");
  ASSERT_STR_EQ(f, "MAR charts complete");
  free(f);
  assign_hex(e.v2, "ins2", NULL);
  cli_sync(&e.ins2, 0, NULL);
  {
    const char *want[] = {e.s2, e.v2, e.o2, e.r2, NULL};
    expect_records(&e.ins2, want);
  }
  e2e_teardown(&e);
}

/* (d) A refused version stays, marked refused, and is not sent again until
 * fieldsync_retry_refused(); once the scope is granted it syncs. */
TEST(scope_e2e_refused) {
  struct e2e e;
  struct fieldsync_sync_stats st;
  char o6[33];
  json_t *r;
  size_t n = 0;

  e2e_setup(&e, "fs-scope-refused");
  assign_hex(e.v1, "ins1", NULL);
  cli_sync(&e.ins1, 0, NULL);
  {
    const struct kv k[] = {{"visit_id", e.v2},
                           {"standard_code", "OP26"},
                           {"assessor", "ins1"},
                           {NULL, NULL}};
    cli_create(&e.ins1, "observation", k, o6);
  }
  cli_sync(&e.ins1, 1, &st);
  ASSERT_EQ(st.refused, 1);
  r = cli_refused(&e.ins1);
  ASSERT_EQ(json_array_size(r), 1);
  ASSERT_STR_EQ(jstr(json_array_get(r, 0), "id"), o6);
  ASSERT_STR_EQ(jstr(json_array_get(r, 0), "code"), "ERR_FORBIDDEN");
  ASSERT(jstr(json_array_get(r, 0), "reason")[0] != '\0');
  json_decref(r);
  ASSERT(cli_has(&e.ins1, o6));
  {
    /* get_json shows the version marked refused, with the code. */
    char *js = NULL;
    json_error_t je;
    json_t *j;
    ASSERT_OK(fieldsync_get_json(e.ins1.db, o6, &js));
    j = json_loads(js, 0, &je);
    ASSERT(j != NULL);
    ASSERT_STR_EQ(
        jstr(json_object_get(json_array_get(json_object_get(j, "versions"), 0),
                             "refused"),
             "code"),
        "ERR_FORBIDDEN");
    json_decref(j);
    fieldsync_free(js);
  }

  /* Not sent again by the next sync; not on the server. */
  cli_sync(&e.ins1, 0, &st);
  ASSERT_EQ(st.pushed, 0);
  r = cli_refused(&e.ins1);
  ASSERT_EQ(json_array_size(r), 1);
  json_decref(r);
  cli_sync(&e.ho, 0, NULL);
  ASSERT(!cli_has(&e.ho, o6));

  /* The scope is fixed: still not sent until the user asks. */
  assign_hex(e.v2, "ins1", NULL);
  cli_sync(&e.ins1, 0, &st);
  ASSERT_EQ(st.pushed, 0);
  {
    const char *want[] = {e.s1, e.v1, e.o1, e.n1, e.n2, e.a1, e.r1,
                          e.c1, e.s2, e.v2, e.o2, e.r2, o6,   NULL};
    expect_records(&e.ins1, want);
  }
  ASSERT_OK(fieldsync_retry_refused(e.ins1.db, NULL, &n));
  ASSERT_EQ(n, 1);
  cli_sync(&e.ins1, 0, &st);
  ASSERT_EQ(st.pushed, 1);
  ASSERT_EQ(st.acked, 1);
  r = cli_refused(&e.ins1);
  ASSERT_EQ(json_array_size(r), 0);
  json_decref(r);
  cli_sync(&e.ho, 0, NULL);
  ASSERT(cli_has(&e.ho, o6));
  e2e_teardown(&e);
}

int main(int argc, char **argv) {
  static const struct test_entry tests[] = {
      TEST_ENTRY(scope_matrix) TEST_ENTRY(scope_random_triples)
          TEST_ENTRY(scope_e2e_backfill) TEST_ENTRY(scope_e2e_unassign)
              TEST_ENTRY(scope_e2e_expiry) TEST_ENTRY(scope_e2e_revoke)
                  TEST_ENTRY(scope_e2e_refused)};

  if (argc < 3) {
    fprintf(stderr, "usage: test_scope FIELDSYNCD FIELDSYNC-ADMIN [TEST]\n");
    return 2;
  }
  fieldsyncd = argv[1];
  admin = argv[2];
  argv[2] = argv[0];
  return test_run_all(tests, sizeof(tests) / sizeof(tests[0]), argc - 2,
                      argv + 2);
}
