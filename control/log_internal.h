/* log_internal.h — test hooks of log.c (tests/control only). */
#pragma once
#include <sys/uio.h>

/* Replaces sd_journal_sendv (NULL restores it), so a test can read the fields sent. */
void ctl_log_set_journal_sink(int (*sink)(const struct iovec *iov, int n));
