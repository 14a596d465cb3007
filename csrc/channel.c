/* channel.c: MPMC channels of messages (README: lj-async.channel).
 *
 * Every channel is a ring of slots, a cache line each, that senders and
 * receivers claim without a lock (D. Vyukov's bounded MPMC queue: a slot's
 * sequence number says whether it waits for a sender or a receiver).  A
 * message of at most LJA_MSG_INLINE bytes and no objects is copied into its
 * slot and out to the receiver's buffer: no allocation.  Any other message is
 * one allocation (header, the objects it holds references to, then the
 * bytes), made before it is queued; the slot holds its address.
 *
 * A channel with a capacity up to RING_MAX has a ring of that many slots.
 * Any other starts small and grows its ring (twice as large, at most its
 * capacity) when a sender finds it full: under the lock, the grower freezes
 * both ends (FROZEN_BIT: whoever meets it waits on the lock), waits for
 * those that had claimed a slot to finish with it, copies the messages into
 * the new ring and moves both positions on by the new size, so that a
 * thread still holding an old position fails its claim and reads again.  An
 * old ring is freed with the channel: a late thread may still read a
 * sequence number there, and every one of them is behind every new position.
 *
 * The mutex and condition variables serve only the waits and the growth: a
 * sender or receiver that finds nobody waiting (recv_waiters,
 * send_waiters) never takes the lock.  A receiver that finds the channel
 * empty, or a sender that finds a full ring that cannot grow, spins without
 * the lock before it sleeps, as long as spinning pays (internal.h): a reply
 * that comes within microseconds then costs no futex wake, which is what
 * makes ping-pong between two threads fast. */
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "object.h"

/* Rings made whole when the channel is (at most 1 MiB), and the first size
 * of a growing one. */
#define RING_MAX 16384
#define RING_FIRST 4
/* The path of every message, inlined where the operation is known, so that
 * send and receive each run only their own half, without calls (a send and
 * a receive took some 60 instructions more as calls). */
#define HOT static inline __attribute__((always_inline))
#define MSG_IN_SLOT ((size_t)-1)   /* slot.len of a slot that holds an lja_msg */
/* Set in tail by close: no sender claims a slot after it. */
#define CLOSED_BIT ((size_t)1 << (sizeof(size_t) * 8 - 1))
/* Set in tail and head while the ring grows. */
#define FROZEN_BIT (CLOSED_BIT >> 1)

struct lja_msg {
    struct lja_msg *next;       /* in the spare stack */
    struct lja_channel *home;   /* small messages: the channel that recycles them */
    size_t len;
    int nobjs;
    char *data;        /* right after objs */
    void *objs[];
};

/* Sequence numbers count in twos, so that a ring of one slot works too:
 * 2 pos: free for the sender of pos; 2 pos + 1: holds message pos. */
struct slot {
    _Alignas(64) atomic_size_t seq;
    size_t len;          /* bytes in data, or MSG_IN_SLOT */
    union {
        char data[LJA_MSG_INLINE];
        lja_msg *msg;
    } u;
};
_Static_assert(sizeof(struct slot) == 64, "a slot is one cache line");

struct ring {
    size_t size;
    struct ring *older;   /* the ring this one replaced */
    struct slot slots[];
};

/* Small messages are blocks of one size, recycled through their channel's
 * spare stack (popped under spare_lock). */
#define SMALL_BLOCK 256
#define SPARE_MAX 256
_Static_assert(sizeof(lja_msg) + LJA_MSG_INLINE <= SMALL_BLOCK, "lja_channel_recv copies into one");

/* A select in progress, registered on each channel it waits on. */
struct selector {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    int signaled;
};

/* Who hears of every send and of the close, besides the receivers asleep:
 * a select in progress (sel), or an eventfd (lja_channel_watch_fd: how an
 * event loop, lj-async.asio, waits on a channel without a thread). */
