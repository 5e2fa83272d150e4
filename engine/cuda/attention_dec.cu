/* attention_dec.cu — decode attention on the tensor cores (attention.cuh's cuda_attention_dec):
 * the attention of many tokens of different sequences (a decode step of a large batch) over
 * the paged f16 cache, with mma.sync m16n8k16 (f16 in, f32 accumulate).
 *
 * cuda_attention spends most of its time issuing instructions at large batches (an H200,
 * 64 tokens × 1024 positions, d 64: 61% of the issue slots busy and 1.9 TB/s of K/V), so the
 * dot products move to the tensor cores. A block takes one token and one K/V head; the
 * query heads that share that head (GQA, up to 16) are the rows of the mma's A operand, so
 * each K/V byte is read once for all of them (rows past the group are zeros, computed and
 * dropped). Its W warps (4) take the token's positions in tiles of 16 aligned to 16 (warp w:
 * tiles w, w + W, ...), each streaming its tiles through its own ring of NS shared-memory
 * stages with cp.async (NS − 1 tiles in flight while one is used; no block barrier in the
 * loop). Per tile a warp computes its 16 × 16 scores (Q fragments held in registers, K
 * rows through ldmatrix as the B operand), runs FA2's online softmax in base 2 (Q carries
 * scale·log2 e), and adds P·V with P taken straight from the score accumulators and V
 * through ldmatrix.trans. The warps' states are merged in shared memory at the end.
 *
 * A few tokens would leave most SMs idle: then the blocks of a thread block cluster (up to
 * 8) split each token's positions, warp w of rank r taking tiles r·W + w, + cl·W, ..., and
 * merge their partial results through distributed shared memory. The cluster size follows
 * the token count (dec_cluster), so a token's result may differ in the last bits between
 * batch sizes, as cuda_attention's does outside deterministic mode. Q (scaled) and the
 * probabilities are rounded to f16 for the products, as in cuda_attention_tc: within f16
 * rounding of cuda_attention, not bitwise. */
#include <math.h>

#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include "attention.cuh"
#include "attn_dev.cuh"
#include "common.cuh"
#include "mma_dev.cuh"
#include "qkv_dev.cuh" /* cache_row */

namespace cg = cooperative_groups;

/* Warps per block, stages per warp and the blocks an SM should hold, per head size. Chosen
 * on an H200 (docs/performance.md) among 2 or 4 warps and 2 to 4 stages: at d 64, 2 stages
 * let 4 blocks share an SM (58 KB of shared memory a block with 3), which took 64 tokens
 * × 8 K/V heads from 1.3 waves to one (17.2 → 13.8 µs at 256 positions); at d 128 the
 * registers (198) allow 2 blocks either way. */
#ifndef DT_W64
#define DT_W64 4
#endif
#ifndef DT_NS64
#define DT_NS64 2
#endif
#ifndef DT_MINB64
#define DT_MINB64 4
#endif
#ifndef DT_W128
#define DT_W128 4
#endif
#ifndef DT_NS128
#define DT_NS128 3
#endif
#ifndef DT_MINB128
#define DT_MINB128 2
#endif
#define DT_BK 16           /* positions per tile */
#define DT_ROWS 16         /* query heads a block can take: the mma's M */
#define DT_PAD 8           /* halves after each shared row: conflict-free ldmatrix */
#define DT_MAX_GRID_Y 65535 /* tokens per launch */
#define DT_MAX_CLUSTER 8    /* the portable cluster size limit */

template <int D> struct dt_shape {
        static constexpr int W = D == 64 ? DT_W64 : DT_W128;      /* warps per block */
        static constexpr int THREADS = W * 32;
        static constexpr int NS = D == 64 ? DT_NS64 : DT_NS128;   /* stages per warp */
        static constexpr int MINB = D == 64 ? DT_MINB64 : DT_MINB128;
        static constexpr int LD = D + DT_PAD;         /* halves per shared row */
        static constexpr int TILE = DT_BK * LD;       /* halves per K (or V) stage */
        static constexpr int CH = D / 8;              /* 16-byte chunks per row */
        static constexpr int PER = DT_BK * CH / 32;   /* chunks a lane copies per K tile */
        static constexpr int STAGE = 2 * TILE * 2 + DT_BK * 4; /* bytes: K, V, row flags */
        static constexpr int RING = NS * STAGE;       /* bytes per warp */
        static constexpr int LDO = D + 4;             /* floats per row of the merge */
        static constexpr size_t SMEM = (size_t)W * RING + sizeof(__half) * DT_ROWS * LD; /* + Q */
        static_assert(STAGE % 16 == 0 && (LD * 2) % 16 == 0, "16-byte aligned rows and stages");
        static_assert(DT_BK * CH % 32 == 0, "whole copies per lane");
        static_assert(sizeof(float) * (W + 1) * DT_ROWS * (LDO + 2) <= (size_t)W * RING,
                      "the merges (warps, then the block's for its cluster) fit in the rings");
};

