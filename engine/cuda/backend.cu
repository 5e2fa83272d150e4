/* backend.cu — the CUDA backend (ecu.h): weights streamed from the storage reader's staging
 * buffers onto the GPU, a paged KV pool sized from free memory, and steps that run the whole
 * forward pass and the sampling on the GPU.
 *
 * A step's inputs (token ids, positions, sequence slots, the rows to sample and their
 * parameters, penalty windows, block-table changes) are written by the host into one mapped
 * pinned buffer; the step's first kernel copies them into fixed device arrays, so every
 * later kernel reads device memory at addresses that never change. That is what lets a
 * decode step of a given batch bucket be captured once as a CUDA Graph and replayed with new
 * inputs. The sampled ids are written by the last kernel straight into mapped host memory.
 *
 * There are two such input and output slots, used by steps in turn, so that the host can
 * write and launch step n+1 while step n still runs (ecu_step_launch / ecu_step_wait). A
 * token of step n+1 may be "the id step n samples for row r": its input then holds -(r+1),
 * which the staging kernel replaces by the id step n wrote into the other output slot. Each
 * slot has its own set of captured graphs. Prompt chunks are read by the staging kernel from
 * the engine's mapped token arrays where they lie (ecu_host_alloc), not copied in. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

extern "C" {
#include "model.h"
}
#include "ecu.h"

#include "attention.cuh"
#include "bandwidth.cuh"
#include "common.cuh"
#include "gemm.cuh"
#include "gemv.cuh"
#include "mma_gemv.cuh"
#include "ops.cuh"
#include "rmsnorm.cuh"
#include "sample.cuh"

#define GGML_F32 0u
#define GGML_F16 1u
#define GGML_BF16 30u
#define MAX_STAGING 256   /* the storage reader's MAX_QUEUE_DEPTH */
#define MAX_BUCKETS 16
#define DEV_ALIGN 256

/* A failed CUDA call as a reason: which call, where, and what the runtime said. */
static int cuda_fail(struct sl_error *err, int r, const char *what)
{
        const struct cuda_err_site *s = cuda_err_last();
        if (s->call)
                return sl_errorf(err, r, "%s: %s failed at %s:%d: %s (%s)", what, s->call, s->file, s->line,
                                 cudaGetErrorString(s->err), cudaGetErrorName(s->err));
        return sl_errorf(err, r, "%s failed (%d)", what, r);
}

/* ---- probe ---- */

extern "C" int ecu_probe(int device, struct engine_gpu_info *info, struct sl_error *err)
{
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess)
                return sl_errorf(err, -ENODEV, "no usable GPU: %s", cudaGetErrorString(e));
        if (n == 0)
                return sl_errorf(err, -ENODEV, "no GPU present");
        if (device < 0 || device >= n)
                return sl_errorf(err, -ENODEV, "GPU %d asked for, %d present", device, n);
        cudaDeviceProp p;
        if ((e = cudaGetDeviceProperties(&p, device)) != cudaSuccess)
                return sl_errorf(err, -ENODEV, "GPU %d: %s", device, cudaGetErrorString(e));
        if (p.major < 9)
                return sl_errorf(err, -ENODEV,
                                 "GPU %d (%s) has compute capability %d.%d; this build's kernels need 9.0 or newer",
                                 device, p.name, p.major, p.minor);
        size_t fr = 0, tot = 0;
        if ((e = cudaSetDevice(device)) != cudaSuccess || (e = cudaMemGetInfo(&fr, &tot)) != cudaSuccess)
                return sl_errorf(err, -ENODEV, "GPU %d (%s): %s", device, p.name, cudaGetErrorString(e));
        if (info) {
                memset(info, 0, sizeof(*info));
                snprintf(info->name, sizeof(info->name), "%.95s", p.name);
                info->device = device;
                info->cc_major = p.major;
                info->cc_minor = p.minor;
                info->n_sm = p.multiProcessorCount;
                info->mem_total = tot;
                info->mem_free = fr;
        }
        return 0;
}

/* ---- what the backend takes ---- */

static bool is_w16(uint32_t t)
{
        return t == GGML_F16 || t == GGML_BF16;
}

extern "C" int ecu_model_supported(const struct engine_model *m, struct sl_error *err)
{
        const struct engine_hparams *hp = &m->hp;
        if (hp->head_dim_k % 8 || hp->head_dim_v % 8 || hp->head_dim_k > 256 || hp->head_dim_v > 256)
                return sl_errorf(err, -EOPNOTSUPP, "head dimensions %u/%u: the CUDA kernels take multiples of 8 up to 256",
                                 hp->head_dim_k, hp->head_dim_v);
        if (hp->n_embd % 8 || hp->n_ff % 8 || hp->n_head % hp->n_head_kv || hp->rope_dim % 2 ||
            hp->rope_dim > hp->head_dim_k)
                return sl_errorf(err, -EOPNOTSUPP, "shape (n_embd %u, n_ff %u, heads %u/%u, rope dims %u) not supported on CUDA",
                                 hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv, hp->rope_dim);
        const uint32_t et = m->tok_embd.type;
        if (et != GGML_F32 && !is_w16(et))
                return sl_errorf(err, -EOPNOTSUPP, "token_embd.weight is %s; the CUDA backend takes F32/F16/BF16 embeddings "
                                 "(quantized types come later)", ggml_type_name(et));
        if (!is_w16(m->output.type))
                return sl_errorf(err, -EOPNOTSUPP, "output weight is %s; the CUDA backend takes F16/BF16 matrices "
                                 "(quantized types come later)", ggml_type_name(m->output.type));
        for (uint32_t il = 0; il < hp->n_layer; il++) {
                const struct engine_layer *L = &m->layers[il];
                const struct {
                        const struct engine_tensor *t;
                        const char *name;
                } ws[] = {{&L->wq, "attn_q"}, {&L->wk, "attn_k"}, {&L->wv, "attn_v"}, {&L->wo, "attn_output"},
                          {&L->gate, "ffn_gate"}, {&L->up, "ffn_up"}, {&L->down, "ffn_down"}};
                for (const auto &w : ws)
                        if (!is_w16(w.t->type))
                                return sl_errorf(err, -EOPNOTSUPP, "blk.%u.%s.weight is %s; the CUDA backend takes F16/BF16 "
                                                 "matrices (quantized types come later)", il, w.name,
                                                 ggml_type_name(w.t->type));
                if (L->wk.type != L->wq.type || L->wv.type != L->wq.type || L->up.type != L->gate.type)
                        return sl_errorf(err, -EOPNOTSUPP, "blk.%u: Q/K/V (or gate/up) weights of different types", il);
        }
        return 0;
}

/* ---- weights ---- */

struct upload_span {          /* a file range (data-section offsets) and where it goes */
        uint64_t off, len;
        uint8_t *dst;
};

struct ecu_layer {
        const void *wqkv, *wo, *wgu, *wdown;
        uint32_t tqkv, to, tgu, tdown;
        const float *attn_norm, *ffn_norm, *bq, *bk, *bv, *q_norm, *k_norm, *post_attn_norm, *post_ffn_norm;
};

struct ecu_model {
        int device;
        cudaStream_t stream;
        uint8_t *dev;                 /* every matrix, one allocation */
        size_t dev_bytes;
        float *f32;                   /* the small f32 tensors */
        size_t f32_count;
        struct upload_span *spans;    /* sorted by off */
        uint32_t n_spans;
        uint64_t span_bytes, uploaded;
        struct ecu_layer *layers;
        const void *tok_embd, *output;
        uint32_t embd_type, out_type;
        const float *output_norm, *rope_ff;
        cudaEvent_t ev[MAX_STAGING];
        bool ev_made[MAX_STAGING], ev_pending[MAX_STAGING];
        void *pinned;
        uint64_t t0;
        struct engine_gpu_info info;
        char last_err[256];
        int failed;                   /* first upload error */
};

static uint64_t tensor_off(const struct engine_model *m, const struct engine_tensor *t)
{
        return (uint64_t)((const uint8_t *)t->data - (const uint8_t *)m->arena);
}

static uint64_t tensor_bytes(const struct engine_tensor *t)
{
        return (uint64_t)t->row_size * t->ne[1];
}

static void note_err(struct ecu_model *em, int r, const char *what)
{
        if (em->failed)
                return;
        em->failed = r;
        struct sl_error e = {0};
        cuda_fail(&e, r, what);
        snprintf(em->last_err, sizeof(em->last_err), "%s", e.msg);
}

extern "C" const char *ecu_model_last_error(const struct ecu_model *em)
{
        return em ? em->last_err : "";
}

static int span_cmp(const void *a, const void *b)
{
        const struct upload_span *x = (const struct upload_span *)a, *y = (const struct upload_span *)b;
        return x->off < y->off ? -1 : x->off > y->off;
}

extern "C" int ecu_model_create(const struct engine_model *m, int device, struct ecu_model **out,
                                struct sl_error *err)
{
        const struct engine_hparams *hp = &m->hp;
        struct ecu_model *em;
        int r;

