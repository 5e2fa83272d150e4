/* test-reader — io_uring streaming against a file with a known byte pattern: unaligned
 * ranges, several queue depths and chunk sizes, sink coverage (every byte exactly once),
 * the buffered path on tmpfs / no_direct, and reads past the end failing with a reason. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "storage.h"

static int failures;

#define CHECK(cond, ...)                                                                   \
        do {                                                                               \
                if (!(cond)) {                                                             \
                        fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
                        fprintf(stderr, __VA_ARGS__);                                      \
                        fprintf(stderr, "\n");                                             \
                        failures++;                                                        \
                }                                                                          \
        } while (0)

#define FILE_SIZE (3u * 1024 * 1024 + 1234) /* not a multiple of 4096 */

static uint8_t pattern(uint64_t i)
{
        return (uint8_t)((i * 2654435761u) >> 13);
}

static int write_pattern(const char *path)
{
        uint8_t *buf = malloc(FILE_SIZE);
        if (!buf)
                return -1;
        for (uint64_t i = 0; i < FILE_SIZE; i++)
                buf[i] = pattern(i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int ok = fd >= 0 && write(fd, buf, FILE_SIZE) == (ssize_t)FILE_SIZE && fsync(fd) == 0;
        if (fd >= 0)
                close(fd);
        free(buf);
        return ok ? 0 : -1;
}

struct cover {
        uint64_t off, len;
        uint8_t *seen; /* per byte: how many times delivered */
        int bad;
};

static int cover_sink(void *user, uint64_t file_off, const void *data, size_t len)
{
        struct cover *c = user;
        const uint8_t *d = data;
        if (file_off < c->off || file_off + len > c->off + c->len) {
                c->bad++;
                return -ERANGE;
        }
        for (size_t i = 0; i < len; i++) {
                c->seen[file_off - c->off + i]++;
                if (d[i] != pattern(file_off + i))
                        c->bad++;
        }
        return 0;
}

static void check_ranges(struct storage_reader *r, const char *what)
{
        static const uint64_t ranges[][2] = {
                { 0, FILE_SIZE }, { 1, 1 }, { 4095, 2 }, { 4096, 4096 }, { 12345, 678901 },
                { FILE_SIZE - 1, 1 }, { FILE_SIZE - 5000, 5000 }, { 7, FILE_SIZE - 7 },
                { 100, 0 }, { 1 << 20, (1 << 20) + 3 },
        };
        for (size_t k = 0; k < SL_ARRAY_SIZE(ranges); k++) {
                uint64_t off = ranges[k][0], len = ranges[k][1];
                struct cover c = { .off = off, .len = len, .seen = calloc(len + 1, 1) };
                struct sl_error e = { { 0 } };
                int ret = storage_reader_stream(r, off, len, cover_sink, &c, &e);
                CHECK(ret == 0, "%s [%llu,+%llu): %s", what, (unsigned long long)off,
                      (unsigned long long)len, e.msg);
                CHECK(c.bad == 0, "%s [%llu,+%llu): %d bad bytes", what, (unsigned long long)off,
                      (unsigned long long)len, c.bad);
                uint64_t wrong = 0;
                for (uint64_t i = 0; i < len; i++)
                        wrong += c.seen[i] != 1;
                CHECK(wrong == 0, "%s [%llu,+%llu): %llu bytes not delivered exactly once", what,
                      (unsigned long long)off, (unsigned long long)len, (unsigned long long)wrong);
                free(c.seen);
        }
        /* storage_reader_read into a plain buffer */
        uint8_t *dst = malloc(300000);
        struct sl_error e = { { 0 } };
        CHECK(storage_reader_read(r, 999, 300000, dst, &e) == 0, "%s read: %s", what, e.msg);
        int bad = 0;
        for (uint64_t i = 0; i < 300000; i++)
                bad += dst[i] != pattern(999 + i);
        CHECK(bad == 0, "%s read: %d bad bytes", what, bad);
        free(dst);

        /* past the end */
        e.msg[0] = 0;
        struct cover c = { .off = FILE_SIZE - 10, .len = 11, .seen = calloc(12, 1) };
        int ret = storage_reader_stream(r, FILE_SIZE - 10, 11, cover_sink, &c, &e);
        CHECK(ret < 0 && strstr(e.msg, "past end of file"), "%s past EOF: ret %d '%s'", what, ret, e.msg);
        ret = storage_reader_stream(r, UINT64_MAX - 5, 10, cover_sink, &c, &e);
        CHECK(ret < 0, "%s wrapping range accepted", what);
        free(c.seen);
}

static int abort_sink(void *user, uint64_t file_off, const void *data, size_t len)
{
        int *calls = user;
        (*calls)++;
        return -ECANCELED;
}

static void run_file(const char *path, bool expect_direct_possible, const char *where)
{
        static const struct { uint32_t qd, chunk; } cfg[] = {
                { 1, 4096 }, { 2, 8192 }, { 8, 65536 }, { 4, 1 << 20 }, { 0, 0 }, { 32, 4096 },
        };
        for (size_t k = 0; k < SL_ARRAY_SIZE(cfg); k++) {
                for (int nd = 0; nd < 2; nd++) {
                        struct storage_reader_opts o = { .queue_depth = cfg[k].qd,
                                                         .chunk_size = cfg[k].chunk, .no_direct = nd };
                        struct storage_reader *r = NULL;
                        struct sl_error e = { { 0 } };
                        char what[128];
                        int ret = storage_reader_open(path, &o, &r, &e);
                        CHECK(ret == 0, "%s open: %s", where, e.msg);
                        if (ret < 0)
                                continue;
                        snprintf(what, sizeof(what), "%s qd %u chunk %u %s%s", where, cfg[k].qd,
                                 cfg[k].chunk, storage_reader_is_direct(r) ? "direct" : "buffered",
                                 storage_reader_uses_fixed_buffers(r) ? " fixed" : "");
                        if (k == 0)
                                printf("%s\n", what);
                        CHECK(storage_reader_is_direct(r) == (!nd && expect_direct_possible),
                              "%s: is_direct %d", what, storage_reader_is_direct(r));
                        check_ranges(r, what);
                        /* a sink error aborts the stream and comes back */
                        int calls = 0;
                        ret = storage_reader_stream(r, 0, FILE_SIZE, abort_sink, &calls, &e);
                        CHECK(ret == -ECANCELED && calls == 1, "%s abort: ret %d calls %d", what, ret, calls);
                        /* and the reader still works afterwards */
                        check_ranges(r, what);
                        storage_reader_close(r);
                }
        }
}

/* The staging hooks as an asynchronous consumer (a GPU copy engine) uses them: the sink only
 * records which buffer it was handed; reuse() must come before that buffer is filled again
 * and after each hand-over, pin() once at open, unpin() once at close. */
struct hook_state {
        void *base;
        size_t len;
        int pins, unpins, reuses, bad;
        bool handed[64];
        struct storage_reader *r;
        struct cover c;
};

static int h_pin(void *user, void *base, size_t len)
{
        struct hook_state *h = user;
        h->pins++;
        h->base = base;
        h->len = len;
        return 0;
}

static void h_unpin(void *user, void *base)
{
        struct hook_state *h = user;
        h->unpins++;
        if (base != h->base)
                h->bad++;
}

static int h_reuse(void *user, uint32_t i)
{
        struct hook_state *h = user;
        h->reuses++;
        if (i >= 64 || !h->handed[i])
                h->bad++; /* asked to wait for a buffer that was never handed over */
        else
                h->handed[i] = false;
        return 0;
}

static int h_sink(void *user, uint64_t off, const void *data, size_t len)
{
        struct hook_state *h = user;
        int i = storage_reader_buffer_index(h->r, data);
        if (i < 0 || i >= 64 || (const uint8_t *)data < (const uint8_t *)h->base ||
            (const uint8_t *)data + len > (const uint8_t *)h->base + h->len)
                h->bad++;
        else if (h->handed[i])
                h->bad++; /* filled again without a reuse() in between */
        else
                h->handed[i] = true;
        return cover_sink(&h->c, off, data, len);
}

static void test_hooks(const char *path)
{
        struct hook_state h = { 0 };
        struct storage_staging_hooks hooks = { .user = &h, .pin = h_pin, .unpin = h_unpin, .reuse = h_reuse };
        struct storage_reader_opts o = { .queue_depth = 4, .chunk_size = 64 * 1024, .hooks = &hooks };
        struct sl_error e = { { 0 } };
        CHECK(storage_reader_open(path, &o, &h.r, &e) == 0, "open with hooks: %s", e.msg);
        if (!h.r)
                return;
        CHECK(h.pins == 1 && h.len == 4u * 64 * 1024, "pin: %d calls, %zu bytes", h.pins, h.len);
        CHECK(storage_reader_buffer_index(h.r, (const uint8_t *)h.base + 3 * 64 * 1024 + 5) == 3, "buffer index");
        CHECK(storage_reader_buffer_index(h.r, &h) == -1, "buffer index outside");
        h.c = (struct cover){ .off = 3, .len = FILE_SIZE - 3, .seen = calloc(FILE_SIZE, 1) };
        CHECK(storage_reader_stream(h.r, 3, FILE_SIZE - 3, h_sink, &h, &e) == 0, "stream with hooks: %s", e.msg);
        for (uint64_t i = 0; i < FILE_SIZE - 3; i++)
                if (h.c.seen[i] != 1) {
                        h.c.bad++;
                        break;
                }
        /* 3 MiB in 64 KiB chunks through 4 buffers: every refill waited for its hand-over */
        CHECK(h.bad == 0 && h.c.bad == 0 && h.reuses >= (int)(FILE_SIZE / (64 * 1024)) - 4,
              "hooks: bad %d, coverage bad %d, reuses %d", h.bad, h.c.bad, h.reuses);
        free(h.c.seen);
        /* a failing pin aborts the open with its error */
        storage_reader_close(h.r);
        CHECK(h.unpins == 1, "unpin: %d calls", h.unpins);
}

static int h_pin_fail(void *user, void *base, size_t len)
{
        (void)user, (void)base, (void)len;
        return -EPERM;
}

static void test_hook_pin_fails(const char *path)
{
        struct storage_staging_hooks hooks = { .pin = h_pin_fail };
        struct storage_reader_opts o = { .hooks = &hooks };
        struct storage_reader *r = NULL;
        struct sl_error e = { { 0 } };
        CHECK(storage_reader_open(path, &o, &r, &e) == -EPERM && strstr(e.msg, "cannot pin"), "pin failure: %s", e.msg);
        CHECK(r == NULL, "no reader after a failed pin");
}

/* Whether O_DIRECT works on the file system of path, probed independently of the reader. */
static bool direct_works(const char *path)
{
        int fd = open(path, O_RDONLY | O_DIRECT);
        if (fd < 0)
                return false;
        void *buf;
        if (posix_memalign(&buf, 4096, 4096) != 0) {
                close(fd);
                return false;
        }
        bool ok = pread(fd, buf, 4096, 0) >= 0;
        free(buf);
        close(fd);
        return ok;
}

int main(void)
{
        char disk[256], shm[256];
        struct sl_error e = { { 0 } };
        struct storage_reader *r = NULL;

        snprintf(disk, sizeof(disk), "test-reader-%d.bin", (int)getpid()); /* cwd: the build dir */
        snprintf(shm, sizeof(shm), "/dev/shm/sluice-test-reader-%d.bin", (int)getpid());

        CHECK(storage_reader_open("/nonexistent/file", NULL, &r, &e) == -ENOENT, "enoent: %s", e.msg);
        struct storage_reader_opts bad = { .chunk_size = 1000 };
        CHECK(storage_reader_open("/dev/null", &bad, &r, &e) == -EINVAL && strstr(e.msg, "chunk size"),
              "bad chunk: %s", e.msg);
        storage_reader_close(NULL);

        if (write_pattern(disk) < 0) {
                printf("SKIP: cannot write %s\n", disk);
                return 77;
        }
        bool disk_direct = direct_works(disk);
        printf("%s: O_DIRECT %s\n", disk, disk_direct ? "works" : "refused");
        run_file(disk, disk_direct, "disk");
        test_hooks(disk);
        test_hook_pin_fails(disk);

        /* a file that shrinks under an open reader: EOF before the end */
        CHECK(storage_reader_open(disk, NULL, &r, &e) == 0, "open: %s", e.msg);
        if (r) {
                CHECK(truncate(disk, 8192 + 100) == 0, "truncate");
                uint8_t *dst = malloc(FILE_SIZE);
                int ret = storage_reader_read(r, 0, FILE_SIZE, dst, &e);
                CHECK(ret < 0 && strstr(e.msg, "file truncated"), "shrunk file: ret %d '%s'", ret, e.msg);
                ret = storage_reader_read(r, 8000, 200, dst, &e);
                CHECK(ret == 0, "shrunk file, range still inside: %s", e.msg);
                free(dst);
                storage_reader_close(r);
        }
        unlink(disk);

        if (write_pattern(shm) == 0) {
                bool shm_direct = direct_works(shm);
                /* Linux >= 6.6 accepts O_DIRECT on tmpfs; then the buffered fallback shows only
                 * with no_direct (which run_file also covers). */
                printf("%s: O_DIRECT %s\n", shm, shm_direct ? "works (tmpfs with direct IO support)"
                                                            : "refused (buffered fallback)");
                run_file(shm, shm_direct, "tmpfs");
                unlink(shm);
        } else {
                printf("note: /dev/shm not writable, tmpfs case not run\n");
        }

        if (failures) {
                fprintf(stderr, "test-reader: %d failures\n", failures);
                return 1;
        }
        printf("test-reader: all checks passed\n");
        return 0;
}
