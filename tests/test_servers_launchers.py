"""Command lines of vLLM, SGLang and llama.cpp against their documented flags, and the life of a
server process: start, health, log, stop (also on Ctrl-C and on error), one-line failures."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from specdec.cli.bench import main as bench_main
from specdec.bench.config import load_config
from specdec.bench.backends.server.launchers import (ServerError, ServerProcess, command_line, find_llama_server, free_port,
                                             vllm_speculative_config)
from specdec.bench.backends.server.settings import server_settings

# Flags as the engines document them: `vllm serve --help` (vLLM docs, engine args),
# `python -m sglang.launch_server --help` (SGLang server arguments), and for llama.cpp the
# common/arg.cpp of the 11434.0.0 source tree we build (also checked against --help below).
DOCUMENTED = {
    "vllm": {"--host", "--port", "--tensor-parallel-size", "--gpu-memory-utilization", "--max-model-len",
             "--max-num-seqs", "--served-model-name", "--seed", "--speculative-config",
             # python -m vllm.entrypoints.openai.api_server (the CPU build's `vllm` command fails)
             "-m", "--model", "--dtype", "--enforce-eager"},
    "sglang": {"--model-path", "--host", "--port", "--tp-size", "--mem-fraction-static", "--context-length",
               "--max-running-requests", "--served-model-name", "--random-seed", "--enable-metrics",
               "--speculative-algorithm", "--speculative-draft-model-path", "--speculative-num-steps",
               "--speculative-eagle-topk", "--speculative-num-draft-tokens"},
    "llama.cpp": {"-m", "--host", "--port", "-c", "-np", "-kvu", "--alias", "--seed", "--metrics", "--spec-type",
                  "-md", "--spec-draft-n-max", "--spec-ngram-simple-size-n", "--spec-ngram-simple-size-m"},
}


def _config(**engine):
    return load_config(base={
        "model": "org/target", "generation": {"seed": 7},
        "speculative": {"draft_model": "org/draft", "num_speculative_tokens": 5, "ngram_max": 4, "ngram_min": 2},
        "engine": {"backend": "openai", **engine}, "workload": {"benchmark": "x.jsonl"},
    }, environ={})


def _argv(engine, method, gamma=None, **extra):
    config = _config(launch=engine, **extra)
    if method == "ngram-spec":
        config.set("speculative.method", "ngram")
        method = "speculative"
    return command_line(server_settings(config, method, gamma, 8123))


def _flags(argv):
    return {a for a in argv[1:] if a.startswith("-") and not a.lstrip("-").replace(".", "").isdigit()}


def test_vllm_command_lines(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECDEC_VLLM_ENV", str(tmp_path / "no-env"))  # no setup-vllm.sh env: `vllm serve`
    assert _argv("vllm", "target") == ["vllm", "serve", "org/target", "--host", "127.0.0.1", "--port", "8123",
                                       "--tensor-parallel-size", "1", "--seed", "7"]
    argv = _argv("vllm", "speculative", tensor_parallel_size=4, gpu_memory_utilization=0.85, max_model_len=4096,
                 max_num_seqs=64)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.85"
    assert argv[argv.index("--max-model-len") + 1] == "4096" and argv[argv.index("--max-num-seqs") + 1] == "64"
    assert json.loads(argv[argv.index("--speculative-config") + 1]) == {
        "method": "draft_model", "model": "org/draft", "num_speculative_tokens": 5}
    ngram = _argv("vllm", "ngram", gamma=3)
    assert json.loads(ngram[ngram.index("--speculative-config") + 1]) == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    eagle = _argv("vllm", "speculative", spec_type="eagle3")
    assert json.loads(eagle[eagle.index("--speculative-config") + 1])["method"] == "eagle3"


def test_sglang_command_lines():
    argv = _argv("sglang", "speculative", gpu_memory_utilization=0.8, max_model_len=2048)
    assert argv[:3] == [sys.executable, "-m", "sglang.launch_server"]
    pairs = dict(zip(argv[3::1], argv[4::1]))
    assert pairs["--model-path"] == "org/target" and pairs["--speculative-algorithm"] == "STANDALONE"
    assert pairs["--speculative-draft-model-path"] == "org/draft" and pairs["--speculative-num-steps"] == "5"
    assert pairs["--speculative-eagle-topk"] == "1" and pairs["--speculative-num-draft-tokens"] == "6"
    assert pairs["--mem-fraction-static"] == "0.8" and pairs["--context-length"] == "2048"
    assert "--enable-metrics" in argv
    ngram = _argv("sglang", "ngram")
    assert ngram[ngram.index("--speculative-algorithm") + 1] == "NGRAM" and "--speculative-draft-model-path" not in ngram


def test_llama_cpp_command_lines(tmp_path):
    exe = str(tmp_path / "llama-server")
    assert _argv("llama.cpp", "target", executable=exe, max_model_len=4096, max_num_seqs=4) == [
        exe, "-m", "org/target", "--host", "127.0.0.1", "--port", "8123", "-c", "4096", "-np", "4", "-kvu",
        "--seed", "7", "--metrics"]
    argv = _argv("llama.cpp", "speculative", executable=exe, extra_args=["-t", "2"])
    # in this llama.cpp, -md alone drafts nothing: --spec-type draft-simple turns the draft on
    assert argv[argv.index("--spec-type"):] == ["--spec-type", "draft-simple", "-md", "org/draft",
                                                "--spec-draft-n-max", "5", "-t", "2"]
    assert "--draft-max" not in argv  # removed in this version (an error there)
    ngram = _argv("llama.cpp", "ngram-spec", executable=exe)
    assert ngram[ngram.index("--spec-type"):] == ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "4",
                                                  "--spec-ngram-simple-size-m", "5"]


@pytest.mark.parametrize("engine", ["vllm", "sglang", "llama.cpp"])
@pytest.mark.parametrize("method", ["target", "speculative", "ngram"])
def test_every_flag_is_documented(engine, method):
    argv = _argv(engine, method, tensor_parallel_size=2, gpu_memory_utilization=0.9, max_model_len=1024,
                 max_num_seqs=8, served_model_name="served")
    assert _flags(argv) - {"-m" if engine != "llama.cpp" else ""} <= DOCUMENTED[engine] | {"serve"}


def test_llama_cpp_flags_against_the_built_server():
    binary = find_llama_server()
    if binary is None:
        pytest.skip("no llama-server (bash scripts/build-llama-server.sh builds one)")
    help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60).stdout
    for flag in DOCUMENTED["llama.cpp"]:
        assert flag in help_text.split() or f"{flag}," in help_text, flag
    assert "draft-simple" in help_text and "ngram-simple" in help_text


def test_speculative_config_of_the_baseline_is_none():
    assert vllm_speculative_config(None) is None


def test_dry_run_prints_the_command_lines(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""\
        model: {tmp_path}/t.gguf
        speculative: {{draft_model: {tmp_path}/d.gguf, num_speculative_tokens: 3}}
        engine: {{backend: openai, launch: llama.cpp, executable: /opt/llama-server, port: 9001}}
        workload: {{benchmark: x.jsonl}}
        run: {{methods: [target, speculative, "speculative:gamma=6"]}}
        """))
    for name in ("t.gguf", "d.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    assert bench_main("bench", ["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"target: /opt/llama-server -m {tmp_path}/t.gguf --host 127.0.0.1 --port 9001 --seed 0 --metrics"
    assert out[1].endswith(f"--spec-type draft-simple -md {tmp_path}/d.gguf --spec-draft-n-max 3")
    assert out[2].startswith("speculative:gamma=6: ") and out[2].endswith("--spec-draft-n-max 6")


# --------------------------------------------------------------------------------------------
HEALTHY = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a):
        print("GET", self.path, flush=True)
