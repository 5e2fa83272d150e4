/* gguf_writer.h — a tiny GGUF image writer for the storage tests and the fuzz seeds. It
 * writes valid files by default and has knobs for the hostile variants the tests need. */
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage.h"

struct wb {
        uint8_t *p;
        size_t n, cap;
};

static inline void wb_put(struct wb *w, const void *d, size_t n)
{
        if (w->n + n > w->cap) {
                size_t cap = w->cap ? w->cap : 256;
                while (cap < w->n + n)
                        cap *= 2;
                uint8_t *p = realloc(w->p, cap);
                if (!p)
                        abort();
                w->p = p;
                w->cap = cap;
        }
        memcpy(w->p + w->n, d, n);
        w->n += n;
}

static inline void wb_u8(struct wb *w, uint8_t v) { wb_put(w, &v, 1); }
static inline void wb_u16(struct wb *w, uint16_t v) { wb_put(w, &v, 2); }
static inline void wb_u32(struct wb *w, uint32_t v) { wb_put(w, &v, 4); }
static inline void wb_u64(struct wb *w, uint64_t v) { wb_put(w, &v, 8); }
static inline void wb_f32(struct wb *w, float v) { wb_put(w, &v, 4); }
static inline void wb_f64(struct wb *w, double v) { wb_put(w, &v, 8); }

static inline void wb_str(struct wb *w, const char *s)
{
        wb_u64(w, strlen(s));
        wb_put(w, s, strlen(s));
}

static inline void wb_key(struct wb *w, const char *key, uint32_t type)
{
        wb_str(w, key);
        wb_u32(w, type);
}

struct tspec {
        const char *name;
        uint32_t n_dims;
        uint64_t ne[4];
        uint32_t type;
        uint64_t offset; /* UINT64_MAX: next aligned offset after the previous tensor */
};

enum wextra {
        W_NONE,
        W_DUP_KEY,       /* a second "general.name" */
        W_NEST,          /* an array nested `nest` levels deep */
        W_BAD_BOOL,      /* a bool with byte 2 */
        W_BAD_VTYPE,     /* a value of type 13 */
        W_ALIGN_U64,     /* general.alignment written as u64 */
};

struct wopts {
        uint32_t version;   /* 0: 3 */
        uint32_t alignment; /* 0: no general.alignment key */
        int all_kv;         /* one key of every type, arrays, nested arrays */
        enum wextra extra;
        int nest;
        const struct tspec *ts;
        size_t nt;
};

static inline uint64_t tspec_nbytes(const struct tspec *t)
{
        uint32_t blck = 1, size = 1;
        if (ggml_type_size(t->type, &blck, &size) < 0)
                return 64;
        uint64_t n = t->ne[0] / blck * size;
        for (uint32_t d = 1; d < t->n_dims && d < 4; d++)
                n *= t->ne[d];
        return n;
}

