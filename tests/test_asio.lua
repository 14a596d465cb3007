-- lj-async.asio (README, "lj-async.asio"): the loop, light threads, TCP
-- connections and servers on loopback, channels, and asio.serve.
local lu = require "luaunit"
local ffi = require "ffi"
local asio = require "lj-async.asio"
local channel = require "lj-async.channel"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

ffi.cdef [[
struct asio_test_pollfd { int fd; short events; short revents; };
int asio_test_poll(struct asio_test_pollfd *fds, unsigned long n, int timeout) __asm__("poll");
int asio_test_epoll_wait(int epfd, void *events, int maxevents, int timeout) __asm__("epoll_wait");
int asio_test_sigaction(int sig, const void *act, void *old) __asm__("sigaction");
int asio_test_socket(int domain, int type, int protocol) __asm__("socket");
int asio_test_bind(int fd, const void *addr, uint32_t len) __asm__("bind");
int asio_test_listen(int fd, int backlog) __asm__("listen");
int asio_test_getsockname(int fd, void *addr, uint32_t *len) __asm__("getsockname");
int asio_test_close(int fd) __asm__("close");
int asio_test_dup(int fd) __asm__("dup");
int asio_test_dup2(int fd, int to) __asm__("dup2");
int asio_test_open(const char *path, int flags, int mode) __asm__("open");
struct asio_test_rlimit { uint64_t cur, max; };
int asio_test_getrlimit(int resource, struct asio_test_rlimit *r) __asm__("getrlimit");
int asio_test_setrlimit(int resource, const struct asio_test_rlimit *r) __asm__("setrlimit");
]]

local SANITIZED = (os.getenv("LJA_SANITIZE") or "") ~= ""

-- Runs fn in a light thread and the loop until fn returns (within `bound`
-- seconds); returns fn's results, raises its error.
local function go(fn, bound, ...)
    local lt = asio.spawn(function(...)
        local r = { n = select("#", ...), ... }
        asio.sleep(0)   -- so that the stop below comes inside run()
        local res = { pcall(fn, unpack(r, 1, r.n)) }
        asio.stop()   -- also when fn failed, so the failure shows at once
        if not res[1] then error(res[2], 0) end
        return unpack(res, 2, table.maxn(res))
    end, ...)
    local ok, err = asio.run(bound or 20)
    lu.assertTrue(ok, "the light thread did not end in time: " .. tostring(err))
    local r = { lt:join() }
    if r[1] == nil then error(r[2], 0) end
    return unpack(r, 2, table.maxn(r))
end

-- An echo server; returns it (close it at the end).
local function echo_server(opts)
    return assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function()
            while true do
                local data = con:read_some()
                if not data or not con:write(data) then break end
            end
            con:close()
        end)
    end, opts))
end

local function fd_count()
    return #H.listdir("/proc/self/fd")
end

-- Runs fn with stderr going to a file; returns what was written there.
local function capture_stderr(fn)
    local path = os.tmpname()
    io.stderr:flush()
    local saved = ffi.C.asio_test_dup(2)
    local fd = ffi.C.asio_test_open(path, 0x241, 384)   -- O_WRONLY|O_CREAT|O_TRUNC, 0600
    ffi.C.asio_test_dup2(fd, 2)
    ffi.C.asio_test_close(fd)
    local ok, err = pcall(fn)
    io.stderr:flush()
    ffi.C.asio_test_dup2(saved, 2)
    ffi.C.asio_test_close(saved)
    local f = assert(io.open(path, "rb"))
    local out = f:read("*a")
    f:close()
    os.remove(path)
    if not ok then error(err, 0) end
    return out
end

local function readable(fd, ms)
    local p = ffi.new("struct asio_test_pollfd", { fd = fd, events = 1 })
    return ffi.C.asio_test_poll(p, 1, ms or 0) == 1
end

TestAsioLoop = {}

