"""Every prompt-file loader, with malformed input failing on file, line and problem."""

import json

import pytest

from specdec.bench.workloads import poisson_arrivals, read_prompts, select
from specdec.errors import UsageError


def test_prompt_jsonl_with_and_without_ids(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "id": 7}\n\n{"prompt": "b", "category": "x"}\n')
    prompts = read_prompts(f)
    assert [p.id for p in prompts] == ["7", "p-3"]
    assert prompts[1].category == "x" and prompts[0].turns == ["a"]


def test_spec_bench_question_jsonl(shared_data):
    prompts = read_prompts(shared_data / "spec_bench" / "question.jsonl")
    assert len(prompts) == 480
    mt = [p for p in prompts if len(p.turns) == 2]
    assert len(mt) == 80 and prompts[0].category == "writing"
    chosen = select(prompts, categories=["math_reasoning"], num_prompts=5, shuffle=True, seed=1)
    assert len(chosen) == 5 and {p.category for p in chosen} == {"math_reasoning"}
    again = select(prompts, categories=["math_reasoning"], num_prompts=8, shuffle=True, seed=1)
    assert [p.id for p in again[:5]] == [p.id for p in chosen]  # raising the limit extends the run


@pytest.mark.parametrize("name", ["alpaca", "gsm8k", "humaneval", "sum", "mt_bench"])
def test_eagle_sets(shared_data, name):
    prompts = read_prompts(shared_data / "eagle" / name / "question.jsonl")
    assert len(prompts) >= 79 and all(p.turns for p in prompts)


def sharegpt(i, human="hello"):
    return {"id": f"s{i}", "conversations": [{"from": "human", "value": f"{human} {i}"}, {"from": "gpt", "value": "hi"}]}


def test_sharegpt_json_jsonl_and_folder(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([sharegpt(1), sharegpt(2), {"id": "s3", "conversations": [{"from": "gpt", "value": "x"}]}]))
    assert [p.turns[0] for p in read_prompts(tmp_path / "a.json")] == ["hello 1", "hello 2"]  # no human turn: skipped
    folder = tmp_path / "sharegpt"
    folder.mkdir()
    for k, name in enumerate(["sharegpt_gpt4.jsonl", "sharegpt_V3_format.jsonl", "sharegpt_zh_38K_format.jsonl"]):
        (folder / name).write_text(json.dumps(sharegpt(k)) + "\n")
    prompts = read_prompts(folder)
    assert [p.id for p in prompts] == ["s0", "s1", "s2"] and prompts[0].category == "sharegpt"


def test_plain_text(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("first prompt\n\nsecond prompt\n")
    assert [(p.id, p.turns) for p in read_prompts(f)] == [("prompts-1", ["first prompt"]), ("prompts-3", ["second prompt"])]


@pytest.mark.parametrize("content, fragment", [
    ('{"prompt": "ok"}\n{"prompt": "broken"\n', "bad.jsonl:2: not valid JSON"),
    ('{"prompt": "ok"}\n{"text": "x"}\n', "bad.jsonl:2: no 'prompt', 'turns' or 'conversations' field"),
    ('{"turns": []}\n', "bad.jsonl:1: 'turns' must be a non-empty list"),
    ('{"prompt": 3}\n', "bad.jsonl:1: 'prompt' must be a non-empty string"),
    ('[1, 2]\n', "bad.jsonl:1: expected a JSON object"),
    ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "bad.jsonl:2: duplicate id '1'"),
    ('{"conversations": "x"}\n', "bad.jsonl:1: 'conversations' must be a list"),
])
def test_malformed_records(tmp_path, content, fragment):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UsageError) as error:
        read_prompts(f)
    assert fragment in str(error.value)


def test_missing_and_empty(tmp_path):
    with pytest.raises(UsageError, match="no such prompt file"):
        read_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(UsageError, match="no prompts found"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="folder without prompts: expected question.jsonl"):
        read_prompts(tmp_path / "d")


def test_a_spec_bench_or_eagle_folder_reads_its_question_file(tmp_path):
    """../shared/data/eagle/humaneval is a folder holding question.jsonl: naming the folder works."""
    folder = tmp_path / "humaneval"
    folder.mkdir()
    (folder / "question.jsonl").write_text('{"question_id": 0, "category": "code", "turns": ["def f():"]}\n')
    prompts = read_prompts(folder)
    assert [(p.id, p.category, p.turns) for p in prompts] == [("0", "code", ["def f():"])]


def test_unknown_category_lists_known(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a", "category": "x"}\n')
    with pytest.raises(UsageError, match="categories in the file: x"):
        select(read_prompts(f), categories=["y"])


def test_poisson_arrivals_are_seeded_and_bounded():
    a = poisson_arrivals(10.0, seed=3, duration=2.0)
    assert a == poisson_arrivals(10.0, seed=3, duration=2.0)
    assert all(0 < t < 2.0 for t in a) and a == sorted(a)
    assert len(poisson_arrivals(5.0, seed=0, count=4)) == 4


def test_sharegpt_conversations_left_out_are_counted_by_reason(tmp_path):
    """Issue #13 item 12: nothing is dropped without a word."""
    import json as _json

    from specdec.bench.workloads import SKIPPED, read_prompts

    path = tmp_path / "sharegpt.json"
    path.write_text(_json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "I start"}, {"from": "human", "value": "then me"}]},
        {"id": "c", "conversations": [{"from": "gpt", "value": "alone"}]},
        {"id": "d", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "Hello"}]},
    ]))
    prompts = read_prompts(path)
    assert [p.id for p in prompts] == ["a", "d"]  # a system prompt first is fine
    assert SKIPPED == {"ShareGPT conversation whose first turn is the model's": 1,
                       "ShareGPT conversation with no human turn": 1}
