/*
 * Stream-capture hooks: only bookkeeping for the SM controller. While no capture is in progress anywhere in
 * the process, a throttled launch needs neither the capture query on its stream nor the capture-mode
 * exchange around the controller's event queries (stream capture is per process). The count is raised
 * before the real begin (a launch on another thread must never see "no capture" once the capture exists)
 * and lowered only when the stream is seen not capturing after the end call, so any error leaves it high,
 * which costs a few driver calls and is never unsafe.
 */
#define _GNU_SOURCE
#include "vgpu.h"

#define BEGIN(fn, ...)                                                                                       \
    do {                                                                                                     \
        REQUIRE_REAL(fn);                                                                                    \
        if (vgpu_passthrough()) return REAL(fn)(__VA_ARGS__);                                                \
        vgpu_sm_capture_begin(1);                                                                            \
        CUresult r_ = REAL(fn)(__VA_ARGS__);                                                                 \
        if (r_ != CUDA_SUCCESS) vgpu_sm_capture_begin(0);                                                    \
        return r_;                                                                                           \
    } while (0)

#define END(fn, ptsz, s, g)                                                                                  \
    do {                                                                                                     \
        REQUIRE_REAL(fn);                                                                                    \
        CUresult r_ = REAL(fn)(s, g);                                                                        \
        if (!vgpu_passthrough()) vgpu_sm_capture_end(s, ptsz);                                               \
        return r_;                                                                                           \
    } while (0)

VGPU_EXPORT CUresult cuStreamBeginCapture(CUstream s) { BEGIN(cuStreamBeginCapture, s); }

VGPU_EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream s) { BEGIN(cuStreamBeginCapture_ptsz, s); }

VGPU_EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
    BEGIN(cuStreamBeginCapture_v2, s, mode);
}

VGPU_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, CUstreamCaptureMode mode) {
    BEGIN(cuStreamBeginCapture_v2_ptsz, s, mode);
}

VGPU_EXPORT CUresult cuStreamBeginCaptureToGraph(CUstream s, CUgraph g, const CUgraphNode *deps,
                                                 const CUgraphEdgeData *edges, size_t n, CUstreamCaptureMode mode) {
    BEGIN(cuStreamBeginCaptureToGraph, s, g, deps, edges, n, mode);
}

VGPU_EXPORT CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream s, CUgraph g, const CUgraphNode *deps,
                                                      const CUgraphEdgeData *edges, size_t n,
                                                      CUstreamCaptureMode mode) {
    BEGIN(cuStreamBeginCaptureToGraph_ptsz, s, g, deps, edges, n, mode);
}

VGPU_EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph *g) { END(cuStreamEndCapture, 0, s, g); }

VGPU_EXPORT CUresult cuStreamEndCapture_ptsz(CUstream s, CUgraph *g) { END(cuStreamEndCapture_ptsz, 1, s, g); }