struct watcher {
    struct watcher *next;
    struct selector *sel;   /* NULL: fd */
    int fd;
};

struct lja_channel {
    lja_object hdr;
    _Atomic(struct ring *) ring;
    size_t limit;                /* the largest ring: the capacity (unbounded: SIZE_MAX) */
    /* The counts of messages sent (tail, with CLOSED_BIT) and received
     * (head), each on its own line with its end of the queue: also the
     * positions where senders and receivers claim slots.  Beside each, the
     * count of those who wait to hear of that end's progress (changed under
     * lock): each send reads recv_waiters (receivers asleep, selects,
     * watches), each receive send_waiters (senders asleep), by a
     * read-modify-write that orders it after the queue's change: either the
     * waiter counted itself first, or its check after counting sees the
     * change (TSan knows no fences). */
    _Alignas(64) atomic_size_t tail;
    atomic_int recv_waiters;
    lja_spin send_spin;          /* senders' on a full channel (internal.h) */
    _Alignas(64) atomic_size_t head;
    atomic_int send_waiters;
    lja_spin recv_spin;          /* receivers' on an empty channel */
    _Alignas(64) pthread_mutex_t lock;   /* the waits, growth and watchers */
    pthread_cond_t not_empty, not_full;
    atomic_int closed;
    struct watcher *watchers;
    pthread_mutex_t spare_lock;  /* spare's pops */
    lja_spare_stack spare;       /* recycled small blocks */
};

/* A message goes back to its channel: the caller must still hold a
 * reference to that channel (the Lua side frees inside recv). */
void lja_msg_free(lja_msg *msg)
{
    if (!msg)
        return;
    for (int i = 0; i < msg->nobjs; i++)
        lja_object_release(msg->objs[i]);
    if (msg->home)
        lja_spare_push(&msg->home->spare, msg, SPARE_MAX);
    else
        free(msg);
}

/* A message of len bytes and nobjs objects, copied in; NULL when out of
 * memory. */
static lja_msg *msg_new(lja_channel *ch, const char *data, size_t len, void *const *objs, int nobjs)
{
    size_t bytes = sizeof(lja_msg) + (size_t)nobjs * sizeof(void *) + len;
    lja_msg *msg = NULL;
    if (bytes <= SMALL_BLOCK) {
        pthread_mutex_lock(&ch->spare_lock);
        msg = lja_spare_pop(&ch->spare);
        pthread_mutex_unlock(&ch->spare_lock);
    }
    if (!msg && !(msg = malloc(bytes <= SMALL_BLOCK ? SMALL_BLOCK : bytes)))
        return NULL;
    msg->home = bytes <= SMALL_BLOCK ? ch : NULL;
    msg->len = len;
    msg->nobjs = nobjs;
    msg->data = (char *)(msg->objs + nobjs);
    if (nobjs)
        memcpy(msg->objs, objs, (size_t)nobjs * sizeof(void *));
    if (len)
        memcpy(msg->data, data, len);
    return msg;
}

const char *lja_msg_data(lja_msg *msg, size_t *len)
{
    *len = msg->len;
    return msg->data;
}

static struct ring *ring_new(size_t size)
{
    struct ring *r = aligned_alloc(64, sizeof *r + size * sizeof(struct slot));
    if (r) {
        r->size = size;
        r->older = NULL;
    }
    return r;
}

static struct slot *slot_at(struct ring *r, size_t pos)
{
    return &r->slots[pos % r->size];
}

/* While a grow has the ring frozen, it holds the lock: wait for it there
 * (never called with the lock held: nobody who holds it sees a freeze). */
static void wait_growth(lja_channel *ch)
{
    pthread_mutex_lock(&ch->lock);
    pthread_mutex_unlock(&ch->lock);
}