        *out = NULL;
        if ((r = ecu_probe(device, NULL, err)) < 0)
                return r;
        em = (struct ecu_model *)calloc(1, sizeof(*em));
        if (!em)
                return sl_errorf(err, -ENOMEM, "out of memory");
        em->device = device;
        em->t0 = sl_now_ns();
        em->layers = (struct ecu_layer *)calloc(hp->n_layer, sizeof(*em->layers));
        const uint32_t max_spans = hp->n_layer * 7 + 2;
        em->spans = (struct upload_span *)calloc(max_spans, sizeof(*em->spans));
        if (!em->layers || !em->spans) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }

        /* Device layout: per layer [Q;K;V] and [gate;up] stacked, so each is one matrix
         * product; first a pass for the size, then one allocation. */
        for (int pass = 0; pass < 2; pass++) {
                size_t at = 0;
                em->n_spans = 0;
                auto place = [&](const struct engine_tensor *t) -> uint8_t * {
                        uint8_t *dst = em->dev ? em->dev + at : NULL;
                        if (pass == 1)
                                em->spans[em->n_spans++] = {tensor_off(m, t), tensor_bytes(t), dst};
                        at += tensor_bytes(t);
                        return dst;
                };
                auto align = [&]() { at = SL_ALIGN_UP(at, (size_t)DEV_ALIGN); };
                em->tok_embd = place(&m->tok_embd);
                em->embd_type = m->tok_embd.type;
                align();
                if (hp->tied_output) {
                        em->output = em->tok_embd;
                } else {
                        em->output = place(&m->output);
                        align();
                }
                em->out_type = m->output.type;
                for (uint32_t il = 0; il < hp->n_layer; il++) {
                        const struct engine_layer *L = &m->layers[il];
                        struct ecu_layer *E = &em->layers[il];
                        E->wqkv = place(&L->wq);
                        place(&L->wk);
                        place(&L->wv);
                        align();
                        E->wo = place(&L->wo);
                        align();
                        E->wgu = place(&L->gate);
                        place(&L->up);
                        align();
                        E->wdown = place(&L->down);
                        align();
                        E->tqkv = L->wq.type;
                        E->to = L->wo.type;
                        E->tgu = L->gate.type;
                        E->tdown = L->down.type;
                }
                if (pass == 0) {
                        em->dev_bytes = at;
                        size_t fr = 0, tot = 0;
                        cudaMemGetInfo(&fr, &tot);
                        cudaError_t e = cudaMalloc((void **)&em->dev, SL_MAX(at, (size_t)DEV_ALIGN));
                        if (e != cudaSuccess) {
                                cudaGetLastError();
                                r = sl_errorf(err, -ENOMEM,
                                              "out of GPU memory for the weights: %.2f GiB needed, %.2f GiB free of %.2f GiB",
                                              at / 1073741824.0, fr / 1073741824.0, tot / 1073741824.0);
                                goto fail;
                        }
                }
        }
        qsort(em->spans, em->n_spans, sizeof(*em->spans), span_cmp);
        for (uint32_t i = 0; i < em->n_spans; i++)
                em->span_bytes += em->spans[i].len;
        if ((r = CUDA_CHECK(cudaStreamCreateWithFlags(&em->stream, cudaStreamNonBlocking))) < 0) {
                cuda_fail(err, r, "creating the upload stream");
                goto fail;
        }
        *out = em;
        return 0;
fail:
        ecu_model_free(em);
        return r;
}

extern "C" void ecu_model_free(struct ecu_model *em)
{
        if (!em)
                return;
        if (em->stream)
                cudaStreamSynchronize(em->stream);
        for (int i = 0; i < MAX_STAGING; i++)
                if (em->ev_made[i])
                        cudaEventDestroy(em->ev[i]);
        if (em->stream)
                cudaStreamDestroy(em->stream);
        cudaFree(em->dev);
        cudaFree(em->f32);
        free(em->spans);
        free(em->layers);
        free(em);
}

static int hook_pin(void *user, void *base, size_t len)
{
        struct ecu_model *em = (struct ecu_model *)user;
        /* Page-locked staging lets each copy run while the next read is in flight; when the
         * registration is refused (memlock limits), the copies are staged by the driver. */
        if (cudaHostRegister(base, len, cudaHostRegisterDefault) == cudaSuccess)
                em->pinned = base;
        else
                cudaGetLastError();
        return 0;
}

static void hook_unpin(void *user, void *base)
{
        struct ecu_model *em = (struct ecu_model *)user;
        cudaStreamSynchronize(em->stream); /* no copy may still read the buffers */
        if (em->pinned == base)
                cudaHostUnregister(base);
        em->pinned = NULL;
}

static int hook_reuse(void *user, uint32_t i)
{
        struct ecu_model *em = (struct ecu_model *)user;
        if (i >= MAX_STAGING || !em->ev_pending[i])
                return 0;
        em->ev_pending[i] = false;
        int r = CUDA_CHECK(cudaEventSynchronize(em->ev[i]));
        if (r < 0)
                note_err(em, r, "copy to the GPU");
        return r;
}

extern "C" void ecu_model_staging_hooks(struct ecu_model *em, struct storage_staging_hooks *h)
{
        memset(h, 0, sizeof(*h));
        h->user = em;
        h->pin = hook_pin;
        h->unpin = hook_unpin;
        h->reuse = hook_reuse;
}

