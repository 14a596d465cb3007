-- lj-async.shared: tables that every thread and state sees, as effil's
-- shared tables (README: lj-async.shared).
--
-- The contents of all shared tables live in one process-wide lua_State, the
-- store, driven from here through the Lua C API under the shim's locks
-- (csrc/shared.c): no Lua code ever runs in it.  The store's stack holds
-- two tables for good: [1] the contents of each table by its slot, [2] its
-- metatable.  In the contents, numbers, strings and booleans are
-- themselves; an lj-async object (a shared table too) is a light userdata
-- holding a reference; any other value that crosses (a function, an int64,
-- a pointer) is a box, a table { message, references... } of what
-- lj-async.transfer encoded.  References are released only with the store
-- unlocked: releasing one may free a state whose closing runs Lua code.
--
-- A table whose last reference goes is put on the shim's dead list; the
-- next caller that leaves the store (or the handle's finalizer) clears its
-- contents and releases what they held.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local bit = require "bit"
local object = require "lj-async.object"
local transfer = require "lj-async.transfer"
require "lj-async.vm"   -- binds the Lua C API and declares lua_State

ffi.cdef [[
typedef struct lja_shared lja_shared;
void *lja_shared_store(void *L);
lja_shared *lja_shared_new(void);
lja_shared *lja_shared_global(void);
int lja_shared_enter(lja_shared *t);
int lja_shared_leave(lja_shared *t);
void lja_shared_lock(lja_shared *t);
void lja_shared_unlock(lja_shared *t);
void lja_shared_set_flags(lja_shared *t, int flags);
int lja_shared_store_lock(void);
void lja_shared_store_unlock(void);
lja_shared *lja_shared_dead_pop(int *slot);
void lja_shared_free(lja_shared *t);
uint64_t lja_object_id(void *obj);
void *lja_object_get(uint64_t id, int kind);
void lja_object_retain(void *obj);
void lja_object_release(void *obj);

void lua_createtable(lua_State *L, int narr, int nrec);
void lua_rawgeti(lua_State *L, int idx, int n);
void lua_rawseti(lua_State *L, int idx, int n);
void lua_rawget(lua_State *L, int idx);
void lua_rawset(lua_State *L, int idx);
void lua_pushnumber(lua_State *L, double n);
void lua_pushboolean(lua_State *L, int b);
void lua_pushnil(lua_State *L);
void lua_pushlightuserdata(lua_State *L, void *p);
int lua_type(lua_State *L, int idx);
double lua_tonumber(lua_State *L, int idx);
void *lua_touserdata(lua_State *L, int idx);
size_t lua_objlen(lua_State *L, int idx);
int lua_next(lua_State *L, int idx);
]]

-- lj-async's own type (not the shim's): a handle, see P below.
ffi.cdef "struct lj_async_shared_handle { void *__lj_async; };"

local C, API = shim.C, ffi.C
local type, error, pcall, tostring, next = type, error, pcall, tostring, next
local istype, ffi_string = ffi.istype, ffi.string
local band, bor, rshift = bit.band, bit.bor, bit.rshift

local enter, leave, retain, release = C.lja_shared_enter, C.lja_shared_leave, C.lja_object_retain, C.lja_object_release
local rawgeti, rawseti, rawget_, rawset_ = API.lua_rawgeti, API.lua_rawseti, API.lua_rawget, API.lua_rawset
local pushnumber, pushlstring, pushboolean, pushnil = API.lua_pushnumber, API.lua_pushlstring, API.lua_pushboolean, API.lua_pushnil
local pushlight, lua_type, tonumber_, tolstring = API.lua_pushlightuserdata, API.lua_type, API.lua_tonumber, API.lua_tolstring
local toboolean, touserdata, settop = API.lua_toboolean, API.lua_touserdata, API.lua_settop

local TNIL, TBOOLEAN, TLIGHT, TNUMBER, TSTRING, TTABLE = 0, 1, 2, 3, 4, 5
-- Stack of the store: contents by slot, metatables by slot, then the
-- contents being worked on.
local CONTENTS, METAS, T = 1, 2, 3
-- Flags of a table (lja_shared_enter): it has a metatable; it has held
-- references (so a write first looks at the value it replaces).
local META, HOLDS = 1, 2

