-- lj-async.transfer: moving values between lua_States (SPEC section 1).
--
-- LuaJIT's string.buffer does the encoding.  A message is a header number
-- followed by its values; the header is n, or -(n+1) when some value needed
-- the slow path (functions, pointers, lj-async objects), which the receiver
-- then rebuilds.  The slow path also names what cannot cross and where.
--
-- Thread states load this module on every run, so it needs only
-- string.buffer until a value takes the slow path; then it loads the FFI.
local buffer = require "string.buffer"

local type, select, pcall, error, next, tostring, tonumber = type, select, pcall, error, next, tostring, tonumber
local string_dump, getupvalue, getinfo = string.dump, debug.getupvalue, debug.getinfo
local band, rshift = bit.band, bit.rshift

local ffi
local function FFI()
    ffi = ffi or require "ffi"
    return ffi
end

local M = {}

-- Functions of instrumented pool code reach the poll through an upvalue
-- that crosses: the receiver binds its own (lj-async.safepoint).
local function safepoint()
    return require "lj-async.safepoint"
end

local MARK = "\0lj-async"   -- key of a marker table standing for a special value
local CT_NUM, CT_PTR = 0, 2
local CTF_FP, CTF_REF = 0x04000000, 0x00800000

local enc = buffer.new()
local dec = buffer.new()

-- lj-async objects that cross as live handles: ctype id -> kind.
-- kind = { name = ..., module = ..., export = fn(obj) -> id, ref,
--          import = fn(id) -> obj, ref, release = fn(ref) }
-- export takes a reference that the message holds (ref); import makes a
-- handle of its own.  Who holds the message releases its references once
-- it is decoded (decode_transient does) or dropped.
local kinds_by_ctype, kinds_by_name = {}, {}

function M.register(ct, kind)
    FFI()
    kinds_by_ctype[tonumber(ct)] = kind
    kinds_by_name[kind.name] = kind
end

-- What a cdata is, by ctype id: "int64" (crosses as is), "pointer", or nil.
local cdata_class = setmetatable({}, { __mode = "k" })
local function classify(id)
    local c = cdata_class[id]
    if c == nil then
        local ti = ffi.typeinfo(id)
        local t = rshift(ti.info, 28)
        if t == CT_PTR and band(ti.info, CTF_REF) == 0 then
            c = "pointer"
        elseif t == CT_NUM and ti.size == 8 and band(ti.info, CTF_FP) == 0 then
            c = "int64"
        else
            c = false
        end
        cdata_class[id] = c
    end
    return c
end

local function where(path, k)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") then return path .. "." .. k end
    return path .. "[" .. tostring(k) .. "]"
end

local function cannot(what, path)
    error("lj-async: cannot send " .. what .. " (" .. path .. ")", 0)
end

-- The references taken by the last encode, and their kinds.
local exported, exported_kinds = {}, {}

