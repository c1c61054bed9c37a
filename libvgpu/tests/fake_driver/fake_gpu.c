/*
 * A fake CUDA driver + NVML in one shared object, standing in for libcuda.so.1 and libnvidia-ml.so.1 in
 * tests. It simulates, per process:
 *   - devices with physical memory (contexts, allocations, pool reserves, VMM, arrays count against it),
 *   - a serial execution timeline per device: a kernel of B blocks takes ceil(B / SMs) x wave time and starts
 *     when both the device and its stream are free; events complete at the simulated time of the work before
 *     them, so event timing is exact simulated GPU time,
 *   - NVML memory figures, a process list (this PID) and utilisation samples,
 *   - cuGetProcAddress with the driver's versioned-name rules (and, with FAKE_PROCADDR_ALT=1, addresses that
 *     differ from the exported symbols, as a driver may hand out).
 * Environment: FAKE_GPU_COUNT (2), FAKE_GPU_MEM (16g), FAKE_GPU_SM (80), FAKE_GPU_WAVE_US (100),
 * FAKE_CTX_BYTES (64m), FAKE_POOL_GRANULARITY (2m), FAKE_GRAPH_US (1000), FAKE_QUEUE_MS (100: a launch
 * blocks while the device has more queued work than that), FAKE_NVML_ORDER ("1,0": NVML
 * index i is CUDA ordinal order[i]), FAKE_NVML_PID_OFFSET (pretend a PID namespace), FAKE_PROCADDR_ALT.
 * fakeGpuGetStats(dev, &stats) reports the simulation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../src/driver_api.h"
#include "fake_gpu.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_DEV 8
#define MAX_PTS 64

struct fk_ctx {
    int dev;
    int primary;
    int alive;
    uint64_t footprint;
};

struct fk_pool {
    int dev;
    int on_device;
    uint64_t reserved, used, reserved_high, used_high, threshold;
};

struct fk_stream {
    int dev;
    int64_t tail;
};

struct fk_event {
    int recorded;
    int64_t t;
    int timing;
};

struct fk_dev {
    uint64_t total, used;
    int sm;
    int64_t tail, legacy_tail;
    uint64_t busy_ns, kernels;
    int64_t first_start, last_end;
    struct fk_ctx primary;
    int primary_refs;
    unsigned int primary_flags;
    struct fk_pool default_pool;
    struct fk_pool *current_pool;
};

enum { A_PTR = 1, A_ASYNC, A_VMM, A_ARRAY, A_MIPMAP };

struct fk_alloc {
    uint64_t key;
    uint64_t bytes;
    int kind;
    int dev;
    struct fk_ctx *ctx;
    struct fk_pool *pool;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int inited;
static int ndev = 2;
static struct fk_dev devs[MAX_DEV];
static int nvml_order[MAX_DEV];
static int64_t wave_ns = 100000, graph_ns = 1000000, queue_ns = 100000000;
static uint64_t ctx_bytes = 64ull << 20, pool_gran = 2ull << 20;
static int pid_offset;
static int procaddr_alt;
static struct fk_alloc *allocs;
static size_t nallocs, capallocs;
static uint64_t next_addr = 0x100000000000ull;
static uint64_t next_handle = 0x1000;

static __thread struct fk_ctx *tls_ctx_stack[16];
static __thread int tls_depth;
static __thread int64_t tls_pts_tail[MAX_DEV];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint64_t env_size(const char *name, uint64_t dflt) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') return dflt;
    char *end;
    uint64_t x = strtoull(v, &end, 0);
    switch (*end) {
    case 'k': case 'K': x <<= 10; break;
    case 'm': case 'M': x <<= 20; break;
    case 'g': case 'G': x <<= 30; break;
    default: break;
    }
    return x;
}

static void init_locked(void) {
    if (inited) return;
    ndev = (int)env_size("FAKE_GPU_COUNT", 2);
    if (ndev < 1) ndev = 1;
    if (ndev > MAX_DEV) ndev = MAX_DEV;
    uint64_t mem = env_size("FAKE_GPU_MEM", 16ull << 30);
    int sm = (int)env_size("FAKE_GPU_SM", 80);
    wave_ns = (int64_t)env_size("FAKE_GPU_WAVE_US", 100) * 1000;
    graph_ns = (int64_t)env_size("FAKE_GRAPH_US", 1000) * 1000;
    queue_ns = (int64_t)env_size("FAKE_QUEUE_MS", 100) * 1000000;
    ctx_bytes = env_size("FAKE_CTX_BYTES", 64ull << 20);
    pool_gran = env_size("FAKE_POOL_GRANULARITY", 2ull << 20);
    if (pool_gran == 0) pool_gran = 1;
    pid_offset = (int)env_size("FAKE_NVML_PID_OFFSET", 0);
    procaddr_alt = (int)env_size("FAKE_PROCADDR_ALT", 0);
    for (int i = 0; i < ndev; i++) {
        memset(&devs[i], 0, sizeof(devs[i]));
        devs[i].total = mem;
        devs[i].sm = sm > 0 ? sm : 1;
        devs[i].primary.dev = i;
        devs[i].primary.primary = 1;
        devs[i].default_pool.dev = i;
        devs[i].default_pool.on_device = 1;
        devs[i].current_pool = &devs[i].default_pool;
        nvml_order[i] = i;
    }
    const char *order = getenv("FAKE_NVML_ORDER");
    if (order != NULL) {
        int i = 0;
        for (const char *p = order; *p && i < ndev; i++) {
            nvml_order[i] = atoi(p) % ndev;
            const char *c = strchr(p, ',');
            if (c == NULL) break;
            p = c + 1;
        }
    }
    inited = 1;
}

#define LOCK()                                                                                               \
    do {                                                                                                     \
        pthread_mutex_lock(&mu);                                                                             \
        init_locked();                                                                                       \
    } while (0)
#define UNLOCK() pthread_mutex_unlock(&mu)

static struct fk_ctx *cur_ctx(void) {
    struct fk_ctx *c = tls_depth > 0 ? tls_ctx_stack[tls_depth - 1] : NULL;
    return c != NULL && c->alive ? c : NULL;
}

static void set_cur(struct fk_ctx *c) {
    if (tls_depth == 0) tls_depth = 1;
    tls_ctx_stack[tls_depth - 1] = c;
}

static int phys_take(int dev, uint64_t bytes) {
    if (bytes > devs[dev].total - devs[dev].used) return -1;
    devs[dev].used += bytes;
    return 0;
}

static void phys_give(int dev, uint64_t bytes) { devs[dev].used = bytes > devs[dev].used ? 0 : devs[dev].used - bytes; }

static void alloc_add(uint64_t key, uint64_t bytes, int kind, int dev, struct fk_ctx *ctx, struct fk_pool *pool) {
    if (nallocs == capallocs) {
        capallocs = capallocs ? capallocs * 2 : 64;
        allocs = realloc(allocs, capallocs * sizeof(*allocs));
        if (allocs == NULL) abort();
    }
    allocs[nallocs++] = (struct fk_alloc){key, bytes, kind, dev, ctx, pool};
}

static int alloc_find(uint64_t key, int kind) {
    for (size_t i = 0; i < nallocs; i++)
        if (allocs[i].key == key && (kind == 0 || allocs[i].kind == kind)) return (int)i;
    return -1;
}

static void alloc_remove(int i) { allocs[i] = allocs[--nallocs]; }

static uint64_t new_addr(uint64_t bytes) {
    uint64_t a = next_addr;
    next_addr += (bytes + 0xffff) & ~0xffffull;
    next_addr += 0x10000;
    return a;
}

static void ctx_teardown(struct fk_ctx *c) {
    for (size_t i = 0; i < nallocs;) {
        if (allocs[i].ctx == c && (allocs[i].kind == A_PTR || allocs[i].kind == A_ARRAY || allocs[i].kind == A_MIPMAP)) {
            phys_give(allocs[i].dev, allocs[i].bytes);
            alloc_remove((int)i);
        } else {
            i++;
        }
    }
    phys_give(c->dev, c->footprint);
    c->footprint = 0;
    c->alive = 0;
}

/* ------------------------------------------------------------------ init, devices */

