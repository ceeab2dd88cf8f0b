"""specdec: lossless speculative decoding on Hugging Face transformers models, and an honest
benchmark of it against ordinary autoregressive decoding.

Public entry points:

- ``specdec.main.SpeculativeDecoder``: the Python API (load models once, generate many times).
- ``specdec.engine.Engine``: the decode loop shared by the baseline and speculative decoding.
- the ``specdec`` command (``specdec.cli``).
"""

__version__ = "0.1.0"
