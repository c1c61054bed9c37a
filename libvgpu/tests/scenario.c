/*
 * Test program: an application of the CUDA driver API and NVML, run against the fake driver, with libvgpu
 * either preloaded (pytest, release build) or linked ahead of the driver (make check, ASan/UBSan build).
 * Each subcommand checks what it can itself (exit 1 with "FAIL ..." on stderr) and prints key=value lines
 * for the caller to assert on.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../src/driver_api.h"
#include "fake_driver/fake_gpu.h"

#include "scenario.h"
#define OK(call) CHECK((call) == CUDA_SUCCESS, "%s failed", #call)

static CUcontext use_device(int dev) {
    CUcontext ctx = NULL;
    OK(cuInit(0));
    OK(cuDevicePrimaryCtxRetain(&ctx, dev));
    OK(cuCtxSetCurrent(ctx));
    return ctx;
}

/* Used bytes as the application sees them (virtual when a limit is set). */
static uint64_t used_now(void) {
    size_t f = 0, t = 0;
    OK(cuMemGetInfo_v2(&f, &t));
    return (uint64_t)(t - f);
}

static uint64_t free_now(void) {
    size_t f = 0, t = 0;
    OK(cuMemGetInfo_v2(&f, &t));
    return f;
}

static const char *owner(void *fn) {
    Dl_info info;
    if (fn == NULL) return "null";
    if (dladdr(fn, &info) == 0 || info.dli_fname == NULL) return "unknown";
    const char *base = strrchr(info.dli_fname, '/');
    base = base != NULL ? base + 1 : info.dli_fname;
    if (strncmp(base, "libvgpu", 7) == 0) return "libvgpu";
    if (strncmp(base, "libcuda", 7) == 0 || strncmp(base, "libnvidia-ml", 12) == 0) return "driver";
    return "other";
}

static fake_gpu_get_stats_fn stats_fn(void) {
    fake_gpu_get_stats_fn fn = (fake_gpu_get_stats_fn)dlsym(RTLD_DEFAULT, "fakeGpuGetStats");
    CHECK(fn != NULL, "fakeGpuGetStats not found");
    return fn;
}

/* ------------------------------------------------------------------ memory info */

static int cmd_info(int argc, char **argv) {
    int ndev = argc > 0 ? atoi(argv[0]) : 1;
    OK(cuInit(0));
    for (int d = 0; d < ndev; d++) {
        use_device(d);
        size_t f = 0, t = 0, tm = 0;
        OK(cuMemGetInfo_v2(&f, &t));
        OK(cuDeviceTotalMem_v2(&tm, d));
        printf("dev%d.cu_total=%zu\ndev%d.cu_free=%zu\ndev%d.total_mem=%zu\n", d, t, d, f, d, tm);
    }
    CHECK(nvmlInit_v2() == NVML_SUCCESS, "nvmlInit_v2");
    unsigned int n = 0;
    CHECK(nvmlDeviceGetCount_v2(&n) == NVML_SUCCESS, "count");
    for (unsigned int i = 0; i < n; i++) {
        nvmlDevice_t h;
        CHECK(nvmlDeviceGetHandleByIndex_v2(i, &h) == NVML_SUCCESS, "handle");
        nvmlMemory_t m;
        CHECK(nvmlDeviceGetMemoryInfo(h, &m) == NVML_SUCCESS, "meminfo");
        nvmlMemory_v2_t m2;
        memset(&m2, 0, sizeof(m2));
        m2.version = nvmlMemory_v2;
        CHECK(nvmlDeviceGetMemoryInfo_v2(h, &m2) == NVML_SUCCESS, "meminfo v2");
        printf("nvml%u.total=%llu\nnvml%u.used=%llu\nnvml%u.free=%llu\n", i, m.total, i, m.used, i, m.free);
        printf("nvml%u.v2_total=%llu\nnvml%u.v2_used=%llu\nnvml%u.v2_free=%llu\nnvml%u.v2_reserved=%llu\n", i,
               m2.total, i, m2.used, i, m2.free, i, m2.reserved);
    }
    size_t dummy;
    printf("null_args=%d\n", (int)cuMemGetInfo_v2(NULL, &dummy));
    return 0;
}

/* ------------------------------------------------------------------ allocation families */

