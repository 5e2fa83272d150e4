/* sluice-loadgen — a closed-loop load generator over the sluice protocol (libsluice): C
 * worker threads each keep one request in flight until N requests have been sent or the
 * --duration cap is reached, and every request's submit, first-token, per-token and end
 * times are recorded into arrays sized at start. Prints a table and one JSON object:
 * throughput, requests/s, TTFT and inter-token latency percentiles, outcomes by kind.
 *
 * Connections: by default one libsluice connection per worker (--conns C); with --conns K
 * < C the workers share K connections round-robin and their requests are multiplexed as
 * streams on each (libsluice allows many threads per connection).
 *
 * Percentiles are exact, nearest-rank (the smallest value with at least p% of the samples
 * at or below it), over sorted copies of the recorded samples. An inter-token gap is the
 * time between two arrivals divided evenly over the tokens of the later chunk, so the gaps
 * of a request always add up to its last-token time minus its first-token time. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sluice.h"

#define MAX_WORKERS 1024
#define MAX_REQUESTS 10000000u
#define MAX_SAMPLE_BYTES (1ull << 30) /* refuse runs whose gap array would be bigger */

static const char *prog = "sluice-loadgen";

/* ---- outcomes ---- */

enum outcome {
        OUT_OK = 0,       /* DONE (any finish but "cancelled") */
        OUT_BUSY,         /* BUSY / RATE_LIMITED / SHUTTING_DOWN (-EBUSY) */
        OUT_SERVER_ERROR, /* ERROR from the server (-EREMOTEIO) */
        OUT_TIMEOUT,      /* no progress within the timeout, or over the per-request bound */
        OUT_CANCELLED,    /* cut by the --duration cap */
        OUT_UNREACHABLE,  /* refused, unreachable, reset, broken pipe */
        OUT_PROTOCOL,     /* -EPROTO */
        OUT_AUTH,         /* -EACCES */
        OUT_OTHER,
        OUT_COUNT,
};
static const char *const outcome_name[OUT_COUNT] = {
        "ok", "busy", "server_error", "timeout", "cancelled", "unreachable", "protocol", "auth", "other",
};

static int outcome_of(int rc, const struct sluice_result *res)
{
        switch (rc) {
        case 0:
                return res->finish == SLUICE_FINISH_CANCELLED ? OUT_CANCELLED : OUT_OK;
        case -EBUSY:
                return OUT_BUSY;
        case -EREMOTEIO:
                return OUT_SERVER_ERROR;
        case -ETIMEDOUT:
                return OUT_TIMEOUT;
        case -ECANCELED:
                return OUT_CANCELLED;
        case -ECONNREFUSED: case -EHOSTUNREACH: case -ENETUNREACH: case -ECONNRESET: case -EPIPE:
                return OUT_UNREACHABLE;
        case -EPROTO:
                return OUT_PROTOCOL;
        case -EACCES:
                return OUT_AUTH;
        default:
                return OUT_OTHER;
        }
}

/* ---- configuration ---- */

struct config {
        const char *host;
        uint16_t port;
        int transport;
        unsigned concurrency, n_requests, conns;
        uint32_t max_tokens;
        const char *prompt;
        unsigned prompt_tokens;
        float temperature;
        uint64_t seed;
        double duration_s, timeout_s;
        const char *json_path;
        bool quiet;
};

/* ---- recording (all preallocated) ---- */

struct request_rec {
        uint64_t submit_ns, first_ns, end_ns; /* first_ns 0: no token came */
        uint32_t tokens;                      /* generated tokens received */
        uint32_t n_gaps;                      /* gaps recorded at gaps[index * max_tokens] */
        uint32_t server_ttft_us, server_queue_us;
        int16_t outcome;
        int16_t err;                          /* the negative errno, for "other" */
};

struct run {
        struct config cfg;
        struct sluice_conn **conn;
        struct request_rec *rec;
        uint64_t *gaps; /* n_requests * max_tokens, ns */
        const int32_t *prompt_ids;
        size_t n_prompt_ids;
        atomic_uint next_request;
        atomic_bool stop;
        uint64_t deadline_ns;
};

struct worker {
        struct run *run;
        unsigned idx;
        pthread_t th;
        _Atomic uint64_t active_id; /* the stream in flight (0: none), for the duration cap */
        struct sluice_conn *conn;
        char last_error[160];
} __attribute__((aligned(64)));

static uint64_t min_u64(uint64_t a, uint64_t b)
{
        return a < b ? a : b;
}

static uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- one request ---- */

