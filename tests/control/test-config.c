/* test-config — sluice.conf: the shipped file loads, every type of key parses, every kind
 * of error names file:line and the key exactly, overrides, cross-key checks, reload diff. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control.h"
#include "sluice_config.h"

static int failures;

#define CHECK(c)                                                                   \
        do {                                                                       \
                if (!(c)) {                                                        \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
                        failures++;                                                \
                }                                                                  \
        } while (0)

static struct ctl_config cfg;

static int parse(const char *text, struct sl_error *err)
{
        ctl_config_defaults(&cfg);
        cfg.auth.mode = CTL_AUTH_OFF; /* as if the file said so: most cases are not about auth */
        int r = ctl_config_parse_string("t.conf", text, strlen(text), &cfg, err);
        if (r == 0)
                r = ctl_config_validate(&cfg, err);
        return r;
}

/* The text must fail with exactly this message. */
static void expect_error(int line, const char *text, const char *msg)
{
        struct sl_error err = {{0}};
        int r = parse(text, &err);
        if (r != -EINVAL || strcmp(err.msg, msg)) {
                fprintf(stderr, "%s:%d: got %d '%s'\n  want -EINVAL '%s'\n", __FILE__, line, r, err.msg, msg);
                failures++;
        }
}
#define EXPECT_ERROR(text, msg) expect_error(__LINE__, text, msg)

static void test_shipped(const char *path)
{
        struct sl_error err = {{0}};
        int r = ctl_config_load(path, &cfg, &err);
        if (r < 0)
                fprintf(stderr, "shipped config: %s\n", err.msg);
        CHECK(r == 0);
        struct ctl_config def;
        ctl_config_defaults(&def);
        /* The shipped file sets only the model path and auth mode: all else is the default. */
        CHECK(!strcmp(cfg.model.path, "/var/lib/sluice/models/model.gguf"));
        strcpy(def.model.path, cfg.model.path);
        CHECK(cfg.auth.mode == CTL_AUTH_OFF); /* said explicitly: the default is required */
        def.auth.mode = cfg.auth.mode;
        CHECK(ctl_config_diff_reloadable(&def, &cfg, NULL) == 0);
        char buf[256];
        CHECK(ctl_config_changed_keys(&def, &cfg, buf, sizeof(buf)) == 0);
}

