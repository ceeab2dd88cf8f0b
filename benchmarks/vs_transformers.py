#!/usr/bin/env python3
"""specdec against transformers' own generation: same models, dtype, threads and prompt ids, in
one process, greedy, with the order of the arms rotated per prompt so drift hits all of them.
Prints one table and saves every run to JSON (rewritten after each prompt, so an interrupted
run keeps what it measured).

    python benchmarks/vs_transformers.py                         # the Qwen pair, 10 prompts per set
    python benchmarks/vs_transformers.py --prompts 2 --max-new-tokens 64   # a quicker pass

Comparisons:
  1. ar: specdec's autoregressive baseline vs transformers generate (target alone)
  2. gamma4: speculative, draft model, gamma 4 constant, vs generate(assistant_model=...,
     num_assistant_tokens=4, schedule "constant", assistant_confidence_threshold=0)
  3. default: specdec's default draft schedule vs transformers' default assistant settings
  4. efficiency: specdec's speedup over its own baseline / the speedup predicted from the
     measured alpha, gamma and c (Leviathan et al. Theorem 3.8; ../shared/docs/metrics.md)
  5. ngram: prompt lookup on summarization vs generate(prompt_lookup_num_tokens=N)
  6. roofline: weight bytes per target forward, achieved GB/s, this machine's copy and
     matrix-vector bandwidth
Ablations, on the first --ablation-prompts prompts of each set: specdec with its speed
features switched off ("plain": no prepacked weights, full draft head) and with prepacking
alone, so each feature's gain is measured in the same run.

"identical" compares specdec's tokens with transformers' for the same comparison; "= target
greedy" compares each side's tokens with transformers' plain greedy generate of the target (the
lossless reference), when the ar comparison ran. Nothing here is asserted; these are
measurements, printed with how they were made.

Needs the models from ../shared/tools/fetch-models --hf.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from specdec.runners.devices import cpu_model_name, resolve_device
from specdec.engine.drafters import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_DRAFT_SCHEDULE,
    DraftLengthPolicy,
    ModelDraft,
    NgramDraft,
)
from specdec.engine import Engine, GenerationConfig
from specdec.errors import SpecdecError
from specdec.models.loading import eos_token_ids, load_model, special_token_ids
from specdec.bench.backends.hf import hf_generate
from specdec.engine.sampling import GREEDY

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SPECDEC_FIXTURES", Path.home() / ".cache" / "specdec-fixtures"))
DATA = Path(os.environ.get("SPECDEC_SHARED", REPO.parent / "shared")) / "data" / "eagle"
COMPARISONS = ("ar", "gamma4", "default", "ngram")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=str(FIXTURES / "qwen-coder-1.5b" / "hf-bfloat16"))
    p.add_argument("--draft", default=str(FIXTURES / "qwen-coder-0.5b" / "hf-bfloat16"))
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CPUs with native bf16), float32, bfloat16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=10, help="prompts per set (humaneval, mt_bench; sum for ngram)")
    p.add_argument("--ablation-prompts", type=int, default=3,
                   help="prompts per set that also run specdec's ablation arms (0 = none)")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--lookup-tokens", type=int, default=10, help="prompt_lookup_num_tokens, both sides")
    p.add_argument("--lookup-ngram", type=int, default=2, help="max_matching_ngram_size, both sides")
    p.add_argument("--only", nargs="*", default=None, choices=COMPARISONS, help="run only these comparisons")
    p.add_argument("--output", default="benchmarks/results/vs_transformers.json")
    p.add_argument("--report", metavar="JSON", help="print the tables of a saved run again (no models are loaded)")
    return p.parse_args(argv)


def load_prompts(name: str, count: int, tokenizer) -> list[tuple[str, list[int]]]:
    """First turns of an EAGLE question set, wrapped in the chat template, as token ids."""
    prompts = []
    with open(DATA / name / "question.jsonl") as f:
        for line in f:
            if len(prompts) == count:
                break
            record = json.loads(line)
            text = record["turns"][0]
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
                )
            prompts.append((f"{name}-{record['question_id']}", tokenizer(text, add_special_tokens=False)["input_ids"]))
    return prompts


class Arms:
    """The generation functions of one comparison: ``specdec``, ``transformers`` and the
    ablation variants of specdec, each ``ids -> GenerationResult``."""

    def __init__(self, label, prompts, specdec, transformers, ablations=None):
        self.label = label
        self.prompts = prompts
        self.main = {"specdec": specdec, "transformers": transformers}
        self.ablations = ablations or {}


def run_prompt(arms: Arms, index: int, prompt_ids, with_ablations: bool) -> dict:
    """Every arm once on one prompt, the order rotated by the prompt's index."""
    order = list(arms.main.items()) + (list(arms.ablations.items()) if with_ablations else [])
    shift = index % len(order)
    results = {}
    for name, fn in order[shift:] + order[:shift]:
        results[name] = fn(prompt_ids)
    return results


