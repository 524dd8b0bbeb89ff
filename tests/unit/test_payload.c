/* SPDX-License-Identifier: MIT */
/* The collection registry and typed payload validation: names and ids,
 * scope derivation, and each field rule (ids, enums, UTF-8, dates, the 1-4
 * judgement scale) with its error code. */
#include <string.h>

#include "fsp_payload.h"
#include "harness.h"

static uint8_t buf[1 << 16];
static uint8_t visit[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
static uint8_t record[16] = {0xaa, 0xbb};

static int check_obs(const Fieldsync__Observation *o, struct fsp_error *err) {
  const struct fsp_collection *col = fsp_payload_by_name("observation");
  struct fsp_limits lim;
  struct fsp_budget b;
  size_t n = fieldsync__observation__pack(o, buf);

  fsp_limits_default(&lim);
  memset(err, 0, sizeof(*err));
  return fsp_payload_decode(col, buf, n, &lim, &b, NULL, err);
}

static void obs_init(Fieldsync__Observation *o) {
  fieldsync__observation__init(o);
  o->has_visit_id = 1;
  o->visit_id.data = visit;
  o->visit_id.len = 16;
  o->standard_code = "OP9";
  o->has_judgement = 1;
  o->judgement = 2;
  o->evidence_text = "MAR charts unsigned for two residents (C1, C3).";
}

TEST(registry) {
  size_t n;
  size_t i;
  const struct fsp_collection *c = fsp_payload_collections(&n);

  ASSERT_EQ(n, 8);
  for (i = 0; i < n; i++) {
    ASSERT(fsp_payload_by_id(c[i].id) == &c[i]);
    ASSERT(fsp_payload_by_name(c[i].name) == &c[i]);
    ASSERT(c[i].desc != NULL);
    ASSERT(protobuf_c_enum_descriptor_get_value(
               &fieldsync__collection__descriptor, c[i].id) != NULL);
    if (c[i].scope_field != NULL)
      ASSERT(protobuf_c_message_descriptor_get_field_by_name(
                 c[i].desc, c[i].scope_field) != NULL);
  }
  ASSERT(fsp_payload_by_name("observations") == NULL);
  ASSERT(fsp_payload_by_id(0) == NULL);
  ASSERT(fsp_payload_by_id(99) == NULL);
  ASSERT_STR_EQ(fsp_payload_by_id(4)->name, "interview_note");
}

TEST(valid_observation) {
  Fieldsync__Observation o;
  struct fsp_error err;

  obs_init(&o);
  ASSERT_OK(check_obs(&o, &err));
  o.has_judgement = 0; /* not assessed */
  ASSERT_OK(check_obs(&o, &err));
}

TEST(judgement_scale) {
  Fieldsync__Observation o;
  struct fsp_error err;
  uint32_t j;

  obs_init(&o);
  for (j = 1; j <= 4; j++) {
    o.judgement = j;
    ASSERT_OK(check_obs(&o, &err));
  }
  o.judgement = 0;
  ASSERT_EQ(check_obs(&o, &err), FSP_EBAD_VALUE);
  ASSERT(strstr(err.msg, "observation.judgement") != NULL);
  o.judgement = 5;
  ASSERT_EQ(check_obs(&o, &err), FSP_EBAD_VALUE);
}

TEST(id_length) {
  Fieldsync__Observation o;
  struct fsp_error err;

  obs_init(&o);
  o.visit_id.len = 15;
  ASSERT_EQ(check_obs(&o, &err), FSP_EBAD_ID);
  ASSERT(strstr(err.msg, "visit_id") != NULL);
}

TEST(enum_values) {
  Fieldsync__Observation o;
  struct fsp_error err;

  obs_init(&o);
  o.has_evidence_category = 1;
  o.evidence_category = FIELDSYNC__EVIDENCE_CATEGORY__EVIDENCE_PROCESSES;
  ASSERT_OK(check_obs(&o, &err));
  o.evidence_category = (Fieldsync__EvidenceCategory)77;
  ASSERT_EQ(check_obs(&o, &err), FSP_EBAD_ENUM);
  ASSERT(strstr(err.msg, "evidence_category") != NULL);
}

TEST(utf8) {
  static const char *bad[] = {
      "\xc0\xaf",         /* overlong '/' */
      "\xed\xa0\x80",     /* surrogate */
      "\xf4\x90\x80\x80", /* past U+10FFFF */
      "abc\xe2\x82",      /* truncated */
      "\xff",
  };
  Fieldsync__Observation o;
  struct fsp_error err;
  size_t i;

  obs_init(&o);
  o.evidence_text = "Resident said: \xe2\x80\x9cthe food is lovely\xe2\x80\x9d "
                    "\xf0\x9f\x98\x80";
  ASSERT_OK(check_obs(&o, &err));
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    o.evidence_text = (char *)bad[i];
    ASSERT_EQ(check_obs(&o, &err), FSP_EBAD_VALUE);
    ASSERT(strstr(err.msg, "UTF-8") != NULL);
  }
}

