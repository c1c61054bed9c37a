/*
 * Test program for several processes (and containers) on one shared fake GPU, with libvgpu preloaded.
 * Subcommands print key=value lines; failures print "FAIL ..." on stderr and exit 1.
 *   agent                         reads commands from stdin, one per line, answers each with key=value lines
 *                                 and "ok" (commands: retain, alloc MIB, free, async MIB, async_free, sync,
 *                                 info, stats)
 *   churn ITERS KIB [every]        ITERS x (cuMemAlloc KIB, cuMemFree); prints progress=i every `every`
 *   waits SECONDS GRID COPY_KIB    kernels on two streams handing over through events, with a copy between
 *                                 each pair: prints this process's kernel share of the device
 *   streams SECONDS GRID N        kernels round-robin over N independent streams (they overlap)
 *   capture LAUNCHES              a GLOBAL-mode capture on one thread while another thread launches
 *   cudart LIBCUDART              loads the CUDA runtime and initialises it (cudaGetDeviceCount)
 *   evtime KERNELS GRID           event-timed span of KERNELS kernels next to this process's kernel time
 *   capture_rules                 the capture-mode rules of the driver, case by case
 *   nvml                          NVML's process list and per-process utilisation samples
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../src/driver_api.h"
#include "fake_driver/fake_gpu.h"
#include "fake_driver/fk.h"

#include "scenario.h"
#define OK(call)                                                                                             \
    do {                                                                                                     \
        CUresult rc_ = (call);                                                                               \
        CHECK(rc_ == CUDA_SUCCESS, "%s failed: %d", #call, (int)rc_);                                        \
    } while (0)

static CUfunction const kFunc = (CUfunction)(uintptr_t)0x1000;

static CUcontext use_device(int dev) {
    CUcontext ctx = NULL;
    OK(cuInit(0));
    OK(cuDevicePrimaryCtxRetain(&ctx, dev));
    OK(cuCtxSetCurrent(ctx));
    return ctx;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void print_proc_stats(void) {
    fake_gpu_get_proc_stats_fn st = (fake_gpu_get_proc_stats_fn)dlsym(RTLD_DEFAULT, "fakeGpuGetProcStats");
    CHECK(st != NULL, "fakeGpuGetProcStats not found");
    struct fake_gpu_proc_stats fs;
    CHECK(st(0, &fs) == 0, "stats");
    double span = (double)(fs.last_end_ns - fs.first_start_ns);
    printf("kernels=%" PRIu64 "\nbusy_ms=%.3f\nspan_ms=%.3f\nshare=%.4f\nhost_pid=%d\nmem_used=%" PRIu64 "\n",
           fs.kernels, (double)fs.busy_ns / 1e6, span / 1e6, span > 0 ? (double)fs.busy_ns / span : 0.0,
           fs.host_pid, fs.mem_used);
}

/* ------------------------------------------------------------------ agent */