/* Writes the image into w (which it resets). Tensor data is a byte pattern. */
static inline void gguf_write(struct wb *w, const struct wopts *o)
{
        uint32_t align = o->alignment ? o->alignment : GGUF_DEFAULT_ALIGNMENT;
        uint64_t n_kv = 0;

        w->n = 0;
        wb_u32(w, GGUF_MAGIC);
        wb_u32(w, o->version ? o->version : 3);
        wb_u64(w, o->nt);
        size_t n_kv_pos = w->n;
        wb_u64(w, 0);

        wb_key(w, "general.name", GGUF_TYPE_STRING);
        wb_str(w, "tiny");
        n_kv++;
        if (o->alignment) {
                if (o->extra == W_ALIGN_U64) {
                        wb_key(w, "general.alignment", GGUF_TYPE_UINT64);
                        wb_u64(w, o->alignment);
                } else {
                        wb_key(w, "general.alignment", GGUF_TYPE_UINT32);
                        wb_u32(w, o->alignment);
                }
                n_kv++;
        }
        if (o->all_kv) {
                wb_key(w, "t.u8", GGUF_TYPE_UINT8); wb_u8(w, 200);
                wb_key(w, "t.i8", GGUF_TYPE_INT8); wb_u8(w, (uint8_t)-100);
                wb_key(w, "t.u16", GGUF_TYPE_UINT16); wb_u16(w, 60000);
                wb_key(w, "t.i16", GGUF_TYPE_INT16); wb_u16(w, (uint16_t)-30000);
                wb_key(w, "t.u32", GGUF_TYPE_UINT32); wb_u32(w, 4000000000u);
                wb_key(w, "t.i32", GGUF_TYPE_INT32); wb_u32(w, (uint32_t)-2000000000);
                wb_key(w, "t.f32", GGUF_TYPE_FLOAT32); wb_f32(w, 1.5f);
                wb_key(w, "t.bool", GGUF_TYPE_BOOL); wb_u8(w, 1);
                wb_key(w, "t.str", GGUF_TYPE_STRING); wb_str(w, "héllo");
                wb_key(w, "t.u64", GGUF_TYPE_UINT64); wb_u64(w, 1ull << 40);
                wb_key(w, "t.i64", GGUF_TYPE_INT64); wb_u64(w, (uint64_t)-5);
                wb_key(w, "t.f64", GGUF_TYPE_FLOAT64); wb_f64(w, -2.25);
                wb_key(w, "t.arr_i32", GGUF_TYPE_ARRAY); wb_u32(w, GGUF_TYPE_INT32); wb_u64(w, 3);
                wb_u32(w, 1); wb_u32(w, (uint32_t)-2); wb_u32(w, 3);
                wb_key(w, "t.arr_str", GGUF_TYPE_ARRAY); wb_u32(w, GGUF_TYPE_STRING); wb_u64(w, 2);
                wb_str(w, "a"); wb_str(w, "");
                wb_key(w, "t.arr_empty", GGUF_TYPE_ARRAY); wb_u32(w, GGUF_TYPE_FLOAT32); wb_u64(w, 0);
                wb_key(w, "t.arr_bool", GGUF_TYPE_ARRAY); wb_u32(w, GGUF_TYPE_BOOL); wb_u64(w, 2);
                wb_u8(w, 0); wb_u8(w, 1);
                /* [[7], [8, 9]] as arrays of u16 */
                wb_key(w, "t.arr_nested", GGUF_TYPE_ARRAY); wb_u32(w, GGUF_TYPE_ARRAY); wb_u64(w, 2);
                wb_u32(w, GGUF_TYPE_UINT16); wb_u64(w, 1); wb_u16(w, 7);
                wb_u32(w, GGUF_TYPE_UINT16); wb_u64(w, 2); wb_u16(w, 8); wb_u16(w, 9);
                n_kv += 17;
        }
        switch (o->extra) {
        case W_DUP_KEY:
                wb_key(w, "general.name", GGUF_TYPE_STRING);
                wb_str(w, "again");
                n_kv++;
                break;
        case W_NEST:
                wb_key(w, "t.deep", GGUF_TYPE_ARRAY);
                for (int d = 1; d < o->nest; d++) {
                        wb_u32(w, GGUF_TYPE_ARRAY);
                        wb_u64(w, 1);
                }
                wb_u32(w, GGUF_TYPE_INT32);
                wb_u64(w, 1);
                wb_u32(w, 42);
                n_kv++;
                break;
        case W_BAD_BOOL:
                wb_key(w, "t.badbool", GGUF_TYPE_BOOL);
                wb_u8(w, 2);
                n_kv++;
                break;
        case W_BAD_VTYPE:
                wb_key(w, "t.badtype", 13);
                wb_u32(w, 0);
                n_kv++;
                break;
        default:
                break;
        }
        memcpy(w->p + n_kv_pos, &n_kv, 8);

        uint64_t next = 0, data_end = 0;
        for (size_t i = 0; i < o->nt; i++) {
                const struct tspec *t = &o->ts[i];
                uint64_t off = t->offset == UINT64_MAX ? next : t->offset;
                wb_str(w, t->name);
                wb_u32(w, t->n_dims);
                for (uint32_t d = 0; d < t->n_dims && d < 8; d++)
                        wb_u64(w, t->ne[d < 4 ? d : 3]);
                wb_u32(w, t->type);
                wb_u64(w, off);
                uint64_t end = off + tspec_nbytes(t);
                next = (end + align - 1) / align * align;
                if (end > data_end)
                        data_end = end;
        }
        while (w->n % align)
                wb_u8(w, 0);
        for (uint64_t i = 0; i < data_end && data_end < (1u << 20); i++)
                wb_u8(w, (uint8_t)(i * 7 + 1));
}