static void test_all_keys(void)
{
        struct sl_error err = {{0}};
        const char *text =
                "; a comment\n"
                "# another\n"
                "[model]\npath = /m/x.gguf\nname = demo\n"
                "[engine]\nbackend = cpu\nthreads = 4\nkv_memory = 256M\nblock_size = 32\nmax_seq_len = 2048\n"
                "max_running = 8\nmax_queued = 0\ntoken_budget = 1024\nprefill_chunk = 1024\n"
                "[dataplane]\ntransports = tcp , udp\nudp_listen = [::1]:7000, 127.0.0.1:7001\n"
                "tcp_listen = 0.0.0.0:0\ntls = on\ntls_cert = /etc/sluice/cert.pem\ntls_key = key.pem\n"
                "tls_client_ca = /etc/sluice/clients.pem\n"
                "[limits]\nmax_prompt_tokens = 100\nmax_prompt_bytes = 131072\nmax_new_tokens = 32768\n"
                "default_max_tokens = 16\nmax_frame = 1024\nmax_concurrent_per_client = 3\n"
                "request_timeout_ms = 0\nudp_lease_ms = 1000\ntcp_output_limit = 1MiB\n"
                "[auth]\nmode = off\nkeys_file = /etc/sluice/keys\n"
                "[metrics]\nhttp_listen = [::]:9100\n"
                "[log]\nlevel = debug\ntarget = stderr\naudit = with-text\naudit_path = /tmp/a.log ; inline comment\n"
                "[server]\nname = box1\ndrain_timeout_ms = 0\nstall_timeout_ms = 100\n";
        int r = parse(text, &err);
        if (r < 0)
                fprintf(stderr, "all keys: %s\n", err.msg);
        CHECK(r == 0);
        CHECK(!strcmp(cfg.model.path, "/m/x.gguf") && !strcmp(cfg.model.name, "demo"));
        CHECK(cfg.engine.backend == CTL_BACKEND_CPU && cfg.engine.threads == 4);
        CHECK(cfg.engine.kv_memory == 256ull << 20 && cfg.engine.kv_blocks == 0);
        CHECK(cfg.engine.block_size == 32 && cfg.engine.max_seq_len == 2048);
        CHECK(cfg.engine.max_running == 8 && cfg.engine.max_queued == 0);
        CHECK(cfg.engine.token_budget == 1024 && cfg.engine.prefill_chunk == 1024);
        CHECK(cfg.dataplane.transports == (CTL_TRANSPORT_UDP | CTL_TRANSPORT_TCP));
        CHECK(cfg.dataplane.udp_listen.n == 2 && cfg.dataplane.tcp_listen.n == 1);
        char a[80];
        CHECK(!strcmp(ctl_addr_format(&cfg.dataplane.udp_listen.a[0], a, sizeof(a)), "[::1]:7000"));
        CHECK(cfg.dataplane.udp_listen.a[0].len == sizeof(struct sockaddr_in6));
        CHECK(!strcmp(ctl_addr_format(&cfg.dataplane.udp_listen.a[1], a, sizeof(a)), "127.0.0.1:7001"));
        CHECK(cfg.dataplane.udp_listen.a[1].len == sizeof(struct sockaddr_in));
        CHECK(!strcmp(ctl_addr_format(&cfg.dataplane.tcp_listen.a[0], a, sizeof(a)), "0.0.0.0:0"));
        CHECK(cfg.dataplane.tls == 1 && !strcmp(cfg.dataplane.tls_cert, "/etc/sluice/cert.pem"));
        CHECK(!strcmp(cfg.dataplane.tls_key, "key.pem") && !strcmp(cfg.dataplane.tls_client_ca, "/etc/sluice/clients.pem"));
        CHECK(cfg.limits.max_prompt_tokens == 100 && cfg.limits.max_prompt_bytes == 131072);
        CHECK(cfg.limits.max_new_tokens == 32768 && cfg.limits.default_max_tokens == 16);
        CHECK(cfg.limits.max_frame == 1024 && cfg.limits.max_concurrent_per_client == 3);
        CHECK(cfg.limits.request_timeout_ms == 0 && cfg.limits.udp_lease_ms == 1000);
        CHECK(cfg.limits.tcp_output_limit == 1u << 20);
        CHECK(cfg.auth.mode == CTL_AUTH_OFF && !strcmp(cfg.auth.keys_file, "/etc/sluice/keys"));
        CHECK(cfg.metrics.enabled && !strcmp(ctl_addr_format(&cfg.metrics.http_listen, a, sizeof(a)), "[::]:9100"));
        CHECK(cfg.log.level == SL_LOG_DEBUG && cfg.log.target == CTL_LOG_STDERR);
        CHECK(cfg.log.audit == CTL_AUDIT_WITH_TEXT && !strcmp(cfg.log.audit_path, "/tmp/a.log"));
        CHECK(!strcmp(cfg.server.name, "box1") && cfg.server.drain_timeout_ms == 0);
        CHECK(cfg.server.stall_timeout_ms == 100);
        CHECK(cfg.line[0] == 4); /* model.path */

        CHECK(parse("[model]\npath=/m\n[metrics]\nhttp_listen = off\n", &err) == 0 && !cfg.metrics.enabled);
        CHECK(parse("[model]\npath=/m\n[engine]\nkv_blocks = 100\n", &err) == 0 && cfg.engine.kv_blocks == 100);
        CHECK(parse("[model]\npath=/m\n[dataplane]\ntransports = tcp\nudp_listen =\n", &err) == 0 &&
              cfg.dataplane.udp_listen.n == 0);
        CHECK(parse("\xEF\xBB\xBF[model]\r\npath = /m\r\n", &err) == 0 && !strcmp(cfg.model.path, "/m"));
}

