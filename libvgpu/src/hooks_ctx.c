/*
 * Context hooks: a context's own device-memory footprint is charged as context_size when the context comes
 * into existence (primary context: on the retain that creates it; explicit contexts: on create) and given
 * back when it goes away, together with every allocation that lived in it.
 *
 * The footprint is measured, not guessed, from NVML's compute-process list before and after the creation:
 * this process's usedGpuMemory grows by the context's cost. NVML lists host PIDs, so inside a PID namespace
 * the process is found by its host PID, which the same two lists reveal at the first creation (nvproc.c).
 * Only when the host PID cannot be told (NVML lists no process, or two appeared at once) does the charge
 * fall back to the device-wide used-memory delta, which neighbours' allocations can distort; 0 without NVML.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "vgpu.h"

#define MAX_FOOTPRINT (4ull << 30)
#define MAX_PRIMARY 64

static CUcontext g_primary[MAX_PRIMARY];
static pthread_mutex_t g_ctx_mu = PTHREAD_MUTEX_INITIALIZER;

struct probe {
    struct vgpu_nvproc procs[VGPU_NVPROC_MAX];
    int n;        /* -1: no process list */
    uint64_t dev; /* device-wide used; UINT64_MAX: unknown */
};

static void probe_now(int idx, struct probe *p) {
    p->n = -1;
    p->dev = UINT64_MAX;
    if (idx < 0) return;
    p->n = vgpu_nvproc_list(idx, p->procs, VGPU_NVPROC_MAX);
    p->dev = vgpu_nvproc_device_used(idx);
}

/* Pure: the footprint from the two probes and our host PID (0 = unknown). */
uint64_t vgpu_ctx_footprint(const struct vgpu_nvproc *before, int nb, uint64_t dev_before,
                            const struct vgpu_nvproc *after, int na, uint64_t dev_after, unsigned int hostpid) {
    uint64_t fp = 0;
    if (hostpid != 0 && na >= 0 && nb >= 0) {
        uint64_t a = vgpu_nvproc_used(after, na, hostpid), b = vgpu_nvproc_used(before, nb, hostpid);
        fp = a > b ? a - b : 0;
    } else if (dev_after != UINT64_MAX && dev_before != UINT64_MAX) {
        fp = dev_after > dev_before ? dev_after - dev_before : 0;
    }
    return fp > MAX_FOOTPRINT ? MAX_FOOTPRINT : fp;
}

static uint64_t footprint(int idx, const struct probe *before) {
    if (idx < 0) return 0;
    struct probe *after = malloc(sizeof(*after));
    if (after == NULL) return 0;
    probe_now(idx, after);
    int hostpid = vgpu_hostpid_learn(before->procs, before->n, after->procs, after->n);
    uint64_t fp = vgpu_ctx_footprint(before->procs, before->n, before->dev, after->procs, after->n, after->dev,
                                     (unsigned int)hostpid);
    free(after);
    return fp;
}

static void charge_context(int idx, CUcontext ctx, uint64_t bytes) {
    if (idx < 0 || ctx == NULL) return;
    vgpu_region_charge(idx, bytes, VGPU_MEM_CONTEXT, 0); /* the context exists: account it, never refuse */
    struct vgpu_track_entry e = {.key = (uint64_t)(uintptr_t)ctx, .bytes = bytes, .ctx = (uintptr_t)ctx,
                                 .kind = VGPU_TRK_CTX, .dev = idx};
    vgpu_track_put(&e);
    LOG_DEBUG("context %p on device %d: footprint %llu bytes", (void *)ctx, idx, (unsigned long long)bytes);
}

/* The driver destroyed `ctx`: give back its footprint and everything allocated in it. */
static void context_gone(CUcontext ctx) {
    if (ctx == NULL) return;
    vgpu_devices_forget_ctx();
    vgpu_sm_forget_ctx(ctx);
    vgpu_track_drop_ctx((uintptr_t)ctx, vgpu_mem_release_entry);
}

void vgpu_ctx_atfork_child(void) { pthread_mutex_init(&g_ctx_mu, NULL); }

