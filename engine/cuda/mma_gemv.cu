/* mma_gemv.cu — decode products for 1..64 tokens on the tensor cores (mma_gemv.cuh).
 * Memory-bound by design: weights stream once through registers (16-byte non-allocating
 * loads, two k-steps in flight per lane), activations come through L1, and no operand goes
 * through shared memory. A block of 8 warps owns 128·MT rows, each warp MT 16-row tiles; the
 * blocks of a thread-block cluster (SPLIT ≤ 8) split k and their partial sums meet in
 * distributed shared memory in rank order, so small matrices still fill the GPU and no
 * atomics or scratch buffers are needed.
 *
 * Operand layout. mma.sync m16n8k16 gives lane (g = lane/4, q = lane%4) the A elements
 * A[g][2q..2q+1], A[g+8][2q..2q+1], A[g][2q+8..2q+9], A[g+8][2q+8..2q+9] and the B elements
 * B[2q..2q+1][g], B[2q+8..2q+9][g] (lower k in the lower half of each .b32). A sum over k does
 * not care which k sits in which slot as long as A and B agree, so for a 32-wide k chunk c the
 * lane loads 16 bytes W[row][c+8q .. c+8q+7] of rows g and g+8 and x16[tok g][c+8q .. +7], and
 * uses elements 0..3 as its slots {2q, 2q+1, 2q+8, 2q+9} of the chunk's first mma and 4..7 as
 * those of the second: slot 2q+i ↔ k = c+8q+i, slot 2q+8+i ↔ k = c+8q+2+i (first mma; +4 for
 * the second). Accumulator lane (g, q) holds C[g][2q..2q+1] and C[g+8][2q..2q+1]: rows g, g+8,
 * tokens 2q, 2q+1 of the n-tile.
 *
 * Summation order (fixed, so results are bitwise reproducible): a warp visits its k chunks in
 * ascending order; each chunk's two mmas start from zero and the chunk's sum is added to the
 * f32 accumulator with an ordinary (round-to-nearest) add, keeping the tensor core's
 * truncating accumulation to 32 products; then the warp's partials of the SPLIT blocks are
 * added in rank order. Nothing depends on MT, U or pdl; only SPLIT changes the order. */
#include <algorithm>
#include <atomic>

#include <cooperative_groups.h>

#include "common.cuh"
#include "mma_gemv.cuh"

namespace cg = cooperative_groups;

#define MMA_WARPS     8
#define MMA_THREADS   (MMA_WARPS * 32)
#define MMA_CHUNK     32 /* k elements per chunk: two m16n8k16 */
#define MMA_MAX_SPLIT 8  /* portable cluster size */

/* ---- the tensor-core step ---- */

/* d += A·B for one m16n8k16, f32 accumulate. */
template <int WTYPE>
static __device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1)
{
        if constexpr (WTYPE == CUDA_WTYPE_BF16)
                asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                    "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                    : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        else
                asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                    "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                    : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                    : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Per kernel shape: MT 16-row tiles per warp, U chunks per k-step (weight loads in flight per
 * lane: 2·MT·U, twice that while the next step is loading), MINB blocks per SM asked of ptxas. */
template <int NT, int MT> struct mma_shape {
        static constexpr int U = MT == 1 && NT < 8 ? 4 : 2;
        static constexpr int BM = MMA_WARPS * MT * 16; /* rows per block */
        static constexpr int LDR = BM + 4;             /* red[] row stride: conflict-free stores */
        static constexpr int MINB = MT == 2 ? 1 : 2;
        static constexpr size_t SMEM = sizeof(float) * NT * 8 * LDR;
};

/* a[u] ← the weights of chunk c + u (u < U, c + u < c_end) of this lane's 2·MT rows. */
template <int MT, int U>
static __device__ __forceinline__ void load_w(uint4 (&a)[U][MT][2],
                                              const uint16_t *const (&wp)[MT][2], int c, int c_end)
{
#pragma unroll
        for (int u = 0; u < U; u++)
                if (c + u < c_end)
#pragma unroll
                        for (int i = 0; i < MT; i++)
#pragma unroll
                                for (int h = 0; h < 2; h++)
                                        a[u][i][h] =
                                            ld_stream_u4(wp[i][h] + (size_t)(c + u) * MMA_CHUNK);
}

