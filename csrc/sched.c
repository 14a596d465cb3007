/* sched.c: what ltask's scheduler (ltask/worker.lua) cannot do in Lua
 * (README "ltask"): the table of live services, each with its inbox, and
 * the run queue that idle workers wait on.  Which service runs next, where
 * and when is decided in Lua; so are timers, names and the log.
 *
 * Service structs are never freed before the scheduler: a slot keeps its
 * struct and a new generation reuses it, so an address can be looked up and
 * its struct locked without a reference count.
 *
 * Until a service's file has returned (lja_sched_started), the requests and
 * posts sent to it are held aside, still counted against its inbox: only
 * its first message (LJA_SMSG_INIT) and what its file waits for (replies,
 * timers) reach it. */
#include <string.h>
#include <sys/eventfd.h>

#include "object.h"
#include "queue.h"

#define SLOT_SPAN 16777216ULL  /* address = slot + generation * SLOT_SPAN */
#define SPIN_ROUNDS 400         /* an idle worker's polls of the run queue before it parks */

enum { SVC_FREE, SVC_IDLE, SVC_QUEUED, SVC_DEAD };

struct service {
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* an exclusive service's thread waits here */
    int wake_fd;                /* or on this eventfd, signaled too (-1: none) */
    uint64_t addr;              /* 0 while the slot is free */
    uint64_t generation;
    int status;
    int exclusive;
    int starting;               /* its file runs: requests and posts are held */
    int64_t capacity, count;    /* requests and posts queued (or held) */
    lja_fifo inbox, held;
    uint64_t *room_waiters;     /* addresses to tell when the inbox drains */
    int64_t nwaiters, cwaiters;
    void *L;
    lja_spare_stack spare;      /* recycled message blocks */
};

struct lja_sched {
    pthread_mutex_t lock;       /* run queue, slots, lifetimes */
    pthread_cond_t work, done;
    double *runq;               /* ring of addresses */
    int64_t rq_head, rq_count, rq_cap;
    atomic_int runnable;        /* rq_count, read to spin */
    atomic_int sleepers;        /* workers parked without a deadline */
    atomic_int closed_flag;     /* closed, read without the lock */
    int nudges, closed;
    _Atomic(struct service *) *slots;
    int64_t max_services, nslots;
    int64_t *free_slots, free_head, free_count;   /* FIFO ring of slots */
    int64_t alive;
    _Atomic double *cells;      /* the policy's (ltask/worker.lua: next slots, ticks) */
    int ncells, nwatched;
};

/* ---- messages ---------------------------------------------------------- */

/* A message is one block: a hidden header, then the lja_smsg Lua reads.
 * Small blocks are recycled through the receiver's spare stack, popped
 * under the service's lock. */
#define SMALL_BLOCK 256
#define SPARE_BLOCKS 1024       /* a default inbox's worth */

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

/* ---- services ---------------------------------------------------------- */

static struct service *lookup(lja_sched *s, double addr)
{
    if (!s || !(addr >= 1 && addr < 9007199254740992.0))
        return NULL;
    uint64_t slot = (uint64_t)addr % SLOT_SPAN;
    if (slot == 0 || (int64_t)slot > s->max_services)
        return NULL;
    return atomic_load_explicit(&s->slots[slot], memory_order_acquire);
}

/* Takes a message block for svc: a recycled one comes with svc->lock held,
 * a new one is allocated first; the lock is held on return (NULL: out of
 * memory, unlocked). */
static struct block *take_block(struct service *svc, size_t size)
{
    int small = size <= SMALL_BLOCK;
    struct block *b = NULL;
    if (small) {
        pthread_mutex_lock(&svc->lock);
        if ((b = lja_spare_pop(&svc->spare)))
            return b->home = svc, b;
        pthread_mutex_unlock(&svc->lock);
    }
    if (!(b = malloc(small ? SMALL_BLOCK : size)))
        return NULL;
    b->home = small ? svc : NULL;
    pthread_mutex_lock(&svc->lock);
    return b;
}

