/* SPDX-License-Identifier: MIT */
/* SQLite checks for tests: see sqlcheck.h. */
#include "sqlcheck.h"

#include <string.h>

#include "harness.h"

void sqlcheck_integrity(sqlite3 *db, const char *what) {
  sqlite3_stmt *st = NULL;
  const char *text;
  int rc;

  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) !=
      SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: integrity_check: %s", what,
              sqlite3_errmsg(db));
  rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    sqlite3_finalize(st);
    test_fail(__FILE__, __LINE__, "%s: integrity_check: %s", what,
              sqlite3_errmsg(db));
  }
  text = (const char *)sqlite3_column_text(st, 0);
  if (text == NULL || strcmp(text, "ok") != 0)
    test_fail(__FILE__, __LINE__, "%s: integrity_check: %s", what,
              text != NULL ? text : "(null)");
  ASSERT_EQ(sqlite3_step(st), SQLITE_DONE);
  sqlite3_finalize(st);
}

void sqlcheck_integrity_file(const char *path, const char *what) {
  sqlite3 *db = NULL;

  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK)
    test_fail(__FILE__, __LINE__, "%s: cannot open %s: %s", what, path,
              db != NULL ? sqlite3_errmsg(db) : "out of memory");
  sqlcheck_integrity(db, what);
  ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}
