/* sync.c: mutexes, conditions, semaphores and atomics that any thread or
 * state may share (README: lj-async.sync), and who is inside a callable
 * state (README: lj-async.state).  Waits use monotonic deadlines, so the
 * mutex is a count under an internal lock rather than a pthread mutex
 * (whose timed lock measures the wall clock). */
#include <stdlib.h>

#include "object.h"
#include "queue.h"


/* ---- counter ----
 * What semaphores, mutexes and callable states are: a count that a wait
 * takes one from (waiting while it is 0) and a post adds to.  A mutex is
 * free at 1 and locked at 0; a callable state is a mutex around its
 * lua_State, with the caller inside holding it.  A condition uses its lock,
 * its condition variable and its queue; an atomic is the count alone. */

typedef struct counter {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t posted;
    _Atomic int64_t n;          /* written under lock; read without it to spin */
    int waiters;
    lja_spin spin;
    void *L;                    /* a state's lua_State; NULL once closed */
    _Atomic(uintptr_t) owner;   /* a state's caller inside (its thread's tag), or 0 */
    lja_fifo queue;             /* a condition's waiters (struct cond_waiter) */
} counter;

struct lja_mutex { counter c; };
struct lja_semaphore { counter c; };
struct lja_cond { counter c; };
struct lja_atomic { counter c; };
struct lja_state { counter c; };

static void counter_destroy(void *obj)
{
    counter *c = obj;
    /* A state still open when its last handle goes is closed here. */
    if (c->L)
        lja_lua_close(c->L);
    pthread_cond_destroy(&c->posted);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static void *counter_new(int kind, int64_t n, void *L)
{
    counter *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    atomic_init(&c->n, n);
    lja_spin_init(&c->spin);
    pthread_mutex_init(&c->lock, NULL);
    if (lja_cond_init(&c->posted) != LJA_OK) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
    }
    if (lja_object_init(&c->hdr, kind, counter_destroy) != LJA_OK) {
        counter_destroy(c);
        return NULL;
    }
    c->L = L;   /* only now: on failure the caller still owns L */
    return c;
}

/* What a spinning waiter waits for (a cancel or pause ends the spin). */
static int positive(void *p)
{
    counter *c = p;
    return atomic_load(&c->n) > 0 || lja_thread_poll();
}

/* Takes one, waiting up to timeout.  A cancellable wait is a cancellation
 * point of lj-async threads (it returns LJA_ETIMEDOUT once the thread is
 * cancelled). */
