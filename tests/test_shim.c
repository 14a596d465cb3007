/* test_shim.c: the shim's C API without Lua: threads, gates, atomics, the
 * rule that sends take their objects' references. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../csrc/ljasync.h"

static int failures;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                          \
        }                                                                        \
    } while (0)

/* ---- threads ---- */

static int64_t cleaned;

static void slow_run(void *arg)
{
    lja_thread *self = lja_thread_self();
    size_t len;
    const char *in = lja_thread_input(self, &len);
    CHECK(len == 5 && memcmp(in, "hello", 5) == 0);
    lja_sleep(*(double *)arg);
    lja_thread_set_result(self, "done", 4);
}

static void cleanup(void *arg)
{
    lja_atomic_add(&cleaned, 1);
}

static void test_thread_join(void)
{
    double delay = 0.2;
    lja_thread *t;
    CHECK(lja_thread_start(&t, slow_run, &delay, cleanup, NULL, "hello", 5, NULL) == LJA_OK);
    double t0 = lja_now();
    CHECK(lja_thread_join(t, 0) == LJA_ETIMEDOUT);
    CHECK(lja_thread_join(t, 0.05) == LJA_ETIMEDOUT);
    double waited = lja_now() - t0;
    CHECK(waited >= 0.045 && waited < 0.19);
    size_t len;
    CHECK(lja_thread_result(t, &len) == NULL);
    CHECK(lja_thread_join(t, -1) == LJA_OK);
    const char *r = lja_thread_result(t, &len);
    CHECK(r && len == 4 && memcmp(r, "done", 4) == 0);
    CHECK(lja_thread_join(t, 0) == LJA_OK);
    lja_thread_release(t);
    CHECK(lja_thread_self() == NULL);
}

static void test_thread_detached(void)
{
    /* Released while running: the thread finishes and frees itself. */
    double delay = 0.05;
    int64_t before = lja_atomic_load(&cleaned);
    for (int i = 0; i < 20; i++) {
        lja_thread *t;
        CHECK(lja_thread_start(&t, slow_run, &delay, cleanup, NULL, "hello", 5, NULL) == LJA_OK);
        lja_thread_release(t);
    }
    for (int i = 0; i < 200 && lja_atomic_load(&cleaned) < before + 20; i++)
        lja_sleep(0.01);
    CHECK(lja_atomic_load(&cleaned) == before + 20);
    CHECK(lja_thread_start(NULL, slow_run, &delay, NULL, NULL, "", 0, NULL) == LJA_EINVAL);
}

/* ---- gates ---- */

#define CALLERS 4
#define CALLS 20000

static long plain_counter;     /* unprotected on purpose: the gate serializes */
static int64_t inside, max_inside;

static int add_target(int x)
{
    int64_t now = lja_atomic_add(&inside, 1);
    int64_t seen = lja_atomic_load(&max_inside);
    while (now > seen && !lja_atomic_cas(&max_inside, seen, now))
        seen = lja_atomic_load(&max_inside);
    plain_counter += x;
    lja_atomic_add(&inside, -1);
    return x + 1;
}

static int64_t overlap_inside, overlap_seen;

static int overlap_target(int x)
{
    /* Waits (bounded) until another caller is inside too. */
    lja_atomic_add(&overlap_inside, 1);
    for (int i = 0; i < 2000 && lja_atomic_load(&overlap_inside) < 2; i++)
        lja_sleep(0.001);
    if (lja_atomic_load(&overlap_inside) >= 2)
        lja_atomic_store(&overlap_seen, 1);
    lja_sleep(0.01);
    lja_atomic_add(&overlap_inside, -1);
    return x;
}

struct caller {
    int (*fn)(int);
    int calls;
    long sum;
};

static void *call_many(void *p)
{
    struct caller *c = p;
    for (int i = 0; i < c->calls; i++)
        c->sum += c->fn(1);
    return NULL;
}

static void run_callers(int (*fn)(int), int n, int calls, long *total)
{
    pthread_t tids[CALLERS];
    struct caller cs[CALLERS];
    *total = 0;
    for (int i = 0; i < n; i++) {
        cs[i] = (struct caller){fn, calls, 0};
        pthread_create(&tids[i], NULL, call_many, &cs[i]);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
        *total += cs[i].sum;
    }
}

static void test_gate_serializes(void)
{
    lja_gate *g;
    CHECK(lja_gate_new(&g, "ii", 1) == LJA_OK);
    lja_gate_set_target(g, 0, (void *)add_target);
    int (*fn)(int) = (int (*)(int))lja_gate_funcptr(g);
    long total;
    run_callers(fn, CALLERS, CALLS, &total);
    CHECK(plain_counter == (long)CALLERS * CALLS);
    CHECK(total == 2L * CALLERS * CALLS);
    CHECK(lja_atomic_load(&max_inside) == 1);
    CHECK(lja_gate_quiesce(g, 1.0) == LJA_OK);
    lja_gate_free(g);
}

static void test_gate_states(void)
{
    lja_gate *g;
    CHECK(lja_gate_new(&g, "ii", 2) == LJA_OK);
    lja_gate_set_target(g, 0, (void *)overlap_target);
    lja_gate_set_target(g, 1, (void *)overlap_target);
    long total;
    run_callers((int (*)(int))lja_gate_funcptr(g), 2, 3, &total);
    CHECK(total == 6);
    CHECK(lja_atomic_load(&overlap_seen) == 1);
    lja_gate_free(g);
}