template <int D, bool CLUSTER>
static __global__ void __launch_bounds__(dt_shape<D>::THREADS, dt_shape<D>::MINB) attn_dec_kernel(const struct cuda_attn_args a, int t0)
{
        using S = dt_shape<D>;
        extern __shared__ uint4 dt_smem4[];
        char *smem = (char *)dt_smem4;
        __half *sq = (__half *)(smem + S::W * S::RING); /* [DT_ROWS][LD] */

        pdl_start(); /* q and the cache rows of this step come from the kernels before */
        const int group = a.n_head / a.n_head_kv;
        int rank = 0, cl = 1; /* this block's share of the positions in its cluster */
        if (CLUSTER) {
                rank = (int)cg::this_cluster().block_rank();
                cl = (int)cg::this_cluster().num_blocks();
        }
        const int hk = (int)blockIdx.x / cl, t = t0 + (int)blockIdx.y, h0 = hk * group;
        const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
        const int KD = a.n_head_kv * D;
        const struct attn_span sp = attn_span_of(a, t);

        /* Q of the group, scaled by scale·log2 e, as f16 rows (zeros past the group) */
        const float qmul = a.scale * LOG2E;
        const float *qt = a.q + (long long)t * a.ldq + (long long)h0 * D;
        for (int i = tid; i < DT_ROWS * D / 2; i += S::THREADS) {
                const int row = i / (D / 2), d = 2 * (i % (D / 2));
                float x0 = 0.0f, x1 = 0.0f;
                if (row < group) {
                        x0 = qt[row * D + d] * qmul;
                        x1 = qt[row * D + d + 1] * qmul;
                }
                *(__half2 *)(sq + row * S::LD + d) = __floats2half2_rn(x0, x1);
        }
        __syncthreads(); /* Q */

        /* ldmatrix rows: A (Q) matrix mi is rows +8·(mi % 2), dims +8·(mi / 2); K (B, not
         * transposed) positions +8·(mi / 2), dims +8·(mi % 2); V (B, transposed) positions
         * +8·(mi % 2), dims +8·(mi / 2) */
        const int mi = lane >> 3, mr = lane & 7;
        uint32_t qf[D / 16][4];
        {
                const uint32_t qaddr = (uint32_t)__cvta_generic_to_shared(sq) +
                                       2u * (uint32_t)(((mi & 1) * 8 + mr) * S::LD + (mi >> 1) * 8);
#pragma unroll
                for (int c = 0; c < D / 16; c++)
                        ldsm_x4(qf[c], qaddr + 2u * (c * 16));
        }

        const int kbeg = sp.n > 0 ? sp.lo / DT_BK * DT_BK : 0;
        const int ntile = sp.n > 0 ? (sp.hi - kbeg) / DT_BK + 1 : 0;
        /* warp w of cluster rank r takes tiles r·W + w, + cl·W, ... */
        const int first = rank * S::W + warp, tstride = cl * S::W;
        const int nk = first < ntile ? (ntile - first + tstride - 1) / tstride : 0; /* this warp's tiles */
        char *ring = smem + warp * S::RING;
        const uint32_t rbase = (uint32_t)__cvta_generic_to_shared(ring);
        const __half *kbase = a.k_cache + (long long)hk * D, *vbase = a.v_cache + (long long)hk * D;

        /* cache row of position (this warp's tile k) + lane for lanes < 16 (-1: outside the
         * span, or no block), read one tile ahead of its copies */
        auto tile_row = [&](int k) -> long long {
                const int p = kbeg + (first + k * tstride) * DT_BK + lane;
                if (k >= nk || lane >= DT_BK || p < sp.lo || p > sp.hi)
                        return -1;
                return cache_row(a.map, sp.row, p);
        };
        long long rnext = tile_row(0);
        /* copies of this warp's tile k (K, V and the row flags) into stage st; one commit
         * group, empty past the warp's tiles */
        auto issue = [&](int k, int st) {
                const long long rcur = rnext;
                rnext = tile_row(k + 1);
                if (k < nk) {
                        __half *sk = (__half *)(ring + st * S::STAGE), *sv = sk + S::TILE;
#pragma unroll
                        for (int i = 0; i < S::PER; i++) {
                                const int idx = i * 32 + lane, j = idx / S::CH, ch = idx % S::CH;
                                const long long cr = __shfl_sync(0xffffffffu, rcur, j);
                                const long long off = cr >= 0 ? cr * KD + ch * 8 : 0;
                                cp_async16(sk + j * S::LD + ch * 8, kbase + off, cr >= 0 ? 16 : 0);
                                cp_async16(sv + j * S::LD + ch * 8, vbase + off, cr >= 0 ? 16 : 0);
                        }
                        if (lane < DT_BK)
                                ((int *)(sv + S::TILE))[lane] = rcur >= 0;
                }
                cp_async_commit();
        };

        float o[D / 8][4];
        zero4(o);
        float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f; /* rows g, g + 8 */

        for (int i = 0; i < S::NS - 1; i++)
                issue(i, i);
        for (int k = 0; k < nk; k++) {
                const int st = k % S::NS;
                __syncwarp(); /* every lane is done with the stage the issue refills (tile k − 1's) */
                issue(k + S::NS - 1, (k + S::NS - 1) % S::NS);
                cp_async_wait(S::NS - 1);
                __syncwarp(); /* every lane's copies of tile k have landed */

                const uint32_t sb = rbase + (uint32_t)(st * S::STAGE);
                const uint32_t kaddr = sb + 2u * (uint32_t)(((mi >> 1) * 8 + mr) * S::LD + (mi & 1) * 8);
                const uint32_t vaddr = sb + 2u * (uint32_t)(S::TILE + ((mi & 1) * 8 + mr) * S::LD + (mi >> 1) * 8);
                const int *fl = (const int *)(ring + st * S::STAGE + 4 * S::TILE);

                /* scores: n-tile j holds positions 8j + 2q (+1) of rows g, g + 8 */
                float s[2][4];
                zero4(s);
#pragma unroll
                for (int c = 0; c < D / 16; c++)
                        mma_x2<false>(s[0], s[1], qf[c], kaddr + 2u * (c * 16));

#pragma unroll
                for (int j = 0; j < 2; j++) /* positions outside the span or without a block */
#pragma unroll
                        for (int e = 0; e < 2; e++)
                                if (!fl[8 * j + 2 * q + e]) {
                                        s[j][e] = -INFINITY;
                                        s[j][2 + e] = -INFINITY;
                                }
                const float2 f = online_softmax2(s, m_a, m_b, l_a, l_b);
                const float f_a = f.x, f_b = f.y;
                if (__any_sync(0xffffffffu, f_a != 1.0f || f_b != 1.0f)) /* the max grew somewhere */
                        scale_rows2(o, f_a, f_b);

                /* O += P·V: the two n-tiles of scores are the A fragment of one k16 step */
                const uint32_t pa[4] = {pack_half2(s[0][0], s[0][1]), pack_half2(s[0][2], s[0][3]),
                                        pack_half2(s[1][0], s[1][1]), pack_half2(s[1][2], s[1][3])};
#pragma unroll
                for (int dn = 0; dn < D / 16; dn++)
                        mma_x2<true>(o[2 * dn], o[2 * dn + 1], pa, vaddr + 2u * (dn * 16));
        }

        l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
        l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);

        /* merge the warps: their unnormalized rows, maxima and sums through shared memory
         * (the rings are free: every warp's last copies were waited for) */
        __syncthreads();
        float *so = (float *)smem;               /* [S::W][DT_ROWS][LDO] */
        float *sm = so + S::W * DT_ROWS * S::LDO; /* [S::W][DT_ROWS] maxima */
        float *sl = sm + S::W * DT_ROWS;      /* [S::W][DT_ROWS] sums */
        const int ra = warp * DT_ROWS + g, rb = ra + 8;
