-- lj-async.pool: worker threads running precompiled jobs on a context table.
-- From the repository root: luajit examples/pool.lua
local Pool = require "lj-async.pool"

local pool = Pool.new(2)

-- Compile once, run many times; inside the job the context is `ctx`.
local greet = assert(Pool.compile('return ctx.message .. " from Lua, request " .. ctx.params.id', "greet"))
print(pool:submit(greet, { message = "Hello", params = { id = "123" } }))

-- Jobs run in parallel; submit_async returns a job to wait for.
local square = assert(Pool.compile("return ctx.n * ctx.n, ctx.n", "square"))
local jobs = {}
for n = 1, 4 do jobs[n] = pool:submit_async(square, { n = n }) end
for _, job in ipairs(jobs) do
    local sq, n = job:wait(5)
    print(("job: %d squared is %d"):format(n, sq))
end

-- A job's error comes back as nil, err.
print("a failing job:", (select(2, pool:submit("error('no such user')", {}))):match("[^\n]*"))

-- A job past its deadline is stopped, even a compiled loop that never
-- returns to the interpreter; the worker goes on serving.
local spin = assert(Pool.compile("local x = 0 while true do x = x + 1 end", "spin"))
print("a spinning job with timeout = 0.2:", pool:submit(spin, {}, { timeout = 0.2 }))
print("the pool still serves:", pool:submit(square, { n = 12 }))

print("shutdown:", pool:shutdown(1))
