# SPDX-License-Identifier: MIT
# Storage faults through the SQLite fault VFS (tests/harness/faultvfs.c):
# the shim itself, the server store in process, the daemon (fieldsyncd-fault)
# and the client database. Each sweeps k over its workload's counted I/O
# operations: a stride in CI, every k at FIELDSYNC_TEST_SCALE >= 20 (long).
add_library(test_faultvfs_shim STATIC
  ${CMAKE_SOURCE_DIR}/tests/harness/faultvfs.c)
target_include_directories(test_faultvfs_shim PUBLIC
  ${CMAKE_SOURCE_DIR}/tests/harness)
target_compile_definitions(test_faultvfs_shim PRIVATE _POSIX_C_SOURCE=200809L)
target_link_libraries(test_faultvfs_shim PUBLIC PkgConfig::SQLITE3
  Threads::Threads)

# Helpers the storage tests share (files between runs, integrity, strides).
add_library(test_storage_common STATIC
  ${CMAKE_CURRENT_LIST_DIR}/storage_common.c)
target_include_directories(test_storage_common PUBLIC
  ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(test_storage_common PUBLIC test_harness test_sqlcheck
  PkgConfig::SQLITE3)

add_executable(test_faultvfs test_faultvfs.c)
target_link_libraries(test_faultvfs PRIVATE test_faultvfs_shim test_harness)
add_test(NAME fault_vfs COMMAND test_faultvfs)
set_tests_properties(fault_vfs PROPERTIES LABELS fault)

# The server store in process: the writer's workload under every fault.
if(TARGET fieldsync_srvstore)
  add_executable(test_store_faults test_store_faults.c)
  target_link_libraries(test_store_faults PRIVATE test_faultvfs_shim
    test_storage_common test_harness fieldsync_srvstore fieldsync_samples)
  add_test(NAME fault_store COMMAND test_store_faults)
  set_tests_properties(fault_store PROPERTIES LABELS fault)
  fieldsync_test_timeout(fault_store 300)
endif()

# The daemon: fieldsyncd-fault with the fault VFS armed at the test's first
# connection, driven over the raw wire; one ctest per fault kind.
if(TARGET fieldsyncd-fault AND TARGET test_wire_harness)
  add_executable(test_daemon_storage test_daemon_storage.c)
  target_link_libraries(test_daemon_storage PRIVATE test_wire_harness
    test_storage_common fieldsync_samples PkgConfig::SQLITE3)
  add_dependencies(test_daemon_storage fieldsyncd-fault fieldsync-admin)
  foreach(t eio_any enospc_write fsync_fail)
    add_test(NAME fault_daemon_${t}
             COMMAND test_daemon_storage $<TARGET_FILE:fieldsyncd-fault>
                     $<TARGET_FILE:fieldsync-admin> daemon_${t})
    set_tests_properties(fault_daemon_${t} PROPERTIES LABELS fault)
    fieldsync_test_timeout(fault_daemon_${t} 300)
  endforeach()
endif()

# The client database in process under the fault VFS, against fieldsyncd.
if(TARGET fieldsync AND TARGET fieldsyncd AND TARGET test_replica_export)
  add_executable(test_client_faults test_client_faults.c)
  target_link_libraries(test_client_faults PRIVATE test_faultvfs_shim
    test_storage_common test_replica_export test_harness fieldsync
    PkgConfig::JANSSON PkgConfig::SQLITE3)
  add_dependencies(test_client_faults fieldsyncd fieldsync-admin)
  foreach(t batch_faults eio enospc fsync power_drop power_garble)
    add_test(NAME fault_client_${t}
             COMMAND test_client_faults $<TARGET_FILE:fieldsyncd>
                     $<TARGET_FILE:fieldsync-admin> client_${t})
    set_tests_properties(fault_client_${t} PROPERTIES LABELS fault)
    fieldsync_test_timeout(fault_client_${t} 300)
  endforeach()
endif()
