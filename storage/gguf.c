/* gguf.c — GGUF v2/v3 parsing and validation. The file is untrusted: every read is
 * bounds-checked against the bytes that remain, every count is bounded by the input size
 * before anything is allocated, and every size is computed with overflow checks. */
#define _GNU_SOURCE /* qsort_r */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage.h"

/* Smallest possible encodings, used to bound counts before allocating:
 * kv = key length (8) + value type (4) + a one-byte value;
 * tensor = name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8). */
#define GGUF_MIN_KV_SIZE 13u
#define GGUF_MIN_TENSOR_SIZE 32u
#define GGUF_MAX_NAME 64u /* gguf.md: tensor names are at most 64 bytes */

struct gguf_priv {
        void *map; /* gguf_open's mapping, or NULL */
        size_t map_len;
        uint64_t *kv_sorted;     /* kv indices sorted by key, for lookups */
        uint64_t *tensor_sorted; /* tensor indices sorted by name */
};

struct cursor {
        const uint8_t *p;
        size_t len;
        size_t pos;
        struct sl_error *err;
        char what[128]; /* prefix for error messages: which kv / tensor is being read */
};

/* ---- names for messages ---- */

/* A file's bytes made safe for a one-line message: at most 48 chars, no control bytes. */
static const char *printable(struct gguf_str s, char *buf, size_t size)
{
        size_t n = 0;
        for (uint64_t i = 0; i < s.len && n + 4 < size; i++) {
                unsigned char c = (unsigned char)s.ptr[i];
                buf[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
                if (n == 48 && i + 1 < s.len) {
                        buf[n++] = '.';
                        buf[n++] = '.';
                        buf[n++] = '.';
                        break;
                }
        }
        buf[n] = 0;
        return buf;
}

static const char *value_type_name(uint32_t t)
{
        static const char *const names[GGUF_TYPE_COUNT] = {
                "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64",
                "i64", "f64",
        };
        return t < GGUF_TYPE_COUNT ? names[t] : "?";
}

/* ---- tensor types ---- */

struct type_info {
        const char *name;
        uint32_t blck;
        uint32_t size;
};

/* Sizes as ggml's type_traits (ggml.c), which is what writes the files. */
static const struct type_info type_table[GGML_TYPE_COUNT] = {
        [0] = { "F32", 1, 4 },        [1] = { "F16", 1, 2 },
        [2] = { "Q4_0", 32, 18 },     [3] = { "Q4_1", 32, 20 },
        [6] = { "Q5_0", 32, 22 },     [7] = { "Q5_1", 32, 24 },
        [8] = { "Q8_0", 32, 34 },     [9] = { "Q8_1", 32, 36 },
        [10] = { "Q2_K", 256, 84 },   [11] = { "Q3_K", 256, 110 },
        [12] = { "Q4_K", 256, 144 },  [13] = { "Q5_K", 256, 176 },
        [14] = { "Q6_K", 256, 210 },  [15] = { "Q8_K", 256, 292 },
        [16] = { "IQ2_XXS", 256, 66 }, [17] = { "IQ2_XS", 256, 74 },
        [18] = { "IQ3_XXS", 256, 98 }, [19] = { "IQ1_S", 256, 50 },
        [20] = { "IQ4_NL", 32, 18 },  [21] = { "IQ3_S", 256, 110 },
        [22] = { "IQ2_S", 256, 82 },  [23] = { "IQ4_XS", 256, 136 },
        [24] = { "I8", 1, 1 },        [25] = { "I16", 1, 2 },
        [26] = { "I32", 1, 4 },       [27] = { "I64", 1, 8 },
        [28] = { "F64", 1, 8 },       [29] = { "IQ1_M", 256, 56 },
        [30] = { "BF16", 1, 2 },      [34] = { "TQ1_0", 256, 54 },
        [35] = { "TQ2_0", 256, 66 },  [39] = { "MXFP4", 32, 17 },
};

int ggml_type_size(uint32_t type, uint32_t *blck, uint32_t *type_size)
{
        if (type >= GGML_TYPE_COUNT || !type_table[type].name)
                return -EINVAL;
        if (blck)
                *blck = type_table[type].blck;
        if (type_size)
                *type_size = type_table[type].size;
        return 0;
}

const char *ggml_type_name(uint32_t type)
{
        if (type >= GGML_TYPE_COUNT || !type_table[type].name)
                return "?";
        return type_table[type].name;
}

/* ---- bounded reads ---- */

static size_t remaining(const struct cursor *c)
{
        return c->len - c->pos;
}

static int need(struct cursor *c, uint64_t n, const char *field)
{
        if (n > remaining(c))
                return sl_errorf(c->err, -EPROTO,
                                 "%struncated: %s needs %llu bytes at offset %zu, only %zu remain",
                                 c->what, field, (unsigned long long)n, c->pos, remaining(c));
        return 0;
}

static int read_bytes(struct cursor *c, void *dst, size_t n, const char *field)
{
        int r = need(c, n, field);
        if (r < 0)
                return r;
        memcpy(dst, c->p + c->pos, n);
        c->pos += n;
        return 0;
}

/* The format is little-endian and so is every host we build for (x86-64, aarch64 LE). */
static int read_u32(struct cursor *c, uint32_t *v, const char *field)
{
        return read_bytes(c, v, 4, field);
}

static int read_u64(struct cursor *c, uint64_t *v, const char *field)
{
        return read_bytes(c, v, 8, field);
}

static int read_str(struct cursor *c, struct gguf_str *s, const char *field)
{
        uint64_t n;
        int r = read_u64(c, &n, field);
        if (r < 0)
                return r;
        if (n > remaining(c))
                return sl_errorf(c->err, -EPROTO, "%s%s length %llu exceeds remaining %zu bytes",
                                 c->what, field, (unsigned long long)n, remaining(c));
        s->ptr = (const char *)c->p + c->pos;
        s->len = n;
        c->pos += n;
        return 0;
}

/* ---- values ---- */

static size_t scalar_size(uint32_t t)
{
        switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
        }
}

