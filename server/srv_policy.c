/* SPDX-License-Identifier: MIT */
/* The role table of srv_policy.h (DOMAIN.md 7.3): who may read and write
 * which collection. Pure functions, no I/O; the store supplies the facts
 * (operation, ownership) and checks scopes itself. */
#include "srv_policy.h"

#include <stddef.h>
#include <string.h>

#include "fieldsync.pb-c.h"

#define R_INSPECTOR FIELDSYNC__ROLE__ROLE_INSPECTOR
#define R_EXPERT FIELDSYNC__ROLE__ROLE_EXPERT
#define R_HEAD_OFFICE FIELDSYNC__ROLE__ROLE_HEAD_OFFICE

/* Rule cells: whether an operation is allowed, and whether it needs the
 * user to own the record ("own" in srv_policy.h). */
enum cell { NO = 0, YES, OWN };

/* One row per (role, collection): the C, U and D cells and the sentence
 * that explains a refusal. */
struct rule {
  int role;
  int collection;
  enum cell op[3]; /* indexed by enum srv_op */
  const char *why;
};

static const struct rule rules[] = {
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_SERVICE,
     {NO, NO, NO},
     "inspectors may not write services (head office keeps them)"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_VISIT,
     {NO, OWN, NO},
     "inspectors may only update visits they lead (lead_inspector), not "
     "create, delete or hand them over"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION,
     {YES, YES, NO},
     "inspectors may create and update observations, not delete them"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE,
     {NO, NO, NO},
     "only experts by experience write interview notes"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_REQUIREMENT,
     {YES, YES, NO},
     "inspectors may create and update requirements, not delete them"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_RECOMMENDATION,
     {YES, YES, NO},
     "inspectors may create and update recommendations, not delete them"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_CONCERN,
     {YES, NO, NO},
     "inspectors may raise concerns, not change or delete them"},
    {R_INSPECTOR,
     FIELDSYNC__COLLECTION__COLLECTION_ATTACHMENT,
     {OWN, OWN, OWN},
     "inspectors may write only their own attachments (captured_by)"},
    {R_EXPERT,
     FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE,
     {OWN, OWN, OWN},
     "experts may write only their own interview notes"},
};

/* An expert's refusal for any collection but interview notes. */
static const char expert_only_notes[] =
    "experts may write only their own interview notes";

static bool collection_known(int collection) {
  return collection >= FIELDSYNC__COLLECTION__COLLECTION_SERVICE &&
         collection <= FIELDSYNC__COLLECTION__COLLECTION_ATTACHMENT;
}

bool srv_policy_may_read(int role, int collection, bool own) {
  if (!collection_known(collection))
    return false;
  switch (role) {
  case R_HEAD_OFFICE:
  case R_INSPECTOR:
    return true;
  case R_EXPERT:
    return collection == FIELDSYNC__COLLECTION__COLLECTION_VISIT ||
           (collection == FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE &&
            own);
  default:
    return false;
  }
}

const char *srv_policy_write(int role, int collection, enum srv_op op,
                             bool owns_stored, bool owns_new) {
  const struct rule *r = NULL;
  bool own;
  size_t i;

  if (role != R_INSPECTOR && role != R_EXPERT && role != R_HEAD_OFFICE)
    return "unknown role";
  if (!collection_known(collection))
    return "unknown collection";
  if (op != SRV_OP_CREATE && op != SRV_OP_UPDATE && op != SRV_OP_DELETE)
    return "unknown operation";
  if (role == R_HEAD_OFFICE)
    return NULL;
  for (i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
    if (rules[i].role == role && rules[i].collection == collection) {
      r = &rules[i];
      break;
    }
  }
  if (r == NULL)
    return expert_only_notes; /* the only role with missing rows */
  /* "own": the new version's owner for a create, the stored record's for
   * a delete, and both for an update (so nobody hands a record to someone
   * else, or takes over someone else's). */
  switch (op) {
  case SRV_OP_CREATE:
    own = owns_new;
    break;
  case SRV_OP_DELETE:
    own = owns_stored;
    break;
  default:
    own = owns_stored && owns_new;
    break;
  }
  switch (r->op[op]) {
  case YES:
    return NULL;
  case OWN:
    return own ? NULL : r->why;
  default:
    return r->why;
  }
}

const char *srv_policy_role_name(int role) {
  switch (role) {
  case R_INSPECTOR:
    return "inspector";
  case R_EXPERT:
    return "expert";
  case R_HEAD_OFFICE:
    return "head_office";
  default:
    return "unknown";
  }
}

int srv_policy_role_parse(const char *name) {
  int role;

  if (name == NULL)
    return 0;
  for (role = R_INSPECTOR; role <= R_HEAD_OFFICE; role++)
    if (strcmp(name, srv_policy_role_name(role)) == 0)
      return role;
  return 0;
}
