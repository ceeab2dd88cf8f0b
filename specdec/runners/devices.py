"""Device resolution and synchronized clocks.

Every timing in specdec is read through :func:`synchronized_clock` so that asynchronous
devices (CUDA, MPS) have finished their queued work before the clock is read.
"""

from __future__ import annotations

import sys
import time

import torch

from specdec.errors import UsageError

_warned_fallback: set[str] = set()


def resolve_device(requested: str | None, warn=None) -> torch.device:
    """Turn a user's device string into a usable ``torch.device``.

    Accepts ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto`` (CUDA, then MPS, then CPU).
    A CUDA or MPS request on a machine without one falls back to CPU with one warning line
    (printed once per process), as the published command always did. Anything else is a
    :class:`UsageError`.
    """
    warn = warn or _stderr_once
    text = (requested or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise UsageError(f"unknown device {requested!r}: use cpu, cuda, cuda:N, mps or auto")
        if not torch.cuda.is_available():
            warn(f"CUDA was asked for ({requested}) but is not available on this machine; running on CPU")
            return torch.device("cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(
                f"device {requested!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device(text)
    if text == "mps":
        if not _mps_available():
            warn("MPS was asked for but is not available on this machine; running on CPU")
            return torch.device("cpu")
        return torch.device("mps")
    raise UsageError(f"unknown device {requested!r}: use cpu, cuda, cuda:N, mps or auto")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def _stderr_once(message: str) -> None:
    if message not in _warned_fallback:
        _warned_fallback.add(message)
        print(f"specdec: {message}", file=sys.stderr)


def synchronize(device: torch.device) -> None:
    """Wait until all queued work on ``device`` has finished (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def synchronized_clock(device: torch.device) -> float:
    """Seconds from a monotonic clock, read after ``device`` has finished its queued work."""
    synchronize(device)
    return time.perf_counter()


def device_name(device: torch.device) -> str:
    """A human-readable name of the device (GPU model, or the CPU's model name)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model_name()


def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo where available, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