function TestAsioLoop:test_seed_examples_verbatim()
    local server_src = [[
local asio = require 'asio'

function connection_th(con)
    -- Issues a synchronous, but non-blocking I/O operation.
    local data = con:read(5)

    -- Still non-blocking
    con:write(data .. '-pong')

    con:close()
end

local s = asio.server('127.0.0.1', 1234, function(con)
    -- light threads running asynchronously at various I/O operation.
    asio.spawn_light_thread(connection_th, con)
end)

-- This event loop is blocked during code execution
asio.run()
]]
    local client_src = [[
local asio = require 'asio'

local ping_send = function(text)
    local con = asio.connect('localhost', '1234')
    con:write(text)
    con:read(10)
    con:close()
end

asio.spawn_light_thread(ping_send, 'ping1')
asio.spawn_light_thread(ping_send, 'ping2')

asio.run()
]]
    -- The client runs in a thread; `require "asio"` is lj-async.asio there,
    -- with reads recorded.
    local client = Thread.new(function(src)
        local real = require "lj-async.asio"
        local reads = {}
        package.preload.asio = function()
            return setmetatable({ connect = function(...)
                local con = assert(real.connect(...))
                local methods = getmetatable(con).__index
                if not reads.wrapped then
                    reads.wrapped = true
                    local read = methods.read
                    methods.read = function(self, ...)
                        local data, err = read(self, ...)
                        reads[#reads + 1] = data or err
                        return data, err
                    end
                end
                return con
            end }, { __index = real })
        end
        assert(load(src, "=client"))()
        table.sort(reads)
        return reads[1], reads[2]
    end, client_src)
    -- The server here: its run() goes on until the client is done.
    local srv
    package.preload.asio = function()
        return setmetatable({
            server = function(...)
                srv = asio.server(...)
                return srv
            end,
            run = function()
                local deadline = H.now() + 20
                while client:join(0) == false and H.now() < deadline do asio.run(0.02) end
                srv:close()
                return asio.run(5)
            end,
        }, { __index = asio })
    end
    assert(load(server_src, "=server"))()
    package.preload.asio, package.loaded.asio, connection_th = nil, nil, nil
    lu.assertEquals({ client:join(1) }, { true, "ping1-pong", "ping2-pong" })
end

function TestAsioLoop:test_spawn_runs_at_once_and_join()
    local order = {}
    go(function()
        local lt = asio.spawn(function(a, b)
            order[#order + 1] = "child"
            asio.sleep(0.01)
            return a + b, "sum"
        end, 40, 2)
        order[#order + 1] = "parent"
        lu.assertEquals({ lt:join() }, { true, 42, "sum" })
        lu.assertEquals({ lt:join() }, { true, 42, "sum" })   -- again: the same
        local bad = asio.spawn(function() asio.sleep(0.01); error("boom") end)
        local ok, err = bad:join()
        lu.assertNil(ok)
        lu.assertStrContains(err, "boom")
        lu.assertStrContains(err, "stack traceback")
        local slow = asio.spawn(function() asio.sleep(0.2) return "late" end)
        lu.assertEquals({ slow:join(0.01) }, { false, "timeout" })
        lu.assertEquals({ slow:join() }, { true, "late" })
        lu.assertErrorMsgContains("cannot join itself", function()
            local me
            me = asio.spawn(function() asio.sleep(0) return me:join() end)
            asio.sleep(0.01)
            error(select(2, me:join()), 0)
        end)
    end)
    lu.assertEquals(order, { "child", "parent" })
end

function TestAsioLoop:test_light_thread_error_goes_to_stderr_and_the_loop_goes_on()
    local n = 0
    local out = capture_stderr(function()
        go(function()
            local bad = asio.spawn(function() asio.sleep(0.01); error("kaboom") end)
            local good = asio.spawn(function() asio.sleep(0.05); n = 1 end)
            good:join()
            lu.assertStrContains(select(2, bad:join()), "kaboom")
        end)
    end)
    lu.assertStrContains(out, "kaboom")
    lu.assertStrContains(out, "stack traceback")
    lu.assertEquals(n, 1)
end

function TestAsioLoop:test_waiting_outside_a_light_thread_raises()
    local srv = echo_server()
    local con
    go(function() con = assert(asio.connect("127.0.0.1", srv:port())) end)
    local lt = asio.spawn(function() asio.sleep(0.01) end)
    local ch = channel.new()
    local calls = {
        function() asio.connect("127.0.0.1", srv:port()) end,
        function() con:read(1) end,
        function() con:read_some() end,
        function() con:read_line() end,
        function() con:read_until("x") end,
        function() con:write("x") end,
        function() con:close(1) end,
        function() asio.sleep(0.01) end,
        function() lt:join() end,
        function() asio.resolve("localhost") end,
        function() asio.recv(ch) end,
    }
    for i, f in ipairs(calls) do
        local ok, err = pcall(f)
        lu.assertFalse(ok, "call " .. i)
        lu.assertStrContains(err, "light thread")
    end
    -- nor in an accept handler
    local err
    local srv2 = assert(asio.server("127.0.0.1", 0, function(c)
        local ok, e = pcall(c.read, c, 1)
        err = not ok and e
        c:close()
    end))
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv2:port()))
        lu.assertEquals({ c:read(1) }, { nil, "closed", "" })
        c:close()
    end)
    lu.assertStrContains(err, "light thread")
    con:close()
    srv:close()
    srv2:close()
    asio.run(5)
end

function TestAsioLoop:test_run_and_run_once_and_stop()
    -- nothing left: true at once
    lu.assertEquals({ asio.run(5) }, { true })
    local n = 0
    asio.spawn(function() asio.sleep(0.2); n = n + 1 end)
    local t0 = H.now()
    lu.assertEquals({ asio.run(0.05) }, { false, "timeout" })
    lu.assertTrue(H.now() - t0 >= 0.045)
    lu.assertEquals(n, 0)
    lu.assertTrue(asio.run(5))   -- the rest resumes
    lu.assertEquals(n, 1)
    -- stop
    asio.spawn(function() asio.sleep(0.01); asio.stop() end)
    local sleeper = asio.spawn(function() asio.sleep(1) end)
    lu.assertEquals({ asio.run(10) }, { true })
    lu.assertTrue(not sleeper.done)   -- run returned for the stop
    -- run_once: work remains while a light thread waits
    lu.assertTrue(asio.run_once(0))
    lu.assertTrue(not sleeper.done)
    lu.assertTrue(asio.run(5))
    lu.assertTrue(sleeper.done)
    lu.assertFalse(asio.run_once(0))
    local srv = echo_server()
    lu.assertTrue(asio.run_once(0))   -- an open server is work
    srv:close()
    lu.assertFalse(asio.run_once(0.01))
    lu.assertErrorMsgContains("inside a light thread", function()
        go(function() asio.run() end)
    end)
end

function TestAsioLoop:test_fd_is_readable_when_run_once_has_work()
    local fd = asio.fd()
    lu.assertTrue(type(fd) == "number" and fd >= 0)
    lu.assertFalse(readable(fd))
    local done = false
    asio.spawn(function() asio.sleep(0.3); done = true end)
    lu.assertFalse(readable(fd))
    lu.assertTrue(readable(fd, 2000))   -- the timer, through the timerfd
    local t0 = H.now()
    while not done and H.now() - t0 < 2 do asio.run_once(0) end
    lu.assertTrue(done)
    -- a light thread ready at once (sleep(0)) makes it readable too
    local step = 0
    asio.spawn(function() step = 1; asio.sleep(0); step = 2 end)
    lu.assertEquals(step, 1)
    lu.assertTrue(readable(fd))
    asio.run_once(0)
    lu.assertEquals(step, 2)
    -- a socket event
    local srv = echo_server()
    local got
    asio.spawn(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        c:write("ping")
        got = c:read(4)
        c:close()
        srv:close()
    end)
    t0 = H.now()
    while got == nil and H.now() - t0 < 5 do
        if readable(fd, 100) then asio.run_once(0) end
    end
    lu.assertEquals(got, "ping")
end

