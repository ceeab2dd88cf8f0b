"""A streaming client of OpenAI-compatible servers (vLLM, SGLang, llama.cpp's llama-server, ...).

One request is one POST to ``/v1/completions`` or ``/v1/chat/completions`` with
``stream: true`` and ``stream_options.include_usage``; the answer is read chunk by chunk as
server-sent events. Times come from the client's clock (``time.perf_counter``):

- ``ttft_s``: request sent -> first chunk carrying text;
- ``itl_s``: the gaps between later chunks carrying text (a chunk can carry several tokens when
  the server accepts several drafts in one step: these gaps are per chunk, not per token);
- ``e2e_s``: request sent -> the end of the stream.

Token counts come from the ``usage`` the server sends at the end, never from counting chunks;
without it they are None. A refused connection, an HTTP error, a timeout or a stream cut before
``[DONE]`` gives a failed :class:`StreamResult` with a one-line ``error``; nothing is raised, so
one failed request never stops a run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx

#: per-response fields some engines add: llama.cpp's ``timings`` (draft_n, draft_n_accepted),
#: SGLang's ``meta_info`` (spec_verify_ct and, in newer versions, accepted / proposed drafts)
SERVER_FIELDS = {
    "draft_n": "server_draft_tokens",
    "draft_n_accepted": "server_accepted_tokens",
    "spec_verify_ct": "server_verify_steps",
    "spec_accept_token_num": "server_accepted_tokens",
    "spec_num_correct_drafts": "server_accepted_tokens",
    "spec_draft_token_num": "server_draft_tokens",
    "spec_num_proposed_drafts": "server_draft_tokens",
}


@dataclass
class Sampling:
    """Generation parameters passed through to the server (the same for every method)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

    def payload(self) -> dict:
        body = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.top_k:
            body["top_k"] = self.top_k  # an extension vLLM, SGLang and llama.cpp accept
        if self.seed is not None:
            body["seed"] = self.seed
        if self.ignore_eos:
            body["ignore_eos"] = True  # an extension vLLM, SGLang and llama.cpp accept
        if self.stop:
            body["stop"] = list(self.stop)
        return body


@dataclass
class StreamResult:
    """One streamed request as the client saw it (seconds, tokens)."""

    ok: bool
    error: str | None = None
    text: str = ""
    ttft_s: float | None = None
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    server: dict = field(default_factory=dict)  # SERVER_FIELDS values the server sent

    @property
    def tpot_s(self) -> float | None:
        """``(e2e - ttft) / (tokens - 1)`` with the server's token count."""
        if self.ttft_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)


