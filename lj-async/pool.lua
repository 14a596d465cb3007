-- lj-async.pool: worker threads, each with its own lua_State, running
-- precompiled bytecode on a context table (README: `lj-async.pool`).
--
-- The shim keeps the pool's memory, its lock and its workers' count
-- (csrc/pool.c); this module keeps the jobs, their cancel and the list of
-- running jobs, and runs the rest on the pool's own threads
-- (lj-async.thread): the worker loop, the watchdog, worker replacement and
-- shutdown.  The job queue is a channel of messages: the job's address,
-- then its code and context; a job's outcome comes back on a channel of
-- its own, which its worker closes once done with it.  A worker runs its jobs in a
-- second state, its job state, through the Lua C API: the loop is a JIT
-- trace of C calls that no job can knock off (tests/test_pool.lua checks
-- it stays compiled), and a job's error or cancel stays in the job state.
-- A job is a code string (Pool.compile's output, plain bytecode, or
-- source) and a context; the job state loads the code once (cached), sets
-- the global `ctx`, runs it, sends back what it returns, and restores its
-- globals and standard library (lj-async.reset) for the next job.
--
-- Stopping jobs: Pool.compile instruments the source (lj-async.safepoint)
-- so that compiled loops call a poll, a C call that reads the job's cancel
-- cell; plain bytecode runs with the JIT off for its functions, where the
-- count hook that a cancel sets stops it.  A job past its
-- deadline is cancelled by the watchdog (running), by its worker (queued
-- past it) or by whoever waits for it, and a worker whose cancelled job has
-- not stopped within GRACE seconds (stuck in C) is replaced.
--
-- LuaJIT does not verify bytecode, and bad bytecode can crash the process:
-- Pool.compile's output carries a checksum that submit checks; plain
-- bytecode runs as given (README).
--
-- Errors: bad arguments and values that cannot cross raise; a job's error,
-- timeout or cancel, and a shut pool, return nil, err.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local object = require "lj-async.object"
local transfer = require "lj-async.transfer"
local safepoint = require "lj-async.safepoint"
local vm = require "lj-async.vm"

require "lj-async.channel"   -- the channels' declarations

ffi.cdef [[
typedef struct lja_pool lja_pool;
lja_pool *lja_pool_new(void);
lja_channel *lja_pool_channel(lja_pool *p, int watch);
void **lja_pool_data(lja_pool *p);
int lja_pool_lock(lja_pool *p);
void lja_pool_unlock(lja_pool *p);
void lja_pool_close(lja_pool *p);
int lja_pool_join(lja_pool *p);
void lja_pool_hold(lja_pool *p);
void lja_pool_leave(lja_pool *p, int counted);
int lja_pool_size(lja_pool *p, int d);
void lja_lua_cancel(void *L);
int lja_channel_recv(lja_channel *ch, lja_msg **msg, double timeout);
int64_t lja_atomic_load(const int64_t *p);
void lja_atomic_store(int64_t *p, int64_t v);
int64_t lja_atomic_add(int64_t *p, int64_t d);
void lja_free(void *p);
double lja_now(void);
void lja_sleep(double seconds);
void lua_pushvalue(lua_State *L, int idx);
void *calloc(size_t nmemb, size_t size);
typedef struct { const char *data; size_t len; void *result; int64_t *cancel; } pool_input;
/* A job, in memory that every state reaches (freed by its last release). */
typedef struct pool_job {
    int64_t refs[1];      /* atomic: the submitter's, the queued message's, the running list's */
    int64_t cancel[1];    /* atomic, written under the pool's lock: 0 or the reason */
    double deadline;      /* on lja_now's clock; 0: none */
    void *result;         /* the channel of its outcome */
    void *pool;           /* held by the job */
    void *L;              /* the state running it; the rest under the pool's lock too */
    struct pool_job *next, *prev;   /* the running list (its head: lja_pool_data's first word) */
    int phase, replaced;
} pool_job;
]]

local C = shim.C
local type, select, error, tostring, unpack = type, select, error, tostring, unpack
local byte, char, sub = string.byte, string.char, string.sub
local band, bxor, lshift, rshift, tobit = bit.band, bit.bxor, bit.lshift, bit.rshift, bit.tobit
local LJA_OK, LJA_ETIMEDOUT, LJA_ECLOSED = C.LJA_OK, C.LJA_ETIMEDOUT, C.LJA_ECLOSED