function TestAsioLoop:test_sleep_never_wakes_early_and_sleep0_yields()
    go(function()
        for _, s in ipairs { 0.001, 0.01, 0.03 } do
            local t0 = asio.now()
            asio.sleep(s)
            lu.assertTrue(asio.now() - t0 >= s, s)
        end
        local order = {}
        asio.spawn(function() asio.sleep(0); order[#order + 1] = "b" end)
        asio.spawn(function() asio.sleep(0); order[#order + 1] = "c" end)
        order[#order + 1] = "a"
        asio.sleep(0)
        order[#order + 1] = "d"
        lu.assertEquals(order, { "a", "b", "c", "d" })
    end)
end

function TestAsioLoop:test_timers_with_cancellations_fire_in_time()
    math.randomseed(11)
    local late, early, woke, timed_out, spawn_time = 0, 0, 0, 0, 0
    go(function()
        local start = asio.now()
        local lts = {}
        for i = 1, 3000 do
            local due = start + 0.3 + math.random() * 0.2
            lts[i] = asio.spawn(function()
                asio.sleep(math.max(due - asio.now(), 0))
                local t = asio.now()
                if t < due then early = early + 1 end
                if t > due + 0.5 then late = late + 1 end
                woke = woke + 1
            end)
        end
        spawn_time = asio.now() - start
        -- joins with timeouts: some end by the join (their timer leaves the
        -- heap's middle), some by the timeout
        for i = 1, 3000, 3 do
            if lts[i]:join(math.random() * 0.02) == false then timed_out = timed_out + 1 end
        end
        for i = 1, 3000 do lts[i]:join() end
    end, 30)
    lu.assertEquals({ woke, early, late }, { 3000, 0, 0 })
    if spawn_time < 0.25 then lu.assertTrue(timed_out > 0) end
end

function TestAsioLoop:test_100k_light_threads()
    local n, N = 0, 100000
    local t0 = H.now()
    go(function()
        for _ = 1, N do
            asio.spawn(function()
                asio.sleep(0.01)
                n = n + 1
            end)
        end
        while n < N do asio.sleep(0.01) end
    end, 60)
    lu.assertEquals(n, N)
    lu.assertTrue(H.now() - t0 < 30)
end

TestAsioConn = {}

function TestAsioConn:test_read_exact_across_random_small_pieces()
    math.randomseed(7)
    local parts = {}
    for i = 1, 4000 do parts[i] = string.char(i % 251) .. ("x"):rep(math.random(0, 40)) end
    local stream = table.concat(parts)
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function()
            local i = 1
            while i <= #stream do
                local k = math.random(1, 97)
                if math.random() < 0.3 then
                    assert(con:write({ stream:sub(i, i + k - 1), stream:sub(i + k, i + 2 * k - 1) }))
                    i = i + 2 * k
                else
                    assert(con:write(stream:sub(i, i + k - 1)))
                    i = i + k
                end
                if math.random() < 0.2 then asio.sleep(0) end
            end
            con:close()
        end)
    end))
    local got = go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        local out, total = {}, 0
        lu.assertEquals(c:read(0), "")
        while true do
            local k = math.random(1, 300)
            local data, err, partial = c:read(k)
            if not data then
                lu.assertEquals(err, "closed")
                out[#out + 1] = partial
                break
            end
            lu.assertEquals(#data, k)
            out[#out + 1] = data
            total = total + k
        end
        lu.assertEquals({ c:read_some() }, { nil, "closed" })
        c:close()
        return table.concat(out)
    end)
    srv:close()
    lu.assertEquals(#got, #stream)
    lu.assertTrue(got == stream)
end

function TestAsioConn:test_read_line_until_some_share_one_buffer()
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function()
            con:write("one\r\ntwo\nthree||four")
            asio.sleep(0.02)
            con:write({ "five", "\n", ("y"):rep(100), "\n", "tail" })
            con:close(1)
        end)
    end))
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        lu.assertEquals(c:read_line(), "one")
        lu.assertEquals(c:read_line(), "two")
        lu.assertEquals(c:read_until("||"), "three")
        lu.assertEquals(c:read(2), "fo")
        lu.assertEquals(c:read_line(), "urfive")
        lu.assertEquals({ c:read_line(50) }, { nil, "too long" })   -- stays buffered
        lu.assertEquals(c:read_some(10), ("y"):rep(10))
        lu.assertEquals(c:read_line(), ("y"):rep(90))
        lu.assertEquals({ c:read_line() }, { nil, "closed", "tail" })
        lu.assertEquals({ c:read(1) }, { nil, "closed", "" })
        lu.assertTrue(c:close())
        lu.assertTrue(c:close())   -- idempotent
        lu.assertEquals({ c:read(1) }, { nil, "closed" })
        lu.assertEquals({ c:write("x") }, { nil, "closed", 0 })
    end)
    srv:close()
end

function TestAsioConn:test_1000_concurrent_connections_every_byte_counted()
    local N, PER = 1000, 2000
    local served = 0
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function()
            while true do
                local data = con:read_some()
                if not data then break end
                served = served + #data
                assert(con:write(data))
            end
            con:close()
        end)
    end))
    local open, peak, received = 0, 0, 0
    go(function()
        local lts = {}
        for i = 1, N do
            lts[i] = asio.spawn(function()
                local c = assert(asio.connect("127.0.0.1", srv:port(), 10))
                open = open + 1
                peak = math.max(peak, open)
                while open < N and peak < N do asio.sleep(0.005) end
                local msg = ("%08d"):format(i):rep(PER / 8)
                local sent = 0
                while sent < PER do
                    local k = math.min(PER - sent, math.random(1, 400))
                    assert(c:write(msg:sub(sent + 1, sent + k)))
                    sent = sent + k
                end
                local back = assert(c:read(PER))
                received = received + #back
                assert(back == msg, "connection " .. i .. " got other bytes")
                open = open - 1
                c:close()
            end)
        end
        for i = 1, N do assert(lts[i]:join()) end
    end, 120)
    srv:close()
    lu.assertEquals(peak, N)
    lu.assertEquals(received, N * PER)
    lu.assertEquals(served, N * PER)
