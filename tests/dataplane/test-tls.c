/* test-tls — the TCP transport's TLS sessions (dataplane/tls.c) against an OpenSSL client over
 * memory BIOs, with certificates made here: the context refuses missing files and a key of
 * another certificate with the reason; a client that trusts the CA completes a TLS 1.3
 * handshake and data goes both ways; a client that trusts another CA, checks another name, or
 * offers only TLS 1.2 fails, on both sides; mutual TLS refuses a client without a
 * certificate. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "dataplane.h"
#include "transport.h"

static int failures;

#define CHECK(c)                                                                   \
        do {                                                                       \
                if (!(c)) {                                                        \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
                        failures++;                                                \
                }                                                                  \
        } while (0)

static char dir[64];

struct pair {
        EVP_PKEY *key;
        X509 *crt;
};

static void add_ext(X509 *crt, X509 *issuer, int nid, const char *value)
{
        X509V3_CTX ctx;
        X509V3_set_ctx(&ctx, issuer, crt, NULL, NULL, 0);
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
        X509_add_ext(crt, e, -1);
        X509_EXTENSION_free(e);
}

/* A P-256 key and a certificate for cn, signed by ca (NULL: self-signed, a CA). */
static struct pair make(const char *cn, const struct pair *ca, const char *san)
{
        struct pair p = {EVP_EC_gen("P-256"), X509_new()};
        static long serial = 1;
        X509_set_version(p.crt, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(p.crt), serial++);
        X509_gmtime_adj(X509_getm_notBefore(p.crt), -60);
        X509_gmtime_adj(X509_getm_notAfter(p.crt), 3600);
        X509_set_pubkey(p.crt, p.key);
        X509_NAME *n = X509_get_subject_name(p.crt);
        X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
        X509_set_issuer_name(p.crt, ca ? X509_get_subject_name(ca->crt) : n);
        X509 *issuer = ca ? ca->crt : p.crt;
        if (!ca) {
                add_ext(p.crt, issuer, NID_basic_constraints, "critical,CA:TRUE");
                add_ext(p.crt, issuer, NID_key_usage, "critical,keyCertSign");
        } else {
                add_ext(p.crt, issuer, NID_basic_constraints, "CA:FALSE");
                add_ext(p.crt, issuer, NID_subject_alt_name, san);
        }
        X509_sign(p.crt, ca ? ca->key : p.key, EVP_sha256());
        return p;
}

static void write_pem(const char *name, const struct pair *p, bool key)
{
        char path[128];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        if (key)
                PEM_write_PrivateKey(f, p->key, NULL, NULL, 0, NULL, NULL);
        else
                PEM_write_X509(f, p->crt);
        fclose(f);
}

static const char *path_of(const char *name)
{
        static char buf[4][128];
        static int i;
        i = (i + 1) % 4;
        snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
        return buf[i];
}

/* Runs a handshake between s (the server's session) and a client on memory BIOs, moving
 * bytes both ways until both stop. Returns the server's result (1, or a negative errno) and
 * the client's in *client_ok. */
static int handshake(struct dpt_tls *s, SSL *cl, bool *client_ok, struct sl_error *err)
{
        BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(c_in, -1);
        SSL_set_bio(cl, c_in, c_out);
        SSL_set_connect_state(cl);
        int sr = 0, cr = 0;
        uint8_t buf[65536];
        for (int round = 0; round < 20; round++) {
                if (cr != 1)
                        cr = SSL_do_handshake(cl);
                size_t n;
                while ((n = (size_t)BIO_read(c_out, buf, sizeof(buf))) > 0 && n <= sizeof(buf))
                        dpt_tls_feed(s, buf, n);
                if (sr == 0)
                        sr = dpt_tls_handshake(s, err);
                while ((n = dpt_tls_out_take(s, buf, sizeof(buf))) > 0)
                        BIO_write(c_in, buf, (int)n);
                if (sr != 0 && (cr == 1 || SSL_get_error(cl, cr) != SSL_ERROR_WANT_READ))
                        break;
        }
        if (cr != 1)
                cr = SSL_do_handshake(cl);
        *client_ok = cr == 1;
        ERR_clear_error();
        return sr;
}

static SSL_CTX *client_ctx(const char *ca, int max_version)
{
        SSL_CTX *c = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
        SSL_CTX_load_verify_locations(c, ca, NULL);
        if (max_version)
                SSL_CTX_set_max_proto_version(c, max_version);
        return c;
}

static void test_ctx_errors(void)
{
        struct dp_tls_ctx *t = NULL;
        struct sl_error err = {{0}};
        CHECK(dp_tls_ctx_create(&t, path_of("nope.pem"), path_of("server.key"), NULL, &err) == -EINVAL && !t);
        CHECK(strstr(err.msg, "certificate ") && strstr(err.msg, "nope.pem"));
        CHECK(dp_tls_ctx_create(&t, path_of("server.pem"), path_of("other.key"), NULL, &err) == -EINVAL);
        CHECK(strstr(err.msg, "does not belong to certificate"));
        CHECK(dp_tls_ctx_create(&t, path_of("server.pem"), path_of("server.key"), path_of("nope.pem"), &err) == -EINVAL);
        CHECK(strstr(err.msg, "client CA "));
        CHECK(dp_tls_ctx_create(&t, "", path_of("server.key"), NULL, &err) == -EINVAL);
        CHECK(dp_tls_ctx_create(&t, path_of("server.pem"), path_of("server.key"), NULL, &err) == 0 && t);
        dp_tls_ctx_free(t);
        dp_tls_ctx_free(NULL);
        dpt_tls_free(NULL);
}

