-- lj-async.callback: C function pointers backed by Lua functions that live in
-- their own lua_States, so any thread may call them (README: lj-async.callback).
--
-- Each state holds an ffi.cast callback of the user's ctype.  The pointer
-- handed to C is a gate (csrc/gate.c): a libffi closure of the same
-- signature that takes a free state, forwards the call, and gives it back.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local vm = require "lj-async.vm"

ffi.cdef [[
typedef struct lja_gate lja_gate;
int lja_gate_new(lja_gate **out, const char *sig, int n);
void *lja_gate_funcptr(lja_gate *g);
void lja_gate_set_target(lja_gate *g, int i, void *fn);
int lja_gate_quiesce(lja_gate *g, double timeout);
void lja_gate_set_error(lja_gate *g, const char *msg, size_t len);
size_t lja_gate_error(lja_gate *g, char *buf, size_t cap);
void lja_gate_free(lja_gate *g);
]]

local C = shim.C
local band, rshift = bit.band, bit.rshift
local typeinfo = ffi.typeinfo
local LJA_OK = C.LJA_OK

-- How long free() waits for calls still running inside the callback.
local FREE_GRACE = 10

------------------------------------------------------------------------------
-- Signatures: a function pointer ctype as the gate's letters (csrc/ljasync.h).

local CT_NUM, CT_STRUCT, CT_PTR, CT_ARRAY, CT_VOID, CT_ENUM, CT_FUNC, CT_TYPEDEF, CT_ATTRIB =
    0, 1, 2, 3, 4, 5, 6, 7, 8
local CTF_BOOL, CTF_FP, CTF_UNSIGNED, CTF_VARARG, CTF_VECTOR, CTF_COMPLEX, CTF_REF =
    0x08000000, 0x04000000, 0x00800000, 0x00800000, 0x08000000, 0x04000000, 0x00800000
local INT_LETTERS = { [1] = "b", [2] = "h", [4] = "i", [8] = "q" }
-- LuaJIT's callbacks take at most 16 arguments (its callback_checkfunc:
-- the arguments must fit in LUA_MINSTACK).
local MAX_ARGS = 16

local function resolve(cid)
    while true do
        local ti = typeinfo(cid)
        local kind = rshift(ti.info, 28)
        if kind ~= CT_TYPEDEF and kind ~= CT_ATTRIB then return ti, kind end
        cid = band(ti.info, 0xffff)
    end
end

local function letter(cid, what)
    local ti, kind = resolve(cid)
    if kind == CT_PTR then return "p" end
    if kind == CT_ARRAY and band(ti.info, CTF_VECTOR + CTF_COMPLEX) == 0 then return "p" end
    if kind == CT_VOID then return "v" end
    if kind == CT_ENUM then return letter(band(ti.info, 0xffff), what) end
    if kind == CT_NUM then
        if band(ti.info, CTF_BOOL) ~= 0 then return "B" end
        if band(ti.info, CTF_FP) ~= 0 then
            if ti.size == 4 then return "f" elseif ti.size == 8 then return "d" end
        else
            local l = INT_LETTERS[ti.size]
            if l then return band(ti.info, CTF_UNSIGNED) ~= 0 and l:upper() or l end
        end
    end
    error("lj-async: the callback's " .. what .. " is a struct, union, long double or vector "
        .. "passed by value; callbacks take and return only scalars and pointers", 0)
end

