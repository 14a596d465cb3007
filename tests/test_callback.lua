-- SPEC section 3: lj-async.callback.
local lu = require "luaunit"
local ffi = require "ffi"
local CallbackFactory = require "lj-async.callback"
local H = require "tests.helpers"

ffi.cdef [[
typedef unsigned long lja_test_pthread_t;
int pthread_create(lja_test_pthread_t *t, const void *attr, void *(*fn)(void *), void *arg);
int pthread_join(lja_test_pthread_t t, void **ret);
int64_t lja_atomic_load(const int64_t *p);
int64_t lja_atomic_add(int64_t *p, int64_t d);
]]
local S = require("lj-async.shim").C

-- Start n pthreads running fp(arg); returns a function that joins them.
local function start_pthreads(n, fp, arg)
    local tids = ffi.new("lja_test_pthread_t[?]", n)
    for i = 0, n - 1 do
        lu.assertEquals(ffi.C.pthread_create(tids + i, nil, fp, arg), 0)
    end
    return function()
        for i = 0, n - 1 do ffi.C.pthread_join(tids[i], nil) end
    end
end

TestCallback = {}

function TestCallback:test_seed_example()
    local MyCallback_t = CallbackFactory("int(*)(int)")
    local cb = MyCallback_t(function(n) return n + 1 end)
    local fp = cb:funcptr()
    lu.assertTrue(ffi.istype("int(*)(int)", fp))
    lu.assertEquals(fp(122), 123)
    cb:free()
end

function TestCallback:test_source_and_bytecode()
    local T = CallbackFactory("double(*)(double, double)")
    local a = T("local x, y = ... return x * y")
    local b = T(string.dump(function(x, y) return x - y end))
    lu.assertEquals(a:funcptr()(3, 4), 12)
    lu.assertEquals(b:funcptr()(3, 4), -1)
end

function TestCallback:test_factory_errors()
    lu.assertErrorMsgContains("must be a string", CallbackFactory, ffi.typeof("void(*)(int)"))
    lu.assertErrorMsgContains("not a function pointer", CallbackFactory, "int")
    lu.assertErrorMsgContains("bad callback type", CallbackFactory, "no_such_type(*)(int)")
    lu.assertErrorMsgContains("variadic", CallbackFactory, "int(*)(int, ...)")
    lu.assertErrorMsgContains("by value", CallbackFactory, "int(*)(struct { int a; })")
    local up = 1
    local T = CallbackFactory("void(*)(void)")
    lu.assertErrorMsgContains("upvalue 'up'", T, function() return up end)
    lu.assertErrorMsgContains("states must be", T, function() end, { states = 0 })
    lu.assertErrorMsgContains("setup function returned number",
        T, function() return 1 end, { setup = true })
end

function TestCallback:test_cdef_typedefs()
    local T = CallbackFactory("lja_test_len_t (*)(const lja_test_pair *)",
        "typedef struct { int a, b; } lja_test_pair; typedef size_t lja_test_len_t;")
    local cb = T(function(p) return p.a + p.b end)
    local pair = ffi.new("lja_test_pair", 20, 22)
    lu.assertEquals(tonumber(cb:funcptr()(pair)), 42)
end

function TestCallback:test_scalar_signatures()
    local T = CallbackFactory("double(*)(int8_t, uint16_t, int64_t, float, bool, const char *)")
    local cb = T(function(a, b, c, d, e, s)
        local ffi = require "ffi"
        return a + b + tonumber(c) + d + (e and 1000 or 0) + #ffi.string(s)
    end)
    lu.assertEquals(cb:funcptr()(-1, 65535, 2LL ^ 40, 0.5, true, "four"), -1 + 65535 + 2 ^ 40 + 0.5 + 1000 + 4)
    local P = CallbackFactory("void *(*)(void *)")
    local p = P(function(x) return x end)
    local cell = ffi.new("int[1]")
    lu.assertEquals(ffi.cast("intptr_t", p:funcptr()(cell)), ffi.cast("intptr_t", cell))
end

function TestCallback:test_errors_return_zero_and_last_error()
    local T = CallbackFactory("int(*)(int)")
    local cb = T(function(n)
        if n < 0 then error("negative input") end
        return n
    end)
    lu.assertNil(cb:last_error())
    lu.assertEquals(cb:funcptr()(5), 5)
    lu.assertEquals(cb:funcptr()(-1), 0)
    local err = cb:last_error()
    lu.assertStrContains(err, "negative input")
    lu.assertStrContains(err, "stack traceback")
    lu.assertEquals(cb:funcptr()(6), 6)   -- the callback goes on
    local P = CallbackFactory("const char *(*)(void)")
    local p = P(function() error("x") end)
    lu.assertTrue(p:funcptr()() == nil)
