"""Summaries and tables of benchmarks/gpu.py, computed from its JSON report alone (so a saved or
interrupted run prints again with ``gpu.py --show FILE``).

Figures (seconds in the report, ms / % / GiB in the tables):
- per arm, over the "main" prompts: median tok/s; per-prompt tok/s ratios to hf-static and to
  sd-ar (median, min..max); pooled alpha and tau (counts summed, not ratios averaged); c;
  host syncs per token and per step; loop overhead per step; peak GPU memory;
- Leviathan's prediction (Theorem 3.8 over the draft lengths used) beside the measured
  speedup of sd-draft over sd-ar, per prompt, and their ratio (efficiency);
- the n-gram arm against sd-ar on the prompt that repeats its input;
- the issue #10 targets with the figures that check them.
"""

from __future__ import annotations

import math
import statistics

from specdec.engine.stats import predicted_speedup_from_lengths

ENGINE_ARMS = ("sd-ar", "sd-draft", "sd-ngram")
#: The issue's targets (docs/gpu.md).
TARGET_AR_VS_STATIC = 1.0
TARGET_LOOP_PCT = 10.0
TARGET_SYNCS_PER_STEP = 1.0
TARGET_EFFICIENCY = 0.9
TARGET_NGRAM_REPEAT = 1.3


# --- small statistics --------------------------------------------------------------------------


def _finite(values):
    return [v for v in values if v is not None and not math.isnan(v)]


def _median(values):
    values = _finite(values)
    return statistics.median(values) if values else None


def _geomean(values):
    values = [v for v in _finite(values) if v > 0]
    return statistics.geometric_mean(values) if values else None


def _spread(values):
    """(median, min, max), or None."""
    values = _finite(values)
    return (statistics.median(values), min(values), max(values)) if values else None


def _ratios(records, arm, base):
    """Per record, ``arm``'s tok/s over ``base``'s (records where both ran)."""
    return [r["runs"][arm]["tokens_per_s"] / r["runs"][base]["tokens_per_s"]
            for r in records if arm in r["runs"] and base in r["runs"] and r["runs"][base]["tokens_per_s"]]


def pooled(stats_rows) -> dict:
    """alpha, tau and the proposal-length histogram over engine stats rows (counts summed)."""
    accepted = sum(s["accepted"] for s in stats_rows)
    rejections = sum(s["rejections"] for s in stats_rows)
    steps = sum(s["steps"] for s in stats_rows)
    step_tokens = sum((s["tau"] or 0.0) * s["steps"] for s in stats_rows)
    histogram: dict[str, int] = {}
    for s in stats_rows:
        for g, n in (s.get("proposal_lengths") or {}).items():
            histogram[g] = histogram.get(g, 0) + n
    return {"alpha": accepted / (accepted + rejections) if accepted + rejections else None,
            "tau": step_tokens / steps if steps else None, "proposal_lengths": histogram}


# --- per-run figures ---------------------------------------------------------------------------


def _steps(run) -> int:
    """Steps of a generation (rows of a batch step together; the longest row counts)."""
    return max(s["steps"] for s in run["stats"])


def loop_seconds(run) -> float:
    """e2e time the forwards do not explain: sampling, verification, rollback, host work, waits.
    The clock figures are shared by the rows of a batch (row 0 carries them); graph capture in
    a measured run is reported apart, not counted as loop."""
    s = run["stats"][0]
    forwards = sum(s.get(k) or 0.0 for k in ("target_prefill_s", "draft_prefill_s", "target_decode_s",
                                             "draft_decode_s", "graph_capture_s"))
    return run["e2e_s"] - forwards


def record_c(record) -> float | None:
    """c on one prompt: sd-draft's mean draft forward over sd-ar's width-1 target forward on the
    same prompt; without sd-ar, the engine's own c of the speculative run."""
    stats = record["runs"].get("sd-draft", {}).get("stats")
    if not stats or stats[0].get("t_draft") is None:
        return None
    ar = record["runs"].get("sd-ar")
    if ar and ar["stats"][0].get("t_target"):
        return stats[0]["t_draft"] / ar["stats"][0]["t_target"]
    return stats[0].get("c")


