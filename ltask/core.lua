-- ltask.core: what every ltask state shares (the host's bootstrap, the
-- workers, the system thread, the services): the shim's ABI for services
-- (csrc/sched.c), the constants, the configuration, where a woken service
-- goes (the scheduling policy's one rule that services apply too), the
-- system thread's requests (timers, names, the log).  Making a service
-- (ltask/spawn.lua) loads on first need: a service that spawns none stays
-- smaller.
local shim = require "lj-async.shim"
local ffi = require "ffi"
local buffer = require "string.buffer"

-- What every state needs; the workers, the system thread and the host
-- declare the rest.
ffi.cdef [[
typedef struct lja_sched lja_sched;
typedef struct lja_states lja_states;
typedef struct lja_channel lja_channel;
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
enum { LJA_SCHED_WOKE = 1 };
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
int lja_sched_send(lja_sched *s, double from, double to, int type, int32_t session,
                   const char *data, size_t len, void *const *objs, int nobjs);
void lja_sched_pop(lja_sched *s, double self, lja_smsg **taken, lja_smsg **waiters);
void lja_sched_msg_free(lja_smsg *m);
int lja_sched_push(lja_sched *s, double addr);
int lja_sched_rest(lja_sched *s, double addr, int handled, int again, int wait);
void lja_sched_wake_fd(lja_sched *s, double addr, int fd);
double lja_sched_cell(lja_sched *s, int i, double v);
void lja_lua_close(void *L);
int lja_channel_send(lja_channel *ch, const char *data, size_t len,
                     void *const *objs, int nobjs, double timeout);
void lja_object_retain(void *obj);
double lja_now(void);

typedef struct ltask_shared {
    void *sched, *states, *system;   /* lja_sched, lja_states (of quit services), lja_channel */
    void *done;                      /* lja_channel, closed when no service is left */
    double root;
    /* how a service's state is made: lja_lua_new's arguments (ltask.bootstrap) */
    const char *chunk;
    size_t chunk_len;
    int nargs;
    const char **args;
    size_t *lens;
} ltask_shared;
]]

local C = shim.C
local send_c, push_c, cell_c = C.lja_sched_send, C.lja_sched_push, C.lja_sched_cell
local WOKE = C.LJA_SCHED_WOKE

local M = { C = C }

-- What a service's dispatch returns to its worker.
M.DISPATCH_WAIT, M.DISPATCH_AGAIN, M.DISPATCH_QUIT = 0, 1, 2

-- Requests to the system thread (ltask/system.lua).
M.SYS_TIMER, M.SYS_LOG, M.SYS_QUERY, M.SYS_UNIQUE, M.SYS_BIND, M.SYS_DROP, M.SYS_EXCLUSIVE, M.SYS_STOP =
    1, 2, 3, 4, 5, 6, 7, 8

-- The scheduler's cells: worker i's next slot is cell i, the count of its
-- dispatches cell nworkers + i; cell 2 * nworkers is 1 once a service quit.
M.NO_SLOT = -1   -- a service that no worker runs (exclusive): wakes go to the run queue

function M.quits_seen()
    return cell_c(M.sched, 2 * M.config.worker, -1) ~= 0
end

function M.saw_quit(sched)
    cell_c(sched, 2 * M.config.worker, 1)
end

-- Upper bounds of the integer options: the scheduler's (csrc/sched.c), or
-- their C type's.
M.MAX = { worker = 1024, inbox = 2 ^ 53, batch = 2 ^ 31 - 1, max_services = 2 ^ 24 - 1 }

-- In every state but the host's: what start{} shared (its address, a
-- number: user-space addresses fit in a double), the configuration.
M.shared, M.sched, M.config = nil, nil, nil

function M.attach(shared_addr, config_str)
    M.shared = ffi.cast("ltask_shared *", shared_addr)
    M.sched = ffi.cast("lja_sched *", M.shared.sched)
    M.config = buffer.decode(config_str)
end

-- Seconds since the epoch, with the clock's resolution: libc's wall clock,
-- declared at the first use (a service that logs nothing never does;
-- another module may have declared clock_gettime already).
local ts
function M.wallclock()
    if not ts then
        pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } ltask_timespec;
int clock_gettime(int clock, ltask_timespec *ts);
]])
        ts = ffi.new("ltask_timespec")
    end
    ffi.C.clock_gettime(0, ts)   -- CLOCK_REALTIME
    return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

-- A service woken by a send (LJA_SCHED_WOKE) goes to the next slot of the
-- worker that runs the sender (`slot`), so that a call and its reply run
-- on one thread with no wake-up of another (a futex wake costs
-- microseconds, a switch between states a fraction of one); what was in
-- the slot, or a service woken elsewhere, goes to the run queue.  Filling
-- an empty slot wakes an idle worker parked for good (csrc/sched.c), to
-- watch the slot: it takes it over if it waits behind a long dispatch
-- (ltask/worker.lua).
function M.schedule(sched, addr, slot)
    if slot >= 0 then
        local old = cell_c(sched, slot, addr)
        if old == 0 then return end
        addr = old
    end
    push_c(sched, addr)
end
local schedule = M.schedule

-- Sends a message that carries no values nor objects (replies the runtime
-- makes, timers, names); false if `to` is gone.
function M.signal(sched, from, to, kind, session, slot)
    local rc = send_c(sched, from, to, kind, session, nil, 0, nil, 0)
    if rc == WOKE then schedule(sched, to, slot) end
    return rc >= 0
end

-- Answers a message that will never be served: a request with "dead", a
-- notice that its sender waits for room with ROOM (it sends again, and
-- learns that addr is gone); frees it.
function M.refuse(sched, addr, m, slot)
    local kind = m.type
    if (kind == C.LJA_SMSG_REQUEST or kind == C.LJA_SMSG_INIT) and m.from >= 1 then
        M.signal(sched, addr, m.from, C.LJA_SMSG_DEAD, m.session, slot)
    elseif kind == C.LJA_SMSG_ROOM then
        M.signal(sched, addr, m.from, kind, 0, slot)
    end
    C.lja_sched_msg_free(m)
end

-- Refuses (above) every message of a list linked through next: those
-- queued for a service that quit, or the ROOM notices of its senders.
function M.refuse_list(sched, addr, m, slot)
    while m ~= nil do
        local next_m = m.next
        M.refuse(sched, addr, m, slot)
        m = next_m
    end
end

local sysbuf = buffer.new()

-- A request to the system thread: op, address, session, then one more
-- value (`shared`: the host's, else this state's).
function M.system(op, addr, session, x, shared)
    sysbuf:reset():encode(op):encode(addr):encode(session):encode(x)
    local p, len = sysbuf:ref()
    C.lja_channel_send((shared or M.shared).system, p, len, nil, 0, -1)
end

function M.log(addr, text)
    M.system(M.SYS_LOG, addr, M.wallclock(), text)
end

return M
