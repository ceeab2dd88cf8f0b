"""Gamma sweeps: one run with the target baseline and one drafting method per gamma, so every
gamma is measured on the same prompts, alternating per prompt, with the models loaded once."""

from __future__ import annotations

from rich.table import Table

from specdec.errors import UsageError
from specdec.bench.report import fmt

COLUMNS = ("gamma", "speedup (time)", "speedup (forwards)", "alpha", "tau", "efficiency")


def parse_gammas(text: str) -> list[int]:
    """``"1-10"``, ``"1,2,4,8"``, ``"2-8:2"`` (step) or mixes like ``"1-4,8"`` -> sorted gammas."""
    gammas: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        span, _, step = part.partition(":")
        try:
            if "-" in span:
                low, high = (int(x) for x in span.split("-", 1))
                stride = int(step) if step else 1
                if stride < 1 or high < low:
                    raise ValueError
                gammas.update(range(low, high + 1, stride))
            else:
                gammas.add(int(span))
        except ValueError:
            raise UsageError(f"--gamma {text!r}: write a range like 1-10, a list like 1,2,4,8, or 2-8:2") from None
    if not gammas or min(gammas) < 1:
        raise UsageError(f"--gamma {text!r}: gammas must be >= 1")
    return sorted(gammas)


def sweep_methods(method: str, gammas: list[int]) -> list[str]:
    return ["target"] + [f"{method}:gamma={g}" for g in gammas]


def sweep_rows(metrics: dict) -> list[dict]:
    """One row per gamma (methods named ``backend:gamma=K``) with the sweep's columns."""
    rows = []
    for label, s in metrics["summary"]["methods"].items():
        if ":gamma=" not in label:
            continue
        rows.append({"method": label, "gamma": int(label.rsplit("=", 1)[1]), "speedup": s.get("speedup"),
                     "speedup_ci_low": s.get("speedup_ci_low"), "speedup_ci_high": s.get("speedup_ci_high"),
                     "forward_speedup": s.get("forward_speedup"), "alpha": s.get("alpha"), "tau": s.get("tau"),
                     "expected_tau": s.get("expected_tau"), "predicted_speedup": s.get("predicted_speedup"),
                     "efficiency": s.get("efficiency"), "tokens_per_s": s.get("tokens_per_s")})
    return sorted(rows, key=lambda r: r["gamma"])


def best_gamma(rows: list[dict]) -> int | None:
    """The gamma with the highest time speedup; None when no speedup was measured or none is
    above 1 (then no gamma pays: the autoregressive baseline is best, see :func:`verdict`)."""
    measured = [r for r in rows if r["speedup"] is not None]
    if not measured:
        return None
    best = max(measured, key=lambda r: r["speedup"])
    return best["gamma"] if best["speedup"] > 1.0 else None


def verdict(rows: list[dict]) -> str:
    """One line: the best gamma, or that none pays."""
    measured = [r for r in rows if r["speedup"] is not None]
    if not measured:
        return "best gamma: - (no speedup measured)"
    best = best_gamma(rows)
    if best is None:
        top = max(measured, key=lambda r: r["speedup"])
        return (f"no gamma pays: every one is slower than the autoregressive baseline (the fastest, gamma "
                f"{top['gamma']}, runs at {top['speedup']:.2f}x); the baseline is best here")
    return f"best gamma: {best}"


def sweep_table(rows: list[dict]) -> Table:
    table = Table(title="gamma sweep", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    best = best_gamma(rows)
    for r in rows:
        style = "bold green" if r["gamma"] == best else None
        table.add_row(str(r["gamma"]), fmt(r["speedup"], 2, "x"), fmt(r["forward_speedup"], 2, "x"), fmt(r["alpha"], 3),
                      fmt(r["tau"]), fmt(r["efficiency"]), style=style)
    return table


def sweep_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append(f"| {r['gamma']} | {fmt(r['speedup'], 2, 'x')} | {fmt(r['forward_speedup'], 2, 'x')} | "
                     f"{fmt(r['alpha'], 3)} | {fmt(r['tau'])} | {fmt(r['efficiency'])} |")
    lines.append("")
    lines.append(verdict(rows))
    return "\n".join(lines) + "\n"
