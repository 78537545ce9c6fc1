"""Benchmark datasets: official layouts and settings, the ``easi3r benchmark`` runner, synthetic test data.

See :mod:`easi3r.datasets.specs` (what each dataset is and how the official code runs it),
:mod:`easi3r.datasets.benchmark` (:func:`run_benchmark`), :mod:`easi3r.datasets.groundtruth` (readers) and
:mod:`easi3r.datasets.synthetic` (tiny datasets in the real layouts).
"""

from __future__ import annotations

from .benchmark import BenchmarkResult, SequenceResult, run_benchmark
from .specs import DATASETS, DatasetSpec, get_spec, list_sequences
from .synthetic import write_oracle_predictions, write_synthetic_dataset

__all__ = [
    "DATASETS",
    "BenchmarkResult",
    "DatasetSpec",
    "SequenceResult",
    "get_spec",
    "list_sequences",
    "run_benchmark",
    "write_oracle_predictions",
    "write_synthetic_dataset",
]
