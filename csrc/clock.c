/* clock.c: monotonic time, and deadlines for timed waits. */
#include <errno.h>
#include <math.h>

#include "internal.h"

double lja_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct timespec lja_deadline(double timeout)
{
    /* Cap far-away deadlines: a year is "forever" for any caller here. */
    if (timeout > 3.15e7)
        timeout = 3.15e7;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double whole = floor(timeout);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((timeout - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int lja_cond_init(pthread_cond_t *c)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return LJA_ESYS;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? LJA_OK : LJA_ESYS;
}

int lja_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *deadline)
{
    if (!deadline) {
        pthread_cond_wait(c, m);
        return LJA_OK;
    }
    return pthread_cond_timedwait(c, m, deadline) == ETIMEDOUT ? LJA_ETIMEDOUT : LJA_OK;
}

int lja_cond_wait_timeout(pthread_cond_t *c, pthread_mutex_t *m, double timeout,
                          struct timespec *deadline, int *have_deadline)
{
    if (timeout == 0)
        return LJA_ETIMEDOUT;
    if (timeout > 0 && !*have_deadline) {   /* fixed on the loop's first wait */
        *deadline = lja_deadline(timeout);
        *have_deadline = 1;
    }
    return lja_cond_wait_until(c, m, timeout > 0 ? deadline : NULL);
}
