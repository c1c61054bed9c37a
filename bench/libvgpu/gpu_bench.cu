// GPU benchmark program for libvgpu (built by libvgpu_bench.py with nvcc; needs an NVIDIA GPU).
//   gpu_bench mem                     driver API: cuMemGetInfo total/free, then 64 MiB cuMemAlloc until OOM
//   gpu_bench sm <secs> <sync 0|1>    a ~2 ms spin kernel over every SM in a loop; prints kernels/s
//   gpu_bench graph <secs>            the same kernel, 8 per CUDA graph, graphs launched in a loop; kernels/s
//   gpu_bench streams <secs>          two streams taking turns: each kernel waits (cuStreamWaitEvent) for the
//                                     other stream's kernel and a 64 MiB device copy; kernels/s
//   gpu_bench capture                 thread A captures in global mode (PyTorch's default) while thread B
//                                     launches on its own stream; prints capture_ok=1 when the graph builds
//   gpu_bench launch <n>              n empty-kernel launches; prints microseconds per launch
#include <cuda.h>
#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
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

static long long spin_cycles() {
    int khz = 0;
    CK(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, 0));
    return (long long)khz * 2;  // ~2 ms per block
}

static int spin_grid() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    return sms * 4;
}

static int cmd_graph(double secs) {
    CK(cudaSetDevice(0));
    long long cycles = spin_cycles();
    int grid = spin_grid();
    const int per_graph = 8;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < per_graph; i++) spin<<<grid, 128, 0, s>>>(cycles / per_graph);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    double t0 = now_s();
    long n = 0;
    while (now_s() - t0 < secs) {
        CK(cudaGraphLaunch(ge, s));
        n++;
    }
    CK(cudaStreamSynchronize(s));
    double dt = now_s() - t0;
    // One graph is per_graph kernels of 1/per_graph the spin time: report it in spin-kernel equivalents.
    printf("graphs=%ld\nseconds=%.3f\nkernels_per_s=%.3f\n", n, dt, n / dt);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return 0;
}

static int cmd_streams(double secs) {
    CK(cudaSetDevice(0));
    long long cycles = spin_cycles();
    int grid = spin_grid();
    cudaStream_t st[2];
    cudaEvent_t done[2];
    void *buf[2];
    const size_t copy = 64ull << 20;
    for (int i = 0; i < 2; i++) {
        CK(cudaStreamCreateWithFlags(&st[i], cudaStreamNonBlocking));
        CK(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming));
        CK(cudaMalloc(&buf[i], copy));
    }
    spin<<<grid, 128, 0, st[0]>>>(cycles);
    CK(cudaEventRecord(done[0], st[0]));
    CK(cudaStreamWaitEvent(st[1], done[0], 0));
    CK(cudaDeviceSynchronize());
    double t0 = now_s();
    long n = 0;
    int cur = 0;
    while (now_s() - t0 < secs) {
        // The stream waits for the other one's kernel, copies, then runs its kernel: the wait and the copy
        // sit between kernels on the same stream and must not count as kernel time.
        int other = 1 - cur;
        CK(cudaStreamWaitEvent(st[cur], done[other], 0));
        CK(cudaMemcpyAsync(buf[cur], buf[other], copy, cudaMemcpyDeviceToDevice, st[cur]));
        spin<<<grid, 128, 0, st[cur]>>>(cycles);
        CK(cudaEventRecord(done[cur], st[cur]));
        n++;
        cur = other;
        if (n % 64 == 0) CK(cudaStreamSynchronize(st[other]));  // bound the queue
    }
    CK(cudaDeviceSynchronize());
    double dt = now_s() - t0;
    printf("kernels=%ld\nseconds=%.3f\nkernels_per_s=%.3f\n", n, dt, n / dt);
    for (int i = 0; i < 2; i++) {
        CK(cudaFree(buf[i]));
        CK(cudaEventDestroy(done[i]));
        CK(cudaStreamDestroy(st[i]));
    }
    return 0;
}

static int cmd_capture() {
    CK(cudaSetDevice(0));
    long long cycles = spin_cycles() / 20;  // ~0.1 ms
    int grid = spin_grid();
    cudaStream_t cap, other;
    CK(cudaStreamCreateWithFlags(&cap, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
    CK(cudaDeviceSynchronize());
    std::atomic<int> ready{0}, capturing{0}, stop{0};
    long launched = 0;
    cudaError_t launch_err = cudaSuccess;
    std::thread launcher([&] {
        CK(cudaSetDevice(0));
        ready.store(1);
        while (!capturing.load()) std::this_thread::yield();
        while (!stop.load()) {  // launches only: a synchronising call here would be the program's own error
            spin<<<grid, 128, 0, other>>>(cycles);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) launch_err = e;
            launched++;
        }
    });
    cudaGraph_t g = nullptr;
    while (!ready.load()) std::this_thread::yield();
    CK(cudaStreamBeginCapture(cap, cudaStreamCaptureModeGlobal));
    capturing.store(1);
    for (int i = 0; i < 50; i++) {
        spin<<<grid, 128, 0, cap>>>(cycles);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    cudaError_t end = cudaStreamEndCapture(cap, &g);
    stop.store(1);
    launcher.join();
    int ok = end == cudaSuccess && g != nullptr && launch_err == cudaSuccess;
    if (ok) {
        cudaGraphExec_t ge;
        ok = cudaGraphInstantiate(&ge, g, 0) == cudaSuccess && cudaGraphLaunch(ge, cap) == cudaSuccess &&
             cudaStreamSynchronize(cap) == cudaSuccess;
    }
    CK(cudaDeviceSynchronize());
    printf("capture_end=%s\nlauncher=%s\nlaunched=%ld\ncapture_ok=%d\n", cudaGetErrorName(end),
           cudaGetErrorName(launch_err), launched, ok);
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
        fprintf(stderr, "usage: gpu_bench mem | sm <secs> <sync> | graph <secs> | streams <secs> | capture | launch <n>\n");
        return 2;
    }
    if (cuInit(0) != CUDA_SUCCESS) {
        fprintf(stderr, "cuInit failed\n");
        return 1;
    }
    if (strcmp(argv[1], "mem") == 0) return cmd_mem();
    if (strcmp(argv[1], "sm") == 0 && argc >= 4) return cmd_sm(atof(argv[2]), atoi(argv[3]));
    if (strcmp(argv[1], "launch") == 0 && argc >= 3) return cmd_launch(atol(argv[2]));
    if (strcmp(argv[1], "graph") == 0 && argc >= 3) return cmd_graph(atof(argv[2]));
    if (strcmp(argv[1], "streams") == 0 && argc >= 3) return cmd_streams(atof(argv[2]));
    if (strcmp(argv[1], "capture") == 0) return cmd_capture();
    fprintf(stderr, "bad arguments\n");
    return 2;
}