end

function TestCallback:test_setup_with_args()
    local T = CallbackFactory("int(*)(int)")
    local cb = T(function(base, opts)
        return function(n) return base + n * opts.scale end
    end, { setup = true, args = { 100, { scale = 3 } } })
    lu.assertEquals(cb:funcptr()(2), 106)
end

function TestCallback:test_setup_objects_reach_every_state()
    -- each of the states gets a live handle of its own to the same channel
    local channel = require "lj-async.channel"
    local ch = channel.new()
    local T = CallbackFactory("int(*)(int)")
    local cb = T(function(ch)
        ch:send("ready")
        return function(n) ch:send(n) return n end
    end, { setup = true, args = { ch }, states = 3 })
    for _ = 1, 3 do lu.assertEquals(ch:recv(5), "ready") end
    lu.assertEquals(cb:funcptr()(7), 7)
    lu.assertEquals(ch:recv(5), 7)
    local id = ch:id()
    cb:free()
    ch = nil
    lu.assertTrue(H.eventually_gone(id))   -- the states' handles went with them
end

function TestCallback:test_free_idempotent_and_gc()
    local T = CallbackFactory("int(*)(int)")
    local cb = T(function(n) return n end)
    cb:free()
    cb:free()
    lu.assertErrorMsgContains("freed", cb.funcptr, cb)
    for _ = 1, 200 do T(function(n) return n end) end
    collectgarbage()
    collectgarbage()
    lu.assertEquals(T(function(n) return -n end):funcptr()(3), -3)
end

function TestCallback:test_collected_callbacks_free_their_states()
    local T = CallbackFactory("int(*)(int)")
    local function round()
        for _ = 1, 100 do
            local cb = T(function(n) return n end, { states = 2 })
            assert(cb:funcptr()(1) == 1)
        end
        collectgarbage()
        collectgarbage()
    end
    -- 1600 states of ~100 KiB each would be ~160 MiB if they leaked
    H.assert_memory_settles(lu, round, 2, 8, 16, "800 callbacks")
end

function TestCallback:test_foreign_pthreads_serialized()
    -- Four pthreads, 5000 calls each, into one state while this state runs
    -- a JIT loop: the non-atomic increment inside is exact only if the
    -- calls never overlap.
    local T = CallbackFactory("void *(*)(void *)")
    local cb = T(function(c)
        local ffi = require "ffi"
        c = ffi.cast("int64_t *", c)
        for _ = 1, 5000 do
            local v = c[0]
            c[0] = v + 1
        end
    end)
    local counter = ffi.new("int64_t[1]")
    local join = start_pthreads(4, cb:funcptr(), counter)
    local spins = H.spin(0.2)
    join()
    lu.assertEquals(tonumber(counter[0]), 4 * 5000)
    lu.assertTrue(spins > 0)
    cb:free()
end

function TestCallback:test_states_run_in_parallel()
    -- With states = 2, two threads are inside at once: each call waits
    -- (bounded) for a partner.
    local flags = ffi.new("int64_t[3]")   -- inside, overlap seen, calls
    local T = CallbackFactory("void *(*)(void *)")
    local cb = T(function(p)
        local ffi = require "ffi"
        ffi.cdef "int64_t lja_atomic_add(int64_t *p, int64_t d); int64_t lja_atomic_load(const int64_t *p); void lja_sleep(double seconds);"
        local S = require("lj-async.shim").C
        local f = ffi.cast("int64_t *", p)
        return function()
            S.lja_atomic_add(f, 1)
            for _ = 1, 2000 do
                if S.lja_atomic_load(f) >= 2 then break end
                S.lja_sleep(0.001)
            end
            if S.lja_atomic_load(f) >= 2 then S.lja_atomic_add(f + 1, 1) end
            S.lja_sleep(0.01)
            S.lja_atomic_add(f, -1)
            S.lja_atomic_add(f + 2, 1)
        end
    end, { setup = true, args = { ffi.cast("void *", flags) }, states = 2 })
    local join = start_pthreads(2, cb:funcptr(), nil)
    join()
    lu.assertEquals(tonumber(S.lja_atomic_load(flags + 2)), 2)
    lu.assertTrue(S.lja_atomic_load(flags + 1) >= 1, "no two calls overlapped")
    cb:free()
end

os.exit(lu.LuaUnit.run())
