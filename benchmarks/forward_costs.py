#!/usr/bin/env python3
"""What one forward of a model costs on this machine, by dtype, thread count, prepacking and
width (tokens fed at once): the measurements behind specdec's CPU defaults.

    python benchmarks/forward_costs.py                       # the 1.5B Qwen target
    python benchmarks/forward_costs.py --model PATH --widths 1 5 11

Each cell is the median of --repeats forwards after a 200-token prefill, each forward
followed by a cache rollback so the context length stays fixed. Width 1 is a decode step;
width gamma + 1 is a verification step. Nothing is asserted; the table is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from specdec.runners.cache import KVCache
from specdec.runners.forward import forward_logits
from specdec.models.loading import load_model
from specdec.runners.prepack import decode_model

FIXTURES = Path(os.environ.get("SPECDEC_FIXTURES", Path.home() / ".cache" / "specdec-fixtures"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(FIXTURES / "qwen-coder-1.5b" / "hf-bfloat16"))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--threads", nargs="+", type=int, default=sorted({1, torch.get_num_threads()}))
    p.add_argument("--widths", nargs="+", type=int, default=[1, 5, 11])
    p.add_argument("--repeats", type=int, default=9)
    return p.parse_args(argv)


def forward_ms(model, width: int, repeats: int, context: int = 200) -> float:
    """Median milliseconds of one forward of ``width`` tokens after ``context`` cached tokens."""
    cache = KVCache(model)
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        forward_logits(model, cache, torch.randint(0, vocab, (context,), generator=generator).tolist(), device)
        times = []
        for _ in range(repeats + 1):
            tokens = torch.randint(0, vocab, (width,), generator=generator).tolist()
            started = time.perf_counter()
            forward_logits(model, cache, tokens, device, keep_logits=width)
            times.append(time.perf_counter() - started)
            cache.crop(context)
    return statistics.median(times[1:]) * 1000  # the first is a warm-up


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"forward cost of {args.model} (ms, median of {args.repeats}, context 200 tokens)")
    header = f"{'dtype':9} {'weights':9} {'threads':>7} " + " ".join(f"{f'width {w}':>9}" for w in args.widths)
    print(header)
    print("-" * len(header))
    for dtype in args.dtypes:
        loaded = load_model(args.model, torch.device("cpu"), dtype)
        packed, report = decode_model(loaded.model)
        variants = [("plain", loaded.model)] + ([("prepacked", packed)] if packed is not loaded.model else [])
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, model in variants:
                cells = " ".join(f"{forward_ms(model, w, args.repeats):9.1f}" for w in args.widths)
                print(f"{dtype:9} {name:9} {threads:7d} {cells}", flush=True)
        if packed is loaded.model:
            print(f"{dtype:9} {report.note}")
        del loaded, packed, variants
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
