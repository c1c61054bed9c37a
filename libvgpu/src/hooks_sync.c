/*
 * Synchronisation hooks. The driver gives an async pool's idle memory back (down to the pool's release
 * threshold, 0 by default) when the application synchronises: stream, event or context synchronize. No
 * allocation hook sees that, so without these hooks the process's slot would keep charging the trimmed
 * reserve, and a sibling process sharing the limit would hit OOM early. After a successful synchronize the
 * process re-reads the reserve of its counted pools and corrects its charge at once.
 * With no counted pool (the common case) the hook adds one atomic load.
 */
#define _GNU_SOURCE
#include "vgpu.h"

#define SYNC(fn, ...)                                                                                        \
    do {                                                                                                     \
        REQUIRE_REAL(fn);                                                                                    \
        CUresult r_ = REAL(fn)(__VA_ARGS__);                                                                 \
        if (r_ == CUDA_SUCCESS && !vgpu_passthrough()) vgpu_pools_refresh();                                 \
        return r_;                                                                                           \
    } while (0)

VGPU_EXPORT CUresult cuStreamSynchronize(CUstream hStream) { SYNC(cuStreamSynchronize, hStream); }

VGPU_EXPORT CUresult cuStreamSynchronize_ptsz(CUstream hStream) { SYNC(cuStreamSynchronize_ptsz, hStream); }

VGPU_EXPORT CUresult cuEventSynchronize(CUevent hEvent) { SYNC(cuEventSynchronize, hEvent); }

VGPU_EXPORT CUresult cuCtxSynchronize(void) { SYNC(cuCtxSynchronize); }
