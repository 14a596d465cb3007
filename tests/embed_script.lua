-- Run by the embed_host programs (tests/test_embed.lua): threads and a
-- callback called from a foreign thread, inside a C host.
local ffi = require "ffi"
local Thread = require "lj-async.thread"
local CallbackFactory = require "lj-async.callback"
local ok, v = Thread.new(function(x) return x * 2 end, 21):join(10)
assert(ok and v == 42, "thread: " .. tostring(v))
local cb = CallbackFactory("int(*)(int)")(function(n) return n + 1 end)
local t = Thread.new(function(fp)
    local ffi = require "ffi"
    return ffi.cast("int(*)(int)", fp)(41)
end, ffi.cast("void *", cb:funcptr()))
local ok2, r = t:join(10)
assert(ok2 and r == 42, "callback from a thread: " .. tostring(r))
cb:free()
print("embedded ok in " .. require("tests.helpers").luajit_flavour())
