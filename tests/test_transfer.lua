-- README: Values that cross states.
local lu = require "luaunit"
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local Thread = require "lj-async.thread"
local channel = require "lj-async.channel"
local state = require "lj-async.state"
local H = require "tests.helpers"

ffi.cdef "size_t strlen(const char *s);"

local function roundtrip(...)
    local p, len = transfer.encode(select("#", ...), ...)
    local r = transfer.pack(transfer.decode(p, len))
    transfer.drop_exported()   -- the message's own references
    return unpack(r, 1, r.n)
end

-- A value through another state: a thread returns what it was given.
local function through_thread(...)
    local t = Thread.new(function(...) return ... end, ...)
    local r = { t:join(5) }
    t:destroy()
    lu.assertTrue(r[1], r[2])
    return unpack(r, 2, table.maxn(r))
end

-- A value through a channel, in this state.
local function through_channel(...)
    local ch = channel.new()
    ch:send(...)
    return ch:recv(5)
end

-- Runs exercise(ch) on a new channel, then checks that no reference stayed
-- behind: dropping every handle here frees the channel.
local function exercise_then_freed(exercise)
    local ch = channel.new()
    local id = ch:id()
    exercise(ch)
    ch = nil
    lu.assertTrue(H.eventually_gone(id))
end

TestTransfer = {}

function TestTransfer:test_plain_values_copy()
    local nested = { 1, 2, { deep = { deeper = "x" } }, name = "n", [10] = false, [1.5] = true }
    local n, a, b, c, d, e, f = roundtrip(nil, true, 42.5, "str\0bin", nested, nil)
    lu.assertEquals(n, 6)
    lu.assertEquals({ a, b, c, d, f }, { nil, true, 42.5, "str\0bin", nil })
    lu.assertEquals(e, nested)
    lu.assertFalse(e == nested)
    lu.assertEquals({ through_thread(nested, "s", 7) }, { nested, "s", 7 })
end

function TestTransfer:test_int64_cdata()
    local n, a, b = roundtrip(-3LL, 0xffffffffffffffffULL)
    lu.assertEquals(n, 2)
    lu.assertTrue(a == -3LL and ffi.istype("int64_t", a))
    lu.assertTrue(b == 0xffffffffffffffffULL and ffi.istype("uint64_t", b))
end

function TestTransfer:test_shared_subtables_copy_but_cycles_fail()
    local shared = { 1 }
    local n, t = roundtrip({ a = shared, b = shared })
    lu.assertEquals(t.a, { 1 })
    lu.assertEquals(t.b, { 1 })
    local cyc = { child = {} }
    cyc.child.parent = cyc
    lu.assertErrorMsgContains("a table with a cycle (argument 1.child.parent)", transfer.encode, 1, cyc)
end

function TestTransfer:test_functions_cross_as_bytecode()
    local n, f, t = roundtrip(function(x) return x * 3 end, { g = function() return "g" end })
    lu.assertEquals(f(5), 15)
    lu.assertEquals(t.g(), "g")
    local r = { through_thread(function(x) return x + 1 end) }
    lu.assertEquals(r[1](1), 2)
end

function TestTransfer:test_a_value_sent_twice_is_one_value_there()
    local f = function() return "f" end
    local p = ffi.cast("void *", 42)
    local msg = { f, p, [f] = "function", [p] = "pointer", again = { f, p } }
    for _, r in ipairs({ select(2, roundtrip(msg)), through_channel(msg), through_thread(msg) }) do
        lu.assertEquals(r[r[1]], "function")
        lu.assertEquals(r[r[2]], "pointer")
        lu.assertTrue(rawequal(r.again[1], r[1]) and rawequal(r.again[2], r[2]))
        lu.assertEquals(r[1](), "f")
    end
end

function TestTransfer:test_pointers_cross_as_addresses()
    local buf = ffi.new("char[4]", "abc")
    local p = ffi.cast("char *", buf)
    local n, q = roundtrip(p)
    lu.assertTrue(ffi.istype("void *", q))
    lu.assertEquals(ffi.string(q), "abc")
    local r = through_thread({ ptr = p })
    lu.assertEquals(ffi.cast("intptr_t", r.ptr), ffi.cast("intptr_t", p))
    local fp = ffi.cast("int(*)(int)", 0x1234)
    lu.assertNotNil(roundtrip(fp))
end

