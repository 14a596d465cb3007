-- lj-async.transfer: moving values between lua_States (README: "Values that
-- cross states").
--
-- LuaJIT's string.buffer does the encoding.  A message is a header number
-- followed by its values; the header is n, or -(n+1) when some value needed
-- the slow path (functions, cdata sent by address, lj-async objects, tables
-- nested deeper than string.buffer goes), which the receiver then rebuilds.
-- The slow path also names what cannot cross and where.
--
-- Special values travel out of band.  In the copy that is sent, each stands
-- as a SPECIAL table, which string.buffer's `metatable` option carries as
-- an index, not as data; a side list in the message says what each slot
-- is.  So no data can pose as a special value (no table of the user's has
-- that metatable, and the side list is this module's own), and a value sent
-- twice in one message (a channel as a key and as a value) is one value
-- there.  Plain messages pay nothing: string.buffer looks up a metatable
-- only for tables that have one.
--
-- A function crosses as its bytecode and, when it has upvalues, their
-- values (README: "Functions and their upvalues").  What a function
-- captures from package.loaded (a module the receiver can require, or a
-- field of one: string.format, ffi.C) crosses by name, looked up in a
-- table of such values built when first needed and again when
-- package.loaded has changed: functions without upvalues never use it.
--
-- Thread states load this module on every run, so it needs only
-- string.buffer until a value takes the slow path; then it loads the FFI
-- and the slow path itself (lj-async/transfer_slow.lua), which a state
-- that only sends plain values never loads (an ltask service is smaller).
local buffer = require "string.buffer"
local clear = require "table.clear"

local type, select, pcall, error, tostring, tonumber = type, select, pcall, error, tostring, tonumber
local string_dump, getupvalue, getinfo = string.dump, debug.getupvalue, debug.getinfo

local ffi
local function FFI()
    ffi = ffi or require "ffi"
    return ffi
end

local M = {}

-- Stand-ins: SPECIAL { slot } for a special value, NODE { i } for a part
-- of a deep table sent apart (see CUT in lj-async/transfer_slow.lua).
local SPECIAL, NODE = {}, {}
local options = { metatable = { SPECIAL, NODE } }
local enc = buffer.new(options)
local dec = buffer.new(options)

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

-- The references taken by the last encode, and their kinds.
local exported, exported_kinds = {}, {}
-- The cdata that the last encode sent by address (take_anchors).
local anchors = {}
-- References of the objects that the last decode imported.
local imported, imported_kinds = {}, {}
local SIMPLE = { number = true, string = true, boolean = true, ["nil"] = true }

-- Whether string.buffer encodes v as it is (the fast path), decided
-- before encoding: a caught error out of a compiled caller's encode
-- corrupted that caller's frame on Debian's LuaJIT 2.1 (2022).  It refuses
-- functions, coroutines, full userdata, cdata other than int64, uint64 and
-- complex (classify, cached per ctype) and tables nested past 100 levels
-- (which also ends a cycle); lj-async objects cross as handles.
local PLAIN_DEPTH = 100
local getfenv = debug.getfenv
local plain
-- The slow path (lj-async/transfer_slow.lua), loaded when a message first
-- needs it: its encode, decode and cdata classifier.
local slow_encode, slow_decode, cdata_class, load_slow
local function plain_entry(k, x, depth)
    local tx, tk = type(x), type(k)
    return (tx == "number" or tx == "string" or tx == "boolean" or plain(x, tx, depth))
        and (tk == "number" or tk == "string" or tk == "boolean" or plain(k, tk, depth))
end
-- Whether table t's entries are plain.  Tables of one or two entries are
-- checked without a loop: a loop that ends after a turn or two is never
-- compiled, and knocks every caller off its trace.
local function plain_table(t, depth)
    local k, x = next(t)
    if k == nil then return true end
    if not plain_entry(k, x, depth) then return false end
    k, x = next(t, k)
    if k == nil then return true end
    if not plain_entry(k, x, depth) then return false end
    if next(t, k) == nil then return true end
    for key, value in next, t do
        if not plain_entry(key, value, depth) then return false end
    end
    return true
end
function plain(v, tv, depth)
    if SIMPLE[tv] then return true end
    if tv == "table" then return depth < PLAIN_DEPTH and plain_table(v, depth + 1) end
    if tv == "cdata" then
        local id = tonumber(FFI().typeof(v))
        if not cdata_class then load_slow() end
        return not kinds_by_ctype[id] and cdata_class(id, v) == "copy"
    end
    return tv == "userdata" and getfenv(v) == nil   -- light userdata
end

local function all_plain(n, ...)
    for i = 1, n do
        local v = select(i, ...)
        if not plain(v, type(v), 0) then return false end
    end
    return true
end

local function release_all(refs, kinds)
    for i = #refs, 1, -1 do
        kinds[i].release(refs[i])
        refs[i], kinds[i] = nil, nil
    end
end

-- (encode_special and decode_special tail-call the slow path: the error
-- levels count no frame here.)
function load_slow()
    slow_encode, slow_decode, cdata_class = require("lj-async.transfer_slow")({
        FFI = FFI, enc = enc, dec = dec, SPECIAL = SPECIAL, NODE = NODE, SIMPLE = SIMPLE,
        kinds_by_ctype = kinds_by_ctype, kinds_by_name = kinds_by_name,
        exported = exported, exported_kinds = exported_kinds, anchors = anchors,
        imported = imported, imported_kinds = imported_kinds, release_all = release_all,
    })
end

local function encode_special(hidden, level, n, ...)
    if not slow_encode then load_slow() end
    return slow_encode(hidden, level, n, ...)
end

local function decode_special(n)
    if not slow_decode then load_slow() end
    return slow_decode(n)
end

-- Encode n values into one message.  Returns a pointer and length valid
-- until the next encode in this state; raises an error that names what
-- cannot cross (at `level`, or with no position for 0), and then nothing
-- was sent.
local function encode(hidden, level, n, ...)
    if #exported > 0 then M.forget_exported() end
    if anchors[1] ~= nil then clear(anchors) end
    enc:reset()
    if n == 1 then   -- the common one-value message: no vararg loop
        local v = ...
        if SIMPLE[type(v)] then
            enc:encode(1):encode(v)
            return
        end
        if plain(v, type(v), 0) then
            enc:encode(1):encode(v)
            return
        end
        encode_special(hidden, level, n, ...)
    elseif n == 2 then   -- a command and its argument (ltask), a key and a value, code and ctx
        local a, b = ...
        if plain(a, type(a), 0) and plain(b, type(b), 0) then
            enc:encode(2):encode(a):encode(b)
        else
            encode_special(hidden, level, n, ...)
        end
    elseif all_plain(n, ...) then
        enc:encode(n)
        for i = 1, n do enc:encode((select(i, ...))) end
    else
        encode_special(hidden, level, n, ...)
    end
end

function M.encode(n, ...)
    encode(0, 0, n, ...)
    return enc:ref()
end

-- As encode, for a message whose first `hidden` values are lj-async's own:
-- errors number the values after them from 1.
function M.encode_after(hidden, n, ...)
    encode(hidden, 0, n, ...)
    return enc:ref()
end

-- As encode_after, raising at `level` as error() counts it in the caller
-- (for senders that let the error through to the user's line).
function M.encode_at(level, hidden, n, ...)
    encode(hidden, level + 3, n, ...)   -- encode_special, encode, here, the caller
    return enc:ref()
end

-- The cdata that the last encode sent by address, which must outlive the
-- message's use (Thread.new keeps them until the thread ends); nil for none.
function M.take_anchors()
    if anchors[1] == nil then return nil end
    local list = {}
    for i = 1, #anchors do list[i] = anchors[i] end
    clear(anchors)
    return list
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
    encode(0, 0, n, ...)
    return enc:tostring()
end

-- As encode_string, with encode_after's hidden values.
function M.encode_string_after(hidden, n, ...)
    encode(hidden, 0, n, ...)
    return enc:tostring()
end

-- (Messages of one to three values, the most, are decoded without the
-- recursion, which ends a trace where it returns.)
local function decode_n(n)
    if n == 0 then return end
    return dec:decode(), decode_n(n - 1)
end

local function decode_values(n)
    local a = dec:decode()
    if n == 1 then return a end
    local b = dec:decode()
    if n == 2 then return a, b end
    local c = dec:decode()
    if n == 3 then return a, b, c end
    return a, b, c, decode_n(n - 3)
end

-- A small message from memory is copied into the decoder: set() anchors
-- the pointer's cdata in the buffer, a garbage object per message.
local COPY_MAX = 512

local function decode(p, len)
    for i = #imported, 1, -1 do imported[i], imported_kinds[i] = nil, nil end
    if type(p) == "cdata" and len <= COPY_MAX then
        dec:reset():putcdata(p, len)
    else
        dec:set(p, len)
    end
    local n = dec:decode()
    if n < 0 then
        FFI()  -- pointers need the FFI
        return decode_special(-n - 1)
    end
    if n == 0 then return 0 end
    return n, decode_values(n)
end

local function pack(...)
    return { n = select("#", ...), ... }
end
M.pack = pack

-- Decode a message from memory (pointer, length) or a string: returns n,
-- then the n values.
function M.decode(p, len)
    if not ffi and type(p) == "cdata" then FFI() end   -- a pointer: the FFI is in already
    if ffi then return decode(p, len) end
    -- Without the FFI loaded, string.buffer cannot make int64 cdata: such a
    -- message fails, and is decoded again once the FFI is in.
    local r = pack(pcall(decode, p, len))
    if r[1] then return unpack(r, 2, r.n) end
    if ffi then error(r[2], 0) end   -- the slow path loaded it: another failure
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

-- Code that will run in another state, to send in a message before the
-- arguments (as lj-async's own value, see path_of): a function without
-- upvalues as bytecode, a function with upvalues as itself (the message
-- carries them; what cannot cross raises there), Lua source (checked here)
-- or bytecode.  Raises at the caller's level on what cannot cross.
-- load_code makes the function again from what the message carried.
function M.code_of(func, level)
    level = level + 1
    local tf = type(func)
    if tf == "function" then
        if getinfo(func, "S").what == "C" then
            error("lj-async: cannot run a C function in another state", level)
        end
        if getupvalue(func, 1) then return func end
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

-- The function of code_of's output, in the receiver.
function M.load_code(code, chunkname)
    if type(code) == "function" then return code end
    return assert(load(code, chunkname))
end

-- The reply of a run in another state (a thread, a state call): the
-- results of xpcall as one message, or, when a result cannot cross, a
-- failure that says so (numbering the results from 1).
function M.encode_outcome(what, ...)
    local ok, msg = pcall(M.encode_string_after, 1, select("#", ...), ...)
    if ok then return msg end
    return M.encode_string(2, false, "lj-async: the " .. what .. "'s results cannot cross: " .. tostring(msg))
end

-- What a run's outcome (encode_outcome's ok, then its values or its error)
-- gives the caller: the values, after true when `with_true`, or nil and
-- the error.
function M.results(with_true, ok, ...)
    if not ok then return nil, ... end
    if with_true then return true, ... end
    return ...
end

-- An error handler for xpcall: the message with a traceback that stops
-- where lj-async's own frames begin.
function M.traceback(e)
    local tb = debug.traceback(tostring(e), 2)
    return (tb:gsub("\n\t%[C%]: in function 'xpcall'.*$", ""))
end

return M
