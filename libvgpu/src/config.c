/* Environment contract (read once at init), logging to stderr and the monotonic clock. The bottom layer. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vgpu.h"

struct vgpu_config g_cfg = {.log_level = VGPU_LOG_WARN, .priority = 1};
__thread int vgpu_t_in_init;

/* A mutex and a flag rather than pthread_once: a fork child can re-initialise them (a pthread_once left
 * running by another thread of the parent would block the child forever). */
static pthread_mutex_t g_cfg_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_cfg_loaded;

void vgpu_config_load(void) {
    if (__atomic_load_n(&g_cfg_loaded, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&g_cfg_mu);
    if (!g_cfg_loaded) {
        vgpu_config_from_env(&g_cfg);
        __atomic_store_n(&g_cfg_loaded, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_cfg_mu);
}

void vgpu_config_atfork_child(void) { pthread_mutex_init(&g_cfg_mu, NULL); }

static uint64_t suffix_multiplier(char c) {
    switch (c) {
    case 'k':
    case 'K':
        return 1ull << 10;
    case 'm':
    case 'M':
        return 1ull << 20;
    case 'g':
    case 'G':
        return 1ull << 30;
    default:
        return 1;
    }
}

int vgpu_parse_size(const char *text, uint64_t *out) {
    *out = 0;
    if (text == NULL || *text == '\0') return 0;
    if (strchr(text, '-') != NULL) return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 0);
    if (end == text) return -1;
    if (errno == ERANGE) return -1;
    /* HAMi-core's reading: the number prefix times the multiplier of the string's last character. */
    size_t len = strlen(text);
    uint64_t mult = suffix_multiplier(text[len - 1]);
    int strict = (*end == '\0') || (end[1] == '\0' && suffix_multiplier(end[0]) != 1);
    if (mult != 1 && value > UINT64_MAX / mult) return -1; /* overflow: no limit */
    *out = (uint64_t)value * mult;
    return strict ? 0 : -1;
}

int vgpu_env_true(const char *name) {
    const char *v = getenv(name);
    if (v == NULL) return 0;
    return strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcasecmp(v, "yes") == 0 ||
           strcasecmp(v, "on") == 0;
}

static uint64_t env_size(const char *name) {
    const char *v = getenv(name);
    uint64_t out = 0;
    if (v == NULL) return 0;
    if (vgpu_parse_size(v, &out) != 0)
        LOG_ERROR("%s=\"%s\" is not <integer>[k|m|g]; using %llu as HAMi-core would", name, v,
                  (unsigned long long)out);
    return out;
}

static void copy_env(char *dst, size_t cap, const char *name, const char *fallback) {
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') v = fallback;
    snprintf(dst, cap, "%s", v);
}

void vgpu_config_from_env(struct vgpu_config *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    const char *lvl = getenv("LIBCUDA_LOG_LEVEL");
    cfg->log_level = VGPU_LOG_WARN;
    if (lvl != NULL && *lvl != '\0') {
        int l = atoi(lvl);
        cfg->log_level = l < VGPU_LOG_ERROR ? VGPU_LOG_ERROR : (l > VGPU_LOG_DEBUG ? VGPU_LOG_DEBUG : l);
    }
    /* Logging below uses g_cfg.log_level; make it effective while parsing. */
    g_cfg.log_level = cfg->log_level;
    cfg->disabled = vgpu_env_true("CUDA_DISABLE_CONTROL");

    uint64_t global = env_size("CUDA_DEVICE_MEMORY_LIMIT");
    uint64_t sm_global = env_size("CUDA_DEVICE_SM_LIMIT");
    char name[64];
    for (int i = 0; i < VGPU_MAX_DEVICES; i++) {
        snprintf(name, sizeof(name), "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        uint64_t per = env_size(name);
        cfg->mem_limit[i] = per > 0 ? per : global;
        snprintf(name, sizeof(name), "CUDA_DEVICE_SM_LIMIT_%d", i);
        uint64_t sm = env_size(name);
        if (sm == 0) sm = sm_global;
        if (sm == 0 || sm > 100) sm = 100;
        cfg->sm_limit[i] = sm;
    }
    const char *pol = getenv("GPU_CORE_UTILIZATION_POLICY");
    cfg->policy = VGPU_POLICY_DEFAULT;
    if (pol != NULL && strcasecmp(pol, "force") == 0) cfg->policy = VGPU_POLICY_FORCE;
    if (pol != NULL && strcasecmp(pol, "disable") == 0) cfg->policy = VGPU_POLICY_DISABLE;
    const char *prio = getenv("CUDA_TASK_PRIORITY");
    cfg->priority = (prio != NULL && *prio != '\0') ? atoi(prio) : 1;
    cfg->oversubscribe = vgpu_env_true("CUDA_OVERSUBSCRIBE");
    copy_env(cfg->cache_path, sizeof(cfg->cache_path), "CUDA_DEVICE_MEMORY_SHARED_CACHE", "/tmp/cudevshr.cache");
    copy_env(cfg->libcuda, sizeof(cfg->libcuda), "KUBE_VGPU_REAL_LIBCUDA", "libcuda.so.1");
    copy_env(cfg->libnvml, sizeof(cfg->libnvml), "KUBE_VGPU_REAL_LIBNVML", "libnvidia-ml.so.1");
}

void vgpu_log(int level, const char *fmt, ...) {
    if (level > g_cfg.log_level) return;
    static const char *names[] = {"", "ERROR", "WARN", "INFO", "DEBUG"};
    char buf[1024];
    int n = snprintf(buf, sizeof(buf), "[kube-vgpu %s(%d:%ld)] ", names[level], (int)getpid(),
                     (long)syscall(SYS_gettid));
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(buf) - 2) len = sizeof(buf) - 2;
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

int64_t vgpu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
