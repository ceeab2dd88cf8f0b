"""Where target and draft go, for every strategy and GPU count (the count is injected: no GPU
needed); impossible requests are one line and exit code 2; on CPU, same and auto load and run."""

from __future__ import annotations

import json
import re

import pytest
import torch

from specdec.errors import UsageError
from specdec.models.placement import layer_record, plan_placement

GiB = 2**30
CPU = torch.device("cpu")


@pytest.mark.parametrize("gpus", [0, 1, 2, 4])
def test_same_puts_both_models_on_the_requested_device(gpus):
    plan = plan_placement("same", torch.device("cuda:0") if gpus else CPU, gpus=gpus)
    assert plan.target.device == plan.draft.device
    assert plan.target.load_kwargs() == {} and plan.draft.load_kwargs() == {}


def test_auto_spreads_over_visible_gpus_and_is_cpu_without_any():
    assert plan_placement("auto", CPU, gpus=0).target.device == CPU
    plan = plan_placement("auto", torch.device("cuda"), gpus=2)
    assert plan.target.load_kwargs() == {"device_map": "auto"} and "2 visible" in plan.description


@pytest.mark.parametrize("gpus", [2, 4])
def test_separate_puts_target_and_draft_on_the_first_two_gpus(gpus):
    plan = plan_placement("separate", torch.device("cuda"), gpus=gpus)
    assert (str(plan.target.device), str(plan.draft.device)) == ("cuda:0", "cuda:1")


def test_multi_gpu_ratio_gives_each_model_only_its_share_of_the_gpus():
    plan = plan_placement("multi_gpu_ratio", torch.device("cuda"), target_gpus=3, draft_gpus=1, gpus=4,
                          gpu_memory=[80 * GiB] * 4)
    target, draft = plan.target.load_kwargs(), plan.draft.load_kwargs()
    assert target["device_map"] == draft["device_map"] == "auto"
    assert target["max_memory"] == {0: 80 * GiB, 1: 80 * GiB, 2: 80 * GiB, 3: 0, "cpu": 0}
    assert draft["max_memory"] == {0: 0, 1: 0, 2: 0, 3: 80 * GiB, "cpu": 0}
    assert str(plan.draft.device) == "cuda:3"
    assert "target over cuda:0, cuda:1, cuda:2; draft over cuda:3" in plan.description


@pytest.mark.parametrize("strategy, kwargs, gpus, message", [
    ("nonsense", {}, 2, "unknown GPU strategy"),
    ("separate", {}, 1, "needs 2 GPUs"),
    ("separate", {}, 0, "none is visible"),
    ("multi_gpu_ratio", {"target_gpus": 2, "draft_gpus": 1}, 2, "2 + 1 GPUs and 2 are visible"),
    ("multi_gpu_ratio", {"target_gpus": 0, "draft_gpus": 1}, 2, ">= 1"),
    ("multi_gpu_ratio", {}, 0, "none is visible"),
])
def test_impossible_requests_are_one_clear_line(strategy, kwargs, gpus, message):
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        plan_placement(strategy, torch.device("cuda"), gpus=gpus, gpu_memory=[GiB] * gpus, **kwargs)
    assert "\n" not in str(error.value)


def test_cuda_visible_devices_is_what_torch_counts(monkeypatch):
    """The visible count comes from torch, which applies CUDA_VISIBLE_DEVICES."""
    import specdec.models.placement as placement

    monkeypatch.setattr(placement.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(placement.torch.cuda, "device_count", lambda: 1)  # e.g. CUDA_VISIBLE_DEVICES=3
    with pytest.raises(UsageError, match="1 is visible"):
        plan_placement("separate", torch.device("cuda"))


def test_bench_refuses_a_strategy_this_machine_cannot_meet_with_exit_2(tmp_path, stories_path, capsys):
    from specdec.cli.command import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question_id": 1, "turns": ["Once upon a time"]}) + "\n")
    code = main(["bench", "--model", str(stories_path), "--benchmark", str(prompts), "--output-dir", str(tmp_path / "o"),
                 "--device", "cpu", "--set", "engine.gpu_strategy=separate", "--no-progress"])
    assert code == 2
    assert "none is visible" in capsys.readouterr().err


def test_auto_on_cpu_loads_and_the_record_says_where_layers_went(stories_path):
    from specdec.models.loading import load_model

    plan = plan_placement("auto", CPU, gpus=0)
    loaded = load_model(str(stories_path), plan.target.device, "float32", **plan.target.load_kwargs())
    assert layer_record(loaded.model)["device_map"] == {"cpu": "all"}


def test_a_model_spread_past_its_gpus_is_refused_not_run_from_disk():
    from types import SimpleNamespace

    from specdec.models.placement import check_offload

    check_offload(SimpleNamespace(hf_device_map={"model.layers.0": 0, "lm_head": 1}), "target")  # fine
    with pytest.raises(UsageError, match="does not fit its GPUs' share"):
        check_offload(SimpleNamespace(hf_device_map={"model.layers.0": 0, "model.layers.1": "disk"}), "target")


def test_ratios_under_another_strategy_are_reported_as_ignored():
    from specdec.bench.backends.native import native_ignored as _native_ignored
    from specdec.bench.config import load_config

    config = load_config(None, {"model": "m"}, environ={"TARGET_GPU_RATIO": "6", "DRAFTER_GPU_RATIO": "2"})
    assert any("engine.target_gpu_ratio=6" in line for line in _native_ignored(config))
