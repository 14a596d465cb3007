-- The benchmarks' root service: runs one measurement and sends its rate
-- to the host through the channel it was given.
local ltask = require "ltask"
local what, n, out = ...

local t0 = ltask.now()
if what == "calls" then
    local echo = ltask.spawn("echo")
    local v = 0
    for _ = 1, n do v = ltask.call(echo, "inc", v) end
    assert(v == n)
elseif what == "sends" then
    local sink = ltask.spawn("echo")
    for i = 1, n do ltask.send(sink, "add", i) end
    assert(ltask.call(sink, "total") == n * (n + 1) / 2, "sends were lost")
elseif what == "spawns" then   -- each quits: its state serves the next
    for _ = 1, n do ltask.spawn("empty") end
elseif what == "fresh_spawns" then   -- all stay: every one is a new state
    for _ = 1, n do ltask.spawn("echo") end
elseif what == "memory" then   -- bytes of resident memory per idle service
    local rss = require("bench.common").rss
    ltask.spawn("echo")   -- what the first spawn loads once
    collectgarbage()
    local before = rss()
    for _ = 1, n do ltask.spawn("echo") end
    collectgarbage()
    out:send((rss() - before) / n)
    return
end
out:send(n / (ltask.now() - t0))
