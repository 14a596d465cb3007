/* sched.c: what ltask's scheduler (ltask/worker.lua) cannot do in Lua
 * (README "ltask"): the table of live services, each with its inbox, and
 * the run queue that idle workers wait on.  Which service runs next, where
 * and when is decided in Lua; so are timers, names, the log and who is told
 * that an inbox has room.
 *
 * Service structs are never freed before the scheduler: a slot keeps its
 * struct and a new generation reuses it, so an address can be looked up and
 * its struct locked without a reference count.  A struct is on the run
 * queue or the free list (never both), linked through its first field. */
#include <string.h>
#include <sys/eventfd.h>

#include "object.h"
#include "queue.h"

#define SLOT_SPAN 16777216ULL  /* address = slot + generation * SLOT_SPAN */
#define SMALL_BLOCK 256         /* message blocks this small are recycled... */
#define SPARE_BLOCKS 1024       /* ...up to a default inbox's worth per receiver */

enum { SVC_IDLE, SVC_QUEUED, SVC_DEAD };   /* a free slot's struct stays DEAD, with addr 0 */

struct service {
    /* What every send and dispatch touches, in its first two lines. */
    void *link;                 /* first: the run queue's or the free list's */
    pthread_mutex_t lock;
    int status;
    int64_t capacity, count;    /* requests and posts queued, or popped and not yet handled */
    lja_fifo inbox;
    lja_fifo waiters;           /* refused sends, turned into ROOM notices */
    /* Written under the lock, read without it too (lja_sched_state). */
    _Atomic uint64_t addr;      /* 0 while the slot is free */
    _Atomic(void *) L;
    pthread_cond_t wake;        /* an exclusive service's thread waits here */
    int wake_fd;                /* or on this eventfd, signaled too (-1: none) */
    int exclusive;
    uint64_t generation;
    int64_t slot;
    /* Pushed by whoever frees a message (the receiver), popped by senders:
     * a line of its own, apart from the lock and the inbox. */
    _Alignas(64) lja_spare_stack spare;
};

/* A worker writes its cells at every dispatch while idle workers poll
 * them: one cache line each, so that a write moves only its own line. */
struct cell {
    _Alignas(64) _Atomic double v;
};

struct lja_sched {
    pthread_mutex_t lock;       /* run queue, slots, lifetimes */
    pthread_cond_t work;
    lja_fifo runq, free_list;   /* of struct service */
    atomic_int runnable;        /* services on the run queue, read to spin */
    atomic_int sleepers;        /* workers parked without a deadline */
    int nudges, closed;
    _Atomic(struct service *) *slots;
    int64_t max_services, nslots, alive;
    struct cell *cells;         /* the policy's (ltask/worker.lua: next slots, ticks) */
    int ncells, nwatched;
    lja_spin spin;              /* idle workers' (lja_sched_spin) */
};

/* ---- messages -------------------------------------------------------------
 * A message is one block: a hidden header, then the lja_smsg Lua reads.
 * Small blocks go back to the receiver's spare stack (malloc on one thread
 * and free on another cost more than the rest of a send), popped under
 * its lock, which the stack needs. */
struct block {
    void *spare_link;           /* first: the spare stack's link */
    struct service *home;       /* the service that recycles it, or NULL */
};

#define MSG_OF(b) ((lja_smsg *)((char *)(b) + sizeof(struct block)))
#define BLOCK_OF(m) ((struct block *)((char *)(m) - sizeof(struct block)))

static void release_objs(void *const *objs, int nobjs)
{
    for (int i = 0; i < nobjs; i++)
        lja_object_release(objs[i]);
}

void lja_sched_msg_free(lja_smsg *m)
{
    if (!m)
        return;
    release_objs(m->objs, m->nobjs);
    struct block *b = BLOCK_OF(m);
    if (b->home)
        lja_spare_push(&b->home->spare, b, SPARE_BLOCKS);
    else
        free(b);
}

static int counted(int type)
{
    return type == LJA_SMSG_REQUEST || type == LJA_SMSG_POST;
}

static struct service *lookup(lja_sched *s, double addr)
{
    if (!s || !(addr >= 1 && addr < 9007199254740992.0))
        return NULL;
    uint64_t slot = (uint64_t)addr % SLOT_SPAN;
    if (slot == 0 || (int64_t)slot > s->max_services)
        return NULL;
    return atomic_load_explicit(&s->slots[slot], memory_order_acquire);
}

/* svc locked, if addr is still its address (else NULL, unlocked). */
static struct service *lock_live(lja_sched *s, double addr)
{
    struct service *svc = lookup(s, addr);
    if (!svc)
        return NULL;
    pthread_mutex_lock(&svc->lock);
    if (svc->addr == (uint64_t)addr)
        return svc;
    pthread_mutex_unlock(&svc->lock);
    return NULL;
}

