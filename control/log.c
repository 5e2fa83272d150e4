/* log.c — the daemon's logger: journald with structured fields (MESSAGE, PRIORITY,
 * SYSLOG_IDENTIFIER, CODE_*, SLUICE_*) when stderr is the journal, else one
 * "sluiced: level: message" line on stderr per message. The level can change at any time. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "control.h"
#include "log_internal.h"

#define LOG_FIELDS_MAX 16

static int level = SL_LOG_INFO;     /* relaxed atomic */
static bool to_journal;
static int (*journal_sink)(const struct iovec *iov, int n);

static const char *const level_names[] = {[SL_LOG_ERR] = "err", [SL_LOG_WARNING] = "warning",
                                          [SL_LOG_NOTICE] = "notice", [SL_LOG_INFO] = "info",
                                          [SL_LOG_DEBUG] = "debug"};

void ctl_log_set_journal_sink(int (*sink)(const struct iovec *iov, int n))
{
        journal_sink = sink;
}

int ctl_log_level_parse(const char *s, enum sl_log_level *out)
{
        for (int i = SL_LOG_ERR; i <= SL_LOG_DEBUG; i++)
                if (!strcmp(s, level_names[i])) {
                        *out = (enum sl_log_level)i;
                        return 0;
                }
        if (!strcmp(s, "error")) {
                *out = SL_LOG_ERR;
                return 0;
        }
        if (!strcmp(s, "warn")) {
                *out = SL_LOG_WARNING;
                return 0;
        }
        return -EINVAL;
}

/* systemd sets JOURNAL_STREAM=dev:ino for a stderr connected to journald. */
static bool stderr_is_journal(void)
{
        const char *js = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void ctl_log_open(enum ctl_log_target target, enum sl_log_level lvl)
{
        to_journal = target == CTL_LOG_JOURNAL || (target == CTL_LOG_AUTO && stderr_is_journal());
        ctl_log_set_level(lvl);
}

void ctl_log_set_level(enum sl_log_level lvl)
{
        __atomic_store_n(&level, (int)lvl, __ATOMIC_RELAXED);
}

bool ctl_log_enabled(enum sl_log_level lvl)
{
        return (int)lvl <= __atomic_load_n(&level, __ATOMIC_RELAXED);
}

bool ctl_log_is_journal(void)
{
        return to_journal;
}

static void send_journal(const char *file, int line, const char *func, enum sl_log_level lvl,
                         const struct ctl_log_field *fields, size_t n, const char *msg)
{
        char fixed[5][300];
        char *extra[LOG_FIELDS_MAX] = {0};
        struct iovec iov[5 + LOG_FIELDS_MAX];
        int k = 0;

        snprintf(fixed[0], sizeof(fixed[0]), "PRIORITY=%d", (int)lvl);
        snprintf(fixed[1], sizeof(fixed[1]), "SYSLOG_IDENTIFIER=sluiced");
        snprintf(fixed[2], sizeof(fixed[2]), "CODE_FILE=%s", file);
        snprintf(fixed[3], sizeof(fixed[3]), "CODE_LINE=%d", line);
        snprintf(fixed[4], sizeof(fixed[4]), "CODE_FUNC=%s", func);
        for (int i = 0; i < 5; i++)
                iov[k++] = (struct iovec){fixed[i], strlen(fixed[i])};
        /* MESSAGE may be long; journald's native protocol takes any bytes after '='. */
        char *m = NULL;
        if (asprintf(&m, "MESSAGE=%s", msg) >= 0)
                iov[k++] = (struct iovec){m, strlen(m)};
        for (size_t i = 0; i < n && i < LOG_FIELDS_MAX - 1; i++) {
                if (asprintf(&extra[i], "SLUICE_%s=%s", fields[i].key, fields[i].value ? fields[i].value : "") < 0) {
                        extra[i] = NULL;
                        continue;
                }
                iov[k++] = (struct iovec){extra[i], strlen(extra[i])};
        }
        if (journal_sink)
                journal_sink(iov, k);
        else
                sd_journal_sendv(iov, k);
        free(m);
        for (size_t i = 0; i < LOG_FIELDS_MAX; i++)
                free(extra[i]);
}

void ctl_log_at(const char *file, int line, const char *func, enum sl_log_level lvl,
                const struct ctl_log_field *fields, size_t n, const char *fmt, ...)
{
        char msg[2048];
        va_list ap;
        if (!ctl_log_enabled(lvl))
                return;
        if (lvl < SL_LOG_ERR)
                lvl = SL_LOG_ERR;
        if (lvl > SL_LOG_DEBUG)
                lvl = SL_LOG_DEBUG;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        if (to_journal) {
                send_journal(file, line, func, lvl, fields, n, msg);
                return;
        }
        /* One write per line so that lines of different threads do not mix. */
        char out[sizeof(msg) + 32];
        int len = snprintf(out, sizeof(out), "sluiced: %s: %s\n", level_names[lvl], msg);
        if (len >= (int)sizeof(out)) {
                len = (int)sizeof(out) - 1;
                out[len - 1] = '\n';
        }
        for (const char *p = out; len > 0;) {
                ssize_t w = write(STDERR_FILENO, p, (size_t)len);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        break;
                p += w;
                len -= (int)w;
        }
}
