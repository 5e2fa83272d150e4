/* harness.cuh — what the GPU kernel tests share: random data generated on the device (so
 * gigabytes of weights take milliseconds) from a counter-based hash, fresh per call.
 * Define HARNESS_SEED before including it to give a test its own sequence; GUARD (default 64)
 * is the poisoned tail every output buffer carries. */
#pragma once

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include <string>
#include <vector>

#include <cuda_fp16.h>

#include "common.cuh"
#include "device.cuh"
#include "gemv.cuh"

#ifndef GUARD
#define GUARD 64 /* poisoned floats after each output, which must stay poisoned */
#endif
#ifndef HARNESS_SEED
#define HARNESS_SEED 0x5eedull
#endif

static __device__ __host__ uint64_t mix64(uint64_t z)
{
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* uniform in [-1, 1), never exactly representable as zero in bulk */
static __device__ float uniform(uint64_t seed, size_t i)
{
        const int64_t m = (int64_t)(mix64(seed ^ mix64(i)) >> 11) - (1ll << 52);
        return (float)m * (1.0f / (1ll << 52));
}

static __global__ void fill_f32(float *p, size_t n, uint64_t seed, float scale, float offset)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x)
                p[i] = offset + scale * uniform(seed, i);
}

static __global__ void fill_w16(uint16_t *p, size_t n, uint64_t seed, int bf16)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x) {
                const float v = uniform(seed, i);
                p[i] = bf16 ? (uint16_t)(__float_as_uint(v) >> 16) /* truncation is fine */
                            : __half_as_ushort(__float2half_rn(v));
        }
}

static uint64_t seed_next(void)
{
        static uint64_t s = HARNESS_SEED;
        s = mix64(s);
        return s;
}

static void rand_f32(float *p, size_t n, float scale = 1.0f, float offset = 0.0f)
{
        fill_f32<<<1024, 256>>>(p, n, seed_next(), scale, offset);
        CUDA_CHECK_ABORT(cudaGetLastError());
}

static void rand_w16(void *p, size_t n, uint32_t wtype)
{
        fill_w16<<<1024, 256>>>((uint16_t *)p, n, seed_next(), wtype == CUDA_WTYPE_BF16);
        CUDA_CHECK_ABORT(cudaGetLastError());
}

static double w16_to_double(uint16_t v, uint32_t wtype)
{
        if (wtype == CUDA_WTYPE_BF16) {
                const uint32_t u = (uint32_t)v << 16;
                float f;
                memcpy(&f, &u, 4);
                return f;
        }
        return __half2float(__ushort_as_half(v));
}

static const char *wtype_name(uint32_t wtype)
{
        return wtype == CUDA_WTYPE_BF16 ? "bf16" : "f16";
}

/* The options every kernel test takes: --json PATH (results) and --check-only (no timing,
 * for compute-sanitizer). false after printing the usage for anything else. */
static inline bool test_options(int argc, char **argv, const char **json, bool *check_only)
{
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--json") && i + 1 < argc) {
                        *json = argv[++i];
                } else if (!strcmp(argv[i], "--check-only")) {
                        *check_only = true;
                } else {
                        fprintf(stderr, "usage: %s [--json PATH] [--check-only]\n", argv[0]);
                        return false;
                }
        }
        return true;
}

/* ---- device buffers and results (tests with their own define HARNESS_RANDOM_ONLY) ---- */
#ifndef HARNESS_RANDOM_ONLY

static float *dev_alloc_f32(size_t n)
{
        float *p;
        CUDA_CHECK_ABORT(cudaMalloc(&p, sizeof(float) * n));
        return p;
}

static void *dev_alloc(size_t bytes)
{
        void *p;
        CUDA_CHECK_ABORT(cudaMalloc(&p, bytes));
        return p;
}

/* NaN everywhere, guard included: unwritten elements stay NaN and fail the check */
static void poison(float *p, size_t n)
{
        CUDA_CHECK_ABORT(cudaMemset(p, 0xff, sizeof(float) * (n + GUARD)));
}

static std::vector<float> to_host(const float *d, size_t n)
{
        std::vector<float> h(n);
        CUDA_CHECK_ABORT(cudaMemcpy(h.data(), d, sizeof(float) * n, cudaMemcpyDeviceToHost));
        return h;
}

/* out holds n outputs then GUARD poisoned floats (poison()): *unwritten counts outputs still
 * NaN (never written), *guard_hit guard floats no longer all-ones bits (written past n). */
static void count_unwritten(const std::vector<float> &out, size_t n, size_t *unwritten, size_t *guard_hit)
{
        for (size_t i = 0; i < n; i++)
                if (isnan(out[i]))
                        ++*unwritten;
        for (size_t i = n; i < n + GUARD; i++) {
                uint32_t u;
                memcpy(&u, &out[i], 4);
                if (u != 0xffffffffu)
                        ++*guard_hit;
        }
}

/* ---- results ---- */

struct check {
        std::string name;
        double err, tol;
        size_t unwritten, guard_hit;
        bool pass;
};
#endif
