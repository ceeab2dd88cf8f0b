"""CUDA graphs for decode forwards of the static-cache runner (the CUDA-only part, kept small).

A small model's eager decode forward on a GPU is bound by kernel launches (hundreds per
forward, microseconds each), not by math: replaying the whole forward from one captured CUDA
graph removes the launches (the design of gpt-fast, vLLM's and SGLang's CUDA-graph runners).

What makes a forward capturable is arranged by :class:`~specdec.runners.runner.ModelRunner`'s
static path: transformers' ``StaticCache`` (fixed addresses; it advances its length on the
device), explicit ``cache_position`` and a ready 4-D attention mask built on the device (no
host-side mask logic), fixed shapes per (batch, width). Here: one graph per (batch, width),
captured the first time that shape is needed, replayed after copying the inputs into its
static buffers. Capture time is reported apart from decode time (``capture_seconds``).

If capture fails (a model whose forward syncs or allocates on the host, a custom cache), the
runner falls back to eager forwards with one warning line; outputs stay exact either way.
"""

from __future__ import annotations

import sys
import time

import torch


#: Widest decode forward captured as a graph (tokens per row): every draft window fits. Wider
#: ones (a draft catching up on the tokens decoded while the draft gate held it) run eagerly:
#: a graph per catch-up length would capture one for nearly every length, at a cost in
#: capture time and graph memory that a rare forward never earns back.
MAX_GRAPH_WIDTH = 32


class GraphedDecode:
    """Decode forwards of ``model`` replayed from CUDA graphs, one per (batch, width).

    clock: the runner's :class:`~specdec.runners.timing.ForwardClock` (replays are timed as
        decode forwards, captures as ``capture_seconds``).
    max_width: forwards wider than this run eagerly (see ``MAX_GRAPH_WIDTH``).
    """

    def __init__(self, model: torch.nn.Module, clock, max_width: int = MAX_GRAPH_WIDTH) -> None:
        self.model = model
        self.clock = clock
        self.max_width = max_width
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.disabled_reason: str | None = None
        self._cache_id = None

    def invalidate(self) -> None:
        """Forget every graph (the model's tensors changed, e.g. a draft head's extra ids)."""
        self.graphs.clear()

    def captures(self, width: int) -> bool:
        """Whether a forward of ``width`` tokens per row runs from a graph (else eagerly)."""
        return self.disabled_reason is None and width <= self.max_width

    def run(self, tokens, positions, cache_position, mask, cache) -> torch.Tensor:
        """Logits [batch, width, vocab] of one decode forward (a fresh tensor)."""
        width = tokens.shape[1]
        key = (tokens.shape[0], width, mask.shape[-1])
        if self.captures(width):
            if id(cache) != self._cache_id:
                self.graphs.clear()  # graphs hold the old cache's addresses
                self._cache_id = id(cache)
            if key not in self.graphs:
                try:
                    return self._capture(key, tokens, positions, cache_position, mask, cache)
                except Exception as error:  # noqa: BLE001 - any failure means: run eagerly
                    self.disabled_reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
                    print(f"specdec: warning: CUDA graph capture failed ({self.disabled_reason}); "
                          "decoding with eager forwards", file=sys.stderr)
        if not self.captures(width):
            with self.clock.span(width):
                return self._eager(tokens, positions, cache_position, mask, cache)
        graph, inputs, output = self.graphs[key]
        with self.clock.span(width):
            for buffer, value in zip(inputs, (tokens, positions, cache_position, mask)):
                buffer.copy_(value)
            graph.replay()
            # The graph's output buffer is overwritten by the next replay: hand out a copy.
            return output.clone()

    def _eager(self, tokens, positions, cache_position, mask, cache):
        return self.model(input_ids=tokens, position_ids=positions, attention_mask=mask, cache_position=cache_position,
                          past_key_values=cache, use_cache=True, logits_to_keep=tokens.shape[1]).logits

    def _capture(self, key, tokens, positions, cache_position, mask, cache) -> torch.Tensor:
        torch.cuda.synchronize()
        started = time.perf_counter()
        inputs = tuple(t.clone() for t in (tokens, positions, cache_position, mask))
        lengths = [layer.cumulative_length.clone() for layer in cache.layers]
        # Warm up on a side stream (allocator and cuBLAS workspaces settle), then put the
        # cache's lengths back: the warm-up wrote this forward's keys and values already, and
        # the replay below writes the same ones again.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._eager(*inputs, cache)
        torch.cuda.current_stream().wait_stream(stream)
        for layer, length in zip(cache.layers, lengths):
            layer.cumulative_length.copy_(length)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self._eager(*inputs, cache)
        torch.cuda.synchronize()
        self.clock.capture_seconds += time.perf_counter() - started
        self.graphs[key] = (graph, inputs, output)
        with self.clock.span(tokens.shape[1]):
            graph.replay()
            return output.clone()