/* Messages queued (also those a sender is still putting in). */
int64_t lja_channel_len(lja_channel *ch)
{
    for (;;) {
        size_t head = atomic_load(&ch->head), tail = atomic_load(&ch->tail);   /* head first: tail only grows */
        if ((head | tail) & FROZEN_BIT)
            wait_growth(ch);
        else if (atomic_load(&ch->head) == head)   /* no growth moved it since */
            return (int64_t)((tail & ~CLOSED_BIT) - head);
    }
}

static void channel_destroy(void *obj)
{
    lja_channel *ch = obj;
    struct ring *r = atomic_load(&ch->ring);
    size_t tail = atomic_load(&ch->tail) & ~CLOSED_BIT;
    for (size_t pos = atomic_load(&ch->head); r && pos != tail; pos++)
        if (slot_at(r, pos)->len == MSG_IN_SLOT)
            lja_msg_free(slot_at(r, pos)->u.msg);
    for (struct ring *older; r; r = older) {
        older = r->older;
        free(r);
    }
    lja_spare_free_all(&ch->spare);
    for (struct watcher *w = ch->watchers, *next; w; w = next) {   /* eventfds: selects are gone */
        next = w->next;
        free(w);
    }
    pthread_cond_destroy(&ch->not_empty);
    pthread_cond_destroy(&ch->not_full);
    pthread_mutex_destroy(&ch->lock);
    pthread_mutex_destroy(&ch->spare_lock);
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
    memset(ch, 0, bytes);   /* every count, flag and list starts at zero */
    ch->limit = capacity ? (size_t)capacity : SIZE_MAX;
    lja_spin_init(&ch->send_spin);
    lja_spin_init(&ch->recv_spin);
    /* Held for a few instructions at a time by both ends: an adaptive mutex
     * spins briefly instead of sleeping in the kernel under contention. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_MUTEX_ADAPTIVE_NP
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    pthread_mutex_init(&ch->lock, &attr);
    pthread_mutex_init(&ch->spare_lock, &attr);
    pthread_mutexattr_destroy(&attr);
    struct ring *r = ring_new(capacity && capacity <= RING_MAX ? (size_t)capacity : RING_FIRST);
    for (size_t i = 0; r && i < r->size; i++)
        atomic_init(&r->slots[i].seq, 2 * i);
    atomic_init(&ch->ring, r);
    if (!r || lja_cond_init(&ch->not_empty) != LJA_OK || lja_cond_init(&ch->not_full) != LJA_OK ||
        lja_object_init(&ch->hdr, LJA_KIND_CHANNEL, channel_destroy) != LJA_OK) {
        channel_destroy(ch);
        return NULL;
    }
    return ch;
}

/* Wake the watchers; called with ch->lock held. */
static void notify_watchers(lja_channel *ch)
{
    for (struct watcher *w = ch->watchers; w; w = w->next) {
        if (!w->sel) {
            eventfd_write(w->fd, 1);
            continue;
        }
        pthread_mutex_lock(&w->sel->lock);
        w->sel->signaled = 1;
        pthread_cond_signal(&w->sel->ready);
        pthread_mutex_unlock(&w->sel->lock);
    }
}

/* Where w is among ch's watchers (for an fd: the one with w's fd), or
 * would go at the end (the link is NULL); called with ch->lock held. */
static struct watcher **find_watcher(lja_channel *ch, const struct watcher *w)
{
    struct watcher **p = &ch->watchers;
    while (*p && *p != w && ((*p)->sel || w->sel || (*p)->fd != w->fd))
        p = &(*p)->next;
    return p;
}

/* Puts w at *p (on), or takes *p out; called with ch->lock held. */
static void link_watcher(lja_channel *ch, struct watcher **p, struct watcher *w, int on)
{
    if (on) {
        w->next = NULL;
        *p = w;
    } else {
        *p = (*p)->next;
    }
    atomic_fetch_add(&ch->recv_waiters, on ? 1 : -1);
}

/* After a message went in (no lock held): wake a receiver, the selects and
 * the watches, if any; after one came out (room), a sender waiting for room. */
HOT void after(lja_channel *ch, int room)
{
    if (!atomic_fetch_add(room ? &ch->send_waiters : &ch->recv_waiters, 0))
        return;
    /* The lock orders this wake after the waiter's last look (it waits
     * with the lock released); the signal comes after the unlock, so the
     * woken waiter does not block at once on the lock held here, which
     * costs two more syscalls and a context switch. */
    pthread_mutex_lock(&ch->lock);
    if (!room)
        notify_watchers(ch);
    pthread_mutex_unlock(&ch->lock);
    pthread_cond_signal(room ? &ch->not_full : &ch->not_empty);
}

int lja_channel_watch_fd(lja_channel *ch, int fd, int on)
{
    if (fd < 0)
        return LJA_EINVAL;
    struct watcher like = {NULL, NULL, fd}, *w = NULL;
    if (on && !(w = malloc(sizeof *w)))
        return LJA_ENOMEM;
    pthread_mutex_lock(&ch->lock);
    struct watcher **p = find_watcher(ch, &like);
    int rc = !*p == !!on ? LJA_OK : on ? LJA_EBUSY : LJA_ENOTFOUND;
    if (rc == LJA_OK && on) {
        *w = like;
        link_watcher(ch, p, w, 1);
        w = NULL;
    } else if (rc == LJA_OK) {
        w = *p;
        link_watcher(ch, p, w, 0);
    }
    pthread_mutex_unlock(&ch->lock);
    free(w);
    return rc;
}

/* One end's operation on ch: a send (room) of the bytes inline or of msg,
 * or a receive of msg or (then NULL) of the bytes copied to buf and *len. */
struct op {
    lja_channel *ch;
    int room;
    const char *data;
    size_t *len;
    char *buf;
    lja_msg **msg;
};

/* Claims the next slot at `end` (tail: a sender's, want 0; head: a
 * receiver's, want 1): the slot whose sequence number is 2 pos + want, with
 * *pos and *size (its ring's) set.  NULL when the ring is full (empty), or
 * for a sender on a closed channel (then *pos has CLOSED_BIT). */
HOT struct slot *claim(lja_channel *ch, atomic_size_t *end, int want, size_t *pos, size_t *size)
{
    *pos = atomic_load_explicit(end, memory_order_acquire);
    for (;;) {
        if (*pos & CLOSED_BIT)
            return NULL;
        if (*pos & FROZEN_BIT) {
            wait_growth(ch);
            *pos = atomic_load_explicit(end, memory_order_acquire);
            continue;
        }
        /* The ring that pos counts in: a grower publishes its new one before it moves the ends. */
        struct ring *r = atomic_load_explicit(&ch->ring, memory_order_acquire);
        struct slot *s = slot_at(r, *pos);
        intptr_t d = (intptr_t)(atomic_load_explicit(&s->seq, memory_order_acquire) - (2 * *pos + want));
        *size = r->size;
        if (d == 0 && atomic_compare_exchange_weak_explicit(end, pos, *pos + 1, memory_order_acquire,
                                                             memory_order_acquire))
            return s;
        if (d < 0)
            return NULL;   /* a sender: the slot holds message pos - size; a receiver: not yet filled */
        if (d > 0)
            *pos = atomic_load_explicit(end, memory_order_acquire);
    }
}

/* Queues o's message: LJA_OK, LJA_EAGAIN (the ring is full) or LJA_ECLOSED. */
HOT int push(const struct op *o)
{
    lja_channel *ch = o->ch;
    size_t pos, size;
    struct slot *s = claim(ch, &ch->tail, 0, &pos, &size);
    if (!s)
        return pos & CLOSED_BIT ? LJA_ECLOSED : LJA_EAGAIN;
    if (*o->msg) {
        s->len = MSG_IN_SLOT;
        s->u.msg = *o->msg;
    } else {
        s->len = *o->len;
        if (s->len)   /* data may be NULL then */
            memcpy(s->u.data, o->data, s->len);
    }
    atomic_store_explicit(&s->seq, 2 * pos + 1, memory_order_release);
    return LJA_OK;
}

/* Takes the first message into o: 1, or 0 if there is none. */
HOT int pop(const struct op *o)
{
    lja_channel *ch = o->ch;
    size_t pos, size;
    struct slot *s = claim(ch, &ch->head, 1, &pos, &size);
    if (!s)
        return 0;
    if (s->len == MSG_IN_SLOT) {
        *o->msg = s->u.msg;
    } else {
        *o->msg = NULL;
        *o->len = s->len;
        memcpy(o->buf, s->u.data, LJA_MSG_INLINE);   /* all of it: a few moves, no call */
    }
    atomic_store_explicit(&s->seq, 2 * (pos + size), memory_order_release);
    return 1;
}

/* Tries o once: LJA_OK, LJA_EAGAIN, or LJA_ECLOSED (a send on a closed
 * channel, a receive on a closed and drained one: closed is set after
 * CLOSED_BIT, so the length read after it counts every message). */
HOT int try_op(const struct op *o)
{
    if (o->room)
        return push(o);
    if (pop(o))
        return LJA_OK;
    return atomic_load(&o->ch->closed) && lja_channel_len(o->ch) == 0 ? LJA_ECLOSED : LJA_EAGAIN;
}

static int can_grow(lja_channel *ch)
{
    return atomic_load_explicit(&ch->ring, memory_order_acquire)->size < ch->limit;
}

/* With ch->lock held, by a sender that found the ring full (so not closed:
 * close takes the lock) and below its limit: moves the messages to a ring
 * twice as large (at most the limit), as the top of this file says. */
static int grow(lja_channel *ch)
{
    struct ring *old = atomic_load_explicit(&ch->ring, memory_order_relaxed);
    size_t size = old->size < ch->limit / 2 ? old->size * 2 : ch->limit;
    struct ring *r = ring_new(size);
    if (!r)
        return LJA_ENOMEM;
    size_t tail = atomic_fetch_or(&ch->tail, FROZEN_BIT), head = atomic_fetch_or(&ch->head, FROZEN_BIT);
    /* Those that claimed a slot before the freeze finish with it: a sender
     * fills it, a receiver frees it. */
    for (size_t pos = tail - old->size; pos != tail; pos++) {
        size_t done = pos - head < tail - head ? 2 * pos + 1 : 2 * (pos + old->size);
        while (atomic_load_explicit(&slot_at(old, pos)->seq, memory_order_acquire) != done)
            lja_cpu_relax();
    }
    for (size_t pos = head; pos != head + size; pos++) {   /* each new slot once */
        struct slot *s = slot_at(r, pos + size), *o = slot_at(old, pos);
        int full = pos - head < tail - head;
        if (full) {
            s->len = o->len;
            s->u = o->u;
        }
        atomic_init(&s->seq, 2 * (pos + size) + full);
    }
    r->older = old;
    /* Released: a thread may read the ring before the moved ends (with a
     * stale position, or spinning in ready) and must see its size and slots. */
    atomic_store_explicit(&ch->ring, r, memory_order_release);
    atomic_store_explicit(&ch->head, head + size, memory_order_release);
    atomic_store_explicit(&ch->tail, tail + size, memory_order_release);
    return LJA_OK;
}

/* What a spinning sender (room) or receiver waits for: the slot where it
 * goes next ready (not the other end's count: a spinning receiver then
 * leaves the senders' line alone, and reads the slot it would fetch
 * anyway), the channel closed, or a cancel or pause of the calling thread
 * (the wait under the lock meets it). */
static int ready(void *op)
{
    const struct op *o = op;
    size_t pos = atomic_load_explicit(o->room ? &o->ch->tail : &o->ch->head, memory_order_acquire) &
                 ~(CLOSED_BIT | FROZEN_BIT);
    struct slot *s = slot_at(atomic_load_explicit(&o->ch->ring, memory_order_acquire), pos);
    return atomic_load_explicit(&s->seq, memory_order_relaxed) == 2 * pos + !o->room ||
           atomic_load(&o->ch->closed) || lja_thread_poll();
}

/* Does o: tries it, spins while spinning pays (internal.h), then waits
 * under the lock, growing the ring when a sender finds it full below its
 * limit or sleeping until o is done, the channel closes or the timeout
 * passes.  Returns try_op's code, LJA_ETIMEDOUT for LJA_EAGAIN. */
HOT int run(const struct op *o, double timeout)
{
    lja_channel *ch = o->ch;
    int rc = try_op(o);
    if (rc == LJA_EAGAIN && timeout != 0 && !(o->room && can_grow(ch))) {
        lja_spin_until(o->room ? &ch->send_spin : &ch->recv_spin, ready, (void *)o);
        rc = try_op(o);
    }
    if (rc == LJA_EAGAIN && (timeout != 0 || (o->room && can_grow(ch)))) {
        atomic_int *waiters = o->room ? &ch->send_waiters : &ch->recv_waiters;
        struct timespec deadline;
        int have = 0, waited = LJA_OK;
        pthread_mutex_lock(&ch->lock);
        atomic_fetch_add(waiters, 1);
        while ((rc = try_op(o)) == LJA_EAGAIN) {
            if (o->room && can_grow(ch)) {
                if ((rc = grow(ch)) != LJA_OK)
                    break;
            } else if (waited != LJA_OK) {
                break;
            } else {
                waited = lja_wait_timeout(o->room ? &ch->not_full : &ch->not_empty, &ch->lock, timeout,
                                          &deadline, &have);
            }
        }
        atomic_fetch_sub(waiters, 1);
        pthread_mutex_unlock(&ch->lock);
    }
    if (rc == LJA_OK)
        after(ch, !o->room);
    return rc == LJA_EAGAIN ? LJA_ETIMEDOUT : rc;
}

int lja_channel_send(lja_channel *ch, const char *data, size_t len, void *const *objs, int nobjs,
                     double timeout)
{
    if (nobjs < 0 || (nobjs > 0 && !objs))
        return LJA_EINVAL;
    lja_msg *msg = NULL;
    if ((nobjs || len > LJA_MSG_INLINE) && !(msg = msg_new(ch, data, len, objs, nobjs))) {
        for (int i = 0; i < nobjs; i++)   /* not sent: its references go (ljasync.h) */
            lja_object_release(objs[i]);
        return LJA_ENOMEM;
    }
    int rc = run(&(struct op){ch, 1, data, &len, NULL, &msg}, timeout);
    if (rc != LJA_OK)
        lja_msg_free(msg);   /* not sent: its references go too */
    return rc;
}

void lja_channel_close(lja_channel *ch)
{
    pthread_mutex_lock(&ch->lock);
    atomic_fetch_or(&ch->tail, CLOSED_BIT);   /* before closed: see try_op */
    atomic_store(&ch->closed, 1);
    pthread_cond_broadcast(&ch->not_empty);
    pthread_cond_broadcast(&ch->not_full);
    notify_watchers(ch);
    pthread_mutex_unlock(&ch->lock);
}

/* Takes a message from the first ready channel into o: LJA_OK, or
 * LJA_ECLOSED for a closed and drained one; LJA_EAGAIN if none is ready. */
static int take_ready(lja_channel *const *chs, int n, int *index, struct op *o)
{
    for (int i = 0; i < n; i++) {
        o->ch = chs[i];
        int rc = try_op(o);
        if (rc != LJA_EAGAIN) {
            *index = i;
            if (rc == LJA_OK)
                after(chs[i], 1);
            return rc;
        }
    }
    return LJA_EAGAIN;
}

/* Registers (on) or removes select's watchers, one on each channel. */
static void watch(lja_channel *const *chs, int n, struct watcher *links, int on)
{
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&chs[i]->lock);
        link_watcher(chs[i], find_watcher(chs[i], &links[i]), &links[i], on);
        pthread_mutex_unlock(&chs[i]->lock);
    }
}

