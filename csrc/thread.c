/* thread.c: OS threads with timed join, a result slot, and after-run cleanup. */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

struct lja_thread {
    pthread_mutex_t lock;
    pthread_cond_t finished_cond;
    int finished;             /* guarded by lock */
    atomic_int refs;          /* the creator's handle and the running thread */
    lja_thread_fn run, cleanup;
    void *arg, *cleanup_arg;
    char *input, *result;
    size_t input_len, result_len;
};

static void thread_unref(lja_thread *t)
{
    if (atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    pthread_cond_destroy(&t->finished_cond);
    pthread_mutex_destroy(&t->lock);
    free(t->input);
    free(t->result);
    free(t);
}

void lja_thread_finish(lja_thread *t)
{
    pthread_mutex_lock(&t->lock);
    t->finished = 1;
    pthread_cond_broadcast(&t->finished_cond);
    pthread_mutex_unlock(&t->lock);
}

static _Thread_local lja_thread *current;

lja_thread *lja_thread_self(void)
{
    return current;
}

static void *thread_main(void *p)
{
    lja_thread *t = p;
    current = t;
    t->run(t->arg);
    lja_thread_finish(t);
    if (t->cleanup)
        t->cleanup(t->cleanup_arg);
    thread_unref(t);
    return NULL;
}

int lja_thread_create(lja_thread **out, lja_thread_fn run, void *arg,
                      lja_thread_fn cleanup, void *cleanup_arg,
                      const char *input, size_t input_len)
{
    if (!out || !run)
        return LJA_EINVAL;
    lja_thread *t = calloc(1, sizeof *t);
    if (!t)
        return LJA_ENOMEM;
    t->input = malloc(input_len ? input_len : 1);
    if (!t->input) {
        free(t);
        return LJA_ENOMEM;
    }
    if (input_len)
        memcpy(t->input, input, input_len);
    t->input_len = input_len;
    t->run = run;
    t->arg = arg;
    t->cleanup = cleanup;
    t->cleanup_arg = cleanup_arg;
    atomic_init(&t->refs, 2);
    pthread_mutex_init(&t->lock, NULL);
    if (lja_cond_init(&t->finished_cond) != LJA_OK) {
        pthread_mutex_destroy(&t->lock);
        free(t->input);
        free(t);
        return LJA_ESYS;
    }

    /* Detached from the start: join waits on `finished`, and the last
     * reference frees the object, so no pthread_join is ever owed. */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t tid;
    int rc = pthread_create(&tid, &attr, thread_main, t);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        atomic_store(&t->refs, 1);
        thread_unref(t);
        return rc == EAGAIN ? LJA_EAGAIN : LJA_ESYS;
    }
    *out = t;
    return LJA_OK;
}

int lja_thread_join(lja_thread *t, double timeout)
{
    struct timespec deadline;
    if (timeout >= 0)
        deadline = lja_deadline(timeout);
    int rc = LJA_OK;
    pthread_mutex_lock(&t->lock);
    while (!t->finished && rc == LJA_OK)
        rc = lja_cond_wait_until(&t->finished_cond, &t->lock, timeout >= 0 ? &deadline : NULL);
    rc = t->finished ? LJA_OK : LJA_ETIMEDOUT;
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void lja_thread_release(lja_thread *t)
{
    if (t)
        thread_unref(t);
}

const char *lja_thread_input(lja_thread *t, size_t *len)
{
    *len = t->input_len;
    return t->input;
}

int lja_thread_set_result(lja_thread *t, const char *data, size_t len)
{
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return LJA_ENOMEM;
    if (len)
        memcpy(copy, data, len);
    pthread_mutex_lock(&t->lock);
    free(t->result);
    t->result = copy;
    t->result_len = len;
    pthread_mutex_unlock(&t->lock);
    return LJA_OK;
}

const char *lja_thread_result(lja_thread *t, size_t *len)
{
    pthread_mutex_lock(&t->lock);
    const char *r = t->finished ? t->result : NULL;
    *len = r ? t->result_len : 0;
    pthread_mutex_unlock(&t->lock);
    return r;
}

void lja_thread_yield(void)
{
    sched_yield();
}

uint64_t lja_thread_id(void)
{
    static atomic_uint_fast64_t next_id = 1;
    static _Thread_local uint64_t id;
    if (!id)
        id = atomic_fetch_add(&next_id, 1);
    return id;
}

int lja_cpu_count(void)
{
    /* sysconf reads /sys each time; the answer is taken once. */
    static atomic_int cached;
    int n = atomic_load(&cached);
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        n = online > 0 ? (int)online : 1;
        atomic_store(&cached, n);
    }
    return n;
}
