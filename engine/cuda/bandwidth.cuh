/* bandwidth.cuh — the device's measured memory bandwidth: the denominator of every roofline
 * figure. A streaming read (16-byte loads, as the GEMV does them) and a copy. */
#pragma once

#include <stddef.h>

struct cuda_bandwidth {
        double read_gbs; /* bytes read / median time, 1e9 bytes per s */
        double copy_gbs; /* (bytes read + bytes written) / median time */
        size_t bytes;    /* buffer size read per rep */
        int reps;
};

/* Allocates two buffers of bytes each on the current device, fills them with a non-zero
 * pattern, and times reps reads and reps copies (after warm-up) with events; medians.
 * Synchronous. Returns 0, -EINVAL, -ENOMEM or another negative errno (cuda_err_last()). */
int cuda_bandwidth_measure(size_t bytes, int reps, struct cuda_bandwidth *out);
