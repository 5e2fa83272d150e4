/* attention_tc.cu — prefill attention on the tensor cores (attention.cuh's cuda_attention_tc):
 * flash attention over the paged f16 cache with mma.sync m16n8k16 (f16 in, f32 accumulate).
 *
 * A block of four warps takes one query head and a tile of 64 consecutive tokens of the
 * batch (16 a warp; Q, scaled, as f16 rows in shared memory, read with ldmatrix) and visits
 * the cache in tiles of BK positions (64 by default), aligned to multiples of BK, from the
 * first position any of its tokens attends to until the last. Each position tile's K and V
 * rows are copied with cp.async into one of NS shared-memory stages (2 by default: the next
 * tile's copies fly while this one is used), rows padded by 16 bytes so the ldmatrix reads
 * of 8 rows hit 32 different banks. Per tile a warp computes its 16 × BK scores (ldmatrix of K rows gives the
 * B fragments as they lie), masks positions outside each token's span or without a cache
 * block, updates the running max and sums (FA2's online softmax; base 2: Q carries
 * scale·log2 e), and adds P·V with P taken straight from the score accumulators (the C
 * layout of two adjacent n-tiles is the A layout of one k16 step) and V through
 * ldmatrix.trans.
 *
 * A tile's tokens may belong to several sequences (rows of the block table): the block runs
 * the position loop once per sequence present, with the other tokens masked. A token's sums
 * do not depend on its neighbours: the tile sequence is aligned to BK whatever the other
 * tokens' spans, and a tile masked for a token leaves its state exactly as it was (factor 1,
 * terms 0). GQA: the K/V head of query head h is h / (n_head / n_head_kv); blocks of the
 * heads of one tile run side by side, so a K/V tile is read from HBM about once. */
#include <limits.h>
#include <math.h>

#include <cuda_fp16.h>

#include "attention.cuh"
#include "attn_dev.cuh"
#include "common.cuh"
#include "mma_dev.cuh"
#include "qkv_dev.cuh" /* cache_row */

#define TC_WARPS 4
#define TC_THREADS (TC_WARPS * 32)
#define TC_BQ (TC_WARPS * 16) /* tokens per block */
/* positions per tile and shared-memory stages, per head size */
#ifndef TC_BK64
#define TC_BK64 64
#endif
#ifndef TC_NS64
#define TC_NS64 2
#endif
#ifndef TC_BK128
#define TC_BK128 64
#endif
#ifndef TC_NS128
#define TC_NS128 2
#endif
#define TC_PAD 8              /* halves after each shared-memory row */

template <int D> struct tc_shape {
        static constexpr int BK = D == 64 ? TC_BK64 : TC_BK128; /* positions per tile */
        static constexpr int NS = D == 64 ? TC_NS64 : TC_NS128; /* stages (tiles in flight + 1) */
        static constexpr int LD = D + TC_PAD;      /* halves per shared row */
        static constexpr int TILE = BK * LD;       /* halves per K (or V) stage */
        static constexpr int CH = D / 8;           /* 16-byte chunks per row */
        static constexpr int PER = BK * CH / TC_THREADS; /* chunks a thread copies per K tile */
        static constexpr int LDO = D + 4;          /* floats per row of the output staging */
        /* K and V stages, then Q; the output staging reuses the stages after the last tile */
        static constexpr size_t SMEM = sizeof(__half) * (NS * 2 /* K, V */ * TILE + TC_BQ * LD);
        static_assert(sizeof(float) * TC_BQ * LDO <= sizeof(__half) * NS * 2 * TILE, "output staging fits");
        static_assert(BK * CH % TC_THREADS == 0 && BK % 16 == 0 && NS >= 2 && NS <= 8, "tile shape");
};

/* Per token of the block's tile: its sequence's block-table row (-1: none left to do), the
 * span it attends to. */
struct tc_tok {
        int row[TC_BQ], lo[TC_BQ], hi[TC_BQ];
};

