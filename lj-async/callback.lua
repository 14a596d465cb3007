-- lj-async.callback: C function pointers backed by Lua functions that live in
-- their own lua_States, so any thread may call them (SPEC section 3).
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
local CTF_BOOL, CTF_FP, CTF_UNSIGNED, CTF_VARARG, CTF_VECTOR, CTF_COMPLEX =
    0x08000000, 0x04000000, 0x00800000, 0x00800000, 0x08000000, 0x04000000
local INT_LETTERS = { [1] = "b", [2] = "h", [4] = "i", [8] = "q" }

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

local function signature(ct)
    local ti, kind = resolve(tonumber(ct))
    local fti, fkind
    if kind == CT_PTR then fti, fkind = resolve(band(ti.info, 0xffff)) end
    if fkind ~= CT_FUNC then
        error("lj-async: '" .. tostring(ct) .. "' is not a function pointer type", 0)
    end
    if band(fti.info, CTF_VARARG) ~= 0 then
        error("lj-async: variadic callbacks are not supported", 0)
    end
    local sig = { letter(band(fti.info, 0xffff), "return type") }
    local arg = fti.sib
    while arg do
        local f = typeinfo(arg)
        sig[#sig + 1] = letter(band(f.info, 0xffff), "argument #" .. #sig)
        arg = f.sib
    end
    return table.concat(sig)
end

------------------------------------------------------------------------------
-- Inside a callback's state.

local gate_of_state   -- the gate this state reports errors to

local function report(msg)
    msg = tostring(msg)
    io.stderr:write("lj-async.callback: error in callback: ", msg, "\n")
    C.lja_gate_set_error(gate_of_state, msg, #msg)
end

local M = {}
M._VERSION = shim.VERSION

-- Runs in a fresh state: builds the typed callback and stores its address.
function M.boot(out, gate, ctype, cdef, code, setup, args)
    -- Decoded first: the message's object references are released only by
    -- decoding it, whatever fails later.
    local setup_args = setup == "1" and transfer.pack(select(2, transfer.decode_transient(args)))
    out = ffi.cast("void **", vm.pointer_from_arg(out))
    gate_of_state = ffi.cast("lja_gate *", vm.pointer_from_arg(gate))
    if cdef ~= "" then ffi.cdef(cdef) end
    local ct = ffi.typeof(ctype)
    local fn = assert(load(code, "=(callback)"))
    if setup_args then
        fn = fn(unpack(setup_args, 1, setup_args.n))
        if type(fn) ~= "function" then
            error("the setup function returned " .. type(fn) .. ", not a function", 0)
        end
    end
    local sig = signature(ct)
    local zero = (sig:sub(1, 1) ~= "v" and sig:sub(1, 1) ~= "p") and 0 or nil
    local function finish(ok, ...)
        if ok then return ... end
        report(...)
        return zero
    end
    -- A wrapper of the signature's arity: fixed parameters compile better
    -- than varargs in a function entered on every call.
    local params = {}
    for i = 1, #sig - 1 do params[i] = "a" .. i end
    params = table.concat(params, ", ")
    local wrapper = assert(load(("local finish, xpcall, fn, traceback = ... "
        .. "return function(%s) return finish(xpcall(fn, traceback%s)) end")
        :format(params, params == "" and "" or ", " .. params), "=(callback wrapper)"))
    local cb = ffi.cast(ct, wrapper(finish, xpcall, fn, transfer.traceback))
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
    -- Each state gets its own message: its objects' references are its own.
    local function setup_args()
        if not opts.setup then return "" end
        local ok, s = pcall(transfer.encode_string, list.n or #list, unpack(list, 1, list.n or #list))
        if not ok then error(s, level + 1) end
        return s
    end
    setup_args()   -- raise on bad arguments before any state is made
    transfer.drop_exported()
    local rc = C.lja_gate_new(gate_out, factory.sig, n)
    if rc ~= LJA_OK then error("lj-async: cannot make a callback gate: " .. shim.strerror(rc), level) end
    local gate = gate_out[0]
    local states = {}
    for i = 1, n do
        local args = setup_args()
        local ok, L = pcall(vm.new, BOOT, vm.pointer_arg(target_out), vm.pointer_arg(gate),
            factory.ctype, factory.cdef, code, opts.setup and "1" or "0", args)

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
Factory.__call = function(factory, fn, opts) return new_callback(factory, fn, opts, 3) end

local function resolve_ctype(ctype, cdef)
    local ok, ct = pcall(ffi.typeof, ctype)
    if not ok and cdef ~= "" then
        pcall(ffi.cdef, cdef)
        ok, ct = pcall(ffi.typeof, ctype)
    end
    return ok and ct or nil, ct
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
        local ok, sig = pcall(signature, ct)
        if not ok then error(sig, 2) end
        return setmetatable({ ctype = ctype, cdef = cdef or "", ct = ct, sig = sig }, Factory)
    end,
})
