"""benchmarks/gpu.py runs as a user runs it, here on CPU (its smoke path): with random weights
from tiny config folders (--config-only) and with the real stories260K. It prints every arm,
the per-width forward table, the prediction line and the targets, and writes its JSON report.
No figure is checked and no timing asserted; the summary arithmetic is checked on a
hand-made report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from conftest import REPO_ROOT

ARMS = ("hf-dynamic", "hf-static", "sd-ar", "sd-draft", "sd-ngram")
QUICK = ("--prompts", "1", "--max-new-tokens", "4", "--repeats", "1", "--context-tokens", "16")


def run_gpu_script(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "benchmarks/gpu.py", *argv], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def config_folders(tmp_path_factory):
    """Two config-only folders (a 2-layer and a 1-layer Llama, no weights, no tokenizer)."""
    root = tmp_path_factory.mktemp("shapes")
    for name, layers, hidden in (("target", 2, 64), ("draft", 1, 32)):
        (root / name).mkdir()
        config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": hidden,
                  "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "max_position_embeddings": 256, "eos_token_id": 2}
        (root / name / "config.json").write_text(json.dumps(config))
    return root / "target", root / "draft"


def assert_tables(stdout: str) -> None:
    for arm in ARMS:
        assert any(line.startswith(arm + " ") for line in stdout.splitlines()), arm
    for words in ("width 1", "width 5", "width 11", "target   eager", "draft    eager", "target   graph",
                  "Leviathan's prediction", "predicted", "issue #10 targets", "not judged on cpu"):
        assert words in stdout, words


def test_config_only_run_prints_every_table_and_keeps_a_report(config_folders, tmp_path):
    target, draft = config_folders
    report = tmp_path / "gpu.json"
    done = run_gpu_script("--config-only", "--target", str(target), "--draft", str(draft), *QUICK,
                          "--prompt-tokens", "24", "--alpha", "0.7", "--report", str(report))
    assert done.returncode == 0, done.stderr
    assert_tables(done.stdout)
    assert "RANDOM WEIGHTS: shape timing only" in done.stdout
    assert "acceptance here is meaningless" in done.stdout and "0.700 (given)" in done.stdout
    saved = json.loads(report.read_text())
    assert saved["manifest"]["random_weights"] is True
    assert [r["group"] for r in saved["records"]] == ["main", "repeat"]
    for record in saved["records"]:
        assert set(record["runs"]) == set(ARMS)
        assert all(run["new_tokens"] == 4 for run in record["runs"].values())
        assert all(run["syncs"] is None for run in record["runs"].values())  # CPU: not counted, printed n/a
    assert set(saved["forward_costs"]) == {"target", "draft"}
    assert set(saved["forward_costs"]["target"]["eager"]["ms"]) == {"1", "5", "11"}
    assert saved["prediction"]["alpha_given"] and saved["prediction"]["efficiency"] is None


def test_real_weights_run_uses_spec_bench_and_reprints_its_report(stories_path, shared_data, tmp_path):
    report = tmp_path / "gpu.json"
    done = run_gpu_script("--target", str(stories_path), "--draft", str(stories_path), *QUICK, "--report", str(report))
    assert done.returncode == 0, done.stderr
    assert_tables(done.stdout)
    assert "RANDOM WEIGHTS" not in done.stdout and "spec_bench first turns" in done.stdout
    assert "-> efficiency" in done.stdout  # real weights: measured alpha, so measured / predicted is printed
    saved = json.loads(report.read_text())
    assert saved["records"][0]["unit"].startswith("writing-") and saved["records"][-1]["unit"] == "repeat"
    again = run_gpu_script("--show", str(report))
    assert again.returncode == 0, again.stderr
    assert_tables(again.stdout)


def test_a_config_folder_without_weights_asks_for_config_only(config_folders):
    target, draft = config_folders
    done = run_gpu_script("--target", str(target), "--draft", str(draft))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu.py: error:") and "add --config-only" in last
    assert "Traceback" not in done.stderr


# --- the summary arithmetic, on a hand-made report -------------------------------------------------


def _engine_run(tokens_per_s, e2e, steps, syncs, accepted=0, rejections=0, lengths=None, t_target=0.01, t_draft=None,
                decode_s=0.0, draft_decode_s=0.0):
    stats = {"steps": steps, "accepted": accepted, "rejections": rejections, "tau": 1.0 + accepted / steps,
             "proposal_lengths": lengths or {}, "t_target": t_target, "t_draft": t_draft, "c": None,
             "target_prefill_s": 0.0, "draft_prefill_s": 0.0, "target_decode_s": decode_s,
             "draft_decode_s": draft_decode_s, "graph_capture_s": 0.0}
    return {"tokens_per_s": tokens_per_s, "e2e_s": e2e, "new_tokens": 8, "syncs": syncs, "peak_bytes": 2**30,
            "token_ids": [[1] * 8], "stats": [stats]}


def test_summary_arithmetic():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from gpu_summary import summarize
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    manifest = {"arms": ["sd-ar", "sd-draft"], "engine_graphs": True, "gamma": 4, "random_weights": False,
                "alpha_given": None, "c_given": None}
    # sd-ar: 8 steps, 0.10 s e2e of which 0.08 s forwards -> 0.0025 s loop per step = 25% of 0.01 s.
    # sd-draft: 2 steps of 4 drafts, 6 accepted of 8 (2 rejections), c = 0.002 / 0.01 = 0.2.
    record = {"unit": "p", "group": "main", "runs": {
        "sd-ar": _engine_run(80.0, 0.10, 8, 1, decode_s=0.08),
        "sd-draft": _engine_run(100.0, 0.08, 2, 2, accepted=6, rejections=2, lengths={"4": 2}, t_draft=0.002,
                                decode_s=0.04, draft_decode_s=0.016)}}
    out = summarize({"manifest": manifest, "records": [record]})
    arms = out["summary"]["arms"]
    assert arms["sd-ar"]["loop_pct_of_t1"] == pytest.approx(25.0)
    assert arms["sd-ar"]["syncs_per_token"] == pytest.approx(1 / 8)
    assert arms["sd-draft"]["syncs_per_step"] == pytest.approx(1.0)
    assert arms["sd-draft"]["alpha"] == pytest.approx(0.75) and arms["sd-draft"]["c"] == pytest.approx(0.2)
    assert arms["sd-draft"]["vs_sd_ar"][0] == pytest.approx(1.25)
    alpha, gamma, c = 0.75, 4, 0.2
    leviathan = (1 - alpha ** (gamma + 1)) / ((1 - alpha) * (gamma * c + 1))
    assert out["prediction"]["predicted"] == pytest.approx(leviathan)
    assert out["prediction"]["efficiency"] == pytest.approx(1.25 / leviathan)


def test_device_probe_counts_every_sync_warning(monkeypatch):
    """The CUDA-only probe, with torch.cuda stood in for: every sync warning counts (also two
    from one source line, which Python's default filter would show once), other warnings do
    not, and the sync debug mode is put back."""
    import torch

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from gpu import DeviceProbe
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    modes = []
    for name, fake in {"synchronize": lambda device=None: None, "reset_peak_memory_stats": lambda device=None: None,
                       "memory_allocated": lambda device=None: 100, "max_memory_allocated": lambda device=None: 300,
                       "get_sync_debug_mode": lambda: 0, "set_sync_debug_mode": modes.append}.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    box: dict = {}
    with DeviceProbe(torch.device("cuda")).measure(box):
        for _ in range(3):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("something else")
    assert box == {"syncs": 3, "peak_bytes": 300, "start_bytes": 100}
    assert modes == ["warn", 0]
