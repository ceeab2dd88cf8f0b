"""Config of server runs: the new keys, the checks that stop a run before anything starts, the
options a backend reports as ignored, and the mapping to vLLM's offline engine (without vLLM)."""

from __future__ import annotations

import sys

import pytest

from specdec.bench.backends import backend_class, check_methods
from specdec.bench.config import load_config
from specdec.bench.runner import BenchmarkRunner
from specdec.bench.backends.server.load import rates_of
from specdec.bench.backends.vllm_offline import llm_kwargs, sampling_kwargs
from specdec.errors import UsageError


def _config(tmp_path=None, **sections):
    base = {"model": "org/target", "workload": {"benchmark": "x.jsonl"},
            "speculative": {"draft_model": "org/draft", "num_speculative_tokens": 4}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value) if isinstance(value, dict) else base.__setitem__(key, value)
    return load_config(base=base, environ={})


def test_rate_lists_and_server_load_modes():
    config = _config(engine={"backend": "openai", "base_url": "http://h:1"}, load={"rate": [1, 2, 4]})
    assert config.get("load.mode") == "poisson" and rates_of(config) == [1.0, 2.0, 4.0]
    assert rates_of(_config(load={"rate": 3})) == [3.0]
    assert rates_of(_config(load={"mode": "burst"})) == [None]
    assert load_config(flags={"load.rate": "0.5,1"}, environ={}).get("load.rate") == [0.5, 1.0]
    with pytest.raises(UsageError, match=r"load.mode constant needs load.rate > 0"):
        _config(load={"mode": "constant", "rate": [1, 0]}).validate()


