# syntax=docker/dockerfile:1
# libvgpu.so alone (`make -C libvgpu`), as an artefact image: copy it out with
#   docker build -f deploy/docker/libvgpu.Dockerfile --output type=local,dest=out .
# or use it as a stage (COPY --from=kube-vgpu/libvgpu:0.1.0 /usr/local/vgpu/libvgpu.so ...).
# Built against glibc 2.31 (Debian 11) so that it loads in application images as old as that: the library
# is preloaded into every GPU container, whatever its base. x86_64 only (src/dlsym_x86_64.S).

FROM debian:11.11-slim AS build
# gcc and make alone (no CUDA toolkit), from the point release this image pins.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc make libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY libvgpu/ libvgpu/
RUN make -C libvgpu clean && make -C libvgpu

FROM scratch
LABEL org.opencontainers.image.title="kube-vgpu-libvgpu" \
      org.opencontainers.image.description="libvgpu.so: per-container GPU memory and SM limits (HAMi-core compatible)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/libvgpu/build/libvgpu.so /usr/local/vgpu/libvgpu.so