extern "C" int ecu_model_upload(struct ecu_model *em, uint64_t off, const void *data, size_t len, int buf)
{
        if (em->failed)
                return em->failed;
        const uint64_t end = off + len;
        /* first span that ends after off */
        uint32_t lo = 0, hi = em->n_spans;
        while (lo < hi) {
                uint32_t mid = (lo + hi) / 2;
                if (em->spans[mid].off + em->spans[mid].len <= off)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        for (uint32_t i = lo; i < em->n_spans && em->spans[i].off < end; i++) {
                const struct upload_span *s = &em->spans[i];
                const uint64_t a = SL_MAX(off, s->off), b = SL_MIN(end, s->off + s->len);
                if (a >= b)
                        continue;
                int r = CUDA_CHECK(cudaMemcpyAsync(s->dst + (a - s->off), (const uint8_t *)data + (a - off), b - a,
                                                   cudaMemcpyHostToDevice, em->stream));
                if (r < 0) {
                        note_err(em, r, "copy to the GPU");
                        return r;
                }
                em->uploaded += b - a;
        }
        if (buf >= 0 && buf < MAX_STAGING) {
                int r = 0;
                if (!em->ev_made[buf]) {
                        r = CUDA_CHECK(cudaEventCreateWithFlags(&em->ev[buf], cudaEventDisableTiming));
                        em->ev_made[buf] = r == 0;
                }
                if (r == 0)
                        r = CUDA_CHECK(cudaEventRecord(em->ev[buf], em->stream));
                if (r < 0) {
                        note_err(em, r, "copy to the GPU");
                        return r;
                }
                em->ev_pending[buf] = true;
        } else {
                /* not one of the reader's buffers: the data must be copied before we return */
                int r = CUDA_CHECK(cudaStreamSynchronize(em->stream));
                if (r < 0) {
                        note_err(em, r, "copy to the GPU");
                        return r;
                }
        }
        return 0;
}

extern "C" int ecu_model_finish(struct ecu_model *em, const struct engine_model *m, struct sl_error *err)
{
        const struct engine_hparams *hp = &m->hp;
        int r = CUDA_CHECK(cudaStreamSynchronize(em->stream));
        if (r < 0)
                return cuda_fail(err, r, "uploading the weights");
        if (em->uploaded != em->span_bytes)
                return sl_errorf(err, -EIO, "GPU upload incomplete: %llu of %llu weight bytes arrived",
                                 (unsigned long long)em->uploaded, (unsigned long long)em->span_bytes);

        /* the 1-D tensors, dequantized to f32 on the host at load */
        size_t n = 0;
        auto count = [&](const struct engine_tensor *t) {
                if (t->f32)
                        n += SL_ALIGN_UP(t->ne[0], 64);
        };
        count(&m->output_norm);
        count(&m->rope_freqs);
        for (uint32_t il = 0; il < hp->n_layer; il++) {
                const struct engine_layer *L = &m->layers[il];
                const struct engine_tensor *ts[] = {&L->attn_norm, &L->ffn_norm, &L->bq, &L->bk, &L->bv,
                                                    &L->q_norm, &L->k_norm, &L->post_attn_norm, &L->post_ffn_norm};
                for (auto t : ts)
                        count(t);
        }
        em->f32_count = n;
        float *host = (float *)calloc(SL_MAX(n, (size_t)1), sizeof(float));
        if (!host)
                return sl_errorf(err, -ENOMEM, "out of memory");
        if ((r = CUDA_CHECK(cudaMalloc((void **)&em->f32, SL_MAX(n, (size_t)1) * sizeof(float)))) < 0) {
                free(host);
                return cuda_fail(err, r, "allocating the norm weights");
        }
        size_t at = 0;
        auto put = [&](const struct engine_tensor *t) -> const float * {
                if (!t->f32)
                        return NULL;
                memcpy(host + at, t->f32, t->ne[0] * sizeof(float));
                const float *d = em->f32 + at;
                at += SL_ALIGN_UP(t->ne[0], 64);
                return d;
        };
        em->output_norm = put(&m->output_norm);
        em->rope_ff = put(&m->rope_freqs);
        for (uint32_t il = 0; il < hp->n_layer; il++) {
                const struct engine_layer *L = &m->layers[il];
                struct ecu_layer *E = &em->layers[il];
                E->attn_norm = put(&L->attn_norm);
                E->ffn_norm = put(&L->ffn_norm);
                E->bq = put(&L->bq);
                E->bk = put(&L->bk);
                E->bv = put(&L->bv);
                E->q_norm = put(&L->q_norm);
                E->k_norm = put(&L->k_norm);
                E->post_attn_norm = put(&L->post_attn_norm);
                E->post_ffn_norm = put(&L->post_ffn_norm);
        }
        r = CUDA_CHECK(cudaMemcpy(em->f32, host, SL_MAX(n, (size_t)1) * sizeof(float), cudaMemcpyHostToDevice));
        free(host);
        if (r < 0)
                return cuda_fail(err, r, "uploading the norm weights");
        ecu_probe(em->device, &em->info, NULL);
        em->info.weight_bytes = em->dev_bytes + n * sizeof(float);
        em->info.upload_ns = sl_now_ns() - em->t0;
        return 0;
}

extern "C" void ecu_model_info(const struct ecu_model *em, struct engine_gpu_info *info)
{
        *info = em->info;
}

/* ---- step inputs ---- */

/* The mapped input buffer: a header, then arrays at fixed offsets (capacities from the
 * context's limits). Only the counted prefix of each array is read. */
struct step_hdr {
        int32_t ntok, nrows, nhist, nbt, nchunk, pad_;
};

struct src_chunk {                    /* ids the staging kernel reads from mapped host memory */
        const int32_t *src;           /* device address (== host address: UVA) */
        int32_t at, n;                /* batch positions [at, at + n) */
};

struct bt_update {
        int32_t index;                /* into the device block table */
        int32_t block;
};

struct in_layout {
        size_t tok, pos, row, outidx, params, hist, bt, chunk, total;
};

struct stage_args {
        const uint8_t *in;            /* mapped host buffer (device address) */
        const int32_t *prev;          /* the other slot's sampled ids (previous step) */
        struct in_layout L;
        int32_t *tok, *pos, *row, *outidx, *hist, *bt;
        struct cuda_sample_params *params;
};

static __global__ void stage_in_kernel(struct stage_args a)
{
        __shared__ struct step_hdr sh; /* one read of host memory per block, not per thread */
        pdl_start();
        if (threadIdx.x == 0)
                sh = *(const struct step_hdr *)a.in;
        __syncthreads();
        const struct step_hdr h = sh;
        const int stride = gridDim.x * blockDim.x;
        const int i0 = blockIdx.x * blockDim.x + threadIdx.x;
        const int32_t *tok = (const int32_t *)(a.in + a.L.tok), *pos = (const int32_t *)(a.in + a.L.pos);
        const int32_t *row = (const int32_t *)(a.in + a.L.row), *oi = (const int32_t *)(a.in + a.L.outidx);
        const int32_t *hist = (const int32_t *)(a.in + a.L.hist);
        const uint32_t *par = (const uint32_t *)(a.in + a.L.params);
        const struct bt_update *up = (const struct bt_update *)(a.in + a.L.bt);
        for (int i = i0; i < h.ntok; i += stride) {
                const int32_t v = tok[i];
                a.tok[i] = v >= 0 ? v : a.prev[-v - 1];
                a.pos[i] = pos[i];
                a.row[i] = row[i];
        }
        /* prompt chunks, read where the engine keeps them (the slots of tok[] they cover
         * were not written by the host) */
        const struct src_chunk *ch = (const struct src_chunk *)(a.in + a.L.chunk);
        for (int k = 0; k < h.nchunk; k++) {
                __shared__ struct src_chunk c;
                __syncthreads();
                if (threadIdx.x == 0)
                        c = ch[k];
                __syncthreads();
                for (int j = i0; j < c.n; j += stride)
                        a.tok[c.at + j] = c.src[j];
        }
        for (int i = i0; i < h.nrows; i += stride)
                a.outidx[i] = oi[i];
        const int pw = (int)(sizeof(struct cuda_sample_params) / 4);
        for (int i = i0; i < h.nrows * pw; i += stride)
                ((uint32_t *)a.params)[i] = par[i];
        for (int i = i0; i < h.nhist; i += stride) {
                const int32_t v = hist[i];
                a.hist[i] = v >= 0 ? v : a.prev[-v - 1];
        }
        for (int i = i0; i < h.nbt; i += stride)
                a.bt[up[i].index] = up[i].block;
}

/* ---- context ---- */

struct ecu_ctx {
        const struct engine_model *m;
        struct ecu_model *em;
        cudaStream_t st;
        struct ecu_ctx_opts o;
        uint32_t T, R, MB, H, U;      /* tokens, rows, blocks per seq, hist ids, bt updates */
        uint32_t pad_row;             /* block-table row of padding tokens (all trash) */
        uint32_t n_blocks;            /* usable blocks; block n_blocks is the trash block */
        /* KV pool */
        __half *kc, *vc;
        size_t layer_k, layer_v;      /* elements per layer */
        /* activations */
        float *x, *xn, *qkv, *att, *tmp, *gu, *act, *xo, *logits;
        void *x16;
        void *sscratch;
        /* step inputs on the device */
        int32_t *d_tok, *d_pos, *d_row, *d_outidx, *d_hist, *d_bt;
        struct cuda_sample_params *d_params;
        /* mapped host buffers: two slots each, used by steps in turn */
        uint8_t *h_in, *h_in_dev;
        struct in_layout L;
        int32_t *h_out, *h_out_dev;   /* [2][R] */
        uint32_t par;                 /* slot of the next launch */
        uint32_t n_flight;            /* steps launched and not yet waited for (0..2) */
        struct {                      /* per slot: the step that last used it */
                uint32_t n_rows, ntok, launches;
                bool graph;
        } slot[2];
        uint32_t prev_rows;           /* rows of the last launched step (-1 ids refer to it) */
        bool have_prev;
        int32_t *shadow;              /* [max_seqs][MB] the device block table, as last sent */
        uint8_t *seen;                /* [max_seqs] scratch: sequence already in this batch */
        struct cuda_gemm *gemm;
        int gemv_max;
        bool mma;                     /* products of 2..MMA_MAX_TOKENS tokens: cuda_mma_gemv */
        cudaGraphExec_t gexec[2][MAX_BUCKETS];
        uint32_t bucket[MAX_BUCKETS];
        uint32_t n_graphs;
        uint32_t launches;            /* counted while enqueuing */
        int pdl;                      /* ecu_ctx_opts.pdl */
        cudaEvent_t e0[2], e1[2];
        bool broken;
        struct ecu_ctx_info info;
        uint64_t act_bytes;
};

#define LAUNCH(c, expr)                                                                        \
        do {                                                                                   \
                int r_ = (expr);                                                               \
                if (r_ < 0)                                                                    \
                        return r_;                                                             \
                (c)->launches++;                                                               \
        } while (0)

/* Token counts the matrix products run at: a few buckets, all prepared at start, so a
 * prefill of any length never waits for cuBLASLt's heuristics. The rows past n compute
 * values nobody reads (every output buffer has room for the bucket). */
static int gemm_bucket(int n, int cap)
{
        int b = n <= 32 ? 32 : n <= 64 ? 64 : (n + 127) / 128 * 128;
        return b < cap ? b : cap;
}

/* Products of up to this many tokens go to cuda_mma_gemv (where the GPU has it). On an H200
 * decode steps of 4 to 16 tokens ran 4-7% faster with it than with cuBLASLt (whose kernel
 * for the padded bucket of 32 tokens did the work), the 8B shape at 16 even; from 32 tokens
 * cuBLASLt's products are faster (docs/performance.md). */
#define MMA_MAX_TOKENS 16

static bool mma_takes(const struct ecu_ctx *c, uint32_t wtype, int k, int n)
{
        return c->mma && n <= MMA_MAX_TOKENS && k % CUDA_MMA_GEMV_K_MULTIPLE == 0 &&
               (wtype == CUDA_WTYPE_F16 || wtype == CUDA_WTYPE_BF16);
}

/* y = beta·y + W·x16 on the tensor cores: cuda_mma_gemv for a few tokens, else cuBLASLt.
 * cuBLASLt never goes with programmatic dependent launch; cuda_mma_gemv does when pdl and
 * ECU_PDL_MMA, which is off by default: with it 8-token steps of the 8B shape ran 14% slower
 * on an H200 (docs/performance.md). */
static int product_x16(struct ecu_ctx *c, bool pdl, uint32_t wtype, const void *w, float *y, int rows, int k,
                       int n, float beta, int cap)
{
        if (mma_takes(c, wtype, k, n))
                return cuda_mma_gemv(wtype, w, (const uint16_t *)c->x16, y, rows, k, n, beta, c->st,
                                     pdl && (c->pdl & ECU_PDL_MMA));
        return cuda_gemm(c->gemm, wtype, w, c->x16, y, rows, k, gemm_bucket(n, cap), beta, c->st);
}

/* The same, x16 already written (n > gemv_max) by the kernel before: the conversion
 * (matmul), the norm (matmul_norm), the gated activation (matmul_glu), attention. */
static int matmul_x16(struct ecu_ctx *c, bool pdl, uint32_t wtype, const void *w, float *y, int rows, int k,
                      int n, float beta, int cap)
{
        LAUNCH(c, product_x16(c, pdl, wtype, w, y, rows, k, n, beta, cap));
        return 0;
}

/* pdl: the GEMV goes with programmatic dependent launch (cuBLASLt never does) */
static int matmul(struct ecu_ctx *c, bool pdl, uint32_t wtype, const void *w, const float *x, float *y, int rows,
                  int k, int n, float beta, int cap)
{
        if (n <= c->gemv_max) {
                LAUNCH(c, cuda_gemv_beta(wtype, w, x, y, rows, k, n, beta, c->st, pdl));
                return 0;
        }
        LAUNCH(c, cuda_f32_to_w16(wtype, x, c->x16, (size_t)n * k, c->st));
        return matmul_x16(c, pdl, wtype, w, y, rows, k, n, beta, cap);
}


/* A product whose input is the RMSNorm of x (the attention and FFN norms). The GEMV can
 * take the norm as a prologue (cuda_gemv_fused, bitwise the same), but on an H200 that
 * measured no faster at one token and slower at more (tests/gpu/test_kernels.cu), so the
 * norm runs on its own into xn; for cuBLASLt it writes the 16-bit input x16 directly
 * (bitwise the norm then cuda_f32_to_w16: one kernel fewer). */
static int matmul_norm(struct ecu_ctx *c, bool pdl, uint32_t wtype, const void *w, const float *x,
                       const float *norm_w, float eps, float *y, int rows, int k, int n, int cap)
{
        if (n > c->gemv_max) {
                LAUNCH(c, cuda_rmsnorm_w16(x, norm_w, c->x16, wtype, k, n, eps, c->st, pdl));
                return matmul_x16(c, pdl, wtype, w, y, rows, k, n, 0.0f, cap);
        }
        LAUNCH(c, cuda_rmsnorm(x, norm_w, c->xn, k, n, eps, c->st, pdl));
        return matmul(c, pdl, wtype, w, c->xn, y, rows, k, n, 0.0f, cap);
}

/* A product whose input is the gated activation of gu (the FFN's down projection): the
 * activation into act for the GEMV, or straight into x16 for cuBLASLt (as matmul_norm). */
static int matmul_glu(struct ecu_ctx *c, bool pdl, int act, const float *gu, uint32_t wtype, const void *w,
                      float *y, int rows, int k, int n, float beta, int cap)
{
        if (n > c->gemv_max) {
                LAUNCH(c, cuda_glu_w16(act, gu, c->x16, wtype, k, n, c->st, pdl));
                return matmul_x16(c, pdl, wtype, w, y, rows, k, n, beta, cap);
        }
        LAUNCH(c, cuda_glu(act, gu, c->act, k, n, c->st, pdl));
        return matmul(c, pdl, wtype, w, c->act, y, rows, k, n, beta, cap);
}

/* Runs of at least this many consecutive tokens of one sequence (prefill chunks) get their
 * attention from the tensor-core kernel; the rest of the batch from attention_rest. */
#define TC_MIN_RUN 32

/* aa's tokens [t, t + n) only: the same call on a slice of the batch (every per-token
 * array advanced by t). */
static struct cuda_attn_args attn_slice(const struct cuda_attn_args *aa, int t, int n)
{
        struct cuda_attn_args s = *aa;
        s.q += (size_t)t * aa->ldq;
        if (s.out16)
                s.out16 = (uint16_t *)s.out16 + (size_t)t * aa->ldo;
        else
                s.out += (size_t)t * aa->ldo;
        s.map.pos += t;
        s.map.bt_row += t;
        s.ntok = n;
        return s;
}

/* Tokens that are not part of a prefill run: cuda_attention_dec (tensor cores; on an H200
 * faster than cuda_attention at 1 to 256 tokens and 256 to 4096 positions,
 * docs/performance.md), or cuda_attention in batch-invariant mode (its configuration is
 * fixed whatever the batch), with no_tc_decode and for the head sizes the tensor-core kernel
 * lacks. */
static int attention_rest(struct ecu_ctx *c, const struct cuda_attn_args *s)
{
        if (!c->o.no_tc_decode && !c->o.batch_invariant && cuda_attention_dec_ok(s->dk, s->dv, s->n_head, s->n_head_kv))
                LAUNCH(c, cuda_attention_dec(s, c->st));
        else
                LAUNCH(c, cuda_attention(s, c->st));
        return 0;
}

/* Attention for a step. hrow: the step's block-table rows on the host (NULL while capturing
 * a graph: the capture's inputs are placeholders), from which the runs of TC_MIN_RUN or more
 * tokens of one sequence go to cuda_attention_tc and the tokens between them to
 * attention_rest, one launch per slice; without hrow, in batch-invariant mode (the slices
 * would depend on the batch), with no_tc_attention or for head sizes the tensor-core kernel
 * lacks, all of it to attention_rest. */
static int attention(struct ecu_ctx *c, const struct cuda_attn_args *aa, const int32_t *hrow)
{
        const int n = aa->ntok;
        if (!hrow || n < TC_MIN_RUN || c->o.no_tc_attention || c->o.batch_invariant ||
            !cuda_attention_tc_ok(aa->dk, aa->dv))
                return attention_rest(c, aa);
        int plain = 0; /* first token not yet given to a kernel */
        for (int t = 0; t < n;) {
                int e = t + 1;
                while (e < n && hrow[e] == hrow[t])
                        e++;
                if (e - t >= TC_MIN_RUN && hrow[t] >= 0) {
                        if (plain < t) {
                                const struct cuda_attn_args s = attn_slice(aa, plain, t - plain);
                                const int r = attention_rest(c, &s);
                                if (r < 0)
                                        return r;
                        }
                        const struct cuda_attn_args s = attn_slice(aa, t, e - t);
                        LAUNCH(c, cuda_attention_tc(&s, c->st));
                        plain = e;
                }
                t = e;
        }
        if (plain < n) {
                const struct cuda_attn_args s = attn_slice(aa, plain, n - plain);
                return attention_rest(c, &s);
        }
        return 0;
}

/* Enqueues a whole step for ntok tokens and nrows sampled rows; the inputs are in slot par
 * of h_in, the ids go to slot par of h_out. hrow: the tokens' block-table rows on the host
 * (attention()), NULL while capturing. */
static int enqueue_step(struct ecu_ctx *c, int ntok, int nrows, float *logits_host, uint32_t par,
                        const int32_t *hrow)
{
        const struct engine_model *m = c->m;
        const struct engine_hparams *hp = &m->hp;
        const struct ecu_model *em = c->em;
        const int E = (int)hp->n_embd, F = (int)hp->n_ff, V = (int)hp->n_vocab;
        const int dk = (int)hp->head_dim_k, dv = (int)hp->head_dim_v;
        const int QD = (int)hp->n_head * dk, KD = (int)hp->n_head_kv * dk, VD = (int)hp->n_head_kv * dv;
        const int OD = (int)hp->n_head * dv;
        const bool gemma = hp->arch == ENGINE_ARCH_GEMMA3;
        int r;

        c->launches = 0;
        struct stage_args sa;
        sa.in = c->h_in_dev + par * c->L.total;
        sa.prev = c->h_out_dev + (par ^ 1u) * c->R;
        sa.L = c->L;
        sa.tok = c->d_tok;
        sa.pos = c->d_pos;
        sa.row = c->d_row;
        sa.outidx = c->d_outidx;
        sa.hist = c->d_hist;
        sa.bt = c->d_bt;
        sa.params = c->d_params;
        /* Which kernels go with programmatic dependent launch (ecu_ctx_opts.pdl). From two
         * tokens on (bits 1, 2, 4) it gains up to 7% on an H200; at one token the products
         * went 0 to 7% slower with it, so there only the one-block RMSNorms (bit 8: +1% at
         * the 1B shape, even at 8B), and attention and I/O on request (16, 32: within 0.4%
         * either way); docs/performance.md. */
        const int pdl_bits = ntok > 1 ? c->pdl : 0, pdl1 = ntok == 1 ? c->pdl : 0;
        const bool pdl = pdl_bits & ECU_PDL_LAYER;
        const bool pdl_att = (pdl_bits & ECU_PDL_ATTN) || (pdl1 & ECU_PDL_ATTN1);
        const bool pdl_io = (pdl_bits & ECU_PDL_IO) || (pdl1 & ECU_PDL_IO1);
        /* one token (the only steps that use it): a one-block RMSNorm may still be launched
         * early (it waits for the product before it at its start), its launch hidden behind
         * that product's end */
        const bool pdl_n1 = pdl1 & ECU_PDL_NORM1;
        /* One token: Q/K/V post-processing and the gated activation as epilogues of the
         * products before them (gemv.cuh's cuda_gemv_qkv, cuda_gemv_glu; bitwise the separate
         * kernels): two launches fewer a layer. Not in batch-invariant mode, where every
         * product goes through cuBLASLt (gemv_max 0). */
        const bool fuse1 = ntok == 1 && ntok <= c->gemv_max && !c->o.no_fused_epilogues;
        LAUNCH(c, CUDA_CHECK(cuda_launch(pdl_io, stage_in_kernel, 32, 256, 0, c->st, sa)));
        LAUNCH(c, cuda_embed(em->embd_type, em->tok_embd, V, c->d_tok, c->x, E, ntok, hp->embd_scale, c->st, pdl_io));

        struct cuda_batch_map map;
        map.pos = c->d_pos;
        map.bt_row = c->d_row;
        map.bt = c->d_bt;
        map.max_blocks = (int)c->MB;
        map.block_size = (int)c->o.block_size;
        for (uint32_t il = 0; il < hp->n_layer; il++) {
                const struct engine_layer *L = &m->layers[il];
                const struct ecu_layer *W = &em->layers[il];
                __half *kc = c->kc + il * c->layer_k, *vc = c->vc + il * c->layer_v;

                struct cuda_qkv_args qa;
                memset(&qa, 0, sizeof(qa));
                qa.qkv = c->qkv;
                qa.ld = QD + KD + VD;
                qa.ntok = ntok;
                qa.n_head = (int)hp->n_head;
                qa.n_head_kv = (int)hp->n_head_kv;
                qa.dk = dk;
                qa.dv = dv;
                qa.bq = W->bq;
                qa.bk = W->bk;
                qa.bv = W->bv;
                qa.q_norm = W->q_norm;
                qa.k_norm = W->k_norm;
                qa.norm_eps = hp->norm_eps;
                qa.n_rot = (int)hp->rope_dim;
                qa.neox = hp->rope_type == ENGINE_ROPE_NEOX;
                qa.rope_base = L->rope_base;
                qa.rope_scale = L->rope_scale;
                qa.rope_ff = em->rope_ff;
                qa.q_scale = m->q_prescale;
                qa.k_cache = kc;
                qa.v_cache = vc;
                qa.map = map;
                qa.pdl = pdl_att;
                if (fuse1 && !W->q_norm && !W->k_norm) {
                        LAUNCH(c, cuda_rmsnorm(c->x, W->attn_norm, c->xn, E, ntok, hp->norm_eps, c->st, pdl_n1));
                        LAUNCH(c, cuda_gemv_qkv(W->tqkv, W->wqkv, c->xn, E, &qa, c->st));
                } else {
                        if ((r = matmul_norm(c, pdl, W->tqkv, W->wqkv, c->x, W->attn_norm, hp->norm_eps, c->qkv,
                                             QD + KD + VD, E, ntok, (int)c->T)) < 0)
                                return r;
                        LAUNCH(c, cuda_qkv_post(&qa, c->st));
                }
                struct cuda_attn_args aa;
                memset(&aa, 0, sizeof(aa));
                aa.q = c->qkv;
                aa.ldq = QD + KD + VD;
                aa.out = c->att;
                aa.ldo = OD;
                aa.ntok = ntok;
                aa.n_head = (int)hp->n_head;
                aa.n_head_kv = (int)hp->n_head_kv;
                aa.dk = dk;
                aa.dv = dv;
                aa.window = L->swa ? (int)hp->sliding_window : 0;
                aa.scale = m->kq_scale;
                aa.k_cache = kc;
                aa.v_cache = vc;
                aa.map = map;
                aa.deterministic = c->o.batch_invariant;
                aa.pdl = pdl_att;
                /* through cuBLASLt, the output projection reads attention's output converted:
                 * attention writes it so (bitwise the float output then cuda_f32_to_w16) */
                const bool o16 = ntok > c->gemv_max;
                aa.out16 = o16 ? c->x16 : NULL;
                aa.out16_type = o16 ? (int)W->to : 0;
                if ((r = attention(c, &aa, hrow)) < 0)
                        return r;
                float *oy = gemma ? c->tmp : c->x;
                const float obeta = gemma ? 0.0f : 1.0f;
                if ((r = o16 ? matmul_x16(c, pdl, W->to, W->wo, oy, E, OD, ntok, obeta, (int)c->T)
                             : matmul(c, pdl, W->to, W->wo, c->att, oy, E, OD, ntok, obeta, (int)c->T)) < 0)
                        return r;
                if (gemma)
                        LAUNCH(c, cuda_add_norm(c->x, c->tmp, W->post_attn_norm, E, ntok, hp->norm_eps, c->st, pdl));
                const int act = gemma ? CUDA_ACT_GELU : CUDA_ACT_SILU;
                float *dy = gemma ? c->tmp : c->x;
                const float dbeta = gemma ? 0.0f : 1.0f;
                if (fuse1) { /* gate/up and the activation in one kernel, straight into act */
                        LAUNCH(c, cuda_rmsnorm(c->x, W->ffn_norm, c->xn, E, ntok, hp->norm_eps, c->st, pdl_n1));
                        LAUNCH(c, cuda_gemv_glu(W->tgu, act, W->wgu, c->xn, c->act, F, E, c->st));
                        r = matmul(c, pdl, W->tdown, W->wdown, c->act, dy, E, F, ntok, dbeta, (int)c->T);
                } else if ((r = matmul_norm(c, pdl, W->tgu, W->wgu, c->x, W->ffn_norm, hp->norm_eps, c->gu, 2 * F, E,
                                            ntok, (int)c->T)) == 0) {
                        r = matmul_glu(c, pdl, act, c->gu, W->tdown, W->wdown, dy, E, F, ntok, dbeta, (int)c->T);
                }
                if (r < 0)
                        return r;
                if (gemma)
                        LAUNCH(c, cuda_add_norm(c->x, c->tmp, W->post_ffn_norm, E, ntok, hp->norm_eps, c->st, pdl));
        }
        if (nrows == 0)
                return 0;
        LAUNCH(c, cuda_gather_rows(c->x, c->d_outidx, c->xo, E, nrows, c->st, pdl_io));
        LAUNCH(c, cuda_rmsnorm(c->xo, em->output_norm, c->xo, E, nrows, hp->norm_eps, c->st, pdl_io));
        if ((r = matmul(c, pdl, em->out_type, em->output, c->xo, c->logits, V, E, nrows, 0.0f, (int)c->R)) < 0)
                return r;
        if (m->final_softcap > 0.0f)
                LAUNCH(c, cuda_softcap(c->logits, (size_t)nrows * V, m->final_softcap, c->st, pdl_io));
        if (logits_host)
                LAUNCH(c, CUDA_CHECK(cudaMemcpyAsync(logits_host, c->logits, (size_t)nrows * V * sizeof(float),
                                                     cudaMemcpyDeviceToHost, c->st)));
        /* (after the copy to the host, an ordinary launch: a programmatic edge needs a kernel before it) */
        LAUNCH(c, cuda_sample(c->logits, nrows, V, c->d_params, c->d_hist, c->h_out_dev + par * c->R, c->sscratch,
                              c->st, pdl_io && !logits_host));
        return 0;
}

static size_t align_up(size_t v)
{
        return (v + 255) & ~(size_t)255;
}

static void layout_inputs(struct ecu_ctx *c)
{
        size_t at = align_up(sizeof(struct step_hdr));
        c->L.tok = at;
        at = align_up(at + c->T * 4);
        c->L.pos = at;
        at = align_up(at + c->T * 4);
        c->L.row = at;
        at = align_up(at + c->T * 4);
        c->L.outidx = at;
        at = align_up(at + c->R * 4);
        c->L.params = at;
        at = align_up(at + c->R * sizeof(struct cuda_sample_params));
        c->L.hist = at;
        at = align_up(at + (size_t)c->H * 4);
        c->L.bt = at;
        at = align_up(at + (size_t)c->U * sizeof(struct bt_update));
        c->L.chunk = at;
        at = align_up(at + (size_t)c->o.max_seqs * sizeof(struct src_chunk));
        c->L.total = at;
}

static double time_ms(struct ecu_ctx *c, int reps, int (*fn)(struct ecu_ctx *, void *), void *arg)
{
        float ms = 0.0f;
        if (fn(c, arg) < 0)
                return -1.0;
        cudaEventRecord(c->e0[0], c->st);
        for (int i = 0; i < reps; i++)
                if (fn(c, arg) < 0)
                        return -1.0;
        cudaEventRecord(c->e1[0], c->st);
        if (cudaEventSynchronize(c->e1[0]) != cudaSuccess || cudaEventElapsedTime(&ms, c->e0[0], c->e1[0]) != cudaSuccess)
                return -1.0;
        return ms / reps;
}

struct tune_arg {
        uint32_t wtype;
        const void *w;
        int rows, k, n;
        bool gemm;
};

static int tune_fn(struct ecu_ctx *c, void *p)
{
        const struct tune_arg *a = (const struct tune_arg *)p;
        /* The gate/up input now comes converted from its norm (matmul_norm), but the
         * conversion stays in this timing: without it the two paths measured within noise
         * on small models, so two contexts of one model could choose differently
         * (test-cuda-backend's overlapped-vs-serial check failed on llama2-BF16, H200). */
        if (a->gemm) {
                int r = cuda_f32_to_w16(a->wtype, c->xn, c->x16, (size_t)a->n * a->k, c->st);
                return r < 0 ? r : product_x16(c, false, a->wtype, a->w, c->gu, a->rows, a->k, a->n, 0.0f, (int)c->T);
        }
        return cuda_gemv_beta(a->wtype, a->w, c->xn, c->gu, a->rows, a->k, a->n, 0.0f, c->st);
}

/* The GEMV reads each weight once per call but its float FMAs grow with the batch; the
 * tensor-core products (cuda_mma_gemv, or cuBLASLt) do not. Measure where they cross on this
 * GPU, on the largest matrix of a layer (gate+up). */
static void tune_gemv(struct ecu_ctx *c)
{
        const struct ecu_layer *W = &c->em->layers[0];
        const int E = (int)c->m->hp.n_embd, F = (int)c->m->hp.n_ff;
        c->gemv_max = 1;
        for (int n = 2; n <= CUDA_GEMV_MAX_TOKENS && n <= (int)c->T; n++) {
                struct tune_arg a = {W->tgu, W->wgu, 2 * F, E, n, false};
                double tv = time_ms(c, 5, tune_fn, &a);
                a.gemm = true;
                double tg = time_ms(c, 5, tune_fn, &a);
                if (tv < 0 || tg < 0 || tv > tg)
                        break;
                c->gemv_max = n;
        }
        cudaGetLastError();
}

static int prepare_gemms(struct ecu_ctx *c)
{
        const struct engine_hparams *hp = &c->m->hp;
        const struct ecu_layer *W = &c->em->layers[0];
        const int E = (int)hp->n_embd, F = (int)hp->n_ff, V = (int)hp->n_vocab;
        const int QKV = (int)(hp->n_head * hp->head_dim_k + hp->n_head_kv * (hp->head_dim_k + hp->head_dim_v));
        const int OD = (int)(hp->n_head * hp->head_dim_v);
        const struct {
                uint32_t t;
                const void *w;
                int rows, k, cap;
                float *y; /* where a product of this shape writes in a step */
        } shapes[] = {{W->tqkv, W->wqkv, QKV, E, (int)c->T, c->qkv}, {W->to, W->wo, E, OD, (int)c->T, c->x},
                      {W->tgu, W->wgu, 2 * F, E, (int)c->T, c->gu}, {W->tdown, W->wdown, E, F, (int)c->T, c->x},
                      {c->em->out_type, c->em->output, V, E, (int)c->R, c->logits}};
        for (const auto &sh : shapes)
                for (int n = c->gemv_max + 1, last = 0; n <= sh.cap; n++) {
                        /* cuda_mma_gemv's kernel follows n rounded up to 8, 16 */
                        const bool mma = mma_takes(c, sh.t, sh.k, n);
                        const int key = mma ? -(n <= 8 ? 8 : 16) : gemm_bucket(n, sh.cap);
                        if (key == last)
                                continue;
                        last = key;
                        int r = mma ? 0 : cuda_gemm_prepare(c->gemm, sh.t, sh.rows, sh.k, key);
                        /* and run it once: CUDA loads a kernel's module at its first launch
                         * (lazy loading), which otherwise lands in the first request of each
                         * new prompt length (5-11 ms of its time to first token on an H200,
                         * docs/performance.md); the buffers hold nothing yet */
                        if (r == 0)
                                r = product_x16(c, false, sh.t, sh.w, sh.y, sh.rows, sh.k, mma ? n : key, 0.0f, sh.cap);
                        if (r < 0)
                                return r;
                }
        return CUDA_CHECK(cudaStreamSynchronize(c->st));
}

/* Inputs of a harmless padded batch of B tokens in slot par: every token on the trash row,
 * and a row to sample for each of them that has one (the slot holds R rows). */
static void pad_inputs(struct ecu_ctx *c, uint32_t par, uint32_t from, uint32_t B)
{
        uint8_t *in = c->h_in + par * c->L.total;
        int32_t *tok = (int32_t *)(in + c->L.tok), *pos = (int32_t *)(in + c->L.pos);
        int32_t *row = (int32_t *)(in + c->L.row), *oi = (int32_t *)(in + c->L.outidx);
        struct cuda_sample_params *pp = (struct cuda_sample_params *)(in + c->L.params);
        for (uint32_t t = from; t < B; t++) {
                tok[t] = 0;
                pos[t] = 0;
                row[t] = (int32_t)c->pad_row;
        }
        for (uint32_t t = from; t < B && t < c->R; t++) {
                oi[t] = (int32_t)t;
                memset(&pp[t], 0, sizeof(pp[t]));
                pp[t].top_p = 1.0f;
                pp[t].repeat_penalty = 1.0f;
        }
}

/* One step shaped like the largest prompt chunk, every token on the trash row (position 0),
 * one row sampled, its slice of the batch given to attention as a prompt's would be: every
 * kernel a prompt uses runs once before READY=1, so CUDA's lazy module loading stays out of
 * the first requests (prepare_gemms does the same for each product class). */
static int warm_prefill(struct ecu_ctx *c)
{
        const uint32_t n = c->T;
        struct step_hdr *h = (struct step_hdr *)c->h_in;
        memset(h, 0, sizeof(*h));
        h->ntok = (int32_t)n;
        h->nrows = 1;
        pad_inputs(c, 0, 0, n);
        int r = enqueue_step(c, (int)n, 1, NULL, 0, (const int32_t *)(c->h_in + c->L.row));
        if (r == 0)
                r = CUDA_CHECK(cudaStreamSynchronize(c->st));
        return r;
}

static int capture_graphs(struct ecu_ctx *c, struct sl_error *err)
{
        uint64_t t0 = sl_now_ns();
        for (uint32_t par = 0; par < 2; par++)
                for (uint32_t i = 0; i < c->n_graphs; i++) {
                        const uint32_t B = c->bucket[i];
                        struct step_hdr *h = (struct step_hdr *)(c->h_in + par * c->L.total);
                        memset(h, 0, sizeof(*h));
                        h->ntok = (int32_t)B;
                        h->nrows = (int32_t)B;
                        pad_inputs(c, par, 0, B);
                        /* warm run: cuBLASLt picks its algorithms outside the capture */
                        int r = enqueue_step(c, (int)B, (int)B, NULL, par, NULL);
                        if (r == 0)
                                r = CUDA_CHECK(cudaStreamSynchronize(c->st));
                        if (r < 0)
                                return cuda_fail(err, r, "decode warm-up");
                        cudaGraph_t g;
                        r = CUDA_CHECK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
                        if (r < 0)
                                return cuda_fail(err, r, "graph capture");
                        int re = enqueue_step(c, (int)B, (int)B, NULL, par, NULL);
                        r = CUDA_CHECK(cudaStreamEndCapture(c->st, &g));
                        if (re < 0 || r < 0)
                                return cuda_fail(err, re < 0 ? re : r, "graph capture");
                        r = CUDA_CHECK(cudaGraphInstantiate(&c->gexec[par][i], g, 0));
                        cudaGraphDestroy(g);
                        if (r < 0)
                                return cuda_fail(err, r, "graph instantiation");
                        r = CUDA_CHECK(cudaGraphLaunch(c->gexec[par][i], c->st));
                        if (r == 0)
                                r = CUDA_CHECK(cudaStreamSynchronize(c->st));
                        if (r < 0)
                                return cuda_fail(err, r, "graph replay");
                }
        c->info.capture_ns = sl_now_ns() - t0;
        return 0;
}

extern "C" int ecu_ctx_create(const struct engine_model *m, const struct ecu_ctx_opts *o, struct ecu_ctx **out,
                              struct sl_error *err)
{
        const struct engine_hparams *hp = &m->hp;
        struct ecu_ctx *c;
        int r;

        *out = NULL;
        if (!m->cuda)
                return sl_errorf(err, -EINVAL, "the model is not on a GPU");
        if (!o->max_seqs || !o->max_tokens || !o->block_size || !o->max_blocks_per_seq)
                return sl_errorf(err, -EINVAL, "cuda context: limits must be > 0");
        if (o->pdl < 0 ||
            o->pdl > (ECU_PDL_LAYER | ECU_PDL_ATTN | ECU_PDL_IO | ECU_PDL_NORM1 | ECU_PDL_ATTN1 | ECU_PDL_IO1 | ECU_PDL_MMA))
                return sl_errorf(err, -EINVAL, "cuda context: pdl %d is not a mask of ECU_PDL_* bits", o->pdl);
        c = (struct ecu_ctx *)calloc(1, sizeof(*c));
        if (!c)
                return sl_errorf(err, -ENOMEM, "out of memory");
        c->m = m;
        c->em = m->cuda;
        c->o = *o;
        c->pdl = o->pdl;
        if ((r = CUDA_CHECK(cudaSetDevice(c->em->device))) < 0 ||
            (r = CUDA_CHECK(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking))) < 0 ||
            (r = CUDA_CHECK(cudaEventCreate(&c->e0[0]))) < 0 || (r = CUDA_CHECK(cudaEventCreate(&c->e1[0]))) < 0 ||
            (r = CUDA_CHECK(cudaEventCreate(&c->e0[1]))) < 0 || (r = CUDA_CHECK(cudaEventCreate(&c->e1[1]))) < 0) {
                cuda_fail(err, r, "creating the CUDA context");
                goto fail;
        }

        /* decode buckets: powers of two up to the first that holds max_seqs */
        if (!o->no_graphs)
                for (uint32_t b = 1; c->n_graphs < MAX_BUCKETS; b *= 2) {
                        c->bucket[c->n_graphs++] = b;
                        if (b >= o->max_seqs)
                                break;
                }
        c->T = SL_MAX(o->max_tokens, c->n_graphs ? c->bucket[c->n_graphs - 1] : 1u);
        c->R = SL_MAX(SL_MAX(o->max_seqs, o->max_rows), c->n_graphs ? c->bucket[c->n_graphs - 1] : 1u);
        c->R = SL_MIN(c->R, c->T);
        c->MB = o->max_blocks_per_seq;
        c->pad_row = o->max_seqs;
        c->H = o->max_hist ? o->max_hist : c->R * 64 + c->MB * o->block_size;
        c->U = (o->max_seqs + 1) * c->MB;
        {
                const size_t E = hp->n_embd, F = hp->n_ff, V = hp->n_vocab;
                const size_t QKV = (size_t)hp->n_head * hp->head_dim_k + (size_t)hp->n_head_kv * (hp->head_dim_k + hp->head_dim_v);
                const size_t OD = (size_t)hp->n_head * hp->head_dim_v;
                const size_t T = c->T, R = c->R;
                float **fb[] = {&c->x, &c->xn, &c->tmp, &c->qkv, &c->att, &c->gu, &c->act, &c->xo, &c->logits};
                const size_t fn[] = {T * E, T * E, T * E, T * QKV, T * OD, T * 2 * F, T * F, R * E, R * V};
                for (size_t i = 0; i < SL_ARRAY_SIZE(fb); i++) {
                        if ((r = CUDA_CHECK(cudaMalloc((void **)fb[i], align_up(fn[i] * sizeof(float))))) < 0)
                                goto oom;
                        c->act_bytes += align_up(fn[i] * sizeof(float));
                }
                const size_t x16 = T * SL_MAX(SL_MAX(E, OD), F) * 2;
                const size_t ss = cuda_sample_scratch_bytes((int)R, (int)V);
                if ((r = CUDA_CHECK(cudaMalloc(&c->x16, align_up(x16)))) < 0 ||
                    (r = CUDA_CHECK(cudaMalloc(&c->sscratch, align_up(ss)))) < 0)
                        goto oom;
                /* rows past a step's tokens are computed (GEMM buckets) but never read: keep
                 * them finite from the start */
                for (size_t i = 0; i < SL_ARRAY_SIZE(fb); i++)
                        cudaMemsetAsync(*fb[i], 0, fn[i] * sizeof(float), c->st);
                cudaMemsetAsync(c->x16, 0, x16, c->st);
                c->act_bytes += align_up(x16) + align_up(ss);
                int32_t **ib[] = {&c->d_tok, &c->d_pos, &c->d_row, &c->d_outidx, &c->d_hist, &c->d_bt};
                const size_t in[] = {T, T, T, R, c->H, (size_t)(o->max_seqs + 1) * c->MB};
                for (size_t i = 0; i < SL_ARRAY_SIZE(ib); i++)
                        if ((r = CUDA_CHECK(cudaMalloc((void **)ib[i], align_up(in[i] * 4)))) < 0)
                                goto oom;
                if ((r = CUDA_CHECK(cudaMalloc((void **)&c->d_params, align_up(R * sizeof(struct cuda_sample_params))))) < 0)
                        goto oom;
        }
        layout_inputs(c);
        if ((r = CUDA_CHECK(cudaHostAlloc((void **)&c->h_in, 2 * c->L.total, cudaHostAllocMapped))) < 0 ||
            (r = CUDA_CHECK(cudaHostGetDevicePointer((void **)&c->h_in_dev, c->h_in, 0))) < 0 ||
            (r = CUDA_CHECK(cudaHostAlloc((void **)&c->h_out, 2 * c->R * 4, cudaHostAllocMapped))) < 0 ||
            (r = CUDA_CHECK(cudaHostGetDevicePointer((void **)&c->h_out_dev, c->h_out, 0))) < 0) {
                cuda_fail(err, r, "allocating mapped pinned step buffers");
                goto fail;
        }
        memset(c->h_in, 0, 2 * c->L.total);
        memset(c->h_out, 0, 2 * c->R * 4);
        c->shadow = (int32_t *)malloc((size_t)o->max_seqs * c->MB * sizeof(int32_t));
        c->seen = (uint8_t *)calloc(o->max_seqs + 1, 1);
        if (!c->shadow || !c->seen) {
                r = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }
        if ((r = cuda_gemm_create(0, &c->gemm)) < 0 ||
            (o->batch_invariant && (r = cuda_gemm_set_invariant(c->gemm, 256)) < 0)) {
                cuda_fail(err, r, "creating the cuBLASLt handle");
                goto fail;
        }

        /* the KV pool: what is left, times the fraction, unless a size was given */
        {
                const size_t KD = (size_t)hp->n_head_kv * hp->head_dim_k, VD = (size_t)hp->n_head_kv * hp->head_dim_v;
                const size_t per_block = (size_t)hp->n_layer * o->block_size * (KD + VD) * sizeof(__half);
                size_t fr = 0, tot = 0;
                cudaMemGetInfo(&fr, &tot);
                uint64_t nb = o->n_blocks;
                const double frac = o->kv_fraction > 0 ? o->kv_fraction : 0.9;
                const size_t reserve = (size_t)256 << 20; /* cuBLASLt, graphs, the driver */
                if (!nb)
                        nb = fr > reserve ? (uint64_t)((double)(fr - reserve) * frac) / per_block : 0;
                nb = SL_MIN(nb, (uint64_t)1 << 24);
                if (nb < 1) {
                        r = sl_errorf(err, -ENOMEM,
                                      "out of GPU memory for the KV cache: one block of %u tokens needs %.1f MiB, "
                                      "%.2f GiB free after weights (%.2f GiB) and activations (%.2f GiB)",
                                      o->block_size, per_block / 1048576.0, fr / 1073741824.0,
                                      c->em->info.weight_bytes / 1073741824.0, c->act_bytes / 1073741824.0);
                        goto fail;
                }
                c->n_blocks = (uint32_t)nb;
                c->layer_k = (size_t)(nb + 1) * o->block_size * KD;
                c->layer_v = (size_t)(nb + 1) * o->block_size * VD;
                const size_t kb = c->layer_k * hp->n_layer * sizeof(__half), vb = c->layer_v * hp->n_layer * sizeof(__half);
                if (cudaMalloc((void **)&c->kc, kb) != cudaSuccess || cudaMalloc((void **)&c->vc, vb) != cudaSuccess) {
                        cudaGetLastError();
                        r = sl_errorf(err, -ENOMEM,
                                      "out of GPU memory for the KV cache: %u blocks need %.2f GiB, %.2f GiB free",
                                      c->n_blocks, (kb + vb) / 1073741824.0, fr / 1073741824.0);
                        goto fail;
                }
                if ((r = CUDA_CHECK(cudaMemsetAsync(c->kc, 0, kb, c->st))) < 0 ||
                    (r = CUDA_CHECK(cudaMemsetAsync(c->vc, 0, vb, c->st))) < 0) {
                        cuda_fail(err, r, "clearing the KV cache");
                        goto fail;
                }
                c->info.kv_bytes = kb + vb;
        }
        /* every block-table entry starts on the trash block (n_blocks) */
        {
                const size_t nbt = (size_t)(o->max_seqs + 1) * c->MB;
                int32_t *init = (int32_t *)malloc(nbt * 4);
                if (!init) {
                        r = sl_errorf(err, -ENOMEM, "out of memory");
                        goto fail;
                }
                for (size_t i = 0; i < nbt; i++)
                        init[i] = (int32_t)c->n_blocks;
                for (size_t i = 0; i < (size_t)o->max_seqs * c->MB; i++)
                        c->shadow[i] = (int32_t)c->n_blocks;
                r = CUDA_CHECK(cudaMemcpy(c->d_bt, init, nbt * 4, cudaMemcpyHostToDevice));
                free(init);
                if (r < 0) {
                        cuda_fail(err, r, "initialising the block tables");
                        goto fail;
                }
        }
        /* wgmma products for a few tokens where the GPU has them (compute capability 9.0),
         * except in batch-invariant mode (one cuBLASLt algorithm for every batch) */
        c->mma = !o->no_mma_products && !o->batch_invariant && cuda_mma_gemv_ok();
        if (o->batch_invariant)
                c->gemv_max = 0; /* one product kernel for every batch size */
        else if (o->gemv_max_tokens)
                c->gemv_max = (int)SL_MIN(SL_MIN(o->gemv_max_tokens, (uint32_t)CUDA_GEMV_MAX_TOKENS), c->T);
        else
                tune_gemv(c);
        if ((r = prepare_gemms(c)) < 0) {
                cuda_fail(err, r, "choosing cuBLASLt algorithms");
                goto fail;
        }
        if ((r = warm_prefill(c)) < 0) {
                cuda_fail(err, r, "a first prefill-shaped step");
                goto fail;
        }
        if ((r = capture_graphs(c, err)) < 0)
                goto fail;
        c->info.n_blocks = c->n_blocks;
        c->info.act_bytes = c->act_bytes;
        c->info.n_graphs = c->n_graphs;
        memcpy(c->info.buckets, c->bucket, sizeof(c->bucket));
        c->info.gemv_max_tokens = (uint32_t)c->gemv_max;
        *out = c;
        return 0;
oom: {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        r = sl_errorf(err, -ENOMEM,
                      "out of GPU memory for activations of %u tokens (%.2f GiB so far): %.2f GiB free after the weights (%.2f GiB)",
                      c->T, c->act_bytes / 1073741824.0, fr / 1073741824.0, c->em->info.weight_bytes / 1073741824.0);
}
fail:
        ecu_ctx_free(c);
        return r;
}

