/* test-client.c — libsluice against the in-test fake server (fake_server.c), on loopback:
 * `test-client CASE`. Every wait is bounded (the client's timeouts, plus alarm()). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_server.h"
#include "sl.h"
#include "sluice.h"

static int failures;

#define CHECK(cond, ...)                                                                             \
        do {                                                                                         \
                if (!(cond)) {                                                                       \
                        fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);     \
                        fprintf(stderr, __VA_ARGS__);                                                \
                        fprintf(stderr, "\n");                                                       \
                        failures++;                                                                  \
                }                                                                                    \
        } while (0)

static struct fake_server *start(struct fake_opts o)
{
        struct fake_server *s;
        int rc = fake_server_start(&o, 0, &s);
        if (rc == -EAFNOSUPPORT || rc == -EADDRNOTAVAIL) {
                fprintf(stderr, "SKIP: no %s loopback\n", o.ipv6 ? "IPv6" : "IPv4");
                exit(77);
        }
        if (rc < 0) {
                fprintf(stderr, "fake server: %s\n", strerror(-rc));
                exit(1);
        }
        return s;
}

static struct sluice_conn *conn(struct fake_server *s, bool tcp, bool v6, uint32_t timeout_ms)
{
        struct sluice_opts o;
        sluice_opts_init(&o);
        o.host = v6 ? "::1" : "127.0.0.1";
        o.port = fake_server_port(s);
        o.transport = tcp ? SLUICE_TCP : SLUICE_UDP;
        o.timeout_ms = timeout_ms;
        o.connect_timeout_ms = 2000;
        o.retransmit_ms = 30;
        struct sluice_conn *c = NULL;
        int rc = sluice_connect(&o, &c);
        if (rc < 0) {
                fprintf(stderr, "connect: %s (%d)\n", sluice_errmsg(NULL), rc);
                exit(1);
        }
        return c;
}

/* Collects a stream and checks it against the fake server's rule (fake_server.h). */
struct collect {
        char prefix[17];
        unsigned n;
        unsigned bad;
        char text[65536];
        size_t tlen;
};

static int collect_cb(void *user, const struct sluice_chunk *ch)
{
        struct collect *k = user;
        for (uint32_t i = 0; i < ch->n_ids; i++) {
                if (ch->ids[i] != (int32_t)(1000 + k->n))
                        k->bad++;
                k->n++;
        }
        if (ch->text_len && k->tlen + ch->text_len < sizeof(k->text)) {
                memcpy(k->text + k->tlen, ch->text, ch->text_len);
                k->tlen += ch->text_len;
                k->text[k->tlen] = 0;
        }
        return 0;
}

static void expect_text(const struct collect *k, unsigned n)
{
        char want[65536];
        size_t w = 0;
        for (unsigned i = 0; i < n && w < sizeof(want) - 64; i++)
                w += (size_t)snprintf(want + w, sizeof(want) - w, "%s#%u ", k->prefix, i);
        CHECK(k->tlen == w && !memcmp(k->text, want, w), "text '%.80s...' (%zu bytes), want %zu bytes", k->text,
              k->tlen, w);
}

static int gen_check(struct sluice_conn *c, const char *prompt, unsigned n)
{
        struct sluice_gen_params p;
        struct sluice_result res;
        struct collect *k = calloc(1, sizeof(*k));
        sluice_gen_params_init(&p);
        p.prompt = prompt;
        p.max_tokens = n;
        snprintf(k->prefix, sizeof(k->prefix), "%.16s", prompt);
        int rc = sluice_generate(c, &p, collect_cb, k, &res);
        CHECK(rc == 0, "generate: %d %s", rc, res.message);
        CHECK(k->n == n && k->bad == 0, "%u tokens (%u out of place), want %u", k->n, k->bad, n);
        expect_text(k, n);
        CHECK(res.finish == SLUICE_FINISH_LENGTH && res.generated_tokens == n &&
              res.prompt_tokens == strlen(prompt) && res.ttft_us == 1500,
              "finish %s, generated %u, prompt %u, ttft %llu", sluice_finish_name(res.finish), res.generated_tokens,
              res.prompt_tokens, (unsigned long long)res.ttft_us);
        free(k);
        return rc;
}

/* ---- cases ---- */

