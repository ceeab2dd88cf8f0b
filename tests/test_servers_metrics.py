"""Speculation counters of vLLM, llama.cpp and SGLang pages, and the acceptance they give."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from specdec.bench.backends.server.server_metrics import (SpecCounters, acceptance_from_counters, acceptance_from_responses,
                                                  counters_from_samples, counters_from_vllm_metrics, detect_engine,
                                                  parse_prometheus)

# What llama-server 11434.0.0 (--metrics, -md with --spec-type draft-simple) answered on /metrics
# after one 24-token greedy request (the rest of the page left out).
LLAMA_CPP_PAGE = """\
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 24
# HELP llamacpp:spec_decode_num_draft_tokens_total Speculative: Total draft tokens generated
# TYPE llamacpp:spec_decode_num_draft_tokens_total counter
llamacpp:spec_decode_num_draft_tokens_total 18
# HELP llamacpp:spec_decode_num_accepted_tokens_total Speculative: Total draft tokens accepted by the target model
# TYPE llamacpp:spec_decode_num_accepted_tokens_total counter
llamacpp:spec_decode_num_accepted_tokens_total 18
# HELP llamacpp:spec_decode_num_drafts_total Speculative: Total speculative decoding verification steps
# TYPE llamacpp:spec_decode_num_drafts_total counter
llamacpp:spec_decode_num_drafts_total 5
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft position
# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 5
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="1"} 5
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="2"} 4
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="3"} 4
"""


def vllm_page(per_engine: dict[str, tuple[int, int, int, list[int]]]) -> str:
    """A /metrics page as vLLM writes it: prometheus_client counters named and labelled as in
    vllm/v1/spec_decode/metrics.py (labels model_name, engine; per position also ``position``)."""
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    drafts = Counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.", labels, registry=registry)
    tokens = Counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.", labels, registry=registry)
    accepted = Counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.", labels, registry=registry)
    per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos", "Accepted tokens per draft position.",
                      labels + ["position"], registry=registry)
    for engine, (d, t, a, positions) in per_engine.items():
        drafts.labels("m", engine).inc(d)
        tokens.labels("m", engine).inc(t)
        accepted.labels("m", engine).inc(a)
        for k, value in enumerate(positions):
            per_pos.labels("m", engine, str(k)).inc(value)
    return generate_latest(registry).decode()


def test_vllm_counters_are_summed_over_engines():
    samples = parse_prometheus(vllm_page({"0": (10, 30, 20, [9, 7, 4]), "1": (5, 15, 6, [4, 2, 0])}))
    assert detect_engine(samples) == "vllm"
    c = counters_from_samples(samples, "vllm")
    assert (c.drafts, c.draft_tokens, c.accepted, c.per_pos) == (15, 45, 26, [13, 9, 4])


def test_llama_cpp_page_of_a_real_server():
    samples = parse_prometheus(LLAMA_CPP_PAGE)
    assert detect_engine(samples) == "llama.cpp"
    c = counters_from_samples(samples, "llama.cpp")
    assert (c.drafts, c.draft_tokens, c.accepted, c.per_pos) == (5, 18, 18, [5, 5, 4, 4])
    figures = acceptance_from_counters(c)
    # 4 steps of 4 drafts and a last one of 2, all accepted: nothing was rejected
    assert figures["rejections"] == 0 and figures["alpha"] == 1.0 and figures["acceptance_exact"] is True
    assert figures["tau"] == pytest.approx(1 + 18 / 5) and figures["draft_acceptance_rate"] == 1.0
    assert figures["accept_at"] == [1.0, 1.0, 0.8, 1.0] and figures["server_gamma"] == 4


def test_sglang_has_steps_and_tokens_only():
    page = ("# TYPE sglang:spec_verify_calls_total counter\nsglang:spec_verify_calls_total{model_name=\"m\"} 40\n"
            "# TYPE sglang:generation_tokens_total counter\nsglang:generation_tokens_total{model_name=\"m\"} 100\n"
            "# TYPE sglang:spec_accept_length gauge\nsglang:spec_accept_length{model_name=\"m\"} 2.5\n")
    samples = parse_prometheus(page)
    c = counters_from_samples(samples, detect_engine(samples))
    figures = acceptance_from_counters(c)
    assert figures["tau"] == 2.5 and figures["alpha"] is None and figures["draft_acceptance_rate"] is None


def test_a_server_without_speculation_counters_gives_none():
    samples = parse_prometheus("# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 0\n")
    assert counters_from_samples(samples, "vllm") is None


def test_differences_and_lower_bounds():
    before = SpecCounters("vllm", 10, 40, 20, [8, 6, 4, 2])
    after = SpecCounters("vllm", 20, 75, 38, [16, 12, 7, 3])  # one step proposed fewer than 4
    delta = after.minus(before)
    assert (delta.drafts, delta.draft_tokens, delta.accepted, delta.per_pos) == (10, 35, 18, [8, 6, 3, 1])
    figures = acceptance_from_counters(delta)
    # rejections <= min(steps - steps accepting all 4, unaccepted drafts) = min(9, 17)
    assert figures["rejections"] == 9 and figures["alpha"] == pytest.approx(18 / 27)
    assert figures["acceptance_exact"] is False
    assert SpecCounters.from_dict(delta.to_dict()) == delta
    assert delta.plus(before) == after


def test_offline_vllm_metrics_objects():
    metrics = [SimpleNamespace(name="vllm:spec_decode_num_drafts", value=4),
               SimpleNamespace(name="vllm:spec_decode_num_draft_tokens", value=12),
               SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens", value=7),
               SimpleNamespace(name="vllm:spec_decode_num_accepted_tokens_per_pos", values=[4, 2, 1]),
               SimpleNamespace(name="vllm:num_requests_running", value=0)]
    c = counters_from_vllm_metrics(metrics)
    assert (c.drafts, c.draft_tokens, c.accepted, c.per_pos) == (4, 12, 7, [4, 2, 1])
    assert counters_from_vllm_metrics(metrics[-1:]) is None


def test_per_response_fields():
    records = [{"server_draft_tokens": 8, "server_accepted_tokens": 6, "new_tokens": 10},
               {"server_draft_tokens": 4, "server_accepted_tokens": 1, "new_tokens": 5}]
    figures = acceptance_from_responses(records)
    assert figures["draft_acceptance_rate"] == pytest.approx(7 / 12) and figures["tau"] is None  # no step counts
    sglang = acceptance_from_responses([{"server_verify_steps": 4, "new_tokens": 10}])
    assert sglang["tau"] == 2.5
    assert acceptance_from_responses([{"new_tokens": 3}]) is None
