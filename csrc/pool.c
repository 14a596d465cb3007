/* pool.c: a pool of worker threads, each with its own lua_State, that run
 * jobs from one shared queue (SPEC section 8).
 *
 * Workers make their states from the pool's recipe (a chunk and its string
 * arguments, as lja_lua_new takes them), which leaves two functions in the
 * registry: "lj-async.pool.run" runs the current job (it reads the job's
 * input and stores its result through lja_pool_input/lja_pool_set_result)
 * and "lj-async.pool.reset" puts the state back for the next job, returning
 * false when it cannot (the worker then makes a new state).
 *
 * Stopping a running job: its cancel flag, which compiled job code polls
 * (lja_pool_poll), and a count hook set on the worker's state, which stops
 * interpreted code.  Both stay on until the job's code has returned to the
 * worker (the flag until the job is done, the hook until "run" returns), so
 * a job that catches the error and goes on meets it again at once.  The
 * job's results are sent back by "lj-async.pool.finish", after the hook is
 * gone, so that sending them is never cut halfway.  A watchdog thread
 * cancels jobs past their deadline and replaces a worker whose cancelled
 * job (timed out, cancelled, or shut down) has not stopped after GRACE
 * seconds (stuck in C): the pool keeps its size, and the stuck worker ends
 * when its job returns.  Worker threads are detached; the pool's memory
 * goes when nothing anchors it any more: its handles, its threads and its
 * jobs each anchor it. */
#include <string.h>

#include "object.h"

#define GRACE 0.25              /* seconds a cancelled job has to stop */
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
    struct pool_worker *worker; /* while its code runs (under lock) */
    lja_pool *pool;             /* anchored by the job once it is queued */
    lja_job *next;
    char *input;
    size_t input_len;
    int in_nobjs;
    void **in_objs;
    char *result;               /* NULL until stored */
    size_t result_len;
    int res_nobjs;
    void **res_objs;
};

struct pool_worker {
    lja_pool *pool;
    void *L;                    /* written by its thread; read under the job's lock */
    lja_job *current;           /* under the pool's lock */
    int retire;                 /* under the pool's lock */
};

struct lja_pool {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t work, changed, watch;
    lja_job *head, *tail;
    atomic_int queued;          /* jobs in the queue, read to spin */
    int nidle;
    int size;                   /* workers that count (not retired) */
    int running;                /* jobs being run */
    int shut;                   /* submit refused */
    int stopping;               /* workers leave once the queue is empty */
    int watchdog_running;
    atomic_int anchors;         /* the handles (as one), threads, and jobs */
    struct pool_worker **workers;
    int64_t nworkers, cworkers;
    char *chunk;
    size_t chunk_len;
    int nargs;
    char **args;
    size_t *lens;
};

static _Thread_local lja_job *current_job;

static void pool_free(lja_pool *p);

/* Drops one anchor of the pool; the last one frees it. */
static void pool_unanchor(lja_pool *p)
{
    if (atomic_fetch_sub(&p->anchors, 1) == 1)
        pool_free(p);
}

/* ---- jobs ---------------------------------------------------------------- */

static void release_all(void **objs, int n)
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

static void watch(lja_pool *p);

/* Cancels j unless it is done (LJA_EINVAL); *started (if not NULL) is set
 * when j was running and this cancel is its first, so that its worker may
 * need replacing. */
static int job_cancel(lja_job *j, int reason, int *started)
{
    int rc = LJA_OK, running = 0;
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
            if (j->worker)
                lja_lua_cancel(j->worker->L);
            running = 1;
        }
    }
    pthread_mutex_unlock(&j->lock);
    if (started)
        *started = running;
    return rc;
}

