-- Root service of tests/test_ltask.lua: runs the test named by its second
-- argument and sends "ok", results (or "error", message) to the host
-- through the channel it was given first.
local ltask = require "ltask"
local out, test = ...

local T = {}

local function errmsg(f, ...)
    local ok, err = pcall(f, ...)
    assert(not ok, "expected an error")
    return tostring(err)
end

-- Waits (in centiseconds slices) until f() is true.
local function until_true(f, max_cs)
    for _ = 1, max_cs or 500 do
        if f() then return true end
        ltask.sleep(1)
    end
    return false
end

function T.api()
    local r = {}
    local e = ltask.spawn("echo", 1, nil, "x")
    r.args = { n = select("#", ltask.call(e, "args")), ltask.call(e, "args") }
    r.echo = { ltask.call(e, "echo", "a", { k = { 1, 2 } }, 3.5) }
    r.service_args = { ltask.call(ltask.spawn_service { name = "echo", args = { "p", 2 } }, "args") }
    r.remote_error = errmsg(ltask.call, e, "fail", "boom")
    r.unknown = errmsg(ltask.call, e, "nope")
    r.timeout = { ltask.call_timeout(5, e, "sleep", 100, "late") }
    r.in_time = { ltask.call_timeout(200, e, "echo", 7) }
    r.after_timeout = ltask.call(e, "echo", "still serving")
    r.self = ltask.self()
    r.child_self = ltask.call(e, "self")
    r.child = e
    r.now = ltask.now()

    -- a handler that sleeps does not hold up the next request in its batch
    local order = {}
    ltask.fork(function() ltask.call(e, "sleep", 30, "s") order[#order + 1] = "sleep" end)
    ltask.fork(function() ltask.call(e, "echo", "e") order[#order + 1] = "echo" end)
    until_true(function() return #order == 2 end)
    r.order = order

    local forked = {}
    ltask.fork(function(a, b) forked[#forked + 1] = a .. b end, "f", "g")
    ltask.sleep(1)
    r.forked = forked[1]

    local got
    ltask.fork(function() got = { ltask.wait("tok") } end)
    ltask.sleep(1)
    r.wakeup = ltask.wakeup("tok", 42, "x")
    r.wakeup_none = ltask.wakeup("nobody")
    ltask.sleep(1)
    r.waited = got

    local k = ltask.spawn("echo")
    r.kill = ltask.kill(k)
    r.after_kill = errmsg(ltask.call, k, "echo", 1)
    r.send_to_dead = ltask.send(k, "echo", 1)
    local q = ltask.spawn("echo")
    ltask.send(q, "quit")
    until_true(function() return not pcall(ltask.call, q, "echo") end)
    r.after_quit = errmsg(ltask.call, q, "echo", 1)

    local base = 40   -- functions with upvalues cross in calls, replies and sends
    local add = function(x) return base + x end
    r.closure = ltask.call(e, "echo", add)(2)
    ltask.send(e, "apply", add, 3)
    r.applied = ltask.call(e, "applied")
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    r.upvalue = errmsg(ltask.call, e, "echo", function() return up end)
    r.bad_result = errmsg(ltask.call, e, "function_result")
    r.missing = errmsg(ltask.spawn, "no_such_service")
    r.bad_init = errmsg(ltask.spawn, "bad_init")
    r.bad_addr = errmsg(ltask.call, "x", "echo")
    out:send("ok", r)
end

function T.names()
    local r = {}
    local queried
    ltask.fork(function() queried = ltask.queryservice("peer") end)
    local helpers = {}
    for i = 1, 4 do helpers[i] = ltask.spawn("echo") end
    local addrs, done = {}, 0
    for i = 1, 4 do
        ltask.fork(function()
            addrs[i] = ltask.call(helpers[i], "unique", "peer")
            done = done + 1
        end)
    end
    addrs[5] = ltask.uniqueservice("peer")
    until_true(function() return done == 4 and queried end)
    r.addrs, r.queried = addrs, queried
    r.query_now = ltask.queryservice("peer")
    out:send("ok", r)
end

function T.flood(n, inbox)
    local e = ltask.spawn_service { name = "echo", inbox = inbox }
    for i = 1, n do ltask.send(e, "add", i) end
    out:send("ok", { ltask.call(e, "totals") })
end

function T.many(n, fanout, rounds)
    local peers = {}
    for i = 1, n do peers[i] = ltask.spawn("peer") end
    for i = 1, n do
        local targets = {}
        for j = 1, fanout do targets[j] = peers[(i + j - 1) % n + 1] end
        ltask.call(peers[i], "fire", targets, rounds, i)
    end
    local bad = {}
    for j = 1, n do
        local expect_sum = 0
        for d = 1, fanout do
            local i = (j - d - 1) % n + 1
            for r = 1, rounds do expect_sum = expect_sum + i * 1000 + r end
        end
        local received, sum = ltask.call(peers[j], "totals")
        if received ~= fanout * rounds or sum ~= expect_sum then
            bad[#bad + 1] = ("peer %d: %d messages, sum %d (expected %d, %d)"):format(j, received, sum,
                fanout * rounds, expect_sum)
        end
    end
    out:send("ok", bad)
end

function T.kill_during_call()
    local e = ltask.spawn("echo")
    local err
    local t0 = ltask.now()
    ltask.fork(function() err = errmsg(ltask.call, e, "sleep", 1000) end)
    ltask.sleep(5)
    ltask.kill(e)
    until_true(function() return err end)
    out:send("ok", { err = err, elapsed = ltask.now() - t0 })
end

function T.send_error()
    local e = ltask.spawn("echo")
    ltask.send(e, "send_fail", "xyz")
    out:send("ok", { ltask.call(e, "echo", "alive") })
end

function T.pending_timers()
    ltask.spawn("idle", out, 100000)   -- its timeout would fire in 1,000 s
    out:send("ok", true)
end

function T.exclusive()
    local b = ltask.spawn_service { name = "blocker", exclusive = true }
    local e = ltask.spawn("echo")
    local blocked_done
    local t0 = ltask.now()
    ltask.fork(function() blocked_done = ltask.call(b, "block", 400) and ltask.now() - t0 end)
    ltask.sleep(1)
    local n = 0
    for i = 1, 20 do n = n + ltask.call(e, "echo", 1) end
    local echoes_done = ltask.now() - t0
    until_true(function() return blocked_done end)
    out:send("ok", { n = n, echoes = echoes_done, blocked = blocked_done })
end

function T.busy()
    local busy, e = ltask.spawn("echo"), ltask.spawn("echo")
    local t0 = ltask.now()
    local spun
    ltask.fork(function() spun = ltask.call(busy, "spin", 1.0) and ltask.now() - t0 end)
    for _ = 1, 50 do ltask.call(e, "echo", 1) end
    local echoes = ltask.now() - t0
    until_true(function() return spun end)
    out:send("ok", { echoes = echoes, spun = spun })
end

function T.sleep_idle(cs)
    ltask.sleep(cs)
    out:send("ok", true)
end

function T.log()
    print("hello from root", 1)
    ltask.log("logged", nil, true)
    out:send("ok", ltask.self())
end

-- Requests and sends that reach a service while its file still runs wait,
-- and are served by the handlers the file returns.
function T.early_requests()
    local r = {}
    local relay = ltask.spawn("echo")
    r.addr = ltask.spawn("slow_start", relay, 20)
    r.served = until_true(function() local k = ltask.call(relay, "kept")[1] return k and k.result end, 300)
    r.kept = ltask.call(relay, "kept")
    r.notes = ltask.call(r.addr, "notes")
    -- the same on a thread of its own
    local xrelay = ltask.spawn("echo")
    local x = ltask.spawn_service { name = "slow_start", args = { xrelay, 20 }, exclusive = true }
    r.exclusive_served = until_true(function() local k = ltask.call(xrelay, "kept")[1] return k and k.result end, 300)
    r.exclusive = { ltask.call(xrelay, "kept")[1].result, ltask.call(x, "notes") }
    local p = ltask.spawn("parent", 20)
    r.parent = until_true(function()
        r.parent_notes, r.greeting = ltask.call(p, "report")
        return r.greeting
    end, 300)
    out:send("ok", r)
end

-- A service killed while its file runs: its spawner and what waits for it
-- get "dead".
function T.kill_during_start()
    local relay = ltask.spawn("echo")
    local r = {}
    ltask.fork(function() r.err = errmsg(ltask.spawn, "slow_start", relay, 100000) end)
    local k
    until_true(function() k = ltask.call(relay, "kept")[1] return k end, 300)
    ltask.kill(k.addr)
    r.done = until_true(function()
        r.held = ltask.call(relay, "kept")[1].result
        return r.err and r.held
    end, 300)
    out:send("ok", r)
end

-- queryservice of a name whose uniqueservice failed raises, for those
-- waiting then and those asking later; a later uniqueservice tries again.
function T.failed_unique()
    local r = {}
    ltask.fork(function() r.waiting = errmsg(ltask.queryservice, "flaky") end)
    ltask.sleep(1)
    r.unique = errmsg(ltask.uniqueservice, "flaky", true)
    ltask.fork(function() r.later = errmsg(ltask.queryservice, "flaky") end)
    r.raised = until_true(function() return r.waiting and r.later end, 300)
    r.retry = ltask.uniqueservice("flaky", false)
    r.echo = ltask.call(r.retry, "echo", 5)
    r.query = ltask.queryservice("flaky")
    -- a service killed while it spawns a uniqueservice: the name fails
    local relay, claimer = ltask.spawn("echo"), ltask.spawn("echo")
    ltask.send(claimer, "unique", "slow_start", relay, 100000)
    until_true(function() return ltask.call(relay, "kept")[1] end, 300)
    ltask.kill(claimer)
    ltask.fork(function() r.orphan = errmsg(ltask.queryservice, "slow_start") end)
    r.orphan_raised = until_true(function() return r.orphan end, 300)
    out:send("ok", r)
end

-- Spawning past max_services names the limit, at the caller's line; a
-- service that quits makes room.
function T.max_services()
    local r = {}
    local a = ltask.spawn("echo")
    ltask.spawn("echo")
    r.line = debug.getinfo(1, "l").currentline + 1
    r.err = errmsg(function() local addr = ltask.spawn("echo") return addr end)
    ltask.kill(a)
    r.room = until_true(function() return pcall(ltask.spawn, "echo") end, 300)
    out:send("ok", r)
end

-- Bad arguments and failures raise at the caller's line.
function T.user_errors()
    local e = ltask.spawn("echo")
    local dead = ltask.spawn("echo")
    ltask.kill(dead)
    until_true(function() return not pcall(ltask.call, dead, "echo") end)
    local cases = {
        function() ltask.spawn("no_such_service") end,
        function() ltask.spawn(42) end,
        function() ltask.spawn("bad_init") end,
        function() ltask.spawn_service("echo") end,
        function() ltask.spawn_service { name = "echo", inbox = 0 } end,
        function() ltask.spawn_service { name = "echo", args = 1 } end,
        function() ltask.spawn_service { name = 1 } end,
        function() ltask.call("x", "echo") end,
        function() ltask.call(1.5, "echo") end,
        function() ltask.call(dead, "echo") end,
        function() ltask.call(e, "echo", coroutine.create(print)) end,
        function() ltask.call_timeout("x", e, "echo") end,
        function() ltask.call_timeout(10, nil, "echo") end,
        function() ltask.send({}, "echo") end,
        function() ltask.sleep("x") end,
        function() ltask.timeout(1, nil) end,
        function() ltask.fork(nil) end,
        function() ltask.kill("x") end,
        function() ltask.queryservice(1) end,
        function() ltask.uniqueservice(nil) end,
        function() ltask.uniqueservice("bad_init") end,
        function() ltask.queryservice("bad_init") end,
    }
    local bad = {}
    for _, f in ipairs(cases) do
        local line = debug.getinfo(f, "S").linedefined
        local ok, err = pcall(f)
        local at = not ok and tostring(err):match("^tests/ltask/t_root%.lua:(%d+): l[%a-]+: ")
        if at ~= tostring(line) then
            bad[#bad + 1] = line .. ": " .. tostring(err)
        end
    end
    out:send("ok", bad)
end

-- lj-async.asio in exclusive services: an echo server that answers calls
-- as it serves, a client mixing asio's and ltask's waits.
function T.asio()
    local r = {}
    local srv = ltask.spawn_service { name = "asio_echo", exclusive = true }
    local port = ltask.call(srv, "port")
    r.port = port
    local cli = ltask.spawn_service { name = "asio_client", exclusive = true }
    r.talk = ltask.call(cli, "talk", port, srv, 30)
    r.served = ltask.call(srv, "served")
    r.run_raises = ltask.call(srv, "run_raises")
    r.wait_in_accept = { ltask.call(srv, "wait_in_accept") }
    out:send("ok", r)
end

-- A killed (how = "kill") or quitting asio service's sockets close (it
-- quits in a handler, or in a light thread: how = "quit_in_light_thread").
function T.asio_end(how)
    local srv = ltask.spawn_service { name = "asio_echo", exclusive = true }
    local port = ltask.call(srv, "port")
    local cli = ltask.spawn_service { name = "asio_client", exclusive = true }
    local r = { held = ltask.call(cli, "hold", port) }
    if how == "kill" then
        r.killed = ltask.kill(srv)
    elseif how == "quit_in_light_thread" then
        r.quit = ltask.call(cli, "say_quit")
    else
        r.quit = ltask.call(srv, "quit")
    end
    r.after = ltask.call(cli, "after", port)
    out:send("ok", r)
end

-- A service with no handlers lives while its server is open.
function T.asio_bare()
    local ch = require("lj-async.channel").new()
    local b = ltask.spawn_service { name = "asio_bare", exclusive = true, args = { ch } }
    local port = ch:recv(0)
    ltask.sleep(20)
    local r = { alive = errmsg(ltask.call, b, "x") }
    local cli = ltask.spawn_service { name = "asio_client", exclusive = true }
    r.echo = ltask.call(cli, "hold", port)
    r.ended = until_true(function() return errmsg(ltask.call, b, "x"):find("dead") end)
    out:send("ok", r)
end

-- The host talks to an asio service with a client of its own, then says
-- so on `back`.
function T.asio_host(back)
    local srv = ltask.spawn_service { name = "asio_echo", exclusive = true }
    out:send("port", ltask.call(srv, "port"))
    local done = until_true(function() return back:recv(0) end, 2000)
    out:send("ok", { done = done, served = ltask.call(srv, "served") })
end

-- n timers and log lines while a fork calls a service that sleeps n times:
-- the threads park and wake often (the system thread on its channel, the
-- workers on the run queue), and the system thread's heap holds two timers
-- at a time.
function T.sleeps(n)
    local e = ltask.spawn("echo")
    local calls = 0
    ltask.fork(function()
        for _ = 1, n do calls = calls + ltask.call(e, "sleep", 1, 1) end
    end)
    for i = 1, n do
        ltask.log("sleep", i)
        ltask.sleep(i % 2)
    end
    until_true(function() return calls == n end)
    out:send("ok", calls)
end

-- n calls to an echo service: keeps the worker loop hot.
function T.calls(n)
    local e = ltask.spawn("echo")
    local sum = 0
    for i = 1, n do sum = sum + ltask.call(e, "echo", i) end
    out:send("ok", sum)
end

-- n echo services that stay idle: the resident memory each takes (KB),
-- and the seconds their spawns took.  After a quit (`after_quit`), fresh
-- states take the snapshot that recycling needs (ltask/init.lua).
function T.idle_memory(n, after_quit)
    local rss_mib = require("tests.helpers").rss_mib
    if after_quit then
        local q = ltask.spawn("echo")
        ltask.send(q, "quit")
        assert(until_true(function() return not ltask.send(q, "add", 1) end, 300), "the service did not quit")
    end
    local list = { ltask.spawn("echo") }   -- what the first spawn loads once
    collectgarbage()
    local before, t0 = rss_mib(), ltask.now()
    for i = 1, n do list[i] = ltask.spawn("echo") end
    local elapsed = ltask.now() - t0
    collectgarbage()
    out:send("ok", { kb = (rss_mib() - before) * 1024 / n, elapsed = elapsed })
end

-- What a service's state has loaded as it starts, takes a first call, then
-- a second (README "ltask": an idle service loads neither the encoder nor
-- the shim's search).
function T.lazy_loads()
    local e = ltask.spawn("echo")
    local function loaded(name) return ltask.call(e, "loaded", name) end
    local r = { encoder_first = loaded("lj-async.transfer_encode"), encoder_then = loaded("lj-async.transfer_encode"),
        search = loaded("lj-async.shim_find"), slow = loaded("lj-async.transfer_slow") }
    r.echo = { ltask.call(e, "echo", 1, "two", { 3 }) }
    out:send("ok", r)
end

-- A send waiting for room in a full inbox returns false once the receiver
-- is killed, instead of waiting forever.  The receiver's file sleeps: what
-- is sent to it is held, counted against its inbox of 4, until the kill.
function T.room_then_killed()
    local relay = ltask.spawn("echo")
    ltask.fork(function()
        pcall(ltask.spawn_service, { name = "slow_start", inbox = 4, args = { relay, 100000 } })
    end)
    local k
    until_true(function() k = ltask.call(relay, "kept")[1] return k end, 300)
    local r = { sent = 0 }
    ltask.fork(function()
        for i = 1, 100 do
            if not ltask.send(k.addr, "note", i) then
                r.result = false
                return
            end
            r.sent = r.sent + 1
        end
        r.result = true
    end)
    until_true(function() return r.sent >= 2 end, 300)
    ltask.sleep(5)
    r.waited = r.result == nil
    ltask.kill(k.addr)
    until_true(function() return r.result ~= nil end, 300)
    out:send("ok", r)
end

-- A kill overtakes what is queued: the receiver quits after the batch it
-- is in, not after the posts already taken off its inbox (its batch is
-- `batch`, each post 5 ms of work).
function T.kill_overtakes(n)
    local e = ltask.spawn("echo")
    ltask.call(e, "echo")
    for _ = 1, n do ltask.send(e, "spin", 0.005) end
    ltask.sleep(5)
    local t0 = ltask.now()
    ltask.kill(e)
    local ok = pcall(ltask.call, e, "echo")
    out:send("ok", { answered = ok, elapsed = ltask.now() - t0 })
end

local ok, err = xpcall(T[test], debug.traceback, select(3, ...))
if not ok then out:send("error", err) end
