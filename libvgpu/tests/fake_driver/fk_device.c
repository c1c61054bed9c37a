/*
 * Init, device queries, contexts and error strings. A context costs FAKE_CTX_BYTES of device memory, shown
 * in NVML as the process's usedGpuMemory; NVML lists a process on a device while it has a context there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fk.h"

pthread_mutex_t fk_local_mu = PTHREAD_MUTEX_INITIALIZER;

struct primary {
    struct fk_ctx ctx;
    int refs;
    unsigned int flags;
};
static struct primary primaries[FK_MAX_DEV];

static __thread struct fk_ctx *tls_ctx_stack[16];
static __thread int tls_depth;

struct fk_ctx *fk_cur_ctx(void) {
    struct fk_ctx *c = tls_depth > 0 ? tls_ctx_stack[tls_depth - 1] : NULL;
    return c != NULL && c->alive ? c : NULL;
}

void fk_ctx_reset_after_fork(void) {
    /* The child inherits none of the parent's CUDA state (a real driver refuses it). */
    memset(primaries, 0, sizeof(primaries));
    tls_depth = 0;
}

static void ctx_charge_locked(struct fk_ctx *c) { fk_sh->procs[fk_self].ctxs[c->dev]++; }

static void ctx_teardown(struct fk_ctx *c) {
    fk_ctx_free_allocs(c);
    fk_lock();
    fk_phys_give(c->dev, c->footprint);
    if (fk_sh->procs[fk_self].ctxs[c->dev] > 0) fk_sh->procs[fk_self].ctxs[c->dev]--;
    fk_unlock();
    c->footprint = 0;
    c->alive = 0;
}

/* ------------------------------------------------------------------ init, devices */