/* Decodes one scalar of type t at p into v (type already checked). */
static void decode_scalar(uint32_t t, const uint8_t *p, struct gguf_value *v)
{
        union {
                uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
                float f32; uint64_t u64; int64_t i64; double f64;
        } x;
        memcpy(&x, p, scalar_size(t));
        v->type = t;
        switch (t) {
        case GGUF_TYPE_UINT8: v->u64 = x.u8; break;
        case GGUF_TYPE_INT8: v->i64 = x.i8; break;
        case GGUF_TYPE_UINT16: v->u64 = x.u16; break;
        case GGUF_TYPE_INT16: v->i64 = x.i16; break;
        case GGUF_TYPE_UINT32: v->u64 = x.u32; break;
        case GGUF_TYPE_INT32: v->i64 = x.i32; break;
        case GGUF_TYPE_FLOAT32: v->f64 = x.f32; break;
        case GGUF_TYPE_BOOL: v->b = x.u8 != 0; break;
        case GGUF_TYPE_UINT64: v->u64 = x.u64; break;
        case GGUF_TYPE_INT64: v->i64 = x.i64; break;
        case GGUF_TYPE_FLOAT64: v->f64 = x.f64; break;
        }
}

static void value_free(struct gguf_value *v)
{
        if (v->type != GGUF_TYPE_ARRAY || !v->arr.items)
                return;
        if (v->arr.type == GGUF_TYPE_ARRAY)
                for (uint64_t i = 0; i < v->arr.n; i++)
                        value_free(&v->arr.items[i]);
        free(v->arr.items);
        v->arr.items = NULL;
}

static int read_value(struct cursor *c, uint32_t type, struct gguf_value *v, int depth);