static int check_req(const Fieldsync__Requirement *r, struct fsp_error *err) {
  const struct fsp_collection *col = fsp_payload_by_name("requirement");
  struct fsp_limits lim;
  struct fsp_budget b;
  size_t n = fieldsync__requirement__pack(r, buf);

  fsp_limits_default(&lim);
  return fsp_payload_decode(col, buf, n, &lim, &b, NULL, err);
}

TEST(dates) {
  static const char *good[] = {"2008-12-09", "2024-02-29", "2000-02-29"};
  static const char *bad[] = {"2008-13-01", "2023-02-29", "1900-02-29",
                              "2008-1-09",  "09/12/2008", "2008-12-32",
                              "",           "2008-12-09T10:00"};
  Fieldsync__Requirement r;
  struct fsp_error err;
  size_t i;

  fieldsync__requirement__init(&r);
  r.has_service_id = 1;
  r.service_id.data = visit;
  r.service_id.len = 16;
  for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    r.timescale_due = (char *)good[i];
    ASSERT_OK(check_req(&r, &err));
  }
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    r.timescale_due = (char *)bad[i];
    ASSERT_EQ(check_req(&r, &err), FSP_EBAD_VALUE);
    ASSERT(strstr(err.msg, "timescale_due") != NULL);
  }
}

TEST(times) {
  static const char *good[] = {"2008-12-09", "2008-12-09T10:30",
                               "2008-12-09T23:59:59", "2008-12-09T10:30:00Z"};
  static const char *bad[] = {"2008-12-09T24:00", "2008-12-09 10:30",
                              "2008-12-09T10:3", "2008-12-09T10:30:0"};
  Fieldsync__Concern c;
  const struct fsp_collection *col = fsp_payload_by_name("concern");
  struct fsp_limits lim;
  struct fsp_budget b;
  struct fsp_error err;
  size_t i;

  fsp_limits_default(&lim);
  fieldsync__concern__init(&c);
  for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    size_t n;
    c.received_at = (char *)good[i];
    n = fieldsync__concern__pack(&c, buf);
    ASSERT_OK(fsp_payload_decode(col, buf, n, &lim, &b, NULL, &err));
  }
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    size_t n;
    c.received_at = (char *)bad[i];
    n = fieldsync__concern__pack(&c, buf);
    ASSERT_EQ(fsp_payload_decode(col, buf, n, &lim, &b, NULL, &err),
              FSP_EBAD_VALUE);
  }
}

