-- SPEC section 1: values that cross states.
local lu = require "luaunit"
local ffi = require "ffi"
local transfer = require "lj-async.transfer"
local Thread = require "lj-async.thread"

local function roundtrip(...)
    local p, len = transfer.encode(select("#", ...), ...)
    return transfer.decode(p, len)
end

-- A value through another state: a thread returns what it was given.
local function through_thread(...)
    local t = Thread.new(function(...) return ... end, ...)
    local r = { t:join(5) }
    t:destroy()
    lu.assertTrue(r[1], r[2])
    return unpack(r, 2, table.maxn(r))
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
    local up = 1
    local cases = {
        { { f = function() return up end }, "a function with upvalue 'up' (argument 1.f)" },
        { { list = { 1, coroutine.create(print) } }, "a coroutine (argument 1.list[2])" },
        { { u = io.stdout }, "a userdata (argument 1.u)" },
        { { [io.stdout] = 1 }, "a table key of type userdata" },
        { { c = ffi.new("int[2]") }, "a cdata of type int [2] (argument 1.c)" },
        { { s = ffi.new("struct { int a; }") }, "a cdata of type struct" },
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

os.exit(lu.LuaUnit.run())
