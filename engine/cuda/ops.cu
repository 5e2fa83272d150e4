/* ops.cu — the small forward-pass kernels of ops.cuh: embedding lookup, gated activations,
 * residual add with gemma3's post-norm, row gather, logit soft-cap. Elementwise ones run a
 * grid-stride loop over the flattened ntok × n elements (float4 where rows and pointers
 * allow), so one token fills the GPU as well as many; add_norm is block per token. embed, glu
 * and add_norm have plain twins (*_ref: one thread per element, per token for add_norm);
 * gather_rows and softcap are plain enough to check against the CPU alone. */
#include <limits.h>
#include <math.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "act.cuh"
#include "common.cuh"
#include "ops.cuh"
#include "w16.cuh"

#define OPS_THREADS 256
#define OPS_MAX_BLOCKS 4096 /* grid-stride beyond this: ~30 blocks per SM on H100/H200 */
#define REF_THREADS 256

/* GGML type numbers, as ops.cuh documents them */
enum { ETYPE_F32 = 0, ETYPE_F16 = 1, ETYPE_BF16 = 30 };

static unsigned grid_for(size_t work)
{
        size_t b = (work + OPS_THREADS - 1) / OPS_THREADS;
        if (b > OPS_MAX_BLOCKS)
                b = OPS_MAX_BLOCKS;
        return (unsigned)(b ? b : 1);
}

/* One thread per element for the references; 0 when the grid would not fit. */
static unsigned grid_ref(size_t work)
{
        const size_t b = (work + REF_THREADS - 1) / REF_THREADS;
        return b > INT_MAX ? 0u : (unsigned)b;
}

static bool aligned16(const void *p)
{
        return (uintptr_t)p % 16 == 0;
}

/* ---- embedding ---- */

template <int ETYPE> static __device__ __forceinline__ float e_to_float(const void *row, size_t i);
template <> __device__ __forceinline__ float e_to_float<ETYPE_F32>(const void *row, size_t i)
{
        return ((const float *)row)[i];
}
template <> __device__ __forceinline__ float e_to_float<ETYPE_F16>(const void *row, size_t i)
{
        return __half2float(__ushort_as_half(((const uint16_t *)row)[i]));
}
template <> __device__ __forceinline__ float e_to_float<ETYPE_BF16>(const void *row, size_t i)
{
        return __uint_as_float((uint32_t)((const uint16_t *)row)[i] << 16);
}

/* Four consecutive elements starting at 4·v: 16 bytes of F32 or 8 bytes of F16/BF16. */
template <int ETYPE>
static __device__ __forceinline__ float4 e_to_float4(const void *row, size_t v);
template <> __device__ __forceinline__ float4 e_to_float4<ETYPE_F32>(const void *row, size_t v)
{
        return __ldg((const float4 *)row + v);
}
template <> __device__ __forceinline__ float4 e_to_float4<ETYPE_F16>(const void *row, size_t v)
{
        const uint2 u = __ldg((const uint2 *)row + v);
        __half2 h[2];
        memcpy(h, &u, sizeof(h));
        const float2 a = __half22float2(h[0]), b = __half22float2(h[1]);
        return make_float4(a.x, a.y, b.x, b.y);
}
template <> __device__ __forceinline__ float4 e_to_float4<ETYPE_BF16>(const void *row, size_t v)
{
        const uint2 u = __ldg((const uint2 *)row + v);
        return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                           __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}

static __device__ __forceinline__ size_t etype_size(int etype)
{
        return etype == ETYPE_F32 ? 4 : 2;
}

/* VEC: n % 4 == 0, E 16-byte (F32) or 8-byte (F16/BF16) aligned, x 16-byte aligned. */
template <int ETYPE, bool VEC>
static __global__ void __launch_bounds__(OPS_THREADS)
embed_kernel(const void *__restrict__ E, int n_vocab, const int32_t *__restrict__ tok,
             float *__restrict__ x, int n, int ntok, float scale)
{
        pdl_start();
        const size_t stride = (size_t)gridDim.x * blockDim.x;
        const size_t nv = VEC ? (size_t)n / 4 : (size_t)n; /* vectors (or elements) per row */
        const size_t total = nv * (size_t)ntok;
        for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < total; v += stride) {
                const size_t t = v / nv, i = v % nv;
                const int32_t id = __ldg(tok + t);
                const bool ok = id >= 0 && id < n_vocab;
                const size_t row_bytes = (size_t)n * etype_size(ETYPE);
                const void *row = (const char *)E + (ok ? (size_t)id : 0) * row_bytes;
                if (VEC) {
                        float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                        if (ok) {
                                f = e_to_float4<ETYPE>(row, i);
                                f = make_float4(f.x * scale, f.y * scale, f.z * scale, f.w * scale);
                        }
                        ((float4 *)x)[v] = f;
                } else {
                        x[v] = ok ? e_to_float<ETYPE>(row, i) * scale : 0.0f;
                }
        }
}

