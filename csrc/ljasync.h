/*
 * ljasync.h: the C ABI of lj-async's shim, and its single source.
 *
 * Flat API, one prefix (lja_), opaque handles, integer error codes.  The shim
 * never links LuaJIT: it calls the Lua C API the host binds (lja_lua_bind)
 * and passes lua_States as void *.  Lua code reaches it
 * through ffi.cdef; tests/test_abi.lua checks that every declaration there
 * matches this file.
 *
 * Durations are seconds (double).  A negative timeout means "wait forever",
 * zero means "do not block".
 */
#ifndef LJASYNC_H
#define LJASYNC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define LJA_API __attribute__((visibility("default")))
#else
#define LJA_API
#endif

/* Error codes: every int-returning call gives LJA_OK or one of these. */
enum {
    LJA_OK = 0,
    LJA_ETIMEDOUT = -1, /* the timeout passed first */
    LJA_ENOMEM = -2,    /* out of memory */
    LJA_EINVAL = -3,    /* bad argument */
    LJA_EAGAIN = -4,    /* nothing available now (empty, full) */
    LJA_ESYS = -5,      /* the OS refused (errno tells more) */
    LJA_ECLOSED = -6,   /* the object was closed */
    LJA_EBUSY = -7,     /* in use by another thread */
    LJA_ENOTFOUND = -8  /* no such id or name */
};

LJA_API const char *lja_strerror(int err);

/* ---- Version --------------------------------------------------------------
 * lj-async/shim.lua refuses, at load, a shim whose ABI is not the one its
 * modules were written for (README "Build, load, install").  Bump
 * LJA_ABI_VERSION, and the ABI in lj-async/shim.lua, whenever a declaration
 * in this file changes or is added.
 */
#define LJA_ABI_VERSION 4
LJA_API int lja_abi_version(void);     /* LJA_ABI_VERSION when the shim was built */
LJA_API const char *lja_version(void); /* the release, e.g. "0.1.0" (CMake's project version) */

/* ---- Clock (monotonic) ------------------------------------------------ */
LJA_API double lja_now(void);          /* seconds on the monotonic clock */
LJA_API void lja_sleep(double seconds);

/* ---- Threads ------------------------------------------------------------
 * A thread runs run(arg); when run returns, joiners wake; then
 * cleanup(cleanup_arg) runs on the same thread, so cleanup costs nobody a
 * wait.  A thread carries an input message (copied at start) and a result
 * message (copied by lja_thread_set_result).  The handle returned by start
 * holds one reference; lja_thread_release drops it (a running thread goes
 * on, detached, and frees itself at its end).
 */
typedef struct lja_thread lja_thread;
typedef void (*lja_thread_fn)(void *arg);

LJA_API int lja_thread_join(lja_thread *t, double timeout);
LJA_API void lja_thread_release(lja_thread *t);
LJA_API const char *lja_thread_input(lja_thread *t, size_t *len);
LJA_API int lja_thread_set_result(lja_thread *t, const char *data, size_t len);
LJA_API const char *lja_thread_result(lja_thread *t, size_t *len);
LJA_API lja_thread *lja_thread_self(void);  /* inside run: its thread; else NULL */
LJA_API uint64_t lja_thread_id(void);  /* small, unique per OS thread, from 1 */
LJA_API int lja_cpu_count(void);

/* Options of lja_thread_start (0/NULL: the default): the thread's name,
 * its stack size in bytes, the CPUs it may run on, and for threads that run
 * Lua, the period in VM instructions of a count hook that meets cancel and
 * pause requests (README: lj-async.thread).  LJA_EINVAL when the system
 * refuses the stack size or the CPUs. */
typedef struct lja_thread_opts {
    const char *name;
    size_t stack;
    const int *cpus;
    int ncpus;
    int step;
} lja_thread_opts;
LJA_API int lja_thread_start(lja_thread **out, lja_thread_fn run, void *arg,
                             lja_thread_fn cleanup, void *cleanup_arg,
                             const char *input, size_t input_len, const lja_thread_opts *opts);

