-- ltask.system: the system thread's loop (README "ltask"): one LuaJIT
-- state on a thread of its own that keeps what all services share and
-- that no service should wait on: the timers (a binary heap; the thread's
-- wait for requests has the earliest deadline), the names of
-- uniqueservice and queryservice, the log, and the threads of exclusive
-- services.  As cloudwu/ltask keeps names and the log in a service of its
-- own, but on a thread that no user code runs on, so a service busy in a
-- long handler delays no timer and no name.  Requests come through a
-- channel (core.system), in order per sender.
local ffi = require "ffi"
local buffer = require "string.buffer"
local core = require "ltask.core"

ffi.cdef [[
typedef struct lja_msg lja_msg;
int lja_channel_recv(lja_channel *ch, lja_msg **msg, double timeout);
const char *lja_msg_data(lja_msg *msg, size_t *len);
void lja_msg_free(lja_msg *msg);
void *lja_sched_state(lja_sched *s, double addr);
]]

local C = core.C
local floor, format, date = math.floor, string.format, os.date
local signal = core.signal
local TIMER, NAME = C.LJA_SMSG_TIMER, C.LJA_SMSG_NAME
local NO_SLOT = core.NO_SLOT

local M = {}

-- ---- timers: a binary heap of {deadline, seq, addr, session} -------------

local heap, seq = {}, 0

local function before(a, b)
    return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local function heap_push(t)
    local i = #heap + 1
    while i > 1 do
        local parent = floor(i / 2)
        if not before(t, heap[parent]) then break end
        heap[i] = heap[parent]
        i = parent
    end
    heap[i] = t
end
-- Interpreted: compiled into the loop's trace below (LuaJIT 2.1), a push
-- onto a heap of one timer was seen to be lost at the next pop, and the
-- service waiting on that timer (a sleep, a call's timeout) never woke.
jit.off(heap_push)

local function heap_pop()
    local top, n = heap[1], #heap
    local last = heap[n]
    heap[n] = nil
    n = n - 1
    local i = 1
    while true do
        local c = 2 * i
        if c > n then break end
        if c + 1 <= n and before(heap[c + 1], heap[c]) then c = c + 1 end
        if not before(heap[c], last) then break end
        heap[i] = heap[c]
        i = c
    end
    if n > 0 then heap[i] = last end
    return top
end

-- ---- names -----------------------------------------------------------------

-- name -> { addr = bound address, claimer = address spawning it,
-- failed = its last spawn failed, waiters = { addr, session, ... } }
local names = {}

-- A name's record, new if it had none or its service quit (a quit
-- service's names go: looked up here rather than told at every quit).
local function name_of(text, s)
    local nm = names[text]
    if nm and nm.addr and C.lja_sched_state(s, nm.addr) == nil then nm = nil end
    if not nm then
        nm = { waiters = {} }
        names[text] = nm
    end
    return nm
end

-- Binds a name to addr, or fails it (addr 0), and tells its waiters.
local function settle(nm, addr, s)
    local w = nm.waiters
    nm.waiters, nm.claimer = {}, nil
    nm.addr = addr >= 1 and addr or nil
    nm.failed = addr == 0
    for i = 1, #w, 2 do signal(s, addr, w[i], NAME, w[i + 1], NO_SLOT) end
end

local function wait_name(nm, addr, session)
    local w = nm.waiters
    w[#w + 1], w[#w + 2] = addr, session
end

-- ---- the loop ----------------------------------------------------------------

local function log_line(out, addr, wall, text)
    local sec = floor(wall)
    out:write(format("%s.%02d][:%08x] %s\n", date("[%H:%M:%S", sec), floor((wall - sec) * 100), addr, text))
    out:flush()
end

function M.run(shared_arg, config_str)
    core.attach(shared_arg, config_str)
    local s, ch = core.sched, core.shared.system
    local config = core.config
    local out = io.stderr
    if config.logfile then out = assert(io.open(config.logfile, "a")) end
    local msg_out, len_out = ffi.new("lja_msg *[1]"), ffi.new("size_t[1]")
    local buf = buffer.new()
    local threads = {}
    local Thread = require "lj-async.thread"
    local now = C.lja_now
    while true do
        local timeout = -1
        if heap[1] then
            timeout = heap[1][1] - now()
            if timeout < 0 then timeout = 0 end
        end
        if C.lja_channel_recv(ch, msg_out, timeout) == C.LJA_OK then
            local m = msg_out[0]
            buf:set(C.lja_msg_data(m, len_out), len_out[0])
            local op, addr, session, x = buf:decode(), buf:decode(), buf:decode(), buf:decode()
            C.lja_msg_free(m)
            if op == core.SYS_TIMER then
                seq = seq + 1
                heap_push { x, seq, addr, session }
            elseif op == core.SYS_LOG then
                log_line(out, addr, session, x)
            elseif op == core.SYS_QUERY then
                local nm = name_of(x, s)
                if nm.addr then
                    signal(s, nm.addr, addr, NAME, session, NO_SLOT)
                elseif nm.failed and not nm.claimer then
                    signal(s, 0, addr, NAME, session, NO_SLOT)
                else
                    wait_name(nm, addr, session)
                end
            elseif op == core.SYS_UNIQUE then
                local nm = name_of(x, s)
                if nm.addr then
                    signal(s, nm.addr, addr, NAME, session, NO_SLOT)
                elseif nm.claimer then
                    wait_name(nm, addr, session)
                else
                    nm.claimer = addr
                    signal(s, -1, addr, NAME, session, NO_SLOT)
                end
            elseif op == core.SYS_BIND then
                settle(name_of(x, s), addr, s)
            elseif op == core.SYS_DROP then   -- the names a quit service was spawning fail
                for _, nm in pairs(names) do
                    if nm.claimer == addr then settle(nm, 0, s) end
                end
            elseif op == core.SYS_EXCLUSIVE then
                local ok, thread = pcall(Thread.new, function(...)
                    return require("ltask.worker").exclusive(...)
                end, shared_arg, config_str, addr)
                if ok then
                    threads[#threads + 1] = thread
                else   -- its spawner is told it died before it started
                    log_line(out, addr, core.wallclock(), "ltask: no thread for an exclusive service: " .. thread)
                    require("ltask.worker").finish(s, addr, true)
                end
            elseif op == core.SYS_STOP then
                break
            end
        end
        local t = now()
        while heap[1] and heap[1][1] <= t do   -- a dead service's timers go nowhere
            local due = heap_pop()
            signal(s, 0, due[3], TIMER, due[4], NO_SLOT)
        end
    end
    for i = 1, #threads do threads[i]:join() end
    if out ~= io.stderr then out:close() end
end

return M
