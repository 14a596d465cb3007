-- The promises of the README's lj-async.sync section, and live objects across states (README: Values that cross states).
local lu = require "luaunit"
local ffi = require "ffi"
local sync = require "lj-async.sync"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

local alive, eventually_gone = H.object_alive, H.eventually_gone

local function join_all(threads)
    local out = {}
    for i, t in ipairs(threads) do
        local r = { t:join(60) }
        lu.assertTrue(r[1], r[2])
        out[i] = r[2]
    end
    return out
end

TestSync = {}

function TestSync:test_mutex_basics()
    local m = sync.mutex()
    lu.assertTrue(m:lock())
    lu.assertFalse(m:trylock())
    local t0 = H.now()
    lu.assertFalse(m:lock(0.05))
    lu.assertTrue(H.now() - t0 >= 0.045)
    m:unlock()
    lu.assertTrue(m:trylock())
    m:unlock()
    lu.assertErrorMsgContains("not locked", m.unlock, m)
    lu.assertErrorMsgContains("timeout must be a number", m.lock, m, "x")
end

function TestSync:test_mutex_excludes_across_threads()
    -- A plain (non-atomic) counter in shared memory, guarded by the mutex.
    local m = sync.mutex()
    local cell = ffi.new("int64_t[1]")
    local threads = {}
    for i = 1, 4 do
        threads[i] = Thread.new(function(m, p)
            local ffi = require "ffi"
            p = ffi.cast("int64_t *", p)
            for _ = 1, 20000 do
                m:lock()
                p[0] = p[0] + 1
                m:unlock()
            end
            return true
        end, m, ffi.cast("void *", cell))
    end
    join_all(threads)
    lu.assertEquals(tonumber(cell[0]), 80000)
end

function TestSync:test_cond_wait_signal_broadcast()
    local m, c = sync.mutex(), sync.cond()
    m:lock()
    local t0 = H.now()
    lu.assertFalse(c:wait(m, 0.05))      -- timeout, and m is locked again
    lu.assertTrue(H.now() - t0 >= 0.045)
    lu.assertFalse(m:trylock())
    m:unlock()
    lu.assertErrorMsgContains("not locked", c.wait, c, m, 0)
    lu.assertErrorMsgContains("needs a lj-async mutex", c.wait, c, {}, 0)

    -- four waiters; one broadcast releases them all
    local ready, go = sync.atomic(0), sync.atomic(0)
    local threads = {}
    for i = 1, 4 do
        threads[i] = Thread.new(function(m, c, ready, go)
            m:lock()
            ready:add(1)
            while go:get() == 0 do
                if not c:wait(m, 10) then m:unlock() return "timed out" end
            end
            m:unlock()
            return "woken"
        end, m, c, ready, go)
    end
    local deadline = H.now() + 10
    while ready:get() < 4 and H.now() < deadline do Thread.sleep(0.001) end
    m:lock()
    go:set(1)
    c:broadcast()
    m:unlock()
    lu.assertEquals(join_all(threads), { "woken", "woken", "woken", "woken" })
end

function TestSync:test_cond_producer_consumer()
    local m, c = sync.mutex(), sync.cond()
    local box = ffi.new("int64_t[2]")   -- [0]: value, [1]: full flag
    local consumer = Thread.new(function(m, c, p)
        local ffi = require "ffi"
        p = ffi.cast("int64_t *", p)
        local sum = 0
        for _ = 1, 1000 do
            m:lock()
            while p[1] == 0 do assert(c:wait(m, 10), "consumer starved") end
            sum = sum + tonumber(p[0])
            p[1] = 0
            c:signal()
            m:unlock()
        end
        return sum
    end, m, c, ffi.cast("void *", box))
    for i = 1, 1000 do
        m:lock()
        while box[1] ~= 0 do assert(c:wait(m, 10), "producer starved") end
        box[0], box[1] = i, 1
        c:signal()
        m:unlock()
    end
    lu.assertEquals({ consumer:join(30) }, { true, 500500 })
end

function TestSync:test_semaphore()
    local s = sync.semaphore(2)
    lu.assertTrue(s:wait())
    lu.assertTrue(s:wait(0))
    lu.assertFalse(s:wait(0))
    local t0 = H.now()
    lu.assertFalse(s:wait(0.05))
    lu.assertTrue(H.now() - t0 >= 0.045)
    s:post(3)
    for _ = 1, 3 do lu.assertTrue(s:wait(0)) end
    lu.assertFalse(s:wait(0))
    -- posts from another thread release waits here
    local t = Thread.new(function(s) for _ = 1, 100 do s:post() end return true end, s)
    for _ = 1, 100 do lu.assertTrue(s:wait(10)) end
    lu.assertTrue((t:join(10)))
end

