-- ltask: the service API (SPEC section 7), and the runtime under it.
--
-- A service is a lua_State; the scheduler (csrc/sched.c) runs it on a
-- worker by calling registry["ltask.dispatch"], which handles up to `batch`
-- messages: each request, send and fork runs in a coroutine of its own
-- (coroutines are pooled), and a coroutine that calls, sleeps or waits is
-- suspended until its reply, timer or wakeup arrives.  The functions here
-- that wait must run in those coroutines (handlers, the service's file,
-- forks, timeouts), not in coroutines of the user's own.
--
-- Errors: bad arguments raise; call raises the remote error; call_timeout
-- returns nil, "timeout"; send returns false when the target is gone.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local core = require "ltask.core"
local transfer = require "lj-async.transfer"

local C = core.C
local type, select, error, tostring, pcall, xpcall = type, select, error, tostring, pcall, xpcall
local co_create, co_resume, co_yield, co_running = coroutine.create, coroutine.resume, coroutine.yield, coroutine.running
local concat, format = table.concat, string.format
local encode_after, decode = transfer.encode_after, transfer.decode
local objs_array, forget_exported, drop_exported = transfer.objs_array, transfer.forget_exported,
    transfer.drop_exported
local send_c, pop_c, free_c, timer_c = C.lja_sched_send, C.lja_sched_pop, C.lja_sched_msg_free, C.lja_sched_timer

local REQUEST, POST, RESPONSE, ERROR = C.LJA_SMSG_REQUEST, C.LJA_SMSG_POST, C.LJA_SMSG_RESPONSE, C.LJA_SMSG_ERROR
local DEAD, TIMER, ROOM, KILL, NAME = C.LJA_SMSG_DEAD, C.LJA_SMSG_TIMER, C.LJA_SMSG_ROOM, C.LJA_SMSG_KILL, C.LJA_SMSG_NAME
local INIT = C.LJA_SMSG_INIT
local OK, EAGAIN, ECLOSED, ENOTFOUND = C.LJA_OK, C.LJA_EAGAIN, C.LJA_ECLOSED, C.LJA_ENOTFOUND
local DISPATCH_WAIT, DISPATCH_AGAIN, DISPATCH_QUIT = 0, 1, 2

local ltask = {}
ltask._VERSION = shim.VERSION

local sched, self_addr, service_name, service_file, config
local handlers          -- the table the service's file returned, or nil
local started, quitting = false, false
local session_seq = 0
local waiting = {}      -- session -> coroutine waiting for a reply, timer or name
local timeouts = {}     -- session -> function of ltask.timeout
local room_wait = {}    -- address -> coroutines waiting (in order) for room in its inbox
local tokens = {}       -- token -> coroutine in ltask.wait
local ready, ready_args = {}, {}   -- coroutines to resume, and what with
local inflight = {}     -- coroutine -> caller of the request it serves
local inflight_session = {}
local pending = 0       -- suspended coroutines and unfired timeouts

local function addr_text(addr)
    return format(":%08x", addr)
end

local function who()
    return "service '" .. tostring(service_name) .. "' " .. addr_text(self_addr or 0)
end

