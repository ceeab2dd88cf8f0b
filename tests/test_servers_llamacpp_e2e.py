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


def _write_config(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def test_a_server_killed_mid_run_fails_what_it_left_and_resume_finishes(llama_server, stories_gguf, shared_data,
                                                                        tmp_path):
    """Issue #18 item 6: the server dies (SIGKILL from here) after its first answers: the
    requests in flight and after become failed records with one line each, the run stops with
    exit code 1 and one line, nothing measured is lost, and --resume finishes against a new server."""
    import json
    import signal
    import time

    import psutil

    config = _config(stories_gguf, shared_data / "spec_bench" / "question.jsonl")
    config["workload"]["num_prompts"] = 12
    config["generation"]["max_tokens"] = 64
    config["load"] = {"mode": "poisson", "rate": [3]}
    config["run"]["methods"] = ["target"]
    config_path = _write_config(tmp_path / "kill.yaml", config)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-m", "specdec", "bench", "--config", str(config_path), "--output-dir",
                              str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
    responses = out / "responses.jsonl"
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and child.poll() is None:
        if responses.is_file() and responses.read_text().count("\n") >= 2:
            for process in psutil.Process(child.pid).children(recursive=True):
                if "llama-server" in process.name():
                    process.send_signal(signal.SIGKILL)
                    killed = process.pid
        time.sleep(0.05)
    _, stderr = child.communicate(timeout=120)
    assert killed is not None, f"the run ended before the server could be killed: {stderr[-1500:]}"
    assert child.returncode == 1, stderr[-1500:]
    error_lines = [line for line in stderr.splitlines() if "stopped during the run" in line]
    assert len(error_lines) == 1 and "--resume" in error_lines[0]
    assert "Traceback" not in stderr
    records = [json.loads(line) for line in responses.read_text().splitlines()]
    ok = [r for r in records if r["ok"]]
    failed = [r for r in records if not r["ok"]]
    assert len(ok) >= 2 and failed, "answers before the kill are kept, the rest failed"
    assert all(r["engine_stopped"] and "\n" not in r["error"] for r in failed)
    assert (out / "metrics.json").is_file()  # the aggregates of what was measured are written

    resumed = subprocess.run([sys.executable, "-m", "specdec", "bench", "--resume", "--output-dir", str(out),
                              "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["summary"]["methods"]["target@3"]
    assert row["requests_sent"] == 12 and row["failed"] == 0 and row["requests"] == 12
    kept = {r["key"]: r for r in metrics["records"]}
    for record in ok:  # measured before the kill: kept as they were, not run again
        assert kept[record["key"]]["finished_utc"] == record["finished_utc"]


def test_a_request_the_server_refuses_fails_that_request_only(llama_server, stories_gguf, tmp_path):
    """An HTTP error on one request (a prompt longer than the server's context) fails it alone."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "short", "prompt": "Once upon a time"}\n'
                       '{"id": "long", "prompt": "' + "the cat sat on the mat. " * 400 + '"}\n'
                       '{"id": "short2", "prompt": "The dog ran"}\n')
    config = _config(stories_gguf, prompts)
    config["load"] = {"mode": "fixed"}
    config["run"]["methods"] = ["target"]
    config["workload"]["num_prompts"] = 3
    metrics = BenchmarkRunner(config, tmp_path / "run", progress=False).run()
    by_id = {r["prompt_id"]: r for r in metrics["records"]}
    assert by_id["short"]["ok"] and by_id["short2"]["ok"]
    assert not by_id["long"]["ok"] and by_id["long"]["error"].startswith("HTTP 4")
    assert not by_id["long"].get("engine_stopped")