/* acc[i][j] += the products of chunks c .. c+U-1 (those < c_end) for m-tile i, n-tile j. */
template <int WTYPE, int NT, int MT, int U>
static __device__ __forceinline__ void mma_step(float (&acc)[MT][NT][4], const uint4 (&a)[U][MT][2],
                                                const uint16_t *__restrict__ x, size_t xoff, int k,
                                                int g, int c, int c_end, int ntok)
{
#pragma unroll
        for (int j = 0; j < NT; j++) {
                if (j * 8 >= ntok) /* warp-uniform: a tile of padding tokens only */
                        continue;
                /* token j·8 + g of this lane, none past ntok (those B columns are zero) */
                const bool tok_ok = j * 8 + g < ntok;
                uint4 b[U];
#pragma unroll
                for (int u = 0; u < U; u++)
                        b[u] = c + u < c_end && tok_ok
                                   ? __ldg((const uint4 *)(x + xoff + (size_t)j * 8 * k +
                                                           (size_t)(c + u) * MMA_CHUNK))
                                   : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
                for (int u = 0; u < U; u++) {
                        if (c + u >= c_end)
                                continue;
#pragma unroll
                        for (int i = 0; i < MT; i++) {
                                const uint4 lo = a[u][i][0], hi = a[u][i][1]; /* rows g, g + 8 */
                                float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                                mma16816<WTYPE>(t, lo.x, hi.x, lo.y, hi.y, b[u].x, b[u].y);
                                mma16816<WTYPE>(t, lo.z, hi.z, lo.w, hi.w, b[u].z, b[u].w);
#pragma unroll
                                for (int r = 0; r < 4; r++)
                                        acc[i][j][r] += t[r];
                        }
                }
        }
}

/* Grid: (rows / BM) · split blocks, clusters of split consecutive blocks when split > 1.
 * Block b: rows [(b / split)·BM, +BM), k chunks [s·nch/split, (s+1)·nch/split) for rank
 * s = b % split. Dynamic shared memory: red[NT·8][LDR], the block's partial sums by token. */
template <int WTYPE, int NT, int MT>
static __global__ void __launch_bounds__(MMA_THREADS, (mma_shape<NT, MT>::MINB))
    mma_gemv_kernel(const uint16_t *__restrict__ w, const uint16_t *__restrict__ x,
                    float *__restrict__ y, int rows, int k, int ntok, int accumulate, int split)
{
        constexpr int U = mma_shape<NT, MT>::U, BM = mma_shape<NT, MT>::BM,
                      LDR = mma_shape<NT, MT>::LDR;
        extern __shared__ float red[];
        pdl_trigger(); /* the next kernel may launch now: it waits for this one in turn */
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
        const int rank = (int)(blockIdx.x % (unsigned)split);
        const int row0 = (int)(blockIdx.x / (unsigned)split) * BM;
        const int nch = k / MMA_CHUNK;
        const int c_begin = (int)((long long)rank * nch / split);
        const int c_end = (int)((long long)(rank + 1) * nch / split);

        const uint16_t *wp[MT][2];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
                for (int h = 0; h < 2;
                     h++) { /* rows past the end re-read the last row, never past */
                        const int r = min(row0 + warp * MT * 16 + i * 16 + h * 8 + g, rows - 1);
                        wp[i][h] = w + (size_t)r * k + q * 8;
                }

        uint4 a0[U][MT][2], a1[U][MT][2]; /* ping-pong: one step computing, the next loading */
        load_w<MT, U>(a0, wp, c_begin, c_end);
        pdl_wait(); /* x16 and y belong to earlier kernels from here on */

        const size_t xoff = (size_t)g * k + q * 8; /* this lane's token g, its 8 k of a chunk */
        float acc[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int r = 0; r < 4; r++)
                                acc[i][j][r] = 0.0f;

        for (int c = c_begin;;) { /* c_end - c_begin ≥ 1 (split ≤ nch) */
                if (c + U < c_end)
                        load_w<MT, U>(a1, wp, c + U, c_end);
                mma_step<WTYPE, NT, MT, U>(acc, a0, x, xoff, k, g, c, c_end, ntok);
                c += U;
                if (c >= c_end)
                        break;
                if (c + U < c_end)
                        load_w<MT, U>(a0, wp, c + U, c_end);
                mma_step<WTYPE, NT, MT, U>(acc, a1, x, xoff, k, g, c, c_end, ntok);
                c += U;
                if (c >= c_end)
                        break;
        }

        /* partials by token: red[t][local row], conflict-free (LDR ≡ 4 mod 32) */
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) {
                        const int lr = warp * MT * 16 + i * 16 + g, t = j * 8 + 2 * q;
                        red[t * LDR + lr] = acc[i][j][0];
                        red[(t + 1) * LDR + lr] = acc[i][j][1];
                        red[t * LDR + lr + 8] = acc[i][j][2];
                        red[(t + 1) * LDR + lr + 8] = acc[i][j][3];
                }

        /* the cluster's partials meet: rank s sums its share of the outputs over ranks 0..split-1
         */
        cg::cluster_group cluster = cg::this_cluster();
        if (split > 1)
                cluster.sync(); /* every rank's red[] written (release/acquire) */
        else
                __syncthreads();
        const float *part[MMA_MAX_SPLIT];
