/* lua.c: making Lua states and running them on threads, through Lua C API
 * functions that the host hands over (the shim never links LuaJIT).
 *
 * Documented global state: the bound API, and a stack of spare thread
 * states, reset after each thread, so that a thread's start costs no state
 * making (~60 us here, most of it in luaL_openlibs) and its end no
 * lua_close. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SPARE_MAX 64

/* A stack of spare states, shared by threads; the one kind of state
 * recycling in the shim (lj-async.thread's and ltask's). */
struct lja_states {
    pthread_mutex_t lock;
    int count, limit;
    void *L[SPARE_MAX];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static lja_lua_api api;           /* set once, before any state exists */

/* Of thread states; its limit is set by the first lja_lua_spares. */
static lja_states spare = { PTHREAD_MUTEX_INITIALIZER, 0, -1, { NULL } };

void lja_lua_bind(const lja_lua_api *a)
{
    pthread_mutex_lock(&lock);
    if (!api.newstate && a && a->newstate)
        api = *a;
    pthread_mutex_unlock(&lock);
}

void lja_free(void *p)
{
    free(p);
}

char *lja_copy(const char *s, size_t len)
{
    char *c = malloc(len + 1);
    if (c) {
        if (len)
            memcpy(c, s, len);
        c[len] = '\0';
    }
    return c;
}

void *lja_lua_new(const char *chunk, size_t len, int nargs, const char *const *args,
                  const size_t *lens, char **err)
{
    if (err)
        *err = NULL;
    if (!api.newstate || !chunk || nargs < 0) {
        if (err)
            *err = lja_copy("the Lua API is not bound", 24);
        return NULL;
    }
    void *L = api.newstate();
    if (!L) {
        if (err)
            *err = lja_copy("out of memory", 13);
        return NULL;
    }
    api.openlibs(L);
    int rc = api.loadbuffer(L, chunk, len, "=lj-async");
    if (rc == 0) {
        for (int i = 0; i < nargs; i++)
            api.pushlstring(L, args[i], lens[i]);
        rc = api.pcall(L, nargs, 0, 0);
    }
    if (rc != 0) {
        if (err) {
            size_t mlen = 0;
            const char *msg = api.tolstring(L, -1, &mlen);
            *err = msg ? lja_copy(msg, mlen) : lja_copy("error", 5);
        }
        api.close(L);
        return NULL;
    }
    api.settop(L, 0);
    return L;
}

/* A lua_CFunction that a state takes with package.loadlib: loads the chunk
 * at (address, length) named `name`, read in place, and returns the
 * function (or the error message).  A service state loads its modules from
 * the host's bytecode so, with no Lua string copy of each that would be
 * garbage at once, and the state's heap would peak higher than it stays
 * (README: ltask). */
int lja_lua_load(void *L)
{
    const char *p = (const char *)(uintptr_t)api.tointeger(L, 1);
    size_t len = (size_t)api.tointeger(L, 2);
    api.loadbuffer(L, p, len, api.tolstring(L, 3, NULL));
    return 1;
}

void lja_lua_close(void *L)
{
    if (L)
        api.close(L);
}

static int spare_limit(int limit)
{
    return limit < 0 ? 0 : limit > SPARE_MAX ? SPARE_MAX : limit;
}

lja_states *lja_states_new(int limit)
{
    lja_states *st = calloc(1, sizeof *st);
    if (st) {
        pthread_mutex_init(&st->lock, NULL);
        st->limit = spare_limit(limit);
    }
    return st;
}

lja_states *lja_lua_spares(int limit)
{
    pthread_mutex_lock(&spare.lock);
    if (spare.limit < 0)
        spare.limit = spare_limit(limit);
    pthread_mutex_unlock(&spare.lock);
    return &spare;
}

void lja_states_push(lja_states *st, void *L)
{
    pthread_mutex_lock(&st->lock);
    int kept = st->count < st->limit;
    if (kept)
        st->L[st->count++] = L;
    pthread_mutex_unlock(&st->lock);
    if (!kept)
        lja_lua_close(L);
}

void *lja_states_pop(lja_states *st)
{
    pthread_mutex_lock(&st->lock);
    void *L = st->count > 0 ? st->L[--st->count] : NULL;
    pthread_mutex_unlock(&st->lock);
    return L;
}

void lja_states_free(lja_states *st)
{
    if (!st)
        return;
    while (st->count > 0)
        lja_lua_close(st->L[--st->count]);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* Lua 5.1's LUA_MASKCOUNT: the hook runs every `count` VM instructions. */
#define LUA_MASKCOUNT (1 << 3)

/* The head of Lua 5.1's lua_Debug (LuaJIT keeps it), up to the field read
 * here; the hook's own record is filled in place. */
struct lua_debug_head {
    int event;
    const char *name, *namewhat, *what, *source;
};

/* Whether the function running in L at a hook is lj-async's own code: a
 * chunk lj-async named ("=lj-async...") or a file in a directory named
 * lj-async.  Interrupts and cancels are not raised there but at the next
 * instruction of the user's code: a message that lj-async received is then decoded and
 * in the user's hands, never lost in between (README: lj-async.state). */
static int in_lj_async(void *L, void *ar)
{
    static const char dir[] = "lj-async/";
    if (!api.getinfo(L, "S", ar))
        return 0;
    const char *src = ((struct lua_debug_head *)ar)->source;
    if (!src)
        return 0;
    if (strncmp(src, "=lj-async", 9) == 0)
        return 1;
    const char *slash = strrchr(src, '/');
    size_t n = sizeof dir - 1;
    return src[0] == '@' && slash && (size_t)(slash + 1 - src) > n &&
           strncmp(slash + 1 - n, dir, n) == 0 && (slash - n == src || slash[-(ptrdiff_t)n] == '/');
}

/* Raises msg in L at the hook, outside lj-async's own code (else the hook
 * stays set: the next instruction checks again).  An interrupt is raised
 * once.  A cancel stays set, at every instruction: a job that catches the
 * error meets it again at its next instruction, so no pcall loop can
 * swallow it (README: lj-async.thread). */
static void raise_at_hook(void *L, void *ar, const char *msg, int once)
{
    if (in_lj_async(L, ar))
        return;
    if (once)
        api.sethook(L, NULL, 0, 0);
    api.pushlstring(L, msg, strlen(msg));
    api.error(L);
}

static void interrupt_hook(void *L, void *ar)
{
    raise_at_hook(L, ar, "interrupted", 1);
}

static void cancel_hook(void *L, void *ar)
{
    raise_at_hook(L, ar, "lj-async: job cancelled", 0);
}

static void thread_cancel_hook(void *L, void *ar)
{
    raise_at_hook(L, ar, "lj-async: thread cancelled", 0);
}

void lja_lua_interrupt(void *L)
{
    api.sethook(L, interrupt_hook, LUA_MASKCOUNT, 1);
}

void lja_lua_cancel(void *L)
{
    api.sethook(L, cancel_hook, LUA_MASKCOUNT, 1);
}

void lja_lua_cancel_thread(void *L)
{
    api.sethook(L, thread_cancel_hook, LUA_MASKCOUNT, 1);
}

/* A thread's step option: a cancellation point every `step` instructions. */
static void step_hook(void *L, void *ar)
{
    if (lja_thread_poll() && lja_thread_checkpoint())
        thread_cancel_hook(L, ar);
}

void lja_lua_step(void *L, int step)
{
    api.sethook(L, step_hook, LUA_MASKCOUNT, step);
}

void lja_lua_clear_hook(void *L)
{
    if (L)
        api.sethook(L, NULL, 0, 0);
}

/* registry["lj-async.run"](input) returns the result message, and true
 * when a cancel stopped the thread's function.  The cancel and step hooks
 * are on L only during that call. */
static void run_thread(void *L)
{
    lja_thread *t = lja_thread_self();
    size_t len, rlen;
    const char *input = lja_thread_input(t, &len);
    api.getfield(L, api.registry_index, "lj-async.run");
    api.pushlstring(L, input, len);
    lja_thread_attach(t, L);
    int ok = api.pcall(L, 1, 2, 0) == 0;
    lja_thread_attach(t, NULL);
    if (ok) {
        const char *result = api.tolstring(L, -2, &rlen);
        if (result)
            lja_thread_set_result(t, result, rlen);
        if (api.toboolean(L, -1))
            lja_thread_set_cancelled(t);
    }
    /* Otherwise no result is stored: the joiner reports the failure. */
    api.settop(L, 0);
}

static void finish_thread(void *L)
{
    api.getfield(L, api.registry_index, "lj-async.reset");
    int reusable = api.pcall(L, 0, 1, 0) == 0 && api.toboolean(L, -1);
    api.settop(L, 0);
    if (reusable)
        lja_states_push(&spare, L);
    else
        api.close(L);
}

int lja_lua_spawn(lja_thread **out, void *L, const char *input, size_t len,
                  const lja_thread_opts *opts)
{
    if (!L)
        return LJA_EINVAL;
    int rc = lja_thread_start(out, run_thread, L, finish_thread, L, input, len, opts);
    if (rc != LJA_OK)
        api.close(L);
    return rc;
}