/* Control from other threads.  A request (cancel, pause) is met at the
 * thread's next cancellation point: lja_thread_checkpoint, and the waits of
 * the shim's objects, which it wakes (they then return a timeout, keeping
 * what they had taken).  Once cancelled, every point is met again: the
 * waits return at once and lja_thread_checkpoint returns 1.  A cancel
 * returns LJA_EINVAL on a finished thread; pause waits until the thread is
 * paused (LJA_OK), finished (LJA_EINVAL) or the timeout passed; resume
 * withdraws a pause.  lja_thread_poll gives the calling thread's requests
 * (0 outside lja_thread threads); lja_thread_checkpoint pauses there while
 * a pause is asked and returns 1 once the thread is cancelled. */
enum { LJA_THREAD_CANCEL = 1, LJA_THREAD_PAUSE = 2 };
enum { LJA_THREAD_RUNNING, LJA_THREAD_PAUSED, LJA_THREAD_FINISHED, LJA_THREAD_CANCELLED };
LJA_API int lja_thread_cancel(lja_thread *t);
LJA_API int lja_thread_pause(lja_thread *t, double timeout);
LJA_API void lja_thread_resume(lja_thread *t);
LJA_API int lja_thread_state(lja_thread *t);          /* LJA_THREAD_RUNNING... */
LJA_API uint64_t lja_thread_handle_id(lja_thread *t); /* lja_thread_id() inside t */
LJA_API const char *lja_thread_name(lja_thread *t);   /* or NULL */
LJA_API int lja_thread_poll(void);
LJA_API int lja_thread_checkpoint(void);
/* Stores up to cap of the live threads in out, each with a reference to
 * release; returns how many live. */
LJA_API int lja_thread_list(lja_thread **out, int cap);

/* ---- Lua states ---------------------------------------------------------
 * The shim does not link LuaJIT: the host hands it, once per process, the
 * Lua C API functions it calls (lja_lua_bind copies them; the first bind
 * wins, and every host passes the same functions).
 *
 * lja_lua_new makes a state: standard libraries, then `chunk` (source or
 * bytecode) called with the string arguments.  On failure it returns NULL
 * and, if err is not NULL, a message to free with lja_free.
 *
 * Threads that run Lua: lja_lua_spawn starts a thread in L (taken over,
 * closed if the thread cannot start), a spare thread state or a new one whose
 * chunk left two functions in the registry: "lj-async.run" takes the
 * thread's input string and returns its result string, and true when a
 * cancel stopped the thread (its state is then LJA_THREAD_CANCELLED; the
 * cancel and step hooks are set on the state only during this call);
 * "lj-async.reset", called after joiners were woken, puts the state back as
 * it was and returns true when the state may serve another thread (it then
 * goes on the spare stack of thread states, lja_lua_spares, whose limit the
 * first call sets), false when it must be closed.  opts (or NULL) are
 * lja_thread_start's.
 */
typedef struct lja_lua_api {
    void *(*newstate)(void);
    void (*openlibs)(void *L);
    int (*loadbuffer)(void *L, const char *buf, size_t len, const char *name);
    void (*pushlstring)(void *L, const char *s, size_t len);
    int (*pcall)(void *L, int nargs, int nresults, int errfunc);
    const char *(*tolstring)(void *L, int idx, size_t *len);
    void (*getfield)(void *L, int idx, const char *k);
    void (*settop)(void *L, int idx);
    int (*toboolean)(void *L, int idx);
    void (*close)(void *L);
    int (*sethook)(void *L, void (*hook)(void *L, void *ar), int mask, int count);
    int (*error)(void *L);
    ptrdiff_t (*tointeger)(void *L, int idx);
    int registry_index;
    int (*getinfo)(void *L, const char *what, void *ar);
} lja_lua_api;

LJA_API void lja_lua_bind(const lja_lua_api *api);
LJA_API void *lja_lua_new(const char *chunk, size_t len, int nargs, const char *const *args,
                          const size_t *lens, char **err);
LJA_API void lja_lua_close(void *L);
/* A lua_CFunction (for package.loadlib): loads the chunk at (address,
 * length) named name in place; returns the function or the error message. */
LJA_API int lja_lua_load(void *L);
LJA_API void lja_free(void *p);
/* A stack of spare states (up to `limit`, at most 64) for whoever makes
 * states of one kind: push keeps L or, when full, closes it; pop gives one
 * or NULL; free closes the states kept. */
typedef struct lja_states lja_states;
LJA_API lja_states *lja_states_new(int limit);
LJA_API void lja_states_push(lja_states *st, void *L);
LJA_API void *lja_states_pop(lja_states *st);
LJA_API void lja_states_free(lja_states *st);

