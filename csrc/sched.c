/* sched.c: ltask's n:m scheduler (SPEC section 7).
 *
 * M services (lua_States) run on N worker threads.  A service with messages
 * is "queued": in a worker's one-service `runnext` slot or in the global run
 * queue.  A service woken by the service running on a worker goes to that
 * worker's runnext, so a call and its reply run on one thread with no
 * wake-up of another (a futex wake costs microseconds here, a switch between
 * states a fraction of one).  Anything else goes to the global queue and
 * wakes an idle worker; a service that still has messages after its batch
 * goes there too, so a busy service shares the workers with the others.
 * Idle workers spin briefly, steal other workers' runnext, then sleep.
 *
 * One more thread keeps the timers (a binary heap) and, while a worker holds
 * a runnext and another sleeps, checks every millisecond that the runnext is
 * not stuck behind a long-running service (it is then moved to the global
 * queue).
 *
 * Service structs are never freed before the scheduler: a slot keeps its
 * struct and a new generation reuses it, so an address can be looked up and
 * its struct locked without a reference count.
 *
 * Until a service's file has returned (lja_sched_started), the requests and
 * posts sent to it are held aside, still counted against its inbox: only
 * its first message (LJA_SMSG_INIT) and what its file waits for (replies,
 * timers) reach it. */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "object.h"

#define SLOT_SPAN 16777216ULL  /* address = slot + generation * SLOT_SPAN */
#define SPIN_ROUNDS 400         /* an idle worker's polls before it sleeps */
#define STUCK_AFTER 0.001       /* seconds a runnext may wait behind a running service */
#define SPARE_STATES 64         /* states of quit services kept for new ones */

enum { SVC_FREE, SVC_IDLE, SVC_QUEUED, SVC_RUNNING, SVC_DEAD };
enum { DISPATCH_WAIT = 0, DISPATCH_AGAIN = 1, DISPATCH_QUIT = 2 };

struct service {
    pthread_mutex_t lock;
    pthread_cond_t wake;        /* an exclusive service's thread waits here */
    uint64_t addr;              /* 0 while the slot is free */
    uint64_t generation;
    int status;
    int exclusive;
    int64_t capacity, count;    /* requests and posts queued (or held) */
    lja_smsg *head, *tail;
    int starting;               /* its file runs: requests and posts are held */
    lja_smsg *held_head, *held_tail;
    uint64_t *room_waiters;     /* addresses to tell when the inbox drains */
    int64_t nwaiters, cwaiters;
    void *L;
    struct service *run_link;   /* global run queue (under the scheduler's lock) */
    lja_spare_stack spare;      /* recycled message blocks */
    lja_sched *sched;
};

struct worker {
    lja_sched *sched;
    pthread_t thread;
    _Atomic(struct service *) runnext;
    _Atomic double since;       /* when the running dispatch began; 0 when idle */
};

struct timer {
    double deadline;
    uint64_t seq, addr;
    int32_t session;
};

struct name_waiter {
    uint64_t addr;
    int32_t session;
};

struct name {
    struct name *next;
    char *text;
    uint64_t claimer;           /* the service spawning it, or 0 */
    int bound, failed;          /* failed: the last spawn for it failed */
    uint64_t addr;
    struct name_waiter *waiters;
    int64_t nwaiters, cwaiters;
};

struct lja_sched {
    pthread_mutex_t lock;       /* run queue, idle count, slots, names, lifetimes */
    pthread_cond_t work, done;
    struct service *run_head, *run_tail;
    atomic_int runnable;        /* length of the global queue, read to spin */
    atomic_int nidle;
    int stopping, started;
    int nworkers;
    struct worker *workers;
    _Atomic(struct service *) *slots;
    int64_t max_services, nslots;
    int64_t *free_slots, free_head, free_count;   /* FIFO ring of slots */
    int64_t alive;
    uint64_t root;
    pthread_t *xthreads;        /* exclusive services' threads, joined at free */
    int64_t nxthreads, cxthreads;
    struct name *names;
    void *spare[SPARE_STATES];  /* reset states of quit services */
    int nspare;

    pthread_mutex_t timer_lock;
    pthread_cond_t timer_cond;
    struct timer *heap;
    int64_t ntimers, ctimers;
    uint64_t timer_seq;
    int timer_stop;
    atomic_int monitor_on;      /* the timer thread watches runnext slots */
    pthread_t timer_thread;

