/* test-notify — every ctl_notify_* call against a real NOTIFY_SOCKET listener (an AF_UNIX
 * datagram socket made here), checking the exact messages, the watchdog's rate limit, and
 * that nothing is sent without NOTIFY_SOCKET. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "control.h"

static int failures;
static int fd = -1;

#define CHECK(c)                                                                   \
        do {                                                                       \
                if (!(c)) {                                                        \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
                        failures++;                                                \
                }                                                                  \
        } while (0)

/* The next datagram, or "" when none arrives within 500 ms (SO_RCVTIMEO). */
static const char *recv_msg(void)
{
        static char buf[1024];
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = 0;
        return buf;
}

static void expect(int line, const char *want)
{
        const char *got = recv_msg();
        if (strcmp(got, want)) {
                fprintf(stderr, "%s:%d: got '%s', want '%s'\n", __FILE__, line, got, want);
                failures++;
        }
}
#define EXPECT(w) expect(__LINE__, w)

int main(void)
{
        char dir[] = "/tmp/sluice-notify.XXXXXX", path[128], buf[256];
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        snprintf(path, sizeof(path), "%s/notify", dir);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                perror("notify socket");
                return 1;
        }
        struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));

        /* Without NOTIFY_SOCKET: no-ops returning 0. */
        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        CHECK(ctl_notify_init() == 0);
        CHECK(ctl_notify_ready("x") == 0);
        CHECK(ctl_notify_status("x") == 0);
        CHECK(ctl_notify_watchdog() == 0);
        CHECK(ctl_notify_stopping() == 0);

        setenv("NOTIFY_SOCKET", path, 1);
        CHECK(ctl_notify_status("loading model %s: %d%%", "demo.gguf", 40) > 0);
        EXPECT("STATUS=loading model demo.gguf: 40%");
        CHECK(ctl_notify_status("two\nlines") > 0);
        EXPECT("STATUS=two lines");
        CHECK(ctl_notify_extend_timeout(30000000) > 0);
        EXPECT("EXTEND_TIMEOUT_USEC=30000000");
        CHECK(ctl_notify_ready("serving demo on udp 127.0.0.1:7000") > 0);
        EXPECT("READY=1\nSTATUS=serving demo on udp 127.0.0.1:7000");
        CHECK(ctl_notify_ready(NULL) > 0);
        EXPECT("READY=1");

        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        unsigned long long before = (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000;
        CHECK(ctl_notify_reloading() > 0);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        unsigned long long after = (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000;
        const char *m = recv_msg();
        unsigned long long usec = 0;
        CHECK(sscanf(m, "RELOADING=1\nMONOTONIC_USEC=%llu", &usec) == 1);
        snprintf(buf, sizeof(buf), "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
        CHECK(!strcmp(m, buf));
        CHECK(usec >= before && usec <= after);

        CHECK(ctl_notify_stopping() > 0);
        EXPECT("STOPPING=1");

        /* Watchdog off: nothing sent. */
        CHECK(ctl_notify_watchdog() == 0);
        /* Watchdog on (for this pid), 200 ms: one ping per 100 ms however often it is called. */
        snprintf(buf, sizeof(buf), "%d", (int)getpid());
        setenv("WATCHDOG_PID", buf, 1);
        setenv("WATCHDOG_USEC", "200000", 1);
        CHECK(ctl_notify_init() == 200000);
        CHECK(ctl_notify_watchdog() > 0);
        EXPECT("WATCHDOG=1");
        for (int i = 0; i < 1000; i++)
                CHECK(ctl_notify_watchdog() == 0);
        usleep(120000);
        CHECK(ctl_notify_watchdog() > 0);
        EXPECT("WATCHDOG=1");
        /* Nothing else was sent. */
        tv.tv_usec = 50000;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        CHECK(recv(fd, buf, sizeof(buf), 0) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        /* Another process's watchdog settings are not ours. */
        setenv("WATCHDOG_PID", "1", 1);
        CHECK(ctl_notify_init() == 0);

        close(fd);
        unlink(path);
        rmdir(dir);
        if (failures) {
                fprintf(stderr, "test-notify: %d failures\n", failures);
                return 1;
        }
        printf("test-notify: ok\n");
        return 0;
}