local M = {}
M._VERSION = shim.VERSION

-- The store: made by the first state that needs it.
local L = C.lja_shared_store(nil)
if L == nil then
    local mine = API.luaL_newstate()
    if mine == nil then error("lj-async: cannot make the shared tables' store (out of memory)", 2) end
    API.lua_createtable(mine, 0, 0)
    API.lua_createtable(mine, 0, 0)
    L = C.lja_shared_store(mine)
    if L ~= mine then API.lua_close(mine) end
end
L = ffi.cast("lua_State *", L)

local len_out = ffi.new("size_t[1]")
local slot_out = ffi.new("int[1]")

------------------------------------------------------------------------------
-- Dead tables.

-- References that the store held, collected under its lock, released after.
local function collect_refs(refs, idx)
    local ty = lua_type(L, idx)
    if ty == TLIGHT then
        refs[#refs + 1] = touserdata(L, idx)
    elseif ty == TTABLE then   -- a box: its references from [2]
        local i = 2
        while true do
            rawgeti(L, idx, i)
            if lua_type(L, -1) ~= TLIGHT then break end
            refs[#refs + 1] = touserdata(L, -1)
            settop(L, -2)
            i = i + 1
        end
        settop(L, -2)
    end
end

local function release_all(refs)
    for i = 1, #refs do release(refs[i]) end
end

-- Clears the contents of every dead table and releases what they held,
-- which may kill more tables: until none is left.
-- A finalizer may run while this thread holds the store's lock (at an
-- allocation of ours, or in a state that a collected state handle closes):
-- it leaves the dead tables to the holder, whose leave reports them.
local function sweep()
    repeat
        local refs = {}
        if C.lja_shared_store_lock() == 0 then return end
        while true do
            local t = C.lja_shared_dead_pop(slot_out)
            if t == nil then break end
            local slot = slot_out[0]
            rawgeti(L, CONTENTS, slot)
            if lua_type(L, T) == TTABLE then
                pushnil(L)
                while API.lua_next(L, T) ~= 0 do
                    collect_refs(refs, -2)
                    collect_refs(refs, -1)
                    settop(L, -2)
                end
            end
            settop(L, 2)
            pushnil(L)
            rawseti(L, CONTENTS, slot)
            rawgeti(L, METAS, slot)
            collect_refs(refs, T)
            settop(L, 2)
            pushnil(L)
            rawseti(L, METAS, slot)
            C.lja_shared_free(t)
        end
        C.lja_shared_store_unlock()
        release_all(refs)
    until #refs == 0
end

-- A handle is a struct holding the table's pointer (not the pointer
-- itself, which LuaJIT would index as an array): its one field's name is
-- the one key that shared tables do not have.
local function P(t)
    return t.__lj_async
end

local function finalize(t)
    release(P(t))
    sweep()
end

-- Leaves the store; releases the references a write replaced.
local function done(t, refs)
    settop(L, 2)
    local dead = leave(P(t))
    if refs then release_all(refs) end
    if dead ~= 0 then sweep() end
end

------------------------------------------------------------------------------
-- Handles.

local mt = {}
local ct = ffi.metatype("struct lj_async_shared_handle", mt)
local KIND = C.LJA_KIND_SHARED

-- A handle adopting a reference to p (NULL -> nil).
local function wrap(p)
    if p == nil then return nil end
    return ffi.gc(ct(p), finalize)
end
object.add_kind(KIND, wrap, ct)

local function id(t)
    return tonumber(C.lja_object_id(P(t)))
end

transfer.register(ct, {
    name = "shared",
    module = "lj-async.shared",
    export = function(t)
        retain(P(t))
        return id(t), ffi.cast("void *", P(t))
    end,
    import = function(n)
        local p = C.lja_object_get(n, KIND)
        if p == nil then error(("lj-async: shared table %d is gone"):format(n), 0) end
        return wrap(p), p
    end,
    release = release,
})

-- The object pointer of a handle of any kind.
local function ptr(v)
    if istype(ct, v) then return P(v) end
    return v
end

