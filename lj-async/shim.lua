-- lj-async.shim: finds and loads the C shim, once per Lua state.
--
-- Search order (SPEC section 0): $LJ_ASYNC_LIB, then package.cpath, then
-- next to the module files (the directory holding lj-async/) and its build/.
-- Modules declare the functions they use with ffi.cdef themselves; this file
-- declares only what all of them share: the error codes and lja_strerror.
local ffi = require "ffi"

local C_NAME = "ljasync"

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
]]

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

local function module_root()
    local src = debug.getinfo(1, "S").source
    if src:sub(1, 1) ~= "@" then return nil end
    local dir = src:sub(2):match("^(.*)[/\\]lj%-async[/\\]shim%.lua$")
    if dir == nil and src:match("^@lj%-async[/\\]shim%.lua$") then dir = "." end
    return dir
end

local function find()
    local env = os.getenv("LJ_ASYNC_LIB")
    if env and env ~= "" then return env end
    local path = package.searchpath(C_NAME, package.cpath)
    if path then return path end
    local root = module_root()
    if root then
        for _, p in ipairs { root .. "/" .. C_NAME .. ".so", root .. "/build/" .. C_NAME .. ".so" } do
            if exists(p) then return p end
        end
    end
    return nil
end

-- A state made by lj-async.vm is told the path its creator used.
local path = package.loaded["lj-async.libpath"] or find()
if not path then
    error("lj-async: cannot find the C shim '" .. C_NAME .. ".so': set LJ_ASYNC_LIB, add it to "
        .. "package.cpath, or build it with `cmake -S . -B build && cmake --build build`", 2)
end
local ok, lib = pcall(ffi.load, path)
if not ok then
    error("lj-async: cannot load the C shim '" .. path .. "': " .. tostring(lib), 2)
end

local M = { C = lib, path = path }

local strerror = lib.lja_strerror
function M.strerror(rc)
    return ffi.string(strerror(rc))
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
