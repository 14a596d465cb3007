-- ltask with 2 workers: call round trips between two services, one-way
-- sends (default inbox), and spawn+exit of services; each beside a
-- baseline from the same run (a C condvar ping-pong, a C mutex+condvar
-- queue, making and closing a bare lua_State on this thread).
local boot = require "ltask.bootstrap"
local channel = require "lj-async.channel"
local vm = require "lj-async.vm"
local B = require "bench.common"


local function ltask_rate(what, n)
    return function()
        local out = channel.new()
        local ctx = boot.start { worker = 2, service_path = "bench/ltask/?.lua", root = "root", args = { what, n, out } }
        assert(boot.wait(ctx))
        return assert(out:recv(0))
    end
end

local BARE = vm.compile("return", "bare")

local function bare_states(n)
    return function()
        local t0 = B.now()
        for _ = 1, n do vm.close(vm.new(BARE)) end
        return n / (B.now() - t0)
    end
end

return function()
    local q = B.native
    local calls = B.median(ltask_rate("calls", 200000))
    local c_pp = B.median(B.c_rate(q.ljabench_pingpong, 50000))
    local sends = B.median(ltask_rate("sends", 1000000))
    local c_queue = B.median(B.c_rate(q.ljabench_queue, 1000000))
    local spawns = B.median(ltask_rate("spawns", 5000))
    local fresh = B.median(ltask_rate("fresh_spawns", 300))
    local bare = B.median(bare_states(2000))
    return {
        { "ltask: call round trips, 2 workers", calls, "calls/s", "C condvar ping-pong", c_pp, ">= 400k/s" },
        { "ltask: 1M sends, default inbox", sends, "msgs/s", "C mutex+condvar queue", c_queue, ">= 1.57M/s" },
        { "ltask: spawn+exit", spawns, "services/s", "bare lua_State new+close", bare, ">= 8.3k/s" },
        { "ltask: spawn, all staying (fresh states)", fresh, "services/s", "bare lua_State new+close", bare, "" },
    }
end
