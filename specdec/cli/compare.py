"""One prompt, two ways: the autoregressive baseline and speculative decoding, side by side.

This is what the ``specdec`` command and ``specdec demo`` print. Both runs use the same
models, sampling mode, seed and token budget; a warm-up of each runs first and is excluded.
"""

from __future__ import annotations

from dataclasses import replace

from specdec.engine import GenerationResult
from specdec.engine.stats import predicted_speedup_from_lengths, ratio
from specdec.main import SpeculativeDecoder

WARMUP_TOKENS = 8


def warm_up(decoder: SpeculativeDecoder, prompt: str, chat: bool = False) -> None:
    """A short generation of each kind, so neither measured run pays one-time costs
    (allocator growth, lazy initialisation, first-call kernel selection)."""
    budget = min(WARMUP_TOKENS, decoder.config.max_new_tokens)
    for speculative in (False, True):
        decoder.generate(prompt, speculative=speculative, chat=chat, max_new_tokens=budget)


def compare(decoder: SpeculativeDecoder, prompt: str, chat: bool = False, warmup: bool = True,
            speculative_first: bool = False) -> dict:
    """Run baseline and speculative decoding on ``prompt`` (the baseline first unless
    ``speculative_first``: callers with several prompts alternate it, so drift on a shared
    machine hits both arms); return a JSON-ready report.

    The report holds both results (text, tokens, stats), ``speedup`` (baseline e2e_s over
    speculative e2e_s), ``forward_speedup`` (target forwards, baseline over speculative),
    and in greedy mode ``identical`` (token-for-token equality of the two outputs).
    """
    if warmup:
        warm_up(decoder, prompt, chat)
    config = decoder.config
    if config.seed is None:
        # Both runs draw from the same seed, so a sampled comparison is reproducible from it.
        import secrets

        config = replace(config, seed=secrets.randbits(63))
    ids = decoder.encode(prompt, chat)
    if speculative_first:
        speculative = decoder.engine.generate(ids, config, decoder.drafter)
        baseline = decoder.engine.generate(ids, config, None)
    else:
        baseline = decoder.engine.generate(ids, config, None)
        speculative = decoder.engine.generate(ids, config, decoder.drafter)
    return comparison_report(decoder, prompt, baseline, speculative)


def comparison_report(decoder: SpeculativeDecoder, prompt: str, baseline: GenerationResult, speculative: GenerationResult) -> dict:
    """The JSON object ``specdec --json`` prints."""
    b, s = baseline.stats, speculative.stats
    return {
        "prompt": prompt,
        "target": decoder.target.source,
        "draft": decoder.draft.source if decoder.draft else None,
        "drafter": decoder.drafter.name,
        "device": str(decoder.device),
        "dtype": str(decoder.target.dtype).removeprefix("torch."),
        "gamma": decoder.config.gamma,
        "draft_schedule": decoder.draft_schedule,
        "max_new_tokens": decoder.config.max_new_tokens,
        "prepack": decoder.prepack_notes,
        "greedy": decoder.config.sampling.greedy,
        "temperature": decoder.config.sampling.temperature,
        "top_k": decoder.config.sampling.top_k,
        "top_p": decoder.config.sampling.top_p,
        "seed": b["seed"],
        "baseline": {"text": baseline.text, "token_ids": baseline.token_ids, "stats": b},
        "speculative": {"text": speculative.text, "token_ids": speculative.token_ids, "stats": s},
        "speedup": b["e2e_s"] / s["e2e_s"] if s["e2e_s"] else None,
        "tokens_per_s_ratio": (s["tokens_per_s"] / b["tokens_per_s"]) if b["tokens_per_s"] else None,
        "forward_speedup": b["target_forwards"] / s["target_forwards"] if s["target_forwards"] else None,
        "identical": baseline.token_ids == speculative.token_ids if decoder.config.sampling.greedy else None,
        "first_difference": first_difference(baseline.token_ids, speculative.token_ids),
        **draft_cost(b, s),
    }


def draft_cost(baseline: dict, speculative: dict) -> dict:
    """``c`` (one draft forward over one width-1 target forward, metrics.md) and the predicted
    speedup from it. The baseline run's decode forwards are all width 1, so its ``t_target``
    is the right denominator; the speculative run's own is used only when the baseline has
    none (its forwards are verifications, wider than 1, and cost more on most CPUs)."""
    t_draft = speculative.get("t_draft")
    if t_draft is None:
        return {"c": None, "c_basis": None, "predicted_speedup": None, "efficiency": None}
    if baseline.get("t_target") is not None:
        c, basis = ratio(t_draft, baseline["t_target"]), "width-1 target forward (the baseline run)"
    else:
        c, basis = speculative.get("c"), speculative.get("c_basis")
    predicted = predicted_speedup_from_lengths(speculative.get("alpha"), c, speculative.get("proposal_lengths") or {})
    speedup = ratio(baseline["e2e_s"], speculative["e2e_s"]) if baseline.get("e2e_s") and speculative.get("e2e_s") else None
    return {"c": c, "c_basis": basis, "predicted_speedup": predicted,
            "efficiency": ratio(speedup, predicted) if predicted and speedup else None}


def first_difference(left: list[int], right: list[int]) -> int | None:
    """0-based index of the first new token where two outputs differ, or None when equal."""
    for index, (a, b) in enumerate(zip(left, right)):
        if a != b:
            return index
    return None if len(left) == len(right) else min(len(left), len(right))
