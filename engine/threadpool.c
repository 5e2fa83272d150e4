/* threadpool.c — persistent workers and a sense-counting barrier. Waiters spin on the
 * shared word for a short while (phases of a forward pass are microseconds apart), then
 * sleep on a futex; wakers only make the futex syscall when someone is asleep. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "threadpool.h"

#define SPIN_ITERS (1u << 11)

struct threadpool {
        uint32_t n;
        pthread_t *threads;
        threadpool_fn fn;
        void *arg;
        _Alignas(SL_CACHELINE) _Atomic uint32_t gen;      /* bumped once per run */
        _Atomic uint32_t stop;
        _Alignas(SL_CACHELINE) _Atomic uint32_t arrived;  /* barrier arrivals this phase */
        _Alignas(SL_CACHELINE) _Atomic uint32_t phase;    /* bumped when a barrier opens */
        _Alignas(SL_CACHELINE) _Atomic uint32_t sleepers; /* threads inside futex_wait */
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
        syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
        syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Returns once *addr != old. */
static void wait_change(struct threadpool *tp, _Atomic uint32_t *addr, uint32_t old)
{
        for (uint32_t i = 0; i < SPIN_ITERS; i++) {
                if (atomic_load_explicit(addr, memory_order_acquire) != old)
                        return;
                cpu_relax();
        }
        /* seq_cst on both sides: either the waker sees us in sleepers, or futex_wait sees
         * the new value and returns at once. */
        atomic_fetch_add(&tp->sleepers, 1);
        while (atomic_load(addr) == old)
                futex_wait(addr, old);
        atomic_fetch_sub(&tp->sleepers, 1);
}

static void publish(struct threadpool *tp, _Atomic uint32_t *addr)
{
        atomic_fetch_add(addr, 1);
        if (atomic_load(&tp->sleepers) > 0)
                futex_wake_all(addr);
}

void threadpool_barrier(struct threadpool *tp)
{
        if (tp->n <= 1)
                return;
        const uint32_t ph = atomic_load_explicit(&tp->phase, memory_order_acquire);
        if (atomic_fetch_add_explicit(&tp->arrived, 1, memory_order_acq_rel) == tp->n - 1) {
                atomic_store_explicit(&tp->arrived, 0, memory_order_relaxed);
                publish(tp, &tp->phase);
        } else {
                wait_change(tp, &tp->phase, ph);
        }
}

struct worker_arg {
        struct threadpool *tp;
        uint32_t ith;
};

static void *worker_main(void *p)
{
        struct threadpool *tp = ((struct worker_arg *)p)->tp;
        const uint32_t ith = ((struct worker_arg *)p)->ith;
        free(p);
        uint32_t seen = 0;
        for (;;) {
                wait_change(tp, &tp->gen, seen);
                seen = atomic_load_explicit(&tp->gen, memory_order_acquire);
                if (atomic_load_explicit(&tp->stop, memory_order_acquire))
                        break;
                tp->fn(tp->arg, ith, tp->n);
                threadpool_barrier(tp);
        }
        return NULL;
}

int threadpool_create(uint32_t n_threads, struct threadpool **out, struct sl_error *err)
{
        struct threadpool *tp;
        int r = 0;

        *out = NULL;
        if (n_threads == 0 || n_threads > 1024)
                return sl_errorf(err, -EINVAL, "threadpool: %u threads", n_threads);
        tp = aligned_alloc(SL_CACHELINE, SL_ALIGN_UP(sizeof(*tp), SL_CACHELINE));
        if (!tp)
                return sl_errorf(err, -ENOMEM, "threadpool: out of memory");
        *tp = (struct threadpool){ .n = 1 };
        tp->threads = calloc(n_threads, sizeof(pthread_t));
        if (!tp->threads) {
                r = sl_errorf(err, -ENOMEM, "threadpool: out of memory");
                goto fail;
        }
        /* n counts only started workers until all are up, so a failure midway can stop them. */
        for (uint32_t i = 1; i < n_threads; i++) {
                struct worker_arg *wa = malloc(sizeof(*wa));
                if (!wa) {
                        r = sl_errorf(err, -ENOMEM, "threadpool: out of memory");
                        goto fail;
                }
                wa->tp = tp;
                wa->ith = i;
                int e = pthread_create(&tp->threads[i], NULL, worker_main, wa);
                if (e) {
                        free(wa);
                        r = sl_errorf(err, -e, "threadpool: pthread_create failed");
                        goto fail;
                }
                tp->n = i + 1;
        }
        tp->n = n_threads;
        *out = tp;
        return 0;
fail:
        threadpool_free(tp);
        return r;
}

void threadpool_free(struct threadpool *tp)
{
        if (!tp)
                return;
        atomic_store(&tp->stop, 1);
        publish(tp, &tp->gen);
        for (uint32_t i = 1; i < tp->n; i++)
                pthread_join(tp->threads[i], NULL);
        free(tp->threads);
        free(tp);
}

uint32_t threadpool_n_threads(const struct threadpool *tp)
{
        return tp->n;
}

void threadpool_run(struct threadpool *tp, threadpool_fn fn, void *arg)
{
        tp->fn = fn;
        tp->arg = arg;
        if (tp->n > 1)
                publish(tp, &tp->gen);
        fn(arg, 0, tp->n);
        threadpool_barrier(tp);
}
