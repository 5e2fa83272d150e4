/* auth.c — client keys and frame authentication (docs/protocol.md §7.1, docs/security.md):
 * the keys file parser (untrusted text: every field checked, every error with file:line),
 * HMAC-SHA256 of a frame through libsodium (crypto_auth_hmacsha256, no hand-written
 * crypto), signing for clients, and the server's check: known key, timestamp inside the
 * replay window, MAC, then the (key, nonce) pair not seen before within the window.
 *
 * The per-key HMAC state after the key is absorbed is prepared once, when the keys are
 * loaded; a frame's MAC copies it (a plain struct) and hashes the frame: no allocation per
 * frame. The replay set is a fixed open-addressing table sized at creation. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "dataplane.h"

struct dp_keys {
        uint32_t n;
        struct dp_key *k;                           /* sorted by id */
        crypto_auth_hmacsha256_state *st;           /* [n]: state after the key */
};

/* ---- the keys file ---- */

static int key_cmp(const void *a, const void *b)
{
        const struct dp_key *x = a, *y = b;
        return x->id < y->id ? -1 : x->id > y->id;
}

static int hexval(int c)
{
        return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A decimal u32 in [lo, hi] spanning exactly [s, e). */
static bool parse_u32(const char *s, const char *e, uint32_t lo, uint32_t hi, uint32_t *out)
{
        uint64_t v = 0;
        if (s == e || e - s > 10)
                return false;
        for (const char *p = s; p < e; p++) {
                if (*p < '0' || *p > '9')
                        return false;
                v = v * 10 + (uint64_t)(*p - '0');
        }
        if (v < lo || v > hi)
                return false;
        *out = (uint32_t)v;
        return true;
}

static int line_error(struct sl_error *err, const char *origin, unsigned line, const char *fmt, const char *a,
                      int alen)
{
        char what[160];
        snprintf(what, sizeof(what), fmt, alen, a);
        return sl_errorf(err, -EINVAL, "%s:%u: %s", origin, line, what);
}

int dp_keys_parse(const char *text, size_t len, const char *origin, struct dp_keys **out, struct sl_error *err)
{
        struct dp_keys *ks = NULL;
        uint32_t cap = 0;
        unsigned line = 0;
        int r;

        *out = NULL;
        if (sodium_init() < 0)
                return sl_errorf(err, -EIO, "libsodium failed to initialise");
        ks = calloc(1, sizeof(*ks));
        if (!ks)
                goto oom;
        for (size_t at = 0; at < len;) {
                const char *ls = text + at, *le = memchr(ls, '\n', len - at);
                if (!le)
                        le = text + len;
                at = (size_t)(le - text) + 1;
                line++;
                for (const char *p = ls; p < le; p++)
                        if (*p == '\0' || (*p < 32 && *p != '\t' && *p != '\r')) {
                                r = sl_errorf(err, -EINVAL, "%s:%u: a control character (0x%02x)", origin, line,
                                              (unsigned)(unsigned char)*p);
                                goto fail;
                        }
                /* fields separated by blanks; '#' starts a comment */
                const char *f[5][2]; /* id, secret, up to three limits */
                int nf = 0;
                for (const char *p = ls; p < le;) {
                        while (p < le && (*p == ' ' || *p == '\t' || *p == '\r'))
                                p++;
                        if (p == le || *p == '#')
                                break;
                        const char *s = p;
                        while (p < le && *p != ' ' && *p != '\t' && *p != '\r' && *p != '#')
                                p++;
                        if (nf == 5) {
                                r = sl_errorf(err, -EINVAL, "%s:%u: too many fields (an id, a secret, 3 limits)",
                                              origin, line);
                                goto fail;
                        }
                        f[nf][0] = s;
                        f[nf][1] = p;
                        nf++;
                }
                if (nf == 0)
                        continue;
                if (nf < 2) {
                        r = line_error(err, origin, line, "'%.*s': a key needs an id and a secret", f[0][0],
                                       (int)(f[0][1] - f[0][0]));
                        goto fail;
                }
                struct dp_key k;
                memset(&k, 0, sizeof(k));
                if (!parse_u32(f[0][0], f[0][1], 1, UINT32_MAX, &k.id)) {
                        r = line_error(err, origin, line, "key id '%.*s' is not a number in 1..4294967295", f[0][0],
                                       (int)(f[0][1] - f[0][0]));
                        goto fail;
                }
                const size_t hl = (size_t)(f[1][1] - f[1][0]);
                if (hl % 2 || hl < 2 * DP_KEY_MIN || hl > 2 * DP_KEY_MAX) {
                        char m[96];
                        snprintf(m, sizeof(m), "secret of key %u: %zu hex digits, want an even count in %u..%u",
                                 k.id, hl, 2 * DP_KEY_MIN, 2 * DP_KEY_MAX);
                        r = sl_errorf(err, -EINVAL, "%s:%u: %s", origin, line, m);
                        goto fail;
                }
                for (size_t i = 0; i < hl; i += 2) {
                        int hi = hexval(f[1][0][i]), lo = hexval(f[1][0][i + 1]);
                        if (hi < 0 || lo < 0) {
                                r = sl_errorf(err, -EINVAL, "%s:%u: secret of key %u is not hexadecimal", origin, line, k.id);
                                goto fail;
                        }
                        k.secret[i / 2] = (uint8_t)(hi << 4 | lo);
                }
                k.secret_len = (uint32_t)(hl / 2);
                for (int i = 2; i < nf; i++) {
                        const char *s = f[i][0], *e = f[i][1], *eq = memchr(s, '=', (size_t)(e - s));
                        uint32_t *dst = NULL;
                        if (eq && eq - s == 12 && !memcmp(s, "max_inflight", 12))
                                dst = &k.max_inflight;
                        else if (eq && eq - s == 3 && !memcmp(s, "rps", 3))
                                dst = &k.rps;
                        else if (eq && eq - s == 3 && !memcmp(s, "tps", 3))
                                dst = &k.tps;
                        if (!dst) {
                                r = line_error(err, origin, line,
                                               "'%.*s' is not a limit (max_inflight=N, rps=N or tps=N)", s, (int)(e - s));
                                goto fail;
                        }
                        if (!parse_u32(eq + 1, e, 1, 100000000, dst)) {
                                r = line_error(err, origin, line, "'%.*s': the limit must be a number in 1..100000000",
                                               s, (int)(e - s));
                                goto fail;
                        }
                }
                for (uint32_t i = 0; i < ks->n; i++)
                        if (ks->k[i].id == k.id) {
                                r = sl_errorf(err, -EINVAL, "%s:%u: key id %u appears twice", origin, line, k.id);
                                goto fail;
                        }
                if (ks->n == DP_KEYS_MAX) {
                        r = sl_errorf(err, -E2BIG, "%s:%u: more than %u keys", origin, line, DP_KEYS_MAX);
                        goto fail;
                }
                if (ks->n == cap) {
                        cap = cap ? cap * 2 : 8;
                        struct dp_key *nk = realloc(ks->k, cap * sizeof(*nk));
                        if (!nk)
                                goto oom;
                        ks->k = nk;
                }
                ks->k[ks->n++] = k;
                sodium_memzero(&k, sizeof(k));
        }
        if (ks->n == 0) {
                r = sl_errorf(err, -EINVAL, "%s: no keys (one line per key: id, secret in hex, optional limits)", origin);
                goto fail;
        }
        qsort(ks->k, ks->n, sizeof(*ks->k), key_cmp);
        ks->st = malloc(ks->n * sizeof(*ks->st));
        if (!ks->st)
                goto oom;
        for (uint32_t i = 0; i < ks->n; i++)
                crypto_auth_hmacsha256_init(&ks->st[i], ks->k[i].secret, ks->k[i].secret_len);
        *out = ks;
        return 0;
oom:
        r = sl_errorf(err, -ENOMEM, "%s: out of memory", origin);
fail:
        dp_keys_free(ks);
        return r;
}

int dp_keys_load(const char *path, bool check_owner, struct dp_keys **out, struct sl_error *err)
{
        *out = NULL;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return sl_errorf(err, -errno, "keys file %s: %s", path, strerror(errno));
        struct stat st;
        int r;
        char *buf = NULL;
        if (fstat(fd, &st) < 0) {
                r = sl_errorf(err, -errno, "keys file %s: %s", path, strerror(errno));
                goto out;
        }
        if (!S_ISREG(st.st_mode)) {
                r = sl_errorf(err, -EINVAL, "keys file %s is not a regular file", path);
                goto out;
        }
        if (check_owner && (st.st_mode & 077)) {
                r = sl_errorf(err, -EPERM, "keys file %s has mode %04o: group and others must have no access "
                              "(chmod 600 %s)", path, (unsigned)(st.st_mode & 07777), path);
                goto out;
        }
        if (check_owner && st.st_uid != geteuid()) {
                r = sl_errorf(err, -EPERM, "keys file %s is owned by uid %u, not by this process's uid %u "
                              "(chown it to the service user, or pass it with systemd's LoadCredential=)",
                              path, (unsigned)st.st_uid, (unsigned)geteuid());
                goto out;
        }
        if (st.st_size > DP_KEYS_FILE_MAX) {
                r = sl_errorf(err, -EFBIG, "keys file %s: %lld bytes, over the limit of %u", path,
                              (long long)st.st_size, DP_KEYS_FILE_MAX);
                goto out;
        }
        buf = malloc((size_t)st.st_size + 1);
        if (!buf) {
                r = sl_errorf(err, -ENOMEM, "keys file %s: out of memory", path);
                goto out;
        }
        size_t got = 0;
        while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = sl_errorf(err, n < 0 ? -errno : -EIO, "keys file %s: short read", path);
                        goto out;
                }
                got += (size_t)n;
        }
        r = dp_keys_parse(buf, got, path, out, err);
