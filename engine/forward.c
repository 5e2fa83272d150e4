/* forward.c — the CPU forward pass over a batch of tokens from any mix of sequences and
 * positions (llama, qwen2, gemma3). One threadpool run per call; phases are separated by
 * barriers and split work either by token or by weight rows, never by reduction, so each
 * token's numbers do not depend on the batch it came in or on the thread count. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "attn.h"
#include "model.h"
#include "quant.h"
#include "threadpool.h"

#define N_ACT_SLOTS 3

/* Activations converted to the vec_dot types of the matrices that read them: one slot per
 * distinct type, so e.g. Q, K and V share one quantized copy when their types agree. */
struct act_plan {
        uint32_t n_slots;
        uint32_t type[N_ACT_SLOTS];
        size_t row[N_ACT_SLOTS];
};

struct thread_scratch {
        float *rope;  /* [rope_dim] cos, sin pairs */
        float *q16;   /* [head_dim_k] q rounded through f16 */
        float *pv;    /* [ATTN_PV_ROWS][head_dim_v] partial sums of P·V */
        float *scores;/* [max_ctx] one head's scores, then probabilities */
};

struct engine_ctx {
        const struct engine_model *m;
        struct threadpool *tp;
        uint32_t n_threads;
        uint32_t max_tokens;
        uint32_t max_ctx;              /* positions the attention scratch holds */
        bool f16c;

        /* activations, max_tokens rows each */
        float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up;
        uint8_t *act[N_ACT_SLOTS];
        size_t act_row_cap;            /* bytes per row per slot */
        struct thread_scratch *ts;
        void *ts_mem;

        /* the call in flight */
        struct engine_kv *kv;
        const struct engine_batch *b;
        float *out;
        uint32_t n_out;
        int32_t *out_tok;              /* [max_tokens] batch index of each logit row */
};

/* ---- small kernels ---- */

/* ggml_rms_norm: the sum of squares in double, scale in float; then the weight multiply. */
static void rms_norm(const float *x, const float *w, float *y, uint32_t n, float eps)
{
        double sum = 0.0;
        for (uint32_t i = 0; i < n; i++)
                sum += (double)(x[i] * x[i]);
        const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
        for (uint32_t i = 0; i < n; i++)
                y[i] = x[i] * scale * w[i];
}

#if defined(__x86_64__)
/* ggml's geglu with its f16 GELU table: y = table[f16(x)] * u, saturating past ±10. The
 * F16C conversions round to nearest even like sl_fp32_to_fp16, so both paths agree. */
__attribute__((target("avx2,fma,f16c"))) static void geglu_avx2(float *g, const float *u, uint32_t n,
                                                                const uint16_t *table)
{
        const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
        uint32_t i = 0;
        for (; i + 8 <= n; i += 8) {
                const __m256 x = _mm256_loadu_ps(g + i);
                uint16_t h[8], a[8];
                _mm_storeu_si128((__m128i *)h, _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
                for (int j = 0; j < 8; j++)
                        a[j] = table[h[j]];
                __m256 y = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)a));
                y = _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
                y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
                _mm256_storeu_ps(g + i, _mm256_mul_ps(y, _mm256_loadu_ps(u + i)));
        }
        for (; i < n; i++) {
                const float xg = g[i];
                const float a = xg <= -10.0f ? 0.0f : xg >= 10.0f ? xg : sl_fp16_to_fp32(table[sl_fp32_to_fp16(xg)]);
                g[i] = a * u[i];
        }
}
#endif

static void geglu_ref(float *g, const float *u, uint32_t n, const uint16_t *table)
{
        for (uint32_t i = 0; i < n; i++) {
                const float xg = g[i];
                const float a = xg <= -10.0f ? 0.0f : xg >= 10.0f ? xg : sl_fp16_to_fp32(table[sl_fp32_to_fp16(xg)]);
                g[i] = a * u[i];
        }
}



/* ggml's rope cache: theta advances by repeated float multiplication, freq factors divide
 * it, the linear scale multiplies it (no YaRN: ext_factor 0, attn_factor 1). */
