/*
 * Stream capture as the SM controller sees it. The controller's event queries and synchronizes are
 * "potentially unsafe" calls: under another thread's global-mode capture they would invalidate it. The
 * capture hooks (hooks_capture.c) count the captures in progress in this process; while there are none, the
 * controller skips both the capture query on the launch stream and the capture-mode exchange.
 *
 * No race: the controller decides "no capture, no precautions" under a device's mutex and keeps that mutex
 * from the decision to its last driver call for the launch; a capture begin raises the count and then passes
 * through every device's mutex once (vgpu_sm_barrier), so it cannot start while a controller acts on an old
 * "no capture". The count is lowered only once the stream is seen not capturing after the end call, so an
 * error leaves it high, which costs a few calls and is never unsafe. Layer 4, with smctl.c.
 */
#define _GNU_SOURCE
#include "vgpu.h"

static int g_captures; /* stream captures possibly in progress in this process */

int vgpu_sm_captures_possible(void) { return __atomic_load_n(&g_captures, __ATOMIC_ACQUIRE) > 0; }

void vgpu_sm_capture_begin(int began) {
    if (!began) {
        __atomic_sub_fetch(&g_captures, 1, __ATOMIC_ACQ_REL);
        return;
    }
    __atomic_add_fetch(&g_captures, 1, __ATOMIC_ACQ_REL);
    vgpu_sm_barrier();
}

void vgpu_sm_capture_end(CUstream stream, int ptsz) {
    if (vgpu_stream_capturing(stream, ptsz)) return; /* still capturing (or cannot tell): keep counting it */
    int n = __atomic_load_n(&g_captures, __ATOMIC_ACQUIRE);
    while (n > 0 && !__atomic_compare_exchange_n(&g_captures, &n, n - 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

void vgpu_sm_relax(struct vgpu_relaxed *m) {
    m->on = 0;
    if (!vgpu_sm_captures_possible() || REAL(cuThreadExchangeStreamCaptureMode) == NULL) return;
    m->saved = CU_STREAM_CAPTURE_MODE_RELAXED;
    m->on = REAL(cuThreadExchangeStreamCaptureMode)(&m->saved) == CUDA_SUCCESS;
}

void vgpu_sm_unrelax(struct vgpu_relaxed *m) {
    if (!m->on) return;
    REAL(cuThreadExchangeStreamCaptureMode)(&m->saved);
    m->on = 0;
}

int vgpu_stream_capturing(CUstream s, int ptsz) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    __typeof__(&cuStreamIsCapturing) fn = ptsz && REAL(cuStreamIsCapturing_ptsz) != NULL
                                              ? REAL(cuStreamIsCapturing_ptsz)
                                              : REAL(cuStreamIsCapturing);
    if (fn == NULL) return 0;
    if (ptsz && fn == REAL(cuStreamIsCapturing) && s == NULL) s = CU_STREAM_PER_THREAD;
    CUresult r = fn(s, &st);
    /* An error (e.g. the legacy stream while another stream captures) means "do not touch this stream". */
    return r != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}
