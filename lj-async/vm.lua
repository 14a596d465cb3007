-- lj-async.vm: fresh lua_States for threads and callbacks.
--
-- A new state gets the standard libraries, its creator's package.path and
-- package.cpath, and the lj-async modules as precompiled bytecode in
-- package.preload (no file search, no parsing), then runs
-- require(main).boot(...) with the given strings and pointers.
--
-- The host must export the Lua C API (Debian's luajit does; a C host that
-- embeds LuaJIT links it as a shared library or with -Wl,-E).
local ffi = require "ffi"
local shim = require "lj-async.shim"

ffi.cdef [[
typedef struct lua_State lua_State;
lua_State *luaL_newstate(void);
void luaL_openlibs(lua_State *L);
void lua_close(lua_State *L);
int luaL_loadbuffer(lua_State *L, const char *buf, size_t sz, const char *name);
int lua_pcall(lua_State *L, int nargs, int nresults, int errfunc);
void lua_pushlstring(lua_State *L, const char *s, size_t len);
void lua_pushlightuserdata(lua_State *L, void *p);
void lua_pushinteger(lua_State *L, ptrdiff_t n);
const char *lua_tolstring(lua_State *L, int idx, size_t *len);
void lua_getfield(lua_State *L, int idx, const char *k);
void lua_settop(lua_State *L, int idx);

typedef void (*lja_lua_getfield_fn)(void *L, int idx, const char *k);
typedef int (*lja_lua_pcall_fn)(void *L, int nargs, int nresults, int errfunc);
typedef void (*lja_lua_settop_fn)(void *L, int idx);
typedef void (*lja_lua_close_fn)(void *L);
void lja_lua_bind(lja_lua_getfield_fn getfield, lja_lua_pcall_fn pcall,
                  lja_lua_settop_fn settop, lja_lua_close_fn close, int registry_index);
void lja_lua_run(void *L);
void lja_lua_close(void *L);
]]

local LUA_REGISTRYINDEX = -10000  -- lua.h of Lua 5.1, which LuaJIT keeps

local C = ffi.C
local type, select, pairs = type, select, pairs

local ok, err = pcall(function() return C.luaL_newstate end)
if not ok then
    error("lj-async: the host does not export the Lua C API (" .. tostring(err) .. "); "
        .. "link LuaJIT as a shared library or with -Wl,-E", 2)
end
local newstate, openlibs, lua_close = C.luaL_newstate, C.luaL_openlibs, C.lua_close
local loadbuffer, pcall_c = C.luaL_loadbuffer, C.lua_pcall
local pushlstring, pushlightuserdata, pushinteger = C.lua_pushlstring, C.lua_pushlightuserdata, C.lua_pushinteger

-- Let the shim enter and close states (it does not link LuaJIT itself).
shim.C.lja_lua_bind(C.lua_getfield, pcall_c, C.lua_settop, lua_close, LUA_REGISTRYINDEX)

local M = {}

-- Bytecode of lj-async modules, by name.  In a state made here, the prelude
-- hands over the table it was given, so a thread can make threads too.
local bytecode = package.loaded["lj-async.bytecode"] or {}
package.loaded["lj-async.bytecode"] = bytecode

local function module_bytecode(name)
    local bc = bytecode[name]
    if bc then return bc end
    local file, serr = package.searchpath(name, package.path)
    if not file then error("lj-async: cannot find module '" .. name .. "': " .. serr, 3) end
    bc = string.dump(assert(loadfile(file)))
    bytecode[name] = bc
    return bc
end

-- Compiled from source so that it cannot capture this file's locals.
local PRELUDE = string.dump(assert(load([==[
    local path, cpath, libpath, nmods = ...
    package.path, package.cpath = path, cpath
    package.loaded["lj-async.libpath"] = libpath
    local bytecode = {}
    package.loaded["lj-async.bytecode"] = bytecode
    for i = 5, 3 + 2 * nmods, 2 do
        local name, bc = select(i, ...)
        bytecode[name] = bc
        package.preload[name] = function(...) return assert(load(bc, "=" .. name))(...) end
    end
    local main = select(5 + 2 * nmods, ...)
    return require(main).boot(select(6 + 2 * nmods, ...))
]==], "=lj-async.vm prelude")))

local function push(L, v)
    if type(v) == "string" then
        pushlstring(L, v, #v)
    elseif type(v) == "number" then
        pushinteger(L, v)
    else
        pushlightuserdata(L, v)
    end
end

local errlen = ffi.new("size_t[1]")

-- A new state that has run require(main).boot(...).  What boot stores in
-- debug.getregistry()["lj-async.run"] is what shim's lja_lua_run calls.  Arguments are strings,
-- integers or pointers (which arrive as light userdata).  Raises on failure.
function M.new(main, ...)
    local L = newstate()
    if L == nil then error("lj-async: cannot create a Lua state (out of memory)", 2) end
    openlibs(L)
    loadbuffer(L, PRELUDE, #PRELUDE, "=lj-async.vm")
    push(L, package.path)
    push(L, package.cpath)
    push(L, shim.path)
    local names = {}
    for name in pairs(package.loaded) do
        if name:sub(1, 9) == "lj-async." and name ~= "lj-async.libpath" and name ~= "lj-async.bytecode" then
            names[#names + 1] = name
        end
    end
    if not package.loaded[main] then names[#names + 1] = main end
    push(L, #names)
    for _, name in ipairs(names) do
        push(L, name)
        push(L, module_bytecode(name))
    end
    push(L, main)
    local nargs = select("#", ...)
    for i = 1, nargs do push(L, (select(i, ...))) end
    if pcall_c(L, 5 + 2 * #names + nargs, 0, 0) ~= 0 then
        local msg = ffi.string(C.lua_tolstring(L, -1, errlen), errlen[0])
        lua_close(L)
        error("lj-async: cannot set up a new state: " .. msg, 2)
    end
    return L
end

M.close = lua_close

return M
