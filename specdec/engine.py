"""The decode loop: one loop for the autoregressive baseline and for speculative decoding.

Invariant of the loop: the target's KV cache holds every token of ``context`` except the
last one, which is fed at the start of the next step together with the drafts. A step feeds
``[last, d1 .. dg]`` and gets g + 1 rows of logits: row i predicts draft i, row g the bonus.
With no drafter (the baseline) g = 0 and a step is one ordinary KV-cached decode forward.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch

from .cache import KVCache
from .devices import synchronized_clock
from .drafters import Drafter
from .errors import UsageError
from .forward import ForwardTimer, forward_logits
from .prepack import decode_model
from .sampling import SamplingParams, make_generator, probabilities, sample
from .stats import StepStats, latency_summary, ratio
from .stopping import StopChecker
from .verify import verify_greedy, verify_sampling


@dataclass
class GenerationConfig:
    """What one generation does.

    max_new_tokens: upper bound on generated tokens (prompt excluded).
    sampling: temperature / top-k / top-p; temperature 0 is greedy.
    gamma: draft tokens per step (the starting length when the drafter adapts it).
    seed: seeds the generation's random generator once; None draws a fresh seed per call
        (reported in the stats as ``seed`` so any run can be repeated).
    stop_strings: stop when the generated text contains one of these (text is cut before it).
    ignore_eos: keep generating past end-of-sequence tokens (benchmarks with fixed lengths).
    """

    max_new_tokens: int = 50
    sampling: SamplingParams = field(default_factory=SamplingParams)
    gamma: int = 4
    seed: int | None = None
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.gamma < 1:
            raise UsageError(f"gamma (draft tokens per step) must be >= 1, got {self.gamma}")


@dataclass
class GenerationResult:
    """One finished generation.

    text: the generated text (prompt excluded, special tokens removed).
    token_ids: the generated token ids (prompt excluded).
    stats: metrics keyed by the names of ../shared/docs/metrics.md (seconds, counts, ratios).
    """

    text: str
    token_ids: list[int]
    stats: dict


class Engine:
    """Generates with a target model, with or without a drafter.

    target: a transformers causal LM already on ``device`` and in eval mode.
    tokenizer: the target's tokenizer (for stop strings and the returned text).
    eos_token_ids: ids that end a generation.
    prepack: run decode forwards on a copy of the target with its linear weights prepacked
        for oneDNN where that gives bit-identical results (CPU, bf16/fp16; see
        :mod:`specdec.prepack`); ``pack_report`` says what was done.
    """

    def __init__(
        self, target: torch.nn.Module, tokenizer, device: torch.device, eos_token_ids: set[int], prepack: bool = True
    ) -> None:
        self.target = target
        self.decode_target, self.pack_report = decode_model(target, enabled=prepack)
        self.tokenizer = tokenizer
        self.device = device
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = target.get_output_embeddings().weight.shape[0]
        self.context_limit = context_limit(target)

    def check_fits(self, prompt_length: int, max_new_tokens: int) -> None:
        """Refuse a prompt that, with the new tokens, would not fit the model's context."""
        if prompt_length == 0:
            raise UsageError("the prompt is empty: give at least one token of text")
        if self.context_limit and prompt_length + max_new_tokens > self.context_limit:
            raise UsageError(
                f"the prompt has {prompt_length} tokens and {max_new_tokens} new tokens were asked for, "
                f"more than the model's context of {self.context_limit}; shorten the prompt or lower max_new_tokens"
            )

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], config: GenerationConfig, drafter: Drafter | None = None) -> GenerationResult:
        """Decode from ``prompt_ids``; speculative when ``drafter`` is given, else autoregressive."""
        config.validate()
        self.check_fits(len(prompt_ids), config.max_new_tokens)
        sampling = config.sampling
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        generator = make_generator(self.device, seed)
        eos_ids = set() if config.ignore_eos else self.eos_token_ids
        stopper = StopChecker(self.tokenizer, config.max_new_tokens, eos_ids, config.stop_strings)
        target_timer = ForwardTimer(self.device)
        steps = StepStats()
        cache = KVCache(self.target)
        if drafter is not None:
            drafter.reset(self.device)

        started = synchronized_clock(self.device)
        logits = target_timer.run(forward_logits, self.decode_target, cache, list(prompt_ids), self.device, prefill=True)
        first = self._choose(logits, sampling, generator)
        context = list(prompt_ids) + [first]
        generated = [first]
        first_token_at = synchronized_clock(self.device)
        stopped = stopper.should_stop(generated)

        while not stopped:
            remaining = config.max_new_tokens - len(generated)
            # Propose at most remaining - 1 drafts: the step always adds one more token.
            budget = min(drafter.next_length(config.gamma), remaining - 1) if drafter else 0
            proposal = drafter.propose(context, budget, sampling, generator) if budget > 0 else None
            drafts = proposal.tokens[:budget] if proposal else []
            logits = target_timer.run(
                forward_logits, self.decode_target, cache, [context[-1]] + drafts, self.device, keep_logits=len(drafts) + 1
            )
            verdict = self._verify(drafts, proposal, logits, sampling, generator)
            # The cache now holds context + drafts; keep context + the accepted drafts.
            cache.crop(len(context) + verdict.accepted)
            kept = 0
            for token in drafts[: verdict.accepted] + [verdict.next_token]:
                context.append(token)
                generated.append(token)
                kept += 1
                if stopper.should_stop(generated):
                    stopped = True
                    break
            steps.record(len(drafts), verdict.accepted, kept)
            if drafter is not None:
                drafter.observe(len(drafts), verdict.accepted)

        finished = synchronized_clock(self.device)
        stats = self._stats(
            prompt_ids, generated, config, seed, stopper, steps, target_timer, drafter, started, first_token_at, finished
        )
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return GenerationResult(text=stopper.final_text(text), token_ids=generated, stats=stats)

    def _choose(self, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> int:
        """Pick the next token from one row of logits (argmax, or a draw from the warped p)."""
        row = logits[-1]
        if sampling.greedy:
            return int(row.argmax())
        return int(sample(probabilities(row, sampling).unsqueeze(0), generator))

    def _verify(self, drafts, proposal, logits, sampling, generator):
        draft_tokens = torch.tensor(drafts, dtype=torch.long, device=logits.device)
        if sampling.greedy:
            return verify_greedy(draft_tokens, logits)
        draft_probs = proposal.probs if proposal is not None and drafts else None
        if draft_probs is not None:
            draft_probs = draft_probs[: len(drafts)].to(logits.device)
        return verify_sampling(draft_tokens, draft_probs, probabilities(logits, sampling), generator)

    def _stats(self, prompt_ids, generated, config, seed, stopper, steps, target_timer, drafter, started, first_token_at, finished) -> dict:
        t_target = target_timer.mean_decode_seconds
        t_draft = drafter.mean_forward_seconds if drafter is not None else None
        return {
            "mode": "speculative" if drafter is not None else "autoregressive",
            "drafter": drafter.name if drafter is not None else None,
            "gamma": config.gamma if drafter is not None else None,
            "greedy": config.sampling.greedy,
            "seed": seed,
            "prompt_tokens": len(prompt_ids),
            "new_tokens": len(generated),
            "stop_reason": stopper.stop_reason,
            "target_forwards": target_timer.count,
            "draft_forwards": drafter.forwards if drafter is not None else 0,
            **steps.summary(),
            "t_target": t_target,
            "t_draft": t_draft,
            "c": ratio(t_draft, t_target) if t_draft is not None else None,
            # Where the time went (seconds): the rest of e2e_s is the loop itself (sampling,
            # verification, cache rollback, stop checks).
            "target_prefill_s": target_timer.prefill_seconds,
            "target_decode_s": target_timer.decode_seconds,
            "draft_prefill_s": drafter.timer.prefill_seconds if drafter is not None and drafter.timer else 0.0,
            "draft_decode_s": drafter.timer.decode_seconds if drafter is not None and drafter.timer else 0.0,
            **latency_summary(started, first_token_at, finished, len(generated)),
        }


def context_limit(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length from its config, or None when it states none."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
