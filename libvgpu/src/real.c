/*
 * The real driver libraries: glibc's own dlsym, the table of real libcuda entry points (loaded by
 * vgpu_real_load during process init) and the table of real NVML entry points (loaded lazily, on first
 * use). Depends on the configuration and logging only (config.c).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu.h"

void *vgpu_real_cuda[VGPU_CUDA_COUNT];
void *vgpu_real_nvml[VGPU_NVML_COUNT];

#define NAME_ENTRY(name) #name,
static const char *const k_cuda_names[VGPU_CUDA_COUNT] = {
    VGPU_CUDA_HOOKS(NAME_ENTRY) "", VGPU_CUDA_INTERNAL(NAME_ENTRY)};
static const char *const k_nvml_names[VGPU_NVML_COUNT] = {
    VGPU_NVML_HOOKS(NAME_ENTRY) "", VGPU_NVML_INTERNAL(NAME_ENTRY)};
#undef NAME_ENTRY

/* Hidden: used by the assembly dlsym stub. */
__attribute__((visibility("hidden"))) void *(*vgpu_real_dlsym_ptr)(void *, const char *);

static void *g_cuda_base;
static pthread_mutex_t g_nvml_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_nvml_loaded;   /* table resolved */
static int g_nvml_state;    /* 0 unknown, 1 ready, -1 unusable */
static void *g_nvml_base;

/* ------------------------------------------------------------------ real dlsym */

__attribute__((no_sanitize("address", "undefined"))) void vgpu_resolve_real_dlsym(void) {
    if (vgpu_real_dlsym_ptr != NULL) return;
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.4", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        void *p = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
        if (p != NULL) {
            __atomic_store_n(&vgpu_real_dlsym_ptr, (void *(*)(void *, const char *))p, __ATOMIC_RELEASE);
            return;
        }
    }
    void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
    if (libc != NULL) {
        void *p = dlvsym(libc, "dlsym", "GLIBC_2.34");
        if (p == NULL) p = dlvsym(libc, "dlsym", "GLIBC_2.2.5");
        __atomic_store_n(&vgpu_real_dlsym_ptr, (void *(*)(void *, const char *))p, __ATOMIC_RELEASE);
    }
}

void *vgpu_real_dlsym(void *handle, const char *name) {
    vgpu_resolve_real_dlsym();
    return vgpu_real_dlsym_ptr != NULL ? vgpu_real_dlsym_ptr(handle, name) : NULL;
}

/* ------------------------------------------------------------------ libcuda */

static void *object_base(const void *sym) {
    Dl_info info;
    if (sym == NULL || dladdr(sym, &info) == 0) return NULL;
    return info.dli_fbase;
}

void vgpu_real_load(void) {
    vgpu_resolve_real_dlsym();
    void *h = dlopen(g_cfg.libcuda, RTLD_NOW | RTLD_NODELETE);
    if (h == NULL) {
        LOG_ERROR("cannot load the CUDA driver %s: %s", g_cfg.libcuda, dlerror());
        return;
    }
    for (size_t i = 0; i < VGPU_CUDA_COUNT; i++)
        if (k_cuda_names[i][0] != '\0') vgpu_real_cuda[i] = vgpu_real_dlsym(h, k_cuda_names[i]);
    __atomic_store_n(&g_cuda_base, object_base(vgpu_real_cuda[VGPU_IDX_cuInit]), __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------ libnvidia-ml */

void vgpu_nvml_load(void) {
    if (__atomic_load_n(&g_nvml_loaded, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&g_nvml_mu);
    if (!g_nvml_loaded) {
        void *h = dlopen(g_cfg.libnvml, RTLD_NOW | RTLD_NODELETE);
        if (h == NULL) {
            LOG_INFO("NVML %s not available: %s", g_cfg.libnvml, dlerror());
        } else {
            for (size_t i = 0; i < VGPU_NVML_COUNT; i++)
                if (k_nvml_names[i][0] != '\0') vgpu_real_nvml[i] = vgpu_real_dlsym(h, k_nvml_names[i]);
            __atomic_store_n(&g_nvml_base, object_base(vgpu_real_nvml[VGPU_IDX_nvmlInit_v2]), __ATOMIC_RELEASE);
        }
        __atomic_store_n(&g_nvml_loaded, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_nvml_mu);
}

int vgpu_nvml_ready(void) {
    vgpu_nvml_load();
    if (g_nvml_state != 0) return g_nvml_state > 0 ? 0 : -1;
    pthread_mutex_lock(&g_nvml_mu);
    if (g_nvml_state == 0) {
        nvmlReturn_t r = REAL_NVML(nvmlInit_v2) != NULL ? REAL_NVML(nvmlInit_v2)() : NVML_ERROR_UNINITIALIZED;
        g_nvml_state = r == NVML_SUCCESS ? 1 : -1;
        if (r != NVML_SUCCESS) LOG_INFO("nvmlInit_v2 failed (%d); NVML-based figures unavailable", r);
    }
    pthread_mutex_unlock(&g_nvml_mu);
    return g_nvml_state > 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ addresses */

/* Same library name up to the first dot ("libcuda" of /usr/lib/x86_64-linux-gnu/libcuda.so.580.1). */
static int same_library(const char *path, const char *configured) {
    const char *a = strrchr(path, '/'), *b = strrchr(configured, '/');
    a = a != NULL ? a + 1 : path;
    b = b != NULL ? b + 1 : configured;
    size_t la = strcspn(a, "."), lb = strcspn(b, ".");
    return la > 0 && la == lb && strncmp(a, b, la) == 0;
}

int vgpu_real_in_driver(const void *sym) {
    Dl_info info;
    if (sym == NULL || dladdr(sym, &info) == 0 || info.dli_fbase == NULL) return 0;
    void *cuda_base = __atomic_load_n(&g_cuda_base, __ATOMIC_ACQUIRE);
    void *nvml_base = __atomic_load_n(&g_nvml_base, __ATOMIC_ACQUIRE);
    if (info.dli_fbase == cuda_base || info.dli_fbase == nvml_base) return 1;
    /* Not loaded by us yet (dlsym answers without initialising): recognise the driver by its file name. */
    if (info.dli_fname == NULL) return 0;
    return (cuda_base == NULL && same_library(info.dli_fname, g_cfg.libcuda)) ||
           (nvml_base == NULL && same_library(info.dli_fname, g_cfg.libnvml));
}

void vgpu_real_atfork_child(void) { pthread_mutex_init(&g_nvml_mu, NULL); }
