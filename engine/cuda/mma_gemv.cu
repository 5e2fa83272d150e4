/* mma_gemv.cu — products for 1..64 tokens on Hopper's tensor cores (mma_gemv.cuh), built
 * for the memory-bound case: the weights stream once from HBM through the bulk tensor copy
 * engine (TMA, cp.async.bulk.tensor) into a ring of shared-memory stages, and wgmma reads
 * them from there with no register staging.
 *
 * The product is turned around: the weight rows are wgmma's M (64 rows a warpgroup), the
 * tokens its N (8, 16, 32 or 64: the token count rounded up; the copy engine fills the
 * missing tokens with zeros) and k its K. A and B are both "K-major" tiles of 64 k elements
 * (128 bytes a row, the 128-byte swizzle the copy engine writes and wgmma reads), so W and x16
 * are copied as they lie in memory, k contiguous.
 *
 * A block is MT consumer warpgroups (64·MT rows) and one producer warp whose lane 0 issues
 * the copies: per stage the block's 64·MT × 64 weight tile and the NT × 64 activation tile,
 * completing on the stage's "full" mbarrier; the consumers release a stage on its "empty"
 * mbarrier once their wgmmas have read it. With programmatic dependent launch the producer
 * issues the weight copies of the first stages before griddepcontrol.wait (weights are never
 * written) and the activation copies after it.
 *
 * Small matrices would leave most SMs idle, so the blocks of a thread-block cluster (SPLIT ≤ 8)
 * split k; each block leaves its partial sums in shared memory and, after a cluster barrier,
 * every block adds its share of the outputs over the cluster's blocks in rank order through
 * distributed shared memory. No atomics, no scratch memory.
 *
 * Summation order (fixed, so the result is bitwise reproducible and does not depend on NT,
 * MT, the token count or pdl): per 64-element k chunk, four wgmma k16 steps start from zero
 * and accumulate on the tensor core (truncating, as it does), the chunk's sums are added to
 * f32 registers with ordinary rounding in ascending chunk order, and the SPLIT partials are
 * added in rank order. Only SPLIT changes the bits.
 *
 * Needs sm_90a (wgmma): this file is compiled for that target alone (meson.build). */
#include <algorithm>
#include <mutex>

#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>

#include "common.cuh"
#include "mma_gemv.cuh"

namespace cg = cooperative_groups;

#define MG_KC        64 /* k elements per chunk: one 128-byte swizzled row */
#define MG_MAX_SPLIT 8  /* the portable cluster size */
#define MG_RING      (72 * 1024) /* shared-memory bytes of a block's stages (three blocks an SM) */

/* Per kernel shape: BM rows a block, bytes of a stage's weight / activation tile, S stages. */
template <int NT, int MT> struct mg_shape {
        static constexpr int BM = 64 * MT;
        static constexpr int WB = BM * 128;
        static constexpr int XB = NT * 128;
        static constexpr int SB = WB + XB;
        static constexpr int S = MG_RING / SB < 2 ? 2 : MG_RING / SB > 8 ? 8 : MG_RING / SB;
        static constexpr int THREADS = 128 * MT + 32;
        static constexpr size_t SMEM = 1024 + (size_t)S * SB + 2 * S * sizeof(uint64_t);
        static_assert((size_t)(BM + 8) * NT * sizeof(float) <= (size_t)S * SB, "partials fit the ring");
};

/* ---- PTX wrappers ---- */

static __device__ __forceinline__ uint32_t smem_u32(const void *p)
{
        return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void mbar_init(uint32_t bar, int count)
{
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

static __device__ __forceinline__ void mbar_expect_tx(uint32_t bar, int bytes)
{
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                     : "memory");
}

static __device__ __forceinline__ void mbar_arrive(uint32_t bar)
{
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

static __device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity)
{
        asm volatile("{\n"
                     ".reg .pred P1;\n"
                     "MG_WAIT:\n"
                     "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
                     "@!P1 bra MG_WAIT;\n"
                     "}\n" ::"r"(bar),
                     "r"(parity)
                     : "memory");
}

/* the copy engine: box (c0 = k, c1 = row) of map into shared memory at dst, on bar */
static __device__ __forceinline__ void tma_load(const CUtensorMap *map, uint32_t dst, uint32_t bar, int c0,
                                                int c1)
{
        asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
                     " [%0], [%1, {%3, %4}], [%2];" ::"r"(dst),
                     "l"((uint64_t)map), "r"(bar), "r"(c0), "r"(c1)
                     : "memory");
}

