/*
 * cuGetProcAddress and cuGetProcAddress_v2 with the driver's rules: a base name and the caller's CUDA version
 * select the newest ABI version of the entry point introduced at or before that version (cuMemAlloc at 3020
 * is cuMemAlloc_v2; cuEventElapsedTime at 12080 is cuEventElapsedTime_v2), and the per-thread-stream flag
 * (from CUDA 7.0) selects the _ptsz/_ptds variant where there is one. A name the driver has, asked for at an
 * older version than it exists, is CUDA_ERROR_NOT_FOUND with CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT; an
 * unknown name is CUDA_ERROR_NOT_FOUND with CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND.
 * With FAKE_PROCADDR_ALT=1 a few entry points are handed out at addresses other than their exports, as a
 * driver may; with FAKE_PROCADDR_LOG=path every request is appended to that file ("name version flags rc").
 */
#include <stdio.h>
#include <string.h>

#include "fk.h"


struct proc_entry {
    const char *name;
    void *fn;
    void *alt;
};

#define P(n) {#n, (void *)&n, NULL}
#define PA(n) {#n, (void *)&n, (void *)&fk_alt_##n}
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
    P(cuMemPoolSetAttribute), P(cuDeviceGetMemPool), P(cuDeviceGetDefaultMemPool), P(cuMemCreate),
    P(cuMemRelease), P(cuArrayCreate_v2), P(cuArray3DCreate_v2), P(cuArrayDestroy), P(cuMipmappedArrayCreate),
    P(cuMipmappedArrayDestroy), P(cuStreamCreate), P(cuStreamCreateWithPriority), P(cuStreamDestroy_v2),
    P(cuStreamSynchronize), P(cuStreamSynchronize_ptsz), P(cuStreamQuery), P(cuStreamQuery_ptsz),
    P(cuStreamWaitEvent), P(cuStreamWaitEvent_ptsz), P(cuStreamIsCapturing), P(cuStreamIsCapturing_ptsz),
    P(cuStreamBeginCapture), P(cuStreamBeginCapture_ptsz), P(cuStreamBeginCapture_v2),
    P(cuStreamBeginCapture_v2_ptsz), P(cuStreamEndCapture), P(cuStreamEndCapture_ptsz),
    P(cuStreamGetCaptureInfo), P(cuStreamGetCaptureInfo_v2), P(cuStreamGetCaptureInfo_v2_ptsz),
    P(cuThreadExchangeStreamCaptureMode), P(cuEventCreate), P(cuEventDestroy_v2), P(cuEventRecord),
    P(cuEventRecord_ptsz), P(cuEventRecordWithFlags), P(cuEventRecordWithFlags_ptsz), P(cuEventQuery),
    P(cuEventSynchronize), P(cuEventElapsedTime), P(cuEventElapsedTime_v2), P(cuMemcpyHtoDAsync_v2), P(cuMemcpyHtoDAsync_v2_ptsz),
    P(cuMemcpyDtoHAsync_v2), P(cuMemcpyDtoHAsync_v2_ptsz), P(cuMemcpyAsync), P(cuMemcpyAsync_ptsz),
    P(cuMemcpyHtoD_v2), P(cuMemcpyDtoH_v2), PA(cuLaunchKernel), P(cuLaunchKernel_ptsz), P(cuLaunchKernelEx),
    P(cuLaunchKernelEx_ptsz), P(cuLaunchCooperativeKernel), P(cuLaunchCooperativeKernel_ptsz), P(cuGraphCreate),
    P(cuGraphInstantiateWithFlags), P(cuGraphInstantiate_v2), P(cuGraphLaunch), P(cuGraphLaunch_ptsz),
    P(cuGraphExecDestroy), P(cuGraphDestroy), P(cuGetProcAddress), P(cuGetProcAddress_v2), P(cuGetExportTable),
};
#undef P
#undef PA

/* The driver's versioned names: base name -> (first CUDA version, name). Newest first per base name. */
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
    {"cuGetProcAddress", 12000, "cuGetProcAddress_v2"}, {"cuStreamBeginCapture", 10010, "cuStreamBeginCapture_v2"},
    {"cuStreamGetCaptureInfo", 12030, "cuStreamGetCaptureInfo_v3"},
    {"cuStreamGetCaptureInfo", 11030, "cuStreamGetCaptureInfo_v2"},
    {"cuMemcpyHtoDAsync", 3020, "cuMemcpyHtoDAsync_v2"}, {"cuMemcpyDtoHAsync", 3020, "cuMemcpyDtoHAsync_v2"},
    {"cuMemcpyHtoD", 3020, "cuMemcpyHtoD_v2"}, {"cuMemcpyDtoH", 3020, "cuMemcpyDtoH_v2"},
    {"cuGraphInstantiate", 12000, "cuGraphInstantiateWithFlags"}, {"cuGraphInstantiate", 11000, "cuGraphInstantiate_v2"},
    {"cuEventElapsedTime", 12080, "cuEventElapsedTime_v2"},
};

