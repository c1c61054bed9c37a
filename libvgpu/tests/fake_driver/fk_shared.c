/*
 * Configuration, the shared GPU state and its lock, the process table and dead-process reaping.
 *
 * Environment (read once per process):
 *   FAKE_GPU_STATE        path of the shared state file: every process naming it uses the same GPUs (one
 *                         device timeline, one memory, one NVML process list). Unset: a private GPU.
 *   FAKE_GPU_COUNT (2), FAKE_GPU_MEM (16g), FAKE_GPU_SM (80)   the devices (the state's creator decides)
 *   FAKE_TIMESLICE_US (2000)      compute time slice between processes' contexts (the creator decides)
 *   FAKE_NVML_SAMPLE_MS (100)     NVML utilisation sample period (the creator decides)
 *   FAKE_GPU_WAVE_US (100)        one wave of blocks: a kernel of B blocks takes ceil(B / SMs) waves
 *   FAKE_GRAPH_US (1000)          run time of a graph built with cuGraphCreate (captured graphs: their kernels)
 *   FAKE_QUEUE_MS (100)           a launch blocks while its stream has more queued work than this
 *   FAKE_COPY_MBPS (10000)        copy engine bandwidth (MB/s) for cuMemcpy*
 *   FAKE_CTX_BYTES (64m)          device memory a context costs
 *   FAKE_POOL_GRANULARITY (2m)    stream-ordered pools grow by multiples of this
 *   FAKE_NVML_PID_OFFSET (0)      simulated PID namespace: NVML reports getpid() + offset (the "host PID")
 *   FAKE_NVML_ORDER ("1,0")       NVML index i is CUDA ordinal order[i]
 *   FAKE_PROCADDR_ALT (0)         cuGetProcAddress hands out addresses that differ from the exports
 *   FAKE_PROCADDR_LOG             append "name version flags result" per cuGetProcAddress call to this file
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fk.h"

#define FK_MAGIC 0x6b66677075763032ull /* "kfgpuv02" */

struct fk_config fk_cfg;
struct fk_shared *fk_sh;
int fk_self = -1;
void (*fk_on_fork_child)(void);

static pthread_once_t map_once = PTHREAD_ONCE_INIT;
static pid_t registered_pid;
static uint64_t calls;

static uint64_t env_size(const char *name, uint64_t dflt) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') return dflt;
    char *end;
    uint64_t x = strtoull(v, &end, 0);
    switch (*end) {
    case 'k': case 'K': x <<= 10; break;
    case 'm': case 'M': x <<= 20; break;
    case 'g': case 'G': x <<= 30; break;
    default: break;
    }
    return x;
}

int64_t fk_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void read_config(void) {
    fk_cfg.wave_ns = (int64_t)env_size("FAKE_GPU_WAVE_US", 100) * 1000;
    fk_cfg.graph_ns = (int64_t)env_size("FAKE_GRAPH_US", 1000) * 1000;
    fk_cfg.queue_ns = (int64_t)env_size("FAKE_QUEUE_MS", 100) * 1000000;
    fk_cfg.ctx_bytes = env_size("FAKE_CTX_BYTES", 64ull << 20);
    fk_cfg.pool_gran = env_size("FAKE_POOL_GRANULARITY", 2ull << 20);
    if (fk_cfg.pool_gran == 0) fk_cfg.pool_gran = 1;
    fk_cfg.copy_bytes_per_us = env_size("FAKE_COPY_MBPS", 10000);
    if (fk_cfg.copy_bytes_per_us == 0) fk_cfg.copy_bytes_per_us = 1;
    fk_cfg.pid_offset = (int)env_size("FAKE_NVML_PID_OFFSET", 0);
    fk_cfg.procaddr_alt = (int)env_size("FAKE_PROCADDR_ALT", 0);
    fk_cfg.procaddr_log = getenv("FAKE_PROCADDR_LOG");
    for (int i = 0; i < FK_MAX_DEV; i++) fk_cfg.nvml_order[i] = i;
}

