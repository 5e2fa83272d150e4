/* sluice-run — offline generation from a GGUF model on the CPU, llama.cpp style: load
 * (with a progress bar on a terminal), tokenize the prompt, prefill it in chunks, then
 * sample and stream text to stdout; timings go to stderr.
 * Exit codes: 0 done, 1 model or run error, 2 usage error. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "sluice_config.h"

#define PREFILL_CHUNK 256u
#define DEFAULT_CTX 4096u

static const char *prog = "sluice-run";

static void usage(FILE *f)
{
        fprintf(f,
                "usage: %s -m MODEL (-p PROMPT | -f FILE) [options]\n"
                "\n"
                "  -m, --model FILE         GGUF model\n"
                "  -p, --prompt TEXT        prompt text\n"
                "  -f, --file FILE          read the prompt from FILE\n"
                "  -e, --escape             process \\n \\t \\\\ \\\" \\' \\xHH escapes in the prompt\n"
                "  -n, --n-predict N        tokens to generate (default 128; -1: until EOG or context end)\n"
                "      --temp T             temperature (default 0.8; 0: greedy)\n"
                "      --top-k K            top-k (default 40; 0: off)\n"
                "      --top-p P            top-p (default 0.95; 1: off)\n"
                "      --min-p P            min-p (default 0.05; 0: off)\n"
                "      --repeat-penalty R   repeat penalty (default 1.0: off)\n"
                "      --repeat-last-n N    tokens the penalties look back over (default 64; -1: all)\n"
                "      --presence-penalty P presence penalty (default 0)\n"
                "      --frequency-penalty P frequency penalty (default 0)\n"
                "  -s, --seed S             sampling seed (default: from the clock)\n"
                "  -t, --threads N          CPU threads (default: online CPUs)\n"
                "  -c, --ctx N              context length (default min(%u, the model's))\n"
                "      --no-bos             do not add the BOS token\n"
                "      --no-direct          buffered reads instead of O_DIRECT\n"
                "      --no-display-prompt  do not echo the prompt\n"
                "  -h, --help               this text\n"
                "      --version            print the version\n",
                prog, DEFAULT_CTX);
}

/* In place; returns the new length (escapes only shrink). */
static size_t unescape(char *s, size_t len)
{
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                if (s[i] != '\\' || i + 1 == len) {
                        s[o++] = s[i];
                        continue;
                }
                char c = s[++i];
                switch (c) {
                case 'n': s[o++] = '\n'; break;
                case 't': s[o++] = '\t'; break;
                case 'r': s[o++] = '\r'; break;
                case '\\': s[o++] = '\\'; break;
                case '"': s[o++] = '"'; break;
                case '\'': s[o++] = '\''; break;
                case 'x':
                        if (i + 2 < len && cli_hexval(s[i + 1]) >= 0 && cli_hexval(s[i + 2]) >= 0) {
                                s[o++] = (char)(cli_hexval(s[i + 1]) * 16 + cli_hexval(s[i + 2]));
                                i += 2;
                                break;
                        }
                        /* fall through */
                default:
                        s[o++] = '\\';
                        s[o++] = c;
                }
        }
        return o;
}

static char *read_file(const char *path, size_t *len)
{
        FILE *f = fopen(path, "rb");
        char *buf = NULL;
        size_t n = 0, cap = 0;
        if (!f)
                return NULL;
        for (;;) {
                if (cap - n < 65536) {
                        size_t ncap = cap ? cap * 2 : 65536;
                        char *nb = realloc(buf, ncap + 1);
                        if (!nb) {
                                free(buf);
                                fclose(f);
                                errno = ENOMEM;
                                return NULL;
                        }
                        buf = nb;
                        cap = ncap;
                }
                size_t got = fread(buf + n, 1, cap - n, f);
                n += got;
                if (got == 0)
                        break;
        }
        if (ferror(f)) {
                free(buf);
                fclose(f);
                errno = EIO;
                return NULL;
        }
        fclose(f);
        buf[n] = 0;
        *len = n;
        return buf;
}

