/* test-crc32c.c — CRC32C against the iSCSI vectors of RFC 3720 (B.4) and the standard
 * check value, and the SSE4.2 version against the table version on every length and
 * alignment, whole and in pieces. */
#include <stdio.h>
#include <stdlib.h>

#include "dataplane.h"

static int failures;

#define CHECK(cond, ...)                                                      \
        do {                                                                  \
                if (!(cond)) {                                                \
                        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
                        fprintf(stderr, __VA_ARGS__);                         \
                        fputc('\n', stderr);                                  \
                        failures++;                                           \
                }                                                             \
        } while (0)

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static void vectors(const char *name, crc_fn f)
{
        uint8_t b[48];
        static const uint8_t iscsi_read[48] = {
                0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
                0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        };

        memset(b, 0, 32);
        CHECK(f(0, b, 32) == 0x8a9136aau, "%s: 32 zero bytes: 0x%08x", name, f(0, b, 32));
        memset(b, 0xff, 32);
        CHECK(f(0, b, 32) == 0x62a8ab43u, "%s: 32 0xff bytes: 0x%08x", name, f(0, b, 32));
        for (int i = 0; i < 32; i++)
                b[i] = (uint8_t)i;
        CHECK(f(0, b, 32) == 0x46dd794eu, "%s: 0..31: 0x%08x", name, f(0, b, 32));
        for (int i = 0; i < 32; i++)
                b[i] = (uint8_t)(31 - i);
        CHECK(f(0, b, 32) == 0x113fdb5cu, "%s: 31..0: 0x%08x", name, f(0, b, 32));
        CHECK(f(0, iscsi_read, 48) == 0xd9963a56u, "%s: iSCSI read PDU: 0x%08x", name, f(0, iscsi_read, 48));
        CHECK(f(0, "123456789", 9) == 0xe3069283u, "%s: check value: 0x%08x", name, f(0, "123456789", 9));
        CHECK(f(0, "", 0) == 0, "%s: empty", name);
        /* continuation: crc of a then b == crc of ab */
        CHECK(f(f(0, "1234", 4), "56789", 5) == 0xe3069283u, "%s: split", name);
}

int main(void)
{
        enum { N = 4096 };
        uint8_t *buf = malloc(N + 16);
        uint64_t x = 0x9e3779b97f4a7c15ull;

        vectors("table", dp_crc32c_sw);
        vectors("dispatch", dp_crc32c);
        for (size_t i = 0; i < N + 16; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                buf[i] = (uint8_t)x;
        }
        if (!dp_crc32c_hw_available()) {
                printf("SKIP: no SSE4.2 crc32 on this CPU; the table version alone was checked\n");
        } else {
                vectors("sse4.2", dp_crc32c_hw);
                for (size_t align = 0; align < 16; align++)
                        for (size_t len = 0; len <= 1100; len++) {
                                uint32_t s = dp_crc32c_sw(0, buf + align, len);
                                uint32_t h = dp_crc32c_hw(0, buf + align, len);
                                CHECK(s == h, "align %zu len %zu: table 0x%08x sse4.2 0x%08x", align, len, s, h);
                                if (s != h)
                                        goto out;
                        }
                for (size_t cut = 0; cut <= N; cut += 37) {
                        uint32_t whole = dp_crc32c_sw(0, buf, N);
                        uint32_t h = dp_crc32c_hw(dp_crc32c_hw(0, buf, cut), buf + cut, N - cut);
                        uint32_t s = dp_crc32c_sw(dp_crc32c_sw(0, buf, cut), buf + cut, N - cut);
                        CHECK(h == whole && s == whole, "split at %zu", cut);
                }
        }
        /* the table version's slicing path against a bitwise reference */
        for (size_t len = 0; len < 300; len++) {
                uint32_t c = ~0u;
                for (size_t i = 0; i < len; i++) {
                        c ^= buf[3 + i];
                        for (int k = 0; k < 8; k++)
                                c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
                }
                CHECK(~c == dp_crc32c_sw(0, buf + 3, len), "bitwise reference, len %zu", len);
        }
out:
        free(buf);
        if (failures) {
                fprintf(stderr, "%d failures\n", failures);
                return 1;
        }
        printf("crc32c: ok (%s)\n", dp_crc32c_hw_available() ? "table + sse4.2" : "table");
        return 0;
}