int lja_sched_send(lja_sched *s, double from, double to, int type, int32_t session,
                   const char *data, size_t len, void *const *objs, int nobjs)
{
    if (nobjs < 0 || (nobjs && !objs))
        return LJA_EINVAL;
    if ((len && !data) || type < LJA_SMSG_REQUEST || type > LJA_SMSG_INIT) {
        release_objs(objs, nobjs);
        return LJA_EINVAL;
    }
    struct service *svc = lookup(s, to);
    if (!svc) {
        release_objs(objs, nobjs);
        return LJA_ECLOSED;
    }
    uint64_t addr = (uint64_t)to;
    struct block *b = take_block(svc, sizeof(struct block) + sizeof(lja_smsg) +
                                          (size_t)nobjs * sizeof(void *) + len);
    if (!b) {
        release_objs(objs, nobjs);
        return LJA_ENOMEM;
    }
    lja_smsg *m = MSG_OF(b);
    m->from = from;
    m->type = type;
    m->session = session;
    m->len = len;
    m->nobjs = nobjs;
    m->data = (char *)(m->objs + nobjs);
    if (nobjs)
        memcpy(m->objs, objs, (size_t)nobjs * sizeof(void *));
    if (len)
        memcpy(m->data, data, len);
    int rc = LJA_OK;
    if (svc->addr != addr || svc->status == SVC_DEAD || svc->status == SVC_FREE) {
        rc = LJA_ECLOSED;
    } else if (counted(type) && svc->capacity && svc->count >= svc->capacity) {
        rc = LJA_EAGAIN;
        uint64_t waiter = from >= 1 ? (uint64_t)from : 0;
        int known = waiter == 0;
        for (int i = 0; i < svc->nwaiters && !known; i++)
            known = svc->room_waiters[i] == waiter;
        if (!known) {
            uint64_t *w = lja_reserve(svc->room_waiters, svc->nwaiters, &svc->cwaiters, sizeof *w);
            if (w) {
                svc->room_waiters = w;
                svc->room_waiters[svc->nwaiters++] = waiter;
            } else {
                rc = LJA_ENOMEM;
            }
        }
    } else if (svc->starting && counted(type)) {
        lja_fifo_push(&svc->held, m);
        m = NULL;
        svc->count++;
    } else {
        if (type == LJA_SMSG_KILL)   /* before anything else queued */
            lja_fifo_push_front(&svc->inbox, m);
        else
            lja_fifo_push(&svc->inbox, m);
        m = NULL;
        if (counted(type))
            svc->count++;
        if (svc->status == SVC_IDLE) {
            svc->status = SVC_QUEUED;
            if (svc->exclusive) {
                pthread_cond_signal(&svc->wake);
                if (svc->wake_fd >= 0)
                    eventfd_write(svc->wake_fd, 1);
            } else
                rc = LJA_SCHED_WOKE;
        }
    }
    pthread_mutex_unlock(&svc->lock);
    lja_sched_msg_free(m);   /* not sent: its references go too */
    return rc;
}

lja_smsg *lja_sched_pop(lja_sched *s, double self, int max, int *room)
{
    struct service *svc = lookup(s, self);
    *room = 0;
    if (!svc || max < 1)
        return NULL;
    pthread_mutex_lock(&svc->lock);
    lja_smsg *first = svc->addr == (uint64_t)self ? svc->inbox.head : NULL, *last = NULL, *m = first;
    int64_t taken = 0;
    for (int n = 0; m && n < max; n++) {
        taken += counted(m->type);
        last = m;
        m = m->next;
    }
    if (last) {
        last->next = NULL;
        svc->inbox.head = m;
        if (!m)
            svc->inbox.tail = NULL;
        svc->count -= taken;
        *room = taken && svc->count <= svc->capacity / 2 && svc->nwaiters;
    }
    pthread_mutex_unlock(&svc->lock);
    return last ? first : NULL;
}

