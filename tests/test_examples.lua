-- Every example in examples/ runs, within a time bound, and prints what it
-- shows: they must never rot.
local lu = require "luaunit"
local H = require "tests.helpers"

-- The example's stdout and stderr; fails unless it exits 0 within 60 s.
local function run(name)
    local out, ok = H.sh("timeout 60 luajit examples/" .. name .. ".lua")
    lu.assertTrue(ok, name .. ".lua failed or took over 60 s:\n" .. out)
    return out
end

local function contains_all(out, lines)
    for _, line in ipairs(lines) do lu.assertStrContains(out, line) end
end

TestExamples = {}

function TestExamples:setUp()
    H.skip_without_fork(lu)
end

function TestExamples:test_thread()
    local out = run("thread")
    contains_all(out, {
        "primes up to 10^6: 78498 (expected 78498)",
        "one atomic counter after 3 threads x 10000 adds: 30000",
        "a failing thread: join returned nil, \"examples/thread.lua:",
        "attempt to index local 'x' (a nil value)",
        "join(0) on a sleeping thread:\tfalse\ttimeout",
        "join() once it is done:\ttrue\tlate",
    })
    lu.assertEquals(select(2, out:gsub("primes in its quarter", "")), 4)
end

function TestExamples:test_callback()
    contains_all(run("callback"), {
        "C thread 1: the callback returned 1001",
        "C thread 4: the callback returned 1016",
        "qsort with a Lua comparator: 9 5 4 3 1 1",
        "half(10) = 5",
        "half(7) = 0, last_error: examples/callback.lua:",
        "odd number 7",
    })
end

function TestExamples:test_channel()
    contains_all(run("channel"), {
        "squares from 2 workers: 1 4 9 16 25 36 49 64 81 100",
        "a table crossed: point (1, 2)",
        "sending a coroutine: lj-async: cannot send a coroutine",
        "recv(0.1) on an empty channel:\tnil\ttimeout",
        "select: the channel ready first is b, with \"from b\"",
    })
end

function TestExamples:test_state()
    contains_all(run("state"), {
        "add apples ->\t1",
        "pears after 3 threads x 100 adds ->\t300",
        "a bad command: examples/state.lua:",
        "unknown command bogus",
        "state \"counter\" has id",
    })
end

function TestExamples:test_shared()
    contains_all(run("shared"), {
        "config.limits.threads =\t4",
        "hits after 4 threads x 10000 updates:\t40000\tworkers in shared.G:\t4",
        "vec + vec =\t2\t4\tand tostring(vec) =\t(1, 2)",
        "config keys:\tlimits name",
        "dump(config).limits.threads =\t4",
        "storing a coroutine:\texamples/shared.lua:42: lj-async: shared table: cannot store a coroutine (t.co)",
    })
end

function TestExamples:test_pool()
    contains_all(run("pool"), {
        "Hello from Lua, request 123",
        "job: 1 squared is 1",
        "job: 4 squared is 16",
        "a failing job:\t(job):1: no such user",
        "a spinning job with timeout = 0.2:\tnil\ttimeout",
        "the pool still serves:\t144\t12",
        "shutdown:\ttrue",
    })
end

function TestExamples:test_ltask()
    local out = run("ltask")
    contains_all(out, {
        "] counter add 1 -> 101",
        "] counter add 3 -> 106",
        "] counter total -> 1106",
        "] hello, root, from service ",
        "] a bad call raised: examples/ltask/counter.lua:",
        "add wants a number, got string",
        "ltask: all services have quit:\ttrue",
    })
    -- The two naps ran at once: about 0.2 s, never the 0.4 s of one after the other.
    local took = tonumber(out:match("two naps of 0%.2 s took ([%d.]+) s"))
    lu.assertNotNil(took, out)
    lu.assertTrue(took >= 0.19 and took < 0.38, out)
end

function TestExamples:test_demo()
    local out = run("demo")
    contains_all(out, {
        "total 800000020000000 (expected 800000020000000)",
        "2. libuv's thread pool runs 16 jobs through the callback",
        "callback errors: nil",
        "done",
    })
end

H.run(lu)
