/*
 * Process lifecycle: the one-time init (vgpu_init, the entry every hook calls before anything else), the
 * fork handler and the exit handler. This is the only file that knows every module; the modules below it
 * form layers, and each calls only into its own layer or the ones under it:
 *
 *   0  config.c                environment contract, logging, monotonic clock
 *   1  real.c                  glibc's dlsym, the real libcuda and NVML tables
 *   2  region.c, track.c       shared region (cross-process accounting); this process's allocation table
 *   3  device.c, nvproc.c      CUDA ordinal -> region index (asks the driver, publishes UUIDs in the region);
 *                              NVML's process views: process list, host PID, per-process SM utilisation
 *   4  smctl.c, smmath.c, smcapture.c   SM share controller (times launches through the driver, shares via
 *                              the region); its pure maths (interval union, bucket, time-slice inflation);
 *                              stream-capture bookkeeping
 *   5  hooks_mem.c, hooks_ctx.c, hooks_launch.c, hooks_sync.c, hooks_capture.c   the exported hooks
 *   6  intercept.c, dlsym_x86_64.S               hook tables, dlsym and cuGetProcAddress answers, cuInit
 *   7  process.c               this file
 *
 * The one call upwards: layers 5 and 6 call vgpu_init() (through REQUIRE_REAL) before they touch anything.
 * tests/check_layers.sh enforces the table on the object files' undefined symbols.
 *
 * Init order (once, at the first hook call; a dlsym lookup never runs it: it only reads the configuration,
 * through its own once-guard, because dlopen under the init mutex from a lookup made by a library
 * constructor in another thread could deadlock on the loader lock):
 *   1. config: every other layer reads g_cfg (log level, library paths, limits);
 *   2. real libcuda: the intercept tables are keyed by the real driver's addresses;
 *   3. intercept tables: dlsym and cuGetProcAddress answers need them;
 *   4. the fork handler.
 * Deliberately lazy, not done here: NVML (loaded at its first use), the region (attached at the first charge
 * or cuInit, so a process that only resolves symbols never creates the cache file), the device map (needs a
 * successful cuInit) and the SM controller (first throttled launch).
 *
 * Fork: only a child handler. The parent takes no locks before fork: a fork can come from a thread that is
 * inside a hook holding one of them (the SM controller keeps a device's mutex across the launch), and it
 * would deadlock on itself. Instead the child re-initialises every mutex it inherited (init, configuration,
 * hook-table sort, NVML loading, region attach and lock, allocation table, device map, SM controllers,
 * primary contexts, pools, cuInit post-init) and drops the state that belongs to the parent (its region slot
 * and file lock, launch records, allocation table); per-pid state (region slot, host PID, cuInit post-init)
 * is redone by the child on its next CUDA call.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "vgpu.h"

static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_inited;

static void atfork_child(void) {
    vgpu_config_atfork_child();
    vgpu_real_atfork_child();
    vgpu_region_atfork_child();
    vgpu_track_clear();
    vgpu_devices_atfork_child();
    vgpu_sm_atfork_child();
    vgpu_ctx_atfork_child();
    vgpu_mem_atfork_child();
    vgpu_intercept_atfork_child();
    pthread_mutex_init(&g_init_mu, NULL);
}

static void do_init(void) {
    vgpu_config_load();
    vgpu_real_load();
    vgpu_intercept_init();
    pthread_atfork(NULL, NULL, atfork_child);
    LOG_DEBUG("initialised (%s)", g_cfg.disabled ? "CUDA_DISABLE_CONTROL: pass-through" : "control on");
}

int vgpu_init(void) {
    if (__atomic_load_n(&g_inited, __ATOMIC_ACQUIRE)) return 1;
    if (vgpu_t_in_init) return 0; /* re-entered from the driver's constructors while loading it */
    pthread_mutex_lock(&g_init_mu);
    if (!g_inited) {
        vgpu_t_in_init = 1;
        do_init();
        vgpu_t_in_init = 0;
        __atomic_store_n(&g_inited, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_init_mu);
    return 1;
}

/* A process that exits normally gives its region slot back (a killed one is reclaimed by the others). */
__attribute__((destructor)) static void process_exit(void) { vgpu_region_at_exit(); }
