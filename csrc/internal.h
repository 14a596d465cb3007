/* internal.h: helpers shared by the shim's files; not part of the ABI. */
#ifndef LJA_INTERNAL_H
#define LJA_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "ljasync.h"

/* Absolute deadline on CLOCK_MONOTONIC for a relative timeout (>= 0). */
struct timespec lja_deadline(double timeout);

/* A condition variable that measures timeouts on CLOCK_MONOTONIC. */
int lja_cond_init(pthread_cond_t *c);

/* Wait on c until woken or past the deadline (NULL: no deadline).
 * Returns LJA_OK or LJA_ETIMEDOUT; callers re-check their predicate. */
int lja_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *deadline);

/* Wait on c for a relative timeout (< 0: forever, 0: not at all); the
 * deadline is fixed on the first call of a wait loop (*have_deadline). */
int lja_cond_wait_timeout(pthread_cond_t *c, pthread_mutex_t *m, double timeout,
                          struct timespec *deadline, int *have_deadline);

/* lua.c: make the code running in L raise "interrupted" at its next hook
 * check outside lj-async's own functions, and undo that (both with the
 * bound Lua C API). */
void lja_lua_interrupt(void *L);
void lja_lua_clear_hook(void *L);

/* lua.c: a NUL-terminated copy of len bytes (s may be NULL when len is 0),
 * to free with free(); NULL when out of memory. */
char *lja_copy(const char *s, size_t len);

/* lua.c: lja_lua_cancel (ljasync.h) for a thread ("lj-async: thread
 * cancelled"), and the count hook of a thread's step option, every `step`
 * VM instructions: it pauses there, or raises once the thread is cancelled. */
void lja_lua_cancel_thread(void *L);
void lja_lua_step(void *L, int step);

/* thread.c: the cancellation point of the calling lja_thread thread:
 * lja_wait_timeout waits as lja_cond_wait_timeout does, and also returns at
 * once (LJA_ETIMEDOUT) once the thread is cancelled, and pauses while it is
 * paused (then LJA_OK: the caller checks again); the caller holds m, and m
 * lives while it waits. */
int lja_wait_timeout(pthread_cond_t *c, pthread_mutex_t *m, double timeout,
                     struct timespec *deadline, int *have_deadline);

/* thread.c: L runs t's Lua (NULL: no more): a cancel then sets the cancel
 * hook on L (lja_lua_cancel_thread); the step hook is set or cleared.  And
 * the runner's word that a cancel stopped t (lja_thread_state). */
void lja_thread_attach(lja_thread *t, void *L);
void lja_thread_set_cancelled(lja_thread *t);

/* The wait policy (README "Benchmarks", waits that adapt).  A waiter polls
 * its condition for a while, then parks on its condition variable.  A spin
 * pays only while the other side runs on another core and answers within
 * it; on a busy machine it burns time the other side may need, and a
 * sched_yield would hand the core to whatever else runs.  So each waitable
 * keeps a spin budget, in polls, learned from its last waits: a spin that
 * succeeded after i polls raises the budget at once to 2i (plus the floor),
 * or lowers it slowly toward that; one that failed halves it, down to a
 * floor of polls that costs about what a futex sleep and wake cost (a
 * lower floor let both ends of a ping-pong fall into parking every wait,
 * each too late for the other's spin: 87k round trips/s on a quiet machine
 * instead of 1.2M).  Every 8th wait probes 8 times as far, so that a budget that fell
 * while the other side could not run grows again once it can (otherwise a
 * floor shorter than the other side's answer would park every wait).  After
 * 8 spins in a row that failed (the last at the floor), the budget is 0:
 * the other side is not running (a busy machine, or it sleeps in the
 * kernel), so each spin would burn the floor's polls for nothing, time the
 * other side may need (asio.recv against a thread under 2 CPU hogs fell to
 * half a C ping-pong that parks every trip).  Then only every 64th wait
 * probes, as far as from the floor.  A success in between (another waiter
 * of the same waitable, say) keeps the floor.  The spin never yields the
 * CPU. */
#define LJA_SPIN_MIN 256    /* polls (~ 7 microseconds, about a futex sleep and wake) */
#define LJA_SPIN_MAX 4096   /* polls (~ 100 microseconds) */

