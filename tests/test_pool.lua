-- The promises of the README's lj-async.pool section, with the seed's example (seeds/004).
local lu = require "luaunit"
local Pool = require "lj-async.pool"
local Thread = require "lj-async.thread"
local H = require "tests.helpers"

local SANITIZED = (os.getenv("LJA_SANITIZE") or "") ~= ""

local function timed(f, ...)
    local t0 = H.now()
    local r = { n = 0 }
    r = (function(...) return { n = select("#", ...), ... } end)(f(...))
    return H.now() - t0, unpack(r, 1, r.n)
end

TestPool = {}

function TestPool:test_seed_example()
    local pool = Pool.new(4)
    local bytecode = Pool.compile('return ctx.message .. " from Lua"', "script")
    lu.assertEquals({ pool:submit(bytecode, { message = "Hello", params = { id = "123" } }) }, { "Hello from Lua" })
    lu.assertEquals(pool:submit(Pool.compile("return ctx.params.id"), { params = { id = "123" } }), "123")
    lu.assertEquals(pool:active_workers(), 4)
    lu.assertTrue(pool:shutdown())
end

function TestPool:test_compile_errors_and_bad_arguments()
    local bc, err = Pool.compile("return +", "broken")
    lu.assertNil(bc)
    lu.assertStrContains(err, "broken:1:")
    lu.assertErrorMsgContains("compile takes Lua source", Pool.compile, 42)
    lu.assertErrorMsgContains("integer from 1 to 4096", Pool.new, 0)
    local pool = Pool.new(1)
    lu.assertErrorMsgContains("code as a string", pool.submit, pool, nil, {})
    lu.assertErrorMsgContains("positive number of seconds", pool.submit, pool, "return 1", {}, { timeout = -1 })
    local up = coroutine.create(print)   -- an upvalue that cannot cross
    lu.assertErrorMsgContains("cannot send a coroutine (ctx.f, upvalue 'up')", pool.submit, pool, "return 1", { f = function() return up end })
    pool:shutdown()
end

function TestPool:test_results_and_errors()
    local pool = Pool.new(2)
    lu.assertEquals({ pool:submit(Pool.compile("return 1, nil, { a = { 'x' } }, ctx"), 7) }, { 1, nil, { a = { "x" } }, 7 })
    lu.assertEquals({ pool:submit(Pool.compile("return"), nil) }, {})
    local res, err = pool:submit(Pool.compile("local function inner() error('boom') end\ninner()", "failing"), {})
    lu.assertNil(res)
    lu.assertStrContains(err, "failing:1: boom")
    lu.assertStrContains(err, "stack traceback")
    lu.assertStrContains(err, "inner")
    res, err = pool:submit(Pool.compile("local up = coroutine.create(print) return function() return up end"), {})
    lu.assertNil(res)
    lu.assertStrContains(err, "cannot cross")
    -- plain bytecode and source run too
    lu.assertEquals(pool:submit(string.dump(function() return ctx.x * 2 end), { x = 21 }), 42)
    lu.assertEquals(pool:submit("return ctx.x + 1", { x = 1 }), 2)
    -- the workers live on
    lu.assertEquals(pool:active_workers(), 2)
    lu.assertEquals(pool:submit(Pool.compile("return 'fine'"), {}), "fine")
    pool:shutdown()
end

-- Live objects cross both ways: a channel in the context, returned back.
function TestPool:test_objects_in_context_and_results()
    local channel = require "lj-async.channel"
    local pool = Pool.new(1)
    local ch = channel.new()
    local back = pool:submit(Pool.compile("ctx.ch:send('from the job', ctx.n) return ctx.ch"), { ch = ch, n = 3 })
    lu.assertEquals({ ch:recv(1) }, { "from the job", 3 })
    lu.assertEquals(back:id(), ch:id())
    pool:shutdown()
end

