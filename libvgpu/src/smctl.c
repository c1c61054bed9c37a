/*
 * SM share controller: a duty-cycle limiter on measured GPU busy time, per device.
 *
 * Measurement. While a device is throttled, every launch is bracketed by CUDA events on its own stream:
 * an end event after the launch, and a start event before it when the stream was idle (when the stream is
 * still busy, the previous launch's end event on that stream marks where this one starts). Completed
 * records are harvested without blocking (cuEventQuery), and cuEventElapsedTime gives the GPU time each
 * launch occupied. The figure is in GPU time, so it does not depend on the SM count, grid sizes, or whether
 * the application synchronises after each launch.
 *
 * Budget. A bucket of GPU-busy nanoseconds refills at `rate` x wall time and is charged the measured busy
 * time of each completed launch. A launch may start while (tokens - estimated busy time of launches still in
 * flight) is positive, so an asynchronous flood cannot queue more work than the budget covers; the estimate
 * (an EMA of measured durations) only paces, the charge is always the measurement. Uncommitted budget is
 * capped at 50 ms worth, so idling does not bank a long burst.
 *
 * Closed loop. Every 200 ms the process publishes its achieved share (sm_util in its region slot) and whether
 * its budget held it back (saturated). The refill rate is a fair share plus a correction:
 *   fair = (limit - share of the unsaturated other processes) / (1 + saturated other processes)
 * so processes that want more split what the others leave equally, and
 *   corr = 0.8 * corr + KI * (limit - container total) / (1 + saturated others)
 * is a leaky integral of the container's total error (own share plus the others' fresh sm_util), which
 * corrects e.g. late wake-ups on a loaded host. Upward corrections only happen in windows where the process
 * was actually held back (anti-windup).
 *
 * With no SM limit (or the policy/switch off) a launch costs one atomic load here.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

#define RING 1024
#define NSTREAMS 64
#define NPOOL 64
#define WINDOW_NS 200000000LL
#define FIRST_WINDOW_NS 50000000LL /* publish early so a process starting next to us sees our share */
#define BURST_NS 50e6
#define KI 0.5
#define CORR_LEAK 0.8

struct rec {
    CUevent start; /* own start event (stream was idle) */
    CUevent from;  /* previous record's end event on the same stream (stream was busy) */
    CUevent end;
    CUcontext ctx;
    double est;
    int end_shared; /* the next record on this stream starts at our end */
    int has_prev;
    uint64_t prev_seq;
};

struct skey {
    uintptr_t ctx;
    uintptr_t stream;
    uint64_t seq;
    int used;
};

struct pev {
    CUevent ev;
    CUcontext ctx;
};

struct devctl {
    pthread_mutex_t mu;
    int active;
    double limit;
    double rate;
    double corr;
    int prev_nsat;
    struct vgpu_bucket b;
    double inflight_est;
    double ema_ns;
    struct rec ring[RING];
    uint64_t head, tail;
    struct skey streams[NSTREAMS];
    unsigned int victim;
    struct pev pool[NPOOL];
    int npool;
    int64_t win_start;
    double win_busy;
    int win_throttled;
    int windows;
};

static struct devctl g_ctl[VGPU_MAX_DEVICES] = {[0 ... VGPU_MAX_DEVICES - 1] = {.mu = PTHREAD_MUTEX_INITIALIZER}};
static int g_possible = -1;

void vgpu_bucket_refill(struct vgpu_bucket *b, int64_t now_ns, double committed_ns) {
    if (now_ns > b->last_ns) {
        b->tokens_ns += (double)(now_ns - b->last_ns) * b->rate;
        b->last_ns = now_ns;
    }
    if (b->tokens_ns - committed_ns > b->cap_ns) b->tokens_ns = committed_ns + b->cap_ns;
}

static int sm_possible(void) {
    int p = __atomic_load_n(&g_possible, __ATOMIC_RELAXED);
    if (p >= 0) return p;
    p = 0;
    if (g_cfg.policy != VGPU_POLICY_DISABLE) {
        vgpu_region_t *r = vgpu_region();
        for (int d = 0; d < VGPU_MAX_DEVICES; d++)
            if (r->sm_limit[d] > 0 && r->sm_limit[d] < 100) p = 1;
    }
    __atomic_store_n(&g_possible, p, __ATOMIC_RELAXED);
    return p;
}

