"""Speculative sampling is lossless: its output has exactly the target's distribution.

Method. A tiny vocabulary (8 tokens) makes the space of short continuations small enough to
enumerate, so the target's exact distribution over every 4-token continuation is computed
from its logits (product of the warped next-token distributions along the sequence). Then
thousands of generations, each with its own fixed seed, are drawn through
``Engine.generate`` with a drafter, and a chi-square goodness-of-fit test compares the
empirical distribution of the continuations with the exact one (cells with expected count
below 5 are pooled; a sequence the target cannot produce at all fails at once). Every seed
is fixed, so the verdict is deterministic; the significance level ALPHA = 1e-3 is the
chance that a correct implementation would fail with unlucky seeds.

With 4 new tokens the first verification step carries 2 drafts, so multi-draft steps
(acceptance of a leading run, the correction at the first rejection, the bonus token after
a fully accepted run, and the cache rollback in between) are all exercised.

The models are random Llamas (``temperature_scale`` makes their distributions peaky and
different from each other) behind :class:`TableLM`, which serves each Llama's logits for
the full token history it reads back from its KV cache. Drawing thousands of samples from
the Llamas directly would take minutes on 2 CPU cores; the table gives the same
distributions in microseconds, while a wrong cache rollback or a wrong position still
changes what the model sees (and so the output distribution), and wrong ``position_ids``
fail an assertion.

The check is shown to have power: the same check, with the acceptance rule deliberately
broken in three classic ways, fails.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

import specdec.engine.step
from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import SamplingParams, sample
from specdec.engine.verify import Verdict

VOCAB = 8
NEW_TOKENS = 4
GAMMA = 3
# Holds every token of the vocabulary, so n-gram lookup always finds a match and proposes.
PROMPT = [5, 2, 7, 0, 3, 6, 1, 4, 5, 2]
ALPHA = 1e-3
DRAWS = 2000
DRAWS_BROKEN = 1000  # a broken rule is caught with far fewer draws


pytestmark = pytest.mark.usefixtures("one_thread")


class TableLM(torch.nn.Module):
    """A causal LM with a real KV cache whose logits are a random Llama's, looked up by history.

    Each forward appends the new token ids to layer 0 of the DynamicCache it is given, reads the
    whole history back from the cache, and returns for each new position the Llama's logits for
    the history up to that position (computed once by a full, uncached Llama forward).
    """

    def __init__(self, llama: torch.nn.Module, table: dict[tuple[int, ...], torch.Tensor]) -> None:
        super().__init__()
        self.llama = llama
        self.config = llama.config
        self.table = table

    def get_output_embeddings(self):
        return self.llama.get_output_embeddings()

    def forward(self, input_ids, position_ids=None, past_key_values=None, use_cache=True, logits_to_keep=1, **kwargs):
        new = input_ids[0]
        states = new.to(torch.float32).view(1, 1, -1, 1)
        keys, _ = past_key_values.update(states, states, 0)
        history = [int(t) for t in keys.view(-1).tolist()]
        start = len(history) - len(new)
        if position_ids is not None:
            expected = list(range(start, len(history)))
            assert position_ids[0].tolist() == expected, f"position_ids {position_ids[0].tolist()} != {expected}"
        rows = []
        for end in range(start + 1, len(history) + 1):
            key = tuple(history[:end])
            if key not in self.table:
                with torch.no_grad():
                    self.table[key] = self.llama(torch.tensor([history[:end]])).logits[0, -1]
            rows.append(self.table[key])
        logits = torch.stack(rows)[-logits_to_keep:].unsqueeze(0)
        return CausalLMOutputWithPast(logits=logits)


def llama_table(llama: torch.nn.Module, prompt: list[int], depth: int) -> dict[tuple[int, ...], torch.Tensor]:
    """Logits of ``llama`` after ``prompt`` + every continuation of length 0 .. depth (batched)."""
    table = {}
    with torch.no_grad():
        for length in range(depth + 1):
            suffixes = list(itertools.product(range(VOCAB), repeat=length))
            batch = torch.tensor([prompt + list(s) for s in suffixes])
            logits = llama(batch).logits[:, -1]
            for suffix, row in zip(suffixes, logits):
                table[tuple(prompt) + suffix] = row
    return table


def reference_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, then top-k, then top-p (smallest set of most likely tokens reaching top_p),
    written independently of specdec.sampling, in float64."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    order = torch.argsort(probs, descending=True).tolist()
    keep = order[:top_k] if top_k else order
    kept = probs[keep] / probs[keep].sum()
    mass, chosen = 0.0, []
    for token, p in zip(keep, kept.tolist()):
        chosen.append(token)
        mass += p
        if mass >= top_p:
            break
    result = torch.zeros_like(probs)
    result[chosen] = probs[chosen]
    return result / result.sum()


def exact_distribution(table, prompt, sampling: SamplingParams, new_tokens: int = NEW_TOKENS) -> dict[tuple[int, ...], float]:
    """The target's exact probability of every continuation of ``new_tokens`` tokens."""
    dist = {(): 1.0}
    for _ in range(new_tokens):
        grown = {}
        for prefix, mass in dist.items():
            probs = reference_probs(table[tuple(prompt) + prefix], sampling.temperature, sampling.top_k, sampling.top_p)
            for token in torch.nonzero(probs).flatten().tolist():
                grown[prefix + (token,)] = mass * float(probs[token])
        dist = grown
    return dist


