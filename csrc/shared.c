/* shared.c: locks and lifetimes of shared tables (README: lj-async.shared).
 *
 * The contents of every shared table live in one process-wide lua_State,
 * the store, which lj-async.shared drives through the Lua C API from Lua.
 * This file keeps only what Lua cannot: the locks, each table's slot in the
 * store, and the tables whose last reference went (dead), whose contents
 * the next Lua caller clears under the store lock.
 *
 * Documented global state: the store, its lock, the slot allocator, the
 * dead list and shared.G, all below. */
#include <stdlib.h>

#include "object.h"

/* Every access to the store happens under store_lock.  update holds a
 * table for longer, while its function runs in the caller's state: the
 * table then has an owner thread, and accesses from other threads wait
 * (on `free`, releasing store_lock) until it has none.  The owner's own
 * accesses go on, so the function may use the table again. */
struct lja_shared {
    lja_object hdr;
    pthread_cond_t free;
    uint64_t owner;                 /* lja_thread_id of update's thread, or 0 */
    int depth, waiters;             /* owner's nested updates; threads waiting */
    int32_t slot;                   /* contents at store[1][slot] */
    int32_t flags;                  /* set by lj-async.shared */
    struct lja_shared *next_dead;   /* dead list link */
};

static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static void *store;                 /* guarded by store_lock; never closed */
static int32_t *free_slots;         /* guarded by store_lock */
static int64_t nfree, free_cap;
static int32_t next_slot = 1;
static lja_shared *global;          /* guarded by store_lock; never freed */
static _Atomic(lja_shared *) dead;  /* pushed lock-free, popped under store_lock */
/* Whether this thread holds store_lock: a finalizer that runs meanwhile (in
 * any state of the thread, e.g. one that a collected state handle closes)
 * must not take it again. */
static _Thread_local int holding;

static void shared_destroy(void *obj)
{
    lja_shared *t = obj;
    lja_shared *head = atomic_load(&dead);
    do
        t->next_dead = head;
    while (!atomic_compare_exchange_weak(&dead, &head, t));
}

void *lja_shared_store(void *L)
{
    pthread_mutex_lock(&store_lock);
    if (!store)
        store = L;
    void *s = store;
    pthread_mutex_unlock(&store_lock);
    return s;
}

/* Room in free_slots for every slot, so that giving one back never fails.
 * Called with store_lock held. */
static int32_t *reserve(void)
{
    return lja_reserve(free_slots, next_slot, &free_cap, sizeof *free_slots);
}

static lja_shared *make(void)
{
    lja_shared *t = calloc(1, sizeof *t);
    if (!t || lja_cond_init(&t->free) != LJA_OK) {
        free(t);
        return NULL;
    }
    /* store_lock is held: slots are the store's */
    t->slot = nfree ? free_slots[--nfree] : next_slot++;
    if (lja_object_init(&t->hdr, LJA_KIND_SHARED, shared_destroy) != LJA_OK) {
        free_slots[nfree++] = t->slot;
        pthread_cond_destroy(&t->free);
        free(t);
        return NULL;
    }
    return t;
}

lja_shared *lja_shared_new(void)
{
    pthread_mutex_lock(&store_lock);
    int32_t *grown = reserve();
    lja_shared *t = grown ? (free_slots = grown, make()) : NULL;
    pthread_mutex_unlock(&store_lock);
    return t;
}

lja_shared *lja_shared_global(void)
{
    pthread_mutex_lock(&store_lock);
    if (!global) {
        int32_t *grown = reserve();
        if (grown) {
            free_slots = grown;
            global = make();   /* its first reference is the process's own */
        }
    }
    if (global)
        lja_object_retain(global);
    lja_shared *g = global;
    pthread_mutex_unlock(&store_lock);
    return g;
}

/* Takes store_lock, once t has no owner but this thread. */
static void wait_for(lja_shared *t)
{
    pthread_mutex_lock(&store_lock);
    if (t->owner) {
        uint64_t self = lja_thread_id();
        while (t->owner && t->owner != self) {
            t->waiters++;
            lja_cond_wait_until(&t->free, &store_lock, NULL);
            t->waiters--;
        }
    }
}

int lja_shared_enter(lja_shared *t)
{
    wait_for(t);
    holding = 1;
    return t->slot * 4 + t->flags;
}

int lja_shared_leave(lja_shared *t)
{
    holding = 0;
    pthread_mutex_unlock(&store_lock);
    return atomic_load(&dead) != NULL;
}

void lja_shared_lock(lja_shared *t)
{
    wait_for(t);
    t->owner = lja_thread_id();
    t->depth++;
    pthread_mutex_unlock(&store_lock);
}

void lja_shared_unlock(lja_shared *t)
{
    pthread_mutex_lock(&store_lock);
    if (--t->depth == 0) {
        t->owner = 0;
        if (t->waiters)
            pthread_cond_broadcast(&t->free);
    }
    pthread_mutex_unlock(&store_lock);
}

void lja_shared_set_flags(lja_shared *t, int flags)
{
    t->flags = flags;
}

int lja_shared_store_lock(void)
{
    if (holding)
        return 0;
    pthread_mutex_lock(&store_lock);
    holding = 1;
    return 1;
}

void lja_shared_store_unlock(void)
{
    holding = 0;
    pthread_mutex_unlock(&store_lock);
}

/* Under the store lock: a table whose last reference went, or NULL; its
 * slot in *slot.  The caller clears the slot, then lja_shared_free. */
lja_shared *lja_shared_dead_pop(int *slot)
{
    lja_shared *t = atomic_load(&dead);
    while (t && !atomic_compare_exchange_weak(&dead, &t, t->next_dead)) {
    }
    if (t)
        *slot = t->slot;
    return t;
}

/* Under the store lock, after lja_shared_dead_pop. */
void lja_shared_free(lja_shared *t)
{
    free_slots[nfree++] = t->slot;   /* room: see reserve */
    pthread_cond_destroy(&t->free);
    free(t);
}
