-- lj-async.vm: fresh lua_States for threads and callbacks.
--
-- The shim makes states (csrc/lua.c) through the Lua C API that this module
-- binds once.  A new state gets the standard libraries, its creator's
-- package.path and package.cpath, the lj-async modules as precompiled
-- bytecode in package.preload (no file search, no parsing), and then runs a
-- boot chunk with string arguments.
--
-- The host must export the Lua C API (Debian's luajit does; a C host that
-- embeds LuaJIT links it as a shared library or with -Wl,-E).
local ffi = require "ffi"
local shim = require "lj-async.shim"

ffi.cdef [[
typedef struct lua_State lua_State;
lua_State *luaL_newstate(void);
void luaL_openlibs(lua_State *L);
int luaL_loadbuffer(lua_State *L, const char *buf, size_t sz, const char *name);
void lua_pushlstring(lua_State *L, const char *s, size_t len);
int lua_pcall(lua_State *L, int nargs, int nresults, int errfunc);
const char *lua_tolstring(lua_State *L, int idx, size_t *len);
void lua_getfield(lua_State *L, int idx, const char *k);
void lua_settop(lua_State *L, int idx);
int lua_toboolean(lua_State *L, int idx);
void lua_close(lua_State *L);
int lua_sethook(lua_State *L, void (*hook)(lua_State *L, void *ar), int mask, int count);
int lua_error(lua_State *L);
ptrdiff_t lua_tointeger(lua_State *L, int idx);
int lua_getinfo(lua_State *L, const char *what, void *ar);

typedef struct lja_lua_api {
    void *(*newstate)(void);
    void (*openlibs)(void *L);
    int (*loadbuffer)(void *L, const char *buf, size_t len, const char *name);
    void (*pushlstring)(void *L, const char *s, size_t len);
    int (*pcall)(void *L, int nargs, int nresults, int errfunc);
    const char *(*tolstring)(void *L, int idx, size_t *len);
    void (*getfield)(void *L, int idx, const char *k);
    void (*settop)(void *L, int idx);
    int (*toboolean)(void *L, int idx);
    void (*close)(void *L);
    int (*sethook)(void *L, void (*hook)(void *L, void *ar), int mask, int count);
    int (*error)(void *L);
    ptrdiff_t (*tointeger)(void *L, int idx);
    int registry_index;
    int (*getinfo)(void *L, const char *what, void *ar);
} lja_lua_api;
void lja_lua_bind(const lja_lua_api *api);
void *lja_lua_new(const char *chunk, size_t len, int nargs, const char *const *args,
                  const size_t *lens, char **err);
void lja_lua_close(void *L);
void lja_free(void *p);
]]

local C, S = ffi.C, shim.C
local type, select, pairs, tostring = type, select, pairs, tostring

local LUA_REGISTRYINDEX = -10000  -- lua.h of Lua 5.1, which LuaJIT keeps

local ok, err = pcall(function() return C.luaL_newstate end)
if not ok then
    error("lj-async: the host does not export the Lua C API (" .. tostring(err) .. "); "
        .. "link LuaJIT as a shared library or with -Wl,-E", 2)
end
S.lja_lua_bind(ffi.new("lja_lua_api", {
    C.luaL_newstate, C.luaL_openlibs, C.luaL_loadbuffer, C.lua_pushlstring, C.lua_pcall,
    C.lua_tolstring, C.lua_getfield, C.lua_settop, C.lua_toboolean, C.lua_close,
    ffi.cast("int (*)(void *, void (*)(void *, void *), int, int)", C.lua_sethook), C.lua_error,
    C.lua_tointeger, LUA_REGISTRYINDEX, C.lua_getinfo,
}))

local M = {}

M.LUA_REGISTRYINDEX = LUA_REGISTRYINDEX

-- Bytecode of lj-async modules, by name.  In a state made here, the prelude
-- hands over the table it was given, so a thread can make threads too.
local bytecode = package.loaded["lj-async.bytecode"] or {}
package.loaded["lj-async.bytecode"] = bytecode

