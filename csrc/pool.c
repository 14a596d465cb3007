/* pool.c: what lj-async.pool needs from C (README: `lj-async.pool`): the
 * pool as an object, whose memory outlives its handles while its threads
 * and jobs use it, its running jobs, and their cancel.  The job queue, the
 * watchdog's wake-ups and each job's outcome are channels; the worker
 * loop, the watchdog, worker replacement and shutdown are LuaJIT code
 * (lj-async/pool.lua).
 *
 * A job's cancel sets a flag, which compiled job code polls
 * (lja_pool_poll), and a count hook on the state running it, which stops
 * interpreted code.  The pool's lock orders the hook against the worker's
 * lja_job_ran, which takes it off: a later cancel never hooks the worker's
 * next job, nor its own outcome's encoding. */
#include "object.h"

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_GONE };   /* GONE: out of the running list */

struct lja_job {
    atomic_int refs;
    int state, replaced;        /* under the pool's lock */
    atomic_int cancel;          /* 0 or an LJA_JOB_* reason */
    double deadline;            /* 0: none */
    lja_channel *result;        /* where its worker sends its outcome */
    void *L;                    /* the state running its code */
    lja_pool *pool;             /* anchored by the job */
    lja_job *next, *prev;       /* in the pool's running list */
};

struct lja_pool {
    lja_object hdr;
    pthread_mutex_t lock;
    lja_channel *queue, *watch; /* the jobs; the watchdog's wake-ups */
    lja_job *running;           /* begun, not done */
    int size;                   /* workers that count (not replaced) */
    int shut;                   /* closed: no more jobs nor workers */
    atomic_int watchdog;        /* started */
    atomic_int anchors;         /* the handles (as one), its threads, its jobs */
};

static _Thread_local lja_job *current_job;

