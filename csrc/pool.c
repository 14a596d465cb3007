/* pool.c: what lj-async.pool needs from C (README: `lj-async.pool`): the
 * job queue with its blocking take, the jobs themselves (input, result,
 * wait, cancel flag and cancel hook) and the pool's counts.  The worker
 * loop, the watchdog and worker replacement are LuaJIT code
 * (lj-async/pool.lua) on threads of their own, calling these.
 *
 * A job is queued, then taken by a worker (it is then among the pool's
 * running jobs until done), begun (the state it runs in is known, so that a
 * cancel can hook it), ran (the hook is off), and done (waiters wake).
 * Stopping a running job: its cancel flag, which compiled job code polls
 * (lja_pool_poll), and a count hook on its state, which stops interpreted
 * code.  Both stay on until the job's code has returned to its worker, so a
 * job that catches the error and goes on meets it again at once.
 *
 * Worker threads are detached; the pool's memory goes when nothing anchors
 * it any more: its handles (as one), its threads and its jobs each anchor
 * it. */
#include <string.h>

#include "object.h"

#define WAIT_SPINS 2000         /* polls before a waiter sleeps (~ tens of us) */
#define IDLE_SPINS 2000         /* an idle worker's polls of the queue before it sleeps */

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct lja_job {
    pthread_mutex_t lock;
    pthread_cond_t done_cond;
    atomic_int refs;
    atomic_int state;
    atomic_int cancel;          /* 0 or an LJA_JOB_* reason */
    _Atomic double cancel_time;
    double deadline;            /* 0: none; set before the job is queued */
    void *L;                    /* the state running its code (under lock) */
    int replaced;               /* its worker was replaced (under the pool's lock) */
    lja_pool *pool;             /* anchored by the job once it is queued */
    lja_job *next, *prev;       /* in the queue, then in the running list (pool's lock) */
    char *input;
    size_t input_len;
    int in_nobjs;
    void **in_objs;
    char *result;               /* NULL until stored */
    size_t result_len;
    int res_nobjs;
    void **res_objs;
};

struct lja_pool {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t work, changed, watch;
    lja_job *head, *tail;       /* the queue */
    lja_job *running;           /* taken and not done */
    atomic_int queued;          /* jobs in the queue, read to spin */
    int nidle;
    int size;                   /* workers that count (not replaced) */
    int nrunning;
    int shut;                   /* submit refused */
    int stopping;               /* workers leave once the queue is empty */
    int watchdog;               /* started */
    unsigned kicks, seen;       /* wake-ups of the watchdog, and those it has seen */
    atomic_int anchors;         /* the handles (as one), threads, and jobs */
};

static _Thread_local lja_job *current_job;

