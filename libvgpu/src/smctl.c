/*
 * SM share controller: a duty-cycle limiter on measured GPU busy time, per device.
 *
 * Measurement. While a device is throttled, every launch is bracketed by two CUDA events on its own stream,
 * a start event recorded just before the launch and an end event just after it. The start event completes
 * when the stream reaches the kernel, so work queued before it on the stream (copies, waits on other
 * streams' events, NCCL) is not counted. Completed records are harvested without blocking (cuEventQuery),
 * and their [start, end] intervals are placed on one GPU timeline: each record is timed against an anchor
 * event, a recent end event that had already completed when the record was launched (so every offset is
 * positive and small). Intervals of kernels running at the same time on several streams are merged, not
 * summed (vgpu_ivset_add). The figure is GPU time, so it does not depend on the SM count or grid size.
 *
 * Time-slicing. Without MPS the GPU runs one context at a time, and a kernel's event time includes other
 * processes' turns. When this process knows its host PID (nvproc.c), every window it compares its
 * event-timed share with NVML's per-process SM utilisation; the smoothed ratio (>= 1, 1 while no other
 * process is active) divides the measured time, so the budget and the published share are our own turns.
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
 * Stream capture (smcapture.c). Launches into a capturing stream pass through; the graph is throttled when it
 * is launched. The controller's event queries and synchronizes are "potentially unsafe" calls: under another
 * thread's global-mode capture they would invalidate that capture. While a capture is in progress in the
 * process, they run with the thread's capture mode exchanged to RELAXED and restored before the
 * application's launch, which keeps its own mode; event records are safe calls.
 *
 * Driver calls per throttled launch, steady state, the launch included: cuCtxGetCurrent, cuEventRecord x 2,
 * cuEventQuery, cuEventElapsedTime x 2 (the harvested record's start and end against the anchor), the launch:
 * 7. While a capture is in progress in the process: + cuStreamIsCapturing + 2 cuThreadExchangeStreamCaptureMode.
 * A launch harvests one completed record (more only while a backlog builds up), also when it waits for
 * budget: the wait counts launches in flight at their estimate. NVML: one utilisation query per window.
 * With no SM limit (or the policy/switch off) a launch costs one atomic load here.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

#define RING 1024
#define NPOOL 64
#define NANCHOR 8
#define ANCHOR_REFRESH_NS 200e6 /* keep offsets short: float milliseconds lose precision far from the anchor */
#define WINDOW_NS 200000000LL
#define FIRST_WINDOW_NS 50000000LL /* publish early so a process starting next to us sees our share */
#define BURST_NS 50e6
#define KI 0.5
#define CORR_LEAK 0.8

struct rec {
    CUevent start;
    CUevent end;
    CUcontext ctx;
    double est;
    int anchor; /* index into devctl.anchors, -1: none */
};

struct anchor {
    CUevent ev;
    CUcontext ctx;
    double abs_ns; /* position on the device's GPU timeline */
    int refs;      /* records timed against it */
    int live;
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
    struct pev pool[NPOOL];
    int npool;
    struct anchor anchors[NANCHOR];
    int cur_anchor;
    struct vgpu_ivset busy;
    struct vgpu_inflation infl;
    unsigned long long nv_last_seen_us;
    int calibrating; /* the inflation factor is not measured yet: event time may overstate every share */
    unsigned long long act_us; /* wall-clock microseconds at activation */
    int64_t win_start;
    double win_busy;     /* own busy time in the window (after the inflation correction) */
    double win_busy_raw; /* event-timed busy time in the window */
    int win_throttled;
    int windows;
};

static struct devctl g_ctl[VGPU_MAX_DEVICES] = {
    [0 ... VGPU_MAX_DEVICES - 1] = {.mu = PTHREAD_MUTEX_INITIALIZER, .cur_anchor = -1, .infl = {.k = 1.0}}};
static int g_possible = -1;

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

/* ------------------------------------------------------------------ capture (smcapture.c) */

/* Lets a capture begin only between two controller decisions: see smcapture.c. */
void vgpu_sm_barrier(void) {
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        pthread_mutex_lock(&g_ctl[d].mu);
        pthread_mutex_unlock(&g_ctl[d].mu);
    }
}

static CUresult record(CUevent e, CUstream s, int ptsz) {
    if (ptsz && REAL(cuEventRecord_ptsz) != NULL) return REAL(cuEventRecord_ptsz)(e, s);
    if (REAL(cuEventRecord) == NULL) return CUDA_ERROR_NOT_FOUND;
    if (ptsz && s == NULL) s = CU_STREAM_PER_THREAD;
    return REAL(cuEventRecord)(e, s);
}

/* ------------------------------------------------------------------ events */

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