def measure(key: str, arms: Arms, ablation_prompts: int, log, on_record) -> list[dict]:
    records = []
    per_set_seen: dict[str, int] = {}
    for index, (prompt_id, ids) in enumerate(arms.prompts):
        set_name = prompt_id.rsplit("-", 1)[0]
        per_set_seen[set_name] = per_set_seen.get(set_name, 0) + 1
        results = run_prompt(arms, index, ids, per_set_seen[set_name] <= ablation_prompts)
        record = {
            "comparison": key,
            "prompt": prompt_id,
            "runs": {name: {"stats": r.stats, "token_ids": r.token_ids} for name, r in results.items()},
            "identical": results["specdec"].token_ids == results["transformers"].token_ids,
        }
        records.append(record)
        on_record(records)
        rates = "  ".join(f"{name} {r.stats['tokens_per_s']:.2f}" for name, r in results.items())
        log(f"{key:8} {prompt_id:16} tok/s: {rates}  identical {record['identical']}")
    return records


def tok_s(records, arm):
    return [r["runs"][arm]["stats"]["tokens_per_s"] for r in records if arm in r["runs"]]


def summarize(records, reference_tokens: dict | None) -> dict:
    ours, theirs = tok_s(records, "specdec"), tok_s(records, "transformers")
    per_prompt = sorted(a / b for a, b in zip(ours, theirs))
    summary = {
        "specdec_tok_s": statistics.median(ours),
        "transformers_tok_s": statistics.median(theirs),
        "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
        "per_prompt_ratio_min": per_prompt[0],
        "per_prompt_ratio_median": statistics.median(per_prompt),
        "per_prompt_ratio_max": per_prompt[-1],
        "identical": sum(r["identical"] for r in records),
        "prompts": len(records),
    }
    # Only prompts the ar comparison also ran have a reference (not the sum prompts of ngram).
    referenced = [r for r in records if r["prompt"] in (reference_tokens or {})]
    if referenced:
        summary["referenced_prompts"] = len(referenced)
        for arm in ("specdec", "transformers"):
            summary[f"{arm}_equals_target_greedy"] = sum(
                r["runs"][arm]["token_ids"] == reference_tokens[r["prompt"]] for r in referenced)
    summary["time_split"] = time_split(r["runs"]["specdec"]["stats"] for r in records)
    return summary


def ablation_summary(records) -> list[dict]:
    """Median tok/s of every arm over the prompts that ran the ablations, and each arm's
    ratio to transformers on those same prompts."""
    subset = [r for r in records if len(r["runs"]) > 2]
    if not subset:
        return []
    base = statistics.median(tok_s(subset, "transformers"))
    rows = []
    for arm in subset[0]["runs"]:
        stats = [r["runs"][arm]["stats"] for r in subset]
        rows.append({
            "arm": arm, "prompts": len(subset), "tok_s": statistics.median(tok_s(subset, arm)),
            "vs_transformers": statistics.median(tok_s(subset, arm)) / base,
            "t_target_ms": _median_ms(s.get("t_target") for s in stats),
            "t_draft_ms": _median_ms(s.get("t_draft") for s in stats),
            "alpha": _pooled_alpha(stats),
        })
    return rows


def _median_ms(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) * 1000 if values else None


def _pooled_alpha(stats):
    accepted = sum(s.get("accepted") or 0 for s in stats)
    rejections = sum(s.get("rejections") or 0 for s in stats)
    return accepted / (accepted + rejections) if accepted + rejections else None


def time_split(stats_iter) -> dict:
    """Shares of specdec's summed e2e time: target prefill, target decode/verify forwards,
    draft prefill, draft forwards, and the rest (the loop: sampling, verification, rollback)."""
    totals = dict.fromkeys(("target_prefill_s", "target_decode_s", "draft_prefill_s", "draft_decode_s", "e2e_s"), 0.0)
    for stats in stats_iter:
        for key in totals:
            totals[key] += stats.get(key) or 0.0
    e2e = totals.pop("e2e_s")
    totals["loop_s"] = e2e - sum(totals.values())
    return {key.removesuffix("_s"): value / e2e for key, value in totals.items()} if e2e else {}


