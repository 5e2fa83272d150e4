/* attention.cu — the step after the QKV projection (bias, Q/K head norm, RoPE, Q scale, K/V
 * into the paged f16 cache) and attention over that cache (attention.cuh), each with a plain
 * *_ref twin. The fast attention is flash-decoding: blocks per (token, KV head, group of query
 * heads sharing it), K/V streamed through per-warp cp.async rings in shared memory, online
 * softmax per warp over 16-position tiles, partials merged in shared memory; small batches
 * split the positions over a thread block cluster and merge through distributed shared memory
 * instead of a scratch buffer (deterministic mode: never, for batch-invariant results).
 * Nothing to allocate, no host sync: graph-capturable. Tested by tests/gpu/test_attention.cu. */
#include <limits.h>
#include <math.h>

#include <algorithm>

#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include "attention.cuh"
#include "attn_dev.cuh"
#include "common.cuh"
#include "qkv_dev.cuh"
#include "w16.cuh"

namespace cg = cooperative_groups;

#define ATT_MAX_DIM 256 /* dk, dv: multiples of 8 up to this */

/* ---- shared between the kernels ---- */

static __device__ __forceinline__ void half8_to_float(const uint4 u, float (&f)[8])
{
        const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
                __half2 h;
                memcpy(&h, &w[j], sizeof(h));
                const float2 v = __half22float2(h);
                f[2 * j] = v.x;
                f[2 * j + 1] = v.y;
        }
}

/* ---- argument checks (one set for the fast and the plain versions) ---- */

static int dim_ok(int d)
{
        return d >= 8 && d <= ATT_MAX_DIM && d % 8 == 0;
}

static int map_ok(const struct cuda_batch_map *m)
{
        return m->pos && m->bt_row && m->bt && m->max_blocks > 0 && m->block_size > 0 &&
               (long long)m->max_blocks * m->block_size <= INT_MAX;
}

/* heads ≤ 65535 keeps every grid dimension in range and every row offset in int */
static int heads_ok(int n_head, int n_head_kv)
{
        return n_head > 0 && n_head_kv > 0 && n_head % n_head_kv == 0 &&
               (long long)n_head + 2LL * n_head_kv <= 65535;
}

int cuda_qkv_check(const struct cuda_qkv_args *a)
{
        if (!a || a->ntok < 0)
                return -EINVAL;
        if (a->ntok == 0)
                return 0;
        if (!a->qkv || !a->k_cache || !a->v_cache || !map_ok(&a->map))
                return -EINVAL;
        if (!heads_ok(a->n_head, a->n_head_kv) || !dim_ok(a->dk) || !dim_ok(a->dv))
                return -EINVAL;
        const long long row = (long long)a->n_head * a->dk + (long long)a->n_head_kv * (a->dk + a->dv);
        if (a->ld < row)
                return -EINVAL;
        if (!!a->bq != !!a->bk || !!a->bq != !!a->bv) /* all three or none */
                return -EINVAL;
        if ((a->q_norm || a->k_norm) && !(a->norm_eps >= 0.0f && isfinite(a->norm_eps)))
                return -EINVAL;
        if (a->n_rot < 0 || a->n_rot % 2 || a->n_rot > a->dk || (a->neox != 0 && a->neox != 1))
                return -EINVAL;
        if (a->n_rot > 0 && !(a->rope_base > 0.0f && isfinite(a->rope_base) &&
                              isfinite(a->rope_scale)))
                return -EINVAL;
        if (!isfinite(a->q_scale))
                return -EINVAL;
        return 1;
}

int cuda_attn_check(const struct cuda_attn_args *a)
{
        if (!a || a->ntok < 0)
                return -EINVAL;
        if (a->ntok == 0)
                return 0;
        if (!a->q || !a->k_cache || !a->v_cache || !map_ok(&a->map))
                return -EINVAL;
        if (a->out16_type == 0 ? !a->out
                               : (a->out16_type != CUDA_WTYPE_F16 && a->out16_type != CUDA_WTYPE_BF16) ||
                                         !a->out16 || (uintptr_t)a->out16 % 2)
                return -EINVAL;
        if (!heads_ok(a->n_head, a->n_head_kv) || !dim_ok(a->dk) || !dim_ok(a->dv))
                return -EINVAL;
        if (a->ldq < a->n_head * a->dk || a->ldo < a->n_head * a->dv || a->window < 0 ||
            !isfinite(a->scale))
                return -EINVAL;
        /* 16-byte cache loads: rows are multiples of 8 halves, so only the bases matter */
        if (((uintptr_t)a->k_cache | (uintptr_t)a->v_cache) % 16)
                return -EINVAL;
        return 1;
}

/* ---- qkv_post ---- */

#define QKV_WARPS 8

/* Grid (ntok, head groups of QKV_WARPS); one warp per head (Q heads, then K, then V), staged
 * in a per-warp shared row so the RoPE pairs can cross lanes. K and V are left processed in
 * qkv as well (the CPU backend works in place the same way). */