static void basic(bool tcp, bool v6)
{
        struct fake_server *s = start((struct fake_opts){.tcp = tcp, .ipv6 = v6});
        struct sluice_conn *c = conn(s, tcp, v6, 3000);
        struct sluice_info in;
        CHECK(sluice_info(c, &in) == 0, "info: %s", sluice_errmsg(c));
        CHECK(!strcmp(in.model, "fake-model") && !strcmp(in.server, "fake 1.0") && in.n_vocab == 32000 &&
              in.max_new_tokens == 2048 && in.load.kv_blocks_free == 77,
              "info: model '%s' server '%s'", in.model, in.server);
        struct sluice_load l;
        uint64_t rtt = 0;
        CHECK(sluice_ping(c, &l, &rtt) == 0, "ping: %s", sluice_errmsg(c));
        CHECK(l.queue_depth == 3 && l.kv_blocks_free == 77 && l.kv_blocks_total == 100 && !l.draining,
              "load %u %u", l.queue_depth, l.kv_blocks_free);
        gen_check(c, "hello", 20);
        gen_check(c, "héllo wörld", 1);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK(sluice_tokenize(c, "abc", 3, 0, &ids, &n, NULL) == 0, "tokenize: %s", sluice_errmsg(c));
        CHECK(n == 3 && ids && ids[0] == 'a' && ids[2] == 'c', "tokenize: %zu ids", n);
        free(ids);
        /* bad arguments are refused locally */
        struct sluice_gen_params p;
        sluice_gen_params_init(&p);
        p.prompt = "x";
        p.max_tokens = 40000;
        CHECK(sluice_generate(c, &p, NULL, NULL, NULL) == -EINVAL, "max_tokens over the limit");
        p.max_tokens = 1;
        p.prompt = "\xff\xfe";
        CHECK(sluice_generate(c, &p, NULL, NULL, NULL) == -EINVAL, "prompt not UTF-8");
        CHECK(fake_server_stats(s)->bad_in == 0, "server saw %u bad frames", fake_server_stats(s)->bad_in);
        sluice_close(c);
        fake_server_stop(s);
}

static void lossy(struct fake_opts o, unsigned n)
{
        struct fake_server *s = start(o);
        struct sluice_conn *c = conn(s, false, false, 3000);
        gen_check(c, "lossy", n);
        gen_check(c, "again", n);
        struct fake_stats *st = fake_server_stats(s);
        if (o.drop_mod || o.drop_terminal)
                CHECK(st->resend > 0, "no RESEND was sent");
        if (o.drop_first_request)
                CHECK(st->generate == 2, "%u generations run (a retransmitted request must not run twice)",
                      st->generate);
        sluice_close(c);
        fake_server_stop(s);
}

static void fragment(bool tcp)
{
        struct fake_server *s = start((struct fake_opts){.tcp = tcp, .drop_mod = tcp ? 0 : 4});
        struct sluice_conn *c = conn(s, tcp, false, 3000);
        size_t len = 100000;
        char *big = malloc(len + 1);
        for (size_t i = 0; i < len; i++)
                big[i] = (char)('a' + i % 26);
        big[len] = 0;
        gen_check(c, big, 5);
        CHECK(fake_server_stats(s)->last_prompt_len == len, "server got a prompt of %u bytes",
              fake_server_stats(s)->last_prompt_len);
        if (!tcp)
                CHECK(fake_server_stats(s)->frags_max == (len + 60 + 1367) / 1368, "fragments %u",
                      fake_server_stats(s)->frags_max);
        int32_t *ids = NULL;
        size_t n = 0;
        int rc = sluice_tokenize(c, big, len, 0, &ids, &n, NULL);
        CHECK(rc == 0 && n == len, "tokenize: %d, %zu ids: %s", rc, n, sluice_errmsg(c));
        for (size_t i = 0; rc == 0 && i < n; i++)
                if (ids[i] != big[i]) {
                        CHECK(0, "id %zu is %d", i, ids[i]);
                        break;
                }
        free(ids);
        free(big);
        sluice_close(c);
        fake_server_stop(s);
}

static void server_error(bool tcp, int mode)
{
        struct fake_server *s = start((struct fake_opts){.tcp = tcp, .mode = mode});
        struct sluice_conn *c = conn(s, tcp, false, 3000);
        struct sluice_gen_params p;
        struct sluice_result res;
        sluice_gen_params_init(&p);
        p.prompt = "x";
        int rc = sluice_generate(c, &p, NULL, NULL, &res);
        if (mode == FAKE_BUSY)
                CHECK(rc == -EBUSY && res.server_error == 8 && res.retry_after_ms == 1234 &&
                      !strcmp(res.server_error_name, "BUSY"),
                      "rc %d code %d retry %u", rc, res.server_error, res.retry_after_ms);
        else
                CHECK(rc == -EREMOTEIO && res.server_error == 12 && strstr(res.message, "model exploded"),
                      "rc %d code %d msg '%s'", rc, res.server_error, res.message);
        /* the connection still works */
        CHECK(sluice_ping(c, NULL, NULL) == 0, "ping after error: %s", sluice_errmsg(c));
        sluice_close(c);
        fake_server_stop(s);
}