extern "C" void ecu_ctx_free(struct ecu_ctx *c)
{
        if (!c)
                return;
        if (c->st)
                cudaStreamSynchronize(c->st);
        for (uint32_t p = 0; p < 2; p++)
                for (uint32_t i = 0; i < c->n_graphs; i++)
                        if (c->gexec[p][i])
                                cudaGraphExecDestroy(c->gexec[p][i]);
        cuda_gemm_free(c->gemm);
        void *dp[] = {c->x, c->xn, c->tmp, c->qkv, c->att, c->gu, c->act, c->xo, c->logits, c->x16, c->sscratch,
                      c->d_tok, c->d_pos, c->d_row, c->d_outidx, c->d_hist, c->d_bt, c->d_params, c->kc, c->vc};
        for (void *p : dp)
                cudaFree(p);
        cudaFreeHost(c->h_in);
        cudaFreeHost(c->h_out);
        for (uint32_t p = 0; p < 2; p++) {
                if (c->e0[p])
                        cudaEventDestroy(c->e0[p]);
                if (c->e1[p])
                        cudaEventDestroy(c->e1[p]);
        }
        if (c->st)
                cudaStreamDestroy(c->st);
        free(c->shadow);
        free(c->seen);
        free(c);
}

extern "C" void ecu_ctx_get_info(const struct ecu_ctx *c, struct ecu_ctx_info *out)
{
        *out = c->info;
}

