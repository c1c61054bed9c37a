/*
 * Streams, events, kernel launches, copies and graphs: the host side of the device timeline (fk_timeline.c).
 *
 * Stream semantics: the legacy default stream (NULL / CU_STREAM_LEGACY) waits for all work queued before on
 * the context's blocking streams, and they wait for work queued before on it; CU_STREAM_NON_BLOCKING streams
 * do neither. The per-thread default stream (_ptsz entry points, CU_STREAM_PER_THREAD) is one blocking
 * stream per thread. A launch blocks while its stream has more than FAKE_QUEUE_MS of work queued, or a full
 * queue. Every stream, event and context synchronisation trims the process's pools (fk_memory.c).
 * Events are in fk_events.c.
 */
#include <stdlib.h>
#include <string.h>

#include "fk.h"



static struct fk_stream *legacy[FK_MAX_DEV];
static __thread struct fk_stream *per_thread[FK_MAX_DEV];

void fk_exec_reset_after_fork(void) {
    memset(legacy, 0, sizeof(legacy));
    memset(per_thread, 0, sizeof(per_thread));
    fk_capture_reset_after_fork();
}

static void reset_after_fork(void) {
    fk_ctx_reset_after_fork();
    fk_memory_reset_after_fork();
    fk_exec_reset_after_fork();
}

__attribute__((constructor)) static void install_fork_reset(void) { fk_on_fork_child = reset_after_fork; }

static struct fk_stream *new_stream(int dev, int flags, int is_legacy, int is_pt) {
    struct fk_stream *st = calloc(1, sizeof(*st));
    if (st == NULL) return NULL;
    fk_lock();
    int idx = fk_stream_alloc_locked(dev, (is_legacy ? FK_SF_LEGACY : 0) |
                                              ((flags & CU_STREAM_NON_BLOCKING) ? FK_SF_NONBLOCKING : 0));
    fk_unlock();
    if (idx < 0) {
        free(st);
        return NULL;
    }
    st->dev = dev;
    st->idx = idx;
    st->flags = flags;
    st->legacy = is_legacy;
    st->per_thread = is_pt;
    return st;
}

struct fk_stream *fk_resolve_stream(CUstream s, int ptsz, int dev, CUresult *err) {
    *err = CUDA_ERROR_OUT_OF_MEMORY;
    if ((s == NULL && ptsz) || s == CU_STREAM_PER_THREAD) {
        if (per_thread[dev] == NULL) per_thread[dev] = new_stream(dev, 0, 0, 1);
        return per_thread[dev];
    }
    if (s == NULL || s == CU_STREAM_LEGACY) {
        pthread_mutex_lock(&fk_local_mu);
        if (legacy[dev] == NULL) legacy[dev] = new_stream(dev, 0, 1, 0);
        struct fk_stream *st = legacy[dev];
        pthread_mutex_unlock(&fk_local_mu);
        return st;
    }
    return (struct fk_stream *)s;
}

/* Queues one operation, with the legacy stream's implicit dependencies, blocking while the queue is full.
 * Returns the operation's number on its stream (the stream has completed it when its head passes it). */
uint64_t fk_submit(struct fk_stream *st, int kind, int64_t left, int arg, uint64_t serial, uint64_t gen) {
    int dev = st->dev;
    for (;;) {
        fk_lock();
        fk_advance_locked(dev);
        struct fk_sdev *d = &fk_sh->devs[dev];
        struct fk_sstream *s = &d->streams[st->idx];
        int deps[FK_MAX_STREAMS], ndeps = 0;
        if (!(st->flags & CU_STREAM_NON_BLOCKING)) {
            for (int i = 0; i < d->nstreams; i++) {
                struct fk_sstream *o = &d->streams[i];
                if (i == st->idx || o->owner != fk_self || o->head >= o->tail || (o->flags & FK_SF_NONBLOCKING)) continue;
                if (st->legacy || (o->flags & FK_SF_LEGACY)) deps[ndeps++] = i;
            }
        }
        int full = s->tail - s->head + (uint64_t)ndeps + 1 > FK_RING ||
                   ((kind == OP_KERNEL || kind == OP_COPY) && s->pending_ns > fk_cfg.queue_ns);
        if (!full) {
            for (int k = 0; k < ndeps; k++) {
                struct fk_sstream *o = &d->streams[deps[k]];
                fk_enqueue_locked(dev, st->idx, OP_WAIT_STREAM, (int64_t)o->tail, deps[k], 0, o->serial);
            }
            uint64_t seq = s->tail;
            fk_enqueue_locked(dev, st->idx, kind, left, arg, serial, gen);
            if (kind == OP_KERNEL) {
                d->kernels++;
                fk_sh->procs[fk_self].kernels[dev]++;
            }
            fk_unlock();
            return seq;
        }
        int64_t wait = s->pending_ns - fk_cfg.queue_ns;
        if (wait <= 0) wait = fk_stream_eta_locked(dev, st->idx, s->head + 1);
        fk_unlock();
        fk_wait_ns(wait);
    }
}

