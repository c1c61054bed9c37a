/*
 * Internals of the fake CUDA driver + NVML (libcuda.so.1 / libnvidia-ml.so.1 stand-in for the tests).
 *
 * One GPU is shared by every process that names the same state file (FAKE_GPU_STATE): the device's memory,
 * its execution timeline, the process table NVML reports and the per-process SM time all live in one
 * MAP_SHARED mapping guarded by a robust process-shared mutex (a process killed with the lock held cannot
 * wedge the GPU). Without FAKE_GPU_STATE the mapping is anonymous: the process (and its fork children) get
 * a GPU of their own.
 *
 * Files, by concern:
 *   fk_shared.c    configuration, the shared mapping and its lock, the process table, dead-process reaping
 *   fk_timeline.c  the device timeline: stream queues, time-slicing between processes, events, NVML samples
 *   fk_device.c    init, device queries, contexts, error strings
 *   fk_memory.c    allocations, stream-ordered pools (trimmed at synchronisation), VMM, arrays
 *   fk_exec.c      streams, launches, copies, graphs and the host side of synchronisation
 *   fk_events.c    events: records, queries, elapsed time, cross-stream waits
 *   fk_capture.c   stream capture: modes, the "potentially unsafe call" rule, invalidation
 *   fk_procaddr.c  cuGetProcAddress (versioned names, every entry point the CUDA 12 runtime asks for)
 *   fk_nvml.c      NVML: memory, host-PID process list, utilisation samples from the timeline
 */
#ifndef FK_H
#define FK_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>

#include "../../src/driver_api.h"
#include "fake_gpu.h"

#define EXPORT __attribute__((visibility("default")))

/* ---- CUDA constants and types the fake needs beyond libvgpu's headers (public ABI values). ---- */
#ifndef CUDA_ERROR_ILLEGAL_STATE
#define CUDA_ERROR_ILLEGAL_STATE 401
#endif
#ifndef CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
#define CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED 900
#define CUDA_ERROR_STREAM_CAPTURE_INVALIDATED 901
#define CUDA_ERROR_STREAM_CAPTURE_MERGE 902
#define CUDA_ERROR_STREAM_CAPTURE_UNMATCHED 903
#define CUDA_ERROR_STREAM_CAPTURE_UNJOINED 904
#define CUDA_ERROR_STREAM_CAPTURE_ISOLATION 905
#define CUDA_ERROR_STREAM_CAPTURE_IMPLICIT 906
#define CUDA_ERROR_CAPTURED_EVENT 907
#define CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD 908
#endif
#ifndef CU_STREAM_CAPTURE_STATUS_ACTIVE
#define CU_STREAM_CAPTURE_STATUS_ACTIVE 1
#define CU_STREAM_CAPTURE_STATUS_INVALIDATED 2
#endif
#ifndef CU_STREAM_CAPTURE_MODE_GLOBAL
#define CU_STREAM_CAPTURE_MODE_GLOBAL 0
#define CU_STREAM_CAPTURE_MODE_THREAD_LOCAL 1
#define CU_STREAM_CAPTURE_MODE_RELAXED 2
#endif
#ifndef CU_STREAM_NON_BLOCKING
#define CU_STREAM_NON_BLOCKING 0x1
#endif
#ifndef CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
#define CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES 1
#endif
typedef int fk_capture_mode_t; /* CUstreamCaptureMode */

/* Entry points the fake adds (prototypes for -Wmissing-prototypes and for the scenario programs). */
CUresult cuCtxPushCurrent_v2(CUcontext c);
CUresult cuCtxPopCurrent_v2(CUcontext *c);
CUresult cuStreamCreateWithPriority(CUstream *s, unsigned int flags, int priority);
CUresult cuStreamQuery(CUstream s);
CUresult cuStreamQuery_ptsz(CUstream s);
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int flags);
CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned int flags);
CUresult cuStreamBeginCapture_v2(CUstream s, fk_capture_mode_t mode);
CUresult cuStreamEndCapture(CUstream s, CUgraph *g);
CUresult cuThreadExchangeStreamCaptureMode(fk_capture_mode_t *mode);
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes, CUstream s);
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes, CUstream s);
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream s);
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes);
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes);
CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value);
CUresult cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t n);
CUresult cuGetExportTable(const void **table, const void *id);
CUresult cuStreamBeginCapture(CUstream s);
CUresult cuStreamBeginCapture_ptsz(CUstream s);
CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, fk_capture_mode_t mode);
CUresult cuStreamEndCapture_ptsz(CUstream s, CUgraph *g);
CUresult cuStreamGetCaptureInfo(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id);
CUresult cuStreamGetCaptureInfo_v2(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                   const CUgraphNode **deps, size_t *n);
CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                        const CUgraphNode **deps, size_t *n);
CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int flags);
CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream s, unsigned int flags);
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s);
CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s);
CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s);
nvmlReturn_t nvmlInitWithFlags(unsigned int flags);
nvmlReturn_t nvmlDeviceGetCount(unsigned int *n);
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *h);

