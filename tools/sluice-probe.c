/* sluice-probe — the test oracle's window into the engine. Each mode reads token ids (or
 * text) on stdin and writes exactly what the Python tests compare against llama.cpp:
 *   logits     teacher-forced logits of every position, float32 LE, to -o FILE
 *   greedy     argmax continuation ids, one line per input line
 *   batch      batch invariance: interleaved shared batches vs each sequence alone
 *   tokenize   ids of text (a vocab-only GGUF is enough)
 *   detokenize text of ids
 *   load       weight-load statistics as JSON (for bench/run)
 * Exit codes: 0 ok, 1 error or check failed, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "engine.h"

static const char *prog = "sluice-probe";

static void usage(FILE *f)
{
        fprintf(f,
                "usage: %s MODE -m GGUF [options] < input\n"
                "\n"
                "modes:\n"
                "  logits -o FILE      each input line is a token-id sequence; runs it as one batch and\n"
                "                      writes all positions' logits (n_tokens x n_vocab float32 LE) to FILE,\n"
                "                      sequences one after another; prints 'n_vocab N' and one 'seq I LEN' per line\n"
                "  greedy -n N         prints N argmax continuation ids (lowest id on ties) per input line\n"
                "  batch               runs all lines interleaved in shared batches and each alone;\n"
                "                      exits 1 if any logit differs\n"
                "  tokenize            prints the ids of stdin's text (one line); with -x, each input line\n"
                "                      is hex-encoded UTF-8 and each gives one output line\n"
                "  detokenize          each input line of ids gives its text (hex-encoded with -x)\n"
                "  load                loads the model and prints its load statistics as JSON\n"
                "\n"
                "options:\n"
                "  -m FILE             GGUF model (tokenize/detokenize: a vocab-only GGUF is enough)\n"
                "  -t N                CPU threads (default: online CPUs)\n"
                "  -o FILE             logits output file (logits mode)\n"
                "  -n N                tokens to generate (greedy mode)\n"
                "  -x                  hex-encoded text lines (tokenize/detokenize)\n"
                "  --no-add-special    tokenize without BOS/EOS\n"
                "  --no-parse-special  tokenize control-token text as plain text\n"
                "  --render-special    detokenize control tokens to their text\n"
                "  --stream            detokenize through the streaming detokenizer\n"
                "  --no-direct         buffered reads instead of O_DIRECT\n",
                prog);
}

/* ---- input ---- */

struct seqs {
        size_t n;
        int32_t **ids;
        uint32_t *len;
        uint32_t max_len;
        uint64_t total;
};

static void seqs_free(struct seqs *s)
{
        for (size_t i = 0; i < s->n; i++)
                free(s->ids[i]);
        free(s->ids);
        free(s->len);
        memset(s, 0, sizeof(*s));
}

/* Reads every stdin line as a sequence of ids in [0, n_vocab). */
static int read_seqs(struct seqs *s, uint32_t n_vocab)
{
        char *line = NULL;
        size_t cap = 0, lineno = 0;
        ssize_t got;
        memset(s, 0, sizeof(*s));
        while ((got = getline(&line, &cap, stdin)) >= 0) {
                lineno++;
                size_t n = 0, ncap = 64;
                int32_t *ids = malloc(ncap * sizeof(*ids));
                if (!ids)
                        goto nomem;
                char *p = line;
                for (;;) {
                        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
                                p++;
                        if (!*p)
                                break;
                        char *end;
                        errno = 0;
                        long v = strtol(p, &end, 10);
                        if (end == p || errno || v < 0 || (uint64_t)v >= n_vocab) {
                                fprintf(stderr, "%s: input line %zu: bad token id near '%.20s' (vocabulary %u)\n",
                                        prog, lineno, p, n_vocab);
                                free(ids);
                                goto fail;
                        }
                        if (n == ncap) {
                                int32_t *ni = realloc(ids, 2 * ncap * sizeof(*ids));
                                if (!ni) {
                                        free(ids);
                                        goto nomem;
                                }
                                ids = ni;
                                ncap *= 2;
                        }
                        ids[n++] = (int32_t)v;
                        p = end;
                }
                if (n == 0) {
                        fprintf(stderr, "%s: input line %zu: empty sequence\n", prog, lineno);
                        free(ids);
                        goto fail;
                }
                int32_t **nids = realloc(s->ids, (s->n + 1) * sizeof(*s->ids));
                if (!nids) {
                        free(ids);
                        goto nomem;
                }
                s->ids = nids;
                uint32_t *nlen = realloc(s->len, (s->n + 1) * sizeof(*s->len));
                if (!nlen) {
                        free(ids);
                        goto nomem;
                }
                s->len = nlen;
                s->ids[s->n] = ids;
                s->len[s->n] = (uint32_t)n;
                s->n++;
                s->max_len = SL_MAX(s->max_len, (uint32_t)n);
                s->total += n;
        }
        free(line);
        if (s->n == 0) {
                fprintf(stderr, "%s: no input sequences on stdin\n", prog);
                return -EINVAL;
        }
        return 0;
nomem:
        fprintf(stderr, "%s: out of memory reading the input\n", prog);
fail:
        free(line);
        seqs_free(s);
        return -EINVAL;
}

