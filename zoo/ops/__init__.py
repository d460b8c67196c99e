"""Python API of the compute kernels; each op dispatches to ``cuda_ext`` (Triton on GPU, fast PyTorch on CPU)."""