    pthread_mutex_t log_lock;
    FILE *log;
};

static _Thread_local struct worker *current_worker;
static _Thread_local uint64_t current_service;   /* dispatching on this thread */

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

static size_t block_size(size_t len, int nobjs)
{
    return sizeof(struct block) + sizeof(lja_smsg) + (size_t)nobjs * sizeof(void *) + len;
}

static void fill(lja_smsg *m, double from, int type, int32_t session, const char *data, size_t len,
                 void *const *objs, int nobjs)
{
    m->next = NULL;
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
}

void lja_sched_msg_free(lja_smsg *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->nobjs; i++)
        lja_object_release(m->objs[i]);
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

static void append(lja_smsg **head, lja_smsg **tail, lja_smsg *first, lja_smsg *last)
{
    if (*tail)
        (*tail)->next = first;
    else
        *head = first;
    *tail = last;
}

/* Moves the held requests and posts to the end of the inbox (svc->lock held). */
static void release_held(struct service *svc)
{
    if (svc->held_head)
        append(&svc->head, &svc->tail, svc->held_head, svc->held_tail);
    svc->held_head = svc->held_tail = NULL;
}

/* ---- services ---------------------------------------------------------- */

static struct service *lookup(lja_sched *s, uint64_t addr)
{
    uint64_t slot = addr % SLOT_SPAN;
    if (slot == 0 || (int64_t)slot > s->max_services)
        return NULL;
    return atomic_load_explicit(&s->slots[slot], memory_order_acquire);
}

/* Puts a queued service where a worker will run it. */
static void enqueue_global(lja_sched *s, struct service *svc)
{
    pthread_mutex_lock(&s->lock);
    svc->run_link = NULL;
    if (s->run_tail)
        s->run_tail->run_link = svc;
    else
        s->run_head = svc;
    s->run_tail = svc;
    atomic_fetch_add(&s->runnable, 1);
    if (atomic_load(&s->nidle) > 0)
        pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->lock);
}

static void watch_runnext(lja_sched *s)
{
    if (atomic_load(&s->nidle) == 0 || atomic_load(&s->monitor_on))
        return;
    pthread_mutex_lock(&s->timer_lock);
    if (!s->monitor_on) {
        s->monitor_on = 1;
        pthread_cond_signal(&s->timer_cond);
    }
    pthread_mutex_unlock(&s->timer_lock);
}

static void schedule(lja_sched *s, struct service *svc)
{
    struct worker *w = current_worker;
    if (w && w->sched == s) {
        struct service *old = atomic_exchange(&w->runnext, svc);
        if (!old) {
            watch_runnext(s);
            return;
        }
        svc = old;
    }
    enqueue_global(s, svc);
}

int lja_sched_send(lja_sched *s, double from, double to, int type, int32_t session,
                   const char *data, size_t len, void *const *objs, int nobjs)
{
    if (!s || nobjs < 0 || (nobjs && !objs) || (len && !data) || type < LJA_SMSG_REQUEST ||
        type > LJA_SMSG_INIT || !(to >= 1 && to < 9007199254740992.0))
        return LJA_EINVAL;
    uint64_t addr = (uint64_t)to;
    struct service *svc = lookup(s, addr);
    if (!svc)
        return LJA_ECLOSED;
    size_t size = block_size(len, nobjs);
    int small = size <= SMALL_BLOCK;
    struct block *b = NULL;
    if (small) {   /* a recycled block is taken and filled under the lock */
        pthread_mutex_lock(&svc->lock);
        if (!(b = lja_spare_pop(&svc->spare)))
            pthread_mutex_unlock(&svc->lock);
    }
    if (!b) {
        if (!(b = malloc(small ? SMALL_BLOCK : size)))
            return LJA_ENOMEM;
        pthread_mutex_lock(&svc->lock);
    }
    b->home = small ? svc : NULL;
    lja_smsg *m = MSG_OF(b);
    fill(m, from, type, session, data, len, objs, nobjs);
    int rc = LJA_OK, wake = 0;
    if (svc->addr != addr || svc->status == SVC_DEAD || svc->status == SVC_FREE) {
        rc = LJA_ECLOSED;
    } else if (counted(type) && svc->capacity && svc->count >= svc->capacity) {
        rc = LJA_EAGAIN;
        uint64_t waiter = (uint64_t)from;
        int known = waiter == 0;
        for (int i = 0; i < svc->nwaiters && !known; i++)
            known = svc->room_waiters[i] == waiter;
        if (!known) {
            uint64_t *w = lja_reserve(svc->room_waiters, svc->nwaiters, &svc->cwaiters, sizeof *w);
            if (!w) {
                rc = LJA_ENOMEM;
                goto out;
            }
            svc->room_waiters = w;
            svc->room_waiters[svc->nwaiters++] = waiter;
        }
    } else if (svc->starting && counted(type)) {
        append(&svc->held_head, &svc->held_tail, m, m);
        m = NULL;
        svc->count++;
    } else {
        if (type == LJA_SMSG_KILL) {   /* before anything else queued */
            m->next = svc->head;
            svc->head = m;
            if (!svc->tail)
                svc->tail = m;
        } else {
            append(&svc->head, &svc->tail, m, m);
        }
        m = NULL;
        if (counted(type))
            svc->count++;
        if (svc->status == SVC_IDLE) {
            svc->status = SVC_QUEUED;
            if (svc->exclusive)
                pthread_cond_signal(&svc->wake);
            else
                wake = 1;
        }
    }
out:
    pthread_mutex_unlock(&svc->lock);
    if (m) {
        m->nobjs = 0;   /* not sent: the caller keeps its references */
        lja_sched_msg_free(m);
    }
    if (wake)
        schedule(s, svc);
    return rc;
}

