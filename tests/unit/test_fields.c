/* SPDX-License-Identifier: MIT */
/* Descriptor-driven field conversion: each field type parses from text and
 * JSON, each bad value gets its code and a one-line message, every
 * collection round-trips through JSON to identical bytes, and allocation
 * failure anywhere returns FIELDSYNC_ENOMEM (or NULL) without leaking. */
#include <string.h>

#include "fieldsync.h"
#include "fieldsync.pb-c.h"
#include "fsc_fields.h"
#include "fsp_alloc.h"
#include "fsp_payload.h"
#include "harness.h"

#define VISIT_HEX "0102030405060708090a0b0c0d0e0f10"
#define SHA_HEX                                                                \
  "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static char err[256];

static ProtobufCMessage *new_msg(const char *collection) {
  const struct fsp_collection *c = fsp_payload_by_name(collection);
  ProtobufCMessage *m;

  ASSERT(c != NULL);
  m = fsc_fields_new(c->desc);
  ASSERT(m != NULL);
  return m;
}

static int set(ProtobufCMessage *m, const char *field, const char *text) {
  err[0] = '\0';
  return fsc_fields_set(m, field, text, false, err, sizeof(err));
}

/* Sets field from JSON text (any JSON value). */
static int set_json(ProtobufCMessage *m, const char *field, const char *js) {
  json_error_t jerr;
  json_t *j = json_loads(js, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  int rc;

  ASSERT(j != NULL);
  err[0] = '\0';
  rc = fsc_fields_set_json(m, field, j, err, sizeof(err));
  json_decref(j);
  return rc;
}

/* Compact JSON of m, in a static buffer. */
static const char *json_of(const ProtobufCMessage *m) {
  static char out[4096];
  json_t *j = fsc_fields_to_json(m);
  size_t n;

  ASSERT(j != NULL);
  n = json_dumpb(j, out, sizeof(out) - 1, JSON_COMPACT);
  json_decref(j);
  ASSERT(n > 0 && n < sizeof(out));
  out[n] = '\0';
  return out;
}

/* The CSV cell of field, in a static buffer. */
static const char *cell_of(const ProtobufCMessage *m, const char *field) {
  static char out[1024];
  const ProtobufCFieldDescriptor *f =
      protobuf_c_message_descriptor_get_field_by_name(m->descriptor, field);
  char *c;

  ASSERT(f != NULL);
  c = fsc_fields_cell(m, f);
  ASSERT(c != NULL);
  ASSERT(strlen(c) < sizeof(out));
  memcpy(out, c, strlen(c) + 1);
  fsp_free(c);
  return out;
}

static void assert_pack_equal(const ProtobufCMessage *a,
                              const ProtobufCMessage *b) {
  uint8_t *pa;
  uint8_t *pb;
  size_t na;
  size_t nb;

  ASSERT_OK(fsc_fields_pack(a, &pa, &na));
  ASSERT_OK(fsc_fields_pack(b, &pb, &nb));
  ASSERT_EQ(na, nb);
  ASSERT_MEM_EQ(pa, pb, na);
  fsp_free(pa);
  fsp_free(pb);
}

/* Sends jansson's allocations through fsp_malloc too, so fault injection
 * reaches them. Only for building and dumping JSON: jansson's parser
 * ignores some failed allocations (load.c lex_save drops the byte), so
 * json_loads under injection can return a different valid value. */
static void json_via_fsp(void) {
  json_set_alloc_funcs(fsp_malloc, fsp_free);
}

TEST(every_type_parses) {
  ProtobufCMessage *m = new_msg("attachment");
  Fieldsync__Attachment *a = (Fieldsync__Attachment *)m;
  ProtobufCMessage *v = fsc_fields_new(&fieldsync__version__descriptor);
  Fieldsync__Version *ver = (Fieldsync__Version *)v;
  ProtobufCMessage *o = new_msg("observation");
  Fieldsync__Observation *ob = (Fieldsync__Observation *)o;

  /* bytes: an id, a sha256 (upper case accepted) */
  ASSERT_OK(set(m, "visit_id", VISIT_HEX));
  ASSERT(a->has_visit_id);
  ASSERT_EQ(a->visit_id.len, 16);
  ASSERT_EQ(a->visit_id.data[0], 1);
  ASSERT_EQ(a->visit_id.data[15], 0x10);
  ASSERT_OK(set(m, "sha256",
                "00112233445566778899AABBCCDDEEFF"
                "00112233445566778899aabbccddeeff"));
  ASSERT_EQ(a->sha256.len, 32);
  ASSERT_EQ(a->sha256.data[10], 0xaa);
  /* enum: short, full and mixed-case names */
  ASSERT_OK(set(m, "owner_collection", "observation"));
  ASSERT_EQ(a->owner_collection, FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION);
  ASSERT_OK(set(m, "owner_collection", "COLLECTION_INTERVIEW_NOTE"));
  ASSERT_EQ(a->owner_collection,
            FIELDSYNC__COLLECTION__COLLECTION_INTERVIEW_NOTE);
  ASSERT_OK(set(m, "redaction", "None_Needed"));
  ASSERT_EQ(a->redaction, FIELDSYNC__REDACTION__REDACTION_NONE_NEEDED);
  /* string, replacing the old one (ASan checks it was freed) */
  ASSERT_OK(set(m, "caption", "first"));
  ASSERT_OK(set(m, "caption", "Résidents' lounge"));
  ASSERT_STR_EQ(a->caption, "Résidents' lounge");
  ASSERT_OK(set(m, "mime", ""));
  ASSERT_STR_EQ(a->mime, "");
  /* uint64 to its maximum */
  ASSERT_OK(set(m, "size", "18446744073709551615"));
  ASSERT(a->has_size);
  ASSERT(a->size == UINT64_MAX);
  /* bool spellings */
  ASSERT_OK(set(m, "shows_person", "YES"));
  ASSERT(a->has_shows_person && a->shows_person);
  ASSERT_OK(set(m, "shows_person", "0"));
  ASSERT(a->has_shows_person && !a->shows_person);
  ASSERT_OK(set(m, "exif_stripped", "True"));
  ASSERT(a->exif_stripped);
  ASSERT_OK(set(m, "exif_stripped", "no"));
  ASSERT(!a->exif_stripped);
  ASSERT_OK(set(m, "exif_stripped", "1"));
  ASSERT_OK(set(m, "exif_stripped", "FALSE"));
  ASSERT(!a->exif_stripped);

  /* uint32: range limits; the 1..4 judgement scale is not checked here */
  ASSERT_OK(set(o, "judgement", "4294967295"));
  ASSERT(ob->has_judgement);
  ASSERT(ob->judgement == UINT32_MAX);
  ASSERT_OK(set(o, "judgement", "0"));
  ASSERT(ob->has_judgement && ob->judgement == 0);
  ASSERT_OK(set(o, "judgement", "007"));
  ASSERT_EQ(ob->judgement, 7);

  /* int64 (Version.device_time_ms) and non-id bytes (any even length) */
  ASSERT_OK(set(v, "device_time_ms", "-9223372036854775808"));
  ASSERT(ver->has_device_time_ms && ver->device_time_ms == INT64_MIN);
  ASSERT_OK(set(v, "device_time_ms", "9223372036854775807"));
  ASSERT(ver->device_time_ms == INT64_MAX);
  ASSERT_EQ(set(v, "device_time_ms", "9223372036854775808"), FIELDSYNC_EVALUE);
  ASSERT_OK(set(v, "payload", "c0FFee"));
  ASSERT_EQ(ver->payload.len, 3);
  ASSERT_EQ(ver->payload.data[2], 0xee);
  ASSERT_OK(set(v, "payload", ""));
  ASSERT(ver->has_payload);
  ASSERT_EQ(ver->payload.len, 0);
  ASSERT_OK(set(v, "hash", SHA_HEX));
  ASSERT_EQ(ver->hash.len, 32);
  ASSERT_OK(set(v, "vv", "{\"replica\":\"" VISIT_HEX "\",\"counter\":7}"));
  ASSERT_EQ(ver->n_vv, 1);
  ASSERT_EQ(ver->vv[0]->counter, 7);

  fsc_fields_free(m);
  fsc_fields_free(v);
  fsc_fields_free(o);
}

TEST(bad_values) {
  ProtobufCMessage *m = new_msg("observation");
  ProtobufCMessage *v = new_msg("visit");
  ProtobufCMessage *s = new_msg("service");
  Fieldsync__Observation *o = (Fieldsync__Observation *)m;

  ASSERT_OK(set(m, "judgement", "2"));
  ASSERT_OK(set(m, "visit_id", VISIT_HEX));
  ASSERT_OK(set(m, "assessor", "Ann"));

  ASSERT_EQ(set(m, "judgment", "2"), FIELDSYNC_EFIELD);
  ASSERT_STR_EQ(err, "observation: no field \"judgment\"");
  ASSERT_EQ(set(m, NULL, "2"), FIELDSYNC_EFIELD);
  ASSERT_EQ(set(m, "", "2"), FIELDSYNC_EFIELD);

  ASSERT_EQ(set(m, "judgement", "high"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.judgement: \"high\" is not a number");
  ASSERT_EQ(set(m, "judgement", ""), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.judgement: \"\" is not a number");
  ASSERT_EQ(set(m, "judgement", "3x"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "judgement", " 3"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "judgement", "3 "), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "judgement", "+3"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "judgement", "0x3"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "judgement", "4294967296"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err,
                "observation.judgement: \"4294967296\" is out of range for "
                "uint32");
  ASSERT_EQ(set(m, "judgement", "99999999999999999999999"), FIELDSYNC_EVALUE);
  ASSERT(strstr(err, "out of range") != NULL);
  ASSERT_EQ(set(m, "judgement", "-1"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.judgement: \"-1\" is negative but uint32 is "
                     "unsigned");
  ASSERT_EQ(set(m, "judgement", "-"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(s, "places", "-0"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(s, "nursing", "maybe"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "service.nursing: \"maybe\" is not a boolean "
                     "(true/false/yes/no/1/0)");
  ASSERT_EQ(set(s, "nursing", ""), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(s, "nursing", "y"), FIELDSYNC_EVALUE);

  ASSERT_EQ(set(m, "evidence_category", "feelings"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.evidence_category: \"feelings\" is not one "
                     "of peoples_experience|staff_feedback|partner_feedback|"
                     "observation|processes|outcomes");
  ASSERT_EQ(set(m, "evidence_category", "EVIDENCE_UNSPECIFIED"),
            FIELDSYNC_EVALUE);
  ASSERT(strstr(err, "not allowed (unspecified); use one of "
                     "peoples_experience|") != NULL);
  ASSERT_EQ(set(m, "evidence_category", "unspecified"), FIELDSYNC_EVALUE);
  ASSERT(strstr(err, "(unspecified)") != NULL);
  ASSERT_EQ(set(v, "kind", "kind_unspecified"), FIELDSYNC_EVALUE);
  ASSERT(strstr(err, "(unspecified)") != NULL);
  ASSERT_EQ(set(v, "kind", ""), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(v, "kind", "VISIT_"), FIELDSYNC_EVALUE);

  ASSERT_EQ(set(m, "visit_id", "0102"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.visit_id: \"0102\" is not 32 hex digits");
  ASSERT_EQ(set(m, "visit_id", VISIT_HEX "00"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "visit_id", "0102030405060708090a0b0c0d0e0fzz"),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.visit_id: "
                     "\"0102030405060708090a0b0c0d0e0fzz\" is not hex");
  ASSERT_EQ(set(v, "service_id", "01-02"), FIELDSYNC_EVALUE);

  ASSERT_EQ(set(m, "assessor", "bad \xff byte"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation.assessor: value is not valid UTF-8");
  ASSERT_EQ(set(m, "assessor", "\xed\xa0\x80"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set(m, "case_refs", "\xc0\xaf"), FIELDSYNC_EVALUE);

  /* Long values and control characters are cut and masked: one line. */
  ASSERT_EQ(set(m, "judgement",
                "1\n2345678901234567890123456789012345678901234567890"),
            FIELDSYNC_EVALUE);
  ASSERT(strchr(err, '\n') == NULL);
  ASSERT(strstr(err, "\"1?23456789012345678901234567890123456789...\"") !=
         NULL);

  /* The message is unchanged by all of the above. */
  ASSERT(o->has_judgement && o->judgement == 2);
  ASSERT(o->has_visit_id && o->visit_id.data[0] == 1);
  ASSERT_STR_EQ(o->assessor, "Ann");
  ASSERT_EQ(o->n_case_refs, 0);
  ASSERT(!o->has_evidence_category);

  /* A small errcap truncates; a NULL err is allowed. */
  ASSERT_EQ(fsc_fields_set(m, "judgement", "x", false, err, 8),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observa");
  ASSERT_EQ(fsc_fields_set(m, "judgement", "x", false, NULL, 0),
            FIELDSYNC_EVALUE);
  ASSERT_EQ(fsc_fields_set(m, "nope", "x", false, NULL, 0), FIELDSYNC_EFIELD);

  fsc_fields_free(m);
  fsc_fields_free(v);
  fsc_fields_free(s);
}

TEST(message_field_errors) {
  ProtobufCMessage *s = new_msg("service");
  Fieldsync__Service *sv = (Fieldsync__Service *)s;

  ASSERT_EQ(set(s, "council_placements", "{\"council\":"), FIELDSYNC_EVALUE);
  ASSERT(strncmp(err, "service.council_placements: bad JSON at column ", 47) ==
         0);
  ASSERT_EQ(set(s, "council_placements", "council=X"), FIELDSYNC_EVALUE);
  ASSERT(strncmp(err, "service.council_placements: bad JSON", 36) == 0);
  ASSERT_EQ(set(s, "council_placements", "[1]"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "service.council_placements: expected a JSON object, "
                     "got a JSON array");
  ASSERT_EQ(set(s, "council_placements", "{\"a\":1,\"a\":2}"),
            FIELDSYNC_EVALUE);
  /* An unknown key inside the value is a bad value, not a bad field. */
  ASSERT_EQ(set(s, "council_placements", "{\"councel\":\"X\"}"),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "service.council_placements: no field \"councel\"");
  ASSERT_EQ(set(s, "council_placements", "{\"residents\":\"lots\"}"),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "service.council_placements.residents: \"lots\" is not "
                     "a number");
  ASSERT_EQ(set(s, "council_placements", "{\"residents\":-3}"),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "service.council_placements.residents: -3 is negative "
                     "but uint32 is unsigned");
  ASSERT_EQ(set(s, "council_placements",
                "{\"council\":\"X\",\"residents\":4294967296}"),
            FIELDSYNC_EVALUE);
  ASSERT_EQ(set(s, "council_placements", "{\"residents\":2.5}"),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err,
                "service.council_placements.residents: 2.5 is not an integer");
  ASSERT_EQ(sv->n_council_placements, 0);
  fsc_fields_free(s);
}

TEST(repeated_append_and_replace) {
  ProtobufCMessage *m = new_msg("observation");
  Fieldsync__Observation *o = (Fieldsync__Observation *)m;
  ProtobufCMessage *c = new_msg("concern");
  Fieldsync__Concern *cn = (Fieldsync__Concern *)c;

  ASSERT_OK(set(m, "case_refs", "C1"));
  ASSERT_OK(set(m, "case_refs", "C3"));
  ASSERT_OK(set(m, "case_refs", "C4"));
  ASSERT_EQ(o->n_case_refs, 3);
  ASSERT_STR_EQ(o->case_refs[0], "C1");
  ASSERT_STR_EQ(o->case_refs[2], "C4");
  ASSERT_OK(fsc_fields_set(m, "case_refs", "C9", true, err, sizeof(err)));
  ASSERT_EQ(o->n_case_refs, 1);
  ASSERT_STR_EQ(o->case_refs[0], "C9");
  /* A bad value with replace keeps the old list. */
  ASSERT_EQ(fsc_fields_set(m, "case_refs", "\xff", true, err, sizeof(err)),
            FIELDSYNC_EVALUE);
  ASSERT_EQ(o->n_case_refs, 1);
  /* replace_repeated means nothing for a single field */
  ASSERT_OK(fsc_fields_set(m, "assessor", "Bo", true, err, sizeof(err)));
  ASSERT_STR_EQ(o->assessor, "Bo");

  /* repeated enum */
  ASSERT_OK(set(c, "abuse_types", "neglect"));
  ASSERT_OK(set(c, "abuse_types", "ABUSE_FINANCIAL"));
  ASSERT_EQ(cn->n_abuse_types, 2);
  ASSERT_EQ(cn->abuse_types[0], FIELDSYNC__ABUSE_TYPE__ABUSE_NEGLECT);
  ASSERT_EQ(cn->abuse_types[1], FIELDSYNC__ABUSE_TYPE__ABUSE_FINANCIAL);
  ASSERT_EQ(set(c, "abuse_types", "unspecified"), FIELDSYNC_EVALUE);
  ASSERT_EQ(cn->n_abuse_types, 2);
  ASSERT_OK(
      fsc_fields_set(c, "abuse_types", "physical", true, err, sizeof(err)));
  ASSERT_EQ(cn->n_abuse_types, 1);
  ASSERT_EQ(cn->abuse_types[0], FIELDSYNC__ABUSE_TYPE__ABUSE_PHYSICAL);

  fsc_fields_free(m);
  fsc_fields_free(c);
}

TEST(clear) {
  ProtobufCMessage *m = new_msg("service");
  Fieldsync__Service *s = (Fieldsync__Service *)m;
  ProtobufCMessage *a = new_msg("attachment");
  Fieldsync__Attachment *at = (Fieldsync__Attachment *)a;

  ASSERT_OK(set(m, "name", "Oak House"));
  ASSERT_OK(set(m, "places", "40"));
  ASSERT_OK(set(m, "sector", "voluntary"));
  ASSERT_OK(set(m, "registration_categories", "OP"));
  ASSERT_OK(set(m, "registration_categories", "DE(E)"));
  ASSERT_OK(set(m, "council_placements", "{\"council\":\"X\"}"));
  ASSERT_OK(set(a, "owner_id", VISIT_HEX));

  ASSERT_OK(fsc_fields_clear(m, "name", err, sizeof(err)));
  ASSERT(s->name == NULL);
  ASSERT_OK(fsc_fields_clear(m, "places", err, sizeof(err)));
  ASSERT(!s->has_places);
  ASSERT_OK(fsc_fields_clear(m, "sector", err, sizeof(err)));
  ASSERT(!s->has_sector);
  ASSERT_OK(fsc_fields_clear(m, "registration_categories", err, sizeof(err)));
  ASSERT_EQ(s->n_registration_categories, 0);
  ASSERT(s->registration_categories == NULL);
  ASSERT_OK(fsc_fields_clear(m, "council_placements", err, sizeof(err)));
  ASSERT_EQ(s->n_council_placements, 0);
  ASSERT_OK(fsc_fields_clear(a, "owner_id", err, sizeof(err)));
  ASSERT(!at->has_owner_id);
  ASSERT(at->owner_id.data == NULL);
  /* Clearing an absent field is fine; an unknown one is not. */
  ASSERT_OK(fsc_fields_clear(m, "name", err, sizeof(err)));
  ASSERT_EQ(fsc_fields_clear(m, "nmae", err, sizeof(err)), FIELDSYNC_EFIELD);
  ASSERT_STR_EQ(err, "service: no field \"nmae\"");
  ASSERT_STR_EQ(json_of(m), "{}");
  /* Set again after clearing. */
  ASSERT_OK(set(m, "registration_categories", "LD"));
  ASSERT_EQ(s->n_registration_categories, 1);

  fsc_fields_free(m);
  fsc_fields_free(a);
}

TEST(nested_messages_from_text) {
  ProtobufCMessage *m = new_msg("service");
  Fieldsync__Service *s = (Fieldsync__Service *)m;
  ProtobufCMessage *n = new_msg("interview_note");
  Fieldsync__InterviewNote *in = (Fieldsync__InterviewNote *)n;

  ASSERT_OK(
      set(m, "council_placements", "{\"council\":\"X\",\"residents\":3}"));
  ASSERT_OK(set(m, "council_placements",
                " {\"council\":\"Leeds\", \"residents\":\"12\","
                " \"as_of\":\"2007-04-01\"} "));
  ASSERT_EQ(s->n_council_placements, 2);
  ASSERT_STR_EQ(s->council_placements[0]->council, "X");
  ASSERT(s->council_placements[0]->has_residents);
  ASSERT_EQ(s->council_placements[0]->residents, 3);
  ASSERT(s->council_placements[0]->as_of == NULL);
  ASSERT_EQ(s->council_placements[1]->residents, 12);
  ASSERT_STR_EQ(s->council_placements[1]->as_of, "2007-04-01");
  ASSERT_OK(set(m, "council_placements", "{}"));
  ASSERT_EQ(s->n_council_placements, 3);
  ASSERT_STR_EQ(cell_of(m, "council_placements"),
                "{\"council\":\"X\",\"residents\":3}|"
                "{\"council\":\"Leeds\",\"residents\":12,"
                "\"as_of\":\"2007-04-01\"}|{}");

  ASSERT_OK(
      set(n, "themes", "{\"theme\":\"food\",\"sentiment\":\"positive\"}"));
  ASSERT_OK(set(n, "themes",
                "{\"theme\":\"THEME_FEELING_SAFE\","
                "\"sentiment\":\"Negative\"}"));
  ASSERT_EQ(in->n_themes, 2);
  ASSERT_EQ(in->themes[0]->theme, FIELDSYNC__THEME__THEME_FOOD);
  ASSERT_EQ(in->themes[0]->sentiment, FIELDSYNC__SENTIMENT__SENTIMENT_POSITIVE);
  ASSERT_EQ(in->themes[1]->theme, FIELDSYNC__THEME__THEME_FEELING_SAFE);
  ASSERT_EQ(in->themes[1]->sentiment, FIELDSYNC__SENTIMENT__SENTIMENT_NEGATIVE);
  ASSERT_EQ(set(n, "themes", "{\"theme\":\"smell\"}"), FIELDSYNC_EVALUE);
  ASSERT(strncmp(err,
                 "interview_note.themes.theme: \"smell\" is not one of "
                 "food|activities|",
                 67) == 0);
  ASSERT_EQ(set(n, "themes", "{\"theme\":0}"), FIELDSYNC_EVALUE);
  ASSERT(strstr(err, "(unspecified)") != NULL);
  ASSERT_EQ(in->n_themes, 2);
  ASSERT_OK(
      fsc_fields_set(n, "themes", "{\"theme\":2}", true, err, sizeof(err)));
  ASSERT_EQ(in->n_themes, 1);
  ASSERT_EQ(in->themes[0]->theme, FIELDSYNC__THEME__THEME_ACTIVITIES);
  ASSERT_STR_EQ(json_of(n), "{\"themes\":[{\"theme\":\"activities\"}]}");

  fsc_fields_free(m);
  fsc_fields_free(n);
}

TEST(set_from_json_values) {
  ProtobufCMessage *m = new_msg("visit");
  Fieldsync__Visit *v = (Fieldsync__Visit *)m;
  ProtobufCMessage *s = new_msg("service");
  Fieldsync__Service *sv = (Fieldsync__Service *)s;

  ASSERT_OK(set_json(m, "announced", "true"));
  ASSERT(v->has_announced && v->announced);
  ASSERT_OK(set_json(m, "announced", "\"no\""));
  ASSERT(!v->announced);
  ASSERT_OK(set_json(m, "announced", "1"));
  ASSERT(v->announced);
  ASSERT_EQ(set_json(m, "announced", "2"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "announced", "{}"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "visit.announced: expected true or false, got a JSON "
                     "object");
  ASSERT_OK(set_json(m, "rating_stars", "3"));
  ASSERT_EQ(v->rating_stars, 3);
  ASSERT_OK(set_json(m, "rating_stars", "\"2\""));
  ASSERT_EQ(v->rating_stars, 2);
  ASSERT_EQ(set_json(m, "rating_stars", "true"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "rating_stars", "-1"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "rating_stars", "4294967296"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "rating_stars", "[1]"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "visit.rating_stars: expected one value, got a JSON "
                     "array");
  ASSERT_OK(set_json(m, "kind", "\"follow_up\""));
  ASSERT_EQ(v->kind, FIELDSYNC__VISIT_KIND__VISIT_FOLLOW_UP);
  ASSERT_OK(set_json(m, "kind", "3"));
  ASSERT_EQ(v->kind, FIELDSYNC__VISIT_KIND__VISIT_THEMATIC);
  ASSERT_EQ(set_json(m, "kind", "99"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "kind", "0"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "planned_date", "20070401"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "visit.planned_date: expected a string, got a JSON "
                     "number");
  ASSERT_EQ(set_json(m, "planned_date", "\"a\\u0000b\""), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "visit.planned_date: value contains a NUL character");
  ASSERT_OK(set_json(m, "planned_date", "\"2007-04-01\""));
  ASSERT_STR_EQ(v->planned_date, "2007-04-01");

  /* Arrays set repeated fields exactly; a single value gives one. */
  ASSERT_OK(set_json(m, "inspectors", "[\"A\",\"B\",\"C\"]"));
  ASSERT_EQ(v->n_inspectors, 3);
  ASSERT_OK(set_json(m, "inspectors", "[\"D\"]"));
  ASSERT_EQ(v->n_inspectors, 1);
  ASSERT_STR_EQ(v->inspectors[0], "D");
  ASSERT_OK(set_json(m, "inspectors", "\"E\""));
  ASSERT_EQ(v->n_inspectors, 1);
  ASSERT_STR_EQ(v->inspectors[0], "E");
  ASSERT_EQ(set_json(m, "inspectors", "[\"F\",7]"), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "visit.inspectors[1]: expected a string, got a JSON "
                     "number");
  ASSERT_EQ(set_json(m, "inspectors", "[\"F\",null]"), FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(m, "inspectors", "[[\"F\"]]"), FIELDSYNC_EVALUE);
  ASSERT_EQ(v->n_inspectors, 1);
  ASSERT_STR_EQ(v->inspectors[0], "E");
  ASSERT_OK(set_json(m, "inspectors", "[]"));
  ASSERT_EQ(v->n_inspectors, 0);
  /* null clears */
  ASSERT_OK(set_json(m, "planned_date", "null"));
  ASSERT(v->planned_date == NULL);
  ASSERT_OK(set_json(m, "kind", "null"));
  ASSERT(!v->has_kind);
  ASSERT_EQ(set_json(m, "kinds", "null"), FIELDSYNC_EFIELD);

  /* Messages: objects, JSON text in a string, arrays of either. */
  ASSERT_OK(set_json(s, "council_placements",
                     "[{\"council\":\"X\",\"residents\":3},"
                     "\"{\\\"council\\\":\\\"Y\\\"}\"]"));
  ASSERT_EQ(sv->n_council_placements, 2);
  ASSERT_STR_EQ(sv->council_placements[1]->council, "Y");
  ASSERT_EQ(set_json(s, "council_placements",
                     "[{\"council\":\"X\"},{\"residents\":\"x\"}]"),
            FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "service.council_placements[1].residents: \"x\" is not "
                     "a number");
  ASSERT_EQ(set_json(s, "council_placements", "[{\"county\":\"X\"}]"),
            FIELDSYNC_EVALUE);
  ASSERT_EQ(set_json(s, "council_placements", "5"), FIELDSYNC_EVALUE);
  ASSERT_EQ(sv->n_council_placements, 2);
  ASSERT_EQ(fsc_fields_set_json(s, "name", NULL, err, sizeof(err)),
            FIELDSYNC_EVALUE);

  fsc_fields_free(m);
  fsc_fields_free(s);
}

TEST(from_json_object) {
  ProtobufCMessage *m = new_msg("observation");
  Fieldsync__Observation *o = (Fieldsync__Observation *)m;
  json_error_t jerr;
  json_t *j = json_loads("{\"visit_id\":\"" VISIT_HEX "\","
                         "\"standard_code\":\"OP9\",\"judgement\":2,"
                         "\"evidence_category\":\"processes\","
                         "\"case_refs\":[\"C1\",\"C3\"]}",
                         0, &jerr);

  ASSERT(j != NULL);
  ASSERT_OK(fsc_fields_from_json(m, j, err, sizeof(err)));
  json_decref(j);
  ASSERT_STR_EQ(o->standard_code, "OP9");
  ASSERT_EQ(o->judgement, 2);
  ASSERT_EQ(o->evidence_category,
            FIELDSYNC__EVIDENCE_CATEGORY__EVIDENCE_PROCESSES);
  ASSERT_EQ(o->n_case_refs, 2);

  j = json_loads("{\"standard_code\":\"OP10\",\"judgment\":3}", 0, &jerr);
  ASSERT(j != NULL);
  ASSERT_EQ(fsc_fields_from_json(m, j, err, sizeof(err)), FIELDSYNC_EFIELD);
  ASSERT_STR_EQ(err, "observation: no field \"judgment\"");
  json_decref(j);

  j = json_loads("[1]", 0, &jerr);
  ASSERT(j != NULL);
  ASSERT_EQ(fsc_fields_from_json(m, j, err, sizeof(err)), FIELDSYNC_EVALUE);
  ASSERT_STR_EQ(err, "observation: expected a JSON object, got a JSON array");
  json_decref(j);

  /* A key with an embedded NUL is not a field name. */
  j = json_object();
  ASSERT(j != NULL);
  ASSERT_OK(json_object_setn_new(j, "judgement\0x", 11, json_integer(1)));
  ASSERT_EQ(fsc_fields_from_json(m, j, err, sizeof(err)), FIELDSYNC_EFIELD);
  json_decref(j);

  fsc_fields_free(m);
}

TEST(oneof_fields) {
  ProtobufCMessage *m = fsc_fields_new(&fieldsync__envelope__descriptor);
  Fieldsync__Envelope *e = (Fieldsync__Envelope *)m;

  ASSERT(m != NULL);
  ASSERT_OK(set(m, "hello", "{\"client_version\":\"1.0\"}"));
  ASSERT_EQ(e->body_case, FIELDSYNC__ENVELOPE__BODY_HELLO);
  ASSERT_STR_EQ(json_of(m), "{\"hello\":{\"client_version\":\"1.0\"}}");
  /* Setting another member frees the first (LeakSanitizer checks). */
  ASSERT_OK(set(m, "pull", "{\"cursor\":5}"));
  ASSERT_EQ(e->body_case, FIELDSYNC__ENVELOPE__BODY_PULL);
  ASSERT_EQ(e->pull->cursor, 5);
  ASSERT_STR_EQ(json_of(m), "{\"pull\":{\"cursor\":5}}");
  ASSERT_STR_EQ(cell_of(m, "hello"), "");
  /* Clearing a member that is not set leaves the other alone. */
  ASSERT_OK(fsc_fields_clear(m, "hello", err, sizeof(err)));
  ASSERT_EQ(e->body_case, FIELDSYNC__ENVELOPE__BODY_PULL);
  ASSERT_OK(fsc_fields_clear(m, "pull", err, sizeof(err)));
  ASSERT_EQ(e->body_case, FIELDSYNC__ENVELOPE__BODY__NOT_SET);
  ASSERT_OK(set(m, "bye", "{\"reason\":\"done\"}"));
  fsc_fields_free(m);
}

/* A sample text for one field of any type, as fsc_fields_set takes it;
 * message fields get a JSON object with a sample of each sub-field. */
static void sample_text(const ProtobufCFieldDescriptor *f, int variant,
                        char *buf, size_t cap) {
  const ProtobufCEnumDescriptor *ed;
  const ProtobufCMessageDescriptor *md;
  json_t *obj;
  unsigned i;
  size_t n;

  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    snprintf(buf, cap, "%s \"%d\" é ✓|", f->name, variant);
    break;
  case PROTOBUF_C_TYPE_BOOL:
    snprintf(buf, cap, "%s", variant ? "yes" : "no");
    break;
  case PROTOBUF_C_TYPE_UINT32:
    snprintf(buf, cap, "%s", variant ? "4294967295" : "3");
    break;
  case PROTOBUF_C_TYPE_UINT64:
    /* Above INT64_MAX: shown as a decimal string in JSON. */
    snprintf(buf, cap, "%s", variant ? "18446744073709551615" : "42");
    break;
  case PROTOBUF_C_TYPE_INT64:
    snprintf(buf, cap, "%s",
             variant ? "-1700000000000" : "9223372036854775807");
    break;
  case PROTOBUF_C_TYPE_ENUM:
    ed = f->descriptor;
    ASSERT(ed->n_values >= 2);
    snprintf(buf, cap, "%s", ed->values[ed->n_values - 1 - variant].name);
    break;
  case PROTOBUF_C_TYPE_BYTES:
    if (strcmp(f->name, "sha256") == 0)
      snprintf(buf, cap, "%s", SHA_HEX);
    else if (strlen(f->name) > 3 &&
             strcmp(f->name + strlen(f->name) - 3, "_id") == 0)
      snprintf(buf, cap, "%s", VISIT_HEX);
    else
      snprintf(buf, cap, "%s", variant ? "" : "00ff10");
    break;
  case PROTOBUF_C_TYPE_MESSAGE:
    md = f->descriptor;
    obj = json_object();
    ASSERT(obj != NULL);
    for (i = 0; i < md->n_fields; i++) {
      char sub[512];

      sample_text(&md->fields[i], variant, sub, sizeof(sub));
      ASSERT_OK(json_object_set_new(obj, md->fields[i].name, json_string(sub)));
    }
    n = json_dumpb(obj, buf, cap - 1, JSON_COMPACT);
    ASSERT(n > 0 && n < cap);
    buf[n] = '\0';
    json_decref(obj);
    break;
  default:
    test_fail(__FILE__, __LINE__, "no sample for %s", f->name);
  }
}

/* Sets every field of m from sample text; repeated fields get two. */
static void fill(ProtobufCMessage *m) {
  const ProtobufCMessageDescriptor *d = m->descriptor;
  unsigned i;

  for (i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    char text[2048];
    int variant;

    for (variant = 0; variant < 2; variant++) {
      sample_text(f, variant, text, sizeof(text));
      ASSERT_OK(fsc_fields_set(m, f->name, text, false, err, sizeof(err)));
      if (f->label != PROTOBUF_C_LABEL_REPEATED)
        break;
    }
  }
}

/* to_json then from_json into a fresh message gives the same bytes, and
 * so does unpacking the packed bytes. */
static void check_round_trip(const ProtobufCMessageDescriptor *d) {
  ProtobufCMessage *a = fsc_fields_new(d);
  ProtobufCMessage *b = fsc_fields_new(d);
  ProtobufCMessage *c;
  json_t *ja;
  json_t *jc;
  uint8_t *packed;
  size_t len;
  unsigned i;

  ASSERT(a != NULL && b != NULL);
  fill(a);
  ja = fsc_fields_to_json(a);
  ASSERT(ja != NULL);
  ASSERT_EQ(json_object_size(ja), d->n_fields);
  ASSERT_OK(fsc_fields_from_json(b, ja, err, sizeof(err)));
  assert_pack_equal(a, b);

  ASSERT_OK(fsc_fields_pack(a, &packed, &len));
  c = fsc_fields_unpack(d, packed, len);
  ASSERT(c != NULL);
  jc = fsc_fields_to_json(c);
  ASSERT(jc != NULL);
  ASSERT(json_equal(ja, jc));
  for (i = 0; i < d->n_fields; i++) {
    char *x = fsc_fields_cell(a, &d->fields[i]);
    char *y = fsc_fields_cell(c, &d->fields[i]);

    ASSERT(x != NULL && y != NULL);
    ASSERT(x[0] != '\0');
    ASSERT_STR_EQ(x, y);
    fsp_free(x);
    fsp_free(y);
  }
  json_decref(ja);
  json_decref(jc);
  fsp_free(packed);
  fsc_fields_free(a);
  fsc_fields_free(b);
  fsc_fields_free(c);
}

TEST(json_round_trip_every_collection) {
  size_t n;
  size_t i;
  const struct fsp_collection *c = fsp_payload_collections(&n);

  for (i = 0; i < n; i++)
    check_round_trip(c[i].desc);
  /* Session messages: int64, plain bytes, repeated messages. */
  check_round_trip(&fieldsync__version__descriptor);
  check_round_trip(&fieldsync__limits__descriptor);
}

TEST(to_json_shapes) {
  ProtobufCMessage *m = new_msg("attachment");
  ProtobufCMessage *s = new_msg("service");
  Fieldsync__Attachment *a = (Fieldsync__Attachment *)m;

  ASSERT_STR_EQ(json_of(m), "{}");
  ASSERT_OK(set(m, "visit_id", "0102030405060708090A0B0C0D0E0F10"));
  ASSERT_OK(set(m, "owner_collection", "requirement"));
  ASSERT_OK(set(m, "size", "1024"));
  ASSERT_OK(set(m, "shows_person", "false"));
  ASSERT_OK(set(m, "caption", "Lounge"));
  ASSERT_STR_EQ(json_of(m), "{\"visit_id\":\"" VISIT_HEX "\","
                            "\"owner_collection\":\"requirement\","
                            "\"size\":1024,\"caption\":\"Lounge\","
                            "\"shows_person\":false}");
  ASSERT_OK(set(m, "size", "18446744073709551615"));
  ASSERT(strstr(json_of(m), "\"size\":\"18446744073709551615\"") != NULL);
  /* An unknown enum value (from a newer peer) stays a number. */
  a->redaction = 99;
  a->has_redaction = 1;
  ASSERT(strstr(json_of(m), "\"redaction\":99") != NULL);
  ASSERT_STR_EQ(cell_of(m, "redaction"), "99");
  /* A string that skipped validation is shown with U+FFFD. */
  fsp_free(a->caption);
  a->caption = fsp_strdup("ok \xff\xc3 done \xe2\x9c\x93");
  ASSERT(strstr(json_of(m), "\"caption\":\"ok \xef\xbf\xbd\xef\xbf\xbd done "
                            "\xe2\x9c\x93\"") != NULL);
  ASSERT_STR_EQ(cell_of(m, "caption"),
                "ok \xef\xbf\xbd\xef\xbf\xbd done \xe2\x9c\x93");

  ASSERT_OK(set(s, "registration_categories", "OP"));
  ASSERT_OK(set(s, "nursing", "true"));
  ASSERT_STR_EQ(json_of(s), "{\"registration_categories\":[\"OP\"],"
                            "\"nursing\":true}");
  fsc_fields_free(m);
  fsc_fields_free(s);
}

TEST(pack_and_unpack) {
  ProtobufCMessage *m = new_msg("observation");
  ProtobufCMessage *u;
  Fieldsync__Observation *o;
  uint8_t *out;
  size_t len;
  static const uint8_t junk[] = {0x0a, 0xff, 0x01};

  ASSERT_OK(fsc_fields_pack(m, &out, &len));
  ASSERT(out != NULL);
  ASSERT_EQ(len, 0);
  fsp_free(out);
  u = fsc_fields_unpack(m->descriptor, NULL, 0);
  ASSERT(u != NULL);
  fsc_fields_free(u);

  ASSERT_OK(set(m, "visit_id", VISIT_HEX));
  ASSERT_OK(set(m, "standard_code", "OP9"));
  ASSERT_OK(set(m, "judgement", "2"));
  ASSERT_OK(set(m, "case_refs", "C1"));
  ASSERT_OK(fsc_fields_pack(m, &out, &len));
  ASSERT_EQ(len, protobuf_c_message_get_packed_size(m));
  u = fsc_fields_unpack(m->descriptor, out, len);
  ASSERT(u != NULL);
  o = (Fieldsync__Observation *)u;
  ASSERT_STR_EQ(o->standard_code, "OP9");
  ASSERT_EQ(o->judgement, 2);
  ASSERT_EQ(o->visit_id.len, 16);
  ASSERT_STR_EQ(o->case_refs[0], "C1");
  /* An unpacked message is edited like a new one. */
  ASSERT_OK(set(u, "standard_code", "OP10"));
  ASSERT_OK(set(u, "case_refs", "C2"));
  ASSERT_OK(fsc_fields_clear(u, "visit_id", err, sizeof(err)));
  ASSERT_STR_EQ(json_of(u), "{\"standard_code\":\"OP10\",\"judgement\":2,"
                            "\"case_refs\":[\"C1\",\"C2\"]}");
  fsc_fields_free(u);
  fsp_free(out);

  ASSERT(fsc_fields_unpack(m->descriptor, junk, sizeof(junk)) == NULL);
  fsc_fields_free(m);
  fsc_fields_free(NULL);
}

TEST(enum_names) {
  char buf[64];

  ASSERT(fsc_fields_enum_name(&fieldsync__consent__descriptor,
                              FIELDSYNC__CONSENT__CONSENT_GIVEN, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "given");
  ASSERT(fsc_fields_enum_name(
      &fieldsync__requirement_status__descriptor,
      FIELDSYNC__REQUIREMENT_STATUS__REQUIREMENT_NOT_MET_OUTSTANDING, buf,
      sizeof(buf)));
  ASSERT_STR_EQ(buf, "not_met_outstanding");
  ASSERT(fsc_fields_enum_name(&fieldsync__visit_kind__descriptor,
                              FIELDSYNC__VISIT_KIND__VISIT_KEY, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "key");
  ASSERT(fsc_fields_enum_name(
      &fieldsync__evidence_category__descriptor,
      FIELDSYNC__EVIDENCE_CATEGORY__EVIDENCE_PEOPLES_EXPERIENCE, buf,
      sizeof(buf)));
  ASSERT_STR_EQ(buf, "peoples_experience");
  ASSERT(fsc_fields_enum_name(&fieldsync__collection__descriptor,
                              FIELDSYNC__COLLECTION__COLLECTION_OBSERVATION,
                              buf, sizeof(buf)));
  ASSERT_STR_EQ(buf, "observation");
  ASSERT(fsc_fields_enum_name(&fieldsync__visit_status__descriptor,
                              FIELDSYNC__VISIT_STATUS__VISIT_IN_PROGRESS, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "in_progress");
  ASSERT(fsc_fields_enum_name(&fieldsync__concern_source__descriptor,
                              FIELDSYNC__CONCERN_SOURCE__SOURCE_PROVIDER_REG37,
                              buf, sizeof(buf)));
  ASSERT_STR_EQ(buf, "provider_reg37");
  ASSERT(fsc_fields_enum_name(&fieldsync__role__descriptor,
                              FIELDSYNC__ROLE__ROLE_HEAD_OFFICE, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "head_office");
  ASSERT(fsc_fields_enum_name(&fieldsync__error_code__descriptor,
                              FIELDSYNC__ERROR_CODE__ERR_FRAME_TOO_LARGE, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "frame_too_large");
  /* The zero value is known (its name keeps what follows the prefix). */
  ASSERT(fsc_fields_enum_name(&fieldsync__consent__descriptor, 0, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "unspecified");
  ASSERT(fsc_fields_enum_name(&fieldsync__visit_kind__descriptor, 0, buf,
                              sizeof(buf)));
  ASSERT_STR_EQ(buf, "kind_unspecified");
  ASSERT(!fsc_fields_enum_name(&fieldsync__consent__descriptor, 99, buf,
                               sizeof(buf)));
  ASSERT(!fsc_fields_enum_name(&fieldsync__consent__descriptor, -1, buf,
                               sizeof(buf)));
  /* Cut to cap, NUL-terminated. */
  ASSERT(fsc_fields_enum_name(
      &fieldsync__requirement_status__descriptor,
      FIELDSYNC__REQUIREMENT_STATUS__REQUIREMENT_NOT_MET_OUTSTANDING, buf, 4));
  ASSERT_STR_EQ(buf, "not");
}

TEST(cells) {
  ProtobufCMessage *m = new_msg("visit");
  ProtobufCMessage *c = new_msg("concern");

  ASSERT_STR_EQ(cell_of(m, "inspectors"), "");
  ASSERT_STR_EQ(cell_of(m, "planned_date"), "");
  ASSERT_STR_EQ(cell_of(m, "announced"), "");
  ASSERT_STR_EQ(cell_of(m, "service_id"), "");
  ASSERT_OK(set(m, "inspectors", "Ann Smith"));
  ASSERT_STR_EQ(cell_of(m, "inspectors"), "Ann Smith");
  ASSERT_OK(set(m, "inspectors", "Bo \"B\" Jones"));
  ASSERT_OK(set(m, "inspectors", "Cy"));
  ASSERT_STR_EQ(cell_of(m, "inspectors"), "Ann Smith|Bo \"B\" Jones|Cy");
  ASSERT_OK(set(m, "planned_date", "2007-04-01"));
  ASSERT_STR_EQ(cell_of(m, "planned_date"), "2007-04-01");
  ASSERT_OK(set(m, "announced", "no"));
  ASSERT_STR_EQ(cell_of(m, "announced"), "false");
  ASSERT_OK(set(m, "rating_stars", "0"));
  ASSERT_STR_EQ(cell_of(m, "rating_stars"), "0");
  ASSERT_OK(set(m, "kind", "visit_follow_up"));
  ASSERT_STR_EQ(cell_of(m, "kind"), "follow_up");
  ASSERT_OK(set(m, "service_id", "A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"));
  ASSERT_STR_EQ(cell_of(m, "service_id"), "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
  ASSERT_OK(set(c, "abuse_types", "physical"));
  ASSERT_OK(set(c, "abuse_types", "neglect"));
  ASSERT_STR_EQ(cell_of(c, "abuse_types"), "physical|neglect");
  fsc_fields_free(m);
  fsc_fields_free(c);
}

struct described {
  char text[2048];
};

static void describe_cb(const char *name, const char *type, void *data) {
  struct described *d = data;
  size_t n = strlen(d->text);

  snprintf(d->text + n, sizeof(d->text) - n, "%s=%s;", name, type);
}

TEST(describe) {
  struct described d;

  d.text[0] = '\0';
  fsc_fields_describe(fsp_payload_by_name("observation")->desc, describe_cb,
                      &d);
  ASSERT_STR_EQ(d.text,
                "visit_id=id;standard_code=string;judgement=uint32;"
                "evidence_text=string;"
                "evidence_category=enum: peoples_experience|staff_feedback|"
                "partner_feedback|observation|processes|outcomes;"
                "assessor=string;case_refs=repeated string;");

  d.text[0] = '\0';
  fsc_fields_describe(fsp_payload_by_name("service")->desc, describe_cb, &d);
  ASSERT(strstr(d.text, "nursing=bool;") != NULL);
  ASSERT(strstr(d.text, "sector=enum: private|voluntary|council;") != NULL);
  ASSERT(strstr(d.text, "council_placements=repeated message "
                        "CouncilPlacement (JSON object);") != NULL);
  d.text[0] = '\0';
  fsc_fields_describe(fsp_payload_by_name("attachment")->desc, describe_cb, &d);
  ASSERT(strstr(d.text, "sha256=sha256;size=uint64;") != NULL);
  d.text[0] = '\0';
  fsc_fields_describe(fsp_payload_by_name("visit")->desc, describe_cb, &d);
  ASSERT(strstr(d.text, "kind=enum: key|random|thematic|complaint|"
                        "follow_up;") != NULL);
  d.text[0] = '\0';
  fsc_fields_describe(&fieldsync__version__descriptor, describe_cb, &d);
  ASSERT(strstr(d.text, "hash=hex;") != NULL);
  ASSERT(strstr(d.text, "device_time_ms=int64;") != NULL);
}

/* Runs op with the k-th allocation failing, for k = 1, 2, ... until op
 * makes no allocation fail; each run must end in ok or ENOMEM (LSan then
 * checks nothing leaked). Returns how many runs hit an injected failure. */
static unsigned fault_loop(int (*op)(void)) {
  unsigned hits = 0;
  uint64_t k;

  for (k = 1; k < 10000; k++) {
    int rc;

    fsp_alloc_fail_at(k, false);
    rc = op();
    if (fsp_alloc_failed() == 0) {
      fsp_alloc_fail_at(0, false);
      ASSERT_OK(rc);
      return hits;
    }
    hits++;
    if (rc != 0 && rc != FIELDSYNC_ENOMEM)
      test_fail(__FILE__, __LINE__, "k=%" PRIu64 " rc=%d: %s", k, rc, err);
  }
  fsp_alloc_fail_at(0, false);
  test_fail(__FILE__, __LINE__, "fault loop did not end");
  return hits;
}

/* Each op builds, edits and frees its own messages; on ENOMEM the
 * message must still be whole (it is freed, then checked by LSan). */
static int op_set(void) {
  const ProtobufCMessageDescriptor *d = fsp_payload_by_name("service")->desc;
  ProtobufCMessage *m = fsc_fields_new(d);
  int rc = FIELDSYNC_ENOMEM;

  if (m == NULL)
    return rc;
  rc = fsc_fields_set(m, "name", "Oak House", false, err, sizeof(err));
  if (rc == 0)
    rc = fsc_fields_set(m, "registration_categories", "OP", false, err,
                        sizeof(err));
  if (rc == 0)
    rc = fsc_fields_set(m, "registration_categories", "PD", false, err,
                        sizeof(err));
  if (rc == 0)
    rc = fsc_fields_set(m, "registration_categories", "LD", true, err,
                        sizeof(err));
  if (rc == 0)
    rc = fsc_fields_set(m, "council_placements",
                        "{\"council\":\"X\",\"residents\":3,"
                        "\"as_of\":\"2007-04-01\"}",
                        false, err, sizeof(err));
  if (rc == 0)
    rc = fsc_fields_set(m, "council_placements", "{\"council\":\"Y\"}", true,
                        err, sizeof(err));
  if (rc == FIELDSYNC_ENOMEM)
    ASSERT(strstr(err, "out of memory") != NULL);
  fsc_fields_free(m);
  return rc;
}

static int op_set_json(void) {
  ProtobufCMessage *m = fsc_fields_new(&fieldsync__interview_note__descriptor);
  json_t *j;
  json_error_t jerr;
  int rc = FIELDSYNC_ENOMEM;

  if (m == NULL)
    return rc;
  j = json_loads("{\"visit_id\":\"" VISIT_HEX "\",\"expert\":\"E\","
                 "\"themes\":[{\"theme\":\"food\",\"sentiment\":1},"
                 "\"{\\\"theme\\\":\\\"visiting\\\"}\"],"
                 "\"quotes\":[\"a\",\"b\",\"c\"],\"consent\":\"given\"}",
                 0, &jerr);
  if (j != NULL) {
    rc = fsc_fields_from_json(m, j, err, sizeof(err));
    json_decref(j);
  }
  fsc_fields_free(m);
  return rc;
}

static ProtobufCMessage *filled_note(void) {
  ProtobufCMessage *m = fsc_fields_new(&fieldsync__interview_note__descriptor);

  ASSERT(m != NULL);
  fill(m);
  return m;
}

/* The message the output ops read, built with injection off. */
static ProtobufCMessage *fault_msg;

static int op_to_json(void) {
  json_t *j = fsc_fields_to_json(fault_msg);

  if (j == NULL)
    return FIELDSYNC_ENOMEM;
  json_decref(j);
  return 0;
}

static int op_cell(void) {
  const ProtobufCMessageDescriptor *d = fault_msg->descriptor;
  unsigned i;

  for (i = 0; i < d->n_fields; i++) {
    char *c = fsc_fields_cell(fault_msg, &d->fields[i]);

    if (c == NULL)
      return FIELDSYNC_ENOMEM;
    fsp_free(c);
  }
  return 0;
}

static int op_pack(void) {
  uint8_t *out;
  size_t len;
  ProtobufCMessage *u;
  int rc = fsc_fields_pack(fault_msg, &out, &len);

  if (rc != 0)
    return rc;
  u = fsc_fields_unpack(fault_msg->descriptor, out, len);
  fsp_free(out);
  if (u == NULL)
    return FIELDSYNC_ENOMEM;
  fsc_fields_free(u);
  return 0;
}

TEST(alloc_failure_set) {
  ASSERT_GT(fault_loop(op_set), 10);
}

TEST(alloc_failure_from_json) {
  ASSERT_GT(fault_loop(op_set_json), 5);
}

TEST(alloc_failure_to_json_cell_pack) {
  json_via_fsp();
  fault_msg = filled_note();
  ASSERT_GT(fault_loop(op_to_json), 10);
  ASSERT_GT(fault_loop(op_cell), 10);
  ASSERT_GT(fault_loop(op_pack), 5);
  fsc_fields_free(fault_msg);
}

/* One entry per line, which clang-format would reflow. */
/* clang-format off */
TEST_LIST(TEST_ENTRY(every_type_parses)
          TEST_ENTRY(bad_values)
          TEST_ENTRY(message_field_errors)
          TEST_ENTRY(repeated_append_and_replace)
          TEST_ENTRY(clear)
          TEST_ENTRY(nested_messages_from_text)
          TEST_ENTRY(set_from_json_values)
          TEST_ENTRY(from_json_object)
          TEST_ENTRY(oneof_fields)
          TEST_ENTRY(json_round_trip_every_collection)
          TEST_ENTRY(to_json_shapes)
          TEST_ENTRY(pack_and_unpack)
          TEST_ENTRY(enum_names)
          TEST_ENTRY(cells)
          TEST_ENTRY(describe)
          TEST_ENTRY(alloc_failure_set)
          TEST_ENTRY(alloc_failure_from_json)
          TEST_ENTRY(alloc_failure_to_json_cell_pack))
/* clang-format on */
