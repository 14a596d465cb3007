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

/* ---- Message passing: the fastest plain-C programs doing a row's job ----
 * A bounded ring under one mutex with two condvars (the classic blocking
 * queue, any number of producers and consumers), a lock-free single-producer
 * single-consumer ring, and ping-pongs: one that spins and then parks on a
 * futex, and one that blocks on the mutex+condvar rings every trip. */
#include <linux/futex.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#define RING 4096 /* slots, as the bench's bounded channels */
#define SPIN 2000 /* polls before parking (~ tens of microseconds) */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* A parked waiter: `sleeping` is its futex word.  The waiter sets it, then
 * checks its condition again; the waker publishes, then reads it: with a
 * full fence on both sides one of them sees the other.  The SPSC ring skips
 * the waker's fence (it would cost more than the rest of a message), so a
 * wake may be missed: a park lasts at most a millisecond. */
static const struct timespec park_limit = {0, 1000000};
struct parker {
    _Alignas(64) atomic_int sleeping;
};

#define WAIT_UNTIL(cond, pk)                                                              \
    do {                                                                                  \
        for (int spin_ = 0; !(cond); spin_++) {                                           \
            if (spin_ < SPIN) {                                                           \
                cpu_relax();                                                              \
                continue;                                                                 \
            }                                                                             \
            atomic_store(&(pk)->sleeping, 1);                                             \
            atomic_thread_fence(memory_order_seq_cst);                                    \
            if (cond) {                                                                   \
                atomic_store(&(pk)->sleeping, 0);                                         \
                break;                                                                    \
            }                                                                             \
            syscall(SYS_futex, &(pk)->sleeping, FUTEX_WAIT_PRIVATE, 1, &park_limit, NULL, 0); \
        }                                                                                 \
    } while (0)

static inline void wake_unfenced(struct parker *pk)
{
    if (atomic_load_explicit(&pk->sleeping, memory_order_relaxed) && atomic_exchange(&pk->sleeping, 0))
        syscall(SYS_futex, &pk->sleeping, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static inline void wake(struct parker *pk)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&pk->sleeping, memory_order_relaxed) && atomic_exchange(&pk->sleeping, 0))
        syscall(SYS_futex, &pk->sleeping, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/* The classic blocking queue: a bounded ring under one mutex, consumers wait
 * on not_empty, producers on not_full; a side signals only when the other
 * has a waiter. */
struct ring {
    pthread_mutex_t lock;
    pthread_cond_t not_empty, not_full;
    long head, tail;
    int empty_waiters, full_waiters;
    long buf[RING];
};

static void ring_init(struct ring *q)
{
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    q->head = q->tail = 0;
    q->empty_waiters = q->full_waiters = 0;
}

static void ring_destroy(struct ring *q)
{
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
    pthread_mutex_destroy(&q->lock);
}

static void ring_push(struct ring *q, long v)
{
    pthread_mutex_lock(&q->lock);
    while (q->tail - q->head == RING) {
        q->full_waiters++;
        pthread_cond_wait(&q->not_full, &q->lock);
        q->full_waiters--;
    }
    q->buf[q->tail++ % RING] = v;
    if (q->empty_waiters)
        pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->lock);
}

static long ring_pop(struct ring *q)
{
    pthread_mutex_lock(&q->lock);
    while (q->tail == q->head) {
        q->empty_waiters++;
        pthread_cond_wait(&q->not_empty, &q->lock);
        q->empty_waiters--;
    }
    long v = q->buf[q->head++ % RING];
    if (q->full_waiters)
        pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->lock);
    return v;
}

struct ring_end {
    struct ring *q;
    long first, n, sum;
};

static void *ring_producer(void *p)
{
    struct ring_end *e = p;
    for (long i = 0; i < e->n; i++)
        ring_push(e->q, e->first + i);
    return NULL;
}

static void *ring_consumer(void *p)
{
    struct ring_end *e = p;
    long sum = 0;
    for (long i = 0; i < e->n; i++)
        sum += ring_pop(e->q);
    e->sum = sum;
    return NULL;
}