/* ---- engine helpers ---- */

struct probe {
        const char *path;
        struct engine_model *m;
        struct engine_kv *kv;
        struct engine_ctx *ctx;
        uint32_t n_vocab;
        /* one batch's arrays, sized for max_tokens */
        int32_t *tok, *pos, *seq;
        uint8_t *lg;
};

static void probe_free(struct probe *p)
{
        engine_ctx_free(p->ctx);
        engine_kv_free(p->kv);
        engine_model_free(p->m);
        free(p->tok);
        free(p->pos);
        free(p->seq);
        free(p->lg);
}

static int probe_load(struct probe *p, const char *path, bool no_direct)
{
        struct sl_error err = {0};
        struct engine_load_opts lo = {0};
        lo.reader.no_direct = no_direct;
        p->path = path;
        int r = engine_model_load(path, &lo, &p->m, &err);
        if (r < 0) {
                fprintf(stderr, "%s: %s: %s\n", prog, path, err.msg[0] ? err.msg : strerror(-r));
                return r;
        }
        p->n_vocab = engine_model_hparams(p->m)->n_vocab;
        return 0;
}

/* KV for max_seqs sequences of up to max_len positions; batches of up to max_tokens. */
static int probe_engine(struct probe *p, uint32_t n_threads, uint32_t max_seqs, uint32_t max_len,
                        uint32_t max_tokens)
{
        struct sl_error err = {0};
        struct engine_kv_opts ko = {.block_size = 16, .max_seqs = max_seqs, .max_seq_len = max_len};
        ko.n_blocks = max_seqs * ((max_len + 15) / 16);
        int r;
        if ((r = engine_kv_create(p->m, &ko, &p->kv, &err)) < 0 ||
            (r = engine_ctx_create(p->m, n_threads, max_tokens, &p->ctx, &err)) < 0) {
                fprintf(stderr, "%s: %s: %s\n", prog, p->path, err.msg);
                return r;
        }
        p->tok = malloc(max_tokens * sizeof(*p->tok));
        p->pos = malloc(max_tokens * sizeof(*p->pos));
        p->seq = malloc(max_tokens * sizeof(*p->seq));
        p->lg = malloc(max_tokens);
        if (!p->tok || !p->pos || !p->seq || !p->lg) {
                fprintf(stderr, "%s: out of memory\n", prog);
                return -ENOMEM;
        }
        return 0;
}

static int forward(struct probe *p, uint32_t n, float *out)
{
        struct sl_error err = {0};
        struct engine_batch b = {.n_tokens = n, .token = p->tok, .pos = p->pos, .seq = p->seq, .logits = p->lg};
        int r = engine_forward(p->ctx, p->kv, &b, out, &err);
        if (r < 0)
                fprintf(stderr, "%s: %s: forward failed: %s\n", prog, p->path, err.msg);
        return r;
}

static int open_seq(struct probe *p, uint32_t n_pos)
{
        int s = engine_kv_seq_open(p->kv);
        if (s < 0 || engine_kv_seq_reserve(p->kv, s, n_pos) < 0) {
                fprintf(stderr, "%s: no KV space for a sequence of %u\n", prog, n_pos);
                if (s >= 0)
                        engine_kv_seq_close(p->kv, s);
                return -ENOSPC;
        }
        return s;
}