static void rope_cache(float *cache, uint32_t n_dims, int32_t pos, float base, float scale, const float *ff)
{
        const float theta_scale = powf(base, -2.0f / (float)n_dims);
        float theta = (float)pos;
        for (uint32_t i0 = 0; i0 < n_dims; i0 += 2) {
                const float f = ff ? ff[i0 / 2] : 1.0f;
                const float t = scale * (theta / f);
                cache[i0] = cosf(t);
                cache[i0 + 1] = sinf(t);
                theta *= theta_scale;
        }
}

/* The rotation is fused as GCC fuses ggml's `x0*c - x1*s` and `x0*s + x1*c` when
 * llama.cpp is built for a CPU with FMA (-march=native, -ffp-contract=fast): the first
 * product exact inside an FMA, the second rounded. */
static void rope_apply(float *x, const float *cache, uint32_t n_dims, enum engine_rope_type type)
{
        const uint32_t stride = type == ENGINE_ROPE_NORM ? 1 : n_dims / 2;
        for (uint32_t i0 = 0; i0 < n_dims; i0 += 2) {
                const uint32_t i = type == ENGINE_ROPE_NORM ? i0 : i0 / 2;
                const float c = cache[i0], s = cache[i0 + 1];
                const float x0 = x[i], x1 = x[i + stride];
                x[i] = fmaf(x0, c, -(x1 * s));
                x[i + stride] = fmaf(x0, s, x1 * c);
        }
}

/* ---- activation conversion ---- */

static void plan_acts(struct act_plan *p, const struct engine_tensor *const *ws, uint32_t nw, int64_t n)
{
        p->n_slots = 0;
        for (uint32_t i = 0; i < nw; i++) {
                const uint32_t t = quant_type_get(ws[i]->type)->vec_dot_type;
                uint32_t j = 0;
                while (j < p->n_slots && p->type[j] != t)
                        j++;
                if (j == p->n_slots) {
                        p->type[j] = t;
                        p->row[j] = quant_row_size(t, n);
                        p->n_slots++;
                }
        }
}

static uint32_t plan_slot(const struct act_plan *p, const struct engine_tensor *w)
{
        const uint32_t t = quant_type_get(w->type)->vec_dot_type;
        for (uint32_t j = 0; j < p->n_slots; j++)
                if (p->type[j] == t)
                        return j;
        return 0; /* unreachable: every planned weight has a slot */
}

static void quantize_rows(struct engine_ctx *c, const struct act_plan *p, const float *src, size_t ld,
                          int64_t n, uint32_t t0, uint32_t t1)
{
        for (uint32_t j = 0; j < p->n_slots; j++)
                for (uint32_t t = t0; t < t1; t++)
                        quant_quantize_row(p->type[j], src + (size_t)t * ld, c->act[j] + (size_t)t * p->row[j], n);
}

/* Y[t][r] = W row r · act row t for this thread's share of W's rows. */
static void gemm_rows(struct engine_ctx *c, const struct engine_tensor *w, const struct act_plan *p, uint32_t n_tok,
                      float *y, int64_t ldy, uint32_t ith, uint32_t nth)
{
        const int64_t R = (int64_t)w->ne[1];
        const int64_t r0 = R * ith / nth, r1 = R * (ith + 1) / nth;
        if (r0 >= r1 || n_tok == 0)
                return;
        const uint32_t s = plan_slot(p, w);
        quant_gemm(w->type, (int64_t)w->ne[0], w->data, w->row_size, r0, r1, c->act[s], p->row[s], n_tok, y, ldy);
}

/* ---- the pass ---- */

static void token_range(uint32_t n, uint32_t ith, uint32_t nth, uint32_t *t0, uint32_t *t1)
{
        *t0 = (uint32_t)((uint64_t)n * ith / nth);
        *t1 = (uint32_t)((uint64_t)n * (ith + 1) / nth);
}

