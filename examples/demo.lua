-- lj-async demo: OS threads running Lua, and a C library (libuv's thread
-- pool) calling a LuaJIT function from its own threads while this state
-- keeps running JIT-compiled code.  Run from the repository root:
--   luajit examples/demo.lua
local ffi = require "ffi"
local Thread = require "lj-async.thread"
local CallbackFactory = require "lj-async.callback"

-- 1. Threads: each sums a range in its own lua_State on its own OS thread.
print(("1. %d threads summing 1..4e7 in parts"):format(4))
local threads = {}
for i = 0, 3 do
    threads[#threads + 1] = Thread.new(function(from, to)
        local s = 0
        for k = from, to do s = s + k end
        return s, require("lj-async.thread").id()
    end, i * 1e7 + 1, (i + 1) * 1e7)
end
local total = 0
for i, t in ipairs(threads) do
    local ok, s, id = t:join()
    print(("   thread %d (OS thread id %d) -> %.0f"):format(i, id, s))
    total = total + s
    t:destroy()
end
print(("   total %.0f (expected %.0f)"):format(total, 4e7 * (4e7 + 1) / 2))

-- 2. libuv's thread pool calls a Lua callback from its worker threads.
local ok, uv = pcall(ffi.load, "uv")
if not ok then ok, uv = pcall(ffi.load, "libuv.so.1") end
if not ok then
    print("2. skipped: libuv is not installed (apt-get install libuv1-dev)")
    return
end
local work_t = "typedef struct { void *data; char rest[120]; } demo_work_t;"  -- uv_work_t
ffi.cdef(work_t)
ffi.cdef [[
typedef struct uv_loop_s uv_loop_t;
uv_loop_t *uv_default_loop(void);
int uv_queue_work(uv_loop_t *loop, demo_work_t *req, void (*work)(demo_work_t *),
                  void (*after)(demo_work_t *, int));
int uv_run(uv_loop_t *loop, int mode);
uint64_t lja_thread_id(void);
]]

-- The callback lives in its own states (two, so two pool threads may run it
-- at once); `setup` hands each state its configuration through a factory.
local Work = CallbackFactory("void (*)(demo_work_t *)", work_t)
local results = ffi.new("double[16][2]")
local cb = Work(function(results)
    local ffi = require "ffi"
    ffi.cdef "uint64_t lja_thread_id(void);"
    local S = require("lj-async.shim").C
    results = ffi.cast("double (*)[2]", results)
    return function(req)
        local job = tonumber(ffi.cast("intptr_t", req.data))
        local x = 0
        for k = 1, 1e6 do x = x + (job + k) % 7 end
        results[job][0] = x
        results[job][1] = tonumber(S.lja_thread_id())
    end
end, { setup = true, args = { ffi.cast("void *", results) }, states = 2 })

print("2. libuv's thread pool runs 16 jobs through the callback")
local loop = uv.uv_default_loop()
local reqs = ffi.new("demo_work_t[16]")
for i = 0, 15 do
    reqs[i].data = ffi.cast("void *", i)
    assert(uv.uv_queue_work(loop, reqs + i, cb:funcptr(), nil) == 0)
end
local spins, busy = 0, 0
while uv.uv_run(loop, 2) ~= 0 do      -- UV_RUN_NOWAIT: this state stays busy
    for k = 1, 1e5 do busy = busy + k % 3 end
    spins = spins + 1
end
local S = require("lj-async.shim").C
local main_id = tonumber(S.lja_thread_id())
local seen = {}
for i = 0, 15 do
    local id = results[i][1]
    seen[id] = (seen[id] or 0) + 1
    assert(results[i][0] > 0 and id ~= main_id, ("job %d: %s %s %s"):format(i, results[i][0], id, main_id))
end
for id, n in pairs(seen) do print(("   libuv worker (OS thread id %d) ran %d jobs"):format(id, n)) end
print(("   meanwhile this thread (id %d) ran %d rounds of its own JIT loop"):format(main_id, spins))
print("   callback errors: " .. tostring(cb:last_error()))
cb:free()
print("done")