static bool etype_ok(uint32_t etype)
{
        return etype == ETYPE_F32 || etype == ETYPE_F16 || etype == ETYPE_BF16;
}

static bool embed_args_ok(uint32_t etype, const void *E, int n_vocab, const int32_t *tok,
                          const float *x, int n, int ntok)
{
        return etype_ok(etype) && E && tok && x && n_vocab >= 0 && n >= 0 && ntok >= 0;
}

template <int ETYPE>
static cudaError_t embed_launch(bool vec, const void *E, int n_vocab, const int32_t *tok, float *x,
                                int n, int ntok, float scale, cudaStream_t stream, bool pdl)
{
        const size_t work = (size_t)n * ntok / (vec ? 4 : 1);
        return cuda_launch(pdl, vec ? embed_kernel<ETYPE, true> : embed_kernel<ETYPE, false>, grid_for(work),
                           OPS_THREADS, 0, stream, E, n_vocab, tok, x, n, ntok, scale);
}

int cuda_embed(uint32_t etype, const void *E, int n_vocab, const int32_t *tok, float *x, int n,
               int ntok, float scale, cudaStream_t stream, bool pdl)
{
        if (!embed_args_ok(etype, E, n_vocab, tok, x, n, ntok))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        /* every row starts aligned when the table does and rows are whole vectors */
        const uintptr_t ealign = etype == ETYPE_F32 ? 16 : 8;
        const bool vec = n % 4 == 0 && (uintptr_t)E % ealign == 0 && aligned16(x);
        switch (etype) {
        case ETYPE_F32:
                return CUDA_CHECK(embed_launch<ETYPE_F32>(vec, E, n_vocab, tok, x, n, ntok, scale, stream, pdl));
        case ETYPE_F16:
                return CUDA_CHECK(embed_launch<ETYPE_F16>(vec, E, n_vocab, tok, x, n, ntok, scale, stream, pdl));
        default:
                return CUDA_CHECK(embed_launch<ETYPE_BF16>(vec, E, n_vocab, tok, x, n, ntok, scale, stream, pdl));
        }
}

template <int ETYPE>
static __global__ void embed_ref_kernel(const void *E, int n_vocab, const int32_t *tok, float *x,
                                        int n, size_t total, float scale)
{
        const size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (o >= total)
                return;
        const size_t t = o / (size_t)n, i = o % (size_t)n;
        const int32_t id = tok[t];
        if (id < 0 || id >= n_vocab) {
                x[o] = 0.0f;
                return;
        }
        const void *row = (const char *)E + (size_t)id * (size_t)n * etype_size(ETYPE);
        x[o] = e_to_float<ETYPE>(row, i) * scale;
}

int cuda_embed_ref(uint32_t etype, const void *E, int n_vocab, const int32_t *tok, float *x,
                   int n, int ntok, float scale, cudaStream_t stream)
{
        if (!embed_args_ok(etype, E, n_vocab, tok, x, n, ntok))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        const size_t total = (size_t)n * ntok;
        const unsigned nb = grid_ref(total);
        if (!nb)
                return -EINVAL;
        switch (etype) {
        case ETYPE_F32:
                embed_ref_kernel<ETYPE_F32><<<nb, REF_THREADS, 0, stream>>>(E, n_vocab, tok, x, n,
                                                                            total, scale);
                break;
        case ETYPE_F16:
                embed_ref_kernel<ETYPE_F16><<<nb, REF_THREADS, 0, stream>>>(E, n_vocab, tok, x, n,
                                                                            total, scale);
                break;
        default:
                embed_ref_kernel<ETYPE_BF16><<<nb, REF_THREADS, 0, stream>>>(E, n_vocab, tok, x, n,
                                                                             total, scale);
                break;
        }
        return CUDA_CHECK_LAUNCH();
}