/* wgmma's shared-memory matrix descriptor for a K-major tile with the 128-byte swizzle: rows
 * of 128 bytes, 8-row groups 1024 bytes apart (the stride field), tile base 1024-aligned;
 * the k16 steps inside a 64-element row advance the start address by 32 bytes. */
static __device__ __forceinline__ uint64_t sw128_desc(uint32_t addr)
{
        return (uint64_t)((addr >> 4) & 0x3fff) | (uint64_t)1 << 16 | (uint64_t)(1024 >> 4) << 32 |
               (uint64_t)1 << 62;
}

static __device__ __forceinline__ void wg_fence(void)
{
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

static __device__ __forceinline__ void wg_commit(void)
{
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}

/* until at most N committed groups of this warp are still running */
template <int N> static __device__ __forceinline__ void wg_wait(void)
{
        asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

/* d (+)= A·B, m64 nN k16, f32 accumulators; acc 0 starts from zero. One asm statement per
 * shape and type: the N/2 accumulator registers, then the two descriptors and acc. */
#define MG_WGMMA(SHAPE, TY, REGS, PA, PB, PACC, ...)                                          \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PACC ", 0;\n"                       \
                     "wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " {" REGS "}, " PA \
                     ", " PB ", p, 1, 1, 0, 0;\n}\n"                                            \
                     : __VA_ARGS__                                                              \
                     : "l"(a), "l"(b), "r"(acc))

#define MG_R4 "%0, %1, %2, %3"
#define MG_D4 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])

#define MG_R8 "%0, %1, %2, %3, %4, %5, %6, %7"
#define MG_D8 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])

#define MG_R16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define MG_D16 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])

#define MG_R32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define MG_D32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])


template <int N> struct wg_mma;

#define MG_SPEC(N, R, D, PA, PB, PACC)                                                          \
        template <> struct wg_mma<N> {                                                          \
                template <bool BF16>                                                            \
                static __device__ __forceinline__ void run(float(&d)[N / 2], uint64_t a, uint64_t b, int acc) \
                {                                                                               \
                        if constexpr (BF16)                                                     \
                                MG_WGMMA("m64n" #N "k16", "bf16", R, PA, PB, PACC, D);          \
                        else                                                                    \
                                MG_WGMMA("m64n" #N "k16", "f16", R, PA, PB, PACC, D);           \
                }                                                                               \
        };
MG_SPEC(8, MG_R4, MG_D4, "%4", "%5", "%6")
MG_SPEC(16, MG_R8, MG_D8, "%8", "%9", "%10")
MG_SPEC(32, MG_R16, MG_D16, "%16", "%17", "%18")
MG_SPEC(64, MG_R32, MG_D32, "%32", "%33", "%34")

/* ---- the kernel ---- */

template <int NT, int MT, bool BF16>
__global__ void __launch_bounds__(mg_shape<NT, MT>::THREADS)
    mg_kernel(const __grid_constant__ CUtensorMap mw, const __grid_constant__ CUtensorMap mx,
              float *__restrict__ y, int rows, int k, int ntok, int accumulate)
{
        using S = mg_shape<NT, MT>;
        extern __shared__ uint8_t mg_smem[];
        uint8_t *ring = (uint8_t *)(((uintptr_t)mg_smem + 1023) & ~(uintptr_t)1023);
        const uint32_t ring_a = smem_u32(ring);
        const uint32_t full = ring_a + S::S * S::SB, empty = full + 8 * S::S;
        const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
        const int split = gridDim.x, rank = blockIdx.x; /* the cluster is the grid's x */
        const int row0 = blockIdx.y * S::BM;
        const int nck = (k + MG_KC - 1) / MG_KC;
        const int c0 = rank * nck / split, n = (rank + 1) * nck / split - c0;

        pdl_trigger();
        if (tid == 0) {
                for (int s = 0; s < S::S; s++) {
                        mbar_init(full + 8 * s, 1);
                        mbar_init(empty + 8 * s, 4 * MT);
                }
                asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        }
        __syncthreads();

        float acc[NT / 2];
#pragma unroll
        for (int j = 0; j < NT / 2; j++)
                acc[j] = 0.0f;

        if (warp == 4 * MT) {
                if (lane == 0) {
                        asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)&mw) : "memory");
                        asm volatile("prefetch.tensormap [%0];" ::"l"((uint64_t)&mx) : "memory");
                        /* the first stages' weights before the wait, their activations after */
                        const int pre = n < S::S ? n : S::S;
                        for (int i = 0; i < pre; i++) {
                                mbar_expect_tx(full + 8 * i, S::SB);
                                tma_load(&mw, ring_a + i * S::SB, full + 8 * i, (c0 + i) * MG_KC, row0);
                        }
                        pdl_wait();
                        for (int i = 0; i < pre; i++)
                                tma_load(&mx, ring_a + i * S::SB + S::WB, full + 8 * i, (c0 + i) * MG_KC, 0);
                        for (int i = pre; i < n; i++) {
                                const int s = i % S::S;
                                mbar_wait(empty + 8 * s, (uint32_t)(i / S::S - 1) & 1);
                                mbar_expect_tx(full + 8 * s, S::SB);
                                tma_load(&mw, ring_a + s * S::SB, full + 8 * s, (c0 + i) * MG_KC, row0);
                                tma_load(&mx, ring_a + s * S::SB + S::WB, full + 8 * s, (c0 + i) * MG_KC, 0);
                        }
                }
        } else {
                /* two chunks' wgmma groups in flight: chunk i into one register set while chunk
                 * i - 1's set is added to acc (in chunk order) and its stage released */
                const int wg = warp / 4;
                float ta[NT / 2], tb[NT / 2];
                pdl_wait(); /* with pdl: sleep here, not polling the ring, while the kernel before runs */
                auto issue = [&](int i, float(&t)[NT / 2]) {
                        const int s = i % S::S;
                        mbar_wait(full + 8 * s, (uint32_t)(i / S::S) & 1);
                        const uint32_t a = ring_a + s * S::SB + wg * 8192, b = ring_a + s * S::SB + S::WB;
                        wg_fence();
#pragma unroll
                        for (int kk = 0; kk < 4; kk++)
                                wg_mma<NT>::template run<BF16>(t, sw128_desc(a + 32 * kk), sw128_desc(b + 32 * kk), kk);
                        wg_commit();
                };
                auto retire = [&](int i, const float(&t)[NT / 2]) {
                        __syncwarp();
                        if (lane == 0)
                                mbar_arrive(empty + 8 * (i % S::S));
#pragma unroll
                        for (int j = 0; j < NT / 2; j++)
                                acc[j] += t[j];
                };
                if (n > 0) {
                        issue(0, ta);
                        int i = 1;
                        for (; i + 1 < n; i += 2) {
                                issue(i, tb);
                                wg_wait<1>();
                                retire(i - 1, ta);
                                issue(i + 1, ta);
                                wg_wait<1>();
                                retire(i, tb);
                        }
                        if (i < n) {
                                issue(i, tb);
                                wg_wait<1>();
                                retire(i - 1, ta);
                                wg_wait<0>();
                                retire(i, tb);
                        } else {
                                wg_wait<0>();
                                retire(i - 1, ta);
                        }
                }
        }
        pdl_wait(); /* y is read and written below */

        /* accumulator layout of m64nN: lane holds rows r, r + 8 and tokens 8j + c, 8j + c + 1 */
        const bool consumer = warp < 4 * MT;
        const int r = (warp / 4) * 64 + (warp % 4) * 16 + lane / 4, c = 2 * (lane % 4);
        if (split == 1) {
                if (consumer)
#pragma unroll
                        for (int j = 0; j < NT / 8; j++)
#pragma unroll
                                for (int e = 0; e < 4; e++) {
                                        const int row = row0 + r + (e & 2) * 4, t = 8 * j + c + (e & 1);
                                        if (row < rows && t < ntok) {
                                                float *o = y + (size_t)t * rows + row;
                                                *o = accumulate ? *o + acc[4 * j + e] : acc[4 * j + e];
                                        }
                                }
                return;
        }

        /* k split over the cluster: block q owns rows [lo(q), lo(q + 1)) of the tile, lo(q) =
         * q·BM/split. Every block stores its partials of those rows into q's receive buffer
         * (over q's ring: hence the first barrier), then q adds them in rank order. */
        const int RS = (S::BM + split - 1) / split; /* the largest share */
        float *recv = (float *)ring;                /* [split][NT][RS] */
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync(); /* every block is done with its ring */
        if (consumer)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                        const int rr = r + 8 * h, q = (rr * split + split - 1) / S::BM, rl = rr - q * S::BM / split;
                        float *dst = cluster.map_shared_rank(recv, q) + (size_t)rank * NT * RS + rl;
#pragma unroll
                        for (int j = 0; j < NT / 8; j++) {
                                dst[(8 * j + c) * RS] = acc[4 * j + 2 * h];
                                dst[(8 * j + c + 1) * RS] = acc[4 * j + 2 * h + 1];
                        }
                }
        cluster.sync(); /* every partial is in its owner's buffer */
        const int lo = rank * S::BM / split, share = (rank + 1) * S::BM / split - lo;
        for (int idx = tid; idx < ntok * share; idx += S::THREADS) {
                const int t = idx / share, rl = idx % share, row = row0 + lo + rl;
                if (row >= rows)
                        continue;
                float sum = recv[t * RS + rl];
                for (int q = 1; q < split; q++)
                        sum += recv[((size_t)q * NT + t) * RS + rl];
                float *o = y + (size_t)t * rows + row;
                *o = accumulate ? *o + sum : sum;
        }
}