static __global__ void __launch_bounds__(QKV_WARPS * 32)
qkv_post_kernel(const struct cuda_qkv_args a, float theta_scale)
{
        __shared__ float rope_c[ATT_MAX_DIM / 2], rope_s[ATT_MAX_DIM / 2];
        __shared__ float buf[QKV_WARPS][ATT_MAX_DIM];
        pdl_start();
        const int t = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int pos = a.map.pos[t], half_rot = a.n_rot / 2;

        for (int i = threadIdx.x; i < half_rot; i += blockDim.x) {
                const float th = rope_angle(a, theta_scale, pos, i);
                rope_c[i] = cosf(th);
                rope_s[i] = sinf(th);
        }
        __syncthreads(); /* the only block-wide barrier: warps are independent from here */

        const int hh = blockIdx.y * QKV_WARPS + warp;
        if (hh >= a.n_head + 2 * a.n_head_kv)
                return;
        const int QD = a.n_head * a.dk, KD = a.n_head_kv * a.dk, VD = a.n_head_kv * a.dv;
        int kind, h, len, off; /* kind 0: Q, 1: K, 2: V */
        if (hh < a.n_head) {
                kind = 0, h = hh, len = a.dk, off = h * a.dk;
        } else if (hh < a.n_head + a.n_head_kv) {
                kind = 1, h = hh - a.n_head, len = a.dk, off = QD + h * a.dk;
        } else {
                kind = 2, h = hh - a.n_head - a.n_head_kv, len = a.dv, off = QD + KD + h * a.dv;
        }
        float *x = a.qkv + (long long)t * a.ld + off;
        float *b = buf[warp];
        const float *bias = !a.bq ? NULL : kind == 0 ? a.bq + h * a.dk
                                        : kind == 1 ? a.bk + h * a.dk : a.bv + h * a.dv;
        const float *normw = kind == 0 ? a.q_norm : kind == 1 ? a.k_norm : NULL;

        double ss = 0.0;
        for (int i = lane; i < len; i += 32) {
                const float v = bias ? x[i] + bias[i] : x[i];
                b[i] = v;
                ss += (double)(v * v);
        }
        if (normw) { /* as the CPU's rms_norm: squares summed in double, the scale in float */
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                        ss += __shfl_xor_sync(0xffffffffu, ss, o);
                const float scale = 1.0f / sqrtf((float)(ss / len) + a.norm_eps);
                for (int i = lane; i < len; i += 32)
                        b[i] = b[i] * scale * normw[i];
        }
        __syncwarp();
        if (kind < 2) {
                const int stride = a.neox ? half_rot : 1;
                for (int i = lane; i < half_rot; i += 32) {
                        const int i0 = a.neox ? i : 2 * i;
                        float x0 = b[i0], x1 = b[i0 + stride];
                        rope_rotate(x0, x1, rope_c[i], rope_s[i]);
                        b[i0] = x0;
                        b[i0 + stride] = x1;
                }
                __syncwarp();
        }
        if (kind == 0) {
                const float qs = a.q_scale;
                for (int i = lane; i < len; i += 32)
                        x[i] = qs != 1.0f ? b[i] * qs : b[i];
                return;
        }
        const long long r = qkv_cache_row(a, t);
        for (int i = lane; i < len; i += 32)
                x[i] = b[i];
        if (r < 0)
                return;
        __half *c = kind == 1 ? a.k_cache + r * KD + h * a.dk : a.v_cache + r * VD + h * a.dv;
        for (int i = lane; i < len; i += 32)
                c[i] = __float2half_rn(b[i]);
}

int cuda_qkv_post(const struct cuda_qkv_args *a, cudaStream_t stream)
{
        const int r = cuda_qkv_check(a);
        if (r <= 0)
                return r;
        const int heads = a->n_head + 2 * a->n_head_kv;
        const dim3 grid((unsigned)a->ntok, (unsigned)((heads + QKV_WARPS - 1) / QKV_WARPS));
        return CUDA_CHECK(cuda_launch(a->pdl != 0, qkv_post_kernel, grid, QKV_WARPS * 32, 0, stream, *a,
                                      rope_theta_scale(a)));
}

/* ---- qkv_post, plain reference: one thread per token, every step in place on qkv ---- */

static __device__ void rms_norm_ref(float *x, const float *w, int n, float eps)
{
        double ss = 0.0;
        for (int i = 0; i < n; i++)
                ss += (double)(x[i] * x[i]);
        const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
        for (int i = 0; i < n; i++)
                x[i] = x[i] * scale * w[i];
}

