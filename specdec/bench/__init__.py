"""The bench layer, the benchmark harness: config -> workload -> backends -> records -> report.

Owns the typed config (:mod:`~specdec.bench.config`), workloads and arrival schedules
(:mod:`~specdec.bench.workloads`), the backends behind one interface
(:mod:`~specdec.bench.backends`: native, transformers, OpenAI-compatible servers, vLLM
offline), the runner (:mod:`~specdec.bench.runner`), results folders
(:mod:`~specdec.bench.results`), metrics (:mod:`~specdec.bench.metrics`), reports and plots.

May import: :mod:`specdec.engine`, :mod:`specdec.models`, :mod:`specdec.runners`,
:mod:`specdec.errors`. Never the commands (:mod:`specdec.cli`) or :mod:`specdec.main`.
Entry points: ``specdec bench|sweep|report`` (:mod:`specdec.cli.bench`) and, from Python,
:class:`specdec.bench.runner.BenchmarkRunner`. User documentation: docs/bench.md.
"""

from specdec.bench.config import BenchConfig, load_config
from specdec.bench.runner import BenchmarkRunner

__all__ = ["BenchConfig", "BenchmarkRunner", "load_config"]