print("listening", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def _process(tmp_path, script, port, timeout=30.0):
    return ServerProcess("llama.cpp", [sys.executable, "-c", script, str(port)], "127.0.0.1", port,
                         tmp_path / "logs" / "server.log", startup_timeout_s=timeout)


def test_server_starts_logs_and_stops(tmp_path):
    port = free_port()
    with _process(tmp_path, HEALTHY, port) as server:
        assert server.running and server.base_url == f"http://127.0.0.1:{port}"
        pid = server.process.pid
    assert not server.running
    log = (tmp_path / "logs" / "server.log").read_text()
    assert log.startswith("$ ") and "listening" in log and "GET /health" in log
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_server_is_stopped_on_ctrl_c(tmp_path):
    server = _process(tmp_path, HEALTHY, free_port())
    with pytest.raises(KeyboardInterrupt):
        with server:
            raise KeyboardInterrupt
    assert not server.running


def test_a_server_that_dies_while_starting_is_one_line(tmp_path):
    server = _process(tmp_path, "print('error: model file not found'); raise SystemExit(3)", free_port())
    with pytest.raises(ServerError) as error:
        with server:
            pass
    message = str(error.value)
    assert message.startswith("llama.cpp exited with code 3 while starting: 'error: model file not found'")
    assert "\n" not in message and str(tmp_path / "logs" / "server.log") in message


def test_a_server_that_never_gets_healthy_times_out_and_is_stopped(tmp_path):
    server = _process(tmp_path, "import time; time.sleep(60)", free_port(), timeout=0.5)
    with pytest.raises(ServerError, match=r"did not answer 200 on http://127.0.0.1:\d+/health within 0.5 s"):
        with server:
            pass
    assert not server.running


def test_missing_executable_and_port_in_use(tmp_path):
    missing = ServerProcess("llama.cpp", [str(tmp_path / "no-such-llama-server")], "127.0.0.1", free_port(),
                            tmp_path / "log")
    with pytest.raises(ServerError, match=r"llama.cpp: executable .*no-such-llama-server' not found: run bash "
                                          r"scripts/build-llama-server.sh"):
        missing.start()
    with pytest.raises(ServerError, match=r"vllm: executable 'no-such-vllm-here' not found: run bash "
                                          r"scripts/setup-vllm.sh"):
        ServerProcess("vllm", ["no-such-vllm-here", "serve"], "127.0.0.1", free_port(), tmp_path / "log").start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is in use"):
            _process(tmp_path, HEALTHY, port).start()


def test_cli_missing_server_is_one_line_and_exit_code_1(tmp_path, capsys):
    from specdec.cli.command import main

    (tmp_path / "t.gguf").write_bytes(b"GGUF")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tmp_path}/t.gguf\nengine: {{backend: openai, launch: llama.cpp, executable: "
                      f"{tmp_path}/no-llama-server}}\nworkload: {{benchmark: {tmp_path}/p.jsonl}}\n"
                      "run: {methods: [target], monitor: false}\n")
    code = main(["bench", "--config", str(config), "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith(f"specdec: error: llama.cpp: executable '{tmp_path}/no-llama-server' not found")


# --------------------------------------------------------------------------------------------
# vLLM's CPU build (issue #18)
def _fake_env(tmp_path, preload="LD_PRELOAD=/env/lib/libiomp5.so:/lib/libtcmalloc_minimal.so.4"):
    env = tmp_path / "vllm-env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").write_text("")
    (env / "specdec-vllm.env").write_text(preload + "\n")
    return env


def test_vllm_runs_the_api_server_module_of_the_setup_env(monkeypatch, tmp_path):
    env = _fake_env(tmp_path)
    monkeypatch.setenv("SPECDEC_VLLM_ENV", str(env))
    argv = _argv("vllm", "ngram", dtype="float32", enforce_eager=True)
    assert argv[:5] == [str(env / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", "org/target"]
    assert argv[argv.index("--dtype") + 1] == "float32" and "--enforce-eager" in argv
    assert "--dtype" not in _argv("vllm", "target", dtype="auto") and "--enforce-eager" not in _argv("vllm", "target")
    # engine.executable: a Python, or a vllm console script whose #! names its Python
    assert _argv("vllm", "target", executable="/opt/py/bin/python3.11")[:3] == [
        "/opt/py/bin/python3.11", "-m", "vllm.entrypoints.openai.api_server"]
    script = tmp_path / "vllm"
    script.write_text("#!/opt/venv/bin/python3\nimport sys\n")
    assert _argv("vllm", "target", executable=str(script))[:2] == ["/opt/venv/bin/python3", "-m"]
    script.write_text("#!/bin/sh\nexec true\n")
    assert _argv("vllm", "target", executable=str(script))[:2] == [str(script), "serve"]
    assert {"-m", "--model", "--dtype", "--enforce-eager"} <= set(_flags(argv)) <= DOCUMENTED["vllm"]
    sglang = _argv("sglang", "target", dtype="bfloat16")
    assert sglang[sglang.index("--dtype") + 1] == "bfloat16"


def test_vllm_cpu_environment(monkeypatch, tmp_path):
    from specdec.bench.backends.server.settings import cpu_thread_bind, vllm_cpu_env

    env_dir = _fake_env(tmp_path)
    monkeypatch.setenv("SPECDEC_VLLM_ENV", str(env_dir))
    config = _config(launch="vllm")
    env, notes = vllm_cpu_env(config, preload=True, cuda=False, environ={})
    assert 1 <= int(env["VLLM_CPU_KVCACHE_SPACE"]) <= 8 and notes == []
    assert env["LD_PRELOAD"] == "/env/lib/libiomp5.so:/lib/libtcmalloc_minimal.so.4"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env  # TP 1: vLLM's own "auto" binding
    assert vllm_cpu_env(config, preload=True, cuda=True, environ={}) == ({}, [])
    # the user's own settings win; keys override
    kept, _ = vllm_cpu_env(config, preload=True, cuda=False, environ={"VLLM_CPU_KVCACHE_SPACE": "3", "LD_PRELOAD": "x"})
    assert "VLLM_CPU_KVCACHE_SPACE" not in kept and "LD_PRELOAD" not in kept
    tp2 = _config(launch="vllm", tensor_parallel_size=2, cpu_kvcache_gib=1.5)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    env, _ = vllm_cpu_env(tp2, preload=False, cuda=False, environ={})
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "1.5", "VLLM_CPU_OMP_THREADS_BIND": "0|1",
                   "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    bound, _ = vllm_cpu_env(_config(launch="vllm", tensor_parallel_size=2, cpu_threads_bind="0-3|4-7"),
                            preload=False, cuda=False, environ={})
    assert bound["VLLM_CPU_OMP_THREADS_BIND"] == "0-3|4-7"
    assert cpu_thread_bind(2, list(range(8))) == "0-3|4-7" and cpu_thread_bind(3, [0, 2, 4, 6, 8, 10]) == "0,2|4,6|8,10"
    with pytest.raises(Exception, match="needs 4 cores, 2 are allowed"):
        cpu_thread_bind(4, [0, 1])
    (env_dir / "specdec-vllm.env").write_text("LD_PRELOAD=\n")  # neither library could be installed
    _, notes = vllm_cpu_env(config, preload=True, cuda=False, environ={})
    assert len(notes) == 1 and "without Intel OpenMP" in notes[0]


def test_server_environment_goes_into_the_log_header(tmp_path):
    port = free_port()
    script = "import os; print('KV', os.environ.get('VLLM_CPU_KVCACHE_SPACE'), flush=True)\n" + HEALTHY
    with ServerProcess("llama.cpp", [sys.executable, "-c", script, str(port)], "127.0.0.1", port,
                       tmp_path / "s.log", env={"VLLM_CPU_KVCACHE_SPACE": "2"}):
        pass
    lines = (tmp_path / "s.log").read_text().splitlines()
    assert "# env VLLM_CPU_KVCACHE_SPACE=2" in lines and "KV 2" in lines


VLLM_START_FAILURE = """\
$ python -m vllm.entrypoints.openai.api_server --model m
(EngineCore pid=12) ERROR 12-03 14:02:11 [core.py:1] EngineCore failed to start.
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: Available memory on node 0 (11.9/16.09 GiB) on startup is less than desired CPU memory utilization
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_start_errors_name_the_first_real_error_and_the_dtype_parser(tmp_path):
    from specdec.bench.backends.server.launchers import dtype_from_log, first_error_line

    log = tmp_path / "v.log"
    log.write_text(VLLM_START_FAILURE)
    assert first_error_line(log).startswith("ValueError: Available memory on node 0")
    # vLLM's ulimit warning names an error it did not have: not the cause
    log.write_text("$ x\n(APIServer pid=1) WARNING 12-03 15:39:55 [system_utils.py:255] Found ulimit of 20000 ... "
                   "`OSError: [Errno 24] Too many open files`. Consider increasing with ulimit -n\n"
                   + VLLM_START_FAILURE.split("\n", 1)[1])
    assert first_error_line(log).startswith("ValueError: Available memory on node 0")
    log.write_text("$ x\nstarting\nsomething odd happened\n")
    assert first_error_line(log) == "something odd happened"
    log.write_text("$ x\nINFO 12-03 [core.py:93] Initializing a V1 LLM engine (v0.32.0) with config: model='m', "
                   "tokenizer='m', dtype=torch.float32, max_seq_len=2048, kv_cache_dtype=auto, seed=0\n")
    assert dtype_from_log("vllm", log) == "float32"
    log.write_text("$ x\nINFO loading\n")
    assert dtype_from_log("vllm", log) is None and dtype_from_log("vllm", tmp_path / "missing") is None
    log.write_text("server_args=ServerArgs(model_path='m', dtype='bfloat16', kv_cache_dtype='auto')\n")
    assert dtype_from_log("sglang", log) == "bfloat16"


ORPHAN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print("child", child.pid, flush=True)
""" + HEALTHY


def test_stop_ends_the_group_even_when_the_leader_is_gone(tmp_path):
    """vLLM's EngineCore outlives a killed API server (and ignores SIGTERM for a while): stop()
    signals the whole group until it is empty."""
    import os
    import re
    import signal
    import time

    port = free_port()
    server = ServerProcess("llama.cpp", [sys.executable, "-c", ORPHAN, str(port)], "127.0.0.1", port, tmp_path / "o.log")
    with server:
        deadline = time.monotonic() + 10
        while not re.search(r"^child \d+$", (tmp_path / "o.log").read_text(), re.M) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(re.search(r"^child (\d+)$", (tmp_path / "o.log").read_text(), re.M).group(1))
        os.kill(server.process.pid, signal.SIGKILL)  # the leader dies, its child lives on in the group
        server.process.wait()
        os.kill(child, 0)
        server.stop(grace_s=0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.process.pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
