/* Process-local table of what this process charged: (kind, key) -> device, bytes, context. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vgpu.h"

/* Open addressing with tombstones; grows at 50 % load. */
#define SLOT_EMPTY 0
#define SLOT_DEAD (-1)

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct vgpu_track_entry *g_tab;
static size_t g_cap;  /* power of two */
static size_t g_used; /* live + dead */
static size_t g_live;

static size_t hash_key(int kind, uint64_t key) {
    uint64_t h = key * 0x9E3779B97F4A7C15ull ^ ((uint64_t)kind << 56);
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (size_t)h;
}

static int rehash(size_t cap) {
    struct vgpu_track_entry *tab = calloc(cap, sizeof(*tab));
    if (tab == NULL) return -1;
    for (size_t i = 0; i < g_cap; i++) {
        struct vgpu_track_entry *e = &g_tab[i];
        if (e->kind <= 0) continue;
        size_t j = hash_key(e->kind, e->key) & (cap - 1);
        while (tab[j].kind != SLOT_EMPTY) j = (j + 1) & (cap - 1);
        tab[j] = *e;
    }
    free(g_tab);
    g_tab = tab;
    g_cap = cap;
    g_used = g_live;
    return 0;
}

static struct vgpu_track_entry *find_locked(int kind, uint64_t key) {
    if (g_cap == 0) return NULL;
    size_t j = hash_key(kind, key) & (g_cap - 1);
    for (size_t n = 0; n < g_cap; n++) {
        struct vgpu_track_entry *e = &g_tab[j];
        if (e->kind == SLOT_EMPTY) return NULL;
        if (e->kind == kind && e->key == key) return e;
        j = (j + 1) & (g_cap - 1);
    }
    return NULL;
}

void vgpu_track_put(const struct vgpu_track_entry *in) {
    pthread_mutex_lock(&g_mu);
    struct vgpu_track_entry *e = find_locked(in->kind, in->key);
    if (e != NULL) {
        *e = *in; /* the driver reused a handle we never saw freed: keep the newest */
        pthread_mutex_unlock(&g_mu);
        return;
    }
    if ((g_used + 1) * 2 > g_cap) {
        size_t cap = g_cap == 0 ? 256 : (g_live * 4 > g_cap ? g_cap * 2 : g_cap);
        if (rehash(cap) != 0) {
            pthread_mutex_unlock(&g_mu);
            LOG_ERROR("out of host memory tracking an allocation; it will not be given back on free");
            return;
        }
    }
    size_t j = hash_key(in->kind, in->key) & (g_cap - 1);
    while (g_tab[j].kind > 0) j = (j + 1) & (g_cap - 1);
    if (g_tab[j].kind == SLOT_EMPTY) g_used++;
    g_tab[j] = *in;
    g_live++;
    pthread_mutex_unlock(&g_mu);
}

int vgpu_track_take(int kind, uint64_t key, struct vgpu_track_entry *out) {
    pthread_mutex_lock(&g_mu);
    struct vgpu_track_entry *e = find_locked(kind, key);
    if (e != NULL) {
        if (out != NULL) *out = *e;
        memset(e, 0, sizeof(*e));
        e->kind = SLOT_DEAD;
        g_live--;
    }
    pthread_mutex_unlock(&g_mu);
    return e != NULL;
}

int vgpu_track_get(int kind, uint64_t key, struct vgpu_track_entry *out) {
    pthread_mutex_lock(&g_mu);
    struct vgpu_track_entry *e = find_locked(kind, key);
    if (e != NULL && out != NULL) *out = *e;
    pthread_mutex_unlock(&g_mu);
    return e != NULL;
}

int vgpu_track_set_bytes(int kind, uint64_t key, uint64_t bytes) {
    pthread_mutex_lock(&g_mu);
    struct vgpu_track_entry *e = find_locked(kind, key);
    if (e != NULL) e->bytes = bytes;
    pthread_mutex_unlock(&g_mu);
    return e != NULL;
}

int vgpu_track_drop_ctx(uintptr_t ctx, void (*fn)(const struct vgpu_track_entry *)) {
    int n = 0;
    struct vgpu_track_entry *dropped = NULL;
    size_t ndropped = 0, capd = 0;
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_cap; i++) {
        struct vgpu_track_entry *e = &g_tab[i];
        if (e->kind <= 0 || e->ctx != ctx || ctx == 0) continue;
        if (ndropped == capd) {
            size_t nc = capd == 0 ? 16 : capd * 2;
            struct vgpu_track_entry *d = realloc(dropped, nc * sizeof(*d));
            if (d == NULL) break;
            dropped = d;
            capd = nc;
        }
        dropped[ndropped++] = *e;
        memset(e, 0, sizeof(*e));
        e->kind = SLOT_DEAD;
        g_live--;
        n++;
    }
    pthread_mutex_unlock(&g_mu);
    for (size_t i = 0; i < ndropped; i++) fn(&dropped[i]);
    free(dropped);
    return n;
}

void vgpu_track_each(int kind, void (*fn)(const struct vgpu_track_entry *, void *), void *arg) {
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_cap; i++)
        if (g_tab[i].kind == kind) fn(&g_tab[i], arg);
    pthread_mutex_unlock(&g_mu);
}

void vgpu_track_clear(void) {
    pthread_mutex_init(&g_mu, NULL);
    free(g_tab);
    g_tab = NULL;
    g_cap = g_used = g_live = 0;
}

size_t vgpu_track_count(void) {
    pthread_mutex_lock(&g_mu);
    size_t n = g_live;
    pthread_mutex_unlock(&g_mu);
    return n;
}