static void anchor_unref(struct devctl *c, int a) {
    if (a < 0) return;
    struct anchor *an = &c->anchors[a];
    if (--an->refs <= 0 && a != c->cur_anchor && an->live) {
        ev_put(c, an->ev, an->ctx);
        memset(an, 0, sizeof(*an));
    }
}

/* Makes `ev` (an end event that has completed, at abs_ns on the timeline) the anchor for new records.
 * Returns 1 when it took the event (the caller must not recycle it). */
static int anchor_set(struct devctl *c, CUevent ev, CUcontext ctx, double abs_ns) {
    int slot = -1;
    for (int i = 0; i < NANCHOR && slot < 0; i++)
        if (!c->anchors[i].live) slot = i;
    if (slot < 0) return 0;
    int old = c->cur_anchor;
    c->anchors[slot] = (struct anchor){.ev = ev, .ctx = ctx, .abs_ns = abs_ns, .refs = 0, .live = 1};
    c->cur_anchor = slot;
    if (old >= 0 && c->anchors[old].refs <= 0) {
        ev_put(c, c->anchors[old].ev, c->anchors[old].ctx);
        memset(&c->anchors[old], 0, sizeof(c->anchors[old]));
    }
    return 1;
}

static double elapsed_ns(CUevent from, CUevent to, int *ok) {
    float ms = 0;
    *ok = from != NULL && to != NULL && REAL(cuEventElapsedTime)(&ms, from, to) == CUDA_SUCCESS;
    return *ok ? (double)ms * 1e6 : 0;
}

/* Harvests completed records in launch order; with `quick`, one record (more only while more than two are
 * pending), so the launch path makes a single query in the steady state. */
static void harvest(struct devctl *c, int quick) {
    int done = 0;
    while (c->head < c->tail) {
        if (quick && done >= 1 && c->tail - c->head <= 2) break;
        done++;
        struct rec *rc = &c->ring[c->head % RING];
        CUresult q = rc->end != NULL ? REAL(cuEventQuery)(rc->end) : CUDA_ERROR_INVALID_HANDLE;
        if (q == CUDA_ERROR_NOT_READY) break;
        double dur = 0;
        int keep_end = 0;
        if (q == CUDA_SUCCESS) {
            struct anchor *an = rc->anchor >= 0 ? &c->anchors[rc->anchor] : NULL;
            double end_abs = -1;
            int placed = 0;
            if (an != NULL && an->live && an->ctx == rc->ctx) {
                int ok_s = 0, ok_e = 0;
                double s = elapsed_ns(an->ev, rc->start, &ok_s), e = ok_s ? elapsed_ns(an->ev, rc->end, &ok_e) : 0;
                if (ok_s && ok_e && s >= 0 && e >= s) {
                    dur = vgpu_ivset_add(&c->busy, an->abs_ns + s, an->abs_ns + e);
                    end_abs = an->abs_ns + e;
                    placed = 1;
                }
            }
            if (!placed) { /* no timeline yet (first launches, or another context): the launch's own time */
                int ok = 0;
                dur = elapsed_ns(rc->start, rc->end, &ok);
                if (!ok || dur < 0) dur = 0;
            }
            /* The first completed record starts the timeline; later ones renew the anchor now and then. A
             * timeline started afresh (first launch, or the anchor's context went away) begins past every
             * remembered interval, so it cannot fake an overlap with them. */
            struct anchor *cur = c->cur_anchor >= 0 ? &c->anchors[c->cur_anchor] : NULL;
            if (cur == NULL) {
                if (end_abs < 0) end_abs = (c->busy.n > 0 ? c->busy.e[c->busy.n - 1] : 0) + 1e9;
                keep_end = anchor_set(c, rc->end, rc->ctx, end_abs);
            } else if (cur->ctx == rc->ctx && end_abs >= 0 && end_abs - cur->abs_ns > ANCHOR_REFRESH_NS) {
                keep_end = anchor_set(c, rc->end, rc->ctx, end_abs);
            }
            ev_put(c, rc->start, rc->ctx);
            if (!keep_end) ev_put(c, rc->end, rc->ctx);
        } /* else: the context is gone or the stream failed; its events are not reused */
        anchor_unref(c, rc->anchor);
        c->inflight_est -= rc->est;
        c->win_busy_raw += dur;
        dur /= c->infl.k; /* our own turns only (1 when alone on the device) */
        c->b.tokens_ns -= dur;
        c->win_busy += dur;
        if (dur > 0) c->ema_ns = c->ema_ns <= 0 ? dur : 0.8 * c->ema_ns + 0.2 * dur;
        c->head++;
    }
    if (c->head == c->tail || c->inflight_est < 0) c->inflight_est = 0;
}

/* ------------------------------------------------------------------ windows and rate */