local function signature(ct, name)
    local ti, kind = resolve(tonumber(ct))
    local fti, fkind
    if kind == CT_PTR then fti, fkind = resolve(band(ti.info, 0xffff)) end
    if fkind ~= CT_FUNC then
        error("lj-async: '" .. name .. "' is not a function pointer type", 0)
    end
    if band(fti.info, CTF_VARARG) ~= 0 then
        error("lj-async: variadic callbacks are not supported", 0)
    end
    local rti, rkind = resolve(band(fti.info, 0xffff))
    if rkind == CT_PTR and band(rti.info, CTF_REF) ~= 0 then
        -- the result is converted in a box of the return type (M.boot),
        -- and C has no arrays of references
        error("lj-async: a callback cannot return a reference; return a pointer", 0)
    end
    local sig = { letter(band(fti.info, 0xffff), "return type") }
    local arg = fti.sib
    while arg do
        local f = typeinfo(arg)
        sig[#sig + 1] = letter(band(f.info, 0xffff), "argument #" .. #sig)
        arg = f.sib
    end
    if #sig - 1 > MAX_ARGS then
        error(("lj-async: '%s' has %d arguments; LuaJIT's callbacks take at most %d")
            :format(name, #sig - 1, MAX_ARGS), 0)
    end
    return table.concat(sig)
end

------------------------------------------------------------------------------
-- Inside a callback's state.

local gate_of_state   -- the gate this state reports errors to
local stderr = io.stderr

-- Runs outside any protection, so it must not raise (a closed io.stderr).
local function report(msg)
    C.lja_gate_set_error(gate_of_state, msg, #msg)
    pcall(stderr.write, stderr, "lj-async.callback: error in callback: ", msg, "\n")
end

-- The C types that a number or boolean result is converted to, by letter.
local SCALAR_TYPES = { b = "int8_t", B = "uint8_t", h = "int16_t", H = "uint16_t", i = "int32_t",
    I = "uint32_t", q = "int64_t", Q = "uint64_t", f = "float", d = "double" }

-- The return type of ct, for the box that converts results.  ffi.typeinfo
-- knows it only by id, so one call of a throwaway callback of ct (zero
-- arguments, zero result) gives a value of it: a cdata for pointers, enums
-- and 64-bit integers, else a boolean (bool) or a number (by its letter).
local function return_type(ct, sig)
    local pointer = sig:sub(1, 1) == "p"
    local probe = ffi.cast(ct, function() if not pointer then return 0 end end)
    local args = {}
    for i = 2, #sig do args[i - 1] = sig:sub(i, i) ~= "p" and 0 or nil end
    local v = probe(unpack(args, 1, #sig - 1))
    probe:free()
    if type(v) == "cdata" then return ffi.typeof(v) end
    return ffi.typeof(type(v) == "boolean" and "bool" or SCALAR_TYPES[sig:sub(1, 1)])
end

local M = {}
M._VERSION = shim.VERSION

-- Runs in a fresh state: builds the typed callback and stores its address.
function M.boot(out, gate, ctype, cdef, setup, msg)
    -- Decoded first: the message's object references are released only by
    -- decoding it, whatever fails later.
    local m = transfer.pack(select(2, transfer.decode_transient(msg)))
    out = ffi.cast("void **", vm.pointer_from_arg(out))
    gate_of_state = ffi.cast("lja_gate *", vm.pointer_from_arg(gate))
    if cdef ~= "" then
        local ok, err = pcall(ffi.cdef, cdef)
        if not ok then error("bad cdef: " .. err, 0) end
    end
    local ct = ffi.typeof(ctype)
    local fn = transfer.load_code(m[1], "=(callback)")
    if setup == "1" then
        fn = fn(unpack(m, 2, m.n))
        if type(fn) ~= "function" then
            error("the setup function returned " .. type(fn) .. ", not a function", 0)
        end
    end
    local sig = signature(ct, ctype)
    -- LuaJIT converts the result to the C return type after the wrapper has
    -- returned, outside any protection: an error there is fatal.  So the
    -- wrapper converts it first, under pcall, into a box of that type, and
    -- returns the box's value, which the second conversion always takes.
    local convert = function() end   -- void: the results are dropped
    if sig:sub(1, 1) ~= "v" then
        local box = ffi.new(ffi.typeof("$[1]", return_type(ct, sig)))
        convert = function(v)
            box[0] = v
            return box[0]
        end
    end
    local zero = (sig:sub(1, 1) ~= "v" and sig:sub(1, 1) ~= "p") and 0 or nil
    local info = debug.getinfo(fn, "S")
    local where = info.linedefined > 0 and info.short_src .. ":" .. info.linedefined or info.short_src
    local function fail(msg, returned)
        if returned then
            msg = ("lj-async: the callback (%s) returned a value that its C return type "
                .. "cannot take: %s"):format(where, (msg:gsub("^.-:%d+: ", "", 1)))
        end
        report(msg)
        return zero
    end
    -- A wrapper of the signature's arity: fixed parameters compile better
    -- than varargs in a function entered on every call.
    local params = {}
    for i = 1, #sig - 1 do params[i] = "a" .. i end
    params = table.concat(params, ", ")
    local wrapper = assert(load(([[
local xpcall, pcall, fn, traceback, convert, fail = ...
return function(%s)
    local ok, r = xpcall(fn, traceback%s)
    if not ok then return fail(r) end
    ok, r = pcall(convert, r)
    if ok then return r end
    return fail(r, true)
end]]):format(params, params == "" and "" or ", " .. params), "=(callback wrapper)"))
    local cb = ffi.cast(ct, wrapper(xpcall, pcall, fn, transfer.traceback, convert, fail))
    M.anchor = cb
    out[0] = ffi.cast("void *", cb)
end

------------------------------------------------------------------------------
-- In the creating state.

local Callback = {}
Callback.__index = Callback

local function close_all(states)
    for i = #states, 1, -1 do
        vm.close(states[i])
        states[i] = nil
    end
end

-- Waits for calls still inside, then closes the states and the gate.
local function release(gate, states)
    if C.lja_gate_quiesce(gate, FREE_GRACE) ~= LJA_OK then
        io.stderr:write("lj-async.callback: a call is still running after ", FREE_GRACE,
            " s; the callback's states are left open\n")
        return
    end
    close_all(states)
    C.lja_gate_free(gate)
end

local gate_out = ffi.new("lja_gate *[1]")
local target_out = ffi.new("void *[1]")
local BOOT = vm.compile('return require("lj-async.callback").boot(...)', "lj-async.callback boot")

local function new_callback(factory, fn, opts, level)
    if opts ~= nil and type(opts) ~= "table" then
        error("lj-async: callback options must be a table", level)
    end
    opts = opts or {}
    local n = opts.states or 1
    if type(n) ~= "number" or n < 1 or n % 1 ~= 0 or n > 1024 then
        error("lj-async: states must be an integer from 1 to 1024", level)
    end
    local code = transfer.code_of(fn, level)
    local list = opts.args or {}
    if type(list) ~= "table" then error("lj-async: args must be a list", level) end
    -- Each state gets its own message, the code and the setup's arguments:
    -- its objects' references are its own.
    local nargs = opts.setup and (list.n or #list) or 0
    local function setup_args()
        local ok, s = pcall(transfer.encode_string_after, 1, nargs + 1, code, unpack(list, 1, nargs))
        if not ok then error(s, level + 1) end
        return s
    end
    setup_args()   -- raise on what cannot cross before any state is made
    transfer.drop_exported()
    local rc = C.lja_gate_new(gate_out, factory.sig, n)
    if rc ~= LJA_OK then error("lj-async: cannot make a callback gate: " .. shim.strerror(rc), level) end
    local gate = gate_out[0]
    local states = {}
    for i = 1, n do
        local args = setup_args()
        local ok, L = pcall(vm.new, BOOT, vm.pointer_arg(target_out), vm.pointer_arg(gate),
            factory.ctype, factory.cdef, opts.setup and "1" or "0", args)

        if not ok then
            close_all(states)
            C.lja_gate_free(gate)
            error(L, level)
        end
        states[i] = L
        C.lja_gate_set_target(gate, i - 1, target_out[0])
    end
    local self = setmetatable({ factory = factory, states = states }, Callback)
    self.gate = ffi.gc(gate, function(g) release(g, states) end)
    return self
end

function Callback:funcptr()
    if self.gate == nil then error("lj-async: funcptr of a freed callback", 2) end
    return ffi.cast(self.factory.ct, C.lja_gate_funcptr(self.gate))
end

function Callback:free()
    local gate = self.gate
    if gate == nil then return end
    self.gate = nil
    release(ffi.gc(gate, nil), self.states)
end

function Callback:last_error()
    if self.gate == nil then return nil end
    local len = tonumber(C.lja_gate_error(self.gate, nil, 0))
    if len == 0 then return nil end
    local buf = ffi.new("char[?]", len)
    len = math.min(len, tonumber(C.lja_gate_error(self.gate, buf, len)))
    return ffi.string(buf, len)
end

------------------------------------------------------------------------------
-- The factory: CallbackFactory(ctype [, cdef]) -> a callback type.

local Factory = {}
Factory.__index = Factory
Factory.__call = function(factory, fn, opts)
    local cb = new_callback(factory, fn, opts, 3)   -- not a tail call: level 3 is the caller
    return cb
end

-- The ctype, running cdef here too if this state does not know it yet.
local function resolve_ctype(ctype, cdef)
    local ok, ct = pcall(ffi.typeof, ctype)
    if ok or cdef == "" then return ok and ct or nil, ct end
    local cdef_ok, cdef_err = pcall(ffi.cdef, cdef)
    ok, ct = pcall(ffi.typeof, ctype)
    if ok then return ct end
    return nil, cdef_ok and ct or "bad cdef: " .. cdef_err
end

return setmetatable(M, {
    __call = function(_, ctype, cdef)
        if type(ctype) ~= "string" then
            error("lj-async: the callback type must be a string such as \"void(*)(int)\" "
                .. "(ctypes cannot cross states), got " .. type(ctype), 2)
        end
        if cdef ~= nil and type(cdef) ~= "string" then
            error("lj-async: cdef must be a string of C declarations", 2)
        end
        local ct, err = resolve_ctype(ctype, cdef or "")
        if not ct then error("lj-async: bad callback type '" .. ctype .. "': " .. tostring(err), 2) end
        local ok, sig = pcall(signature, ct, ctype)
        if not ok then error(sig, 2) end
        return setmetatable({ ctype = ctype, cdef = cdef or "", ct = ct, sig = sig }, Factory)
    end,
})