function ltask.log(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    local s = concat(parts, "\t")
    C.lja_sched_log(sched, self_addr or 0, s, #s)
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

local function resume(co, ...)
    local ok, err = co_resume(co, ...)
    if not ok then log("ltask: a coroutine of " .. who() .. " failed: " .. tostring(err)) end
end

local function resumed(...)
    pending = pending - 1
    return ...
end

-- Suspends the running coroutine until the runtime resumes it; returns
-- what it is resumed with (a message type first).
local function suspend()
    pending = pending + 1
    return resumed(co_yield())
end

local function in_service(level)
    if not sched then
        error("ltask: this function works only inside a service", level + 1)
    end
end

local function next_session()
    session_seq = session_seq < 0x7ffffffe and session_seq + 1 or 1
    return session_seq
end

local function check_addr(addr, level)
    if type(addr) ~= "number" or addr < 1 or addr % 1 ~= 0 then
        error("ltask: bad service address " .. tostring(addr), level + 1)
    end
end

-- ---- sending -------------------------------------------------------------

local EMPTY = {}

local function wait_room(to)
    local list = room_wait[to]
    if not list then
        list = {}
        room_wait[to] = list
    end
    list[#list + 1] = co_running()
    suspend()
end

-- Sends a request or post, waiting while `to`'s inbox is full; true when
-- sent, false when `to` is gone.  `hidden` values lead the message.
local function deliver(to, kind, session, hidden, level, n, ...)
    local ok, p, len = pcall(encode_after, hidden, n, ...)
    if not ok then error(p, level + 1) end   -- names what cannot cross
    local rc = EAGAIN
    if not room_wait[to] then   -- else queue behind this service's earlier senders to `to`
        local objs, nobjs = objs_array()
        rc = send_c(sched, self_addr, to, kind, session, p, len, objs, nobjs)
        if rc == OK then
            if nobjs > 0 then forget_exported() end   -- the message holds them now
            return true
        end
    end
    if rc == EAGAIN then   -- other coroutines encode while this one waits
        local bytes, saved = ffi.string(p, len), transfer.take_exported()
        repeat
            wait_room(to)
            local objs, nobjs = objs_array(saved or EMPTY)
            rc = send_c(sched, self_addr, to, kind, session, bytes, #bytes, objs, nobjs)
        until rc ~= EAGAIN
        if rc == OK then return true end
        transfer.release(saved)
    else
        drop_exported()
    end
    if rc == ECLOSED then return false end
    error("ltask: cannot send to " .. addr_text(to) .. ": " .. shim.strerror(rc), level + 1)
end

-- Replies and other messages that are never refused for room.
local function reply(to, kind, session, n, ...)
    local ok, p, len = pcall(encode_after, 0, n, ...)
    if not ok then
        kind = ERROR
        p, len = encode_after(0, 1, "ltask: the results of " .. who() .. " cannot cross: " .. tostring(p))
    end
    if send_c(sched, self_addr, to, kind, session, p, len, objs_array()) == OK then
        forget_exported()
    else
        drop_exported()   -- the caller is gone
    end
end

-- ---- requests ------------------------------------------------------------

local function traceback(e)
    return debug.traceback(tostring(e), 2)
end

local function answer(kind, from, session, cmd, ok, ...)
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

local function serve(kind, from, session, cmd, ...)
    local co = co_running()
    if kind == REQUEST then
        inflight[co], inflight_session[co] = from, session
    end
    local f = handlers and handlers[cmd]
    if type(f) ~= "function" then
        answer(kind, from, session, cmd, false, "ltask: unknown command '" .. tostring(cmd) .. "' in " .. who())
    else
        answer(kind, from, session, cmd, xpcall(f, traceback, ...))
    end
    inflight[co], inflight_session[co] = nil, nil
end

-- The first message: run the service's file with the spawner's arguments.
-- The scheduler holds the requests and posts sent meanwhile until the file
-- has returned its handlers.  The spawner is answered like a caller ("dead"
-- if the service quits while its file waits).
local function init(from, session, name, file, code, ...)
    local co = co_running()
    inflight[co], inflight_session[co] = from, session
    service_name, service_file = name, file
    local main, err = load(code, "@" .. file)
    local ok, result
    if main then
        ok, result = xpcall(main, traceback, ...)
    else
        ok, result = false, err
    end
    inflight[co], inflight_session[co] = nil, nil
    started = true
    if ok then
        handlers = type(result) == "table" and result or nil
        C.lja_sched_started(sched, self_addr)
        if from >= 1 then reply(from, RESPONSE, session, 0) end
    else
        log("ltask: " .. who() .. " failed to start: " .. tostring(result))
        if from >= 1 then reply(from, ERROR, session, 1, tostring(result)) end
        quitting = true
    end
end

-- ---- the dispatch loop ---------------------------------------------------

local function free_after(m, n, ...)
    free_c(m)
    return ...
end

local function open(m)
    return free_after(m, decode(m.data, m.len))
end

local function wake(session, ...)
    local co = waiting[session]
    if co then
        waiting[session] = nil
        resume(co, ...)
    end
end

local function run_timeout(f)
    local ok, err = xpcall(f, traceback)
    if not ok then log("ltask: error in a timeout of " .. who() .. ": " .. tostring(err)) end
end

local function handle(m)
    local kind, from, session = m.type, m.from, m.session
    if kind == REQUEST or kind == POST then   -- served on the running message loop
        return serve(kind, from, session, open(m))
    elseif kind == INIT then
        return init(from, session, open(m))
    elseif kind == RESPONSE or kind == ERROR then
        if waiting[session] then return wake(session, kind, open(m)) end
    elseif kind == TIMER then
        if waiting[session] then
            wake(session, TIMER)
        else
            local f = timeouts[session]
            if f then
                timeouts[session] = nil
                pending = pending - 1
                resume(new_task(), run_timeout, f)
            end
        end
    elseif kind == DEAD or kind == NAME then
        wake(session, kind, from)
    elseif kind == ROOM then
        local list = room_wait[from]
        room_wait[from] = nil
        if list then
            for i = 1, #list do resume(list[i], ROOM) end
        end
    elseif kind == KILL then
        quitting = true
    end
    free_c(m)
end

local function finish()
    for co, from in pairs(inflight) do
        if from >= 1 then send_c(sched, self_addr, from, DEAD, inflight_session[co], nil, 0, nil, 0) end
    end
    return DISPATCH_QUIT
end

-- Messages are handled on a loop coroutine, one after another, without a
-- coroutine switch each: a handler that returns lets the loop go on.  A
-- handler that waits keeps that coroutine (and finishes on it later); the
-- dispatcher starts another loop for the rest.
local loop_co       -- the coroutine running the message loop, or nil
local batch_m       -- the next message of the batch
local LOOP_DONE = {}

local function message_loop()
    local me = co_running()
    while loop_co == me and not quitting do
        local m = batch_m
        if m == nil then
            co_yield(LOOP_DONE)   -- resumed with the next batch
        else
            batch_m = m.next
            handle(m)
        end
    end
end

local function dispatch()
    if not self_addr then self_addr = C.lja_sched_self() end
    batch_m = pop_c(sched, self_addr, config.batch)
    while batch_m ~= nil and not quitting do
        local ok, r
        if loop_co == nil then
            loop_co = new_task()
            ok, r = co_resume(loop_co, message_loop)
        else
            ok, r = co_resume(loop_co)
        end
        if not ok then log("ltask: the message loop of " .. who() .. " failed: " .. tostring(r)) end
        if r ~= LOOP_DONE then loop_co = nil end   -- a handler waits on it, or it ended
    end
    local m = batch_m
    batch_m = nil
    while m ~= nil do   -- popped after a quit: never served
        local next_m = m.next
        if (m.type == REQUEST or m.type == INIT) and m.from >= 1 then
            send_c(sched, self_addr, m.from, DEAD, m.session, nil, 0, nil, 0)
        end
        free_c(m)
        m = next_m
    end
    local n = #ready
    if n > 0 and not quitting then
        -- What forks and wakeups add now runs at the next dispatch.
        local list, args = ready, ready_args
        ready, ready_args = {}, {}
        for i = 1, n do
            if quitting then break end
            local a = args[i]
            resume(list[i], unpack(a, 1, a.n))
        end
    end
    if quitting or (started and handlers == nil and pending == 0 and #ready == 0) then
        return finish()
    end
    return #ready > 0 and DISPATCH_AGAIN or DISPATCH_WAIT
end

-- ---- the API -------------------------------------------------------------

function ltask.self()
    return self_addr
end

function ltask.now()
    return core.wallclock()
end

local function call_result(addr, cmd, kind, ...)
    if kind == RESPONSE then return ... end
    if kind == ERROR then
        error(tostring((...)) .. "\n" .. debug.traceback("ltask: raised by call(" .. addr_text(addr)
            .. ", '" .. tostring(cmd) .. "') in " .. who(), 3), 0)
    end
    error("ltask: call(" .. addr_text(addr) .. ", '" .. tostring(cmd) .. "'): the service is dead", 3)
end

function ltask.call(addr, cmd, ...)
    in_service(2)
    check_addr(addr, 2)
    local session = next_session()
    if not deliver(addr, REQUEST, session, 1, 2, select("#", ...) + 1, cmd, ...) then
        error("ltask: call(" .. addr_text(addr) .. ", '" .. tostring(cmd) .. "'): the service is dead", 2)
    end
    waiting[session] = co_running()
    return call_result(addr, cmd, suspend())
end

local function timer(cs, session, level)
    if type(cs) ~= "number" or cs ~= cs then error("ltask: a time must be a number of centiseconds", level + 1) end
    local rc = timer_c(sched, self_addr, session, cs / 100)
    if rc ~= OK then error("ltask: cannot set a timer: " .. shim.strerror(rc), level + 1) end
end

function ltask.call_timeout(cs, addr, cmd, ...)
    in_service(2)
    check_addr(addr, 2)
    local session, tsession = next_session(), next_session()
    timer(cs, tsession, 2)
    if not deliver(addr, REQUEST, session, 1, 2, select("#", ...) + 1, cmd, ...) then
        error("ltask: call(" .. addr_text(addr) .. ", '" .. tostring(cmd) .. "'): the service is dead", 2)
    end
    local co = co_running()
    waiting[session], waiting[tsession] = co, co
    return (function(kind, ...)
        if kind == TIMER then
            waiting[session] = nil   -- a late reply is dropped
            return nil, "timeout"
        end
        waiting[tsession] = nil
        return call_result(addr, cmd, kind, ...)
    end)(suspend())
end

function ltask.send(addr, cmd, ...)
    in_service(2)
    check_addr(addr, 2)
    return deliver(addr, POST, 0, 1, 2, select("#", ...) + 1, cmd, ...)
end

function ltask.sleep(cs)
    in_service(2)
    local session = next_session()
    timer(cs, session, 2)
    waiting[session] = co_running()
    suspend()
end

function ltask.timeout(cs, f)
    in_service(2)
    if type(f) ~= "function" then error("ltask: timeout needs a function", 2) end
    local session = next_session()
    timer(cs, session, 2)
    timeouts[session] = f
    pending = pending + 1
end

local function pack(...)
    return { n = select("#", ...), ... }
end

function ltask.fork(f, ...)
    in_service(2)
    if type(f) ~= "function" then error("ltask: fork needs a function", 2) end
    ready[#ready + 1] = new_task()
    ready_args[#ready] = pack(function(...)
        local ok, err = xpcall(f, traceback, ...)
        if not ok then log("ltask: error in a fork of " .. who() .. ": " .. tostring(err)) end
    end, ...)
end

function ltask.wait(token)
    in_service(2)
    local co = co_running()
    if token == nil then token = co end
    if tokens[token] then error("ltask: something already waits for this token", 2) end
    tokens[token] = co
    return select(2, suspend())
end

function ltask.wakeup(token, ...)
    local co = tokens[token]
    if not co then return false end
    tokens[token] = nil
    ready[#ready + 1] = co
    ready_args[#ready] = pack(true, ...)
    return true
end

function ltask.quit()
    in_service(2)
    quitting = true
end

function ltask.kill(addr)
    in_service(2)
    check_addr(addr, 2)
    if addr == self_addr then
        quitting = true
        return true
    end
    return C.lja_sched_kill(sched, addr) == OK
end

-- opts: { name = ..., args = {...}, exclusive = true, inbox = n }; raises at `level`.
local function spawn_service(opts, level)
    level = level + 1
    in_service(level)
    if type(opts) ~= "table" then error("ltask: spawn_service takes a table", level) end
    local args = opts.args or {}
    if type(args) ~= "table" then error("ltask: spawn_service: args must be a list", level) end
    local inbox = opts.inbox
    if inbox ~= nil and not core.is_count(inbox, core.MAX.inbox) then
        error(format("ltask: spawn_service: inbox must be a positive integer up to %d", core.MAX.inbox), level)
    end
    local addr, file, code = core.new_service(sched, config, opts.name, opts.exclusive, inbox, level)
    local session = next_session()
    local n = args.n or #args
    local died = "ltask: service '" .. opts.name .. "' died before it started"
    if not deliver(addr, INIT, session, 3, level, n + 3, opts.name, file, code, unpack(args, 1, n)) then
        error(died, level)
    end
    waiting[session] = co_running()
    local kind, err = suspend()
    if kind == RESPONSE then return addr end
    if kind == DEAD then error(died, level) end
    error("ltask: service '" .. opts.name .. "' failed to start: " .. tostring(err), level)
end

-- (Not tail calls: the error level counts these frames.)
function ltask.spawn_service(opts)
    local addr = spawn_service(opts, 2)
    return addr
end

function ltask.spawn(name, ...)
    local addr = spawn_service({ name = name, args = pack(...) }, 2)
    return addr
end

local addr_out = ffi.new("double[1]")

-- The address bound to `name`, waiting until it is; raises at `level` if
-- the spawn for it failed (now or before).
local function query(name, level)
    level = level + 1
    local session = next_session()
    local rc = C.lja_sched_name_query(sched, name, self_addr, session, addr_out)
    if rc == OK then return addr_out[0] end
    if rc == EAGAIN then
        waiting[session] = co_running()
        local _, addr = suspend()
        if addr >= 1 then return addr end
    elseif rc ~= ENOTFOUND then
        error("ltask: queryservice: " .. shim.strerror(rc), level)
    end
    error("ltask: service '" .. name .. "' failed to start", level)
end

local function check_name(name, level)
    in_service(level + 1)
    if type(name) ~= "string" then error("ltask: a service name must be a string", level + 1) end
end

function ltask.queryservice(name)
    check_name(name, 2)
    local addr = query(name, 2)
    return addr
end

function ltask.uniqueservice(name, ...)
    check_name(name, 2)
    if C.lja_sched_name_query(sched, name, 0, 0, addr_out) == OK then return addr_out[0] end
    if C.lja_sched_name_claim(sched, name, self_addr) ~= OK then   -- another spawns it
        local addr = query(name, 2)
        return addr
    end
    local ok, addr = pcall(spawn_service, { name = name, args = pack(...) }, 1)
    C.lja_sched_name_bind(sched, name, ok and addr or 0)
    if not ok then error(addr, 2) end
    return addr
end

-- Back to a state that never ran a service, for the next one.
local function clear()
    self_addr, service_name, service_file, handlers = nil, nil, nil, nil
    started, quitting, pending = false, false, 0
    waiting, timeouts, room_wait, tokens = {}, {}, {}, {}
    ready, ready_args, inflight, inflight_session = {}, {}, {}, {}
    loop_co, batch_m = nil, nil
end

-- Called by the service's boot chunk (ltask.core) in a new state.
function ltask._boot()
    sched, config = core.sched, core.config
    _G.print = log
    local registry = debug.getregistry()
    registry["ltask.dispatch"] = dispatch
    local restore = require("lj-async.reset").snapshot()
    registry["ltask.recycle"] = function()
        clear()
        return restore()
    end
end

return ltask
