/* The shared-memory arena: a buddy allocator whose every byte of state lives in the segment, so any process that
 * maps it can allocate and free. A robust process-shared mutex guards the free lists (a process killed while
 * holding it does not deadlock the others); object reference counts are C atomics outside the lock.
 *
 * Crash consistency: the block table's allocated-start bytes are the truth, the free lists and the free bytes of
 * the table are derived from them. An allocation marks its block allocated as its last step, a free unmarks it as
 * its first, so a process killed anywhere inside the lock leaves allocated-start bytes that are each either a whole
 * block or nothing; the next locker sees EOWNERDEAD and rebuilds the free lists from them (`arena_rebuild_locked`).
 * An operation cut short counts as not done (an allocation) or done (a free).
 *
 * Segment layout:   [arena_header | process slots | block table: one byte per 64-byte unit | arena: capacity bytes]
 * Process slot:      a process attached to the store and the counts it holds, object by object (see proc_slot).
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
#include <unistd.h>

#define ARENA_MAGIC 0x314152454e415241ULL   /* "ARENA" v1 */
#define OBJECT_MAGIC 0x4a424f53u             /* "SOBJ" */
#define MIN_SHIFT 6                          /* 64-byte blocks */
#define MAX_ORDERS 48
#define FREE_BIT 0x80
#define HEADER_BYTES 4096                    /* the header's page; the process slots follow it */
#define PROC_SLOTS 64                        /* processes whose holdings are tracked, per store */
#define SLOT_ENTRIES 1024                    /* distinct objects tracked per process (a power of two) */
#define DEFER_MAX 256                        /* deferred frees held at most */

/* Keeps the compiler from reordering stores across it: a process killed by a signal stops between two
 * instructions, so program order is all that the survivors rely on. */
#define ORDERED() __asm__ __volatile__("" ::: "memory")

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
    uint64_t slots_off;       /* the process slots, from the segment start */
    uint64_t rebuilds;        /* free-list rebuilds after a holder of the lock died */
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

static void arena_rebuild_locked(arena_header *h);

/* Tries before sleeping on the lock. A holder keeps it for a free of a batch's blocks or one allocation, a few
 * microseconds at most: a process that finds it taken does better to wait that long on its CPU than to sleep in
 * the kernel and be woken (two system calls, and a wakeup that costs the holder too). */
#define LOCK_SPINS 200
#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

