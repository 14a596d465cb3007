/* native.c: plain-C baselines that bench/run.lua measures beside lj-async. */
#include <pthread.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *empty_thread(void *arg)
{
    return arg;
}

/* Seconds for n sequential pthread_create + pthread_join of an empty thread. */
EXPORT double ljabench_spawn_join(int n)
{
    double t0 = now();
    for (int i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, empty_thread, NULL) != 0)
            return -1;
        pthread_join(t, NULL);
    }
    return now() - t0;
}

typedef int (*int_fn)(int);

/* A plain C function: the floor for a call through a function pointer. */
EXPORT int ljabench_plain(int x)
{
    return x + 1;
}

struct call_loop {
    int_fn fn;
    int n;
    long sum;
};

static void *call_loop_main(void *p)
{
    struct call_loop *c = p;
    long sum = 0;
    for (int i = 0; i < c->n; i++)
        sum += c->fn(i);
    c->sum = sum;
    return NULL;
}

/* Seconds for `threads` threads each calling fn n times (0 threads: the
 * calling thread does it).  *sum receives the total of all results. */
EXPORT double ljabench_call_loop(int_fn fn, int n, int threads, long *sum)
{
    struct call_loop loops[16];
    pthread_t tids[16];
    if (threads > 16)
        return -1;
    double t0 = now();
    *sum = 0;
    if (threads == 0) {
        loops[0] = (struct call_loop){fn, n, 0};
        call_loop_main(&loops[0]);
        *sum = loops[0].sum;
        return now() - t0;
    }
    for (int i = 0; i < threads; i++) {
        loops[i] = (struct call_loop){fn, n, 0};
        pthread_create(&tids[i], NULL, call_loop_main, &loops[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        *sum += loops[i].sum;
    }
    return now() - t0;
}
