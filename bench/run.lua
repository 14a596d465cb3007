-- Runs every benchmark and prints one table: each figure beside the
-- fastest baseline measured in the same run (for message passing, the
-- fastest plain-C program doing the same job) and their ratio, with any
-- other baselines of the row in a further column.  Medians of
-- LJA_BENCH_RUNS (default 5) runs.  From the repository root, after the
-- build:
--   luajit bench/run.lua [--hogs N] [--only NAME[,NAME...]]
-- --hogs N runs everything (the baselines too) beside N CPU hogs that this
-- script starts and stops; --only runs the benchmark files whose name
-- contains one of the NAMEs (e.g. --only channel,pool).
-- A header first says what ran where (figures from different machines,
-- loads or LuaJITs are not comparable); each row, once measured, is also
-- reported on stderr.
local ffi = require "ffi"
local benches = { "bench.thread_spawn", "bench.callback_call", "bench.channel_msgs", "bench.ltask_services", "bench.pool_jobs", "bench.function_cross", "bench.shared", "bench.asio" }
local B = require "bench.common"
local shim = require "lj-async.shim"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

ffi.cdef "int getpid(void);"

local function usage(msg)
    io.stderr:write(("bench/run.lua: %s\nusage: luajit bench/run.lua [--hogs N] [--only NAME[,NAME...]]\n"):format(msg))
    os.exit(2)
end