/* ---- gated activations (act.cuh) ---- */

template <int ACT> static __device__ __forceinline__ float act(float g)
{
        return ACT == CUDA_ACT_GELU ? act_gelu(g) : act_silu(g);
}

/* VEC: n % 4 == 0, gu 16-byte aligned, out 16 (floats) or 8 (16-bit) bytes. OUT: 0 float
 * out, or out as the 16-bit type OUT (w16.cuh), the same values rounded. */
template <int ACT, bool VEC, int OUT>
static __global__ void __launch_bounds__(OPS_THREADS)
glu_kernel(const float *__restrict__ gu, void *__restrict__ out, int n, int ntok)
{
        pdl_start();
        const size_t stride = (size_t)gridDim.x * blockDim.x;
        const size_t nv = VEC ? (size_t)n / 4 : (size_t)n;
        const size_t total = nv * (size_t)ntok;
        for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < total; v += stride) {
                const size_t t = v / nv, i = v % nv;
                if (VEC) {
                        const float4 *row = (const float4 *)gu + t * 2 * nv;
                        const float4 g = __ldg(row + i), u = __ldg(row + nv + i);
                        out_store<OUT>::store4(out, v,
                                               make_float4(act<ACT>(g.x) * u.x, act<ACT>(g.y) * u.y,
                                                           act<ACT>(g.z) * u.z, act<ACT>(g.w) * u.w));
                } else {
                        const float *row = gu + t * 2 * nv;
                        out_store<OUT>::store1(out, v, act<ACT>(row[i]) * row[nv + i]);
                }
        }
}

static bool glu_args_ok(int a, const float *gu, const void *out, int n, int ntok)
{
        return (a == CUDA_ACT_SILU || a == CUDA_ACT_GELU) && gu && out && n >= 0 && ntok >= 0;
}

template <int ACT, int OUT>
static cudaError_t glu_launch(bool vec, const float *gu, void *out, int n, int ntok, cudaStream_t s, bool pdl)
{
        const size_t work = (size_t)n * ntok / (vec ? 4 : 1);
        return cuda_launch(pdl, vec ? glu_kernel<ACT, true, OUT> : glu_kernel<ACT, false, OUT>, grid_for(work),
                           OPS_THREADS, 0, s, gu, out, n, ntok);
}

template <int OUT>
static cudaError_t glu_out_launch(int act, bool vec, const float *gu, void *out, int n, int ntok, cudaStream_t s,
                                  bool pdl)
{
        return act == CUDA_ACT_GELU ? glu_launch<CUDA_ACT_GELU, OUT>(vec, gu, out, n, ntok, s, pdl)
                                    : glu_launch<CUDA_ACT_SILU, OUT>(vec, gu, out, n, ntok, s, pdl);
}

int cuda_glu(int act, const float *gu, float *out, int n, int ntok, cudaStream_t stream, bool pdl)
{
        if (!glu_args_ok(act, gu, out, n, ntok))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        const bool vec = n % 4 == 0 && aligned16(gu) && aligned16(out);
        return CUDA_CHECK(glu_out_launch<0>(act, vec, gu, out, n, ntok, stream, pdl));
}

int cuda_glu_w16(int act, const float *gu, void *out, uint32_t wtype, int n, int ntok, cudaStream_t stream,
                 bool pdl)
{
        if (!glu_args_ok(act, gu, out, n, ntok) || (wtype != CUDA_WTYPE_BF16 && wtype != CUDA_WTYPE_F16))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        const bool vec = n % 4 == 0 && aligned16(gu) && (uintptr_t)out % 8 == 0;
        return CUDA_CHECK(wtype == CUDA_WTYPE_BF16
                                  ? glu_out_launch<CUDA_WTYPE_BF16>(act, vec, gu, out, n, ntok, stream, pdl)
                                  : glu_out_launch<CUDA_WTYPE_F16>(act, vec, gu, out, n, ntok, stream, pdl));
}

template <int ACT>
static __global__ void glu_ref_kernel(const float *gu, float *out, int n, size_t total)
{
        const size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        if (o >= total)
                return;
        const size_t t = o / (size_t)n, i = o % (size_t)n;
        const float g = gu[t * 2 * (size_t)n + i], u = gu[t * 2 * (size_t)n + (size_t)n + i];
        out[o] = act<ACT>(g) * u;
}

