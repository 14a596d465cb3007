-- lj-async.sync: mutex, condition, semaphore and int64 atomic, shared by
-- any thread or state (README: lj-async.sync).  Timeouts in seconds (nil: forever,
-- 0: do not block) on the monotonic clock; waits return true, or false when
-- the timeout passed.  Bad arguments raise errors.  In a cancelled lj-async
-- thread a wait returns at once and, unless it got what it waited for,
-- raises the cancel (check_cancel).
local shim = require "lj-async.shim"
local ffi = require "ffi"
local object = require "lj-async.object"

ffi.cdef [[
typedef struct lja_mutex lja_mutex;
typedef struct lja_cond lja_cond;
typedef struct lja_semaphore lja_semaphore;
typedef struct lja_atomic lja_atomic;
lja_mutex *lja_mutex_new(void);
int lja_mutex_lock(lja_mutex *m, double timeout);
int lja_mutex_unlock(lja_mutex *m);
lja_cond *lja_cond_new(void);
int lja_cond_wait(lja_cond *c, lja_mutex *m, double timeout);
void lja_cond_signal(lja_cond *c);
void lja_cond_broadcast(lja_cond *c);
lja_semaphore *lja_semaphore_new(int64_t count);
int lja_semaphore_wait(lja_semaphore *s, double timeout);
void lja_semaphore_post(lja_semaphore *s, int64_t n);
lja_atomic *lja_atomic_new(int64_t value);
int64_t *lja_atomic_cell(lja_atomic *a);
int64_t lja_atomic_load(const int64_t *p);
void lja_atomic_store(int64_t *p, int64_t v);
int64_t lja_atomic_add(int64_t *p, int64_t d);
int lja_atomic_cas(int64_t *p, int64_t expected, int64_t desired);
]]

local C = shim.C
local LJA_OK = C.LJA_OK
local timeout_arg, check_cancel = shim.timeout_arg, shim.check_cancel
local type, tostring, error, istype = type, tostring, error, ffi.istype

local M = {}
M._VERSION = shim.VERSION

local MAX_COUNT = 2 ^ 53   -- semaphore counts: exact in a double

-- A count argument from `min` to 2^53, else raises at the caller of the
-- function that checks it.
local function count_arg(n, min, what)
    if not (type(n) == "number" and n >= min and n <= MAX_COUNT and n % 1 == 0) then
        error(("lj-async: %s must be an integer from %d to 2^53, got %s"):format(what, min,
            type(n) == "number" and tostring(n) or type(n)), 3)
    end
    return n
end

local function made(p, what)
    if p == nil then error("lj-async: cannot make a " .. what .. " (out of memory)", 3) end
    return p
end

-- mutex ---------------------------------------------------------------------

local Mutex = {}
local wrap_mutex = object.define("mutex", "lj-async.sync", C.LJA_KIND_MUTEX, "struct lja_mutex", Mutex)

function Mutex:lock(timeout)
    if C.lja_mutex_lock(self, timeout_arg(timeout, 2)) == LJA_OK then return true end
    check_cancel()
    return false
end

function Mutex:trylock()
    return C.lja_mutex_lock(self, 0) == LJA_OK
end

function Mutex:unlock()
    if C.lja_mutex_unlock(self) ~= LJA_OK then error("lj-async: unlock of a mutex that is not locked", 2) end
end

Mutex.id = object.id

function M.mutex()
    return wrap_mutex(made(C.lja_mutex_new(), "mutex"))
end

-- condition -----------------------------------------------------------------

local Cond = {}
local wrap_cond = object.define("cond", "lj-async.sync", C.LJA_KIND_COND, "struct lja_cond", Cond)
local mutex_ct = ffi.typeof("struct lja_mutex *")

