-- lj-async.thread: OS threads, each running a function in its own lua_State
-- (README: `lj-async.thread`).
--
-- The shim starts the thread in a spare state, or one made from a recipe
-- set once per process (csrc/lua.c).  After a thread, its state is reset
-- (lj-async.reset: globals and standard library as they were) and kept for
-- the next thread, unless the thread loaded the FFI or a C module, whose
-- effects no reset undoes: then the state is closed.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local vm = require "lj-async.vm"

ffi.cdef [[
typedef struct lja_thread lja_thread;
int lja_lua_set_recipe(const char *chunk, size_t len, int nargs,
                       const char *const *args, const size_t *lens, int spare_limit);
int lja_lua_spawn(lja_thread **out, const char *input, size_t len);
int lja_thread_join(lja_thread *t, double timeout);
void lja_thread_release(lja_thread *t);
const char *lja_thread_result(lja_thread *t, size_t *len);
void lja_thread_yield(void);
uint64_t lja_thread_id(void);
int lja_cpu_count(void);
void lja_sleep(double seconds);
]]

local C = shim.C
local type, select, error, tostring, unpack = type, select, error, tostring, unpack
local LJA_OK, LJA_ETIMEDOUT = C.LJA_OK, C.LJA_ETIMEDOUT

local Thread = {}
Thread._VERSION = shim.VERSION
Thread.__index = Thread

local CPU_COUNT = C.lja_cpu_count()

-- What a thread's state runs: registry["lj-async.run"] takes the thread's
-- input (path, cpath, code, arguments) and returns its result message.
local RUNTIME = vm.compile([[
local transfer = require "lj-async.transfer"
local tostring, load, pcall, xpcall = tostring, load, pcall, xpcall
local registry = debug.getregistry()

local function execute(n, path, cpath, code, ...)
    package.path, package.cpath = path, cpath
    return assert(load(code, "=(thread)"))(...)
end

local function run(input)
    return transfer.encode_outcome("thread", xpcall(execute, transfer.traceback, transfer.decode_transient(input)))
end

registry["lj-async.run"] = function(input)
    local ok, msg = pcall(run, input)
    if ok then return msg end
    return transfer.encode_string(2, false, "lj-async: the thread failed: " .. tostring(msg))
end
registry["lj-async.reset"] = require("lj-async.reset").snapshot()
]], "lj-async.thread runtime")

do
    local chunk, args = vm.args(RUNTIME)
    local n, ptrs, lens = vm.c_strings(args)
    local rc = C.lja_lua_set_recipe(chunk, #chunk, n, ptrs, lens, math.min(math.max(2, CPU_COUNT), 8))
    if rc ~= LJA_OK then error("lj-async: cannot set up threads: " .. shim.strerror(rc)) end
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

function Thread.new(func, ...)
    local code = transfer.code_of(func, 2)
    local p, len = transfer.encode_at(2, 3, select("#", ...) + 3, package.path, package.cpath, code, ...)
    local anchors = transfer.take_anchors()
    local rc = C.lja_lua_spawn(handle_out, p, len)
    if rc ~= LJA_OK then
        transfer.drop_exported()
        error("lj-async: cannot create a thread: " .. shim.strerror(rc), 2)
    end
    if detached[1] then sweep() end
    local h = handle_out[0]
    if anchors then
        return setmetatable({ handle = ffi.gc(h, function(h) detach(h, anchors) end), anchors = anchors }, Thread)
    end
    return setmetatable({ handle = ffi.gc(h, release) }, Thread)
end

local lenbuf = ffi.new("size_t[1]")

function Thread:join(timeout)
    timeout = shim.timeout_arg(timeout, 2)
    local r = self.result
    if r then return transfer.results(true, unpack(r, 1, r.n)) end
    local h = self.handle
    if h == nil then error("lj-async: join on a destroyed thread", 2) end
    if detached[1] then sweep() end
    if join_c(h, timeout) == LJA_ETIMEDOUT then
        return false, "timeout"
    end
    if self.anchors then   -- the thread has ended: its anchors may go
        self.anchors = nil
        ffi.gc(h, release)
    end
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

function Thread.sleep(seconds)
    C.lja_sleep(shim.timeout_arg(seconds, 2))
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
