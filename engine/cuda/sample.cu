/* sample.cu — token sampling on the GPU (sample.cuh): one block of 1024 threads per row. The
 * kept set of top-k, min-p and top-p is a threshold on a 64-bit order key (logit, then lower id
 * first: the CPU sampler's sort order) found by radix selection, never by sorting. Probabilities
 * are fixed-point integers, so every sum is exact and independent of the order it is taken in:
 * the fast kernel and the one-thread-per-row reference pick identical ids by construction.
 *
 * The fast kernel: penalties (window ids counted in scratch); one pass for the argmax (and, for
 * top-k, a bound on the k-th largest); for top-p without top-k a pass for z and a bound on the
 * boundary; a stable compaction of the candidates those bounds leave (shared memory, spilling
 * to scratch); exact radix selections among them; the draw by prefix sums in id order. */
#include <math.h>

#include "common.cuh"
#include "sample.cuh"

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define SAMPLE_CACHE 3072       /* candidates kept in shared memory after compaction */
#define SAMPLE_KBITS 11         /* top-k bound: histogram of the order key's top 11 bits */
#define SAMPLE_KBINS (1 << SAMPLE_KBITS)
#define SAMPLE_DBINS 2048       /* top-p bound: histogram of logit - max in 1/64-nat bins */
#define SAMPLE_DBIN_SCALE 64.0f
#define SAMPLE_MAX_VOCAB (1 << 30)
#define FULL_MASK 0xffffffffu

struct __align__(8) sample_cand {
        float logit;
        int32_t id;
};

/* ---- semantics shared by both kernels ---- */

/* A row's parameters after clamping what the CPU sampler's validation would have refused. */
struct sample_row {
        float temp, inv_t, top_p, min_p, rp, pp, fp;
        int k;                  /* n when top-k is off */
        bool greedy, tk, tp, mp, penalize;
        uint32_t hist_off, hist_len;
        uint64_t seed, step;
};

static __device__ sample_row sample_row_load(const struct cuda_sample_params *pp, int n)
{
        const struct cuda_sample_params p = *pp;
        sample_row r;
        r.temp = p.temperature;
        r.greedy = !(p.temperature > 0.0f); /* NaN: greedy */
        r.inv_t = __frcp_rn(p.temperature);
        r.tk = p.top_k > 0 && p.top_k < n;  /* top_k >= n keeps everything: off */
        r.k = r.tk ? p.top_k : n;
        r.tp = p.top_p < 1.0f;              /* NaN: off; <= 0 keeps the most likely token */
        r.top_p = p.top_p;
        r.mp = p.min_p > 0.0f;              /* NaN: off */
        r.min_p = fminf(p.min_p, 1.0f);     /* > 1 would drop the max too: keep it alone */
        r.rp = p.repeat_penalty > 0.0f && p.repeat_penalty < INFINITY ? p.repeat_penalty : 1.0f;
        r.pp = isfinite(p.presence_penalty) ? p.presence_penalty : 0.0f;
        r.fp = isfinite(p.frequency_penalty) ? p.frequency_penalty : 0.0f;
        r.penalize = p.hist_len > 0 && (r.rp != 1.0f || r.pp != 0.0f || r.fp != 0.0f);
        r.hist_off = p.hist_off;
        r.hist_len = p.hist_len;
        r.seed = p.seed;
        r.step = p.step;
        return r;
}

static __device__ __forceinline__ float sample_sanitize(float l)
{
        return isnan(l) ? -INFINITY : l; /* NaN logits never win, as on the CPU */
}