static double twice(float f, double d, int64_t q, void *p, uint8_t b)
{
    return (double)f + d + (double)q + (p ? 1000.0 : 0.0) + b;
}

static void test_gate_signatures(void)
{
    lja_gate *g;
    CHECK(lja_gate_new(&g, "dfdqpB", 1) == LJA_OK);
    lja_gate_set_target(g, 0, (void *)twice);
    double (*fn)(float, double, int64_t, void *, uint8_t) =
        (double (*)(float, double, int64_t, void *, uint8_t))lja_gate_funcptr(g);
    CHECK(fn(1.5f, 2.25, 40, &g, 7) == 1050.75);
    lja_gate_set_error(g, "oops", 4);
    char buf[8] = {0};
    CHECK(lja_gate_error(g, buf, sizeof buf) == 4 && strcmp(buf, "oops") == 0);
    lja_gate_free(g);
    CHECK(lja_gate_new(&g, "iv", 1) == LJA_EINVAL);   /* void is no argument */
    CHECK(lja_gate_new(&g, "x", 1) == LJA_EINVAL);
    CHECK(lja_gate_new(&g, "i", 0) == LJA_EINVAL);
}

static void test_gate_quiesce_waits(void)
{
    lja_gate *g;
    CHECK(lja_gate_new(&g, "ii", 1) == LJA_OK);
    lja_gate_set_target(g, 0, (void *)overlap_target);
    pthread_t tid;
    struct caller c = {(int (*)(int))lja_gate_funcptr(g), 1, 0};
    lja_atomic_store(&overlap_inside, 0);
    pthread_create(&tid, NULL, call_many, &c);
    while (lja_atomic_load(&overlap_inside) == 0)
        lja_sleep(0.001);
    /* The call inside waits ~2 s for a partner that never comes. */
    CHECK(lja_gate_quiesce(g, 0.05) == LJA_ETIMEDOUT);
    CHECK(lja_gate_quiesce(g, 10) == LJA_OK);
    pthread_join(tid, NULL);
    lja_gate_free(g);
}

/* ---- atomics ---- */

static int64_t shared_counter;

static void *bump(void *p)
{
    for (int i = 0; i < 100000; i++)
        lja_atomic_add(&shared_counter, 1);
    return p;
}

static void test_atomics(void)
{
    pthread_t a, b;
    pthread_create(&a, NULL, bump, NULL);
    pthread_create(&b, NULL, bump, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    CHECK(lja_atomic_load(&shared_counter) == 200000);
    CHECK(lja_atomic_cas(&shared_counter, 200000, -5) == 1);
    CHECK(lja_atomic_cas(&shared_counter, 200000, 0) == 0);
    CHECK(lja_atomic_load(&shared_counter) == -5);
    int64_t big = INT64_MAX;
    CHECK(lja_atomic_add(&big, 1) == INT64_MIN);  /* wraps, no UB */
    CHECK(lja_cpu_count() >= 1);
    CHECK(lja_thread_id() == lja_thread_id() && lja_thread_id() >= 1);
    CHECK(strcmp(lja_strerror(LJA_ETIMEDOUT), "timeout") == 0);
}

/* ---- sends take the references in objs, sent or not (ljasync.h) ---- */

static int alive(uint64_t id)
{
    void *o = lja_object_get(id, 0);
    if (o)
        lja_object_release(o);
    return o != NULL;
}

static void test_sends_take_references(void)
{
    lja_sched *s = lja_sched_new(4, 0, 0);
    double addr;
    int state;   /* stands for a lua_State: handed back by close, never run */
    CHECK(lja_sched_add(s, &state, 0, 1, &addr) == LJA_OK);
    void *obj = lja_atomic_new(0);
    uint64_t id = lja_object_id(obj);
    lja_object_retain(obj);
    CHECK(lja_sched_send(s, 0, addr, LJA_SMSG_POST, 0, "a", 1, &obj, 1) == LJA_SCHED_WOKE);  /* it was idle */
    lja_object_retain(obj);
    CHECK(lja_sched_send(s, 0, addr, LJA_SMSG_POST, 0, "b", 1, &obj, 1) == LJA_EAGAIN);  /* capacity 1 */
    lja_object_retain(obj);
    CHECK(lja_sched_send(s, 0, addr + 1, LJA_SMSG_POST, 0, "c", 1, &obj, 1) == LJA_ECLOSED);
    lja_channel *ch = lja_channel_new(0);
    lja_channel_close(ch);
    lja_object_retain(obj);
    CHECK(lja_channel_send(ch, "d", 1, &obj, 1, 0) == LJA_ECLOSED);
    lja_object_release(ch);
    void *L;
    lja_smsg *m = lja_sched_close(s, addr, &L);   /* hands back "a" */
    CHECK(m && !m->next && m->len == 1 && m->nobjs == 1 && L == &state);
    lja_sched_msg_free(m);
    CHECK(alive(id));
    lja_object_release(obj);   /* ours, the last */
    CHECK(!alive(id));
    CHECK(lja_sched_remove(s, addr) == 0);
    lja_sched_free(s);
}

int main(void)
{
    test_thread_join();
    test_thread_detached();
    test_gate_serializes();
    test_gate_states();
    test_gate_signatures();
    test_gate_quiesce_waits();
    test_atomics();
    test_sends_take_references();
    printf("%s: %d failed check(s)\n", failures ? "FAIL" : "ok", failures);
    return failures ? 1 : 0;
}
