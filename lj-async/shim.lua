-- lj-async.shim: finds, loads and checks the C shim, once per Lua state.
--
-- Search order (README "Build, load, install"): $LJ_ASYNC_LIB, then
-- package.cpath, then next to the module files (the directory holding
-- lj-async/) and its build/.  Modules declare the functions they use with
-- ffi.cdef themselves; this file declares only what all of them share: the
-- error codes, lja_strerror and the version.
--
-- Every public module requires this file first, so that a Lua without
-- LuaJIT's FFI is told what it lacks, not "module 'ffi' not found".
local has_ffi, ffi = pcall(require, "ffi")
if not has_ffi or not pcall(require, "string.buffer") then
    error("lj-async needs LuaJIT 2.1 with its FFI and string.buffer (2021 or later); this is "
        .. (jit and jit.version or _VERSION) .. ": run it with luajit", 2)
end

local C_NAME = "ljasync"

local M = {
    VERSION = "0.1.0",  -- the release: CMakeLists.txt and the rockspecs say the same
    ABI = 4,            -- LJA_ABI_VERSION of csrc/ljasync.h that these modules are written for
}

ffi.cdef [[
enum {
    LJA_OK = 0,
    LJA_ETIMEDOUT = -1,
    LJA_ENOMEM = -2,
    LJA_EINVAL = -3,
    LJA_EAGAIN = -4,
    LJA_ESYS = -5,
    LJA_ECLOSED = -6,
    LJA_EBUSY = -7,
    LJA_ENOTFOUND = -8
};
const char *lja_strerror(int err);
int lja_abi_version(void);
const char *lja_version(void);
int lja_thread_poll(void);
]]

-- A state made by lj-async.vm is told the path its creator found and
-- checked; the first state finds the shim and checks its version
-- (lj-async/shim_find.lua, which the others never load).
local path, found = package.loaded["lj-async.libpath"], nil
local first = not path and require "lj-async.shim_find"
if first then path, found = first.find(C_NAME) end
local ok, lib = pcall(ffi.load, path)
if not ok then
    error("lj-async: cannot load the C shim '" .. path .. "': " .. tostring(lib), 2)
end
if first then first.check(lib, path, found, M) end

M.C, M.path = lib, path

local strerror = lib.lja_strerror
function M.strerror(rc)
    return ffi.string(strerror(rc))
end

-- What a cancelled lj-async thread raises at its cancellation points
-- (README: lj-async.thread).
M.CANCELLED = "lj-async: thread cancelled"

-- Raises once the lj-async thread running this is cancelled.  A wait that
-- returns without what it waited for calls it: the shim's waits return at
-- once in a cancelled thread.
local poll_c = lib.lja_thread_poll
function M.check_cancel()
    if poll_c() % 2 == 1 then error(M.CANCELLED, 0) end
end

-- A timeout argument as the shim takes it: nil waits forever (-1), a
-- negative number is 0; anything else raises at the caller's level.
function M.timeout_arg(timeout, level)
    if timeout == nil then return -1 end
    if type(timeout) ~= "number" or timeout ~= timeout then
        error("lj-async: the timeout must be a number of seconds or nil", level + 1)
    end
    return timeout < 0 and 0 or timeout
end

return M
