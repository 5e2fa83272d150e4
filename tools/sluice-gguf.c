/* sluice-gguf — validates a GGUF file and prints its header, metadata and (with --tensors)
 * the tensor directory. A bad file gives exactly one line on stderr and exit status 1. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "storage.h"

#define ARRAY_PREVIEW 4
#define STR_PREVIEW 80
#define GGUF_NAME_PRINT 64 /* the parser rejects longer tensor names */

static void print_str(struct gguf_str s)
{
        putchar('"');
        for (uint64_t i = 0; i < s.len && i < STR_PREVIEW; i++) {
                unsigned char c = (unsigned char)s.ptr[i];
                if (c == '"' || c == '\\')
                        printf("\\%c", c);
                else if (c >= 0x20 && c != 0x7f)
                        putchar(c); /* UTF-8 bytes pass through */
                else
                        printf("\\x%02x", c);
        }
        putchar('"');
        if (s.len > STR_PREVIEW)
                printf("...(%" PRIu64 " bytes)", s.len);
}

static const char *type_name(uint32_t t)
{
        static const char *const names[GGUF_TYPE_COUNT] = {
                "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64",
                "i64", "f64",
        };
        return t < GGUF_TYPE_COUNT ? names[t] : "?";
}

static void print_value(const struct gguf_value *v);

static void print_array(const struct gguf_array *a)
{
        printf("[%s x %" PRIu64 "]", type_name(a->type), a->n);
        if (a->n == 0)
                return;
        printf(" {");
        for (uint64_t i = 0; i < a->n && i < ARRAY_PREVIEW; i++) {
                struct gguf_value v;
                if (i)
                        printf(", ");
                if (a->items) {
                        print_value(&a->items[i]);
                        continue;
                }
                /* scalar elements live in the image; decode one the way the parser would */
                v.type = a->type;
                union {
                        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32;
                        int32_t i32; float f32; uint64_t u64; int64_t i64; double f64;
                } x;
                size_t es = a->type == GGUF_TYPE_UINT8 || a->type == GGUF_TYPE_INT8 ||
                                            a->type == GGUF_TYPE_BOOL ? 1
                            : a->type == GGUF_TYPE_UINT16 || a->type == GGUF_TYPE_INT16 ? 2
                            : a->type == GGUF_TYPE_UINT32 || a->type == GGUF_TYPE_INT32 ||
                                            a->type == GGUF_TYPE_FLOAT32 ? 4 : 8;
                memcpy(&x, a->data + i * es, es);
                switch (a->type) {
                case GGUF_TYPE_UINT8: v.u64 = x.u8; break;
                case GGUF_TYPE_INT8: v.i64 = x.i8; break;
                case GGUF_TYPE_UINT16: v.u64 = x.u16; break;
                case GGUF_TYPE_INT16: v.i64 = x.i16; break;
                case GGUF_TYPE_UINT32: v.u64 = x.u32; break;
                case GGUF_TYPE_INT32: v.i64 = x.i32; break;
                case GGUF_TYPE_FLOAT32: v.f64 = x.f32; break;
                case GGUF_TYPE_BOOL: v.b = x.u8 != 0; break;
                case GGUF_TYPE_UINT64: v.u64 = x.u64; break;
                case GGUF_TYPE_INT64: v.i64 = x.i64; break;
                default: v.f64 = x.f64; break;
                }
                print_value(&v);
        }
        printf("%s}", a->n > ARRAY_PREVIEW ? ", ..." : "");
}

static void print_value(const struct gguf_value *v)
{
        switch (v->type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
                printf("%" PRIu64, v->u64);
                break;
        case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32: case GGUF_TYPE_INT64:
                printf("%" PRId64, v->i64);
                break;
        case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64:
                printf("%.9g", v->f64);
                break;
        case GGUF_TYPE_BOOL:
                printf("%s", v->b ? "true" : "false");
                break;
        case GGUF_TYPE_STRING:
                print_str(v->str);
                break;
        case GGUF_TYPE_ARRAY:
                print_array(&v->arr);
                break;
        }
}

static void usage(FILE *f)
{
        fprintf(f, "usage: sluice-gguf [--tensors] FILE\n"
                   "Validates a GGUF file and prints its header and metadata.\n");
}

int main(int argc, char **argv)
{
        struct sl_error err = { { 0 } };
        struct gguf_file *g = NULL;
        const char *path = NULL;
        bool tensors = false;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--tensors") == 0) {
                        tensors = true;
                } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        usage(stdout);
                        return 0;
                } else if (argv[i][0] == '-' && argv[i][1]) {
                        fprintf(stderr, "sluice-gguf: unknown option %s\n", argv[i]);
                        return 2;
                } else if (path) {
                        fprintf(stderr, "sluice-gguf: more than one FILE\n");
                        return 2;
                } else {
                        path = argv[i];
                }
        }
        if (!path) {
                usage(stderr);
                return 2;
        }
        if (gguf_open(path, &g, &err) < 0) {
                fprintf(stderr, "sluice-gguf: %s: %s\n", path, err.msg);
                return 1;
        }

        printf("file: %s (%" PRIu64 " bytes)\n", path, g->file_size);
        printf("version: %u\n", g->version);
        printf("alignment: %u\n", g->alignment);
        printf("data: offset %" PRIu64 ", size %" PRIu64 "\n", g->data_offset, g->data_size);
        printf("metadata: %" PRIu64 " entries\n", g->n_kv);
        for (uint64_t i = 0; i < g->n_kv; i++) {
                const struct gguf_kv *kv = &g->kv[i];
                printf("  ");
                print_str(kv->key);
                printf(" %s = ", type_name(kv->val.type));
                print_value(&kv->val);
                putchar('\n');
        }
        printf("tensors: %" PRIu64 "\n", g->n_tensors);
        if (tensors) {
                for (uint64_t i = 0; i < g->n_tensors; i++) {
                        const struct gguf_tensor *t = &g->tensors[i];
                        char name[GGUF_NAME_PRINT + 1];
                        size_t n = 0;
                        for (; n < t->name.len && n < GGUF_NAME_PRINT; n++) {
                                unsigned char c = (unsigned char)t->name.ptr[n];
                                name[n] = c >= 0x20 && c != 0x7f ? (char)c : '?'; /* one line each */
                        }
                        name[n] = 0;
                        printf("  %-48s %-8s [", name, ggml_type_name(t->type));
                        for (uint32_t d = 0; d < t->n_dims; d++)
                                printf("%s%" PRIu64, d ? ", " : "", t->ne[d]);
                        printf("] offset %" PRIu64 " size %" PRIu64 "\n", t->offset, t->nbytes);
                }
        }
        gguf_close(g);
        if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "sluice-gguf: %s: write error: %s\n", path, strerror(errno));
                return 1;
        }
        return 0;
}
