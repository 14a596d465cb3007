package = "lj-async"
version = "0.1.0-1"
source = {
    url = "git+https://github.com/lj-async/lj-async.git",
    tag = "v0.1.0",
}
description = {
    summary = "Threads, foreign-thread callbacks and cross-state communication for LuaJIT",
    detailed = [[
        OS threads and C-callable callbacks that run in their own lua_State,
        so that C libraries may call LuaJIT functions from their own threads;
        channels, long-lived states, an ltask-style scheduler and a worker
        pool. A small C11 shim (no LuaJIT linked) and FFI-first LuaJIT
        modules. Needs LuaJIT 2.1 (LuaJIT or OpenResty's luajit2).
    ]],
    homepage = "https://github.com/lj-async/lj-async",
    license = "MIT",
}
-- The shim is linked with ELF's -z nodelete (detached threads may run its
-- code after the state that loaded it has closed).
supported_platforms = { "linux" }
dependencies = { "lua == 5.1" }  -- LuaJIT 2.1: the modules refuse PUC Lua at load
external_dependencies = {
    LIBFFI = { library = "ffi" },
}
build = {
    type = "cmake",
    variables = {
        CMAKE_INSTALL_PREFIX = "$(PREFIX)",
        CMAKE_BUILD_TYPE = "Release",
        BUILD_TESTING = "OFF",  -- the shim alone: no tests, no bench library, no LuaJIT headers
        LJA_LUADIR = "$(LUADIR)",
        LJA_LIBDIR = "$(LIBDIR)",
    },
}