TEST(nested_and_repeated) {
  const struct fsp_collection *col = fsp_payload_by_name("interview_note");
  Fieldsync__InterviewNote note;
  Fieldsync__ThemeNote t[2];
  Fieldsync__ThemeNote *tp[2] = {&t[0], &t[1]};
  struct fsp_limits lim;
  struct fsp_budget b;
  struct fsp_error err;
  ProtobufCMessage *out;
  size_t n;

  fsp_limits_default(&lim);
  fieldsync__interview_note__init(&note);
  fieldsync__theme_note__init(&t[0]);
  fieldsync__theme_note__init(&t[1]);
  note.has_visit_id = 1;
  note.visit_id.data = visit;
  note.visit_id.len = 16;
  note.participant_code = "R4";
  note.has_consent = 1;
  note.consent = FIELDSYNC__CONSENT__CONSENT_GIVEN;
  t[0].has_theme = 1;
  t[0].theme = FIELDSYNC__THEME__THEME_FOOD;
  t[0].has_sentiment = 1;
  t[0].sentiment = FIELDSYNC__SENTIMENT__SENTIMENT_POSITIVE;
  t[1].has_theme = 1;
  t[1].theme = FIELDSYNC__THEME__THEME_FEELING_SAFE;
  note.n_themes = 2;
  note.themes = tp;
  n = fieldsync__interview_note__pack(&note, buf);
  ASSERT_OK(fsp_payload_decode(col, buf, n, &lim, &b, &out, &err));
  ASSERT(out != NULL);
  ASSERT_EQ(((Fieldsync__InterviewNote *)out)->n_themes, 2);
  fsp_payload_free(out, &b);
  ASSERT_EQ(b.used, 0);

  t[1].sentiment = (Fieldsync__Sentiment)9;
  t[1].has_sentiment = 1;
  n = fieldsync__interview_note__pack(&note, buf);
  ASSERT_EQ(fsp_payload_decode(col, buf, n, &lim, &b, NULL, &err),
            FSP_EBAD_ENUM);
  ASSERT(strstr(err.msg, "themes[1].sentiment") != NULL);

  lim.max_batch = 1;
  t[1].sentiment = FIELDSYNC__SENTIMENT__SENTIMENT_NEUTRAL;
  n = fieldsync__interview_note__pack(&note, buf);
  ASSERT_EQ(fsp_payload_decode(col, buf, n, &lim, &b, NULL, &err),
            FSP_ETOO_MANY);
}

TEST(not_a_payload) {
  static const uint8_t garbage[] = {0x0a, 0x50, 0x01};
  const struct fsp_collection *col = fsp_payload_by_name("visit");
  struct fsp_limits lim;
  struct fsp_budget b;
  struct fsp_error err;

  fsp_limits_default(&lim);
  ASSERT_EQ(fsp_payload_decode(col, garbage, sizeof(garbage), &lim, &b, NULL,
                               &err),
            FSP_EBAD_PAYLOAD);
  ASSERT(strstr(err.msg, "visit") != NULL);
  lim.max_payload = 2;
  ASSERT_EQ(fsp_payload_decode(col, garbage, sizeof(garbage), &lim, &b, NULL,
                               &err),
            FSP_ETOO_LONG);
  fsp_limits_default(&lim);
  lim.budget = 8;
  ASSERT_EQ(fsp_payload_decode(col, buf, 0, &lim, &b, NULL, &err),
            FSP_EBUDGET);
  fsp_limits_default(&lim);
  fsp_alloc_fail_at(1, false);
  ASSERT_EQ(fsp_payload_decode(col, buf, 0, &lim, &b, NULL, &err), FSP_ENOMEM);
  fsp_alloc_fail_at(0, false);
}

TEST(scope_derivation) {
  Fieldsync__Observation o;
  Fieldsync__Visit v;
  uint8_t scope[16];
  struct fsp_error err;
  int kind;

  obs_init(&o);
  ASSERT_OK(fsp_payload_scope(fsp_payload_by_name("observation"), record,
                              &o.base, &kind, scope, &err));
  ASSERT_EQ(kind, FIELDSYNC__SCOPE_KIND__SCOPE_VISIT);
  ASSERT_MEM_EQ(scope, visit, 16);

  fieldsync__visit__init(&v);
  ASSERT_OK(fsp_payload_scope(fsp_payload_by_name("visit"), record, &v.base,
                              &kind, scope, &err));
  ASSERT_EQ(kind, FIELDSYNC__SCOPE_KIND__SCOPE_VISIT);
  ASSERT_MEM_EQ(scope, record, 16);

  o.has_visit_id = 0;
  ASSERT_EQ(fsp_payload_scope(fsp_payload_by_name("observation"), record,
                              &o.base, &kind, scope, &err),
            FSP_EBAD_SCOPE);
  ASSERT(strstr(err.msg, "visit_id") != NULL);
}

