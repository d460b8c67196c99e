"""Python API of the compute kernels; each op dispatches to ``cuda_ext`` (Triton on GPU, fast PyTorch on CPU).

Every op resolves its backend through one dispatcher, :mod:`cuda_ext._dispatch`: ``backend=`` where an op takes
it, else ``$ZOO_KERNEL`` -- a global backend (``ref | cpu | triton | mamba_ssm``) and/or per-op entries
``OP:BACKEND`` with OP in ``scan, fps, knn, ball_query, sddmm`` (``ZOO_KERNEL=scan:mamba_ssm,fps:cpu``) -- else
automatic. An op without the globally preferred backend uses its automatic choice (logged once at INFO).
"""
