/* test-auth.c — client keys and frame authentication (dataplane/auth.c): the HMAC primitive
 * against RFC 4231; a signed frame's MAC against an independent one-shot computation; the
 * server's check accepting a good frame and refusing, each with its reason, a missing
 * trailer, an unknown key, a wrong secret, every flipped byte, a timestamp outside the
 * window either way, a replayed nonce, and a full replay table; the keys file's errors with
 * file:line; the file's owner and mode checks. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

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

#define NOW 1800000000000ull /* ms */
#define WINDOW 30000u

static const char *KEYS = "# test keys\n"
                          "7 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f rps=10\n"
                          "\n"
                          "3 ffeeddccbbaa99887766554433221100   max_inflight=2 tps=100 # trailing comment\n";

/* A GENERATE-sized frame signed with key k (id key_id in the trailer). */
static size_t make_frame(uint8_t *buf, size_t cap, const struct dp_key *k, uint32_t key_id, uint64_t ts,
                         uint64_t nonce)
{
        uint8_t payload[100];
        for (size_t i = 0; i < sizeof(payload); i++)
                payload[i] = (uint8_t)(i * 7 + 1);
        struct dp_header h = {.opcode = DP_OP_PING, .flags = DP_F_AUTH | DP_F_CRC, .request_id = 99,
                              .frag_count = 1};
        struct dp_auth a = {.key_id = key_id, .timestamp_ms = ts, .nonce = nonce};
        long n = dp_frame_encode(buf, cap, cap, &h, payload, 32, NULL, &a);
        CHECK(n > 0, "encode: %ld", n);
        CHECK(dp_frame_sign(buf, (size_t)n, k) == 0, "sign");
        return (size_t)n;
}

static int check(const struct dp_keys *ks, struct dp_replay *rp, const uint8_t *buf, size_t len, uint64_t now,
                 struct sl_error *err)
{
        struct dp_frame f;
        int r = dp_frame_decode(buf, len, DP_MAX_FRAME_UDP, 0, &f, err);
        if (r < 0)
                return r;
        return dp_auth_check(ks, rp, buf, &f, now, NULL, err);
}

static void test_hmac_vector(void)
{
        /* RFC 4231, test case 2 */
        static const uint8_t want[32] = {0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24,
                                         0x26, 0x08, 0x95, 0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27,
                                         0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};
        uint8_t mac[32];
        const char *msg = "what do ya want for nothing?";
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, (const uint8_t *)"Jefe", 4);
        crypto_auth_hmacsha256_update(&st, (const uint8_t *)msg, strlen(msg));
        crypto_auth_hmacsha256_final(&st, mac);
        CHECK(!memcmp(mac, want, 32), "HMAC-SHA256 RFC 4231 case 2");
}

