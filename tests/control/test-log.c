/* test-log — the logger picks journald only when JOURNAL_STREAM names stderr, writes exact
 * "sluiced: level: message" lines otherwise, sends the structured fields to the journal,
 * honours level changes; the audit log writes one exact line per request, escapes text
 * only in with-text mode, and reopens (logrotate) without losing lines. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control.h"
#include "log_internal.h"

static int failures;

#define CHECK(c)                                                                   \
        do {                                                                       \
                if (!(c)) {                                                        \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
                        failures++;                                                \
                }                                                                  \
        } while (0)

static char journal[4096];

static int sink(const struct iovec *iov, int n)
{
        size_t o = 0;
        for (int i = 0; i < n; i++)
                o += (size_t)snprintf(journal + o, sizeof(journal) - o, "%.*s|", (int)iov[i].iov_len,
                                      (const char *)iov[i].iov_base);
        return 0;
}

static char *slurp(const char *path)
{
        static char buf[8192];
        int fd = open(path, O_RDONLY);
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        buf[n > 0 ? n : 0] = 0;
        if (fd >= 0)
                close(fd);
        return buf;
}

static void test_logger(const char *dir)
{
        char path[256], js[64];
        snprintf(path, sizeof(path), "%s/stderr", dir);
        int saved = dup(STDERR_FILENO), fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        CHECK(saved >= 0 && fd >= 0);
        dup2(fd, STDERR_FILENO);
        struct stat st;
        fstat(STDERR_FILENO, &st);

        unsetenv("JOURNAL_STREAM");
        ctl_log_open(CTL_LOG_AUTO, SL_LOG_INFO);
        CHECK(!ctl_log_is_journal());
        struct ctl_log_field f[] = {{"REQUEST_ID", "00000000000000ab"}, {"CLIENT", "127.0.0.1:5000"}};
        ctl_log(SL_LOG_INFO, f, 2, "request %d done", 7);
        ctl_logf(SL_LOG_DEBUG, "hidden");
        ctl_logf(SL_LOG_ERR, "bad: %s", "thing");
        ctl_log_set_level(SL_LOG_DEBUG);
        ctl_logf(SL_LOG_DEBUG, "now shown");
        ctl_log_set_level(SL_LOG_WARNING);
        ctl_logf(SL_LOG_NOTICE, "hidden too");
        ctl_logf(SL_LOG_WARNING, "warned");

        /* A JOURNAL_STREAM for another file is not stderr. */
        snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino + 1);
        setenv("JOURNAL_STREAM", js, 1);
        ctl_log_open(CTL_LOG_AUTO, SL_LOG_INFO);
        CHECK(!ctl_log_is_journal());
        ctl_log_open(CTL_LOG_STDERR, SL_LOG_INFO);
        CHECK(!ctl_log_is_journal());

        dup2(saved, STDERR_FILENO);
        close(saved);
        close(fd);
        const char *want = "sluiced: info: request 7 done\n"
                           "sluiced: err: bad: thing\n"
                           "sluiced: debug: now shown\n"
                           "sluiced: warning: warned\n";
        const char *got = slurp(path);
        if (strcmp(got, want)) {
                fprintf(stderr, "stderr lines:\n%s---want:\n%s", got, want);
                failures++;
        }

        /* JOURNAL_STREAM naming stderr: the journal, with the fields. */
        fstat(STDERR_FILENO, &st);
        snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
        setenv("JOURNAL_STREAM", js, 1);
        ctl_log_set_journal_sink(sink);
        ctl_log_open(CTL_LOG_AUTO, SL_LOG_INFO);
        CHECK(ctl_log_is_journal());
        int line = __LINE__ + 1;
        ctl_log(SL_LOG_NOTICE, f, 2, "request %d done", 8);
        char want_j[1024];
        snprintf(want_j, sizeof(want_j),
                 "PRIORITY=5|SYSLOG_IDENTIFIER=sluiced|CODE_FILE=%s|CODE_LINE=%d|CODE_FUNC=test_logger|"
                 "MESSAGE=request 8 done|SLUICE_REQUEST_ID=00000000000000ab|SLUICE_CLIENT=127.0.0.1:5000|",
                 __FILE__, line);
        if (strcmp(journal, want_j)) {
                fprintf(stderr, "journal: %s\nwant:    %s\n", journal, want_j);
                failures++;
        }
        journal[0] = 0;
        ctl_logf(SL_LOG_DEBUG, "hidden");
        CHECK(journal[0] == 0);
        ctl_log_set_journal_sink(NULL);
        ctl_log_open(CTL_LOG_STDERR, SL_LOG_INFO);
        unsetenv("JOURNAL_STREAM");

        enum sl_log_level l;
        CHECK(ctl_log_level_parse("warning", &l) == 0 && l == SL_LOG_WARNING);
        CHECK(ctl_log_level_parse("error", &l) == 0 && l == SL_LOG_ERR);
        CHECK(ctl_log_level_parse("verbose", &l) == -EINVAL);
}