static void run_request(struct worker *w, unsigned i)
{
        struct run *r = w->run;
        const struct config *cfg = &r->cfg;
        struct request_rec *rec = &r->rec[i];
        uint64_t *gaps = r->gaps + (size_t)i * cfg->max_tokens;
        uint64_t bound_ns = (uint64_t)(cfg->timeout_s * 1e9);
        struct sluice_gen_params p;
        struct sluice_result res;
        struct sluice_stream *s = NULL;
        struct sluice_chunk ch;
        uint64_t last = 0;
        bool timed_out = false;
        int rc;

        sluice_gen_params_init(&p);
        if (r->prompt_ids) {
                p.prompt_ids = r->prompt_ids;
                p.n_prompt_ids = r->n_prompt_ids;
        } else {
                p.prompt = cfg->prompt;
        }
        p.max_tokens = cfg->max_tokens;
        p.temperature = cfg->temperature;
        p.seed = cfg->seed + i;
        p.flags |= SLUICE_GEN_NO_TEXT;
        memset(&res, 0, sizeof(res));

        rec->submit_ns = now_ns();
        rc = sluice_stream_open(w->conn, &p, &s);
        if (rc < 0)
                goto done;
        atomic_store(&w->active_id, sluice_stream_id(s));
        if (atomic_load(&r->stop)) /* the cap came between the check and the open */
                sluice_stream_cancel(s);
        while ((rc = sluice_stream_next(s, &ch, &res)) == 1) {
                uint64_t t = now_ns();
                if (ch.kind != SLUICE_CHUNK_GENERATED || ch.n_ids == 0)
                        continue;
                uint32_t k = ch.n_ids;
                if (!rec->first_ns) {
                        rec->first_ns = t;
                        for (uint32_t j = 1; j < k && rec->n_gaps < cfg->max_tokens; j++)
                                gaps[rec->n_gaps++] = 0; /* arrived with the first */
                } else {
                        uint64_t g = (t - last) / k;
                        for (uint32_t j = 0; j < k && rec->n_gaps < cfg->max_tokens; j++)
                                gaps[rec->n_gaps++] = g;
                }
                last = t;
                rec->tokens += k;
                if (!timed_out && t - rec->submit_ns > bound_ns) {
                        timed_out = true;
                        sluice_stream_cancel(s);
                }
        }
done:
        rec->end_ns = now_ns();
        atomic_store(&w->active_id, 0);
        rec->outcome = (int16_t)outcome_of(rc, &res);
        if (timed_out && rec->outcome == OUT_CANCELLED)
                rec->outcome = OUT_TIMEOUT;
        rec->err = (int16_t)rc;
        rec->server_ttft_us = (uint32_t)min_u64(res.ttft_us, UINT32_MAX);
        rec->server_queue_us = (uint32_t)min_u64(res.queue_us, UINT32_MAX);
        if (rc < 0 && !w->last_error[0])
                snprintf(w->last_error, sizeof(w->last_error), "%.150s", res.message[0] ? res.message : strerror(-rc));
        sluice_stream_free(s);
}

static void *worker_main(void *arg)
{
        struct worker *w = arg;
        struct run *r = w->run;
        for (;;) {
                if (atomic_load(&r->stop))
                        break;
                unsigned i = atomic_fetch_add(&r->next_request, 1);
                if (i >= r->cfg.n_requests)
                        break;
                run_request(w, i);
        }
        return NULL;
}

/* ---- statistics ---- */

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* Nearest rank over sorted v[0..n): the smallest value with at least p% of the samples at
 * or below it. n == 0 gives 0 (reported as null). */
static uint64_t percentile_sorted(const uint64_t *v, size_t n, double p)
{
        if (n == 0)
                return 0;
        double rank = ceil(p / 100.0 * (double)n);
        size_t k = rank < 1 ? 0 : (size_t)rank - 1;
        return v[k < n ? k : n - 1];
}

struct dist {
        size_t n;
        double mean_ms, p50_ms, p90_ms, p99_ms, max_ms;
};

/* Sorts v in place. */
static struct dist dist_of(uint64_t *v, size_t n)
{
        struct dist d = {.n = n};
        if (!n)
                return d;
        qsort(v, n, sizeof(*v), cmp_u64);
        long double sum = 0;
        for (size_t i = 0; i < n; i++)
                sum += v[i];
        d.mean_ms = (double)(sum / n) / 1e6;
        d.p50_ms = (double)percentile_sorted(v, n, 50) / 1e6;
        d.p90_ms = (double)percentile_sorted(v, n, 90) / 1e6;
        d.p99_ms = (double)percentile_sorted(v, n, 99) / 1e6;
        d.max_ms = (double)v[n - 1] / 1e6;
        return d;
}