-- Pool.compile's output: this header, the checksum of the rest (4 bytes),
-- then LuaJIT bytecode.
local HEADER = "\27lja-pool\2"
local SKIP = #HEADER + 4   -- bytes before the bytecode

-- A job's cancel: 0, or one of these reasons.
local CANCELLED, TIMEOUT, SHUTDOWN = 1, 2, 3
local REASONS = { "cancelled", "timeout", "pool is shut down" }

-- What every job state runs once (lj-async.vm's prelude gives it the
-- lj-async modules): it leaves the worker loop's three functions in the
-- registry.
local RUNTIME = vm.compile([==[
local HEADER, SKIP, INPUT = ...
SKIP = tonumber(SKIP)
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local safepoint = require "lj-async.safepoint"
local C = require("lj-async.shim").C
require "lj-async.channel"
ffi.cdef [[
typedef struct { const char *data; size_t len; void *result; int64_t *cancel; } pool_input;
int64_t lja_atomic_load(const int64_t *p);
]]
-- The worker's word of the current job: its message past the job's
-- address, the channel of its outcome, and its cancel cell (a cell of
-- zero between jobs).
local input = ffi.cast("pool_input *", require("lj-async.vm").pointer_from_arg(INPUT))
local load_cell, error = C.lja_atomic_load, error

-- The poll of this state's compiled code: raises once the running job is
-- cancelled.  A real C call, which the JIT can neither hoist nor drop.
-- Functions that cross into this state take it by name (lj-async.safepoint).
local function poll()
    if load_cell(input.cancel) ~= 0 then error("lj-async: job cancelled", 0) end
end
safepoint.poll = poll
local rawset, load, xpcall, pcall, unpack = rawset, load, xpcall, pcall, unpack

local cache, ncache = {}, 0   -- code -> its main function, per worker
local reset = require "lj-async.reset"
local keep_env = reset.keep_env   -- a job's setfenv(1, t) lasts one run

-- The main function of Pool.compile's output (submit checked it), plain
-- bytecode, or source.
local function job_function(code)
    local f = cache[code]
    if f then return f end
    if code:sub(1, #HEADER) == HEADER then
        f = keep_env(assert(load(code:sub(SKIP + 1))))
    elseif code:sub(1, 3) == "\27LJ" then
        local g = keep_env(assert(load(code)))
        jit.off(g, true)   -- not compiled: the cancel hook reaches it
        f = function() return g() end
    else
        f = keep_env(assert(load(safepoint.instrument(code), "=(job)")))
    end
    if ncache >= 256 then cache, ncache = {}, 0 end
    cache[code], ncache = f, ncache + 1
    return f
end

local function execute(code, ctx)
    local f = job_function(code)
    rawset(_G, "ctx", ctx)   -- the reset after the job takes it away
    return f(poll)
end

local outcome   -- what run leaves for finish: xpcall's results

-- Runs the current job.  Once it is cancelled, every instruction raises
-- until its worker has seen it return.
local function run()
    local ok, n, code, ctx = pcall(transfer.decode, input.data, input.len)
    if ok then
        outcome = transfer.pack(xpcall(execute, transfer.traceback, code, ctx))
    else
        outcome = transfer.pack(false, "lj-async: the job's context cannot be read: " .. tostring(n))
    end
end

-- Sends back what run left (nothing if a cancel stopped it before: the
-- job then reports its cancel); true once sent.
local function finish()
    local results = outcome
    if not results then return false end
    outcome = nil
    local msg = transfer.encode_outcome("job", unpack(results, 1, results.n))
    local objs, nobjs = transfer.objs_array()
    local rc = C.lja_channel_send(input.result, msg, #msg, objs, nobjs, -1)
    transfer.forget_exported()   -- the message holds them now, or the shim released them
    return rc == 0
end

local registry = debug.getregistry()
registry["lj-async.pool.run"] = run
registry["lj-async.pool.finish"] = finish
registry["lj-async.pool.reset"] = reset.snapshot()
]==], "lj-async.pool runtime")

local Pool = {}
Pool._VERSION = shim.VERSION
local methods = {}
local wrap = object.define("pool", "lj-async.pool", C.LJA_KIND_POOL, "struct lja_pool", methods)

local GRACE = 0.25   -- seconds a cancelled job has to stop before its worker is replaced
local QUEUED, RUNNING, DONE, GONE = 0, 1, 2, 3   -- a job's phase: GONE is off the running list
local now = C.lja_now
local lock, unlock, pool_data = C.lja_pool_lock, C.lja_pool_unlock, C.lja_pool_data
local load_cell, store_cell, add_cell = C.lja_atomic_load, C.lja_atomic_store, C.lja_atomic_add
local send, recv, close, msg_data, msg_free =
    C.lja_channel_send, C.lja_channel_recv, C.lja_channel_close, C.lja_msg_data, C.lja_msg_free
local lua = ffi.C   -- the host's Lua C API (lj-async.vm checked that it is there)
local pushvalue, lua_pcall, toboolean, settop = lua.lua_pushvalue, lua.lua_pcall, lua.lua_toboolean, lua.lua_settop
local RUN, FINISH, RESET = 1, 2, 3   -- where a job state keeps these functions on its stack
local job_ptr, job_pp, pool_ptr = ffi.typeof("pool_job *"), ffi.typeof("pool_job **"), ffi.typeof("lja_pool *")
local JOB = ffi.sizeof("pool_job *")   -- a queued message: the job's address, then its input
local JOB_SIZE, calloc = ffi.sizeof("pool_job"), ffi.C.calloc   -- freed by lja_free

-- Drops a reference to job j; the last frees it.
local function release(j)
    if add_cell(j.refs, -1) == 0 then
        C.lja_object_release(j.result)
        C.lja_pool_leave(j.pool, 0)
        C.lja_free(j)
    end
end

-- The head of pool p's running list, then whether its watchdog started
-- (read and written under its lock).
local function running(p)
    return ffi.cast(job_pp, pool_data(p))
end

-- Cancels job j for `reason`, with its pool's lock held: 1 if it was
-- queued (it is done now: its worker skips it), 0 if running (its cancel
-- cell stops its compiled code, the hook on its state the rest, until its
-- worker sees it return: `ran` takes the hook off under the same lock, so
-- no cancel hooks the worker's next job), -1 if it was done.
local function cancel_locked(j, reason)
    local phase = j.phase
    if phase >= DONE then return -1 end
    if load_cell(j.cancel) == 0 then
        store_cell(j.cancel, reason)
        if phase == QUEUED then j.phase = DONE else C.lja_lua_cancel(j.L) end
    end
    return phase == QUEUED and 1 or 0
end

-- The same, taking the lock; a job cancelled while queued is done at once
-- (its waiters wake).
local function cancel(j, reason)
    local p = ffi.cast(pool_ptr, j.pool)
    lock(p)
    local rc = cancel_locked(j, reason)
    unlock(p)
    if rc == 1 then close(j.result) end
    return rc
end

-- Cancels every running job of pool p.
local function cancel_running(p, reason)
    lock(p)
    local j = running(p)[0]
    while j ~= nil do
        cancel_locked(j, reason)
        j = j.next
    end
    unlock(p)
end

-- A new job state, with RUNTIME's functions at the bottom of its stack,
-- that reads its jobs from `input`; nil if it cannot be made.
local function job_state(input)
    local ok, L = pcall(vm.new, RUNTIME, HEADER, tostring(SKIP), vm.pointer_arg(input))
    if not ok then return nil end
    for _, name in ipairs { "lj-async.pool.run", "lj-async.pool.finish", "lj-async.pool.reset" } do
        lua.lua_getfield(L, vm.LUA_REGISTRYINDEX, name)
    end
    return L
end

-- Calls the job state's function at stack index i, protected (an error
-- stays in that state); true when it returned true.
local function call(L, i)
    pushvalue(L, i)
    local yes = lua_pcall(L, 0, 1, 0) == 0 and toboolean(L, -1) ~= 0
    settop(L, 3)
    return yes
end

local Thread   -- lj-async.thread, loaded when the first pool starts (it then ships this module)

-- Starts a thread of pool p that runs Pool[role] (p was held for it);
-- false if it cannot.
local function start(p, role)
    Thread = Thread or require "lj-async.thread"
    local ok, t = pcall(Thread.new, function(role, address)
        return require("lj-async.pool")[role](require("lj-async.vm").pointer_from_arg(address))
    end, role, vm.pointer_arg(p))
    if ok then t:destroy() end   -- it goes on, detached
    return ok
end

local function start_worker(p)
    if C.lja_pool_join(p) ~= LJA_OK then return false end
    if start(p, "_work") then return true end
    C.lja_pool_leave(p, 1)
    return false
end

-- Wakes the watchdog of pool p.
local function wake(p)
    send(C.lja_pool_channel(p, 1), nil, 0, nil, 0, 0)
end

-- Job j begins in state L on pool p's worker, unless it was cancelled
-- while queued or the pool closed meanwhile: true if it runs (it is then
-- on the running list, which holds a reference).  The pool's first job
-- starts its watchdog, so one runs whenever a job does.
local function begin(p, j, L)
    if lock(p) ~= 0 then cancel_locked(j, SHUTDOWN) end   -- queued when the pool closed
    local run, first = j.phase == QUEUED, false
    if run then
        j.phase, j.L = RUNNING, L
        add_cell(j.refs, 1)
        local list = running(p)
        local head = list[0]
        j.next, j.prev = head, nil
        if head ~= nil then head.prev = j end
        list[0] = j
        first = list[1] == nil
        if first then list[1] = j end   -- not nil from now on
    end
    unlock(p)
    if first then
        C.lja_pool_hold(p)
        if not start(p, "_watchdog") then C.lja_pool_leave(p, 0) end
    end
    return run
end

-- Job j's code has returned: no cancel reaches its state from here on.
local function ran(p, j)
    lock(p)
    lua.lua_sethook(j.L, nil, 0, 0)
    j.phase = DONE
    unlock(p)
end

-- Job j runs no more: off the running list.  True if its worker was
-- replaced meanwhile (it then leaves, uncounted).
local function done(p, j)
    lock(p)
    local prev, next = j.prev, j.next
    if prev ~= nil then prev.next = next else running(p)[0] = next end
    if next ~= nil then next.prev = prev end
    j.phase = GONE
    local replaced = j.replaced ~= 0
    unlock(p)
    release(j)
    return replaced
end

-- True once, for a running job whose worker the watchdog replaces.
local function replace(p, j)
    lock(p)
    local yes = (j.phase == RUNNING or j.phase == DONE) and j.replaced == 0
    j.replaced = 1
    unlock(p)
    return yes
end

-- A worker: takes jobs from pool p (which it has joined) until the pool
-- closes and its queue is drained, or until the watchdog replaced it (its
-- job was stuck), then leaves.  For each job: begin (else it was
-- cancelled while queued, or the pool closed), run, ran (the cancel hook
-- is off), send its outcome, done (it is no longer among the running
-- jobs); a job that sent none has its channel closed: its waiters wake
-- (one that sent its outcome leaves it open, for submit to reuse).  The
-- pool's threads run it; tests/test_pool.lua runs it to watch its traces.
local function work(p)
    local queue, msg, len = C.lja_pool_channel(p, 0), ffi.new("lja_msg *[1]"), ffi.new("size_t[1]")
    local input, idle = ffi.new("pool_input"), ffi.new("int64_t[1]")
    input.cancel = idle
    local L, counted = job_state(input), 1
    while L ~= nil and recv(queue, msg, -1) == LJA_OK do
        local m = msg[0]
        local data = msg_data(m, len)
        local j = ffi.cast(job_pp, data)[0]
        local deadline, replaced, sent = j.deadline, false, false
        if deadline > 0 and now() >= deadline then cancel(j, TIMEOUT) end   -- begin skips it
        if begin(p, j, L) then
            if deadline > 0 then wake(p) end   -- the watchdog stops it at its deadline
            input.data, input.len, input.result, input.cancel = data + JOB, len[0] - JOB, j.result, j.cancel
            call(L, RUN)
            ran(p, j)
            input.cancel = idle
            sent = call(L, FINISH)   -- sends the outcome; else the job failed
            replaced = done(p, j)
        end
        if not sent then close(j.result) end
        release(j)   -- the message's reference
        msg_free(m)
        if replaced then
            counted = 0
            break
        end
        if not call(L, RESET) then
            vm.close(L)
            L = job_state(input)
        end
    end
    if L ~= nil then vm.close(L) end
    C.lja_pool_leave(p, counted)
end
Pool._work = work

-- The watchdog, one per pool from its first job on: cancels running jobs
-- past their deadline, and replaces the worker of a job that has not
-- stopped GRACE seconds after it saw its cancel (it is stuck in C: the pool
-- keeps its size, and the old thread leaves when its job returns).  Sleeps
-- until the next of these times, or until woken (a job with a deadline
-- begins, a running job is cancelled); leaves when shutdown tells it (a
-- message that is not empty), or when the last handle has gone (the
-- wake-ups are closed): it then cancels the running jobs.
local function watchdog(p)
    local wake = ffi.new("lja_channel *[1]", C.lja_pool_channel(p, 1))
    local msg, index, len = ffi.new("lja_msg *[1]"), ffi.new("int[1]"), ffi.new("size_t[1]")
    local seen = {}   -- job address -> when its cancel was seen
    local timeout = -1
    while true do
        -- select, not recv: it sleeps at once, where recv would spin first
        -- (wake is a list channel: every message comes as a block, no buffer)
        local rc = C.lja_channel_select(wake, 1, index, msg, nil, nil, timeout)
        if rc == LJA_ECLOSED then
            cancel_running(p, SHUTDOWN)
            break
        end
        local stop = false
        if rc == LJA_OK then
            repeat   -- wake-ups that came meanwhile: this look covers them
                msg_data(msg[0], len)
                stop = stop or len[0] > 0
                msg_free(msg[0])
            until recv(wake[0], msg, 0) ~= LJA_OK
        end
        if stop then break end
        local jobs, n = {}, 0   -- the running jobs, each with a reference
        lock(p)
        local j = running(p)[0]
        while j ~= nil do
            add_cell(j.refs, 1)
            n = n + 1
            jobs[n] = j
            j = j.next
        end
        unlock(p)
        local t, next, still = now(), math.huge, {}
        for i = 1, n do
            j = jobs[i]
            local reason, deadline = tonumber(load_cell(j.cancel)), j.deadline
            if reason == 0 and deadline > 0 then
                if t >= deadline then
                    cancel(j, TIMEOUT)
                    reason = TIMEOUT
                else
                    next = math.min(next, deadline)
                end
            end
            if reason ~= 0 then
                local key = tonumber(ffi.cast("uintptr_t", j))
                local since = seen[key] or t
                still[key] = since
                if t < since + GRACE then
                    next = math.min(next, since + GRACE)
                elseif replace(p, j) then
                    C.lja_pool_size(p, -1)
                    start_worker(p)
                end
            end
            release(j)
        end
        seen = still
        timeout = next == math.huge and -1 or math.max(next - now(), 0)
    end
    C.lja_pool_leave(p, 0)
end
Pool._watchdog = watchdog

function Pool.new(n)
    if type(n) ~= "number" or n < 1 or n > 4096 or n % 1 ~= 0 then
        error("lj-async: a pool's size is an integer from 1 to 4096", 2)
    end
    local p = wrap(C.lja_pool_new())
    local started = 0
    for _ = 1, p ~= nil and n or 0 do
        if not start_worker(p) then break end
        started = started + 1
    end
    if started == 0 then error("lj-async: cannot make a pool of " .. n .. " workers", 2) end
    return p
end

-- FNV-1a (32 bits) of s from byte `from` on, as 4 bytes: any one changed
-- byte changes it.
local u8p = ffi.typeof("const uint8_t *")
local function checksum(s, from)
    local p, h = ffi.cast(u8p, s), -2128831035   -- 0x811c9dc5
    for i = from - 1, #s - 1 do
        h = bxor(h, p[i])
        h = tobit(lshift(h, 24) + h * 403)   -- h * 16777619, modulo 2^32
    end
    return char(band(h, 255), band(rshift(h, 8), 255), band(rshift(h, 16), 255), rshift(h, 24))
end

-- Source in, stoppable bytecode out; nil, err on a syntax error.
function Pool.compile(src, name)
    if type(src) ~= "string" then error("lj-async: compile takes Lua source", 2) end
    if name ~= nil and type(name) ~= "string" then error("lj-async: a script's name is a string", 2) end
    name = "=" .. (name or "script")
    local f, err = load(src, name)
    if not f then return nil, err end
    local g, ierr = load(safepoint.instrument(src), name)
    if not g then return nil, "lj-async: cannot instrument the script: " .. ierr end
    local bc = string.dump(g)
    return HEADER .. checksum(bc, 1) .. bc
end

function Pool.get(id)
    local p, err = object.find(wrap, C.LJA_KIND_POOL, "pool", id)
    if p == nil then error(err, 2) end
    return p
end

local len_out = ffi.new("size_t[1]")
local msg_out = ffi.new("lja_msg *[1]")
local head = ffi.new("pool_job *[1]")
local buf = require("string.buffer").new()

local intact, nintact = {}, 0   -- Pool.compile output whose checksum was right

-- Raises unless code is source, LuaJIT bytecode, or Pool.compile output
-- with its checksum right.
local function check_code(code, level)
    if intact[code] or byte(code, 1) ~= 27 or sub(code, 1, 3) == "\27LJ" then return end
    if sub(code, 1, #HEADER) ~= HEADER or sub(code, #HEADER + 1, SKIP) ~= checksum(code, SKIP + 1) then
        error("lj-async: submit's code is not intact Pool.compile output (changed or cut?), "
            .. "nor LuaJIT bytecode", level + 1)
    end
    if nintact >= 256 then intact, nintact = {}, 0 end
    intact[code], nintact = true, nintact + 1
end

-- Queues a job whose outcome comes on channel `result` (a new one if
-- nil); returns its handle, or nil, "pool is shut down".
local function submit(pool, code, ctx, opts, level, result)
    level = level + 1
    if type(code) ~= "string" then error("lj-async: submit takes the code as a string", level) end
    check_code(code, level)
    local timeout = -1
    if opts ~= nil then
        if type(opts) ~= "table" then error("lj-async: submit's options are a table", level) end
        if opts.timeout ~= nil then
            timeout = opts.timeout
            if type(timeout) ~= "number" or not (timeout > 0) then
                error("lj-async: a job's timeout is a positive number of seconds", level)
            end
        end
    end
    local ok, p, len = pcall(transfer.encode_after, 1, 2, code, ctx)
    if not ok then error((p:gsub("%(argument 1", "(ctx")), level) end
    local j = ffi.cast(job_ptr, calloc(1, JOB_SIZE))
    if j ~= nil and result ~= nil then
        C.lja_object_retain(result)   -- the job's reference
    else
        result = j ~= nil and C.lja_channel_new(0) or nil
    end
    if result == nil then
        C.lja_free(j)
        transfer.drop_exported()
        error("lj-async: cannot submit: out of memory", level)
    end
    j.refs[0], j.result, j.pool = 2, result, pool   -- the submitter's and the queued message's
    j.deadline = timeout > 0 and now() + timeout or 0
    C.lja_pool_hold(pool)
    head[0] = j
    local q, qlen = buf:reset():putcdata(head, JOB):putcdata(p, len):ref()
    local objs, nobjs = transfer.objs_array()
    local rc = send(C.lja_pool_channel(pool, 0), q, qlen, objs, nobjs, -1)
    transfer.forget_exported()   -- the message holds them now, or the shim released them
    if rc ~= LJA_OK then
        release(j)   -- the message's, never sent
        release(j)
        if rc == LJA_ECLOSED then return nil, "pool is shut down" end
        error("lj-async: cannot submit: " .. shim.strerror(rc), level)
    end
    return ffi.gc(j, release), timeout
end

-- Waits up to `timeout` for job h's outcome: LJA_OK (its message is in
-- msg_out), LJA_ECLOSED (it ended without one) or LJA_ETIMEDOUT.  One past
-- its deadline is cancelled (a queued one is then done at once, with no
-- worker free to see it).
local function wait(h, timeout)
    local ch, deadline = h.result, h.deadline
    if deadline > 0 then
        local left = math.max(deadline - now(), 0)
        if timeout < 0 or left < timeout then
            local rc = recv(ch, msg_out, left)
            if rc ~= LJA_ETIMEDOUT then return rc end
            cancel(h, TIMEOUT)
            if timeout >= 0 then timeout = math.max(timeout - left, 0) end
        end
    end
    return recv(ch, msg_out, timeout)
end

local function results(reason, n, ok, ...)
    if not ok and reason ~= 0 then return nil, REASONS[reason] end
    return transfer.results(false, ok, ...)
end

local function free_after(m, ...)
    msg_free(m)
    return ...
end

-- A finished job's return values, or nil, err; rc is what its wait
-- returned.  A job that ran to its end gives its results even when a
-- cancel came too late to stop it: they may hold what it took from a
-- channel.
local function outcome(job, rc)
    local reason = tonumber(load_cell(job.cancel))
    if rc ~= LJA_OK then
        if reason ~= 0 then return nil, REASONS[reason] end
        return nil, "lj-async: the job failed in its worker"
    end
    local m = msg_out[0]
    local p = msg_data(m, len_out)
    return free_after(m, results(reason, transfer.decode(p, len_out[0])))
end

-- This state's channel for submit's outcomes: one channel learns how long
-- its waits last (a new one per job would spin its first budget on every
-- wait, README "Benchmarks").  It is reused only after its job sent its
-- outcome and submit took it: nothing else ever comes on it; a job that
-- timed out, failed or was stopped takes its channel with it.
local own_result

function methods:submit(code, ctx, opts)
    local result = own_result
    if result == nil then
        result = C.lja_channel_new(0)
        if result ~= nil then result = ffi.gc(result, C.lja_object_release) end
    end
    own_result = nil
    local job, timeout = submit(self, code, ctx, opts, 2, result)
    if not job then
        own_result = result   -- nothing came on it
        return nil, timeout
    end
    local rc = recv(job.result, msg_out, timeout)
    if rc == LJA_ETIMEDOUT then
        cancel(job, TIMEOUT)
        return nil, "timeout"
    end
    if rc == LJA_OK then own_result = result end
    return outcome(job, rc)
end

local Job = {}
Job.__index = Job

function methods:submit_async(code, ctx, opts)
    local job, err = submit(self, code, ctx, opts, 2)
    if not job then return nil, err end
    return setmetatable({ handle = job }, Job)   -- the job holds its pool's memory, not its handles
end

-- The job's results once it is done (kept: its outcome comes once);
-- nil, "timeout" if it is not done in `timeout` seconds (it goes on);
-- nil, err if it failed or was stopped.
function Job:wait(timeout)
    local r = self.outcome
    if not r then
        local rc = wait(self.handle, shim.timeout_arg(timeout, 2))
        if rc == LJA_ETIMEDOUT then return nil, "timeout" end
        r = transfer.pack(outcome(self.handle, rc))
        self.outcome = r
    end
    return unpack(r, 1, r.n)
end

-- Stops the job: true if it was queued or running, false if it was done.
-- The watchdog replaces its worker if it does not stop (stuck in C).
function Job:cancel()
    if self.outcome then return false end
    local rc = cancel(self.handle, CANCELLED)
    if rc == 0 then wake(self.handle.pool) end
    return rc >= 0
end

function methods:active_workers()
    return C.lja_pool_size(self, 0)
end

-- Waits up to `timeout` seconds (< 0: no limit) until pool p runs no job;
-- true once it runs none.  It polls: a shutdown is rare.
local function settle(p, timeout)
    local deadline, pause = timeout < 0 and math.huge or now() + timeout, 0.0002
    while true do
        lock(p)
        local idle = running(p)[0] == nil
        unlock(p)
        if idle then break end
        local left = deadline - now()
        if left <= 0 then return false end
        C.lja_sleep(math.min(pause, left))
        pause = math.min(pause * 2, 0.005)
    end
    return true
end

-- Refuses new jobs and cancels queued ones; running jobs finish, or are
-- stopped after `grace` seconds.  True once all have ended, else false, err
-- (workers stuck in C for a second more are left to end on their own).
function methods:shutdown(grace)
    grace = shim.timeout_arg(grace, 2)
    C.lja_pool_close(self)
    send(C.lja_pool_channel(self, 1), "stop", 4, nil, 0, 0)   -- the watchdog leaves
    local queue = C.lja_pool_channel(self, 0)
    while recv(queue, msg_out, 0) == LJA_OK do   -- the workers skip what they take now
        local m = msg_out[0]
        local j = ffi.cast(job_pp, msg_data(m, len_out))[0]
        cancel(j, SHUTDOWN)
        close(j.result)
        release(j)
        msg_free(m)
    end
    if settle(self, grace) then return true end
    cancel_running(self, SHUTDOWN)
    if settle(self, 1) then return true end
    return false, "some jobs did not stop (blocked in C?)"
end

methods.id = object.id

return Pool
