# FindLuaJIT: LuaJIT's headers and libraries, for the C hosts that embed it
# (tests/tests.cmake).  LuaJIT_ROOT (a prefix) is searched first.
# Sets LuaJIT_FOUND, LUAJIT_INCLUDE_DIR, LUAJIT_LIBRARY (shared) and
# LUAJIT_STATIC_LIBRARY (when there is one).
find_path(LUAJIT_INCLUDE_DIR luajit.h PATH_SUFFIXES luajit-2.1)
find_library(LUAJIT_LIBRARY NAMES luajit-5.1)
find_library(LUAJIT_STATIC_LIBRARY NAMES libluajit-5.1.a)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LuaJIT REQUIRED_VARS LUAJIT_LIBRARY LUAJIT_INCLUDE_DIR)
mark_as_advanced(LUAJIT_INCLUDE_DIR LUAJIT_LIBRARY LUAJIT_STATIC_LIBRARY)