int lja_sched_take_waiters(lja_sched *s, double self, double *out, int max)
{
    struct service *svc = lookup(s, self);
    if (!svc || max < 1)
        return 0;
    pthread_mutex_lock(&svc->lock);
    int n = 0;
    if (svc->addr == (uint64_t)self && (svc->status == SVC_DEAD || svc->count <= svc->capacity / 2)) {
        n = svc->nwaiters < max ? (int)svc->nwaiters : max;
        for (int i = 0; i < n; i++)
            out[i] = (double)svc->room_waiters[svc->nwaiters - 1 - i];
        svc->nwaiters -= n;
    }
    pthread_mutex_unlock(&svc->lock);
    return n;
}

void lja_sched_started(lja_sched *s, double self)
{
    struct service *svc = lookup(s, self);
    if (!svc)
        return;
    pthread_mutex_lock(&svc->lock);
    if (svc->addr == (uint64_t)self) {
        svc->starting = 0;
        lja_fifo_concat(&svc->inbox, &svc->held);
    }
    pthread_mutex_unlock(&svc->lock);
}

void *lja_sched_state(lja_sched *s, double addr)
{
    struct service *svc = lookup(s, addr);
    void *L = NULL;
    if (svc) {
        pthread_mutex_lock(&svc->lock);
        if (svc->addr == (uint64_t)addr)
            L = svc->L;
        pthread_mutex_unlock(&svc->lock);
    }
    return L;
}

int lja_sched_rest(lja_sched *s, double addr, int again, int wait)
{
    struct service *svc = lookup(s, addr);
    if (!svc)
        return LJA_ECLOSED;
    int rc = LJA_OK;
    pthread_mutex_lock(&svc->lock);
    if (svc->addr != (uint64_t)addr) {
        rc = LJA_ECLOSED;
    } else if (svc->inbox.head || again) {
        rc = LJA_SCHED_WOKE;
    } else if (wait) {
        svc->status = SVC_IDLE;
        while (!svc->inbox.head)
            pthread_cond_wait(&svc->wake, &svc->lock);
        svc->status = SVC_QUEUED;
    } else {
        svc->status = SVC_IDLE;
    }
    pthread_mutex_unlock(&svc->lock);
    return rc;
}

void lja_sched_wake_fd(lja_sched *s, double addr, int fd)
{
    struct service *svc = lookup(s, addr);
    if (!svc)
        return;
    pthread_mutex_lock(&svc->lock);
    if (svc->addr == (uint64_t)addr)
        svc->wake_fd = fd;
    pthread_mutex_unlock(&svc->lock);
}

lja_smsg *lja_sched_close(lja_sched *s, double addr, void **L)
{
    struct service *svc = lookup(s, addr);
    *L = NULL;
    if (!svc)
        return NULL;
    pthread_mutex_lock(&svc->lock);
    lja_smsg *list = NULL;
    if (svc->addr == (uint64_t)addr && svc->status != SVC_DEAD) {
        svc->status = SVC_DEAD;
        lja_fifo_concat(&svc->inbox, &svc->held);
        list = svc->inbox.head;
        svc->inbox.head = svc->inbox.tail = NULL;
        svc->count = 0;
        *L = svc->L;
        svc->L = NULL;
    }
    pthread_mutex_unlock(&svc->lock);
    return list;
}

/* Frees a closed service's slot; returns the services still alive. */
int64_t lja_sched_remove(lja_sched *s, double addr)
{
    struct service *svc = lookup(s, addr);
    if (!svc)
        return -1;
    pthread_mutex_lock(&svc->lock);
    int ours = svc->addr == (uint64_t)addr && svc->status == SVC_DEAD;
    if (ours) {
        svc->addr = 0;
        svc->status = SVC_FREE;
        svc->nwaiters = 0;
        svc->generation++;
    }
    pthread_mutex_unlock(&svc->lock);
    pthread_mutex_lock(&s->lock);
    if (ours) {
        s->free_slots[(s->free_head + s->free_count++) % s->max_services] =
            (int64_t)((uint64_t)addr % SLOT_SPAN);
        if (--s->alive == 0)
            pthread_cond_broadcast(&s->done);
    }
    int64_t alive = s->alive;
    pthread_mutex_unlock(&s->lock);
    return alive;
}

