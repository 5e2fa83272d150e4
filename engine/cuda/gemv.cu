/* gemv.cu — decode GEMV for F16/BF16 weights (gemv.cuh). Memory-bound by design: a block of
 * GEMV_WARPS warps owns R consecutive rows and splits k among its warps; each lane streams
 * 16-byte weight vectors (8 elements) with R·U loads in flight, and reuses every activation
 * vector it loads (through L1) for all R rows; partial sums meet in shared memory.
 * cuda_gemv_fused applies an RMSNorm or a gated activation to each activation as it is
 * loaded (template parameter PRO; PRO_NONE is cuda_gemv_beta itself): one launch instead of
 * two, and bitwise the same result, since each row's sum runs in the same order whatever
 * R, U or PRO are (thread (warp, lane) owns k0 ≡ (warp·32 + lane)·8 mod STRIDE, in k order;
 * warps meet in warp order). */
#include <limits.h>

#include <algorithm>
#include <atomic>

#include "gemv_dev.cuh"
#include "ops.cuh" /* enum cuda_act */
#include "qkv_dev.cuh"

/* ---- fast kernel ---- */

/* acc[r] += Σ_{j<8} w[r][j] · xv[j], xv rounded first. */
template <int WTYPE, int R>
static __device__ __forceinline__ void round_fma(float (&acc)[R], const float (&wf)[R][GEMV_VEC],
                                                 float (&xv)[GEMV_VEC])
{
        /* Activations rounded to the weight's type, as the CPU backend (ggml's
         * vec_dot_type) and the cuBLASLt path do: the products are then exact and
         * the backends differ only in summation order. */
#pragma unroll
        for (int j = 0; j < GEMV_VEC; j++)
                xv[j] = round_act<WTYPE>(xv[j]);
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
                for (int j = 0; j < GEMV_VEC; j++)
                        acc[r] = fmaf(wf[r][j], xv[j], acc[r]);
}

/* acc[t][r] += Σ_{j<8} w[r][j] · f(x)[t][k0 + j] for one 16-byte vector per row. */
template <int WTYPE, int T, int R, int PRO>
static __device__ __forceinline__ void gemv_vec(float (&acc)[T][R], const uint4 (&wv)[R],
                                                const float *__restrict__ x, int k, int k0,
                                                const float (&scale)[T],
                                                const float *__restrict__ norm_w)
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
        float gw[GEMV_VEC];
        if constexpr (PRO == CUDA_GEMV_PRO_RMSNORM) {
                const float4 a = __ldg((const float4 *)(norm_w + k0)),
                             b = __ldg((const float4 *)(norm_w + k0) + 1);
                const float g[GEMV_VEC] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                for (int j = 0; j < GEMV_VEC; j++)
                        gw[j] = g[j];
        }
#pragma unroll
        for (int t = 0; t < T; t++) {
                /* (PRO_NONE spelled out: this exact form keeps cuda_gemv's code as it was) */
                if constexpr (PRO == CUDA_GEMV_PRO_NONE) {
                        const float4 *xp = (const float4 *)(x + (size_t)t * k + k0);
                        const float4 a = __ldg(xp), b = __ldg(xp + 1);
                        float xv[GEMV_VEC] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
                        round_fma<WTYPE, R>(acc[t], wf, xv);
                } else {
                        float xv[GEMV_VEC];
                        load_act<PRO>(xv, x, k, t, k0, PRO == CUDA_GEMV_PRO_RMSNORM ? scale[t] : 1.0f,
                                      gw);
                        round_fma<WTYPE, R>(acc[t], wf, xv);
                }
        }
}

/* The weight vectors of one step at k0 (u < U with k0 + u·STRIDE < k) of the rows from row0. */
template <int R, int U>
static __device__ __forceinline__ void load_step(uint4 (&wv)[U][R], const uint16_t *w, int rows,
                                                 int k, int row0, int k0)
{
        constexpr int STRIDE = GEMV_THREADS * GEMV_VEC;
#pragma unroll
        for (int u = 0; u < U; u++)
                if (k0 + u * STRIDE < k)
#pragma unroll
                        for (int r = 0; r < R; r++)
                                wv[u][r] = ld_stream_u4(w + (size_t)min(row0 + r, rows - 1) * k +
                                                        k0 + u * STRIDE);
}