int cuda_glu_ref(int act, const float *gu, float *out, int n, int ntok, cudaStream_t stream)
{
        if (!glu_args_ok(act, gu, out, n, ntok))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        const size_t total = (size_t)n * ntok;
        const unsigned nb = grid_ref(total);
        if (!nb)
                return -EINVAL;
        if (act == CUDA_ACT_GELU)
                glu_ref_kernel<CUDA_ACT_GELU><<<nb, REF_THREADS, 0, stream>>>(gu, out, n, total);
        else
                glu_ref_kernel<CUDA_ACT_SILU><<<nb, REF_THREADS, 0, stream>>>(gu, out, n, total);
        return CUDA_CHECK_LAUNCH();
}

/* ---- residual add, with or without post-norm ---- */

#define NORM_THREADS 256

static __device__ float block_sum(float v)
{
        __shared__ float warp_part[NORM_THREADS / 32];
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        v = warp_sum(v);
        if (lane == 0)
                warp_part[warp] = v;
        __syncthreads();
        v = lane < NORM_THREADS / 32 ? warp_part[lane] : 0.0f;
        return warp_sum(v); /* every warp has the total; the kernel calls this once */
}

/* Block per token. NORM: x += rmsnorm(y)·w (sum of squares in float, then a second pass over
 * y from L1/L2); otherwise x += y. VEC: n % 4 == 0 and x, y (and w) 16-byte aligned. x and y
 * may alias only exactly (each element is read before it is written by the same thread). */
template <bool NORM, bool VEC>
static __global__ void __launch_bounds__(NORM_THREADS)
add_norm_kernel(float *x, const float *y, const float *__restrict__ w, int n, float eps)
{
        pdl_start();
        float *xr = x + (size_t)blockIdx.x * n;
        const float *yr = y + (size_t)blockIdx.x * n;
        float scale = 1.0f;
        if (NORM) {
                float ss = 0.0f;
                if (VEC) {
                        for (int i = threadIdx.x; i < n / 4; i += NORM_THREADS) {
                                const float4 v = ((const float4 *)yr)[i];
                                ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                        }
                } else {
                        for (int i = threadIdx.x; i < n; i += NORM_THREADS)
                                ss += yr[i] * yr[i];
                }
                scale = rsqrtf(block_sum(ss) / (float)n + eps);
        }
        if (VEC) {
                for (int i = threadIdx.x; i < n / 4; i += NORM_THREADS) {
                        float4 v = ((const float4 *)yr)[i];
                        const float4 a = ((const float4 *)xr)[i];
                        if (NORM) {
                                const float4 g = __ldg((const float4 *)w + i);
                                v = make_float4(v.x * scale * g.x, v.y * scale * g.y,
                                                v.z * scale * g.z, v.w * scale * g.w);
                        }
                        ((float4 *)xr)[i] = make_float4(a.x + v.x, a.y + v.y, a.z + v.z, a.w + v.w);
                }
        } else {
                for (int i = threadIdx.x; i < n; i += NORM_THREADS)
                        xr[i] += NORM ? yr[i] * scale * w[i] : yr[i];
        }
}

static bool add_norm_args_ok(const float *x, const float *y, int n, int ntok, float eps)
{
        return x && y && n >= 0 && ntok >= 0 && eps >= 0.0f; /* eps NaN fails too */
}

int cuda_add_norm(float *x, const float *y, const float *w, int n, int ntok, float eps,
                  cudaStream_t stream, bool pdl)
{
        if (!add_norm_args_ok(x, y, n, ntok, eps))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        const bool vec = n % 4 == 0 && aligned16(x) && aligned16(y) && (!w || aligned16(w));
        const unsigned nb = (unsigned)ntok;
        void (*k)(float *, const float *, const float *, int, float) =
                w && vec ? add_norm_kernel<true, true>
                : w      ? add_norm_kernel<true, false>
                : vec    ? add_norm_kernel<false, true>
                         : add_norm_kernel<false, false>;
        return CUDA_CHECK(cuda_launch(pdl, k, nb, NORM_THREADS, 0, stream, x, y, w, n, eps));
}

