"""Argument parsing shared by the commands: usage errors as one line, "none" as a value."""

from __future__ import annotations

import argparse

from specdec.errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit code 2), not a usage dump."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def or_none(kind):
    """An argparse type that also takes none / null / off (transformers' "no limit")."""

    def parse(text: str):
        if text.strip().lower() in ("none", "null", "off"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse
