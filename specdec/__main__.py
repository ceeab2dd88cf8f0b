"""``python -m specdec`` is the ``specdec`` command."""

from specdec.cli.command import entry

entry()
