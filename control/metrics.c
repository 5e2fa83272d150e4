/* metrics.c — the metrics registry: counters, gauges and histograms registered at start,
 * updated lock-free with relaxed atomics from any thread, rendered in the Prometheus text
 * exposition format (version 0.0.4) for /metrics. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"

#define HIST_MAX_BUCKETS 32

enum mtype { M_COUNTER, M_GAUGE, M_HISTOGRAM };

/* One series. Hot fields first; each series has its own cache lines. */
struct series {
        uint64_t value;                 /* counter, or gauge as int64 bits */
        uint64_t sum_bits;              /* histogram: double */
        uint64_t counts[HIST_MAX_BUCKETS + 1]; /* histogram: per bucket, not cumulative; last = +Inf */
        double bounds[HIST_MAX_BUCKETS];
        size_t nb;
        enum mtype type;
        char *name, *help, *labels;     /* labels rendered: k="v",k2="v2" or "" */
} __attribute__((aligned(SL_CACHELINE)));

struct ctl_counter { struct series s; };
struct ctl_gauge { struct series s; };
struct ctl_histogram { struct series s; };

struct ctl_metrics {
        pthread_mutex_t lock;
        struct series **v;
        size_t n, cap;
};

static const char *const type_names[] = {"counter", "gauge", "histogram"};

int ctl_metrics_create(struct ctl_metrics **out, struct sl_error *err)
{
        struct ctl_metrics *m = calloc(1, sizeof(*m));
        if (!m)
                return sl_errorf(err, -ENOMEM, "metrics: out of memory");
        pthread_mutex_init(&m->lock, NULL);
        *out = m;
        return 0;
}

static void series_free(struct series *s)
{
        if (!s)
                return;
        free(s->name);
        free(s->help);
        free(s->labels);
        free(s);
}

void ctl_metrics_free(struct ctl_metrics *m)
{
        if (!m)
                return;
        for (size_t i = 0; i < m->n; i++)
                series_free(m->v[i]);
        free(m->v);
        pthread_mutex_destroy(&m->lock);
        free(m);
}

static bool name_ok(const char *s, bool metric)
{
        if (!s || !*s || (*s >= '0' && *s <= '9'))
                return false;
        for (; *s; s++)
                if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
                      *s == '_' || (metric && *s == ':')))
                        return false;
        return true;
}

/* "a=x,b=y" -> a="x",b="y" with \\ \" \n escaped; NULL on a bad label set. */
static char *render_labels(const char *in, struct sl_error *err)
{
        if (!in || !*in)
                return strdup("");
        size_t cap = strlen(in) * 2 + 8, o = 0;
        char *out = malloc(cap), *copy = strdup(in);
        if (!out || !copy)
                goto nomem;
        for (char *p = copy, *next; p; p = next) {
                next = strchr(p, ',');
                if (next)
                        *next++ = 0;
                char *eq = strchr(p, '=');
                if (!eq) {
                        sl_errorf(err, -EINVAL, "metrics: label '%s' is not name=value", p);
                        goto fail;
                }
                *eq = 0;
                if (!name_ok(p, false) || !strncmp(p, "__", 2) || !strcmp(p, "le")) {
                        sl_errorf(err, -EINVAL, "metrics: bad label name '%s'", p);
                        goto fail;
                }
                o += (size_t)snprintf(out + o, cap - o, "%s%s=\"", o ? "," : "", p);
                for (const char *v = eq + 1; *v; v++) {
                        if (*v == '\\' || *v == '"' || *v == '\n') {
                                out[o++] = '\\';
                                out[o++] = *v == '\n' ? 'n' : *v;
                        } else {
                                out[o++] = *v;
                        }
                }
                out[o++] = '"';
                out[o] = 0;
        }
        free(copy);
        return out;
nomem:
        sl_errorf(err, -ENOMEM, "metrics: out of memory");
fail:
        free(out);
        free(copy);
        return NULL;
}

