/*
 * Memory hooks: every allocation family is charged to the device it lands on, in this process's slot, under
 * the region lock, before (or, when the size is only known afterwards, right after) the real call. Frees,
 * pool trims, context teardown and process exit give the bytes back. Memory info is virtualised.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu.h"

static int g_have_pools;

static void track(int kind, uint64_t key, int dev, uint64_t bytes, CUcontext ctx, uint64_t aux) {
    struct vgpu_track_entry e = {.key = key, .bytes = bytes, .aux = aux, .ctx = (uintptr_t)ctx, .kind = kind, .dev = dev};
    vgpu_track_put(&e);
}

/* Charges data bytes with the limit check; on refusal re-reads pool reserves once and retries. */
static int charge_data(int dev, uint64_t bytes) {
    if (vgpu_region_charge(dev, bytes, VGPU_MEM_DATA, 1) == 0) return 0;
    if (__atomic_load_n(&g_have_pools, __ATOMIC_RELAXED)) {
        vgpu_pools_refresh();
        return vgpu_region_charge(dev, bytes, VGPU_MEM_DATA, 1);
    }
    return -1;
}

void vgpu_mem_release_entry(const struct vgpu_track_entry *e) {
    switch (e->kind) {
    case VGPU_TRK_CTX:
        vgpu_region_uncharge(e->dev, e->bytes, VGPU_MEM_CONTEXT);
        break;
    case VGPU_TRK_ASYNC:
        if (e->aux == 0) vgpu_region_uncharge(e->dev, e->bytes, VGPU_MEM_DATA); /* unpooled fallback */
        break;                                                               /* pooled: the pool is charged */
    default:
        vgpu_region_uncharge(e->dev, e->bytes, VGPU_MEM_DATA);
        break;
    }
}

/* ------------------------------------------------------------------ plain allocations */

VGPU_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    REQUIRE_REAL(cuMemAlloc_v2);
    if (vgpu_passthrough() || dptr == NULL || bytesize == 0) return REAL(cuMemAlloc_v2)(dptr, bytesize);
    CUcontext ctx;
    int dev = vgpu_current_dev(&ctx);
    if (dev < 0) return REAL(cuMemAlloc_v2)(dptr, bytesize);
    if (charge_data(dev, bytesize) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuMemAlloc_v2)(dptr, bytesize);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, bytesize, VGPU_MEM_DATA);
        return r;
    }
    track(VGPU_TRK_PTR, *dptr, dev, bytesize, ctx, 0);
    return r;
}

VGPU_EXPORT CUresult cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    REQUIRE_REAL(cuMemAllocManaged);
    if (vgpu_passthrough() || dptr == NULL || bytesize == 0) return REAL(cuMemAllocManaged)(dptr, bytesize, flags);
    CUcontext ctx;
    int dev = vgpu_current_dev(&ctx);
    if (dev < 0) return REAL(cuMemAllocManaged)(dptr, bytesize, flags);
    if (charge_data(dev, bytesize) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuMemAllocManaged)(dptr, bytesize, flags);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, bytesize, VGPU_MEM_DATA);
        return r;
    }
    track(VGPU_TRK_PTR, *dptr, dev, bytesize, ctx, 0);
    return r;
}

static uint64_t mul_sat(uint64_t a, uint64_t b) {
    if (a != 0 && b > UINT64_MAX / a) return UINT64_MAX;
    return a * b;
}

