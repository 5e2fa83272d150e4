/* test_sampler.c — the sampler against what each stage promises: greedy is argmax,
 * top-k 1 is greedy, a seed fixes the stream, draws follow the softmax, top-p / min-p /
 * penalties remove or move exactly what they should, and bad parameters are refused. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine.h"

static int failures;

#define CHECK(cond, ...)                                                      \
        do {                                                                  \
                if (!(cond)) {                                                \
                        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
                        fprintf(stderr, __VA_ARGS__);                         \
                        fputc('\n', stderr);                                  \
                        failures++;                                           \
                }                                                             \
        } while (0)

static struct engine_sampler *make(const struct engine_sampling *p, uint32_t n_vocab)
{
        struct engine_sampler *s = NULL;
        struct sl_error e = {0};
        int r = engine_sampler_create(p, n_vocab, &s, &e);
        if (r < 0) {
                fprintf(stderr, "FAIL: engine_sampler_create: %s\n", e.msg);
                exit(1);
        }
        return s;
}

/* Deterministic pseudo-random logits for the tests (not the sampler's PRNG). */
static uint64_t lcg = 12345;
static float rnd(void)
{
        lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((lcg >> 40) * 0x1.0p-24) * 2.0f - 1.0f;
}

static struct engine_sampling plain(void)
{
        /* everything off except temperature 1 */
        struct engine_sampling p;
        engine_sampling_defaults(&p);
        p.temperature = 1.0f;
        p.top_k = 0;
        p.top_p = 1.0f;
        p.min_p = 0.0f;
        p.repeat_penalty = 1.0f;
        p.penalty_last_n = 64;
        p.seed = 42;
        return p;
}

static void test_greedy(void)
{
        enum { V = 1000 };
        static float l[V];
        struct engine_sampling p = plain();
        p.temperature = 0.0f;
        struct engine_sampler *s = make(&p, V);
        for (int trial = 0; trial < 20; trial++) {
                int best = 0;
                for (int i = 0; i < V; i++) {
                        l[i] = rnd() * 10.0f;
                        if (l[i] > l[best])
                                best = i;
                }
                int32_t got = engine_sampler_sample(s, l);
                CHECK(got == best, "greedy picked %d, argmax is %d", got, best);
        }
        /* ties: the lowest id wins */
        for (int i = 0; i < V; i++)
                l[i] = 0.0f;
        l[700] = 3.0f;
        l[300] = 3.0f;
        l[900] = 3.0f;
        CHECK(engine_sampler_sample(s, l) == 300, "tie not broken to the lowest id");
        /* NaN never wins */
        l[5] = NAN;
        CHECK(engine_sampler_sample(s, l) == 300, "NaN logit won");
        engine_sampler_free(s);
}

static void test_top_k_one_is_greedy(void)
{
        enum { V = 5000 };
        static float l[V];
        struct engine_sampling p = plain();
        p.top_k = 1;
        p.temperature = 1.5f;
        struct engine_sampler *s = make(&p, V);
        for (int trial = 0; trial < 50; trial++) {
                int best = 0;
                for (int i = 0; i < V; i++) {
                        l[i] = rnd() * 3.0f;
                        if (l[i] > l[best])
                                best = i;
                }
                int32_t got = engine_sampler_sample(s, l);
                CHECK(got == best, "top-k 1 picked %d, argmax is %d", got, best);
        }
        engine_sampler_free(s);
}

