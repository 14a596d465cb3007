-- ltask.bootstrap: starts the scheduler from the host state (README "ltask").
--
--   local boot = require "ltask.bootstrap"
--   local ctx = boot.start { worker = 2, service_path = "service/?.lua", root = "root", args = {} }
--   boot.wait(ctx)
--
-- start raises on a bad configuration or a root service that cannot be
-- loaded; wait returns once root and every service have quit (when root
-- quits, the others are killed).
local shim = require "lj-async.shim"
local ffi = require "ffi"
local buffer = require "string.buffer"
local transfer = require "lj-async.transfer"
local channel = require "lj-async.channel"
local vm = require "lj-async.vm"
local core = require "ltask.core"
local spawn = require "ltask.spawn"
-- Loaded here, so that service states get them preloaded (lj-async.vm
-- ships what is loaded).
require "lj-async.reset"
require "lj-async.transfer_encode"
require "lj-async.transfer_slow"

-- Threads (the workers, the system thread) and services get ltask's modules
-- preloaded, even where package.path does not find them.
local DIR = debug.getinfo(1, "S").source:match("^@(.-)bootstrap%.lua$")
for _, name in ipairs { "core", "worker", "system", "api", "spawn" } do vm.ship("ltask." .. name, DIR and DIR .. name .. ".lua") end
vm.ship("ltask", DIR and DIR .. "init.lua")
local Thread = require "lj-async.thread"

ffi.cdef [[
lja_sched *lja_sched_new(int64_t max_services, int ncells, int nwatched);
void lja_sched_shutdown(lja_sched *s);
void lja_sched_free(lja_sched *s);
lja_states *lja_states_new(int limit);
void lja_states_free(lja_states *st);
]]

local C = core.C
local SPARE_STATES = 64   -- reset states of quit services kept for new ones

local M = {}
M._VERSION = shim.VERSION

local function configure(opts)
    if type(opts) ~= "table" then error("ltask: start takes a table of options", 3) end
    local config = {}
    for k, v in pairs(spawn.DEFAULTS) do config[k] = v end
    for k, v in pairs(opts) do
        if spawn.DEFAULTS[k] == nil then
            error("ltask: unknown option '" .. tostring(k) .. "'", 3)
        end
        config[k] = v
    end
    config.worker = config.worker or Thread.cpu_count()
    for _, k in ipairs { "worker", "inbox", "batch", "max_services" } do
        if not spawn.is_count(config[k], core.MAX[k]) then
            error(("ltask: option '%s' must be a positive integer up to %d"):format(k, core.MAX[k]), 3)
        end
    end
    for _, k in ipairs { "service_path", "root" } do
        if type(config[k]) ~= "string" then error("ltask: option '" .. k .. "' must be a string", 3) end
    end
    if type(config.args) ~= "table" then error("ltask: option 'args' must be a list", 3) end
    local args = config.args
    config.args = nil   -- root's own: services get the rest
    if config.logfile and type(config.logfile) ~= "string" then
        error("ltask: option 'logfile' must be a path", 3)
    end
    return config, args
end

