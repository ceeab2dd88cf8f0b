"""Loading target and draft models: hub ids, local folders, ``.gguf`` files, or models already
in memory; dtype and device placement; the shared-tokenizer check; offline errors."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from specdec.runners.cpu_features import has_native_bf16
from specdec.errors import UsageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to generate.

    model: the causal LM, on its device, in eval mode.
    tokenizer: its tokenizer.
    source: what the user named (id, folder, file) or "<in-memory model>".
    load_seconds: wall time of the load (0 for a model passed in).
    note: what happened on the way that the user should know (e.g. GGUF dequantization).
    """

    model: torch.nn.Module
    tokenizer: object
    source: str
    load_seconds: float = 0.0
    note: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The torch dtype for a user's dtype name.

    ``auto`` picks bfloat16 on CUDA with bf16 support, float16 on other GPUs; on CPU, bfloat16
    where the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), else float32.
    Why bf16 on such CPUs (benchmarks/forward_costs.py, the 1.5B Qwen target, 2 threads): on a
    Xeon with AMX, a decode forward takes 175 ms in bf16 with prepacked weights against 215 ms
    in fp32, and a 5-token verification forward 175 ms against 455 ms; on an AMD EPYC with
    AVX512-BF16, 325 ms against 438 ms and 326 ms against 1070 ms. fp32's small-batch matrix
    products cost several times its single-token ones, which eats the gain of speculation.
    """
    if isinstance(name, torch.dtype):
        return name
    text = (name or "auto").lower()
    if text in DTYPES:
        return DTYPES[text]
    if text in ("fp32", "fp16", "bf16"):
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[text]
    if text != "auto":
        raise UsageError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles); see
    :mod:`specdec.runners.cpu_features` (``SPECDEC_CPU_BF16=0|1`` overrides)."""
    return has_native_bf16()


def load_model(source, device: torch.device, dtype="auto", tokenizer=None, log=None, **placement) -> LoadedModel:
    """Load ``source`` (hub id, local folder, ``.gguf`` file, or a transformers model object).

    A model object is used as it is (moved to ``device`` only if it is elsewhere); pass its
    ``tokenizer``. ``placement``: accelerate's ``device_map`` / ``max_memory`` for a model
    spread over several GPUs (see :mod:`specdec.models.placement`); the model then stays where they put it. Errors the user can fix (missing path, offline hub, bad dtype) raise
    :class:`UsageError` with one line naming the fix.
    """
    log = log or (lambda message: None)
    if isinstance(source, torch.nn.Module):
        if tokenizer is None:
            raise UsageError("a model object was passed without its tokenizer: pass tokenizer=...")
        model = source
        if next(model.parameters()).device != device:
            model = model.to(device)
        return LoadedModel(model.eval(), tokenizer, "<in-memory model>")
    if not isinstance(source, (str, os.PathLike)):
        raise UsageError(f"a model must be a hub id, a folder, a .gguf file or a loaded model, got {type(source).__name__}")
    torch_dtype = resolve_dtype(dtype, device)
    text = os.fspath(source)
    path = Path(text).expanduser()
    started = time.perf_counter()
    note = None
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise UsageError(f"no such GGUF file: {text}")
        log(f"loading {path.name}: transformers dequantizes GGUF weights to {_dtype_name(torch_dtype)}, this takes a while ...")
        model, tok = _from_pretrained(str(path.parent), torch_dtype, tokenizer, gguf_file=path.name, **placement)
        note = f"dequantized GGUF {path.name} to {_dtype_name(torch_dtype)} in {time.perf_counter() - started:.1f} s"
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{text} is a folder but has no config.json: point at a Hugging Face model folder")
        model, tok = _from_pretrained(str(path), torch_dtype, tokenizer, **placement)
    elif _looks_like_path(text):
        raise UsageError(f"no such model folder or file: {text}")
    else:
        model, tok = _from_hub(text, torch_dtype, tokenizer)
    model = (model if placement.get("device_map") else model.to(device)).eval()
    seconds = time.perf_counter() - started
    if note:
        log(note)
    return LoadedModel(model, tok, text, seconds, note)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or os.sep in text and text.count("/") != 1 or text.endswith((".safetensors", ".bin", ".pt"))


@contextmanager
def quiet_transformers():
    """Keep transformers' own chatter (progress bars, notes, deprecation warnings) off the
    console while loading or running a measured call; our tables are the output."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _from_pretrained(location: str, dtype: torch.dtype, tokenizer, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tokenizer_kwargs = {k: v for k, v in kwargs.items() if k == "gguf_file"}
        tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(location, **tokenizer_kwargs)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    return model, tok


def _from_hub(model_id: str, dtype: torch.dtype, tokenizer):
    """Load from the local hub cache, else from the hub; an unreachable hub or an unknown id is
    one clear line, at once (no minute of connection retries)."""
    try:
        return _from_pretrained(model_id, dtype, tokenizer, local_files_only=True)
    except (OSError, ValueError):
        pass  # not cached: ask the hub, if there is one
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    hint = "pass a local folder or .gguf file instead, e.g. --big_model ../shared/models/stories260K"
    if offline:
        raise UsageError(f"cannot load model {model_id!r}: it is not in the local cache and the model hub is "
                         f"switched off (HF_HUB_OFFLINE); {hint}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not _reachable(endpoint):
        raise UsageError(f"cannot load model {model_id!r}: it is not in the local cache and the model hub "
                         f"({endpoint}) cannot be reached: this machine looks offline; {hint}")
    try:
        return _from_pretrained(model_id, dtype, tokenizer)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load model {model_id!r} from the hub: the id looks wrong or the model is "
                         f"gated ({str(error).splitlines()[0][:160]}); check the id, or {hint}") from error


def _reachable(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout_s`` seconds."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_same_tokenizer(target_tokenizer, draft_tokenizer, target_name: str = "target", draft_name: str = "draft") -> None:
    """Refuse a draft whose tokenizer differs from the target's (same vocabulary, same ids).

    Speculative decoding compares token ids, so a draft that spells tokens differently would
    be verified against the wrong tokens. The error names the first differences.
    """
    if target_tokenizer is draft_tokenizer:
        return
    target_vocab = target_tokenizer.get_vocab()
    draft_vocab = draft_tokenizer.get_vocab()
    if target_vocab == draft_vocab:
        return
    differences = []
    if len(target_vocab) != len(draft_vocab):
        differences.append(f"vocabulary sizes {len(target_vocab)} (target) vs {len(draft_vocab)} (draft)")
    examples = []
    for token, token_id in target_vocab.items():
        other = draft_vocab.get(token)
        if other != token_id:
            examples.append(f"{token!r} is id {token_id} in the target, {'absent' if other is None else f'id {other}'} in the draft")
            if len(examples) == 2:
                break
    if not examples:
        extra = next(iter(set(draft_vocab) - set(target_vocab)))
        examples.append(f"{extra!r} exists only in the draft")
    differences.extend(examples)
    raise UsageError(
        f"draft {draft_name} and target {target_name} do not share a tokenizer ({'; '.join(differences)}); "
        "pick a draft of the same model family, or use --drafter ngram, which needs no draft model"
    )


def special_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """End-of-sequence ids plus the tokenizer's special tokens: the ids a truncated draft head
    always scores (specdec.runners.draft_head)."""
    return eos_token_ids(model, tokenizer) | set(getattr(tokenizer, "all_special_ids", None) or ())


def eos_token_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """End-of-sequence ids from the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    sources = (getattr(model, "generation_config", None), model.config, tokenizer)
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple, set)) else [value])
    return {int(i) for i in ids}
