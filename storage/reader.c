/* reader.c — streams byte ranges of a file through a few 4096-aligned staging buffers with
 * io_uring: O_DIRECT when the file system allows it, READ_FIXED on registered buffers when
 * the kernel lets us register them, up to queue_depth reads in flight. */
#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage.h"

#define DIO_ALIGN 4096u /* logical block size we align to; covers 512 and 4096 devices */
#define DEFAULT_QUEUE_DEPTH 8u
#define DEFAULT_CHUNK_SIZE (4u << 20)
#define MAX_QUEUE_DEPTH 256u
#define MAX_CHUNK_SIZE (256u << 20)

struct slot {
        uint64_t off;  /* file offset of the chunk (aligned) */
        uint64_t len;  /* bytes asked of the chunk (aligned) */
        uint64_t need; /* bytes of the chunk the caller's range needs (<= len) */
        uint64_t done; /* bytes of the chunk read so far, from its start */
        uint64_t pos;  /* chunk-relative position of the read in flight */
        bool busy;
        bool handed;   /* its data went to the sink: hooks->reuse() before the next read */
};

struct storage_reader {
        int fd;
        bool direct;
        bool fixed; /* buffers registered: reads use READ_FIXED */
        bool ring_ok;
        bool broken; /* an io_uring call failed with reads possibly in flight */
        uint64_t size;
        uint32_t qd;
        uint32_t chunk;
        uint8_t *bufs; /* qd * chunk bytes, 4096-aligned */
        struct slot *slots;
        struct storage_staging_hooks hooks;
        bool has_hooks;
        bool pinned;
        struct io_uring ring;
};

static int open_file(struct storage_reader *r, const char *path, bool try_direct, struct sl_error *err)
{
        r->direct = false;
        if (try_direct) {
                r->fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
                if (r->fd >= 0) {
                        /* Some file systems accept the flag and refuse the first read instead. */
                        ssize_t n = pread(r->fd, r->bufs, DIO_ALIGN, 0);
                        if (n >= 0) {
                                r->direct = true;
                                return 0;
                        }
                        int e = errno;
                        close(r->fd);
                        r->fd = -1;
                        if (e != EINVAL)
                                return sl_errorf(err, -e, "first read: %s", strerror(e));
                } else if (errno != EINVAL) {
                        return sl_errorf(err, -errno, "cannot open: %s", strerror(errno));
                }
        }
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0)
                return sl_errorf(err, -errno, "cannot open: %s", strerror(errno));
        return 0;
}

int storage_reader_open(const char *path, const struct storage_reader_opts *opts,
                        struct storage_reader **out, struct sl_error *err)
{
        struct storage_reader *r;
        struct stat st;
        int ret;

        *out = NULL;
        r = calloc(1, sizeof(*r));
        if (!r)
                return sl_errorf(err, -ENOMEM, "out of memory");
        r->fd = -1;
        r->qd = opts && opts->queue_depth ? opts->queue_depth : DEFAULT_QUEUE_DEPTH;
        r->chunk = opts && opts->chunk_size ? opts->chunk_size : DEFAULT_CHUNK_SIZE;
        if (r->qd > MAX_QUEUE_DEPTH) {
                ret = sl_errorf(err, -EINVAL, "queue depth %u exceeds %u", r->qd, MAX_QUEUE_DEPTH);
                goto fail;
        }
        if (r->chunk % DIO_ALIGN || r->chunk > MAX_CHUNK_SIZE) {
                ret = sl_errorf(err, -EINVAL, "chunk size %u is not a multiple of %u up to %u", r->chunk,
                                DIO_ALIGN, MAX_CHUNK_SIZE);
                goto fail;
        }
        if (posix_memalign((void **)&r->bufs, DIO_ALIGN, (size_t)r->qd * r->chunk) != 0) {
                r->bufs = NULL;
                ret = sl_errorf(err, -ENOMEM, "out of memory for %u staging buffers of %u bytes", r->qd,
                                r->chunk);
                goto fail;
        }
        r->slots = calloc(r->qd, sizeof(*r->slots));
        if (!r->slots) {
                ret = sl_errorf(err, -ENOMEM, "out of memory");
                goto fail;
        }
        ret = open_file(r, path, !(opts && opts->no_direct), err);
        if (ret < 0)
                goto fail;
        if (fstat(r->fd, &st) < 0) {
                ret = sl_errorf(err, -errno, "cannot stat: %s", strerror(errno));
                goto fail;
        }
        if (!S_ISREG(st.st_mode)) {
                ret = sl_errorf(err, -EINVAL, "not a regular file");
                goto fail;
        }
        r->size = (uint64_t)st.st_size;
        if (opts && opts->hooks) {
                r->hooks = *opts->hooks;
                r->has_hooks = true;
                if (r->hooks.pin) {
                        ret = r->hooks.pin(r->hooks.user, r->bufs, (size_t)r->qd * r->chunk);
                        if (ret < 0) {
                                ret = sl_errorf(err, ret, "cannot pin %u staging buffers of %u bytes", r->qd,
                                                r->chunk);
                                goto fail;
                        }
                        r->pinned = true;
                }
        }
        ret = io_uring_queue_init(r->qd, &r->ring, 0);
        if (ret < 0) {
                ret = sl_errorf(err, ret, "io_uring setup: %s", strerror(-ret));
                goto fail;
        }
        r->ring_ok = true;