static void expect_delta(const char *what, uint64_t base, uint64_t expected) {
    uint64_t now = used_now();
    printf("%s=%" PRIu64 "\n", what, now - base);
    CHECK(now - base == expected, "%s: used grew by %" PRIu64 ", expected %" PRIu64, what, now - base, expected);
}

static int cmd_families(int argc, char **argv) {
    (void)argc, (void)argv;
    CUcontext ctx = use_device(0);
    (void)ctx;
    uint64_t base = used_now();
    printf("base=%" PRIu64 "\n", base);

    CUdeviceptr p;
    OK(cuMemAlloc_v2(&p, 1 * MiB));
    expect_delta("alloc", base, 1 * MiB);
    OK(cuMemFree_v2(p));
    expect_delta("alloc_freed", base, 0);

    size_t pitch = 0;
    OK(cuMemAllocPitch_v2(&p, &pitch, 1000, 10, 4));
    expect_delta("pitch", base, (uint64_t)pitch * 10);
    OK(cuMemFree_v2(p));
    expect_delta("pitch_freed", base, 0);

    OK(cuMemAllocManaged(&p, 3 * MiB, CU_MEM_ATTACH_GLOBAL));
    expect_delta("managed", base, 3 * MiB);
    OK(cuMemFree_v2(p));
    expect_delta("managed_freed", base, 0);

    /* Stream-ordered: the pool's reserve is what the device holds (granularity 2 MiB in the fake). */
    OK(cuMemAllocAsync(&p, 5 * MiB, NULL));
    expect_delta("async", base, 6 * MiB);
    OK(cuMemFreeAsync(p, NULL));
    expect_delta("async_freed_pool_keeps", base, 6 * MiB);
    CUmemoryPool pool;
    OK(cuDeviceGetMemPool(&pool, 0));
    OK(cuMemPoolTrimTo(pool, 0));
    expect_delta("async_trimmed", base, 0);

    OK(cuMemAllocAsync_ptsz(&p, 1 * MiB, NULL));
    expect_delta("async_ptsz", base, 2 * MiB);
    OK(cuMemFree_v2(p)); /* cuMemFree of stream-ordered memory */
    OK(cuMemPoolTrimTo(pool, 0));
    expect_delta("async_ptsz_freed", base, 0);

    CUmemPoolProps props;
    memset(&props, 0, sizeof(props));
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    CUmemoryPool mine;
    OK(cuMemPoolCreate(&mine, &props));
    OK(cuMemAllocFromPoolAsync(&p, 3 * MiB, mine, NULL));
    expect_delta("from_pool", base, 4 * MiB);
    OK(cuMemFreeAsync_ptsz(p, NULL));
    OK(cuMemPoolDestroy(mine));
    expect_delta("pool_destroyed", base, 0);

    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof(prop));
    prop.type = 1;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CUmemGenericAllocationHandle h;
    OK(cuMemCreate(&h, 4 * MiB, &prop, 0));
    expect_delta("vmm", base, 4 * MiB);
    OK(cuMemRelease(h));
    expect_delta("vmm_released", base, 0);

    CUDA_ARRAY_DESCRIPTOR a2 = {.Width = 256, .Height = 256, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    CUarray arr;
    OK(cuArrayCreate_v2(&arr, &a2));
    expect_delta("array2d", base, 256 * 256 * 16);
    OK(cuArrayDestroy(arr));
    expect_delta("array2d_destroyed", base, 0);

    CUDA_ARRAY3D_DESCRIPTOR a3 = {.Width = 64, .Height = 64, .Depth = 64, .Format = CU_AD_FORMAT_UNSIGNED_INT8,
                                  .NumChannels = 1};
    OK(cuArray3DCreate_v2(&arr, &a3));
    expect_delta("array3d", base, 64 * 64 * 64);
    OK(cuArrayDestroy(arr));

    CUDA_ARRAY3D_DESCRIPTOR am = {.Width = 256, .Height = 256, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 1};
    CUmipmappedArray mm;
    OK(cuMipmappedArrayCreate(&mm, &am, 3));
    expect_delta("mipmap", base, (256 * 256 + 128 * 128 + 64 * 64) * 4);
    OK(cuMipmappedArrayDestroy(mm));
    expect_delta("mipmap_destroyed", base, 0);

    /* A pointer libvgpu never saw goes to the driver, which rejects it (no made-up error code). */
    CUresult r = cuMemFree_v2(0xdead0000ull);
    printf("free_unknown=%d\n", (int)r);
    CHECK(r == CUDA_ERROR_INVALID_VALUE, "unknown free returned %d", (int)r);
    expect_delta("end", base, 0);
    return 0;
}