static void stall(bool tcp)
{
        struct fake_server *s = start((struct fake_opts){.tcp = tcp, .mode = FAKE_STALL});
        struct sluice_conn *c = conn(s, tcp, false, 300);
        struct sluice_gen_params p;
        struct sluice_result res;
        sluice_gen_params_init(&p);
        p.prompt = "x";
        uint64_t t0 = sl_now_ns();
        int rc = sluice_generate(c, &p, NULL, NULL, &res);
        uint64_t ms = (sl_now_ns() - t0) / 1000000;
        CHECK(rc == -ETIMEDOUT && ms >= 250 && ms < 2500, "rc %d after %llu ms: %s", rc, (unsigned long long)ms,
              res.message);
        CHECK(strstr(res.message, "no answer") != NULL, "message '%s'", res.message);
        CHECK(sluice_ping(c, NULL, NULL) == -ETIMEDOUT, "ping to a stalled server");
        sluice_close(c);
        fake_server_stop(s);
}

static void garbage(bool tcp, int mode)
{
        struct fake_server *s = start((struct fake_opts){.tcp = tcp, .mode = mode});
        struct sluice_conn *c = conn(s, tcp, false, 2000);
        if (!tcp && mode == FAKE_GARBAGE) { /* junk datagrams are dropped; the stream is intact */
                gen_check(c, "junk", 30);
        } else {
                struct sluice_gen_params p;
                struct sluice_result res;
                sluice_gen_params_init(&p);
                p.prompt = "x";
                p.max_tokens = 5;
                int rc = sluice_generate(c, &p, NULL, NULL, &res);
                CHECK(rc == -EPROTO, "rc %d: %s", rc, res.message);
                CHECK(strstr(res.message, "bad") != NULL, "message '%s'", res.message);
        }
        sluice_close(c);
        fake_server_stop(s);
}

static void unreachable(bool tcp)
{
        /* a port nobody listens on: bind one, note it, close it */
        struct fake_server *s = start((struct fake_opts){.tcp = tcp});
        uint16_t port = fake_server_port(s);
        fake_server_stop(s);
        struct sluice_opts o;
        sluice_opts_init(&o);
        o.host = "127.0.0.1";
        o.port = port;
        o.transport = tcp ? SLUICE_TCP : SLUICE_UDP;
        o.connect_timeout_ms = 1000;
        struct sluice_conn *c = NULL;
        int rc = sluice_connect(&o, &c);
        CHECK(rc == -ECONNREFUSED || rc == -ETIMEDOUT, "rc %d: %s", rc, sluice_errmsg(NULL));
        CHECK(c == NULL && strlen(sluice_errmsg(NULL)) > 0, "message '%s'", sluice_errmsg(NULL));
}

struct mt_arg {
        struct sluice_conn *c;
        int i;
        int rc;
};

static void *mt_main(void *arg)
{
        struct mt_arg *a = arg;
        char prompt[32];
        for (int round = 0; round < 3; round++) {
                snprintf(prompt, sizeof(prompt), "t%d-r%d", a->i, round);
                if (gen_check(a->c, prompt, 40) != 0)
                        a->rc = -1;
        }
        return NULL;
}

static void multiplex(bool tcp)
{
        struct fake_server *s = start((struct fake_opts){.tcp = tcp, .drop_mod = tcp ? 0 : 7, .reorder = !tcp,
                                                         .token_delay_ms = 1});
        struct sluice_conn *c = conn(s, tcp, false, 5000);
        enum { N = 8 };
        pthread_t th[N];
        struct mt_arg a[N];
        for (int i = 0; i < N; i++) {
                a[i] = (struct mt_arg){.c = c, .i = i};
                pthread_create(&th[i], NULL, mt_main, &a[i]);
        }
        for (int i = 0; i < N; i++)
                pthread_join(th[i], NULL);
        CHECK(fake_server_stats(s)->generate == 3 * N, "%u generations", fake_server_stats(s)->generate);
        sluice_close(c);
        fake_server_stop(s);
}