/* Seconds for `producers` threads to pass n messages in all (n / producers
 * each) to `consumers` threads through one mutex+condvar ring; with one of
 * each, this thread is the consumer.  -1 if a message was lost. */
EXPORT double ljabench_ring(long n, int producers, int consumers)
{
    struct ring q;
    struct ring_end ends[32];
    pthread_t tids[32];
    if (producers < 1 || consumers < 1 || producers + consumers > 32 || n % producers || n % consumers)
        return -1;
    ring_init(&q);
    int self = producers == 1 && consumers == 1;
    double t0 = now();
    for (int i = 0; i < producers; i++) {
        ends[i] = (struct ring_end){&q, i * (n / producers), n / producers, 0};
        pthread_create(&tids[i], NULL, ring_producer, &ends[i]);
    }
    for (int i = producers; i < producers + consumers; i++) {
        ends[i] = (struct ring_end){&q, 0, n / consumers, 0};
        if (self)
            ring_consumer(&ends[i]);
        else
            pthread_create(&tids[i], NULL, ring_consumer, &ends[i]);
    }
    long sum = 0;
    for (int i = 0; i < producers + consumers; i++) {
        if (!(self && i == producers))
            pthread_join(tids[i], NULL);
        sum += ends[i].sum;
    }
    double s = now() - t0;
    ring_destroy(&q);
    return sum == n * (n - 1) / 2 ? s : -1;
}

/* A lock-free single-producer single-consumer ring: each end owns its index
 * (on its own cache line) and keeps a copy of the other's, read again only
 * when the ring looks full or empty; a waiting end spins, then parks. */
struct spsc {
    _Alignas(64) atomic_long head; /* the consumer's */
    _Alignas(64) atomic_long tail; /* the producer's */
    struct parker consumer, producer;
    _Alignas(64) long buf[RING];
};

struct spsc_end {
    struct spsc *q;
    long n, sum;
};

static void *spsc_producer(void *p)
{
    struct spsc_end *e = p;
    struct spsc *q = e->q;
    long tail = 0, head = 0;
    for (long i = 0; i < e->n; i++) {
        if (tail - head == RING) {
            WAIT_UNTIL(tail - (head = atomic_load_explicit(&q->head, memory_order_acquire)) < RING,
                       &q->producer);
        }
        q->buf[tail % RING] = i;
        atomic_store_explicit(&q->tail, ++tail, memory_order_release);
        wake_unfenced(&q->consumer);
    }
    return NULL;
}

static void spsc_consume(struct spsc_end *e)
{
    struct spsc *q = e->q;
    long head = 0, tail = 0, sum = 0;
    for (long i = 0; i < e->n; i++) {
        if (head == tail)
            WAIT_UNTIL((tail = atomic_load_explicit(&q->tail, memory_order_acquire)) != head, &q->consumer);
        sum += q->buf[head % RING];
        atomic_store_explicit(&q->head, ++head, memory_order_release);
        wake_unfenced(&q->producer);
    }
    e->sum = sum;
}

/* Seconds for one thread to pass n messages to this one through the SPSC
 * ring; -1 if a message was lost. */
EXPORT double ljabench_spsc(long n)
{
    struct spsc *q = aligned_alloc(64, sizeof *q);
    memset(q, 0, sizeof *q);
    struct spsc_end e = {q, n, 0};
    pthread_t t;
    double t0 = now();
    pthread_create(&t, NULL, spsc_producer, &e);
    spsc_consume(&e);
    double s = now() - t0;
    pthread_join(t, NULL);
    free(q);
    return e.sum == n * (n - 1) / 2 ? s : -1;
}

/* Ping-pong that spins, then parks: each direction is one word and its
 * parker. */
struct mailbox {
    _Alignas(64) atomic_long value;
    struct parker pk;
};

struct spin_pp {
    struct mailbox ping, pong;
    long n;
};

static void *spin_ponger(void *p)
{
    struct spin_pp *pp = p;
    for (long i = 1; i <= pp->n; i++) {
        WAIT_UNTIL(atomic_load_explicit(&pp->ping.value, memory_order_acquire) == i, &pp->ping.pk);
        atomic_store_explicit(&pp->pong.value, i, memory_order_release);
        wake(&pp->pong.pk);
    }
    return NULL;
}