double lja_sched_next_service(lja_sched *s, double after)
{
    pthread_mutex_lock(&s->lock);
    int64_t n = s->nslots;
    pthread_mutex_unlock(&s->lock);
    int64_t slot = after >= 1 ? (int64_t)((uint64_t)after % SLOT_SPAN) + 1 : 1;
    for (; slot <= n; slot++) {
        struct service *svc = atomic_load(&s->slots[slot]);
        pthread_mutex_lock(&svc->lock);
        uint64_t a = svc->status == SVC_IDLE || svc->status == SVC_QUEUED ? svc->addr : 0;
        pthread_mutex_unlock(&svc->lock);
        if (a)
            return (double)a;
    }
    return 0;
}

/* ---- the run queue ------------------------------------------------------- */

int lja_sched_push(lja_sched *s, double addr)
{
    pthread_mutex_lock(&s->lock);
    if (s->rq_count == s->rq_cap) {   /* grow the ring, unrolled from its head */
        int64_t cap = s->rq_cap ? s->rq_cap * 2 : 64;
        double *q = malloc((size_t)cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&s->lock);
            return LJA_ENOMEM;
        }
        for (int64_t i = 0; i < s->rq_count; i++)
            q[i] = s->runq[(s->rq_head + i) % s->rq_cap];
        free(s->runq);
        s->runq = q;
        s->rq_head = 0;
        s->rq_cap = cap;
    }
    s->runq[(s->rq_head + s->rq_count++) % s->rq_cap] = addr;
    atomic_store(&s->runnable, (int)s->rq_count);
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->lock);
    return LJA_OK;
}

double lja_sched_cell(lja_sched *s, int i, double v)
{
    if (i < 0 || i >= s->ncells)
        return 0;
    return v < 0 ? atomic_load(&s->cells[i]) : atomic_exchange(&s->cells[i], v);
}

static int anything(lja_sched *s)
{
    if (atomic_load_explicit(&s->runnable, memory_order_relaxed))
        return 1;
    for (int i = 0; i < s->nwatched; i++)
        if (atomic_load_explicit(&s->cells[i], memory_order_relaxed) != 0)
            return 1;
    return 0;
}

int lja_sched_spin(lja_sched *s)
{
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (anything(s))
            return 1;
        lja_spin_pause(i);
    }
    return anything(s);
}

double lja_sched_next(lja_sched *s, double timeout)
{
    if (timeout == 0 && !atomic_load(&s->runnable) && !s->closed_flag)
        return 0;
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    double addr = 0;
    pthread_mutex_lock(&s->lock);
    int forever = timeout < 0;
    while (!s->rq_count && !s->closed && rc == LJA_OK && timeout != 0) {
        if (forever && s->nudges) {
            s->nudges--;
            break;
        }
        atomic_fetch_add(&s->sleepers, forever);
        rc = lja_cond_wait_timeout(&s->work, &s->lock, timeout, &deadline, &have);
        atomic_fetch_sub(&s->sleepers, forever);
    }
    if (s->rq_count) {
        addr = s->runq[s->rq_head];
        s->rq_head = (s->rq_head + 1) % s->rq_cap;
        atomic_store(&s->runnable, (int)--s->rq_count);
    } else if (s->closed) {
        addr = -1;
    }
    pthread_mutex_unlock(&s->lock);
    return addr;
}

void lja_sched_nudge(lja_sched *s)
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

/* ---- lifetime ------------------------------------------------------------ */

