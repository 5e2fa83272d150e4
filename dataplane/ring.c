/* ring.c — the single-producer/single-consumer record rings between transport threads and
 * the engine thread, and the request/response record helpers. One allocation at create;
 * afterwards no allocation, lock or syscall: two indices, acquire/release ordering.
 *
 * The consumer may keep records past its read position (dp_ring_hold) and free them in any
 * order (dp_ring_put): a freed record is marked in its header, and the space the producer
 * sees (tail) advances over the oldest records once they are all free. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane.h"

#define REC_HDR 8u
#define REC_PAD 0x80000000u  /* header flag: skip to the start of the ring */
#define REC_FREE 0x40000000u /* header flag (consumer's): a held record was given back */
#define REC_LEN 0x3fffffffu

struct dp_ring {
        /* producer's line */
        _Alignas(SL_CACHELINE) _Atomic uint64_t head; /* bytes ever committed */
        uint64_t tail_cache;                          /* producer's view of tail */
        uint64_t res_pos;                             /* where the reserved record starts */
        uint64_t res_pad;                             /* pad bytes before it (wrap) */
        /* consumer's line */
        _Alignas(SL_CACHELINE) _Atomic uint64_t tail; /* bytes ever freed (all records before) */
        uint64_t rd;                                  /* bytes ever read: held records lie in [tail, rd) */
        uint64_t head_cache;                          /* consumer's view of head */
        uint64_t peek_size;                           /* bytes the peeked record occupies */
        uint32_t held;                                /* records held and not yet put */
        /* shared, read-only */
        _Alignas(SL_CACHELINE) uint8_t *data;
        uint64_t cap, mask;
};

static inline uint64_t rec_size(size_t len) { return SL_ALIGN_UP((uint64_t)len, 8) + REC_HDR; }

int dp_ring_create(struct dp_ring **out, size_t capacity, struct sl_error *err)
{
        struct dp_ring *r = NULL;

        *out = NULL;
        if (capacity < 64 || (capacity & (capacity - 1)) || capacity > (1ull << 40))
                return sl_errorf(err, -EINVAL, "ring capacity %zu is not a power of two in [64, 2^40]", capacity);
        r = aligned_alloc(SL_CACHELINE, SL_ALIGN_UP(sizeof(*r), SL_CACHELINE));
        if (!r)
                goto fail;
        memset(r, 0, sizeof(*r));
        /* page-aligned, so that the whole ring can be page-locked for a device (dp_ring_mem) */
        r->data = aligned_alloc(SL_MIN(capacity, (size_t)4096), capacity);
        if (!r->data)
                goto fail;
        memset(r->data, 0, capacity); /* touch the pages now, not on the hot path */
        r->cap = capacity;
        r->mask = capacity - 1;
        atomic_init(&r->head, 0);
        atomic_init(&r->tail, 0);
        *out = r;
        return 0;
fail:
        free(r);
        return sl_errorf(err, -ENOMEM, "ring of %zu bytes: out of memory", capacity);
}

void dp_ring_free(struct dp_ring *r)
{
        if (!r)
                return;
        free(r->data);
        free(r);
}

size_t dp_ring_capacity(const struct dp_ring *r) { return r->cap; }
size_t dp_ring_max_record(const struct dp_ring *r) { return SL_MIN(r->cap / 2 - REC_HDR, (uint64_t)REC_LEN); }
void *dp_ring_mem(const struct dp_ring *r, size_t *len)
{
        *len = r->cap;
        return r->data;
}

