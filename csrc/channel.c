/* channel.c: MPMC channels of messages (README: lj-async.channel).
 *
 * A bounded channel (capacity up to RING_MAX) is a ring of `capacity`
 * slots, a cache line each, that senders and receivers claim without a
 * lock (D. Vyukov's bounded MPMC queue: a slot's sequence number says
 * whether it waits for a sender or a receiver).  A message of at most
 * LJA_MSG_INLINE bytes and no objects is copied into its slot and out to
 * the receiver's buffer: no allocation.  Any other message is one
 * allocation (header, the objects it holds references to, then the bytes),
 * made before it is queued; the slot holds its address.  Unbounded
 * channels (and other capacities) keep such allocations in a list of two
 * halves: senders append to `in` under tail_lock, receivers take from `out`
 * under head_lock and, when it is empty, move all of `in` there at once,
 * so that the two ends meet once a batch, not once a message.
 *
 * On a ring the mutex and condition variables serve only the waits: a
 * sender or receiver that finds nobody waiting (recv_waiters,
 * send_waiters) never takes the lock.  A receiver that finds the channel
 * empty, or a sender that finds it full, spins without the lock before it
 * sleeps, as long as spinning pays (internal.h): a reply that comes
 * within microseconds then costs no futex wake, which is what makes
 * ping-pong between two threads fast. */
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "object.h"
#include "queue.h"

/* Rings of 2 to RING_MAX slots, 64 bytes each, allocated with the channel
 * (at most 1 MiB); other capacities use the list (in a ring of one slot,
 * "full at pos" and "free at pos + 1" would be the same sequence number). */
#define RING_MAX 16384
#define MSG_IN_SLOT ((size_t)-1)   /* slot.len of a slot that holds an lja_msg */
/* Set in tail by close: no sender claims a slot after it. */
#define CLOSED_BIT ((size_t)1 << (sizeof(size_t) * 8 - 1))

struct lja_msg {
    struct lja_msg *next;
    struct lja_channel *home;   /* small messages: the channel that recycles them */
    size_t len;
    int nobjs;
    char *data;        /* right after objs */
    void *objs[];
};

struct slot {
    atomic_size_t seq;   /* pos: free for the sender at pos; pos + 1: full */
    size_t len;          /* bytes in data, or MSG_IN_SLOT */
    union {
        char data[LJA_MSG_INLINE];
        lja_msg *msg;
    } u;
};
_Static_assert(sizeof(struct slot) == 64, "a slot is one cache line");

/* Small list messages are blocks of one size, recycled through their
 * channel's spare stack (popped under tail_lock); a message links
 * there through `next`, its first word. */
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

/* An eventfd signaled at every send and at close (lja_channel_watch_fd):
 * how an event loop (lj-async.asio) waits on a channel without a thread. */
struct fd_watch {
    int fd;
    struct fd_watch *next;
};

