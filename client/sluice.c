/* sluice.c — the sluice CLI: generate (streaming text to stdout), info, ping, tokenize,
 * on top of libsluice. Messages go to stderr; exit codes are listed in --help. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_metrics.h"
#include "sluice.h"

enum { EXIT_OK = 0, EXIT_SERVER = 1, EXIT_USAGE = 2, EXIT_UNREACHABLE = 3, EXIT_BUSY = 4, EXIT_AUTH = 5 };

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: sluice [OPTIONS] COMMAND [ARGS]\n"
                "Client of the sluice inference server.\n"
                "\n"
                "Commands:\n"
                "  generate [-n N] [--temp T] [--top-k K] [--top-p P] [--seed S] PROMPT\n"
                "                        stream the generated text to stdout, usage on stderr\n"
                "  info                  the server's model, limits and version\n"
                "  ping                  round trip and load (queue depth, free KV blocks)\n"
                "  tokenize TEXT         the token ids of TEXT\n"
                "\n"
                "Options:\n"
                "  -n, --max-tokens N    tokens to generate at most (default: the server's)\n"
                "      --temp T          temperature (default 0.8; 0: greedy)\n"
                "      --top-k K         top-k (default 40; 0: off)\n"
                "      --top-p P         top-p (default 0.95; 1: off)\n"
                "      --min-p P         min-p (default 0.05; 0: off)\n"
                "      --seed S          sampler seed (default 0)\n"
                "      --stop STR        stop string (up to 8 times)\n"
                "      --deadline MS     server-side deadline for the request\n"
                "      --udp | --tcp     transport (default UDP)\n"
                "  -4 | -6               IPv4 or IPv6 only\n"
                "  -H, --host H          server host (default localhost)\n"
                "  -p, --port P          server port (default 7400)\n"
                "      --timeout MS      fail when the server says nothing for MS ms (default 30000)\n"
                "      --connect-timeout MS\n"
                "                        give up when the connection and the server's answer to HELLO\n"
                "                        take more than MS ms (default 5000, or --timeout if shorter)\n"
                "      --key-file PATH   sign every frame with a key from PATH (\"ID SECRET_HEX\" lines,\n"
                "                        mode 0600); default $SLUICE_KEY_FILE\n"
                "      --key-id ID       which key of the file (default $SLUICE_KEY_ID, else the lowest)\n"
                "      --tls             TLS 1.3 (implies --tcp); the server's certificate must be signed\n"
                "                        by a trusted CA and name the host\n"
                "      --tls-ca PATH     PEM file of the CA(s) to trust (default $SLUICE_TLS_CA, else the\n"
                "                        system's)\n"
                "      --tls-name NAME   the name the certificate must carry, sent as SNI (default: the host)\n"
                "      --tls-cert PATH   mutual TLS: this client's certificate (PEM)\n"
                "      --tls-key PATH    its private key (PEM; default: in --tls-cert)\n"
                "      --metrics H:P     info: also the server's dataplane counters (per transport, per\n"
                "                        DPDK lcore and queue, authentication) from its /metrics at H:P\n"
                "  -q, --quiet           no usage line after generate\n"
                "  -h, --help            this help\n"
                "  -V, --version         the version\n"
                "\n"
                "Exit codes:\n"
                "  0  success\n"
                "  1  the server answered with an error (or broke the protocol)\n"
                "  2  usage error\n"
                "  3  server unreachable, or timeout\n"
                "  4  server busy (BUSY, RATE_LIMITED, SHUTTING_DOWN): retry later\n"
                "  5  authentication refused, or the server's TLS certificate not accepted\n");
}

static int exit_code(int rc)
{
        switch (rc) {
        case 0:
                return EXIT_OK;
        case -EBUSY:
                return EXIT_BUSY;
        case -EACCES:
        case -EKEYREJECTED:
                return EXIT_AUTH;
        case -ETIMEDOUT:
        case -ECONNREFUSED:
        case -EHOSTUNREACH:
        case -ENETUNREACH:
        case -ECONNRESET:
        case -EPIPE:
        case -EADDRNOTAVAIL:
        case -EAFNOSUPPORT:
        case -ENOTCONN:
                return EXIT_UNREACHABLE;
        case -EINVAL:
        case -EMSGSIZE:
                return EXIT_USAGE;
        default:
                return EXIT_SERVER;
        }
}

static int usage_error(const char *fmt, const char *arg)
{
        fprintf(stderr, "sluice: ");
        fprintf(stderr, fmt, arg);
        fprintf(stderr, "\nTry 'sluice --help'.\n");
        return EXIT_USAGE;
}

static bool parse_num(const char *s, double lo, double hi, double *out)
{
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (errno || end == s || *end || !(v >= lo && v <= hi))
                return false;
        *out = v;
        return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
        char *end;
        errno = 0;
        if (*s == '-')
                return false;
        unsigned long long v = strtoull(s, &end, 0);
        if (errno || end == s || *end)
                return false;
        *out = v;
        return true;
}

static int on_chunk(void *user, const struct sluice_chunk *ch)
{
        (void)user;
        if (ch->text_len) {
                fwrite(ch->text, 1, ch->text_len, stdout);
                fflush(stdout);
        }
        return 0;
}

static int fail(int rc, const char *what, const char *msg)
{
        fprintf(stderr, "sluice: %s: %s\n", what, msg && msg[0] ? msg : strerror(-rc));
        return exit_code(rc);
}

enum { OPT_TEMP = 256, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_SEED, OPT_UDP, OPT_TCP, OPT_TIMEOUT, OPT_CONNECT_TIMEOUT, OPT_STOP,
       OPT_DEADLINE, OPT_KEY_FILE, OPT_KEY_ID, OPT_METRICS, OPT_TLS, OPT_TLS_CA, OPT_TLS_NAME, OPT_TLS_CERT, OPT_TLS_KEY };

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"max-tokens", required_argument, NULL, 'n'}, {"temp", required_argument, NULL, OPT_TEMP},
                {"top-k", required_argument, NULL, OPT_TOPK},  {"top-p", required_argument, NULL, OPT_TOPP},
                {"min-p", required_argument, NULL, OPT_MINP},  {"seed", required_argument, NULL, OPT_SEED},
                {"udp", no_argument, NULL, OPT_UDP},           {"tcp", no_argument, NULL, OPT_TCP},
                {"host", required_argument, NULL, 'H'},        {"port", required_argument, NULL, 'p'},
                {"timeout", required_argument, NULL, OPT_TIMEOUT}, {"stop", required_argument, NULL, OPT_STOP},
                {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
                {"deadline", required_argument, NULL, OPT_DEADLINE}, {"quiet", no_argument, NULL, 'q'},
                {"help", no_argument, NULL, 'h'},              {"version", no_argument, NULL, 'V'},
                {"key-file", required_argument, NULL, OPT_KEY_FILE}, {"key-id", required_argument, NULL, OPT_KEY_ID},
                {"metrics", required_argument, NULL, OPT_METRICS},
                {"tls", no_argument, NULL, OPT_TLS},           {"tls-ca", required_argument, NULL, OPT_TLS_CA},
                {"tls-name", required_argument, NULL, OPT_TLS_NAME},
                {"tls-cert", required_argument, NULL, OPT_TLS_CERT}, {"tls-key", required_argument, NULL, OPT_TLS_KEY},
                {NULL, 0, NULL, 0},
        };
        struct sluice_opts o;
        struct sluice_gen_params gp;
        const char *stops[8];
        size_t n_stop = 0;
        bool quiet = false, udp = false, connect_set = false;
        double v;
        uint64_t u;
        int opt;

        sluice_opts_init(&o);
        sluice_gen_params_init(&gp);
        const char *key_id = getenv("SLUICE_KEY_ID");
        const char *metrics = NULL;
        o.key_file = getenv("SLUICE_KEY_FILE");
        if (o.key_file && !o.key_file[0])
                o.key_file = NULL;
        o.tls_ca = getenv("SLUICE_TLS_CA");
        if (o.tls_ca && !o.tls_ca[0])
                o.tls_ca = NULL;
        while ((opt = getopt_long(argc, argv, "n:H:p:q46hV", longopts, NULL)) != -1) {
                switch (opt) {
                case 'n':
                        if (!parse_num(optarg, 1, 32768, &v))
                                return usage_error("bad --max-tokens '%s' (1..32768)", optarg);
                        gp.max_tokens = (uint32_t)v;
                        break;
                case OPT_TEMP:
                        if (!parse_num(optarg, 0, 100, &v))
                                return usage_error("bad --temp '%s'", optarg);
                        gp.temperature = (float)v;
                        break;
                case OPT_TOPK:
                        if (!parse_num(optarg, 0, 1e9, &v))
                                return usage_error("bad --top-k '%s'", optarg);
                        gp.top_k = (int32_t)v;
                        break;
                case OPT_TOPP:
                        if (!parse_num(optarg, 0, 1, &v))
                                return usage_error("bad --top-p '%s' (0..1)", optarg);
                        gp.top_p = (float)v;
                        break;
                case OPT_MINP:
                        if (!parse_num(optarg, 0, 1, &v))
                                return usage_error("bad --min-p '%s' (0..1)", optarg);
                        gp.min_p = (float)v;
                        break;
                case OPT_SEED:
                        if (!parse_u64(optarg, &u))
                                return usage_error("bad --seed '%s'", optarg);
                        gp.seed = u;
                        break;
                case OPT_UDP: o.transport = SLUICE_UDP, udp = true; break;
                case OPT_TCP: o.transport = SLUICE_TCP; break;
                case '4': o.family = SLUICE_AF_INET; break;
                case '6': o.family = SLUICE_AF_INET6; break;
                case 'H': o.host = optarg; break;
                case 'p':
                        if (!parse_num(optarg, 1, 65535, &v))
                                return usage_error("bad --port '%s'", optarg);
                        o.port = (uint16_t)v;
                        break;
                case OPT_TIMEOUT:
                        if (!parse_num(optarg, 1, 86400000, &v))
                                return usage_error("bad --timeout '%s' (ms)", optarg);
                        o.timeout_ms = (uint32_t)v;
                        break;
                case OPT_CONNECT_TIMEOUT:
                        if (!parse_num(optarg, 1, 86400000, &v))
                                return usage_error("bad --connect-timeout '%s' (ms)", optarg);
                        o.connect_timeout_ms = (uint32_t)v;
                        connect_set = true;
                        break;
                case OPT_STOP:
                        if (n_stop == 8)
                                return usage_error("at most 8 --stop strings%s", "");
                        stops[n_stop++] = optarg;
                        break;
                case OPT_DEADLINE:
                        if (!parse_num(optarg, 0, 4294967295.0, &v))
                                return usage_error("bad --deadline '%s' (ms)", optarg);
                        gp.deadline_ms = (uint32_t)v;
                        break;
                case OPT_KEY_FILE: o.key_file = optarg; break;
                case OPT_KEY_ID: key_id = optarg; break;
                case OPT_METRICS: metrics = optarg; break;
                case OPT_TLS: o.tls = true; break;
                case OPT_TLS_CA: o.tls_ca = optarg; break;
                case OPT_TLS_NAME: o.tls_server_name = optarg; break;
                case OPT_TLS_CERT: o.tls_cert = optarg; break;
                case OPT_TLS_KEY: o.tls_key = optarg; break;
                case 'q': quiet = true; break;
                case 'h': usage(stdout); return EXIT_OK;
                case 'V': printf("sluice %s (protocol %d)\n", sluice_version(), SLUICE_PROTOCOL_VERSION); return EXIT_OK;
                default: fprintf(stderr, "Try 'sluice --help'.\n"); return EXIT_USAGE;
                }
        }
        if (key_id && key_id[0]) {
                if (!parse_num(key_id, 1, 4294967295.0, &v))
                        return usage_error("bad --key-id '%s' (1..4294967295)", key_id);
                o.key_id = (uint32_t)v;
        }
        if (o.tls && udp)
                return usage_error("--tls is for TCP: drop --udp%s", "");
        if (o.tls)
                o.transport = SLUICE_TCP;
        if (!connect_set && o.connect_timeout_ms > o.timeout_ms)
                o.connect_timeout_ms = o.timeout_ms;
        if (optind >= argc)
                return usage_error("a command is needed (generate, info, ping, tokenize)%s", "");
        const char *cmd = argv[optind++];
        int nargs = argc - optind;
        bool is_gen = !strcmp(cmd, "generate"), is_tok = !strcmp(cmd, "tokenize");
        if (!is_gen && !is_tok && strcmp(cmd, "info") && strcmp(cmd, "ping"))
                return usage_error("unknown command '%s'", cmd);
        if ((is_gen || is_tok) && nargs != 1)
                return usage_error("%s takes exactly one argument", cmd);
        if (!is_gen && !is_tok && nargs != 0)
                return usage_error("%s takes no argument", cmd);

        struct sluice_conn *c = NULL;
        int rc = sluice_connect(&o, &c);
        if (rc < 0 && o.key_file && (rc == -EPERM || rc == -ENOKEY || rc == -ENOENT || rc == -EINVAL || rc == -EFBIG))
                return fail(rc, "key", sluice_errmsg(NULL)), EXIT_USAGE;
        if (rc < 0)
                return fail(rc, "cannot reach the server", sluice_errmsg(NULL));
        int ex = EXIT_OK;
        if (is_gen) {
                struct sluice_result res;
                gp.prompt = argv[optind];
                gp.stop = stops;
                gp.n_stop = n_stop;
                rc = sluice_generate(c, &gp, on_chunk, NULL, &res);
                if (rc < 0) {
                        fflush(stdout);
                        ex = fail(rc, "generate", res.message);
                        if (rc == -EBUSY && res.retry_after_ms)
                                fprintf(stderr, "sluice: retry after %u ms\n", res.retry_after_ms);
                } else {
                        printf("\n");
                        fflush(stdout);
                        if (!quiet)
                                fprintf(stderr,
                                        "[finish %s, prompt %u tokens, generated %u tokens, ttft %.1f ms, "
                                        "total %.1f ms, %.1f tokens/s]\n",
                                        sluice_finish_name(res.finish), res.prompt_tokens, res.generated_tokens,
                                        res.ttft_us / 1e3, res.total_us / 1e3,
                                        res.total_us > res.ttft_us && res.generated_tokens > 1
                                                ? (res.generated_tokens - 1) * 1e6 / (double)(res.total_us - res.ttft_us)
                                                : 0.0);
                }
        } else if (is_tok) {
                int32_t *ids = NULL;
                size_t n = 0;
                struct sluice_result res;
                rc = sluice_tokenize(c, argv[optind], strlen(argv[optind]), SLUICE_TOK_PARSE_SPECIAL, &ids, &n, &res);
                if (rc < 0) {
                        ex = fail(rc, "tokenize", res.message[0] ? res.message : sluice_errmsg(c));
                } else {
                        for (size_t i = 0; i < n; i++)
                                printf("%s%" PRId32, i ? " " : "", ids[i]);
                        printf("\n");
                        if (!quiet)
                                fprintf(stderr, "[%zu tokens]\n", n);
                }
                free(ids);
        } else if (!strcmp(cmd, "info")) {
                struct sluice_info in;
                rc = sluice_info(c, &in);
                if (rc < 0) {
                        ex = fail(rc, "info", sluice_errmsg(c));
                } else {
                        printf("model: %s\nserver: %s\nprotocol: %u\nn_ctx: %u\nn_vocab: %u\n"
                               "max_prompt_tokens: %u\nmax_prompt_bytes: %u\nmax_new_tokens: %u\n"
                               "max_stop: %u\nmax_stop_len: %u\nmax_frame: %u\nmax_message: %u\nlease_ms: %u\n"
                               "queue_depth: %u\nactive: %u\nkv_blocks_free: %u\nkv_blocks_total: %u\n"
                               "max_inflight: %u\ndraining: %s\nauth_required: %s\ncookie_required: %s\n",
                               in.model, in.server, in.protocol_version, in.n_ctx, in.n_vocab, in.max_prompt_tokens,
                               in.max_prompt_bytes, in.max_new_tokens, in.max_stop, in.max_stop_len, in.max_frame,
                               in.max_message, in.lease_ms, in.load.queue_depth, in.load.active,
                               in.load.kv_blocks_free, in.load.kv_blocks_total, in.load.max_inflight,
                               in.load.draining ? "yes" : "no", in.auth_required ? "yes" : "no",
                               in.cookie_required ? "yes" : "no");
                        char why[300];
                        int k = metrics ? cli_metrics_print(metrics, o.timeout_ms, stdout, why, sizeof(why)) : 0;
                        if (k < 0)
                                ex = fail(k, "info --metrics", why);
                }
        } else {
                struct sluice_load l;
                uint64_t rtt;
                rc = sluice_ping(c, &l, &rtt);
                if (rc < 0)
                        ex = fail(rc, "ping", sluice_errmsg(c));
                else
                        printf("pong in %.3f ms: queue_depth %u, active %u, kv_blocks_free %u/%u%s\n", rtt / 1e3,
                               l.queue_depth, l.active, l.kv_blocks_free, l.kv_blocks_total,
                               l.draining ? ", draining" : "");
        }
        sluice_close(c);
        return ex;
}
