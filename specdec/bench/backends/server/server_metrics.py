"""Speculation counters of the serving engines, and the acceptance figures they give.

Counters are read before and after each batch of requests; the difference is what that batch
did (warm-up and earlier batches excluded). Sources, parsed with ``prometheus_client``'s text
parser:

- vLLM ``/metrics``: ``vllm:spec_decode_num_drafts`` (verification steps),
  ``vllm:spec_decode_num_draft_tokens``, ``vllm:spec_decode_num_accepted_tokens``,
  ``vllm:spec_decode_num_accepted_tokens_per_pos{position="k"}`` (steps whose first k+1 drafts
  were all accepted); summed over engines and model names. Offline, ``LLM.get_metrics()``
  gives the same counters (:func:`counters_from_vllm_metrics`).
- llama.cpp ``/metrics`` (``--metrics``): ``llamacpp:spec_decode_num_drafts_total``,
  ``..._num_draft_tokens_total``, ``..._num_accepted_tokens_total`` and
  ``..._num_accepted_tokens_per_pos_total{position="k"}``, the same meanings.
- SGLang ``/metrics`` (``--enable-metrics``): ``sglang:spec_verify_calls_total`` (steps) and
  ``sglang:generation_tokens_total``; tau = generated tokens / steps as SGLang defines it; no
  drafted or accepted counts, so no alpha.

Mapping to ../shared/docs/metrics.md: steps = drafts; proposed = draft tokens; accepted;
``tau = 1 + accepted / steps``; ``accept_upto[k] = per_pos[k-1] / steps``;
``accept_at[k] = per_pos[k-1] / per_pos[k-2]`` (``/ steps`` for k = 1); rejections =
``min(steps - per_pos[gamma-1], proposed - accepted)`` with gamma = the number of positions.
Those two are exact when every step proposed gamma drafts (or none was rejected); when some
proposed fewer (the last steps of a request, a confidence cut-off, an n-gram with no match),
rejections is an upper bound, so alpha and accept_at are lower bounds (``acceptance_exact``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

COUNTER_NAMES = {
    "vllm": {"drafts": "vllm:spec_decode_num_drafts", "draft_tokens": "vllm:spec_decode_num_draft_tokens",
             "accepted": "vllm:spec_decode_num_accepted_tokens",
             "per_pos": "vllm:spec_decode_num_accepted_tokens_per_pos"},
    "llama.cpp": {"drafts": "llamacpp:spec_decode_num_drafts", "draft_tokens": "llamacpp:spec_decode_num_draft_tokens",
                  "accepted": "llamacpp:spec_decode_num_accepted_tokens",
                  "per_pos": "llamacpp:spec_decode_num_accepted_tokens_per_pos"},
    "sglang": {"drafts": "sglang:spec_verify_calls", "generation_tokens": "sglang:generation_tokens"},
}
#: the metric-name prefix that tells which engine answered /metrics
PREFIXES = {"vllm": "vllm:", "llama.cpp": "llamacpp:", "sglang": "sglang:"}


@dataclass
class SpecCounters:
    """Cumulative speculation counters of one engine (None: the engine does not count it)."""

    engine: str
    drafts: float | None = None  # verification steps
    draft_tokens: float | None = None  # drafted (proposed) tokens
    accepted: float | None = None  # accepted draft tokens
    per_pos: list[float] = field(default_factory=list)  # steps whose first k+1 drafts were accepted
    generation_tokens: float | None = None  # SGLang: generated tokens (for its tau)

    def combine(self, other: "SpecCounters", sign: int) -> "SpecCounters":
        def op(a, b):
            return None if a is None or b is None else a + sign * b

        width = max(len(self.per_pos), len(other.per_pos))
        mine = self.per_pos + [0.0] * (width - len(self.per_pos))
        theirs = other.per_pos + [0.0] * (width - len(other.per_pos))
        return SpecCounters(self.engine, op(self.drafts, other.drafts), op(self.draft_tokens, other.draft_tokens),
                            op(self.accepted, other.accepted), [a + sign * b for a, b in zip(mine, theirs)],
                            op(self.generation_tokens, other.generation_tokens))

    def minus(self, before: "SpecCounters") -> "SpecCounters":
        return self.combine(before, -1)

    def plus(self, other: "SpecCounters") -> "SpecCounters":
        return self.combine(other, +1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SpecCounters":
        return cls(**{k: data.get(k) for k in ("engine", "drafts", "draft_tokens", "accepted", "generation_tokens")},
                   per_pos=list(data.get("per_pos") or []))


def parse_prometheus(text: str) -> dict[str, list[tuple[dict, float]]]:
    """{sample name without ``_total``: [(labels, value), ...]} of a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name[:-len("_total")] if sample.name.endswith("_total") else sample.name
            samples.setdefault(name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def detect_engine(samples: dict) -> str | None:
    for engine, prefix in PREFIXES.items():
        if any(name.startswith(prefix) for name in samples):
            return engine
    return None


def counters_from_samples(samples: dict, engine: str) -> SpecCounters | None:
    """The speculation counters of ``engine`` in parsed ``samples``; None when it exposes none
    (vLLM registers them only when speculative decoding is configured)."""
    names = COUNTER_NAMES[engine]
    if names["drafts"] not in samples:
        return None

    def total(key):
        name = names.get(key)
        return sum(value for _, value in samples[name]) if name in samples else None

    per_pos: dict[int, float] = {}
    for labels, value in samples.get(names.get("per_pos", ""), []):
        position = int(labels.get("position", 0))
        per_pos[position] = per_pos.get(position, 0.0) + value
    width = max(per_pos) + 1 if per_pos else 0
    return SpecCounters(engine, total("drafts"), total("draft_tokens"), total("accepted"),
                        [per_pos.get(i, 0.0) for i in range(width)], total("generation_tokens"))


@dataclass
class Scrape:
    """One reading of a server's counters: ``counters`` or the ``reason`` there are none."""

    counters: SpecCounters | None
    reason: str | None = None


def scrape(base_url: str, engine: str | None, headers: dict | None = None, timeout_s: float = 10.0) -> Scrape:
    """Read ``base_url/metrics`` (``engine`` None: tell it from the metric names)."""
    import httpx

    url = base_url.rstrip("/") + "/metrics"
    try:
        response = httpx.get(url, headers=headers or {}, timeout=timeout_s)
    except httpx.HTTPError as error:
        return Scrape(None, f"{url} did not answer ({type(error).__name__})")
    if response.status_code != 200:
        hint = {"llama.cpp": " (start llama-server with --metrics)", "sglang": " (start SGLang with --enable-metrics)"}
        return Scrape(None, f"{url} answered HTTP {response.status_code}{hint.get(engine, '')}")
    try:
        samples = parse_prometheus(response.text)
    except ValueError as error:
        return Scrape(None, f"{url} is not Prometheus text ({error})")
    engine = engine or detect_engine(samples)
    if engine is None:
        return Scrape(None, f"{url} shows no vllm:, llamacpp: or sglang: metrics")
    counters = counters_from_samples(samples, engine)
    if counters is None:
        return Scrape(None, f"{url} has no {COUNTER_NAMES[engine]['drafts']} counter (speculation off on that server?)")
    return Scrape(counters)


def counters_from_vllm_metrics(metrics) -> SpecCounters | None:
    """The counters in vLLM's ``LLM.get_metrics()`` list (Counter ``.value``, Vector ``.values``)."""
    names = COUNTER_NAMES["vllm"]
    found = {key: None for key in ("drafts", "draft_tokens", "accepted")}
    per_pos: list[float] = []
    for metric in metrics:
        for key in found:
            if metric.name == names[key]:
                found[key] = (found[key] or 0.0) + float(metric.value)
        if metric.name == names["per_pos"]:
            values = [float(v) for v in metric.values]
            per_pos = [a + b for a, b in zip(per_pos + [0.0] * (len(values) - len(per_pos)),
                                             values + [0.0] * (len(per_pos) - len(values)))]
    if found["drafts"] is None:
        return None
    return SpecCounters("vllm", found["drafts"], found["draft_tokens"], found["accepted"], per_pos)


# --------------------------------------------------------------------------------------------
def _ratio(a, b):
    return a / b if a is not None and b else None


def acceptance_from_counters(c: SpecCounters) -> dict:
    """The metrics.md acceptance figures of a counter difference (None where not derivable)."""
    steps, proposed, accepted = c.drafts, c.draft_tokens, c.accepted
    figures = {"steps": steps, "proposed": proposed, "accepted": accepted, "rejections": None,
               "draft_acceptance_rate": _ratio(accepted, proposed), "alpha": None, "tau": None,
               "accept_at": None, "accept_upto": None, "server_gamma": len(c.per_pos) or None,
               "acceptance_exact": None}
    if accepted is not None and steps:
        figures["tau"] = 1 + accepted / steps
    elif c.generation_tokens is not None and steps:
        figures["tau"] = c.generation_tokens / steps  # SGLang's accept length
    if c.per_pos and steps and accepted is not None:
        gamma = len(c.per_pos)
        rejections = steps - c.per_pos[-1]
        if proposed is not None:
            rejections = min(rejections, proposed - accepted)
        reached = [steps] + c.per_pos[:-1]
        figures.update(
            rejections=rejections,
            alpha=_ratio(accepted, accepted + rejections),
            accept_upto=[p / steps for p in c.per_pos],
            accept_at=[_ratio(p, r) for p, r in zip(c.per_pos, reached)],
            # exact with a constant draft length, or when nothing was rejected (then every step
            # that accepted k-1 drafts and proposed a k-th is counted right)
            acceptance_exact=proposed is not None and (proposed == steps * gamma or proposed == accepted),
        )
    return figures


def acceptance_from_responses(records: list[dict]) -> dict | None:
    """Acceptance from per-response fields (llama.cpp ``timings``, SGLang ``meta_info``)."""
    def total(key):
        values = [r.get(key) for r in records if r.get(key) is not None]
        return float(sum(values)) if values else None

    proposed, accepted, steps = total("server_draft_tokens"), total("server_accepted_tokens"), total("server_verify_steps")
    if proposed is None and accepted is None and steps is None:
        return None
    tokens = total("new_tokens")
    tau = 1 + accepted / steps if accepted is not None and steps else _ratio(tokens, steps)
    return {"steps": steps, "proposed": proposed, "accepted": accepted, "rejections": None,
            "draft_acceptance_rate": _ratio(accepted, proposed), "alpha": None, "tau": tau,
            "accept_at": None, "accept_upto": None, "server_gamma": None, "acceptance_exact": None}