int lja_job_cancel(lja_job *j, int reason)
{
    if (reason < LJA_JOB_CANCELLED || reason > LJA_JOB_SHUTDOWN)
        return LJA_EINVAL;
    int started;
    int rc = job_cancel(j, reason, &started);
    if (started) {   /* the watchdog replaces its worker if it does not stop (stuck in C) */
        lja_pool *p = j->pool;   /* alive: the job anchors it */
        pthread_mutex_lock(&p->lock);
        if (!p->stopping)
            watch(p);
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

/* ---- workers --------------------------------------------------------------- */

static int start_worker(lja_pool *p);

static void *make_state(lja_pool *p)
{
    return lja_lua_new(p->chunk, p->chunk_len, p->nargs, (const char *const *)p->args, p->lens, NULL);
}

static void run_job(struct pool_worker *w, lja_job *j)
{
    pthread_mutex_lock(&j->lock);
    int skip = atomic_load(&j->state) == JOB_DONE;   /* cancelled while queued */
    if (!skip) {
        atomic_store(&j->state, JOB_RUNNING);
        j->worker = w;
    }
    pthread_mutex_unlock(&j->lock);
    if (skip)
        return;
    current_job = j;
    lja_lua_call_registry(w->L, "lj-async.pool.run", 0, NULL, NULL, 0);
    pthread_mutex_lock(&j->lock);   /* no cancel reaches the state from here on */
    j->worker = NULL;
    lja_lua_clear_hook(w->L);
    pthread_mutex_unlock(&j->lock);
    lja_lua_call_registry(w->L, "lj-async.pool.finish", 0, NULL, NULL, 0);   /* else no result: failed */
    current_job = NULL;
    pthread_mutex_lock(&j->lock);
    atomic_store(&j->state, JOB_DONE);
    pthread_cond_broadcast(&j->done_cond);
    pthread_mutex_unlock(&j->lock);
}

static void *worker_main(void *arg)
{
    struct pool_worker *w = arg;
    lja_pool *p = w->pool;
    w->L = make_state(p);
    pthread_mutex_lock(&p->lock);
    if (!w->L && !w->retire) {
        w->retire = 1;
        p->size--;
    }
    while (w->L) {
        if (!p->head && !p->stopping && !w->retire) {
            pthread_mutex_unlock(&p->lock);
            for (int i = 0; i < IDLE_SPINS && !atomic_load(&p->queued); i++)
                lja_spin_pause(i);
            pthread_mutex_lock(&p->lock);
        }
        while (!p->head && !p->stopping && !w->retire) {
            p->nidle++;
            pthread_cond_wait(&p->work, &p->lock);
            p->nidle--;
        }
        if (w->retire || !p->head)
            break;
        lja_job *j = p->head;
        atomic_fetch_sub(&p->queued, 1);
        p->head = j->next;
        if (!p->head)
            p->tail = NULL;
        w->current = j;
        p->running++;
        pthread_mutex_unlock(&p->lock);

        run_job(w, j);

        pthread_mutex_lock(&p->lock);
        w->current = NULL;
        p->running--;
        pthread_cond_broadcast(&p->changed);
        int retire = w->retire;
        pthread_mutex_unlock(&p->lock);
        lja_job_release(j);
        ptrdiff_t reusable = 0;
        if (!retire && !(lja_lua_call_registry(w->L, "lj-async.pool.reset", 0, &reusable, NULL, 0) && reusable)) {
            lja_lua_close(w->L);
            w->L = make_state(p);
        }
        pthread_mutex_lock(&p->lock);
        if (!w->L && !w->retire) {
            w->retire = 1;
            p->size--;
        }
    }
    void *L = w->L;
    w->L = NULL;
    if (!w->retire)
        p->size--;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    lja_lua_close(L);
    pool_unanchor(p);
    return NULL;
}

/* Called with p->lock held. */
static int start_worker(lja_pool *p)
{
    struct pool_worker **ws = lja_reserve(p->workers, p->nworkers, &p->cworkers, sizeof *ws);
    if (!ws)
        return LJA_ENOMEM;
    p->workers = ws;
    struct pool_worker *w = calloc(1, sizeof *w);
    if (!w)
        return LJA_ENOMEM;
    w->pool = p;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add(&p->anchors, 1);
    int rc = pthread_create(&t, &attr, worker_main, w);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        atomic_fetch_sub(&p->anchors, 1);   /* not the last: the caller holds one */
        free(w);
        return LJA_ESYS;
    }
    p->workers[p->nworkers++] = w;
    p->size++;
    return LJA_OK;
}

/* ---- the watchdog ------------------------------------------------------------ */

/* Cancels what is past its deadline and replaces workers stuck in a
 * cancelled job; returns when it wants to look again (0: nothing to watch).
 * Called with p->lock held. */
static double watch_once(lja_pool *p, double now)
{
    double next = 0;
#define SOONER(t) (next = (next == 0 || (t) < next) ? (t) : next)
    for (lja_job *j = p->head; j; j = j->next) {
        if (j->deadline > 0 && !atomic_load(&j->cancel)) {
            if (now >= j->deadline)
                job_cancel(j, LJA_JOB_TIMEOUT, NULL);
            else
                SOONER(j->deadline);
        }
    }
    int nworkers = p->nworkers;
    for (int i = 0; i < nworkers; i++) {
        struct pool_worker *w = p->workers[i];
        lja_job *j = w->current;
        if (!j || w->retire)
            continue;
        if (!atomic_load(&j->cancel)) {
            if (j->deadline > 0 && now >= j->deadline)
                job_cancel(j, LJA_JOB_TIMEOUT, NULL);
            else if (j->deadline > 0)
                SOONER(j->deadline);
        }
        if (atomic_load(&j->cancel)) {
            double stuck_at = atomic_load(&j->cancel_time) + GRACE;
            if (now >= stuck_at && !p->stopping) {
                w->retire = 1;   /* it leaves when its job returns */
                p->size--;
                start_worker(p);
            } else {
                SOONER(stuck_at);
            }
        }
    }
#undef SOONER
    return next;
}

static void *watchdog_main(void *arg)
{
    lja_pool *p = arg;
    pthread_mutex_lock(&p->lock);
    while (!p->stopping) {
        double next = watch_once(p, lja_now());
        if (next == 0) {
            pthread_cond_wait(&p->watch, &p->lock);
        } else {
            double wait = next - lja_now();
            struct timespec ts = lja_deadline(wait > 0 ? wait : 0);
            lja_cond_wait_until(&p->watch, &p->lock, &ts);
        }
    }
    p->watchdog_running = 0;
    pthread_mutex_unlock(&p->lock);
    pool_unanchor(p);
    return NULL;
}

/* Called with p->lock held: wakes the watchdog, starting it if need be. */
static void watch(lja_pool *p)
{
    if (p->watchdog_running) {
        pthread_cond_signal(&p->watch);
        return;
    }
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add(&p->anchors, 1);
    if (pthread_create(&t, &attr, watchdog_main, p) == 0)
        p->watchdog_running = 1;
    else
        atomic_fetch_sub(&p->anchors, 1);   /* not the last: the caller holds one */
    pthread_attr_destroy(&attr);
}

/* ---- the pool ------------------------------------------------------------------ */

static void pool_free(lja_pool *p)
{
    for (int i = 0; i < p->nworkers; i++)
        free(p->workers[i]);
    free(p->workers);
    for (int i = 0; i < p->nargs; i++)
        free(p->args[i]);
    free(p->args);
    free(p->lens);
    free(p->chunk);
    pthread_cond_destroy(&p->watch);
    pthread_cond_destroy(&p->changed);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* Called with p->lock held: refuse submits, cancel what is queued. */
static void shut(lja_pool *p)
{
    p->shut = 1;
    for (lja_job *j = p->head; j; j = j->next)
        job_cancel(j, LJA_JOB_SHUTDOWN, NULL);
}

static void cancel_running(lja_pool *p, int reason)
{
    for (int i = 0; i < p->nworkers; i++)
        if (p->workers[i]->current)
            job_cancel(p->workers[i]->current, reason, NULL);
}

static void pool_destroy(void *obj)
{
    lja_pool *p = obj;
    pthread_mutex_lock(&p->lock);
    shut(p);
    cancel_running(p, LJA_JOB_SHUTDOWN);
    p->stopping = 1;
    pthread_cond_broadcast(&p->work);
    pthread_cond_signal(&p->watch);
    pthread_mutex_unlock(&p->lock);
    pool_unanchor(p);
}

lja_pool *lja_pool_new(int workers, const char *chunk, size_t len, int nargs,
                       const char *const *args, const size_t *lens)
{
    if (workers < 1 || workers > 4096 || !chunk || nargs < 0 || (nargs && (!args || !lens)))
        return NULL;
    lja_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    lja_cond_init(&p->changed);
    lja_cond_init(&p->watch);
    atomic_init(&p->anchors, 1);   /* the handles' */
    p->chunk = malloc(len ? len : 1);
    p->args = calloc((size_t)nargs + 1, sizeof *p->args);
    p->lens = calloc((size_t)nargs + 1, sizeof *p->lens);
    int ok = p->chunk && p->args && p->lens;
    if (ok) {
        memcpy(p->chunk, chunk, len);
        p->chunk_len = len;
        for (int i = 0; i < nargs && ok; i++) {
            if ((p->args[i] = malloc(lens[i] ? lens[i] : 1))) {
                memcpy(p->args[i], args[i], lens[i]);
                p->lens[i] = lens[i];
                p->nargs = i + 1;
            } else {
                ok = 0;
            }
        }
    }
    if (!ok || lja_object_init(&p->hdr, LJA_KIND_POOL, pool_destroy) != LJA_OK) {
        pool_free(p);
        return NULL;
    }
    pthread_mutex_lock(&p->lock);
    for (int i = 0; i < workers; i++) {
        if (start_worker(p) != LJA_OK)
            break;
    }
    int started = p->size;
    pthread_mutex_unlock(&p->lock);
    if (started == 0) {
        lja_object_release(p);
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
    if (!j)
        return LJA_ENOMEM;
    pthread_mutex_lock(&p->lock);
    if (p->shut) {
        pthread_mutex_unlock(&p->lock);
        j->in_nobjs = 0;   /* not taken: the caller keeps its references */
        atomic_store(&j->refs, 1);
        lja_job_release(j);
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
    if (j->deadline > 0)
        watch(p);
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
    while (p->running > 0 && rc == LJA_OK)
        rc = lja_cond_wait_timeout(&p->changed, &p->lock, grace, &deadline, &have);
    if (p->running > 0) {   /* past the grace time: stop them */
        cancel_running(p, LJA_JOB_SHUTDOWN);
        watch(p);
    }
    p->stopping = 1;
    pthread_cond_broadcast(&p->work);
    pthread_cond_signal(&p->watch);
    /* Workers stuck in C past the grace are left to end on their own. */
    have = 0;
    rc = LJA_OK;
    while (p->running > 0 && rc == LJA_OK)
        rc = lja_cond_wait_timeout(&p->changed, &p->lock, GRACE * 4, &deadline, &have);
    rc = p->running > 0 ? LJA_ETIMEDOUT : LJA_OK;
    pthread_mutex_unlock(&p->lock);
    return rc;
}
