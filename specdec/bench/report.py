"""Console tables (rich) of a run's summary, re-rendering saved runs, and side-by-side comparison."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from specdec.errors import UsageError
from specdec.bench.formatting import fmt
from specdec.bench import results as R
from specdec.bench.backends.server.summary import load_notes, load_table


def ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def speedup_text(s: dict) -> str:
    if s.get("speedup") is None:
        return "-"
    text = f"{s['speedup']:.2f}x"
    if s.get("speedup_ci_low") is not None:
        text += f" [{s['speedup_ci_low']:.2f}, {s['speedup_ci_high']:.2f}]"
    return text


def identical_text(s: dict) -> str:
    same = s.get("identical")
    if not same:
        return "-"
    return f"{'yes' if same['all'] else 'NO'} {same['identical']}/{same['pairs']}"


def draft_length_text(s: dict) -> str:
    """The draft length column: gamma, or "5>7.3" (started at 5, mean 7.3) when it varied."""
    length = s.get("draft_length")
    if not s.get("gamma"):
        return "-"
    if length and length["min"] != length["max"]:
        return f"{s['gamma']}>{length['mean']:.1f}"
    return str(s["gamma"])


def summary_tables(metrics: dict, title: str = "") -> list[Table]:
    """Four tables, each under 100 columns (tests/test_bench_report_width.py): speed, latency,
    acceptance, and cost (c, prediction, efficiency, energy, memory)."""
    methods = metrics["summary"]["methods"]

    def table(name: str, columns: tuple[str, ...]) -> Table:
        t = Table(title=f"{title} {name}".strip(), title_justify="left")
        for column in columns:
            t.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
        return t

    speed = table("speed", ("method", "reqs", "tokens", "tok/s", "speedup [95% CI]", "tok/s ratio", "fwd speedup"))
    latency = table("latency", ("method", "TTFT p50 ms", "TPOT p50 ms", "e2e p50/p90/p99 ms", "greedy identical"))
    accept = table("acceptance", ("method", "draft len", "alpha", "accept rate", "tau", "expected tau", "skipped"))
    cost = table("cost", ("method", "c", "predicted", "efficiency", "throughput tok/s", "J/token", "peak mem MiB"))
    for label, s in methods.items():
        e2e = s.get("e2e_s") or {}
        mem = s.get("peak_mem_bytes")
        speed.add_row(label, str(s["requests"]), str(s["new_tokens"]), fmt(s.get("tokens_per_s"), 1), speedup_text(s),
                      fmt(s.get("tokens_per_s_ratio")), fmt(s.get("forward_speedup")))
        latency.add_row(label, ms((s.get("ttft_s") or {}).get("p50")), ms((s.get("tpot_s") or {}).get("p50")),
                        f"{ms(e2e.get('p50'))}/{ms(e2e.get('p90'))}/{ms(e2e.get('p99'))}", identical_text(s))
        accept.add_row(label, draft_length_text(s), fmt(s.get("alpha"), 3), fmt(s.get("draft_acceptance_rate"), 3),
                       fmt(s.get("tau")), fmt(s.get("expected_tau")), str(s.get("skipped") or 0))
        cost.add_row(label, fmt(s.get("c"), 3), fmt(s.get("predicted_speedup")), fmt(s.get("efficiency")),
                     fmt(s.get("throughput"), 1), fmt(s.get("j_per_token"), 4), "-" if mem is None else f"{mem / 2**20:.0f}")
    return [speed, latency, accept, cost]


def notes(metrics: dict) -> list[str]:
    """One-line notes under the tables: ignored options, energy, baseline absence, pairing."""
    lines = []
    for label, options in (metrics.get("ignored_options") or {}).items():
        lines.append(f"{label}: ignored {'; '.join(options)}")
    for reason, count in (metrics.get("workload_skipped") or {}).items():
        lines.append(f"workload: left out {count} record(s): {reason}")
    methods = metrics["summary"]["methods"]
    schedule = ((metrics.get("config") or {}).get("speculative") or {}).get("draft_schedule")
    for label, s in methods.items():
        length = s.get("draft_length")
        if s.get("gamma") and length and length["min"] != length["max"]:
            # "gamma 5" with an adaptive schedule is where it started, not what it proposed.
            figures = f"mean {length['mean']:.1f}, range {length['min']}-{length['max']}"
            if "ngram" in label or "lookup" in label:
                lines.append(f"{label}: n-gram lookup proposes up to {s['gamma']} drafts, as many as it matches: {figures}")
            elif schedule == "adaptive":
                plain = length.get("plain_share") or 0.0
                gate = (f"; {plain:.0%} of steps drafted nothing (the draft gate, where drafting steps were slower "
                        "per token than plain ones, and a last token)" if plain >= 0.005 else "")
                lines.append(f"{label}: draft length adaptive, started at {s['gamma']}, {figures}{gate}")
            else:
                lines.append(f"{label}: draft length {s['gamma']}, cut by the token budget at the end: {figures}")
        for reason, count in (s.get("skipped_reasons") or {}).items():
            lines.append(f"{label}: skipped {count} request(s): {reason}")
    ci_methods = {s["speedup_ci_method"] for s in methods.values() if s.get("speedup_ci_method")}
    for method in sorted(ci_methods):
        lines.append(f"speedup [95% CI]: geometric mean of per-prompt e2e ratios; interval by {method}")
    reasons = {s.get("energy_reason") for s in methods.values() if s.get("energy_j") is None and s.get("energy_reason")}
    for reason in sorted(reasons):
        lines.append(f"energy: null ({reason})")
    monitor = ((metrics.get("sessions") or [{}])[-1] or {}).get("monitor") or {}
    if monitor.get("energy_devices") and monitor.get("energy_j") is not None:
        lines.append(f"energy: {monitor.get('energy_source')}, summed over {', '.join(monitor['energy_devices'])} only")
    if metrics["summary"].get("baseline") is None:
        lines.append("no 'target' baseline in this run: speedups are not available")
    config = metrics.get("config") or {}
    if not (config.get("generation") or {}).get("temperature", 0) <= 1e-6:
        lines.append("sampling: output lengths differ per method; compare 'tok/s ratio' as well as the per-prompt speedup")
    manifest = metrics.get("manifest") or {}
    if manifest:
        served = sorted({s["engine_dtype"] for s in methods.values() if s.get("engine_dtype")})
        dtype = f"{'/'.join(served)} (as the engine ran it)" if served else manifest.get('dtype')
        lines.append(f"{manifest.get('device_name')} | {dtype} | torch {manifest['packages'].get('torch')} | "
                     f"transformers {manifest['packages'].get('transformers')} | threads {manifest.get('torch_threads')} | "
                     f"specdec {(manifest.get('specdec_git') or {}).get('commit') or 'unknown'}"[:160])
    return lines


def print_summary(console: Console, metrics: dict, title: str = "") -> None:
    for table in summary_tables(metrics, title):
        console.print(table)
    load = load_table(metrics)  # serving engines (issue #12): open-loop figures per (method, rate)
    if load is not None:
        console.print(load)
    for line in notes(metrics):
        console.print(f"[dim]{line}[/dim]")
    for line in load_notes(metrics):
        console.print(f"[dim]{escape(line)}[/dim]")


def rerender(folder: str | Path) -> dict:
    """Recompute metrics.json, the benchmark_results files and the plots of a saved run from its
    responses.jsonl and config.yaml."""
    from specdec.bench.config import load_config
    from specdec.bench.runner import write_outputs

    results = R.ResultsDir(folder)
    if not results.path.is_dir():
        raise UsageError(f"no such results folder: {folder}")
    if not results.responses.is_file():
        raise UsageError(f"{folder} holds no {R.RESPONSES}: is it a specdec bench --output-dir?")
    stored = results.stored_config()
    if stored is None:
        raise UsageError(f"{folder} holds no {R.CONFIG}: cannot re-render")
    config = load_config(base=stored, environ={})
    previous = results.read(R.METRICS) or {}
    return write_outputs(results, config.to_dict(), results.stored_hash() or config.hash(), config.methods,
                         previous.get("sessions", []), previous.get("ignored_options", {}),
                         config.get("run.bootstrap"), config.get("load.mode"))


def comparison_table(runs: list[tuple[str, dict]]) -> Table:
    """One row per (run, method): the headline figures side by side."""
    table = Table(title="comparison", title_justify="left")
    for column in ("run", "method", "reqs", "tok/s", "speedup [95% CI]", "fwd speedup", "alpha", "tau", "efficiency",
                   "e2e p50 ms", "identical"):
        table.add_column(column, justify="left" if column in ("run", "method") else "right")
    for name, metrics in runs:
        for label, s in metrics["summary"]["methods"].items():
            table.add_row(name, label, str(s["requests"]), fmt(s.get("tokens_per_s"), 1), speedup_text(s),
                          fmt(s.get("forward_speedup")), fmt(s.get("alpha"), 3), fmt(s.get("tau")),
                          fmt(s.get("efficiency")), ms((s.get("e2e_s") or {}).get("p50")), identical_text(s))
    return table
