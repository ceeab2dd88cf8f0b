"""specdec: lossless speculative decoding on Hugging Face transformers models, and an honest
benchmark of it against ordinary autoregressive decoding.

Public entry points:

- ``specdec.main.SpeculativeDecoder``: the Python API (load models once, generate many times).
- ``specdec.engine.Engine``: the decode loop shared by the baseline and speculative decoding.
- the ``specdec`` command (``specdec.cli``), also ``python -m specdec``.

The package is in layers, each a folder whose ``__init__`` says what it owns and what it may
import; imports flow one way (``tests/test_layers.py`` checks it):

    cli -> main -> bench -> engine -> models -> runners -> errors

Modules that lived at the top before the layers existed (``specdec.drafters``,
``specdec.sampling``, ``specdec.bench.servers`` ...) still import, from their new place, with a
DeprecationWarning that names it (:data:`MOVED`).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

#: Old module path -> new module path (a prefix maps its submodules too).
MOVED = {
    "specdec.verify": "specdec.engine.verify",
    "specdec.sampling": "specdec.engine.sampling",
    "specdec.stopping": "specdec.engine.stopping",
    "specdec.stats": "specdec.engine.stats",
    "specdec.draft_gate": "specdec.engine.draft_gate",
    "specdec.drafters": "specdec.engine.drafters",
    "specdec.cache": "specdec.runners.cache",
    "specdec.forward": "specdec.runners.forward",
    "specdec.prepack": "specdec.runners.prepack",
    "specdec.draft_head": "specdec.runners.draft_head",
    "specdec.cpu_features": "specdec.runners.cpu_features",
    "specdec.threads": "specdec.runners.threads",
    "specdec.devices": "specdec.runners.devices",
    "specdec.assets": "specdec.models.assets",
    "specdec.placement": "specdec.models.placement",
    "specdec.reference": "specdec.bench.backends.hf",
    "specdec.formatting": "specdec.bench.formatting",
    "specdec.demo": "specdec.cli.demo",
    "specdec.compare": "specdec.cli.compare",
    "specdec.render": "specdec.cli.render",
    "specdec.bench.cli": "specdec.cli.bench",
    "specdec.bench.servers.vllm_offline": "specdec.bench.backends.vllm_offline",
    "specdec.bench.servers": "specdec.bench.backends.server",
}


def _new_place(name: str) -> str | None:
    """Where module ``name`` lives now, or None when it did not move."""
    for old in sorted(MOVED, key=len, reverse=True):
        if name == old or name.startswith(old + "."):
            return MOVED[old] + name[len(old):]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module at its new place (one object, so patching
    either name patches both), warning once with the new name."""

    def find_spec(self, name, path=None, target=None):
        if not name.startswith("specdec.") or _new_place(name) is None:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        new = _new_place(spec.name)
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        pass  # already executed under its new name

    def get_code(self, name: str):
        """The new module's code, for ``python -m <old name>`` (runpy runs it as __main__)."""
        new = _new_place(name)
        warnings.warn(f"{name} moved to {new}; run python -m {new}", DeprecationWarning, stacklevel=2)
        return importlib.util.find_spec(new).loader.get_code(new)


def old_names(package: str, module: str):
    """A module ``__getattr__`` for ``package``, a folder that replaced a flat module of the
    same name: names not in the folder's ``__init__`` come from ``module``, where the flat
    module's code now lives (``specdec.engine.MAX_DRAFT_WINDOW`` -> ``specdec.engine.loop``)."""

    def __getattr__(name: str):
        try:
            return getattr(importlib.import_module(module), name)
        except AttributeError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())  # before the path finder, which would load a second copy
