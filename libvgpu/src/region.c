/*
 * The per-container shared region: creation, attach, process slots, cross-process accounting.
 *
 * Locking: every change of the region (slot registration/removal, charges) happens under
 *   (1) a process-local mutex (threads of this process), and
 *   (2) an open-file-description lock (F_OFD_SETLKW) on the byte just past the layout (offset 2,008,952,
 *       the file's extra byte). The kernel drops it when the holder dies, so a SIGKILLed process can never
 *       keep the region locked. First-time initialisation takes the same kind of lock over the layout's
 *       bytes [0, 2,008,952), the range HAMi-core's lockf covers.
 * The 32-byte `sem` and `sem_postinit` fields are initialised (process-shared, value 1) so that the layout
 * is exactly HAMi-core's; this library does not wait on them.
 * Readers that take no lock (the node monitor) get consistent per-slot usage through the slot seqlock.
 *
 * Depends on the configuration only (config.c): the region is attached lazily, at its first use, with the
 * configuration that process init (process.c) has read by then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

static pthread_mutex_t g_attach_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_rmu = PTHREAD_MUTEX_INITIALIZER;
static vgpu_region_t *g_region;
static int g_fd = -1;
static int g_lockcmd = F_OFD_SETLKW;
static int g_unlockcmd = F_OFD_SETLK;
static pid_t g_pid;       /* pid whose slot is registered (0: none) */
static int g_slot = -1;   /* cached slot index */
static uint64_t g_start;  /* /proc start time of g_pid */
static vgpu_slot_t *g_private_slot;
static int64_t g_last_reclaim_ns;
static int64_t g_last_kernel_note;

/* ------------------------------------------------------------------ /proc helpers */

static int read_stat(pid_t pid, char *state, uint64_t *start) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT || errno == ESRCH ? -1 : -2;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) return -2;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL || p[1] != ' ') return -2;
    p += 2;
    *state = *p;
    /* field 3 is the state; starttime is field 22, i.e. 19 separators further. */
    for (int i = 0; i < 19 && p != NULL; i++) {
        p = strchr(p, ' ');
        if (p != NULL) p++;
    }
    *start = p != NULL ? strtoull(p, NULL, 10) : 0;
    return 0;
}

uint64_t vgpu_proc_start_time(pid_t pid) {
    char st;
    uint64_t start = 0;
    if (read_stat(pid, &st, &start) != 0) return 0;
    return start;
}

int vgpu_pid_dead(pid_t pid, uint64_t start) {
    if (pid <= 0) return 1;
    char st = '?';
    uint64_t now_start = 0;
    int rc = read_stat(pid, &st, &now_start);
    if (rc == -1) return 1;
    if (rc != 0) return 0; /* unreadable: assume alive */
    if (st == 'Z' || st == 'X' || st == 'x') return 1;
    if (start != 0 && now_start != 0 && start != now_start) return 1; /* pid reused */
    return 0;
}

/* ------------------------------------------------------------------ locks */

static int file_lock(int fd, short type, off_t start, off_t len, int wait) {
    for (;;) {
        struct flock fl;
        memset(&fl, 0, sizeof(fl));
        fl.l_type = type;
        fl.l_whence = SEEK_SET;
        fl.l_start = start;
        fl.l_len = len;
        if (fcntl(fd, wait ? g_lockcmd : g_unlockcmd, &fl) == 0) return 0;
        if (errno == EINTR) continue;
        if (errno == EINVAL && g_lockcmd == F_OFD_SETLKW) { /* kernel without OFD locks */
            g_lockcmd = F_SETLKW;
            g_unlockcmd = F_SETLK;
            continue;
        }
        return -1;
    }
}

static void rlock(void) {
    pthread_mutex_lock(&g_rmu);
    if (g_fd >= 0 && file_lock(g_fd, F_WRLCK, VGPU_REGION_SIZE, 1, 1) != 0)
        LOG_ERROR("cannot lock the shared region: %s", strerror(errno));
}

static void runlock(void) {
    if (g_fd >= 0) file_lock(g_fd, F_UNLCK, VGPU_REGION_SIZE, 1, 0);
    pthread_mutex_unlock(&g_rmu);
}

/* ------------------------------------------------------------------ creation and attach */

