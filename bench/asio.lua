-- lj-async.asio on loopback, beside a C epoll server (bench/native.c) that
-- serves the same load in the same run.  The load is a C client on its own
-- thread: 64 connections, each with one request outstanding (HTTP
-- keep-alive GET, answered by a fixed 87-byte 200; or 64 bytes echoed).
-- A server's cost is its CPU time per request (getrusage of its threads),
-- which holds up better than rates on a noisy machine.
local ffi = require "ffi"
local asio = require "lj-async.asio"
local B = require "bench.common"

ffi.cdef [[
double ljabench_thread_cpu(void);
double ljabench_process_cpu(void);
int ljabench_http_response_size(void);
void *ljabench_server_start(int mode, int *port);
double ljabench_server_stop(void *s, long *requests);
void *ljabench_load_start(int port, int mode, int conns, double seconds);
long ljabench_load_wait(void *l, double *cpu, double *elapsed);
]]

local N = B.native
local ECHO, HTTP = 0, 1
local CONNS = 64
local SECONDS = tonumber(os.getenv("LJA_BENCH_ASIO_SECONDS")) or 1

local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n\r\nHello, World! lj-async"
assert(#RESPONSE == 87 and N.ljabench_http_response_size() == 87)

-- The handlers, as an application writes them.
local function http_handler(con)
    while con:read_until("\r\n\r\n") do
        if not con:write(RESPONSE) then break end
    end
end

local function echo_handler(con)
    while true do
        local data = con:read_some()
        if not data or not con:write(data) then break end
    end
end

local cpu_out, elapsed_out = ffi.new("double[1]"), ffi.new("double[1]")

local function load_wait(l)
    local done = tonumber(N.ljabench_load_wait(l, cpu_out, elapsed_out))
    assert(done > 0, "the load client failed")
    return done, cpu_out[0], elapsed_out[0]
end

-- One run against this state's loop: requests/s, server CPU s/request.
local function asio_run(mode)
    local handler = mode == HTTP and http_handler or echo_handler
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function(c)
            handler(c)
            c:close()
        end, con)
    end))
    local l = N.ljabench_load_start(srv:port(), mode, CONNS, SECONDS)
    asio.spawn(function()
        asio.sleep(SECONDS)
        srv:close()   -- the client closes its connections next
    end)
    local cpu0 = N.ljabench_thread_cpu()
    assert(asio.run(SECONDS + 30))
    local cpu = N.ljabench_thread_cpu() - cpu0
    local done, _, elapsed = load_wait(l)
    return done / elapsed, cpu / done
end

local port_out = ffi.new("int[1]")
local req_out = ffi.new("long[1]")

local function c_run(mode)
    local s = N.ljabench_server_start(mode, port_out)
    local l = N.ljabench_load_start(port_out[0], mode, CONNS, SECONDS)
    local done, _, elapsed = load_wait(l)
    local cpu = N.ljabench_server_stop(s, req_out)
    return done / elapsed, cpu / done
end

-- asio.serve with `threads` threads: server CPU s/request (the process's
-- CPU less the client's; this thread only waits).
local function serve_run(threads)
    local group = assert(asio.serve {
        host = "127.0.0.1", port = 0, threads = threads,
        handler = function(con)
            local RESPONSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n\r\nHello, World! lj-async"
            while con:read_until("\r\n\r\n") do
                if not con:write(RESPONSE) then break end
            end
        end,
    })
    local cpu0 = N.ljabench_process_cpu()
    local l = N.ljabench_load_start(group:port(), HTTP, CONNS, SECONDS)
    local done, client_cpu = load_wait(l)
    group:stop(1)
    local cpu = N.ljabench_process_cpu() - cpu0 - client_cpu
    return cpu / done
end

-- Runs f(x) and g(y) in turns, so both meet the same machine; the
-- medians of each of their results.
local function interleaved(f, x, g, y)
    local cols = {}
    for i = 1, B.RUNS do
        local r = { f(x) }
        for j, v in ipairs { g(y) } do r[#r + 1] = v end
        for j, v in ipairs(r) do
            cols[j] = cols[j] or {}
            cols[j][i] = v
        end
    end
    local m = math.floor((B.RUNS + 1) / 2)
    local out = {}
    for j, col in ipairs(cols) do
        table.sort(col)
        out[j] = col[m]
    end
    return unpack(out)
end

-- Light threads that finish at once, spawned in a loop: spawns/s.
local function spawns(n)
    return function()
        local f = function() end
        local spawn = asio.spawn
        local t0 = B.now()
        for _ = 1, n do spawn(f) end
        return n / (B.now() - t0)
    end
end

local function coroutines(n)
    return function()
        local f = function() end
        local create, resume = coroutine.create, coroutine.resume
        local t0 = B.now()
        for _ = 1, n do resume(create(f)) end
        return n / (B.now() - t0)
    end
end

-- asio.recv in a light thread against an OS thread answering on channels.
local function recv_pingpong(n)
    return function()
        local ping, pong, t = B.pong_thread(n)
        local v, s = 0, 0
        asio.spawn(function()
            local t0 = B.now()
            for _ = 1, n do
                ping:send(v)
                v = asio.recv(pong)
            end
            s = B.now() - t0
        end)
        assert(asio.run(60))
        assert(t:join() and v == n)
        return n / s
    end
end

return function()
    local http_rate, http_cpu, c_http_rate, c_http_cpu = interleaved(asio_run, HTTP, c_run, HTTP)
    local echo_rate, echo_cpu, c_echo_rate, c_echo_cpu = interleaved(asio_run, ECHO, c_run, ECHO)
    local serve2, serve1 = interleaved(serve_run, 2, serve_run, 1)
    local lt = B.median(spawns(1000000))
    local co = B.median(coroutines(1000000))
    local pp = B.median(recv_pingpong(50000))
    local c_pp = B.round_trip(50000)
    local us = 1e6
    return {
        { "asio HTTP keep-alive, 64 conns: server CPU", http_cpu * us, "us/req", "C epoll server", c_http_cpu * us, "<= 7.0, <= 1.25x" },
        { "asio HTTP keep-alive, 64 conns", http_rate, "req/s", "C epoll server", c_http_rate, "" },
        { "asio echo 64 B, 64 conns", echo_rate, "rt/s", "C epoll server", c_echo_rate, ">= 130k, >= 0.9x" },
        { "asio echo 64 B: server CPU", echo_cpu * us, "us/rt", "C epoll server", c_echo_cpu * us, "" },
        { "asio.serve HTTP, 2 threads: CPU", serve2 * us, "us/req", "1 thread", serve1 * us, "<= 1.1x" },
        { "asio light threads spawn+finish", lt, "/s", "coroutine create+resume", co, ">= 1M/s" },
        { "asio.recv ping-pong with a thread", pp, "trips/s", c_pp, ">= 50k/s" },
    }
end
