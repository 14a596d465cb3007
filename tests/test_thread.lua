-- README: `lj-async.thread`.
local lu = require "luaunit"
local ffi = require "ffi"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

TestThread = {}

function TestThread:test_results_and_arguments()
    local t = Thread.new(function(a, b, c) return a + b, c, nil, "end" end, 1, 2, { x = "y" })
    local r = { t:join(5) }
    lu.assertEquals(r, { true, 3, { x = "y" }, nil, "end" })
    lu.assertEquals(select("#", t:join(5)), 5)
    t:destroy()
end

function TestThread:test_call_form_and_sources()
    local t = Thread(function() return "called" end)
    lu.assertEquals({ t:join(5) }, { true, "called" })
    t = Thread.new("local a, b = ... return a * b", 6, 7)
    lu.assertEquals({ t:join(5) }, { true, 42 })
    t = Thread.new(string.dump(function(x) return x .. "!" end), "bytecode")
    lu.assertEquals({ t:join(5) }, { true, "bytecode!" })
end

function TestThread:test_error_with_traceback()
    local t = Thread.new(function()
        local function inner() error("boom") end
        inner()
    end)
    local ok, err = t:join(5)
    lu.assertNil(ok)
    lu.assertStrContains(err, "boom")
    lu.assertStrContains(err, "stack traceback")
    lu.assertStrContains(err, "inner")
    -- a thread that errors leaves its worker usable
    lu.assertEquals({ Thread(function() return 1 end):join(5) }, { true, 1 })
end

function TestThread:test_join_timeouts()
    local t = Thread.new(function() require("lj-async.thread").sleep(0.3) return "late" end)
    lu.assertEquals({ t:join(0) }, { false, "timeout" })
    local t0 = H.now()
    lu.assertEquals({ t:join(0.05) }, { false, "timeout" })
    local waited = H.now() - t0
    lu.assertTrue(waited >= 0.045 and waited < 0.29, "waited " .. waited)
    lu.assertEquals({ t:join(5) }, { true, "late" })
    lu.assertEquals({ t:join(0) }, { true, "late" })
    lu.assertErrorMsgContains("timeout must be a number", t.join, t, "soon")
end

function TestThread:test_rejects_upvalues_and_bad_code()
    local captured = coroutine.create(print)   -- an upvalue that cannot cross
    lu.assertErrorMsgContains("cannot send a coroutine (upvalue 'captured')", Thread.new, function() return captured end)
    lu.assertErrorMsgContains("C function", Thread.new, print)
    lu.assertErrorMsgContains("expected a function", Thread.new, 42)
    lu.assertErrorMsgContains("'end' expected", Thread.new, "if true then")
    lu.assertErrorMsgContains("cannot send a coroutine (argument 1.f, upvalue 'captured')", Thread.new, function() end,
        { f = function() return captured end })
end

function TestThread:test_seed_form_with_pointer()
    local cell = ffi.new("int[1]", 41)
    local t = Thread.new(function(ud)
        local ffi = require "ffi"
        local p = ffi.cast("int *", ud)
        p[0] = p[0] + 1
        return tostring(ffi.typeof(ud))
    end, ffi.cast("void *", cell))
    local ok, typ = t:join(5)
    lu.assertTrue(ok, typ)
    lu.assertStrContains(typ, "void *")
    lu.assertEquals(cell[0], 42)
    t:destroy()
end

ffi.cdef "typedef struct lja_test_ud { int value; struct { int x; } inner; } lja_test_ud;"

function TestThread:test_seed_form_with_struct_array_and_reference()
    -- The seed's own test passes a struct; arrays and references cross the
    -- same way: as their address, a void * there.
    local struct_t = ffi.typeof("lja_test_ud")
    local ud = struct_t(123)
    local function bump(ud)
        local ffi = require "ffi"
        local p = ffi.cast("int *", ud)
        p[0] = p[0] + 1
        return tostring(ffi.typeof(ud))
    end
    local ok, typ = Thread(bump, ud):join(5)
    lu.assertTrue(ok, typ)
    lu.assertStrContains(typ, "void *")
    lu.assertEquals(ud.value, 124)
    local cell = ffi.new("int[1]", 41)
    lu.assertEquals({ Thread.new(bump, cell):join(5) }, { true, "ctype<void *>" })
    lu.assertEquals(cell[0], 42)
    -- a struct field that is a struct is a reference cdata
    local ref = ud.inner
    lu.assertStrContains(tostring(ffi.typeof(ref)), "&")
    ref.x = 7
    lu.assertTrue((Thread.new(bump, ref):join(5)))
    lu.assertEquals(ud.inner.x, 8)
