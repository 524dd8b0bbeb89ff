/* SPDX-License-Identifier: MIT */
/* Who may read and write what (DOMAIN.md 7.3, issue 5): pure functions of
 * role, collection, operation and ownership, with no I/O, so the whole
 * table is tested directly and the store only supplies the facts. Scope
 * (is the record's visit or service assigned to the user and not expired)
 * is checked by the store with srv_store_scopes; head_office needs no
 * assignment.
 *
 * Read (pull), within the device's scopes:
 *   head_office  every collection, every scope;
 *   inspector    every collection of their visits and those visits'
 *                services;
 *   expert       the visit record, and interview notes they own
 *                (InterviewNote.expert is their user name); nothing else.
 * Write (push): C = create (the server has no such record), U = update,
 * D = delete (a tombstone); "own" = the owner field (fsp_payload_owner)
 * names the user: for C the new version's, for U both the stored record's
 * and the new version's, for D the stored record's.
 *   head_office  C U D everything;
 *   inspector    visit: U own (they are its lead inspector), keeping its
 *                service (their scopes follow their visits' services, so
 *                only head office may move a visit to another service:
 *                checked by the store, which knows the stored service);
 *                observation, requirement, recommendation: C U;
 *                concern: C;  attachment: C own, U own, D own;
 *                service, interview_note: nothing;
 *   expert       interview_note: C own, U own, D own (consent withdrawn);
 *                nothing else. */
#ifndef SRV_POLICY_H
#define SRV_POLICY_H

#include <stdbool.h>

enum srv_op { SRV_OP_CREATE, SRV_OP_UPDATE, SRV_OP_DELETE };

/* May role read a version of collection whose owner is (own) or is not
 * the user? (Scope is the caller's check.) */
bool srv_policy_may_read(int role, int collection, bool own);

/* NULL when role may do op on collection, given whether the stored record
 * is the user's (owns_stored; false for a create) and whether the new
 * version names the user as owner (owns_new; false for a delete); else a
 * static sentence saying which rule refuses it, for RecordOutcome.reason.
 * Unknown roles and collections are refused. */
const char *srv_policy_write(int role, int collection, enum srv_op op,
                             bool owns_stored, bool owns_new);

/* "inspector", "expert", "head_office"; "unknown" otherwise. */
const char *srv_policy_role_name(int role);
/* The role for a name above, or 0. */
int srv_policy_role_parse(const char *name);

#endif