/* Unsigned key ordered like the logit; -0 and +0 are one key, since the CPU compares them equal. */
static __device__ __forceinline__ uint32_t sample_key32(float l)
{
        if (l == 0.0f)
                l = 0.0f;
        const uint32_t u = __float_as_uint(l);
        return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static __device__ __forceinline__ float sample_key32_float(uint32_t k)
{
        return __uint_as_float(k & 0x80000000u ? k & 0x7fffffffu : ~k);
}

/* Larger key = earlier in the CPU sampler's order (logit descending, lower id first). */
static __device__ __forceinline__ uint64_t sample_key(float l, int32_t id)
{
        return (uint64_t)sample_key32(l) << 32 | (uint32_t)~(uint32_t)id;
}

/* key >= t, compared as floats: t's logit part is a float's key (never a NaN pattern: every
 * threshold lies between the keys of -inf and +inf), so this is two float compares. */
struct sample_thr {
        float x;
        uint32_t lo;
        __device__ __forceinline__ explicit sample_thr(uint64_t t)
        {
                const uint64_t floor = (uint64_t)0x007fffffu << 32; /* the key of (-inf, any id) */
                t = t > floor ? t : floor;
                x = sample_key32_float((uint32_t)(t >> 32));
                lo = (uint32_t)t;
        }
        __device__ __forceinline__ bool operator()(float l, int32_t id) const
        {
                return l > x || (l == x && (uint32_t)~(uint32_t)id >= lo);
        }
};

/* sampler.c's penalty with its float roundings; the intrinsics forbid FMA contraction. */
static __device__ __forceinline__ float sample_penalize(float l, uint32_t count, const sample_row &r)
{
        l = l <= 0.0f ? __fmul_rn(l, r.rp) : __fdiv_rn(l, r.rp);
        return __fsub_rn(l, __fadd_rn(__fmul_rn(__uint2float_rn(count), r.fp), r.pp));
}

/* Fixed point: a weight w in [0, 1] is floor(w · 2^s); s leaves room for n_vocab of them in 63 bits. */
static __device__ __forceinline__ int sample_shift(int n)
{
        int b = 0;
        while (b < 31 && (1u << b) < (uint32_t)n)
                b++;
        return b <= 23 ? 40 : 63 - b;
}

/* floor(w · 2^s) for w in [0, 1] (never NaN: callers pass expf of a non-positive, non-NaN
 * argument), from the bits: the float-to-u64 conversion is slow */
static __device__ __forceinline__ uint64_t sample_fix(float w, int s)
{
        const uint32_t u = __float_as_uint(w);
        const int e = (int)(u >> 23) - 150 + s; /* w = m · 2^(exp - 150) for normal w */
        const uint64_t m = (u & 0x7fffffu) | 0x800000u;
        return e >= 0 ? m << e : e > -24 ? m >> -e : 0;
}

/* exp(l - max) at temperature 1 (what top-p measures) and exp((l - max) / t) (what is drawn):
 * float exp of a float difference, then fixed point. l <= maxl, maxl finite. */
static __device__ __forceinline__ uint64_t sample_w1(float l, float maxl, int s)
{
        return l == -INFINITY ? 0 : sample_fix(expf(__fsub_rn(l, maxl)), s);
}

/* inv_t = 1/t rounded (sampler.c also multiplies by 1/t); d == 0 is weight 1 even when inv_t is
 * inf (t subnormal) or 0 (t inf). */
static __device__ __forceinline__ uint64_t sample_wt(float l, float maxl, float inv_t, int s)
{
        if (l == -INFINITY)
                return 0;
        const float d = __fsub_rn(l, maxl);
        return sample_fix(d == 0.0f ? 1.0f : expf(__fmul_rn(d, inv_t)), s);
}

/* min-p keeps logit >= maxl + log(min_p) (float, as sampler.c's maxl + logf(min_p)). */
static __device__ __forceinline__ float sample_cut(float maxl, float min_p)
{
        return __fadd_rn(maxl, __double2float_rn(log((double)min_p)));
}

/* top-p keeps the shortest prefix whose mass reaches top_p · z: cum >= ceil(top_p · z). */
static __device__ __forceinline__ uint64_t sample_topp_target(float top_p, uint64_t z)
{
        if (!(top_p > 0.0f))
                return 0;
        return (uint64_t)ceil((double)top_p * (double)z); /* <= z < 2^63 */
}

/* The draw: the first kept id whose running sum exceeds floor(u · m), m >= 1. */
static __device__ __forceinline__ uint64_t sample_draw_target(double u, uint64_t m)
{
        const uint64_t t = (uint64_t)(u * (double)m);
        return t < m ? t : m - 1;
}

static __host__ __device__ uint64_t sample_mix64(uint64_t z)
{
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* splitmix64's finaliser twice: a bijection of step for each seed, so a request's draws never
 * repeat a u before 2^64 steps. 53 bits, [0, 1). */
static __host__ __device__ double sample_uniform(uint64_t seed, uint64_t step)
{
        return (double)(sample_mix64(sample_mix64(seed) ^ step) >> 11) * 0x1.0p-53;
}

/* ---- block helpers ---- */

/* What the row's scan found, for the phases on the candidates. */
struct sample_found {
        float maxl;
        uint64_t best;          /* the argmax's key */
        uint32_t cutkey;        /* min-p: keep keys32 >= cutkey */
        int s;
        bool z_known;           /* z came from the whole row (top-p without top-k) */
        uint64_t z;
        int dbin;               /* top-p's bound: the boundary has dbin <= this */
};

struct sample_smem {
        /* histograms (counts; a radix digit's 64-bit masses as two 32-bit halves, since 64-bit
         * shared atomics are compare-and-swap loops) */
        union {
                uint32_t kcnt[SAMPLE_KBINS];            /* top-k bound, counts */
                uint32_t dcnt[SAMPLE_DBINS];            /* top-p bound, counts */
                struct {
                        uint32_t lo[256], hi[256], cnt[256];
                } r;                                    /* one radix digit */
        } h;
        sample_cand cache[SAMPLE_CACHE];
        unsigned long long red[3][SAMPLE_WARPS];
        unsigned long long seg[SAMPLE_WARPS];
        unsigned long long scan[SAMPLE_WARPS];
        int bin;
        unsigned long long before;
        /* registers are the scarce resource: what every thread would hold alike lives here */
        sample_row row;
        sample_found f;
};

static __device__ __forceinline__ uint64_t warp_sum_u64(uint64_t v)
{
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
                v += __shfl_xor_sync(FULL_MASK, v, o);
        return v;
}

static __device__ __forceinline__ uint64_t warp_max_u64(uint64_t v)
{
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
                const uint64_t w = __shfl_xor_sync(FULL_MASK, v, o);
                v = w > v ? w : v;
        }
        return v;
}

static __device__ __forceinline__ uint64_t warp_min_u64(uint64_t v)
{
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
                const uint64_t w = __shfl_xor_sync(FULL_MASK, v, o);
                v = w < v ? w : v;
        }
        return v;
}

template <typename T>
static __device__ __forceinline__ T warp_incl_scan(T v)
{
        const int lane = threadIdx.x & 31;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
                const T t = __shfl_up_sync(FULL_MASK, v, o);
                if (lane >= o)
                        v += t;
        }
        return v;
}

/* Every thread gets the block's sum, max and min in one round; red is free again on return. */
static __device__ void block_sum_max_min(uint64_t *sum, uint64_t *max, uint64_t *min, sample_smem &sm)
{
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const uint64_t a = warp_sum_u64(*sum), b = warp_max_u64(*max), c = warp_min_u64(*min);
        if (lane == 0)
                sm.red[0][warp] = a, sm.red[1][warp] = b, sm.red[2][warp] = c;
        __syncthreads();
        *sum = warp_sum_u64(sm.red[0][lane]);
        *max = warp_max_u64(sm.red[1][lane]);
        *min = warp_min_u64(sm.red[2][lane]);
        __syncthreads();
}

static __device__ uint64_t block_sum_u64(uint64_t v, sample_smem &sm)
{
        v = warp_sum_u64(v);
        if ((threadIdx.x & 31) == 0)
                sm.red[0][threadIdx.x >> 5] = v;
        __syncthreads();
        v = warp_sum_u64(sm.red[0][threadIdx.x & 31]);
        __syncthreads();
        return v;
}

