/*
 * What NVML says about processes on a device: the compute-process list (host PIDs and their memory), this
 * process's host PID, and per-process SM utilisation samples.
 *
 * Host PID. Inside a PID namespace NVML reports host PIDs, which getpid() never matches. The process's host
 * PID is found the way NVML allows: list the device's compute processes before and after this process
 * creates its first context there; the PID that appeared is ours. When our own PID is listed, there is no
 * namespace. When several PIDs appeared at once (a neighbour created a context at the same moment), the PIDs
 * our sibling slots already own are ruled out; if that still leaves more than one, the PID stays unknown and
 * the next context creation tries again. The result goes to the slot's `hostpid`, as HAMi-core writes it.
 *
 * Depends on real.c (NVML table) and region.c (hostpid in the slot, siblings' hostpids). Layer 3.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "vgpu.h"

static int g_hostpid;      /* 0: unknown */
static pid_t g_hostpid_of; /* the getpid() it belongs to: a fork child has its own host PID and detects it */

/* ------------------------------------------------------------------ pure functions (unit-tested) */

static int listed(const struct vgpu_nvproc *p, int n, unsigned int pid) {
    for (int i = 0; i < n; i++)
        if (p[i].pid == pid) return 1;
    return 0;
}

int vgpu_hostpid_from_diff(const struct vgpu_nvproc *before, int nb, const struct vgpu_nvproc *after, int na,
                           unsigned int self_pid, const unsigned int *exclude, int nex) {
    if (na < 0) return -1;
    if (listed(after, na, self_pid)) return (int)self_pid; /* no PID namespace between us and NVML */
    if (nb < 0) return -1;                                  /* no "before" list: nothing to diff */
    int found = -1, count = 0;
    for (int i = 0; i < na; i++) {
        unsigned int pid = after[i].pid;
        if (pid == 0 || listed(before, nb, pid)) continue;
        int sibling = 0;
        for (int j = 0; j < nex && !sibling; j++) sibling = exclude[j] == pid;
        if (sibling) continue;
        if (found != (int)pid) count++;
        found = (int)pid;
    }
    return count == 1 ? found : -1;
}

uint64_t vgpu_nvproc_used(const struct vgpu_nvproc *p, int n, unsigned int pid) {
    for (int i = 0; i < n; i++)
        if (p[i].pid == pid) return p[i].used;
    return 0;
}

/*
 * NVML returns a sample per process only for sample periods in which the process was busy, so the mean of
 * our own samples would ignore the periods we sat idle. The samples are therefore grouped into periods by
 * timestamp (stamps within VGPU_SAMPLE_SLACK_US of each other belong to one period), our utilisation is 0 in
 * a period where only others reported, and the result is the mean over periods. Periods in which nobody ran
 * are not reported at all; they do not matter here, because the factor is only used while others are busy.
 */
#define VGPU_SAMPLE_SLACK_US 20000ull

int vgpu_util_from_samples(const nvmlProcessUtilizationSample_t *s, int n, unsigned int pid,
                           unsigned long long since_us, const struct vgpu_nvproc *alive, int nalive,
                           double *mean_pct, unsigned long long *newest_us, int *others_active, double *others_pct) {
    unsigned long long stamp[VGPU_NVPROC_MAX];
    double ours[VGPU_NVPROC_MAX], theirs[VGPU_NVPROC_MAX];
    int periods = 0;
    if (n > VGPU_NVPROC_MAX) n = VGPU_NVPROC_MAX;
    for (int i = 0; i < n; i++) {
        if (s[i].timeStamp > *newest_us) *newest_us = s[i].timeStamp;
        if (s[i].timeStamp <= since_us) continue;
        /* A process that has exited (no longer in the compute-process list) leaves samples behind for a while;
         * they say nothing about who will share the GPU with us now. */
        if (s[i].pid != pid && nalive >= 0 && !listed(alive, nalive, s[i].pid)) continue;
        int p = 0;
        while (p < periods && (s[i].timeStamp > stamp[p] + VGPU_SAMPLE_SLACK_US ||
                               stamp[p] > s[i].timeStamp + VGPU_SAMPLE_SLACK_US))
            p++;
        if (p == periods) {
            stamp[periods] = s[i].timeStamp;
            ours[periods] = theirs[periods] = 0;
            periods++;
        }
        double u = s[i].smUtil > 100 ? 100 : s[i].smUtil;
        if (s[i].pid == pid) {
            if (u > ours[p]) ours[p] = u;
        } else if (u > 0) {
            *others_active = 1;
            theirs[p] += u;
        }
    }
    if (periods == 0) return 0;
    double sum = 0, other_sum = 0;
    for (int p = 0; p < periods; p++) {
        sum += ours[p];
        other_sum += theirs[p] > 100 ? 100 : theirs[p];
    }
    *mean_pct = sum / periods;
    if (others_pct != NULL) *others_pct = other_sum / periods;
    return periods;
}

/* ------------------------------------------------------------------ NVML queries */