#pragma unroll
        for (int j = 0; j < D / 8; j++) {
                const int d = 8 * j + 2 * q;
                *(float2 *)(so + ra * S::LDO + d) = make_float2(o[j][0], o[j][1]);
                *(float2 *)(so + rb * S::LDO + d) = make_float2(o[j][2], o[j][3]);
        }
        if (q == 0) {
                sm[ra] = m_a;
                sm[rb] = m_b;
                sl[ra] = l_a;
                sl[rb] = l_b;
        }
        __syncthreads();
        /* the block's rows: alone, the output; in a cluster, the block's partial (unscaled
         * sums against its own maxima) for the cluster merge below */
        float *bo = sl + S::W * DT_ROWS;          /* [DT_ROWS][LDO] */
        float *bm = bo + DT_ROWS * S::LDO, *bl = bm + DT_ROWS; /* [DT_ROWS] each */
        for (int i = tid; i < group * D; i += S::THREADS) {
                const int row = i / D, d = i % D;
                float mx = -INFINITY;
#pragma unroll
                for (int w = 0; w < S::W; w++)
                        mx = fmaxf(mx, sm[w * DT_ROWS + row]);
                float L = 0.0f, acc = 0.0f;
                if (mx != -INFINITY) { /* else: nothing to attend to, 0 as cuda_attention */
#pragma unroll
                        for (int w = 0; w < S::W; w++) {
                                const float mw = sm[w * DT_ROWS + row];
                                const float f = mw == -INFINITY ? 0.0f : exp2f(mw - mx);
                                L += sl[w * DT_ROWS + row] * f;
                                acc += so[(w * DT_ROWS + row) * S::LDO + d] * f;
                        }
                }
                if (!CLUSTER) {
                        att_store(a, (long long)t * a.ldo + (long long)(h0 + row) * D + d, L > 0.0f ? acc / L : 0.0f);
                } else {
                        bo[row * S::LDO + d] = acc;
                        if (d == 0)
                                bm[row] = mx, bl[row] = L;
                }
        }
        if (!CLUSTER)
                return;
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync(); /* every block's partial written and visible */
        /* block `rank` writes every cl-th output element, from all the blocks' partials */
        for (int i = rank * S::THREADS + tid; i < group * D; i += cl * S::THREADS) {
                const int row = i / D, d = i % D;
                float mk[DT_MAX_CLUSTER], mx = -INFINITY;
#pragma unroll
                for (int k = 0; k < DT_MAX_CLUSTER; k++) {
                        mk[k] = k < cl ? cluster.map_shared_rank(bm, k)[row] : -INFINITY;
                        mx = fmaxf(mx, mk[k]);
                }
                float L = 0.0f, acc = 0.0f;
                if (mx != -INFINITY) {
#pragma unroll
                        for (int k = 0; k < DT_MAX_CLUSTER; k++) {
                                if (k < cl && mk[k] != -INFINITY) {
                                        const float f = exp2f(mk[k] - mx);
                                        L += cluster.map_shared_rank(bl, k)[row] * f;
                                        acc += cluster.map_shared_rank(bo, k)[row * S::LDO + d] * f;
                                }
                        }
                }
                att_store(a, (long long)t * a.ldo + (long long)(h0 + row) * D + d, L > 0.0f ? acc / L : 0.0f);
        }
        cluster.sync(); /* keep this block's shared memory until every block has read it */
}

