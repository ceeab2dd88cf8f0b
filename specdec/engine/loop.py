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

import torch

from specdec.engine.assemble import results
from specdec.engine.drafters import Drafter
from specdec.engine.request import GenerationConfig, GenerationResult
from specdec.engine.rows import Row
from specdec.engine.sampling import make_generator
from specdec.engine.step import Stepper
from specdec.engine.stopping import StopChecker
from specdec.errors import ContextOverflow, UsageError
from specdec.runners import ForwardClock, ModelRunner
from specdec.runners.devices import synchronize
from specdec.runners.prepack import decode_model


#: Largest draft window a step may use (the adaptive schedule's ceiling), for sizing caches.
MAX_DRAFT_WINDOW = 16
#: Autoregressive tokens between host syncs on CUDA (stop checks happen there).
CUDA_SYNC_EVERY = 8


class Engine:
    """Generates with a target model, with or without a drafter, one prompt or a batch.

    target: a transformers causal LM already on ``device`` and in eval mode.
    tokenizer: the target's tokenizer (for stop strings and the returned text).
    eos_token_ids: ids that end a generation.
    prepack: run decode forwards on a copy of the target with its linear weights prepacked
        for oneDNN where that gives bit-identical results (CPU, bf16/fp16; see
        :mod:`specdec.runners.prepack`); ``pack_report`` says what was done.
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
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        eos_ids = set() if config.ignore_eos else self.eos_token_ids
        rows = [Row(list(p), StopChecker(self.tokenizer, config.max_new_tokens, eos_ids, config.stop_strings))
                for p in prompts]
        clock = ForwardClock(self.device)
        stepper = Stepper(self.runner, drafter, rows, config, make_generator(self.device, seed), self.device,
                          self.sync_every)
        # Static caches hold the prompt, every new token and one draft window; a batch also
        # leaves holes, which the runner compacts away when the cache fills.
        window = MAX_DRAFT_WINDOW + 1 if drafter is not None else 1
        extra_slots = config.max_new_tokens + window * (1 if len(prompts) == 1 else 2)
        if drafter is not None:
            drafter.reset(self.device, len(prompts), extra_slots=extra_slots)

        synchronize(self.device)
        started = time.perf_counter()
        first = stepper.choose(self.runner.start([r.prompt for r in rows], extra_slots, clock=clock))
        first_tokens = first.tolist()
        first_token_at = time.perf_counter()
        for row, token in zip(rows, first_tokens):
            row.context = list(row.prompt)
            row.take([token], first_token_at)
        self._decode(stepper, first)
        return results(rows, self.tokenizer, config, seed, clock, drafter, started, first_token_at)

    def _decode(self, stepper: Stepper, last: torch.Tensor) -> None:
        """Steps until every row has stopped; finished rows leave the batch (dynamic cache)."""
        rows, drafter, runner = stepper.rows, stepper.drafter, self.runner
        in_batch = list(range(len(rows)))  # runner row -> request index
        while not all(rows[r].finished for r in in_batch):
            last = stepper.step(in_batch, last)
            if self.cache_kind != "static" and any(rows[r].finished for r in in_batch):
                keep = [i for i, r in enumerate(in_batch) if not rows[r].finished]
                if keep:
                    runner.select_rows(keep)
                    if drafter is not None:
                        drafter.select_rows(keep)
                    last = last[torch.tensor(keep, device=last.device)]
                in_batch = [in_batch[i] for i in keep]


def context_limit(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length from its config, or None when it states none."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
