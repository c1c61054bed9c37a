/*
 * How calls reach the hooks: the table of hooks by name, the dlsym decision (used by the assembly stub in
 * dlsym_x86_64.S), the cuGetProcAddress mapping from a real driver address back to our hook, and the
 * cuInit / cuGetProcAddress hooks themselves (cuInit also registers the process once the driver is up).
 * The top layer of the library below process.c: it references every hook.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vgpu.h"

struct hook_entry {
    const char *name;
    void *hook;
    void *real; /* filled after loading */
};

#define HOOK_ENTRY(name) {#name, (void *)&name, NULL},
static struct hook_entry k_hooks_by_name[] = {VGPU_CUDA_HOOKS(HOOK_ENTRY) VGPU_NVML_HOOKS(HOOK_ENTRY)};
#undef HOOK_ENTRY
#define N_HOOKS (sizeof(k_hooks_by_name) / sizeof(k_hooks_by_name[0]))

/* real address -> hook, sorted by real address (CUDA hooks only). */
static struct hook_entry k_by_real[N_HOOKS];
static size_t g_n_by_real;

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const struct hook_entry *)a)->name, ((const struct hook_entry *)b)->name);
}

static int cmp_by_real(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const struct hook_entry *)a)->real;
    uintptr_t y = (uintptr_t)((const struct hook_entry *)b)->real;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* The by-name table is sorted once, on its own (no driver needed), so dlsym can answer "not ours" for a
 * name without initialising anything. */
static pthread_mutex_t g_sort_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_sorted;

