/* chain.cu — one-token GEMV phases in one persistent, cooperative kernel (chain.cuh).
 *
 * Each block owns row groups g = blockIdx.x, + gridDim.x, … of every phase. A group is R
 * whole rows (R·k·2 contiguous bytes, as many rows as fill a stage), copied with cp.async
 * into one of nslot shared-memory stages, each thread copying exactly the bytes it will
 * read, so it waits only for its own copies (no barrier between copy and use). Every thread
 * keeps nslot groups in flight, in the order the block will use them, across phase
 * boundaries (weights never change): while the block waits at the grid barrier or computes
 * a phase's prologue, its next phase's weights are already arriving. Per phase the block
 * first writes f(x) rounded to the weight type into shared memory (the prologue:
 * gemv_dev.cuh's formulas, x read from L2 since other blocks wrote it, loads batched), then
 * consumes its groups: the block is two halves of GEMV_THREADS threads, each half gemv.cu's
 * block for half of the group's rows (lane and warp own the same k positions, summed in k
 * order, the warps meeting in warp order), so every row is bitwise gemv.cu's.
 *
 * Measured (H200, tests/gpu/test_chain.cu, docs/performance.md): one large matrix streams
 * at 89% of the read bandwidth (gemv.cu 95%), and a decoder layer's four products as one
 * chain are slower than the seven separate kernels (8B 132 against 119 µs, 1B 53 against
 * 47): each phase boundary (grid barrier, then the prologue's dependent L2 reads) stalls the
 * block longer than its ring covers. So the engine does not use it yet. An earlier version
 * that filled the stages with the bulk copy engine (one cp.async.bulk per group, issued by
 * one thread, completing on an mbarrier) streamed slower still (57% on the 8B gate/up). */
#include <algorithm>

#include "chain.cuh"
#include "gemv_dev.cuh"

#define CHAIN_RMAX 16         /* rows per group at most (and at least 2: one per half) */
#define CHAIN_MAX_SLOTS 8     /* stages at most (cp.async.wait_group takes 0 .. 7) */
#define CHAIN_STAGE_DEFAULT 65536

/* ---- asynchronous copies (sm_80+) ---- */

/* 16 bytes global → shared through L2 only, completing with this thread's commit group. */
static __device__ __forceinline__ void cp16(void *dst, const void *src)
{
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)),
                     "l"(src)
                     : "memory");
}

static __device__ __forceinline__ void cp_commit(void)
{
        asm volatile("cp.async.commit_group;" ::: "memory");
}

/* Waits until at most n of this thread's commit groups are pending (n < CHAIN_MAX_SLOTS). */
static __device__ __forceinline__ void cp_wait(int n)
{
        switch (n) {
#define CP_WAIT(N)                                                                             \
        case N:                                                                                \
                asm volatile("cp.async.wait_group " #N ";" ::: "memory");                      \
                break;
                CP_WAIT(0) CP_WAIT(1) CP_WAIT(2) CP_WAIT(3) CP_WAIT(4) CP_WAIT(5) CP_WAIT(6) CP_WAIT(7)
#undef CP_WAIT
        }
}

static __device__ __forceinline__ unsigned long long globaltimer(void)
{
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        return t;
}

/* ---- grid barrier ---- */

/* sync: count at word 0, generation at word 32 (another 128-byte line). The last block to
 * arrive resets the count, then opens the next generation; the others wait for it. Every
 * block's writes before the barrier are visible to every block after it (each thread's
 * through __syncthreads to thread 0, whose fence and atomics order them at gpu scope). */
static __device__ __forceinline__ void grid_sync(unsigned *sync)
{
        __syncthreads();
        if (threadIdx.x == 0) {
                unsigned *count = sync, *gen = sync + 32;
                unsigned g;
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(g) : "l"(gen) : "memory");
                __threadfence();
                if (atomicAdd(count, 1u) == gridDim.x - 1) {
                        atomicExch(count, 0u);
                        __threadfence();
                        atomicAdd(gen, 1u);
                } else {
                        unsigned now;
                        do {
                                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(now) : "l"(gen) : "memory");
                        } while (now == g);
                }
                __threadfence();
        }
        __syncthreads();
}

