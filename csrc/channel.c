/* channel.c: MPMC channels of messages (SPEC section 5).
 *
 * A message is one allocation: header, the objects it holds references to,
 * then the sender's bytes, copied before the channel's lock is taken.  The
 * queue is a list under one mutex.  A receiver that finds the channel empty
 * spins briefly (without the lock) before it sleeps: a reply that comes
 * within microseconds then costs no futex wake, which is what makes
 * ping-pong between two threads fast. */
#include <stdlib.h>
#include <string.h>

#include "object.h"

#define SPIN_ROUNDS 2000  /* polls of the count (~ tens of microseconds) */

struct lja_msg {
    struct lja_msg *next;
    struct lja_channel *home;   /* small messages: the channel that recycles them */
    size_t len;
    int nobjs;
    char *data;        /* right after objs */
    void *objs[];
};

/* Small messages are blocks of one size, recycled through their channel's
 * spare stack (popped under the channel's lock); a message links there
 * through `next`, its first word. */
#define SMALL_BLOCK 256
#define SPARE_MAX 256

static int is_small(size_t len, int nobjs)
{
    return sizeof(lja_msg) + (size_t)nobjs * sizeof(void *) + len <= SMALL_BLOCK;
}

/* A select in progress, registered on each channel it waits on. */
struct selector {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    int signaled;
};

struct selector_link {
    struct selector *sel;
    struct selector_link *next;
};

struct lja_channel {
    lja_object hdr;
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    lja_msg *head, *tail;
    atomic_llong count;          /* written under lock; read without it to spin */
    int64_t capacity;            /* 0: unbounded */
    atomic_int closed;
    int recv_waiters, send_waiters;
    struct selector_link *selectors;
    lja_spare_stack spare;       /* recycled small blocks */
};

static void release_objects(lja_msg *msg)
{
    for (int i = 0; i < msg->nobjs; i++)
        lja_object_release(msg->objs[i]);
}

/* A message goes back to its channel: the caller must still hold a
 * reference to that channel (the Lua side frees inside recv). */
void lja_msg_free(lja_msg *msg)
{
    if (!msg)
        return;
    release_objects(msg);
    if (msg->home)
        lja_spare_push(&msg->home->spare, msg, SPARE_MAX);
    else
        free(msg);
}

static void fill(lja_msg *msg, const char *data, size_t len, void *const *objs, int nobjs)
{
    msg->next = NULL;
    msg->len = len;
    msg->nobjs = nobjs;
    msg->data = (char *)(msg->objs + nobjs);
    if (nobjs)
        memcpy(msg->objs, objs, (size_t)nobjs * sizeof(void *));
    if (len)
        memcpy(msg->data, data, len);
}

const char *lja_msg_data(lja_msg *msg, size_t *len)
{
    *len = msg->len;
    return msg->data;
}

