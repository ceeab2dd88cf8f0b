"""Aggregates over per-request records, under the names of ../shared/docs/metrics.md.

Everything here is a pure function of the records in responses.jsonl, so any saved run can be
re-aggregated (``specdec report``). Units: seconds, tokens, joules, bytes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from statistics import median

import numpy as np

from specdec.engine.stats import expected_tau_from_lengths, pool_accept_at, predicted_speedup_from_lengths


def percentiles(values) -> dict:
    """p50 / p90 / p99 / mean / n of the non-null ``values`` (None figures when there are none)."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "n": 0}
    p50, p90, p99 = np.percentile(data, [50, 90, 99]).tolist()
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(np.mean(data)), "n": len(data)}


def geomean_ci(ratios, resamples: int = 2000, seed: int = 0, level: float = 0.95, clusters=None) -> dict:
    """Geometric mean of positive ``ratios`` with a percentile-bootstrap interval.

    clusters: one label per ratio (e.g. the prompt a turn belongs to). Ratios of one cluster
    are correlated (turns of one conversation, repeats of one prompt), so the bootstrap then
    resamples whole clusters (a cluster bootstrap), not ratios one by one, which would make
    the interval too narrow. Returns {geomean, ci_low, ci_high, n, clusters}; the interval is
    None with fewer than 2 clusters."""
    kept = [(r, c) for r, c in zip(ratios, clusters if clusters is not None else range(len(ratios)))
            if r is not None and r > 0]
    data = np.array([r for r, _ in kept], dtype=float)
    if data.size == 0:
        return {"geomean": None, "ci_low": None, "ci_high": None, "n": 0, "clusters": 0}
    logs = np.log(data)
    members: dict = defaultdict(list)
    for index, (_, cluster) in enumerate(kept):
        members[cluster].append(index)
    groups = list(members.values())
    result = {"geomean": float(np.exp(logs.mean())), "ci_low": None, "ci_high": None, "n": int(data.size),
              "clusters": len(groups)}
    if len(groups) >= 2 and resamples > 0:
        rng = np.random.default_rng(seed)
        sums = np.array([logs[g].sum() for g in groups])
        sizes = np.array([len(g) for g in groups])
        picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
        means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(means, [tail, 100 - tail])
        result.update(ci_low=float(np.exp(low)), ci_high=float(np.exp(high)))
    return result


def expected_tau(alpha: float | None, gamma: int | None) -> float | None:
    """``(1 - alpha**(gamma+1)) / (1 - alpha)``: expected tokens per step (gamma + 1 at alpha = 1)."""
    if alpha is None or not gamma:
        return None
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedup(alpha: float | None, gamma: int | None, c: float | None) -> float | None:
    """Leviathan et al. Theorem 3.8: ``(1 - alpha**(gamma+1)) / ((1 - alpha) * (gamma*c + 1))``."""
    tau = expected_tau(alpha, gamma)
    if tau is None or c is None:
        return None
    return tau / (gamma * c + 1)


def _ratio(a, b):
    return a / b if a is not None and b else None


def _sum(records, key):
    values = [r.get(key) for r in records]
    return sum(v for v in values if v is not None) if any(v is not None for v in values) else None


def conversation_of(prompt_id) -> str:
    """The prompt a request's id belongs to: without the ``~k`` a Poisson schedule appends when it
    serves the same prompt again (a reuse is a repeat of that prompt, correlated with it)."""
    return str(prompt_id).split("~", 1)[0]


def pair_key(record) -> tuple:
    return (str(record["prompt_id"]), int(record["turn"]), int(record["repeat"]))


