"""GPU kernels (Triton) with plain-PyTorch references and fast CPU fallbacks. Importing never requires a GPU."""