        /* Registration pins the pages; with a low RLIMIT_MEMLOCK it fails and plain reads
         * into the same buffers still work. */
        struct iovec *iov = calloc(r->qd, sizeof(*iov));
        if (iov) {
                for (uint32_t i = 0; i < r->qd; i++) {
                        iov[i].iov_base = r->bufs + (size_t)i * r->chunk;
                        iov[i].iov_len = r->chunk;
                }
                r->fixed = io_uring_register_buffers(&r->ring, iov, r->qd) == 0;
                free(iov);
        }
        *out = r;
        return 0;
fail:
        storage_reader_close(r);
        return ret;
}

void storage_reader_close(struct storage_reader *r)
{
        if (!r)
                return;
        if (r->ring_ok) {
                if (r->fixed)
                        io_uring_unregister_buffers(&r->ring);
                io_uring_queue_exit(&r->ring);
        }
        if (r->fd >= 0)
                close(r->fd);
        if (r->pinned && r->hooks.unpin)
                r->hooks.unpin(r->hooks.user, r->bufs);
        free(r->slots);
        free(r->bufs);
        free(r);
}

bool storage_reader_is_direct(const struct storage_reader *r)
{
        return r && r->direct;
}

bool storage_reader_uses_fixed_buffers(const struct storage_reader *r)
{
        return r && r->fixed;
}

/* ---- streaming ---- */

static int submit_slot(struct storage_reader *r, uint32_t i)
{
        struct slot *s = &r->slots[i];
        struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
        if (!sqe) {
                /* the ring has qd entries and at most qd reads in flight; flush and retry */
                int ret = io_uring_submit(&r->ring);
                if (ret < 0)
                        return ret;
                sqe = io_uring_get_sqe(&r->ring);
                if (!sqe)
                        return -EBUSY;
        }
        uint8_t *buf = r->bufs + (size_t)i * r->chunk + s->pos;
        unsigned n = (unsigned)(s->len - s->pos);
        if (r->fixed)
                io_uring_prep_read_fixed(sqe, r->fd, buf, n, s->off + s->pos, (int)i);
        else
                io_uring_prep_read(sqe, r->fd, buf, n, s->off + s->pos);
        io_uring_sqe_set_data64(sqe, i);
        s->busy = true;
        return 0;
}

/* Handles one completion. Returns 1 when the slot finished (data delivered), 0 when it was
 * resubmitted, < 0 on error. */
static int complete_slot(struct storage_reader *r, uint32_t i, int res, uint64_t off, uint64_t end,
                         storage_sink_fn sink, void *user, struct sl_error *err)
{
        struct slot *s = &r->slots[i];

        if (res == -EINTR || res == -EAGAIN)
                return submit_slot(r, i);
        if (res < 0)
                return sl_errorf(err, res, "read of %llu bytes at offset %llu: %s",
                                 (unsigned long long)(s->len - s->pos),
                                 (unsigned long long)(s->off + s->pos), strerror(-res));
        uint64_t reached = s->pos + (uint64_t)res;
        if (res == 0 || reached <= s->done) {
                if (s->done >= s->need)
                        goto deliver;
                return sl_errorf(err, -EIO, "file truncated: end of file at offset %llu, wanted data up to %llu",
                                 (unsigned long long)(s->off + s->done), (unsigned long long)end);
        }
        s->done = reached;
        if (s->done < s->need) {
                /* Short read: continue where it stopped. O_DIRECT needs an aligned offset, so
                 * re-read from the block boundary; a read that brings no progress is EOF. */
                s->pos = r->direct ? s->done / DIO_ALIGN * DIO_ALIGN : s->done;
                return submit_slot(r, i);
        }
deliver:;
        uint64_t from = SL_MAX(off, s->off);
        uint64_t to = SL_MIN(end, s->off + s->done);
        s->busy = false;
        s->handed = true;
        int ret = sink(user, from, r->bufs + (size_t)i * r->chunk + (from - s->off), (size_t)(to - from));
        if (ret < 0)
                return sl_errorf(err, ret, "sink failed at offset %llu", (unsigned long long)from);
        return 1;
}

