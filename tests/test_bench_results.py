"""Results folder mechanics (resume keys, cut lines), gamma parsing, chat-template encoding."""

import pytest

from specdec.bench.config import load_config
from specdec.bench.results import ResultsDir
from specdec.bench.sweep import best_gamma, parse_gammas, sweep_markdown
from specdec.bench.workloads import encode_turns
from specdec.errors import UsageError


def config(**flags):
    return load_config(environ={}, flags={"model": "m", "workload.benchmark": "p.jsonl", **flags})


def test_append_load_and_cut_last_line(tmp_path):
    results = ResultsDir(tmp_path / "out")
    assert results.prepare(config()) == 0
    results.append({"key": "a"})
    results.append({"key": "b"})
    with results.responses.open("a") as f:
        f.write('{"key": "c", "te')
    assert [r["key"] for r in results.load_records()] == ["a", "b"]
    assert results.prepare(config()) == 2  # repairs the file
    results.append({"key": "c"})
    assert [r["key"] for r in results.load_records()] == ["a", "b", "c"]


def test_garbage_in_the_middle_is_an_error(tmp_path):
    results = ResultsDir(tmp_path)
    results.prepare(config())
    results.responses.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(UsageError, match="line 2 is not valid JSON"):
        results.load_records()


def test_changed_config_refused_unless_overwrite(tmp_path):
    results = ResultsDir(tmp_path)
    results.prepare(config())
    results.append({"key": "a"})
    assert results.prepare(config(**{"workload.num_prompts": 50})) == 1  # extending is fine
    with pytest.raises(UsageError, match="generation.top_k: 0 -> 5"):
        results.prepare(config(**{"generation.top_k": 5}))
    assert results.prepare(config(**{"generation.top_k": 5}), overwrite=True) == 0


def test_responses_without_config_refused(tmp_path):
    (tmp_path / "responses.jsonl").write_text('{"key": "a"}\n')
    with pytest.raises(UsageError, match="no config.yaml"):
        ResultsDir(tmp_path).prepare(config())


def test_parse_gammas_and_best():
    assert parse_gammas("1-4") == [1, 2, 3, 4]
    assert parse_gammas("1,2,8") == [1, 2, 8]
    assert parse_gammas("2-8:3,1") == [1, 2, 5, 8]
    for bad in ("0-3", "x", "5-2"):
        with pytest.raises(UsageError):
            parse_gammas(bad)
    rows = [{"gamma": g, "speedup": s, "forward_speedup": 1.0, "alpha": 0.5, "tau": 1.5, "efficiency": None}
            for g, s in ((1, 1.1), (2, 1.4), (3, 1.2))]
    assert best_gamma(rows) == 2
    assert "best gamma: 2" in sweep_markdown(rows)


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text] if add_special_tokens is False else [0] + [ord(c) for c in text]}


def test_chat_template_applied_unless_turned_off():
    tok = ChatTokenizer()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ok"}]
    assert "".join(map(chr, encode_turns(tok, messages, True))) == "<user>hi<assistant>yo<user>ok<assistant>"
    assert "".join(map(chr, encode_turns(tok, messages, False)[1:])) == "hi\n\nyo\n\nok"


def test_a_sweep_where_every_gamma_is_slower_names_no_best_gamma():
    from specdec.bench.sweep import best_gamma, sweep_markdown

    rows = [{"gamma": g, "speedup": s, "forward_speedup": 2.0, "alpha": 0.5, "tau": 1.5, "efficiency": 0.5}
            for g, s in ((1, 0.8), (2, 0.9), (4, 0.7))]
    assert best_gamma(rows) is None
    text = sweep_markdown(rows)
    assert "no gamma pays" in text and "baseline is best" in text and "best gamma: 2" not in text


def test_a_sweep_of_one_gamma_draws_no_line(tmp_path):
    from specdec.bench.plots import plot_speedup_tau

    summary = {"methods": {"speculative:gamma=4": {"gamma": 4, "speedup": 1.2, "backend": "speculative"}}}
    assert plot_speedup_tau(summary, tmp_path / "s.png") is None
    summary["methods"]["speculative:gamma=2"] = {"gamma": 2, "speedup": 1.1, "backend": "speculative"}
    assert plot_speedup_tau(summary, tmp_path / "s.png") is not None