static int arena_lock(arena_header *h) {
    int rc, i;
    for (i = 0; i < LOCK_SPINS; i++) {
        rc = pthread_mutex_trylock(&h->lock);
        if (rc != EBUSY)
            goto taken;
        cpu_relax();
    }
    rc = pthread_mutex_lock(&h->lock);
taken:
    if (rc == EOWNERDEAD) {
        /* Its holder died inside a critical section, perhaps halfway through a free-list update: rebuild the lists
         * from the block table before anyone uses them. Marked consistent only afterwards, so a rebuild that is
         * itself killed is redone by the next locker. */
        arena_rebuild_locked(h);
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
    h->slots_off = HEADER_BYTES;
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

/* Push the free range [start, end) as the largest aligned blocks that tile it. Greedy from the left, so no two
 * free buddies are left unmerged. Caller holds the lock. */
static void free_range_locked(arena_header *h, uint64_t start, uint64_t end) {
    while (start < end) {
        int order = 0;
        while (order < h->max_order && !(start & ((2ULL << (order + MIN_SHIFT)) - 1))
               && start + (2ULL << (order + MIN_SHIFT)) <= end)
            order++;
        list_push(h, order, start);
        start += 1ULL << (order + MIN_SHIFT);
    }
}

/* Derive the free lists, the free bytes of the block table and the counters from the allocated blocks: whatever
 * is not inside an allocated block is free. Idempotent, so a rebuild cut short is simply done again. */
static void arena_rebuild_locked(arena_header *h) {
    uint8_t *table = arena_table(h);
    uint64_t p = 0, run = 0, used = 0, objects = 0;
    memset(h->free_head, 0, sizeof(h->free_head));
    while (p < h->capacity) {
        uint8_t t = table[p >> MIN_SHIFT];
        if (t && !(t & FREE_BIT) && t - 1 <= h->max_order) {
            uint64_t size = 1ULL << (t - 1 + MIN_SHIFT);
            if (!(p & (size - 1)) && p + size <= h->capacity) {
                free_range_locked(h, run, p);
                if (size > (1ULL << MIN_SHIFT))
                    memset(table + (p >> MIN_SHIFT) + 1, 0, (size >> MIN_SHIFT) - 1);
                used += size;
                objects++;
                p += size;
                run = p;
                continue;
            }
        }
        table[p >> MIN_SHIFT] = 0;
        p += 1ULL << MIN_SHIFT;
    }
    free_range_locked(h, run, h->capacity);
    h->used = used;
    h->objects = objects;
    h->rebuilds++;
}

/* -- per-process holdings ------------------------------------------------------------------------------------
 * Each process that holds counts through refs, views or shared arrays records them in its own slot: an open-
 * addressed table of (offset + 1, count) written only by that process, read by whoever reclaims the slot after the
 * process died. Writes are ordered so that a process killed mid-update leaves either a count it does not hold
 * recorded as not held (a leak of one count) or an exact duplicate of an entry (the reclaimer takes one), never
 * a count recorded that it does not hold: a holding is recorded after the count is taken and forgotten before the
 * count is dropped. */
typedef struct {
    uint64_t key;             /* arena offset + 1; 0 = empty */
    int64_t count;
} hold_entry;

/* Blocks whose last count a process dropped, freed later under one lock acquisition (a mailbox frees a batch's
 * blocks at its end). In the process's slot, so the frees of a process killed before it did them are not lost. */
typedef struct {
    uint64_t n;
    uint64_t block[DEFER_MAX][2];   /* offset, generation */
} defer_list;

typedef struct {
    int32_t pid;              /* 0 = free; -1 = being claimed or reclaimed */
    uint32_t overflow;        /* counts that did not fit (not reclaimable) */
    uint64_t start_time;      /* with the pid, names the process for good */
    uint64_t reserved[2];
    defer_list deferred;
    hold_entry entries[SLOT_ENTRIES];
} proc_slot;

static inline proc_slot *arena_slot(arena_header *h, int i) {
    return (proc_slot *)((uint8_t *)h + h->slots_off) + i;
}

static inline uint64_t slot_hash(uint64_t key) { return (key >> MIN_SHIFT) * 0x9E3779B97F4A7C15ULL >> 54; }

/* Record `delta` counts on the object at `off` for the slot's process. Called by that process only. */
static void slot_hold(proc_slot *s, uint64_t off, int64_t delta) {
    uint64_t key = off + 1, mask = SLOT_ENTRIES - 1, i = slot_hash(key) & mask, n;
    hold_entry *e = s->entries;
    for (n = 0; n < SLOT_ENTRIES; n++, i = (i + 1) & mask) {
        if (e[i].key == key) break;
        if (e[i].key == 0) {
            if (delta <= 0) return;               /* a count taken before the slot was: not recorded */
            e[i].count = delta;
            ORDERED();
            e[i].key = key;
            return;
        }
    }
    if (n == SLOT_ENTRIES) {
        if (delta > 0) s->overflow++;
        return;
    }
    e[i].count += delta;
    if (e[i].count > 0) return;
    /* delete by shifting later entries of the probe run back (no tombstones, so probes stay short) */
    for (;;) {
        uint64_t j = i, home;
        e[i].key = 0;
        ORDERED();
        for (;;) {
            j = (j + 1) & mask;
            if (e[j].key == 0) return;
            home = slot_hash(e[j].key) & mask;
            if (i <= j ? (i < home && home <= j) : (i < home || home <= j)) continue;
            break;
        }
        e[i].count = e[j].count;
        ORDERED();
        e[i].key = e[j].key;              /* for an instant j and i hold the same entry: a reclaimer takes one */
        ORDERED();
        i = j;
    }
}

/* Note the dead object at `off` for a later free; true when the list is full. */
static inline int defer_free(arena_header *h, defer_list *d, uint64_t off) {
    uint64_t n = d->n;
    d->block[n][0] = off;
    d->block[n][1] = ((object_header *)(arena_base(h) + off))->generation;
    ORDERED();
    d->n = n + 1;
    return n + 1 == DEFER_MAX;
}

/* Free the block at `off` if it still holds the dead object of `generation` (count 0); else it was freed already
 * (perhaps reallocated, with a new generation). Caller holds the lock. */
static void arena_free_dead_locked(arena_header *h, uint64_t off, uint64_t generation) {
    object_header *o;
    uint8_t t;
    if (off >= h->capacity || (off & ((1ULL << MIN_SHIFT) - 1))) return;
    t = arena_table(h)[off >> MIN_SHIFT];
    if (t == 0 || (t & FREE_BIT)) return;
    o = (object_header *)(arena_base(h) + off);
    if (o->generation == generation && __atomic_load_n(&o->refcount, __ATOMIC_ACQUIRE) == 0)
        arena_free_locked(h, off);
}

/* Free the deferred blocks. Caller holds the lock. From the end, each entry forgotten right after its block is
 * freed: a process killed in between leaves one entry that `arena_free_dead_locked` then skips. With `checked`
 * (a reclaimer, for a dead process's list), each block is checked first. */
static void defer_flush_locked(arena_header *h, defer_list *d, int checked) {
    uint64_t n = d->n;
    if (n > DEFER_MAX) n = DEFER_MAX;
    while (n) {
        n--;
        if (checked) arena_free_dead_locked(h, d->block[n][0], d->block[n][1]);
        else arena_free_locked(h, d->block[n][0]);
        ORDERED();
        d->n = n;
    }
}

/* Test-only: take the lock, leave the operation `step` half done, and die holding the lock (a kill -9 in the worst
 * place). 1: the head of free list 1 removed; 2: an allocation cut after its first split; 3: a free cut after its
 * first merge. */
static void arena_test_die_in_lock(arena_header *h, int step) {
    arena_lock(h);
    if (step == 1 && h->free_head[1]) {
        list_remove(h, 1, h->free_head[1] - 1);
    } else if (step == 2) {
        int k = 0;
        while (k <= h->max_order && !h->free_head[k]) k++;
        if (k > 0 && k <= h->max_order) {
            uint64_t off = h->free_head[k] - 1;
            list_remove(h, k, off);
            list_push(h, k - 1, off + (1ULL << (k - 1 + MIN_SHIFT)));
        }
    } else if (step == 3) {
        int64_t off = arena_alloc_locked(h, 64);
        if (off >= 0) {
            uint64_t buddy = (uint64_t)off ^ (1ULL << MIN_SHIFT);
            arena_table(h)[off >> MIN_SHIFT] = 0;
            if (arena_table(h)[buddy >> MIN_SHIFT] == (1 | FREE_BIT)) {
                list_remove(h, 0, buddy);
                arena_table(h)[buddy >> MIN_SHIFT] = 0;
            }
        }
    }
    _exit(0);
}

#endif
