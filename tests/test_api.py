"""The Python API (``specdec.main.SpeculativeDecoder``) does what its docstring promises: the
published one-liner works on a CPU-only machine (warns, runs on CPU), loaded model objects can
be passed with their tokenizer, ``generate`` returns text, token ids and stats, the n-gram
drafter and the autoregressive baseline are reachable, and every bad input is refused with a
``UsageError`` whose message says what is wrong."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import specdec.runners.devices
from conftest import IdTokenizer, make_tiny_llama
from specdec.engine import GenerationResult
from specdec.errors import UsageError
from specdec.main import SpeculativeDecoder

PROMPT = "Once upon a time"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded(stories_path):
    """stories260K as objects: (model, tokenizer)."""
    return AutoModelForCausalLM.from_pretrained(stories_path).eval(), AutoTokenizer.from_pretrained(stories_path)


@pytest.fixture(scope="module")
def decoder(loaded):
    model, tokenizer = loaded
    return SpeculativeDecoder(
        approx_model_name=model, target_model_name=model, tokenizer=tokenizer, gamma=4, max_tokens=20, device="cpu"
    )


# --- the published usage -------------------------------------------------------------------------


def test_published_usage_with_cuda_requested_runs_on_cpu_with_a_warning(stories_path, monkeypatch, capfd):
    monkeypatch.setattr(specdec.runners.devices, "_warned_fallback", set())  # the warning is once per process
    decoder = SpeculativeDecoder(
        approx_model_name=str(stories_path), target_model_name=str(stories_path), gamma=4, max_tokens=20, device="cuda"
    )
    output = decoder.speculative_sample(PROMPT)
    assert isinstance(output, str) and output.strip()
    if not torch.cuda.is_available():
        assert decoder.device.type == "cpu"
        assert next(decoder.target.model.parameters()).device.type == "cpu"
        assert "CUDA" in capfd.readouterr().err


def test_models_load_once_and_calls_reuse_them(decoder):
    target = decoder.target.model
    decoder.speculative_sample(PROMPT)
    decoder.autoregressive_sample(PROMPT)
    assert decoder.target.model is target


def test_loaded_model_objects_with_their_tokenizer_generate_a_result(decoder):
    result = decoder.generate(PROMPT)
    assert isinstance(result, GenerationResult)
    assert isinstance(result.text, str) and result.text
    assert isinstance(result.token_ids, list) and all(isinstance(t, int) for t in result.token_ids)
    assert 0 < len(result.token_ids) <= 20
    assert result.stats["new_tokens"] == len(result.token_ids)
    assert result.stats["mode"] == "speculative" and result.stats["drafter"] == "model"
    assert result.text == decoder.tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_greedy_speculative_and_autoregressive_samples_are_identical(loaded):
    model, tokenizer = loaded
    decoder = SpeculativeDecoder(model, model, tokenizer=tokenizer, gamma=3, max_tokens=20, device="cpu", temperature=0)
    assert decoder.speculative_sample(PROMPT) == decoder.autoregressive_sample(PROMPT)
    baseline = decoder.generate(PROMPT, speculative=False)
    assert baseline.stats["mode"] == "autoregressive" and baseline.stats["draft_forwards"] == 0


def test_seeded_decoder_repeats_its_sampled_output(loaded):
    model, tokenizer = loaded
    decoder = SpeculativeDecoder(model, model, tokenizer=tokenizer, max_tokens=15, device="cpu", seed=99, temperature=1.0)
    first, second = decoder.generate(PROMPT), decoder.generate(PROMPT)
    assert first.token_ids == second.token_ids and first.stats["seed"] == 99


def test_ngram_drafter_needs_no_draft_model(loaded):
    model, tokenizer = loaded
    decoder = SpeculativeDecoder(target_model_name=model, tokenizer=tokenizer, drafter="ngram", max_tokens=20, device="cpu", temperature=0)
    result = decoder.generate(PROMPT)
    assert isinstance(result.text, str) and result.stats["drafter"] == "ngram" and result.stats["draft_forwards"] == 0
    assert result.text == decoder.autoregressive_sample(PROMPT)


def test_adaptive_schedule_is_accepted(loaded):
    model, tokenizer = loaded
    decoder = SpeculativeDecoder(model, model, tokenizer=tokenizer, max_tokens=10, device="cpu", draft_schedule="adaptive")
    assert isinstance(decoder.speculative_sample(PROMPT), str)


def test_generate_overrides_apply_to_one_call_only(decoder):
    assert len(decoder.generate(PROMPT, max_new_tokens=3).token_ids) == 3
    assert decoder.config.max_new_tokens == 20
    assert len(decoder.generate(PROMPT, ignore_eos=True).token_ids) == 20


def test_a_single_stop_string_given_as_a_str_is_one_stop_string(loaded):
    """stop_strings="Lily" means the string "Lily" (as OpenAI's ``stop`` accepts a string),
    not the four one-character stop strings "L", "i", "l", "y"."""
    model, tokenizer = loaded
    decoder = SpeculativeDecoder(model, model, tokenizer=tokenizer, max_tokens=30, device="cpu", temperature=0)
    full = decoder.generate(PROMPT).text  # ", there was a little girl named Lily. She loved ..."
    expected = full[: full.index("Lily")]
    assert decoder.generate(PROMPT, stop_strings="Lily").text == expected
    as_setting = SpeculativeDecoder(model, model, tokenizer=tokenizer, max_tokens=30, device="cpu", temperature=0, stop_strings="Lily")
    assert as_setting.generate(PROMPT).text == expected


def test_empty_prompt_raises_usage_error(decoder):
    from specdec.engine import GenerationConfig

    with pytest.raises(UsageError, match="empty"):
        decoder.engine.generate([], GenerationConfig(max_new_tokens=3))


def test_unknown_generate_override_raises_usage_error(decoder):
    with pytest.raises(UsageError, match="max_tokenz"):
        decoder.generate(PROMPT, max_tokenz=3)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(gamma=0), "gamma"),
        (dict(max_tokens=0), "max_new_tokens"),
        (dict(drafter="medusa"), "medusa"),
        (dict(dtype="float8"), "float8"),
        (dict(device="tpu"), "tpu"),
        (dict(device="cuda:x"), "cuda:x"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(draft_schedule="sometimes"), "sometimes"),
    ],
    ids=lambda value: ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None,
)
def test_bad_settings_raise_usage_error_naming_the_setting(stories_path, settings, words):
    kwargs = dict(approx_model_name=str(stories_path), target_model_name=str(stories_path), device="cpu")
    kwargs.update(settings)
    with pytest.raises(UsageError, match=words):
        SpeculativeDecoder(**kwargs)


def test_missing_model_folder_raises_usage_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(UsageError, match="no-such-model"):
        SpeculativeDecoder(approx_model_name=str(missing), target_model_name=str(missing), device="cpu")


def test_folder_without_a_config_raises_usage_error(tmp_path):
    with pytest.raises(UsageError, match="config.json"):
        SpeculativeDecoder(target_model_name=str(tmp_path), drafter="ngram", device="cpu")


def test_hub_id_while_offline_raises_usage_error_pointing_to_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError) as error:
        SpeculativeDecoder(target_model_name="specdec-tests/no-such-model", drafter="ngram", device="cpu")
    message = str(error.value)
    assert "specdec-tests/no-such-model" in message and "local" in message


def test_missing_target_or_draft_raises_usage_error(stories_path):
    with pytest.raises(UsageError):
        SpeculativeDecoder(approx_model_name=str(stories_path), device="cpu")
    with pytest.raises(UsageError, match="approx_model_name"):
        SpeculativeDecoder(target_model_name=str(stories_path), drafter="model", device="cpu")


def test_model_object_without_tokenizer_raises_usage_error(loaded):
    model, _ = loaded
    with pytest.raises(UsageError, match="tokenizer"):
        SpeculativeDecoder(target_model_name=model, drafter="ngram", device="cpu")


def test_draft_with_a_different_tokenizer_raises_usage_error_naming_the_difference(loaded):
    model, tokenizer = loaded
    other = IdTokenizer(512)
    draft = make_tiny_llama(seed=71, vocab_size=512, layers=1)
    with pytest.raises(UsageError) as error:
        SpeculativeDecoder(approx_model_name=draft, target_model_name=model, tokenizer=tokenizer, draft_tokenizer=other, device="cpu")
    message = str(error.value)
    assert "tokenizer" in message
    target_vocab, draft_vocab = tokenizer.get_vocab(), other.get_vocab()
    differing = [token for token, index in target_vocab.items() if draft_vocab.get(token) != index]
    assert any(repr(token) in message or token in message for token in differing), message


def test_draft_with_a_smaller_vocabulary_raises_usage_error_naming_the_sizes(loaded):
    model, tokenizer = loaded
    with pytest.raises(UsageError, match="512.*500|500.*512"):
        SpeculativeDecoder(
            approx_model_name=make_tiny_llama(seed=72, vocab_size=500, layers=1), target_model_name=model,
            tokenizer=tokenizer, draft_tokenizer=IdTokenizer(500), device="cpu",
        )


def test_prompt_longer_than_the_context_raises_usage_error(decoder):
    long_prompt = "Once upon a time there was a cat. " * 80  # far beyond stories260K's 512 positions
    assert len(decoder.encode(long_prompt)) > 512
    with pytest.raises(UsageError, match="context"):
        decoder.generate(long_prompt)
    with pytest.raises(UsageError, match="context"):
        decoder.autoregressive_sample(long_prompt)


def test_prompt_plus_new_tokens_beyond_the_context_raises_usage_error(decoder):
    prompt = "Once upon a time there was a cat. " * 40
    length = len(decoder.encode(prompt))
    assert length < 512
    with pytest.raises(UsageError, match="context"):
        decoder.generate(prompt, max_new_tokens=512 - length + 1)
