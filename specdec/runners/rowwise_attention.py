"""Batch-invariant attention (and activations) for verification forwards: each new token's
attention is computed on its own, exactly as a one-token decode step computes it.

Why: with the quantized kernels every linear layer gives a row the same bits alone or among
others, but attention did not: a width-5 forward on SDPA or eager attention runs one [5, L]
score matrix product whose reductions differ in the last bits from five [1, L_i] ones (measured
on stories260K: the first differing module output is ``o_proj``'s input, i.e. the attention
core). Here every forward of up to :data:`MAX_ROWWISE` new tokens, decode steps included, runs
the extension's ``rowwise_attention`` (``kernels/attention.cpp``): one call per layer computes each
(batch, head, query) with the same code over the keys that query may see (the cache up to its
own position) and its row of the mask, so query row i of a verification forward gets the bits of
the decode step at that position. Where the kernel does not apply (not float32, sliding windows,
soft-capping, attention sinks, dropout) the row-by-row fallback calls transformers' own SDPA
function once per token, which is exact too but costs about 100 us a call (28 layers x 5 rows:
14 ms of a 100 ms verification forward of Qwen2.5 1.5B). Longer forwards (prefills) run as one
ordinary SDPA call: their rows are never compared with single steps.

The MLP's activation gets the same treatment (:class:`RowwiseActivation`): ATen computes an
elementwise SiLU / GELU with vector instructions and the elements left over at the end of a
tensor (or of a thread's chunk) with scalar code whose exp rounds differently, so a row's values
depended on how many rows shared the tensor (measured on stories260K, intermediate size 172).

Cost: one attention call per layer (about what a decode step's SDPA call costs) and width - 1
extra activation calls.
"""

from __future__ import annotations

import torch

#: The name models are switched to (``model.set_attn_implementation``).
NAME = "specdec_rowwise"
#: Widest forward computed row by row: the engine's verification forwards feed the last token
#: and up to MAX_DRAFT_WINDOW = 16 drafts (specdec.engine.loop), so widths 1 .. 17 must match
#: one-token steps; wider forwards are prefills, never compared with single steps.
MAX_ROWWISE = 17


def rowwise_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention signature: query [b, heads, q, d], key / value [b, kv_heads, L, d]
    with the q new tokens last; returns ([b, q, heads, d], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len <= MAX_ROWWISE and _kernel_applies(module, query, dropout, kwargs):
        return _kernel_attention(module, query, key, value, attention_mask, scaling), None
    if q_len == 1 or q_len > MAX_ROWWISE:
        return sdpa_attention_forward(module, query, key, value, _canonical(attention_mask), dropout, scaling,
                                      is_causal=None if q_len > 1 else False, **kwargs)
    rows = []
    for i in range(q_len):
        visible = kv_len - (q_len - 1 - i)  # causal: query i sees the cache up to its own position
        mask = None if attention_mask is None else attention_mask[:, :, i : i + 1, :visible]
        out, _ = sdpa_attention_forward(module, query[:, :, i : i + 1], key[:, :, :visible], value[:, :, :visible],
                                        _canonical(mask), dropout, scaling, is_causal=False, **kwargs)
        rows.append(out)
    return torch.cat(rows, dim=1), None


#: Attention keyword arguments the kernel honours when they are None / 0 (it has no such feature).
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "sinks")


def _kernel_applies(module, query: torch.Tensor, dropout: float, kwargs: dict) -> bool:
    """Whether ``rowwise_attention`` computes what transformers would: float32 on the CPU, no
    dropout, and none of the features it lacks (a model that has them uses the fallback)."""
    if query.dtype != torch.float32 or query.device.type != "cpu" or (dropout and module.training):
        return False
    if any(kwargs.get(name) for name in _UNSUPPORTED) or getattr(module, "sliding_window", None):
        return False
    return _extension() is not None


def _extension():
    """The compiled kernels, or None where they cannot be built (the fallback then runs)."""
    from specdec.runners.kernels.qlinear import KernelBuildError, extension

    try:
        return extension()
    except KernelBuildError:
        return None


def _kernel_attention(module, query, key, value, attention_mask, scaling) -> torch.Tensor:
    """[b, heads, q, d] queries against [b, kv_heads, L, d] keys / values -> [b, q, heads, d]."""
    from specdec.runners.kernels.qlinear import default_isa

    if scaling is None:
        scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
    mask = _canonical(attention_mask)
    if mask is not None:
        mask = mask[:, :, :, : key.shape[2]]
        if mask.dtype == torch.bool:  # True = may attend
            mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(~mask, float("-inf"))
        mask = mask.to(torch.float32)
    return _extension().rowwise_attention(query, key, value, mask, float(scaling), default_isa() != "scalar")


def _canonical(mask: torch.Tensor | None) -> torch.Tensor | None:
    """None for a mask that hides nothing, so a decode step (often given no mask) and a row of a
    verification forward (given a causal one) take the same SDPA path."""
    if mask is None:
        return None
    hides = (~mask).any() if mask.dtype == torch.bool else (mask != 0).any()
    return mask if bool(hides) else None


class RowwiseActivation(torch.nn.Module):
    """An elementwise activation applied one token row at a time for up to :data:`MAX_ROWWISE`
    rows, so each row is computed as in a one-token forward."""

    def __init__(self, activation: torch.nn.Module) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 1 or rows.shape[0] > MAX_ROWWISE:
            return self.activation(x)
        return torch.cat([self.activation(row) for row in rows.split(1)]).reshape(x.shape)


#: Attribute names transformers' MLPs give their activation.
ACTIVATION_NAMES = ("act_fn", "act", "activation_fn")


def make_row_invariant(model: torch.nn.Module) -> bool:
    """Switches ``model`` (a transformers model, in place) to :func:`rowwise_attention_forward`
    and wraps its MLP activations in :class:`RowwiseActivation`; False when the model cannot
    switch attention implementation (it keeps its own)."""
    from transformers import AttentionInterface

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if name in ACTIVATION_NAMES and not isinstance(child, RowwiseActivation) and not any(child.parameters()):
                setattr(parent, name, RowwiseActivation(child))
    AttentionInterface.register(NAME, rowwise_attention_forward)
    try:
        model.set_attn_implementation(NAME)
    except (AttributeError, ValueError, NotImplementedError):
        return False
    return True