static __global__ void qkv_post_ref_kernel(const struct cuda_qkv_args a, float theta_scale)
{
        const int t = blockIdx.x * blockDim.x + threadIdx.x;
        if (t >= a.ntok)
                return;
        const int QD = a.n_head * a.dk, KD = a.n_head_kv * a.dk, VD = a.n_head_kv * a.dv;
        float *q = a.qkv + (long long)t * a.ld, *k = q + QD, *v = k + KD;
        if (a.bq) {
                for (int i = 0; i < QD; i++)
                        q[i] += a.bq[i];
                for (int i = 0; i < KD; i++)
                        k[i] += a.bk[i];
                for (int i = 0; i < VD; i++)
                        v[i] += a.bv[i];
        }
        if (a.q_norm)
                for (int h = 0; h < a.n_head; h++)
                        rms_norm_ref(q + h * a.dk, a.q_norm, a.dk, a.norm_eps);
        if (a.k_norm)
                for (int h = 0; h < a.n_head_kv; h++)
                        rms_norm_ref(k + h * a.dk, a.k_norm, a.dk, a.norm_eps);
        const int pos = a.map.pos[t], half_rot = a.n_rot / 2;
        float theta = (float)pos;
        for (int i = 0; i < half_rot; i++) {
                const float f = a.rope_ff ? a.rope_ff[i] : 1.0f;
                const float th = a.rope_scale * (theta / f);
                const float c = cosf(th), s = sinf(th);
                const int i0 = a.neox ? i : 2 * i, i1 = a.neox ? i + half_rot : 2 * i + 1;
                for (int h = 0; h < a.n_head + a.n_head_kv; h++) { /* Q heads, then K heads */
                        float *x = q + h * a.dk;
                        const float x0 = x[i0], x1 = x[i1];
                        x[i0] = fmaf(x0, c, -(x1 * s));
                        x[i1] = fmaf(x0, s, x1 * c);
                }
                theta *= theta_scale;
        }
        if (a.q_scale != 1.0f)
                for (int i = 0; i < QD; i++)
                        q[i] *= a.q_scale;
        const long long r = qkv_cache_row(a, t);
        if (r < 0)
                return;
        for (int i = 0; i < KD; i++)
                a.k_cache[r * KD + i] = __float2half_rn(k[i]);
        for (int i = 0; i < VD; i++)
                a.v_cache[r * VD + i] = __float2half_rn(v[i]);
}

int cuda_qkv_post_ref(const struct cuda_qkv_args *a, cudaStream_t stream)
{
        const int r = cuda_qkv_check(a);
        if (r <= 0)
                return r;
        qkv_post_ref_kernel<<<(a->ntok + 63) / 64, 64, 0, stream>>>(*a, rope_theta_scale(a));
        return CUDA_CHECK_LAUNCH();
}

/* ---- attention ----
 *
 * Block (t, hk, chunk, rank): query heads h0 .. h0+GC-1 (h0 = hk·group + chunk·GC), which all
 * read KV head hk, so each K/V byte loaded serves GC heads. q·scale·log2(e) sits in shared
 * memory (zero past dk) and the softmax runs in base 2. The CL blocks of a cluster (sm_90
 * thread block clusters; CL = 1 without) split the positions of one (token, head chunk): warp
 * w of cluster rank k takes tiles k·NW + w, + CL·NW, ... of 16 positions; the partial results
 * meet in distributed shared memory, so a small batch still fills the GPU with no scratch
 * buffer. The KV heads of a token are neighbours in launch order, so the blocks reading the
 * rows of one position run together (on an H200 a plain read of this pattern at d 64, rows
 * of 128 bytes, runs at 3.2-3.5 TB/s in this order, 2.7 with tokens first).
 *
 * Loads: each warp streams its tiles through its own ring of R slots in shared memory with
 * cp.async (16-byte copies to shared memory, L2 only), R − 1 units ahead of the one it uses;
 * a unit is the K or the V half of a tile (ATT_SPLIT_KV), so a slot is refilled as soon as
 * its half is used. The block-table entries of a tile are read one tile ahead of its copies.
 * Lane (grp, sub) = (lane / 4, lane % 4) copies chunks c·4 + sub (8 halves each; NC per lane
 * cover dk ≤ NC·32) of tile rows grp and 8 + grp: K into slots only it reads back (lane-
 * major, conflict-free), V into row-major rows that every lane reads. Rows past the span or
 * with no block are zero-filled and flagged.
 *
 * Scores (QK): four lanes per row, two passes of eight rows; two shuffles per head reduce-
 * scatter the four partial sums, leaving lanes (grp, 0|1) with the score of row grp and
 * lanes (grp, 2|3) with row 8 + grp. The tile max is one redux.sync on an order-preserving
 * integer image of the scores; the running sums are rescaled only when the max grows. The
 * even lanes write their row's probabilities (GC per row) to a per-warp shared array.
 *
 * P·V: LPR lanes per V row (LPR = dv/8 rounded up to a power of two, at least 2), 32/LPR rows
 * per step, 8 dims per lane; the probabilities come from shared memory as one vector. Lane
 * accumulators (GC × 8 floats) are summed across the row groups once, at the end, then the
 * block's warps and the cluster's blocks are merged (the rings double as the merge buffer
 * once every warp is done with its own).
 *
 * The summation order of a (token, head) depends on GC, CL and NW only: fixed for a given
 * shape in deterministic mode. */

/* Warps a launch should have before it stops trading heads per block (and cluster size) for
 * more blocks. */
#ifndef ATT_FULL_WARPS
#define ATT_FULL_WARPS 1024
#endif
#define ATT_MAX_CLUSTER 8 /* the portable cluster size limit */
#define ATT_NW 4          /* warps per block */
#define ATT_TILE 16       /* positions per tile */
/* Shared memory a block aims for: the ring is as many slots as fit (at least 3, at most
 * ATT_MAX_SLOTS): four blocks (16 warps, as many as 128 registers a thread allow) an SM at
 * dk = dv = 64 (6 slots) and 128 (3 slots). */
#ifndef ATT_SMEM_BUDGET
#define ATT_SMEM_BUDGET (56 * 1024)
#endif
#define ATT_MAX_SLOTS 8 /* cp.async.wait_group takes 0 .. 7 */
#define ATT_SMEM_MAX (200 * 1024) /* the most any launch asks for (dk = dv = 256: ~140 KB) */

#define ATT_MAX_GRID_Y 65535 /* tokens per launch */