VGPU_EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *dptr, size_t *pPitch, size_t WidthInBytes, size_t Height,
                                        unsigned int ElementSizeBytes) {
    REQUIRE_REAL(cuMemAllocPitch_v2);
    if (vgpu_passthrough() || dptr == NULL || pPitch == NULL || WidthInBytes == 0 || Height == 0)
        return REAL(cuMemAllocPitch_v2)(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    CUcontext ctx;
    int dev = vgpu_current_dev(&ctx);
    if (dev < 0) return REAL(cuMemAllocPitch_v2)(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    /* Reserve the lower bound first, then top up to the pitch the driver chose. */
    uint64_t est = mul_sat(WidthInBytes, Height);
    if (charge_data(dev, est) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuMemAllocPitch_v2)(dptr, pPitch, WidthInBytes, Height, ElementSizeBytes);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, est, VGPU_MEM_DATA);
        return r;
    }
    uint64_t actual = mul_sat(*pPitch, Height);
    if (actual > est && charge_data(dev, actual - est) != 0) {
        REAL(cuMemFree_v2)(*dptr);
        vgpu_region_uncharge(dev, est, VGPU_MEM_DATA);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (actual < est) {
        vgpu_region_uncharge(dev, est - actual, VGPU_MEM_DATA);
    }
    track(VGPU_TRK_PTR, *dptr, dev, actual, ctx, 0);
    return r;
}

/* ------------------------------------------------------------------ memory pools and async allocations */

static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;

#define POOL_COUNTED 1
#define POOL_NOT_COUNTED 2

static int pool_attr(CUmemoryPool pool, CUmemPool_attribute attr, uint64_t *out) {
    cuuint64_t v = 0;
    if (REAL(cuMemPoolGetAttribute) == NULL || REAL(cuMemPoolGetAttribute)(pool, attr, &v) != CUDA_SUCCESS)
        return -1;
    *out = v;
    return 0;
}

static void pool_learn(CUmemoryPool pool, int dev, int counted) {
    if (pool == NULL) return;
    struct vgpu_track_entry e;
    if (vgpu_track_get(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, &e)) return;
    track(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, dev, 0, NULL, (uint64_t)counted);
    __atomic_store_n(&g_have_pools, 1, __ATOMIC_RELAXED);
}

/* Sets the pool's charge to its current reserve (no limit check: the memory is already held).
 * Returns the reserve, or UINT64_MAX when it cannot be read. Caller holds g_pool_mu. */
static uint64_t pool_sync_locked(CUmemoryPool pool) {
    struct vgpu_track_entry e;
    if (!vgpu_track_get(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, &e) || e.aux != POOL_COUNTED) return UINT64_MAX;
    uint64_t reserved;
    if (pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &reserved) != 0) return UINT64_MAX;
    if (reserved > e.bytes)
        vgpu_region_charge(e.dev, reserved - e.bytes, VGPU_MEM_DATA, 0);
    else if (reserved < e.bytes)
        vgpu_region_uncharge(e.dev, e.bytes - reserved, VGPU_MEM_DATA);
    vgpu_track_set_bytes(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, reserved);
    return reserved;
}

static void collect_pool(const struct vgpu_track_entry *e, void *arg) {
    uint64_t *keys = arg;
    if (keys[0] < 255) keys[++keys[0]] = e->key;
}

void vgpu_mem_atfork_child(void) { pthread_mutex_init(&g_pool_mu, NULL); }

void vgpu_pools_refresh(void) {
    if (!__atomic_load_n(&g_have_pools, __ATOMIC_RELAXED)) return;
    uint64_t keys[256] = {0};
    vgpu_track_each(VGPU_TRK_POOL, collect_pool, keys);
    pthread_mutex_lock(&g_pool_mu);
    for (uint64_t i = 1; i <= keys[0]; i++) pool_sync_locked((CUmemoryPool)(uintptr_t)keys[i]);
    pthread_mutex_unlock(&g_pool_mu);
}

typedef CUresult (*alloc_async_fn)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*alloc_pool_fn)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
typedef CUresult (*free_async_fn)(CUdeviceptr, CUstream);

static CUresult do_alloc(alloc_async_fn fa, alloc_pool_fn fp, CUdeviceptr *dptr, size_t size, CUmemoryPool pool,
                         CUstream s) {
    return fp != NULL ? fp(dptr, size, pool, s) : fa(dptr, size, s);
}

