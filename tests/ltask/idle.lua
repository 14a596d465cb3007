-- Returns no handlers: quits once its file has run (and its timers fired).
local ltask = require "ltask"
local out, cs = ...
if cs then
    ltask.timeout(cs, function() out:send("fired") end)
end