/* ---- host side ---- */

struct mma_plan {
        int nt, mt, split, blocks;
};

static int sm_count(void)
{
        int dev = 0, sms = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
                (void)cudaGetLastError();
                return 1;
        }
        return sms;
}

/* The launch shape, from a sweep of every mt and split on an H200 (test_mma --sweep,
 * docs/performance.md): a product is fastest with about one block an SM for up to 16 tokens
 * and about 1.4 for more (the activation tile then doubles a stage), so split is the
 * smallest cluster size that gives that many blocks; two warpgroups a block (half the
 * blocks, the activation tile shared) won only on large matrices at few tokens. */
static mma_plan plan(int rows, int k, int ntok, int force_mt, int force_split)
{
        const int sms = sm_count(), nck = (k + MG_KC - 1) / MG_KC;
        mma_plan p;
        p.nt = ntok <= 8 ? 8 : ntok <= 16 ? 16 : ntok <= 32 ? 32 : 64;
        p.mt = force_mt > 0 ? force_mt : ntok <= 16 && (rows + 63) / 64 > 2 * sms ? 2 : 1;
        const int tiles = (rows + 64 * p.mt - 1) / (64 * p.mt);
        const long long want = ntok <= 16 ? (long long)sms * 9 / 10 : (long long)sms * 14 / 10;
        p.split = force_split;
        if (p.split <= 0)
                for (p.split = 1; p.split < MG_MAX_SPLIT && p.split < nck && tiles * (long long)p.split < want;)
                        p.split++;
        p.blocks = tiles * p.split;
        return p;
}