struct lja_channel {
    lja_object hdr;
    struct slot *slots;          /* the ring; NULL: the list */
    size_t size;                 /* slots in the ring */
    int64_t capacity;            /* 0: unbounded */
    /* The counts of messages sent (tail, with CLOSED_BIT) and received
     * (head), each on its own line with its end of the queue: on a ring
     * also the positions where senders and receivers claim slots.  Beside
     * each, the count of those who wait to hear of that end's progress
     * (changed under lock): each send reads recv_waiters (receivers
     * asleep, selects, watches), each receive send_waiters (senders
     * asleep), by a read-modify-write that orders it after the queue's
     * change: either the waiter counted itself first, or its check after
     * counting sees the change (TSan knows no fences). */
    _Alignas(64) atomic_size_t tail;
    atomic_int recv_waiters;
    lja_spin send_spin;          /* senders' on a full channel (internal.h) */
    pthread_mutex_t tail_lock;   /* the list's senders; also spare's pops */
    lja_fifo in;                 /* the list's newer half: lja_msg linked through next */
    _Alignas(64) atomic_size_t head;
    atomic_int send_waiters;
    lja_spin recv_spin;          /* receivers' on an empty channel */
    pthread_mutex_t head_lock;   /* the list's receivers */
    lja_fifo out;                /* the list's older half */
    _Alignas(64) pthread_mutex_t lock;   /* the waits, selectors and watches */
    pthread_cond_t not_empty, not_full;
    atomic_int closed;
    struct selector_link *selectors;
    struct fd_watch *watches;
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

static struct slot *slot_at(lja_channel *ch, size_t pos)
{
    return &ch->slots[pos % ch->size];
}

/* Messages queued (also those a sender is still putting in). */
static int64_t length(lja_channel *ch)
{
    size_t head = atomic_load(&ch->head);   /* first: tail only grows */
    return (int64_t)((atomic_load(&ch->tail) & ~CLOSED_BIT) - head);
}

/* Closed and drained: recv returns LJA_ECLOSED.  closed is set after
 * CLOSED_BIT, so the length read after it counts every message. */
static int finished(lja_channel *ch)
{
    return atomic_load(&ch->closed) && length(ch) == 0;
}

static void channel_destroy(void *obj)
{
    lja_channel *ch = obj;
    lja_fifo_concat(&ch->out, &ch->in);
    for (lja_msg *m = ch->out.head, *next; m; m = next) {
        next = m->next;
        release_objects(m);
        free(m);
    }
    if (ch->slots) {
        size_t tail = atomic_load(&ch->tail) & ~CLOSED_BIT;
        for (size_t pos = atomic_load(&ch->head); pos != tail; pos++)
            if (slot_at(ch, pos)->len == MSG_IN_SLOT)
                lja_msg_free(slot_at(ch, pos)->u.msg);
        free(ch->slots);
    }
    lja_spare_free_all(&ch->spare);
    for (struct fd_watch *w = ch->watches, *next; w; w = next) {
        next = w->next;
        free(w);
    }
    pthread_cond_destroy(&ch->not_empty);
    pthread_cond_destroy(&ch->not_full);
    pthread_mutex_destroy(&ch->lock);
    pthread_mutex_destroy(&ch->head_lock);
    pthread_mutex_destroy(&ch->tail_lock);
    free(ch);
}

lja_channel *lja_channel_new(int64_t capacity)
{
    if (capacity < 0)
        return NULL;
    size_t bytes = (sizeof(lja_channel) + 63) / 64 * 64;
    lja_channel *ch = aligned_alloc(64, bytes);
    if (!ch)
        return NULL;
    memset(ch, 0, bytes);
    ch->capacity = capacity;
    atomic_init(&ch->tail, 0);
    atomic_init(&ch->head, 0);
    atomic_init(&ch->recv_waiters, 0);
    atomic_init(&ch->send_waiters, 0);
    lja_spare_init(&ch->spare);
    lja_spin_init(&ch->send_spin);
    lja_spin_init(&ch->recv_spin);
    atomic_init(&ch->closed, 0);
    /* Held for a few instructions at a time by both ends: an adaptive mutex
     * spins briefly instead of sleeping in the kernel under contention. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_MUTEX_ADAPTIVE_NP
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(&ch->lock, &attr);
    pthread_mutex_init(&ch->head_lock, &attr);
    pthread_mutex_init(&ch->tail_lock, &attr);
    pthread_mutexattr_destroy(&attr);
    int ok = lja_cond_init(&ch->not_empty) == LJA_OK && lja_cond_init(&ch->not_full) == LJA_OK;
    if (ok && capacity >= 2 && capacity <= RING_MAX) {
        ch->size = (size_t)capacity;
        ch->slots = aligned_alloc(64, ch->size * sizeof(struct slot));
        ok = ch->slots != NULL;
        for (size_t i = 0; ok && i < ch->size; i++)
            atomic_init(&ch->slots[i].seq, i);
    }
    if (!ok || lja_object_init(&ch->hdr, LJA_KIND_CHANNEL, channel_destroy) != LJA_OK) {
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

/* Signal the watching eventfds; called with ch->lock held. */
static void notify_watches(lja_channel *ch)
{
    for (struct fd_watch *w = ch->watches; w; w = w->next)
        eventfd_write(w->fd, 1);
}

/* After a message went in (no lock held): wake a receiver, the selects and
 * the watches, if any. */
static void after_push(lja_channel *ch)
{
    if (!atomic_fetch_add(&ch->recv_waiters, 0))
        return;
    pthread_mutex_lock(&ch->lock);
    pthread_cond_signal(&ch->not_empty);
    if (ch->selectors)
        notify_selectors(ch);
    if (ch->watches)
        notify_watches(ch);
    pthread_mutex_unlock(&ch->lock);
}

/* After a message came out (no lock held): wake a sender waiting for room. */
static void after_pop(lja_channel *ch)
{
    if (!atomic_fetch_add(&ch->send_waiters, 0))
        return;
    pthread_mutex_lock(&ch->lock);
    pthread_cond_signal(&ch->not_full);
    pthread_mutex_unlock(&ch->lock);
}

int lja_channel_watch_fd(lja_channel *ch, int fd, int on)
{
    if (fd < 0)
        return LJA_EINVAL;
    struct fd_watch *w = NULL;
    if (on && !(w = malloc(sizeof *w)))
        return LJA_ENOMEM;
    int rc = LJA_OK;
    pthread_mutex_lock(&ch->lock);
    struct fd_watch **p = &ch->watches;
    while (*p && (*p)->fd != fd)
        p = &(*p)->next;
    if (on && !*p) {
        w->fd = fd;
        w->next = NULL;
        *p = w;
        w = NULL;
        atomic_fetch_add(&ch->recv_waiters, 1);
    } else if (!on && *p) {
        w = *p;
        *p = w->next;
        atomic_fetch_sub(&ch->recv_waiters, 1);
    } else {
        rc = on ? LJA_EBUSY : LJA_ENOTFOUND;
    }
    pthread_mutex_unlock(&ch->lock);
    free(w);
    return rc;
}

/* What a sender queues: the bytes inline in a slot, or msg. */
struct parcel {
    const char *data;
    size_t len;
    lja_msg *msg;
};

/* Queues p: LJA_OK, LJA_EAGAIN (full) or LJA_ECLOSED. */
static int push(lja_channel *ch, const struct parcel *p)
{
    if (!ch->slots) {
        int rc = LJA_OK;
        pthread_mutex_lock(&ch->tail_lock);
        size_t t = atomic_load(&ch->tail);
        if (t & CLOSED_BIT)
            rc = LJA_ECLOSED;
        else if (ch->capacity && (int64_t)(t - atomic_load(&ch->head)) >= ch->capacity)
            rc = LJA_EAGAIN;
        else if (!atomic_compare_exchange_strong(&ch->tail, &t, t + 1))
            rc = LJA_ECLOSED;   /* only close changes tail outside tail_lock */
        else
            lja_fifo_push(&ch->in, p->msg);
        pthread_mutex_unlock(&ch->tail_lock);
        return rc;
    }
    size_t pos = atomic_load_explicit(&ch->tail, memory_order_relaxed);
    struct slot *s;
    for (;;) {
        if (pos & CLOSED_BIT)
            return LJA_ECLOSED;
        s = slot_at(ch, pos);
        intptr_t d = (intptr_t)(atomic_load_explicit(&s->seq, memory_order_acquire) - pos);
        if (d == 0 && atomic_compare_exchange_weak_explicit(&ch->tail, &pos, pos + 1, memory_order_relaxed,
                                                             memory_order_relaxed))
            break;
        if (d < 0)
            return LJA_EAGAIN;   /* the slot still holds the message of pos - size */
        if (d > 0)
            pos = atomic_load_explicit(&ch->tail, memory_order_relaxed);
    }
    if (p->msg) {
        s->len = MSG_IN_SLOT;
        s->u.msg = p->msg;
    } else {
        s->len = p->len;
        memcpy(s->u.data, p->data, p->len);
    }
    atomic_store_explicit(&s->seq, pos + 1, memory_order_release);
    return LJA_OK;
}

/* Takes the first message: 1, with *msg set or (msg NULL) the bytes copied
 * to buf and *len set; 0 if there is none. */
static int pop(lja_channel *ch, lja_msg **msg, char *buf, size_t *len)
{
    if (!ch->slots) {
        pthread_mutex_lock(&ch->head_lock);
        if (!ch->out.head) {
            pthread_mutex_lock(&ch->tail_lock);
            lja_fifo_concat(&ch->out, &ch->in);
            pthread_mutex_unlock(&ch->tail_lock);
        }
        if ((*msg = lja_fifo_shift(&ch->out)))
            atomic_fetch_add(&ch->head, 1);
        pthread_mutex_unlock(&ch->head_lock);
        return *msg != NULL;
    }
    size_t pos = atomic_load_explicit(&ch->head, memory_order_relaxed);
    struct slot *s;
    for (;;) {
        s = slot_at(ch, pos);
        intptr_t d = (intptr_t)(atomic_load_explicit(&s->seq, memory_order_acquire) - (pos + 1));
        if (d == 0 && atomic_compare_exchange_weak_explicit(&ch->head, &pos, pos + 1, memory_order_relaxed,
                                                             memory_order_relaxed))
            break;
        if (d < 0)
            return 0;   /* empty, or its sender is still copying */
        if (d > 0)
            pos = atomic_load_explicit(&ch->head, memory_order_relaxed);
    }
    if (s->len == MSG_IN_SLOT) {
        *msg = s->u.msg;
    } else {
        *msg = NULL;
        *len = s->len;
        memcpy(buf, s->u.data, s->len);
    }
    atomic_store_explicit(&s->seq, pos + ch->size, memory_order_release);
    return 1;
}

/* Whether the channel has a message (room: room for one).  On a ring this
 * reads the slot where that end goes next, not the other end's count: a
 * spinning receiver then leaves the senders' line alone (and a sender the
 * receivers'), and reads the slot it would fetch anyway. */
static int ready(lja_channel *ch, int room)
{
    if (!ch->slots)
        return room ? length(ch) < ch->capacity : length(ch) > 0;
    size_t pos = atomic_load_explicit(room ? &ch->tail : &ch->head, memory_order_relaxed) & ~CLOSED_BIT;
    return atomic_load_explicit(&slot_at(ch, pos)->seq, memory_order_relaxed) == (room ? pos : pos + 1);
}

/* What a spinning sender (room) or receiver waits for: the channel ready
 * (see ready) or closed, or a cancel or pause of the calling thread (the
 * wait under the lock meets it). */
static int can_send(void *ch)
{
    return ready(ch, 1) || atomic_load(&((lja_channel *)ch)->closed) || lja_thread_poll();
}

static int can_recv(void *ch)
{
    return ready(ch, 0) || atomic_load(&((lja_channel *)ch)->closed) || lja_thread_poll();
}

/* The spin before a wait, as long as spinning pays (internal.h). */
static void spin_until_ready(lja_channel *ch, int room)
{
    if (room)
        lja_spin_until(&ch->send_spin, can_send, ch);
    else
        lja_spin_until(&ch->recv_spin, can_recv, ch);
}

/* The waiting part of send: with ch->lock held, sleeps on not_full until p
 * goes in, the channel closes or the timeout passes. */
static int wait_push(lja_channel *ch, const struct parcel *p, double timeout)
{
    struct timespec deadline;
    int have = 0, rc, waited = LJA_OK;
    atomic_fetch_add(&ch->send_waiters, 1);
    while ((rc = push(ch, p)) == LJA_EAGAIN && waited == LJA_OK)
        waited = lja_wait_timeout(&ch->not_full, &ch->lock, timeout, &deadline, &have);
    atomic_fetch_sub(&ch->send_waiters, 1);
    return rc;
}

int lja_channel_send(lja_channel *ch, const char *data, size_t len, void *const *objs, int nobjs,
                     double timeout)
{
    if (nobjs < 0 || (nobjs > 0 && !objs))
        return LJA_EINVAL;
    struct parcel p = {data, len, NULL};
    int ring = ch->slots != NULL;
    if (!ring || nobjs || len > LJA_MSG_INLINE) {
        int small = !ring && is_small(len, nobjs);
        if (small) {
            pthread_mutex_lock(&ch->tail_lock);
            p.msg = lja_spare_pop(&ch->spare);
            pthread_mutex_unlock(&ch->tail_lock);
        }
        if (!p.msg)
            p.msg = malloc(small ? SMALL_BLOCK : sizeof *p.msg + (size_t)nobjs * sizeof(void *) + len);
        if (!p.msg) {
            for (int i = 0; i < nobjs; i++)   /* not sent: its references go (ljasync.h) */
                lja_object_release(objs[i]);
            return LJA_ENOMEM;
        }
        p.msg->home = small ? ch : NULL;
        fill(p.msg, data, len, objs, nobjs);
    }
    int rc = push(ch, &p);
    if (rc == LJA_EAGAIN && timeout != 0) {
        spin_until_ready(ch, 1);
        rc = push(ch, &p);
    }
    if (rc == LJA_EAGAIN && timeout != 0) {
        pthread_mutex_lock(&ch->lock);
        rc = wait_push(ch, &p, timeout);
        pthread_mutex_unlock(&ch->lock);
    }
    if (rc == LJA_OK) {
        after_push(ch);
        return LJA_OK;
    }
    lja_msg_free(p.msg);   /* not sent: its references go too */
    return rc == LJA_EAGAIN ? LJA_ETIMEDOUT : rc;
}

/* The waiting part of recv: with ch->lock held, takes a message, sleeping
 * on not_empty until one comes, the channel is closed and drained or the
 * timeout passes.  Returns pop's result. */
static int wait_pop(lja_channel *ch, lja_msg **msg, char *buf, size_t *len, double timeout)
{
    struct timespec deadline;
    int have = 0, got, waited = LJA_OK;
    atomic_fetch_add(&ch->recv_waiters, 1);
    while (!(got = pop(ch, msg, buf, len)) && !finished(ch) && waited == LJA_OK)
        waited = lja_wait_timeout(&ch->not_empty, &ch->lock, timeout, &deadline, &have);
    atomic_fetch_sub(&ch->recv_waiters, 1);
    return got;
}

int lja_channel_recv_into(lja_channel *ch, lja_msg **msg, char *buf, size_t *len, double timeout)
{
    *msg = NULL;
    int got = pop(ch, msg, buf, len);   /* ch->lock only to wait */
    if (!got && timeout != 0) {
        spin_until_ready(ch, 0);
        got = pop(ch, msg, buf, len);
    }
    if (!got && timeout != 0) {
        pthread_mutex_lock(&ch->lock);
        got = wait_pop(ch, msg, buf, len, timeout);
        pthread_mutex_unlock(&ch->lock);
    }
    if (got) {
        after_pop(ch);
        return LJA_OK;
    }
    return finished(ch) ? LJA_ECLOSED : LJA_ETIMEDOUT;
}

/* For callers that want every message as an lja_msg: one whose bytes came
 * inline is copied to a block taken before the message is, so that no
 * message is lost to a failed malloc. */
int lja_channel_recv(lja_channel *ch, lja_msg **msg, double timeout)
{
    *msg = NULL;
    if (!ch->slots)   /* a list holds every message as an lja_msg */
        return lja_channel_recv_into(ch, msg, NULL, NULL, timeout);
    lja_msg *block = malloc(sizeof *block + LJA_MSG_INLINE);
    if (!block)
        return LJA_ENOMEM;
    char buf[LJA_MSG_INLINE];
    size_t len = 0;
    int rc = lja_channel_recv_into(ch, msg, buf, &len, timeout);
    if (rc == LJA_OK && !*msg) {
        block->home = NULL;
        fill(block, buf, len, NULL, 0);
        *msg = block;
    } else {
        free(block);
    }
    return rc;
}

void lja_channel_close(lja_channel *ch)
{
    pthread_mutex_lock(&ch->lock);
    atomic_fetch_or(&ch->tail, CLOSED_BIT);   /* before closed: see finished */
    atomic_store(&ch->closed, 1);
    pthread_cond_broadcast(&ch->not_empty);
    pthread_cond_broadcast(&ch->not_full);
    notify_selectors(ch);
    notify_watches(ch);
    pthread_mutex_unlock(&ch->lock);
}

int64_t lja_channel_len(lja_channel *ch)
{
    return length(ch);
}

/* Takes a message from the first ready channel: LJA_OK, or LJA_ECLOSED
 * for a closed and drained one; LJA_EAGAIN if none is ready. */
static int take_ready(lja_channel *const *chs, int n, int *index, lja_msg **msg, char *buf, size_t *len)
{
    for (int i = 0; i < n; i++) {
        lja_channel *ch = chs[i];
        if (length(ch) == 0 && !atomic_load(&ch->closed))
            continue;
        int got = pop(ch, msg, buf, len);
        if (got || finished(ch)) {
            *index = i;
            if (!got)
                return LJA_ECLOSED;
            after_pop(ch);
            return LJA_OK;
        }
    }
    return LJA_EAGAIN;
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
            atomic_fetch_add(&ch->recv_waiters, 1);
        } else {
            struct selector_link **p = &ch->selectors;
            while (*p != &links[i])
                p = &(*p)->next;
            *p = links[i].next;
            atomic_fetch_sub(&ch->recv_waiters, 1);
        }
        pthread_mutex_unlock(&ch->lock);
    }
}

int lja_channel_select(lja_channel *const *chs, int n, int *index, lja_msg **msg, char *buf, size_t *len,
                       double timeout)
{
    *msg = NULL;
    *index = -1;
    if (n < 1 || !chs)
        return LJA_EINVAL;
    int rc = take_ready(chs, n, index, msg, buf, len);
    if (rc != LJA_EAGAIN)
        return rc;
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
    int have = 0, waited = LJA_OK;
    watch(chs, n, links, &sel, 1);
    while ((rc = take_ready(chs, n, index, msg, buf, len)) == LJA_EAGAIN && waited == LJA_OK) {
        pthread_mutex_lock(&sel.lock);
        while (!sel.signaled && waited == LJA_OK)
            waited = lja_wait_timeout(&sel.ready, &sel.lock, timeout, &deadline, &have);
        sel.signaled = 0;
        pthread_mutex_unlock(&sel.lock);
    }
    watch(chs, n, links, &sel, 0);
    if (rc == LJA_EAGAIN)
        rc = take_ready(chs, n, index, msg, buf, len);
    pthread_cond_destroy(&sel.ready);
    pthread_mutex_destroy(&sel.lock);
    free(links);
    return rc == LJA_EAGAIN ? LJA_ETIMEDOUT : rc;
}