/* ---- the kernel ---- */

/* CHAIN_THREADS = CHAIN_HALVES × GEMV_THREADS: thread h·GEMV_THREADS + v is gemv.cu's thread
 * v (its k positions, its lane, its warp v / 32 within the half) for half h of a group's
 * rows, so every row is summed exactly as there, by twice the warps. */
#define CHAIN_HALVES 2
#define CHAIN_THREADS (CHAIN_HALVES * GEMV_THREADS)
#define CHAIN_BATCH 4 /* prologue iterations whose loads are in flight together */

struct chain_ring {
        unsigned char *stage;
        int stage_bytes, nslot;
};

/* Every thread: copies its own part of the block's next group (in use order across phases)
 * into the next stage, then commits one group of copies (empty once every phase's groups
 * are issued, so that the c-th commit group is always the c-th group). Its own part: the
 * rows of its half, at its k positions, which only it reads back. (*pp, *pg): the next
 * group to issue. */
static __device__ __forceinline__ void chain_issue(const cuda_chain &ch, const int *rows_per_group,
                                                   const chain_ring &ring, int *pp, int *pg, unsigned issued)
{
        while (*pp < ch.n) {
                const cuda_chain_phase &P = ch.ph[*pp];
                const int R = rows_per_group[*pp];
                if (*pg >= (P.rows + R - 1) / R) {
                        ++*pp;
                        *pg = blockIdx.x;
                        continue;
                }
                const int RH = R / CHAIN_HALVES, k = P.k;
                const int v = threadIdx.x % GEMV_THREADS, h = threadIdx.x / GEMV_THREADS;
                const int row0 = *pg * R + h * RH, nr = min(RH, P.rows - row0);
                uint16_t *dst = (uint16_t *)(ring.stage + (size_t)(issued % (unsigned)ring.nslot) * ring.stage_bytes) +
                                (size_t)h * RH * k;
                const uint16_t *src = (const uint16_t *)P.w + (size_t)row0 * k;
                for (int r = 0; r < nr; r++)
                        for (int k0 = v * GEMV_VEC; k0 < k; k0 += GEMV_THREADS * GEMV_VEC)
                                cp16(dst + (size_t)r * k + k0, src + (size_t)r * k + k0);
                *pg += gridDim.x;
                break;
        }
        cp_commit();
}

/* rsqrtf(Σ x² / k + eps), bitwise rms_scales<1> (rmsnorm.cu's reduction): here each of the
 * 256 threads is one of its virtual threads, summing float4 number tid, tid + 256, … in that
 * order; the loads of CHAIN_BATCH of them are in flight together. */
static __device__ float chain_rms(const float *x, int k, float eps, float *warp_part)
{
        static_assert(CHAIN_THREADS == RMS_VTHREADS, "one thread per virtual thread");
        const int n4 = k / 4;
        float ss = 0.0f;
        for (int i0 = threadIdx.x; i0 < n4; i0 += CHAIN_BATCH * RMS_VTHREADS) {
                float4 v[CHAIN_BATCH];
#pragma unroll
                for (int b = 0; b < CHAIN_BATCH; b++)
                        if (i0 + b * RMS_VTHREADS < n4)
                                v[b] = __ldcg((const float4 *)x + i0 + b * RMS_VTHREADS);
#pragma unroll
                for (int b = 0; b < CHAIN_BATCH; b++)
                        if (i0 + b * RMS_VTHREADS < n4)
                                ss += v[b].x * v[b].x + v[b].y * v[b].y + v[b].z * v[b].z + v[b].w * v[b].w;
        }
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        ss = warp_sum(ss);
        if (lane == 0)
                warp_part[warp] = ss;
        __syncthreads();
        float v = lane < RMS_VTHREADS / 32 ? warp_part[lane] : 0.0f;
        v = warp_sum(v);
        return rsqrtf(v / (float)k + eps);
}