end

function TestThread:test_cdata_arguments_live_until_the_thread_ends()
    -- Nothing but the thread refers to these cells: joined, destroyed while
    -- running and collected while running, each stays alive until its
    -- thread has ended, and is freed after.
    local channel = require "lj-async.channel"
    local freed = 0
    local function cell()
        return ffi.gc(ffi.new("int[1]"), function() freed = freed + 1 end)
    end
    local gate = channel.new()
    local function write_later(p, gate)
        gate:recv()
        require("ffi").cast("int *", p)[0] = 7
        return true
    end
    local joined = Thread.new(write_later, cell(), gate)
    Thread.new(write_later, cell(), gate):destroy()
    Thread.new(write_later, { key = cell() }, gate)   -- inside a table too; collected while running
    for _ = 1, 3 do collectgarbage() end
    lu.assertEquals(freed, 0)
    for _ = 1, 3 do gate:send(true) end
    lu.assertTrue((joined:join(5)))
    joined = nil
    local deadline = H.now() + 5
    while freed < 3 and H.now() < deadline do
        Thread.new(function() end):join(5)   -- a later Thread call finds the detached ones ended
        collectgarbage()
        Thread.sleep(0.01)
    end
    lu.assertEquals(freed, 3)
end

function TestThread:test_destroy_idempotent_and_gc()
    local t = Thread.new(function() return 1 end)
    lu.assertTrue((t:join(5)))
    t:destroy()
    t:destroy()
    local u = Thread.new(function() end)
    u:destroy()
    lu.assertErrorMsgContains("destroyed", u.join, u)
    -- never destroyed, still running when collected: detached, no crash
    for _ = 1, 50 do
        Thread.new(function() require("lj-async.thread").sleep(0.02) end)
    end
    collectgarbage()
    collectgarbage()
    Thread.sleep(0.1)
end

function TestThread:test_no_leak_without_destroy()
    -- Rounds of threads never destroyed, some still running when collected:
    -- memory settles instead of growing with every round.
    local function round()
        for i = 1, 300 do
            local t = Thread.new(function(i) return ("x"):rep(1000) .. i end, i)
            if i % 2 == 0 then t:join(5) end
        end
        collectgarbage()
        collectgarbage()
        Thread.sleep(0.05)
    end
    H.assert_memory_settles(lu, round, 3, 10, 8, "3000 threads")
end

function TestThread:test_many_threads_at_once()
    local threads = {}
    for i = 1, 64 do
        threads[i] = Thread.new(function(i)
            local s = 0
            for k = 1, 100000 do s = s + k % i end
            return i, s
        end, i)
    end
    for i = 1, 64 do
        local ok, id = threads[i]:join(30)
        lu.assertTrue(ok)
        lu.assertEquals(id, i)
        threads[i]:destroy()
    end
end

function TestThread:test_nested_threads()
    local t = Thread.new(function()
        local Thread = require "lj-async.thread"
        local u = Thread.new(function(x) return x * 2 end, 21)
        return u:join(5)
    end)
    lu.assertEquals({ t:join(10) }, { true, true, 42 })
end

function TestThread:test_states_are_reset_between_threads()
    for _ = 1, 20 do
        local t = Thread.new(function()
            local seen = { leaked_global ~= nil, string.leaked ~= nil, getmetatable(_G) ~= nil,
                package.loaded["tests.helpers"] ~= nil }
            leaked_global = true
            string.leaked = true
            setmetatable(_G, { __index = function() return "x" end })
            require "tests.helpers"
            return seen
        end)
        local ok, seen = t:join(5)
        lu.assertTrue(ok)
        lu.assertEquals(seen, { false, false, false, false })
    end
    -- threads that use the FFI get states whose cdefs did not see earlier threads
    for i = 1, 5 do
        local ok, err = Thread.new(function()
            local ffi = require "ffi"
            ffi.cdef "struct lja_test_point { int x, y; };"
            return ffi.new("struct lja_test_point", 1, 2).y
        end):join(5)
        lu.assertEquals({ ok, err }, { true, 2 })
    end
