-- lj-async.pool: worker threads, each with its own lua_State, running
-- precompiled bytecode on a context table (README: `lj-async.pool`).
--
-- The shim keeps the job queue and the jobs (csrc/pool.c); this module
-- runs the rest on the pool's own threads (lj-async.thread): the worker
-- loop, the watchdog and worker replacement.  A worker runs its jobs in a
-- second state, its job state, through the Lua C API: the loop is a JIT
-- trace of C calls that no job can knock off (tests/test_pool.lua checks
-- it stays compiled), and a job's error or cancel stays in the job state.
-- A job is a code string (Pool.compile's output, plain bytecode, or
-- source) and a context; the job state loads the code once (cached), sets
-- the global `ctx`, runs it, sends back what it returns, and restores its
-- globals and standard library (lj-async.reset) for the next job.
--
-- Stopping jobs: Pool.compile instruments the source (lj-async.safepoint)
-- so that compiled loops call the shim's poll; plain bytecode runs with the
-- JIT off for its functions, where a count hook stops it.  A job past its
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

ffi.cdef [[
typedef struct lja_pool lja_pool;
typedef struct lja_job lja_job;
enum { LJA_JOB_CANCELLED = 1, LJA_JOB_TIMEOUT = 2, LJA_JOB_SHUTDOWN = 3 };
lja_pool *lja_pool_new(void);
int lja_pool_submit(lja_pool *p, const char *data, size_t len, void *const *objs,
                    int nobjs, double timeout, lja_job **out);
int lja_pool_size(lja_pool *p);
int lja_pool_shutdown(lja_pool *p, double grace);
int lja_job_wait(lja_job *j, double timeout);
const char *lja_job_result(lja_job *j, size_t *len);
int lja_job_cancel(lja_job *j, int reason);
int lja_job_cancelled(lja_job *j);
double lja_job_cancel_time(lja_job *j);
double lja_job_deadline(lja_job *j);
void lja_job_release(lja_job *j);
int lja_pool_join(lja_pool *p);
void lja_pool_leave(lja_pool *p, int counted);
lja_job *lja_pool_take(lja_pool *p);
int lja_job_begin(lja_job *j, void *L);
void lja_job_ran(lja_job *j);
int lja_job_done(lja_job *j);
int lja_pool_watch(lja_pool *p);
void lja_pool_unwatch(lja_pool *p);
int lja_pool_watch_wait(lja_pool *p, double timeout);
int lja_pool_running(lja_pool *p, lja_job **out, int max);
int lja_job_replace(lja_job *j);
double lja_now(void);
void lua_pushvalue(lua_State *L, int idx);
]]

local C = shim.C
local type, select, error, tostring = type, select, error, tostring
local byte, char, sub = string.byte, string.char, string.sub
local band, bxor, lshift, rshift, tobit = bit.band, bit.bxor, bit.lshift, bit.rshift, bit.tobit
local LJA_OK, LJA_ETIMEDOUT, LJA_ECLOSED = C.LJA_OK, C.LJA_ETIMEDOUT, C.LJA_ECLOSED

-- Pool.compile's output: this header, the checksum of the rest (4 bytes),
-- then LuaJIT bytecode.
local HEADER = "\27lja-pool\2"
local SKIP = #HEADER + 4   -- bytes before the bytecode

local REASONS = {
    [C.LJA_JOB_CANCELLED] = "cancelled",
    [C.LJA_JOB_TIMEOUT] = "timeout",
    [C.LJA_JOB_SHUTDOWN] = "pool is shut down",
}

