/* mma_gemv.cu — decode products for 1..64 tokens on the tensor cores (mma_gemv.cuh).
 * A block of 4 warps owns 64·MT rows; warp w computes rows w·16·MT .. +16·MT of every token
 * (MT m16 tiles × NT n8 tiles of mma.sync m16n8k16, f32 accumulate). The weights and the
 * activations of a k chunk (32 columns: two k16 steps) are copied with cp.async into one of
 * MMA_STAGES shared-memory stages, MMA_STAGES − 1 chunks ahead of the one in use, so each
 * block keeps up to MMA_STAGES · (64·MT + 8·NT) · 64 bytes in flight; rows are padded by 16
 * bytes so the ldmatrix reads of 8 rows land in 32 different banks. The A fragments (weights)
 * and B fragments (activations: x16 rows are B's columns, k contiguous, as ldmatrix reads
 * them) come from shared memory with ldmatrix. The blocks of a thread-block cluster (SPLIT
 * ≤ 8) split k; their partial sums meet in distributed shared memory in rank order, so small
 * matrices still fill the GPU with no atomics or scratch buffers.
 *
 * Summation order (fixed, so results are bitwise reproducible): a block visits its chunks in
 * ascending k; each chunk's two mmas start from zero and the chunk's sum is added to the f32
 * accumulator with an ordinary (round-to-nearest) add, keeping the tensor core's truncating
 * accumulation to 32 products; then the ranks' partials are added in rank order. Nothing
 * depends on MT or pdl; only SPLIT changes the order. */
#include <algorithm>
#include <atomic>

#include <cooperative_groups.h>

#include "common.cuh"
#include "mma_gemv.cuh"

namespace cg = cooperative_groups;

#define MMA_WARPS     4
#define MMA_THREADS   (MMA_WARPS * 32)
#define MMA_CHUNK     32 /* k elements per chunk: two m16n8k16 */
#ifndef MMA_KS
#define MMA_KS        4  /* chunks per stage: 256 contiguous bytes of each weight row */
#endif
#ifndef MMA_STAGES
#define MMA_STAGES    3
#endif
#define MMA_LDS       (MMA_KS * MMA_CHUNK + 8) /* halves per shared row: conflict-free ldmatrix */
#define MMA_MAX_SPLIT 8  /* portable cluster size */

/* ---- the tensor-core step ---- */

/* d += A·B for one m16n8k16, f32 accumulate. */
template <int WTYPE>
static __device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
        if constexpr (WTYPE == CUDA_WTYPE_BF16)
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                             "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
        else
                asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                             "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                             : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                             : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t addr)
{
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
}

static __device__ __forceinline__ void cp16(uint32_t dst, const void *src, int bytes)
{
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}

/* Per kernel shape: MT 16-row tiles per warp, NT 8-token tiles (at least 2 loaded: ldmatrix
 * takes 16 token rows), shared memory per stage and in all. */
template <int NT, int MT> struct mma_shape {
        static constexpr int BM = MMA_WARPS * MT * 16; /* rows per block */
        static constexpr int XR = NT < 2 ? 16 : NT * 8; /* token rows staged */
        static constexpr int STAGE = (BM + XR) * MMA_LDS; /* halves */
        static constexpr int LDR = BM + 4;               /* red[] row stride */
        static constexpr size_t SMEM_STAGES = sizeof(uint16_t) * MMA_STAGES * STAGE;
        static constexpr size_t SMEM_RED = sizeof(float) * NT * 8 * LDR;
        static constexpr size_t SMEM = SMEM_STAGES > SMEM_RED ? SMEM_STAGES : SMEM_RED;
        static constexpr int MINB = 2;
};

/* Grid: (rows / BM) · split blocks, clusters of split consecutive blocks when split > 1.
 * Block b: rows [(b / split)·BM, +BM), k chunks [s·nch/split, (s+1)·nch/split) for rank
 * s = b % split. Dynamic shared memory: the stages, then (reused) red[NT·8][LDR], the block's
 * partial sums by token. */