LJA_API lja_states *lja_lua_spares(int limit);
LJA_API int lja_lua_spawn(lja_thread **out, void *L, const char *input, size_t len,
                          const lja_thread_opts *opts);

/* ---- 64-bit atomics on caller-owned memory (sequentially consistent) --- */
LJA_API int64_t lja_atomic_load(const int64_t *p);
LJA_API void lja_atomic_store(int64_t *p, int64_t v);
LJA_API int64_t lja_atomic_add(int64_t *p, int64_t d);   /* returns the new value */
LJA_API int lja_atomic_cas(int64_t *p, int64_t expected, int64_t desired);

/* ---- Objects -------------------------------------------------------------
 * Every lj-async object (mutex, cond, semaphore, atomic, channel, state) is
 * reference counted and has a process-wide id.  Each handle in any state
 * holds one reference; a message in flight holds one for each object in it.
 * The object is destroyed when the last reference goes.  lja_object_get
 * finds a live object by id (and kind, or 0 for any) and returns it with a
 * new reference, or NULL.  Functions below that take `void *obj` take any
 * object.
 *
 * Every function that takes objs (lja_channel_send, lja_sched_send)
 * takes over their references
 * whatever it returns, but LJA_EINVAL for a bad objs or nobjs: a message
 * that is not sent releases them.  A caller that will try again retains
 * them again first.
 */
enum {
    LJA_KIND_MUTEX = 1,
    LJA_KIND_COND = 2,
    LJA_KIND_SEMAPHORE = 3,
    LJA_KIND_ATOMIC = 4,
    LJA_KIND_CHANNEL = 5,
    LJA_KIND_STATE = 6,
    LJA_KIND_POOL = 7,
    LJA_KIND_SHARED = 8
};

LJA_API uint64_t lja_object_id(void *obj);
LJA_API int lja_object_kind(void *obj);
LJA_API void *lja_object_get(uint64_t id, int kind);
LJA_API void lja_object_retain(void *obj);
LJA_API void lja_object_release(void *obj);
LJA_API int lja_object_set_name(void *obj, const char *name);  /* LJA_EBUSY if taken */
LJA_API const char *lja_object_name(void *obj);                /* or NULL */
LJA_API void *lja_object_find(const char *name, int kind);      /* new reference or NULL */

/* ---- Synchronization (README: lj-async.sync) --------------------------------------
 * Timeouts are measured on the monotonic clock.  Waits return LJA_OK or
 * LJA_ETIMEDOUT.  A mutex is not recursive; unlocking a mutex that is not
 * locked returns LJA_EINVAL.
 */
typedef struct lja_mutex lja_mutex;
typedef struct lja_cond lja_cond;
typedef struct lja_semaphore lja_semaphore;
typedef struct lja_atomic lja_atomic;

LJA_API lja_mutex *lja_mutex_new(void);
LJA_API int lja_mutex_lock(lja_mutex *m, double timeout);
LJA_API int lja_mutex_unlock(lja_mutex *m);
LJA_API lja_cond *lja_cond_new(void);
LJA_API int lja_cond_wait(lja_cond *c, lja_mutex *m, double timeout);
LJA_API void lja_cond_signal(lja_cond *c);
LJA_API void lja_cond_broadcast(lja_cond *c);
LJA_API lja_semaphore *lja_semaphore_new(int64_t count);
LJA_API int lja_semaphore_wait(lja_semaphore *s, double timeout);
LJA_API void lja_semaphore_post(lja_semaphore *s, int64_t n);
LJA_API lja_atomic *lja_atomic_new(int64_t value);
LJA_API int64_t *lja_atomic_cell(lja_atomic *a);  /* use with lja_atomic_load & co. */

