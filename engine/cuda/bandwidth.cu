/* bandwidth.cu — device read and copy bandwidth (bandwidth.cuh): one full wave of blocks
 * streams the buffer with four independent 16-byte loads in flight per thread. */
#include <stdint.h>
#include <stdlib.h>

#include "bandwidth.cuh"
#include "common.cuh"

#define BW_THREADS 256

static __global__ void bw_fill_kernel(uint4 *p, size_t n16)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16;
             i += (size_t)gridDim.x * blockDim.x) {
                const uint32_t h = (uint32_t)(i * 0x9e3779b97f4a7c15ull >> 32) | 1u;
                p[i] = make_uint4(h, h ^ 0x5bd1e995u, h * 3u, ~h);
        }
}

/* The xor of everything read goes to *sink only when it equals a value it never takes in
 * practice: the compiler cannot drop the loads, and nothing is written. */
static __global__ void __launch_bounds__(BW_THREADS) bw_read_kernel(const uint4 *p, size_t n16,
                                                                    uint32_t *sink)
{
        const size_t stride = (size_t)gridDim.x * blockDim.x;
        size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
        uint32_t acc = 0;
        for (; i + 3 * stride < n16; i += 4 * stride) {
                const uint4 a = ld_stream_u4(p + i), b = ld_stream_u4(p + i + stride);
                const uint4 c = ld_stream_u4(p + i + 2 * stride);
                const uint4 d = ld_stream_u4(p + i + 3 * stride);
                acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
                acc ^= c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
        }
        for (; i < n16; i += stride) {
                const uint4 a = ld_stream_u4(p + i);
                acc ^= a.x ^ a.y ^ a.z ^ a.w;
        }
        if (acc == 0x2545f491u)
                *sink = acc;
}

static __global__ void __launch_bounds__(BW_THREADS) bw_copy_kernel(const uint4 *src, uint4 *dst,
                                                                    size_t n16)
{
        const size_t stride = (size_t)gridDim.x * blockDim.x;
        size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
        for (; i + 3 * stride < n16; i += 4 * stride) {
                const uint4 a = ld_stream_u4(src + i), b = ld_stream_u4(src + i + stride);
                const uint4 c = ld_stream_u4(src + i + 2 * stride);
                const uint4 d = ld_stream_u4(src + i + 3 * stride);
                dst[i] = a;
                dst[i + stride] = b;
                dst[i + 2 * stride] = c;
                dst[i + 3 * stride] = d;
        }
        for (; i < n16; i += stride)
                dst[i] = ld_stream_u4(src + i);
}

static int cmp_float(const void *a, const void *b)
{
        const float x = *(const float *)a, y = *(const float *)b;
        return (x > y) - (x < y);
}

int cuda_bandwidth_measure(size_t bytes, int reps, struct cuda_bandwidth *out)
{
        uint4 *src = NULL, *dst = NULL;
        uint32_t *sink = NULL;
        cudaEvent_t ev[2] = {NULL, NULL};
        float *ms = NULL;
        int r, dev, sms, per_sm;

        if (!out || reps < 1 || bytes < (1u << 20))
                return -EINVAL;
        bytes &= ~(size_t)15;
        const size_t n16 = bytes / 16;
        ms = (float *)malloc(sizeof(*ms) * (size_t)reps * 2);
        if (!ms)
                return -ENOMEM;

        r = CUDA_CHECK(cudaGetDevice(&dev));
        if (r < 0)
                goto fail;
        r = CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        if (r < 0)
                goto fail;
        r = CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, dev));
        if (r < 0)
                goto fail;
        r = CUDA_CHECK(cudaMalloc(&src, bytes));
        if (r < 0)
                goto fail;
        r = CUDA_CHECK(cudaMalloc(&dst, bytes));
        if (r < 0)
                goto fail;
        r = CUDA_CHECK(cudaMalloc(&sink, sizeof(*sink)));
        if (r < 0)
                goto fail;
        for (int i = 0; i < 2; i++) {
                r = CUDA_CHECK(cudaEventCreate(&ev[i]));
                if (r < 0)
                        goto fail;
        }
        {
                const unsigned blocks = (unsigned)sms * (unsigned)(per_sm / BW_THREADS);
                bw_fill_kernel<<<blocks, BW_THREADS>>>(src, n16);
                bw_fill_kernel<<<blocks, BW_THREADS>>>(dst, n16);
                r = CUDA_CHECK_LAUNCH();
                if (r < 0)
                        goto fail;
                for (int pass = 0; pass < 2; pass++) {
                        for (int i = -3; i < reps; i++) { /* three warm-ups */
                                r = CUDA_CHECK(cudaEventRecord(ev[0]));
                                if (r < 0)
                                        goto fail;
                                if (pass == 0)
                                        bw_read_kernel<<<blocks, BW_THREADS>>>(src, n16, sink);
                                else
                                        bw_copy_kernel<<<blocks, BW_THREADS>>>(src, dst, n16);
                                r = CUDA_CHECK_LAUNCH();
                                if (r < 0)
                                        goto fail;
                                r = CUDA_CHECK(cudaEventRecord(ev[1]));
                                if (r < 0)
                                        goto fail;
                                r = CUDA_CHECK(cudaEventSynchronize(ev[1]));
                                if (r < 0)
                                        goto fail;
                                if (i >= 0) {
                                        r = CUDA_CHECK(cudaEventElapsedTime(
                                                &ms[pass * reps + i], ev[0], ev[1]));
                                        if (r < 0)
                                                goto fail;
                                }
                        }
                        qsort(ms + pass * reps, (size_t)reps, sizeof(*ms), cmp_float);
                }
        }
        out->bytes = bytes;
        out->reps = reps;
        out->read_gbs = (double)bytes / (ms[reps / 2] * 1e-3) / 1e9;
        out->copy_gbs = 2.0 * (double)bytes / (ms[reps + reps / 2] * 1e-3) / 1e9;
        r = 0;
fail:
        for (int i = 0; i < 2; i++)
                if (ev[i])
                        cudaEventDestroy(ev[i]);
        cudaFree(sink);
        cudaFree(dst);
        cudaFree(src);
        free(ms);
        return r;
}
