/*
 * Stream capture as the driver documents it.
 *
 * Capture modes (cuStreamBeginCapture_v2's mode, and each thread's own mode, swapped with
 * cuThreadExchangeStreamCaptureMode; a thread starts in GLOBAL):
 *   - a thread whose mode is RELAXED may make any call;
 *   - otherwise a "potentially unsafe" call (fk_check_unsafe) is refused with
 *     CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (900) when the thread itself has a capture in progress that was
 *     not begun RELAXED, or when the thread's mode is GLOBAL and another thread has a GLOBAL capture in
 *     progress. The capture that made the call illegal is invalidated: later work on it fails with
 *     CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (901), and so does cuStreamEndCapture (no graph).
 * Unsafe calls here: synchronous allocation and free (cuMemAlloc*, cuMemFree_v2), cuMemcpy*(sync),
 * cuEventQuery, cuEventSynchronize, cuStreamQuery, cuStreamSynchronize, cuCtxSynchronize.
 * Other rules: synchronising or querying the capturing stream itself is 900 in any mode (and invalidates);
 * work on the legacy NULL stream while a blocking stream of the context captures is
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT (906, invalidates); cuStreamIsCapturing on the legacy stream then
 * answers 906 without invalidating; querying or synchronising an event last recorded in a capture is
 * CUDA_ERROR_CAPTURED_EVENT (907); a capturing stream waiting on an event recorded outside the capture is
 * CUDA_ERROR_STREAM_CAPTURE_ISOLATION (905); ending a capture from another thread than the one that began it
 * (unless RELAXED) is CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD (908); ending it on a stream that did not begin
 * it is CUDA_ERROR_STREAM_CAPTURE_UNMATCHED (903); a stream forked into the capture and not joined back is
 * CUDA_ERROR_STREAM_CAPTURE_UNJOINED (904) at the end.
 */
#include <stdlib.h>
#include <string.h>

#include "fk.h"

#define MAX_CAPTURES 64
#define MAX_MEMBERS 16

static struct fk_capture *active[MAX_CAPTURES];
static struct fk_stream *members[MAX_CAPTURES][MAX_MEMBERS];
static uint64_t next_id;
static __thread int tls_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

static int slot_of(const struct fk_capture *c) {
    for (int i = 0; i < MAX_CAPTURES; i++)
        if (active[i] == c) return i;
    return -1;
}

CUresult fk_check_unsafe(struct fk_stream *target) {
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&fk_local_mu);
    if (target != NULL && target->cap != NULL) { /* the capturing stream itself: never */
        target->cap->invalidated = 1;
        r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    }
    if (tls_mode != CU_STREAM_CAPTURE_MODE_RELAXED) {
        pthread_t self = pthread_self();
        for (int i = 0; i < MAX_CAPTURES; i++) {
            struct fk_capture *c = active[i];
            if (c == NULL) continue;
            int own = pthread_equal(c->thread, self);
            if ((own && c->mode != CU_STREAM_CAPTURE_MODE_RELAXED) ||
                (!own && tls_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL)) {
                c->invalidated = 1;
                r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
            }
        }
    }
    pthread_mutex_unlock(&fk_local_mu);
    return r;
}

int fk_any_capture_on_dev(int dev, int blocking_only) {
    int any = 0;
    pthread_mutex_lock(&fk_local_mu);
    for (int i = 0; i < MAX_CAPTURES && !any; i++)
        for (int m = 0; active[i] != NULL && m < MAX_MEMBERS; m++) {
            struct fk_stream *s = members[i][m];
            if (s != NULL && s->dev == dev && !(blocking_only && (s->flags & CU_STREAM_NON_BLOCKING))) any = 1;
        }
    pthread_mutex_unlock(&fk_local_mu);
    return any;
}

void fk_capture_invalidate_legacy_dependents(int dev) {
    pthread_mutex_lock(&fk_local_mu);
    for (int i = 0; i < MAX_CAPTURES; i++)
        for (int m = 0; active[i] != NULL && m < MAX_MEMBERS; m++) {
            struct fk_stream *s = members[i][m];
            if (s != NULL && s->dev == dev && !(s->flags & CU_STREAM_NON_BLOCKING)) active[i]->invalidated = 1;
        }
    pthread_mutex_unlock(&fk_local_mu);
}

