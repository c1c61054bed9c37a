/*
 * NVML over the shared GPU state. As on a real node, NVML sees every process on the GPU, under its host PID:
 * a process's "host PID" is getpid() + FAKE_NVML_PID_OFFSET (give each simulated container its own offset to
 * model PID namespaces). nvmlDeviceGetComputeRunningProcesses* lists the processes holding a context on the
 * device with their usedGpuMemory (contexts, allocations, pool reserves); nvmlDeviceGetProcessUtilization
 * returns one sample per process and completed sample period (FAKE_NVML_SAMPLE_MS) newer than lastSeen, with
 * smUtil = the process's own kernel time in that period, in percent, from the device timeline.
 */
#include <stdio.h>
#include <string.h>

#include "fk.h"

static char handles[FK_MAX_DEV]; /* nvmlDevice_t = &handles[CUDA ordinal] */

static int nvml_dev(nvmlDevice_t h) {
    const char *p = (const char *)h;
    fk_valid_dev(0);
    if (p < handles || p >= handles + fk_sh->ndev) return -1;
    return (int)(p - handles);
}

/* NVML index i shows CUDA ordinal nvml_order[i]. */
static int nvml_index_of(int cuda) {
    for (int i = 0; i < fk_sh->ndev; i++)
        if (fk_cfg.nvml_order[i] == cuda) return i;
    return cuda;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) {
    fk_count_call();
    fk_lock();
    fk_unlock();
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int f) {
    (void)f;
    return nvmlInit_v2();
}
EXPORT nvmlReturn_t nvmlShutdown(void) {
    fk_count_call();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) {
    fk_count_call();
    if (n == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    fk_valid_dev(0);
    *n = (unsigned int)fk_sh->ndev;
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { return nvmlDeviceGetCount_v2(n); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h) {
    fk_count_call();
    fk_valid_dev(0);
    if (h == NULL || i >= (unsigned int)fk_sh->ndev) return NVML_ERROR_INVALID_ARGUMENT;
    *h = (nvmlDevice_t)&handles[fk_cfg.nvml_order[i]];
    return NVML_SUCCESS;
}
EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *h) {
    return nvmlDeviceGetHandleByIndex_v2(i, h);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t h, unsigned int *idx) {
    fk_count_call();
    int d = nvml_dev(h);
    if (d < 0 || idx == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *idx = (unsigned int)nvml_index_of(d);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t h, char *uuid, unsigned int len) {
    fk_count_call();
    int d = nvml_dev(h);
    if (d < 0 || uuid == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    CUuuid u;
    fk_uuid_bytes(d, &u);
    const unsigned char *b = (const unsigned char *)u.bytes;
    int n = snprintf(uuid, len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                     b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
    return n >= (int)len ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    fk_count_call();
    int d = nvml_dev(h);
    if (d < 0 || m == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    fk_lock();
    fk_reap_locked(0);
    m->total = fk_sh->devs[d].total;
    m->used = fk_sh->devs[d].used;
    m->free = m->total - m->used;
    fk_unlock();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t h, nvmlMemory_v2_t *m) {
    fk_count_call();
    int d = nvml_dev(h);
    if (d < 0 || m == NULL || m->version != nvmlMemory_v2) return NVML_ERROR_INVALID_ARGUMENT;
    fk_lock();
    fk_reap_locked(0);
    m->total = fk_sh->devs[d].total;
    m->reserved = 0;
    m->used = fk_sh->devs[d].used;
    m->free = m->total - m->used;
    fk_unlock();
    return NVML_SUCCESS;
}

static nvmlReturn_t procs(nvmlDevice_t h, unsigned int *count, void *out, int v1) {
    int d = nvml_dev(h);
    if (d < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int pid[FK_MAX_PROC];
    unsigned long long used[FK_MAX_PROC];
    unsigned int n = 0;
    fk_lock();
    fk_reap_locked(1); /* the driver forgets a process as soon as it is gone */
    for (int i = 0; i < FK_MAX_PROC; i++) {
        const struct fk_sproc *p = &fk_sh->procs[i];
        if (p->pid == 0 || p->ctxs[d] <= 0) continue;
        pid[n] = (unsigned int)p->host_pid;
        used[n++] = p->mem[d];
    }
    fk_unlock();
    if (*count < n || (out == NULL && n > 0)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    for (unsigned int i = 0; i < n; i++) {
        if (v1)
            ((nvmlProcessInfo_v1_t *)out)[i] = (nvmlProcessInfo_v1_t){pid[i], used[i]};
        else
            ((nvmlProcessInfo_t *)out)[i] = (nvmlProcessInfo_t){pid[i], used[i], 0xffffffffu, 0xffffffffu};
    }
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t h, unsigned int *c, nvmlProcessInfo_v1_t *o) {
    fk_count_call();
    return procs(h, c, o, 1);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t h, unsigned int *c, nvmlProcessInfo_t *o) {
    fk_count_call();
    return procs(h, c, o, 0);
}
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *c, nvmlProcessInfo_t *o) {
    fk_count_call();
    return procs(h, c, o, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    fk_count_call();
    int d = nvml_dev(h);
    if (d < 0 || u == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    fk_lock();
    fk_advance_locked(d);
    u->gpu = fk_device_util_locked(d);
    u->memory = 0;
    fk_unlock();
    return NVML_SUCCESS;
}

/* The documented protocol: utilization == NULL asks for the number of samples (INSUFFICIENT_SIZE, count
 * set); a buffer too small is INSUFFICIENT_SIZE with the count needed; no sample newer than lastSeen is
 * NOT_FOUND. */
EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t h, nvmlProcessUtilizationSample_t *s,
                                                    unsigned int *count, unsigned long long last_seen) {
    fk_count_call();
    int d = nvml_dev(h);
    if (d < 0 || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    fk_lock();
    fk_advance_locked(d);
    int n = fk_samples_locked(d, last_seen, s, s != NULL ? *count : 0);
    fk_unlock();
    if (n == 0) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    if (s == NULL || *count < (unsigned int)n) {
        *count = (unsigned int)n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = (unsigned int)n;
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    fk_count_call();
    return r == NVML_SUCCESS ? "Success" : r == NVML_ERROR_NOT_FOUND ? "Not Found"
           : r == NVML_ERROR_INSUFFICIENT_SIZE ? "Insufficient Size" : "Fake NVML error";
}
