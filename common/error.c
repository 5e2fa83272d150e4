/* error.c — struct sl_error formatting. */
#include <stdio.h>
#include <time.h>

#include "sl.h"

int sl_errorf(struct sl_error *e, int code, const char *fmt, ...)
{
        if (e) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
                va_end(ap);
        }
        return code;
}

int sl_error_prefix(struct sl_error *e, int code, const char *fmt, ...)
{
        if (e) {
                char prefix[128], old[sizeof(e->msg)];
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(prefix, sizeof(prefix), fmt, ap);
                va_end(ap);
                memcpy(old, e->msg, sizeof(old));
                old[sizeof(old) - 1] = 0;
                /* A reason that no longer fits is cut short; that is fine for a log line. */
                if (snprintf(e->msg, sizeof(e->msg), "%s: %s", prefix, old) >= (int)sizeof(e->msg))
                        e->msg[sizeof(e->msg) - 1] = 0;
        }
        return code;
}

uint64_t sl_now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
