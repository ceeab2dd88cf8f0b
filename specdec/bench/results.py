"""The output directory: files, resume, and the config check.

``responses.jsonl`` is the record of truth: one JSON line per finished request, appended,
flushed and fsynced as it finishes, keyed by (method, prompt id, turn, repeat). Everything else
(metrics.json, benchmark_results*.json, plots) is derived from it and rewritten at the end of a
run or by ``specdec report``. A line cut short by a kill is dropped on the next start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from specdec.errors import UsageError

RESPONSES = "responses.jsonl"
CONFIG = "config.yaml"
METRICS = "metrics.json"
RESULTS = "benchmark_results.json"
RESULTS_SPECULATIVE = "benchmark_results_speculative.json"
RESULTS_TARGET = "benchmark_results_target.json"
RESULTS_GPU = "benchmark_results_gpu.json"
DERIVED = (METRICS, RESULTS, RESULTS_SPECULATIVE, RESULTS_TARGET, RESULTS_GPU)
HASH_PREFIX = "# config_hash: "


def record_key(method: str, prompt_id, turn: int, repeat: int) -> str:
    return f"{method}|{prompt_id}|{turn}|{repeat}"


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_json(path: Path, data) -> None:
    """Write ``data`` as JSON atomically (temp file, then rename): a kill leaves the old file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=_json_default, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


class ResultsDir:
    """One run's output folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def responses(self) -> Path:
        return self.file(RESPONSES)

    def stored_hash(self) -> str | None:
        config = self.file(CONFIG)
        if not config.is_file():
            return None
        first = config.read_text(encoding="utf-8").splitlines()[:1]
        return first[0][len(HASH_PREFIX):].strip() if first and first[0].startswith(HASH_PREFIX) else None

    def stored_config(self) -> dict | None:
        config = self.file(CONFIG)
        return yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None

    def prepare(self, config, overwrite: bool = False, note=None) -> int:
        """Create the folder, or check that it holds a run of the same config (resume).

        Returns the number of finished records found. A different config is a UsageError
        unless ``overwrite`` (which deletes the earlier results first) or the folder holds no
        finished request (a run that failed before its first record: reused, and ``note``
        says so).
        """
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--output-dir {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        has_results = bool(self.load_records(repair=False)) if self.responses.is_file() else False
        stored = self.stored_hash()
        if overwrite:
            self.clear()
        elif has_results and stored is None:
            raise UsageError(f"{self.path} holds {RESPONSES} but no {CONFIG}: cannot tell which config made it; "
                             "pass --overwrite to start afresh or pick another --output-dir")
        elif stored is not None and stored != config.hash():
            if has_results:
                changed = _changed_keys(self.stored_config() or {}, config.to_dict())
                raise UsageError(f"{self.path} holds results of a different config (changed: {', '.join(changed) or 'methods'}); "
                                 "pass --resume to continue it with its own config, --overwrite to replace it, "
                                 "or pick another --output-dir")
            if note is not None:
                note(f"reusing {self.path}: its {CONFIG} is from a run that finished no request")
        self.file(CONFIG).write_text(f"{HASH_PREFIX}{config.hash()}\n" + config.to_yaml(), encoding="utf-8")
        return len(self.load_records(repair=True))

    def lock(self):
        """Take the folder for this process (a maintained file lock), or raise a UsageError
        naming the process that holds it. Returns the lock; release it when the run ends."""
        import socket
        import sys
        from datetime import datetime, timezone

        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.file(".lock")))
        owner = self.file(".lock.owner")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = owner.read_text(encoding="utf-8").strip() if owner.is_file() else "another process"
            raise UsageError(f"{self.path} is in use by {holder}: wait for that run to end or pick another "
                             "--output-dir") from None
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv[:3])}), since "
                         f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n", encoding="utf-8")
        return lock

    def clear(self) -> None:
        for name in (RESPONSES, CONFIG, *DERIVED):
            self.file(name).unlink(missing_ok=True)
        for png in self.path.glob("*.png"):
            png.unlink()

    def load_records(self, repair: bool = False) -> list[dict]:
        """Every complete record of responses.jsonl, the last one of each key (a request that
        failed because its engine stopped is sent again on resume, and the new record stands for
        it). A last line cut short by a kill is dropped (and, with ``repair``, cut from the file
        so that appending continues cleanly)."""
        if not self.responses.is_file():
            return []
        data = self.responses.read_bytes()
        records, good_end, offset = [], 0, 0
        for raw in data.splitlines(keepends=True):
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break  # partial last line
            text = raw.strip()
            if text:
                try:
                    records.append(json.loads(text))
                except json.JSONDecodeError:
                    if offset < len(data):
                        raise UsageError(f"{self.responses}: line {len(records) + 1} is not valid JSON and is not "
                                         "the last line; the file was edited by hand? fix or delete that line") from None
                    break
            good_end = offset
        if repair and good_end < len(data):
            with self.responses.open("r+b") as f:
                f.truncate(good_end)
        last = {record.get("key"): index for index, record in enumerate(records)}
        return [record for index, record in enumerate(records) if last[record.get("key")] == index]

    def append(self, record: dict) -> None:
        """Append one record and make it durable (flush + fsync) before returning."""
        line = json.dumps(record, default=_json_default, allow_nan=False) + "\n"
        with self.responses.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def write(self, name: str, data) -> None:
        write_json(self.file(name), data)

    def read(self, name: str):
        path = self.file(name)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    from specdec.bench.config import HASH_EXEMPT

    exempt = set(HASH_EXEMPT)
    if ((new.get("load") or {}).get("mode") or "fixed") != "fixed" and not prefix:
        exempt.discard("workload.num_prompts")  # under load it is part of the run's identity
    return [c for c in changed if c.split(":")[0] not in exempt]