/* ------------------------------------------------------------------ OOM exactly at the limit */

static int oom_family(const char *fam) {
    use_device(0);
    uint64_t room = free_now();
    printf("room=%" PRIu64 "\n", room);
    CUdeviceptr p = 0, q = 0;
    CUmemGenericAllocationHandle h = 0, h2 = 0;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof(prop));
    prop.type = 1;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    CUresult full, over;
    if (strcmp(fam, "alloc") == 0) {
        over = cuMemAlloc_v2(&q, room + 1);
        full = cuMemAlloc_v2(&p, room);
    } else if (strcmp(fam, "managed") == 0) {
        over = cuMemAllocManaged(&q, room + 1, CU_MEM_ATTACH_GLOBAL);
        full = cuMemAllocManaged(&p, room, CU_MEM_ATTACH_GLOBAL);
    } else if (strcmp(fam, "vmm") == 0) {
        over = cuMemCreate(&h2, room + 1, &prop, 0);
        full = cuMemCreate(&h, room, &prop, 0);
    } else if (strcmp(fam, "async") == 0) { /* run with FAKE_POOL_GRANULARITY=1 */
        over = cuMemAllocAsync(&q, room + 1, NULL);
        full = cuMemAllocAsync(&p, room, NULL);
    } else if (strcmp(fam, "pitch") == 0) { /* run with a limit that leaves a multiple of 512 x 8 */
        size_t pitch;
        over = cuMemAllocPitch_v2(&q, &pitch, room / 8 + 1, 8, 4);
        full = cuMemAllocPitch_v2(&p, &pitch, room / 8, 8, 4);
    } else {
        CHECK(0, "unknown family %s", fam);
        return 1;
    }
    printf("over=%d\nfull=%d\n", (int)over, (int)full);
    CHECK(over == CUDA_ERROR_OUT_OF_MEMORY, "%s: room+1 gave %d", fam, (int)over);
    CHECK(full == CUDA_SUCCESS, "%s: exactly the room gave %d", fam, (int)full);
    printf("free_after=%" PRIu64 "\n", free_now());
    CHECK(free_now() == 0, "free after filling = %" PRIu64, free_now());
    CUdeviceptr one;
    CUresult r = cuMemAlloc_v2(&one, 1);
    printf("one_more=%d\n", (int)r);
    CHECK(r == CUDA_ERROR_OUT_OF_MEMORY, "1 more byte gave %d", (int)r);
    return 0;
}

static int cmd_oom(int argc, char **argv) { return oom_family(argc > 0 ? argv[0] : "alloc"); }

/* Allocates `mib` on devices given as "dev:mib,..." and checks OOM on each past its own limit. */
static int cmd_alloc(int argc, char **argv) {
    CHECK(argc >= 1, "usage: alloc dev:mib[,dev:mib]");
    char *spec = strdup(argv[0]);
    for (char *tok = strtok(spec, ","); tok != NULL; tok = strtok(NULL, ",")) {
        int dev = atoi(tok);
        char *c = strchr(tok, ':');
        uint64_t mib = c != NULL ? strtoull(c + 1, NULL, 10) : 1;
        use_device(dev);
        CUdeviceptr p;
        CUresult r = cuMemAlloc_v2(&p, mib * MiB);
        printf("dev%d.alloc_%" PRIu64 "=%d\n", dev, mib, (int)r);
    }
    free(spec);
    return 0;
}

/* ------------------------------------------------------------------ interception paths */

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*info_fn)(size_t *, size_t *);