struct summary {
        unsigned sent;
        unsigned by_outcome[OUT_COUNT];
        uint64_t tokens, ok_tokens;
        double wall_s, tokens_per_s, requests_per_s;
        double decode_tps; /* per request, after the first token: sum(tokens-1) / sum(last-first) */
        struct dist ttft, itl, e2e, server_ttft;
};

/* scratch: at least max(n_requests, n_requests * max_tokens) slots, preallocated. */
static void summarize(const struct run *r, uint64_t *scratch, struct summary *s)
{
        const struct config *cfg = &r->cfg;
        uint64_t t0 = UINT64_MAX, t1 = 0;
        long double dec_tok = 0, dec_ns = 0;
        size_t n;

        memset(s, 0, sizeof(*s));
        for (unsigned i = 0; i < cfg->n_requests; i++) {
                const struct request_rec *q = &r->rec[i];
                if (!q->submit_ns)
                        continue;
                s->sent++;
                s->by_outcome[q->outcome]++;
                s->tokens += q->tokens;
                t0 = q->submit_ns < t0 ? q->submit_ns : t0;
                t1 = q->end_ns > t1 ? q->end_ns : t1;
                if (q->outcome == OUT_OK) {
                        s->ok_tokens += q->tokens;
                        if (q->tokens > 1 && q->n_gaps) {
                                uint64_t sum = 0;
                                for (uint32_t j = 0; j < q->n_gaps; j++)
                                        sum += r->gaps[(size_t)i * cfg->max_tokens + j];
                                dec_tok += q->n_gaps;
                                dec_ns += sum;
                        }
                }
        }
        s->wall_s = s->sent ? (double)(t1 - t0) / 1e9 : 0;
        s->tokens_per_s = s->wall_s > 0 ? (double)s->tokens / s->wall_s : 0;
        s->requests_per_s = s->wall_s > 0 ? (double)s->by_outcome[OUT_OK] / s->wall_s : 0;
        s->decode_tps = dec_ns > 0 ? (double)(dec_tok * 1e9L / dec_ns) : 0;

        /* TTFT, end-to-end and the server's TTFT over successful requests */
        n = 0;
        for (unsigned i = 0; i < cfg->n_requests; i++)
                if (r->rec[i].submit_ns && r->rec[i].outcome == OUT_OK && r->rec[i].first_ns)
                        scratch[n++] = r->rec[i].first_ns - r->rec[i].submit_ns;
        s->ttft = dist_of(scratch, n);
        n = 0;
        for (unsigned i = 0; i < cfg->n_requests; i++)
                if (r->rec[i].submit_ns && r->rec[i].outcome == OUT_OK)
                        scratch[n++] = r->rec[i].end_ns - r->rec[i].submit_ns;
        s->e2e = dist_of(scratch, n);
        n = 0;
        for (unsigned i = 0; i < cfg->n_requests; i++)
                if (r->rec[i].submit_ns && r->rec[i].outcome == OUT_OK && r->rec[i].first_ns)
                        scratch[n++] = (uint64_t)r->rec[i].server_ttft_us * 1000;
        s->server_ttft = dist_of(scratch, n);
        /* inter-token gaps of successful requests */
        n = 0;
        for (unsigned i = 0; i < cfg->n_requests; i++) {
                const struct request_rec *q = &r->rec[i];
                if (!q->submit_ns || q->outcome != OUT_OK)
                        continue;
                memcpy(scratch + n, r->gaps + (size_t)i * cfg->max_tokens, q->n_gaps * sizeof(uint64_t));
                n += q->n_gaps;
        }
        s->itl = dist_of(scratch, n);
}

/* ---- output ---- */

