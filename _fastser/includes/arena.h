/* The shared-memory arena: a buddy allocator whose every byte of state lives in the segment, so any process that
 * maps it can allocate and free. A robust process-shared mutex guards the free lists (a process killed while
 * holding it does not deadlock the others); object reference counts are C atomics outside the lock.
 *
 * Segment layout:   [arena_header | block table: one byte per 64-byte unit | arena: capacity bytes]
 * Block table byte:  0 = not the start of a block; (order + 1) = allocated block start; (order + 1) | 0x80 = free.
 * Free block:        its first 16 bytes are the free-list links (offset + 1 of next and previous; 0 = none).
 * Allocated block:   an object_header (64 bytes), then the encoded message, then the refs the message holds.
 */
#ifndef ACTORS_ARENA_H
#define ACTORS_ARENA_H

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define ARENA_MAGIC 0x314152454e415241ULL   /* "ARENA" v1 */
#define OBJECT_MAGIC 0x4a424f53u             /* "SOBJ" */
#define MIN_SHIFT 6                          /* 64-byte blocks */
#define MAX_ORDERS 48
#define FREE_BIT 0x80

typedef struct {
    uint64_t magic;
    uint64_t capacity;        /* arena bytes, a power of two */
    uint64_t arena_off;       /* from the segment start */
    uint64_t table_off;
    uint64_t segment_size;
    int32_t max_order;        /* log2(capacity) - MIN_SHIFT */
    int32_t owner_pid;
    uint64_t generation;      /* last generation handed out */
    uint64_t used;            /* bytes in allocated blocks */
    uint64_t high_water;      /* highest arena byte ever handed out */
    uint64_t objects;         /* allocated blocks */
    uint64_t committed;       /* arena bytes whose /dev/shm space is reserved */
    pthread_mutex_t lock;
    uint64_t free_head[MAX_ORDERS];
} arena_header;

typedef struct {
    uint64_t generation;
    int64_t refcount;
    uint64_t size;            /* bytes of the encoded message */
    uint64_t nrefs;           /* refs held by the message, stored after it as (offset, generation) pairs */
    uint64_t refs_at;         /* offset of that list from the object header */
    uint32_t magic;
    uint32_t order;
    uint64_t reserved[2];
} object_header;

static inline int64_t atomic_add(int64_t *p, int64_t v) {
    return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL);
}