static void test_seed_reproducible(void)
{
        enum { V = 256, N = 200 };
        static float l[V];
        static int32_t a[N], b[N], c[N], d[N];
        for (int i = 0; i < V; i++)
                l[i] = rnd() * 2.0f;
        struct engine_sampling p;
        engine_sampling_defaults(&p);
        p.seed = 7;
        p.repeat_penalty = 1.1f;
        struct engine_sampler *s1 = make(&p, V), *s2 = make(&p, V);
        for (int i = 0; i < N; i++) {
                a[i] = engine_sampler_sample(s1, l);
                engine_sampler_accept(s1, a[i]);
                b[i] = engine_sampler_sample(s2, l);
                engine_sampler_accept(s2, b[i]);
        }
        engine_sampler_reset(s1);
        for (int i = 0; i < N; i++) {
                c[i] = engine_sampler_sample(s1, l);
                engine_sampler_accept(s1, c[i]);
        }
        p.seed = 8;
        struct engine_sampler *s3 = make(&p, V);
        int differ = 0, distinct_a = 0;
        for (int i = 0; i < N; i++) {
                d[i] = engine_sampler_sample(s3, l);
                engine_sampler_accept(s3, d[i]);
                differ += d[i] != a[i];
                distinct_a += i > 0 && a[i] != a[i - 1];
        }
        CHECK(memcmp(a, b, sizeof(a)) == 0, "same seed gave different streams");
        CHECK(memcmp(a, c, sizeof(a)) == 0, "reset did not restart the stream");
        CHECK(differ > N / 2, "another seed gave nearly the same stream (%d of %d differ)", differ, N);
        CHECK(distinct_a > N / 4, "stream barely changes (%d changes in %d draws)", distinct_a, N);
        engine_sampler_free(s1);
        engine_sampler_free(s2);
        engine_sampler_free(s3);
}

/* Draw many times from fixed logits and compare the counts with softmax(l / T) by a
 * chi-square statistic. With 15 degrees of freedom, P(chi2 > 50) is about 1e-5, so a
 * correct sampler passes; a wrong temperature or an off-by-one in the walk does not.
 * The seed is fixed, so the outcome is deterministic. */
static void test_distribution(void)
{
        enum { V = 16, N = 200000 };
        float l[V];
        double prob[V], z = 0.0;
        long cnt[V] = {0};
        const float T = 0.7f;
        for (int i = 0; i < V; i++)
                l[i] = (float)(i % 5) * 0.5f - (float)i * 0.1f;
        for (int i = 0; i < V; i++)
                z += prob[i] = exp(l[i] / T);
        for (int i = 0; i < V; i++)
                prob[i] /= z;
        struct engine_sampling p = plain();
        p.temperature = T;
        p.penalty_last_n = 0;
        struct engine_sampler *s = make(&p, V);
        for (int i = 0; i < N; i++) {
                int32_t t = engine_sampler_sample(s, l);
                CHECK(t >= 0 && t < V, "token %d out of range", t);
                if (t >= 0 && t < V)
                        cnt[t]++;
        }
        double chi2 = 0.0;
        for (int i = 0; i < V; i++) {
                double e = prob[i] * N;
                chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
        }
        CHECK(chi2 < 50.0, "draws do not follow softmax(l/T): chi2 = %.1f (15 dof)", chi2);

        /* The same statistic must reject a sampler that ignored the temperature. */
        double chi2_wrong = 0.0, zw = 0.0, pw[V];
        for (int i = 0; i < V; i++)
                zw += pw[i] = exp(l[i]);
        for (int i = 0; i < V; i++) {
                double e = pw[i] / zw * N;
                chi2_wrong += (cnt[i] - e) * (cnt[i] - e) / e;
        }
        CHECK(chi2_wrong > 500.0, "test has no power: chi2 vs T=1 is only %.1f", chi2_wrong);
        engine_sampler_free(s);
}

static void test_top_p(void)
{
        /* probabilities 0.5, 0.25, 0.125, 0.0625, ... : top_p 0.7 keeps exactly {0, 1}
         * (0.5 < 0.7 <= 0.75), top_p 0.5 keeps only {0}. */
        enum { V = 8, N = 20000 };
        float l[V];
        for (int i = 0; i < V; i++)
                l[i] = -(float)i * logf(2.0f);
        struct engine_sampling p = plain();
        p.top_p = 0.7f;
        struct engine_sampler *s = make(&p, V);
        long cnt[V] = {0};
        for (int i = 0; i < N; i++)
                cnt[engine_sampler_sample(s, l)]++;
        for (int i = 2; i < V; i++)
                CHECK(cnt[i] == 0, "top_p 0.7 let token %d through %ld times", i, cnt[i]);
        /* kept mass renormalised: 2/3 vs 1/3 */
        CHECK(fabs((double)cnt[0] / N - 2.0 / 3.0) < 0.02, "top_p renormalisation off: %ld/%d", cnt[0], N);
        engine_sampler_free(s);

        p.top_p = 0.5f;
        s = make(&p, V);
        for (int i = 0; i < 1000; i++)
                CHECK(engine_sampler_sample(s, l) == 0, "top_p 0.5 should keep only the best token");
        engine_sampler_free(s);

        /* top_p measured against the whole distribution even when min_p also acts */
        p.top_p = 0.7f;
        p.min_p = 0.2f; /* keeps p >= 0.1: tokens 0,1,2 */
        s = make(&p, V);
        long c2[V] = {0};
        for (int i = 0; i < N; i++)
                c2[engine_sampler_sample(s, l)]++;
        CHECK(c2[2] == 0 && c2[0] > 0 && c2[1] > 0, "top_p with min_p kept the wrong set (%ld %ld %ld)",
              c2[0], c2[1], c2[2]);
        engine_sampler_free(s);
}