local hog_count, only = 0, nil
do
    local i = 1
    while arg and arg[i] do
        local a, v = arg[i], arg[i + 1]
        if a == "--hogs" then
            hog_count = tonumber(v)
            if not hog_count or hog_count < 0 or hog_count % 1 ~= 0 then usage("--hogs wants a count") end
            i = i + 2
        elseif a == "--only" then
            if not v then usage("--only wants a name") end
            only = {}
            for name in v:gmatch("[^,]+") do only[#only + 1] = name end
            i = i + 2
        else
            usage(("unknown argument %q"):format(a))
        end
    end
end

if only then
    local picked = {}
    for _, name in ipairs(benches) do
        for _, want in ipairs(only) do
            if name:find(want, 1, true) then
                picked[#picked + 1] = name
                break
            end
        end
    end
    if #picked == 0 then usage("--only matches no benchmark: " .. table.concat(benches, ", ")) end
    benches = picked
end

local function first_line(cmd)
    local f = io.popen(cmd .. " 2>/dev/null")
    local line = f:read("*l")
    f:close()
    return line
end

local function loadavg()
    return ((H.read("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)")) or "?"
end

-- CPU hogs: shell busy loops in processes of their own, so that they take
-- cores from the benchmark as other programs would, and so that their CPU
-- time is not the benchmark's.  Each also checks every few tens of
-- milliseconds that this process lives and ends when it does not: no hog
-- outlives the bench, even if it is killed.  Normally they are stopped by
-- their ids at the end, or on an error or an interrupt.
local hogs = {}
local function stop_hogs()
    if #hogs > 0 then
        os.execute("kill " .. table.concat(hogs, " ") .. " 2>/dev/null")
        io.stderr:write(("stopped %d CPU hogs (pids %s)\n"):format(#hogs, table.concat(hogs, " ")))
        hogs = {}
    end
end

local function start_hogs(n)
    local loop = ("while kill -0 %d 2>/dev/null; do i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done; done")
        :format(ffi.C.getpid())
    for i = 1, n do
        local pid = tonumber(first_line(("sh -c '%s' </dev/null >/dev/null 2>&1 & echo $!"):format(loop)))
        if not pid then
            stop_hogs()
            error("bench: could not start a CPU hog", 0)
        end
        hogs[i] = pid
    end
end

-- A ratio: two decimals, three below 0.1 (where 0.00 would hide it).
local function ratio(a, b)
    local r = a / b
    return (r < 0.1 and "%.3f" or "%.2f"):format(r)
end

local function fmt(x)
    if x >= 1e6 then return ("%.2fM"):format(x / 1e6) end
    if x >= 1e4 then return ("%.1fk"):format(x / 1e3) end
    if x >= 100 then return ("%.0f"):format(x) end
    return ("%.1f"):format(x)
end

-- A benchmark file returns rows { name, figure, unit, baselines, target }
-- where baselines is a list of { name, value } (or, with one baseline,
-- { name, figure, unit, baseline name, baseline, target }).  The fastest
-- baseline is the highest rate, or the lowest time or size per item.
local function normalize(r)
    if type(r[4]) == "string" then r = { r[1], r[2], r[3], { { r[4], r[5] } }, r[6] } end
    local lower = r[3]:find("^[nu]s/") or r[3] == "KB"
    local best
    for _, b in ipairs(r[4]) do
        if not best or (lower and b[2] < best[2]) or (not lower and b[2] > best[2]) then best = b end
    end
    local others = {}
    for _, b in ipairs(r[4]) do
        if b ~= best then others[#others + 1] = ("%s %s (%s)"):format(b[1], fmt(b[2]), ratio(r[2], b[2])) end
    end
    return { name = r[1], figure = r[2], unit = r[3], best = best, others = table.concat(others, "; "), target = r[5] or "" }
end

local function main()
    local cpu = (H.read("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "unknown CPU"
    local commit = first_line("git rev-parse --short HEAD")
    if commit and first_line("git status --porcelain --untracked-files=no") then commit = commit .. " + uncommitted changes" end
    print(("lj-async %s bench, %s"):format(shim.VERSION, os.date("!%Y-%m-%d %H:%M UTC")))
    print(("- CPU: %s, %d cores"):format(cpu, Thread.cpu_count()))
    print(("- LuaJIT: %s, %s"):format(H.luajit_flavour(), first_line("command -v " .. (arg and arg[-1] or "luajit")) or "?"))
    print(("- commit: %s"):format(commit or "unknown (not a git checkout)"))
    print(("- load average at start: %s"):format(loadavg()))
    if hog_count > 0 then
        start_hogs(hog_count)
        print(("- %d CPU hogs beside every row and baseline (`sh` busy loops, pids %s)"):format(hog_count, table.concat(hogs, " ")))
    end
    if only then print(("- only: %s"):format(table.concat(benches, ", "))) end
    print(("- medians of %d runs (LJA_BENCH_RUNS)"):format(B.RUNS))
    io.stdout:flush()

    local rows = {}
    local t0 = B.now()
    for _, name in ipairs(benches) do
        io.stderr:write(("%s ...\n"):format(name))
        for _, r in ipairs(require(name)()) do
            r = normalize(r)
            rows[#rows + 1] = r
            io.stderr:write(("  [%2d] %-40s %8s %-10s (%s %s: ratio %s), %.0f s so far\n")
                :format(#rows, r.name, fmt(r.figure), r.unit, r.best[1], fmt(r.best[2]), ratio(r.figure, r.best[2]), B.now() - t0))
        end
    end
    stop_hogs()
    print(("- load average at the end: %s, after %.0f s"):format(loadavg(), B.now() - t0))
    print()

    local lines = { { "benchmark", "lj-async", "unit", "fastest baseline (same run)", "baseline", "ratio", "other baselines (ratio)", "target" } }
    for _, r in ipairs(rows) do
        lines[#lines + 1] = { r.name, fmt(r.figure), r.unit, r.best[1], fmt(r.best[2]), ratio(r.figure, r.best[2]), r.others, r.target }
    end
    local widths = {}
    for _, l in ipairs(lines) do
        for i, cell in ipairs(l) do widths[i] = math.max(widths[i] or 0, #cell) end
    end
    for n, l in ipairs(lines) do
        local cells = {}
        for i, cell in ipairs(l) do cells[i] = cell .. (" "):rep(widths[i] - #cell) end
        print("| " .. table.concat(cells, " | ") .. " |")
        if n == 1 then
            local dashes = {}
            for i = 1, #widths do dashes[i] = ("-"):rep(widths[i]) end
            print("| " .. table.concat(dashes, " | ") .. " |")
        end
    end
end

local ok, err = xpcall(main, debug.traceback)
stop_hogs()
if not ok then
    io.stderr:write(tostring(err), "\n")
    os.exit(1)
end