/* acc += the products of one step's weight vectors wv (loaded by load_step at k0). */
template <int WTYPE, int T, int R, int U, int PRO>
static __device__ __forceinline__ void gemv_step(float (&acc)[T][R], const uint4 (&wv)[U][R],
                                                 const float *__restrict__ x, int k, int k0,
                                                 const float (&scale)[T], const float *__restrict__ norm_w)
{
        constexpr int STRIDE = GEMV_THREADS * GEMV_VEC;
#pragma unroll
        for (int u = 0; u < U; u++)
                if (k0 + u * STRIDE < k)
                        gemv_vec<WTYPE, T, R, PRO>(acc, wv[u], x, k, k0 + u * STRIDE, scale, norm_w);
}

/* Rows per block: more rows share each activation load (L1 traffic per weight byte is
 * 2T/R); fewer keep accumulators in registers and enough blocks for small row counts.
 * U: vectors per row in flight per lane, so R·U ≥ 8 independent 16-byte loads. */
template <int T> struct gemv_shape {
        static constexpr int R = T <= 4 ? 2 : 4;
        static constexpr int U = T <= 4 ? 4 : 2;
};

/* The rest of a row group's sums from this thread's k0 on: U vectors a row a step while
 * they all fit, then one at a time (ascending k, so the order gemv_kernel's rows have). */
template <int WTYPE, int T, int R, int U>
static __device__ __forceinline__ void gemv_rows(float (&acc)[T][R], const uint16_t *const (&wr)[R],
                                                 const float *__restrict__ x, int k, int k0)
{
        constexpr int STRIDE = GEMV_THREADS * GEMV_VEC;
        float scale[T]; /* (unused: gemv_vec's RMSNORM argument) */
        for (; k0 + (U - 1) * STRIDE < k; k0 += U * STRIDE) {
                uint4 wv[U][R];
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                        for (int r = 0; r < R; r++)
                                wv[u][r] = ld_stream_u4(wr[r] + k0 + u * STRIDE);
#pragma unroll
                for (int u = 0; u < U; u++)
                        gemv_vec<WTYPE, T, R, CUDA_GEMV_PRO_NONE>(acc, wv[u], x, k, k0 + u * STRIDE,
                                                                  scale, NULL);
        }
        for (; k0 < k; k0 += STRIDE) {
                uint4 wv[R];
#pragma unroll
                for (int r = 0; r < R; r++)
                        wv[r] = ld_stream_u4(wr[r] + k0);
                gemv_vec<WTYPE, T, R, CUDA_GEMV_PRO_NONE>(acc, wv, x, k, k0, scale, NULL);
        }
}

template <int WTYPE, int T>
static __global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const uint16_t *__restrict__ w, const float *__restrict__ x, float *__restrict__ y,
            int rows, int k, int accumulate)
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

        float scale[T]; /* (unused: gemv_vec's RMSNORM argument) */
        int k0 = (warp * 32 + lane) * GEMV_VEC;
        /* Under programmatic dependent launch (common.cuh) the block may be resident before
         * the kernel it follows has finished: it loads its first step of weights, then waits
         * for x (the same order of sums as the loops below) */
        pdl_trigger();
        {
                uint4 wv[U][R];
                load_step<R, U>(wv, w, rows, k, row0, k0);
                pdl_wait();
                gemv_step<WTYPE, T, R, U, CUDA_GEMV_PRO_NONE>(acc, wv, x, k, k0, scale, NULL);
                k0 += U * STRIDE;
        }
        gemv_rows<WTYPE, T, R, U>(acc, wr, x, k, k0);

        __shared__ float part[GEMV_WARPS][T * R];
        block_sum_store<T, R>(acc, part, y, rows, row0, accumulate);
}