end

function TestThread:test_int64_arguments()
    local ok, a, b = Thread.new(function(x) return x.a, x.b end, { a = -5LL, b = 2ULL ^ 63 }):join(5)
    lu.assertTrue(ok, a)
    lu.assertTrue(a == -5LL and b == 2ULL ^ 63)
end

function TestThread:test_results_that_cannot_cross()
    local ok, err = Thread.new(function() return coroutine.create(print) end):join(5)
    lu.assertNil(ok)
    lu.assertStrContains(err, "cannot send a coroutine")
end

function TestThread:test_utilities()
    lu.assertTrue(Thread.cpu_count() >= 1)
    local main_id = Thread.id()
    lu.assertEquals(Thread.id(), main_id)
    local ok, other = Thread.new(function() return require("lj-async.thread").id() end):join(5)
    lu.assertTrue(ok)
    lu.assertNotEquals(other, main_id)
    local t0 = H.now()
    Thread.sleep(0.05)
    lu.assertTrue(H.now() - t0 >= 0.045)
    Thread.yield()
end

-- Control (README: cancel, pause, status) --------------------------------------

local channel, sync, state = require "lj-async.channel", require "lj-async.sync", require "lj-async.state"

-- Seconds f took, and what it returned.
local function timed(f, ...)
    local t0 = H.now()
    local r = { f(...) }
    return H.now() - t0, unpack(r)
end

-- Waits (at most 5 s) until t:status() is `want`.
local function wait_status(t, want)
    local deadline = H.now() + 5
    while t:status() ~= want and H.now() < deadline do Thread.sleep(0.005) end
    lu.assertEquals(t:status(), want)
end