static __device__ __forceinline__ uint4 lds_u4(const void *p)
{
        return *(const uint4 *)p;
}

/* Warp max through redux.sync on an integer image of the floats that keeps their order
 * (negative floats: magnitude bits flipped). Exact: the result is one of the inputs. */
static __device__ __forceinline__ float warp_max_redux(float v)
{
        int k = __float_as_int(v);
        k = k >= 0 ? k : k ^ 0x7fffffff;
        k = __reduce_max_sync(0xffffffffu, k);
        return __int_as_float(k >= 0 ? k : k ^ 0x7fffffff);
}

/* The ring of a warp. ATT_SPLIT_KV 1: R slots, each the K half (with the row flags) or the V
 * half of a tile, filled in the order K0 V0 K1 V1 ..., so a slot frees as soon as its half
 * is used (dk = dv = 128: three slots, 4 blocks an SM, where two whole tiles allow 3);
 * 0: slots of whole tiles. Measured on an H200, decode at 64 .. 256 tokens: 1 is 10-30%
 * faster at d 128 and 5-8% slower at d 64 (the same occupancy there, twice the waits). */
#ifndef ATT_SPLIT_KV
#define ATT_SPLIT_KV 1
#endif

/* K half: [2][NC][32 lanes] 16-byte slots (lane-major: each lane reads back only what it
 * copied) and 16 row flags; V half: [16][dv] halves (row-major: read across lanes). */
static __host__ __device__ __forceinline__ int att_slot_bytes(int nc, int dv)
{
        const int kb = nc * 1024 + ATT_TILE * 4, vb = ATT_TILE * 2 * dv;
#if ATT_SPLIT_KV
        return kb > vb ? kb : vb;
#else
        return kb + vb;
#endif
}