/* ---- limits of the shared state ---- */
#define FK_MAX_DEV 8
#define FK_MAX_PROC 160   /* processes with a slot on the shared GPU at once */
#define FK_MAX_STREAMS 256 /* per device, over all processes (default and per-thread streams included) */
#define FK_RING 512       /* queued operations per stream: a launch blocks when its stream's queue is full */
#define FK_MAX_EVENTS 16384 /* over all processes: libvgpu keeps a pool of events per throttled process */
#define FK_NBUCKET 64     /* NVML utilisation history: FK_NBUCKET sample periods */

enum { OP_KERNEL = 1, OP_COPY, OP_RECORD, OP_WAIT_EVENT, OP_WAIT_STREAM };

struct fk_op {
    int64_t t_enq;   /* host time of the enqueue: an operation never starts before it */
    int64_t left;    /* KERNEL/COPY: simulated ns still to run; WAIT_STREAM: sequence to wait for */
    uint64_t serial; /* RECORD/WAIT_EVENT: the event slot's serial (a reused slot is not the same event) */
    uint64_t gen;    /* RECORD/WAIT_EVENT: the record generation; WAIT_STREAM: the stream's serial */
    int32_t kind;
    int32_t arg; /* RECORD/WAIT_EVENT: event slot; WAIT_STREAM: stream slot */
};

struct fk_sstream {
    int32_t owner; /* process slot, -1: free */
    int32_t flags; /* FK_SF_* */
    int32_t destroyed;
    int32_t pad;
    uint64_t serial;
    uint64_t head, tail; /* operations [head, tail) are queued; head = number completed */
    int64_t pending_ns;  /* kernel + copy time still queued (the launch queue limit) */
    struct fk_op ring[FK_RING];
};
#define FK_SF_LEGACY 1
#define FK_SF_NONBLOCKING 2

struct fk_sevent {
    int32_t owner; /* process slot, -1: free */
    int32_t timing;
    uint64_t serial;
    uint64_t rec_gen, done_gen; /* complete when done_gen == rec_gen */
    int64_t t;                  /* device time of the last completed record */
};

struct fk_bucket {
    int64_t start; /* device time the sample period starts (a multiple of the period) */
    uint32_t busy[FK_MAX_PROC];
    int32_t host_pid[FK_MAX_PROC];
};

struct fk_sdev {
    uint64_t total, used;
    int32_t sm;
    int32_t cur;          /* process slot whose context holds the compute engine, -1: idle */
    int64_t slice_end;    /* its time slice ends here (it keeps running if nobody else is ready) */
    int64_t T;            /* the timeline has been simulated up to this device time */
    int32_t nstreams;     /* stream slots in use are below this */
    int32_t pad;
    uint64_t busy_ns, kernels;
    int64_t first_start, last_end;
    int64_t last_reap;
    struct fk_bucket buckets[FK_NBUCKET];
    struct fk_sstream streams[FK_MAX_STREAMS];
};

struct fk_sproc {
    int32_t pid;      /* the process's own getpid() (container PID); 0: free slot */
    int32_t host_pid; /* what NVML reports */
    uint64_t start_time;
    uint64_t mem[FK_MAX_DEV]; /* device memory this process holds (contexts, allocations, pool reserves) */
    int32_t ctxs[FK_MAX_DEV]; /* live contexts: NVML lists the process on devices where this is > 0 */
    uint64_t busy_ns[FK_MAX_DEV];
    uint64_t kernels[FK_MAX_DEV];
    int64_t first_start[FK_MAX_DEV], last_end[FK_MAX_DEV];
};

struct fk_shared {
    uint64_t magic;
    pthread_mutex_t mu;
    int32_t ndev;
    int32_t pad;
    int64_t timeslice_ns, sample_ns;
    uint64_t next_serial;
    struct fk_sproc procs[FK_MAX_PROC];
    struct fk_sevent events[FK_MAX_EVENTS];
    struct fk_sdev devs[FK_MAX_DEV];
};

/* ---- configuration (per process, from FAKE_* variables; the device shape comes from the state's creator) */
struct fk_config {
    int64_t wave_ns, graph_ns, queue_ns;
    uint64_t ctx_bytes, pool_gran, copy_bytes_per_us;
    int pid_offset, procaddr_alt;
    int nvml_order[FK_MAX_DEV];
    const char *procaddr_log;
};
extern struct fk_config fk_cfg;
extern struct fk_shared *fk_sh;
extern int fk_self; /* this process's slot */

