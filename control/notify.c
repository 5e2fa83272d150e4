/* notify.c — systemd's notification protocol through libsystemd's sd_notify: READY,
 * STATUS, EXTEND_TIMEOUT_USEC, a rate-limited WATCHDOG for the engine loop, RELOADING with
 * MONOTONIC_USEC, STOPPING. Without NOTIFY_SOCKET every call is a no-op returning 0. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "control.h"

static uint64_t watchdog_usec;      /* set once by ctl_notify_init() */
static uint64_t watchdog_last_ns;   /* relaxed atomic: the engine thread owns the pings */

static uint64_t mono_usec(void)
{
        return sl_now_ns() / 1000;
}

uint64_t ctl_notify_init(void)
{
        uint64_t usec = 0;
        if (sd_watchdog_enabled(0, &usec) <= 0)
                usec = 0;
        watchdog_usec = usec;
        __atomic_store_n(&watchdog_last_ns, 0, __ATOMIC_RELAXED);
        return usec;
}

/* A STATUS= text is one line: a newline would start a new assignment. */
static void one_line(char *s)
{
        for (; *s; s++)
                if (*s == '\n' || *s == '\r')
                        *s = ' ';
}

int ctl_notify_ready(const char *status)
{
        char msg[512];
        if (!status)
                return sd_notify(0, "READY=1");
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
        one_line(msg + strlen("READY=1\n"));
        return sd_notify(0, msg);
}

int ctl_notify_status(const char *fmt, ...)
{
        char msg[512];
        va_list ap;
        memcpy(msg, "STATUS=", 7);
        va_start(ap, fmt);
        vsnprintf(msg + 7, sizeof(msg) - 7, fmt, ap);
        va_end(ap);
        one_line(msg + 7);
        return sd_notify(0, msg);
}

int ctl_notify_extend_timeout(uint64_t usec)
{
        return sd_notifyf(0, "EXTEND_TIMEOUT_USEC=%llu", (unsigned long long)usec);
}

int ctl_notify_watchdog(void)
{
        if (!watchdog_usec)
                return 0;
        uint64_t now = sl_now_ns(), last = __atomic_load_n(&watchdog_last_ns, __ATOMIC_RELAXED);
        if (last && now - last < watchdog_usec * 1000 / 2)
                return 0;
        __atomic_store_n(&watchdog_last_ns, now, __ATOMIC_RELAXED);
        return sd_notify(0, "WATCHDOG=1");
}

int ctl_notify_reloading(void)
{
        return sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)mono_usec());
}

int ctl_notify_stopping(void)
{
        return sd_notify(0, "STOPPING=1");
}
