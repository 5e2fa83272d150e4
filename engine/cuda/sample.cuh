/* sample.cuh — picking the next token on the GPU, one row of logits per request, with the
 * semantics of the CPU sampler (engine/sampler.c, llama.cpp's default order): penalties over
 * the recent history, then top-k, top-p, min-p, temperature, and a draw. Greedy when
 * temperature ≤ 0 (penalties still apply first; ties go to the lowest id; NaN logits never win).
 *
 * As in sampler.c: repeat penalty divides positive logits and multiplies the others, then
 * count · frequency + presence is subtracted (float, no FMA), once per distinct id of the window
 * (ids outside 0..n_vocab-1 are ignored); top-k keeps the k first in (logit descending, lower id
 * first) order; top-p and min-p use the untempered probabilities of the top-k set (z summed over
 * it); top-p keeps the shortest prefix of that order reaching top_p · z; temperature scales only
 * the final draw. Weights are expf of the float difference to the max, summed exactly as fixed
 * point (floor(w · 2^40) up to 2^23 ids: weights under ~1e-12 of the max's count as 0), not
 * sampler.c's double exp: a decision can differ from the CPU's only within ~1e-6 (relative) of
 * its threshold.
 *
 * The random draw is counter-based: u = hash(seed, step) in [0, 1), so a request's tokens
 * depend on its seed and on how many tokens it has drawn, never on which other rows share the
 * launch. The drawn token is the first candidate, in id order, among those top-k/top-p/min-p
 * kept, at which the running sum of their tempered weights exceeds floor(u · their total). It
 * is not the CPU sampler's xoshiro stream: with temperature > 0 the two backends draw different
 * (equally distributed) tokens for the same seed.
 *
 * Parameters are on the device, so values sampler.c's validation refuses are clamped, never
 * trusted: temperature NaN → greedy (+inf: uniform over the kept set); top_k ≤ 0 or ≥ n_vocab →
 * off; top_p NaN or ≥ 1 → off, ≤ 0 → the most likely token alone; min_p NaN or ≤ 0 → off, > 1 → 1;
 * repeat_penalty NaN, ≤ 0 or inf → 1; presence/frequency penalty NaN or inf → 0. hist_off and
 * hist_len are trusted: the window must lie inside hist. */
#pragma once

#include <stdint.h>

#include <cuda_runtime.h>

struct cuda_sample_params {
        float temperature;       /* ≤ 0: greedy */
        int32_t top_k;           /* ≤ 0: off */
        float top_p;             /* ≥ 1: off */
        float min_p;             /* ≤ 0: off */
        float repeat_penalty;    /* 1: off */
        float presence_penalty;  /* 0: off */
        float frequency_penalty; /* 0: off */
        uint32_t hist_off;       /* the row's penalty window: hist[hist_off .. +hist_len) */
        uint32_t hist_len;       /* 0: no penalties */
        uint32_t pad;
        uint64_t seed;
        uint64_t step;           /* tokens this request drew before (the RNG counter) */
};

/* logits: n_rows × n_vocab floats, modified in place: the penalised logits of the window's ids
 * are written back (NaN there becomes -inf first); nothing else is written. params: [n_rows]
 * device array; hist: device token ids (not NULL, even when no row has a window). out: [n_rows]
 * ids. scratch: device memory of cuda_sample_scratch_bytes(n_rows, n_vocab) bytes, 8-byte
 * aligned (n_vocab × 8 bytes a row: the reference's candidates, the fast kernel's counts and
 * spilled candidates). Asynchronous, allocates nothing, graph-capturable. 0 (also for
 * n_rows == 0), -EINVAL (a NULL pointer, n_rows < 0, n_vocab ≤ 0 or > 2^30) or a launch's
 * errno. One block of 1024 threads per row; pdl as common.cuh. cuda_sample_scratch_bytes is at least 1. */
size_t cuda_sample_scratch_bytes(int n_rows, int n_vocab);
int cuda_sample(float *logits, int n_rows, int n_vocab, const struct cuda_sample_params *params,
                const int32_t *hist, int32_t *out, void *scratch, cudaStream_t stream, bool pdl = false);

/* Plain reference: one thread per row, sampler.c step by step (quickselect for top-k, a heap
 * sort for top-p and for the id-order draw) with the same weights, fixed-point sums and
 * counter-based draw, so it returns the same ids and leaves the same logits. Slow; for tests. */
int cuda_sample_ref(float *logits, int n_rows, int n_vocab, const struct cuda_sample_params *params,
                    const int32_t *hist, int32_t *out, void *scratch, cudaStream_t stream);

/* The draw itself, for host-side checks: the uniform in [0, 1) used for (seed, step). */
double cuda_sample_uniform(uint64_t seed, uint64_t step);