/* ---- Channels (README: lj-async.channel) ---------------------------------------------
 * A channel is a FIFO of messages: bytes (the sender's encoding) plus the
 * objects the message holds references to.  Many senders and receivers.
 * capacity 0 means unbounded.  send copies the bytes (outside the channel's
 * lock) and takes over the references in objs; it returns LJA_OK,
 * LJA_ETIMEDOUT (full) or LJA_ECLOSED.  recv gives a message to read with
 * lja_msg_data and then free with lja_msg_free (which releases its objects),
 * or returns LJA_ETIMEDOUT, or LJA_ECLOSED once closed and drained.
 * recv_into is recv that copies a message of at most LJA_MSG_INLINE bytes
 * without objects into buf (which holds LJA_MSG_INLINE bytes) instead (then
 * *msg is NULL and *len its length): no allocation; with buf NULL it is
 * recv.  select receives as recv_into from the first of n channels with a
 * message, or returns LJA_ECLOSED for the first closed and drained one,
 * and sets *index.
 */
typedef struct lja_channel lja_channel;
typedef struct lja_msg lja_msg;
enum { LJA_MSG_INLINE = 48 };

LJA_API lja_channel *lja_channel_new(int64_t capacity);
LJA_API int lja_channel_send(lja_channel *ch, const char *data, size_t len,
                             void *const *objs, int nobjs, double timeout);
LJA_API int lja_channel_recv(lja_channel *ch, lja_msg **msg, double timeout);
LJA_API int lja_channel_recv_into(lja_channel *ch, lja_msg **msg, char *buf, size_t *len,
                                  double timeout);
LJA_API int lja_channel_select(lja_channel *const *chs, int n, int *index, lja_msg **msg,
                               char *buf, size_t *len, double timeout);
LJA_API void lja_channel_close(lja_channel *ch);
LJA_API int64_t lja_channel_len(lja_channel *ch);
LJA_API const char *lja_msg_data(lja_msg *msg, size_t *len);
LJA_API void lja_msg_free(lja_msg *msg);
/* An eventfd that the channel signals (adds 1) at every message sent and at
 * its close, while on (on = 1 adds it, 0 removes it; LJA_EBUSY if already
 * there, LJA_ENOTFOUND if not): an event loop's way to wait on a channel.
 * The caller removes it before closing the fd. */
LJA_API int lja_channel_watch_fd(lja_channel *ch, int fd, int on);

/* ---- Callable states (README: lj-async.state) ----------------------------------------
 * The shim keeps a state's lua_State and who is inside it.  enter returns
 * LJA_OK (the caller is now inside), LJA_EBUSY (timeout 0 and someone is
 * inside), LJA_ETIMEDOUT or LJA_ECLOSED.  close waits (up to timeout) for
 * the one inside, frees the state's name and hands back the lua_State for
 * the caller to close (NULL if already closed or the wait timed out).
 * interrupt makes the code running inside raise "interrupted" at its next
 * hook check outside lj-async's own functions.
 */
typedef struct lja_state lja_state;

LJA_API lja_state *lja_state_new(void *L);
LJA_API void *lja_state_lua(lja_state *st);
LJA_API int lja_state_enter(lja_state *st, double timeout);
LJA_API void lja_state_leave(lja_state *st);
LJA_API void *lja_state_close(lja_state *st, double timeout);
LJA_API int lja_state_interrupt(lja_state *st);

/* ---- Callback gates ------------------------------------------------------
 * A gate is a C function pointer of any (non-variadic, scalar-only)
 * signature whose calls are forwarded to one of n target functions of the
 * same signature, each used by one caller at a time: a caller takes a free
 * target (waiting if all are busy), calls it, and gives it back.
 * sig: return type then argument types, one letter each:
 *   v void, b/B int8/uint8, h/H int16/uint16, i/I int32/uint32,
 *   q/Q int64/uint64, f float, d double, p pointer.
 */
typedef struct lja_gate lja_gate;

LJA_API int lja_gate_new(lja_gate **out, const char *sig, int n);
LJA_API void *lja_gate_funcptr(lja_gate *g);
LJA_API void lja_gate_set_target(lja_gate *g, int i, void *fn);
LJA_API int lja_gate_quiesce(lja_gate *g, double timeout);
LJA_API void lja_gate_set_error(lja_gate *g, const char *msg, size_t len);
LJA_API size_t lja_gate_error(lja_gate *g, char *buf, size_t cap);
LJA_API void lja_gate_free(lja_gate *g);

