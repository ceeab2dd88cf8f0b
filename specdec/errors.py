"""Errors that reach the user as one clear line instead of a traceback."""


class SpecdecError(Exception):
    """A problem the user can fix; the message names the problem and the fix.

    ``exit_code`` is what the command exits with: 2 for usage errors (bad flags, unknown
    model, mismatched tokenizers), 1 for failures at run time.
    """

    exit_code = 2


class UsageError(SpecdecError):
    """Bad input: flags, files, model names. Exit code 2."""

    exit_code = 2


class ContextOverflow(UsageError):
    """A prompt that, with the new tokens asked for, does not fit the model's context. The
    harness records such a request as skipped (with this message) and goes on."""
