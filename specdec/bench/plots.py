"""PNG plots of a run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SPEEDUP_TAU = "speedup_tau_per_gamma.png"
ACCEPTANCE = "acceptance_per_position.png"
LATENCY_CDF = "latency_cdf.png"
TOKENS_PER_CATEGORY = "tokens_per_s_per_category.png"


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_speedup_tau(summary: dict, path: Path) -> str | None:
    """Speedup (time and forwards) and tau against gamma, one line per drafting backend."""
    series = defaultdict(list)
    for label, s in summary["methods"].items():
        if s.get("gamma") and s.get("speedup") is not None:
            series[s.get("backend") or label].append((s["gamma"], s.get("speedup"), s.get("forward_speedup"), s.get("tau"), s.get("expected_tau")))
    # A line over one gamma says nothing: the tables carry a single value.
    if not series or all(len({p[0] for p in points}) < 2 for points in series.values()):
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in sorted(series.items()):
        points.sort()
        gammas = [p[0] for p in points]
        left.plot(gammas, [p[1] for p in points], marker="o", label=f"{name} (time)")
        if any(p[2] is not None for p in points):
            left.plot(gammas, [p[2] for p in points], marker="x", linestyle="--", label=f"{name} (forwards)")
        if any(p[3] is not None for p in points):
            right.plot(gammas, [p[3] for p in points], marker="o", label=f"{name} tau")
        if any(p[4] is not None for p in points):
            right.plot(gammas, [p[4] for p in points], linestyle=":", label=f"{name} expected tau")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.set(xlabel="gamma (draft tokens per step)", ylabel="speedup vs target", title="Speedup per gamma")
    right.set(xlabel="gamma (draft tokens per step)", ylabel="tau (tokens per step)", title="Mean accepted length")
    left.legend(fontsize=8)
    if right.lines:
        right.legend(fontsize=8)
    return _save(fig, path)


def plot_acceptance(summary: dict, path: Path) -> str | None:
    """Conditional acceptance accept_at[k] per draft position, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, s in summary["methods"].items():
        at = s.get("accept_at") or []
        if any(v is not None for v in at):
            ks = [k + 1 for k, v in enumerate(at) if v is not None]
            ax.plot(ks, [v for v in at if v is not None], marker="o", label=label)
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set(xlabel="draft position k", ylabel="accept_at[k]", ylim=(0, 1.05), title="Per-position acceptance")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency_cdf(records: list[dict], path: Path) -> str | None:
    """Empirical CDF of e2e latency (waiting included under load), one line per method."""
    by_method = defaultdict(list)
    for r in records:
        if r.get("e2e_s") is not None:
            by_method[r["method"]].append(r["e2e_s"])
    if not by_method:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in by_method.items():
        values.sort()
        ax.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post", label=label)
    ax.set(xlabel="e2e latency (s)", ylabel="fraction of requests", title="Latency CDF", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_tokens_per_category(summary: dict, path: Path) -> str | None:
    """tokens/s per prompt category, grouped bars per method."""
    methods = list(summary["methods"])
    categories = sorted({c for s in summary["methods"].values() for c in (s.get("per_category") or {})})
    if not methods or not categories:
        return None
    fig, ax = plt.subplots(figsize=(min(14, max(6, 0.35 * len(categories) * max(1, len(methods)))), 4.5))
    width = 0.8 / len(methods)
    for i, label in enumerate(methods):
        per = summary["methods"][label].get("per_category") or {}
        values = [(per.get(c) or {}).get("tokens_per_s") or 0 for c in categories]
        ax.bar([x + i * width for x in range(len(categories))], values, width, label=label)
    ax.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(categories))], categories, rotation=30, ha="right")
    ax.set(ylabel="tokens/s", title="Tokens/s per category")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(folder: Path, summary: dict, records: list[dict]) -> list[str]:
    """Write every plot that has data; returns the file names written."""
    folder = Path(folder)
    written = [
        plot_speedup_tau(summary, folder / SPEEDUP_TAU),
        plot_acceptance(summary, folder / ACCEPTANCE),
        plot_latency_cdf(records, folder / LATENCY_CDF),
        plot_tokens_per_category(summary, folder / TOKENS_PER_CATEGORY),
    ]
    return [name for name in written if name]
