# Tests: every tests/test_*.lua is a ctest test run by ${LUAJIT} from the
# source root against this build's shim; tests/test_shim.c tests the shim
# from C.  Sanitizer builds preload the sanitizer runtime, since luajit
# itself is not instrumented.  Every test has a TIMEOUT, so a hang fails
# instead of freezing CI; the tests also bound their own waits.  A test file
# whose every test was skipped exits 77 (tests/helpers.lua, H.run) and ctest
# reports it skipped.

# Subprocesses of the tests (`luajit -e ...`) run the same LuaJIT as the
# tests: ${LUAJIT} is linked as luajit-bin/luajit, first on their PATH.
if(IS_ABSOLUTE "${LUAJIT}")
  set(LJA_LUAJIT_PATH "${LUAJIT}")
else()
  unset(LJA_LUAJIT_PATH CACHE)
  find_program(LJA_LUAJIT_PATH "${LUAJIT}")
  if(NOT LJA_LUAJIT_PATH)
    message(FATAL_ERROR "The tests need LuaJIT: '${LUAJIT}' is not on PATH (set -DLUAJIT=/path/to/luajit "
                        "or -DBUILD_TESTING=OFF)")
  endif()
endif()
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/luajit-bin)
file(CREATE_LINK ${LJA_LUAJIT_PATH} ${CMAKE_BINARY_DIR}/luajit-bin/luajit SYMBOLIC)

set(LJA_TEST_ENV "LJ_ASYNC_LIB=${CMAKE_BINARY_DIR}/ljasync.so" "LJA_BUILD_DIR=${CMAKE_BINARY_DIR}"
    "LJA_SANITIZE=${LJA_SANITIZE}" "PATH=${CMAKE_BINARY_DIR}/luajit-bin:$ENV{PATH}")
if(LJA_SAN_RUNTIME)
  execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=${LJA_SAN_RUNTIME}
                  OUTPUT_VARIABLE LJA_SAN_PATH OUTPUT_STRIP_TRAILING_WHITESPACE)
  list(APPEND LJA_TEST_ENV "LD_PRELOAD=${LJA_SAN_PATH}"
       "TSAN_OPTIONS=halt_on_error=1 second_deadlock_stack=1 report_signal_unsafe=0 suppressions=${CMAKE_SOURCE_DIR}/tests/tsan.supp"
       "ASAN_OPTIONS=detect_leaks=0 abort_on_error=1"
       "UBSAN_OPTIONS=halt_on_error=1 print_stacktrace=1")
endif()

# C hosts that embed LuaJIT (tests/test_embed.lua runs them): one linked to
# the shared libluajit, one static with its symbols exported (-Wl,-E).  They
# use the headers and libraries of the LuaJIT under test (its prefix, unless
# LuaJIT_ROOT says otherwise); without them the hosts are not built and
# test_embed reports itself skipped.
list(APPEND CMAKE_MODULE_PATH ${CMAKE_SOURCE_DIR}/tests)
if(NOT DEFINED LuaJIT_ROOT)
  get_filename_component(LuaJIT_ROOT ${LJA_LUAJIT_PATH} REALPATH)
  get_filename_component(LuaJIT_ROOT ${LuaJIT_ROOT} DIRECTORY)
  get_filename_component(LuaJIT_ROOT ${LuaJIT_ROOT} DIRECTORY)
endif()
find_package(LuaJIT)
set(LJA_EMBED_HOSTS "")
if(LuaJIT_FOUND)
  add_executable(embed_host_shared tests/embed_host.c)
  target_include_directories(embed_host_shared PRIVATE ${LUAJIT_INCLUDE_DIR})
  target_link_libraries(embed_host_shared PRIVATE ${LUAJIT_LIBRARY})
  list(APPEND LJA_EMBED_HOSTS embed_host_shared)
  if(LUAJIT_STATIC_LIBRARY)
    add_executable(embed_host_static tests/embed_host.c)
    target_include_directories(embed_host_static PRIVATE ${LUAJIT_INCLUDE_DIR})
    target_link_libraries(embed_host_static PRIVATE ${LUAJIT_STATIC_LIBRARY} m dl)
    target_link_options(embed_host_static PRIVATE -Wl,-E)
    list(APPEND LJA_EMBED_HOSTS embed_host_static)
  endif()
endif()
string(REPLACE ";" " " LJA_EMBED_HOSTS "${LJA_EMBED_HOSTS}")
list(APPEND LJA_TEST_ENV "LJA_EMBED_HOSTS=${LJA_EMBED_HOSTS}")

add_executable(test_shim tests/test_shim.c)
target_link_libraries(test_shim PRIVATE ljasync_objects)
add_test(NAME test_shim COMMAND test_shim)
set_tests_properties(test_shim PROPERTIES TIMEOUT 120)

file(GLOB LJA_LUA_TESTS ${CMAKE_SOURCE_DIR}/tests/test_*.lua)
foreach(test ${LJA_LUA_TESTS})
  get_filename_component(name ${test} NAME_WE)
  add_test(NAME ${name} COMMAND ${LJA_LUAJIT_PATH} ${test} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(${name} PROPERTIES TIMEOUT 180 ENVIRONMENT "${LJA_TEST_ENV}" SKIP_RETURN_CODE 77)
endforeach()