/* A block of `size` bytes for svc, with svc locked: a recycled one is
 * popped under the lock, a new one allocated first (NULL: out of memory). */
static lja_smsg *take_msg(struct service *svc, size_t size)
{
    struct block *b = NULL;
    int small = size <= SMALL_BLOCK;
    if (small) {
        pthread_mutex_lock(&svc->lock);
        if (!(b = lja_spare_pop(&svc->spare)))
            pthread_mutex_unlock(&svc->lock);
    }
    if (!b) {
        if (!(b = malloc(small ? SMALL_BLOCK : size)))
            return NULL;
        pthread_mutex_lock(&svc->lock);
    }
    b->home = small ? svc : NULL;
    return MSG_OF(b);
}

int lja_sched_send(lja_sched *s, double from, double to, int type, int32_t session,
                   const char *data, size_t len, void *const *objs, int nobjs)
{
    if (nobjs < 0 || (nobjs && !objs))
        return LJA_EINVAL;
    struct service *svc = lookup(s, to);
    lja_smsg *m = NULL;
    int rc = (len && !data) || type < LJA_SMSG_REQUEST || type > LJA_SMSG_INIT ? LJA_EINVAL
             : !svc                                                           ? LJA_ECLOSED
             : !(m = take_msg(svc, sizeof(struct block) + sizeof *m + (size_t)nobjs * sizeof(void *) + len))
                 ? LJA_ENOMEM
                 : LJA_OK;
    if (rc != LJA_OK) {
        release_objs(objs, nobjs);
        return rc;
    }
    *m = (lja_smsg){ .from = from, .type = type, .session = session, .len = len, .nobjs = nobjs };
    m->data = (char *)(m->objs + nobjs);
    if (nobjs)
        memcpy(m->objs, objs, (size_t)nobjs * sizeof(void *));
    if (len)
        memcpy(m->data, data, len);
    if (svc->addr != (uint64_t)to || svc->status == SVC_DEAD) {
        rc = LJA_ECLOSED;
    } else if (counted(type) && svc->capacity && svc->count >= svc->capacity) {
        rc = LJA_EAGAIN;
        if (from >= 1) {   /* `from` is told when there is room (pop) */
            release_objs(m->objs, m->nobjs);
            *m = (lja_smsg){ .from = from, .type = LJA_SMSG_ROOM };
            lja_fifo_push(&svc->waiters, m);
            m = NULL;
        }
    } else {
        svc->count += counted(type);
        if (type == LJA_SMSG_KILL)   /* before anything else queued */
            lja_fifo_push_front(&svc->inbox, m);
        else
            lja_fifo_push(&svc->inbox, m);
        m = NULL;
        if (svc->inbox.head && svc->status == SVC_IDLE) {
            svc->status = SVC_QUEUED;
            if (svc->exclusive) {
                pthread_cond_signal(&svc->wake);
                if (svc->wake_fd >= 0)
                    eventfd_write(svc->wake_fd, 1);
            } else {
                rc = LJA_SCHED_WOKE;
            }
        }
    }
    pthread_mutex_unlock(&svc->lock);
    lja_sched_msg_free(m);   /* not sent: its references go too */
    return rc;
}

/* The inbox is moved whole under the lock onto the receiver's list, which
 * ltask/init.lua cuts into batches outside it: a walk over messages just
 * written by senders misses the cache at each one, and senders would wait
 * on the lock (and sleep on it) meanwhile. */
void lja_sched_pop(lja_sched *s, double self, lja_smsg **taken, lja_smsg **waiters)
{
    *waiters = NULL;
    struct service *svc = lock_live(s, self);
    if (!svc)
        return;
    lja_fifo mine = { taken[0], taken[0] ? taken[1] : NULL };
    lja_smsg *kill = svc->inbox.head;
    if (kill && kill->type == LJA_SMSG_KILL)   /* still before everything */
        lja_fifo_push_front(&mine, lja_fifo_shift(&svc->inbox));
    lja_fifo_concat(&mine, &svc->inbox);
    if (svc->waiters.head && svc->count <= svc->capacity / 2) {
        *waiters = svc->waiters.head;
        svc->waiters.head = svc->waiters.tail = NULL;
    }
    pthread_mutex_unlock(&svc->lock);
    taken[0] = mine.head;
    taken[1] = mine.tail;
}

/* Lock-free, as workers call it at each dispatch: an L read between two
 * reads of the same address is that address's, since an address is never
 * reused and its state is set before it and cleared before it goes. */
void *lja_sched_state(lja_sched *s, double addr)
{
    struct service *svc = lookup(s, addr);
    if (!svc || svc->addr != (uint64_t)addr)
        return NULL;
    void *L = svc->L;
    return svc->addr == (uint64_t)addr ? L : NULL;
}

