"""The environment manifest saved with every result: what ran, where, with what."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from specdec.runners.devices import cpu_model_name, device_name

PACKAGES = ("specdec", "torch", "transformers", "accelerate", "numpy", "tokenizers", "nvidia-ml-py", "rich", "matplotlib")


def git_commit(path: Path | None = None) -> dict:
    """The specdec checkout's commit and whether it has uncommitted changes (None outside git)."""
    root = Path(path or Path(__file__).resolve().parents[2])
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest(device: torch.device, dtype: torch.dtype | str | None) -> dict:
    """versions, device and CPU names, threads, dtype, git commit, host, time (UTC)."""
    cuda = torch.cuda.is_available()
    return {
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "packages": versions(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "specdec_git": git_commit(),
    }
