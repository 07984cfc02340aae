"""Triton kernels for deps."""