/* pool == NULL: the device's current pool (cuMemAllocAsync). */
static CUresult async_alloc(alloc_async_fn fa, alloc_pool_fn fp, free_async_fn ffree, CUdeviceptr *dptr,
                            size_t size, CUmemoryPool pool, CUstream s) {
    if (vgpu_passthrough() || dptr == NULL || size == 0) return do_alloc(fa, fp, dptr, size, pool, s);
    CUcontext ctx;
    int dev = vgpu_current_dev(&ctx);
    CUdevice cudev = 0;
    if (pool == NULL) {
        if (dev < 0 || REAL(cuCtxGetDevice)(&cudev) != CUDA_SUCCESS || REAL(cuDeviceGetMemPool) == NULL ||
            REAL(cuDeviceGetMemPool)(&pool, cudev) != CUDA_SUCCESS)
            pool = NULL;
        else
            pool_learn(pool, dev, POOL_COUNTED);
    }
    struct vgpu_track_entry pe;
    int known = pool != NULL && vgpu_track_get(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, &pe);
    if (known && pe.aux == POOL_NOT_COUNTED) return do_alloc(fa, fp, dptr, size, pool, s);
    if (known) dev = pe.dev;
    if (dev < 0) return do_alloc(fa, fp, dptr, size, pool, s);
    if (!known && pool != NULL) {
        pool_learn(pool, dev, POOL_COUNTED);
        known = 1;
    }

    pthread_mutex_lock(&g_pool_mu);
    uint64_t reserved = known ? pool_sync_locked(pool) : UINT64_MAX;
    uint64_t used = 0;
    if (reserved == UINT64_MAX || pool_attr(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used) != 0) {
        /* No pool figures: charge the request itself, as for cuMemAlloc. */
        pthread_mutex_unlock(&g_pool_mu);
        if (charge_data(dev, size) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
        CUresult r = do_alloc(fa, fp, dptr, size, pool, s);
        if (r != CUDA_SUCCESS) {
            vgpu_region_uncharge(dev, size, VGPU_MEM_DATA);
            return r;
        }
        track(VGPU_TRK_ASYNC, *dptr, dev, size, ctx, 0);
        return r;
    }
    uint64_t idle = reserved > used ? reserved - used : 0;
    uint64_t growth = size > idle ? size - idle : 0;
    if (growth > 0 && vgpu_region_charge(dev, growth, VGPU_MEM_DATA, 1) != 0) {
        pthread_mutex_unlock(&g_pool_mu);
        vgpu_pools_refresh();
        pthread_mutex_lock(&g_pool_mu);
        if (vgpu_region_charge(dev, growth, VGPU_MEM_DATA, 1) != 0) {
            pthread_mutex_unlock(&g_pool_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    CUresult r = do_alloc(fa, fp, dptr, size, pool, s);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, growth, VGPU_MEM_DATA);
        pthread_mutex_unlock(&g_pool_mu);
        return r;
    }
    uint64_t after = reserved;
    pool_attr(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &after);
    uint64_t actual = after > reserved ? after - reserved : 0;
    if (actual > growth && vgpu_region_charge(dev, actual - growth, VGPU_MEM_DATA, 1) != 0) {
        /* The driver's granularity pushed the pool past the limit: undo and hand the memory back. */
        ffree(*dptr, s);
        if (REAL(cuStreamSynchronize) != NULL) REAL(cuStreamSynchronize)(s);
        if (REAL(cuMemPoolTrimTo) != NULL) REAL(cuMemPoolTrimTo)(pool, reserved);
        vgpu_track_set_bytes(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, reserved + growth);
        pool_sync_locked(pool);
        pthread_mutex_unlock(&g_pool_mu);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (actual < growth) vgpu_region_uncharge(dev, growth - actual, VGPU_MEM_DATA);
    vgpu_track_set_bytes(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, after);
    pthread_mutex_unlock(&g_pool_mu);
    track(VGPU_TRK_ASYNC, *dptr, dev, size, ctx, (uint64_t)(uintptr_t)pool);
    return r;
}

static CUresult async_free(free_async_fn f, CUdeviceptr p, CUstream s) {
    struct vgpu_track_entry e;
    if (vgpu_passthrough() || p == 0 || !vgpu_track_take(VGPU_TRK_ASYNC, p, &e)) return f(p, s);
    CUresult r = f(p, s);
    if (r != CUDA_SUCCESS) {
        vgpu_track_put(&e);
        return r;
    }
    if (e.aux == 0) {
        vgpu_region_uncharge(e.dev, e.bytes, VGPU_MEM_DATA);
    } else {
        pthread_mutex_lock(&g_pool_mu);
        pool_sync_locked((CUmemoryPool)(uintptr_t)e.aux);
        pthread_mutex_unlock(&g_pool_mu);
    }
    return r;
}

VGPU_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    REQUIRE_REAL(cuMemAllocAsync);
    return async_alloc(REAL(cuMemAllocAsync), NULL, REAL(cuMemFreeAsync), dptr, bytesize, NULL, hStream);
}

VGPU_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    REQUIRE_REAL(cuMemAllocAsync_ptsz);
    free_async_fn ff = REAL(cuMemFreeAsync_ptsz) != NULL ? REAL(cuMemFreeAsync_ptsz) : REAL(cuMemFreeAsync);
    return async_alloc(REAL(cuMemAllocAsync_ptsz), NULL, ff, dptr, bytesize, NULL, hStream);
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                             CUstream hStream) {
    REQUIRE_REAL(cuMemAllocFromPoolAsync);
    if (pool == NULL) return REAL(cuMemAllocFromPoolAsync)(dptr, bytesize, pool, hStream);
    return async_alloc(NULL, REAL(cuMemAllocFromPoolAsync), REAL(cuMemFreeAsync), dptr, bytesize, pool, hStream);
}

VGPU_EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                                  CUstream hStream) {
    REQUIRE_REAL(cuMemAllocFromPoolAsync_ptsz);
    if (pool == NULL) return REAL(cuMemAllocFromPoolAsync_ptsz)(dptr, bytesize, pool, hStream);
    free_async_fn ff = REAL(cuMemFreeAsync_ptsz) != NULL ? REAL(cuMemFreeAsync_ptsz) : REAL(cuMemFreeAsync);
    return async_alloc(NULL, REAL(cuMemAllocFromPoolAsync_ptsz), ff, dptr, bytesize, pool, hStream);
}

