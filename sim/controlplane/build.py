"""Build the upstream Kubernetes control plane (etcd, kube-apiserver, kube-scheduler,
kube-controller-manager) from the release pinned in sim/controlplane/go.mod, into a cache.

The cache folder is keyed by a hash of everything that decides the binaries' bytes: go.mod, go.sum,
our four tiny main packages, the Go toolchain version and this script's build recipe. A second run
with the same key builds nothing and says so. Progress goes to stderr; the last line on stdout is the
folder holding the binaries, so scripts can do `BIN=$(python3 sim/controlplane/build.py)`.

    python3 sim/controlplane/build.py            # all cores (CI)
    python3 sim/controlplane/build.py -p 1       # one compile at a time on a shared machine

Cache root: $KUBE_VGPU_CACHE or ~/.cache/kube-vgpu; binaries land in <root>/controlplane/<key>/bin and
<root>/controlplane/current points at the latest key built. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLPLANE_DIR = Path(__file__).resolve().parent
KUBERNETES_MODULE = "k8s.io/kubernetes"
# Bump when the go build invocation below changes, so old cache entries are not reused.
BUILD_RECIPE = "1: -trimpath CGO_ENABLED=0 -ldflags=-s -w + version stamps"
# Built in this order: etcd first, since the apiserver needs it to start; the Kubernetes binaries share
# most packages, so the first one compiles the bulk and the others reuse Go's build cache.
COMPONENTS = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager")
# Packages whose version variables upstream's hack/lib/version.sh stamps at link time.
_VERSION_PACKAGES = ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version")
_RELEASE = re.compile(r"^\s*k8s\.io/kubernetes\s+(v1\.(\d+)\.\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class PinnedRelease:
    """The Kubernetes release go.mod pins, and when it was tagged (used as a reproducible build date)."""

    version: str
    minor: str
    tagged_at: str


def cache_root() -> Path:
    configured = os.environ.get("KUBE_VGPU_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "kube-vgpu"


def go_version() -> str:
    return subprocess.run(["go", "version"], check=True, capture_output=True, text=True).stdout.strip()


def cache_key(toolchain: str) -> str:
    digest = hashlib.sha256()
    inputs = [CONTROLPLANE_DIR / "go.mod", CONTROLPLANE_DIR / "go.sum"]
    inputs += [CONTROLPLANE_DIR / "cmd" / name / "main.go" for name in COMPONENTS]
    for path in inputs:
        digest.update(path.relative_to(CONTROLPLANE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(toolchain.encode())
    digest.update(BUILD_RECIPE.encode())
    return digest.hexdigest()[:16]


def pinned_release() -> PinnedRelease:
    match = _RELEASE.search((CONTROLPLANE_DIR / "go.mod").read_text(encoding="utf-8"))
    if match is None:
        raise SystemExit("build.py: go.mod does not require k8s.io/kubernetes v1.x.y; run gen_replace.py")
    listed = subprocess.run(
        ["go", "list", "-m", "-json", KUBERNETES_MODULE],
        cwd=CONTROLPLANE_DIR,
        check=True,
        capture_output=True,
        text=True,
    )
    tagged_at = json.loads(listed.stdout).get("Time", "1970-01-01T00:00:00Z")
    return PinnedRelease(version=match.group(1), minor=match.group(2), tagged_at=tagged_at)


def version_ldflags(release: PinnedRelease) -> str:
    """Stamp the release the way upstream's release build does, so `kubectl version` and the
    /version endpoint report v1.x.y instead of the v0.0.0-master placeholder."""
    stamps = {
        "gitVersion": release.version,
        "gitMajor": "1",
        "gitMinor": release.minor,
        "gitTreeState": "clean",
        "buildDate": release.tagged_at,
    }
    flags = ["-s", "-w"]
    for package in _VERSION_PACKAGES:
        flags += [f"-X {package}.{name}={value}" for name, value in stamps.items()]
    return " ".join(flags)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_go(args: list[str], parallelism: int) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOMAXPROCS=str(parallelism))
    subprocess.run(["go", *args], cwd=CONTROLPLANE_DIR, env=env, check=True)


def build(key_dir: Path, parallelism: int, toolchain: str) -> None:
    release = pinned_release()
    staging = key_dir.with_name(f"{key_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "bin").mkdir(parents=True)
    try:
        _build_into(staging, release, parallelism, toolchain)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Publish atomically: a half-built folder never carries the key's name.
    shutil.rmtree(key_dir, ignore_errors=True)
    staging.rename(key_dir)


def _build_into(staging: Path, release: PinnedRelease, parallelism: int, toolchain: str) -> None:
    total_started = time.monotonic()

    started = time.monotonic()
    run_go(["mod", "download"], parallelism)
    download_s = time.monotonic() - started
    log(f"  modules    downloaded/verified in {download_s:6.1f}s")

    ldflags = version_ldflags(release)
    durations: dict[str, float] = {}
    for component in COMPONENTS:
        started = time.monotonic()
        output = staging / "bin" / component
        run_go(
            [
                "build",
                "-trimpath",
                # Our checkout's commit is not part of the binaries (or the cache key).
                "-buildvcs=false",
                "-mod=readonly",
                f"-p={parallelism}",
                f"-ldflags={ldflags}",
                "-o",
                str(output),
                f"./cmd/{component}",
            ],
            parallelism,
        )
        durations[component] = time.monotonic() - started
        size_mib = output.stat().st_size / 2**20
        log(f"  {component:<24} built in {durations[component]:6.1f}s  ({size_mib:.1f} MiB)")

    total_s = time.monotonic() - total_started
    manifest = {
        "kubernetes": release.version,
        "go": toolchain,
        "recipe": BUILD_RECIPE,
        "parallelism": parallelism,
        "download_seconds": round(download_s, 1),
        "build_seconds": {name: round(seconds, 1) for name, seconds in durations.items()},
        "total_seconds": round(total_s, 1),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log(f"  total {total_s:.1f}s for Kubernetes {release.version}")


def point_current_at(key_dir: Path) -> None:
    current = key_dir.parent / "current"
    temporary = key_dir.parent / f".current-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(key_dir.name)
    temporary.replace(current)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the upstream control plane into a cache.")
    parser.add_argument(
        "-p",
        "--parallelism",
        type=int,
        default=os.cpu_count() or 1,
        help="compile jobs (go build -p and GOMAXPROCS); default: all cores",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has this key")
    args = parser.parse_args(argv)
    if args.parallelism < 1:
        parser.error("--parallelism must be at least 1")

    toolchain = go_version()
    key = cache_key(toolchain)
    key_dir = cache_root() / "controlplane" / key
    if (key_dir / "manifest.json").is_file() and not args.force:
        log(f"control plane {key} already built; nothing to do")
    else:
        log(f"building control plane {key} with {toolchain} (-p {args.parallelism})")
        try:
            build(key_dir, args.parallelism, toolchain)
        except subprocess.CalledProcessError as error:
            log(f"build.py: {' '.join(map(str, error.cmd[:3]))} failed with exit code {error.returncode}")
            return 1
    point_current_at(key_dir)
    print(key_dir / "bin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
