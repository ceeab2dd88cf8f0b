"""The truncated draft head (FR-Spec, specdec.draft_head): it scores exactly the ids it should,
leaves the model it was built from untouched, and greedy speculative output with it is still
token for token the target's. (Its sampled output keeps the target's distribution:
tests/test_distribution.py, test_draft_scoring_a_subset_of_the_vocabulary_keeps_the_target_distribution.)
"""

from __future__ import annotations

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.runners.draft_head import SubsetHead, with_subset_head
from specdec.engine.drafters import DraftLengthPolicy, ModelDraft
from specdec.engine import Engine, GenerationConfig
from specdec.engine.sampling import GREEDY
from test_engine_lossless import hf_greedy, noisy_copy

CPU = torch.device("cpu")
VOCAB = 64
PROMPT = [3, 17, 42, 8, 3, 17, 42, 8, 3, 17]
NEW_TOKENS = 30

pytestmark = pytest.mark.usefixtures("one_thread")


def test_subset_head_scores_the_static_and_extra_ids_and_nothing_else():
    linear = torch.nn.Linear(16, VOCAB, bias=False)
    weight = linear.weight.detach()
    head = SubsetHead(linear, torch.arange(8))
    head.set_extra([40, 3, 41, 99])  # 3 is already static, 99 is outside the vocabulary
    hidden = torch.randn(1, 2, 16)
    logits = head(hidden)
    full = hidden @ weight.T
    scored = list(range(8)) + [40, 41]
    assert logits.shape == (1, 2, VOCAB) and head.scored == 10
    assert torch.allclose(logits[..., scored], full[..., scored])
    others = [i for i in range(VOCAB) if i not in scored]
    assert torch.isinf(logits[..., others]).all() and (logits[..., others] < 0).all()
    head.set_extra([])  # the next generation's prompt replaces the extras
    assert head.scored == 8 and torch.isinf(head(hidden)[..., 40]).all()


@pytest.mark.parametrize("fmt", ["int8", "w8a8"])
def test_a_quantized_head_keeps_its_own_logits_on_the_subset(fmt):
    """A quantized draft (--quantize) keeps the subset head: its rows are repacked with their
    quantized values, so the subset's logits are the quantized head's to the bit."""
    from specdec.runners.kernels import KernelBuildError, QuantLinear

    linear = torch.nn.Linear(32, 4 * VOCAB, bias=False)
    try:
        quantized = QuantLinear.from_linear(linear, fmt=fmt)
    except KernelBuildError as error:
        pytest.skip(f"the quantized kernels cannot be built here: {error}")
    model = make_tiny_llama(seed=0, vocab_size=4 * VOCAB)
    model.lm_head = quantized
    built = with_subset_head(model, size=VOCAB, keep_ids=[200])
    assert built is not None, "a quantized head must get a subset head, not fall back to the full one"
    _, head = built
    head.set_extra([150, 3])
    hidden = torch.randn(1, 3, 32)
    logits, full = head(hidden), quantized(hidden)
    scored = list(range(VOCAB)) + [150, 200]
    assert torch.equal(logits[..., scored], full[..., scored])
    assert torch.isinf(logits[..., 100]).all()


def test_small_vocabularies_keep_the_whole_head():
    model = make_tiny_llama(seed=0, vocab_size=VOCAB)
    assert with_subset_head(model, size=32) is None  # 64 is not more than twice 32


def test_the_model_itself_keeps_its_full_head():
    model = make_tiny_llama(seed=0, vocab_size=VOCAB)
    head = model.lm_head
    clone, subset = with_subset_head(model, size=8, keep_ids=[63])
    assert model.lm_head is head and isinstance(clone.lm_head, SubsetHead) and clone.lm_head is subset
    assert clone.model is model.model  # the body is shared, not copied
    assert 63 in subset.static_ids.tolist()


@pytest.mark.parametrize("gamma", [1, 4])
@pytest.mark.parametrize("draft_kind", ["noisy copy of the target", "the target itself"])
def test_greedy_output_with_a_truncated_draft_head_equals_the_targets(gamma, draft_kind):
    target = make_tiny_llama(seed=1, vocab_size=VOCAB, layers=2)
    draft = noisy_copy(target, seed=3, scale=0.3) if draft_kind == "noisy copy of the target" else target
    reference = hf_greedy(target, PROMPT, NEW_TOKENS)
    drafter = ModelDraft(draft, VOCAB, DraftLengthPolicy("constant"), draft_vocab=12)
    assert drafter.subset_head is not None
    engine = Engine(target, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, sampling=GREEDY, gamma=gamma, seed=0)
    result = engine.generate(PROMPT, config, drafter)
    assert result.token_ids == reference
    # The head scored ids 0..11 and the prompt's; the target's own output goes beyond them,
    # so some drafts must have missed, and the target still produced its own tokens.
    assert drafter.subset_head.scored == 12 + len({t for t in PROMPT if t >= 12})
    assert any(t >= 12 and t not in PROMPT for t in reference)
    assert result.stats["rejections"] > 0