VGPU_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    REQUIRE_REAL(cuMemFreeAsync);
    return async_free(REAL(cuMemFreeAsync), dptr, hStream);
}

VGPU_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
    REQUIRE_REAL(cuMemFreeAsync_ptsz);
    return async_free(REAL(cuMemFreeAsync_ptsz), dptr, hStream);
}

VGPU_EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep) {
    REQUIRE_REAL(cuMemPoolTrimTo);
    CUresult r = REAL(cuMemPoolTrimTo)(pool, minBytesToKeep);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) {
        pthread_mutex_lock(&g_pool_mu);
        pool_sync_locked(pool);
        pthread_mutex_unlock(&g_pool_mu);
    }
    return r;
}

VGPU_EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps) {
    REQUIRE_REAL(cuMemPoolCreate);
    CUresult r = REAL(cuMemPoolCreate)(pool, poolProps);
    if (r == CUDA_SUCCESS && !vgpu_passthrough() && pool != NULL && poolProps != NULL) {
        int on_device = poolProps->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
        int dev = on_device ? vgpu_dev_index(poolProps->location.id) : -1;
        pool_learn(*pool, dev, on_device && dev >= 0 ? POOL_COUNTED : POOL_NOT_COUNTED);
    }
    return r;
}

VGPU_EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    REQUIRE_REAL(cuMemPoolDestroy);
    if (vgpu_passthrough()) return REAL(cuMemPoolDestroy)(pool);
    /* Untracked first (a pool handle reused by a concurrent cuMemPoolCreate must not lose its entry), under
     * the pool mutex so no refresh re-reads a pool that is going away. */
    pthread_mutex_lock(&g_pool_mu);
    struct vgpu_track_entry e;
    int had = vgpu_track_take(VGPU_TRK_POOL, (uint64_t)(uintptr_t)pool, &e);
    CUresult r = REAL(cuMemPoolDestroy)(pool);
    if (had && r != CUDA_SUCCESS) vgpu_track_put(&e);
    pthread_mutex_unlock(&g_pool_mu);
    if (had && r == CUDA_SUCCESS && e.aux == POOL_COUNTED) vgpu_region_uncharge(e.dev, e.bytes, VGPU_MEM_DATA);
    return r;
}

VGPU_EXPORT CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) {
    REQUIRE_REAL(cuDeviceGetMemPool);
    CUresult r = REAL(cuDeviceGetMemPool)(pool, dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough() && pool != NULL) {
        int idx = vgpu_dev_index(dev);
        if (idx >= 0) pool_learn(*pool, idx, POOL_COUNTED);
    }
    return r;
}