static int cmd_procaddr(int argc, char **argv) {
    (void)argc, (void)argv;
    use_device(0);
    uint64_t base = used_now();
    void *fn = NULL;
    CUdriverProcAddressQueryResult st = -1;
    OK(cuGetProcAddress_v2("cuMemAlloc", &fn, 12000, 0, &st));
    printf("v2.cuMemAlloc=%s\nv2.status=%d\n", owner(fn), (int)st);
    CUdeviceptr p;
    OK(((alloc_fn)fn)(&p, 2 * MiB));
    printf("procaddr_alloc_delta=%" PRIu64 "\n", used_now() - base);
    void *ffree = NULL;
    OK(cuGetProcAddress("cuMemFree", &ffree, 12000, 0));
    printf("v1.cuMemFree=%s\n", owner(ffree));
    OK(((CUresult(*)(CUdeviceptr))ffree)(p));
    printf("procaddr_free_delta=%" PRIu64 "\n", used_now() - base);
    const char *names[] = {"cuMemGetInfo", "cuLaunchKernel", "cuLaunchKernelEx", "cuGraphLaunch",
                           "cuMemAllocAsync", "cuDeviceTotalMem", "cuCtxCreate", "cuGetProcAddress",
                           "cuDeviceGetName", "cuCtxSetCurrent"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        void *f = NULL;
        CUresult r = cuGetProcAddress_v2(names[i], &f, 13000, 0, &st);
        printf("%s=%s\n", names[i], r == CUDA_SUCCESS ? owner(f) : "error");
    }
    void *pt = NULL, *real_pt = NULL;
    OK(cuGetProcAddress_v2("cuLaunchKernel", &pt, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    void *self = dlsym(RTLD_DEFAULT, "cuLaunchKernel_ptsz");
    real_pt = self;
    printf("ptsz_is_ptsz_hook=%d\n", pt == real_pt);
    void *gp = NULL;
    OK(cuGetProcAddress_v2("cuGetProcAddress", &gp, 13000, 0, &st));
    void *again = NULL;
    OK(((CUresult(*)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *))gp)(
        "cuMemAlloc", &again, 13000, 0, &st));
    printf("nested.cuMemAlloc=%s\n", owner(again));
    CUresult r = cuGetProcAddress_v2("cuNoSuchFunction", &fn, 13000, 0, &st);
    printf("missing=%d\nmissing_status=%d\n", (int)r, (int)st);
    size_t f = 0, t = 0;
    void *fi = NULL;
    OK(cuGetProcAddress_v2("cuMemGetInfo", &fi, 13000, 0, &st));
    OK(((info_fn)fi)(&f, &t));
    printf("procaddr_total=%zu\n", t);
    return 0;
}

static int cmd_dlsym(int argc, char **argv) {
    (void)argc, (void)argv;
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    CHECK(h != NULL, "dlopen libcuda: %s", dlerror());
    /* By path when given: ASan's dlopen interceptor hides the program's RUNPATH. */
    const char *nvml = getenv("KUBE_VGPU_REAL_LIBNVML");
    void *hn = dlopen(nvml != NULL ? nvml : "libnvidia-ml.so.1", RTLD_NOW);
    CHECK(hn != NULL, "dlopen nvml: %s", dlerror());
    void *a = dlsym(h, "cuMemAlloc_v2");
    printf("handle.cuMemAlloc_v2=%s\n", owner(a));
    printf("handle.cuGetProcAddress_v2=%s\n", owner(dlsym(h, "cuGetProcAddress_v2")));
    printf("handle.cuLaunchKernel=%s\n", owner(dlsym(h, "cuLaunchKernel")));
    printf("handle.cuDeviceGetName=%s\n", owner(dlsym(h, "cuDeviceGetName")));
    printf("default.cuMemGetInfo_v2=%s\n", owner(dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2")));
    printf("nvml.nvmlDeviceGetMemoryInfo=%s\n", owner(dlsym(hn, "nvmlDeviceGetMemoryInfo")));
    printf("nvml.nvmlDeviceGetCount_v2=%s\n", owner(dlsym(hn, "nvmlDeviceGetCount_v2")));
    printf("handle.missing=%s\n", owner(dlsym(h, "cuNoSuchThing")));
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    printf("libc.cuMemAlloc_v2=%s\n", owner(libc != NULL ? dlsym(libc, "cuMemAlloc_v2") : NULL));
    /* RTLD_NEXT keeps the caller's meaning: from the executable, the next dlsym is libvgpu's. */
    printf("next.dlsym=%s\n", owner(dlsym(RTLD_NEXT, "dlsym")));
    printf("next.getpid_ok=%d\n", dlsym(RTLD_NEXT, "getpid") != NULL);
    use_device(0);
    uint64_t base = used_now();
    CUdeviceptr p;
    OK(((alloc_fn)a)(&p, 3 * MiB));
    printf("dlsym_alloc_delta=%" PRIu64 "\n", used_now() - base);
    return 0;
}

/* ------------------------------------------------------------------ contexts */

static int cmd_ctx(int argc, char **argv) {
    (void)argc, (void)argv;
    OK(cuInit(0));
    CUcontext primary = use_device(0);
    uint64_t base = used_now();
    printf("primary_base=%" PRIu64 "\n", base);
    CUcontext c;
    OK(cuCtxCreate_v4(&c, NULL, 0, 0));
    uint64_t with_ctx = used_now();
    printf("ctx_footprint=%" PRIu64 "\n", with_ctx - base);
    CUdeviceptr p;
    OK(cuMemAlloc_v2(&p, 5 * MiB));
    printf("ctx_alloc=%" PRIu64 "\n", used_now() - base);
    OK(cuCtxDestroy_v2(c)); /* frees the context and its allocations */
    OK(cuCtxSetCurrent(primary));
    printf("ctx_destroyed=%" PRIu64 "\n", used_now() - base);
    OK(cuDevicePrimaryCtxRelease_v2(0));
    OK(cuDevicePrimaryCtxRetain(&primary, 0));
    OK(cuCtxSetCurrent(primary));
    printf("primary_again=%" PRIu64 "\n", used_now());
    return 0;
}

/* ------------------------------------------------------------------ multi-process */

static int cmd_hold(int argc, char **argv) {
    uint64_t mib = argc > 0 ? strtoull(argv[0], NULL, 10) : 1;
    int dev = argc > 1 ? atoi(argv[1]) : 0;
    use_device(dev);
    CUdeviceptr p;
    CUresult r = cuMemAlloc_v2(&p, mib * MiB);
    printf("alloc=%d\npid=%d\nready\n", (int)r, (int)getpid());
    fflush(stdout);
    char line[64];
    if (fgets(line, sizeof(line), stdin) == NULL) return 0; /* EOF: exit without freeing */
    if (strncmp(line, "free", 4) == 0 && r == CUDA_SUCCESS) OK(cuMemFree_v2(p));
    printf("done\n");
    fflush(stdout);
    if (fgets(line, sizeof(line), stdin) == NULL) return 0;
    return 0;
}

static int cmd_fork(int argc, char **argv) {
    (void)argc, (void)argv;
    use_device(0);
    CUdeviceptr p;
    OK(cuMemAlloc_v2(&p, 4 * MiB));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        /* A fork child gets its own slot on its first accounted call. */
        CUcontext ctx;
        cuDevicePrimaryCtxRetain(&ctx, 0);
        cuCtxSetCurrent(ctx);
        CUdeviceptr q;
        CUresult r = cuMemAlloc_v2(&q, 1 * MiB);
        printf("child_alloc=%d\n", (int)r);
        fflush(stdout);
        _exit(r == CUDA_SUCCESS ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("child_status=%d\n", status);
    return status == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------ SM share */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static CUresult launch_one(const char *entry, CUstream s, unsigned int grid, CUgraphExec ge) {
    CUfunction f = (CUfunction)(uintptr_t)0x1000;
    if (strcmp(entry, "kernel") == 0) return cuLaunchKernel(f, grid, 1, 1, 128, 1, 1, 0, s, NULL, NULL);
    if (strcmp(entry, "ptsz") == 0) return cuLaunchKernel_ptsz(f, grid, 1, 1, 128, 1, 1, 0, s, NULL, NULL);
    if (strcmp(entry, "coop") == 0) return cuLaunchCooperativeKernel(f, grid, 1, 1, 128, 1, 1, 0, s, NULL);
    if (strcmp(entry, "coop_ptsz") == 0) return cuLaunchCooperativeKernel_ptsz(f, grid, 1, 1, 128, 1, 1, 0, s, NULL);
    if (strcmp(entry, "graph") == 0) return cuGraphLaunch(ge, s);
    if (strcmp(entry, "graph_ptsz") == 0) return cuGraphLaunch_ptsz(ge, s);
    CUlaunchConfig cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.gridDimX = grid;
    cfg.gridDimY = cfg.gridDimZ = 1;
    cfg.blockDimX = 128;
    cfg.blockDimY = cfg.blockDimZ = 1;
    cfg.hStream = s;
    if (strcmp(entry, "ex") == 0) return cuLaunchKernelEx(&cfg, f, NULL, NULL);
    if (strcmp(entry, "ex_ptsz") == 0) return cuLaunchKernelEx_ptsz(&cfg, f, NULL, NULL);
    CHECK(0, "unknown entry %s", entry);
    return CUDA_ERROR_INVALID_VALUE;
}

/* sm <sync|async> <entry> <seconds> <grid> [stream|null] */
static int cmd_sm(int argc, char **argv) {
    CHECK(argc >= 4, "usage: sm sync|async entry seconds grid [stream|null]");
    int sync = strcmp(argv[0], "sync") == 0;
    const char *entry = argv[1];
    double secs = atof(argv[2]);
    unsigned int grid = (unsigned int)atoi(argv[3]);
    int use_stream = argc > 4 && strcmp(argv[4], "stream") == 0;
    use_device(0);
    CUstream s = NULL;
    if (use_stream) OK(cuStreamCreate(&s, 0));
    CUgraph g;
    CUgraphExec ge;
    OK(cuGraphCreate(&g, 0));
    OK(cuGraphInstantiateWithFlags(&ge, g, 0));
    int ptsz = strstr(entry, "ptsz") != NULL;
    fake_gpu_get_proc_stats_fn st = (fake_gpu_get_proc_stats_fn)dlsym(RTLD_DEFAULT, "fakeGpuGetProcStats");
    CHECK(st != NULL, "fakeGpuGetProcStats not found");
    double t0 = now_s();
    uint64_t n = 0;
    while (now_s() - t0 < secs) {
        OK(launch_one(entry, s, grid, ge));
        n++;
        if (sync) {
            if (ptsz || s != NULL)
                OK(s != NULL ? cuStreamSynchronize(s) : cuCtxSynchronize());
            else
                OK(cuStreamSynchronize(NULL));
        }
    }
    OK(cuCtxSynchronize());
    double wall = now_s() - t0;
    /* This process's own kernel time on the (possibly shared) device, over its own span. */
    struct fake_gpu_proc_stats fs;
    CHECK(st(0, &fs) == 0, "stats");
    double span = (double)(fs.last_end_ns - fs.first_start_ns);
    printf("launches=%" PRIu64 "\nkernels=%" PRIu64 "\nbusy_ms=%.3f\nspan_ms=%.3f\nwall_ms=%.3f\nshare=%.4f\n", n,
           fs.kernels, (double)fs.busy_ns / 1e6, span / 1e6, wall * 1e3, span > 0 ? (double)fs.busy_ns / span : 0.0);
    return 0;
}

/* launch_cost <n>: host time per launch of a zero-length kernel (set FAKE_GPU_WAVE_US=0). */
static int cmd_launch_cost(int argc, char **argv) {
    uint64_t n = argc > 0 ? strtoull(argv[0], NULL, 10) : 100000;
    use_device(0);
    CUfunction f = (CUfunction)(uintptr_t)0x1000;
    double t0 = now_s();
    for (uint64_t i = 0; i < n; i++) OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    double dt = now_s() - t0;
    printf("launch_ns=%.1f\n", dt * 1e9 / (double)n);
    return 0;
}

/* launch_calls <n> [stream]: driver and NVML calls this process makes per kernel launch (the application's
 * own launch included), measured by the fake driver's call counter around n asynchronous launches. */
static int cmd_launch_calls(int argc, char **argv) {
    uint64_t n = argc > 0 ? strtoull(argv[0], NULL, 10) : 1000;
    int use_stream = argc > 1 && strcmp(argv[1], "stream") == 0;
    use_device(0);
    CUstream s = NULL;
    if (use_stream) OK(cuStreamCreate(&s, 0));
    fake_gpu_get_call_count_fn calls = (fake_gpu_get_call_count_fn)dlsym(RTLD_DEFAULT, "fakeGpuGetCallCount");
    CHECK(calls != NULL, "fakeGpuGetCallCount not found");
    CUfunction f = (CUfunction)(uintptr_t)0x1000;
    OK(cuLaunchKernel(f, 8, 1, 1, 128, 1, 1, 0, s, NULL, NULL)); /* first launch: lazy set-up excluded */
    OK(cuCtxSynchronize());
    uint64_t c0 = calls();
    for (uint64_t i = 0; i < n; i++) OK(cuLaunchKernel(f, 8, 1, 1, 128, 1, 1, 0, s, NULL, NULL));
    uint64_t c1 = calls();
    OK(cuCtxSynchronize());
    printf("launches=%" PRIu64 "\ndriver_calls=%" PRIu64 "\ncalls_per_launch=%.3f\n", n, c1 - c0,
           (double)(c1 - c0) / (double)n);
    return 0;
}

/* gpu_state: the shared fake GPU after dead processes are reaped (this process holds no context). */
static int cmd_gpu_state(int argc, char **argv) {
    (void)argc, (void)argv;
    fake_gpu_reap_fn reap = (fake_gpu_reap_fn)dlsym(RTLD_DEFAULT, "fakeGpuReap");
    CHECK(reap != NULL, "fakeGpuReap not found");
    int procs = reap();
    struct fake_gpu_stats fs;
    CHECK(stats_fn()(0, &fs) == 0, "stats");
    printf("gpu_procs=%d\ngpu_mem_used=%" PRIu64 "\n", procs - 1, fs.mem_used);
    return 0;
}

/* ------------------------------------------------------------------ region round trip */

/* region: allocates given MiB on device 0 and 1, then waits for a line on stdin before freeing; after "freed"
 * it stays alive (its slot registered) until stdin reaches EOF, so the caller can read the region while the
 * process still runs. */
static int cmd_region(int argc, char **argv) {
    uint64_t m0 = argc > 0 ? strtoull(argv[0], NULL, 10) : 1;
    uint64_t m1 = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
    use_device(0);
    CUdeviceptr p0, p1;
    OK(cuMemAlloc_v2(&p0, m0 * MiB));
    CUfunction f = (CUfunction)(uintptr_t)0x1000;
    OK(cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL));
    use_device(1);
    OK(cuMemAlloc_v2(&p1, m1 * MiB));
    printf("pid=%d\nready\n", (int)getpid());
    fflush(stdout);
    char line[16];
    if (fgets(line, sizeof(line), stdin) == NULL) return 0;
    OK(cuMemFree_v2(p1));
    use_device(0);
    OK(cuMemFree_v2(p0));
    printf("freed\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin) != NULL) {
    } /* exit (and give up the slot) only once the caller closes stdin */
    return 0;
}

/* threads <n>: n threads allocate and free concurrently; the total must come back to the base. */
static void *thread_body(void *arg) {
    CUcontext ctx = arg;
    cuCtxSetCurrent(ctx);
    for (int i = 0; i < 200; i++) {
        CUdeviceptr p;
        if (cuMemAlloc_v2(&p, 64 * 1024) == CUDA_SUCCESS) cuMemFree_v2(p);
    }
    return NULL;
}

static int cmd_threads(int argc, char **argv) {
    int n = argc > 0 ? atoi(argv[0]) : 4;
    CUcontext ctx = use_device(0);
    uint64_t base = used_now();
    pthread_t t[32];
    if (n > 32) n = 32;
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, thread_body, ctx);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
    printf("threads_delta=%" PRIu64 "\n", used_now() - base);
    CHECK(used_now() == base, "usage did not come back");
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: scenario <command> [args]\n");
        return 2;
    }
    const char *cmd = argv[1];
    int n = argc - 2;
    char **a = argv + 2;
    if (strcmp(cmd, "info") == 0) return cmd_info(n, a);
    if (strcmp(cmd, "families") == 0) return cmd_families(n, a);
    if (strcmp(cmd, "oom") == 0) return cmd_oom(n, a);
    if (strcmp(cmd, "alloc") == 0) return cmd_alloc(n, a);
    if (strcmp(cmd, "procaddr") == 0) return cmd_procaddr(n, a);
    if (strcmp(cmd, "dlsym") == 0) return cmd_dlsym(n, a);
    if (strcmp(cmd, "ctx") == 0) return cmd_ctx(n, a);
    if (strcmp(cmd, "hold") == 0) return cmd_hold(n, a);
    if (strcmp(cmd, "fork") == 0) return cmd_fork(n, a);
    if (strcmp(cmd, "sm") == 0) return cmd_sm(n, a);
    if (strcmp(cmd, "launch_cost") == 0) return cmd_launch_cost(n, a);
    if (strcmp(cmd, "region") == 0) return cmd_region(n, a);
    if (strcmp(cmd, "launch_calls") == 0) return cmd_launch_calls(n, a);
    if (strcmp(cmd, "gpu_state") == 0) return cmd_gpu_state(n, a);
    if (strcmp(cmd, "threads") == 0) return cmd_threads(n, a);
    fprintf(stderr, "unknown command %s\n", cmd);
    return 2;
}
