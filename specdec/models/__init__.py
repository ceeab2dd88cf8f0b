"""The models layer: where weights come from and where they go.

Owns loading (:mod:`~specdec.models.loading`: hub id, local folder or GGUF file, dtype choice,
tokenizer checks), the packaged assets the demo fetches (:mod:`~specdec.models.assets`) and GPU
placement (:mod:`~specdec.models.placement`: same / separate devices, layer splits).

May import: :mod:`specdec.runners` (what the CPU and devices can do) and :mod:`specdec.errors`.
Never the engine, the harness, the commands or the published API.
"""


from specdec import old_names  # noqa: E402

__getattr__ = old_names(__name__, "specdec.models.loading")  # the old flat module's other names