static int cmd_agent(void) {
    char line[128];
    CUdeviceptr p = 0, a = 0;
    printf("pid=%d\nready\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin) != NULL) {
        char verb[32] = "";
        unsigned long long mib = 0;
        sscanf(line, "%31s %llu", verb, &mib);
        if (strcmp(verb, "retain") == 0) {
            use_device(0);
        } else if (strcmp(verb, "alloc") == 0) {
            CUresult r = cuMemAlloc_v2(&p, mib * MiB);
            printf("alloc=%d\n", (int)r);
        } else if (strcmp(verb, "free") == 0) {
            OK(cuMemFree_v2(p));
        } else if (strcmp(verb, "async") == 0) {
            CUresult r = cuMemAllocAsync(&a, mib * MiB, NULL);
            printf("async=%d\n", (int)r);
        } else if (strcmp(verb, "async_free") == 0) {
            OK(cuMemFreeAsync(a, NULL));
        } else if (strcmp(verb, "sync") == 0) {
            OK(cuStreamSynchronize(NULL));
        } else if (strcmp(verb, "info") == 0) {
            size_t f = 0, t = 0;
            OK(cuMemGetInfo_v2(&f, &t));
            printf("free=%zu\ntotal=%zu\n", f, t);
        } else if (strcmp(verb, "stats") == 0) {
            print_proc_stats();
        } else if (strcmp(verb, "exit") == 0) {
            break;
        } else {
            CHECK(0, "unknown agent command %s", verb);
        }
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}

/* ------------------------------------------------------------------ churn */

static int cmd_churn(int argc, char **argv) {
    CHECK(argc >= 2, "usage: churn ITERS KIB [every]");
    long iters = atol(argv[0]);
    size_t bytes = (size_t)atol(argv[1]) * 1024;
    long every = argc > 2 ? atol(argv[2]) : 0;
    use_device(0);
    long oom = 0;
    printf("pid=%d\nready\n", (int)getpid());
    fflush(stdout);
    for (long i = 0; i < iters; i++) {
        CUdeviceptr p;
        CUresult r = cuMemAlloc_v2(&p, bytes);
        if (r == CUDA_SUCCESS) {
            OK(cuMemFree_v2(p));
        } else {
            CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "alloc gave %d", (int)r);
            oom++;
        }
        if (every > 0 && (i + 1) % every == 0) {
            printf("progress=%ld\n", i + 1);
            fflush(stdout);
        }
    }
    printf("done=%ld\noom=%ld\n", iters, oom);
    return 0;
}

/* ------------------------------------------------------------------ waits and copies between kernels */

static int cmd_waits(int argc, char **argv) {
    CHECK(argc >= 3, "usage: waits SECONDS GRID COPY_KIB");
    double secs = atof(argv[0]);
    unsigned int grid = (unsigned int)atoi(argv[1]);
    size_t copy = (size_t)atol(argv[2]) * 1024;
    use_device(0);
    CUstream s[2];
    CUevent ev[2];
    for (int i = 0; i < 2; i++) {
        OK(cuStreamCreate(&s[i], CU_STREAM_NON_BLOCKING));
        OK(cuEventCreate(&ev[i], CU_EVENT_DISABLE_TIMING));
    }
    CUdeviceptr dst;
    OK(cuMemAlloc_v2(&dst, copy > 0 ? copy : 1));
    char *host = calloc(1, copy > 0 ? copy : 1);
    double t0 = now_s();
    uint64_t n = 0;
    while (now_s() - t0 < secs) {
        /* kernel on one stream, then the other stream waits for it, copies, runs its kernel; and back */
        int a = (int)(n & 1), b = 1 - a;
        OK(cuLaunchKernel(kFunc, grid, 1, 1, 128, 1, 1, 0, s[a], NULL, NULL));
        OK(cuEventRecord(ev[a], s[a]));
        OK(cuStreamWaitEvent(s[b], ev[a], 0));
        if (copy > 0) OK(cuMemcpyHtoDAsync_v2(dst, host, copy, s[b]));
        n++;
    }
    OK(cuCtxSynchronize());
    printf("launches=%" PRIu64 "\n", n);
    print_proc_stats();
    free(host);
    return 0;
}

/* streams SECONDS GRID N: kernels round-robin over N independent streams, so they run concurrently: this
 * process's kernel time is their union, not their sum. */
static int cmd_streams(int argc, char **argv) {
    CHECK(argc >= 3, "usage: streams SECONDS GRID N");
    double secs = atof(argv[0]);
    unsigned int grid = (unsigned int)atoi(argv[1]);
    int ns = atoi(argv[2]);
    CHECK(ns >= 1 && ns <= 8, "1..8 streams");
    use_device(0);
    CUstream s[8];
    for (int i = 0; i < ns; i++) OK(cuStreamCreate(&s[i], CU_STREAM_NON_BLOCKING));
    double t0 = now_s();
    uint64_t n = 0;
    while (now_s() - t0 < secs) OK(cuLaunchKernel(kFunc, grid, 1, 1, 128, 1, 1, 0, s[n++ % (uint64_t)ns], NULL, NULL));
    OK(cuCtxSynchronize());
    printf("launches=%" PRIu64 "\n", n);
    print_proc_stats();
    return 0;
}