static int take(counter *c, double timeout, int cancellable)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    if (timeout != 0 && !positive(c))
        lja_spin_until(&c->spin, positive, c);
    pthread_mutex_lock(&c->lock);
    c->waiters++;
    while (c->n == 0 && rc == LJA_OK)
        rc = cancellable ? lja_wait_timeout(&c->posted, &c->lock, timeout, &deadline, &have)
                         : lja_cond_wait_timeout(&c->posted, &c->lock, timeout, &deadline, &have);
    c->waiters--;
    if (c->n > 0) {
        c->n--;
        rc = LJA_OK;
    } else {
        rc = LJA_ETIMEDOUT;
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Adds d, up to max (saturating), and wakes as many waiters; called with
 * c->lock held.  Returns the count before. */
static int64_t post_locked(counter *c, int64_t d, int64_t max)
{
    int64_t was = c->n;
    c->n = d > max - was ? max : was + d;
    if (c->waiters && c->n > was) {
        if (d == 1)
            pthread_cond_signal(&c->posted);
        else
            pthread_cond_broadcast(&c->posted);
    }
    return was;
}

/* ---- mutex ---- */

lja_mutex *lja_mutex_new(void)
{
    return counter_new(LJA_KIND_MUTEX, 1, NULL);
}

int lja_mutex_lock(lja_mutex *m, double timeout)
{
    return take(&m->c, timeout, 1);
}

int lja_mutex_unlock(lja_mutex *m)
{
    pthread_mutex_lock(&m->c.lock);
    int64_t was = post_locked(&m->c, 1, 1);
    pthread_mutex_unlock(&m->c.lock);
    return was == 0 ? LJA_OK : LJA_EINVAL;
}

/* ---- condition ----
 * Waiters queue up (FIFO) under c->lock before they unlock the user's
 * mutex, and signals take c->lock: so no signal falls between the unlock
 * and the wait, and a signal wakes one of those waiting when it was given
 * (a later waiter cannot take it).  A waiter that times out leaves the queue. */

struct cond_waiter {
    struct cond_waiter *next;   /* first: the queue links through it */
    int signaled;
    int paused;                 /* its thread is paused (README lj-async.thread) */
};

lja_cond *lja_cond_new(void)
{
    return counter_new(LJA_KIND_COND, 0, NULL);
}

/* Takes w out of c's queue; called with c->lock held. */
static void leave_queue(counter *c, struct cond_waiter *w)
{
    struct cond_waiter *prev = NULL, *p = c->queue.head;
    while (p != w)
        prev = p, p = p->next;
    if (prev)
        prev->next = w->next;
    else
        c->queue.head = w->next;
    if (c->queue.tail == w)
        c->queue.tail = prev;
}

int lja_cond_wait(lja_cond *cv, lja_mutex *m, double timeout)
{
    counter *c = &cv->c;
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    struct cond_waiter self = {NULL, 0, 0};
    pthread_mutex_lock(&c->lock);
    if (lja_mutex_unlock(m) != LJA_OK) {
        pthread_mutex_unlock(&c->lock);
        return LJA_EINVAL;
    }
    lja_fifo_push(&c->queue, &self);
    while (!self.signaled && rc == LJA_OK) {
        if (lja_thread_poll() != LJA_THREAD_PAUSE) {   /* no pause, or a cancel (the wait returns at once) */
            rc = lja_wait_timeout(&c->posted, &c->lock, timeout, &deadline, &have);
            continue;
        }
        if (timeout > 0 && !have)   /* paused here, marked for wake_one; the timeout counts the pause */
            deadline = lja_deadline(timeout), have = 1;
        self.paused = 1;
        pthread_mutex_unlock(&c->lock);
        lja_thread_checkpoint();
        pthread_mutex_lock(&c->lock);
        self.paused = 0;
    }
    if (self.signaled)
        rc = LJA_OK;      /* a signal given before the timeout counts */
    else                  /* timed out: leave the queue */
        leave_queue(c, &self);
    pthread_mutex_unlock(&c->lock);
    take(&m->c, -1, 0);   /* m is locked again on return, even in a cancelled thread */
    return rc;
}

/* Wakes the first waiter that is not paused, or else the first one (a
 * paused wait takes nothing while another waits, README lj-async.thread);
 * called with c->lock held. */
static int wake_one(counter *c)
{
    struct cond_waiter *w = c->queue.head;
    while (w && w->paused)
        w = w->next;
    if (!w)
        w = c->queue.head;
    if (w) {
        leave_queue(c, w);
        w->signaled = 1;
    }
    return w != NULL;
}

void lja_cond_signal(lja_cond *cv)
{
    pthread_mutex_lock(&cv->c.lock);
    if (wake_one(&cv->c))
        pthread_cond_broadcast(&cv->c.posted);   /* the one signaled finds its flag */
    pthread_mutex_unlock(&cv->c.lock);
}

void lja_cond_broadcast(lja_cond *cv)
{
    pthread_mutex_lock(&cv->c.lock);
    if (wake_one(&cv->c)) {
        while (wake_one(&cv->c)) {
        }
        pthread_cond_broadcast(&cv->c.posted);
    }
    pthread_mutex_unlock(&cv->c.lock);
}

/* ---- semaphore ---- */

lja_semaphore *lja_semaphore_new(int64_t count)
{
    return count < 0 ? NULL : counter_new(LJA_KIND_SEMAPHORE, count, NULL);
}

int lja_semaphore_wait(lja_semaphore *s, double timeout)
{
    return take(&s->c, timeout, 1);
}

void lja_semaphore_post(lja_semaphore *s, int64_t n)
{
    if (n <= 0)
        return;
    pthread_mutex_lock(&s->c.lock);
    post_locked(&s->c, n, INT64_MAX);
    pthread_mutex_unlock(&s->c.lock);
}

/* ---- atomic ---- */

lja_atomic *lja_atomic_new(int64_t value)
{
    return counter_new(LJA_KIND_ATOMIC, value, NULL);
}

int64_t *lja_atomic_cell(lja_atomic *a)
{
    return (int64_t *)&a->c.n;   /* only through lja_atomic_load & co. */
}

/* ---- callable state ----
 * The lua_State itself is driven from Lua (lj-async/state.lua). */

lja_state *lja_state_new(void *L)
{
    return L ? counter_new(LJA_KIND_STATE, 1, L) : NULL;
}

void *lja_state_lua(lja_state *st)
{
    pthread_mutex_lock(&st->c.lock);
    void *L = st->c.L;
    pthread_mutex_unlock(&st->c.lock);
    return L;
}

/* The calling thread's tag: the address of a thread-local. */
static uintptr_t thread_tag(void)
{
    static _Thread_local char tag;
    return (uintptr_t)&tag;
}

int lja_state_enter(lja_state *st, double timeout)
{
    /* The caller inside (its handler calls or closes its own state, maybe
     * through another state) would wait for itself forever.  Only it ever
     * reads its own tag there: it wrote it, and cleared it on leaving. */
    if (atomic_load_explicit(&st->c.owner, memory_order_relaxed) == thread_tag())
        return LJA_EBUSY;
    int rc = take(&st->c, timeout, 1);
    if (rc == LJA_OK)
        atomic_store_explicit(&st->c.owner, thread_tag(), memory_order_relaxed);
    if (rc == LJA_OK && st->c.L)   /* inside: only a close, from inside, sets L */
        return LJA_OK;
    if (rc == LJA_OK)
        lja_state_leave(st);   /* closed: the next waiter finds out too */
    return !lja_state_lua(st) ? LJA_ECLOSED : timeout == 0 ? LJA_EBUSY : rc;
}

/* The hook goes under the lock that interrupt takes: a late interrupt
 * cannot hook the next caller. */
void lja_state_leave(lja_state *st)
{
    atomic_store_explicit(&st->c.owner, 0, memory_order_relaxed);
    pthread_mutex_lock(&st->c.lock);
    lja_lua_clear_hook(st->c.L);
    post_locked(&st->c, 1, 1);
    pthread_mutex_unlock(&st->c.lock);
}

void *lja_state_close(lja_state *st, double timeout)
{
    if (lja_state_enter(st, timeout) != LJA_OK)
        return NULL;
    pthread_mutex_lock(&st->c.lock);
    void *L = st->c.L;
    st->c.L = NULL;
    atomic_store_explicit(&st->c.owner, 0, memory_order_relaxed);
    lja_object_drop_name(&st->c.hdr);   /* free at once for a new state (README) */
    post_locked(&st->c, 1, 1);
    pthread_mutex_unlock(&st->c.lock);
    return L;
}

int lja_state_interrupt(lja_state *st)
{
    pthread_mutex_lock(&st->c.lock);
    int rc = !st->c.L ? LJA_ECLOSED : st->c.n ? LJA_EAGAIN : LJA_OK;
    if (rc == LJA_OK)
        lja_lua_interrupt(st->c.L);
    pthread_mutex_unlock(&st->c.lock);
    return rc;
}
