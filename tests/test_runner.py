"""The model runner keeps every row of a batch exactly as it would be alone.

A row's logits after any sequence of forwards and rollbacks (ragged across rows, with left
padding and holes) equal those of one uncached forward over that row's tokens; the dynamic and
the static cache agree; re-packing a cache full of holes changes nothing; sliding-window
models roll back correctly past their window.
"""

from __future__ import annotations

import pytest
import torch

from conftest import IdTokenizer, make_tiny_llama
from specdec.engine.drafters import ModelDraft, NgramDraft
from specdec.engine import Engine, GenerationConfig
from specdec.errors import UsageError
from specdec.runners import ModelRunner
from specdec.runners.slots import SlotTable
from specdec.engine.sampling import GREEDY

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


# --- slot bookkeeping ---------------------------------------------------------------------------


def test_left_padded_prompts_have_holes_only_where_padding_is():
    table = SlotTable.for_prompts([3, 1])
    assert table.slots == 3 and table.lengths == [3, 1]
    assert table.valid == [[True, True, True], [False, False, True]]
    assert table.positions([[True, True], [False, True]]) == [[3, 4], [1, 1]]


def test_truncate_crops_what_no_row_kept_and_masks_the_rest():
    table = SlotTable(lengths=[0, 0])
    table.append([[True] * 4, [True] * 4])
    assert table.truncate([4, 4]) == 0 and table.valid is None
    table.append([[True] * 3, [True] * 3])  # both rows now hold 7
    crop = table.truncate([5, 6])  # row 0 keeps 1 of 3, row 1 keeps 2 of 3
    assert crop == 1 and table.slots == 6 and table.lengths == [5, 6]
    assert table.valid == [[True] * 5 + [False], [True] * 6]
    assert table.holes() == 1


def test_batch_of_one_never_has_holes():
    table = SlotTable.for_prompts([5])
    for keep in (6, 7, 7, 9):
        held = table.lengths[0] + 3
        table.append([[True] * 3])
        assert table.truncate([keep]) == held - keep
        assert table.valid is None and table.slots == table.lengths[0] == keep


def test_truncate_refuses_to_keep_more_than_a_row_holds():
    table = SlotTable.for_prompts([2])
    with pytest.raises(ValueError):
        table.truncate([3])


# --- runner against uncached forwards ----------------------------------------------------------


def full_forward_last(model, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0, -1]


@pytest.fixture(scope="module")
def model():
    return make_tiny_llama(seed=3, vocab_size=64, layers=2)


def drive(runner: ModelRunner, model, prompts, steps, seed=0):
    """Random ragged steps: every row gets 1-4 new tokens (others as holes), keeps a random
    number of them; after each step each row's last logits must equal a fresh forward."""
    rng = torch.Generator().manual_seed(seed)
    rows = [list(p) for p in prompts]
    with torch.inference_mode():
        logits = runner.start(prompts, extra_slots=steps * 5)
        for row, tokens in enumerate(rows):
            torch.testing.assert_close(logits[row], full_forward_last(model, tokens), atol=1e-5, rtol=1e-5)
        for _ in range(steps):
            counts = [int(torch.randint(1, 5, (1,), generator=rng)) for _ in rows]
            width = max(counts)
            new = [[int(t) for t in torch.randint(1, 64, (n,), generator=rng)] for n in counts]
            feed = torch.tensor([[0] * (width - len(n)) + n for n in new])
            layout = [[False] * (width - len(n)) + [True] * len(n) for n in new]
            out = runner.forward(feed, layout)
            for row, tokens in enumerate(new):
                torch.testing.assert_close(out[row, -1], full_forward_last(model, rows[row] + tokens), atol=1e-5, rtol=1e-5)
            kept = [int(torch.randint(1, len(n) + 1, (1,), generator=rng)) for n in new]
            runner.truncate([len(r) + k for r, k in zip(rows, kept)])
            for row, (tokens, k) in enumerate(zip(new, kept)):
                rows[row].extend(tokens[:k])
    return rows


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_ragged_rows_see_exactly_their_own_tokens(model, cache):
    runner = ModelRunner(model, CPU, cache)
    rows = drive(runner, model, [[1, 2, 3, 4, 5, 6, 7], [9, 8], [4, 4, 4, 4]], steps=12)
    assert runner.lengths == [len(r) for r in rows]


def test_static_cache_compacts_when_holes_fill_it(model):
    """Sized for fewer slots than the holes need, the static cache re-packs rows and goes on."""
    runner = ModelRunner(model, CPU, "static", slot_rounding=1)
    prompts = [[1, 2, 3], [7]]
    with torch.inference_mode():
        runner.start(prompts, extra_slots=18)  # 21 slots: the rows' tokens fit, their holes do not
        rows = [list(p) for p in prompts]
        for step in range(10):
            out = runner.forward(torch.tensor([[5 + step, 6], [11, 12 + step]]))
            for row in range(2):
                torch.testing.assert_close(out[row, -1], full_forward_last(model, rows[row] + list(map(int, [[5 + step, 6], [11, 12 + step]][row]))),
                                           atol=1e-5, rtol=1e-5)
            keep = [1, 2] if step % 2 else [2, 1]
            runner.truncate([len(r) + k for r, k in zip(rows, keep)])
            for row, k in enumerate(keep):
                rows[row].extend([[5 + step, 6], [11, 12 + step]][row][:k])
    # Without re-packing, 10 steps of width 2 would have needed 3 + 20 slots.
    assert runner.capacity == 21 and max(len(r) for r in rows) <= 21


