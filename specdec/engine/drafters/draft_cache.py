"""The draft model's KV cache kept in step with each row's context: the prefill on the first
step, then, every step, a rollback to the longest prefix the cache shares with the row's
context (the drafts the target accepted stay; the first rejected one and all after it go) and
a feed of what is missing."""

from __future__ import annotations

import torch

from specdec.runners import ModelRunner
from specdec.runners.transfer import to_device


class DraftCache:
    """One draft model's cache over a batch of rows (a :class:`~specdec.runners.ModelRunner`
    plus the token ids each row's cache holds).

    subset_head: the draft's truncated head (:mod:`specdec.runners.draft_head`) or None; the
        prompt's ids join its scored ids at the prefill.
    """

    def __init__(self, runner: ModelRunner, subset_head=None) -> None:
        self.runner = runner
        self.subset_head = subset_head
        self.reset(1, 0)

    def reset(self, batch_size: int, extra_slots: int) -> None:
        self.started = False
        self.cached_ids: list[list[int]] = [[] for _ in range(batch_size)]  # per row: the tokens its cache holds
        self.known = [0] * batch_size  # per row: a prefix length already found equal to the context
        self.fed, self.fed_host = None, None  # drafts fed last step (device tensor / host lists)
        self.extra_slots = extra_slots

    def fed_drafts(self, tokens: torch.Tensor) -> None:
        """The drafts this step fed (every one but the last), [batch, n], on the device; their
        host copy comes later (:meth:`fed_on_host`) or is read at the next catch-up."""
        self.fed, self.fed_host = tokens, None

    def fed_on_host(self, drafts: list[list[int]]) -> None:
        """The step's drafts as host lists (from the engine's one sync per step)."""
        self.fed_host = [row[:-1] for row in drafts]

    def select_rows(self, rows: list[int]) -> None:
        self.runner.select_rows(rows)
        self.cached_ids = [self.cached_ids[r] for r in rows]
        self.known = [self.known[r] for r in rows]
        if self.fed_host is not None:
            self.fed_host = [self.fed_host[r] for r in rows]
        elif self.fed is not None:
            self.fed = self.fed[torch.tensor(rows, device=self.fed.device)]

    def catch_up(self, contexts: list[list[int]], clock) -> torch.Tensor:
        """Logits after each row's context, [batch, vocab]: the prefill on the first call;
        afterwards each row's cache is rolled back to the prefix it shares with its context
        and fed the rest (ragged across rows: left holes)."""
        if not self.started:
            return self._prefill(contexts, clock)
        if self.fed is not None:
            fed = self.fed_host if self.fed_host is not None else self.fed.tolist()
            for cached, row_fed in zip(self.cached_ids, fed):
                cached.extend(row_fed)
            self.fed, self.fed_host = None, None
        # Keep at least the last context token out of the cache: its logits start the draft.
        valid = [min(shared_prefix(cached, context, known), len(context) - 1)
                 for cached, context, known in zip(self.cached_ids, contexts, self.known)]
        self.known = list(valid)
        self.runner.truncate(valid)
        feeds = [context[n:] for context, n in zip(contexts, valid)]
        for cached, n, feed in zip(self.cached_ids, valid, feeds):
            del cached[n:]
            cached.extend(feed)
        width = max(len(f) for f in feeds)
        tokens = [[0] * (width - len(f)) + f for f in feeds]
        layout = [[False] * (width - len(f)) + [True] * len(f) for f in feeds]
        feed = to_device(tokens, torch.long, self.runner.device)
        return self.runner.forward(feed, None if all(all(r) for r in layout) else layout)[:, -1]

    def _prefill(self, contexts: list[list[int]], clock) -> torch.Tensor:
        self.started = True
        if self.subset_head is not None:
            self.subset_head.set_extra({t for context in contexts for t in context})
            if self.runner.graphs is not None:
                self.runner.graphs.invalidate()  # the head's extra ids are new tensors
        self.cached_ids = [list(c) for c in contexts]
        self.known = [0] * len(contexts)
        return self.runner.start([list(c) for c in contexts], self.extra_slots, clock=clock)


def shared_prefix(cached: list[int], context: list[int], known: int = 0) -> int:
    """Length of the longest common prefix of ``cached`` and ``context``. ``known``: a length
    already found equal (both lists only change after it), where the comparison starts, so a
    step costs O(gamma), not O(context)."""
    limit = min(len(cached), len(context))
    for position in range(min(known, limit), limit):
        if cached[position] != context[position]:
            return position
    return limit