static void print_table(FILE *f, const struct config *cfg, const struct summary *s, const char *first_error)
{
        fprintf(f, "%s: %s %s:%u, concurrency %u, %u connection(s), %u of %u requests sent, max_tokens %u\n",
                prog, cfg->transport == SLUICE_TCP ? "tcp" : "udp", cfg->host, cfg->port, cfg->concurrency,
                cfg->conns, s->sent, cfg->n_requests, cfg->max_tokens);
        fprintf(f, "  wall %.3f s, %" PRIu64 " tokens, %.1f tokens/s, %.2f requests/s, decode %.1f tokens/s per request\n",
                s->wall_s, s->tokens, s->tokens_per_s, s->requests_per_s, s->decode_tps);
        fprintf(f, "  %-22s %8s %10s %10s %10s %10s %10s\n", "latency (ms)", "n", "mean", "p50", "p90", "p99", "max");
        const struct { const char *name; const struct dist *d; } rows[] = {
                {"time to first token", &s->ttft}, {"inter-token", &s->itl},
                {"request (end to end)", &s->e2e}, {"server TTFT (DONE)", &s->server_ttft},
        };
        for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
                if (!rows[i].d->n) {
                        fprintf(f, "  %-22s %8d %10s %10s %10s %10s %10s\n", rows[i].name, 0, "-", "-", "-", "-", "-");
                        continue;
                }
                fprintf(f, "  %-22s %8zu %10.3f %10.3f %10.3f %10.3f %10.3f\n", rows[i].name, rows[i].d->n,
                        rows[i].d->mean_ms, rows[i].d->p50_ms, rows[i].d->p90_ms, rows[i].d->p99_ms,
                        rows[i].d->max_ms);
        }
        fprintf(f, "  outcomes:");
        for (int k = 0; k < OUT_COUNT; k++)
                if (s->by_outcome[k] || k == OUT_OK)
                        fprintf(f, " %s %u", outcome_name[k], s->by_outcome[k]);
        fprintf(f, "\n");
        if (first_error)
                fprintf(f, "  first error: %s\n", first_error);
}