VGPU_EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev) {
    REQUIRE_REAL(cuDeviceGetDefaultMemPool);
    CUresult r = REAL(cuDeviceGetDefaultMemPool)(pool_out, dev);
    if (r == CUDA_SUCCESS && !vgpu_passthrough() && pool_out != NULL) {
        int idx = vgpu_dev_index(dev);
        if (idx >= 0) pool_learn(*pool_out, idx, POOL_COUNTED);
    }
    return r;
}

/* ------------------------------------------------------------------ free */

VGPU_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr) {
    REQUIRE_REAL(cuMemFree_v2);
    if (vgpu_passthrough() || dptr == 0) return REAL(cuMemFree_v2)(dptr);
    struct vgpu_track_entry e;
    if (vgpu_track_take(VGPU_TRK_PTR, dptr, &e)) {
        CUresult r = REAL(cuMemFree_v2)(dptr);
        if (r == CUDA_SUCCESS)
            vgpu_mem_release_entry(&e);
        else
            vgpu_track_put(&e);
        return r;
    }
    if (vgpu_track_take(VGPU_TRK_ASYNC, dptr, &e)) { /* cuMemFree of stream-ordered memory is legal */
        CUresult r = REAL(cuMemFree_v2)(dptr);
        if (r != CUDA_SUCCESS) {
            vgpu_track_put(&e);
        } else if (e.aux == 0) {
            vgpu_region_uncharge(e.dev, e.bytes, VGPU_MEM_DATA);
        } else {
            pthread_mutex_lock(&g_pool_mu);
            pool_sync_locked((CUmemoryPool)(uintptr_t)e.aux);
            pthread_mutex_unlock(&g_pool_mu);
        }
        return r;
    }
    return REAL(cuMemFree_v2)(dptr); /* not ours: the driver decides (never a fake error code) */
}

/* ------------------------------------------------------------------ virtual memory management */

VGPU_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                                 unsigned long long flags) {
    REQUIRE_REAL(cuMemCreate);
    if (vgpu_passthrough() || handle == NULL || prop == NULL || size == 0 ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return REAL(cuMemCreate)(handle, size, prop, flags);
    int dev = vgpu_dev_index(prop->location.id);
    if (dev < 0) return REAL(cuMemCreate)(handle, size, prop, flags);
    if (charge_data(dev, size) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuMemCreate)(handle, size, prop, flags);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, size, VGPU_MEM_DATA);
        return r;
    }
    track(VGPU_TRK_VMM, *handle, dev, size, NULL, 0);
    return r;
}

/*
 * Destroy-style calls take the handle out of the table *before* the real call: once the driver has released
 * it, another thread may get the same handle value from a new allocation and track it, and an untrack after
 * the call would then remove (and give back) that new allocation's charge. On failure the entry goes back.
 */
static CUresult untrack_around(int kind, uint64_t key, CUresult (*real_call)(uint64_t), uint64_t arg) {
    struct vgpu_track_entry e;
    int had = !vgpu_passthrough() && vgpu_track_take(kind, key, &e);
    CUresult r = real_call(arg);
    if (!had) return r;
    if (r == CUDA_SUCCESS)
        vgpu_mem_release_entry(&e);
    else
        vgpu_track_put(&e);
    return r;
}

static CUresult call_mem_release(uint64_t h) { return REAL(cuMemRelease)((CUmemGenericAllocationHandle)h); }
static CUresult call_array_destroy(uint64_t h) { return REAL(cuArrayDestroy)((CUarray)(uintptr_t)h); }
static CUresult call_mipmap_destroy(uint64_t h) {
    return REAL(cuMipmappedArrayDestroy)((CUmipmappedArray)(uintptr_t)h);
}

VGPU_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
    REQUIRE_REAL(cuMemRelease);
    return untrack_around(VGPU_TRK_VMM, handle, call_mem_release, handle);
}

/* ------------------------------------------------------------------ arrays */

static uint64_t format_bytes(CUarray_format f) {
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8:
    case CU_AD_FORMAT_SIGNED_INT8:
        return 1;
    case CU_AD_FORMAT_UNSIGNED_INT16:
    case CU_AD_FORMAT_SIGNED_INT16:
    case CU_AD_FORMAT_HALF:
        return 2;
    default:
        return 4; /* 32-bit formats; an upper estimate for the packed/compressed ones */
    }
}