static __device__ uint64_t block_max_u64(uint64_t v, sample_smem &sm)
{
        v = warp_max_u64(v);
        if ((threadIdx.x & 31) == 0)
                sm.red[1][threadIdx.x >> 5] = v;
        __syncthreads();
        v = warp_max_u64(sm.red[1][threadIdx.x & 31]);
        __syncthreads();
        return v;
}

/* Exact 64-bit add into a (lo, hi) pair of 32-bit shared counters. */
static __device__ __forceinline__ void hist_add64(uint32_t *lo, uint32_t *hi, int b, uint64_t q)
{
        const uint32_t ql = (uint32_t)q, old = atomicAdd(&lo[b], ql);
        const uint32_t qh = (uint32_t)(q >> 32) + (old + ql < old); /* the carry out of lo */
        if (qh)
                atomicAdd(&hi[b], qh);
}

/* One warp: walking nb bins in order (descending index when desc), the bin at which the
 * running total, starting at base < target, first reaches target; *before gets the total
 * ahead of it. -1 when the bins end first. nb: a power of two up to 2048. Each lane sums a run
 * of nb/32 bins (read in rotated order, so the lanes hit different banks), one scan finds the
 * run, and the warp walks that run 32 bins at a time. */
template <class Get>
static __device__ int warp_find_bin(Get v, int nb, bool desc, uint64_t base, uint64_t target,
                                    uint64_t *before)
{
        const int lane = threadIdx.x & 31;
        const int per = nb >= 32 ? nb / 32 : 1;
        uint64_t sum = 0;
        for (int t = 0; t < per; t++) {
                const int p = lane * per + (t + lane) % per;
                if (p < nb)
                        sum += v(desc ? nb - 1 - p : p);
        }
        const uint64_t incl = warp_incl_scan<uint64_t>(sum);
        const uint64_t run = base + incl - sum;
        unsigned hit = __ballot_sync(FULL_MASK, run < target && target <= run + sum);
        if (!hit) {
                *before = base + __shfl_sync(FULL_MASK, incl, 31);
                return -1;
        }
        const int owner = __ffs(hit) - 1;
        uint64_t b0 = __shfl_sync(FULL_MASK, run, owner);
        for (int c = 0; c < per; c += 32) {
                const int p = owner * per + c + lane;
                const bool ok = c + lane < per && p < nb;
                const int b = desc ? nb - 1 - p : p;
                const uint64_t x = ok ? v(b) : 0;
                const uint64_t in = warp_incl_scan<uint64_t>(x);
                const uint64_t r = b0 + in - x;
                hit = __ballot_sync(FULL_MASK, ok && r < target && target <= r + x);
                if (hit) {
                        const int src = __ffs(hit) - 1;
                        *before = __shfl_sync(FULL_MASK, r, src);
                        return __shfl_sync(FULL_MASK, b, src);
                }
                b0 += __shfl_sync(FULL_MASK, in, 31);
        }
        *before = b0;
        return -1; /* not reached: the owner's run holds the crossing */
}

/* ---- where the candidates are: the row itself, or a compacted list (both in id order) ---- */

struct sample_row_src {
        const float *l;
        int n;
        __device__ __forceinline__ int size() const { return n; }
        __device__ __forceinline__ void get(int i, float &x, int32_t &id) const
        {
                x = sample_sanitize(l[i]);
                id = i;
        }
};

struct sample_list_src {
        const sample_cand *c; /* shared or global memory */
        int n;
        __device__ __forceinline__ int size() const { return n; }
        __device__ __forceinline__ void get(int i, float &x, int32_t &id) const
        {
                const sample_cand e = c[i];
                x = e.logit;
                id = e.id;
        }
};

/* Radix selection among the elements of src with key >= lo: the largest X such that the
 * elements with key >= X hold at least target (each holds 1, or with MASS its temperature-1
 * weight). Returns the threshold max(X, the least key >= lo), X being the crossing element's key
 * or the low end of a radix bin whose elements are all needed. target >= 1. *reached is false
 * (and 0 returned) when all of them together hold less. A first pass takes the keys' range, so
 * the digits start below the bits they all share (no pile-up of atomics on one bin). */
template <bool MASS, class Src>
static __device__ uint64_t sample_select(const Src &src, uint64_t lo, uint64_t target, float maxl, int s,
                                         sample_smem &sm, bool *reached)
{
        const int m = src.size();
        uint64_t above = 0, tot = 0, kmax = 0, kmin = ~0ull;
        for (int i = threadIdx.x; i < m; i += SAMPLE_THREADS) {
                float x;
                int32_t id;
                src.get(i, x, id);
                const uint64_t k = sample_key(x, id);
                if (k < lo)
                        continue;
                kmax = k > kmax ? k : kmax;
                kmin = k < kmin ? k : kmin;
                tot += MASS ? sample_w1(x, maxl, s) : 1;
        }
        block_sum_max_min(&tot, &kmax, &kmin, sm);
        *reached = tot >= target;
        if (!*reached)
                return 0;
        if (kmin == kmax) /* one element */
                return kmax;
        int pos = 64 - __clzll((long long)(kmin ^ kmax)); /* bits below the shared prefix */
        uint64_t prefix = pos < 64 ? kmax >> pos : 0;
        const uint64_t floor = kmin > lo ? kmin : lo;
        for (;;) {
                const int w = pos < 8 ? pos : 8, shift = pos - w, nb = 1 << w;
                for (int b = threadIdx.x; b < nb; b += SAMPLE_THREADS)
                        sm.h.r.cnt[b] = sm.h.r.lo[b] = sm.h.r.hi[b] = 0;
                __syncthreads();
                for (int i = threadIdx.x; i < m; i += SAMPLE_THREADS) {
                        float x;
                        int32_t id;
                        src.get(i, x, id);
                        const uint64_t k = sample_key(x, id);
                        if (k < lo || (pos < 64 && (k >> pos) != prefix))
                                continue;
                        const int b = (int)(k >> shift) & (nb - 1);
                        atomicAdd(&sm.h.r.cnt[b], 1u);
                        if (MASS) {
                                const uint64_t q = sample_w1(x, maxl, s);
                                if (q)
                                        hist_add64(sm.h.r.lo, sm.h.r.hi, b, q);
                        }
                }
                __syncthreads();
                if (threadIdx.x < 32) {
                        uint64_t before;
                        auto mass = [&](int b) { return (uint64_t)sm.h.r.hi[b] << 32 | sm.h.r.lo[b]; };
                        auto count = [&](int b) { return (uint64_t)sm.h.r.cnt[b]; };
                        const int b = MASS ? warp_find_bin(mass, nb, true, above, target, &before)
                                           : warp_find_bin(count, nb, true, above, target, &before);
                        if (threadIdx.x == 0) {
                                sm.bin = b;
                                sm.before = before;
                        }
                }
                __syncthreads();
                const int b = sm.bin; /* found: the counted elements hold enough */
                above = sm.before;
                const uint32_t c = b >= 0 ? sm.h.r.cnt[b] : 0;
                __syncthreads(); /* the histogram and sm.bin are rewritten next */
                if (b < 0) /* unreachable: the elements in the prefix hold enough */
                        return floor;
                prefix = prefix << w | (uint64_t)b;
                pos = shift;
                if (pos == 0 || c == 1 || (!MASS && above + c == target)) {
                        const uint64_t x = prefix << pos;
                        return x > floor ? x : floor;
                }
        }
}