def summarize_all(records, manifest, extra):
    """Per-comparison summaries and the gamma-4 efficiency from the records of a run."""
    reference = None
    if records.get("ar"):
        reference = {r["prompt"]: r["runs"]["transformers"]["token_ids"] for r in records["ar"]}
    summaries = {key: {"label": manifest["labels"][key], **summarize(recs, reference),
                       "ablations": ablation_summary(recs)} for key, recs in records.items() if recs}
    extra = dict(extra)
    if records.get("ar") and records.get("gamma4"):
        extra["efficiency_gamma4"] = efficiency(records["ar"], records["gamma4"], manifest["gamma"])
    return summaries, extra


def predicted_speedup(alpha, gamma, c):
    """Leviathan et al. 2023, Theorem 3.8."""
    if alpha is None or c is None:
        return None
    if alpha >= 1.0:
        return (gamma + 1) / (gamma * c + 1)
    return (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))


def efficiency(ar_records, spec_records, gamma):
    """Measured speedup over specdec's own baseline vs the speedup predicted from pooled alpha,
    gamma and c (median t_draft of the speculative runs over median t_target of the baseline)."""
    base = {r["prompt"]: r["runs"]["specdec"]["stats"] for r in ar_records}
    spec = [r["runs"]["specdec"]["stats"] for r in spec_records if r["prompt"] in base]
    speedups = [base[r["prompt"]]["e2e_s"] / r["runs"]["specdec"]["stats"]["e2e_s"] for r in spec_records if r["prompt"] in base]
    alpha = _pooled_alpha(spec)
    c = statistics.median(s["t_draft"] for s in spec) / statistics.median(b["t_target"] for b in base.values())
    geo = statistics.geometric_mean(speedups)
    predicted = predicted_speedup(alpha, gamma, c)
    return {"speedup": geo, "alpha": alpha, "c": c, "gamma": gamma, "predicted_speedup": predicted,
            "efficiency": geo / predicted if predicted else None}


