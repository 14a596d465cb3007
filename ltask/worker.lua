-- ltask.worker: the loops of ltask's threads (README "ltask").  Each
-- worker thread runs one small LuaJIT state with this loop; it runs
-- services, which are other lua_States, by calling their dispatch through
-- the Lua C API (ffi), always protected (lua_pcall): an error in a service
-- stays in its own state and never unwinds through this loop's trace.  The
-- loop never enters its own state through the C API.
--
-- Policy: a worker runs its next slot first (what the service it ran last
-- woke), then the run queue, then another worker's next slot; if all are
-- empty it spins briefly (csrc/sched.c), then parks.  A worker parks with a
-- deadline of STUCK seconds while another worker's next slot is taken (or
-- once after a service filled an empty slot nudged it): if that slot is
-- still taken when it looks again and its worker has started no dispatch
-- meanwhile, the slot waits behind a long dispatch and the idle worker
-- takes it.  A service that still has messages after its batch goes
-- to the end of the run queue, so a busy service shares the workers.
local ffi = require "ffi"
require "lj-async.vm"   -- declares lua_State and the C API it binds
local core = require "ltask.core"

ffi.cdef [[
void lua_pushvalue(lua_State *L, int idx);
void lua_pushnumber(lua_State *L, double n);
double lua_tonumber(lua_State *L, int idx);
int lua_gettop(lua_State *L);
int lua_type(lua_State *L, int idx);
void *lja_sched_state(lja_sched *s, double addr);
lja_smsg *lja_sched_close(lja_sched *s, double addr, void **L);
int64_t lja_sched_remove(lja_sched *s, double addr);
void lja_channel_close(lja_channel *ch);
double lja_sched_at(lja_sched *s, int64_t slot);
double lja_sched_next(lja_sched *s, double timeout);
int lja_sched_spin(lja_sched *s);
void lja_states_push(lja_states *st, void *L);
]]

local C, LC = core.C, ffi.C
local ffi_string = ffi.string
local pushvalue, pushnumber, pcall_c, tonumber_c = LC.lua_pushvalue, LC.lua_pushnumber, LC.lua_pcall, LC.lua_tonumber
local settop, gettop, getfield, tolstring, toboolean, type_c = LC.lua_settop, LC.lua_gettop, LC.lua_getfield,
    LC.lua_tolstring, LC.lua_toboolean, LC.lua_type
local state_c, rest_c, next_c, spin_c, cell_c = C.lja_sched_state, C.lja_sched_rest, C.lja_sched_next,
    C.lja_sched_spin, C.lja_sched_cell
local push_c = C.lja_sched_push
local AGAIN, QUIT = core.DISPATCH_AGAIN, core.DISPATCH_QUIT
local WOKE, KILL = C.LJA_SCHED_WOKE, C.LJA_SMSG_KILL
local signal = core.signal

local LUA_REGISTRYINDEX = -10000   -- lua.h of Lua 5.1, which LuaJIT keeps
local LUA_TSTRING = 4
local STUCK = 0.001   -- seconds a next slot may wait behind a running dispatch

local M = {}

-- Runs a service's dispatch in its state L; returns what it returned (a
-- DISPATCH_ code, the requests and posts it handled), or DISPATCH_QUIT, 0
-- and true if it raised (logged).  The state keeps its
-- dispatch function at stack index 1, fetched once per state.  The calls
-- outside lua_pcall cannot raise: a registry lookup of an interned key, a
-- few pushes (the C API leaves room for 20), a string read as it is.
local function dispatch(L, addr, slot)
    if gettop(L) == 0 then getfield(L, LUA_REGISTRYINDEX, "ltask.dispatch") end
    pushvalue(L, 1)
    pushnumber(L, addr)
    pushnumber(L, slot)
    local r, handled, raised = nil, 0, false
    if pcall_c(L, 2, 2, 0) == 0 then
        r, handled = tonumber_c(L, -2), tonumber_c(L, -1)
    else
        local why = type_c(L, -1) == LUA_TSTRING and ffi_string(tolstring(L, -1, nil)) or "(not a string)"
        core.log(addr, "service failed in its dispatch: " .. why)
        r, raised = QUIT, true
    end
    settop(L, 1)
    return r, handled, raised
end

local function kill_all(s)
    for slot = 1, core.MAX.max_services do
        local addr = C.lja_sched_at(s, slot)
        if addr < 0 then return end
        if addr > 0 then signal(s, 0, addr, KILL, 0, core.NO_SLOT) end
    end
end

local state_out = ffi.new("void *[1]")