def chi_square(observed: Counter, exact: dict, draws: int) -> tuple[float, int, float]:
    """Pearson chi-square of ``observed`` counts against ``exact`` probabilities.

    Cells expected fewer than 5 times are pooled into one cell. Returns (statistic, degrees of
    freedom, p-value); the p-value is 0 when a sequence of probability 0 was observed.
    """
    impossible = [seq for seq in observed if exact.get(seq, 0.0) == 0.0]
    if impossible:
        return float("inf"), 0, 0.0
    cells, pooled_expected, pooled_observed = [], 0.0, 0
    for seq, p in exact.items():
        expected = draws * p
        if expected >= 5:
            cells.append((observed.get(seq, 0), expected))
        else:
            pooled_expected += expected
            pooled_observed += observed.get(seq, 0)
    if pooled_expected > 0:
        cells.append((pooled_observed, pooled_expected))
    statistic = sum((o - e) ** 2 / e for o, e in cells)
    dof = len(cells) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)))
    return statistic, dof, p_value


def total_variation(observed: Counter, exact: dict, draws: int) -> float:
    keys = set(observed) | set(exact)
    return 0.5 * sum(abs(observed.get(k, 0) / draws - exact.get(k, 0.0)) for k in keys)


@pytest.fixture(scope="module")
def models():
    """Target and draft: two different random Llamas on an 8-token vocabulary, with their tables."""
    target = make_tiny_llama(seed=11, vocab_size=VOCAB, layers=1, hidden=16, temperature_scale=30.0)
    draft = make_tiny_llama(seed=12, vocab_size=VOCAB, layers=1, hidden=16, temperature_scale=30.0)
    depth = NEW_TOKENS - 1
    return {
        "target": target,
        "target_table": llama_table(target, PROMPT, depth),
        "draft": draft,
        "draft_table": llama_table(draft, PROMPT, depth),
    }


class SubsetTableLM(TableLM):
    """A TableLM draft that scores only some token ids (-inf for the rest), as a truncated
    draft head does (specdec.draft_head): its q is 0 on tokens the target may well choose."""

    SCORED = [0, 1, 2, 3, 4]

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        masked = torch.full_like(output.logits, float("-inf"))
        masked[..., self.SCORED] = output.logits[..., self.SCORED]
        return CausalLMOutputWithPast(logits=masked)