/* Seconds for n round trips between two threads, spinning then parking. */
EXPORT double ljabench_spin_pingpong(long n)
{
    struct spin_pp *pp = aligned_alloc(64, sizeof *pp);
    memset(pp, 0, sizeof *pp);
    pp->n = n;
    pthread_t t;
    double t0 = now();
    pthread_create(&t, NULL, spin_ponger, pp);
    for (long i = 1; i <= n; i++) {
        atomic_store_explicit(&pp->ping.value, i, memory_order_release);
        wake(&pp->ping.pk);
        WAIT_UNTIL(atomic_load_explicit(&pp->pong.value, memory_order_acquire) == i, &pp->pong.pk);
    }
    double s = now() - t0;
    pthread_join(t, NULL);
    long last = atomic_load(&pp->pong.value);
    free(pp);
    return last == n ? s : -1;
}

struct block_pp {
    struct ring ping, pong;
    long n;
};

static void *block_ponger(void *p)
{
    struct block_pp *pp = p;
    for (long i = 0; i < pp->n; i++)
        ring_push(&pp->pong, ring_pop(&pp->ping) + 1);
    return NULL;
}

/* Seconds for n round trips between two threads over two mutex+condvar
 * rings: each side sleeps in the kernel every trip. */
EXPORT double ljabench_pingpong(long n)
{
    struct block_pp *pp = malloc(sizeof *pp);
    ring_init(&pp->ping);
    ring_init(&pp->pong);
    pp->n = n;
    pthread_t t;
    double t0 = now();
    pthread_create(&t, NULL, block_ponger, pp);
    long v = 0;
    for (long i = 0; i < n; i++) {
        ring_push(&pp->ping, v);
        v = ring_pop(&pp->pong);
    }
    double s = now() - t0;
    pthread_join(t, NULL);
    ring_destroy(&pp->ping);
    ring_destroy(&pp->pong);
    free(pp);
    return v == n ? s : -1;
}

/* A C worker pool: submitters push a job (a pointer to their reply slot)
 * into one mutex+condvar ring, `workers` threads pop it (spinning on the
 * ring's indices before they sleep on it), run it (add one) and answer in
 * the slot, where the submitter spins, then parks. */
struct pool_job {
    struct mailbox reply;
    long n;
    struct ring *q;
};

static void *pool_worker(void *p)
{
    struct ring *q = p;
    for (;;) {
        for (int i = 0; i < SPIN && __atomic_load_n(&q->tail, __ATOMIC_RELAXED) == __atomic_load_n(&q->head, __ATOMIC_RELAXED); i++)
            cpu_relax();
        struct pool_job *j = (struct pool_job *)ring_pop(q);
        if (!j)
            return NULL;
        atomic_store_explicit(&j->reply.value, atomic_load_explicit(&j->reply.value, memory_order_relaxed) + 1,
                              memory_order_release);
        wake(&j->reply.pk);
    }
}

static void *pool_submitter(void *p)
{
    struct pool_job *j = p;
    for (long i = 1; i <= j->n; i++) {
        ring_push(j->q, (long)j);
        WAIT_UNTIL(atomic_load_explicit(&j->reply.value, memory_order_acquire) == i, &j->reply.pk);
    }
    return NULL;
}

/* Seconds for `submitters` threads (this one among them) to run n jobs in
 * all, each waiting for its job's answer, on a pool of `workers` threads. */
