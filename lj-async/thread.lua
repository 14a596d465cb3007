-- lj-async.thread: OS threads, each running a function in its own lua_State
-- (README: `lj-async.thread`).
--
-- The shim starts the thread in a spare state, or in a new one that this
-- module makes (csrc/lua.c).  After a thread, its state is reset
-- (lj-async.reset: globals and standard library as they were) and kept for
-- the next thread, unless the thread loaded the FFI or a C module, whose
-- effects no reset undoes: then the state is closed.
--
-- Control (README: cancel, pause, status): the shim keeps each thread's
-- requests and wakes its waits (csrc/thread.c).  The thread meets them at
-- its cancellation points: the shim's waits, Thread.yield, the safepoints
-- of source code (lj-async.safepoint, as in the pool), and the count hook
-- of the step option; a cancel also sets a count hook at every instruction,
-- outside lj-async's own functions, so that a pcall cannot keep the thread
-- alive.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local vm = require "lj-async.vm"

ffi.cdef [[
typedef struct lja_thread lja_thread;
typedef struct lja_states lja_states;
lja_states *lja_lua_spares(int limit);
void *lja_states_pop(lja_states *st);
typedef struct lja_thread_opts {
    const char *name;
    size_t stack;
    const int *cpus;
    int ncpus;
    int step;
} lja_thread_opts;
int lja_lua_spawn(lja_thread **out, void *L, const char *input, size_t len,
                  const lja_thread_opts *opts);
int lja_thread_join(lja_thread *t, double timeout);
void lja_thread_release(lja_thread *t);
const char *lja_thread_result(lja_thread *t, size_t *len);
int sched_yield(void);
uint64_t lja_thread_id(void);
int lja_cpu_count(void);
void lja_sleep(double seconds);
enum { LJA_THREAD_CANCEL = 1, LJA_THREAD_PAUSE = 2 };
enum { LJA_THREAD_RUNNING, LJA_THREAD_PAUSED, LJA_THREAD_FINISHED, LJA_THREAD_CANCELLED };
int lja_thread_cancel(lja_thread *t);
int lja_thread_pause(lja_thread *t, double timeout);
void lja_thread_resume(lja_thread *t);
int lja_thread_state(lja_thread *t);
uint64_t lja_thread_handle_id(lja_thread *t);
const char *lja_thread_name(lja_thread *t);
int lja_thread_checkpoint(void);
int lja_thread_list(lja_thread **out, int cap);
]]

local C = shim.C
local type, select, error, tostring, unpack, pcall = type, select, error, tostring, unpack, pcall
local LJA_OK, LJA_ETIMEDOUT = C.LJA_OK, C.LJA_ETIMEDOUT
local check_cancel, timeout_arg = shim.check_cancel, shim.timeout_arg

local Thread = {}
Thread._VERSION = shim.VERSION
Thread.__index = Thread

local CPU_COUNT = C.lja_cpu_count()

-- What a thread's state runs: registry["lj-async.run"] takes the thread's
-- input (path, cpath, whether step is on, code, arguments) and returns its
-- result message.
-- It also returns true when a cancel stopped the thread's function: a
-- function that ran to its end gives its results even when a cancel came
-- too late (they may hold what it took from a channel).
local RUNTIME = vm.compile([[
local transfer = require "lj-async.transfer"
local safepoint = require "lj-async.safepoint"
local shim = require "lj-async.shim"
local tostring, pcall, xpcall = tostring, pcall, xpcall
local registry = debug.getregistry()
local poll_c = shim.C.lja_thread_poll
safepoint.for_threads()

local function execute(n, path, cpath, step, code, ...)
    package.path, package.cpath = path, cpath
    if step then   -- as effil's step: the count hook then sees all the code
        jit.off()
        jit.flush()
    end
    if type(code) == "string" and code:sub(1, 3) ~= "\27LJ" then code = safepoint.instrument(code, true) end
    return transfer.load_code(code, "=(thread)")(...)
end

local function outcome(ok, ...)
    if not ok and poll_c() % 2 == 1 then return transfer.encode_string(2, false, "cancelled"), true end
    return transfer.encode_outcome("thread", ok, ...), false
end

local function run(input)
    return outcome(xpcall(execute, transfer.traceback, transfer.decode_transient(input)))
end

registry["lj-async.run"] = function(input)
    local ok, msg, cancelled = pcall(run, input)
    if ok then return msg, cancelled end
    return transfer.encode_string(2, false, "lj-async: the thread failed: " .. tostring(msg)), false
end
registry["lj-async.reset"] = require("lj-async.reset").snapshot()
]], "lj-async.thread runtime")

-- A thread's state: a spare one (the spare stack is the process's), or a
-- new one that runs RUNTIME.  The recipe's arrays point into its strings.
local spares = C.lja_lua_spares(math.min(math.max(2, CPU_COUNT), 8))
local recipe = {}
recipe.chunk, recipe.args = vm.args(RUNTIME)
recipe.n, recipe.ptrs, recipe.lens = vm.c_strings(recipe.args)

