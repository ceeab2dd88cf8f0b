"""Command lines of the serving engines, and the lifecycle of one server process.

:func:`command_line` builds the argv that starts vLLM (``python -m vllm.entrypoints.openai.api_server``
with the Python of scripts/setup-vllm.sh's environment or of ``engine.executable``; ``vllm serve``
when only a ``vllm`` command is found), SGLang
(``python -m sglang.launch_server``) or llama.cpp (``llama-server``) for one method, from the
documented flags of each (checked in tests/test_servers_launchers.py):

- vLLM: ``--speculative-config JSON`` (``method`` / ``model`` / ``num_speculative_tokens`` /
  ``prompt_lookup_max`` / ``prompt_lookup_min``), ``--tensor-parallel-size``,
  ``--gpu-memory-utilization``, ``--max-model-len``, ``--max-num-seqs``, ``--dtype``,
  ``--enforce-eager``; serves ``/health`` and ``/metrics`` (Prometheus) by default. The CPU build's
  environment (``VLLM_CPU_KVCACHE_SPACE``, ``LD_PRELOAD``, thread binding) comes from
  :func:`~specdec.bench.backends.server.settings.vllm_cpu_env`.
- SGLang: ``--speculative-algorithm`` (STANDALONE for a draft model, NGRAM), ``--speculative-draft-model-path``,
  ``--speculative-num-steps`` (gamma), ``--speculative-eagle-topk 1`` (a chain, like the other
  engines), ``--speculative-num-draft-tokens`` (gamma + 1: the verified chain includes its root),
  ``--tp-size``, ``--mem-fraction-static``, ``--context-length``, ``--max-running-requests``,
  ``--enable-metrics`` for ``/metrics``.
- llama.cpp (version 11434.0.0 of the package index): ``--spec-type draft-simple -md DRAFT``
  (``-md`` alone drafts nothing in this version), ``--spec-draft-n-max`` (gamma),
  ``--spec-type ngram-simple`` with ``--spec-ngram-simple-size-n`` (the lookup n-gram) and
  ``--spec-ngram-simple-size-m`` (the drafted m-gram, gamma), ``-c``, ``-np`` with ``-kvu``
  (slots share one KV pool, so ``-c`` is the context of any one request), ``--metrics``.

:class:`ServerProcess` starts the command, streams its output into a log file, waits for the
health endpoint (with a timeout), and stops the whole process group on exit, Ctrl-C or error.
A missing executable, a port in use, a server that dies during start or never becomes healthy
is one :class:`ServerError` line naming the log.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from specdec.errors import SpecdecError
from specdec.bench.backends.server.settings import Drafting, ServerSettings

LLAMA_CPP_VERSION = "11434.0.0"


class ServerError(SpecdecError):
    """A serving engine could not be started, reached or trusted (exit code 1)."""

    exit_code = 1


# --------------------------------------------------------------------------------------------
# command lines
def vllm_speculative_config(drafting: Drafting | None) -> dict | None:
    """vLLM's ``speculative_config`` (the same dict for ``vllm serve`` and ``vllm.LLM``)."""
    if drafting is None:
        return None
    if drafting.kind == "ngram":
        return {"method": drafting.spec_type or "ngram", "num_speculative_tokens": drafting.gamma,
                "prompt_lookup_max": drafting.ngram_max, "prompt_lookup_min": drafting.ngram_min}
    config = {"method": drafting.spec_type or "draft_model", "num_speculative_tokens": drafting.gamma}
    if drafting.draft_model:
        config["model"] = drafting.draft_model
    return config


VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def vllm_python(executable: str | None) -> str | None:
    """The Python that runs vLLM's API server: ``engine.executable`` when it names a Python, the
    interpreter of a ``vllm`` console script it names (its ``#!`` line), else the environment of
    scripts/setup-vllm.sh when it exists; None: use ``vllm serve`` (``engine.executable`` or PATH).

    The module, not ``vllm serve``: the CPU build's ``vllm`` command fails (its distribution is
    named vllm-cpu, and the CLI asks for the metadata of "vllm")."""
    if executable:
        if os.path.basename(executable).startswith("python"):
            return executable
        path = shutil.which(executable) or executable
        try:
            with open(path, "rb") as f:
                first = f.readline().decode(errors="replace")
        except OSError:
            return None
        interpreter = first[2:].strip().split()[0] if first.startswith("#!") and first[2:].strip() else ""
        return interpreter if "python" in os.path.basename(interpreter) else None
    from specdec.bench.backends.server.settings import vllm_env_dir

    python = vllm_env_dir() / "bin" / "python"
    return str(python) if python.exists() else None


def _vllm_argv(s: ServerSettings) -> list[str]:
    python = vllm_python(s.executable)
    if python:
        head = [python, "-m", VLLM_SERVER_MODULE, "--model", s.model]
    else:
        head = [s.executable or "vllm", "serve", s.model]
    argv = head + ["--host", s.host, "--port", str(s.port), "--tensor-parallel-size", str(s.tensor_parallel_size)]
    if s.dtype and s.dtype != "auto":
        argv += ["--dtype", s.dtype]
    if s.enforce_eager:
        argv += ["--enforce-eager"]
    if s.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}"]
    if s.max_model_len is not None:
        argv += ["--max-model-len", str(s.max_model_len)]
    if s.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(s.max_num_seqs)]
    if s.served_model_name:
        argv += ["--served-model-name", s.served_model_name]
    if s.seed is not None:
        argv += ["--seed", str(s.seed)]
    speculative = vllm_speculative_config(s.drafting)
    if speculative is not None:
        argv += ["--speculative-config", json.dumps(speculative, separators=(",", ":"))]
    return argv


def _sglang_argv(s: ServerSettings) -> list[str]:
    argv = [s.executable or sys.executable, "-m", "sglang.launch_server", "--model-path", s.model,
            "--host", s.host, "--port", str(s.port), "--tp-size", str(s.tensor_parallel_size)]
    if s.dtype and s.dtype != "auto":
        argv += ["--dtype", s.dtype]
    if s.gpu_memory_utilization is not None:
        argv += ["--mem-fraction-static", f"{s.gpu_memory_utilization:g}"]
    if s.max_model_len is not None:
        argv += ["--context-length", str(s.max_model_len)]
    if s.max_num_seqs is not None:
        argv += ["--max-running-requests", str(s.max_num_seqs)]
    if s.served_model_name:
        argv += ["--served-model-name", s.served_model_name]
    if s.seed is not None:
        argv += ["--random-seed", str(s.seed)]
    if s.metrics:
        argv += ["--enable-metrics"]
    d = s.drafting
    if d is not None:
        algorithm = d.spec_type or ("NGRAM" if d.kind == "ngram" else "STANDALONE")
        argv += ["--speculative-algorithm", algorithm]
        if d.kind == "model" and d.draft_model:
            argv += ["--speculative-draft-model-path", d.draft_model]
        argv += ["--speculative-num-steps", str(d.gamma), "--speculative-eagle-topk", "1",
                 "--speculative-num-draft-tokens", str(d.gamma + 1)]
    return argv


def _llama_cpp_argv(s: ServerSettings) -> list[str]:
    argv = [s.executable or find_llama_server() or "llama-server", "-m", s.model, "--host", s.host,
            "--port", str(s.port)]
    if s.max_model_len is not None:
        argv += ["-c", str(s.max_model_len)]
    if s.max_num_seqs is not None:
        argv += ["-np", str(s.max_num_seqs), "-kvu"]
    if s.served_model_name:
        argv += ["--alias", s.served_model_name]
    if s.seed is not None:
        argv += ["--seed", str(s.seed)]
    if s.metrics:
        argv += ["--metrics"]
    d = s.drafting
    if d is not None:
        if d.kind == "ngram":
            spec_type = d.spec_type or "ngram-simple"
            argv += ["--spec-type", spec_type]
            if spec_type == "ngram-simple":
                argv += ["--spec-ngram-simple-size-n", str(d.ngram_max), "--spec-ngram-simple-size-m", str(d.gamma)]
        else:
            argv += ["--spec-type", d.spec_type or "draft-simple", "-md", d.draft_model or "",
                     "--spec-draft-n-max", str(d.gamma)]
    return argv


