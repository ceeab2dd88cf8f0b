"""The `specdec` command: the published flags and their aliases work, greedy runs say the two
outputs are identical, and every bad input gives one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from specdec.cli.command import main


def run_json(capsys, *argv: str) -> dict:
    code = main([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_greedy_comparison_is_identical_and_reports_acceptance(capsys, stories_path):
    report = run_json(
        capsys, "--num_sample_tok", "3", "--small_model", str(stories_path), "--big_model", str(stories_path),
        "--prompt", "Once upon a time", "--max_new_tok", "12", "--device", "cpu", "--no-sample",
        "--draft_schedule", "constant",
    )
    assert report["greedy"] is True
    assert report["identical"] is True
    assert report["baseline"]["token_ids"] == report["speculative"]["token_ids"]
    stats = report["speculative"]["stats"]
    assert stats["new_tokens"] == 12
    # Draft == target: every draft is accepted, so the target runs far fewer forwards.
    assert stats["alpha"] == 1.0
    assert stats["target_forwards"] < report["baseline"]["stats"]["target_forwards"]
    assert len(stats["accept_at"]) == 3  # constant schedule: exactly gamma positions
    # c against the baseline's width-1 forward (issue #19 item 8), and the prediction from it.
    assert report["c_basis"] == "width-1 target forward (the baseline run)"
    assert report["c"] == stats["t_draft"] / report["baseline"]["stats"]["t_target"]
    assert report["predicted_speedup"] is not None and report["efficiency"] is not None


def test_default_draft_schedule_is_adaptive_and_grows_past_gamma(capsys, stories_path):
    """Draft == target accepts everything, so the adaptive default lengthens the drafts."""
    report = run_json(
        capsys, "--num_sample_tok", "2", "--small_model", str(stories_path), "--big_model", str(stories_path),
        "--prompt", "Once upon a time", "--max_new_tok", "24", "--device", "cpu", "--no-sample",
    )
    assert report["identical"] is True
    assert len(report["speculative"]["stats"]["accept_at"]) > 2


def test_aliases_map_onto_the_published_flags(capsys, stories_path):
    report = run_json(
        capsys, "--gamma", "2", "--draft_model", str(stories_path), "--model", str(stories_path),
        "--prompt", "Tom had a dog", "--max_new_tokens", "6", "--device", "cpu", "--temperature", "0",
    )
    assert report["gamma"] == 2 and report["max_new_tokens"] == 6
    assert report["greedy"] is True and report["identical"] is True


def test_sampling_with_a_seed_is_reproducible(capsys, stories_path):
    argv = ("--num_sample_tok", "2", "--small_model", str(stories_path), "--big_model", str(stories_path),
            "--prompt", "Lily saw a cat", "--max_new_tok", "16", "--device", "cpu", "--sample", "--seed", "7",
            "--top_k", "20", "--top_p", "0.9")
    first = run_json(capsys, *argv)
    second = run_json(capsys, *argv)
    assert first["greedy"] is False and first["seed"] == 7
    assert first["speculative"]["token_ids"] == second["speculative"]["token_ids"]
    assert first["baseline"]["token_ids"] == second["baseline"]["token_ids"]


def test_ngram_drafter_needs_no_draft_model(capsys, stories_path):
    report = run_json(
        capsys, "--num_sample_tok", "4", "--drafter", "ngram", "--target_model", str(stories_path),
        "--prompt", "the cat sat on the mat. the cat sat on the mat. the cat", "--max_new_tok", "10",
        "--device", "cpu", "--no-sample",
    )
    assert report["drafter"] == "ngram" and report["draft"] is None
    assert report["identical"] is True
    assert report["speculative"]["stats"]["draft_forwards"] == 0


def test_cuda_asked_for_on_a_cpu_machine_runs_on_cpu(capsys, stories_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["--num_sample_tok", "2", "--small_model", str(stories_path), "--big_model", str(stories_path),
                 "--max_new_tok", "4", "--gpu", "0", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["device"] == "cpu"
    assert "not available" in captured.err


def test_table_output_names_speedup_and_identity(capsys, stories_path):
    code = main(["--num_sample_tok", "2", "--small_model", str(stories_path), "--big_model", str(stories_path),
                 "--max_new_tok", "5", "--device", "cpu", "--no-sample"])
    out = capsys.readouterr().out
    assert code == 0
    for words in ("speedup", "alpha", "tau", "per-position acceptance", "identical", "baseline text",
                  "width-1 target forward (the baseline run)", "predicted speedup"):
        assert words in out


def test_prepacking_is_reported_and_can_be_switched_off(capsys, stories_path):
    argv = ("--num_sample_tok", "2", "--small_model", str(stories_path), "--big_model", str(stories_path),
            "--max_new_tok", "6", "--device", "cpu", "--no-sample", "--dtype", "bfloat16")
    on = run_json(capsys, *argv)
    off = run_json(capsys, *argv, "--no-prepack", "--draft_vocab", "0")
    assert [note.split(":")[0] for note in on["prepack"]] == ["target", "draft"]
    assert all("switched off" in note for note in off["prepack"])
    # Prepacking is exact: the same tokens either way.
    assert on["speculative"]["token_ids"] == off["speculative"]["token_ids"] == off["baseline"]["token_ids"]


def _bad(capsys, *argv: str) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.startswith("specdec: error:")]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_missing_gamma_is_one_line(capsys):
    assert "--num_sample_tok" in _bad(capsys)


@pytest.mark.parametrize("flag, value, words", [("--num_sample_tok", "0", "gamma"), ("--max_new_tok", "0", "--max_new_tok"),
                                                   ("--draft_vocab", "-1", "--draft_vocab")])
def test_nonpositive_numbers_are_refused(capsys, flag, value, words):
    argv = {"--num_sample_tok": "3", "--max_new_tok": "5"}
    argv[flag] = value
    assert words in _bad(capsys, *[x for pair in argv.items() for x in pair])


def test_unknown_model_offline_says_how_to_pass_a_local_path(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _bad(capsys, "--num_sample_tok", "2", "--big_model", "no-such-org/no-such-model", "--device", "cpu")
    assert "no-such-org/no-such-model" in line and "local folder" in line


def test_missing_local_folder(capsys):
    assert "no such model folder" in _bad(capsys, "--num_sample_tok", "2", "--big_model", "./nowhere/model", "--device", "cpu")


def test_unknown_device(capsys, stories_path):
    assert "unknown device" in _bad(capsys, "--num_sample_tok", "2", "--big_model", str(stories_path),
                                    "--small_model", str(stories_path), "--device", "tpu")


def test_prompt_longer_than_the_context(capsys, stories_path):
    long_prompt = "Once upon a time there was a dog. " * 80  # well over stories260K's 512 positions
    line = _bad(capsys, "--num_sample_tok", "2", "--big_model", str(stories_path), "--small_model", str(stories_path),
                "--prompt", long_prompt, "--device", "cpu")
    assert "context of 512" in line


def test_mismatched_tokenizers_are_refused_naming_the_difference(capsys, stories_path, tmp_path):
    other = _save_model_with_other_tokenizer(tmp_path / "other")
    line = _bad(capsys, "--num_sample_tok", "2", "--big_model", str(stories_path), "--small_model", str(other),
                "--device", "cpu")
    assert "do not share a tokenizer" in line and "vocabulary sizes" in line


def _save_model_with_other_tokenizer(folder):
    """A tiny random Llama with a 40-token word-level tokenizer: a draft that cannot pair."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(40)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="w0").save_pretrained(folder)
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_console_script_runs_as_a_user_would(stories_path):
    """The installed entry point (python -m specdec), exit code and stdout JSON."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "specdec", "--num_sample_tok", "2", "--small_model", str(stories_path),
         "--big_model", str(stories_path), "--max_new_tok", "4", "--device", "cpu", "--no-sample", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["identical"] is True
    bad = subprocess.run([sys.executable, "-m", "specdec", "--num_sample_tok", "-1"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "gamma" in bad.stderr


def test_unreachable_hub_fails_at_once_and_says_offline(capsys, monkeypatch):
    """Without HF_HUB_OFFLINE, an unreachable hub is reported at once (no minute of retries)."""
    import specdec.models.loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(specdec.models.loading, "_reachable", lambda url, timeout_s=3.0: False)
    line = _bad(capsys, "--num_sample_tok", "2", "--big_model", "no-such-org/no-such-model", "--device", "cpu")
    assert "offline" in line and "local folder" in line


def test_draft_cost_uses_the_baseline_width_1_forward():
    """Issue #19 item 8: the Qwen pair's figures: draft 0.137 s, width-1 target 0.494 s."""
    from specdec.cli.compare import draft_cost

    speculative = {"t_draft": 0.137, "c": 0.10, "c_basis": "verification forward (wider than 1)", "alpha": 0.8,
                   "proposal_lengths": {"4": 10}, "e2e_s": 10.0}
    figures = draft_cost({"t_target": 0.494, "e2e_s": 12.0}, speculative)
    assert abs(figures["c"] - 0.137 / 0.494) < 1e-12 and figures["c_basis"].startswith("width-1 target forward")
    expected = (1 - 0.8 ** 5) / (1 - 0.8) / (4 * figures["c"] + 1)
    assert abs(figures["predicted_speedup"] - expected) < 1e-9
    assert draft_cost({"t_target": None}, speculative)["c_basis"] == "verification forward (wider than 1)"
