#!/usr/bin/env python3
"""The GPU fast path, measured (project issue #10, item 6): specdec beside transformers'
generate in one process, greedy, with the order of the arms rotated per prompt.

    python benchmarks/gpu.py                       # real weights (the Qwen2.5-Coder pair)
    python benchmarks/gpu.py --config-only \\
        --target benchmarks/configs/shapes/qwen2.5-coder-1.5b \\
        --draft benchmarks/configs/shapes/qwen2.5-coder-0.5b   # random weights: shape timing only

Arms (--arms picks a subset):
  hf-dynamic  transformers generate, its default dynamic cache
  hf-static   transformers generate, cache_implementation="static" (it compiles the forward on CUDA)
  sd-ar       specdec autoregressive
  sd-draft    specdec speculative with the draft model (--schedule, constant gamma by default)
  sd-ngram    specdec speculative with n-gram prompt lookup

Every arm runs once on every prompt, the order rotated by one arm per prompt; before that each
arm runs once on the longest prompt, excluded (it sizes the static caches, captures the CUDA
graphs and lets transformers compile). Prompts: spec_bench first turns (../shared/data) when
the target has a real tokenizer, synthetic token ids with --config-only, plus one prompt that
asks for its own input back (the n-gram case).

Printed, each table with where it was measured: ms per forward at each width (eager and CUDA
graph) and graph capture time; per arm tok/s, per-prompt ratios, alpha, tau, c, host syncs per
token and per step (counted with torch.cuda.set_sync_debug_mode), loop overhead per step as a
share of a width-1 target forward, peak GPU memory; Leviathan's predicted speedup from the
measured alpha and c beside the measured one; the issue's targets with the figures that check
them. The JSON report (--report) is rewritten after every prompt, so a killed run keeps what it
measured. On a CPU the script runs too (a smoke path): syncs, GPU memory and graph columns
print n/a. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from specdec.runners.devices import device_name, resolve_device, synchronized_clock
from specdec.runners.draft_head import DEFAULT_DRAFT_VOCAB
from specdec.engine.drafters import DEFAULT_CONFIDENCE_THRESHOLD, DraftLengthPolicy, ModelDraft, NgramDraft
from specdec.engine.loop import Engine, GenerationConfig, context_limit
from specdec.errors import SpecdecError, UsageError
from specdec.models.loading import check_same_tokenizer, eos_token_ids, load_model, quiet_transformers, resolve_dtype, special_token_ids
from specdec.runners import ForwardClock, ModelRunner
from specdec.engine.sampling import GREEDY

from gpu_summary import print_heading, print_results, summarize  # beside this script

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("SPECDEC_FIXTURES", Path.home() / ".cache" / "specdec-fixtures"))
SPEC_BENCH = Path(os.environ.get("SPECDEC_SHARED", REPO.parent / "shared")) / "data" / "spec_bench" / "question.jsonl"
ARMS = {
    "hf-dynamic": "transformers generate, dynamic cache",
    "hf-static": 'transformers generate, cache_implementation="static"',
    "sd-ar": "specdec autoregressive",
    "sd-draft": "specdec speculative, draft model",
    "sd-ngram": "specdec speculative, n-gram lookup",
}
#: Synthetic prompts draw ids below this: byte-level BPE numbers frequent tokens first, so real
#: text sits mostly there (specdec.runners.draft_head), and the draft's subset head sees what it would.
SYNTHETIC_IDS = 32000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--target", default=str(FIXTURES / "qwen-coder-1.5b" / "hf-bfloat16"),
                   help="HF model folder or hub id (a folder with config.json alone needs --config-only)")
    p.add_argument("--draft", default=str(FIXTURES / "qwen-coder-0.5b" / "hf-bfloat16"), help="draft model, as --target")
    p.add_argument("--config-only", action="store_true",
                   help="build random-weight models from the folders' config.json: shape timing only")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs that support it, else fp16; float32 on CPU), "
                                                   "float32, bfloat16, float16")
    p.add_argument("--prompts", type=int, default=10, help="measured prompts (batches when --batch > 1), plus the repeat prompt")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per speculative step")
    p.add_argument("--schedule", choices=("constant", "adaptive"), default="constant",
                   help="draft length schedule of sd-draft (constant: what Leviathan's prediction assumes)")
    p.add_argument("--draft-vocab", type=int, default=DEFAULT_DRAFT_VOCAB,
                   help="ids the draft head scores (specdec.runners.draft_head); 0 scores the whole vocabulary")
    p.add_argument("--ngram-max", type=int, default=3, help="longest n-gram sd-ngram matches")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 5, 11], help="forward widths of the per-width table")
    p.add_argument("--repeats", type=int, default=None, help="forwards per width in that table (default 20 on CUDA, 3 on CPU)")
    p.add_argument("--context-tokens", type=int, default=256, help="cached tokens before the per-width forwards")
    p.add_argument("--prompt-tokens", type=int, default=128, help="length of the synthetic prompts (--config-only)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="arms to run (default: all)")
    p.add_argument("--batch", type=int, default=1, help="prompts per generation")
    p.add_argument("--alpha", type=float, default=None, help="alpha for the prediction instead of the measured one "
                                                             "(random weights: take it from a real-weight run)")
    p.add_argument("--c", type=float, default=None, help="c (draft forward / target forward) for the prediction instead of the measured one")
    p.add_argument("--seed", type=int, default=0, help="seeds the random weights and synthetic prompts")
    p.add_argument("--report", metavar="FILE", default=None, help="JSON report, rewritten after every prompt")
    p.add_argument("--show", metavar="FILE", default=None, help="print the tables of a saved report again (loads no model)")
    args = p.parse_args(argv)
    for name in ("prompts", "max_new_tokens", "gamma", "batch", "context_tokens", "prompt_tokens", "ngram_max"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.widths) < 1 or (args.repeats is not None and args.repeats < 1):
        raise UsageError("--widths and --repeats must be at least 1")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha is an acceptance probability in [0, 1], got {args.alpha}")
    if args.c is not None and args.c < 0:
        raise UsageError(f"--c is a cost ratio >= 0, got {args.c}")
    return args


# --- models ------------------------------------------------------------------------------------


@dataclass
class Models:
    """What the arms run: models on the device, the tokenizer and how the weights came to be."""

    target: torch.nn.Module
    draft: torch.nn.Module | None
    tokenizer: object
    real_tokenizer: bool
    random_weights: bool


class StandInTokenizer:
    """For random-weight models without tokenizer files: token i decodes to "<i>"."""

    chat_template = None
    pad_token_id = None
    all_special_ids: list[int] = []

    def __init__(self, eos_token_id) -> None:
        self.eos_token_id = eos_token_id

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(f"<{int(i)}>" for i in ids)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """--dtype: ``auto`` is the library's choice on GPUs (bf16 where supported, else fp16) and
    float32 on CPU, where this script is only a smoke path and fp32 runs everywhere."""
    if name == "auto" and device.type == "cpu":
        return torch.float32
    return resolve_dtype(name, device)


def has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.gguf"))


def random_model(folder: str, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """A causal LM with random weights (transformers' own initialisation) from ``folder``'s config.json."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise UsageError(f"--config-only needs a folder with a config.json: {folder} has none")
    torch.manual_seed(seed)
    with quiet_transformers(), torch.device(device):  # initialise on the device: fast on a GPU
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    return model.to(device).eval()  # a no-op where the device context already placed it


def load_models(args, device: torch.device, dtype: torch.dtype, log) -> Models:
    need_draft = "sd-draft" in args.arms
    if args.config_only:
        log(f"random weights from {args.target}" + (f" and {args.draft}" if need_draft else "") + " (shape timing only)")
        target = random_model(args.target, device, dtype, args.seed)
        draft = random_model(args.draft, device, dtype, args.seed + 1) if need_draft else None
        tokenizer, real = _folder_tokenizer(args.target), True
        if tokenizer is None:
            tokenizer, real = StandInTokenizer(target.config.eos_token_id), False
        return Models(target, draft, tokenizer, real, random_weights=True)
    for folder in (args.target, args.draft) if need_draft else (args.target,):
        path = Path(folder).expanduser()
        if path.is_dir() and (path / "config.json").is_file() and not has_weights(path):
            raise UsageError(f"{folder} has a config.json but no weights: add --config-only to time its shapes with random weights")
    loaded = load_model(args.target, device, dtype)
    draft = None
    if need_draft:
        loaded_draft = load_model(args.draft, device, dtype)
        check_same_tokenizer(loaded.tokenizer, loaded_draft.tokenizer, args.target, args.draft)
        draft = loaded_draft.model
    return Models(loaded.model, draft, loaded.tokenizer, real_tokenizer=True, random_weights=False)


def _folder_tokenizer(folder: str):
    path = Path(folder).expanduser()
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        return None
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(path)


# --- prompts -----------------------------------------------------------------------------------


@dataclass
class Unit:
    """One measured generation: a batch of prompts (a single prompt at --batch 1).

    group: "main" (the figures of the arm table) or "repeat" (the n-gram prompt).
    """

    name: str
    group: str
    prompts: list[list[int]]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as a user turn (chat template when the tokenizer has one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def spec_bench_units(tokenizer, args, room: int | None, log) -> list[Unit]:
    """First turns of spec_bench, one category after another (13 categories), as token ids;
    prompts that do not fit the context with the new tokens are left out (named on stderr)."""
    if not SPEC_BENCH.is_file():
        raise UsageError(f"{SPEC_BENCH} is absent: put ../shared beside the checkout (or set SPECDEC_SHARED), or use --config-only")
    by_category: dict[str, list[dict]] = {}
    with open(SPEC_BENCH) as f:
        for line in f:
            record = json.loads(line)
            by_category.setdefault(record["category"], []).append(record)
    queue = [r for group in zip(*by_category.values()) for r in group]  # round robin
    wanted, chosen, skipped = args.prompts * args.batch, [], []
    for record in queue:
        if len(chosen) == wanted:
            break
        ids = encode(tokenizer, record["turns"][0])
        name = f"{record['category']}-{record['question_id']}"
        if room is not None and len(ids) > room:
            skipped.append(name)
            continue
        chosen.append((name, ids))
    if skipped:
        log(f"left out (prompt + {args.max_new_tokens} new tokens exceed the context): {', '.join(skipped)}")
    if not chosen:
        raise UsageError("no spec_bench prompt fits the model's context with --max-new-tokens; lower --max-new-tokens")
    return [Unit("+".join(n for n, _ in chosen[i:i + args.batch]), "main", [ids for _, ids in chosen[i:i + args.batch]])
            for i in range(0, len(chosen), args.batch)]


def repeat_unit_text(tokenizer, args, room: int | None) -> Unit:
    """A prompt that asks for its own input back: the first spec_bench article, cut to about
    twice the new tokens (so the whole answer can be copied)."""
    with open(SPEC_BENCH) as f:
        article = next(r["turns"][0] for r in map(json.loads, f) if r["category"] == "summarization")
    article = article.split(":", 1)[1].strip() if article.startswith("Summarize") else article
    instruction = "Repeat the following text exactly, word for word, and write nothing else.\n\n"
    budget = max(2 * args.max_new_tokens, 64)
    if room is not None:
        budget = min(budget, room - len(encode(tokenizer, instruction)) - 8)
    if budget < 8:
        raise UsageError("the context is too short for the repeat prompt with --max-new-tokens; lower --max-new-tokens")
    text = tokenizer.decode(tokenizer(article, add_special_tokens=False)["input_ids"][:budget], skip_special_tokens=True)
    ids = encode(tokenizer, instruction + text)
    return Unit("repeat", "repeat", [ids] * args.batch)


def synthetic_units(vocab: int, args) -> list[Unit]:
    """Random-token prompts of --prompt-tokens ids, and a repeat prompt: one random block of an
    eighth of that length, repeated (what n-gram lookup matches; random weights do not copy it)."""
    generator = torch.Generator().manual_seed(args.seed)
    high = min(vocab, SYNTHETIC_IDS)

    def draw(n):
        return torch.randint(0, high, (n,), generator=generator).tolist()

    units = [Unit(f"synthetic-{i}", "main", [draw(args.prompt_tokens) for _ in range(args.batch)]) for i in range(args.prompts)]
    block = draw(max(1, args.prompt_tokens // 8))
    repeated = (block * (args.prompt_tokens // len(block) + 1))[: args.prompt_tokens]
    return units + [Unit("repeat", "repeat", [repeated] * args.batch)]


def build_units(models: Models, args, limit: int | None, log) -> tuple[list[Unit], str]:
    room = limit - args.max_new_tokens if limit else None
    if room is not None and room < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the context of {limit}")
    if models.real_tokenizer and SPEC_BENCH.is_file():
        units = spec_bench_units(models.tokenizer, args, room, log) + [repeat_unit_text(models.tokenizer, args, room)]
        return units, "spec_bench first turns + a repeat-your-input prompt"
    if not models.random_weights:
        raise UsageError(f"{SPEC_BENCH} is absent: real weights need real prompts; put ../shared beside the checkout")
    if room is not None and args.prompt_tokens > room:
        raise UsageError(f"--prompt-tokens {args.prompt_tokens} + --max-new-tokens exceed the context of {limit}")
    return synthetic_units(models.target.config.vocab_size, args), f"synthetic ids ({args.prompt_tokens} tokens) + a repeated block"


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class ArmRun:
    """One arm's generation of one unit.

    new_tokens / e2e_s: over the whole batch (seconds, synchronized clock).
    stats: the engine's per-row stats (None for transformers).
    syncs: host syncs counted during the call; peak_bytes / start_bytes: GPU memory (CUDA only).
    """

    token_ids: list[list[int]]
    new_tokens: int
    e2e_s: float
    stats: list[dict] | None = None
    syncs: int | None = None
    peak_bytes: int | None = None
    start_bytes: int | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.e2e_s if self.e2e_s > 0 else float("nan")

    def to_json(self) -> dict:
        return {"tokens_per_s": self.tokens_per_s, **self.__dict__}


class DeviceProbe:
    """Host syncs and peak GPU memory of one call: the CUDA-only part of this script.

    Syncs are what PyTorch's sync debug mode flags (``torch.cuda.set_sync_debug_mode("warn")``
    warns once per operation that makes the host wait for the device: a device-to-host copy
    such as ``.tolist()`` or ``.item()``, a copy from pageable host memory such as
    ``torch.tensor(..., device="cuda")``, ``nonzero``, a stream synchronize); the warnings are
    recorded and counted. Memory is ``torch.cuda.max_memory_allocated`` after resetting the
    peak. Elsewhere both are None (printed n/a).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    @contextmanager
    def measure(self, run_box: dict):
        """Fills ``run_box`` with syncs, peak_bytes and start_bytes after the block."""
        if not self.cuda:
            yield
            return
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        start = torch.cuda.memory_allocated(self.device)
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every sync, not one per source line
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        # PyTorch's text: "called a synchronizing CUDA operation" (older releases: "... operation").
        run_box.update(syncs=sum("called a synchronizing" in str(w.message) for w in caught),
                       peak_bytes=torch.cuda.max_memory_allocated(self.device), start_bytes=start)

    def release(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()


def hf_arm(model, device, max_new_tokens: int, pad_id: int, cache_implementation: str | None):
    """transformers' generate on a batch (left-padded), greedy, exactly max_new_tokens each."""

    def run(prompts: list[list[int]]) -> ArmRun:
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                      top_k=None, top_p=None, repetition_penalty=1.0, pad_token_id=pad_id)
        if cache_implementation:
            kwargs["cache_implementation"] = cache_implementation
        with quiet_transformers(), torch.inference_mode():
            started = synchronized_clock(device)
            output = model.generate(ids, attention_mask=mask, **kwargs)
            finished = synchronized_clock(device)
        new = output[:, width:].tolist()
        return ArmRun(new, sum(len(row) for row in new), finished - started)

    return run


def engine_arm(engine: Engine, config: GenerationConfig, drafter):
    def run(prompts: list[list[int]]) -> ArmRun:
        results = engine.generate_batch(prompts, config, drafter)
        stats = [r.stats for r in results]
        return ArmRun([r.token_ids for r in results], stats[0]["batch_new_tokens"], stats[0]["batch_e2e_s"], stats)

    return run


def build_arms(models: Models, engine: Engine, args, device) -> tuple[dict, ModelDraft | None]:
    """{arm name: prompts -> ArmRun} for --arms, and sd-draft's drafter (None without it)."""
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=GREEDY, gamma=args.gamma, seed=args.seed,
                              ignore_eos=True)
    eos = sorted(engine.eos_token_ids)
    pad_id = getattr(models.tokenizer, "pad_token_id", None)
    pad_id = pad_id if pad_id is not None else (eos[0] if eos else 0)
    on_cuda = device.type == "cuda"
    arms, drafter = {}, None
    for name in args.arms:
        if name == "hf-dynamic":
            arms[name] = hf_arm(models.target, device, args.max_new_tokens, pad_id, None)
        elif name == "hf-static":
            arms[name] = hf_arm(models.target, device, args.max_new_tokens, pad_id, "static")
        elif name == "sd-ar":
            arms[name] = engine_arm(engine, config, None)
        elif name == "sd-draft":
            policy = DraftLengthPolicy(args.schedule, DEFAULT_CONFIDENCE_THRESHOLD)
            # The draft gets the same fast path as the target on CUDA: static cache + graphs.
            drafter = ModelDraft(models.draft, engine.vocab_size, policy, draft_vocab=args.draft_vocab,
                                 keep_ids=special_token_ids(models.target, models.tokenizer),
                                 cache="static" if on_cuda else "dynamic", graphs=on_cuda)
            arms[name] = engine_arm(engine, config, drafter)
        elif name == "sd-ngram":
            arms[name] = engine_arm(engine, config, NgramDraft(max_ngram=args.ngram_max, min_ngram=1))
    return arms, drafter


def forward_costs(model, device, cache_kind: str, graphs: bool, args, vocab: int) -> dict:
    """Mean ms of one forward of each width (--batch rows, after --context-tokens cached tokens),
    through the engine's own runner; a first round (graph capture) is excluded. Returns
    {"ms": {width: ms}, "capture_s": s}."""
    generator = torch.Generator().manual_seed(args.seed)
    high = min(vocab, SYNTHETIC_IDS)
    prompt = torch.randint(0, high, (args.context_tokens,), generator=generator).tolist()
    feeds = {w: torch.randint(0, high, (args.batch, w), generator=generator).to(device) for w in args.widths}
    runner = ModelRunner(model, device, cache_kind, graphs=graphs)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    clocks = []
    with torch.inference_mode():
        for rounds in (1, repeats):  # warm-up round, then the measured ones (same cache, same graphs)
            clock = ForwardClock(device)
            runner.start([prompt] * args.batch, extra_slots=max(args.widths) + 1, clock=clock)
            for _ in range(rounds):
                for width in args.widths:
                    runner.forward(feeds[width])
                    runner.truncate([args.context_tokens] * args.batch)
            clocks.append(clock)
    warm, measured = clocks
    result = {"ms": {str(w): measured.mean_at_width(w) * 1000 for w in args.widths}, "capture_s": warm.capture_seconds,
              "repeats": repeats, "graphs_used": bool(runner.graphs is not None and runner.graphs.disabled_reason is None)}
    del runner
    return result


def forward_table(models: Models, engine: Engine, drafter, args, device) -> dict:
    """{model: {mode: forward_costs}} for the target and (when loaded) the draft, as the engine
    runs them: "eager" with the engine's cache kind, "graph" (CUDA only) with CUDA graphs."""
    vocab = models.target.config.vocab_size
    subjects = {"target": engine.decode_target}
    if drafter is not None:
        subjects["draft"] = drafter.decode_model  # with its subset head, as ModelDraft runs it
    table = {}
    for name, model in subjects.items():
        table[name] = {"eager": forward_costs(model, device, engine.cache_kind, False, args, vocab)}
        if device.type == "cuda":
            table[name]["graph"] = forward_costs(model, device, "static", True, args, vocab)
    return table


class Report:
    """The JSON report: rewritten whole (atomically) after every measured prompt."""

    def __init__(self, path: str | None, manifest: dict) -> None:
        self.path = Path(path) if path else None
        self.data = {"manifest": manifest, "forward_costs": None, "warmup": {}, "records": []}
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        if self.path:
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(self.data, indent=1))
            os.replace(partial, self.path)


def call_arm(fn, probe: DeviceProbe, prompts) -> ArmRun:
    box: dict = {}
    with probe.measure(box):
        run = fn(prompts)
    run.syncs, run.peak_bytes, run.start_bytes = box.get("syncs"), box.get("peak_bytes"), box.get("start_bytes")
    return run


def measure_units(arms: dict, units: list[Unit], probe: DeviceProbe, report: Report, log) -> None:
    names = list(arms)
    longest = max(units, key=lambda u: max(len(p) for p in u.prompts))
    for name in names:  # warm-up: sizes the static caches for every later prompt, captures, compiles
        run = call_arm(arms[name], probe, longest.prompts)
        capture = sum(s.get("graph_capture_s") or 0.0 for s in run.stats[:1]) if run.stats else None
        report.data["warmup"][name] = {"seconds": run.e2e_s, "graph_capture_s": capture}
        log(f"warm-up {name:10} {run.e2e_s:7.2f} s" + (f" (graph capture {capture:.2f} s)" if capture else ""))
    report.save()
    for index, unit in enumerate(units):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        runs = {name: call_arm(arms[name], probe, unit.prompts) for name in order}
        report.data["records"].append({"unit": unit.name, "group": unit.group, "order": order,
                                       "prompt_tokens": [len(p) for p in unit.prompts],
                                       "runs": {name: runs[name].to_json() for name in names}})
        report.save()
        log(f"{unit.name[:40]:40} tok/s: " + "  ".join(f"{n} {runs[n].tokens_per_s:.1f}" for n in names))


# --- main --------------------------------------------------------------------------------------


def manifest_for(args, models: Models, engine: Engine, device, dtype) -> dict:
    import transformers

    return {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None, "transformers": transformers.__version__,
        "dtype": str(dtype).removeprefix("torch."), "batch": args.batch, "random_weights": models.random_weights,
        "target": args.target, "draft": args.draft if models.draft is not None else None, "arms": list(args.arms),
        "max_new_tokens": args.max_new_tokens, "gamma": args.gamma, "schedule": args.schedule,
        "draft_vocab": args.draft_vocab, "ngram_max": args.ngram_max, "context_tokens": args.context_tokens,
        "engine_cache": engine.cache_kind, "engine_graphs": engine.graphs, "sync_every": engine.sync_every,
        "alpha_given": args.alpha, "c_given": args.c, "seed": args.seed, "widths": list(args.widths),
    }


def run(args) -> int:
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = pick_dtype(args.dtype, device)
    if device.type != "cuda":
        log(f"running on {device}: a smoke path (no CUDA graphs; syncs and GPU memory print n/a)")
    models = load_models(args, device, dtype, log)
    if models.random_weights:
        log("random weights: shape timing only; acceptance (alpha, tau) on random weights is meaningless")
    engine = Engine(models.target, models.tokenizer, device, eos_token_ids(models.target, models.tokenizer))
    arms, drafter = build_arms(models, engine, args, device)
    units, source = build_units(models, args, context_limit(models.target), log)
    manifest = manifest_for(args, models, engine, device, dtype)
    manifest.update(prompt_source=source, main_units=sum(u.group == "main" for u in units))
    report = Report(args.report, manifest)
    probe = DeviceProbe(device)
    report.data["forward_costs"] = forward_table(models, engine, drafter, args, device)
    probe.release()
    report.save()
    print_heading(report.data)  # the per-width table comes first: it is ready long before the arms
    sys.stdout.flush()
    try:
        measure_units(arms, units, probe, report, log)
    except KeyboardInterrupt:
        log("interrupted: summarizing what was measured")
    if not report.data["records"]:
        log("no prompt was measured")
        return 1
    summaries = summarize(report.data)
    report.data.update(summaries)
    report.save()
    print_results(report.data, summaries)
    if args.report:
        print(f"\nsaved every run to {args.report}")
    return 0


def show(path: str) -> int:
    """Print the tables of a saved report again (no model is loaded)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read the report {path}: {error}") from error
    if not data.get("records"):
        raise UsageError(f"the report {path} holds no measured prompt")
    print_heading(data)
    print_results(data, summarize(data))
    return 0


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        return show(args.show) if args.show else run(args)
    except SpecdecError as error:
        print(f"gpu.py: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
