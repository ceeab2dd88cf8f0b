"""The decode loop: one loop for the autoregressive baseline and for speculative decoding, over
a batch of prompts (batch 1 is the special case, not a separate path).

Invariant of the loop, per row: the target's cache holds every token of the row's context
except the last one, which is fed at the start of the next step together with the drafts. A
step feeds ``[last, d1 .. dg]`` and gets g + 1 rows of logits: row i predicts draft i, row g
the bonus. With no drafter (the baseline) g = 0 and a step is one ordinary decode forward.

Rows are ragged: each row proposes and accepts its own number of drafts; the runner
(:mod:`specdec.runners`) keeps per-row lengths and masks what one row wrote but another did
not keep. Finished rows leave the batch (dynamic cache) or are masked (static cache).

Host syncs: one per step (the accepted counts, next tokens and drafts come to the host
together, in one copy), none inside it; the autoregressive baseline on CUDA syncs once every
``sync_every`` tokens, where it checks the stopping rules (tokens computed past a stop are
dropped, never returned).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import torch

from .devices import synchronize
from .drafters import Drafter, Proposal
from .errors import ContextOverflow, UsageError
from .prepack import decode_model
from .runners import ForwardClock, ModelRunner
from .sampling import SamplingParams, make_generator, probabilities, sample_unnormalized
from .stats import StepStats, latency_summary, ratio
from .stopping import StopChecker
from .verify import verify_greedy_batch, verify_sampling_batch


@dataclass
class GenerationConfig:
    """What one generation does.

    max_new_tokens: upper bound on generated tokens (prompt excluded).
    sampling: temperature / top-k / top-p; temperature 0 is greedy.
    gamma: draft tokens per step (the starting length when the drafter adapts it).
    seed: seeds the generation's random generator once; None draws a fresh seed per call
        (reported in the stats as ``seed`` so any run can be repeated). A batch shares one
        generator, so a sampled row's output depends on the batch it ran in.
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


#: Largest draft window a step may use (the adaptive schedule's ceiling), for sizing caches.
MAX_DRAFT_WINDOW = 16
#: Autoregressive tokens between host syncs on CUDA (stop checks happen there).
CUDA_SYNC_EVERY = 8


@dataclass
class _Row:
    """One request's state in a batch."""

    prompt: list[int]
    stopper: StopChecker
    context: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    steps: StepStats = field(default_factory=StepStats)
    finished: bool = False
    finished_at: float = 0.0

    def take(self, tokens: list[int], now: float) -> int:
        """Append ``tokens`` until a stopping rule fires; returns how many were kept."""
        kept = 0
        for token in tokens:
            self.context.append(token)
            self.generated.append(token)
            kept += 1
            if self.stopper.should_stop(self.generated):
                self.finished, self.finished_at = True, now
                break
        return kept