-- Gives t its contents in the store unless it has them; every handle's
-- table has them, so that reads and writes need not check.
local function ensure(t)
    local slot = rshift(enter(P(t)), 2)
    rawgeti(L, CONTENTS, slot)
    if lua_type(L, T) ~= TTABLE then
        API.lua_createtable(L, 0, 0)
        rawseti(L, CONTENTS, slot)
    end
    done(t, nil)
    return t
end

local function new_table()
    local t = wrap(C.lja_shared_new())
    if t == nil then error("lj-async: cannot make a shared table (out of memory)", 0) end
    return ensure(t)
end

local function where(path, k)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") then return path .. "." .. k end
    if type(k) == "string" then return path .. ("[%q]"):format(k) end
    return path .. "[" .. tostring(k) .. "]"
end

local function check(t, fname, level)
    if not istype(ct, t) then
        error(("lj-async: shared.%s: argument 1 must be a shared table, got %s"):format(fname, type(t)), level + 1)
    end
end

-- Keys: how each kind is pushed onto the store.
local K_INT, K_NUM, K_STR, K_BOOL, K_OBJ = 1, 2, 3, 4, 5

-- A key's kind, or nil and why it cannot be one.
local function key_kind(k)
    local tk = type(k)
    if tk == "string" then return K_STR end
    if tk == "number" then
        if k ~= k then return nil, "NaN as a key" end
        if k % 1 == 0 and k >= -2147483648 and k <= 2147483647 then return K_INT end
        return K_NUM
    end
    if tk == "boolean" then return K_BOOL end
    if tk == "cdata" and object.is_object(k) then return K_OBJ end
    if tk == "nil" then return nil, "nil as a key" end
    if tk == "table" then return nil, "a plain table as a key (use a shared table)" end
    return nil, "a " .. (tk == "thread" and "coroutine" or tk) .. " as a key"
end

local function key_error(fname, why, level)
    error(("lj-async: shared%s: cannot use %s"):format(fname, why), level + 1)
end