/* ---- ltask's services (README "ltask") -----------------------------------
 * What ltask's scheduler (ltask/worker.lua) keeps in C: the table of live
 * services, each with its inbox, and a run queue.  Which service runs next,
 * where and when, is decided in Lua.
 *
 * Addresses are integers below 2^53, passed as double so that LuaJIT keeps
 * them plain numbers; 0 is "nobody".  An address is never reused while the
 * scheduler lives.  add returns LJA_EAGAIN when max_services are alive.
 *
 * Inboxes are FIFO (a KILL goes first); requests and posts count against a
 * service's capacity, every other message type is always accepted.  send
 * returns LJA_OK, LJA_SCHED_WOKE (sent, and the receiver was idle: the caller
 * must put it on a run queue; an exclusive receiver's own thread is woken
 * instead), LJA_EAGAIN (the inbox is full: the message is not queued; if
 * `from` is a service, its block stays as an LJA_SMSG_ROOM notice from
 * `from`, which pop hands to the receiver once its inbox has drained to
 * half) or LJA_ECLOSED (no such service).  pop moves a whole inbox to the
 * end of the receiver's own list `taken` (head, tail: the tail is read only
 * if the head is not NULL; linked through next; a KILL goes to its front)
 * and hands over in *waiters the ROOM notices due (to answer with
 * LJA_SMSG_ROOM, then free).  A service's first message is LJA_SMSG_INIT.
 *
 * After a dispatch, rest stops counting against the capacity the `handled`
 * requests and posts (until then they count, taken or not), and marks the
 * service idle, or returns LJA_SCHED_WOKE if it has messages (or `again`):
 * it must be queued again.  With `wait` (an exclusive service's thread) it
 * waits until a message comes.  wake_fd gives
 * an exclusive service an eventfd (-1: none) that a send to it signals when
 * it is idle, so its thread may wait in epoll on its inbox and its sockets
 * together (lj-async.asio); it is removed before the fd is closed.  close marks
 * a service dead (sends to it fail) and hands back its queued
 * messages, its ROOM notices and its lua_State; remove then frees its slot
 * and returns how many services are still alive.  at gives the address of
 * the live service in a slot (1 up; 0: none there now, -1: past the last).
 *
 * The run queue: push appends an address and wakes a parked worker; next
 * takes the first one, parked up to `timeout` if there is none (0 when it
 * timed out or a watched cell woke it, -1 once shut down).  spin polls
 * while the wait policy allows (7 to ~100 us, README "Benchmarks") until
 * the queue or one of the first `nwatched` cells is not empty, and says
 * whether it is.  Cells are
 * `ncells` doubles that the workers share as they like: cell sets cell i
 * to v (v < 0: only reads) and returns its old value, atomically; setting
 * a watched cell that was 0 also wakes one worker parked with no deadline,
 * if any.
 */
typedef struct lja_sched lja_sched;

enum {
    LJA_SMSG_REQUEST = 1,   /* a call: the receiver answers with RESPONSE or ERROR */
    LJA_SMSG_POST = 2,      /* a one-way send */
    LJA_SMSG_RESPONSE = 3,
    LJA_SMSG_ERROR = 4,
    LJA_SMSG_DEAD = 5,      /* the request's receiver quit before answering */
    LJA_SMSG_TIMER = 6,     /* a timer fired */
    LJA_SMSG_ROOM = 7,      /* `from`'s inbox has room again (pop's *waiters: `from` waits for room) */
    LJA_SMSG_KILL = 8,      /* the receiver must quit */
    LJA_SMSG_NAME = 9,      /* a name waited for was bound to `from` (0: failed; -1: claim it) */
    LJA_SMSG_INIT = 10      /* a new service's first message: answered as a REQUEST */
};

enum { LJA_SCHED_WOKE = 1 };      /* lja_sched_send, lja_sched_rest: queue the service */

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

LJA_API lja_sched *lja_sched_new(int64_t max_services, int ncells, int nwatched);
LJA_API int lja_sched_add(lja_sched *s, void *L, int exclusive, int64_t capacity, double *addr);
LJA_API void *lja_sched_state(lja_sched *s, double addr);
LJA_API int lja_sched_send(lja_sched *s, double from, double to, int type, int32_t session,
                           const char *data, size_t len, void *const *objs, int nobjs);
