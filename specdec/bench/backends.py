"""Backends: every way of turning prompt ids into tokens behind one interface.

A backend has a ``name``, ``generate(prompt_ids, GenerationConfig) -> GenerationResult`` and
``ignored_options(config) -> list[str]`` (the options it cannot honour, reported, never
silently dropped). The harness never asks which backend it drives.

Native (specdec's engine): ``target`` (autoregressive baseline), ``speculative`` (draft model),
``ngram`` (prompt lookup). Reference peers (transformers' own generate): ``hf_generate``,
``hf_assisted`` (``assistant_model=``), ``hf_prompt_lookup`` (``prompt_lookup_num_tokens=``).
Serving engines (``engine.backend: openai`` or ``vllm``): the same ``target`` / ``speculative``
/ ``ngram`` methods name the engine without and with speculation; :class:`ServerBackend` stands
for them here, and ``specdec.bench.servers`` runs them (docs/serving.md).

A method is a backend plus overrides, written ``name`` or ``name:gamma=K`` (sweeps use that).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..devices import resolve_device
from ..drafters import DraftLengthPolicy, ModelDraft, NgramDraft
from ..engine import Engine, GenerationConfig, GenerationResult
from ..errors import UsageError
from ..placement import check_offload, input_device, layer_record, plan_placement
from ..models import LoadedModel, check_same_tokenizer, eos_token_ids, load_model, special_token_ids
from ..reference import hf_generate
from .servers.checks import (check_native_load, check_server_config, is_server_backend, native_ignored_server_keys,
                             server_ignored)


class Backend(Protocol):
    name: str

    def generate(self, prompt_ids: list[int], config: GenerationConfig) -> GenerationResult: ...

    def ignored_options(self, config) -> list[str]: ...


@dataclass(frozen=True)
class MethodSpec:
    """``label`` as the user wrote it, the ``backend`` name and its overrides (gamma)."""

    label: str
    backend: str
    gamma: int | None = None

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        name, _, options = text.partition(":")
        name = name.strip()
        if name in ("vllm", "openai", "sglang", "llama.cpp"):
            raise UsageError(f"method {name!r}: serving engines are not methods; set engine.backend: openai with "
                             f"engine.launch (vllm, sglang, llama.cpp) or engine.backend: vllm, and keep the methods "
                             "target, speculative, ngram (docs/serving.md)")
        if name not in BACKENDS:
            raise UsageError(f"unknown method {name!r}: use one of {', '.join(BACKENDS)} (optionally name:gamma=K)")
        gamma = None
        for option in filter(None, (o.strip() for o in options.split(","))):
            key, _, value = option.partition("=")
            if key != "gamma" or not value.isdigit() or int(value) < 1:
                raise UsageError(f"method {text!r}: the only option is gamma=K with K >= 1, e.g. speculative:gamma=4")
            gamma = int(value)
        if gamma is not None and not BACKENDS[name].drafts:
            raise UsageError(f"method {text!r}: {name} does not draft, so gamma does not apply")
        return cls(text.strip(), name, gamma)


class Models:
    """The models of one run, each loaded once and shared by every method."""

    def __init__(self, config, log=None) -> None:
        self.config = config
        self.log = log or (lambda message: None)
        self.device = resolve_device(config.get("engine.device"))
        self.placement = plan_placement(config.get("engine.gpu_strategy"), self.device,
                                        config.get("engine.target_gpu_ratio"), config.get("engine.drafter_gpu_ratio"))
        self.dtype_name = config.get("engine.dtype")
        self._target: LoadedModel | None = None
        self._draft: LoadedModel | None = None
        self._engine: Engine | None = None

    @property
    def target(self) -> LoadedModel:
        if self._target is None:
            where = self.placement.target
            self._target = load_model(self.config.get("model"), where.device, self.dtype_name, log=self.log,
                                      **where.load_kwargs())
            check_offload(self._target.model, "target")
            self.device = input_device(self._target.model)  # where the engine's inputs go
        return self._target

    @property
    def draft(self) -> LoadedModel:
        if self._draft is None:
            source = self.config.get("speculative.draft_model")
            if not source:
                raise UsageError("the speculative and hf_assisted methods need a draft model: "
                                 "set speculative.draft_model, DRAFTER_MODEL or --draft-model (or use ngram)")
            if source == self.config.get("model") and self.placement.draft == self.placement.target:
                self._draft = self.target  # same weights in the same place: share them
            else:
                where = self.placement.draft
                self._draft = load_model(source, where.device, self.dtype_name, log=self.log, **where.load_kwargs())
                check_offload(self._draft.model, "draft")
                check_same_tokenizer(self.target.tokenizer, self._draft.tokenizer, self.target.source, self._draft.source)
        return self._draft

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            t = self.target
            self._engine = Engine(t.model, t.tokenizer, self.device, self.eos_ids, prepack=self.config.get("engine.prepack"))
        return self._engine

    def cuda_indices(self) -> list[int]:
        """The CUDA devices the loaded models sit on (for measuring only their energy)."""
        indices = set()
        for loaded in (self._target, self._draft):
            if loaded is None:
                continue
            for parameter in loaded.model.parameters():
                if parameter.device.type == "cuda":
                    indices.add(parameter.device.index or 0)
        return sorted(indices) or [self.device.index or 0]

    def placement_record(self) -> dict:
        """Where each loaded model's layers went (for the run's record)."""
        record = {"strategy": self.placement.description}
        if self._target is not None:
            record["target"] = layer_record(self._target.model)
        if self._draft is not None and self._draft is not self._target:
            record["draft"] = layer_record(self._draft.model)
        return record

    @property
    def eos_ids(self) -> set[int]:
        return eos_token_ids(self.target.model, self.target.tokenizer)

    @property
    def keep_ids(self) -> set[int]:
        """Token ids a truncated draft head always scores: end-of-sequence and special tokens."""
        return special_token_ids(self.target.model, self.target.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.target.model.get_output_embeddings().weight.shape[0]


def _native_ignored(config, batches: bool = True) -> list[str]:
    """Serving options the native engine cannot honour (set to non-defaults). ``batches``:
    whether the backend decodes batches (specdec's engine does; transformers' assisted
    generation is batch-1 only)."""
    ignored = []
    checks = {
        "engine.tensor_parallel_size": lambda v: v != 1,
        "engine.gpu_memory_utilization": lambda v: v is not None,
    }
    for key, is_set in checks.items():
        if is_set(config.get(key)):
            ignored.append(f"{key}={config.get(key)} (the native engine runs on one device)")
    if config.get("engine.gpu_strategy") != "multi_gpu_ratio":
        for key in ("engine.target_gpu_ratio", "engine.drafter_gpu_ratio"):
            if config.get(key) != 1:
                ignored.append(f"{key}={config.get(key)} (applies to gpu_strategy multi_gpu_ratio only)")
    for entry in config.get("speculative.unsupported") or []:
        ignored.append(f"speculative_config {entry} (the native drafters are a draft model and n-gram lookup)")
    if not batches and batch_size(config) > 1:
        ignored.append(f"engine.batch_size={batch_size(config)} (transformers' generate runs the rows one at a time)")
    return ignored + native_ignored_server_keys(config)


def batch_size(config) -> int:
    """Rows decoded together: ``engine.batch_size`` (S4's BATCH_SIZE), unless ``engine.enable_batch``
    (ENABLE_BATCH) was explicitly switched off."""
    if config.explicit.get("engine.enable_batch") and not config.get("engine.enable_batch"):
        return 1
    return max(1, config.get("engine.batch_size") or 1)


class NativeBackend:
    """specdec's engine, with no drafter (``target``), a draft model, or n-gram lookup."""

    def __init__(self, name: str, models: Models, config) -> None:
        self.name = name
        self.models = models
        self.config = config
        self._drafter = None

    @property
    def drafter(self):
        if self.name == "target":
            return None
        if self._drafter is None:
            if self.uses_ngram:
                self._drafter = NgramDraft(self.config.get("speculative.ngram_max"), self.config.get("speculative.ngram_min"),
                                           match=self.config.get("speculative.ngram_match"))
            else:
                policy = DraftLengthPolicy(self.config.get("speculative.draft_schedule"),
                                           self.config.get("speculative.confidence_threshold"),
                                           gate=self.config.get("speculative.draft_gate"))
                self._drafter = ModelDraft(
                    self.models.draft.model, self.models.vocab_size, policy,
                    prepack=self.config.get("engine.prepack"), draft_vocab=self.config.get("speculative.draft_vocab"),
                    keep_ids=self.models.keep_ids,
                )
        return self._drafter

    @property
    def uses_ngram(self) -> bool:
        return self.name == "ngram" or (self.name == "speculative" and self.config.get("speculative.method") == "ngram")

    def prepare(self) -> None:
        """Load what this backend needs (models load before the first timed request)."""
        self.models.engine
        self.drafter

    def generate(self, prompt_ids, config: GenerationConfig) -> GenerationResult:
        return self.models.engine.generate(prompt_ids, config, self.drafter)

    def generate_batch(self, prompts: list[list[int]], config: GenerationConfig) -> list[GenerationResult]:
        """Every prompt of ``prompts`` decoded together as one batch (ragged rows)."""
        return self.models.engine.generate_batch(prompts, config, self.drafter)

    def ignored_options(self, config) -> list[str]:
        ignored = _native_ignored(config)
        if self.uses_ngram and config.get("speculative.draft_schedule") == "adaptive":
            ignored.append("speculative.draft_schedule=adaptive (n-gram drafting proposes a constant length)")
        return ignored


class HFBackend:
    """transformers' ``generate`` as a reference peer: plain, assisted, or prompt lookup."""

    def __init__(self, name: str, models: Models, config) -> None:
        self.name = name
        self.models = models
        self.config = config

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

    def ignored_options(self, config) -> list[str]:
        ignored = _native_ignored(config, batches=False)
        if self.name == "hf_prompt_lookup" and config.get("speculative.ngram_min") != 1:
            ignored.append("speculative.ngram_min (transformers' prompt lookup only takes a max n-gram size)")
        return ignored


@dataclass(frozen=True)
class BackendInfo:
    factory: type
    drafts: bool
    needs_draft_model: bool


BACKENDS: dict[str, BackendInfo] = {
    "target": BackendInfo(NativeBackend, False, False),
    "speculative": BackendInfo(NativeBackend, True, True),
    "ngram": BackendInfo(NativeBackend, True, False),
    "hf_generate": BackendInfo(HFBackend, False, False),
    "hf_assisted": BackendInfo(HFBackend, True, True),
    "hf_prompt_lookup": BackendInfo(HFBackend, True, False),
}

class ServerBackend:
    """A method of a server run (``engine.backend`` openai / vllm). The engine runs in another
    process (or in vLLM), driven by ``specdec.bench.servers.run`` with text and open-loop load,
    so there is no per-token-id ``generate`` here; this object reports the ignored options."""

    def __init__(self, spec: MethodSpec, config) -> None:
        self.name = spec.backend
        self.spec = spec
        self.config = config

    def prepare(self) -> None:
        pass

    def generate(self, prompt_ids, config: GenerationConfig) -> GenerationResult:
        raise UsageError("server backends are driven by specdec.bench.servers (text in, streamed text out)")

    def ignored_options(self, config) -> list[str]:
        return server_ignored(config, self.spec)


def make_backend(spec: MethodSpec, models: Models, config):
    if is_server_backend(config):
        return ServerBackend(spec, config)
    info = BACKENDS[spec.backend]
    return info.factory(spec.backend, models, config)


def generation_config(config, spec: MethodSpec, seed: int | None) -> GenerationConfig:
    """The per-request GenerationConfig of ``spec`` (same budget and sampling for every method)."""
    from ..sampling import SamplingParams

    sampling = SamplingParams(temperature=config.get("generation.temperature"), top_k=config.get("generation.top_k"),
                              top_p=config.get("generation.top_p"))
    return GenerationConfig(
        max_new_tokens=config.get("generation.max_tokens"),
        sampling=sampling,
        gamma=spec.gamma or config.get("speculative.num_speculative_tokens"),
        seed=seed,
        stop_strings=tuple(config.get("generation.stop_strings")),
        ignore_eos=config.get("generation.ignore_eos"),
    )


def check_methods(config) -> list[MethodSpec]:
    """Parse and check the configured methods before anything loads."""
    specs = [MethodSpec.parse(m) for m in config.methods]
    if not specs:
        raise UsageError("no methods to run: set run.methods (e.g. target,speculative) or --methods")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"a method is listed twice in {', '.join(labels)}")
    if is_server_backend(config):
        check_server_config(config, specs)
        return specs
    check_native_load(config)
    for spec in specs:
        needs = BACKENDS[spec.backend].needs_draft_model and not (
            spec.backend == "speculative" and config.get("speculative.method") == "ngram")
        if needs and not config.get("speculative.draft_model"):
            raise UsageError(f"method {spec.label} needs a draft model: set speculative.draft_model, DRAFTER_MODEL or "
                             "--draft-model, or use the ngram method")
    return specs
