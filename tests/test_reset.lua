-- lj-async.reset: a reused state (a thread's, a pool worker's) starts every
-- run with the globals, environments and metatables it had at the start,
-- whatever the run before it changed.
local lu = require "luaunit"
local Pool = require "lj-async.pool"
local Thread = require "lj-async.thread"

-- What every check run returns when its state is clean.
local CHECK = [[
    return type(print), ("a"):upper(), getmetatable("").__index == string, #("abc"),
           getfenv(0) == _G, getfenv(1) == _G,
           select(2, pcall(require, "lja-test-no-such-module")):match("not found") ~= nil
]]
local CLEAN = { "function", "A", true, 3, true, true, true }

-- Runs which leave a state broken unless the reset undoes what they did.
local DIRTY = {
    ["setfenv(0, {})"] = "setfenv(0, {}) return 'dirty'",
    ["debug.setfenv of a library function"] = "debug.setfenv(require, {}) return 'dirty'",
    ["string metatable replaced"] =
        "debug.setmetatable('', { __index = { upper = function() return 'hijacked' end } }) return 'dirty'",
    ["string metatable removed"] = "debug.setmetatable('', nil) return 'dirty'",
}

-- Threads run in spare states that the threads before them used: after each
-- dirty thread, several check threads (one of them takes its state).
local function check_threads(dirty)
    for _ = 1, 8 do
        local ok, what = Thread.new(dirty):join(10)
        lu.assertEquals({ ok, what }, { true, "dirty" })
        for _ = 1, 3 do
            local r = { Thread.new(CHECK):join(10) }
            lu.assertEquals(r, { true, unpack(CLEAN) })
        end
    end
end

TestReset = {}

function TestReset:test_threads_on_reused_states()
    for name, dirty in pairs(DIRTY) do
        local ok, err = pcall(check_threads, dirty)
        lu.assertTrue(ok, name .. ": " .. tostring(err))
    end
end

-- A pool of one worker: every job runs in the same state.
function TestReset:test_pool_jobs_after_a_dirty_job()
    local pool = Pool.new(1)
    local check = Pool.compile(CHECK)
    for name, dirty in pairs(DIRTY) do
        lu.assertEquals({ pool:submit(Pool.compile(dirty), {}) }, { "dirty" }, name)
        for _ = 1, 2 do
            lu.assertEquals({ pool:submit(check, {}) }, CLEAN, name)
            lu.assertEquals({ pool:submit(CHECK, {}) }, CLEAN, name)
        end
    end
    lu.assertTrue(pool:shutdown())
end

-- The pool keeps a job's loaded function for the next run of the same code:
-- an environment the job set on itself is gone at the next run.
function TestReset:test_pool_job_that_sets_its_own_environment()
    local pool = Pool.new(1)
    local codes = {
        compiled = Pool.compile("local v = ctx.v setfenv(1, { v = v }) return v"),
        source = "local v = ctx.v setfenv(1, { v = v }) return v",
        bytecode = string.dump(function() local v = ctx.v setfenv(1, { v = v }) return v end),
    }
    for name, code in pairs(codes) do
        for i = 1, 3 do
            lu.assertEquals({ pool:submit(code, { v = i }) }, { i }, name)
        end
    end
    lu.assertTrue(pool:shutdown())
end

os.exit(lu.LuaUnit.run())
