/* lua.c: the thread entry point into a Lua state, through Lua C API
 * functions that the host hands over (the shim never links LuaJIT). */
#include <stdatomic.h>

#include "internal.h"

static struct {
    lja_lua_getfield_fn getfield;
    lja_lua_pcall_fn pcall;
    lja_lua_settop_fn settop;
    lja_lua_close_fn close;
    int registry_index;
} api;
static atomic_int bound;

void lja_lua_bind(lja_lua_getfield_fn getfield, lja_lua_pcall_fn pcall,
                  lja_lua_settop_fn settop, lja_lua_close_fn close, int registry_index)
{
    /* First bind wins; every host passes the same functions. */
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&lock);
    if (!atomic_load(&bound)) {
        api.getfield = getfield;
        api.pcall = pcall;
        api.settop = settop;
        api.close = close;
        api.registry_index = registry_index;
        atomic_store(&bound, 1);
    }
    pthread_mutex_unlock(&lock);
}

void lja_lua_run(void *L)
{
    api.getfield(L, api.registry_index, "lj-async.run");
    api.pcall(L, 0, 0, 0);
    api.settop(L, 0);
}

void lja_lua_close(void *L)
{
    api.close(L);
}
