-- lj-async.state: long-lived Lua states callable from any thread, the job
-- of mtstates (README: lj-async.state).  A call runs on the caller's thread, inside
-- the state; one caller at a time.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local object = require "lj-async.object"
local transfer = require "lj-async.transfer"
local vm = require "lj-async.vm"

ffi.cdef [[
typedef struct lja_state lja_state;
lja_state *lja_state_new(void *L);
void *lja_state_lua(lja_state *st);
int lja_state_enter(lja_state *st, double timeout);
void lja_state_leave(lja_state *st);
void *lja_state_close(lja_state *st, double timeout);
int lja_state_interrupt(lja_state *st);
]]

local C, L_API = shim.C, ffi.C
local LJA_OK, LJA_EBUSY, LJA_ECLOSED = C.LJA_OK, C.LJA_EBUSY, C.LJA_ECLOSED
local LUA_REGISTRYINDEX = -10000

local M = {}
M._VERSION = shim.VERSION

------------------------------------------------------------------------------
-- Inside a state.

-- Runs in the new state: setup(...) gives the handler; registry
-- "lj-async.call" takes a call's message and returns its result message.
function M.boot(args)
    local setup_args = transfer.pack(select(2, transfer.decode_transient(args)))
    local setup = transfer.load_code(setup_args[1], "=(state setup)")
    local handler = setup(unpack(setup_args, 2, setup_args.n))
    if type(handler) ~= "function" then
        error("the setup function returned " .. type(handler) .. ", not a function", 0)
    end
    local function run(input)
        return transfer.encode_outcome("state", xpcall(handler, transfer.traceback,
            select(2, transfer.decode_transient(input))))
    end
    debug.getregistry()["lj-async.call"] = function(input)
        local ok, msg = pcall(run, input)
        if ok then return msg end
        return transfer.encode_string(2, false, tostring(msg))
    end
end

------------------------------------------------------------------------------
-- Handles.

local State = {}
local wrap = object.define("state", "lj-async.state", C.LJA_KIND_STATE, "struct lja_state", State)
local BOOT = vm.compile('return require("lj-async.state").boot(...)', "lj-async.state boot")
local len_out = ffi.new("size_t[1]")

local function raise_or_return(ok, ...)
    if ok then return ... end
    error((...), 0)
end

-- Runs the handler on the message p, len inside the state (entered by the
-- caller); returns the reply's values or raises the handler's error.
local function call_inside(L, p, len)
    L_API.lua_getfield(L, LUA_REGISTRYINDEX, "lj-async.call")
    L_API.lua_pushlstring(L, p, len)
    if L_API.lua_pcall(L, 1, 1, 0) ~= 0 then
        -- only an error outside the handler's own protection (out of memory)
        local msg = ffi.string(L_API.lua_tolstring(L, -1, len_out), len_out[0])
        L_API.lua_settop(L, 0)
        error("lj-async: state call failed: " .. msg, 0)
    end
    local r = L_API.lua_tolstring(L, -1, len_out)
    local reply = ffi.string(r, len_out[0])
    L_API.lua_settop(L, 0)
    return raise_or_return(select(2, transfer.decode_transient(reply)))
end

local function leave_after(st, ok, ...)
    C.lja_state_leave(st)
    if not ok then error((...), 0) end   -- the state's error, with its traceback
    return ...
end

-- Tail-called by State:call and State:call_wait, so level 2 is their
-- caller.  The arguments are encoded before entering: what cannot cross
-- raises without waiting for the state.
local function call(st, timeout, ...)
    local ok, p, len = pcall(transfer.encode, select("#", ...), ...)
    if not ok then error(p, 2) end
    local rc = C.lja_state_enter(st, timeout)
    if rc ~= LJA_OK then
        transfer.drop_exported()   -- not sent: the message's references go
        shim.check_cancel()        -- a cancelled lj-async thread does not wait
        error(rc == LJA_ECLOSED and "lj-async: state is closed" or "lj-async: state is busy", 2)
    end
    local L = ffi.cast("lua_State *", C.lja_state_lua(st))
    return leave_after(st, pcall(call_inside, L, p, len))
end

function State:call(...)
    return call(self, 0, ...)
end

function State:call_wait(timeout, ...)
    return call(self, shim.timeout_arg(timeout, 2), ...)
end

State.id = object.id

function State:name()
    local n = C.lja_object_name(self)
    return n ~= nil and ffi.string(n) or nil
end

-- Waits for a call inside to end, then closes the state; idempotent.
function State:close()
    local L = C.lja_state_close(self, -1)
    if L ~= nil then
        vm.close(L)
    elseif C.lja_state_lua(self) ~= nil then   -- still open: a cancel, or the call inside is ours
        shim.check_cancel()
        error("lj-async: a state cannot be closed from inside its own call", 2)
    end
end

-- Makes the call running inside raise "interrupted" at its next hook check
-- (interpreted code; a compiled loop that calls nothing is not reached).
-- Returns true if a call was inside.
function State:interrupt()
    local rc = C.lja_state_interrupt(self)
    if rc == LJA_ECLOSED then error("lj-async: state is closed", 2) end
    return rc == LJA_OK
end

-- state.new([name,] setup, ...).  A string first argument is the name when
-- a setup (function or string) or nil follows it, or when it is no Lua
-- source itself; a nil first argument followed by more is "no name".
function M.new(...)
    local nargs = select("#", ...)
    local first, second = ...
    local name, at = nil, 1   -- at: the setup's argument number
    if nargs >= 2 and first == nil then
        at = 2
    elseif nargs >= 2 and type(first) == "string" then
        local ts = type(second)
        if ts == "function" or ts == "string" or second == nil or not pcall(transfer.code_of, first, 1) then
            name, at = first, 2
        end
    end
    local ok, code = pcall(transfer.code_of, (select(at, ...)), 1)
    if not ok then
        error(("lj-async: state.new: bad setup (argument %d%s): %s"):format(at,
            name and ", after the name '" .. name .. "'" or "", (code:gsub("^lj%-async: ", ""))), 2)
    end
    local args
    ok, args = pcall(transfer.encode_string_after, 1, nargs - at + 1, code, select(at + 1, ...))
    if not ok then error(args, 2) end
    local L
    ok, L = pcall(vm.new, BOOT, args)
    if not ok then error(L, 2) end
    local st = wrap(C.lja_state_new(L))
    if st == nil then
        vm.close(L)
        error("lj-async: cannot make a state (out of memory)", 2)
    end
    if name and C.lja_object_set_name(st, name) ~= LJA_OK then
        st:close()
        error("lj-async: a state named '" .. name .. "' exists already", 2)
    end
    return st
end

-- The state of an id or a name; a closed state's name is free (README).
function M.get(id_or_name)
    local st, err
    if type(id_or_name) == "string" then
        st = wrap(C.lja_object_find(id_or_name, C.LJA_KIND_STATE))
        if st == nil then err = "lj-async: no state named '" .. id_or_name .. "'" end
    else
        st, err = object.find(wrap, C.LJA_KIND_STATE, "state", id_or_name)
    end
    if st ~= nil and C.lja_state_lua(st) == nil then
        st, err = nil, "lj-async: state " .. st:id() .. " is closed"
    end
    if st == nil then error(err, 2) end
    return st
end

return M