/* act[i] = f(x)[i] rounded to the weight type, i < k, as gemv.cu's prologues compute it;
 * CHAIN_BATCH vectors' loads in flight together. */
template <int WTYPE, int PRO>
static __device__ __forceinline__ void prologue_pro(const cuda_chain_phase &P, float scale, uint16_t *act)
{
        constexpr int STEP = CHAIN_THREADS * GEMV_VEC;
        for (int kb = threadIdx.x * GEMV_VEC; kb < P.k; kb += CHAIN_BATCH * STEP) {
                float xv[CHAIN_BATCH][GEMV_VEC];
#pragma unroll
                for (int b = 0; b < CHAIN_BATCH; b++) {
                        const int k0 = kb + b * STEP;
                        if (k0 >= P.k)
                                break;
                        float gw[GEMV_VEC];
                        if constexpr (PRO == CUDA_GEMV_PRO_RMSNORM) {
                                const float4 a = __ldg((const float4 *)(P.norm_w + k0)),
                                             c = __ldg((const float4 *)(P.norm_w + k0) + 1);
                                const float g[GEMV_VEC] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
                                for (int j = 0; j < GEMV_VEC; j++)
                                        gw[j] = g[j];
                        }
                        load_act<PRO, true>(xv[b], P.x, P.k, 0, k0, scale, gw);
                }
#pragma unroll
                for (int b = 0; b < CHAIN_BATCH; b++) {
                        const int k0 = kb + b * STEP;
                        if (k0 >= P.k)
                                break;
                        uint32_t h[GEMV_VEC];
#pragma unroll
                        for (int j = 0; j < GEMV_VEC; j++) {
                                const float v = round_act<WTYPE>(xv[b][j]); /* exact in 16 bits now */
                                if constexpr (WTYPE == CUDA_WTYPE_BF16)
                                        h[j] = __float_as_uint(v) >> 16;
                                else
                                        h[j] = __half_as_ushort(__float2half_rn(v));
                        }
                        *(uint4 *)(act + k0) = make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16,
                                                          h[4] | h[5] << 16, h[6] | h[7] << 16);
                }
        }
}

template <int WTYPE> static __device__ void prologue(const cuda_chain_phase &P, uint16_t *act, float *warp_part)
{
        switch (P.kind) {
        case CUDA_GEMV_PRO_RMSNORM:
                prologue_pro<WTYPE, CUDA_GEMV_PRO_RMSNORM>(P, chain_rms(P.x, P.k, P.eps, warp_part), act);
                break;
        case CUDA_GEMV_PRO_GLU_SILU:
                prologue_pro<WTYPE, CUDA_GEMV_PRO_GLU_SILU>(P, 1.0f, act);
                break;
        case CUDA_GEMV_PRO_GLU_GELU:
                prologue_pro<WTYPE, CUDA_GEMV_PRO_GLU_GELU>(P, 1.0f, act);
                break;
        default:
                prologue_pro<WTYPE, CUDA_GEMV_PRO_NONE>(P, 1.0f, act);
                break;
        }
}

/* One group of R rows from row0 (those below rows stored) in stage w: this thread's half
 * takes rows h·R/2 .. (h+1)·R/2. Sums meet as block_sum_store's: each warp's lanes, then the
 * four warps of the half in order. */
