/* gemv.cu — decode GEMV for F16/BF16 weights (gemv.cuh). Memory-bound by design: a block of
 * GEMV_WARPS warps owns R consecutive rows and splits k among its warps; each lane streams
 * 16-byte weight vectors (8 elements) with R·U loads in flight, and reuses every activation
 * vector it loads (through L1) for all R rows; partial sums meet in shared memory. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common.cuh"
#include "gemv.cuh"

#define GEMV_WARPS 4
#define GEMV_THREADS (GEMV_WARPS * 32)
#define GEMV_VEC 8 /* weight elements per 16-byte load */

/* ---- element conversion ---- */

/* Two packed weights (low element first) to floats. BF16 is the top half of an f32. */
template <int WTYPE> static __device__ __forceinline__ float2 w2_to_float2(uint32_t u);

template <> __device__ __forceinline__ float2 w2_to_float2<CUDA_WTYPE_BF16>(uint32_t u)
{
        return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

template <> __device__ __forceinline__ float2 w2_to_float2<CUDA_WTYPE_F16>(uint32_t u)
{
        __half2 h;
        memcpy(&h, &u, sizeof(h));
        return __half22float2(h);
}

template <int WTYPE> static __device__ __forceinline__ float w_to_float(const uint16_t *p);
template <> __device__ __forceinline__ float w_to_float<CUDA_WTYPE_BF16>(const uint16_t *p)
{
        return __uint_as_float((uint32_t)*p << 16);
}
template <> __device__ __forceinline__ float w_to_float<CUDA_WTYPE_F16>(const uint16_t *p)
{
        return __half2float(__ushort_as_half(*p));
}

/* ---- fast kernel ---- */

/* acc[t][r] += Σ_{j<8} w[r][j] · x[t][k0 + j] for one 16-byte vector per row. */
template <int WTYPE, int T, int R>
static __device__ __forceinline__ void gemv_vec(float (&acc)[T][R], const uint4 (&wv)[R],
                                                const float *__restrict__ x, int k, int k0)
{
        float wf[R][GEMV_VEC];
#pragma unroll
        for (int r = 0; r < R; r++) {
                const uint32_t u[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        const float2 f = w2_to_float2<WTYPE>(u[j]);
                        wf[r][2 * j] = f.x;
                        wf[r][2 * j + 1] = f.y;
                }
        }
#pragma unroll
        for (int t = 0; t < T; t++) {
                const float4 *xp = (const float4 *)(x + (size_t)t * k + k0);
                const float4 a = __ldg(xp), b = __ldg(xp + 1);
                const float xv[GEMV_VEC] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                        for (int j = 0; j < GEMV_VEC; j++)
                                acc[t][r] = fmaf(wf[r][j], xv[j], acc[t][r]);
        }
}

/* Rows per block: more rows share each activation load (L1 traffic per weight byte is
 * 2T/R); fewer keep accumulators in registers and enough blocks for small row counts.
 * U: vectors per row in flight per lane, so R·U ≥ 8 independent 16-byte loads. */
template <int T> struct gemv_shape {
        static constexpr int R = T <= 4 ? 2 : 4;
        static constexpr int U = T <= 4 ? 4 : 2;
};

template <int WTYPE, int T>
static __global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const uint16_t *__restrict__ w, const float *__restrict__ x, float *__restrict__ y,
            int rows, int k)
{
        constexpr int R = gemv_shape<T>::R, U = gemv_shape<T>::U;
        constexpr int STRIDE = GEMV_THREADS * GEMV_VEC; /* elements the block covers per step */
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int row0 = blockIdx.x * R;

        const uint16_t *wr[R];
#pragma unroll
        for (int r = 0; r < R; r++) /* a partial last group re-reads the last row, never past */
                wr[r] = w + (size_t)min(row0 + r, rows - 1) * k;

        float acc[T][R];
#pragma unroll
        for (int t = 0; t < T; t++)
#pragma unroll
                for (int r = 0; r < R; r++)
                        acc[t][r] = 0.0f;

        int k0 = (warp * 32 + lane) * GEMV_VEC;
        for (; k0 + (U - 1) * STRIDE < k; k0 += U * STRIDE) {
                uint4 wv[U][R];
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                        for (int r = 0; r < R; r++)
                                wv[u][r] = ld_stream_u4(wr[r] + k0 + u * STRIDE);
#pragma unroll
                for (int u = 0; u < U; u++)
                        gemv_vec<WTYPE, T, R>(acc, wv[u], x, k, k0 + u * STRIDE);
        }
        for (; k0 < k; k0 += STRIDE) {
                uint4 wv[R];
#pragma unroll
                for (int r = 0; r < R; r++)
                        wv[r] = ld_stream_u4(wr[r] + k0);
                gemv_vec<WTYPE, T, R>(acc, wv, x, k, k0);
        }

        __shared__ float part[GEMV_WARPS][T * R];
#pragma unroll
        for (int t = 0; t < T; t++)
#pragma unroll
                for (int r = 0; r < R; r++) {
                        const float s = warp_sum(acc[t][r]);
                        if (lane == 0)
                                part[warp][t * R + r] = s;
                }
        __syncthreads();
        if (threadIdx.x < T * R) {
                const int t = threadIdx.x / R, r = threadIdx.x % R;
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < GEMV_WARPS; i++)
                        s += part[i][threadIdx.x];
                if (row0 + r < rows)
                        y[(size_t)t * rows + row0 + r] = s;
        }
}

