-- Thread spawn+join of an empty function, beside raw pthread_create+join.
local Thread = require "lj-async.thread"
local B = require "bench.common"

local N = 3000

local function lj_async_rate()
    return N / B.time(function()
        for _ = 1, N do
            local t = Thread.new(function() end)
            t:join()
            t:destroy()
        end
    end)
end

local function pthread_rate()
    return N / B.native.ljabench_spawn_join(N)
end

return function()
    lj_async_rate()   -- warm up: the first threads make the spare states
    local ours, base = B.median(lj_async_rate), B.median(pthread_rate)
    return {
        { "thread spawn+join (empty)", ours, "/s", "pthread_create+join in C", base, ">= 0.5" },
    }
end
