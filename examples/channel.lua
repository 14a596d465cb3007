-- lj-async.channel: messages between threads and states.  From the
-- repository root: luajit examples/channel.lua
local channel = require "lj-async.channel"
local Thread = require "lj-async.thread"

-- Two workers take jobs until the channel is closed and drained, and send
-- each result back as one message of several values.
local jobs, results = channel.new(4), channel.new()   -- bounded: senders wait while 4 are queued
local workers = {}
for id = 1, 2 do
    workers[id] = Thread.new(function(jobs, results, id)
        while true do
            local n = jobs:recv()
            if n == nil then return end          -- nil, "closed": no more jobs
            results:send(n, n * n, id)
        end
    end, jobs, results, id)
end
for n = 1, 10 do jobs:send(n) end
jobs:close()
local squares = {}
for _ = 1, 10 do
    local n, sq, id = results:recv(5)
    squares[n] = sq
end
for _, t in ipairs(workers) do assert(t:join()) end
print("squares from 2 workers: " .. table.concat(squares, " "))

-- Tables cross by copy; a value that cannot cross is refused at the sender.
local ch = channel.new()
ch:send({ name = "point", x = 1, y = 2 })
local p = ch:recv()
print(("a table crossed: %s (%d, %d)"):format(p.name, p.x, p.y))
local ok, err = pcall(ch.send, ch, coroutine.create(print))
print("sending a coroutine: " .. err)

-- recv with a timeout, and select over several channels.
print("recv(0.1) on an empty channel:", ch:recv(0.1))
local a, b = channel.new(), channel.new()
b:send("from b")
local ready, v = channel.select({ a, b }, 1)
print(("select: the channel ready first is %s, with %q"):format(ready == b and "b" or "a", v))
