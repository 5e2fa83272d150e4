/* sl.h — the few helpers every sluice component shares: error messages that travel
 * with negative errno returns, overflow-checked arithmetic, half/bfloat conversions,
 * a monotonic clock, and the logger that programs (never libraries) use. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A reason to go with a negative errno. Library code fills it and returns the code;
 * the program at the edge prints it. A NULL struct sl_error * is always allowed. */
struct sl_error {
        char msg[256];
};

/* Formats into e (if any) and returns code, so callers can `return sl_errorf(e, -EINVAL, ...)`. */
int sl_errorf(struct sl_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to the message already in e. Returns code. */
int sl_error_prefix(struct sl_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define SL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define SL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SL_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SL_ALIGN_UP(x, a) (((x) + ((a) - 1)) / (a) * (a))
#define SL_CACHELINE 64

static inline bool sl_add_u64(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_add_overflow(a, b, r); }
static inline bool sl_mul_u64(uint64_t a, uint64_t b, uint64_t *r) { return __builtin_mul_overflow(a, b, r); }

/* ---- IEEE half and bfloat16 (bit-exact with ggml's conversions) ---- */
static inline float sl_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t sl_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float sl_fp16_to_fp32(uint16_t h)
{
        const uint32_t w = (uint32_t)h << 16;
        const uint32_t sign = w & 0x80000000u;
        const uint32_t two_w = w + w;
        const uint32_t exp_offset = 0xE0u << 23;
        const float exp_scale = 0x1.0p-112f;
        const float normalized = sl_bits_f32((two_w >> 4) + exp_offset) * exp_scale;
        const uint32_t magic_mask = 126u << 23;
        const float magic_bias = 0.5f;
        const float denormalized = sl_bits_f32((two_w >> 17) | magic_mask) - magic_bias;
        const uint32_t denormalized_cutoff = 1u << 27;
        const uint32_t result = sign | (two_w < denormalized_cutoff ? sl_f32_bits(denormalized)
                                                                    : sl_f32_bits(normalized));
        return sl_bits_f32(result);
}

static inline uint16_t sl_fp32_to_fp16(float f)
{
        const float scale_to_inf = 0x1.0p+112f;
        const float scale_to_zero = 0x1.0p-110f;
        float base = (__builtin_fabsf(f) * scale_to_inf) * scale_to_zero;
        const uint32_t w = sl_f32_bits(f);
        const uint32_t shl1_w = w + w;
        const uint32_t sign = w & 0x80000000u;
        uint32_t bias = shl1_w & 0xFF000000u;
        if (bias < 0x71000000u)
                bias = 0x71000000u;
        base = sl_bits_f32((bias >> 1) + 0x07800000u) + base;
        const uint32_t bits = sl_f32_bits(base);
        const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
        const uint32_t mantissa_bits = bits & 0x00000FFFu;
        const uint32_t nonsign = exp_bits + mantissa_bits;
        return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float sl_bf16_to_fp32(uint16_t h) { return sl_bits_f32((uint32_t)h << 16); }

static inline uint16_t sl_fp32_to_bf16(float f)
{
        uint32_t u = sl_f32_bits(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet */
                return (uint16_t)((u >> 16) | 64);
        return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* ---- time ---- */
uint64_t sl_now_ns(void); /* CLOCK_MONOTONIC */

/* ---- logging (programs only) ---- */
enum sl_log_level { SL_LOG_ERR = 3, SL_LOG_WARNING = 4, SL_LOG_NOTICE = 5, SL_LOG_INFO = 6, SL_LOG_DEBUG = 7 };
void sl_log_set_level(enum sl_log_level lvl);
void sl_log(enum sl_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
