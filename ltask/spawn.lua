-- ltask.spawn: making a service (the host's bootstrap for root, a service
-- for the services it spawns) and the configuration that start{} checks.
-- Loaded on first need (ltask/api.lua), so that a service that spawns none
-- does not hold it.
--
-- A service state is made by whoever spawns it, on the spawner's thread:
-- the state of a quit service, reset (lj-async.reset), or a fresh
-- lua_State made as ltask.bootstrap says.  The service's file is compiled
-- once per spawner; the state runs it when its first message
-- (LJA_SMSG_INIT) brings it.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local core = require "ltask.core"

ffi.cdef [[
int lja_sched_add(lja_sched *s, void *L, int exclusive, int64_t capacity, double *addr);
void *lja_states_pop(lja_states *st);
void *lja_lua_new(const char *chunk, size_t len, int nargs, const char *const *args,
                  const size_t *lens, char **err);
void lja_free(void *p);
]]

local C = core.C

local M = {}

-- The scheduler's cells (ltask/core.lua says what each holds).
function M.cells(nworkers)
    return 2 * nworkers + 1
end

-- Configuration: start{} fills these (false: none given); services get a copy.
M.DEFAULTS = {
    worker = false,        -- number of worker threads (default: the CPU count)
    service_path = "service/?.lua",
    root = "root",
    args = {},
    inbox = 1024,          -- a service's inbox: queued requests and sends
    batch = 64,            -- messages a service handles before it yields its worker
    max_services = 65536,  -- services alive at once
    logfile = false,       -- path to append the log to (default: stderr)
}

function M.is_count(v, max)
    return type(v) == "number" and v >= 1 and v <= max and v % 1 == 0
end

local file_bytecode = {}   -- path -> bytecode, per spawner state

local function service_code(name, path, level)
    local file, err = package.searchpath(name, path)
    if not file then error("ltask: cannot find service '" .. name .. "':" .. err, level + 1) end
    local bc = file_bytecode[file]
    if not bc then
        local f, lerr = loadfile(file)
        if not f then error("ltask: cannot load service '" .. name .. "': " .. lerr, level + 1) end
        bc = string.dump(f)
        file_bytecode[file] = bc
    end
    return bc, file
end

local addr_out, err_out = ffi.new("double[1]"), ffi.new("char *[1]")

-- Adds a service to the scheduler, in the state of a quit service or a new
-- one; returns its address, then its file's path and bytecode, which its
-- init message (the caller's to send) carries with the spawner's
-- arguments.  An exclusive service's thread is started by the system
-- thread.  Raises at `level`.
function M.new_service(shared, config, name, exclusive, inbox, level)
    level = (level or 1) + 1
    if type(name) ~= "string" then error("ltask: a service name must be a string", level) end
    local code, file = service_code(name, config.service_path, level)
    local L = C.lja_states_pop(shared.states)
    if L == nil then
        L = C.lja_lua_new(shared.chunk, shared.chunk_len, shared.nargs, shared.args, shared.lens, err_out)
        if L == nil then
            local msg = err_out[0] ~= nil and ffi.string(err_out[0]) or "out of memory"
            C.lja_free(err_out[0])
            error("ltask: cannot make a state for service '" .. name .. "': " .. msg, level)
        end
    end
    local rc = C.lja_sched_add(shared.sched, L, exclusive and 1 or 0, inbox or config.inbox, addr_out)
    if rc ~= C.LJA_OK then
        C.lja_lua_close(L)
        local why = rc == C.LJA_EAGAIN and "too many services (max_services = " .. config.max_services .. ")"
            or shim.strerror(rc)
        error("ltask: cannot add service '" .. name .. "': " .. why, level)
    end
    local addr = addr_out[0]
    if exclusive then core.system(core.SYS_EXCLUSIVE, addr, 0, nil) end
    return addr, file, code
end

return M
