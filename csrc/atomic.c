/* atomic.c: 64-bit atomics behind real calls, so the JIT cannot hoist them. */
#include <stdatomic.h>

#include "ljasync.h"

/* Caller-owned int64_t cells are treated as atomics: same size and alignment
 * on every platform this shim builds for (checked below). */
_Static_assert(sizeof(_Atomic int64_t) == sizeof(int64_t), "atomic int64 layout");

int64_t lja_atomic_load(const int64_t *p)
{
    return atomic_load((_Atomic int64_t *)p);
}

void lja_atomic_store(int64_t *p, int64_t v)
{
    atomic_store((_Atomic int64_t *)p, v);
}

int64_t lja_atomic_add(int64_t *p, int64_t d)
{
    /* wraps like the atomic itself: no signed overflow */
    return (int64_t)((uint64_t)atomic_fetch_add((_Atomic int64_t *)p, d) + (uint64_t)d);
}

int lja_atomic_cas(int64_t *p, int64_t expected, int64_t desired)
{
    return atomic_compare_exchange_strong((_Atomic int64_t *)p, &expected, desired);
}