EXPORT CUresult cuInit(unsigned int flags) {
    fk_count_call();
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    fk_lock();
    fk_unlock();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int *v) {
    fk_count_call();
    if (v == NULL) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
    fk_count_call();
    if (count == NULL) return CUDA_ERROR_INVALID_VALUE;
    fk_valid_dev(0);
    *count = fk_sh->ndev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    fk_count_call();
    if (d == NULL || !fk_valid_dev(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    fk_count_call();
    if (name == NULL || len <= 0 || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "Fake GPU %d", d);
    return CUDA_SUCCESS;
}

void fk_uuid_bytes(int dev, CUuuid *u) {
    memset(u, 0, sizeof(*u));
    u->bytes[0] = (char)0xfa;
    u->bytes[1] = (char)0x4e;
    u->bytes[2] = (char)0x6b;
    u->bytes[15] = (char)dev;
}

EXPORT CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d) {
    fk_count_call();
    if (u == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    fk_uuid_bytes(d, u);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return cuDeviceGetUuid(u, d); }

EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute a, CUdevice d) {
    fk_count_call();
    if (pi == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    *pi = a == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT ? fk_sh->devs[d].sm
          : a == CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR ? 2048 : 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    fk_count_call();
    if (bytes == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    *bytes = fk_sh->devs[d].total;
    return CUDA_SUCCESS;
}

static const char *err_name(CUresult e) {
    switch (e) {
    case CUDA_SUCCESS: return "CUDA_SUCCESS";
    case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case CUDA_ERROR_ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
    case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
    case CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: return "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT";
    case CUDA_ERROR_CAPTURED_EVENT: return "CUDA_ERROR_CAPTURED_EVENT";
    default: return "CUDA_ERROR_UNKNOWN";
    }
}

EXPORT CUresult cuGetErrorString(CUresult e, const char **s) {
    fk_count_call();
    if (s == NULL) return CUDA_ERROR_INVALID_VALUE;
    *s = e == CUDA_SUCCESS ? "no error" : e == CUDA_ERROR_OUT_OF_MEMORY ? "out of memory" : err_name(e);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorName(CUresult e, const char **s) {
    fk_count_call();
    if (s == NULL) return CUDA_ERROR_INVALID_VALUE;
    *s = err_name(e);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ contexts */

static CUresult ctx_create(CUcontext *pctx, CUdevice d) {
    if (pctx == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    struct fk_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    fk_lock();
    if (fk_phys_take(d, fk_cfg.ctx_bytes) != 0) {
        fk_unlock();
        free(c);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    c->dev = d;
    c->alive = 1;
    c->footprint = fk_cfg.ctx_bytes;
    ctx_charge_locked(c);
    fk_unlock();
    if (tls_depth < 16) tls_ctx_stack[tls_depth++] = c;
    *pctx = (CUcontext)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxCreate_v2(CUcontext *p, unsigned int f, CUdevice d) {
    fk_count_call();
    (void)f;
    return ctx_create(p, d);
}

EXPORT CUresult cuCtxCreate_v3(CUcontext *p, CUexecAffinityParam *a, int n, unsigned int f, CUdevice d) {
    fk_count_call();
    (void)a, (void)n, (void)f;
    return ctx_create(p, d);
}

EXPORT CUresult cuCtxCreate_v4(CUcontext *p, CUctxCreateParams *a, unsigned int f, CUdevice d) {
    fk_count_call();
    (void)a, (void)f;
    return ctx_create(p, d);
}

static CUresult ctx_destroy(CUcontext ctx) {
    struct fk_ctx *c = (struct fk_ctx *)ctx;
    if (c == NULL || c->primary || !c->alive) return CUDA_ERROR_INVALID_CONTEXT;
    ctx_teardown(c);
    for (int i = 0; i < tls_depth; i++)
        if (tls_ctx_stack[i] == c) tls_ctx_stack[i] = NULL;
    return CUDA_SUCCESS; /* the struct is kept: handles stay distinguishable */
}

EXPORT CUresult cuCtxDestroy(CUcontext c) { fk_count_call(); return ctx_destroy(c); }
EXPORT CUresult cuCtxDestroy_v2(CUcontext c) { fk_count_call(); return ctx_destroy(c); }

EXPORT CUresult cuCtxGetCurrent(CUcontext *p) {
    fk_count_call();
    if (p == NULL) return CUDA_ERROR_INVALID_VALUE;
    *p = (CUcontext)fk_cur_ctx();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext c) {
    fk_count_call();
    if (tls_depth == 0) tls_depth = 1;
    tls_ctx_stack[tls_depth - 1] = (struct fk_ctx *)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPushCurrent_v2(CUcontext c) {
    fk_count_call();
    if (tls_depth >= 16) return CUDA_ERROR_INVALID_VALUE;
    tls_ctx_stack[tls_depth++] = (struct fk_ctx *)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *p) {
    fk_count_call();
    if (tls_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    struct fk_ctx *c = tls_ctx_stack[--tls_depth];
    if (p != NULL) *p = (CUcontext)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *d) {
    fk_count_call();
    struct fk_ctx *c = fk_cur_ctx();
    if (c == NULL) return CUDA_ERROR_INVALID_CONTEXT;
    if (d == NULL) return CUDA_ERROR_INVALID_VALUE;
    *d = c->dev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *p, CUdevice d) {
    fk_count_call();
    if (p == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fk_local_mu);
    struct primary *pr = &primaries[d];
    if (pr->refs == 0) {
        fk_lock();
        int fail = fk_phys_take(d, fk_cfg.ctx_bytes) != 0;
        if (!fail) {
            pr->ctx.dev = d;
            pr->ctx.primary = 1;
            pr->ctx.alive = 1;
            pr->ctx.footprint = fk_cfg.ctx_bytes;
            ctx_charge_locked(&pr->ctx);
        }
        fk_unlock();
        if (fail) {
            pthread_mutex_unlock(&fk_local_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    pr->refs++;
    *p = (CUcontext)&pr->ctx;
    pthread_mutex_unlock(&fk_local_mu);
    return CUDA_SUCCESS;
}

static CUresult primary_release(CUdevice d, int reset) {
    if (!fk_valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&fk_local_mu);
    struct primary *pr = &primaries[d];
    if (pr->refs == 0 && !reset) {
        pthread_mutex_unlock(&fk_local_mu);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    pr->refs = reset ? 0 : pr->refs - 1;
    int teardown = pr->refs == 0 && pr->ctx.alive;
    pthread_mutex_unlock(&fk_local_mu);
    if (teardown) ctx_teardown(&pr->ctx);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) { fk_count_call(); return primary_release(d, 0); }
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { fk_count_call(); return primary_release(d, 0); }
EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice d) { fk_count_call(); return primary_release(d, 1); }
EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice d) { fk_count_call(); return primary_release(d, 1); }

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned int *flags, int *active) {
    fk_count_call();
    if (!fk_valid_dev(d) || flags == NULL || active == NULL) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&fk_local_mu);
    *flags = primaries[d].flags;
    *active = primaries[d].refs > 0;
    pthread_mutex_unlock(&fk_local_mu);
    return CUDA_SUCCESS;
}
