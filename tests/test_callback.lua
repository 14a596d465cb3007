-- The promises of the README's lj-async.callback section.
local lu = require "luaunit"
local ffi = require "ffi"
local CallbackFactory = require "lj-async.callback"
local H = require "tests.helpers"

ffi.cdef [[
typedef unsigned long lja_test_pthread_t;
int pthread_create(lja_test_pthread_t *t, const void *attr, void *(*fn)(void *), void *arg);
int pthread_join(lja_test_pthread_t t, void **ret);
struct lja_test_timespec { long sec, nsec; };
int clock_gettime(int clock, struct lja_test_timespec *ts);
int pthread_timedjoin_np(lja_test_pthread_t t, void **ret, const struct lja_test_timespec *abstime);
int64_t lja_atomic_load(const int64_t *p);
int64_t lja_atomic_add(int64_t *p, int64_t d);
]]
local S = require("lj-async.shim").C
local Thread = require "lj-async.thread"

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

-- fp(arg) run by a new pthread (no Lua below it): its result, or nil, "hung"
-- if it did not return within 5 s.
local function call_in_pthread(fp, arg)
    local tid = ffi.new("lja_test_pthread_t[1]")
    lu.assertEquals(ffi.C.pthread_create(tid, nil, fp, arg), 0)
    local deadline = ffi.new("struct lja_test_timespec")
    ffi.C.clock_gettime(0, deadline)   -- CLOCK_REALTIME, as the join wants
    deadline.sec = deadline.sec + 5
    local ret = ffi.new("void *[1]")
    if ffi.C.pthread_timedjoin_np(tid[0], ret, deadline) ~= 0 then return nil, "hung" end
    return ret[0]
end

-- A call's result as a plain Lua value that crosses states.
local function plain(v)
    local ffi = require "ffi"
    if type(v) ~= "cdata" then return v end
    if ffi.istype("const char *", v) and v ~= nil then return ffi.string(v) end
    return tonumber(v) or (v ~= nil and "a non-NULL pointer" or nil)
end

local COLOR_CDEF = "typedef enum { LJA_TEST_RED, LJA_TEST_GREEN } lja_test_color_t;"

-- fp(arg) called from the Lua of an lj-async thread: its result (plain), or
-- nil, "hung" if the call did not return within 5 s.
local function call_in_thread(ctype, fp, arg)
    local t = Thread.new(function(ctype, fp, arg, plain, cdef)
        local ffi = require "ffi"
        ffi.cdef(cdef)
        return plain(ffi.cast(ctype, fp)(arg))
    end, ctype, ffi.cast("void *", fp), arg, plain, COLOR_CDEF)
    local ok, r = t:join(5)
    if ok == false then return nil, "hung" end
    lu.assertTrue(ok, r)
    return r
end

-- f(...) must raise an error containing `part` that blames the line of the
-- call (in this file), not a frame above or below it.
local function assert_blames_caller(part, f, ...)
    local args, line = { n = select("#", ...), ... }, nil
    local ok, err = pcall(function()
        line = debug.getinfo(1, "l").currentline; f(unpack(args, 1, args.n))
    end)
    lu.assertFalse(ok, "no error")
    lu.assertStrContains(err, part)
    lu.assertStrContains(err, "test_callback.lua:" .. line .. ":")
end

-- Seconds that cb:free() took.
local function free_time(cb)
    local t0 = H.now()
    cb:free()
    return H.now() - t0
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

