-- lj-async.thread: OS threads, each running a function in its own lua_State
-- (SPEC section 2).
--
-- A thread's state is built ahead: every thread, once its result is stored
-- and its joiners are woken, builds a spare state for a later thread and
-- then closes its own, so neither cost sits between Thread.new and join.
local ffi = require "ffi"
local shim = require "lj-async.shim"
local transfer = require "lj-async.transfer"
local vm = require "lj-async.vm"

ffi.cdef [[
typedef struct lja_thread lja_thread;
typedef void (*lja_thread_fn)(void *arg);
int lja_thread_create(lja_thread **out, lja_thread_fn run, void *arg,
                      lja_thread_fn cleanup, void *cleanup_arg,
                      const char *input, size_t input_len);
int lja_thread_join(lja_thread *t, double timeout);
void lja_thread_release(lja_thread *t);
const char *lja_thread_input(lja_thread *t, size_t *len);
int lja_thread_set_result(lja_thread *t, const char *data, size_t len);
const char *lja_thread_result(lja_thread *t, size_t *len);
void lja_thread_finish(lja_thread *t);
lja_thread *lja_thread_self(void);
void lja_thread_yield(void);
uint64_t lja_thread_id(void);
int lja_cpu_count(void);
void lja_sleep(double seconds);
int lja_spare_push(void *state, int limit);
int lja_spare_pop(void **state);
int lja_spare_count(void);
]]

local C = shim.C
local type, select, error, tostring, unpack = type, select, error, tostring, unpack
local LJA_OK, LJA_ETIMEDOUT = C.LJA_OK, C.LJA_ETIMEDOUT

local Thread = {}
Thread.__index = Thread

local CPU_COUNT = C.lja_cpu_count()
local SPARE_LIMIT = math.min(math.max(2, CPU_COUNT), 8)

-- Turn a function, Lua source or bytecode into something load() takes in
-- another state.  Raises at the caller's level on what cannot cross.
local function code_of(func, level)
    local tf = type(func)
    if tf == "function" then
        if debug.getinfo(func, "S").what == "C" then
            error("lj-async: cannot run a C function in another state", level + 1)
        end
        local up = debug.getupvalue(func, 1)
        if up then
            error("lj-async: the function has upvalue '" .. up .. "' and cannot cross states "
                .. "(require modules and pass values as arguments instead)", level + 1)
        end
        return string.dump(func)
    elseif tf == "string" then
        if func:sub(1, 3) ~= "\27LJ" then
            local ok, err = load(func, "=(thread source)")
            if not ok then error("lj-async: " .. err, level + 1) end
        end
        return func
    end
    error("lj-async: expected a function, Lua source or bytecode, got " .. tf, level + 1)
end
Thread.code_of = code_of

local function timeout_arg(timeout, level)
    if timeout == nil then return -1 end
    if type(timeout) ~= "number" or timeout ~= timeout then
        error("lj-async: the timeout must be a number of seconds or nil", level + 1)
    end
    return timeout < 0 and 0 or timeout
end
Thread.timeout_arg = timeout_arg

------------------------------------------------------------------------------
-- Inside a thread's state.

local lenbuf = ffi.new("size_t[1]")

local function traceback(e)
    return debug.traceback(tostring(e), 2)
end

local function execute(n, path, cpath, code, ...)
    package.path, package.cpath = path, cpath
    return assert(load(code, "=(thread)"))(...)
end

local function finish(t, ...)
    local ok, p, len = pcall(transfer.encode, select("#", ...), ...)
    if not ok then
        p, len = transfer.encode(2, false, "the thread's results cannot cross: " .. tostring(p))
    end
    C.lja_thread_set_result(t, p, len)
end

local new_spare

local function run()
    local t = C.lja_thread_self()
    local p = C.lja_thread_input(t, lenbuf)
    finish(t, xpcall(execute, traceback, transfer.decode(p, lenbuf[0])))
end

-- Runs in a fresh state: sets what the thread's entry (lja_lua_run) calls.
function Thread.boot()
    debug.getregistry()["lj-async.run"] = function()
        local t = C.lja_thread_self()
        local ok, err = pcall(run)
        if not ok then pcall(finish, t, false, "lj-async: thread failed: " .. tostring(err)) end
        C.lja_thread_finish(t)
        -- Joiners are awake; now prepare a state for a later thread.
        if C.lja_spare_count() < SPARE_LIMIT then pcall(new_spare) end
    end
end

------------------------------------------------------------------------------
-- In the creating state.

local state_cell = ffi.new("void *[1]")

function new_spare()
    local L = vm.new("lj-async.thread")
    if C.lja_spare_push(L, SPARE_LIMIT) ~= LJA_OK then vm.close(L) end
end

local handle_out = ffi.new("lja_thread *[1]")

function Thread.new(func, ...)
    local code = code_of(func, 2)
    local ok, p, len = pcall(transfer.encode, select("#", ...) + 3, package.path, package.cpath, code, ...)
    if not ok then error(p, 2) end
    local L
    if C.lja_spare_pop(state_cell) == LJA_OK then
        L = state_cell[0]
    else
        L = vm.new("lj-async.thread")
    end
    local rc = C.lja_thread_create(handle_out, C.lja_lua_run, L, C.lja_lua_close, L, p, len)
    if rc ~= LJA_OK then
        vm.close(L)
        error("lj-async: cannot create a thread: " .. shim.strerror(rc), 2)
    end
    return setmetatable({ handle = ffi.gc(handle_out[0], C.lja_thread_release) }, Thread)
end

local function pack(...)
    return { n = select("#", ...), ... }
end

local function results(ok, ...)
    if ok then return true, ... end
    return nil, ...
end

function Thread:join(timeout)
    if self.result then return results(unpack(self.result, 1, self.result.n)) end
    local h = self.handle
    if h == nil then error("lj-async: join on a destroyed thread", 2) end
    local rc = C.lja_thread_join(h, timeout_arg(timeout, 2))
    if rc == LJA_ETIMEDOUT then return false, "timeout" end
    local p = C.lja_thread_result(h, lenbuf)
    local r = pack(select(2, transfer.decode(p, lenbuf[0])))
    self.result = r
    return results(unpack(r, 1, r.n))
end

function Thread:destroy()
    local h = self.handle
    if h ~= nil then
        self.handle = nil
        C.lja_thread_release(ffi.gc(h, nil))
    end
end

function Thread.sleep(seconds)
    C.lja_sleep(timeout_arg(seconds, 2))
end

function Thread.yield()
    C.lja_thread_yield()
end

function Thread.id()
    return tonumber(C.lja_thread_id())
end

function Thread.cpu_count()
    return CPU_COUNT
end

return setmetatable(Thread, { __call = function(_, ...) return Thread.new(...) end })