static int read_array(struct cursor *c, struct gguf_value *v, int depth)
{
        uint32_t et;
        uint64_t n;
        int r;

        if (depth > GGUF_MAX_DEPTH)
                return sl_errorf(c->err, -EPROTO, "%sarrays nested deeper than %d levels",
                                 c->what, GGUF_MAX_DEPTH);
        r = read_u32(c, &et, "array element type");
        if (r < 0)
                return r;
        if (et >= GGUF_TYPE_COUNT)
                return sl_errorf(c->err, -EPROTO, "%sarray has unknown element type %u", c->what, et);
        r = read_u64(c, &n, "array length");
        if (r < 0)
                return r;
        v->type = GGUF_TYPE_ARRAY;
        v->arr.type = et;
        v->arr.n = 0;
        v->arr.data = NULL;
        v->arr.items = NULL;

        size_t es = scalar_size(et);
        if (es) {
                /* n * es cannot overflow after the division check */
                if (n > remaining(c) / es)
                        return sl_errorf(c->err, -EPROTO,
                                         "%sarray of %llu %s exceeds remaining %zu bytes", c->what,
                                         (unsigned long long)n, value_type_name(et), remaining(c));
                const uint8_t *data = c->p + c->pos;
                if (et == GGUF_TYPE_BOOL)
                        for (uint64_t i = 0; i < n; i++)
                                if (data[i] > 1)
                                        return sl_errorf(c->err, -EPROTO,
                                                         "%sbool array item %llu has byte %u (not 0 or 1)",
                                                         c->what, (unsigned long long)i, data[i]);
                v->arr.n = n;
                v->arr.data = data;
                c->pos += n * es;
                return 0;
        }

        /* Strings take at least 8 bytes each and arrays 12, so this bounds the allocation
         * (sizeof(struct gguf_value) per item) by a small multiple of the input size. */
        size_t min = et == GGUF_TYPE_STRING ? 8 : 12;
        if (n > remaining(c) / min)
                return sl_errorf(c->err, -EPROTO, "%sarray of %llu %s exceeds remaining %zu bytes",
                                 c->what, (unsigned long long)n, value_type_name(et), remaining(c));
        if (n == 0)
                return 0;
        v->arr.items = calloc(n, sizeof(*v->arr.items));
        if (!v->arr.items)
                return sl_errorf(c->err, -ENOMEM, "%sout of memory for %llu array items", c->what,
                                 (unsigned long long)n);
        v->arr.n = n; /* items are zeroed (type u8), so a partial array frees cleanly */
        for (uint64_t i = 0; i < n; i++) {
                r = read_value(c, et, &v->arr.items[i], depth);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int read_value(struct cursor *c, uint32_t type, struct gguf_value *v, int depth)
{
        size_t es = scalar_size(type);
        int r;

        if (es) {
                r = need(c, es, value_type_name(type));
                if (r < 0)
                        return r;
                const uint8_t *p = c->p + c->pos;
                if (type == GGUF_TYPE_BOOL && *p > 1)
                        return sl_errorf(c->err, -EPROTO, "%sbool value has byte %u (not 0 or 1)",
                                         c->what, *p);
                decode_scalar(type, p, v);
                c->pos += es;
                return 0;
        }
        if (type == GGUF_TYPE_STRING) {
                v->type = GGUF_TYPE_STRING;
                return read_str(c, &v->str, "string");
        }
        if (type == GGUF_TYPE_ARRAY)
                return read_array(c, v, depth + 1);
        return sl_errorf(c->err, -EPROTO, "%sunknown value type %u", c->what, type);
}

/* ---- sorted indices (duplicates and lookups) ---- */

static int str_cmp(struct gguf_str a, struct gguf_str b)
{
        int r = memcmp(a.ptr, b.ptr, a.len < b.len ? a.len : b.len);
        if (r)
                return r;
        return a.len < b.len ? -1 : a.len > b.len;
}

/* qsort_r is a GNU extension with the context we need; use it so parsing stays thread-safe. */
static int cmp_kv_r(const void *a, const void *b, void *ctx)
{
        const struct gguf_file *g = ctx;
        return str_cmp(g->kv[*(const uint64_t *)a].key, g->kv[*(const uint64_t *)b].key);
}

static int cmp_tensor_name_r(const void *a, const void *b, void *ctx)
{
        const struct gguf_file *g = ctx;
        return str_cmp(g->tensors[*(const uint64_t *)a].name, g->tensors[*(const uint64_t *)b].name);
}

static int cmp_tensor_off_r(const void *a, const void *b, void *ctx)
{
        const struct gguf_file *g = ctx;
        const struct gguf_tensor *x = &g->tensors[*(const uint64_t *)a];
        const struct gguf_tensor *y = &g->tensors[*(const uint64_t *)b];
        return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static uint64_t *index_array(uint64_t n)
{
        uint64_t *ix = malloc((n ? n : 1) * sizeof(*ix));
        if (ix)
                for (uint64_t i = 0; i < n; i++)
                        ix[i] = i;
        return ix;
}

/* ---- the file ---- */

static void file_free(struct gguf_file *g)
{
        if (!g)
                return;
        if (g->kv)
                for (uint64_t i = 0; i < g->n_kv; i++)
                        value_free(&g->kv[i].val);
        free(g->kv);
        free(g->tensors);
        struct gguf_priv *p = g->priv;
        if (p) {
                free(p->kv_sorted);
                free(p->tensor_sorted);
                if (p->map)
                        munmap(p->map, p->map_len);
                free(p);
        }
        free(g);
}

static int read_header(struct cursor *c, struct gguf_file *g, uint64_t *n_kv, uint64_t *n_tensors)
{
        uint32_t magic;
        int r;

        if (c->len < 4)
                return sl_errorf(c->err, -EPROTO, "truncated: %zu bytes is too small for the GGUF magic",
                                 c->len);
        memcpy(&magic, c->p, 4);
        if (magic != GGUF_MAGIC)
                return sl_errorf(c->err, -EPROTO,
                                 "bad magic %02x %02x %02x %02x (not a GGUF file)", c->p[0], c->p[1],
                                 c->p[2], c->p[3]);
        c->pos = 4;
        r = read_u32(c, &g->version, "version");
        if (r < 0)
                return r;
        if (g->version == 1)
                return sl_errorf(c->err, -EPROTO, "GGUF version 1 is not supported (only 2 and 3)");
        if ((g->version & 0xffff) == 0 && g->version != 0)
                return sl_errorf(c->err, -EPROTO,
                                 "big-endian GGUF (version reads as 0x%08x) is not supported",
                                 g->version);
        if (g->version != 2 && g->version != 3)
                return sl_errorf(c->err, -EPROTO, "unsupported GGUF version %u (only 2 and 3)",
                                 g->version);
        r = read_u64(c, n_tensors, "tensor count");
        if (r < 0)
                return r;
        r = read_u64(c, n_kv, "metadata count");
        if (r < 0)
                return r;
        if (*n_tensors > remaining(c) / GGUF_MIN_TENSOR_SIZE)
                return sl_errorf(c->err, -EPROTO,
                                 "tensor count %llu is impossible in the remaining %zu bytes",
                                 (unsigned long long)*n_tensors, remaining(c));
        if (*n_kv > remaining(c) / GGUF_MIN_KV_SIZE)
                return sl_errorf(c->err, -EPROTO,
                                 "metadata count %llu is impossible in the remaining %zu bytes",
                                 (unsigned long long)*n_kv, remaining(c));
        /* both together must also fit */
        if (*n_kv * GGUF_MIN_KV_SIZE + *n_tensors * GGUF_MIN_TENSOR_SIZE > remaining(c))
                return sl_errorf(c->err, -EPROTO,
                                 "%llu tensors and %llu metadata entries are impossible in the remaining %zu bytes",
                                 (unsigned long long)*n_tensors, (unsigned long long)*n_kv, remaining(c));
        return 0;
}

static int read_kvs(struct cursor *c, struct gguf_file *g, uint64_t n_kv)
{
        char name[64];
        int r;

        g->kv = calloc(n_kv ? n_kv : 1, sizeof(*g->kv));
        if (!g->kv)
                return sl_errorf(c->err, -ENOMEM, "out of memory for %llu metadata entries",
                                 (unsigned long long)n_kv);
        for (uint64_t i = 0; i < n_kv; i++) {
                struct gguf_kv *kv = &g->kv[i];
                uint32_t type;

                snprintf(c->what, sizeof(c->what), "metadata key #%llu: ", (unsigned long long)i);
                r = read_str(c, &kv->key, "key");
                if (r < 0)
                        return r;
                g->n_kv = i + 1; /* from here on kv[i] is freed by file_free */
                snprintf(c->what, sizeof(c->what), "metadata key #%llu '%s': ", (unsigned long long)i,
                         printable(kv->key, name, sizeof(name)));
                if (kv->key.len == 0)
                        return sl_errorf(c->err, -EPROTO, "%sempty key", c->what);
                r = read_u32(c, &type, "value type");
                if (r < 0)
                        return r;
                if (type >= GGUF_TYPE_COUNT)
                        return sl_errorf(c->err, -EPROTO, "%sunknown value type %u", c->what, type);
                r = read_value(c, type, &kv->val, 0);
                if (r < 0)
                        return r;
        }
        c->what[0] = 0;

        struct gguf_priv *p = g->priv;
        p->kv_sorted = index_array(n_kv);
        if (!p->kv_sorted)
                return sl_errorf(c->err, -ENOMEM, "out of memory for the metadata index");
        qsort_r(p->kv_sorted, n_kv, sizeof(uint64_t), cmp_kv_r, g);
        for (uint64_t i = 1; i < n_kv; i++) {
                const struct gguf_kv *a = &g->kv[p->kv_sorted[i - 1]], *b = &g->kv[p->kv_sorted[i]];
                if (str_cmp(a->key, b->key) == 0)
                        return sl_errorf(c->err, -EPROTO, "duplicate metadata key '%s' (entries #%llu and #%llu)",
                                         printable(a->key, name, sizeof(name)),
                                         (unsigned long long)SL_MIN(p->kv_sorted[i - 1], p->kv_sorted[i]),
                                         (unsigned long long)SL_MAX(p->kv_sorted[i - 1], p->kv_sorted[i]));
        }

        g->alignment = GGUF_DEFAULT_ALIGNMENT;
        const struct gguf_kv *al = gguf_find(g, "general.alignment");
        if (al) {
                if (al->val.type != GGUF_TYPE_UINT32)
                        return sl_errorf(c->err, -EPROTO, "general.alignment has type %s, expected u32",
                                         value_type_name(al->val.type));
                uint64_t a = al->val.u64;
                if (a == 0 || (a & (a - 1)) != 0)
                        return sl_errorf(c->err, -EPROTO,
                                         "general.alignment %llu is not a non-zero power of two",
                                         (unsigned long long)a);
                g->alignment = (uint32_t)a;
        }
        return 0;
}

static int read_tensor_infos(struct cursor *c, struct gguf_file *g, uint64_t n_tensors)
{
        char name[64];
        int r;

        g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(*g->tensors));
        if (!g->tensors)
                return sl_errorf(c->err, -ENOMEM, "out of memory for %llu tensors",
                                 (unsigned long long)n_tensors);
        g->n_tensors = n_tensors;
        for (uint64_t i = 0; i < n_tensors; i++) {
                struct gguf_tensor *t = &g->tensors[i];
                uint32_t blck, tsize;

                snprintf(c->what, sizeof(c->what), "tensor #%llu: ", (unsigned long long)i);
                r = read_str(c, &t->name, "name");
                if (r < 0)
                        return r;
                snprintf(c->what, sizeof(c->what), "tensor '%s': ", printable(t->name, name, sizeof(name)));
                if (t->name.len > GGUF_MAX_NAME)
                        return sl_errorf(c->err, -EPROTO, "%sname is %llu bytes (at most %u)", c->what,
                                         (unsigned long long)t->name.len, GGUF_MAX_NAME);
                r = read_u32(c, &t->n_dims, "n_dims");
                if (r < 0)
                        return r;
                if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
                        return sl_errorf(c->err, -EPROTO, "%sn_dims %u is not in 1..%d", c->what,
                                         t->n_dims, GGUF_MAX_DIMS);
                for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
                        t->ne[d] = 1;
                        if (d >= t->n_dims)
                                continue;
                        r = read_u64(c, &t->ne[d], "dimension");
                        if (r < 0)
                                return r;
                        if (t->ne[d] == 0 || t->ne[d] > INT64_MAX)
                                return sl_errorf(c->err, -EPROTO, "%sne[%u] = %llu is not in 1..2^63-1",
                                                 c->what, d, (unsigned long long)t->ne[d]);
                }
                r = read_u32(c, &t->type, "type");
                if (r < 0)
                        return r;
                if (ggml_type_size(t->type, &blck, &tsize) < 0)
                        return sl_errorf(c->err, -EPROTO, "%sunknown tensor type %u", c->what, t->type);
                if (t->ne[0] % blck)
                        return sl_errorf(c->err, -EPROTO,
                                         "%sne[0] = %llu is not a multiple of the %s block size %u",
                                         c->what, (unsigned long long)t->ne[0], ggml_type_name(t->type), blck);
                uint64_t nel = t->ne[0], rows = 1, nbytes;
                bool ovf = false;
                for (uint32_t d = 1; d < GGUF_MAX_DIMS; d++) {
                        ovf |= sl_mul_u64(nel, t->ne[d], &nel);
                        ovf |= sl_mul_u64(rows, t->ne[d], &rows);
                }
                ovf |= nel > INT64_MAX;
                ovf |= sl_mul_u64(t->ne[0] / blck, tsize, &nbytes);
                ovf |= sl_mul_u64(nbytes, rows, &nbytes);
                if (ovf)
                        return sl_errorf(c->err, -EPROTO,
                                         "%sshape [%llu, %llu, %llu, %llu] overflows the element count or byte size",
                                         c->what, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                                         (unsigned long long)t->ne[2], (unsigned long long)t->ne[3]);
                t->nelements = nel;
                t->nbytes = nbytes;
                r = read_u64(c, &t->offset, "offset");
                if (r < 0)
                        return r;
                if (t->offset % g->alignment)
                        return sl_errorf(c->err, -EPROTO, "%soffset %llu is not a multiple of the alignment %u",
                                         c->what, (unsigned long long)t->offset, g->alignment);
        }
        c->what[0] = 0;
        return 0;
}

static int check_tensor_data(struct cursor *c, struct gguf_file *g)
{
        struct gguf_priv *p = g->priv;
        char name[64], name2[64];
        uint64_t *by_off = NULL;
        int r = 0;

        /* the data section starts at the header's end rounded up to the alignment */
        uint64_t hdr_end = c->pos;
        if (sl_add_u64(hdr_end, g->alignment - 1, &g->data_offset))
                return sl_errorf(c->err, -EPROTO, "data offset overflows");
        g->data_offset = g->data_offset / g->alignment * g->alignment;
        g->data_size = 0;
        g->file_size = c->len;

        p->tensor_sorted = index_array(g->n_tensors);
        by_off = index_array(g->n_tensors);
        if (!p->tensor_sorted || !by_off) {
                r = sl_errorf(c->err, -ENOMEM, "out of memory for the tensor index");
                goto fail;
        }
        qsort_r(p->tensor_sorted, g->n_tensors, sizeof(uint64_t), cmp_tensor_name_r, g);
        for (uint64_t i = 1; i < g->n_tensors; i++) {
                const struct gguf_tensor *a = &g->tensors[p->tensor_sorted[i - 1]];
                const struct gguf_tensor *b = &g->tensors[p->tensor_sorted[i]];
                if (str_cmp(a->name, b->name) == 0) {
                        r = sl_errorf(c->err, -EPROTO, "duplicate tensor name '%s' (tensors #%llu and #%llu)",
                                      printable(a->name, name, sizeof(name)),
                                      (unsigned long long)SL_MIN(p->tensor_sorted[i - 1], p->tensor_sorted[i]),
                                      (unsigned long long)SL_MAX(p->tensor_sorted[i - 1], p->tensor_sorted[i]));
                        goto fail;
                }
        }

        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const struct gguf_tensor *t = &g->tensors[i];
                uint64_t start, end;
                if (sl_add_u64(g->data_offset, t->offset, &start) || sl_add_u64(start, t->nbytes, &end) ||
                    end > c->len) {
                        r = sl_errorf(c->err, -EPROTO,
                                      "tensor '%s': data [offset %llu, %llu) past end of file (%zu bytes)",
                                      printable(t->name, name, sizeof(name)),
                                      (unsigned long long)t->offset,
                                      (unsigned long long)(t->offset + t->nbytes), c->len);
                        goto fail;
                }
                if (end - g->data_offset > g->data_size)
                        g->data_size = end - g->data_offset;
        }

        qsort_r(by_off, g->n_tensors, sizeof(uint64_t), cmp_tensor_off_r, g);
        for (uint64_t i = 1; i < g->n_tensors; i++) {
                const struct gguf_tensor *a = &g->tensors[by_off[i - 1]];
                const struct gguf_tensor *b = &g->tensors[by_off[i]];
                if (b->offset < a->offset + a->nbytes) { /* no overflow: both ends are inside the file */
                        r = sl_errorf(c->err, -EPROTO,
                                      "tensor '%s' [%llu, %llu) overlaps tensor '%s' [%llu, %llu)",
                                      printable(b->name, name, sizeof(name)),
                                      (unsigned long long)b->offset,
                                      (unsigned long long)(b->offset + b->nbytes),
                                      printable(a->name, name2, sizeof(name2)),
                                      (unsigned long long)a->offset,
                                      (unsigned long long)(a->offset + a->nbytes));
                        goto fail;
                }
        }
fail:
        free(by_off);
        return r;
}

