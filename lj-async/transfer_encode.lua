-- lj-async.transfer_encode: the encoding side of lj-async.transfer (see
-- there): which values string.buffer takes as they are, the values of a
-- message, the rest of the module's encoders and references (encode,
-- encode_at, encode_string, take_exported, register...), and what runs code
-- in another state needs (code_of, load_code, encode_outcome, results,
-- traceback, take_anchors, decode_transient).  lj-async.transfer
-- loads it at the first message with values or the first use of one of
-- those functions, and calls what this returns with what the two share;
-- that puts the functions into the module and gives back encode_values.
-- A state that only receives, or only sends empty messages (an idle ltask
-- service: its start is answered with no values), never loads it.
local type, select, pcall, error, tostring, tonumber, next = type, select, pcall, error, tostring, tonumber, next
local string_dump, getupvalue, getinfo, getfenv = string.dump, debug.getupvalue, debug.getinfo, debug.getfenv
local clear = require "table.clear"

-- lj-async.transfer's, set by the function this returns (slow() loads the
-- slow path and gives its encode, decode and cdata classifier).
local FFI, enc, SIMPLE, kinds_by_ctype, kinds_by_name, anchors, slow, encode
local exported, exported_kinds, imported, imported_kinds, release_all
local transfer   -- the module, which gets the functions of M
local M = {}

-- Whether string.buffer encodes v as it is (the fast path), decided
-- before encoding: a caught error out of a compiled caller's encode
-- corrupted that caller's frame on Debian's LuaJIT 2.1 (2022).  It refuses
-- functions, coroutines, full userdata, cdata other than int64, uint64 and
-- complex (classify, cached per ctype) and tables nested past 100 levels
-- (which also ends a cycle); lj-async objects cross as handles.
local PLAIN_DEPTH = 100
local plain
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
        return not kinds_by_ctype[id] and slow()[3](id, v) == "copy"
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

-- The values of a message (n >= 1) after its header, for encode in
-- lj-async.transfer (which checked n and reset the buffer).  A tail call
-- there: the error levels count no frame of this.
local function encode_values(hidden, level, n, ...)
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
        return slow()[1](hidden, level, n, ...)
    elseif n == 2 then   -- a command and its argument (ltask), a key and a value, code and ctx
        local a, b = ...
        if plain(a, type(a), 0) and plain(b, type(b), 0) then
            enc:encode(2):encode(a):encode(b)
        else
            return slow()[1](hidden, level, n, ...)
        end
    elseif all_plain(n, ...) then
        enc:encode(n)
        for i = 1, n do enc:encode((select(i, ...))) end
    else
        return slow()[1](hidden, level, n, ...)
    end
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

-- Registers a kind of lj-async object (see kinds_by_ctype in
-- lj-async.transfer).
function M.register(ct, kind)
    FFI()
    kinds_by_ctype[tonumber(ct)] = kind
    kinds_by_name[kind.name] = kind
end

-- lj-async.transfer's encode (see there) and the pointer and length of
-- its message.
function M.encode(n, ...)
    encode(0, 0, n, ...)
    return enc:ref()
end

-- As encode_after, raising at `level` as error() counts it in the caller
-- (for senders that let the error through to the user's line).
function M.encode_at(level, hidden, n, ...)
    encode(hidden, level + 2, n, ...)   -- the slow path's encode, here, the caller
    return enc:ref()
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
    transfer.forget_exported()
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

local function release_imports(...)
    release_all(imported, imported_kinds)
    return ...
end

-- Decode a message whose object references travel inside it (thread
-- arguments and results, state calls): once the objects have handles here,
-- the message's own references are released.
function M.decode_transient(p, len)
    return release_imports(transfer.decode(p, len))
end

-- The reply of a run in another state (a thread, a state call): the
-- results of xpcall as one message, or, when a result cannot cross, a
-- failure that says so (numbering the results from 1).
function M.encode_outcome(what, ...)
    local ok, msg = pcall(transfer.encode_string_after, 1, select("#", ...), ...)
    if ok then return msg end
    return transfer.encode_string(2, false, "lj-async: the " .. what .. "'s results cannot cross: " .. tostring(msg))
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

return function(t, module)
    FFI, enc, SIMPLE, anchors, slow, encode = t.FFI, t.enc, t.SIMPLE, t.anchors, t.slow, t.encode
    kinds_by_ctype, kinds_by_name = t.kinds_by_ctype, t.kinds_by_name
    exported, exported_kinds, imported, imported_kinds = t.exported, t.exported_kinds, t.imported, t.imported_kinds
    release_all = t.release_all
    transfer = module
    for k, v in next, M do module[k] = v end
    return encode_values
end
