/*
 * The device timeline, shared by every process on the GPU.
 *
 * Device time is CLOCK_MONOTONIC (system-wide, so every process reads the same clock). A virtual clock that
 * only the timeline advances would make runs independent of host load, but it would not be faithful to how
 * libvgpu observes a GPU: the library refills its SM budget from the host's monotonic clock and sleeps in
 * host time, and a real GPU keeps running (or idles) while a descheduled host thread sleeps. Tests stay
 * deterministic where it matters because every figure they assert on is read from this timeline (exact
 * simulated kernel time per process), never from host wall time; host load only changes when the library
 * gets to launch, which is what the controller under test must cope with.
 *
 * Model (per device), simulated lazily: whoever calls into the driver first advances the timeline up to the
 * current time, under the shared lock. Nothing before "now" can change any more, because new work is always
 * enqueued at or after now.
 *   - Each stream is a FIFO of operations: kernels, copies, event records, waits (on an event, or on another
 *     stream's position for the legacy default stream's implicit synchronisation).
 *   - The compute engine is time-sliced between processes (the real driver time-slices contexts of
 *     different processes; their kernels never overlap). The process holding the engine keeps it until its
 *     slice (FAKE_TIMESLICE_US) ends and another process has a kernel ready, or until it has no kernel ready.
 *     A preempted kernel keeps its remaining time. Within one process, kernels of different streams run
 *     concurrently (each as if it had the SMs it needs): the process's kernel time is the union.
 *   - Copies run on the copy engine, concurrently with any kernel, and are never kernel time.
 *   - An event record is executed by the process's context, like a kernel: it completes once the work queued
 *     before it on its stream has completed and the process holds the engine (a process with a pending
 *     record is scheduled like one with a ready kernel; the record itself takes no time). Its timestamp is
 *     that moment. So an event pair around a kernel measures the kernel plus every slice other processes ran
 *     while it was preempted, as on a real GPU.
 *   - Kernel time is accounted per process and per NVML sample period (FAKE_NVML_SAMPLE_MS), from which
 *     NVML's per-process utilisation samples are made.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fk.h"

static struct fk_op *head_op(struct fk_sstream *s) { return &s->ring[s->head % FK_RING]; }

static void account(int dev, int slot, int64_t t0, int64_t t1) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    struct fk_sproc *p = &fk_sh->procs[slot];
    p->busy_ns[dev] += (uint64_t)(t1 - t0);
    if (p->first_start[dev] == 0) p->first_start[dev] = t0;
    p->last_end[dev] = t1;
    d->busy_ns += (uint64_t)(t1 - t0);
    if (d->first_start == 0) d->first_start = t0;
    d->last_end = t1;
    int64_t period = fk_sh->sample_ns;
    while (t0 < t1) {
        int64_t k = t0 / period;
        struct fk_bucket *b = &d->buckets[k % FK_NBUCKET];
        if (b->start != k * period) {
            memset(b, 0, sizeof(*b));
            b->start = k * period;
        }
        int64_t e = (k + 1) * period;
        if (e > t1) e = t1;
        b->busy[slot] += (uint32_t)(e - t0);
        b->host_pid[slot] = p->host_pid;
        t0 = e;
    }
}

/* Completes every operation at a stream head that needs no engine time at the current device time. */
static void settle(struct fk_sdev *d) {
    int changed;
    do {
        changed = 0;
        for (int i = 0; i < d->nstreams; i++) {
            struct fk_sstream *s = &d->streams[i];
            while (s->owner >= 0 && s->head < s->tail) {
                struct fk_op *op = head_op(s);
                if (op->t_enq > d->T) break;
                int done = 0;
                struct fk_sevent *e = &fk_sh->events[op->arg];
                switch (op->kind) {
                case OP_KERNEL:
                case OP_COPY:
                    done = op->left <= 0;
                    break;
                case OP_RECORD:
                    if (e->owner < 0 || e->serial != op->serial) {
                        done = 1; /* the event was destroyed: nothing to stamp */
                        break;
                    }
                    if (s->owner != d->cur) break; /* executed in the process's own time slice */
                    if (op->gen > e->done_gen) {
                        e->done_gen = op->gen;
                        e->t = d->T;
                    }
                    done = 1;
                    break;
                case OP_WAIT_EVENT:
                    done = e->owner < 0 || e->serial != op->serial || e->done_gen >= op->gen;
                    break;
                case OP_WAIT_STREAM: {
                    struct fk_sstream *o = &d->streams[op->arg];
                    done = o->owner < 0 || o->serial != op->gen || o->head >= (uint64_t)op->left;
                    break;
                }
                default:
                    done = 1;
                }
                if (!done) break;
                s->head++;
                changed = 1;
            }
            if (s->owner >= 0 && s->destroyed && s->head == s->tail) s->owner = -1;
        }
    } while (changed);
}