EXPORT double ljabench_pool(long n, int submitters, int workers)
{
    struct ring *q = malloc(sizeof *q);
    struct pool_job *jobs = aligned_alloc(64, 16 * sizeof *jobs);
    pthread_t wt[16], st[16];
    if (submitters < 1 || submitters > 16 || workers < 1 || workers > 16 || n % submitters) {
        free(q);
        free(jobs);
        return -1;
    }
    ring_init(q);
    memset(jobs, 0, 16 * sizeof *jobs);
    for (int i = 0; i < workers; i++)
        pthread_create(&wt[i], NULL, pool_worker, q);
    double t0 = now();
    for (int i = 0; i < submitters; i++) {
        jobs[i].n = n / submitters;
        jobs[i].q = q;
        if (i > 0)
            pthread_create(&st[i], NULL, pool_submitter, &jobs[i]);
    }
    pool_submitter(&jobs[0]);
    for (int i = 1; i < submitters; i++)
        pthread_join(st[i], NULL);
    double s = now() - t0;
    long done = 0;
    for (int i = 0; i < submitters; i++)
        done += atomic_load(&jobs[i].reply.value);
    for (int i = 0; i < workers; i++)
        ring_push(q, 0);
    for (int i = 0; i < workers; i++)
        pthread_join(wt[i], NULL);
    ring_destroy(q);
    free(q);
    free(jobs);
    return done == n ? s : -1;
}

/* ---- TCP on loopback: a C epoll server and a C load client (asio rows) ----
 * Modes: 0 echo (the client sends 64 bytes and waits for them back), 1 HTTP
 * keep-alive (the client sends a GET and waits for one response; the server
 * answers each "\r\n\r\n" with a fixed 87-byte 200). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define HTTP_RESPONSE "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 22\r\n\r\nHello, World! lj-async"
#define HTTP_REQUEST "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
#define ECHO_SIZE 64
#define MAX_CONNS 4096

static double cpu_of(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

/* CPU seconds of the calling thread, and of the whole process. */
EXPORT double ljabench_thread_cpu(void)
{
    return cpu_of(RUSAGE_THREAD);
}

EXPORT double ljabench_process_cpu(void)
{
    return cpu_of(RUSAGE_SELF);
}

EXPORT int ljabench_http_response_size(void)
{
    return (int)sizeof HTTP_RESPONSE - 1;
}

/* Counts "\r\n\r\n" across reads; *state is how much of it the last read ended with. */
static long count_ends(const char *p, long n, int *state)
{
    static const char pat[] = "\r\n\r\n";
    long count = 0;
    int s = *state;
    for (long i = 0; i < n; i++) {
        if (p[i] == pat[s]) {
            if (++s == 4) {
                count++;
                s = 0;
            }
        } else {
            s = p[i] == '\r' ? 1 : 0;
        }
    }
    *state = s;
    return count;
}

struct bench_server {
    pthread_t thread;
    int mode, lfd, ep, stopfd;
    long requests;
    double cpu;
};

static void *server_main(void *p)
{
    struct bench_server *s = p;
    double cpu0 = cpu_of(RUSAGE_THREAD);
    static __thread int state[MAX_CONNS];
    struct epoll_event evs[256];
    char buf[16384];
    int running = 1;
    while (running) {
        int n = epoll_wait(s->ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == s->stopfd) {
                running = 0;
            } else if (fd == s->lfd) {
                int c;
                while ((c = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = c};
                    if (c >= MAX_CONNS) {
                        close(c);
                        continue;
                    }
                    state[c] = 0;
                    epoll_ctl(s->ep, EPOLL_CTL_ADD, c, &ev);
                }
            } else {
                for (;;) {
                    ssize_t r = recv(fd, buf, sizeof buf, 0);
                    if (r > 0) {
                        if (s->mode == 0) {
                            send(fd, buf, (size_t)r, MSG_NOSIGNAL);  /* 64-byte pieces: fits */
                            s->requests += r / ECHO_SIZE;
                        } else {
                            long k = count_ends(buf, r, &state[fd]);
                            for (long j = 0; j < k; j++)
                                send(fd, HTTP_RESPONSE, sizeof HTTP_RESPONSE - 1, MSG_NOSIGNAL);
                            s->requests += k;
                        }
                        if ((size_t)r < sizeof buf && !(evs[i].events & (EPOLLRDHUP | EPOLLHUP)))
                            break;   /* drained: the next data is an edge */
                    } else {
                        if (r == 0 || errno != EAGAIN)
                            close(fd);
                        break;
                    }
                }
            }
        }
    }
    s->cpu = cpu_of(RUSAGE_THREAD) - cpu0;
    return NULL;
}

