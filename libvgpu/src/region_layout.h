/*
 * The per-container shared region ("cache file"), HAMi-core layout version 1.2, byte for byte
 * (x86-64 glibc: sem_t is 32 bytes). sizeof = 2,008,952; the file is one byte longer.
 * Offsets are asserted below; the Python reader (services/common/shared_region.py) mirrors them.
 */
#ifndef VGPU_REGION_LAYOUT_H
#define VGPU_REGION_LAYOUT_H

#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>

#define VGPU_REGION_MAGIC 19920718
#define VGPU_REGION_MAJOR 1u
#define VGPU_REGION_MINOR 2u
#define VGPU_REGION_DEVICES 16
#define VGPU_REGION_SLOTS 1024
#define VGPU_UUID_LEN 96

typedef struct {
    uint64_t context_size;
    uint64_t module_size;
    uint64_t data_size;
    uint64_t offset;
    uint64_t total;
    uint64_t unused[3];
} vgpu_devmem_t;

typedef struct {
    uint64_t dec_util;
    uint64_t enc_util;
    uint64_t sm_util;
    uint64_t unused[3]; /* kube-vgpu: [0] CLOCK_MONOTONIC ms of the last sm_util write, [1] saturated flag */
} vgpu_devutil_t;

typedef struct {
    int32_t pid;
    int32_t hostpid;
    vgpu_devmem_t used[VGPU_REGION_DEVICES];
    uint64_t monitorused[VGPU_REGION_DEVICES];
    vgpu_devutil_t device_util[VGPU_REGION_DEVICES];
    int32_t status;
    int32_t pad0;
    uint64_t seqlock;
    uint64_t unused[2]; /* kube-vgpu: unused[0] = /proc start time of pid (PID-reuse check) */
} vgpu_slot_t;

typedef struct {
    int32_t initialized_flag;
    uint32_t major_version;
    uint32_t minor_version;
    int32_t sm_init_flag;
    uint64_t owner_pid;
    sem_t sem;
    uint64_t device_num;
    char uuids[VGPU_REGION_DEVICES][VGPU_UUID_LEN];
    uint64_t limit[VGPU_REGION_DEVICES];
    uint64_t sm_limit[VGPU_REGION_DEVICES];
    vgpu_slot_t procs[VGPU_REGION_SLOTS];
    int32_t proc_num;
    int32_t utilization_switch;
    int32_t recent_kernel;
    int32_t priority;
    uint64_t last_kernel_time;
    sem_t sem_postinit;
} vgpu_region_t;

#define VGPU_REGION_SIZE 2008952u
#define VGPU_REGION_FILE_SIZE (VGPU_REGION_SIZE + 1u)

_Static_assert(sizeof(sem_t) == 32, "HAMi-core layout needs a 32-byte sem_t (x86-64 glibc)");
_Static_assert(sizeof(vgpu_devmem_t) == 64, "device_memory_t");
_Static_assert(sizeof(vgpu_devutil_t) == 48, "device_util_t");
_Static_assert(sizeof(vgpu_slot_t) == 1960, "slot size");
_Static_assert(offsetof(vgpu_slot_t, used) == 8, "slot.used");
_Static_assert(offsetof(vgpu_slot_t, monitorused) == 1032, "slot.monitorused");
_Static_assert(offsetof(vgpu_slot_t, device_util) == 1160, "slot.device_util");
_Static_assert(offsetof(vgpu_slot_t, status) == 1928, "slot.status");
_Static_assert(offsetof(vgpu_slot_t, seqlock) == 1936, "slot.seqlock");
_Static_assert(offsetof(vgpu_slot_t, unused) == 1944, "slot.unused");
_Static_assert(offsetof(vgpu_region_t, owner_pid) == 16, "owner_pid");
_Static_assert(offsetof(vgpu_region_t, sem) == 24, "sem");
_Static_assert(offsetof(vgpu_region_t, device_num) == 56, "device_num");
_Static_assert(offsetof(vgpu_region_t, uuids) == 64, "uuids");
_Static_assert(offsetof(vgpu_region_t, limit) == 1600, "limit");
_Static_assert(offsetof(vgpu_region_t, sm_limit) == 1728, "sm_limit");
_Static_assert(offsetof(vgpu_region_t, procs) == 1856, "procs");
_Static_assert(offsetof(vgpu_region_t, proc_num) == 2008896, "proc_num");
_Static_assert(offsetof(vgpu_region_t, utilization_switch) == 2008900, "utilization_switch");
_Static_assert(offsetof(vgpu_region_t, recent_kernel) == 2008904, "recent_kernel");
_Static_assert(offsetof(vgpu_region_t, priority) == 2008908, "priority");
_Static_assert(offsetof(vgpu_region_t, last_kernel_time) == 2008912, "last_kernel_time");
_Static_assert(offsetof(vgpu_region_t, sem_postinit) == 2008920, "sem_postinit");
_Static_assert(sizeof(vgpu_region_t) == VGPU_REGION_SIZE, "region size");

#endif