/* ---- load progress ---- */

struct progress {
        bool tty;
        int last;
};

static void on_progress(void *user, const struct engine_load_progress *p)
{
        struct progress *pr = user;
        if (!pr->tty || p->total == 0)
                return;
        int pct = (int)(p->done * 100 / p->total);
        if (pct == pr->last)
                return;
        pr->last = pct;
        int bar = pct * 40 / 100;
        fprintf(stderr, "\rloading [%.*s%*s] %3d%% %.1f/%.1f MiB", bar,
                "########################################", 40 - bar, "", pct,
                (double)p->done / (1 << 20), (double)p->total / (1 << 20));
        if (p->done >= p->total)
                fputc('\n', stderr);
        fflush(stderr);
}

/* ---- main ---- */

enum {
        OPT_TEMP = 256, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_REPEAT, OPT_REPEAT_N, OPT_PRESENCE,
        OPT_FREQUENCY, OPT_NO_BOS, OPT_NO_DIRECT, OPT_NO_DISPLAY, OPT_VERSION,
};

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"model", required_argument, 0, 'm'},
                {"prompt", required_argument, 0, 'p'},
                {"file", required_argument, 0, 'f'},
                {"escape", no_argument, 0, 'e'},
                {"n-predict", required_argument, 0, 'n'},
                {"temp", required_argument, 0, OPT_TEMP},
                {"top-k", required_argument, 0, OPT_TOP_K},
                {"top-p", required_argument, 0, OPT_TOP_P},
                {"min-p", required_argument, 0, OPT_MIN_P},
                {"repeat-penalty", required_argument, 0, OPT_REPEAT},
                {"repeat-last-n", required_argument, 0, OPT_REPEAT_N},
                {"presence-penalty", required_argument, 0, OPT_PRESENCE},
                {"frequency-penalty", required_argument, 0, OPT_FREQUENCY},
                {"seed", required_argument, 0, 's'},
                {"threads", required_argument, 0, 't'},
                {"ctx", required_argument, 0, 'c'},
                {"ctx-size", required_argument, 0, 'c'},
                {"no-bos", no_argument, 0, OPT_NO_BOS},
                {"no-direct", no_argument, 0, OPT_NO_DIRECT},
                {"no-display-prompt", no_argument, 0, OPT_NO_DISPLAY},
                {"help", no_argument, 0, 'h'},
                {"version", no_argument, 0, OPT_VERSION},
                {0, 0, 0, 0},
        };
        cli_init(prog);
        const char *model_path = NULL, *prompt_arg = NULL, *prompt_file = NULL;
        bool escape = false, no_bos = false, no_direct = false, display_prompt = true, seed_set = false;
        long n_predict = 128, n_threads = 0, n_ctx = 0;
        struct engine_sampling sp;
        engine_sampling_defaults(&sp);

        opterr = 0;
        int c;
        while ((c = getopt_long(argc, argv, ":m:p:f:en:s:t:c:h", longopts, NULL)) != -1) {
                switch (c) {
                case 'm': model_path = optarg; break;
                case 'p': prompt_arg = optarg; break;
                case 'f': prompt_file = optarg; break;
                case 'e': escape = true; break;
                case 'n': n_predict = cli_parse_long(optarg, "-n", -1, INT32_MAX); break;
                case OPT_TEMP: sp.temperature = cli_parse_float(optarg, "--temp"); break;
                case OPT_TOP_K: sp.top_k = (int32_t)cli_parse_long(optarg, "--top-k", 0, INT32_MAX); break;
                case OPT_TOP_P: sp.top_p = cli_parse_float(optarg, "--top-p"); break;
                case OPT_MIN_P: sp.min_p = cli_parse_float(optarg, "--min-p"); break;
                case OPT_REPEAT: sp.repeat_penalty = cli_parse_float(optarg, "--repeat-penalty"); break;
                case OPT_REPEAT_N:
                        sp.penalty_last_n = (int32_t)cli_parse_long(optarg, "--repeat-last-n", -1, INT32_MAX);
                        break;
                case OPT_PRESENCE: sp.presence_penalty = cli_parse_float(optarg, "--presence-penalty"); break;
                case OPT_FREQUENCY: sp.frequency_penalty = cli_parse_float(optarg, "--frequency-penalty"); break;
                case 's': sp.seed = cli_parse_u64(optarg, "--seed"); seed_set = true; break;
                case 't': n_threads = cli_parse_long(optarg, "-t", 1, 1024); break;
                case 'c': n_ctx = cli_parse_long(optarg, "--ctx", 1, INT32_MAX); break;
                case OPT_NO_BOS: no_bos = true; break;
                case OPT_NO_DIRECT: no_direct = true; break;
                case OPT_NO_DISPLAY: display_prompt = false; break;
                case 'h': usage(stdout); return 0;
                case OPT_VERSION: printf("sluice-run %s\n", SLUICE_VERSION); return 0;
                case ':': cli_bad_option(argv, optind, optopt, 1);
                default: cli_bad_option(argv, optind, optopt, 0);
                }
        }
        if (optind < argc)
                cli_usage_error("unexpected argument '%s'", argv[optind]);
        if (!model_path)
                cli_usage_error("%s", "no model given (-m MODEL)");
        if (!prompt_arg && !prompt_file)
                cli_usage_error("%s", "no prompt given (-p PROMPT or -f FILE)");
        if (prompt_arg && prompt_file)
                cli_usage_error("%s", "-p and -f both given; pick one");

        struct sl_error err = {0};
        if (engine_sampling_validate(&sp, &err) < 0)
                cli_usage_error("%s", err.msg);
        if (!seed_set)
                sp.seed = sl_now_ns();

        int rc = 1;
        char *prompt = NULL;
        size_t prompt_len = 0;
        int32_t *ids = NULL;
        float *logits = NULL;
        int32_t *b_tok = NULL, *b_pos = NULL, *b_seq = NULL;
        uint8_t *b_lg = NULL;
        struct engine_model *m = NULL;
        struct engine_kv *kv = NULL;
        struct engine_ctx *ctx = NULL;
        struct engine_sampler *smp = NULL;

        if (prompt_file) {
                prompt = read_file(prompt_file, &prompt_len);
                if (!prompt) {
                        fprintf(stderr, "%s: %s: %s\n", prog, prompt_file, strerror(errno));
                        goto out;
                }
        } else {
                prompt_len = strlen(prompt_arg);
                prompt = strdup(prompt_arg);
                if (!prompt) {
                        fprintf(stderr, "%s: out of memory\n", prog);
                        goto out;
                }
        }
        if (escape)
                prompt_len = unescape(prompt, prompt_len);

        /* ---- load ---- */
        struct progress pr = {.tty = isatty(STDERR_FILENO), .last = -1};
        struct engine_load_opts lo = {.progress = on_progress, .progress_user = &pr};
        lo.reader.no_direct = no_direct;
        uint64_t t0 = sl_now_ns();
        int r = engine_model_load(model_path, &lo, &m, &err);
        if (r < 0) {
                if (pr.tty && pr.last >= 0)
                        fputc('\n', stderr);
                fprintf(stderr, "%s: %s: %s\n", prog, model_path, err.msg[0] ? err.msg : strerror(-r));
                goto out;
        }
        uint64_t t_load = sl_now_ns() - t0;
        const struct engine_hparams *hp = engine_model_hparams(m);
        const struct engine_tokenizer *tok = engine_model_tokenizer(m);
        const uint32_t n_vocab = hp->n_vocab;

        uint32_t ctx_len = (uint32_t)n_ctx;
        if (!ctx_len)
                ctx_len = hp->n_ctx_train && hp->n_ctx_train < DEFAULT_CTX ? hp->n_ctx_train : DEFAULT_CTX;

        /* ---- tokenize ---- */
        size_t need = prompt_len + 8;
        for (;;) {
                ids = malloc(need * sizeof(*ids));
                if (!ids) {
                        fprintf(stderr, "%s: out of memory for %zu prompt tokens\n", prog, need);
                        goto out;
                }
                size_t needed = 0;
                r = engine_tokenize(tok, prompt, prompt_len, true, true, ids, need, &needed);
                if (r == -ENOSPC && needed > need) {
                        free(ids);
                        ids = NULL;
                        need = needed;
                        continue;
                }
                break;
        }
        if (r < 0) {
                fprintf(stderr, "%s: %s: cannot tokenize the prompt: %s\n", prog, model_path, strerror(-r));
                goto out;
        }
        size_t n_prompt = (size_t)r;
        const int32_t bos = engine_token_bos(tok);
        if (no_bos && n_prompt > 0 && bos >= 0 && ids[0] == bos) {
                memmove(ids, ids + 1, (n_prompt - 1) * sizeof(*ids));
                n_prompt--;
        }
        if (n_prompt == 0) {
                fprintf(stderr, "%s: the prompt gives no tokens\n", prog);
                goto out;
        }
        if (n_prompt >= ctx_len) {
                fprintf(stderr, "%s: the prompt is %zu tokens, longer than the context of %u (raise --ctx)\n",
                        prog, n_prompt, ctx_len);
                goto out;
        }

        /* ---- engine state ---- */
        struct engine_kv_opts ko = {.block_size = 16, .max_seqs = 1, .max_seq_len = ctx_len};
        ko.n_blocks = (ctx_len + ko.block_size - 1) / ko.block_size;
        if ((r = engine_kv_create(m, &ko, &kv, &err)) < 0 ||
            (r = engine_ctx_create(m, (uint32_t)n_threads, PREFILL_CHUNK, &ctx, &err)) < 0 ||
            (r = engine_sampler_create(&sp, n_vocab, &smp, &err)) < 0) {
                fprintf(stderr, "%s: %s: %s\n", prog, model_path, err.msg);
                goto out;
        }
        int seq = engine_kv_seq_open(kv);
        if (seq < 0 || (r = engine_kv_seq_reserve(kv, seq, ctx_len)) < 0) {
                fprintf(stderr, "%s: %s: no KV space for a context of %u\n", prog, model_path, ctx_len);
                goto out;
        }
        logits = malloc((size_t)n_vocab * sizeof(*logits));
        b_tok = malloc(PREFILL_CHUNK * sizeof(*b_tok));
        b_pos = malloc(PREFILL_CHUNK * sizeof(*b_pos));
        b_seq = malloc(PREFILL_CHUNK * sizeof(*b_seq));
        b_lg = malloc(PREFILL_CHUNK);
        if (!logits || !b_tok || !b_pos || !b_seq || !b_lg) {
                fprintf(stderr, "%s: out of memory\n", prog);
                goto out;
        }
        for (uint32_t i = 0; i < PREFILL_CHUNK; i++)
                b_seq[i] = seq;

        if (display_prompt) {
                fwrite(prompt, 1, prompt_len, stdout);
                fflush(stdout);
        }

        /* ---- prefill ---- */
        uint64_t t_p0 = sl_now_ns();
        for (size_t done = 0; done < n_prompt;) {
                uint32_t n = (uint32_t)SL_MIN((size_t)PREFILL_CHUNK, n_prompt - done);
                for (uint32_t i = 0; i < n; i++) {
                        b_tok[i] = ids[done + i];
                        b_pos[i] = (int32_t)(done + i);
                        b_lg[i] = done + i == n_prompt - 1;
                }
                struct engine_batch b = {.n_tokens = n, .token = b_tok, .pos = b_pos, .seq = b_seq, .logits = b_lg};
                r = engine_forward(ctx, kv, &b, logits, &err);
                if (r < 0) {
                        fprintf(stderr, "\n%s: %s: prompt evaluation failed: %s\n", prog, model_path, err.msg);
                        goto out;
                }
                done += n;
        }
        uint64_t t_prompt = sl_now_ns() - t_p0;
        for (size_t i = 0; i < n_prompt; i++)
                engine_sampler_accept(smp, ids[i]);

        /* ---- generate ---- */
        struct engine_detok dt;
        engine_detok_init(&dt);
        char text[512];
        /* The output continues the prompt, so the detokenizer must see the prompt first:
         * otherwise it would strip the first generated piece's leading space as if it
         * started the text. Its output here is the prompt, already shown. */
        for (size_t i = 0; i < n_prompt; i++)
                (void)engine_detok_push(tok, &dt, ids[i], text, sizeof(text));
        uint32_t pos = (uint32_t)n_prompt;
        long n_gen = 0;
        const char *stop = "length";
        uint64_t t_g0 = sl_now_ns();
        while (n_predict < 0 || n_gen < n_predict) {
                int32_t id = engine_sampler_sample(smp, logits);
                if (engine_token_is_eog(tok, id)) {
                        stop = "end of generation";
                        break;
                }
                engine_sampler_accept(smp, id);
                n_gen++;
                int w = engine_detok_push(tok, &dt, id, text, sizeof(text));
                if (w > 0) {
                        fwrite(text, 1, (size_t)w, stdout);
                        fflush(stdout);
                }
                if (n_predict >= 0 && n_gen >= n_predict)
                        break;
                if (pos >= ctx_len) {
                        stop = "context full";
                        break;
                }
                b_tok[0] = id;
                b_pos[0] = (int32_t)pos;
                b_lg[0] = 1;
                struct engine_batch b = {.n_tokens = 1, .token = b_tok, .pos = b_pos, .seq = b_seq, .logits = b_lg};
                r = engine_forward(ctx, kv, &b, logits, &err);
                if (r < 0) {
                        fprintf(stderr, "\n%s: %s: decoding failed at position %u: %s\n", prog, model_path, pos,
                                err.msg);
                        goto out;
                }
                pos++;
        }
        uint64_t t_gen = sl_now_ns() - t_g0;
        int w = engine_detok_flush(&dt, text, sizeof(text));
        if (w > 0)
                fwrite(text, 1, (size_t)w, stdout);
        fputc('\n', stdout);
        fflush(stdout);

        /* ---- report ---- */
        const struct engine_load_stats *ls = engine_model_load_stats(m);
        double load_s = (double)t_load / 1e9;
        double read_gbs = ls->ns ? (double)ls->bytes / (double)ls->ns : 0.0; /* bytes/ns == GB/s */
        fprintf(stderr, "\n%s: model: %s (%s, %u layers, %.1f M params)\n", prog,
                hp->name[0] ? hp->name : model_path, hp->arch_name, hp->n_layer, (double)hp->n_params / 1e6);
        fprintf(stderr, "%s: load: %.3f s total, %.1f MB of weights read in %.3f s = %.2f GB/s (%s)\n", prog,
                load_s, (double)ls->bytes / 1e6, (double)ls->ns / 1e9, read_gbs,
                ls->direct_io ? "O_DIRECT" : "buffered, no O_DIRECT");
        fprintf(stderr, "%s: prompt: %zu tokens in %.3f s = %.2f tokens/s\n", prog, n_prompt,
                (double)t_prompt / 1e9, t_prompt ? (double)n_prompt * 1e9 / (double)t_prompt : 0.0);
        /* The first generated token comes from the prefill's logits, so n_gen tokens took
         * n_gen - 1 decode steps (plus n_gen samplings); the rate is steps per second. */
        long steps = n_gen > 0 ? n_gen - 1 : 0;
        fprintf(stderr, "%s: generation: %ld tokens, %ld decode steps in %.3f s = %.2f tokens/s (stop: %s)\n",
                prog, n_gen, steps, (double)t_gen / 1e9,
                t_gen && steps ? (double)steps * 1e9 / (double)t_gen : 0.0, stop);
        rc = 0;
out:
        engine_sampler_free(smp);
        engine_ctx_free(ctx);
        engine_kv_free(kv);
        engine_model_free(m);
        free(logits);
        free(b_tok);
        free(b_pos);
        free(b_seq);
        free(b_lg);
        free(ids);
        free(prompt);
        return rc;
}