EXPORT CUresult cuInit(unsigned int flags) {
    (void)flags;
    LOCK();
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDriverGetVersion(int *v) {
    if (v == NULL) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetCount(int *count) {
    if (count == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *count = ndev;
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    LOCK();
    int ok = d != NULL && ordinal >= 0 && ordinal < ndev;
    UNLOCK();
    if (!ok) return CUDA_ERROR_INVALID_DEVICE;
    *d = ordinal;
    return CUDA_SUCCESS;
}

static int valid_dev(CUdevice d) { return d >= 0 && d < ndev; }

EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    if (name == NULL || len <= 0 || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "Fake GPU %d", d);
    return CUDA_SUCCESS;
}

static void uuid_bytes(int dev, CUuuid *u) {
    memset(u, 0, sizeof(*u));
    u->bytes[0] = (char)0xfa;
    u->bytes[1] = (char)0x4e;
    u->bytes[2] = (char)0x6b;
    u->bytes[15] = (char)dev;
}

EXPORT CUresult cuDeviceGetUuid(CUuuid *u, CUdevice d) {
    if (u == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    uuid_bytes(d, u);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetUuid_v2(CUuuid *u, CUdevice d) { return cuDeviceGetUuid(u, d); }

EXPORT CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute a, CUdevice d) {
    if (pi == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *pi = a == CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT ? devs[d].sm
          : a == CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR ? 2048 : 0;
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) {
    if (bytes == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *bytes = devs[d].total;
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorString(CUresult e, const char **s) {
    if (s == NULL) return CUDA_ERROR_INVALID_VALUE;
    *s = e == CUDA_SUCCESS ? "no error" : e == CUDA_ERROR_OUT_OF_MEMORY ? "out of memory" : "fake error";
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetErrorName(CUresult e, const char **s) {
    if (s == NULL) return CUDA_ERROR_INVALID_VALUE;
    *s = e == CUDA_SUCCESS ? "CUDA_SUCCESS" : e == CUDA_ERROR_OUT_OF_MEMORY ? "CUDA_ERROR_OUT_OF_MEMORY" : "CUDA_ERROR";
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ contexts */

static CUresult ctx_create(CUcontext *pctx, CUdevice d) {
    if (pctx == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    struct fk_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL || phys_take(d, ctx_bytes) != 0) {
        free(c);
        UNLOCK();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    c->dev = d;
    c->alive = 1;
    c->footprint = ctx_bytes;
    if (tls_depth < 16) tls_ctx_stack[tls_depth++] = c;
    UNLOCK();
    *pctx = (CUcontext)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxCreate_v2(CUcontext *p, unsigned int f, CUdevice d) {
    (void)f;
    return ctx_create(p, d);
}

EXPORT CUresult cuCtxCreate_v3(CUcontext *p, CUexecAffinityParam *a, int n, unsigned int f, CUdevice d) {
    (void)a;
    (void)n;
    (void)f;
    return ctx_create(p, d);
}

EXPORT CUresult cuCtxCreate_v4(CUcontext *p, CUctxCreateParams *a, unsigned int f, CUdevice d) {
    (void)a;
    (void)f;
    return ctx_create(p, d);
}

static CUresult ctx_destroy(CUcontext ctx) {
    struct fk_ctx *c = (struct fk_ctx *)ctx;
    if (c == NULL || c->primary) return CUDA_ERROR_INVALID_CONTEXT;
    LOCK();
    if (!c->alive) {
        UNLOCK();
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    ctx_teardown(c);
    for (int i = 0; i < tls_depth; i++)
        if (tls_ctx_stack[i] == c) tls_ctx_stack[i] = NULL;
    UNLOCK();
    /* keep the struct: handles stay distinguishable */
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxDestroy(CUcontext c) { return ctx_destroy(c); }
EXPORT CUresult cuCtxDestroy_v2(CUcontext c) { return ctx_destroy(c); }

EXPORT CUresult cuCtxGetCurrent(CUcontext *p) {
    if (p == NULL) return CUDA_ERROR_INVALID_VALUE;
    *p = (CUcontext)cur_ctx();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxSetCurrent(CUcontext c) {
    set_cur((struct fk_ctx *)c);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPushCurrent_v2(CUcontext c) {
    if (tls_depth >= 16) return CUDA_ERROR_INVALID_VALUE;
    tls_ctx_stack[tls_depth++] = (struct fk_ctx *)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxPopCurrent_v2(CUcontext *p) {
    if (tls_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    struct fk_ctx *c = tls_ctx_stack[--tls_depth];
    if (p != NULL) *p = (CUcontext)c;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuCtxGetDevice(CUdevice *d) {
    struct fk_ctx *c = cur_ctx();
    if (c == NULL) return CUDA_ERROR_INVALID_CONTEXT;
    if (d == NULL) return CUDA_ERROR_INVALID_VALUE;
    *d = c->dev;
    return CUDA_SUCCESS;
}

static void wait_until(int64_t t) {
    for (;;) {
        int64_t n = now_ns();
        if (n >= t) return;
        struct timespec ts = {.tv_sec = (t - n) / 1000000000LL, .tv_nsec = (t - n) % 1000000000LL};
        nanosleep(&ts, NULL);
    }
}

EXPORT CUresult cuCtxSynchronize(void) {
    struct fk_ctx *c = cur_ctx();
    if (c == NULL) return CUDA_ERROR_INVALID_CONTEXT;
    LOCK();
    int64_t t = devs[c->dev].tail;
    UNLOCK();
    wait_until(t);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *p, CUdevice d) {
    if (p == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    struct fk_dev *dv = &devs[d];
    if (dv->primary_refs == 0) {
        if (phys_take(d, ctx_bytes) != 0) {
            UNLOCK();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        dv->primary.alive = 1;
        dv->primary.footprint = ctx_bytes;
    }
    dv->primary_refs++;
    *p = (CUcontext)&dv->primary;
    UNLOCK();
    return CUDA_SUCCESS;
}

static CUresult primary_release(CUdevice d, int reset) {
    if (!valid_dev(d)) return CUDA_ERROR_INVALID_DEVICE;
    LOCK();
    struct fk_dev *dv = &devs[d];
    if (dv->primary_refs == 0 && !reset) {
        UNLOCK();
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (reset)
        dv->primary_refs = 0;
    else
        dv->primary_refs--;
    if (dv->primary_refs == 0 && dv->primary.alive) ctx_teardown(&dv->primary);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice d) { return primary_release(d, 0); }
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { return primary_release(d, 0); }
EXPORT CUresult cuDevicePrimaryCtxReset(CUdevice d) { return primary_release(d, 1); }
EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice d) { return primary_release(d, 1); }

EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned int *flags, int *active) {
    if (!valid_dev(d) || flags == NULL || active == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *flags = devs[d].primary_flags;
    *active = devs[d].primary_refs > 0;
    UNLOCK();
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ memory */

#define NEED_CTX(c)                                                                                          \
    struct fk_ctx *c = cur_ctx();                                                                            \
    if (c == NULL) return CUDA_ERROR_INVALID_CONTEXT

static CUresult plain_alloc(CUdeviceptr *p, uint64_t bytes) {
    NEED_CTX(c);
    if (p == NULL || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    if (phys_take(c->dev, bytes) != 0) {
        UNLOCK();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *p = new_addr(bytes);
    alloc_add(*p, bytes, A_PTR, c->dev, c, NULL);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) { return plain_alloc(p, bytes); }

static CUresult alt_cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) { return plain_alloc(p, bytes); }

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t bytes, unsigned int flags) {
    (void)flags;
    return plain_alloc(p, bytes);
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int elem) {
    if (pitch == NULL || w == 0 || h == 0 || (elem != 4 && elem != 8 && elem != 16)) return CUDA_ERROR_INVALID_VALUE;
    size_t pt = (w + 511) & ~(size_t)511;
    CUresult r = plain_alloc(p, (uint64_t)pt * h);
    if (r == CUDA_SUCCESS) *pitch = pt;
    return r;
}

static CUresult mem_free(CUdeviceptr p) {
    if (p == 0) return CUDA_SUCCESS;
    LOCK();
    int i = alloc_find(p, 0);
    if (i < 0 || (allocs[i].kind != A_PTR && allocs[i].kind != A_ASYNC)) {
        UNLOCK();
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (allocs[i].kind == A_ASYNC) {
        allocs[i].pool->used -= allocs[i].bytes;
    } else {
        phys_give(allocs[i].dev, allocs[i].bytes);
    }
    alloc_remove(i);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { return mem_free(p); }
static CUresult alt_cuMemFree_v2(CUdeviceptr p) { return mem_free(p); }

EXPORT CUresult cuMemGetInfo_v2(size_t *f, size_t *t) {
    NEED_CTX(c);
    if (f == NULL || t == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *t = devs[c->dev].total;
    *f = devs[c->dev].total - devs[c->dev].used;
    UNLOCK();
    return CUDA_SUCCESS;
}

static CUresult alt_cuMemGetInfo_v2(size_t *f, size_t *t) { return cuMemGetInfo_v2(f, t); }

/* pools */

static CUresult pool_alloc(struct fk_pool *pool, CUdeviceptr *p, uint64_t bytes) {
    if (p == NULL || bytes == 0 || pool == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    uint64_t idle = pool->reserved - pool->used;
    if (idle < bytes) {
        uint64_t grow = bytes - idle;
        grow = (grow + pool_gran - 1) / pool_gran * pool_gran;
        if (phys_take(pool->dev, grow) != 0) {
            UNLOCK();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        pool->reserved += grow;
        if (pool->reserved > pool->reserved_high) pool->reserved_high = pool->reserved;
    }
    pool->used += bytes;
    if (pool->used > pool->used_high) pool->used_high = pool->used;
    *p = new_addr(bytes);
    alloc_add(*p, bytes, A_ASYNC, pool->dev, cur_ctx(), pool);
    UNLOCK();
    return CUDA_SUCCESS;
}

static CUresult async_alloc(CUdeviceptr *p, size_t bytes, CUstream s) {
    (void)s;
    NEED_CTX(c);
    return pool_alloc(devs[c->dev].current_pool, p, bytes);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t b, CUstream s) { return async_alloc(p, b, s); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t b, CUstream s) { return async_alloc(p, b, s); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s) {
    (void)s;
    return pool_alloc((struct fk_pool *)pool, p, b);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s) {
    (void)s;
    return pool_alloc((struct fk_pool *)pool, p, b);
}

static CUresult async_free(CUdeviceptr p, CUstream s) {
    (void)s;
    LOCK();
    int i = alloc_find(p, A_ASYNC);
    if (i < 0) {
        UNLOCK();
        return CUDA_ERROR_INVALID_VALUE;
    }
    allocs[i].pool->used -= allocs[i].bytes;
    alloc_remove(i);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { return async_free(p, s); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { return async_free(p, s); }

EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    uint64_t target = keep > pl->used ? keep : pl->used;
    if (pl->reserved > target) {
        phys_give(pl->dev, pl->reserved - target);
        pl->reserved = target;
    }
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    if (pool == NULL || props == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_pool *pl = calloc(1, sizeof(*pl));
    if (pl == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    pl->on_device = props->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
    pl->dev = pl->on_device ? props->location.id : 0;
    *pool = (CUmemoryPool)pl;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    phys_give(pl->dev, pl->reserved);
    for (size_t i = 0; i < nallocs;) {
        if (allocs[i].pool == pl)
            alloc_remove((int)i);
        else
            i++;
    }
    UNLOCK();
    free(pl);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL || value == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    uint64_t v;
    switch (attr) {
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: v = pl->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: v = pl->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: v = pl->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: v = pl->used_high; break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: v = pl->threshold; break;
    default:
        UNLOCK();
        return CUDA_ERROR_INVALID_VALUE;
    }
    UNLOCK();
    memcpy(value, &v, sizeof(v));
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice d) {
    if (pool == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *pool = (CUmemoryPool)devs[d].current_pool;
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice d) {
    if (pool == NULL || !valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *pool = (CUmemoryPool)&devs[d].default_pool;
    UNLOCK();
    return CUDA_SUCCESS;
}

/* VMM */

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    (void)flags;
    if (h == NULL || prop == NULL || size == 0) return CUDA_ERROR_INVALID_VALUE;
    int dev = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? prop->location.id : -1;
    LOCK();
    if (dev >= ndev) {
        UNLOCK();
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (dev >= 0 && phys_take(dev, size) != 0) {
        UNLOCK();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *h = next_handle++;
    alloc_add(*h, size, A_VMM, dev, NULL, NULL);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
    LOCK();
    int i = alloc_find(h, A_VMM);
    if (i < 0) {
        UNLOCK();
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (allocs[i].dev >= 0) phys_give(allocs[i].dev, allocs[i].bytes);
    alloc_remove(i);
    UNLOCK();
    return CUDA_SUCCESS;
}

/* arrays: the fake's own (exact) footprint: width x height x depth x channels x element size per level */

static uint64_t fmt_size(CUarray_format f) {
    return (f == 0x01 || f == 0x08) ? 1 : (f == 0x02 || f == 0x09 || f == 0x10) ? 2 : 4;
}

static uint64_t fk_array_bytes(size_t w, size_t h, size_t d, CUarray_format f, unsigned int ch, unsigned int levels,
                               int keep_depth) {
    uint64_t total = 0;
    if (levels == 0) levels = 1;
    for (unsigned int l = 0; l < levels; l++) {
        uint64_t lw = (w ? w : 1) >> l, lh = (h ? h : 1) >> l, ld = keep_depth ? (d ? d : 1) : (d ? d : 1) >> l;
        total += (lw ? lw : 1) * (lh ? lh : 1) * (ld ? ld : 1) * (ch ? ch : 1) * fmt_size(f);
    }
    return total;
}

static CUresult array_make(uint64_t bytes, int kind, uint64_t *key) {
    NEED_CTX(c);
    LOCK();
    if (phys_take(c->dev, bytes) != 0) {
        UNLOCK();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *key = (uint64_t)(uintptr_t)calloc(1, 16);
    alloc_add(*key, bytes, kind, c->dev, c, NULL);
    UNLOCK();
    return CUDA_SUCCESS;
}

static CUresult array_free(uint64_t key, int kind) {
    LOCK();
    int i = alloc_find(key, kind);
    if (i < 0) {
        UNLOCK();
        return CUDA_ERROR_INVALID_HANDLE;
    }
    phys_give(allocs[i].dev, allocs[i].bytes);
    alloc_remove(i);
    UNLOCK();
    free((void *)(uintptr_t)key);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuArrayCreate_v2(CUarray *h, const CUDA_ARRAY_DESCRIPTOR *d) {
    if (h == NULL || d == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    CUresult r = array_make(fk_array_bytes(d->Width, d->Height, 0, d->Format, d->NumChannels, 1, 0), A_ARRAY, &key);
    if (r == CUDA_SUCCESS) *h = (CUarray)(uintptr_t)key;
    return r;
}

EXPORT CUresult cuArray3DCreate_v2(CUarray *h, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    if (h == NULL || d == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    CUresult r = array_make(fk_array_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels, 1, 1), A_ARRAY,
                            &key);
    if (r == CUDA_SUCCESS) *h = (CUarray)(uintptr_t)key;
    return r;
}

EXPORT CUresult cuArrayDestroy(CUarray h) { return array_free((uint64_t)(uintptr_t)h, A_ARRAY); }

EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *h, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels) {
    if (h == NULL || d == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    int keep = (d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
    CUresult r = array_make(fk_array_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels, levels, keep),
                            A_MIPMAP, &key);
    if (r == CUDA_SUCCESS) *h = (CUmipmappedArray)(uintptr_t)key;
    return r;
}

EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h) { return array_free((uint64_t)(uintptr_t)h, A_MIPMAP); }

/* ------------------------------------------------------------------ streams, events, launches */

static int64_t *stream_tail(CUstream s, int ptsz, int dev) {
    if ((s == NULL && ptsz) || s == CU_STREAM_PER_THREAD) return &tls_pts_tail[dev];
    if (s == NULL || s == CU_STREAM_LEGACY) return &devs[dev].legacy_tail;
    return &((struct fk_stream *)s)->tail;
}

EXPORT CUresult cuStreamCreate(CUstream *s, unsigned int flags) {
    (void)flags;
    NEED_CTX(c);
    if (s == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_stream *st = calloc(1, sizeof(*st));
    if (st == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    st->dev = c->dev;
    *s = (CUstream)st;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamDestroy_v2(CUstream s) {
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) return CUDA_ERROR_INVALID_HANDLE;
    free(s);
    return CUDA_SUCCESS;
}

static CUresult stream_sync(CUstream s, int ptsz) {
    NEED_CTX(c);
    LOCK();
    int64_t t = (s == NULL && !ptsz) ? devs[c->dev].tail : *stream_tail(s, ptsz, c->dev);
    UNLOCK();
    wait_until(t);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamSynchronize(CUstream s) { return stream_sync(s, 0); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { return stream_sync(s, 1); }

EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *st) {
    (void)s;
    if (st == NULL) return CUDA_ERROR_INVALID_VALUE;
    *st = CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus *st) { return cuStreamIsCapturing(s, st); }

EXPORT CUresult cuEventCreate(CUevent *e, unsigned int flags) {
    NEED_CTX(c);
    (void)c;
    if (e == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_event *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    ev->timing = !(flags & CU_EVENT_DISABLE_TIMING);
    *e = (CUevent)ev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
    free(e);
    return CUDA_SUCCESS;
}

static CUresult event_record(CUevent e, CUstream s, int ptsz) {
    NEED_CTX(c);
    struct fk_event *ev = (struct fk_event *)e;
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    LOCK();
    int64_t n = now_ns();
    int64_t t = (s == NULL && !ptsz) ? devs[c->dev].tail : *stream_tail(s, ptsz, c->dev);
    ev->t = t > n ? t : n;
    ev->recorded = 1;
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(CUevent e, CUstream s) { return event_record(e, s, 0); }
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return event_record(e, s, 1); }

EXPORT CUresult cuEventQuery(CUevent e) {
    struct fk_event *ev = (struct fk_event *)e;
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    if (!ev->recorded) return CUDA_SUCCESS;
    return now_ns() >= ev->t ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuEventSynchronize(CUevent e) {
    struct fk_event *ev = (struct fk_event *)e;
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    if (ev->recorded) wait_until(ev->t);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b) {
    struct fk_event *x = (struct fk_event *)a, *y = (struct fk_event *)b;
    if (ms == NULL || x == NULL || y == NULL) return CUDA_ERROR_INVALID_HANDLE;
    if (!x->recorded || !y->recorded || !x->timing || !y->timing) return CUDA_ERROR_INVALID_HANDLE;
    int64_t n = now_ns();
    if (n < x->t || n < y->t) return CUDA_ERROR_NOT_READY;
    *ms = (float)((double)(y->t - x->t) / 1e6);
    return CUDA_SUCCESS;
}

static CUresult run_kernel(CUstream s, int ptsz, int64_t dur) {
    NEED_CTX(c);
    LOCK();
    struct fk_dev *d = &devs[c->dev];
    /* A full launch queue blocks the host, as the hardware's does. */
    while (d->tail - now_ns() > queue_ns) {
        int64_t t = d->tail - queue_ns;
        UNLOCK();
        wait_until(t);
        LOCK();
    }
    int64_t *tail = (s == NULL && !ptsz) ? &d->legacy_tail : stream_tail(s, ptsz, c->dev);
    int64_t n = now_ns();
    int64_t start = n;
    if (*tail > start) start = *tail;
    if (d->tail > start) start = d->tail;
    int64_t end = start + dur;
    d->tail = end;
    *tail = end;
    if (s == NULL && !ptsz) d->legacy_tail = end;
    d->busy_ns += (uint64_t)dur;
    d->kernels++;
    if (d->first_start == 0) d->first_start = start;
    d->last_end = end;
    UNLOCK();
    return CUDA_SUCCESS;
}

static int64_t kernel_ns(int dev, unsigned int gx, unsigned int gy, unsigned int gz) {
    uint64_t blocks = (uint64_t)(gx ? gx : 1) * (gy ? gy : 1) * (gz ? gz : 1);
    uint64_t sm = (uint64_t)devs[dev].sm;
    return (int64_t)((blocks + sm - 1) / sm) * wave_ns;
}

static CUresult launch(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, CUstream s, int ptsz) {
    NEED_CTX(c);
    if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
    return run_kernel(s, ptsz, kernel_ns(c->dev, gx, gy, gz));
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p, void **e) {
    (void)bx, (void)by, (void)bz, (void)sh, (void)p, (void)e;
    return launch(f, gx, gy, gz, s, 0);
}

static CUresult alt_cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                   unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p,
                                   void **e) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sh, s, p, e);
}

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p,
                                    void **e) {
    (void)bx, (void)by, (void)bz, (void)sh, (void)p, (void)e;
    return launch(f, gx, gy, gz, s, 1);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **p, void **e) {
    (void)p, (void)e;
    if (cfg == NULL) return CUDA_ERROR_INVALID_VALUE;
    return launch(f, cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ, cfg->hStream, 0);
}

EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction f, void **p, void **e) {
    (void)p, (void)e;
    if (cfg == NULL) return CUDA_ERROR_INVALID_VALUE;
    return launch(f, cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ, cfg->hStream, 1);
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                          unsigned int bx, unsigned int by, unsigned int bz, unsigned int sh,
                                          CUstream s, void **p) {
    (void)bx, (void)by, (void)bz, (void)sh, (void)p;
    return launch(f, gx, gy, gz, s, 0);
}

EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int sh,
                                               CUstream s, void **p) {
    (void)bx, (void)by, (void)bz, (void)sh, (void)p;
    return launch(f, gx, gy, gz, s, 1);
}

EXPORT CUresult cuGraphCreate(CUgraph *g, unsigned int flags) {
    (void)flags;
    if (g == NULL) return CUDA_ERROR_INVALID_VALUE;
    *g = (CUgraph)calloc(1, 16);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
    (void)flags;
    if (e == NULL || g == NULL) return CUDA_ERROR_INVALID_VALUE;
    *e = (CUgraphExec)calloc(1, 16);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) {
    if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
    return run_kernel(s, 0, graph_ns);
}

EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) {
    if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
    return run_kernel(s, 1, graph_ns);
}

EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) {
    free(e);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphDestroy(CUgraph g) {
    free(g);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ cuGetProcAddress */

struct proc_entry {
    const char *name;
    void *fn;
    void *alt;
};

#define P(n) {#n, (void *)&n, NULL}
#define PA(n) {#n, (void *)&n, (void *)&alt_##n}
static const struct proc_entry k_procs[] = {
    P(cuInit), P(cuDriverGetVersion), P(cuDeviceGet), P(cuDeviceGetCount), P(cuDeviceGetName),
    P(cuDeviceGetUuid), P(cuDeviceGetUuid_v2), P(cuDeviceGetAttribute), P(cuDeviceTotalMem_v2),
    P(cuGetErrorString), P(cuGetErrorName), P(cuCtxCreate_v2), P(cuCtxCreate_v3), P(cuCtxCreate_v4),
    P(cuCtxDestroy), P(cuCtxDestroy_v2), P(cuCtxGetCurrent), P(cuCtxSetCurrent), P(cuCtxPushCurrent_v2),
    P(cuCtxPopCurrent_v2), P(cuCtxGetDevice), P(cuCtxSynchronize), P(cuDevicePrimaryCtxRetain),
    P(cuDevicePrimaryCtxRelease), P(cuDevicePrimaryCtxRelease_v2), P(cuDevicePrimaryCtxReset),
    P(cuDevicePrimaryCtxReset_v2), P(cuDevicePrimaryCtxGetState), PA(cuMemAlloc_v2), P(cuMemAllocManaged),
    P(cuMemAllocPitch_v2), PA(cuMemFree_v2), PA(cuMemGetInfo_v2), P(cuMemAllocAsync), P(cuMemAllocAsync_ptsz),
    P(cuMemAllocFromPoolAsync), P(cuMemAllocFromPoolAsync_ptsz), P(cuMemFreeAsync), P(cuMemFreeAsync_ptsz),
    P(cuMemPoolTrimTo), P(cuMemPoolCreate), P(cuMemPoolDestroy), P(cuMemPoolGetAttribute),
    P(cuDeviceGetMemPool), P(cuDeviceGetDefaultMemPool), P(cuMemCreate), P(cuMemRelease), P(cuArrayCreate_v2),
    P(cuArray3DCreate_v2), P(cuArrayDestroy), P(cuMipmappedArrayCreate), P(cuMipmappedArrayDestroy),
    P(cuStreamCreate), P(cuStreamDestroy_v2), P(cuStreamSynchronize), P(cuStreamSynchronize_ptsz),
    P(cuStreamIsCapturing), P(cuStreamIsCapturing_ptsz), P(cuEventCreate), P(cuEventDestroy_v2),
    P(cuEventRecord), P(cuEventRecord_ptsz), P(cuEventQuery), P(cuEventSynchronize), P(cuEventElapsedTime),
    PA(cuLaunchKernel), P(cuLaunchKernel_ptsz), P(cuLaunchKernelEx), P(cuLaunchKernelEx_ptsz),
    P(cuLaunchCooperativeKernel), P(cuLaunchCooperativeKernel_ptsz), P(cuGraphCreate),
    P(cuGraphInstantiateWithFlags), P(cuGraphLaunch), P(cuGraphLaunch_ptsz), P(cuGraphExecDestroy),
    P(cuGraphDestroy), P(cuGetProcAddress), P(cuGetProcAddress_v2),
};
#undef P
#undef PA

/* The driver's versioned names: base name -> (first CUDA version, name). Newest first. */
static const struct {
    const char *base;
    int ver;
    const char *name;
} k_vers[] = {
    {"cuMemAlloc", 3020, "cuMemAlloc_v2"}, {"cuMemFree", 3020, "cuMemFree_v2"},
    {"cuMemAllocPitch", 3020, "cuMemAllocPitch_v2"}, {"cuMemGetInfo", 3020, "cuMemGetInfo_v2"},
    {"cuDeviceTotalMem", 3020, "cuDeviceTotalMem_v2"}, {"cuArrayCreate", 3020, "cuArrayCreate_v2"},
    {"cuArray3DCreate", 3020, "cuArray3DCreate_v2"}, {"cuCtxCreate", 12050, "cuCtxCreate_v4"},
    {"cuCtxCreate", 11040, "cuCtxCreate_v3"}, {"cuCtxCreate", 3020, "cuCtxCreate_v2"},
    {"cuCtxDestroy", 4000, "cuCtxDestroy_v2"}, {"cuCtxPushCurrent", 4000, "cuCtxPushCurrent_v2"},
    {"cuCtxPopCurrent", 4000, "cuCtxPopCurrent_v2"}, {"cuStreamDestroy", 4000, "cuStreamDestroy_v2"},
    {"cuEventDestroy", 4000, "cuEventDestroy_v2"}, {"cuDevicePrimaryCtxRelease", 11000, "cuDevicePrimaryCtxRelease_v2"},
    {"cuDevicePrimaryCtxReset", 11000, "cuDevicePrimaryCtxReset_v2"}, {"cuDeviceGetUuid", 11040, "cuDeviceGetUuid_v2"},
    {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"},
};

static const struct proc_entry *proc_find(const char *name) {
    for (size_t i = 0; i < sizeof(k_procs) / sizeof(k_procs[0]); i++)
        if (strcmp(k_procs[i].name, name) == 0) return &k_procs[i];
    return NULL;
}

static CUresult get_proc(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st) {
    if (sym == NULL || pfn == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    UNLOCK();
    const char *name = sym;
    int listed = 0;
    for (size_t i = 0; i < sizeof(k_vers) / sizeof(k_vers[0]); i++) {
        if (strcmp(k_vers[i].base, sym) != 0) continue;
        listed = 1;
        if (ver >= k_vers[i].ver) {
            name = k_vers[i].name;
            break;
        }
    }
    (void)listed;
    const struct proc_entry *e = NULL;
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        char buf[128];
        snprintf(buf, sizeof(buf), "%s_ptsz", name);
        e = proc_find(buf);
    }
    if (e == NULL) e = proc_find(name);
    if (e == NULL) {
        *pfn = NULL;
        if (st != NULL) *st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    *pfn = (procaddr_alt && e->alt != NULL) ? e->alt : e->fn;
    if (st != NULL) *st = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags) {
    return get_proc(sym, pfn, ver, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *st) {
    return get_proc(sym, pfn, ver, flags, st);
}

/* ------------------------------------------------------------------ NVML */

static int nvml_dev(nvmlDevice_t h) {
    struct fk_dev *d = (struct fk_dev *)h;
    if (d < devs || d >= devs + ndev) return -1;
    return (int)(d - devs);
}

/* NVML index i shows CUDA ordinal nvml_order[i]. */
static int nvml_index_of(int cuda) {
    for (int i = 0; i < ndev; i++)
        if (nvml_order[i] == cuda) return i;
    return cuda;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    LOCK();
    UNLOCK();
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int f) {
    (void)f;
    return nvmlInit_v2();
}
EXPORT nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    if (n == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    LOCK();
    *n = (unsigned int)ndev;
    UNLOCK();
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h) {
    LOCK();
    int ok = h != NULL && i < (unsigned int)ndev;
    if (ok) *h = (nvmlDevice_t)&devs[nvml_order[i]];
    UNLOCK();
    return ok ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *h) {
    return nvmlDeviceGetHandleByIndex_v2(i, h);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t h, unsigned int *idx) {
    int d = nvml_dev(h);
    if (d < 0 || idx == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *idx = (unsigned int)nvml_index_of(d);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int len) {
    int d = nvml_dev(h);
    if (d < 0 || uuid == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    CUuuid u;
    uuid_bytes(d, &u);
    const unsigned char *b = (const unsigned char *)u.bytes;
    int n = snprintf(uuid, len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                     b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return n >= (int)len ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    int d = nvml_dev(h);
    if (d < 0 || m == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    LOCK();
    m->total = devs[d].total;
    m->used = devs[d].used;
    m->free = devs[d].total - devs[d].used;
    UNLOCK();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m) {
    int d = nvml_dev(h);
    if (d < 0 || m == NULL || m->version != nvmlMemory_v2) return NVML_ERROR_INVALID_ARGUMENT;
    LOCK();
    m->total = devs[d].total;
    m->reserved = 0;
    m->used = devs[d].used;
    m->free = devs[d].total - devs[d].used;
    UNLOCK();
    return NVML_SUCCESS;
}

static nvmlReturn_t procs(nvmlDevice_t h, unsigned int *count, void *out, int v1) {
    int d = nvml_dev(h);
    if (d < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    LOCK();
    uint64_t used = devs[d].used;
    UNLOCK();
    unsigned int n = used > 0 ? 1 : 0;
    if (*count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    if (n == 1 && out != NULL) {
        unsigned int pid = (unsigned int)(getpid() + pid_offset);
        if (v1) {
            ((nvmlProcessInfo_v1_t *)out)[0] = (nvmlProcessInfo_v1_t){pid, used};
        } else {
            ((nvmlProcessInfo_t *)out)[0] = (nvmlProcessInfo_t){pid, used, 0xffffffffu, 0xffffffffu};
        }
    }
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t h, unsigned int *c, nvmlProcessInfo_v1_t *o) {
    return procs(h, c, o, 1);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t h, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(h, c, o, 0);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *c, nvmlProcessInfo_t *o) {
    return procs(h, c, o, 0);
}

static unsigned int util_percent(int d) {
    int64_t span = devs[d].last_end - devs[d].first_start;
    if (span <= 0) return 0;
    double u = (double)devs[d].busy_ns / (double)span;
    return (unsigned int)(u * 100.0 + 0.5);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    int d = nvml_dev(h);
    if (d < 0 || u == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    LOCK();
    u->gpu = util_percent(d);
    u->memory = 0;
    UNLOCK();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t h, nvmlProcessUtilizationSample_t *s,
                                                    unsigned int *count, unsigned long long last_seen) {
    (void)last_seen;
    int d = nvml_dev(h);
    if (d < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (s == NULL || *count < 1) {
        *count = 1;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    LOCK();
    s[0] = (nvmlProcessUtilizationSample_t){(unsigned int)(getpid() + pid_offset), (unsigned long long)(now_ns() / 1000),
                                            util_percent(d), 0, 0, 0};
    UNLOCK();
    *count = 1;
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r) { return r == NVML_SUCCESS ? "Success" : "Fake NVML error"; }

/* ------------------------------------------------------------------ test hooks */

EXPORT int fakeGpuGetStats(int dev, struct fake_gpu_stats *out) {
    LOCK();
    if (dev < 0 || dev >= ndev || out == NULL) {
        UNLOCK();
        return -1;
    }
    out->busy_ns = devs[dev].busy_ns;
    out->first_start_ns = devs[dev].first_start;
    out->last_end_ns = devs[dev].last_end;
    out->kernels = devs[dev].kernels;
    out->mem_used = devs[dev].used;
    out->mem_total = devs[dev].total;
    UNLOCK();
    return 0;
}
