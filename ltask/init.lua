-- ltask: the service API (README "ltask"), and the runtime under it in
-- each service's state.
--
-- A worker (ltask/worker.lua) runs a service by calling its dispatch,
-- which handles up to `batch` messages: requests and sends are served one
-- after another on a message-loop coroutine; a handler that waits keeps
-- that coroutine and the loop goes on in another.  Forks and timeouts get
-- coroutines of their own (all pooled).  A coroutine that calls, sleeps or
-- waits is suspended until its reply, timer or wakeup arrives.  The
-- functions here that wait must run in those coroutines (handlers, the
-- service's file, forks, timeouts), not in coroutines of the user's own.
--
-- An exclusive service that loads lj-async.asio runs its loop: the
-- runtime is asio's driver (its waits suspend these coroutines, its light
-- threads are forks) and its thread waits in epoll on the service's sockets
-- and its inbox together (the inbox signals asio's eventfd).
--
-- Errors: bad arguments raise; call raises the remote error; call_timeout
-- returns nil, "timeout"; send returns false when the target is gone.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local core = require "ltask.core"
local transfer = require "lj-async.transfer"

local C = core.C
-- Locals cache what the message path calls; colder code looks its functions
-- up (a cached local is an upvalue, ~56 bytes, in every service's state).
local type, select, tostring, pcall = type, select, tostring, pcall
local co_create, co_resume, co_yield, co_running = coroutine.create, coroutine.resume, coroutine.yield, coroutine.running
local encode_after, decode = transfer.encode_after, transfer.decode
local objs_array, forget_exported = transfer.objs_array, transfer.forget_exported
local send_c, pop_c, free_c, rest_c = C.lja_sched_send, C.lja_sched_pop, C.lja_sched_msg_free, C.lja_sched_rest
local schedule, signal, refuse_list = core.schedule, core.signal, core.refuse_list

local REQUEST, POST, RESPONSE, ERROR = C.LJA_SMSG_REQUEST, C.LJA_SMSG_POST, C.LJA_SMSG_RESPONSE, C.LJA_SMSG_ERROR
local KILL = C.LJA_SMSG_KILL
local INIT = C.LJA_SMSG_INIT
local WOKE = C.LJA_SCHED_WOKE
local DISPATCH_WAIT, DISPATCH_AGAIN, DISPATCH_QUIT = core.DISPATCH_WAIT, core.DISPATCH_AGAIN, core.DISPATCH_QUIT

local ltask = {}
ltask._VERSION = shim.VERSION

local sched, config

-- The runtime of the service this state runs, made anew for each service
-- (a recycled state serves another) in one table that ltask/api.lua keeps.
-- Fields that start nil or false are left out of the constructor (a table
-- of 16 slots, not 32, in every service):
--   self      this service's address
--   name, handlers (the table the service's file returned, or nil)
--   started, quitting
--   early     requests and posts popped while the file waits (ltask/api.lua)
--   kind, cmd of the message the loop serves (below)
--   loop_co   the coroutine running the message loop
--   io        lj-async.asio's loop in an exclusive service: { pump =, close = }
--   io_busy   its light threads or servers keep the service alive
local function new_runtime()
    return {
        slot = -1,           -- the next slot of the worker running it (ltask.core.schedule)
        session = 0,
        waiting = {},        -- session -> coroutine waiting for a reply, timer or name
        timeouts = {},       -- session -> function of ltask.timeout
        room_wait = {},      -- address -> coroutines waiting (in order) for room in its inbox
        tokens = {},         -- token -> coroutine in ltask.wait
        ready = {}, ready_args = {},   -- coroutines to resume, and what with
        -- The message the message loop serves now (serving: its serial, 0
        -- for none); a handler's error answers it.  When its handler waits,
        -- it moves to `held` under the handler's coroutine.
        serial = 0, serving = 0, from = 0, in_session = 0,
        held = {},           -- coroutine -> { kind, from, session, cmd } it serves
        pending = 0,         -- suspended coroutines and unfired timeouts
        claims = 0,          -- names this service spawns for uniqueservice
    }
end
local R = new_runtime()
local function reset_runtime()
    require("table.clear")(R)
    for k, v in pairs(new_runtime()) do R[k] = v end
end

local function addr_text(addr)
    return (":%08x"):format(addr)
end

local function who()
    return "service '" .. tostring(R.name) .. "' " .. addr_text(R.self or 0)
end

function ltask.log(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    core.log(R.self or 0, table.concat(parts, "\t"))
end
local log = ltask.log

-- ---- coroutines --------------------------------------------------------

local pool = {}
local EXIT = {}

local function task(f, ...)
    f(...)
    pool[#pool + 1] = co_running()
    return task(co_yield(EXIT))
end

local function new_task()
    local n = #pool
    if n == 0 then return co_create(task) end
    local co = pool[n]
    pool[n] = nil
    return co
end

local answer, failed   -- (below)

local function resume(co, ...)
    local ok, err = co_resume(co, ...)
    if not ok then failed(co, err) end
end

-- Replies and other messages that are never refused for room.
local function reply(to, kind, session, n, ...)
    local ok, p, len = pcall(encode_after, 0, n, ...)
    if not ok then
        kind = ERROR
        p, len = encode_after(0, 1, "ltask: the results of " .. who() .. " cannot cross: " .. tostring(p))
    end
    local objs, nobjs = objs_array()
    forget_exported()   -- the send takes them, sent or not (the caller may be gone)
    if send_c(sched, R.self, to, kind, session, p, len, objs, nobjs) == WOKE then
        schedule(sched, to, R.slot)
    end
end

-- ---- requests ------------------------------------------------------------

local function traceback(e)
    return debug.traceback(tostring(e), 2)
end

function answer(kind, from, session, cmd, ok, ...)
    if kind == REQUEST then
        if ok then
            reply(from, RESPONSE, session, select("#", ...), ...)
        else
            reply(from, ERROR, session, 1, (...))
        end
    elseif not ok then
        log("ltask: error in send '" .. tostring(cmd) .. "' to " .. who() .. ": " .. tostring((...)))
    end
end

-- Message `serial` is served: the loop's, or a held coroutine's (its
-- handler waited; it may finish while the loop serves another).
local function serving(r, kind, from, session, cmd)
    local serial = r.serial + 1
    r.serial, r.serving = serial, serial
    r.kind, r.from, r.in_session, r.cmd = kind, from, session, cmd
    return serial
end

local function served(r, serial)
    if r.serving == serial then
        r.serving, r.kind, r.cmd = 0, nil, nil
    else
        r.held[co_running()] = nil
    end
end

-- The loop's message, taken from it (its handler waits or failed).
local function take_serving(r)
    local h = { r.kind, r.from, r.in_session, r.cmd }
    r.serving, r.kind, r.cmd = 0, nil, nil
    return h
end

-- A handler is called directly, not under xpcall: its error kills the
-- coroutine that serves it (the loop, which the dispatcher replaces), and
-- `failed` answers the message from that coroutine's stack.  So a handler
-- returns into compiled code (a return into xpcall ends a trace).
local function serve(kind, from, session, cmd, ...)
    local r = R
    local serial = serving(r, kind, from, session, cmd)
    local handlers = r.handlers
    local f = handlers and handlers[cmd]
    if type(f) ~= "function" then
        answer(kind, from, session, cmd, false, "ltask: unknown command '" .. tostring(cmd) .. "' in " .. who())
    else
        answer(kind, from, session, cmd, true, f(...))
    end
    served(r, serial)
end

-- Coroutine co raised err: the message it served is answered with the
-- error and its traceback, else the error is logged.
function failed(co, err)
    local r = R
    local h = r.held[co]
    if h then
        r.held[co] = nil
    elseif r.serving ~= 0 and co == r.loop_co then
        h = take_serving(r)
    end
    if h and h[1] ~= INIT then
        answer(h[1], h[2], h[3], h[4], false, debug.traceback(co, tostring(err)))
    else
        log("ltask: a coroutine of " .. who() .. " failed: " .. tostring(err))
    end
end

-- The messages popped and not yet handled (head, tail), linked through
-- next.  A cdata, not the runtime's: a pointer stored in a table is boxed,
-- a garbage object per message.
local taken = ffi.new("lja_smsg *[2]")
-- This dispatch's: messages it may still handle, and the requests and
-- posts it handled (which the scheduler then stops counting against the
-- inbox's capacity).
local budget, handled = 0, 0

-- The rest of the API (ltask/api.lua) loads when a service first uses a
-- function of it; what it returns is lj-async.asio's driver for an
-- exclusive service.
local asio_driver, other, unhold
local open   -- (below)
local function load_api()
    if not asio_driver then
        local rt = { R = R, sched = sched, config = config, resume = resume, new_task = new_task, who = who,
            addr_text = addr_text, log = log, traceback = traceback, open = open, taken = taken }
        asio_driver = require("ltask.api")(ltask, rt)
        other, unhold = rt.other, rt.unhold
        setmetatable(ltask, nil)
    end
    return asio_driver
end
setmetatable(ltask, { __index = function(t, k)
    load_api()
    return rawget(t, k)
end })

-- The first message: run the service's file with the spawner's arguments.
-- The requests and posts popped while it waits are held (ltask/api.lua's
-- other and unhold) until it has returned its handlers.  The spawner is
-- answered like a caller ("dead" if the service quits while its file waits).
local function init(from, session, name, file, code, exclusive, ...)
    local r = R
    local serial = serving(r, INIT, from, session, nil)
    r.name = name
    package.loaded["lj-async.asio.driver"] = exclusive and load_api() or nil
    local main, err = load(code, "@" .. file)
    local ok, result
    if main then
        ok, result = xpcall(main, traceback, ...)
    else
        ok, result = false, err
    end
    served(r, serial)
    r.started = true
    if r.early then unhold(r) end
    if ok then
        r.handlers = type(result) == "table" and result or nil
        if from >= 1 then reply(from, RESPONSE, session, 0) end
    else
        log("ltask: " .. who() .. " failed to start: " .. tostring(result))
        if from >= 1 then reply(from, ERROR, session, 1, tostring(result)) end
        r.quitting = true
    end
end

-- ---- the dispatch loop ---------------------------------------------------

local function free_after(m, n, ...)
    free_c(m)
    return ...
end

function open(m)
    return free_after(m, decode(m.data, m.len))
end

local function handle(m)
    local kind, from, session = m.type, m.from, m.session
    if (kind == REQUEST or kind == POST) and R.started then   -- served on the running message loop
        handled = handled + 1
        return serve(kind, from, session, open(m))
    elseif kind == INIT then
        return init(from, session, open(m))
    elseif kind == KILL then
        R.quitting = true
    else   -- replies, timers, names, room, and what comes while the file waits: only to
        -- a service that used ltask/api.lua
        if not other then load_api() end
        return other(m)
    end
    free_c(m)
end

-- The service's sockets close when it quits or is killed; its eventfd is
-- taken from the scheduler first.
local function close_io()
    local io = R.io
    if io then
        R.io = nil
        C.lja_sched_wake_fd(sched, R.self, -1)
        io.close()
    end
end

-- What it popped and will never serve is refused; what it holds is
-- answered "dead".
local function finish()
    local r = R
    if r.early then unhold(r) end
    local m = taken[0]
    taken[0] = nil
    refuse_list(sched, r.self, m, r.slot)
    close_io()
    for _, h in pairs(r.held) do
        if h[1] ~= POST and h[2] >= 1 then signal(sched, r.self, h[2], C.LJA_SMSG_DEAD, h[3], r.slot) end
    end
    if r.claims > 0 then core.system(core.SYS_DROP, r.self, 0, nil) end   -- those names fail
    r.self = nil   -- done (ltask.recycle calls it if the dispatch raised)
    return DISPATCH_QUIT
end

-- Messages are handled on a loop coroutine, one after another, without a
-- coroutine switch each: a handler that returns lets the loop go on.  A
-- handler that waits keeps that coroutine (and finishes on it later); the
-- dispatcher starts another loop for the rest.
local LOOP_DONE = {}

local function message_loop()
    local me, r = co_running(), R
    while r.loop_co == me and not r.quitting do
        local m = taken[0]
        if m == nil or budget == 0 then
            co_yield(LOOP_DONE)   -- resumed with the next batch
        else
            taken[0] = m.next
            budget = budget - 1
            handle(m)
        end
    end
end

local waiters_out = ffi.new("lja_smsg *[1]")

-- A service with no handlers ends once nothing of it waits or runs.
local function idle_end(r)
    return r.started and r.handlers == nil and r.pending == 0 and #r.ready == 0 and not r.io_busy
end

-- Runs the batch's messages on the message loop, which returns (LOOP_DONE)
-- when it is done or gives up its coroutine to a handler that waits (then
-- another loop goes on).  A tail call, not a loop: the dispatch is entered
-- from C each time, and a loop in it would abort its trace.
local function run_batch(r)
    local co, ok, res = r.loop_co, nil, nil
    if co == nil then
        co = new_task()
        r.loop_co = co
        ok, res = co_resume(co, message_loop)
    else
        ok, res = co_resume(co)
    end
    if not ok then
        failed(co, res)
    elseif r.serving ~= 0 then   -- its handler waits: the coroutine holds the message
        r.held[co] = take_serving(r)
    end
    if res ~= LOOP_DONE then r.loop_co = nil end   -- a handler waits on it, or it ended
    if taken[0] ~= nil and budget > 0 and not r.quitting then return run_batch(r) end
end

-- Called by the worker (ltask/worker.lua) with this service's address and
-- the worker's next slot (-1: none); returns a DISPATCH_ code and how many
-- requests and posts it handled.
local function dispatch(self_addr, slot)
    local r = R
    r.self, r.slot = self_addr, slot
    pop_c(sched, self_addr, taken, waiters_out)
    if waiters_out[0] ~= nil then refuse_list(sched, self_addr, waiters_out[0], slot) end   -- room
    budget = config.batch
    if taken[0] ~= nil and not r.quitting then run_batch(r) end
    local n = #r.ready
    if n > 0 and not r.quitting then
        -- What forks and wakeups add now runs at the next dispatch.
        local list, args = r.ready, r.ready_args
        r.ready, r.ready_args = {}, {}
        for i = 1, n do
            if r.quitting then break end
            local a = args[i]
            resume(list[i], unpack(a, 1, a.n))
        end
    end
    local io = r.io
    if io and not r.quitting then
        -- Runs what asio has ready; with nothing to do, the thread waits in
        -- epoll (marked idle, so that a message signals the eventfd).
        local busy, more = io.pump(false)
        r.io_busy = busy
        if not (more or r.quitting or #r.ready > 0 or idle_end(r) or taken[0] ~= nil) then
            local rc = rest_c(sched, self_addr, handled, 0, 0)
            handled = 0
            if rc ~= WOKE then r.io_busy = io.pump(true) end
        end
    end
    local code = (r.quitting or idle_end(r)) and finish() or
        (taken[0] ~= nil or #r.ready > 0 or io) and DISPATCH_AGAIN or DISPATCH_WAIT
    local n = handled   -- the worker tells the scheduler once it has left this state
    handled = 0
    return code, n
end

-- Called by the service's boot chunk (ltask.bootstrap) in a new state.  The
-- state can serve another service after this one quits only if it took a
-- snapshot of its globals now (lj-async.reset), which costs time and memory
-- (~50 us, ~20 KB): it does once services have been seen to quit (ltask/worker.lua),
-- so services that stay are lighter.
function ltask._boot()
    sched, config = core.sched, core.config
    _G.print = log
    local registry = debug.getregistry()
    registry["ltask.dispatch"] = dispatch
    local restore = core.quits_seen() and require("lj-async.reset").snapshot()
    registry["ltask.recycle"] = function()   -- back to a state that never ran a service
        if R.self then finish() end   -- its dispatch raised
        if not restore then return false end
        reset_runtime()
        local reusable = restore()
        jit.on()   -- the snapshot was taken with the JIT off (ltask.bootstrap)
        return reusable
    end
end

return ltask
