/* test-cli.c — the sluice CLI against sluice-fake-server: stdout, stderr and exit codes.
 * `test-cli SLUICE FAKE_SERVER`. Every child is killed after 15 s. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl.h"

static const char *sluice_bin, *fake_bin;
static int failures;
static char out[65536], err[65536];

struct fake {
        pid_t pid;
        int in; /* its stdin: closing it stops the server */
        char port[16];
};

static struct fake fake_start(const char *const *args)
{
        struct fake f = {.pid = -1, .in = -1};
        int pin[2], pout[2];
        if (pipe2(pin, O_CLOEXEC) < 0 || pipe2(pout, O_CLOEXEC) < 0)
                exit(1);
        const char *argv[16] = {fake_bin};
        int n = 1;
        for (; args && args[n - 1] && n < 15; n++)
                argv[n] = args[n - 1];
        argv[n] = NULL;
        f.pid = fork();
        if (f.pid == 0) {
                dup2(pin[0], 0);
                dup2(pout[1], 1);
                execv(fake_bin, (char *const *)argv);
                _exit(127);
        }
        close(pin[0]);
        close(pout[1]);
        f.in = pin[1];
        ssize_t r = read(pout[0], f.port, sizeof(f.port) - 1);
        close(pout[0]);
        if (r <= 0) {
                fprintf(stderr, "fake server did not start\n");
                exit(1);
        }
        f.port[r] = 0;
        f.port[strcspn(f.port, "\n")] = 0;
        return f;
}

static void fake_stop(struct fake *f)
{
        close(f->in);
        int st;
        waitpid(f->pid, &st, 0);
}

static void slurp(int fd, char *buf, size_t cap)
{
        lseek(fd, 0, SEEK_SET);
        ssize_t n = read(fd, buf, cap - 1);
        buf[n > 0 ? n : 0] = 0;
        close(fd);
}