static void tell_room(lja_sched *s, uint64_t from, const uint64_t *waiters, int n)
{
    for (int i = 0; i < n; i++)
        lja_sched_send(s, (double)from, (double)waiters[i], LJA_SMSG_ROOM, 0, NULL, 0, NULL, 0);
}

lja_smsg *lja_sched_pop(lja_sched *s, double self, int max)
{
    uint64_t addr = (uint64_t)self;
    struct service *svc = lookup(s, addr);
    if (!svc || max < 1)
        return NULL;
    uint64_t stack[16], *waiters = NULL;
    int nwaiters = 0;
    pthread_mutex_lock(&svc->lock);
    lja_smsg *first = svc->addr == addr ? svc->head : NULL, *last = NULL;
    int64_t taken = 0;
    lja_smsg *m = first;
    for (int n = 0; m && n < max; n++) {
        taken += counted(m->type);
        last = m;
        m = m->next;
    }
    if (last) {
        last->next = NULL;
        svc->head = m;
        if (!m)
            svc->tail = NULL;
        svc->count -= taken;
        if (taken && svc->count <= svc->capacity / 2 && svc->nwaiters) {
            nwaiters = svc->nwaiters;
            waiters = nwaiters <= 16 ? stack : malloc((size_t)nwaiters * sizeof *waiters);
            if (waiters) {
                memcpy(waiters, svc->room_waiters, (size_t)nwaiters * sizeof *waiters);
                svc->nwaiters = 0;
            } else {
                nwaiters = 0;   /* told at a later pop */
            }
        }
    }
    pthread_mutex_unlock(&svc->lock);
    if (nwaiters) {
        tell_room(s, addr, waiters, nwaiters);
        if (waiters != stack)
            free(waiters);
    }
    return last ? first : NULL;
}

double lja_sched_self(void)
{
    return (double)current_service;
}

/* Called by the service in its dispatch: the worker finds the released
 * messages queued when the dispatch returns. */
void lja_sched_started(lja_sched *s, double self)
{
    uint64_t addr = (uint64_t)self;
    struct service *svc = s ? lookup(s, addr) : NULL;
    if (!svc)
        return;
    pthread_mutex_lock(&svc->lock);
    if (svc->addr == addr) {
        svc->starting = 0;
        release_held(svc);
    }
    pthread_mutex_unlock(&svc->lock);
}

