"""The ``specdec`` command.

    specdec --num_sample_tok N [--small_model gpt2] [--big_model gpt2-xl]
            [--prompt "Artificial intelligence is"] [--max_new_tok 50] [--device cuda]
            [--sample | --no-sample] [--seed S]
    specdec demo | bench | sweep | report ...

The flags above are a published interface: their names and defaults do not change. The
aliases users bring from similar scripts (--model, --draft_model, --gamma, ...) map onto them.
"""

from __future__ import annotations

import argparse
import json
import sys

from specdec.runners.draft_head import DEFAULT_DRAFT_VOCAB
from specdec.engine.drafters import DEFAULT_DRAFT_SCHEDULE
from specdec.cli.parsing import OneLineParser, or_none
from specdec.errors import SpecdecError, UsageError

SUBCOMMANDS = ("demo", "bench", "sweep", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="specdec",
        description="Speculative decoding against the autoregressive baseline, on one prompt. "
        "Subcommands: specdec demo (offline example), specdec bench / sweep / report (benchmark harness).",
    )
    parser.add_argument("--num_sample_tok", "--gamma", dest="gamma", type=int, required=True,
                        help="draft tokens per verification step (gamma); required")
    parser.add_argument("--small_model", "--draft_model", dest="small_model", default="gpt2",
                        help="draft model: hub id, local folder or .gguf file (default: gpt2)")
    parser.add_argument("--big_model", "--model", "--target_model", dest="big_model", default="gpt2-xl",
                        help="target model: hub id, local folder or .gguf file (default: gpt2-xl)")
    parser.add_argument("--prompt", default="Artificial intelligence is", help="the prompt text")
    parser.add_argument("--max_new_tok", "--max_new_tokens", dest="max_new_tok", type=int, default=50,
                        help="new tokens to generate (default: 50)")
    parser.add_argument("--device", default="cuda",
                        help="cpu, cuda, cuda:N, mps or auto (default: cuda; falls back to CPU with a note)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU index N, the same as --device cuda:N")
    parser.add_argument("--sample", action=argparse.BooleanOptionalAction, default=True,
                        help="sample (default) or decode greedily (--no-sample); baseline and speculative alike")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (default: a fresh one per run, printed)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default 1.0); <= 1e-6 means greedy")
    parser.add_argument("--top_k", type=or_none(int), default=0, help="keep the k most likely tokens (0 or none = off)")
    parser.add_argument("--top_p", type=or_none(float), default=1.0, help="nucleus sampling mass (1.0 or none = off)")
    parser.add_argument("--drafter", choices=("model", "ngram"), default="model",
                        help="model: the draft model proposes; ngram: prompt lookup, no draft model")
    parser.add_argument("--draft_schedule", choices=("constant", "adaptive"), default=DEFAULT_DRAFT_SCHEDULE,
                        help="adaptive (default): gamma is the first step's draft length, then it follows acceptance "
                        "and the draft's confidence; constant: always gamma drafts")
    parser.add_argument("--draft_gate", action=argparse.BooleanOptionalAction, default=True,
                        help="adaptive schedule, greedy: draft nothing while drafting steps are slower per token "
                        "than plain decode steps, retrying later (default: on)")
    parser.add_argument("--ngram_max", type=int, default=3, help="longest n-gram to look up (drafter ngram)")
    parser.add_argument("--ngram_match", choices=("earliest", "latest"), default="earliest",
                        help="which earlier occurrence of the n-gram to continue from (drafter ngram)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    parser.add_argument("--prepack", action=argparse.BooleanOptionalAction, default=True,
                        help="CPU bf16/fp16: decode on oneDNN-prepacked weights where bit-identical (default: on)")
    parser.add_argument("--draft_vocab", type=int, default=DEFAULT_DRAFT_VOCAB,
                        help="draft scores only this many frequent token ids plus the prompt's when the vocabulary "
                        f"is over twice as large (lossless; 0 = all; default {DEFAULT_DRAFT_VOCAB})")
    parser.add_argument("--quantize", default=None, metavar="int8|int4|w8a8|w4a8",
                        help="CPU: quantized weights for target and draft on specdec's batch-invariant kernels: int8 / "
                        "int4 weight-only (float activations), w8a8 / w4a8 the same weights with int8 activations "
                        "(integer dot products, the fastest); greedy output stays token-for-token the quantized "
                        "target's; a .gguf keeps its Q4 tensors; default: the weights as loaded")
    parser.add_argument("--quantize_group", "--group_size", dest="quantize_group", type=int, default=None,
                        help="inputs per 4-bit group: int4 even, w4a8 a multiple of 8 (default 128)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def settings_from_args(args: argparse.Namespace) -> dict:
    """SpeculativeDecoder keyword arguments from parsed flags, after checking them."""
    if args.gamma < 1:
        raise UsageError(f"--num_sample_tok (gamma) must be >= 1, got {args.gamma}")
    if args.max_new_tok < 1:
        raise UsageError(f"--max_new_tok must be >= 1, got {args.max_new_tok}")
    if args.draft_vocab < 0:
        raise UsageError(f"--draft_vocab must be >= 0 (0 scores the whole vocabulary), got {args.draft_vocab}")
    from specdec.runners.quantize import GROUPED, check_mode

    try:
        check_mode(args.quantize, args.quantize_group)
    except UsageError as error:
        raise UsageError(f"--quantize / --quantize_group: {error}") from None
    if args.quantize_group is not None and args.quantize not in GROUPED:
        raise UsageError("--quantize_group applies to --quantize int4 or w4a8 only")
    device = args.device
    if args.gpu is not None:
        if args.gpu < 0:
            raise UsageError(f"--gpu must be a GPU index >= 0, got {args.gpu}")
        device = f"cuda:{args.gpu}"
    temperature = 1.0 if args.temperature is None else args.temperature
    if not args.sample:
        temperature = 0.0
    return dict(
        approx_model_name=args.small_model if args.drafter == "model" else None,
        target_model_name=args.big_model,
        gamma=args.gamma,
        max_tokens=args.max_new_tok,
        device=device,
        temperature=temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        dtype=args.dtype,
        drafter=args.drafter,
        draft_schedule=args.draft_schedule,
        draft_gate=args.draft_gate,
        ngram_max=args.ngram_max,
        ngram_match=args.ngram_match,
        stop_strings=tuple(args.stop),
        prepack=args.prepack,
        draft_vocab=args.draft_vocab,
        quantize=args.quantize,
        quantize_group=args.quantize_group,
    )


def run_main(argv: list[str]) -> int:
    """The default job: load both models once, warm up, compare on the prompt, print."""
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    from rich.console import Console

    from specdec.cli.compare import compare
    from specdec.main import SpeculativeDecoder
    from specdec.cli.render import render_comparison
    from specdec.runners.threads import busy_warning, configure_threads

    status = Console(stderr=True)
    log = (lambda message: status.print(f"specdec: {message}")) if not args.json else (lambda message: None)
    log("loading models ...")
    decoder = SpeculativeDecoder(**settings, log=log)
    for line in filter(None, (configure_threads(decoder.device), busy_warning() if decoder.device.type == "cpu" else None)):
        status.print(f"specdec: {line}")  # also with --json: stderr, so stdout stays one JSON object
    report = compare(decoder, args.prompt, chat=args.chat)
    report["quantization"] = decoder.quantization or None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        render_comparison(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``specdec`` command; returns (and exits with) the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            code = run_subcommand(argv[0], argv[1:])
        else:
            code = run_main(argv)
    except SpecdecError as error:
        print(f"specdec: error: {error}", file=sys.stderr)
        code = error.exit_code
    except KeyboardInterrupt:
        print("specdec: interrupted", file=sys.stderr)
        code = 130
    return code


def run_subcommand(command: str, argv: list[str]) -> int:
    if command == "demo":
        from specdec.cli.demo import main as demo_main

        return demo_main(argv)
    from specdec.cli.bench import main as bench_main

    return bench_main(command, argv)


def entry() -> None:
    """Console-script wrapper: exit with main()'s code."""
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
