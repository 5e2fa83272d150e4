/* fuzz_keys — libFuzzer target for the client keys file parser (dataplane/auth.c): parse,
 * then look every parsed key up and sign a frame with it. Built and run by
 * tests/fuzz/run keys. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct dp_keys *ks = NULL;
        struct sl_error err;
        if (dp_keys_parse((const char *)data, size, "fuzz.keys", &ks, &err) == 0) {
                for (uint32_t i = 0; i < dp_keys_count(ks); i++) {
                        const struct dp_key *k = dp_keys_at(ks, i);
                        if (dp_keys_find(ks, k->id) != k || k->secret_len < DP_KEY_MIN || k->secret_len > DP_KEY_MAX)
                                abort();
                        uint8_t frame[DP_HEADER_SIZE + DP_AUTH_SIZE];
                        struct dp_header h = {.opcode = DP_OP_PING, .flags = DP_F_AUTH | DP_F_CRC, .frag_count = 1};
                        struct dp_auth a = {.key_id = k->id, .timestamp_ms = 1, .nonce = i};
                        long n = dp_frame_encode(frame, sizeof(frame), sizeof(frame), &h, NULL, 0, NULL, &a);
                        if (n < 0 || dp_frame_sign(frame, (size_t)n, k) < 0)
                                abort();
                }
        } else if (ks || !err.msg[0]) {
                abort(); /* a failure has a reason and leaves nothing */
        }
        dp_keys_free(ks);
        return 0;
}
