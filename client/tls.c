/* tls.c — libsluice's TLS 1.3 (OpenSSL) on a TCP connection: the handshake inside
 * sluice_connect (the server's certificate checked against the given CA or the system's,
 * and against the server's name or address), then the receive thread's reads and the
 * senders' writes through one session, serialized by tls_mu on the non-blocking socket. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "client.h"

static const char *ssl_reason(char *buf, size_t cap)
{
        unsigned long e = ERR_get_error();
        const char *r = e ? ERR_reason_error_string(e) : NULL;
        snprintf(buf, cap, "%s", r ? r : e ? "OpenSSL error" : "no reason given");
        ERR_clear_error();
        return buf;
}

/* Waits for what OpenSSL asked for, until end_ns. 0, or -ETIMEDOUT / -errno. */
static int wait_io(int fd, int want, uint64_t end_ns)
{
        uint64_t now = sl_now_ns();
        if (now >= end_ns)
                return -ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = want == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN};
        int n = poll(&pf, 1, (int)((end_ns - now) / 1000000ull) + 1);
        return n < 0 && errno != EINTR ? -errno : 0;
}

static bool is_ip(const char *s)
{
        unsigned char b[16];
        return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

int sluice_tls_open(struct sluice_conn *c, char *why, size_t why_len)
{
        const struct sluice_opts *o = &c->o;
        const char *name = o->tls_server_name && o->tls_server_name[0] ? o->tls_server_name : o->host;
        char r[160];
        int rc;
        SSL *ssl = NULL;
        SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx) {
                snprintf(why, why_len, "TLS: %s", ssl_reason(r, sizeof(r)));
                return -ENOMEM;
        }
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        /* the server closes without close_notify when it must (a framing error): an end */
        SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
        if (o->tls_ca ? SSL_CTX_load_verify_locations(ctx, o->tls_ca, NULL) != 1
                      : SSL_CTX_set_default_verify_paths(ctx) != 1) {
                snprintf(why, why_len, "TLS CA %s: %s", o->tls_ca ? o->tls_ca : "(the system's)",
                         ssl_reason(r, sizeof(r)));
                rc = -EINVAL;
                goto fail;
        }
        if (o->tls_cert && (SSL_CTX_use_certificate_chain_file(ctx, o->tls_cert) != 1 ||
                            SSL_CTX_use_PrivateKey_file(ctx, o->tls_key ? o->tls_key : o->tls_cert,
                                                        SSL_FILETYPE_PEM) != 1 ||
                            SSL_CTX_check_private_key(ctx) != 1)) {
                snprintf(why, why_len, "TLS client certificate %s: %s", o->tls_cert, ssl_reason(r, sizeof(r)));
                rc = -EINVAL;
                goto fail;
        }
        /* the Finished flight and the first frame leave back to back: without this, Nagle
         * holds the frame until the server's delayed ACK (40 ms on Linux) */
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        ssl = SSL_new(ctx);
        if (!ssl || SSL_set_fd(ssl, c->fd) != 1) {
                snprintf(why, why_len, "TLS: %s", ssl_reason(r, sizeof(r)));
                rc = -ENOMEM;
                goto fail;
        }
        SSL_set_mode(ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (is_ip(name)) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name);
        } else {
                SSL_set_tlsext_host_name(ssl, name);
                SSL_set1_host(ssl, name);
        }
        uint64_t end = sl_now_ns() + (uint64_t)o->connect_timeout_ms * 1000000ull;
        for (;;) {
                int n = SSL_connect(ssl);
                if (n == 1)
                        break;
                int e = SSL_get_error(ssl, n);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                        if ((rc = wait_io(c->fd, e, end)) < 0) {
                                snprintf(why, why_len, "TLS handshake with %s: %s", c->peer,
                                         rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
                                goto fail;
                        }
                        continue;
                }
                long v = SSL_get_verify_result(ssl);
                if (v != X509_V_OK) {
                        snprintf(why, why_len, "TLS: the certificate of %s is not accepted for '%s': %s", c->peer,
                                 name, X509_verify_cert_error_string(v));
                        ERR_clear_error();
                        rc = -EKEYREJECTED;
                } else if (e == SSL_ERROR_SSL && ERR_peek_error()) {
                        const char *rs = ssl_reason(r, sizeof(r));
                        snprintf(why, why_len, "TLS handshake with %s failed: %s%s", c->peer, rs,
                                 strstr(rs, "wrong version") || strstr(rs, "packet length")
                                         ? " (does the server speak TLS on this port?)" : "");
                        rc = -EPROTO;
                } else {
                        snprintf(why, why_len, "%s closed the connection during the TLS handshake", c->peer);
                        ERR_clear_error();
                        rc = -ECONNRESET;
                }
                goto fail;
        }
        SSL_CTX_free(ctx); /* the session keeps its reference */
        c->ssl = ssl;
        return 0;
