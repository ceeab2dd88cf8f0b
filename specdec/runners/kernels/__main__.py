"""``python -m specdec.runners.kernels``: build the quantized CPU kernels now (instead of on first
use) and say where they are cached and which instruction-set path this CPU runs. Exit code 2,
with one line naming what to install, when they cannot be built."""

from __future__ import annotations

import sys
import time


def main() -> int:
    from specdec.runners.kernels.qlinear import KernelBuildError, available_isas, extension, kernel_cache_dir

    started = time.perf_counter()
    try:
        extension()
        isas = available_isas()
    except KernelBuildError as error:
        print(f"specdec: {error}", file=sys.stderr)
        return error.exit_code
    a8 = ("avx512 VNNI", "avx2", "scalar")[2 - min(extension().best_isa_a8(), len(isas) - 1)]
    print(f"quantized CPU kernels ready in {kernel_cache_dir()} ({time.perf_counter() - started:.1f} s); "
          f"paths this CPU runs: {', '.join(isas)} (default {isas[-1]}; w8a8 / w4a8 on {a8})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
