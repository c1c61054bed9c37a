/* Launch hooks: every kernel/graph launch entry point goes through the SM controller (smctl.c). */
#define _GNU_SOURCE
#include "vgpu.h"

#define LAUNCH(fn, stream, ptsz, ...)                                                                        \
    do {                                                                                                     \
        REQUIRE_REAL(fn);                                                                                    \
        if (vgpu_passthrough()) return REAL(fn)(__VA_ARGS__);                                                \
        vgpu_region_note_kernel();                                                                           \
        struct vgpu_launch_guard g_;                                                                         \
        vgpu_sm_before_launch(&g_, (stream), (ptsz));                                                        \
        CUresult r_ = REAL(fn)(__VA_ARGS__);                                                                 \
        vgpu_sm_after_launch(&g_, r_);                                                                       \
        return r_;                                                                                           \
    } while (0)

VGPU_EXPORT CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int shmem, CUstream s, void **params,
                                    void **extra) {
    LAUNCH(cuLaunchKernel, s, 0, f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
}

VGPU_EXPORT CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                         unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                                         CUstream s, void **params, void **extra) {
    LAUNCH(cuLaunchKernel_ptsz, s, 1, f, gx, gy, gz, bx, by, bz, shmem, s, params, extra);
}

VGPU_EXPORT CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
    LAUNCH(cuLaunchKernelEx, config != NULL ? config->hStream : NULL, 0, config, f, params, extra);
}

VGPU_EXPORT CUresult cuLaunchKernelEx_ptsz(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {
    LAUNCH(cuLaunchKernelEx_ptsz, config != NULL ? config->hStream : NULL, 1, config, f, params, extra);
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                               unsigned int bx, unsigned int by, unsigned int bz,
                                               unsigned int shmem, CUstream s, void **params) {
    LAUNCH(cuLaunchCooperativeKernel, s, 0, f, gx, gy, gz, bx, by, bz, shmem, s, params);
}

VGPU_EXPORT CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                                                    unsigned int bx, unsigned int by, unsigned int bz,
                                                    unsigned int shmem, CUstream s, void **params) {
    LAUNCH(cuLaunchCooperativeKernel_ptsz, s, 1, f, gx, gy, gz, bx, by, bz, shmem, s, params);
}

VGPU_EXPORT CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) { LAUNCH(cuGraphLaunch, s, 0, exec, s); }

VGPU_EXPORT CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s) { LAUNCH(cuGraphLaunch_ptsz, s, 1, exec, s); }