fail:
        SSL_free(ssl);
        SSL_CTX_free(ctx);
        return rc;
}

ssize_t sluice_tls_recv(struct sluice_conn *c, void *buf, size_t cap)
{
        size_t got = 0;
        pthread_mutex_lock(&c->tls_mu);
        int n = SSL_read_ex(c->ssl, buf, cap, &got);
        int e = n == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_SSL) /* e.g. the server's alert: it wants a client certificate */
                snprintf(c->tls_why, sizeof(c->tls_why), "TLS: %s", ssl_reason((char[96]){0}, 96));
        else if (e != SSL_ERROR_NONE)
                ERR_clear_error();
        pthread_mutex_unlock(&c->tls_mu);
        switch (e) {
        case SSL_ERROR_NONE:
                return (ssize_t)got;
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE:
                errno = EAGAIN;
                return -1;
        case SSL_ERROR_ZERO_RETURN:
                return 0;
        case SSL_ERROR_SYSCALL:
                if (errno == 0)
                        return 0;
                return -1;
        default:
                errno = EPROTO;
                return -1;
        }
}

int sluice_tls_send(struct sluice_conn *c, const uint8_t *p, size_t len, uint64_t end_ns)
{
        while (len) {
                size_t put = 0;
                pthread_mutex_lock(&c->tls_mu);
                int n = SSL_write_ex(c->ssl, p, len, &put);
                int e = n == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
                int sys = errno;
                if (e != SSL_ERROR_NONE)
                        ERR_clear_error();
                pthread_mutex_unlock(&c->tls_mu);
                if (e == SSL_ERROR_NONE) {
                        p += put, len -= put;
                        continue;
                }
                if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) {
                        /* The server may have refused the session after the handshake (TLS 1.3
                         * reports a missing or untrusted client certificate only then) and
                         * closed: its alert is on the socket. Read it for the reason. */
                        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
                        char tmp[256];
                        pthread_mutex_lock(&c->tls_mu);
                        bool why = c->tls_why[0] != 0; /* the receive thread may have read it */
                        pthread_mutex_unlock(&c->tls_mu);
                        if (!why && poll(&pf, 1, 500) == 1)
                                (void)sluice_tls_recv(c, tmp, sizeof(tmp));
                        pthread_mutex_lock(&c->tls_mu);
                        why = c->tls_why[0] != 0;
                        pthread_mutex_unlock(&c->tls_mu);
                        if (why)
                                return -EPROTO;
                        return e == SSL_ERROR_SYSCALL && sys ? -sys : -EPIPE;
                }
                if (e == SSL_ERROR_WANT_READ) { /* the receive thread reads the socket: a moment */
                        if (sl_now_ns() >= end_ns)
                                return -ETIMEDOUT;
                        usleep(1000);
                        continue;
                }
                int rc = wait_io(c->fd, e, end_ns);
                if (rc < 0)
                        return rc;
        }
        return 0;
}

void sluice_tls_free(struct sluice_conn *c)
{
        if (!c->ssl)
                return;
        SSL_shutdown(c->ssl); /* close_notify, best effort; the answer is not awaited */
        ERR_clear_error();
        SSL_free(c->ssl);
        c->ssl = NULL;
}
