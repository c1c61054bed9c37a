/*
 * Unit tests of libvgpu's internals (linked with the ASan/UBSan objects): size parsing and the environment
 * contract, the shared region (creation, layout, charges, exact limit, saturation, dead-slot reclaim, PID
 * reuse, exit), the allocation table, array sizing, the token bucket, the SM controller's pure maths
 * (interval union across streams, time-slice inflation, a simulated time-sliced GPU), host-PID detection
 * from NVML process lists, the context footprint, NVML utilisation samples, and dlsym answering without
 * process init.
 * Needs KUBE_VGPU_REAL_LIBCUDA pointing at the fake driver (run_check.sh sets it).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vgpu.h"

static int g_failures, g_checks;

#define EXPECT(cond)                                                                                         \
    do {                                                                                                     \
        g_checks++;                                                                                          \
        if (!(cond)) {                                                                                       \
            g_failures++;                                                                                    \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                  \
        }                                                                                                    \
    } while (0)

static void test_parse_size(void) {
    uint64_t v;
    EXPECT(vgpu_parse_size("3000m", &v) == 0 && v == 3000ull << 20);
    EXPECT(vgpu_parse_size("2g", &v) == 0 && v == 2ull << 30);
    EXPECT(vgpu_parse_size("2G", &v) == 0 && v == 2ull << 30);
    EXPECT(vgpu_parse_size("512K", &v) == 0 && v == 512ull << 10);
    EXPECT(vgpu_parse_size("1048576", &v) == 0 && v == 1048576);
    EXPECT(vgpu_parse_size("0x10k", &v) == 0 && v == 16ull << 10);
    EXPECT(vgpu_parse_size("", &v) == 0 && v == 0);
    EXPECT(vgpu_parse_size(NULL, &v) == 0 && v == 0);
    /* Malformed: reported, with HAMi-core's reading as the value. */
    EXPECT(vgpu_parse_size("1.5g", &v) == -1 && v == 1ull << 30);
    EXPECT(vgpu_parse_size("2Gi", &v) == -1 && v == 2);
    EXPECT(vgpu_parse_size("abc", &v) == -1 && v == 0);
    EXPECT(vgpu_parse_size("-1", &v) == -1 && v == 0);
    EXPECT(vgpu_parse_size("99999999999999g", &v) == -1 && v == 0);
    EXPECT(vgpu_parse_size("99999999999999999999999", &v) == -1 && v == 0);
}