/* ---- fused kernel: prologue + product ---- */

/* RMSNORM: gemv_shape. GLU: every block evaluates act() on all T·k of its inputs (expf or
 * tanhf and a division, two MUFU ops each), T/(2R) evaluations per weight byte, so blocks
 * take as many rows as the registers allow without spilling (tanh-GELU is the tighter:
 * beyond 8 tokens it needs all 255 registers even at R = 2, U = 1). R = 16 for one token
 * fits too but measured slower on H200 (15.1 vs 13.4 µs, 1B down). MINB, the minimum
 * blocks per SM of __launch_bounds__: 1 lifts ptxas's own register target (without it, it
 * spills to fit three or four blocks), 3 keeps three blocks where that fits, 0 leaves ptxas
 * alone (the RMSNORM kernels for ≤ 4 tokens fit in 64 to 96 registers). */
template <int T, int PRO> struct fused_shape {
        static constexpr bool GLU = PRO == CUDA_GEMV_PRO_GLU_SILU || PRO == CUDA_GEMV_PRO_GLU_GELU;
        static constexpr int R = !GLU ? gemv_shape<T>::R : T <= 4 ? 8 : T <= 8 ? 6 : 2;
        static constexpr int U = !GLU ? gemv_shape<T>::U : 1;
        static constexpr int MINB = GLU ? 1 : T <= 4 ? 0 : T <= 7 ? 3 : 1;
        static_assert(T * R <= GEMV_THREADS, "one thread per output in the final sum");
};


/* gemv_kernel with f applied to x, and persistent: block b takes row groups b, b + gridDim.x,
 * … so RMSNORM's scales (a pass over the tokens' x rows, two barriers) are computed once per
 * block, not once per group. A group visits k0 = kb, kb + STRIDE, … in ascending order as
 * gemv_kernel's two loops do (here one loop of U-vector steps, the last one partial), so each
 * output is bitwise gemv_kernel's on f(x). A group's first step is loaded early: for the
 * block's first group before the scales are computed, for the others before the previous
 * group's final sum, so those latencies overlap. */
template <int WTYPE, int T, int PRO>
static __global__ void __launch_bounds__(GEMV_THREADS, (fused_shape<T, PRO>::MINB))
gemv_fused_kernel(const uint16_t *__restrict__ w, const float *__restrict__ x,
                  float *__restrict__ y, int rows, int k, int accumulate,
                  const float *__restrict__ norm_w, float eps)
{
        constexpr int R = fused_shape<T, PRO>::R, U = fused_shape<T, PRO>::U;
        constexpr int STRIDE = GEMV_THREADS * GEMV_VEC;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int groups = (rows + R - 1) / R;
        const int kb = (warp * 32 + lane) * GEMV_VEC; /* this lane's first k */

        pdl_trigger();
        uint4 wv[U][R];
        load_step<R, U>(wv, w, rows, k, blockIdx.x * R, kb);
        pdl_wait();
        float scale[T];
        if constexpr (PRO == CUDA_GEMV_PRO_RMSNORM)
                rms_scales<T>(x, k, eps, scale);

        __shared__ float part[GEMV_WARPS][T * R];
        for (int g = blockIdx.x; g < groups; g += gridDim.x) {
                const int row0 = g * R;
                float acc[T][R];
#pragma unroll
                for (int t = 0; t < T; t++)
#pragma unroll
                        for (int r = 0; r < R; r++)
                                acc[t][r] = 0.0f;
                for (int k0 = kb;;) {
                        gemv_step<WTYPE, T, R, U, PRO>(acc, wv, x, k, k0, scale, norm_w);
                        k0 += U * STRIDE;
                        if (k0 >= k)
                                break;
                        load_step<R, U>(wv, w, rows, k, row0, k0);
                }
                if (g + (int)gridDim.x < groups)
                        load_step<R, U>(wv, w, rows, k, (g + gridDim.x) * R, kb);

                block_sum_store<T, R>(acc, part, y, rows, row0, accumulate);
                __syncthreads(); /* part is the next group's */
        }
}

