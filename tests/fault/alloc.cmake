# SPDX-License-Identifier: MIT
# Allocation failure at every k (issue 6): fsp_alloc_fail_at over frame
# decoding, libfieldsync (open, recording, a batch, a whole sync once and
# sticky, with SQLite's and jansson's allocations routed through fsp_malloc
# too: tests/harness/faultmem.c, json_set_alloc_funcs), and whole server
# sessions in fieldsyncd-fault. ctest runs a stride of k where every k
# would take too long (printed, with a seeded offset); FIELDSYNC_TEST_SCALE
# >= 10 (the long run) tries every k.
add_executable(test_alloc_frame ${CMAKE_CURRENT_LIST_DIR}/test_alloc_frame.c)
target_link_libraries(test_alloc_frame PRIVATE test_harness fieldsync_proto
                      fieldsync_samples)
add_test(NAME fault_alloc_frame COMMAND test_alloc_frame)
set_tests_properties(fault_alloc_frame PROPERTIES LABELS fault)

if(TARGET fieldsyncd AND TARGET fieldsync)
  # SQLite's allocations through fsp_malloc (tests only).
  add_library(test_faultmem STATIC
    ${CMAKE_SOURCE_DIR}/tests/harness/faultmem.c)
  target_include_directories(test_faultmem PUBLIC
    ${CMAKE_SOURCE_DIR}/tests/harness)
  target_link_libraries(test_faultmem PUBLIC fieldsync_proto
    PkgConfig::SQLITE3)

  # The scenario, files, syncs and sweep plans the two tests below share.
  add_library(test_alloc_common STATIC
    ${CMAKE_CURRENT_LIST_DIR}/alloc_common.c)
  target_include_directories(test_alloc_common PUBLIC
    ${CMAKE_CURRENT_LIST_DIR})
  target_link_libraries(test_alloc_common PUBLIC test_harness test_sqlcheck
    fieldsync
    PkgConfig::SQLITE3)

  # libfieldsync in process against a real fieldsyncd: one ctest test per
  # part, each well under 90 s in CI.
  add_executable(test_alloc_client ${CMAKE_CURRENT_LIST_DIR}/test_alloc_client.c)
  target_link_libraries(test_alloc_client PRIVATE test_faultmem
                        test_alloc_common test_replica_export)
  add_dependencies(test_alloc_client fieldsyncd fieldsync-admin)
  foreach(part open recording batch sync sync_sticky)
    add_test(NAME fault_alloc_client_${part}
             COMMAND test_alloc_client $<TARGET_FILE:fieldsyncd>
                     $<TARGET_FILE:fieldsync-admin>
                     ${part}_fails_cleanly_at_every_k)
    set_tests_properties(fault_alloc_client_${part} PROPERTIES LABELS fault
                         ENVIRONMENT FIELDSYNC_TEST_TIMEOUT=300)
    fieldsync_test_timeout(fault_alloc_client_${part} 300)
  endforeach()
endif()

# Whole server sessions in fieldsyncd-fault: the k-th allocation from
# connection 2's accept fails, once or for good (sticky), counting ours, or
# SQLite's too (":sqlite").
if(TARGET fieldsyncd-fault AND TARGET fieldsync AND TARGET test_wire_harness)
  add_executable(test_alloc_server ${CMAKE_CURRENT_LIST_DIR}/test_alloc_server.c)
  target_link_libraries(test_alloc_server PRIVATE test_alloc_common
                        test_wire_harness fieldsync_samples test_replica_export)
  add_dependencies(test_alloc_server fieldsyncd-fault fieldsync-admin)
  foreach(mode once sticky once_sqlite sticky_sqlite)
    add_test(NAME fault_alloc_server_${mode}
             COMMAND test_alloc_server $<TARGET_FILE:fieldsyncd-fault>
                     $<TARGET_FILE:fieldsync-admin>
                     server_session_${mode}_at_every_k)
    set_tests_properties(fault_alloc_server_${mode} PROPERTIES LABELS fault
                         ENVIRONMENT FIELDSYNC_TEST_TIMEOUT=300)
    fieldsync_test_timeout(fault_alloc_server_${mode} 300)
  endforeach()
endif()
