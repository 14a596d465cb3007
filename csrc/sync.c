/* sync.c: mutexes, conditions, semaphores and atomics that any thread or
 * state may share (README: lj-async.sync).  Waits use monotonic deadlines, so the
 * mutex is a flag under an internal lock rather than a pthread mutex
 * (whose timed lock measures the wall clock). */
#include <stdlib.h>

#include "object.h"


/* ---- mutex ---- */

struct lja_mutex {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t unlocked;
    atomic_int locked;          /* written under lock; read without it to spin */
    int waiters;
    lja_spin spin;
};

static void mutex_destroy(void *obj)
{
    lja_mutex *m = obj;
    pthread_cond_destroy(&m->unlocked);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

lja_mutex *lja_mutex_new(void)
{
    lja_mutex *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    atomic_init(&m->locked, 0);
    lja_spin_init(&m->spin);
    pthread_mutex_init(&m->lock, NULL);
    if (lja_cond_init(&m->unlocked) != LJA_OK) {
        pthread_mutex_destroy(&m->lock);
        free(m);
        return NULL;
    }
    if (lja_object_init(&m->hdr, LJA_KIND_MUTEX, mutex_destroy) != LJA_OK) {
        mutex_destroy(m);
        return NULL;
    }
    return m;
}

/* What a spinning locker waits for (a cancel or pause ends the spin). */
static int mutex_free(void *p)
{
    lja_mutex *m = p;
    return !atomic_load(&m->locked) || lja_thread_poll();
}

/* A cancellable lock is a cancellation point of lj-async threads (it
 * returns LJA_ETIMEDOUT once the thread is cancelled). */
static int mutex_lock(lja_mutex *m, double timeout, int cancellable)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    if (timeout != 0 && !mutex_free(m))
        lja_spin_until(&m->spin, mutex_free, m);
    pthread_mutex_lock(&m->lock);
    m->waiters++;
    while (m->locked && rc == LJA_OK)
        rc = cancellable ? lja_wait_timeout(&m->unlocked, &m->lock, timeout, &deadline, &have)
                         : lja_cond_wait_timeout(&m->unlocked, &m->lock, timeout, &deadline, &have);
    m->waiters--;
    if (!m->locked) {
        m->locked = 1;
        rc = LJA_OK;
    } else {
        rc = LJA_ETIMEDOUT;
    }
    pthread_mutex_unlock(&m->lock);
    return rc;
}

int lja_mutex_lock(lja_mutex *m, double timeout)
{
    return mutex_lock(m, timeout, 1);
}

int lja_mutex_unlock(lja_mutex *m)
{
    pthread_mutex_lock(&m->lock);
    int was = m->locked;
    m->locked = 0;
    if (was && m->waiters)
        pthread_cond_signal(&m->unlocked);
    pthread_mutex_unlock(&m->lock);
    return was ? LJA_OK : LJA_EINVAL;
}

/* ---- condition ----
 * Waiters queue up (FIFO) under c->lock before they unlock the user's
 * mutex, and signals take c->lock: so no signal falls between the unlock
 * and the wait, and a signal wakes one of those waiting when it was given
 * (a later waiter cannot take it).  A waiter that times out leaves the queue. */

struct cond_waiter {
    struct cond_waiter *next;
    int signaled;
};

struct lja_cond {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t cv;
    struct cond_waiter *head, *tail;
};

static void cond_destroy(void *obj)
{
    lja_cond *c = obj;
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

lja_cond *lja_cond_new(void)
{
    lja_cond *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    if (lja_cond_init(&c->cv) != LJA_OK) {
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
    }
    if (lja_object_init(&c->hdr, LJA_KIND_COND, cond_destroy) != LJA_OK) {
        cond_destroy(c);
        return NULL;
    }
    return c;
}

int lja_cond_wait(lja_cond *c, lja_mutex *m, double timeout)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    struct cond_waiter self = {NULL, 0};
    pthread_mutex_lock(&c->lock);
    if (lja_mutex_unlock(m) != LJA_OK) {
        pthread_mutex_unlock(&c->lock);
        return LJA_EINVAL;
    }
    if (c->tail)
        c->tail->next = &self;
    else
        c->head = &self;
    c->tail = &self;
    while (!self.signaled && rc == LJA_OK)
        rc = lja_wait_timeout(&c->cv, &c->lock, timeout, &deadline, &have);
    if (self.signaled) {
        rc = LJA_OK;      /* a signal given before the timeout counts */
    } else {              /* timed out: leave the queue */
        struct cond_waiter **p = &c->head, *prev = NULL;
        while (*p != &self) {
            prev = *p;
            p = &(*p)->next;
        }
        *p = self.next;
        if (c->tail == &self)
            c->tail = prev;
    }
    pthread_mutex_unlock(&c->lock);
    mutex_lock(m, -1, 0);   /* m is locked again on return, even in a cancelled thread */
    return rc;
}

