-- examples/ltask.lua's root service: spawns a counter and a greeter, calls
-- them, and quits (then every service is killed and boot.wait returns).
-- print in a service writes one line to ltask's log (stderr by default),
-- stamped with the time and the service's address.
local ltask = require "ltask"
local rounds = ...

local counter = ltask.spawn("counter", 100)      -- its file runs with 100 as `...`
for i = 1, rounds do
    print(("counter add %d -> %d"):format(i, ltask.call(counter, "add", i)))
end
ltask.send(counter, "add", 1000)                  -- one-way
print(("counter total -> %d"):format(ltask.call(counter, "get")))

-- uniqueservice: one named instance, however many ask for it.
local greeter = ltask.uniqueservice("greeter")
assert(ltask.uniqueservice("greeter") == greeter)
print(ltask.call(greeter, "hello", "root"))

-- A remote error is raised in the caller.
local ok, err = pcall(ltask.call, counter, "add", "many")
print("a bad call raised: " .. err:match("[^\n]*"))

-- Services run concurrently: two sleeps of 0.2 s in forks take 0.2 s, not 0.4.
local t0 = ltask.now()
local done = 0
for _ = 1, 2 do
    ltask.fork(function()
        ltask.call(greeter, "nap", 20)            -- centiseconds
        done = done + 1
        if done == 2 then ltask.wakeup("naps") end
    end)
end
ltask.wait("naps")
print(("two naps of 0.2 s took %.2f s"):format(ltask.now() - t0))
