-- The root of tests/test_ltask.lua's test that ltask's per-message path
-- compiles, and the server it calls and sends to (spawned with no
-- arguments).  Each state counts its trace aborts, but for the two that
-- pass by themselves: "leaving loop in root trace" ends once the loop around
-- it has compiled, "inner loop in root trace" once the inner loop has (which
-- of the loops gets hot first depends on timing).  Any other abort on a hot
-- path repeats until the JIT gives up on it.
local ltask = require "ltask"
local vmdef = require "jit.vmdef"
local out, n = ...

local aborts = {}
jit.attach(function(what, _, func, pc, err, info)
    if what ~= "abort" then return end
    local why = vmdef.traceerr[err]
    if why == "leaving loop in root trace" or why == "inner loop in root trace" then return end
    if type(why) == "string" and why:find("%%") then why = why:format(info) end
    local fi = require("jit.util").funcinfo(func, pc)
    aborts[#aborts + 1] = tostring(fi.loc or fi.source) .. ": " .. tostring(why)
end, "trace")

if out == nil then
    local S, total = {}, 0
    function S.inc(v) return v + 1 end
    function S.add(i) total = total + i end
    function S.total() return total end
    function S.aborts() return aborts end
    return S
end

local server = ltask.spawn("traced")
local v = 0
for _ = 1, n do v = ltask.call(server, "inc", v) end
for i = 1, n do ltask.send(server, "add", i) end
assert(ltask.call(server, "total") == n * (n + 1) / 2)
out:send("ok", { caller = aborts, server = ltask.call(server, "aborts"), calls = v })
