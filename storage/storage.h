/* storage.h — sluice's model-file layer: GGUF (v2, v3) parsed and validated as untrusted
 * input, the tensor directory, and io_uring streaming of tensor data (O_DIRECT, registered
 * staging buffers, several reads in flight). Nothing here prints; errors come back as
 * negative errno plus a one-line reason in struct sl_error. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DEPTH 8 /* nesting of arrays inside arrays */

enum gguf_value_type {
        GGUF_TYPE_UINT8 = 0,
        GGUF_TYPE_INT8 = 1,
        GGUF_TYPE_UINT16 = 2,
        GGUF_TYPE_INT16 = 3,
        GGUF_TYPE_UINT32 = 4,
        GGUF_TYPE_INT32 = 5,
        GGUF_TYPE_FLOAT32 = 6,
        GGUF_TYPE_BOOL = 7,
        GGUF_TYPE_STRING = 8,
        GGUF_TYPE_ARRAY = 9,
        GGUF_TYPE_UINT64 = 10,
        GGUF_TYPE_INT64 = 11,
        GGUF_TYPE_FLOAT64 = 12,
        GGUF_TYPE_COUNT
};

/* Tensor element types, numbered as in ggml. */
enum ggml_type {
        GGML_TYPE_F32 = 0,
        GGML_TYPE_F16 = 1,
        GGML_TYPE_Q4_0 = 2,
        GGML_TYPE_Q4_1 = 3,
        GGML_TYPE_Q5_0 = 6,
        GGML_TYPE_Q5_1 = 7,
        GGML_TYPE_Q8_0 = 8,
        GGML_TYPE_Q8_1 = 9,
        GGML_TYPE_Q2_K = 10,
        GGML_TYPE_Q3_K = 11,
        GGML_TYPE_Q4_K = 12,
        GGML_TYPE_Q5_K = 13,
        GGML_TYPE_Q6_K = 14,
        GGML_TYPE_Q8_K = 15,
        GGML_TYPE_I8 = 24,
        GGML_TYPE_I16 = 25,
        GGML_TYPE_I32 = 26,
        GGML_TYPE_I64 = 27,
        GGML_TYPE_F64 = 28,
        GGML_TYPE_BF16 = 30,
        GGML_TYPE_COUNT = 40
};

/* A string inside the file image: not NUL-terminated. */
struct gguf_str {
        const char *ptr;
        uint64_t len;
};

struct gguf_value;

struct gguf_array {
        uint32_t type;               /* enum gguf_value_type of the elements */
        uint64_t n;                  /* element count */
        const uint8_t *data;         /* scalar element types: n little-endian elements in the image */
        struct gguf_value *items;    /* GGUF_TYPE_STRING / GGUF_TYPE_ARRAY elements: n parsed values */
};

struct gguf_value {
        uint32_t type; /* enum gguf_value_type */
        union {
                uint64_t u64;   /* UINT8/16/32/64 */
                int64_t i64;    /* INT8/16/32/64 */
                double f64;     /* FLOAT32/64 */
                bool b;         /* BOOL */
                struct gguf_str str;
                struct gguf_array arr;
        };
};

struct gguf_kv {
        struct gguf_str key;
        struct gguf_value val;
};

struct gguf_tensor {
        struct gguf_str name;
        uint32_t n_dims;
        uint64_t ne[GGUF_MAX_DIMS]; /* unused dims are 1 */
        uint32_t type;              /* enum ggml_type */
        uint64_t offset;            /* from the start of the data section; aligned */
        uint64_t nbytes;
        uint64_t nelements;
};

struct gguf_file {
        uint32_t version;
        uint64_t n_kv;
        struct gguf_kv *kv;
        uint64_t n_tensors;
        struct gguf_tensor *tensors;
        uint32_t alignment;
        uint64_t data_offset; /* absolute file offset of the data section */
        uint64_t data_size;   /* end of the last tensor, relative to data_offset */
        uint64_t file_size;
        const uint8_t *image; /* the bytes parsed (the mapping, for gguf_open) */
        void *priv;
};

/* Parses a whole GGUF image of len bytes. Every length, count, offset, shape and type is
 * checked; tensors must lie inside the image, aligned, and must not overlap. The result
 * points into buf, which must outlive it. */