static int capturing(CUstream s, int ptsz) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    __typeof__(&cuStreamIsCapturing) fn = ptsz && REAL(cuStreamIsCapturing_ptsz) != NULL
                                              ? REAL(cuStreamIsCapturing_ptsz)
                                              : REAL(cuStreamIsCapturing);
    if (fn == NULL) return 0;
    if (ptsz && fn == REAL(cuStreamIsCapturing) && s == NULL) s = CU_STREAM_PER_THREAD;
    return fn(s, &st) == CUDA_SUCCESS && st != CU_STREAM_CAPTURE_STATUS_NONE;
}

static CUresult record(CUevent e, CUstream s, int ptsz) {
    if (ptsz && REAL(cuEventRecord_ptsz) != NULL) return REAL(cuEventRecord_ptsz)(e, s);
    if (REAL(cuEventRecord) == NULL) return CUDA_ERROR_NOT_FOUND;
    if (ptsz && s == NULL) s = CU_STREAM_PER_THREAD;
    return REAL(cuEventRecord)(e, s);
}

static uintptr_t stream_key(CUstream s, int ptsz) {
    if ((s == NULL && ptsz) || s == CU_STREAM_PER_THREAD) return (uintptr_t)pthread_self() ^ 0x3u;
    if (s == NULL || s == CU_STREAM_LEGACY) return 0x1;
    return (uintptr_t)s;
}

static CUevent ev_get(struct devctl *c, CUcontext ctx) {
    for (int i = c->npool - 1; i >= 0; i--)
        if (c->pool[i].ctx == ctx) {
            CUevent e = c->pool[i].ev;
            c->pool[i] = c->pool[--c->npool];
            return e;
        }
    CUevent e = NULL;
    if (REAL(cuEventCreate) == NULL || REAL(cuEventCreate)(&e, CU_EVENT_DEFAULT) != CUDA_SUCCESS) return NULL;
    return e;
}

static void ev_put(struct devctl *c, CUevent e, CUcontext ctx) {
    if (e == NULL) return;
    if (c->npool < NPOOL) {
        c->pool[c->npool].ev = e;
        c->pool[c->npool].ctx = ctx;
        c->npool++;
    } else if (REAL(cuEventDestroy_v2) != NULL) {
        REAL(cuEventDestroy_v2)(e);
    }
}

static struct skey *find_stream(struct devctl *c, uintptr_t ctx, uintptr_t key) {
    for (int i = 0; i < NSTREAMS; i++)
        if (c->streams[i].used && c->streams[i].ctx == ctx && c->streams[i].stream == key) return &c->streams[i];
    return NULL;
}

static void set_stream(struct devctl *c, uintptr_t ctx, uintptr_t key, uint64_t seq) {
    struct skey *k = find_stream(c, ctx, key);
    if (k == NULL) {
        for (int i = 0; i < NSTREAMS && k == NULL; i++)
            if (!c->streams[i].used) k = &c->streams[i];
        if (k == NULL) k = &c->streams[c->victim++ % NSTREAMS];
    }
    k->ctx = ctx;
    k->stream = key;
    k->seq = seq;
    k->used = 1;
}

static void harvest(struct devctl *c) {
    while (c->head < c->tail) {
        struct rec *rc = &c->ring[c->head % RING];
        CUresult q = rc->end != NULL ? REAL(cuEventQuery)(rc->end) : CUDA_ERROR_INVALID_HANDLE;
        if (q == CUDA_ERROR_NOT_READY) break;
        double dur = 0;
        if (q == CUDA_SUCCESS) {
            float ms = 0;
            CUevent from = rc->start != NULL ? rc->start : rc->from;
            if (from != NULL && REAL(cuEventElapsedTime)(&ms, from, rc->end) == CUDA_SUCCESS && ms > 0)
                dur = (double)ms * 1e6;
            ev_put(c, rc->start, rc->ctx);
            ev_put(c, rc->from, rc->ctx);
            if (!rc->end_shared) ev_put(c, rc->end, rc->ctx);
        } /* else: the context is gone or the stream failed; its events are not reused */
        c->inflight_est -= rc->est;
        c->b.tokens_ns -= dur;
        c->win_busy += dur;
        if (dur > 0) c->ema_ns = c->ema_ns <= 0 ? dur : 0.8 * c->ema_ns + 0.2 * dur;
        c->head++;
    }
    if (c->head == c->tail || c->inflight_est < 0) c->inflight_est = 0;
}

