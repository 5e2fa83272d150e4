/* threadpool.h (engine-internal) — persistent worker threads for the CPU forward pass.
 * threadpool_run() runs fn on every thread (the caller is thread 0) and returns when all
 * are done; inside fn, threadpool_barrier() separates phases. Waiting spins briefly, then
 * sleeps on a futex, so no thread is created and, in steady state, no syscall is made per step. */
#pragma once

#include <stdint.h>

#include "sl.h"

struct threadpool;

typedef void (*threadpool_fn)(void *arg, uint32_t ith, uint32_t nth);

int threadpool_create(uint32_t n_threads, struct threadpool **out, struct sl_error *err);
void threadpool_free(struct threadpool *tp); /* NULL is a no-op */
uint32_t threadpool_n_threads(const struct threadpool *tp);
/* Not reentrant: one run at a time per pool. */
void threadpool_run(struct threadpool *tp, threadpool_fn fn, void *arg);
/* All n threads of the current run must call it the same number of times. */
void threadpool_barrier(struct threadpool *tp);