static int listener(int port, int *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1024) != 0) {
        close(fd);
        return -1;
    }
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    *bound = ntohs(a.sin_port);
    return fd;
}

/* Starts the C server on 127.0.0.1 (a free port, in *port). */
EXPORT void *ljabench_server_start(int mode, int *port)
{
    struct bench_server *s = calloc(1, sizeof *s);
    s->mode = mode;
    s->lfd = listener(0, port);
    s->ep = epoll_create1(0);
    s->stopfd = eventfd(0, 0);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = s->lfd};
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->lfd, &ev);
    ev.data.fd = s->stopfd;
    epoll_ctl(s->ep, EPOLL_CTL_ADD, s->stopfd, &ev);
    pthread_create(&s->thread, NULL, server_main, s);
    return s;
}

/* Stops the server: its thread's CPU seconds, and the requests served. */
EXPORT double ljabench_server_stop(void *p, long *requests)
{
    struct bench_server *s = p;
    eventfd_write(s->stopfd, 1);
    pthread_join(s->thread, NULL);
    double cpu = s->cpu;
    *requests = s->requests;
    close(s->lfd);
    close(s->ep);
    close(s->stopfd);
    free(s);
    return cpu;
}

struct bench_load {
    pthread_t thread;
    int port, mode, conns;
    double seconds;
    long done;
    double cpu, elapsed;
};

static void *load_main(void *p)
{
    struct bench_load *l = p;
    double cpu0 = cpu_of(RUSAGE_THREAD);
    int ep = epoll_create1(0);
    int *fds = calloc((size_t)l->conns, sizeof *fds);
    long *got = calloc((size_t)l->conns, sizeof *got);
    int *state = calloc((size_t)l->conns, sizeof *state);
    char echo[ECHO_SIZE];
    memset(echo, 'x', sizeof echo);
    const char *req = l->mode == 0 ? echo : HTTP_REQUEST;
    size_t req_len = l->mode == 0 ? ECHO_SIZE : sizeof HTTP_REQUEST - 1;
    for (int i = 0; i < l->conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)l->port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            l->done = -1;
            return NULL;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        fds[i] = fd;
    }
    double t0 = now(), end = t0 + l->seconds;
    for (int i = 0; i < l->conns; i++)
        send(fds[i], req, req_len, MSG_NOSIGNAL);
    struct epoll_event evs[256];
    char buf[16384];
    long done = 0;
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            ssize_t r = recv(fds[i], buf, sizeof buf, MSG_DONTWAIT);
            if (r <= 0)
                continue;
            long complete;
            if (l->mode == 0) {
                got[i] += r;
                complete = got[i] / ECHO_SIZE;
                got[i] %= ECHO_SIZE;
            } else {
                complete = count_ends(buf, r, &state[i]);
            }
            for (long j = 0; j < complete; j++) {
                done++;
                send(fds[i], req, req_len, MSG_NOSIGNAL);
            }
        }
    }
    l->elapsed = now() - t0;
    for (int i = 0; i < l->conns; i++)
        close(fds[i]);
    close(ep);
    free(fds);
    free(got);
    free(state);
    l->done = done;
    l->cpu = cpu_of(RUSAGE_THREAD) - cpu0;
    return NULL;
}

/* Starts the load client on its own thread: `conns` connections to
 * 127.0.0.1:port, each with one request outstanding, for `seconds`. */
EXPORT void *ljabench_load_start(int port, int mode, int conns, double seconds)
{
    struct bench_load *l = calloc(1, sizeof *l);
    *l = (struct bench_load){.port = port, .mode = mode, .conns = conns, .seconds = seconds};
    pthread_create(&l->thread, NULL, load_main, l);
    return l;
}

/* Waits for the client: the round trips completed (-1: it could not
 * connect), its thread's CPU seconds and the seconds it ran. */
EXPORT long ljabench_load_wait(void *p, double *cpu, double *elapsed)
{
    struct bench_load *l = p;
    pthread_join(l->thread, NULL);
    long done = l->done;
    *cpu = l->cpu;
    *elapsed = l->elapsed;
    free(l);
    return done;
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
