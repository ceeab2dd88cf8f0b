"""Config precedence (defaults < file < environment < flags) and clear errors for bad input."""

import json

import pytest

from specdec.cli.bench import main
from specdec.bench.config import load_config, parse_set
from specdec.errors import UsageError


def write(path, text):
    path.write_text(text)
    return path


def test_yaml_shape_from_the_issue(tmp_path):
    f = write(tmp_path / "c.yaml", """
model: some/model
generation: {max_tokens: 512, temperature: 0.7, top_p: 1.0}
engine: {tensor_parallel_size: 1, gpu_memory_utilization: 0.9}
speculative: {method: model, draft_model: some/draft, num_speculative_tokens: 5, ngram_max: 4}
""")
    config = load_config(f, environ={})
    assert config["generation.max_tokens"] == 512
    assert config["generation.temperature"] == 0.7
    assert config["engine.gpu_memory_utilization"] == 0.9
    assert config["speculative.num_speculative_tokens"] == 5
    assert config.methods == ["target", "speculative"]


def test_json_config(tmp_path):
    f = write(tmp_path / "c.json", json.dumps({"model": "m", "generation": {"max_tokens": 7}}))
    assert load_config(f, environ={})["generation.max_tokens"] == 7


def test_precedence_file_env_flags(tmp_path):
    f = write(tmp_path / "c.yaml", "model: from-file\ngeneration: {max_tokens: 10}\nspeculative: {num_speculative_tokens: 2}\n")
    env = {"TARGET_MODEL": "from-env", "GENERATION_LENGTH": "20", "GAMMA_VALUE": "3", "NUM_PROMPTS": "5"}
    config = load_config(f, flags={"generation.max_tokens": 30}, environ=env)
    assert config["model"] == "from-env"  # env beats file
    assert config["generation.max_tokens"] == 30  # flag beats env
    assert config["speculative.num_speculative_tokens"] == 3
    assert config["workload.num_prompts"] == 5
    assert config.explicit["generation.max_tokens"] == "command line"


def test_env_switches_and_rate():
    env = {"TARGET_MODEL": "m", "DRAFTER_MODEL": "d", "ENABLE_TARGET": "0", "AUTO_RATE": "2.5", "AUTO_DURATION": "3",
           "ENABLE_GPU_MONITOR": "false", "ENABLE_BATCH": "1", "BATCH_SIZE": "8", "SHAREGPT_DIR": "/x"}
    config = load_config(environ=env)
    assert config.methods == ["speculative"]
    assert config["load.mode"] == "poisson" and config["load.rate"] == 2.5 and config["load.duration"] == 3.0
    assert config["run.monitor"] is False and config["engine.batch_size"] == 8
    assert config["workload.sharegpt_dir"] == "/x"


def test_default_methods_without_draft_model():
    assert load_config(environ={"TARGET_MODEL": "m"}).methods == ["target", "ngram"]


def test_config_hash_changes_with_what_is_measured():
    a = load_config(environ={}, flags={"model": "m"})
    b = load_config(environ={}, flags={"model": "m", "run.monitor": False, "workload.num_prompts": 9})
    c = load_config(environ={}, flags={"model": "m", "generation.max_tokens": 9})
    assert a.hash() == b.hash() != c.hash()