static const struct {
    const char *name;
    int ver;
} k_api[] = {
#include "fk_api_names.inc"
};

static CUresult fk_not_supported(void) { return CUDA_ERROR_NOT_SUPPORTED; }

static const struct proc_entry *proc_find(const char *name) {
    for (size_t i = 0; i < sizeof(k_procs) / sizeof(k_procs[0]); i++)
        if (strcmp(k_procs[i].name, name) == 0) return &k_procs[i];
    return NULL;
}

const char *fk_known_api(const char *name, int ver, int *min_ver) {
    for (size_t i = 0; i < sizeof(k_api) / sizeof(k_api[0]); i++) {
        if (strcmp(k_api[i].name, name) != 0) continue;
        *min_ver = k_api[i].ver;
        return ver >= k_api[i].ver ? k_api[i].name : NULL;
    }
    *min_ver = 0;
    return NULL;
}

static void log_request(const char *sym, int ver, cuuint64_t flags, CUresult r) {
    if (fk_cfg.procaddr_log == NULL) return;
    FILE *f = fopen(fk_cfg.procaddr_log, "ae");
    if (f == NULL) return;
    fprintf(f, "%s %d %llu %d\n", sym[0] != '\0' ? sym : "-", ver, (unsigned long long)flags, (int)r);
    fclose(f);
}

static CUresult resolve(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st) {
    const char *name = sym;
    for (size_t i = 0; i < sizeof(k_vers) / sizeof(k_vers[0]); i++)
        if (strcmp(k_vers[i].base, sym) == 0 && ver >= k_vers[i].ver) {
            name = k_vers[i].name;
            break;
        }
    const struct proc_entry *e = NULL;
    if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && ver >= 7000) {
        char buf[160];
        snprintf(buf, sizeof(buf), "%s_ptsz", name);
        e = proc_find(buf);
        if (e == NULL) {
            snprintf(buf, sizeof(buf), "%s_ptds", name);
            e = proc_find(buf);
        }
    }
    if (e == NULL) e = proc_find(name);
    int min_ver = 0;
    const char *known = fk_known_api(sym, ver, &min_ver);
    if (e == NULL && known == NULL) {
        *pfn = NULL;
        if (st != NULL)
            *st = min_ver > ver ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        return CUDA_ERROR_NOT_FOUND;
    }
    if (e != NULL)
        *pfn = (fk_cfg.procaddr_alt && e->alt != NULL) ? e->alt : e->fn;
    else
        *pfn = (void *)&fk_not_supported; /* an entry point the fake does not implement */
    if (st != NULL) *st = CU_GET_PROC_ADDRESS_SUCCESS;
    return CUDA_SUCCESS;
}

static CUresult get_proc(const char *sym, void **pfn, int ver, cuuint64_t flags, CUdriverProcAddressQueryResult *st) {
    if (sym == NULL || pfn == NULL) return CUDA_ERROR_INVALID_VALUE;
    fk_valid_dev(0); /* reads the configuration */
    CUresult r = sym[0] == '\0' ? CUDA_ERROR_NOT_FOUND : resolve(sym, pfn, ver, flags, st);
    if (sym[0] == '\0') {
        *pfn = NULL;
        if (st != NULL) *st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    }
    log_request(sym, ver, flags, r);
    return r;
}

EXPORT CUresult cuGetProcAddress(const char *sym, void **pfn, int ver, cuuint64_t flags) {
    fk_count_call();
    return get_proc(sym, pfn, ver, flags, NULL);
}

EXPORT CUresult cuGetProcAddress_v2(const char *sym, void **pfn, int ver, cuuint64_t flags,
                                    CUdriverProcAddressQueryResult *st) {
    fk_count_call();
    return get_proc(sym, pfn, ver, flags, st);
}

/* The runtime's private tables (keyed by UUID): the fake has none, which is where a real runtime stops. */
EXPORT CUresult cuGetExportTable(const void **table, const void *id) {
    fk_count_call();
    if (table == NULL || id == NULL) return CUDA_ERROR_INVALID_VALUE;
    *table = NULL;
    fk_valid_dev(0);
    log_request("cuGetExportTable", 0, 0, CUDA_ERROR_NOT_SUPPORTED);
    return CUDA_ERROR_NOT_SUPPORTED;
}
