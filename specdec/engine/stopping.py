"""Exact stopping: ``max_new_tokens``, end-of-sequence tokens and user stop strings.

Tokens are offered one at a time, in order, also inside an accepted run of drafts, so a
generation never overshoots any limit.
"""

from __future__ import annotations


def normalize_stop_strings(stop_strings) -> tuple[str, ...]:
    """Stop strings as a tuple; a single ``str`` is one stop string, not one per character."""
    if stop_strings is None:
        return ()
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    return tuple(s for s in stop_strings if s)


class StopChecker:
    """Decides, token by token, whether a generation must stop after that token.

    stop_reason after a stop: "length", "eos" or "stop_string".
    """

    def __init__(self, tokenizer, max_new_tokens: int, eos_token_ids: set[int], stop_strings=()) -> None:
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = eos_token_ids
        self.stop_strings = normalize_stop_strings(stop_strings)
        # A stop string of b UTF-8 bytes spans at most b tokens (byte-fallback tokenizers spell
        # a character as up to 4 byte tokens), plus a few for a token that straddles its start.
        self._window = max((len(s.encode("utf-8")) for s in self.stop_strings), default=0) + 4
        self.stop_reason: str | None = None

    def should_stop(self, generated: list[int]) -> bool:
        """Call after appending each token to ``generated``; True means stop now."""
        if generated[-1] in self.eos_token_ids:
            self.stop_reason = "eos"
        elif self.stop_strings and self._tail_has_stop_string(generated):
            self.stop_reason = "stop_string"
        elif len(generated) >= self.max_new_tokens:
            self.stop_reason = "length"
        return self.stop_reason is not None

    def _tail_has_stop_string(self, generated: list[int]) -> bool:
        tail = self.tokenizer.decode(generated[-self._window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop_strings)

    def final_text(self, text: str) -> str:
        """The text to return: cut just before the first stop string (as OpenAI and vLLM do)."""
        if self.stop_reason != "stop_string":
            return text
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        return text[:cut] if cut >= 0 else text