/* ---- launch ---- */

template <int WTYPE, int T>
static cudaError_t gemv_launch(const void *w, const float *x, float *y, int rows, int k, int acc,
                               cudaStream_t stream, bool pdl)
{
        constexpr int R = gemv_shape<T>::R;
        const unsigned blocks = (unsigned)((rows + R - 1) / R);
        return cuda_launch(pdl, gemv_kernel<WTYPE, T>, blocks, GEMV_THREADS, 0, stream, (const uint16_t *)w, x, y,
                           rows, k, acc);
}

/* Blocks for the persistent kernel: as many as fit on the device at once (its occupancy,
 * asked once per kernel), never more than there are groups. Plain queries, no stream work:
 * fine inside graph capture. On any failure, one block per group (still correct). */
template <int WTYPE, int T, int PRO>
static cudaError_t fused_launch(const void *w, const float *x, float *y, int rows, int k, int acc,
                                const float *norm_w, float eps, cudaStream_t stream, bool pdl)
{
        constexpr int R = fused_shape<T, PRO>::R;
        const int groups = (rows + R - 1) / R;
        static std::atomic<int> per_sm{0};
        int n = per_sm.load(std::memory_order_relaxed);
        if (n == 0) {
                if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                            &n, gemv_fused_kernel<WTYPE, T, PRO>, GEMV_THREADS, 0) != cudaSuccess ||
                    n <= 0) {
                        (void)cudaGetLastError();
                        n = -1;
                }
                per_sm.store(n, std::memory_order_relaxed);
        }
        int dev = 0, sms = 0, blocks = groups;
        if (n > 0 && cudaGetDevice(&dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess &&
            sms > 0)
                blocks = (int)std::min<long long>(groups, (long long)sms * n);
        else
                (void)cudaGetLastError();
        return cuda_launch(pdl, gemv_fused_kernel<WTYPE, T, PRO>, (unsigned)blocks, GEMV_THREADS, 0, stream,
                           (const uint16_t *)w, x, y, rows, k, acc, norm_w, eps);
}

template <int WTYPE, int T>
static cudaError_t launch_p(int pro, const void *w, const float *x, float *y, int rows, int k, int acc,
                            const float *norm_w, float eps, cudaStream_t s, bool pdl)
{
        switch (pro) {
        case CUDA_GEMV_PRO_NONE:
                return gemv_launch<WTYPE, T>(w, x, y, rows, k, acc, s, pdl);
        case CUDA_GEMV_PRO_RMSNORM:
                return fused_launch<WTYPE, T, CUDA_GEMV_PRO_RMSNORM>(w, x, y, rows, k, acc, norm_w, eps, s, pdl);
        case CUDA_GEMV_PRO_GLU_SILU:
                return fused_launch<WTYPE, T, CUDA_GEMV_PRO_GLU_SILU>(w, x, y, rows, k, acc, norm_w, eps, s, pdl);
        default:
                return fused_launch<WTYPE, T, CUDA_GEMV_PRO_GLU_GELU>(w, x, y, rows, k, acc, norm_w, eps, s, pdl);
        }
}

template <int WTYPE>
static cudaError_t gemv_launch_t(int ntok, int pro, const void *w, const float *x, float *y, int rows, int k,
                                 int acc, const float *norm_w, float eps, cudaStream_t s, bool pdl)
{
        switch (ntok) {
#define GEMV_CASE(T)                                                                           \
        case T:                                                                                \
                return launch_p<WTYPE, T>(pro, w, x, y, rows, k, acc, norm_w, eps, s, pdl);
                GEMV_CASE(1) GEMV_CASE(2) GEMV_CASE(3) GEMV_CASE(4)
                GEMV_CASE(5) GEMV_CASE(6) GEMV_CASE(7) GEMV_CASE(8)
                GEMV_CASE(9) GEMV_CASE(10) GEMV_CASE(11) GEMV_CASE(12)
                GEMV_CASE(13) GEMV_CASE(14) GEMV_CASE(15) GEMV_CASE(16)
#undef GEMV_CASE
        }
        return cudaErrorInvalidValue;
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
        return cuda_gemv_fused(wtype, w, x, y, rows, k, ntok, 0.0f, NULL, stream);
}