/* Wakes the first waiter; called with c->lock held. */
static int wake_one(lja_cond *c)
{
    struct cond_waiter *w = c->head;
    if (!w)
        return 0;
    c->head = w->next;
    if (!c->head)
        c->tail = NULL;
    w->signaled = 1;
    return 1;
}

void lja_cond_signal(lja_cond *c)
{
    pthread_mutex_lock(&c->lock);
    if (wake_one(c))
        pthread_cond_broadcast(&c->cv);   /* the one signaled finds its flag */
    pthread_mutex_unlock(&c->lock);
}

void lja_cond_broadcast(lja_cond *c)
{
    pthread_mutex_lock(&c->lock);
    int woken = 0;
    while (wake_one(c))
        woken = 1;
    if (woken)
        pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->lock);
}

/* ---- semaphore ---- */

struct lja_semaphore {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t posted;
    _Atomic int64_t count;      /* written under lock; read without it to spin */
    lja_spin spin;
};

static void semaphore_destroy(void *obj)
{
    lja_semaphore *s = obj;
    pthread_cond_destroy(&s->posted);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

lja_semaphore *lja_semaphore_new(int64_t count)
{
    lja_semaphore *s = calloc(1, sizeof *s);
    if (!s || count < 0) {
        free(s);
        return NULL;
    }
    atomic_init(&s->count, count);
    lja_spin_init(&s->spin);
    pthread_mutex_init(&s->lock, NULL);
    if (lja_cond_init(&s->posted) != LJA_OK) {
        pthread_mutex_destroy(&s->lock);
        free(s);
        return NULL;
    }
    if (lja_object_init(&s->hdr, LJA_KIND_SEMAPHORE, semaphore_destroy) != LJA_OK) {
        semaphore_destroy(s);
        return NULL;
    }
    return s;
}

/* What a spinning waiter waits for (a cancel or pause ends the spin). */
static int posted(void *p)
{
    lja_semaphore *s = p;
    return atomic_load(&s->count) > 0 || lja_thread_poll();
}

int lja_semaphore_wait(lja_semaphore *s, double timeout)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    if (timeout != 0 && !posted(s))
        lja_spin_until(&s->spin, posted, s);
    pthread_mutex_lock(&s->lock);
    while (s->count == 0 && rc == LJA_OK)
        rc = lja_wait_timeout(&s->posted, &s->lock, timeout, &deadline, &have);
    if (s->count > 0) {
        s->count--;
        rc = LJA_OK;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void lja_semaphore_post(lja_semaphore *s, int64_t n)
{
    if (n <= 0)
        return;
    pthread_mutex_lock(&s->lock);
    int64_t count = atomic_load(&s->count);
    atomic_store(&s->count, n > INT64_MAX - count ? INT64_MAX : count + n);   /* saturates */
    if (n == 1)
        pthread_cond_signal(&s->posted);
    else
        pthread_cond_broadcast(&s->posted);
    pthread_mutex_unlock(&s->lock);
}

/* ---- atomic ---- */

struct lja_atomic {
    lja_object hdr;
    int64_t cell;   /* only through lja_atomic_load & co. */
};

static void atomic_destroy(void *obj)
{
    free(obj);
}

lja_atomic *lja_atomic_new(int64_t value)
{
    lja_atomic *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    lja_atomic_store(&a->cell, value);
    if (lja_object_init(&a->hdr, LJA_KIND_ATOMIC, atomic_destroy) != LJA_OK) {
        free(a);
        return NULL;
    }
    return a;
}

int64_t *lja_atomic_cell(lja_atomic *a)
{
    return &a->cell;
}
