/* test_sample.cu — checks and times cuda_sample (engine/cuda/sample.cu): the fast kernel and the
 * one-thread-per-row reference against each other and against a host double implementation of
 * sampler.c's algorithm (with the GPU's id-order draw and the same u), on random logits with
 * ties, one dominating logit, NaN/-inf/±0, many parameter sets and penalty windows; greedy and
 * penalties exactly; batch-position independence; the drawn distribution (chi-square); then
 * timing at vocab 128256. Exit 0 all checks pass, 1 any failed, 77 no GPU.
 * Options: --json PATH, --check-only (no timing; for compute-sanitizer). */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common.cuh"
#include "device.cuh"
#include "sample.cuh"

#define GUARD 16
#define POISON_ID ((int32_t)0x7eadbeef)
#define NEAR_TIE 2e-5     /* a decision this close (in probability) may go either way */
#define MATCH_MIN 0.99    /* fraction of rows that must agree */
#define PEN_TOL 1e-6      /* penalised logits vs double, relative to the terms' size */

/* ---- random data ---- */

static __device__ __host__ uint64_t mix64(uint64_t z)
{
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static __device__ __host__ float uniform(uint64_t seed, uint64_t i)
{
        return (float)((int64_t)(mix64(seed ^ mix64(i)) >> 11) - (1ll << 52)) * (1.0f / (1ll << 52));
}

enum pattern { PAT_RAND, PAT_TIES, PAT_DOMINANT, PAT_SPECIAL, PAT_PEAKED, PAT_COUNT };
static const char *pattern_name[] = {"rand", "ties", "dominant", "special", "peaked"};

static __global__ void fill_logits(float *l, int rows, int n, const int *pat, uint64_t seed)
{
        const size_t total = (size_t)rows * n;
        for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
             idx += (size_t)gridDim.x * blockDim.x) {
                const int r = (int)(idx / n), i = (int)(idx % n);
                const float u1 = uniform(seed, 3 * idx), u2 = uniform(seed, 3 * idx + 1),
                            u3 = uniform(seed, 3 * idx + 2);
                float x = 3.0f * (u1 + u2 + u3); /* bell-shaped, sd 3 */
                switch (pat[r]) {
                case PAT_TIES: /* 12 values: whole groups tie at every boundary */
                        x = floorf((u1 + 1.0f) * 6.0f) * 0.5f - 3.0f;
                        break;
                case PAT_DOMINANT:
                        if (i == (int)((r * 7919ull + 13) % n))
                                x = 40.0f;
                        break;
                case PAT_SPECIAL:
                        if (i % 97 == 3)
                                x = __int_as_float(0x7fc00000); /* NaN */
                        else if (i % 89 == 5)
                                x = -INFINITY;
                        else if (i % 101 == 7)
                                x = -0.0f;
                        else if (i % 103 == 9)
                                x = 0.0f;
                        else if (i == 11 || i == n - 2)
                                x = 12.5f; /* two ids share the max */
                        break;
                case PAT_PEAKED: /* ten tokens well above the rest, as after a confident model */
                        if (i % (n / 10) == 5)
                                x += 15.0f + 2.0f * u2;
                        break;
                default:
                        break;
                }
                l[idx] = x;
        }
}

static uint64_t host_rng = 0x5a3c1e;
static uint64_t rng_next(void)
{
        host_rng = mix64(host_rng);
        return host_rng;
}

/* ---- results ---- */

struct check {
        std::string name;
        bool pass;
        std::string detail;
};

struct bench {
        std::string config, pattern;
        int rows, vocab, reps;
        double us;
};

static std::vector<check> checks;
static std::vector<bench> benches;

static bool add_check(const std::string &name, bool pass, const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        checks.push_back({name, pass, buf});
        printf("check %-52s %s  %s\n", name.c_str(), buf, pass ? "ok" : "FAIL");
        return pass;
}

/* ---- the host side of the semantics ---- */

/* cuda_sample_params clamped as sample.cu does (sample_row_load) */
struct hrow {
        float temp, top_p, min_p, rp, pp, fp;
        int k;
        bool greedy, tk, tp, mp, penalize;
};

static hrow host_row(const cuda_sample_params &p, int n)
{
        hrow r;
        r.temp = p.temperature;
        r.greedy = !(p.temperature > 0.0f);
        r.tk = p.top_k > 0 && p.top_k < n;
        r.k = r.tk ? p.top_k : n;
        r.tp = p.top_p < 1.0f;
        r.top_p = p.top_p;
        r.mp = p.min_p > 0.0f;
        r.min_p = std::min(p.min_p, 1.0f);
        r.rp = p.repeat_penalty > 0.0f && p.repeat_penalty < INFINITY ? p.repeat_penalty : 1.0f;
        r.pp = isfinite(p.presence_penalty) ? p.presence_penalty : 0.0f;
        r.fp = isfinite(p.frequency_penalty) ? p.frequency_penalty : 0.0f;
        r.penalize = p.hist_len > 0 && (r.rp != 1.0f || r.pp != 0.0f || r.fp != 0.0f);
        return r;
}

static float sanitize(float l)
{
        return isnan(l) ? -INFINITY : l;
}

