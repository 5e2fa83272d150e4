/* test_attention.cu — checks cuda_qkv_post and cuda_attention (fast and plain) against a CPU
 * double reference on a paged cache with shuffled block tables and a batch that mixes decode
 * tokens of several sequences with prefill chunks (qkv_post writes the batch's own K/V, then
 * attention reads them, as the engine runs them), in both modes (deterministic off and on),
 * and the two tensor-core kernels (d 64 and 128), cuda_attention_tc and cuda_attention_dec,
 * on the same batches, the first also on prefill chunks in batch order (tiles of 64 tokens
 * across sequences, padding tokens, a missing block); checks batch invariance in
 * deterministic mode (a token's output bitwise the same alone, in 8 and in 200; the
 * tensor-core prefill kernel always; the decode kernel, whose cluster split follows the
 * token count, within f16 rounding, and bitwise for the same count); then times
 * cuda_attention at llama-3.2-1B (d 64) and llama-8B (d 128) decode and prefill shapes, both
 * modes, and the tensor-core kernel of each shape against it. Exit 0 all checks pass, 1 any
 * failed, 77 no GPU.
 *   nvcc -O3 -std=c++17 -arch=sm_90 -Iengine/cuda -o build-gpu/test_attention \
 *        tests/gpu/test_attention.cu engine/cuda/attention.cu engine/cuda/attention_tc.cu \
 *        engine/cuda/attention_dec.cu
 * Options: --json PATH, --check-only (no timing; for compute-sanitizer). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention.cuh"
#include "common.cuh"
#include "device.cuh"

#define HARNESS_SEED 0xa77eull
#define HARNESS_RANDOM_ONLY
#include "harness.cuh"

#define Q_TOL 1e-5   /* qkv_post floats vs double: float rounding only (theta as the CPU) */
#define ATT_TOL 1e-4 /* attention vs double: float scores/softmax over f16 K/V read back */
#define TC_TOL 3e-3  /* attention_tc: Q and the probabilities rounded to f16 for the mma */
#define KV_ULP 1     /* f16 cache rows: the float result may round to the neighbour */
#define KV_ABS 1e-6  /* ... or be off by float rounding of the head's largest value */
#define GUARD 64     /* poisoned floats after each output, which must stay poisoned */
#define BLOCK 16

/* ---- random data ---- */

static __global__ void fill_f16(__half *p, size_t n, uint64_t seed)
{
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x)
                p[i] = __float2half_rn(uniform(seed, i));
}

static uint32_t rand_below(uint32_t n)
{
        return (uint32_t)(mix64(seed_next()) % n);
}

template <class T> static void shuffle(std::vector<T> &v)
{
        for (size_t i = v.size(); i > 1; i--)
                std::swap(v[i - 1], v[rand_below((uint32_t)i)]);
}

static void rand_f16(__half *p, size_t n)
{
        fill_f16<<<1024, 256>>>(p, n, seed_next());
        CUDA_CHECK_ABORT(cudaGetLastError());
}

/* ---- device buffers ---- */

template <class T> static T *dev_alloc(size_t n)
{
        T *p;
        CUDA_CHECK_ABORT(cudaMalloc(&p, sizeof(T) * std::max<size_t>(n, 1)));
        return p;
}