def draw(models, drafter_kind: str, sampling: SamplingParams, draws: int, policy: DraftLengthPolicy | None = None):
    """``draws`` speculative generations, seeds 0 .. draws-1; returns (sequence counts, summed stats)."""
    target = TableLM(models["target"], dict(models["target_table"]))
    engine = Engine(target, IdTokenizer(VOCAB), torch.device("cpu"), eos_token_ids=set())
    if drafter_kind == "model":
        drafter = ModelDraft(TableLM(models["draft"], dict(models["draft_table"])), VOCAB, policy)
    elif drafter_kind == "subset model":
        drafter = ModelDraft(SubsetTableLM(models["draft"], dict(models["draft_table"])), VOCAB, policy)
    else:
        drafter = NgramDraft(max_ngram=3, min_ngram=1)
    counts: Counter = Counter()
    totals: Counter = Counter()
    for seed in range(draws):
        config = GenerationConfig(max_new_tokens=NEW_TOKENS, sampling=sampling, gamma=GAMMA, seed=seed)
        result = engine.generate(PROMPT, config, drafter)
        assert len(result.token_ids) == NEW_TOKENS
        counts[tuple(result.token_ids)] += 1
        for key in ("proposed", "accepted", "rejections", "steps"):
            totals[key] += result.stats[key]
    return counts, totals


def check(models, drafter_kind, sampling, draws, policy=None):
    counts, totals = draw(models, drafter_kind, sampling, draws, policy)
    exact = exact_distribution(models["target_table"], PROMPT, sampling)
    statistic, dof, p_value = chi_square(counts, exact, draws)
    report = (
        f"chi2={statistic:.1f} dof={dof} p={p_value:.2e} TV={total_variation(counts, exact, draws):.3f} "
        f"stats={dict(totals)}"
    )
    return p_value, totals, report


