#!/usr/bin/env python3
"""What one forward of a model costs on this machine, by dtype, thread count, prepacking and
width (tokens fed at once): the measurements behind specdec's CPU defaults.

    python benchmarks/forward_costs.py                       # the 1.5B Qwen target
    python benchmarks/forward_costs.py --model PATH --widths 1 5 11
    python benchmarks/forward_costs.py --modes all           # weight formats, widths 1 2 5 16

Each cell is the median of --repeats forwards after a 200-token prefill, each forward
followed by a cache rollback so the context length stays fixed. Width 1 is a decode step;
width gamma + 1 is a verification step. Nothing is asserted; the table is printed.

``--modes`` prints, instead of the dtype table, one row per weight format of the whole model:
float32, bfloat16 (only where the CPU has native bf16, unless named), PyTorch's weight-only
kernels (torch-int8: ``_weight_int8pack_mm``, torch-int4: ``_weight_int4pack_mm_for_cpu``,
both with bf16 activations, on a bf16 model; layers they cannot take stay bf16) and specdec's
batch-invariant kernels (int8, int4: :mod:`specdec.runners.quantize`, float32 activations;
w8a8, w4a8: the same weights with int8 activations, integer dot products).
"roofline" is the bytes a forward must read (every weight but an untied input embedding)
divided by the read bandwidth measured here (summing a 1 GiB tensor); "5 vs 1" is width 5's
cost over width 1's. Modes alternate width by width, so load drifts hit all of them alike.
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
from specdec.runners.cpu_features import has_native_bf16

FIXTURES = Path(os.environ.get("SPECDEC_FIXTURES", Path.home() / ".cache" / "specdec-fixtures"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(FIXTURES / "qwen-coder-1.5b" / "hf-bfloat16"))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--threads", nargs="+", type=int, default=sorted({1, torch.get_num_threads()}))
    p.add_argument("--widths", nargs="+", type=int, default=None,
                   help="widths fed at once (default: 1 5 11; with --modes 1 2 5 16)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--modes", nargs="+", default=None, choices=("all", *MODES),
                   help="the weight-format table instead: all, or some of " + ", ".join(MODES))
    p.add_argument("--group_size", type=int, default=128, help="inputs per 4-bit group (int4, w4a8, torch-int4)")
    args = p.parse_args(argv)
    if args.widths is None:
        args.widths = [1, 2, 5, 16] if args.modes else [1, 5, 11]
    return args


#: Weight formats of the --modes table.
MODES = ("float32", "bfloat16", "torch-int8", "torch-int4", "int8", "int4", "w8a8", "w4a8")


class TorchWeightOnly(torch.nn.Module):
    """An ``nn.Linear`` on PyTorch's weight-only CPU kernels (bf16 activations), prepared as
    gpt-fast does: int8 symmetric per channel; int4 min/max per group with bf16 scales and zeros."""

    def __init__(self, linear: torch.nn.Linear, bits: int, group_size: int) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        self.bits, self.group_size = bits, group_size
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))
        if bits == 8:
            scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
            self.register_buffer("q", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale.to(torch.bfloat16))
            return
        groups = w.reshape(n, k // group_size, group_size)
        lo, hi = groups.amin(dim=2), groups.amax(dim=2)
        scale = ((hi - lo).clamp(min=1e-6) / 15).to(torch.bfloat16)
        zero = (lo + 8 * scale.float()).to(torch.bfloat16)
        q = ((groups - lo[..., None]) / scale.float()[..., None]).round().clamp(0, 15).reshape(n, k).to(torch.int32)
        self.register_buffer("q", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
        self.register_buffer("scale", torch.stack([scale, zero], dim=2).transpose(0, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(rows, self.q, self.scale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.q, self.group_size, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)


def torch_weight_only(model: torch.nn.Module, bits: int, group_size: int) -> str:
    """Swaps ``model``'s linear layers (in place) for :class:`TorchWeightOnly` where their shape
    fits (in_features a multiple of ``group_size``, out_features of 16); a note of what stayed."""
    kept = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                n, k = child.weight.shape
                # Both kernels want whole groups and blocks of 16 outputs (int8 crashes on odd shapes).
                if k % group_size or n % 16:
                    kept += 1
                    continue
                setattr(parent, name, TorchWeightOnly(child, bits, group_size))
    return f"{kept} linear layers stay bf16 (shape)" if kept else ""


def read_bandwidth_gbs(gib: float = 1.0, repeats: int = 5) -> float:
    """Memory read bandwidth (GB/s): median time to sum a float32 tensor of ``gib`` GiB."""
    big = torch.ones(int(gib * 2**30) // 4)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        big.sum()
        times.append(time.perf_counter() - started)
    return big.numel() * 4 / statistics.median(times) / 1e9


def forward_bytes(model: torch.nn.Module) -> int:
    """Bytes one forward reads: every parameter and buffer but an input embedding that is not
    also the LM head (a lookup reads a few rows)."""
    embedding = model.get_input_embeddings()
    head = getattr(model.get_output_embeddings(), "weight", None)
    skip = {id(embedding.weight)} if embedding.weight is not head else set()
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def mode_model(path: str, mode: str, group_size: int):
    """(model, note) for one row of the --modes table; None where the mode cannot run here."""
    from specdec.runners.kernels import KernelBuildError
    from specdec.runners.quantize import quantize_model

    specdec_modes = ("int8", "int4", "w8a8", "w4a8")
    # specdec's modes load the checkpoint's own dtype (bf16 here) and widen what stays float to
    # float32 after quantizing: the same weights as from a float32 load, at half the peak memory
    # (eight models of 1.5B in one process ran out of 24 GiB).
    dtype = "float32" if mode == "float32" else ("auto" if mode in specdec_modes else "bfloat16")
    model = load_model(path, torch.device("cpu"), dtype).model
    if mode in ("torch-int8", "torch-int4"):
        return model, torch_weight_only(model, 8 if mode == "torch-int8" else 4, group_size)
    if mode in specdec_modes:
        try:
            return model, quantize_model(model, mode, group_size).note
        except KernelBuildError as error:
            print(f"{mode}: skipped, {error}")
            return None
    return model, ""


def modes_table(args) -> int:
    """The weight-format table (--modes)."""
    modes = list(MODES) if "all" in args.modes else list(args.modes)
    if "all" in args.modes and not has_native_bf16():
        modes.remove("bfloat16")  # emulated bf16 is never the fast choice; name it to measure it anyway
    threads = args.threads[-1]
    torch.set_num_threads(threads)
    bandwidth = read_bandwidth_gbs()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"forward cost of {args.model} by weight format (ms, median of {args.repeats}, context 200 tokens, "
          f"{threads} threads, read bandwidth {bandwidth:.1f} GB/s, load average {load:.2f})")
    models, notes = {}, {}
    for mode in modes:
        built = mode_model(args.model, mode, args.group_size)
        if built is not None:
            models[mode], notes[mode] = built
    cells: dict[str, dict[int, float]] = {mode: {} for mode in models}
    for width in args.widths:  # modes alternate within each width
        for mode, model in models.items():
            cells[mode][width] = forward_ms(model, width, args.repeats)
    header = f"| mode | {' | '.join(f'width {w}' for w in args.widths)} | roofline | 5 vs 1 |"
    print(header)
    print("|" + "---|" * (len(args.widths) + 3))
    for mode, model in models.items():
        roof = forward_bytes(model) / bandwidth / 1e6
        ratio = (f"{cells[mode][5] / cells[mode][1]:.2f}x" if {1, 5} <= set(cells[mode]) else "-")
        row = " | ".join(f"{cells[mode][w]:.1f}" for w in args.widths)
        print(f"| {mode} | {row} | {roof:.2f} | {ratio} |", flush=True)
    for mode, note in notes.items():
        if note:
            print(f"{mode}: {note}")
    print(f"load average after: {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")
    return 0


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
    if args.modes:
        return modes_table(args)
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
