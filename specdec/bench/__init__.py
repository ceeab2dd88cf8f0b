"""The benchmark harness: config -> workload -> backends -> records -> report.

Entry points: ``specdec bench|sweep|report`` (:func:`specdec.bench.cli.main`) and, from Python,
:class:`specdec.bench.runner.BenchmarkRunner`. User documentation: docs/bench.md.
"""

from .config import BenchConfig, load_config
from .runner import BenchmarkRunner

__all__ = ["BenchConfig", "BenchmarkRunner", "load_config"]
