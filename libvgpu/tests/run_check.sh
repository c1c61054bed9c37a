#!/usr/bin/env bash
# make check: the layer rule on the release objects (check_layers.sh), then the unit tests and the scenario
# program against the ASan/UBSan build of libvgpu and the fake driver. Every case uses its own cache file.
# Exit status is the number of failed cases (0 = pass).
set -u
BUILD=${1:-build}
HERE=$(cd "$(dirname "$0")/.." && pwd)
B="$HERE/$BUILD"
TMP=$(mktemp -d /tmp/vgpu-check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export KUBE_VGPU_REAL_LIBCUDA="$B/asan/fake/libcuda.so.1" # the sanitized fake, which the programs link
export KUBE_VGPU_REAL_LIBNVML="$B/asan/fake/libnvidia-ml.so.1"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$HERE/tests/lsan.supp:print_suppressions=0"
export LIBCUDA_LOG_LEVEL=1
unset LD_PRELOAD CUDA_DEVICE_MEMORY_LIMIT CUDA_DEVICE_SM_LIMIT CUDA_DISABLE_CONTROL GPU_CORE_UTILIZATION_POLICY

failed=0
n=0
run() { # run <name> <expected-output-regex|-> <env...> -- <command...>
    local name=$1 want=$2
    shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    n=$((n + 1))
    local out="$TMP/$name.out"
    if env CUDA_DEVICE_MEMORY_SHARED_CACHE="$TMP/$name.cache" FAKE_GPU_STATE="$TMP/$name.gpu" "${envs[@]}" "$@" \
        >"$out" 2>&1; then
        if [ "$want" != "-" ] && ! grep -Eq "$want" "$out"; then
            echo "FAIL $name: output does not match /$want/"; cat "$out"; failed=$((failed + 1)); return
        fi
        echo "ok   $name"
    else
        echo "FAIL $name (exit $?)"; cat "$out"; failed=$((failed + 1))
    fi
}

S="$B/asan/scenario"
run layers "^layers: ok" -- "$HERE/tests/check_layers.sh" "$B/obj"
run unit "0 failures" -- "$B/asan/test_unit"
run families "^end=0" CUDA_DEVICE_MEMORY_LIMIT=1g -- "$S" families
run oom_alloc "^one_more=2" CUDA_DEVICE_MEMORY_LIMIT=256m -- "$S" oom alloc
run oom_managed "^one_more=2" CUDA_DEVICE_MEMORY_LIMIT=256m -- "$S" oom managed
run oom_vmm "^one_more=2" CUDA_DEVICE_MEMORY_LIMIT=256m -- "$S" oom vmm
run oom_async "^one_more=2" CUDA_DEVICE_MEMORY_LIMIT=256m FAKE_POOL_GRANULARITY=1 -- "$S" oom async
run info "^dev0.cu_total=536870912" CUDA_DEVICE_MEMORY_LIMIT=512m -- "$S" info 2
run procaddr "^nested.cuMemAlloc=libvgpu" CUDA_DEVICE_MEMORY_LIMIT=1g -- "$S" procaddr
run procaddr_alt "^procaddr_alloc_delta=2097152" CUDA_DEVICE_MEMORY_LIMIT=1g FAKE_PROCADDR_ALT=1 -- "$S" procaddr
run dlsym "^next.dlsym=libvgpu" CUDA_DEVICE_MEMORY_LIMIT=1g -- "$S" dlsym
run ctx "^ctx_destroyed=0" CUDA_DEVICE_MEMORY_LIMIT=1g -- "$S" ctx
run threads "^threads_delta=0" CUDA_DEVICE_MEMORY_LIMIT=1g -- "$S" threads 8
run fork "^child_alloc=0" CUDA_DEVICE_MEMORY_LIMIT=1g -- "$S" fork
run sm30 "^share=0\.(2[5-9]|3[0-4])" CUDA_DEVICE_SM_LIMIT=30 -- "$S" sm async kernel 1 800
run passthrough "^dev0.cu_total=17179869184" CUDA_DEVICE_MEMORY_LIMIT=1g CUDA_DISABLE_CONTROL=true -- "$S" info 1
# The fake driver's own semantics (no libvgpu): capture-mode rules, and events spanning other processes' slices.
F="$B/asan/scenario_share"
run capture_rules "^isolation.end=901" -- "$F" capture_rules
run evtime "^own_kernel_ms=20.000" -- "$F" evtime 20 800
# Two saturating processes on one GPU are time-sliced: each gets half of the device.
run slicing "^share=0\.(4[6-9]|5[0-4])" -- bash -c "\"$S\" sm async kernel 0.5 800 stream >/dev/null &
    \"$S\" sm async kernel 0.5 800 stream; wait"
echo "make check: $((n - failed))/$n passed"
exit $failed