/* One thread per token: serial sum of squares, then the row. */
static __global__ void add_norm_ref_kernel(float *x, const float *y, const float *w, int n,
                                           int ntok, float eps)
{
        const int t = blockIdx.x * blockDim.x + threadIdx.x;
        if (t >= ntok)
                return;
        float *xr = x + (size_t)t * n;
        const float *yr = y + (size_t)t * n;
        float scale = 1.0f;
        if (w) {
                float ss = 0.0f;
                for (int i = 0; i < n; i++)
                        ss += yr[i] * yr[i];
                scale = 1.0f / sqrtf(ss / (float)n + eps);
        }
        for (int i = 0; i < n; i++)
                xr[i] += w ? yr[i] * scale * w[i] : yr[i];
}

int cuda_add_norm_ref(float *x, const float *y, const float *w, int n, int ntok, float eps,
                      cudaStream_t stream)
{
        if (!add_norm_args_ok(x, y, n, ntok, eps))
                return -EINVAL;
        if (n == 0 || ntok == 0)
                return 0;
        add_norm_ref_kernel<<<(ntok + 63) / 64, 64, 0, stream>>>(x, y, w, n, ntok, eps);
        return CUDA_CHECK_LAUNCH();
}

/* ---- gather rows ---- */

/* VEC: n % 4 == 0, src and dst 16-byte aligned. A negative index gives a zero row. */
template <bool VEC>
static __global__ void __launch_bounds__(OPS_THREADS)
gather_rows_kernel(const float *__restrict__ src, const int32_t *__restrict__ idx,
                   float *__restrict__ dst, int n, int nrows)
{
        pdl_start();
        const size_t stride = (size_t)gridDim.x * blockDim.x;
        const size_t nv = VEC ? (size_t)n / 4 : (size_t)n;
        const size_t total = nv * (size_t)nrows;
        for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < total; v += stride) {
                const size_t j = v / nv, i = v % nv;
                const int32_t r = __ldg(idx + j);
                const size_t s = (size_t)r * nv + i;
                if (VEC)
                        ((float4 *)dst)[v] = r < 0 ? make_float4(0.0f, 0.0f, 0.0f, 0.0f)
                                                   : __ldg((const float4 *)src + s);
                else
                        dst[v] = r < 0 ? 0.0f : src[s];
        }
}

int cuda_gather_rows(const float *src, const int32_t *idx, float *dst, int n, int nrows,
                     cudaStream_t stream, bool pdl)
{
        if (!src || !idx || !dst || n < 0 || nrows < 0)
                return -EINVAL;
        if (n == 0 || nrows == 0)
                return 0;
        const bool vec = n % 4 == 0 && aligned16(src) && aligned16(dst);
        const size_t work = (size_t)n * nrows / (vec ? 4 : 1);
        return CUDA_CHECK(cuda_launch(pdl, vec ? gather_rows_kernel<true> : gather_rows_kernel<false>,
                                      grid_for(work), OPS_THREADS, 0, stream, src, idx, dst, n, nrows));
}

/* ---- logit soft-cap ---- */

/* VEC: y 16-byte aligned; float4 over the first n/4·4, the rest one per thread. */
template <bool VEC>
static __global__ void __launch_bounds__(OPS_THREADS)
softcap_kernel(float *__restrict__ y, size_t n, float cap, float inv_cap)
{
        pdl_start();
        const size_t stride = (size_t)gridDim.x * blockDim.x;
        const size_t i0 = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
        size_t done = 0;
        if (VEC) {
                const size_t nv = n / 4;
                for (size_t v = i0; v < nv; v += stride) {
                        float4 a = ((float4 *)y)[v];
                        a = make_float4(cap * tanhf(a.x * inv_cap), cap * tanhf(a.y * inv_cap),
                                        cap * tanhf(a.z * inv_cap), cap * tanhf(a.w * inv_cap));
                        ((float4 *)y)[v] = a;
                }
                done = nv * 4;
        }
        for (size_t i = done + i0; i < n; i += stride)
                y[i] = cap * tanhf(y[i] * inv_cap);
}

int cuda_softcap(float *y, size_t n, float cap, cudaStream_t stream, bool pdl)
{
        if (!y || !(cap > 0.0f) || isinf(cap))
                return -EINVAL;
        if (n == 0)
                return 0;
        /* y/cap as y·(1/cap): one rounding more than the division, well inside float math */
        const float inv = 1.0f / cap;
        const bool vec = aligned16(y);
        return CUDA_CHECK(cuda_launch(pdl, vec ? softcap_kernel<true> : softcap_kernel<false>,
                                      grid_for(vec ? n / 4 + n % 4 : n), OPS_THREADS, 0, stream, y, n, cap, inv));
}
