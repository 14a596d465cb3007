-- ltask.core: what the host's bootstrap and every service share: the
-- scheduler's C ABI (csrc/sched.c), the configuration, and making a
-- service's state.
--
-- A service state is made by whoever spawns it (a service, or the host for
-- root), on the spawner's thread: a fresh lua_State with the standard
-- libraries, lj-async and ltask preloaded as bytecode; or the state of a
-- quit service, reset (lj-async.reset), which is much cheaper.  The
-- service's file is compiled once per spawner; the state runs it when its
-- first message (LJA_SMSG_INIT) brings it.
local ffi = require "ffi"
local buffer = require "string.buffer"
local shim = require "lj-async.shim"
local vm = require "lj-async.vm"

ffi.cdef [[
typedef struct lja_sched lja_sched;
enum {
    LJA_SMSG_REQUEST = 1,
    LJA_SMSG_POST = 2,
    LJA_SMSG_RESPONSE = 3,
    LJA_SMSG_ERROR = 4,
    LJA_SMSG_DEAD = 5,
    LJA_SMSG_TIMER = 6,
    LJA_SMSG_ROOM = 7,
    LJA_SMSG_KILL = 8,
    LJA_SMSG_NAME = 9,
    LJA_SMSG_INIT = 10
};
typedef struct lja_smsg {
    struct lja_smsg *next;
    double from;
    int32_t type;
    int32_t session;
    size_t len;
    char *data;
    int32_t nobjs;
    void *objs[];
} lja_smsg;
lja_sched *lja_sched_new(int workers, int64_t max_services);
int lja_sched_add(lja_sched *s, void *L, int exclusive, int64_t capacity, double *addr);
void *lja_sched_take_state(lja_sched *s);
int lja_sched_start(lja_sched *s);
int lja_sched_send(lja_sched *s, double from, double to, int type, int32_t session,
                   const char *data, size_t len, void *const *objs, int nobjs);
double lja_sched_self(void);
lja_smsg *lja_sched_pop(lja_sched *s, double self, int max);
void lja_sched_started(lja_sched *s, double self);
void lja_sched_msg_free(lja_smsg *m);
int lja_sched_timer(lja_sched *s, double addr, int32_t session, double seconds);
int lja_sched_kill(lja_sched *s, double addr);
int lja_sched_name_claim(lja_sched *s, const char *name, double claimer);
void lja_sched_name_bind(lja_sched *s, const char *name, double addr);
int lja_sched_name_query(lja_sched *s, const char *name, double waiter,
                         int32_t session, double *addr);
void lja_sched_log(lja_sched *s, double addr, const char *msg, size_t len);
int lja_sched_set_log(lja_sched *s, const char *path);
int lja_sched_wait(lja_sched *s, double timeout);
void lja_sched_free(lja_sched *s);
]]

local C = shim.C

-- libc's wall clock, for ltask.now (declared once per state; another
-- module may have declared clock_gettime already).
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } ltask_timespec;
int clock_gettime(int clock, ltask_timespec *ts);
]])
local CLOCK_REALTIME = 0

local M = { C = C }

-- Services get this module and the service API (ltask/init.lua, which
-- package.path may not find as "ltask") preloaded.
local here = debug.getinfo(1, "S").source:match("^@(.-)core%.lua$")
vm.ship("ltask.core", here and here .. "core.lua")
vm.ship("ltask", here and here .. "init.lua")

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

-- Upper bounds of the integer options: the scheduler's (csrc/sched.c), or
-- their C type's.
M.MAX = { worker = 1024, inbox = 2 ^ 53, batch = 2 ^ 31 - 1, max_services = 2 ^ 24 - 1 }

function M.is_count(v, max)
    return type(v) == "number" and v >= 1 and v <= max and v % 1 == 0
end

-- In a service state: the scheduler, this service's configuration.
M.sched, M.config = nil, nil

function M.attach(sched_arg, config_str)
    M.sched = ffi.cast("lja_sched *", vm.pointer_from_arg(sched_arg))
    M.config = buffer.decode(config_str)
end

local ts = ffi.new("ltask_timespec")

-- Seconds since the epoch, with the clock's resolution.
function M.wallclock()
    ffi.C.clock_gettime(CLOCK_REALTIME, ts)
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
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

local BOOT = vm.compile([[
local sched_arg, config = ...
local core = require "ltask.core"
core.attach(sched_arg, config)
require("ltask")._boot()
]], "ltask service boot")

local addr_out = ffi.new("double[1]")

-- Adds a service to the scheduler, in the state of a quit service or a new
-- one; returns its address, then its file's path and bytecode, which its
-- init message (the caller's to send) carries with the spawner's
-- arguments.  Raises at `level`.
function M.new_service(sched, config, name, exclusive, inbox, level)
    level = (level or 1) + 1
    if type(name) ~= "string" then error("ltask: a service name must be a string", level) end
    local code, file = service_code(name, config.service_path, level)
    local L = C.lja_sched_take_state(sched)
    if L == nil then L = vm.new(BOOT, vm.pointer_arg(sched), buffer.encode(config)) end
    local rc = C.lja_sched_add(sched, L, exclusive and 1 or 0, inbox or config.inbox, addr_out)
    if rc ~= C.LJA_OK then
        vm.close(L)
        local why = rc == C.LJA_EAGAIN and "too many services (max_services = " .. config.max_services .. ")"
            or shim.strerror(rc)
        error("ltask: cannot add service '" .. name .. "': " .. why, level)
    end
    return addr_out[0], file, code
end

return M
