"""The draft gate: the adaptive draft length goes to 0 where drafting steps lose to plain ones.

The rule is tested with step timings given by hand (deterministic); the engine tests make the
draft or the target slow on purpose (a sleep in its forward, far larger than a stories260K
forward, so load on the machine cannot flip the outcome) and check both the gate's decision and
that greedy output stays the target's.
"""

from __future__ import annotations

import time

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.draft_gate import DraftGate
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import GREEDY, SamplingParams

PLAIN_SECONDS = 0.010  # one plain step of a batch of 1: 100 tokens/s


def start(gate: DraftGate, batch: int = 1) -> None:
    """The first drafting step (not a sample), then the probe the gate asks for."""
    assert gate.drafts_now(batch)
    gate.observe(batch, batch, True, 3, 0.5)
    assert not gate.drafts_now(batch), "the gate probes a plain step when it has no plain timing"
    gate.observe(batch, batch, False, batch, PLAIN_SECONDS)


def drafting_steps(gate: DraftGate, count: int, tokens: int, seconds: float, batch: int = 1) -> list[bool]:
    """Run ``count`` steps; returns whether each drafted. A plain step takes PLAIN_SECONDS."""
    drafted = []
    for _ in range(count):
        drafts = gate.drafts_now(batch)
        drafted.append(drafts)
        gate.observe(batch, batch, drafts, tokens if drafts else batch, seconds if drafts else PLAIN_SECONDS)
    return drafted


def test_losing_drafting_closes_the_gate_and_retries_after_a_doubling_backoff():
    gate = DraftGate(backoff=4, retry=3, min_samples=4)
    start(gate)
    # 2 tokens in 50 ms: 40 tokens/s against 100 for plain steps.
    drafted = drafting_steps(gate, 4 + 4 + 3 + 8 + 3, tokens=2, seconds=0.05)
    assert drafted == [True] * 4 + [False] * 4 + [True] * 3 + [False] * 8 + [True] * 3
    report = gate.report()
    assert report["closings"] == 3 and report["closed_steps"] == 12 and report["probe_steps"] == 1
    assert report["drafting_tokens_per_s"] == pytest.approx(40.0)
    assert report["plain_tokens_per_s"] == pytest.approx(100.0)


def test_winning_drafting_keeps_the_gate_open():
    gate = DraftGate(min_samples=4)
    start(gate)
    assert all(drafting_steps(gate, 40, tokens=3, seconds=0.02))  # 150 tokens/s
    assert gate.report()["closings"] == 0


def test_a_retry_that_wins_reopens_the_gate_and_resets_the_backoff():
    gate = DraftGate(backoff=4, retry=3, min_samples=4)
    start(gate)
    drafting_steps(gate, 4, tokens=2, seconds=0.05)
    assert gate.closed_for == 4 and gate.backoff == 8
    drafting_steps(gate, 4, tokens=2, seconds=0.05)  # the back-off: plain steps
    assert all(drafting_steps(gate, 20, tokens=4, seconds=0.02))  # the text got predictable: 200 tokens/s
    assert gate.backoff == 4 and gate.closings == 1


def test_near_break_even_stays_open_within_the_margin():
    gate = DraftGate(margin=0.05, min_samples=4)
    start(gate)
    assert all(drafting_steps(gate, 20, tokens=97, seconds=1.0))  # 97 tokens/s against 100


def test_plain_timings_carry_over_generations_and_to_smaller_batches():
    gate = DraftGate(min_samples=4)
    start(gate, batch=4)
    gate.reset()
    gate.observe(4, 4, True, 6, 0.5)
    assert gate.drafts_now(4), "a new generation of the same batch size needs no probe"
    gate.observe(2, 2, True, 3, 0.5)
    assert gate.drafts_now(2), "a batch that shrank uses the larger batch's plain timing"
    gate.observe(8, 8, True, 12, 0.5)
    assert not gate.drafts_now(8), "a larger batch has no timing: probe"


# --- in the engine ---------------------------------------------------------------------------


