-- lj-async.pool with 2 workers: trivial jobs through submit from 1, 2, 4 and
-- 8 submitting threads, the seed's job, what the safepoints cost a loop and
-- what the reset between jobs costs; beside a C pool of 2 workers with as
-- many submitters (bench/native.c; with one submitter also the C
-- ping-pongs: a job is a round trip), the loop as written and the trivial
-- job's own time, measured in the same run.
local ffi = require "ffi"
local Pool = require "lj-async.pool"
local Thread = require "lj-async.thread"
local safepoint = require "lj-async.safepoint"
local B = require "bench.common"

ffi.cdef "int64_t lja_atomic_load(const int64_t *p);"

local TRIVIAL = Pool.compile("return 1", "trivial")
local SEED = Pool.compile('return ctx.message .. " from Lua"', "script")

-- jobs/s through submit from `submitters` threads (the main one included).
local function jobs(pool, code, ctx, submitters, n)
    return function()
        local per = math.floor(n / submitters)
        local t0 = B.now()
        local others = {}
        for i = 2, submitters do
            others[i] = Thread.new(function(pool, code, ctx, per)
                for _ = 1, per do assert(pool:submit(code, ctx)) end
                return true
            end, pool, code, ctx, per)
        end
        for _ = 1, per do assert(pool:submit(code, ctx)) end
        for i = 2, submitters do assert(others[i]:join()) end
        return per * submitters / (B.now() - t0)
    end
end

-- ns per iteration of a loop as Pool.compile instruments it (a poll of the
-- shim each iteration, as on a worker) and as written.
local LOOP = "local x = 0 for i = 1, N do x = x + i % 7 end return x"
local function ns_per_iteration(instrumented, n)
    local f
    if instrumented then
        local load_cell, cancel = require("lj-async.shim").C.lja_atomic_load, ffi.new("int64_t[1]")
        local g = assert(load(safepoint.instrument(LOOP)))
        local function poll() if load_cell(cancel) ~= 0 then error("cancelled") end end   -- as a job state's poll
        f = function() return g(poll) end
    else
        f = assert(load(LOOP))
    end
    return function()
        rawset(_G, "N", n)
        local t0 = B.now()
        f()
        return (B.now() - t0) / n * 1e9
    end
end

-- Seconds one reset of a worker's state takes, measured in a job on that
-- worker: it calls the worker's own reset function in a loop.
local RESET = Pool.compile([[
    local ffi = require "ffi"
    ffi.cdef "double lja_now(void);"   -- (this worker's state is then replaced)
    local now = require("lj-async.shim").C.lja_now
    local reset = debug.getregistry()["lj-async.pool.reset"]
    local n = ctx
    local t0 = now()
    for i = 1, n do
        rawset(_G, "x", i)   -- a job that leaves a global behind
        reset()
    end
    return (now() - t0) / n
]], "reset cost")

return function()
    local pool = Pool.new(2)
    local one = B.median(jobs(pool, TRIVIAL, nil, 1, 50000))
    local two = B.median(jobs(pool, TRIVIAL, nil, 2, 100000))
    local four = B.median(jobs(pool, TRIVIAL, nil, 4, 100000))
    local eight = B.median(jobs(pool, TRIVIAL, nil, 8, 100000))
    local seed = B.median(jobs(pool, SEED, { message = "Hello", params = { id = "123" } }, 2, 100000))
    local per_reset = B.median(function() return assert(pool:submit(RESET, 20000)) end)
    pool:shutdown()
    local function c_pool(submitters, n)
        return { ("C pool, 2 workers, %d submitter%s"):format(submitters, submitters > 1 and "s" or ""),
            B.median(B.c_rate(function(m) return B.native.ljabench_pool(m, submitters, 2) end, n)) }
    end
    local c_one = B.round_trip(50000)
    table.insert(c_one, 1, c_pool(1, 50000))
    local c_two, c_four, c_eight = c_pool(2, 100000), c_pool(4, 100000), c_pool(8, 100000)
    local per_job = 1 / one
    local polled = B.median(ns_per_iteration(true, 1e8))
    local plain = B.median(ns_per_iteration(false, 1e8))
    return {
        { "pool: trivial jobs, 1 submitter", one, "jobs/s", c_one, "" },
        { "pool: trivial jobs, 2 submitters", two, "jobs/s", { c_two }, ">= 60k/s" },
        { "pool: trivial jobs, 4 submitters", four, "jobs/s", { c_four }, "" },
        { "pool: trivial jobs, 8 submitters", eight, "jobs/s", { c_eight }, "" },
        { "pool: seed's job, 2 submitters", seed, "jobs/s", { c_two }, "" },
        { "pool: loop with safepoints", polled, "ns/iter", "the loop as written", plain, "" },
        { "pool: reset between jobs", per_reset * 1e6, "us/job", "trivial job, 1 submitter (us)", per_job * 1e6, "< 0.2" },
    }
end