function TestPool:test_runs_are_isolated()
    local pool = Pool.new(1)   -- one worker: every job runs in the same state
    local dirty = Pool.compile([[
        x = 1; string.x = 2; table.insert = nil; math.pi = 3
        package.loaded.extra = true
        setmetatable(_G, { __index = function() return "leaked" end })
        getmetatable("").__index = { upper = function() return "hijacked" end }
        debug.sethook(function() end, "", 1000000)
        io.output(io.stderr)
        debug.setmetatable(0, { __index = math })
        return "dirty"
    ]])
    lu.assertEquals(pool:submit(dirty, {}), "dirty")
    local check = Pool.compile([[
        return x, string.x, type(table.insert), math.pi, package.loaded.extra, getmetatable(_G),
               ("a"):upper(), ctx.n, debug.gethook(), io.output() == io.stdout, debug.getmetatable(0)
    ]])
    lu.assertEquals({ pool:submit(check, { n = 1 }) },
        { nil, nil, "function", math.pi, nil, nil, "A", 1, nil, true, nil })
    lu.assertEquals(pool:submit(Pool.compile("return ctx"), nil), nil)   -- the last ctx is gone too
    pool:shutdown()
end

local SPINS = {
    ["while true do end"] = "while true do end",
    ["numeric for"] = "local x = 0 for i = 1, 1e300 do x = x + i end",
    ["repeat"] = "local x = 0 repeat x = x + 1 until false",
    ["goto"] = "local x = 0 ::top:: x = x + 1 goto top",
    ["tail recursion"] = "local function f(n) return f(n + 1) end return f(1)",
    ["pcall in a loop"] = "while true do pcall(function() while true do end end) end",
    ["varargs, then a loop"] = "local x = ... while true do end",
    ["a loop after a label"] = "::a:: while true do end",
}

-- A timeout stops a job spinning in compiled code; the worker is free
-- again at once (a pool of one serves the next job).
function TestPool:test_timeout_stops_compiled_loops()
    local pool = Pool.new(1)
    local quick = Pool.compile("return 'next'")
    for name, src in pairs(SPINS) do
        local s, res, err = timed(pool.submit, pool, Pool.compile(src, name), {}, { timeout = 0.2 })
        lu.assertNil(res, name)
        lu.assertEquals(err, "timeout", name)
        lu.assertTrue(s < 0.4, ("%s: the timeout of 0.2 s took %.3f s"):format(name, s))
        s, res = timed(pool.submit, pool, quick, {})
        lu.assertEquals(res, "next", name)
        lu.assertTrue(s < 0.2, ("%s: the next job waited %.3f s"):format(name, s))
    end
    lu.assertEquals(pool:active_workers(), 1)
    pool:shutdown()
end

-- Plain bytecode and source are stopped too (no JIT for plain bytecode).
function TestPool:test_timeout_stops_plain_bytecode_and_source()
    local pool = Pool.new(1)
    local spin = string.dump(function() local x = 0 while true do x = x + 1 end end)
    for _, code in ipairs { spin, "while true do end", "local x = ... while true do end" } do
        local s, res, err = timed(pool.submit, pool, code, {}, { timeout = 0.2 })
        lu.assertEquals({ res, err }, { nil, "timeout" })
        lu.assertTrue(s < 0.4)
        lu.assertEquals(pool:submit("return 1", {}), 1)
    end
    pool:shutdown()
end