typedef struct lja_spin {
    atomic_int budget;
    atomic_uint waits;
    atomic_int fails;   /* spins in a row that failed */
} lja_spin;

static inline void lja_spin_init(lja_spin *sp)
{
    atomic_init(&sp->budget, LJA_SPIN_MAX / 4);
    atomic_init(&sp->waits, 0);
    atomic_init(&sp->fails, 0);
}

static inline void lja_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Polls ready(arg) within sp's budget: 1 once it holds, 0 if the caller
 * should park (and check again under its lock, as always). */
static inline int lja_spin_until(lja_spin *sp, int (*ready)(void *), void *arg)
{
    int budget = atomic_load_explicit(&sp->budget, memory_order_relaxed), want;
    unsigned waits = atomic_load_explicit(&sp->waits, memory_order_relaxed) + 1;
    atomic_store_explicit(&sp->waits, waits, memory_order_relaxed);   /* a count, not exact */
    int limit = budget == 0               ? (waits % 64 ? 0 : 8 * LJA_SPIN_MIN)
                : waits % 8               ? budget
                : budget < LJA_SPIN_MAX / 8 ? 8 * budget
                                          : LJA_SPIN_MAX;
    for (int i = 0; i <= limit; i++) {
        if (ready(arg)) {
            want = 2 * i + LJA_SPIN_MIN;
            if (want > LJA_SPIN_MAX)
                want = LJA_SPIN_MAX;
            if (want < budget)
                want = budget - ((budget - want) >> 4);
            if (want != budget)
                atomic_store_explicit(&sp->budget, want, memory_order_relaxed);
            if (atomic_load_explicit(&sp->fails, memory_order_relaxed))
                atomic_store_explicit(&sp->fails, 0, memory_order_relaxed);
            return 1;
        }
        lja_cpu_relax();
    }
    int fails = atomic_load_explicit(&sp->fails, memory_order_relaxed) + 1;
    atomic_store_explicit(&sp->fails, fails, memory_order_relaxed);
    want = budget / 2 > LJA_SPIN_MIN ? budget / 2 : fails >= 8 ? 0 : LJA_SPIN_MIN;
    if (want != budget)
        atomic_store_explicit(&sp->budget, want, memory_order_relaxed);
    return 0;
}

/* A stack of spare memory blocks of one size, recycled between threads
 * (malloc, then free on another thread, costs more than a whole message
 * send).  A block links through its first word.  Pushes are lock-free from
 * any thread; pops must happen one at a time (under the owner's lock), so
 * the stack has no ABA problem.  At most `max` blocks are kept. */
typedef struct lja_spare_stack {
    _Atomic(void *) head;
    atomic_int count;
} lja_spare_stack;

static inline void lja_spare_init(lja_spare_stack *st)
{
    atomic_init(&st->head, NULL);
    atomic_init(&st->count, 0);
}

/* Keeps the block, or frees it when the stack is full. */
static inline void lja_spare_push(lja_spare_stack *st, void *block, int max)
{
    if (atomic_fetch_add(&st->count, 1) >= max) {
        atomic_fetch_sub(&st->count, 1);
        free(block);
        return;
    }
    void *head = atomic_load(&st->head);
    do
        *(void **)block = head;
    while (!atomic_compare_exchange_weak(&st->head, &head, block));
}

static inline void *lja_spare_pop(lja_spare_stack *st)
{
    void *block = atomic_load(&st->head);
    while (block && !atomic_compare_exchange_weak(&st->head, &block, *(void **)block)) {
    }
    if (block)
        atomic_fetch_sub(&st->count, 1);
    return block;
}

static inline void lja_spare_free_all(lja_spare_stack *st)
{
    void *block;
    while ((block = lja_spare_pop(st)))
        free(block);
}

/* Room for element `count` of a growable array of `*capacity` elements of
 * `size` bytes: returns the array (moved, *capacity doubled, if it was
 * full), or NULL when out of memory (the array is then unchanged). */
static inline void *lja_reserve(void *items, int64_t count, int64_t *capacity, size_t size)
{
    if (count < *capacity)
        return items;
    int64_t c = *capacity ? *capacity * 2 : 8;
    void *grown = realloc(items, (size_t)c * size);
    if (grown)
        *capacity = c;
    return grown;
}

#endif
