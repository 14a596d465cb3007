-- The promises of the README's lj-async.state section, with the seed's two mtstates examples
-- rewritten with lj-async's thread and channel.
local lu = require "luaunit"
local state = require "lj-async.state"
local channel = require "lj-async.channel"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

local function list_state(...)
    return state.new(function(init)
        local list = { init }
        local cmds = {
            add = function(arg) list[#list + 1] = arg end,
            get = function() return table.concat(list, " ") end,
        }
        return function(cmd, ...) return cmds[cmd](...) end
    end, ...)
end

TestState = {}

function TestState:test_seed_example_simple()
    local st = list_state("Hello")
    local thread = Thread.new(function(stateId)
        local state = require "lj-async.state"
        local st = state.get(stateId)
        return st:call("add", "World")
    end, st:id())
    lu.assertEquals({ thread:join(10) }, { true })
    lu.assertEquals(st:call("get"), "Hello World")
end

function TestState:test_seed_example_with_channels()
    local st = state.new(function()
        local list = {}
        local cmds = {
            add = function(arg) list[#list + 1] = arg end,
            get = function() return table.concat(list, " ") end,
        }
        return function(cmd, ...) return cmds[cmd](...) end
    end)
    local threadIn, threadOut = channel.new(), channel.new()
    local thread = Thread.new(function(threadInId, threadOutId)
        local state = require "lj-async.state"
        local channel = require "lj-async.channel"
        local threadIn, threadOut = channel.get(threadInId), channel.get(threadOutId)
        while true do
            local cmd, stateId, arg = threadIn:recv(30)
            if cmd == "finish" then
                threadOut:send("finished")
                break
            else
                state.get(stateId):call(cmd, arg)
                threadOut:send("done")
            end
        end
        return true
    end, threadIn:id(), threadOut:id())
    threadIn:send("add", st:id(), "Hello")
    threadIn:send("add", st:id(), "World")
    lu.assertEquals(threadOut:recv(10), "done")
    lu.assertEquals(threadOut:recv(10), "done")
    lu.assertEquals(st:call("get"), "Hello World")
    threadIn:send("finish")
    lu.assertEquals(threadOut:recv(10), "finished")
    lu.assertEquals({ thread:join(10) }, { true, true })
end

function TestState:test_state_handles_cross_as_live_objects()
    -- the handle itself, not its id, goes to a thread and comes back
    local st = list_state("one")
    local t = Thread.new(function(st)
        st:call("add", "two")
        return st
    end, st)
    local ok, back = t:join(10)
    lu.assertTrue(ok, back)
    lu.assertEquals(back:id(), st:id())
    lu.assertEquals(back:call("get"), "one two")
end

function TestState:test_values_cross_both_ways()
    local st = state.new(function() return function(...) return select("#", ...), ... end end)
    local n, a, b, c = st:call({ x = 1 }, nil, "s")
    lu.assertEquals({ n, a, b, c }, { 3, { x = 1 }, nil, "s" })
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    lu.assertErrorMsgContains("cannot send a coroutine (argument 1, upvalue 'up')", st.call, st, function() return up end)
    lu.assertEquals(st:call(5), 1)   -- still usable
end

function TestState:test_errors_carry_the_state_traceback()
    local st = state.new(function()
        local function deep() error("handler failed") end
        return function() deep() end
    end)
    local ok, err = pcall(st.call, st)
    lu.assertFalse(ok)
    lu.assertStrContains(err, "handler failed")
    lu.assertStrContains(err, "stack traceback")
    lu.assertStrContains(err, "deep")
    lu.assertErrorMsgContains("returned number", state.new, function() return 1 end)
    local co = coroutine.create(print)
    lu.assertErrorMsgContains("cannot send a coroutine (upvalue 'co')", state.new, function() return co end)
end

function TestState:test_busy_and_call_wait()
    -- The handler says when it runs (a fixed sleep here flaked on a loaded machine).
    local entered = require("lj-async.sync").atomic(0)
    local st = state.new(function()
        return function(seconds) entered:set(1) require("lj-async.thread").sleep(seconds) return "slept" end
    end)
    local t = Thread.new(function(id) return require("lj-async.state").get(id):call(1) end, st:id())
    local deadline = H.now() + 10
    while entered:get() == 0 and H.now() < deadline do Thread.sleep(0.001) end
    lu.assertErrorMsgContains("state is busy", st.call, st, 0)
    lu.assertErrorMsgContains("state is busy", st.call_wait, st, 0.01, 0)
    lu.assertEquals(st:call_wait(10, 0), "slept")
    lu.assertEquals({ t:join(10) }, { true, "slept" })
end

function TestState:test_names_and_lookup()
    local st = state.new("lja-test-named", function() return function() return "named" end end)
    lu.assertEquals(st:name(), "lja-test-named")
    lu.assertEquals(state.get("lja-test-named"):call(), "named")
    lu.assertEquals(state.get(st:id()):call(), "named")
    lu.assertErrorMsgContains("exists already", state.new, "lja-test-named", function() return print end)
    lu.assertErrorMsgContains("no state named", state.get, "lja-test-nobody")
    lu.assertErrorMsgContains("no state with id", state.get, 1e9)
    lu.assertNil(list_state("x"):name())
    -- source setup with arguments
    local src = state.new("lja-test-src", "local k = ... return function(x) return x * k end", 3)
    lu.assertEquals(src:call(5), 15)
end

-- Every bad argument raises an error that says what is wrong with which
-- argument and blames the caller's line.
function TestState:test_errors_blame_the_caller()
    local st = state.new("lja-test-errors", function() return function(...) return ... end end)
    local closed = list_state("x")
    closed:close()
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    local cases = {
        { function() state.new("n", 42) end, "state.new: bad setup (argument 2, after the name 'n'): expected a function, Lua source or bytecode, got number" },
        { function() state.new("return +") end, "state.new: bad setup (argument 1): (source):1: unexpected symbol" },
        { function() state.new(42) end, "state.new: bad setup (argument 1): expected a function, Lua source or bytecode, got number" },
        { function() state.new() end, "state.new: bad setup (argument 1): expected a function, Lua source or bytecode, got nil" },
        { function() state.new("n", nil) end, "state.new: bad setup (argument 2, after the name 'n'): expected a function" },
        { function() state.new(function() return up end) end, "cannot send a coroutine (upvalue 'up')" },
        { function() state.new(function() return 1 end) end, "cannot set up a new state: the setup function returned number, not a function" },
        { function() state.new(function() return print end, function() return up end) end, "cannot send a coroutine (argument 1, upvalue 'up')" },
        { function() state.new("lja-test-errors", function() return print end) end, "a state named 'lja-test-errors' exists already" },
        { function() state.get(99999) end, "no state with id 99999" },
        { function() state.get(1.5) end, "a state id must be an integer from 1 to 2^53, got 1.5" },
        { function() state.get("lja-test-nobody") end, "no state named 'lja-test-nobody'" },
        { function() state.get(closed:id()) end, "state " .. closed:id() .. " is closed" },
        { function() st:call(function() return up end) end, "cannot send a coroutine (argument 1, upvalue 'up')" },
        { function() st:call_wait("1") end, "the timeout must be a number of seconds or nil" },
        { function() closed:call() end, "state is closed" },
        { function() closed:call_wait(1) end, "state is closed" },
        { function() closed:interrupt() end, "state is closed" },
    }
    for _, case in ipairs(cases) do
        local err, here = H.raised_at(case[1])
        lu.assertStrContains(err, here .. " lj-async: " .. case[2])
    end
    -- a source setup with arguments and no name: nil as the name
    lu.assertEquals(state.new(nil, "local k = ... return function(x) return x * k end", 3):call(5), 15)
    lu.assertEquals(state.new(nil, "local s = ... return function() return s end", "str"):call(), "str")
end

function TestState:test_close()
    local st = list_state("a")
    st:close()
    st:close()
    lu.assertErrorMsgContains("state is closed", st.call, st, "get")
    lu.assertErrorMsgContains("state is closed", st.interrupt, st)
end

-- close frees the name at once, while other handles of the state live on.
function TestState:test_close_frees_the_name()
    local st = state.new("lja-test-closed", function() return function() return "old" end end)
    local other = state.get("lja-test-closed")
    local id = st:id()
    other:close()
    lu.assertErrorMsgContains("no state named 'lja-test-closed'", state.get, "lja-test-closed")
    lu.assertErrorMsgContains("state " .. id .. " is closed", state.get, id)
    lu.assertNil(st:name())
    local again = state.new("lja-test-closed", function() return function() return "new" end end)
    lu.assertEquals(state.get("lja-test-closed"):call(), "new")
    lu.assertEquals(again:name(), "lja-test-closed")
    lu.assertErrorMsgContains("state is closed", st.call, st)
end

-- A state whose handler spins while its argument is true, else returns
-- "served"; interpreted, so that an interrupt's hook reaches it (README).
local function spinning_state()
    return state.new(function()
        jit.off()
        return function(spin)
            while spin do end
            return "served"
        end
    end)
end

function TestState:test_interrupt()
    local st = spinning_state()
    lu.assertFalse(st:interrupt())    -- nobody inside
    local t = Thread.new(function(id)
        local st = require("lj-async.state").get(id)
        return pcall(st.call, st, true)
    end, st:id())
    local deadline = H.now() + 10
    while not st:interrupt() and H.now() < deadline do Thread.sleep(0.01) end
    local ok, called_ok, err = t:join(10)
    lu.assertTrue(ok)
    lu.assertFalse(called_ok)
    lu.assertStrContains(err, "interrupted")
    lu.assertEquals(st:call(false), "served")   -- and the state goes on
end

-- A call blocked in ch:recv() inside the state, interrupted again and again
-- while messages arrive: each message is returned by exactly one call or
-- stays queued, and the objects the messages carry are all freed.
function TestState:test_interrupt_never_loses_a_received_message()
    local N = 200
    local sync = require "lj-async.sync"
    local ch = channel.new()
    local st = state.new(function(ch)
        jit.off()   -- hooks reach interpreted code (see README)
        return function() return ch:recv(0.05) end
    end, ch)
    local caller = Thread.new(function(st)
        local H = require "tests.helpers"
        local seqs = {}
        local deadline = H.now() + 60
        while H.now() < deadline do
            local ok, seq, obj = pcall(st.call, st)
            if not ok then
                assert(seq:find("interrupted"), seq)
            elseif seq ~= nil then
                seqs[#seqs + 1] = seq
            elseif obj == "closed" then
                break
            end
        end
        collectgarbage()
        return seqs
    end, st)
    local sent, hits = {}, 0
    for i = 1, N do
        local s = sync.semaphore()
        sent[i] = s:id()
        ch:send(i, s)
        -- interrupt the call blocked in recv, just as the message comes
        for _ = 1, 3 do
            if st:interrupt() then hits = hits + 1 end
            Thread.sleep(0.0003)
        end
    end
    ch:close()   -- the caller stops once it has drained the channel
    local ok, seqs = caller:join(90)
    lu.assertTrue(ok, seqs)
    lu.assertTrue(hits > N, "too few interrupts reached a call: " .. hits)
    local seen = {}
    for _, seq in ipairs(seqs) do
        lu.assertNil(seen[seq], "message " .. seq .. " received twice")
        seen[seq] = true
    end
    lu.assertEquals(#seqs, N)   -- nothing lost between recv and decode
    st:close()
    collectgarbage()
    for i = 1, N do lu.assertTrue(H.eventually_gone(sent[i]), "object of message " .. i .. " leaked") end
end

-- A state with a caller inside (a thread) until `gate` gets a message;
-- other calls return "in".  Returns the state, the gate and the thread.
local function state_held_inside()
    local st = state.new(function() return function(gate) if gate then return gate:recv(20) end return "in" end end)
    local gate = channel.new()
    local inside = Thread.new(function(st, gate) return st:call_wait(nil, gate) end, st, gate)
    local deadline = H.now() + 10
    while pcall(st.call, st) and H.now() < deadline do Thread.sleep(0.001) end   -- until it is inside: call raises "busy"
    return st, gate, inside
end

-- Callers waiting to enter while a close waits for the call inside: each
-- of them either runs (before the close got in) or is told the state is
-- closed; none hangs, none runs after the close.
function TestState:test_close_while_callers_wait_to_enter()
    local st, gate, inside = state_held_inside()
    local waiting = {}
    for i = 1, 4 do
        waiting[i] = Thread.new(function(st) return pcall(st.call_wait, st, 20) end, st)
    end
    local closer = Thread.new(function(st) st:close() return "closed" end, st)
    Thread.sleep(0.05)
    gate:send("out")
    lu.assertEquals({ inside:join(10) }, { true, "out" })
    lu.assertEquals({ closer:join(10) }, { true, "closed" })
    for i = 1, 4 do
        local ok, called, v = waiting[i]:join(10)
        lu.assertTrue(ok, called)
        if called then
            lu.assertEquals(v, "in")
        else
            lu.assertStrContains(v, "state is closed")
        end
    end
    lu.assertErrorMsgContains("state is closed", st.call_wait, st, 1)
end

-- An interrupt reaches the call inside, never a caller still waiting to
-- enter: that one runs to its end once the interrupted call left.
function TestState:test_interrupt_spares_a_caller_waiting_to_enter()
    local st = spinning_state()
    local spinner = Thread.new(function(st) return pcall(st.call_wait, st, 20, true) end, st)
    local deadline = H.now() + 10
    while pcall(st.call, st, false) and H.now() < deadline do Thread.sleep(0.001) end   -- until it is inside
    local waiter = Thread.new(function(st) return st:call_wait(20, false) end, st)
    Thread.sleep(0.05)   -- waiting to enter
    lu.assertTrue(st:interrupt())
    local ok, called, err = spinner:join(10)
    lu.assertTrue(ok)
    lu.assertFalse(called)
    lu.assertStrContains(err, "interrupted")
    lu.assertEquals({ waiter:join(10) }, { true, "served" })
    st:close()
end

-- A close waits for the call inside; a cancel of the thread waiting there
-- stops it (README lj-async.thread: every lj-async wait is a cancellation
-- point) instead of letting it go on as if the state were closed.
function TestState:test_cancel_of_a_close_waiting_for_the_call_inside()
    local st, gate, inside = state_held_inside()
    local closer = Thread.new(function(st) st:close() return "closed" end, st)
    Thread.sleep(0.05)
    lu.assertTrue(closer:cancel(5))
    lu.assertEquals({ closer:join(0) }, { nil, "cancelled" })
    gate:send("out")
    lu.assertEquals({ inside:join(10) }, { true, "out" })
    lu.assertEquals(st:call_wait(10), "in")   -- still open
    st:close()
    lu.assertErrorMsgContains("state is closed", st.call, st)
end

-- A caller inside a state that enters it again (its handler calls or
-- closes its own state, or through another state) would wait for itself
-- forever: call_wait raises "busy" at once and close raises, and the state
-- goes on serving.
function TestState:test_a_call_inside_cannot_wait_for_itself()
    local function handler(what, id, other)
        if what == "in" then return what end
        local state = require "lj-async.state"
        local st = state.get(id)
        if what == "close" then return pcall(st.close, st) end
        if what == "via" then return state.get(other):call_wait(nil, "back", id) end
        return pcall(st.call_wait, st, nil, "in")   -- "self", or "back" in a through b
    end
    local a = state.new(function(handler) return handler end, handler)
    local b = state.new(function(handler) return handler end, handler)
    local t = Thread.new(function(a, b)
        return { a:call("self", a:id()) }, { a:call("close", a:id()) }, { a:call("via", a:id(), b:id()) }
    end, a, b)
    local ok, call, close, via = t:join(10)
    lu.assertTrue(ok, call)
    lu.assertEquals(call[1], false)
    lu.assertStrContains(call[2], "state is busy")
    lu.assertEquals(close[1], false)
    lu.assertStrContains(close[2], "from inside")
    lu.assertEquals(via[1], false)
    lu.assertStrContains(via[2], "state is busy")
    lu.assertEquals(a:call("in"), "in")   -- both go on serving
    lu.assertEquals(b:call("in"), "in")
    a:close()
    b:close()
end

os.exit(lu.LuaUnit.run())