end

function TestAsioConn:test_timeouts_consume_nothing()
    local peer
    local srv = assert(asio.server("127.0.0.1", 0, function(con) peer = con end))
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        while not peer do asio.sleep(0.001) end
        local t0 = asio.now()
        lu.assertEquals({ c:read(4, 0.05) }, { nil, "timeout" })
        lu.assertTrue(asio.now() - t0 >= 0.05)
        -- partial data stays for the next read
        lu.assertTrue(select(1, (function()
            local w = asio.spawn(function() return peer:write("ab") end)
            return w:join()
        end)()))
        lu.assertEquals({ c:read(4, 0.05) }, { nil, "timeout" })
        lu.assertEquals({ c:read_some(10, 0.0) }, { "ab" })
        lu.assertEquals({ c:read_some(10, 0.02) }, { nil, "timeout" })
        asio.spawn(function() peer:write("no newline") end)
        lu.assertEquals({ c:read_line(nil, 0.05) }, { nil, "timeout" })
        lu.assertEquals({ c:read_until("!", nil, 0.02) }, { nil, "timeout" })
        -- defaults from settimeouts
        c:settimeouts(0.03, 0.03)
        t0 = asio.now()
        lu.assertEquals({ c:read_line() }, { nil, "timeout" })
        lu.assertTrue(asio.now() - t0 >= 0.03)
        lu.assertEquals(c:read(10), "no newline")
        c:settimeouts(nil, nil)
        -- a write that the peer does not read: timeout, and what went out
        c:setoption("sndbuf", 4096)
        local big = ("z"):rep(2 ^ 20)
        local ok, err, sent = c:write(big, 0.1)
        lu.assertNil(ok)
        lu.assertEquals(err, "timeout")
        lu.assertTrue(sent > 0 and sent < #big, sent)
        -- the connection goes on: the peer gets exactly `sent` bytes, then more
        asio.spawn(function() c:write("END") end)
        local got = peer:read(sent + 3, 5)
        lu.assertEquals(got, big:sub(1, sent) .. "END")
        -- join, recv and sleep have their own
        local ch = channel.new()
        lu.assertEquals({ asio.recv(ch, 0.02) }, { nil, "timeout" })
        c:close()
        peer:close()
    end)
    srv:close()
end

function TestAsioConn:test_per_call_timeouts_leave_no_timers_behind()
    -- a server with long timeouts on every read: finished waits give their
    -- timers back at once, not when the timeout would have passed
    local srv = echo_server()
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        c:settimeouts(600, 600)
        -- an idle connection's read, due first, stays at the heap's top
        local idle = assert(asio.connect("127.0.0.1", srv:port()))
        local idle_read = asio.spawn(function() return idle:read(1, 300) end)
        local function round()
            for _ = 1, 20000 do
                c:write("ping")
                assert(c:read(4) == "ping")
            end
        end
        round()
        collectgarbage()
        collectgarbage()
        local kb = collectgarbage("count")
        for _ = 1, 4 do round() end
        collectgarbage()
        collectgarbage()
        local grown = collectgarbage("count") - kb
        lu.assertTrue(grown < 1024, ("Lua heap grew %.0f KiB over 80,000 reads"):format(grown))
        c:close()
        idle:close()
        lu.assertEquals({ idle_read:join() }, { true, nil, "closed" })
    end, 120)
    srv:close()
end

function TestAsioConn:test_connect_timeout_and_refused()
    -- a listener that never accepts, its backlog full: SYNs go unanswered
    local fd = ffi.C.asio_test_socket(2, 1, 0)
    local sa = ffi.new("uint8_t[16]", { 2, 0, 0, 0, 127, 0, 0, 1 })
    assert(ffi.C.asio_test_bind(fd, sa, 16) == 0 and ffi.C.asio_test_listen(fd, 0) == 0)
    local len = ffi.new("uint32_t[1]", 16)
    ffi.C.asio_test_getsockname(fd, sa, len)
    local port = sa[2] * 256 + sa[3]
    go(function()
        local cons, timed_out = {}, false
        for _ = 1, 20 do
            local t0 = asio.now()
            local c, err = asio.connect("127.0.0.1", port, 0.2)
            if not c then
                lu.assertEquals(err, "timeout")
                lu.assertTrue(asio.now() - t0 >= 0.2)
                timed_out = true
                break
            end
            cons[#cons + 1] = c
        end
        lu.assertTrue(timed_out)
        for _, c in ipairs(cons) do c:close() end
    end)
    ffi.C.asio_test_close(fd)
    -- refused: a port nobody listens on
    local srv = echo_server()
    local free = srv:port()
    srv:close()
    go(function()
        lu.assertEquals({ asio.connect("127.0.0.1", free) }, { nil, "connection refused" })
        lu.assertEquals({ asio.connect("::1", free) }, { nil, "connection refused" })
    end)
end

local function sigpipe_handler()
    local old = ffi.new("uint8_t[256]")
    assert(ffi.C.asio_test_sigaction(13, nil, old) == 0)
    return tonumber(ffi.cast("uintptr_t *", old)[0])
end

function TestAsioConn:test_reset_and_broken_pipe_without_sigpipe()
    -- SIGPIPE at its default (terminate): surviving proves none was raised
    ffi.cdef "void *signal(int sig, void *handler);"
    ffi.C.signal(13, nil)
    lu.assertEquals(sigpipe_handler(), 0)
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function()
            asio.sleep(0.05)
            con:close()   -- input unread: the kernel resets the connection
        end)
    end))
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        assert(c:write("unread"))
        local data, err = c:read(1, 5)
        lu.assertNil(data)
        lu.assertEquals(err, "connection reset by peer")
        lu.assertEquals({ c:write("x") }, { nil, "closed", 0 })   -- an error closed it
        -- writing on: broken pipe (or the reset) as an error, no signal
        local c2 = assert(asio.connect("127.0.0.1", srv:port()))
        asio.sleep(0.1)
        local ok, werr
        for _ = 1, 100 do
            ok, werr = c2:write(("w"):rep(1000))
            if not ok then break end
            asio.sleep(0.001)
        end
        lu.assertNil(ok)
        lu.assertTrue(werr == "broken pipe" or werr == "connection reset by peer", werr)
        c2:close()
    end)
    srv:close()
    lu.assertEquals(sigpipe_handler(), 0)   -- dispositions untouched
