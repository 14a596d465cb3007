/* thread.c: OS threads with timed join, a result slot, after-run cleanup,
 * and control from other threads: cancel and pause (README: lj-async.thread).
 *
 * Control: t->ctl holds the requests (LJA_THREAD_CANCEL, LJA_THREAD_PAUSE).
 * The thread meets them at its cancellation points: lja_thread_poll (the
 * safepoints of source code and the step hook read it), lja_thread_checkpoint
 * (pauses there), and the waits of lja_wait_timeout.  A thread blocked in such a
 * wait registers the wait's mutex and condition; a request broadcasts that
 * condition under its mutex, so the wait wakes at once and its caller sees
 * a timeout, with whatever it had taken (a message, a lock) kept.  While the
 * thread runs Lua (lja_thread_attach), a cancel also sets the count hook on
 * its state, which stops interpreted code outside lj-async's own functions. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct lja_thread {
    pthread_mutex_t lock;
    pthread_cond_t changed;   /* finished, paused, resumed or cancelled */
    atomic_int finished;      /* written under lock; read without it to spin */
    int paused;               /* guarded by lock: stopped at a point */
    int cancelled;            /* guarded by lock: a cancel stopped it (set by the runner) */
    atomic_int ctl;           /* LJA_THREAD_CANCEL | LJA_THREAD_PAUSE: requests */
    atomic_int refs;          /* the creator's handle, the running thread, lists */
    pthread_mutex_t *wait_m;  /* guarded by lock: the wait the thread is blocked in */
    pthread_cond_t *wait_c;
    void *L;                  /* guarded by lock: the state running Lua, or NULL */
    int step;                 /* the count hook's period (0: none) */
    uint64_t id;
    char *name;
    lja_thread *prev, *next;  /* in the list of live threads, under list_lock */
    lja_thread_fn run, cleanup;
    void *arg, *cleanup_arg;
    char *input, *result;
    size_t input_len, result_len;
};