/* Stable compaction of the logits that keep() accepts into the list: the first SAMPLE_CACHE in
 * shared memory, the rest (and then all) in glist. Returns how many. keep() must refuse NaN
 * (logits >= a threshold do): slots past the row's end read as NaN, and a NaN logit is never
 * kept. A round covers 16 logits a thread in four coalesced 16-byte loads (sub-rounds j = 0..3
 * of 4 × 1024 logits); one block scan of the four counts packed in 16-bit fields places them. */
template <class Keep>
static __device__ int sample_compact(const float *lg, int n, bool vec, Keep keep, sample_cand *glist,
                                     sample_smem &sm)
{
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = 4 * SAMPLE_THREADS;
        const float nan = __int_as_float(0x7fc00000);
        int off = 0;
        for (int base = 0; base < n; base += 4 * sub) {
                float x[16];
                if (vec) { /* n % 4 == 0: a group of four is in the row or out of it */
                        float4 v[4];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                const int i0 = base + j * sub + 4 * threadIdx.x;
                                v[j] = i0 < n ? *(const float4 *)(lg + i0) : make_float4(nan, nan, nan, nan);
                        }
#pragma unroll
                        for (int j = 0; j < 4; j++)
                                x[4 * j] = v[j].x, x[4 * j + 1] = v[j].y, x[4 * j + 2] = v[j].z, x[4 * j + 3] = v[j].w;
                } else {
#pragma unroll
                        for (int j = 0; j < 16; j++) {
                                const int i = base + (j / 4) * sub + 4 * threadIdx.x + j % 4;
                                x[j] = i < n ? lg[i] : nan;
                        }
                }
                unsigned f = 0;
#pragma unroll
                for (int j = 0; j < 16; j++)
                        f |= keep(x[j]) ? 1u << j : 0u;
                if (!__syncthreads_or(f))
                        continue;
                uint64_t c = 0;
#pragma unroll
                for (int j = 0; j < 4; j++)
                        c |= (uint64_t)__popc(f >> (4 * j) & 15u) << (16 * j);
                const uint64_t incl = warp_incl_scan<uint64_t>(c);
                if (lane == 31)
                        sm.scan[warp] = incl;
                __syncthreads();
                const uint64_t wt = sm.scan[lane];
                const uint64_t wincl = warp_incl_scan<uint64_t>(wt);
                const uint64_t excl = __shfl_sync(FULL_MASK, wincl - wt, warp) + incl - c;
                const uint64_t total = __shfl_sync(FULL_MASK, wincl, 31);
#pragma unroll
                for (int j = 0; j < 4; j++) {
                        int pos = off + (int)(excl >> (16 * j) & 0xffff);
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                                if (!(f >> (4 * j + e) & 1))
                                        continue;
                                const sample_cand v = {x[4 * j + e], base + j * sub + 4 * (int)threadIdx.x + e};
                                if (pos < SAMPLE_CACHE)
                                        sm.cache[pos] = v;
                                else
                                        glist[pos] = v;
                                pos++;
                        }
                        off += (int)(total >> (16 * j) & 0xffff);
                }
                /* sm.scan is next written after the next round's barrier */
        }
        __syncthreads();
        if (off > SAMPLE_CACHE) {
                for (int i = threadIdx.x; i < SAMPLE_CACHE; i += SAMPLE_THREADS)
                        glist[i] = sm.cache[i];
                __syncthreads();
        }
        return off;
}

/* Sum of the tempered weights of the kept elements (key >= xc; all when xc is 0) in [a, b), one
 * warp; four loads in flight. */
template <class Src>
static __device__ __forceinline__ uint64_t sample_warp_mass(const Src &src, int a, int b, uint64_t xc,
                                                           float maxl, float inv_t, int s)
{
        const sample_thr kept(xc);
        uint64_t v = 0;
        int i = a + (threadIdx.x & 31);
        for (; i + 96 < b; i += 128) {
                float x[4];
                int32_t id[4];
#pragma unroll
                for (int j = 0; j < 4; j++)
                        src.get(i + 32 * j, x[j], id[j]);
#pragma unroll
                for (int j = 0; j < 4; j++)
                        if (xc == 0 || kept(x[j], id[j]))
                                v += sample_wt(x[j], maxl, inv_t, s);
        }
        for (; i < b; i += 32) {
                float x;
                int32_t id;
                src.get(i, x, id);
                if (xc == 0 || kept(x, id))
                        v += sample_wt(x, maxl, inv_t, s);
        }
        return warp_sum_u64(v);
}