static void json_str(FILE *f, const char *s)
{
        fputc('"', f);
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

static void json_dist(FILE *f, const char *name, const struct dist *d, bool last)
{
        if (!d->n) {
                fprintf(f, "\"%s\":{\"n\":0,\"mean\":null,\"p50\":null,\"p90\":null,\"p99\":null,\"max\":null}%s",
                        name, last ? "" : ",");
                return;
        }
        fprintf(f, "\"%s\":{\"n\":%zu,\"mean\":%.4f,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"max\":%.4f}%s", name,
                d->n, d->mean_ms, d->p50_ms, d->p90_ms, d->p99_ms, d->max_ms, last ? "" : ",");
}

static void print_json(FILE *f, const struct config *cfg, const struct summary *s, const struct sluice_info *info,
                       size_t n_prompt, const char *first_error)
{
        fprintf(f, "{\"transport\":\"%s\",\"host\":", cfg->transport == SLUICE_TCP ? "tcp" : "udp");
        json_str(f, cfg->host);
        fprintf(f, ",\"port\":%u,\"model\":", cfg->port);
        json_str(f, info->model);
        fprintf(f, ",\"server\":");
        json_str(f, info->server);
        fprintf(f, ",\"concurrency\":%u,\"connections\":%u,\"requests\":%u,\"sent\":%u,\"max_tokens\":%u,"
                   "\"prompt_tokens\":%zu,\"temperature\":%g,\"seed\":%" PRIu64 ",",
                cfg->concurrency, cfg->conns, cfg->n_requests, s->sent, cfg->max_tokens, n_prompt,
                (double)cfg->temperature, cfg->seed);
        fprintf(f, "\"wall_s\":%.6f,\"tokens\":%" PRIu64 ",\"ok_tokens\":%" PRIu64 ",\"throughput_tokens_per_s\":%.3f,"
                   "\"requests_per_s\":%.4f,\"decode_tokens_per_s_per_request\":%.3f,",
                s->wall_s, s->tokens, s->ok_tokens, s->tokens_per_s, s->requests_per_s, s->decode_tps);
        fprintf(f, "\"latency_ms\":{");
        json_dist(f, "ttft", &s->ttft, false);
        json_dist(f, "inter_token", &s->itl, false);
        json_dist(f, "request", &s->e2e, false);
        json_dist(f, "server_ttft", &s->server_ttft, true);
        fprintf(f, "},\"outcomes\":{");
        for (int k = 0; k < OUT_COUNT; k++)
                fprintf(f, "\"%s\":%u%s", outcome_name[k], s->by_outcome[k], k + 1 < OUT_COUNT ? "," : "");
        fprintf(f, "},\"errors\":%u,\"first_error\":", s->sent - s->by_outcome[OUT_OK]);
        if (first_error)
                json_str(f, first_error);
        else
                fprintf(f, "null");
        fprintf(f, "}\n");
}

/* ---- self-test of the statistics (meson test 'loadgen-stats') ---- */

static int self_test(void)
{
        int fails = 0;
#define CHECK(cond)                                                                        \
        do {                                                                               \
                if (!(cond)) {                                                             \
                        fprintf(stderr, "%s: self-test: %s:%d: %s\n", prog, __FILE__, __LINE__, #cond); \
                        fails++;                                                           \
                }                                                                          \
        } while (0)
        /* 1..100 shuffled: p50 = 50, p99 = 99, p100 = 100, p1 = 1 */
        uint64_t v[100];
        for (unsigned i = 0; i < 100; i++)
                v[i] = (uint64_t)((i * 37) % 100 + 1) * 1000000ull;
        struct dist d = dist_of(v, 100);
        CHECK(d.n == 100);
        CHECK(d.p50_ms == 50 && d.p90_ms == 90 && d.p99_ms == 99 && d.max_ms == 100);
        CHECK(fabs(d.mean_ms - 50.5) < 1e-9);
        CHECK(percentile_sorted(v, 100, 1) == 1000000ull && percentile_sorted(v, 100, 0) == 1000000ull);
        CHECK(percentile_sorted(v, 100, 100) == 100000000ull);
        /* one sample; two samples (nearest rank: p50 of {1,2} is 1, p99 is 2) */
        uint64_t one[1] = {7000000};
        d = dist_of(one, 1);
        CHECK(d.p50_ms == 7 && d.p99_ms == 7 && d.max_ms == 7);
        uint64_t two[2] = {2000000, 1000000};
        d = dist_of(two, 2);
        CHECK(d.p50_ms == 1 && d.p99_ms == 2);
        /* empty */
        d = dist_of(v, 0);
        CHECK(d.n == 0 && d.p50_ms == 0);
        /* 1000 samples, 990 of 1 ms and 10 of 1000 ms: p99 is still 1 ms, p99.1 hits the tail */
        static uint64_t t[1000];
        for (unsigned i = 0; i < 1000; i++)
                t[i] = (i % 100 == 3 ? 1000 : 1) * 1000000ull;
        d = dist_of(t, 1000);
        CHECK(d.p99_ms == 1 && d.max_ms == 1000);
        CHECK(percentile_sorted(t, 1000, 99.1) == 1000000000ull);
        /* summary over a hand-made run: 3 requests, gaps split per chunk */
        struct run r = {.cfg = {.n_requests = 3, .max_tokens = 4}};
        struct request_rec rec[3] = {
                {.submit_ns = 1000000000, .first_ns = 1010000000, .end_ns = 1040000000, .tokens = 4, .n_gaps = 3},
                {.submit_ns = 1000000000, .first_ns = 1020000000, .end_ns = 1050000000, .tokens = 2, .n_gaps = 1},
                {.submit_ns = 1005000000, .end_ns = 1100000000, .outcome = OUT_BUSY, .err = -EBUSY},
        };
        uint64_t gaps[12] = {10000000, 10000000, 10000000, 0, 30000000};
        uint64_t scratch[12];
        r.rec = rec, r.gaps = gaps;
        struct summary s;
        summarize(&r, scratch, &s);
        CHECK(s.sent == 3 && s.by_outcome[OUT_OK] == 2 && s.by_outcome[OUT_BUSY] == 1);
        CHECK(s.tokens == 6 && fabs(s.wall_s - 0.1) < 1e-9 && fabs(s.tokens_per_s - 60) < 1e-6);
        CHECK(fabs(s.requests_per_s - 20) < 1e-6);
        CHECK(s.ttft.n == 2 && s.ttft.p50_ms == 10 && s.ttft.p99_ms == 20);
        CHECK(s.itl.n == 4 && s.itl.p50_ms == 10 && s.itl.p99_ms == 30);
        CHECK(fabs(s.decode_tps - 4 / 0.06) < 1e-6); /* 4 gaps over 60 ms */
        CHECK(s.e2e.n == 2 && s.e2e.p50_ms == 40 && s.e2e.max_ms == 50);
        if (!fails)
                printf("%s: self-test passed\n", prog);
        return fails ? 1 : 0;
#undef CHECK
}

/* ---- command line ---- */

static void usage(FILE *f)
{
        fprintf(f,
                "usage: %s --host H --port P [--udp|--tcp] -c CONCURRENCY -n REQUESTS [options]\n"
                "\n"
                "  -H, --host H           server name or address (default 127.0.0.1)\n"
                "  -p, --port P           server port (default 7400)\n"
                "      --udp | --tcp      transport (default udp)\n"
                "  -c, --concurrency C    worker threads, each with one request in flight (default 1)\n"
                "  -n, --requests N       requests in all (default 32)\n"
                "      --conns K          connections shared round-robin by the workers (default C:\n"
                "                         one per worker; K < C multiplexes streams on each)\n"
                "  -m, --max-tokens N     tokens to generate per request (default 128)\n"
                "      --prompt TEXT      prompt text (default a short English sentence)\n"
                "      --prompt-tokens N  a prompt of exactly N token ids (tokenized on the server\n"
                "                         from repeated English text, BOS included)\n"
                "      --temp T           temperature (default 0: greedy)\n"
                "      --seed S           seed of request 0; request i uses S + i (default 1)\n"
                "  -d, --duration S       stop submitting and cancel what runs after S seconds (default 120)\n"
                "      --timeout S        per-request bound, and the no-progress timeout (default 30)\n"
                "      --json FILE        write the JSON object to FILE ('-': stdout, the default)\n"
                "  -q, --quiet            no table\n"
                "      --self-test        check the statistics code and exit\n"
                "  -h, --help\n"
                "Exit codes: 0 the run completed (whatever the outcomes), 1 could not connect or set up,\n"
                "2 usage error.\n",
                prog);
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
        char *end;
        errno = 0;
        unsigned long v = strtoul(s, &end, 10);
        if (errno || end == s || *end || v > max || s[0] == '-')
                return -EINVAL;
        *out = v;
        return 0;
}

static int parse_double(const char *s, double *out)
{
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !isfinite(v))
                return -EINVAL;
        *out = v;
        return 0;
}

enum { O_UDP = 256, O_TCP, O_CONNS, O_PROMPT, O_PROMPT_TOKENS, O_TEMP, O_SEED, O_TIMEOUT, O_JSON, O_SELF_TEST };

static int parse_args(int argc, char **argv, struct config *cfg)
{
        static const struct option lo[] = {
                {"host", required_argument, 0, 'H'},     {"port", required_argument, 0, 'p'},
                {"udp", no_argument, 0, O_UDP},          {"tcp", no_argument, 0, O_TCP},
                {"concurrency", required_argument, 0, 'c'}, {"requests", required_argument, 0, 'n'},
                {"conns", required_argument, 0, O_CONNS}, {"max-tokens", required_argument, 0, 'm'},
                {"prompt", required_argument, 0, O_PROMPT}, {"prompt-tokens", required_argument, 0, O_PROMPT_TOKENS},
                {"temp", required_argument, 0, O_TEMP},  {"seed", required_argument, 0, O_SEED},
                {"duration", required_argument, 0, 'd'}, {"timeout", required_argument, 0, O_TIMEOUT},
                {"json", required_argument, 0, O_JSON},  {"quiet", no_argument, 0, 'q'},
                {"self-test", no_argument, 0, O_SELF_TEST}, {"help", no_argument, 0, 'h'},
                {0, 0, 0, 0},
        };
        unsigned long u;
        double d;
        int o;
        while ((o = getopt_long(argc, argv, "H:p:c:n:m:d:qh", lo, NULL)) != -1) {
                const char *a = optarg;
                switch (o) {
                case 'H': cfg->host = a; break;
                case 'p':
                        if (parse_uint(a, 65535, &u) < 0 || !u)
                                goto bad;
                        cfg->port = (uint16_t)u;
                        break;
                case O_UDP: cfg->transport = SLUICE_UDP; break;
                case O_TCP: cfg->transport = SLUICE_TCP; break;
                case 'c':
                        if (parse_uint(a, MAX_WORKERS, &u) < 0 || !u)
                                goto bad;
                        cfg->concurrency = (unsigned)u;
                        break;
                case 'n':
                        if (parse_uint(a, MAX_REQUESTS, &u) < 0 || !u)
                                goto bad;
                        cfg->n_requests = (unsigned)u;
                        break;
                case O_CONNS:
                        if (parse_uint(a, MAX_WORKERS, &u) < 0 || !u)
                                goto bad;
                        cfg->conns = (unsigned)u;
                        break;
                case 'm':
                        if (parse_uint(a, 1u << 20, &u) < 0 || !u)
                                goto bad;
                        cfg->max_tokens = (uint32_t)u;
                        break;
                case O_PROMPT: cfg->prompt = a; break;
                case O_PROMPT_TOKENS:
                        if (parse_uint(a, 1u << 20, &u) < 0 || !u)
                                goto bad;
                        cfg->prompt_tokens = (unsigned)u;
                        break;
                case O_TEMP:
                        if (parse_double(a, &d) < 0 || d < 0)
                                goto bad;
                        cfg->temperature = (float)d;
                        break;
                case O_SEED:
                        if (parse_uint(a, ULONG_MAX, &u) < 0)
                                goto bad;
                        cfg->seed = u;
                        break;
                case 'd':
                        if (parse_double(a, &d) < 0 || d <= 0 || d > 86400)
                                goto bad;
                        cfg->duration_s = d;
                        break;
                case O_TIMEOUT:
                        if (parse_double(a, &d) < 0 || d <= 0 || d > 3600)
                                goto bad;
                        cfg->timeout_s = d;
                        break;
                case O_JSON: cfg->json_path = a; break;
                case 'q': cfg->quiet = true; break;
                case O_SELF_TEST: return 1;
                case 'h': usage(stdout); exit(0);
                default: usage(stderr); return -EINVAL;
                }
                continue;
bad:
                fprintf(stderr, "%s: bad value '%s' (see --help)\n", prog, a);
                return -EINVAL;
        }
        if (optind < argc) {
                fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
                return -EINVAL;
        }
        if (cfg->prompt && cfg->prompt_tokens) {
                fprintf(stderr, "%s: --prompt and --prompt-tokens exclude each other\n", prog);
                return -EINVAL;
        }
        if (!cfg->conns || cfg->conns > cfg->concurrency)
                cfg->conns = cfg->concurrency;
        return 0;
}

/* ---- setup ---- */

/* A prompt of exactly n ids: repeated English text tokenized by the server, cut to n. */
static int build_prompt_ids(struct sluice_conn *c, unsigned n, int32_t **out)
{
        static const char chunk[] = "The river carried the boats past the old mill, and the miller counted "
                                    "them one by one while the sun went down over the hills. ";
        size_t len = 0, cap = sizeof(chunk) * ((size_t)n / 8 + 2);
        char *text = malloc(cap);
        int32_t *ids = NULL;
        size_t n_ids = 0;
        int rc = -ENOMEM;
        if (!text)
                goto fail;
        while (len + sizeof(chunk) <= cap) { /* well over one token per 8 bytes of English */
                memcpy(text + len, chunk, sizeof(chunk) - 1);
                len += sizeof(chunk) - 1;
        }
        rc = sluice_tokenize(c, text, len, SLUICE_TOK_ADD_SPECIAL, &ids, &n_ids, NULL);
        if (rc < 0)
                goto fail;
        if (n_ids < n) {
                rc = -ERANGE;
                goto fail;
        }
        free(text);
        *out = ids;
        return 0;
fail:
        free(text);
        free(ids);
        return rc;
}

int main(int argc, char **argv)
{
        struct config cfg = {
                .host = "127.0.0.1", .port = 7400, .transport = SLUICE_UDP, .concurrency = 1,
                .n_requests = 32, .max_tokens = 128, .seed = 1, .duration_s = 120, .timeout_s = 30,
        };
        struct run run = {0};
        struct worker *w = NULL;
        uint64_t *scratch = NULL;
        int32_t *prompt_ids = NULL;
        struct sluice_info info = {0};
        struct summary sum;
        const char *first_error = NULL;
        unsigned started = 0;
        int rc, ret = 1;

        rc = parse_args(argc, argv, &cfg);
        if (rc == 1)
                return self_test();
        if (rc < 0)
                return 2;
        if (!cfg.prompt && !cfg.prompt_tokens)
                cfg.prompt = "The history of the printing press begins";

        size_t n_gap = (size_t)cfg.n_requests * cfg.max_tokens;
        if (n_gap * sizeof(uint64_t) > MAX_SAMPLE_BYTES) {
                fprintf(stderr, "%s: %u requests x %u tokens is over the %llu MiB of samples allowed; "
                        "lower -n or --max-tokens\n", prog, cfg.n_requests, cfg.max_tokens,
                        MAX_SAMPLE_BYTES >> 20);
                return 2;
        }

        /* Every array the run writes is allocated and touched here, not during the run. */
        run.cfg = cfg;
        run.rec = calloc(cfg.n_requests, sizeof(*run.rec));
        run.gaps = calloc(n_gap, sizeof(*run.gaps));
        scratch = calloc(n_gap > cfg.n_requests ? n_gap : cfg.n_requests, sizeof(*scratch));
        run.conn = calloc(cfg.conns, sizeof(*run.conn));
        w = aligned_alloc(64, sizeof(*w) * cfg.concurrency);
        if (!run.rec || !run.gaps || !scratch || !run.conn || !w) {
                fprintf(stderr, "%s: out of memory\n", prog);
                goto out;
        }
        memset(run.gaps, 0, n_gap * sizeof(*run.gaps));
        memset(scratch, 0, (n_gap > cfg.n_requests ? n_gap : cfg.n_requests) * sizeof(*scratch));
        memset(w, 0, sizeof(*w) * cfg.concurrency);

        struct sluice_opts o;
        sluice_opts_init(&o);
        o.host = cfg.host;
        o.port = cfg.port;
        o.transport = cfg.transport;
        o.timeout_ms = (uint32_t)(cfg.timeout_s * 1000);
        for (unsigned k = 0; k < cfg.conns; k++) {
                rc = sluice_connect(&o, &run.conn[k]);
                if (rc < 0) {
                        fprintf(stderr, "%s: connection %u of %u to %s port %u (%s): %s\n", prog, k + 1, cfg.conns,
                                cfg.host, cfg.port, cfg.transport == SLUICE_TCP ? "tcp" : "udp", sluice_errmsg(NULL));
                        goto out;
                }
        }
        rc = sluice_info(run.conn[0], &info);
        if (rc < 0) {
                fprintf(stderr, "%s: INFO: %s\n", prog, sluice_errmsg(run.conn[0]));
                goto out;
        }
        if (cfg.prompt_tokens) {
                rc = build_prompt_ids(run.conn[0], cfg.prompt_tokens, &prompt_ids);
                if (rc < 0) {
                        fprintf(stderr, "%s: building a %u-token prompt: %s\n", prog, cfg.prompt_tokens,
                                rc == -ERANGE ? "the server's tokenizer gave too few tokens" : sluice_errmsg(run.conn[0]));
                        goto out;
                }
                run.prompt_ids = prompt_ids;
                run.n_prompt_ids = cfg.prompt_tokens;
        }

        /* ---- the run ---- */
        run.deadline_ns = now_ns() + (uint64_t)(cfg.duration_s * 1e9);
        for (unsigned i = 0; i < cfg.concurrency; i++) {
                w[i].run = &run;
                w[i].idx = i;
                w[i].conn = run.conn[i % cfg.conns];
                int e = pthread_create(&w[i].th, NULL, worker_main, &w[i]);
                if (e != 0) {
                        fprintf(stderr, "%s: pthread_create: %s\n", prog, strerror(e));
                        atomic_store(&run.stop, true);
                        break;
                }
                started++;
        }
        /* The duration cap: past it, no new requests, and the running ones are cancelled. */
        bool capped = false;
        for (;;) {
                if (atomic_load(&run.next_request) >= cfg.n_requests + started)
                        break; /* every worker has taken its last index: all are finishing */
                uint64_t t = now_ns();
                if (!capped && t >= run.deadline_ns) {
                        capped = true;
                        atomic_store(&run.stop, true);
                        for (unsigned i = 0; i < started; i++) {
                                uint64_t id = atomic_load(&w[i].active_id);
                                if (id)
                                        sluice_cancel(w[i].conn, id);
                        }
                }
                if (capped)
                        break;
                struct timespec ts = {0, 20 * 1000 * 1000};
                nanosleep(&ts, NULL);
        }
        for (unsigned i = 0; i < started; i++)
                pthread_join(w[i].th, NULL);

        /* ---- report ---- */
        for (unsigned i = 0; i < started && !first_error; i++)
                if (w[i].last_error[0])
                        first_error = w[i].last_error;
        summarize(&run, scratch, &sum);
        if (!cfg.quiet) {
                print_table(stdout, &cfg, &sum, first_error);
                if (capped)
                        printf("  stopped by the %.1f s duration cap\n", cfg.duration_s);
        }
        FILE *jf = stdout;
        if (cfg.json_path && strcmp(cfg.json_path, "-")) {
                jf = fopen(cfg.json_path, "w");
                if (!jf) {
                        fprintf(stderr, "%s: %s: %s\n", prog, cfg.json_path, strerror(errno));
                        goto out;
                }
        }
        print_json(jf, &cfg, &sum, &info, run.prompt_ids ? run.n_prompt_ids : 0, first_error);
        if (jf != stdout && fclose(jf) != 0) {
                fprintf(stderr, "%s: %s: write failed\n", prog, cfg.json_path);
                goto out;
        }
        ret = 0;
out:
        if (run.conn)
                for (unsigned k = 0; k < cfg.conns; k++)
                        sluice_close(run.conn[k]);
        free(run.conn);
        free(run.rec);
        free(run.gaps);
        free(scratch);
        free(prompt_ids);
        free(w);
        return ret;
}