def _acceptance(records) -> dict:
    """Pooled acceptance figures over records that have them (None for peers without counts)."""
    with_steps = [r for r in records if r.get("steps")]
    if not with_steps:
        return {k: None for k in ("steps", "proposed", "accepted", "rejections", "draft_acceptance_rate", "alpha",
                                  "tau", "accept_at", "accept_upto", "proposal_lengths")}
    steps = sum(r["steps"] for r in with_steps)
    proposed = sum(r["proposed"] for r in with_steps)
    accepted = sum(r["accepted"] for r in with_steps)
    rejections = sum(r["rejections"] for r in with_steps)
    tokens = sum((r["tau"] or 0) * r["steps"] for r in with_steps)
    histogram: Counter = Counter()
    for r in with_steps:
        histogram.update({int(g): n for g, n in (r.get("proposal_lengths") or {}).items()})
    if all(r.get("accept_at_counts") for r in with_steps):
        # Raw counts pooled (records since the runner rewrite): exact, not re-weighted ratios.
        counts = [r["accept_at_counts"] for r in with_steps]
        accepted_raw = [0] * max(len(c["accepted"]) for c in counts)
        for c in counts:
            for k, a in enumerate(c["accepted"]):
                accepted_raw[k] += a
        return {
            "steps": steps, "proposed": proposed, "accepted": accepted, "rejections": rejections,
            "draft_acceptance_rate": _ratio(accepted, proposed),
            "alpha": _ratio(accepted, accepted + rejections),
            "tau": _ratio(tokens, steps),
            "accept_at": pool_accept_at(counts),
            "accept_upto": [a / steps for a in accepted_raw],
            "proposal_lengths": {str(g): n for g, n in sorted(histogram.items())} or None,
        }
    width = max((len(r.get("accept_upto") or []) for r in with_steps), default=0)
    accepted_k = [0.0] * width  # steps whose first k drafts were all accepted (k = 1..width)
    reached_k = [0.0] * width  # steps whose draft reached position k (estimated, see docs)
    for r in with_steps:
        upto = r.get("accept_upto") or []
        at = r.get("accept_at") or []
        for k in range(len(upto)):
            accepted_k[k] += upto[k] * r["steps"]
            if k < len(at) and at[k]:
                reached_k[k] += upto[k] * r["steps"] / at[k]
            elif k < len(at) and at[k] == 0:
                reached_k[k] += (upto[k - 1] if k else 1.0) * r["steps"]
    return {
        "steps": steps,
        "proposed": proposed,
        "accepted": accepted,
        "rejections": rejections,
        "draft_acceptance_rate": _ratio(accepted, proposed),
        "alpha": _ratio(accepted, accepted + rejections),
        "tau": _ratio(tokens, steps),
        "accept_at": [_ratio(a, n) for a, n in zip(accepted_k, reached_k)],
        "accept_upto": [a / steps for a in accepted_k],
    }


def _span_seconds(records) -> float | None:
    """Wall time the method's requests occupied: under Poisson load from the first arrival to the
    last finish (per repeat, summed); otherwise the time the server was busy with them: the sum
    of service times one request at a time, of batch times with batches (methods alternate in
    one run, so this is each method's share of the run's wall time)."""
    if any(r.get("arrival_s") is not None for r in records):
        total = 0.0
        for repeat in {r["repeat"] for r in records}:
            rs = [r for r in records if r["repeat"] == repeat and r.get("arrival_s") is not None]
            first = min(r["arrival_s"] for r in rs)
            last = max(r["arrival_s"] + (r.get("queue_wait_s") or 0) + r["service_e2e_s"] for r in rs)
            total += last - first
        return total
    batches = {r["batch_id"]: r.get("batch_e2e_s") for r in records if r.get("batch_id")}
    if batches and None not in batches.values():
        return sum(batches.values())
    return _sum(records, "service_e2e_s")


def leviathan(alpha, gamma, c, proposal_lengths) -> dict:
    """``expected_tau`` and ``predicted_speedup`` (Leviathan et al.): over the draft lengths the
    steps actually used when the records carry their histogram (the adaptive schedule varies
    them), else for the configured gamma."""
    if proposal_lengths:
        return {"expected_tau": expected_tau_from_lengths(alpha, proposal_lengths),
                "predicted_speedup": predicted_speedup_from_lengths(alpha, c, proposal_lengths)}
    return {"expected_tau": expected_tau(alpha, gamma), "predicted_speedup": predicted_speedup(alpha, gamma, c)}


def draft_length_summary(proposal_lengths) -> dict | None:
    """Mean, min and max drafts per step from the histogram {g: steps}, and the share of steps
    that drafted nothing (the draft gate's plain steps, a row's last token); None without one."""
    if not proposal_lengths:
        return None
    histogram = {int(g): n for g, n in proposal_lengths.items() if n}
    steps = sum(histogram.values())
    return {"mean": sum(g * n for g, n in histogram.items()) / steps, "min": min(histogram), "max": max(histogram),
            "plain_share": histogram.get(0, 0) / steps}