/* Blocks until each stream idx[i] has completed its operations below upto[i]. */
void fk_wait_streams(int dev, int n, const int *idx, const uint64_t *upto) {
    for (;;) {
        fk_lock();
        fk_advance_locked(dev);
        int64_t eta = 0;
        int done = 1;
        for (int i = 0; i < n; i++) {
            if (fk_stream_idle_locked(dev, idx[i], upto[i])) continue;
            done = 0;
            int64_t e = fk_stream_eta_locked(dev, idx[i], upto[i]);
            if (e > eta) eta = e;
        }
        fk_unlock();
        if (done) return;
        fk_wait_ns(eta);
    }
}

/* Every stream of this process on dev that `st` orders after (all blocking ones for the legacy stream). */
static int snapshot(struct fk_stream *st, int all, int *idx, uint64_t *upto) {
    int n = 0;
    fk_lock();
    struct fk_sdev *d = &fk_sh->devs[st != NULL ? st->dev : 0];
    for (int i = 0; i < d->nstreams; i++) {
        struct fk_sstream *o = &d->streams[i];
        if (o->owner != fk_self) continue;
        int take = all || i == st->idx || (st->legacy && !(o->flags & FK_SF_NONBLOCKING));
        if (take) {
            idx[n] = i;
            upto[n++] = o->tail;
        }
    }
    fk_unlock();
    return n;
}

/* ------------------------------------------------------------------ streams */