static void thread_unref(lja_thread *t)
{
    if (atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    pthread_cond_destroy(&t->changed);
    pthread_mutex_destroy(&t->lock);
    free(t->name);
    free(t->input);
    free(t->result);
    free(t);
}

/* The live threads, for lja_thread_list. */
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;
static lja_thread *live;

static void list_remove(lja_thread *t)
{
    pthread_mutex_lock(&list_lock);
    if (t->prev || live == t) {
        if (t->prev)
            t->prev->next = t->next;
        else
            live = t->next;
        if (t->next)
            t->next->prev = t->prev;
        t->prev = t->next = NULL;
    }
    pthread_mutex_unlock(&list_lock);
}

/* Initial-exec: in the thread's static TLS, read without __tls_get_addr
 * (lja_thread_poll runs in every loop of source code), and not a block
 * that glibc mallocs per thread and frees from another thread. */
#define LJA_TLS _Thread_local __attribute__((tls_model("initial-exec")))
static LJA_TLS lja_thread *current;
static LJA_TLS uint64_t current_id;
static atomic_uint_fast64_t next_id = 1;

lja_thread *lja_thread_self(void)
{
    return current;
}

static void *thread_main(void *p)
{
    lja_thread *t = p;
    current = t;
    current_id = t->id;
    if (t->name) {   /* what debuggers and top show; Linux keeps 15 bytes */
        char os_name[16];
        snprintf(os_name, sizeof os_name, "%s", t->name);
        pthread_setname_np(pthread_self(), os_name);
    }
    t->run(t->arg);
    list_remove(t);
    pthread_mutex_lock(&t->lock);
    t->finished = 1;
    pthread_cond_broadcast(&t->changed);
    pthread_mutex_unlock(&t->lock);
    if (t->cleanup)
        t->cleanup(t->cleanup_arg);
    thread_unref(t);
    return NULL;
}

int lja_thread_start(lja_thread **out, lja_thread_fn run, void *arg,
                     lja_thread_fn cleanup, void *cleanup_arg,
                     const char *input, size_t input_len, const lja_thread_opts *opts)
{
    if (!out || !run || (opts && (opts->ncpus < 0 || opts->step < 0 || (opts->ncpus && !opts->cpus))))
        return LJA_EINVAL;
    lja_thread *t = calloc(1, sizeof *t);
    if (!t)
        return LJA_ENOMEM;
    pthread_mutex_init(&t->lock, NULL);
    if (lja_cond_init(&t->changed) != LJA_OK) {
        pthread_mutex_destroy(&t->lock);
        free(t);
        return LJA_ESYS;
    }
    atomic_init(&t->refs, 1);   /* the handle's */
    t->input = lja_copy(input, input_len);
    t->name = opts && opts->name ? strdup(opts->name) : NULL;
    if (!t->input || (opts && opts->name && !t->name)) {
        thread_unref(t);
        return LJA_ENOMEM;
    }
    t->input_len = input_len;
    t->run = run;
    t->arg = arg;
    t->cleanup = cleanup;
    t->cleanup_arg = cleanup_arg;
    t->step = opts ? opts->step : 0;
    t->id = atomic_fetch_add(&next_id, 1);
    atomic_init(&t->ctl, 0);
    atomic_init(&t->finished, 0);

    /* Detached from the start: join waits on `finished`, and the last
     * reference frees the object, so no pthread_join is ever owed. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = 0;
    if (opts && opts->stack)
        rc = pthread_attr_setstacksize(&attr, opts->stack);
    if (rc == 0 && opts && opts->ncpus) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < opts->ncpus; i++) {
            if (opts->cpus[i] < 0 || opts->cpus[i] >= CPU_SETSIZE)
                rc = EINVAL;
            else
                CPU_SET(opts->cpus[i], &set);
        }
        if (rc == 0)
            rc = pthread_attr_setaffinity_np(&attr, sizeof set, &set);
    }
    pthread_mutex_lock(&list_lock);   /* listed before it runs: it unlists itself at its end */
    t->next = live;
    if (live)
        live->prev = t;
    live = t;
    pthread_mutex_unlock(&list_lock);
    atomic_fetch_add(&t->refs, 1);   /* the running thread's */
    pthread_t tid;
    if (rc == 0)
        rc = pthread_create(&tid, &attr, thread_main, t);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        list_remove(t);
        thread_unref(t);   /* the thread's, then the handle's */
        thread_unref(t);
        return rc == EAGAIN ? LJA_EAGAIN : rc == EINVAL ? LJA_EINVAL : LJA_ESYS;
    }
    *out = t;
    return LJA_OK;
}

/* What a spinning join waits for (a cancel or pause ends the spin).  One
 * budget serves all joins: a thread is joined once. */
static int finished(void *p)
{
    lja_thread *t = p;
    return atomic_load(&t->finished) || lja_thread_poll();
}

static lja_spin join_spin = {LJA_SPIN_MIN, 0, 0};

