/* SPDX-License-Identifier: MIT */
/* The role table (srv_policy.h): every role x collection x operation x
 * ownership cell of srv_policy_write and every role x collection x own
 * cell of srv_policy_may_read, against tables written out here from the
 * header's comment, plus unknown roles, collections and role names. */
#include <stdio.h>
#include <string.h>

#include "fieldsync.pb-c.h"
#include "harness.h"
#include "srv_policy.h"

#define INSPECTOR FIELDSYNC__ROLE__ROLE_INSPECTOR
#define EXPERT FIELDSYNC__ROLE__ROLE_EXPERT
#define HEAD_OFFICE FIELDSYNC__ROLE__ROLE_HEAD_OFFICE
#define NCOLL 8 /* COLLECTION_SERVICE (1) .. COLLECTION_ATTACHMENT (8) */

static const char *const coll_names[NCOLL + 1] = {
    "?",           "service",        "visit",   "observation", "interview_note",
    "requirement", "recommendation", "concern", "attachment"};

/* Write table. Per role and collection: create|update|delete, each four
 * cells for (owns_stored, owns_new) = (0,0) (0,1) (1,0) (1,1); '1' is
 * allowed. From srv_policy.h: "own" is owns_new for C, both for U,
 * owns_stored for D. */
static const char *const write_table[4][NCOLL + 1] = {
    [INSPECTOR] = {NULL, "0000|0000|0000", /* service: nothing */
                   "0000|0001|0000",       /* visit: U own (lead) */
                   "1111|1111|0000",       /* observation: C U */
                   "0000|0000|0000",       /* interview_note: nothing */
                   "1111|1111|0000",       /* requirement: C U */
                   "1111|1111|0000",       /* recommendation: C U */
                   "1111|0000|0000",       /* concern: C */
                   "0101|0001|0011"},      /* attachment: C U D own */
    [EXPERT] = {NULL, "0000|0000|0000",    /* service */
                "0000|0000|0000",          /* visit */
                "0000|0000|0000",          /* observation */
                "0101|0001|0011",          /* interview_note: C U D own */
                "0000|0000|0000",          /* requirement */
                "0000|0000|0000",          /* recommendation */
                "0000|0000|0000",          /* concern */
                "0000|0000|0000"},         /* attachment */
    [HEAD_OFFICE] = {NULL, "1111|1111|1111", "1111|1111|1111", "1111|1111|1111",
                     "1111|1111|1111", "1111|1111|1111", "1111|1111|1111",
                     "1111|1111|1111", "1111|1111|1111"},
};

/* Read table: per role, two cells per collection (not own, own). */
static const char *const read_table[4] = {
    [INSPECTOR] = "11"  /* service */
                  "11"  /* visit */
                  "11"  /* observation */
                  "11"  /* interview_note */
                  "11"  /* requirement */
                  "11"  /* recommendation */
                  "11"  /* concern */
                  "11", /* attachment */
    [EXPERT] = "00"     /* service */
               "11"     /* visit */
               "00"     /* observation */
               "01"     /* interview_note: own only */
               "00"     /* requirement */
               "00"     /* recommendation */
               "00"     /* concern */
               "00",    /* attachment */
    [HEAD_OFFICE] = "11"
                    "11"
                    "11"
                    "11"
                    "11"
                    "11"
                    "11"
                    "11",
};

static const char *const op_names[] = {"create", "update", "delete"};

TEST(policy_write_table) {
  int role;
  int coll;
  int op;
  int os;
  int on;
  int cells = 0;
  int allowed = 0;

  for (role = INSPECTOR; role <= HEAD_OFFICE; role++) {
    for (coll = 1; coll <= NCOLL; coll++) {
      const char *row = write_table[role][coll];

      ASSERT(row != NULL && strlen(row) == 14);
      for (op = SRV_OP_CREATE; op <= SRV_OP_DELETE; op++) {
        for (os = 0; os <= 1; os++) {
          for (on = 0; on <= 1; on++) {
            bool want = row[op * 5 + os * 2 + on] == '1';
            const char *why =
                srv_policy_write(role, coll, (enum srv_op)op, os != 0, on != 0);

            if ((why == NULL) != want)
              test_fail(__FILE__, __LINE__,
                        "%s %s %s owns_stored=%d owns_new=%d: got %s, want "
                        "%s",
                        srv_policy_role_name(role), coll_names[coll],
                        op_names[op], os, on, why == NULL ? "allowed" : why,
                        want ? "allowed" : "refused");
            /* A refusal says which rule, in a sentence. */
            if (why != NULL)
              ASSERT_GT(strlen(why), 10);
            cells++;
            allowed += want;
          }
        }
      }
    }
  }
  ASSERT_EQ(cells, 3 * NCOLL * 3 * 4);
  /* Allowed cells: head office 96, inspector 34, expert 5 (a checksum of
   * the tables above, so that an edit to them is a deliberate one). */
  ASSERT_EQ(allowed, 96 + (1 + 8 + 8 + 8 + 4 + 5) + 5);
}

