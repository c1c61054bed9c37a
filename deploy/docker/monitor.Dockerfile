# syntax=docker/dockerfile:1
# kube-vgpu-monitor image. Build from the repository root:
#   docker build -f deploy/docker/monitor.Dockerfile -t kube-vgpu/monitor:0.1.0 .
# Same artefact as `make`: the kube-vgpu wheel, installed with the exact pins of constraints.txt.

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
LABEL org.opencontainers.image.title="kube-vgpu-monitor" \
      org.opencontainers.image.description="Per-node vGPU usage monitor (HAMi metric names on :9394)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv /opt/kube-vgpu /opt/kube-vgpu
ENV PATH=/opt/kube-vgpu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Unprivileged: NVML through the NVIDIA runtime's device nodes, container caches are 0666 in 0777 dirs.
USER 65532:65532
EXPOSE 9394 9091
ENTRYPOINT ["kube-vgpu-monitor"]