int cuda_attention_dec_ok(int dk, int dv, int n_head, int n_head_kv)
{
        return dk == dv && (dk == 64 || dk == 128) && n_head_kv > 0 && n_head % n_head_kv == 0 &&
               n_head / n_head_kv <= DT_ROWS;
}

/* Blocks of a cluster splitting each (token, K/V head)'s positions: doubled (up to 8) while
 * the launch stays within DT_CL_BLOCKS blocks, so a few tokens spread over the GPU. On an
 * H200 (docs/performance.md), 128 was as fast as the best of 64, 128 and 256 within 10% at
 * 2-16 tokens and 256-4096 positions, and faster than cuda_attention at every point. */
#ifndef DT_CL_BLOCKS
#define DT_CL_BLOCKS 128
#endif
static int dec_cluster(const struct cuda_attn_args *a)
{
        const long long blocks = (long long)a->ntok * a->n_head_kv;
        int cl = 1;
        while (cl < DT_MAX_CLUSTER && blocks * cl * 2 <= DT_CL_BLOCKS)
                cl *= 2;
        return cl;
}

template <int D, bool CLUSTER> static cudaError_t dec_launch(const struct cuda_attn_args *a, int cl, cudaStream_t stream)
{
        static unsigned long long allowed;
        const auto kernel = attn_dec_kernel<D, CLUSTER>;
        cudaError_t e = smem_allow(kernel, (int)dt_shape<D>::SMEM, &allowed);
        for (int t0 = 0; e == cudaSuccess && t0 < a->ntok; t0 += DT_MAX_GRID_Y) {
                const int n = a->ntok - t0 < DT_MAX_GRID_Y ? a->ntok - t0 : DT_MAX_GRID_Y;
                e = cuda_launch_cl(a->pdl != 0, cl, kernel, dim3((unsigned)(a->n_head_kv * cl), (unsigned)n),
                                   dim3(dt_shape<D>::THREADS), dt_shape<D>::SMEM, stream, *a, t0);
        }
        return e;
}

template <int D> static cudaError_t dec_launch_d(const struct cuda_attn_args *a, cudaStream_t stream)
{
        const int cl = dec_cluster(a);
        return cl > 1 ? dec_launch<D, true>(a, cl, stream) : dec_launch<D, false>(a, 1, stream);
}

int cuda_attention_dec(const struct cuda_attn_args *a, cudaStream_t stream)
{
        const int r = cuda_attn_check(a);
        if (r <= 0)
                return r;
        if (!cuda_attention_dec_ok(a->dk, a->dv, a->n_head, a->n_head_kv))
                return -EOPNOTSUPP;
        const cudaError_t e = a->dk == 64 ? dec_launch_d<64>(a, stream) : dec_launch_d<128>(a, stream);
        if (e != cudaSuccess) {
                (void)cudaGetLastError();
                return CUDA_CHECK(e);
        }
        return CUDA_CHECK_LAUNCH();
}
