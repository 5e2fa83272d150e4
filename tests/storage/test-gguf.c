/* test-gguf — the GGUF parser against images written in memory: every value type, nested
 * arrays, alignment variants, v2 and v3 parse with the right values; every hostile variant
 * (truncation at each byte, bad magic/version/counts/lengths/alignment/shapes/types/offsets,
 * overlaps, duplicates, deep nesting) fails with a message that names the problem. */
#include <errno.h>
#include <math.h>
#include <stdio.h>

#include "gguf_writer.h"

static int failures;

#define CHECK(cond, ...)                                                                   \
        do {                                                                               \
                if (!(cond)) {                                                             \
                        fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
                        fprintf(stderr, __VA_ARGS__);                                      \
                        fprintf(stderr, "\n");                                             \
                        failures++;                                                        \
                }                                                                          \
        } while (0)

/* Parses a private, exactly sized copy so that ASan would see any read past the end. */
static int parse_copy(const uint8_t *p, size_t n, struct gguf_file **g, struct sl_error *e)
{
        uint8_t *copy = malloc(n ? n : 1);
        if (!copy)
                abort();
        memcpy(copy, p, n);
        int r = gguf_parse(copy, n, g, e);
        if (r < 0) /* on success the result points into copy; free_parsed() frees both */
                free(copy);
        return r;
}

static void free_parsed(struct gguf_file *g)
{
        if (!g)
                return;
        void *img = (void *)g->image;
        gguf_close(g);
        free(img);
}

static void expect_fail(const struct wb *w, const char *words, const char *what)
{
        struct gguf_file *g = NULL;
        struct sl_error e = { { 0 } };
        int r = parse_copy(w->p, w->n, &g, &e);
        CHECK(r < 0, "%s: parsed but should have failed", what);
        if (r == 0) {
                free_parsed(g);
                return;
        }
        CHECK(g == NULL, "%s: out not NULL on failure", what);
        CHECK(strstr(e.msg, words) != NULL, "%s: message '%s' lacks '%s'", what, e.msg, words);
        CHECK(strchr(e.msg, '\n') == NULL, "%s: message has a newline", what);
}

static const struct tspec good_tensors[] = {
        { "tok_embd.weight", 2, { 64, 3, 1, 1 }, GGML_TYPE_Q4_0, UINT64_MAX },
        { "norm.weight", 1, { 5, 1, 1, 1 }, GGML_TYPE_F32, UINT64_MAX },
        { "blk.0.ffn.weight", 3, { 256, 2, 2, 1 }, GGML_TYPE_Q4_K, UINT64_MAX },
        { "x.f16", 4, { 3, 2, 1, 2 }, GGML_TYPE_F16, UINT64_MAX },
};

