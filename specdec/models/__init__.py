"""The models layer: where weights come from and where they go.

Owns loading (:mod:`~specdec.models.loading`: hub id, local folder or GGUF file, dtype choice,
tokenizer checks), the packaged assets the demo fetches (:mod:`~specdec.models.assets`) and GPU
placement (:mod:`~specdec.models.placement`: same / separate devices, layer splits).

May import: :mod:`specdec.runners` (what the CPU and devices can do) and :mod:`specdec.errors`.
Never the engine, the harness, the commands or the published API.
"""


def __getattr__(name: str):
    """Names of the old flat module ``specdec.models`` (now :mod:`specdec.models.loading`)."""
    import importlib

    module = importlib.import_module("specdec.models.loading")
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'specdec.models' has no attribute {name!r}") from None