_BUILDERS = {"vllm": _vllm_argv, "sglang": _sglang_argv, "llama.cpp": _llama_cpp_argv}
#: the health endpoint of each engine (200 once the model is loaded)
HEALTH_PATH = {"vllm": "/health", "sglang": "/health", "llama.cpp": "/health"}


def command_line(settings: ServerSettings) -> list[str]:
    """The argv that starts ``settings.engine`` for one method; ``engine.extra_args`` go last
    (so that they override what we set, where the engine lets a later flag win)."""
    return _BUILDERS[settings.engine](settings) + list(settings.extra_args)


def shell_line(argv: list[str]) -> str:
    return shlex.join(argv)


def llama_server_cache() -> Path:
    """Where scripts/build-llama-server.sh builds llama-server."""
    root = Path(os.environ.get("SPECDEC_LLAMA_CACHE") or Path.home() / ".cache" / "specdec" / "llama-server")
    return root / LLAMA_CPP_VERSION


def find_llama_server() -> str | None:
    """``$SPECDEC_LLAMA_SERVER``, the build of scripts/build-llama-server.sh, or ``llama-server``
    on PATH; None when there is none."""
    explicit = os.environ.get("SPECDEC_LLAMA_SERVER")
    if explicit:
        return explicit
    built = llama_server_cache() / "build" / "bin" / "llama-server"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    return shutil.which("llama-server")


# --------------------------------------------------------------------------------------------
# process lifecycle
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as servers bind: connections of the previous method's server in TIME_WAIT do not
        # block the port, a listening socket does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ServerError(f"port {port} on {host} is in use: set engine.port to a free port, or leave it "
                              "unset to pick one") from None


def check_executable(engine: str, argv: list[str]) -> None:
    """One line naming what to install when the engine's executable (or module) is missing."""
    program = argv[0]
    found = shutil.which(program) if os.sep not in program else (program if os.access(program, os.X_OK) else None)
    hints = {
        "vllm": "run bash scripts/setup-vllm.sh (vLLM in its own environment; the CPU build without CUDA), or set "
                "engine.executable to a Python that has vllm (or its vllm command)",
        "sglang": "pip install 'sglang[all]' (a CUDA machine), or set engine.executable to a Python that has it",
        "llama.cpp": "run bash scripts/build-llama-server.sh, put llama-server on PATH, or set engine.executable "
                     "(or SPECDEC_LLAMA_SERVER) to its path",
    }
    if found is None:
        raise ServerError(f"{engine}: executable {program!r} not found: {hints[engine]}")
    if engine == "sglang" and program == sys.executable and importlib.util.find_spec("sglang") is None:
        raise ServerError(f"sglang: the module sglang is not installed in {sys.executable}: {hints['sglang']}")


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


#: an exception line of a Python traceback: ``ValueError: ...`` (possibly after a log prefix)
_ERROR_LINE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Exit)): ")
#: wrappers that only point at the real cause above them
_WRAPPERS = ("Engine core initialization failed", "See root cause above", "Failed core proc")
#: a log line at warning level (vLLM ``WARNING``, llama.cpp `` W ``)
_WARNING = re.compile(r"\bWARNING\b| W ")