local function thread_state()
    local L = C.lja_states_pop(spares)
    if L ~= nil then return L end
    return C.lja_lua_new(recipe.chunk, #recipe.chunk, recipe.n, recipe.ptrs, recipe.lens, nil)
end

local handle_out = ffi.new("lja_thread *[1]")
local thread_ptr = ffi.typeof("lja_thread *")
local release, join_c = C.lja_thread_release, C.lja_thread_join

-- Cdata sent by address to a thread (its anchors) live until the thread
-- has ended.  A Thread holds them; one destroyed or collected while its
-- thread runs leaves them here, with a handle, until a later Thread.new or
-- join finds that thread ended.
local detached = {}

local function sweep()
    for i = #detached, 1, -1 do
        local d = detached[i]
        if join_c(d[1], 0) == LJA_OK then
            release(d[1])
            table.remove(detached, i)
        end
    end
end

-- Releases the handle h; anchors stay while its thread runs.  Also a
-- finalizer: a collection may call it at any allocation, so the entry is
-- made before it is stored.
local function detach(h, anchors)
    if join_c(h, 0) == LJA_OK then
        release(h)
    else
        local entry = { ffi.cast(thread_ptr, h), anchors }
        detached[#detached + 1] = entry
    end
end

local KNOWN_OPTIONS = { name = true, cpus = true, stack = true, step = true }
local MIN_STACK, MAX_STACK = 2 ^ 18, 2 ^ 30   -- LuaJIT's C calls nest up to 200 deep
local MAX_CPU = 1023                          -- glibc's CPU_SETSIZE - 1
local cpus_buf = ffi.new("int[?]", MAX_CPU + 1)
local anchored   -- the options of a spawn, alive until the shim has copied them

local function option_error(what, got, level)
    error("lj-async: Thread.spawn: " .. what .. ", got " .. (type(got) == "number" and tostring(got) or type(got)),
        level + 1)
end

local function integer_in(v, min, max)
    return type(v) == "number" and v >= min and v <= max and v % 1 == 0
end

-- Spawn's options as the shim takes them (and whether step is given);
-- raises at `level` on a bad one, naming it.
local function thread_opts(opts, level)
    level = level + 1
    if type(opts) ~= "table" then option_error("the options are a table", opts, level) end
    for k in pairs(opts) do
        if not KNOWN_OPTIONS[k] then
            error("lj-async: Thread.spawn: unknown option '" .. tostring(k) .. "' (name, cpus, stack, step)", level)
        end
    end
    local o = ffi.new("lja_thread_opts")
    local name, cpus, stack, step = opts.name, opts.cpus, opts.stack, opts.step
    if name ~= nil then
        if type(name) ~= "string" or name:find("\0", 1, true) then
            option_error("opts.name must be a string without zero bytes", name, level)
        end
        o.name = name   -- start anchors opts while the shim copies it
    end
    if cpus ~= nil then
        if type(cpus) ~= "table" or #cpus == 0 or #cpus > MAX_CPU + 1 then
            option_error("opts.cpus must be a non-empty list of CPU numbers", cpus, level)
        end
        for i = 1, #cpus do
            if not integer_in(cpus[i], 0, MAX_CPU) then
                option_error("opts.cpus[" .. i .. "] must be a CPU number, an integer from 0 to " .. MAX_CPU,
                    cpus[i], level)
            end
            cpus_buf[i - 1] = cpus[i]
        end
        o.cpus, o.ncpus = cpus_buf, #cpus
    end
    if stack ~= nil then
        if not integer_in(stack, MIN_STACK, MAX_STACK) then
            option_error("opts.stack must be a size in bytes, an integer from 2^18 to 2^30", stack, level)
        end
        o.stack = stack
    end
    if step ~= nil then
        if not integer_in(step, 1, 2 ^ 31 - 1) then
            option_error("opts.step must be a number of VM instructions, an integer from 1 to 2^31-1", step, level)
        end
        o.step = step
    end
    return o, step ~= nil
end

-- Starts func; `level` is the public function's error level (2: its
-- caller), counted from here less one.
local function start(options, level, func, ...)
    level = level + 1
    local opts, step = nil, false
    anchored = options
    if options ~= nil then opts, step = thread_opts(options, level) end
    local code = transfer.code_of(func, level)
    local p, len = transfer.encode_at(level, 4, select("#", ...) + 4, package.path, package.cpath, step, code, ...)
    local anchors = transfer.take_anchors()
    local L = thread_state()
    local rc = L ~= nil and C.lja_lua_spawn(handle_out, L, p, len, opts) or C.LJA_ENOMEM
    anchored = nil
    if rc ~= LJA_OK then
        transfer.drop_exported()
        if rc == C.LJA_EINVAL and opts and opts.ncpus > 0 then
            error("lj-async: Thread.spawn: the system refused opts.cpus (none of them available?)", level)
        end
        error("lj-async: cannot create a thread: " .. shim.strerror(rc), level)
    end
    if detached[1] then sweep() end
    local h = handle_out[0]
    if anchors then
        return setmetatable({ handle = ffi.gc(h, function(h) detach(h, anchors) end), anchors = anchors }, Thread)
    end
    return setmetatable({ handle = ffi.gc(h, release) }, Thread)
end

function Thread.new(func, ...)
    local t = start(nil, 2, func, ...)
    return t
end

function Thread.spawn(opts, func, ...)
    local t = start(opts, 2, func, ...)
    return t
end

local lenbuf = ffi.new("size_t[1]")

-- The handle of a thread not destroyed, else raises at the caller of the
-- method `what`.
local function handle_of(self, what)
    local h = self.handle
    if h == nil then error("lj-async: " .. what .. " on a destroyed thread", 3) end
    return h
end

function Thread:join(timeout)
    timeout = timeout_arg(timeout, 2)
    local r = self.result
    if r then return transfer.results(true, unpack(r, 1, r.n)) end
    local h = handle_of(self, "join")
    if detached[1] then sweep() end
    if join_c(h, timeout) == LJA_ETIMEDOUT then
        check_cancel()
        return false, "timeout"
    end
    if self.anchors then   -- the thread has ended: its anchors may go
        self.anchors = nil
        ffi.gc(h, release)
    end
    self.cancelled = C.lja_thread_state(h) == C.LJA_THREAD_CANCELLED
    local p = C.lja_thread_result(h, lenbuf)
    if p == nil then
        r = transfer.pack(false, "lj-async: the thread failed before it could store a result")
    else
        r = transfer.pack(select(2, transfer.decode_transient(p, lenbuf[0])))
    end
    self.result = r
    return transfer.results(true, unpack(r, 1, r.n))
end

function Thread:destroy()
    local h = self.handle
    if h ~= nil then
        self.handle = nil
        ffi.gc(h, nil)
        local anchors = self.anchors
        if anchors then
            self.anchors = nil
            detach(h, anchors)
        else
            release(h)
        end
    end
end

-- "running" | "paused" | "done" | "failed", err | "cancelled".
function Thread:status()
    if not self.result then
        local s = C.lja_thread_state(handle_of(self, "status"))
        if s == C.LJA_THREAD_RUNNING then return "running" end
        if s == C.LJA_THREAD_PAUSED then return "paused" end
    end
    local ok, err = self:join(0)
    if self.cancelled then return "cancelled" end
    if ok then return "done" end
    return "failed", err
end

-- Asks the thread to stop at its next cancellation point; true once it has
-- stopped (join then gives nil, "cancelled", unless it ran to its end
-- first), false, "timeout" if it has not stopped in time.
function Thread:cancel(timeout)
    timeout = timeout_arg(timeout, 2)
    if self.result then return true end
    local h = handle_of(self, "cancel")
    C.lja_thread_cancel(h)
    if join_c(h, timeout) == LJA_ETIMEDOUT then
        check_cancel()
        return false, "timeout"
    end
    return true
end

-- Asks the thread to pause at its next cancellation point (not in sleep);
-- true once it is paused, false, "timeout" if not in time (it pauses when
-- it gets there), false and its status when it has ended.
function Thread:pause(timeout)
    timeout = timeout_arg(timeout, 2)
    local h = not self.result and handle_of(self, "pause")
    local rc = h and C.lja_thread_pause(h, timeout) or C.LJA_EINVAL
    if rc == LJA_OK then return true end
    if rc == LJA_ETIMEDOUT then
        check_cancel()
        return false, "timeout"
    end
    return false, (self:status())
end

-- Withdraws a pause; the thread goes on.  Nothing to do on a thread that
-- is not paused.
function Thread:resume()
    if self.result then return end
    C.lja_thread_resume(handle_of(self, "resume"))
end

-- The threads alive (started by this module, in any state).
function Thread.list()
    local cap = 64
    while true do
        local arr = ffi.new("lja_thread *[?]", cap)
        local n = C.lja_thread_list(arr, cap)
        local list = {}
        for i = 0, math.min(n, cap) - 1 do
            local h = arr[i]
            local s = C.lja_thread_state(h)
            if n <= cap and (s == C.LJA_THREAD_RUNNING or s == C.LJA_THREAD_PAUSED) then
                local name = C.lja_thread_name(h)
                list[#list + 1] = { id = tonumber(C.lja_thread_handle_id(h)),
                    name = name ~= nil and ffi.string(name) or nil,
                    status = s == C.LJA_THREAD_PAUSED and "paused" or "running" }
            end
            release(h)
        end
        if n <= cap then return list end
        cap = n + 16
    end
end

local function passed(ok, ...)
    if not ok then check_cancel() end
    return ok, ...
end

-- As pcall, but a cancel of the running thread passes through.
function Thread.pcall(f, ...)
    return passed(pcall(f, ...))
end

-- A cancellation point for cancel only.
function Thread.sleep(seconds)
    C.lja_sleep(timeout_arg(seconds, 2))
    check_cancel()
end

function Thread.yield()
    if C.lja_thread_checkpoint() ~= 0 then error(shim.CANCELLED, 0) end
    ffi.C.sched_yield()
end

function Thread.id()
    return tonumber(C.lja_thread_id())
end

function Thread.cpu_count()
    return CPU_COUNT
end

return setmetatable(Thread, { __call = function(_, ...) return Thread.new(...) end })
