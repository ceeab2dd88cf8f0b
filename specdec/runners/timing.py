"""Forward-pass time, counted without stalling the device.

On CPU a span is two ``perf_counter`` readings. On CUDA a span records a pair of CUDA events
and the elapsed times are read only when a figure is asked for (at the end of a request), so
timing adds no host sync inside the decode loop. Spans are kept per phase (prefill / decode)
and per forward width (tokens per row), because a width-1 decode forward and a width-5
verification forward cost different amounts and the cost ratio ``c`` needs the first.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class ForwardClock:
    """Counts forward passes and their time (seconds), by phase and width.

    count / decode_count: forwards in all / in the decode phase.
    prefill_seconds / decode_seconds: summed time of each phase.
    capture_seconds: one-off CUDA-graph capture time, kept apart from decoding.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.use_events = self.device.type == "cuda"
        self.count = 0
        self.decode_count = 0
        self.capture_seconds = 0.0
        self._spans: list[tuple[bool, int, object, object]] = []  # (prefill, width, start, end)
        self._resolved: list[tuple[bool, int, float]] = []

    def _now(self):
        if self.use_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextmanager
    def span(self, width: int, prefill: bool = False):
        """Time the forward run inside the ``with`` block (``width`` tokens per row)."""
        start = self._now()
        yield
        self._spans.append((prefill, width, start, self._now()))
        self.count += 1
        self.decode_count += not prefill

    def run(self, fn, *args, prefill: bool = False, width: int = 0, **kwargs):
        """Call ``fn`` inside a span (kept for callers that time a function call)."""
        with self.span(width, prefill):
            return fn(*args, **kwargs)

    def _settle(self) -> list[tuple[bool, int, float]]:
        """Elapsed seconds of every span so far (one device sync on CUDA, here only)."""
        if self._spans:
            if self.use_events:
                torch.cuda.synchronize(self.device)
                for prefill, width, start, end in self._spans:
                    self._resolved.append((prefill, width, start.elapsed_time(end) / 1000.0))
            else:
                for prefill, width, start, end in self._spans:
                    self._resolved.append((prefill, width, end - start))
            self._spans = []
        return self._resolved

    @property
    def prefill_seconds(self) -> float:
        return sum(s for prefill, _, s in self._settle() if prefill)

    @property
    def decode_seconds(self) -> float:
        return sum(s for prefill, _, s in self._settle() if not prefill)

    @property
    def mean_decode_seconds(self) -> float | None:
        """Mean seconds of one decode-phase forward (any width), or None."""
        return self.decode_seconds / self.decode_count if self.decode_count else None

    def by_width(self) -> dict[int, tuple[int, float]]:
        """Decode-phase forwards per width: {width: (count, mean seconds)}."""
        totals: dict[int, list[float]] = defaultdict(list)
        for prefill, width, seconds in self._settle():
            if not prefill:
                totals[width].append(seconds)
        return {w: (len(v), sum(v) / len(v)) for w, v in sorted(totals.items())}

    def mean_at_width(self, width: int) -> float | None:
        """Mean seconds of a decode forward of exactly ``width`` tokens per row, or None."""
        entry = self.by_width().get(width)
        return entry[1] if entry else None
