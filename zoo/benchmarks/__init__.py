"""Speed and memory benchmarks (``zoo benchmark NAME``, ``python tools/benchmark.py NAME``): one module per
benchmark with ``add_arguments(parser)`` and ``run(args)``; rows are checked to compute the same result before they
are timed, and figures are ratios against a baseline measured in the same run."""
