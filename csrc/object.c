/* object.c: ids, names and reference counts of lj-async objects.
 *
 * Documented global state: the registry, a hash table from id to object
 * behind one mutex.  Lookups by id happen when a handle crosses states,
 * not on every operation, so one lock is enough. */
#include <stdlib.h>
#include <string.h>

#include "object.h"

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static lja_object **buckets;      /* guarded by registry_lock */
static size_t nbuckets, count;
static uint64_t next_id = 1;

static size_t bucket_of(uint64_t id, size_t n)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (n - 1);
}

static int grow(void)
{
    size_t n = nbuckets ? nbuckets * 2 : 256;
    lja_object **b = calloc(n, sizeof *b);
    if (!b)
        return LJA_ENOMEM;
    for (size_t i = 0; i < nbuckets; i++) {
        for (lja_object *o = buckets[i], *next; o; o = next) {
            next = o->next;
            size_t k = bucket_of(o->id, n);
            o->next = b[k];
            b[k] = o;
        }
    }
    free(buckets);
    buckets = b;
    nbuckets = n;
    return LJA_OK;
}

int lja_object_init(lja_object *o, int kind, void (*destroy)(void *obj))
{
    o->kind = kind;
    o->destroy = destroy;
    o->name = NULL;
    o->name_dropped = 0;
    atomic_init(&o->refs, 1);
    int rc = LJA_OK;
    pthread_mutex_lock(&registry_lock);
    if (count + 1 > nbuckets)
        rc = grow();
    if (rc == LJA_OK) {
        o->id = next_id++;
        size_t k = bucket_of(o->id, nbuckets);
        o->next = buckets[k];
        buckets[k] = o;
        count++;
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

uint64_t lja_object_id(void *obj)
{
    return ((lja_object *)obj)->id;
}

int lja_object_kind(void *obj)
{
    return ((lja_object *)obj)->kind;
}

void lja_object_retain(void *obj)
{
    atomic_fetch_add(&((lja_object *)obj)->refs, 1);
}

/* A new reference unless the count already reached zero (being destroyed).
 * Called with registry_lock held. */
static void *acquire(lja_object *o, int kind)
{
    if (!o || (kind && o->kind != kind))
        return NULL;
    int r = atomic_load(&o->refs);
    while (r > 0 && !atomic_compare_exchange_weak(&o->refs, &r, r + 1)) {
    }
    return r > 0 ? o : NULL;
}

void *lja_object_get(uint64_t id, int kind)
{
    void *found = NULL;
    pthread_mutex_lock(&registry_lock);
    if (nbuckets) {
        lja_object *o = buckets[bucket_of(id, nbuckets)];
        while (o && o->id != id)
            o = o->next;
        found = acquire(o, kind);
    }
    pthread_mutex_unlock(&registry_lock);
    return found;
}

void lja_object_release(void *obj)
{
    lja_object *o = obj;
    if (!o || atomic_fetch_sub(&o->refs, 1) != 1)
        return;
    pthread_mutex_lock(&registry_lock);
    lja_object **p = &buckets[bucket_of(o->id, nbuckets)];
    while (*p != o)
        p = &(*p)->next;
    *p = o->next;
    count--;
    pthread_mutex_unlock(&registry_lock);
    free(o->name);
    o->destroy(o);
}

/* The live object named `name`, or NULL (names are unique among live
 * objects).  Called with registry_lock held. */
static lja_object *named(const char *name)
{
    for (size_t i = 0; i < nbuckets; i++)
        for (lja_object *x = buckets[i]; x; x = x->next)
            if (x->name && !x->name_dropped && strcmp(x->name, name) == 0 &&
                atomic_load(&x->refs) > 0)
                return x;
    return NULL;
}

int lja_object_set_name(void *obj, const char *name)
{
    lja_object *o = obj;
    char *copy = name ? strdup(name) : NULL;
    if (!name || !copy)
        return name ? LJA_ENOMEM : LJA_EINVAL;
    pthread_mutex_lock(&registry_lock);
    int rc = named(name) ? LJA_EBUSY : LJA_OK;
    if (rc == LJA_OK) {
        free(o->name);
        o->name = copy;
        o->name_dropped = 0;
        copy = NULL;
    }
    pthread_mutex_unlock(&registry_lock);
    free(copy);
    return rc;
}

const char *lja_object_name(void *obj)
{
    lja_object *o = obj;
    pthread_mutex_lock(&registry_lock);
    const char *name = o->name_dropped ? NULL : o->name;
    pthread_mutex_unlock(&registry_lock);
    return name;
}

void lja_object_drop_name(lja_object *o)
{
    pthread_mutex_lock(&registry_lock);
    o->name_dropped = 1;
    pthread_mutex_unlock(&registry_lock);
}

void *lja_object_find(const char *name, int kind)
{
    pthread_mutex_lock(&registry_lock);
    void *found = acquire(named(name), kind);
    pthread_mutex_unlock(&registry_lock);
    return found;
}
