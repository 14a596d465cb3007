-- The promises of the README's lj-async.channel section, with objects crossing inside messages.
local lu = require "luaunit"
local ffi = require "ffi"
local channel = require "lj-async.channel"
local sync = require "lj-async.sync"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

local alive, eventually_gone = H.object_alive, H.eventually_gone

TestChannel = {}

function TestChannel:test_messages_of_several_values()
    local ch = channel.new()
    ch:send(1, "two", { three = 3 }, nil)
    ch:send(false)
    lu.assertEquals(ch:len(), 2)
    lu.assertEquals(select("#", ch:recv()), 4 - 1 + 1)
    lu.assertEquals({ ch:recv() }, { false })
    lu.assertEquals({ ch:recv(0) }, { nil, "timeout" })
    lu.assertEquals({ ch:try_recv() }, { nil, "timeout" })
end

-- Every bad argument raises an error that says what is wrong and blames
-- the caller's line.
function TestChannel:test_errors_blame_the_caller()
    local ch, closed = channel.new(), channel.new()
    closed:close()
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    local cases = {
        { function() channel.get(99999) end, "no channel with id 99999" },
        { function() channel.get("x") end, "a channel id must be a number, got string" },
        { function() channel.new(0) end, "channel.new: the capacity must be an integer from 1 to 2^53 (nil: unbounded), got 0" },
        { function() channel.new(2 ^ 63) end, "channel.new: the capacity must be an integer from 1 to 2^53 (nil: unbounded), got 9.22" },
        { function() channel.new(1.5) end, "channel.new: the capacity must be an integer from 1 to 2^53 (nil: unbounded), got 1.5" },
        { function() channel.new("8") end, "channel.new: the capacity must be an integer from 1 to 2^53 (nil: unbounded), got string" },
        { function() ch:send(nil, 1) end, "a message's first value must not be nil" },
        { function() ch:send() end, "a message's first value must not be nil" },
        { function() ch:send(1, { f = function() return up end }) end, "cannot send a coroutine (argument 2.f, upvalue 'up')" },
        { function() ch:send_timeout(1, function() return up end) end, "cannot send a coroutine (argument 1, upvalue 'up')" },
        { function() ch:send_timeout("1", 1) end, "the timeout must be a number of seconds or nil" },
        { function() ch:recv("1") end, "the timeout must be a number of seconds or nil" },
        { function() closed:send(1) end, "send on a closed channel" },
        { function() channel.select({}) end, "select takes a non-empty list of channels" },
        { function() channel.select({ ch, {} }) end, "select: item 2 is not a channel" },
    }
    for _, case in ipairs(cases) do
        local err, here = H.raised_at(case[1])
        lu.assertStrContains(err, here .. " lj-async: " .. case[2])
    end
    lu.assertEquals(ch:len(), 0)   -- nothing was sent
end

-- An id is an exact integer: anything else raises, never a neighbour's channel.
function TestChannel:test_ids_must_be_integers()
    local ch = channel.new()
    local id = ch:id()
    lu.assertTrue(channel.get(id) == ch)
    for _, bad in ipairs { id + 0.5, id - 0.5, 0 / 0, 1 / 0, -1 / 0, -id, 0, 2 ^ 53 + 2, 2 ^ 63 } do
        local err, here = H.raised_at(function() channel.get(bad) end)
        lu.assertStrContains(err, here .. " lj-async: a channel id must be an integer from 1 to 2^53, got ")
    end
end

function TestChannel:test_values_that_cannot_cross_are_not_sent()
    local ch = channel.new()
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    lu.assertErrorMsgContains("(argument 2.f, upvalue 'up')", ch.send, ch, 1, { f = function() return up end })
    lu.assertEquals(ch:len(), 0)
    ch:send(function(x) return x * 2 end)
    lu.assertEquals(ch:recv()(21), 42)
end

function TestChannel:test_bounded_send_blocks_and_times_out()
    local ch = channel.new(2)
    lu.assertTrue(ch:send_timeout(0, "a"))
    lu.assertTrue(ch:send_timeout(0, "b"))
    lu.assertEquals({ ch:send_timeout(0, "c") }, { nil, "timeout" })
    local t0 = H.now()
    lu.assertEquals({ ch:send_timeout(0.05, "c") }, { nil, "timeout" })
    lu.assertTrue(H.now() - t0 >= 0.045)
    -- a blocked send goes on once a receiver makes room
    local t = Thread.new(function(ch)
        require("lj-async.thread").sleep(0.05)
        return ch:recv(), ch:recv(), ch:recv()
    end, ch)
    ch:send("c")
    lu.assertEquals({ t:join(10) }, { true, "a", "b", "c" })
