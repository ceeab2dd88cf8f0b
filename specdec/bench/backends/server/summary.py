"""Aggregates of server runs: one row per (method, rate), open-loop figures, goodput, and the
acceptance the server reported.

Rows are labelled ``method@rate`` (``speculative@4``: 4 requests/s; ``speculative@4:gamma=2``
with a gamma override); each rate is summarized
on its own with :func:`specdec.bench.metrics.summarize`, its baseline being ``target`` at the
same rate, so a sweep shows where speculation stops paying as load grows. Failed requests are
counted (``failed``) and left out of the latency and throughput figures; ``slo_attainment``
counts them as misses.

Server counters live in ``server_metrics.json`` in the run folder (one entry per row, one
reading per batch), so ``specdec report`` re-renders server runs from saved files alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from specdec.bench import results as R
from specdec.bench.backends.server.load import row_label
from specdec.bench.backends.server.records import usable
from specdec.bench.backends.server.server_metrics import SpecCounters, acceptance_from_counters, acceptance_from_responses

STORE = "server_metrics.json"
ACCEPTANCE_KEYS = ("steps", "proposed", "accepted", "rejections", "draft_acceptance_rate", "alpha", "tau",
                   "accept_at", "accept_upto")


def is_server_run(records: list[dict]) -> bool:
    return any("serving" in r for r in records)


# --------------------------------------------------------------------------------------------
# the counters store
def read_store(folder) -> dict:
    return R.ResultsDir(folder).read(STORE) or {}


def add_batch(folder, row: str, base_method: str, engine: str, reading: dict, info: dict | None = None) -> dict:
    """Append one batch's counter reading (``counters`` dict or ``reason``, ``energy_j``,
    ``wall_s``, ``repeat``) to the row's entry; returns the entry. ``info``: what the engine
    said it ran (``dtype``, ``env``, ``notes``), kept in the entry."""
    results = R.ResultsDir(folder)
    store = results.read(STORE) or {}
    entry = store.setdefault(row, {"method": base_method, "engine": engine, "batches": [], "zero_drafts": False})
    entry["batches"].append(reading)
    for key, value in (info or {}).items():
        if value is not None:
            entry[key] = value
    results.write(STORE, store)
    return entry


def mark_zero_drafts(folder, row: str) -> None:
    results = R.ResultsDir(folder)
    store = results.read(STORE) or {}
    store.setdefault(row, {"batches": []})["zero_drafts"] = True
    results.write(STORE, store)


def summed_counters(entry: dict) -> SpecCounters | None:
    """The counters of all batches of a row, or None when any batch had none."""
    total = None
    for batch in entry.get("batches", []):
        if not batch.get("counters"):
            return None
        counters = SpecCounters.from_dict(batch["counters"])
        total = counters if total is None else total.plus(counters)
    return total


# --------------------------------------------------------------------------------------------
def _ratio(a, b):
    return a / b if a is not None and b else None


def span_seconds(records: list[dict]) -> float | None:
    """Wall time a row's requests occupied: first arrival to last finish per repeat (summed);
    the summed service times when requests went one after another."""
    timed = [r for r in records if r.get("arrival_s") is not None]
    if not timed:
        values = [r["service_e2e_s"] for r in records]
        return sum(values) if values else None
    total = 0.0
    for repeat in {r["repeat"] for r in timed}:
        rs = [r for r in timed if r["repeat"] == repeat]
        first = min(r["arrival_s"] for r in rs)
        last = max(r["arrival_s"] + (r.get("queue_wait_s") or 0.0) + r["service_e2e_s"] for r in rs)
        total += last - first
    return total


def open_loop_figures(records: list[dict], slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> dict:
    """Request throughput, goodput against the SLOs, inter-chunk latency percentiles, failures."""
    from specdec.bench.metrics import percentiles

    ok = [r for r in records if usable(r)]
    span = span_seconds(ok)
    figures = {
        "requests_sent": len(records),
        "failed": sum(1 for r in records if not r.get("ok", True)),
        "usage_missing": sum(1 for r in records if r.get("usage_missing")),
        "request_throughput": _ratio(len(ok), span),
        "itl_s": percentiles(x for r in ok for x in (r.get("itl_s") or [])),
        "load_mode": records[0].get("load_mode") if records else None,
        "load_rate": records[0].get("load_rate") if records else None,
        "serving": records[0].get("serving") if records else None,
        "errors": dict(Counter(r["error"] for r in records if r.get("error")).most_common(3)),
        "goodput": None,
        "slo_attainment": None,
        "slo": {"ttft_ms": slo_ttft_ms, "tpot_ms": slo_tpot_ms},
    }
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        def meets(r):
            if slo_ttft_ms is not None and (r.get("ttft_s") is None or r["ttft_s"] * 1000 > slo_ttft_ms):
                return False
            if slo_tpot_ms is not None and r.get("tpot_s") is not None and r["tpot_s"] * 1000 > slo_tpot_ms:
                return False  # a one-token answer has no TPOT: only its TTFT counts
            return True

        good = sum(1 for r in ok if meets(r))
        figures.update(goodput=_ratio(good, span), slo_attainment=_ratio(good, len(records)))
    return figures


def acceptance_figures(row_records: list[dict], entry: dict | None) -> dict:
    """Acceptance of one drafting row from the server's counters, else its per-response fields;
    otherwise the reason there is none (printed instead of zeros)."""
    from specdec.bench.metrics import expected_tau

    counters = summed_counters(entry) if entry else None
    if counters is not None:
        figures = acceptance_from_counters(counters)
        figures["acceptance_source"] = f"{entry.get('engine')} speculation counters (read before and after each batch)"
    else:
        figures = acceptance_from_responses(row_records)
        if figures is not None:
            figures["acceptance_source"] = "per-response fields (llama.cpp timings / SGLang meta_info)"
        else:
            reasons = sorted({b.get("reason") for b in (entry or {}).get("batches", []) if b.get("reason")})
            return {"acceptance_reason": "; ".join(reasons) or "the server reported no speculation counts"}
    gamma = figures.get("server_gamma") or next((r.get("gamma") for r in row_records if r.get("gamma")), None)
    figures["expected_tau"] = expected_tau(figures.get("alpha"), gamma)
    return figures


def identical_by_text(baseline: list[dict], method: list[dict]) -> dict | None:
    """Greedy check on the text (servers return text, not our token ids): pairs of the same
    (prompt, turn, repeat) whose answers are the same string."""
    from specdec.bench.metrics import pair_key

    if not all(r.get("greedy") for r in baseline + method):
        return None
    base = {pair_key(r): r.get("text") for r in baseline}
    pairs = [(base[pair_key(r)], r.get("text")) for r in method if pair_key(r) in base]
    if not pairs:
        return None
    same = sum(1 for a, b in pairs if a == b)
    return {"pairs": len(pairs), "identical": same, "all": same == len(pairs), "by": "text"}


def server_summary(folder, records: list[dict], methods: list[str], resamples: int = 2000, config: dict | None = None) -> dict:
    """The summary of a server run (the shape :func:`summarize` returns, one entry per row)."""
    from specdec.bench.metrics import method_summary, summarize

    load = (config or {}).get("load") or {}
    slo_ttft, slo_tpot = load.get("slo_ttft_ms"), load.get("slo_tpot_ms")
    store = read_store(folder)
    by_rate: dict = defaultdict(list)
    for r in records:
        by_rate[r.get("load_rate")].append(r)
    out = {"baseline": None, "methods": {}}
    for rate in sorted(by_rate, key=lambda x: (x is not None, x or 0.0)):
        group = by_rate[rate]
        order = [row_label(m, rate) for m in methods]
        rows = order + sorted({r["method"] for r in group} - set(order))
        baseline = row_label("target", rate)
        summary = summarize([r for r in group if usable(r)], rows, baseline, resamples)
        if summary.get("baseline") and out["baseline"] is None:
            out["baseline"] = summary["baseline"]
        for row in rows:
            row_records = [r for r in group if r["method"] == row]
            if not row_records:
                continue
            figures = summary["methods"].get(row) or method_summary([])
            figures.update(open_loop_figures(row_records, slo_ttft, slo_tpot))
            if row_records[0].get("method_base") != "target":
                figures.update(acceptance_figures([r for r in row_records if usable(r)], store.get(row)))
            if (store.get(row) or {}).get("zero_drafts"):
                figures["zero_drafts"] = True
            for key in ("dtype", "notes"):
                if (store.get(row) or {}).get(key):
                    figures[f"engine_{key}"] = store[row][key]
            energy = [b.get("energy_j") for b in (store.get(row) or {}).get("batches", [])]
            if energy and None not in energy:
                figures["energy_j"] = sum(energy)
                figures["j_per_token"] = _ratio(figures["energy_j"], figures.get("new_tokens"))
            if row != baseline and "identical" in figures:
                figures["identical"] = identical_by_text([r for r in group if r["method"] == baseline and usable(r)],
                                                         [r for r in row_records if usable(r)])
            out["methods"][row] = figures
    return out


# --------------------------------------------------------------------------------------------
# console output (report.py prints these under its tables)
def load_table(metrics: dict):
    """A rich table of the open-loop figures, or None for runs without server rows."""
    from rich.table import Table

    from specdec.bench.formatting import fmt

    rows = {k: v for k, v in metrics["summary"]["methods"].items() if "requests_sent" in v}
    if not rows:
        return None

    def ms3(p):
        p = p or {}
        return "/".join("-" if p.get(k) is None else f"{p[k] * 1000:.1f}" for k in ("p50", "p90", "p99"))

    table = Table(title="load (client clock; latencies p50/p90/p99 ms)", title_justify="left")
    for column in ("method", "rate req/s", "sent", "failed", "req/s", "out tok/s", "goodput req/s", "TTFT", "TPOT",
                   "ITL (per chunk)", "e2e"):
        table.add_column(column, justify="left" if column == "method" else "right", no_wrap=True)
    for label, s in rows.items():
        table.add_row(label, fmt(s.get("load_rate"), 3) if s.get("load_rate") is not None else s.get("load_mode") or "-",
                      str(s["requests_sent"]), str(s["failed"]), fmt(s.get("request_throughput"), 3),
                      fmt(s.get("throughput"), 1), fmt(s.get("goodput"), 3), ms3(s.get("ttft_s")), ms3(s.get("tpot_s")),
                      ms3(s.get("itl_s")), ms3(s.get("e2e_s")))
    return table


def load_notes(metrics: dict) -> list[str]:
    """One line per thing a reader of a server run must know: failures, missing acceptance,
    lower-bound acceptance, SLOs, runs that drafted nothing."""
    lines = []
    methods = metrics["summary"]["methods"]
    for label, s in methods.items():
        if "requests_sent" not in s:
            continue
        if s.get("zero_drafts"):
            lines.append(f"{label}: NOT A RESULT: the server reported 0 drafts although a draft was configured")
        if s.get("failed"):
            first = next(iter(s.get("errors") or {}), "")
            lines.append(f"{label}: {s['failed']} of {s['requests_sent']} requests failed (left out of the figures): {first}")
        if s.get("usage_missing"):
            lines.append(f"{label}: the server sent no usage for {s['usage_missing']} request(s): their tokens are unknown")
        if s.get("acceptance_reason"):
            lines.append(f"{label}: acceptance not reported: {s['acceptance_reason']}")
        elif s.get("acceptance_exact") is False:
            lines.append(f"{label}: some steps proposed fewer than gamma drafts: alpha and accept_at are lower bounds")
    dtypes = {label: s["engine_dtype"] for label, s in methods.items() if s.get("engine_dtype")}
    if dtypes:
        lines.append("dtype the engine ran (its log / model config): "
                     + ", ".join(f"{label} {dtype}" for label, dtype in dtypes.items()))
    for note in dict.fromkeys(n for s in methods.values() for n in s.get("engine_notes") or []):
        lines.append(note)
    sources = sorted({s["acceptance_source"] for s in methods.values() if s.get("acceptance_source")})
    for source in sources:
        lines.append(f"acceptance from {source}")
    slo = next((s.get("slo") for s in methods.values() if s.get("slo")), None)
    if slo and (slo.get("ttft_ms") is not None or slo.get("tpot_ms") is not None):
        limits = [f"{name} <= {slo[key]:g} ms" for name, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"))
                  if slo.get(key) is not None]
        lines.append(f"goodput: requests/s meeting {' and '.join(limits)}")
    if any("requests_sent" in s for s in methods.values()):
        lines.append("server rows: tok/s = tokens / summed request times; 'throughput'/'out tok/s' = tokens / wall time "
                     "of the batch; speedup pairs each row with target at the same rate (docs/serving.md)")
    return lines