TEST(policy_refusal_reasons) {
  ASSERT(strstr(srv_policy_write(EXPERT,
                                 FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION,
                                 SRV_OP_CREATE, false, true),
                "experts may write only their own interview notes") != NULL);
  ASSERT(strstr(srv_policy_write(
                    EXPERT, FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE,
                    SRV_OP_UPDATE, false, true),
                "experts may write only their own interview notes") != NULL);
  ASSERT(strstr(srv_policy_write(INSPECTOR,
                                 FIELDSYNC__COLLECTION__COLLECTION_VISIT,
                                 SRV_OP_UPDATE, true, false),
                "lead") != NULL);
  ASSERT(strstr(srv_policy_write(INSPECTOR,
                                 FIELDSYNC__COLLECTION__COLLECTION_CONCERN,
                                 SRV_OP_UPDATE, true, true),
                "concern") != NULL);
}

TEST(policy_read_table) {
  int role;
  int coll;
  int own;

  for (role = INSPECTOR; role <= HEAD_OFFICE; role++) {
    ASSERT_EQ(strlen(read_table[role]), 2 * NCOLL);
    for (coll = 1; coll <= NCOLL; coll++) {
      for (own = 0; own <= 1; own++) {
        bool want = read_table[role][(coll - 1) * 2 + own] == '1';
        if (srv_policy_may_read(role, coll, own != 0) != want)
          test_fail(__FILE__, __LINE__, "%s read %s own=%d: want %s",
                    srv_policy_role_name(role), coll_names[coll], own,
                    want ? "allowed" : "refused");
      }
    }
  }
}

TEST(policy_unknown_role_collection_op) {
  static const int bad_roles[] = {0, 4, -1, 1000};
  static const int bad_colls[] = {0, NCOLL + 1, -3};
  size_t i;
  int coll;
  int op;
  int role;

  for (i = 0; i < sizeof(bad_roles) / sizeof(bad_roles[0]); i++) {
    for (coll = 0; coll <= NCOLL + 1; coll++) {
      ASSERT(!srv_policy_may_read(bad_roles[i], coll, true));
      for (op = SRV_OP_CREATE; op <= SRV_OP_DELETE; op++)
        ASSERT(srv_policy_write(bad_roles[i], coll, (enum srv_op)op, true,
                                true) != NULL);
    }
  }
  for (role = INSPECTOR; role <= HEAD_OFFICE; role++) {
    for (i = 0; i < sizeof(bad_colls) / sizeof(bad_colls[0]); i++) {
      ASSERT(!srv_policy_may_read(role, bad_colls[i], true));
      for (op = SRV_OP_CREATE; op <= SRV_OP_DELETE; op++)
        ASSERT(srv_policy_write(role, bad_colls[i], (enum srv_op)op, true,
                                true) != NULL);
    }
    /* An operation outside the enum is refused, even for head office. */
    ASSERT(srv_policy_write(role, FIELDSYNC__COLLECTION__COLLECTION_VISIT,
                            (enum srv_op)3, true, true) != NULL);
  }
}

TEST(policy_role_names) {
  ASSERT_STR_EQ(srv_policy_role_name(INSPECTOR), "inspector");
  ASSERT_STR_EQ(srv_policy_role_name(EXPERT), "expert");
  ASSERT_STR_EQ(srv_policy_role_name(HEAD_OFFICE), "head_office");
  ASSERT_STR_EQ(srv_policy_role_name(0), "unknown");
  ASSERT_STR_EQ(srv_policy_role_name(4), "unknown");
  ASSERT_EQ(srv_policy_role_parse("inspector"), INSPECTOR);
  ASSERT_EQ(srv_policy_role_parse("expert"), EXPERT);
  ASSERT_EQ(srv_policy_role_parse("head_office"), HEAD_OFFICE);
  ASSERT_EQ(srv_policy_role_parse("Inspector"), 0);
  ASSERT_EQ(srv_policy_role_parse("head-office"), 0);
  ASSERT_EQ(srv_policy_role_parse("unknown"), 0);
  ASSERT_EQ(srv_policy_role_parse(""), 0);
  ASSERT_EQ(srv_policy_role_parse(NULL), 0);
}

/* clang-format off */
TEST_LIST(
  TEST_ENTRY(policy_write_table)
  TEST_ENTRY(policy_refusal_reasons)
  TEST_ENTRY(policy_read_table)
  TEST_ENTRY(policy_unknown_role_collection_op)
  TEST_ENTRY(policy_role_names)
)
/* clang-format on */