static void test_valid(uint32_t version, uint32_t alignment)
{
        struct wopts o = { .version = version, .alignment = alignment, .all_kv = 1,
                           .ts = good_tensors, .nt = SL_ARRAY_SIZE(good_tensors) };
        struct wb w = { 0 };
        struct gguf_file *g = NULL;
        struct sl_error e = { { 0 } };
        uint32_t u32;
        int32_t i32;
        float f;
        bool b;
        struct gguf_str s;
        const struct gguf_array *a;

        gguf_write(&w, &o);
        int r = parse_copy(w.p, w.n, &g, &e);
        CHECK(r == 0, "v%u align %u: parse failed: %s", version, alignment, e.msg);
        if (r < 0)
                goto out;
        uint32_t al = alignment ? alignment : 32;
        CHECK(g->version == version, "version %u", g->version);
        CHECK(g->alignment == al, "alignment %u", g->alignment);
        CHECK(g->n_kv == 18u + (alignment != 0), "n_kv %llu", (unsigned long long)g->n_kv);
        CHECK(g->n_tensors == 4, "n_tensors");
        CHECK(g->data_offset % al == 0 && g->data_offset <= w.n, "data_offset %llu",
              (unsigned long long)g->data_offset);
        CHECK(g->file_size == w.n, "file_size");

        CHECK(gguf_get_u32(g, "t.u8", &u32, &e) == 0 && u32 == 200, "u8");
        CHECK(gguf_get_i32(g, "t.i8", &i32, &e) == 0 && i32 == -100, "i8");
        CHECK(gguf_get_u32(g, "t.u16", &u32, &e) == 0 && u32 == 60000, "u16");
        CHECK(gguf_get_i32(g, "t.i16", &i32, &e) == 0 && i32 == -30000, "i16");
        CHECK(gguf_get_u32(g, "t.u32", &u32, &e) == 0 && u32 == 4000000000u, "u32");
        CHECK(gguf_get_i32(g, "t.u32", &i32, &e) == -EINVAL, "u32 too big for i32");
        CHECK(gguf_get_i32(g, "t.i32", &i32, &e) == 0 && i32 == -2000000000, "i32");
        CHECK(gguf_get_u32(g, "t.i32", &u32, &e) == -EINVAL, "negative i32 as u32");
        CHECK(gguf_get_f32(g, "t.f32", &f, &e) == 0 && f == 1.5f, "f32");
        CHECK(gguf_get_f32(g, "t.f64", &f, &e) == 0 && f == -2.25f, "f64");
        CHECK(gguf_get_bool(g, "t.bool", &b, &e) == 0 && b, "bool");
        CHECK(gguf_get_bool(g, "t.u8", &b, &e) == -EINVAL && strstr(e.msg, "expected bool"), "bool type: %s", e.msg);
        CHECK(gguf_get_str(g, "t.str", &s, &e) == 0 && gguf_str_eq(s, "héllo"), "str");
        CHECK(gguf_get_str(g, "general.name", &s, &e) == 0 && gguf_str_eq(s, "tiny"), "name");
        CHECK(gguf_get_u32(g, "t.u64", &u32, &e) == -EINVAL && strstr(e.msg, "out of range"), "u64 range");
        CHECK(gguf_get_i32(g, "t.i64", &i32, &e) == 0 && i32 == -5, "i64");
        CHECK(gguf_get_u32(g, "missing", &u32, &e) == -ENOENT, "missing");
        CHECK(gguf_get_str(g, "t.u8", &s, &e) == -EINVAL, "str type");
        const struct gguf_kv *kv = gguf_find(g, "t.u64");
        CHECK(kv && kv->val.type == GGUF_TYPE_UINT64 && kv->val.u64 == (1ull << 40), "u64 value");

        CHECK(gguf_get_arr(g, "t.arr_i32", GGUF_TYPE_INT32, &a, &e) == 0 && a->n == 3, "arr_i32");
        if (a && a->n == 3) {
                int32_t v[3];
                memcpy(v, a->data, 12);
                CHECK(v[0] == 1 && v[1] == -2 && v[2] == 3, "arr_i32 values");
        }
        CHECK(gguf_get_arr(g, "t.arr_i32", GGUF_TYPE_FLOAT32, &a, &e) == -EINVAL, "arr type");
        CHECK(gguf_get_arr(g, "t.arr_str", GGUF_TYPE_STRING, &a, &e) == 0 && a->n == 2 &&
                      gguf_str_eq(a->items[0].str, "a") && a->items[1].str.len == 0, "arr_str");
        CHECK(gguf_get_arr(g, "t.arr_empty", GGUF_TYPE_COUNT, &a, &e) == 0 && a->n == 0, "arr_empty");
        CHECK(gguf_get_arr(g, "t.arr_bool", GGUF_TYPE_BOOL, &a, &e) == 0 && a->n == 2 &&
                      a->data[0] == 0 && a->data[1] == 1, "arr_bool");
        CHECK(gguf_get_arr(g, "t.arr_nested", GGUF_TYPE_ARRAY, &a, &e) == 0 && a->n == 2, "nested");
        if (a && a->n == 2 && a->items) {
                const struct gguf_array *a0 = &a->items[0].arr, *a1 = &a->items[1].arr;
                uint16_t x[2];
                CHECK(a->items[0].type == GGUF_TYPE_ARRAY && a0->type == GGUF_TYPE_UINT16 && a0->n == 1,
                      "nested[0]");
                memcpy(x, a1->data, 4);
                CHECK(a1->n == 2 && x[0] == 8 && x[1] == 9, "nested[1]");
        }

        uint64_t expect_off = 0;
        for (size_t i = 0; i < SL_ARRAY_SIZE(good_tensors); i++) {
                const struct tspec *ts = &good_tensors[i];
                const struct gguf_tensor *t = gguf_find_tensor(g, ts->name);
                CHECK(t != NULL, "tensor %s missing", ts->name);
                if (!t)
                        continue;
                CHECK(t == &g->tensors[i], "tensor order");
                CHECK(t->type == ts->type && t->n_dims == ts->n_dims, "tensor %s type/dims", ts->name);
                for (uint32_t d = 0; d < 4; d++)
                        CHECK(t->ne[d] == (d < ts->n_dims ? ts->ne[d] : 1), "tensor %s ne[%u]", ts->name, d);
                CHECK(t->offset == expect_off, "tensor %s offset %llu != %llu", ts->name,
                      (unsigned long long)t->offset, (unsigned long long)expect_off);
                CHECK(t->nbytes == tspec_nbytes(ts), "tensor %s nbytes", ts->name);
                /* data pattern written by the writer: byte k of the data section = k*7+1 */
                const uint8_t *d = g->image + g->data_offset + t->offset;
                CHECK(d[0] == (uint8_t)(t->offset * 7 + 1), "tensor %s data", ts->name);
                expect_off = SL_ALIGN_UP(t->offset + t->nbytes, (uint64_t)al);
        }
        CHECK(gguf_find_tensor(g, "nope") == NULL, "find missing tensor");
        CHECK(g->tensors[1].nbytes == 20 && g->tensors[0].nbytes == 2 * 18 * 3, "sizes");
        CHECK(g->tensors[2].nelements == 1024, "nelements");
out:
        free_parsed(g);
        free(w.p);
}