int cuda_gemv_beta(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                   int ntok, float beta, cudaStream_t stream, bool pdl)
{
        return cuda_gemv_fused(wtype, w, x, y, rows, k, ntok, beta, NULL, stream, pdl);
}

int cuda_gemv_fused(uint32_t wtype, const void *w, const float *x, float *y, int rows, int k,
                    int ntok, float beta, const struct cuda_gemv_prologue *pro,
                    cudaStream_t stream, bool pdl)
{
        if (beta != 0.0f && beta != 1.0f)
                return -EINVAL;
        const int acc = beta != 0.0f;
        if (!gemv_args_ok(wtype, w, x, y, rows, k, ntok))
                return -EINVAL;
        /* 16-byte vectors: every row and every activation row starts 16-byte aligned */
        if (k % GEMV_VEC || ((uintptr_t)w | (uintptr_t)x) % 16)
                return -EINVAL;
        const int kind = pro ? pro->kind : CUDA_GEMV_PRO_NONE;
        const float *norm_w = NULL;
        float eps = 0.0f;
        switch (kind) {
        case CUDA_GEMV_PRO_NONE:
        case CUDA_GEMV_PRO_GLU_SILU:
        case CUDA_GEMV_PRO_GLU_GELU:
                break;
        case CUDA_GEMV_PRO_RMSNORM:
                /* aligned: cuda_rmsnorm's float4 path, whose reduction order this one is */
                if (!pro->norm_w || (uintptr_t)pro->norm_w % 16 || !(pro->eps >= 0.0f))
                        return -EINVAL;
                norm_w = pro->norm_w;
                eps = pro->eps;
                break;
        default:
                return -EINVAL;
        }
        const cudaError_t e = wtype == CUDA_WTYPE_BF16
                                      ? gemv_launch_t<CUDA_WTYPE_BF16>(ntok, kind, w, x, y, rows, k, acc, norm_w,
                                                                       eps, stream, pdl)
                                      : gemv_launch_t<CUDA_WTYPE_F16>(ntok, kind, w, x, y, rows, k, acc, norm_w,
                                                                      eps, stream, pdl);
        return CUDA_CHECK(e);
}

/* ---- one-token products with an epilogue on row pairs ----
 *
 * Block p computes two rows that its epilogue needs together, with gemv_kernel's per-row
 * summation order (T = 1, R = 2, U = 4: the same loads, FMAs and block sum), so the values
 * are bitwise cuda_gemv's, then applies what a separate kernel would have:
 *   GLU: rows p (gate) and n + p (up) of the gate/up matrix, out[p] = act(gate) · up, as
 *        cuda_glu does (act.cuh);
 *   QKV: a RoPE pair of a Q or K head (dims (j, j + n_rot/2) for NEOX, (2j, 2j + 1)
 *        otherwise; the dims past n_rot and V's in adjacent pairs), then bias, rotation,
 *        Q scale and the K/V cache write exactly as cuda_qkv_post (qkv_dev.cuh).
 * The one-block-per-pair launch is gemv_kernel's at T = 1 (rows / 2 blocks). */

enum { EPI_GLU_SILU, EPI_GLU_GELU, EPI_QKV };

struct pair_args {
        float *out;               /* GLU: n floats */
        int n;                    /* GLU: rows of each half; QKV: pairs */
        struct cuda_qkv_args qa;  /* QKV */
        float theta_scale;        /* QKV: rope_theta_scale(&qa) */
};

/* Where pair p of a Q/K/V product lies: rows r0, r1 of the product (= offsets in the token's
 * qkv row), kind 0 Q, 1 K, 2 V, head h, dims d0, d1 in the head, RoPE pair rot (-1: none). */