static void iterator(void)
{
        struct fake_server *s = start((struct fake_opts){.token_delay_ms = 20, .lease_ms = 150});
        struct sluice_conn *c = conn(s, false, false, 3000);
        struct sluice_gen_params p;
        sluice_gen_params_init(&p);
        p.prompt = "iter";
        p.max_tokens = 40;
        /* ids are unique among open streams */
        struct sluice_stream *st[16];
        for (int i = 0; i < 16; i++) {
                CHECK(sluice_stream_open(c, &p, &st[i]) == 0, "open %d", i);
                for (int j = 0; j < i; j++)
                        CHECK(sluice_stream_id(st[i]) != sluice_stream_id(st[j]) && sluice_stream_id(st[i]),
                              "ids %d %d", i, j);
        }
        for (int i = 1; i < 16; i++)
                sluice_stream_free(st[i]);
        /* iterate stream 0 to its end; cancel is sent on the way (the fake does not stop) */
        struct sluice_chunk ch;
        struct sluice_result res;
        unsigned n = 0;
        int rc;
        while ((rc = sluice_stream_next(st[0], &ch, &res)) == 1) {
                CHECK(ch.n_ids == 1 && ch.ids[0] == (int32_t)(1000 + n), "chunk %u", n);
                if (++n == 3)
                        CHECK(sluice_stream_cancel(st[0]) == 0, "cancel");
        }
        CHECK(rc == 0 && n == 40 && res.finish == SLUICE_FINISH_LENGTH, "rc %d n %u", rc, n);
        CHECK(res.client_ttft_us > 0 && res.client_total_us >= res.client_ttft_us, "client times");
        CHECK(sluice_stream_next(st[0], &ch, &res) == 0, "next after the end");
        sluice_stream_free(st[0]);
        struct fake_stats *fs = fake_server_stats(s);
        CHECK(fs->cancel >= 16, "%u CANCELs (15 freed streams + 1 cancel)", fs->cancel);
        /* 40 frames, 20 ms apart, lease 150 ms: ACKs at least every 50 ms keep it alive */
        CHECK(fs->ack >= 8, "%u ACKs in a 800 ms stream with a 150 ms lease", fs->ack);
        sluice_stream_free(NULL);
        sluice_close(c);
        sluice_close(NULL);
        fake_server_stop(s);
}

int main(int argc, char **argv)
{
        if (argc != 2) {
                fprintf(stderr, "usage: test-client CASE\n");
                return 1;
        }
        alarm(60);
        const char *k = argv[1];
        if (!strcmp(k, "udp4"))
                basic(false, false);
        else if (!strcmp(k, "udp6"))
                basic(false, true);
        else if (!strcmp(k, "tcp4"))
                basic(true, false);
        else if (!strcmp(k, "tcp6"))
                basic(true, true);
        else if (!strcmp(k, "udp-loss"))
                lossy((struct fake_opts){.drop_mod = 3, .drop_terminal = true}, 50);
        else if (!strcmp(k, "udp-dup-reorder"))
                lossy((struct fake_opts){.duplicate = true, .reorder = true}, 50);
        else if (!strcmp(k, "udp-retransmit"))
                lossy((struct fake_opts){.drop_first_request = true, .drop_mod = 2, .duplicate = true,
                                         .reorder = true, .mode = FAKE_GARBAGE},
                      30);
        else if (!strcmp(k, "udp-fragment"))
                fragment(false);
        else if (!strcmp(k, "tcp-fragment"))
                fragment(true);
        else if (!strcmp(k, "udp-busy"))
                server_error(false, FAKE_BUSY);
        else if (!strcmp(k, "tcp-busy"))
                server_error(true, FAKE_BUSY);
        else if (!strcmp(k, "udp-error"))
                server_error(false, FAKE_ERROR);
        else if (!strcmp(k, "tcp-error"))
                server_error(true, FAKE_ERROR);
        else if (!strcmp(k, "udp-stall"))
                stall(false);
        else if (!strcmp(k, "tcp-stall"))
                stall(true);
        else if (!strcmp(k, "udp-garbage"))
                garbage(false, FAKE_GARBAGE);
        else if (!strcmp(k, "tcp-garbage"))
                garbage(true, FAKE_GARBAGE);
        else if (!strcmp(k, "udp-bad-payload"))
                garbage(false, FAKE_BAD_PAYLOAD);
        else if (!strcmp(k, "tcp-bad-payload"))
                garbage(true, FAKE_BAD_PAYLOAD);
        else if (!strcmp(k, "udp-unreachable"))
                unreachable(false);
        else if (!strcmp(k, "tcp-unreachable"))
                unreachable(true);
        else if (!strcmp(k, "udp-multiplex"))
                multiplex(false);
        else if (!strcmp(k, "tcp-multiplex"))
                multiplex(true);
        else if (!strcmp(k, "udp-iterator"))
                iterator();
        else {
                fprintf(stderr, "unknown case %s\n", k);
                return 1;
        }
        if (failures)
                fprintf(stderr, "%s: %d checks failed\n", k, failures);
        return failures ? 1 : 0;
}