static void test_sign_and_check(const struct dp_keys *ks)
{
        const struct dp_key *k7 = dp_keys_find(ks, 7), *k3 = dp_keys_find(ks, 3);
        CHECK(k7 && k3 && !dp_keys_find(ks, 5), "find");
        CHECK(k7 && k7->secret_len == 32 && k7->secret[31] == 0x1f && k7->rps == 10 && !k7->tps, "key 7 fields");
        CHECK(k3 && k3->secret_len == 16 && k3->max_inflight == 2 && k3->tps == 100, "key 3 fields");
        struct dp_replay *rp;
        struct sl_error err = {0};
        CHECK(dp_replay_create(&rp, 1024, WINDOW, NULL, &err) == 0, "replay create: %s", err.msg);

        uint8_t buf[256], ref[256];
        size_t n = make_frame(buf, sizeof(buf), k7, 7, NOW, 1);
        /* the MAC, computed independently: one shot over the frame with crc zeroed */
        memcpy(ref, buf, n);
        memset(ref + 28, 0, 4);
        uint8_t mac[32];
        crypto_auth_hmacsha256(mac, ref, n - 32, k7->secret);
        CHECK(k7->secret_len == crypto_auth_hmacsha256_KEYBYTES && !memcmp(mac, buf + n - 32, 32),
              "MAC = HMAC-SHA256(secret, frame up to the MAC with crc 0)");

        CHECK(check(ks, rp, buf, n, NOW, &err) == 0, "good frame: %s", err.msg);
        CHECK(check(ks, rp, buf, n, NOW + 5, &err) == -DP_ERR_UNAUTHENTICATED && strstr(err.msg, "replayed"),
              "same frame again: %s", err.msg);
        n = make_frame(buf, sizeof(buf), k7, 7, NOW, 2);
        CHECK(check(ks, rp, buf, n, NOW, &err) == 0, "new nonce: %s", err.msg);
        n = make_frame(buf, sizeof(buf), k3, 3, NOW, 2);
        CHECK(check(ks, rp, buf, n, NOW, &err) == 0, "same nonce, other key: %s", err.msg);

        /* timestamps just inside and just outside the window, both ways */
        n = make_frame(buf, sizeof(buf), k7, 7, NOW - WINDOW, 10);
        CHECK(check(ks, rp, buf, n, NOW, &err) == 0, "window edge (past): %s", err.msg);
        n = make_frame(buf, sizeof(buf), k7, 7, NOW + WINDOW, 11);
        CHECK(check(ks, rp, buf, n, NOW, &err) == 0, "window edge (future): %s", err.msg);
        n = make_frame(buf, sizeof(buf), k7, 7, NOW - WINDOW - 1, 12);
        CHECK(check(ks, rp, buf, n, NOW, &err) == -DP_ERR_UNAUTHENTICATED && strstr(err.msg, "window"),
              "expired: %s", err.msg);
        n = make_frame(buf, sizeof(buf), k7, 7, NOW + WINDOW + 1, 13);
        CHECK(check(ks, rp, buf, n, NOW, &err) == -DP_ERR_UNAUTHENTICATED && strstr(err.msg, "window"),
              "from the future: %s", err.msg);
        /* a replay once the window has moved on is refused by its timestamp */
        n = make_frame(buf, sizeof(buf), k7, 7, NOW, 1);
        CHECK(check(ks, rp, buf, n, NOW + WINDOW + 1, &err) == -DP_ERR_UNAUTHENTICATED, "old replay: %s", err.msg);

        /* unknown key, wrong secret under a known id */
        n = make_frame(buf, sizeof(buf), k7, 5, NOW, 20);
        CHECK(check(ks, rp, buf, n, NOW, &err) == -DP_ERR_UNAUTHENTICATED && strstr(err.msg, "unknown key id 5"),
              "unknown key: %s", err.msg);
        struct dp_key wrong = *k7;
        wrong.secret[0] ^= 1;
        n = make_frame(buf, sizeof(buf), &wrong, 7, NOW, 21);
        CHECK(check(ks, rp, buf, n, NOW, &err) == -DP_ERR_UNAUTHENTICATED && strstr(err.msg, "bad MAC"),
              "wrong secret: %s", err.msg);

        struct dp_auth_stats st;
        dp_replay_stats(rp, &st);
        CHECK(st.ok == 5 && st.replayed == 1 && st.expired == 3 && st.unknown_key == 1 && st.bad_mac == 1 &&
              st.missing == 0, "stats ok %llu replayed %llu expired %llu unknown %llu bad_mac %llu",
              (unsigned long long)st.ok, (unsigned long long)st.replayed, (unsigned long long)st.expired,
              (unsigned long long)st.unknown_key, (unsigned long long)st.bad_mac);

        /* every byte flipped (CRC recomputed so that the codec passes it on): refused */
        size_t good = make_frame(ref, sizeof(ref), k7, 7, NOW, 30);
        int refused = 0;
        for (size_t i = 0; i < good; i++) {
                if (i >= 28 && i < 32)
                        continue; /* the crc field itself is not covered by the MAC */
                memcpy(buf, ref, good);
                buf[i] ^= 0x40;
                uint32_t c = dp_frame_crc(buf, good);
                memcpy(buf + 28, &c, 4);
                if (check(ks, rp, buf, good, NOW, &err) < 0)
                        refused++;
                else
                        fprintf(stderr, "FAIL: byte %zu flipped was accepted\n", i);
        }
        CHECK(refused == (int)good - 4, "flipped bytes refused: %d of %zu", refused, good - 4);
        CHECK(check(ks, rp, ref, good, NOW, &err) == 0, "the untouched frame still passes: %s", err.msg);

        /* no trailer */
        struct dp_header h = {.opcode = DP_OP_PING, .flags = DP_F_CRC, .frag_count = 1};
        uint8_t pl[32] = {0};
        long m = dp_frame_encode(buf, sizeof(buf), sizeof(buf), &h, pl, 32, NULL, NULL);
        CHECK(check(ks, rp, buf, (size_t)m, NOW, &err) == -DP_ERR_UNAUTHENTICATED && strstr(err.msg, "no auth"),
              "no trailer: %s", err.msg);

        dp_replay_stats(rp, &st);
        CHECK(st.missing == 1, "missing trailers counted: %llu", (unsigned long long)st.missing);
        dp_replay_free(rp);

        /* a full table refuses (fail closed) rather than forgetting a live nonce */
        CHECK(dp_replay_create(&rp, 64, WINDOW, NULL, &err) == 0, "small replay table");
        int full = 0, okc = 0;
        for (uint64_t nonce = 0; nonce < 200; nonce++) {
                n = make_frame(buf, sizeof(buf), k7, 7, NOW, 1000 + nonce);
                int r = check(ks, rp, buf, n, NOW, &err);
                okc += r == 0;
                full += r < 0 && strstr(err.msg, "full") != NULL;
        }
        CHECK(okc == 64 && full == 136, "64-entry table: %d accepted, %d refused as full", okc, full);
        /* once the window has passed, the slots are free again */
        n = make_frame(buf, sizeof(buf), k7, 7, NOW + WINDOW + 1000, 5000);
        CHECK(check(ks, rp, buf, n, NOW + WINDOW + 1000, &err) == 0, "after the window: %s", err.msg);
        dp_replay_free(rp);
        CHECK(dp_replay_create(&rp, 100, WINDOW, NULL, &err) == -EINVAL, "capacity not a power of two");
        CHECK(dp_replay_create(&rp, 64, 10, NULL, &err) == -EINVAL, "window too short");
}