-- Each kind of cancellation point: a thread that blocks there, the action
-- that lets it go on, and what it then returns.  `go` is a channel the
-- loops watch (ch:len() is no cancellation point).
local function points()
    local P = {}
    local function add(name, make) P[#P + 1] = { name = name, make = make } end
    add("join", function()
        local gate = channel.new()
        local t = Thread.new(function(gate)
            local Thread = require "lj-async.thread"
            local u = Thread.new(function(gate) return gate:recv() end, gate)
            return u:join()
        end, gate)
        return t, function() gate:send("joined") end, { true, true, "joined" }
    end)
    add("mutex", function()
        local m = sync.mutex()
        m:lock()
        return Thread.new(function(m) return m:lock() end, m), function() m:unlock() end, { true, true }
    end)
    add("cond", function()
        local m, c = sync.mutex(), sync.cond()
        local t = Thread.new(function(m, c)
            m:lock()
            local ok = c:wait(m)
            m:unlock()
            return ok
        end, m, c)
        return t, function() c:signal() end, { true, true }
    end)
    add("semaphore", function()
        local s = sync.semaphore()
        return Thread.new(function(s) return s:wait() end, s), function() s:post() end, { true, true }
    end)
    add("recv", function()
        local ch = channel.new()
        return Thread.new(function(ch) return ch:recv() end, ch), function() ch:send("m") end, { true, "m" }
    end)
    add("send", function()
        local ch = channel.new(1)
        ch:send("first")
        local t = Thread.new(function(ch) ch:send("second") return "sent" end, ch)
        return t, function() lu.assertEquals(ch:recv(), "first") end, { true, "sent" }
    end)
    add("select", function()
        local a, b = channel.new(), channel.new()
        local t = Thread.new(function(a, b)
            local ch, v = require("lj-async.channel").select({ a, b })
            return ch == b, v
        end, a, b)
        return t, function() b:send("v") end, { true, true, "v" }
    end)
    add("call_wait", function()
        local st = state.new(function() return function(gate) if gate then return gate:recv() end return "in" end end)
        local gate = channel.new()
        local busy = Thread.new(function(st, gate) return st:call_wait(nil, gate) end, st, gate)
        local deadline = H.now() + 5
        while pcall(st.call, st) and H.now() < deadline do end   -- until busy is inside: call raises "busy"
        local t = Thread.new(function(st) return st:call_wait(nil) end, st)
        return t, function() gate:send(1) lu.assertEquals({ busy:join(5) }, { true, 1 }) end, { true, "in" }
    end)
    add("yield", function()
        local go = channel.new()
        local t = Thread.new(function(go)
            local Thread = require "lj-async.thread"
            while go:len() == 0 do Thread.yield() end
            return "out"
        end, go)
        return t, function() go:send(1) end, { true, "out" }
    end)
    add("source loop", function()
        local go = channel.new()
        local t = Thread.new("local go, n = ..., 0 while go:len() == 0 do n = n + 1 end return 'out'", go)
        return t, function() go:send(1) end, { true, "out" }
    end)
    add("step", function()
        local go = channel.new()
        local t = Thread.spawn({ step = 1000 }, function(go)
            local n = 0
            while go:len() == 0 do n = n + 1 end
            return "out"
        end, go)
        return t, function() go:send(1) end, { true, "out" }
    end)
    return P
end

function TestThread:test_cancel_at_each_point()
    for _, p in ipairs(points()) do
        local t = p.make()
        Thread.sleep(0.05)   -- there, blocked or looping
        lu.assertEquals(t:status(), "running", p.name)
        local took, ok, err = timed(t.cancel, t, 5)
        lu.assertEquals({ ok, err }, { true, nil }, p.name)
        lu.assertTrue(took < 1, p.name .. ": the cancel took " .. took .. " s")
        lu.assertEquals({ t:join(0) }, { nil, "cancelled" }, p.name)
        lu.assertEquals(t:status(), "cancelled", p.name)
    end
end

function TestThread:test_pause_at_each_point()
    for _, p in ipairs(points()) do
        local t, release, want = p.make()
        Thread.sleep(0.05)
        local took, ok = timed(t.pause, t, 5)
        lu.assertTrue(ok, p.name)
        lu.assertTrue(took < 1, p.name .. ": the pause took " .. took .. " s")
        lu.assertEquals(t:status(), "paused", p.name)
        release()   -- a paused thread does not take what it waited for
        Thread.sleep(0.05)
        lu.assertEquals(t:status(), "paused", p.name)
        lu.assertEquals({ t:join(0) }, { false, "timeout" }, p.name)
        t:resume()
        lu.assertEquals({ t:join(5) }, want, p.name)
        lu.assertEquals(t:status(), "done", p.name)
    end
end

function TestThread:test_cancel_and_pause_in_recv_while_the_cores_are_busy()
    -- A receive spins a little before it sleeps; with every core busy, each
    -- of its yields may last a time slice: a request ends the spin.
    local busy = {}
    for i = 1, Thread.cpu_count() + 2 do busy[i] = Thread.new("while true do end") end
    local ch = channel.new()
    for _ = 1, 5 do
        local t = Thread.new(function(ch) return ch:recv() end, ch)
        local took, ok = timed(t.pause, t, 5)
        lu.assertTrue(ok)
        lu.assertTrue(took < 1, "the pause took " .. took .. " s")
        took, ok = timed(t.cancel, t, 5)
        lu.assertTrue(ok)
        lu.assertTrue(took < 1, "the cancel took " .. took .. " s")
    end
    for i = 1, #busy do lu.assertTrue(busy[i]:cancel(5)) end
end

function TestThread:test_paused_recv_leaves_the_message()
    local ch = channel.new()
    local t = Thread.new(function(ch) return ch:recv() end, ch)
    Thread.sleep(0.05)
    lu.assertTrue(t:pause(5))
    ch:send("kept")
    Thread.sleep(0.05)
    lu.assertEquals(ch:len(), 1)
    lu.assertEquals(ch:recv(0), "kept")   -- another receiver may take it meanwhile
    ch:send("second")
    t:resume()
    lu.assertEquals({ t:join(5) }, { true, "second" })
end

function TestThread:test_sleep_is_a_point_for_cancel_only()
    local t = Thread.new(function() require("lj-async.thread").sleep(60) return "woke" end)
    Thread.sleep(0.05)
    lu.assertEquals({ t:pause(0.1) }, { false, "timeout" })
    lu.assertEquals(t:status(), "running")
    local took, ok = timed(t.cancel, t, 5)
    lu.assertTrue(ok)
    lu.assertTrue(took < 1, "the cancel took " .. took .. " s")
    lu.assertEquals(t:status(), "cancelled")
end

function TestThread:test_status_through_a_life()
    local gate = channel.new()
    local t = Thread.new(function(gate) return gate:recv() end, gate)
    lu.assertEquals(t:status(), "running")
    lu.assertTrue(t:pause(5))
    lu.assertEquals(t:status(), "paused")
    t:resume()
    lu.assertEquals(t:status(), "running")
    gate:send("v")
    lu.assertEquals({ t:join(5) }, { true, "v" })
    lu.assertEquals(t:status(), "done")
    t:destroy()
    lu.assertEquals(t:status(), "done")   -- known after destroy, once joined
    local f = Thread.new(function() error("broken", 0) end)
    wait_status(f, "failed")
    local s, err = f:status()
    lu.assertEquals(s, "failed")
    lu.assertStrContains(err, "broken")
    local c = Thread.new(function(gate) return gate:recv() end, gate)
    lu.assertTrue(c:cancel(5))
    lu.assertEquals(c:status(), "cancelled")
    lu.assertEquals({ c:join() }, { nil, "cancelled" })
    local u = Thread.new(function() end)
    u:destroy()
    lu.assertErrorMsgContains("status on a destroyed thread", u.status, u)
end

function TestThread:test_a_pcall_loop_cannot_swallow_a_cancel()
    local ch = channel.new()
    local cases = {
        Thread.new(function(ch) while true do pcall(ch.recv, ch) end end, ch),
        Thread.new(function(ch) while true do pcall(function() ch:recv() end) end end, ch),
        Thread.new("while true do pcall(function() while true do end end) end"),
        Thread.new(function() while true do pcall(require("lj-async.thread").yield) end end),
        Thread.spawn({ step = 100 }, function() while true do pcall(function() for _ = 1, 1e9 do end end) end end),
    }
    Thread.sleep(0.05)
    for i, t in ipairs(cases) do
        local took, ok = timed(t.cancel, t, 5)
        lu.assertTrue(ok, "case " .. i)
        lu.assertTrue(took < 1, "case " .. i .. ": the cancel took " .. took .. " s")
        lu.assertEquals(t:status(), "cancelled", "case " .. i)
    end
end

function TestThread:test_thread_pcall_passes_a_cancel()
    -- as pcall for anything else, here and in a thread
    lu.assertEquals({ Thread.pcall(function(a) return a, 2 end, 1) }, { true, 1, 2 })
    lu.assertEquals({ Thread.pcall(error, "plain", 0) }, { false, "plain" })
    lu.assertEquals({ Thread.new(function()
        return require("lj-async.thread").pcall(error, { code = 7 })
    end):join(5) }, { true, false, { code = 7 } })
    -- In a cancelled thread pcall catches the cancel and Thread.pcall lets
    -- it through.  (The code runs in a chunk named as lj-async's own, where
    -- the cancel hook waits, so that what each returns can be seen.)
    local ch, out = channel.new(), channel.new()
    local t = Thread.new(function(ch, out)
        local Thread = require "lj-async.thread"
        local see = load([[
            local Thread, ch, out = ...
            out:send("pcall", pcall(pcall, ch.recv, ch))
            out:send("Thread.pcall", pcall(Thread.pcall, ch.recv, ch))
        ]], "=lj-async test")
        see(Thread, ch, out)
        return "went on"
    end, ch, out)
    Thread.sleep(0.05)
    lu.assertTrue(t:cancel(5))
    lu.assertEquals({ out:recv(5) }, { "pcall", true, false, "lj-async: thread cancelled" })
    lu.assertEquals({ out:recv(5) }, { "Thread.pcall", false, "lj-async: thread cancelled" })
    lu.assertEquals(t:status(), "cancelled")
end

function TestThread:test_cancel_in_recv_loses_no_message()
    -- Threads blocked in ch:recv() are cancelled while messages arrive: each
    -- message is the result of one thread or still queued, never lost
    -- between the shim's receive and the decode; its object is freed.
    local N = 150
    local ch = channel.new()
    local got, sent, hits = {}, {}, 0
    for i = 1, N do
        local s = sync.semaphore()
        sent[i] = s:id()
        local t = Thread.new(function(ch) return ch:recv() end, ch)
        Thread.sleep(0.0002 * (i % 5))
        ch:send(i, s)
        Thread.sleep(0.0001 * (i % 3))
        lu.assertTrue(t:cancel(30))
        local r = { t:join(0) }
        if r[1] then
            got[#got + 1] = r[2]
        else
            lu.assertEquals(r[2], "cancelled")
            hits = hits + 1
        end
        t:destroy()
    end
    while ch:len() > 0 do got[#got + 1] = ch:recv(0) end
    local seen = {}
    for _, seq in ipairs(got) do
        lu.assertNil(seen[seq], "message " .. tostring(seq) .. " received twice")
        seen[seq] = true
    end
    lu.assertEquals(#got, N)
    lu.assertTrue(hits > 0, "no cancel stopped a thread")
    collectgarbage()
    for i = 1, N do lu.assertTrue(H.eventually_gone(sent[i]), "object of message " .. i .. " leaked") end
end

function TestThread:test_pause_and_resume_a_running_loop()
    local counter = sync.atomic(0)
    local t = Thread.new("local c = ... while true do c:add(1) end", counter)
    Thread.sleep(0.05)
    lu.assertTrue(t:pause(5))
    local a = counter:get()
    Thread.sleep(0.05)
    lu.assertEquals(counter:get(), a)   -- stopped
    t:resume()
    local deadline = H.now() + 5
    while counter:get() == a and H.now() < deadline do Thread.sleep(0.001) end
    lu.assertTrue(counter:get() > a)   -- going again
    lu.assertTrue(t:pause(5))           -- and again
    t:resume()
    lu.assertTrue(t:cancel(5))
end

ffi.cdef [[
int sched_getaffinity(int pid, size_t size, void *mask);
]]

function TestThread:test_spawn_options()
    -- name: in the list, with the id the thread has
    local gate, idch = channel.new(), channel.new()
    local t = Thread.spawn({ name = "worker-7" }, function(gate, idch)
        idch:send(require("lj-async.thread").id())
        return gate:recv()
    end, gate, idch)
    local id = idch:recv(5)
    local entry
    for _, e in ipairs(Thread.list()) do if e.id == id then entry = e end end
    lu.assertEquals(entry, { id = id, name = "worker-7", status = "running" })
    gate:send("bye")
    lu.assertEquals({ t:join(5) }, { true, "bye" })
    -- cpus: the affinity the thread sees
    local function affinity()
        local ffi = require "ffi"
        ffi.cdef "int sched_getaffinity(int pid, size_t size, void *mask);"
        local mask = ffi.new("uint8_t[128]")
        assert(ffi.C.sched_getaffinity(0, 128, mask) == 0)
        local cpus = {}
        for i = 0, 1023 do
            if bit.band(mask[bit.rshift(i, 3)], bit.lshift(1, bit.band(i, 7))) ~= 0 then cpus[#cpus + 1] = i end
        end
        return cpus
    end
    local all = affinity()
    lu.assertEquals({ Thread.spawn({ cpus = { all[1] } }, affinity):join(5) }, { true, { all[1] } })
    if all[2] then
        lu.assertEquals({ Thread.spawn({ cpus = { all[2], all[1] } }, affinity):join(5) }, { true, { all[1], all[2] } })
    end
    -- stack: the size the thread runs with
    local function stack_size()
        local ffi = require "ffi"
        ffi.cdef [[
            typedef union { char size[64]; long align; } lja_test_attr;
            unsigned long pthread_self(void);
            int pthread_getattr_np(unsigned long t, lja_test_attr *attr);
            int pthread_attr_getstacksize(const lja_test_attr *attr, size_t *size);
            int pthread_attr_destroy(lja_test_attr *attr);
        ]]
        local attr, size = ffi.new("lja_test_attr"), ffi.new("size_t[1]")
        assert(ffi.C.pthread_getattr_np(ffi.C.pthread_self(), attr) == 0)
        ffi.C.pthread_attr_getstacksize(attr, size)
        ffi.C.pthread_attr_destroy(attr)
        return tonumber(size[0])
    end
    -- (glibc may give a cached stack up to 4 times larger than asked)
    for _, bytes in ipairs { 2 ^ 18, 3 * 2 ^ 20 } do
        local ok, size = Thread.spawn({ stack = bytes }, stack_size):join(5)
        lu.assertTrue(ok, size)
        lu.assertTrue(size >= bytes and size < 4 * bytes, "asked " .. bytes .. ", got " .. tostring(size))
    end
    -- all at once; step runs the code with the JIT off
    local ok, jit_on = Thread.spawn({ name = "all", cpus = { all[1] }, stack = 2 ^ 20, step = 10 }, function()
        return (jit.status())
    end):join(5)
    lu.assertEquals({ ok, jit_on }, { true, false })
    -- and the state that ran it has the JIT on for the next thread
    for _ = 1, 4 do lu.assertEquals({ Thread.new(function() return (jit.status()) end):join(5) }, { true, true }) end
end

function TestThread:test_list()
    local gate = channel.new()
    local function ids()
        local r = {}
        for _, e in ipairs(Thread.list()) do r[e.id] = e end
        return r
    end
    local threads, mine = {}, {}
    local idch = channel.new()
    for i = 1, 70 do   -- more than one batch of the list
        threads[i] = Thread.new(function(gate, idch, i)
            idch:send(i, require("lj-async.thread").id())
            return gate:recv()
        end, gate, idch, i)
    end
    for _ = 1, 70 do
        local i, id = idch:recv(5)
        mine[i] = id
    end
    local listed = ids()
    for i = 1, 70 do
        lu.assertNotNil(listed[mine[i]], "thread " .. i .. " not listed")
        lu.assertEquals(listed[mine[i]].status, "running")
    end
    lu.assertTrue(threads[1]:pause(5))
    lu.assertEquals(ids()[mine[1]].status, "paused")
    threads[1]:resume()
    for _ = 1, 70 do gate:send(0) end
    for i = 1, 70 do lu.assertTrue((threads[i]:join(5))) end
    listed = ids()
    for i = 1, 70 do lu.assertNil(listed[mine[i]], "thread " .. i .. " listed after its end") end
end

function TestThread:test_control_hostile_input()
    local gate = channel.new()
    -- cancel twice; cancel a done thread
    local t = Thread.new(function(gate) return gate:recv() end, gate)
    lu.assertTrue(t:cancel(5))
    lu.assertTrue(t:cancel(5))
    lu.assertEquals(t:status(), "cancelled")
    local d = Thread.new(function() return "result" end)
    lu.assertEquals({ d:join(5) }, { true, "result" })
    lu.assertTrue(d:cancel())
    lu.assertEquals(d:status(), "done")
    lu.assertEquals({ d:join() }, { true, "result" })
    local e = Thread.new(function() return "ended" end)
    wait_status(e, "done")
    lu.assertTrue(e:cancel())   -- never joined: ended on its own, results kept
    lu.assertEquals({ e:join() }, { true, "ended" })
    -- pause and resume a thread that has ended; resume one that runs
    lu.assertEquals({ d:pause(1) }, { false, "done" })
    d:resume()
    local r = Thread.new(function(gate) return gate:recv() end, gate)
    r:resume()
    r:resume()
    lu.assertEquals(r:status(), "running")
    gate:send("still fine")
    lu.assertEquals({ r:join(5) }, { true, "still fine" })
    -- pause then cancel
    local p = Thread.new("while true do end")
    lu.assertTrue(p:pause(5))
    local took, ok = timed(p.cancel, p, 5)
    lu.assertTrue(ok)
    lu.assertTrue(took < 1)
    lu.assertEquals(p:status(), "cancelled")
    -- a cancel that cannot land in time (the thread is in C)
    local c = Thread.new(function()
        local ffi = require "ffi"
        ffi.cdef "int poll(void *fds, unsigned long n, int ms);"
        ffi.C.poll(nil, 0, 400)
        return "out of C"
    end)
    Thread.sleep(0.05)
    lu.assertEquals({ c:cancel(0.05) }, { false, "timeout" })
    lu.assertTrue(c:cancel(5))
    lu.assertEquals(c:status(), "cancelled")
    -- destroyed threads and bad timeouts
    local x = Thread.new(function() end)
    x:destroy()
    lu.assertErrorMsgContains("cancel on a destroyed thread", x.cancel, x)
    lu.assertErrorMsgContains("pause on a destroyed thread", x.pause, x)
    lu.assertErrorMsgContains("resume on a destroyed thread", x.resume, x)
    lu.assertErrorMsgContains("timeout must be a number", t.cancel, t, "soon")
    lu.assertErrorMsgContains("timeout must be a number", t.pause, t, {})
end

function TestThread:test_bad_spawn_options_blame_the_caller()
    local f = function() end
    local cases = {
        { function() Thread.spawn("fast", f) end, "options are a table" },
        { function() Thread.spawn({ stak = 1 }, f) end, "unknown option 'stak'" },
        { function() Thread.spawn({ name = 7 }, f) end, "opts.name" },
        { function() Thread.spawn({ name = "a\0b" }, f) end, "opts.name" },
        { function() Thread.spawn({ cpus = 0 }, f) end, "opts.cpus" },
        { function() Thread.spawn({ cpus = {} }, f) end, "opts.cpus" },
        { function() Thread.spawn({ cpus = { 0, -1 } }, f) end, "opts.cpus[2]" },
        { function() Thread.spawn({ cpus = { 1.5 } }, f) end, "opts.cpus[1]" },
        { function() Thread.spawn({ cpus = { 1024 } }, f) end, "opts.cpus[1]" },
        { function() Thread.spawn({ cpus = { "0" } }, f) end, "opts.cpus[1]" },
        { function() Thread.spawn({ cpus = { 1023 } }, f) end, "refused opts.cpus" },
        { function() Thread.spawn({ stack = "1M" }, f) end, "opts.stack" },
        { function() Thread.spawn({ stack = 4096 }, f) end, "opts.stack" },
        { function() Thread.spawn({ stack = 2 ^ 20 + 0.5 }, f) end, "opts.stack" },
        { function() Thread.spawn({ stack = 2 ^ 40 }, f) end, "opts.stack" },
        { function() Thread.spawn({ step = 0 }, f) end, "opts.step" },
        { function() Thread.spawn({ step = true }, f) end, "opts.step" },
        { function() Thread.spawn({ step = 2 ^ 31 }, f) end, "opts.step" },
        { function() Thread.spawn({}, 42) end, "expected a function" },
    }
    for _, c in ipairs(cases) do
        local err, at = H.raised_at(c[1])
        lu.assertStrContains(err, c[2])
        lu.assertEquals(err:sub(1, #at), at, err)
    end
    lu.assertEquals(#Thread.list() >= 0, true)
    -- no options is as Thread.new
    lu.assertEquals({ Thread.spawn({}, function(a) return a end, 5):join(5) }, { true, 5 })
end

-- Threads that read the clock as local time at once (as the ltask logger and
-- services do) must pass the TSan build: glibc's tzset lock is invisible to
-- TSan, so tests/tsan.supp names it.
function TestThread:test_os_date_from_many_threads()
    local ts = {}
    for i = 1, 4 do
        ts[i] = Thread.new(function(n)
            local last
            for _ = 1, n do last = os.date("%H:%M:%S") end
            return #last
        end, 2000)
    end
    for i = 1, 4 do lu.assertEquals({ ts[i]:join(30) }, { true, 8 }) end
end

os.exit(lu.LuaUnit.run())
