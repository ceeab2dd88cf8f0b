"""The speed scripts in benchmarks/ run as a user runs them (on stories260K, tiny and fast):
they print their tables and save what they measured. No figure is checked; timings are never
asserted in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT


def run_script(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_vs_transformers_runs_saves_every_run_and_reprints_its_report(stories_path, tmp_path):
    output = tmp_path / "vs.json"
    done = run_script("benchmarks/vs_transformers.py", "--target", str(stories_path), "--draft", str(stories_path),
                      "--prompts", "1", "--ablation-prompts", "1", "--max-new-tokens", "4", "--output", str(output))
    assert done.returncode == 0, done.stderr
    for words in ("autoregressive (target alone)", "gamma 4 constant", "each side's defaults", "efficiency (gamma 4)",
                  "roofline", "where specdec's time goes", "ablations", "specdec plain", "= target greedy"):
        assert words in done.stdout, words
    # The summarization prompts do not fit stories260K's 512-token context: left out by name.
    assert "left out" in done.stderr and "sum-" in done.stderr
    saved = json.loads(output.read_text())
    assert {"ar", "gamma4", "default"} <= set(saved["records"])
    first = saved["records"]["ar"][0]
    assert {"specdec", "transformers", "specdec plain"} == set(first["runs"])
    assert first["runs"]["specdec"]["stats"]["new_tokens"] == 4
    again = run_script("benchmarks/vs_transformers.py", "--report", str(output))
    assert again.returncode == 0, again.stderr
    assert "autoregressive (target alone)" in again.stdout


def test_vs_transformers_bad_model_is_one_line(tmp_path):
    done = run_script("benchmarks/vs_transformers.py", "--target", str(tmp_path / "missing"), "--output", str(tmp_path / "x.json"))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("vs_transformers: error:") and "Traceback" not in done.stderr


@pytest.mark.slow
def test_forward_costs_prints_a_row_per_dtype_threads_and_weights(stories_path):
    done = run_script("benchmarks/forward_costs.py", "--model", str(stories_path), "--dtypes", "float32", "bfloat16",
                      "--threads", "1", "--widths", "1", "3", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("float32", "bfloat16"))]
    kinds = {(row[0], row[1]) for row in rows if len(row) == 5}
    assert ("float32", "plain") in kinds and ("bfloat16", "plain") in kinds
    assert "prepacking is for bfloat16/float16" in done.stdout  # float32 is not packed, and says why
