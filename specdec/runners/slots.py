"""Where each row's tokens sit in a batched KV cache: slots, holes and positions.

A batched cache has one slot axis for every row. Every forward appends the same number of
slots (its width) to every row, but rows do not keep the same number of tokens: prompts have
different lengths (left padding), and in speculative decoding each row accepts its own number
of drafts (ragged acceptance). A slot that holds no token of its row is a *hole*: it stays in
the cache, masked out of attention for good, and the row's positions (RoPE) count only its
real tokens, so a row sees exactly what it would see alone.

Holes appear only when rows differ. With one row nothing is ever masked: a rollback crops the
rejected slots, as the batch-1 loop always did. With several rows, a rollback crops the slots
that are holes in every row (the tail beyond the row that kept the most) and masks the rest.

This module is plain bookkeeping on the host (Python ints, small lists); the runner turns it
into the ``attention_mask`` / ``position_ids`` tensors of a forward.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SlotTable:
    """Per-row token counts and the validity of every slot of a batched cache.

    lengths: real tokens each row holds (its next token's position).
    valid: per row, one bool per slot (False = a hole or left padding); None while every slot
        of every row is valid (batch 1, or equal rows), which saves building masks.
    """

    lengths: list[int]
    slots: int = 0
    valid: list[list[bool]] | None = None

    @classmethod
    def for_prompts(cls, prompt_lengths: list[int]) -> "SlotTable":
        """Left-padded prompts: row b's prompt fills the last ``prompt_lengths[b]`` slots."""
        width = max(prompt_lengths)
        table = cls(lengths=[0] * len(prompt_lengths))
        table.append([[False] * (width - n) + [True] * n for n in prompt_lengths])
        return table

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def has_holes(self) -> bool:
        return self.valid is not None

    def positions(self, layout: list[list[bool]]) -> list[list[int]]:
        """Position id of each slot of a forward whose slot validity is ``layout`` (valid slots
        count up from the row's length; a hole repeats the next valid position: any finite
        value works, it is masked)."""
        result = []
        for length, row in zip(self.lengths, layout):
            position, out = length, []
            for is_valid in row:
                out.append(position)
                position += is_valid
            result.append(out)
        return result

    def append(self, layout: list[list[bool]]) -> None:
        """A forward wrote ``len(layout[0])`` slots to every row; row b's valid ones are now
        its tokens (until :meth:`truncate` takes some back)."""
        if self.valid is None and not all(all(row) for row in layout):
            self.valid = [[True] * self.slots for _ in self.lengths]
        self.slots += len(layout[0])
        for row, row_new in enumerate(layout):
            self.lengths[row] += sum(row_new)
            if self.valid is not None:
                self.valid[row].extend(row_new)

    def truncate(self, keep: list[int]) -> int:
        """Row b keeps only its first ``keep[b]`` tokens (its later slots become holes).
        Returns how many trailing slots are now holes in every row: the caller crops them
        from the cache, and this table forgets them."""
        if all(k == n for k, n in zip(keep, self.lengths)):
            return 0
        if self.valid is None:
            self.valid = [[True] * self.slots for _ in self.lengths]
        for row, (row_valid, n_keep) in enumerate(zip(self.valid, keep)):
            if n_keep > self.lengths[row]:
                raise ValueError(f"row {row} holds {self.lengths[row]} tokens and cannot keep {n_keep}")
            seen = 0
            for index, is_valid in enumerate(row_valid):
                if is_valid:
                    seen += 1
                    if seen > n_keep:
                        row_valid[index] = False
            self.lengths[row] = n_keep
        ends = [max((i + 1 for i, v in enumerate(row) if v), default=0) for row in self.valid]
        crop = self.slots - max(ends)
        self.slots -= crop
        for row_valid in self.valid:
            del row_valid[self.slots :]
        if all(all(row) for row in self.valid):
            self.valid = None
        return crop

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows`` (finished rows leave the batch)."""
        self.lengths = [self.lengths[r] for r in rows]
        if self.valid is not None:
            self.valid = [self.valid[r] for r in rows]
            if all(all(row) for row in self.valid):
                self.valid = None

    def holes(self) -> int:
        """Slots that hold no token, summed over rows."""
        return 0 if self.valid is None else sum(row.count(False) for row in self.valid)

    def compaction_order(self) -> tuple[list[list[int]], int]:
        """For re-packing the cache: per row, the slot indices to gather so that its tokens end
        right-aligned (holes first, then its tokens in order), and the new slot count (the
        longest row). After gathering, call :meth:`compacted`."""
        width = max(self.lengths)
        order = []
        for row_valid, length in zip(self.valid or [[True] * self.slots] * len(self.lengths), self.lengths):
            tokens = [i for i, v in enumerate(row_valid) if v]
            fill = [i for i, v in enumerate(row_valid) if not v][: width - length]
            fill += [0] * (width - length - len(fill))
            order.append(fill + tokens)
        return order, width

    def compacted(self) -> None:
        """The cache was re-packed as :meth:`compaction_order` said."""
        width = max(self.lengths)
        self.slots = width
        layout = [[False] * (width - n) + [True] * n for n in self.lengths]
        self.valid = None if all(all(row) for row in layout) else layout