lja_sched *lja_sched_new(int64_t max_services, int ncells, int nwatched)
{
    if (max_services < 1 || max_services >= (int64_t)SLOT_SPAN || ncells < 0 || nwatched < 0 ||
        nwatched > ncells)
        return NULL;
    lja_sched *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->max_services = max_services;
    s->slots = calloc((size_t)max_services + 1, sizeof *s->slots);
    s->free_slots = calloc((size_t)max_services, sizeof *s->free_slots);
    s->cells = calloc((size_t)ncells + 1, sizeof *s->cells);
    if (!s->slots || !s->free_slots || !s->cells) {
        free(s->slots);
        free(s->free_slots);
        free(s->cells);
        free(s);
        return NULL;
    }
    s->ncells = ncells;
    s->nwatched = nwatched;
    for (int i = 0; i < ncells; i++)
        atomic_init(&s->cells[i], 0.0);
    pthread_mutex_init(&s->lock, NULL);
    lja_cond_init(&s->work);
    lja_cond_init(&s->done);
    return s;
}

/* LJA_EAGAIN: max_services are alive (called with s->lock held). */
static int take_slot(lja_sched *s, struct service **out, uint64_t *addr)
{
    int64_t slot;
    struct service *svc;
    if (s->free_count > 0) {
        slot = s->free_slots[s->free_head];
        s->free_head = (s->free_head + 1) % s->max_services;
        s->free_count--;
        svc = atomic_load(&s->slots[slot]);
    } else if (s->nslots < s->max_services) {
        if (!(svc = calloc(1, sizeof *svc)))
            return LJA_ENOMEM;
        lja_spare_init(&svc->spare);
        pthread_mutex_init(&svc->lock, NULL);
        pthread_cond_init(&svc->wake, NULL);
        slot = ++s->nslots;
        atomic_store_explicit(&s->slots[slot], svc, memory_order_release);
    } else {
        return LJA_EAGAIN;
    }
    *addr = (uint64_t)slot + svc->generation * SLOT_SPAN;
    *out = svc;
    return LJA_OK;
}

int lja_sched_add(lja_sched *s, void *L, int exclusive, int64_t capacity, double *addr)
{
    if (!s || !L || capacity < 0 || !addr)
        return LJA_EINVAL;
    uint64_t a;
    struct service *svc;
    pthread_mutex_lock(&s->lock);
    int rc = s->closed ? LJA_ECLOSED : take_slot(s, &svc, &a);
    if (rc == LJA_OK) {
        pthread_mutex_lock(&svc->lock);
        svc->addr = a;
        svc->status = SVC_IDLE;
        svc->exclusive = exclusive != 0;
        svc->wake_fd = -1;
        svc->capacity = capacity;
        svc->count = 0;
        svc->starting = 1;
        svc->L = L;
        pthread_mutex_unlock(&svc->lock);
        s->alive++;
        *addr = (double)a;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int lja_sched_wait(lja_sched *s, double timeout)
{
    struct timespec deadline;
    int have = 0, rc = LJA_OK;
    pthread_mutex_lock(&s->lock);
    while (s->alive > 0 && rc == LJA_OK)
        rc = lja_cond_wait_timeout(&s->done, &s->lock, timeout, &deadline, &have);
    rc = s->alive > 0 ? LJA_ETIMEDOUT : LJA_OK;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void lja_sched_shutdown(lja_sched *s)
{
    pthread_mutex_lock(&s->lock);
    s->closed = 1;
    atomic_store(&s->closed_flag, 1);
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
        lja_fifo_concat(&svc->inbox, &svc->held);
        for (lja_smsg *m = svc->inbox.head, *next; m; m = next) {
            next = m->next;
            release_objs(m->objs, m->nobjs);
            free(BLOCK_OF(m));   /* not to a spare stack: those go next */
        }
        free(svc->room_waiters);
        lja_spare_free_all(&svc->spare);
        pthread_cond_destroy(&svc->wake);
        pthread_mutex_destroy(&svc->lock);
        free(svc);
    }
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    free(s->runq);
    free(s->cells);
    free(s->free_slots);
    free(s->slots);
    free(s);
}
