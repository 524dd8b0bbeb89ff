/* SPDX-License-Identifier: MIT */
/* SQLite checks shared by the tests that open a store or a client database
 * directly (crash and fault tests). */
#ifndef FIELDSYNC_TEST_SQLCHECK_H
#define FIELDSYNC_TEST_SQLCHECK_H

#include <sqlite3.h>

/* Fails the running test unless PRAGMA integrity_check on db gives the
 * single row "ok"; what names the database in the failure message. */
void sqlcheck_integrity(sqlite3 *db, const char *what);
/* The same for the database file at path, opened and closed here. */
void sqlcheck_integrity_file(const char *path, const char *what);

#endif
