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
local transfer = require "lj-async.transfer"
local core = require "ltask.core"

local C = core.C

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
    config.worker = config.worker or require("lj-async.thread").cpu_count()
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

function M.start(opts)
    local config, args = configure(opts)
    local sched = C.lja_sched_new(config.worker, config.max_services)
    if sched == nil then error("ltask: cannot make the scheduler (out of memory)", 2) end
    if config.logfile and C.lja_sched_set_log(sched, config.logfile) ~= C.LJA_OK then
        C.lja_sched_free(sched)
        error("ltask: cannot open the log file '" .. config.logfile .. "'", 2)
    end
    local ok, root, file, code = pcall(core.new_service, sched, config, config.root, false, config.inbox, 1)
    if not ok then
        C.lja_sched_free(sched)
        error(root, 2)
    end
    local n = args.n or #args
    local p, len = transfer.encode_after(3, n + 3, config.root, file, code, unpack(args, 1, n))
    local rc = C.lja_sched_send(sched, 0, root, C.LJA_SMSG_INIT, 0, p, len, transfer.objs_array())
    if rc == C.LJA_OK then
        transfer.forget_exported()   -- the message holds them now
        rc = C.lja_sched_start(sched)
    end
    if rc ~= C.LJA_OK then
        transfer.drop_exported()
        C.lja_sched_free(sched)
        error("ltask: cannot start: " .. shim.strerror(rc), 2)
    end
    return { sched = sched, root = root, config = config }
end

-- Waits until every service has quit, then stops the workers.  With a
-- timeout (seconds), returns false, "timeout" if services still run (wait
-- again later); else true.
function M.wait(ctx, timeout)
    if type(ctx) ~= "table" or ctx.sched == nil then error("ltask: wait takes what start returned", 2) end
    local rc = C.lja_sched_wait(ctx.sched, shim.timeout_arg(timeout, 2))
    if rc == C.LJA_ETIMEDOUT then return false, "timeout" end
    C.lja_sched_free(ctx.sched)
    ctx.sched = nil
    return true
end

return M