def test_static_cache_is_reused_by_the_next_request_of_the_same_shape(model):
    """A reused cache keeps its addresses (captured CUDA graphs stay valid) and holds nothing
    of the previous request."""
    runner = ModelRunner(model, CPU, "static")
    with torch.inference_mode():
        runner.start([[1, 2, 3, 4]], extra_slots=8)
        first_cache = runner.cache
        runner.forward(torch.tensor([[9, 9]]))
        logits = runner.start([[5, 6]], extra_slots=8)
        assert runner.cache is first_cache
        out = runner.forward(torch.tensor([[7]]))
    torch.testing.assert_close(logits[0], full_forward_last(model, [5, 6]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0, -1], full_forward_last(model, [5, 6, 7]), atol=1e-5, rtol=1e-5)


def test_rows_leave_the_batch_and_the_others_go_on(model):
    runner = ModelRunner(model, CPU, "dynamic")
    with torch.inference_mode():
        runner.start([[1, 2, 3], [4, 5], [6, 7, 8, 9]])
        runner.forward(torch.tensor([[10], [11], [12]]))
        runner.select_rows([0, 2])
        out = runner.forward(torch.tensor([[13], [14]]))
    torch.testing.assert_close(out[0, -1], full_forward_last(model, [1, 2, 3, 10, 13]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, -1], full_forward_last(model, [6, 7, 8, 9, 12, 14]), atol=1e-5, rtol=1e-5)


def test_unknown_cache_kind_is_a_usage_error(model):
    with pytest.raises(UsageError, match="dynamic"):
        ModelRunner(model, CPU, "paged")


# --- sliding-window models -------------------------------------------------------------------------


def tiny_mistral(seed: int, window: int = 8):
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           sliding_window=window, tie_word_embeddings=False)
    return MistralForCausalLM(config).eval()


def test_sliding_window_model_past_its_window_decodes_the_targets_greedy_output():
    """A prompt of 20 tokens and 30 new ones against a window of 8: rejected drafts are rolled
    back after the window slid (transformers' activate_past_recording), and the speculative
    output is token for token the model's own greedy output."""
    target, draft = tiny_mistral(0), tiny_mistral(1)
    prompt = list(range(1, 21))
    with torch.inference_mode():
        reference = target.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 20, dtype=torch.long),
                                    max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 20:].tolist()
    engine = Engine(target, IdTokenizer(64), CPU, eos_token_ids=set())
    config = GenerationConfig(max_new_tokens=30, sampling=GREEDY, gamma=4)
    speculative = engine.generate(prompt, config, ModelDraft(draft, 64))
    assert speculative.stats["rejections"] > 0  # rollbacks happened
    assert speculative.token_ids == reference
    assert engine.generate(prompt, config, NgramDraft()).token_ids == reference
    assert engine.generate(prompt, config).token_ids == reference


def test_sliding_window_model_refuses_a_batch_with_one_line():
    engine = Engine(tiny_mistral(0), IdTokenizer(64), CPU, eos_token_ids=set())
    with pytest.raises(UsageError, match="sliding-window"):
        engine.generate_batch([[1, 2, 3], [4, 5]], GenerationConfig(max_new_tokens=4, sampling=GREEDY))


def test_forwards_wider_than_the_graph_limit_run_eagerly_and_are_never_captured():
    """A draft catching up after the draft gate held it feeds many tokens at once: such
    forwards must not capture a CUDA graph per length (routing only; no CUDA needed)."""
    from specdec.runners.cuda_graphs import MAX_GRAPH_WIDTH, GraphedDecode
    from specdec.runners.timing import ForwardClock

    clock = ForwardClock(torch.device("cpu"))
    graphed = GraphedDecode(model=None, clock=clock)
    captured = []
    graphed._capture = lambda key, *args: captured.append(key) or torch.zeros(1)
    graphed._eager = lambda tokens, *args: torch.ones(tokens.shape)
    cache = object()
    for width in (1, 5, MAX_GRAPH_WIDTH, MAX_GRAPH_WIDTH + 1, 200):
        tokens = torch.zeros(2, width, dtype=torch.long)
        graphed.run(tokens, None, None, torch.zeros(2, 1, width, 512), cache)
    assert captured == [(2, 1, 512), (2, 5, 512), (2, MAX_GRAPH_WIDTH, 512)]
    assert clock.by_width().keys() == {MAX_GRAPH_WIDTH + 1, 200}  # the eager ones, timed as decode forwards
