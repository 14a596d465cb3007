-- ltask.bootstrap: starts the scheduler from the host state (SPEC section 7).
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
local Thread = require "lj-async.thread"

local C = core.C
local SPARE_STATES = 64   -- reset states of quit services kept for new ones

local M = {}
M._VERSION = shim.VERSION

local function configure(opts)
    if type(opts) ~= "table" then error("ltask: start takes a table of options", 3) end
    local config = {}
    for k, v in pairs(core.DEFAULTS) do config[k] = v end
    for k, v in pairs(opts) do
        if core.DEFAULTS[k] == nil then
            error("ltask: unknown option '" .. tostring(k) .. "'", 3)
        end
        config[k] = v
    end
    config.worker = config.worker or Thread.cpu_count()
    for _, k in ipairs { "worker", "inbox", "batch", "max_services" } do
        if not core.is_count(config[k], core.MAX[k]) then
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
    local shared = ffi.new("ltask_shared")
    local system = channel.new()
    shared.sched = C.lja_sched_new(config.max_services, 2 * config.worker, config.worker)
    shared.states = C.lja_states_new(SPARE_STATES)
    shared.system = system
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
    local ctx = { shared = shared, system_channel = system, workers = {}, config = config }
    local ok, root, file, code = pcall(core.new_service, shared, config, config.root, false, config.inbox, 1)
    if not ok then
        stop(ctx)
        error(root, 2)
    end
    shared.root = root
    ctx.root = root
    local n = args.n or #args
    local p, len = transfer.encode_after(3, n + 3, config.root, file, code, unpack(args, 1, n))
    local objs, nobjs = transfer.objs_array()
    transfer.forget_exported()   -- the message takes them, sent or not
    local rc = C.lja_sched_send(shared.sched, 0, root, C.LJA_SMSG_INIT, 0, p, len, objs, nobjs)
    if rc == C.LJA_SCHED_WOKE then rc = C.lja_sched_push(shared.sched, root) end
    if rc ~= C.LJA_OK then
        stop(ctx)
        error("ltask: cannot start: " .. shim.strerror(rc), 2)
    end
    local shared_arg, config_str = vm.pointer_arg(shared), buffer.encode(config)
    ctx.system = Thread.new(LOOP.system, shared_arg, config_str)
    for i = 1, config.worker do
        ctx.workers[i] = Thread.new(LOOP.worker, shared_arg, config_str, i - 1)
    end
    return ctx
end

-- Waits until every service has quit, then stops the workers.  With a
-- timeout (seconds), returns false, "timeout" if services still run (wait
-- again later); else true.
function M.wait(ctx, timeout)
    if type(ctx) ~= "table" or ctx.shared == nil then error("ltask: wait takes what start returned", 2) end
    local rc = C.lja_sched_wait(ctx.shared.sched, shim.timeout_arg(timeout, 2))
    if rc == C.LJA_ETIMEDOUT then return false, "timeout" end
    stop(ctx)
    ctx.shared = nil
    return true
end

return M