static void attention(struct engine_ctx *c, uint32_t il, uint32_t ith, uint32_t nth)
{
        const struct engine_model *m = c->m;
        const struct engine_hparams *hp = &m->hp;
        const struct engine_layer *L = &m->layers[il];
        const struct engine_batch *b = c->b;
        const uint32_t dk = hp->head_dim_k, dv = hp->head_dim_v;
        const uint32_t QD = hp->n_head * dk, OD = hp->n_head * dv;
        const uint32_t group = hp->n_head / hp->n_head_kv;
        struct thread_scratch *ts = &c->ts[ith];
        const uint32_t n_items = b->n_tokens * hp->n_head;

        /* Strided, not contiguous: later tokens of a prefill see longer contexts, and a
         * contiguous split would leave the last thread with most of the work. */
        for (uint32_t item = ith; item < n_items; item += nth) {
                const uint32_t t = item / hp->n_head, h = item % hp->n_head;
                const uint32_t hk = h / group;
                const int seq = b->seq[t];
                const uint32_t pos = (uint32_t)b->pos[t];
                const float *q = c->q + (size_t)t * QD + (size_t)h * dk;
                /* llama.cpp multiplies K (f16) by Q converted to f16. */
                for (uint32_t i = 0; i < dk; i++)
                        ts->q16[i] = sl_fp16_to_fp32(sl_fp32_to_fp16(q[i]));
                uint32_t p0 = 0;
                if (L->swa && pos + 1 > hp->sliding_window)
                        p0 = pos + 1 - hp->sliding_window;
                /* Rounded exactly as ggml's single-token path (see attn.c): scores, then
                 * exp and its sum per block of 16 positions (in double across blocks), the
                 * probabilities rounded to f16, then V weighted by them. */
                const uint32_t n = pos - p0 + 1;
                float *sc = ts->scores;
                float M = -INFINITY;
                for (uint32_t i = 0; i < n; i++) {
                        const uint16_t *kr = engine_kv_k_row(c->kv, il, seq, p0 + i) + (size_t)hk * dk;
                        sc[i] = attn_dot_f16(c->f16c, kr, ts->q16, dk) * m->kq_scale;
                        M = sc[i] > M ? sc[i] : M;
                }
                double S = 0.0;
                for (uint32_t blk = p0 / 16; blk <= pos / 16; blk++) {
                        float e16[16] = { 0 };
                        const uint32_t lo = SL_MAX(p0, blk * 16), hi = SL_MIN(pos, blk * 16 + 15);
                        for (uint32_t p = lo; p <= hi; p++)
                                e16[p % 16] = sc[p - p0] = attn_expf(sc[p - p0] - M);
                        S += (double)attn_sum16(e16);
                }
                const float inv = (float)(1.0 / S);
                const uint32_t n_rows = SL_MIN(pos + 1, ATTN_PV_ROWS);
                memset(ts->pv, 0, (size_t)n_rows * dv * sizeof(float));
                for (uint32_t i = 0; i < n; i++) {
                        const float pw = sl_fp16_to_fp32(sl_fp32_to_fp16(sc[i] * inv));
                        if (pw == 0.0f)
                                continue;
                        const uint16_t *vr = engine_kv_v_row(c->kv, il, seq, p0 + i) + (size_t)hk * dv;
                        attn_pv_accumulate(c->f16c, ts->pv, p0 + i, vr, pw, dv);
                }
                attn_pv_fold(c->f16c, ts->pv, n_rows, c->att + (size_t)t * OD + (size_t)h * dv, dv);
        }
}

/* Bias, q/k norm, rope, q pre-scale, and the K/V rows written into the cache. */
static void qkv_post(struct engine_ctx *c, uint32_t il, uint32_t t0, uint32_t t1, struct thread_scratch *ts)
{
        const struct engine_model *m = c->m;
        const struct engine_hparams *hp = &m->hp;
        const struct engine_layer *L = &m->layers[il];
        const struct engine_batch *b = c->b;
        const uint32_t dk = hp->head_dim_k, dv = hp->head_dim_v;
        const uint32_t QD = hp->n_head * dk, KD = hp->n_head_kv * dk, VD = hp->n_head_kv * dv;
        const float *ff = m->rope_freqs.f32;

        for (uint32_t t = t0; t < t1; t++) {
                float *q = c->q + (size_t)t * QD, *k = c->k + (size_t)t * KD, *v = c->v + (size_t)t * VD;
                if (L->bq.f32) {
                        for (uint32_t i = 0; i < QD; i++)
                                q[i] += L->bq.f32[i];
                        for (uint32_t i = 0; i < KD; i++)
                                k[i] += L->bk.f32[i];
                        for (uint32_t i = 0; i < VD; i++)
                                v[i] += L->bv.f32[i];
                }
                if (L->q_norm.f32) {
                        for (uint32_t h = 0; h < hp->n_head; h++)
                                rms_norm(q + h * dk, L->q_norm.f32, q + h * dk, dk, hp->norm_eps);
                        for (uint32_t h = 0; h < hp->n_head_kv; h++)
                                rms_norm(k + h * dk, L->k_norm.f32, k + h * dk, dk, hp->norm_eps);
                }
                rope_cache(ts->rope, hp->rope_dim, b->pos[t], L->rope_base, L->rope_scale, ff);
                for (uint32_t h = 0; h < hp->n_head; h++)
                        rope_apply(q + h * dk, ts->rope, hp->rope_dim, hp->rope_type);
                for (uint32_t h = 0; h < hp->n_head_kv; h++)
                        rope_apply(k + h * dk, ts->rope, hp->rope_dim, hp->rope_type);
                if (m->q_prescale != 1.0f)
                        for (uint32_t i = 0; i < QD; i++)
                                q[i] *= m->q_prescale;
                uint16_t *kc = engine_kv_k_row(c->kv, il, b->seq[t], (uint32_t)b->pos[t]);
                uint16_t *vc = engine_kv_v_row(c->kv, il, b->seq[t], (uint32_t)b->pos[t]);
                for (uint32_t i = 0; i < KD; i++)
                        kc[i] = sl_fp32_to_fp16(k[i]);
                for (uint32_t i = 0; i < VD; i++)
                        vc[i] = sl_fp32_to_fp16(v[i]);
        }
}