end

function TestChannel:test_recv_timeout()
    local ch = channel.new()
    local t0 = H.now()
    lu.assertEquals({ ch:recv(0.05) }, { nil, "timeout" })
    local waited = H.now() - t0
    lu.assertTrue(waited >= 0.045 and waited < 1, waited)
end

function TestChannel:test_close_drains_then_reports_closed()
    local ch = channel.new()
    ch:send(1)
    ch:send(2)
    ch:close()
    lu.assertErrorMsgContains("closed channel", ch.send, ch, 3)
    lu.assertEquals({ ch:send_timeout(1, 3) }, { nil, "closed" })
    lu.assertEquals(ch:recv(), 1)
    lu.assertEquals(ch:recv(), 2)
    lu.assertEquals({ ch:recv() }, { nil, "closed" })
    lu.assertEquals({ ch:recv(0) }, { nil, "closed" })
end

function TestChannel:test_close_wakes_waiting_threads()
    local empty, full = channel.new(), channel.new(1)
    full:send("x")
    local receivers, senders = {}, {}
    for i = 1, 3 do
        receivers[i] = Thread.new(function(ch) return ch:recv(30) end, empty)
        senders[i] = Thread.new(function(ch) return ch:send_timeout(30, "y") end, full)
    end
    Thread.sleep(0.1)
    local t0 = H.now()
    empty:close()
    full:close()
    for i = 1, 3 do
        lu.assertEquals({ receivers[i]:join(10) }, { true, nil, "closed" })
        lu.assertEquals({ senders[i]:join(10) }, { true, nil, "closed" })
    end
    lu.assertTrue(H.now() - t0 < 5)
    lu.assertEquals(full:recv(), "x")   -- what was queued still drains
end

function TestChannel:test_ids_and_get()
    local ch = channel.new()
    local same = channel.get(ch:id())
    same:send("hi")
    lu.assertEquals(ch:recv(), "hi")
    lu.assertErrorMsgContains("no channel with id", channel.get, 1e9)
    local t = Thread.new(function(id)
        local channel = require "lj-async.channel"
        channel.get(id):send("from thread")
        return true
    end, ch:id())
    lu.assertTrue((t:join(10)))
    lu.assertEquals(ch:recv(1), "from thread")
end

function TestChannel:test_select()
    local a, b, c = channel.new(), channel.new(), channel.new()
    lu.assertEquals({ channel.select({ a, b }, 0) }, { nil, "timeout" })
    b:send("b1", 2)
    local ch, v, w = channel.select({ a, b })
    lu.assertTrue(ch == b)
    lu.assertEquals({ v, w }, { "b1", 2 })
    -- woken by a send from another thread
    local t = Thread.new(function(c)
        require("lj-async.thread").sleep(0.05)
        c:send("late")
        return true
    end, c)
    local t0 = H.now()
    ch, v = channel.select({ a, b, c }, 10)
    lu.assertTrue(ch == c)
    lu.assertEquals(v, "late")
    lu.assertTrue(H.now() - t0 < 5)
    t:join(5)
    a:close()
    ch, v, w = channel.select({ b, a }, 1)
    lu.assertTrue(ch == a)
    lu.assertEquals({ v, w }, { nil, "closed" })
    lu.assertErrorMsgContains("non-empty list", channel.select, {})
    lu.assertErrorMsgContains("not a channel", channel.select, { a, {} })
end

function TestChannel:test_objects_inside_messages()
    local ch, inner = channel.new(), channel.new()
    local m = sync.mutex()
    ch:send({ reply = inner, lock = m })
    local t = Thread.new(function(ch)
        local msg = ch:recv(10)
        assert(msg.lock:trylock())
        msg.reply:send("got it")
        return true
    end, ch)
    lu.assertTrue((t:join(10)))
    lu.assertEquals(inner:recv(5), "got it")
    lu.assertFalse(m:trylock())   -- the thread locked the same mutex
    m:unlock()
end

