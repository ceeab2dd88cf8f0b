"""The Python API.

    from specdec.main import SpeculativeDecoder
    decoder = SpeculativeDecoder(approx_model_name="Qwen/Qwen2.5-Coder-0.5B-Instruct",
                                 target_model_name="Qwen/Qwen2.5-Coder-1.5B-Instruct",
                                 gamma=4, max_tokens=20, device="cuda")
    output = decoder.speculative_sample("Tell me a fun fact about space.")

Models load once, in the constructor; every call reuses them.
"""

from __future__ import annotations

from specdec.runners.devices import resolve_device
from specdec.runners.draft_head import DEFAULT_DRAFT_VOCAB
from specdec.engine.drafters import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    DEFAULT_DRAFT_SCHEDULE,
    DraftLengthPolicy,
    Drafter,
    ModelDraft,
    NgramDraft,
)
from specdec.engine.loop import Engine, GenerationConfig, GenerationResult
from specdec.errors import UsageError
from specdec.models.loading import LoadedModel, check_same_tokenizer, eos_token_ids, load_model, special_token_ids
from specdec.engine.sampling import SamplingParams
from specdec.engine.stopping import normalize_stop_strings
from specdec.runners.quantize import check_mode, quantize_model

DRAFTERS = ("model", "ngram")