template <int WTYPE, int R>
static __device__ __forceinline__ void group(const uint16_t *w, const uint16_t *act, const cuda_chain_phase &P,
                                             int row0, float (*part)[CHAIN_RMAX])
{
        constexpr int RH = R / CHAIN_HALVES;
        const int v = threadIdx.x % GEMV_THREADS, h = threadIdx.x / GEMV_THREADS;
        const int k = P.k;
        const uint16_t *wh = w + (size_t)h * RH * k;
        float acc[RH];
#pragma unroll
        for (int r = 0; r < RH; r++)
                acc[r] = 0.0f;
#pragma unroll 2
        for (int k0 = v * GEMV_VEC; k0 < k; k0 += GEMV_THREADS * GEMV_VEC) {
                const uint4 a = *(const uint4 *)(act + k0);
                uint4 wv[RH];
#pragma unroll
                for (int r = 0; r < RH; r++)
                        wv[r] = *(const uint4 *)(wh + (size_t)r * k + k0);
                const uint32_t au[4] = {a.x, a.y, a.z, a.w};
                float xv[GEMV_VEC];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        const float2 f = w2_to_float2<WTYPE>(au[j]);
                        xv[2 * j] = f.x;
                        xv[2 * j + 1] = f.y;
                }
#pragma unroll
                for (int r = 0; r < RH; r++) {
                        const uint32_t u[4] = {wv[r].x, wv[r].y, wv[r].z, wv[r].w};
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                const float2 f = w2_to_float2<WTYPE>(u[j]);
                                acc[r] = fmaf(f.x, xv[2 * j], acc[r]);
                                acc[r] = fmaf(f.y, xv[2 * j + 1], acc[r]);
                        }
                }
        }
        const int warp = v / 32, lane = v % 32;
#pragma unroll
        for (int r = 0; r < RH; r++) {
                const float s = warp_sum(acc[r]);
                if (lane == 0)
                        part[warp][h * RH + r] = s;
        }
        __syncthreads();
        if (threadIdx.x < R && row0 + (int)threadIdx.x < P.rows) {
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < GEMV_WARPS; i++)
                        s += part[i][threadIdx.x];
                float *yp = P.y + row0 + threadIdx.x;
                *yp = P.accumulate ? __ldcg(yp) + s : s;
        }
}

template <int WTYPE>
static __global__ void __launch_bounds__(CHAIN_THREADS, 1)
chain_kernel(const __grid_constant__ cuda_chain ch, unsigned *sync, int act_bytes, int stage_bytes, int nslot,
             int4 rows_lo, int4 rows_hi, unsigned long long *trace)
{
        extern __shared__ __align__(128) unsigned char smem[];
        __shared__ float part[2][GEMV_WARPS][CHAIN_RMAX];
        __shared__ float warp_part[CHAIN_THREADS / 32];
        __shared__ int rows_per_group[CUDA_CHAIN_MAX_PHASES];
        if (threadIdx.x == 0) {
                const int r[CUDA_CHAIN_MAX_PHASES] = {rows_lo.x, rows_lo.y, rows_lo.z, rows_lo.w, rows_hi.x, rows_hi.y};
#pragma unroll
                for (int i = 0; i < CUDA_CHAIN_MAX_PHASES; i++)
                        rows_per_group[i] = r[i];
        }
        __syncthreads();
        chain_ring ring;
        ring.stage = smem + act_bytes;
        ring.stage_bytes = stage_bytes;
        ring.nslot = nslot;
        uint16_t *act = (uint16_t *)smem;

        int pp = 0, pg = blockIdx.x;
        unsigned issued = 0, consumed = 0;
        for (; issued < (unsigned)nslot; issued++)
                chain_issue(ch, rows_per_group, ring, &pp, &pg, issued);

        /* block-uniform; thread 0 writes */
        unsigned long long *tr = trace && blockIdx.x < CUDA_CHAIN_TRACE_BLOCKS_MAX
                                         ? trace + (size_t)blockIdx.x * ch.n * 4
                                         : NULL;
        const bool t0 = threadIdx.x == 0;
        for (int p = 0; p < ch.n; p++) {
                const cuda_chain_phase &P = ch.ph[p];
                if (tr && t0)
                        tr[p * 4 + 0] = globaltimer();
                if (p > 0)
                        grid_sync(sync);
                if (tr && t0)
                        tr[p * 4 + 1] = globaltimer();
                prologue<WTYPE>(P, act, warp_part);
                __syncthreads();
                if (tr && t0)
                        tr[p * 4 + 2] = globaltimer();
                const int R = rows_per_group[p];
                const int groups = (P.rows + R - 1) / R;
                for (int g = blockIdx.x; g < groups; g += gridDim.x) {
                        cp_wait(nslot - 1); /* this thread's part of group `consumed` is in */
                        const uint16_t *w =
                                (const uint16_t *)(ring.stage + (size_t)(consumed % (unsigned)nslot) * stage_bytes);
                        float(*pt)[CHAIN_RMAX] = part[consumed & 1];
                        switch (R) {
                        case 16:
                                group<WTYPE, 16>(w, act, P, g * R, pt);
                                break;
                        case 8:
                                group<WTYPE, 8>(w, act, P, g * R, pt);
                                break;
                        case 4:
                                group<WTYPE, 4>(w, act, P, g * R, pt);
                                break;
                        default:
                                group<WTYPE, 2>(w, act, P, g * R, pt);
                                break;
                        }
                        consumed++;
                        /* the stage just read is this thread's to refill (its own bytes) */
                        chain_issue(ch, rows_per_group, ring, &pp, &pg, issued++);
                }
                if (tr) {
                        __syncthreads(); /* every thread's sums stored (timing only) */
                        if (t0)
                                tr[p * 4 + 3] = globaltimer();
                }
        }
        cp_wait(0);
}

