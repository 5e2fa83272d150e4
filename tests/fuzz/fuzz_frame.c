/* fuzz_frame — libFuzzer target for the wire protocol decoder. The first input byte picks
 * a mode: fix up the CRC (so that mutations reach past the integrity check), the UDP or TCP
 * frame limit, whether a CRC is required, and whether the rest is a whole frame or one
 * opcode's bare payload. Whatever decodes is encoded again and must come out byte for byte
 * the same (the v1 format is canonical); whatever fails must say why in one line. */
#include <stdio.h>
#include <stdlib.h>

#include "dataplane.h"

#define MODE_RESEAL 0x01
#define MODE_UDP 0x02
#define MODE_REQUIRE_CRC 0x04
#define MODE_PAYLOAD 0x08

static uint8_t out[DP_MAX_FRAME_TCP + 64];
static uint8_t reasm_buf[DP_MAX_MESSAGE];
static struct dp_reasm reasm;

static void check_reason(int r, const struct sl_error *e)
{
        if (r >= 0)
                return;
        if (-r < 1 || -r > DP_ERR_MAX)
                __builtin_trap(); /* decoders return -enum dp_err */
        if (!e->msg[0] || strchr(e->msg, '\n'))
                __builtin_trap();
}

/* Decodes one payload, and if it decodes, encodes it again: same bytes. */
static void payload_roundtrip(uint8_t op, const uint8_t *p, size_t len)
{
        union dp_msg m;
        struct sl_error e = { { 0 } };
        int r = dp_msg_decode(op, p, len, &m, &e);
        check_reason(r, &e);
        if (r < 0)
                return;
        long n = dp_msg_encode(op, out, sizeof(out), &m);
        if (n < 0 || (size_t)n != len || memcmp(out, p, len) != 0)
                __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (size < 1 || size - 1 > DP_MAX_FRAME_TCP + 64)
                return 0;
        uint8_t mode = data[0];
        size_t len = size - 1;
        /* a heap copy of exactly len bytes, so that ASan sees any read past the frame */
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf)
                return 0;
        memcpy(buf, data + 1, len);

        if (mode & MODE_PAYLOAD) {
                if (len >= 1)
                        payload_roundtrip(buf[0] % (DP_OP_MAX + 2), buf + 1, len - 1);
                goto out;
        }
        if ((mode & MODE_RESEAL) && len >= DP_HEADER_SIZE && (buf[6] & DP_F_CRC)) {
                uint32_t c = dp_frame_crc(buf, len);
                buf[28] = (uint8_t)c, buf[29] = (uint8_t)(c >> 8), buf[30] = (uint8_t)(c >> 16), buf[31] = (uint8_t)(c >> 24);
        }
        size_t max_frame = mode & MODE_UDP ? DP_MAX_FRAME_UDP : DP_MAX_FRAME_TCP;
        struct dp_frame f;
        struct sl_error e = { { 0 } };
        int r = dp_frame_decode(buf, len, max_frame, mode & MODE_REQUIRE_CRC ? DP_DECODE_REQUIRE_CRC : 0, &f, &e);
        check_reason(r, &e);
        long fl = dp_frame_length(buf, len, max_frame, NULL);
        if (r < 0)
                goto out;
        if (fl != (long)len || f.len != len)
                __builtin_trap();

        /* the frame again, from its decoded parts */
        struct dp_header h = f.h;
        long n = dp_frame_encode(out, sizeof(out), max_frame, &h, f.payload, f.h.payload_len, f.cookie,
                                 f.has_auth ? &f.auth : NULL);
        if (n != (long)len || memcmp(out, buf, len) != 0)
                __builtin_trap();

        payload_roundtrip(f.h.opcode, f.payload, f.h.payload_len);

        /* fragments of one request id reassemble across inputs until they disagree */
        if (dp_opcode_fragmentable(f.h.opcode)) {
                if (reasm.count && reasm.request_id != f.h.request_id)
                        reasm.count = 0;
                if (!reasm.count)
                        dp_reasm_init(&reasm, reasm_buf, sizeof(reasm_buf));
                r = dp_reasm_add(&reasm, &f, &e);
                check_reason(r, &e);
                if (r == 1) {
                        if (reasm.total > sizeof(reasm_buf))
                                __builtin_trap();
                        payload_roundtrip(reasm.opcode, reasm.buf, reasm.total);
                }
                if (r != 0)
                        reasm.count = 0;
        }
out:
        free(buf);
        return 0;
}