VGPU_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxRetain);
    if (vgpu_passthrough()) return REAL(cuDevicePrimaryCtxRetain)(pctx, dev);
    unsigned int flags = 0;
    int active = 1;
    if (REAL(cuDevicePrimaryCtxGetState) != NULL) REAL(cuDevicePrimaryCtxGetState)(dev, &flags, &active);
    int idx = vgpu_dev_index(dev);
    struct probe *before = NULL;
    if (!active && (before = malloc(sizeof(*before))) != NULL) probe_now(idx, before);
    CUresult r = REAL(cuDevicePrimaryCtxRetain)(pctx, dev);
    if (r == CUDA_SUCCESS && pctx != NULL) {
        if (dev >= 0 && dev < MAX_PRIMARY) {
            pthread_mutex_lock(&g_ctx_mu);
            g_primary[dev] = *pctx;
            pthread_mutex_unlock(&g_ctx_mu);
        }
        if (!active) {
            vgpu_region_register();
            charge_context(idx, *pctx, before != NULL ? footprint(idx, before) : 0);
        }
    }
    free(before);
    return r;
}

static void after_primary_release(CUdevice dev, int reset) {
    if (dev < 0 || dev >= MAX_PRIMARY) return;
    unsigned int flags = 0;
    int active = 0;
    if (!reset && REAL(cuDevicePrimaryCtxGetState) != NULL &&
        REAL(cuDevicePrimaryCtxGetState)(dev, &flags, &active) != CUDA_SUCCESS)
        return;
    if (active) return;
    pthread_mutex_lock(&g_ctx_mu);
    CUcontext pc = g_primary[dev];
    g_primary[dev] = NULL;
    pthread_mutex_unlock(&g_ctx_mu);
    context_gone(pc);
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxRelease);
    if (!vgpu_passthrough()) vgpu_devices_forget_ctx(); /* the primary context may go away */
    CUresult r = REAL(cuDevicePrimaryCtxRelease)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 0);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxRelease_v2);
    if (!vgpu_passthrough()) vgpu_devices_forget_ctx(); /* the primary context may go away */
    CUresult r = REAL(cuDevicePrimaryCtxRelease_v2)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 0);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxReset);
    if (!vgpu_passthrough()) vgpu_devices_forget_ctx(); /* the primary context may go away */
    CUresult r = REAL(cuDevicePrimaryCtxReset)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 1);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxReset_v2);
    if (!vgpu_passthrough()) vgpu_devices_forget_ctx(); /* the primary context may go away */
    CUresult r = REAL(cuDevicePrimaryCtxReset_v2)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 1);
    return r;
}

#define CREATE_CTX(call, pctx, dev)                                                                          \
    do {                                                                                                     \
        if (vgpu_passthrough()) return call;                                                                 \
        int idx_ = vgpu_dev_index(dev);                                                                      \
        struct probe *before_ = malloc(sizeof(*before_));                                                    \
        if (before_ != NULL) probe_now(idx_, before_);                                                       \
        CUresult r_ = call;                                                                                  \
        if (r_ == CUDA_SUCCESS && (pctx) != NULL) {                                                          \
            vgpu_region_register();                                                                          \
            charge_context(idx_, *(pctx), before_ != NULL ? footprint(idx_, before_) : 0);                   \
        }                                                                                                    \
        free(before_);                                                                                       \
        return r_;                                                                                           \
    } while (0)

VGPU_EXPORT CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    REQUIRE_REAL(cuCtxCreate_v2);
    CREATE_CTX(REAL(cuCtxCreate_v2)(pctx, flags, dev), pctx, dev);
}

VGPU_EXPORT CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams,
                                    unsigned int flags, CUdevice dev) {
    REQUIRE_REAL(cuCtxCreate_v3);
    CREATE_CTX(REAL(cuCtxCreate_v3)(pctx, paramsArray, numParams, flags, dev), pctx, dev);
}

VGPU_EXPORT CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev) {
    REQUIRE_REAL(cuCtxCreate_v4);
    CREATE_CTX(REAL(cuCtxCreate_v4)(pctx, params, flags, dev), pctx, dev);
}

VGPU_EXPORT CUresult cuCtxDestroy(CUcontext ctx) {
    REQUIRE_REAL(cuCtxDestroy);
    if (!vgpu_passthrough()) {
        vgpu_devices_forget_ctx(); /* before: the handle may be handed out again as soon as it is freed */
        vgpu_sm_forget_ctx(ctx);
    }
    CUresult r = REAL(cuCtxDestroy)(ctx);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) context_gone(ctx);
    return r;
}

VGPU_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    REQUIRE_REAL(cuCtxDestroy_v2);
    if (!vgpu_passthrough()) {
        vgpu_devices_forget_ctx();
        vgpu_sm_forget_ctx(ctx);
    }
    CUresult r = REAL(cuCtxDestroy_v2)(ctx);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) context_gone(ctx);
    return r;
}