static void forward_worker(void *arg, uint32_t ith, uint32_t nth)
{
        struct engine_ctx *c = arg;
        const struct engine_model *m = c->m;
        const struct engine_hparams *hp = &m->hp;
        const struct engine_batch *b = c->b;
        const uint32_t n = b->n_tokens;
        const uint32_t E = hp->n_embd, F = hp->n_ff;
        const uint32_t QD = hp->n_head * hp->head_dim_k, KD = hp->n_head_kv * hp->head_dim_k;
        const uint32_t VD = hp->n_head_kv * hp->head_dim_v, OD = hp->n_head * hp->head_dim_v;
        const bool gemma = hp->arch == ENGINE_ARCH_GEMMA3;
        struct thread_scratch *ts = &c->ts[ith];
        uint32_t t0, t1;
        struct act_plan p;

        token_range(n, ith, nth, &t0, &t1);

        /* embeddings */
        for (uint32_t t = t0; t < t1; t++) {
                float *x = c->x + (size_t)t * E;
                quant_dequantize_row(m->tok_embd.type,
                                     (const uint8_t *)m->tok_embd.data + (size_t)b->token[t] * m->tok_embd.row_size,
                                     x, E);
                if (hp->embd_scale != 1.0f)
                        for (uint32_t i = 0; i < E; i++)
                                x[i] *= hp->embd_scale;
        }

        for (uint32_t il = 0; il < hp->n_layer; il++) {
                const struct engine_layer *L = &m->layers[il];

                /* attention norm, one conversion of each token's row for Q, K and V */
                const struct engine_tensor *qkv[3] = { &L->wq, &L->wk, &L->wv };
                plan_acts(&p, qkv, 3, E);
                for (uint32_t t = t0; t < t1; t++)
                        rms_norm(c->x + (size_t)t * E, L->attn_norm.f32, c->xn + (size_t)t * E, E, hp->norm_eps);
                quantize_rows(c, &p, c->xn, E, E, t0, t1);
                threadpool_barrier(c->tp);

                gemm_rows(c, &L->wq, &p, n, c->q, QD, ith, nth);
                gemm_rows(c, &L->wk, &p, n, c->k, KD, ith, nth);
                gemm_rows(c, &L->wv, &p, n, c->v, VD, ith, nth);
                threadpool_barrier(c->tp);

                qkv_post(c, il, t0, t1, ts);
                threadpool_barrier(c->tp);

                attention(c, il, ith, nth);
                threadpool_barrier(c->tp);

                const struct engine_tensor *wo[1] = { &L->wo };
                plan_acts(&p, wo, 1, OD);
                quantize_rows(c, &p, c->att, OD, OD, t0, t1);
                threadpool_barrier(c->tp);

                gemm_rows(c, &L->wo, &p, n, c->tmp, E, ith, nth);
                threadpool_barrier(c->tp);

                /* residual, FFN norm, one conversion for gate and up */
                const struct engine_tensor *gu[2] = { &L->gate, &L->up };
                plan_acts(&p, gu, 2, E);
                for (uint32_t t = t0; t < t1; t++) {
                        float *x = c->x + (size_t)t * E, *y = c->tmp + (size_t)t * E;
                        if (gemma)
                                rms_norm(y, L->post_attn_norm.f32, y, E, hp->norm_eps);
                        for (uint32_t i = 0; i < E; i++)
                                x[i] += y[i];
                        rms_norm(x, L->ffn_norm.f32, c->xn + (size_t)t * E, E, hp->norm_eps);
                }
                quantize_rows(c, &p, c->xn, E, E, t0, t1);
                threadpool_barrier(c->tp);

                gemm_rows(c, &L->gate, &p, n, c->gate, F, ith, nth);
                gemm_rows(c, &L->up, &p, n, c->up, F, ith, nth);
                threadpool_barrier(c->tp);

                const struct engine_tensor *dn[1] = { &L->down };
                plan_acts(&p, dn, 1, F);
                for (uint32_t t = t0; t < t1; t++) {
                        float *g = c->gate + (size_t)t * F;
                        const float *u = c->up + (size_t)t * F;
                        if (gemma) {
#if defined(__x86_64__)
                                if (c->f16c)
                                        geglu_avx2(g, u, F, m->gelu_f16);
                                else
#endif
                                        geglu_ref(g, u, F, m->gelu_f16);
                        } else {
                                for (uint32_t i = 0; i < F; i++)
                                        g[i] = g[i] / (1.0f + attn_expf(-g[i])) * u[i];
                        }
                }
                quantize_rows(c, &p, c->gate, F, F, t0, t1);
                threadpool_barrier(c->tp);

                gemm_rows(c, &L->down, &p, n, c->tmp, E, ith, nth);
                threadpool_barrier(c->tp);

                for (uint32_t t = t0; t < t1; t++) {
                        float *x = c->x + (size_t)t * E, *y = c->tmp + (size_t)t * E;
                        if (gemma)
                                rms_norm(y, L->post_ffn_norm.f32, y, E, hp->norm_eps);
                        for (uint32_t i = 0; i < E; i++)
                                x[i] += y[i];
                }
        }

        /* final norm and logits for the flagged tokens, packed in batch order */
        if (c->n_out == 0)
                return;
        const struct engine_tensor *outw[1] = { &m->output };
        plan_acts(&p, outw, 1, E);
        uint32_t j0, j1;
        token_range(c->n_out, ith, nth, &j0, &j1);
        threadpool_barrier(c->tp); /* every token's residual stream is final */
        for (uint32_t j = j0; j < j1; j++)
                rms_norm(c->x + (size_t)c->out_tok[j] * E, m->output_norm.f32, c->xn + (size_t)j * E, E, hp->norm_eps);
        quantize_rows(c, &p, c->xn, E, E, j0, j1);
        threadpool_barrier(c->tp);
        gemm_rows(c, &m->output, &p, c->n_out, c->out, hp->n_vocab, ith, nth);
        if (m->final_softcap > 0.0f) {
                const int64_t R = hp->n_vocab, r0 = R * ith / nth, r1 = R * (ith + 1) / nth;
                const float cap = m->final_softcap;
                for (uint32_t j = 0; j < c->n_out; j++)
                        for (int64_t r = r0; r < r1; r++) {
                                float *o = c->out + (size_t)j * hp->n_vocab + r;
                                *o = tanhf(*o / cap) * cap;
                        }
        }
}

