"""A harness users can trust with a long run: what is measured is in the run's identity, one run
per folder at a time, a folder with no finished request is reused, a run resumes with its own
config (issue #13, items 1, 3, 4)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specdec.bench import results as R
from specdec.bench.config import load_config
from specdec.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


def config(**flags):
    base = {"model": "m", "workload.benchmark": "p.jsonl"}
    return load_config(None, {**base, **flags}, environ={})


def test_poisson_runs_with_another_prompt_count_are_another_run():
    """Arrivals cycle over the prompts: another count is another schedule."""
    a = config(**{"load.mode": "poisson", "load.rate": 2.0, "workload.num_prompts": 4})
    b = config(**{"load.mode": "poisson", "load.rate": 2.0, "workload.num_prompts": 8})
    assert a.hash() != b.hash()


def test_fixed_runs_may_grow_their_prompt_count_and_verbosity_is_not_identity():
    assert config(**{"workload.num_prompts": 4}).hash() == config(**{"workload.num_prompts": 8}).hash()
    assert config(**{"run.monitor": False}).hash() == config().hash()
    assert config(**{"generation.max_tokens": 64}).hash() != config().hash()


def test_a_folder_whose_run_finished_nothing_is_reused_and_says_so(tmp_path):
    folder = R.ResultsDir(tmp_path / "run")
    folder.prepare(config(**{"generation.max_tokens": 8}))  # a run that then failed: config.yaml, no record
    notes = []
    assert folder.prepare(config(**{"generation.max_tokens": 16}), note=notes.append) == 0
    assert notes and "reusing" in notes[0]


def test_a_folder_with_records_of_another_config_names_resume_and_overwrite(tmp_path):
    folder = R.ResultsDir(tmp_path / "run")
    folder.prepare(config(**{"generation.max_tokens": 8}))
    folder.append({"key": "target|1|1|0", "method": "target"})
    with pytest.raises(UsageError, match="--resume.*--overwrite"):
        folder.prepare(config(**{"generation.max_tokens": 16}))


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from specdec.bench.results import ResultsDir; lock = ResultsDir(sys.argv[2]).lock();"
         "print('held', flush=True); time.sleep(30)", str(REPO), str(tmp_path / "run")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"in use by pid {holder.pid}"):
            R.ResultsDir(tmp_path / "run").lock()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    R.ResultsDir(tmp_path / "run").lock().release()  # free again once the holder is gone


def test_a_turn_that_no_longer_fits_is_skipped_and_the_run_goes_on(tmp_path, stories_path):
    """Issue #13 item 2: the second turn of a conversation outgrows the context; it is recorded
    as skipped with its reason, the other prompts run, the summary counts it, and a resume does
    not trip over it again."""
    from specdec.cli.command import main

    long_turn = " ".join(["the little dog ran to the park"] * 80)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(p) for p in [
        {"question_id": 1, "turns": ["Once upon a time", long_turn]},
        {"question_id": 2, "turns": ["Lily had a ball"]},
    ]) + "\n")
    argv = ["bench", "--model", str(stories_path), "--benchmark", str(prompts), "--output-dir", str(tmp_path / "o"),
            "--max-tokens", "8", "--methods", "target,ngram", "--no-progress", "--no-monitor", "--warmup", "0"]
    assert main(argv) == 0
    records = R.ResultsDir(tmp_path / "o").load_records()
    skipped = [r for r in records if r.get("skipped")]
    assert len(skipped) == 2 and all("context" in r["skipped"] for r in skipped)  # turn 2, both methods
    assert {r["prompt_id"] for r in records if not r.get("skipped")} == {"1", "2"}
    assert all(r.get("prompt") for r in records)  # the prompt text sits beside the output
    metrics = json.loads((tmp_path / "o" / R.METRICS).read_text())
    assert metrics["summary"]["methods"]["target"]["skipped"] == 1
    assert main(argv) == 0  # the resume finds everything done, skips included
