"""The result of a finished generation: each row's text, tokens and stats (the names of
../shared/docs/metrics.md, seconds, counts and ratios), with the batch's throughput."""

from __future__ import annotations

from specdec.engine.request import GenerationConfig, GenerationResult
from specdec.engine.rows import Row
from specdec.engine.stats import latency_summary, ratio
from specdec.runners import ForwardClock


def results(rows: list[Row], tokenizer, config: GenerationConfig, seed: int, clock: ForwardClock, drafter,
            started: float, first_token_at: float) -> list[GenerationResult]:
    """One result per row, in order (``started`` / ``first_token_at``: perf_counter seconds)."""
    finished = max(r.finished_at for r in rows)
    batch_tokens = sum(len(r.generated) for r in rows)
    out = []
    for row in rows:
        stats = row_stats(row, config, seed, clock, drafter, started, first_token_at)
        stats.update(batch_size=len(rows), batch_new_tokens=batch_tokens, batch_e2e_s=finished - started,
                     batch_tokens_per_s=ratio(batch_tokens, finished - started))
        text = tokenizer.decode(row.generated, skip_special_tokens=True)
        out.append(GenerationResult(text=row.stopper.final_text(text), token_ids=row.generated, stats=stats))
    return out


def row_stats(row: Row, config: GenerationConfig, seed: int, clock: ForwardClock, drafter, started: float,
              first_token_at: float) -> dict:
    """One row's stats: counts, acceptance, forward costs, where the time went, latency."""
    t_target_1 = clock.mean_at_width(1)
    t_target = t_target_1 if t_target_1 is not None else clock.mean_decode_seconds
    t_draft = None
    if drafter is not None and drafter.timer is not None:
        t_draft = drafter.timer.mean_at_width(1) or drafter.mean_forward_seconds
    speculative = drafter is not None
    draft_timer = drafter.timer if speculative else None
    return {
        "mode": "speculative" if speculative else "autoregressive",
        "drafter": drafter.name if speculative else None,
        "gamma": config.gamma if speculative else None,
        "greedy": config.sampling.greedy,
        "seed": seed,
        "prompt_tokens": len(row.prompt),
        "new_tokens": len(row.generated),
        "stop_reason": row.stopper.stop_reason,
        "target_forwards": clock.count,
        "draft_forwards": drafter.forwards if speculative else 0,
        **row.steps.summary(),
        "t_target": t_target,
        "t_target_by_width": {str(w): s for w, (_, s) in clock.by_width().items()},
        "t_draft": t_draft,
        "c": ratio(t_draft, t_target) if t_draft is not None else None,
        # c compares one draft forward with one width-1 target forward (metrics.md); a
        # speculative run rarely has those, and then uses its verification forwards.
        "c_basis": None if t_draft is None else ("width-1 target forward" if t_target_1 is not None
                                                 else "verification forward (wider than 1)"),
        # Where the time went (seconds): the rest of e2e_s is the loop itself (sampling,
        # verification, cache rollback, stop checks). Shared by every row of a batch.
        "target_prefill_s": clock.prefill_seconds,
        "target_decode_s": clock.decode_seconds,
        "draft_prefill_s": draft_timer.prefill_seconds if draft_timer else 0.0,
        "draft_decode_s": draft_timer.decode_seconds if draft_timer else 0.0,
        # What the draft gate did (shared by the batch): plain steps where drafting lost.
        "draft_gate": drafter.gate_report() if speculative and config.sampling.greedy else None,
        "graph_capture_s": clock.capture_seconds + (draft_timer.capture_seconds if draft_timer else 0.0),
        **latency_summary(started, first_token_at, row.finished_at, len(row.generated)),
    }