static void init_state(struct fk_shared *sh) {
    memset(sh, 0, sizeof(*sh));
    int ndev = (int)env_size("FAKE_GPU_COUNT", 2);
    sh->ndev = ndev < 1 ? 1 : ndev > FK_MAX_DEV ? FK_MAX_DEV : ndev;
    sh->timeslice_ns = (int64_t)env_size("FAKE_TIMESLICE_US", 2000) * 1000;
    if (sh->timeslice_ns <= 0) sh->timeslice_ns = 1000;
    sh->sample_ns = (int64_t)env_size("FAKE_NVML_SAMPLE_MS", 100) * 1000000;
    if (sh->sample_ns <= 0) sh->sample_ns = 100000000;
    uint64_t mem = env_size("FAKE_GPU_MEM", 16ull << 30);
    int sm = (int)env_size("FAKE_GPU_SM", 80);
    for (int d = 0; d < FK_MAX_DEV; d++) {
        struct fk_sdev *dv = &sh->devs[d];
        dv->total = mem;
        dv->sm = sm > 0 ? sm : 1;
        dv->cur = -1;
        for (int s = 0; s < FK_MAX_STREAMS; s++) dv->streams[s].owner = -1;
    }
    for (int e = 0; e < FK_MAX_EVENTS; e++) sh->events[e].owner = -1;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&sh->mu, &a);
    pthread_mutexattr_destroy(&a);
    __atomic_store_n(&sh->magic, FK_MAGIC, __ATOMIC_RELEASE);
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "fake GPU: %s %s: %s\n", what, path != NULL ? path : "", strerror(errno));
    abort();
}

static void atfork_child(void) {
    /* A fork child is a new process on the same GPU: it registers its own slot and has no CUDA state. */
    registered_pid = 0;
    fk_self = -1;
    __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
    if (fk_on_fork_child != NULL) fk_on_fork_child();
}

static void map_state(void) {
    read_config();
    const char *order = getenv("FAKE_NVML_ORDER");
    if (order != NULL) {
        int i = 0;
        for (const char *p = order; *p && i < FK_MAX_DEV; i++) {
            fk_cfg.nvml_order[i] = atoi(p);
            const char *c = strchr(p, ',');
            if (c == NULL) break;
            p = c + 1;
        }
    }
    const char *path = getenv("FAKE_GPU_STATE");
    size_t size = sizeof(struct fk_shared);
    if (path == NULL || *path == '\0') {
        fk_sh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (fk_sh == MAP_FAILED) die("cannot map", "anonymous state");
        init_state(fk_sh);
    } else {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0) die("cannot open FAKE_GPU_STATE", path);
        if (flock(fd, LOCK_EX) != 0) die("cannot lock", path);
        struct stat st;
        if (fstat(fd, &st) != 0) die("cannot stat", path);
        if ((size_t)st.st_size < size && ftruncate(fd, (off_t)size) != 0) die("cannot size", path);
        fk_sh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (fk_sh == MAP_FAILED) die("cannot map", path);
        if (__atomic_load_n(&fk_sh->magic, __ATOMIC_ACQUIRE) != FK_MAGIC) init_state(fk_sh);
        flock(fd, LOCK_UN);
        close(fd);
    }
    for (int i = 0; i < fk_sh->ndev; i++) fk_cfg.nvml_order[i] %= fk_sh->ndev;
    pthread_atfork(NULL, NULL, atfork_child);
}

/* /proc/<pid>/stat: state and start time (field 22), to tell a live process from a dead or reused PID. */
static int proc_stat(int pid, char *state, uint64_t *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] == '\0') return -1;
    p += 2;
    *state = *p;
    for (int field = 3; field < 22 && p != NULL; field++) {
        p = strchr(p, ' ');
        if (p != NULL) p++;
    }
    *start = p != NULL ? strtoull(p, NULL, 10) : 0;
    return 0;
}

static int proc_dead(const struct fk_sproc *p) {
    char state;
    uint64_t start;
    if (kill(p->pid, 0) != 0 && errno == ESRCH) return 1;
    if (proc_stat(p->pid, &state, &start) != 0) return 1;
    /* The driver releases a process's contexts when its files close, so a zombie holds nothing. */
    return state == 'Z' || state == 'X' || start != p->start_time;
}

void fk_reap_locked(int force) {
    int64_t now = fk_now();
    struct fk_sdev *d0 = &fk_sh->devs[0];
    if (!force && now - d0->last_reap < 100000000) return;
    d0->last_reap = now;
    for (int i = 0; i < FK_MAX_PROC; i++) {
        struct fk_sproc *p = &fk_sh->procs[i];
        if (p->pid == 0 || i == fk_self || !proc_dead(p)) continue;
        fk_drop_proc_locked(i);
        for (int d = 0; d < fk_sh->ndev; d++) {
            struct fk_sdev *dv = &fk_sh->devs[d];
            dv->used = p->mem[d] > dv->used ? 0 : dv->used - p->mem[d];
        }
        memset(p, 0, sizeof(*p));
    }
}