static void test_errors(void)
{
        EXPECT_ERROR("[model]\npath = /m\n[limits]\nmax_new_tokens = abc\n",
                     "t.conf:4: [limits] max_new_tokens: 'abc' is not a number");
        EXPECT_ERROR("[model]\npath = /m\n[limits]\nmax_new_tokens = 40000\n",
                     "t.conf:4: [limits] max_new_tokens: '40000' is out of range (1..32768)");
        EXPECT_ERROR("[model]\npath = /m\n[limits]\nmax_new_tokens = -1\n",
                     "t.conf:4: [limits] max_new_tokens: '-1' is not a number");
        EXPECT_ERROR("[limits]\nmax_new_tokens = 99999999999999999999999\n",
                     "t.conf:2: [limits] max_new_tokens: '99999999999999999999999' is out of range (1..32768)");
        EXPECT_ERROR("[engine]\nkv_memory = 5X\n",
                     "t.conf:2: [engine] kv_memory: '5X' is not a number (a size: digits, optional K, M, G, T)");
        EXPECT_ERROR("[engine]\nkv_memory = 2T\n", "t.conf:2: [engine] kv_memory: '2T' is out of range (0..1099511627776)");
        EXPECT_ERROR("[limits]\nfoo = 1\n", "t.conf:2: [limits] unknown key 'foo'");
        EXPECT_ERROR("[model]\npath = /m\n\n[bogus]\nx = 1\n", "t.conf:4: unknown section [bogus]");
        EXPECT_ERROR("x = 1\n", "t.conf:1: 'x' is outside a section");
        EXPECT_ERROR("[model]\npath = /a\npath = /b\n", "t.conf:3: [model] path: set twice (first on line 2)");
        EXPECT_ERROR("[model]\npath /a\n", "t.conf:2: syntax error (expected [section], key = value, or a ; comment)");
        EXPECT_ERROR("[model\npath = /a\n", "t.conf:1: syntax error (expected [section], key = value, or a ; comment)");
        EXPECT_ERROR("[model]\n  path = /a\n",
                     "t.conf:2: indented line (continuation lines are not allowed; remove the leading whitespace)");
        EXPECT_ERROR("[engine]\nbackend = gpu\n", "t.conf:2: [engine] backend: 'gpu' is not one of auto, cpu, cuda");
        if (!SLUICE_HAVE_CUDA)
                EXPECT_ERROR("[engine]\nbackend = cuda\n", "t.conf:2: [engine] backend: cuda: this sluiced is built without CUDA");
        EXPECT_ERROR("[auth]\nmode = hmac\n",
                     "t.conf:2: [auth] mode: 'hmac' is not one of off, required");
        EXPECT_ERROR("[log]\nlevel = loud\n", "t.conf:2: [log] level: 'loud' is not one of err, warning, notice, info, debug");
        EXPECT_ERROR("[log]\naudit = yes\n", "t.conf:2: [log] audit: 'yes' is not one of off, on, with-text");
        EXPECT_ERROR("[dataplane]\ntransports = udp,quic\n", "t.conf:2: [dataplane] transports: 'quic' is not one of udp, tcp, dpdk");
        EXPECT_ERROR("[dataplane]\ntransports = udp,udp\n", "t.conf:2: [dataplane] transports: 'udp' is listed twice");
        EXPECT_ERROR("[dataplane]\ntransports =\n", "t.conf:2: [dataplane] transports: at least one of udp, tcp, dpdk is needed");
        EXPECT_ERROR("[dataplane]\nudp_listen = localhost:7000\n",
                     "t.conf:2: [dataplane] udp_listen: 'localhost:7000' is not an address:port (numeric, e.g. 127.0.0.1:7000 or [::1]:7000)");
        EXPECT_ERROR("[dataplane]\nudp_listen = ::1:7000\n",
                     "t.conf:2: [dataplane] udp_listen: '::1:7000' is not an address:port (numeric, e.g. 127.0.0.1:7000 or [::1]:7000)");
        EXPECT_ERROR("[dataplane]\ntcp_listen = [::1]:70000\n",
                     "t.conf:2: [dataplane] tcp_listen: '[::1]:70000': the port must be a number 0..65535");
        EXPECT_ERROR("[dataplane]\ntcp_listen = 127.0.0.1:1, 127.0.0.1:1\n",
                     "t.conf:2: [dataplane] tcp_listen: '127.0.0.1:1' is listed twice");
        EXPECT_ERROR("[dataplane]\ntcp_listen = 127.0.0.1:1,,127.0.0.1:2\n",
                     "t.conf:2: [dataplane] tcp_listen: empty address in the list");
        EXPECT_ERROR("[dataplane]\ntcp_listen = 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,127.0.0.1:6,127.0.0.1:7,127.0.0.1:8,127.0.0.1:9\n",
                     "t.conf:2: [dataplane] tcp_listen: more than 8 addresses");
        EXPECT_ERROR("[metrics]\nhttp_listen = on\n",
                     "t.conf:2: [metrics] http_listen: 'on' is not an address:port (numeric, e.g. 127.0.0.1:7000 or [::1]:7000) (or off)");
        EXPECT_ERROR("[model]\npath = a\x01b\n", "t.conf:2: [model] path: control character in the value");
        if (!SLUICE_HAVE_DPDK) {
                EXPECT_ERROR("[model]\npath = /m\n[dpdk]\nport = 0\n",
                             "t.conf:3: [dpdk]: this sluiced is built without DPDK (meson -Ddpdk=enabled); remove the section");
                EXPECT_ERROR("[dataplane]\ntransports = udp,dpdk\n",
                             "t.conf:2: [dataplane] transports: dpdk: this sluiced is built without DPDK (meson -Ddpdk=enabled)");
        }
        /* Bytes inih would hide or mangle. */
        {
                static const char nul[] = "[model]\npath = /a\0b\n";
                struct sl_error err;
                ctl_config_defaults(&cfg);
                CHECK(ctl_config_parse_string("t.conf", nul, sizeof(nul) - 1, &cfg, &err) == -EINVAL);
                CHECK(!strcmp(err.msg, "t.conf:2: NUL byte in the line"));
                char longl[400];
                snprintf(longl, sizeof(longl), "[model]\npath = /%0300d\n", 0);
                CHECK(parse(longl, &err) == -EINVAL);
                CHECK(!strncmp(err.msg, "t.conf:2: line longer than ", 27));
        }
        /* Between keys: the line of the later key. */
        EXPECT_ERROR("[engine]\ntoken_budget = 64\nprefill_chunk = 128\n[model]\npath = /m\n",
                     "t.conf:3: [engine] prefill_chunk: 128 is larger than token_budget 64");
        EXPECT_ERROR("[model]\npath = /m\n[limits]\nmax_new_tokens = 10\n",
                     "t.conf:4: [limits] default_max_tokens: 256 is larger than max_new_tokens 10");
        EXPECT_ERROR("[engine]\nkv_blocks = 10\nkv_memory = 1G\n[model]\npath = /m\n",
                     "t.conf:3: [engine] kv_blocks: set kv_blocks or kv_memory, not both");
        EXPECT_ERROR("[engine]\nthreads = 1\n", "t.conf: [model] path: required (the GGUF file to serve)");
        EXPECT_ERROR("[model]\npath = /m\n[dataplane]\nudp_listen =\n",
                     "t.conf:4: [dataplane] udp_listen: empty, but transports has udp");
        EXPECT_ERROR("[model]\npath = /m\n[log]\naudit = on\naudit_path = audit.log\n",
                     "t.conf:5: [log] audit_path: an absolute path is needed when audit is on");
}