/* One client against a fresh server session: want_ok says whether both should succeed. */
static void one(struct dp_tls_ctx *t, SSL_CTX *cc, const char *host, bool with_cert, bool want_ok, int want_err)
{
        struct sl_error err = {{0}};
        struct dpt_tls *s = dpt_tls_accept(t);
        SSL *cl = SSL_new(cc);
        if (host)
                SSL_set1_host(cl, host);
        if (with_cert) {
                SSL_use_certificate_file(cl, path_of("client.pem"), SSL_FILETYPE_PEM);
                SSL_use_PrivateKey_file(cl, path_of("client.key"), SSL_FILETYPE_PEM);
        }
        bool cok = false;
        int sr = handshake(s, cl, &cok, &err);
        if (want_ok) {
                CHECK(sr == 1 && cok && dpt_tls_established(s));
                if (sr != 1)
                        fprintf(stderr, "  server: %s\n", err.msg);
                CHECK(SSL_version(cl) == TLS1_3_VERSION);
                /* a frame each way */
                uint8_t buf[4096], got[8192];
                for (size_t i = 0; i < sizeof(buf); i++)
                        buf[i] = (uint8_t)(i * 7);
                CHECK(dpt_tls_write(s, buf, sizeof(buf)) == (long)sizeof(buf));
                size_t n = dpt_tls_out_take(s, got, sizeof(got));
                CHECK(n > sizeof(buf) && dpt_tls_out_pending(s) == 0);
                BIO_write(SSL_get_rbio(cl), got, (int)n);
                size_t r = 0;
                CHECK(SSL_read_ex(cl, got, sizeof(got), &r) == 1 && r == sizeof(buf) && !memcmp(got, buf, r));
                CHECK(SSL_write_ex(cl, "hello", 5, &r) == 1);
                n = (size_t)BIO_read(SSL_get_wbio(cl), got, sizeof(got));
                CHECK(dpt_tls_read(s, buf, sizeof(buf), &err) == 0); /* nothing fed yet */
                dpt_tls_feed(s, got, n);
                CHECK(dpt_tls_read(s, buf, sizeof(buf), &err) == 5 && !memcmp(buf, "hello", 5));
                /* the client closes: the server reads the end */
                SSL_shutdown(cl);
                n = (size_t)BIO_read(SSL_get_wbio(cl), got, sizeof(got));
                dpt_tls_feed(s, got, n);
                CHECK(dpt_tls_read(s, buf, sizeof(buf), &err) == -EPIPE);
        } else {
                CHECK(sr < 0);
                if (want_err)
                        CHECK(sr == want_err);
                CHECK(err.msg[0]);
        }
        ERR_clear_error();
        SSL_free(cl);
        dpt_tls_free(s);
}

int main(void)
{
        snprintf(dir, sizeof(dir), "/tmp/sluice-test-tls.XXXXXX");
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        struct pair ca = make("test ca", NULL, NULL), other = make("other ca", NULL, NULL);
        struct pair srv = make("server", &ca, "DNS:localhost,IP:127.0.0.1");
        struct pair client = make("client", &ca, "DNS:client");
        write_pem("ca.pem", &ca, false);
        write_pem("other.pem", &other, false);
        write_pem("other.key", &other, true);
        write_pem("server.pem", &srv, false);
        write_pem("server.key", &srv, true);
        write_pem("client.pem", &client, false);
        write_pem("client.key", &client, true);

        test_ctx_errors();

        struct sl_error err = {{0}};
        struct dp_tls_ctx *t = NULL;
        CHECK(dp_tls_ctx_create(&t, path_of("server.pem"), path_of("server.key"), NULL, &err) == 0);
        SSL_CTX *good = client_ctx(path_of("ca.pem"), 0), *wrong = client_ctx(path_of("other.pem"), 0);
        SSL_CTX *old = client_ctx(path_of("ca.pem"), TLS1_2_VERSION);
        one(t, good, "localhost", false, true, 0);
        one(t, wrong, "localhost", false, false, 0);     /* the client refuses; its alert ends the server's */
        one(t, good, "sluice.example", false, false, 0); /* a name the certificate does not carry */
        one(t, old, NULL, false, false, -EPROTO);        /* TLS 1.2 only */
        dp_tls_ctx_free(t);

        CHECK(dp_tls_ctx_create(&t, path_of("server.pem"), path_of("server.key"), path_of("ca.pem"), &err) == 0);
        one(t, good, "localhost", true, true, 0);
        one(t, good, "localhost", false, false, -EKEYREJECTED);
        dp_tls_ctx_free(t);

        SSL_CTX_free(good);
        SSL_CTX_free(wrong);
        SSL_CTX_free(old);
        struct pair *all[] = {&ca, &other, &srv, &client};
        for (size_t i = 0; i < 4; i++) {
                EVP_PKEY_free(all[i]->key);
                X509_free(all[i]->crt);
        }
        const char *files[] = {"ca.pem", "other.pem", "other.key", "server.pem", "server.key", "client.pem", "client.key"};
        for (size_t i = 0; i < 7; i++)
                unlink(path_of(files[i]));
        rmdir(dir);
        if (failures) {
                fprintf(stderr, "test-tls: %d failures\n", failures);
                return 1;
        }
        printf("test-tls: ok\n");
        return 0;
}
