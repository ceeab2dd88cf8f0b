"""Prompt sets and arrival schedules.

Formats (detected per file, validated line by line before any model loads):

- JSONL ``{"prompt": str, "id": ...}`` (id optional: ``<file stem>-<line>`` when missing);
- Spec-Bench / MT-bench / EAGLE ``question.jsonl``: ``{"question_id", "category", "turns": [...]}``;
- ShareGPT (JSON list or JSONL): ``{"id", "conversations": [{"from": "human", "value": ...}, ...]}``,
  the first human turn is the prompt; a folder is read as the ShareGPT files it holds
  (sharegpt_gpt4.jsonl, sharegpt_V3_format.jsonl, sharegpt_zh_38K_format.jsonl);
- any other file: plain text, one prompt a line (blank lines skipped).
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specdec.errors import UsageError

SHAREGPT_FILES = ("sharegpt_gpt4.jsonl", "sharegpt_V3_format.jsonl", "sharegpt_zh_38K_format.jsonl")
HUMAN_ROLES = ("human", "user")


@dataclass
class Prompt:
    """One request of a workload: ``turns`` are user messages; turn k > 1 follows the model's
    own answer to the turns before it."""

    id: str
    turns: list[str]
    category: str = "default"
    source: str = ""
    extra: dict = field(default_factory=dict)


#: Records left out while reading prompts, by reason (reset by :func:`read_prompts`).
SKIPPED: Counter = Counter()


def _fail(path, line: int | None, problem: str) -> UsageError:
    where = f"{path}:{line}" if line else str(path)
    return UsageError(f"{where}: {problem}")


def _record_to_prompt(record, path: Path, line: int, seen: set) -> Prompt:
    if not isinstance(record, dict):
        raise _fail(path, line, f"expected a JSON object, got {type(record).__name__}")
    if "turns" in record:
        turns = record["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise _fail(path, line, "'turns' must be a non-empty list of non-empty strings")
        pid = record.get("question_id", record.get("id"))
        category = record.get("category") or "default"
    elif "conversations" in record:
        conversations = record["conversations"]
        if not isinstance(conversations, list):
            raise _fail(path, line, "'conversations' must be a list of {from, value} objects")
        first = next((c for c in conversations if isinstance(c, dict) and c.get("from") in HUMAN_ROLES
                      and isinstance(c.get("value"), str) and c["value"].strip()), None)
        # ShareGPT dumps hold conversations without a human turn, and ones that open with the
        # model's turn (the human's first message then answers text we would not send): both
        # are left out, and counted by reason (SKIPPED).
        if first is None:
            SKIPPED["ShareGPT conversation with no human turn"] += 1
            return None
        opening = next((c for c in conversations if isinstance(c, dict) and c.get("from") != "system"), None)
        if opening is not first and opening.get("from") not in HUMAN_ROLES:
            SKIPPED["ShareGPT conversation whose first turn is the model's"] += 1
            return None
        turns = [first["value"]]
        pid = record.get("id")
        category = record.get("category") or "sharegpt"
    elif "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise _fail(path, line, "'prompt' must be a non-empty string")
        turns = [record["prompt"]]
        pid = record.get("id")
        category = record.get("category") or "default"
    else:
        raise _fail(path, line, f"no 'prompt', 'turns' or 'conversations' field (keys: {', '.join(map(str, record)) or 'none'}); "
                    "write {\"prompt\": \"...\", \"id\": ...} per line")
    pid = f"{path.stem}-{line}" if pid is None or pid == "" else str(pid)
    if pid in seen:
        raise _fail(path, line, f"duplicate id {pid!r}: ids must be unique (results are keyed by them)")
    seen.add(pid)
    return Prompt(id=pid, turns=list(turns), category=str(category), source=f"{path}:{line}")


def _read_jsonl(path: Path, seen: set) -> list[Prompt]:
    prompts = []
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise _fail(path, number, f"not valid JSON ({error.msg} at column {error.colno})") from None
            prompt = _record_to_prompt(record, path, number, seen)
            if prompt is not None:
                prompts.append(prompt)
    return prompts


def _read_json(path: Path, seen: set) -> list[Prompt]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        # A .json file that is really JSONL (one object a line) is common.
        if error.msg == "Extra data":
            return _read_jsonl(path, seen)
        raise _fail(path, error.lineno, f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(data, list):
        raise _fail(path, None, "a .json prompt file must hold a list of records (ShareGPT format)")
    prompts = []
    for index, record in enumerate(data, 1):
        prompt = _record_to_prompt(record, path, index, seen)
        if prompt is not None:
            prompts.append(prompt)
    return prompts


def _read_text(path: Path, seen: set) -> list[Prompt]:
    prompts = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text.strip():
            pid = f"{path.stem}-{number}"
            seen.add(pid)
            prompts.append(Prompt(id=pid, turns=[text.strip()], source=f"{path}:{number}"))
    return prompts


def read_prompts(source: str | Path) -> list[Prompt]:
    """Every prompt of ``source`` (a file, a Spec-Bench / EAGLE folder holding question.jsonl, or a
    ShareGPT folder), in file order; UsageError with file, line and problem on the first
    malformed record."""
    path = Path(source).expanduser()
    seen: set = set()
    SKIPPED.clear()
    if path.is_dir() and (path / "question.jsonl").is_file():
        path = path / "question.jsonl"  # the Spec-Bench / EAGLE layout: data/<set>/question.jsonl
    if path.is_dir():
        files = [path / name for name in SHAREGPT_FILES if (path / name).is_file()]
        if not files:
            raise UsageError(f"{path} is a folder without prompts: expected question.jsonl (Spec-Bench, EAGLE) or one "
                             f"of {', '.join(SHAREGPT_FILES)} (ShareGPT)")
        prompts = []
        for file in files:
            prompts.extend(_read_json(file, seen) if file.suffix == ".json" else _read_jsonl(file, seen))
    elif not path.is_file():
        raise UsageError(f"no such prompt file or folder: {path}")
    elif path.suffix.lower() == ".jsonl":
        prompts = _read_jsonl(path, seen)
    elif path.suffix.lower() == ".json":
        prompts = _read_json(path, seen)
    else:
        prompts = _read_text(path, seen)
    if not prompts:
        raise UsageError(f"{path}: no prompts found")
    return prompts


def select(prompts: list[Prompt], categories=(), num_prompts: int | None = None, shuffle: bool = False,
           seed: int = 0, max_turns: int | None = None, per_category: int | None = None) -> list[Prompt]:
    """Filter by category, shuffle (seeded; the first n of a larger selection are the same
    prompts), keep at most ``per_category`` prompts of each category, then at most
    ``num_prompts`` in all, and at most ``max_turns`` turns of each."""
    chosen = list(prompts)
    if categories:
        wanted = set(categories)
        chosen = [p for p in chosen if p.category in wanted]
        if not chosen:
            known = sorted({p.category for p in prompts})
            raise UsageError(f"no prompt has category {', '.join(sorted(wanted))}; categories in the file: {', '.join(known)}")
    if shuffle:
        random.Random(seed).shuffle(chosen)
    if per_category is not None:
        seen: dict[str, int] = {}
        kept = []
        for prompt in chosen:
            seen[prompt.category] = seen.get(prompt.category, 0) + 1
            if seen[prompt.category] <= per_category:
                kept.append(prompt)
        chosen = kept
    if num_prompts is not None:
        chosen = chosen[:num_prompts]
    if max_turns is not None:
        chosen = [Prompt(p.id, p.turns[:max_turns], p.category, p.source, p.extra) for p in chosen]
    return chosen


def load_workload(config) -> list[Prompt]:
    """The prompts a :class:`BenchConfig` asks for."""
    source = config.get("workload.benchmark") or config.get("workload.sharegpt_dir")
    return select(read_prompts(source), config.get("workload.category"), config.get("workload.num_prompts"),
                  config.get("workload.shuffle"), config.get("workload.seed"), config.get("workload.max_turns"),
                  config.get("workload.per_category"))


def poisson_arrivals(rate: float, seed: int, duration: float | None = None, count: int | None = None) -> list[float]:
    """Arrival times (s from the start) of a Poisson process at ``rate`` requests/s: every arrival
    before ``duration``, or the first ``count`` arrivals (whichever bound is given; both: both)."""
    if duration is None and count is None:
        raise UsageError("Poisson arrivals need load.duration or workload.num_prompts")
    rng = np.random.default_rng(seed)
    times, now = [], 0.0
    while True:
        now += float(rng.exponential(1.0 / rate))
        if duration is not None and now >= duration:
            break
        times.append(now)
        if count is not None and len(times) >= count:
            break
    return times


def encode_turns(tokenizer, messages: list[dict], chat_template: bool) -> list[int]:
    """Token ids of a conversation ``[{role, content}, ...]`` ending with a user turn.

    With a chat template (and ``chat_template`` on) it renders the template with a generation
    prompt; otherwise the turns are joined with blank lines and tokenized as plain text.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text)["input_ids"])


