-- lj-async.thread: OS threads, each running a Lua function in a lua_State of
-- its own.  From the repository root: luajit examples/thread.lua
local Thread = require "lj-async.thread"
local sync = require "lj-async.sync"

-- What a thread's function needs comes as arguments or upvalues (copied
-- into its state), or is required inside it.
local function count_primes(from, to)
    local n = 0
    for i = math.max(from, 2), to do
        local prime = true
        for d = 2, math.floor(math.sqrt(i)) do
            if i % d == 0 then prime = false break end
        end
        if prime then n = n + 1 end
    end
    return n, require("lj-async.thread").id()
end

local threads = {}
for i = 1, 4 do threads[i] = Thread.new(count_primes, (i - 1) * 250000 + 1, i * 250000) end
local total = 0
for i, t in ipairs(threads) do
    local ok, n, id = t:join()
    print(("thread %d (OS thread id %d): %d primes in its quarter of 1..10^6"):format(i, id, n))
    total = total + n
    t:destroy()
end
print(("primes up to 10^6: %d (expected 78498)"):format(total))

-- lj-async objects cross as live handles: three threads add to one atomic.
local hits = sync.atomic(0)
local adders = {}
for i = 1, 3 do
    adders[i] = Thread.new(function(hits, n)
        for _ = 1, n do hits:add(1) end
    end, hits, 10000)
end
for _, t in ipairs(adders) do assert(t:join()) end
print(("one atomic counter after 3 threads x 10000 adds: %d"):format(tonumber(hits:get())))

-- An error in a thread comes back from join as nil, err (with its traceback).
local ok, err = Thread.new(function(x) return x.field end, nil):join()
print(("a failing thread: join returned %s, %q"):format(tostring(ok), err:match("[^\n]*")))

-- join with a timeout: false, "timeout" while the thread still runs.
local slow = Thread.new(function() require("lj-async.thread").sleep(0.2) return "late" end)
print("join(0) on a sleeping thread:", slow:join(0))
print("join() once it is done:", slow:join())