def _slowed(module: torch.nn.Module, seconds: float) -> torch.nn.Module:
    """``module`` with every forward taking at least ``seconds`` longer."""
    forward = module.forward

    def slow_forward(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    module.forward = slow_forward
    return module


@pytest.fixture
def stories_pair(stories_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load():
        return AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()

    tokenizer = AutoTokenizer.from_pretrained(stories_path)
    return load(), load(), tokenizer


def _engine_and_drafter(target, draft, tokenizer, gate=True):
    engine = Engine(target, tokenizer, torch.device("cpu"), {tokenizer.eos_token_id}, prepack=False)
    drafter = ModelDraft(draft, engine.vocab_size, DraftLengthPolicy("adaptive", 0.4, gate=gate), prepack=False)
    return engine, drafter


def test_a_slow_draft_drops_to_plain_steps_and_greedy_output_is_the_targets(stories_pair, one_thread):
    target, draft, tokenizer = stories_pair
    engine, drafter = _engine_and_drafter(target, _slowed(draft, 0.02), tokenizer)
    prompt = tokenizer("Once upon a time, there was a little")["input_ids"]
    config = GenerationConfig(max_new_tokens=120, sampling=GREEDY, gamma=4, ignore_eos=True)
    baseline = engine.generate(prompt, config)
    result = engine.generate(prompt, config, drafter)
    assert result.token_ids == baseline.token_ids
    gate = result.stats["draft_gate"]
    assert gate["closings"] >= 1 and gate["closed_steps"] >= 16
    plain_steps = result.stats["proposal_lengths"].get("0", 0)
    assert plain_steps >= gate["closed_steps"]
    # Without the gate the same slow draft drafts in every step but the last.
    ungated_engine, ungated = _engine_and_drafter(target, draft, tokenizer, gate=False)
    ungated_result = ungated_engine.generate(prompt, config, ungated)
    assert ungated_result.token_ids == baseline.token_ids
    assert ungated_result.stats["proposal_lengths"].get("0", 0) <= 1
    assert ungated_result.stats["draft_gate"] is None


def test_a_draft_that_pays_keeps_drafting(stories_pair, one_thread):
    target, draft, tokenizer = stories_pair
    # The target is slow, the draft (the same weights) fast: drafting pays whatever the load.
    engine, drafter = _engine_and_drafter(_slowed(target, 0.02), draft, tokenizer)
    prompt = tokenizer("Once upon a time, there was a little")["input_ids"]
    config = GenerationConfig(max_new_tokens=40, sampling=GREEDY, gamma=4, ignore_eos=True)
    result = engine.generate(prompt, config, drafter)
    assert result.token_ids == engine.generate(prompt, config).token_ids
    gate = result.stats["draft_gate"]
    assert gate["closings"] == 0 and gate["probe_steps"] == 1
    assert gate["drafting_tokens_per_s"] > gate["plain_tokens_per_s"]


def test_a_closed_gate_keeps_every_row_of_a_batch_lossless(stories_pair, one_thread):
    target, draft, tokenizer = stories_pair
    engine, drafter = _engine_and_drafter(target, _slowed(draft, 0.02), tokenizer)
    texts = ["Once upon a time", "The dog ran to the park and", "Lily liked to"]
    prompts = [tokenizer(t)["input_ids"] for t in texts]
    config = GenerationConfig(max_new_tokens=100, sampling=GREEDY, gamma=4, ignore_eos=True)
    results = engine.generate_batch(prompts, config, drafter)
    for prompt, result in zip(prompts, results):
        assert result.token_ids == engine.generate(prompt, config).token_ids
    assert results[0].stats["draft_gate"]["closings"] >= 1


def test_sampling_never_consults_the_gate_so_a_seed_repeats(stories_pair, one_thread):
    target, draft, tokenizer = stories_pair
    engine, drafter = _engine_and_drafter(target, _slowed(draft, 0.01), tokenizer)
    prompt = tokenizer("Once upon a time")["input_ids"]
    config = GenerationConfig(max_new_tokens=30, sampling=SamplingParams(temperature=1.0), gamma=4, seed=7)
    first, second = engine.generate(prompt, config, drafter), engine.generate(prompt, config, drafter)
    assert first.token_ids == second.token_ids
    assert first.stats["draft_gate"] is None
    assert drafter.length_policy.gate.drafting_steps == drafter.length_policy.gate.probes == 0


def test_constant_schedule_and_ngram_have_no_gate():
    assert DraftLengthPolicy("constant").gate is None
    assert DraftLengthPolicy("adaptive", gate=False).gate is None
    assert DraftLengthPolicy("adaptive").gate is not None


def test_gate_flags_reach_the_policy():
    from specdec.cli.command import build_parser, settings_from_args

    args = build_parser().parse_args(["--num_sample_tok", "4", "--big_model", "x", "--small_model", "y", "--no-draft_gate"])
    assert settings_from_args(args)["draft_gate"] is False
    args = build_parser().parse_args(["--num_sample_tok", "4", "--big_model", "x", "--small_model", "y"])
    assert settings_from_args(args)["draft_gate"] is True


@pytest.mark.parametrize("flags, gated", [({}, True), ({"speculative.draft_gate": False}, False)])
def test_bench_config_key_reaches_the_native_drafter(flags, gated):
    from types import SimpleNamespace

    from specdec.bench.backends import MethodSpec, RunContext
    from specdec.bench.backends.native import NativeBackend
    from specdec.bench.config import load_config

    config = load_config(None, flags={"model": "T", "speculative.draft_model": "D", **flags}, environ={})
    draft = make_tiny_llama(seed=1)
    models = SimpleNamespace(draft=SimpleNamespace(model=draft), vocab_size=64, keep_ids=())
    drafter = NativeBackend(MethodSpec("speculative", "speculative"), RunContext(config, models, folder=None)).drafter
    assert (drafter.length_policy.gate is not None) is gated