/* select's waits: on its own condition variable, woken by any of the
 * channels (no spin: a select waits on channels that are seldom busy). */
static int select_op(lja_channel *const *chs, int n, int *index, struct op *o, double timeout)
{
    int rc = take_ready(chs, n, index, o);
    if (rc != LJA_EAGAIN)
        return rc;
    if (timeout == 0)
        return LJA_ETIMEDOUT;
    struct watcher *links = malloc((size_t)n * sizeof *links);
    if (!links)
        return LJA_ENOMEM;
    struct selector sel;
    pthread_mutex_init(&sel.lock, NULL);
    lja_cond_init(&sel.ready);
    sel.signaled = 0;
    struct timespec deadline;
    int have = 0, waited = LJA_OK;
    for (int i = 0; i < n; i++)
        links[i] = (struct watcher){NULL, &sel, -1};
    watch(chs, n, links, 1);
    while ((rc = take_ready(chs, n, index, o)) == LJA_EAGAIN && waited == LJA_OK) {
        pthread_mutex_lock(&sel.lock);
        while (!sel.signaled && waited == LJA_OK)
            waited = lja_wait_timeout(&sel.ready, &sel.lock, timeout, &deadline, &have);
        sel.signaled = 0;
        pthread_mutex_unlock(&sel.lock);
    }
    watch(chs, n, links, 0);
    if (rc == LJA_EAGAIN)
        rc = take_ready(chs, n, index, o);
    pthread_cond_destroy(&sel.ready);
    pthread_mutex_destroy(&sel.lock);
    free(links);
    return rc == LJA_EAGAIN ? LJA_ETIMEDOUT : rc;
}