/* sampler.c's float expression; x86-64 without -mfma has no FMA to contract into */
static float penalize_f(float l, uint32_t c, const hrow &r)
{
        const float x = l <= 0.0f ? l * r.rp : l / r.rp;
        const float pen = (float)c * r.fp + r.pp;
        return x - pen;
}

static double penalize_d(float l, uint32_t c, const hrow &r)
{
        const double x = l <= 0.0f ? (double)l * r.rp : (double)l / r.rp;
        return x - ((double)c * r.fp + (double)r.pp);
}

struct hcand {
        float logit;
        int32_t id;
};

static bool before(const hcand &x, const hcand &y)
{
        return x.logit > y.logit || (x.logit == y.logit && x.id < y.id);
}

static int32_t host_argmax(const float *l, int n)
{
        int best = 0;
        for (int i = 1; i < n; i++)
                if (before({l[i], i}, {l[best], best}))
                        best = i;
        return best;
}

/* sampler.c's kept set in double: top-k, z over it, min-p, top-p; then the tempered weights in
 * id order. topp_margin: how close the top-p decision came to going the other way. */
struct hkept {
        std::vector<hcand> c; /* kept, in id order */
        std::vector<double> w;
        double zt, topp_margin;
        bool argmax_only;     /* nothing finite: the argmax */
        int32_t argmax;
};

static hkept host_kept(const float *l, int n, const hrow &r)
{
        hkept h;
        h.topp_margin = INFINITY;
        h.argmax = host_argmax(l, n);
        h.argmax_only = false;
        std::vector<hcand> c(n);
        for (int i = 0; i < n; i++)
                c[i] = {l[i], i};
        size_t nn = n;
        if (r.tk) {
                std::nth_element(c.begin(), c.begin() + (r.k - 1), c.end(), before);
                nn = r.k;
        }
        float maxl = -INFINITY;
        for (size_t i = 0; i < nn; i++)
                maxl = std::max(maxl, c[i].logit);
        if (!isfinite(maxl)) {
                h.argmax_only = true;
                return h;
        }
        double z = 0.0;
        for (size_t i = 0; i < nn; i++)
                z += exp((double)c[i].logit - (double)maxl);
        if (r.mp) {
                const float cut = maxl + (float)log((double)r.min_p);
                size_t m = 0;
                for (size_t i = 0; i < nn; i++)
                        if (c[i].logit >= cut)
                                c[m++] = c[i];
                nn = m;
        }
        if (r.tp) {
                std::sort(c.begin(), c.begin() + nn, before);
                double cum = 0.0, prev = 0.0;
                size_t keep = nn;
                for (size_t i = 0; i < nn; i++) {
                        prev = cum;
                        cum += exp((double)c[i].logit - (double)maxl) / z;
                        if (cum >= (double)r.top_p) {
                                keep = i + 1;
                                break;
                        }
                }
                h.topp_margin = fabs(cum - (double)r.top_p);
                if (keep >= 2)
                        h.topp_margin = std::min(h.topp_margin, fabs(prev - (double)r.top_p));
                nn = keep;
        }
        c.resize(nn);
        std::sort(c.begin(), c.end(), [](const hcand &x, const hcand &y) { return x.id < y.id; });
        const double inv_t = 1.0 / (double)r.temp;
        h.zt = 0.0;
        for (const hcand &e : c) {
                h.w.push_back(exp(((double)e.logit - (double)maxl) * inv_t));
                h.zt += h.w.back();
        }
        h.c = std::move(c);
        return h;
}

struct hres {
        int32_t id;
        double margin; /* distance of the nearest decision to its threshold, probability units */
};

static hres host_sample(const float *l, int n, const hrow &r, double u)
{
        if (r.greedy)
                return {host_argmax(l, n), INFINITY};
        const hkept h = host_kept(l, n, r);
        if (h.argmax_only)
                return {h.argmax, INFINITY};
        const double target = u * h.zt;
        double cum = 0.0;
        for (size_t i = 0; i < h.c.size(); i++) {
                const double prev = cum;
                cum += h.w[i];
                if (target < cum) {
                        double m = h.topp_margin;
                        if (prev > 0.0) /* a kept token with mass before: a real boundary */
                                m = std::min(m, (target - prev) / h.zt);
                        if (cum < h.zt)
                                m = std::min(m, (cum - target) / h.zt);
                        return {h.c[i].id, m};
                }
        }
        return {h.c.back().id, 0.0};
}

/* ---- device buffers ---- */

template <typename T>
static T *dev_alloc(size_t n)
{
        T *p;
        CUDA_CHECK_ABORT(cudaMalloc(&p, sizeof(T) * std::max<size_t>(n, 1)));
        return p;
}

template <typename T>
static std::vector<T> to_host(const T *d, size_t n)
{
        std::vector<T> h(n);
        CUDA_CHECK_ABORT(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost));
        return h;
}

template <typename T>
static T *to_dev(const std::vector<T> &h)
{
        T *d = dev_alloc<T>(h.size());
        CUDA_CHECK_ABORT(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice));
        return d;
}