static unsigned long long wall_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (unsigned long long)tv.tv_sec * 1000000ull + (unsigned long long)tv.tv_usec;
}

/* NVML's view of our share in the window, when our host PID is known: updates the inflation factor. */
static void measure_inflation(struct devctl *c, int dev, double raw_share) {
    int hostpid = vgpu_hostpid();
    if (hostpid <= 0) return;
    if (c->windows <= 2) {
        /* NVML's sample periods (up to ~1/4 s) that began before the controller started mix in time before
         * our first launch and would overstate the factor: our own samples are compared only from periods
         * that start afterwards. The others' samples are good already: they refresh the starting factor. */
        unsigned long long since = c->act_us;
        double ours = 0, theirs = 0;
        int busy = 0;
        int n = vgpu_nvproc_sm_util(dev, (unsigned int)hostpid, &since, &ours, &busy, &theirs);
        if (n > 0 && busy) vgpu_inflation_prior(&c->infl, theirs / 100.0);
        if (n < 0) c->calibrating = 0; /* NVML cannot tell: event time is all there is */
        c->nv_last_seen_us = wall_us();
        return;
    }
    double nv_pct = 0;
    int others = 0;
    int n = vgpu_nvproc_sm_util(dev, (unsigned int)hostpid, &c->nv_last_seen_us, &nv_pct, &others, NULL);
    /* NVML cannot tell, or has shown nothing for ~2 s: event time is all there is. */
    if (n < 0 || c->windows > 10) c->calibrating = 0;
    if (n <= 0) return; /* no sample period since the last window: nothing to compare, the factor stays */
    vgpu_inflation_update(&c->infl, raw_share, nv_pct / 100.0, others);
    c->calibrating = 0;
}

static void window_tick(struct devctl *c, int dev, int64_t now) {
    int64_t el = now - c->win_start;
    if (el < (c->windows == 0 ? FIRST_WINDOW_NS : WINDOW_NS)) return;
    c->windows++;
    measure_inflation(c, dev, c->win_busy_raw / (double)el);
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
    /* While the inflation factor is still unknown, every share of the container may be overstated by other
     * processes' turns (they start at the same time as often as not): the integral would wind down on a
     * phantom excess, so it waits for the first measured factor. */
    c->corr *= CORR_LEAK;
    if (!c->calibrating && nsat == c->prev_nsat && c->windows > 1 && (err < 0 || c->win_throttled))
        c->corr += KI * err / (1.0 + nsat);
    c->prev_nsat = nsat;
    if (c->corr > c->limit * 0.5) c->corr = c->limit * 0.5;
    if (c->corr < -c->limit * 0.5) c->corr = -c->limit * 0.5;
    c->rate = fair + c->corr;
    if (c->rate > hi) c->rate = hi;
    if (c->rate < lo) c->rate = lo;
    LOG_DEBUG("device %d: own %.3f (event %.3f, k %.2f) others %.3f (%d saturated) limit %.2f -> fair %.3f "
              "corr %+.3f rate %.3f",
              dev, own, c->win_busy_raw / (double)el, c->infl.k, others, nsat, c->limit, fair, c->corr, c->rate);
    c->win_start = now;
    c->win_busy = 0;
    c->win_busy_raw = 0;
    c->win_throttled = 0;
}

/* harvest() with the capture-mode precaution (its queries are unsafe calls); caller holds c->mu. */
static void harvest_safely(struct devctl *c, int quick) {
    struct vgpu_relaxed m;
    vgpu_sm_relax(&m);
    harvest(c, quick);
    vgpu_sm_unrelax(&m);
}

static void activate(struct devctl *c, int dev, double limit, int64_t now) {
    harvest_safely(c, 0);
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
    c->win_busy_raw = 0;
    c->win_throttled = 0;
    c->windows = 0;
    if (c->infl.k < 1.0) c->infl.k = 1.0;
    /* Until our own samples can be compared (a few windows), start from what the other processes' recent
     * utilisation implies: beside a neighbour busy a fraction u of the time, its turns stretch our kernels'
     * event time by about 1 + u. NVML stamps its samples in wall-clock microseconds. */
    unsigned long long now_us = wall_us(), since = now_us > 1000000ull ? now_us - 1000000ull : 0;
    double ours = 0, theirs = 0;
    int others = 0, hostpid = vgpu_hostpid();
    c->calibrating = hostpid > 0;
    c->act_us = now_us;
    if (vgpu_nvproc_sm_util(dev, hostpid > 0 ? (unsigned int)hostpid : 0, &since, &ours, &others, &theirs) > 0)
        vgpu_inflation_prior(&c->infl, others ? theirs / 100.0 : 0.0);
    c->nv_last_seen_us = now_us;
}