LJA_API void lja_sched_pop(lja_sched *s, double self, lja_smsg **taken, lja_smsg **waiters);
LJA_API void lja_sched_msg_free(lja_smsg *m);
LJA_API int lja_sched_rest(lja_sched *s, double addr, int handled, int again, int wait);
LJA_API void lja_sched_wake_fd(lja_sched *s, double addr, int fd);
LJA_API lja_smsg *lja_sched_close(lja_sched *s, double addr, void **L);
LJA_API int64_t lja_sched_remove(lja_sched *s, double addr);
LJA_API double lja_sched_at(lja_sched *s, int64_t slot);
LJA_API int lja_sched_push(lja_sched *s, double addr);
LJA_API double lja_sched_next(lja_sched *s, double timeout);
LJA_API int lja_sched_spin(lja_sched *s);
LJA_API double lja_sched_cell(lja_sched *s, int i, double v);
LJA_API void lja_sched_shutdown(lja_sched *s);  /* next returns -1 from now on */
LJA_API void lja_sched_free(lja_sched *s);

/* ---- Shared tables (README: lj-async.shared) ---------------------------------------
 * The contents live in one process-wide lua_State (the store) that
 * lj-async.shared drives through the Lua C API; the shim keeps the locks,
 * each table's slot in the store and the list of dead tables.
 * lja_shared_store publishes L as the store unless one exists, and returns
 * the store.  lja_shared_enter takes the store's lock once no other thread
 * holds the table (update), and returns slot * 4 + flags; lja_shared_leave
 * releases it and returns 1 when dead tables wait to be cleared.
 * lja_shared_lock and _unlock hold the table for this thread (nested calls
 * count) without the store's lock.  lja_shared_store_lock takes the store's
 * lock unless this thread holds it already.  lja_shared_dead_pop (under
 * the store lock) gives a table whose last reference went and its slot; the
 * caller clears the slot and calls lja_shared_free.
 */
typedef struct lja_shared lja_shared;

LJA_API void *lja_shared_store(void *L);
LJA_API lja_shared *lja_shared_new(void);
LJA_API lja_shared *lja_shared_global(void);   /* a new reference to shared.G */
LJA_API int lja_shared_enter(lja_shared *t);
LJA_API int lja_shared_leave(lja_shared *t);
LJA_API void lja_shared_lock(lja_shared *t);
LJA_API void lja_shared_unlock(lja_shared *t);
LJA_API void lja_shared_set_flags(lja_shared *t, int flags);   /* under the store lock */
LJA_API int lja_shared_store_lock(void);   /* 0, not locked, if this thread holds it */
LJA_API void lja_shared_store_unlock(void);
LJA_API lja_shared *lja_shared_dead_pop(int *slot);
LJA_API void lja_shared_free(lja_shared *t);

/* ---- Worker pools (README: `lj-async.pool`) ---------------------------------
 * The shim keeps a pool's memory, its lock and the count of its workers;
 * lj-async/pool.lua keeps the rest: the jobs and their cancel, the running
 * jobs, the worker loop, the watchdog, replacement and shutdown.
 * lja_pool_data gives two words of its own, used under the lock.  lja_pool_channel
 * gives the job queue (0) and the watchdog's wake-ups (1).  lock returns 1
 * once the pool is closed: by lja_pool_close (the queue closes, join fails)
 * or when the last handle goes (the wake-ups close too).
 *
 * A worker joins (counted in the size, which lja_pool_size changes by d and
 * returns, 0 once closed; LJA_ECLOSED once closed) and leaves (counted:
 * unless it was replaced).  Whatever else uses the pool's memory after its
 * last handle (the watchdog, a job) holds it, and leaves uncounted.
 * lja_lua_cancel makes the code running in L raise "lj-async: job
 * cancelled" at every VM instruction outside lj-async's own code, until
 * its hook is cleared.
 */
typedef struct lja_pool lja_pool;

LJA_API lja_pool *lja_pool_new(void);
LJA_API lja_channel *lja_pool_channel(lja_pool *p, int watch);
LJA_API void **lja_pool_data(lja_pool *p);
LJA_API int lja_pool_lock(lja_pool *p);
LJA_API void lja_pool_unlock(lja_pool *p);
LJA_API void lja_pool_close(lja_pool *p);
LJA_API int lja_pool_join(lja_pool *p);
LJA_API void lja_pool_hold(lja_pool *p);
LJA_API void lja_pool_leave(lja_pool *p, int counted);
LJA_API int lja_pool_size(lja_pool *p, int d);
LJA_API void lja_lua_cancel(void *L);

#ifdef __cplusplus
}
#endif
#endif
