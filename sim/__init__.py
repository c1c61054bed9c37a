"""Simulators for local mode and the tests: never part of the product wheel or images.

`sim.kubelocal` (kube-local, a Kubernetes REST API subset), `sim.local` (local mode's supervisor, the
kube-scheduler and kubelet stand-ins), `sim.gpus` (simulated GPUs for the device plugin) and `sim.regions`
(shared-region files as libvgpu writes them). `services.*` never imports this package (import-linter).
"""