/* Plaintext TCP only on loopback; TLS needs its files and the TCP transport. */
static void test_tls(void)
{
        struct sl_error err = {{0}};
        EXPECT_ERROR("[model]\npath = /m\n[dataplane]\ntcp_listen = 127.0.0.1:1, 0.0.0.0:7400\n",
                     "t.conf:4: [dataplane] tcp_listen: 0.0.0.0:7400 is not a loopback address: plaintext TCP is "
                     "for development on loopback only (set tls = on with tls_cert and tls_key to listen there)");
        EXPECT_ERROR("[model]\npath = /m\n[dataplane]\ntcp_listen = [::]:7400\n",
                     "t.conf:4: [dataplane] tcp_listen: [::]:7400 is not a loopback address: plaintext TCP is "
                     "for development on loopback only (set tls = on with tls_cert and tls_key to listen there)");
        EXPECT_ERROR("[model]\npath = /m\n[dataplane]\ntls = on\ntls_cert = c.pem\n",
                     "t.conf:5: [dataplane] tls_key: tls = on needs tls_cert and tls_key (PEM files)");
        EXPECT_ERROR("[model]\npath = /m\n[dataplane]\ntransports = udp\ntls = on\ntls_cert = c\ntls_key = k\n",
                     "t.conf:5: [dataplane] tls: on, but transports has no tcp (TLS is for the TCP transport)");
        CHECK(parse("[model]\npath = /m\n[dataplane]\ntcp_listen = 127.0.0.2:1, [::1]:2, [::ffff:127.0.0.1]:3\n",
                    &err) == 0);
        CHECK(parse("[model]\npath = /m\n[dataplane]\ntransports = udp\nudp_listen = 0.0.0.0:1\n"
                    "tcp_listen = 0.0.0.0:1\n", &err) == 0); /* no TCP transport: nothing to refuse */
        CHECK(parse("[model]\npath = /m\n[dataplane]\ntcp_listen = [::]:7400\ntls = on\ntls_cert = c\n"
                    "tls_key = k\n", &err) == 0);
        struct ctl_config old = cfg;
        /* certificate paths change on reload; tls itself does not */
        CHECK(parse("[model]\npath = /m\n[dataplane]\ntcp_listen = [::]:7400\ntls = on\ntls_cert = c2\n"
                    "tls_key = k2\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == 2);
        CHECK(parse("[model]\npath = /m\n[dataplane]\ntls_cert = c\ntls_key = k\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == -EPERM);
}

static void test_load_errors(void)
{
        struct sl_error err;
        CHECK(ctl_config_load("/nonexistent/sluice.conf", &cfg, &err) == -ENOENT);
        CHECK(!strcmp(err.msg, "/nonexistent/sluice.conf: No such file or directory"));
        char path[] = "/tmp/sluice-test-config.XXXXXX";
        int fd = mkstemp(path);
        CHECK(fd >= 0);
        FILE *f = fdopen(fd, "w");
        fputs("[model]\npath = /m\n[limits]\nmax_new_tokens = abc\n", f);
        fclose(f);
        CHECK(ctl_config_load(path, &cfg, &err) == -EINVAL);
        char want[256];
        snprintf(want, sizeof(want), "%s:4: [limits] max_new_tokens: 'abc' is not a number", path);
        CHECK(!strcmp(err.msg, want));
        unlink(path);
}

static void test_overrides(void)
{
        struct sl_error err = {{0}};
        CHECK(parse("[model]\npath = /m\n", &err) == 0);
        CHECK(ctl_config_apply_override(&cfg, "limits.max_new_tokens=100", &err) == 0);
        CHECK(cfg.limits.max_new_tokens == 100);
        CHECK(ctl_config_apply_override(&cfg, " dataplane.udp_listen = [::1]:7100 ", &err) == 0);
        CHECK(cfg.dataplane.udp_listen.n == 1 && cfg.dataplane.udp_listen.a[0].ss.ss_family == AF_INET6);
        CHECK(ctl_config_apply_override(&cfg, "limits.max_new_tokens=abc", &err) == -EINVAL);
        CHECK(!strcmp(err.msg, "command line: [limits] max_new_tokens: 'abc' is not a number"));
        CHECK(ctl_config_apply_override(&cfg, "limits.nope=1", &err) == -EINVAL);
        CHECK(!strcmp(err.msg, "command line: unknown key 'limits.nope'"));
        CHECK(ctl_config_apply_override(&cfg, "max_new_tokens=1", &err) == -EINVAL);
        CHECK(!strcmp(err.msg, "command line: 'max_new_tokens=1' is not section.key=value"));
        /* Cross-key errors after an override name the command line. */
        CHECK(ctl_config_apply_override(&cfg, "engine.prefill_chunk=4096", &err) == 0);
        CHECK(ctl_config_validate(&cfg, &err) == -EINVAL);
        CHECK(!strcmp(err.msg, "command line: [engine] prefill_chunk: 4096 is larger than token_budget 512"));
}

static void test_reload_diff(void)
{
        struct sl_error err = {{0}};
        struct ctl_config old, nw;
        CHECK(parse("[model]\npath = /m\n", &err) == 0);
        old = cfg;
        CHECK(parse("[model]\npath = /m\n[limits]\nmax_new_tokens = 100\ndefault_max_tokens = 50\n"
                    "[log]\nlevel = debug\naudit = on\n", &err) == 0);
        nw = cfg;
        CHECK(ctl_config_diff_reloadable(&old, &nw, &err) == 4);
        char buf[256];
        CHECK(ctl_config_changed_keys(&old, &nw, buf, sizeof(buf)) == 4);
        CHECK(!strcmp(buf, "limits.max_new_tokens, limits.default_max_tokens, log.level, log.audit"));
        CHECK(ctl_config_diff_reloadable(&old, &old, &err) == 0);

        CHECK(parse("[model]\npath = /other\n[limits]\nmax_new_tokens = 100\ndefault_max_tokens = 50\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == -EPERM);
        CHECK(!strcmp(err.msg, "[model] path changed: it cannot change on reload (restart sluiced)"));
        CHECK(parse("[model]\npath = /m\n[dataplane]\ntcp_listen = 127.0.0.1:7001\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == -EPERM);
        CHECK(!strcmp(err.msg, "[dataplane] tcp_listen changed: it cannot change on reload (restart sluiced)"));
        CHECK(parse("[model]\npath = /m\n[metrics]\nhttp_listen = off\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == -EPERM);
        /* The same value written differently is no change. */
        CHECK(parse("[model]\npath = /m\n[engine]\nkv_memory = 0M\n[dataplane]\nudp_listen = 127.0.0.1:7400\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == 0);
        /* The transports size their timers and buffers at start. */
        CHECK(parse("[model]\npath = /m\n[limits]\nudp_lease_ms = 2000\n", &err) == 0);
        CHECK(ctl_config_diff_reloadable(&old, &cfg, &err) == -EPERM);
        CHECK(!strcmp(err.msg, "[limits] udp_lease_ms changed: it cannot change on reload (restart sluiced)"));
}

/* Authentication is required unless a config turns it off explicitly. */
static void test_auth_default(void)
{
        struct sl_error err = {{0}};
        struct ctl_config c;
        ctl_config_defaults(&c);
        CHECK(c.auth.mode == CTL_AUTH_REQUIRED && c.auth.replay_window_ms == 30000);
        static const char text[] = "[model]\npath = /m\n";
        CHECK(ctl_config_parse_string("t.conf", text, strlen(text), &c, &err) == 0);
        CHECK(ctl_config_validate(&c, &err) == -EINVAL &&
              strstr(err.msg, "mode = required needs the clients' keys file (or mode = off"));
        static const char off[] = "[model]\npath = /m\n[auth]\nmode = off\n";
        ctl_config_defaults(&c);
        CHECK(ctl_config_parse_string("t.conf", off, strlen(off), &c, &err) == 0 &&
              ctl_config_validate(&c, &err) == 0 && c.auth.mode == CTL_AUTH_OFF);
        static const char req[] = "[model]\npath = /m\n[auth]\nmode = required\nkeys_file = k\nreplay_window_ms = 999\n";
        ctl_config_defaults(&c);
        CHECK(ctl_config_parse_string("t.conf", req, strlen(req), &c, &err) == -EINVAL &&
              strstr(err.msg, "replay_window_ms"));
}

int main(int argc, char **argv)
{
        if (argc < 2) {
                fprintf(stderr, "usage: test-config packaging/sluice.conf\n");
                return 1;
        }
        test_shipped(argv[1]);
        test_all_keys();
        test_errors();
        test_load_errors();
        test_tls();
        test_auth_default();
        test_overrides();
        test_reload_diff();
        if (failures) {
                fprintf(stderr, "test-config: %d failures\n", failures);
                return 1;
        }
        printf("test-config: ok\n");
        return 0;
}
