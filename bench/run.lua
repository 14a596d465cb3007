-- Runs every benchmark and prints one table: each figure beside a baseline
-- measured in the same run, and their ratio.  Medians of LJA_BENCH_RUNS
-- (default 5) runs.  From the repository root, after the build:
--   luajit bench/run.lua
local benches = { "bench.thread_spawn", "bench.callback_call", "bench.channel_msgs", "bench.ltask_services", "bench.pool_jobs", "bench.asio" }

local rows = {}
for _, name in ipairs(benches) do
    for _, row in ipairs(require(name)()) do rows[#rows + 1] = row end
end

local function fmt(x)
    if x >= 1e6 then return ("%.2fM"):format(x / 1e6) end
    if x >= 1e4 then return ("%.1fk"):format(x / 1e3) end
    if x >= 100 then return ("%.0f"):format(x) end
    return ("%.1f"):format(x)
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