extern "C" bool ecu_ctx_broken(const struct ecu_ctx *c)
{
        return c->broken;
}

static void to_params(struct cuda_sample_params *p, const struct ecu_sample_row *row, uint32_t hist_off)
{
        const struct engine_sampling *s = row->s;
        memset(p, 0, sizeof(*p));
        p->temperature = s->temperature;
        p->top_k = s->top_k;
        p->top_p = s->top_p;
        p->min_p = s->min_p;
        p->repeat_penalty = s->repeat_penalty;
        p->presence_penalty = s->presence_penalty;
        p->frequency_penalty = s->frequency_penalty;
        p->hist_off = hist_off;
        p->hist_len = row->hist_len;
        p->seed = s->seed;
        p->step = row->step;
}

/* A CUDA failure while enqueuing or waiting: is the context gone? */
static int step_failed(struct ecu_ctx *c, int r, struct sl_error *err)
{
        /* the shadow block table may be ahead of the device: resend everything next time */
        for (size_t i = 0; i < (size_t)c->o.max_seqs * c->MB; i++)
                c->shadow[i] = -2;
        (void)cudaGetLastError(); /* clear a launch error that is not sticky */
        const cudaError_t q = cudaStreamQuery(c->st);
        if (q != cudaSuccess && q != cudaErrorNotReady)
                c->broken = true; /* a sticky error: the context is gone */
        if (r == -EINVAL && !cuda_err_last()->call)
                return sl_errorf(err, r, "cuda step: a kernel refused its arguments");
        c->broken = true;
        return cuda_fail(err, r, "GPU step");
}

