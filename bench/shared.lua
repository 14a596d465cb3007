-- Shared tables: get, set and update of a number under key "n", from one
-- thread and from two at once on one table, beside a mutex-protected C hash
-- map doing the same.  With LJA_BENCH_EFFIL=/path/to/effil.so, also beside
-- effil's shared table in the same run.  Building effil: clone
-- github.com/effil/effil with its submodules; with GCC 12 its pinned sol2
-- (345a398) needs the calls `stack::push<const wchar_t*>(L, str, str + sz)`
-- (and char16_t, char32_t) in libs/sol/single/sol/sol.hpp to pass a pointer
-- variable for `str` (the overload is ambiguous); then
--   cmake -S effil -B effil/build -DLUA_INCLUDE_DIR=/usr/include/luajit-2.1 -DBUILD_ROCK=ON
--   make -C effil/build effil       # effil/build/effil.so
local ffi = require "ffi"
local shared = require "lj-async.shared"
local channel = require "lj-async.channel"
local Thread = require "lj-async.thread"
local B = require "bench.common"

local N = 2000000
local GET, SET, UPDATE = 0, 1, 2

-- The loop one thread runs (no upvalues: it crosses to threads).
local function loop(t, n, op)
    local shared = require "lj-async.shared"
    if op == 0 then
        local s = 0
        for _ = 1, n do s = s + t.n end
        return s
    elseif op == 1 then
        for i = 1, n do t.n = i end
    else
        local add = function(old) return old + 1 end
        for _ = 1, n do shared.update(t, "n", add) end
    end
    return 0
end

local function one_thread(op, n)
    return function()
        local t = shared.table { n = 0 }
        local t0 = B.now()
        loop(t, n, op)
        local s = B.now() - t0
        if op == UPDATE then assert(t.n == n, "updates were lost") end
        return n / s
    end
end

-- Two threads on one table, started together: operations per second of both.
local function two_threads(op, n)
    return function()
        local t = shared.table { n = 0 }
        local ready, go = channel.new(), channel.new()
        local threads = {}
        for i = 1, 2 do
            threads[i] = Thread.new(function(loop, t, n, op, ready, go)
                ready:send(true)
                go:recv()
                return loop(t, n, op)
            end, loop, t, n, op, ready, go)
        end
        ready:recv()
        ready:recv()
        local t0 = B.now()
        go:send(true)
        go:send(true)
        for i = 1, 2 do assert(threads[i]:join(120)) end
        local s = B.now() - t0
        if op == UPDATE then assert(t.n == 2 * n, "updates were lost") end
        return 2 * n / s
    end
end

local value = ffi.new("double[1]")
local function c_map(op, threads, n)
    return function()
        local s = B.native.ljabench_locked_map(n, threads, op, value)
        assert(s > 0, "the C baseline failed")
        return math.max(threads, 1) * n / s
    end
end

-- effil's shared table, when LJA_BENCH_EFFIL names its library.
local function effil_rates()
    local path = os.getenv("LJA_BENCH_EFFIL")
    if not path or path == "" then return nil end
    package.cpath = (path:match("^(.*/)") or "./") .. "?.so;" .. package.cpath
    local effil = require "effil"
    -- a copy of the loop, so that its traces are effil's own
    local effil_loop = load(string.dump(loop))
    local function rate(op)
        return function()
            local t = effil.table { n = 0 }
            local t0 = B.now()
            effil_loop(t, N, op)
            return N / (B.now() - t0)
        end
    end
    return B.median(rate(GET)), B.median(rate(SET))
end

return function()
    one_thread(GET, N)()   -- warm up
    local get1, set1 = B.median(one_thread(GET, N)), B.median(one_thread(SET, N))
    local upd1 = B.median(one_thread(UPDATE, N / 4))
    local get2, set2 = B.median(two_threads(GET, N / 2)), B.median(two_threads(SET, N / 2))
    local upd2 = B.median(two_threads(UPDATE, N / 8))
    local cget1, cset1, cupd1 = B.median(c_map(GET, 0, N)), B.median(c_map(SET, 0, N)), B.median(c_map(UPDATE, 0, N))
    local cget2, cset2, cupd2 = B.median(c_map(GET, 2, N / 2)), B.median(c_map(SET, 2, N / 2)), B.median(c_map(UPDATE, 2, N / 2))
    local rows = {
        { "shared: get a number, 1 thread", get1, "ops/s", "C mutex+hash map get", cget1, ">= 2M/s" },
        { "shared: set a number, 1 thread", set1, "ops/s", "C mutex+hash map set", cset1, ">= 2M/s" },
        { "shared: get a number, 2 threads", get2, "ops/s", "C mutex+hash map get, 2 threads", cget2, "" },
        { "shared: set a number, 2 threads", set2, "ops/s", "C mutex+hash map set, 2 threads", cset2, "" },
        { "shared: update (+1), 1 thread", upd1, "ops/s", "C mutex+hash map +1", cupd1, "" },
        { "shared: update (+1), 2 threads", upd2, "ops/s", "C mutex+hash map +1, 2 threads", cupd2, "" },
    }
    local eget, eset = effil_rates()
    if eget then
        rows[#rows + 1] = { "shared: get a number, 1 thread", get1, "ops/s", "effil shared table get", eget, ">= 3" }
        rows[#rows + 1] = { "shared: set a number, 1 thread", set1, "ops/s", "effil shared table set", eset, ">= 3" }
    end
    return rows
end