/* ---- launch ---- */

static size_t round_up(size_t v, size_t a)
{
        return (v + a - 1) / a * a;
}

/* Rows per group for a phase: the most (a power of two in [2, CHAIN_RMAX]) whose bytes fit
 * a stage. Full stages keep the most bytes in flight, which is what the ring is for (a
 * smaller group that balanced the blocks better measured slower: H200, test_chain). */
static int group_rows(int k, int stage_bytes)
{
        int r = 2;
        while (r < CHAIN_RMAX && (long long)2 * r * k * 2 <= stage_bytes)
                r *= 2;
        return r;
}

struct chain_plan {
        int act_bytes, stage_bytes, nslot, smem, blocks;
        int bpm;        /* blocks per SM */
        int smem_limit; /* the device's dynamic shared memory per block, past static_smem */
};

/* The shared-memory layout and grid for phases whose widest k is kmax. */
static int chain_plan_make(int kmax, const cuda_chain_opts *opts, int static_smem, chain_plan *pl)
{
        int dev = 0, sms = 0, optin = 0, per_sm = 0, reserved = 0, coop = 0;
        if (CUDA_CHECK(cudaGetDevice(&dev)) < 0 ||
            CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) < 0 ||
            CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) < 0 ||
            CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)) < 0 ||
            CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev)) < 0 ||
            CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev)) < 0)
                return -ENODEV;
        const int bpm = opts && opts->blocks_per_sm > 0 ? opts->blocks_per_sm : 1;
        if (!coop || bpm > 2 || kmax <= 0)
                return -EOPNOTSUPP;
        const int want = opts && opts->stage_bytes > 0 ? opts->stage_bytes : CHAIN_STAGE_DEFAULT;
        pl->act_bytes = (int)round_up((size_t)kmax * 2, 128);
        /* a stage holds at least two rows: one per half */
        pl->stage_bytes = (int)round_up((size_t)std::max(want, 2 * pl->act_bytes), 128);
        const long long avail = std::min<long long>(optin, per_sm / bpm - reserved) - static_smem;
        const long long slots = (avail - pl->act_bytes) / pl->stage_bytes;
        if (slots < 2)
                return -EOPNOTSUPP;
        pl->nslot = (int)std::min<long long>(slots, CHAIN_MAX_SLOTS);
        pl->smem = pl->act_bytes + pl->nslot * pl->stage_bytes;
        pl->blocks = sms * bpm;
        pl->bpm = bpm;
        pl->smem_limit = optin - static_smem;
        return 0;
}

