"""Quantization of a whole model onto the batch-invariant CPU kernels
(:mod:`specdec.runners.kernels`): every ``nn.Linear`` becomes a :class:`QuantLinear`.

Modes (``--quantize``, ``quantize=``, ``model.quantize`` / ``speculative.quantize``):

* ``int8``: weight-only, symmetric, one float32 scale per output channel; float32 activations.
* ``int4``: weight-only, asymmetric groups of ``group_size`` inputs (default 128), a float32
  scale and minimum each; float32 activations. A layer whose in_features is not a multiple of
  the group size gets a shorter last group (nothing is padded into the weights).
* ``w8a8``, ``w4a8``: the same weights, and activations quantized to int8 per row in blocks
  (of the group size for w4a8, of 128 for w8a8) so the products are integer dot products, as
  llama.cpp computes its Q4 / Q8 layers (:mod:`specdec.runners.kernels.qlinear_a8`): the fastest
  here, for a decode step and more so for a verification; the w4a8 group size must be a
  multiple of 8.

Whatever the mode, the LM head is 8-bit (int8, or w8a8 in the a8 modes): it decides every token,
and per-channel int8 stays closest to the float head. A tied input embedding keeps its float weight (an embedding is a
lookup, not a matrix product). The rest of the model (embeddings, norms) is cast to float32, so
activations are float32 throughout (a bf16 checkpoint's weights are widened exactly); the float
linear weights are dropped.

Why these kernels and no others: every output is one fixed sequence of operations that depends on
its own row alone, so a row's logits are the same bits alone or in a verification forward of any
width, and greedy speculation on the quantized target is token-for-token its own greedy output.

A GGUF file (pass ``gguf_path``) keeps its own quantization wherever the kernel runs it exactly:
Q4_0 (minimum = -8 * d), Q4_1 (scale d, minimum m) and Q4_K (per 32-input sub-block scale
d * sc and minimum -dmin * m, both exact in float32), all as int4 in groups of 32. Each kept
tensor's dequantized weight is checked bit for bit against transformers' dequantization of the
same file before it is used. Other types (Q5_0, Q6_K, Q8_0, F16, ...) fall back: their
dequantized weight is quantized with the chosen mode, and the report names them and why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from specdec.errors import UsageError
from specdec.runners.kernels.layer import QuantLinear
from specdec.runners.kernels.qlinear import Int4Weight, pack_int4
from specdec.runners.kernels.qlinear_a8 import Int4A8Weight, pack_int4_a8
from specdec.runners.rowwise_attention import make_row_invariant

MODES = ("int8", "int4", "w8a8", "w4a8")
#: Modes whose weights are 4-bit in groups (they take a group size).
GROUPED = ("int4", "w4a8")
DEFAULT_GROUP_SIZE = 128
#: GGUF block types the int4 kernel runs exactly, and the inputs per group they map onto.
GGUF_EXACT = {"Q4_0": 32, "Q4_1": 32, "Q4_K": 32}


@dataclass
class QuantReport:
    """What :func:`quantize_model` did.

    mode, group_size: what was asked (group_size only for int4).
    formats: layer count by format actually used, e.g. {"int4 g128": 168, "int8": 1,
        "GGUF Q4_K (exact, int4 g32)": 140} (w4a8 in the int8-activation modes).
    fell_back: (layer, reason) for GGUF tensors that could not be kept as they are.
    left_alone: (module, reason) for weights that stay float (a tied input embedding).
    bytes_before, bytes_after: the linear layers' weight bytes before and after.
    row_invariant: attention and activations switched to one-row-at-a-time computation
        (:mod:`specdec.runners.rowwise_attention`), so whole-model logits are batch invariant.
    """

    mode: str
    group_size: int | None
    formats: Counter = field(default_factory=Counter)
    fell_back: list[tuple[str, str]] = field(default_factory=list)
    left_alone: list[tuple[str, str]] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    row_invariant: bool = False

    @property
    def label(self) -> str:
        """The mode as reports print it: "int8", "int4 g128", "w8a8" or "w4a8 g128"."""
        return self.mode if self.mode not in GROUPED else f"{self.mode} g{self.group_size}"

    @property
    def note(self) -> str:
        """One line for logs and reports."""
        parts = ", ".join(f"{count} {name}" for name, count in sorted(self.formats.items()))
        text = (f"quantized {sum(self.formats.values())} linear layers ({parts}), weights "
                f"{self.bytes_before / 2**20:.0f} -> {self.bytes_after / 2**20:.0f} MiB")
        if self.fell_back:
            reasons = Counter(reason for _, reason in self.fell_back)
            text += "; fell back: " + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
        if not self.row_invariant:
            text += "; attention could not be made row-invariant (logits may differ in the last bits by width)"
        if self.left_alone:
            text += "; float: " + ", ".join(f"{name} ({reason})" for name, reason in self.left_alone)
        return text

    def as_dict(self) -> dict:
        """For JSON reports and manifests."""
        return {
            "mode": self.mode,
            "group_size": self.group_size,
            "label": self.label,
            "formats": dict(self.formats),
            "fell_back": [list(item) for item in self.fell_back],
            "left_alone": [list(item) for item in self.left_alone],
            "linear_weight_mib_before": round(self.bytes_before / 2**20, 1),
            "linear_weight_mib_after": round(self.bytes_after / 2**20, 1),
            "row_invariant": self.row_invariant,
        }


def check_mode(mode: str | None, group_size: int | None = None) -> tuple[str | None, int | None]:
    """Validates a user's mode and int4 group size: (mode or None, group size or None).

    Raises UsageError (one line) for an unknown mode or a group size that is not a positive
    even number."""
    if mode in (None, "", "none", "off"):
        return None, None
    if mode not in MODES:
        raise UsageError(
            f"unknown quantization {mode!r}: use int8, int4, w8a8 or w4a8 (or leave it out for full precision)"
        )
    if mode not in GROUPED:
        return mode, None
    size = DEFAULT_GROUP_SIZE if group_size is None else group_size
    step = 8 if mode == "w4a8" else 2
    if isinstance(size, bool) or not isinstance(size, int) or size < step or size % step:
        kind = "a positive multiple of 8" if step == 8 else "a positive even number"
        raise UsageError(f"{mode} group size must be {kind} of inputs (e.g. 32, 64, 128), not {size!r}")
    return mode, size


def quantization_of(model: torch.nn.Module) -> QuantReport | None:
    """The report of the quantization applied to ``model``, or None for a float model."""
    return getattr(model, "specdec_quantization", None)


def quantize_model(
    model: torch.nn.Module, mode: str, group_size: int | None = DEFAULT_GROUP_SIZE, gguf_path=None, log=None
) -> QuantReport:
    """Replaces every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`; returns the
    report, also kept as ``model.specdec_quantization``.

    mode: one of :data:`MODES`; group_size: inputs per 4-bit group (int4: even; w4a8: a multiple of 8). gguf_path: the GGUF file
    ``model`` was loaded from, to keep its exactly runnable tensors (module docstring).
    The model must be on the CPU (the kernels are CPU kernels).
    """
    mode, group_size = check_mode(mode, group_size)
    if mode is None:
        raise UsageError("quantize_model needs a mode: int8, int4, w8a8 or w4a8")
    if quantization_of(model) is not None:
        raise UsageError("this model is already quantized")
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise UsageError(f"quantized weights run on the CPU kernels only; this model is on {', '.join(sorted(devices))}")
    log = log or (lambda message: None)
    report = QuantReport(mode, group_size)
    kept = _gguf_int4_weights(model, gguf_path, report) if gguf_path else {}
    eight = "w8a8" if mode in ("w8a8", "w4a8") else "int8"  # the head's format (and int8/w8a8's)
    four = "w4a8" if mode == "w4a8" else "int4"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            report.bytes_before += child.weight.numel() * child.weight.element_size()
            if f"{name}.weight" in kept:
                packed, kind = kept.pop(f"{name}.weight")
                layer, label = QuantLinear(packed, child.bias), f"GGUF {kind} (exact, {four} g32)"
            elif child is head or mode in ("int8", "w8a8"):
                layer, label = QuantLinear.from_linear(child, fmt=eight), eight
            else:
                layer, label = QuantLinear.from_linear(child, group_size=group_size, fmt=four), f"{four} g{group_size}"
            report.formats[label] += 1
            report.bytes_after += sum(b.numel() * b.element_size() for b in layer.buffers() if b is not None)
            setattr(parent, child_name, layer)
    if embedding is not None and head is not None and getattr(embedding, "weight", None) is getattr(head, "weight", 0):
        report.left_alone.append(("input embedding", "tied to the LM head: a lookup, kept float32"))
    # Everything left (embeddings, norms, rotary tables) computes in float32: the kernels take
    # float32 activations, and bf16 -> float32 is exact.
    model.to(torch.float32)
    if getattr(model, "config", None) is not None:
        model.config.tie_word_embeddings = False  # the head is its own (quantized) layer now
    # Attention and activations one token row at a time, so a whole forward, not only its
    # linear layers, gives a row the same logits alone or in a verification forward.
    report.row_invariant = make_row_invariant(model)
    model.specdec_quantization = report
    log(report.note)
    return report


# ---------------------------------------------------------------------------------------------
# GGUF: the file's Q4 blocks, repacked for the int4 kernel without changing a single weight.
# ---------------------------------------------------------------------------------------------


def _fp16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """Bytes [offset, offset + 2) of each block as float16 widened to float32 (exact): [rows, blocks]."""
    return blocks[..., offset : offset + 2].contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """llama.cpp's 32-value layout: byte j holds value j (low nibble) and j + 16 (high): [..., 32]."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _decode_q4(kind: str, data: torch.Tensor, n: int, k: int):
    """A GGUF Q4 tensor's raw bytes [N, row bytes] -> (q [N, K] 0..15, scale, minimum [N, K / 32])."""
    if kind == "Q4_0":
        blocks = data.reshape(n, k // 32, 18)
        d = _fp16(blocks, 0)
        return _nibbles(blocks[..., 2:]).reshape(n, k), d, -8 * d  # (q - 8) * d, exact
    if kind == "Q4_1":
        blocks = data.reshape(n, k // 32, 20)
        return _nibbles(blocks[..., 4:]).reshape(n, k), _fp16(blocks, 0), _fp16(blocks, 2)
    # Q4_K: super-blocks of 256 = 8 sub-blocks of 32, 6-bit scales and mins (gguf.quants.Q4_K).
    blocks = data.reshape(n, k // 256, 144)
    d, dmin = _fp16(blocks, 0)[..., None], _fp16(blocks, 2)[..., None]
    s = blocks[..., 4:16].reshape(n, k // 256, 3, 4)
    lo, mid, hi = s[..., 0, :], s[..., 1, :], s[..., 2, :]
    sc = torch.cat([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], dim=-1).float()
    mn = torch.cat([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], dim=-1).float()
    qs = blocks[..., 16:].reshape(n, k // 256, 4, 32)
    q = torch.stack([qs & 0x0F, qs >> 4], dim=3).reshape(n, k)  # chunk c: sub-blocks 2c (low), 2c + 1 (high)
    # d * sc and dmin * m are exact in float32 (11-bit by 6-bit), so fma(q, d * sc, -dmin * m)
    # is llama.cpp's d * sc * q - dmin * m to the bit.
    return q, (d * sc).reshape(n, k // 32), (-(dmin * mn)).reshape(n, k // 32)


def _gguf_int4_weights(model: torch.nn.Module, gguf_path, report: QuantReport) -> dict[str, tuple[Int4Weight | Int4A8Weight, str]]:
    """{hf weight name: (packed int4 weight, GGUF type)} for the GGUF's linear weights the kernel runs
    exactly; records every other linear weight's fallback in ``report``."""
    import numpy as np
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    reader = GGUFReader(str(gguf_path))
    arch = reader.fields.get("general.architecture")
    arch = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else ""
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    names = get_gguf_hf_weights_map(model, processor)
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    kept = {}
    fallback = f"{report.label} from the dequantized weight"
    for tensor in reader.tensors:
        name = names.get(tensor.name)
        if name not in linears:
            continue
        kind = tensor.tensor_type.name
        if kind not in GGUF_EXACT:
            report.fell_back.append((name, f"GGUF {kind} has no exact int4/int8 form here -> {fallback}"))
            continue
        n, k = linears[name].out_features, linears[name].in_features
        q, scale, minimum = _decode_q4(kind, torch.from_numpy(np.array(tensor.data)), n, k)
        if ".attn_q." in tensor.name or ".attn_k." in tensor.name:
            rows = _permuted_rows(processor, tensor.name, n)
            q, scale, minimum = q[rows], scale[rows], minimum[rows]
        pack = pack_int4_a8 if report.mode in ("w8a8", "w4a8") else pack_int4  # activations as the mode has them
        packed = pack(q, scale, minimum, GGUF_EXACT[kind])
        reference = linears[name].weight.detach()
        if not torch.equal(packed.dequantize().to(reference.dtype), reference):
            report.fell_back.append((name, f"GGUF {kind} did not match transformers' dequantization -> {fallback}"))
            continue
        kept[name] = (packed, kind)
    return kept


def _permuted_rows(processor, gguf_name: str, n: int) -> torch.Tensor:
    """The row order transformers' processor gives a q/k projection (Llama GGUFs store them
    permuted for llama.cpp's rotary layout); identity for architectures that do not permute."""
    import numpy as np

    index = np.arange(n, dtype=np.int64).reshape(n, 1)
    permuted = processor.process(index, gguf_name).weights
    return torch.from_numpy(np.ascontiguousarray(permuted).reshape(n))
