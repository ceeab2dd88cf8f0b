"""The models of one run that live in this process (the native and transformers backends):
each loaded once, on first use, and shared by every method; also where their inputs go."""

from __future__ import annotations

from specdec.errors import UsageError
from specdec.models.loading import LoadedModel, check_same_tokenizer, eos_token_ids, load_model, special_token_ids
from specdec.models.placement import check_offload, input_device, layer_record, plan_placement
from specdec.engine.loop import Engine
from specdec.runners.devices import resolve_device
from specdec.runners.quantize import check_mode, quantization_of, quantize_model
from specdec.runners.threads import busy_warning, configure_threads


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
            self._quantize(self._target, self.config.get("target.quantize"), self.config.get("target.quantize_group"))
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
                mode = self.config.get("speculative.quantize") or self.config.get("target.quantize")
                group = self.config.get("speculative.quantize_group") or self.config.get("target.quantize_group")
                self._quantize(self._draft, mode, group)
                check_same_tokenizer(self.target.tokenizer, self._draft.tokenizer, self.target.source, self._draft.source)
        return self._draft

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            t = self.target
            self._engine = Engine(t.model, t.tokenizer, self.device, self.eos_ids, prepack=self.config.get("engine.prepack"))
        return self._engine

    def _quantize(self, loaded: LoadedModel, mode: str | None, group_size: int | None) -> None:
        """Quantizes a loaded model in place when ``mode`` is int8 / int4 (CPU only); a .gguf
        keeps its exact Q4 tensors. The report stays on the model (:func:`quantization_of`)."""
        mode, group_size = check_mode(mode, group_size)
        if mode is None:
            return
        if self.device.type != "cpu":
            raise UsageError(f"model.quantize / speculative.quantize {mode} run on the CPU kernels only; "
                             f"set engine.device cpu (got {self.device})")
        gguf = loaded.source if loaded.source.lower().endswith(".gguf") else None
        quantize_model(loaded.model, mode, group_size, gguf_path=gguf, log=lambda m: self.log(f"{loaded.source}: {m}"))

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
        record["quantization"] = {
            role: (report.as_dict() if report else None)
            for role, loaded in (("target", self._target), ("draft", self._draft)) if loaded is not None
            for report in (quantization_of(loaded.model),)
        }
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

    def configure_threads(self, log) -> None:
        """Threads for this process's engines, once per run, with a line saying how many and
        a warning when other processes make timings unreliable."""
        if getattr(self, "_threads_configured", False):
            return
        self._threads_configured = True
        for line in filter(None, (configure_threads(self.device),
                                  busy_warning() if self.device.type == "cpu" else None)):
            log(line)


def batch_size(config) -> int:
    """Rows decoded together: ``engine.batch_size`` (S4's BATCH_SIZE), unless ``engine.enable_batch``
    (ENABLE_BATCH) was explicitly switched off."""
    if config.explicit.get("engine.enable_batch") and not config.get("engine.enable_batch"):
        return 1
    return max(1, config.get("engine.batch_size") or 1)
