// GPU benchmark program for libvgpu (built by libvgpu_bench.py with nvcc; needs an NVIDIA GPU).
//   gpu_bench mem                     driver API: cuMemGetInfo total/free, then 64 MiB cuMemAlloc until OOM
//   gpu_bench sm <secs> <sync 0|1>    a ~2 ms spin kernel over every SM in a loop; prints kernels/s
//   gpu_bench launch <n>              n empty-kernel launches; prints microseconds per launch
#include <cuda.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));                                      \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

__global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) {
    }
}

__global__ void empty_kernel() {}

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static int cmd_mem() {
    CK(cudaSetDevice(0));
    CK(cudaFree(0));  // creates the primary context (charged as context memory by libvgpu)
    size_t free_b = 0, total_b = 0;
    if (cuMemGetInfo(&free_b, &total_b) != CUDA_SUCCESS) return 1;
    printf("total=%zu\nfree=%zu\n", total_b, free_b);
    std::vector<CUdeviceptr> ptrs;
    const size_t chunk = 64ull << 20;
    CUresult r = CUDA_SUCCESS;
    while (true) {
        CUdeviceptr p;
        r = cuMemAlloc(&p, chunk);
        if (r != CUDA_SUCCESS) break;
        ptrs.push_back(p);
        if (ptrs.size() > 100000) break;
    }
    printf("allocated=%zu\noom_code=%d\n", ptrs.size() * chunk, (int)r);
    for (CUdeviceptr p : ptrs) cuMemFree(p);
    return 0;
}

static int cmd_sm(double secs, int sync) {
    CK(cudaSetDevice(0));
    int sms = 0, khz = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
    long long cycles = (long long)khz * 2;  // ~2 ms per block
    int grid = sms * 4;
    spin<<<grid, 128>>>(cycles);
    CK(cudaDeviceSynchronize());
    double t0 = now_s();
    long n = 0;
    while (now_s() - t0 < secs) {
        spin<<<grid, 128>>>(cycles);
        n++;
        if (sync) CK(cudaDeviceSynchronize());
    }
    CK(cudaDeviceSynchronize());
    double dt = now_s() - t0;
    printf("kernels=%ld\nseconds=%.3f\nkernels_per_s=%.3f\n", n, dt, n / dt);
    return 0;
}

static int cmd_launch(long n) {
    CK(cudaSetDevice(0));
    empty_kernel<<<1, 1>>>();
    CK(cudaDeviceSynchronize());
    double t0 = now_s();
    for (long i = 0; i < n; i++) empty_kernel<<<1, 1>>>();
    double launch = now_s() - t0;
    CK(cudaDeviceSynchronize());
    printf("launch_us=%.3f\n", launch * 1e6 / n);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: gpu_bench mem | sm <secs> <sync> | launch <n>\n");
        return 2;
    }
    if (cuInit(0) != CUDA_SUCCESS) {
        fprintf(stderr, "cuInit failed\n");
        return 1;
    }
    if (strcmp(argv[1], "mem") == 0) return cmd_mem();
    if (strcmp(argv[1], "sm") == 0 && argc >= 4) return cmd_sm(atof(argv[2]), atoi(argv[3]));
    if (strcmp(argv[1], "launch") == 0 && argc >= 3) return cmd_launch(atol(argv[2]));
    fprintf(stderr, "bad arguments\n");
    return 2;
}
