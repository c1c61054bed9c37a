/*
 * Pure maths of the SM share controller (no driver, no I/O), unit-tested by tables in tests/test_unit.c:
 * the token bucket, the union of busy intervals across streams, and the time-slice inflation estimate.
 */
#define _GNU_SOURCE
#include <string.h>

#include "vgpu.h"

void vgpu_bucket_refill(struct vgpu_bucket *b, int64_t now_ns, double committed_ns) {
    if (now_ns > b->last_ns) {
        b->tokens_ns += (double)(now_ns - b->last_ns) * b->rate;
        b->last_ns = now_ns;
    }
    if (b->tokens_ns - committed_ns > b->cap_ns) b->tokens_ns = committed_ns + b->cap_ns;
}

/*
 * Busy intervals of one process on one device, on one GPU timeline: kept sorted and disjoint. Adding an
 * interval returns how much of it was not covered yet, so kernels running at the same time on several
 * streams count once. When the set is full the earliest interval is forgotten (launches are harvested
 * roughly in order, so an interval that old no longer overlaps new ones).
 */
double vgpu_ivset_add(struct vgpu_ivset *v, double s, double e) {
    if (!(e > s)) return 0;
    double fresh = e - s;
    int first = -1, last = -1;
    for (int i = 0; i < v->n; i++) {
        if (v->e[i] < s || v->s[i] > e) continue; /* disjoint and not touching */
        double lo = v->s[i] > s ? v->s[i] : s, hi = v->e[i] < e ? v->e[i] : e;
        if (hi > lo) fresh -= hi - lo;
        if (first < 0) first = i;
        last = i;
    }
    if (fresh < 0) fresh = 0;
    if (first >= 0) { /* merge [first, last] with the new interval into one */
        double ns = v->s[first] < s ? v->s[first] : s, ne = v->e[last] > e ? v->e[last] : e;
        v->s[first] = ns;
        v->e[first] = ne;
        int gone = last - first;
        if (gone > 0) {
            memmove(&v->s[first + 1], &v->s[last + 1], sizeof(double) * (size_t)(v->n - last - 1));
            memmove(&v->e[first + 1], &v->e[last + 1], sizeof(double) * (size_t)(v->n - last - 1));
            v->n -= gone;
        }
        return fresh;
    }
    if (v->n == VGPU_IVSET_MAX) { /* forget the earliest */
        memmove(&v->s[0], &v->s[1], sizeof(double) * (VGPU_IVSET_MAX - 1));
        memmove(&v->e[0], &v->e[1], sizeof(double) * (VGPU_IVSET_MAX - 1));
        v->n--;
    }
    int at = v->n;
    while (at > 0 && v->s[at - 1] > s) at--;
    memmove(&v->s[at + 1], &v->s[at], sizeof(double) * (size_t)(v->n - at));
    memmove(&v->e[at + 1], &v->e[at], sizeof(double) * (size_t)(v->n - at));
    v->s[at] = s;
    v->e[at] = e;
    v->n++;
    return fresh;
}

/*
 * Time-slice inflation. Without MPS the GPU runs one context at a time; a kernel's event-to-event time then
 * includes the turns other processes' contexts got while it was in flight. NVML's per-process SM
 * utilisation counts only our own turns. The ratio of the two (event-timed share / NVML share), smoothed,
 * is the factor by which event time overstates our use; measured GPU time is divided by it. It only applies
 * while another process is active on the device: alone, event time is exact and the factor returns to 1.
 */
void vgpu_inflation_update(struct vgpu_inflation *f, double event_share, double nvml_share, int others_active) {
    const double alpha = 0.5;
    if (!others_active) {
        f->k = 1.0 + (f->k - 1.0) * (1.0 - alpha);
        if (f->k < 1.0005) f->k = 1.0;
        f->ev = f->nv = 0;
        return;
    }
    f->ev = f->ev <= 0 ? event_share : (1 - alpha) * f->ev + alpha * event_share;
    f->nv = f->nv <= 0 ? nvml_share : (1 - alpha) * f->nv + alpha * nvml_share;
    if (f->ev < 0.005 || f->nv < 0.005) return; /* too little of either to compare */
    double k = f->ev / f->nv;
    if (k < 1.0) k = 1.0; /* NVML can only reveal others' turns inside our spans, never add time */
    if (k > VGPU_INFLATION_MAX) k = VGPU_INFLATION_MAX;
    f->k = k;
}

/* The factor before any comparison is possible: a neighbour busy a fraction u of the time takes turns inside
 * our kernels' spans in about that proportion. Only raises the factor (a measured one is kept). */
void vgpu_inflation_prior(struct vgpu_inflation *f, double others_busy) {
    if (others_busy <= 0) return;
    double k = 1.0 + (others_busy > 1.0 ? 1.0 : others_busy);
    if (k > f->k) f->k = k;
}