-- Slow path: a copy of v with specials replaced by markers; raises on what
-- cannot cross.
local function convert(v, path, seen)
    local tv = type(v)
    if tv == "nil" or tv == "boolean" or tv == "number" or tv == "string" then
        return v
    elseif tv == "table" then
        if seen[v] then cannot("a table with a cycle", path) end
        seen[v] = true
        local out = {}
        for k, x in next, v do
            if type(k) == "table" or type(k) == "cdata" then
                k = convert(k, where(path, "<key>"), seen)
            elseif type(k) ~= "string" and type(k) ~= "number" and type(k) ~= "boolean" then
                cannot("a table key of type " .. type(k), where(path, "<key>"))
            end
            out[k] = convert(x, where(path, k), seen)
        end
        seen[v] = nil
        return out
    elseif tv == "function" then
        if getinfo(v, "S").what == "C" then cannot("a C function", path) end
        local up = getupvalue(v, 1) and safepoint().foreign_upvalue(v)
        if up then cannot("a function with upvalue '" .. up .. "'", path) end
        local ok, bc = pcall(string_dump, v)
        if not ok then cannot("a function that string.dump refuses (" .. tostring(bc) .. ")", path) end
        return { [MARK] = "function", bc }
    elseif tv == "cdata" then
        local typeof, cast = FFI().typeof, ffi.cast
        local id = tonumber(typeof(v))
        local kind = kinds_by_ctype[id]
        if kind then
            local oid, ref = kind.export(v)
            exported[#exported + 1] = ref
            exported_kinds[#exported] = kind
            return { [MARK] = "object", kind.module, kind.name, oid }
        end
        local class = classify(id)
        if class == "int64" then return v end
        if class == "pointer" then return { [MARK] = "pointer", cast("uint64_t", cast("uintptr_t", v)) } end
        cannot("a cdata of type " .. tostring(typeof(v)):match("^ctype<(.*)>$"), path)
    end
    cannot(tv == "thread" and "a coroutine" or "a " .. tv, path)
end

local function encode_plain(n, ...)
    enc:encode(n)
    for i = 1, n do enc:encode((select(i, ...))) end
end

local function release_all(refs, kinds)
    for i = #refs, 1, -1 do
        kinds[i].release(refs[i])
        refs[i], kinds[i] = nil, nil
    end
end

local function encode_special(hidden, n, ...)
    local seen = {}
    local ok, err = pcall(function(...)
        enc:encode(-n - 1)
        for i = 1, n do
            enc:encode(convert((select(i, ...)), "argument " .. (i - hidden), seen))
        end
    end, ...)
    if not ok then
        release_all(exported, exported_kinds)
        enc:reset()
        error(err, 0)
    end
end

-- Encode n values into one message.  Returns a pointer and length valid
-- until the next encode in this state; raises an error that names what
-- cannot cross, and then nothing was sent.
-- Values string.buffer encodes as they are, without a chance of failing.
local SIMPLE = { number = true, string = true, boolean = true, ["nil"] = true }

local function encode(hidden, n, ...)
    if #exported > 0 then M.forget_exported() end
    enc:reset()
    if n == 1 then   -- the common one-value message: no vararg loop
        local v = ...
        if SIMPLE[type(v)] then
            enc:encode(1):encode(v)
            return
        end
        enc:encode(1)
        if pcall(enc.encode, enc, v) then return end
        enc:reset()
        encode_special(hidden, n, ...)
    elseif n == 2 and SIMPLE[type((...))] and SIMPLE[type((select(2, ...)))] then
        local a, b = ...   -- a command and its argument (ltask), a key and a value
        enc:encode(2):encode(a):encode(b)
    elseif not pcall(encode_plain, n, ...) then
        enc:reset()
        encode_special(hidden, n, ...)
    end
end

function M.encode(n, ...)
    encode(0, n, ...)
    return enc:ref()
end

-- As encode, for a message whose first `hidden` values are lj-async's own:
-- errors number the values after them from 1.
function M.encode_after(hidden, n, ...)
    encode(hidden, n, ...)
    return enc:ref()
end

-- The object references the last encode took for its message: the shim's
-- queues hold them with the message (channels, ltask, pools).  The caller
-- passes them on (objs_array), then says the message took them
-- (forget_exported) or was not sent (drop_exported releases them).  A
-- sender that must wait before it sends takes them out of here first.
local objs_buf, objs_cap

-- A list of references (default: the last encode's) as a C array for the
-- shim: pointer (valid until the next call) and count; nil, 0 for none.
function M.objs_array(list)
    list = list or exported
    local n = #list
    if n == 0 then return nil, 0 end
    if not objs_buf or n > objs_cap then
        objs_cap = math.max(n, 16)
        objs_buf = FFI().new("void *[?]", objs_cap)
    end
    for i = 1, n do objs_buf[i - 1] = list[i] end
    return objs_buf, n
end

function M.forget_exported()
    for i = #exported, 1, -1 do exported[i], exported_kinds[i] = nil, nil end
end

function M.drop_exported()
    release_all(exported, exported_kinds)
end

-- The last encode's references, kept apart from later encodes (nil when
-- there are none); objs_array and release take the result.
function M.take_exported()
    local n = #exported
    if n == 0 then return nil end
    local list = { kinds = {} }
    for i = 1, n do list[i], list.kinds[i] = exported[i], exported_kinds[i] end
    M.forget_exported()
    return list
end

function M.release(list)
    if list then release_all(list, list.kinds) end
end

-- Encode into a Lua string (same errors as encode).
function M.encode_string(n, ...)
    encode(0, n, ...)
    return enc:tostring()
end

-- References of the objects that the last decode imported.
local imported, imported_kinds = {}, {}

local function rebuild(v)
    if type(v) ~= "table" then return v end
    local tag = v[MARK]
    if tag == "function" then
        local f = assert(load(v[1]))
        if getupvalue(f, 1) then safepoint().bind(f) end
        return f
    elseif tag == "pointer" then
        return FFI().cast("void *", ffi.cast("uintptr_t", v[1]))
    elseif tag == "object" then
        local kind = kinds_by_name[v[2]]
        if not kind then
            require(v[1])   -- the module that defines the kind registers it
            kind = kinds_by_name[v[2]]
        end
        local obj, ref = kind.import(v[3])
        imported[#imported + 1] = ref
        imported_kinds[#imported] = kind
        return obj
    end
    for k, x in next, v do
        if type(x) == "table" then v[k] = rebuild(x) end
    end
    return v
end

local function decode_n(special, n)
    if n == 0 then return end
    local v = dec:decode()
    if special then v = rebuild(v) end
    return v, decode_n(special, n - 1)
end

local function decode(p, len)
    for i = #imported, 1, -1 do imported[i], imported_kinds[i] = nil, nil end
    dec:set(p, len)
    local n = dec:decode()
    if n < 0 then
        FFI()  -- pointers need the FFI
        n = -n - 1
        return n, decode_n(true, n)
    end
    return n, decode_n(false, n)
end

local function pack(...)
    return { n = select("#", ...), ... }
end
M.pack = pack

-- Decode a message from memory (pointer, length) or a string: returns n,
-- then the n values.
function M.decode(p, len)
    if ffi then return decode(p, len) end
    -- Without the FFI loaded, string.buffer cannot make int64 cdata: such a
    -- message fails, and is decoded again once the FFI is in.
    local r = pack(pcall(decode, p, len))
    if r[1] then return unpack(r, 2, r.n) end
    FFI()
    return decode(p, len)
end

local function release_imports(...)
    release_all(imported, imported_kinds)
    return ...
end

-- Decode a message whose object references travel inside it (thread
-- arguments and results, state calls): once the objects have handles here,
-- the message's own references are released.
function M.decode_transient(p, len)
    return release_imports(M.decode(p, len))
end

-- Code that will run in another state: a function without upvalues (as
-- bytecode), Lua source (checked here) or bytecode.  Raises at the caller's
-- level on what cannot cross.
function M.code_of(func, level)
    level = level + 1
    local tf = type(func)
    if tf == "function" then
        if getinfo(func, "S").what == "C" then
            error("lj-async: cannot run a C function in another state", level)
        end
        local up = getupvalue(func, 1)
        if up then
            error("lj-async: the function has upvalue '" .. up .. "' and cannot cross states "
                .. "(require modules and pass values as arguments instead)", level)
        end
        return string_dump(func)
    elseif tf == "string" then
        if func:sub(1, 3) ~= "\27LJ" then
            local ok, err = load(func, "=(source)")
            if not ok then error("lj-async: " .. err, level) end
        end
        return func
    end
    error("lj-async: expected a function, Lua source or bytecode, got " .. tf, level)
end

-- The reply of a run in another state (a thread, a state call): the
-- results of xpcall as one message, or, when a result cannot cross, a
-- failure that says so.
function M.encode_outcome(what, ...)
    local ok, msg = pcall(M.encode_string, select("#", ...), ...)
    if ok then return msg end
    return M.encode_string(2, false, "lj-async: the " .. what .. "'s results cannot cross: " .. tostring(msg))
end

-- An error handler for xpcall: the message with a traceback that stops
-- where lj-async's own frames begin.
function M.traceback(e)
    local tb = debug.traceback(tostring(e), 2)
    return (tb:gsub("\n\t%[C%]: in function 'xpcall'.*$", ""))
end

return M