class Engine:
    """Generates with a target model, with or without a drafter, one prompt or a batch.

    target: a transformers causal LM already on ``device`` and in eval mode.
    tokenizer: the target's tokenizer (for stop strings and the returned text).
    eos_token_ids: ids that end a generation.
    prepack: run decode forwards on a copy of the target with its linear weights prepacked
        for oneDNN where that gives bit-identical results (CPU, bf16/fp16; see
        :mod:`specdec.prepack`); ``pack_report`` says what was done.
    cache: "dynamic", "static" or "auto" (static on CUDA, dynamic elsewhere); see
        :mod:`specdec.runners.runner`.
    graphs: capture decode forwards as CUDA graphs (CUDA + static cache); "auto" = on CUDA.
    sync_every: autoregressive tokens between host syncs (stop checks); None = 8 on CUDA,
        1 elsewhere (a CPU has nothing to gain from fewer).
    """

    def __init__(
        self, target: torch.nn.Module, tokenizer, device: torch.device, eos_token_ids: set[int], prepack: bool = True,
        cache: str = "auto", graphs: bool | str = "auto", sync_every: int | None = None,
    ) -> None:
        self.target = target
        self.decode_target, self.pack_report = decode_model(target, enabled=prepack)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.eos_token_ids = set(eos_token_ids)
        self.vocab_size = target.get_output_embeddings().weight.shape[0]
        self.context_limit = context_limit(target)
        on_cuda = self.device.type == "cuda"
        self.cache_kind = ("static" if on_cuda else "dynamic") if cache == "auto" else cache
        self.graphs = on_cuda if graphs == "auto" else bool(graphs)
        self.sync_every = sync_every or (CUDA_SYNC_EVERY if on_cuda else 1)
        # One runner for every request: a static cache and its CUDA graphs are reused.
        self.runner = ModelRunner(self.decode_target, self.device, self.cache_kind, self.graphs)

    def check_fits(self, prompt_length: int, max_new_tokens: int) -> None:
        """Refuse a prompt that, with the new tokens, would not fit the model's context."""
        if prompt_length == 0:
            raise UsageError("the prompt is empty: give at least one token of text")
        if self.context_limit and prompt_length + max_new_tokens > self.context_limit:
            raise ContextOverflow(
                f"the prompt has {prompt_length} tokens and {max_new_tokens} new tokens were asked for, "
                f"more than the model's context of {self.context_limit}; shorten the prompt or lower max_new_tokens"
            )

    def generate(self, prompt_ids: list[int], config: GenerationConfig, drafter: Drafter | None = None) -> GenerationResult:
        """Decode from ``prompt_ids``; speculative when ``drafter`` is given, else autoregressive."""
        return self.generate_batch([prompt_ids], config, drafter)[0]

    @torch.inference_mode()
    def generate_batch(
        self, prompts: list[list[int]], config: GenerationConfig, drafter: Drafter | None = None
    ) -> list[GenerationResult]:
        """Decode every prompt of ``prompts`` together as one batch; one result per prompt, in
        order, each with its own stats (and the batch's throughput under ``batch_*``)."""
        config.validate()
        if not prompts:
            return []
        for prompt in prompts:
            self.check_fits(len(prompt), config.max_new_tokens)
        sampling = config.sampling
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        generator = make_generator(self.device, seed)
        eos_ids = set() if config.ignore_eos else self.eos_token_ids
        rows = [_Row(list(p), StopChecker(self.tokenizer, config.max_new_tokens, eos_ids, config.stop_strings))
                for p in prompts]
        clock = ForwardClock(self.device)
        runner = self.runner
        # Static caches hold the prompt, every new token and one draft window; a batch also
        # leaves holes, which the runner compacts away when the cache fills.
        window = MAX_DRAFT_WINDOW + 1 if drafter is not None else 1
        extra_slots = config.max_new_tokens + window * (1 if len(prompts) == 1 else 2)
        if drafter is not None:
            drafter.reset(self.device, len(prompts), extra_slots=extra_slots)

        synchronize(self.device)
        started = time.perf_counter()
        logits = runner.start([r.prompt for r in rows], extra_slots, clock=clock)
        first = self._choose(logits, sampling, generator)
        first_tokens = first.tolist()
        first_token_at = time.perf_counter()
        for row, token in zip(rows, first_tokens):
            row.context = list(row.prompt)
            row.take([token], first_token_at)
        in_batch = list(range(len(rows)))  # runner row -> request index
        last = first
        while not all(rows[r].finished for r in in_batch):
            if drafter is None:
                last = self._autoregressive_chunk(runner, rows, in_batch, last, sampling, generator, config)
            else:
                last = self._speculative_step(runner, drafter, rows, in_batch, last, sampling, generator, config)
            if self.cache_kind != "static" and any(rows[r].finished for r in in_batch):
                keep = [i for i, r in enumerate(in_batch) if not rows[r].finished]
                if keep:
                    runner.select_rows(keep)
                    if drafter is not None:
                        drafter.select_rows(keep)
                    last = last[torch.tensor(keep, device=last.device)]
                in_batch = [in_batch[i] for i in keep]
        finished = max(r.finished_at for r in rows)
        batch_tokens = sum(len(r.generated) for r in rows)
        results = []
        for row in rows:
            stats = self._stats(row, config, seed, clock, drafter, started, first_token_at)
            stats.update(batch_size=len(rows), batch_new_tokens=batch_tokens, batch_e2e_s=finished - started,
                         batch_tokens_per_s=ratio(batch_tokens, finished - started))
            text = self.tokenizer.decode(row.generated, skip_special_tokens=True)
            results.append(GenerationResult(text=row.stopper.final_text(text), token_ids=row.generated, stats=stats))
        return results

    # --- one step ------------------------------------------------------------------------------

    def _autoregressive_chunk(self, runner, rows, in_batch, last, sampling, generator, config) -> torch.Tensor:
        """Up to ``sync_every`` plain decode forwards without a host sync, then one sync that
        applies the stopping rules (tokens computed past a row's stop are dropped)."""
        live = [not rows[r].finished for r in in_batch]
        remaining = min(config.max_new_tokens - len(rows[r].generated) for r, on in zip(in_batch, live) if on)
        layout = None if all(live) else [[on] for on in live]
        produced = []
        for _ in range(max(1, min(self.sync_every, remaining))):
            logits = runner.forward(last.unsqueeze(1), layout)
            last = self._choose(logits[:, -1], sampling, generator)
            produced.append(last)
        tokens = torch.stack(produced, dim=1).tolist()  # the one host sync of the chunk
        now = time.perf_counter()
        for index, (r, on) in enumerate(zip(in_batch, live)):
            if on:
                for token in tokens[index]:
                    kept = rows[r].take([token], now)
                    rows[r].steps.record(0, 0, kept)
                    if rows[r].finished:
                        break
        return last

    def _speculative_step(self, runner, drafter, rows, in_batch, last, sampling, generator, config) -> torch.Tensor:
        """Draft, verify every row in one target forward, keep what each row accepted."""
        step_started, capture_before = time.perf_counter(), self._capture_seconds(runner, drafter)
        live = [not rows[r].finished for r in in_batch]
        # The draft gate may make this a plain step (every length 0) where drafting has not paid.
        # Greedy only: its choices follow wall-clock time, and under sampling they would change
        # which random numbers a step draws, so a seeded generation would not repeat exactly.
        gated = sampling.greedy
        drafting = drafter.drafts_now(len(in_batch)) if gated else True
        budgets = [
            min(drafter.next_length(config.gamma, i), config.max_new_tokens - len(rows[r].generated) - 1)
            if on and drafting else 0
            for i, (r, on) in enumerate(zip(in_batch, live))
        ]
        proposal = raw = None
        if max(budgets) > 0:
            contexts = [rows[r].context for r in in_batch]
            proposal = raw = drafter.propose(contexts, budgets, sampling, generator)
        lengths_host = self._host_lengths(proposal, budgets)
        width = max(lengths_host) if proposal is not None else 0
        if width == 0:
            proposal = None
        # .to(): a draft on another GPU proposes there (a no-op on the same device).
        drafts = proposal.tokens[:, :width].to(self.device) if proposal is not None else last.new_zeros((len(in_batch), 0))
        draft_lengths = (proposal.lengths.clamp(max=width).to(self.device) if proposal is not None
                         else last.new_zeros(len(in_batch)))
        feed = torch.cat([last.unsqueeze(1), drafts], dim=1)
        layout = [[on] + [on and j < n for j in range(width)] for on, n in zip(live, lengths_host)]
        if all(all(slots) for slots in layout):
            layout = None
        before = list(runner.lengths)
        logits = runner.forward(feed, layout)
        accepted, next_token = self._verify(drafts, draft_lengths, proposal, width, logits, sampling, generator)
        # The one host sync of the step: decisions, next tokens, drafts and their lengths.
        decided = torch.cat([accepted.unsqueeze(1), next_token.unsqueeze(1), draft_lengths.unsqueeze(1),
                             raw.tokens.to(self.device) if raw is not None else drafts], dim=1).tolist()
        now = time.perf_counter()
        keep, drafts_host, step_tokens = [], [], 0
        for index, (r, on) in enumerate(zip(in_batch, live)):
            n_accepted, token, proposed, *row_drafts = decided[index]
            drafts_host.append(row_drafts)
            row_drafts = row_drafts[:width]
            if not on:
                keep.append(before[index])
                continue
            kept = rows[r].take(row_drafts[:n_accepted] + [token], now)
            step_tokens += kept
            rows[r].steps.record(proposed, n_accepted, kept)
            drafter.observe(index, proposed, n_accepted)
            # The cache keeps the fed last token and the accepted drafts.
            keep.append(before[index] + 1 + n_accepted)
        step_seconds = now - step_started - (self._capture_seconds(runner, drafter) - capture_before)
        if gated:
            drafter.observe_step(len(in_batch), sum(live), width > 0, step_tokens, step_seconds)
        runner.truncate(keep)
        if raw is not None:
            drafter.record_drafts(drafts_host)
        return next_token

    @staticmethod
    def _capture_seconds(runner, drafter) -> float:
        """CUDA-graph capture seconds so far (target and draft; host-side, no sync)."""
        return runner.clock.capture_seconds + (drafter.timer.capture_seconds if drafter.timer is not None else 0.0)

    def _host_lengths(self, proposal: Proposal | None, budgets: list[int]) -> list[int]:
        """Each row's draft count for laying out the target forward: exact when the drafter
        knows it on the host or the device is a CPU (reading it costs nothing there), else
        the budget (the verifier ignores drafts past a row's length)."""
        if proposal is None:
            return [0] * len(budgets)
        if proposal.host_lengths is not None:
            return list(proposal.host_lengths)
        if self.device.type != "cuda":
            return proposal.lengths.tolist()
        return [min(b, proposal.width) for b in budgets]

    def _choose(self, logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> torch.Tensor:
        """The next token of each row from logits [batch, vocab] (argmax, or a draw from the
        warped p), on the device."""
        if sampling.greedy:
            return logits.argmax(dim=-1)
        return sample_unnormalized(probabilities(logits, sampling), generator)

    def _verify(self, drafts, draft_lengths, proposal, width, logits, sampling, generator):
        if sampling.greedy:
            return verify_greedy_batch(drafts, draft_lengths, logits)
        draft_probs = proposal.probs[:, :width].to(logits.device) if proposal is not None and proposal.probs is not None else None
        return verify_sampling_batch(drafts, draft_lengths, draft_probs, probabilities(logits, sampling), generator)

    def _stats(self, row: _Row, config, seed, clock: ForwardClock, drafter, started, first_token_at) -> dict:
        t_target_1 = clock.mean_at_width(1)
        t_target = t_target_1 if t_target_1 is not None else clock.mean_decode_seconds
        t_draft = None
        if drafter is not None and drafter.timer is not None:
            t_draft = drafter.timer.mean_at_width(1) or drafter.mean_forward_seconds
        speculative = drafter is not None
        return {
            "mode": "speculative" if speculative else "autoregressive",
            "drafter": drafter.name if speculative else None,
            "gamma": config.gamma if speculative else None,
            "greedy": config.sampling.greedy,
            "seed": seed,
            "prompt_tokens": len(row.prompt),
            "new_tokens": len(row.generated),
            "stop_reason": row.stopper.stop_reason,
            "target_forwards": clock.count,
            "draft_forwards": drafter.forwards if speculative else 0,
            **row.steps.summary(),
            "t_target": t_target,
            "t_target_by_width": {str(w): s for w, (_, s) in clock.by_width().items()},
            "t_draft": t_draft,
            "c": ratio(t_draft, t_target) if t_draft is not None else None,
            # c compares one draft forward with one width-1 target forward (metrics.md); a
            # speculative run rarely has those, and then uses its verification forwards.
            "c_basis": None if t_draft is None else ("width-1 target forward" if t_target_1 is not None
                                                     else "verification forward (wider than 1)"),
            # Where the time went (seconds): the rest of e2e_s is the loop itself (sampling,
            # verification, cache rollback, stop checks). Shared by every row of a batch.
            "target_prefill_s": clock.prefill_seconds,
            "target_decode_s": clock.decode_seconds,
            "draft_prefill_s": drafter.timer.prefill_seconds if speculative and drafter.timer else 0.0,
            "draft_decode_s": drafter.timer.decode_seconds if speculative and drafter.timer else 0.0,
            # What the draft gate did (shared by the batch): plain steps where drafting lost.
            "draft_gate": drafter.gate_report() if speculative and config.sampling.greedy else None,
            "graph_capture_s": clock.capture_seconds + (drafter.timer.capture_seconds if speculative and drafter.timer else 0.0),
            **latency_summary(started, first_token_at, row.finished_at, len(row.generated)),
        }


def context_limit(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length from its config, or None when it states none."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
