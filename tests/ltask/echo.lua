-- A service for the tests: its handlers echo, fail, wait, count and check
-- the order of what they are sent.
local ltask = require "ltask"
local S = {}
local started_with = { n = select("#", ...), ... }
local count, sum, last, disorder = 0, 0, 0, 0

function S.args() return unpack(started_with, 1, started_with.n) end
function S.echo(...) return ... end
function S.self() return ltask.self() end
local function deep_failure(msg) error(msg) end
function S.fail(msg) deep_failure(msg) end
function S.sleep(cs, v) ltask.sleep(cs) return v end
function S.spin(seconds)
    local t = ltask.now() + seconds   -- wall time: os.clock counts every thread
    while ltask.now() < t do end
    return true
end
function S.add(i)
    count, sum = count + 1, sum + i
    if i ~= last + 1 then disorder = disorder + 1 end
    last = i
end
function S.totals() return count, sum, disorder end
function S.quit() ltask.quit() end
function S.call(addr, cmd, ...) return ltask.call(addr, cmd, ...) end
function S.send_fail(msg) error("send handler failed: " .. msg) end
function S.unique(name, ...) return ltask.uniqueservice(name, ...) end
local applied
function S.apply(f, ...) applied = f(...) end
function S.applied() return applied end
function S.function_result() local up = coroutine.create(print) return function() return up end end
-- As a relay (slow_start.lua): sends, and calls whose outcome `kept` tells.
local kept = {}
function S.post(addr, cmd, ...) ltask.send(addr, cmd, ...) end
function S.later(addr, cmd, ...)
    local k = { addr = addr }
    kept[#kept + 1] = k
    k.result = { pcall(ltask.call, addr, cmd, ...) }
end
function S.kept() return kept end
function S.loaded(name) return package.loaded[name] ~= nil end
return S