class SpeculativeDecoder:
    """A target model and a drafter, loaded once, that generate text speculatively or not.

    approx_model_name: the draft model (hub id, folder, .gguf file, or a loaded model);
        not needed with ``drafter="ngram"``.
    target_model_name: the target model, in the same forms.
    gamma: draft tokens per verification step (>= 1); with the default adaptive schedule, the
        length of the first step, after which it follows acceptance (1 to 16).
    max_tokens: new tokens per generation (>= 1).
    device: cpu, cuda, cuda:N, mps or auto; CUDA asked for on a machine without it warns once
        and runs on CPU.
    temperature: 0 means greedy; top_k (0 or None = off) and top_p (1.0 or None = off) warp target and draft
        identically.
    seed: seeds each generation once (same prompt, same output); None draws afresh each call.
    dtype: auto, float32, bfloat16 or float16.
    drafter: "model" (the draft model) or "ngram" (prompt lookup, no draft model).
    draft_schedule: "adaptive" (default: +2 after a fully accepted step, -1 after a rejection,
        and the draft stops when its probability of its own token drops below
        ``confidence_threshold``) or "constant" (always gamma).
    draft_gate: with the adaptive schedule and greedy decoding, drop the draft length to 0
        (plain decode steps) while drafting steps yield fewer tokens per second than plain
        ones, and retry later (:mod:`specdec.engine.draft_gate`); False keeps at least 1 draft a step.
    ngram_max / ngram_min / ngram_match: n-gram sizes prompt lookup tries, and which earlier
        occurrence it continues from ("earliest", the default, or "latest").
    tokenizer / draft_tokenizer: needed when passing model objects instead of names.
    stop_strings: generation stops when the text contains one of these.
    prepack: on CPU in bf16/fp16, decode on a copy of each model whose linear weights are
        prepacked for oneDNN, used only where bit-identical to the plain layers (19-36% faster
        forwards on the README's machine; costs the linear weights' memory once more).
        ``prepack_notes`` says what was done.
    draft_vocab: with a vocabulary over twice this size (Qwen's 152k), the draft model scores
        only this many frequent token ids plus the prompt's and the special tokens (FR-Spec;
        lossless, the target still verifies against its whole vocabulary); 0 scores all.
    quantize: None (default: the weights as loaded, exact), "int8" or "int4" (weight-only,
        float activations), "w8a8" or "w4a8" (the same weights, int8 activations: integer dot
        products, the fastest): quantization of target and draft onto specdec's batch-invariant
        CPU kernels (:mod:`specdec.runners.quantize`; CPU only; a .gguf keeps its Q4_0 / Q4_1 /
        Q4_K tensors as they are). Greedy speculative output is then token-for-token the quantized
        target's own greedy output. ``quantization`` reports what was done per model.
    quantize_group: inputs per 4-bit group (int4: even; w4a8: a multiple of 8; default 128).
    """

    def __init__(
        self,
        approx_model_name=None,
        target_model_name=None,
        gamma: int = 4,
        max_tokens: int = 50,
        device: str = "auto",
        temperature: float = 1.0,
        top_k: int | None = 0,
        top_p: float | None = 1.0,
        seed: int | None = None,
        dtype: str = "auto",
        drafter: str = "model",
        draft_schedule: str = DEFAULT_DRAFT_SCHEDULE,
        confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
        draft_gate: bool = True,
        ngram_max: int = 3,
        ngram_min: int = 1,
        ngram_match: str = "earliest",
        tokenizer=None,
        draft_tokenizer=None,
        stop_strings=(),
        prepack: bool = True,
        draft_vocab: int = DEFAULT_DRAFT_VOCAB,
        quantize: str | None = None,
        quantize_group: int | None = None,
        log=None,
    ) -> None:
        if target_model_name is None:
            raise UsageError("no target model: pass target_model_name (a hub id, folder, .gguf file or model)")
        if drafter not in DRAFTERS:
            raise UsageError(f"unknown drafter {drafter!r}: use one of {', '.join(DRAFTERS)}")
        if drafter == "model" and approx_model_name is None:
            raise UsageError("drafter='model' needs approx_model_name (the draft model), or use drafter='ngram'")
        self.config = GenerationConfig(
            max_new_tokens=max_tokens,
            sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p),
            gamma=gamma,
            seed=seed,
            stop_strings=normalize_stop_strings(stop_strings),
        )
        self.config.validate()
        quantize, quantize_group = check_mode(quantize, quantize_group)
        self.device = resolve_device(device)
        if quantize and self.device.type != "cpu":
            raise UsageError(f"quantize={quantize!r} runs on the CPU kernels only; use device='cpu' (got {self.device})")
        self.quantization: dict[str, dict] = {}
        self.target: LoadedModel = load_model(target_model_name, self.device, dtype, tokenizer, log)
        if quantize:
            self.quantization["target"] = _quantize(self.target, quantize, quantize_group, log)
        eos_ids = eos_token_ids(self.target.model, self.target.tokenizer)
        self.engine = Engine(self.target.model, self.target.tokenizer, self.device, eos_ids, prepack=prepack)
        self.prepack_notes = [f"target: {self.engine.pack_report.note}"]
        self.draft: LoadedModel | None = None
        self.drafter: Drafter
        self.draft_schedule = draft_schedule if drafter == "model" else "constant"
        if drafter == "model":
            self._load_draft(approx_model_name, dtype, draft_tokenizer or tokenizer, quantize, quantize_group, log)
            policy = DraftLengthPolicy(draft_schedule, confidence_threshold, gate=draft_gate)
            keep_ids = special_token_ids(self.target.model, self.target.tokenizer)
            self.drafter = ModelDraft(
                self.draft.model, self.engine.vocab_size, policy, prepack=prepack, draft_vocab=draft_vocab, keep_ids=keep_ids
            )
            self.prepack_notes.append(f"draft: {self.drafter.pack_report.note}")
        else:
            self.drafter = NgramDraft(max_ngram=ngram_max, min_ngram=ngram_min, match=ngram_match)

    def _load_draft(self, source, dtype, tokenizer, quantize: str | None, quantize_group: int | None, log) -> None:
        """The draft model, checked against the target's tokenizer, quantized like the target."""
        self.draft = load_model(source, self.device, dtype, tokenizer, log)
        check_same_tokenizer(self.target.tokenizer, self.draft.tokenizer, self.target.source, self.draft.source)
        if quantize:
            self.quantization["draft"] = _quantize(self.draft, quantize, quantize_group, log)

    @property
    def tokenizer(self):
        """The target's tokenizer (shared with the draft)."""
        return self.target.tokenizer

    def encode(self, text: str, chat: bool = False) -> list[int]:
        """Token ids of ``text``; with ``chat`` the tokenizer's chat template wraps it as a
        user turn (when the tokenizer has one)."""
        tokenizer = self.target.tokenizer
        if chat and getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return tokenizer(text)["input_ids"]

    def generate(self, text: str, speculative: bool = True, chat: bool = False, **overrides) -> GenerationResult:
        """Generate from ``text``; returns text, new token ids and the statistics.

        ``overrides`` replace fields of the decoder's generation settings for this call only
        (max_new_tokens, gamma, seed, stop_strings, ignore_eos, sampling).
        """
        config = self._config_with(overrides)
        prompt_ids = self.encode(text, chat=chat)
        return self.engine.generate(prompt_ids, config, self.drafter if speculative else None)

    def generate_batch(self, texts: list[str], speculative: bool = True, chat: bool = False,
                       **overrides) -> list[GenerationResult]:
        """Generate from every text of ``texts`` together, as one batch (left-padded; each row
        accepts its own number of drafts); one result per text, in order. Greedy rows are the
        same tokens as :meth:`generate` of that text alone (exactly so in float32)."""
        config = self._config_with(overrides)
        prompts = [self.encode(text, chat=chat) for text in texts]
        return self.engine.generate_batch(prompts, config, self.drafter if speculative else None)

    def speculative_sample(self, text: str, **overrides) -> str:
        """Speculative decoding of ``text``; returns the generated text."""
        return self.generate(text, speculative=True, **overrides).text

    def autoregressive_sample(self, text: str, **overrides) -> str:
        """The baseline: ordinary KV-cached decoding with the target alone; returns the text."""
        return self.generate(text, speculative=False, **overrides).text

    def _config_with(self, overrides: dict) -> GenerationConfig:
        if not overrides:
            return self.config
        from dataclasses import replace

        unknown = set(overrides) - set(GenerationConfig.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
        return replace(self.config, **overrides)


def _quantize(loaded: LoadedModel, mode: str, group_size: int | None, log) -> dict:
    """Quantizes a loaded model in place (a .gguf keeps its exact Q4 tensors); the report as a dict."""
    gguf = loaded.source if loaded.source.lower().endswith(".gguf") else None
    named = (lambda message: log(f"{loaded.source}: {message}")) if log else None
    return quantize_model(loaded.model, mode, group_size, gguf_path=gguf, log=named).as_dict()
