-- lj-async.state: a long-lived lua_State that any thread may call into
-- (mtstates).  From the repository root: luajit examples/state.lua
local state = require "lj-async.state"
local Thread = require "lj-async.thread"

-- setup runs once in the new state and returns the handler; the state's
-- data (here, the counts) lives there between calls.
local counter = state.new("counter", function(start)
    local counts = {}
    return function(cmd, key)
        if cmd == "add" then
            counts[key] = (counts[key] or start) + 1
            return counts[key]
        elseif cmd == "get" then
            return counts[key]
        end
        error("unknown command " .. tostring(cmd))
    end
end, 0)

print("add apples ->", counter:call("add", "apples"))

-- Other threads find it by name; call_wait waits while another thread is inside.
local threads = {}
for i = 1, 3 do
    threads[i] = Thread.new(function(n)
        local c = require("lj-async.state").get("counter")
        for _ = 1, n do c:call_wait(5, "add", "pears") end
    end, 100)
end
for _, t in ipairs(threads) do assert(t:join()) end
print("pears after 3 threads x 100 adds ->", counter:call("get", "pears"))

-- An error in the handler is raised in the caller, with the state's traceback.
local ok, err = pcall(counter.call, counter, "bogus")
print("a bad command: " .. err:match("[^\n]*"))

print(("state %q has id %d"):format(counter:name(), counter:id()))
counter:close()