template <int WTYPE, int T>
static void gemv_launch(const void *w, const float *x, float *y, int rows, int k,
                        cudaStream_t stream)
{
        constexpr int R = gemv_shape<T>::R;
        const unsigned blocks = (unsigned)((rows + R - 1) / R);
        gemv_kernel<WTYPE, T><<<blocks, GEMV_THREADS, 0, stream>>>((const uint16_t *)w, x, y,
                                                                  rows, k);
}

template <int WTYPE>
static void gemv_launch_t(int ntok, const void *w, const float *x, float *y, int rows, int k,
                          cudaStream_t s)
{
        switch (ntok) {
#define GEMV_CASE(T)                                                                           \
        case T:                                                                                \
                gemv_launch<WTYPE, T>(w, x, y, rows, k, s);                                    \
                break;
                GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4)
                GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
                GEMV_CASE(9) GEMV_CASE(10) GEMV_CASE(11) GEMV_CASE(12)
                GEMV_CASE(13) GEMV_CASE(14) GEMV_CASE(15) GEMV_CASE(16)
#undef GEMV_CASE
        }
}

static int gemv_args_ok(uint32_t wtype, const void *w, const float *x, const float *y, int rows,
                        int k, int ntok)
{
        if (wtype != CUDA_WTYPE_F16 && wtype != CUDA_WTYPE_BF16)
                return 0;
        if (!w || !x || !y || rows <= 0 || k <= 0 || ntok < 1 || ntok > CUDA_GEMV_MAX_TOKENS)
                return 0;
        return 1;
}

int cuda_gemv(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k, int ntok,
              cudaStream_t stream)
{
        if (!gemv_args_ok(wtype, w, x, y, rows, k, ntok))
                return -EINVAL;
        /* 16-byte vectors: every row and every activation row starts 16-byte aligned */
        if (k % GEMV_VEC || ((uintptr_t)w | (uintptr_t)x) % 16)
                return -EINVAL;
        if (wtype == CUDA_WTYPE_BF16)
                gemv_launch_t<CUDA_WTYPE_BF16>(ntok, w, x, y, rows, k, stream);
        else
                gemv_launch_t<CUDA_WTYPE_F16>(ntok, w, x, y, rows, k, stream);
        return CUDA_CHECK_LAUNCH();
}

/* ---- plain reference ---- */

template <int WTYPE>
static __global__ void gemv_ref_kernel(const uint16_t *w, const float *x, float *y, int rows,
                                       int k)
{
        const int r = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
        if (r >= rows)
                return;
        float s = 0.0f;
        for (int i = 0; i < k; i++)
                s += w_to_float<WTYPE>(w + (size_t)r * k + i) * x[(size_t)t * k + i];
        y[(size_t)t * rows + r] = s;
}

int cuda_gemv_ref(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                  int ntok, cudaStream_t stream)
{
        if (!gemv_args_ok(wtype, w, x, y, rows, k, ntok))
                return -EINVAL;
        const dim3 grid((unsigned)((rows + 127) / 128), (unsigned)ntok);
        if (wtype == CUDA_WTYPE_BF16)
                gemv_ref_kernel<CUDA_WTYPE_BF16>
                        <<<grid, 128, 0, stream>>>((const uint16_t *)w, x, y, rows, k);
        else
                gemv_ref_kernel<CUDA_WTYPE_F16>
                        <<<grid, 128, 0, stream>>>((const uint16_t *)w, x, y, rows, k);
        return CUDA_CHECK_LAUNCH();
}
