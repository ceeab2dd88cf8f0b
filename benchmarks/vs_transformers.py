#!/usr/bin/env python3
"""specdec against transformers' own generation: same models, dtype, threads and prompts, in
one process, alternating A/B per prompt. Prints one table and saves a JSON with every run.

    python benchmarks/vs_transformers.py                      # the real Qwen pair, fp32, 128 tokens
    python benchmarks/vs_transformers.py --prompts 3 --max-new-tokens 64   # a quicker pass

Comparisons (greedy, so outputs must be identical token for token):
  1. autoregressive: specdec baseline vs transformers generate (target alone)
  2. speculative, draft model, gamma 4 constant: specdec vs generate(assistant_model=...,
     num_assistant_tokens=4, schedule "constant", assistant_confidence_threshold=0)
  3. speculative at each side's defaults: specdec's default draft schedule vs transformers'
     default assistant settings
  4. efficiency: specdec's speedup over its own baseline / the speedup predicted from the
     measured alpha, gamma and c (Leviathan et al. Theorem 3.8; ../shared/docs/metrics.md)
  5. n-gram drafting on summarization: specdec vs generate(prompt_lookup_num_tokens=N)
  6. roofline: weight bytes per target forward, achieved GB/s of the baseline, and this
     machine's measured memory-copy bandwidth

Needs the models from ../shared/tools/fetch-models --hf (float32 folders:
``--dtype float32`` there, or point --target/--draft at the bf16 ones and pass --dtype).
No figure here is asserted anywhere; they are measurements, printed with how they were made.
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

from specdec.devices import cpu_model_name, resolve_device
from specdec.drafters import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_DRAFT_SCHEDULE,
    DraftLengthPolicy,
    ModelDraft,
    NgramDraft,
)
from specdec.engine import Engine, GenerationConfig
from specdec.models import eos_token_ids, load_model
from specdec.reference import hf_generate
from specdec.sampling import GREEDY

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SPECDEC_FIXTURES", Path.home() / ".cache" / "specdec-fixtures"))
DATA = REPO.parent / "shared" / "data" / "eagle"

# specdec's default draft schedule (what SpeculativeDecoder, `specdec` and `specdec bench` use).
SPECDEC_DEFAULT_SCHEDULE = dict(mode=DEFAULT_DRAFT_SCHEDULE, confidence_threshold=DEFAULT_CONFIDENCE_THRESHOLD)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default=str(FIXTURES / "qwen-coder-1.5b" / "hf-float32"))
    p.add_argument("--draft", default=str(FIXTURES / "qwen-coder-0.5b" / "hf-float32"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=10, help="prompts per set (humaneval, mt_bench, sum)")
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--lookup-tokens", type=int, default=10, help="prompt_lookup_num_tokens, both sides")
    p.add_argument("--lookup-ngram", type=int, default=2, help="max_matching_ngram_size, both sides")
    p.add_argument("--only", nargs="*", default=None, help="run only these comparisons: ar gamma4 default ngram")
    p.add_argument("--output", default="benchmarks/results/vs_transformers.json")
    return p.parse_args(argv)


def load_prompts(name: str, count: int, tokenizer) -> list[tuple[str, list[int]]]:
    """First turns of an EAGLE question set, wrapped in the chat template, as token ids."""
    path = DATA / name / "question.jsonl"
    prompts = []
    with open(path) as f:
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


def paired_runs(label, prompts, ours, theirs, log):
    """Run ours and theirs on every prompt, alternating which goes first; returns records."""
    records = []
    for index, (prompt_id, ids) in enumerate(prompts):
        order = [("specdec", ours), ("transformers", theirs)]
        if index % 2:
            order.reverse()
        results = {}
        for side, fn in order:
            results[side] = fn(ids)
        record = {
            "comparison": label,
            "prompt": prompt_id,
            "specdec": results["specdec"].stats,
            "transformers": results["transformers"].stats,
            "identical": results["specdec"].token_ids == results["transformers"].token_ids,
        }
        records.append(record)
        log(f"{label:10} {prompt_id:16} specdec {record['specdec']['tokens_per_s']:.2f} tok/s  "
            f"transformers {record['transformers']['tokens_per_s']:.2f} tok/s  identical {record['identical']}")
    return records


def summarize(records):
    ours = [r["specdec"]["tokens_per_s"] for r in records]
    theirs = [r["transformers"]["tokens_per_s"] for r in records]
    per_prompt = sorted(a / b for a, b in zip(ours, theirs))
    return {
        "specdec_tok_s": statistics.median(ours),
        "transformers_tok_s": statistics.median(theirs),
        "ratio_of_medians": statistics.median(ours) / statistics.median(theirs),
        "per_prompt_ratio_min": per_prompt[0],
        "per_prompt_ratio_median": statistics.median(per_prompt),
        "per_prompt_ratio_max": per_prompt[-1],
        "identical": sum(r["identical"] for r in records),
        "prompts": len(records),
    }


def predicted_speedup(alpha, gamma, c):
    """Leviathan et al. 2023, Theorem 3.8."""
    if alpha is None or c is None:
        return None
    if alpha >= 1.0:
        return (gamma + 1) / (gamma * c + 1)
    return (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))


def efficiency(ar_records, spec_records, gamma):
    """Measured speedup over specdec's own baseline vs the speedup predicted from pooled
    alpha, gamma and c of the speculative runs."""
    base = {r["prompt"]: r["specdec"] for r in ar_records}
    speedups, accepted, rejections, t_draft, t_target = [], 0, 0, [], []
    for r in spec_records:
        s = r["specdec"]
        speedups.append(base[r["prompt"]]["e2e_s"] / s["e2e_s"])
        accepted += s["accepted"]
        rejections += s["rejections"]
        t_draft.append(s["t_draft"])
        t_target.append(base[r["prompt"]]["t_target"])  # one decode forward of the baseline
    alpha = accepted / (accepted + rejections) if accepted + rejections else None
    c = statistics.median(t_draft) / statistics.median(t_target)
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


def memcpy_bandwidth_gbs(size_bytes=1 << 30, repeats=5) -> float:
    """Best-of-N copy bandwidth (GB/s, read + write counted) of a 1 GiB tensor on this CPU."""
    source = torch.empty(size_bytes // 4, dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return 2 * size_bytes / best / 1e9


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    target = load_model(args.target, device, args.dtype)
    draft = load_model(args.draft, device, args.dtype)
    tokenizer = target.tokenizer
    eos = eos_token_ids(target.model, tokenizer)
    engine = Engine(target.model, tokenizer, device, eos)
    vocab = engine.vocab_size
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=GREEDY, gamma=args.gamma)
    constant = ModelDraft(draft.model, vocab, DraftLengthPolicy("constant"), keep_ids=eos)
    default = ModelDraft(draft.model, vocab, DraftLengthPolicy(**SPECDEC_DEFAULT_SCHEDULE), keep_ids=eos)
    ngram = NgramDraft(max_ngram=args.lookup_ngram, min_ngram=1)
    chat_prompts = load_prompts("humaneval", args.prompts, tokenizer) + load_prompts("mt_bench", args.prompts, tokenizer)
    sum_prompts = load_prompts("sum", args.prompts, tokenizer)

    def ours(drafter, cfg=config):
        return lambda ids: engine.generate(ids, cfg, drafter)

    def theirs(**kwargs):
        return lambda ids: hf_generate(target.model, tokenizer, ids, config, device, eos, **kwargs)

    hf_gamma = dict(num_assistant_tokens=args.gamma, num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
    lookup_cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=GREEDY, gamma=args.lookup_tokens)
    comparisons = {
        "ar": ("autoregressive (1.5B target alone)", chat_prompts, ours(None), theirs()),
        "gamma4": (f"speculative, draft model, gamma {args.gamma} constant", chat_prompts, ours(constant),
                   theirs(assistant_model=draft.model, assistant_settings=hf_gamma)),
        "default": ("speculative, each side's defaults", chat_prompts, ours(default), theirs(assistant_model=draft.model)),
        "ngram": (f"n-gram lookup on sum ({args.lookup_tokens} tokens, n<={args.lookup_ngram})", sum_prompts,
                  ours(ngram, lookup_cfg),
                  theirs(prompt_lookup_num_tokens=args.lookup_tokens, max_matching_ngram_size=args.lookup_ngram)),
    }
    selected = args.only or list(comparisons)
    # Warm-up, excluded and the same for every method: one generation on the first prompt.
    for key in selected:
        _, prompts, mine, peer = comparisons[key]
        mine(prompts[0][1]), peer(prompts[0][1])
    records, summaries = {}, {}
    for key in selected:
        label, prompts, mine, peer = comparisons[key]
        records[key] = paired_runs(key, prompts, mine, peer, log)
        summaries[key] = {"label": label, **summarize(records[key])}
    extra = {}
    if "ar" in records and "gamma4" in records:
        extra["efficiency_gamma4"] = efficiency(records["ar"], records["gamma4"], args.gamma)
    if "ar" in records:
        t_target = statistics.median(r["specdec"]["t_target"] for r in records["ar"])
        weight_bytes = weight_bytes_per_forward(target.model)
        extra["roofline"] = {
            "weight_bytes_per_target_forward": weight_bytes,
            "t_target_s": t_target,
            "achieved_gb_s": weight_bytes / t_target / 1e9,
            "memcpy_gb_s": memcpy_bandwidth_gbs(),
        }
    manifest = {
        "cpu": cpu_model_name(), "threads": torch.get_num_threads(), "dtype": args.dtype, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "target": args.target, "draft": args.draft,
        "max_new_tokens": args.max_new_tokens, "prompts_per_set": args.prompts,
    }
    print_table(summaries, extra, manifest)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"manifest": manifest, "summaries": summaries, "extra": extra, "records": records}, indent=2))
    print(f"\nsaved every run to {out}")
    return 0


def print_table(summaries, extra, manifest):
    print(f"\nspecdec vs transformers: {manifest['cpu']}, {manifest['threads']} threads, {manifest['dtype']}, "
          f"torch {manifest['torch']}, transformers {manifest['transformers']}, greedy, "
          f"{manifest['max_new_tokens']} new tokens, {manifest['prompts_per_set']} prompts per set, A/B alternated per prompt")
    header = f"{'comparison':58} {'specdec tok/s':>13} {'transf. tok/s':>13} {'ratio':>6} {'per-prompt min..max':>20} {'identical':>10}"
    print(header)
    print("-" * len(header))
    for s in summaries.values():
        print(f"{s['label']:58} {s['specdec_tok_s']:13.2f} {s['transformers_tok_s']:13.2f} {s['ratio_of_medians']:6.2f} "
              f"{s['per_prompt_ratio_min']:9.2f}..{s['per_prompt_ratio_max']:<9.2f} {s['identical']:>5}/{s['prompts']:<4}")
    e = extra.get("efficiency_gamma4")
    if e:
        print(f"\nefficiency (gamma {e['gamma']}): speedup over specdec's own baseline {e['speedup']:.2f}x (geometric mean), "
              f"predicted {e['predicted_speedup']:.2f}x from alpha {e['alpha']:.3f}, c {e['c']:.3f} -> efficiency {e['efficiency']:.2f}")
    r = extra.get("roofline")
    if r:
        print(f"roofline: {r['weight_bytes_per_target_forward'] / 1e9:.2f} GB of weights per target forward, "
              f"t_target {r['t_target_s'] * 1000:.0f} ms -> {r['achieved_gb_s']:.1f} GB/s achieved; "
              f"memory copy {r['memcpy_gb_s']:.1f} GB/s on this machine")


if __name__ == "__main__":
    raise SystemExit(main())
