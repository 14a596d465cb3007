-- Messages between two threads through a channel, between 4 senders and 4
-- receivers (and 8 and 8) through one, ping-pong over two channels, and a
-- state:call round trip; each beside the fastest C programs doing the same
-- job (bench/native.c), measured in the same run: a lock-free SPSC ring and
-- a mutex+condvar ring for one-way messages (only the ring for many
-- senders and receivers: an SPSC ring cannot serve them), a spin-then-park
-- and a blocking ping-pong for round trips.
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

-- msgs/s of numbers from `senders` threads to `receivers` threads through
-- one channel (n in all).
local function mpmc(senders, receivers, n)
    return function()
        local ch = channel.new(4096)
        local t0 = B.now()
        local threads = {}
        for i = 1, senders do
            threads[i] = Thread.new(function(ch, first, n)
                for i = first, first + n - 1 do ch:send(i) end
                return 0
            end, ch, (i - 1) * (n / senders) + 1, n / senders)
        end
        for i = 1, receivers do
            threads[senders + i] = Thread.new(function(ch, n)
                local sum = 0
                for _ = 1, n do sum = sum + ch:recv() end
                return sum
            end, ch, n / receivers)
        end
        local sum = 0
        for _, t in ipairs(threads) do
            local ok, part = t:join()
            assert(ok, part)
            sum = sum + part
        end
        local s = B.now() - t0
        assert(sum == n * (n + 1) / 2, "messages were lost")
        return n / s
    end
end

local function pingpong(n)
    return function()
        local ping, pong, t = B.pong_thread(n)
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

-- The C mutex+condvar ring between as many threads: the SPSC ring does not apply.
local function c_ring(senders, receivers, n)
    return { { ("C mutex+condvar ring, %dx%d"):format(senders, receivers),
        B.median(B.c_rate(function(m) return B.native.ljabench_ring(m, senders, receivers) end, n)) } }
end

return function()
    local numbers = B.median(stream("numbers", 1000000))
    local c_numbers = B.one_way(1000000)
    local tables = B.median(stream("tables", 200000))
    local c_tables = B.one_way(200000)
    local m4 = B.median(mpmc(4, 4, 400000))
    local c_m4 = c_ring(4, 4, 400000)
    local m8 = B.median(mpmc(8, 8, 400000))
    local c_m8 = c_ring(8, 8, 400000)
    local pp = B.median(pingpong(50000))
    local c_pp = B.round_trip(50000)
    local calls = B.median(state_calls(200000))
    return {
        { "channel: 1M numbers, 2 threads", numbers, "msgs/s", c_numbers, ">= 0.5x ring" },
        { "channel: 200k small tables", tables, "msgs/s", c_tables, ">= 0.3x ring" },
        { "channel: 400k numbers, 4x4 threads", m4, "msgs/s", c_m4, "" },
        { "channel: 400k numbers, 8x8 threads", m8, "msgs/s", c_m8, "" },
        { "channel ping-pong", pp, "trips/s", c_pp, ">= 1.3M/s" },
        { "state:call round trip", calls, "calls/s", c_pp, "" },
    }
end