static struct series *reg(struct ctl_metrics *m, enum mtype type, const char *name, const char *help,
                          const char *labels, const double *bounds, size_t nb, struct sl_error *err)
{
        struct series *s = NULL, *ret = NULL;
        char *lab = NULL;
        if (!name_ok(name, true)) {
                sl_errorf(err, -EINVAL, "metrics: bad metric name '%s'", name ? name : "(null)");
                return NULL;
        }
        if (!help || strchr(help, '\n') || strchr(help, '\\')) {
                sl_errorf(err, -EINVAL, "%s: HELP must be one line without backslashes", name);
                return NULL;
        }
        if (type == M_HISTOGRAM) {
                if (nb > HIST_MAX_BUCKETS || (nb && !bounds)) {
                        sl_errorf(err, -EINVAL, "%s: at most %d buckets", name, HIST_MAX_BUCKETS);
                        return NULL;
                }
                for (size_t i = 0; i < nb; i++)
                        if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) {
                                sl_errorf(err, -EINVAL, "%s: bucket bounds must be finite and increasing", name);
                                return NULL;
                        }
        }
        lab = render_labels(labels, err);
        if (!lab)
                return NULL;
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < m->n; i++) {
                struct series *o = m->v[i];
                if (strcmp(o->name, name))
                        continue;
                if (o->type != type || strcmp(o->help, help) ||
                    (type == M_HISTOGRAM && (o->nb != nb || memcmp(o->bounds, bounds, nb * sizeof(double))))) {
                        sl_errorf(err, -EINVAL, "%s: registered before with another type, help or buckets", name);
                        goto out;
                }
                if (!strcmp(o->labels, lab)) {
                        ret = o;
                        goto out;
                }
        }
        if (m->n == m->cap) {
                size_t cap = m->cap ? m->cap * 2 : 32;
                struct series **v = realloc(m->v, cap * sizeof(*v));
                if (!v)
                        goto nomem;
                m->v = v;
                m->cap = cap;
        }
        s = aligned_alloc(SL_CACHELINE, SL_ALIGN_UP(sizeof(*s), SL_CACHELINE));
        if (!s)
                goto nomem;
        memset(s, 0, sizeof(*s));
        s->type = type;
        s->nb = nb;
        if (nb)
                memcpy(s->bounds, bounds, nb * sizeof(double));
        s->name = strdup(name);
        s->help = strdup(help);
        s->labels = lab;
        lab = NULL;
        if (!s->name || !s->help)
                goto nomem;
        m->v[m->n++] = s;
        ret = s;
        s = NULL;
        goto out;
nomem:
        sl_errorf(err, -ENOMEM, "metrics: out of memory");
out:
        pthread_mutex_unlock(&m->lock);
        series_free(s);
        free(lab);
        return ret;
}

struct ctl_counter *ctl_metrics_counter(struct ctl_metrics *m, const char *name, const char *help,
                                        const char *labels, struct sl_error *err)
{
        return (struct ctl_counter *)reg(m, M_COUNTER, name, help, labels, NULL, 0, err);
}

struct ctl_gauge *ctl_metrics_gauge(struct ctl_metrics *m, const char *name, const char *help,
                                    const char *labels, struct sl_error *err)
{
        return (struct ctl_gauge *)reg(m, M_GAUGE, name, help, labels, NULL, 0, err);
}

struct ctl_histogram *ctl_metrics_histogram(struct ctl_metrics *m, const char *name, const char *help,
                                            const char *labels, const double *bounds, size_t n,
                                            struct sl_error *err)
{
        return (struct ctl_histogram *)reg(m, M_HISTOGRAM, name, help, labels, bounds, n, err);
}

/* ---- updates ---- */

void ctl_counter_add(struct ctl_counter *c, uint64_t v)
{
        if (c)
                __atomic_fetch_add(&c->s.value, v, __ATOMIC_RELAXED);
}

uint64_t ctl_counter_get(const struct ctl_counter *c)
{
        return c ? __atomic_load_n(&c->s.value, __ATOMIC_RELAXED) : 0;
}

void ctl_gauge_set(struct ctl_gauge *g, int64_t v)
{
        if (g)
                __atomic_store_n(&g->s.value, (uint64_t)v, __ATOMIC_RELAXED);
}

void ctl_gauge_add(struct ctl_gauge *g, int64_t v)
{
        if (g)
                __atomic_fetch_add(&g->s.value, (uint64_t)v, __ATOMIC_RELAXED);
}

int64_t ctl_gauge_get(const struct ctl_gauge *g)
{
        return g ? (int64_t)__atomic_load_n(&g->s.value, __ATOMIC_RELAXED) : 0;
}

