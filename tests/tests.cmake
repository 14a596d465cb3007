# Tests: every tests/test_*.lua is a ctest test run by LuaJIT from the source
# root against this build's shim; tests/test_shim.c tests the shim from C.
# Sanitizer builds preload the sanitizer runtime, since luajit itself is not
# instrumented.  Every test has a TIMEOUT, so a hang fails instead of
# freezing CI; the tests also bound their own waits.
set(LJA_TEST_ENV "LJ_ASYNC_LIB=${CMAKE_BINARY_DIR}/ljasync.so" "LJA_BUILD_DIR=${CMAKE_BINARY_DIR}"
    "LJA_SANITIZE=${LJA_SANITIZE}")
if(LJA_SAN_RUNTIME)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=${LJA_SAN_RUNTIME}
                  OUTPUT_VARIABLE LJA_SAN_PATH OUTPUT_STRIP_TRAILING_WHITESPACE)
  list(APPEND LJA_TEST_ENV "LD_PRELOAD=${LJA_SAN_PATH}"
       "TSAN_OPTIONS=halt_on_error=1 second_deadlock_stack=1 report_signal_unsafe=0"
       "ASAN_OPTIONS=detect_leaks=0 abort_on_error=1"
       "UBSAN_OPTIONS=halt_on_error=1 print_stacktrace=1")
endif()

add_executable(test_shim tests/test_shim.c)
target_link_libraries(test_shim PRIVATE ljasync_objects)
add_test(NAME test_shim COMMAND test_shim)

file(GLOB LJA_LUA_TESTS ${CMAKE_SOURCE_DIR}/tests/test_*.lua)
foreach(test ${LJA_LUA_TESTS})
  get_filename_component(name ${test} NAME_WE)
  add_test(NAME ${name} COMMAND ${LUAJIT} ${test} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES TIMEOUT 180 ENVIRONMENT "${LJA_TEST_ENV}")
endforeach()
set_tests_properties(test_shim PROPERTIES TIMEOUT 120)

# C hosts that embed LuaJIT (tests/test_load.lua runs them): one linked to
# the shared libluajit, one static with its symbols exported (-Wl,-E).
pkg_check_modules(LUAJIT_PC REQUIRED luajit)
find_library(LUAJIT_STATIC NAMES libluajit-5.1.a HINTS ${LUAJIT_PC_LIBRARY_DIRS})
add_executable(embed_host_shared tests/embed_host.c)
target_include_directories(embed_host_shared PRIVATE ${LUAJIT_PC_INCLUDE_DIRS})
target_link_libraries(embed_host_shared PRIVATE ${LUAJIT_PC_LINK_LIBRARIES})
if(LUAJIT_STATIC)
  add_executable(embed_host_static tests/embed_host.c)
  target_include_directories(embed_host_static PRIVATE ${LUAJIT_PC_INCLUDE_DIRS})
  target_link_libraries(embed_host_static PRIVATE ${LUAJIT_STATIC} m dl)
  target_link_options(embed_host_static PRIVATE -Wl,-E)
endif()