/* cuTensorMapEncodeTiled through the runtime, so nothing links libcuda (CI has no driver). */
static PFN_cuTensorMapEncodeTiled_v12000 encode_fn(void)
{
        static PFN_cuTensorMapEncodeTiled_v12000 fn; /* the driver's entry point: set once, never changes */
        static std::once_flag once;
        std::call_once(once, [] {
                void *p = NULL;
                cudaDriverEntryPointQueryResult q;
                if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
                        cudaSuccess &&
                    q == cudaDriverEntryPointSuccess)
                        fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
                else
                        (void)cudaGetLastError();
        });
        return fn;
}

/* A map of a rows × k matrix of 16-bit elements (k contiguous), boxes of 64 k × box_rows rows
 * with the 128-byte swizzle; reads past either edge give zeros. */
static cudaError_t encode(CUtensorMap *m, bool bf16, const void *base, int rows, int k, int box_rows)
{
        PFN_cuTensorMapEncodeTiled_v12000 fn = encode_fn();
        if (!fn)
                return cudaErrorNotSupported;
        const cuuint64_t dims[2] = {(cuuint64_t)k, (cuuint64_t)rows};
        const cuuint64_t strides[1] = {(cuuint64_t)k * 2};
        const cuuint32_t box[2] = {MG_KC, (cuuint32_t)box_rows};
        const cuuint32_t estr[2] = {1, 1};
        const CUresult r = fn(m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                              (void *)base, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                              CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
        return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

template <int NT, int MT, bool BF16>
static cudaError_t launch(const mma_plan &p, const void *w, const uint16_t *x, float *y, int rows, int k,
                          int ntok, int accumulate, cudaStream_t stream, bool pdl)
{
        using S = mg_shape<NT, MT>;
        static unsigned long long allowed;
        cudaError_t e = smem_allow(mg_kernel<NT, MT, BF16>, (int)S::SMEM, &allowed);
        CUtensorMap mw, mx;
        if (e == cudaSuccess)
                e = encode(&mw, BF16, w, rows, k, S::BM);
        if (e == cudaSuccess)
                e = encode(&mx, BF16, x, ntok, k, NT);
        if (e != cudaSuccess)
                return e;
        return cuda_launch_cl(pdl, p.split, mg_kernel<NT, MT, BF16>, dim3((unsigned)p.split, (unsigned)(p.blocks / p.split)),
                              dim3(S::THREADS), S::SMEM, stream, mw, mx, y, rows, k, ntok, accumulate);
}

template <bool BF16>
static cudaError_t launch_w(const mma_plan &p, const void *w, const uint16_t *x, float *y, int rows, int k,
                            int ntok, int acc, cudaStream_t s, bool pdl)
{
#define MG_CASE(NT, MT)                                                                        \
        case NT * 4 + MT:                                                                      \
                return launch<NT, MT, BF16>(p, w, x, y, rows, k, ntok, acc, s, pdl)
        switch (p.nt * 4 + p.mt) {
                MG_CASE(8, 1);
                MG_CASE(8, 2);
                MG_CASE(16, 1);
                MG_CASE(16, 2);
                MG_CASE(32, 1);
                MG_CASE(32, 2);
                MG_CASE(64, 1);
                MG_CASE(64, 2);
        }
#undef MG_CASE
        return cudaErrorInvalidValue;
}

static bool args_ok(uint32_t wtype, int rows, int k, int ntok)
{
        return (wtype == CUDA_WTYPE_F16 || wtype == CUDA_WTYPE_BF16) && rows > 0 && k > 0 &&
               k % CUDA_MMA_GEMV_K_MULTIPLE == 0 && ntok >= 1 && ntok <= CUDA_MMA_GEMV_MAX_TOKENS;
}

bool cuda_mma_gemv_ok(void)
{
        int dev = 0, major = 0, minor = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
                (void)cudaGetLastError();
                return false;
        }
        return major == 9 && minor == 0 && encode_fn() != NULL;
}

int cuda_mma_gemv_plan(uint32_t wtype, int rows, int k, int ntok, int *mt, int *split, int *blocks)
{
        if (!args_ok(wtype, rows, k, ntok))
                return -EINVAL;
        const mma_plan p = plan(rows, k, ntok, 0, 0);
        if (mt)
                *mt = p.mt;
        if (split)
                *split = p.split;
        if (blocks)
                *blocks = p.blocks;
        return 0;
}

int cuda_mma_gemv_tuned(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows, int k, int ntok,
                        float beta, cudaStream_t stream, bool pdl, int mt, int split)
{
        if (!args_ok(wtype, rows, k, ntok) || !w || !x16 || !y || (beta != 0.0f && beta != 1.0f))
                return -EINVAL;
        if (((uintptr_t)w | (uintptr_t)x16) % 16 || (uintptr_t)y % sizeof(float))
                return -EINVAL;
        if (mt < 0 || mt > 2 || split < 0 || split > MG_MAX_SPLIT)
                return -EINVAL;
        const mma_plan p = plan(rows, k, ntok, mt, split);
        const int acc = beta != 0.0f;
        const cudaError_t e = wtype == CUDA_WTYPE_BF16 ? launch_w<true>(p, w, x16, y, rows, k, ntok, acc, stream, pdl)
                                                       : launch_w<false>(p, w, x16, y, rows, k, ntok, acc, stream, pdl);
        return CUDA_CHECK(e);
}

int cuda_mma_gemv(uint32_t wtype, const void *w, const uint16_t *x16, float *y, int rows, int k, int ntok,
                  float beta, cudaStream_t stream, bool pdl)
{
        return cuda_mma_gemv_tuned(wtype, w, x16, y, rows, k, ntok, beta, stream, pdl, 0, 0);
}