@pytest.mark.parametrize("sections, message", [
    ({"engine": {"backend": "openai"}}, "engine.backend openai needs engine.base_url"),
    ({"engine": {"backend": "openai", "base_url": "http://h:1", "launch": "vllm"}}, "not both"),
    ({"engine": {"backend": "openai", "base_url": "h:1"}}, "must start with http://"),
    ({"engine": {"backend": "openai", "base_url": "http://h:1"}, "run": {"methods": ["target", "speculative"]}},
     "engine.base_url is one running server, so a run measures one method"),
    ({"engine": {"backend": "openai", "launch": "vllm"}, "run": {"methods": ["target", "hf_assisted"]}},
     "method hf_assisted: with engine.backend openai the methods are target, speculative and ngram"),
    ({"engine": {"backend": "vllm", "launch": "vllm"}}, "engine.backend vllm runs vLLM in this process"),
    ({"engine": {"backend": "openai", "launch": "llama.cpp"}}, "model: llama.cpp serves .gguf files"),
    ({"engine": {"backend": "openai", "launch": "vllm"}, "load": {"max_concurrency": 0}}, "load.max_concurrency must be >= 1"),
    ({"load": {"rate": [1, 2]}}, "the native backends simulate one rate per run"),
    ({"load": {"mode": "burst"}}, "load.mode burst sends requests concurrently: it needs a server backend"),
    ({"run": {"methods": ["vllm"]}}, "serving engines are not methods"),
])
def test_bad_server_configs_stop_before_anything_starts(sections, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.").replace("(", r"\(")):
        check_methods(_config(**sections))


def test_launch_needs_gguf_files_for_llama_cpp(tmp_path):
    target, draft = tmp_path / "t.gguf", tmp_path / "d.safetensors"
    target.write_bytes(b"GGUF")
    draft.write_bytes(b"x")
    config = _config(model=str(target), speculative={"draft_model": str(draft)},
                     engine={"backend": "openai", "launch": "llama.cpp"})
    with pytest.raises(UsageError, match="speculative.draft_model: llama.cpp serves .gguf files"):
        check_methods(config)
    config.set("run.methods", ["target", "ngram"])
    assert [s.label for s in check_methods(config)] == ["target", "ngram"]


def test_ignored_options_are_reported(tmp_path):
    server = _config(engine={"backend": "openai", "launch": "llama.cpp", "tensor_parallel_size": 2, "prepack": False},
                     speculative={"method": "ngram", "ngram_min": 2})
    spec = check_methods(_config(engine={"backend": "openai", "base_url": "http://h:1"}, run={"methods": ["ngram"]}))[0]
    ignored = backend_class(spec, server).ignored_options(spec, server)
    assert any(i.startswith("engine.prepack=False (the native engine's option)") for i in ignored)
    assert any(i.startswith("engine.tensor_parallel_size=2 (llama.cpp splits layers") for i in ignored)
    assert any(i.startswith("speculative.ngram_min (llama.cpp's n-gram drafting takes no minimum)") for i in ignored)
    native = _config(engine={"max_num_seqs": 8}, load={"slo_ttft_ms": 100})
    spec = check_methods(native)[0]
    ignored = backend_class(spec, native).ignored_options(spec, native)
    assert "engine.max_num_seqs=8 (a server backend's option: set engine.backend openai)" in ignored


def test_vllm_offline_mapping_needs_no_vllm():
    config = _config(engine={"backend": "vllm", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.8,
                             "max_model_len": 4096, "dtype": "bfloat16"},
                     generation={"seed": 3, "max_tokens": 32, "temperature": 0.7, "top_k": 50, "stop_strings": ["###"]})
    specs = {s.label: s for s in check_methods(load_config(base={**config.to_dict(), "run": {
        "methods": ["target", "speculative", "ngram:gamma=6"]}}, environ={}))}
    assert llm_kwargs(config, specs["target"]) == {"model": "org/target", "tensor_parallel_size": 2, "seed": 3,
                                                   "gpu_memory_utilization": 0.8, "max_model_len": 4096,
                                                   "dtype": "bfloat16", "disable_log_stats": False}
    assert llm_kwargs(config, specs["speculative"])["speculative_config"] == {
        "method": "draft_model", "model": "org/draft", "num_speculative_tokens": 4}
    assert llm_kwargs(config, specs["ngram:gamma=6"])["speculative_config"] == {
        "method": "ngram", "num_speculative_tokens": 6, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
    assert sampling_kwargs(config, 11) == {"max_tokens": 32, "temperature": 0.7, "top_p": 1.0, "seed": 11,
                                           "ignore_eos": False, "top_k": 50, "stop": ["###"]}


def test_vllm_offline_without_vllm_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, installed or not
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    config = {"model": "org/target", "engine": {"backend": "vllm"}, "workload": {"benchmark": str(prompts)},
              "run": {"methods": ["target"], "monitor": False}}
    with pytest.raises(UsageError, match=r"^engine.backend vllm needs vLLM in this Python, which does not have it: run "
                                        r"bash scripts/setup-vllm.sh"):
        BenchmarkRunner(config, tmp_path / "run", progress=False).run()


def test_vllm_offline_stat_logging_eager_and_request_times():
    from types import SimpleNamespace

    from specdec.bench.backends.vllm_offline import request_times

    config = _config(engine={"backend": "vllm", "enforce_eager": True, "dtype": "auto"})
    spec = check_methods(load_config(base={**config.to_dict(), "run": {"methods": ["target"]}}, environ={}))[0]
    kwargs = llm_kwargs(config, spec)
    assert kwargs["disable_log_stats"] is False and kwargs["enforce_eager"] is True and "dtype" not in kwargs
    # vLLM V1 RequestStateStats: latency from arrival, *_ts on the engine's monotonic clock
    v1 = SimpleNamespace(metrics=SimpleNamespace(first_token_latency=0.15, first_token_ts=1490.41,
                                                 last_token_ts=1491.83, arrival_time=1796308454.62))
    ttft, e2e = request_times(v1, 9.0)
    assert ttft == 0.15 and abs(e2e - (0.15 + 1.42)) < 1e-9
    off = SimpleNamespace(metrics=SimpleNamespace(first_token_latency=0.0, first_token_ts=0.0, last_token_ts=0.0))
    assert request_times(off, 9.0) == (None, 9.0)  # stat logging off
    old = SimpleNamespace(metrics=SimpleNamespace(arrival_time=10.0, first_token_time=10.5, last_token_time=12.0))
    assert request_times(old, 9.0) == (0.5, 2.0)
    assert request_times(SimpleNamespace(metrics=None), 9.0) == (None, 9.0)


def test_vllm_offline_sets_the_cpu_environment(monkeypatch):
    import os

    from specdec.bench.backends import vllm_offline

    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "LD_PRELOAD"):
        monkeypatch.setenv(name, "x")  # recorded, so that what set_cpu_env sets is removed afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr("specdec.bench.backends.server.settings.has_cuda", lambda: False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    notes = []
    config = _config(engine={"backend": "vllm", "tensor_parallel_size": 2, "cpu_kvcache_gib": 2})
    env = vllm_offline.set_cpu_env(config, notes.append)
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": "0|1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert len(notes) == 1 and "LD_PRELOAD cannot be set inside a running process" in notes[0]
