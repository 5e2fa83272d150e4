/* audit.c — the audit log: one line per finished request, appended with one write(2),
 * reopened on SIGHUP (new settings or logrotate). Text, when enabled, is escaped so that a
 * line is always one line of valid UTF-8. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "control.h"

struct ctl_audit {
        pthread_mutex_t lock;
        int fd;                         /* -1 when off */
        enum ctl_audit_mode mode;
        char *buf;
        size_t cap;
};

static int open_file(enum ctl_audit_mode mode, const char *path, int *fd, struct sl_error *err)
{
        *fd = -1;
        if (mode == CTL_AUDIT_OFF)
                return 0;
        *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
        if (*fd < 0)
                return sl_errorf(err, -errno, "audit log %s: %s", path, strerror(errno));
        return 0;
}

int ctl_audit_open(enum ctl_audit_mode mode, const char *path, struct ctl_audit **out,
                   struct sl_error *err)
{
        struct ctl_audit *a = calloc(1, sizeof(*a));
        int r;
        *out = NULL;
        if (!a)
                return sl_errorf(err, -ENOMEM, "audit log: out of memory");
        pthread_mutex_init(&a->lock, NULL);
        r = open_file(mode, path, &a->fd, err);
        if (r < 0)
                goto fail;
        a->mode = mode;
        *out = a;
        return 0;
fail:
        ctl_audit_close(a);
        return r;
}

int ctl_audit_reopen(struct ctl_audit *a, enum ctl_audit_mode mode, const char *path,
                     struct sl_error *err)
{
        int fd, r = open_file(mode, path, &fd, err);
        if (r < 0)
                return r;
        pthread_mutex_lock(&a->lock);
        int old = a->fd;
        a->fd = fd;
        a->mode = mode;
        pthread_mutex_unlock(&a->lock);
        if (old >= 0)
                close(old);
        return 0;
}

void ctl_audit_close(struct ctl_audit *a)
{
        if (!a)
                return;
        if (a->fd >= 0)
                close(a->fd);
        pthread_mutex_destroy(&a->lock);
        free(a->buf);
        free(a);
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
        unsigned char c = s[0];
        size_t len;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
                len = 2;
                cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
                len = 3;
                cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
                len = 4;
                cp = c & 0x07;
        } else {
                return 0;
        }
        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[i] & 0x3f);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
                return 0;
        return len;
}

/* Quoted, with \" \\ \n \r \t and \xNN for other control bytes and bytes that are not
 * valid UTF-8. At most 4 output bytes per input byte, plus the quotes. */
static size_t escape(char *out, const char *in, size_t n)
{
        static const char hex[] = "0123456789abcdef";
        const unsigned char *s = (const unsigned char *)in;
        size_t o = 0;
        out[o++] = '"';
        for (size_t i = 0; i < n;) {
                unsigned char c = s[i];
                if (c == '"' || c == '\\') {
                        out[o++] = '\\';
                        out[o++] = (char)c;
                } else if (c == '\n' || c == '\r' || c == '\t') {
                        out[o++] = '\\';
                        out[o++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
                } else if (c >= 0x20 && c < 0x7f) {
                        out[o++] = (char)c;
                } else if (c >= 0x80) {
                        size_t l = utf8_len(s + i, n - i);
                        if (l) {
                                memcpy(out + o, s + i, l);
                                o += l;
                                i += l;
                                continue;
                        }
                        goto hexesc;
                } else {
hexesc:
                        out[o++] = '\\';
                        out[o++] = 'x';
                        out[o++] = hex[c >> 4];
                        out[o++] = hex[c & 15];
                }
                i++;
        }
        out[o++] = '"';
        return o;
}

static void format_client(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap)
{
        struct ctl_addr a;
        if (!sa || len == 0 || len > sizeof(a.ss) ||
            (sa->sa_family != AF_INET && sa->sa_family != AF_INET6)) {
                snprintf(buf, cap, "-");
                return;
        }
        memset(&a, 0, sizeof(a));
        memcpy(&a.ss, sa, len);
        a.len = len;
        ctl_addr_format(&a, buf, cap);
}

int ctl_audit_write(struct ctl_audit *a, const struct ctl_audit_record *r)
{
        char head[512], client[80], when[40];
        struct timespec ts;
        struct tm tm;
        int ret = 0;

        if (!a || a->fd < 0)
                return 0;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
        format_client(r->client, r->client_len, client, sizeof(client));
        int hn = snprintf(head, sizeof(head),
                          "%s.%03ldZ client=%s transport=%s id=%016llx prompt_tokens=%u generated_tokens=%u "
                          "outcome=%s ttft_ms=%.3f latency_ms=%.3f",
                          when, ts.tv_nsec / 1000000, client, r->transport ? r->transport : "-",
                          (unsigned long long)r->request_id, r->prompt_tokens, r->generated_tokens,
                          r->outcome ? r->outcome : "-", r->ttft_us / 1000.0, r->latency_us / 1000.0);
        if (hn < 0 || hn >= (int)sizeof(head))
                hn = (int)sizeof(head) - 1;

        pthread_mutex_lock(&a->lock);
        bool text = a->mode == CTL_AUDIT_WITH_TEXT;
        size_t pl = text && r->prompt ? r->prompt_len : 0, ol = text && r->output ? r->output_len : 0;
        size_t need = (size_t)hn + 32 + 4 * (pl + ol);
        if (need > a->cap) {
                char *nb = realloc(a->buf, need);
                if (!nb) {
                        ret = -ENOMEM;
                        goto out;
                }
                a->buf = nb;
                a->cap = need;
        }
        memcpy(a->buf, head, (size_t)hn);
        size_t o = (size_t)hn;
        if (text) {
                memcpy(a->buf + o, " prompt=", 8);
                o += 8;
                o += escape(a->buf + o, r->prompt ? r->prompt : "", pl);
                memcpy(a->buf + o, " output=", 8);
                o += 8;
                o += escape(a->buf + o, r->output ? r->output : "", ol);
        }
        a->buf[o++] = '\n';
        for (size_t done = 0; done < o;) {
                ssize_t w = write(a->fd, a->buf + done, o - done);
                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0) {
                        ret = -errno;
                        break;
                }
                done += (size_t)w;
        }
out:
        pthread_mutex_unlock(&a->lock);
        return ret;
}