def _batch_tokens_per_s(records, new_tokens, service) -> float | None:
    """Output tokens of all rows / summed wall time of the batches (each batch counted once);
    with batch size 1 it is ``tokens_per_s``."""
    batches = {r["batch_id"]: r.get("batch_e2e_s") for r in records if r.get("batch_id")}
    if not batches or None in batches.values():
        return _ratio(new_tokens, service)
    return _ratio(new_tokens, sum(batches.values()))


def method_summary(records) -> dict:
    """Figures of one method over its records (see metrics.md)."""
    new_tokens = _sum(records, "new_tokens") or 0
    service = _sum(records, "service_e2e_s")
    span = _span_seconds(records)
    gammas = Counter(r.get("gamma") for r in records if r.get("gamma"))
    gamma = gammas.most_common(1)[0][0] if gammas else None
    t_target = [r["t_target"] for r in records if r.get("t_target") is not None]
    t_draft = [r["t_draft"] for r in records if r.get("t_draft") is not None]
    mean_t_target = float(np.mean(t_target)) if t_target else None
    mean_t_draft = float(np.mean(t_draft)) if t_draft else None
    acceptance = _acceptance(records)
    c = _ratio(mean_t_draft, mean_t_target) if mean_t_draft is not None else (0.0 if gamma and acceptance["steps"] and not _sum(records, "draft_forwards") else None)
    energy = _sum(records, "energy_j")
    summary = {
        "backend": records[0].get("backend") if records else None,
        "requests": len(records),
        "new_tokens": new_tokens,
        "prompt_tokens": _sum(records, "prompt_tokens"),
        "service_s": service,
        "tokens_per_s": _ratio(new_tokens, service),
        "batch_tokens_per_s": _batch_tokens_per_s(records, new_tokens, service),
        # As ``vllm bench serve``: output tokens and requests over the run's wall time (its
        # span under load, the busy time otherwise); per-request speed is reported apart.
        "throughput": _ratio(new_tokens, span),
        "request_throughput": _ratio(len(records), span),
        "request_tokens_per_s": percentiles(r.get("tokens_per_s") for r in records),
        "ttft_s": percentiles(r.get("ttft_s") for r in records),
        "tpot_s": percentiles(r.get("tpot_s") for r in records),
        "e2e_s": percentiles(r.get("e2e_s") for r in records),
        "queue_wait_s": percentiles(r.get("queue_wait_s") for r in records) if any(r.get("arrival_s") is not None for r in records) else None,
        "target_forwards": _sum(records, "target_forwards"),
        "draft_forwards": _sum(records, "draft_forwards"),
        "gamma": gamma,
        **acceptance,
        "t_target": mean_t_target,
        "t_draft": mean_t_draft,
        "c": c,
        "draft_length": draft_length_summary(acceptance.get("proposal_lengths")),
        **leviathan(acceptance["alpha"], gamma, c, acceptance.get("proposal_lengths")),
        "energy_j": energy,
        "j_per_token": _ratio(energy, new_tokens) if energy is not None else None,
        "peak_mem_bytes": max((r["peak_mem_bytes"] for r in records if r.get("peak_mem_bytes")), default=None),
        "stop_reasons": dict(Counter(r.get("stop_reason") for r in records if r.get("stop_reason"))),
    }
    return summary