out:
        if (buf) {
                sodium_memzero(buf, (size_t)st.st_size);
                free(buf);
        }
        close(fd);
        return r;
}

void dp_keys_free(struct dp_keys *ks)
{
        if (!ks)
                return;
        if (ks->k)
                sodium_memzero(ks->k, ks->n * sizeof(*ks->k));
        if (ks->st)
                sodium_memzero(ks->st, ks->n * sizeof(*ks->st));
        free(ks->k);
        free(ks->st);
        free(ks);
}

uint32_t dp_keys_count(const struct dp_keys *ks)
{
        return ks ? ks->n : 0;
}

const struct dp_key *dp_keys_at(const struct dp_keys *ks, uint32_t i)
{
        return ks && i < ks->n ? &ks->k[i] : NULL;
}

static int find_index(const struct dp_keys *ks, uint32_t id)
{
        uint32_t lo = 0, hi = ks ? ks->n : 0;
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (ks->k[mid].id == id)
                        return (int)mid;
                if (ks->k[mid].id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return -1;
}

const struct dp_key *dp_keys_find(const struct dp_keys *ks, uint32_t id)
{
        int i = find_index(ks, id);
        return i < 0 ? NULL : &ks->k[i];
}

/* ---- MAC ---- */

/* HMAC-SHA256 of the frame's first len - DP_MAC_SIZE bytes with the crc field (bytes 28..31)
 * taken as zero, from the state after the key. */
static void frame_mac(const crypto_auth_hmacsha256_state *key_state, const uint8_t *frame, size_t len,
                      uint8_t mac[DP_MAC_SIZE])
{
        static const uint8_t zero[4];
        crypto_auth_hmacsha256_state st = *key_state;
        crypto_auth_hmacsha256_update(&st, frame, 28);
        crypto_auth_hmacsha256_update(&st, zero, 4);
        crypto_auth_hmacsha256_update(&st, frame + DP_HEADER_SIZE, len - DP_MAC_SIZE - DP_HEADER_SIZE);
        crypto_auth_hmacsha256_final(&st, mac);
        sodium_memzero(&st, sizeof(st));
}

int dp_frame_sign(uint8_t *frame, size_t len, const struct dp_key *key)
{
        if (len < DP_HEADER_SIZE + DP_AUTH_SIZE)
                return -EINVAL;
        uint16_t flags = (uint16_t)(frame[6] | frame[7] << 8);
        if (!(flags & DP_F_AUTH))
                return -EINVAL;
        crypto_auth_hmacsha256_state st;
        crypto_auth_hmacsha256_init(&st, key->secret, key->secret_len);
        frame_mac(&st, frame, len, frame + len - DP_MAC_SIZE);
        sodium_memzero(&st, sizeof(st));
        if (flags & DP_F_CRC) {
                uint32_t c = dp_frame_crc(frame, len);
                memcpy(frame + 28, &c, 4); /* little-endian hosts only (sl.h) */
        }
        return 0;
}

/* ---- replay window ---- */

struct replay_ent {
        uint64_t nonce;
        uint64_t ts_ms;   /* 0: empty */
        uint32_t key_id;
};

struct dp_replay {
        uint32_t mask;
        uint64_t window_ms;
        struct dp_auth_stats own, *st;
        struct replay_ent e[];
};

/* One writer: a relaxed load and store, no locked instruction. */
#define COUNT(rp, f) __atomic_store_n(&(rp)->st->f, __atomic_load_n(&(rp)->st->f, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED)

#define REPLAY_PROBE 32u

int dp_replay_create(struct dp_replay **out, uint32_t capacity, uint32_t window_ms, struct dp_auth_stats *stats,
                     struct sl_error *err)
{
        *out = NULL;
        if (capacity < 64 || capacity > (1u << 24) || (capacity & (capacity - 1)))
                return sl_errorf(err, -EINVAL, "replay table of %u entries: a power of two in 64..2^24", capacity);
        if (window_ms < 1000 || window_ms > 3600000)
                return sl_errorf(err, -EINVAL, "replay window of %u ms: want 1000..3600000", window_ms);
        struct dp_replay *rp = calloc(1, sizeof(*rp) + capacity * sizeof(struct replay_ent));
        if (!rp)
                return sl_errorf(err, -ENOMEM, "replay table of %u entries: out of memory", capacity);
        rp->mask = capacity - 1;
        rp->window_ms = window_ms;
        rp->st = stats ? stats : &rp->own;
        *out = rp;
        return 0;
}

void dp_replay_free(struct dp_replay *rp)
{
        free(rp);
}

void dp_replay_stats(const struct dp_replay *rp, struct dp_auth_stats *out)
{
        const uint64_t *s = (const uint64_t *)rp->st;
        uint64_t *d = (uint64_t *)out;
        for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
                d[i] = __atomic_load_n(&s[i], __ATOMIC_RELAXED);
}

static uint32_t replay_hash(uint32_t key_id, uint64_t nonce)
{
        uint64_t h = nonce ^ ((uint64_t)key_id * 0x9e3779b97f4a7c15ull);
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdull;
        h ^= h >> 33;
        return (uint32_t)h;
}

/* Records (key, nonce); -EEXIST when seen within the window, -ENOSPC when the probe finds
 * neither it nor a free or expired slot (then the frame is refused: fail closed). */
static int replay_insert(struct dp_replay *rp, uint32_t key_id, uint64_t nonce, uint64_t ts, uint64_t now)
{
        uint32_t h = replay_hash(key_id, nonce), free_at = UINT32_MAX;
        for (uint32_t i = 0; i < REPLAY_PROBE; i++) {
                struct replay_ent *e = &rp->e[(h + i) & rp->mask];
                const bool live = e->ts_ms && e->ts_ms + rp->window_ms >= now;
                if (live && e->key_id == key_id && e->nonce == nonce)
                        return -EEXIST;
                if (!live && free_at == UINT32_MAX)
                        free_at = (h + i) & rp->mask;
        }
        if (free_at == UINT32_MAX)
                return -ENOSPC;
        rp->e[free_at] = (struct replay_ent){.nonce = nonce, .ts_ms = ts ? ts : 1, .key_id = key_id};
        return 0;
}

int dp_auth_check(const struct dp_keys *ks, struct dp_replay *rp, const uint8_t *frame, const struct dp_frame *f,
                  uint64_t now_ms, const struct dp_key **key, struct sl_error *err)
{
        if (key)
                *key = NULL;
        if (!f->has_auth) {
                COUNT(rp, missing);
                return sl_errorf(err, -DP_ERR_UNAUTHENTICATED, "no authentication trailer (this server requires keys)");
        }
        const int i = find_index(ks, f->auth.key_id);
        if (i < 0) {
                COUNT(rp, unknown_key);
                return sl_errorf(err, -DP_ERR_UNAUTHENTICATED, "unknown key id %u", f->auth.key_id);
        }
        const uint64_t ts = f->auth.timestamp_ms, w = rp->window_ms;
        if (ts + w < now_ms || ts > now_ms + w) {
                COUNT(rp, expired);
                return sl_errorf(err, -DP_ERR_UNAUTHENTICATED,
                                 "timestamp %llu is %lld ms from the server's clock, outside the %llu ms window",
                                 (unsigned long long)ts, (long long)(ts - now_ms), (unsigned long long)w);
        }
        uint8_t mac[DP_MAC_SIZE];
        frame_mac(&ks->st[i], frame, f->len, mac);
        if (sodium_memcmp(mac, frame + f->len - DP_MAC_SIZE, DP_MAC_SIZE) != 0) {
                COUNT(rp, bad_mac);
                return sl_errorf(err, -DP_ERR_UNAUTHENTICATED, "bad MAC for key id %u", f->auth.key_id);
        }
        int r = replay_insert(rp, f->auth.key_id, f->auth.nonce, ts, now_ms);
        if (r == -EEXIST) {
                COUNT(rp, replayed);
                return sl_errorf(err, -DP_ERR_UNAUTHENTICATED, "replayed frame (key id %u, nonce %llu)",
                                 f->auth.key_id, (unsigned long long)f->auth.nonce);
        }
        if (r < 0) {
                COUNT(rp, replay_full);
                return sl_errorf(err, -DP_ERR_UNAUTHENTICATED, "replay window full; retry");
        }
        COUNT(rp, ok);
        if (key)
                *key = &ks->k[i];
        return 0;
}

/* ---- the transports' shared context ---- */

int dp_auth_ctx_init(struct dp_auth_ctx *ctx, bool required, uint32_t window_ms, struct dp_keys *keys,
                     struct sl_error *err)
{
        memset(ctx, 0, sizeof(*ctx));
        if (required && !keys)
                return sl_errorf(err, -EINVAL, "authentication required but no keys");
        if (window_ms < 1000 || window_ms > 3600000)
                return sl_errorf(err, -EINVAL, "replay window of %u ms: want 1000..3600000", window_ms);
        ctx->required = required;
        ctx->window_ms = window_ms;
        ctx->replay_capacity = 1u << 16;
        atomic_init(&ctx->keys, keys);
        atomic_init(&ctx->epoch, 1);
        atomic_init(&ctx->n_readers, 0);
        for (unsigned i = 0; i < DP_AUTH_READERS; i++)
                atomic_init(&ctx->seen[i], UINT64_MAX);
        return 0;
}

void dp_auth_ctx_destroy(struct dp_auth_ctx *ctx)
{
        dp_keys_free(atomic_exchange(&ctx->keys, NULL));
}

int dp_auth_reader(struct dp_auth_ctx *ctx)
{
        uint32_t i = atomic_fetch_add(&ctx->n_readers, 1);
        if (i >= DP_AUTH_READERS) {
                atomic_fetch_sub(&ctx->n_readers, 1);
                return -ENOSPC;
        }
        return (int)i;
}

void dp_auth_enter(struct dp_auth_ctx *ctx, int reader)
{
        atomic_store(&ctx->seen[reader], atomic_load(&ctx->epoch));
}

void dp_auth_idle(struct dp_auth_ctx *ctx, int reader)
{
        atomic_store(&ctx->seen[reader], UINT64_MAX);
}

struct dp_keys *dp_auth_swap(struct dp_auth_ctx *ctx, struct dp_keys *keys, unsigned timeout_ms)
{
        struct dp_keys *old = atomic_exchange(&ctx->keys, keys);
        const uint64_t e = atomic_fetch_add(&ctx->epoch, 1) + 1;
        const uint32_t n = SL_MIN(atomic_load(&ctx->n_readers), DP_AUTH_READERS);
        /* A reader that marked an epoch before e may hold old; once it marks again (or goes
         * idle) it reads keys after the exchange. */
        for (uint32_t i = 0; i < n; i++)
                for (unsigned waited = 0; atomic_load(&ctx->seen[i]) < e; waited++) {
                        if (waited >= timeout_ms)
                                return NULL;
                        usleep(1000);
                }
        return old;
}
