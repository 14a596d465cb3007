/* state.c: who is inside a callable state, and interrupting it
 * (README: lj-async.state).  The lua_State itself is driven from Lua. */
#include <stdlib.h>

#include "object.h"

struct lja_state {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t left;
    void *L;          /* NULL once closed */
    atomic_int inside;   /* written under lock; read without it to spin */
    int waiters;
    lja_spin spin;
};

static void state_destroy(void *obj)
{
    lja_state *st = obj;
    /* A state still open when its last handle goes is closed here. */
    if (st->L)
        lja_lua_close(st->L);
    pthread_cond_destroy(&st->left);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

lja_state *lja_state_new(void *L)
{
    lja_state *st = calloc(1, sizeof *st);
    if (!st || !L) {
        free(st);
        return NULL;
    }
    st->L = L;
    atomic_init(&st->inside, 0);
    lja_spin_init(&st->spin);
    pthread_mutex_init(&st->lock, NULL);
    if (lja_cond_init(&st->left) != LJA_OK) {
        pthread_mutex_destroy(&st->lock);
        free(st);
        return NULL;
    }
    if (lja_object_init(&st->hdr, LJA_KIND_STATE, state_destroy) != LJA_OK) {
        st->L = NULL;
        state_destroy(st);
        return NULL;
    }
    return st;
}

void *lja_state_lua(lja_state *st)
{
    pthread_mutex_lock(&st->lock);
    void *L = st->L;
    pthread_mutex_unlock(&st->lock);
    return L;
}

/* What a spinning caller waits for (a cancel or pause ends the spin). */
static int left(void *p)
{
    lja_state *st = p;
    return !atomic_load(&st->inside) || lja_thread_poll();
}

int lja_state_enter(lja_state *st, double timeout)
{
    struct timespec deadline;
    if (timeout > 0)
        deadline = lja_deadline(timeout);
    int rc = LJA_OK;
    if (timeout != 0 && !left(st))
        lja_spin_until(&st->spin, left, st);
    pthread_mutex_lock(&st->lock);
    while (st->L && st->inside && rc == LJA_OK) {
        if (timeout == 0) {
            rc = LJA_EBUSY;
            break;
        }
        st->waiters++;
        rc = lja_wait_until(&st->left, &st->lock, timeout > 0 ? &deadline : NULL);
        st->waiters--;
    }
    if (!st->L)
        rc = LJA_ECLOSED;
    else if (!st->inside)
        rc = LJA_OK, st->inside = 1;
    else if (rc == LJA_OK)
        rc = LJA_ETIMEDOUT;
    pthread_mutex_unlock(&st->lock);
    return rc;
}

void lja_state_leave(lja_state *st)
{
    pthread_mutex_lock(&st->lock);
    lja_lua_clear_hook(st->L);
    st->inside = 0;
    pthread_cond_broadcast(&st->left);
    pthread_mutex_unlock(&st->lock);
}

void *lja_state_close(lja_state *st, double timeout)
{
    if (lja_state_enter(st, timeout) != LJA_OK)
        return NULL;
    pthread_mutex_lock(&st->lock);
    void *L = st->L;
    st->L = NULL;
    st->inside = 0;
    lja_object_drop_name(&st->hdr);   /* free at once for a new state (README) */
    pthread_cond_broadcast(&st->left);
    pthread_mutex_unlock(&st->lock);
    return L;
}

int lja_state_interrupt(lja_state *st)
{
    pthread_mutex_lock(&st->lock);
    int rc = !st->L ? LJA_ECLOSED : !st->inside ? LJA_EAGAIN : LJA_OK;
    if (rc == LJA_OK)
        lja_lua_interrupt(st->L);
    pthread_mutex_unlock(&st->lock);
    return rc;
}
