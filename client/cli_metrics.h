/* cli_metrics.h — the CLI's reader of a server's /metrics (internal to the sluice CLI). */
#pragma once

#include <stddef.h>
#include <stdio.h>

/* Prints the dataplane and security counters of the server whose [metrics] http_listen is
 * addr ("HOST:PORT", "[V6]:PORT") to out. Returns how many it printed, or a negative errno
 * with the reason in why. */
int cli_metrics_print(const char *addr, unsigned timeout_ms, FILE *out, char *why, size_t why_len);