static int dispatch(lja_sched *s, struct service *svc)
{
    char err[400];
    ptrdiff_t rc = DISPATCH_QUIT;
    current_service = svc->addr;
    int ran = lja_lua_call_registry(svc->L, "ltask.dispatch", 1, &rc, err, sizeof err);
    current_service = 0;
    if (!ran) {
        char line[512];
        int n = snprintf(line, sizeof line, "service failed in its dispatch: %s", err);
        lja_sched_log(s, (double)svc->addr, line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
        return DISPATCH_QUIT;
    }
    return (int)rc;
}

static void kill_all(lja_sched *s)
{
    pthread_mutex_lock(&s->lock);
    int64_t n = s->nslots;
    pthread_mutex_unlock(&s->lock);
    for (int64_t slot = 1; slot <= n; slot++) {
        struct service *svc = atomic_load(&s->slots[slot]);
        if (!svc)
            continue;
        pthread_mutex_lock(&svc->lock);
        uint64_t addr = svc->status != SVC_DEAD && svc->status != SVC_FREE ? svc->addr : 0;
        pthread_mutex_unlock(&svc->lock);
        if (addr)
            lja_sched_kill(s, (double)addr);
    }
}

static struct name_waiter *settle_name(struct name *nm, uint64_t addr, int64_t *n);
static void tell_name_waiters(lja_sched *s, uint64_t addr, struct name_waiter *w, int64_t n);

/* A quit service's names go; a name it was spawning fails (its spawn will
 * never bind it).  The waiters of one failed name are told per pass, with
 * the lock released. */
static void drop_names_of(lja_sched *s, uint64_t addr)
{
    struct name_waiter *waiters;
    int64_t n;
    do {
        waiters = NULL;
        n = 0;
        pthread_mutex_lock(&s->lock);
        for (struct name **p = &s->names; *p;) {
            struct name *nm = *p;
            if (nm->bound && nm->addr == addr) {
                *p = nm->next;
                free(nm->text);
                free(nm->waiters);
                free(nm);
                continue;
            }
            if (nm->claimer == addr && !n)
                waiters = settle_name(nm, 0, &n);
            p = &nm->next;
        }
        pthread_mutex_unlock(&s->lock);
        tell_name_waiters(s, 0, waiters, n);
    } while (n);
}

/* A quit service's state is reset by registry["ltask.recycle"] and kept
 * for the next spawn, unless the reset says it cannot be reused. */
static void recycle(lja_sched *s, void *L)
{
    ptrdiff_t reusable = 0;
    lja_lua_call_registry(L, "ltask.recycle", 0, &reusable, NULL, 0);
    if (reusable) {
        pthread_mutex_lock(&s->lock);
        if (s->nspare < SPARE_STATES && !s->stopping)
            s->spare[s->nspare++] = L;
        else
            reusable = 0;
        pthread_mutex_unlock(&s->lock);
    }
    if (!reusable)
        lja_lua_close(L);
}

void *lja_sched_take_state(lja_sched *s)
{
    void *L = NULL;
    pthread_mutex_lock(&s->lock);
    if (s->nspare > 0)
        L = s->spare[--s->nspare];
    pthread_mutex_unlock(&s->lock);
    return L;
}

/* A service quit: answer what it will never answer, close its state, free
 * its slot. */
static void finish(lja_sched *s, struct service *svc)
{
    pthread_mutex_lock(&svc->lock);
    uint64_t addr = svc->addr;
    svc->status = SVC_DEAD;
    release_held(svc);
    lja_smsg *list = svc->head;
    svc->head = svc->tail = NULL;
    svc->count = 0;
    int nwaiters = svc->nwaiters;
    uint64_t *waiters = svc->room_waiters;
    svc->room_waiters = NULL;
    svc->nwaiters = svc->cwaiters = 0;
    void *L = svc->L;
    svc->L = NULL;
    pthread_mutex_unlock(&svc->lock);

    for (lja_smsg *m = list, *next; m; m = next) {
        next = m->next;
        if ((m->type == LJA_SMSG_REQUEST || m->type == LJA_SMSG_INIT) && m->from >= 1)
            lja_sched_send(s, (double)addr, m->from, LJA_SMSG_DEAD, m->session, NULL, 0, NULL, 0);
        lja_sched_msg_free(m);
    }
    tell_room(s, addr, waiters, nwaiters);   /* their retry finds the service gone */
    free(waiters);
    recycle(s, L);
    drop_names_of(s, addr);

    pthread_mutex_lock(&svc->lock);
    svc->addr = 0;
    svc->status = SVC_FREE;
    svc->generation++;
    pthread_mutex_unlock(&svc->lock);

    pthread_mutex_lock(&s->lock);
    int64_t slot = (int64_t)(addr % SLOT_SPAN);
    s->free_slots[(s->free_head + s->free_count++) % s->max_services] = slot;
    int root_quit = addr == s->root;
    if (--s->alive == 0)
        pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->lock);
    if (root_quit)
        kill_all(s);
}