static void bad(const char *text, const char *want)
{
        struct dp_keys *ks = (struct dp_keys *)1;
        struct sl_error err = {0};
        int r = dp_keys_parse(text, strlen(text), "k.keys", &ks, &err);
        CHECK(r < 0 && !ks && strstr(err.msg, want) && !strchr(err.msg, '\n'), "'%s': got %d '%s', want '%s'", text, r,
              err.msg, want);
}

static void test_parse_errors(void)
{
        bad("", "no keys");
        bad("# only a comment\n\n", "no keys");
        bad("1\n", "k.keys:1: '1': a key needs an id and a secret");
        bad("\n0 00112233445566778899aabbccddeeff\n", "k.keys:2: key id '0'");
        bad("4294967296 00112233445566778899aabbccddeeff\n", "key id '4294967296'");
        bad("x1 00112233445566778899aabbccddeeff\n", "key id 'x1'");
        bad("1 0011\n", "k.keys:1: secret of key 1: 4 hex digits");
        bad("1 00112233445566778899aabbccddeef\n", "31 hex digits");
        char longkey[200] = "1 ";
        for (int i = 0; i < 2 * (int)DP_KEY_MAX + 2; i++)
                strcat(longkey, "a");
        bad(longkey, "130 hex digits, want an even count in 32..128");
        bad("1 0011223344556677889gaabbccddeeff\n", "not hexadecimal");
        bad("1 00112233445566778899aabbccddeeff\n1 00112233445566778899aabbccddeeff\n", "k.keys:2: key id 1 appears twice");
        bad("1 00112233445566778899aabbccddeeff rate=3\n", "'rate=3' is not a limit");
        bad("1 00112233445566778899aabbccddeeff rps=0\n", "'rps=0': the limit");
        bad("1 00112233445566778899aabbccddeeff rps=x\n", "'rps=x'");
        bad("1 00112233445566778899aabbccddeeff rps=1 tps=1 max_inflight=1 rps=2\n", "too many fields");
        bad("1 00112233445566778899aabbccddeeff\x01\n", "control character");
        const char nul[] = "1 00112233445566778899aabbccddeeff\0\n";
        struct dp_keys *ks = NULL;
        struct sl_error err = {0};
        CHECK(dp_keys_parse(nul, sizeof(nul) - 1, "k.keys", &ks, &err) < 0 && strstr(err.msg, "control"),
              "NUL inside: %s", err.msg);
}