/* Work submitted to a stream: captured as a node, refused, or (handled = 0) left to run on the device. */
CUresult fk_capture_enqueue(struct fk_stream *st, int kind, int64_t ns, CUresult *handled) {
    *handled = 0;
    if (st->legacy && fk_any_capture_on_dev(st->dev, 1)) {
        fk_capture_invalidate_legacy_dependents(st->dev);
        *handled = 1;
        return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    }
    pthread_mutex_lock(&fk_local_mu);
    struct fk_capture *c = st->cap;
    CUresult r = CUDA_SUCCESS;
    if (c != NULL) {
        *handled = 1;
        if (c->invalidated) {
            r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        } else if (kind == OP_KERNEL) {
            c->kernel_ns += ns;
            c->nodes++;
            if (st != c->origin) st->cap_unjoined = 1;
        } else {
            c->nodes++; /* copies and other nodes: not kernel time */
            if (st != c->origin) st->cap_unjoined = 1;
        }
    }
    pthread_mutex_unlock(&fk_local_mu);
    return r;
}

/* cuStreamWaitEvent on a stream: joins it into the event's capture, or checks isolation. */
CUresult fk_capture_wait(struct fk_stream *st, struct fk_capture *ev_cap, struct fk_stream *ev_stream, int *handled) {
    *handled = 0;
    pthread_mutex_lock(&fk_local_mu);
    CUresult r = CUDA_SUCCESS;
    if (ev_cap != NULL && slot_of(ev_cap) < 0) ev_cap = NULL; /* that capture has ended */
    if (ev_cap != NULL) {
        *handled = 1;
        if (ev_cap->invalidated) {
            r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        } else if (st->cap == NULL) { /* fork: the stream joins the capture */
            int i = slot_of(ev_cap), m = 0;
            while (m < MAX_MEMBERS && members[i][m] != NULL) m++;
            if (m == MAX_MEMBERS) {
                r = CUDA_ERROR_NOT_SUPPORTED;
            } else {
                members[i][m] = st;
                st->cap = ev_cap;
                st->cap_unjoined = 1;
            }
        } else if (st->cap != ev_cap) {
            st->cap->invalidated = ev_cap->invalidated = 1;
            r = CUDA_ERROR_STREAM_CAPTURE_MERGE;
        } else if (ev_stream != NULL && ev_stream != st) {
            ev_stream->cap_unjoined = 0; /* joined back */
        }
    } else if (st->cap != NULL) {
        *handled = 1;
        st->cap->invalidated = 1;
        r = CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
    }
    pthread_mutex_unlock(&fk_local_mu);
    return r;
}

static CUresult begin(CUstream s, int ptsz, int mode) {
    struct fk_ctx *ctx = fk_cur_ctx();
    if (ctx == NULL) return CUDA_ERROR_INVALID_CONTEXT;
    if (mode < CU_STREAM_CAPTURE_MODE_GLOBAL || mode > CU_STREAM_CAPTURE_MODE_RELAXED) return CUDA_ERROR_INVALID_VALUE;
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(s, ptsz, ctx->dev, &err);
    if (st == NULL) return err;
    if (st->legacy) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    pthread_mutex_lock(&fk_local_mu);
    int i = slot_of(NULL);
    if (st->cap != NULL || i < 0) {
        pthread_mutex_unlock(&fk_local_mu);
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    struct fk_capture *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        pthread_mutex_unlock(&fk_local_mu);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    c->id = ++next_id;
    c->mode = mode;
    c->thread = pthread_self();
    c->origin = st;
    active[i] = c;
    memset(members[i], 0, sizeof(members[i]));
    members[i][0] = st;
    st->cap = c;
    st->cap_unjoined = 0;
    pthread_mutex_unlock(&fk_local_mu);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamBeginCapture(CUstream s) { fk_count_call(); return begin(s, 0, CU_STREAM_CAPTURE_MODE_GLOBAL); }
EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream s) { fk_count_call(); return begin(s, 1, CU_STREAM_CAPTURE_MODE_GLOBAL); }
EXPORT CUresult cuStreamBeginCapture_v2(CUstream s, fk_capture_mode_t mode) { fk_count_call(); return begin(s, 0, mode); }
EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream s, fk_capture_mode_t mode) { fk_count_call(); return begin(s, 1, mode); }