static void register_locked(void) {
    pid_t pid = getpid();
    char state;
    uint64_t start = 0;
    proc_stat(pid, &state, &start);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < FK_MAX_PROC; i++) {
            struct fk_sproc *p = &fk_sh->procs[i];
            if (p->pid != 0 && !(p->pid == pid && p->start_time != start)) continue;
            if (p->pid == pid) { /* our PID, left by a dead process: its resources go first */
                fk_drop_proc_locked(i);
                for (int d = 0; d < fk_sh->ndev; d++) fk_sh->devs[d].used -= p->mem[d];
            }
            memset(p, 0, sizeof(*p));
            p->pid = pid;
            p->host_pid = pid + fk_cfg.pid_offset;
            p->start_time = start;
            fk_self = i;
            registered_pid = pid;
            return;
        }
        fk_reap_locked(1);
    }
    fprintf(stderr, "fake GPU: more than %d processes on the GPU\n", FK_MAX_PROC);
    abort();
}

void fk_lock(void) {
    pthread_once(&map_once, map_state);
    int r = pthread_mutex_lock(&fk_sh->mu);
    if (r == EOWNERDEAD) pthread_mutex_consistent(&fk_sh->mu); /* a process died holding it (kill -9) */
    if (registered_pid != getpid()) register_locked();
}

void fk_unlock(void) { pthread_mutex_unlock(&fk_sh->mu); }

int fk_valid_dev(int d) {
    pthread_once(&map_once, map_state);
    return d >= 0 && d < fk_sh->ndev;
}

int fk_phys_take(int dev, uint64_t bytes) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    if (bytes > d->total - d->used) fk_reap_locked(1); /* a dead process's memory comes back first */
    if (bytes > d->total - d->used) return -1;
    d->used += bytes;
    fk_sh->procs[fk_self].mem[dev] += bytes;
    return 0;
}

void fk_phys_give(int dev, uint64_t bytes) {
    struct fk_sdev *d = &fk_sh->devs[dev];
    uint64_t *mine = &fk_sh->procs[fk_self].mem[dev];
    if (bytes > *mine) bytes = *mine;
    *mine -= bytes;
    d->used = bytes > d->used ? 0 : d->used - bytes;
}

uint64_t fk_serial(void) { return ++fk_sh->next_serial; }

void fk_count_call(void) { __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------------ test hooks (not part of CUDA) */

EXPORT uint64_t fakeGpuGetCallCount(void) { return __atomic_load_n(&calls, __ATOMIC_RELAXED); }

EXPORT int fakeGpuGetStats(int dev, struct fake_gpu_stats *out) {
    if (!fk_valid_dev(dev) || out == NULL) return -1;
    fk_lock();
    fk_advance_locked(dev);
    struct fk_sdev *d = &fk_sh->devs[dev];
    out->busy_ns = d->busy_ns;
    out->first_start_ns = d->first_start;
    out->last_end_ns = d->last_end;
    out->kernels = d->kernels;
    out->mem_used = d->used;
    out->mem_total = d->total;
    fk_unlock();
    return 0;
}

EXPORT int fakeGpuGetProcStats(int dev, struct fake_gpu_proc_stats *out) {
    if (!fk_valid_dev(dev) || out == NULL) return -1;
    fk_lock();
    fk_advance_locked(dev);
    struct fk_sproc *p = &fk_sh->procs[fk_self];
    out->busy_ns = p->busy_ns[dev];
    out->first_start_ns = p->first_start[dev];
    out->last_end_ns = p->last_end[dev];
    out->kernels = p->kernels[dev];
    out->mem_used = p->mem[dev];
    out->host_pid = p->host_pid;
    out->now_ns = fk_sh->devs[dev].T;
    fk_unlock();
    return 0;
}

EXPORT int fakeGpuReap(void) {
    pthread_once(&map_once, map_state);
    fk_lock();
    fk_reap_locked(1);
    int n = 0;
    for (int i = 0; i < FK_MAX_PROC; i++) n += fk_sh->procs[i].pid != 0;
    fk_unlock();
    return n;
}
