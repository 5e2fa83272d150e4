/* cli.c — see cli.h. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sl.h"

static const char *cli_prog = "sluice";

void cli_init(const char *prog)
{
        cli_prog = prog;
}

void cli_usage_error(const char *fmt, const char *arg)
{
        fprintf(stderr, "%s: ", cli_prog);
        fprintf(stderr, fmt, arg);
        fprintf(stderr, "\nTry '%s --help'.\n", cli_prog);
        exit(2);
}

long cli_parse_long(const char *s, const char *flag, long lo, long hi)
{
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < lo || v > hi) {
                char buf[160];
                snprintf(buf, sizeof(buf), "%s: expected an integer in [%ld, %ld], got '%%s'", flag, lo, hi);
                cli_usage_error(buf, s);
        }
        return v;
}

unsigned long long cli_parse_u64(const char *s, const char *flag)
{
        char *end;
        errno = 0;
        unsigned long long v = *s == '-' ? 0 : strtoull(s, &end, 0);
        if (*s == '-' || errno || end == s || *end) {
                char buf[160];
                snprintf(buf, sizeof(buf), "%s: expected a non-negative integer, got '%%s'", flag);
                cli_usage_error(buf, s);
        }
        return v;
}

float cli_parse_float(const char *s, const char *flag)
{
        char *end;
        errno = 0;
        float v = strtof(s, &end);
        if (errno || end == s || *end || !isfinite(v)) {
                char buf[160];
                snprintf(buf, sizeof(buf), "%s: expected a number, got '%%s'", flag);
                cli_usage_error(buf, s);
        }
        return v;
}

int cli_hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

void cli_bad_option(char *const argv[], int optind, int optopt, int missing_value)
{
        char opt[64];
        const char *a = argv[optind - 1];
        if (a[0] == '-' && a[1] == '-') /* a long option stands alone in its argument */
                snprintf(opt, sizeof(opt), "%.*s", (int)SL_MIN(strcspn(a, "="), 60), a);
        else if (optopt)
                snprintf(opt, sizeof(opt), "-%c", optopt);
        else
                snprintf(opt, sizeof(opt), "%.60s", a);
        cli_usage_error(missing_value ? "option '%s' needs a value" : "unknown option '%s'", opt);
}