/* Replaces the timestamp (up to the first space) with T, for comparison. */
static void strip_times(char *s)
{
        char *out = s;
        while (*s) {
                char *sp = strchr(s, ' '), *nl = strchr(s, '\n');
                if (!sp || !nl)
                        break;
                *out++ = 'T';
                size_t n = (size_t)(nl - sp) + 1;
                memmove(out, sp, n);
                out += n;
                s = nl + 1;
        }
        *out = 0;
}

static void test_audit(const char *dir)
{
        char path[256], rotated[256];
        struct sl_error err;
        struct ctl_audit *a = NULL;
        snprintf(path, sizeof(path), "%s/audit.log", dir);
        snprintf(rotated, sizeof(rotated), "%s/audit.log.1", dir);

        struct sockaddr_in6 c6 = {.sin6_family = AF_INET6, .sin6_port = htons(5555)};
        inet_pton(AF_INET6, "::1", &c6.sin6_addr);
        static const char prompt[] = "say \"hi\"\n\ttab \\ caf\xc3\xa9 bad\xff\x01 end";
        struct ctl_audit_record r = {
                .request_id = 0x1234abcd, .client = (struct sockaddr *)&c6, .client_len = sizeof(c6),
                .transport = "udp", .prompt_tokens = 12, .generated_tokens = 34, .outcome = "eos",
                .ttft_us = 1500, .latency_us = 123456, .prompt = prompt, .prompt_len = sizeof(prompt) - 1,
                .output = "ok", .output_len = 2};

        CHECK(ctl_audit_open(CTL_AUDIT_OFF, path, &a, &err) == 0);
        CHECK(ctl_audit_write(a, &r) == 0);
        CHECK(access(path, F_OK) < 0);
        CHECK(ctl_audit_reopen(a, CTL_AUDIT_ON, path, &err) == 0);
        CHECK(ctl_audit_write(a, &r) == 0);
        CHECK(ctl_audit_reopen(a, CTL_AUDIT_WITH_TEXT, path, &err) == 0);
        CHECK(ctl_audit_write(a, &r) == 0);
        /* logrotate: rename, then reopen on SIGHUP. */
        CHECK(rename(path, rotated) == 0);
        CHECK(ctl_audit_reopen(a, CTL_AUDIT_ON, path, &err) == 0);
        r.client = NULL;
        r.outcome = "busy";
        r.ttft_us = 0;
        CHECK(ctl_audit_write(a, &r) == 0);
        /* A failed reopen keeps the old file. */
        CHECK(ctl_audit_reopen(a, CTL_AUDIT_ON, "/nonexistent/dir/audit.log", &err) == -ENOENT);
        CHECK(!strcmp(err.msg, "audit log /nonexistent/dir/audit.log: No such file or directory"));
        CHECK(ctl_audit_write(a, &r) == 0);
        ctl_audit_close(a);
        ctl_audit_close(NULL);

        char *got = slurp(rotated);
        /* The timestamp: 2025-01-02T03:04:05.678Z */
        int y, mo, d, h, mi, s, ms;
        CHECK(sscanf(got, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ ", &y, &mo, &d, &h, &mi, &s, &ms) == 7 && strlen(got) > 24 && got[23] == 'Z');
        strip_times(got);
        const char *want1 =
                "T client=[::1]:5555 transport=udp id=000000001234abcd prompt_tokens=12 generated_tokens=34 "
                "outcome=eos ttft_ms=1.500 latency_ms=123.456\n"
                "T client=[::1]:5555 transport=udp id=000000001234abcd prompt_tokens=12 generated_tokens=34 "
                "outcome=eos ttft_ms=1.500 latency_ms=123.456 prompt=\"say \\\"hi\\\"\\n\\ttab \\\\ caf\xc3\xa9 bad\\xff\\x01 end\" output=\"ok\"\n";
        if (strcmp(got, want1)) {
                fprintf(stderr, "audit:\n%s---want:\n%s", got, want1);
                failures++;
        }
        got = slurp(path);
        strip_times(got);
        const char *want2 =
                "T client=- transport=udp id=000000001234abcd prompt_tokens=12 generated_tokens=34 "
                "outcome=busy ttft_ms=0.000 latency_ms=123.456\n"
                "T client=- transport=udp id=000000001234abcd prompt_tokens=12 generated_tokens=34 "
                "outcome=busy ttft_ms=0.000 latency_ms=123.456\n";
        if (strcmp(got, want2)) {
                fprintf(stderr, "audit after rotation:\n%s---want:\n%s", got, want2);
                failures++;
        }
        unlink(path);
        unlink(rotated);
}

int main(void)
{
        char dir[] = "/tmp/sluice-log.XXXXXX", p[300];
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        test_logger(dir);
        test_audit(dir);
        snprintf(p, sizeof(p), "%s/stderr", dir);
        unlink(p);
        rmdir(dir);
        if (failures) {
                fprintf(stderr, "test-log: %d failures\n", failures);
                return 1;
        }
        printf("test-log: ok\n");
        return 0;
}
