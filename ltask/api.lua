-- ltask.api: the service API that sends, waits and spawns (README
-- "ltask"), loaded into a service's state the first time the service uses
-- it (ltask/init.lua): a service that only serves never loads it, and
-- stays smaller.  ltask/init.lua calls what this returns with the ltask
-- table to fill and its runtime.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local core = require "ltask.core"
local transfer = require "lj-async.transfer"

local C = core.C
local type, select, error, tostring, pcall, xpcall = type, select, error, tostring, pcall, xpcall
local co_running, co_yield = coroutine.running, coroutine.yield
local format = string.format
local encode_after, objs_array, take_exported = transfer.encode_after, transfer.objs_array, transfer.take_exported
local send_c = C.lja_sched_send
local schedule, signal, system = core.schedule, core.signal, core.system

local REQUEST, POST, RESPONSE, ERROR = C.LJA_SMSG_REQUEST, C.LJA_SMSG_POST, C.LJA_SMSG_RESPONSE, C.LJA_SMSG_ERROR
local DEAD, TIMER, KILL, INIT = C.LJA_SMSG_DEAD, C.LJA_SMSG_TIMER, C.LJA_SMSG_KILL, C.LJA_SMSG_INIT
local ROOM, NAME = C.LJA_SMSG_ROOM, C.LJA_SMSG_NAME
local free_c = C.lja_sched_msg_free
local OK, WOKE, EAGAIN, ECLOSED = C.LJA_OK, C.LJA_SCHED_WOKE, C.LJA_EAGAIN, C.LJA_ECLOSED

