/* fuzz_gguf — libFuzzer target for the GGUF parser: parse the input, then walk every
 * metadata value (nested arrays included), every tensor, and every getter. */
#include <stdio.h>

#include "storage.h"

static volatile uint64_t sink_acc; /* keeps the walk from being optimised away */

static void walk_value(const struct gguf_value *v)
{
        switch (v->type) {
        case GGUF_TYPE_STRING:
                for (uint64_t i = 0; i < v->str.len; i++)
                        sink_acc += (uint8_t)v->str.ptr[i];
                break;
        case GGUF_TYPE_ARRAY:
                if (v->arr.items) {
                        for (uint64_t i = 0; i < v->arr.n; i++)
                                walk_value(&v->arr.items[i]);
                } else if (v->arr.n) {
                        /* scalar data: touch the first and the last byte of the array */
                        uint32_t es = v->arr.type == GGUF_TYPE_UINT8 || v->arr.type == GGUF_TYPE_INT8 ||
                                                      v->arr.type == GGUF_TYPE_BOOL ? 1
                                      : v->arr.type == GGUF_TYPE_UINT16 || v->arr.type == GGUF_TYPE_INT16 ? 2
                                      : v->arr.type == GGUF_TYPE_UINT32 || v->arr.type == GGUF_TYPE_INT32 ||
                                                      v->arr.type == GGUF_TYPE_FLOAT32 ? 4 : 8;
                        sink_acc += v->arr.data[0] + v->arr.data[v->arr.n * es - 1];
                }
                break;
        default:
                sink_acc += v->u64;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct gguf_file *g = NULL;
        struct sl_error e = { { 0 } };

        if (gguf_parse(data, size, &g, &e) < 0) {
                if (!e.msg[0] || strchr(e.msg, '\n'))
                        __builtin_trap(); /* every failure has a one-line reason */
                return 0;
        }
        for (uint64_t i = 0; i < g->n_kv; i++) {
                const struct gguf_kv *kv = &g->kv[i];
                char key[128];
                uint32_t u32;
                int32_t i32;
                float f;
                bool b;
                struct gguf_str s;
                const struct gguf_array *a;

                walk_value(&kv->val);
                if (kv->key.len >= sizeof(key) || memchr(kv->key.ptr, 0, kv->key.len))
                        continue;
                memcpy(key, kv->key.ptr, kv->key.len);
                key[kv->key.len] = 0;
                if (gguf_find(g, key) != kv)
                        __builtin_trap();
                gguf_get_u32(g, key, &u32, &e);
                gguf_get_i32(g, key, &i32, &e);
                gguf_get_f32(g, key, &f, &e);
                gguf_get_bool(g, key, &b, &e);
                gguf_get_str(g, key, &s, &e);
                gguf_get_arr(g, key, GGUF_TYPE_COUNT, &a, &e);
                gguf_get_arr(g, key, GGUF_TYPE_STRING, &a, &e);
        }
        for (uint64_t i = 0; i < g->n_tensors; i++) {
                const struct gguf_tensor *t = &g->tensors[i];
                char name[128];
                const uint8_t *d = g->image + g->data_offset + t->offset;
                sink_acc += d[0] + d[t->nbytes - 1]; /* inside the input, or ASan says so */
                if (t->name.len < sizeof(name) && !memchr(t->name.ptr, 0, t->name.len)) {
                        memcpy(name, t->name.ptr, t->name.len);
                        name[t->name.len] = 0;
                        if (gguf_find_tensor(g, name) != t)
                                __builtin_trap();
                }
                sink_acc += (uintptr_t)ggml_type_name(t->type)[0];
        }
        gguf_close(g);
        return 0;
}