function TestPool:test_async_jobs_wait_and_cancel()
    local pool = Pool.new(1)
    local spin = Pool.compile("while true do end")
    local running = pool:submit_async(spin, {})
    local queued = pool:submit_async(Pool.compile("return 'never'"), {})
    lu.assertEquals({ running:wait(0.05) }, { nil, "timeout" })   -- waiting does not stop it
    lu.assertTrue(queued:cancel())
    lu.assertEquals({ queued:wait(1) }, { nil, "cancelled" })
    local s = timed(function() return running:cancel() end)
    lu.assertEquals({ running:wait(1) }, { nil, "cancelled" })
    lu.assertTrue(s < 0.1)
    local done = pool:submit_async(Pool.compile("return ctx * 2"), 21)
    lu.assertEquals(done:wait(5), 42)
    lu.assertFalse(done:cancel())
    lu.assertEquals(done:wait(), 42)
    -- a job's own timeout applies whether or not anybody waits
    local timed_out = pool:submit_async(spin, {}, { timeout = 0.1 })
    Thread.sleep(0.3)
    lu.assertEquals({ timed_out:wait(0) }, { nil, "timeout" })
    lu.assertEquals(pool:submit(Pool.compile("return 'free'"), {}), "free")
    pool:shutdown()
end

-- A job blocked in C cannot be stopped: its worker is replaced, so the pool
-- keeps its size and serves, and the stuck thread ends when C returns.
-- A cancel that lands just as a job's ch:recv returns waits until lj-async's
-- own code is done: the message reaches the job's code (here, its result),
-- or stays queued for the next job, never lost in between (README).
function TestPool:test_cancel_never_loses_a_received_message()
    local N = 150
    local channel, sync = require "lj-async.channel", require "lj-async.sync"
    local ch = channel.new()
    local pool = Pool.new(1)
    local code = Pool.compile("return ctx.ch:recv(0.05)", "recv")
    local got, sent, hits = {}, {}, 0
    local function take(job)
        local r = { job:wait(30) }
        if r[1] ~= nil then
            got[#got + 1] = r[1]
        else
            lu.assertTrue(r[2] == "cancelled" or r[2] == "timeout", tostring(r[2]))
        end
    end
    for i = 1, N do
        local s = sync.semaphore()
        sent[i] = s:id()
        local job = pool:submit_async(code, { ch = ch })
        Thread.sleep(0.0002 * (i % 5))
        ch:send(i, s)
        Thread.sleep(0.0001 * (i % 3))
        if job:cancel() then hits = hits + 1 end
        take(job)
    end
    -- what is still queued (a job cancelled before it received) is drained
    local deadline = H.now() + 30
    while #got < N and H.now() < deadline do
        local r = { pool:submit(code, { ch = ch }) }
        if r[1] == nil then break end
        got[#got + 1] = r[1]
    end
    local seen = {}
    for _, seq in ipairs(got) do
        lu.assertNil(seen[seq], "message " .. tostring(seq) .. " received twice")
        seen[seq] = true
    end
    lu.assertEquals(#got, N)   -- nothing lost between recv and decode
    lu.assertTrue(hits > 0, "no cancel reached a job")
    lu.assertTrue(pool:shutdown(5))
    collectgarbage()
    for i = 1, N do lu.assertTrue(H.eventually_gone(sent[i]), "object of message " .. i .. " leaked") end
end

-- A compiled job that sleeps `seconds` in C (out of reach of any hook),
-- then returns `result`.
local function stuck_in_c(seconds, result)
    return Pool.compile(([[
        local ffi = require "ffi"
        pcall(ffi.cdef, "int usleep(unsigned int usec);")
        ffi.C.usleep(%d)
        return %q
    ]]):format(seconds * 1e6, result))
end

function TestPool:test_job_stuck_in_c_is_replaced()
    local pool = Pool.new(1)
    local block = stuck_in_c(1.5, "woke")
    local s, res, err = timed(pool.submit, pool, block, {}, { timeout = 0.1 })
    lu.assertEquals({ res, err }, { nil, "timeout" })
    lu.assertTrue(s < 0.2)
    s, res = timed(pool.submit, pool, Pool.compile("return 'served'"), {})
    lu.assertEquals(res, "served")
    lu.assertTrue(s < 1.0, ("the next job waited %.3f s for a stuck worker"):format(s))
    lu.assertEquals(pool:active_workers(), 1)
    lu.assertTrue(pool:shutdown(5))
end

-- CPU seconds this process spends over `seconds` of sleep: a thread left
-- spinning shows.
local function cpu_while_idle(seconds)
    local t0 = os.clock()
    Thread.sleep(seconds)
    return os.clock() - t0
end

-- A job cannot swallow its cancel: one that catches it (pcall, xpcall with
-- a handler, a coroutine) and loops on is hit again at once, so it stops,
-- its worker serves the next job, and no thread is left spinning.
function TestPool:test_cancel_cannot_be_swallowed()
    local pool = Pool.new(1)
    local caught = {
        pcall = "while true do pcall(function() for i = 1, 1e9 do end end) end",
        xpcall = "while true do xpcall(function() for i = 1, 1e9 do end end, function(e) return e end) end",
        xpcall_traceback = "while true do xpcall(function() while true do end end, "
            .. "function(e) return debug.traceback(e) end) end",
        coroutine = "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
    }
    local quick = Pool.compile("return 'next'")
    for name, src in pairs(caught) do
        local f = assert(load(src))
        for form, code in pairs { bytecode = string.dump(f), source = src, compiled = Pool.compile(src) } do
            local what = name .. " as " .. form
            local s, res, err = timed(pool.submit, pool, code, {}, { timeout = 0.1 })
            lu.assertEquals({ res, err }, { nil, "timeout" }, what)
            lu.assertTrue(s < 0.3, ("%s: the timeout of 0.1 s took %.3f s"):format(what, s))
            -- the worker itself is free again (a replacement would take 0.25 s)
            s, res = timed(pool.submit, pool, quick, {})
            lu.assertEquals(res, "next", what)
            lu.assertTrue(s < 0.2, ("%s: the next job waited %.3f s"):format(what, s))
            local job = pool:submit_async(code, {})
            Thread.sleep(0.02)
            lu.assertTrue(job:cancel(), what)
            lu.assertEquals({ job:wait(1) }, { nil, "cancelled" }, what)
        end
    end
    lu.assertEquals(pool:active_workers(), 1)
    lu.assertTrue(pool:shutdown(1))
    local cpu = cpu_while_idle(0.3)
    lu.assertTrue(cpu < 0.1, ("%.2f s of CPU over 0.3 s idle: a job still spins"):format(cpu))
end

-- A job's results may include a function defined in it (it polls for
-- cancel through a hidden upvalue, which crosses as the receiver's poll).
function TestPool:test_jobs_return_functions()
    local pool = Pool.new(1)
    local src = "return function(a) return a * 2 end, function(n) local s = 0 for i = 1, n do s = s + i end return s end"
    local quick = Pool.compile("return 'next'")
    for form, code in pairs { source = src, compiled = Pool.compile(src), bytecode = string.dump(assert(load(src))) } do
        local double, sum = pool:submit(code, {})
        lu.assertIsFunction(double, form)
        lu.assertEquals(double(21), 42, form)
        lu.assertEquals(sum(100), 5050, form)
        lu.assertEquals(pool:submit(Pool.compile("return ctx.f(4)"), { f = double }), 8, form)
        if form ~= "bytecode" then   -- instrumented, it still polls in a job: a timeout stops it
            local s, res, err = timed(pool.submit, pool, Pool.compile("return ctx.sum(1e300)"), { sum = sum },
                { timeout = 0.1 })
            lu.assertEquals({ res, err }, { nil, "timeout" }, form)
            lu.assertEquals(pool:submit(quick, {}), "next", form)
        end
    end
    -- an upvalue that cannot cross is named
    local res, err = pool:submit(Pool.compile("local co = coroutine.create(print) return function() return co end"), {})
    lu.assertNil(res)
    lu.assertStrContains(err, "cannot send a coroutine (argument 1, upvalue 'co')")
    lu.assertTrue(pool:shutdown(1))
end

-- LuaJIT does not verify bytecode: Pool.compile's output carries a
-- checksum that submit checks, so a changed byte anywhere is refused (or,
-- in the header's first byte, read as source that does not compile).
function TestPool:test_damaged_compiled_code_is_refused()
    local pool = Pool.new(1)
    local code = Pool.compile("local t = {} for i = 1, 10 do t[i] = i * i end return t[10], 'ok'", "squares")
    lu.assertEquals({ pool:submit(code, {}) }, { 100, "ok" })
    for i = 1, #code do
        for _, flip in ipairs { 0x01, 0x80 } do
            local bad = code:sub(1, i - 1) .. string.char(bit.bxor(code:byte(i), flip)) .. code:sub(i + 1)
            local ok, res, err = pcall(function()
                local res, err = pool:submit(bad, {})
                return res, err
            end)
            if ok then
                lu.assertNil(res, "byte " .. i)
                lu.assertStrContains(err, "(job)", "byte " .. i)   -- a syntax error
            else
                lu.assertStrContains(res, "test_pool.lua:", "byte " .. i)   -- blames the caller
                lu.assertStrContains(res, "not intact Pool.compile output", "byte " .. i)
            end
        end
    end
    lu.assertErrorMsgContains("not intact Pool.compile output", pool.submit, pool, code:sub(1, -2), {})
    lu.assertErrorMsgContains("not intact Pool.compile output", pool.submit, pool, code .. "\0", {})
    lu.assertEquals({ pool:submit(code, {}) }, { 100, "ok" })
    lu.assertTrue(pool:shutdown(1))
end

-- A job blocked in C that is cancelled (no timeout) gets its worker
-- replaced like one that timed out: a pool of one serves again in 0.25 s.
function TestPool:test_cancelled_job_stuck_in_c_is_replaced()
    local channel = require "lj-async.channel"
    local pool = Pool.new(1)
    local started = channel.new()
    local job = pool:submit_async(Pool.compile([[
        local ffi = require "ffi"
        pcall(ffi.cdef, "int usleep(unsigned int usec);")
        ctx.started:send(true)
        ffi.C.usleep(1500000)
        return "woke"
    ]]), { started = started })
    lu.assertTrue(started:recv(5))
    lu.assertTrue(job:cancel())
    local s, res = timed(pool.submit, pool, Pool.compile("return 'served'"), {})
    lu.assertEquals(res, "served")
    lu.assertTrue(s < 1.0, ("the next job waited %.3f s for a cancelled worker"):format(s))
    lu.assertEquals({ job:wait(5) }, { nil, "cancelled" })
    lu.assertEquals(pool:active_workers(), 1)
    lu.assertTrue(pool:shutdown(5))
end

-- The worker loop (lj-async/pool.lua) runs as a JIT trace of C calls, the
-- jobs in their own states: a thread lent to the pool runs it with
-- LuaJIT's trace events recorded.  A root trace starts in the loop and is
-- compiled as a loop, and no trace that starts there aborts: a change that
-- knocks the loop off trace (15-20x slower per job) fails here.
function TestPool:test_worker_loop_stays_compiled()
    local channel = require "lj-async.channel"
    local pool = Pool.new(1)
    local hold, held = channel.new(), channel.new()
    -- the pool's own worker waits in a job, so the lent thread takes the rest
    local busy = pool:submit_async(Pool.compile("ctx.held:send(true) return ctx.hold:recv(30)"),
        { hold = hold, held = held })
    lu.assertTrue(held:recv(5))
    local lent = Thread.new(function(pool)
        local ffi = require "ffi"
        local Pool = require "lj-async.pool"
        ffi.cdef "int lja_pool_join(lja_pool *p);"
        local traceinfo = require("jit.util").traceinfo
        local mine, loops, aborts = {}, 0, {}
        local function event(what, tr, func, pc, otr, oex)
            if what == "start" then
                mine[tr] = func == Pool._work
            elseif mine[tr] and what == "stop" then
                if traceinfo(tr).linktype == "loop" then loops = loops + 1 end
            elseif mine[tr] and what == "abort" then
                aborts[#aborts + 1] = ("trace %d: error %s %s"):format(tr, tostring(otr), tostring(oex))
            end
        end
        jit.attach(event, "trace")
        assert(require("lj-async.shim").C.lja_pool_join(pool) == 0)
        Pool._work(pool)   -- until the pool shuts down
        jit.attach(event)
        return loops, table.concat(aborts, "; ")
    end, pool)
    local code = Pool.compile("return ctx + 1")
    for i = 1, 500 do lu.assertEquals(pool:submit(code, i), i + 1) end
    hold:send(true)
    lu.assertEquals(busy:wait(5), true)
    lu.assertTrue(pool:shutdown(5))
    local ok, loops, aborts = lent:join(30)
    lu.assertTrue(ok, tostring(loops))
    lu.assertEquals(aborts, "", "traces of the worker loop aborted")
    lu.assertTrue(loops >= 1, "the worker loop was not compiled as a looping trace")
end

-- submit runs compiled: a trace that records lj-async/pool.lua's submit
-- completes, and no trace aborts there for a reason other than LuaJIT
-- forming its traces around loops (jit.off(submit), an NYI, or a value
-- that transfer could only encode by catching an error would show).
-- Contexts that transfer sends by its slow path (a function, a channel),
-- mixed with plain ones, give every result right: with a caught error
-- inside encode, a compiled submit's frame was at times corrupted on
-- Debian's LuaJIT 2.1 (2022).
function TestPool:test_submit_stays_compiled()
    local channel = require "lj-async.channel"
    local funcinfo = require("jit.util").funcinfo
    local traceerr = require("jit.vmdef").traceerr
    local pool = Pool.new(1)
    local code = Pool.compile("return ctx.a + 1")
    local line = 0   -- where pool.lua defines its submit
    for text in io.lines("lj-async/pool.lua") do
        line = line + 1
        if text:find("^local function submit%(") then break end
    end
    local known = {}   -- function -> whether it is pool.lua's submit
    local function is_submit(func)
        if known[func] == nil then
            local info = funcinfo(func)
            known[func] = info.linedefined == line and (info.source or ""):find("lj%-async/pool%.lua$") ~= nil
        end
        return known[func]
    end
    local FORMING = { "leaving loop", "inner loop", "loop unroll", "retry recording" }
    local function benign(err)
        for _, what in ipairs(FORMING) do if err:find(what, 1, true) then return true end end
        return false
    end
    local recorded, compiled, aborts, others = {}, 0, {}, {}
    local function record(tr, func)
        local r = recorded[tr]
        if not r then r = {} recorded[tr] = r end
        r[func] = true
    end
    local function through_submit(tr)
        for func in pairs(recorded[tr] or {}) do
            if is_submit(func) then return true end
        end
        return false
    end
    local function event(what, tr, func, pc, otr, oex)
        if what == "stop" and through_submit(tr) then
            compiled = compiled + 1
        elseif what == "abort" then
            local err = tostring(traceerr[otr]):format(oex)
            local where = ("trace %d at %s: %s"):format(tr, tostring(funcinfo(func, pc).loc), err)
            if (through_submit(tr) or is_submit(func)) and not benign(err) then
                aborts[#aborts + 1] = where
            end
            others[#others + 1] = where
        end
        if what ~= "start" then recorded[tr] = nil end
    end
    jit.flush()   -- submit's traces are made anew, under watch
    jit.attach(record, "record")
    jit.attach(event, "trace")
    local wrong = 0   -- counted, not asserted, in the loop: LuaUnit's code stays out of its traces
    for i = 1, 1000 do
        if pool:submit(code, { a = i }) ~= i + 1 then wrong = wrong + 1 end
    end
    jit.attach(record)
    jit.attach(event)
    lu.assertEquals(wrong, 0)
    lu.assertEquals(table.concat(aborts, "; "), "", "traces through submit aborted")
    lu.assertTrue(compiled >= 1, "no trace through submit was compiled; aborts: " .. table.concat(others, "; "))
    local ch = channel.new()
    for i = 1, 2000 do
        local ctx = i % 3 == 0 and { a = i, f = function() return i end } or i % 3 == 1 and { a = i, ch = ch } or { a = i }
        lu.assertEquals(pool:submit(code, ctx), i + 1)
    end
    lu.assertTrue(pool:shutdown(5))
end

-- The pool crosses to other threads; they submit at once; every result is
-- counted.
function TestPool:test_submit_from_many_threads()
    local pool = Pool.new(2)
    local code = Pool.compile("return ctx.a + ctx.b")
    local threads = {}
    local n = SANITIZED and 200 or 1000
    for t = 1, 4 do
        threads[t] = Thread.new(function(pool, code, t, n)
            local sum = 0
            for i = 1, n do
                local r, err = pool:submit(code, { a = i, b = t })
                if not r then return nil, err end
                sum = sum + r
            end
            return sum
        end, pool, code, t, n)
    end
    for t = 1, 4 do
        lu.assertEquals({ threads[t]:join(60) }, { true, n * (n + 1) / 2 + n * t })
    end
    pool:shutdown()
end

function TestPool:test_shutdown()
    local pool = Pool.new(1)
    local slow = pool:submit_async(Pool.compile([[
        local t = os.clock() + 0.2 while os.clock() < t do end return "finished"
    ]]), {})
    Thread.sleep(0.02)
    local queued = pool:submit_async(Pool.compile("return 'queued'"), {})
    lu.assertTrue(pool:shutdown())
    lu.assertEquals(slow:wait(0), "finished")           -- running jobs finish
    lu.assertEquals({ queued:wait(0) }, { nil, "pool is shut down" })
    lu.assertEquals({ pool:submit(Pool.compile("return 1"), {}) }, { nil, "pool is shut down" })
    lu.assertEquals(pool:active_workers(), 0)
    -- past the grace time, running jobs are stopped
    local pool2 = Pool.new(1)
    local spinning = pool2:submit_async(Pool.compile("while true do end"), {})
    Thread.sleep(0.02)
    local s, ok = timed(pool2.shutdown, pool2, 0.1)
    lu.assertTrue(ok)
    lu.assertTrue(s < 1)
    lu.assertEquals({ spinning:wait(0) }, { nil, "pool is shut down" })
end

-- Cancelled jobs leave nothing behind: memory settles over many of them.
function TestPool:test_cancelled_jobs_do_not_leak()
    local pool = Pool.new(2)
    local spin = Pool.compile("local t = {} while true do t[#t % 100 + 1] = {} end")
    H.assert_memory_settles(lu, function()
        local job = pool:submit_async(spin, { payload = ("x"):rep(1000) })
        Thread.sleep(0.001)
        job:cancel()
        lu.assertEquals({ job:wait(5) }, { nil, "cancelled" })
    end, 50, 300, 4, "300 cancelled jobs")
    lu.assertEquals(pool:active_workers(), 2)
    lu.assertTrue(pool:shutdown())
end

function TestPool:test_pool_goes_with_its_last_handle()
    local pool = Pool.new(2)
    local id = pool:id()
    lu.assertEquals(Pool.get(id):submit("return 5", {}), 5)
    pool = nil
    lu.assertTrue(H.eventually_gone(id))
    lu.assertErrorMsgContains("no pool with id", Pool.get, id)
end

-- A cancel that comes as a job ends never reaches the worker's next job:
-- neither its poll (compiled code) nor its hook (plain bytecode), however
-- the cancel and the end of the job interleave.
function TestPool:test_late_cancel_never_stops_the_next_job()
    local pool = Pool.new(1)
    local N = SANITIZED and 150 or 400
    local forms = {
        compiled = Pool.compile("local s = 0 for i = 1, ctx.n do s = s + i end return ctx.i"),
        bytecode = string.dump(function() local s = 0 for i = 1, ctx.n do s = s + i end return ctx.i end),
    }
    local hits = 0
    for form, code in pairs(forms) do
        for i = 1, N do
            local job = pool:submit_async(code, { n = (i % 7) * 300, i = i })
            if i % 3 ~= 0 then Thread.sleep(0.00005 * (i % 5)) end
            if job:cancel() then hits = hits + 1 end
            local r = { job:wait(5) }
            lu.assertTrue(r[1] == i or r[2] == "cancelled", form .. ": " .. tostring(r[2]))
            lu.assertEquals({ pool:submit(code, { n = 50, i = -i }) }, { -i }, form .. ", the job after " .. i)
        end
    end
    lu.assertTrue(hits > 0, "no cancel reached a job")
    lu.assertEquals(pool:active_workers(), 1)
    lu.assertTrue(pool:shutdown(1))
end

-- submit reuses its outcome channel from job to job: a job that timed out
-- (its worker stuck in C) sends its outcome late, and no later submit may
-- take it for its own; nor may a failed job's end.
function TestPool:test_late_outcome_never_reaches_the_next_submit()
    local pool = Pool.new(2)
    local late = stuck_in_c(0.3, "late")
    local echo = Pool.compile("if ctx.fail then error('boom', 0) end return ctx.i")
    lu.assertEquals({ pool:submit(echo, { i = 0 }) }, { 0 })
    lu.assertEquals({ pool:submit(late, {}, { timeout = 0.05 }) }, { nil, "timeout" })
    local t0, i = H.now(), 0
    while H.now() - t0 < 0.6 do   -- past the late job's end
        i = i + 1
        local fail = i % 50 == 0
        local r = { pool:submit(echo, { i = i, fail = fail }) }
        if fail then
            lu.assertEquals(r[1], nil, "job " .. i)
            lu.assertStrContains(tostring(r[2]), "boom")
        else
            lu.assertEquals(r, { i }, "job " .. i)
        end
    end
    lu.assertTrue(pool:shutdown(5))
end

-- A pool whose last handle goes stops its running jobs at once (its jobs
-- hold its memory, not its handles): compiled code and plain bytecode.
function TestPool:test_last_handle_stops_running_jobs()
    local jobs = {}
    for _, code in ipairs { Pool.compile("while true do end"), string.dump(function() while true do end end) } do
        local pool = Pool.new(1)
        jobs[#jobs + 1] = pool:submit_async(code, {})
    end
    Thread.sleep(0.05)
    collectgarbage()
    collectgarbage()
    for i, job in ipairs(jobs) do
        local s, res, err = timed(job.wait, job, 5)
        lu.assertEquals({ res, err }, { nil, "pool is shut down" }, "job " .. i)
        lu.assertTrue(s < 1, ("job %d stopped after %.3f s"):format(i, s))
    end
    local cpu = cpu_while_idle(0.3)
    lu.assertTrue(cpu < 0.1, ("%.2f s of CPU over 0.3 s idle: a job still spins"):format(cpu))
end

-- Pools shut down (and kept) or dropped leave no thread behind (their
-- workers and their watchdog leave): memory settles over many of them.
function TestPool:test_pools_leave_no_thread_behind()
    local code = Pool.compile("return ctx")
    local n, kept = 0, {}
    H.assert_memory_settles(lu, function()
        n = n + 1
        local pool = Pool.new(1)
        lu.assertEquals(pool:submit(code, n), n)
        if n % 2 == 0 then
            lu.assertTrue(pool:shutdown(1))
            kept[#kept + 1] = pool
        end
        pool = nil
        collectgarbage()
    end, 40, 200, 8, "200 pools")
end

os.exit(lu.LuaUnit.run())
