/* Internal interfaces of libvgpu, one section per module, lowest layer first (the layer table is at the top
 * of process.c). Nothing here is exported from the shared object. */
#ifndef VGPU_INTERNAL_H
#define VGPU_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "driver_api.h"
#include "region_layout.h"

#define VGPU_EXPORT __attribute__((visibility("default")))
#define VGPU_MAX_DEVICES 16

/* ------------------------------------------------------------------ config (config.c) */

enum vgpu_policy { VGPU_POLICY_DEFAULT = 0, VGPU_POLICY_FORCE = 1, VGPU_POLICY_DISABLE = 2 };

struct vgpu_config {
    int disabled;                            /* CUDA_DISABLE_CONTROL=true: pure pass-through */
    int log_level;                           /* LIBCUDA_LOG_LEVEL (default 2) */
    uint64_t mem_limit[VGPU_MAX_DEVICES];    /* bytes, 0 = unlimited */
    uint64_t sm_limit[VGPU_MAX_DEVICES];     /* percent, 100 = unlimited */
    int policy;                              /* GPU_CORE_UTILIZATION_POLICY */
    int priority;                            /* CUDA_TASK_PRIORITY (default 1) */
    int oversubscribe;                       /* CUDA_OVERSUBSCRIBE=true: virtual total not clamped */
    char cache_path[4096];                   /* CUDA_DEVICE_MEMORY_SHARED_CACHE */
    char libcuda[4096];                      /* KUBE_VGPU_REAL_LIBCUDA (default libcuda.so.1) */
    char libnvml[4096];                      /* KUBE_VGPU_REAL_LIBNVML (default libnvidia-ml.so.1) */
};

extern struct vgpu_config g_cfg;

/* Reads the environment into *cfg (pure apart from logging). */
void vgpu_config_from_env(struct vgpu_config *cfg);
/* Reads the environment into g_cfg once per process (no locks held, no library loaded: safe from dlsym). */
void vgpu_config_load(void);
void vgpu_config_atfork_child(void);
/* Set while this thread runs process init (it loads the driver, whose constructors may look symbols up). */
extern __thread int vgpu_t_in_init;
/* Parses a HAMi-style size: integer (strtoul base 0) with an optional k/m/g suffix. Returns 0 on success
 * (*out set), -1 when the text is malformed (then *out holds HAMi-core's lenient reading). */
int vgpu_parse_size(const char *text, uint64_t *out);
int vgpu_env_true(const char *name);
/* CLOCK_MONOTONIC in nanoseconds. */
int64_t vgpu_now_ns(void);

/* ------------------------------------------------------------------ logging (config.c) */

enum { VGPU_LOG_ERROR = 1, VGPU_LOG_WARN = 2, VGPU_LOG_INFO = 3, VGPU_LOG_DEBUG = 4 };
void vgpu_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define LOG_ERROR(...) vgpu_log(VGPU_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...) vgpu_log(VGPU_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...) vgpu_log(VGPU_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...)                                                                                       \
    do {                                                                                                     \
        if (g_cfg.log_level >= VGPU_LOG_DEBUG) vgpu_log(VGPU_LOG_DEBUG, __VA_ARGS__);                        \
    } while (0)

/* ------------------------------------------------------------------ real driver tables (real.c) */

#define VGPU_ENUM_ENTRY(name) VGPU_IDX_##name,
enum {
    VGPU_CUDA_HOOKS(VGPU_ENUM_ENTRY) VGPU_CUDA_HOOK_COUNT_MARK,
    VGPU_CUDA_INTERNAL(VGPU_ENUM_ENTRY) VGPU_CUDA_COUNT
};
enum { VGPU_NVML_HOOKS(VGPU_ENUM_ENTRY) VGPU_NVML_HOOK_COUNT_MARK, VGPU_NVML_INTERNAL(VGPU_ENUM_ENTRY) VGPU_NVML_COUNT };
#undef VGPU_ENUM_ENTRY

extern void *vgpu_real_cuda[VGPU_CUDA_COUNT];
extern void *vgpu_real_nvml[VGPU_NVML_COUNT];
/* glibc's dlsym (NULL until resolved); the assembly stub jumps to it. */
extern void *(*vgpu_real_dlsym_ptr)(void *, const char *);

/* The real function `fn` with the hook's own type; NULL when the driver lacks it. */
#define REAL(fn) ((__typeof__(&fn))vgpu_real_cuda[VGPU_IDX_##fn])
#define REAL_NVML(fn) ((__typeof__(&fn))vgpu_real_nvml[VGPU_IDX_##fn])