#pragma unroll
        for (int s = 0; s < MMA_MAX_SPLIT; s++)
                part[s] = split > 1 && s < split
                              ? cluster.map_shared_rank((const float *)red, (unsigned)s)
                              : red;
        const int bm = min(BM, rows - row0);
        const int n_out = ntok * bm;
        const int e_end = (int)((long long)(rank + 1) * n_out / split);
        for (int e = (int)((long long)rank * n_out / split) + (int)threadIdx.x; e < e_end;
             e += MMA_THREADS) {
                const int t = e / bm, r = e % bm, off = t * LDR + r;
                float v[MMA_MAX_SPLIT];
#pragma unroll
                for (int s = 0; s < MMA_MAX_SPLIT; s++) /* all loads first, then the ordered sum */
                        v[s] = s < split ? part[s][off] : 0.0f;
                float sum = v[0];
#pragma unroll
                for (int s = 1; s < MMA_MAX_SPLIT; s++)
                        if (s < split)
                                sum += v[s];
                float *yp = y + (size_t)t * rows + row0 + r;
                *yp = accumulate ? *yp + sum : sum;
        }
        if (split > 1)
                cluster.sync(); /* no block leaves while another still reads its red[] */
}

/* ---- launch ---- */

/* What a kernel's launch needs to know of the device, asked once per kernel (plain queries,
 * no stream work, so fine inside graph capture): blocks per SM, and per cluster size how many
 * clusters fit at once. 0 where a query failed (the plan then assumes 1 block per SM). */
struct mma_occupancy {
        std::atomic<int> ready{0};
        std::atomic<int> per_sm{0};
        std::atomic<int> clusters[MMA_MAX_SPLIT + 1];
};

/* The 64-token, 256-row kernel's partial sums need more than 48 KiB of shared memory:
 * allow it once per device (common.cuh smem_allow). */
template <int WTYPE, int NT, int MT> static cudaError_t smem_optin(void)
{
        constexpr size_t smem = mma_shape<NT, MT>::SMEM;
        if constexpr (smem <= 48 * 1024)
                return cudaSuccess;
        static unsigned long long allowed;
        return smem_allow(mma_gemv_kernel<WTYPE, NT, MT>, (int)smem, &allowed);
}

template <int WTYPE, int NT, int MT> static mma_occupancy &occupancy(void)
{
        static mma_occupancy occ;
        if (occ.ready.load(std::memory_order_acquire))
                return occ;
        auto kern = mma_gemv_kernel<WTYPE, NT, MT>;
        constexpr size_t smem = mma_shape<NT, MT>::SMEM;
        int n = 0;
        if (smem_optin<WTYPE, NT, MT>() != cudaSuccess)
                (void)cudaGetLastError();
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kern, MMA_THREADS, smem) !=
                cudaSuccess ||
            n < 0) {
                (void)cudaGetLastError();
                n = 0;
        }
        occ.per_sm.store(n, std::memory_order_relaxed);
        for (int s = 2; s <= MMA_MAX_SPLIT; s++) {
                cudaLaunchConfig_t cfg = {};
                cudaLaunchAttribute attr[1];
                cfg.gridDim = dim3((unsigned)s * 64u);
                cfg.blockDim = dim3(MMA_THREADS);
                cfg.dynamicSmemBytes = smem;
                attr[0].id = cudaLaunchAttributeClusterDimension;
                attr[0].val.clusterDim.x = (unsigned)s;
                attr[0].val.clusterDim.y = 1;
                attr[0].val.clusterDim.z = 1;
                cfg.attrs = attr;
                cfg.numAttrs = 1;
                int c = 0;
                if (cudaOccupancyMaxActiveClusters(&c, kern, &cfg) != cudaSuccess || c < 0) {
                        (void)cudaGetLastError();
                        c = 0;
                }
                occ.clusters[s].store(c, std::memory_order_relaxed);
        }
        occ.ready.store(1, std::memory_order_release);
        return occ;
}

