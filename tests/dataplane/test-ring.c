/* test-ring.c — the SPSC record ring: edge cases (exactly full, wrap with a pad record,
 * zero-length records, too large), records held past the read position and put back in any
 * order, then two threads moving millions of random-sized, checksummed records with no loss
 * and no reordering (once with plain releases, once with a consumer that holds some
 * records and puts them back out of order, checking that their bytes did not change). */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

static void edges(void)
{
        struct dp_ring *r;
        struct sl_error err;
        size_t len;

        CHECK(dp_ring_create(&r, 100, &err) < 0);
        CHECK(dp_ring_create(&r, 256, &err) == 0);
        CHECK(dp_ring_max_record(r) == 120);
        CHECK(dp_ring_reserve(r, 121) == NULL);
        CHECK(dp_ring_peek(r, &len) == NULL);
        /* zero-length records */
        CHECK(dp_ring_reserve(r, 0) != NULL);
        dp_ring_commit(r, 0);
        CHECK(dp_ring_peek(r, &len) != NULL && len == 0);
        dp_ring_release(r);
        CHECK(dp_ring_empty(r));
        /* exactly full: 256 bytes = 4 records of 56 + 8 header; after tail is at 8 */
        for (int i = 0; i < 3; i++) {
                uint8_t *p = dp_ring_reserve(r, 56);
                CHECK(p);
                memset(p, i, 56);
                dp_ring_commit(r, 56);
        }
        /* 3*64 + 8 used; 56 left: a 48-byte record (56 with header) fits exactly */
        uint8_t *p = dp_ring_reserve(r, 48);
        CHECK(p);
        memset(p, 9, 48);
        dp_ring_commit(r, 48);
        /* 8 bytes left (the zero-length record's): one more header fits, a byte does not */
        CHECK(dp_ring_reserve(r, 1) == NULL);
        CHECK(dp_ring_reserve(r, 0) != NULL);
        dp_ring_commit(r, 0);
        CHECK(dp_ring_reserve(r, 0) == NULL); /* exactly full */
        const uint8_t *q = dp_ring_peek(r, &len);
        CHECK(q && len == 56 && q[0] == 0 && q[55] == 0);
        dp_ring_release(r);
        /* wrap: head at 264 (position 8), 64 bytes released: a 56-byte record fits */
        p = dp_ring_reserve(r, 56);
        CHECK(p);
        memset(p, 7, 56);
        dp_ring_commit(r, 56);
        for (int i = 1; i < 3; i++) {
                q = dp_ring_peek(r, &len);
                CHECK(q && len == 56 && q[0] == i);
                dp_ring_release(r);
        }
        q = dp_ring_peek(r, &len);
        CHECK(q && len == 48 && q[47] == 9);
        dp_ring_release(r);
        q = dp_ring_peek(r, &len);
        CHECK(q && len == 0);
        dp_ring_release(r);
        q = dp_ring_peek(r, &len);
        CHECK(q && len == 56 && q[0] == 7);
        dp_ring_release(r);
        CHECK(dp_ring_empty(r));
        /* pad record: head at 64+8 mod 256 ... make a record that cannot fit before the end */
        for (int k = 0; k < 20; k++) {
                p = dp_ring_reserve(r, 100);
                CHECK(p);
                memset(p, k, 100);
                dp_ring_commit(r, 100);
                q = dp_ring_peek(r, &len);
                CHECK(q && len == 100 && q[0] == k && q[99] == k);
                CHECK(((uintptr_t)q & 7) == 0);
                dp_ring_release(r);
        }
        /* commit shorter than reserved */
        p = dp_ring_reserve(r, 120);
        CHECK(p);
        p[0] = 42;
        dp_ring_commit(r, 1);
        q = dp_ring_peek(r, &len);
        CHECK(q && len == 1 && q[0] == 42);
        dp_ring_release(r);
        dp_ring_free(r);
        dp_ring_free(NULL);
}

