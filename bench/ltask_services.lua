-- ltask with 2 workers: call round trips between two services, one-way
-- sends (default inbox), spawn+exit of services, spawns of services that
-- stay, and the resident memory of an idle service; each beside a
-- baseline from the same run (the C ping-pongs and one-way rings of
-- bench/common.lua, making and closing a bare lua_State on this thread, the memory
-- of a bare lua_State with the standard libraries and the FFI loaded).
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
local ffi = require "ffi"
local C = ffi.C

-- Resident bytes per bare state (standard libraries, the FFI loaded), n of
-- them alive at once.
local function bare_memory(n)
    return function()
        local states, load = {}, "require 'ffi'"
        collectgarbage()
        local before = B.rss()
        for i = 1, n do
            local L = C.luaL_newstate()
            C.luaL_openlibs(L)
            assert(C.luaL_loadbuffer(L, load, #load, "=bare") == 0 and C.lua_pcall(L, 0, 0, 0) == 0)
            states[i] = L
        end
        local bytes = (B.rss() - before) / n
        for i = 1, n do C.lua_close(states[i]) end
        return bytes
    end
end

local function bare_states(n)
    return function()
        local t0 = B.now()
        for _ = 1, n do vm.close(vm.new(BARE)) end
        return n / (B.now() - t0)
    end
end

return function()
    local calls = B.median(ltask_rate("calls", 200000))
    local c_pp = B.round_trip(50000)
    local sends = B.median(ltask_rate("sends", 1000000))
    local c_one_way = B.one_way(1000000)
    local spawns = B.median(ltask_rate("spawns", 5000))
    local fresh = B.median(ltask_rate("fresh_spawns", 300))
    local bare = B.median(bare_states(2000))
    local memory = B.median(ltask_rate("memory", 1000))
    local bare_kb = B.median(bare_memory(1000))
    return {
        { "ltask: call round trips, 2 workers", calls, "calls/s", c_pp, ">= 450k/s" },
        { "ltask: 1M sends, default inbox", sends, "msgs/s", c_one_way, ">= 0.25x ring" },
        { "ltask: spawn+exit", spawns, "services/s", "bare lua_State new+close", bare, ">= 8.3k/s" },
        { "ltask: spawn, all staying (fresh states)", fresh, "services/s", "bare lua_State new+close", bare, ">= 0.5" },
        { "ltask: memory per idle service", memory / 1024, "KB", "bare lua_State, libs + FFI", bare_kb / 1024, "<= 100 KB" },
    }
end
