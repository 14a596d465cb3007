/* gate.c: a C function pointer of any scalar signature that forwards each
 * call to a free one of n targets, one caller per target at a time.
 *
 * LuaJIT enters a callback's lua_State without any lock, so two threads
 * calling one ffi.cast callback corrupt it.  The gate is a libffi closure:
 * it takes a target before any Lua runs and gives it back after. */
#include <ffi.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define GATE_MAX_ARGS 32

struct lja_gate {
    ffi_closure *closure;
    void *code;                 /* the closure's entry: the gate's funcptr */
    ffi_cif cif;
    ffi_type *args[GATE_MAX_ARGS];
    pthread_mutex_t lock;       /* only for waiting and for the error text */
    pthread_cond_t freed;       /* a target became free (signalled under lock) */
    atomic_int waiters;         /* callers waiting for a free target */
    lja_gate *next_spare;       /* in the pool of gate structs (under pool_lock) */
    int n;
    atomic_int *busy;           /* per target: 1 while a caller has it (or unset) */
    void **targets;
    char *error;                /* the last error a target reported */
    size_t error_len;
};

static ffi_type *sig_type(char c)
{
    switch (c) {
    case 'v': return &ffi_type_void;
    case 'b': return &ffi_type_sint8;
    case 'B': return &ffi_type_uint8;
    case 'h': return &ffi_type_sint16;
    case 'H': return &ffi_type_uint16;
    case 'i': return &ffi_type_sint32;
    case 'I': return &ffi_type_uint32;
    case 'q': return &ffi_type_sint64;
    case 'Q': return &ffi_type_uint64;
    case 'f': return &ffi_type_float;
    case 'd': return &ffi_type_double;
    case 'p': return &ffi_type_pointer;
    default: return NULL;
    }
}

static int try_take(lja_gate *g)
{
    for (int i = 0; i < g->n; i++) {
        int expected = 0;
        if (atomic_load_explicit(&g->busy[i], memory_order_relaxed) == 0 &&
            atomic_compare_exchange_strong(&g->busy[i], &expected, 1))
            return i;
    }
    return -1;
}

/* Take a free target, waiting until the deadline (NULL: forever); -1 when
 * it passed.  Uncontended, this is one compare-and-swap: no lock. */
static int take_target(lja_gate *g, const struct timespec *deadline)
{
    int slot = try_take(g);
    if (slot >= 0)
        return slot;
    pthread_mutex_lock(&g->lock);
    /* Counted before the re-check: a giver that frees a target after it
     * sees the count and signals (under the lock), so no wakeup is lost. */
    atomic_fetch_add(&g->waiters, 1);
    while ((slot = try_take(g)) < 0)
        if (lja_cond_wait_until(&g->freed, &g->lock, deadline) == LJA_ETIMEDOUT &&
            (slot = try_take(g)) < 0)
            break;
    atomic_fetch_sub(&g->waiters, 1);
    pthread_mutex_unlock(&g->lock);
    return slot;
}

static void give_target(lja_gate *g, int slot)
{
    /* Once the target is free, quiesce and free() may run at once; what
     * follows touches only g's struct itself, which is type-stable (see
     * the pool below), so a late signal reaches at worst a new gate's
     * waiters, who check again. */
    atomic_store(&g->busy[slot], 0);
    if (atomic_load(&g->waiters) > 0) {
        pthread_mutex_lock(&g->lock);
        pthread_cond_signal(&g->freed);
        pthread_mutex_unlock(&g->lock);
    }
}

/* Gate structs are never given back to malloc: a freed one keeps its lock
 * and condition and waits in this pool for the next lja_gate_new.  That
 * keeps give_target's last touches safe without a counter on every call. */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static lja_gate *pool;

static lja_gate *gate_struct(void)
{
    pthread_mutex_lock(&pool_lock);
    lja_gate *g = pool;
    if (g)
        pool = g->next_spare;
    pthread_mutex_unlock(&pool_lock);
    if (g)
        return g;
    g = calloc(1, sizeof *g);
    if (g) {
        pthread_mutex_init(&g->lock, NULL);
        lja_cond_init(&g->freed);
        atomic_init(&g->waiters, 0);
    }
    return g;
}