/* ------------------------------------------------------------------ capture beside launches */

static pthread_barrier_t barrier;
static long launcher_n;
static int launcher_failed;

static void *launcher(void *arg) {
    CUcontext ctx = arg;
    OK(cuCtxSetCurrent(ctx));
    CUstream s;
    OK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    pthread_barrier_wait(&barrier); /* the other thread is capturing now */
    for (long i = 0; i < launcher_n; i++) {
        CUresult r = cuLaunchKernel(kFunc, 80, 1, 1, 128, 1, 1, 0, s, NULL, NULL);
        if (r != CUDA_SUCCESS && launcher_failed == 0) launcher_failed = (int)r;
    }
    pthread_barrier_wait(&barrier); /* launches done: the capture may end */
    pthread_barrier_wait(&barrier); /* capture ended: synchronising is legal again */
    OK(cuStreamSynchronize(s));
    return NULL;
}

static int cmd_capture(int argc, char **argv) {
    launcher_n = argc > 0 ? atol(argv[0]) : 200;
    CUcontext ctx = use_device(0);
    CUstream cs;
    OK(cuStreamCreate(&cs, CU_STREAM_NON_BLOCKING));
    pthread_barrier_init(&barrier, NULL, 2);
    pthread_t t;
    pthread_create(&t, NULL, launcher, ctx);
    OK(cuStreamBeginCapture_v2(cs, CU_STREAM_CAPTURE_MODE_GLOBAL));
    for (int i = 0; i < 3; i++) OK(cuLaunchKernel(kFunc, 80, 1, 1, 128, 1, 1, 0, cs, NULL, NULL));
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier);
    CUstreamCaptureStatus status = -1;
    OK(cuStreamIsCapturing(cs, &status));
    CUgraph g = NULL;
    CUresult end = cuStreamEndCapture(cs, &g);
    pthread_barrier_wait(&barrier);
    pthread_join(t, NULL);
    printf("status_before_end=%d\nend_capture=%d\ngraph=%d\nlauncher_error=%d\n", (int)status, (int)end, g != NULL,
           launcher_failed);
    if (g != NULL) {
        CUgraphExec ge;
        OK(cuGraphInstantiateWithFlags(&ge, g, 0));
        OK(cuGraphLaunch(ge, cs));
        OK(cuStreamSynchronize(cs));
        printf("graph_launch=0\n");
    }
    return 0;
}

/* ------------------------------------------------------------------ the real CUDA runtime */

static const char *owner(void *fn) {
    Dl_info info;
    if (fn == NULL) return "null";
    if (dladdr(fn, &info) == 0 || info.dli_fname == NULL) return "unknown";
    const char *base = strrchr(info.dli_fname, '/');
    base = base != NULL ? base + 1 : info.dli_fname;
    if (strncmp(base, "libvgpu", 7) == 0) return "libvgpu";
    if (strncmp(base, "libcuda", 7) == 0) return "driver";
    return "other";
}

static int cmd_cudart(int argc, char **argv) {
    CHECK(argc >= 1, "usage: cudart LIBCUDART");
    void *h = dlopen(argv[0], RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL, "dlopen %s: %s", argv[0], dlerror());
    int (*runtime_version)(int *) = (int (*)(int *))dlsym(h, "cudaRuntimeGetVersion");
    int (*driver_version)(int *) = (int (*)(int *))dlsym(h, "cudaDriverGetVersion");
    int (*device_count)(int *) = (int (*)(int *))dlsym(h, "cudaGetDeviceCount");
    CHECK(runtime_version != NULL && driver_version != NULL && device_count != NULL, "cudart symbols");
    int rv = 0, dv = 0, n = -1;
    int rrc = runtime_version(&rv), drc = driver_version(&dv), crc = device_count(&n);
    printf("runtime_version_rc=%d\nruntime_version=%d\n", rrc, rv);
    printf("driver_version_rc=%d\ndriver_version=%d\n", drc, dv);
    printf("device_count_rc=%d\n", crc);
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    printf("cuda_loaded=%d\n", cuda != NULL);
    if (cuda != NULL) printf("runtime_sees_cuGetProcAddress=%s\n", owner(dlsym(cuda, "cuGetProcAddress")));
    return 0;
}