/* ---- context ---- */

int engine_ctx_create(const struct engine_model *m, uint32_t n_threads, uint32_t max_tokens,
                      struct engine_ctx **out, struct sl_error *err)
{
        struct engine_ctx *c = NULL;
        int r;

        *out = NULL;
        if (max_tokens == 0 || max_tokens > 65536)
                return sl_errorf(err, -EINVAL, "max_tokens %u out of range (1..65536)", max_tokens);
        if (m->backend != ENGINE_BACKEND_CPU)
                return sl_errorf(err, -EINVAL, "the model was loaded for the %s backend; the CPU forward pass needs "
                                 "it loaded with backend cpu", engine_backend_name(m->backend));
        if (n_threads == 0) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);
                n_threads = cpus > 0 ? (uint32_t)cpus : 1;
        }
        if (n_threads > 1024)
                return sl_errorf(err, -EINVAL, "n_threads %u out of range", n_threads);
        c = calloc(1, sizeof(*c));
        if (!c)
                return sl_errorf(err, -ENOMEM, "out of memory");
        c->m = m;
        c->max_tokens = max_tokens;
        c->n_threads = n_threads;
#if defined(__x86_64__)
        __builtin_cpu_init();
        c->f16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("f16c");
#endif
        const struct engine_hparams *hp = &m->hp;
        const size_t T = max_tokens, E = hp->n_embd, F = hp->n_ff;
        const size_t QD = (size_t)hp->n_head * hp->head_dim_k, KD = (size_t)hp->n_head_kv * hp->head_dim_k;
        const size_t VD = (size_t)hp->n_head_kv * hp->head_dim_v, OD = (size_t)hp->n_head * hp->head_dim_v;
        float **bufs[] = { &c->x, &c->xn, &c->q, &c->k, &c->v, &c->att, &c->tmp, &c->gate, &c->up };
        const size_t sizes[] = { E, E, QD, KD, VD, OD, E, F, F };
        for (size_t i = 0; i < SL_ARRAY_SIZE(bufs); i++) {
                *bufs[i] = aligned_alloc(64, SL_ALIGN_UP(T * sizes[i] * sizeof(float), 64));
                if (!*bufs[i]) {
                        r = sl_errorf(err, -ENOMEM, "cannot allocate activations for %u tokens", max_tokens);
                        goto fail;
                }
                memset(*bufs[i], 0, T * sizes[i] * sizeof(float)); /* pages now, not while serving */
        }
        /* Widest activation row in its widest vec_dot type (f32). */
        c->act_row_cap = SL_ALIGN_UP(SL_MAX(SL_MAX(E, F), OD) * sizeof(float), 64);
        for (int j = 0; j < N_ACT_SLOTS; j++) {
                c->act[j] = aligned_alloc(64, T * c->act_row_cap);
                if (!c->act[j]) {
                        r = sl_errorf(err, -ENOMEM, "cannot allocate activations for %u tokens", max_tokens);
                        goto fail;
                }
                memset(c->act[j], 0, T * c->act_row_cap);
        }
        c->out_tok = malloc(T * sizeof(int32_t));
        c->ts = calloc(n_threads, sizeof(*c->ts));
        c->max_ctx = hp->n_ctx_train;
        const size_t per = SL_ALIGN_UP(hp->rope_dim + hp->head_dim_k + ATTN_PV_ROWS * hp->head_dim_v +
                                       c->max_ctx, 16) * sizeof(float);
        c->ts_mem = aligned_alloc(64, SL_ALIGN_UP(per * n_threads, 64));
        if (!c->out_tok || !c->ts || !c->ts_mem) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }
        memset(c->ts_mem, 0, per * n_threads);
        for (uint32_t i = 0; i < n_threads; i++) {
                float *base = (float *)((uint8_t *)c->ts_mem + per * i);
                c->ts[i].rope = base;
                c->ts[i].q16 = base + hp->rope_dim;
                c->ts[i].pv = base + hp->rope_dim + hp->head_dim_k;
                c->ts[i].scores = c->ts[i].pv + ATTN_PV_ROWS * hp->head_dim_v;
        }
        r = threadpool_create(n_threads, &c->tp, err);
        if (r < 0)
                goto fail;
        *out = c;
        return 0;