local function push_key(k, kk)
    if kk == K_STR then pushlstring(L, k, #k)
    elseif kk == K_BOOL then pushboolean(L, k and 1 or 0)
    elseif kk == K_OBJ then pushlight(L, ptr(k))
    else pushnumber(L, k) end
end

-- Values: V_PLAIN (number, string, boolean, nil: themselves), V_OBJ (a
-- handle, stored as a reference), V_BOX (a message and its references).
local V_PLAIN, V_OBJ, V_BOX = 0, 1, 2
local PLAIN = { number = true, string = true, boolean = true, ["nil"] = true }

local from_plain

local function cannot(what, path)
    error("lj-async: shared table: cannot store " .. what .. " (" .. path .. ")", 0)
end

-- How a value that is neither plain nor a table is stored: kind, payload,
-- references; or nil and what it is, with "@" where its path goes.
local function prepare(v)
    local tv = type(v)
    if tv == "cdata" and (istype(ct, v) or object.is_object(v)) then return V_OBJ, v end
    if tv == "userdata" or tv == "thread" then
        return nil, (tv == "thread" and "a coroutine" or "a userdata") .. " (@)"
    end
    local ok, blob = pcall(transfer.encode_string, 1, v)
    if not ok then
        local what = tostring(blob):gsub("^lj%-async: cannot send ", "")
        local n
        what, n = what:gsub("%(argument 1", "(@", 1)
        return nil, n == 1 and what or what .. " (@)"
    end
    return V_BOX, blob, transfer.take_exported()
end

local function refused(what, path)
    error("lj-async: shared table: cannot store " .. what:gsub("%(@", "(" .. path:gsub("%%", "%%%%")), 0)
end

-- Pushes a prepared value; its references are the store's from now on.
local function push_value(vk, v, refs)
    if vk == V_OBJ then
        local p = ptr(v)
        retain(p)
        pushlight(L, p)
    elseif vk == V_BOX then
        API.lua_createtable(L, refs and #refs + 1 or 1, 0)
        pushlstring(L, v, #v)
        rawseti(L, -2, 1)
        if refs then
            for i = 1, #refs do
                pushlight(L, refs[i])
                rawseti(L, -2, i + 1)
            end
        end
    else
        local tv = type(v)
        if tv == "number" then pushnumber(L, v)
        elseif tv == "string" then pushlstring(L, v, #v)
        elseif tv == "boolean" then pushboolean(L, v and 1 or 0)
        else pushnil(L) end
    end
end

-- Reads the store's value at idx (under the lock): a plain value, or a
-- pointer (V_OBJ) or box (V_BOX) with references taken for the caller.
local function read(idx)
    local ty = lua_type(L, idx)
    if ty == TNUMBER then return tonumber_(L, idx) end
    if ty == TSTRING then
        local p = tolstring(L, idx, len_out)
        return ffi_string(p, len_out[0])
    end
    if ty == TNIL then return nil end
    if ty == TBOOLEAN then return toboolean(L, idx) ~= 0 end
    if ty == TLIGHT then
        local p = touserdata(L, idx)
        retain(p)
        return p, V_OBJ
    end
    rawgeti(L, idx, 1)
    local p = tolstring(L, -1, len_out)
    local box = { ffi_string(p, len_out[0]) }
    settop(L, -2)
    local refs = {}
    collect_refs(refs, idx)
    for i = 1, #refs do
        retain(refs[i])
        box[i + 1] = refs[i]
    end
    return box, V_BOX
end

-- Functions without upvalues decoded from a box, by message: a metamethod
-- called again is not loaded again.
local fn_cache, fn_cached = {}, 0

-- The value of a special read (after the store is unlocked).
local function finish(v, special)
    if special == V_OBJ then return object.wrap_any(v) end
    local blob = v[1]
    local f = fn_cache[blob]
    if f then
        for i = 2, #v do release(v[i]) end
        return f
    end
    local ok, n, x = pcall(transfer.decode, blob)
    for i = 2, #v do release(v[i]) end
    if not ok then error(n, 0) end
    if type(x) == "function" and not debug.getupvalue(x, 1) then
        if fn_cached >= 256 then fn_cache, fn_cached = {}, 0 end
        fn_cache[blob], fn_cached = x, fn_cached + 1
    end
    return x
end

-- The contents of t onto the store's stack at T (under the lock).
local function contents(slot)
    rawgeti(L, CONTENTS, slot)
end

-- t[k] without metamethods, for a key of kind kk; also returns the flags.
local function get(t, k, kk)
    local r = enter(P(t))
    contents(rshift(r, 2))
    if kk == K_INT then
        rawgeti(L, T, k)
    else
        push_key(k, kk)
        rawget_(L, T)
    end
    local v, special = read(-1)
    done(t, nil)
    if special then v = finish(v, special) end
    return v, band(r, META)
end

-- Whether t has key k (reads nothing: cannot raise).
local function has(t, k, kk)
    local r = enter(P(t))
    contents(rshift(r, 2))
    push_key(k, kk)
    rawget_(L, T)
    local present = lua_type(L, -1) ~= TNIL
    done(t, nil)
    return present
end

-- t[k] = v without metamethods: v prepared (vk, refs).  With `meta`, a
-- table that has a metatable is left unchanged and true returned.
local function set(t, k, kk, vk, v, refs, meta)
    local r = enter(P(t))
    if meta and band(r, META) ~= 0 then
        done(t, nil)
        return true
    end
    local flags = band(r, 3)
    contents(rshift(r, 2))
    local old
    if band(flags, HOLDS) ~= 0 or kk == K_OBJ then
        push_key(k, kk)
        rawget_(L, T)
        local ty = lua_type(L, -1)
        if ty == TLIGHT or ty == TTABLE or (kk == K_OBJ and ty ~= TNIL and v == nil) then
            old = {}
            collect_refs(old, -1)
            if kk == K_OBJ and v == nil then old[#old + 1] = ptr(k) end
        end
        if kk == K_OBJ and ty == TNIL and v ~= nil then retain(ptr(k)) end
        settop(L, T)
    end
    if kk == K_INT then
        push_value(vk, v, refs)
        rawseti(L, T, k)
    else
        push_key(k, kk)
        push_value(vk, v, refs)
        rawset_(L, T)
    end
    if (vk ~= V_PLAIN or kk == K_OBJ) and band(flags, HOLDS) == 0 then
        C.lja_shared_set_flags(P(t), bor(flags, HOLDS))
    end
    done(t, old)
    return false
end

-- A value prepared for storing: raises at the caller of the public
-- function (`level` counts from there) when it cannot cross.
local function prepared(v, k, level)
    local tv = type(v)
    if PLAIN[tv] then return V_PLAIN, v end
    if tv == "table" then
        local ok, x = pcall(from_plain, v, where("t", k))
        if not ok then error(x, level + 1) end
        return V_OBJ, x
    end
    local vk, x, refs = prepare(v)
    if not vk then
        local ok, err = pcall(refused, x, where("t", k))
        error(err, level + 1)
    end
    return vk, x, refs
end

-- A new shared table with the contents of plain table `root` (named
-- `path` in errors), nested tables copied in as shared tables.  Depth
-- first with a stack of its own, so any depth goes: frame d is the table
-- srcs[d], its copy dsts[d], and the key being copied, keys[d].
function from_plain(root, path)
    local top = new_table()
    local srcs, dsts, keys, seen = { root }, { top }, {}, { [root] = true }
    local function path_to(d, k)   -- for errors only
        local p = path
        for i = 1, d - 1 do p = where(p, keys[i]) end
        return k == nil and p or where(p, k)
    end
    local d = 1
    while d > 0 do
        local src = srcs[d]
        local k, v = next(src, keys[d])
        if k == nil then
            seen[src], srcs[d], dsts[d], keys[d] = nil, nil, nil, nil
            d = d - 1
        else
            keys[d] = k
            local kk, why = key_kind(k)
            if not kk then error(("lj-async: shared table: cannot use %s (in %s)"):format(why, path_to(d)), 0) end
            local tv = type(v)
            if PLAIN[tv] then
                set(dsts[d], k, kk, V_PLAIN, v)
            elseif tv == "table" then
                if seen[v] then cannot("a table with a cycle", path_to(d, k)) end
                seen[v] = true
                local child = new_table()
                set(dsts[d], k, kk, V_OBJ, child)
                d = d + 1
                srcs[d], dsts[d], keys[d] = v, child, nil
            else
                local vk, x, refs = prepare(v)
                if not vk then refused(x, path_to(d, k)) end
                set(dsts[d], k, kk, vk, x, refs)
            end
        end
    end
    return top
end

------------------------------------------------------------------------------
-- Metatables: a shared table's, read back as a handle.

local function metatable_of(t)
    local r = enter(P(t))
    local p = nil
    if band(r, META) ~= 0 then
        rawgeti(L, METAS, rshift(r, 2))
        p = touserdata(L, -1)
        retain(p)
    end
    done(t, nil)
    return p ~= nil and wrap(p) or nil
end

-- The metamethod `name` of t, or nil.
local function metamethod(t, name)
    local m = metatable_of(t)
    if m == nil then return nil end
    return (get(m, name, K_STR))
end

local index_of, assign

-- t[k] with __index.
function index_of(t, k, level)
    local kk, why = key_kind(k)
    if not kk then key_error(" table", why, level + 1) end
    local v, meta = get(t, k, kk)
    if v ~= nil or meta == 0 then return v end
    local h = metamethod(t, "__index")
    if h == nil then return nil end
    if type(h) == "function" then return (h(t, k)) end
    if istype(ct, h) then
        local v2 = index_of(h, k, level + 1)
        return v2
    end
    return nil
end

-- t[k] = v with __newindex.
function assign(t, k, v, level)
    local kk, why = key_kind(k)
    if not kk then key_error(" table", why, level + 1) end
    local vk, x, refs = prepared(v, k, level + 1)
    if not set(t, k, kk, vk, x, refs, true) then return end
    -- t has a metatable: __newindex applies when k is absent
    local h = metamethod(t, "__newindex")
    if h ~= nil then
        C.lja_shared_lock(P(t))
        if not has(t, k, kk) then
            C.lja_shared_unlock(P(t))
            transfer.release(refs)
            if type(h) == "function" then return h(t, k, v) end
            if istype(ct, h) then assign(h, k, v, level + 1) end
            return
        end
        set(t, k, kk, vk, x, refs)
        C.lja_shared_unlock(P(t))
        return
    end
    set(t, k, kk, vk, x, refs)
end

-- Not tail calls: error levels count these frames.
mt.__index = function(t, k)
    local v = index_of(t, k, 2)
    return v
end
mt.__newindex = function(t, k, v)
    assign(t, k, v, 2)
end

local function length(t)
    local r = enter(P(t))
    contents(rshift(r, 2))
    local n = tonumber(API.lua_objlen(L, T))
    done(t, nil)
    return n
end

mt.__len = function(t)
    local h = metamethod(t, "__len")
    if h then return h(t) end
    return length(t)
end

mt.__call = function(t, ...)
    local h = metamethod(t, "__call")
    if h == nil then error("lj-async: attempt to call a shared table (its metatable has no __call)", 2) end
    return h(t, ...)
end

mt.__tostring = function(t)
    local h = metamethod(t, "__tostring")
    if h then return h(t) end
    return "lj-async.shared: " .. id(t)
end

local function binary(name)
    return function(a, b)
        local h = istype(ct, a) and metamethod(a, name)
        if not h and istype(ct, b) then h = metamethod(b, name) end
        if not h then
            error(("lj-async: attempt to perform %s on a shared table (its metatable has no %s)"):format(name, name), 2)
        end
        return h(a, b)
    end
end

for _, name in ipairs { "__add", "__sub", "__mul", "__div", "__mod", "__pow", "__concat", "__lt", "__le" } do
    mt[name] = binary(name)
end

mt.__unm = function(t)
    local h = metamethod(t, "__unm")
    if not h then error("lj-async: attempt to perform __unm on a shared table (its metatable has no __unm)", 2) end
    return h(t, t)
end

-- Two handles of one table are equal; others by __eq of a shared metatable.
mt.__eq = function(a, b)
    if not (istype(ct, a) and istype(ct, b)) then return false end
    if P(a) == P(b) then return true end
    local h = metamethod(a, "__eq") or metamethod(b, "__eq")
    return h ~= nil and not not h(a, b)
end

------------------------------------------------------------------------------
-- The module.

function M.table(init)
    if init == nil then return new_table() end
    if type(init) ~= "table" then
        error("lj-async: shared.table: the initial contents must be a plain table or nil, got " .. type(init), 2)
    end
    local ok, t = pcall(from_plain, init, "init")
    if not ok then error(t, 2) end
    return t
end

function M.rawget(t, k)
    check(t, "rawget", 2)
    local kk, why = key_kind(k)
    if not kk then key_error(".rawget", why, 2) end
    return (get(t, k, kk))
end

function M.rawset(t, k, v)
    check(t, "rawset", 2)
    local kk, why = key_kind(k)
    if not kk then key_error(".rawset", why, 2) end
    local vk, x, refs = prepared(v, k, 2)
    set(t, k, kk, vk, x, refs)
    return t
end

function M.setmetatable(t, m)
    check(t, "setmetatable", 2)
    if m ~= nil and not istype(ct, m) then
        if type(m) ~= "table" then
            error("lj-async: shared.setmetatable: argument 2 must be a table, a shared table or nil, got " .. type(m), 2)
        end
        local ok, x = pcall(from_plain, m, "metatable")
        if not ok then error(x, 2) end
        m = x
    end
    local r = enter(P(t))
    local slot, flags = rshift(r, 2), band(r, 3)
    local old = {}
    rawgeti(L, METAS, slot)
    collect_refs(old, T)
    settop(L, 2)
    if m ~= nil then
        retain(P(m))
        pushlight(L, P(m))
        flags = bor(flags, META)
    else
        pushnil(L)
        flags = band(flags, HOLDS)
    end
    rawseti(L, METAS, slot)
    C.lja_shared_set_flags(P(t), flags)
    done(t, old)
    return t
end

function M.getmetatable(t)
    check(t, "getmetatable", 2)
    return metatable_of(t)
end

-- The entries of t: keys and values, read under one lock.
local function snapshot(t)
    local ks, vs, specials = {}, {}, nil
    local r = enter(P(t))
    local n = 0
    contents(rshift(r, 2))
    pushnil(L)
    while API.lua_next(L, T) ~= 0 do
        n = n + 1
        local k, ksp = read(-2)
        local v, vsp = read(-1)
        ks[n], vs[n] = k, v
        if ksp or vsp then
            specials = specials or {}
            specials[#specials + 1] = n
            specials[#specials + 1] = ksp or false
            specials[#specials + 1] = vsp or false
        end
        settop(L, -2)
    end
    done(t, nil)
    if specials then
        for i = 1, #specials, 3 do
            local j = specials[i]
            if specials[i + 1] then ks[j] = finish(ks[j], specials[i + 1]) end
            if specials[i + 2] then vs[j] = finish(vs[j], specials[i + 2]) end
        end
    end
    return ks, vs, n
end

-- pairs and ipairs give way to __pairs and __ipairs, as effil's do.
function M.pairs(t)
    check(t, "pairs", 2)
    local h = metamethod(t, "__pairs")
    if h then return h(t) end
    local ks, vs, n = snapshot(t)
    local i = 0
    return function()
        i = i + 1
        if i <= n then return ks[i], vs[i] end
    end, t, nil
end

-- t[1], t[2], ... up to the first nil, of one snapshot.
function M.ipairs(t)
    check(t, "ipairs", 2)
    local h = metamethod(t, "__ipairs")
    if h then return h(t) end
    local ks, vs, n = snapshot(t)
    local list = {}
    for j = 1, n do
        if type(ks[j]) == "number" then list[ks[j]] = vs[j] end
    end
    return function(_, i)
        i = i + 1
        local v = list[i]
        if v ~= nil then return i, v end
    end, t, 0
end

function M.length(t)
    check(t, "length", 2)
    return length(t)
end

-- The number of entries (effil.size).
function M.size(t)
    check(t, "size", 2)
    local r = enter(P(t))
    contents(rshift(r, 2))
    local n = 0
    pushnil(L)
    while API.lua_next(L, T) ~= 0 do
        n = n + 1
        settop(L, -2)
    end
    done(t, nil)
    return n
end

-- The table's process-wide id, as obj:id() of other objects.
function M.id(t)
    check(t, "id", 2)
    return id(t)
end

-- "shared.table" for a shared table, else type(v) (effil.type).
function M.type(v)
    if istype(ct, v) then return "shared.table" end
    return type(v)
end

function M.update(t, k, f, ...)
    check(t, "update", 2)
    local kk, why = key_kind(k)
    if not kk then key_error(".update", why, 2) end
    if type(f) ~= "function" and not (type(f) == "table" or type(f) == "cdata") then
        error("lj-async: shared.update: argument 3 must be a function, got " .. type(f), 2)
    end
    C.lja_shared_lock(P(t))
    local ok, v = pcall(get, t, k, kk)
    if ok then ok, v = pcall(f, v, ...) end
    if not ok then   -- f's error (or a box that failed to load) as raised
        C.lja_shared_unlock(P(t))
        error(v, 0)
    end
    local ok2, vk, x, refs = pcall(prepared, v, k, 0)
    if ok2 then set(t, k, kk, vk, x, refs) end
    C.lja_shared_unlock(P(t))
    if not ok2 then error(vk, 2) end
    return v
end

-- Shared tables to plain ones, each once (cycles stay cycles), with a
-- work list of its own: any depth goes.
local function dump(root)
    local memo, work, n = {}, {}, 0
    local function plain(t)
        local i = id(t)
        local out = memo[i]
        if not out then
            out = {}
            memo[i] = out
            work[n + 1], work[n + 2], n = t, out, n + 2
        end
        return out
    end
    local top = plain(root)
    while n > 0 do
        local t, out = work[n - 1], work[n]
        work[n - 1], work[n], n = nil, nil, n - 2
        local ks, vs, count = snapshot(t)
        for i = 1, count do
            local k, v = ks[i], vs[i]
            if istype(ct, k) then k = plain(k) end
            if istype(ct, v) then v = plain(v) end
            out[k] = v
        end
    end
    return top
end

function M.dump(t)
    check(t, "dump", 2)
    return dump(t)
end

M.G = ensure(wrap(C.lja_shared_global()))

return M