function TestChannel:test_undelivered_messages_release_their_objects()
    local m = sync.mutex()
    local id = m:id()
    local ch = channel.new()
    ch:send(m)
    m = nil
    collectgarbage()
    lu.assertTrue(alive(id))    -- the queued message holds it
    ch = nil
    collectgarbage()
    collectgarbage()
    lu.assertTrue(eventually_gone(id))
end

function TestChannel:test_channel_gc_across_states()
    local ch = channel.new()
    local id = ch:id()
    local threads = {}
    for i = 1, 3 do
        threads[i] = Thread.new(function(ch, i)
            require("lj-async.thread").sleep(0.03 * i)
            ch:send(i)
            return true
        end, ch, i)
    end
    local got = {}
    for _ = 1, 3 do got[#got + 1] = ch:recv(10) end
    table.sort(got)
    lu.assertEquals(got, { 1, 2, 3 })
    for _, t in ipairs(threads) do t:join(10); t:destroy() end
    ch = nil
    lu.assertTrue(eventually_gone(id))
end

-- 4 producers, 4 consumers, 200,000 messages through a bounded channel:
-- every message counted, none twice, each producer's order kept.
function TestChannel:test_stress_mpmc_exact_counts_and_order()
    local PRODUCERS, CONSUMERS, PER = 4, 4, 50000
    local ch, results = channel.new(64), channel.new()
    local consumers = {}
    for c = 1, CONSUMERS do
        consumers[c] = Thread.new(function(ch, results, producers)
            local last, count, sums, bad = {}, 0, {}, 0
            for p = 1, producers do last[p], sums[p] = 0, 0 end
            while true do
                local p, seq = ch:recv(60)
                if p == nil then break end
                if seq <= last[p] then bad = bad + 1 end   -- order per producer
                last[p] = seq
                sums[p] = sums[p] + seq
                count = count + 1
            end
            results:send(count, sums, bad)
            return true
        end, ch, results, PRODUCERS)
    end
    local producers = {}
    for p = 1, PRODUCERS do
        producers[p] = Thread.new(function(ch, p, n)
            for seq = 1, n do ch:send(p, seq) end
            return true
        end, ch, p, PER)
    end
    for p = 1, PRODUCERS do lu.assertEquals({ producers[p]:join(120) }, { true, true }) end
    ch:close()
    local total, bad, sums = 0, 0, {}
    for p = 1, PRODUCERS do sums[p] = 0 end
    for _ = 1, CONSUMERS do
        local count, s, b = results:recv(60)
        lu.assertNotNil(count, "a consumer never reported")
        total, bad = total + count, bad + b
        for p = 1, PRODUCERS do sums[p] = sums[p] + s[p] end
    end
    for c = 1, CONSUMERS do lu.assertTrue((consumers[c]:join(60))) end
    lu.assertEquals(total, PRODUCERS * PER)      -- nothing lost, nothing doubled
    lu.assertEquals(bad, 0)                      -- each producer's order kept
    for p = 1, PRODUCERS do lu.assertEquals(sums[p], PER * (PER + 1) / 2) end
end

-- A message of one number takes a path of its own (no string.buffer): every
-- double crosses bit for bit, by recv and by select, bounded or unbounded.
function TestChannel:test_one_number_crosses_exactly()
    local values = { 0, -0.0, 1 / 0, -1 / 0, 0 / 0, 2 ^ 53, -2 ^ 63, 0.1, math.pi, 5e-324 }
    local function same(a, b)
        if a ~= a then return b ~= b end
        return a == b and 1 / a == 1 / b
    end
    for _, capacity in ipairs { 32, false } do
        local ch = channel.new(capacity or nil)
        for _, v in ipairs(values) do ch:send(v) end
        for _, v in ipairs(values) do lu.assertTrue(ch:send_timeout(0, v)) end
        for i, v in ipairs(values) do
            local got = ch:recv(1)
            lu.assertTrue(same(got, v), ("recv %d: %s, got %s"):format(i, tostring(v), tostring(got)))
        end
        for i, v in ipairs(values) do
            local from, got, extra = channel.select({ ch }, 1)
            lu.assertTrue(from == ch and extra == nil and same(got, v), ("select %d: %s, got %s"):format(i, tostring(v), tostring(got)))
        end
    end
end

-- lja_channel_recv (ltask's system channel uses it) gives every message as an
-- lja_msg, also one that a ring held inline.
function TestChannel:test_c_recv_gives_every_message_as_a_block()
    ffi.cdef [[
int lja_channel_recv(lja_channel *ch, lja_msg **msg, double timeout);
const char *lja_msg_data(lja_msg *msg, size_t *len);
void lja_msg_free(lja_msg *msg);
]]
    local C, transfer = require("lj-async.shim").C, require "lj-async.transfer"
    local msg, len = ffi.new("lja_msg *[1]"), ffi.new("size_t[1]")
    for _, capacity in ipairs { 8, false } do
        local ch = channel.new(capacity or nil)
        ch:send("small", 1)
        ch:send(("x"):rep(100))
        for _, want in ipairs { { "small", 1 }, { ("x"):rep(100) } } do
            lu.assertEquals(C.lja_channel_recv(ch, msg, 1), C.LJA_OK)
            local got = transfer.pack(transfer.decode(C.lja_msg_data(msg[0], len), len[0]))
            C.lja_msg_free(msg[0])
            lu.assertEquals({ unpack(got, 2, got.n) }, want)
        end
        lu.assertEquals(C.lja_channel_recv(ch, msg, 0), C.LJA_ETIMEDOUT)
    end
end

-- 8 senders and 8 receivers (half of them in select) on one channel: every
-- message whose send succeeded is received once, in its sender's order.
-- Messages take each path: a number, small values (inline in a ring's
-- slot), a long string and a channel (allocated).  With close_early the
-- channel closes while the senders still send, each until told "closed".
local function stress(lu, capacity, close_early)
    local SENDERS, RECEIVERS, PER = 8, 8, 20000
    local ch, idle, results = channel.new(capacity), channel.new(), channel.new()
    local receivers, senders = {}, {}
    for r = 1, RECEIVERS do
        receivers[r] = Thread.new(function(ch, idle, results, senders, use_select)
            local channel = require "lj-async.channel"
            local last, counts, sums, bad = {}, {}, {}, 0
            for p = 1, senders do last[p], counts[p], sums[p] = 0, 0, 0 end
            while true do
                local from, p, seq, extra
                if use_select then
                    from, p, seq, extra = channel.select({ idle, ch }, 60)
                    assert(from == ch, "select: no message in 60 s")
                else
                    p, seq, extra = ch:recv(60)
                end
                if p == nil then
                    assert(seq == "closed", seq)
                    break
                end
                if seq == nil then p, seq = math.floor(p / 2 ^ 24), p % 2 ^ 24 end
                if extra ~= nil and extra ~= ("x"):rep(100) and extra:id() ~= idle:id() then bad = bad + 1 end
                if seq <= last[p] then bad = bad + 1 end   -- order per sender
                last[p], counts[p], sums[p] = seq, counts[p] + 1, sums[p] + seq
            end
            results:send(counts, sums, bad)
            return true
        end, ch, idle, results, SENDERS, r % 2 == 0)
    end
    for p = 1, SENDERS do
        senders[p] = Thread.new(function(ch, idle, p, n)
            local long, sent = ("x"):rep(100), 0
            for seq = 1, n do
                local k, ok, err = seq % 4
                if k == 0 then ok, err = ch:send_timeout(60, p * 2 ^ 24 + seq)
                elseif k == 1 then ok, err = ch:send_timeout(60, p, seq)
                elseif k == 2 then ok, err = ch:send_timeout(60, p, seq, long)
                else ok, err = ch:send_timeout(60, p, seq, idle) end
                if not ok then
                    assert(close_early and err == "closed", err)
                    break
                end
                sent = seq
            end
            return sent
        end, ch, idle, p, close_early and 2 ^ 23 or PER)
    end
    local sent = {}
    if close_early then
        Thread.sleep(0.1)
        ch:close()
    end
    for p = 1, SENDERS do
        local ok, n = senders[p]:join(120)
        lu.assertTrue(ok, n)
        sent[p] = n
    end
    ch:close()
    local counts, sums, bad = {}, {}, 0
    for p = 1, SENDERS do counts[p], sums[p] = 0, 0 end
    for _ = 1, RECEIVERS do
        local c, s, b = results:recv(120)
        lu.assertNotNil(c, "a receiver never reported")
        bad = bad + b
        for p = 1, SENDERS do counts[p], sums[p] = counts[p] + c[p], sums[p] + s[p] end
    end
    for r = 1, RECEIVERS do lu.assertEquals({ receivers[r]:join(60) }, { true, true }) end
    lu.assertEquals(bad, 0)                            -- each sender's order kept, values intact
    for p = 1, SENDERS do
        lu.assertEquals(counts[p], sent[p])            -- nothing lost, nothing doubled
        lu.assertEquals(sums[p], sent[p] * (sent[p] + 1) / 2)
    end
    return sent
end

function TestChannel:test_stress_8x8_bounded()
    stress(lu, 64)
    stress(lu, 2)   -- the smallest ring: every slot reused all the time
end

function TestChannel:test_stress_8x8_unbounded()
    stress(lu, nil)
end

function TestChannel:test_stress_8x8_close_races_senders()
    for _, capacity in ipairs { 64, false } do
        local sent = stress(lu, capacity or nil, true)
        for p = 1, #sent do lu.assertTrue(sent[p] < 2 ^ 23, "the close came after sender " .. p .. " finished") end
    end
end

-- The edges of the queue design (README "lj-async.channel"): capacities up to
-- 16384 are whole rings, above that a ring that grows up to the capacity;
-- messages up to 48 encoded bytes without objects live in a slot.  At each capacity a channel fills
-- exactly to it, refuses one more, and gives back every message in order:
-- strings whose bytes straddle the slot size, one that starts with the
-- one-number message's tag byte (1), numbers, and a message with an object.
function TestChannel:test_capacity_and_slot_edges()
    local obj = channel.new()
    local function message(i)
        local k = i % 5
        if k == 0 then return i end
        if k == 1 then return "\1" .. string.rep("n", i % 12) end
        if k == 2 then return string.rep("s", 40 + i % 16) end
        if k == 3 then return { i, obj } end
        return i, string.rep("m", 30 + i % 30)
    end
    for _, cap in ipairs { 1, 2, 3, 16384, 16385 } do
        local ch = channel.new(cap)
        for i = 1, cap do lu.assertTrue(ch:send_timeout(0, message(i)), cap .. ": send " .. i) end
        lu.assertEquals(ch:len(), cap)
        lu.assertEquals({ ch:send_timeout(0, "one more") }, { nil, "timeout" }, cap)
        for i = 1, cap do
            local want, got = { message(i) }, { ch:recv(0) }
            if type(want[1]) == "table" then
                lu.assertEquals(got[1][1], i)
                lu.assertEquals(got[1][2]:id(), obj:id())
            else
                lu.assertEquals(got, want, cap .. ": message " .. i)
            end
        end
        lu.assertEquals({ ch:recv(0) }, { nil, "timeout" })
        ch:close()
    end
end

-- Waits adapt (README "Benchmarks"): a ping-pong whose two threads share one
-- core with a busy thread parks instead of yielding that core in rounds (each
-- yield handed the busy thread a time slice: some 450 round trips/s here,
-- against ~17k with the waits that park, ~3.8k under TSan).  The bound sits
-- between the collapse and the TSan build, so a loaded machine does not fail it.
function TestChannel:test_ping_pong_beside_a_busy_thread_on_one_core()
    pcall(ffi.cdef, "int sched_getcpu(void);")
    local cpu = ffi.C.sched_getcpu()
    local stop, ping, pong = channel.new(), channel.new(), channel.new()
    local busy = Thread.spawn({ cpus = { cpu } }, function(stop)
        local x = 0
        while stop:len() == 0 do for i = 1, 100000 do x = x + i % 7 end end
        return x
    end, stop)
    local ponger = Thread.spawn({ cpus = { cpu } }, function(ping, pong)
        for v in function() return ping:recv(30) end do pong:send(v + 1) end
        return true
    end, ping, pong)
    local pinger = Thread.spawn({ cpus = { cpu } }, function(ping, pong)
        local H = require "tests.helpers"
        local t0, n, v = H.now(), 0, 0
        while H.now() - t0 < 0.5 do
            ping:send(v)
            v = pong:recv(30)
            n = n + 1
        end
        ping:close()
        return n / (H.now() - t0)
    end, ping, pong)
    local ok, rate = pinger:join(60)
    stop:send(true)
    lu.assertTrue(ok, rate)
    lu.assertTrue((busy:join(30)))
    lu.assertTrue((ponger:join(30)))
    lu.assertTrue(rate >= 1500, ("%.0f round trips/s"):format(rate))
end

-- An unbounded channel is a ring too (README "lj-async.channel"): a ping-pong
-- through two unbounded channels runs about as fast as through two rings of
-- two slots, measured alternately in the same second (the best of ten
-- tries each; a two-lock list did a fifth of the rings' rate).  On a machine
-- too busy for a ring's ping-pong to reach a million (both then swing from
-- 20k to 2M), the two cannot be told apart, and the test skips.
function TestChannel:test_unbounded_ping_pong_as_fast_as_a_ring()
    local function rate(capacity)
        local ping, pong = channel.new(capacity), channel.new(capacity)
        local ponger = Thread.new(function(ping, pong)
            for v in function() return ping:recv(30) end do pong:send(v + 1) end
            return true
        end, ping, pong)
        local t0, n, v = H.now(), 0, 0
        while H.now() - t0 < 0.02 do
            for _ = 1, 100 do
                ping:send(v)
                v = pong:recv(30)
            end
            n = n + 100
        end
        local r = n / (H.now() - t0)
        ping:close()
        lu.assertEquals({ ponger:join(30) }, { true, true })
        return r
    end
    local ring, unbounded = 0, 0
    for _ = 1, 10 do
        ring, unbounded = math.max(ring, rate(2)), math.max(unbounded, rate(nil))
    end
    local says = ("unbounded %.0f, ring %.0f round trips/s"):format(unbounded, ring)
    lu.skipIf(ring < 1e6, "too busy to compare: " .. says)
    lu.assertTrue(unbounded >= 0.4 * ring, says)
end

-- Unbounded channels grow their rings while senders burst into them and
-- receivers and len() read them (both ends wait out each growth, and a
-- growth waits for the sends and receives under way): 30 fresh channels one
-- after another, some 10 growths each, every message once, in its sender's
-- order, and len() always between 0 and the number sent.
function TestChannel:test_growth_races_receivers_and_len()
    local SENDERS, RECEIVERS, ROUNDS, PER = 4, 3, 30, 1000
    local chs, done, results, stop = {}, channel.new(), channel.new(), channel.new()
    for k = 1, ROUNDS do chs[k] = channel.new() end
    local threads = {}
    for r = 1, RECEIVERS do
        threads[r] = Thread.new(function(chs, results, senders)
            local count, bad = 0, 0
            for k = 1, #chs do
                local last = {}
                for p = 1, senders do last[p] = 0 end
                for p, seq in function() return chs[k]:recv(60) end do
                    if seq <= last[p] then bad = bad + 1 end
                    last[p], count = seq, count + 1
                end
            end
            results:send(count, bad)
            return true
        end, chs, results, SENDERS)
    end
    local watcher = Thread.new(function(chs, stop, most)
        local bad, k = 0, 0
        while stop:len() == 0 do
            k = k % #chs + 1
            local n = chs[k]:len()
            if n < 0 or n > most then bad = bad + 1 end
        end
        return bad
    end, chs, stop, SENDERS * PER)
    for p = 1, SENDERS do
        threads[RECEIVERS + p] = Thread.new(function(chs, done, p, n)
            for k = 1, #chs do
                for seq = 1, n do chs[k]:send(p, seq) end
                done:send(k)
            end
            return true
        end, chs, done, p, PER)
    end
    local finished = {}
    for _ = 1, SENDERS * ROUNDS do   -- a channel closes once its senders are through
        local k = done:recv(60)
        lu.assertNotNil(k, "a sender stalled")
        finished[k] = (finished[k] or 0) + 1
        if finished[k] == SENDERS then chs[k]:close() end
    end
    for p = 1, SENDERS do lu.assertEquals({ threads[RECEIVERS + p]:join(60) }, { true, true }) end
    stop:send(true)
    lu.assertEquals({ watcher:join(60) }, { true, 0 })
    local total = 0
    for _ = 1, RECEIVERS do
        local count, bad = results:recv(60)
        lu.assertNotNil(count, "a receiver never reported")
        lu.assertEquals(bad, 0)
        total = total + count
    end
    for r = 1, RECEIVERS do lu.assertEquals({ threads[r]:join(60) }, { true, true }) end
    lu.assertEquals(total, SENDERS * PER * ROUNDS)
end

os.exit(lu.LuaUnit.run())
