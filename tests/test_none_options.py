"""transformers writes "no top-k / no top-p limit" as None; specdec accepts that spelling wherever
it accepts the GenerationConfig names (API, command line, bench config), as the same thing as
0 / 1.0: identical sampled output with the same seed."""

from __future__ import annotations

import json

import pytest

from specdec.bench.config import load_config
from specdec.cli.command import build_parser
from specdec.main import SpeculativeDecoder
from specdec.engine.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sampling_params_take_none_as_off():
    assert SamplingParams(top_k=None, top_p=None) == SamplingParams(top_k=0, top_p=1.0)


def test_api_accepts_none_and_samples_as_with_off(stories_path):
    kwargs = dict(approx_model_name=str(stories_path), target_model_name=str(stories_path), gamma=3, max_tokens=12,
                  device="cpu", seed=7, temperature=0.9, dtype="float32")
    with_none = SpeculativeDecoder(**kwargs, top_k=None, top_p=None)
    with_off = SpeculativeDecoder(**kwargs, top_k=0, top_p=1.0)
    assert with_none.generate("Once upon a time").token_ids == with_off.generate("Once upon a time").token_ids


@pytest.mark.parametrize("spelling", ["none", "None", "null", "off"])
def test_command_line_accepts_none(spelling):
    args = build_parser().parse_args(["--num_sample_tok", "2", "--top_k", spelling, "--top_p", spelling])
    assert args.top_k is None and args.top_p is None


def test_bench_config_accepts_null(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"model": "any", "workload": {"benchmark": "prompts.jsonl"}, "generation": {"top_k": None, "top_p": None, "temperature": 0.8}}))
    config = load_config(str(path), environ={})
    config.validate()
    assert config.get("generation.top_k") is None and config.get("generation.top_p") is None
