/*
 * Unit tests of libvgpu's internals (linked with the ASan/UBSan objects): size parsing and the environment
 * contract, the shared region (creation, layout, charges, exact limit, saturation, dead-slot reclaim, PID
 * reuse, exit), the allocation table, array sizing and the token bucket.
 * Needs KUBE_VGPU_REAL_LIBCUDA pointing at the fake driver (run_check.sh sets it).
 */
#define _GNU_SOURCE
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

int main(void) {
    char path[] = "/tmp/vgpu-unit-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    vgpu_init();
    test_parse_size();
    test_config();
    test_region(path);
    test_track();
    test_array_bytes();
    test_bucket();
    unlink(path);
    printf("test_unit: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