template <int GC, int NC, bool CLUSTER>
static __global__ void __launch_bounds__(ATT_NW * 32, 4)
attention_kernel(const struct cuda_attn_args a, int lpr, int nslot, int t0)
{
        constexpr int NW = ATT_NW;
        constexpr int DKP = NC * 32; /* q row in shared memory, zero-padded */
        extern __shared__ float4 att_smem4[];
        float *sq = (float *)att_smem4;            /* [GC][DKP] */
        float *sp_all = sq + GC * DKP;             /* [NW][16][GC] probabilities */
        char *region = (char *)(sp_all + NW * ATT_TILE * GC); /* rings, then the merge */
        const int DVP = lpr * 8;
        float *sacc = (float *)region;             /* [NW][GC][DVP] */
        float *sm_m = sacc + NW * GC * DVP;        /* [NW][GC] */
        float *sm_l = sm_m + NW * GC;              /* [NW][GC] */
        float *bacc = sm_l + NW * GC;              /* [GC][DVP] the block's merge (clusters) */
        float *bm = bacc + GC * DVP, *bl = bm + GC; /* [GC] each */

        pdl_start();
        int rank = 0, cl = 1;
        if (CLUSTER) {
                rank = (int)cg::this_cluster().block_rank();
                cl = (int)cg::this_cluster().num_blocks();
        }
        /* x: (hk · nchunk + chunk) · cl + rank, so the KV heads of a token run side by side
         * and read each position's rows together; y: tokens, last first (long prefill
         * contexts first: a shorter tail; t0: launches of more than ATT_MAX_GRID_Y tokens are
         * split) */
        const int group = a.n_head / a.n_head_kv, nchunk = group / GC;
        const int t = a.ntok - 1 - (t0 + (int)blockIdx.y);
        const int hc = (int)blockIdx.x / cl, hk = hc / nchunk;
        const int h0 = hk * group + (hc % nchunk) * GC;
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        const int dk = a.dk, dv = a.dv, KD = a.n_head_kv * dk, VD = a.n_head_kv * dv;

        const struct attn_span sp = attn_span_of(a, t); /* its loads overlap q's */
        const float qmul = a.scale * LOG2E;
        const float *qt = a.q + (long long)t * a.ldq + (long long)h0 * dk;
        for (int i = threadIdx.x; i < GC * DKP; i += NW * 32) {
                const int g = i / DKP, d = i % DKP;
                sq[i] = d < dk ? qt[g * dk + d] * qmul : 0.0f;
        }

        const int ntiles = (sp.n + ATT_TILE - 1) / ATT_TILE, tstride = cl * NW;
        const int first = rank * NW + warp;
        const int nk = first < ntiles ? (ntiles - first + tstride - 1) / tstride : 0;
        const __half *kh = a.k_cache + (long long)hk * dk, *vh = a.v_cache + (long long)hk * dv;
        const int bs = a.map.block_size;
        const bool bs_pow2 = (bs & (bs - 1)) == 0;
        const int bs_shift = __ffs(bs) - 1;
        const int32_t *btr = a.map.bt + (sp.n > 0 ? (long long)sp.row * a.map.max_blocks : 0);

        const int grp = lane >> 2, sub = lane & 3;
        const int nvc = (dv + 31) / 32; /* V chunk groups per lane */
        const int vsub = lane % lpr, vrg = lane / lpr, vrows = 32 / lpr;
        const int vsteps = ATT_TILE / vrows;
        const bool vlane = vsub * 8 < dv;
        const int slot_bytes = att_slot_bytes(NC, dv);
        char *ring = region + (size_t)warp * nslot * slot_bytes;
        float *spw = sp_all + warp * ATT_TILE * GC;
#if ATT_SPLIT_KV
        const int vof = 0; /* V's offset in its slot */
#else
        const int vof = NC * 1024 + ATT_TILE * 4;
#endif

        float m[GC], l[GC], acc[GC][8];
#pragma unroll
        for (int g = 0; g < GC; g++) {
                m[g] = -INFINITY;
                l[g] = 0.0f; /* this lane's share; summed over the warp at the end */
#pragma unroll
                for (int e = 0; e < 8; e++)
                        acc[g][e] = 0.0f;
        }

        /* cache rows of tile rows grp and 8 + grp of the warp's k-th tile (-1: none) */
        auto row_of = [&](int p) -> long long {
                const int blk = bs_pow2 ? p >> bs_shift : p / bs;
                const int b = btr[blk];
                return b < 0 ? -1 : (long long)b * bs + (p - blk * bs);
        };
        auto tile_rows = [&](int k) -> longlong2 {
                longlong2 r = make_longlong2(-1, -1);
                if (k >= nk)
                        return r;
                const int base = sp.lo + (first + k * tstride) * ATT_TILE; /* ≤ sp.hi */
                const int room = sp.hi - base;
                if (grp <= room)
                        r.x = row_of(base + grp);
                if (grp + 8 <= room)
                        r.y = row_of(base + grp + 8);
                return r;
        };
        /* copies of K (with the row flags) of tile rows rr into slot `sb`; rows left out are
         * zero-filled */
        auto issue_k = [&](char *sb, longlong2 rr) {
                int *fl = (int *)(sb + NC * 1024);
#pragma unroll
                for (int P = 0; P < 2; P++) {
                        const long long r = P ? rr.y : rr.x;
#pragma unroll
                        for (int c = 0; c < NC; c++) {
                                const int ch = c * 4 + sub;
                                if (ch * 8 < dk)
                                        cp_async16(sb + ((P * NC + c) * 32 + lane) * 16,
                                                   r >= 0 ? kh + r * KD + ch * 8 : kh, r >= 0 ? 16 : 0);
                        }
                }
                if (sub == 0) {
                        fl[grp] = rr.x >= 0;
                        fl[grp + 8] = rr.y >= 0;
                }
        };
        auto issue_v = [&](char *sb, longlong2 rr) {
                __half *sv = (__half *)(sb + vof);
#pragma unroll
                for (int P = 0; P < 2; P++) {
                        const long long r = P ? rr.y : rr.x;
                        for (int c = 0; c < nvc; c++) {
                                const int ch = c * 4 + sub;
                                if (ch * 8 < dv)
                                        cp_async16(sv + (P * 8 + grp) * dv + ch * 8,
                                                   r >= 0 ? vh + r * VD + ch * 8 : vh, r >= 0 ? 16 : 0);
                        }
                }
        };
#if ATT_SPLIT_KV
        /* fill unit u (K of tile u / 2, or its V) into slot st; one commit group, empty past
         * the warp's tiles. rcur: rows of the tile whose halves are being issued; rnext: rows
         * of the tile after it, read one tile ahead */
        longlong2 rcur = make_longlong2(-1, -1), rnext = tile_rows(0);
        auto issue = [&](int u, int st) {
                if ((u >> 1) < nk) {
                        char *sb = ring + (size_t)st * slot_bytes;
                        if (!(u & 1)) {
                                rcur = rnext;
                                rnext = tile_rows((u >> 1) + 1);
                                issue_k(sb, rcur);
                        } else {
                                issue_v(sb, rcur);
                        }
                }
                cp_async_commit();
        };
#else
        longlong2 rnext = tile_rows(0);
        auto issue = [&](int u, int st) {
                if (u < nk) {
                        char *sb = ring + (size_t)st * slot_bytes;
                        const longlong2 rcur = rnext;
                        rnext = tile_rows(u + 1);
                        issue_k(sb, rcur);
                        issue_v(sb, rcur);
                }
                cp_async_commit();
        };
#endif

        /* prologue: the first nslot - 1 units in flight (q lands in shared memory meanwhile) */
        __syncthreads(); /* q */
        for (int u = 0; u < nslot - 1; u++)
                issue(u, u);
        int ist = nslot - 1; /* slot of the next issue */
        int cst = 0;         /* slot of the next unit used */
        int u_next = nslot - 1;
        /* the next unit's slot, after the one issue that frees a slot for the unit nslot - 1
         * ahead */
        auto advance = [&]() -> const char * {
                __syncwarp(); /* every lane is done with the slot the issue overwrites */
                issue(u_next++, ist);
                ist = ist + 1 == nslot ? 0 : ist + 1;
                cp_async_wait(nslot - 1); /* this lane's copies of the unit have landed */
                __syncwarp();             /* ... and every lane's */
                const char *sb = ring + (size_t)cst * slot_bytes;
                cst = cst + 1 == nslot ? 0 : cst + 1;
                return sb;
        };

        for (int k = 0; k < nk; k++) {
                const char *sbk = advance(); /* K of tile k (whole tile: K and V) */

                /* scores: pass P covers rows P·8 + grp */
                float s[2][GC];
#pragma unroll
                for (int P = 0; P < 2; P++)
#pragma unroll
                        for (int g = 0; g < GC; g++)
                                s[P][g] = 0.0f;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                        const int ch = c * 4 + sub; /* chunk of 8 dims */
                        if (ch * 8 >= dk)
                                continue;
                        float kf[2][8];
#pragma unroll
                        for (int P = 0; P < 2; P++)
                                half8_to_float(lds_u4(sbk + ((P * NC + c) * 32 + lane) * 16), kf[P]);
#pragma unroll
                        for (int g = 0; g < GC; g++) {
                                const float4 qa = ((const float4 *)(sq + g * DKP))[ch * 2];
                                const float4 qb = ((const float4 *)(sq + g * DKP))[ch * 2 + 1];
                                const float qv[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
                                for (int P = 0; P < 2; P++)
#pragma unroll
                                        for (int e = 0; e < 8; e++)
                                                s[P][g] = fmaf(qv[e], kf[P][e], s[P][g]);
                        }
                }
                const int ro = (sub >> 1) * 8 + grp; /* the row whose score this lane gets */
                const bool ok = ((const int *)(sbk + NC * 1024))[ro] != 0;
#if ATT_SPLIT_KV
                const char *sbv = advance(); /* V of tile k; K's slot is refilled */
#else
                const char *sbv = sbk;
#endif
                const __half *sv = (const __half *)(sbv + vof);

                /* reduce-scatter over the 4 lanes of a group; then the online softmax */
                const bool hi2 = sub & 2, owner = !(sub & 1);
                float pw[GC];
#pragma unroll
                for (int g = 0; g < GC; g++) {
                        float mine = hi2 ? s[1][g] : s[0][g];
                        mine += __shfl_xor_sync(0xffffffffu, hi2 ? s[0][g] : s[1][g], 2);
                        mine += __shfl_xor_sync(0xffffffffu, mine, 1);
                        const float sc = ok ? mine : -INFINITY;
                        const float mnew = fmaxf(m[g], warp_max_redux(sc)); /* warp-uniform */
                        const float mu = mnew == -INFINITY ? 0.0f : mnew;
                        pw[g] = exp2f(sc - mu);
                        if (mnew != m[g]) { /* warp-uniform */
                                const float alpha = exp2f(m[g] - mu);
                                l[g] *= alpha;
#pragma unroll
                                for (int e = 0; e < 8; e++)
                                        acc[g][e] *= alpha;
                                m[g] = mnew;
                        }
                        if (owner)
                                l[g] += pw[g];
                }
                if (owner) {
                        float *d = spw + ro * GC;
                        if (GC == 4)
                                *(float4 *)d = make_float4(pw[0], pw[GC > 1 ? 1 : 0],
                                                           pw[GC > 2 ? 2 : 0], pw[GC > 3 ? 3 : 0]);
                        else if (GC == 2)
                                *(float2 *)d = make_float2(pw[0], pw[GC > 1 ? 1 : 0]);
                        else
                                d[0] = pw[0];
                }
                __syncwarp();

                /* P·V: step i covers rows i·vrows + vrg */
                if (vlane) {
#pragma unroll 4
                        for (int i = 0; i < vsteps; i++) {
                                const int r = i * vrows + vrg;
                                float vf[8], pg[GC];
                                half8_to_float(lds_u4(sv + r * dv + vsub * 8), vf);
                                if (GC == 4) {
                                        const float4 p4 = *(const float4 *)(spw + r * GC);
                                        pg[0] = p4.x, pg[GC > 1 ? 1 : 0] = p4.y;
                                        pg[GC > 2 ? 2 : 0] = p4.z, pg[GC > 3 ? 3 : 0] = p4.w;
                                } else if (GC == 2) {
                                        const float2 p2 = *(const float2 *)(spw + r * GC);
                                        pg[0] = p2.x, pg[GC > 1 ? 1 : 0] = p2.y;
                                } else {
                                        pg[0] = spw[r];
                                }
#pragma unroll
                                for (int g = 0; g < GC; g++)
#pragma unroll
                                        for (int e = 0; e < 8; e++)
                                                acc[g][e] = fmaf(pg[g], vf[e], acc[g][e]);
                        }
                }
        }
        asm volatile("cp.async.wait_all;\n" ::: "memory"); /* only empty groups are left */
        __syncthreads(); /* every warp is done with its ring: it becomes the merge buffer */

        /* this warp's (m, l, acc) to shared memory; the block's warps merged; then, in a
         * cluster, the blocks' merged partials read across the cluster (a fixed-size loop, so
         * the up to 8 remote reads of each step are in flight together) */
#pragma unroll
        for (int g = 0; g < GC; g++) {
                const float lw = warp_sum(l[g]);
                for (int o = lpr; o < 32; o <<= 1)
#pragma unroll
                        for (int e = 0; e < 8; e++)
                                acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
                if (lane < lpr)
#pragma unroll
                        for (int e = 0; e < 8; e++)
                                sacc[(warp * GC + g) * DVP + vsub * 8 + e] = acc[g][e];
                if (lane == 0) {
                        sm_m[warp * GC + g] = m[g];
                        sm_l[warp * GC + g] = lw;
                }
        }
        __syncthreads();
        const long long ot = (long long)t * a.ldo + (long long)h0 * dv; /* output offset */
        for (int i = threadIdx.x; i < GC * dv; i += NW * 32) {
                const int g = i / dv, d = i % dv;
                float M = -INFINITY;
#pragma unroll
                for (int w = 0; w < NW; w++)
                        M = fmaxf(M, sm_m[w * GC + g]);
                const float mu = M == -INFINITY ? 0.0f : M;
                float L = 0.0f, A = 0.0f;
#pragma unroll
                for (int w = 0; w < NW; w++) {
                        const float f = exp2f(sm_m[w * GC + g] - mu);
                        L += sm_l[w * GC + g] * f;
                        A += sacc[(w * GC + g) * DVP + d] * f;
                }
                if (!CLUSTER) {
                        att_store(a, ot + g * dv + d, L > 0.0f ? A / L : 0.0f); /* no positions: 0, not NaN */
                } else {
                        bacc[i] = A;
                        if (d == 0)
                                bm[g] = M, bl[g] = L;
                }
        }
        if (!CLUSTER)
                return;
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync(); /* every block's merged partials written and visible */
        /* block `rank` writes every cl-th output element */
        for (int i = rank * NW * 32 + threadIdx.x; i < GC * dv; i += tstride * 32) {
                const int g = i / dv;
                float mk[ATT_MAX_CLUSTER], M = -INFINITY;
#pragma unroll
                for (int k = 0; k < ATT_MAX_CLUSTER; k++) {
                        mk[k] = k < cl ? cluster.map_shared_rank(bm, k)[g] : -INFINITY;
                        M = fmaxf(M, mk[k]);
                }
                const float mu = M == -INFINITY ? 0.0f : M;
                float L = 0.0f, A = 0.0f;
#pragma unroll
                for (int k = 0; k < ATT_MAX_CLUSTER; k++) {
                        if (k < cl) {
                                const float f = exp2f(mk[k] - mu);
                                L += cluster.map_shared_rank(bl, k)[g] * f;
                                A += cluster.map_shared_rank(bacc, k)[i] * f;
                        }
                }
                att_store(a, ot + i, L > 0.0f ? A / L : 0.0f);
        }
        cluster.sync(); /* keep this block's shared memory until every block has read it */
}