static void sort_by_name(void) {
    if (__atomic_load_n(&g_sorted, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&g_sort_mu);
    if (!g_sorted) {
        qsort(k_hooks_by_name, N_HOOKS, sizeof(k_hooks_by_name[0]), cmp_by_name);
        __atomic_store_n(&g_sorted, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_sort_mu);
}

void vgpu_intercept_init(void) {
    sort_by_name();
    g_n_by_real = 0;
#define BY_REAL(name)                                                                                        \
    if (vgpu_real_cuda[VGPU_IDX_##name] != NULL)                                                             \
        k_by_real[g_n_by_real++] = (struct hook_entry){#name, (void *)&name, vgpu_real_cuda[VGPU_IDX_##name]};
    VGPU_CUDA_HOOKS(BY_REAL)
#undef BY_REAL
    qsort(k_by_real, g_n_by_real, sizeof(k_by_real[0]), cmp_by_real);
}

/* ------------------------------------------------------------------ dlsym decision */

static struct hook_entry *hook_entry_for(const char *name) {
    sort_by_name();
    struct hook_entry key = {name, NULL, NULL};
    return bsearch(&key, k_hooks_by_name, N_HOOKS, sizeof(key), cmp_by_name);
}

/*
 * Called by the exported dlsym for every lookup. Returns our hook when `name` is one we hook and the caller's
 * lookup would have reached the real driver (or ourselves); NULL means "let glibc answer", which the stub
 * does with the caller's own return address so RTLD_NEXT keeps its meaning. Never widens a lookup.
 */
__attribute__((visibility("hidden"), no_sanitize("address", "undefined"))) void *
vgpu_dlsym_decide(void *handle, const char *name) {
    vgpu_resolve_real_dlsym();
    if (name == NULL) return NULL;
    int is_cu = name[0] == 'c' && name[1] == 'u';
    int is_nvml = name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l';
    if (!is_cu && !is_nvml) return NULL;
    if (vgpu_t_in_init) return NULL; /* a lookup made while this thread loads the driver */
    struct hook_entry *h = hook_entry_for(name);
    if (h == NULL) return NULL;
    /* No process init here (it dlopens the driver under the init mutex; a lookup from a library constructor
     * running in another thread, under the loader lock, could deadlock on it): the configuration is read on
     * its own, and the driver is recognised by address or, before it is loaded, by file name. The hook runs
     * the init when it is called. */
    vgpu_config_load();
    if (g_cfg.disabled) return NULL;
    if (handle == RTLD_DEFAULT || handle == RTLD_NEXT) return h->hook;
    void *found = vgpu_real_dlsym(handle, name);
    if (found == NULL) return NULL;
    if (found == h->hook) return h->hook;
    if (vgpu_real_in_driver(found)) return h->hook;
    return NULL;
}

#if !defined(__x86_64__)
/* Portable fallback: correct for every handle except RTLD_NEXT from callers other than libvgpu. */
VGPU_EXPORT void *dlsym(void *handle, const char *name) {
    void *h = vgpu_dlsym_decide(handle, name);
    return h != NULL ? h : vgpu_real_dlsym_ptr(handle, name);
}
#endif

/* ------------------------------------------------------------------ cuGetProcAddress mapping */

/* Which versioned name the driver returns for (base name, requested CUDA version), for the hooked set.
 * Only used when the driver hands out an address we did not see through dlsym. Ordered newest first. */
static const struct {
    const char *base;
    int min_version;
    const char *name;
} k_versions[] = {
    {"cuMemAlloc", 3020, "cuMemAlloc_v2"},
    {"cuMemFree", 3020, "cuMemFree_v2"},
    {"cuMemAllocPitch", 3020, "cuMemAllocPitch_v2"},
    {"cuMemGetInfo", 3020, "cuMemGetInfo_v2"},
    {"cuDeviceTotalMem", 3020, "cuDeviceTotalMem_v2"},
    {"cuArrayCreate", 3020, "cuArrayCreate_v2"},
    {"cuArray3DCreate", 3020, "cuArray3DCreate_v2"},
    /* cuCtxCreate_v4 (CUctxCreateParams) exists since 12.5, but only CUDA 13 headers make it the plain name's
     * ABI; a 12.x runtime asking for "cuCtxCreate" expects the v3 (exec-affinity) signature. */
    {"cuCtxCreate", 13000, "cuCtxCreate_v4"},
    {"cuCtxCreate", 11040, "cuCtxCreate_v3"},
    {"cuCtxCreate", 3020, "cuCtxCreate_v2"},
    {"cuCtxDestroy", 4000, "cuCtxDestroy_v2"},
    {"cuDevicePrimaryCtxRelease", 11000, "cuDevicePrimaryCtxRelease_v2"},
    {"cuDevicePrimaryCtxReset", 11000, "cuDevicePrimaryCtxReset_v2"},
    {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"},
    {"cuStreamBeginCapture", 10010, "cuStreamBeginCapture_v2"},
};

static void *hook_by_rule(const char *symbol, int version, cuuint64_t flags) {
    char name[128];
    const char *chosen = symbol;
    int listed = 0;
    for (size_t i = 0; i < sizeof(k_versions) / sizeof(k_versions[0]); i++) {
        if (strcmp(k_versions[i].base, symbol) != 0) continue;
        listed = 1;
        if (version >= k_versions[i].min_version) {
            chosen = k_versions[i].name;
            break;
        }
    }
    (void)listed;
    if (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) {
        snprintf(name, sizeof(name), "%s_ptsz", chosen);
        struct hook_entry *h = hook_entry_for(name);
        if (h != NULL) return h->hook;
    }
    struct hook_entry *h = hook_entry_for(chosen);
    /* Only CUDA hooks; an unversioned name whose newer version we hook maps to no hook (v1 ABI). */
    if (h == NULL || strncmp(h->name, "cu", 2) != 0) return NULL;
    return h->hook;
}

void *vgpu_procaddr_map(const char *symbol, void *real_pfn, int cuda_version, cuuint64_t flags) {
    if (real_pfn == NULL || symbol == NULL) return real_pfn;
    struct hook_entry key = {NULL, NULL, real_pfn};
    struct hook_entry *h = bsearch(&key, k_by_real, g_n_by_real, sizeof(key), cmp_by_real);
    if (h != NULL) return h->hook;
    void *hook = hook_by_rule(symbol, cuda_version, flags);
    if (hook != NULL) {
        LOG_DEBUG("cuGetProcAddress(%s, %d): driver address unknown, mapped by name", symbol, cuda_version);
        return hook;
    }
    return real_pfn;
}

/* ------------------------------------------------------------------ hooks: init and proc address */

static pthread_mutex_t g_post_mu = PTHREAD_MUTEX_INITIALIZER;
static pid_t g_post_pid; /* per pid: a fork child registers its own slot at its next cuInit */

/* After a successful cuInit: the CUDA->NVML map (needs the driver up) and this process's region slot. */
static void postinit(void) {
    pid_t pid = getpid();
    if (__atomic_load_n(&g_post_pid, __ATOMIC_ACQUIRE) == pid) return;
    pthread_mutex_lock(&g_post_mu);
    if (g_post_pid != pid) {
        vgpu_devices_postinit();
        vgpu_region_register();
        __atomic_store_n(&g_post_pid, pid, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_post_mu);
}

void vgpu_intercept_atfork_child(void) {
    pthread_mutex_init(&g_post_mu, NULL);
    pthread_mutex_init(&g_sort_mu, NULL);
}

VGPU_EXPORT CUresult cuInit(unsigned int flags) {
    REQUIRE_REAL(cuInit);
    CUresult r = REAL(cuInit)(flags);
    if (r == CUDA_SUCCESS && !vgpu_passthrough()) postinit();
    return r;
}

VGPU_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
    REQUIRE_REAL(cuGetProcAddress);
    CUresult r = REAL(cuGetProcAddress)(symbol, pfn, cudaVersion, flags);
    if (r == CUDA_SUCCESS && pfn != NULL && !vgpu_passthrough())
        *pfn = vgpu_procaddr_map(symbol, *pfn, cudaVersion, flags);
    return r;
}

VGPU_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                                         CUdriverProcAddressQueryResult *symbolStatus) {
    REQUIRE_REAL(cuGetProcAddress_v2);
    CUresult r = REAL(cuGetProcAddress_v2)(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (r == CUDA_SUCCESS && pfn != NULL && !vgpu_passthrough())
        *pfn = vgpu_procaddr_map(symbol, *pfn, cudaVersion, flags);
    return r;
}
