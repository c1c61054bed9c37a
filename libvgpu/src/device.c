/*
 * Device indexing. Everything in the region is indexed by the in-container NVML index. A CUDA ordinal is
 * mapped to it by UUID (so CUDA_VISIBLE_DEVICES reordering or UUID lists cannot put usage on the wrong
 * GPU); without NVML the map is the identity. Depends on the real driver tables (real.c) and publishes the
 * UUIDs in the region (region.c).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "vgpu.h"

#define MAX_CUDA_DEVICES 64

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_map[MAX_CUDA_DEVICES];
static int g_ready;

static void format_uuid(const CUuuid *u, char *out, size_t cap) {
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, cap,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static int cuda_uuid(int ordinal, char *out, size_t cap) {
    CUdevice dev = ordinal;
    if (REAL(cuDeviceGet) != NULL && REAL(cuDeviceGet)(&dev, ordinal) != CUDA_SUCCESS) return -1;
    CUuuid u;
    CUresult r = CUDA_ERROR_NOT_FOUND;
    if (REAL(cuDeviceGetUuid_v2) != NULL) r = REAL(cuDeviceGetUuid_v2)(&u, dev);
    if (r != CUDA_SUCCESS && REAL(cuDeviceGetUuid) != NULL) r = REAL(cuDeviceGetUuid)(&u, dev);
    if (r != CUDA_SUCCESS) return -1;
    format_uuid(&u, out, cap);
    return 0;
}

static void publish(int count, char uuids[][VGPU_UUID_LEN]) {
    vgpu_region_t *r = vgpu_region();
    if (count > VGPU_REGION_DEVICES) count = VGPU_REGION_DEVICES;
    for (int i = 0; i < count; i++)
        if (strncmp(r->uuids[i], uuids[i], VGPU_UUID_LEN) != 0) memcpy(r->uuids[i], uuids[i], VGPU_UUID_LEN);
    if (r->device_num != (uint64_t)count) __atomic_store_n(&r->device_num, (uint64_t)count, __ATOMIC_RELEASE);
}

static int build_map(void) {
    int n = 0;
    if (REAL(cuDeviceGetCount) == NULL || REAL(cuDeviceGetCount)(&n) != CUDA_SUCCESS) return -1;
    if (n > MAX_CUDA_DEVICES) n = MAX_CUDA_DEVICES;
    static char nv_uuids[VGPU_REGION_DEVICES][VGPU_UUID_LEN];
    unsigned int nv = 0;
    memset(nv_uuids, 0, sizeof(nv_uuids));
    if (vgpu_nvml_ready() == 0 && REAL_NVML(nvmlDeviceGetCount_v2) != NULL &&
        REAL_NVML(nvmlDeviceGetCount_v2)(&nv) == NVML_SUCCESS) {
        if (nv > VGPU_REGION_DEVICES) nv = VGPU_REGION_DEVICES;
        for (unsigned int i = 0; i < nv; i++) {
            nvmlDevice_t h;
            if (REAL_NVML(nvmlDeviceGetHandleByIndex_v2)(i, &h) != NVML_SUCCESS ||
                REAL_NVML(nvmlDeviceGetUUID)(h, nv_uuids[i], VGPU_UUID_LEN) != NVML_SUCCESS)
                nv_uuids[i][0] = '\0';
            nv_uuids[i][VGPU_UUID_LEN - 1] = '\0';
        }
    } else {
        nv = 0;
    }
    static char cu_uuids[VGPU_REGION_DEVICES][VGPU_UUID_LEN];
    memset(cu_uuids, 0, sizeof(cu_uuids));
    int map[MAX_CUDA_DEVICES];
    for (int d = 0; d < MAX_CUDA_DEVICES; d++) map[d] = (d < VGPU_REGION_DEVICES) ? d : -1;
    for (int d = 0; d < n; d++) {
        char u[VGPU_UUID_LEN];
        if (cuda_uuid(d, u, sizeof(u)) != 0) continue;
        if (d < VGPU_REGION_DEVICES) memcpy(cu_uuids[d], u, sizeof(u));
        for (unsigned int i = 0; i < nv; i++)
            if (strcmp(u, nv_uuids[i]) == 0) {
                map[d] = (int)i;
                break;
            }
    }
    memcpy(g_map, map, sizeof(map));
    if (nv > 0)
        publish((int)nv, nv_uuids);
    else
        publish(n, cu_uuids);
    return 0;
}

void vgpu_devices_postinit(void) {
    pthread_mutex_lock(&g_mu);
    if (!g_ready && build_map() == 0) __atomic_store_n(&g_ready, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_mu);
}

void vgpu_devices_atfork_child(void) {
    pthread_mutex_init(&g_mu, NULL);
    vgpu_devices_forget_ctx(); /* the parent's contexts are not the child's */
}

int vgpu_dev_index(CUdevice cudev) {
    if (cudev < 0 || cudev >= MAX_CUDA_DEVICES) return -1;
    if (!__atomic_load_n(&g_ready, __ATOMIC_ACQUIRE)) {
        vgpu_devices_postinit();
        if (!__atomic_load_n(&g_ready, __ATOMIC_ACQUIRE)) return cudev < VGPU_REGION_DEVICES ? cudev : -1;
    }
    int i = g_map[cudev];
    return (i >= 0 && i < VGPU_REGION_DEVICES) ? i : -1;
}

/* A context's device never changes, so each thread remembers the device of the last context it asked about
 * (one driver call per hook instead of two). A context handle can be reused after a destroy, so every
 * context teardown bumps a generation that invalidates all threads' entries. */
static uint64_t g_ctx_gen = 1;
static __thread CUcontext t_ctx;
static __thread CUdevice t_dev;
static __thread uint64_t t_gen;

void vgpu_devices_forget_ctx(void) { __atomic_add_fetch(&g_ctx_gen, 1, __ATOMIC_ACQ_REL); }

int vgpu_current_dev(CUcontext *ctx) {
    CUcontext c = NULL;
    if (ctx != NULL) *ctx = NULL;
    if (REAL(cuCtxGetCurrent) == NULL || REAL(cuCtxGetCurrent)(&c) != CUDA_SUCCESS || c == NULL) return -1;
    uint64_t gen = __atomic_load_n(&g_ctx_gen, __ATOMIC_ACQUIRE);
    CUdevice d;
    if (c == t_ctx && t_gen == gen) {
        d = t_dev;
    } else {
        if (REAL(cuCtxGetDevice) == NULL || REAL(cuCtxGetDevice)(&d) != CUDA_SUCCESS) return -1;
        t_ctx = c;
        t_dev = d;
        t_gen = gen;
    }
    if (ctx != NULL) *ctx = c;
    return vgpu_dev_index(d);
}
