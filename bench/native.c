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