extern "C" int ecu_step_launch(struct ecu_ctx *c, const struct engine_kv *kv, const struct ecu_step_args *a,
                               struct sl_error *err)
{
        const struct engine_batch *b = a->b;
        const uint32_t n = b->n_tokens, n_rows = a->n_rows;
        const struct ecu_sample_row *rows = a->rows;
        int r;

        if (c->broken)
                return sl_errorf(err, -EIO, "the GPU context failed earlier; the service must restart");
        if (c->n_flight >= 2)
                return sl_errorf(err, -EBUSY, "cuda step: two steps already in flight");
        if (n == 0)
                return sl_errorf(err, -EINVAL, "cuda step: empty batch");
        if (n > c->T || n_rows > c->R || n_rows > n || a->n_chunks > c->o.max_seqs)
                return sl_errorf(err, -EINVAL, "cuda step: %u tokens / %u rows / %u chunks exceed %u / %u / %u", n,
                                 n_rows, a->n_chunks, c->T, c->R, c->o.max_seqs);
        if (kv->block_size != c->o.block_size || kv->max_blocks_per_seq > c->MB || kv->max_seqs != c->o.max_seqs ||
            kv->n_blocks > c->n_blocks)
                return sl_errorf(err, -EINVAL, "cuda step: KV tables do not match the GPU pool");
        if (a->logits && c->n_flight)
                return sl_errorf(err, -EBUSY, "cuda step: logits are copied back only with nothing in flight");