/* The launch shape: ring slots and shared memory, from the dims and heads per block only. */
struct att_plan {
        int lpr, nslot;
        size_t smem;
};

static struct att_plan att_plan_of(int gc, int nc, int dv)
{
        struct att_plan p;
        p.lpr = 2;
        while (p.lpr * 8 < dv)
                p.lpr *= 2;
        const size_t fixed = sizeof(float) * ((size_t)gc * nc * 32 + (size_t)ATT_NW * ATT_TILE * gc);
        const size_t merge = sizeof(float) * ((size_t)ATT_NW * gc * p.lpr * 8 + 2 * (size_t)ATT_NW * gc +
                                              (size_t)gc * p.lpr * 8 + 2 * (size_t)gc);
        const size_t slots = (size_t)ATT_NW * att_slot_bytes(nc, dv); /* one slot a warp */
        const long long n = ((long long)ATT_SMEM_BUDGET - (long long)fixed) / (long long)slots;
        const int lo = ATT_SPLIT_KV ? 3 : 2; /* a unit in flight while one is used */
        p.nslot = (int)(n < lo ? lo : n > ATT_MAX_SLOTS ? ATT_MAX_SLOTS : n);
        p.smem = fixed + std::max(slots * p.nslot, merge);
        return p;
}

template <int GC, int NC, bool CLUSTER>
static cudaError_t attention_launch_nc(const struct cuda_attn_args *a, int cl, cudaStream_t stream)
{
        const auto kernel = attention_kernel<GC, NC, CLUSTER>;
        const struct att_plan p = att_plan_of(GC, NC, a->dv);
        static unsigned long long allowed; /* ATT_SMEM_MAX bytes of shared memory, per device */
        cudaError_t e = smem_allow(kernel, ATT_SMEM_MAX, &allowed);
        if (e != cudaSuccess)
                return e;
        const unsigned hz = (unsigned)(a->n_head / GC * cl); /* heads chunks × cluster ranks */
        for (int t0 = 0; t0 < a->ntok; t0 += ATT_MAX_GRID_Y) {
                e = cuda_launch_cl(a->pdl != 0, CLUSTER ? cl : 1, kernel,
                                   dim3(hz, (unsigned)std::min(a->ntok - t0, ATT_MAX_GRID_Y)), dim3(ATT_NW * 32),
                                   p.smem, stream, *a, p.lpr, p.nslot, t0);
                if (e != cudaSuccess)
                        return e;
        }
        return cudaSuccess;
}

