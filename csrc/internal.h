/* internal.h: helpers shared by the shim's files; not part of the ABI. */
#ifndef LJA_INTERNAL_H
#define LJA_INTERNAL_H

#include <pthread.h>
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
 * check, and undo that (both with the bound Lua C API). */
void lja_lua_interrupt(void *L);
void lja_lua_clear_hook(void *L);

/* lua.c: the Lua C API the host bound (read only after a state exists). */
const lja_lua_api *lja_lua_api_bound(void);

#endif
