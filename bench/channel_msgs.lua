-- Messages between two threads through a channel, ping-pong over two
-- channels, and a state:call round trip; each beside a plain C
-- mutex+condvar queue (bench/native.c) measured in the same run.
local channel = require "lj-async.channel"
local state = require "lj-async.state"
local Thread = require "lj-async.thread"
local B = require "bench.common"


-- msgs/s from a sender thread to this one; `kind` picks the payload.
local function stream(kind, n)
    return function()
        local ch = channel.new(4096)
        local t0 = B.now()
        local sender = Thread.new(function(ch, kind, n)
            if kind == "numbers" then
                for i = 1, n do ch:send(i) end
            else
                for i = 1, n do ch:send({ id = i, name = "x" }) end
            end
            return true
        end, ch, kind, n)
        local sum = 0
        if kind == "numbers" then
            for _ = 1, n do sum = sum + ch:recv() end
        else
            for _ = 1, n do sum = sum + ch:recv().id end
        end
        local s = B.now() - t0
        assert(sender:join() and sum == n * (n + 1) / 2, "messages were lost")
        return n / s
    end
end

local function pingpong(n)
    return function()
        local ping, pong = channel.new(), channel.new()
        local t = Thread.new(function(ping, pong, n)
            for _ = 1, n do pong:send(ping:recv() + 1) end
            return true
        end, ping, pong, n)
        local t0 = B.now()
        local v = 0
        for _ = 1, n do
            ping:send(v)
            v = pong:recv()
        end
        local s = B.now() - t0
        assert(t:join() and v == n)
        return n / s
    end
end

local function state_calls(n)
    return function()
        local st = state.new(function() return function(x) return x + 1 end end)
        local t0 = B.now()
        local v = 0
        for _ = 1, n do v = st:call(v) end
        local s = B.now() - t0
        assert(v == n)
        st:close()
        return n / s
    end
end

return function()
    local q = B.native
    local numbers = B.median(stream("numbers", 1000000))
    local c_numbers = B.median(B.c_rate(q.ljabench_queue, 1000000))
    local tables = B.median(stream("tables", 200000))
    local c_tables = B.median(B.c_rate(q.ljabench_queue, 200000))
    local pp = B.median(pingpong(50000))
    local c_pp = B.median(B.c_rate(q.ljabench_pingpong, 50000))
    local calls = B.median(state_calls(200000))
    return {
        { "channel: 1M numbers, 2 threads", numbers, "msgs/s", "C mutex+condvar queue", c_numbers, ">= 6M/s" },
        { "channel: 200k small tables", tables, "msgs/s", "C mutex+condvar queue", c_tables, ">= 1M/s" },
        { "channel ping-pong", pp, "trips/s", "C condvar ping-pong", c_pp, ">= 100k/s" },
        { "state:call round trip", calls, "calls/s", "C condvar ping-pong", c_pp, "" },
    }
end