uint64_t vgpu_array_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels) {
    uint64_t elem = mul_sat(format_bytes(d->Format), d->NumChannels == 0 ? 1 : d->NumChannels);
    uint64_t w = d->Width == 0 ? 1 : d->Width, h = d->Height == 0 ? 1 : d->Height, z = d->Depth == 0 ? 1 : d->Depth;
    int keep_depth = (d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
    if (levels == 0) levels = 1;
    uint64_t total = 0;
    for (unsigned int l = 0; l < levels && l < 64; l++) {
        uint64_t lw = w >> l, lh = h >> l, lz = keep_depth ? z : z >> l;
        if (lw == 0) lw = 1;
        if (lh == 0) lh = 1;
        if (lz == 0) lz = 1;
        uint64_t b = mul_sat(mul_sat(mul_sat(lw, lh), lz), elem);
        total = total > UINT64_MAX - b ? UINT64_MAX : total + b;
    }
    return total;
}

static CUresult array_create(CUarray *h, const CUDA_ARRAY3D_DESCRIPTOR *d3, const CUDA_ARRAY_DESCRIPTOR *d2) {
    CUcontext ctx;
    int dev = vgpu_passthrough() || h == NULL || (d3 == NULL && d2 == NULL) ? -1 : vgpu_current_dev(&ctx);
    if (dev < 0) return d3 != NULL ? REAL(cuArray3DCreate_v2)(h, d3) : REAL(cuArrayCreate_v2)(h, d2);
    CUDA_ARRAY3D_DESCRIPTOR tmp;
    if (d3 == NULL) {
        memset(&tmp, 0, sizeof(tmp));
        tmp.Width = d2->Width;
        tmp.Height = d2->Height;
        tmp.Format = d2->Format;
        tmp.NumChannels = d2->NumChannels;
    }
    uint64_t bytes = vgpu_array_bytes(d3 != NULL ? d3 : &tmp, 1);
    if (charge_data(dev, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = d3 != NULL ? REAL(cuArray3DCreate_v2)(h, d3) : REAL(cuArrayCreate_v2)(h, d2);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, bytes, VGPU_MEM_DATA);
        return r;
    }
    track(VGPU_TRK_ARRAY, (uint64_t)(uintptr_t)*h, dev, bytes, ctx, 0);
    return r;
}

VGPU_EXPORT CUresult cuArrayCreate_v2(CUarray *pHandle, const CUDA_ARRAY_DESCRIPTOR *pAllocateArray) {
    REQUIRE_REAL(cuArrayCreate_v2);
    return array_create(pHandle, NULL, pAllocateArray);
}

VGPU_EXPORT CUresult cuArray3DCreate_v2(CUarray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *pAllocateArray) {
    REQUIRE_REAL(cuArray3DCreate_v2);
    return array_create(pHandle, pAllocateArray, NULL);
}

VGPU_EXPORT CUresult cuArrayDestroy(CUarray hArray) {
    REQUIRE_REAL(cuArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)hArray;
    return untrack_around(VGPU_TRK_ARRAY, key, call_array_destroy, key);
}

VGPU_EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *pHandle, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                            unsigned int numMipmapLevels) {
    REQUIRE_REAL(cuMipmappedArrayCreate);
    CUcontext ctx;
    int dev = vgpu_passthrough() || pHandle == NULL || desc == NULL ? -1 : vgpu_current_dev(&ctx);
    if (dev < 0) return REAL(cuMipmappedArrayCreate)(pHandle, desc, numMipmapLevels);
    uint64_t bytes = vgpu_array_bytes(desc, numMipmapLevels);
    if (charge_data(dev, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = REAL(cuMipmappedArrayCreate)(pHandle, desc, numMipmapLevels);
    if (r != CUDA_SUCCESS) {
        vgpu_region_uncharge(dev, bytes, VGPU_MEM_DATA);
        return r;
    }
    track(VGPU_TRK_MIPMAP, (uint64_t)(uintptr_t)*pHandle, dev, bytes, ctx, 0);
    return r;
}

VGPU_EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h) {
    REQUIRE_REAL(cuMipmappedArrayDestroy);
    uint64_t key = (uint64_t)(uintptr_t)h;
    return untrack_around(VGPU_TRK_MIPMAP, key, call_mipmap_destroy, key);
}

/* ------------------------------------------------------------------ memory information */

static uint64_t virtual_total(uint64_t limit, uint64_t physical) {
    if (g_cfg.oversubscribe) return limit;
    return limit < physical ? limit : physical;
}

VGPU_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
    REQUIRE_REAL(cuMemGetInfo_v2);
    if (vgpu_passthrough()) return REAL(cuMemGetInfo_v2)(free_bytes, total_bytes);
    if (free_bytes == NULL || total_bytes == NULL) return CUDA_ERROR_INVALID_VALUE;
    size_t f = 0, t = 0;
    CUresult r = REAL(cuMemGetInfo_v2)(&f, &t);
    if (r != CUDA_SUCCESS) return r;
    int dev = vgpu_current_dev(NULL);
    uint64_t limit = dev >= 0 ? vgpu_region_limit(dev) : 0;
    if (limit == 0) {
        *free_bytes = f;
        *total_bytes = t;
        return r;
    }
    vgpu_pools_refresh();
    uint64_t usage = vgpu_region_usage(dev);
    uint64_t total = virtual_total(limit, t);
    uint64_t free_v = total > usage ? total - usage : 0;
    if (!g_cfg.oversubscribe && free_v > f) free_v = f; /* never promise memory the GPU does not have */
    *free_bytes = (size_t)free_v;
    *total_bytes = (size_t)total;
    return r;
}