/* Runs ids as one batch in a fresh sequence; logits for every position (all) or the last. */
static int run_whole(struct probe *p, const int32_t *ids, uint32_t n, bool all, float *out, int *seq_out)
{
        int s = open_seq(p, n);
        if (s < 0)
                return s;
        for (uint32_t i = 0; i < n; i++) {
                p->tok[i] = ids[i];
                p->pos[i] = (int32_t)i;
                p->seq[i] = s;
                p->lg[i] = all || i == n - 1;
        }
        int r = forward(p, n, out);
        if (seq_out && r >= 0)
                *seq_out = s;
        else
                engine_kv_seq_close(p->kv, s);
        return r;
}

static int32_t argmax(const float *l, uint32_t n)
{
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (l[i] > l[best] || (isnan(l[best]) && !isnan(l[i])))
                        best = i;
        return (int32_t)best;
}

/* ---- modes ---- */

static int mode_logits(struct probe *p, uint32_t n_threads, const char *out_path)
{
        struct seqs in;
        float *buf = NULL;
        FILE *f = NULL;
        int rc = 1;
        if (read_seqs(&in, p->n_vocab) < 0)
                return 1;
        if (probe_engine(p, n_threads, 1, in.max_len, in.max_len) < 0)
                goto out;
        buf = malloc((size_t)in.max_len * p->n_vocab * sizeof(*buf));
        if (!buf) {
                fprintf(stderr, "%s: out of memory for %u x %u logits\n", prog, in.max_len, p->n_vocab);
                goto out;
        }
        f = fopen(out_path, "wb");
        if (!f) {
                fprintf(stderr, "%s: %s: %s\n", prog, out_path, strerror(errno));
                goto out;
        }
        printf("n_vocab %u\n", p->n_vocab);
        for (size_t i = 0; i < in.n; i++) {
                if (run_whole(p, in.ids[i], in.len[i], true, buf, NULL) < 0)
                        goto out;
                /* x86 is little-endian, so the floats go out as they are */
                size_t cnt = (size_t)in.len[i] * p->n_vocab;
                if (fwrite(buf, sizeof(*buf), cnt, f) != cnt) {
                        fprintf(stderr, "%s: %s: write failed: %s\n", prog, out_path, strerror(errno));
                        goto out;
                }
                printf("seq %zu %u\n", i, in.len[i]);
        }
        if (fclose(f) != 0) {
                f = NULL;
                fprintf(stderr, "%s: %s: %s\n", prog, out_path, strerror(errno));
                goto out;
        }
        f = NULL;
        rc = 0;
out:
        if (f)
                fclose(f);
        free(buf);
        seqs_free(&in);
        return rc;
}

static int mode_greedy(struct probe *p, uint32_t n_threads, long n_gen)
{
        struct seqs in;
        float *logits = NULL;
        int rc = 1;
        if (read_seqs(&in, p->n_vocab) < 0)
                return 1;
        if (probe_engine(p, n_threads, 1, in.max_len + (uint32_t)n_gen, in.max_len) < 0)
                goto out;
        logits = malloc((size_t)p->n_vocab * sizeof(*logits));
        if (!logits)
                goto out;
        for (size_t i = 0; i < in.n; i++) {
                uint32_t n = in.len[i];
                int s = open_seq(p, n + (uint32_t)n_gen);
                if (s < 0)
                        goto out;
                for (uint32_t j = 0; j < n; j++) {
                        p->tok[j] = in.ids[i][j];
                        p->pos[j] = (int32_t)j;
                        p->seq[j] = s;
                        p->lg[j] = j == n - 1;
                }
                if (forward(p, n, logits) < 0)
                        goto out;
                for (long k = 0; k < n_gen; k++) {
                        int32_t id = argmax(logits, p->n_vocab);
                        printf(k ? " %d" : "%d", id);
                        if (k + 1 == n_gen)
                                break;
                        p->tok[0] = id;
                        p->pos[0] = (int32_t)(n + (uint32_t)k);
                        p->seq[0] = s;
                        p->lg[0] = 1;
                        if (forward(p, 1, logits) < 0)
                                goto out;
                }
                printf("\n");
                fflush(stdout);
                engine_kv_seq_close(p->kv, s);
        }
        rc = 0;
out:
        free(logits);
        seqs_free(&in);
        return rc;
}

/* Every sequence alone (one batch each) is the reference; then all of them at once, each
 * step taking a differently sized chunk from every sequence still running, so the same
 * token meets different neighbours, batch sizes and chunk boundaries. */
