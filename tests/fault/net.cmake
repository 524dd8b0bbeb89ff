# SPDX-License-Identifier: MIT
# Network faults: three replicas and fieldsyncd through the frame-aware
# fault proxy (tests/harness/faultnet.c), one ctest test per fault kind
# (drop, dup, delay, reorder, cut), one for reordering with duplicates and
# one for a mix. Each runs SEEDS_PER_KIND seeds (faults both ways, client to
# server, server to client in turn) times FIELDSYNC_TEST_SCALE; the `long`
# run takes the larger scale.
if(TARGET fieldsyncd AND TARGET fieldsync)
  add_executable(test_net_faults test_net_faults.c
                 ${CMAKE_SOURCE_DIR}/tests/harness/faultnet.c)
  target_link_libraries(test_net_faults PRIVATE test_harness
                        test_replica_export fieldsync PkgConfig::JANSSON
                        PkgConfig::SQLITE3 Threads::Threads)
  add_dependencies(test_net_faults fieldsyncd fieldsync-admin)
  foreach(kind drop dup delay reorder reorder_dup cut mix)
    add_test(NAME fault_net_${kind}
             COMMAND test_net_faults $<TARGET_FILE:fieldsyncd>
                     $<TARGET_FILE:fieldsync-admin> net_${kind})
    set_tests_properties(fault_net_${kind} PROPERTIES LABELS fault)
    if(COMMAND fieldsync_test_timeout)
      fieldsync_test_timeout(fault_net_${kind} 300)
    endif()
  endforeach()
endif()