/* ------------------------------------------------------------------ driver semantics (no libvgpu needed) */

/* evtime KERNELS GRID: an event pair around KERNELS kernels on one stream: the elapsed time next to this
 * process's own kernel time over the same work (they differ by the slices other processes ran). */
static int cmd_evtime(int argc, char **argv) {
    int k = argc > 0 ? atoi(argv[0]) : 20;
    unsigned int grid = argc > 1 ? (unsigned int)atoi(argv[1]) : 800;
    use_device(0);
    fake_gpu_get_proc_stats_fn st = (fake_gpu_get_proc_stats_fn)dlsym(RTLD_DEFAULT, "fakeGpuGetProcStats");
    CHECK(st != NULL, "fakeGpuGetProcStats not found");
    CUstream s;
    CUevent a, b;
    OK(cuStreamCreate(&s, 0));
    OK(cuEventCreate(&a, 0));
    OK(cuEventCreate(&b, 0));
    struct fake_gpu_proc_stats before, after;
    CHECK(st(0, &before) == 0, "stats");
    OK(cuEventRecord(a, s));
    for (int i = 0; i < k; i++) OK(cuLaunchKernel(kFunc, grid, 1, 1, 128, 1, 1, 0, s, NULL, NULL));
    OK(cuEventRecord(b, s));
    float ms = 0;
    CHECK(cuEventElapsedTime(&ms, a, b) == CUDA_ERROR_NOT_READY, "elapsed before completion");
    OK(cuEventSynchronize(b));
    OK(cuEventElapsedTime(&ms, a, b));
    CHECK(st(0, &after) == 0, "stats");
    printf("elapsed_ms=%.3f\nown_kernel_ms=%.3f\n", ms, (double)(after.busy_ns - before.busy_ns) / 1e6);
    return 0;
}

typedef CUresult (*step_fn)(void *);
struct other {
    step_fn fn;
    void *arg;
    CUcontext ctx;
    int mode; /* -1: keep the thread's default (GLOBAL) */
    CUresult rc;
};

static void *other_body(void *p) {
    struct other *o = p;
    OK(cuCtxSetCurrent(o->ctx));
    if (o->mode >= 0) {
        fk_capture_mode_t m = o->mode;
        OK(cuThreadExchangeStreamCaptureMode(&m));
    }
    o->rc = o->fn(o->arg);
    return NULL;
}

/* Runs fn on another thread (with capture mode `mode` there) and returns its result. */
static CUresult on_other_thread(CUcontext ctx, int mode, step_fn fn, void *arg) {
    struct other o = {fn, arg, ctx, mode, CUDA_ERROR_UNKNOWN};
    pthread_t t;
    pthread_create(&t, NULL, other_body, &o);
    pthread_join(t, NULL);
    return o.rc;
}

static CUresult query_event(void *e) {
    CUresult r = cuEventQuery((CUevent)e);
    return r == CUDA_ERROR_NOT_READY ? CUDA_SUCCESS : r;
}

static CUresult launch_on(void *s) { return cuLaunchKernel(kFunc, 8, 1, 1, 128, 1, 1, 0, (CUstream)s, NULL, NULL); }

static CUresult end_capture(CUstream s) {
    CUgraph g = NULL;
    CUresult r = cuStreamEndCapture(s, &g);
    if (g != NULL) cuGraphDestroy(g);
    return r;
}