end

function TestAsioConn:test_slow_reader_fast_writer_memory_bounded()
    local peer
    local srv = assert(asio.server("127.0.0.1", 0, function(con) peer = con end))
    local written = 0
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        while not peer do asio.sleep(0.001) end
        local chunk = ("m"):rep(65536)
        local stop = false
        local writer = asio.spawn(function()
            while not stop do
                local ok, err = c:write({ chunk, chunk })
                if not ok then return err end
                written = written + 2 * #chunk
            end
        end)
        -- the reader does not read: the writer waits once the kernel is full
        asio.sleep(0.3)
        local stalled = written
        asio.sleep(0.3)
        -- (an unblocked writer would pass gigabytes in this time)
        lu.assertTrue(written - stalled < 8 * 2 ^ 20, written - stalled)
        lu.assertTrue(stalled < 64 * 2 ^ 20, stalled)
        -- a slow reader: the writer moves at its pace, memory stays flat
        local rss0 = H.rss_mib()
        local got = 0
        local t0 = asio.now()
        while asio.now() - t0 < 1 do
            local data = peer:read_some(65536)
            got = got + #data
            asio.sleep(0.002)
        end
        lu.assertTrue(got > 0)
        lu.assertTrue(written > stalled)
        lu.assertTrue(H.rss_mib() - rss0 < (SANITIZED and 200 or 25), H.rss_mib() - rss0)
        stop = true
        c:close()   -- wakes the writer: "closed"
        lu.assertEquals({ writer:join(5) }, { true, "closed" })
        peer:close()
    end, 30)
    srv:close()
end

function TestAsioConn:test_busy_and_close_wakes_waiters()
    local peer
    local srv = assert(asio.server("127.0.0.1", 0, function(con) peer = con end))
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        while not peer do asio.sleep(0.001) end
        local reader = asio.spawn(function() return c:read(1) end)
        lu.assertEquals({ c:read(1) }, { nil, "busy" })
        lu.assertEquals({ c:read_some() }, { nil, "busy" })
        c:setoption("sndbuf", 4096)
        local writer = asio.spawn(function() return c:write(("q"):rep(4 * 2 ^ 20)) end)
        local ok, err = c:write("x")
        lu.assertNil(ok)
        lu.assertEquals(err, "busy")
        lu.assertTrue(c:close())
        lu.assertEquals({ reader:join(1) }, { true, nil, "closed" })
        local r = { writer:join(1) }
        lu.assertEquals({ r[1], r[2], r[3] }, { true, nil, "closed" })
        lu.assertTrue(r[4] > 0)
        -- shutdown("write") wakes a waiting writer with "closed"; reads go on
        local c3 = assert(asio.connect("127.0.0.1", srv:port()))
        asio.sleep(0.02)
        local p3 = peer
        c3:setoption("sndbuf", 4096)
        local w3 = asio.spawn(function() return c3:write(("s"):rep(4 * 2 ^ 20)) end)
        asio.sleep(0.02)
        lu.assertTrue(c3:shutdown("write"))
        local r3 = { w3:join(1) }
        lu.assertEquals({ r3[1], r3[2], r3[3] }, { true, nil, "closed" })
        p3:write("still here")
        lu.assertEquals(c3:read_until("here", nil, 5), "still ")
        c3:close()
        p3:close()
        -- what was buffered goes with the close
        local c2 = assert(asio.connect("127.0.0.1", srv:port()))
        asio.sleep(0.02)
        peer:write("leftover")
        lu.assertEquals(c2:read(1), "l")
        c2:close()
        lu.assertEquals({ c2:read(1) }, { nil, "closed" })
        lu.assertEquals({ c2:read_some() }, { nil, "closed" })
        peer:close()
    end)
    srv:close()
end