        /* decode-like (one token per sequence, each sampled): a captured graph can run it */
        bool decode = n_rows == n && !a->logits;
        for (uint32_t t = 0; t < n && decode; t++) {
                const int s = b->seq[t];
                if (!b->logits || !b->logits[t] || c->seen[s])
                        decode = false;
                c->seen[s] = 1;
        }
        for (uint32_t t = 0; t < n; t++)
                c->seen[b->seq[t]] = 0;
        int gi = -1;
        if (decode)
                for (uint32_t i = 0; i < c->n_graphs; i++)
                        if (c->bucket[i] >= n) {
                                gi = (int)i;
                                break;
                        }
        const uint32_t ntok = gi >= 0 ? c->bucket[gi] : n;
        const uint32_t nrows = gi >= 0 ? ntok : n_rows;
        const uint32_t par = c->par;

        /* inputs, in this step's slot (the step that used it last has been waited for) */
        uint8_t *in = c->h_in + par * c->L.total;
        struct step_hdr *h = (struct step_hdr *)in;
        int32_t *tok = (int32_t *)(in + c->L.tok), *pos = (int32_t *)(in + c->L.pos);
        int32_t *row = (int32_t *)(in + c->L.row), *oi = (int32_t *)(in + c->L.outidx);
        int32_t *hist = (int32_t *)(in + c->L.hist);
        struct cuda_sample_params *pp = (struct cuda_sample_params *)(in + c->L.params);
        struct bt_update *up = (struct bt_update *)(in + c->L.bt);
        struct src_chunk *chk = (struct src_chunk *)(in + c->L.chunk);
        uint32_t nr = 0, nh = 0, nu = 0, k = 0;
        for (uint32_t i = 0; i < a->n_chunks; i++) {
                const struct ecu_src_chunk *sc = &a->chunks[i];
                if (!sc->n || (uint64_t)sc->at + sc->n > n || (i && sc->at < a->chunks[i - 1].at + a->chunks[i - 1].n))
                        return sl_errorf(err, -EINVAL, "cuda step: prompt chunk %u [%u, +%u) out of order or range", i,
                                         sc->at, sc->n);
                chk[i].src = sc->src;
                chk[i].at = (int32_t)sc->at;
                chk[i].n = (int32_t)sc->n;
        }
        for (uint32_t t = 0; t < n; t++) {
                if (k < a->n_chunks && t == a->chunks[k].at + a->chunks[k].n)
                        k++;
                if (k < a->n_chunks && t >= a->chunks[k].at) {
                        /* read by the GPU where it lies: only its last token may be sampled */
                        if (b->logits && b->logits[t] && t + 1 != a->chunks[k].at + a->chunks[k].n)
                                return sl_errorf(err, -EINVAL, "cuda step: a sampled token inside a chunk");
                } else if (a->prev_row && a->prev_row[t] >= 0) {
                        if (!c->have_prev || (uint32_t)a->prev_row[t] >= c->prev_rows)
                                return sl_errorf(err, -EINVAL, "cuda step: token %u takes row %d of a previous step of %u rows",
                                                 t, a->prev_row[t], c->have_prev ? c->prev_rows : 0);
                        tok[t] = -(a->prev_row[t] + 1);
                } else {
                        tok[t] = b->token[t];
                }
                pos[t] = b->pos[t];
                row[t] = b->seq[t];
        }
        for (uint32_t t = 0; t < n; t++) {
                if (!b->logits || !b->logits[t])
                        continue;
                if (nr >= n_rows)
                        return sl_errorf(err, -EINVAL, "cuda step: more flagged tokens than rows");
                oi[nr] = (int32_t)t;
                const struct ecu_sample_row *sr = &rows[nr];
                const uint32_t extra = sr->hist_prev;
                if (nh + sr->hist_len + extra > c->H)
                        return sl_errorf(err, -E2BIG, "cuda step: penalty windows of %u ids exceed %u",
                                         nh + sr->hist_len + extra, c->H);
                if (extra && (!c->have_prev || sr->prev_row >= c->prev_rows))
                        return sl_errorf(err, -EINVAL, "cuda step: row %u's window takes row %u of a previous step", nr,
                                         sr->prev_row);
                to_params(&pp[nr], sr, nh);
                if (sr->hist_len)
                        memcpy(hist + nh, sr->hist, sr->hist_len * sizeof(int32_t));
                if (extra)
                        hist[nh + sr->hist_len] = -(int32_t)(sr->prev_row + 1);
                pp[nr].hist_len = sr->hist_len + extra;
                nh += sr->hist_len + extra;
                nr++;
        }
        if (nr != n_rows)
                return sl_errorf(err, -EINVAL, "cuda step: %u flagged tokens, %u rows", nr, n_rows);
        pad_inputs(c, par, n, ntok); /* graph padding: the trash row */
        /* block-table entries that changed since they were last sent */
        for (uint32_t t = 0; t < n; t++) {
                const int s = b->seq[t];
                if (c->seen[s])
                        continue;
                c->seen[s] = 1;
                const uint32_t nb = (kv->seq_next[s] + kv->block_size - 1) / kv->block_size;
                const int32_t *ht = kv->table + (size_t)s * kv->max_blocks_per_seq;
                int32_t *sh = c->shadow + (size_t)s * c->MB;
                for (uint32_t j = 0; j < nb && j < kv->max_blocks_per_seq; j++)
                        if (sh[j] != ht[j]) {
                                sh[j] = ht[j];
                                up[nu].index = (int32_t)((size_t)s * c->MB + j);
                                up[nu].block = ht[j];
                                nu++;
                        }
        }
        for (uint32_t t = 0; t < n; t++)
                c->seen[b->seq[t]] = 0;
        h->ntok = (int32_t)ntok;
        h->nrows = (int32_t)nrows;
        h->nhist = (int32_t)nh;
        h->nbt = (int32_t)nu;
        h->nchunk = (int32_t)a->n_chunks;

