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
-- Thread states load this module on every run, and each ltask service, so
-- it holds only the decoder and the references: the encoder
-- (lj-async/transfer_encode.lua) loads at the first message with values,
-- which an idle service never sends (its start is answered with none); the
-- slow path (lj-async/transfer_slow.lua), with the FFI, at the first value
-- that needs it, which a state that only sends plain values never loads.
local buffer = require "string.buffer"
local clear = require "table.clear"

local type, select, pcall, error, tonumber = type, select, pcall, error, tonumber

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

-- The references taken by the last encode, and their kinds.
local exported, exported_kinds = {}, {}
-- The cdata that the last encode sent by address (take_anchors).
local anchors = {}
-- References of the objects that the last decode imported.
local imported, imported_kinds = {}, {}
local SIMPLE = { number = true, string = true, boolean = true, ["nil"] = true }

local function release_all(refs, kinds)
    for i = #refs, 1, -1 do
        kinds[i].release(refs[i])
        refs[i], kinds[i] = nil, nil
    end
end

-- What the encoder and the slow path share with this module.
local parts
local function shared()
    parts = parts or { FFI = FFI, enc = enc, dec = dec, SPECIAL = SPECIAL, NODE = NODE, SIMPLE = SIMPLE,
        kinds_by_ctype = kinds_by_ctype, kinds_by_name = kinds_by_name,
        exported = exported, exported_kinds = exported_kinds, anchors = anchors,
        imported = imported, imported_kinds = imported_kinds, release_all = release_all }
    return parts
end

-- The slow path (lj-async/transfer_slow.lua), loaded when a message first
-- needs it: { its encode, its decode, its cdata classifier }.
local slow
local function load_slow()
    slow = slow or { require("lj-async.transfer_slow")(shared()) }
    return slow
end

-- The encoder's encode_values, and the functions it adds to the module
-- (a metatable loads them at their first use).
local encode_values, encode
local function load_encoder()
    local t = shared()
    t.slow, t.encode = load_slow, encode
    encode_values = require("lj-async.transfer_encode")(t, M)
    setmetatable(M, nil)
end
setmetatable(M, { __index = function(_, k)
    if not encode_values then load_encoder() end
    return rawget(M, k)
end })

-- Encode n values into one message.  Returns a pointer and length valid
-- until the next encode in this state; raises an error that names what
-- cannot cross (at `level`, or with no position for 0), and then nothing
-- was sent.  The encoder, and from it the slow path, are tail calls: the
-- error levels count no frame of either, nor of this.
function encode(hidden, level, n, ...)
    if #exported > 0 then M.forget_exported() end
    if anchors[1] ~= nil then clear(anchors) end
    enc:reset()
    if n == 0 then   -- nothing to check: no need of the encoder
        enc:encode(0)
        return
    end
    if not encode_values then load_encoder() end
    return encode_values(hidden, level, n, ...)
end

-- As encode, for a message whose first `hidden` values are lj-async's own:
-- errors number the values after them from 1.
function M.encode_after(hidden, n, ...)
    encode(hidden, 0, n, ...)
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
        return load_slow()[2](-n - 1)   -- (a tail call: no frame here in its errors)
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

return M
