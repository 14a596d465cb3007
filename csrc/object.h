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
} lja_object;

/* Registers a new object with one reference; LJA_OK or LJA_ENOMEM. */
int lja_object_init(lja_object *o, int kind, void (*destroy)(void *obj));

#endif
