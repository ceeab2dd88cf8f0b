"""The benchmark configuration: one typed, validated object built from defaults, then a config
file (YAML or JSON), then environment variables, then command-line flags (later wins).

Every key has a dotted name (``generation.max_tokens``); files use the nested form, ``--set``
flags and the resolved ``config.yaml`` use the same names. Unknown keys and bad values are a
:class:`UsageError` naming the key, the file and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specdec.runners.draft_head import DEFAULT_DRAFT_VOCAB
from specdec.engine.drafters import DEFAULT_CONFIDENCE_THRESHOLD, DEFAULT_DRAFT_SCHEDULE
from specdec.errors import UsageError

# dotted key -> (type, default, help). type is one of: str, int, float, bool, "list".
FIELDS: dict[str, tuple[Any, Any, str]] = {
    "model": (str, None, "target model: hub id, local folder or .gguf file"),
    "generation.max_tokens": (int, 128, "new tokens per request (max_new_tokens)"),
    "generation.temperature": (float, 0.0, "0 = greedy (enables the lossless identity check)"),
    "generation.top_p": (float, 1.0, "nucleus sampling (1.0 = off)"),
    "generation.top_k": (int, 0, "top-k sampling (0 = off)"),
    "generation.seed": (int, 0, "base seed; each prompt gets seed + a stable per-prompt offset, the same for every method"),
    "generation.ignore_eos": (bool, False, "generate exactly max_tokens tokens (fixed-length comparisons)"),
    "generation.stop_strings": ("list", [], "stop when the text contains one of these"),
    "speculative.method": (str, "model", "drafting of the 'speculative' method: model or ngram"),
    "speculative.draft_model": (str, None, "draft model (hub id, folder, .gguf) sharing the target's tokenizer"),
    "speculative.num_speculative_tokens": (int, 4, "gamma: draft tokens per verification step"),
    "speculative.ngram_max": (int, 3, "largest n-gram matched by n-gram drafting"),
    "speculative.ngram_min": (int, 1, "smallest n-gram matched by n-gram drafting"),
    "speculative.ngram_match": (str, "earliest", "n-gram drafting continues from the earliest or latest match"),
    "speculative.draft_schedule": (str, DEFAULT_DRAFT_SCHEDULE, "adaptive (default) or constant draft length"),
    "speculative.confidence_threshold": (float, DEFAULT_CONFIDENCE_THRESHOLD, "adaptive schedule: stop drafting below this draft probability"),
    "speculative.draft_gate": (bool, True, "adaptive schedule, greedy: draft length 0 while drafting steps are slower per token than plain ones"),
    "speculative.unsupported": ("list", [], "speculative_config entries (S3 shape) the native drafters cannot honour; reported"),
    "speculative.draft_vocab": (int, DEFAULT_DRAFT_VOCAB, "draft scores only this many frequent ids (+ prompt's) when the vocabulary is over twice as large; 0 = all"),
    "target.quantize": (str, None, "CPU: target weights on specdec's batch-invariant kernels: int8 / int4 weight-only, w8a8 / w4a8 with int8 activations (a .gguf keeps its Q4 tensors); unset = as loaded"),
    "target.quantize_group": (int, 128, "inputs per 4-bit group of the target (int4: even; w4a8: a multiple of 8)"),
    "speculative.quantize": (str, None, "the draft's quantization: int8, int4, w8a8, w4a8 or none; unset = the same as model.quantize"),
    "speculative.quantize_group": (int, None, "inputs per 4-bit group of the draft; unset = model.quantize_group"),
    "engine.prepack": (bool, True, "CPU bf16/fp16: decode on oneDNN-prepacked weights where bit-identical"),
    "engine.backend": (str, "native", "native (specdec + transformers), openai (a server: docs/serving.md) or vllm (vllm.LLM in this process)"),
    "engine.device": (str, "auto", "auto, cpu, cuda, cuda:N, mps"),
    "engine.dtype": (str, "auto", "auto, float32, bfloat16, float16"),
    "engine.tensor_parallel_size": (int, 1, "vLLM-style option; the native backends run on one device"),
    "engine.gpu_memory_utilization": (float, None, "vLLM-style option; ignored by the native backends"),
    "engine.enable_batch": (bool, False, "ENABLE_BATCH: set false to force batch size 1 whatever BATCH_SIZE says"),
    "engine.batch_size": (int, 1, "rows decoded together (BATCH_SIZE); --batch-sizes 1,4,16 sweeps it"),
    "engine.max_batch_length": (int, None, "MAX_BATCH_LENGTH: prompt + new tokens per row; longer prompts are left out (named)"),
    "engine.gpu_strategy": (str, "same", "same, separate, multi_gpu_ratio or auto: where target and draft go (specdec.models.placement)"),
    "engine.target_gpu_ratio": (int, 1, "multi_gpu_ratio: GPUs the target's layers spread over (the first ones)"),
    "engine.drafter_gpu_ratio": (int, 1, "multi_gpu_ratio: GPUs the draft's layers spread over (the next ones)"),
    "workload.benchmark": (str, None, "prompt file or folder (JSONL, question.jsonl, ShareGPT, text)"),
    "workload.sharegpt_dir": (str, None, "folder with ShareGPT files (used when no benchmark is given)"),
    "workload.num_prompts": (int, None, "use at most this many prompts (after filter and shuffle)"),
    "workload.category": ("list", [], "keep only these categories"),
    "workload.shuffle": (bool, False, "shuffle prompts (with workload.seed) before the limit"),
    "workload.seed": (int, 0, "shuffle and arrival seed"),
    "workload.chat_template": (bool, True, "apply the tokenizer's chat template when it has one"),
    "workload.max_turns": (int, None, "use at most this many turns of multi-turn prompts"),
    "workload.per_category": (int, None, "use at most this many prompts of each category"),
    "load.mode": (str, "fixed", "fixed (each prompt once), poisson (arrivals at load.rate for load.duration); servers also constant, burst"),
    "load.rate": ("rates", None, "arrival rate, requests per second; servers take a list [1, 2, 4] (one row per rate)"),
    "load.duration": (float, None, "Poisson mode: seconds of arrivals"),
    # --- serving engines (issue #12, docs/serving.md; read by specdec/bench/backends/server) -------------
    "engine.launch": (str, None, "start this server per method: vllm, sglang or llama.cpp (engine.backend openai)"),
    "engine.base_url": (str, None, "a running OpenAI-compatible server, e.g. http://127.0.0.1:8000 (engine.backend openai)"),
    "engine.served_model_name": (str, None, "model name in requests; default: the server's first /v1/models entry"),
    "engine.api_key_env": (str, None, "environment variable holding the server's API key (sent as Bearer)"),
    "engine.api": (str, "auto", "auto (chat when workload.chat_template), chat or completions"),
    "engine.host": (str, "127.0.0.1", "address launched servers listen on"),
    "engine.port": (int, None, "port of launched servers (default: a free one)"),
    "engine.executable": (str, None, "the server's executable (vllm, llama-server, or a Python with sglang)"),
    "engine.extra_args": ("list", [], "more command-line arguments for launched servers (a YAML list)"),
    "engine.max_model_len": (int, None, "context length of launched servers / vllm.LLM"),
    "engine.max_num_seqs": (int, None, "requests a launched server runs at once (vLLM --max-num-seqs, llama.cpp -np)"),
    "engine.spec_type": (str, None, "the engine's own drafting method name (vLLM method, SGLang algorithm, llama.cpp --spec-type)"),
    "engine.metrics": (bool, True, "read the server's speculation counters on /metrics"),
    "engine.startup_timeout_s": (float, 600.0, "seconds a launched server may take to answer its health check"),
    "engine.enforce_eager": (bool, False, "vLLM: --enforce-eager / LLM(enforce_eager=True): no torch.compile (starts in a minute on CPU, not 3-5)"),
    "engine.cpu_kvcache_gib": (float, None, "vLLM CPU build: VLLM_CPU_KVCACHE_SPACE in GiB (default: a quarter of available memory, 1-8)"),
    "engine.cpu_threads_bind": (str, None, "vLLM CPU build: VLLM_CPU_OMP_THREADS_BIND (default with tensor_parallel_size > 1: allowed cores split per rank, e.g. 0|1)"),
    "engine.request_timeout_s": (float, 600.0, "seconds one streamed request may take"),
    "load.max_concurrency": (int, None, "servers: at most this many requests in flight (the rest wait on the client)"),
    "load.slo_ttft_ms": (float, None, "servers: goodput counts requests with TTFT at most this (ms)"),
    "load.slo_tpot_ms": (float, None, "servers: goodput counts requests with TPOT at most this (ms)"),
    # --- end of serving-engine keys ------------------------------------------------------------
    "run.methods": ("list", None, "methods to run; default target + speculative (or ngram without a draft model)"),
    "run.warmup": (int, 1, "warm-up generations per method, excluded from figures"),
    "run.repeats": (int, 1, "measured repeats of every prompt"),
    "run.monitor": (bool, True, "sample GPU (NVML) or CPU/RSS/RAPL while running"),
    "run.monitor_interval_s": (float, 0.1, "monitor sampling interval"),
    "run.bootstrap": (int, 2000, "bootstrap resamples for the speedup confidence interval"),
}

CHOICES = {
    "engine.gpu_strategy": ("same", "separate", "multi_gpu_ratio", "auto"),
    "speculative.method": ("model", "ngram"),
    "speculative.draft_schedule": ("constant", "adaptive"),
    "speculative.ngram_match": ("earliest", "latest"),
    "target.quantize": ("int8", "int4", "w8a8", "w4a8", "none"),
    "speculative.quantize": ("int8", "int4", "w8a8", "w4a8", "none"),
    "load.mode": ("fixed", "poisson", "constant", "burst"),
    "engine.backend": ("native", "vllm", "openai"),
    "engine.launch": ("vllm", "sglang", "llama.cpp"),
    "engine.api": ("auto", "chat", "completions"),
}

#: What a config file or flag may write -> the key it sets. ``model`` is the target's path (a
#: string, as ever); written as a mapping it also takes the target's quantization:
#: ``model: {path: ..., quantize: int4, quantize_group: 128}`` or ``--set model.quantize=int4``.
ALIASES = {"model.path": "model", "model.name": "model", "model.quantize": "target.quantize",
           "model.quantize_group": "target.quantize_group"}

#: Keys added after results folders existed: left out of a config's hash while at their default,
#: so that a folder written before them still resumes (its config hashes as it did then).
LATER_KEYS = {"target.quantize", "target.quantize_group", "speculative.quantize", "speculative.quantize_group",
              "engine.enforce_eager", "engine.cpu_kvcache_gib", "engine.cpu_threads_bind"}


def canonical(key: str) -> str:
    """The config key that ``key`` (perhaps an alias) sets."""
    return ALIASES.get(key, key)


#: Keys that do not change what is measured: a resumed run may change them freely.
#: (Raising num_prompts or repeats extends a run: the earlier prompts stay a prefix.)
HASH_EXEMPT = {"run.monitor", "run.monitor_interval_s", "run.bootstrap", "workload.num_prompts", "run.repeats"}

#: Environment variables of launch scripts -> dotted keys (``ENABLE_*`` handled separately).
ENV_VARS = {
    "TARGET_MODEL": "model",
    "DRAFTER_MODEL": "speculative.draft_model",
    "NUM_PROMPTS": "workload.num_prompts",
    "AUTO_RATE": "load.rate",
    "AUTO_DURATION": "load.duration",
    "ENABLE_BATCH": "engine.enable_batch",
    "BATCH_SIZE": "engine.batch_size",
    "MAX_BATCH_LENGTH": "engine.max_batch_length",
    "GPU_STRATEGY": "engine.gpu_strategy",
    "TARGET_GPU_RATIO": "engine.target_gpu_ratio",
    "DRAFTER_GPU_RATIO": "engine.drafter_gpu_ratio",
    "GENERATION_LENGTH": "generation.max_tokens",
    "GAMMA_VALUE": "speculative.num_speculative_tokens",
    "ENABLE_GPU_MONITOR": "run.monitor",
    "SHAREGPT_DIR": "workload.sharegpt_dir",
}
METHOD_ENV_VARS = {"ENABLE_TARGET": "target", "ENABLE_SPECULATIVE": "speculative"}


def _set(tree: dict, dotted: str, value) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _get(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def defaults() -> dict:
    tree: dict = {}
    for key, (_, default, _) in FIELDS.items():
        _set(tree, key, copy.deepcopy(default))
    return tree


def coerce(key: str, value, where: str):
    """``value`` as the type of ``key``; strings (env vars, flags) are parsed. UsageError if not."""
    kind = FIELDS[key][0]
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and kind is not str):
        return None
    try:
        if kind == "rates":  # a rate or a list of rates (a sweep); one-element lists are one rate
            items = value.split(",") if isinstance(value, str) else value
            items = list(items) if isinstance(items, (list, tuple)) else [items]
            if not items or any(isinstance(v, bool) for v in items):
                raise ValueError
            items = [float(v) for v in items]
            value = items[0] if len(items) == 1 else items
        elif kind == "list":
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, (list, tuple)):
                items = [str(v) for v in value]
            else:
                raise ValueError
            value = items
        elif kind is bool:
            if isinstance(value, bool):
                pass
            elif isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                value = True
            elif isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
                value = False
            elif isinstance(value, int) and value in (0, 1):
                value = bool(value)
            else:
                raise ValueError
        elif kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        expected = {"list": "a list (or comma-separated text)", "rates": "a number or a list of numbers",
                    bool: "true or false", int: "an integer",
                    float: "a number", str: "text"}[kind]
        raise UsageError(f"{where}: {key} must be {expected}, got {value!r}") from None
    if key in CHOICES and value not in CHOICES[key]:
        raise UsageError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def _flatten(tree: dict, where: str, prefix: str = "") -> dict:
    flat = {}
    if not isinstance(tree, dict):
        raise UsageError(f"{where}: the config must be a mapping of sections (model:, generation:, ...), got {type(tree).__name__}")
    for name, value in tree.items():
        key = canonical(f"{prefix}{name}")
        if key == "model" and isinstance(value, dict) and not prefix:
            flat.update(_flatten(value, where, "model."))  # model: {path: ..., quantize: ...}
            continue
        if key in FIELDS:
            flat[key] = value
        elif isinstance(value, dict) and any(f.startswith(key + ".") for f in FIELDS):
            flat.update(_flatten(value, where, key + "."))
        else:
            section = key.rsplit(".", 1)[0] if "." in key else ""
            known = sorted(f for f in FIELDS if f.rsplit(".", 1)[0] == section) if section else sorted(
                {f.split(".")[0] for f in FIELDS})
            raise UsageError(f"{where}: unknown config key {key!r}; known {'keys in ' + section if section else 'top-level keys'}: {', '.join(known)}")
    return flat


#: vLLM's ``speculative_config`` keys (the S3 config shape) -> specdec keys.
S3_SPECULATIVE = {
    "model": "draft_model",
    "num_speculative_tokens": "num_speculative_tokens",
    "prompt_lookup_max": "ngram_max",
    "prompt_lookup_min": "ngram_min",
}
S3_METHODS = {"draft_model": "model", "ngram": "ngram"}


def from_s3_shape(data: dict, where: str) -> dict:
    """A vLLM-shaped config (S3: a top-level ``speculative_config:`` block) in specdec's keys.

    ``method`` (draft_model / ngram), ``model``, ``num_speculative_tokens`` and
    ``prompt_lookup_max`` / ``_min`` map onto the native drafters; anything else in the block is
    kept in ``speculative.unsupported`` and reported by the backends as not honoured."""
    if not isinstance(data, dict) or "speculative_config" not in data:
        return data
    data = dict(data)
    block = data.pop("speculative_config") or {}
    if not isinstance(block, dict):
        raise UsageError(f"{where}: speculative_config must be a mapping (method, model, num_speculative_tokens, ...)")
    speculative = dict(data.get("speculative") or {})
    unsupported = []
    for key, value in block.items():
        if key == "method":
            if value not in S3_METHODS:  # running another drafter under its name would mislabel every figure
                raise UsageError(f"{where}: speculative_config.method {value!r} has no native drafter; use draft_model "
                                 "or ngram, or run it on a vLLM server (engine.backend vllm / openai)")
            speculative["method"] = S3_METHODS[value]
        elif key in S3_SPECULATIVE:
            speculative[S3_SPECULATIVE[key]] = value
        else:
            unsupported.append(f"{key}={value}")
    if "method" not in block and "model" in block:
        speculative["method"] = "model"
    # vLLM drafts num_speculative_tokens every step: the constant schedule measures the same thing
    # (an explicit speculative: {draft_schedule: ...} in the file still wins)
    speculative.setdefault("draft_schedule", "constant")
    if unsupported:
        speculative["unsupported"] = unsupported
    data["speculative"] = speculative
    engine = dict(data.get("engine") or {})
    for key in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len"):  # S3's top-level engine keys
        if key in data:
            engine[key] = data.pop(key)
    if engine:
        data["engine"] = engine
    return data


def read_config_file(path: str | os.PathLike) -> dict:
    """The flat {dotted key: value} of a YAML or JSON config file (validated)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such config file: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        line = getattr(error, "lineno", None) or getattr(getattr(error, "problem_mark", None), "line", -1) + 1
        raise UsageError(f"{path}:{line}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {str(error).splitlines()[0]}") from None
    if data is None:
        return {}
    data = from_s3_shape(data, str(path))
    flat = _flatten(data, str(path))
    return {key: coerce(key, value, str(path)) for key, value in flat.items()}