static int mode_batch(struct probe *p, uint32_t n_threads)
{
        struct seqs in;
        float *ref = NULL, *got = NULL;
        uint64_t *off = NULL;
        uint32_t *done = NULL;
        int *slot = NULL;
        int rc = 1;
        if (read_seqs(&in, p->n_vocab) < 0)
                return 1;
        const uint32_t max_chunk = 5;
        uint32_t max_tokens = SL_MAX(in.max_len, max_chunk * (uint32_t)in.n);
        if (probe_engine(p, n_threads, (uint32_t)in.n, in.max_len, max_tokens) < 0)
                goto out;
        ref = malloc(in.total * p->n_vocab * sizeof(*ref));
        got = malloc((size_t)max_tokens * p->n_vocab * sizeof(*got));
        off = malloc(in.n * sizeof(*off));
        done = calloc(in.n, sizeof(*done));
        slot = malloc(in.n * sizeof(*slot));
        if (!ref || !got || !off || !done || !slot) {
                fprintf(stderr, "%s: out of memory for %" PRIu64 " x %u reference logits\n", prog, in.total,
                        p->n_vocab);
                goto out;
        }
        uint64_t o = 0;
        for (size_t i = 0; i < in.n; i++) {
                off[i] = o;
                if (run_whole(p, in.ids[i], in.len[i], true, ref + o * p->n_vocab, NULL) < 0)
                        goto out;
                o += in.len[i];
        }
        for (size_t i = 0; i < in.n; i++)
                if ((slot[i] = open_seq(p, in.len[i])) < 0)
                        goto out;

        uint64_t n_diff = 0, n_cmp = 0;
        double max_diff = 0.0;
        for (uint32_t step = 0;; step++) {
                uint32_t n = 0;
                for (size_t i = 0; i < in.n; i++) {
                        uint32_t want = 1 + (step * 7 + (uint32_t)i * 3) % max_chunk;
                        uint32_t take = SL_MIN(want, in.len[i] - done[i]);
                        for (uint32_t j = 0; j < take; j++, n++) {
                                p->tok[n] = in.ids[i][done[i] + j];
                                p->pos[n] = (int32_t)(done[i] + j);
                                p->seq[n] = slot[i];
                                p->lg[n] = 1;
                        }
                }
                if (n == 0)
                        break;
                if (forward(p, n, got) < 0)
                        goto out;
                uint32_t row = 0;
                for (size_t i = 0; i < in.n; i++) {
                        uint32_t want = 1 + (step * 7 + (uint32_t)i * 3) % max_chunk;
                        uint32_t take = SL_MIN(want, in.len[i] - done[i]);
                        for (uint32_t j = 0; j < take; j++, row++) {
                                const float *a = ref + (off[i] + done[i] + j) * p->n_vocab;
                                const float *b = got + (size_t)row * p->n_vocab;
                                for (uint32_t v = 0; v < p->n_vocab; v++) {
                                        n_cmp++;
                                        if (memcmp(&a[v], &b[v], sizeof(float)) != 0) {
                                                n_diff++;
                                                double d = fabs((double)a[v] - (double)b[v]);
                                                if (!(d <= max_diff))
                                                        max_diff = d;
                                        }
                                }
                        }
                        done[i] += take;
                }
        }
        printf("sequences %zu tokens %" PRIu64 " logits compared %" PRIu64 " differing %" PRIu64
               " max_abs_diff %g\n", in.n, in.total, n_cmp, n_diff, max_diff);
        if (n_diff) {
                fprintf(stderr, "%s: batch invariance broken: %" PRIu64 " of %" PRIu64
                        " logits differ (max |diff| %g)\n", prog, n_diff, n_cmp, max_diff);
                goto out;
        }
        rc = 0;
out:
        free(ref);
        free(got);
        free(off);
        free(done);
        free(slot);
        seqs_free(&in);
        return rc;
}

static int unhex(char *s, size_t *len)
{
        size_t n = 0, i = 0;
        while (s[i] && s[i] != '\n' && s[i] != '\r') {
                const int hi = cli_hexval(s[i]), lo = s[i + 1] ? cli_hexval(s[i + 1]) : -1;
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                s[n++] = (char)(hi * 16 + lo);
                i += 2;
        }
        *len = n;
        return 0;
}

static void put_hex(const char *b, size_t n)
{
        for (size_t i = 0; i < n; i++)
                printf("%02x", (unsigned char)b[i]);
}