static void window_tick(struct devctl *c, int dev, int64_t now) {
    int64_t el = now - c->win_start;
    if (el < (c->windows == 0 ? FIRST_WINDOW_NS : WINDOW_NS)) return;
    c->windows++;
    double own = c->win_busy / (double)el;
    vgpu_region_set_sm_util(dev, (uint64_t)(own * 100.0 + 0.5), c->win_throttled);
    uint64_t unsat_pct = 0;
    int nsat = 0;
    double others = (double)vgpu_region_others_sm_util(dev, &unsat_pct, &nsat) / 100.0;
    double hi = c->limit * 1.5 > 1.0 ? 1.0 : c->limit * 1.5;
    double lo = c->limit * 0.05 < 0.005 ? 0.005 : c->limit * 0.05;
    double fair = (c->limit - (double)unsat_pct / 100.0) / (1.0 + nsat);
    if (fair < lo) fair = lo;
    double err = c->limit - (own + others);
    /* The correction leaks away (so per-process corrections cannot skew the split for long), and is left
     * alone in a window where the set of saturated processes changed: `fair` already moved. */
    c->corr *= CORR_LEAK;
    if (nsat == c->prev_nsat && c->windows > 1 && (err < 0 || c->win_throttled)) c->corr += KI * err / (1.0 + nsat);
    c->prev_nsat = nsat;
    if (c->corr > c->limit * 0.5) c->corr = c->limit * 0.5;
    if (c->corr < -c->limit * 0.5) c->corr = -c->limit * 0.5;
    c->rate = fair + c->corr;
    if (c->rate > hi) c->rate = hi;
    if (c->rate < lo) c->rate = lo;
    LOG_DEBUG("device %d: own %.3f others %.3f (%d saturated) limit %.2f -> fair %.3f corr %+.3f rate %.3f", dev,
              own, others, nsat, c->limit, fair, c->corr, c->rate);
    c->win_start = now;
    c->win_busy = 0;
    c->win_throttled = 0;
}

static void activate(struct devctl *c, int dev, double limit, int64_t now) {
    harvest(c);
    c->active = 1;
    c->limit = limit;
    /* Start from what the container's other processes leave (they publish their share). */
    uint64_t unsat_pct = 0;
    int nsat = 0;
    vgpu_region_others_sm_util(dev, &unsat_pct, &nsat);
    double fair = (limit - (double)unsat_pct / 100.0) / (1.0 + nsat);
    c->rate = fair > limit * 0.05 ? fair : limit * 0.05;
    c->corr = 0;
    c->prev_nsat = nsat;
    c->b.rate = c->rate;
    c->b.tokens_ns = 0;
    c->b.cap_ns = c->rate * BURST_NS;
    c->b.last_ns = now;
    c->win_start = now;
    c->win_busy = 0;
    c->win_throttled = 0;
    c->windows = 0;
}

static void undo(struct devctl *c, struct rec *rc) {
    ev_put(c, rc->start, rc->ctx);
    rc->start = NULL;
    if (rc->has_prev) c->ring[rc->prev_seq % RING].end_shared = 0;
    rc->has_prev = 0;
    rc->from = NULL;
}

static void sleep_ns(double ns) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ns};
    nanosleep(&ts, NULL);
}

