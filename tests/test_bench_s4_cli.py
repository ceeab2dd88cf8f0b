"""S4's command line: --target-model / --drafter-model override TARGET_MODEL / DRAFTER_MODEL, and a
run given no output folder goes to results/<UTC timestamp>-<config hash>/."""

from __future__ import annotations

from datetime import datetime, timezone

from specdec.cli.bench import _flags, _parser, default_output_dir
from specdec.bench.config import load_config


def test_target_and_drafter_model_flags_override_the_environment():
    args = _parser("bench").parse_args(["--target-model", "T-flag", "--drafter-model", "D-flag"])
    config = load_config(None, _flags(args), environ={"TARGET_MODEL": "T-env", "DRAFTER_MODEL": "D-env"})
    assert config.get("model") == "T-flag" and config.get("speculative.draft_model") == "D-flag"
    env_only = load_config(None, _flags(_parser("bench").parse_args([])), environ={"TARGET_MODEL": "T-env"})
    assert env_only.get("model") == "T-env"


def test_default_output_folder_is_timestamp_and_config_hash():
    config = load_config(None, {"model": "m"}, environ={})
    path = default_output_dir(config, now=datetime(2026, 11, 24, 12, 30, 5, tzinfo=timezone.utc))
    assert str(path) == f"results/20261124T123005Z-{config.hash()[:8]}"
    other = load_config(None, {"model": "another"}, environ={})
    assert default_output_dir(other, now=datetime(2026, 11, 24, 12, 30, 5, tzinfo=timezone.utc)) != path


def test_every_bench_sweep_and_report_flag_has_a_help_text():
    """Issue #13 item 11."""
    for command in ("bench", "sweep", "report"):
        parser = _parser(command)
        missing = [a.option_strings or [a.dest] for a in parser._actions if not a.help and a.dest != "help"]
        assert not missing, f"specdec {command}: no help text for {missing}"
