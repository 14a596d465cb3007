-- The root of tests/test_ltask.lua's test of handlers that fail after they
-- waited, and the server it calls (spawned with no arguments).
local ltask = require "ltask"
local out = ...

if out == nil then
    local S = {}
    local function late_failure() error("late boom") end
    function S.late_fail() ltask.sleep(1); late_failure() end
    function S.ok() return "fine" end
    return S
end

local server = ltask.spawn("late_errors")
local r = {}
local function err_of(...)
    local ok, err = pcall(ltask.call, server, ...)
    return not ok and err or "no error"
end
r.alone = err_of("late_fail")
-- one fails while the loop serves another request
ltask.fork(function() r.beside = err_of("late_fail") end)
r.ok = ltask.call(server, "ok")
ltask.sleep(5)
r.after = ltask.call(server, "ok")
out:send("ok", r)