static void pool_unanchor(lja_pool *p)
{
    if (atomic_fetch_sub(&p->anchors, 1) != 1)
        return;
    lja_object_release(p->queue);
    lja_object_release(p->watch);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

lja_job *lja_job_new(lja_pool *p, double deadline)
{
    lja_job *j = calloc(1, sizeof *j);
    if (!j || !(j->result = lja_channel_new(0))) {
        free(j);
        return NULL;
    }
    atomic_init(&j->refs, 2);   /* the submitter's and the queued message's */
    j->deadline = deadline;
    j->pool = p;
    atomic_fetch_add(&p->anchors, 1);
    return j;
}

void lja_job_release(lja_job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    lja_object_release(j->result);
    pool_unanchor(j->pool);
    free(j);
}

/* Called with the pool's lock held. */
static int job_cancel(lja_job *j, int reason)
{
    int rc = j->state >= JOB_DONE ? LJA_EINVAL : j->state == JOB_QUEUED;
    if (rc >= 0 && !atomic_load(&j->cancel)) {
        atomic_store(&j->cancel, reason);
        if (j->state == JOB_QUEUED)
            j->state = JOB_DONE;   /* its worker skips it */
        else
            lja_lua_cancel(j->L);
    }
    return rc;
}

int lja_job_cancel(lja_job *j, int reason)
{
    if (reason < LJA_JOB_CANCELLED || reason > LJA_JOB_SHUTDOWN)
        return LJA_EINVAL;
    pthread_mutex_lock(&j->pool->lock);
    int rc = job_cancel(j, reason);
    pthread_mutex_unlock(&j->pool->lock);
    return rc;
}

int lja_job_cancelled(lja_job *j)
{
    return atomic_load(&j->cancel);
}

double lja_job_deadline(lja_job *j)
{
    return j->deadline;
}

lja_channel *lja_job_channel(lja_job *j)
{
    return j->result;
}

int lja_job_begin(lja_job *j, void *L)
{
    lja_pool *p = j->pool;
    pthread_mutex_lock(&p->lock);
    if (p->shut)   /* queued when the pool closed */
        job_cancel(j, LJA_JOB_SHUTDOWN);
    int run = j->state == JOB_QUEUED;   /* else cancelled while queued */
    if (run) {
        j->state = JOB_RUNNING;
        j->L = L;
        current_job = j;
        atomic_fetch_add(&j->refs, 1);   /* the running list's */
        j->next = p->running;
        if (p->running)
            p->running->prev = j;
        p->running = j;
    }
    pthread_mutex_unlock(&p->lock);
    return run;
}

void lja_job_ran(lja_job *j)
{
    pthread_mutex_lock(&j->pool->lock);   /* no cancel reaches the state from here on */
    lja_lua_clear_hook(j->L);
    j->state = JOB_DONE;
    current_job = NULL;
    pthread_mutex_unlock(&j->pool->lock);
}

int lja_job_done(lja_job *j)
{
    lja_pool *p = j->pool;
    pthread_mutex_lock(&p->lock);
    if (j->prev)
        j->prev->next = j->next;
    else
        p->running = j->next;
    if (j->next)
        j->next->prev = j->prev;
    j->state = JOB_GONE;
    int replaced = j->replaced;
    pthread_mutex_unlock(&p->lock);
    lja_job_release(j);
    return replaced;
}

int lja_job_replace(lja_job *j)
{
    pthread_mutex_lock(&j->pool->lock);
    int replace = (j->state == JOB_RUNNING || j->state == JOB_DONE) && !j->replaced;
    j->replaced = 1;
    pthread_mutex_unlock(&j->pool->lock);
    return replace;
}

int lja_pool_poll(void)
{
    lja_job *j = current_job;
    return j ? atomic_load_explicit(&j->cancel, memory_order_relaxed) : 0;
}

int lja_pool_running(lja_pool *p, lja_job **out, int max)
{
    pthread_mutex_lock(&p->lock);
    int n = 0;
    for (lja_job *j = p->running; j; j = j->next, n++) {
        if (n < max) {
            atomic_fetch_add(&j->refs, 1);
            out[n] = j;
        }
    }
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* ---- the pool ------------------------------------------------------------ */

int lja_pool_join(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    int rc = p->shut ? LJA_ECLOSED : LJA_OK;
    if (rc == LJA_OK) {
        p->size++;
        atomic_fetch_add(&p->anchors, 1);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

int lja_pool_size(lja_pool *p, int d)
{
    pthread_mutex_lock(&p->lock);
    p->size += d;
    int n = p->shut ? 0 : p->size;   /* a shut pool has none */
    pthread_mutex_unlock(&p->lock);
    return n;
}

void lja_pool_leave(lja_pool *p, int counted)
{
    lja_pool_size(p, -counted);
    pool_unanchor(p);
}

int lja_pool_watch(lja_pool *p)
{
    if (atomic_exchange(&p->watchdog, 1))
        return 0;
    atomic_fetch_add(&p->anchors, 1);   /* the watchdog leaves uncounted */
    return 1;
}

lja_channel *lja_pool_channel(lja_pool *p, int watch)
{
    return watch ? p->watch : p->queue;
}

void lja_pool_close(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->shut = 1;
    pthread_mutex_unlock(&p->lock);
    lja_channel_close(p->queue);
    lja_channel_close(p->watch);
}

/* The last handle: shut down without waiting (README), running jobs too;
 * the workers cancel the queued ones as they drain the queue. */
static void pool_destroy(void *obj)
{
    lja_pool *p = obj;
    lja_pool_close(p);
    pthread_mutex_lock(&p->lock);
    for (lja_job *j = p->running; j; j = j->next)
        job_cancel(j, LJA_JOB_SHUTDOWN);
    pthread_mutex_unlock(&p->lock);
    pool_unanchor(p);
}

lja_pool *lja_pool_new(void)
{
    lja_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    atomic_init(&p->anchors, 1);   /* the handles' */
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
