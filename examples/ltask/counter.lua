-- A service: its file runs once (with spawn's arguments), and the table it
-- returns handles requests: `ltask.call(addr, "add", n)` runs S.add(n).
local ltask = require "ltask"
local total = ...

local S = {}

function S.add(n)
    if type(n) ~= "number" then error("add wants a number, got " .. type(n)) end
    total = total + n
    return total
end

function S.get()
    return total
end

return S