def env_overrides(environ=None) -> tuple[dict, dict]:
    """(flat overrides, method switches) from the launch-script environment variables."""
    environ = os.environ if environ is None else environ
    flat = {}
    for name, key in ENV_VARS.items():
        if environ.get(name, "") != "":
            flat[key] = coerce(key, environ[name], f"environment variable {name}")
    switches = {}
    for name, method in METHOD_ENV_VARS.items():
        if environ.get(name, "") != "":
            switches[method] = coerce("run.monitor", environ[name], f"environment variable {name}")
    if flat.get("load.rate") is not None:
        flat.setdefault("load.mode", "poisson")
    return flat, switches


def parse_set(items: list[str]) -> dict:
    """``--set key=value`` flags -> flat overrides (values parsed as YAML scalars/lists)."""
    flat = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = canonical(key.strip())
        if not sep:
            raise UsageError(f"--set {item!r}: write --set section.key=value, e.g. --set generation.top_k=20")
        if key not in FIELDS:
            raise UsageError(f"--set {item!r}: unknown key {key!r}; known keys: {', '.join(FIELDS)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        flat[key] = coerce(key, value, f"--set {key}")
    return flat


@dataclass
class BenchConfig:
    """The resolved configuration: ``values`` (nested dict, every key present), ``explicit``
    (dotted keys a file, variable or flag set) and where each came from."""

    values: dict = field(default_factory=defaults)
    explicit: dict = field(default_factory=dict)  # dotted key -> source

    def get(self, key: str):
        return _get(self.values, canonical(key))

    def set(self, key: str, value, source: str = "code") -> None:
        key = canonical(key)
        if key not in FIELDS:
            raise UsageError(f"unknown config key {key!r}; known keys: {', '.join(FIELDS)}")
        _set(self.values, key, coerce(key, value, source))
        self.explicit[key] = source

    def update(self, flat: dict, source: str) -> None:
        for key, value in flat.items():
            self.set(key, value, source)

    # typed shortcuts -------------------------------------------------------------------
    def __getitem__(self, key: str):
        return self.get(key)

    @property
    def methods(self) -> list[str]:
        methods = self.get("run.methods")
        if methods:
            return list(methods)
        with_model = self.get("speculative.draft_model") or self.get("speculative.method") == "ngram"
        drafting = "speculative" if with_model else "ngram"
        return ["target", drafting]

    def validate(self) -> None:
        """Check values that depend on each other; UsageError naming the key and the fix."""
        if not self.get("model"):
            raise UsageError("no target model: set model: in the config, TARGET_MODEL, or --model")
        positive = ("generation.max_tokens", "speculative.num_speculative_tokens", "run.repeats", "engine.batch_size")
        for key in positive:
            if self.get(key) is not None and self.get(key) < 1:
                raise UsageError(f"{key} must be >= 1, got {self.get(key)} (set by {self.explicit.get(key, 'default')})")
        if self.get("run.warmup") < 0:
            raise UsageError(f"run.warmup must be >= 0, got {self.get('run.warmup')}")
        if self.get("workload.num_prompts") is not None and self.get("workload.num_prompts") < 1:
            raise UsageError(f"workload.num_prompts must be >= 1, got {self.get('workload.num_prompts')}")
        if self.get("generation.temperature") < 0:
            raise UsageError("generation.temperature must be >= 0 (0 = greedy)")
        if self.get("generation.top_p") is not None and not 0 < self.get("generation.top_p") <= 1:
            raise UsageError("generation.top_p must be in (0, 1]")
        if self.get("load.mode") in ("poisson", "constant"):
            rate = self.get("load.rate")
            if rate is None or any(r <= 0 for r in (rate if isinstance(rate, list) else [rate])):
                raise UsageError(f"load.mode {self.get('load.mode')} needs load.rate > 0 (requests/s, or a list of them): "
                                 "--rate, AUTO_RATE or load: {rate: ...}")
            duration = self.get("load.duration")
            if duration is not None and duration <= 0:
                raise UsageError("load.duration must be > 0 seconds")
        if not self.get("workload.benchmark") and not self.get("workload.sharegpt_dir"):
            raise UsageError("no prompts: pass --benchmark FILE (or workload: {benchmark: ...}, or SHAREGPT_DIR)")

    def to_dict(self) -> dict:
        return copy.deepcopy(self.values)

    def hash(self) -> str:
        """A digest of everything that changes what is measured (see HASH_EXEMPT)."""
        exempt = set(HASH_EXEMPT)
        if self.get("load.mode") != "fixed":
            # Under load the arrival schedule cycles over the prompts: another prompt count is
            # another schedule, not an extension of this one.
            exempt.discard("workload.num_prompts")
        flat = {key: _get(self.values, key) for key in FIELDS if key not in exempt
                and not (key in LATER_KEYS and _get(self.values, key) == FIELDS[key][1])}
        flat["run.methods"] = self.methods
        blob = json.dumps(flat, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_config(config_file=None, flags: dict | None = None, environ=None, base: dict | None = None) -> BenchConfig:
    """Defaults < ``base`` (a nested or flat dict from Python) < config file < environment < ``flags``.

    flags: flat {dotted key: value}; None values are treated as "not given".
    """
    config = BenchConfig()
    if base:
        flat = _flatten(base, "config dict") if any(isinstance(v, dict) for v in base.values()) or any(
            k not in FIELDS for k in base) else base
        config.update(flat, "config dict")
    if config_file:
        config.update(read_config_file(config_file), str(config_file))
    env_flat, switches = env_overrides(environ)
    config.update(env_flat, "environment")
    if switches:
        methods = config.methods
        for method, enabled in switches.items():
            if enabled and method not in methods:
                methods.insert(0 if method == "target" else len(methods), method)
            if not enabled:
                methods = [m for m in methods if m.split(":")[0] != method]
        config.set("run.methods", methods, "environment")
    for key, value in (flags or {}).items():
        if value is not None:
            config.set(key, value, "command line")
    if config.get("load.rate") is not None and "load.mode" not in config.explicit:
        config.set("load.mode", "poisson", config.explicit.get("load.rate", "code"))
    return config
