"""End to end on a real llama-server: the harness launches it once per method (baseline, then a
draft model with --spec-type draft-simple), drives it with open-loop Poisson load at two rates,
reads its counters, and stops it. Runs when scripts/build-llama-server.sh has built llama-server
(or one is on PATH, or SPECDEC_LLAMA_SERVER names one); skips with the reason otherwise.

The model is ../shared/models/stories260K converted to GGUF with the source tree's
convert_hf_to_gguf.py into the llama-server cache folder (never into the repo); it drafts for
itself, so acceptance is high: what is checked is that the server really drafted."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.bench.runner import BenchmarkRunner
from specdec.bench.backends.server.launchers import ServerError, find_llama_server, llama_server_cache

pytestmark = pytest.mark.slow


def _convert_script() -> Path | None:
    """convert_hf_to_gguf.py of the llama.cpp tree the build script linked (or LLAMA_SRC)."""
    for root in (os.environ.get("LLAMA_SRC"), llama_server_cache() / "llama.cpp"):
        if root and (Path(root) / "convert_hf_to_gguf.py").is_file():
            return Path(root) / "convert_hf_to_gguf.py"
    return None


@pytest.fixture(scope="module")
def llama_server() -> str:
    binary = find_llama_server()
    if binary is None:
        pytest.skip("no llama-server: run bash scripts/build-llama-server.sh (or put llama-server on PATH)")
    return binary


@pytest.fixture(scope="module")
def stories_gguf(stories_path) -> Path:
    out = llama_server_cache() / "gguf" / "stories260K-f32.gguf"
    if out.is_file():
        return out
    script = _convert_script()
    if script is None:
        pytest.skip("no llama.cpp source tree with convert_hf_to_gguf.py (scripts/build-llama-server.sh links it)")
    if importlib.util.find_spec("sentencepiece") is None:
        pytest.skip("convert_hf_to_gguf.py needs sentencepiece for this Llama tokenizer: pip install sentencepiece")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    done = subprocess.run([sys.executable, str(script), str(stories_path), "--outfile", str(tmp), "--outtype", "f32"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    tmp.rename(out)
    return out


def _config(gguf: Path, benchmark: Path, **engine) -> dict:
    return {
        "model": str(gguf),
        "generation": {"max_tokens": 16, "temperature": 0.0, "ignore_eos": True},
        "speculative": {"method": "model", "draft_model": str(gguf), "num_speculative_tokens": 4},
        "engine": {"backend": "openai", "launch": "llama.cpp", "max_model_len": 512, "max_num_seqs": 2,
                   "extra_args": ["-t", "1"], "startup_timeout_s": 120, "request_timeout_s": 120, **engine},
        "workload": {"benchmark": str(benchmark), "num_prompts": 4, "max_turns": 1, "chat_template": False},
        "load": {"mode": "poisson", "rate": [4, 16], "slo_ttft_ms": 5000},
        "run": {"methods": ["target", "speculative"], "warmup": 1, "monitor": False, "bootstrap": 0},
    }


def test_llama_server_baseline_and_draft_under_open_loop_load(llama_server, stories_gguf, shared_data, tmp_path):
    out = tmp_path / "run"
    metrics = BenchmarkRunner(_config(stories_gguf, shared_data / "spec_bench" / "question.jsonl"), out,
                              progress=False).run()
    rows = metrics["summary"]["methods"]
    assert list(rows) == ["target@4", "speculative@4", "target@16", "speculative@16"]
    for label, row in rows.items():
        assert row["requests_sent"] == 4 and row["failed"] == 0 and row["requests"] == 4, label
        assert row["new_tokens"] == 64 and row["throughput"] > 0 and row["ttft_s"]["p50"] is not None
    for label in ("speculative@4", "speculative@16"):
        row = rows[label]
        assert row["steps"] > 0 and row["proposed"] > 0, "the server must really draft"
        assert row["tau"] > 1 and row["alpha"] is not None and len(row["accept_at"]) == 4
        assert row["acceptance_source"].startswith("llama.cpp speculation counters")
        assert row["speedup"] is not None  # paired with target at the same rate
    assert rows["target@4"].get("alpha") is None  # the baseline drafts nothing and claims nothing
    logs = sorted(p.name for p in (out / "server-logs").iterdir())
    assert logs == ["speculative.log", "target.log"]
    assert "--spec-type draft-simple" in (out / "server-logs" / "speculative.log").read_text().splitlines()[0]


def test_a_draft_that_does_not_draft_is_an_error(llama_server, stories_gguf, shared_data, tmp_path):
    # --spec-type none with -md: the draft model loads but nothing is drafted (as -md alone does here)
    config = _config(stories_gguf, shared_data / "spec_bench" / "question.jsonl", spec_type="none")
    config["run"]["methods"] = ["speculative"]
    with pytest.raises(ServerError, match=r"speculative@4: llama.cpp reported 0 drafts although a draft was configured"):
        BenchmarkRunner(config, tmp_path / "run", progress=False).run()