static void test_config(void) {
    struct vgpu_config c;
    setenv("CUDA_DEVICE_MEMORY_LIMIT", "1g", 1);
    setenv("CUDA_DEVICE_MEMORY_LIMIT_1", "512m", 1);
    setenv("CUDA_DEVICE_MEMORY_LIMIT_2", "0", 1);
    setenv("CUDA_DEVICE_SM_LIMIT", "30", 1);
    setenv("CUDA_DEVICE_SM_LIMIT_3", "60", 1);
    setenv("GPU_CORE_UTILIZATION_POLICY", "FORCE", 1);
    setenv("CUDA_TASK_PRIORITY", "0", 1);
    setenv("CUDA_OVERSUBSCRIBE", "true", 1);
    setenv("LIBCUDA_LOG_LEVEL", "1", 1);
    vgpu_config_from_env(&c);
    EXPECT(c.mem_limit[0] == 1ull << 30);
    EXPECT(c.mem_limit[1] == 512ull << 20);
    EXPECT(c.mem_limit[2] == 1ull << 30); /* 0 per device: the global value */
    EXPECT(c.mem_limit[15] == 1ull << 30);
    EXPECT(c.sm_limit[0] == 30 && c.sm_limit[3] == 60);
    EXPECT(c.policy == VGPU_POLICY_FORCE);
    EXPECT(c.priority == 0);
    EXPECT(c.oversubscribe == 1);
    EXPECT(c.disabled == 0);
    EXPECT(c.log_level == VGPU_LOG_ERROR);
    setenv("GPU_CORE_UTILIZATION_POLICY", "disable", 1);
    unsetenv("CUDA_DEVICE_SM_LIMIT");
    unsetenv("CUDA_DEVICE_SM_LIMIT_3");
    unsetenv("CUDA_TASK_PRIORITY");
    unsetenv("CUDA_OVERSUBSCRIBE");
    setenv("CUDA_DISABLE_CONTROL", "true", 1);
    vgpu_config_from_env(&c);
    EXPECT(c.policy == VGPU_POLICY_DISABLE);
    EXPECT(c.sm_limit[0] == 100 && c.sm_limit[3] == 100); /* unset: no throttling */
    EXPECT(c.priority == 1);
    EXPECT(c.disabled == 1);
    EXPECT(strcmp(c.cache_path, "/tmp/cudevshr.cache") == 0 || getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE") != NULL);
    unsetenv("CUDA_DISABLE_CONTROL");
    unsetenv("GPU_CORE_UTILIZATION_POLICY");
    unsetenv("CUDA_DEVICE_MEMORY_LIMIT_1");
    unsetenv("CUDA_DEVICE_MEMORY_LIMIT_2");
}

static uint64_t slot_total(vgpu_region_t *r, pid_t pid, int dev) {
    for (int i = 0; i < r->proc_num; i++)
        if (r->procs[i].pid == pid) return r->procs[i].used[dev].total;
    return UINT64_MAX;
}

static void test_region(const char *path) {
    unlink(path);
    setenv("CUDA_DEVICE_MEMORY_SHARED_CACHE", path, 1);
    setenv("CUDA_DEVICE_MEMORY_LIMIT", "1m", 1);
    setenv("CUDA_DEVICE_SM_LIMIT", "40", 1);
    setenv("CUDA_TASK_PRIORITY", "0", 1);
    vgpu_config_from_env(&g_cfg);
    vgpu_region_t *r = vgpu_region();
    struct stat st;
    EXPECT(stat(path, &st) == 0 && st.st_size == 2008953);
    EXPECT((st.st_mode & 0777) == 0666);
    EXPECT(r->initialized_flag == VGPU_REGION_MAGIC);
    EXPECT(r->major_version == 1 && r->minor_version == 2);
    EXPECT(r->limit[0] == 1ull << 20 && r->limit[15] == 1ull << 20);
    EXPECT(r->sm_limit[0] == 40);
    EXPECT(r->utilization_switch == 1 && r->recent_kernel == 2 && r->priority == 0);
    EXPECT(r->proc_num == 0);
    /* The 32-byte semaphores are real process-shared semaphores, as HAMi-core expects. */
    int sv = -1;
    EXPECT(sem_getvalue(&r->sem, &sv) == 0 && sv == 1);
    EXPECT(sem_getvalue(&r->sem_postinit, &sv) == 0 && sv == 1);

    vgpu_region_register();
    EXPECT(r->proc_num == 1 && r->procs[0].pid == getpid() && r->procs[0].status == 1);
    EXPECT(r->procs[0].unused[0] == vgpu_proc_start_time(getpid()));

    /* exactly at the limit */
    EXPECT(vgpu_region_charge(0, (1u << 20) - 10, VGPU_MEM_DATA, 1) == 0);
    EXPECT(vgpu_region_charge(0, 11, VGPU_MEM_DATA, 1) == -1);
    EXPECT(vgpu_region_charge(0, 10, VGPU_MEM_CONTEXT, 1) == 0);
    EXPECT(vgpu_region_usage(0) == 1u << 20);
    EXPECT(vgpu_region_charge(0, 1, VGPU_MEM_DATA, 1) == -1);
    EXPECT(vgpu_region_charge(0, UINT64_MAX, VGPU_MEM_DATA, 1) == -1); /* no overflow wrap */
    EXPECT(r->procs[0].used[0].data_size == (1u << 20) - 10 && r->procs[0].used[0].context_size == 10);
    EXPECT(r->procs[0].seqlock % 2 == 0 && r->procs[0].seqlock >= 4);
    /* other devices have their own limit */
    EXPECT(vgpu_region_charge(1, 1u << 20, VGPU_MEM_DATA, 1) == 0);
    /* never underflows */
    vgpu_region_uncharge(0, 5u << 20, VGPU_MEM_DATA);
    EXPECT(r->procs[0].used[0].data_size == 0);
    EXPECT(r->procs[0].used[0].total == 0);
    vgpu_region_uncharge(0, 10, VGPU_MEM_CONTEXT);
    EXPECT(vgpu_region_usage(0) == 0);

    /* A second process charges, then dies by SIGKILL: its slot is reclaimed. */
    int pipefd[2];
    EXPECT(pipe(pipefd) == 0);
    pid_t child = fork();
    if (child == 0) {
        close(pipefd[0]);
        int rc = vgpu_region_charge(0, 1000, VGPU_MEM_DATA, 1);
        char ok = rc == 0 ? 'y' : 'n';
        if (write(pipefd[1], &ok, 1) != 1) _exit(3);
        pause();
        _exit(0);
    }
    close(pipefd[1]);
    char ok = 0;
    EXPECT(read(pipefd[0], &ok, 1) == 1 && ok == 'y');
    close(pipefd[0]);
    EXPECT(r->proc_num == 2);
    EXPECT(slot_total(r, child, 0) == 1000);
    EXPECT(vgpu_region_usage(0) == 1000);
    EXPECT(vgpu_region_charge(0, (1u << 20) - 1000, VGPU_MEM_DATA, 1) == 0);
    EXPECT(vgpu_region_charge(0, 1, VGPU_MEM_DATA, 1) == -1); /* the child is alive: still full */
    kill(child, SIGKILL);
    int status;
    waitpid(child, &status, 0);
    /* The dead child's 1000 bytes come back on the next OOM check. */
    EXPECT(vgpu_region_charge(0, 1000, VGPU_MEM_DATA, 1) == 0);
    EXPECT(r->proc_num == 1);
    EXPECT(slot_total(r, child, 0) == UINT64_MAX);

    /* A slot whose pid is alive but whose start time differs belongs to a reused pid: dead. */
    EXPECT(vgpu_pid_dead(getppid(), vgpu_proc_start_time(getppid())) == 0);
    EXPECT(vgpu_pid_dead(getppid(), vgpu_proc_start_time(getppid()) + 1) == 1);
    EXPECT(vgpu_pid_dead(0, 0) == 1);

    /* A child that exits normally removes its own slot (destructor). */
    child = fork();
    if (child == 0) {
        vgpu_region_charge(0, 0, VGPU_MEM_DATA, 0);
        exit(0);
    }
    waitpid(child, &status, 0);
    EXPECT(r->proc_num == 1);

    /* sm_util of other processes counts only while fresh. */
    vgpu_region_set_sm_util(0, 25, 1);
    uint64_t unsat = 7;
    int nsat = 7;
    EXPECT(vgpu_region_others_sm_util(0, &unsat, &nsat) == 0 && unsat == 0 && nsat == 0); /* only others count */
    vgpu_region_note_kernel();
    EXPECT(r->last_kernel_time > 1600000000ull);

    /* A second attach with other limits keeps the file's values. */
    vgpu_region_reset_for_tests();
    setenv("CUDA_DEVICE_MEMORY_LIMIT", "2m", 1);
    vgpu_config_from_env(&g_cfg);
    r = vgpu_region();
    EXPECT(r->limit[0] == 1ull << 20);
    vgpu_region_reset_for_tests();

    /* A region file that is not usable (older layout) falls back to a private region. */
    FILE *f = fopen(path, "w");
    int32_t magic = VGPU_REGION_MAGIC;
    fwrite(&magic, sizeof(magic), 1, f);
    fclose(f);
    EXPECT(truncate(path, 1197897) == 0);
    r = vgpu_region();
    EXPECT(r != NULL && r->limit[0] == 2ull << 20);
    EXPECT(stat(path, &st) == 0 && st.st_size == 1197897); /* untouched */
    vgpu_region_reset_for_tests();
    unlink(path);
}

static void count_entry(const struct vgpu_track_entry *e, void *arg) { (*(int *)arg) += (int)e->bytes; }
static int g_released;
static void release_cb(const struct vgpu_track_entry *e) { g_released += (int)e->bytes; }

static void test_track(void) {
    vgpu_track_clear();
    for (int i = 0; i < 5000; i++) {
        struct vgpu_track_entry e = {.key = 0x1000 + (uint64_t)i * 256, .bytes = 1, .ctx = (uintptr_t)(i % 2 ? 7 : 9),
                                     .kind = VGPU_TRK_PTR, .dev = 0};
        vgpu_track_put(&e);
    }
    EXPECT(vgpu_track_count() == 5000);
    struct vgpu_track_entry out;
    EXPECT(vgpu_track_get(VGPU_TRK_PTR, 0x1000, &out) && out.ctx == 9);
    EXPECT(!vgpu_track_get(VGPU_TRK_ARRAY, 0x1000, &out)); /* kinds are separate namespaces */
    EXPECT(vgpu_track_take(VGPU_TRK_PTR, 0x1000, &out));
    EXPECT(!vgpu_track_take(VGPU_TRK_PTR, 0x1000, &out));
    EXPECT(vgpu_track_set_bytes(VGPU_TRK_PTR, 0x1100, 5));
    int sum = 0;
    vgpu_track_each(VGPU_TRK_PTR, count_entry, &sum);
    EXPECT(sum == 4999 + 4);
    g_released = 0;
    EXPECT(vgpu_track_drop_ctx(7, release_cb) == 2500);
    EXPECT(g_released == 2500 + 4);
    EXPECT(vgpu_track_count() == 2499);
    int taken = 0;
    for (int i = 0; i < 20000; i++) { /* churn: tombstones must not fill the table */
        struct vgpu_track_entry e = {.key = 0x900000 + (uint64_t)i, .bytes = 1, .kind = VGPU_TRK_ASYNC};
        vgpu_track_put(&e);
        taken += vgpu_track_take(VGPU_TRK_ASYNC, e.key, NULL);
    }
    EXPECT(taken == 20000);
    EXPECT(vgpu_track_count() == 2499);
    vgpu_track_clear();
    EXPECT(vgpu_track_count() == 0);
}

static void test_array_bytes(void) {
    CUDA_ARRAY3D_DESCRIPTOR d = {.Width = 256, .Height = 256, .Format = CU_AD_FORMAT_FLOAT, .NumChannels = 4};
    EXPECT(vgpu_array_bytes(&d, 1) == 256 * 256 * 16);
    d.NumChannels = 1;
    EXPECT(vgpu_array_bytes(&d, 3) == (256 * 256 + 128 * 128 + 64 * 64) * 4);
    CUDA_ARRAY3D_DESCRIPTOR one = {.Width = 1000, .Format = CU_AD_FORMAT_UNSIGNED_INT16, .NumChannels = 2};
    EXPECT(vgpu_array_bytes(&one, 1) == 4000);
    CUDA_ARRAY3D_DESCRIPTOR layered = {.Width = 64, .Height = 64, .Depth = 6, .Format = CU_AD_FORMAT_UNSIGNED_INT8,
                                       .NumChannels = 1, .Flags = CUDA_ARRAY3D_CUBEMAP};
    EXPECT(vgpu_array_bytes(&layered, 2) == 64 * 64 * 6 + 32 * 32 * 6);
    CUDA_ARRAY3D_DESCRIPTOR huge = {.Width = ~(size_t)0, .Height = ~(size_t)0, .Format = CU_AD_FORMAT_FLOAT,
                                    .NumChannels = 4};
    EXPECT(vgpu_array_bytes(&huge, 1) == UINT64_MAX); /* saturates */
}

static void test_bucket(void) {
    struct vgpu_bucket b = {.rate = 0.3, .tokens_ns = 0, .cap_ns = 15e6, .last_ns = 1000};
    vgpu_bucket_refill(&b, 1000 + 10000000, 0); /* 10 ms at 30 % */
    EXPECT(b.tokens_ns > 2.99e6 && b.tokens_ns < 3.01e6);
    vgpu_bucket_refill(&b, 1000 + 1000000000, 0); /* idle: capped */
    EXPECT(b.tokens_ns == 15e6);
    vgpu_bucket_refill(&b, 1000 + 2000000000, 100e6); /* committed work raises the ceiling */
    EXPECT(b.tokens_ns == 115e6);
    b.tokens_ns = -50e6;
    vgpu_bucket_refill(&b, 1000 + 2000000000 + 100000000, 0);
    EXPECT(b.tokens_ns > -20.01e6 && b.tokens_ns < -19.99e6);
    vgpu_bucket_refill(&b, 1000, 0); /* time going backwards changes nothing */
    EXPECT(b.tokens_ns > -20.01e6 && b.tokens_ns < -19.99e6);
}


/* Concurrent streams count once; gaps between kernels count not at all. */
static void test_ivset(void) {
    struct vgpu_ivset v = {.n = 0};
    EXPECT(vgpu_ivset_add(&v, 0, 10) == 10);
    EXPECT(vgpu_ivset_add(&v, 2, 5) == 0);   /* fully inside (another stream, same time) */
    EXPECT(vgpu_ivset_add(&v, 8, 14) == 4);  /* partial overlap */
    EXPECT(vgpu_ivset_add(&v, 14, 20) == 6); /* touching: the next kernel on the same stream */
    EXPECT(v.n == 1 && v.s[0] == 0 && v.e[0] == 20);
    EXPECT(vgpu_ivset_add(&v, 30, 40) == 10); /* a gap (copy, cross-stream wait) is not busy */
    EXPECT(vgpu_ivset_add(&v, 25, 28) == 3);  /* harvested out of order */
    EXPECT(v.n == 3 && v.s[1] == 25 && v.s[2] == 30);
    EXPECT(vgpu_ivset_add(&v, -5, 45) == 50 - 20 - 3 - 10); /* covers everything: only the holes are new */
    EXPECT(v.n == 1 && v.s[0] == -5 && v.e[0] == 45);
    EXPECT(vgpu_ivset_add(&v, 50, 50) == 0 && vgpu_ivset_add(&v, 60, 55) == 0); /* empty/backwards */
    /* Two streams, each with 1 ms kernels back to back, shifted by half a kernel: union, not sum. */
    struct vgpu_ivset two = {.n = 0};
    double total = 0;
    for (int i = 0; i < 100; i++) {
        total += vgpu_ivset_add(&two, i * 1e6, (i + 1) * 1e6);
        total += vgpu_ivset_add(&two, i * 1e6 + 0.5e6, (i + 1) * 1e6 + 0.5e6);
    }
    EXPECT(fabs(total - 100.5e6) < 1);
    /* A full set forgets its earliest interval and keeps working. */
    struct vgpu_ivset full = {.n = 0};
    for (int i = 0; i < VGPU_IVSET_MAX + 10; i++) EXPECT(vgpu_ivset_add(&full, i * 10.0, i * 10.0 + 5) == 5);
    EXPECT(full.n == VGPU_IVSET_MAX && full.s[0] == 100.0);
    EXPECT(vgpu_ivset_add(&full, 700, 705) == 0); /* still remembered */
}

static void test_inflation(void) {
    struct vgpu_inflation f = {.k = 1.0};
    for (int i = 0; i < 30; i++) vgpu_inflation_update(&f, 0.6, 0.3, 1); /* spans twice our own turns */
    EXPECT(fabs(f.k - 2.0) < 1e-6);
    for (int i = 0; i < 40; i++) vgpu_inflation_update(&f, 0.3, 0.3, 0); /* neighbour gone: back to 1 */
    EXPECT(f.k == 1.0);
    vgpu_inflation_update(&f, 0.2, 0.4, 1); /* NVML above event time: never below 1 */
    EXPECT(f.k == 1.0);
    struct vgpu_inflation p = {.k = 1.0};
    vgpu_inflation_prior(&p, 0.0); /* nobody else busy: stays 1 */
    EXPECT(p.k == 1.0);
    vgpu_inflation_prior(&p, 0.9); /* a neighbour at 90 %: about 1.9 */
    EXPECT(fabs(p.k - 1.9) < 1e-9);
    vgpu_inflation_prior(&p, 3.0); /* several busy neighbours: capped at 2 */
    EXPECT(fabs(p.k - 2.0) < 1e-9);
    vgpu_inflation_prior(&p, 0.2); /* never lowers */
    EXPECT(fabs(p.k - 2.0) < 1e-9);
    struct vgpu_inflation g = {.k = 1.0};
    vgpu_inflation_update(&g, 0.5, 0.001, 1); /* too little NVML signal to compare */
    EXPECT(g.k == 1.0);
    vgpu_inflation_update(&g, 0.9, 0.01, 1);
    EXPECT(g.k <= VGPU_INFLATION_MAX);
}

/*
 * A time-sliced GPU in miniature: a saturating neighbour gets equal turns, so each of our kernels spans twice
 * its own work in event time. The bucket charged raw event time lets us reach only half the limit (the bug);
 * charged event time / inflation, with the inflation learnt from "NVML" (our true share), it reaches the limit.
 */
static double sim_timesliced(double limit, int correct, double *k_out) {
    struct vgpu_bucket b = {.rate = limit, .tokens_ns = 0, .cap_ns = limit * 50e6, .last_ns = 0};
    struct vgpu_inflation f = {.k = 1.0};
    const double work = 1e6, slowdown = 2.0, window = 200e6;
    double t = 0, share = 0;
    for (int w = 0; w < 40; w++) {
        double own = 0, ev = 0, wend = t + window, wstart = t;
        while (t < wend) {
            vgpu_bucket_refill(&b, (int64_t)t, 0);
            if (b.tokens_ns > 0) {
                double span = work * slowdown;
                t += span;
                b.tokens_ns -= correct ? span / f.k : span;
                own += work;
                ev += span;
            } else {
                t += 100e3;
            }
        }
        share = own / (t - wstart);
        if (correct) vgpu_inflation_update(&f, ev / (t - wstart), share, 1);
    }
    *k_out = f.k;
    return share;
}

static void test_timeslice_sim(void) {
    double k = 0;
    EXPECT(sim_timesliced(0.30, 0, &k) < 0.2); /* uncorrected: about half the limit */
    double s30 = sim_timesliced(0.30, 1, &k);
    EXPECT(fabs(s30 - 0.30) < 0.03 && fabs(k - 2.0) < 0.05);
    double s60 = sim_timesliced(0.45, 1, &k);
    EXPECT(fabs(s60 - 0.45) < 0.03);
    double s10 = sim_timesliced(0.10, 1, &k);
    EXPECT(fabs(s10 - 0.10) < 0.03);
}

static void test_hostpid_diff(void) {
    struct vgpu_nvproc before[] = {{1001, 500}, {1002, 700}};
    struct vgpu_nvproc one_new[] = {{1001, 500}, {1002, 700}, {4242, 300}};
    struct vgpu_nvproc two_new[] = {{1001, 500}, {4242, 300}, {5151, 310}, {1002, 700}};
    struct vgpu_nvproc self[] = {{77, 300}, {1001, 500}};
    unsigned int sib[] = {5151};
    /* table: before, after, self pid, siblings -> host pid */
    EXPECT(vgpu_hostpid_from_diff(before, 2, one_new, 3, 77, NULL, 0) == 4242);
    EXPECT(vgpu_hostpid_from_diff(before, 2, two_new, 4, 77, NULL, 0) == -1);  /* ambiguous: a neighbour too */
    EXPECT(vgpu_hostpid_from_diff(before, 2, two_new, 4, 77, sib, 1) == 4242); /* the sibling's PID is ruled out */
    EXPECT(vgpu_hostpid_from_diff(before, 2, self, 2, 77, NULL, 0) == 77);     /* no PID namespace */
    EXPECT(vgpu_hostpid_from_diff(NULL, -1, self, 2, 77, NULL, 0) == 77);
    EXPECT(vgpu_hostpid_from_diff(NULL, -1, one_new, 3, 77, NULL, 0) == -1); /* nothing to diff against */
    EXPECT(vgpu_hostpid_from_diff(before, 2, before, 2, 77, NULL, 0) == -1); /* nothing appeared */
    EXPECT(vgpu_hostpid_from_diff(before, 2, NULL, -1, 77, NULL, 0) == -1);
    EXPECT(vgpu_nvproc_used(one_new, 3, 4242) == 300 && vgpu_nvproc_used(one_new, 3, 9) == 0);
}

/* The context footprint inside a PID namespace, with a neighbour allocating and freeing meanwhile. */
static void test_ctx_footprint(void) {
    const uint64_t mib = 1ull << 20, ctx_cost = 517 * mib;
    struct vgpu_nvproc before[] = {{1001, 2048 * mib}};
    struct vgpu_nvproc after_alloc[] = {{1001, 6144 * mib}, {4242, ctx_cost}};
    struct vgpu_nvproc after_free[] = {{1001, 1024 * mib}, {4242, ctx_cost}};
    uint64_t dev_before = 2048 * mib;
    /* host PID known: exactly our PID's growth, whatever the neighbour did */
    EXPECT(vgpu_ctx_footprint(before, 1, dev_before, after_alloc, 2, dev_before + 4096 * mib + ctx_cost, 4242) ==
           ctx_cost);
    EXPECT(vgpu_ctx_footprint(before, 1, dev_before, after_free, 2, 1024 * mib + ctx_cost, 4242) == ctx_cost);
    /* a second context of a process already listed: the growth of its own figure */
    struct vgpu_nvproc before2[] = {{4242, ctx_cost}, {1001, 10 * mib}};
    struct vgpu_nvproc after2[] = {{4242, ctx_cost + 300 * mib}, {1001, 900 * mib}};
    EXPECT(vgpu_ctx_footprint(before2, 2, 0, after2, 2, 0, 4242) == 300 * mib);
    /* host PID unknown: the device-wide delta (polluted by the neighbour), capped at 4 GiB */
    EXPECT(vgpu_ctx_footprint(before, 1, dev_before, after_alloc, 2, dev_before + 4096 * mib + ctx_cost, 0) ==
           4ull << 30);
    EXPECT(vgpu_ctx_footprint(before, 1, dev_before, after_free, 2, dev_before - 1024 * mib, 0) == 0);
    EXPECT(vgpu_ctx_footprint(NULL, -1, UINT64_MAX, NULL, -1, UINT64_MAX, 0) == 0); /* no NVML */
    /* With the diff learnt from the same lists, the charge is exact. */
    int hp = vgpu_hostpid_from_diff(before, 1, after_free, 2, 77, NULL, 0);
    EXPECT(hp == 4242 && vgpu_ctx_footprint(before, 1, 0, after_free, 2, 0, (unsigned int)hp) == ctx_cost);
}

static void test_util_samples(void) {
    nvmlProcessUtilizationSample_t s[] = {
        {.pid = 4242, .timeStamp = 1000000, .smUtil = 90}, /* before since: ignored */
        {.pid = 4242, .timeStamp = 2000000, .smUtil = 30}, /* period A: us 30, neighbour 70 */
        {.pid = 9999, .timeStamp = 2000000, .smUtil = 70},
        {.pid = 9999, .timeStamp = 2100000, .smUtil = 100}, /* period B: only the neighbour (we were idle) */
        {.pid = 4242, .timeStamp = 2200003, .smUtil = 34},  /* period C: stamps a few us apart, one period */
        {.pid = 8888, .timeStamp = 2200000, .smUtil = 0},
    };
    double mean = -1;
    unsigned long long newest = 0;
    int others = 0;
    double theirs = -1;
    EXPECT(vgpu_util_from_samples(s, 6, 4242, 1500000, NULL, -1, &mean, &newest, &others, &theirs) == 3);
    EXPECT(fabs(mean - (30 + 0 + 34) / 3.0) < 1e-9); /* the idle period counts as 0 */
    EXPECT(fabs(theirs - (70 + 100 + 0) / 3.0) < 1e-9);
    EXPECT(newest == 2200003 && others == 1);
    others = 0;
    mean = -1;
    EXPECT(vgpu_util_from_samples(s, 6, 4242, 2150000, NULL, -1, &mean, &newest, &others, NULL) == 1);
    EXPECT(fabs(mean - 34) < 1e-9 && others == 0); /* the idle neighbour (smUtil 0) is not "active" */
    EXPECT(vgpu_util_from_samples(s, 6, 4242, 2300000, NULL, -1, &mean, &newest, &others, NULL) == 0);
    /* The neighbour 9999 has exited (not in the process list): its leftover samples are ignored. */
    struct vgpu_nvproc alive[] = {{4242, 1}, {8888, 1}};
    others = 0;
    theirs = -1;
    EXPECT(vgpu_util_from_samples(s, 6, 4242, 1500000, alive, 2, &mean, &newest, &others, &theirs) == 2);
    EXPECT(others == 0 && theirs == 0 && fabs(mean - 32) < 1e-9);
}

/* The capture count: raised before a begin, dropped when the begin failed; an end on a stream the driver
 * cannot answer for (no context here) keeps it raised, the safe direction. */
static void test_capture_count(void) {
    EXPECT(!vgpu_sm_captures_possible());
    vgpu_sm_capture_begin(1);
    EXPECT(vgpu_sm_captures_possible());
    vgpu_sm_capture_begin(0); /* the real begin failed */
    EXPECT(!vgpu_sm_captures_possible());
    vgpu_sm_capture_begin(1);
    vgpu_sm_capture_end(NULL, 0); /* cuStreamIsCapturing fails without a context: still counted */
    EXPECT(vgpu_sm_captures_possible());
    vgpu_sm_capture_begin(0);
    EXPECT(!vgpu_sm_captures_possible());
    struct vgpu_relaxed m;
    vgpu_sm_relax(&m); /* no capture: no mode exchange */
    EXPECT(m.on == 0);
    vgpu_sm_unrelax(&m);
}

/* A dlsym lookup loads nothing and initialises nothing: the answer comes from the hook table and the
 * library's file name. Run in a child that has not initialised the library yet. */
void *vgpu_dlsym_decide(void *handle, const char *name);
static void test_dlsym_without_init(void) {
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        if (vgpu_dlsym_decide(RTLD_DEFAULT, "cuMemAlloc_v2") != (void *)&cuMemAlloc_v2) bad |= 1;
        if (vgpu_dlsym_decide(RTLD_DEFAULT, "cuGetExportTable") != NULL) bad |= 2;
        if (vgpu_dlsym_decide(RTLD_DEFAULT, "cudnnCreate") != NULL) bad |= 4;
        void *drv = dlopen(getenv("KUBE_VGPU_REAL_LIBCUDA"), RTLD_NOW | RTLD_LOCAL);
        if (drv == NULL || vgpu_dlsym_decide(drv, "cuMemAlloc_v2") != (void *)&cuMemAlloc_v2) bad |= 8;
        if (drv == NULL || vgpu_dlsym_decide(drv, "cuDeviceGetName") != NULL) bad |= 16; /* not hooked */
        if (vgpu_real_cuda[VGPU_IDX_cuMemAlloc_v2] != NULL) bad |= 32; /* the real table was not loaded */
        _exit(bad);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    EXPECT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) != 0) fprintf(stderr, "dlsym child: %d\n", WEXITSTATUS(st));
}

int main(void) {
    char path[] = "/tmp/vgpu-unit-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    test_dlsym_without_init(); /* first: before this process initialises the library */
    vgpu_init();
    test_parse_size();
    test_config();
    test_region(path);
    test_track();
    test_array_bytes();
    test_bucket();
    test_ivset();
    test_inflation();
    test_timeslice_sim();
    test_hostpid_diff();
    test_ctx_footprint();
    test_util_samples();
    test_capture_count();
    unlink(path);
    printf("test_unit: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
