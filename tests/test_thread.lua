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

os.exit(lu.LuaUnit.run())
