-- A callback called from C: from a foreign thread through lj-async, beside a
-- same-thread ffi.cast callback and a plain C function.
local ffi = require "ffi"
local CallbackFactory = require "lj-async.callback"
local B = require "bench.common"

local N = 1000000
local sum = ffi.new("long[1]")

-- ns per call when `threads` threads (0: this one) each call fn n times.
local function ns_per_call(fn, threads, n)
    return function()
        local s = B.native.ljabench_call_loop(fn, n, threads, sum)
        local callers = math.max(threads, 1)
        -- every call counted: fn(i) = i + 1 for i = 0 .. n-1, in each caller
        assert(tonumber(sum[0]) == callers * n * (n + 1) / 2, "calls were lost")
        return s / (callers * n) * 1e9
    end
end

return function()
    local plain = ffi.cast("int(*)(int)", B.native.ljabench_plain)
    local same = ffi.cast("int(*)(int)", function(x) return x + 1 end)
    local T = CallbackFactory("int(*)(int)")
    local one = T(function(x) return x + 1 end)
    local two = T(function(x) return x + 1 end, { states = 2 })

    local c = B.median(ns_per_call(plain, 0, N))
    local base = B.median(ns_per_call(same, 0, N))
    local foreign1 = B.median(ns_per_call(one:funcptr(), 1, N))
    local foreign2 = B.median(ns_per_call(one:funcptr(), 2, N / 2))
    local states2 = B.median(ns_per_call(two:funcptr(), 2, N / 2))
    one:free()
    two:free()
    same:free()
    return {
        { "plain C function, same thread", c, "ns/call", "ffi.cast callback, same thread", base, "" },
        { "callback, 1 foreign thread", foreign1, "ns/call", "ffi.cast callback, same thread", base, "<= 3" },
        { "callback, 2 foreign threads", foreign2, "ns/call", "ffi.cast callback, same thread", base, "" },
        { "callback states=2, 2 threads", states2, "ns/call", "ffi.cast callback, same thread", base, "" },
    }
end
