#!/usr/bin/env bash
# Installs specdec and what it needs on a fresh machine (CPU). torch is installed first and
# pinned: a looser requirement makes pip resolve the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The quantized CPU kernels (--quantize, the demo's default int8): a small C++ extension built
# once into ~/.cache/specdec/kernels (about a minute on 2 cores); without a compiler specdec
# still runs, unquantized.
"$PYTHON" -m specdec.runners.kernels || echo "setup: the quantized CPU kernels were not built (see above); --quantize is unavailable, everything else works" >&2
