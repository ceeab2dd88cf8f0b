"""Console rendering of a baseline-versus-speculative comparison (``specdec``, ``specdec demo``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


from specdec.bench.formatting import fmt


def _fmt(value, digits: int = 3, suffix: str = "") -> str:
    return fmt(value, digits, suffix)


def render_comparison(report: dict, console: Console | None = None) -> None:
    """Print times, both texts, the speedup and the acceptance figures of one comparison.
    Longer than a screen on purpose: one table, drawn row by row in the order it is read."""
    console = console or Console()
    b = report["baseline"]["stats"]
    s = report["speculative"]["stats"]
    mode = "greedy" if report["greedy"] else (
        f"sampling (temperature {report['temperature']}, top_k {report['top_k']}, top_p {report['top_p']}, seed {report['seed']})"
    )
    drafter = f"draft model {report['draft']}" if report["drafter"] == "model" else "n-gram prompt lookup"
    console.print(
        f"[bold]target[/] {report['target']}  [bold]drafter[/] {drafter}  [bold]gamma[/] {report['gamma']} ({report['draft_schedule']})  "
        f"[bold]device[/] {report['device']} ({report['dtype']})  [bold]mode[/] {mode}  "
        f"[bold]max new tokens[/] {report['max_new_tokens']}"
    )
    for note in report.get("prepack") or ():
        console.print(Text(f"kernels: {note}", style="dim"))
    console.print(Text(f"prompt: {report['prompt']}"))

    table = Table(title="autoregressive baseline vs speculative decoding (after a warm-up of each)")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("speculative", justify="right")
    rows = [
        ("time e2e (s)", b["e2e_s"], s["e2e_s"]),
        ("time to first token (s)", b["ttft_s"], s["ttft_s"]),
        ("new tokens", b["new_tokens"], s["new_tokens"]),
        ("tokens/s", b["tokens_per_s"], s["tokens_per_s"]),
        ("target forwards", b["target_forwards"], s["target_forwards"]),
        ("draft forwards", b["draft_forwards"], s["draft_forwards"]),
        ("t_target, one decode forward (ms)", _ms(b["t_target"]), _ms(s["t_target"])),
        ("t_draft, one draft forward (ms)", None, _ms(s["t_draft"])),
    ]
    for label, left, right in rows:
        table.add_row(label, _fmt(left), _fmt(right))
    console.print(table)

    console.print(f"[bold]speedup[/] {_fmt(report['speedup'], 2, 'x')} (baseline e2e / speculative e2e)   "
                  f"[bold]forward speedup[/] {_fmt(report['forward_speedup'], 2, 'x')}")
    accept_at = ", ".join(f"{k}: {_fmt(v, 2)}" for k, v in enumerate(s["accept_at"], start=1)) or "-"
    console.print(
        f"[bold]acceptance[/] alpha {_fmt(s['alpha'])}  tau {_fmt(s['tau'], 2)} tokens/step  "
        f"draft acceptance rate {_fmt(s['draft_acceptance_rate'])}  accepted {s['accepted']}/{s['proposed']} "
        f"in {s['steps']} steps"
    )
    if report.get("c") is not None:
        console.print(f"[bold]draft cost[/] c {_fmt(report['c'])} ({report['c_basis']})")
        console.print(f"[bold]predicted speedup[/] {_fmt(report['predicted_speedup'], 2, 'x')} (Leviathan et al. 3.8 "
                      f"over the draft lengths used)   [bold]efficiency[/] {_fmt(report['efficiency'], 2)}")
    console.print(f"[bold]per-position acceptance[/] (accept_at[k]) {accept_at}")
    if report["identical"] is not None:
        if report["identical"]:
            console.print("[bold]greedy outputs[/] [green]identical[/] (token for token)")
        else:
            console.print(f"[bold]greedy outputs[/] [red]DIFFERENT[/] from new token {report['first_difference']}")
            if report["dtype"] in ("bfloat16", "float16"):
                console.print(
                    f"  why: in {report['dtype']}, verifying several tokens in one forward rounds differently from "
                    "one-token decoding, so near-tied tokens can flip; run with --dtype float32 for exact equality"
                )
    console.print(Text("baseline text:    ", style="bold") + Text(report["baseline"]["text"]))
    console.print(Text("speculative text: ", style="bold") + Text(report["speculative"]["text"]))


def _ms(seconds):
    return None if seconds is None else seconds * 1000.0