static int runnable(const struct fk_sdev *d, const struct fk_sstream *s, int kind) {
    if (s->owner < 0 || s->head >= s->tail) return 0;
    const struct fk_op *op = &s->ring[s->head % FK_RING];
    return op->kind == kind && op->t_enq <= d->T && op->left > 0;
}

void fk_advance_locked(int dev) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    int64_t to = fk_now();
    if (d->T == 0) d->T = to;
    fk_reap_locked(0);
    char ready[FK_MAX_PROC];
    for (;;) {
        settle(d);
        if (d->T >= to) break;
        memset(ready, 0, sizeof(ready));
        int nready = 0;
        int64_t next = to;
        for (int i = 0; i < d->nstreams; i++) {
            struct fk_sstream *s = &d->streams[i];
            if (s->owner < 0 || s->head >= s->tail) continue;
            struct fk_op *op = head_op(s);
            if (op->t_enq > d->T) {
                if (op->t_enq < next) next = op->t_enq;
            } else if (((op->kind == OP_KERNEL && op->left > 0) || op->kind == OP_RECORD) && !ready[s->owner]) {
                ready[s->owner] = 1; /* kernels and event records need the process's context on the engine */
                nready++;
            }
        }
        /* The engine's owner: the current process until its slice ends with someone else waiting. */
        int others = nready - (d->cur >= 0 && ready[d->cur]);
        if (d->cur >= 0 && ready[d->cur] && (d->T < d->slice_end || others == 0)) {
            if (d->T >= d->slice_end) d->slice_end = d->T + fk_sh->timeslice_ns;
        } else {
            int pick = -1;
            for (int k = 1; k <= FK_MAX_PROC && nready > 0; k++) {
                int c = ((d->cur < 0 ? 0 : d->cur) + k) % FK_MAX_PROC;
                if (ready[c]) {
                    pick = c;
                    break;
                }
            }
            d->cur = pick;
            d->slice_end = d->T + fk_sh->timeslice_ns;
        }
        others = nready - (d->cur >= 0 && ready[d->cur]);
        if (d->cur >= 0 && others > 0 && d->slice_end < next) next = d->slice_end;
        int running = 0;
        for (int i = 0; i < d->nstreams; i++) {
            struct fk_sstream *s = &d->streams[i];
            if (s->owner == d->cur && s->head < s->tail && head_op(s)->kind == OP_RECORD && head_op(s)->t_enq <= d->T)
                next = d->T; /* the owner's event records complete now, before anything else moves */
            int k = runnable(d, s, OP_KERNEL) && s->owner == d->cur;
            if (k || runnable(d, s, OP_COPY)) {
                int64_t left = head_op(s)->left;
                if (d->T + left < next) next = d->T + left;
                running |= k;
            }
        }
        int64_t dt = next - d->T;
        for (int i = 0; i < d->nstreams; i++) {
            struct fk_sstream *s = &d->streams[i];
            if ((runnable(d, s, OP_KERNEL) && s->owner == d->cur) || runnable(d, s, OP_COPY)) {
                head_op(s)->left -= dt;
                s->pending_ns -= dt;
            }
        }
        if (running && dt > 0) account(dev, d->cur, d->T, next);
        d->T = next;
    }
}

int fk_stream_alloc_locked(int dev, int flags) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    for (int i = 0; i < FK_MAX_STREAMS; i++) {
        struct fk_sstream *s = &d->streams[i];
        if (s->owner >= 0) continue;
        s->owner = fk_self;
        s->flags = flags;
        s->destroyed = 0;
        s->serial = fk_serial();
        s->head = s->tail = 0;
        s->pending_ns = 0;
        if (i >= d->nstreams) d->nstreams = i + 1;
        return i;
    }
    return -1;
}

void fk_stream_release_locked(int dev, int idx) {
    struct fk_sstream *s = &fk_sh->devs[dev].streams[idx];
    if (s->head == s->tail)
        s->owner = -1;
    else
        s->destroyed = 1; /* its queued work still runs, as after cuStreamDestroy */
}