-- Each callback returns a value that its C return type cannot take when
-- called with 1, and a good one (the last column, as seen by the caller)
-- when called with 2.
local BAD_RESULTS = {
    { "int (*)(int)", function(n) if n == 1 then return print end return n end,
      0, "cannot convert 'function' to 'int'", 2 },
    { "int (*)(int)", function(n) if n == 1 then return "12" end return n end,
      0, "cannot convert 'string' to 'int'", 2 },
    { "int (*)(int)", function(n) if n == 2 then return n end end,   -- no value
      0, "cannot convert 'nil' to 'int'", 2 },
    { "double (*)(int)", function(n) if n == 1 then return "1.5" end return n / 4 end,
      0, "cannot convert 'string' to 'double'", 0.5 },
    { "float (*)(int)", function(n) if n == 1 then return nil end return n / 4 end,
      0, "cannot convert 'nil' to 'float'", 0.5 },
    { "bool (*)(int)", function(n) if n == 1 then return {} end return n == 2 end,
      false, "cannot convert 'table' to 'bool'", true },
    { "int8_t (*)(int)", function(n) if n == 1 then return coroutine.create(print) end return -n end,
      0, "cannot convert 'thread' to 'char'", -2 },
    { "uint64_t (*)(int)", function(n) if n == 1 then return "x" end return 2 ^ 40 end,
      0, "cannot convert 'string' to 'uint64_t'", 2 ^ 40 },
    { "uint8_t (*)(int)", function(n) if n == 1 then return {} end return 255 end,
      0, "cannot convert 'table' to 'unsigned char'", 255 },
    { "int16_t (*)(int)", function(n) if n == 1 then return "7" end return -300 end,
      0, "cannot convert 'string' to 'short'", -300 },
    { "uint32_t (*)(int)", function(n) if n == 1 then return print end return 2 ^ 32 - 1 end,
      0, "cannot convert 'function' to 'unsigned int'", 2 ^ 32 - 1 },
    { "int64_t (*)(int)", function(n) if n ~= 1 then return -2 ^ 40 end end,
      0, "cannot convert 'nil' to 'int64_t'", -2 ^ 40 },
    { "const char *(*)(int)", function(n) if n == 1 then return 5 end return "two" end,
      nil, "cannot convert 'number' to 'const char *'", "two" },
    { "int *(*)(int)", function(n) if n == 1 then return require("ffi").new("double[1]") end end,
      nil, "cannot convert 'double [1]' to 'int *'", nil },
    { "lja_test_color_t (*)(int)", function(n) if n == 1 then return "BLUE" end return "LJA_TEST_GREEN" end,
      0, "cannot convert 'string' to 'enum", 1 },
}

function TestCallback:test_results_the_return_type_cannot_take()
    for _, case in ipairs(BAD_RESULTS) do
        local ctype, fn, zero, reason, good = unpack(case, 1, 5)
        local cb = CallbackFactory(ctype, COLOR_CDEF)(fn)
        local fp = cb:funcptr()
        local ok, r = pcall(fp, 1)
        lu.assertTrue(ok, ctype .. ": the call raised " .. tostring(r))
        lu.assertEquals(plain(r), zero, ctype)
        local err = cb:last_error()
        lu.assertStrContains(err or "nil", "lj-async: the callback", false, ctype)
        lu.assertStrContains(err or "nil", reason, false, ctype)
        -- the state was given back: the next call, from another thread, works
        lu.assertEquals(call_in_thread(ctype, fp, 2), good, ctype)
        lu.assertTrue(free_time(cb) < 2, ctype .. ": free() waited")
    end
end

function TestCallback:test_results_convert_as_in_luajit()
    -- The same values through an lj-async callback and a plain ffi.cast one.
    local cases = {
        { "int8_t (*)(int)", { 300, -129, 1.9, true, false } },
        { "int (*)(int)", { 2 ^ 40, -1.5, 0 / 0, 3LL } },
        { "uint64_t (*)(int)", { -1, 2 ^ 63, 5ULL } },
        { "bool (*)(int)", { 0, 2, true, false } },
        { "float (*)(int)", { 1e300, 0.1, 7LL } },
        { "lja_test_color_t (*)(int)", { "LJA_TEST_GREEN", 0 } },
    }
    for _, case in ipairs(cases) do
        local ctype, values = case[1], case[2]
        local cb = CallbackFactory(ctype, COLOR_CDEF)(function(values)
            return function(i) return values[i] end
        end, { setup = true, args = { values } })
        local plain_cb = ffi.cast(ctype, function(i) return values[i] end)
        for i = 1, #values do
            local want, got = plain(plain_cb(i)), plain(cb:funcptr()(i))
            lu.assertTrue(want == got or want ~= want and got ~= got,
                ("%s from %s: %s, not %s"):format(ctype, tostring(values[i]), tostring(got), tostring(want)))
        end
        lu.assertNil(cb:last_error())
        plain_cb:free()
        cb:free()
    end
