/*
 * Device memory: plain and managed allocations, pitch, stream-ordered pools, VMM handles and arrays. The
 * physical figures are shared (fk_shared.c); which allocation belongs to what is this process's business.
 *
 * Pools follow the driver's release-threshold rule: memory a pool keeps after frees stays reserved until
 * cuMemPoolTrimTo, or until the next stream, event or context synchronisation, which releases whatever the
 * pool holds above its CU_MEMPOOL_ATTR_RELEASE_THRESHOLD (default 0) back to the device.
 */
#include <stdlib.h>
#include <string.h>

#include "fk.h"

struct fk_pool {
    int dev;
    int on_device;
    uint64_t reserved, used, reserved_high, used_high, threshold;
    struct fk_pool *next; /* this process's pools, for the trim at synchronisation */
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

static struct {
    struct fk_pool dflt;
    struct fk_pool *current;
} pools_of[FK_MAX_DEV];
static struct fk_pool *created_pools;
static struct fk_alloc *allocs;
static size_t nallocs, capallocs;
static uint64_t next_addr = 0x100000000000ull;
static uint64_t next_handle = 0x1000;

/* The process-local table, then the shared device state (always in this order). */
#define LOCK()                                                                                               \
    do {                                                                                                     \
        pthread_mutex_lock(&fk_local_mu);                                                                    \
        fk_lock();                                                                                           \
        pools_init_locked();                                                                                 \
    } while (0)
#define UNLOCK()                                                                                             \
    do {                                                                                                     \
        fk_unlock();                                                                                         \
        pthread_mutex_unlock(&fk_local_mu);                                                                  \
    } while (0)

static void pools_init_locked(void) {
    for (int d = 0; d < FK_MAX_DEV; d++) {
        if (pools_of[d].current != NULL) continue;
        pools_of[d].dflt.dev = d;
        pools_of[d].dflt.on_device = 1;
        pools_of[d].current = &pools_of[d].dflt;
    }
}

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

void fk_ctx_free_allocs(struct fk_ctx *c) {
    LOCK();
    for (size_t i = 0; i < nallocs;) {
        if (allocs[i].ctx == c && (allocs[i].kind == A_PTR || allocs[i].kind == A_ARRAY || allocs[i].kind == A_MIPMAP)) {
            fk_phys_give(allocs[i].dev, allocs[i].bytes);
            alloc_remove((int)i);
        } else {
            i++;
        }
    }
    UNLOCK();
}

void fk_memory_reset_after_fork(void) {
    free(allocs);
    allocs = NULL;
    nallocs = capallocs = 0;
    memset(pools_of, 0, sizeof(pools_of));
    created_pools = NULL; /* the parent's pools are not the child's (their memory is not either) */
}

static void trim_pool_locked(struct fk_pool *pl, uint64_t keep) {
    uint64_t target = keep > pl->used ? keep : pl->used;
    if (pl->reserved > target) {
        fk_phys_give(pl->dev, pl->reserved - target);
        pl->reserved = target;
    }
}

void fk_pools_trim_at_sync(int dev) {
    (void)dev; /* every pool of the process: the driver's allocator trims on any synchronisation */
    LOCK();
    for (int d = 0; d < fk_sh->ndev; d++) trim_pool_locked(&pools_of[d].dflt, pools_of[d].dflt.threshold);
    for (struct fk_pool *p = created_pools; p != NULL; p = p->next) trim_pool_locked(p, p->threshold);
    UNLOCK();
}

static CUresult plain_alloc(CUdeviceptr *p, uint64_t bytes) {
    NEED_CTX(c);
    CUresult cr = fk_check_unsafe(NULL); /* a synchronous allocation is not allowed during capture */
    if (cr != CUDA_SUCCESS) return cr;
    if (p == NULL || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    if (fk_phys_take(c->dev, bytes) != 0) {
        UNLOCK();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *p = new_addr(bytes);
    alloc_add(*p, bytes, A_PTR, c->dev, c, NULL);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) { fk_count_call(); return plain_alloc(p, bytes); }

CUresult fk_alt_cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) { return plain_alloc(p, bytes); }

EXPORT CUresult cuMemAllocManaged(CUdeviceptr *p, size_t bytes, unsigned int flags) {
    fk_count_call();
    (void)flags;
    return plain_alloc(p, bytes);
}

EXPORT CUresult cuMemAllocPitch_v2(CUdeviceptr *p, size_t *pitch, size_t w, size_t h, unsigned int elem) {
    fk_count_call();
    if (pitch == NULL || w == 0 || h == 0 || (elem != 4 && elem != 8 && elem != 16)) return CUDA_ERROR_INVALID_VALUE;
    size_t pt = (w + 511) & ~(size_t)511;
    CUresult r = plain_alloc(p, (uint64_t)pt * h);
    if (r == CUDA_SUCCESS) *pitch = pt;
    return r;
}

static CUresult mem_free(CUdeviceptr p) {
    CUresult cr = fk_check_unsafe(NULL);
    if (cr != CUDA_SUCCESS) return cr;
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
        fk_phys_give(allocs[i].dev, allocs[i].bytes);
    }
    alloc_remove(i);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr p) { fk_count_call(); return mem_free(p); }
CUresult fk_alt_cuMemFree_v2(CUdeviceptr p) { return mem_free(p); }

EXPORT CUresult cuMemGetInfo_v2(size_t *f, size_t *t) {
    fk_count_call();
    NEED_CTX(c);
    if (f == NULL || t == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *t = fk_sh->devs[c->dev].total;
    *f = fk_sh->devs[c->dev].total - fk_sh->devs[c->dev].used;
    UNLOCK();
    return CUDA_SUCCESS;
}

CUresult fk_alt_cuMemGetInfo_v2(size_t *f, size_t *t) { return cuMemGetInfo_v2(f, t); }

/* pools */

static CUresult pool_alloc(struct fk_pool *pool, CUdeviceptr *p, uint64_t bytes) {
    if (p == NULL || bytes == 0 || pool == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    uint64_t idle = pool->reserved - pool->used;
    if (idle < bytes) {
        uint64_t grow = bytes - idle;
        grow = (grow + fk_cfg.pool_gran - 1) / fk_cfg.pool_gran * fk_cfg.pool_gran;
        if (fk_phys_take(pool->dev, grow) != 0) {
            UNLOCK();
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        pool->reserved += grow;
        if (pool->reserved > pool->reserved_high) pool->reserved_high = pool->reserved;
    }
    pool->used += bytes;
    if (pool->used > pool->used_high) pool->used_high = pool->used;
    *p = new_addr(bytes);
    alloc_add(*p, bytes, A_ASYNC, pool->dev, fk_cur_ctx(), pool);
    UNLOCK();
    return CUDA_SUCCESS;
}

static CUresult async_alloc(CUdeviceptr *p, size_t bytes, CUstream s) {
    (void)s;
    NEED_CTX(c);
    pthread_mutex_lock(&fk_local_mu);
    pools_init_locked();
    struct fk_pool *pl = pools_of[c->dev].current;
    pthread_mutex_unlock(&fk_local_mu);
    return pool_alloc(pl, p, bytes);
}

EXPORT CUresult cuMemAllocAsync(CUdeviceptr *p, size_t b, CUstream s) { fk_count_call(); return async_alloc(p, b, s); }
EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *p, size_t b, CUstream s) { fk_count_call(); return async_alloc(p, b, s); }
EXPORT CUresult cuMemAllocFromPoolAsync(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s) {
    fk_count_call();
    (void)s;
    return pool_alloc((struct fk_pool *)pool, p, b);
}
EXPORT CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *p, size_t b, CUmemoryPool pool, CUstream s) {
    fk_count_call();
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

EXPORT CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) { fk_count_call(); return async_free(p, s); }
EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr p, CUstream s) { fk_count_call(); return async_free(p, s); }

EXPORT CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep) {
    fk_count_call();
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    trim_pool_locked(pl, keep);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    fk_count_call();
    if (pool == NULL || props == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_pool *pl = calloc(1, sizeof(*pl));
    if (pl == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    pl->on_device = props->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
    pl->dev = pl->on_device ? props->location.id : 0;
    if (!fk_valid_dev(pl->dev)) {
        free(pl);
        return CUDA_ERROR_INVALID_DEVICE;
    }
    LOCK();
    pl->next = created_pools;
    created_pools = pl;
    UNLOCK();
    *pool = (CUmemoryPool)pl;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemPoolDestroy(CUmemoryPool pool) {
    fk_count_call();
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    for (struct fk_pool **pp = &created_pools; *pp != NULL; pp = &(*pp)->next)
        if (*pp == pl) {
            *pp = pl->next;
            break;
        }
    fk_phys_give(pl->dev, pl->reserved);
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
    fk_count_call();
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL || value == NULL) return CUDA_ERROR_INVALID_VALUE;
    if (attr == CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES || attr == 2 || attr == 3) {
        *(int *)value = 1; /* the reuse policies (ints): all on, the driver's default */
        return CUDA_SUCCESS;
    }
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
    fk_count_call();
    if (pool == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *pool = (CUmemoryPool)pools_of[d].current;
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool, CUdevice d) {
    fk_count_call();
    if (pool == NULL || !fk_valid_dev(d)) return CUDA_ERROR_INVALID_VALUE;
    LOCK();
    *pool = (CUmemoryPool)&pools_of[d].dflt;
    UNLOCK();
    return CUDA_SUCCESS;
}

/* VMM */

EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *h, size_t size, const CUmemAllocationProp *prop,
                            unsigned long long flags) {
    fk_count_call();
    (void)flags;
    if (h == NULL || prop == NULL || size == 0) return CUDA_ERROR_INVALID_VALUE;
    int dev = prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE ? prop->location.id : -1;
    LOCK();
    if (dev >= fk_sh->ndev) {
        UNLOCK();
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if (dev >= 0 && fk_phys_take(dev, size) != 0) {
        UNLOCK();
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *h = next_handle++;
    alloc_add(*h, size, A_VMM, dev, NULL, NULL);
    UNLOCK();
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle h) {
    fk_count_call();
    LOCK();
    int i = alloc_find(h, A_VMM);
    if (i < 0) {
        UNLOCK();
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (allocs[i].dev >= 0) fk_phys_give(allocs[i].dev, allocs[i].bytes);
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
    if (fk_phys_take(c->dev, bytes) != 0) {
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
    fk_phys_give(allocs[i].dev, allocs[i].bytes);
    alloc_remove(i);
    UNLOCK();
    free((void *)(uintptr_t)key);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuArrayCreate_v2(CUarray *h, const CUDA_ARRAY_DESCRIPTOR *d) {
    fk_count_call();
    if (h == NULL || d == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    CUresult r = array_make(fk_array_bytes(d->Width, d->Height, 0, d->Format, d->NumChannels, 1, 0), A_ARRAY, &key);
    if (r == CUDA_SUCCESS) *h = (CUarray)(uintptr_t)key;
    return r;
}

EXPORT CUresult cuArray3DCreate_v2(CUarray *h, const CUDA_ARRAY3D_DESCRIPTOR *d) {
    fk_count_call();
    if (h == NULL || d == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    CUresult r = array_make(fk_array_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels, 1, 1), A_ARRAY,
                            &key);
    if (r == CUDA_SUCCESS) *h = (CUarray)(uintptr_t)key;
    return r;
}

EXPORT CUresult cuArrayDestroy(CUarray h) { fk_count_call(); return array_free((uint64_t)(uintptr_t)h, A_ARRAY); }

EXPORT CUresult cuMipmappedArrayCreate(CUmipmappedArray *h, const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels) {
    fk_count_call();
    if (h == NULL || d == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t key;
    int keep = (d->Flags & (CUDA_ARRAY3D_LAYERED | CUDA_ARRAY3D_CUBEMAP)) != 0;
    CUresult r = array_make(fk_array_bytes(d->Width, d->Height, d->Depth, d->Format, d->NumChannels, levels, keep),
                            A_MIPMAP, &key);
    if (r == CUDA_SUCCESS) *h = (CUmipmappedArray)(uintptr_t)key;
    return r;
}

EXPORT CUresult cuMipmappedArrayDestroy(CUmipmappedArray h) { fk_count_call(); return array_free((uint64_t)(uintptr_t)h, A_MIPMAP); }


EXPORT CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    fk_count_call();
    struct fk_pool *pl = (struct fk_pool *)pool;
    if (pl == NULL || value == NULL) return CUDA_ERROR_INVALID_VALUE;
    uint64_t v;
    LOCK();
    CUresult r = CUDA_SUCCESS;
    switch (attr) {
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
        memcpy(&v, value, sizeof(v));
        pl->threshold = v;
        break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: /* only resettable to 0 */
        pl->reserved_high = pl->reserved;
        break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        pl->used_high = pl->used;
        break;
    default:
        r = CUDA_ERROR_INVALID_VALUE;
    }
    UNLOCK();
    return r;
}