/* Among the 32 part sums in sm.seg, the part where the running total (from base) passes tq. */
static __device__ __forceinline__ int sample_pick_part(const sample_smem &sm, uint64_t *base, uint64_t tq)
{
        const uint64_t v = sm.seg[threadIdx.x & 31];
        const uint64_t incl = *base + warp_incl_scan<uint64_t>(v);
        const unsigned hit = __ballot_sync(FULL_MASK, incl - v <= tq && tq < incl);
        const int p = hit ? __ffs(hit) - 1 : 31; /* always hit: tq < the total */
        *base = __shfl_sync(FULL_MASK, incl - v, p);
        return p;
}

/* The draw: the first kept element in list order (= id order) at which the running sum of the
 * tempered weights exceeds floor(u · their total). Three levels: 32 parts of the list, 32 parts
 * of the chosen part, then one warp's prefix sums; integer sums make the split irrelevant. */
template <class Src>
static __device__ void sample_draw(const Src &src, uint64_t xc, float maxl, float inv_t, int s, double u,
                                   sample_smem &sm, int32_t *out)
{
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, m = src.size();
        const int seg = (m + 31) / 32;
        int a = min(warp * seg, m);
        uint64_t v = sample_warp_mass(src, a, min(a + seg, m), xc, maxl, inv_t, s);
        if (lane == 0)
                sm.seg[warp] = v;
        __syncthreads();
        const uint64_t total = warp_sum_u64(sm.seg[lane]);
        const uint64_t tq = sample_draw_target(u, total);
        uint64_t base = 0;
        const int p1 = sample_pick_part(sm, &base, tq);
        __syncthreads();
        const int a1 = p1 * seg, b1 = min(a1 + seg, m);
        const int sub = (b1 - a1 + 31) / 32;
        a = min(a1 + warp * sub, b1);
        v = sample_warp_mass(src, a, min(a + sub, b1), xc, maxl, inv_t, s);
        if (lane == 0)
                sm.seg[warp] = v;
        __syncthreads();
        const int p2 = sample_pick_part(sm, &base, tq);
        if (warp != 0)
                return;
        const int a2 = a1 + p2 * sub, b2 = min(a2 + sub, b1);
        const sample_thr kept(xc);
        for (int i0 = a2; i0 < b2; i0 += 32) {
                const int i = i0 + lane;
                uint64_t w = 0;
                int32_t id = -1;
                if (i < b2) {
                        float x;
                        src.get(i, x, id);
                        if (kept(x, id))
                                w = sample_wt(x, maxl, inv_t, s);
                }
                const uint64_t incl = base + warp_incl_scan<uint64_t>(w);
                const unsigned hit = __ballot_sync(FULL_MASK, incl - w <= tq && tq < incl);
                if (hit) {
                        if (lane == __ffs(hit) - 1)
                                *out = id;
                        return;
                }
                base = __shfl_sync(FULL_MASK, incl, 31);
        }
}

static __device__ __forceinline__ int sample_dbin(float x, float maxl)
{
        const float d = __fsub_rn(x, maxl);
        return d > -(float)SAMPLE_DBINS / SAMPLE_DBIN_SCALE
                       ? min(SAMPLE_DBINS - 1, __float2int_rz(__fmul_rn(-d, SAMPLE_DBIN_SCALE)))
                       : SAMPLE_DBINS - 1;
}

/* After the candidates are in src (a prefix of the row in the CPU's order, in id order, holding
 * every kept element and, when z is not known yet, all of the top-k set): top-k, top-p, the
 * draw. */
template <class Src>
static __device__ void sample_finish(const Src &src, const sample_found &f, sample_smem &sm, int32_t *out)
{
        const sample_row &r = sm.row;
        bool reached;
        uint64_t xa = 0;
        if (r.tk && src.size() > r.k)
                xa = sample_select<false>(src, 0, (uint64_t)r.k, f.maxl, f.s, sm, &reached);
        const uint64_t xcut = r.mp ? (uint64_t)f.cutkey << 32 : 0;
        const uint64_t xb = xa > xcut ? xa : xcut;
        uint64_t xc = xb;
        if (r.tp) {
                uint64_t z = f.z;
                if (!f.z_known) {
                        uint64_t zl = 0;
                        const sample_thr in_a(xa);
                        for (int i = threadIdx.x; i < src.size(); i += SAMPLE_THREADS) {
                                float x;
                                int32_t id;
                                src.get(i, x, id);
                                if (in_a(x, id))
                                        zl += sample_w1(x, f.maxl, f.s);
                        }
                        z = block_sum_u64(zl, sm);
                }
                const uint64_t tq = sample_topp_target(r.top_p, z);
                uint64_t x;
                if (tq == 0) /* the most likely token alone */
                        x = f.best, reached = true;
                else /* src holds the boundary, if there is one (see the top-p bound) */
                        x = sample_select<true>(src, xb, tq, f.maxl, f.s, sm, &reached);
                if (reached)
                        xc = x;
        }
        sample_draw(src, xc, f.maxl, r.inv_t, f.s, sample_uniform(r.seed, r.step), sm, out);
}

/* ---- the fast kernel ---- */