/* A receive from ch (n 0) or select's from chs.  With buf NULL, every
 * message comes as an lja_msg: one whose bytes came inline is copied to a
 * block taken first, so that no message is lost to a failed malloc. */
HOT int receive(lja_channel *const *chs, int n, int *index, lja_msg **msg, char *buf, size_t *len,
                   double timeout)
{
    *msg = NULL;
    lja_msg *block = NULL;
    if (!buf) {
        if (!(block = msg_new(chs[0], NULL, 0, NULL, 0)))   /* a small block: room for LJA_MSG_INLINE */
            return LJA_ENOMEM;
        buf = block->data;
        len = &block->len;
    }
    struct op o = {chs[0], 0, NULL, len, buf, msg};
    int rc = n ? select_op(chs, n, index, &o, timeout) : run(&o, timeout);
    if (block && rc == LJA_OK && !*msg) {
        block->home = chs[n ? *index : 0];   /* blocks of one size recycle anywhere */
        *msg = block;
    } else if (block) {
        lja_msg_free(block);
    }
    return rc;
}

int lja_channel_recv_into(lja_channel *ch, lja_msg **msg, char *buf, size_t *len, double timeout)
{
    return receive(&ch, 0, NULL, msg, buf, len, timeout);
}

int lja_channel_recv(lja_channel *ch, lja_msg **msg, double timeout)
{
    return receive(&ch, 0, NULL, msg, NULL, NULL, timeout);
}

int lja_channel_select(lja_channel *const *chs, int n, int *index, lja_msg **msg, char *buf, size_t *len,
                       double timeout)
{
    *msg = NULL;
    *index = -1;
    if (n < 1 || !chs)
        return LJA_EINVAL;
    return receive(chs, n, index, msg, buf, len, timeout);
}