def first_error_line(path: Path) -> str:
    """The first line of the log that states an error (``ValueError: ...``), skipping vLLM's
    "Engine core initialization failed. See root cause above" wrapper and warnings that merely
    mention an error (vLLM's ulimit warning names ``OSError: [Errno 24]``); else the last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines()[1:]:  # the first line is our "$ argv"
        m = _ERROR_LINE.search(line)
        if m and not any(w in line for w in _WRAPPERS) and not _WARNING.search(line):
            return line[m.start():].strip()[:300]
    return _last_line(path)


#: vLLM's engine log line that names the dtype it runs (``... dtype=torch.float32, ...``)
_VLLM_DTYPE = re.compile(r"Initializing a V1 LLM engine .*?\bdtype=torch\.(\w+)")
#: SGLang's server args (``dtype='bfloat16'``) and llama.cpp's model type (``file type = F16``)
_OTHER_DTYPE = {"sglang": re.compile(r"\bdtype='(\w+)'"),
                "llama.cpp": re.compile(r"file type\s*=\s*(\S+)")}


def gguf_file_type(path: str | None) -> str | None:
    """A GGUF's own weight type (``general.file_type``: ``Q4_K_M``, ``F16`` ...), read from the
    file: llama-server's log does not print it at its default verbosity. None when unreadable."""
    if not path or not str(path).endswith(".gguf"):
        return None
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(path)).fields.get("general.file_type")
        return LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_") if field else None
    except Exception:  # an unreadable or unusual file: the type stays unknown, never fatal
        return None


def dtype_from_log(engine: str, path: Path) -> str | None:
    """The dtype the server says it runs (vLLM: ``float32``, ``bfloat16``...), None when its log
    does not say (yet)."""
    pattern = _VLLM_DTYPE if engine == "vllm" else _OTHER_DTYPE.get(engine)
    if pattern is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = pattern.search(text)
    if m is None:
        return None
    value = m.group(1)
    return value if engine == "vllm" else value.lower()


def _group_gone(leader: subprocess.Popen, wait_s: float) -> bool:
    """Whether the leader's process group is empty within ``wait_s`` (the leader is reaped on
    the way: its zombie would keep the group alive)."""
    deadline = time.monotonic() + wait_s
    while True:
        leader.poll()
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


class ServerProcess:
    """One server started from ``argv`` with its output in ``log_path``; a context manager that
    waits until ``health_url`` answers 200 and always stops the server on the way out.

    startup_timeout_s: seconds to wait for health (model loading included).
    """

    def __init__(self, engine: str, argv: list[str], host: str, port: int, log_path: Path,
                 startup_timeout_s: float = 600.0, env: dict | None = None) -> None:
        self.engine = engine
        self.argv = argv
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}"
        self.health_url = self.base_url + HEALTH_PATH[engine]
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.env = dict(env or {})  # added to this process's environment for the server
        self.process: subprocess.Popen | None = None
        self._log = None

    def __enter__(self) -> "ServerProcess":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False

    def start(self) -> None:
        check_executable(self.engine, self.argv)
        check_port_free(self.host, self.port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"$ {shell_line(self.argv)}\n".encode())
        for name, value in sorted(self.env.items()):
            self._log.write(f"# env {name}={value}\n".encode())
        self._log.flush()
        # Its own session: Ctrl-C in the terminal reaches us, not the server, and stop() ends
        # the whole group (vLLM and SGLang start worker processes).
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        env={**os.environ, **self.env} if self.env else None)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        delay = 0.1
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(f"{self.engine} exited with code {code} while starting: {first_error_line(self.log_path)!r} "
                                  f"(full log: {self.log_path})")
            try:
                if httpx.get(self.health_url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerError(f"{self.engine} did not answer 200 on {self.health_url} within "
                                  f"{self.startup_timeout_s:g} s (engine.startup_timeout_s); log: {self.log_path}")
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace_s``, until the group is
        empty; idempotent. The group is signalled even when the leader has exited already: vLLM's
        EngineCore and workers outlive a killed API server in it."""
        process = self.process
        if process is not None:
            for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(process.pid, sig)  # start_new_session: the group id is the leader's pid
                except ProcessLookupError:
                    break  # nothing left in the group
                except PermissionError:
                    break
                if _group_gone(process, wait):
                    break
        if self._log is not None:
            self._log.close()
            self._log = None