/* ---- workers ----------------------------------------------------------- */

static struct service *steal(lja_sched *s, struct worker *self)
{
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *o = &s->workers[i];
        if (o != self && atomic_load(&o->runnext)) {
            struct service *svc = atomic_exchange(&o->runnext, NULL);
            if (svc)
                return svc;
        }
    }
    return NULL;
}

static struct service *pop_global(lja_sched *s)
{
    struct service *svc = s->run_head;
    if (svc) {
        s->run_head = svc->run_link;
        if (!s->run_head)
            s->run_tail = NULL;
        atomic_fetch_sub(&s->runnable, 1);
    }
    return svc;
}

/* The next service for w to run, or NULL when the scheduler stops: its own
 * runnext, the global queue, another worker's runnext; after one brief spin
 * the worker sleeps until a service is queued globally. */
static struct service *next_service(lja_sched *s, struct worker *w)
{
    struct service *svc = atomic_exchange(&w->runnext, NULL);
    if (svc)
        return svc;
    for (int spun = 0;; spun = 1) {
        pthread_mutex_lock(&s->lock);
        while (!(svc = pop_global(s)) && !s->stopping && !(svc = steal(s, w)) && spun) {
            atomic_fetch_add(&s->nidle, 1);
            pthread_cond_wait(&s->work, &s->lock);
            atomic_fetch_sub(&s->nidle, 1);
        }
        int stopping = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (svc || stopping)
            return svc;
        for (int i = 0; i < SPIN_ROUNDS && !atomic_load(&s->runnable); i++) {
            if (i % 16 == 15 && (svc = steal(s, w)))
                return svc;
            lja_spin_pause(i);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    lja_sched *s = w->sched;
    current_worker = w;
    struct service *svc;
    while ((svc = next_service(s, w))) {
        pthread_mutex_lock(&svc->lock);
        svc->status = SVC_RUNNING;
        pthread_mutex_unlock(&svc->lock);
        atomic_store(&w->since, lja_now());
        int rc = dispatch(s, svc);
        atomic_store(&w->since, 0.0);
        if (rc == DISPATCH_QUIT) {
            finish(s, svc);
            continue;
        }
        int again = 0;
        pthread_mutex_lock(&svc->lock);
        if (svc->head || rc == DISPATCH_AGAIN) {
            svc->status = SVC_QUEUED;
            again = 1;
        } else {
            svc->status = SVC_IDLE;
        }
        pthread_mutex_unlock(&svc->lock);
        if (again)
            enqueue_global(s, svc);
    }
    return NULL;
}

/* An exclusive service's own thread. */
static void *exclusive_main(void *arg)
{
    struct service *svc = arg;
    lja_sched *s = svc->sched;
    int again = 0;
    pthread_mutex_lock(&svc->lock);
    for (;;) {
        while (!svc->head && !again) {
            svc->status = SVC_IDLE;
            pthread_cond_wait(&svc->wake, &svc->lock);
        }
        svc->status = SVC_RUNNING;
        pthread_mutex_unlock(&svc->lock);
        int rc = dispatch(s, svc);
        if (rc == DISPATCH_QUIT)
            break;
        again = rc == DISPATCH_AGAIN;
        pthread_mutex_lock(&svc->lock);
    }
    finish(s, svc);
    return NULL;
}

/* ---- timers and the runnext monitor -------------------------------------- */

static int timer_before(const struct timer *a, const struct timer *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void heap_push(lja_sched *s, struct timer t)
{
    int64_t i = s->ntimers++;
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!timer_before(&t, &s->heap[parent]))
            break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = t;
}

static struct timer heap_pop(lja_sched *s)
{
    struct timer top = s->heap[0], last = s->heap[--s->ntimers];
    int64_t i = 0, n = s->ntimers;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && timer_before(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!timer_before(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

int lja_sched_timer(lja_sched *s, double addr, int32_t session, double seconds)
{
    if (!s || !(addr >= 1) || seconds != seconds)
        return LJA_EINVAL;
    struct timer t = { lja_now() + (seconds > 0 ? seconds : 0), 0, (uint64_t)addr, session };
    pthread_mutex_lock(&s->timer_lock);
    struct timer *h = lja_reserve(s->heap, s->ntimers, &s->ctimers, sizeof *h);
    if (!h) {
        pthread_mutex_unlock(&s->timer_lock);
        return LJA_ENOMEM;
    }
    s->heap = h;
    t.seq = s->timer_seq++;
    heap_push(s, t);
    if (s->heap[0].seq == t.seq)   /* a new earliest deadline */
        pthread_cond_signal(&s->timer_cond);
    pthread_mutex_unlock(&s->timer_lock);
    return LJA_OK;
}

/* Moves runnext services that wait behind a long dispatch to the global
 * queue; returns whether any worker still holds one. */
static int unstick(lja_sched *s, double now)
{
    int any = 0;
    for (int i = 0; i < s->nworkers; i++) {
        struct worker *w = &s->workers[i];
        if (!atomic_load(&w->runnext))
            continue;
        double since = atomic_load(&w->since);
        if (since > 0 && now - since > STUCK_AFTER) {
            struct service *svc = atomic_exchange(&w->runnext, NULL);
            if (svc)
                enqueue_global(s, svc);
        } else {
            any = 1;
        }
    }
    return any;
}

static void *timer_main(void *arg)
{
    lja_sched *s = arg;
    struct timer due[64];
    pthread_mutex_lock(&s->timer_lock);
    while (!s->timer_stop) {
        double now = lja_now();
        int n = 0;
        while (s->ntimers && s->heap[0].deadline <= now && n < 64)
            due[n++] = heap_pop(s);
        int monitor = s->monitor_on;
        pthread_mutex_unlock(&s->timer_lock);
        for (int i = 0; i < n; i++)   /* a dead service's timers go nowhere */
            lja_sched_send(s, 0, (double)due[i].addr, LJA_SMSG_TIMER, due[i].session, NULL, 0, NULL, 0);
        int watching = monitor && unstick(s, now);
        pthread_mutex_lock(&s->timer_lock);
        if (n == 64)
            continue;
        if (!watching)
            s->monitor_on = 0;
        double wake = s->ntimers ? s->heap[0].deadline : -1;
        if (s->monitor_on && (wake < 0 || wake > now + STUCK_AFTER))
            wake = now + STUCK_AFTER;
        if (s->timer_stop)
            break;
        if (wake < 0) {
            pthread_cond_wait(&s->timer_cond, &s->timer_lock);
        } else {
            struct timespec ts = lja_deadline(wake - lja_now() > 0 ? wake - lja_now() : 0);
            lja_cond_wait_until(&s->timer_cond, &s->timer_lock, &ts);
        }
    }
    pthread_mutex_unlock(&s->timer_lock);
    return NULL;
}

/* ---- lifetime ------------------------------------------------------------ */

lja_sched *lja_sched_new(int workers, int64_t max_services)
{
    if (workers < 1 || workers > 1024 || max_services < 1 || max_services >= (int64_t)SLOT_SPAN)
        return NULL;
    lja_sched *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->nworkers = workers;
    s->max_services = max_services;
    s->workers = calloc((size_t)workers, sizeof *s->workers);
    s->slots = calloc((size_t)max_services + 1, sizeof *s->slots);
    s->free_slots = calloc((size_t)max_services, sizeof *s->free_slots);
    if (!s->workers || !s->slots || !s->free_slots) {
        free(s->workers);
        free(s->slots);
        free(s->free_slots);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work, NULL);
    lja_cond_init(&s->done);
    pthread_mutex_init(&s->timer_lock, NULL);
    lja_cond_init(&s->timer_cond);
    pthread_mutex_init(&s->log_lock, NULL);
    s->log = stderr;
    for (int i = 0; i < workers; i++) {
        s->workers[i].sched = s;
        atomic_init(&s->workers[i].runnext, NULL);
        atomic_init(&s->workers[i].since, 0.0);
    }
    return s;
}

/* LJA_EAGAIN: max_services are alive. */
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
        svc->sched = s;
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
    int rc = s->stopping ? LJA_ECLOSED : take_slot(s, &svc, &a);
    if (rc != LJA_OK) {
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    if (exclusive) {
        pthread_t *t = lja_reserve(s->xthreads, s->nxthreads, &s->cxthreads, sizeof *t);
        if (!t) {   /* give the slot back */
            s->free_slots[(s->free_head + s->free_count++) % s->max_services] = (int64_t)(a % SLOT_SPAN);
            pthread_mutex_unlock(&s->lock);
            return LJA_ENOMEM;
        }
        s->xthreads = t;
    }
    pthread_mutex_lock(&svc->lock);
    svc->addr = a;
    svc->status = SVC_IDLE;
    svc->exclusive = exclusive != 0;
    svc->capacity = capacity;
    svc->count = 0;
    svc->starting = 1;
    svc->L = L;
    pthread_mutex_unlock(&svc->lock);
    if (exclusive) {
        if (pthread_create(&s->xthreads[s->nxthreads], NULL, exclusive_main, svc) != 0) {
            pthread_mutex_lock(&svc->lock);
            svc->addr = 0;
            svc->status = SVC_FREE;
            svc->L = NULL;
            svc->generation++;
            pthread_mutex_unlock(&svc->lock);
            s->free_slots[(s->free_head + s->free_count++) % s->max_services] = (int64_t)(a % SLOT_SPAN);
            pthread_mutex_unlock(&s->lock);
            return LJA_ESYS;
        }
        s->nxthreads++;
    }
    if (!s->root)
        s->root = a;
    s->alive++;
    pthread_mutex_unlock(&s->lock);
    *addr = (double)a;
    return LJA_OK;
}

int lja_sched_start(lja_sched *s)
{
    if (!s)
        return LJA_EINVAL;
    pthread_mutex_lock(&s->lock);
    int started = s->started;
    s->started = 1;
    pthread_mutex_unlock(&s->lock);
    if (started)
        return LJA_EINVAL;
    if (pthread_create(&s->timer_thread, NULL, timer_main, s) != 0)
        return LJA_ESYS;
    for (int i = 0; i < s->nworkers; i++) {
        if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
            pthread_mutex_lock(&s->lock);
            s->nworkers = i;   /* the rest never ran */
            pthread_mutex_unlock(&s->lock);
            return i > 0 ? LJA_OK : LJA_ESYS;
        }
    }
    return LJA_OK;
}

int lja_sched_kill(lja_sched *s, double addr)
{
    return lja_sched_send(s, 0, addr, LJA_SMSG_KILL, 0, NULL, 0, NULL, 0);
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

/* Kills what still runs, waits for it, then stops and frees everything. */
void lja_sched_free(lja_sched *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    int started = s->started;
    pthread_mutex_unlock(&s->lock);
    if (started) {
        kill_all(s);
        lja_sched_wait(s, -1);
    }
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    if (started) {
        for (int i = 0; i < s->nworkers; i++)
            pthread_join(s->workers[i].thread, NULL);
        pthread_mutex_lock(&s->timer_lock);
        s->timer_stop = 1;
        pthread_cond_signal(&s->timer_cond);
        pthread_mutex_unlock(&s->timer_lock);
        pthread_join(s->timer_thread, NULL);
    }
    for (int i = 0; i < s->nxthreads; i++)
        pthread_join(s->xthreads[i], NULL);
    /* Never started: the services added were never run. */
    for (int64_t slot = 1; slot <= s->nslots; slot++) {
        struct service *svc = atomic_load(&s->slots[slot]);
        if (svc->L)
            lja_lua_close(svc->L);
        release_held(svc);
        for (lja_smsg *m = svc->head, *next; m; m = next) {
            next = m->next;
            m->next = NULL;
            for (int i = 0; i < m->nobjs; i++)
                lja_object_release(m->objs[i]);
            free(BLOCK_OF(m));   /* not to a spare stack: those go next */
        }
        free(svc->room_waiters);
        lja_spare_free_all(&svc->spare);
        pthread_cond_destroy(&svc->wake);
        pthread_mutex_destroy(&svc->lock);
        free(svc);
    }
    for (int i = 0; i < s->nspare; i++)
        lja_lua_close(s->spare[i]);
    for (struct name *nm = s->names, *next; nm; nm = next) {
        next = nm->next;
        free(nm->text);
        free(nm->waiters);
        free(nm);
    }
    if (s->log != stderr)
        fclose(s->log);
    pthread_mutex_destroy(&s->log_lock);
    pthread_cond_destroy(&s->timer_cond);
    pthread_mutex_destroy(&s->timer_lock);
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    free(s->heap);
    free(s->xthreads);
    free(s->free_slots);
    free(s->slots);
    free(s->workers);
    free(s);
}

/* ---- names (uniqueservice, queryservice) ----------------------------------- */

/* Called with s->lock held. */
static struct name *find_name(lja_sched *s, const char *text, int create)
{
    for (struct name *nm = s->names; nm; nm = nm->next)
        if (strcmp(nm->text, text) == 0)
            return nm;
    if (!create)
        return NULL;
    struct name *nm = calloc(1, sizeof *nm);
    if (!nm || !(nm->text = strdup(text))) {
        free(nm);
        return NULL;
    }
    nm->next = s->names;
    s->names = nm;
    return nm;
}

/* Binds a name to addr, or fails it (addr 0), with s->lock held; returns
 * its waiters, for tell_name_waiters once the lock is released. */
static struct name_waiter *settle_name(struct name *nm, uint64_t addr, int64_t *n)
{
    struct name_waiter *waiters = nm->waiters;
    *n = nm->nwaiters;
    nm->waiters = NULL;
    nm->nwaiters = nm->cwaiters = 0;
    nm->claimer = 0;
    nm->bound = addr != 0;
    nm->failed = addr == 0;
    nm->addr = addr;
    return waiters;
}

static void tell_name_waiters(lja_sched *s, uint64_t addr, struct name_waiter *w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        lja_sched_send(s, (double)addr, (double)w[i].addr, LJA_SMSG_NAME, w[i].session, NULL, 0, NULL, 0);
    free(w);
}

int lja_sched_name_claim(lja_sched *s, const char *text, double claimer)
{
    if (!s || !text || !(claimer >= 1))
        return LJA_EINVAL;
    pthread_mutex_lock(&s->lock);
    struct name *nm = find_name(s, text, 1);
    int rc = !nm ? LJA_ENOMEM : (nm->claimer || nm->bound) ? LJA_EBUSY : LJA_OK;
    if (rc == LJA_OK)
        nm->claimer = (uint64_t)claimer;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void lja_sched_name_bind(lja_sched *s, const char *text, double addr)
{
    if (!s || !text)
        return;
    pthread_mutex_lock(&s->lock);
    struct name *nm = find_name(s, text, 1);
    struct name_waiter *waiters = NULL;
    int64_t n = 0;
    if (nm)
        waiters = settle_name(nm, addr >= 1 ? (uint64_t)addr : 0, &n);
    pthread_mutex_unlock(&s->lock);
    tell_name_waiters(s, addr >= 1 ? (uint64_t)addr : 0, waiters, n);
}

int lja_sched_name_query(lja_sched *s, const char *text, double waiter, int32_t session, double *addr)
{
    if (!s || !text || !addr)
        return LJA_EINVAL;
    *addr = 0;
    pthread_mutex_lock(&s->lock);
    struct name *nm = find_name(s, text, waiter >= 1);
    int rc = LJA_EAGAIN;
    if (nm && nm->bound) {
        *addr = (double)nm->addr;
        rc = LJA_OK;
    } else if (nm && nm->failed && !nm->claimer) {
        rc = LJA_ENOTFOUND;
    } else if (nm && waiter >= 1) {
        struct name_waiter *w = lja_reserve(nm->waiters, nm->nwaiters, &nm->cwaiters, sizeof *w);
        if (!w) {
            pthread_mutex_unlock(&s->lock);
            return LJA_ENOMEM;
        }
        nm->waiters = w;
        nm->waiters[nm->nwaiters++] = (struct name_waiter){ (uint64_t)waiter, session };
    } else if (!nm && waiter >= 1) {
        rc = LJA_ENOMEM;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* ---- the log ---------------------------------------------------------------- */

int lja_sched_set_log(lja_sched *s, const char *path)
{
    FILE *f = path ? fopen(path, "a") : stderr;
    if (!f)
        return LJA_ESYS;
    pthread_mutex_lock(&s->log_lock);
    if (s->log != stderr)
        fclose(s->log);
    s->log = f;
    pthread_mutex_unlock(&s->log_lock);
    return LJA_OK;
}

void lja_sched_log(lja_sched *s, double addr, const char *msg, size_t len)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    localtime_r(&ts.tv_sec, &tm);
    pthread_mutex_lock(&s->log_lock);
    fprintf(s->log, "[%02d:%02d:%02d.%02ld][:%08llx] %.*s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 10000000L, (unsigned long long)addr, (int)len, msg ? msg : "");
    fflush(s->log);
    pthread_mutex_unlock(&s->log_lock);
}
