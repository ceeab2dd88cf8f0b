"""Prepacked linear layers change the speed of decoding, never its results.

The guarantee: a model from :func:`specdec.prepack.decode_model` gives bit-identical logits
to the plain model, for a prefill and for every forward width a decode or verification step
uses (1 to 17 tokens), so greedy output is token for token the same; the user's model is left
as it was. Checked on a random bf16 Llama (the dtype where packing applies) and, where
../shared is present, on stories260K in bf16.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine import Engine, GenerationConfig
from specdec.runners.cpu_features import prepack_unsupported
from specdec.runners.prepack import MAX_PACKED_ROWS, PackedLinear, decode_model, identical_row_counts, repack
from specdec.engine.sampling import GREEDY

CPU = torch.device("cpu")
VOCAB = 256


def bf16_llama(seed: int = 0):
    return make_tiny_llama(seed=seed, vocab_size=VOCAB, layers=2, hidden=64, max_positions=512).to(torch.bfloat16)


ONEDNN_BF16 = prepack_unsupported(torch.bfloat16)
needs_onednn_bf16 = pytest.mark.skipif(ONEDNN_BF16 is not None, reason=f"oneDNN packing unavailable: {ONEDNN_BF16}")


@pytest.fixture
def fake_packing(monkeypatch):
    """oneDNN's packing replaced by a plain copy and F.linear, so the bookkeeping around it
    (which widths use it, staleness, memory) is tested on every CPU, AVX2 ones included."""
    import specdec.runners.prepack as prepack

    monkeypatch.setattr(prepack, "prepack_unsupported", lambda dtype: None)
    monkeypatch.setattr(prepack, "pack_weight", lambda weight: weight.detach().clone())
    monkeypatch.setattr(prepack, "packed_linear", lambda x, packed, bias: torch.nn.functional.linear(x, packed, bias))
    monkeypatch.setattr(prepack, "identical_row_counts", lambda linear, *a, **k: frozenset(range(1, MAX_PACKED_ROWS + 1)))


def packed_or_skip(model):
    packed, report = decode_model(model)
    if report.packed_layers == 0:
        pytest.skip(f"nothing was packed on this machine: {report.note}")
    return packed, report


def logits_by_chunks(model, prompt: list[int], continuation: list[int]) -> list[torch.Tensor]:
    """Logits of a prefill, then of ``continuation`` fed in chunks of 1, 2, ..., 17 tokens."""
    cache = DynamicCache(config=model.config)
    rows = []
    with torch.inference_mode():
        rows.append(model(input_ids=torch.tensor([prompt]), past_key_values=cache, use_cache=True).logits[0])
        position = len(prompt)
        for width in range(1, MAX_PACKED_ROWS + 1):
            chunk = continuation[position - len(prompt) : position - len(prompt) + width]
            ids = torch.tensor([chunk])
            positions = torch.arange(position, position + len(chunk)).unsqueeze(0)
            out = model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=len(chunk))
            rows.append(out.logits[0])
            position += len(chunk)
    return rows


def test_packed_model_gives_bit_identical_logits_at_every_forward_width():
    model = bf16_llama()
    packed, _ = packed_or_skip(model)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (40,), generator=generator).tolist()
    continuation = torch.randint(0, VOCAB, (MAX_PACKED_ROWS * (MAX_PACKED_ROWS + 1) // 2,), generator=generator).tolist()
    plain = logits_by_chunks(model, prompt, continuation)
    fast = logits_by_chunks(packed, prompt, continuation)
    assert len(plain) == len(fast) == MAX_PACKED_ROWS + 1
    for width, (a, b) in enumerate(zip(plain, fast)):
        assert torch.equal(a, b), f"logits differ for a forward of {width or 'the prefill'} token(s)"


def test_packed_copy_leaves_the_users_model_untouched_and_is_made_once():
    model = bf16_llama(seed=1)
    packed, report = packed_or_skip(model)
    assert packed is not model
    assert all(not isinstance(m, PackedLinear) for m in model.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == report.packed_layers
    # Parameters are shared, not copied: the extra memory is the packed weights alone.
    assert packed.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert decode_model(model)[0] is packed
    assert "where bit-identical" in report.note and f"{report.packed_layers}/{report.total_layers}" in report.note


def test_greedy_output_with_and_without_prepacking_is_the_same_and_matches_transformers():
    model = bf16_llama(seed=2)
    packed_or_skip(model)
    prompt = [5, 9, 200, 31, 7, 5, 9, 200]
    config = GenerationConfig(max_new_tokens=24, sampling=GREEDY, gamma=4, seed=0)
    fast = Engine(model, IdTokenizer(VOCAB), CPU, eos_token_ids=set()).generate(prompt, config)
    plain = Engine(model, IdTokenizer(VOCAB), CPU, eos_token_ids=set(), prepack=False).generate(prompt, config)
    with torch.inference_mode():
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=24, do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    assert fast.token_ids == plain.token_ids == reference


@needs_onednn_bf16
def test_a_packed_layer_uses_the_packed_weight_only_at_checked_widths():
    linear = torch.nn.Linear(32, 16, bias=False).to(torch.bfloat16)
    layer = PackedLinear(linear, frozenset({1}))
    layer.packed_weight = torch.ops.mkldnn._reorder_linear_weight(torch.zeros_like(linear.weight), 5)
    layer._packed_from = (linear.weight, linear.weight._version)
    with torch.inference_mode():
        one_row = layer(torch.ones(1, 1, 32, dtype=torch.bfloat16))
        two_rows = layer(torch.ones(1, 2, 32, dtype=torch.bfloat16))
    assert torch.count_nonzero(one_row) == 0  # the (zeroed) packed weight was used
    assert torch.equal(two_rows, torch.nn.functional.linear(torch.ones(1, 2, 32, dtype=torch.bfloat16), linear.weight))


@needs_onednn_bf16
def test_identity_check_finds_the_widths_where_packing_is_exact():
    linear = torch.nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    rows = identical_row_counts(linear)
    assert rows <= set(range(1, MAX_PACKED_ROWS + 1))
    if not rows:
        pytest.skip("oneDNN's packed kernel never matches F.linear on this CPU")
    assert 1 in rows


def test_float32_models_are_not_packed_and_the_note_says_why():
    model = make_tiny_llama(seed=3, vocab_size=VOCAB)
    packed, report = decode_model(model)
    assert packed is model and report.packed_layers == 0
    assert "float32" in report.note


def test_switched_off_prepacking_runs_the_model_itself():
    model = bf16_llama(seed=4)
    packed, report = decode_model(model, enabled=False)
    assert packed is model and report.note == "prepacking switched off"


def test_too_little_free_memory_skips_packing_with_a_note(monkeypatch, fake_packing):
    import psutil

    class Tiny:
        available = 1024

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    model = bf16_llama(seed=5)
    packed, report = decode_model(model)
    assert packed is model and report.packed_layers == 0
    assert "GiB are free" in report.note


def test_stories260k_in_bf16_packed_equals_plain(stories_path):
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.bfloat16).eval()
    packed, _ = packed_or_skip(model)
    prompt = [1, 365, 251, 263, 431]  # any ids below the 512-token vocabulary
    continuation = [(7 * i + 3) % 500 for i in range(MAX_PACKED_ROWS * (MAX_PACKED_ROWS + 1) // 2)]
    for width, (a, b) in enumerate(zip(logits_by_chunks(model, prompt, continuation),
                                       logits_by_chunks(packed, prompt, continuation))):
        assert torch.equal(a, b), f"stories260K logits differ for a forward of {width or 'the prefill'} token(s)"


# --- every CPU: the fallback, the memo, stale weights ------------------------------------------


def test_a_cpu_without_the_instructions_decodes_on_plain_weights_with_one_note(monkeypatch):
    """AVX2-only CPUs (most cloud VMs and laptops): oneDNN cannot reorder bf16 weights there.
    No traceback: the model itself decodes, and the note says why in one line."""
    import specdec.runners.cpu_features as features

    features._trial_reorder.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("bf16 path needs avx512bw")), raising=False)
    try:
        model = bf16_llama(seed=6)
        packed, report = decode_model(model)
        assert packed is model and report.packed_layers == 0
        assert "lacks the instructions" in report.note and "\n" not in report.note
        engine = Engine(model, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
        assert len(engine.generate([1, 2, 3], GenerationConfig(max_new_tokens=4, sampling=GREEDY)).token_ids) == 4
    finally:
        features._trial_reorder.cache_clear()


def test_native_bf16_detection_can_be_forced_either_way(monkeypatch):
    from specdec.models.loading import resolve_dtype

    monkeypatch.setenv("SPECDEC_CPU_BF16", "0")
    assert resolve_dtype("auto", CPU) == torch.float32
    monkeypatch.setenv("SPECDEC_CPU_BF16", "1")
    assert resolve_dtype("auto", CPU) == torch.bfloat16


def test_a_model_the_user_drops_is_freed_with_its_packed_copy(fake_packing):
    import gc
    import weakref

    for pack in (True, False):  # a packed copy, and "the model itself" (nothing to pack)
        model = bf16_llama(seed=7) if pack else make_tiny_llama(seed=7, vocab_size=VOCAB)
        packed, report = decode_model(model)
        assert (report.packed_layers > 0) == pack
        alive = weakref.ref(model)
        del model, packed
        gc.collect()
        assert alive() is None, "the prepack memo kept a dropped model alive"


def test_packed_weights_follow_in_place_updates_of_the_users_model(fake_packing):
    """Fine-tuning or load_state_dict after the engine was built: decoding uses the new weights."""
    model = bf16_llama(seed=8)
    other = bf16_llama(seed=9)
    engine = Engine(model, IdTokenizer(VOCAB), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=12, sampling=GREEDY)
    before = engine.generate([5, 6, 7], config).token_ids
    model.load_state_dict(other.state_dict())  # copies in place: same tensors, new values
    reference = Engine(other, IdTokenizer(VOCAB), CPU, eos_token_ids=set(), prepack=False)
    assert engine.generate([5, 6, 7], config).token_ids == reference.generate([5, 6, 7], config).token_ids
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # an in-place edit of one layer
    flipped = Engine(model, IdTokenizer(VOCAB), CPU, eos_token_ids=set(), prepack=False).generate([5, 6, 7], config)
    assert engine.generate([5, 6, 7], config).token_ids == flipped.token_ids
    assert before != flipped.token_ids


def test_repack_makes_a_fresh_copy(fake_packing):
    model = bf16_llama(seed=10)
    first, _ = decode_model(model)
    second, report = repack(model)
    assert second is not first and report.packed_layers > 0
    assert decode_model(model)[0] is second