static void channel_destroy(void *obj)
{
    lja_channel *ch = obj;
    for (lja_msg *m = ch->head, *next; m; m = next) {
        next = m->next;
        release_objects(m);
        free(m);
    }
    lja_spare_free_all(&ch->spare);
    pthread_cond_destroy(&ch->not_empty);
    pthread_cond_destroy(&ch->not_full);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

lja_channel *lja_channel_new(int64_t capacity)
{
    if (capacity < 0)
        return NULL;
    lja_channel *ch = calloc(1, sizeof *ch);
    if (!ch)
        return NULL;
    ch->capacity = capacity;
    atomic_init(&ch->count, 0);
    lja_spare_init(&ch->spare);
    atomic_init(&ch->closed, 0);
    /* Held for a few instructions at a time by both ends: an adaptive mutex
     * spins briefly instead of sleeping in the kernel under contention. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_MUTEX_ADAPTIVE_NP
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(&ch->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    if (lja_cond_init(&ch->not_empty) != LJA_OK || lja_cond_init(&ch->not_full) != LJA_OK ||
        lja_object_init(&ch->hdr, LJA_KIND_CHANNEL, channel_destroy) != LJA_OK) {
        channel_destroy(ch);
        return NULL;
    }
    return ch;
}


/* Wake selects waiting on ch; called with ch->lock held. */
static void notify_selectors(lja_channel *ch)
{
    for (struct selector_link *l = ch->selectors; l; l = l->next) {
        pthread_mutex_lock(&l->sel->lock);
        l->sel->signaled = 1;
        pthread_cond_signal(&l->sel->ready);
        pthread_mutex_unlock(&l->sel->lock);
    }
}

int lja_channel_send(lja_channel *ch, const char *data, size_t len, void *const *objs, int nobjs,
                     double timeout)
{
    if (nobjs < 0 || (nobjs > 0 && !objs))
        return LJA_EINVAL;
    lja_msg *msg = NULL;
    int small = is_small(len, nobjs);
    if (small) {
        /* a recycled block is taken and filled under the lock (<= 256 bytes) */
        pthread_mutex_lock(&ch->lock);
        msg = lja_spare_pop(&ch->spare);
        if (!msg)
            pthread_mutex_unlock(&ch->lock);
    }
    if (!msg) {
        msg = malloc(small ? SMALL_BLOCK : sizeof *msg + (size_t)nobjs * sizeof(void *) + len);
        if (!msg) {
            for (int i = 0; i < nobjs; i++)   /* not sent: its references go too */
                lja_object_release(objs[i]);
            return LJA_ENOMEM;
        }
        pthread_mutex_lock(&ch->lock);
    }
    msg->home = small ? ch : NULL;
    fill(msg, data, len, objs, nobjs);

    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    while (!atomic_load(&ch->closed) && ch->capacity && atomic_load(&ch->count) >= ch->capacity &&
           rc == LJA_OK) {
        ch->send_waiters++;
        rc = lja_cond_wait_timeout(&ch->not_full, &ch->lock, timeout, &deadline, &have);
        ch->send_waiters--;
    }
    if (atomic_load(&ch->closed)) {
        rc = LJA_ECLOSED;
    } else if (!ch->capacity || atomic_load(&ch->count) < ch->capacity) {
        rc = LJA_OK;
        if (ch->tail)
            ch->tail->next = msg;
        else
            ch->head = msg;
        ch->tail = msg;
        atomic_fetch_add(&ch->count, 1);
        if (ch->recv_waiters)
            pthread_cond_signal(&ch->not_empty);
        if (ch->selectors)
            notify_selectors(ch);
    } else {
        rc = LJA_ETIMEDOUT;
    }
    pthread_mutex_unlock(&ch->lock);
    if (rc != LJA_OK)
        lja_msg_free(msg);   /* not sent: its references go too */
    return rc;
}

/* Pops a message; called with ch->lock held. */
static lja_msg *pop(lja_channel *ch)
{
    lja_msg *msg = ch->head;
    if (!msg)
        return NULL;
    ch->head = msg->next;
    if (!ch->head)
        ch->tail = NULL;
    atomic_fetch_sub(&ch->count, 1);
    if (ch->send_waiters)
        pthread_cond_signal(&ch->not_full);
    return msg;
}

int lja_channel_recv(lja_channel *ch, lja_msg **out, double timeout)
{
    *out = NULL;
    if (timeout != 0) {
        for (int i = 0; i < SPIN_ROUNDS && atomic_load(&ch->count) == 0 && !atomic_load(&ch->closed); i++)
            lja_spin_pause(i);
    }
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    pthread_mutex_lock(&ch->lock);
    while (!ch->head && !atomic_load(&ch->closed) && rc == LJA_OK) {
        ch->recv_waiters++;
        rc = lja_cond_wait_timeout(&ch->not_empty, &ch->lock, timeout, &deadline, &have);
        ch->recv_waiters--;
    }
    lja_msg *msg = pop(ch);
    pthread_mutex_unlock(&ch->lock);
    if (msg) {
        *out = msg;
        return LJA_OK;
    }
    return atomic_load(&ch->closed) ? LJA_ECLOSED : LJA_ETIMEDOUT;
}

void lja_channel_close(lja_channel *ch)
{
    pthread_mutex_lock(&ch->lock);
    atomic_store(&ch->closed, 1);
    pthread_cond_broadcast(&ch->not_empty);
    pthread_cond_broadcast(&ch->not_full);
    notify_selectors(ch);
    pthread_mutex_unlock(&ch->lock);
}

int64_t lja_channel_len(lja_channel *ch)
{
    return atomic_load(&ch->count);
}

/* Takes a message from the first ready channel: 1 if one was ready (msg or,
 * for a closed and drained channel, NULL), 0 if none. */
static int take_ready(lja_channel *const *chs, int n, int *index, lja_msg **msg)
{
    for (int i = 0; i < n; i++) {
        lja_channel *ch = chs[i];
        if (atomic_load(&ch->count) == 0 && !atomic_load(&ch->closed))
            continue;
        pthread_mutex_lock(&ch->lock);
        lja_msg *m = pop(ch);
        int closed = atomic_load(&ch->closed);
        pthread_mutex_unlock(&ch->lock);
        if (m || closed) {
            *index = i;
            *msg = m;
            return 1;
        }
    }
    return 0;
}

static void watch(lja_channel *const *chs, int n, struct selector_link *links, struct selector *sel, int on)
{
    for (int i = 0; i < n; i++) {
        lja_channel *ch = chs[i];
        pthread_mutex_lock(&ch->lock);
        if (on) {
            links[i].sel = sel;
            links[i].next = ch->selectors;
            ch->selectors = &links[i];
        } else {
            struct selector_link **p = &ch->selectors;
            while (*p != &links[i])
                p = &(*p)->next;
            *p = links[i].next;
        }
        pthread_mutex_unlock(&ch->lock);
    }
}

int lja_channel_select(lja_channel *const *chs, int n, int *index, lja_msg **msg, double timeout)
{
    *msg = NULL;
    *index = -1;
    if (n < 1 || !chs)
        return LJA_EINVAL;
    if (take_ready(chs, n, index, msg))
        return LJA_OK;
    if (timeout == 0)
        return LJA_ETIMEDOUT;
    struct selector_link *links = calloc((size_t)n, sizeof *links);
    if (!links)
        return LJA_ENOMEM;
    struct selector sel;
    pthread_mutex_init(&sel.lock, NULL);
    lja_cond_init(&sel.ready);
    sel.signaled = 0;
    struct timespec deadline;
    int have = 0, rc = LJA_OK, got = 0;
    watch(chs, n, links, &sel, 1);
    while (!(got = take_ready(chs, n, index, msg)) && rc == LJA_OK) {
        pthread_mutex_lock(&sel.lock);
        while (!sel.signaled && rc == LJA_OK)
            rc = lja_cond_wait_timeout(&sel.ready, &sel.lock, timeout, &deadline, &have);
        sel.signaled = 0;
        pthread_mutex_unlock(&sel.lock);
    }
    watch(chs, n, links, &sel, 0);
    if (!got)
        got = take_ready(chs, n, index, msg);
    pthread_cond_destroy(&sel.ready);
    pthread_mutex_destroy(&sel.lock);
    free(links);
    return got ? LJA_OK : LJA_ETIMEDOUT;
}
