/* sampler.c — picks the next token from a row of logits: penalties over the recent
 * history, then top-k, top-p, min-p, temperature and a draw from the sampler's own
 * seeded PRNG (xoshiro256**), in llama.cpp's default order. Everything it needs is
 * allocated at create, so sampling a token allocates nothing. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "engine.h"

struct cand {
        float logit;
        int32_t id;
};

struct engine_sampler {
        struct engine_sampling p;
        uint32_t n_vocab;
        struct cand *cand;      /* [n_vocab] working set */
        uint32_t *count;        /* [n_vocab] occurrences inside the penalty window */
        int32_t *ring;          /* [penalty_last_n] the window, oldest first at ring_head */
        uint32_t ring_len;
        uint32_t ring_head;
        uint64_t rng[4];
};

/* ---- PRNG: xoshiro256** seeded through splitmix64 (so seed 0 is fine) ---- */

static uint64_t splitmix64(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
        return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
        const uint64_t result = rotl(s[1] * 5, 7) * 9;
        const uint64_t t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = rotl(s[3], 45);
        return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4])
{
        return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53;
}

/* ---- parameters ---- */

void engine_sampling_defaults(struct engine_sampling *s)
{
        /* llama.cpp's common defaults, so sluice-run behaves like llama-cli out of the box */
        *s = (struct engine_sampling){
                .temperature = 0.8f,
                .top_k = 40,
                .top_p = 0.95f,
                .min_p = 0.05f,
                .repeat_penalty = 1.0f,
                .presence_penalty = 0.0f,
                .frequency_penalty = 0.0f,
                .penalty_last_n = 64,
                .seed = 0,
        };
}

int engine_sampling_validate(const struct engine_sampling *s, struct sl_error *err)
{
        if (!s)
                return sl_errorf(err, -EINVAL, "no sampling parameters");
        if (isnan(s->temperature) || s->temperature < 0.0f || isinf(s->temperature))
                return sl_errorf(err, -EINVAL, "temperature must be a finite number >= 0 (0: greedy), got %g",
                                 (double)s->temperature);
        if (s->top_k < 0)
                return sl_errorf(err, -EINVAL, "top_k must be >= 0 (0: off), got %d", s->top_k);
        if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
                return sl_errorf(err, -EINVAL, "top_p must be in (0, 1] (1: off), got %g", (double)s->top_p);
        if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
                return sl_errorf(err, -EINVAL, "min_p must be in [0, 1] (0: off), got %g", (double)s->min_p);
        /* 0 would divide positive logits by zero */
        if (!(s->repeat_penalty > 0.0f) || isinf(s->repeat_penalty))
                return sl_errorf(err, -EINVAL, "repeat_penalty must be a finite number > 0 (1: off), got %g",
                                 (double)s->repeat_penalty);
        if (!(s->presence_penalty >= 0.0f) || isinf(s->presence_penalty))
                return sl_errorf(err, -EINVAL, "presence_penalty must be a finite number >= 0, got %g",
                                 (double)s->presence_penalty);
        if (!(s->frequency_penalty >= 0.0f) || isinf(s->frequency_penalty))
                return sl_errorf(err, -EINVAL, "frequency_penalty must be a finite number >= 0, got %g",
                                 (double)s->frequency_penalty);
        if (s->penalty_last_n < -1)
                return sl_errorf(err, -EINVAL, "penalty_last_n must be >= -1 (-1: all, 0: off), got %d",
                                 s->penalty_last_n);
        return 0;
}

/* ---- lifecycle ---- */

int engine_sampler_create(const struct engine_sampling *p, uint32_t n_vocab,
                          struct engine_sampler **out, struct sl_error *err)
{
        struct engine_sampler *s = NULL;
        int r;

        *out = NULL;
        r = engine_sampling_validate(p, err);
        if (r < 0)
                return r;
        if (n_vocab == 0 || n_vocab > INT32_MAX)
                return sl_errorf(err, -EINVAL, "sampler: bad vocabulary size %u", n_vocab);

        s = calloc(1, sizeof(*s));
        if (!s)
                goto nomem;
        s->p = *p;
        s->n_vocab = n_vocab;
        s->cand = malloc((size_t)n_vocab * sizeof(*s->cand));
        s->count = calloc(n_vocab, sizeof(*s->count));
        if (!s->cand || !s->count)
                goto nomem;
        if (p->penalty_last_n > 0) {
                s->ring = malloc((size_t)p->penalty_last_n * sizeof(*s->ring));
                if (!s->ring)
                        goto nomem;
        }
        engine_sampler_reset(s);
        *out = s;
        return 0;
nomem:
        engine_sampler_free(s);
        return sl_errorf(err, -ENOMEM, "sampler: out of memory for %u candidates", n_vocab);
}

void engine_sampler_free(struct engine_sampler *s)
{
        if (!s)
                return;
        free(s->cand);
        free(s->count);
        free(s->ring);
        free(s);
}

void engine_sampler_reset(struct engine_sampler *s)
{
        if (!s)
                return;
        uint64_t x = s->p.seed;
        for (int i = 0; i < 4; i++)
                s->rng[i] = splitmix64(&x);
        memset(s->count, 0, (size_t)s->n_vocab * sizeof(*s->count));
        s->ring_len = 0;
        s->ring_head = 0;
}

void engine_sampler_accept(struct engine_sampler *s, int32_t id)
{
        if (!s || id < 0 || (uint32_t)id >= s->n_vocab || s->p.penalty_last_n == 0)
                return;
        if (s->p.penalty_last_n < 0) { /* every token seen counts; no window to slide */
                if (s->count[id] < UINT32_MAX)
                        s->count[id]++;
                return;
        }
        const uint32_t cap = (uint32_t)s->p.penalty_last_n;
        if (s->ring_len == cap) { /* evict the oldest */
                int32_t old = s->ring[s->ring_head];
                s->count[old]--;
                s->ring[s->ring_head] = id;
                s->ring_head = (s->ring_head + 1) % cap;
        } else {
                s->ring[(s->ring_head + s->ring_len) % cap] = id;
                s->ring_len++;
        }
        s->count[id]++;
}