struct mma_plan {
        int nt, mt, split, blocks;
};

static int sm_count(void)
{
        int dev = 0, sms = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            sms <= 0) {
                (void)cudaGetLastError();
                return 1;
        }
        return sms;
}

/* The largest cluster size (≤ 8, ≤ chunks / U so every warp gets a full step) whose grid
 * still fits on the device at once: one wave in which every block streams at the same time,
 * as many blocks as fit, so small matrices keep every SM loading. Past one wave (huge row
 * counts) no split. */
template <int WTYPE, int NT, int MT> static int plan_split(int rows, int k, int sms, int force)
{
        constexpr int BM = mma_shape<NT, MT>::BM, U = mma_shape<NT, MT>::U;
        const int nch = k / MMA_CHUNK;
        if (force > 0)
                return std::min(force, std::min(nch, MMA_MAX_SPLIT));
        const mma_occupancy &occ = occupancy<WTYPE, NT, MT>();
        const long long rb = (rows + BM - 1) / BM;
        const int per_sm = std::max(1, occ.per_sm.load(std::memory_order_relaxed));
        const int smax = std::max(1, std::min(MMA_MAX_SPLIT, nch / U));
        for (int s = smax; s >= 2; s--) {
                int c = occ.clusters[s].load(std::memory_order_relaxed);
                const long long slots = c > 0 ? (long long)c * s : (long long)sms * per_sm / s * s;
                if (rb * s <= slots)
                        return s;
        }
        return 1;
}

/* MT = 2 (256 rows per block: half the activation loads per weight byte, which at 64 tokens
 * would otherwise take most of L1's bandwidth) when its grid still gives three quarters of
 * the SMs a block; otherwise 1. Only for ntok > 16: below that the activation traffic is
 * small and 128-row blocks give more parallelism. (Untuned: tests/gpu/test_mma --sweep.) */
template <int WTYPE, int NT> static mma_plan plan_nt(int rows, int k, int force_mt, int force_split)
{
        const int sms = sm_count();
        mma_plan p = {NT, 1, 1, 0};
        if constexpr (NT >= 4) {
                int mt = force_mt;
                if (mt != 1 && mt != 2) {
                        const int s2 = plan_split<WTYPE, NT, 2>(rows, k, sms, force_split);
                        const long long b2 = (long long)((rows + 255) / 256) * s2;
                        mt = 4 * b2 >= 3LL * sms ? 2 : 1;
                }
                p.mt = mt;
        }
        if constexpr (NT >= 4)
                if (p.mt == 2) {
                        p.split = plan_split<WTYPE, NT, 2>(rows, k, sms, force_split);
                        p.blocks = (rows + 255) / 256 * p.split;
                        return p;
                }
        p.split = plan_split<WTYPE, NT, 1>(rows, k, sms, force_split);
        const int bm = MMA_WARPS * p.mt * 16;
        p.blocks = (rows + bm - 1) / bm * p.split;
        return p;
}

template <int WTYPE>
static mma_plan plan_w(int rows, int k, int ntok, int force_mt, int force_split)
{
        if (ntok <= 8)
                return plan_nt<WTYPE, 1>(rows, k, force_mt, force_split);
        if (ntok <= 16)
                return plan_nt<WTYPE, 2>(rows, k, force_mt, force_split);
        if (ntok <= 32)
                return plan_nt<WTYPE, 4>(rows, k, force_mt, force_split);
        return plan_nt<WTYPE, 8>(rows, k, force_mt, force_split);
}

static mma_plan plan(uint32_t wtype, int rows, int k, int ntok, int force_mt, int force_split)
{
        return wtype == CUDA_WTYPE_BF16
                   ? plan_w<CUDA_WTYPE_BF16>(rows, k, ntok, force_mt, force_split)
                   : plan_w<CUDA_WTYPE_F16>(rows, k, ntok, force_mt, force_split);
}