template <int GC, bool CLUSTER>
static cudaError_t attention_launch(const struct cuda_attn_args *a, int nc, int cl,
                                    cudaStream_t stream)
{
        switch (nc) {
        case 1:
                return attention_launch_nc<GC, 1, CLUSTER>(a, cl, stream);
        case 2:
                return attention_launch_nc<GC, 2, CLUSTER>(a, cl, stream);
        case 4:
                return attention_launch_nc<GC, 4, CLUSTER>(a, cl, stream);
        default:
                return attention_launch_nc<GC, 8, CLUSTER>(a, cl, stream);
        }
}

int cuda_attention(const struct cuda_attn_args *a, cudaStream_t stream)
{
        const int r = cuda_attn_check(a);
        if (r <= 0)
                return r;
        int nc = 1; /* K chunks of 32 dims per lane group, a power of two */
        while (nc * 32 < a->dk)
                nc *= 2;
        /* GC heads per block share every K/V load; a cluster of CL blocks splits the
         * positions. Take the most heads per block for which clusters of up to 8 still fill
         * the GPU; small batches end at one head per block (the repeated K/V reads hit L2).
         * Deterministic: the most heads per block and no cluster, whatever the batch (what a
         * large batch gets anyway). */
        const int group = a->n_head / a->n_head_kv;
        int gc = group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1, cl = 1;
        for (; !a->deterministic; gc /= 2) {
                const long long warps = (long long)a->ntok * a->n_head_kv * (group / gc) * ATT_NW;
                cl = 1;
                while (cl < ATT_MAX_CLUSTER && warps * cl < ATT_FULL_WARPS)
                        cl *= 2;
                if (gc == 1 || warps * cl >= ATT_FULL_WARPS)
                        break;
        }
        cudaError_t e;
        if (cl == 1)
                e = gc == 4 ? attention_launch<4, false>(a, nc, 1, stream)
                    : gc == 2 ? attention_launch<2, false>(a, nc, 1, stream)
                              : attention_launch<1, false>(a, nc, 1, stream);
        else
                e = gc == 4 ? attention_launch<4, true>(a, nc, cl, stream)
                    : gc == 2 ? attention_launch<2, true>(a, nc, cl, stream)
                              : attention_launch<1, true>(a, nc, cl, stream);
        if (e != cudaSuccess) {
                (void)cudaGetLastError(); /* don't leave it for the next launch's check */
                return CUDA_CHECK(e);
        }
        return CUDA_CHECK_LAUNCH();
}

