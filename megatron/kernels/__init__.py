"""Fused kernels for the GPU, each with a test against the reference path it replaces."""