/* ---- sampling ---- */

static int cand_desc(const void *a, const void *b)
{
        const struct cand *x = a, *y = b;
        if (x->logit != y->logit)
                return x->logit > y->logit ? -1 : 1;
        return x->id < y->id ? -1 : x->id > y->id; /* lowest id first among equals */
}

static inline bool cand_before(const struct cand *x, const struct cand *y)
{
        return x->logit > y->logit || (x->logit == y->logit && x->id < y->id);
}

/* Moves the k best candidates (in cand_desc order) to the front, unsorted: quickselect. */
static void select_top_k(struct cand *c, uint32_t n, uint32_t k)
{
        uint32_t lo = 0, hi = n; /* the k-th lies in [lo, hi) */
        while (hi - lo > 1) {
                /* median of three for a pivot; ties broken by id so the order is total */
                struct cand a = c[lo], b = c[lo + (hi - lo) / 2], d = c[hi - 1], piv;
                if (cand_before(&a, &b))
                        piv = cand_before(&b, &d) ? b : (cand_before(&a, &d) ? d : a);
                else
                        piv = cand_before(&a, &d) ? a : (cand_before(&b, &d) ? d : b);
                /* three-way partition: [lo,lt) before pivot, [lt,gt) equal, [gt,hi) after */
                uint32_t lt = lo, i = lo, gt = hi;
                while (i < gt) {
                        if (cand_before(&c[i], &piv)) {
                                struct cand t = c[i]; c[i] = c[lt]; c[lt] = t;
                                lt++, i++;
                        } else if (cand_before(&piv, &c[i])) {
                                gt--;
                                struct cand t = c[i]; c[i] = c[gt]; c[gt] = t;
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

static int32_t argmax(const struct cand *c, uint32_t n)
{
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (cand_before(&c[i], &c[best]))
                        best = i;
        return c[best].id;
}

int32_t engine_sampler_sample(struct engine_sampler *s, const float *logits)
{
        const struct engine_sampling *p = &s->p;
        struct cand *c = s->cand;
        uint32_t n = s->n_vocab;

        /* penalties (llama.cpp's formula); NaN logits never win */
        const bool penalize = p->penalty_last_n != 0 &&
                              (p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f ||
                               p->frequency_penalty != 0.0f);
        for (uint32_t i = 0; i < n; i++) {
                float l = logits[i];
                if (isnan(l))
                        l = -INFINITY;
                if (penalize && s->count[i]) {
                        l = l <= 0.0f ? l * p->repeat_penalty : l / p->repeat_penalty;
                        l -= (float)s->count[i] * p->frequency_penalty + p->presence_penalty;
                }
                c[i].logit = l;
                c[i].id = (int32_t)i;
        }

        if (p->temperature <= 0.0f)
                return argmax(c, n);

        /* top-k */
        if (p->top_k > 0 && (uint32_t)p->top_k < n) {
                select_top_k(c, n, (uint32_t)p->top_k);
                n = (uint32_t)p->top_k;
        }

        /* Probabilities for top-p and min-p come from the untempered logits of the
         * candidates left by top-k, as in llama.cpp. */
        float maxl = -INFINITY;
        for (uint32_t i = 0; i < n; i++)
                maxl = c[i].logit > maxl ? c[i].logit : maxl;
        if (maxl == -INFINITY) /* nothing finite: fall back to the lowest id */
                return argmax(c, n);

        double z = 0.0;
        for (uint32_t i = 0; i < n; i++)
                z += exp((double)c[i].logit - (double)maxl);

        /* min-p keeps p_i >= min_p * p_max, i.e. logit >= maxl + log(min_p). Both min-p and
         * top-p keep a prefix of the sorted candidates, so min-p can go first and shrink the
         * sort, as long as top-p still measures mass against the full normaliser z. */
        if (p->min_p > 0.0f) {
                const float cut = maxl + logf(p->min_p);
                uint32_t m = 0;
                for (uint32_t i = 0; i < n; i++)
                        if (c[i].logit >= cut)
                                c[m++] = c[i];
                n = m; /* >= 1: the max itself survives */
        }

        if (p->top_p < 1.0f) {
                qsort(c, n, sizeof(*c), cand_desc);
                double cum = 0.0;
                uint32_t keep = n;
                for (uint32_t i = 0; i < n; i++) {
                        cum += exp((double)c[i].logit - (double)maxl) / z;
                        if (cum >= (double)p->top_p) {
                                keep = i + 1;
                                break;
                        }
                }
                n = keep;
        }

        /* temperature, softmax over what is left, one draw */
        const double inv_t = 1.0 / (double)p->temperature;
        double zt = 0.0;
        for (uint32_t i = 0; i < n; i++)
                zt += exp(((double)c[i].logit - (double)maxl) * inv_t);
        if (!(zt > 0.0) || isinf(zt)) /* cannot happen for finite maxl, but never index past n */
                return argmax(c, n);
        double u = rng_uniform(s->rng) * zt;
        double cum = 0.0;
        for (uint32_t i = 0; i < n; i++) {
                cum += exp(((double)c[i].logit - (double)maxl) * inv_t);
                if (u < cum)
                        return c[i].id;
        }
        /* rounding left u at the very top: the last candidate with any mass */
        for (uint32_t i = n; i-- > 0;)
                if (c[i].logit > -INFINITY)
                        return c[i].id;
        return c[0].id;
}