def weight_bytes_per_forward(model) -> int:
    """Bytes of weights one decode forward reads: every parameter except the input embedding
    table (a forward reads one row of it), unless it is tied to the LM head (then read whole)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    if embedding is not model.get_output_embeddings().weight:
        total -= embedding.numel() * embedding.element_size()
    return total


def _best_seconds(fn, repeats=5) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bandwidths_gb_s(dtype: torch.dtype, size_bytes=1 << 30) -> dict:
    """This machine's memory bandwidth (GB/s), best of 5 on 1 GiB: a copy (read + write counted)
    and a matrix-vector product in ``dtype`` (reads the matrix once: what decoding does)."""
    return {"memcpy_gb_s": _copy_gb_s(size_bytes), "matvec_gb_s": _matvec_gb_s(dtype, size_bytes)}


def _copy_gb_s(size_bytes: int) -> float:
    source = torch.ones(size_bytes // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    return 2 * size_bytes / _best_seconds(lambda: target.copy_(source)) / 1e9


def _matvec_gb_s(dtype: torch.dtype, size_bytes: int, columns: int = 8192) -> float:
    element = torch.tensor([], dtype=dtype).element_size()
    matrix = torch.ones(size_bytes // element // columns, columns, dtype=dtype)
    vector = torch.ones(columns, dtype=dtype)
    return matrix.nbytes / _best_seconds(lambda: torch.mv(matrix, vector)) / 1e9


def build_comparisons(args, engines, target, draft, tokenizer, device, eos, config):
    """The four comparisons, each with its arms."""
    vocab = engines["packed"].vocab_size

    def ours(engine, drafter, cfg=config):
        return lambda ids: engine.generate(ids, cfg, drafter)

    def theirs(cfg=config, **kwargs):
        return lambda ids: hf_generate(target.model, tokenizer, ids, cfg, device, eos, **kwargs)

    def model_draft(policy, prepack=True, draft_vocab=None):
        kwargs = {} if draft_vocab is None else {"draft_vocab": draft_vocab}
        return ModelDraft(draft.model, vocab, policy, prepack=prepack, keep_ids=keep_ids, **kwargs)

    keep_ids = special_token_ids(target.model, tokenizer)
    constant = DraftLengthPolicy("constant")
    default_policy = DraftLengthPolicy(DEFAULT_DRAFT_SCHEDULE, DEFAULT_CONFIDENCE_THRESHOLD)
    hf_gamma = dict(num_assistant_tokens=args.gamma, num_assistant_tokens_schedule="constant",
                    assistant_confidence_threshold=0.0)
    lookup_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=GREEDY, gamma=args.lookup_tokens)
    chat = load_prompts("humaneval", args.prompts, tokenizer) + load_prompts("mt_bench", args.prompts, tokenizer)
    summ = load_prompts("sum", args.prompts, tokenizer)
    limit = engines["packed"].context_limit
    if limit:
        too_long = [p for p in chat + summ if len(p[1]) + args.max_new_tokens > limit]
        if too_long:
            print(f"left out (prompt + {args.max_new_tokens} new tokens exceed the context of {limit}): "
                  + ", ".join(p[0] for p in too_long), file=sys.stderr)
        chat = [p for p in chat if p not in too_long]
        summ = [p for p in summ if p not in too_long]
    ngram = NgramDraft(max_ngram=args.lookup_ngram, min_ngram=1)
    plain, packed = engines["plain"], engines["packed"]
    return {
        "ar": Arms("autoregressive (target alone)", chat, ours(packed, None), theirs(),
                   {"specdec plain": ours(plain, None)}),
        "gamma4": Arms(f"speculative, draft model, gamma {args.gamma} constant", chat,
                       ours(packed, model_draft(constant)),
                       theirs(assistant_model=draft.model, assistant_settings=hf_gamma),
                       {"specdec plain": ours(plain, model_draft(constant, prepack=False, draft_vocab=0)),
                        "specdec prepack only": ours(packed, model_draft(constant, draft_vocab=0))}),
        "default": Arms("speculative, each side's defaults", chat, ours(packed, model_draft(default_policy)),
                        theirs(assistant_model=draft.model)),
        "ngram": Arms(f"n-gram lookup on sum ({args.lookup_tokens} tokens, n<={args.lookup_ngram})", summ,
                      ours(packed, ngram, lookup_cfg),
                      theirs(lookup_cfg, prompt_lookup_num_tokens=args.lookup_tokens,
                             max_matching_ngram_size=args.lookup_ngram),
                      {"specdec plain": ours(plain, ngram, lookup_cfg),
                       "specdec latest match": ours(packed, NgramDraft(args.lookup_ngram, 1, match="latest"), lookup_cfg)}),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        summaries, extra = summarize_all(saved["records"], saved["manifest"], saved.get("extra", {}))
        print_tables(summaries, extra, saved["manifest"])
        return 0
    try:
        return run(args)
    except SpecdecError as error:
        print(f"vs_transformers: error: {error}", file=sys.stderr)
        return error.exit_code


def run(args) -> int:
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    target = load_model(args.target, device, args.dtype)
    draft = load_model(args.draft, device, args.dtype)
    tokenizer = target.tokenizer
    eos = eos_token_ids(target.model, tokenizer)
    engines = {"packed": Engine(target.model, tokenizer, device, eos),
               "plain": Engine(target.model, tokenizer, device, eos, prepack=False)}
    log(f"target: {engines['packed'].pack_report.note}")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=GREEDY, gamma=args.gamma)
    comparisons = build_comparisons(args, engines, target, draft, tokenizer, device, eos, config)
    selected = [key for key in (args.only or COMPARISONS) if comparisons[key].prompts]
    manifest = {
        "cpu": cpu_model_name(), "threads": torch.get_num_threads(), "dtype": str(target.dtype).removeprefix("torch."),
        "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        "target": args.target, "draft": args.draft, "max_new_tokens": args.max_new_tokens,
        "prompts_per_set": args.prompts, "ablation_prompts_per_set": args.ablation_prompts,
        "prepack": engines["packed"].pack_report.note,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    records: dict[str, list] = {}

    def save(partial_key=None, partial=None):
        if partial_key is not None:
            records[partial_key] = list(partial)
        out.write_text(json.dumps({"manifest": manifest, "records": records}, indent=1))

    # Warm-up, excluded and the same for every arm: one generation on the first prompt.
    for key in selected:
        arms = comparisons[key]
        for fn in (*arms.main.values(), *arms.ablations.values()):
            fn(arms.prompts[0][1])
    try:
        for key in selected:
            arms = comparisons[key]
            measure(key, arms, args.ablation_prompts, log, lambda recs, key=key: save(key, recs))
    except KeyboardInterrupt:
        log("interrupted: summarizing what was measured")
    manifest["labels"] = {key: comparisons[key].label for key in records}
    manifest["gamma"] = args.gamma
    summaries, extra = summarize_all(records, manifest, {})
    if records.get("ar"):
        t_target = statistics.median(r["runs"]["specdec"]["stats"]["t_target"] for r in records["ar"])
        weight_bytes = weight_bytes_per_forward(target.model)
        extra["roofline"] = {"weight_bytes_per_target_forward": weight_bytes, "t_target_s": t_target,
                             "achieved_gb_s": weight_bytes / t_target / 1e9, **bandwidths_gb_s(target.dtype)}
    print_tables(summaries, extra, manifest)
    out.write_text(json.dumps({"manifest": manifest, "summaries": summaries, "extra": extra, "records": records}, indent=1))
    print(f"\nsaved every run to {out}")
    return 0


def _fmt(value, spec=".2f", missing="-"):
    return missing if value is None else format(value, spec)


def print_tables(summaries, extra, manifest):
    print(f"\nspecdec vs transformers: {manifest['cpu']}, {manifest['threads']} threads, {manifest['dtype']}, "
          f"torch {manifest['torch']}, transformers {manifest['transformers']}, greedy, "
          f"{manifest['max_new_tokens']} new tokens, {manifest['prompts_per_set']} prompts per set, "
          "arm order rotated per prompt; tok/s are medians over prompts, ratio = their ratio")
    header = (f"{'comparison':44} {'specdec tok/s':>13} {'transf. tok/s':>13} {'ratio':>6} "
              f"{'per-prompt ratio: median (min..max)':>35} {'identical':>9} {'= target greedy (sd / tf)':>25}")
    print(header)
    print("-" * len(header))
    for s in summaries.values():
        n = s.get("referenced_prompts")
        greedy = f"{s['specdec_equals_target_greedy']}/{n} / {s['transformers_equals_target_greedy']}/{n}" if n else "-"
        spread = f"{s['per_prompt_ratio_median']:.2f} ({s['per_prompt_ratio_min']:.2f}..{s['per_prompt_ratio_max']:.2f})"
        print(f"{s['label']:44} {s['specdec_tok_s']:13.2f} {s['transformers_tok_s']:13.2f} {s['ratio_of_medians']:6.2f} "
              f"{spread:>35} {s['identical']:>5}/{s['prompts']:<3} {greedy:>25}")
    e = extra.get("efficiency_gamma4")
    if e:
        print(f"\nefficiency (gamma {e['gamma']}): speedup over specdec's own baseline {e['speedup']:.2f}x (geometric mean), "
              f"predicted {e['predicted_speedup']:.2f}x from alpha {e['alpha']:.3f}, c {e['c']:.3f} -> efficiency {e['efficiency']:.2f}")
    r = extra.get("roofline")
    if r:
        print(f"roofline: {r['weight_bytes_per_target_forward'] / 1e9:.2f} GB of weights per target forward, "
              f"t_target {r['t_target_s'] * 1000:.0f} ms -> {r['achieved_gb_s']:.1f} GB/s achieved; this machine: "
              f"matrix-vector {r['matvec_gb_s']:.1f} GB/s, memory copy {r['memcpy_gb_s']:.1f} GB/s (read + write)")
    print("\nwhere specdec's time goes (share of summed e2e): target prefill / target forwards / draft prefill / "
          "draft forwards / loop")
    for s in summaries.values():
        split = s["time_split"]
        print(f"  {s['label']:44} " + " / ".join(f"{split.get(k, 0) * 100:4.1f}%" for k in
                                                   ("target_prefill", "target_decode", "draft_prefill", "draft_decode", "loop")))
    rows = [(s["label"], row) for s in summaries.values() for row in s["ablations"]]
    if rows:
        print(f"\nablations (first {manifest['ablation_prompts_per_set']} prompts of each set; 'plain' = no prepacked "
              "weights, full draft head)")
        print(f"  {'comparison':44} {'arm':22} {'tok/s':>6} {'vs transf.':>10} {'t_target ms':>11} {'t_draft ms':>10} {'alpha':>6}")
        for label, row in rows:
            print(f"  {label:44} {row['arm']:22} {row['tok_s']:6.2f} {row['vs_transformers']:10.2f} "
                  f"{_fmt(row['t_target_ms'], '.1f'):>11} {_fmt(row['t_draft_ms'], '.1f'):>10} {_fmt(row['alpha'], '.3f'):>6}")


if __name__ == "__main__":
    raise SystemExit(main())