template <int D>
static __global__ void __launch_bounds__(TC_THREADS, D == 64 ? 3 : 2) attn_tc_kernel(const struct cuda_attn_args a)
{
        using S = tc_shape<D>;
        extern __shared__ uint4 tc_smem4[];
        __half *sk = (__half *)tc_smem4;  /* [NS][BK][LD] */
        __half *sv = sk + S::NS * S::TILE; /* [NS][BK][LD] */
        __shared__ struct tc_tok tk;
        __shared__ int kok[S::NS][S::BK]; /* per stage: position in a span with a cache block */

        pdl_start(); /* q and the cache rows of this batch come from the kernels before */
        const int h = (int)blockIdx.x, t0 = ((int)gridDim.y - 1 - (int)blockIdx.y) * TC_BQ;
        const int hk = h / (a.n_head / a.n_head_kv);
        const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
        const int KD = a.n_head_kv * D;
        const int ra = warp * 16 + g, rb = ra + 8;

        if (tid < TC_BQ) {
                int row = -1, lo = 0, hi = -1;
                if (t0 + tid < a.ntok) {
                        const struct attn_span sp = attn_span_of(a, t0 + tid);
                        /* -2: a token with nothing to attend to, written as 0 below */
                        row = sp.n > 0 ? sp.row : -2;
                        lo = sp.lo;
                        hi = sp.hi;
                }
                tk.row[tid] = row;
                tk.lo[tid] = lo;
                tk.hi[tid] = hi;
        }

        /* Q, scaled by scale·log2 e, as f16 rows in shared memory (zeros past ntok); each warp
         * takes the A fragments of its 16 rows from there with ldmatrix */
        const float qmul = a.scale * LOG2E;
        __half *sq = sv + S::NS * S::TILE; /* [TC_BQ][LD] */
        for (int i = tid; i < TC_BQ * D / 2; i += TC_THREADS) {
                const int row = i / (D / 2), d = 2 * (i % (D / 2));
                float x0 = 0.0f, x1 = 0.0f;
                if (t0 + row < a.ntok) {
                        const float *qr = a.q + (long long)(t0 + row) * a.ldq + (long long)h * D + d;
                        x0 = qr[0] * qmul;
                        x1 = qr[1] * qmul;
                }
                *(__half2 *)(sq + row * S::LD + d) = __floats2half2_rn(x0, x1);
        }
        __syncthreads(); /* tk, Q */

        /* tokens with nothing to attend to: zeros, as cuda_attention writes */
        for (int i = tid; i < TC_BQ * D; i += TC_THREADS)
                if (tk.row[i / D] == -2)
                        att_store(a, (long long)(t0 + i / D) * a.ldo + (long long)h * D + i % D, 0.0f);

        const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(sk);
        const int mi = lane >> 3, mr = lane & 7;
        /* this lane's ldmatrix row of Q: matrix mi is rows +8·(mi % 2), dims +8·(mi / 2) */
        const uint32_t qaddr = sbase + 2u * (uint32_t)(2 * S::NS * S::TILE + (warp * 16 + (mi & 1) * 8 + mr) * S::LD + (mi >> 1) * 8);
        const __half *kbase = a.k_cache + (long long)hk * D, *vbase = a.v_cache + (long long)hk * D;
        for (;;) {
                /* the next sequence of the tile, and the positions its tokens attend to */
                int r = -1, kmin = INT_MAX, kmax = -1;
                for (int i = 0; i < TC_BQ; i++) {
                        const int ri = tk.row[i];
                        if (ri >= 0 && r < 0)
                                r = ri;
                        if (ri >= 0 && ri == r) {
                                kmin = min(kmin, tk.lo[i]);
                                kmax = max(kmax, tk.hi[i]);
                        }
                }
                if (r < 0)
                        break;
                const int kbeg = kmin / S::BK * S::BK, ntile = (kmax - kbeg) / S::BK + 1;
                const bool act_a = tk.row[ra] == r, act_b = tk.row[rb] == r;
                const int lo_a = tk.lo[ra], hi_a = act_a ? tk.hi[ra] : -1;
                const int lo_b = tk.lo[rb], hi_b = act_b ? tk.hi[rb] : -1;

                /* copies of tile it's K and V rows into stage st (positions outside
                 * [kmin, kmax] or without a block: zeros, flagged) */
                auto issue = [&](int it, int st) {
                        if (it >= ntile) { /* an empty group keeps the wait counts uniform */
                                cp_async_commit();
                                return;
                        }
                        const int p0 = kbeg + it * S::BK;
#pragma unroll
                        for (int i = 0; i < S::PER; i++) {
                                const int idx = i * TC_THREADS + tid, j = idx / S::CH, ch = idx % S::CH;
                                const int p = p0 + j;
                                const long long cr = p >= kmin && p <= kmax ? cache_row(a.map, r, p) : -1;
                                const long long off = cr >= 0 ? cr * KD + ch * 8 : 0;
                                cp_async16(sk + st * S::TILE + j * S::LD + ch * 8, kbase + off, cr >= 0 ? 16 : 0);
                                cp_async16(sv + st * S::TILE + j * S::LD + ch * 8, vbase + off, cr >= 0 ? 16 : 0);
                                if (ch == 0)
                                        kok[st][j] = cr >= 0;
                        }
                        cp_async_commit();
                };

                float o[D / 8][4];
                zero4(o);
                float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;

                for (int i = 0; i < S::NS - 1; i++)
                        issue(i, i);
                for (int it = 0; it < ntile; it++) {
                        const int st = it % S::NS;
                        /* into the stage tile it − 1 used (freed by the barrier ending it) */
                        issue(it + S::NS - 1, (it + S::NS - 1) % S::NS);
                        cp_async_wait(S::NS - 1);
                        __syncthreads(); /* every thread's copies of tile it have landed */

                        /* this lane's ldmatrix rows: K (non-transposed) matrix mi is positions
                         * +8·(mi / 2), dims +8·(mi % 2); V (transposed) positions +8·(mi % 2),
                         * dims +8·(mi / 2) */
                        const uint32_t kaddr = sbase + 2u * (uint32_t)(st * S::TILE + ((mi >> 1) * 8 + mr) * S::LD + (mi & 1) * 8);
                        const uint32_t vaddr = sbase + 2u * (uint32_t)(S::NS * S::TILE + st * S::TILE + ((mi & 1) * 8 + mr) * S::LD +
                                                                   (mi >> 1) * 8);
                        const int p0 = kbeg + it * S::BK;
                        /* scores: n-tile j holds positions p0 + 8j + 2q (+1), rows ra, rb */
                        float s[S::BK / 8][4];
                        zero4(s);
#pragma unroll
                        for (int c = 0; c < D / 16; c++) {
                                uint32_t qf[4];
                                ldsm_x4(qf, qaddr + 2u * (c * 16));
#pragma unroll
                                for (int nn = 0; nn < S::BK / 16; nn++)
                                        mma_x2<false>(s[2 * nn], s[2 * nn + 1], qf, kaddr + 2u * (nn * 16 * S::LD + c * 16));
                        }

#pragma unroll
                        for (int j = 0; j < S::BK / 8; j++) /* outside each row's span or without a block */
#pragma unroll
                                for (int e = 0; e < 2; e++) {
                                        const int jj = 8 * j + 2 * q + e, p = p0 + jj;
                                        const bool ok = kok[st][jj];
                                        if (!(ok && p >= lo_a && p <= hi_a))
                                                s[j][e] = -INFINITY;
                                        if (!(ok && p >= lo_b && p <= hi_b))
                                                s[j][2 + e] = -INFINITY;
                                }
                        const float2 f = online_softmax2(s, m_a, m_b, l_a, l_b);
                        scale_rows2(o, f.x, f.y);

                        /* O += P·V: k16 step kk is n-tiles 2kk, 2kk + 1 of the scores */
#pragma unroll
                        for (int kk = 0; kk < S::BK / 16; kk++) {
                                const uint32_t pa[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]),
                                                        pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                                        pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                                        pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
                                for (int dn = 0; dn < D / 16; dn++)
                                        mma_x2<true>(o[2 * dn], o[2 * dn + 1], pa, vaddr + 2u * (kk * 16 * S::LD + dn * 16));
                        }
                        __syncthreads(); /* stage st is refilled by the next iteration's issue */
                }

                l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
                l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
                l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
                l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
                const float inv_a = l_a > 0.0f ? 1.0f / l_a : 0.0f, inv_b = l_b > 0.0f ? 1.0f / l_b : 0.0f;
                /* the block's outputs through shared memory (the stages are free: the last
                 * tile ended with a barrier), then stored row by row in the output's type */
                float *so = (float *)sk; /* [TC_BQ][LDO] */
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                        const int d = 8 * j + 2 * q;
                        *(float2 *)(so + ra * S::LDO + d) = make_float2(o[j][0] * inv_a, o[j][1] * inv_a);
                        *(float2 *)(so + rb * S::LDO + d) = make_float2(o[j][2] * inv_b, o[j][3] * inv_b);
                }
                __syncthreads();
                for (int i = tid; i < TC_BQ * D; i += TC_THREADS) {
                        const int row = i / D, d = i % D;
                        if (tk.row[row] == r)
                                att_store(a, (long long)(t0 + row) * a.ldo + (long long)h * D + d, so[row * S::LDO + d]);
                }
                __syncthreads(); /* everyone has read tk.row for this sequence */
                if (tid < TC_BQ && tk.row[tid] == r)
                        tk.row[tid] = -1;
                __syncthreads();
        }
}