static void test_types(void)
{
        uint32_t blck, size;
        CHECK(ggml_type_size(GGML_TYPE_Q6_K, &blck, &size) == 0 && blck == 256 && size == 210, "Q6_K");
        CHECK(ggml_type_size(GGML_TYPE_Q8_0, &blck, &size) == 0 && blck == 32 && size == 34, "Q8_0");
        CHECK(ggml_type_size(GGML_TYPE_BF16, &blck, &size) == 0 && blck == 1 && size == 2, "BF16");
        CHECK(ggml_type_size(4, &blck, &size) == -EINVAL, "removed Q4_2");
        CHECK(ggml_type_size(1000, &blck, &size) == -EINVAL, "1000");
        CHECK(strcmp(ggml_type_name(GGML_TYPE_Q5_K), "Q5_K") == 0, "name");
        CHECK(strcmp(ggml_type_name(77), "?") == 0, "unknown name");
}

static void test_truncation(void)
{
        struct wopts o = { .alignment = 64, .all_kv = 1, .ts = good_tensors, .nt = 2 };
        struct wb w = { 0 };
        gguf_write(&w, &o);
        for (size_t n = 0; n < w.n; n++) {
                struct gguf_file *g = NULL;
                struct sl_error e = { { 0 } };
                int r = parse_copy(w.p, n, &g, &e);
                CHECK(r < 0, "truncated at %zu of %zu parsed", n, w.n);
                if (r == 0) {
                        free_parsed(g);
                        continue;
                }
                CHECK(strstr(e.msg, "truncated") || strstr(e.msg, "past end of file") ||
                              strstr(e.msg, "exceeds remaining") || strstr(e.msg, "impossible"),
                      "truncated at %zu: message '%s'", n, e.msg);
        }
        free(w.p);
}

static void patch32(struct wb *w, size_t at, uint32_t v) { memcpy(w->p + at, &v, 4); }
static void patch64(struct wb *w, size_t at, uint64_t v) { memcpy(w->p + at, &v, 8); }

