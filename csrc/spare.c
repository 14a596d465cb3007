/* spare.c: a process-wide stack of prepared Lua states.
 * Documented global state: it is what lets a new thread skip building its
 * Lua state on the critical path. */
#include "internal.h"

#define SPARE_MAX 64

static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static void *spare[SPARE_MAX];
static int spare_count;

int lja_spare_push(void *state, int limit)
{
    if (!state)
        return LJA_EINVAL;
    if (limit > SPARE_MAX)
        limit = SPARE_MAX;
    int rc = LJA_EAGAIN;
    pthread_mutex_lock(&spare_lock);
    if (spare_count < limit) {
        spare[spare_count++] = state;
        rc = LJA_OK;
    }
    pthread_mutex_unlock(&spare_lock);
    return rc;
}

int lja_spare_pop(void **state)
{
    int rc = LJA_EAGAIN;
    pthread_mutex_lock(&spare_lock);
    if (spare_count > 0) {
        *state = spare[--spare_count];
        rc = LJA_OK;
    }
    pthread_mutex_unlock(&spare_lock);
    return rc;
}

int lja_spare_count(void)
{
    pthread_mutex_lock(&spare_lock);
    int n = spare_count;
    pthread_mutex_unlock(&spare_lock);
    return n;
}
