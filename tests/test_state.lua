-- SPEC section 6: lj-async.state, with the seed's two mtstates examples
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
    local up = 1
    lu.assertErrorMsgContains("upvalue 'up'", st.call, st, function() return up end)
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
    lu.assertErrorMsgContains("upvalue", state.new, function() return lu end)
end

function TestState:test_busy_and_call_wait()
    local st = state.new(function()
        return function(seconds) require("lj-async.thread").sleep(seconds) return "slept" end
    end)
    local t = Thread.new(function(id) return require("lj-async.state").get(id):call(0.3) end, st:id())
    Thread.sleep(0.1)
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

function TestState:test_close()
    local st = list_state("a")
    st:close()
    st:close()
    lu.assertErrorMsgContains("state is closed", st.call, st, "get")
    lu.assertErrorMsgContains("state is closed", st.interrupt, st)
end

function TestState:test_interrupt()
    local st = state.new(function()
        jit.off()   -- hooks reach interpreted code (see README)
        return function(spin)
            while spin do end
            return "served"
        end
    end)
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

os.exit(lu.LuaUnit.run())
