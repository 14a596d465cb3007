-- bench/run.lua's options: --only picks benchmark files, and the CPU hogs of
-- --hogs never outlive the bench, whether it ends, fails or is killed.
local lu = require "luaunit"
local H = require "tests.helpers"

local LIB = (os.getenv("LJA_BUILD_DIR") or "build") .. "/ljabench.so"
-- One short benchmark file, once: the fastest full pass through run.lua.
local RUN = ("LJA_BENCH_RUNS=1 LJA_BENCH_LIB=%s timeout 120 luajit bench/run.lua --only function_cross"):format(LIB)

local function alive(pid)
    return select(2, H.sh("kill -0 " .. pid))
end

local function hog_pids(out)
    local pids = {}
    for pid in (out:match("CPU hogs[^\n]*pids ([%d ]+)") or ""):gmatch("%d+") do pids[#pids + 1] = pid end
    return pids
end

-- Polls until none of the pids lives, for at most `seconds`; the survivors.
local function survivors(pids, seconds)
    local deadline = H.now() + seconds
    repeat
        local left = {}
        for _, pid in ipairs(pids) do
            if alive(pid) then left[#left + 1] = pid end
        end
        if #left == 0 or H.now() > deadline then return left end
        H.sh("sleep 0.1")
    until false
end

TestBench = {}

function TestBench:setUp()
    H.skip_without_fork(lu)   -- the tests run the bench as a subprocess
    if not H.read(LIB) then lu.skip("no " .. LIB .. " (configure with -DLJA_BENCH=ON)") end
end

function TestBench:test_only_runs_the_named_files()
    local out, ok = H.sh(RUN)
    lu.assertTrue(ok, out)
    lu.assertStrContains(out, "only: bench.function_cross")
    lu.assertStrContains(out, "| function, 3 upvalues: encode+decode")
    lu.assertNotStrContains(out, "channel")
    local bad, bad_ok = H.sh("luajit bench/run.lua --only no_such_bench")
    lu.assertFalse(bad_ok)
    lu.assertStrContains(bad, "--only matches no benchmark")
end

function TestBench:test_hogs_are_stopped_at_the_end()
    local out, ok = H.sh(RUN .. " --hogs 2")
    lu.assertTrue(ok, out)
    local pids = hog_pids(out)
    lu.assertEquals(#pids, 2, out)
    lu.assertStrContains(out, "stopped 2 CPU hogs")
    lu.assertEquals(survivors(pids, 5), {})
end

function TestBench:test_hogs_end_when_the_bench_is_killed()
    -- The bench is killed (no cleanup of its own runs) once its hogs are up,
    -- in its channel rows (which take several seconds).
    local dir = H.tmpdir()
    local cmd = RUN:gsub("timeout 120 ", ""):gsub("function_cross", "channel")
    local out = H.sh(([[
        %s --hogs 2 >%s/out 2>&1 & pid=$!
        for i in $(seq 100); do grep -q "CPU hogs" %s/out && break; sleep 0.1; done
        kill -9 $pid; wait $pid; cat %s/out]]):format(cmd, dir, dir, dir))
    H.sh("rm -rf " .. dir)
    local pids = hog_pids(out)
    lu.assertEquals(#pids, 2, out)
    lu.assertNotStrContains(out, "stopped 2 CPU hogs")
    lu.assertEquals(survivors(pids, 10), {})
end

H.run(lu)
