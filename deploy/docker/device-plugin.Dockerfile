# syntax=docker/dockerfile:1
# kube-vgpu-device-plugin image, with the libvgpu.so it installs on the node (libvgpu_source). Build from
# the repository root:
#   docker build -f deploy/docker/device-plugin.Dockerfile -t kube-vgpu/device-plugin:0.1.0 .
# Same artefacts as `make`: `make -C libvgpu` (as deploy/docker/libvgpu.Dockerfile builds it) and the
# kube-vgpu wheel installed with the exact pins of constraints.txt. x86_64 only (libvgpu).

FROM debian:11.11-slim AS libvgpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY libvgpu/ libvgpu/
RUN make -C libvgpu clean && make -C libvgpu

FROM python:3.11.13-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY gen/ gen/
COPY services/ services/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11.13-slim-bookworm AS venv
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /dist/ /dist/
RUN python -m venv /opt/kube-vgpu \
 && /opt/kube-vgpu/bin/pip install --no-cache-dir -c /tmp/constraints.txt /dist/kube_vgpu-*.whl

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="kube-vgpu-device-plugin" \
      org.opencontainers.image.description="HAMi-compatible NVIDIA device plugin with libvgpu" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv /opt/kube-vgpu /opt/kube-vgpu
COPY --from=libvgpu /src/libvgpu/build/libvgpu.so /opt/kube-vgpu/lib/libvgpu.so
ENV PATH=/opt/kube-vgpu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Root on purpose: the plugin writes the kubelet's device-plugins directory and the host's /usr/local/vgpu
# and /tmp/vgpulock, and reads every GPU through NVML (the DaemonSet runs it privileged).
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["kube-vgpu-device-plugin"]