template <class T> static std::vector<T> to_host(const T *d, size_t n)
{
        std::vector<T> h(n);
        CUDA_CHECK_ABORT(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
        return h;
}

template <class T> static T *to_dev(const std::vector<T> &h)
{
        T *d = dev_alloc<T>(h.size());
        CUDA_CHECK_ABORT(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
        return d;
}

/* NaN everywhere, guard included: unwritten elements stay NaN and fail the check */
static void poison(float *p, size_t n)
{
        CUDA_CHECK_ABORT(cudaMemset(p, 0xff, sizeof(float) * n));
}

static bool poisoned(float f)
{
        uint32_t u;
        memcpy(&u, &f, 4);
        return u == 0xffffffffu;
}

static uint16_t h_bits(__half h)
{
        return __half_as_ushort(h);
}

static double h_val(uint16_t u)
{
        return (double)__half2float(__ushort_as_half(u));
}

/* distance in f16 ulps (sign-magnitude to a monotone integer; +0 and -0 coincide) */
static int f16_ulps(uint16_t a, uint16_t b)
{
        const int ka = a & 0x8000 ? -(int)(a & 0x7fff) : (int)(a & 0x7fff);
        const int kb = b & 0x8000 ? -(int)(b & 0x7fff) : (int)(b & 0x7fff);
        return abs(ka - kb);
}

/* ---- results ---- */

struct check {
        std::string name;
        double err, tol;
        size_t bad, guard_hit; /* bad: unwritten / mismatching elements; guard: poison lost */
        bool pass;
        std::string note;
};

struct bench {
        std::string name;
        int d, ntok, ctx, det, nsets, reps;
        double us, kv_gbs, gflops, err;
};

/* a shape timed with cuda_attention (deterministic off) and the tensor-core kernel for it:
 * cuda_attention_tc (prefill) or cuda_attention_dec (decode) */
struct bench_tc {
        std::string name;
        int d, ntok, reps;
        double us, us_tc, gflops_tc, err_tc;
};

static std::vector<check> checks;
static std::vector<bench> benches;
static std::vector<bench_tc> benches_tc;

static void add_check(const std::string &name, double err, double tol, size_t bad,
                      size_t guard_hit, const std::string &note)
{
        check c{name, err, tol, bad, guard_hit, false, note};
        c.pass = bad == 0 && guard_hit == 0 && err <= tol && !isnan(err);
        printf("check %-58s err %.3e (tol %.0e) bad %zu guard %zu %s %s\n", name.c_str(), err,
               tol, bad, guard_hit, note.c_str(), c.pass ? "ok" : "FAIL");
        checks.push_back(c);
}

static void add_flag(const std::string &name, bool ok)
{
        add_check(name, ok ? 0.0 : 1.0, 0.0, ok ? 0 : 1, 0, "");
}

/* ‖out − ref‖ / ‖ref‖ over pairs (out, ref) accumulated by the caller */
struct relerr {
        double num = 0.0, den = 0.0, maxabs = 0.0;
        size_t nan = 0;
        void add(double o, double r)
        {
                if (isnan(o)) {
                        nan++;
                        return;
                }
                num += (o - r) * (o - r);
                den += r * r;
                maxabs = std::max(maxabs, fabs(o - r));
        }
        double err() const
        {
                return nan ? NAN : den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
        }
};

/* ---- scenario: sequences, block tables, the batch ---- */

struct seq_spec {
        int prior, count; /* positions already cached; tokens of this batch after them */
};

struct scenario {
        std::string name;              /* in the checks' names; empty for the first one */
        int max_blocks, n_rows, n_blocks;
        std::vector<int32_t> bt;       /* [n_rows][max_blocks], -1 where unused */
        std::vector<int32_t> pos, row; /* per batch token */
        std::vector<int> decode;       /* tokens that are a sequence's only token */
        std::vector<int> seq_row;      /* block-table row of each sequence */
};

/* in_order: the batch holds the sequences' tokens in the order given, each in position
 * order (prefill chunks as the engine hands them to cuda_attention_tc); otherwise shuffled */
static scenario build_scenario(const std::vector<seq_spec> &seqs, int extra_rows,
                               int extra_blocks, bool in_order = false)
{
        scenario sc;
        const int ns = (int)seqs.size();
        sc.n_rows = ns + extra_rows;
        std::vector<int> rows(sc.n_rows);
        for (int i = 0; i < sc.n_rows; i++)
                rows[i] = i;
        shuffle(rows);
        int used = 0, mb = 0;
        for (const seq_spec &s : seqs) {
                const int nb = (s.prior + s.count + BLOCK - 1) / BLOCK;
                used += nb;
                mb = std::max(mb, nb);
        }
        sc.max_blocks = mb + 2;
        sc.n_blocks = used + extra_blocks;
        std::vector<int32_t> ids(sc.n_blocks);
        for (int i = 0; i < sc.n_blocks; i++)
                ids[i] = i;
        shuffle(ids); /* non-contiguous, out of order, some never used */
        sc.bt.assign((size_t)sc.n_rows * sc.max_blocks, -1);
        int next = 0;
        std::vector<std::pair<int, int>> toks; /* (sequence, position) */
        for (int s = 0; s < ns; s++) {
                const int nb = (seqs[s].prior + seqs[s].count + BLOCK - 1) / BLOCK;
                for (int b = 0; b < nb; b++)
                        sc.bt[(size_t)rows[s] * sc.max_blocks + b] = ids[next++];
                for (int k = 0; k < seqs[s].count; k++)
                        toks.push_back({s, seqs[s].prior + k});
                sc.seq_row.push_back(rows[s]);
        }
        if (!in_order)
                shuffle(toks); /* decode tokens between and among the prefill chunks */
        for (size_t t = 0; t < toks.size(); t++) {
                sc.pos.push_back(toks[t].second);
                sc.row.push_back(rows[toks[t].first]);
                if (seqs[toks[t].first].count == 1)
                        sc.decode.push_back((int)t);
        }
        return sc;
}

static long long host_cache_row(const scenario &sc, int row, int p)
{
        const int b = sc.bt[(size_t)row * sc.max_blocks + p / BLOCK];
        return b < 0 ? -1 : (long long)b * BLOCK + p % BLOCK;
}

/* Inserts a padding token at batch index `at` (pos < 0 or row < 0: it writes no K/V and
 * attends to nothing, so its output is 0), as a batch padded to a fixed size carries. */
static void add_padding(scenario &sc, int at, int pos, int row)
{
        sc.pos.insert(sc.pos.begin() + at, pos);
        sc.row.insert(sc.row.begin() + at, row);
        for (int &t : sc.decode)
                t += t >= at;
}

static bool is_padding(const scenario &sc, int t)
{
        return sc.pos[t] < 0 || sc.row[t] < 0;
}

/* ---- one configuration ---- */

struct cfg {
        const char *name;
        int n_head, n_head_kv, dk, dv, n_rot, neox, window;
        bool bias, q_norm, k_norm, ff;
        float base, rope_scale, q_scale, sharp; /* sharp: attention scale multiplier */
};

/* CPU double reference of qkv_post for one token (x: the row's QD + KD + VD values). The
 * rotation angle is built in float exactly as engine/forward.c rope_cache does (and as the
 * header asks the GPU to): that float rounding is the engine's semantics, not an error to
 * measure. cos/sin and everything else in double. */
static void qkv_post_cpu(const cfg &c, std::vector<double> &x, int pos, const float *bq,
                         const float *bk, const float *bv, const float *qn, const float *kn,
                         const float *ff, float eps)
{
        const int QD = c.n_head * c.dk, KD = c.n_head_kv * c.dk, VD = c.n_head_kv * c.dv;
        if (c.bias) {
                for (int i = 0; i < QD; i++)
                        x[i] += bq[i];
                for (int i = 0; i < KD; i++)
                        x[QD + i] += bk[i];
                for (int i = 0; i < VD; i++)
                        x[QD + KD + i] += bv[i];
        }
        auto norm = [&](double *h, const float *w) {
                double ss = 0.0;
                for (int i = 0; i < c.dk; i++)
                        ss += h[i] * h[i];
                const double s = 1.0 / sqrt(ss / c.dk + eps);
                for (int i = 0; i < c.dk; i++)
                        h[i] = h[i] * s * w[i];
        };
        if (c.q_norm)
                for (int h = 0; h < c.n_head; h++)
                        norm(&x[h * c.dk], qn);
        if (c.k_norm)
                for (int h = 0; h < c.n_head_kv; h++)
                        norm(&x[QD + h * c.dk], kn);
        const float ts = powf(c.base, -2.0f / (float)c.n_rot);
        float theta = (float)pos;
        const int half = c.n_rot / 2;
        for (int i = 0; i < half; i++) {
                const float f = ff ? ff[i] : 1.0f;
                const float th = c.rope_scale * (theta / f);
                const double cs = cos((double)th), sn = sin((double)th);
                const int i0 = c.neox ? i : 2 * i, i1 = c.neox ? i + half : 2 * i + 1;
                for (int h = 0; h < c.n_head + c.n_head_kv; h++) {
                        double *v = &x[h * c.dk]; /* K heads follow the Q heads */
                        const double x0 = v[i0], x1 = v[i1];
                        v[i0] = x0 * cs - x1 * sn;
                        v[i1] = x0 * sn + x1 * cs;
                }
                theta *= ts;
        }
        for (int i = 0; i < QD; i++)
                x[i] *= c.q_scale;
}

/* out[t][h·dv + d] in double from Q (float, read back) and the cache (f16, read back). */
static std::vector<double> attention_cpu(const cfg &c, const scenario &sc,
                                         const std::vector<int32_t> &pos,
                                         const std::vector<int32_t> &row,
                                         const std::vector<float> &q, size_t ldq,
                                         const std::vector<uint16_t> &kc,
                                         const std::vector<uint16_t> &vc, double scale)
{
        const int ntok = (int)pos.size(), group = c.n_head / c.n_head_kv;
        const int KD = c.n_head_kv * c.dk, VD = c.n_head_kv * c.dv, OD = c.n_head * c.dv;
        std::vector<double> out((size_t)ntok * OD);
        std::vector<double> s, acc(c.dv);
        std::vector<long long> rr;
        for (int t = 0; t < ntok; t++) {
                const int p = pos[t];
                const int lo = c.window > 0 && p >= c.window ? p - c.window + 1 : 0;
                rr.clear();
                for (int j = lo; row[t] >= 0 && j <= p; j++) { /* padding: nothing */
                        const long long r = host_cache_row(sc, row[t], j);
                        if (r >= 0) /* a block the table lacks is skipped, as the kernels do */
                                rr.push_back(r);
                }
                for (int h = 0; h < c.n_head; h++) {
                        const int hk = h / group;
                        const float *qh = &q[(size_t)t * ldq + (size_t)h * c.dk];
                        s.assign(rr.size(), 0.0);
                        double M = -INFINITY;
                        for (size_t j = 0; j < rr.size(); j++) {
                                const uint16_t *k = &kc[(size_t)rr[j] * KD + (size_t)hk * c.dk];
                                double d = 0.0;
                                for (int i = 0; i < c.dk; i++)
                                        d += (double)qh[i] * h_val(k[i]);
                                s[j] = scale * d;
                                M = std::max(M, s[j]);
                        }
                        double S = 0.0;
                        std::fill(acc.begin(), acc.end(), 0.0);
                        for (size_t j = 0; j < rr.size(); j++) {
                                const double e = exp(s[j] - M);
                                S += e;
                                const uint16_t *v = &vc[(size_t)rr[j] * VD + (size_t)hk * c.dv];
                                for (int d = 0; d < c.dv; d++)
                                        acc[d] += e * h_val(v[d]);
                        }
                        for (int d = 0; d < c.dv; d++) /* no positions: 0 */
                                out[(size_t)t * OD + (size_t)h * c.dv + d] = S > 0.0 ? acc[d] / S : 0.0;
                }
        }
        return out;
}

/* The attention implementations under test: the plain one, the fast one and the two on
 * tensor cores, prefill and decode (f16 Q and probabilities: TC_TOL). */
enum att_kind { ATT_REF, ATT_FAST, ATT_TC, ATT_DEC };

static int attention_call(enum att_kind k, const struct cuda_attn_args *a, cudaStream_t st)
{
        return k == ATT_TC ? cuda_attention_tc(a, st)
               : k == ATT_DEC ? cuda_attention_dec(a, st)
               : k == ATT_FAST ? cuda_attention(a, st) : cuda_attention_ref(a, st);
}

static double kind_tol(enum att_kind k)
{
        return k == ATT_TC || k == ATT_DEC ? TC_TOL : ATT_TOL;
}

/* Runs one attention variant into a poisoned out (ldo > its row: the padding must stay
 * poisoned too) and compares every element with the reference rows ref_rows of `ref`;
 * tokens whose reference row is padding (pad[row]) must come out exactly 0. */
static void run_attention_check(const std::string &name, enum att_kind kind,
                                struct cuda_attn_args a, const std::vector<double> &ref,
                                const std::vector<int> &ref_rows, const std::vector<char> &pad)
{
        const int OD = a.n_head * a.dv;
        const size_t n = (size_t)a.ntok * a.ldo + GUARD;
        float *out = dev_alloc<float>(n);
        poison(out, n);
        a.out = out;
        CUDA_OK_OR_ABORT(attention_call(kind, &a, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const std::vector<float> h = to_host(out, n);
        relerr e;
        size_t guard = 0, nonzero = 0;
        for (int t = 0; t < a.ntok; t++) {
                for (int i = 0; i < OD; i++) {
                        const float o = h[(size_t)t * a.ldo + i];
                        e.add(o, ref[(size_t)ref_rows[t] * OD + i]);
                        nonzero += pad[ref_rows[t]] && o != 0.0f && !isnan(o);
                }
                for (int i = OD; i < a.ldo; i++)
                        guard += !poisoned(h[(size_t)t * a.ldo + i]);
        }
        for (size_t i = (size_t)a.ntok * a.ldo; i < n; i++)
                guard += !poisoned(h[i]);
        char note[64];
        if (nonzero)
                snprintf(note, sizeof(note), "maxabs %.2e, padding not 0: %zu", e.maxabs, nonzero);
        else
                snprintf(note, sizeof(note), "maxabs %.2e", e.maxabs);
        add_check(name, e.err(), kind_tol(kind), e.nan + nonzero, guard, note);
        /* the same launch writing 16-bit values (out16): bitwise h converted, the rest of
         * each row and the tail untouched */
        for (int wt : {CUDA_WTYPE_BF16, CUDA_WTYPE_F16}) {
                uint16_t *o16 = dev_alloc<uint16_t>(n);
                CUDA_CHECK_ABORT(cudaMemset(o16, 0xff, n * sizeof(uint16_t)));
                struct cuda_attn_args b = a;
                b.out = NULL;
                b.out16 = o16;
                b.out16_type = wt;
                CUDA_OK_OR_ABORT(attention_call(kind, &b, 0));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                std::vector<uint16_t> g(n);
                CUDA_CHECK_ABORT(cudaMemcpy(g.data(), o16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
                size_t bad = 0;
                for (size_t i = 0; i < n; i++) {
                        const size_t col = i % (size_t)a.ldo;
                        const bool inside = i < (size_t)a.ntok * a.ldo && col < (size_t)OD;
                        const uint16_t want =
                                !inside ? 0xffff
                                : wt == CUDA_WTYPE_BF16 ? __bfloat16_as_ushort(__float2bfloat16_rn(h[i]))
                                                        : __half_as_ushort(__float2half_rn(h[i]));
                        bad += g[i] != want;
                }
                add_flag(name + (wt == CUDA_WTYPE_BF16 ? " out16 bf16" : " out16 f16") + " == out converted, bitwise",
                         bad == 0);
                CUDA_CHECK_ABORT(cudaFree(o16));
        }
        CUDA_CHECK_ABORT(cudaFree(out));
}

static void check_case(const cfg &c, const scenario &sc)
{
        const int ntok = (int)sc.pos.size();
        const std::string label = sc.name.empty() ? c.name : std::string(c.name) + " " + sc.name;
        const int QD = c.n_head * c.dk, KD = c.n_head_kv * c.dk, VD = c.n_head_kv * c.dv;
        const int RD = QD + KD + VD, ld = RD + 4; /* padded rows: not 16-byte multiples */
        const size_t nslots = (size_t)sc.n_blocks * BLOCK;
        const float eps = 1e-6f;

        int32_t *d_pos = to_dev(sc.pos), *d_row = to_dev(sc.row), *d_bt = to_dev(sc.bt);
        __half *d_k = dev_alloc<__half>(nslots * KD), *d_v = dev_alloc<__half>(nslots * VD);
        __half *d_k0 = dev_alloc<__half>(nslots * KD), *d_v0 = dev_alloc<__half>(nslots * VD);
        rand_f16(d_k0, nslots * KD);
        rand_f16(d_v0, nslots * VD);
        const std::vector<__half> hk0h = to_host(d_k0, nslots * KD), hv0h = to_host(d_v0, nslots * VD);
        std::vector<uint16_t> hk0(hk0h.size()), hv0(hv0h.size());
        for (size_t i = 0; i < hk0.size(); i++)
                hk0[i] = h_bits(hk0h[i]);
        for (size_t i = 0; i < hv0.size(); i++)
                hv0[i] = h_bits(hv0h[i]);

        const size_t nq = (size_t)ntok * ld + GUARD;
        float *d_qkv = dev_alloc<float>(nq);
        rand_f32(d_qkv, nq);
        const std::vector<float> qkv_in = to_host(d_qkv, nq);

        float *d_bq = NULL, *d_bk = NULL, *d_bv = NULL, *d_qn = NULL, *d_kn = NULL, *d_ff = NULL;
        std::vector<float> hbq, hbk, hbv, hqn, hkn, hff;
        if (c.bias) {
                d_bq = dev_alloc<float>(QD), d_bk = dev_alloc<float>(KD), d_bv = dev_alloc<float>(VD);
                rand_f32(d_bq, QD, 0.5f), rand_f32(d_bk, KD, 0.5f), rand_f32(d_bv, VD, 0.5f);
                hbq = to_host(d_bq, QD), hbk = to_host(d_bk, KD), hbv = to_host(d_bv, VD);
        }
        if (c.q_norm) {
                d_qn = dev_alloc<float>(c.dk);
                rand_f32(d_qn, c.dk, 0.5f, 1.0f);
                hqn = to_host(d_qn, c.dk);
        }
        if (c.k_norm) {
                d_kn = dev_alloc<float>(c.dk);
                rand_f32(d_kn, c.dk, 0.5f, 1.0f);
                hkn = to_host(d_kn, c.dk);
        }
        if (c.ff) { /* llama3-style factors: 1 .. 8 */
                d_ff = dev_alloc<float>(c.n_rot / 2);
                rand_f32(d_ff, c.n_rot / 2, 3.5f, 4.5f);
                hff = to_host(d_ff, c.n_rot / 2);
        }

        /* CPU reference of qkv_post */
        std::vector<double> xref((size_t)ntok * RD);
        std::vector<long long> slot(ntok);
        std::vector<char> in_batch(nslots, 0), pad(ntok);
        for (int t = 0; t < ntok; t++) {
                std::vector<double> x(qkv_in.begin() + (size_t)t * ld,
                                      qkv_in.begin() + (size_t)t * ld + RD);
                qkv_post_cpu(c, x, sc.pos[t], hbq.data(), hbk.data(), hbv.data(), hqn.data(),
                             hkn.data(), c.ff ? hff.data() : NULL, eps);
                std::copy(x.begin(), x.end(), xref.begin() + (size_t)t * RD);
                pad[t] = is_padding(sc, t);
                slot[t] = -1;
                if (pad[t]) /* processed in qkv like the others, but written nowhere */
                        continue;
                slot[t] = host_cache_row(sc, sc.row[t], sc.pos[t]);
                if (slot[t] < 0) {
                        fprintf(stderr, "test bug: token %d has no cache slot\n", t);
                        abort();
                }
                in_batch[slot[t]] = 1;
        }

        struct cuda_batch_map map = {d_pos, d_row, d_bt, sc.max_blocks, BLOCK};
        struct cuda_qkv_args qa = {};
        qa.qkv = d_qkv, qa.ld = ld, qa.ntok = ntok;
        qa.n_head = c.n_head, qa.n_head_kv = c.n_head_kv, qa.dk = c.dk, qa.dv = c.dv;
        qa.bq = d_bq, qa.bk = d_bk, qa.bv = d_bv, qa.q_norm = d_qn, qa.k_norm = d_kn;
        qa.norm_eps = eps, qa.n_rot = c.n_rot, qa.neox = c.neox;
        qa.rope_base = c.base, qa.rope_scale = c.rope_scale, qa.rope_ff = d_ff;
        qa.q_scale = c.q_scale, qa.k_cache = d_k, qa.v_cache = d_v, qa.map = map;

        std::vector<float> hq;
        std::vector<uint16_t> hkc, hvc;
        for (int fast = 0; fast < 2; fast++) { /* plain first: the fast one's output stays */
                const std::string tag = std::string(fast ? "qkv_post " : "qkv_post_ref ") + label;
                CUDA_CHECK_ABORT(cudaMemcpy(d_qkv, qkv_in.data(), sizeof(float) * nq,
                                            cudaMemcpyHostToDevice));
                CUDA_CHECK_ABORT(cudaMemcpy(d_k, d_k0, sizeof(__half) * nslots * KD,
                                            cudaMemcpyDeviceToDevice));
                CUDA_CHECK_ABORT(cudaMemcpy(d_v, d_v0, sizeof(__half) * nslots * VD,
                                            cudaMemcpyDeviceToDevice));
                CUDA_OK_OR_ABORT(fast ? cuda_qkv_post(&qa, 0) : cuda_qkv_post_ref(&qa, 0));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                hq = to_host(d_qkv, nq);
                const std::vector<__half> kch = to_host(d_k, nslots * KD), vch = to_host(d_v, nslots * VD);
                hkc.resize(kch.size()), hvc.resize(vch.size());
                for (size_t i = 0; i < kch.size(); i++)
                        hkc[i] = h_bits(kch[i]);
                for (size_t i = 0; i < vch.size(); i++)
                        hvc[i] = h_bits(vch[i]);

                relerr eq, ek, ev;
                size_t guard = 0;
                for (int t = 0; t < ntok; t++) {
                        for (int i = 0; i < RD; i++) {
                                relerr &e = i < QD ? eq : i < QD + KD ? ek : ev;
                                e.add(hq[(size_t)t * ld + i], xref[(size_t)t * RD + i]);
                        }
                        for (int i = RD; i < ld; i++) /* row padding: never touched */
                                guard += memcmp(&hq[(size_t)t * ld + i], &qkv_in[(size_t)t * ld + i], 4) != 0;
                }
                for (size_t i = (size_t)ntok * ld; i < nq; i++)
                        guard += memcmp(&hq[i], &qkv_in[i], 4) != 0;
                char note[64];
                snprintf(note, sizeof(note), "maxabs %.2e", eq.maxabs);
                add_check(tag + " Q", eq.err(), Q_TOL, eq.nan, guard, note);
                snprintf(note, sizeof(note), "maxabs %.2e", std::max(ek.maxabs, ev.maxabs));
                add_check(tag + " K,V left in qkv", std::max(ek.err(), ev.err()), Q_TOL,
                          ek.nan + ev.nan, guard, note);

                /* cache: the batch's rows within KV_ULP of the reference rounded to f16, or
                 * within KV_ABS of the head's largest value (a RoPE rotation that cancels
                 * to near zero keeps the float result's absolute error, which is many f16
                 * ulps there); every other row bit for bit as before */
                size_t far = 0, touched = 0;
                int max_ulp = 0;
                auto kv_rows = [&](const std::vector<uint16_t> &cache, int off, int heads, int d,
                                   long long r, int t) {
                        const int D = heads * d;
                        for (int h = 0; h < heads; h++) {
                                const double *x = &xref[(size_t)t * RD + off + (size_t)h * d];
                                double big = 0.0;
                                for (int i = 0; i < d; i++)
                                        big = std::max(big, fabs(x[i]));
                                for (int i = 0; i < d; i++) {
                                        const uint16_t got = cache[(size_t)r * D + (size_t)h * d + i];
                                        const int u = f16_ulps(got, h_bits(__double2half(x[i])));
                                        max_ulp = std::max(max_ulp, u);
                                        far += u > KV_ULP && fabs(h_val(got) - x[i]) > KV_ABS * big;
                                }
                        }
                };
                for (int t = 0; t < ntok; t++) {
                        if (slot[t] < 0)
                                continue;
                        kv_rows(hkc, QD, c.n_head_kv, c.dk, slot[t], t);
                        kv_rows(hvc, QD + KD, c.n_head_kv, c.dv, slot[t], t);
                }
                for (size_t r = 0; r < nslots; r++) {
                        if (in_batch[r])
                                continue;
                        touched += memcmp(&hkc[r * KD], &hk0[r * KD], 2 * (size_t)KD) != 0;
                        touched += memcmp(&hvc[r * VD], &hv0[r * VD], 2 * (size_t)VD) != 0;
                }
                snprintf(note, sizeof(note), "max ulp %d (err: count beyond), other rows changed %zu", max_ulp,
                         touched);
                add_check(tag + " K/V cache rows", (double)far, 0.0, far, touched, note);
        }

        /* attention over the cache the fast qkv_post left, Q as it left it */
        const double scale = (c.q_scale == 1.0f ? 1.0 / sqrt((double)c.dk) : 1.0) * c.sharp;
        const std::vector<double> ref =
                attention_cpu(c, sc, sc.pos, sc.row, hq, ld, hkc, hvc, (double)(float)scale);
        struct cuda_attn_args aa = {};
        aa.q = d_qkv, aa.ldq = ld, aa.ntok = ntok, aa.ldo = c.n_head * c.dv + 8;
        aa.n_head = c.n_head, aa.n_head_kv = c.n_head_kv, aa.dk = c.dk, aa.dv = c.dv;
        aa.window = c.window, aa.scale = (float)scale;
        aa.k_cache = d_k, aa.v_cache = d_v, aa.map = map;
        std::vector<int> all(ntok);
        for (int t = 0; t < ntok; t++)
                all[t] = t;
        char name[192];
        snprintf(name, sizeof(name), "attention %s t=%d", label.c_str(), ntok);
        run_attention_check(name, ATT_FAST, aa, ref, all, pad);
        snprintf(name, sizeof(name), "attention_ref %s t=%d", label.c_str(), ntok);
        run_attention_check(name, ATT_REF, aa, ref, all, pad);
        aa.deterministic = 1;
        snprintf(name, sizeof(name), "attention det %s t=%d", label.c_str(), ntok);
        run_attention_check(name, ATT_FAST, aa, ref, all, pad);
        aa.deterministic = 0;
        const bool tc = cuda_attention_tc_ok(c.dk, c.dv);
        if (tc) {
                snprintf(name, sizeof(name), "attention_tc %s t=%d", label.c_str(), ntok);
                run_attention_check(name, ATT_TC, aa, ref, all, pad);
        } else {
                snprintf(name, sizeof(name), "attention_tc %s: dk %d dv %d -EOPNOTSUPP", label.c_str(),
                         c.dk, c.dv);
                struct cuda_attn_args b = aa;
                b.out = d_qkv; /* an output, so only the dims are wrong (refused before any launch) */
                add_flag(name, cuda_attention_tc(&b, 0) == -EOPNOTSUPP);
        }
        /* the decode kernel takes any tokens: the prefill chunks' too (each its own block) */
        const bool dec = cuda_attention_dec_ok(c.dk, c.dv, c.n_head, c.n_head_kv);
        if (dec) {
                snprintf(name, sizeof(name), "attention_dec %s t=%d", label.c_str(), ntok);
                run_attention_check(name, ATT_DEC, aa, ref, all, pad);
        } else {
                snprintf(name, sizeof(name), "attention_dec %s: dk %d dv %d group %d -EOPNOTSUPP", label.c_str(),
                         c.dk, c.dv, c.n_head / c.n_head_kv);
                struct cuda_attn_args b = aa;
                b.out = d_qkv;
                add_flag(name, cuda_attention_dec(&b, 0) == -EOPNOTSUPP);
        }

        /* the decode tokens alone: a small grid (the other launch shape), Q rows packed */
        const int nd = (int)sc.decode.size();
        float *d_q2 = NULL;
        int32_t *d_pos2 = NULL, *d_row2 = NULL;
        if (nd > 0) { /* the prefill-only scenarios have none */
                std::vector<float> q2((size_t)nd * QD);
                std::vector<int32_t> pos2(nd), row2(nd);
                for (int i = 0; i < nd; i++) {
                        const int t = sc.decode[i];
                        std::copy(hq.begin() + (size_t)t * ld, hq.begin() + (size_t)t * ld + QD,
                                  q2.begin() + (size_t)i * QD);
                        pos2[i] = sc.pos[t], row2[i] = sc.row[t];
                }
                d_q2 = to_dev(q2);
                d_pos2 = to_dev(pos2), d_row2 = to_dev(row2);
                struct cuda_attn_args ad = aa;
                ad.q = d_q2, ad.ldq = QD, ad.ntok = nd, ad.ldo = c.n_head * c.dv;
                ad.map.pos = d_pos2, ad.map.bt_row = d_row2;
                snprintf(name, sizeof(name), "attention %s decode t=%d", label.c_str(), nd);
                run_attention_check(name, ATT_FAST, ad, ref, sc.decode, pad);
                snprintf(name, sizeof(name), "attention_ref %s decode t=%d", label.c_str(), nd);
                run_attention_check(name, ATT_REF, ad, ref, sc.decode, pad);
                ad.deterministic = 1;
                snprintf(name, sizeof(name), "attention det %s decode t=%d", label.c_str(), nd);
                run_attention_check(name, ATT_FAST, ad, ref, sc.decode, pad);
                ad.deterministic = 0;
                if (tc) { /* one sequence per token: every tile runs once per sequence */
                        snprintf(name, sizeof(name), "attention_tc %s decode t=%d", label.c_str(), nd);
                        run_attention_check(name, ATT_TC, ad, ref, sc.decode, pad);
                }
                if (dec) {
                        snprintf(name, sizeof(name), "attention_dec %s decode t=%d", label.c_str(), nd);
                        run_attention_check(name, ATT_DEC, ad, ref, sc.decode, pad);
                }
        }

        for (void *p : {(void *)d_pos, (void *)d_row, (void *)d_bt, (void *)d_k, (void *)d_v,
                        (void *)d_k0, (void *)d_v0, (void *)d_qkv, (void *)d_bq, (void *)d_bk,
                        (void *)d_bv, (void *)d_qn, (void *)d_kn, (void *)d_ff, (void *)d_q2,
                        (void *)d_pos2, (void *)d_row2})
                CUDA_CHECK_ABORT(cudaFree(p));
}

/* ---- argument checks ---- */

/* The invalid arguments every attention call refuses with -EINVAL (a: a valid call). */
static void check_rejects(const char *who, enum att_kind kind, const struct cuda_attn_args &a, __half *d_h)
{
        const std::string w = std::string("args: ") + who;
        struct cuda_attn_args b;
        b = a, b.ntok = -1;
        add_flag(w + " ntok < 0", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.out = NULL;
        add_flag(w + " out NULL", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.out16_type = 7, b.out16 = a.out;
        add_flag(w + " out16_type 7", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.n_head = 3, b.n_head_kv = 2, b.ldq = b.ldo = 192;
        add_flag(w + " n_head % n_head_kv", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.k_cache = d_h + 1;
        add_flag(w + " misaligned cache", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.ldq = 63;
        add_flag(w + " ldq < n_head*dk", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.window = -1;
        add_flag(w + " window < 0", attention_call(kind, &b, 0) == -EINVAL);
        b = a, b.map.bt = NULL;
        add_flag(w + " NULL block table", attention_call(kind, &b, 0) == -EINVAL);
}

static void check_args(void)
{
        int32_t *d_i = dev_alloc<int32_t>(16);
        CUDA_CHECK_ABORT(cudaMemset(d_i, 0, 16 * sizeof(int32_t)));
        float *d_f = dev_alloc<float>(4096);
        __half *d_h = dev_alloc<__half>(4096);
        CUDA_CHECK_ABORT(cudaMemset(d_f, 0, 4096 * sizeof(float)));
        CUDA_CHECK_ABORT(cudaMemset(d_h, 0, 4096 * sizeof(__half)));
        const struct cuda_batch_map map = {d_i, d_i, d_i, 4, BLOCK};
        struct cuda_attn_args a = {};
        a.q = d_f, a.ldq = 64, a.out = d_f + 2048, a.ldo = 64, a.ntok = 1, a.n_head = 1, a.n_head_kv = 1;
        a.dk = 64, a.dv = 64, a.scale = 0.125f, a.k_cache = d_h, a.v_cache = d_h + 2048, a.map = map;
        struct cuda_attn_args b;
        add_flag("args: attention valid call returns 0", cuda_attention(&a, 0) == 0 &&
                                                                cuda_attention_ref(&a, 0) == 0);
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        add_flag("args: attention NULL args", cuda_attention(NULL, 0) == -EINVAL &&
                                                      cuda_attention_ref(NULL, 0) == -EINVAL);
        b = a, b.ntok = 0, b.q = NULL;
        add_flag("args: attention ntok 0 is a no-op", cuda_attention(&b, 0) == 0);
        b = a;
        b.out16_type = CUDA_WTYPE_BF16;
        add_flag("args: attention out16 NULL", cuda_attention(&b, 0) == -EINVAL);
        b = a, b.dk = 12, b.ldq = 12;
        add_flag("args: attention dk 12", cuda_attention(&b, 0) == -EINVAL);
        b = a, b.dv = 264, b.ldo = 264;
        add_flag("args: attention dv 264", cuda_attention(&b, 0) == -EINVAL);
        check_rejects("attention", ATT_FAST, a, d_h);
        b = a, b.map.bt = NULL;
        add_flag("args: attention NULL block table", cuda_attention_ref(&b, 0) == -EINVAL);
        b = a, b.ntok = 0;
        add_flag("args: attn_check valid 1, ntok 0 0, NULL -EINVAL",
                 cuda_attn_check(&a) == 1 && cuda_attn_check(&b) == 0 &&
                         cuda_attn_check(NULL) == -EINVAL);

        /* cuda_attention_tc: cuda_attention's checks, and only dk == dv of 64 or 128 */
        add_flag("args: attention_tc_ok 64/64 128/128 yes; 96/96 256/256 64/128 128/64 32/32 no",
                 cuda_attention_tc_ok(64, 64) && cuda_attention_tc_ok(128, 128) &&
                         !cuda_attention_tc_ok(96, 96) && !cuda_attention_tc_ok(256, 256) &&
                         !cuda_attention_tc_ok(64, 128) && !cuda_attention_tc_ok(128, 64) &&
                         !cuda_attention_tc_ok(32, 32));
        /* what both tensor-core kernels accept and refuse beyond cuda_attention's checks */
        auto tc_args = [&](enum att_kind kind, const std::string &who) {
                add_flag("args: " + who + " valid call returns 0", attention_call(kind, &a, 0) == 0);
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                add_flag("args: " + who + " NULL args", attention_call(kind, NULL, 0) == -EINVAL);
                struct cuda_attn_args c = a;
                c.ntok = 0, c.q = NULL;
                add_flag("args: " + who + " ntok 0 is a no-op", attention_call(kind, &c, 0) == 0);
                c = a, c.dk = 96, c.dv = 96, c.ldq = 96, c.ldo = 96;
                add_flag("args: " + who + " dk = dv = 96 -EOPNOTSUPP", attention_call(kind, &c, 0) == -EOPNOTSUPP);
        };
        tc_args(ATT_TC, "attention_tc");
        b = a, b.dv = 128, b.ldo = 128;
        add_flag("args: attention_tc dk 64 dv 128 -EOPNOTSUPP", cuda_attention_tc(&b, 0) == -EOPNOTSUPP);
        check_rejects("attention_tc", ATT_TC, a, d_h);

        /* cuda_attention_dec: cuda_attention's checks, dk == dv of 64 or 128, ≤ 16 query heads
         * per K/V head */
        add_flag("args: attention_dec_ok 64/64 32:8, 128/128 16:1 yes; 96/96, 64/128, 17:1, 8:3 no",
                 cuda_attention_dec_ok(64, 64, 32, 8) && cuda_attention_dec_ok(128, 128, 16, 1) &&
                         !cuda_attention_dec_ok(96, 96, 8, 8) && !cuda_attention_dec_ok(64, 128, 8, 8) &&
                         !cuda_attention_dec_ok(64, 64, 17, 1) && !cuda_attention_dec_ok(64, 64, 8, 3) &&
                         !cuda_attention_dec_ok(64, 64, 8, 0));
        tc_args(ATT_DEC, "attention_dec");
        b = a, b.n_head = 17, b.ldq = 17 * 64, b.ldo = 17 * 64;
        add_flag("args: attention_dec 17 query heads per K/V head -EOPNOTSUPP",
                 cuda_attention_dec(&b, 0) == -EOPNOTSUPP);
        check_rejects("attention_dec", ATT_DEC, a, d_h);

        struct cuda_qkv_args q = {};
        q.qkv = d_f, q.ld = 192, q.ntok = 1, q.n_head = 1, q.n_head_kv = 1, q.dk = 64, q.dv = 64;
        q.n_rot = 64, q.rope_base = 10000.0f, q.rope_scale = 1.0f, q.q_scale = 1.0f;
        q.k_cache = d_h, q.v_cache = d_h + 2048, q.map = map;
        struct cuda_qkv_args r;
        add_flag("args: qkv_post valid call returns 0", cuda_qkv_post(&q, 0) == 0 &&
                                                               cuda_qkv_post_ref(&q, 0) == 0);
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        r = q, r.ntok = 0;
        add_flag("args: qkv_post ntok 0 is a no-op", cuda_qkv_post(&r, 0) == 0);
        r = q, r.n_rot = 63;
        add_flag("args: qkv_post n_rot odd", cuda_qkv_post(&r, 0) == -EINVAL);
        r = q, r.n_rot = 66;
        add_flag("args: qkv_post n_rot > dk", cuda_qkv_post(&r, 0) == -EINVAL);
        r = q, r.bq = d_f;
        add_flag("args: qkv_post bias not all three", cuda_qkv_post_ref(&r, 0) == -EINVAL);
        r = q, r.ld = 191;
        add_flag("args: qkv_post ld too small", cuda_qkv_post(&r, 0) == -EINVAL);
        r = q, r.dv = 20;
        add_flag("args: qkv_post dv not a multiple of 8", cuda_qkv_post(&r, 0) == -EINVAL);
        CUDA_CHECK_ABORT(cudaFree(d_i));
        CUDA_CHECK_ABORT(cudaFree(d_f));
        CUDA_CHECK_ABORT(cudaFree(d_h));
}

/* ---- batch invariance ---- */

/* Decode tokens of `nseq` sequences (contexts 1 .. 1500, and the probes' own) on a shuffled
 * paged cache. With deterministic set, each probe's output must be bitwise the same computed
 * alone (ntok 1), among the 8 probes (ntok 8) and among all nseq tokens (ntok 200, probes at
 * shuffled places); without it, alone vs in the 200 stays within ATT_TOL (the cluster split
 * differs, so the last bits may too: counted, not required). cuda_attention_tc (d 64, 128)
 * must be bitwise the same in all three whatever the flag (attention.cuh: a token's result
 * does not depend on the other tokens of its tile). The 200-token batch is also checked
 * against the plain kernel. */
static void check_batch_invariance(const char *tag, int nh, int nkv, int dk, int dv)
{
        const int nseq = 200, nprobe = 8;
        const int probe_ctx[nprobe] = {1, 16, 17, 77, 300, 1000, 2100, 4000};
        const int KD = nkv * dk, VD = nkv * dv, QD = nh * dk, OD = nh * dv;
        std::vector<int> ctx(nseq);
        for (int i = 0; i < nseq; i++)
                ctx[i] = i < nprobe ? probe_ctx[i] : 1 + (int)rand_below(1500);
        int mb = 0, nblocks = 0;
        for (int c : ctx) {
                mb = std::max(mb, (c + BLOCK - 1) / BLOCK);
                nblocks += (c + BLOCK - 1) / BLOCK;
        }
        std::vector<int32_t> ids(nblocks), bt((size_t)nseq * mb, -1);
        for (int i = 0; i < nblocks; i++)
                ids[i] = i;
        shuffle(ids);
        for (int i = 0, next = 0; i < nseq; i++)
                for (int b = 0; b < (ctx[i] + BLOCK - 1) / BLOCK; b++)
                        bt[(size_t)i * mb + b] = ids[next++];
        /* batch order: the sequences shuffled; token j of a batch is sequence order[j] */
        std::vector<int> order(nseq);
        for (int i = 0; i < nseq; i++)
                order[i] = i;
        shuffle(order);
        std::vector<int32_t> pos(nseq), row(nseq);
        for (int j = 0; j < nseq; j++)
                pos[j] = ctx[order[j]] - 1, row[j] = order[j];
        std::vector<int32_t> ppos(nprobe), prow(nprobe);
        for (int i = 0; i < nprobe; i++)
                ppos[i] = ctx[i] - 1, prow[i] = i;

        const size_t slots = (size_t)nblocks * BLOCK;
        __half *d_k = dev_alloc<__half>(slots * KD), *d_v = dev_alloc<__half>(slots * VD);
        rand_f16(d_k, slots * KD);
        rand_f16(d_v, slots * VD);
        float *d_qs = dev_alloc<float>((size_t)nseq * QD); /* Q of sequence i at row i */
        rand_f32(d_qs, (size_t)nseq * QD, 2.0f);
        const std::vector<float> hqs = to_host(d_qs, (size_t)nseq * QD);
        std::vector<float> qb((size_t)nseq * QD); /* in batch order */
        for (int j = 0; j < nseq; j++)
                std::copy(hqs.begin() + (size_t)order[j] * QD, hqs.begin() + (size_t)(order[j] + 1) * QD,
                          qb.begin() + (size_t)j * QD);
        float *d_qb = to_dev(qb);
        int32_t *d_bt = to_dev(bt), *d_pos = to_dev(pos), *d_row = to_dev(row);
        int32_t *d_ppos = to_dev(ppos), *d_prow = to_dev(prow);
        float *d_o = dev_alloc<float>((size_t)nseq * OD), *d_r = dev_alloc<float>((size_t)nseq * OD);

        struct cuda_attn_args a = {};
        a.ldq = QD, a.ldo = OD, a.n_head = nh, a.n_head_kv = nkv, a.dk = dk, a.dv = dv;
        a.scale = 1.0f / sqrtf((float)dk), a.k_cache = d_k, a.v_cache = d_v;
        a.map = {d_ppos, d_prow, d_bt, mb, BLOCK};
        /* out[probe][OD] for one mode and batch (1: each alone, 8: the probes, 200: all) */
        auto run = [&](int det, int batch, enum att_kind kind = ATT_FAST) {
                std::vector<float> o((size_t)nprobe * OD);
                struct cuda_attn_args b = a;
                b.deterministic = det, b.out = d_o;
                if (batch == 1) {
                        for (int i = 0; i < nprobe; i++) {
                                b.q = d_qs + (size_t)i * QD, b.ntok = 1;
                                b.map.pos = d_ppos + i, b.map.bt_row = d_prow + i;
                                CUDA_OK_OR_ABORT(attention_call(kind, &b, 0));
                                CUDA_CHECK_ABORT(cudaMemcpy(&o[(size_t)i * OD], d_o, sizeof(float) * OD,
                                                            cudaMemcpyDeviceToHost));
                        }
                        return o;
                }
                if (batch == nprobe) {
                        b.q = d_qs, b.ntok = nprobe;
                        CUDA_OK_OR_ABORT(attention_call(kind, &b, 0));
                        CUDA_CHECK_ABORT(cudaMemcpy(o.data(), d_o, sizeof(float) * nprobe * OD,
                                                    cudaMemcpyDeviceToHost));
                        return o;
                }
                b.q = d_qb, b.ntok = nseq, b.map.pos = d_pos, b.map.bt_row = d_row;
                CUDA_OK_OR_ABORT(attention_call(kind, &b, 0));
                const std::vector<float> all = to_host(d_o, (size_t)nseq * OD);
                for (int j = 0; j < nseq; j++)
                        if (order[j] < nprobe)
                                std::copy(all.begin() + (size_t)j * OD, all.begin() + (size_t)(j + 1) * OD,
                                          o.begin() + (size_t)order[j] * OD);
                return o;
        };
        auto bits_differ = [](const std::vector<float> &x, const std::vector<float> &y) {
                size_t n = 0;
                for (size_t i = 0; i < x.size(); i++)
                        n += memcmp(&x[i], &y[i], 4) != 0;
                return n;
        };
        char name[160], note[96];
        const std::vector<float> d1 = run(1, 1), d8 = run(1, nprobe), d200 = run(1, nseq);
        const size_t n8 = bits_differ(d1, d8), n200 = bits_differ(d1, d200);
        snprintf(name, sizeof(name), "batch invariance det %s: alone = in 8 = in 200", tag);
        snprintf(note, sizeof(note), "%zu elements, differing bits: 8 %zu, 200 %zu", d1.size(), n8, n200);
        add_check(name, (double)(n8 + n200), 0.0, n8 + n200, 0, note);

        const std::vector<float> n1 = run(0, 1), n200b = run(0, nseq);
        relerr e;
        for (size_t i = 0; i < n1.size(); i++)
                e.add(n1[i], n200b[i]);
        snprintf(name, sizeof(name), "batch variance no-det %s: alone vs in 200", tag);
        snprintf(note, sizeof(note), "maxabs %.2e, differing bits %zu of %zu (allowed)", e.maxabs,
                 bits_differ(n1, n200b), n1.size());
        add_check(name, e.err(), ATT_TOL, e.nan, 0, note);
        relerr e2;
        for (size_t i = 0; i < n1.size(); i++)
                e2.add(d1[i], n1[i]);
        snprintf(name, sizeof(name), "batch invariance det vs no-det alone %s", tag);
        add_check(name, e2.err(), ATT_TOL, e2.nan, 0, "");

        const bool tc = cuda_attention_tc_ok(dk, dv);
        if (tc) {
                const std::vector<float> t1 = run(0, 1, ATT_TC), t8 = run(0, nprobe, ATT_TC),
                                         t200 = run(1, nseq, ATT_TC);
                const size_t m8 = bits_differ(t1, t8), m200 = bits_differ(t1, t200);
                snprintf(name, sizeof(name), "batch invariance tc %s: alone = in 8 = in 200", tag);
                snprintf(note, sizeof(note), "%zu elements, differing bits: 8 %zu, 200 %zu", t1.size(), m8,
                         m200);
                add_check(name, (double)(m8 + m200), 0.0, m8 + m200, 0, note);
                relerr e4;
                for (size_t i = 0; i < t1.size(); i++)
                        e4.add(t1[i], n1[i]);
                snprintf(name, sizeof(name), "batch invariance tc vs no-det alone %s", tag);
                add_check(name, e4.err(), TC_TOL, e4.nan, 0, "");
        }
        const bool dec = cuda_attention_dec_ok(dk, dv, nh, nkv);
        if (dec) { /* the cluster split follows the token count: alone, in 8 and in 200 run
                    * different splits (equal within f16 rounding), the same count twice the same */
                const std::vector<float> t1 = run(0, 1, ATT_DEC), t8 = run(0, nprobe, ATT_DEC),
                                         t200 = run(0, nseq, ATT_DEC), t200b = run(0, nseq, ATT_DEC);
                relerr e8, e200;
                for (size_t i = 0; i < t1.size(); i++) {
                        e8.add(t8[i], t1[i]);
                        e200.add(t200[i], t1[i]);
                }
                snprintf(name, sizeof(name), "batch variance dec %s: in 8 vs alone", tag);
                snprintf(note, sizeof(note), "maxabs %.2e, differing bits %zu of %zu", e8.maxabs, bits_differ(t1, t8),
                         t1.size());
                add_check(name, e8.err(), TC_TOL, e8.nan, 0, note);
                snprintf(name, sizeof(name), "batch variance dec %s: in 200 vs alone", tag);
                snprintf(note, sizeof(note), "maxabs %.2e, differing bits %zu of %zu", e200.maxabs,
                         bits_differ(t1, t200), t1.size());
                add_check(name, e200.err(), TC_TOL, e200.nan, 0, note);
                const size_t rep = bits_differ(t200, t200b);
                snprintf(name, sizeof(name), "determinism dec %s: the 200-token launch twice, bitwise", tag);
                add_check(name, (double)rep, 0.0, rep, 0, "");
                relerr e4;
                for (size_t i = 0; i < t1.size(); i++)
                        e4.add(t1[i], n1[i]);
                snprintf(name, sizeof(name), "batch invariance dec vs no-det alone %s", tag);
                add_check(name, e4.err(), TC_TOL, e4.nan, 0, "");
        }

        /* the 200-token batch, both modes, against the plain kernel */
        struct cuda_attn_args r = a;
        r.q = d_qb, r.ntok = nseq, r.map.pos = d_pos, r.map.bt_row = d_row, r.out = d_r;
        CUDA_OK_OR_ABORT(cuda_attention_ref(&r, 0));
        const std::vector<float> ref = to_host(d_r, (size_t)nseq * OD);
        for (int det = 0; det < 2; det++) {
                r.out = d_o, r.deterministic = det;
                CUDA_OK_OR_ABORT(cuda_attention(&r, 0));
                const std::vector<float> o = to_host(d_o, (size_t)nseq * OD);
                relerr e3;
                for (size_t i = 0; i < o.size(); i++)
                        e3.add(o[i], ref[i]);
                snprintf(name, sizeof(name), "attention%s %s t=%d vs ref", det ? " det" : "", tag, nseq);
                add_check(name, e3.err(), ATT_TOL, e3.nan, 0, "");
        }
        /* the tensor-core kernels on the 200-token batch (prefill: each tile of 64 tokens runs
         * 64 times, one per sequence) */
        auto tc_vs_ref = [&](enum att_kind kind, const char *what) {
                r.out = d_o, r.deterministic = 0;
                CUDA_OK_OR_ABORT(attention_call(kind, &r, 0));
                const std::vector<float> o = to_host(d_o, (size_t)nseq * OD);
                relerr e3;
                for (size_t i = 0; i < o.size(); i++)
                        e3.add(o[i], ref[i]);
                snprintf(name, sizeof(name), "%s %s t=%d vs ref", what, tag, nseq);
                add_check(name, e3.err(), TC_TOL, e3.nan, 0, "");
        };
        if (tc)
                tc_vs_ref(ATT_TC, "attention_tc");
        if (dec)
                tc_vs_ref(ATT_DEC, "attention_dec");
        for (void *p : {(void *)d_k, (void *)d_v, (void *)d_qs, (void *)d_qb, (void *)d_bt,
                        (void *)d_pos, (void *)d_row, (void *)d_ppos, (void *)d_prow, (void *)d_o,
                        (void *)d_r})
                CUDA_CHECK_ABORT(cudaFree(p));
}

/* ---- timing ---- */

/* Attention with 32 heads, 8 KV heads, dk = dv = d (llama-8B: d 128; llama-3.2-1B: d 64).
 * Decode: `batch` sequences, one token each at position ctx-1; sets of sequences (each its
 * own blocks) rotate until the K/V read per pass exceeds the L2 several times, so decode
 * reads its cache from HBM. Prefill: ctx tokens of one sequence at positions 0..ctx-1 (its
 * K/V stays in L2: compute-bound). Timed with deterministic off and on; every shape is also
 * checked against the plain kernel (both modes). Prefill at d 64 and 128 also times
 * cuda_attention_tc the same way (checked against the plain kernel within TC_TOL), against
 * cuda_attention with deterministic off. */
static void bench_attention(int d, int batch, int ctx, bool prefill, size_t l2)
{
        const int nh = 32, nkv = 8, KD = nkv * d;
        const int ntok = prefill ? ctx : batch, nseq = prefill ? 1 : batch;
        const int bps = (ctx + BLOCK - 1) / BLOCK;
        const double kv_set = (double)nseq * ctx * KD * 2 * 2; /* K and V bytes per set */
        int nsets = prefill ? 1 : (int)std::min(64.0, ceil(4.0 * l2 / kv_set));
        nsets = std::max(nsets, 1);
        const int rows = nsets * nseq;
        const size_t nblocks = (size_t)rows * bps, slots = nblocks * BLOCK;
        char name[64];
        if (prefill)
                snprintf(name, sizeof(name), "prefill d%d %d", d, ctx);
        else
                snprintf(name, sizeof(name), "decode d%d b%d c%d", d, batch, ctx);

        std::vector<int32_t> ids(nblocks), bt((size_t)rows * bps);
        for (size_t i = 0; i < nblocks; i++)
                ids[i] = (int32_t)i;
        shuffle(ids);
        for (size_t i = 0; i < bt.size(); i++)
                bt[i] = ids[i];
        std::vector<int32_t> pos(ntok), row((size_t)nsets * ntok);
        for (int t = 0; t < ntok; t++)
                pos[t] = prefill ? t : ctx - 1;
        for (int s = 0; s < nsets; s++)
                for (int t = 0; t < ntok; t++)
                        row[(size_t)s * ntok + t] = prefill ? s : s * nseq + t;
        int32_t *d_pos = to_dev(pos), *d_row = to_dev(row), *d_bt = to_dev(bt);
        __half *d_k = dev_alloc<__half>(slots * KD), *d_v = dev_alloc<__half>(slots * KD);
        rand_f16(d_k, slots * KD);
        rand_f16(d_v, slots * KD);
        float *d_q = dev_alloc<float>((size_t)ntok * nh * d);
        float *d_o = dev_alloc<float>((size_t)ntok * nh * d), *d_o2 = dev_alloc<float>((size_t)ntok * nh * d);
        rand_f32(d_q, (size_t)ntok * nh * d);

        struct cuda_attn_args a = {};
        a.q = d_q, a.ldq = nh * d, a.out = d_o, a.ldo = nh * d, a.ntok = ntok;
        a.n_head = nh, a.n_head_kv = nkv, a.dk = d, a.dv = d, a.scale = 1.0f / sqrtf((float)d);
        a.k_cache = d_k, a.v_cache = d_v;
        a.map = {d_pos, d_row, d_bt, bps, BLOCK};

        struct cuda_attn_args r = a;
        r.out = d_o2;
        CUDA_OK_OR_ABORT(cuda_attention_ref(&r, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const std::vector<float> o2 = to_host(d_o2, (size_t)ntok * nh * d);
        double ctx_sum = 0.0; /* positions attended, over the tokens */
        for (int t = 0; t < ntok; t++)
                ctx_sum += pos[t] + 1;
        const double flops = 2.0 * ctx_sum * nh * (d + d);

        cudaStream_t st;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        const int reps = 21;
        /* `kind` checked against the plain kernel at this shape (set 0); the relative error */
        auto check_vs_ref = [&](enum att_kind kind, const char *what) {
                CUDA_OK_OR_ABORT(attention_call(kind, &a, 0));
                CUDA_CHECK_ABORT(cudaDeviceSynchronize());
                const std::vector<float> o = to_host(d_o, (size_t)ntok * nh * d);
                relerr e;
                for (size_t i = 0; i < o.size(); i++)
                        e.add(o[i], o2[i]);
                char cname[128];
                snprintf(cname, sizeof(cname), "%s vs ref at bench %s", what, name);
                add_check(cname, e.err(), kind_tol(kind), e.nan, 0, "");
                return e.err();
        };
        /* seconds per call of `kind`: every set in one graph, the median replay */
        auto time_call = [&](enum att_kind kind) {
                cudaGraph_t g;
                cudaGraphExec_t ge;
                CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
                for (int s = 0; s < nsets; s++) {
                        struct cuda_attn_args b = a;
                        b.map.bt_row = d_row + (size_t)s * ntok;
                        CUDA_OK_OR_ABORT(attention_call(kind, &b, st));
                }
                CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
                CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
                const double median_ms = graph_median_ms(ge, st, 3, reps);
                CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
                CUDA_CHECK_ABORT(cudaGraphDestroy(g));
                return median_ms * 1e-3 / nsets;
        };
        double us_nodet = 0.0;
        for (int det = 0; det < 2; det++) {
                a.deterministic = det;
                const double err = check_vs_ref(ATT_FAST, det ? "attention det" : "attention");
                const double sec = time_call(ATT_FAST);
                bench b{name, d, ntok, ctx, det, nsets, reps, sec * 1e6, kv_set / sec / 1e9,
                        flops / sec / 1e9, err};
                printf("bench attention %-22s det %d t=%-5d ctx %-5d sets %2d  %10.2f us  %6.2f TB/s KV"
                       "  %8.1f GFLOP/s\n",
                       name, det, ntok, ctx, nsets, b.us, b.kv_gbs / 1e3, b.gflops);
                benches.push_back(b);
                if (!det)
                        us_nodet = b.us;
        }
        a.deterministic = 0;
        const enum att_kind tck = prefill ? ATT_TC : ATT_DEC;
        if (prefill ? cuda_attention_tc_ok(d, d) : cuda_attention_dec_ok(d, d, nh, nkv)) {
                const char *kname = prefill ? "attention_tc" : "attention_dec";
                const double err = check_vs_ref(tck, kname);
                const double sec = time_call(tck);
                bench_tc b{name, d, ntok, reps, us_nodet, sec * 1e6, flops / sec / 1e9, err};
                printf("bench %-13s %-22s t=%-5d  %10.2f us  (attention %.2f us: %.2fx)  %8.1f GFLOP/s\n", kname,
                       name, ntok, b.us_tc, b.us, b.us / b.us_tc, b.gflops_tc);
                benches_tc.push_back(b);
        }
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        for (void *p : {(void *)d_pos, (void *)d_row, (void *)d_bt, (void *)d_k, (void *)d_v,
                        (void *)d_q, (void *)d_o, (void *)d_o2})
                CUDA_CHECK_ABORT(cudaFree(p));
}

/* ---- main ---- */

static const cfg cases[] = {
        /* name                         nh nkv  dk   dv rot neox win  bias  qn     kn     ff     base     rsc   qsc     sharp */
        {"mha 4/4 d64 norm",            4, 4,   64,  64, 64, 0, 0,   false, false, false, false, 10000.f, 1.f,  1.f,    1.f},
        {"gqa 4/2 d64 neox bias qknorm", 4, 2,  64,  64, 64, 1, 0,   true,  true,  true,  false, 1e6f,    1.f,  1.f,    4.f},
        {"gqa 8/2 d32 norm bias ff",    8, 2,   32,  32, 32, 0, 0,   true,  false, false, true,  10000.f, 1.f,  1.f,    1.f},
        {"mqa 4/1 d256 neox win8 qknorm", 4, 1, 256, 256, 256, 1, 8, false, true,  true,  false, 10000.f, 1.f,  0.0625f, 1.f},
        {"mqa 4/1 d256 neox rot64",     4, 1,  256, 256, 64, 1, 0,   false, false, false, false, 10000.f, 0.25f, 1.f,   8.f},
        {"llama8b 32/8 d128 norm ff",  32, 8,  128, 128, 128, 0, 0,  false, false, false, true,  500000.f, 1.f, 1.f,    1.f},
        {"32/8 d64 neox bias",         32, 8,   64,  64, 64, 1, 0,   true,  false, false, false, 10000.f, 1.f,  1.f,    1.f},
        {"32/8 d128 neox win300 all",  32, 8,  128, 128, 128, 1, 300, true, true,  true,  true,  1e6f,    1.f,  0.0883883476f, 1.f},
        {"6/2 d96 norm qnorm rot32",    6, 2,   96,  96, 32, 0, 0,   false, true,  false, false, 10000.f, 1.f,  1.f,    4.f},
        {"16/2 dk128 dv64 neox",       16, 2,  128,  64, 128, 1, 0,  false, false, true,  false, 10000.f, 1.f,  1.f,    1.f},
        /* with the ones above, every launch shape: 1, 2 or 4 heads per block, with and without
         * clusters (the full batch and its decode tokens alone pick different ones) */
        {"16/8 d128 norm group2",      16, 8,  128, 128, 128, 0, 0,  false, false, false, false, 10000.f, 1.f,  1.f,    2.f},
        {"32/4 d256 neox group8",      32, 4,  256, 256, 256, 1, 0,  false, true,  true,  false, 10000.f, 1.f,  1.f,    1.f},
        {"32/4 d32 norm group8 win40", 32, 4,   32,  32, 32, 0, 40,  false, false, false, false, 10000.f, 1.f,  1.f,    1.f},
        /* cuda_attention_dec with more than 8 query heads per K/V head (the mma's rows 8-15) */
        {"16/1 d64 neox group16 win50", 16, 1,  64,  64, 64, 1, 50,  false, false, false, false, 10000.f, 1.f,  1.f,    2.f},
        {"24/2 d128 norm group12 bias", 24, 2, 128, 128, 128, 0, 0,  true,  false, false, false, 10000.f, 1.f,  1.f,    1.f},
        {"2/1 dk8 dv16 norm",           2, 1,    8,  16, 8, 0, 0,    true,  false, false, false, 10000.f, 1.f,  1.f,    1.f},
};

/* For the prefill-chunk scenarios (cuda_attention_tc's use; the fast and plain kernels are
 * checked on them too): both tc dims, GQA and MHA, with and without a window */
static const cfg chunk_cases[] = {
        /* name                         nh nkv  dk   dv rot neox win  bias  qn     kn     ff     base     rsc   qsc     sharp */
        {"gqa 8/2 d64 neox",            8, 2,   64,  64, 64, 1, 0,   false, false, false, false, 10000.f, 1.f,  1.f,    1.f},
        {"mha 8/8 d64 norm win37 bias", 8, 8,   64,  64, 64, 0, 37,  true,  false, false, false, 10000.f, 1.f,  1.f,    2.f},
        {"gqa 8/2 d128 norm win37 ff",  8, 2,  128, 128, 128, 0, 37, false, false, false, true,  500000.f, 1.f, 1.f,    1.f},
        {"mha 8/8 d128 neox qknorm",    8, 8,  128, 128, 128, 1, 0,  false, true,  true,  false, 1e6f,    1.f,  0.0883883476f, 2.f},
};

int main(int argc, char **argv)
{
        const char *json = NULL;
        bool check_only = false;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--json") && i + 1 < argc)
                        json = argv[++i];
                else if (!strcmp(argv[i], "--check-only"))
                        check_only = true;
                else {
                        fprintf(stderr, "usage: %s [--json PATH] [--check-only]\n", argv[0]);
                        return 2;
                }
        }
        cudaDeviceProp prop;
        int drv = 0, rt = 0;
        if (!device_open(&prop, &drv, &rt))
                return 77;

        check_args();
        /* contexts 1, 15, 16, 17, 300, 2100 (decode), a prefill chunk continuing a sequence
         * (positions 37..111) and a fresh one (0..32), one batch, tokens shuffled */
        const scenario sc = build_scenario({{0, 1}, {14, 1}, {15, 1}, {16, 1}, {299, 1},
                                            {2099, 1}, {37, 75}, {0, 33}},
                                           3, 11);
        printf("scenario: %zu tokens (%zu decode), %d block-table rows of %d, %d blocks of %d\n",
               sc.pos.size(), sc.decode.size(), sc.n_rows, sc.max_blocks, sc.n_blocks, BLOCK);
        for (const cfg &c : cases)
                check_case(c, sc);

        /* Prefill chunks in batch order, as cuda_attention_tc gets them: tiles of 64 tokens
         * whole and partial; a chunk deep in context (its span crosses a block the table
         * lacks unless the window ends first) with a padding token (pos -1) inside; two
         * chunks back to back and three decode tokens before a third chunk, so tiles hold
         * several sequences, with a padding token (row -1) inside the first chunk. */
        std::vector<scenario> chunks;
        chunks.push_back(build_scenario({{0, 200}}, 1, 5, true));
        chunks.back().name = "[chunk 0..199]";
        chunks.push_back(build_scenario({{1000, 70}}, 1, 5, true));
        {
                scenario &s = chunks.back();
                s.bt[(size_t)s.seq_row[0] * s.max_blocks + 20] = -1; /* positions 320..335 */
                add_padding(s, 30, -1, s.row[30]);
                s.name = "[chunk 1000..1069, pad pos -1, block 20 missing]";
        }
        chunks.push_back(build_scenario({{0, 50}, {300, 60}, {17, 1}, {1500, 1}, {64, 1}, {5, 45}},
                                        2, 7, true));
        {
                scenario &s = chunks.back();
                add_padding(s, 20, s.pos[20], -1);
                s.name = "[chunks 0..49 300..359, 3 decode, 5..49, pad row -1]";
        }
        for (const scenario &s : chunks) {
                printf("scenario %s: %zu tokens in order (%zu decode), %d block-table rows of %d,"
                       " %d blocks of %d\n",
                       s.name.c_str(), s.pos.size(), s.decode.size(), s.n_rows, s.max_blocks, s.n_blocks,
                       BLOCK);
                for (const cfg &c : chunk_cases)
                        check_case(c, s);
        }

        check_batch_invariance("32/8 d128", 32, 8, 128, 128);
        check_batch_invariance("32/8 d64", 32, 8, 64, 64);
        check_batch_invariance("6/2 d96", 6, 2, 96, 96);
        check_batch_invariance("16/1 d64", 16, 1, 64, 64);

        if (!check_only) {
                for (int d : {64, 128}) {
                        for (int ctx : {384, 4096})
                                for (int batch : {1, 8, 32, 64, 256})
                                        bench_attention(d, batch, ctx, false, prop.l2CacheSize);
                        for (int ctx : {512, 2048})
                                bench_attention(d, 1, ctx, true, prop.l2CacheSize);
                }
        }

        size_t failed = 0;
        for (const check &c : checks)
                failed += !c.pass;

        if (json) {
                FILE *f = fopen(json, "w");
                if (!f) {
                        perror(json);
                        return 1;
                }
                fprintf(f, "{\n  \"device\": \"%s\", \"sm\": \"%d%d\", \"sms\": %d, \"l2_bytes\": %d,"
                           " \"driver\": %d, \"runtime\": %d,\n",
                        prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                        prop.l2CacheSize, drv, rt);
                fprintf(f, "  \"checks_total\": %zu, \"checks_failed\": %zu,\n  \"checks\": [\n",
                        checks.size(), failed);
                for (size_t i = 0; i < checks.size(); i++) {
                        const check &c = checks[i];
                        fprintf(f, "    {\"name\": \"%s\", \"err\": %.3e, \"tol\": %.1e, \"bad\": %zu,"
                                   " \"guard_hit\": %zu, \"note\": \"%s\", \"pass\": %s}%s\n",
                                c.name.c_str(), c.err, c.tol, c.bad, c.guard_hit, c.note.c_str(),
                                c.pass ? "true" : "false", i + 1 < checks.size() ? "," : "");
                }
                fprintf(f, "  ],\n  \"attention\": [\n");
                for (size_t i = 0; i < benches.size(); i++) {
                        const bench &b = benches[i];
                        fprintf(f, "    {\"name\": \"%s\", \"d\": %d, \"ntok\": %d, \"ctx\": %d,"
                                   " \"deterministic\": %d, \"sets\": %d, \"reps\": %d, \"us\": %.3f,"
                                   " \"kv_gbs\": %.2f, \"gflops\": %.1f, \"rel_err_vs_ref\": %.3e}%s\n",
                                b.name.c_str(), b.d, b.ntok, b.ctx, b.det, b.nsets, b.reps, b.us,
                                b.kv_gbs, b.gflops, b.err, i + 1 < benches.size() ? "," : "");
                }
                fprintf(f, "  ],\n  \"attention_tc\": [\n");
                for (size_t i = 0; i < benches_tc.size(); i++) {
                        const bench_tc &b = benches_tc[i];
                        fprintf(f, "    {\"name\": \"%s\", \"d\": %d, \"ntok\": %d, \"reps\": %d,"
                                   " \"us_attention\": %.3f, \"us_tc\": %.3f, \"speedup\": %.3f,"
                                   " \"gflops_tc\": %.1f, \"rel_err_vs_ref\": %.3e}%s\n",
                                b.name.c_str(), b.d, b.ntok, b.reps, b.us, b.us_tc, b.us / b.us_tc,
                                b.gflops_tc, b.err_tc, i + 1 < benches_tc.size() ? "," : "");
                }
                fprintf(f, "  ]\n}\n");
                fclose(f);
        }

        /* the table, last: the two modes side by side */
        printf("\n%s (%d SMs, L2 %d MB): attention, 32 q heads, 8 kv heads, dk = dv = d;"
               " KV bytes read once per call / time\n",
               prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
        if (!benches.empty()) {
                printf("%-22s %5s %5s %10s %8s %10s %8s %10s %9s\n", "shape", "t", "ctx", "us", "TB/s",
                       "us det", "TB/s det", "GFLOP/s", "vs_ref");
                for (size_t i = 0; i + 1 < benches.size(); i += 2) {
                        const bench &b = benches[i], &c = benches[i + 1];
                        printf("%-22s %5d %5d %10.2f %8.2f %10.2f %8.2f %10.1f %9.2e\n", b.name.c_str(),
                               b.ntok, b.ctx, b.us, b.kv_gbs / 1e3, c.us, c.kv_gbs / 1e3, b.gflops,
                               std::max(b.err, c.err));
                }
        }
        if (!benches_tc.empty()) {
                printf("\non tensor cores: cuda_attention_tc (prefill: one sequence, positions 0..t-1) or"
                       " cuda_attention_dec (decode) vs cuda_attention (det off); speedup = us / us tc\n");
                printf("%-22s %5s %10s %10s %8s %10s %9s\n", "shape", "t", "us", "us tc", "speedup",
                       "GFLOP/s tc", "vs_ref tc");
                for (const bench_tc &b : benches_tc)
                        printf("%-22s %5d %10.2f %10.2f %7.2fx %10.1f %9.2e\n", b.name.c_str(), b.ntok,
                               b.us, b.us_tc, b.us / b.us_tc, b.gflops_tc, b.err_tc);
        }
        for (const check &c : checks)
                if (!c.pass)
                        printf("FAILED %s: err %.3e tol %.0e bad %zu guard %zu %s\n", c.name.c_str(),
                               c.err, c.tol, c.bad, c.guard_hit, c.note.c_str());
        printf("checks: %zu, failed %zu (tolerance qkv_post %.0e, K/V cache %d ulp or %.0e of the"
               " head's max, attention %.0e, attention_tc %.0e; ||out-ref||/||ref|| vs CPU double)\n",
               checks.size(), failed, Q_TOL, KV_ULP, KV_ABS, ATT_TOL, TC_TOL);
        return failed ? 1 : 0;
}
