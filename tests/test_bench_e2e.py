"""End-to-end runs on ../shared/models/stories260K: output schema, plots, report, sweep, resume
after a real SIGKILL, Poisson load, multi-turn prompts. Tiny budgets; no timing is asserted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from specdec.bench import BenchmarkRunner
from specdec.cli.bench import main
from specdec.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
OUTPUT_FILES = ["metrics.json", "responses.jsonl", "config.yaml", "benchmark_results.json",
                "benchmark_results_speculative.json", "benchmark_results_target.json", "benchmark_results_gpu.json"]
# One gamma: no speedup-per-gamma line over a single point (the sweep test checks that plot).
PLOTS = ["acceptance_per_position.png", "latency_cdf.png", "tokens_per_s_per_category.png"]
STORIES = [
    "Once upon a time, there was a little girl named Lily.",
    "The cat sat on the mat and looked at the bird.",
    "Tom and his dog went to the park. Tom and his dog",
]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "category": "story" if i else "girl"}) + "\n" for i, p in enumerate(STORIES)))
    return path


def bench_args(stories_path, prompts, out, *extra):
    return ["--model", str(stories_path), "--draft-model", str(stories_path), "--benchmark", str(prompts),
            "--output-dir", str(out), "--max-tokens", "6", "--warmup", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def greedy_run(stories_path, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "greedy"
    code = main("bench", bench_args(stories_path, prompts, out, "--methods", "target,speculative,ngram,hf_generate,hf_prompt_lookup",
                                    "--set", "engine.gpu_memory_utilization=0.9"))
    assert code == 0
    return out


def test_output_files_and_schema(greedy_run):
    for name in OUTPUT_FILES + PLOTS:
        assert (greedy_run / name).is_file(), name
    metrics = json.loads((greedy_run / "metrics.json").read_text())
    assert metrics["schema"] == "specdec.bench/1" and len(metrics["records"]) == 15
    for key in ("packages", "device_name", "cpu_model", "torch_threads", "dtype", "specdec_git"):
        assert key in metrics["manifest"]
    methods = metrics["summary"]["methods"]
    assert list(methods) == ["target", "speculative", "ngram", "hf_generate", "hf_prompt_lookup"]
    spec = methods["speculative"]
    for key in ("speedup", "speedup_ci_low", "speedup_ci_high", "forward_speedup", "tokens_per_s_ratio", "alpha", "tau",
                "draft_acceptance_rate", "accept_at", "accept_upto", "expected_tau", "predicted_speedup", "efficiency",
                "throughput", "ttft_s", "tpot_s", "e2e_s", "peak_mem_bytes", "energy_j", "j_per_token"):
        assert key in spec, key
    assert set(spec["e2e_s"]) >= {"p50", "p90", "p99"}
    # stories260K drafting for itself is lossless and accepts everything in greedy mode
    assert spec["identical"]["all"] and spec["alpha"] == 1.0 and spec["forward_speedup"] > 1
    for label in ("ngram", "hf_generate", "hf_prompt_lookup"):
        assert methods[label]["identical"]["all"], label
    # energy is null on a machine without counters, with the reason recorded
    if spec["energy_j"] is None:
        assert spec["energy_reason"]
    assert any("gpu_memory_utilization" in o for o in metrics["ignored_options"]["target"])
    records = [json.loads(line) for line in (greedy_run / "responses.jsonl").read_text().splitlines()]
    assert len({r["key"] for r in records}) == 15
    assert [r["method"] for r in records[:5]] == list(methods)  # alternating per prompt
    assert all(r["new_tokens"] <= 6 for r in records)
    config = yaml.safe_load((greedy_run / "config.yaml").read_text())
    assert config["generation"]["max_tokens"] == 6
    gpu = json.loads((greedy_run / "benchmark_results_gpu.json").read_text())
    assert gpu["monitor"]["kind"] in ("cpu", "nvml")
    target = json.loads((greedy_run / "benchmark_results_target.json").read_text())
    assert len(target["records"]) == 3


def test_report_rerenders_and_compares(greedy_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("responses.jsonl", "config.yaml"):
        (copy / name).write_bytes((greedy_run / name).read_bytes())
    assert main("report", [str(greedy_run), str(copy)]) == 0
    out = capsys.readouterr().out
    assert "comparison" in out and "speculative" in out
    for name in OUTPUT_FILES + PLOTS:
        assert (copy / name).is_file(), name
    with pytest.raises(UsageError, match="holds no responses.jsonl"):
        main("report", [str(tmp_path)])


def test_same_config_resumes_and_changed_config_is_refused(greedy_run, stories_path, prompts, capsys):
    before = (greedy_run / "responses.jsonl").read_text()
    args = bench_args(stories_path, prompts, greedy_run, "--methods", "target,speculative,ngram,hf_generate,hf_prompt_lookup",
                      "--set", "engine.gpu_memory_utilization=0.9")
    assert main("bench", args) == 0  # everything finished: nothing re-run
    assert (greedy_run / "responses.jsonl").read_text() == before
    with pytest.raises(UsageError, match=r"different config \(changed: generation.max_tokens: 6 -> 5"):
        main("bench", args + ["--max-tokens", "5"])


def test_resume_after_sigkill(stories_path, tmp_path):
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(f"{STORIES[i % 3]} {i}" for i in range(12)) + "\n")
    out = tmp_path / "killed"
    args = ["--model", str(stories_path), "--benchmark", str(prompts), "--output-dir", str(out), "--max-tokens", "8",
            "--methods", "target,ngram", "--warmup", "0", "--no-progress", "--no-monitor"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-m", "specdec.cli.bench", "bench", *args], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    responses = out / "responses.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        if responses.is_file() and responses.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    kept = responses.read_text().splitlines()
    assert 3 <= len(kept) < 24, "the run finished before it could be killed"
    with responses.open("a") as f:  # a kill in the middle of a write leaves half a line
        f.write('{"key": "target|many-12|1|0", "text": "cut sh')
    assert main("bench", args) == 0
    lines = responses.read_text().splitlines()
    assert lines[: len(kept)] == kept  # nothing lost, nothing re-run
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 24


def test_sweep_table_and_best_gamma(stories_path, prompts, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main("sweep", ["--gamma", "1-3", "--model", str(stories_path), "--benchmark", str(prompts), "--output-dir", str(out),
                          "--max-tokens", "6", "--warmup", "0", "--no-progress", "--num-prompts", "2"])
    assert code == 0
    text = capsys.readouterr().out
    for column in ("gamma", "speedup (time)", "speedup (forwards)", "alpha", "tau", "efficiency"):
        assert column in text
    assert "best gamma:" in text or "no gamma pays" in text  # stories260K may lose at every gamma
    sweep = json.loads((out / "sweep.json").read_text())
    assert [row["gamma"] for row in sweep["rows"]] == [1, 2, 3] and sweep["method"] == "ngram"
    assert sweep["best_gamma"] in (1, 2, 3, None)
    assert (out / "sweep.md").read_text().startswith("| gamma | speedup (time) |")
    assert (out / "speedup_tau_per_gamma.png").is_file()


def test_poisson_multiturn_sampling_from_python(stories_path, shared_data, tmp_path):
    runner = BenchmarkRunner(
        {"model": str(stories_path), "generation": {"max_tokens": 4, "temperature": 0.8},
         "workload": {"benchmark": str(shared_data / "spec_bench" / "question.jsonl"), "category": ["writing"], "num_prompts": 2},
         "load": {"rate": 50.0}, "run": {"methods": ["target", "ngram"], "warmup": 0, "monitor": False}},
        output_dir=tmp_path / "poisson", progress=False, environ={})
    metrics = runner.run()
    records = metrics["records"]
    assert metrics["load_mode"] == "poisson" and len(records) == 2 * 2 * 2  # prompts x turns x methods
    assert all(r["queue_wait_s"] >= 0 and r["e2e_s"] >= r["service_e2e_s"] for r in records)
    assert {r["turn"] for r in records} == {1, 2}
    spec = metrics["summary"]["methods"]["ngram"]
    assert spec["identical"] is None and spec["queue_wait_s"]["n"] == 4  # sampling: no identity claim
    second = next(r for r in records if r["turn"] == 2)
    assert second["prompt_tokens"] > next(r for r in records if r["turn"] == 1 and r["prompt_id"] == second["prompt_id"]
                                          and r["method"] == second["method"])["prompt_tokens"]


def test_multiple_configs_into_subfolders(stories_path, prompts, tmp_path, capsys):
    base = {"model": str(stories_path), "generation": {"max_tokens": 3},
            "workload": {"benchmark": str(prompts), "num_prompts": 1}, "run": {"warmup": 0, "methods": ["target", "ngram"]}}
    a, b = tmp_path / "a.yaml", tmp_path / "b.json"
    a.write_text(yaml.safe_dump(base))
    b.write_text(json.dumps({**base, "speculative": {"num_speculative_tokens": 2}}))
    assert main("bench", ["--configs", str(a), str(b), "--output-base", str(tmp_path / "runs"), "--no-progress"]) == 0
    assert (tmp_path / "runs" / "a" / "metrics.json").is_file() and (tmp_path / "runs" / "b" / "metrics.json").is_file()
    assert "comparison" in capsys.readouterr().out