struct qkv_pair {
        int r0, r1, kind, h, d0, d1, rot;
};

static __device__ __forceinline__ struct qkv_pair qkv_pair_of(const struct cuda_qkv_args &a, int p)
{
        const int QD = a.n_head * a.dk, KD = a.n_head_kv * a.dk;
        struct qkv_pair q;
        int j, base;
        if (2 * p < QD) {
                q.kind = 0, q.h = p / (a.dk / 2), j = p % (a.dk / 2), base = q.h * a.dk;
        } else if (2 * p < QD + KD) {
                const int i = p - QD / 2;
                q.kind = 1, q.h = i / (a.dk / 2), j = i % (a.dk / 2), base = QD + q.h * a.dk;
        } else {
                const int i = p - (QD + KD) / 2;
                q.kind = 2, q.h = i / (a.dv / 2), j = i % (a.dv / 2), base = QD + KD + q.h * a.dv;
        }
        const int half = a.n_rot / 2;
        const bool qk = q.kind < 2;
        if (qk && a.neox && j < half) { /* NEOX rotates dims j and j + n_rot/2 */
                q.d0 = j, q.d1 = j + half, q.rot = j;
        } else { /* adjacent dims: V, NORM (rotated while j < n_rot/2), NEOX's unrotated tail */
                q.d0 = qk && a.neox ? a.n_rot + 2 * (j - half) : 2 * j;
                q.d1 = q.d0 + 1;
                q.rot = qk && !a.neox && j < half ? j : -1;
        }
        q.r0 = base + q.d0;
        q.r1 = base + q.d1;
        return q;
}

/* qkv_post_kernel's steps for one pair (no head norms: the caller refuses them) */
static __device__ __forceinline__ void qkv_epilogue(const struct pair_args &pa, const struct qkv_pair &q, float x0,
                                                    float x1)
{
        const struct cuda_qkv_args &a = pa.qa;
        const int dim = q.kind == 2 ? a.dv : a.dk;
        if (a.bq) {
                const float *bias = (q.kind == 0 ? a.bq : q.kind == 1 ? a.bk : a.bv) + q.h * dim;
                x0 = x0 + bias[q.d0];
                x1 = x1 + bias[q.d1];
        }
        if (q.rot >= 0) {
                const float th = rope_angle(a, pa.theta_scale, a.map.pos[0], q.rot);
                rope_rotate(x0, x1, cosf(th), sinf(th));
        }
        float *x = a.qkv;
        if (q.kind == 0) {
                const float qs = a.q_scale;
                x[q.r0] = qs != 1.0f ? x0 * qs : x0;
                x[q.r1] = qs != 1.0f ? x1 * qs : x1;
                return;
        }
        x[q.r0] = x0;
        x[q.r1] = x1;
        const long long r = qkv_cache_row(a, 0);
        if (r < 0)
                return;
        __half *c = q.kind == 1 ? a.k_cache + r * (a.n_head_kv * a.dk) + q.h * a.dk
                                : a.v_cache + r * (a.n_head_kv * a.dv) + q.h * a.dv;
        c[q.d0] = __float2half_rn(x0);
        c[q.d1] = __float2half_rn(x1);
}

