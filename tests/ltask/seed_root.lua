-- The seed's root (seeds/000): spawn `user`, call its ping.
local ltask = require "ltask"
local out = ...
local function boot()
    print "Root Start"
    print(os.date("%c", (ltask.now())))
    local addr = ltask.spawn("user", "Hello")
    local t0 = ltask.now()
    local a, b = ltask.call(addr, "ping", "PONG")
    print(a, b)
    out:send(a, b, ltask.now() - t0)
end
boot()
