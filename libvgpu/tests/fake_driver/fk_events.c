/*
 * Events: records on the device timeline (fk_timeline.c stamps them in the recording process's own time
 * slice), queries, host synchronisation, elapsed time, and cross-stream waits (cuStreamWaitEvent), with the
 * capture rules of fk_capture.c for events recorded inside a capture.
 */
#include <stdlib.h>
#include <string.h>

#include "fk.h"


struct fk_event_h {
    int idx;
    int dev;
    uint64_t serial;
    struct fk_capture *cap;       /* last recorded in this capture (the pointer is only compared) */
    struct fk_stream *cap_stream; /* on this capturing stream */
    int rec_stream;               /* last recorded (outside capture) on this stream slot... */
    uint64_t rec_seq;             /* ...as its operation number rec_seq */
};

/* ------------------------------------------------------------------ events */

EXPORT CUresult cuEventCreate(CUevent *e, unsigned int flags) {
    fk_count_call();
    NEED_CTX(c);
    if (e == NULL) return CUDA_ERROR_INVALID_VALUE;
    struct fk_event_h *ev = calloc(1, sizeof(*ev));
    if (ev == NULL) return CUDA_ERROR_OUT_OF_MEMORY;
    fk_lock();
    ev->idx = fk_event_alloc_locked(!(flags & CU_EVENT_DISABLE_TIMING));
    if (ev->idx >= 0) ev->serial = fk_sh->events[ev->idx].serial;
    fk_unlock();
    if (ev->idx < 0) {
        free(ev);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    ev->dev = c->dev;
    ev->rec_stream = -1;
    *e = (CUevent)ev;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventDestroy_v2(CUevent e) {
    fk_count_call();
    struct fk_event_h *ev = (struct fk_event_h *)e;
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    fk_lock();
    fk_event_free_locked(ev->idx);
    fk_unlock();
    free(ev);
    return CUDA_SUCCESS;
}

static CUresult event_record(CUevent e, CUstream s, int ptsz) {
    NEED_CTX(c);
    struct fk_event_h *ev = (struct fk_event_h *)e;
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(s, ptsz, c->dev, &err);
    if (st == NULL) return err;
    CUresult handled;
    CUresult r = fk_capture_enqueue(st, OP_RECORD, 0, &handled);
    if (handled) {
        if (r == CUDA_SUCCESS) {
            ev->cap = st->cap; /* a captured event: an event record node of that capture */
            ev->cap_stream = st;
        }
        return r;
    }
    if (st->cap != NULL) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    ev->cap = NULL;
    ev->cap_stream = NULL;
    fk_lock();
    uint64_t gen = ++fk_sh->events[ev->idx].rec_gen;
    fk_unlock();
    ev->rec_seq = fk_submit(st, OP_RECORD, 0, ev->idx, ev->serial, gen);
    ev->rec_stream = st->idx;
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventRecord(CUevent e, CUstream s) { fk_count_call(); return event_record(e, s, 0); }
EXPORT CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { fk_count_call(); return event_record(e, s, 1); }
EXPORT CUresult cuEventRecordWithFlags(CUevent e, CUstream s, unsigned int flags) {
    fk_count_call();
    (void)flags;
    return event_record(e, s, 0);
}
EXPORT CUresult cuEventRecordWithFlags_ptsz(CUevent e, CUstream s, unsigned int flags) {
    fk_count_call();
    (void)flags;
    return event_record(e, s, 1);
}

static int captured(const struct fk_event_h *ev) { return ev->cap != NULL; }

/* What a query or a wait on `ev` must pass first: a handle, not recorded in a capture, not unsafe now. */
static CUresult event_wait_allowed(const struct fk_event_h *ev) {
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    if (captured(ev)) return CUDA_ERROR_CAPTURED_EVENT;
    return fk_check_unsafe(NULL);
}

EXPORT CUresult cuEventQuery(CUevent e) {
    fk_count_call();
    struct fk_event_h *ev = (struct fk_event_h *)e;
    CUresult r = event_wait_allowed(ev);
    if (r != CUDA_SUCCESS) return r;
    fk_lock();
    fk_advance_locked(ev->dev);
    const struct fk_sevent *se = &fk_sh->events[ev->idx];
    int done = se->done_gen == se->rec_gen;
    fk_unlock();
    return done ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

EXPORT CUresult cuEventSynchronize(CUevent e) {
    fk_count_call();
    struct fk_event_h *ev = (struct fk_event_h *)e;
    CUresult r = event_wait_allowed(ev);
    if (r != CUDA_SUCCESS) return r;
    if (ev->rec_stream >= 0) {
        int idx = ev->rec_stream;
        uint64_t upto = ev->rec_seq + 1;
        fk_wait_streams(ev->dev, 1, &idx, &upto);
    }
    fk_pools_trim_at_sync(ev->dev);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuEventElapsedTime(float *ms, CUevent a, CUevent b) {
    fk_count_call();
    struct fk_event_h *x = (struct fk_event_h *)a, *y = (struct fk_event_h *)b;
    if (ms == NULL || x == NULL || y == NULL) return CUDA_ERROR_INVALID_HANDLE;
    if (captured(x) || captured(y)) return CUDA_ERROR_CAPTURED_EVENT;
    fk_lock();
    fk_advance_locked(x->dev);
    if (y->dev != x->dev) fk_advance_locked(y->dev);
    const struct fk_sevent *ex = &fk_sh->events[x->idx], *ey = &fk_sh->events[y->idx];
    CUresult r = CUDA_SUCCESS;
    if (!ex->timing || !ey->timing || ex->rec_gen == 0 || ey->rec_gen == 0)
        r = CUDA_ERROR_INVALID_HANDLE;
    else if (ex->done_gen != ex->rec_gen || ey->done_gen != ey->rec_gen)
        r = CUDA_ERROR_NOT_READY;
    else
        *ms = (float)((double)(ey->t - ex->t) / 1e6);
    fk_unlock();
    return r;
}

EXPORT CUresult cuEventElapsedTime_v2(float *ms, CUevent a, CUevent b) { return cuEventElapsedTime(ms, a, b); }

static CUresult stream_wait_event(CUstream s, CUevent e, unsigned int flags, int ptsz) {
    NEED_CTX(c);
    struct fk_event_h *ev = (struct fk_event_h *)e;
    if (ev == NULL) return CUDA_ERROR_INVALID_HANDLE;
    if (flags > 1) return CUDA_ERROR_INVALID_VALUE;
    CUresult err;
    struct fk_stream *st = fk_resolve_stream(s, ptsz, c->dev, &err);
    if (st == NULL) return err;
    if (st->legacy && fk_any_capture_on_dev(st->dev, 1)) {
        fk_capture_invalidate_legacy_dependents(st->dev);
        return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    }
    int handled;
    CUresult r = fk_capture_wait(st, ev->cap, ev->cap_stream, &handled);
    if (handled) return r;
    fk_lock();
    fk_advance_locked(st->dev);
    const struct fk_sevent *se = &fk_sh->events[ev->idx];
    uint64_t gen = se->rec_gen;
    int pending = gen != 0 && se->done_gen < gen; /* a never-recorded or completed event: nothing to wait for */
    fk_unlock();
    if (pending) fk_submit(st, OP_WAIT_EVENT, 0, ev->idx, ev->serial, gen);
    return CUDA_SUCCESS;
}

EXPORT CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned int f) { fk_count_call(); return stream_wait_event(s, e, f, 0); }
EXPORT CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned int f) { fk_count_call(); return stream_wait_event(s, e, f, 1); }