/* Held records: space comes back only up to the oldest one not yet put. */
static void holds(void)
{
        struct dp_ring *r;
        struct sl_error err;
        size_t len;
        const uint8_t *rec[4];

        CHECK(dp_ring_create(&r, 256, &err) == 0);
        for (int i = 0; i < 4; i++) { /* 4 x (56 + 8) = the whole ring */
                uint8_t *p = dp_ring_reserve(r, 56);
                CHECK(p);
                memset(p, 10 + i, 56);
                dp_ring_commit(r, 56);
        }
        CHECK(dp_ring_reserve(r, 0) == NULL && dp_ring_used(r) == 256);
        /* hold 0, release 1, hold 2, hold 3 */
        CHECK((rec[0] = dp_ring_peek(r, &len)) && len == 56);
        CHECK(dp_ring_hold(r) == rec[0]);
        CHECK(dp_ring_peek(r, &len) && len == 56);
        dp_ring_release(r);
        CHECK((rec[2] = dp_ring_peek(r, &len)) && rec[2][0] == 12);
        CHECK(dp_ring_hold(r) == rec[2]);
        CHECK((rec[3] = dp_ring_peek(r, &len)) && rec[3][0] == 13);
        CHECK(dp_ring_hold(r) == rec[3]);
        CHECK(dp_ring_held(r) == 3);
        CHECK(!dp_ring_readable(r) && !dp_ring_empty(r));
        CHECK(dp_ring_peek(r, &len) == NULL);
        /* record 1 was released, but record 0 before it is held: no space yet */
        CHECK(dp_ring_reserve(r, 0) == NULL);
        dp_ring_put(r, rec[3]);
        CHECK(dp_ring_reserve(r, 0) == NULL);
        /* putting 0 frees 0 and 1 (2 is still held, 3 behind it is not reclaimed) */
        CHECK(dp_ring_used(r) == 256);
        dp_ring_put(r, rec[0]);
        CHECK(dp_ring_held(r) == 1 && dp_ring_used(r) == 128);
        uint8_t *p = dp_ring_reserve(r, 120); /* 128 bytes free at the start */
        CHECK(p && (const uint8_t *)p - 8 == rec[0] - 8);
        memset(p, 20, 120);
        dp_ring_commit(r, 120);
        CHECK(dp_ring_reserve(r, 0) == NULL);
        CHECK(rec[2][0] == 12 && rec[2][55] == 12); /* the held record was not overwritten */
        const uint8_t *q = dp_ring_peek(r, &len);
        CHECK(q && len == 120 && q[0] == 20);
        dp_ring_release(r); /* a plain release while another record is held */
        CHECK(dp_ring_reserve(r, 0) == NULL); /* still behind record 2 */
        dp_ring_put(r, rec[2]);
        CHECK(dp_ring_held(r) == 0 && dp_ring_empty(r) && dp_ring_used(r) == 0);
        /* holds across the wrap: a pad record before a held record at the start */
        for (int k = 0; k < 12; k++) {
                p = dp_ring_reserve(r, 100);
                CHECK(p);
                memset(p, k, 100);
                dp_ring_commit(r, 100);
                q = dp_ring_peek(r, &len);
                CHECK(q && len == 100 && q[0] == k);
                const uint8_t *h = dp_ring_hold(r);
                CHECK(h == q);
                if (k & 1) {
                        dp_ring_put(r, h);
                        dp_ring_put(r, rec[0]);
                } else {
                        rec[0] = h;
                }
        }
        CHECK(dp_ring_held(r) == 0 && dp_ring_empty(r));
        size_t ml;
        CHECK(dp_ring_mem(r, &ml) != NULL && ml == 256);
        dp_ring_free(r);
}

#define N_RECORDS 2000000u

static uint64_t rng_next(uint64_t *s)
{
        *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
        return *s;
}

