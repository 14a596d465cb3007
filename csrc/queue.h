/* queue.h: an intrusive FIFO of nodes that link through their first field
 * (a pointer to the next node), as libuv's queue.h keeps lists inside
 * their nodes: no allocation per node.  Not thread-safe: callers lock. */
#ifndef LJA_QUEUE_H
#define LJA_QUEUE_H

#include <stddef.h>

typedef struct lja_fifo {
    void *head, *tail;
} lja_fifo;

#define LJA_FIFO_NEXT(node) (*(void **)(node))

static inline void lja_fifo_push(lja_fifo *q, void *node)
{
    LJA_FIFO_NEXT(node) = NULL;
    if (q->tail)
        LJA_FIFO_NEXT(q->tail) = node;
    else
        q->head = node;
    q->tail = node;
}

static inline void lja_fifo_push_front(lja_fifo *q, void *node)
{
    LJA_FIFO_NEXT(node) = q->head;
    q->head = node;
    if (!q->tail)
        q->tail = node;
}

/* Moves every node of `from` to the end of q. */
static inline void lja_fifo_concat(lja_fifo *q, lja_fifo *from)
{
    if (!from->head)
        return;
    if (q->tail)
        LJA_FIFO_NEXT(q->tail) = from->head;
    else
        q->head = from->head;
    q->tail = from->tail;
    from->head = from->tail = NULL;
}

static inline void *lja_fifo_shift(lja_fifo *q)
{
    void *node = q->head;
    if (node) {
        q->head = LJA_FIFO_NEXT(node);
        if (!q->head)
            q->tail = NULL;
    }
    return node;
}

#endif
