"""The harness decodes batches (issue #11 item 2): records per request as at batch 1, the same
greedy tokens, the batch's throughput, MAX_BATCH_LENGTH leaving longer prompts out, and a
batch-size sweep with one row per size."""

from __future__ import annotations

import json

import pytest

from specdec.bench import results as R
from specdec.cli.command import main


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in [
        {"question_id": 1, "turns": ["Once upon a time", "And then?"]},
        {"question_id": 2, "turns": ["The little dog ran"]},
        {"question_id": 3, "turns": ["Lily liked to play with her ball in the park every day"]},
    ]) + "\n")
    return path


def run(tmp_path, stories_path, prompts, name, *extra):
    argv = ["bench", "--model", str(stories_path), "--benchmark", str(prompts), "--output-dir", str(tmp_path / name),
            "--max-tokens", "10", "--methods", "target,ngram", "--no-progress", "--no-monitor", "--warmup", "0",
            "--dtype", "float32", *extra]
    assert main(argv) == 0
    return R.ResultsDir(tmp_path / name).load_records()


def test_batched_runs_give_each_request_the_tokens_it_gets_alone(tmp_path, stories_path, prompts):
    single = {r["key"]: r for r in run(tmp_path, stories_path, prompts, "b1")}
    batched = run(tmp_path, stories_path, prompts, "b2", "--batch-size", "2")
    assert {r["key"] for r in batched} == set(single)
    for record in batched:
        assert record["token_ids"] == single[record["key"]]["token_ids"], record["key"]
    first_turns = [r for r in batched if r["turn"] == 1]
    assert {r["batch_size"] for r in first_turns} == {1, 2}  # 3 prompts: a batch of 2, then of 1
    metrics = json.loads((tmp_path / "b2" / R.METRICS).read_text())
    assert metrics["summary"]["methods"]["ngram"]["batch_tokens_per_s"] > 0


def test_max_batch_length_leaves_out_longer_prompts(tmp_path, stories_path, prompts):
    records = run(tmp_path, stories_path, prompts, "cap", "--batch-size", "2", "--set", "engine.max_batch_length=20")
    assert {r["prompt_id"] for r in records} == {"1", "2"}  # prompt 3: 13 tokens + 10 new > 20


def test_batch_size_sweep_prints_one_row_per_size(tmp_path, stories_path, prompts, capsys):
    argv = ["bench", "--model", str(stories_path), "--benchmark", str(prompts), "--output-dir", str(tmp_path / "sweep"),
            "--max-tokens", "8", "--methods", "target,ngram", "--no-progress", "--no-monitor", "--warmup", "0",
            "--batch-sizes", "1,2"]
    assert main(argv) == 0
    sweep = json.loads((tmp_path / "sweep" / "batch_sweep.json").read_text())
    assert [row["batch_size"] for row in sweep["rows"]] == [1, 2]
    assert all(row["speedup"] is not None for row in sweep["rows"])
    assert (tmp_path / "sweep" / "batch-2" / R.RESPONSES).is_file()
    assert "batch-size sweep" in capsys.readouterr().out
