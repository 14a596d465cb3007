-- Runs every benchmark and prints one table: each figure beside a baseline
-- measured in the same run, and their ratio.  Medians of LJA_BENCH_RUNS
-- (default 5) runs.  From the repository root, after the build:
--   luajit bench/run.lua
-- A header first says what ran where (figures from different machines,
-- loads or LuaJITs are not comparable); each row, once measured, is also
-- reported on stderr.
local benches = { "bench.thread_spawn", "bench.callback_call", "bench.channel_msgs", "bench.ltask_services", "bench.pool_jobs", "bench.function_cross", "bench.shared", "bench.asio" }
local B = require "bench.common"
local shim = require "lj-async.shim"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

local function first_line(cmd)
    local f = io.popen(cmd .. " 2>/dev/null")
    local line = f:read("*l")
    f:close()
    return line
end

local cpu = (H.read("/proc/cpuinfo") or ""):match("model name%s*:%s*([^\n]+)") or "unknown CPU"
local commit = first_line("git rev-parse --short HEAD")
if commit and first_line("git status --porcelain --untracked-files=no") then commit = commit .. " + uncommitted changes" end
print(("lj-async %s bench, %s"):format(shim.VERSION, os.date("!%Y-%m-%d %H:%M UTC")))
print(("- CPU: %s, %d cores"):format(cpu, Thread.cpu_count()))
print(("- LuaJIT: %s, %s"):format(H.luajit_flavour(), first_line("command -v " .. (arg and arg[-1] or "luajit")) or "?"))
print(("- commit: %s"):format(commit or "unknown (not a git checkout)"))
print(("- load average at start: %s"):format(((H.read("/proc/loadavg") or "?"):match("^(%S+ %S+ %S+)")) or "?"))
print(("- medians of %d runs (LJA_BENCH_RUNS)"):format(B.RUNS))
print()
io.stdout:flush()

local function fmt(x)
    if x >= 1e6 then return ("%.2fM"):format(x / 1e6) end
    if x >= 1e4 then return ("%.1fk"):format(x / 1e3) end
    if x >= 100 then return ("%.0f"):format(x) end
    return ("%.1f"):format(x)
end

local rows = {}
local t0 = B.now()
for _, name in ipairs(benches) do
    io.stderr:write(("%s ...\n"):format(name))
    for _, r in ipairs(require(name)()) do
        rows[#rows + 1] = r
        io.stderr:write(("  [%2d] %-40s %8s %-10s (%s %s: ratio %.2f), %.0f s so far\n")
            :format(#rows, r[1], fmt(r[2]), r[3], r[4], fmt(r[5]), r[2] / r[5], B.now() - t0))
    end
end

local header = { "benchmark", "lj-async", "unit", "baseline (same run)", "baseline", "ratio", "target" }
local lines = { header }
-- A row: name, figure, unit, baseline name, baseline, target; the ratio
-- is figure / baseline.
for _, r in ipairs(rows) do
    lines[#lines + 1] = { r[1], fmt(r[2]), r[3], r[4], fmt(r[5]), ("%.2f"):format(r[2] / r[5]), r[6] }
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