void vgpu_sm_before_launch(struct vgpu_launch_guard *g, CUstream s, int ptsz) {
    g->active = 0;
    g->stream = s;
    g->ptsz = ptsz;
    if (!sm_possible()) return;
    CUcontext ctx;
    int dev = vgpu_current_dev(&ctx);
    if (dev < 0) return;
    vgpu_region_t *r = vgpu_region();
    uint64_t lim = __atomic_load_n(&r->sm_limit[dev], __ATOMIC_RELAXED);
    if (lim == 0 || lim >= 100) return;
    struct devctl *c = &g_ctl[dev];
    if (g_cfg.policy == VGPU_POLICY_DEFAULT && __atomic_load_n(&r->utilization_switch, __ATOMIC_RELAXED) == 0) {
        __atomic_store_n(&c->active, 0, __ATOMIC_RELAXED); /* the monitor says we are alone on the GPU */
        return;
    }
    if (capturing(s, ptsz)) return; /* the graph is throttled when it is launched */
    while (__atomic_load_n(&r->recent_kernel, __ATOMIC_RELAXED) < 0) usleep(100000); /* priority hold */
    if (__atomic_load_n(&r->recent_kernel, __ATOMIC_RELAXED) != 2) __atomic_store_n(&r->recent_kernel, 2, __ATOMIC_RELAXED);

    pthread_mutex_lock(&c->mu);
    int64_t now = vgpu_now_ns();
    if (!c->active) activate(c, dev, (double)lim / 100.0, now);
    c->limit = (double)lim / 100.0;
    for (;;) {
        harvest(c);
        now = vgpu_now_ns();
        c->b.rate = c->rate;
        c->b.cap_ns = c->rate * BURST_NS;
        vgpu_bucket_refill(&c->b, now, c->inflight_est);
        window_tick(c, dev, now);
        uint64_t pending = c->tail - c->head;
        if (pending < RING && (c->ema_ns <= 0 ? pending == 0 : c->b.tokens_ns - c->inflight_est > 0)) break;
        c->win_throttled = 1;
        if (pending >= RING) {
            REAL(cuEventSynchronize)(c->ring[c->head % RING].end);
            continue;
        }
        double need = c->inflight_est - c->b.tokens_ns;
        double wait = c->ema_ns <= 0 ? 100e3 : need / (c->rate > 0.001 ? c->rate : 0.001);
        if (wait < 20e3) wait = 20e3;
        if (wait > 2e6) wait = 2e6;
        pthread_mutex_unlock(&c->mu);
        sleep_ns(wait);
        pthread_mutex_lock(&c->mu);
    }
    struct rec *rc = &c->ring[c->tail % RING];
    memset(rc, 0, sizeof(*rc));
    rc->ctx = ctx;
    rc->est = c->ema_ns > 0 ? c->ema_ns : 0;
    struct skey *sk = find_stream(c, (uintptr_t)ctx, stream_key(s, ptsz));
    if (sk != NULL && sk->seq >= c->head && sk->seq < c->tail) {
        struct rec *prev = &c->ring[sk->seq % RING];
        if (!prev->end_shared && prev->end != NULL && REAL(cuEventQuery)(prev->end) == CUDA_ERROR_NOT_READY) {
            rc->from = prev->end;
            prev->end_shared = 1;
            rc->has_prev = 1;
            rc->prev_seq = sk->seq;
        }
    }
    if (rc->from == NULL) {
        rc->start = ev_get(c, ctx);
        if (rc->start == NULL || record(rc->start, s, ptsz) != CUDA_SUCCESS) {
            undo(c, rc);
            pthread_mutex_unlock(&c->mu);
            return;
        }
    }
    rc->end = ev_get(c, ctx);
    if (rc->end == NULL) {
        undo(c, rc);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    g->active = 1;
    g->dev = dev;
    g->rec = rc; /* c->mu stays locked until vgpu_sm_after_launch */
}

void vgpu_sm_after_launch(struct vgpu_launch_guard *g, CUresult launch_result) {
    if (!g->active) return;
    struct devctl *c = &g_ctl[g->dev];
    struct rec *rc = g->rec;
    if (launch_result == CUDA_SUCCESS && record(rc->end, g->stream, g->ptsz) == CUDA_SUCCESS) {
        set_stream(c, (uintptr_t)rc->ctx, stream_key(g->stream, g->ptsz), c->tail);
        c->tail++;
        c->inflight_est += rc->est;
    } else {
        undo(c, rc);
        ev_put(c, rc->end, rc->ctx);
        rc->end = NULL;
    }
    pthread_mutex_unlock(&c->mu);
}

void vgpu_sm_forget_ctx(CUcontext ctx) {
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        struct devctl *c = &g_ctl[d];
        if (c->head == c->tail && c->npool == 0) continue;
        pthread_mutex_lock(&c->mu);
        for (uint64_t s = c->head; s < c->tail; s++) {
            struct rec *rc = &c->ring[s % RING];
            if (rc->ctx == ctx) rc->start = rc->from = rc->end = NULL;
        }
        for (int i = c->npool - 1; i >= 0; i--)
            if (c->pool[i].ctx == ctx) c->pool[i] = c->pool[--c->npool];
        for (int i = 0; i < NSTREAMS; i++)
            if (c->streams[i].ctx == (uintptr_t)ctx) c->streams[i].used = 0;
        pthread_mutex_unlock(&c->mu);
    }
}

void vgpu_sm_atfork_child(void) {
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        memset(&g_ctl[d], 0, sizeof(g_ctl[d]));
        pthread_mutex_init(&g_ctl[d].mu, NULL);
    }
}