function TestTransfer:test_rejected_at_the_sender_with_a_path()
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    local cases = {
        { { f = function() return up end }, "a coroutine (argument 1.f, upvalue 'up')" },
        { { list = { 1, coroutine.create(print) } }, "a coroutine (argument 1.list[2])" },
        { { u = io.stdout }, "a userdata (argument 1.u)" },
        { { t = { [io.stdout] = 1 } }, "a userdata as a table key (argument 1.t)" },
        { { c = ffi.new("int") }, "a cdata of type int (argument 1.c)" },
        { { d = ffi.new("complex float") }, "a cdata of type complex float (argument 1.d)" },
        { { e = ffi.C.strlen }, "a cdata of type uint64_t ()" },
        { { p = print }, "a C function (argument 1.p)" },
    }
    for _, c in ipairs(cases) do
        lu.assertErrorMsgContains(c[2], transfer.encode, 1, c[1])
        lu.assertErrorMsgContains(c[2], Thread.new, function() end, c[1])
    end
end

function TestTransfer:test_nothing_half_sent()
    -- A failed encode leaves nothing behind: the next message is whole.
    pcall(transfer.encode, 2, "first", { bad = coroutine.create(print) })
    local n, a = roundtrip("next")
    lu.assertEquals({ n, a }, { 1, "next" })
end

function TestTransfer:test_tracebacks_stop_at_lj_async()
    local ok, err = xpcall(function() error("e") end, transfer.traceback)
    lu.assertFalse(ok)
    lu.assertStrContains(err, "stack traceback")
    lu.assertNotStrContains(err, "xpcall")
end

function TestTransfer:test_data_never_poses_as_a_special_value()
    -- Tables shaped like lj-async's old in-band markers, sent beside values
    -- that take the slow path, arrive as the same plain data; the channel
    -- they name loses no reference it never gave.
    local ch = channel.new()
    local id = ch:id()
    local MARK = "\0lj-async"
    local posers = {
        { [MARK] = "object", "lj-async.channel", "channel", id },
        { [MARK] = "function", string.dump(function() return "posed" end) },
        { [MARK] = "pointer", 0x1234ULL },
        { nested = { [MARK] = "object", "lj-async.channel", "channel", id }, [MARK] = true },
        { [{ [MARK] = "object", "lj-async.channel", "channel", id }] = "as a key" },
    }
    local besides = { function() return "beside" end, ffi.cast("void *", 1), ch }
    for _, beside in ipairs(besides) do
        for _, send in ipairs({ roundtrip, through_channel, through_thread }) do
            local r = { send(posers, beside) }
            if send == roundtrip then table.remove(r, 1) end
            for i = 1, 4 do lu.assertEquals(r[1][i], posers[i]) end
            local k, v = next(r[1][5])
            lu.assertEquals({ k, v }, { next(posers[5]) })
            lu.assertEquals(r[2] == ch, beside == ch)
        end
        collectgarbage()
        collectgarbage()
        lu.assertTrue(H.object_alive(id))
    end
    ch:send("still usable")
    lu.assertEquals(ch:recv(1), "still usable")
end

function TestTransfer:test_objects_and_pointers_cross_as_keys()
    local cell = ffi.new("int[1]", 5)
    local p = ffi.cast("int *", cell)
    -- In a function of its own, so no stale stack slot holds a handle after.
    local function exercise(ch)
        local id = ch:id()
        local t = { [ch] = "channel", [p] = "pointer", plain = 1, list = { ch } }
        local function check(r)
            local keys = {}
            for k, v in pairs(r) do keys[v] = k end
            lu.assertEquals(keys.channel:id(), id)
            lu.assertTrue(ffi.istype("void *", keys.pointer))
            lu.assertEquals(ffi.cast("intptr_t", keys.pointer), ffi.cast("intptr_t", p))
            lu.assertEquals(r.plain, 1)
            -- one object in one message is one handle there (cdata keys go by identity)
            lu.assertEquals(r[r.list[1]], "channel")
        end
        check(select(2, roundtrip(t)))
        check(through_channel(t))
        check(through_thread(t))
        -- a thread finds working keys
        local ok, err = Thread.new(function(t)
            local ffi = require "ffi"
            for k, v in pairs(t) do
                if v == "channel" then k:send("via the key") end
                if v == "pointer" then ffi.cast("int *", k)[0] = 6 end
            end
            return true
        end, t):join(5)
        lu.assertTrue(ok, err)
        lu.assertEquals(ch:recv(1), "via the key")
        lu.assertEquals(cell[0], 6)
        -- a state call takes them and gives them back
        local st = state.new(function() return function(t) return t end end)
        check(st:call(t))
        st:close()
    end
    exercise_then_freed(exercise)
