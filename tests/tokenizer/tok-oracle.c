/* tok-oracle — drives the tokenizer for tests/python/test_tokenizer.py, which compares its
 * answers with llama.cpp's.
 *   tok-oracle tokenize MODEL   stdin: records "<len> <add_special> <parse_special>\n<len bytes>";
 *                               stdout: one line of ids per record ("ERR <errno>" on failure)
 *   tok-oracle detok MODEL      stdin: lines of ids; stdout per line: hex of the concatenated
 *                               pieces, hex of the streamed text (one id at a time, then
 *                               flush), and 1 if every streamed chunk was valid UTF-8 else 0
 *   tok-oracle pieces MODEL     stdout: "info <n_vocab> <bos> <eos> <add_bos> <create_ms>", then
 *                               per id "<hex piece special> <hex piece plain> <eog>" ("-" = empty) */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "engine.h"
#include "storage.h"

static void put_hex(const char *p, size_t n)
{
        if (n == 0) {
                fputc('-', stdout);
                return;
        }
        for (size_t i = 0; i < n; i++)
                printf("%02x", (uint8_t)p[i]);
}

static bool valid_utf8(const char *p, size_t n)
{
        for (size_t i = 0; i < n;) {
                utf8proc_int32_t cp;
                utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)p + i, (utf8proc_ssize_t)(n - i), &cp);
                if (k <= 0)
                        return false;
                i += (size_t)k;
        }
        return true;
}

static int do_tokenize(const struct engine_tokenizer *t)
{
        size_t len;
        int add, parse;
        while (scanf("%zu %d %d", &len, &add, &parse) == 3) {
                if (getchar() != '\n') {
                        fprintf(stderr, "bad record header\n");
                        return 1;
                }
                char *buf = malloc(len ? len : 1);
                if (!buf || fread(buf, 1, len, stdin) != len) {
                        fprintf(stderr, "short record\n");
                        free(buf);
                        return 1;
                }
                size_t cap = len * 2 + 16, needed = 0;
                int32_t *ids = malloc(cap * sizeof(*ids));
                int n = ids ? engine_tokenize(t, buf, len, add, parse, ids, cap, &needed) : -ENOMEM;
                if (n == -ENOSPC) {
                        int32_t *bigger = realloc(ids, needed * sizeof(*ids));
                        if (bigger) {
                                ids = bigger;
                                n = engine_tokenize(t, buf, len, add, parse, ids, needed, NULL);
                        }
                }
                if (n < 0) {
                        printf("ERR %d\n", -n);
                } else {
                        for (int i = 0; i < n; i++)
                                printf(i ? " %d" : "%d", ids[i]);
                        putchar('\n');
                }
                fflush(stdout);
                free(ids);
                free(buf);
        }
        return 0;
}

static int do_detok(const struct engine_tokenizer *t)
{
        char *line = NULL;
        size_t lcap = 0;
        while (getline(&line, &lcap, stdin) > 0) {
                size_t cap = 1024, plen = 0, slen = 0;
                char *plain = malloc(cap), *streamed = malloc(cap * 3 + 16);
                char chunk[4096];
                bool valid = true;
                struct engine_detok d;
                engine_detok_init(&d);
                char *p = line, *end;
                if (!plain || !streamed)
                        return 1;
                for (;;) {
                        long id = strtol(p, &end, 10);
                        if (end == p)
                                break;
                        p = end;
                        char piece[1024];
                        int n = engine_token_to_piece(t, (int32_t)id, false, piece, sizeof(piece));
                        if (n < 0 || (size_t)n > sizeof(piece)) {
                                fprintf(stderr, "token_to_piece(%ld) = %d\n", id, n);
                                return 1;
                        }
                        int m = engine_detok_push(t, &d, (int32_t)id, chunk, sizeof(chunk));
                        if (m < 0) {
                                fprintf(stderr, "detok_push(%ld) = %d\n", id, m);
                                return 1;
                        }
                        valid &= valid_utf8(chunk, (size_t)m);
                        if (plen + (size_t)n > cap || slen + (size_t)m > cap * 3) {
                                cap = (cap + (size_t)n + (size_t)m) * 2;
                                plain = realloc(plain, cap);
                                streamed = realloc(streamed, cap * 3 + 16);
                                if (!plain || !streamed)
                                        return 1;
                        }
                        memcpy(plain + plen, piece, (size_t)n);
                        plen += (size_t)n;
                        memcpy(streamed + slen, chunk, (size_t)m);
                        slen += (size_t)m;
                }
                int m = engine_detok_flush(&d, chunk, sizeof(chunk));
                if (m < 0)
                        return 1;
                valid &= valid_utf8(chunk, (size_t)m);
                memcpy(streamed + slen, chunk, (size_t)m);
                slen += (size_t)m;
                put_hex(plain, plen);
                putchar(' ');
                put_hex(streamed, slen);
                printf(" %d\n", valid);
                fflush(stdout);
                free(plain);
                free(streamed);
        }
        free(line);
        return 0;
}

static int do_pieces(const struct engine_tokenizer *t, uint64_t create_ns)
{
        uint32_t n = engine_tokenizer_n_vocab(t);
        printf("info %u %d %d %d %.3f\n", n, engine_token_bos(t), engine_token_eos(t), engine_tokenizer_add_bos(t),
               create_ns / 1e6);
        for (uint32_t i = 0; i < n; i++) {
                char a[1024], b[1024];
                int na = engine_token_to_piece(t, (int32_t)i, true, a, sizeof(a));
                int nb = engine_token_to_piece(t, (int32_t)i, false, b, sizeof(b));
                if (na < 0 || nb < 0 || (size_t)na > sizeof(a) || (size_t)nb > sizeof(b)) {
                        fprintf(stderr, "token_to_piece(%u) failed\n", i);
                        return 1;
                }
                put_hex(a, (size_t)na);
                putchar(' ');
                put_hex(b, (size_t)nb);
                printf(" %d\n", engine_token_is_eog(t, (int32_t)i));
        }
        return 0;
}

int main(int argc, char **argv)
{
        struct sl_error err = { { 0 } };
        struct gguf_file *g = NULL;
        struct engine_tokenizer *t = NULL;
        int r;

        if (argc != 3) {
                fprintf(stderr, "usage: %s tokenize|detok|pieces MODEL.gguf\n", argv[0]);
                return 2;
        }
        if ((r = gguf_open(argv[2], &g, &err)) < 0) {
                fprintf(stderr, "%s: %s\n", argv[2], err.msg);
                return 1;
        }
        uint64_t t0 = sl_now_ns();
        r = engine_tokenizer_create(g, &t, &err);
        uint64_t t1 = sl_now_ns();
        if (r < 0) {
                fprintf(stderr, "%s: tokenizer: %s\n", argv[2], err.msg);
                gguf_close(g);
                return 1;
        }
        if (strcmp(argv[1], "tokenize") == 0)
                r = do_tokenize(t);
        else if (strcmp(argv[1], "detok") == 0)
                r = do_detok(t);
        else if (strcmp(argv[1], "pieces") == 0)
                r = do_pieces(t, t1 - t0);
        else {
                fprintf(stderr, "unknown mode %s\n", argv[1]);
                r = 2;
        }
        engine_tokenizer_free(t);
        gguf_close(g);
        return r;
}