function TestAsioConn:test_close_grace_and_shutdown()
    -- close(grace): the peer gets everything and a clean end
    local big = ("g"):rep(3 * 2 ^ 20)
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        asio.spawn(function()
            con:read(5)   -- more input follows unread
            assert(con:write(big))
            lu.assertTrue(con:close(5))
        end)
    end))
    go(function()
        local c = assert(asio.connect("127.0.0.1", srv:port()))
        c:write("hello and more input the server never reads")
        asio.sleep(0.05)
        local data = assert(c:read(#big))
        lu.assertTrue(data == big)
        lu.assertEquals({ c:read(1) }, { nil, "closed", "" })
        c:close()
        -- close(grace) when the peer never closes: returns after grace
        local c2 = assert(asio.connect("127.0.0.1", srv:port()))
        c2:write("12345")
        local t0 = asio.now()
        local peer_side = asio.spawn(function() return c2:read(#big) end)
        lu.assertTrue(peer_side:join(5))
        -- c2 stays open: the server's close(5) waits for it ... we close now
        c2:close()
        -- shutdown("write"): reads go on, writes give "closed"
        local srv2 = echo_server()
        local c3 = assert(asio.connect("127.0.0.1", srv2:port()))
        c3:write("half")
        lu.assertTrue(c3:shutdown())
        lu.assertEquals({ c3:write("x") }, { nil, "closed", 0 })
        lu.assertEquals(c3:read(4), "half")
        lu.assertEquals({ c3:read(1) }, { nil, "closed", "" })
        c3:close()
        -- the echo server closes at our end of stream: close(grace) returns then
        local c4 = assert(asio.connect("127.0.0.1", srv2:port()))
        t0 = asio.now()
        lu.assertTrue(c4:close(5))
        lu.assertTrue(asio.now() - t0 < 4)
        srv2:close()
        -- a peer that never closes: grace passes
        local held = {}
        local srv3 = assert(asio.server("127.0.0.1", 0, function(con) held[#held + 1] = con end))
        local c5 = assert(asio.connect("127.0.0.1", srv3:port()))
        t0 = asio.now()
        lu.assertTrue(c5:close(0.1))
        lu.assertTrue(asio.now() - t0 >= 0.1)
        srv3:close()
        for _, con in ipairs(held) do con:close() end
        lu.assertErrorMsgContains("shutdown takes", c5.shutdown, c5, "sideways")
    end)
    srv:close()
end

function TestAsioConn:test_names_options_ipv6_resolve()
    local srv = assert(asio.server("::1", 0, function(con)
        asio.spawn(function()
            con:write(select(3, con:getpeername()))
            con:close(1)
        end)
    end))
    local ip, port, fam = srv:getsockname()
    lu.assertEquals({ ip, fam }, { "::1", "inet6" })
    lu.assertEquals(port, srv:port())
    go(function()
        local c = assert(asio.connect("::1", tostring(srv:port())))
        lu.assertEquals({ c:getpeername() }, { "::1", srv:port(), "inet6" })
        local lip, lport = c:getsockname()
        lu.assertEquals(lip, "::1")
        lu.assertTrue(lport > 0)
        lu.assertEquals(c:read(5), "inet6")
        lu.assertTrue(c:setoption("nodelay", false))
        lu.assertTrue(c:setoption("keepalive", true))
        lu.assertTrue(c:setoption("rcvbuf", 65536))
        lu.assertErrorMsgContains("unknown option", c.setoption, c, "linger", 1)
        lu.assertErrorMsgContains("takes a number", c.setoption, c, "sndbuf", true)
        c:close()
        local list = assert(asio.resolve("localhost"))
        local has = false
        for _, a in ipairs(list) do has = has or a == "127.0.0.1" end
        lu.assertTrue(has)
        lu.assertEquals(asio.resolve("10.1.2.3"), { "10.1.2.3" })
        lu.assertEquals({ asio.resolve("no-such-host.invalid") }, { nil, "host not found" })
        lu.assertEquals({ asio.connect("no-such-host.invalid", 80) }, { nil, "host not found" })
    end)
    srv:close()
    -- a name: each address in order (localhost may give ::1 first; this server is IPv4)
    local srv4 = echo_server()
    go(function()
        local c = assert(asio.connect("localhost", srv4:port(), 5))
        c:write("v4")
        lu.assertEquals(c:read(2), "v4")
        lu.assertEquals(select(3, c:getpeername()), "inet")
        c:close()
    end)
    srv4:close()
    lu.assertErrorMsgContains("port", asio.server, "127.0.0.1", 70000, function() end)
    lu.assertErrorMsgContains("host must be an IP", asio.server, "example.com", 0, function() end)
    lu.assertErrorMsgContains("accept handler", asio.server, "127.0.0.1", 0, nil)
end

function TestAsioConn:test_collected_connections_are_closed()
    local srv = echo_server()
    go(function() for _ = 1, 20 do assert(asio.connect("127.0.0.1", srv:port())):close() end end)
    collectgarbage()
    local before = fd_count()
    go(function()
        for _ = 1, 100 do
            local c = assert(asio.connect("127.0.0.1", srv:port()))
            c:write("x")
            c:read(1)
        end
    end)
    for _ = 1, 4 do collectgarbage() end
    asio.run(0.2)   -- the server side sees the ends and closes too
    collectgarbage()
    srv:close()
    lu.assertTrue(fd_count() <= before, fd_count() .. " > " .. before)
end

TestAsioServer = {}

function TestAsioServer:test_port0_reuseaddr_reuseport()
    local a = assert(asio.server("127.0.0.1", 0, function(c) c:close() end, { reuseport = true }))
    lu.assertTrue(a:port() > 0)
    local b = assert(asio.server("127.0.0.1", a:port(), function(c) c:close() end, { reuseport = true }))
    lu.assertEquals(b:port(), a:port())
    local plain = echo_server()
    lu.assertEquals({ asio.server("127.0.0.1", plain:port(), function() end) },
        { nil, "address already in use" })
    a:close()
    b:close()
    plain:close()
    lu.assertTrue(plain:close())   -- idempotent
end

function TestAsioServer:test_accept_handler_error_closes_the_connection()
    local srv = assert(asio.server("127.0.0.1", 0, function() error("handler says no") end))
    local out = capture_stderr(function()
        go(function()
            local c = assert(asio.connect("127.0.0.1", srv:port()))
            lu.assertEquals({ c:read(1, 5) }, { nil, "closed", "" })
            c:close()
        end)
    end)
    srv:close()
    lu.assertStrContains(out, "handler says no")
end

function TestAsioServer:test_close_stops_accepting_served_connections_go_on()
    local srv = echo_server()
    local port = srv:port()
    go(function()
        local c = assert(asio.connect("127.0.0.1", port))
        c:write("before")
        lu.assertEquals(c:read(6), "before")
        lu.assertTrue(srv:close())
        lu.assertEquals({ asio.connect("127.0.0.1", port) }, { nil, "connection refused" })
        -- the port is free
        local again = assert(asio.server("127.0.0.1", port, function(x) x:close() end))
        again:close()
        for i = 1, 10 do
            c:write("after" .. i)
            lu.assertEquals(c:read(#("after" .. i)), "after" .. i)
        end
        c:close()
    end)
end

function TestAsioServer:test_servers_are_held_by_the_loop()
    -- unlike the seed's servers, an open server is never collected
    local weak = setmetatable({ echo_server() }, { __mode = "v" })
    local port = weak[1]:port()
    for _ = 1, 3 do collectgarbage() end
    lu.assertNotNil(weak[1])
    go(function()
        local c = assert(asio.connect("127.0.0.1", port))
        c:write("still")
        lu.assertEquals(c:read(5), "still")
        c:close()
    end)
    weak[1]:close()
end

function TestAsioServer:test_servers_keep_run_going()
    local srv = echo_server()
    asio.spawn(function() asio.sleep(0.1); srv:close() end)
    local t0 = H.now()
    lu.assertTrue(asio.run(5))
    lu.assertTrue(H.now() - t0 >= 0.1)
end

function TestAsioServer:test_emfile_pauses_instead_of_spinning()
    local accepted = 0
    local srv = assert(asio.server("127.0.0.1", 0, function(con)
        accepted = accepted + 1
        asio.spawn(function() con:read(1); con:close() end)
    end))
    local spare = assert(io.open("/dev/null"))
    collectgarbage()
    collectgarbage()
    local maxfd = 0
    for _, name in ipairs(H.listdir("/proc/self/fd")) do maxfd = math.max(maxfd, tonumber(name) or 0) end
    local old = ffi.new("struct asio_test_rlimit")
    assert(ffi.C.asio_test_getrlimit(7, old) == 0)
    -- room for about 20 connections (each takes a descriptor on both ends)
    local low = ffi.new("struct asio_test_rlimit", { maxfd + 41, old.max })
    local cons, failed, pending, cpu = {}, nil, nil, nil
    local ok, err = pcall(go, function()
        assert(ffi.C.asio_test_setrlimit(7, low) == 0)
        while true do
            local c, cerr = asio.connect("127.0.0.1", srv:port(), 2)
            if not c then
                failed = cerr
                break
            end
            cons[#cons + 1] = c
        end
        -- one descriptor more for a client: the server has none to accept it
        spare:close()
        cons[#cons + 1] = assert(asio.connect("127.0.0.1", srv:port(), 2))
        asio.sleep(0.05)
        pending = #cons - accepted
        local cpu0 = os.clock()
        asio.sleep(1)   -- a server spinning on accept would burn this second
        cpu = os.clock() - cpu0
        assert(ffi.C.asio_test_setrlimit(7, old) == 0)
        local t0 = asio.now()
        while accepted < #cons and asio.now() - t0 < 5 do asio.sleep(0.01) end
    end, 30)
    ffi.C.asio_test_setrlimit(7, old)
    for _, c in ipairs(cons) do c:close() end
    srv:close()
    if not ok then error(err, 0) end
    lu.assertEquals(failed, "too many open files")
    lu.assertTrue(pending > 0, pending)
    lu.assertTrue(cpu < 0.2, cpu)
    lu.assertEquals(accepted, #cons)
end

TestAsioChannel = {}

function TestAsioChannel:test_recv_from_another_thread_while_sockets_run()
    local ch = channel.new()
    local sender = Thread.new(function(ch)
        local T = require "lj-async.thread"
        for i = 1, 1000 do
            ch:send(i, "m" .. i)
            if i % 100 == 0 then T.sleep(0.005) end
        end
        ch:close()
        return true
    end, ch)
    local srv = echo_server()
    local got, echoed = {}, 0
    go(function()
        local socket_lt = asio.spawn(function()
            local c = assert(asio.connect("127.0.0.1", srv:port()))
            for i = 1, 2000 do
                c:write("e" .. i .. "\n")
                assert(c:read_line() == "e" .. i)
                echoed = echoed + 1
            end
            c:close()
        end)
        while true do
            local v, s = asio.recv(ch, 10)
            if v == nil then
                lu.assertEquals(s, "closed")
                break
            end
            lu.assertEquals(s, "m" .. v)
            got[#got + 1] = v
        end
        assert(socket_lt:join())
    end, 60)
    srv:close()
    lu.assertTrue(sender:join(10))
    lu.assertEquals(#got, 1000)
    for i = 1, 1000 do assert(got[i] == i) end
    lu.assertEquals(echoed, 2000)
end

function TestAsioChannel:test_recv_ping_pong_with_a_thread_then_the_watch_is_gone()
    -- a light thread receiving in turn after turn keeps its watch; once
    -- the loop returns no watch is left: a send does not wake the loop
    local ping, pong = channel.new(), channel.new()
    local t = Thread.new(function(ping, pong)
        for _ = 1, 2000 do pong:send(ping:recv() + 1) end
        return true
    end, ping, pong)
    local v = 0
    go(function()
        for _ = 1, 2000 do
            ping:send(v)
            v = asio.recv(pong, 10)
        end
    end)
    lu.assertEquals(v, 2000)
    lu.assertTrue(t:join(10))
    -- a send that raced a look may have left an edge: take it off the loop's fd
    ffi.C.asio_test_epoll_wait(asio.fd(), ffi.new("uint8_t[?]", 16 * 16), 16, 0)
    lu.assertFalse(readable(asio.fd()))
    pong:send(1)
    lu.assertFalse(readable(asio.fd(), 50))
    go(function() lu.assertEquals(asio.recv(pong, 1), 1) end)
end

function TestAsioChannel:test_recv_many_waiters_timeouts_and_closed()
    local ch = channel.new()
    go(function()
        local t0 = asio.now()
        lu.assertEquals({ asio.recv(ch, 0.03) }, { nil, "timeout" })
        lu.assertTrue(asio.now() - t0 >= 0.03)
        ch:send("ready before")
        lu.assertEquals(asio.recv(ch), "ready before")
        -- several light threads wait on one channel; a thread feeds them
        local got = {}
        local lts = {}
        for i = 1, 10 do
            lts[i] = asio.spawn(function()
                while true do
                    local v = asio.recv(ch, 5)
                    if not v then return end
                    got[#got + 1] = v
                end
            end)
        end
        local t = Thread.new(function(ch)
            for i = 1, 500 do ch:send(i) end
            require("lj-async.thread").sleep(0.05)
            ch:close()
        end, ch)
        for i = 1, 10 do lts[i]:join() end
        lu.assertTrue(t:join(5))
        lu.assertEquals(#got, 500)
        lu.assertEquals({ asio.recv(ch) }, { nil, "closed" })
        lu.assertErrorMsgContains("recv takes a channel", asio.recv, {})
    end)
end

TestAsioServe = {}

function TestAsioServe:test_4_threads_400_clients_spread_over_all()
    local group = assert(asio.serve {
        host = "127.0.0.1", port = 0, threads = 4,
        handler = function(con)
            local line = con:read_line()
            con:write(line .. " " .. require("lj-async.thread").id() .. "\n")
        end,
    })
    lu.assertTrue(group:port() > 0)
    local by_thread, n = {}, 0
    go(function()
        local lts = {}
        for i = 1, 400 do
            lts[i] = asio.spawn(function()
                local c = assert(asio.connect("127.0.0.1", group:port(), 10))
                c:write("hi" .. i .. "\n")
                local line = assert(c:read_line(nil, 10))
                local id = line:match("^hi" .. i .. " (%d+)$")
                assert(id, line)
                by_thread[id] = (by_thread[id] or 0) + 1
                n = n + 1
                lu.assertEquals({ c:read(1) }, { nil, "closed", "" })   -- closed when the handler returned
                c:close()
            end)
        end
        for i = 1, 400 do assert(lts[i]:join()) end
    end, 60)
    lu.assertTrue(group:stop())
    lu.assertTrue(group:stop())   -- idempotent
    lu.assertEquals(n, 400)
    local threads = 0
    for _ in pairs(by_thread) do threads = threads + 1 end
    lu.assertEquals(threads, 4)
end

function TestAsioServe:test_the_readme_example_runs()
    local lines = {}
    local print0 = print
    print = function(...) lines[#lines + 1] = table.concat({ ... }, " ") end
    local ok, err = pcall(dofile, "examples/asio_echo.lua")
    print = print0
    lu.assertTrue(ok, err)
    lu.assertStrMatches(lines[1], "serving on port %d+")
    lu.assertEquals({ lines[2], lines[3], lines[4] }, { "echo: one", "echo: two", "echo: three" })
end

-- A handler's upvalues cross with it (README: functions and their upvalues):
-- copies of values, and modules by name, the serving thread's own.
function TestAsioServe:test_handler_with_upvalues()
    local greeting, asio_here = "hello, ", asio
    local group = assert(asio.serve {
        host = "127.0.0.1", threads = 2,
        handler = function(con)
            local line = con:read_line()
            con:write(greeting .. line .. (asio_here == require "lj-async.asio" and " (own)" or "") .. "\n")
        end,
    })
    go(function()
        local c = assert(asio.connect("127.0.0.1", group:port()))
        c:write("you\n")
        lu.assertEquals(c:read_line(), "hello, you (own)")
        c:close()
    end)
    lu.assertTrue(group:stop())
end

function TestAsioServe:test_handler_as_source_and_errors_logged()
    local group = assert(asio.serve {
        host = "127.0.0.1", threads = 1,
        handler = [[
            local con = ...
            local line = con:read_line()
            if line == "fail" then error("handler failed on purpose") end
            con:write("source:" .. line .. "\n")
        ]],
    })
    go(function()
        local c = assert(asio.connect("127.0.0.1", group:port()))
        c:write("x\n")
        lu.assertEquals(c:read_line(), "source:x")
        c:close()
        -- an error: logged, the connection closed, the server goes on
        c = assert(asio.connect("127.0.0.1", group:port()))
        c:write("fail\n")
        lu.assertEquals({ c:read(1, 5) }, { nil, "closed", "" })
        c:close()
        c = assert(asio.connect("127.0.0.1", group:port()))
        c:write("y\n")
        lu.assertEquals(c:read_line(), "source:y")
        c:close()
    end)
    lu.assertTrue(group:stop())
    lu.assertErrorMsgContains("stop's grace", group.stop, group, "soon")
end

function TestAsioServe:test_setup_args_grace_and_bad_options()
    local group = assert(asio.serve {
        host = "127.0.0.1", threads = 2, setup = true, args = { "pre:", 3 },
        handler = function(prefix, times)
            return function(con)
                local asio = require "lj-async.asio"
                local line = con:read_line()
                if line == "slow" then asio.sleep(0.3) end
                if line == "hang" then asio.sleep(30) end
                con:write(prefix .. line:rep(times) .. "\n")
            end
        end,
    })
    local slow, hang
    go(function()
        local c = assert(asio.connect("127.0.0.1", group:port()))
        c:write("ab\n")
        lu.assertEquals(c:read_line(), "pre:ababab")
        c:close()
        slow = assert(asio.connect("127.0.0.1", group:port()))
        hang = assert(asio.connect("127.0.0.1", group:port()))
        slow:write("slow\n")
        hang:write("hang\n")
        asio.sleep(0.05)
    end)
    local rs = asio.spawn(function() return slow:read_line(nil, 5) end)
    local rh = asio.spawn(function() return hang:read(1, 5) end)
    -- stop with 1 s of grace (this thread blocks; the serving threads go on):
    -- the slow request finishes, the hanging one is closed when grace ends
    local t0 = H.now()
    lu.assertTrue(group:stop(1))
    local took = H.now() - t0
    lu.assertTrue(took >= 0.9 and took < 5, took)
    lu.assertTrue(asio.run(10))
    lu.assertEquals({ rs:join() }, { true, "pre:slowslowslow" })
    lu.assertEquals({ rh:join() }, { true, nil, "closed", "" })
    slow:close()
    hang:close()
    -- port refused after stop
    go(function() lu.assertEquals({ asio.connect("127.0.0.1", group:port()) }, { nil, "connection refused" }) end)
    local co = coroutine.create(print)   -- an upvalue that cannot cross (README: values that cross)
    lu.assertErrorMsgContains("upvalue 'co'", asio.serve, { handler = function() return co end })
    lu.assertErrorMsgContains("threads", asio.serve, { handler = function() end, threads = 0 })
    lu.assertErrorMsgContains("handler", asio.serve, { threads = 1 })
    lu.assertErrorMsgContains("table of options", asio.serve, "x")
    local bad = { asio.serve { host = "127.0.0.1", threads = 1, setup = true, handler = "return 42" } }
    lu.assertNil(bad[1])
    lu.assertStrContains(bad[2], "setup")
end

os.exit(lu.LuaUnit.run())