static nvmlDevice_t handle_of(int idx) {
    nvmlDevice_t h = NULL;
    if (idx < 0 || vgpu_nvml_ready() != 0 || REAL_NVML(nvmlDeviceGetHandleByIndex_v2) == NULL ||
        REAL_NVML(nvmlDeviceGetHandleByIndex_v2)((unsigned int)idx, &h) != NVML_SUCCESS)
        return NULL;
    return h;
}

int vgpu_nvproc_list(int idx, struct vgpu_nvproc *out, int cap) {
    nvmlDevice_t h = handle_of(idx);
    if (h == NULL) return -1;
    nvmlProcessInfo_t infos[VGPU_NVPROC_MAX];
    unsigned int n = VGPU_NVPROC_MAX;
    nvmlReturn_t r = NVML_ERROR_FUNCTION_NOT_FOUND;
    if (REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v3) != NULL)
        r = REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v3)(h, &n, infos);
    else if (REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v2) != NULL)
        r = REAL_NVML(nvmlDeviceGetComputeRunningProcesses_v2)(h, &n, infos);
    if (r == NVML_SUCCESS) {
        int k = 0;
        for (unsigned int i = 0; i < n && i < VGPU_NVPROC_MAX && k < cap; i++, k++) {
            out[k].pid = infos[i].pid;
            out[k].used = infos[i].usedGpuMemory;
        }
        return k;
    }
    if (r == NVML_ERROR_FUNCTION_NOT_FOUND && REAL_NVML(nvmlDeviceGetComputeRunningProcesses) != NULL) {
        nvmlProcessInfo_v1_t v1[VGPU_NVPROC_MAX];
        n = VGPU_NVPROC_MAX;
        if (REAL_NVML(nvmlDeviceGetComputeRunningProcesses)(h, &n, v1) == NVML_SUCCESS) {
            int k = 0;
            for (unsigned int i = 0; i < n && i < VGPU_NVPROC_MAX && k < cap; i++, k++) {
                out[k].pid = v1[i].pid;
                out[k].used = v1[i].usedGpuMemory;
            }
            return k;
        }
    }
    return -1; /* (NVML_ERROR_INSUFFICIENT_SIZE: more than VGPU_NVPROC_MAX processes; treated as unknown) */
}

uint64_t vgpu_nvproc_device_used(int idx) {
    nvmlDevice_t h = handle_of(idx);
    nvmlMemory_t m;
    if (h == NULL || REAL_NVML(nvmlDeviceGetMemoryInfo) == NULL ||
        REAL_NVML(nvmlDeviceGetMemoryInfo)(h, &m) != NVML_SUCCESS)
        return UINT64_MAX;
    return m.used;
}

int vgpu_hostpid(void) {
    if (__atomic_load_n(&g_hostpid_of, __ATOMIC_ACQUIRE) != getpid()) return 0;
    return __atomic_load_n(&g_hostpid, __ATOMIC_RELAXED);
}

int vgpu_hostpid_learn(const struct vgpu_nvproc *before, int nb, const struct vgpu_nvproc *after, int na) {
    int known = vgpu_hostpid();
    if (known > 0) return known;
    unsigned int siblings[64];
    int nsib = vgpu_region_sibling_hostpids(siblings, 64);
    int pid = vgpu_hostpid_from_diff(before, nb, after, na, (unsigned int)getpid(), siblings, nsib);
    if (pid <= 0) {
        LOG_INFO("host PID not found yet (%d processes before, %d after context creation)", nb, na);
        return 0;
    }
    __atomic_store_n(&g_hostpid, pid, __ATOMIC_RELAXED);
    __atomic_store_n(&g_hostpid_of, getpid(), __ATOMIC_RELEASE);
    vgpu_region_set_hostpid(pid);
    LOG_DEBUG("host PID %d (container PID %d)", pid, (int)getpid());
    return pid;
}

int vgpu_nvproc_sm_util(int idx, unsigned int hostpid, unsigned long long *last_seen_us, double *mean_pct,
                        int *others_active, double *others_pct) {
    nvmlDevice_t h = handle_of(idx);
    if (h == NULL || REAL_NVML(nvmlDeviceGetProcessUtilization) == NULL) return -1;
    nvmlProcessUtilizationSample_t samples[VGPU_NVPROC_MAX];
    struct vgpu_nvproc alive[VGPU_NVPROC_MAX];
    int nalive = vgpu_nvproc_list(idx, alive, VGPU_NVPROC_MAX);
    unsigned int n = VGPU_NVPROC_MAX;
    nvmlReturn_t r = REAL_NVML(nvmlDeviceGetProcessUtilization)(h, samples, &n, *last_seen_us);
    if (r == NVML_ERROR_NOT_FOUND) return 0; /* no samples since last_seen: nobody ran */
    if (r != NVML_SUCCESS) return -1;
    unsigned long long newest = *last_seen_us;
    int k = vgpu_util_from_samples(samples, (int)(n < VGPU_NVPROC_MAX ? n : VGPU_NVPROC_MAX), hostpid, *last_seen_us,
                                   alive, nalive, mean_pct, &newest, others_active, others_pct);
    *last_seen_us = newest;
    return k;
}