template <int WTYPE, int NT, int MT>
static cudaError_t launch(const mma_plan &p, const void *w, const uint16_t *x, float *y, int rows,
                          int k, int ntok, int accumulate, cudaStream_t stream, bool pdl)
{
        auto kern = mma_gemv_kernel<WTYPE, NT, MT>;
        const cudaError_t e = smem_optin<WTYPE, NT, MT>();
        if (e != cudaSuccess)
                return e;
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[2];
        unsigned n = 0;
        cfg.gridDim = dim3((unsigned)p.blocks);
        cfg.blockDim = dim3(MMA_THREADS);
        cfg.dynamicSmemBytes = mma_shape<NT, MT>::SMEM;
        cfg.stream = stream;
        if (p.split > 1) {
                attr[n].id = cudaLaunchAttributeClusterDimension;
                attr[n].val.clusterDim.x = (unsigned)p.split;
                attr[n].val.clusterDim.y = 1;
                attr[n].val.clusterDim.z = 1;
                n++;
        }
        if (pdl) {
                attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                attr[n].val.programmaticStreamSerializationAllowed = 1;
                n++;
        }
        cfg.attrs = n ? attr : NULL;
        cfg.numAttrs = n;
        return cudaLaunchKernelEx(&cfg, kern, (const uint16_t *)w, x, y, rows, k, ntok, accumulate,
                                  p.split);
}

template <int WTYPE>
static cudaError_t launch_w(const mma_plan &p, const void *w, const uint16_t *x, float *y, int rows,
                            int k, int ntok, int acc, cudaStream_t s, bool pdl)
{
        switch (p.nt * 4 + p.mt) {
        case 1 * 4 + 1:
                return launch<WTYPE, 1, 1>(p, w, x, y, rows, k, ntok, acc, s, pdl);
        case 2 * 4 + 1:
                return launch<WTYPE, 2, 1>(p, w, x, y, rows, k, ntok, acc, s, pdl);
        case 4 * 4 + 1:
                return launch<WTYPE, 4, 1>(p, w, x, y, rows, k, ntok, acc, s, pdl);
        case 4 * 4 + 2:
                return launch<WTYPE, 4, 2>(p, w, x, y, rows, k, ntok, acc, s, pdl);
        case 8 * 4 + 1:
                return launch<WTYPE, 8, 1>(p, w, x, y, rows, k, ntok, acc, s, pdl);
        case 8 * 4 + 2:
                return launch<WTYPE, 8, 2>(p, w, x, y, rows, k, ntok, acc, s, pdl);
        }
        return cudaErrorInvalidValue;
}

static bool args_ok(uint32_t wtype, int rows, int k, int ntok)
{
        return (wtype == CUDA_WTYPE_F16 || wtype == CUDA_WTYPE_BF16) && rows > 0 && k > 0 &&
               k % MMA_CHUNK == 0 && ntok >= 1 && ntok <= CUDA_MMA_GEMV_MAX_TOKENS;
}

int cuda_mma_gemv_plan(uint32_t wtype, int rows, int k, int ntok, int *mt, int *split, int *blocks)
{
        if (!args_ok(wtype, rows, k, ntok))
                return -EINVAL;
        const mma_plan p = plan(wtype, rows, k, ntok, 0, 0);
        if (mt)
                *mt = p.mt;
        if (split)
                *split = p.split;
        if (blocks)
                *blocks = p.blocks;
        return 0;
}

int cuda_mma_gemv_tuned(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows,
                        int k, int ntok, float beta, cudaStream_t stream, bool pdl, int mt,
                        int split)
{
        if (!args_ok(wtype, rows, k, ntok) || !w || !x16 || !y || (beta != 0.0f && beta != 1.0f))
                return -EINVAL;
        if (((uintptr_t)w | (uintptr_t)x16) % 16 || (uintptr_t)y % sizeof(float))
                return -EINVAL;
        if (mt < 0 || mt > 2 || split < 0 || split > MMA_MAX_SPLIT)
                return -EINVAL;
        const mma_plan p = plan(wtype, rows, k, ntok, mt, split);
        const int acc = beta != 0.0f;
        const cudaError_t e =
            wtype == CUDA_WTYPE_BF16
                ? launch_w<CUDA_WTYPE_BF16>(p, w, x16, y, rows, k, ntok, acc, stream, pdl)
                : launch_w<CUDA_WTYPE_F16>(p, w, x16, y, rows, k, ntok, acc, stream, pdl);
        return CUDA_CHECK(e);
}

int cuda_mma_gemv(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows, int k,
                  int ntok, float beta, cudaStream_t stream, bool pdl)
{
        return cuda_mma_gemv_tuned(wtype, w, x16, y, rows, k, ntok, beta, stream, pdl, 0, 0);
}