fail:
        engine_ctx_free(c);
        return r;
}

void engine_ctx_free(struct engine_ctx *c)
{
        if (!c)
                return;
        threadpool_free(c->tp);
        float *bufs[] = { c->x, c->xn, c->q, c->k, c->v, c->att, c->tmp, c->gate, c->up };
        for (size_t i = 0; i < SL_ARRAY_SIZE(bufs); i++)
                free(bufs[i]);
        for (int j = 0; j < N_ACT_SLOTS; j++)
                free(c->act[j]);
        free(c->out_tok);
        free(c->ts);
        free(c->ts_mem);
        free(c);
}

/* Checks the batch against the cache before anything is computed, so a rejected batch
 * changes nothing but (possibly) block reservations of valid sequences. */
int engine_batch_prepare(const struct engine_hparams *hp, uint32_t max_tokens, uint32_t max_ctx,
                         struct engine_kv *kv, const struct engine_batch *b, struct sl_error *err)
{
        if (b->n_tokens > max_tokens)
                return sl_errorf(err, -EINVAL, "batch of %u tokens exceeds max_tokens %u", b->n_tokens,
                                 max_tokens);
        if (!b->token || !b->pos || !b->seq)
                return sl_errorf(err, -EINVAL, "batch lacks token, pos or seq arrays");
        if (kv->n_layer != hp->n_layer || kv->kv_dim_k != hp->n_head_kv * hp->head_dim_k ||
            kv->kv_dim_v != hp->n_head_kv * hp->head_dim_v)
                return sl_errorf(err, -EINVAL, "KV cache was created for another model");
        for (uint32_t t = 0; t < b->n_tokens; t++) {
                const int s = b->seq[t];
                if (s < 0 || (uint32_t)s >= kv->max_seqs || !kv->seq_open[s])
                        return sl_errorf(err, -EINVAL, "token %u: sequence %d is not open", t, s);
                if (b->token[t] < 0 || (uint32_t)b->token[t] >= hp->n_vocab)
                        return sl_errorf(err, -EINVAL, "token %u: id %d outside the vocabulary of %u", t,
                                         b->token[t], hp->n_vocab);
                if (b->pos[t] < 0 || (uint32_t)b->pos[t] >= kv->max_seq_len)
                        return sl_errorf(err, -EINVAL, "token %u: position %d outside 0..%u", t, b->pos[t],
                                         kv->max_seq_len - 1);
                if ((uint32_t)b->pos[t] >= max_ctx)
                        return sl_errorf(err, -EINVAL, "token %u: position %d past the model's context of %u",
                                         t, b->pos[t], max_ctx);
                kv->seq_next[s] = UINT32_MAX;
        }
        for (uint32_t t = 0; t < b->n_tokens; t++) {
                const int s = b->seq[t];
                const uint32_t pos = (uint32_t)b->pos[t];
                if (kv->seq_next[s] == UINT32_MAX) {
                        if (pos > kv->seq_len[s])
                                return sl_errorf(err, -EINVAL,
                                                 "token %u: position %u leaves a gap (sequence %d has %u positions)",
                                                 t, pos, s, kv->seq_len[s]);
                } else if (pos != kv->seq_next[s]) {
                        return sl_errorf(err, -EINVAL, "token %u: position %u of sequence %d follows %u", t, pos,
                                         s, kv->seq_next[s] - 1);
                }
                kv->seq_next[s] = pos + 1;
        }
        for (uint32_t t = 0; t < b->n_tokens; t++) {
                const int s = b->seq[t];
                int r = engine_kv_seq_reserve(kv, s, kv->seq_next[s]);
                if (r < 0)
                        return sl_errorf(err, r, "sequence %d: no free KV blocks for %u positions", s,
                                         kv->seq_next[s]);
        }
        return 0;
}