def t_target_1(records, table, engine_graphs: bool) -> float | None:
    """Seconds of a width-1 target forward: sd-ar's in-run figure, else the per-width table's
    (the mode the engine runs)."""
    in_run = _median(r["runs"]["sd-ar"]["stats"][0]["t_target"] for r in records if "sd-ar" in r["runs"])
    if in_run is not None:
        return in_run
    modes = (table or {}).get("target", {})
    entry = modes.get("graph") if engine_graphs and "graph" in modes else modes.get("eager")
    ms = entry and entry["ms"].get("1")
    return ms / 1000 if ms else None


# --- summaries ---------------------------------------------------------------------------------


def summarize_arms(data: dict) -> dict:
    manifest, records, warmup = data["manifest"], data["records"], data.get("warmup", {})
    main = [r for r in records if r["group"] == "main"]
    arms = [a for a in manifest["arms"] if any(a in r["runs"] for r in main)]
    t1 = t_target_1(main, data.get("forward_costs"), manifest["engine_graphs"])
    summary = {}
    for arm in arms:
        runs = [r["runs"][arm] for r in main if arm in r["runs"]]
        row = {"tok_s": _median(run["tokens_per_s"] for run in runs), "prompts": len(runs),
               "vs_hf_static": _spread(_ratios(main, arm, "hf-static")), "vs_sd_ar": _spread(_ratios(main, arm, "sd-ar")),
               "warmup_s": warmup.get(arm, {}).get("seconds"), "capture_s": warmup.get(arm, {}).get("graph_capture_s")}
        syncs = [run["syncs"] for run in runs]
        tokens = sum(run["new_tokens"] for run in runs)
        row["syncs_per_token"] = sum(syncs) / tokens if None not in syncs and tokens else None
        peaks = [run["peak_bytes"] for run in runs]
        row["peak_gib"] = max(peaks) / 2**30 if None not in peaks else None
        if "hf-dynamic" in arms and arm != "hf-dynamic":
            row["same_as_hf_dynamic"] = sum(r["runs"][arm]["token_ids"] == r["runs"]["hf-dynamic"]["token_ids"]
                                            for r in main if arm in r["runs"] and "hf-dynamic" in r["runs"])
        if arm in ENGINE_ARMS:
            steps = sum(_steps(run) for run in runs)
            row.update(pooled([s for run in runs for s in run["stats"]]))
            row["syncs_per_step"] = sum(syncs) / steps if None not in syncs and steps else None
            row["loop_s_per_step"] = sum(loop_seconds(run) for run in runs) / steps if steps else None
            row["loop_pct_of_t1"] = 100 * row["loop_s_per_step"] / t1 if t1 and row["loop_s_per_step"] is not None else None
            row["capture_s_measured"] = sum(run["stats"][0].get("graph_capture_s") or 0.0 for run in runs)
            if arm == "sd-draft":
                row["c"] = _median(record_c(r) for r in main)
        summary[arm] = row
    return {"arms": summary, "t_target_1_s": t1, "prompts": len(main)}


def prediction(data: dict) -> dict | None:
    """Leviathan et al. Theorem 3.8 over the draft lengths used, per prompt, beside the measured
    speedup of sd-draft over sd-ar on that prompt. The manifest's alpha_given / c_given (the
    --alpha / --c overrides) replace the measured figures; with a given alpha the draft length
    is gamma every step. Efficiency (measured / predicted) only from real weights and a
    measured alpha."""
    manifest = data["manifest"]
    main = [r for r in data["records"] if r["group"] == "main" and "sd-draft" in r["runs"]]
    if not main:
        return None
    alpha_given, c_given = manifest.get("alpha_given"), manifest.get("c_given")
    per_prompt = []
    for r in main:
        measured_figures = pooled(r["runs"]["sd-draft"]["stats"])
        alpha = alpha_given if alpha_given is not None else measured_figures["alpha"]
        lengths = {str(manifest["gamma"]): 1} if alpha_given is not None else measured_figures["proposal_lengths"]
        c = record_c(r)
        predicted = predicted_speedup_from_lengths(alpha, c_given if c_given is not None else c, lengths)
        measured = r["runs"]["sd-draft"]["tokens_per_s"] / r["runs"]["sd-ar"]["tokens_per_s"] if "sd-ar" in r["runs"] else None
        per_prompt.append({"unit": r["unit"], "alpha": alpha, "c": c, "predicted": predicted, "measured": measured})
    predicted = _geomean(p["predicted"] for p in per_prompt)
    measured = _geomean(p["measured"] for p in per_prompt)
    judged = measured and predicted and not manifest["random_weights"] and alpha_given is None
    efficiencies = [p["measured"] / p["predicted"] for p in per_prompt if p["measured"] and p["predicted"]]
    measured_alpha = pooled([s for r in main for s in r["runs"]["sd-draft"]["stats"]])["alpha"]
    return {"predicted": predicted, "measured": measured, "efficiency": measured / predicted if judged else None,
            "efficiency_spread": _spread(efficiencies) if judged else None,
            "alpha": alpha_given if alpha_given is not None else measured_alpha, "alpha_measured": measured_alpha,
            "alpha_given": alpha_given is not None, "c": c_given if c_given is not None else _median(p["c"] for p in per_prompt),
            "c_given": c_given is not None, "per_prompt": per_prompt}