void ctl_histogram_observe(struct ctl_histogram *h, double v)
{
        if (!h || isnan(v))
                return;
        struct series *s = &h->s;
        size_t i = 0;
        while (i < s->nb && v > s->bounds[i])
                i++;
        __atomic_fetch_add(&s->counts[i], 1, __ATOMIC_RELAXED);
        uint64_t old = __atomic_load_n(&s->sum_bits, __ATOMIC_RELAXED), nw;
        do {
                double d;
                memcpy(&d, &old, sizeof(d));
                d += v;
                memcpy(&nw, &d, sizeof(nw));
        } while (!__atomic_compare_exchange_n(&s->sum_bits, &old, nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
}

/* ---- rendering ---- */

struct sbuf {
        char *p;
        size_t n, cap;
        bool oom;
};

__attribute__((format(printf, 2, 3)))
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
        va_list ap;
        for (;;) {
                if (b->oom)
                        return;
                va_start(ap, fmt);
                int w = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
                va_end(ap);
                if (w < 0) {
                        b->oom = true;
                        return;
                }
                if ((size_t)w < b->cap - b->n) {
                        b->n += (size_t)w;
                        return;
                }
                size_t cap = (b->cap + (size_t)w + 1) * 2;
                char *p = realloc(b->p, cap);
                if (!p) {
                        b->oom = true;
                        return;
                }
                b->p = p;
                b->cap = cap;
        }
}

/* Shortest text that reads back as the same double (Prometheus parses Go floats). */
static const char *fmt_double(double v, char *buf, size_t cap)
{
        if (isinf(v))
                return v > 0 ? "+Inf" : "-Inf";
        if (isnan(v))
                return "NaN";
        if (v == (double)(int64_t)v && fabs(v) < 1e15) {
                snprintf(buf, cap, "%lld", (long long)v);
                return buf;
        }
        for (int prec = 1; prec <= 17; prec++) {
                snprintf(buf, cap, "%.*g", prec, v);
                if (strtod(buf, NULL) == v)
                        break;
        }
        return buf;
}

static void render_series(struct sbuf *b, const struct series *s)
{
        const char *sep = s->labels[0] ? "," : "";
        char num[40];
        switch (s->type) {
        case M_COUNTER:
                sb_printf(b, "%s%s%s%s %llu\n", s->name, s->labels[0] ? "{" : "", s->labels,
                          s->labels[0] ? "}" : "", (unsigned long long)__atomic_load_n(&s->value, __ATOMIC_RELAXED));
                break;
        case M_GAUGE:
                sb_printf(b, "%s%s%s%s %lld\n", s->name, s->labels[0] ? "{" : "", s->labels,
                          s->labels[0] ? "}" : "", (long long)__atomic_load_n(&s->value, __ATOMIC_RELAXED));
                break;
        case M_HISTOGRAM: {
                uint64_t cum = 0, sum_bits = __atomic_load_n(&s->sum_bits, __ATOMIC_RELAXED);
                double sum;
                memcpy(&sum, &sum_bits, sizeof(sum));
                for (size_t i = 0; i <= s->nb; i++) {
                        cum += __atomic_load_n(&s->counts[i], __ATOMIC_RELAXED);
                        sb_printf(b, "%s_bucket{%s%sle=\"%s\"} %llu\n", s->name, s->labels, sep,
                                  i < s->nb ? fmt_double(s->bounds[i], num, sizeof(num)) : "+Inf",
                                  (unsigned long long)cum);
                }
                sb_printf(b, "%s_sum%s%s%s %s\n", s->name, s->labels[0] ? "{" : "", s->labels,
                          s->labels[0] ? "}" : "", fmt_double(sum, num, sizeof(num)));
                sb_printf(b, "%s_count%s%s%s %llu\n", s->name, s->labels[0] ? "{" : "", s->labels,
                          s->labels[0] ? "}" : "", (unsigned long long)cum);
                break;
        }
        }
}

int ctl_metrics_render(struct ctl_metrics *m, char **out, size_t *len)
{
        struct sbuf b = {0};
        b.cap = 4096;
        b.p = malloc(b.cap);
        if (!b.p)
                return -ENOMEM;
        b.p[0] = 0;
        if (m) {
                pthread_mutex_lock(&m->lock);
                /* One family per name, in the order of first registration. */
                for (size_t i = 0; i < m->n; i++) {
                        bool first = true;
                        for (size_t j = 0; j < i && first; j++)
                                if (!strcmp(m->v[j]->name, m->v[i]->name))
                                        first = false;
                        if (!first)
                                continue;
                        sb_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", m->v[i]->name, m->v[i]->help,
                                  m->v[i]->name, type_names[m->v[i]->type]);
                        for (size_t j = i; j < m->n; j++)
                                if (!strcmp(m->v[j]->name, m->v[i]->name))
                                        render_series(&b, m->v[j]);
                }
                pthread_mutex_unlock(&m->lock);
        }
        if (b.oom) {
                free(b.p);
                return -ENOMEM;
        }
        *out = b.p;
        *len = b.n;
        return 0;
}