static void test_min_p(void)
{
        /* p ∝ 1, 0.5, 0.25, 0.125: min_p 0.3 keeps tokens with p >= 0.3 * p_max → {0, 1} */
        enum { V = 4, N = 20000 };
        float l[V];
        for (int i = 0; i < V; i++)
                l[i] = -(float)i * logf(2.0f);
        struct engine_sampling p = plain();
        p.min_p = 0.3f;
        struct engine_sampler *s = make(&p, V);
        long cnt[V] = {0};
        for (int i = 0; i < N; i++)
                cnt[engine_sampler_sample(s, l)]++;
        CHECK(cnt[2] == 0 && cnt[3] == 0, "min_p 0.3 let through tokens 2/3 (%ld, %ld)", cnt[2], cnt[3]);
        CHECK(cnt[1] > N / 5, "min_p removed token 1 too (%ld)", cnt[1]);
        engine_sampler_free(s);

        /* top-k then min-p: k=3 on a flat vocabulary keeps exactly three ids */
        enum { W = 100 };
        float f[W];
        for (int i = 0; i < W; i++)
                f[i] = (float)(i % 10) * 0.01f; /* best: ids 9, 19, 29, ... (ties; lowest ids win) */
        p = plain();
        p.top_k = 3;
        s = make(&p, W);
        long seen[W] = {0};
        for (int i = 0; i < 3000; i++)
                seen[engine_sampler_sample(s, f)]++;
        int kept = 0;
        for (int i = 0; i < W; i++)
                kept += seen[i] > 0;
        CHECK(kept == 3 && seen[9] && seen[19] && seen[29], "top_k 3 with ties kept %d ids", kept);
        engine_sampler_free(s);
}

static void test_penalties(void)
{
        enum { V = 6 };
        float l[V] = {2.0f, 1.9f, -1.0f, -1.1f, 0.0f, -5.0f};
        struct engine_sampling p = plain();
        p.temperature = 0.0f; /* greedy shows where the penalties moved the maximum */
        p.repeat_penalty = 1.2f;
        struct engine_sampler *s = make(&p, V);
        CHECK(engine_sampler_sample(s, l) == 0, "unpenalised argmax should be 0");
        engine_sampler_accept(s, 0); /* 2.0 / 1.2 = 1.67 < 1.9 */
        CHECK(engine_sampler_sample(s, l) == 1, "repeat penalty did not demote token 0");
        engine_sampler_free(s);

        /* negative logits are multiplied: -1.0 * 1.2 = -1.2 < -1.1 */
        float m[V] = {-1.0f, -1.1f, -3.0f, -4.0f, -5.0f, -6.0f};
        s = make(&p, V);
        engine_sampler_accept(s, 0);
        CHECK(engine_sampler_sample(s, m) == 1, "repeat penalty on a negative logit went the wrong way");
        engine_sampler_free(s);

        /* window: penalty_last_n 2 forgets token 0 after two newer tokens */
        p.penalty_last_n = 2;
        s = make(&p, V);
        engine_sampler_accept(s, 0);
        CHECK(engine_sampler_sample(s, l) == 1, "window of 2 lost a recent token");
        engine_sampler_accept(s, 4);
        engine_sampler_accept(s, 5);
        CHECK(engine_sampler_sample(s, l) == 0, "window of 2 still penalises an old token");
        engine_sampler_free(s);

        /* -1: every token ever seen */
        p.penalty_last_n = -1;
        s = make(&p, V);
        engine_sampler_accept(s, 0);
        for (int i = 0; i < 500; i++)
                engine_sampler_accept(s, 5);
        CHECK(engine_sampler_sample(s, l) == 1, "penalty_last_n -1 forgot an old token");
        engine_sampler_free(s);

        /* 0: off */
        p.penalty_last_n = 0;
        s = make(&p, V);
        engine_sampler_accept(s, 0);
        CHECK(engine_sampler_sample(s, l) == 0, "penalty_last_n 0 still penalised");
        engine_sampler_free(s);

        /* frequency scales with count, presence does not */
        p = plain();
        p.temperature = 0.0f;
        p.frequency_penalty = 0.04f;
        s = make(&p, V);
        engine_sampler_accept(s, 0);
        CHECK(engine_sampler_sample(s, l) == 0, "one occurrence * 0.04 should not move 2.0 below 1.9");
        engine_sampler_accept(s, 0);
        engine_sampler_accept(s, 0);
        CHECK(engine_sampler_sample(s, l) == 1, "three occurrences * 0.04 should move 2.0 below 1.9");
        engine_sampler_free(s);

        p.frequency_penalty = 0.0f;
        p.presence_penalty = 0.15f;
        s = make(&p, V);
        engine_sampler_accept(s, 0);
        CHECK(engine_sampler_sample(s, l) == 1, "presence penalty 0.15 should demote token 0");
        engine_sampler_accept(s, 1);
        CHECK(engine_sampler_sample(s, l) == 0, "presence penalty should be the same for both");
        engine_sampler_free(s);
}