-- A service quit: answer what it will never answer, keep or close its
-- state, free its slot; when root quits, every other service is killed.
-- A service that quit on its own has failed the names it was spawning
-- (ltask/init.lua); one whose dispatch raised could not: it is done here.
local function finish(s, addr, raised)
    local m = C.lja_sched_close(s, addr, state_out)
    local L = state_out[0]
    core.refuse_list(s, addr, m, core.NO_SLOT)
    core.saw_quit(s)   -- new states take a snapshot to be recycled (ltask/init.lua)
    if L ~= nil then
        settop(L, 1)
        getfield(L, LUA_REGISTRYINDEX, "ltask.recycle")
        if pcall_c(L, 0, 1, 0) == 0 and toboolean(L, -1) ~= 0 then
            settop(L, 1)
            C.lja_states_push(core.shared.states, L)
        else
            C.lja_lua_close(L)
        end
    end
    if raised then core.system(core.SYS_DROP, addr, 0, nil) end
    if C.lja_sched_remove(s, addr) == 0 then C.lja_channel_close(core.shared.done) end   -- (boot.wait)
    if addr == core.shared.root then kill_all(s) end
end
M.finish = finish

-- Runs one turn of a service on worker slot `slot`.
local function run(s, addr, slot)
    local L = state_c(s, addr)
    if L == nil then return end
    local r, handled, raised = dispatch(L, addr, slot)
    if r == QUIT then
        finish(s, addr, raised)
    elseif rest_c(s, addr, handled, r == AGAIN and 1 or 0, 0) == WOKE then   -- L is left: others may run it
        push_c(s, addr)
    end
end

-- The next service for worker `me` of n, or a negative number once the
-- scheduler shuts down.  seen[i]: worker i's dispatch count when its next
-- slot was last seen taken.
local function take_next(s, me, n, seen)
    local addr = cell_c(s, me, 0)
    if addr ~= 0 then return addr end
    local parked = false   -- after a park, only a slot stuck behind a long dispatch is taken
    local nudged = false   -- woken from a park with no deadline: watch for one STUCK at least
    while true do
        addr = next_c(s, 0)
        if addr ~= 0 then return addr end
        local watching = false
        for i = 0, n - 1 do
            if i ~= me and cell_c(s, i, -1) ~= 0 then
                local ticks = cell_c(s, n + i, -1)
                if not parked or seen[i] == ticks then
                    addr = cell_c(s, i, 0)
                    if addr ~= 0 then return addr end
                else
                    seen[i] = ticks
                    watching = true
                end
            end
        end
        if parked or spin_c(s) == 0 then
            local timed = watching or nudged
            addr = next_c(s, timed and STUCK or -1)
            if addr ~= 0 then return addr end
            parked, nudged = true, not timed
        end
    end
end

-- Counts, in stats, the traces the JIT completes from the start of
-- `loop` that link to themselves, and those it aborts there.  A worker
-- loop that falls off trace is many times slower; its thread returns these
-- counts (tests/test_ltask.lua checks them).
local function count_traces(stats, loop)
    if not (jit and jit.attach and jit.status()) then return end
    local util, started = require "jit.util", {}
    local function event(what, tr, func)
        if what == "start" then
            started[tr] = func == loop
        elseif what == "stop" and started[tr] then
            if util.traceinfo(tr).linktype == "loop" then stats.loops = stats.loops + 1 end
        elseif what == "abort" and started[tr] then
            stats.aborts = stats.aborts + 1
        end
    end
    jit.attach(event, "trace")
    return event
end

-- A worker thread's loop (started by ltask.bootstrap); returns its trace
-- counts.
local function worker(shared_arg, config_str, me)
    local stats = { loops = 0, aborts = 0 }
    local event = count_traces(stats, worker)
    core.attach(shared_arg, config_str)
    local s = core.sched
    local n = core.config.worker
    local seen, ticks = {}, 0
    for i = 0, n - 1 do seen[i] = -1 end
    while true do
        local addr = take_next(s, me, n, seen)
        if addr < 0 then break end
        ticks = ticks + 1
        cell_c(s, n + me, ticks)
        run(s, addr, me)
    end
    if event then jit.attach(event) end
    return stats
end
M.worker = worker

-- An exclusive service's thread (started by the system thread): runs it
-- until it quits, waiting on its inbox between dispatches.
function M.exclusive(shared_arg, config_str, addr)
    core.attach(shared_arg, config_str)
    local s = core.sched
    local L = state_c(s, addr)
    if L == nil then return end
    local r, handled, raised
    while true do
        r, handled, raised = dispatch(L, addr, core.NO_SLOT)
        if r == QUIT then break end
        rest_c(s, addr, handled, r == AGAIN and 1 or 0, 1)
    end
    finish(s, addr, raised)
end

return M
