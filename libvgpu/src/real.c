/*
 * Loading the real driver libraries, the process-wide init, the dlsym decision and the
 * cuGetProcAddress mapping.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vgpu.h"

void *vgpu_real_cuda[VGPU_CUDA_COUNT];
void *vgpu_real_nvml[VGPU_NVML_COUNT];

#define NAME_ENTRY(name) #name,
static const char *const k_cuda_names[VGPU_CUDA_COUNT] = {
    VGPU_CUDA_HOOKS(NAME_ENTRY) "", VGPU_CUDA_INTERNAL(NAME_ENTRY)};
static const char *const k_nvml_names[VGPU_NVML_COUNT] = {
    VGPU_NVML_HOOKS(NAME_ENTRY) "", VGPU_NVML_INTERNAL(NAME_ENTRY)};
#undef NAME_ENTRY

struct hook_entry {
    const char *name;
    void *hook;
    void *real; /* filled after loading */
};

#define HOOK_ENTRY(name) {#name, (void *)&name, NULL},
static struct hook_entry k_hooks_by_name[] = {VGPU_CUDA_HOOKS(HOOK_ENTRY) VGPU_NVML_HOOKS(HOOK_ENTRY)};
#undef HOOK_ENTRY
#define N_HOOKS (sizeof(k_hooks_by_name) / sizeof(k_hooks_by_name[0]))
#define N_CUDA_HOOKS ((size_t)VGPU_CUDA_HOOK_COUNT_MARK)

/* real address -> hook, sorted by real address (CUDA hooks only). */
static struct hook_entry k_by_real[N_HOOKS];
static size_t g_n_by_real;

/* Hidden: used by the assembly dlsym stub. */
__attribute__((visibility("hidden"))) void *(*vgpu_real_dlsym_ptr)(void *, const char *);

static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_inited;
static __thread int t_in_init;
static void *g_cuda_handle;
static void *g_cuda_base;
static pthread_mutex_t g_nvml_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_nvml_loaded;   /* table resolved */
static int g_nvml_state;    /* 0 unknown, 1 ready, -1 unusable */
static void *g_nvml_base;

/* ------------------------------------------------------------------ real dlsym */

__attribute__((no_sanitize("address", "undefined"))) static void resolve_real_dlsym(void) {
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
    resolve_real_dlsym();
    return vgpu_real_dlsym_ptr != NULL ? vgpu_real_dlsym_ptr(handle, name) : NULL;
}

/* ------------------------------------------------------------------ init */

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const struct hook_entry *)a)->name, ((const struct hook_entry *)b)->name);
}

static int cmp_by_real(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const struct hook_entry *)a)->real;
    uintptr_t y = (uintptr_t)((const struct hook_entry *)b)->real;
    return x < y ? -1 : (x > y ? 1 : 0);
}

static void *object_base(void *sym) {
    Dl_info info;
    if (sym == NULL || dladdr(sym, &info) == 0) return NULL;
    return info.dli_fbase;
}

static void atfork_child(void) {
    vgpu_region_atfork_child();
    vgpu_sm_atfork_child();
    vgpu_track_clear();
}

static void do_init(void) {
    vgpu_config_from_env(&g_cfg);
    resolve_real_dlsym();
    g_cuda_handle = dlopen(g_cfg.libcuda, RTLD_NOW | RTLD_NODELETE);
    if (g_cuda_handle == NULL) {
        LOG_ERROR("cannot load the CUDA driver %s: %s", g_cfg.libcuda, dlerror());
    } else {
        for (size_t i = 0; i < VGPU_CUDA_COUNT; i++)
            if (k_cuda_names[i][0] != '\0') vgpu_real_cuda[i] = vgpu_real_dlsym(g_cuda_handle, k_cuda_names[i]);
        g_cuda_base = object_base(vgpu_real_cuda[VGPU_IDX_cuInit]);
    }
    qsort(k_hooks_by_name, N_HOOKS, sizeof(k_hooks_by_name[0]), cmp_by_name);
    g_n_by_real = 0;
    for (size_t i = 0; i < N_CUDA_HOOKS; i++) {
        void *real = vgpu_real_cuda[i];
        if (real == NULL) continue;
        k_by_real[g_n_by_real].name = k_cuda_names[i];
        k_by_real[g_n_by_real].real = real;
        struct hook_entry key = {k_cuda_names[i], NULL, NULL};
        struct hook_entry *h = bsearch(&key, k_hooks_by_name, N_HOOKS, sizeof(key), cmp_by_name);
        k_by_real[g_n_by_real].hook = h != NULL ? h->hook : real;
        g_n_by_real++;
    }
    qsort(k_by_real, g_n_by_real, sizeof(k_by_real[0]), cmp_by_real);
    pthread_atfork(NULL, NULL, atfork_child);
    LOG_DEBUG("initialised (%s)", g_cfg.disabled ? "CUDA_DISABLE_CONTROL: pass-through" : "control on");
}

