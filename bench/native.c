/* native.c: plain-C baselines that bench/run.lua measures beside lj-async. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
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

/* A plain C mutex+condvar queue: the baseline for channels. */
struct node {
    struct node *next;
    long value;
};

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    struct node *head, *tail;
};

static void queue_init(struct queue *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->ready, NULL);
    q->head = q->tail = NULL;
}

static void queue_push(struct queue *q, long v)
{
    struct node *n = malloc(sizeof *n);
    n->next = NULL;
    n->value = v;
    pthread_mutex_lock(&q->lock);
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    pthread_cond_signal(&q->ready);
    pthread_mutex_unlock(&q->lock);
}

static long queue_pop(struct queue *q)
{
    pthread_mutex_lock(&q->lock);
    while (!q->head)
        pthread_cond_wait(&q->ready, &q->lock);
    struct node *n = q->head;
    q->head = n->next;
    if (!q->head)
        q->tail = NULL;
    pthread_mutex_unlock(&q->lock);
    long v = n->value;
    free(n);
    return v;
}

struct producer {
    struct queue *q;
    long n;
};

static void *produce(void *p)
{
    struct producer *pr = p;
    for (long i = 0; i < pr->n; i++)
        queue_push(pr->q, i);
    return NULL;
}

/* Seconds for one thread to pass n messages to another through the queue. */
EXPORT double ljabench_queue(long n)
{
    struct queue q;
    queue_init(&q);
    struct producer pr = {&q, n};
    pthread_t t;
    double t0 = now();
    pthread_create(&t, NULL, produce, &pr);
    long sum = 0;
    for (long i = 0; i < n; i++)
        sum += queue_pop(&q);
    double s = now() - t0;
    pthread_join(t, NULL);
    return sum == n * (n - 1) / 2 ? s : -1;
}

struct pingpong {
    struct queue *ping, *pong;
    long n;
};

static void *ponger(void *p)
{
    struct pingpong *pp = p;
    for (long i = 0; i < pp->n; i++)
        queue_push(pp->pong, queue_pop(pp->ping) + 1);
    return NULL;
}

/* Seconds for n round trips between two threads over two queues. */
EXPORT double ljabench_pingpong(long n)
{
    struct queue ping, pong;
    queue_init(&ping);
    queue_init(&pong);
    struct pingpong pp = {&ping, &pong, n};
    pthread_t t;
    double t0 = now();
    pthread_create(&t, NULL, ponger, &pp);
    long v = 0;
    for (long i = 0; i < n; i++) {
        queue_push(&ping, v);
        v = queue_pop(&pong);
    }
    double s = now() - t0;
    pthread_join(t, NULL);
    return v == n ? s : -1;
}

/* A mutex-protected hash map from string keys to doubles: the baseline for
 * shared tables, doing per operation what a shared table's does (take a
 * lock, hash the key, find its entry, read or write, unlock). */
struct map_entry {
    char key[16];
    size_t len;
    double value;
};

struct map {
    pthread_mutex_t lock;
    struct map_entry slots[64];
};

static struct map_entry *map_find(struct map *m, const char *key, size_t len)
{
    unsigned h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    for (unsigned i = h & 63;; i = (i + 1) & 63) {
        struct map_entry *e = &m->slots[i];
        if (e->len == len && memcmp(e->key, key, len) == 0)
            return e;
        if (e->len == 0) {
            memcpy(e->key, key, len);
            e->len = len;
            return e;
        }
    }
}

struct map_loop {
    struct map *m;
    long n;
    int op;
    double sum;
};

enum { MAP_GET, MAP_SET, MAP_UPDATE };

static void *map_loop_main(void *p)
{
    struct map_loop *c = p;
    /* through a volatile pointer: the compiler may not know the key */
    static const char *volatile key = "n";
    double sum = 0;
    for (long i = 0; i < c->n; i++) {
        const char *k = key;
        pthread_mutex_lock(&c->m->lock);
        struct map_entry *e = map_find(c->m, k, strlen(k));
        if (c->op == MAP_GET)
            sum += e->value;
        else if (c->op == MAP_SET)
            e->value = (double)i;
        else
            e->value += 1;
        pthread_mutex_unlock(&c->m->lock);
    }
    c->sum = sum;
    return NULL;
}

/* Seconds for `threads` threads (0: this one) each doing n operations `op`
 * (0 get, 1 set, 2 add 1) on key "n" of one map; *value gets its value. */
EXPORT double ljabench_locked_map(long n, int threads, int op, double *value)
{
    struct map m;
    memset(&m, 0, sizeof m);
    pthread_mutex_init(&m.lock, NULL);
    struct map_loop loops[16];
    pthread_t tids[16];
    if (threads > 16)
        return -1;
    double t0 = now();
    if (threads == 0) {
        loops[0] = (struct map_loop){&m, n, op, 0};
        map_loop_main(&loops[0]);
    } else {
        for (int i = 0; i < threads; i++) {
            loops[i] = (struct map_loop){&m, n, op, 0};
            pthread_create(&tids[i], NULL, map_loop_main, &loops[i]);
        }
        for (int i = 0; i < threads; i++)
            pthread_join(tids[i], NULL);
    }
    double s = now() - t0;
    *value = map_find(&m, "n", 1)->value;
    pthread_mutex_destroy(&m.lock);
    return s;
}