static CUresult stream_create(CUstream *s, unsigned int flags) {
    NEED_CTX(c);
    if (s == NULL || (flags & ~(unsigned int)CU_STREAM_NON_BLOCKING) != 0) return CUDA_ERROR_INVALID_VALUE;
    struct fk_stream *st = new_stream(c->dev, (int)flags, 0, 0);
    if (st == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    *s = (CUstream)st;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamCreate(CUstream *s, unsigned int flags) { fk_count_call(); return stream_create(s, flags); }
EXPORT CUresult cuStreamCreateWithPriority(CUstream *s, unsigned int flags, int priority) {
    fk_count_call();
    (void)priority;
    return stream_create(s, flags);
}

EXPORT CUresult cuStreamDestroy_v2(CUstream s) {
    fk_count_call();
    if (s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD) return CUDA_ERROR_INVALID_HANDLE;
    struct fk_stream *st = (struct fk_stream *)s;
    fk_lock();
    fk_stream_release_locked(st->dev, st->idx);
    fk_unlock();
    free(st);
    return CUDA_SUCCESS;
}

/* The stream a sync or a query waits on, once the call is allowed (a context, a stream, not unsafe now). */
static CUresult waitable_stream(CUstream s, int ptsz, struct fk_stream **out) {
    NEED_CTX(c);
    CUresult err;
    *out = fk_resolve_stream(s, ptsz, c->dev, &err);
    if (*out == NULL) return err;
    return fk_check_unsafe(*out);
}

static CUresult stream_sync(CUstream s, int ptsz) {
    struct fk_stream *st;
    CUresult r = waitable_stream(s, ptsz, &st);
    if (r != CUDA_SUCCESS) return r;
    int idx[FK_MAX_STREAMS];
    uint64_t upto[FK_MAX_STREAMS];
    int n = snapshot(st, 0, idx, upto);
    fk_wait_streams(st->dev, n, idx, upto);
    fk_pools_trim_at_sync(st->dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamSynchronize(CUstream s) { fk_count_call(); return stream_sync(s, 0); }
EXPORT CUresult cuStreamSynchronize_ptsz(CUstream s) { fk_count_call(); return stream_sync(s, 1); }

static CUresult stream_query(CUstream s, int ptsz) {
    struct fk_stream *st;
    CUresult r = waitable_stream(s, ptsz, &st);
    if (r != CUDA_SUCCESS) return r;
    int idx[FK_MAX_STREAMS];
    uint64_t upto[FK_MAX_STREAMS];
    int n = snapshot(st, 0, idx, upto), done = 1;
    fk_lock();
    fk_advance_locked(st->dev);
    for (int i = 0; i < n; i++) done &= fk_stream_idle_locked(st->dev, idx[i], upto[i]);
    fk_unlock();
    return done ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuStreamQuery(CUstream s) { fk_count_call(); return stream_query(s, 0); }
EXPORT CUresult cuStreamQuery_ptsz(CUstream s) { fk_count_call(); return stream_query(s, 1); }

EXPORT CUresult cuCtxSynchronize(void) {
    fk_count_call();
    NEED_CTX(c);
    CUresult r = fk_check_unsafe(NULL);
    if (r != CUDA_SUCCESS) return r;
    int idx[FK_MAX_STREAMS];
    uint64_t upto[FK_MAX_STREAMS];
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(NULL, 0, c->dev, &err);
    if (st == NULL) return err;
    int n = snapshot(st, 1, idx, upto);
    fk_wait_streams(c->dev, n, idx, upto);
    fk_pools_trim_at_sync(c->dev);
    return CUDA_SUCCESS;
}

/* ------------------------------------------------------------------ work: kernels, copies, graphs */

static CUresult run_work(CUstream s, int ptsz, int kind, int64_t ns) {
    NEED_CTX(c);
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(s, ptsz, c->dev, &err);
    if (st == NULL) return err;
    CUresult handled;
    CUresult r = fk_capture_enqueue(st, kind, ns, &handled);
    if (handled) return r;
    fk_submit(st, kind, ns, 0, 0, 0);
    return CUDA_SUCCESS;
}

static int64_t kernel_ns(int dev, unsigned int gx, unsigned int gy, unsigned int gz) {
    uint64_t blocks = (uint64_t)(gx ? gx : 1) * (gy ? gy : 1) * (gz ? gz : 1);
    uint64_t sm = (uint64_t)fk_sh->devs[dev].sm;
    return (int64_t)((blocks + sm - 1) / sm) * fk_cfg.wave_ns;
}

static CUresult launch(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, CUstream s, int ptsz) {
    NEED_CTX(c);
    if (f == NULL) return CUDA_ERROR_INVALID_HANDLE;
    return run_work(s, ptsz, OP_KERNEL, kernel_ns(c->dev, gx, gy, gz));
}

EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p, void **e) {
    fk_count_call();
    (void)bx, (void)by, (void)bz, (void)sh, (void)p, (void)e;
    return launch(f, gx, gy, gz, s, 0);
}

CUresult fk_alt_cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                               unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p, void **e) {
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, sh, s, p, e);
}

EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int sh, CUstream s, void **p,
                                    void **e) {
    fk_count_call();
    (void)bx, (void)by, (void)bz, (void)sh, (void)p, (void)e;
    return launch(f, gx, gy, gz, s, 1);
}

EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *cfg, CUfunction f, void **p, void **e) {
    fk_count_call();
    (void)p, (void)e;
    if (cfg == NULL) return CUDA_ERROR_INVALID_VALUE;
    return launch(f, cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ, cfg->hStream, 0);
}

EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *cfg, CUfunction f, void **p, void **e) {
    fk_count_call();
    (void)p, (void)e;
    if (cfg == NULL) return CUDA_ERROR_INVALID_VALUE;
    return launch(f, cfg->gridDimX, cfg->gridDimY, cfg->gridDimZ, cfg->hStream, 1);
}

EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                          unsigned int bx, unsigned int by, unsigned int bz, unsigned int sh,
                                          CUstream s, void **p) {
    fk_count_call();
    (void)bx, (void)by, (void)bz, (void)sh, (void)p;
    return launch(f, gx, gy, gz, s, 0);
}

EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz, unsigned int sh,
                                               CUstream s, void **p) {
    fk_count_call();
    (void)bx, (void)by, (void)bz, (void)sh, (void)p;
    return launch(f, gx, gy, gz, s, 1);
}

static int64_t copy_ns(size_t bytes) { return (int64_t)((uint64_t)bytes * 1000 / fk_cfg.copy_bytes_per_us); }

EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
    fk_count_call();
    (void)dst, (void)src;
    return run_work(s, 0, OP_COPY, copy_ns(n));
}
EXPORT CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
    fk_count_call();
    (void)dst, (void)src;
    return run_work(s, 1, OP_COPY, copy_ns(n));
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
    fk_count_call();
    (void)dst, (void)src;
    return run_work(s, 0, OP_COPY, copy_ns(n));
}
EXPORT CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s) {
    fk_count_call();
    (void)dst, (void)src;
    return run_work(s, 1, OP_COPY, copy_ns(n));
}
EXPORT CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    fk_count_call();
    (void)dst, (void)src;
    return run_work(s, 0, OP_COPY, copy_ns(n));
}
EXPORT CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    fk_count_call();
    (void)dst, (void)src;
    return run_work(s, 1, OP_COPY, copy_ns(n));
}

/* Synchronous copies: on the legacy stream, returning when done (so not allowed during capture). */
static CUresult copy_sync(size_t n) {
    NEED_CTX(c);
    CUresult r = fk_check_unsafe(NULL);
    if (r != CUDA_SUCCESS) return r;
    r = run_work(NULL, 0, OP_COPY, copy_ns(n));
    if (r != CUDA_SUCCESS) return r;
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(NULL, 0, c->dev, &err);
    int idx[FK_MAX_STREAMS];
    uint64_t upto[FK_MAX_STREAMS];
    int cnt = snapshot(st, 0, idx, upto);
    fk_wait_streams(c->dev, cnt, idx, upto);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    fk_count_call();
    (void)dst, (void)src;
    return copy_sync(n);
}
EXPORT CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    fk_count_call();
    (void)dst, (void)src;
    return copy_sync(n);
}

EXPORT CUresult cuGraphCreate(CUgraph *g, unsigned int flags) {
    fk_count_call();
    (void)flags;
    if (g == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_graph *gr = calloc(1, sizeof(*gr));
    if (gr == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    gr->ns = fk_cfg.graph_ns; /* a stand-in workload: the fake has no node API */
    *g = (CUgraph)gr;
    return CUDA_SUCCESS;
}

static CUresult instantiate(CUgraphExec *e, CUgraph g) {
    if (e == NULL || g == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_graph *x = malloc(sizeof(*x));
    if (x == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    *x = *(struct fk_graph *)g;
    *e = (CUgraphExec)x;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *e, CUgraph g, unsigned long long flags) {
    fk_count_call();
    (void)flags;
    return instantiate(e, g);
}
EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *e, CUgraph g, CUgraphNode *err, char *log, size_t n) {
    fk_count_call();
    (void)err, (void)log, (void)n;
    return instantiate(e, g);
}

static CUresult graph_launch(CUgraphExec e, CUstream s, int ptsz) {
    if (e == NULL) return CUDA_ERROR_INVALID_HANDLE;
    return run_work(s, ptsz, OP_KERNEL, ((struct fk_graph *)e)->ns);
}

EXPORT CUresult cuGraphLaunch(CUgraphExec e, CUstream s) { fk_count_call(); return graph_launch(e, s, 0); }
EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec e, CUstream s) { fk_count_call(); return graph_launch(e, s, 1); }

EXPORT CUresult cuGraphExecDestroy(CUgraphExec e) {
    fk_count_call();
    free(e);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuGraphDestroy(CUgraph g) {
    fk_count_call();
    free(g);
    return CUDA_SUCCESS;
}
