"""The streaming client and the open-loop harness against a throwaway OpenAI-compatible server
(the standard library's HTTP server in a thread): the stream is parsed as the engines send it,
errors are one line and a failed request never stops a run, counters become acceptance."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from specdec.bench.runner import BenchmarkRunner
from specdec.bench.backends.server.launchers import ServerError, free_port
from specdec.bench.backends.server.load import Job, arrival_offsets, build_jobs, drive
from specdec.bench.backends.server.openai_client import Sampling, request_body, stream_request
from specdec.bench.workloads import Prompt


class FakeServer:
    """An OpenAI-compatible server whose answers depend on the prompt text: "FAIL500" gets an
    HTTP 500, "CUT" a stream cut before [DONE], "NOUSAGE" no usage chunk; anything else
    ``max_tokens`` one-word chunks, the usage, llama.cpp-style timings, then [DONE]. ``/metrics``
    shows llama.cpp speculation counters that grow by 5 steps per request (0 with
    ``drafting=False``)."""

    def __init__(self, drafting: bool = True) -> None:
        self.drafting = drafting
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.counters = {"drafts": 0, "draft_tokens": 0, "accepted": 0, "pos": [0, 0, 0, 0]}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health":
                    self._send(200, b"{}")
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())
                elif self.path == "/metrics":
                    c = server.counters
                    lines = [f"# TYPE llamacpp:spec_decode_num_{name}_total counter\nllamacpp:spec_decode_num_{name}_total {c[key]}"
                             for name, key in (("drafts", "drafts"), ("draft_tokens", "draft_tokens"),
                                               ("accepted_tokens", "accepted"))]
                    lines.append("# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter")
                    lines += [f'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}} {v}'
                              for i, v in enumerate(c["pos"])]
                    self._send(200, ("\n".join(lines) + "\n").encode(), "text/plain")
                else:
                    self._send(404, b'{"error": {"message": "no such path"}}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(body, prompt)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, body, prompt):
                if "FAIL500" in prompt:
                    self._send(500, b'{"error": {"message": "boom", "code": 500}}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                n = body["max_tokens"]
                for i in range(n):
                    if "CUT" in prompt and i == 2:
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # the server goes away mid-stream
                        return
                    chunk = {"choices": [{"index": 0, "text": f" w{i}", "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.002)
                final = {"choices": [], "timings": {"draft_n": 8, "draft_n_accepted": 6}}
                if "NOUSAGE" not in prompt:
                    final["usage"] = {"completion_tokens": n, "prompt_tokens": 3}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
                with server.lock:
                    if server.drafting:  # 5 steps of 4 drafts: 4, 4, 2, 1, 0 accepted
                        c = server.counters
                        c["drafts"] += 5
                        c["draft_tokens"] += 20
                        c["accepted"] += 11
                        for k, v in enumerate([4, 3, 2, 2]):
                            c["pos"][k] += v

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _ask(url: str, prompt: str, max_tokens: int = 5, timeout_s: float = 10.0):
    async def go():
        async with httpx.AsyncClient(timeout=None) as client:
            path, body = request_body("completions", "fake-model", [{"role": "user", "content": prompt}],
                                      Sampling(max_tokens=max_tokens))
            return await stream_request(client, url, path, body, timeout_s=timeout_s)

    return asyncio.run(go())


# --------------------------------------------------------------------------------------------
def test_stream_is_parsed_with_usage_from_the_server():
    with FakeServer() as server:
        result = _ask(server.url, "hello", max_tokens=5)
    assert result.ok and result.error is None
    assert result.text == " w0 w1 w2 w3 w4"
    assert result.completion_tokens == 5 and result.prompt_tokens == 3  # from usage, not chunks
    assert result.ttft_s is not None and len(result.itl_s) == 4  # gaps between the 5 text chunks
    assert result.e2e_s >= result.ttft_s and result.tpot_s is not None
    assert result.server == {"server_draft_tokens": 8, "server_accepted_tokens": 6}


def test_a_stream_without_usage_has_no_token_count():
    with FakeServer() as server:
        result = _ask(server.url, "NOUSAGE", max_tokens=4)
    assert result.ok and result.completion_tokens is None and result.tpot_s is None


@pytest.mark.parametrize("prompt, expected", [
    ("FAIL500", "HTTP 500 from http://127.0.0.1:{port}/v1/completions: boom"),
    ("CUT", "the stream from http://127.0.0.1:{port}/v1/completions"),
])
def test_server_errors_are_one_line(prompt, expected):
    with FakeServer() as server:
        result = _ask(server.url, prompt, max_tokens=6)
        port = server.httpd.server_address[1]
    assert not result.ok
    assert result.error.startswith(expected.format(port=port)) and "\n" not in result.error


def test_connection_refused_is_one_line():
    port = free_port()  # nothing listens there
    result = _ask(f"http://127.0.0.1:{port}", "hello")
    assert not result.ok and result.error.startswith(f"cannot connect to http://127.0.0.1:{port}/v1/completions")


def test_a_request_that_takes_too_long_fails_on_its_time_limit():
    with FakeServer() as server:
        result = _ask(server.url, "hello", max_tokens=200, timeout_s=0.05)
    assert not result.ok and "within 0.05 s" in result.error


def test_chat_and_completion_bodies():
    sampling = Sampling(max_tokens=7, temperature=0.5, top_k=20, seed=3, ignore_eos=True, stop=("END",))
    path, body = request_body("chat", "m", [{"role": "user", "content": "hi"}], sampling)
    assert path == "/v1/chat/completions" and body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["max_tokens"], body["temperature"], body["top_k"], body["seed"], body["ignore_eos"], body["stop"]) == \
        (7, 0.5, 20, 3, True, ["END"])
    path, body = request_body("completions", "m", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                                   {"role": "user", "content": "c"}], Sampling(max_tokens=1))
    assert path == "/v1/completions" and body["prompt"] == "a\n\nb\n\nc" and "top_k" not in body


# --------------------------------------------------------------------------------------------
def test_arrival_schedules():
    assert arrival_offsets("fixed", None, 3, None, 0) is None
    assert arrival_offsets("burst", None, 3, None, 0) == [0.0, 0.0, 0.0]
    assert arrival_offsets("constant", 4.0, 3, None, 0) == [0.0, 0.25, 0.5]
    assert arrival_offsets("constant", 2.0, None, 2.0, 0) == [0.0, 0.5, 1.0, 1.5]
    poisson = arrival_offsets("poisson", 10.0, 50, None, 1)
    assert len(poisson) == 50 and poisson == sorted(poisson) and poisson == arrival_offsets("poisson", 10.0, 50, None, 1)
    prompts = [Prompt("a", ["x"]), Prompt("b", ["y"])]
    jobs = build_jobs(prompts, "constant", 1.0, 0, 5, None, 0)
    assert [j.prompt_id for j in jobs] == ["a", "b", "a~1", "b~1", "a~2"]


def _concurrency(arrivals, cap):
    """The most jobs that were inside ``serve`` at once."""
    state = {"now": 0, "max": 0}

    async def serve(job, arrived, waited):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1

    jobs = [Job(Prompt(str(i), ["x"]), str(i), 0, at) for i, at in enumerate(arrivals)]
    asyncio.run(drive(jobs, serve, cap))
    return state["max"]


def test_open_loop_sends_without_waiting_and_respects_the_cap():
    assert _concurrency([0.0] * 6, None) == 6  # arrivals do not wait for earlier answers
    assert _concurrency([0.0] * 6, 2) == 2
    assert _concurrency([None] * 3, None) == 1  # fixed mode: one after another


# --------------------------------------------------------------------------------------------
def _workload(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "p1", "prompt": "hello one"}, {"id": "p2", "prompt": "FAIL500 please"},
            {"id": "p3", "prompt": "hello three"}, {"id": "p4", "prompt": "hello four"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(url, workload, **load):
    return {"model": "fake-model", "generation": {"max_tokens": 6},
            "speculative": {"num_speculative_tokens": 4, "draft_model": "fake-draft"},
            "engine": {"backend": "openai", "base_url": url},
            "workload": {"benchmark": str(workload), "chat_template": False},
            "load": {"mode": "poisson", "rate": [50, 200], "slo_ttft_ms": 10000, **load},
            "run": {"methods": ["speculative"], "warmup": 1, "monitor": False, "bootstrap": 0}}


def test_harness_on_a_server_goes_on_after_failures_and_reports_server_acceptance(tmp_path):
    workload = _workload(tmp_path)
    with FakeServer() as server:
        metrics = BenchmarkRunner(_config(server.url, workload), tmp_path / "run", progress=False).run()
        sent = server.requests
        again = BenchmarkRunner(_config(server.url, workload), tmp_path / "run", progress=False).run()
        assert server.requests == sent  # resumed: nothing is sent twice
    rows = metrics["summary"]["methods"]
    assert list(rows) == ["speculative@50", "speculative@200"]
    for row in rows.values():
        assert row["requests_sent"] == 4 and row["failed"] == 1 and row["requests"] == 3
        assert row["new_tokens"] == 18 and row["request_throughput"] > 0 and row["goodput"] is not None
        # 3 answered requests x (5 steps, 20 drafted, 11 accepted); per position 4, 3, 2, 2
        assert (row["steps"], row["proposed"], row["accepted"]) == (15, 60, 33)
        assert row["tau"] == pytest.approx(1 + 33 / 15)
        assert row["draft_acceptance_rate"] == pytest.approx(33 / 60)
        assert row["rejections"] == 15 - 6 and row["alpha"] == pytest.approx(33 / (33 + 9))
        assert row["accept_upto"] == pytest.approx([12 / 15, 9 / 15, 6 / 15, 6 / 15])
        assert row["accept_at"] == pytest.approx([12 / 15, 9 / 12, 6 / 9, 6 / 6])
        assert row["acceptance_exact"] is True
    failed = [r for r in metrics["records"] if not r["ok"]]
    assert len(failed) == 2 and all(r["error"].endswith(": boom") for r in failed)
    assert again["summary"]["methods"]["speculative@50"]["requests_sent"] == 4


def test_zero_drafts_with_a_draft_configured_is_an_error(tmp_path):
    with FakeServer(drafting=False) as server:
        with pytest.raises(ServerError, match=r"speculative@50: openai reported 0 drafts although a draft was configured"):
            BenchmarkRunner(_config(server.url, _workload(tmp_path)), tmp_path / "run", progress=False).run()
    assert (tmp_path / "run" / "responses.jsonl").read_text().count("\n") == 4  # what ran is kept


def test_row_labels_keep_gamma_last():
    from specdec.bench.backends.server.load import row_label
    from specdec.bench.sweep import sweep_rows

    assert row_label("speculative:gamma=2", 4.0) == "speculative@4:gamma=2"
    assert row_label("target", 0.5) == "target@0.5" and row_label("ngram", None) == "ngram"
    metrics = {"summary": {"methods": {"target@4": {}, "speculative@4:gamma=2": {}}}}
    assert [r["gamma"] for r in sweep_rows(metrics)] == [2]  # `specdec report` reads gamma from the label
