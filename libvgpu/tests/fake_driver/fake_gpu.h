/* Extra entry points of the fake driver, for test programs (not part of CUDA). */
#ifndef FAKE_GPU_H
#define FAKE_GPU_H

#include <stdint.h>

struct fake_gpu_stats {
    uint64_t busy_ns;        /* simulated kernel time executed on the device */
    int64_t first_start_ns;  /* CLOCK_MONOTONIC of the first kernel start (0: none) */
    int64_t last_end_ns;     /* end of the last kernel queued */
    uint64_t kernels;        /* kernels and graphs launched */
    uint64_t mem_used;       /* physical bytes in use (contexts, allocations, pool reserves) */
    uint64_t mem_total;
};

typedef int (*fake_gpu_get_stats_fn)(int dev, struct fake_gpu_stats *out);

#endif