function TestSync:test_atomic()
    local a = sync.atomic(5)
    lu.assertTrue(a:get() == 5)
    lu.assertTrue(a:add(3) == 8)
    lu.assertTrue(a:cas(8, -1))
    lu.assertFalse(a:cas(8, 0))
    a:set(2 ^ 40)
    lu.assertTrue(a:get() == 2LL ^ 40)
    a:set(0)
    local threads = {}
    for i = 1, 2 do
        threads[i] = Thread.new(function(a)
            for _ = 1, 100000 do a:add(1) end
            return true
        end, a)
    end
    -- a JIT-compiled polling loop sees the value change (no hoisted load)
    local deadline = H.now() + 30
    while a:get() < 200000 and H.now() < deadline do end
    join_all(threads)
    lu.assertTrue(a:get() == 200000)
end

-- Every bad argument raises an error that says what is wrong with which
-- argument and blames the caller's line; nothing is truncated, wrapped or
-- reported as out of memory.
function TestSync:test_bad_arguments_blame_the_caller()
    local m, c, s, a = sync.mutex(), sync.cond(), sync.semaphore(), sync.atomic()
    local cases = {
        { function() sync.semaphore(-1) end, "sync.semaphore: the initial count must be an integer from 0 to 2^53, got -1" },
        { function() sync.semaphore(2 ^ 60) end, "sync.semaphore: the initial count must be an integer from 0 to 2^53, got 1.15" },
        { function() sync.semaphore(2 ^ 63) end, "sync.semaphore: the initial count must be an integer from 0 to 2^53" },
        { function() sync.semaphore(1.5) end, "sync.semaphore: the initial count must be an integer from 0 to 2^53, got 1.5" },
        { function() sync.semaphore("3") end, "sync.semaphore: the initial count must be an integer from 0 to 2^53, got string" },
        { function() s:post(0) end, "semaphore:post: the count must be an integer from 1 to 2^53, got 0" },
        { function() s:post(2 ^ 63) end, "semaphore:post: the count must be an integer from 1 to 2^53" },
        { function() sync.atomic("x") end, "sync.atomic: the initial value must be an integer, got string" },
        { function() sync.atomic(1.5) end, "sync.atomic: the initial value must be an integer from -2^63 to 2^63-1, got 1.5" },
        { function() sync.atomic(2 ^ 63) end, "sync.atomic: the initial value must be an integer from -2^63 to 2^63-1" },
        { function() sync.atomic(0 / 0) end, "sync.atomic: the initial value must be an integer from -2^63 to 2^63-1" },
        { function() sync.atomic(2 ^ 64 - 1ULL) end, "sync.atomic: the initial value must be an integer, got 18446744073709551615ULL" },
        { function() a:set(0.5) end, "atomic:set: the value must be an integer from -2^63 to 2^63-1, got 0.5" },
        { function() a:add({}) end, "atomic:add: the increment must be an integer, got table" },
        { function() a:cas(1.5, 2) end, "atomic:cas: the expected value must be an integer" },
        { function() a:cas(1, "2") end, "atomic:cas: the new value must be an integer, got string" },
        { function() m:lock("x") end, "the timeout must be a number of seconds or nil" },
        { function() m:unlock() end, "unlock of a mutex that is not locked" },
        { function() c:wait({}) end, "cond:wait needs a lj-async mutex" },
        { function() c:wait(m) end, "cond:wait with a mutex that is not locked" },
        { function() s:wait(0 / 0) end, "the timeout must be a number of seconds or nil" },
    }
    for _, case in ipairs(cases) do
        local err, here = H.raised_at(case[1])
        lu.assertStrContains(err, here .. " lj-async: " .. case[2])
    end
    lu.assertEquals(a:get(), 0LL)   -- nothing was set by a refused call
    -- the limits themselves are fine; int64 cdata are taken as they are
    lu.assertTrue(sync.atomic(-2 ^ 63):get() == -2LL ^ 63)
    lu.assertTrue(sync.atomic(2LL ^ 62):add(2LL ^ 62 - 1) == 0x7fffffffffffffffLL)
    lu.assertTrue(sync.semaphore(2 ^ 53):wait(0))
end

-- Every handle's methods, called with a dot (no self) or on another kind's
-- handle, raise naming the method at the caller's line; the shim never sees
-- a NULL or foreign pointer (a dot call used to crash the process).
function TestSync:test_methods_check_self()
    local channel, state, Pool = require "lj-async.channel", require "lj-async.state", require "lj-async.pool"
    local pool = Pool.new(1)
    local st = state.new(function() return function() end end)
    local handles = {
        mutex = { sync.mutex(), { "lock", "trylock", "unlock", "id" } },
        cond = { sync.cond(), { "wait", "signal", "broadcast", "id" } },
        semaphore = { sync.semaphore(1), { "wait", "post", "id" } },
        atomic = { sync.atomic(1), { "get", "set", "add", "cas", "id" } },
        channel = { channel.new(), { "send", "send_timeout", "recv", "try_recv", "close", "len", "id" } },
        state = { st, { "call", "call_wait", "id", "name", "close", "interrupt" } },
        pool = { pool, { "submit", "submit_async", "active_workers", "shutdown", "id" } },
    }
    local other = sync.atomic(0)
    for kind, h in pairs(handles) do
        local obj, methods = h[1], h[2]
        for _, name in ipairs(methods) do
            lu.assertEquals(type(obj[name]), "function", kind .. ":" .. name)
            for _, bad in ipairs { false, 42, kind == "atomic" and sync.mutex() or other } do
                local self = bad or nil
                local err, here = H.raised_at(function() obj[name](self) end)
                lu.assertStrContains(err, here .. " lj-async: " .. kind .. ":" .. name .. " needs a "
                    .. kind .. " as self, got " .. type(self))
            end
        end
    end
    lu.assertEquals(handles.atomic[1]:get(), 1LL)   -- still works with a colon
    lu.assertTrue(pool:shutdown())
    st:close()
