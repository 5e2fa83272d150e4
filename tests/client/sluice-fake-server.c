/* sluice-fake-server — the client tests' fake server as a program, for the CLI tests:
 * `sluice-fake-server [--tcp] [--ipv6] [--mode MODE] [--tokens N] [--port P]` prints the
 * port it bound on stdout, then serves until stdin reaches EOF or 60 s have passed. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_server.h"
#include "sl.h"

int main(int argc, char **argv)
{
        struct fake_opts o = {0};
        unsigned port = 0;
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                if (!strcmp(a, "--tcp"))
                        o.tcp = true;
                else if (!strcmp(a, "--ipv6"))
                        o.ipv6 = true;
                else if (!strcmp(a, "--port") && v)
                        port = (unsigned)atoi(v), i++;
                else if (!strcmp(a, "--tokens") && v)
                        o.n_tokens = (unsigned)atoi(v), i++;
                else if (!strcmp(a, "--mode") && v) {
                        i++;
                        o.mode = !strcmp(v, "busy") ? FAKE_BUSY : !strcmp(v, "error") ? FAKE_ERROR
                               : !strcmp(v, "stall") ? FAKE_STALL : !strcmp(v, "garbage") ? FAKE_GARBAGE
                               : FAKE_NORMAL;
                } else {
                        fprintf(stderr, "usage: sluice-fake-server [--tcp] [--ipv6] [--mode M] [--tokens N] [--port P]\n");
                        return 2;
                }
        }
        struct fake_server *s;
        int rc = fake_server_start(&o, (uint16_t)port, &s);
        if (rc < 0) {
                fprintf(stderr, "sluice-fake-server: %s\n", strerror(-rc));
                return 1;
        }
        printf("%u\n", fake_server_port(s));
        fflush(stdout);
        uint64_t end = sl_now_ns() + 60ull * 1000000000ull;
        while (sl_now_ns() < end) {
                struct pollfd pf = {.fd = 0, .events = POLLIN};
                if (poll(&pf, 1, 100) > 0) {
                        char b[64];
                        if (read(0, b, sizeof(b)) <= 0)
                                break;
                }
        }
        fake_server_stop(s);
        return 0;
}
