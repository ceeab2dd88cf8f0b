"""Batch-size sweeps: "does speculation still pay at batch 4, 16, 64?".

``specdec bench --batch-sizes 1,4,16`` runs the whole benchmark once per batch size, each into
``<output-dir>/batch-<N>/`` (a complete, resumable run), and prints one row per size: the
batch throughput of every method (output tokens of all rows / summed batch wall time) and each
drafting method's speedup over the autoregressive baseline at that size (geometric mean of
per-prompt e2e ratios, as everywhere). Where a speedup is below 1 the table says so: at that
batch size the baseline is faster.
"""

from __future__ import annotations

from rich.table import Table

from specdec.errors import UsageError
from specdec.bench.report import fmt


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,4,16"`` -> [1, 4, 16]; a UsageError naming the fix otherwise."""
    try:
        sizes = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: write a comma list of sizes, e.g. 1,4,16") from None
    if not sizes or sizes[0] < 1:
        raise UsageError(f"--batch-sizes {text!r}: batch sizes must be >= 1")
    return sizes


def batch_rows(runs: list[tuple[int, dict]], baseline: str = "target") -> list[dict]:
    """One row per (batch size, drafting method) from each run's metrics."""
    rows = []
    for size, metrics in runs:
        methods = metrics["summary"]["methods"]
        base = methods.get(baseline, {})
        for label, summary in methods.items():
            if label == baseline:
                continue
            rows.append({"batch_size": size, "method": label,
                         "baseline_tokens_per_s": base.get("batch_tokens_per_s"),
                         "method_tokens_per_s": summary.get("batch_tokens_per_s"),
                         "speedup": summary.get("speedup"), "alpha": summary.get("alpha"), "tau": summary.get("tau")})
    return rows


def batch_table(rows: list[dict]) -> Table:
    table = Table(title="batch-size sweep (speculative vs autoregressive)", title_justify="left")
    for column in ("batch", "method", "AR tok/s", "method tok/s", "speedup", "alpha", "tau"):
        table.add_column(column, justify="right")
    for r in rows:
        slow = r["speedup"] is not None and r["speedup"] < 1.0
        table.add_row(str(r["batch_size"]), r["method"], fmt(r["baseline_tokens_per_s"]), fmt(r["method_tokens_per_s"]),
                      fmt(r["speedup"], 2, "x") + (" slower" if slow else ""), fmt(r["alpha"], 3), fmt(r["tau"]),
                      style="red" if slow else None)
    return table


def slowdown_note(rows: list[dict]) -> str | None:
    """A line naming the batch sizes where speculation lost, or None."""
    slow = sorted({r["batch_size"] for r in rows if r["speedup"] is not None and r["speedup"] < 1.0})
    if not slow:
        return None
    return (f"speculation is a slowdown at batch size {', '.join(map(str, slow))}: "
            "the autoregressive baseline is faster there")