static int tokenize_one(const struct engine_tokenizer *t, const char *text, size_t len, bool add_special,
                        bool parse_special)
{
        size_t cap = len + 16, needed = 0;
        int32_t *ids = malloc(cap * sizeof(*ids));
        if (!ids)
                return -ENOMEM;
        int r = engine_tokenize(t, text, len, add_special, parse_special, ids, cap, &needed);
        if (r == -ENOSPC && needed > cap) {
                free(ids);
                cap = needed;
                ids = malloc(cap * sizeof(*ids));
                if (!ids)
                        return -ENOMEM;
                r = engine_tokenize(t, text, len, add_special, parse_special, ids, cap, &needed);
        }
        for (int i = 0; i < r; i++)
                printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
        return r < 0 ? r : 0;
}

static int mode_tokenize(const struct engine_tokenizer *t, bool hex, bool add_special, bool parse_special)
{
        char *buf = NULL;
        size_t cap = 0, len = 0;
        int rc = 1, r;
        if (hex) {
                ssize_t got;
                size_t lineno = 0;
                while ((got = getline(&buf, &cap, stdin)) >= 0) {
                        lineno++;
                        if (unhex(buf, &len) < 0) {
                                fprintf(stderr, "%s: input line %zu: not hex\n", prog, lineno);
                                goto out;
                        }
                        if ((r = tokenize_one(t, buf, len, add_special, parse_special)) < 0) {
                                fprintf(stderr, "%s: input line %zu: tokenize: %s\n", prog, lineno, strerror(-r));
                                goto out;
                        }
                }
        } else {
                for (;;) {
                        if (cap - len < 4096) {
                                char *nb = realloc(buf, cap ? cap * 2 : 65536);
                                if (!nb)
                                        goto out;
                                buf = nb;
                                cap = cap ? cap * 2 : 65536;
                        }
                        size_t got = fread(buf + len, 1, cap - len, stdin);
                        if (got == 0)
                                break;
                        len += got;
                }
                if ((r = tokenize_one(t, buf ? buf : "", len, add_special, parse_special)) < 0) {
                        fprintf(stderr, "%s: tokenize: %s\n", prog, strerror(-r));
                        goto out;
                }
        }
        rc = 0;
out:
        free(buf);
        return rc;
}

static int mode_detokenize(const struct engine_tokenizer *t, bool hex, bool render_special, bool stream)
{
        struct seqs in;
        char piece[1024];
        int rc = 1;
        if (read_seqs(&in, engine_tokenizer_n_vocab(t)) < 0)
                return 1;
        for (size_t i = 0; i < in.n; i++) {
                struct engine_detok d;
                engine_detok_init(&d);
                for (uint32_t j = 0; j < in.len[i]; j++) {
                        int r = stream ? engine_detok_push(t, &d, in.ids[i][j], piece, sizeof(piece))
                                       : engine_token_to_piece(t, in.ids[i][j], render_special, piece, sizeof(piece));
                        if (r < 0 || (size_t)r > sizeof(piece)) {
                                fprintf(stderr, "%s: line %zu: token %d has no piece (%d)\n", prog, i + 1,
                                        in.ids[i][j], r);
                                goto out;
                        }
                        if (hex)
                                put_hex(piece, (size_t)r);
                        else
                                fwrite(piece, 1, (size_t)r, stdout);
                }
                if (stream) {
                        int r = engine_detok_flush(&d, piece, sizeof(piece));
                        if (r > 0) {
                                if (hex)
                                        put_hex(piece, (size_t)r);
                                else
                                        fwrite(piece, 1, (size_t)r, stdout);
                        }
                }
                printf("\n");
        }
        rc = 0;
out:
        seqs_free(&in);
        return rc;
}

static int mode_load(struct probe *p)
{
        const struct engine_load_stats *s = engine_model_load_stats(p->m);
        const struct engine_hparams *hp = engine_model_hparams(p->m);
        printf("{\"arch\": \"%s\", \"n_vocab\": %u, \"n_params\": %" PRIu64 ", \"weight_bytes\": %" PRIu64
               ", \"bytes\": %" PRIu64 ", \"ns\": %" PRIu64 ", \"direct_io\": %s, \"gb_per_s\": %.4f}\n",
               hp->arch_name, hp->n_vocab, hp->n_params, hp->weight_bytes, s->bytes, s->ns,
               s->direct_io ? "true" : "false", s->ns ? (double)s->bytes / (double)s->ns : 0.0);
        return 0;
}