static void sleep_ns(double ns) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ns};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ launch path */

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
    while (__atomic_load_n(&r->recent_kernel, __ATOMIC_RELAXED) < 0) usleep(100000); /* priority hold */
    if (__atomic_load_n(&r->recent_kernel, __ATOMIC_RELAXED) != 2) __atomic_store_n(&r->recent_kernel, 2, __ATOMIC_RELAXED);

    pthread_mutex_lock(&c->mu);
    int64_t now = vgpu_now_ns();
    if (!c->active) activate(c, dev, (double)lim / 100.0, now);
    c->limit = (double)lim / 100.0;
    for (int pass = 0;; pass++) {
        /* One harvest per launch as a rule: the wait below already counts launches in flight at their
         * estimate, and the next launch's harvest charges what completed meanwhile. Until a first duration
         * is known there is no estimate, and a long wait re-harvests now and then to correct it. */
        if (pass == 0 || c->ema_ns <= 0 || pass % 8 == 0) harvest_safely(c, 1);
        now = vgpu_now_ns();
        c->b.rate = c->rate;
        c->b.cap_ns = c->rate * BURST_NS;
        vgpu_bucket_refill(&c->b, now, c->inflight_est);
        window_tick(c, dev, now);
        uint64_t pending = c->tail - c->head;
        if (pending < RING && (c->ema_ns <= 0 ? pending == 0 : c->b.tokens_ns - c->inflight_est > 0)) break;
        c->win_throttled = 1;
        if (pending >= RING) {
            struct vgpu_relaxed m;
            vgpu_sm_relax(&m);
            REAL(cuEventSynchronize)(c->ring[c->head % RING].end);
            vgpu_sm_unrelax(&m);
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
    /* Decided under c->mu, which stays held until the end event is recorded: no capture can begin between. */
    /* A capturing stream passes through: the graph is throttled when it is launched. */
    if (vgpu_sm_captures_possible() && vgpu_stream_capturing(s, ptsz)) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    struct rec *rc = &c->ring[c->tail % RING];
    memset(rc, 0, sizeof(*rc));
    rc->ctx = ctx;
    rc->anchor = -1;
    rc->est = c->ema_ns > 0 ? c->ema_ns : 0;
    rc->start = ev_get(c, ctx);
    rc->end = ev_get(c, ctx);
    if (rc->start == NULL || rc->end == NULL || record(rc->start, s, ptsz) != CUDA_SUCCESS) {
        ev_put(c, rc->start, ctx);
        ev_put(c, rc->end, ctx);
        rc->start = rc->end = NULL;
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (c->cur_anchor >= 0 && c->anchors[c->cur_anchor].ctx == ctx) {
        rc->anchor = c->cur_anchor;
        c->anchors[rc->anchor].refs++;
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
        c->tail++;
        c->inflight_est += rc->est;
    } else {
        /* The start event may still be pending on the stream; recording it again later is legal. */
        anchor_unref(c, rc->anchor);
        ev_put(c, rc->start, rc->ctx);
        ev_put(c, rc->end, rc->ctx);
        rc->start = rc->end = NULL;
        rc->anchor = -1;
    }
    pthread_mutex_unlock(&c->mu);
}

void vgpu_sm_forget_ctx(CUcontext ctx) {
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        struct devctl *c = &g_ctl[d];
        if (c->head == c->tail && c->npool == 0 && c->cur_anchor < 0) continue;
        pthread_mutex_lock(&c->mu);
        for (uint64_t s = c->head; s < c->tail; s++) {
            struct rec *rc = &c->ring[s % RING];
            if (rc->ctx == ctx) rc->start = rc->end = NULL;
        }
        for (int i = c->npool - 1; i >= 0; i--)
            if (c->pool[i].ctx == ctx) c->pool[i] = c->pool[--c->npool];
        for (int i = 0; i < NANCHOR; i++)
            if (c->anchors[i].live && c->anchors[i].ctx == ctx) {
                /* Its event dies with the context; records still pointing here fall back to their own time. */
                c->anchors[i].ev = NULL;
                c->anchors[i].ctx = NULL;
                if (c->cur_anchor == i) c->cur_anchor = -1;
                if (c->anchors[i].refs <= 0) memset(&c->anchors[i], 0, sizeof(c->anchors[i]));
            }
        pthread_mutex_unlock(&c->mu);
    }
}

void vgpu_sm_atfork_child(void) {
    for (int d = 0; d < VGPU_MAX_DEVICES; d++) {
        memset(&g_ctl[d], 0, sizeof(g_ctl[d]));
        pthread_mutex_init(&g_ctl[d].mu, NULL);
        g_ctl[d].cur_anchor = -1;
        g_ctl[d].infl.k = 1.0;
    }
}