/* Runs sluice with the arguments (NULL-terminated); returns its exit code, -1 if killed. */
static int run(const char *first, ...)
{
        const char *argv[32] = {sluice_bin};
        int n = 1;
        va_list ap;
        va_start(ap, first);
        for (const char *a = first; a && n < 31; a = va_arg(ap, const char *))
                argv[n++] = a;
        va_end(ap);
        argv[n] = NULL;
        char po[] = "/tmp/sluice-cli-outXXXXXX", pe[] = "/tmp/sluice-cli-errXXXXXX";
        int fo = mkstemp(po), fe = mkstemp(pe);
        if (fo < 0 || fe < 0)
                exit(1);
        unlink(po);
        unlink(pe);
        pid_t pid = fork();
        if (pid == 0) {
                dup2(fo, 1);
                dup2(fe, 2);
                execv(sluice_bin, (char *const *)argv);
                _exit(127);
        }
        int st = 0;
        uint64_t end = sl_now_ns() + 15ull * 1000000000ull;
        while (waitpid(pid, &st, WNOHANG) == 0) {
                if (sl_now_ns() > end) {
                        kill(pid, SIGKILL);
                        waitpid(pid, &st, 0);
                        break;
                }
                usleep(5000);
        }
        slurp(fo, out, sizeof(out));
        slurp(fe, err, sizeof(err));
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define CHECK(cond)                                                                                  \
        do {                                                                                         \
                if (!(cond)) {                                                                       \
                        fprintf(stderr, "%s:%d: check failed: %s\n--- stdout:\n%s\n--- stderr:\n%s\n", \
                                __FILE__, __LINE__, #cond, out, err);                                \
                        failures++;                                                                  \
                }                                                                                    \
        } while (0)

int main(int argc, char **argv)
{
        if (argc != 3) {
                fprintf(stderr, "usage: test-cli SLUICE FAKE_SERVER\n");
                return 1;
        }
        sluice_bin = argv[1];
        fake_bin = argv[2];
        signal(SIGPIPE, SIG_IGN);
        alarm(120);

        /* usage */
        CHECK(run("--help", NULL) == 0 && strstr(out, "Exit codes") && strstr(out, "4  server busy"));
        CHECK(run("--version", NULL) == 0 && strstr(out, "sluice 0.1.0"));
        CHECK(run(NULL) == 2 && strstr(err, "command"));
        CHECK(run("frobnicate", NULL) == 2 && strstr(err, "unknown command"));
        CHECK(run("generate", NULL) == 2);
        CHECK(run("generate", "a", "b", NULL) == 2);
        CHECK(run("--temp", "abc", "generate", "x", NULL) == 2 && strstr(err, "--temp"));
        CHECK(run("--bogus", NULL) == 2);

        /* UDP over IPv4 */
        struct fake f = fake_start((const char *[]){NULL});
        CHECK(run("generate", "-n", "5", "--temp", "0", "--seed", "7", "--host", "127.0.0.1", "--port", f.port,
                  "hello", NULL) == 0);
        CHECK(!strcmp(out, "hello#0 hello#1 hello#2 hello#3 hello#4 \n"));
        CHECK(strstr(err, "finish length") && strstr(err, "generated 5 tokens") && strstr(err, "prompt 5 tokens"));
        CHECK(run("info", "--port", f.port, "--host", "127.0.0.1", NULL) == 0); /* options anywhere */
        CHECK(run("--host", "127.0.0.1", "--port", f.port, "info", NULL) == 0 && strstr(out, "model: fake-model") &&
              strstr(out, "server: fake 1.0"));
        CHECK(run("--host", "127.0.0.1", "--port", f.port, "ping", NULL) == 0 && strstr(out, "queue_depth 3") &&
              strstr(out, "kv_blocks_free 77/100"));
        CHECK(run("--host", "127.0.0.1", "--port", f.port, "tokenize", "abc", NULL) == 0 &&
              !strcmp(out, "97 98 99\n"));
        fake_stop(&f);

        /* TCP over IPv6 (skipped quietly inside when ::1 cannot be bound: the server exits) */
        f = fake_start((const char *[]){"--tcp", "--ipv6", NULL});
        CHECK(run("--tcp", "-6", "--host", "::1", "--port", f.port, "generate", "-q", "-n", "3", "ab", NULL) == 0);
        CHECK(!strcmp(out, "ab#0 ab#1 ab#2 \n") && err[0] == 0);
        fake_stop(&f);

        /* errors and their exit codes */
        f = fake_start((const char *[]){"--mode", "busy", NULL});
        CHECK(run("--host", "127.0.0.1", "--port", f.port, "generate", "x", NULL) == 4 && strstr(err, "BUSY") &&
              strstr(err, "retry after 1234 ms"));
        fake_stop(&f);
        f = fake_start((const char *[]){"--tcp", "--mode", "error", NULL});
        CHECK(run("--tcp", "--host", "127.0.0.1", "--port", f.port, "generate", "x", NULL) == 1 &&
              strstr(err, "model exploded"));
        fake_stop(&f);
        f = fake_start((const char *[]){"--mode", "stall", NULL});
        CHECK(run("--host", "127.0.0.1", "--port", f.port, "--timeout", "300", "generate", "x", NULL) == 3 &&
              strstr(err, "no answer"));
        fake_stop(&f);
        f = fake_start((const char *[]){"--tcp", "--mode", "garbage", NULL});
        CHECK(run("--tcp", "--host", "127.0.0.1", "--port", f.port, "generate", "x", NULL) == 1 &&
              strstr(err, "bad frame"));
        char dead_port[16];
        snprintf(dead_port, sizeof(dead_port), "%s", f.port);
        fake_stop(&f);
        CHECK(run("--tcp", "--host", "127.0.0.1", "--port", dead_port, "ping", NULL) == 3 &&
              strstr(err, "cannot reach"));
        CHECK(run("--udp", "--host", "127.0.0.1", "--port", dead_port, "--timeout", "500", "ping", NULL) == 3 &&
              strstr(err, "cannot reach"));

        /* the HELLO's bound: a UDP port that reads and never answers */
        int silent = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t sl = sizeof(sa);
        CHECK(silent >= 0 && bind(silent, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
              getsockname(silent, (struct sockaddr *)&sa, &sl) == 0);
        char sport[16];
        snprintf(sport, sizeof(sport), "%u", ntohs(sa.sin_port));
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        CHECK(run("--host", "127.0.0.1", "--port", sport, "--connect-timeout", "700", "ping", NULL) == 3 &&
              strstr(err, "within 700 ms"));
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
        CHECK(ms >= 650 && ms < 10000);
        CHECK(run("--host", "127.0.0.1", "--port", sport, "--timeout", "400", "ping", NULL) == 3 &&
              strstr(err, "within 400 ms")); /* --timeout shorter than the default bounds the HELLO */
        CHECK(run("--connect-timeout", "600", "--host", "127.0.0.1", "--port", sport, "--timeout", "300", "ping",
                  NULL) == 3 && strstr(err, "within 600 ms")); /* given explicitly, in any order: kept */
        CHECK(run("--connect-timeout", "0", "ping", NULL) == 2 && strstr(err, "--connect-timeout"));
        CHECK(run("--connect-timeout", "x", "ping", NULL) == 2 && strstr(err, "--connect-timeout"));
        char buf[2048];
        CHECK(recv(silent, buf, sizeof(buf), MSG_DONTWAIT) > 0); /* the HELLOs did arrive */
        close(silent);

        if (failures)
                fprintf(stderr, "%d checks failed\n", failures);
        return failures ? 1 : 0;
}