template <int WTYPE, int NT, int MT>
static __global__ void __launch_bounds__(MMA_THREADS, (mma_shape<NT, MT>::MINB))
    mma_gemv_kernel(const uint16_t *__restrict__ w, const uint16_t *__restrict__ x,
                    float *__restrict__ y, int rows, int k, int ntok, int accumulate, int split)
{
        using S = mma_shape<NT, MT>;
        constexpr int BM = S::BM, LDR = S::LDR;
        extern __shared__ uint4 mma_smem4[];
        uint16_t *stages = (uint16_t *)mma_smem4;
        float *red = (float *)mma_smem4;
        pdl_start(); /* x16 and y belong to earlier kernels */
        const int tid = (int)threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
        const int rank = (int)(blockIdx.x % (unsigned)split);
        const int row0 = (int)(blockIdx.x / (unsigned)split) * BM;
        const int nch = k / MMA_CHUNK;
        const int c_begin = (int)((long long)rank * nch / split);
        const int c_end = (int)((long long)(rank + 1) * nch / split);
        const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(stages);

        /* copies of chunks c .. c + MMA_KS − 1 (those before c_end) into stage st: BM weight
         * rows and XR token rows of MMA_KS · 4 × 16 bytes; rows past the matrix or the batch
         * are zeros */
        constexpr int PR = MMA_KS * 4; /* 16-byte pieces a row */
        auto issue = [&](int c, int st) {
                if (c < c_end) {
                        const uint32_t sb = sbase + 2u * (uint32_t)(st * S::STAGE);
                        for (int i = tid; i < (BM + S::XR) * PR; i += MMA_THREADS) {
                                const int rr = i / PR, part = i % PR;
                                if (c + part / 4 >= c_end)
                                        continue;
                                const uint32_t dst = sb + 2u * (uint32_t)(rr * MMA_LDS + part * 8);
                                const size_t col = (size_t)c * MMA_CHUNK + part * 8;
                                if (rr < BM) {
                                        const int r = row0 + rr;
                                        cp16(dst, w + (r < rows ? (size_t)r * k + col : 0), r < rows ? 16 : 0);
                                } else {
                                        const int t = rr - BM;
                                        cp16(dst, x + (t < ntok ? (size_t)t * k + col : 0), t < ntok ? 16 : 0);
                                }
                        }
                }
                asm volatile("cp.async.commit_group;" ::: "memory");
        };

        /* this lane's ldmatrix rows: A matrix mi is rows +8·(mi % 2), k +8·(mi / 2); B matrix
         * mi is tokens +8·(mi / 2), k +8·(mi % 2) */
        const int mi = lane >> 3, mr = lane & 7;
        const uint32_t a_off = 2u * (uint32_t)((warp * MT * 16 + (mi & 1) * 8 + mr) * MMA_LDS + (mi >> 1) * 8);
        const uint32_t b_off = 2u * (uint32_t)((BM + (mi >> 1) * 8 + mr) * MMA_LDS + (mi & 1) * 8);

        float acc[MT][NT][4];
#pragma unroll
        for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                                acc[i][j][e] = 0.0f;

#pragma unroll
        for (int st = 0; st < MMA_STAGES - 1; st++)
                issue(c_begin + st * MMA_KS, st);
        int st = 0;
        for (int cs = c_begin; cs < c_end; cs += MMA_KS) {
                issue(cs + (MMA_STAGES - 1) * MMA_KS, (st + MMA_STAGES - 1) % MMA_STAGES);
                asm volatile("cp.async.wait_group %0;" ::"n"(MMA_STAGES - 1) : "memory");
                __syncthreads(); /* the stage's chunks have landed for every thread */
                const uint32_t sb0 = sbase + 2u * (uint32_t)(st * S::STAGE);
#pragma unroll
                for (int kc = 0; kc < MMA_KS; kc++) {
                if (cs + kc >= c_end)
                        break;
                const uint32_t sb = sb0 + 2u * (uint32_t)(kc * MMA_CHUNK);
                float t[MT][NT][4];
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                        for (int j = 0; j < NT; j++)
#pragma unroll
                                for (int e = 0; e < 4; e++)
                                        t[i][j][e] = 0.0f;
#pragma unroll
                for (int kk = 0; kk < 2; kk++) {
                        uint32_t a[MT][4];
#pragma unroll
                        for (int i = 0; i < MT; i++)
                                ldsm4(a[i], sb + a_off + 2u * (uint32_t)(i * 16 * MMA_LDS + kk * 16));
#pragma unroll
                        for (int jj = 0; jj < (NT + 1) / 2; jj++) {
                                uint32_t b[4];
                                ldsm4(b, sb + b_off + 2u * (uint32_t)(jj * 16 * MMA_LDS + kk * 16));
#pragma unroll
                                for (int i = 0; i < MT; i++) {
                                        mma16816<WTYPE>(t[i][2 * jj], a[i], b[0], b[1]);
                                        if (2 * jj + 1 < NT)
                                                mma16816<WTYPE>(t[i][2 * jj + 1], a[i], b[2], b[3]);
                                }
                        }
                }
#pragma unroll
                for (int i = 0; i < MT; i++)
#pragma unroll
                        for (int j = 0; j < NT; j++)
#pragma unroll
                                for (int e = 0; e < 4; e++)
                                        acc[i][j][e] += t[i][j][e];
                }
                __syncthreads(); /* stage st is refilled by the next iteration's issue */
                st = st + 1 == MMA_STAGES ? 0 : st + 1;
        }
        asm volatile("cp.async.wait_all;" ::: "memory"); /* only empty groups are left */

        /* partials by token: red[t][local row] (the stages are free: the loop ended with a
         * barrier) */
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
        for (int e = (int)((long long)rank * n_out / split) + tid; e < e_end; e += MMA_THREADS) {
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

/* The largest cluster size (≤ 8, at least 4 chunks a rank so its pipeline fills) whose grid
 * still fits on the device at once: one wave in which every block streams at the same time,
 * as many blocks as fit, so small matrices keep every SM loading. Past one wave (huge row
 * counts) no split. */
template <int WTYPE, int NT, int MT> static int plan_split(int rows, int k, int sms, int force)
{
        constexpr int BM = mma_shape<NT, MT>::BM;
        const int nch = k / MMA_CHUNK;
        if (force > 0)
                return std::min(force, std::min(nch, MMA_MAX_SPLIT));
        const mma_occupancy &occ = occupancy<WTYPE, NT, MT>();
        const long long rb = (rows + BM - 1) / BM;
        const int per_sm = std::max(1, occ.per_sm.load(std::memory_order_relaxed));
        const int smax = std::max(1, std::min(MMA_MAX_SPLIT, nch / MMA_KS));
        for (int s = smax; s >= 2; s--) {
                int c = occ.clusters[s].load(std::memory_order_relaxed);
                const long long slots = c > 0 ? (long long)c * s : (long long)sms * per_sm / s * s;
                if (rb * s <= slots)
                        return s;
        }
        return 1;
}

/* MT = 2 (128 rows per block: half the activation reads from shared memory per weight byte)
 * when its grid still gives three quarters of the SMs a block; otherwise 1 (64 rows). Only
 * for ntok > 16: below that the activation traffic is small and smaller blocks give more
 * parallelism. (Untuned: tests/gpu/test_mma --sweep.) */
template <int WTYPE, int NT> static mma_plan plan_nt(int rows, int k, int force_mt, int force_split)
{
        const int sms = sm_count();
        mma_plan p = {NT, 1, 1, 0};
        if constexpr (NT >= 4) {
                int mt = force_mt;
                if (mt != 1 && mt != 2) {
                        const int s2 = plan_split<WTYPE, NT, 2>(rows, k, sms, force_split);
                        const long long b2 = (long long)((rows + mma_shape<NT, 2>::BM - 1) / mma_shape<NT, 2>::BM) * s2;
                        mt = 4 * b2 >= 3LL * sms ? 2 : 1;
                }
                p.mt = mt;
        }
        if constexpr (NT >= 4)
                if (p.mt == 2) {
                        p.split = plan_split<WTYPE, NT, 2>(rows, k, sms, force_split);
                        p.blocks = (rows + mma_shape<NT, 2>::BM - 1) / mma_shape<NT, 2>::BM * p.split;
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
