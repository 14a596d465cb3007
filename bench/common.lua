-- Shared by the benchmarks: timing, medians, and the native baselines.
local ffi = require "ffi"

ffi.cdef [[
double lja_now(void);
double ljabench_spawn_join(int n);
int ljabench_plain(int x);
double ljabench_call_loop(int (*fn)(int), int n, int threads, long *sum);
double ljabench_ring(long n, int producers, int consumers);
double ljabench_spsc(long n);
double ljabench_spin_pingpong(long n);
double ljabench_pingpong(long n);
double ljabench_pool(long n, int submitters, int workers);
double ljabench_locked_map(long n, int threads, int op, double *value);
]]

local B = {}

B.RUNS = tonumber(os.getenv("LJA_BENCH_RUNS")) or 5

local shim = require("lj-async.shim").C
B.now = function() return shim.lja_now() end

local native_path = os.getenv("LJA_BENCH_LIB") or "build/ljabench.so"
local ok, native = pcall(ffi.load, native_path)
if not ok then
    error(("bench: cannot load the native baselines %s (%s): build them with "
        .. "`cmake -S . -B build -DLJA_BENCH=ON && cmake --build build`, or set LJA_BENCH_LIB"):format(native_path, native), 0)
end
B.native = native

-- Median of RUNS calls of f().
-- The other end of a channel ping-pong: an OS thread that answers each of
-- n values on `ping` with the value + 1 on `pong`.  Returns ping, pong and
-- the thread (its join gives true).
function B.pong_thread(n)
    local channel, Thread = require "lj-async.channel", require "lj-async.thread"
    local ping, pong = channel.new(), channel.new()
    local t = Thread.new(function(ping, pong, n)
        for _ = 1, n do pong:send(ping:recv() + 1) end
        return true
    end, ping, pong, n)
    return ping, pong, t
end

function B.median(f)
    local xs = {}
    for i = 1, B.RUNS do xs[i] = f() end
    table.sort(xs)
    return xs[math.floor((#xs + 1) / 2)]
end

-- A native baseline as a rate: fn(n) returns the seconds n steps took.
function B.c_rate(fn, n)
    return function()
        local s = fn(n)
        assert(s > 0, "the C baseline failed")
        return n / s
    end
end

-- The C programs a message-passing row is measured against (bench/native.c),
-- as the baselines of a row: medians of their rates in this run.
-- One-way messages from one thread to another: the lock-free SPSC ring and
-- the mutex+condvar ring.
function B.one_way(n)
    local q = B.native
    return {
        { "C lock-free SPSC ring", B.median(B.c_rate(q.ljabench_spsc, n)) },
        { "C mutex+condvar ring", B.median(B.c_rate(function(m) return q.ljabench_ring(m, 1, 1) end, n)) },
    }
end

-- Round trips between two threads: a ping-pong that spins, then parks on a
-- futex, and one that blocks on mutex+condvar rings every trip.
function B.round_trip(n)
    local q = B.native
    return {
        { "C spin-then-park ping-pong", B.median(B.c_rate(q.ljabench_spin_pingpong, n)) },
        { "C mutex+condvar ping-pong", B.median(B.c_rate(q.ljabench_pingpong, n)) },
    }
end

-- Resident memory of the process, in bytes (Linux).
function B.rss()
    local f = assert(io.open("/proc/self/statm"))
    local pages = f:read("*n") and f:read("*n")
    f:close()
    return pages * 4096
end

-- Seconds taken by f().
function B.time(f)
    local t0 = B.now()
    f()
    return B.now() - t0
end

return B