/* fk_shared.c */
void fk_lock(void);   /* maps the state on first use and registers this process; takes the shared lock */
void fk_unlock(void);
int64_t fk_now(void); /* device time = CLOCK_MONOTONIC ns (see fk_timeline.c for why) */
int fk_valid_dev(int d);
int fk_phys_take(int dev, uint64_t bytes); /* locked: 0 or -1 (out of memory) */
void fk_phys_give(int dev, uint64_t bytes);
void fk_reap_locked(int force);
void fk_count_call(void);
uint64_t fk_serial(void);
extern void (*fk_on_fork_child)(void);

/* fk_timeline.c (all *_locked functions expect the shared lock) */
void fk_advance_locked(int dev);
int fk_stream_alloc_locked(int dev, int flags);
void fk_stream_release_locked(int dev, int idx);
int fk_enqueue_locked(int dev, int idx, int kind, int64_t left, int arg, uint64_t serial, uint64_t gen);
int fk_stream_idle_locked(int dev, int idx, uint64_t upto);
int64_t fk_stream_eta_locked(int dev, int idx, uint64_t upto);
void fk_drop_proc_locked(int slot);
int fk_event_alloc_locked(int timing);
void fk_event_free_locked(int idx);
void fk_wait_ns(int64_t ns);
int fk_samples_locked(int dev, uint64_t last_seen_us, nvmlProcessUtilizationSample_t *out, unsigned int cap);
unsigned int fk_device_util_locked(int dev);

/* fk_device.c: contexts */
struct fk_ctx {
    int dev;
    int primary;
    int alive;
    uint64_t footprint;
};
struct fk_ctx *fk_cur_ctx(void);

/* The current context as `c`, or the driver's answer when the thread has none. */
#define NEED_CTX(c)                                                                                          \
    struct fk_ctx *c = fk_cur_ctx();                                                                         \
    if (c == NULL) return CUDA_ERROR_INVALID_CONTEXT

void fk_ctx_reset_after_fork(void);

/* fk_memory.c */
void fk_pools_trim_at_sync(int dev); /* the release threshold rule, applied by every synchronisation */
void fk_ctx_free_allocs(struct fk_ctx *c);
void fk_memory_reset_after_fork(void);

/* fk_exec.c: streams as the process sees them */
struct fk_capture;
struct fk_stream {
    int dev;
    int idx; /* slot in the device's shared stream table */
    int flags;
    int legacy, per_thread;
    struct fk_capture *cap; /* the capture sequence this stream belongs to, if any */
    int cap_unjoined;       /* forked into a capture and not yet joined back into its origin stream */
};
struct fk_stream *fk_resolve_stream(CUstream s, int ptsz, int dev, CUresult *err);
/* Queues one operation (legacy-stream dependencies added, blocking while the stream is full); returns its
 * number on the stream. */
uint64_t fk_submit(struct fk_stream *st, int kind, int64_t left, int arg, uint64_t serial, uint64_t gen);
void fk_wait_streams(int dev, int n, const int *idx, const uint64_t *upto); /* until each has passed upto[i] */
void fk_exec_reset_after_fork(void);

/* fk_capture.c */
struct fk_capture {
    uint64_t id;
    int mode;
    pthread_t thread;
    int invalidated;
    int ended;
    int64_t kernel_ns; /* captured kernel nodes, run one after another when the graph is launched */
    int nodes;
    struct fk_stream *origin;
};
struct fk_graph {
    int64_t ns;
    int nodes;
};
extern pthread_mutex_t fk_local_mu;
CUresult fk_check_unsafe(struct fk_stream *target); /* 0 or the error of a call not allowed during capture */
CUresult fk_capture_enqueue(struct fk_stream *st, int kind, int64_t ns, CUresult *handled);
int fk_any_capture_on_dev(int dev, int blocking_only);
void fk_capture_invalidate_legacy_dependents(int dev);
/* cuStreamWaitEvent on st of an event last recorded in ev_cap (on ev_stream): fork/join or isolation. */
CUresult fk_capture_wait(struct fk_stream *st, struct fk_capture *ev_cap, struct fk_stream *ev_stream, int *handled);
void fk_capture_reset_after_fork(void);

/* fk_device.c */
void fk_uuid_bytes(int dev, CUuuid *u);

/* Entry points handed out by cuGetProcAddress at addresses other than the exports (FAKE_PROCADDR_ALT=1). */
CUresult fk_alt_cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p, void **e);
CUresult fk_alt_cuMemAlloc_v2(CUdeviceptr *p, size_t bytes);
CUresult fk_alt_cuMemFree_v2(CUdeviceptr p);
CUresult fk_alt_cuMemGetInfo_v2(size_t *f, size_t *t);
CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b);

/* fk_procaddr.c */
const char *fk_known_api(const char *name, int ver, int *min_ver);

#endif
