/* quant-tool — raw access to the tensor-type kernels for tests/python/test_quant.py:
 *   quant-tool dequant TYPE  < blocks  > float32s
 *   quant-tool quant TYPE    < float32s > blocks     (activation types f32 f16 bf16 q8_0 q8_1 q8_K)
 *   quant-tool dot WTYPE N   < W-row X-row > "%.9g\n" (X already in WTYPE's vec_dot type)
 * SLUICE_QUANT_ISA=ref|avx2 caps the kernel set, as everywhere. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quant.h"

static const struct { const char *name; uint32_t type; } names[] = {
        { "f32", GGML_TYPE_F32 },   { "f16", GGML_TYPE_F16 },   { "bf16", GGML_TYPE_BF16 }, { "q4_0", GGML_TYPE_Q4_0 },
        { "q4_1", GGML_TYPE_Q4_1 }, { "q5_0", GGML_TYPE_Q5_0 }, { "q5_1", GGML_TYPE_Q5_1 }, { "q8_0", GGML_TYPE_Q8_0 },
        { "q8_1", GGML_TYPE_Q8_1 }, { "q4_k", GGML_TYPE_Q4_K }, { "q5_k", GGML_TYPE_Q5_K }, { "q6_k", GGML_TYPE_Q6_K },
        { "q8_k", GGML_TYPE_Q8_K },
};

static int parse_type(const char *s, uint32_t *t)
{
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (strcasecmp(s, names[i].name) == 0) {
                        *t = names[i].type;
                        return 0;
                }
        return -1;
}

static unsigned char *read_all(size_t *len)
{
        size_t cap = 1 << 16, n = 0;
        unsigned char *buf = malloc(cap);
        for (;;) {
                if (!buf)
                        return NULL;
                n += fread(buf + n, 1, cap - n, stdin);
                if (n < cap)
                        break;
                cap *= 2;
                buf = realloc(buf, cap);
        }
        *len = n;
        return buf;
}

static int usage(void)
{
        fprintf(stderr, "usage: quant-tool dequant TYPE | quant TYPE | dot WTYPE N  (raw data on stdin)\n");
        return 2;
}

int main(int argc, char **argv)
{
        uint32_t type;
        size_t len;
        if (argc < 3 || parse_type(argv[2], &type) < 0 || !quant_type_get(type))
                return usage();
        const struct quant_type *qt = quant_type_get(type);
        unsigned char *in = read_all(&len);
        if (!in) {
                fprintf(stderr, "quant-tool: out of memory\n");
                return 1;
        }
        int rc = 0;
        if (strcmp(argv[1], "dequant") == 0) {
                if (len % qt->size) {
                        fprintf(stderr, "quant-tool: %zu bytes is not a whole number of %u-byte blocks\n", len, qt->size);
                        return 1;
                }
                const int64_t n = (int64_t)(len / qt->size) * qt->blck;
                float *out = malloc(sizeof(float) * (size_t)(n ? n : 1));
                quant_dequantize_row(type, in, out, n);
                fwrite(out, sizeof(float), (size_t)n, stdout);
                free(out);
        } else if (strcmp(argv[1], "quant") == 0) {
                const int64_t n = (int64_t)(len / sizeof(float));
                if (len % sizeof(float) || n % qt->blck) {
                        fprintf(stderr, "quant-tool: %zu bytes is not a whole number of %u-float blocks\n", len, qt->blck);
                        return 1;
                }
                const size_t sz = quant_row_size(type, n);
                void *out = malloc(sz ? sz : 1);
                float *src = malloc(len ? len : 1);
                memcpy(src, in, len);
                quant_quantize_row(type, src, out, n);
                fwrite(out, 1, sz, stdout);
                free(out);
                free(src);
        } else if (strcmp(argv[1], "dot") == 0 && argc == 4) {
                const int64_t n = strtoll(argv[3], NULL, 10);
                const size_t wsz = quant_row_size(type, n), xsz = quant_row_size(qt->vec_dot_type, n);
                if (n <= 0 || n % qt->blck || len != wsz + xsz) {
                        fprintf(stderr, "quant-tool: want %zu + %zu bytes for n=%lld, got %zu\n", wsz, xsz, (long long)n, len);
                        return 1;
                }
                float s;
                quant_vec_dot(type, n, in, in + wsz, &s);
                printf("%.9g\n", s);
        } else {
                rc = usage();
        }
        free(in);
        return rc;
}