int gguf_parse(const void *buf, size_t len, struct gguf_file **out, struct sl_error *err)
{
        struct cursor c = { .p = buf, .len = len, .err = err };
        struct gguf_file *g = NULL;
        uint64_t n_kv = 0, n_tensors = 0;
        int r;

        *out = NULL;
        if (!buf && len)
                return sl_errorf(err, -EINVAL, "no buffer");
        g = calloc(1, sizeof(*g));
        if (!g || !(g->priv = calloc(1, sizeof(struct gguf_priv)))) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }
        g->image = buf;
        g->file_size = len;
        r = read_header(&c, g, &n_kv, &n_tensors);
        if (r < 0)
                goto fail;
        r = read_kvs(&c, g, n_kv);
        if (r < 0)
                goto fail;
        r = read_tensor_infos(&c, g, n_tensors);
        if (r < 0)
                goto fail;
        r = check_tensor_data(&c, g);
        if (r < 0)
                goto fail;
        *out = g;
        return 0;
fail:
        file_free(g);
        return r;
}

int gguf_open(const char *path, struct gguf_file **out, struct sl_error *err)
{
        struct gguf_file *g = NULL;
        void *map = MAP_FAILED;
        struct stat st;
        size_t len = 0;
        int fd, r;

        *out = NULL;
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return sl_errorf(err, -errno, "cannot open: %s", strerror(errno));
        if (fstat(fd, &st) < 0) {
                r = sl_errorf(err, -errno, "cannot stat: %s", strerror(errno));
                goto fail;
        }
        if (!S_ISREG(st.st_mode)) {
                r = sl_errorf(err, -EINVAL, "not a regular file");
                goto fail;
        }
        if (st.st_size == 0) {
                r = sl_errorf(err, -EPROTO, "empty file (0 bytes)");
                goto fail;
        }
        if ((uint64_t)st.st_size > SIZE_MAX) {
                r = sl_errorf(err, -EFBIG, "file too large to map");
                goto fail;
        }
        len = (size_t)st.st_size;
        map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
                r = sl_errorf(err, -errno, "cannot map %zu bytes: %s", len, strerror(errno));
                goto fail;
        }
        r = gguf_parse(map, len, &g, err);
        if (r < 0)
                goto fail;
        ((struct gguf_priv *)g->priv)->map = map;
        ((struct gguf_priv *)g->priv)->map_len = len;
        close(fd);
        *out = g;
        return 0;