end

-- A linked list of n nodes { i = i, next = ... }, and its last node.
local function list(n)
    local head = { i = 1 }
    local last = head
    for i = 2, n do
        last.next = { i = i }
        last = last.next
    end
    return head, last
end

local function assert_list(l, n)
    local i = 0
    while l do
        i = i + 1
        lu.assertEquals(l.i, i)
        l = l.next
    end
    lu.assertEquals(i, n)
end

function TestTransfer:test_deep_tables_cross()
    for _, n in ipairs({ 500, 10000 }) do
        local l, last = list(n)
        assert_list(select(2, roundtrip(l)), n)
        assert_list(through_channel(l), n)
        assert_list(through_thread(l), n)
        -- deep, and with values that take the slow path at the bottom
        local ch = channel.new()
        last.f, last.ch, last[ch] = function() return "bottom" end, ch, "key"
        local got = through_thread(l)
        assert_list(got, n)
        local tail = got
        while tail.next do tail = tail.next end
        lu.assertEquals(tail.f(), "bottom")
        lu.assertEquals(tail.ch:id(), ch:id())
        lu.assertEquals(tail[tail.ch], "key")
        -- as a key, deep inside
        local deep_key = list(n)
        local _, t = roundtrip({ { [deep_key] = l } })
        local k, v = next(t[1])
        assert_list(k, n)
        assert_list(v, n)
    end
    -- a deep cycle, and a deep value that cannot cross, are named by path
    local l, last = list(300)
    last.next = l
    lu.assertErrorMsgContains("a table with a cycle (argument 1" .. (".next"):rep(300) .. ")", transfer.encode, 1, l)
    l, last = list(300)
    last.co = coroutine.create(print)
    lu.assertErrorMsgContains("a coroutine (argument 2" .. (".next"):rep(299) .. ".co)", transfer.encode, 2, 1, l)
end

function TestTransfer:test_number_cdata_one_rule()
    -- complex crosses by copy alone and beside values on the slow path;
    -- complex float is refused on both.
    local c = ffi.new("complex", 1, 2)
    local f = function() return "f" end
    local _, a = roundtrip(c)
    local _, b, g = roundtrip(c, f)
    for _, x in ipairs({ a, b, (through_thread(c, f)), through_channel({ c = c, f = f }).c }) do
        lu.assertTrue(ffi.istype("complex", x))
        lu.assertEquals({ x.re, x.im }, { 1, 2 })
    end
    lu.assertEquals(g(), "f")
    local cf = ffi.new("complex float", 1, 2)
    lu.assertErrorMsgContains("a cdata of type complex float (argument 1)", transfer.encode, 1, cf)
    lu.assertErrorMsgContains("a cdata of type complex float (argument 1)", transfer.encode, 2, cf, f)
end

function TestTransfer:test_errors_blame_the_senders_line()
    local up = coroutine.create(print)
    local bad = function() return up end
    local ch = channel.new()
    local senders = {
        function() ch:send(bad) end,
        function() ch:send_timeout(1, { bad }) end,
        function() Thread.new(function() end, bad) end,
    }
    for i, send in ipairs(senders) do
        local ok, err = pcall(send)
        lu.assertFalse(ok)
        local line = debug.getinfo(send, "S").linedefined
        lu.assertStrContains(err, "test_transfer.lua:" .. line .. ": lj-async: cannot send a coroutine (")
    end
end

-- Functions and their upvalues (README: "Functions and their upvalues").

