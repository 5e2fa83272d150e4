/* rmsnorm.cu — RMSNorm (rmsnorm.cuh): one block per token; float4 loads where the row allows,
 * a block-wide sum of squares, then a second pass (from L1/L2) that scales and weights. */
#include "common.cuh"
#include "rmsnorm.cuh"
#include "w16.cuh"

#define RMSNORM_THREADS 256

static __device__ float block_sum(float v)
{
        __shared__ float warp_part[RMSNORM_THREADS / 32];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        v = warp_sum(v);
        if (lane == 0)
                warp_part[warp] = v;
        __syncthreads();
        v = lane < RMSNORM_THREADS / 32 ? warp_part[lane] : 0.0f;
        return warp_sum(v); /* every warp computes the total: no second barrier needed */
}

/* OUT: 0 float y, or y as the 16-bit type OUT (w16.cuh), the same values rounded. */
template <bool VEC4, int OUT>
static __global__ void __launch_bounds__(RMSNORM_THREADS)
rmsnorm_kernel(const float *x, const float *__restrict__ w, void *y, int n, float eps)
{
        pdl_start();
        const float *xr = x + (size_t)blockIdx.x * n;
        const size_t row = (size_t)blockIdx.x * n;
        float ss = 0.0f;
        if (VEC4) {
                for (int i = threadIdx.x; i < n / 4; i += RMSNORM_THREADS) {
                        const float4 v = ((const float4 *)xr)[i];
                        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
        } else {
                for (int i = threadIdx.x; i < n; i += RMSNORM_THREADS)
                        ss += xr[i] * xr[i];
        }
        const float scale = rsqrtf(block_sum(ss) / (float)n + eps);
        if (VEC4) {
                for (int i = threadIdx.x; i < n / 4; i += RMSNORM_THREADS) {
                        const float4 v = ((const float4 *)xr)[i];
                        const float4 g = __ldg((const float4 *)w + i);
                        out_store<OUT>::store4(y, row / 4 + i,
                                               make_float4(v.x * scale * g.x, v.y * scale * g.y,
                                                           v.z * scale * g.z, v.w * scale * g.w));
                }
        } else {
                for (int i = threadIdx.x; i < n; i += RMSNORM_THREADS)
                        out_store<OUT>::store1(y, row + i, xr[i] * scale * w[i]);
        }
}

static bool rms_args_ok(const float *x, const float *w, const void *y, int n, int ntok, float eps)
{
        return x && w && y && n > 0 && ntok > 0 && eps >= 0.0f;
}

template <int OUT>
static cudaError_t rms_launch(bool vec4, const float *x, const float *w, void *y, int n, int ntok, float eps,
                              cudaStream_t stream, bool pdl)
{
        return cuda_launch(pdl, vec4 ? rmsnorm_kernel<true, OUT> : rmsnorm_kernel<false, OUT>, ntok,
                           RMSNORM_THREADS, 0, stream, x, w, y, n, eps);
}

int cuda_rmsnorm(const float *x, const float *w, float *y, int n, int ntok, float eps,
                 cudaStream_t stream, bool pdl)
{
        if (!rms_args_ok(x, w, y, n, ntok, eps))
                return -EINVAL;
        const bool vec4 = n % 4 == 0 && ((uintptr_t)x | (uintptr_t)w | (uintptr_t)y) % 16 == 0;
        return CUDA_CHECK(rms_launch<0>(vec4, x, w, y, n, ntok, eps, stream, pdl));
}

int cuda_rmsnorm_w16(const float *x, const float *w, void *y, uint32_t wtype, int n, int ntok, float eps,
                     cudaStream_t stream, bool pdl)
{
        if (!rms_args_ok(x, w, y, n, ntok, eps) || (wtype != CUDA_WTYPE_BF16 && wtype != CUDA_WTYPE_F16))
                return -EINVAL;
        /* y's rows start 8-byte aligned when n % 4 == 0 and y is */
        const bool vec4 = n % 4 == 0 && ((uintptr_t)x | (uintptr_t)w) % 16 == 0 && (uintptr_t)y % 8 == 0;
        return CUDA_CHECK(wtype == CUDA_WTYPE_BF16
                                  ? rms_launch<CUDA_WTYPE_BF16>(vec4, x, w, y, n, ntok, eps, stream, pdl)
                                  : rms_launch<CUDA_WTYPE_F16>(vec4, x, w, y, n, ntok, eps, stream, pdl));
}

static __global__ void rmsnorm_ref_kernel(const float *x, const float *w, float *y, int n,
                                          int ntok, float eps)
{
        const int t = blockIdx.x * blockDim.x + threadIdx.x;
        if (t >= ntok)
                return;
        float ss = 0.0f;
        for (int i = 0; i < n; i++)
                ss += x[(size_t)t * n + i] * x[(size_t)t * n + i];
        const float scale = 1.0f / sqrtf(ss / (float)n + eps);
        for (int i = 0; i < n; i++)
                y[(size_t)t * n + i] = x[(size_t)t * n + i] * scale * w[i];
}

int cuda_rmsnorm_ref(const float *x, const float *w, float *y, int n, int ntok, float eps,
                     cudaStream_t stream)
{
        if (!x || !w || !y || n <= 0 || ntok <= 0 || !(eps >= 0.0f))
                return -EINVAL;
        rmsnorm_ref_kernel<<<(ntok + 63) / 64, 64, 0, stream>>>(x, w, y, n, ntok, eps);
        return CUDA_CHECK_LAUNCH();
}
