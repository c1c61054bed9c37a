/* Extra entry points of the fake driver, for test programs (not part of CUDA). Found with dlsym. */
#ifndef FAKE_GPU_H
#define FAKE_GPU_H

#include <stdint.h>

/* The whole device, over every process on it (device time: CLOCK_MONOTONIC ns). */
struct fake_gpu_stats {
    uint64_t busy_ns;        /* time the compute engine ran some process's kernel */
    int64_t first_start_ns;  /* first time a kernel ran (0: none) */
    int64_t last_end_ns;     /* last time a kernel ran */
    uint64_t kernels;        /* kernels and graphs launched */
    uint64_t mem_used;       /* physical bytes in use (contexts, allocations, pool reserves) */
    uint64_t mem_total;
};

/* The calling process on one device: its kernels' time on the compute engine, not counting time slices
 * of other processes, waits or copies. */
struct fake_gpu_proc_stats {
    uint64_t busy_ns;
    int64_t first_start_ns;
    int64_t last_end_ns;
    uint64_t kernels;
    uint64_t mem_used; /* what NVML reports as this process's usedGpuMemory */
    int host_pid;      /* the PID NVML reports for this process */
    int64_t now_ns;    /* the device time the figures are taken at */
};

typedef int (*fake_gpu_get_stats_fn)(int dev, struct fake_gpu_stats *out);
typedef int (*fake_gpu_get_proc_stats_fn)(int dev, struct fake_gpu_proc_stats *out);
typedef uint64_t (*fake_gpu_get_call_count_fn)(void); /* driver + NVML entry points this process called */
typedef int (*fake_gpu_reap_fn)(void); /* reaps dead processes; returns the processes left on the GPU */

#endif
