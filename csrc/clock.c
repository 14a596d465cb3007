/* clock.c: monotonic time, sleeping, and deadlines for timed waits. */
#include <errno.h>
#include <math.h>

#include "internal.h"

double lja_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static struct timespec to_timespec(double seconds)
{
    struct timespec ts;
    double whole = floor(seconds);
    ts.tv_sec = (time_t)whole;
    ts.tv_nsec = (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

void lja_sleep(double seconds)
{
    if (!(seconds > 0))  /* also rejects NaN */
        return;
    if (lja_thread_sleep(seconds))   /* an lj-async thread: a cancel wakes it */
        return;
    struct timespec ts = to_timespec(seconds);
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

struct timespec lja_deadline(double timeout)
{
    /* Cap far-away deadlines: a year is "forever" for any caller here. */
    if (timeout > 3.15e7)
        timeout = 3.15e7;
    struct timespec now, rel = to_timespec(timeout);
    clock_gettime(CLOCK_MONOTONIC, &now);
    now.tv_sec += rel.tv_sec;
    now.tv_nsec += rel.tv_nsec;
    if (now.tv_nsec >= 1000000000L) {
        now.tv_sec++;
        now.tv_nsec -= 1000000000L;
    }
    return now;
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

/* The deadline of a wait loop's timeout, fixed on its first wait. */
static const struct timespec *loop_deadline(double timeout, struct timespec *deadline, int *have_deadline)
{
    if (timeout > 0 && !*have_deadline) {
        *deadline = lja_deadline(timeout);
        *have_deadline = 1;
    }
    return timeout > 0 ? deadline : NULL;
}

int lja_cond_wait_timeout(pthread_cond_t *c, pthread_mutex_t *m, double timeout,
                          struct timespec *deadline, int *have_deadline)
{
    if (timeout == 0)
        return LJA_ETIMEDOUT;
    return lja_cond_wait_until(c, m, loop_deadline(timeout, deadline, have_deadline));
}

int lja_wait_timeout(pthread_cond_t *c, pthread_mutex_t *m, double timeout,
                     struct timespec *deadline, int *have_deadline)
{
    if (timeout == 0)
        return LJA_ETIMEDOUT;
    return lja_wait_until(c, m, loop_deadline(timeout, deadline, have_deadline));
}