def request_body(api: str, model: str, messages: list[dict], sampling: Sampling) -> tuple[str, dict]:
    """(path, JSON body) of one streamed request. ``api`` "chat" sends the conversation (the
    server applies the model's chat template); "completions" sends the turns joined by blank
    lines as plain text, as the native backends do without a chat template."""
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True}, **sampling.payload()}
    if api == "chat":
        return "/v1/chat/completions", {**body, "messages": messages}
    return "/v1/completions", {**body, "prompt": "\n\n".join(m["content"] for m in messages)}


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(body: bytes) -> str:
    """The message of an OpenAI-style error body, or the body itself."""
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else error
        return _one_line(message if message else body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return _one_line(body.decode(errors="replace")) or "(empty body)"


def _chunk_text(chunk: dict) -> str:
    texts = []
    for choice in chunk.get("choices") or []:
        if "text" in choice:
            texts.append(choice.get("text") or "")
        delta = choice.get("delta") or {}
        texts.append(delta.get("content") or "")
    return "".join(texts)


def _server_fields(chunk: dict, into: dict) -> None:
    """Copy the engines' per-response speculation fields found in ``chunk`` into ``into``."""
    for holder in (chunk.get("timings"), chunk.get("meta_info"), chunk):
        if isinstance(holder, dict):
            for key, name in SERVER_FIELDS.items():
                if isinstance(holder.get(key), (int, float)):
                    into[name] = holder[key]


async def stream_request(client: httpx.AsyncClient, base_url: str, path: str, body: dict,
                         headers: dict | None = None, timeout_s: float = 600.0) -> StreamResult:
    """Send one streaming request and read it to the end; never raises for server trouble.

    timeout_s bounds the whole request (connection, waiting and streaming)."""
    import asyncio

    url = base_url.rstrip("/") + path
    result = StreamResult(ok=False)
    start = time.perf_counter()
    last = None
    try:
        async with asyncio.timeout(timeout_s) if hasattr(asyncio, "timeout") else _Deadline(timeout_s):
            async with client.stream("POST", url, json=body, headers=headers or {}) as response:
                if response.status_code >= 400:
                    content = await response.aread()
                    result.error = f"HTTP {response.status_code} from {url}: {_error_text(content)}"
                    return result
                done = False
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, "event:" lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    last = _take_chunk(data, url, result, start, last)
                    if result.error:
                        return result
                if not done:
                    result.error = f"the stream from {url} ended before [DONE] ({len(result.text)} characters received)"
                    return result
        result.ok = True
        return result
    except (TimeoutError, httpx.TimeoutException):
        result.error = f"no complete answer from {url} within {timeout_s:g} s (engine.request_timeout_s)"
        return result
    except httpx.ConnectError as error:
        result.error = f"cannot connect to {url}: {_one_line(error) or 'connection refused'}"
        return result
    except (httpx.RemoteProtocolError, httpx.ReadError) as error:
        result.error = f"the stream from {url} was cut: {_one_line(error) or type(error).__name__}"
        return result
    except httpx.HTTPError as error:
        result.error = f"request to {url} failed: {type(error).__name__}: {_one_line(error)}"
        return result
    finally:
        result.e2e_s = time.perf_counter() - start


def _take_chunk(data: str, url: str, result: StreamResult, start: float, last: float | None) -> float | None:
    """Add one ``data:`` chunk of the stream to ``result`` (text, TTFT / inter-token gaps from
    ``start``, finish reason, usage, the server's own fields), or set ``result.error``; returns
    when the latest text arrived (perf_counter seconds)."""
    try:
        chunk = json.loads(data)
    except ValueError:
        result.error = f"{url} sent a chunk that is not JSON: {_one_line(data, 80)!r}"
        return last
    if not isinstance(chunk, dict):
        return last
    if chunk.get("error"):
        error = chunk["error"]
        result.error = f"{url} reported an error mid-stream: {_one_line(error.get('message') if isinstance(error, dict) else error)}"
        return last
    now = time.perf_counter()
    text = _chunk_text(chunk)
    if text:
        if result.ttft_s is None:
            result.ttft_s = now - start
        else:
            result.itl_s.append(now - last)
        last = now
        result.text += text
    for choice in chunk.get("choices") or []:
        result.finish_reason = choice.get("finish_reason") or result.finish_reason
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        result.completion_tokens = usage.get("completion_tokens")
        result.prompt_tokens = usage.get("prompt_tokens")
    _server_fields(chunk, result.server)
    return last


class _Deadline:
    """``asyncio.timeout`` for Python 3.10 (added in 3.11)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def __aenter__(self):
        import asyncio

        task = asyncio.current_task()
        self._expired = False

        def expire():
            self._expired = True
            task.cancel()

        self._handle = asyncio.get_running_loop().call_later(self.seconds, expire)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        import asyncio

        self._handle.cancel()
        if exc_type is asyncio.CancelledError and self._expired:
            raise TimeoutError from None
        return False


def get_json(base_url: str, path: str, headers: dict | None = None, timeout_s: float = 10.0):
    """GET ``path`` as JSON (synchronous); None when the server does not answer with JSON."""
    try:
        response = httpx.get(base_url.rstrip("/") + path, headers=headers or {}, timeout=timeout_s)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError):
        return None


def first_model(base_url: str, headers: dict | None = None) -> str | None:
    """The first model id of ``/v1/models`` (what a server without ``engine.served_model_name`` serves)."""
    data = get_json(base_url, "/v1/models", headers)
    try:
        return data["data"][0]["id"]
    except (TypeError, KeyError, IndexError):
        return None
