"""Shared fixtures: the real tiny model from ../shared, random small Llamas, a stand-in tokenizer.

Every test runs offline (HF_HUB_OFFLINE=1) on CPU. Tests that need ../shared skip with the
reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPECDEC_SHARED", REPO_ROOT.parent / "shared"))
STORIES = SHARED / "models" / "stories260K"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def stories_path() -> Path:
    """../shared/models/stories260K, or skip when ../shared is not beside the checkout."""
    if not (STORIES / "config.json").is_file():
        pytest.skip(f"{STORIES} is absent (../shared is not beside this checkout)")
    return STORIES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when absent."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (../shared is not beside this checkout)")
    return DATA


class IdTokenizer:
    """A stand-in tokenizer for random models: token i is the text "<i>" (no special tokens
    except the configured EOS). Enough for the engine (decode) and the tokenizer check."""

    def __init__(self, vocab_size: int, eos_token_id: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.pad_token_id = None
        self.chat_template = None

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(f"<{int(i)}>" for i in ids if not (skip_special_tokens and i == self.eos_token_id))

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(self.vocab_size)}

    def __len__(self) -> int:
        return self.vocab_size


def make_tiny_llama(seed: int = 0, vocab_size: int = 64, layers: int = 2, hidden: int = 32, max_positions: int = 256,
                    temperature_scale: float = 1.0):
    """A randomly initialised Llama (float32, eval mode) for algorithm tests; never for speed.

    temperature_scale multiplies the LM head so distributions are peakier (> 1) or flatter (< 1).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    if temperature_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(temperature_scale)
    return model


@pytest.fixture
def tiny_llama():
    """Factory fixture: ``tiny_llama(seed=..., vocab_size=..., layers=...)``."""
    return make_tiny_llama


@pytest.fixture
def one_thread():
    """Run a test on one thread: tiny models run faster on one than on two contended ones."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