/* Resolves glibc's dlsym once (safe to call before anything else, even from the dlsym stub). */
void vgpu_resolve_real_dlsym(void);
/* The real dlsym (glibc's), resolved once. */
void *vgpu_real_dlsym(void *handle, const char *name);
/* Opens the real libcuda (g_cfg.libcuda) and fills vgpu_real_cuda. Called once, by process init. */
void vgpu_real_load(void);
/* Opens the real libnvidia-ml (g_cfg.libnvml) and fills vgpu_real_nvml, once; needs the configuration. */
void vgpu_nvml_load(void);
/* Loads libnvidia-ml lazily and runs the real nvmlInit_v2 once; returns 0 when NVML is usable. */
int vgpu_nvml_ready(void);
/* Whether `sym` lies in the real libcuda or libnvidia-ml. */
int vgpu_real_in_driver(const void *sym);
void vgpu_real_atfork_child(void);

static inline int vgpu_passthrough(void) { return g_cfg.disabled; }

/* ------------------------------------------------------------------ shared region (region.c) */

enum vgpu_mem_kind { VGPU_MEM_CONTEXT = 0, VGPU_MEM_MODULE = 1, VGPU_MEM_DATA = 2 };

/* Maps the region (creating and initialising it if needed) with the configuration in g_cfg, which process
 * init has read. Returns the mapping, never NULL: when the file cannot be used, a private anonymous region is
 * used instead (limits stay per process). */
vgpu_region_t *vgpu_region(void);
/* Attaches and registers this process's slot (idempotent; re-registers after fork). */
void vgpu_region_register(void);
/* Charges `bytes` to this process's slot for device `dev`. With check_limit, refuses (returns -1) when
 * the sum over all slots plus `bytes` would pass the device limit (dead slots are reclaimed first). */
int vgpu_region_charge(int dev, uint64_t bytes, int kind, int check_limit);
/* Gives back `bytes` (saturating at zero). */
void vgpu_region_uncharge(int dev, uint64_t bytes, int kind);
/* Sum of used[dev].total over all slots; reclaims dead slots at most once a second. */
uint64_t vgpu_region_usage(int dev);
uint64_t vgpu_region_limit(int dev);
/* Removes slots of dead processes; returns how many were removed. */
int vgpu_region_reclaim_dead(void);
/* Publishes this process's measured SM share (percent) for `dev` with a timestamp, and whether it was held
 * back by its budget (saturated). */
void vgpu_region_set_sm_util(int dev, uint64_t percent, int saturated);
/* Fresh sm_util of the other live slots for `dev`: sums (percent) over saturated and unsaturated ones and the
 * number of saturated ones. Returns the total. */
uint64_t vgpu_region_others_sm_util(int dev, uint64_t *sum_unsat, int *n_sat);
void vgpu_region_note_kernel(void);
/* Writes this process's host PID (as NVML reports it) into its slot. */
void vgpu_region_set_hostpid(int hostpid);
/* Host PIDs recorded by the other slots (up to cap); returns how many. */
int vgpu_region_sibling_hostpids(unsigned int *out, int cap);
/* Resets per-process state in a fork child. */
void vgpu_region_atfork_child(void);
/* At normal process exit: removes this process's slot. */
void vgpu_region_at_exit(void);
/* For tests: detach and forget everything (does not touch the file). */
void vgpu_region_reset_for_tests(void);
/* Whether `pid` (with /proc start time `start`, 0 = unknown) is gone. */
int vgpu_pid_dead(pid_t pid, uint64_t start);
uint64_t vgpu_proc_start_time(pid_t pid);

/* ------------------------------------------------------------------ allocation tracking (track.c) */

enum vgpu_track_kind {
    VGPU_TRK_PTR = 1,     /* cuMemAlloc / pitch / managed: key = device pointer */
    VGPU_TRK_ASYNC = 2,   /* stream-ordered allocation: key = device pointer, aux = pool */
    VGPU_TRK_VMM = 3,     /* cuMemCreate: key = generic handle */
    VGPU_TRK_ARRAY = 4,   /* cuArrayCreate / cuArray3DCreate: key = CUarray */
    VGPU_TRK_MIPMAP = 5,  /* cuMipmappedArrayCreate: key = CUmipmappedArray */
    VGPU_TRK_POOL = 6,    /* memory pool: key = pool, bytes = charged reserve */
    VGPU_TRK_CTX = 7,     /* context footprint: key = context */
};

struct vgpu_track_entry {
    uint64_t key;
    uint64_t bytes;
    uint64_t aux;      /* pool handle for ASYNC; flags for POOL */
    uintptr_t ctx;     /* owning context (0 when unknown) */
    int kind;
    int dev;
};