def paired_speedup(baseline, method, resamples: int = 2000, seed: int = 0) -> dict:
    """Per-prompt paired figures of ``method`` against ``baseline`` records.

    speedup: geometric mean over prompts of baseline e2e / method e2e (service time, waiting
    excluded; repeats of one prompt folded by their median) with a bootstrap interval;
    tokens_per_s_ratio: summed tokens/s of the method over the baseline's on the same pairs
    (the fair figure when sampling makes lengths differ); forward_speedup: summed baseline
    target forwards / method target forwards; identical: greedy lossless check.
    """
    base = {pair_key(r): r for r in baseline}
    pairs = [(base[pair_key(r)], r) for r in method if pair_key(r) in base]
    if not pairs:
        return {"speedup": None, "n_pairs": 0}
    by_prompt: dict = defaultdict(list)
    by_repeat: dict = defaultdict(list)
    for b, m in pairs:
        ratio = _ratio(b.get("service_e2e_s"), m.get("service_e2e_s"))
        if ratio:
            by_prompt[(b["prompt_id"], b["turn"])].append(ratio)
            by_repeat[b["repeat"]].append(ratio)
    # Turns of one conversation, and the reuses ``id~k`` of one prompt under Poisson load, share
    # a cluster: the interval resamples prompts, not turns or reuses.
    ci = geomean_ci([median(v) for v in by_prompt.values()], resamples, seed,
                    clusters=[conversation_of(p) for p, _ in by_prompt])
    ratios = [median(v) for v in by_prompt.values()]
    b_tokens = sum(b["new_tokens"] for b, _ in pairs)
    m_tokens = sum(m["new_tokens"] for _, m in pairs)
    b_time = sum(b["service_e2e_s"] for b, _ in pairs)
    m_time = sum(m["service_e2e_s"] for _, m in pairs)
    b_fwd = [b.get("target_forwards") for b, _ in pairs]
    m_fwd = [m.get("target_forwards") for _, m in pairs]
    forward = _ratio(sum(b_fwd), sum(m_fwd)) if None not in b_fwd and None not in m_fwd else None
    result = {
        "speedup": ci["geomean"],
        "speedup_ci_low": ci["ci_low"],
        "speedup_ci_high": ci["ci_high"],
        "speedup_ci_method": (f"cluster bootstrap over {ci['clusters']} prompts (turns and repeats of one prompt "
                              "resampled together)"),
        "speedup_min": min(ratios) if ratios else None,
        "speedup_max": max(ratios) if ratios else None,
        "speedup_per_repeat": {str(k): geomean_ci(v, 0)["geomean"] for k, v in sorted(by_repeat.items())},
        "n_pairs": len(pairs),
        "tokens_per_s_ratio": _ratio(_ratio(m_tokens, m_time), _ratio(b_tokens, b_time)),
        "forward_speedup": forward,
        "same_length_pairs": sum(1 for b, m in pairs if b["new_tokens"] == m["new_tokens"]),
    }
    greedy = all(b.get("greedy") and m.get("greedy") for b, m in pairs)
    if greedy:
        same = sum(1 for b, m in pairs if b.get("token_ids") == m.get("token_ids"))
        result["identical"] = {"pairs": len(pairs), "identical": same, "all": same == len(pairs)}
    else:
        result["identical"] = None
    return result


def summarize(records, methods: list[str], baseline: str = "target", resamples: int = 2000, seed: int = 0) -> dict:
    """Per-method summaries plus paired comparisons against ``baseline`` (when it ran)."""
    by_method: dict = defaultdict(list)
    skipped: dict = defaultdict(Counter)
    for r in records:
        if r.get("skipped"):  # not run (did not fit the context): counted, never measured
            skipped[r["method"]][r["skipped"]] += 1
            continue
        by_method[r["method"]].append(r)
    ordered = [m for m in methods if m in by_method] + sorted(m for m in by_method if m not in methods)
    out = {"baseline": baseline if baseline in by_method else None, "methods": {}}
    for label in ordered:
        summary = method_summary(by_method[label])
        if label != baseline and baseline in by_method:
            base_t_target = method_summary(by_method[baseline])["t_target"]
            if summary.get("t_draft") is not None and base_t_target:
                # c per metrics.md: one draft forward against one width-1 decode forward of the
                # target, which the baseline measures (a speculative run mostly has wider ones).
                summary["c"] = summary["t_draft"] / base_t_target
                summary["c_basis"] = "draft forward / baseline's width-1 target forward"
                summary.update(leviathan(summary["alpha"], summary["gamma"], summary["c"], summary.get("proposal_lengths")))
            summary.update(paired_speedup(by_method[baseline], by_method[label], resamples, seed))
            summary["efficiency"] = _ratio(summary["speedup"], summary["predicted_speedup"])
        elif label == baseline:
            summary.update(speedup=1.0, forward_speedup=1.0, tokens_per_s_ratio=1.0, efficiency=None)
        summary["per_category"] = {
            category: {"requests": len(rs), "tokens_per_s": _ratio(_sum(rs, "new_tokens"), _sum(rs, "service_e2e_s"))}
            for category, rs in sorted(_group(by_method[label], "category").items())
        }
        summary["skipped"] = sum(skipped[label].values())
        summary["skipped_reasons"] = dict(skipped[label])
        out["methods"][label] = summary
    return out


def _group(records, key) -> dict:
    groups: dict = defaultdict(list)
    for r in records:
        groups[r.get(key) or "default"].append(r)
    return groups


def finite(value):
    """``value`` unless it is NaN/inf (JSON has no such numbers): then None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