/* ---- main ---- */

enum { OPT_NO_ADD = 256, OPT_NO_PARSE, OPT_RENDER, OPT_STREAM, OPT_NO_DIRECT };

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"model", required_argument, 0, 'm'},
                {"threads", required_argument, 0, 't'},
                {"output", required_argument, 0, 'o'},
                {"n-predict", required_argument, 0, 'n'},
                {"hex", no_argument, 0, 'x'},
                {"no-add-special", no_argument, 0, OPT_NO_ADD},
                {"no-parse-special", no_argument, 0, OPT_NO_PARSE},
                {"render-special", no_argument, 0, OPT_RENDER},
                {"stream", no_argument, 0, OPT_STREAM},
                {"no-direct", no_argument, 0, OPT_NO_DIRECT},
                {"help", no_argument, 0, 'h'},
                {0, 0, 0, 0},
        };
        cli_init(prog);
        if (argc >= 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
                usage(stdout);
                return 0;
        }
        if (argc < 2 || argv[1][0] == '-')
                cli_usage_error("%s", "no mode given (logits, greedy, batch, tokenize, detokenize, load)");
        const char *mode = argv[1];
        const char *model = NULL, *out_path = NULL;
        long threads = 0, n_gen = -1;
        bool hex = false, add_special = true, parse_special = true, render_special = false, stream = false,
             no_direct = false;
        int c;
        opterr = 0;
        optind = 2;
        while ((c = getopt_long(argc, argv, ":m:t:o:n:xh", longopts, NULL)) != -1) {
                switch (c) {
                case 'm': model = optarg; break;
                case 't': threads = cli_parse_long(optarg, "-t", 1, 1024); break;
                case 'o': out_path = optarg; break;
                case 'n': n_gen = cli_parse_long(optarg, "-n", 1, 1 << 20); break;
                case 'x': hex = true; break;
                case OPT_NO_ADD: add_special = false; break;
                case OPT_NO_PARSE: parse_special = false; break;
                case OPT_RENDER: render_special = true; break;
                case OPT_STREAM: stream = true; break;
                case OPT_NO_DIRECT: no_direct = true; break;
                case 'h': usage(stdout); return 0;
                case ':': cli_bad_option(argv, optind, optopt, 1);
                default: cli_bad_option(argv, optind, optopt, 0);
                }
        }
        if (optind < argc)
                cli_usage_error("unexpected argument '%s'", argv[optind]);
        if (!model)
                cli_usage_error("%s", "no model given (-m GGUF)");

        if (!strcmp(mode, "tokenize") || !strcmp(mode, "detokenize")) {
                struct gguf_file *g = NULL;
                struct engine_tokenizer *t = NULL;
                struct sl_error err = {0};
                int r = gguf_open(model, &g, &err);
                if (r >= 0)
                        r = engine_tokenizer_create(g, &t, &err);
                if (r < 0) {
                        fprintf(stderr, "%s: %s: %s\n", prog, model, err.msg[0] ? err.msg : strerror(-r));
                        gguf_close(g);
                        return 1;
                }
                int rc = mode[0] == 't' ? mode_tokenize(t, hex, add_special, parse_special)
                                        : mode_detokenize(t, hex, render_special, stream);
                engine_tokenizer_free(t);
                gguf_close(g);
                return rc;
        }

        int rc;
        bool known = !strcmp(mode, "logits") || !strcmp(mode, "greedy") || !strcmp(mode, "batch") ||
                     !strcmp(mode, "load");
        if (!known)
                cli_usage_error("unknown mode '%s'", mode);
        if (!strcmp(mode, "logits") && !out_path)
                cli_usage_error("%s", "logits mode needs -o FILE");
        if (!strcmp(mode, "greedy") && n_gen < 1)
                cli_usage_error("%s", "greedy mode needs -n N");

        struct probe p = {0};
        if (probe_load(&p, model, no_direct) < 0) {
                rc = 1;
        } else if (!strcmp(mode, "logits")) {
                rc = mode_logits(&p, (uint32_t)threads, out_path);
        } else if (!strcmp(mode, "greedy")) {
                rc = mode_greedy(&p, (uint32_t)threads, n_gen);
        } else if (!strcmp(mode, "batch")) {
                rc = mode_batch(&p, (uint32_t)threads);
        } else {
                rc = mode_load(&p);
        }
        probe_free(&p);
        fflush(stdout);
        return rc;
}