static void test_validation(void)
{
        struct engine_sampling p;
        struct sl_error e;
        struct engine_sampler *s = NULL;

#define EXPECT_BAD(field, value)                                                                \
        do {                                                                                    \
                engine_sampling_defaults(&p);                                                   \
                p.field = value;                                                                \
                e.msg[0] = 0;                                                                   \
                int r_ = engine_sampling_validate(&p, &e);                                      \
                CHECK(r_ == -EINVAL, "%s = %s accepted", #field, #value);                       \
                CHECK(strstr(e.msg, #field) != NULL, "reason for %s does not name it: '%s'",    \
                      #field, e.msg);                                                           \
                s = (struct engine_sampler *)1;                                                 \
                r_ = engine_sampler_create(&p, 10, &s, NULL);                                   \
                CHECK(r_ == -EINVAL && s == NULL, "create accepted %s = %s", #field, #value);   \
        } while (0)

        EXPECT_BAD(temperature, NAN);
        EXPECT_BAD(temperature, -0.5f);
        EXPECT_BAD(temperature, INFINITY);
        EXPECT_BAD(top_k, -1);
        EXPECT_BAD(top_p, 0.0f);
        EXPECT_BAD(top_p, -0.1f);
        EXPECT_BAD(top_p, 1.01f);
        EXPECT_BAD(top_p, NAN);
        EXPECT_BAD(min_p, -0.01f);
        EXPECT_BAD(min_p, 1.5f);
        EXPECT_BAD(min_p, NAN);
        EXPECT_BAD(repeat_penalty, -1.0f);
        EXPECT_BAD(repeat_penalty, 0.0f);
        EXPECT_BAD(repeat_penalty, NAN);
        EXPECT_BAD(presence_penalty, -0.5f);
        EXPECT_BAD(presence_penalty, NAN);
        EXPECT_BAD(frequency_penalty, -0.5f);
        EXPECT_BAD(frequency_penalty, NAN);
        EXPECT_BAD(penalty_last_n, -2);

        engine_sampling_defaults(&p);
        CHECK(engine_sampling_validate(&p, NULL) == 0, "defaults rejected");
        p.temperature = 0.0f;
        p.top_k = 0;
        p.top_p = 1.0f;
        p.min_p = 0.0f;
        p.min_p = 1.0f;
        p.penalty_last_n = -1;
        CHECK(engine_sampling_validate(&p, NULL) == 0, "boundary values rejected");
        engine_sampling_defaults(&p);
        CHECK(engine_sampler_create(&p, 0, &s, NULL) == -EINVAL, "n_vocab 0 accepted");
        engine_sampler_free(NULL);
        engine_sampler_reset(NULL);
}

int main(void)
{
        test_greedy();
        test_top_k_one_is_greedy();
        test_seed_reproducible();
        test_distribution();
        test_top_p();
        test_min_p();
        test_penalties();
        test_validation();
        if (failures) {
                fprintf(stderr, "%d check(s) failed\n", failures);
                return 1;
        }
        printf("sampler: all checks passed\n");
        return 0;
}
