"""Aggregation formulas of ../shared/docs/metrics.md on hand-made records."""

import math

import pytest

from specdec.bench.metrics import expected_tau, geomean_ci, paired_speedup, percentiles, predicted_speedup, summarize


def test_theorem_formulas():
    assert expected_tau(0.5, 3) == pytest.approx((1 - 0.5**4) / 0.5)
    assert expected_tau(1.0, 4) == 5.0
    assert predicted_speedup(0.8, 4, 0.1) == pytest.approx((1 - 0.8**5) / (0.2 * 1.4))
    assert predicted_speedup(None, 4, 0.1) is None


def test_geomean_and_bootstrap():
    result = geomean_ci([2.0, 8.0], resamples=500)
    assert result["geomean"] == pytest.approx(4.0)
    assert result["ci_low"] <= 4.0 <= result["ci_high"]
    assert geomean_ci([3.0])["ci_low"] is None
    assert percentiles([1, 2, 3, None])["p50"] == 2 and percentiles([])["n"] == 0


def rec(method, pid, e2e, tokens=4, forwards=4, ids=(1, 2, 3, 4), **extra):
    base = dict(method=method, backend=method, prompt_id=pid, turn=1, repeat=0, service_e2e_s=e2e, e2e_s=e2e,
                new_tokens=tokens, target_forwards=forwards, token_ids=list(ids), greedy=True, category="c")
    base.update(extra)
    return base


def test_paired_speedup_forward_speedup_and_identity():
    target = [rec("target", "a", 2.0), rec("target", "b", 4.0)]
    spec = [rec("speculative", "a", 1.0, forwards=2), rec("speculative", "b", 1.0, forwards=2, ids=(1, 2, 3, 9))]
    result = paired_speedup(target, spec, resamples=100)
    assert result["speedup"] == pytest.approx(math.sqrt(2 * 4))
    assert result["forward_speedup"] == 2.0
    assert result["tokens_per_s_ratio"] == pytest.approx(3.0)
    assert result["identical"] == {"pairs": 2, "identical": 1, "all": False}


def test_summarize_pools_acceptance_and_efficiency():
    acc = dict(gamma=2, steps=2, proposed=4, accepted=3, rejections=1, tau=2.5, accept_at=[1.0, 0.5],
               accept_upto=[1.0, 0.5], t_target=0.01, t_draft=0.001, draft_forwards=4)
    records = [rec("target", "a", 2.0), rec("speculative", "a", 1.0, forwards=3, **acc)]
    summary = summarize(records, ["target", "speculative"], resamples=0)
    s = summary["methods"]["speculative"]
    assert s["alpha"] == 0.75 and s["draft_acceptance_rate"] == 0.75 and s["tau"] == 2.5
    assert s["accept_at"] == [1.0, 0.5] and s["c"] == pytest.approx(0.1)
    assert s["efficiency"] == pytest.approx(s["speedup"] / s["predicted_speedup"])
    assert summary["methods"]["target"]["speedup"] == 1.0
    assert s["per_category"]["c"]["tokens_per_s"] == 4.0


def test_bootstrap_resamples_conversations_not_turns():
    """Issue #13 item 5: ten turns of one conversation are one piece of evidence, not ten. With
    clusters the interval is wider than when the turns are taken as independent."""
    from specdec.bench.metrics import geomean_ci

    ratios = [1.5] * 10 + [1.0] * 10 + [1.2, 0.9, 1.4, 1.1]
    clusters = ["a"] * 10 + ["b"] * 10 + ["c", "d", "e", "f"]
    naive = geomean_ci(ratios, 4000, 0)
    clustered = geomean_ci(ratios, 4000, 0, clusters=clusters)
    assert naive["geomean"] == clustered["geomean"] and clustered["clusters"] == 6
    assert clustered["ci_high"] - clustered["ci_low"] > 1.5 * (naive["ci_high"] - naive["ci_low"])


def test_poisson_reuses_of_a_prompt_share_its_bootstrap_cluster():
    """#13 item 5 follow-up: a Poisson schedule serves prompt y again as y~1; that reuse is a
    repeat of y (correlated), so the interval counts 2 clusters here, not 3."""
    def rec(method, pid, e2e):
        return {"method": method, "prompt_id": pid, "turn": 1, "repeat": 0, "service_e2e_s": e2e, "new_tokens": 8}

    base = [rec("target", p, 1.0) for p in ("x", "y", "y~1")]
    spec = [rec("s", p, 0.5 if p == "x" else 0.4) for p in ("x", "y", "y~1")]
    assert paired_speedup(base, spec, resamples=200)["speedup_ci_method"].startswith("cluster bootstrap over 2 prompts")