static __global__ void __launch_bounds__(SAMPLE_THREADS, 1)
sample_kernel(float *logits, int n, const struct cuda_sample_params *params, const int32_t *hist,
              int32_t *out, sample_cand *scratch, bool vec)
{
        __shared__ sample_smem sm;
        pdl_start();
        const int row = blockIdx.x;
        float *lg = logits + (size_t)row * n;
        sample_cand *glist = scratch + (size_t)row * n;
        if (threadIdx.x == 0)
                sm.row = sample_row_load(params + row, n);
        __syncthreads();
        const sample_row &r = sm.row;

        /* penalties: count each window id in scratch, then whoever takes the count applies it */
        if (r.penalize) {
                uint32_t *cnt = (uint32_t *)glist;
                const int32_t *h = hist + r.hist_off;
                for (uint32_t j = threadIdx.x; j < r.hist_len; j += SAMPLE_THREADS) {
                        const int32_t id = h[j];
                        if (id >= 0 && id < n)
                                cnt[id] = 0;
                }
                __syncthreads();
                for (uint32_t j = threadIdx.x; j < r.hist_len; j += SAMPLE_THREADS) {
                        const int32_t id = h[j];
                        if (id >= 0 && id < n)
                                atomicAdd(&cnt[id], 1u);
                }
                __syncthreads();
                for (uint32_t j = threadIdx.x; j < r.hist_len; j += SAMPLE_THREADS) {
                        const int32_t id = h[j];
                        if (id < 0 || id >= n)
                                continue;
                        const uint32_t c = atomicExch(&cnt[id], 0u);
                        if (c)
                                lg[id] = sample_penalize(sample_sanitize(lg[id]), c, r);
                }
                __syncthreads();
        }

        /* pass 1: the argmax (strict > in id order keeps the lowest id among equals; NaN never
         * wins); for top-k a histogram of the keys' top bits */
        const bool khist = !r.greedy && r.tk && r.k > SAMPLE_THREADS;
        if (khist)
                for (int b = threadIdx.x; b < SAMPLE_KBINS; b += SAMPLE_THREADS)
                        sm.h.kcnt[b] = 0;
        __syncthreads();
        float bv = -INFINITY;
        int bi = -1; /* none seen: loses to every id */
        auto see = [&](float x, int i) {
                if (bi < 0)
                        bi = i;
                if (x > bv)
                        bv = x, bi = i;
                if (khist)
                        atomicAdd(&sm.h.kcnt[sample_key32(sample_sanitize(x)) >> (32 - SAMPLE_KBITS)], 1u);
        };
        if (vec) {
                const float4 *v4 = (const float4 *)lg;
                const int n4 = n / 4;
                int i = threadIdx.x;
                for (; i + 3 * SAMPLE_THREADS < n4; i += 4 * SAMPLE_THREADS) {
                        float4 v[4];
#pragma unroll
                        for (int j = 0; j < 4; j++)
                                v[j] = v4[i + j * SAMPLE_THREADS];
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                                const int e = 4 * (i + j * SAMPLE_THREADS);
                                see(v[j].x, e), see(v[j].y, e + 1), see(v[j].z, e + 2), see(v[j].w, e + 3);
                        }
                }
                for (; i < n4; i += SAMPLE_THREADS) {
                        const float4 v = v4[i];
                        see(v.x, 4 * i), see(v.y, 4 * i + 1), see(v.z, 4 * i + 2), see(v.w, 4 * i + 3);
                }
        } else {
                for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS)
                        see(lg[i], i);
        }
        const uint64_t best = block_max_u64(bi < 0 ? 0 : sample_key(bv, bi), sm);
        sample_found &f = sm.f;
        {
                const float maxl = sample_key32_float((uint32_t)(best >> 32));
                if (r.greedy || !isfinite(maxl)) { /* nothing finite to weigh: the argmax, as on the CPU */
                        if (threadIdx.x == 0)
                                out[row] = (int32_t)~(uint32_t)best;
                        return;
                }
                if (threadIdx.x == 0) {
                        f.best = best;
                        f.maxl = maxl;
                        f.s = sample_shift(n);
                        f.cutkey = r.mp ? sample_key32(sample_cut(maxl, r.min_p)) : 0;
                        f.z_known = false;
                        f.z = 0;
                        f.dbin = SAMPLE_DBINS - 1;
                }
        }

        /* Top-k's superset, a lower bound on the k-th largest key: for k <= 1024 the k-th largest
         * of the threads' maxima (k elements of the row reach it), else the low end of the key
         * histogram's bin that holds the k-th largest. */
        uint32_t klo = 0;
        if (r.tk && r.k <= SAMPLE_THREADS) {
                sm.cache[threadIdx.x] = sample_cand{bi < 0 ? -INFINITY : bv, bi}; /* none: below all */
                __syncthreads();
                bool reached;
                const uint64_t x = sample_select<false>(sample_list_src{sm.cache, SAMPLE_THREADS}, 0,
                                                        (uint64_t)r.k, 0.0f, 0, sm, &reached);
                klo = (uint32_t)(x >> 32);
        } else if (r.tk) {
                if (threadIdx.x < 32) {
                        uint64_t before;
                        auto count = [&](int b) { return (uint64_t)sm.h.kcnt[b]; };
                        const int b = warp_find_bin(count, SAMPLE_KBINS, true, 0, (uint64_t)r.k, &before);
                        if (threadIdx.x == 0)
                                sm.bin = b; /* found: k < n */
                }
                __syncthreads();
                klo = (uint32_t)sm.bin << (32 - SAMPLE_KBITS);
        }
        __syncthreads(); /* f is set */

        /* Top-p without top-k: z over the whole row, exactly, and a bound on the boundary from a
         * count histogram of the distance to the max in 1/64-nat bins. An element of bin b has
         * -(b+1)/64 < d <= -b/64, so it weighs between lb(b) and ub(b) (expf within 2 ulp, the
         * fixed point's floor and the rounding allowed for). The boundary lies at or before the
         * first bin where the lower bounds of the kept (min-p) mass reach top_p · z, and at or
         * before the last bin after which the upper bounds stay within zb - top_p · z (zb: the
         * kept mass); the smaller bin bounds the candidates. */
        bool dbound = false;
        if (r.tp && !r.tk) {
                for (int b = threadIdx.x; b < SAMPLE_DBINS; b += SAMPLE_THREADS)
                        sm.h.dcnt[b] = 0;
                __syncthreads();
                uint64_t zl = 0, zbl = 0;
                const float maxl = f.maxl;
                const int s = f.s;
                const float cut = r.mp ? sample_thr((uint64_t)f.cutkey << 32).x : -INFINITY;
                auto weigh = [&](float x) {
                        x = sample_sanitize(x);
                        const uint64_t q = sample_w1(x, maxl, s);
                        zl += q;
                        if (q && x >= cut) {
                                zbl += q;
                                atomicAdd(&sm.h.dcnt[sample_dbin(x, maxl)], 1u);
                        }
                };
                if (vec) {
                        const float4 *v4 = (const float4 *)lg;
                        const int n4 = n / 4;
                        int i = threadIdx.x;
                        for (; i + SAMPLE_THREADS < n4; i += 2 * SAMPLE_THREADS) {
                                const float4 a = v4[i], b = v4[i + SAMPLE_THREADS];
                                weigh(a.x), weigh(a.y), weigh(a.z), weigh(a.w);
                                weigh(b.x), weigh(b.y), weigh(b.z), weigh(b.w);
                        }
                        for (; i < n4; i += SAMPLE_THREADS) {
                                const float4 a = v4[i];
                                weigh(a.x), weigh(a.y), weigh(a.z), weigh(a.w);
                        }
                } else {
                        for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS)
                                weigh(lg[i]);
                }
                const uint64_t z = block_sum_u64(zl, sm), zb = block_sum_u64(zbl, sm);
                const uint64_t tq = sample_topp_target(r.top_p, z);
                if (threadIdx.x < 32) {
                        auto lower = [&](int b) -> uint64_t {
                                if (b == SAMPLE_DBINS - 1) /* the catch-all bin: no lower bound */
                                        return 0;
                                const double e = (double)expf(-(float)(b + 1) / SAMPLE_DBIN_SCALE);
                                const double lb = floor(ldexp(e, s) * (1.0 - 0x1.0p-19)) - 2.0;
                                return lb > 0.0 ? sm.h.dcnt[b] * (uint64_t)lb : 0;
                        };
                        auto upper = [&](int b) -> uint64_t {
                                const double e = (double)expf(-(float)b / SAMPLE_DBIN_SCALE);
                                return sm.h.dcnt[b] * (uint64_t)(ceil(ldexp(e, s) * (1.0 + 0x1.0p-19)) + 2.0);
                        };
                        uint64_t before;
                        int b = tq == 0 ? 0 : warp_find_bin(lower, SAMPLE_DBINS, false, 0, tq, &before);
                        if (tq && zb >= tq) {
                                const int b2 = warp_find_bin(upper, SAMPLE_DBINS, true, 0, zb - tq + 1, &before);
                                b = b < 0 || (b2 >= 0 && b2 < b) ? b2 : b;
                        }
                        if (threadIdx.x == 0) {
                                f.z_known = true;
                                f.z = z;
                                f.dbin = b;
                        }
                }
                __syncthreads();
                dbound = f.dbin >= 0;
        }

        /* The candidates: with top-k and top-p, all of top-k's superset (z is measured over the
         * top-k set, min-p included); otherwise also cut by min-p and top-p's bound. */
        const bool use_k = r.tk, use_cut = r.mp && !(r.tk && r.tp), use_d = dbound;
        if (!use_k && !use_cut && !use_d) {
                sample_finish(sample_row_src{lg, n}, f, sm, out + row);
                return;
        }
        const float maxl = f.maxl;
        const int dbin = f.dbin;
        uint32_t lo32 = use_k ? klo : 0;
        lo32 = use_cut && f.cutkey > lo32 ? f.cutkey : lo32;
        const float lo = sample_thr((uint64_t)lo32 << 32).x; /* keys32 >= lo32 <=> logits >= lo */
        int m;
        if (use_d) /* a kept logit is not NaN: x >= lo refuses NaN */
                m = sample_compact(lg, n, vec, [&](float x) { return x >= lo && sample_dbin(x, maxl) <= dbin; },
                                   glist, sm);
        else
                m = sample_compact(lg, n, vec, [&](float x) { return x >= lo; }, glist, sm);
        sample_finish(sample_list_src{m <= SAMPLE_CACHE ? sm.cache : glist, m}, f, sm, out + row);
}

