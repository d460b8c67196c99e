"""Benchmark subcommands of ``tools/benchmark.py``: one module per subcommand with ``add_arguments`` and ``run``."""
