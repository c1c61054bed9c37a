/*
 * Context hooks: a context's own device-memory footprint is charged as context_size when the context comes
 * into existence (primary context: on the retain that creates it; explicit contexts: on create) and given
 * back when it goes away, together with every allocation that lived in it.
 *
 * The footprint is measured, not guessed: NVML's per-process usedGpuMemory for this PID before and after the
 * creation; when this PID is not visible to NVML (PID namespace), the device-wide used-memory delta; 0 when
 * NVML is unavailable.
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
    uint64_t proc; /* UINT64_MAX: unknown */
    uint64_t dev;
};

static uint64_t proc_used(nvmlDevice_t h) {
    unsigned int pid = (unsigned int)getpid();
    unsigned int n = 64;
    nvmlProcessInfo_t infos[64];
    nvmlReturn_t r = NVML_ERROR_FUNCTION_NOT_FOUND;
    if (REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v3) != NULL)
        r = REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v3)(h, &n, infos);
    else if (REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v2) != NULL)
        r = REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v2)(h, &n, infos);
    if (r == NVML_SUCCESS) {
        for (unsigned int i = 0; i < n && i < 64; i++)
            if (infos[i].pid == pid) return infos[i].usedGpuMemory;
        return 0; /* not listed (yet): nothing in use */
    }
    if (r == NVML_ERROR_FUNCTION_NOT_FOUND && REAL_NVML(nvmlDeviceGetComputeRunningProcesses) != NULL) {
        nvmlProcessInfo_v1_t v1[64];
        n = 64;
        if (REAL_NVML(nvmlDeviceGetComputeRunningProcesses)(h, &n, v1) == NVML_SUCCESS) {
            for (unsigned int i = 0; i < n && i < 64; i++)
                if (v1[i].pid == pid) return v1[i].usedGpuMemory;
            return 0;
        }
    }
    return UINT64_MAX;
}

static int pid_visible(nvmlDevice_t h) {
    /* Whether NVML lists processes by our PID at all: true once we appear. */
    uint64_t u = proc_used(h);
    return u != UINT64_MAX && u != 0;
}

static nvmlDevice_t nvml_handle(int idx) {
    nvmlDevice_t h = NULL;
    if (idx < 0 || vgpu_nvml_ready() != 0 || REAL_NVML(nvmlDeviceGetHandleByIndex_v2) == NULL ||
        REAL_NVML(nvmlDeviceGetHandleByIndex_v2)((unsigned int)idx, &h) != NVML_SUCCESS)
        return NULL;
    return h;
}

static struct probe probe_now(int idx) {
    struct probe p = {UINT64_MAX, UINT64_MAX};
    nvmlDevice_t h = nvml_handle(idx);
    if (h == NULL) return p;
    p.proc = proc_used(h);
    nvmlMemory_t m;
    if (REAL_NVML(nvmlDeviceGetMemoryInfo) != NULL && REAL_NVML(nvmlDeviceGetMemoryInfo)(h, &m) == NVML_SUCCESS)
        p.dev = m.used;
    return p;
}

static uint64_t footprint(int idx, struct probe before) {
    struct probe after = probe_now(idx);
    uint64_t fp = 0;
    nvmlDevice_t h = nvml_handle(idx);
    if (after.proc != UINT64_MAX && before.proc != UINT64_MAX && h != NULL && pid_visible(h))
        fp = after.proc > before.proc ? after.proc - before.proc : 0;
    else if (after.dev != UINT64_MAX && before.dev != UINT64_MAX)
        fp = after.dev > before.dev ? after.dev - before.dev : 0;
    return fp > MAX_FOOTPRINT ? MAX_FOOTPRINT : fp;
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
    struct probe before = {UINT64_MAX, UINT64_MAX};
    if (!active) before = probe_now(idx);
    CUresult r = REAL(cuDevicePrimaryCtxRetain)(pctx, dev);
    if (r == CUDA_SUCCESS && pctx != NULL) {
        if (dev >= 0 && dev < MAX_PRIMARY) {
            pthread_mutex_lock(&g_ctx_mu);
            g_primary[dev] = *pctx;
            pthread_mutex_unlock(&g_ctx_mu);
        }
        if (!active) {
            vgpu_region_register();
            charge_context(idx, *pctx, footprint(idx, before));
        }
    }
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
    CUresult r = REAL(cuDevicePrimaryCtxRelease)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 0);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxRelease_v2);
    CUresult r = REAL(cuDevicePrimaryCtxRelease_v2)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 0);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxReset);
    CUresult r = REAL(cuDevicePrimaryCtxReset)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 1);
    return r;
}

VGPU_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev) {
    REQUIRE_REAL(cuDevicePrimaryCtxReset_v2);
    CUresult r = REAL(cuDevicePrimaryCtxReset_v2)(dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) after_primary_release(dev, 1);
    return r;
}

#define CREATE_CTX(call, pctx, dev)                                                                          \
    do {                                                                                                     \
        if (vgpu_passthrough()) return call;                                                                 \
        int idx_ = vgpu_dev_index(dev);                                                                      \
        struct probe before_ = probe_now(idx_);                                                              \
        CUresult r_ = call;                                                                                  \
        if (r_ == CUDA_SUCCESS && (pctx) != NULL) {                                                          \
            vgpu_region_register();                                                                          \
            charge_context(idx_, *(pctx), footprint(idx_, before_));                                         \
        }                                                                                                    \
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
    if (!vgpu_passthrough()) vgpu_sm_forget_ctx(ctx);
    CUresult r = REAL(cuCtxDestroy)(ctx);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) context_gone(ctx);
    return r;
}

VGPU_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx) {
    REQUIRE_REAL(cuCtxDestroy_v2);
    if (!vgpu_passthrough()) vgpu_sm_forget_ctx(ctx);
    CUresult r = REAL(cuCtxDestroy_v2)(ctx);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) context_gone(ctx);
    return r;
}