def repeat_summary(data: dict) -> dict | None:
    """sd-ngram against sd-ar on the prompt that repeats its input."""
    record = next((r for r in data["records"] if r["group"] == "repeat"), None)
    if record is None or "sd-ngram" not in record["runs"] or "sd-ar" not in record["runs"]:
        return None
    ngram, ar = record["runs"]["sd-ngram"], record["runs"]["sd-ar"]
    figures = pooled(ngram["stats"])
    return {"ngram_tok_s": ngram["tokens_per_s"], "ar_tok_s": ar["tokens_per_s"],
            "ratio": ngram["tokens_per_s"] / ar["tokens_per_s"], "alpha": figures["alpha"], "tau": figures["tau"]}


def summarize(data: dict) -> dict:
    """Every summary of a report: {"summary", "prediction", "repeat"}."""
    return {"summary": summarize_arms(data), "prediction": prediction(data), "repeat": repeat_summary(data)}


# --- printing ----------------------------------------------------------------------------------


def _f(value, spec=".2f", missing="n/a"):
    return missing if value is None else format(value, spec)


def where(manifest: dict) -> str:
    """Where a table was measured, printed with every table."""
    text = (f"{manifest['device_name']} ({manifest['device']}), torch {manifest['torch']}"
            + (f" (CUDA {manifest['cuda']})" if manifest.get("cuda") else "")
            + f", transformers {manifest['transformers']}, {manifest['dtype']}, batch {manifest['batch']}")
    if manifest["random_weights"]:
        text += ", RANDOM WEIGHTS: shape timing only"
    return text


def print_forward_table(table: dict, manifest: dict) -> None:
    widths = manifest["widths"]
    repeats = table["target"]["eager"]["repeats"]
    print(f"\nms per forward, mean of {repeats} after a warm-up round, {manifest['context_tokens']} cached tokens "
          f"[{where(manifest)}]")
    print("eager = the engine's own cache kind without graphs; graph = static cache + CUDA graphs (CUDA only)")
    header = f"{'model':8} {'mode':6} " + " ".join(f"{f'width {w}':>9}" for w in widths) + f" {'capture s':>10}"
    print(header)
    print("-" * len(header))
    for model, modes in table.items():
        for mode in ("eager", "graph"):
            entry = modes.get(mode)
            if entry is None:
                print(f"{model:8} {mode:6} " + " ".join(f"{'n/a':>9}" for _ in widths) + f" {'n/a':>10}")
                continue
            cells = " ".join(f"{_f(entry['ms'].get(str(w))):>9}" for w in widths)
            capture = _f(entry["capture_s"]) if mode == "graph" else "-"
            note = "" if mode == "eager" or entry["graphs_used"] else "  (capture failed: ran eagerly)"
            print(f"{model:8} {mode:6} {cells} {capture:>10}{note}")
    if "draft" in table:
        ratios = [f"{mode} {entry['ms']['1'] / table['target'][mode]['ms']['1']:.3f}"
                  for mode, entry in table["draft"].items() if entry["ms"].get("1") and table["target"][mode]["ms"].get("1")]
        if ratios:
            print("c from this table (draft / target, width 1): " + ", ".join(ratios))