static void test_load(void)
{
        char dir[] = "/tmp/sluice-test-auth-XXXXXX";
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        char path[256], link[256];
        snprintf(path, sizeof(path), "%s/keys", dir);
        snprintf(link, sizeof(link), "%s/link", dir);
        FILE *f = fopen(path, "w");
        fputs(KEYS, f);
        fclose(f);
        struct dp_keys *ks = NULL;
        struct sl_error err = {0};
        chmod(path, 0644);
        CHECK(dp_keys_load(path, true, &ks, &err) == -EPERM && strstr(err.msg, "chmod 600"), "mode 0644: %s", err.msg);
        CHECK(dp_keys_load(path, false, &ks, &err) == 0 && dp_keys_count(ks) == 2, "unchecked: %s", err.msg);
        dp_keys_free(ks);
        chmod(path, 0400);
        CHECK(dp_keys_load(path, true, &ks, &err) == 0 && dp_keys_count(ks) == 2, "mode 0400: %s", err.msg);
        dp_keys_free(ks);
        chmod(path, 0600);
        CHECK(dp_keys_load(path, true, &ks, &err) == 0, "mode 0600: %s", err.msg);
        dp_keys_free(ks);
        if (geteuid() == 0) {
                CHECK(chown(path, 12345, 12345) == 0, "chown");
                CHECK(dp_keys_load(path, true, &ks, &err) == -EPERM && strstr(err.msg, "owned by uid 12345"),
                      "other owner: %s", err.msg);
        }
        CHECK(symlink(path, link) == 0, "symlink");
        CHECK(dp_keys_load(link, false, &ks, &err) < 0, "a symlink is refused: %s", err.msg);
        CHECK(dp_keys_load(dir, false, &ks, &err) < 0, "a directory is refused: %s", err.msg);
        snprintf(link, sizeof(link), "%s/none", dir);
        CHECK(dp_keys_load(link, false, &ks, &err) == -ENOENT && strstr(err.msg, "none"), "missing: %s", err.msg);
        unlink(dir[0] ? path : "");
        snprintf(link, sizeof(link), "%s/link", dir);
        unlink(link);
        rmdir(dir);
}

int main(void)
{
        struct dp_keys *ks = NULL;
        struct sl_error err = {0};
        if (dp_keys_parse(KEYS, strlen(KEYS), "test.keys", &ks, &err) < 0) {
                fprintf(stderr, "FAIL: parse: %s\n", err.msg);
                return 1;
        }
        CHECK(dp_keys_count(ks) == 2 && dp_keys_at(ks, 0)->id == 3 && dp_keys_at(ks, 1)->id == 7, "sorted by id");
        test_hmac_vector();
        test_sign_and_check(ks);
        test_parse_errors();
        test_load();
        dp_keys_free(ks);
        if (failures) {
                fprintf(stderr, "%d failure(s)\n", failures);
                return 1;
        }
        printf("auth: all checks passed\n");
        return 0;
}
