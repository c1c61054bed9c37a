"""Simulated GPUs: an inventory-backed GpuBackend and the device plugin entry point that uses it."""
