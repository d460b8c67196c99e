"""The ``zoo`` command line: ``zoo train | eval | sample | export | export-weights | prepare-data | make-corrupted |
report | list | config`` (also ``python -m zoo``); ``tools/*.py`` are thin shims over the same functions.

One module per subcommand (``zoo.cli.train``, ``zoo.cli.evaluate``, ``zoo.cli.export``, ...), :mod:`zoo.cli.main`
dispatches. User errors (:data:`zoo.errors.USER_ERRORS`) print as one ``error:`` message and exit 2; ``ZOO_DEBUG=1``
shows their traceback.
"""
from zoo.cli.evaluate import eval_main
from zoo.cli.main import main
from zoo.cli.train import build_recipe, load_run_config, run_training, train_main

__all__ = ["main", "train_main", "eval_main", "run_training", "build_recipe", "load_run_config"]