/* ---- plain reference: one thread per row, sampler.c step by step ---- */

static __device__ __forceinline__ bool ref_before(const sample_cand &x, const sample_cand &y)
{
        return x.logit > y.logit || (x.logit == y.logit && x.id < y.id);
}

static __device__ int32_t ref_argmax(const sample_cand *c, uint32_t n)
{
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (ref_before(c[i], c[best]))
                        best = i;
        return c[best].id;
}

/* sampler.c's select_top_k: the k first in its order moved to the front (quickselect). */
static __device__ void ref_select_top_k(sample_cand *c, uint32_t n, uint32_t k)
{
        uint32_t lo = 0, hi = n;
        while (hi - lo > 1) {
                const sample_cand a = c[lo], b = c[lo + (hi - lo) / 2], d = c[hi - 1];
                sample_cand piv;
                if (ref_before(a, b))
                        piv = ref_before(b, d) ? b : (ref_before(a, d) ? d : a);
                else
                        piv = ref_before(a, d) ? a : (ref_before(b, d) ? d : b);
                uint32_t lt = lo, i = lo, gt = hi;
                while (i < gt) {
                        if (ref_before(c[i], piv)) {
                                const sample_cand t = c[i];
                                c[i] = c[lt], c[lt] = t;
                                lt++, i++;
                        } else if (ref_before(piv, c[i])) {
                                gt--;
                                const sample_cand t = c[i];
                                c[i] = c[gt], c[gt] = t;
                        } else {
                                i++;
                        }
                }
                if (k <= lt)
                        hi = lt;
                else if (k <= gt)
                        return;
                else
                        lo = gt;
        }
}

/* In-place heapsort, ascending in less (no memory beyond the candidates). */
template <class Less>
static __device__ void ref_heap_sort(sample_cand *c, uint32_t n, Less less)
{
        auto sift = [&](uint32_t root, uint32_t end) {
                for (uint32_t child; (child = 2 * root + 1) < end; root = child) {
                        if (child + 1 < end && less(c[child], c[child + 1]))
                                child++;
                        if (!less(c[root], c[child]))
                                return;
                        const sample_cand t = c[root];
                        c[root] = c[child], c[child] = t;
                }
        };
        if (n < 2)
                return;
        for (uint32_t start = n / 2; start-- > 0;)
                sift(start, n);
        for (uint32_t end = n - 1; end > 0; end--) {
                const sample_cand t = c[0];
                c[0] = c[end], c[end] = t;
                sift(0, end);
        }
}