@pytest.mark.parametrize("text, fragment", [
    ("model: m\ngeneration: {max_tokenz: 3}\n", "unknown config key 'generation.max_tokenz'"),
    ("model: m\nbogus: 1\n", "unknown config key 'bogus'"),
    ("model: m\ngeneration: {max_tokens: lots}\n", "generation.max_tokens must be an integer"),
    ("model: m\nload: {mode: bursty}\n", "load.mode must be one of fixed, poisson, constant, burst"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_bad_config_files(tmp_path, text, fragment):
    f = write(tmp_path / "bad.yaml", text)
    with pytest.raises(UsageError) as error:
        load_config(f, environ={})
    assert fragment in str(error.value) and "bad.yaml" in str(error.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(UsageError, match="GENERATION_LENGTH"):
        load_config(environ={"GENERATION_LENGTH": "many"})


def test_set_flag():
    assert parse_set(["generation.top_k=20", "workload.category=a,b"]) == {"generation.top_k": 20, "workload.category": ["a", "b"]}
    with pytest.raises(UsageError, match="unknown key"):
        parse_set(["nope=1"])


def test_cli_usage_errors_before_any_model_loads(tmp_path):
    prompts = write(tmp_path / "p.jsonl", '{"prompt": "hi"}\n')
    with pytest.raises(UsageError, match="no target model"):
        main("bench", ["--benchmark", str(prompts), "--output-dir", str(tmp_path / "o")])
    with pytest.raises(UsageError, match="unknown method 'fast'"):
        main("bench", ["--model", "x", "--benchmark", str(prompts), "--output-dir", str(tmp_path / "o"), "--methods", "target,fast"])
    with pytest.raises(UsageError, match="serving engines are not methods"):
        main("bench", ["--model", "x", "--benchmark", str(prompts), "--output-dir", str(tmp_path / "o"), "--methods", "vllm"])
    with pytest.raises(UsageError, match="needs a draft model"):
        main("bench", ["--model", "x", "--benchmark", str(prompts), "--output-dir", str(tmp_path / "o"), "--methods", "target,speculative"])
    with pytest.raises(UsageError, match="unrecognized arguments"):
        main("bench", ["--frobnicate"])
    with pytest.raises(UsageError, match="no such config file"):
        main("bench", ["--config", str(tmp_path / "missing.yaml")])
    assert main("bench", ["--help"]) == 0


def test_vllm_shaped_speculative_config_maps_onto_the_native_drafters(tmp_path):
    """Issue #13 item 7: the S3 shape runs natively; what cannot be honoured is reported."""
    from specdec.bench.backends.native import native_ignored as _native_ignored

    config_file = tmp_path / "s3.yaml"
    config_file.write_text(
        "model: T\ntensor_parallel_size: 1\nspeculative_config:\n  method: draft_model\n  model: D\n  num_speculative_tokens: 5\n"
        "  draft_tensor_parallel_size: 1\n", encoding="utf-8")
    config = load_config(str(config_file), environ={})
    assert config.get("speculative.draft_model") == "D" and config.get("speculative.method") == "model"
    assert config.get("speculative.num_speculative_tokens") == 5
    assert any("draft_tensor_parallel_size=1" in line for line in _native_ignored(config))
    ngram = tmp_path / "ngram.yaml"
    ngram.write_text("model: T\nspeculative_config: {method: ngram, num_speculative_tokens: 3, prompt_lookup_max: 4, "
                     "prompt_lookup_min: 2}\n", encoding="utf-8")
    config = load_config(str(ngram), environ={})
    assert (config.get("speculative.method"), config.get("speculative.ngram_max"), config.get("speculative.ngram_min")) == ("ngram", 4, 2)


def test_s3_config_drafts_a_constant_length_and_refuses_a_method_it_cannot_run(tmp_path):
    """#13 item 7 follow-up: vLLM drafts num_speculative_tokens every step, so the S3 shape gets
    the constant schedule (not the adaptive default, where gamma is only the first length); a
    method with no native drafter is refused instead of running another drafter under its name."""
    f = tmp_path / "s3.yaml"
    f.write_text("model: T\nspeculative_config: {method: draft_model, model: D, num_speculative_tokens: 5}\n")
    assert load_config(str(f), environ={}).get("speculative.draft_schedule") == "constant"
    f.write_text("model: T\nspeculative: {draft_schedule: adaptive}\nspeculative_config: {model: D}\n")
    assert load_config(str(f), environ={}).get("speculative.draft_schedule") == "adaptive"
    f.write_text("model: T\nspeculative_config: {method: eagle, model: E, num_speculative_tokens: 5}\n")
    with pytest.raises(UsageError, match="method 'eagle' has no native drafter"):
        load_config(str(f), environ={})


def test_quantization_keys_a_model_mapping_and_old_hashes():
    """Issue #19: ``model: {path, quantize}`` / ``--set model.quantize`` / ``speculative.quantize``;
    a config that does not use the new keys hashes as it did before they existed."""
    from specdec.bench.config import load_config, parse_set

    plain = load_config(base={"model": "m", "speculative": {"draft_model": "d"}}, environ={})
    mapped = load_config(base={"model": {"path": "m", "quantize": "int4", "quantize_group": 64},
                               "speculative": {"draft_model": "d", "quantize": "int8"}}, environ={})
    assert mapped.get("model") == "m" and mapped.get("model.quantize") == "int4"
    assert mapped.get("target.quantize_group") == 64 and mapped.get("speculative.quantize") == "int8"
    assert parse_set(["model.quantize=int8"]) == {"target.quantize": "int8"}
    assert mapped.hash() != plain.hash()
    # The digest 7ef8ab8 (before these keys) gave this config: its results folders still resume.
    assert plain.hash() == "5ae3daee74c61b5f"
    assert load_config(base={"model": {"path": "m"}, "speculative": {"draft_model": "d"}}, environ={}).hash() == plain.hash()
    with pytest.raises(UsageError, match="model.quantize|target.quantize"):
        load_config(base={"model": {"path": "m", "quantize": "int3"}}, environ={})