fail:
        if (map != MAP_FAILED)
                munmap(map, len);
        close(fd);
        return r;
}

void gguf_close(struct gguf_file *g)
{
        file_free(g);
}

/* ---- lookups and typed getters ---- */

static int cmp_cstr(struct gguf_str s, const char *k, size_t klen)
{
        int r = memcmp(s.ptr, k, s.len < klen ? s.len : klen);
        if (r)
                return r;
        return s.len < klen ? -1 : s.len > klen;
}

const struct gguf_kv *gguf_find(const struct gguf_file *g, const char *key)
{
        const struct gguf_priv *p;
        size_t klen;
        uint64_t lo = 0, hi;

        if (!g || !key)
                return NULL;
        p = g->priv;
        klen = strlen(key);
        hi = g->n_kv;
        while (lo < hi) {
                uint64_t mid = lo + (hi - lo) / 2;
                const struct gguf_kv *kv = &g->kv[p->kv_sorted[mid]];
                int c = cmp_cstr(kv->key, key, klen);
                if (c == 0)
                        return kv;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *g, const char *name)
{
        const struct gguf_priv *p;
        size_t nlen;
        uint64_t lo = 0, hi;

        if (!g || !name)
                return NULL;
        p = g->priv;
        nlen = strlen(name);
        hi = g->n_tensors;
        while (lo < hi) {
                uint64_t mid = lo + (hi - lo) / 2;
                const struct gguf_tensor *t = &g->tensors[p->tensor_sorted[mid]];
                int c = cmp_cstr(t->name, name, nlen);
                if (c == 0)
                        return t;
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

bool gguf_str_eq(struct gguf_str s, const char *cstr)
{
        size_t n = strlen(cstr);
        return s.len == n && memcmp(s.ptr, cstr, n) == 0;
}

static bool is_unsigned(uint32_t t)
{
        return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 ||
               t == GGUF_TYPE_UINT64;
}

static bool is_signed(uint32_t t)
{
        return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
               t == GGUF_TYPE_INT64;
}

static int lookup(const struct gguf_file *g, const char *key, const struct gguf_kv **kv,
                  struct sl_error *err)
{
        *kv = gguf_find(g, key);
        if (!*kv)
                return sl_errorf(err, -ENOENT, "metadata key '%s' not found", key);
        return 0;
}

static int wrong_type(const char *key, uint32_t have, const char *want, struct sl_error *err)
{
        return sl_errorf(err, -EINVAL, "metadata key '%s' has type %s, expected %s", key,
                         value_type_name(have), want);
}

int gguf_get_u32(const struct gguf_file *g, const char *key, uint32_t *out, struct sl_error *err)
{
        const struct gguf_kv *kv;
        int r = lookup(g, key, &kv, err);
        if (r < 0)
                return r;
        if (is_unsigned(kv->val.type) && kv->val.u64 <= UINT32_MAX) {
                *out = (uint32_t)kv->val.u64;
                return 0;
        }
        if (is_signed(kv->val.type) && kv->val.i64 >= 0 && kv->val.i64 <= UINT32_MAX) {
                *out = (uint32_t)kv->val.i64;
                return 0;
        }
        if (is_unsigned(kv->val.type) || is_signed(kv->val.type))
                return sl_errorf(err, -EINVAL, "metadata key '%s': value out of range for u32", key);
        return wrong_type(key, kv->val.type, "an integer", err);
}

int gguf_get_i32(const struct gguf_file *g, const char *key, int32_t *out, struct sl_error *err)
{
        const struct gguf_kv *kv;
        int r = lookup(g, key, &kv, err);
        if (r < 0)
                return r;
        if (is_unsigned(kv->val.type) && kv->val.u64 <= INT32_MAX) {
                *out = (int32_t)kv->val.u64;
                return 0;
        }
        if (is_signed(kv->val.type) && kv->val.i64 >= INT32_MIN && kv->val.i64 <= INT32_MAX) {
                *out = (int32_t)kv->val.i64;
                return 0;
        }
        if (is_unsigned(kv->val.type) || is_signed(kv->val.type))
                return sl_errorf(err, -EINVAL, "metadata key '%s': value out of range for i32", key);
        return wrong_type(key, kv->val.type, "an integer", err);
}

int gguf_get_f32(const struct gguf_file *g, const char *key, float *out, struct sl_error *err)
{
        const struct gguf_kv *kv;
        int r = lookup(g, key, &kv, err);
        if (r < 0)
                return r;
        switch (kv->val.type) {
        case GGUF_TYPE_FLOAT32:
                *out = (float)kv->val.f64;
                return 0;
        case GGUF_TYPE_FLOAT64:
                if (isfinite(kv->val.f64) && fabs(kv->val.f64) > 3.4028234663852886e38)
                        return sl_errorf(err, -EINVAL, "metadata key '%s': value out of range for f32", key);
                *out = (float)kv->val.f64;
                return 0;
        default:
                if (is_unsigned(kv->val.type)) {
                        *out = (float)kv->val.u64;
                        return 0;
                }
                if (is_signed(kv->val.type)) {
                        *out = (float)kv->val.i64;
                        return 0;
                }
                return wrong_type(key, kv->val.type, "a number", err);
        }
}

int gguf_get_bool(const struct gguf_file *g, const char *key, bool *out, struct sl_error *err)
{
        const struct gguf_kv *kv;
        int r = lookup(g, key, &kv, err);
        if (r < 0)
                return r;
        if (kv->val.type != GGUF_TYPE_BOOL)
                return wrong_type(key, kv->val.type, "bool", err);
        *out = kv->val.b;
        return 0;
}

int gguf_get_str(const struct gguf_file *g, const char *key, struct gguf_str *out, struct sl_error *err)
{
        const struct gguf_kv *kv;
        int r = lookup(g, key, &kv, err);
        if (r < 0)
                return r;
        if (kv->val.type != GGUF_TYPE_STRING)
                return wrong_type(key, kv->val.type, "string", err);
        *out = kv->val.str;
        return 0;
}

int gguf_get_arr(const struct gguf_file *g, const char *key, uint32_t elem_type,
                 const struct gguf_array **out, struct sl_error *err)
{
        const struct gguf_kv *kv;
        int r = lookup(g, key, &kv, err);
        if (r < 0)
                return r;
        if (kv->val.type != GGUF_TYPE_ARRAY)
                return wrong_type(key, kv->val.type, "array", err);
        if (elem_type != GGUF_TYPE_COUNT && kv->val.arr.type != elem_type)
                return sl_errorf(err, -EINVAL, "metadata key '%s' is an array of %s, expected %s", key,
                                 value_type_name(kv->val.arr.type), value_type_name(elem_type));
        *out = &kv->val.arr;
        return 0;
}