/* A batch: logits as generated (orig), the parameters and the penalty windows. */
struct batch {
        int rows, n;
        float *orig;
        cuda_sample_params *params;
        int32_t *hist;
        std::vector<float> h_orig;
        std::vector<cuda_sample_params> h_params;
        std::vector<int32_t> h_hist;
        std::vector<int> cfg, pat;
};

struct cfgdef {
        const char *name;
        float t;
        int k; /* -1: n + 5 */
        float p, minp, rp, pp, fp;
        uint32_t win;
};

static const float NaNf = __builtin_nanf("");

static const cfgdef cfgs[] = {
        {"greedy", 0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"greedy+pen", 0.0f, 0, 1.0f, 0.0f, 1.3f, 0.5f, 0.2f, 64},
        {"t0.7 k40", 0.7f, 40, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t1 p0.9", 1.0f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t1 minp0.05", 1.0f, 0, 1.0f, 0.05f, 1.0f, 0.0f, 0.0f, 0},
        {"t0.8 k40 p0.95 minp0.05", 0.8f, 40, 0.95f, 0.05f, 1.0f, 0.0f, 0.0f, 0},
        {"all+pen w1000", 0.8f, 40, 0.95f, 0.05f, 1.3f, 0.5f, 0.2f, 1000},
        {"t1", 1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t0.7 k5000 p0.5", 0.7f, 5000, 0.5f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t1.5 p0.95 minp1e-20", 1.5f, 0, 0.95f, 1e-20f, 1.0f, 0.0f, 0.0f, 0},
        {"t0.5 k1", 0.5f, 1, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"tNaN(greedy)+pen w3000", NaNf, 0, 1.0f, 0.0f, 1.1f, 0.0f, 0.1f, 3000},
        {"t1 k>n(off) p0.9", 1.0f, -1, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t1 minp2(->1)", 1.0f, 0, 1.0f, 2.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t0.9 p0+pen w200", 0.9f, 0, 0.0f, 0.0f, 1.0f, 0.4f, 0.3f, 200},
        {"t2 k40 minp0.1 rp0.8", 2.0f, 40, 1.0f, 0.1f, 0.8f, 0.0f, 0.0f, 64},
        {"t1 p0.99", 1.0f, 0, 0.99f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t0.6 p0.3 minp0.01", 0.6f, 0, 0.3f, 0.01f, 1.0f, 0.0f, 0.0f, 0},
        {"t1 k2000 p0.999", 1.0f, 2000, 0.999f, 0.0f, 1.0f, 0.0f, 0.0f, 0},
        {"t0.9 p0.95 minp0.2+pen", 0.9f, 0, 0.95f, 0.2f, 1.2f, 0.1f, 0.1f, 500},
};
#define NCFG (int)(sizeof(cfgs) / sizeof(cfgs[0]))

/* A window: half from the row's 8 best ids (so penalties change the argmax), the rest random,
 * one in ten outside the vocabulary. */
static void make_window(batch &b, int r, uint32_t len, cuda_sample_params &p)
{
        p.hist_off = (uint32_t)b.h_hist.size();
        p.hist_len = len;
        if (!len)
                return;
        const int n = b.n;
        std::vector<hcand> c(n);
        for (int i = 0; i < n; i++)
                c[i] = {sanitize(b.h_orig[(size_t)r * n + i]), i};
        const int hot = std::min(8, n);
        std::partial_sort(c.begin(), c.begin() + hot, c.end(), before);
        const int32_t bad[] = {-1, n, n + 7, INT32_MIN, INT32_MAX};
        for (uint32_t j = 0; j < len; j++) {
                const uint64_t x = rng_next();
                const int sel = (int)(x % 10);
                int32_t id;
                if (sel < 5)
                        id = c[(x >> 8) % hot].id;
                else if (sel < 9)
                        id = (int32_t)((x >> 8) % (uint64_t)n);
                else
                        id = bad[(x >> 8) % 5];
                b.h_hist.push_back(id);
        }
}

static cuda_sample_params make_params(const cfgdef &c, int n)
{
        cuda_sample_params p;
        memset(&p, 0, sizeof(p));
        p.temperature = c.t;
        p.top_k = c.k < 0 ? n + 5 : c.k;
        p.top_p = c.p;
        p.min_p = c.minp;
        p.repeat_penalty = c.rp;
        p.presence_penalty = c.pp;
        p.frequency_penalty = c.fp;
        p.seed = rng_next();
        p.step = rng_next() % 100000;
        return p;
}

/* rows: config r % NCFG, pattern (r / NCFG) % npat from pats */
static batch make_batch(int rows, int n, const std::vector<int> &pats)
{
        batch b;
        b.rows = rows;
        b.n = n;
        for (int r = 0; r < rows; r++) {
                b.cfg.push_back(r % NCFG);
                b.pat.push_back(pats[(r / NCFG) % pats.size()]);
        }
        b.orig = dev_alloc<float>((size_t)rows * n);
        int *dpat = to_dev(b.pat);
        fill_logits<<<1024, 256>>>(b.orig, rows, n, dpat, rng_next());
        CUDA_CHECK_ABORT(cudaGetLastError());
        CUDA_CHECK_ABORT(cudaFree(dpat));
        b.h_orig = to_host(b.orig, (size_t)rows * n);
        for (int r = 0; r < rows; r++) {
                cuda_sample_params p = make_params(cfgs[b.cfg[r]], n);
                make_window(b, r, cfgs[b.cfg[r]].win, p);
                b.h_params.push_back(p);
        }
        b.params = to_dev(b.h_params);
        b.hist = to_dev(b.h_hist);
        return b;
}

static void free_batch(batch &b)
{
        CUDA_CHECK_ABORT(cudaFree(b.orig));
        CUDA_CHECK_ABORT(cudaFree(b.params));
        CUDA_CHECK_ABORT(cudaFree(b.hist));
}

typedef int (*sample_fn)(float *, int, int, const cuda_sample_params *, const int32_t *, int32_t *, void *,
                         cudaStream_t);

/* cuda_sample with an ordinary launch, as a sample_fn */
static int sample_fast(float *l, int rows, int n, const cuda_sample_params *p, const int32_t *h, int32_t *out,
                       void *scratch, cudaStream_t s)
{
        return cuda_sample(l, rows, n, p, h, out, scratch, s);
}

/* Runs fn on a fresh copy of the batch's logits; returns the ids (GUARD poisoned ids after them
 * included) and the logits as left. */
static void run(sample_fn fn, const batch &b, std::vector<int32_t> &ids, std::vector<float> &logits)
{
        const size_t len = (size_t)b.rows * b.n;
        float *l = dev_alloc<float>(len);
        int32_t *out = dev_alloc<int32_t>(b.rows + GUARD);
        void *scratch;
        CUDA_CHECK_ABORT(cudaMalloc(&scratch, cuda_sample_scratch_bytes(b.rows, b.n)));
        CUDA_CHECK_ABORT(cudaMemcpy(l, b.orig, sizeof(float) * len, cudaMemcpyDeviceToDevice));
        CUDA_CHECK_ABORT(cudaMemset(out, 0x7e, sizeof(int32_t) * (b.rows + GUARD)));
        CUDA_CHECK_ABORT(cudaMemset(scratch, 0xff, cuda_sample_scratch_bytes(b.rows, b.n)));
        CUDA_OK_OR_ABORT(fn(l, b.rows, b.n, b.params, b.hist, out, scratch, 0));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        ids = to_host(out, b.rows + GUARD);
        logits = to_host(l, len);
        CUDA_CHECK_ABORT(cudaFree(l));
        CUDA_CHECK_ABORT(cudaFree(out));
        CUDA_CHECK_ABORT(cudaFree(scratch));
}

static bool ids_sane(const std::vector<int32_t> &ids, int rows, int n, size_t *bad, size_t *guard)
{
        *bad = *guard = 0;
        for (int r = 0; r < rows; r++)
                *bad += ids[r] < 0 || ids[r] >= n;
        for (int g = 0; g < GUARD; g++)
                *guard += (uint32_t)ids[rows + g] != 0x7e7e7e7eu;
        return !*bad && !*guard;
}

/* ---- the main check: one batch of every config × pattern at a vocabulary size ---- */

static size_t tot_rows, tot_fr, tot_fh; /* rows, and fast != ref / fast != host among them */

static void check_vocab(int n)
{
        const int rows = 4 * NCFG; /* every config with every pattern */
        batch b = make_batch(rows, n, {PAT_RAND, PAT_TIES, PAT_DOMINANT, PAT_SPECIAL});
        std::vector<int32_t> fid, rid;
        std::vector<float> fl, rl;
        run(sample_fast, b, fid, fl);
        run(cuda_sample_ref, b, rid, rl);
        char name[128];
        size_t bad, guard;

        snprintf(name, sizeof(name), "n=%d fast ids written, in range", n);
        bool ok = ids_sane(fid, rows, n, &bad, &guard);
        add_check(name, ok, "out of range %zu, guard hit %zu", bad, guard);
        snprintf(name, sizeof(name), "n=%d ref ids written, in range", n);
        ok = ids_sane(rid, rows, n, &bad, &guard);
        add_check(name, ok, "out of range %zu, guard hit %zu", bad, guard);

        /* penalties: the logits left behind, bit for bit against sampler.c's float expression,
         * within PEN_TOL of double, and fast == ref */
        size_t pen_bits = 0, pen_rows = 0, pen_ids = 0, fr_bits = 0;
        double pen_err = 0.0;
        std::vector<float> hl((size_t)rows * n); /* the host's penalised, sanitised logits */
        for (int r = 0; r < rows; r++) {
                const hrow hr = host_row(b.h_params[r], n);
                const cuda_sample_params &p = b.h_params[r];
                std::vector<uint32_t> cnt;
                if (hr.penalize) {
                        cnt.assign(n, 0);
                        for (uint32_t j = 0; j < p.hist_len; j++) {
                                const int32_t id = b.h_hist[p.hist_off + j];
                                if (id >= 0 && id < n)
                                        cnt[id]++;
                        }
                        pen_rows++;
                }
                for (int i = 0; i < n; i++) {
                        const size_t at = (size_t)r * n + i;
                        float want = b.h_orig[at];
                        if (hr.penalize && cnt[i]) {
                                want = penalize_f(sanitize(b.h_orig[at]), cnt[i], hr);
                                const double d = penalize_d(sanitize(b.h_orig[at]), cnt[i], hr);
                                const double scale = fabs((double)b.h_orig[at]) * std::max(hr.rp, 1.0f / hr.rp) +
                                                     cnt[i] * fabs((double)hr.fp) + fabs((double)hr.pp);
                                if (isfinite(d))
                                        pen_err = std::max(pen_err, fabs(fl[at] - d) / std::max(scale, 1e-30));
                                else if (!(fl[at] == d))
                                        pen_err = INFINITY;
                                pen_ids++;
                        }
                        uint32_t a, w, c;
                        memcpy(&a, &fl[at], 4);
                        memcpy(&w, &want, 4);
                        memcpy(&c, &rl[at], 4);
                        pen_bits += a != w;
                        fr_bits += a != c;
                        hl[at] = sanitize(want);
                }
        }
        snprintf(name, sizeof(name), "n=%d penalties: logits vs sampler.c float", n);
        add_check(name, pen_bits == 0, "%zu rows, %zu ids penalised, %zu of %zu logits differ", pen_rows, pen_ids,
                  pen_bits, (size_t)rows * n);
        snprintf(name, sizeof(name), "n=%d penalties: logits vs double", n);
        add_check(name, pen_err <= PEN_TOL, "max rel err %.2e (tol %.0e)", pen_err, PEN_TOL);
        snprintf(name, sizeof(name), "n=%d penalties: fast logits == ref logits", n);
        add_check(name, fr_bits == 0, "%zu logits differ", fr_bits);

        /* greedy rows (NaN temperature included): the host argmax, exactly */
        size_t greedy = 0, greedy_bad = 0;
        for (int r = 0; r < rows; r++) {
                const hrow hr = host_row(b.h_params[r], n);
                if (!hr.greedy)
                        continue;
                const int32_t want = host_argmax(&hl[(size_t)r * n], n);
                greedy++;
                greedy_bad += fid[r] != want || rid[r] != want;
        }
        snprintf(name, sizeof(name), "n=%d greedy == host argmax after penalties", n);
        add_check(name, greedy_bad == 0, "%zu rows, %zu wrong", greedy, greedy_bad);

        /* every row: fast vs ref, fast vs host double; mismatches only at near-ties */
        size_t fr_mis = 0, fr_unexpl = 0, fh_mis = 0, fh_unexpl = 0, near = 0;
        for (int r = 0; r < rows; r++) {
                const hrow hr = host_row(b.h_params[r], n);
                const cuda_sample_params &p = b.h_params[r];
                const hres h = host_sample(&hl[(size_t)r * n], n, hr, cuda_sample_uniform(p.seed, p.step));
                const bool tie = h.margin < NEAR_TIE;
                near += tie;
                if (fid[r] != rid[r]) {
                        fr_mis++;
                        fr_unexpl += !tie;
                }
                if (fid[r] != h.id) {
                        fh_mis++;
                        fh_unexpl += !tie;
                        printf("  n=%d row %d (%s, %s): fast %d ref %d host %d, margin %.2e%s\n", n, r,
                               cfgs[b.cfg[r]].name, pattern_name[b.pat[r]], fid[r], rid[r], h.id, h.margin,
                               tie ? " (near-tie)" : "");
                }
        }
        snprintf(name, sizeof(name), "n=%d fast == ref ids", n);
        add_check(name, fr_unexpl == 0 && rows - fr_mis >= MATCH_MIN * rows,
                  "%zu of %d rows differ, %zu not near-ties", fr_mis, rows, fr_unexpl);
        tot_rows += rows, tot_fr += fr_mis, tot_fh += fh_mis;
        snprintf(name, sizeof(name), "n=%d fast == host double (sampler.c) ids", n);
        add_check(name, fh_unexpl == 0,
                  "%zu of %d rows differ, %zu not near-ties (%zu rows within %.0e)", fh_mis, rows, fh_unexpl, near,
                  NEAR_TIE);
        free_batch(b);
}

/* Parameters no validation would pass: nothing may crash, ids stay in range, fast == ref. */
static void check_garbage(int n)
{
        const int rows = 32;
        batch b = make_batch(rows, n, {PAT_RAND, PAT_SPECIAL});
        const float garbage_f[] = {NaNf, INFINITY, -INFINITY, -1.0f, 0.0f, 1e30f, -0.0f, 1e-40f};
        for (int r = 0; r < rows; r++) {
                cuda_sample_params &p = b.h_params[r];
                const uint64_t x = rng_next();
                const int32_t ks[] = {INT32_MIN, -5, 0, 1, 3, n - 1, n, INT32_MAX};
                p.temperature = r % 3 == 0 ? garbage_f[x % 8] : r % 3 == 1 ? INFINITY : 1.0f;
                p.top_k = ks[(x >> 8) % 8];
                p.top_p = garbage_f[(x >> 12) % 8];
                p.min_p = garbage_f[(x >> 16) % 8];
                p.repeat_penalty = garbage_f[(x >> 20) % 8];
                p.presence_penalty = garbage_f[(x >> 24) % 8];
                p.frequency_penalty = garbage_f[(x >> 28) % 8];
                if (!p.hist_len) { /* point at the windows already there */
                        p.hist_off = 0;
                        p.hist_len = (uint32_t)std::min<size_t>(b.h_hist.size(), 100);
                }
        }
        CUDA_CHECK_ABORT(cudaMemcpy(b.params, b.h_params.data(), sizeof(cuda_sample_params) * rows,
                                    cudaMemcpyHostToDevice));
        std::vector<int32_t> fid, rid;
        std::vector<float> fl, rl;
        run(sample_fast, b, fid, fl);
        run(cuda_sample_ref, b, rid, rl);
        size_t bad, guard, bad2, guard2, mis = 0, lbits = 0;
        ids_sane(fid, rows, n, &bad, &guard);
        ids_sane(rid, rows, n, &bad2, &guard2);
        for (int r = 0; r < rows; r++)
                mis += fid[r] != rid[r];
        for (size_t i = 0; i < fl.size(); i++)
                lbits += memcmp(&fl[i], &rl[i], 4) != 0;
        char name[128];
        snprintf(name, sizeof(name), "n=%d invalid parameters: in range, fast == ref", n);
        add_check(name, bad + guard + bad2 + guard2 + mis + lbits == 0,
                  "out of range %zu/%zu, guard %zu/%zu, ids differ %zu, logits differ %zu", bad, bad2, guard, guard2,
                  mis, lbits);
        free_batch(b);
}

/* The same (seed, step) gives the same id wherever the row sits and whatever shares the launch. */
static void check_batch_independence(int n)
{
        const int rows = 64, shift = 17;
        batch b = make_batch(rows, n, {PAT_RAND, PAT_TIES, PAT_DOMINANT, PAT_SPECIAL});
        size_t mis[2] = {0, 0}, singles = 0;
        for (int v = 0; v < 2; v++) {
                sample_fn fn = v ? cuda_sample_ref : sample_fast;
                std::vector<int32_t> ids, ids2, one;
                std::vector<float> l;
                run(fn, b, ids, l);
                /* rotated: row i holds the original row (i + shift) % rows */
                batch rb = b;
                rb.orig = dev_alloc<float>((size_t)rows * n);
                std::vector<cuda_sample_params> rp(rows);
                for (int i = 0; i < rows; i++) {
                        const int src = (i + shift) % rows;
                        CUDA_CHECK_ABORT(cudaMemcpy(rb.orig + (size_t)i * n, b.orig + (size_t)src * n,
                                                    sizeof(float) * n, cudaMemcpyDeviceToDevice));
                        rp[i] = b.h_params[src];
                }
                rb.params = to_dev(rp);
                run(fn, rb, ids2, l);
                for (int i = 0; i < rows; i++)
                        mis[v] += ids2[i] != ids[(i + shift) % rows];
                /* alone, in a batch of one */
                for (int src : {2, 3, 5, 6, 21, 37, 40, 63}) {
                        batch ob = b;
                        ob.rows = 1;
                        ob.orig = b.orig + (size_t)src * n;
                        ob.params = b.params + src;
                        run(fn, ob, one, l);
                        mis[v] += one[0] != ids[src];
                        singles += v == 0;
                }
                CUDA_CHECK_ABORT(cudaFree(rb.orig));
                CUDA_CHECK_ABORT(cudaFree(rb.params));
        }
        char name[128];
        snprintf(name, sizeof(name), "n=%d same ids at other batch positions/sizes", n);
        add_check(name, mis[0] + mis[1] == 0, "64 rows rotated by %d and %zu alone: %zu fast, %zu ref differ", shift,
                  singles, mis[0], mis[1]);
        free_batch(b);
}

/* 20000 draws (steps 0..19999) from one 50-token row: the histogram against the host's kept
 * probabilities, chi-square with cells of expected count < 5 pooled; and fast == ref on all. */
static void check_distribution(const char *label, float t, int k, float p, float minp)
{
        const int n = 50, draws = 20000;
        std::vector<float> row(n);
        for (int i = 0; i < n; i++)
                row[i] = 2.5f * uniform(0xd15c0, i);
        batch b;
        b.rows = draws;
        b.n = n;
        b.h_orig.resize((size_t)draws * n);
        for (int r = 0; r < draws; r++)
                memcpy(&b.h_orig[(size_t)r * n], row.data(), sizeof(float) * n);
        cuda_sample_params pr;
        memset(&pr, 0, sizeof(pr));
        pr.temperature = t;
        pr.top_k = k;
        pr.top_p = p;
        pr.min_p = minp;
        pr.repeat_penalty = 1.0f;
        pr.seed = 0x5eed5eedull;
        for (int r = 0; r < draws; r++) {
                pr.step = (uint64_t)r;
                b.h_params.push_back(pr);
        }
        b.h_hist.push_back(0);
        b.orig = to_dev(b.h_orig);
        b.params = to_dev(b.h_params);
        b.hist = to_dev(b.h_hist);
        std::vector<int32_t> fid, rid;
        std::vector<float> l;
        run(sample_fast, b, fid, l);
        run(cuda_sample_ref, b, rid, l);

        const hkept h = host_kept(row.data(), n, host_row(pr, n));
        std::vector<double> prob(n, 0.0);
        for (size_t i = 0; i < h.c.size(); i++)
                prob[h.c[i].id] = h.w[i] / h.zt;
        std::vector<int> count(n, 0);
        size_t outside = 0, mis = 0;
        for (int r = 0; r < draws; r++) {
                if (fid[r] >= 0 && fid[r] < n)
                        count[fid[r]]++;
                outside += fid[r] < 0 || fid[r] >= n || prob[fid[r]] == 0.0;
                mis += fid[r] != rid[r];
        }
        double chi2 = 0.0, pool_e = 0.0, pool_o = 0.0;
        int cells = 0;
        for (int i = 0; i < n; i++) {
                const double e = prob[i] * draws;
                if (e == 0.0)
                        continue;
                if (e < 5.0) {
                        pool_e += e;
                        pool_o += count[i];
                        continue;
                }
                chi2 += (count[i] - e) * (count[i] - e) / e;
                cells++;
        }
        if (pool_e > 0.0) {
                chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
                cells++;
        }
        const int dof = std::max(cells - 1, 1);
        const double bound = dof + 6.0 * sqrt(2.0 * dof);
        char name[128];
        snprintf(name, sizeof(name), "distribution %s (50 tokens, %d draws)", label, draws);
        add_check(name, chi2 <= bound && outside == 0 && mis == 0,
                  "chi2 %.1f (dof %d, bound %.1f), %zu kept, %zu outside kept, fast != ref %zu", chi2, dof, bound,
                  h.c.size(), outside, mis);
        free_batch(b);
}

static void check_api(void)
{
        float *l = dev_alloc<float>(8);
        int32_t *out = dev_alloc<int32_t>(1), *hist = dev_alloc<int32_t>(1);
        cuda_sample_params *p = dev_alloc<cuda_sample_params>(1);
        void *s;
        CUDA_CHECK_ABORT(cudaMalloc(&s, 64));
        int bad = 0;
        for (int v = 0; v < 2; v++) {
                sample_fn fn = v ? cuda_sample_ref : sample_fast;
                bad += fn(NULL, 1, 8, p, hist, out, s, 0) != -EINVAL;
                bad += fn(l, 1, 8, NULL, hist, out, s, 0) != -EINVAL;
                bad += fn(l, 1, 8, p, NULL, out, s, 0) != -EINVAL;
                bad += fn(l, 1, 8, p, hist, NULL, s, 0) != -EINVAL;
                bad += fn(l, 1, 8, p, hist, out, NULL, 0) != -EINVAL;
                bad += fn(l, -1, 8, p, hist, out, s, 0) != -EINVAL;
                bad += fn(l, 1, 0, p, hist, out, s, 0) != -EINVAL;
                bad += fn(l, 1, -3, p, hist, out, s, 0) != -EINVAL;
                bad += fn(l, 0, 8, p, hist, out, s, 0) != 0;
        }
        bad += cuda_sample_scratch_bytes(0, 8) < 1 || cuda_sample_scratch_bytes(3, 8) < 3 * 8 * 8;
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        add_check("api: -EINVAL on bad arguments, 0 rows is a no-op", bad == 0, "%d wrong returns", bad);
        CUDA_CHECK_ABORT(cudaFree(l));
        CUDA_CHECK_ABORT(cudaFree(out));
        CUDA_CHECK_ABORT(cudaFree(hist));
        CUDA_CHECK_ABORT(cudaFree(p));
        CUDA_CHECK_ABORT(cudaFree(s));
}

/* ---- timing ---- */

/* Median of one call over graph replays (20 calls each) on the same logits: no penalties, so
 * the logits stay as they are; rows ≤ 64 stay in L2, as after the LM head's GEMV. */
static void bench_sample(const char *config, float t, int k, float p, int pat, int rows, int n)
{
        std::vector<int> pats(rows, pat);
        int *dpat = to_dev(pats);
        float *l = dev_alloc<float>((size_t)rows * n);
        fill_logits<<<1024, 256>>>(l, rows, n, dpat, rng_next());
        CUDA_CHECK_ABORT(cudaGetLastError());
        std::vector<cuda_sample_params> hp(rows);
        for (int r = 0; r < rows; r++) {
                memset(&hp[r], 0, sizeof(hp[r]));
                hp[r].temperature = t;
                hp[r].top_k = k;
                hp[r].top_p = p;
                hp[r].repeat_penalty = 1.0f;
                hp[r].seed = rng_next();
                hp[r].step = r;
        }
        cuda_sample_params *dp = to_dev(hp);
        int32_t *out = dev_alloc<int32_t>(rows), *hist = dev_alloc<int32_t>(1);
        void *scratch;
        CUDA_CHECK_ABORT(cudaMalloc(&scratch, cuda_sample_scratch_bytes(rows, n)));
        cudaStream_t st;
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CUDA_CHECK_ABORT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        CUDA_CHECK_ABORT(cudaDeviceSynchronize());
        const int per_graph = 20, reps = 31;
        CUDA_CHECK_ABORT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < per_graph; i++)
                CUDA_OK_OR_ABORT(cuda_sample(l, rows, n, dp, hist, out, scratch, st));
        CUDA_CHECK_ABORT(cudaStreamEndCapture(st, &g));
        CUDA_CHECK_ABORT(cudaGraphInstantiate(&ge, g, 0));
        const double median_ms = graph_median_ms(ge, st, 3, reps);
        bench bch{config, pattern_name[pat], rows, n, reps, median_ms * 1e3 / per_graph};
        printf("bench sample %-22s %-6s rows %3d vocab %d  %9.2f us\n", config, pattern_name[pat], rows, n, bch.us);
        benches.push_back(bch);
        CUDA_CHECK_ABORT(cudaGraphExecDestroy(ge));
        CUDA_CHECK_ABORT(cudaGraphDestroy(g));
        CUDA_CHECK_ABORT(cudaStreamDestroy(st));
        CUDA_CHECK_ABORT(cudaFree(dpat));
        CUDA_CHECK_ABORT(cudaFree(l));
        CUDA_CHECK_ABORT(cudaFree(dp));
        CUDA_CHECK_ABORT(cudaFree(out));
        CUDA_CHECK_ABORT(cudaFree(hist));
        CUDA_CHECK_ABORT(cudaFree(scratch));
}