def _spread_text(spread) -> str:
    return "-" if spread is None else f"{spread[0]:.2f} ({spread[1]:.2f}..{spread[2]:.2f})"


def print_arm_table(summary: dict, manifest: dict) -> None:
    arms = summary["arms"]
    count = summary["prompts"]
    print(f"\narms: medians over {count} prompt{'s' * (count != 1)} ({manifest['prompt_source']}), greedy, "
          f"{manifest['max_new_tokens']} new tokens, gamma {manifest['gamma']} ({manifest['schedule']}), "
          f"arm order rotated per prompt, one warm-up per arm excluded [{where(manifest)}]")
    header = (f"{'arm':10} {'tok/s':>8} {'x hf-static: med (min..max)':>28} {'x sd-ar: med (min..max)':>24} "
              f"{'alpha':>6} {'tau':>5} {'c':>6} {'syncs/tok':>9} {'syncs/step':>10} {'loop %t1':>8} "
              f"{'warm-up s':>9} {'capture s':>9} {'peak GiB':>8} {'= hf-dyn':>8}")
    print(header)
    print("-" * len(header))
    for arm, row in arms.items():
        same = row.get("same_as_hf_dynamic")
        same = "-" if same is None else f"{same}/{row['prompts']}"
        step_syncs = _f(row.get("syncs_per_step"), ".2f", "n/a" if arm in ENGINE_ARMS else "-")
        print(f"{arm:10} {_f(row['tok_s'], '.1f'):>8} {_spread_text(row['vs_hf_static']):>28} "
              f"{_spread_text(row['vs_sd_ar']):>24} {_f(row.get('alpha'), '.3f', '-'):>6} {_f(row.get('tau'), '.2f', '-'):>5} "
              f"{_f(row.get('c'), '.3f', '-'):>6} {_f(row['syncs_per_token'], '.3f'):>9} {step_syncs:>10} "
              f"{_f(row.get('loop_pct_of_t1'), '.1f', '-'):>8} {_f(row['warmup_s'], '.2f', '-'):>9} "
              f"{_f(row.get('capture_s'), '.2f', '-'):>9} {_f(row['peak_gib']):>8} {same:>8}")
    measured_capture = {a: r["capture_s_measured"] for a, r in arms.items() if r.get("capture_s_measured")}
    if measured_capture:
        print("graph capture inside measured runs (a width first needed after the warm-up; in e2e, not in loop): "
              + ", ".join(f"{a} {s:.2f} s" for a, s in measured_capture.items()))
    t1 = summary["t_target_1_s"]
    print("columns: x = per-prompt tok/s ratio; c = draft forward / width-1 target forward (same prompt); syncs = "
          "host syncs counted with torch.cuda.set_sync_debug_mode; loop %t1 = (e2e - forwards - capture) per step as % "
          f"of a width-1 target forward ({_f(t1 and t1 * 1000)} ms); warm-up s = the excluded first call (includes "
          "graph capture, and transformers' compile for hf-static on CUDA); peak GiB = torch.cuda.max_memory_allocated, "
          "both models' weights included; = hf-dyn = prompts with tokens identical to hf-dynamic's")


def print_prediction(pred: dict | None, manifest: dict) -> None:
    if pred is None:
        return

    def given(flag):
        return " (given)" if flag else " (measured)"

    print(f"\nLeviathan's prediction (Theorem 3.8 over the draft lengths used) vs measured, sd-draft over sd-ar "
          f"[{where(manifest)}]:")
    line = (f"  predicted {_f(pred['predicted'])}x from alpha {_f(pred['alpha'], '.3f')}{given(pred['alpha_given'])}, "
            f"c {_f(pred['c'], '.3f')}{given(pred['c_given'])}; measured {_f(pred['measured'])}x "
            "(geometric means of per-prompt figures)")
    if pred["efficiency"] is not None:
        spread = pred["efficiency_spread"]
        line += f" -> efficiency {pred['efficiency']:.2f}" + (f" (per prompt {spread[1]:.2f}..{spread[2]:.2f})" if spread else "")
    print(line)
    if manifest["random_weights"]:
        note = ("the prediction uses the alpha given with --alpha" if pred["alpha_given"]
                else "pass --alpha from a real-weight run to predict with it")
        print(f"  random weights: acceptance here is meaningless (the measured speedup is at alpha "
              f"{_f(pred['alpha_measured'], '.3f')}); {note}; efficiency needs real weights")
    elif pred["alpha_given"]:
        print("  alpha was given (--alpha): no efficiency (it compares with the measured alpha only)")


