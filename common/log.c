/* log.c — plain stderr logging for the programs; the daemon's journald sink comes with control/. */
#include <stdio.h>

#include "sl.h"

static enum sl_log_level log_level = SL_LOG_INFO;

void sl_log_set_level(enum sl_log_level lvl)
{
        log_level = lvl;
}

void sl_log(enum sl_log_level lvl, const char *fmt, ...)
{
        static const char *const names[] = {[SL_LOG_ERR] = "error", [SL_LOG_WARNING] = "warning",
                                            [SL_LOG_NOTICE] = "notice", [SL_LOG_INFO] = "info",
                                            [SL_LOG_DEBUG] = "debug"};
        if (lvl > log_level)
                return;
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "sluice: %s: ", lvl <= SL_LOG_DEBUG && names[lvl] ? names[lvl] : "log");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
}