int lja_thread_join(lja_thread *t, double timeout)
{
    struct timespec deadline;
    int have = timeout > 0, rc = LJA_OK;
    if (have)   /* from now, not after the spin */
        deadline = lja_deadline(timeout);
    if (timeout != 0 && !finished(t))
        lja_spin_until(&join_spin, finished, t);
    pthread_mutex_lock(&t->lock);
    while (!t->finished && rc == LJA_OK)
        rc = lja_wait_timeout(&t->changed, &t->lock, timeout, &deadline, &have);
    rc = t->finished ? LJA_OK : LJA_ETIMEDOUT;
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void lja_thread_release(lja_thread *t)
{
    if (t)
        thread_unref(t);
}

const char *lja_thread_input(lja_thread *t, size_t *len)
{
    *len = t->input_len;
    return t->input;
}

int lja_thread_set_result(lja_thread *t, const char *data, size_t len)
{
    char *result = lja_copy(data, len);
    if (!result)
        return LJA_ENOMEM;
    pthread_mutex_lock(&t->lock);
    free(t->result);
    t->result = result;
    t->result_len = len;
    pthread_mutex_unlock(&t->lock);
    return LJA_OK;
}

const char *lja_thread_result(lja_thread *t, size_t *len)
{
    pthread_mutex_lock(&t->lock);
    const char *r = t->finished ? t->result : NULL;
    *len = r ? t->result_len : 0;
    pthread_mutex_unlock(&t->lock);
    return r;
}

/* ---- control ---------------------------------------------------------------- */

/* Wakes t where it waits, after a request changed t->ctl; called with
 * t->lock held.  The registered wait's mutex is only tried: its owner may
 * be t itself, between taking it and waiting, and t then meets the request
 * before it waits (lja_wait_timeout checks after registering). */
static void wake(lja_thread *t)
{
    pthread_cond_broadcast(&t->changed);   /* a pause or a sleep */
    while (t->wait_m) {
        if (pthread_mutex_trylock(t->wait_m) == 0) {
            pthread_cond_broadcast(t->wait_c);
            pthread_mutex_unlock(t->wait_m);
            return;
        }
        pthread_mutex_unlock(&t->lock);
        sched_yield();
        pthread_mutex_lock(&t->lock);
    }
}

int lja_thread_cancel(lja_thread *t)
{
    pthread_mutex_lock(&t->lock);
    int rc = t->finished ? LJA_EINVAL : LJA_OK;
    if (rc == LJA_OK && !(atomic_fetch_or(&t->ctl, LJA_THREAD_CANCEL) & LJA_THREAD_CANCEL)) {
        if (t->L)
            lja_lua_cancel_thread(t->L);
        wake(t);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* Waits until t is paused or finished; LJA_ETIMEDOUT if not in time. */
int lja_thread_pause(lja_thread *t, double timeout)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    pthread_mutex_lock(&t->lock);
    if (!t->finished && !(atomic_fetch_or(&t->ctl, LJA_THREAD_PAUSE) & LJA_THREAD_PAUSE))
        wake(t);
    while (!t->paused && !t->finished && rc == LJA_OK)
        rc = lja_wait_timeout(&t->changed, &t->lock, timeout, &deadline, &have);
    rc = t->finished ? LJA_EINVAL : t->paused ? LJA_OK : LJA_ETIMEDOUT;
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void lja_thread_resume(lja_thread *t)
{
    pthread_mutex_lock(&t->lock);
    if (atomic_fetch_and(&t->ctl, ~LJA_THREAD_PAUSE) & LJA_THREAD_PAUSE) {
        t->paused = 0;   /* running from now on, as its status says */
        pthread_cond_broadcast(&t->changed);
    }
    pthread_mutex_unlock(&t->lock);
}

int lja_thread_state(lja_thread *t)
{
    pthread_mutex_lock(&t->lock);
    int s = !t->finished ? (t->paused ? LJA_THREAD_PAUSED : LJA_THREAD_RUNNING)
                         : (t->cancelled ? LJA_THREAD_CANCELLED : LJA_THREAD_FINISHED);
    pthread_mutex_unlock(&t->lock);
    return s;
}

uint64_t lja_thread_handle_id(lja_thread *t)
{
    return t->id;
}

const char *lja_thread_name(lja_thread *t)
{
    return t->name;
}

int lja_thread_list(lja_thread **out, int cap)
{
    int n = 0;
    pthread_mutex_lock(&list_lock);
    for (lja_thread *t = live; t; t = t->next) {
        if (n < cap) {
            atomic_fetch_add(&t->refs, 1);
            out[n] = t;
        }
        n++;
    }
    pthread_mutex_unlock(&list_lock);
    return n;
}

int lja_thread_poll(void)
{
    lja_thread *t = current;
    return t ? atomic_load_explicit(&t->ctl, memory_order_relaxed) : 0;
}

/* Stays paused while a pause is asked and no cancel; called with t->lock. */
static void pause_locked(lja_thread *t)
{
    if (!(atomic_load(&t->ctl) & LJA_THREAD_PAUSE) || (atomic_load(&t->ctl) & LJA_THREAD_CANCEL))
        return;
    t->paused = 1;
    pthread_cond_broadcast(&t->changed);
    while ((atomic_load(&t->ctl) & LJA_THREAD_PAUSE) && !(atomic_load(&t->ctl) & LJA_THREAD_CANCEL))
        pthread_cond_wait(&t->changed, &t->lock);
    t->paused = 0;
}

int lja_thread_checkpoint(void)
{
    lja_thread *t = current;
    if (!t)
        return 0;
    int ctl = atomic_load(&t->ctl);
    if (ctl == LJA_THREAD_PAUSE) {
        pthread_mutex_lock(&t->lock);
        pause_locked(t);
        pthread_mutex_unlock(&t->lock);
        ctl = atomic_load(&t->ctl);
    }
    return (ctl & LJA_THREAD_CANCEL) != 0;
}

void lja_thread_attach(lja_thread *t, void *L)
{
    pthread_mutex_lock(&t->lock);
    if (L && (atomic_load(&t->ctl) & LJA_THREAD_CANCEL))
        lja_lua_cancel_thread(L);
    else if (L && t->step)
        lja_lua_step(L, t->step);
    else if (!L && t->L)
        lja_lua_clear_hook(t->L);
    t->L = L;
    pthread_mutex_unlock(&t->lock);
}

void lja_thread_set_cancelled(lja_thread *t)
{
    pthread_mutex_lock(&t->lock);
    t->cancelled = 1;
    pthread_mutex_unlock(&t->lock);
}

int lja_wait_timeout(pthread_cond_t *c, pthread_mutex_t *m, double timeout,
                     struct timespec *deadline, int *have_deadline)
{
    lja_thread *t = current;
    if (!t || timeout == 0)
        return lja_cond_wait_timeout(c, m, timeout, deadline, have_deadline);
    int ctl = atomic_load(&t->ctl);
    if (ctl & LJA_THREAD_CANCEL)
        return LJA_ETIMEDOUT;   /* the caller returns what it has; the Lua side raises */
    if (ctl & LJA_THREAD_PAUSE) {   /* as a long spurious wake-up: the caller checks again */
        if (timeout > 0 && !*have_deadline)   /* the timeout counts the pause */
            *deadline = lja_deadline(timeout), *have_deadline = 1;
        pthread_mutex_unlock(m);
        lja_thread_checkpoint();
        pthread_mutex_lock(m);
        return LJA_OK;
    }
    pthread_mutex_lock(&t->lock);
    t->wait_m = m;
    t->wait_c = c;
    pthread_mutex_unlock(&t->lock);
    int rc = LJA_OK;
    if (!atomic_load(&t->ctl))   /* else a request came in between: the caller comes back */
        rc = lja_cond_wait_timeout(c, m, timeout, deadline, have_deadline);
    pthread_mutex_lock(&t->lock);
    t->wait_m = NULL;
    t->wait_c = NULL;
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void lja_sleep(double seconds)
{
    if (!(seconds > 0))  /* also rejects NaN */
        return;
    struct timespec deadline = lja_deadline(seconds);
    lja_thread *t = current;
    if (!t) {
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR) {
        }
        return;
    }
    int rc = LJA_OK;   /* an lj-async thread: a cancel wakes it */
    pthread_mutex_lock(&t->lock);
    while (!(atomic_load(&t->ctl) & LJA_THREAD_CANCEL) && rc == LJA_OK)
        rc = lja_cond_wait_until(&t->changed, &t->lock, &deadline);
    pthread_mutex_unlock(&t->lock);
}

uint64_t lja_thread_id(void)
{
    if (!current_id)
        current_id = atomic_fetch_add(&next_id, 1);
    return current_id;
}

int lja_cpu_count(void)
{
    long online = sysconf(_SC_NPROCESSORS_ONLN);   /* lj-async/thread.lua keeps it */
    return online > 0 ? (int)online : 1;
}
