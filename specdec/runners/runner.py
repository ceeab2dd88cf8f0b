"""The model runner: a causal LM, its KV cache for a batch of rows, and its forwards.

The decode loop talks to a runner in three verbs and never sees a cache:

- :meth:`ModelRunner.start`: prefill a batch of prompts (left-padded), logits of each row's
  last prompt position;
- :meth:`ModelRunner.forward`: logits for ``width`` new tokens of every row at the positions
  that follow what each row holds;
- :meth:`ModelRunner.truncate`: how many tokens each row keeps (the rest is rolled back:
  cropped where no row kept it, masked as a hole where another row did; see
  :mod:`specdec.runners.slots`).

Two caches behind the same verbs:

- ``dynamic``: transformers' ``DynamicCache`` (grows by concatenation; rollback is ``crop``).
  The CPU default, where the prepacked decode copy of the model does the work.
- ``static``: transformers' ``StaticCache``, allocated once per request for prompt + new
  tokens + the widest draft window; rollback moves its length back (no copy); forwards get
  explicit ``cache_position`` and a ready 4-D attention mask built on the device, so every
  decode forward of a given width has fixed shapes and addresses. That is what a CUDA graph
  needs (:mod:`specdec.runners.cuda_graphs` captures them on CUDA); on CPU the same inputs run
  eagerly, which is how the tests check this path without a GPU.
"""

from __future__ import annotations

import torch

from specdec.runners.cache import crop_cache, has_sliding_layers, new_cache
from specdec.errors import UsageError
from specdec.runners.slots import SlotTable
from specdec.runners.timing import ForwardClock
from specdec.runners.transfer import to_device

CACHE_KINDS = ("dynamic", "static")
#: Static caches are sized in multiples of this many slots, so that requests of similar
#: lengths reuse one cache (and the CUDA graphs captured on it).
STATIC_ROUNDING = 256