static __global__ void sample_ref_kernel(float *logits, int n, const struct cuda_sample_params *params,
                                         const int32_t *hist, int32_t *out, sample_cand *scratch)
{
        const int row = blockIdx.x;
        float *lg = logits + (size_t)row * n;
        sample_cand *c = scratch + (size_t)row * n;
        const sample_row r = sample_row_load(params + row, n);

        /* penalties, with c[].id holding the counts for a while */
        for (int i = 0; i < n; i++)
                c[i] = sample_cand{sample_sanitize(lg[i]), 0};
        if (r.penalize)
                for (uint32_t j = 0; j < r.hist_len; j++) {
                        const int32_t id = hist[(size_t)r.hist_off + j];
                        if (id >= 0 && id < n)
                                c[id].id = (int32_t)((uint32_t)c[id].id + 1u);
                }
        for (int i = 0; i < n; i++) {
                const uint32_t count = (uint32_t)c[i].id;
                if (r.penalize && count) {
                        c[i].logit = sample_penalize(c[i].logit, count, r);
                        lg[i] = c[i].logit;
                }
                c[i].id = i;
        }
        if (r.greedy) {
                out[row] = ref_argmax(c, (uint32_t)n);
                return;
        }

        uint32_t nn = (uint32_t)n;
        if (r.tk) {
                ref_select_top_k(c, nn, (uint32_t)r.k);
                nn = (uint32_t)r.k;
        }
        float maxl = -INFINITY;
        for (uint32_t i = 0; i < nn; i++)
                maxl = c[i].logit > maxl ? c[i].logit : maxl;
        if (!isfinite(maxl)) {
                out[row] = ref_argmax(c, nn);
                return;
        }
        maxl = __fadd_rn(maxl, 0.0f); /* -0 to +0, as the fast kernel's key has it */
        const int s = sample_shift(n);
        uint64_t z = 0;
        for (uint32_t i = 0; i < nn; i++)
                z += sample_w1(c[i].logit, maxl, s);

        if (r.mp) {
                const float cut = sample_cut(maxl, r.min_p);
                uint32_t m = 0;
                for (uint32_t i = 0; i < nn; i++)
                        if (c[i].logit >= cut)
                                c[m++] = c[i];
                nn = m;
        }
        if (r.tp) {
                ref_heap_sort(c, nn, [](const sample_cand &x, const sample_cand &y) { return ref_before(x, y); });
                const uint64_t tq = sample_topp_target(r.top_p, z);
                uint64_t cum = 0;
                uint32_t keep = nn;
                for (uint32_t i = 0; i < nn; i++) {
                        cum += sample_w1(c[i].logit, maxl, s);
                        if (cum >= tq) {
                                keep = i + 1;
                                break;
                        }
                }
                nn = keep;
        }

        /* the draw, over the kept candidates in id order */
        ref_heap_sort(c, nn, [](const sample_cand &x, const sample_cand &y) { return x.id < y.id; });
        uint64_t total = 0;
        for (uint32_t i = 0; i < nn; i++)
                total += sample_wt(c[i].logit, maxl, r.inv_t, s);
        const uint64_t tq = sample_draw_target(sample_uniform(r.seed, r.step), total);
        uint64_t cum = 0;
        for (uint32_t i = 0; i < nn; i++) {
                cum += sample_wt(c[i].logit, maxl, r.inv_t, s);
                if (tq < cum) {
                        out[row] = c[i].id;
                        return;
                }
        }
        out[row] = c[nn - 1].id; /* unreachable: tq < total */
}

/* ---- entry points ---- */

size_t cuda_sample_scratch_bytes(int n_rows, int n_vocab)
{
        if (n_rows <= 0 || n_vocab <= 0 || n_vocab > SAMPLE_MAX_VOCAB)
                return 1;
        return (size_t)n_rows * (size_t)n_vocab * sizeof(sample_cand);
}

static bool sample_args_ok(const float *logits, int n_rows, int n_vocab,
                           const struct cuda_sample_params *params, const int32_t *hist, const int32_t *out,
                           const void *scratch)
{
        return logits && params && hist && out && scratch && (uintptr_t)scratch % 8 == 0 && n_rows >= 0 &&
               n_vocab > 0 && n_vocab <= SAMPLE_MAX_VOCAB;
}

int cuda_sample(float *logits, int n_rows, int n_vocab, const struct cuda_sample_params *params,
                const int32_t *hist, int32_t *out, void *scratch, cudaStream_t stream, bool pdl)
{
        if (!sample_args_ok(logits, n_rows, n_vocab, params, hist, out, scratch))
                return -EINVAL;
        if (n_rows == 0)
                return 0;
        const bool vec = n_vocab % 4 == 0 && (uintptr_t)logits % 16 == 0;
        return CUDA_CHECK(cuda_launch(pdl, sample_kernel, n_rows, SAMPLE_THREADS, 0, stream, logits, n_vocab, params,
                                      hist, out, (sample_cand *)scratch, vec));
}

int cuda_sample_ref(float *logits, int n_rows, int n_vocab, const struct cuda_sample_params *params,
                    const int32_t *hist, int32_t *out, void *scratch, cudaStream_t stream)
{
        if (!sample_args_ok(logits, n_rows, n_vocab, params, hist, out, scratch))
                return -EINVAL;
        if (n_rows == 0)
                return 0;
        /* one row per block: the rows' serial loops run on different SMs, not in one warp */
        sample_ref_kernel<<<n_rows, 1, 0, stream>>>(logits, n_vocab, params, hist, out, (sample_cand *)scratch);
        return CUDA_CHECK_LAUNCH();
}

double cuda_sample_uniform(uint64_t seed, uint64_t step)
{
        return sample_uniform(seed, step);
}
