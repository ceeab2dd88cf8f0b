"""The commands: ``specdec`` (one prompt, speculative against the baseline), ``specdec demo``,
``specdec bench | sweep | report``, and how their results are drawn in a terminal.

Owns argument parsing (:mod:`~specdec.cli.parsing`), the ``specdec`` command
(:mod:`~specdec.cli.command`), the demo (:mod:`~specdec.cli.demo`), the side-by-side
comparison behind both (:mod:`~specdec.cli.compare`), its rendering (:mod:`~specdec.cli.render`)
and the harness's commands (:mod:`~specdec.cli.bench`).

May import every layer below: :mod:`specdec.main` (the published API), :mod:`specdec.bench`,
:mod:`specdec.engine`, :mod:`specdec.models`, :mod:`specdec.runners`. Nothing imports it but
``specdec.__main__``.
"""

from specdec.cli.command import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]


from specdec import old_names  # noqa: E402

__getattr__ = old_names(__name__, "specdec.cli.command")  # the old flat module's other names