SETTINGS = {
    "temperature 1": SamplingParams(temperature=1.0),
    "temperature 0.7 + top_k 3": SamplingParams(temperature=0.7, top_k=3),
    "temperature 1.5 + top_p 0.8": SamplingParams(temperature=1.5, top_p=0.8),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_model_drafter_sampling_output_has_the_target_distribution(models, setting):
    p_value, totals, report = check(models, "model", SETTINGS[setting], DRAWS)
    # The check is only meaningful when drafts were both accepted and rejected.
    assert totals["accepted"] > 0 and totals["rejections"] > 0, report
    assert p_value > ALPHA, f"speculative sampling output differs from the target's distribution: {report}"


@pytest.mark.parametrize("setting", ["temperature 1", "temperature 1.5 + top_p 0.8"])
def test_ngram_drafter_sampling_output_has_the_target_distribution(models, setting):
    p_value, totals, report = check(models, "ngram", SETTINGS[setting], DRAWS)
    assert totals["accepted"] > 0 and totals["rejections"] > 0, report
    assert p_value > ALPHA, f"n-gram speculative sampling output differs from the target's distribution: {report}"


def test_adaptive_draft_schedule_sampling_output_has_the_target_distribution(models):
    policy = DraftLengthPolicy("adaptive", 0.4)
    p_value, totals, report = check(models, "model", SamplingParams(temperature=1.0, top_k=5), DRAWS, policy)
    assert totals["accepted"] > 0 and totals["rejections"] > 0, report
    assert p_value > ALPHA, f"adaptive-schedule speculative sampling differs from the target: {report}"


def test_draft_scoring_a_subset_of_the_vocabulary_keeps_the_target_distribution(models):
    """FR-Spec's truncated draft head: q is 0 outside the scored ids, and speculative sampling
    is still exact (the residual max(0, p - q) carries the target's mass on the other ids)."""
    p_value, totals, report = check(models, "subset model", SamplingParams(temperature=1.0), DRAWS)
    assert totals["accepted"] > 0 and totals["rejections"] > 0, report
    assert p_value > ALPHA, f"a subset-vocabulary draft changed the output distribution: {report}"


# --- the check has power: deliberately broken acceptance rules fail it ---------------------


def _always_accept(draft_tokens, draft_probs, target_probs, generator):
    """Broken: accepts every draft (output follows the draft, not the target)."""
    num = draft_tokens.shape[0]
    return Verdict(accepted=num, next_token=int(sample(target_probs[num : num + 1], generator)))


def _generic_rule(accept_test, residual_rule, bonus_offset=0):
    """verify_sampling with a pluggable acceptance test, residual and bonus row, to build
    broken variants (bonus_offset -1 takes the bonus from the last draft's row: off by one)."""

    def rule(draft_tokens, draft_probs, target_probs, generator):
        num = draft_tokens.shape[0]
        positions = torch.arange(num)
        p_x = target_probs[positions, draft_tokens]
        q_x = draft_probs[positions, draft_tokens] if draft_probs is not None else torch.ones_like(p_x)
        uniforms = torch.rand(num, generator=generator)
        accepted = int(accept_test(uniforms, p_x, q_x).int().cumprod(0).sum()) if num else 0
        if accepted == num:
            row = max(num + bonus_offset, 0)
            return Verdict(accepted, int(sample(target_probs[row : row + 1], generator)))
        p_row = target_probs[accepted]
        if draft_probs is not None:
            q_row = draft_probs[accepted]
        else:
            q_row = torch.zeros_like(p_row)
            q_row[draft_tokens[accepted]] = 1.0
        residual = residual_rule(p_row, q_row)
        return Verdict(accepted, int(sample((residual / residual.sum()).unsqueeze(0), generator)))

    return rule


BROKEN_RULES = {
    "always accept": _always_accept,
    "accept with min(1, q/p)": _generic_rule(lambda u, p, q: u * p < q, lambda p, q: (p - q).clamp_min(0)),
    "residual p instead of max(0, p - q)": _generic_rule(lambda u, p, q: u * q < p, lambda p, q: p),
    "bonus drawn from the last draft's row (off by one)": _generic_rule(
        lambda u, p, q: u * q < p, lambda p, q: (p - q).clamp_min(0), bonus_offset=-1
    ),
}


def _batched(rule):
    """A one-row rule (drafts [g], q [g, V] or None, p [g + 1, V]) as the engine's batched
    verifier (drafts [B, g], lengths [B], q [B, g, V] or None, p [B, g + 1, V])."""

    def batch_rule(draft_tokens, draft_lengths, draft_probs, target_probs, generator):
        accepted, next_tokens = [], []
        for row in range(draft_tokens.shape[0]):
            n = int(draft_lengths[row])
            q = draft_probs[row, :n] if draft_probs is not None else None
            verdict = rule(draft_tokens[row, :n], q, target_probs[row, : n + 1], generator)
            accepted.append(verdict.accepted)
            next_tokens.append(verdict.next_token)
        return torch.tensor(accepted), torch.tensor(next_tokens)

    return batch_rule


@pytest.mark.parametrize("rule", list(BROKEN_RULES))
def test_statistical_check_detects_a_broken_acceptance_rule(models, monkeypatch, rule):
    # The engine calls the name it imported from specdec.verify; patch it there.
    monkeypatch.setattr(specdec.engine.step, "verify_sampling_batch", _batched(BROKEN_RULES[rule]))
    p_value, _, report = check(models, "model", SamplingParams(temperature=1.0), DRAWS_BROKEN)
    assert p_value < ALPHA, f"the distribution check failed to notice the broken rule {rule!r}: {report}"


def test_generic_rule_with_the_correct_choices_passes_the_check(models, monkeypatch):
    """Control for the broken-rule tests: the same scaffold with the right rule passes, so the
    failures above come from the broken choice, not from the scaffold."""
    correct = _generic_rule(lambda u, p, q: u * q < p, lambda p, q: (p - q).clamp_min(0))
    monkeypatch.setattr(specdec.engine.step, "verify_sampling_batch", _batched(correct))
    p_value, _, report = check(models, "model", SamplingParams(temperature=1.0), DRAWS_BROKEN)
    assert p_value > ALPHA, report
