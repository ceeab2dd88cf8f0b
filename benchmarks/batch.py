#!/usr/bin/env python3
"""Does speculation still pay at batch 4, 16, 64? Speculative vs autoregressive decoding of the
same prompts at several batch sizes, side by side in one process.

    python benchmarks/batch.py                                  # the Qwen2.5-Coder 1.5B / 0.5B pair
    python benchmarks/batch.py --batch-sizes 1 4 16 --prompts 16 --max-new-tokens 64
    python benchmarks/batch.py --drafter ngram

For each batch size the prompts are split into batches of that size; each batch runs the
autoregressive baseline and the speculative method back to back (alternating which goes first),
after one warm-up of each at that size. Figures per batch size: output tokens/s of the whole
batch (summed new tokens / summed batch wall time), the speedup (baseline batch time /
speculative batch time, geometric mean over batches), tau and alpha pooled over rows, and
whether every greedy row equals its batch-1 baseline output (float32 makes that exact).
Nothing is asserted; the table is printed and, with --report, saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.runners.devices import cpu_model_name
from specdec.errors import UsageError
from specdec.models.loading import check_same_tokenizer, eos_token_ids, load_model, special_token_ids
from specdec.engine.sampling import GREEDY

FIXTURES = Path(os.environ.get("SPECDEC_FIXTURES", Path.home() / ".cache" / "specdec-fixtures"))
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default=str(FIXTURES / "qwen-coder-1.5b" / "hf-bfloat16"), help="target model folder or id")
    p.add_argument("--draft", default=str(FIXTURES / "qwen-coder-0.5b" / "hf-bfloat16"), help="draft model folder or id")
    p.add_argument("--drafter", choices=["model", "ngram"], default="model", help="draft model or n-gram lookup")
    p.add_argument("--schedule", choices=["constant", "adaptive"], default="adaptive", help="draft length schedule")
    p.add_argument("--gate", action=argparse.BooleanOptionalAction, default=True,
                   help="adaptive schedule: draft length 0 while drafting steps lose to plain ones (specdec.engine.draft_gate)")
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per step (the first step's, when adaptive)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16], help="batch sizes to measure")
    p.add_argument("--prompts", type=int, default=16, help="prompts (the same ones at every batch size)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per row (EOS ignored)")
    p.add_argument("--dataset", default=str(SHARED / "data" / "spec_bench" / "question.jsonl"), help="Spec-Bench style JSONL")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--report", help="write the figures as JSON to this file")
    return p.parse_args(argv)


def load_prompts(path: str, count: int, tokenizer) -> list[list[int]]:
    """The first turn of ``count`` prompts, spread over the file's categories, chat-templated."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    step = max(1, len(rows) // count)
    picked = rows[::step][:count]
    prompts = []
    for row in picked:
        text = row["turns"][0]
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(text)["input_ids"]
        prompts.append(list(ids))
    return prompts


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    try:
        target = load_model(args.target, device, args.dtype)
        draft = load_model(args.draft, device, args.dtype) if args.drafter == "model" else None
        if draft is not None:
            check_same_tokenizer(target.tokenizer, draft.tokenizer, args.target, args.draft)
    except UsageError as error:
        print(f"batch.py: error: {error}", file=sys.stderr)
        return 2
    tokenizer = target.tokenizer
    engine = Engine(target.model, tokenizer, device, eos_token_ids(target.model, tokenizer))
    vocab = target.model.get_output_embeddings().weight.shape[0]

    def make_drafter():
        if args.drafter == "ngram":
            return NgramDraft()
        policy = DraftLengthPolicy(args.schedule, 0.4 if args.schedule == "adaptive" else 0.0, gate=args.gate)
        return ModelDraft(draft.model, vocab, policy, keep_ids=special_token_ids(target.model, tokenizer))

    prompts = load_prompts(args.dataset, args.prompts, tokenizer)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=GREEDY, gamma=args.gamma, ignore_eos=True)
    print(f"measured on {cpu_model_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, {torch.get_num_threads()} threads, "
          f"device {device}, dtype {target.dtype}, torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"target {args.target}; drafter {args.drafter} ({args.schedule}, gamma {args.gamma}); "
          f"{len(prompts)} prompts, {args.max_new_tokens} new tokens per row, greedy")
    reference: dict[int, list[int]] = {}
    rows = []
    for size in args.batch_sizes:
        batches = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        # One drafter per size, as a server keeps one: its draft gate's plain-step timings
        # carry over from batch to batch (the warm-up measures them).
        drafter = make_drafter()
        engine.generate_batch(batches[0], config, None)  # warm-up of each arm at this size
        engine.generate_batch(batches[0], config, drafter)
        totals = {"ar": [0, 0.0], "spec": [0, 0.0]}
        ratios, accepted, rejections, steps, tokens_from_steps, identical = [], 0, 0, 0, 0, 0
        plain_steps = 0
        for index, batch in enumerate(batches):
            order = ["ar", "spec"] if index % 2 == 0 else ["spec", "ar"]
            seconds = {}
            outputs = {}
            for arm in order:
                results = engine.generate_batch(batch, config, drafter if arm == "spec" else None)
                seconds[arm] = results[0].stats["batch_e2e_s"]
                totals[arm][0] += results[0].stats["batch_new_tokens"]
                totals[arm][1] += seconds[arm]
                outputs[arm] = results
            ratios.append(seconds["ar"] / seconds["spec"])
            for offset, (ar, spec) in enumerate(zip(outputs["ar"], outputs["spec"])):
                key = index * size + offset
                reference.setdefault(key, ar.token_ids)  # batch 1 runs first: its output is the reference
                identical += spec.token_ids == reference[key] and ar.token_ids == reference[key]
                accepted += spec.stats["accepted"]
                rejections += spec.stats["rejections"]
                steps += spec.stats["steps"]
                plain_steps += spec.stats["proposal_lengths"].get("0", 0)
                tokens_from_steps += spec.stats["new_tokens"] - 1
        row = {
            "batch_size": size,
            "batches": len(batches),
            "ar_tokens_per_s": totals["ar"][0] / totals["ar"][1],
            "spec_tokens_per_s": totals["spec"][0] / totals["spec"][1],
            "speedup": geometric_mean(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            "alpha": accepted / (accepted + rejections) if accepted + rejections else None,
            "tau": tokens_from_steps / steps if steps else None,
            "identical_rows": f"{identical}/{len(prompts)}",
            # Steps that drafted nothing (the draft gate closed, a probe, or the token budget).
            "plain_step_share": plain_steps / steps if steps else None,
        }
        rows.append(row)
        print(f"batch {size:3d}: AR {row['ar_tokens_per_s']:7.2f} tok/s  speculative {row['spec_tokens_per_s']:7.2f} tok/s  "
              f"speedup {row['speedup']:.2f}x ({row['speedup_min']:.2f}..{row['speedup_max']:.2f})  "
              f"alpha {row['alpha'] or 0:.3f}  tau {row['tau'] or 0:.2f}  plain steps {row['plain_step_share'] or 0:.0%}  rows = batch-1 output {row['identical_rows']}",
              flush=True)
        if args.report:
            Path(args.report).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    slow = [r["batch_size"] for r in rows if r["speedup"] and r["speedup"] < 1.0]
    if slow:
        print(f"speculation is a slowdown at batch size {', '.join(map(str, slow))}: the autoregressive baseline is faster there")
    print("tokens/s = summed new tokens of all rows / summed batch wall time; speedup = AR batch time / speculative "
          "batch time per batch, geometric mean (min..max); tau = new tokens per verification step; plain steps = "
          "share of a row's steps that drafted nothing (draft gate closed or probing, or the last token).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
