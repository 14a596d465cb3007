package = "lj-async"
version = "scm-1"
source = { url = "git+file://." }
description = {
    summary = "Threads, foreign-thread callbacks and cross-state communication for LuaJIT",
    detailed = [[
        OS threads and C-callable callbacks that run in their own lua_State,
        so that C libraries may call LuaJIT functions from their own threads.
        A small C11 shim (no LuaJIT linked) and FFI-first LuaJIT modules.
    ]],
    license = "MIT",
}
dependencies = { "lua == 5.1" }  -- LuaJIT 2.1
build = {
    type = "cmake",
    variables = {
        CMAKE_INSTALL_PREFIX = "$(PREFIX)",
        CMAKE_BUILD_TYPE = "Release",
        BUILD_TESTING = "OFF",
        LJA_LUADIR = "$(LUADIR)",
        LJA_LIBDIR = "$(LIBDIR)",
    },
}