/* ---- main ---- */

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

        check_api();
        for (int n : {1000, 32000, 128256, 262144})
                check_vocab(n);
        add_check("all vocabularies: rows agreeing", tot_rows - tot_fr >= MATCH_MIN * tot_rows &&
                                                          tot_rows - tot_fh >= MATCH_MIN * tot_rows,
                  "fast == ref %zu/%zu, fast == host double %zu/%zu (need %.0f%%)", tot_rows - tot_fr, tot_rows,
                  tot_rows - tot_fh, tot_rows, 100 * MATCH_MIN);
        for (int n : {7, 1000, 32001})
                check_garbage(n);
        check_batch_independence(32000);
        check_distribution("t1", 1.0f, 0, 1.0f, 0.0f);
        check_distribution("t0.7 k10", 0.7f, 10, 1.0f, 0.0f);
        check_distribution("t1.3 p0.8 minp0.02", 1.3f, 0, 0.8f, 0.02f);

        if (!check_only) {
                const int n = 128256;
                for (int pat : {PAT_RAND, PAT_PEAKED})
                        for (int rows : {1, 64, 256}) {
                                bench_sample("greedy", 0.0f, 0, 1.0f, pat, rows, n);
                                bench_sample("t0.7 k40 p0.9", 0.7f, 40, 0.9f, pat, rows, n);
                                bench_sample("t0.8 p0.95", 0.8f, 0, 0.95f, pat, rows, n);
                                bench_sample("t1", 1.0f, 0, 1.0f, pat, rows, n);
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
                fprintf(f, "{\n  \"device\": \"%s\", \"sm\": \"%d%d\", \"sms\": %d, \"driver\": %d, \"runtime\": %d,\n",
                        prop.name, prop.major, prop.minor, prop.multiProcessorCount, drv, rt);
                fprintf(f, "  \"checks_total\": %zu, \"checks_failed\": %zu,\n  \"checks\": [\n", checks.size(), failed);
                for (size_t i = 0; i < checks.size(); i++)
                        fprintf(f, "    {\"name\": \"%s\", \"pass\": %s, \"detail\": \"%s\"}%s\n", checks[i].name.c_str(),
                                checks[i].pass ? "true" : "false", checks[i].detail.c_str(),
                                i + 1 < checks.size() ? "," : "");
                fprintf(f, "  ],\n  \"sample\": [\n");
                for (size_t i = 0; i < benches.size(); i++) {
                        const bench &b = benches[i];
                        fprintf(f, "    {\"config\": \"%s\", \"logits\": \"%s\", \"rows\": %d, \"vocab\": %d, \"reps\": %d,"
                                   " \"us\": %.3f}%s\n",
                                b.config.c_str(), b.pattern.c_str(), b.rows, b.vocab, b.reps, b.us,
                                i + 1 < benches.size() ? "," : "");
                }
                fprintf(f, "  ]\n}\n");
                fclose(f);
        }

        /* the table, last */
        printf("\n%s (%d SMs): cuda_sample, one block of 1024 threads per row\n", prop.name, prop.multiProcessorCount);
        if (!benches.empty()) {
                printf("%-16s %-7s %5s %7s %10s\n", "config", "logits", "rows", "vocab", "us/call");
                for (const bench &b : benches)
                        printf("%-16s %-7s %5d %7d %10.2f\n", b.config.c_str(), b.pattern.c_str(), b.rows, b.vocab, b.us);
        }
        for (const check &c : checks)
                if (!c.pass)
                        printf("FAILED %s: %s\n", c.name.c_str(), c.detail.c_str());
        printf("checks: %zu, failed %zu (ids: fast == ref == host double except near-ties < %.0e; penalties bit-exact)\n",
               checks.size(), failed, NEAR_TIE);
        return failed ? 1 : 0;
}