-- A service's state: the standard libraries, then this prelude, which
-- preloads lj-async's and ltask's modules from bytecode that the host
-- keeps (one copy per process, not per state: a state loads a module's
-- bytecode from the host's memory when it requires it), and boots the
-- service runtime.
local PRELUDE = string.dump(assert(load([==[   -- (stripped, as the modules below)
local path, cpath, libpath, shared, config, mods = ...
local collectgarbage = collectgarbage   -- not the one lj-async.reset watches from _boot on
jit.off()   -- booting runs once: compiling it would cost time and machine code
collectgarbage("stop")   -- booting makes little garbage: one collection (below) walks the heap for it
package.path, package.cpath = path, cpath
package.loaded["lj-async.libpath"] = libpath
local load_at = package.loadlib(libpath, "lja_lua_load")   -- in place: no copy (csrc/lua.c)
-- A lookup loads the module's chunk, which require then runs (a loader
-- that loads when called measured ~4 KB more per idle service).  mods
-- lists "\n<name> <address> <length>" lines: one string, no table per module.
setmetatable(package.preload, { __index = function(_, name)
    local at = mods:find("\n" .. name .. " ", 1, true)
    if not at then return nil end
    local p, len = mods:match("^(%d+) (%d+)", at + #name + 2)
    local f = load_at(p, len, "=" .. name)
    if type(f) ~= "function" then error(f, 0) end
    return f
end })
require("ltask.core").attach(tonumber(shared), config)
-- One collection, once the FFI's and core's declarations have grown their
-- tables: the rest of the boot reuses what they left (its peak is what
-- stays resident: ~8 KB less per service, for ~20 us of each fresh spawn).
collectgarbage()
collectgarbage("stop")   -- (the collection set a threshold)
require("ltask")._boot()
collectgarbage("restart")
jit.on()   -- for the service's own code (and again at each recycle: ltask/init.lua)
]==], "=ltask service prelude")), true)

-- Fills in shared how services' states are made; returns what must live
-- as long as the scheduler.
local function address(p)
    return tonumber(ffi.cast("uintptr_t", p))
end

-- The modules go to services stripped of their debug information (line
-- numbers, names of locals: a sixth of their memory in each service); a
-- traceback through them names the module without a line.
local function service_recipe(shared, shared_addr, config_str)
    local _, vmargs = vm.args("")   -- what lj-async.vm ships: path, cpath, libpath, n, name, bytecode...
    local mods, stripped = {}, {}
    for i = 5, 4 + 2 * tonumber(vmargs[4]), 2 do
        local bc = string.dump(assert(load(vmargs[i + 1])), true)
        stripped[#stripped + 1] = bc
        mods[#mods + 1] = ("\n%s %.0f %d"):format(vmargs[i], address(ffi.cast("const char *", bc)), #bc)
    end
    local args = { vmargs[1], vmargs[2], vmargs[3], ("%.0f"):format(shared_addr), config_str,
        table.concat(mods) }
    local n, ptrs, lens = vm.c_strings(args)
    shared.chunk, shared.chunk_len = PRELUDE, #PRELUDE
    shared.nargs, shared.args, shared.lens = n, ptrs, lens
    return { stripped, args, ptrs, lens }
end

local LOOP = {
    worker = function(...) return require("ltask.worker").worker(...) end,
    system = function(...) return require("ltask.system").run(...) end,
}

-- Stops the system thread and the workers (after every service has quit,
-- or before any ran), then frees the scheduler.
local function stop(ctx)
    local shared = ctx.shared
    if ctx.system then
        core.system(core.SYS_STOP, 0, 0, nil, shared)
        ctx.system:join()
    end
    C.lja_sched_shutdown(shared.sched)
    ctx.traces = {}   -- each worker loop's trace counts (ltask/worker.lua)
    for i = 1, #ctx.workers do
        local _, traces = ctx.workers[i]:join()
        ctx.traces[i] = traces
    end
    C.lja_states_free(shared.states)
    C.lja_sched_free(shared.sched)
end

function M.start(opts)
    local config, args = configure(opts)
    local box = ffi.new("ltask_shared[1]")
    local shared = box[0]   -- a reference into box, which ctx keeps
    local system, done = channel.new(), channel.new()
    shared.sched = C.lja_sched_new(config.max_services, spawn.cells(config.worker), config.worker)
    shared.states = C.lja_states_new(SPARE_STATES)
    shared.system, shared.done = system, done
    if shared.sched == nil or shared.states == nil then
        C.lja_states_free(shared.states)
        C.lja_sched_free(shared.sched)
        error("ltask: cannot make the scheduler (out of memory)", 2)
    end
    if config.logfile then
        local f = io.open(config.logfile, "a")
        if not f then
            C.lja_states_free(shared.states)
            C.lja_sched_free(shared.sched)
            error("ltask: cannot open the log file '" .. config.logfile .. "'", 2)
        end
        f:close()
    end
    local shared_addr, config_str = address(box), buffer.encode(config)
    local ctx = { shared = shared, box = box, system_channel = system, done_channel = done, workers = {}, config = config,
        recipe = service_recipe(shared, shared_addr, config_str) }
    local ok, root, file, code = pcall(spawn.new_service, shared, config, config.root, false, config.inbox, 1)
    if not ok then
        stop(ctx)
        error(root, 2)
    end
    shared.root = root
    ctx.root = root
    local n = args.n or #args
    local p, len = transfer.encode_after(4, n + 4, config.root, file, code, false, unpack(args, 1, n))
    local objs, nobjs = transfer.objs_array()
    transfer.forget_exported()   -- the message takes them, sent or not
    local rc = C.lja_sched_send(shared.sched, 0, root, C.LJA_SMSG_INIT, 0, p, len, objs, nobjs)
    if rc == C.LJA_SCHED_WOKE then rc = C.lja_sched_push(shared.sched, root) end
    if rc ~= C.LJA_OK then
        stop(ctx)
        error("ltask: cannot start: " .. shim.strerror(rc), 2)
    end
    ctx.system = Thread.new(LOOP.system, shared_addr, config_str)
    for i = 1, config.worker do
        ctx.workers[i] = Thread.new(LOOP.worker, shared_addr, config_str, i - 1)
    end
    return ctx
end

-- Waits until every service has quit, then stops the workers.  With a
-- timeout (seconds), returns false, "timeout" if services still run (wait
-- again later); else true.
function M.wait(ctx, timeout)
    if type(ctx) ~= "table" or ctx.shared == nil then error("ltask: wait takes what start returned", 2) end
    shim.timeout_arg(timeout, 2)   -- a bad timeout blames the caller
    local _, err = ctx.done_channel:recv(timeout)   -- closed by the last service's end (ltask/worker.lua)
    if err == "timeout" then return false, "timeout" end
    stop(ctx)
    ctx.shared = nil
    return true
end

return M