static void *producer(void *arg)
{
        struct dp_ring *r = arg;
        uint64_t s = 88172645463325252ull;
        for (uint32_t i = 0; i < N_RECORDS; i++) {
                size_t len = 8 + rng_next(&s) % 300;
                if (i % 1000 == 0)
                        len = 0 + (i / 1000) % 8; /* some tiny and zero-length ones */
                uint8_t *p;
                while (!(p = dp_ring_reserve(r, len)))
                        sched_yield();
                uint64_t v = i * 0x9E3779B97F4A7C15ull;
                for (size_t j = 0; j < len; j++)
                        p[j] = (uint8_t)(v >> (8 * (j % 8))) ^ (uint8_t)j;
                if (len >= 4)
                        memcpy(p, &i, 4);
                dp_ring_commit(r, len);
        }
        return NULL;
}

/* Checks the producer's pattern of record i. */
static void check_record(uint32_t i, const uint8_t *p, size_t len)
{
        uint64_t v = i * 0x9E3779B97F4A7C15ull;
        uint32_t got;
        if (len >= 4) {
                memcpy(&got, p, 4);
                CHECK(got == i);
        }
        for (size_t j = 4; j < len; j++)
                if (p[j] != ((uint8_t)(v >> (8 * (j % 8))) ^ (uint8_t)j)) {
                        fprintf(stderr, "record %u byte %zu corrupt\n", i, j);
                        exit(1);
                }
}

#define MAX_HELD 6

/* hold_every == 0: plain releases; else every hold_every-th record (on average) is held
 * and put back later, in random order, after its bytes are checked again. */
static void stress(unsigned hold_every)
{
        struct dp_ring *r;
        struct sl_error err;
        pthread_t t;
        uint64_t s = 88172645463325252ull, s2 = 12345;
        struct { const uint8_t *p; size_t len; uint32_t i; } held[MAX_HELD];
        unsigned n_held = 0;
        uint64_t n_holds = 0;

        CHECK(dp_ring_create(&r, 4096, &err) == 0);
        CHECK(pthread_create(&t, NULL, producer, r) == 0);
        for (uint32_t i = 0; i < N_RECORDS; i++) {
                size_t want = 8 + rng_next(&s) % 300, len;
                if (i % 1000 == 0)
                        want = (i / 1000) % 8;
                const uint8_t *p;
                while (!(p = dp_ring_peek(r, &len))) {
                        if (n_held) { /* the producer may be waiting for held space */
                                unsigned k = (unsigned)(rng_next(&s2) % n_held);
                                check_record(held[k].i, held[k].p, held[k].len);
                                dp_ring_put(r, held[k].p);
                                held[k] = held[--n_held];
                        }
                        sched_yield();
                }
                CHECK(len == want);
                check_record(i, p, len);
                if (hold_every && n_held < MAX_HELD && rng_next(&s2) % hold_every == 0) {
                        held[n_held++] = (typeof(held[0])){dp_ring_hold(r), len, i};
                        n_holds++;
                } else {
                        dp_ring_release(r);
                }
                if (n_held && rng_next(&s2) % 3 == 0) {
                        unsigned k = (unsigned)(rng_next(&s2) % n_held);
                        check_record(held[k].i, held[k].p, held[k].len);
                        dp_ring_put(r, held[k].p);
                        held[k] = held[--n_held];
                }
        }
        while (n_held) {
                check_record(held[n_held - 1].i, held[n_held - 1].p, held[n_held - 1].len);
                dp_ring_put(r, held[--n_held].p);
        }
        pthread_join(t, NULL);
        CHECK(dp_ring_empty(r) && dp_ring_held(r) == 0);
        CHECK(!hold_every || n_holds > N_RECORDS / hold_every / 4);
        dp_ring_free(r);
}

int main(void)
{
        edges();
        holds();
        uint64_t t0 = sl_now_ns();
        stress(0);
        printf("ring: %u records through a 4 KiB ring in %.1f ms\n", N_RECORDS, (sl_now_ns() - t0) / 1e6);
        t0 = sl_now_ns();
        stress(4);
        printf("ring: %u records, about a quarter held and put back out of order, in %.1f ms\n", N_RECORDS,
               (sl_now_ns() - t0) / 1e6);
        return 0;
}