void vgpu_init(void) {
    if (__atomic_load_n(&g_inited, __ATOMIC_ACQUIRE)) return;
    if (t_in_init) return; /* re-entered from the driver's constructors while loading it */
    pthread_mutex_lock(&g_init_mu);
    if (!g_inited) {
        t_in_init = 1;
        do_init();
        t_in_init = 0;
        __atomic_store_n(&g_inited, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_init_mu);
}

static void nvml_load(void) {
    if (__atomic_load_n(&g_nvml_loaded, __ATOMIC_ACQUIRE)) return;
    vgpu_init();
    pthread_mutex_lock(&g_nvml_mu);
    if (!g_nvml_loaded) {
        void *h = dlopen(g_cfg.libnvml, RTLD_NOW | RTLD_NODELETE);
        if (h == NULL) {
            LOG_INFO("NVML %s not available: %s", g_cfg.libnvml, dlerror());
        } else {
            for (size_t i = 0; i < VGPU_NVML_COUNT; i++)
                if (k_nvml_names[i][0] != '\0') vgpu_real_nvml[i] = vgpu_real_dlsym(h, k_nvml_names[i]);
            g_nvml_base = object_base(vgpu_real_nvml[VGPU_IDX_nvmlInit_v2]);
        }
        __atomic_store_n(&g_nvml_loaded, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_nvml_mu);
}

int vgpu_nvml_ready(void) {
    nvml_load();
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

/* Used by the NVML hooks: make sure the table is loaded. */
void vgpu_nvml_load(void);
void vgpu_nvml_load(void) { nvml_load(); }

/* ------------------------------------------------------------------ dlsym decision */

static struct hook_entry *hook_entry_for(const char *name) {
    struct hook_entry key = {name, NULL, NULL};
    return bsearch(&key, k_hooks_by_name, N_HOOKS, sizeof(key), cmp_by_name);
}

void *vgpu_hook_for_name(const char *name) {
    struct hook_entry *h = hook_entry_for(name);
    return h != NULL ? h->hook : NULL;
}

/*
 * Called by the exported dlsym for every lookup. Returns our hook when `name` is one we hook and the caller's
 * lookup would have reached the real driver (or ourselves); NULL means "let glibc answer", which the stub
 * does with the caller's own return address so RTLD_NEXT keeps its meaning. Never widens a lookup.
 */
__attribute__((visibility("hidden"), no_sanitize("address", "undefined"))) void *
vgpu_dlsym_decide(void *handle, const char *name) {
    resolve_real_dlsym();
    if (name == NULL) return NULL;
    int is_cu = name[0] == 'c' && name[1] == 'u';
    int is_nvml = name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l';
    if (!is_cu && !is_nvml) return NULL;
    if (t_in_init) return NULL;
    vgpu_init();
    if (g_cfg.disabled) return NULL;
    struct hook_entry *h = hook_entry_for(name);
    if (h == NULL) return NULL;
    if (is_nvml) nvml_load();
    if (handle == RTLD_DEFAULT || handle == RTLD_NEXT) return h->hook;
    void *found = vgpu_real_dlsym(handle, name);
    if (found == NULL) return NULL;
    if (found == h->hook) return h->hook;
    void *base = object_base(found);
    if (base != NULL && (base == g_cuda_base || base == g_nvml_base)) return h->hook;
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
    {"cuCtxCreate", 12050, "cuCtxCreate_v4"},
    {"cuCtxCreate", 11040, "cuCtxCreate_v3"},
    {"cuCtxCreate", 3020, "cuCtxCreate_v2"},
    {"cuCtxDestroy", 4000, "cuCtxDestroy_v2"},
    {"cuDevicePrimaryCtxRelease", 11000, "cuDevicePrimaryCtxRelease_v2"},
    {"cuDevicePrimaryCtxReset", 11000, "cuDevicePrimaryCtxReset_v2"},
    {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"},
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
static pid_t g_post_pid;

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
