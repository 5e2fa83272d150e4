/* layers.cuh — random decoder-layer weights for the GPU benchmarks that time a layer's
 * products (test_pdl, test_chain): the Q/K/V, output, gate/up and down matrices of one
 * shape and the two RMSNorm weights (around 1, as trained norms are). Include after
 * harness.cuh. */
#pragma once

struct layer_shape {
        const char *name;
        int E, QKV, F; /* embedding, Q+K+V rows, feed-forward width */
};

struct layer_w {
        void *qkv, *o, *gu, *down;
        float *n1, *n2;
};

/* bytes of a layer's four matrices */
static size_t layer_bytes(const layer_shape &s)
{
        return 2 * ((size_t)s.QKV * s.E + (size_t)s.E * s.E + 2 * (size_t)s.F * s.E + (size_t)s.E * s.F);
}

static layer_w layer_alloc(const layer_shape &s, uint32_t wt)
{
        layer_w L;
        L.qkv = dev_alloc(2 * (size_t)s.QKV * s.E);
        L.o = dev_alloc(2 * (size_t)s.E * s.E);
        L.gu = dev_alloc(2 * 2 * (size_t)s.F * s.E);
        L.down = dev_alloc(2 * (size_t)s.E * s.F);
        rand_w16(L.qkv, (size_t)s.QKV * s.E, wt);
        rand_w16(L.o, (size_t)s.E * s.E, wt);
        rand_w16(L.gu, 2 * (size_t)s.F * s.E, wt);
        rand_w16(L.down, (size_t)s.E * s.F, wt);
        L.n1 = dev_alloc_f32(s.E);
        L.n2 = dev_alloc_f32(s.E);
        rand_f32(L.n1, s.E, 0.5f, 1.0f);
        rand_f32(L.n2, s.E, 0.5f, 1.0f);
        return L;
}

static void layer_free(layer_w &L)
{
        for (void *p : {L.qkv, L.o, L.gu, L.down, (void *)L.n1, (void *)L.n2})
                CUDA_CHECK_ABORT(cudaFree(p));
}