static void hostile_tensor(const struct tspec *ts, size_t nt, uint32_t alignment, const char *words,
                           const char *what)
{
        struct wopts o = { .alignment = alignment, .ts = ts, .nt = nt };
        struct wb w = { 0 };
        gguf_write(&w, &o);
        expect_fail(&w, words, what);
        free(w.p);
}

static void hostile_kv(enum wextra extra, int nest, uint32_t alignment, const char *words,
                       const char *what)
{
        struct wopts o = { .alignment = alignment, .extra = extra, .nest = nest,
                           .ts = good_tensors, .nt = 1 };
        struct wb w = { 0 };
        gguf_write(&w, &o);
        expect_fail(&w, words, what);
        free(w.p);
}

static void test_hostile(void)
{
        struct wopts o = { .all_kv = 1, .ts = good_tensors, .nt = 2 };
        struct wb w = { 0 };

        gguf_write(&w, &o);
        w.p[0] = 'X';
        expect_fail(&w, "bad magic", "magic");
        gguf_write(&w, &o);
        patch32(&w, 4, 1);
        expect_fail(&w, "version 1", "v1");
        patch32(&w, 4, 4);
        expect_fail(&w, "unsupported GGUF version 4", "v4");
        patch32(&w, 4, 0x03000000);
        expect_fail(&w, "big-endian", "big-endian");
        patch32(&w, 4, 0);
        expect_fail(&w, "unsupported GGUF version 0", "v0");
        patch32(&w, 4, 3);
        patch64(&w, 8, 1ull << 62);
        expect_fail(&w, "tensor count 4611686018427387904 is impossible", "n_tensors");
        patch64(&w, 8, 2);
        patch64(&w, 16, UINT64_MAX);
        expect_fail(&w, "metadata count 18446744073709551615 is impossible", "n_kv");
        patch64(&w, 16, 1000);
        expect_fail(&w, "impossible", "n_kv too large");
        gguf_write(&w, &o);
        patch64(&w, 24, UINT64_MAX); /* first key's length */
        expect_fail(&w, "metadata key #0: key length 18446744073709551615 exceeds remaining", "key len");
        gguf_write(&w, &o);
        patch64(&w, 24 + 8 + 12 + 4, 1ull << 40); /* general.name's value length */
        expect_fail(&w, "metadata key #0 'general.name': string length 1099511627776 exceeds remaining",
                    "string len");
        free(w.p);

        /* metadata */
        hostile_kv(W_DUP_KEY, 0, 0, "duplicate metadata key 'general.name'", "dup key");
        hostile_kv(W_NEST, GGUF_MAX_DEPTH + 1, 0, "nested deeper than 8", "deep nesting");
        hostile_kv(W_BAD_BOOL, 0, 0, "bool value has byte 2", "bool");
        hostile_kv(W_BAD_VTYPE, 0, 0, "unknown value type 13", "value type");
        hostile_kv(W_ALIGN_U64, 0, 64, "general.alignment has type u64", "alignment type");
        hostile_kv(W_NONE, 0, 3, "general.alignment 3 is not a non-zero power of two", "alignment 3");
        hostile_kv(W_NONE, 0, 48, "general.alignment 48", "alignment 48");
        {
                /* nesting at exactly the limit is fine */
                struct wopts ok = { .extra = W_NEST, .nest = GGUF_MAX_DEPTH, .ts = good_tensors, .nt = 1 };
                struct wb w2 = { 0 };
                struct gguf_file *g = NULL;
                struct sl_error e = { { 0 } };
                gguf_write(&w2, &ok);
                CHECK(parse_copy(w2.p, w2.n, &g, &e) == 0, "nesting at the limit: %s", e.msg);
                free_parsed(g);
                free(w2.p);
        }
        {
                /* alignment 0 has to be written by hand: the writer treats 0 as "no key" */
                struct wb w2 = { 0 };
                wb_u32(&w2, GGUF_MAGIC); wb_u32(&w2, 3); wb_u64(&w2, 0); wb_u64(&w2, 1);
                wb_key(&w2, "general.alignment", GGUF_TYPE_UINT32); wb_u32(&w2, 0);
                expect_fail(&w2, "general.alignment 0 is not a non-zero power of two", "alignment 0");
                free(w2.p);
        }

        /* tensors */
        struct tspec t[2] = {
                { "a", 1, { 32, 1, 1, 1 }, GGML_TYPE_F32, UINT64_MAX },
                { "b", 1, { 32, 1, 1, 1 }, GGML_TYPE_F32, UINT64_MAX },
        };
        t[0].n_dims = 0;
        hostile_tensor(t, 1, 0, "tensor 'a': n_dims 0 is not in 1..4", "n_dims 0");
        t[0].n_dims = 5;
        hostile_tensor(t, 1, 0, "tensor 'a': n_dims 5 is not in 1..4", "n_dims 5");
        t[0].n_dims = 2;
        t[0].ne[1] = 0;
        hostile_tensor(t, 1, 0, "tensor 'a': ne[1] = 0", "ne 0");
        t[0].ne[1] = 1;
        t[0].type = GGML_TYPE_Q4_0;
        t[0].ne[0] = 16;
        hostile_tensor(t, 1, 0, "ne[0] = 16 is not a multiple of the Q4_0 block size 32", "ne0 block");
        t[0].ne[0] = 32;
        t[0].type = 99;
        hostile_tensor(t, 1, 0, "tensor 'a': unknown tensor type 99", "type 99");
        t[0].type = 4;
        hostile_tensor(t, 1, 0, "unknown tensor type 4", "type 4");
        t[0].type = GGML_TYPE_F32;
        t[0].n_dims = 3;
        t[0].ne[0] = 1ull << 32;
        t[0].ne[1] = 1ull << 32;
        t[0].ne[2] = 1ull << 32;
        hostile_tensor(t, 1, 0, "overflows", "element count overflow");
        t[0].n_dims = 1;
        t[0].ne[0] = 1ull << 62;
        hostile_tensor(t, 1, 0, "overflows", "byte size overflow");
        t[0].ne[0] = 32;
        t[0].offset = 8;
        hostile_tensor(t, 1, 0, "tensor 'a': offset 8 is not a multiple of the alignment 32", "unaligned");
        t[0].offset = 64;
        t[1].offset = 0;
        hostile_tensor(t, 2, 0, "tensor 'a' [64, 192) overlaps tensor 'b' [0, 128)", "overlap, listed out of order");
        t[1].offset = UINT64_MAX;
        t[0].offset = 1ull << 20;
        hostile_tensor(t, 1, 0, "tensor 'a': data [offset 1048576, 1048704) past end of file", "past end");
        t[0].offset = UINT64_MAX - 31;
        hostile_tensor(t, 1, 0, "past end of file", "offset wraps");
        t[0].offset = 0;
        t[1].offset = 0;
        hostile_tensor(t, 2, 0, "overlaps tensor", "overlap");
        t[1].offset = 96; /* a is [0,128) */
        hostile_tensor(t, 2, 32, "tensor 'b' [96, 224) overlaps tensor 'a' [0, 128)", "partial overlap");
        t[1].offset = UINT64_MAX;
        t[1].name = "a";
        hostile_tensor(t, 2, 0, "duplicate tensor name 'a'", "dup tensor");
        t[0].name = "this-name-is-longer-than-sixty-four-bytes-which-gguf-does-not-allow-at-all";
        hostile_tensor(t, 1, 0, "at most 64", "long name");
        t[0].name = "bad\nname";
        t[0].n_dims = 0;
        hostile_tensor(t, 1, 0, "tensor 'bad?name': n_dims 0", "newline in name is not echoed");
}

int main(void)
{
        test_types();
        test_valid(3, 0);
        test_valid(2, 0);
        test_valid(3, 1);
        test_valid(3, 8);
        test_valid(2, 64);
        test_valid(3, 4096);
        test_truncation();
        test_hostile();
        if (failures) {
                fprintf(stderr, "test-gguf: %d failures\n", failures);
                return 1;
        }
        printf("test-gguf: all checks passed\n");
        return 0;
}
