"""Studies: a pipeline stage expanded over seeds × named variants, statistics over its cells, and the markdown
tables generated from them.

* :mod:`zoo.studies.matrix` — cells, their directories and ids, ``${stage:...}`` between cells.
* :mod:`zoo.studies.runner` — run cells N at a time as processes (``tools/train.py STUDY --jobs N``).
* :mod:`zoo.studies.stats` — mean, std, Student-t interval, paired differences, percentile bootstrap.
* :mod:`zoo.studies.summarise` — the summarise stage: cells' ``metrics.json`` -> ``results.json`` / ``results.csv``.
* :mod:`zoo.studies.per_example` — per-example metric arrays beside ``metrics.json`` (for the paired bootstrap).
* :mod:`zoo.studies.report` — markdown tables from results, README blocks between markers (``tools/report.py``).

The pipeline side (config keys, ``--cell``, ``--list-cells``) is in :mod:`zoo.engine.pipeline`.
"""
from zoo.studies.matrix import Cell, Matrix, parse_cell_id
from zoo.studies.per_example import load_per_example, save_per_example
from zoo.studies.report import check_markdown, render_table, update_markdown
from zoo.studies.stats import bootstrap_mean, describe, paired_difference, t_interval
from zoo.studies.summarise import SummariseSpec, summarise_cells, write_results

__all__ = ["Cell", "Matrix", "parse_cell_id", "load_per_example", "save_per_example", "check_markdown",
           "render_table", "update_markdown", "bootstrap_mean", "describe", "paired_difference", "t_interval",
           "SummariseSpec", "summarise_cells", "write_results"]