static inline void put_hdr(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline uint32_t get_hdr(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

void *dp_ring_reserve(struct dp_ring *r, size_t len)
{
        if (len > dp_ring_max_record(r))
                return NULL;
        uint64_t need = rec_size(len);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
        uint64_t pos = head & r->mask;
        uint64_t contig = r->cap - pos;
        uint64_t pad = need > contig ? contig : 0;

        if (head + pad + need - r->tail_cache > r->cap) {
                r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
                if (head + pad + need - r->tail_cache > r->cap)
                        return NULL;
        }
        if (pad) {
                put_hdr(r->data + pos, REC_PAD);
                pos = 0;
        }
        r->res_pos = pos;
        r->res_pad = pad;
        return r->data + pos + REC_HDR;
}

void dp_ring_commit(struct dp_ring *r, size_t len)
{
        uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);

        put_hdr(r->data + r->res_pos, (uint32_t)len);
        atomic_store_explicit(&r->head, head + r->res_pad + rec_size(len), memory_order_release);
}

/* Where the record at byte count `at` starts: after a pad record at the end of the ring the
 * producer published pad + record together, so the record is at the start (*skip: the pad's
 * bytes). */
static uint64_t rec_pos(const struct dp_ring *r, uint64_t at, uint64_t *skip)
{
        uint64_t pos = at & r->mask;
        *skip = 0;
        if (get_hdr(r->data + pos) & REC_PAD) {
                *skip = r->cap - pos;
                pos = 0;
        }
        return pos;
}

const void *dp_ring_peek(struct dp_ring *r, size_t *len)
{
        const uint64_t rd = r->rd;

        if (rd == r->head_cache) {
                r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
                if (rd == r->head_cache)
                        return NULL;
        }
        uint64_t skip, pos = rec_pos(r, rd, &skip);
        uint32_t h = get_hdr(r->data + pos);
        r->peek_size = skip + rec_size(h);
        *len = h;
        return r->data + pos + REC_HDR;
}

/* Moves tail over the oldest records while they are free (the consumer's own scan: the
 * headers in [tail, rd) are the consumer's until tail passes them). */
static void reclaim(struct dp_ring *r)
{
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed), t = tail;

        while (t < r->rd) {
                uint64_t skip;
                uint32_t h = get_hdr(r->data + rec_pos(r, t, &skip));
                if (!(h & REC_FREE))
                        break;
                t += skip + rec_size(h & REC_LEN);
        }
        if (t != tail)
                atomic_store_explicit(&r->tail, t, memory_order_release);
}

void dp_ring_release(struct dp_ring *r)
{
        if (!r->held) { /* nothing held: the fast path of a plain FIFO */
                r->rd += r->peek_size;
                atomic_store_explicit(&r->tail, r->rd, memory_order_release);
                r->peek_size = 0;
                return;
        }
        dp_ring_put(r, dp_ring_hold(r));
}

const void *dp_ring_hold(struct dp_ring *r)
{
        uint64_t skip, pos = rec_pos(r, r->rd, &skip);
        r->rd += r->peek_size;
        r->peek_size = 0;
        r->held++;
        return r->data + pos + REC_HDR;
}

void dp_ring_put(struct dp_ring *r, const void *rec)
{
        uint8_t *hp = (uint8_t *)(uintptr_t)rec - REC_HDR;
        put_hdr(hp, get_hdr(hp) | REC_FREE);
        r->held--;
        reclaim(r);
}

uint32_t dp_ring_held(const struct dp_ring *r) { return r->held; }

bool dp_ring_empty(const struct dp_ring *r)
{
        return atomic_load_explicit(&r->head, memory_order_acquire) ==
               atomic_load_explicit(&r->tail, memory_order_acquire);
}

size_t dp_ring_used(const struct dp_ring *r)
{
        return (size_t)(atomic_load_explicit(&r->head, memory_order_acquire) -
                        atomic_load_explicit(&r->tail, memory_order_acquire));
}

bool dp_ring_readable(const struct dp_ring *r)
{
        return atomic_load_explicit(&r->head, memory_order_acquire) != r->rd;
}

/* ---- records ---- */

int dp_req_push(struct dp_ring *r, const struct dp_req_rec *h, const void *payload, size_t len)
{
        struct dp_req_rec *rec = dp_ring_reserve(r, sizeof(*rec) + len);

        if (!rec)
                return -ENOBUFS;
        *rec = *h;
        rec->payload_len = (uint32_t)len;
        if (len)
                memcpy(rec->payload, payload, len);
        dp_ring_commit(r, sizeof(*rec) + len);
        return 0;
}

int dp_resp_push(struct dp_ring *r, const struct dp_resp_rec *h, const void *payload, size_t len)
{
        struct dp_resp_rec *rec = dp_ring_reserve(r, sizeof(*rec) + len);

        if (!rec)
                return -ENOBUFS;
        *rec = *h;
        rec->payload_len = (uint32_t)len;
        if (len)
                memcpy(rec->payload, payload, len);
        dp_ring_commit(r, sizeof(*rec) + len);
        return 0;
}

struct dp_resp_rec *dp_resp_reserve(struct dp_ring *r, size_t max_payload)
{
        return dp_ring_reserve(r, sizeof(struct dp_resp_rec) + max_payload);
}

void dp_resp_commit(struct dp_ring *r, struct dp_resp_rec *rec, size_t payload_len)
{
        rec->payload_len = (uint32_t)payload_len;
        dp_ring_commit(r, sizeof(*rec) + payload_len);
}