        c->launches = 0;
        if ((r = CUDA_CHECK(cudaEventRecord(c->e0[par], c->st))) < 0)
                return step_failed(c, r, err);
        if (gi >= 0) {
                if ((r = CUDA_CHECK(cudaGraphLaunch(c->gexec[par][gi], c->st))) < 0)
                        return step_failed(c, r, err);
                c->launches = 1;
        } else if ((r = enqueue_step(c, (int)ntok, (int)nrows, a->logits, par, row)) < 0) {
                return step_failed(c, r, err);
        }
        if ((r = CUDA_CHECK(cudaEventRecord(c->e1[par], c->st))) < 0)
                return step_failed(c, r, err);
        c->slot[par].n_rows = n_rows;
        c->slot[par].ntok = ntok;
        c->slot[par].launches = c->launches;
        c->slot[par].graph = gi >= 0;
        c->prev_rows = n_rows;
        c->have_prev = true;
        c->par = par ^ 1u;
        c->n_flight++;
        return 0;
}

extern "C" int ecu_step_wait(struct ecu_ctx *c, int32_t *out_ids, struct ecu_step_stats *st, struct sl_error *err)
{
        int r;
        if (st)
                memset(st, 0, sizeof(*st));
        if (!c->n_flight)
                return sl_errorf(err, -EINVAL, "cuda step: nothing in flight");
        const uint32_t par = (c->par + c->n_flight) & 1u; /* the oldest */
        c->n_flight--;
        if ((r = CUDA_CHECK(cudaEventSynchronize(c->e1[par]))) < 0)
                return step_failed(c, r, err);
        const uint32_t n_rows = c->slot[par].n_rows;
        memcpy(out_ids, c->h_out + par * c->R, n_rows * sizeof(int32_t));
        if (st) {
                float ms = 0.0f;
                cudaEventElapsedTime(&ms, c->e0[par], c->e1[par]);
                st->graph = c->slot[par].graph;
                st->bucket = c->slot[par].ntok;
                st->launches = c->slot[par].launches;
                st->gpu_ns = (uint64_t)(ms * 1e6);
        }
        return (int)n_rows;
}

extern "C" int ecu_step(struct ecu_ctx *c, const struct engine_kv *kv, const struct engine_batch *b,
                        const struct ecu_sample_row *rows, uint32_t n_rows, int32_t *out_ids, float *logits,
                        struct ecu_step_stats *st, struct sl_error *err)
{
        if (st)
                memset(st, 0, sizeof(*st));
        if (c->broken)
                return sl_errorf(err, -EIO, "the GPU context failed earlier; the service must restart");
        if (b->n_tokens == 0)
                return 0;
        struct ecu_step_args a;
        memset(&a, 0, sizeof(a));
        a.b = b;
        a.rows = rows;
        a.n_rows = n_rows;
        a.logits = logits;
        int r = ecu_step_launch(c, kv, &a, err);
        return r < 0 ? r : ecu_step_wait(c, out_ids, st, err);
}

/* ---- mapped host memory ---- */

extern "C" void *ecu_host_alloc(size_t n)
{
        void *p = NULL, *d = NULL;
        if (cudaHostAlloc(&p, n ? n : 1, cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
                cudaGetLastError();
                return NULL;
        }
        if (cudaHostGetDevicePointer(&d, p, 0) != cudaSuccess || d != p) {
                cudaGetLastError();
                cudaFreeHost(p);
                return NULL;
        }
        return p;
}

extern "C" void ecu_host_free(void *p)
{
        if (p)
                cudaFreeHost(p);
}

extern "C" int ecu_host_register(struct ecu_model *em, void *p, size_t n, void **dev_ptr, struct sl_error *err)
{
        if (CUDA_CHECK(cudaSetDevice(em->device)) < 0 ||
            CUDA_CHECK(cudaHostRegister(p, n, cudaHostRegisterMapped | cudaHostRegisterPortable)) < 0)
                return cuda_fail(err, -EIO, "registering host memory for the GPU");
        if (CUDA_CHECK(cudaHostGetDevicePointer(dev_ptr, p, 0)) < 0) {
                cudaHostUnregister(p);
                return cuda_fail(err, -EIO, "mapping registered host memory");
        }
        return 0;
}

extern "C" void ecu_host_unregister(struct ecu_model *em, void *p)
{
        (void)em;
        if (cudaHostUnregister(p) != cudaSuccess)
                cudaGetLastError();
}

extern "C" bool ecu_host_mapped(const void *p)
{
        cudaPointerAttributes at;
        if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
                cudaGetLastError();
                return false;
        }
        return at.type == cudaMemoryTypeHost && at.devicePointer == p;
}

extern "C" int ecu_measure_bandwidth(double *read_gbs, struct sl_error *err)
{
        size_t fr = 0, tot = 0;
        int r = CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
        if (r < 0)
                return cuda_fail(err, r, "bandwidth");
        struct cuda_bandwidth bw;
        const size_t bytes = SL_MIN((size_t)2 << 30, fr / 4);
        if ((r = cuda_bandwidth_measure(bytes, 31, &bw)) < 0)
                return cuda_fail(err, r, "bandwidth");
        *read_gbs = bw.read_gbs;
        return 0;
}