def print_targets(summaries: dict, manifest: dict) -> None:
    arms, pred, repeat = summaries["summary"]["arms"], summaries["prediction"], summaries["repeat"]
    on_gpu = manifest["device"].startswith("cuda")

    def verdict(ok):
        return "" if ok is None or not on_gpu else ("  meets" if ok else "  MISSES")

    print(f"\nissue #10 targets (for an H100; {'judged here' if on_gpu else 'not judged on ' + manifest['device']}) "
          f"[{where(manifest)}]:")
    ar = arms.get("sd-ar", {}).get("vs_hf_static")
    print(f"  sd-ar / hf-static tok/s >= {TARGET_AR_VS_STATIC:.1f}x: " + (f"{ar[0]:.2f}x (per-prompt median)" if ar else "n/a")
          + verdict(ar[0] >= TARGET_AR_VS_STATIC if ar else None))
    loops = {a: r["loop_pct_of_t1"] for a, r in arms.items() if r.get("loop_pct_of_t1") is not None}
    print(f"  loop overhead per step <= {TARGET_LOOP_PCT:.0f}% of a width-1 target forward: "
          + (", ".join(f"{a} {v:.1f}%" for a, v in loops.items()) or "n/a")
          + verdict(all(v <= TARGET_LOOP_PCT for v in loops.values()) if loops else None))
    spec = {a: arms[a]["syncs_per_step"] for a in ("sd-draft", "sd-ngram") if a in arms}
    known = spec and None not in spec.values()
    print(f"  host syncs <= {TARGET_SYNCS_PER_STEP:.0f} per speculative step: "
          + (", ".join(f"{a} {_f(v)}" for a, v in spec.items()) or "n/a")
          + verdict(all(v <= TARGET_SYNCS_PER_STEP for v in spec.values()) if known else None))
    k = manifest["sync_every"]
    ar_syncs = arms.get("sd-ar", {}).get("syncs_per_token")
    print(f"  host syncs per autoregressive token <= 1/K, stop checks every K = {k} tokens: "
          + (f"{ar_syncs:.3f} (1/K = {1 / k:.3f})" if ar_syncs is not None else "n/a")
          + verdict(ar_syncs <= 1 / k + 1e-9 if ar_syncs is not None else None))
    eff = pred["efficiency"] if pred else None
    missing = " (random weights: needs a real-weight run)" if manifest["random_weights"] else ""
    print(f"  sd-draft efficiency (measured / predicted speedup) >= {TARGET_EFFICIENCY:.1f}: "
          + (f"{eff:.2f}" if eff is not None else "n/a" + missing) + verdict(eff >= TARGET_EFFICIENCY if eff is not None else None))
    text, ok = "n/a", None
    if repeat is not None:
        text = (f"{repeat['ratio']:.2f}x ({repeat['ngram_tok_s']:.1f} vs {repeat['ar_tok_s']:.1f} tok/s, "
                f"alpha {_f(repeat['alpha'], '.3f')}, tau {_f(repeat['tau'])})")
        if manifest["random_weights"]:
            text += " (random weights do not copy their input: not the target's case)"
        else:
            ok = repeat["ratio"] >= TARGET_NGRAM_REPEAT
    print(f"  sd-ngram / sd-ar on the prompt that repeats its input >= {TARGET_NGRAM_REPEAT:.1f}x: {text}" + verdict(ok))


def print_heading(data: dict) -> None:
    """The title line and the per-width forward table."""
    manifest = data["manifest"]
    print(f"specdec GPU benchmark [{where(manifest)}]")
    if data.get("forward_costs"):
        print_forward_table(data["forward_costs"], manifest)


def print_results(data: dict, summaries: dict) -> None:
    """The arm table, the prediction and the targets."""
    manifest = data["manifest"]
    print_arm_table(summaries["summary"], manifest)
    print_prediction(summaries["prediction"], manifest)
    print_targets(summaries, manifest)
