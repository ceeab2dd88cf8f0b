"""Summary tables fit a 100-column terminal (issue #13 item 9), and an adaptive draft length is
reported as where it started and what it did (item 13)."""

from __future__ import annotations

from rich.console import Console

from specdec.bench.report import notes, summary_tables


def wide_metrics() -> dict:
    method = {
        "requests": 120, "new_tokens": 15360, "tokens_per_s": 1234.5, "speedup": 2.345, "speedup_ci_low": 2.101,
        "speedup_ci_high": 2.612, "tokens_per_s_ratio": 2.31, "forward_speedup": 4.56,
        "ttft_s": {"p50": 0.1234}, "tpot_s": {"p50": 0.01234}, "e2e_s": {"p50": 12.345, "p90": 23.456, "p99": 34.567},
        "throughput": 9876.5, "identical": {"all": True, "identical": 120, "pairs": 120}, "gamma": 5,
        "draft_length": {"mean": 7.3, "min": 1, "max": 16}, "alpha": 0.8765, "draft_acceptance_rate": 0.7654,
        "tau": 9.78, "expected_tau": 8.9, "skipped": 2, "skipped_reasons": {"does not fit the context": 2},
        "c": 0.3456, "predicted_speedup": 2.5, "efficiency": 0.94, "j_per_token": 0.1234, "peak_mem_bytes": 80 * 2**30,
    }
    return {"config": {"speculative": {"draft_schedule": "adaptive"}}, "summary": {"baseline": "target", "methods": {"target": dict(method, gamma=None),
                                                          "speculative:gamma=4": method}}}


def test_every_summary_table_fits_100_columns_unwrapped():
    console = Console(width=400)
    for table in summary_tables(wide_metrics(), "qwen run"):
        assert console.measure(table).maximum <= 100, f"{table.title} needs {console.measure(table).maximum} columns"


def test_adaptive_draft_length_is_reported_as_start_mean_and_range():
    lines = notes(wide_metrics())
    assert "speculative:gamma=4: draft length adaptive, started at 5, mean 7.3, range 1-16" in lines
    assert any("skipped 2 request(s)" in line for line in lines)


def test_steps_that_drafted_nothing_are_named_with_their_share():
    metrics = wide_metrics()
    metrics["summary"]["methods"]["speculative:gamma=4"]["draft_length"] = {"mean": 1.2, "min": 0, "max": 9,
                                                                            "plain_share": 0.35}
    line = next(line for line in notes(metrics) if line.startswith("speculative:gamma=4: draft length"))
    assert "range 0-9; 35% of steps drafted nothing (the draft gate" in line


def test_draft_length_summary_counts_plain_steps():
    from specdec.bench.metrics import draft_length_summary

    assert draft_length_summary({"0": 7, "2": 3}) == {"mean": 0.6, "min": 0, "max": 2, "plain_share": 0.7}