static void init_region(vgpu_region_t *r) {
    memset((void *)r, 0, sizeof(*r));
    r->major_version = VGPU_REGION_MAJOR;
    r->minor_version = VGPU_REGION_MINOR;
    for (int i = 0; i < VGPU_REGION_DEVICES; i++) {
        r->limit[i] = g_cfg.mem_limit[i];
        r->sm_limit[i] = g_cfg.sm_limit[i];
    }
    sem_init(&r->sem, 1, 1);
    sem_init(&r->sem_postinit, 1, 1);
    r->sm_init_flag = 0;
    r->utilization_switch = 1;
    r->recent_kernel = 2;
    r->priority = g_cfg.priority;
    r->proc_num = 0;
    __atomic_store_n(&r->initialized_flag, VGPU_REGION_MAGIC, __ATOMIC_RELEASE);
}

static vgpu_region_t *attach_private(void) {
    void *m = mmap(NULL, sizeof(vgpu_region_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        LOG_ERROR("cannot map even a private region: %s", strerror(errno));
        abort();
    }
    init_region((vgpu_region_t *)m);
    return (vgpu_region_t *)m;
}

static vgpu_region_t *attach_file(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        LOG_ERROR("cannot open shared region %s: %s; limits apply to this process only", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_uid == geteuid() && (st.st_mode & 0777) != 0666)
        (void)fchmod(fd, 0666); /* other users of the container share the file (no process-wide umask) */
    if (file_lock(fd, F_WRLCK, 0, VGPU_REGION_SIZE, 1) != 0) {
        LOG_ERROR("cannot lock %s for initialisation: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    vgpu_region_t *r = NULL;
    if (fstat(fd, &st) != 0) goto out;
    if ((uint64_t)st.st_size < VGPU_REGION_FILE_SIZE) {
        int32_t magic = 0;
        if (st.st_size >= 4 && pread(fd, &magic, sizeof(magic), 0) == (ssize_t)sizeof(magic) &&
            magic == VGPU_REGION_MAGIC) {
            LOG_ERROR("%s holds an initialised region of %lld bytes (older layout); not touching it; limits "
                      "apply to this process only",
                      path, (long long)st.st_size);
            goto out;
        }
        if (ftruncate(fd, VGPU_REGION_FILE_SIZE) != 0) {
            LOG_ERROR("cannot size %s: %s", path, strerror(errno));
            goto out;
        }
    }
    void *m = mmap(NULL, sizeof(vgpu_region_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        LOG_ERROR("cannot map %s: %s", path, strerror(errno));
        goto out;
    }
    r = (vgpu_region_t *)m;
    if (__atomic_load_n(&r->initialized_flag, __ATOMIC_ACQUIRE) != VGPU_REGION_MAGIC) {
        init_region(r);
        LOG_INFO("created shared region %s", path);
    } else if (r->major_version != VGPU_REGION_MAJOR || r->minor_version == 1) {
        LOG_ERROR("%s has layout version %u.%u, expected 1.2; limits apply to this process only", path,
                  r->major_version, r->minor_version);
        munmap(m, sizeof(vgpu_region_t));
        r = NULL;
    } else {
        for (int i = 0; i < VGPU_REGION_DEVICES; i++)
            if (r->limit[i] != g_cfg.mem_limit[i] || r->sm_limit[i] != g_cfg.sm_limit[i]) {
                LOG_INFO("device %d: region limits (%llu B, %llu%%) differ from this process's environment; "
                         "the region's values apply",
                         i, (unsigned long long)r->limit[i], (unsigned long long)r->sm_limit[i]);
                break;
            }
    }
out:
    file_lock(fd, F_UNLCK, 0, VGPU_REGION_SIZE, 0);
    if (r == NULL) {
        close(fd);
        return NULL;
    }
    g_fd = fd;
    return r;
}

vgpu_region_t *vgpu_region(void) {
    vgpu_region_t *r = __atomic_load_n(&g_region, __ATOMIC_ACQUIRE);
    if (r != NULL) return r;
    pthread_mutex_lock(&g_attach_mu);
    if (g_region == NULL) {
        r = attach_file(g_cfg.cache_path);
        if (r == NULL) r = attach_private();
        __atomic_store_n(&g_region, r, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_attach_mu);
    return g_region;
}

/* ------------------------------------------------------------------ slots */

static void seq_begin(vgpu_slot_t *s) { __atomic_fetch_add(&s->seqlock, 1, __ATOMIC_ACQ_REL); }
static void seq_end(vgpu_slot_t *s) { __atomic_fetch_add(&s->seqlock, 1, __ATOMIC_RELEASE); }

static int proc_num_clamped(const vgpu_region_t *r) {
    int n = __atomic_load_n(&r->proc_num, __ATOMIC_ACQUIRE);
    if (n < 0) return 0;
    return n > VGPU_REGION_SLOTS ? VGPU_REGION_SLOTS : n;
}

static vgpu_slot_t *my_slot_locked(void) {
    if (g_private_slot != NULL) return g_private_slot;
    vgpu_region_t *r = g_region;
    pid_t pid = getpid();
    if (g_pid != pid) return NULL;
    int n = proc_num_clamped(r);
    if (g_slot >= 0 && g_slot < n && r->procs[g_slot].pid == pid && r->procs[g_slot].unused[0] == g_start)
        return &r->procs[g_slot];
    for (int i = 0; i < n; i++)
        if (r->procs[i].pid == pid && r->procs[i].unused[0] == g_start) {
            g_slot = i;
            return &r->procs[i];
        }
    return NULL;
}

static void remove_slot_locked(int i) {
    vgpu_region_t *r = g_region;
    int n = proc_num_clamped(r);
    if (i < 0 || i >= n) return;
    int last = n - 1;
    if (i != last) {
        vgpu_slot_t *dst = &r->procs[i];
        seq_begin(dst);
        uint64_t seq = dst->seqlock;
        memcpy((void *)dst, &r->procs[last], sizeof(*dst));
        dst->seqlock = seq;
        seq_end(dst);
    }
    memset((void *)&r->procs[last], 0, sizeof(r->procs[last]));
    __atomic_store_n(&r->proc_num, last, __ATOMIC_RELEASE);
}

static int reclaim_dead_locked(void) {
    vgpu_region_t *r = g_region;
    pid_t me = getpid();
    int removed = 0;
    for (int i = proc_num_clamped(r) - 1; i >= 0; i--) {
        vgpu_slot_t *s = &r->procs[i];
        if (s->pid == me && s->unused[0] == g_start && g_pid == me) continue;
        if (s->pid == 0 || vgpu_pid_dead(s->pid, s->unused[0])) {
            LOG_INFO("reclaiming slot of exited process %d (%llu bytes on device 0)", s->pid,
                     (unsigned long long)s->used[0].total);
            remove_slot_locked(i);
            removed++;
        }
    }
    g_last_reclaim_ns = vgpu_now_ns();
    return removed;
}

static vgpu_slot_t *register_locked(void) {
    vgpu_region_t *r = g_region;
    pid_t pid = getpid();
    g_pid = pid;
    g_start = vgpu_proc_start_time(pid);
    g_slot = -1;
    reclaim_dead_locked();
    int n = proc_num_clamped(r);
    int idx = -1;
    for (int i = 0; i < n; i++)
        if (r->procs[i].pid == pid) { /* stale slot of a previous process with our pid */
            idx = i;
            break;
        }
    vgpu_slot_t *s;
    if (idx < 0 && n >= VGPU_REGION_SLOTS) {
        LOG_ERROR("shared region has no free process slot (%d in use); this process's usage is private", n);
        g_private_slot = calloc(1, sizeof(vgpu_slot_t));
        if (g_private_slot == NULL) abort();
        s = g_private_slot;
    } else {
        if (idx < 0) idx = n;
        s = &r->procs[idx];
        seq_begin(s);
        uint64_t seq = s->seqlock;
        memset((void *)s, 0, sizeof(*s));
        s->seqlock = seq;
        g_slot = idx;
    }
    s->pid = pid;
    s->hostpid = 0;
    s->unused[0] = g_start;
    s->status = 1;
    if (s != g_private_slot) {
        seq_end(s);
        if (idx == n) __atomic_store_n(&r->proc_num, n + 1, __ATOMIC_RELEASE);
    }
    LOG_DEBUG("registered slot %d for pid %d", g_slot, (int)pid);
    return s;
}

void vgpu_region_register(void) {
    vgpu_region();
    if (g_pid == getpid() && g_pid != 0) return;
    rlock();
    if (my_slot_locked() == NULL) register_locked();
    runlock();
}

static vgpu_slot_t *ensure_slot_locked(void) {
    vgpu_slot_t *s = my_slot_locked();
    return s != NULL ? s : register_locked();
}

static uint64_t usage_locked(int dev) {
    vgpu_region_t *r = g_region;
    uint64_t sum = 0;
    int n = proc_num_clamped(r);
    for (int i = 0; i < n; i++) sum += r->procs[i].used[dev].total;
    if (g_private_slot != NULL) sum += g_private_slot->used[dev].total;
    return sum;
}

static uint64_t *kind_field(vgpu_devmem_t *m, int kind) {
    switch (kind) {
    case VGPU_MEM_CONTEXT:
        return &m->context_size;
    case VGPU_MEM_MODULE:
        return &m->module_size;
    default:
        return &m->data_size;
    }
}

static int over_limit(uint64_t usage, uint64_t bytes, uint64_t limit) {
    return bytes > limit || usage > limit - bytes;
}

int vgpu_region_charge(int dev, uint64_t bytes, int kind, int check_limit) {
    if (dev < 0 || dev >= VGPU_REGION_DEVICES) return 0;
    vgpu_region_register();
    rlock();
    vgpu_region_t *r = g_region;
    vgpu_slot_t *s = ensure_slot_locked();
    if (check_limit) {
        uint64_t limit = __atomic_load_n(&r->limit[dev], __ATOMIC_RELAXED);
        if (limit != 0) {
            uint64_t u = usage_locked(dev);
            if (over_limit(u, bytes, limit) && reclaim_dead_locked() > 0) {
                s = ensure_slot_locked();
                u = usage_locked(dev);
            }
            if (over_limit(u, bytes, limit)) {
                runlock();
                LOG_WARN("device %d OOM: %llu used + %llu requested > %llu limit", dev, (unsigned long long)u,
                         (unsigned long long)bytes, (unsigned long long)limit);
                return -1;
            }
        }
    }
    seq_begin(s);
    vgpu_devmem_t *m = &s->used[dev];
    uint64_t *f = kind_field(m, kind);
    __atomic_store_n(f, *f + bytes, __ATOMIC_RELAXED);
    __atomic_store_n(&m->total, m->total + bytes, __ATOMIC_RELAXED);
    seq_end(s);
    runlock();
    return 0;
}

static uint64_t sat_sub(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

void vgpu_region_uncharge(int dev, uint64_t bytes, int kind) {
    if (dev < 0 || dev >= VGPU_REGION_DEVICES || bytes == 0) return;
    vgpu_region_register();
    rlock();
    vgpu_slot_t *s = ensure_slot_locked();
    seq_begin(s);
    vgpu_devmem_t *m = &s->used[dev];
    uint64_t *f = kind_field(m, kind);
    __atomic_store_n(f, sat_sub(*f, bytes), __ATOMIC_RELAXED);
    __atomic_store_n(&m->total, sat_sub(m->total, bytes), __ATOMIC_RELAXED);
    seq_end(s);
    runlock();
}

int vgpu_region_reclaim_dead(void) {
    vgpu_region();
    rlock();
    int n = reclaim_dead_locked();
    runlock();
    return n;
}

uint64_t vgpu_region_usage(int dev) {
    if (dev < 0 || dev >= VGPU_REGION_DEVICES) return 0;
    vgpu_region();
    rlock();
    if (vgpu_now_ns() - g_last_reclaim_ns > 1000000000LL) reclaim_dead_locked();
    uint64_t u = usage_locked(dev);
    runlock();
    return u;
}

uint64_t vgpu_region_limit(int dev) {
    if (dev < 0 || dev >= VGPU_REGION_DEVICES) return 0;
    return __atomic_load_n(&vgpu_region()->limit[dev], __ATOMIC_RELAXED);
}

static uint64_t now_ms(void) { return (uint64_t)(vgpu_now_ns() / 1000000); }

void vgpu_region_set_sm_util(int dev, uint64_t percent, int saturated) {
    if (dev < 0 || dev >= VGPU_REGION_DEVICES) return;
    vgpu_region_register();
    rlock();
    vgpu_slot_t *s = ensure_slot_locked();
    __atomic_store_n(&s->device_util[dev].sm_util, percent, __ATOMIC_RELAXED);
    __atomic_store_n(&s->device_util[dev].unused[1], (uint64_t)(saturated != 0), __ATOMIC_RELAXED);
    __atomic_store_n(&s->device_util[dev].unused[0], now_ms(), __ATOMIC_RELAXED);
    runlock();
}

uint64_t vgpu_region_others_sm_util(int dev, uint64_t *sum_unsat, int *n_sat) {
    uint64_t unsat = 0;
    int nsat = 0;
    if (sum_unsat != NULL) *sum_unsat = 0;
    if (n_sat != NULL) *n_sat = 0;
    if (dev < 0 || dev >= VGPU_REGION_DEVICES) return 0;
    vgpu_region_t *r = vgpu_region();
    uint64_t sum = 0, now = now_ms();
    rlock();
    vgpu_slot_t *me = my_slot_locked();
    int n = proc_num_clamped(r);
    for (int i = 0; i < n; i++) {
        vgpu_slot_t *s = &r->procs[i];
        if (s == me || s->status != 1) continue;
        uint64_t at = s->device_util[dev].unused[0];
        if (at == 0 || now - at > 1000) continue;
        uint64_t u = s->device_util[dev].sm_util;
        sum += u;
        if (s->device_util[dev].unused[1])
            nsat++;
        else
            unsat += u;
    }
    runlock();
    if (sum_unsat != NULL) *sum_unsat = unsat;
    if (n_sat != NULL) *n_sat = nsat;
    return sum;
}

void vgpu_region_set_hostpid(int hostpid) {
    vgpu_region_register();
    rlock();
    vgpu_slot_t *s = ensure_slot_locked();
    __atomic_store_n(&s->hostpid, hostpid, __ATOMIC_RELAXED);
    runlock();
}

int vgpu_region_sibling_hostpids(unsigned int *out, int cap) {
    vgpu_region_t *r = vgpu_region();
    int k = 0;
    rlock();
    vgpu_slot_t *me = my_slot_locked();
    int n = proc_num_clamped(r);
    for (int i = 0; i < n && k < cap; i++) {
        int hp = __atomic_load_n(&r->procs[i].hostpid, __ATOMIC_RELAXED);
        if (&r->procs[i] != me && hp > 0) out[k++] = (unsigned int)hp;
    }
    runlock();
    return k;
}

void vgpu_region_note_kernel(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    int64_t now = ts.tv_sec;
    if (__atomic_load_n(&g_last_kernel_note, __ATOMIC_RELAXED) == now) return;
    __atomic_store_n(&g_last_kernel_note, now, __ATOMIC_RELAXED);
    vgpu_region_t *r = vgpu_region();
    uint64_t cur = __atomic_load_n(&r->last_kernel_time, __ATOMIC_RELAXED);
    while (cur < (uint64_t)now &&
           !__atomic_compare_exchange_n(&r->last_kernel_time, &cur, (uint64_t)now, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
}

void vgpu_region_atfork_child(void) {
    pthread_mutex_init(&g_rmu, NULL);
    pthread_mutex_init(&g_attach_mu, NULL);
    g_pid = 0;
    g_slot = -1;
    g_private_slot = NULL; /* the parent's heap copy; leaked in the child on purpose */
    if (g_fd >= 0) {
        /* The inherited descriptor shares the parent's open file description and hence its locks. */
        close(g_fd);
        g_fd = open(g_cfg.cache_path, O_RDWR | O_CLOEXEC);
        if (g_fd < 0) LOG_ERROR("cannot reopen the shared region after fork: %s", strerror(errno));
    }
}

void vgpu_region_reset_for_tests(void) {
    if (g_region != NULL) munmap((void *)g_region, sizeof(vgpu_region_t));
    if (g_fd >= 0) close(g_fd);
    g_region = NULL;
    g_fd = -1;
    g_pid = 0;
    g_slot = -1;
    free(g_private_slot);
    g_private_slot = NULL;
}

void vgpu_region_at_exit(void) {
    if (g_region == NULL || g_pid != getpid() || g_pid == 0) return;
    if (g_private_slot != NULL) return;
    rlock();
    vgpu_slot_t *s = my_slot_locked();
    if (s != NULL) remove_slot_locked((int)(s - g_region->procs));
    g_pid = 0;
    runlock();
}
