/* pool.c: what lj-async.pool needs from C (README: `lj-async.pool`): the
 * pool as an object whose memory outlives its handles while its threads
 * and jobs hold it, with a lock, the count of its workers, and its two
 * channels (the job queue, the watchdog's wake-ups).  The jobs, their
 * cancel, the list of running jobs, the worker loop, the watchdog, worker
 * replacement and shutdown are LuaJIT code (lj-async/pool.lua). */
#include "object.h"

struct lja_pool {
    lja_object hdr;
    pthread_mutex_t lock;
    lja_channel *queue, *watch;
    void *data[2];              /* lj-async/pool.lua's, under the lock */
    int size;                   /* workers that count (not replaced) */
    int shut;                   /* closed: no more jobs nor workers */
    atomic_int holds;           /* the handles (as one), its threads, its jobs */
};

void lja_pool_hold(lja_pool *p)
{
    atomic_fetch_add(&p->holds, 1);
}

int lja_pool_lock(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    return p->shut;
}

void lja_pool_unlock(lja_pool *p)
{
    pthread_mutex_unlock(&p->lock);
}

void **lja_pool_data(lja_pool *p)
{
    return p->data;
}

lja_channel *lja_pool_channel(lja_pool *p, int watch)
{
    return watch ? p->watch : p->queue;
}

int lja_pool_join(lja_pool *p)
{
    int shut = lja_pool_lock(p);
    if (!shut) {
        p->size++;
        lja_pool_hold(p);
    }
    lja_pool_unlock(p);
    return shut ? LJA_ECLOSED : LJA_OK;
}

int lja_pool_size(lja_pool *p, int d)
{
    int shut = lja_pool_lock(p);
    p->size += d;
    int n = shut ? 0 : p->size;   /* a shut pool has none */
    lja_pool_unlock(p);
    return n;
}

void lja_pool_leave(lja_pool *p, int counted)
{
    if (counted)
        lja_pool_size(p, -counted);
    if (atomic_fetch_sub(&p->holds, 1) != 1)
        return;
    lja_object_release(p->queue);
    lja_object_release(p->watch);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void lja_pool_close(lja_pool *p)
{
    lja_pool_lock(p);
    p->shut = 1;
    lja_pool_unlock(p);
    lja_channel_close(p->queue);
}

/* The last handle: the pool shuts down without waiting (README); closing
 * the wake-ups tells the watchdog to stop the running jobs. */
static void pool_destroy(void *obj)
{
    lja_pool *p = obj;
    lja_pool_close(p);
    lja_channel_close(p->watch);
    lja_pool_leave(p, 0);
}

lja_pool *lja_pool_new(void)
{
    lja_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    atomic_init(&p->holds, 1);   /* the handles' */
    p->queue = lja_channel_new(0);
    p->watch = lja_channel_new(0);
    if (p->queue && p->watch && lja_object_init(&p->hdr, LJA_KIND_POOL, pool_destroy) == LJA_OK)
        return p;
    if (p->queue)
        lja_object_release(p->queue);
    if (p->watch)
        lja_object_release(p->watch);
    pthread_mutex_destroy(&p->lock);
    free(p);
    return NULL;
}