@dataclass
class Job:
    """One conversation of the schedule: its prompt, the id its records carry (``~k`` on the
    k-th reuse of a prompt), the repeat index and its arrival in seconds (None: requests go
    one after another)."""

    prompt: Prompt
    prompt_id: str
    repeat: int
    arrival_s: float | None = None


def request_seed(base: int, prompt_id: str, turn: int, repeat: int) -> int:
    """The same seed for every method on one (prompt, turn, repeat), different across them."""
    return (base + zlib.crc32(f"{prompt_id}|{turn}|{repeat}".encode())) % (2**63)


def build_schedule(config, prompts: list[Prompt]) -> list[Job]:
    """The jobs of a run whose methods alternate request by request. Fixed mode: every prompt
    once per repeat. Poisson mode: arrivals of a seeded Poisson process (per repeat), each
    taking the next prompt (cycling; ids get ``~k`` on reuse)."""
    jobs = []
    for repeat in range(config.get("run.repeats")):
        if config.get("load.mode") == "poisson":
            duration = config.get("load.duration")
            count = config.get("workload.num_prompts") if duration is None else None
            if duration is None and count is None:
                count = len(prompts)
            arrivals = poisson_arrivals(config.get("load.rate"), config.get("workload.seed") + repeat, duration, count)
            for i, at in enumerate(arrivals):
                prompt = prompts[i % len(prompts)]
                pid = prompt.id if i < len(prompts) else f"{prompt.id}~{i // len(prompts)}"
                jobs.append(Job(prompt, pid, repeat, at))
        else:
            jobs.extend(Job(p, p.id, repeat) for p in prompts)
    return jobs