class ModelRunner:
    """Runs one causal LM over a batch of rows.

    model: the module whose forwards decode (the prepacked copy on CPU, see specdec.runners.prepack).
    device: where its inputs go.
    cache_kind: "dynamic" or "static" (see the module docstring).
    graphs: on CUDA with the static cache, replay decode forwards from CUDA graphs captured
        once per width (:mod:`specdec.runners.cuda_graphs`); ignored elsewhere.
    clock: accounts forward time (prefill / decode, per width); one is made if not given.
    slot_rounding: the static cache's size is a multiple of this many slots.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, cache_kind: str = "dynamic",
                 graphs: bool = False, clock: ForwardClock | None = None,
                 slot_rounding: int = STATIC_ROUNDING) -> None:
        if cache_kind not in CACHE_KINDS:
            raise UsageError(f"unknown cache {cache_kind!r}: use one of {', '.join(CACHE_KINDS)}")
        self.model = model
        self.device = torch.device(device)
        self.cache_kind = cache_kind
        self.slot_rounding = slot_rounding
        self.clock = clock or ForwardClock(self.device)
        self.graphs = None
        if graphs and cache_kind == "static" and self.device.type == "cuda":
            from specdec.runners.cuda_graphs import GraphedDecode

            self.graphs = GraphedDecode(model, self.clock)
        self.cache = None
        self._cache_batch = 0
        self.table: SlotTable | None = None
        self.capacity = 0
        self._slot_valid: torch.Tensor | None = None  # static cache: [batch, capacity] bool

    # --- the three verbs ---------------------------------------------------------------

    def start(self, prompts: list[list[int]], extra_slots: int = 0, pad_id: int = 0,
              clock: ForwardClock | None = None) -> torch.Tensor:
        """Start a request: prefill ``prompts`` (one row each) and return the logits of each
        row's last prompt token, [batch, vocab]. ``extra_slots``: how many slots beyond the
        longest prompt the static cache must hold (new tokens + the widest draft window);
        ignored by the dynamic cache. ``clock``: where this request's forwards are timed."""
        if clock is not None:
            self.clock = clock
            if self.graphs is not None:
                self.graphs.clock = clock
        if any(len(p) == 0 for p in prompts):
            raise UsageError("a prompt is empty: give at least one token of text")
        self.table = SlotTable.for_prompts([len(p) for p in prompts])
        width = self.table.slots
        static_length = None
        if self.cache_kind == "static":
            needed = width + max(extra_slots, 1)
            if self.cache is not None and self._cache_batch == len(prompts) and self.capacity >= needed:
                # Same shapes as the last request: reuse the cache (and so its captured
                # graphs, which hold its addresses) after zeroing it.
                self.cache.reset()
                static_length = self.capacity
            else:
                static_length = -(-needed // self.slot_rounding) * self.slot_rounding
                self.cache = new_cache(self.model, static_length)
                self._cache_batch = len(prompts)
        else:
            self.cache = new_cache(self.model)
        if len(prompts) > 1 and has_sliding_layers(self.cache):
            raise UsageError(
                "batches of more than one prompt are not supported for sliding-window models "
                "(their window would count padding and holes as tokens): use batch size 1"
            )
        self.capacity = static_length or 0
        padded = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
        input_ids = torch.tensor(padded, dtype=torch.long, device=self.device)
        kwargs = {}
        if self.table.has_holes or self.cache_kind == "static":
            kwargs["attention_mask"] = self._mask_2d(width)
        # Left padding: a row's prompt starts at position 0 wherever its first slot is.
        positions = torch.tensor([[0] * (width - len(p)) + list(range(len(p))) for p in prompts], device=self.device)
        if self.cache_kind == "static":
            self._slot_valid = torch.zeros(len(prompts), self.capacity, dtype=torch.bool, device=self.device)
            self._slot_valid[:, :width] = kwargs["attention_mask"][:, :width].bool()
            kwargs["cache_position"] = torch.arange(width, device=self.device)
        with self.clock.span(width, prefill=True):
            output = self.model(input_ids=input_ids, position_ids=positions, past_key_values=self.cache,
                                use_cache=True, logits_to_keep=1, **kwargs)
        # The dynamic cache is trimmed after every forward (a sliding window needs it).
        crop_cache(self.cache, 0, width)
        return output.logits[:, -1]

    def forward(self, tokens: torch.Tensor, layout: list[list[bool]] | None = None) -> torch.Tensor:
        """Logits [batch, width, vocab] for ``tokens`` [batch, width] appended to every row.

        layout: per row and slot, False where the slot carries no token of that row (a row
        that needs fewer tokens than the widest one this step; finished rows); None when
        every slot is a real token. The valid slots count as the row's tokens until
        :meth:`truncate` rolls some back.
        """
        table = self.table
        batch, width = tokens.shape
        if layout is None:
            layout = [[True] * width for _ in range(batch)]
        if self.cache_kind == "static" and table.slots + width > self.capacity:
            self._compact()
            if table.slots + width > self.capacity:
                raise RuntimeError(f"static cache of {self.capacity} slots is full; this is a bug in sizing it")
        start = table.slots
        if table.valid is None and batch == 1 and all(layout[0]):
            # The common case, batch 1: positions follow from the length alone (no host data).
            positions = torch.arange(table.lengths[0], table.lengths[0] + width, device=self.device).unsqueeze(0)
        else:
            positions = to_device(table.positions(layout), torch.long, self.device)
        table.append(layout)
        if self.cache_kind == "static":
            if all(all(row) for row in layout):
                self._slot_valid[:, start:start + width] = True
            else:
                self._slot_valid[:, start:start + width] = to_device(layout, torch.bool, self.device)
            mask = self._mask_4d(start, width)
            cache_position = torch.arange(start, start + width, device=self.device)
            if self.graphs is not None:
                return self.graphs.run(tokens, positions, cache_position, mask, self.cache)
            with self.clock.span(width):
                output = self.model(input_ids=tokens, position_ids=positions, attention_mask=mask,
                                    cache_position=cache_position, past_key_values=self.cache,
                                    use_cache=True, logits_to_keep=width)
            return output.logits
        kwargs = {"attention_mask": self._mask_2d(table.slots)} if table.has_holes else {}
        with self.clock.span(width):
            output = self.model(input_ids=tokens, position_ids=positions, past_key_values=self.cache,
                                use_cache=True, logits_to_keep=width, **kwargs)
        return output.logits

    def truncate(self, keep: list[int]) -> None:
        """Row b keeps only its first ``keep[b]`` tokens: the rollback of rejected drafts.
        Slots no row keeps are cropped (the static cache just moves its length back); the
        others become masked holes."""
        table = self.table
        before = table.slots
        crop = table.truncate(keep)
        crop_cache(self.cache, crop, before)
        if self._slot_valid is not None:
            self._slot_valid[:, table.slots:before] = False
            if table.valid is not None:
                self._slot_valid[:, : table.slots] = to_device(table.valid, torch.bool, self.device)

    # --- rows leaving the batch ----------------------------------------------------------

    def select_rows(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices into the current batch); finished rows leave it.

        The static cache keeps its shapes (a captured graph needs them): there, callers keep
        finished rows in the batch and feed them holes instead.
        """
        if self.cache_kind == "static":
            raise RuntimeError("the static cache keeps every row; mask finished rows instead")
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(index)
        self.table.select(rows)
        # Leading slots that are now padding in every remaining row can go too.
        self._drop_leading_padding()

    @property
    def lengths(self) -> list[int]:
        """Tokens each row holds (its next token's position)."""
        return self.table.lengths

    @property
    def batch_size(self) -> int:
        return self.table.batch_size

    @property
    def holes(self) -> int:
        """Masked slots in the cache, summed over rows (padding and rolled-back drafts)."""
        return self.table.holes()

    # --- masks -----------------------------------------------------------------------------

    def _mask_2d(self, slots: int) -> torch.Tensor:
        """[batch, slots] (or [batch, capacity] for the static cache) long mask of valid slots."""
        table = self.table
        length = self.capacity if self.cache_kind == "static" else slots
        valid = table.valid if table.valid is not None else [[True] * table.slots] * table.batch_size
        rows = [row + [False] * (length - len(row)) for row in valid]
        return to_device(rows, torch.long, self.device)

    def _mask_4d(self, start: int, width: int) -> torch.Tensor:
        """Additive [batch, 1, width, capacity] mask for a static-cache decode forward: query i
        (slot start + i) sees key slot j when j <= start + i and j holds a token of its row.
        Built on the device from fixed-shape tensors: no host sync, graph-capturable."""
        dtype = self._logits_dtype()
        slots = torch.arange(self.capacity, device=self.device)
        query_slots = torch.arange(start, start + width, device=self.device)
        causal = slots.unsqueeze(0) <= query_slots.unsqueeze(1)  # [width, capacity]
        allowed = causal.unsqueeze(0) & self._slot_valid.unsqueeze(1)  # [batch, width, capacity]
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask.unsqueeze(1)

    def _logits_dtype(self) -> torch.dtype:
        for parameter in self.model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.float32

    # --- keeping the cache small ---------------------------------------------------------

    def _layers(self):
        return [layer for layer in getattr(self.cache, "layers", ()) if getattr(layer, "is_initialized", False)]

    def _drop_leading_padding(self) -> None:
        table = self.table
        if table.valid is None:
            return
        lead = min(next((i for i, v in enumerate(row) if v), len(row)) for row in table.valid)
        if lead == 0:
            return
        for layer in self._layers():
            layer.keys = layer.keys[:, :, lead:]
            layer.values = layer.values[:, :, lead:]
        table.valid = [row[lead:] for row in table.valid]
        table.slots -= lead
        if all(all(row) for row in table.valid):
            table.valid = None

    def _compact(self) -> None:
        """Re-pack every row's tokens to the right end of the fewest slots (holes dropped).
        One gather per layer; runs only when the static cache would overflow."""
        table = self.table
        order, width = table.compaction_order()
        index = torch.tensor(order, dtype=torch.long, device=self.device)  # [batch, width]
        for layer in self._layers():
            for name in ("keys", "values"):
                stored = getattr(layer, name)
                gather = index[:, None, :, None].expand(-1, stored.shape[1], -1, stored.shape[3])
                packed = stored.gather(2, gather)
                if self.cache_kind == "static":
                    stored[:, :, :width].copy_(packed)
                else:
                    setattr(layer, name, packed)
            if self.cache_kind == "static":
                layer.cumulative_length.fill_(width)
        table.compacted()
        if self._slot_valid is not None:
            self._slot_valid.zero_()
            for row, length in enumerate(table.lengths):
                self._slot_valid[row, width - length:width] = True