static CUresult end(CUstream s, int ptsz, CUgraph *g) {
    struct fk_ctx *ctx = fk_cur_ctx();
    if (ctx == NULL) return CUDA_ERROR_INVALID_CONTEXT;
    if (g == NULL) return CUDA_ERROR_INVALID_VALUE;
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(s, ptsz, ctx->dev, &err);
    if (st == NULL) return err;
    pthread_mutex_lock(&fk_local_mu);
    struct fk_capture *c = st->cap;
    CUresult r = CUDA_SUCCESS;
    if (c == NULL) {
        r = CUDA_ERROR_ILLEGAL_STATE;
    } else if (st != c->origin) {
        c->invalidated = 1;
        r = CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    } else if (c->mode != CU_STREAM_CAPTURE_MODE_RELAXED && !pthread_equal(c->thread, pthread_self())) {
        r = CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    }
    if (r != CUDA_SUCCESS) {
        pthread_mutex_unlock(&fk_local_mu);
        return r;
    }
    int i = slot_of(c), unjoined = 0;
    for (int m = 0; m < MAX_MEMBERS; m++) {
        struct fk_stream *ms = members[i][m];
        if (ms == NULL) continue;
        unjoined |= ms != c->origin && ms->cap_unjoined;
        ms->cap = NULL;
        ms->cap_unjoined = 0;
        members[i][m] = NULL;
    }
    active[i] = NULL;
    *g = NULL;
    if (c->invalidated) {
        r = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else if (unjoined) {
        r = CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
    } else {
        struct fk_graph *graph = calloc(1, sizeof(*graph));
        if (graph == NULL) {
            r = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            graph->ns = c->kernel_ns;
            graph->nodes = c->nodes;
            *g = (CUgraph)graph;
        }
    }
    free(c); /* events recorded in it keep a stale pointer: slot_of() no longer finds it */
    pthread_mutex_unlock(&fk_local_mu);
    return r;
}

EXPORT CUresult cuStreamEndCapture(CUstream s, CUgraph *g) { fk_count_call(); return end(s, 0, g); }
EXPORT CUresult cuStreamEndCapture_ptsz(CUstream s, CUgraph *g) { fk_count_call(); return end(s, 1, g); }

EXPORT CUresult cuThreadExchangeStreamCaptureMode(fk_capture_mode_t *mode) {
    fk_count_call();
    if (mode == NULL || *mode < CU_STREAM_CAPTURE_MODE_GLOBAL || *mode > CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    int old = tls_mode;
    tls_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

static CUresult is_capturing(CUstream s, int ptsz, CUstreamCaptureStatus *status, uint64_t *id) {
    struct fk_ctx *ctx = fk_cur_ctx();
    if (ctx == NULL) return CUDA_ERROR_INVALID_CONTEXT;
    if (status == NULL) return CUDA_ERROR_INVALID_VALUE;
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(s, ptsz, ctx->dev, &err);
    if (st == NULL) return err;
    if (st->legacy && fk_any_capture_on_dev(st->dev, 1)) return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    pthread_mutex_lock(&fk_local_mu);
    struct fk_capture *c = st->cap;
    *status = c == NULL ? CU_STREAM_CAPTURE_STATUS_NONE
              : c->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (id != NULL && c != NULL) *id = c->id;
    pthread_mutex_unlock(&fk_local_mu);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus *st) { fk_count_call(); return is_capturing(s, 0, st, NULL); }
EXPORT CUresult cuStreamIsCapturing_ptsz(CUstream s, CUstreamCaptureStatus *st) {
    fk_count_call();
    return is_capturing(s, 1, st, NULL);
}

static CUresult capture_info(CUstream s, int ptsz, CUstreamCaptureStatus *status, cuuint64_t *id, CUgraph *graph,
                             const CUgraphNode **deps, size_t *ndeps) {
    uint64_t cid = 0;
    CUresult r = is_capturing(s, ptsz, status, &cid);
    if (r != CUDA_SUCCESS) return r;
    if (id != NULL && *status != CU_STREAM_CAPTURE_STATUS_NONE) *id = cid;
    if (graph != NULL) *graph = NULL; /* the graph under construction is not exposed by the fake */
    if (deps != NULL) *deps = NULL;
    if (ndeps != NULL) *ndeps = 0;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamGetCaptureInfo_v2(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                          const CUgraphNode **deps, size_t *n) {
    fk_count_call();
    return capture_info(s, 0, st, id, g, deps, n);
}
EXPORT CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id, CUgraph *g,
                                               const CUgraphNode **deps, size_t *n) {
    fk_count_call();
    return capture_info(s, 1, st, id, g, deps, n);
}
EXPORT CUresult cuStreamGetCaptureInfo(CUstream s, CUstreamCaptureStatus *st, cuuint64_t *id) {
    fk_count_call();
    return capture_info(s, 0, st, id, NULL, NULL, NULL);
}

void fk_capture_reset_after_fork(void) {
    memset(active, 0, sizeof(active));
    memset(members, 0, sizeof(members));
}