end

function TestCallback:test_void_callbacks_ignore_their_results()
    local cb = CallbackFactory("void (*)(int)")(function() return {}, print end)
    cb:funcptr()(1)
    lu.assertNil(cb:last_error())
    lu.assertTrue(free_time(cb) < 2)
end

function TestCallback:test_bad_results_from_c_threads()
    -- A thread that only C made (nothing of Lua below it) gets NULL back.
    local cb = CallbackFactory("void *(*)(void *)")(function(p)
        local ffi = require "ffi"
        local n = tonumber(ffi.cast("intptr_t", p))
        if n == 1 then return {} elseif n == 2 then return "text" elseif n == 3 then return print end
        return p
    end)
    local fp = cb:funcptr()
    for n, what in ipairs({ "table", "string", "function" }) do
        local r, hung = call_in_pthread(fp, ffi.cast("void *", n))
        lu.assertNil(hung, what)
        lu.assertTrue(r == nil, what .. ": not NULL")
        lu.assertStrContains(cb:last_error() or "nil", "cannot convert '" .. what .. "' to 'void *'")
    end
    lu.assertEquals(tonumber(ffi.cast("intptr_t", call_in_pthread(fp, ffi.cast("void *", 42)))), 42)
    lu.assertTrue(free_time(cb) < 2)
end

function TestCallback:test_arguments_up_to_16()
    -- LuaJIT's own callbacks take at most 16 arguments.
    local function ctype(n)
        local args = {}
        for i = 1, n do args[i] = i % 2 == 0 and "double" or "int" end
        return "double (*)(" .. table.concat(args, ", ") .. ")"
    end
    local cb = CallbackFactory(ctype(16))("local s = 0 for i = 1, select('#', ...) do s = s + select(i, ...) end return s")
    local args = {}
    for i = 1, 16 do args[i] = i end
    lu.assertEquals(cb:funcptr()(unpack(args)), 16 * 17 / 2)
    cb:free()
    for _, n in ipairs({ 17, 32, 33 }) do
        assert_blames_caller("has " .. n .. " arguments; LuaJIT's callbacks take at most 16",
            CallbackFactory, ctype(n))
    end
end

function TestCallback:test_errors_blame_the_caller()
    local T = CallbackFactory("int (*)(int)")
    local f = function(n) return n end
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    assert_blames_caller("must be a string", CallbackFactory, 42)
    assert_blames_caller("cdef must be a string", CallbackFactory, "int (*)(int)", 42)
    assert_blames_caller("bad callback type", CallbackFactory, "lja_no_such_t (*)(int)")
    assert_blames_caller("not a function pointer", CallbackFactory, "int")
    assert_blames_caller("variadic", CallbackFactory, "int (*)(int, ...)")
    assert_blames_caller("by value", CallbackFactory, "int (*)(struct { int a; })")
    assert_blames_caller("cannot return a reference", CallbackFactory, "int &(*)(int)")
    assert_blames_caller("bad cdef", CallbackFactory, "lja_test_bad_t (*)(int)", "typedef garbage lja_test_bad_t;")
    assert_blames_caller("expected a function", T, 42)
    assert_blames_caller("cannot send a coroutine (upvalue 'up')", T, function() return up end)
    assert_blames_caller("'=' expected", T, "x y")
    assert_blames_caller("options must be a table", T, f, 42)
    assert_blames_caller("states must be", T, f, { states = 0 })
    assert_blames_caller("args must be a list", T, f, { setup = true, args = 5 })
    assert_blames_caller("cannot send a coroutine", T, f, { setup = true, args = { coroutine.create(f) } })
    assert_blames_caller("setup function returned number", T, function() return 1 end, { setup = true })
    assert_blames_caller("setup failed", T, function() error("setup failed") end, { setup = true })
    local cb = T(f)
    cb:free()
    assert_blames_caller("freed", cb.funcptr, cb)
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