template <int WTYPE, int EPI>
static __global__ void __launch_bounds__(GEMV_THREADS)
gemv_pair_kernel(const uint16_t *__restrict__ w, const float *__restrict__ x, int k, const struct pair_args a)
{
        constexpr int R = 2, U = gemv_shape<1>::U;
        static_assert(gemv_shape<1>::R == R, "one token: pairs are gemv_kernel's row groups");
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, p = blockIdx.x;
        struct qkv_pair q;
        int r0, r1;
        if constexpr (EPI == EPI_QKV) {
                q = qkv_pair_of(a.qa, p);
                r0 = q.r0, r1 = q.r1;
        } else {
                r0 = p, r1 = a.n + p;
        }
        const uint16_t *const wr[R] = {w + (size_t)r0 * k, w + (size_t)r1 * k};
        float acc[1][R] = {{0.0f, 0.0f}};
        pdl_trigger(); /* a kernel after this one may be launched early (it waits for this one) */
        gemv_rows<WTYPE, 1, R, U>(acc, wr, x, k, (warp * 32 + lane) * GEMV_VEC);
        /* block_sum_store's sums, both rows in thread 0 */
        __shared__ float part[GEMV_WARPS][R];
#pragma unroll
        for (int r = 0; r < R; r++) {
                const float s = warp_sum(acc[0][r]);
                if (lane == 0)
                        part[warp][r] = s;
        }
        __syncthreads();
        if (threadIdx.x != 0)
                return;
        float v[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < GEMV_WARPS; i++)
                        s += part[i][r];
                v[r] = s;
        }
        if constexpr (EPI == EPI_QKV)
                qkv_epilogue(a, q, v[0], v[1]);
        else
                a.out[p] = (EPI == EPI_GLU_GELU ? act_gelu(v[0]) : act_silu(v[0])) * v[1];
}

template <int EPI>
static int pair_launch(uint32_t wtype, const void *w, const float *x, int k, unsigned blocks,
                       const struct pair_args &a, cudaStream_t s)
{
        if (wtype == CUDA_WTYPE_BF16)
                gemv_pair_kernel<CUDA_WTYPE_BF16, EPI><<<blocks, GEMV_THREADS, 0, s>>>((const uint16_t *)w, x, k, a);
        else
                gemv_pair_kernel<CUDA_WTYPE_F16, EPI><<<blocks, GEMV_THREADS, 0, s>>>((const uint16_t *)w, x, k, a);
        return CUDA_CHECK_LAUNCH();
}

int cuda_gemv_glu(uint32_t wtype, int act, const void *w, const float *x, float *out, int n, int k,
                  cudaStream_t stream)
{
        if (!gemv_args_ok(wtype, w, x, out, n, k, 1) || (act != CUDA_ACT_SILU && act != CUDA_ACT_GELU) ||
            n > INT_MAX / 2)
                return -EINVAL;
        if (k % GEMV_VEC || ((uintptr_t)w | (uintptr_t)x) % 16)
                return -EINVAL;
        struct pair_args a;
        memset(&a, 0, sizeof(a));
        a.out = out;
        a.n = n;
        return act == CUDA_ACT_GELU ? pair_launch<EPI_GLU_GELU>(wtype, w, x, k, (unsigned)n, a, stream)
                                    : pair_launch<EPI_GLU_SILU>(wtype, w, x, k, (unsigned)n, a, stream);
}

int cuda_gemv_qkv(uint32_t wtype, const void *w, const float *x, int k, const struct cuda_qkv_args *qa,
                  cudaStream_t stream)
{
        const int r = cuda_qkv_check(qa);
        if (r < 0)
                return r;
        if (qa->ntok != 1)
                return -EINVAL;
        if (qa->q_norm || qa->k_norm)
                return -EOPNOTSUPP; /* a head's norm needs the whole head: cuda_qkv_post */
        const long long rows = (long long)qa->n_head * qa->dk + (long long)qa->n_head_kv * (qa->dk + qa->dv);
        if (!gemv_args_ok(wtype, w, x, qa->qkv, (int)rows, k, 1) || k % GEMV_VEC ||
            ((uintptr_t)w | (uintptr_t)x) % 16)
                return -EINVAL;
        struct pair_args a;
        memset(&a, 0, sizeof(a));
        a.n = (int)(rows / 2);
        a.qa = *qa;
        a.theta_scale = rope_theta_scale(qa);
        return pair_launch<EPI_QKV>(wtype, w, x, k, (unsigned)a.n, a, stream);
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
                s += w_to_float<WTYPE>(w + (size_t)r * k + i) * round_act<WTYPE>(x[(size_t)t * k + i]);
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