-- What every job state runs once (lj-async.vm's prelude gives it the
-- lj-async modules): it leaves the worker loop's three functions in the
-- registry.
local RUNTIME = vm.compile([==[
local HEADER, SKIP = ...
SKIP = tonumber(SKIP)
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local safepoint = require "lj-async.safepoint"
local C = require("lj-async.shim").C
ffi.cdef [[
const char *lja_pool_input(size_t *len);
int lja_pool_set_result(const char *data, size_t len, void *const *objs, int nobjs);
]]
local poll, rawset, load, xpcall, pcall, unpack = safepoint.poll, rawset, load, xpcall, pcall, unpack

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

local len = ffi.new("size_t[1]")
local outcome   -- what run leaves for finish: xpcall's results

-- Runs the current job.  Once it is cancelled, every instruction raises
-- until this has returned to the worker loop.
local function run()
    local p = C.lja_pool_input(len)
    local ok, n, code, ctx = pcall(transfer.decode, p, len[0])
    if ok then
        outcome = transfer.pack(xpcall(execute, transfer.traceback, code, ctx))
    else
        outcome = transfer.pack(false, "lj-async: the job's context cannot be read: " .. tostring(n))
    end
end

-- Sends back what run left (nothing if a cancel stopped it before: the
-- job then reports its cancel).
local function finish()
    local results = outcome
    if not results then return end
    outcome = nil
    local msg = transfer.encode_outcome("job", unpack(results, 1, results.n))
    local objs, nobjs = transfer.objs_array()
    if C.lja_pool_set_result(msg, #msg, objs, nobjs) == C.LJA_EINVAL then
        transfer.drop_exported()     -- refused outright: they are still ours
    else
        transfer.forget_exported()   -- the job holds them now, or the shim released them
    end
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
local TIMEOUT = C.LJA_JOB_TIMEOUT
local now, deadline_of, cancel = C.lja_now, C.lja_job_deadline, C.lja_job_cancel
local take, begin, ran, done = C.lja_pool_take, C.lja_job_begin, C.lja_job_ran, C.lja_job_done
local lua = ffi.C   -- the host's Lua C API (lj-async.vm checked that it is there)
local pushvalue, lua_pcall, toboolean, settop = lua.lua_pushvalue, lua.lua_pcall, lua.lua_toboolean, lua.lua_settop
local RUN, FINISH, RESET = 1, 2, 3   -- where a job state keeps these functions on its stack

-- A new job state, with RUNTIME's functions at the bottom of its stack;
-- nil if it cannot be made.
local function job_state()
    local ok, L = pcall(vm.new, RUNTIME, HEADER, tostring(SKIP))
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

-- Starts a thread of pool p that runs Pool[role] (p was anchored for it);
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

-- Wakes the watchdog of pool p, starting it if need be.
local function watch(p)
    if C.lja_pool_watch(p) == 1 and not start(p, "_watchdog") then C.lja_pool_unwatch(p) end
end

-- A worker: takes jobs from pool p (which it has joined) until the pool
-- stops, or until the watchdog replaced it (its job was stuck), then
-- leaves.  The pool's threads run it; tests/test_pool.lua runs it to watch
-- its traces.
local function work(p)
    local L, counted = job_state(), 1
    while L ~= nil do
        local j = take(p)
        if j == nil then break end
        local deadline = deadline_of(j)
        if deadline > 0 and now() >= deadline then cancel(j, TIMEOUT) end   -- begin skips it
        if begin(j, L) ~= 0 then
            if deadline > 0 then watch(p) end   -- the watchdog stops it at its deadline
            call(L, RUN)
            ran(j)
            call(L, FINISH)   -- stores the result; else the job failed
        end
        if done(j) ~= 0 then
            counted = 0
            break
        end
        if not call(L, RESET) then
            vm.close(L)
            L = job_state()
        end
    end
    if L ~= nil then vm.close(L) end
    C.lja_pool_leave(p, counted)
end
Pool._work = work

-- The watchdog: cancels running jobs past their deadline, and replaces the
-- worker of a job that has not stopped GRACE seconds after its cancel (it
-- is stuck in C: the pool keeps its size, and the old thread leaves when
-- its job returns).  Sleeps until the next of these times, or until woken
-- (a job with a deadline begins, a running job is cancelled, the pool stops).
local function watchdog(p)
    local max = 16
    local jobs = ffi.new("lja_job *[?]", max)
    while true do
        local n = C.lja_pool_running(p, jobs, max)
        local t, next = now(), math.huge
        for i = 0, math.min(n, max) - 1 do
            local j = jobs[i]
            local reason, deadline = C.lja_job_cancelled(j), deadline_of(j)
            if reason == 0 and deadline > 0 then
                if t >= deadline then
                    cancel(j, TIMEOUT)
                    reason = TIMEOUT
                else
                    next = math.min(next, deadline)
                end
            end
            if reason ~= 0 then
                local stuck = C.lja_job_cancel_time(j) + GRACE
                if t < stuck then
                    next = math.min(next, stuck)
                elseif C.lja_job_replace(j) == 1 then
                    start_worker(p)
                end
            end
            C.lja_job_release(j)
        end
        if n > max then   -- look again at once, at all of them
            max = n * 2
            jobs = ffi.new("lja_job *[?]", max)
        elseif C.lja_pool_watch_wait(p, next == math.huge and -1 or math.max(next - now(), 0)) ~= 0 then
            break
        end
    end
    C.lja_pool_unwatch(p)
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

local job_out = ffi.new("lja_job *[1]")
local len_out = ffi.new("size_t[1]")

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

-- Queues a job; returns its handle, or nil, "pool is shut down".
local function submit(pool, code, ctx, opts, level)
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
    local objs, nobjs = transfer.objs_array()
    local rc = C.lja_pool_submit(pool, p, len, objs, nobjs, timeout, job_out)
    transfer.forget_exported()   -- the job holds them now, or the shim released them
    if rc == LJA_ECLOSED then
        return nil, "pool is shut down"
    elseif rc ~= LJA_OK then
        error("lj-async: cannot submit: " .. shim.strerror(rc), level)
    end
    return ffi.gc(job_out[0], C.lja_job_release), timeout
end

-- Waits up to `timeout` for job h; one past its deadline is cancelled (a
-- queued one is then done at once, with no worker free to see it).
local function wait(h, timeout)
    local deadline = deadline_of(h)
    if deadline > 0 then
        local left = math.max(deadline - now(), 0)
        if timeout < 0 or left < timeout then
            if C.lja_job_wait(h, left) == LJA_OK then return LJA_OK end
            cancel(h, TIMEOUT)
            if timeout >= 0 then timeout = math.max(timeout - left, 0) end
        end
    end
    return C.lja_job_wait(h, timeout)
end

local function results(reason, n, ok, ...)
    if not ok and reason ~= 0 then return nil, REASONS[reason] end
    return transfer.results(false, ok, ...)
end

-- A finished job's return values, or nil, err.  A job that ran to its end
-- gives its results even when a cancel came too late to stop it: they may
-- hold what it took from a channel.
local function outcome(job)
    local reason = C.lja_job_cancelled(job)
    local p = C.lja_job_result(job, len_out)
    if p == nil then
        if reason ~= 0 then return nil, REASONS[reason] end
        return nil, "lj-async: the job failed in its worker"
    end
    return results(reason, transfer.decode(p, len_out[0]))
end

function methods:submit(code, ctx, opts)
    local job, timeout = submit(self, code, ctx, opts, 2)
    if not job then return nil, timeout end
    if C.lja_job_wait(job, timeout) == LJA_ETIMEDOUT then
        C.lja_job_cancel(job, C.LJA_JOB_TIMEOUT)
        return nil, "timeout"
    end
    return outcome(job)
end

local Job = {}
Job.__index = Job

local pool_ptr = ffi.typeof("lja_pool *")

function methods:submit_async(code, ctx, opts)
    local job, err = submit(self, code, ctx, opts, 2)
    if not job then return nil, err end
    -- The job anchors its pool's memory, not its handles: a plain pointer.
    return setmetatable({ handle = job, pool = ffi.cast(pool_ptr, self) }, Job)
end

-- The job's results once it is done; nil, "timeout" if it is not done in
-- `timeout` seconds (it goes on); nil, err if it failed or was stopped.
function Job:wait(timeout)
    if wait(self.handle, shim.timeout_arg(timeout, 2)) == LJA_ETIMEDOUT then
        return nil, "timeout"
    end
    return outcome(self.handle)
end

-- Stops the job: true if it was queued or running, false if it was done.
-- The watchdog replaces its worker if it does not stop (stuck in C).
function Job:cancel()
    if cancel(self.handle, C.LJA_JOB_CANCELLED) ~= LJA_OK then return false end
    watch(self.pool)
    return true
end

function methods:active_workers()
    return C.lja_pool_size(self)
end

-- Refuses new jobs and cancels queued ones; running jobs finish, or are
-- stopped after `grace` seconds.  True once all have ended, else false, err.
function methods:shutdown(grace)
    local rc = C.lja_pool_shutdown(self, shim.timeout_arg(grace, 2))
    if rc == LJA_OK then return true end
    return false, "some jobs did not stop (blocked in C?)"
end

methods.id = object.id

return Pool
