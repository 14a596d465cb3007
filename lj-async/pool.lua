-- lj-async.pool: worker threads, each with its own lua_State, running
-- precompiled bytecode on a context table (SPEC section 8).
--
-- The queue, the workers and the watchdog are in the shim (csrc/pool.c).
-- A job is a code string (Pool.compile's output, plain bytecode, or source)
-- and a context; the worker loads the code once (cached per worker), sets
-- the global `ctx`, runs it, sends back what it returns, and restores its
-- globals and standard library (lj-async.reset) for the next job.
--
-- Stopping jobs: Pool.compile instruments the source (lj-async.safepoint)
-- so that compiled loops call the shim's poll; plain bytecode runs with the
-- JIT off for its functions, where a count hook stops it.
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
lja_pool *lja_pool_new(int workers, const char *chunk, size_t len, int nargs,
                       const char *const *args, const size_t *lens);
int lja_pool_submit(lja_pool *p, const char *data, size_t len, void *const *objs,
                    int nobjs, double timeout, lja_job **out);
int lja_pool_size(lja_pool *p);
int lja_pool_shutdown(lja_pool *p, double grace);
int lja_job_wait(lja_job *j, double timeout);
const char *lja_job_result(lja_job *j, size_t *len);
int lja_job_cancel(lja_job *j, int reason);
int lja_job_cancelled(lja_job *j);
void lja_job_release(lja_job *j);
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

-- What every worker's state runs once (lj-async.vm's prelude gives it the
-- lj-async modules).
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
-- until this has returned to the shim.
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
    if C.lja_pool_set_result(msg, #msg, objs, nobjs) == C.LJA_OK then
        transfer.forget_exported()   -- the job holds them now
    else
        transfer.drop_exported()
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

function Pool.new(n)
    if type(n) ~= "number" or n < 1 or n > 4096 or n % 1 ~= 0 then
        error("lj-async: a pool's size is an integer from 1 to 4096", 2)
    end
    local chunk, args = vm.args(RUNTIME, HEADER, tostring(SKIP))
    local nargs, ptrs, lens = vm.c_strings(args)
    local p = wrap(C.lja_pool_new(n, chunk, #chunk, nargs, ptrs, lens))
    if p == nil then error("lj-async: cannot make a pool of " .. n .. " workers", 2) end
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
    if rc == LJA_ECLOSED then
        transfer.drop_exported()
        return nil, "pool is shut down"
    elseif rc ~= LJA_OK then
        transfer.drop_exported()
        error("lj-async: cannot submit: " .. shim.strerror(rc), level)
    end
    transfer.forget_exported()   -- the job holds them now
    return ffi.gc(job_out[0], C.lja_job_release), timeout
end

local function results(reason, n, ok, ...)
    if ok then return ... end
    if reason ~= 0 then return nil, REASONS[reason] end
    return nil, ...
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

function methods:submit_async(code, ctx, opts)
    local job, err = submit(self, code, ctx, opts, 2)
    if not job then return nil, err end
    return setmetatable({ handle = job }, Job)
end

-- The job's results once it is done; nil, "timeout" if it is not done in
-- `timeout` seconds (it goes on); nil, err if it failed or was stopped.
function Job:wait(timeout)
    if C.lja_job_wait(self.handle, shim.timeout_arg(timeout, 2)) == LJA_ETIMEDOUT then
        return nil, "timeout"
    end
    return outcome(self.handle)
end

-- Stops the job: true if it was queued or running, false if it was done.
function Job:cancel()
    return C.lja_job_cancel(self.handle, C.LJA_JOB_CANCELLED) == LJA_OK
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
