-- A service found by name (ltask.uniqueservice); one handler sleeps
-- without holding up the others.
local ltask = require "ltask"

local S = {}

function S.hello(who)
    return ("hello, %s, from service %d"):format(who, ltask.self())
end

function S.nap(cs)
    ltask.sleep(cs)
end

return S