static void gate_struct_free(lja_gate *g)
{
    pthread_mutex_lock(&pool_lock);
    g->next_spare = pool;
    pool = g;
    pthread_mutex_unlock(&pool_lock);
}

static void gate_entry(ffi_cif *cif, void *ret, void **args, void *user)
{
    lja_gate *g = user;
    int slot = take_target(g, NULL);
    ffi_call(cif, FFI_FN(g->targets[slot]), ret, args);
    give_target(g, slot);
}

int lja_gate_new(lja_gate **out, const char *sig, int n)
{
    if (!out || !sig || n < 1)
        return LJA_EINVAL;
    size_t nargs = strlen(sig);
    if (nargs < 1 || nargs - 1 > GATE_MAX_ARGS)
        return LJA_EINVAL;
    nargs--;
    lja_gate *g = gate_struct();
    if (!g)
        return LJA_ENOMEM;
    g->closure = NULL;
    g->targets = NULL;
    g->busy = NULL;
    g->error = NULL;
    g->error_len = 0;
    ffi_type *rtype = sig_type(sig[0]);
    int rc = rtype ? LJA_OK : LJA_EINVAL;
    for (size_t i = 0; i < nargs && rc == LJA_OK; i++)
        if (sig[i + 1] == 'v' || !(g->args[i] = sig_type(sig[i + 1])))
            rc = LJA_EINVAL;
    if (rc == LJA_OK) {
        g->targets = calloc((size_t)n, sizeof *g->targets);
        g->busy = calloc((size_t)n, sizeof *g->busy);
        g->closure = ffi_closure_alloc(sizeof(ffi_closure), &g->code);
        if (!g->targets || !g->busy || !g->closure)
            rc = LJA_ENOMEM;
        else if (ffi_prep_cif(&g->cif, FFI_DEFAULT_ABI, (unsigned)nargs, rtype, g->args) != FFI_OK ||
                 ffi_prep_closure_loc(g->closure, &g->cif, gate_entry, g, g->code) != FFI_OK)
            rc = LJA_EINVAL;
    }
    if (rc != LJA_OK) {
        lja_gate_free(g);
        return rc;
    }
    g->n = n;
    for (int i = 0; i < n; i++)
        atomic_init(&g->busy[i], 1);  /* not takeable until its target is set */
    *out = g;
    return LJA_OK;
}

void *lja_gate_funcptr(lja_gate *g)
{
    return g->code;
}

void lja_gate_set_target(lja_gate *g, int i, void *fn)
{
    if (i < 0 || i >= g->n || !fn || g->targets[i])
        return;
    g->targets[i] = fn;   /* published by the store below */
    give_target(g, i);
}

int lja_gate_quiesce(lja_gate *g, double timeout)
{
    /* Take every target: once all are held, no call is inside any of them,
     * and later calls wait (calling a freed callback is the caller's bug). */
    struct timespec deadline = lja_deadline(timeout < 0 ? 0 : timeout);
    int installed = 0, held = 0;
    for (int i = 0; i < g->n; i++)
        installed += g->targets[i] != NULL;
    while (held < installed && take_target(g, &deadline) >= 0)
        held++;
    return held == installed ? LJA_OK : LJA_ETIMEDOUT;
}

void lja_gate_set_error(lja_gate *g, const char *msg, size_t len)
{
    char *copy = lja_copy(msg, len);
    if (!copy)
        return;
    pthread_mutex_lock(&g->lock);
    free(g->error);
    g->error = copy;
    g->error_len = len;
    pthread_mutex_unlock(&g->lock);
}

size_t lja_gate_error(lja_gate *g, char *buf, size_t cap)
{
    pthread_mutex_lock(&g->lock);
    size_t len = g->error_len;
    if (buf && g->error)
        memcpy(buf, g->error, len < cap ? len : cap);
    pthread_mutex_unlock(&g->lock);
    return len;
}

void lja_gate_free(lja_gate *g)
{
    if (!g)
        return;
    if (g->closure)
        ffi_closure_free(g->closure);
    free(g->targets);
    free((void *)g->busy);
    pthread_mutex_lock(&g->lock);
    free(g->error);
    g->error = NULL;
    pthread_mutex_unlock(&g->lock);
    gate_struct_free(g);
}
