/* cli.h — argument parsing shared by the sluice tools: a bad value is a usage error
 * (exit 2) naming the flag and the value, followed by a pointer to --help. */
#pragma once

void cli_init(const char *prog);
__attribute__((noreturn)) void cli_usage_error(const char *fmt, const char *arg);
long cli_parse_long(const char *s, const char *flag, long lo, long hi);
unsigned long long cli_parse_u64(const char *s, const char *flag);
float cli_parse_float(const char *s, const char *flag);
int cli_hexval(char c); /* -1 when c is not a hex digit */
/* For getopt_long's ':' (missing_value) and '?' returns: names the option as given, a long
 * one from argv, a short one through optopt (argv may hold a bundle such as -tx). */
__attribute__((noreturn)) void cli_bad_option(char *const argv[], int optind, int optopt, int missing_value);