/* capture_rules: prints <case>.<step>=<CUresult> for the capture-mode rules (fk_capture.c documents them). */
static int cmd_capture_rules(void) {
    CUcontext ctx = use_device(0);
    CUstream sa, sb;
    CUevent ea, eb, other_ev;
    OK(cuStreamCreate(&sa, CU_STREAM_NON_BLOCKING));
    OK(cuStreamCreate(&sb, CU_STREAM_NON_BLOCKING));
    OK(cuEventCreate(&ea, 0));
    OK(cuEventCreate(&eb, 0));
    OK(cuEventCreate(&other_ev, 0));
    OK(cuEventRecord(other_ev, sb));
    const int modes[3] = {CU_STREAM_CAPTURE_MODE_GLOBAL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                          CU_STREAM_CAPTURE_MODE_RELAXED};
    const char *names[3] = {"global", "thread_local", "relaxed"};
    for (int cm = 0; cm < 3; cm++) {     /* the capture's mode */
        for (int tm = 0; tm < 3; tm++) { /* the other thread's mode */
            OK(cuStreamBeginCapture_v2(sa, modes[cm]));
            OK(launch_on(sa));
            CUresult q = on_other_thread(ctx, modes[tm], query_event, other_ev);
            CUresult l = on_other_thread(ctx, modes[tm], launch_on, sb);
            printf("%s_capture.%s_thread.query=%d\n", names[cm], names[tm], (int)q);
            printf("%s_capture.%s_thread.launch=%d\n", names[cm], names[tm], (int)l);
            printf("%s_capture.%s_thread.end=%d\n", names[cm], names[tm], (int)end_capture(sa));
        }
        /* the capturing thread itself */
        OK(cuStreamBeginCapture_v2(sa, modes[cm]));
        CUdeviceptr p = 0;
        CUresult r = cuMemAlloc_v2(&p, 4096);
        if (r == CUDA_SUCCESS) OK(cuMemFree_v2(p));
        printf("%s_capture.own_thread.alloc=%d\n", names[cm], (int)r);
        printf("%s_capture.own_thread.end=%d\n", names[cm], (int)end_capture(sa));
    }
    OK(cuStreamBeginCapture_v2(sa, CU_STREAM_CAPTURE_MODE_RELAXED));
    printf("sync_capturing_stream=%d\n", (int)cuStreamSynchronize(sa));
    printf("sync_capturing_stream.end=%d\n", (int)end_capture(sa));
    OK(cuStreamCreate(&sb, 0)); /* a blocking stream: the legacy stream depends on it */
    OK(cuStreamBeginCapture_v2(sb, CU_STREAM_CAPTURE_MODE_RELAXED));
    CUstreamCaptureStatus st;
    printf("legacy_is_capturing=%d\n", (int)cuStreamIsCapturing(NULL, &st));
    printf("legacy_launch=%d\n", (int)launch_on(NULL));
    printf("legacy_launch.end=%d\n", (int)end_capture(sb));
    OK(cuStreamBeginCapture_v2(sa, CU_STREAM_CAPTURE_MODE_RELAXED));
    OK(cuEventRecord(ea, sa));
    printf("captured_event_query=%d\n", (int)cuEventQuery(ea));
    printf("captured_event.end=%d\n", (int)end_capture(sa));
    CUstream sc;
    OK(cuStreamCreate(&sc, CU_STREAM_NON_BLOCKING));
    OK(cuStreamBeginCapture_v2(sa, CU_STREAM_CAPTURE_MODE_RELAXED));
    OK(cuEventRecord(ea, sa));
    OK(cuStreamWaitEvent(sc, ea, 0)); /* fork: sc joins the capture */
    OK(launch_on(sc));
    printf("unjoined.end=%d\n", (int)end_capture(sa));
    OK(cuStreamBeginCapture_v2(sa, CU_STREAM_CAPTURE_MODE_RELAXED));
    OK(cuEventRecord(ea, sa));
    OK(cuStreamWaitEvent(sc, ea, 0));
    OK(launch_on(sc));
    OK(cuEventRecord(eb, sc));
    OK(cuStreamWaitEvent(sa, eb, 0)); /* join */
    printf("joined.end=%d\n", (int)end_capture(sa));
    OK(cuStreamBeginCapture_v2(sa, CU_STREAM_CAPTURE_MODE_RELAXED));
    printf("isolation=%d\n", (int)cuStreamWaitEvent(sa, other_ev, 0));
    printf("isolation.end=%d\n", (int)end_capture(sa));
    return 0;
}

