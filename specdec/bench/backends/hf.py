"""transformers' own generation as a reference peer: plain ``generate``, assisted generation
with a draft model (``assistant_model``) and prompt lookup (``prompt_lookup_num_tokens``).

Every report shows specdec's figures next to these, measured the same way (synchronized
clock around the call, same prompt ids, same sampling settings, same token budget), so a
user sees our numbers beside the library they already know.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from specdec.runners.devices import synchronized_clock
from specdec.engine.loop import GenerationConfig, GenerationResult
from specdec.models.loading import quiet_transformers
from specdec.engine.stats import ratio
from specdec.bench.backends.in_process import InProcessBackend
from specdec.bench.backends.native import native_ignored



def hf_generate(
    model: torch.nn.Module,
    tokenizer,
    prompt_ids: list[int],
    config: GenerationConfig,
    device: torch.device,
    eos_token_ids: set[int],
    assistant_model: torch.nn.Module | None = None,
    assistant_settings: dict | None = None,
    prompt_lookup_num_tokens: int | None = None,
    max_matching_ngram_size: int | None = None,
) -> GenerationResult:
    """Run ``model.generate`` once and return its text, new tokens and timing stats. (A little
    over a screen on purpose: one call of transformers' generate, set up and read back in order.)

    assistant_settings: fields set on the assistant's generation config for this call only
        (``num_assistant_tokens``, ``num_assistant_tokens_schedule``,
        ``assistant_confidence_threshold``); None keeps transformers' defaults.
    Only the figures transformers exposes are filled (new_tokens, e2e_s, tokens_per_s);
    acceptance counts and forwards are None rather than guessed.
    """
    sampling = config.sampling
    kwargs = dict(
        max_new_tokens=config.max_new_tokens,
        do_sample=not sampling.greedy,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_token_ids), 0),
        eos_token_id=None if config.ignore_eos else sorted(eos_token_ids),
    )
    if sampling.greedy:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    else:
        # top_k=0 disables transformers' top-k (its default is 50, which would warp p differently).
        kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    if config.stop_strings:
        kwargs.update(stop_strings=list(config.stop_strings), tokenizer=tokenizer)
    if prompt_lookup_num_tokens:
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
        if max_matching_ngram_size:
            kwargs["max_matching_ngram_size"] = max_matching_ngram_size
    if config.ignore_eos:
        kwargs["min_new_tokens"] = config.max_new_tokens
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    attention_mask = torch.ones_like(input_ids)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    with _assistant_settings(assistant_model, assistant_settings), quiet_transformers(), torch.inference_mode():
        started = synchronized_clock(device)
        output = model.generate(
            input_ids, attention_mask=attention_mask, assistant_model=assistant_model, **kwargs
        )
        finished = synchronized_clock(device)
    new_ids = output[0, len(prompt_ids) :].tolist()
    e2e = finished - started
    method = "hf_assisted" if assistant_model is not None else "hf_prompt_lookup" if prompt_lookup_num_tokens else "hf_generate"
    stats = {
        "mode": method,
        "drafter": None,
        "greedy": sampling.greedy,
        "seed": config.seed,
        "prompt_tokens": len(prompt_ids),
        "new_tokens": len(new_ids),
        "e2e_s": e2e,
        "tokens_per_s": ratio(len(new_ids), e2e),
    }
    return GenerationResult(text=tokenizer.decode(new_ids, skip_special_tokens=True), token_ids=new_ids, stats=stats)


@contextmanager
def _assistant_settings(assistant_model, settings: dict | None):
    """Apply ``settings`` to the assistant's generation config for one call, then restore it.

    transformers keeps the heuristic schedule's draft length on the assistant's config across
    calls; restoring it keeps every measured call starting from the same state.
    """
    if assistant_model is None:
        yield
        return
    saved = copy.deepcopy(assistant_model.generation_config)
    try:
        for name, value in (settings or {}).items():
            setattr(assistant_model.generation_config, name, value)
        yield
    finally:
        assistant_model.generation_config = saved


class HFBackend(InProcessBackend):
    """transformers' ``generate`` as a reference peer: plain, assisted, or prompt lookup."""

    def prepare(self) -> None:
        self.models.target
        if self.name == "hf_assisted":
            self.models.draft

    def generate_batch(self, prompts: list[list[int]], config: GenerationConfig) -> list[GenerationResult]:
        """transformers' assisted generation and prompt lookup are batch-1 only: rows run one
        after another (``ignored_options`` says so), each timed on its own."""
        return [self.generate(ids, config) for ids in prompts]

    def generate(self, prompt_ids, config: GenerationConfig) -> GenerationResult:
        m = self.models
        kwargs = {}
        if self.name == "hf_assisted":
            kwargs.update(assistant_model=m.draft.model, assistant_settings=self.assistant_settings(config.gamma))
        elif self.name == "hf_prompt_lookup":
            kwargs.update(prompt_lookup_num_tokens=config.gamma, max_matching_ngram_size=self.config.get("speculative.ngram_max"))
        return hf_generate(m.target.model, m.target.tokenizer, prompt_ids, config, m.device, m.engine.eos_token_ids, **kwargs)

    def assistant_settings(self, gamma: int) -> dict:
        """transformers' assistant settings that mirror specdec's draft schedule: constant means
        exactly gamma drafts (no confidence cut-off, which transformers applies by default);
        adaptive means its "heuristic" schedule with the same confidence threshold."""
        if self.config.get("speculative.draft_schedule") == "constant":
            return {"num_assistant_tokens": gamma, "num_assistant_tokens_schedule": "constant",
                    "assistant_confidence_threshold": 0.0}
        return {"num_assistant_tokens": gamma, "num_assistant_tokens_schedule": "heuristic",
                "assistant_confidence_threshold": self.config.get("speculative.confidence_threshold")}

    @classmethod
    def ignored_options(cls, spec, config) -> list[str]:
        ignored = native_ignored(config, batches=False)
        if spec.backend == "hf_prompt_lookup" and config.get("speculative.ngram_min") != 1:
            ignored.append("speculative.ngram_min (transformers' prompt lookup only takes a max n-gram size)")
        return ignored