void engine_batch_commit(struct engine_kv *kv, const struct engine_batch *b)
{
        for (uint32_t t = 0; t < b->n_tokens; t++)
                kv->seq_len[b->seq[t]] = kv->seq_next[b->seq[t]];
}

int engine_forward(struct engine_ctx *c, struct engine_kv *kv, const struct engine_batch *b, float *out,
                   struct sl_error *err)
{
        int r;
        if (!c || !kv || !b)
                return sl_errorf(err, -EINVAL, "engine_forward: NULL argument");
        if (b->n_tokens == 0)
                return 0;
        r = engine_batch_prepare(&c->m->hp, c->max_tokens, c->max_ctx, kv, b, err);
        if (r < 0)
                return r;
        uint32_t n_out = 0;
        for (uint32_t t = 0; t < b->n_tokens; t++)
                if (b->logits && b->logits[t])
                        c->out_tok[n_out++] = (int32_t)t;
        if (n_out > 0 && !out)
                return sl_errorf(err, -EINVAL, "logits requested but no output buffer");
        c->kv = kv;
        c->b = b;
        c->out = out;
        c->n_out = n_out;
        threadpool_run(c->tp, forward_worker, c);
        engine_batch_commit(kv, b);
        c->kv = NULL;
        c->b = NULL;
        c->out = NULL;
        return (int)n_out;
}