static void pool_free(lja_pool *p)
{
    pthread_cond_destroy(&p->watch);
    pthread_cond_destroy(&p->changed);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Drops one anchor of the pool; the last one frees it. */
static void pool_unanchor(lja_pool *p)
{
    if (atomic_fetch_sub(&p->anchors, 1) == 1)
        pool_free(p);
}

/* Wakes the watchdog; called with p->lock held. */
static void kick(lja_pool *p)
{
    p->kicks++;
    pthread_cond_signal(&p->watch);
}

/* ---- jobs ---------------------------------------------------------------- */

static void release_all(void *const *objs, int n)
{
    for (int i = 0; i < n; i++)
        lja_object_release(objs[i]);
}

void lja_job_release(lja_job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    release_all(j->in_objs, j->in_nobjs);
    release_all(j->res_objs, j->res_nobjs);
    free(j->res_objs);
    free(j->result);
    pthread_cond_destroy(&j->done_cond);
    pthread_mutex_destroy(&j->lock);
    lja_pool *p = j->pool;
    free(j);
    if (p)
        pool_unanchor(p);
}

static lja_job *job_new(const char *data, size_t len, void *const *objs, int nobjs, double timeout)
{
    lja_job *j = calloc(1, sizeof *j + (size_t)nobjs * sizeof(void *) + len);
    if (!j)
        return NULL;
    pthread_mutex_init(&j->lock, NULL);
    lja_cond_init(&j->done_cond);
    atomic_init(&j->refs, 2);   /* the submitter's and the queue's */
    atomic_init(&j->state, JOB_QUEUED);
    atomic_init(&j->cancel, 0);
    atomic_init(&j->cancel_time, 0.0);
    j->deadline = timeout >= 0 ? lja_now() + timeout : 0;
    j->in_objs = (void **)(j + 1);
    j->in_nobjs = nobjs;
    if (nobjs)
        memcpy(j->in_objs, objs, (size_t)nobjs * sizeof(void *));
    j->input = (char *)(j->in_objs + nobjs);
    j->input_len = len;
    if (len)
        memcpy(j->input, data, len);
    return j;
}

int lja_job_wait(lja_job *j, double timeout)
{
    if (atomic_load(&j->state) == JOB_DONE)
        return LJA_OK;
    for (int i = 0; i < WAIT_SPINS && timeout != 0; i++) {
        lja_spin_pause(i);
        if (atomic_load(&j->state) == JOB_DONE)
            return LJA_OK;
    }
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    pthread_mutex_lock(&j->lock);
    while (atomic_load(&j->state) != JOB_DONE && rc == LJA_OK)
        rc = lja_cond_wait_timeout(&j->done_cond, &j->lock, timeout, &deadline, &have);
    rc = atomic_load(&j->state) == JOB_DONE ? LJA_OK : LJA_ETIMEDOUT;
    pthread_mutex_unlock(&j->lock);
    return rc;
}

const char *lja_job_result(lja_job *j, size_t *len)
{
    *len = j->result_len;
    return atomic_load(&j->state) == JOB_DONE ? j->result : NULL;
}

int lja_job_cancelled(lja_job *j)
{
    return atomic_load(&j->cancel);
}

double lja_job_cancel_time(lja_job *j)
{
    return atomic_load(&j->cancel_time);
}

double lja_job_deadline(lja_job *j)
{
    return j->deadline;
}

/* Cancels j unless it is done (LJA_EINVAL); *started is set when j was
 * begun and this cancel is its first. */
static int job_cancel(lja_job *j, int reason, int *started)
{
    int rc = LJA_OK;
    *started = 0;
    pthread_mutex_lock(&j->lock);
    int state = atomic_load(&j->state);
    if (state == JOB_DONE) {
        rc = LJA_EINVAL;
    } else if (!atomic_load(&j->cancel)) {
        atomic_store(&j->cancel, reason);
        atomic_store(&j->cancel_time, lja_now());
        if (state == JOB_QUEUED) {   /* its worker will skip it */
            atomic_store(&j->state, JOB_DONE);
            pthread_cond_broadcast(&j->done_cond);
        } else {
            if (j->L)
                lja_lua_cancel(j->L);
            *started = 1;
        }
    }
    pthread_mutex_unlock(&j->lock);
    return rc;
}

int lja_job_cancel(lja_job *j, int reason)
{
    if (reason < LJA_JOB_CANCELLED || reason > LJA_JOB_SHUTDOWN)
        return LJA_EINVAL;
    int started;
    int rc = job_cancel(j, reason, &started);
    if (started) {   /* the watchdog replaces its worker if it does not stop */
        lja_pool *p = j->pool;   /* alive: the job anchors it */
        pthread_mutex_lock(&p->lock);
        kick(p);
        pthread_mutex_unlock(&p->lock);
    }
    return rc;
}

/* ---- what the job's code calls, on its worker ------------------------------ */

const char *lja_pool_input(size_t *len)
{
    lja_job *j = current_job;
    *len = j ? j->input_len : 0;
    return j ? j->input : NULL;
}

int lja_pool_set_result(const char *data, size_t len, void *const *objs, int nobjs)
{
    lja_job *j = current_job;
    if (!j || j->result || nobjs < 0)
        return LJA_EINVAL;
    void **o = nobjs ? malloc((size_t)nobjs * sizeof *o) : NULL;
    char *r = malloc(len ? len : 1);
    if (!r || (nobjs && !o)) {
        free(o);
        free(r);
        for (int i = 0; i < nobjs; i++)   /* not stored: its references go (ljasync.h) */
            lja_object_release(objs[i]);
        return LJA_ENOMEM;
    }
    if (nobjs)
        memcpy(o, objs, (size_t)nobjs * sizeof *o);
    if (len)
        memcpy(r, data, len);
    j->res_objs = o;
    j->res_nobjs = nobjs;
    j->result_len = len;
    j->result = r;
    return LJA_OK;
}

int lja_pool_poll(void)
{
    lja_job *j = current_job;
    return j ? atomic_load_explicit(&j->cancel, memory_order_relaxed) : 0;
}

/* ---- what the workers call ------------------------------------------------- */

int lja_pool_join(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    int rc = p->stopping ? LJA_ECLOSED : LJA_OK;
    if (rc == LJA_OK) {
        p->size++;
        atomic_fetch_add(&p->anchors, 1);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void lja_pool_leave(lja_pool *p, int counted)
{
    pthread_mutex_lock(&p->lock);
    if (counted)
        p->size--;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    pool_unanchor(p);
}

lja_job *lja_pool_take(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    if (!p->head && !p->stopping) {
        pthread_mutex_unlock(&p->lock);
        for (int i = 0; i < IDLE_SPINS && !atomic_load(&p->queued); i++)
            lja_spin_pause(i);
        pthread_mutex_lock(&p->lock);
    }
    while (!p->head && !p->stopping) {
        p->nidle++;
        pthread_cond_wait(&p->work, &p->lock);
        p->nidle--;
    }
    lja_job *j = p->head;
    if (j) {
        atomic_fetch_sub(&p->queued, 1);
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        j->prev = NULL;
        j->next = p->running;
        if (p->running)
            p->running->prev = j;
        p->running = j;
        p->nrunning++;
    }
    pthread_mutex_unlock(&p->lock);
    return j;
}

int lja_job_begin(lja_job *j, void *L)
{
    pthread_mutex_lock(&j->lock);
    int run = atomic_load(&j->state) != JOB_DONE;   /* else cancelled while queued */
    if (run) {
        atomic_store(&j->state, JOB_RUNNING);
        j->L = L;
    }
    pthread_mutex_unlock(&j->lock);
    if (run)
        current_job = j;
    return run;
}

void lja_job_ran(lja_job *j)
{
    pthread_mutex_lock(&j->lock);   /* no cancel reaches the state from here on */
    lja_lua_clear_hook(j->L);
    j->L = NULL;
    pthread_mutex_unlock(&j->lock);
}

int lja_job_done(lja_job *j)
{
    current_job = NULL;
    pthread_mutex_lock(&j->lock);
    atomic_store(&j->state, JOB_DONE);
    pthread_cond_broadcast(&j->done_cond);
    pthread_mutex_unlock(&j->lock);
    lja_pool *p = j->pool;
    pthread_mutex_lock(&p->lock);
    if (j->prev)
        j->prev->next = j->next;
    else
        p->running = j->next;
    if (j->next)
        j->next->prev = j->prev;
    p->nrunning--;
    int replaced = j->replaced;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    lja_job_release(j);
    return replaced;
}

/* ---- what the watchdog calls ----------------------------------------------- */

int lja_pool_watch(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    int start = !p->watchdog && !p->stopping;
    if (start) {
        p->watchdog = 1;
        atomic_fetch_add(&p->anchors, 1);
    }
    kick(p);
    pthread_mutex_unlock(&p->lock);
    return start;
}

void lja_pool_unwatch(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->watchdog = 0;
    pthread_mutex_unlock(&p->lock);
    pool_unanchor(p);
}

int lja_pool_watch_wait(lja_pool *p, double timeout)
{
    pthread_mutex_lock(&p->lock);
    if (!p->stopping && p->kicks == p->seen) {
        struct timespec deadline;
        int have = 0;
        lja_cond_wait_timeout(&p->watch, &p->lock, timeout, &deadline, &have);
    }
    p->seen = p->kicks;
    int stopping = p->stopping;
    pthread_mutex_unlock(&p->lock);
    return stopping;
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

int lja_job_replace(lja_job *j)
{
    lja_pool *p = j->pool;
    pthread_mutex_lock(&p->lock);
    int replace = !j->replaced && !p->stopping && atomic_load(&j->state) != JOB_DONE;
    if (replace) {
        j->replaced = 1;   /* its worker leaves once the job returns */
        p->size--;
    }
    pthread_mutex_unlock(&p->lock);
    return replace;
}

/* ---- the pool ------------------------------------------------------------------ */

/* Called with p->lock held: refuse submits, cancel what is queued. */
static void shut(lja_pool *p)
{
    int started;
    p->shut = 1;
    for (lja_job *j = p->head; j; j = j->next)
        job_cancel(j, LJA_JOB_SHUTDOWN, &started);
}

/* Called with p->lock held: cancel what is running, and let the workers and
 * the watchdog go. */
static void stop(lja_pool *p)
{
    int started;
    for (lja_job *j = p->running; j; j = j->next)
        job_cancel(j, LJA_JOB_SHUTDOWN, &started);
    p->stopping = 1;
    pthread_cond_broadcast(&p->work);
    kick(p);
}

static void pool_destroy(void *obj)
{
    lja_pool *p = obj;
    pthread_mutex_lock(&p->lock);
    shut(p);
    stop(p);
    pthread_mutex_unlock(&p->lock);
    pool_unanchor(p);
}

lja_pool *lja_pool_new(void)
{
    lja_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    lja_cond_init(&p->changed);
    lja_cond_init(&p->watch);
    atomic_init(&p->anchors, 1);   /* the handles' */
    if (lja_object_init(&p->hdr, LJA_KIND_POOL, pool_destroy) != LJA_OK) {
        pool_free(p);
        return NULL;
    }
    return p;
}

int lja_pool_submit(lja_pool *p, const char *data, size_t len, void *const *objs, int nobjs,
                    double timeout, lja_job **out)
{
    *out = NULL;
    if (nobjs < 0 || (nobjs && !objs) || (len && !data))
        return LJA_EINVAL;
    lja_job *j = job_new(data, len, objs, nobjs, timeout);
    if (!j) {
        release_all(objs, nobjs);   /* not sent: its references go too */
        return LJA_ENOMEM;
    }
    pthread_mutex_lock(&p->lock);
    if (p->shut) {
        pthread_mutex_unlock(&p->lock);
        atomic_store(&j->refs, 1);
        lja_job_release(j);   /* with the references it took */
        return LJA_ECLOSED;
    }
    j->pool = p;
    atomic_fetch_add(&p->anchors, 1);
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    atomic_fetch_add(&p->queued, 1);
    if (p->nidle)
        pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->lock);
    *out = j;
    return LJA_OK;
}

int lja_pool_size(lja_pool *p)
{
    pthread_mutex_lock(&p->lock);
    int n = p->stopping ? 0 : p->size;   /* a shut-down pool has none */
    pthread_mutex_unlock(&p->lock);
    return n;
}

int lja_pool_shutdown(lja_pool *p, double grace)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    pthread_mutex_lock(&p->lock);
    shut(p);
    while (p->nrunning > 0 && rc == LJA_OK)
        rc = lja_cond_wait_timeout(&p->changed, &p->lock, grace, &deadline, &have);
    stop(p);   /* past the grace time, running jobs are cancelled */
    /* Workers stuck in C for a second more are left to end on their own. */
    have = 0;
    rc = LJA_OK;
    while (p->nrunning > 0 && rc == LJA_OK)
        rc = lja_cond_wait_timeout(&p->changed, &p->lock, 1.0, &deadline, &have);
    rc = p->nrunning > 0 ? LJA_ETIMEDOUT : LJA_OK;
    pthread_mutex_unlock(&p->lock);
    return rc;
}