int storage_reader_buffer_index(const struct storage_reader *r, const void *data)
{
        const uint8_t *p = data;
        if (!r || p < r->bufs || p >= r->bufs + (size_t)r->qd * r->chunk)
                return -1;
        return (int)((size_t)(p - r->bufs) / r->chunk);
}

int storage_reader_stream(struct storage_reader *r, uint64_t off, uint64_t len,
                          storage_sink_fn sink, void *user, struct sl_error *err)
{
        uint64_t end, next, aend;
        uint32_t inflight = 0;
        int ret = 0;

        if (sl_add_u64(off, len, &end) || end > r->size)
                return sl_errorf(err, -EINVAL, "range [%llu, %llu) past end of file (%llu bytes)",
                                 (unsigned long long)off, (unsigned long long)(off + len),
                                 (unsigned long long)r->size);
        if (r->broken)
                return sl_errorf(err, -EIO, "reader unusable after an earlier io_uring failure");
        if (len == 0)
                return 0;
        next = off / DIO_ALIGN * DIO_ALIGN;
        aend = SL_ALIGN_UP(end, (uint64_t)DIO_ALIGN);
        for (uint32_t i = 0; i < r->qd; i++) {
                r->slots[i].busy = false;
                r->slots[i].handed = false;
        }

        for (;;) {
                /* fill free slots with the next chunks */
                for (uint32_t i = 0; ret == 0 && i < r->qd && next < aend; i++) {
                        struct slot *s = &r->slots[i];
                        if (s->busy)
                                continue;
                        if (s->handed && r->has_hooks && r->hooks.reuse) {
                                int e = r->hooks.reuse(r->hooks.user, i);
                                if (e < 0) {
                                        ret = sl_errorf(err, e, "waiting for staging buffer %u", i);
                                        break;
                                }
                        }
                        s->handed = false;
                        s->off = next;
                        s->len = SL_MIN((uint64_t)r->chunk, aend - next);
                        s->need = SL_MIN(s->off + s->len, end) - s->off;
                        s->done = 0;
                        s->pos = 0;
                        int e = submit_slot(r, i);
                        if (e < 0) {
                                ret = sl_errorf(err, e, "io_uring submit: %s", strerror(-e));
                                break;
                        }
                        inflight++;
                        next += s->len;
                }
                if (inflight == 0)
                        break;
                int e = io_uring_submit(&r->ring);
                if (e < 0) {
                        /* which reads went out is unknown now, so the staging buffers may
                         * still be written to: retire the reader rather than reuse them */
                        r->broken = true;
                        return sl_errorf(err, e, "io_uring submit: %s", strerror(-e));
                }

                struct io_uring_cqe *cqe;
                e = io_uring_wait_cqe(&r->ring, &cqe);
                if (e == -EINTR)
                        continue;
                if (e < 0) {
                        r->broken = true;
                        return sl_errorf(err, e, "io_uring wait: %s", strerror(-e));
                }
                unsigned head, seen = 0;
                io_uring_for_each_cqe(&r->ring, head, cqe) {
                        uint32_t i = (uint32_t)io_uring_cqe_get_data64(cqe);
                        int res = cqe->res;
                        seen++;
                        if (i >= r->qd)
                                continue;
                        if (ret < 0) { /* draining after an error */
                                r->slots[i].busy = false;
                                inflight--;
                                continue;
                        }
                        int c = complete_slot(r, i, res, off, end, sink, user, err);
                        if (c != 0) {
                                r->slots[i].busy = false;
                                inflight--;
                        }
                        if (c < 0)
                                ret = c;
                }
                io_uring_cq_advance(&r->ring, seen);
        }
        return ret;
}

struct read_ctx {
        uint8_t *dst;
        uint64_t off;
};

static int read_sink(void *user, uint64_t file_off, const void *data, size_t len)
{
        struct read_ctx *c = user;
        memcpy(c->dst + (file_off - c->off), data, len);
        return 0;
}

int storage_reader_read(struct storage_reader *r, uint64_t off, uint64_t len, void *dst,
                        struct sl_error *err)
{
        struct read_ctx c = { .dst = dst, .off = off };
        return storage_reader_stream(r, off, len, read_sink, &c, err);
}