/* ---- attention, plain reference: one block per (token, head), two passes over the
 * positions (max, then exp / sum / V in chunks of ATT_REF_THREADS), exp in base e ---- */

#define ATT_REF_THREADS 128

static __device__ float score_ref(const struct cuda_attn_args &a, const float *q, long long row,
                                  int hk)
{
        const __half *k = a.k_cache + row * a.n_head_kv * a.dk + (long long)hk * a.dk;
        float s = 0.0f;
        for (int i = 0; i < a.dk; i++)
                s += q[i] * __half2float(k[i]);
        return a.scale * s;
}

static __global__ void __launch_bounds__(ATT_REF_THREADS)
attention_ref_kernel(const struct cuda_attn_args a)
{
        __shared__ float red[ATT_REF_THREADS], ex[ATT_REF_THREADS];
        __shared__ long long rows[ATT_REF_THREADS];
        const int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
        const int hk = h / (a.n_head / a.n_head_kv);
        const float *q = a.q + (long long)t * a.ldq + (long long)h * a.dk;
        const struct attn_span sp = attn_span_of(a, t);

        float mx = -INFINITY;
        for (long long j = tid; j < sp.n; j += ATT_REF_THREADS) {
                const long long r = cache_row(a.map, sp.row, sp.lo + (int)j);
                if (r >= 0)
                        mx = fmaxf(mx, score_ref(a, q, r, hk));
        }
        red[tid] = mx;
        __syncthreads();
        for (int o = ATT_REF_THREADS / 2; o > 0; o >>= 1) {
                if (tid < o)
                        red[tid] = fmaxf(red[tid], red[tid + o]);
                __syncthreads();
        }
        const float M = red[0];

        float sum = 0.0f, acc0 = 0.0f, acc1 = 0.0f; /* dims tid and tid + 128 (dv ≤ 256) */
        for (long long j0 = 0; j0 < sp.n; j0 += ATT_REF_THREADS) {
                const long long j = j0 + tid;
                long long r = -1;
                float e = 0.0f;
                if (j < sp.n) {
                        r = cache_row(a.map, sp.row, sp.lo + (int)j);
                        if (r >= 0)
                                e = expf(score_ref(a, q, r, hk) - M);
                }
                ex[tid] = e;
                rows[tid] = r;
                __syncthreads();
                const int nj = (int)min((long long)ATT_REF_THREADS, sp.n - j0);
                for (int jj = 0; jj < nj; jj++) {
                        if (rows[jj] < 0)
                                continue;
                        const __half *v = a.v_cache + rows[jj] * a.n_head_kv * a.dv +
                                          (long long)hk * a.dv;
                        sum += ex[jj];
                        if (tid < a.dv)
                                acc0 += ex[jj] * __half2float(v[tid]);
                        if (tid + ATT_REF_THREADS < a.dv)
                                acc1 += ex[jj] * __half2float(v[tid + ATT_REF_THREADS]);
                }
                __syncthreads();
        }
        const long long o = (long long)t * a.ldo + (long long)h * a.dv;
        if (tid < a.dv)
                att_store(a, o + tid, sum > 0.0f ? acc0 / sum : 0.0f);
        if (tid + ATT_REF_THREADS < a.dv)
                att_store(a, o + tid + ATT_REF_THREADS, sum > 0.0f ? acc1 / sum : 0.0f);
}

int cuda_attention_ref(const struct cuda_attn_args *a, cudaStream_t stream)
{
        const int r = cuda_attn_check(a);
        if (r <= 0)
                return r;
        const dim3 grid((unsigned)a->ntok, (unsigned)a->n_head);
        attention_ref_kernel<<<grid, ATT_REF_THREADS, 0, stream>>>(*a);
        return CUDA_CHECK_LAUNCH();
}