void vgpu_track_put(const struct vgpu_track_entry *e);
/* Removes the entry and copies it to *out; returns 1 when found. */
int vgpu_track_take(int kind, uint64_t key, struct vgpu_track_entry *out);
int vgpu_track_get(int kind, uint64_t key, struct vgpu_track_entry *out);
/* Updates bytes of an existing entry; returns 1 when found. */
int vgpu_track_set_bytes(int kind, uint64_t key, uint64_t bytes);
/* Removes every entry of context `ctx`, calling fn for each; returns the count. */
int vgpu_track_drop_ctx(uintptr_t ctx, void (*fn)(const struct vgpu_track_entry *));
/* Calls fn for every entry of `kind` (under the table lock; fn must not call back into the table). */
void vgpu_track_each(int kind, void (*fn)(const struct vgpu_track_entry *, void *), void *arg);
/* Empties the table (also the fork child's reset: the parent's allocations are not the child's). */
void vgpu_track_clear(void);
size_t vgpu_track_count(void);

/* ------------------------------------------------------------------ devices (device.c) */

/* Region index (in-container NVML index) of CUDA device ordinal `cudev`, or -1 when not representable. */
int vgpu_dev_index(CUdevice cudev);
/* Region index of the current context's device; -1 without a context. *ctx gets the current context. */
int vgpu_current_dev(CUcontext *ctx);
/* A context is being destroyed: forget every thread's remembered context -> device entry. */
void vgpu_devices_forget_ctx(void);
/* Builds the CUDA→NVML map by UUID and publishes device_num/uuids in the region (after cuInit). */
void vgpu_devices_postinit(void);
void vgpu_devices_atfork_child(void);

/* ------------------------------------------------------------------ NVML process views (nvproc.c) */

#define VGPU_NVPROC_MAX 256
struct vgpu_nvproc {
    unsigned int pid; /* as NVML reports it: a host PID */
    uint64_t used;    /* usedGpuMemory */
};

/* Compute processes on region device `idx` (NVML index); -1 when NVML cannot tell. */
int vgpu_nvproc_list(int idx, struct vgpu_nvproc *out, int cap);
/* Device-wide used memory per NVML; UINT64_MAX when unavailable. */
uint64_t vgpu_nvproc_device_used(int idx);
/* usedGpuMemory of `pid` in a list (0 when not listed). */
uint64_t vgpu_nvproc_used(const struct vgpu_nvproc *p, int n, unsigned int pid);
/* This process's host PID; 0 while unknown. */
int vgpu_hostpid(void);
/* Learns the host PID from the process lists before/after a context creation (no-op once known); writes it
 * to the slot. Returns the host PID or 0. */
int vgpu_hostpid_learn(const struct vgpu_nvproc *before, int nb, const struct vgpu_nvproc *after, int na);
/* Pure: our host PID from the lists (nb/na < 0: list unavailable): self_pid when listed (no namespace), else
 * the one PID that appeared and is no sibling's; -1 when none or ambiguous. */
int vgpu_hostpid_from_diff(const struct vgpu_nvproc *before, int nb, const struct vgpu_nvproc *after, int na,
                           unsigned int self_pid, const unsigned int *exclude, int nex);
/* NVML SM utilisation of `hostpid` on device idx from samples newer than *last_seen_us (advanced to the newest
 * sample seen). Returns the number of sample periods seen (our mean over them in *mean_pct), 0 when none, -1
 * when unavailable; sets *others_active when another process had a non-zero sample, and *others_pct (when
 * not NULL) to the other processes' summed utilisation averaged over the periods. */
int vgpu_nvproc_sm_util(int idx, unsigned int hostpid, unsigned long long *last_seen_us, double *mean_pct,
                        int *others_active, double *others_pct);
/* Pure: `pid`'s mean smUtil over the sample periods newer than since_us (samples grouped into periods by
 * timestamp; 0 in a period where only others reported); advances *newest_us; sets *others_active when another
 * PID has a non-zero sample; *others_pct (when not NULL) gets the others' summed utilisation (capped at 100)
 * averaged over the periods. Other PIDs missing from `alive` (nalive >= 0: the current compute processes)
 * are ignored: exited processes leave samples behind. Returns the number of periods. */
int vgpu_util_from_samples(const nvmlProcessUtilizationSample_t *s, int n, unsigned int pid,
                           unsigned long long since_us, const struct vgpu_nvproc *alive, int nalive,
                           double *mean_pct, unsigned long long *newest_us, int *others_active, double *others_pct);

/* ------------------------------------------------------------------ SM controller (smctl.c) */

struct vgpu_launch_guard {
    int active;
    int dev;
    int ptsz;
    CUstream stream;
    void *rec;
};

/* Called before a launch on `stream` (ptsz: per-thread default stream semantics). When the device is
 * throttled it waits for budget, keeps the device's controller locked and returns active=1. */
void vgpu_sm_before_launch(struct vgpu_launch_guard *g, CUstream stream, int ptsz);
/* Must follow every vgpu_sm_before_launch with the launch's result. */
void vgpu_sm_after_launch(struct vgpu_launch_guard *g, CUresult launch_result);
/* Drops records/events that belong to a context being destroyed. */
void vgpu_sm_forget_ctx(CUcontext ctx);
/* Waits until no device controller is between a decision and its last driver call (smcapture.c). */
void vgpu_sm_barrier(void);