int gguf_parse(const void *buf, size_t len, struct gguf_file **out, struct sl_error *err);
/* Maps path read-only and parses it; gguf_close() unmaps. */
int gguf_open(const char *path, struct gguf_file **out, struct sl_error *err);
void gguf_close(struct gguf_file *g); /* NULL is a no-op */

const struct gguf_kv *gguf_find(const struct gguf_file *g, const char *key);
/* Typed getters: -ENOENT when absent, -EINVAL (with reason) when of a type that does not
 * convert or out of range. Integer getters accept any integer type whose value fits. */
int gguf_get_u32(const struct gguf_file *g, const char *key, uint32_t *out, struct sl_error *err);
int gguf_get_i32(const struct gguf_file *g, const char *key, int32_t *out, struct sl_error *err);
int gguf_get_f32(const struct gguf_file *g, const char *key, float *out, struct sl_error *err);
int gguf_get_bool(const struct gguf_file *g, const char *key, bool *out, struct sl_error *err);
int gguf_get_str(const struct gguf_file *g, const char *key, struct gguf_str *out, struct sl_error *err);
/* Array whose element type is elem_type (GGUF_TYPE_COUNT accepts any). */
int gguf_get_arr(const struct gguf_file *g, const char *key, uint32_t elem_type,
                 const struct gguf_array **out, struct sl_error *err);
bool gguf_str_eq(struct gguf_str s, const char *cstr);

const struct gguf_tensor *gguf_find_tensor(const struct gguf_file *g, const char *name);

/* Block geometry of a tensor type: elements per block and bytes per block.
 * -EINVAL for a type number this build does not know. */
int ggml_type_size(uint32_t type, uint32_t *blck, uint32_t *type_size);
const char *ggml_type_name(uint32_t type); /* "?" when unknown */

/* ---- tensor data streaming ---- */

/* Hooks for a consumer that hands staging data to an asynchronous copy engine (a GPU's DMA):
 * the sink starts a copy out of the staging buffer and returns at once; before the reader
 * reads into that buffer again it calls reuse(), which waits for the copy. */
struct storage_staging_hooks {
        void *user;
        /* Once, after the staging memory exists (e.g. to page-lock it for DMA). < 0 aborts
         * the open with that error. */
        int (*pin)(void *user, void *base, size_t len);
        void (*unpin)(void *user, void *base); /* at close, when pin succeeded */
        /* Before staging buffer `index` (of queue_depth, each chunk_size bytes from base)
         * is filled again after its data went to the sink. < 0 aborts the stream. */
        int (*reuse)(void *user, uint32_t index);
};

struct storage_reader_opts {
        uint32_t queue_depth; /* reads in flight; 0 = default (8) */
        uint32_t chunk_size;  /* bytes per read; multiple of 4096; 0 = default (4 MiB) */
        bool no_direct;       /* force buffered reads */
        const struct storage_staging_hooks *hooks; /* NULL: the sink copies synchronously */
};

struct storage_reader;

int storage_reader_open(const char *path, const struct storage_reader_opts *opts,
                        struct storage_reader **out, struct sl_error *err);
void storage_reader_close(struct storage_reader *r); /* NULL is a no-op */
/* False when the file system refused O_DIRECT (tmpfs, ...) and reads are buffered. */
bool storage_reader_is_direct(const struct storage_reader *r);
/* False when registering the staging buffers failed (RLIMIT_MEMLOCK, ...) and reads are
 * plain READs instead of READ_FIXED. */
bool storage_reader_uses_fixed_buffers(const struct storage_reader *r);
/* The staging buffer a sink's data pointer lies in (0..queue_depth-1), or -1. */
int storage_reader_buffer_index(const struct storage_reader *r, const void *data);

/* Receives a piece of the requested range. Pieces may come in any order; together they
 * cover the range exactly once. data is valid only during the call. Return < 0 to abort. */
typedef int (*storage_sink_fn)(void *user, uint64_t file_off, const void *data, size_t len);

/* Streams [off, off + len) of the file through the registered staging buffers with up to
 * queue_depth reads in flight. off and len need no alignment. */
int storage_reader_stream(struct storage_reader *r, uint64_t off, uint64_t len,
                          storage_sink_fn sink, void *user, struct sl_error *err);
/* storage_reader_stream() into dst (len bytes). */
int storage_reader_read(struct storage_reader *r, uint64_t off, uint64_t len, void *dst,
                        struct sl_error *err);
