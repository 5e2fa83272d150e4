/* common.cuh — what every CUDA file in engine/cuda shares: checking CUDA calls (the failing
 * call, file and line are kept for the caller to log; library code never prints), the
 * mapping of CUDA errors to negative errno, and small device helpers. */
#pragma once

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utility>

#include <cuda_runtime.h>

/* Where the last failing CUDA call of this thread was: the caller logs it at the edge. */
struct cuda_err_site {
        cudaError_t err;
        const char *call;
        const char *file;
        int line;
};

/* One per thread, shared by every translation unit (an inline function's static). */
inline struct cuda_err_site *cuda_err_last(void)
{
        static thread_local struct cuda_err_site site;
        return &site;
}

/* Negative errno for a CUDA error, so CUDA failures travel the engine's usual error path. */
static inline int cuda_errno(cudaError_t e)
{
        switch (e) {
        case cudaSuccess:
                return 0;
        case cudaErrorMemoryAllocation:
                return -ENOMEM;
        case cudaErrorInvalidValue:
        case cudaErrorInvalidConfiguration:
        case cudaErrorInvalidDevicePointer:
        case cudaErrorInvalidResourceHandle:
                return -EINVAL;
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInvalidDevice:
        case cudaErrorNoKernelImageForDevice:
                return -ENODEV;
        case cudaErrorNotSupported:
                return -EOPNOTSUPP;
        default:
                return -EIO;
        }
}

static inline int cuda_check_(cudaError_t e, const char *call, const char *file, int line)
{
        if (e == cudaSuccess)
                return 0;
        struct cuda_err_site *s = cuda_err_last();
        s->err = e;
        s->call = call;
        s->file = file;
        s->line = line;
        return cuda_errno(e);
}

/* r = CUDA_CHECK(cudaMalloc(&p, n)); if (r < 0) goto fail;
 * Evaluates to 0 or a negative errno and records the call, file and line on failure. */
#define CUDA_CHECK(call) cuda_check_((call), #call, __FILE__, __LINE__)
/* After a kernel launch: launch-configuration errors show up here, not at the launch. */
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

/* Tests and tools: print what failed and where, then abort (a core beats a wrong number). */
#define CUDA_CHECK_ABORT(call)                                                                 \
        do {                                                                                   \
                cudaError_t e_ = (call);                                                       \
                if (e_ != cudaSuccess) {                                                       \
                        fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__,     \
                                #call, cudaGetErrorString(e_), cudaGetErrorName(e_));          \
                        abort();                                                               \
                }                                                                              \
        } while (0)

/* Tests and tools: abort when a library call returned a negative errno, naming the CUDA
 * call that failed inside it, if any. */
#define CUDA_OK_OR_ABORT(expr)                                                                 \
        do {                                                                                   \
                int r_ = (expr);                                                               \
                if (r_ < 0) {                                                                  \
                        const struct cuda_err_site *s_ = cuda_err_last();                      \
                        fprintf(stderr, "%s:%d: %s = %d; last CUDA failure: %s at %s:%d: %s\n", \
                                __FILE__, __LINE__, #expr, r_, s_->call ? s_->call : "none",   \
                                s_->file ? s_->file : "-", s_->line,                           \
                                s_->call ? cudaGetErrorString(s_->err) : "-");                 \
                        abort();                                                               \
                }                                                                              \
        } while (0)

/* ---- device helpers ---- */

/* 16-byte load that skips L1: weights are read once per call, so L1 is kept for the
 * activations that every row reuses. */
static __device__ __forceinline__ uint4 ld_stream_u4(const void *p)
{
        uint4 v;
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
        return v;
}

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
}

/* ---- programmatic dependent launch (sm_90) ----
 * A kernel launched with pdl (cuda_launch below) may start while the kernel before it in
 * the stream still runs. Every kernel of this directory therefore begins with
 * pdl_trigger() (the next kernel may be launched now: it will wait in turn) and calls
 * pdl_wait() before it reads anything an earlier kernel wrote or writes anything at all;
 * before the wait it may only read what no kernel writes (weights), so a GEMV streams its
 * weights towards L2 while the previous kernel finishes. pdl_wait() returns once every
 * earlier kernel has completed and its writes are visible (each of them waited for its own
 * predecessor, so the chain is complete). Without pdl both are no-ops. */
static __device__ __forceinline__ void pdl_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

static __device__ __forceinline__ void pdl_wait(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Both, for a kernel with nothing to do before its inputs are ready. */
static __device__ __forceinline__ void pdl_start(void)
{
        pdl_trigger();
        pdl_wait();
}

#ifdef __CUDACC__
/* Lets kernel take bytes of dynamic shared memory (above the 48 KB default): the attribute
 * is set once per device, remembered as a bit per device in *allowed (the caller's static,
 * one per kernel; a race between threads only repeats the call). */
template <typename K> static inline cudaError_t smem_allow(K kernel, int bytes, unsigned long long *allowed)
{
        int dev = 0;
        cudaError_t e = cudaGetDevice(&dev);
        if (e != cudaSuccess)
                return e;
        const unsigned long long bit = dev < 64 ? 1ull << dev : 0;
        if (bit && (__atomic_load_n(allowed, __ATOMIC_ACQUIRE) & bit))
                return cudaSuccess;
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
        if (e == cudaSuccess)
                __atomic_fetch_or(allowed, bit, __ATOMIC_RELEASE);
        return e;
}

/* kernel<<<grid, block, smem, stream>>>(args...) in thread block clusters of cl × 1 × 1
 * blocks (cl > 1; grid.x a multiple of cl), with programmatic stream serialization when pdl
 * (the kernel must follow the rules above). Returns the launch's error. */
template <typename... P, typename... A>
static inline cudaError_t cuda_launch_cl(bool pdl, int cl, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                                         cudaStream_t stream, A &&...args)
{
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[2];
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cfg.attrs = attr;
        if (cl > 1) {
                attr[cfg.numAttrs].id = cudaLaunchAttributeClusterDimension;
                attr[cfg.numAttrs].val.clusterDim.x = (unsigned)cl;
                attr[cfg.numAttrs].val.clusterDim.y = 1;
                attr[cfg.numAttrs].val.clusterDim.z = 1;
                cfg.numAttrs++;
        }
        if (pdl) {
                attr[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr[cfg.numAttrs].val.programmaticStreamSerializationAllowed = 1;
                cfg.numAttrs++;
        }
        return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

/* The same without clusters. */
template <typename... P, typename... A>
static inline cudaError_t cuda_launch(bool pdl, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t stream, A &&...args)
{
        return cuda_launch_cl(pdl, 1, kernel, grid, block, smem, stream, std::forward<A>(args)...);
}
#endif
