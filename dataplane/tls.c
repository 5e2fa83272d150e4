/* tls.c — TLS 1.3 for the TCP transport (OpenSSL): the server's context (certificate, key,
 * optional client CA for mutual TLS) and one session per connection over a pair of memory
 * BIOs, so that tcp.c keeps doing all socket I/O through its io_uring: ciphertext it
 * receives is fed in, plaintext frames go out through SSL_write and the ciphertext is taken
 * back to send. Nothing here blocks, sleeps or prints. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "dataplane.h"
#include "transport.h"

struct dp_tls_ctx {
        SSL_CTX *ssl;
};

struct dpt_tls {
        SSL *ssl;
        BIO *rbio, *wbio;       /* network -> SSL, SSL -> network (owned by ssl) */
};

/* The first error OpenSSL queued, as text, and the queue emptied (it is per thread). */
static const char *ssl_reason(char *buf, size_t cap)
{
        unsigned long e = ERR_get_error();
        if (!e)
                snprintf(buf, cap, "unknown error");
        else
                ERR_error_string_n(e, buf, cap);
        const char *r = ERR_reason_error_string(e);
        if (r)
                snprintf(buf, cap, "%s", r);
        ERR_clear_error();
        return buf;
}

/* ---- the server's context ---- */

int dp_tls_ctx_create(struct dp_tls_ctx **out, const char *cert, const char *key, const char *client_ca,
                      struct sl_error *err)
{
        char why[256];
        int r = -EINVAL;
        *out = NULL;
        ERR_clear_error();
        if (!cert || !cert[0] || !key || !key[0])
                return sl_errorf(err, -EINVAL, "a certificate and a private key are required");
        struct dp_tls_ctx *t = calloc(1, sizeof(*t));
        if (!t)
                return sl_errorf(err, -ENOMEM, "out of memory");
        t->ssl = SSL_CTX_new(TLS_server_method());
        if (!t->ssl) {
                r = sl_errorf(err, -ENOMEM, "SSL_CTX_new: %s", ssl_reason(why, sizeof(why)));
                goto fail;
        }
        /* TLS 1.3 only; no resumption (no tickets to send, no session cache to bound) */
        SSL_CTX_set_min_proto_version(t->ssl, TLS1_3_VERSION);
        SSL_CTX_set_max_proto_version(t->ssl, TLS1_3_VERSION);
        SSL_CTX_set_num_tickets(t->ssl, 0);
        SSL_CTX_set_session_cache_mode(t->ssl, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
        if (SSL_CTX_use_certificate_chain_file(t->ssl, cert) != 1) {
                r = sl_errorf(err, -EINVAL, "certificate %s: %s", cert, ssl_reason(why, sizeof(why)));
                goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(t->ssl, key, SSL_FILETYPE_PEM) != 1 &&
            ERR_GET_REASON(ERR_peek_error()) != X509_R_KEY_VALUES_MISMATCH) {
                r = sl_errorf(err, -EINVAL, "private key %s: %s", key, ssl_reason(why, sizeof(why)));
                goto fail;
        }
        if (SSL_CTX_check_private_key(t->ssl) != 1) {
                r = sl_errorf(err, -EINVAL, "private key %s does not belong to certificate %s", key, cert);
                ERR_clear_error();
                goto fail;
        }
        if (client_ca && client_ca[0]) {
                STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
                if (SSL_CTX_load_verify_locations(t->ssl, client_ca, NULL) != 1 || !names) {
                        sk_X509_NAME_pop_free(names, X509_NAME_free);
                        r = sl_errorf(err, -EINVAL, "client CA %s: %s", client_ca, ssl_reason(why, sizeof(why)));
                        goto fail;
                }
                SSL_CTX_set_client_CA_list(t->ssl, names);
                SSL_CTX_set_verify(t->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        }
        *out = t;
        return 0;
fail:
        dp_tls_ctx_free(t);
        return r;
}

void dp_tls_ctx_free(struct dp_tls_ctx *t)
{
        if (!t)
                return;
        SSL_CTX_free(t->ssl);
        free(t);
}

/* ---- sessions ---- */

struct dpt_tls *dpt_tls_accept(struct dp_tls_ctx *ctx)
{
        struct dpt_tls *s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->ssl = SSL_new(ctx->ssl);
        s->rbio = BIO_new(BIO_s_mem());
        s->wbio = BIO_new(BIO_s_mem());
        if (!s->ssl || !s->rbio || !s->wbio) {
                BIO_free(s->rbio);
                BIO_free(s->wbio);
                SSL_free(s->ssl);
                free(s);
                ERR_clear_error();
                return NULL;
        }
        /* an empty memory BIO reads as "retry", not as end of file */
        BIO_set_mem_eof_return(s->rbio, -1);
        SSL_set_bio(s->ssl, s->rbio, s->wbio);
        SSL_set_accept_state(s->ssl);
        return s;
}

void dpt_tls_free(struct dpt_tls *s)
{
        if (!s)
                return;
        SSL_free(s->ssl); /* frees both BIOs */
        free(s);
}

int dpt_tls_feed(struct dpt_tls *s, const void *p, size_t n)
{
        if (n > INT32_MAX || BIO_write(s->rbio, p, (int)n) != (int)n) {
                ERR_clear_error();
                return -ENOMEM;
        }
        return 0;
}

/* A failed operation's reason: the peer's alert, a bad record, a verify failure. */
static int session_error(struct dpt_tls *s, int rc, const char *what, struct sl_error *err)
{
        char why[256];
        int e = SSL_get_error(s->ssl, rc);
        if (e == SSL_ERROR_ZERO_RETURN) {
                ERR_clear_error();
                return sl_errorf(err, -EPIPE, "%s: the peer closed the TLS session", what);
        }
        if (ERR_GET_REASON(ERR_peek_error()) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
                ERR_clear_error();
                return sl_errorf(err, -EKEYREJECTED, "%s: the client sent no certificate", what);
        }
        long v = SSL_get_verify_result(s->ssl);
        if (v != X509_V_OK) {
                ERR_clear_error();
                return sl_errorf(err, -EKEYREJECTED, "%s: client certificate: %s", what,
                                 X509_verify_cert_error_string(v));
        }
        if (e == SSL_ERROR_SSL && ERR_peek_error())
                return sl_errorf(err, -EPROTO, "%s: %s", what, ssl_reason(why, sizeof(why)));
        ERR_clear_error();
        return sl_errorf(err, -EPROTO, "%s failed (error %d)", what, e);
}

int dpt_tls_handshake(struct dpt_tls *s, struct sl_error *err)
{
        if (SSL_is_init_finished(s->ssl))
                return 1;
        int rc = SSL_do_handshake(s->ssl);
        if (rc == 1)
                return 1;
        int e = SSL_get_error(s->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return 0;
        return session_error(s, rc, "TLS handshake", err);
}

long dpt_tls_read(struct dpt_tls *s, void *buf, size_t cap, struct sl_error *err)
{
        size_t got = 0;
        int rc = SSL_read_ex(s->ssl, buf, cap, &got);
        if (rc == 1)
                return (long)got;
        int e = SSL_get_error(s->ssl, rc);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return 0;
        return session_error(s, rc, "TLS read", err);
}

long dpt_tls_write(struct dpt_tls *s, const void *p, size_t n)
{
        size_t put = 0;
        if (SSL_write_ex(s->ssl, p, n, &put) == 1)
                return (long)put;
        ERR_clear_error();
        return -EIO; /* memory BIOs never ask to retry a write: the session is broken */
}

size_t dpt_tls_out_pending(const struct dpt_tls *s)
{
        return BIO_ctrl_pending(s->wbio);
}

size_t dpt_tls_out_take(struct dpt_tls *s, void *buf, size_t cap)
{
        int n = BIO_read(s->wbio, buf, (int)SL_MIN(cap, (size_t)INT32_MAX));
        return n > 0 ? (size_t)n : 0;
}

bool dpt_tls_established(const struct dpt_tls *s)
{
        return SSL_is_init_finished(s->ssl);
}

void dpt_tls_close(struct dpt_tls *s)
{
        if (SSL_is_init_finished(s->ssl))
                SSL_shutdown(s->ssl); /* queues close_notify; the answer is not awaited */
        ERR_clear_error();
}
