/* object.h: the header every lj-async object starts with (not in the ABI). */
#ifndef LJA_OBJECT_H
#define LJA_OBJECT_H

#include <stdatomic.h>

#include "internal.h"

typedef struct lja_object {
    uint64_t id;
    int kind;
    atomic_int refs;
    void (*destroy)(void *obj);   /* frees the object; runs once, no lock held */
    struct lja_object *next;      /* registry bucket chain (under its lock) */
    char *name;                   /* set by lja_object_set_name, or NULL */
    int name_dropped;             /* name free for others; kept for readers until destroy */
} lja_object;

/* Registers a new object with one reference; LJA_OK or LJA_ENOMEM. */
int lja_object_init(lja_object *o, int kind, void (*destroy)(void *obj));

/* Frees o's name for others at once (a closed state's): lookups no longer
 * find o by it and lja_object_name returns NULL. */
void lja_object_drop_name(lja_object *o);

#endif
