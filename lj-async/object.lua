-- lj-async.object: what every lj-async object shares (csrc/object.c).
--
-- A handle is a cdata pointer of the object's own type that holds one
-- reference, released when the handle is collected.  Handles cross states
-- through lj-async.transfer as live objects: the message holds a reference
-- until the receiver has a handle of its own.
local ffi = require "ffi"
local shim = require "lj-async.shim"
local transfer = require "lj-async.transfer"

ffi.cdef [[
enum {
    LJA_KIND_MUTEX = 1,
    LJA_KIND_COND = 2,
    LJA_KIND_SEMAPHORE = 3,
    LJA_KIND_ATOMIC = 4,
    LJA_KIND_CHANNEL = 5,
    LJA_KIND_STATE = 6,
    LJA_KIND_POOL = 7,
    LJA_KIND_SHARED = 8
};
uint64_t lja_object_id(void *obj);
int lja_object_kind(void *obj);
void *lja_object_get(uint64_t id, int kind);
void lja_object_retain(void *obj);
void lja_object_release(void *obj);
int lja_object_set_name(void *obj, const char *name);
const char *lja_object_name(void *obj);
void *lja_object_find(const char *name, int kind);
]]

local C = shim.C
local istype = ffi.istype
local release = C.lja_object_release

local M = {}

function M.id(obj)
    return tonumber(C.lja_object_id(obj))
end

-- Declares a kind of object: `struct_name` gets `methods` as its metatype,
-- and crosses states as a live handle.  Returns wrap(ptr) -> handle, which
-- adopts a new reference (NULL -> nil).
-- The methods a handle's metatype offers: each checks that self is a handle
-- of this kind before C sees it, since `obj.method()` would hand the shim a
-- NULL pointer.  Made on first use, so methods added after define are
-- checked too; istype is a type guard the JIT compiles away.
local function checked(name, ct, methods)
    return setmetatable({}, { __index = function(cache, k)
        local f = methods[k]
        if type(f) ~= "function" and type(f) ~= "cdata" then return f end
        local function method(self, ...)
            if not istype(ct, self) then
                error(("lj-async: %s:%s needs a %s as self, got %s (call it with a colon: obj:%s(...))")
                    :format(name, tostring(k), name, type(self), tostring(k)), 2)
            end
            return f(self, ...)
        end
        rawset(cache, k, method)
        return method
    end })
end

-- Every kind of object: kind number -> { wrap = fn(ptr) -> handle, ct = the handles' ctype }.
local kinds = {}

-- The modules that define each kind (loaded on first need).
local modules = { "lj-async.sync", "lj-async.sync", "lj-async.sync", "lj-async.sync",
    "lj-async.channel", "lj-async.state", "lj-async.pool", "lj-async.shared" }

-- Records a kind whose handles are not made by define (shared tables).
function M.add_kind(kind, wrap, ct)
    kinds[kind] = { wrap = wrap, ct = ct }
end

-- A handle for a pointer to an object of any kind, adopting a reference
-- that the caller took.
function M.wrap_any(p)
    local kind = C.lja_object_kind(p)
    if not kinds[kind] then require(modules[kind]) end
    return kinds[kind].wrap(p)
end

-- Whether v is a handle of an lj-async object.
function M.is_object(v)
    for _, k in pairs(kinds) do
        if istype(k.ct, v) then return true end
    end
    return false
end

function M.define(name, module, kind, struct_name, methods, mt)
    mt = mt or {}
    local ct = ffi.typeof(struct_name .. " *")
    mt.__index = checked(name, ct, methods)
    mt.__tostring = mt.__tostring or function(self)
        return ("lj-async.%s: %d"):format(name, M.id(self))
    end
    ffi.metatype(struct_name, mt)
    local function wrap(p)
        if p == nil then return nil end
        return ffi.gc(ffi.cast(ct, p), release)
    end
    M.add_kind(kind, wrap, ct)
    transfer.register(ct, {
        name = name,
        module = module,
        export = function(obj)
            C.lja_object_retain(obj)
            return M.id(obj), ffi.cast("void *", obj)
        end,
        import = function(id)
            local p = C.lja_object_get(id, kind)
            if p == nil then error(("lj-async: %s %d is gone"):format(name, id), 0) end
            return wrap(p), p
        end,
        release = release,
    })
    return wrap, ct
end

local MAX_ID = 2 ^ 53   -- ids count from 1; beyond this a double is not exact

-- A handle of the given kind for an id, or nil, err (the public get
-- raises err at its caller's level).
function M.find(wrap, kind, name, id)
    if type(id) ~= "number" then
        return nil, ("lj-async: a %s id must be a number, got %s"):format(name, type(id))
    end
    if not (id >= 1 and id <= MAX_ID and id % 1 == 0) then
        return nil, ("lj-async: a %s id must be an integer from 1 to 2^53, got %s"):format(name, tostring(id))
    end
    local h = wrap(C.lja_object_get(id, kind))
    if h == nil then return nil, ("lj-async: no %s with id %d"):format(name, id) end
    return h
end

return M