-- Other modules that new states get preloaded (name -> file or true).
local shipped = package.loaded["lj-async.shipped"] or {}
package.loaded["lj-async.shipped"] = shipped

-- Ships a module to every state made from now on; `file` where
-- package.path would not find it.
function M.ship(name, file)
    shipped[name] = shipped[name] or file or true
end

local function module_bytecode(name)
    local bc = bytecode[name]
    if bc then return bc end
    local file, serr = shipped[name], nil
    if type(file) ~= "string" then file, serr = package.searchpath(name, package.path) end
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
    local shipped = {}
    package.loaded["lj-async.shipped"] = shipped
    nmods = tonumber(nmods)
    for i = 5, 3 + 2 * nmods, 2 do
        local name, bc = select(i, ...)
        bytecode[name] = bc
        if name:sub(1, 9) ~= "lj-async." then shipped[name] = true end
        package.preload[name] = function(...) return assert(load(bc, "=" .. name))(...) end
    end
    local boot = select(5 + 2 * nmods, ...)
    return assert(load(boot, "=lj-async boot"))(select(6 + 2 * nmods, ...))
]==], "=lj-async.vm prelude")))

-- Compile boot code once: source in, bytecode out (no upvalues possible).
function M.compile(source, name)
    return string.dump(assert(load(source, "=" .. name)))
end

-- What a new state does not get of the loaded lj-async.* entries: the
-- prelude's own, and the shim's search (it is told the shim's path).
local NOT_SHIPPED = { ["lj-async.libpath"] = true, ["lj-async.bytecode"] = true, ["lj-async.shipped"] = true,
    ["lj-async.shim_find"] = true }

-- The prelude's arguments for a state whose boot chunk is `boot`.
-- A state ships what it was shipped (its bytecode table), so that the
-- states that a thread makes get what the thread's state got.
function M.args(boot, ...)
    local args = { package.path, package.cpath, shim.path, 0 }
    local function add(name)
        if name:sub(1, 9) == "lj-async." and not NOT_SHIPPED[name] and not shipped[name] then
            args[#args + 1] = name
            args[#args + 1] = module_bytecode(name)
        end
    end
    for name in pairs(package.loaded) do add(name) end
    for name in pairs(bytecode) do
        if not package.loaded[name] then add(name) end
    end
    for name in pairs(shipped) do
        args[#args + 1] = name
        args[#args + 1] = module_bytecode(name)
    end
    args[4] = tostring((#args - 4) / 2)
    args[#args + 1] = boot
    for i = 1, select("#", ...) do args[#args + 1] = (select(i, ...)) end
    return PRELUDE, args
end

-- Argument arrays for the shim: keeps the Lua strings alive with them.
function M.c_strings(args)
    local n = #args
    local ptrs, lens = ffi.new("const char *[?]", n + 1), ffi.new("size_t[?]", n + 1)
    for i = 1, n do
        ptrs[i - 1], lens[i - 1] = args[i], #args[i]
    end
    return n, ptrs, lens
end

-- A pointer as a string argument, and back (whole, not through a double).
function M.pointer_arg(p)
    return ffi.string(ffi.new("void *[1]", ffi.cast("void *", p)), ffi.sizeof("void *"))
end

function M.pointer_from_arg(s)
    local cell = ffi.new("void *[1]")
    ffi.copy(cell, s, ffi.sizeof("void *"))
    return cell[0]
end

local err_out = ffi.new("char *[1]")

-- A new state that has run the boot chunk with the given strings.
function M.new(boot, ...)
    local chunk, args = M.args(boot, ...)
    local n, ptrs, lens = M.c_strings(args)
    local L = S.lja_lua_new(chunk, #chunk, n, ptrs, lens, err_out)
    if L == nil then
        local msg = err_out[0] ~= nil and ffi.string(err_out[0]) or "unknown error"
        S.lja_free(err_out[0])
        error("lj-async: cannot set up a new state: " .. msg, 2)
    end
    return L
end

M.close = S.lja_lua_close

return M
