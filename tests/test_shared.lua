-- The promises of the README's lj-async.shared section, tables every thread and state sees.
local lu = require "luaunit"
local ffi = require "ffi"
local shared = require "lj-async.shared"
local channel = require "lj-async.channel"
local state = require "lj-async.state"
local Thread = require "lj-async.thread"
local Pool = require "lj-async.pool"
local H = require "tests.helpers"

local SANITIZED = (os.getenv("LJA_SANITIZE") or "") ~= ""

local function is_shared(v)
    return shared.type(v) == "shared.table"
end

local id_of = shared.id

TestShared = {}

function TestShared:test_get_set_length_and_delete()
    local t = shared.table()
    t.n, t.s, t.b, t[1], t[2], t[1.5], t[true] = 42, "str\0ing", false, "one", "two", "half", "yes"
    lu.assertEquals({ t.n, t.s, t.b, t[1], t[2], t[1.5], t[true] }, { 42, "str\0ing", false, "one", "two", "half", "yes" })
    lu.assertEquals(#t, 2)
    lu.assertEquals(shared.length(t), 2)
    t.n = nil
    lu.assertNil(t.n)
    lu.assertNil(t.missing)
    t[-2 ^ 40], t[2 ^ 53] = "low", "high"   -- beyond int32: number keys all the same
    lu.assertEquals({ t[-2 ^ 40], t[2 ^ 53] }, { "low", "high" })
    t.i = 1LL
    lu.assertTrue(ffi.istype("int64_t", t.i))
    lu.assertEquals(tostring(t.i), "1LL")
    t.p = ffi.cast("void *", 1234)   -- a pointer: its address
    lu.assertEquals(tonumber(ffi.cast("uintptr_t", t.p)), 1234)
    lu.assertEquals(tostring(t), "lj-async.shared: " .. shared.id(t))
end

function TestShared:test_init_is_copied_in()
    local init = { a = 1, list = { 1, 2, 3 } }
    local t = shared.table(init)
    init.a, init.list[1] = 99, 99
    lu.assertEquals(t.a, 1)
    lu.assertTrue(is_shared(t.list))
    lu.assertEquals(t.list[1], 1)
    lu.assertEquals(#t.list, 3)
end

function TestShared:test_plain_tables_become_shared_tables_and_shared_ones_stay()
    local t, other = shared.table(), shared.table { x = 1 }
    local plain = { a = { b = { c = "deep" } } }
    t.p = plain
    lu.assertTrue(is_shared(t.p) and is_shared(t.p.a) and is_shared(t.p.a.b))
    lu.assertEquals(t.p.a.b.c, "deep")
    plain.a.b.c = "changed"   -- a copy: the plain table's later changes are not seen
    lu.assertEquals(t.p.a.b.c, "deep")
    t.o = other
    lu.assertEquals(id_of(t.o), id_of(other))
    lu.assertTrue(t.o == other)
    other.x = 2
    lu.assertEquals(t.o.x, 2)
    t.list = { other, { other } }   -- inside a plain table too
    lu.assertEquals(id_of(t.list[1]), id_of(other))
    lu.assertEquals(id_of(t.list[2][1]), id_of(other))
end

function TestShared:test_objects_as_values_and_keys()
    local ch, t = channel.new(), shared.table()
    t.ch = ch
    t[ch] = "by channel"
    lu.assertEquals(t.ch:id(), ch:id())
    lu.assertEquals(t[ch], "by channel")
    t.ch:send("through the table")
    lu.assertEquals(ch:recv(1), "through the table")
    local keys = {}
    for k in shared.pairs(t) do keys[#keys + 1] = type(k) == "string" and k or k:id() end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    lu.assertEquals(keys, { ch:id(), "ch" })
    local f = function(x) return x * 2 end
    t.f = f
    lu.assertEquals(t.f(21), 42)
end

function TestShared:test_pairs_rawget_rawset_dump()
    local t = shared.table { a = 1, b = { c = 2 } }
    local seen = {}
    for k, v in shared.pairs(t) do seen[k] = v end
    lu.assertEquals(seen.a, 1)
    lu.assertTrue(is_shared(seen.b))
    lu.assertEquals(shared.dump(t), { a = 1, b = { c = 2 } })
    shared.setmetatable(t, { __index = function() return "meta" end, __newindex = function() error("no writes") end })
    lu.assertEquals(t.zzz, "meta")
    lu.assertNil(shared.rawget(t, "zzz"))
    lu.assertEquals(shared.rawset(t, "w", 5), t)
    lu.assertEquals(shared.rawget(t, "w"), 5)
    lu.assertErrorMsgContains("no writes", function() t.other = 1 end)
    t.w = 6   -- present: __newindex is not asked
    lu.assertEquals(t.w, 6)
    local cyc = shared.table()   -- dump keeps shared tables' own cycles
    cyc.self = cyc
    local d = shared.dump(cyc)
    lu.assertIs(d.self, d)
    cyc.self = nil
end

function TestShared:test_size_type_ipairs_and_pairs_metamethods()
    local t = shared.table { "a", "b", "c", x = 1, [5] = "e" }
    lu.assertEquals(shared.size(t), 5)
    lu.assertEquals({ shared.type(t), shared.type({}), shared.type(1) }, { "shared.table", "table", "number" })
    local seen = {}
    for i, v in shared.ipairs(t) do seen[i] = v end
    lu.assertEquals(seen, { "a", "b", "c" })
    shared.setmetatable(t, {
        __pairs = function(self) return next, { only = "this" }, nil end,
        __ipairs = function(self) return ipairs { "z" } end,
    })
    seen = {}
    for k, v in shared.pairs(t) do seen[k] = v end
    lu.assertEquals(seen, { only = "this" })
    for i, v in shared.ipairs(t) do seen[i] = v end
    lu.assertEquals(seen[1], "z")
    local err, at = H.raised_at(function() shared.size({}) end)
    lu.assertStrContains(err, at)
end

function TestShared:test_pairs_walks_a_snapshot_while_others_write()
    local t, control = shared.table(), shared.table()
    local writer = Thread.new(function(t, control)
        local i = 0
        repeat
            for _ = 1, 500 do
                i = i + 1
                t[i] = i
            end
            require("lj-async.thread").sleep(0.002)   -- 0.8 s at least: many walks
        until control.stop or i >= 200000
        return i
    end, t, control)
    local deadline = H.now() + 30
    while t[1] == nil and H.now() < deadline do Thread.sleep(0.001) end
    local sizes, distinct = {}, 0
    while distinct < 3 and H.now() < deadline do
        local n, keys = 0, {}
        for k, v in shared.pairs(t) do
            lu.assertEquals(v, k)
            n = n + 1
            keys[k] = true
        end
        -- writes happen in order and a snapshot is one instant: keys 1..n
        for i = 1, n do lu.assertTrue(keys[i], "key " .. i .. " missing of " .. n) end
        if not sizes[n] then sizes[n], distinct = true, distinct + 1 end
    end
    control.stop = true
    local ok, written = writer:join(60)
    lu.assertTrue(ok)
    lu.assertTrue(written >= 100)
    lu.assertEquals(distinct, 3, "the walks saw too few writes happen")
end

function TestShared:test_update_8_threads_exact_total()
    local n = 100000
    local t = shared.table { count = 0 }
    local threads = {}
    for i = 1, 8 do
        threads[i] = Thread.new(function(t, n)
            local shared = require "lj-async.shared"
            local add = function(old, d) return old + d end
            for _ = 1, n do shared.update(t, "count", add, 1) end
            return true
        end, t, n)
    end
    for i = 1, 8 do lu.assertEquals({ threads[i]:join(120) }, { true, true }) end
    lu.assertEquals(t.count, 8 * n)
end

function TestShared:test_update_returns_new_value_nests_and_releases_on_error()
    local t = shared.table { v = 1 }
    lu.assertEquals(shared.update(t, "v", function(old, a, b) return old + a + b end, 2, 3), 6)
    -- f may use the table again on its own thread
    lu.assertEquals(shared.update(t, "v", function(old)
        t.other = old
        return shared.update(t, "w", function() return old * 2 end) + t.other
    end), 18)
    lu.assertEquals({ t.v, t.w, t.other }, { 18, 12, 6 })
    -- an error in f leaves the table unchanged and unlocked
    local err, at = H.raised_at(function() shared.update(t, "v", function() error("boom", 2) end) end)
    lu.assertStrContains(err, "boom")
    lu.assertEquals(t.v, 18)
    local err2 = select(2, pcall(shared.update, t, "v", function() error({ code = 7 }) end))
    lu.assertEquals(err2, { code = 7 })   -- as raised
    err, at = H.raised_at(function() shared.update(t, "v", function() return coroutine.create(print) end) end)
    lu.assertStrContains(err, at)
    lu.assertStrContains(err, "cannot store a coroutine (t.v)")
    lu.assertEquals(t.v, 18)
    local th = Thread.new(function(t) t.v = "from a thread" return true end, t)
    lu.assertEquals({ th:join(10) }, { true, true })
    lu.assertEquals(t.v, "from a thread")
end

function TestShared:test_update_holds_the_table_against_other_threads()
    local t, go, started = shared.table { v = 0 }, channel.new(), channel.new()
    local writer = Thread.new(function(t, go, started)
        started:send(true)
        assert(go:recv(10))
        t.v = "writer"   -- waits while the main thread's update holds t
        return true
    end, t, go, started)
    lu.assertTrue(started:recv(10))
    shared.update(t, "v", function()
        go:send(true)
        Thread.sleep(0.2)   -- the writer tries now
        lu.assertEquals(shared.rawget(t, "v"), 0)
        return "update"
    end)
    lu.assertEquals({ writer:join(10) }, { true, true })
    lu.assertEquals(t.v, "writer")
end

function TestShared:test_crosses_channels_threads_states_and_pool_jobs()
    local t = shared.table { n = 1 }
    local ch = channel.new()
    ch:send(t)
    local got = ch:recv(1)
    lu.assertEquals(id_of(got), id_of(t))
    got.n = 2
    lu.assertEquals(t.n, 2)
    local th = Thread.new(function(t) t.n = t.n + 1 return t end, t)
    local ok, back = th:join(10)
    lu.assertTrue(ok)
    lu.assertEquals(id_of(back), id_of(t))
    lu.assertEquals(t.n, 3)
    local st = state.new(function() return function(t) t.n = t.n * 10 return t.n end end)
    lu.assertEquals(st:call(t), 30)
    st:close()
    local pool = Pool.new(1)
    lu.assertEquals(pool:submit("ctx.t.n = ctx.t.n + 1 return ctx.t.n", { t = t }), 31)
    pool:shutdown()
    lu.assertEquals(t.n, 31)
end

function TestShared:test_crosses_to_an_ltask_service()
    local boot = require "ltask.bootstrap"
    local base = os.tmpname()   -- no subprocess: runs under TSan too
    local f = assert(io.open(base .. "_root.lua", "w"))
    f:write([[
        local t = ...
        t.n = t.n + 1
        t.from_service = require("lj-async.shared").G ~= nil
    ]])
    f:close()
    local t = shared.table { n = 41 }
    local ctx = boot.start { worker = 1, service_path = base .. "_?.lua", root = "root", args = { t },
        logfile = base .. "_log" }
    local finished = boot.wait(ctx, 30)
    os.remove(base .. "_root.lua")
    os.remove(base .. "_log")
    os.remove(base)
    lu.assertTrue(finished)
    lu.assertEquals({ t.n, t.from_service }, { 42, true })
end

function TestShared:test_G_is_one_table_in_every_state()
    shared.G.from_main = "main"
    local th = Thread.new(function()
        local shared = require "lj-async.shared"
        shared.G.from_thread = "thread"
        return shared.G.from_main, tostring(shared.G)
    end)
    lu.assertEquals({ th:join(10) }, { true, "main", tostring(shared.G) })
    local st = state.new(function() return function() return require("lj-async.shared").G.from_thread end end)
    lu.assertEquals(st:call(), "thread")
    st:close()
    shared.G.from_main, shared.G.from_thread = nil, nil
end

function TestShared:test_metamethods_run_in_the_callers_state()
    local t = shared.table { v = 5 }
    local proto = shared.table { inherited = "from proto" }
    local log = shared.table()
    shared.setmetatable(t, {
        __index = function(self, k) return k .. " in " .. (WHERE or "?") end,
        __call = function(self, a) return self.v + a end,
        __add = function(a, b) return (type(a) == "number" and a or a.v) + (type(b) == "number" and b or b.v) end,
        __sub = function(a, b) return a.v - b end,
        __mul = function(a, b) return a.v * b end,
        __concat = function(a, b) return "cat" end,
        __unm = function(a) return -a.v end,
        __len = function() return 99 end,
        __eq = function(a, b) return a.v == b.v end,
        __lt = function(a, b) return a.v < b.v end,
        __le = function(a, b) return a.v <= b.v end,
        __tostring = function(self) return "T(" .. self.v .. ")" end,
    })
    WHERE = "main"
    lu.assertEquals(t.missing, "missing in main")
    lu.assertEquals(t(1), 6)
    lu.assertEquals({ t + 1, 1 + t, t - 1, t * 2, t .. "x", -t, #t }, { 6, 6, 4, 10, "cat", -5, 99 })
    lu.assertEquals(tostring(t), "T(5)")
    local u = shared.table { v = 5 }
    shared.setmetatable(u, shared.getmetatable(t))   -- one shared metatable
    lu.assertTrue(t == u)
    u.v = 6
    lu.assertFalse(t == u)
    lu.assertTrue(t < u and t <= u)
    WHERE = nil
    local th = Thread.new(function(t)
        WHERE = "thread"
        return t.missing
    end, t)
    lu.assertEquals({ th:join(10) }, { true, "missing in thread" })
    -- __index and __newindex as shared tables
    local v = shared.setmetatable(shared.table(), { __index = proto, __newindex = log })
    lu.assertEquals(v.inherited, "from proto")
    v.written = 1
    lu.assertNil(shared.rawget(v, "written"))
    lu.assertEquals(log.written, 1)
    lu.assertTrue(is_shared(shared.getmetatable(v)))
    shared.setmetatable(v, nil)
    lu.assertNil(shared.getmetatable(v))
    lu.assertNil(v.inherited)
    -- without the metamethod: a clear error
    lu.assertErrorMsgContains("no __call", function() v() end)
    lu.assertErrorMsgContains("no __add", function() return v + 1 end)
end

function TestShared:test_hostile_keys_raise_at_the_caller()
    local t = shared.table()
    for _, bad in ipairs { { function() end, "a function as a key" }, { {}, "a plain table as a key" },
        { coroutine.create(print), "a coroutine as a key" }, { 0 / 0, "NaN as a key" } } do
        local err, at = H.raised_at(function() t[bad[1]] = 1 end)
        lu.assertStrContains(err, at)
        lu.assertStrContains(err, bad[2])
        err, at = H.raised_at(function() return t[bad[1]] end)
        lu.assertStrContains(err, at)
        err, at = H.raised_at(function() shared.rawset(t, bad[1], 1) end)
        lu.assertStrContains(err, at)
    end
    local err, at = H.raised_at(function() t[nil] = 1 end)
    lu.assertStrContains(err, "nil as a key")
    err, at = H.raised_at(function() shared.rawget({}, "k") end)
    lu.assertStrContains(err, at)
    lu.assertStrContains(err, "argument 1 must be a shared table, got table")
    err, at = H.raised_at(function() shared.table(42) end)
    lu.assertStrContains(err, at)
    err, at = H.raised_at(function() shared.setmetatable(t, 42) end)
    lu.assertStrContains(err, at)
    err, at = H.raised_at(function() shared.update(t, "k", 42) end)
    lu.assertStrContains(err, at)
    lu.assertNil(next(shared.dump(t)))
end

function TestShared:test_what_cannot_cross_raises_naming_the_key_and_nothing_is_half_written()
    local t = shared.table { x = "before" }
    local co = coroutine.create(print)
    local cases = {
        { function() t.x = co end, "cannot store a coroutine (t.x)" },
        { function() t.x = io.stdout end, "cannot store a userdata (t.x)" },
        { function() t.x = print end, "cannot store a C function (t.x)" },
        { function() t.x = { a = 1, deep = { ok = 1, bad = co } } end, "cannot store a coroutine (t.x.deep.bad)" },
        { function() t.x = { [{}] = 1 } end, "cannot use a plain table as a key (use a shared table) (in t.x)" },
        { function() t.x = ffi.new("int", 1) end, "cannot store a cdata of type int (t.x)" },
    }
    for _, c in ipairs(cases) do
        local err, at = H.raised_at(c[1])
        lu.assertStrContains(err, at)
        lu.assertStrContains(err, c[2])
        lu.assertEquals(t.x, "before")
    end
    local cyclic = { a = { } }
    cyclic.a.back = cyclic
    local err, at = H.raised_at(function() t.x = cyclic end)
    lu.assertStrContains(err, at)
    lu.assertStrContains(err, "cannot store a table with a cycle (t.x.a.back)")
    lu.assertEquals(shared.dump(t), { x = "before" })
    -- a metatable with a value that cannot cross: refused, the old one kept
    shared.setmetatable(t, { __index = function() return "old" end })
    err, at = H.raised_at(function() shared.setmetatable(t, { __index = co }) end)
    lu.assertStrContains(err, at)
    lu.assertStrContains(err, "cannot store a coroutine (metatable.__index)")
    lu.assertEquals(t.nothing, "old")
end

function TestShared:test_any_depth()
    local deep = {}
    local node = deep
    for i = 1, 10000 do
        node.next = { i = i }
        node = node.next
    end
    local t = shared.table()
    t.list = deep
    local n, x = 0, t.list.next
    while x do
        n = n + 1
        lu.assertEquals(x.i, n)
        x = x.next
    end
    lu.assertEquals(n, 10000)
    local d = shared.dump(t)
    n, x = 0, d.list.next
    while x do n, x = n + 1, x.next end
    lu.assertEquals(n, 10000)
    node.next = { bad = coroutine.create(print) }
    local err = H.raised_at(function() t.other = deep end)
    lu.assertStrContains(err, "cannot store a coroutine (t.other.next.next.next.")
    lu.assertStrContains(err, ".next.bad)")
    lu.assertNil(t.other)
end

function TestShared:test_huge_string()
    local t = shared.table()
    local big = string.rep("0123456789abcdef", 2 ^ 22)   -- 64 MiB
    t.big = big
    lu.assertEquals(#t.big, #big)
    lu.assertTrue(t.big == big)
    t.big = nil
end

function TestShared:test_objects_are_freed_when_the_last_handle_goes()
    local ids = {}
    do
        local t = shared.table { sub = { deeper = {} } }
        local ch = channel.new()
        t.ch, t.sub.deeper[ch] = ch, true
        t.f = function() return 1 end
        shared.setmetatable(t, { __index = {} })
        ids = { id_of(t), id_of(t.sub), id_of(t.sub.deeper), ch:id(), id_of(shared.getmetatable(t)) }
    end
    for _, id in ipairs(ids) do lu.assertTrue(H.eventually_gone(id), "object " .. id .. " still alive") end
    -- a value or key removed releases its object
    local t, ch = shared.table(), channel.new()
    local id = ch:id()
    t[ch] = ch
    t[ch] = nil
    ch = nil
    lu.assertTrue(H.eventually_gone(id), "a removed key's channel is still alive")
    -- a shared table that crossed a channel: both handles
    local tid
    do
        local s, c = shared.table(), channel.new()
        tid = id_of(s)
        c:send(s)
        local s2 = c:recv(1)
        s2.x = 1
    end
    lu.assertTrue(H.eventually_gone(tid))
end

-- A state handle collected while this thread holds the store's lock (at an
-- allocation of a read) closes that state, whose shared tables' finalizers
-- then run on this thread: they must not wait for the lock.
function TestShared:test_a_state_closed_by_a_finalizer_during_a_read()
    local th = Thread.new(function(rounds)
        local shared = require "lj-async.shared"
        local state = require "lj-async.state"
        local t = shared.table { s = string.rep("x", 200) }
        for _ = 1, rounds do
            state.new(function()
                KEEP = require("lj-async.shared").table { x = 1 }
                return function() end
            end)
            for _ = 1, 5000 do local _ = t.s end
        end
        return true
    end, SANITIZED and 30 or 100)
    lu.assertEquals({ th:join(120) }, { true, true })
end

function TestShared:test_memory_settles()
    local function round()
        for _ = 1, 200 do
            local t = shared.table { a = { b = { c = string.rep("x", 100) } }, n = 1 }
            t.f = function(x) return x end
            t.n = t.n + 1
        end
        collectgarbage()
    end
    H.assert_memory_settles(lu, round, 20, 50, 8, "50 rounds of 200 shared tables")
end

H.run(lu)