/* ------------------------------------------------------------------ stream capture (smcapture.c) */

/* Capture bookkeeping for the hooks: a capture may be starting (call before the real begin; with began=0
 * after it failed), and one may have ended on `stream`. While none is in progress in the process, throttled
 * launches skip the capture query and the capture-mode exchange. */
void vgpu_sm_capture_begin(int began);
void vgpu_sm_capture_end(CUstream stream, int ptsz);
int vgpu_sm_captures_possible(void);
/* Whether `s` is capturing (1 also when the driver cannot tell). */
int vgpu_stream_capturing(CUstream s, int ptsz);
/* The thread's capture mode swapped to RELAXED around the controller's unsafe calls (only while a capture
 * may be in progress), and restored. */
struct vgpu_relaxed {
    int on;
    CUstreamCaptureMode saved;
};
void vgpu_sm_relax(struct vgpu_relaxed *m);
void vgpu_sm_unrelax(struct vgpu_relaxed *m);
void vgpu_sm_atfork_child(void);

/* Pure controller maths, exposed for the unit tests. */
struct vgpu_bucket {
    double rate;         /* share of GPU time allowed (0..1) */
    double tokens_ns;    /* budget of GPU-busy nanoseconds */
    double cap_ns;       /* most uncommitted budget kept */
    int64_t last_ns;     /* host time of the last refill */
};
void vgpu_bucket_refill(struct vgpu_bucket *b, int64_t now_ns, double committed_ns);

/* Busy intervals on one GPU timeline, sorted and disjoint (smmath.c). */
#define VGPU_IVSET_MAX 64
struct vgpu_ivset {
    double s[VGPU_IVSET_MAX], e[VGPU_IVSET_MAX];
    int n;
};
/* Adds [s, e) and returns the part of it not covered before (concurrent streams count once). */
double vgpu_ivset_add(struct vgpu_ivset *v, double s, double e);

/* Time-slice inflation of event-timed busy time (smmath.c): k >= 1, 1 when alone. */
#define VGPU_INFLATION_MAX 20.0
struct vgpu_inflation {
    double ev; /* smoothed event-timed share */
    double nv; /* smoothed NVML share */
    double k;  /* event time / own time */
};
void vgpu_inflation_update(struct vgpu_inflation *f, double event_share, double nvml_share, int others_active);
/* Starting factor from the other processes' recent busy fraction (0..1): 1 + that; never lowers k. */
void vgpu_inflation_prior(struct vgpu_inflation *f, double others_busy);

/* ------------------------------------------------------------------ memory hooks (hooks_mem.c) */

void vgpu_mem_release_entry(const struct vgpu_track_entry *e);
/* Re-reads the reserve of every tracked pool and corrects the charges (one atomic load without pools). */
void vgpu_pools_refresh(void);
void vgpu_mem_atfork_child(void);
uint64_t vgpu_array_bytes(const CUDA_ARRAY3D_DESCRIPTOR *d, unsigned int levels);

/* ------------------------------------------------------------------ context hooks (hooks_ctx.c) */

void vgpu_ctx_atfork_child(void);
/* Pure: a context's footprint from NVML probes before/after its creation: our host PID's usedGpuMemory
 * growth when the PID is known and both lists exist, else the device-wide delta; capped at 4 GiB. */
uint64_t vgpu_ctx_footprint(const struct vgpu_nvproc *before, int nb, uint64_t dev_before,
                            const struct vgpu_nvproc *after, int na, uint64_t dev_after, unsigned int hostpid);

/* ------------------------------------------------------------------ interception (intercept.c) */

/* Builds the hook tables (by name; by real driver address). Called once, by process init, after real.c. */
void vgpu_intercept_init(void);
void vgpu_intercept_atfork_child(void);
/* dlsym answer for a name: our hook when `name` is hooked and the lookup would reach the real driver. */
/* Maps a real driver entry point returned by cuGetProcAddress to our hook (or returns it unchanged). */
void *vgpu_procaddr_map(const char *symbol, void *real_pfn, int cuda_version, cuuint64_t flags);

/* ------------------------------------------------------------------ process init (process.c) */

/* One-time process init (config, real libcuda table, hook tables, fork handler); cheap after the first call.
 * The only function of process.c the hooks call. Returns 0 when called again on the thread that is running
 * the init (the driver's constructors looking up symbols while it loads), 1 once initialised. */
int vgpu_init(void);

#define REQUIRE_REAL(fn)                                                                                     \
    do {                                                                                                     \
        vgpu_init();                                                                                         \
        if (REAL(fn) == NULL) return CUDA_ERROR_NOT_FOUND;                                                   \
    } while (0)

#endif