/* Increment unless zero: a dying object (count already 0) is never revived. Returns the new count, or 0. */
static inline int64_t atomic_inc_unless_zero(int64_t *p) {
    int64_t old = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    while (old > 0) {
        if (__atomic_compare_exchange_n(p, &old, old + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return old + 1;
    }
    return 0;
}

static inline uint8_t *arena_base(arena_header *h) { return (uint8_t *)h + h->arena_off; }
static inline uint8_t *arena_table(arena_header *h) { return (uint8_t *)h + h->table_off; }

static int arena_lock(arena_header *h) {
    int rc = pthread_mutex_lock(&h->lock);
    if (rc == EOWNERDEAD) {
        /* Its holder died inside a critical section. The section is a few dozen instructions, so this is rare,
         * but a free-list update it left half done is not repaired: at worst some memory is lost to the arena
         * until the store is recreated. */
        pthread_mutex_consistent(&h->lock);
        rc = 0;
    }
    return rc;
}

static inline void arena_unlock(arena_header *h) { pthread_mutex_unlock(&h->lock); }

static int arena_init(arena_header *h, uint64_t segment_size, uint64_t capacity, uint64_t table_off,
                      uint64_t arena_off, int32_t pid) {
    pthread_mutexattr_t attr;
    int order = 0;
    while ((1ULL << (order + MIN_SHIFT)) < capacity) order++;
    memset(h, 0, sizeof(*h));
    h->capacity = capacity;
    h->arena_off = arena_off;
    h->table_off = table_off;
    h->segment_size = segment_size;
    h->max_order = order;
    h->owner_pid = pid;
    if (pthread_mutexattr_init(&attr)) return -1;
    pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (pthread_mutex_init(&h->lock, &attr)) return -1;
    pthread_mutexattr_destroy(&attr);
    /* the whole arena is one free block of the top order */
    arena_table(h)[0] = (uint8_t)((order + 1) | FREE_BIT);
    ((uint64_t *)arena_base(h))[0] = 0;
    ((uint64_t *)arena_base(h))[1] = 0;
    h->free_head[order] = 1;
    __atomic_store_n(&h->magic, ARENA_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

static inline uint64_t *links(arena_header *h, uint64_t off) { return (uint64_t *)(arena_base(h) + off); }

static void list_push(arena_header *h, int order, uint64_t off) {
    uint64_t head = h->free_head[order];
    links(h, off)[0] = head;
    links(h, off)[1] = 0;
    if (head) links(h, head - 1)[1] = off + 1;
    h->free_head[order] = off + 1;
    arena_table(h)[off >> MIN_SHIFT] = (uint8_t)((order + 1) | FREE_BIT);
}

static void list_remove(arena_header *h, int order, uint64_t off) {
    uint64_t next = links(h, off)[0], prev = links(h, off)[1];
    if (prev) links(h, prev - 1)[0] = next; else h->free_head[order] = next;
    if (next) links(h, next - 1)[1] = prev;
}

static inline int order_for(uint64_t size) {
    int order = 0;
    while ((1ULL << (order + MIN_SHIFT)) < size) order++;
    return order;
}

/* Allocate a block of at least `size` bytes; its arena offset, or -1 when no free block is large enough.
 * Caller holds the lock. Lower halves are kept and upper halves freed, so the arena fills from the bottom and the
 * memory touched stays small and warm. */
static int64_t arena_alloc_locked(arena_header *h, uint64_t size) {
    int want = order_for(size), k = want;
    uint64_t off;
    if (want > h->max_order) return -1;
    while (k <= h->max_order && !h->free_head[k]) k++;
    if (k > h->max_order) return -1;
    off = h->free_head[k] - 1;
    list_remove(h, k, off);
    while (k > want) {
        k--;
        list_push(h, k, off + (1ULL << (k + MIN_SHIFT)));
    }
    arena_table(h)[off >> MIN_SHIFT] = (uint8_t)(want + 1);
    h->used += 1ULL << (want + MIN_SHIFT);
    h->objects++;
    if (off + (1ULL << (want + MIN_SHIFT)) > h->high_water) h->high_water = off + (1ULL << (want + MIN_SHIFT));
    return (int64_t)off;
}

/* Free the block at `off`, merging it with its free buddies. Caller holds the lock. */
static void arena_free_locked(arena_header *h, uint64_t off) {
    uint8_t *table = arena_table(h);
    int order = (table[off >> MIN_SHIFT] & ~FREE_BIT) - 1;
    h->used -= 1ULL << (order + MIN_SHIFT);
    h->objects--;
    table[off >> MIN_SHIFT] = 0;
    while (order < h->max_order) {
        uint64_t buddy = off ^ (1ULL << (order + MIN_SHIFT));
        if (table[buddy >> MIN_SHIFT] != (uint8_t)((order + 1) | FREE_BIT)) break;
        list_remove(h, order, buddy);
        table[buddy >> MIN_SHIFT] = 0;
        if (buddy < off) off = buddy;
        order++;
    }
    list_push(h, order, off);
}

/* Is `off` the start of an allocated block whose object has this generation? Caller holds the lock. */
static int arena_valid_locked(arena_header *h, uint64_t off, uint64_t generation) {
    object_header *o;
    uint8_t t;
    if (off >= h->capacity || (off & ((1ULL << MIN_SHIFT) - 1))) return 0;
    t = arena_table(h)[off >> MIN_SHIFT];
    if (t == 0 || (t & FREE_BIT)) return 0;
    o = (object_header *)(arena_base(h) + off);
    return o->magic == OBJECT_MAGIC && o->generation == generation;
}

/* Reserve /dev/shm space for the arena up to its high-water mark (and the block table's matching part) before
 * anything is written there: tmpfs answers a write to a page it cannot back with SIGBUS, fallocate with ENOSPC.
 * Caller holds the lock. */
static int arena_commit_locked(arena_header *h, int fd, uint64_t chunk) {
    uint64_t want = (h->high_water + chunk - 1) / chunk * chunk;
    int rc;
    if (want > h->capacity) want = h->capacity;
    if (want <= h->committed) return 0;
    rc = posix_fallocate(fd, (off_t)(h->table_off + (h->committed >> MIN_SHIFT)),
                         (off_t)((want - h->committed) >> MIN_SHIFT));
    if (rc == 0)
        rc = posix_fallocate(fd, (off_t)(h->arena_off + h->committed), (off_t)(want - h->committed));
    if (rc == 0) h->committed = want;
    return rc;
}

#endif