int cuda_attention_tc_ok(int dk, int dv)
{
        return dk == dv && (dk == 64 || dk == 128);
}

template <int D> static cudaError_t tc_launch(const struct cuda_attn_args *a, cudaStream_t stream)
{
        static unsigned long long allowed;
        cudaError_t e = smem_allow(attn_tc_kernel<D>, (int)tc_shape<D>::SMEM, &allowed);
        if (e != cudaSuccess)
                return e;
        const unsigned tiles = (unsigned)((a->ntok + TC_BQ - 1) / TC_BQ);
        return cuda_launch(a->pdl != 0, attn_tc_kernel<D>, dim3((unsigned)a->n_head, tiles), dim3(TC_THREADS),
                           tc_shape<D>::SMEM, stream, *a);
}

int cuda_attention_tc(const struct cuda_attn_args *a, cudaStream_t stream)
{
        const int r = cuda_attn_check(a);
        if (r <= 0)
                return r;
        if (!cuda_attention_tc_ok(a->dk, a->dv))
                return -EOPNOTSUPP;
        if ((a->ntok + TC_BQ - 1) / TC_BQ > 65535)
                return -EINVAL; /* grid y */
        const cudaError_t e = a->dk == 64 ? tc_launch<64>(a, stream) : tc_launch<128>(a, stream);
        if (e != cudaSuccess) {
                (void)cudaGetLastError();
                return CUDA_CHECK(e);
        }
        return CUDA_CHECK_LAUNCH();
}