end

-- Posts stop at the largest count instead of wrapping to a negative one.
function TestSync:test_semaphore_count_saturates()
    local s = sync.semaphore(2 ^ 53)
    for _ = 1, 1100 do s:post(2 ^ 53) end   -- more than 2^63 in all
    lu.assertTrue(s:wait(0))
end

function TestSync:test_objects_live_until_the_last_handle()
    local m = sync.mutex()
    local id = m:id()
    -- the thread holds its own handle a while after this state dropped its own
    local t = Thread.new(function(m)
        require("lj-async.thread").sleep(0.2)
        return m:trylock()
    end, m)
    m = nil
    collectgarbage()
    collectgarbage()
    lu.assertTrue(alive(id))
    lu.assertEquals({ t:join(10) }, { true, true })
    t:destroy()
    -- the thread's state was closed (it loaded the FFI): its handle is gone
    lu.assertTrue(eventually_gone(id))
end

function TestSync:test_handles_held_by_several_states()
    local a = sync.atomic(0)
    local id = a:id()
    local threads = {}
    for i = 1, 3 do
        threads[i] = Thread.new(function(a, i)
            require("lj-async.thread").sleep(0.05 * i)
            return tonumber(a:add(1))
        end, a, i)
    end
    a = nil
    collectgarbage()
    local results = join_all(threads)
    table.sort(results)
    lu.assertEquals(results, { 1, 2, 3 })
    for _, t in ipairs(threads) do t:destroy() end
    lu.assertTrue(eventually_gone(id))
end

-- Starts waiters on c, one after another, each queued before the next
-- starts (it sends its name once it holds m; the next locks m only after
-- the cond wait unlocked it, and queues after it).  Each waits with its
-- timeout and returns its name and what c:wait returned.
local function queue_waiters(m, c, timeouts)
    local channel = require "lj-async.channel"
    local inside, threads = channel.new(), {}
    for i, timeout in ipairs(timeouts) do
        threads[i] = Thread.new(function(m, c, inside, i, timeout)
            m:lock()
            inside:send(i)
            local ok = c:wait(m, timeout)
            m:unlock()
            return i, ok
        end, m, c, inside, i, timeout)
        lu.assertEquals(inside:recv(10), i)
    end
    m:lock()   -- the last one is queued once it unlocked m
    m:unlock()
    return threads
end

-- A waiter that times out, or is cancelled, in the middle of the FIFO
-- leaves it; the signals after it still go to the others in their order.
function TestSync:test_cond_fifo_survives_a_timeout_and_a_cancel_in_the_middle()
    local m, c = sync.mutex(), sync.cond()
    local t = queue_waiters(m, c, { 20, 0.2, 20, 20, 20 })
    lu.assertEquals({ t[2]:join(10) }, { true, 2, false })   -- timed out in the middle
    lu.assertTrue(t[4]:pause(5))
    lu.assertTrue(t[4]:cancel(5))                               -- cancelled in the middle, paused
    lu.assertEquals({ t[4]:join(0) }, { nil, "cancelled" })
    m:unlock()   -- its wait locked m again before the cancel was raised (README)
    for _, i in ipairs { 1, 3, 5 } do
        c:signal()
        lu.assertEquals({ t[i]:join(10) }, { true, i, true }, "signal for waiter " .. i)
    end
    m:lock()   -- the mutex was given back by everyone
    m:unlock()
end

-- A paused wait takes nothing (README lj-async.thread): a signal given while
-- the first waiter is paused wakes the next one; the paused one, resumed,
-- waits on for a later signal.
function TestSync:test_cond_signal_skips_a_paused_waiter()
    local m, c = sync.mutex(), sync.cond()
    local t = queue_waiters(m, c, { 20, 20 })
    lu.assertTrue(t[1]:pause(5))
    c:signal()
    lu.assertEquals({ t[2]:join(5) }, { true, 2, true })
    t[1]:resume()
    lu.assertEquals({ t[1]:join(0.2) }, { false, "timeout" })   -- the signal was not its
    c:signal()
    lu.assertEquals({ t[1]:join(10) }, { true, 1, true })
end

os.exit(lu.LuaUnit.run())