int fk_enqueue_locked(int dev, int idx, int kind, int64_t left, int arg, uint64_t serial, uint64_t gen) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    struct fk_sstream *s = &d->streams[idx];
    if (s->tail - s->head >= FK_RING) return -1;
    if ((kind == OP_KERNEL || kind == OP_COPY) && s->pending_ns > fk_cfg.queue_ns) return -1;
    int64_t now = fk_now();
    struct fk_op *op = &s->ring[s->tail % FK_RING];
    op->t_enq = now > d->T ? now : d->T;
    op->left = left;
    op->serial = serial;
    op->gen = gen;
    op->kind = kind;
    op->arg = arg;
    s->tail++;
    if (kind == OP_KERNEL || kind == OP_COPY) s->pending_ns += left;
    return 0;
}

int fk_stream_idle_locked(int dev, int idx, uint64_t upto) { return fk_sh->devs[dev].streams[idx].head >= upto; }

/* A lower bound of the time until the stream has completed operation `upto` (others' slices may add). */
int64_t fk_stream_eta_locked(int dev, int idx, uint64_t upto) {
    struct fk_sstream *s = &fk_sh->devs[dev].streams[idx];
    int64_t eta = 0;
    for (uint64_t n = s->head; n < upto && n < s->tail; n++) {
        const struct fk_op *op = &s->ring[n % FK_RING];
        if (op->kind == OP_KERNEL || op->kind == OP_COPY) eta += op->left;
    }
    return eta;
}

void fk_wait_ns(int64_t ns) {
    if (ns < 50000) ns = 50000;
    if (ns > 200000000) ns = 200000000;
    struct timespec ts = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
    nanosleep(&ts, NULL);
}

void fk_drop_proc_locked(int slot) {
    for (int dv = 0; dv < fk_sh->ndev; dv++) {
        struct fk_sdev *d = &fk_sh->devs[dv];
        for (int i = 0; i < d->nstreams; i++)
            if (d->streams[i].owner == slot) d->streams[i].owner = -1; /* the context's work is abandoned */
        if (d->cur == slot) d->cur = -1;
    }
    for (int e = 0; e < FK_MAX_EVENTS; e++)
        if (fk_sh->events[e].owner == slot) fk_sh->events[e].owner = -1;
}

int fk_event_alloc_locked(int timing) {
    for (int i = 0; i < FK_MAX_EVENTS; i++) {
        struct fk_sevent *e = &fk_sh->events[i];
        if (e->owner >= 0) continue;
        e->owner = fk_self;
        e->timing = timing;
        e->serial = fk_serial();
        e->rec_gen = e->done_gen = 0;
        e->t = 0;
        return i;
    }
    return -1;
}

void fk_event_free_locked(int idx) { fk_sh->events[idx].owner = -1; }

static int64_t realtime_offset(void) {
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    return (int64_t)rt.tv_sec * 1000000000LL + rt.tv_nsec - fk_now();
}

/* NVML's process samples: one per process and completed sample period newer than last_seen_us (CPU time in
 * microseconds, as NVML stamps them), smUtil = the process's kernel time in that period, in percent. */
int fk_samples_locked(int dev, uint64_t last_seen_us, nvmlProcessUtilizationSample_t *out, unsigned int cap) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    int64_t period = fk_sh->sample_ns, off = realtime_offset();
    int64_t last = d->T / period - 1; /* the newest completed period */
    int n = 0;
    for (int64_t k = last - FK_NBUCKET + 1; k <= last; k++) {
        const struct fk_bucket *b = &d->buckets[k % FK_NBUCKET];
        if (k < 0 || b->start != k * period) continue;
        uint64_t ts = (uint64_t)((b->start + period + off) / 1000);
        if (ts <= last_seen_us) continue;
        for (int p = 0; p < FK_MAX_PROC; p++) {
            if (b->busy[p] == 0) continue;
            if (out != NULL && (unsigned int)n < cap)
                out[n] = (nvmlProcessUtilizationSample_t){(unsigned int)b->host_pid[p], ts,
                                                          (unsigned int)((b->busy[p] * 100ull + (uint64_t)period / 2) /
                                                                         (uint64_t)period),
                                                          0, 0, 0};
            n++;
        }
    }
    return n;
}

unsigned int fk_device_util_locked(int dev) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    int64_t period = fk_sh->sample_ns, k = d->T / period - 1;
    const struct fk_bucket *b = &d->buckets[k % FK_NBUCKET];
    if (k < 0 || b->start != k * period) return 0;
    uint64_t busy = 0;
    for (int p = 0; p < FK_MAX_PROC; p++) busy += b->busy[p];
    return (unsigned int)((busy * 100 + (uint64_t)period / 2) / (uint64_t)period);
}