VGPU_EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    REQUIRE_REAL(cuDeviceTotalMem_v2);
    CUresult r = REAL(cuDeviceTotalMem_v2)(bytes, dev);
    if (r != CUDA_SUCCESS || vgpu_passthrough() || bytes == NULL) return r;
    int idx = vgpu_dev_index(dev);
    uint64_t limit = idx >= 0 ? vgpu_region_limit(idx) : 0;
    if (limit != 0) *bytes = (size_t)virtual_total(limit, *bytes);
    return r;
}

/* ------------------------------------------------------------------ NVML memory information */

static int nvml_index(nvmlDevice_t device) {
    unsigned int idx = 0;
    if (REAL_NVML(nvmlDeviceGetIndex) == NULL || REAL_NVML(nvmlDeviceGetIndex)(device, &idx) != NVML_SUCCESS)
        return -1;
    return idx < VGPU_REGION_DEVICES ? (int)idx : -1;
}

static void virtualise_nvml(nvmlDevice_t device, unsigned long long *total, unsigned long long *free_b,
                            unsigned long long *used) {
    int idx = nvml_index(device);
    uint64_t limit = idx >= 0 ? vgpu_region_limit(idx) : 0;
    if (limit == 0) return;
    vgpu_pools_refresh();
    uint64_t usage = vgpu_region_usage(idx);
    uint64_t t = virtual_total(limit, *total);
    *total = t;
    *used = usage;
    *free_b = t > usage ? t - usage : 0;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    vgpu_init();
    vgpu_nvml_load();
    if (REAL_NVML(nvmlDeviceGetMemoryInfo) == NULL) return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t r = REAL_NVML(nvmlDeviceGetMemoryInfo)(device, memory);
    if (r == NVML_SUCCESS && !vgpu_passthrough() && memory != NULL)
        virtualise_nvml(device, &memory->total, &memory->free, &memory->used);
    return r;
}

VGPU_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    vgpu_init();
    vgpu_nvml_load();
    if (REAL_NVML(nvmlDeviceGetMemoryInfo_v2) == NULL) return NVML_ERROR_FUNCTION_NOT_FOUND;
    nvmlReturn_t r = REAL_NVML(nvmlDeviceGetMemoryInfo_v2)(device, memory);
    if (r == NVML_SUCCESS && !vgpu_passthrough() && memory != NULL) {
        unsigned long long before = memory->total;
        virtualise_nvml(device, &memory->total, &memory->free, &memory->used);
        if (memory->total != before) memory->reserved = 0; /* total = used + free on the virtual device */
    }
    return r;
}
