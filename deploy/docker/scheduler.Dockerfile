# syntax=docker/dockerfile:1
# kube-vgpu-scheduler image. Build from the repository root:
#   docker build -f deploy/docker/scheduler.Dockerfile -t kube-vgpu/scheduler:0.1.0 .
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
LABEL org.opencontainers.image.title="kube-vgpu-scheduler" \
      org.opencontainers.image.description="HAMi-compatible scheduler extender (filter, prioritize, bind)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=venv /opt/kube-vgpu /opt/kube-vgpu
ENV PATH=/opt/kube-vgpu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8443 9090 9395
ENTRYPOINT ["kube-vgpu-scheduler"]
