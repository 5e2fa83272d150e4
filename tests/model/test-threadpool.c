/* test-threadpool — every thread runs every phase, barriers order the phases (after a
 * barrier each thread sees every other thread's write of the phase before), and pools of
 * 1..4 threads survive thousands of short runs back to back (no lost wake-ups), including
 * runs spaced out enough for the workers to fall asleep on the futex. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "threadpool.h"

#define PHASES 32
#define MAX_T 4

struct state {
        struct threadpool *tp;
        uint32_t n;
        uint32_t run;
        uint32_t slots[PHASES][MAX_T];
        _Atomic uint32_t errors;
        _Atomic uint32_t calls;
};

static void work(void *arg, uint32_t ith, uint32_t nth)
{
        struct state *s = arg;
        atomic_fetch_add(&s->calls, 1);
        if (nth != s->n || ith >= nth)
                atomic_fetch_add(&s->errors, 1);
        for (uint32_t p = 0; p < PHASES; p++) {
                const uint32_t stamp = s->run * PHASES + p + 1;
                s->slots[p][ith] = stamp;
                threadpool_barrier(s->tp);
                for (uint32_t j = 0; j < nth; j++)
                        if (s->slots[p][j] != stamp)
                                atomic_fetch_add(&s->errors, 1);
        }
}

static int check(uint32_t n, uint32_t runs, long sleep_ns)
{
        struct state *s = calloc(1, sizeof(*s));
        struct sl_error err = { 0 };
        if (threadpool_create(n, &s->tp, &err) < 0) {
                printf("threadpool_create(%u): %s\n", n, err.msg);
                return 1;
        }
        s->n = n;
        if (threadpool_n_threads(s->tp) != n) {
                printf("n_threads %u, want %u\n", threadpool_n_threads(s->tp), n);
                return 1;
        }
        for (uint32_t r = 0; r < runs; r++) {
                s->run = r;
                threadpool_run(s->tp, work, s);
                if (sleep_ns) {
                        struct timespec ts = { 0, sleep_ns };
                        nanosleep(&ts, NULL);
                }
        }
        int bad = 0;
        if (atomic_load(&s->calls) != n * runs) {
                printf("%u threads: %u calls, want %u\n", n, atomic_load(&s->calls), n * runs);
                bad = 1;
        }
        if (atomic_load(&s->errors)) {
                printf("%u threads: %u ordering errors\n", n, atomic_load(&s->errors));
                bad = 1;
        }
        threadpool_free(s->tp);
        free(s);
        return bad;
}

int main(void)
{
        int bad = 0;
        struct sl_error err = { 0 };
        struct threadpool *tp = NULL;
        if (threadpool_create(0, &tp, &err) != -22 || tp) {
                printf("threadpool_create(0) must fail with -EINVAL\n");
                bad = 1;
        }
        threadpool_free(NULL);
        for (uint32_t n = 1; n <= MAX_T; n++) {
                struct timespec a, b;
                clock_gettime(CLOCK_MONOTONIC, &a);
                bad |= check(n, 500, 0);
                clock_gettime(CLOCK_MONOTONIC, &b);
                printf("%u threads: %.2f us per barrier\n", n,
                       ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / (500.0 * (PHASES + 1)));
                bad |= check(n, 10, 20 * 1000 * 1000); /* workers go to sleep between runs */
        }
        printf("%s\n", bad ? "FAIL" : "ok");
        return bad;
}
