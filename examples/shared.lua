-- lj-async.shared: tables every thread and state sees (effil's shared
-- tables).  From the repository root: luajit examples/shared.lua
local shared = require "lj-async.shared"
local Thread = require "lj-async.thread"

-- A plain table stored is copied in as shared tables, nested ones too.
local config = shared.table { name = "demo", limits = { threads = 4 } }
print("config.limits.threads =", config.limits.threads)

-- update is an atomic read-modify-write: no increment is lost.
local stats = shared.table { hits = 0 }
local threads = {}
for i = 1, config.limits.threads do
    threads[i] = Thread.new(function(stats, n)
        local shared = require "lj-async.shared"
        for _ = 1, n do
            shared.update(stats, "hits", function(old) return old + 1 end)
        end
        shared.update(shared.G, "workers", function(old) return (old or 0) + 1 end)   -- one G everywhere
        return true
    end, stats, 10000)
end
for i = 1, #threads do assert(threads[i]:join(30)) end
print("hits after 4 threads x 10000 updates:", stats.hits, "workers in shared.G:", shared.G.workers)

-- Metamethods of a shared metatable run in the caller's state.
local vec = shared.setmetatable(shared.table { x = 1, y = 2 }, {
    __add = function(a, b) return require("lj-async.shared").table { x = a.x + b.x, y = a.y + b.y } end,
    __tostring = function(v) return ("(%g, %g)"):format(v.x, v.y) end,
})
local sum = vec + vec
print("vec + vec =", sum.x, sum.y, "and tostring(vec) =", tostring(vec))

-- pairs walks a snapshot; dump gives a plain copy.
local keys = {}
for k in shared.pairs(config) do keys[#keys + 1] = k end
table.sort(keys)
print("config keys:", table.concat(keys, " "))
print("dump(config).limits.threads =", shared.dump(config).limits.threads)

-- What cannot cross raises at the writer, naming the key.
print("storing a coroutine:", select(2, pcall(function() config.co = coroutine.create(print) end)))