int lja_sched_rest(lja_sched *s, double addr, int handled, int again, int wait)
{
    struct service *svc = lock_live(s, addr);
    if (!svc)
        return LJA_ECLOSED;
    svc->count -= handled;
    /* Waiters that the next pop would tell are work too. */
    int rc = svc->inbox.head || again ||
                     (svc->waiters.head && svc->count <= svc->capacity / 2)
                 ? LJA_SCHED_WOKE
                 : LJA_OK;
    if (rc == LJA_OK) {
        svc->status = SVC_IDLE;
        while (wait && !svc->inbox.head)
            pthread_cond_wait(&svc->wake, &svc->lock);
        if (wait)
            svc->status = SVC_QUEUED;
    }
    pthread_mutex_unlock(&svc->lock);
    return rc;
}

void lja_sched_wake_fd(lja_sched *s, double addr, int fd)
{
    struct service *svc = lock_live(s, addr);
    if (svc) {
        svc->wake_fd = fd;
        pthread_mutex_unlock(&svc->lock);
    }
}

/* Every message svc holds, in order: queued, then ROOM notices. */
static lja_smsg *take_all(struct service *svc)
{
    lja_fifo_concat(&svc->inbox, &svc->waiters);
    lja_smsg *list = svc->inbox.head;
    svc->inbox.head = svc->inbox.tail = NULL;
    return list;
}

lja_smsg *lja_sched_close(lja_sched *s, double addr, void **L)
{
    *L = NULL;
    struct service *svc = lock_live(s, addr);
    if (!svc)
        return NULL;
    lja_smsg *list = NULL;
    if (svc->status != SVC_DEAD) {
        svc->status = SVC_DEAD;
        list = take_all(svc);
        svc->count = 0;
        *L = svc->L;
        svc->L = NULL;
    }
    pthread_mutex_unlock(&svc->lock);
    return list;
}

int64_t lja_sched_remove(lja_sched *s, double addr)
{
    struct service *svc = lock_live(s, addr);
    int ours = svc && svc->status == SVC_DEAD;
    if (ours) {
        svc->addr = 0;
        svc->generation++;
    }
    if (svc)
        pthread_mutex_unlock(&svc->lock);
    pthread_mutex_lock(&s->lock);
    if (ours) {
        lja_fifo_push(&s->free_list, svc);
        s->alive--;
    }
    int64_t alive = s->alive;
    pthread_mutex_unlock(&s->lock);
    return alive;
}

double lja_sched_at(lja_sched *s, int64_t slot)
{
    pthread_mutex_lock(&s->lock);
    struct service *svc = slot >= 1 && slot <= s->nslots ? atomic_load(&s->slots[slot]) : NULL;
    pthread_mutex_unlock(&s->lock);
    if (!svc)
        return -1;
    pthread_mutex_lock(&svc->lock);
    uint64_t a = svc->status == SVC_IDLE || svc->status == SVC_QUEUED ? svc->addr : 0;
    pthread_mutex_unlock(&svc->lock);
    return (double)a;
}

/* ---- the run queue ------------------------------------------------------- */

int lja_sched_push(lja_sched *s, double addr)
{
    struct service *svc = lookup(s, addr);
    if (!svc)
        return LJA_ECLOSED;
    pthread_mutex_lock(&s->lock);
    lja_fifo_push(&s->runq, svc);
    atomic_fetch_add(&s->runnable, 1);
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->lock);
    return LJA_OK;
}

/* Wakes a worker parked with no deadline, if any, as a push would. */
static void nudge(lja_sched *s)
{
    if (!atomic_load(&s->sleepers))
        return;
    pthread_mutex_lock(&s->lock);
    if (atomic_load(&s->sleepers) > s->nudges) {
        s->nudges++;
        pthread_cond_broadcast(&s->work);
    }
    pthread_mutex_unlock(&s->lock);
}

double lja_sched_cell(lja_sched *s, int i, double v)
{
    if (i < 0 || i >= s->ncells)
        return 0;
    if (v < 0)
        return atomic_load(&s->cells[i].v);
    double old = atomic_exchange(&s->cells[i].v, v);
    if (old == 0 && v != 0 && i < s->nwatched)
        nudge(s);
    return old;
}

static int anything(void *p)
{
    lja_sched *s = p;
    if (atomic_load_explicit(&s->runnable, memory_order_relaxed))
        return 1;
    for (int i = 0; i < s->nwatched; i++)
        if (atomic_load_explicit(&s->cells[i].v, memory_order_relaxed) != 0)
            return 1;
    return 0;
}

int lja_sched_spin(lja_sched *s)
{
    return anything(s) || lja_spin_until(&s->spin, anything, s);
}