-- rt: the runtime's table (R, one for the life of the state), scheduler
-- and configuration (nil outside a service), and functions.
return function(ltask, rt)
    local R, sched, config = rt.R, rt.sched, rt.config
    local resume, new_task, who, addr_text, log, traceback, open =
        rt.resume, rt.new_task, rt.who, rt.addr_text, rt.log, rt.traceback, rt.open

    local function resumed(...)
        R.pending = R.pending - 1
        return ...
    end

    -- Suspends the running coroutine until the runtime resumes it; returns
    -- what it is resumed with (a message type first).
    local function suspend()
        R.pending = R.pending + 1
        return resumed(co_yield())
    end

    -- ---- what wakes the waits (messages only a service that used this API gets) ----

    local function wake(session, ...)
        local co = R.waiting[session]
        if co then
            R.waiting[session] = nil
            resume(co, ...)
        end
    end

    local function run_timeout(f)
        local ok, err = xpcall(f, traceback)
        if not ok then log("ltask: error in a timeout of " .. who() .. ": " .. tostring(err)) end
    end

    -- Requests and posts popped while the service's file waits are held
    -- in R.early (still counted against the inbox's capacity), and go back
    -- to the front of ltask/init.lua's list of popped messages once the file
    -- has returned (or failed: then they are refused).
    local taken = rt.taken
    function rt.unhold(r)
        local early = r.early
        r.early = nil
        for i = #early, 1, -1 do
            local m = early[i]
            if taken[0] == nil then taken[1] = m end
            m.next = taken[0]
            taken[0] = m
        end
    end

    -- Handles a reply, timer, name or room notice, or holds a request or
    -- post (ltask/init.lua's handle passes them on); frees the rest.
    function rt.other(m)
        local kind, from, session = m.type, m.from, m.session
        if kind == REQUEST or kind == POST then
            local early = R.early or {}
            R.early = early
            early[#early + 1] = m
            return
        elseif kind == RESPONSE or kind == ERROR then
            if R.waiting[session] then return wake(session, kind, open(m)) end
        elseif kind == TIMER then
            if R.waiting[session] then
                wake(session, TIMER)
            else
                local f = R.timeouts[session]
                if f then
                    R.timeouts[session] = nil
                    R.pending = R.pending - 1
                    resume(new_task(), run_timeout, f)
                end
            end
        elseif kind == DEAD or kind == NAME then
            wake(session, kind, from)
        elseif kind == ROOM then
            local list = R.room_wait[from]
            R.room_wait[from] = nil
            if list then   -- (the first apart: a loop of one turn would end the trace)
                resume(list[1], ROOM)
                for i = 2, #list do resume(list[i], ROOM) end
            end
        end
        free_c(m)
    end

    local function in_service(level)
        if not sched then
            error("ltask: this function works only inside a service", level + 1)
        end
    end

    local function next_session()
        local n = R.session < 0x7ffffffe and R.session + 1 or 1
        R.session = n
        return n
    end

    local function check_addr(addr, level)
        if type(addr) ~= "number" or addr < 1 or addr % 1 ~= 0 then
            error("ltask: bad service address " .. tostring(addr), level + 1)
        end
    end

    -- ---- sending -------------------------------------------------------------

    local function wait_room(to)
        local list = R.room_wait[to]
        if not list then
            list = {}
            R.room_wait[to] = list
        end
        list[#list + 1] = co_running()
        suspend()
    end

    local function retain_all(list)
        for i = 1, #list do C.lja_object_retain(list[i]) end
    end

    -- One try to send an encoded message; the send takes the references in
    -- `saved` whatever it returns, so it gets references of its own.
    local function try_send(to, kind, session, p, len, saved)
        local objs, nobjs = nil, 0
        if saved then
            retain_all(saved)
            objs, nobjs = objs_array(saved)
        end
        local rc = send_c(sched, R.self, to, kind, session, p, len, objs, nobjs)
        if rc == WOKE then
            schedule(sched, to, R.slot)
            return OK
        end
        return rc
    end

    -- Sends a request or post, waiting while `to`'s inbox is full; true when
    -- sent, false when `to` is gone.  `hidden` values lead the message.
    local function deliver(to, kind, session, hidden, level, n, ...)
        local ok, p, len = pcall(encode_after, hidden, n, ...)
        if not ok then error(p, level + 1) end   -- names what cannot cross
        local saved = take_exported()   -- references this sender holds until the message went
        local rc = EAGAIN
        if not R.room_wait[to] then   -- else queue behind this service's earlier senders to `to`
            rc = try_send(to, kind, session, p, len, saved)
        end
        if rc == EAGAIN then   -- other coroutines encode while this one waits
            local bytes = ffi.string(p, len)
            repeat
                wait_room(to)
                rc = try_send(to, kind, session, bytes, #bytes, saved)
            until rc ~= EAGAIN
        end
        transfer.release(saved)
        if rc == OK then return true end
        if rc == ECLOSED then return false end
        error("ltask: cannot send to " .. addr_text(to) .. ": " .. shim.strerror(rc), level + 1)
    end

    -- ---- the API -------------------------------------------------------------

    function ltask.self()
        return R.self
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
        R.waiting[session] = co_running()
        return call_result(addr, cmd, suspend())
    end

    local now = C.lja_now

    local function timer(cs, session, level)
        if type(cs) ~= "number" or cs ~= cs then error("ltask: a time must be a number of centiseconds", level + 1) end
        system(core.SYS_TIMER, R.self, session, now() + (cs > 0 and cs / 100 or 0))
    end

    function ltask.call_timeout(cs, addr, cmd, ...)
        in_service(2)
        check_addr(addr, 2)
        local session, tsession = next_session(), next_session()
        timer(cs, tsession, 2)
        if not deliver(addr, REQUEST, session, 1, 2, select("#", ...) + 1, cmd, ...) then
            error("ltask: call(" .. addr_text(addr) .. ", '" .. tostring(cmd) .. "'): the service is dead", 2)
        end
        local co, waiting = co_running(), R.waiting
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
        R.waiting[session] = co_running()
        suspend()
    end

    function ltask.timeout(cs, f)
        in_service(2)
        if type(f) ~= "function" then error("ltask: timeout needs a function", 2) end
        local session = next_session()
        timer(cs, session, 2)
        R.timeouts[session] = f
        R.pending = R.pending + 1
    end

    local function pack(...)
        return { n = select("#", ...), ... }
    end

    function ltask.fork(f, ...)
        in_service(2)
        if type(f) ~= "function" then error("ltask: fork needs a function", 2) end
        local ready = R.ready
        ready[#ready + 1] = new_task()
        R.ready_args[#ready] = pack(function(...)
            local ok, err = xpcall(f, traceback, ...)
            if not ok then log("ltask: error in a fork of " .. who() .. ": " .. tostring(err)) end
        end, ...)
    end

    function ltask.wait(token)
        in_service(2)
        local co = co_running()
        if token == nil then token = co end
        local tokens = R.tokens
        if tokens[token] then error("ltask: something already waits for this token", 2) end
        tokens[token] = co
        return select(2, suspend())
    end

    function ltask.wakeup(token, ...)
        local co = R.tokens[token]
        if not co then return false end
        R.tokens[token] = nil
        local ready = R.ready
        ready[#ready + 1] = co
        R.ready_args[#ready] = pack(true, ...)
        return true
    end

    function ltask.quit()
        in_service(2)
        R.quitting = true
    end

    function ltask.kill(addr)
        in_service(2)
        check_addr(addr, 2)
        if addr == R.self then
            R.quitting = true
            return true
        end
        return signal(sched, R.self, addr, KILL, 0, R.slot)
    end

    -- opts: { name = ..., args = {...}, exclusive = true, inbox = n }; raises at `level`.
    local function spawn_service(opts, level)
        level = level + 1
        in_service(level)
        if type(opts) ~= "table" then error("ltask: spawn_service takes a table", level) end
        local args = opts.args or {}
        if type(args) ~= "table" then error("ltask: spawn_service: args must be a list", level) end
        local spawn = require "ltask.spawn"   -- (loaded on the first spawn)
        local inbox = opts.inbox
        if inbox ~= nil and not spawn.is_count(inbox, core.MAX.inbox) then
            error(format("ltask: spawn_service: inbox must be a positive integer up to %d", core.MAX.inbox), level)
        end
        local addr, file, code = spawn.new_service(core.shared, config, opts.name, opts.exclusive, inbox, level)
        local session = next_session()
        local n = args.n or #args
        local died = "ltask: service '" .. opts.name .. "' died before it started"
        if not deliver(addr, INIT, session, 4, level, n + 4, opts.name, file, code, not not opts.exclusive,
            unpack(args, 1, n)) then
            error(died, level)
        end
        R.waiting[session] = co_running()
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

    -- Asks the system thread (op: SYS_QUERY or SYS_UNIQUE) for the address
    -- of `name`; returns it, or -1 when this service must spawn it (SYS_UNIQUE
    -- only); raises at `level` if the spawn for it failed (now or before).
    local function ask_name(op, name, level)
        local session = next_session()
        system(op, R.self, session, name)
        R.waiting[session] = co_running()
        local _, addr = suspend()
        if addr ~= 0 then return addr end
        error("ltask: service '" .. name .. "' failed to start", level + 1)
    end

    local function check_name(name, level)
        in_service(level + 1)
        if type(name) ~= "string" then error("ltask: a service name must be a string", level + 1) end
    end

    function ltask.queryservice(name)
        check_name(name, 2)
        local addr = ask_name(core.SYS_QUERY, name, 2)
        return addr
    end

    function ltask.uniqueservice(name, ...)
        check_name(name, 2)
        local addr = ask_name(core.SYS_UNIQUE, name, 2)
        if addr >= 1 then return addr end
        R.claims = R.claims + 1
        local ok, spawned = pcall(spawn_service, { name = name, args = pack(...) }, 1)
        R.claims = R.claims - 1
        system(core.SYS_BIND, ok and spawned or 0, 0, name)
        if not ok then error(spawned, 2) end
        return spawned
    end

    -- What lj-async.asio waits through in an exclusive service (lj-async/asio.lua).
    local asio_driver = {
        suspend = suspend,
        resume = resume,
        spawn = function(...) return ltask.fork(...) end,
        attach = function(efd, pump, close)
            R.io = { pump = pump, close = close }
            C.lja_sched_wake_fd(sched, R.self, efd)
        end,
    }

    return asio_driver
end