template <int WTYPE> static int chain_plan_for(int kmax, const cuda_chain_opts *opts, chain_plan *pl)
{
        static unsigned long long allowed;
        cudaFuncAttributes fa;
        if (CUDA_CHECK(cudaFuncGetAttributes(&fa, chain_kernel<WTYPE>)) < 0)
                return -ENODEV;
        int r = chain_plan_make(kmax, opts, (int)fa.sharedSizeBytes, pl);
        if (r < 0)
                return r;
        if (CUDA_CHECK(smem_allow(chain_kernel<WTYPE>, pl->smem_limit, &allowed)) < 0)
                return -ENODEV;
        int n = 0;
        if (CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, chain_kernel<WTYPE>, CHAIN_THREADS,
                                                                     (size_t)pl->smem)) < 0)
                return -ENODEV;
        return n >= pl->bpm ? 0 : -EOPNOTSUPP;
}

int cuda_chain_fits(int kmax, const struct cuda_chain_opts *opts)
{
        chain_plan pl;
        const int r = chain_plan_for<CUDA_WTYPE_BF16>(kmax, opts, &pl);
        return r == 0 ? 1 : r == -EOPNOTSUPP ? 0 : r;
}

static bool phase_ok(const cuda_chain_phase &P)
{
        if (!P.w || !P.x || !P.y || P.rows <= 0 || P.k <= 0 || P.k % GEMV_VEC)
                return false;
        if (((uintptr_t)P.w | (uintptr_t)P.x) % 16 || (P.accumulate != 0 && P.accumulate != 1))
                return false;
        switch (P.kind) {
        case CUDA_GEMV_PRO_NONE:
        case CUDA_GEMV_PRO_GLU_SILU:
        case CUDA_GEMV_PRO_GLU_GELU:
                return true;
        case CUDA_GEMV_PRO_RMSNORM:
                return P.norm_w && (uintptr_t)P.norm_w % 16 == 0 && P.eps >= 0.0f;
        default:
                return false;
        }
}

template <int WTYPE>
static int chain_launch(const cuda_chain *ch, unsigned *sync, int kmax, const cuda_chain_opts *opts,
                        cudaStream_t stream)
{
        chain_plan pl;
        const int r = chain_plan_for<WTYPE>(kmax, opts, &pl);
        if (r < 0)
                return r;
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute attr[1];
        cfg.gridDim = dim3((unsigned)pl.blocks);
        cfg.blockDim = dim3(CHAIN_THREADS);
        cfg.dynamicSmemBytes = (size_t)pl.smem;
        cfg.stream = stream;
        attr[0].id = cudaLaunchAttributeCooperative;
        attr[0].val.cooperative = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        int R[8] = {2, 2, 2, 2, 2, 2, 2, 2};
        for (int p = 0; p < ch->n; p++)
                R[p] = group_rows(ch->ph[p].k, pl.stage_bytes);
        return CUDA_CHECK(cudaLaunchKernelEx(&cfg, chain_kernel<WTYPE>, *ch, sync, pl.act_bytes, pl.stage_bytes,
                                             pl.nslot, make_int4(R[0], R[1], R[2], R[3]),
                                             make_int4(R[4], R[5], R[6], R[7]), opts ? opts->trace : NULL));
}

int cuda_chain_gemv(uint32_t wtype, const struct cuda_chain *ch, void *sync, const struct cuda_chain_opts *opts,
                    cudaStream_t stream)
{
        if (!ch || !sync || ch->n < 1 || ch->n > CUDA_CHAIN_MAX_PHASES)
                return -EINVAL;
        if (wtype != CUDA_WTYPE_BF16 && wtype != CUDA_WTYPE_F16)
                return -EINVAL;
        int kmax = 0;
        for (int p = 0; p < ch->n; p++) {
                if (!phase_ok(ch->ph[p]))
                        return -EINVAL;
                kmax = std::max(kmax, ch->ph[p].k);
        }
        return wtype == CUDA_WTYPE_BF16 ? chain_launch<CUDA_WTYPE_BF16>(ch, (unsigned *)sync, kmax, opts, stream)
                                        : chain_launch<CUDA_WTYPE_F16>(ch, (unsigned *)sync, kmax, opts, stream);
}
