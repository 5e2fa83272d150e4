/* crc32c.c — CRC32C (Castagnoli, reflected 0x82F63B78, init and final xor ~0), the check
 * value of iSCSI (RFC 3720) and of sluice frames: a slicing-by-8 table version that runs
 * anywhere, and the SSE4.2 crc32 instruction picked at run time where the CPU has it. */
#include <pthread.h>

#include "dataplane.h"

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define DP_CRC_X86 1
#else
#define DP_CRC_X86 0
#endif

#define POLY 0x82f63b78u

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void)
{
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
                table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
                for (int t = 1; t < 8; t++)
                        table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint32_t dp_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
        const uint8_t *p = buf;
        uint32_t c = ~crc;

        pthread_once(&table_once, table_init);
        while (len && ((uintptr_t)p & 7)) {
                c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
                len--;
        }
        while (len >= 8) {
                /* little-endian load, byte by byte so that it is also correct elsewhere */
                uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
                uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
                c = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^
                    table[4][lo >> 24] ^ table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^
                    table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
                p += 8;
                len -= 8;
        }
        while (len--)
                c = (c >> 8) ^ table[0][(c ^ *p++) & 0xff];
        return ~c;
}

#if DP_CRC_X86
__attribute__((target("sse4.2")))
uint32_t dp_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
        const uint8_t *p = buf;
        uint32_t c = ~crc;

        while (len && ((uintptr_t)p & 7)) {
                c = _mm_crc32_u8(c, *p++);
                len--;
        }
#if defined(__x86_64__)
        uint64_t c64 = c;
        while (len >= 8) {
                uint64_t v;
                memcpy(&v, p, 8);
                c64 = _mm_crc32_u64(c64, v);
                p += 8;
                len -= 8;
        }
        c = (uint32_t)c64;
#endif
        while (len >= 4) {
                uint32_t v;
                memcpy(&v, p, 4);
                c = _mm_crc32_u32(c, v);
                p += 4;
                len -= 4;
        }
        while (len--)
                c = _mm_crc32_u8(c, *p++);
        return ~c;
}

bool dp_crc32c_hw_available(void)
{
        static int cached = -1; /* benign race: every thread computes the same value */
        int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
        if (v < 0) {
                __builtin_cpu_init();
                v = __builtin_cpu_supports("sse4.2") ? 1 : 0;
                __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
        }
        return v;
}
#else
uint32_t dp_crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
        return dp_crc32c_sw(crc, buf, len);
}

bool dp_crc32c_hw_available(void)
{
        return false;
}
#endif

uint32_t dp_crc32c(uint32_t crc, const void *buf, size_t len)
{
        return dp_crc32c_hw_available() ? dp_crc32c_hw(crc, buf, len) : dp_crc32c_sw(crc, buf, len);
}

uint32_t dp_frame_crc(const void *frame, size_t len)
{
        const uint8_t *p = frame;
        uint32_t c = dp_crc32c(0, p, len < 28 ? len : 28);
        if (len > DP_HEADER_SIZE)
                c = dp_crc32c(c, p + DP_HEADER_SIZE, len - DP_HEADER_SIZE);
        return c;
}