-- Waits for a signal; m must be locked by the caller and is locked again
-- on return, also after a timeout.
function Cond:wait(m, timeout)
    if not ffi.istype(mutex_ct, m) then error("lj-async: cond:wait needs a lj-async mutex", 2) end
    local rc = C.lja_cond_wait(self, m, timeout_arg(timeout, 2))
    if rc == C.LJA_EINVAL then error("lj-async: cond:wait with a mutex that is not locked", 2) end
    if rc == LJA_OK then return true end
    check_cancel()   -- m is locked again: a cleanup may unlock it
    return false
end

Cond.signal = C.lja_cond_signal
Cond.broadcast = C.lja_cond_broadcast
Cond.id = object.id

function M.cond()
    return wrap_cond(made(C.lja_cond_new(), "cond"))
end

-- semaphore -----------------------------------------------------------------

local Semaphore = {}
local wrap_semaphore = object.define("semaphore", "lj-async.sync", C.LJA_KIND_SEMAPHORE,
    "struct lja_semaphore", Semaphore)

function Semaphore:wait(timeout)
    if C.lja_semaphore_wait(self, timeout_arg(timeout, 2)) == LJA_OK then return true end
    check_cancel()
    return false
end

-- Adds n (default 1) to the count, which stops at 2^63 - 1.
function Semaphore:post(n)
    C.lja_semaphore_post(self, n == nil and 1 or count_arg(n, 1, "semaphore:post: the count"))
end

Semaphore.id = object.id

function M.semaphore(n)
    n = n == nil and 0 or count_arg(n, 0, "sync.semaphore: the initial count")
    return wrap_semaphore(made(C.lja_semaphore_new(n), "semaphore"))
end

-- atomic ----------------------------------------------------------------------
-- Every operation is a real C11 atomic behind an FFI call: a plain FFI load
-- could be hoisted out of a polling loop by the JIT.  Values are int64
-- cdata (compare with ==, convert with tonumber).

local Atomic = {}
local wrap_atomic = object.define("atomic", "lj-async.sync", C.LJA_KIND_ATOMIC, "struct lja_atomic", Atomic)
local cell = C.lja_atomic_cell
local int64_ct, uint64_ct = ffi.typeof("int64_t"), ffi.typeof("uint64_t")
-- (no ULL literal here: PUC Lua must parse this file far enough to be told it needs LuaJIT)
local TWO63 = 2 ^ 63
local INT64_MAX = ffi.new(uint64_ct, TWO63) - 1

-- An int64 argument: an integral number or an int64/uint64 cdata within
-- int64's range; else raises at the caller of the function that checks it
-- (a double or a large uint64 would be truncated or wrapped silently).
local function int64_arg(v, what)
    if type(v) == "number" then
        if v >= -TWO63 and v < TWO63 and v % 1 == 0 then return v end
        error(("lj-async: %s must be an integer from -2^63 to 2^63-1, got %s"):format(what, tostring(v)), 3)
    end
    if istype(int64_ct, v) or (istype(uint64_ct, v) and v <= INT64_MAX) then return v end
    error(("lj-async: %s must be an integer, got %s"):format(what,
        istype(uint64_ct, v) and tostring(v) or type(v)), 3)
end

function Atomic:get()
    return C.lja_atomic_load(cell(self))
end

function Atomic:set(v)
    C.lja_atomic_store(cell(self), int64_arg(v, "atomic:set: the value"))
end

-- Adds d and returns the new value.
function Atomic:add(d)
    return C.lja_atomic_add(cell(self), int64_arg(d, "atomic:add: the increment"))
end

function Atomic:cas(old, new)
    return C.lja_atomic_cas(cell(self), int64_arg(old, "atomic:cas: the expected value"),
        int64_arg(new, "atomic:cas: the new value")) ~= 0
end

Atomic.id = object.id

function M.atomic(v)
    v = v == nil and 0 or int64_arg(v, "sync.atomic: the initial value")
    return wrap_atomic(made(C.lja_atomic_new(v), "atomic"))
end

return M