double lja_sched_next(lja_sched *s, double timeout)
{
    if (timeout == 0 && !atomic_load(&s->runnable))
        return 0;
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    double addr = 0;
    pthread_mutex_lock(&s->lock);
    int forever = timeout < 0;
    while (!s->runq.head && !s->closed && rc == LJA_OK && timeout != 0) {
        if (forever && s->nudges) {
            s->nudges--;
            break;
        }
        atomic_fetch_add(&s->sleepers, forever);
        rc = lja_cond_wait_timeout(&s->work, &s->lock, timeout, &deadline, &have);
        atomic_fetch_sub(&s->sleepers, forever);
    }
    struct service *svc = lja_fifo_shift(&s->runq);
    if (svc) {
        atomic_fetch_sub(&s->runnable, 1);
        addr = (double)svc->addr;   /* queued: its address cannot change */
    } else if (s->closed) {
        addr = -1;
    }
    pthread_mutex_unlock(&s->lock);
    return addr;
}

/* ---- lifetime ------------------------------------------------------------ */

lja_sched *lja_sched_new(int64_t max_services, int ncells, int nwatched)
{
    if (max_services < 1 || max_services >= (int64_t)SLOT_SPAN || ncells < 0 || nwatched < 0 ||
        nwatched > ncells)
        return NULL;
    lja_sched *s = calloc(1, sizeof *s);
    if (!s || !(s->slots = calloc((size_t)max_services + 1, sizeof *s->slots)) ||
        !(s->cells = aligned_alloc(64, ((size_t)ncells + 1) * sizeof *s->cells))) {
        lja_sched_free(s);
        return NULL;
    }
    s->max_services = max_services;
    s->ncells = ncells;
    s->nwatched = nwatched;
    lja_spin_init(&s->spin);
    for (int i = 0; i < ncells; i++)
        atomic_init(&s->cells[i].v, 0.0);
    pthread_mutex_init(&s->lock, NULL);
    lja_cond_init(&s->work);
    return s;
}

int lja_sched_add(lja_sched *s, void *L, int exclusive, int64_t capacity, double *addr)
{
    if (!s || !L || capacity < 0 || !addr)
        return LJA_EINVAL;
    pthread_mutex_lock(&s->lock);
    struct service *svc = s->closed ? NULL : lja_fifo_shift(&s->free_list);
    int rc = s->closed ? LJA_ECLOSED : LJA_OK;
    if (!svc && rc == LJA_OK) {   /* a new slot; its struct shares no cache line with another's */
        if (s->nslots == s->max_services)
            rc = LJA_EAGAIN;
        else if (!(svc = aligned_alloc(64, sizeof *svc)))
            rc = LJA_ENOMEM;
        else {
            memset(svc, 0, sizeof *svc);
            lja_spare_init(&svc->spare);
            pthread_mutex_init(&svc->lock, NULL);
            pthread_cond_init(&svc->wake, NULL);
            svc->slot = ++s->nslots;
            atomic_store_explicit(&s->slots[svc->slot], svc, memory_order_release);
        }
    }
    if (rc == LJA_OK) {
        pthread_mutex_lock(&svc->lock);
        svc->L = L;
        svc->addr = (uint64_t)svc->slot + svc->generation * SLOT_SPAN;
        svc->status = SVC_IDLE;
        svc->exclusive = exclusive != 0;
        svc->wake_fd = -1;
        svc->capacity = capacity;
        svc->count = 0;
        pthread_mutex_unlock(&svc->lock);
        s->alive++;
        *addr = (double)svc->addr;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void lja_sched_shutdown(lja_sched *s)
{
    pthread_mutex_lock(&s->lock);
    s->closed = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
}

/* After every thread that ran services has ended: frees what is left (the
 * states and messages of services that never ran). */
void lja_sched_free(lja_sched *s)
{
    if (!s)
        return;
    for (int64_t slot = 1; slot <= s->nslots; slot++) {
        struct service *svc = atomic_load(&s->slots[slot]);
        if (svc->L)
            lja_lua_close(svc->L);
        for (lja_smsg *m = take_all(svc), *next; m; m = next) {
            next = m->next;
            release_objs(m->objs, m->nobjs);
            free(BLOCK_OF(m));   /* not to a spare stack: those go next */
        }
        lja_spare_free_all(&svc->spare);
        pthread_cond_destroy(&svc->wake);
        pthread_mutex_destroy(&svc->lock);
        free(svc);
    }
    if (s->cells) {   /* else lja_sched_new failed before it made the locks */
        pthread_cond_destroy(&s->work);
        pthread_mutex_destroy(&s->lock);
    }
    free(s->cells);
    free(s->slots);
    free(s);
}