function TestTransfer:test_upvalues_cross_as_copies()
    local n, s, t = 7, "str", { list = { 1, 2, { deep = "x" } }, name = "n" }
    local f = function(k) return n * k, s, t end
    for _, send in ipairs({ roundtrip, through_channel, through_thread }) do
        local r = { send(f) }
        local g = r[#r]
        local a, b, c = g(2)
        lu.assertEquals({ a, b, c }, { 14, "str", t })
        lu.assertFalse(rawequal(c, t))   -- a copy
    end
    -- a later change to the sender's local is not seen there, nor the other way
    local ch = channel.new()
    ch:send(function() n = n + 1 return n end)
    n = 100
    local g = ch:recv(1)
    lu.assertEquals(g(), 8)
    lu.assertEquals(g(), 9)
    lu.assertEquals(n, 100)
end

function TestTransfer:test_libraries_and_modules_cross_by_name()
    local format, floor, insert, ffi_ = string.format, math.floor, table.insert, ffi
    local sync = require "lj-async.sync"
    local m, G, C = math, _G, ffi.C
    local f = function(x)
        local t = {}
        insert(t, format("%d", floor(x)))
        return t[1], m.pi, sync.mutex ~= nil, ffi_.sizeof("int"), G.tostring(C ~= nil)
    end
    -- in this state they are the same values
    local _, g = roundtrip(f)
    for i = 1, 8 do
        local name, v = debug.getupvalue(g, i)
        lu.assertEquals(debug.getupvalue(f, i), name)
        lu.assertTrue(rawequal(v, select(2, debug.getupvalue(f, i))), name)
    end
    -- in a thread they are the thread's own
    local ok, a, b, c, d, e, own = Thread.new(function(f)
        local ffi, sync = require "ffi", require "lj-async.sync"
        local own = true
        local mine = { format = string.format, floor = math.floor, insert = table.insert, ffi_ = ffi,
            sync = sync, m = math, G = _G, C = ffi.C }
        for i = 1, 8 do
            local name, v = debug.getupvalue(f, i)
            own = own and rawequal(v, mine[name])
        end
        local a, b, c, d, e = f(4.5)
        return a, b, c, d, e, own
    end, f):join(5)
    lu.assertTrue(ok, a)
    lu.assertEquals({ a, b, c, d, e, own }, { "4", math.pi, true, 4, "true", true })
    -- inside a captured table too; other globals are copied
    local libs = { m = math, fmt = string.format, print = print, data = { 1 } }
    rawset(_G, "lja_test_global", { 2 })
    local global = lja_test_global
    ok, a = Thread.new(function()
        return libs.m == math and libs.fmt == string.format and libs.print == print and libs.data[1] == 1
            and global[1] == 2 and rawget(_G, "lja_test_global") == nil
    end):join(5)
    rawset(_G, "lja_test_global", nil)
    lu.assertEquals({ ok, a }, { true, true })
end

function TestTransfer:test_shared_upvalues_stay_shared()
    local count = 0
    local inc = function(k) count = count + k end
    local get = function() return count end
    for _, send in ipairs({ roundtrip, through_channel, through_thread }) do
        local r = { send({ inc = inc, get = get }) }
        local fs = r[#r]
        fs.inc(2)
        fs.inc(3)
        lu.assertEquals(fs.get(), 5)
    end
    lu.assertEquals(count, 0)
    -- one table captured by two functions is one table there
    local cfg = { n = 1 }
    local set = function(v) cfg.n = v end
    local read = function() return cfg.n end
    local _, a, b = roundtrip(set, read)
    a(42)
    lu.assertEquals(b(), 42)
    lu.assertEquals(cfg.n, 1)
end

function TestTransfer:test_recursive_functions_cross()
    local function fact(n) return n <= 1 and 1 or n * fact(n - 1) end
    local even, odd
    function even(n) if n == 0 then return true end return odd(n - 1) end
    function odd(n) if n == 0 then return false end return even(n - 1) end
    -- a function that captures the table holding it (a module's functions)
    local M = {}
    function M.twice(x) return M.add(x, x) end
    function M.add(x, y) return x + y end
    for _, send in ipairs({ roundtrip, through_channel, through_thread }) do
        local r = { send(fact, even, M.twice) }
        local n = #r
        lu.assertEquals(r[n - 2](10), 3628800)
        lu.assertEquals({ r[n - 1](10), r[n - 1](7) }, { true, false })
        lu.assertEquals(r[n](21), 42)
        -- the table itself, holding functions that capture it, also as a key
        local m = select(-1, send(M))
        lu.assertEquals(m.twice(4), 8)
        local k = next(select(-1, send({ [M] = true })))
        lu.assertEquals(k.twice(5), 10)
    end
    -- a table cycle is still refused, also behind an upvalue
    local cyc = {}
    cyc.self = cyc
    lu.assertErrorMsgContains("a table with a cycle (argument 1, upvalue 'cyc'.self)", transfer.encode, 1,
        function() return cyc end)
end

function TestTransfer:test_refused_upvalues_are_named_with_their_path()
    local co = coroutine.create(print)
    local inner = function() return co end
    local cfg = { list = { 1, io.stdin == nil or coroutine.create(print) } }
    local cases = {
        { function() return co end, "a coroutine (argument 1, upvalue 'co')" },
        { { h = function() return inner() end }, "a coroutine (argument 1.h, upvalue 'inner', upvalue 'co')" },
        { function() return cfg end, "a coroutine (argument 1, upvalue 'cfg'.list[2])" },
    }
    for _, c in ipairs(cases) do
        lu.assertErrorMsgContains(c[2], transfer.encode, 1, c[1])
    end
    lu.assertErrorMsgContains("cannot send a coroutine (upvalue 'co')", Thread.new, function() return co end)
    -- nothing half-sent: the next message is whole
    lu.assertEquals({ roundtrip("next") }, { 1, "next" })
end

-- An lj-async object that a function captures is a live handle there, and
-- no reference stays behind once every handle is gone.
function TestTransfer:test_captured_objects_are_live_and_released()
    local function exercise(ch)
        local send = function(v) ch:send(v) return true end
        lu.assertEquals({ Thread.new(function() return send("thread") end):join(5) }, { true, true })
        local cb = require("lj-async.callback")("void(*)(void)")(function() send("callback") end, { states = 2 })
        cb:funcptr()()
        cb:free()
        local st = state.new(function() return send end)
        st:call("state")
        st:close()
        local got = {}
        for i = 1, 3 do got[i] = ch:recv(1) end
        lu.assertEquals(got, { "thread", "callback", "state" })
    end
    exercise_then_freed(exercise)
end

-- Everywhere a function crosses: a thread's function, a callback (the
-- seed's own example that could not work), a channel message, a state's
-- setup and calls, a pool job's result.
function TestTransfer:test_functions_with_upvalues_cross_everywhere()
    local base, fmt = 40, string.format
    local t = Thread.new(function(x) return fmt("%d", base + x) end, 2)
    lu.assertEquals({ t:join(5) }, { true, "42" })
    t:destroy()

    local CallbackFactory = require "lj-async.callback"
    local MyCallback_t = CallbackFactory("void(*)(void *)")
    local cell = ffi.new("int[1]")
    local MyCallback = MyCallback_t(function(userdata)
        userdata = ffi.cast("int[1]", userdata) -- BAD! ffi is an upvalue and not preserved by string.dump!
    end)
    MyCallback:funcptr()(cell)
    -- ffi is the callback state's own: its cast runs (and refuses an array
    -- type, as LuaJIT does anywhere; the seed's line would need "int *")
    lu.assertStrContains(MyCallback:last_error(), "bad argument #1 to 'cast' (invalid C type)")
    MyCallback:free()
    MyCallback = MyCallback_t(function(userdata)
        userdata = ffi.cast("int *", userdata)
        userdata[0] = 123
    end)
    MyCallback:funcptr()(cell)
    lu.assertEquals(cell[0], 123)
    lu.assertNil(MyCallback:last_error())
    MyCallback:free()
    local scale = 3
    local cb = CallbackFactory("int(*)(int)")(function(k) return function(n) return n * scale + k end end,
        { setup = true, args = { 1 }, states = 2 })
    lu.assertEquals(cb:funcptr()(5), 16)
    cb:free()

    local st = state.new(function() return function(f, x) return f(x) + base end end)
    lu.assertEquals(st:call(function(x) return base * x end, 2), 120)
    st:close()
    local ch = channel.new()
    st = state.new(function(k) return function() ch:send(base + k) return true end end, 2)
    lu.assertTrue(st:call())
    lu.assertEquals(ch:recv(1), 42)
    st:close()

    local Pool = require "lj-async.pool"
    local pool = Pool.new(1)
    local f = pool:submit(Pool.compile("local n = ctx.n local s = string.format return function(x) return s('%d', n + x) end"),
        { n = 40 })
    lu.assertEquals(f(2), "42")
    lu.assertEquals(pool:submit(Pool.compile("return ctx.f(2)"), { f = function(x) return base + x end }), 42)
    -- and on to a thread: the job's poll is the thread's own
    local t2 = Thread.new(f, 3)
    lu.assertEquals({ t2:join(5) }, { true, "43" })
    t2:destroy()
    lu.assertTrue(pool:shutdown(1))
end

os.exit(lu.LuaUnit.run())