/* nvml: the device's compute processes (host PIDs, used memory) and, per PID, the smUtil of every NVML
 * utilisation sample (comma-separated, oldest first). */
static int cmd_nvml(void) {
    CHECK(nvmlInit_v2() == NVML_SUCCESS, "nvmlInit_v2");
    nvmlDevice_t h;
    CHECK(nvmlDeviceGetHandleByIndex_v2(0, &h) == NVML_SUCCESS, "handle");
    unsigned int n = 0;
    nvmlReturn_t r = nvmlDeviceGetComputeRunningProcesses_v3(h, &n, NULL);
    CHECK(r == NVML_SUCCESS || r == NVML_ERROR_INSUFFICIENT_SIZE, "process count: %d", (int)r);
    nvmlProcessInfo_t procs[64];
    CHECK(n <= 64, "too many processes");
    CHECK(nvmlDeviceGetComputeRunningProcesses_v3(h, &n, procs) == NVML_SUCCESS, "processes");
    printf("procs=%u\n", n);
    for (unsigned int i = 0; i < n; i++) printf("used.%u=%llu\n", procs[i].pid, procs[i].usedGpuMemory);
    unsigned int cnt = 0;
    r = nvmlDeviceGetProcessUtilization(h, NULL, &cnt, 0);
    printf("samples_query=%d\nsamples=%u\n", (int)r, cnt);
    if (r != NVML_ERROR_INSUFFICIENT_SIZE) return 0;
    nvmlProcessUtilizationSample_t *sm = calloc(cnt, sizeof(*sm));
    CHECK(nvmlDeviceGetProcessUtilization(h, sm, &cnt, 0) == NVML_SUCCESS, "samples");
    unsigned int pids[64], np = 0;
    for (unsigned int i = 0; i < cnt; i++) {
        unsigned int k = 0;
        while (k < np && pids[k] != sm[i].pid) k++;
        if (k == np && np < 64) pids[np++] = sm[i].pid;
    }
    for (unsigned int k = 0; k < np; k++) {
        printf("util.%u=", pids[k]);
        for (unsigned int i = 0, first = 1; i < cnt; i++)
            if (sm[i].pid == pids[k]) {
                printf(first ? "%u" : ",%u", sm[i].smUtil);
                first = 0;
            }
        printf("\n");
    }
    unsigned long long newest = 0;
    for (unsigned int i = 0; i < cnt; i++)
        if (sm[i].timeStamp > newest) newest = sm[i].timeStamp;
    unsigned int none = 0;
    printf("newer_than_newest=%d\n", (int)nvmlDeviceGetProcessUtilization(h, sm, &none, newest));
    free(sm);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: scenario_share <command> [args]\n");
        return 2;
    }
    const char *cmd = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
    if (strcmp(cmd, "agent") == 0) return cmd_agent();
    if (strcmp(cmd, "churn") == 0) return cmd_churn(n, a);
    if (strcmp(cmd, "waits") == 0) return cmd_waits(n, a);
    if (strcmp(cmd, "streams") == 0) return cmd_streams(n, a);
    if (strcmp(cmd, "capture") == 0) return cmd_capture(n, a);
    if (strcmp(cmd, "cudart") == 0) return cmd_cudart(n, a);
    if (strcmp(cmd, "evtime") == 0) return cmd_evtime(n, a);
    if (strcmp(cmd, "capture_rules") == 0) return cmd_capture_rules();
    if (strcmp(cmd, "nvml") == 0) return cmd_nvml();
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