/* Owners and a visit's service, which the server's policy reads. */
TEST(owner_and_service) {
  static uint8_t svc[16] = {9, 9, 9};
  uint8_t out[16];
  Fieldsync__Visit v;
  Fieldsync__InterviewNote n;
  Fieldsync__Service s;
  const struct fsp_collection *vcol = fsp_payload_by_name("visit");
  const struct fsp_collection *note = fsp_payload_by_name("interview_note");
  const struct fsp_collection *service = fsp_payload_by_name("service");
  size_t i;
  size_t ncol;
  const struct fsp_collection *all = fsp_payload_collections(&ncol);

  fieldsync__visit__init(&v);
  ASSERT_STR_EQ(fsp_payload_owner(vcol, &v.base), "");
  ASSERT(!fsp_payload_service(vcol, &v.base, out));
  v.lead_inspector = "lead";
  v.has_service_id = 1;
  v.service_id.data = svc;
  v.service_id.len = 16;
  ASSERT_STR_EQ(fsp_payload_owner(vcol, &v.base), "lead");
  ASSERT(fsp_payload_service(vcol, &v.base, out));
  ASSERT_MEM_EQ(out, svc, 16);
  v.service_id.len = 15;
  ASSERT(!fsp_payload_service(vcol, &v.base, out));

  fieldsync__interview_note__init(&n);
  n.expert = "eve";
  ASSERT_STR_EQ(fsp_payload_owner(note, &n.base), "eve");
  ASSERT(!fsp_payload_service(note, &n.base, out));
  fieldsync__service__init(&s);
  ASSERT_STR_EQ(fsp_payload_owner(service, &s.base), "");
  ASSERT_STR_EQ(fsp_payload_owner(note, NULL), "");
  /* Every named field exists in its message with the type the
   * accessors read (a renamed field would silently disable a rule). */
  for (i = 0; i < ncol; i++) {
    const ProtobufCFieldDescriptor *f;
    if (all[i].owner_field != NULL) {
      f = protobuf_c_message_descriptor_get_field_by_name(all[i].desc,
                                                          all[i].owner_field);
      ASSERT(f != NULL);
      ASSERT_EQ(f->type, PROTOBUF_C_TYPE_STRING);
      ASSERT(f->label != PROTOBUF_C_LABEL_REPEATED);
    }
    if (all[i].service_field != NULL) {
      f = protobuf_c_message_descriptor_get_field_by_name(
          all[i].desc, all[i].service_field);
      ASSERT(f != NULL);
      ASSERT_EQ(f->type, PROTOBUF_C_TYPE_BYTES);
    }
  }
}

/* A newer client's payload fields survive an older decoder's round trip. */
TEST(payload_unknown_fields_preserved) {
  static const uint8_t extra[] = {0xc2, 0x3e, 0x02, 'h', 'i'}; /* field 1000 */
  const struct fsp_collection *col = fsp_payload_by_name("observation");
  Fieldsync__Observation o;
  struct fsp_limits lim;
  struct fsp_budget b;
  struct fsp_error err;
  ProtobufCMessage *out;
  static uint8_t again[1 << 16];
  size_t n;

  fsp_limits_default(&lim);
  obs_init(&o);
  n = fieldsync__observation__pack(&o, buf);
  memcpy(buf + n, extra, sizeof(extra));
  n += sizeof(extra);
  ASSERT_OK(fsp_payload_decode(col, buf, n, &lim, &b, &out, &err));
  ASSERT_EQ(protobuf_c_message_pack(out, again), n);
  ASSERT_MEM_EQ(again, buf, n);
  fsp_payload_free(out, &b);
}

TEST_LIST(TEST_ENTRY(registry)
          TEST_ENTRY(owner_and_service)
          TEST_ENTRY(valid_observation)
          TEST_ENTRY(judgement_scale)
          TEST_ENTRY(id_length)
          TEST_ENTRY(enum_values)
          TEST_ENTRY(utf8)
          TEST_ENTRY(dates)
          TEST_ENTRY(times)
          TEST_ENTRY(nested_and_repeated)
          TEST_ENTRY(not_a_payload)
          TEST_ENTRY(scope_derivation)
          TEST_ENTRY(payload_unknown_fields_preserved))
