"""``specdec bench``, ``specdec sweep`` and ``specdec report``: :func:`main` is what the main CLI
routes to. Bad input raises :class:`UsageError` (one line, exit code 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from specdec.errors import UsageError
from specdec.bench import results as R
from specdec.bench.config import load_config, parse_set
from specdec.bench.report import comparison_table, print_summary, rerender
from specdec.bench.runner import BenchmarkRunner
from specdec.bench.batch_sweep import batch_rows, batch_table, parse_batch_sizes, slowdown_note
from specdec.bench.sweep import best_gamma, parse_gammas, sweep_markdown, sweep_methods, sweep_rows, sweep_table

#: flag dest -> dotted config key
FLAG_KEYS = {
    "model": "model",
    "draft_model": "speculative.draft_model",
    "speculative_method": "speculative.method",
    "methods": "run.methods",
    "max_tokens": "generation.max_tokens",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "seed": "generation.seed",
    "ignore_eos": "generation.ignore_eos",
    "stop": "generation.stop_strings",
    "ngram_max": "speculative.ngram_max",
    "ngram_min": "speculative.ngram_min",
    "draft_schedule": "speculative.draft_schedule",
    "draft_gate": "speculative.draft_gate",
    "benchmark": "workload.benchmark",
    "num_prompts": "workload.num_prompts",
    "category": "workload.category",
    "shuffle": "workload.shuffle",
    "chat_template": "workload.chat_template",
    "max_turns": "workload.max_turns",
    "per_category": "workload.per_category",
    "rate": "load.rate",
    "duration": "load.duration",
    "warmup": "run.warmup",
    "repeats": "run.repeats",
    "monitor": "run.monitor",
    "device": "engine.device",
    "dtype": "engine.dtype",
    "batch_size": "engine.batch_size",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2, through the main CLI
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``specdec bench | sweep | report``. Longer than a screen on purpose: it is
    the flat table of every flag with its help text, read top to bottom."""
    p = _Parser(prog=f"specdec {command}", description={
        "bench": "Benchmark decoding methods on a prompt set (see docs/bench.md).",
        "sweep": "Sweep gamma (draft tokens per step) against the target baseline.",
        "report": "Re-render the summary and plots of saved runs; compare runs side by side.",
    }[command])
    if command == "report":
        p.add_argument("dirs", nargs="+", metavar="DIR", help="output folders of earlier runs")
        p.add_argument("--no-plots", action="store_true", help="do not rewrite the plots and derived files")
        return p
    p.add_argument("--config", help="YAML or JSON config file")
    if command == "bench":
        p.add_argument("--configs", nargs="+", metavar="FILE", help="several configs, each into --output-base/<name>")
        p.add_argument("--output-base", help="parent folder for --configs runs")
    p.add_argument("--output-dir", help="results folder (resumed when it holds the same config)")
    p.add_argument("--benchmark", help="prompts: JSONL, question.jsonl, ShareGPT JSON/JSONL/folder, or text")
    p.add_argument("--model", "--target-model", dest="model",
                   help="target model (hub id, folder, .gguf); overrides TARGET_MODEL and the config's model")
    p.add_argument("--draft-model", "--drafter-model", dest="draft_model",
                   help="draft model sharing the target's tokenizer; overrides DRAFTER_MODEL and speculative.draft_model")
    p.add_argument("--speculative-method", choices=("model", "ngram"), help="what 'speculative' drafts with")
    if command == "bench":
        p.add_argument("--methods", help="comma list: target,speculative,ngram,hf_generate,hf_assisted,hf_prompt_lookup "
                                         "(name:gamma=K to override gamma)")
        p.add_argument("--gamma", type=int, help="draft tokens per step (speculative.num_speculative_tokens)")
    else:
        p.add_argument("--gamma", required=True, help="gammas: 1-10, 1,2,4,8 or 2-8:2")
        p.add_argument("--method", default=None, help="the drafting method to sweep (default speculative, "
                                                      "or ngram without a draft model)")
    p.add_argument("--max-tokens", type=int, help="new tokens per request")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (1.0 = off)")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, help="base seed; each request's seed is derived from it, the same for every method")
    p.add_argument("--ignore-eos", action="store_true", default=None, help="always generate --max-tokens tokens")
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ngram-max", type=int, help="n-gram drafting: longest n-gram matched")
    p.add_argument("--ngram-min", type=int, help="n-gram drafting: shortest n-gram matched")
    p.add_argument("--draft-schedule", choices=("constant", "adaptive"),
                   help="draft length: constant gamma, or adaptive (starts at gamma, follows acceptance)")
    p.add_argument("--draft-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="adaptive schedule, greedy: draft nothing while drafting steps are slower per token than "
                   "plain decode steps (default: on)")
    p.add_argument("--num-prompts", type=int, help="use at most this many prompts")
    p.add_argument("--category", action="append", help="keep only this category (repeatable)")
    p.add_argument("--shuffle", action="store_true", default=None, help="shuffle prompts (workload.seed) before --num-prompts")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false", default=None,
                   help="tokenize prompts as plain text even when the tokenizer has a chat template")
    p.add_argument("--max-turns", type=int, help="use at most this many turns of multi-turn prompts")
    p.add_argument("--per-category", type=int, help="at most this many prompts of each category")
    p.add_argument("--rate", help="arrivals, requests/s (switches to load.mode poisson); servers: a list 1,2,4 sweeps")
    p.add_argument("--duration", type=float, help="Poisson mode: seconds of arrivals")
    p.add_argument("--warmup", type=int, help="warm-up generations per method, excluded from the figures")
    p.add_argument("--repeats", type=int, help="measured repeats of every prompt")
    p.add_argument("--no-monitor", dest="monitor", action="store_false", default=None,
                   help="do not sample GPU/CPU power, memory and energy")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    p.add_argument("--batch-size", type=int, help="rows decoded together (engine.batch_size, S4's BATCH_SIZE)")
    if command == "bench":
        p.add_argument("--batch-sizes", help="sweep batch sizes, e.g. 1,4,16: one full run per size into "
                       "OUTPUT_DIR/batch-N and a table of the speedup at each")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, e.g. engine.batch_size=8")
    p.add_argument("--overwrite", action="store_true", help="replace results of a different config")
    if command == "bench":
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir with the config saved there (config.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if command == "bench":
        p.add_argument("--dry-run", action="store_true", help="print the server command lines (or vllm.LLM arguments) "
                                                              "each method would start, and exit")
    return p


def _flags(args) -> dict:
    flags = parse_set(args.set)
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flags[key] = value
    if getattr(args, "gamma", None) is not None and isinstance(args.gamma, int):
        flags["speculative.num_speculative_tokens"] = args.gamma
    return flags


def main(command: str, argv: list[str]) -> int:
    """Run ``specdec <command> <argv>``; returns the exit code (0 ok, 130 interrupted)."""
    if command not in ("bench", "sweep", "report"):
        raise UsageError(f"unknown command {command!r}: use bench, sweep or report")
    try:
        args = _parser(command).parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    previous = _sigterm_as_interrupt()
    out = Console()
    if not out.is_terminal:  # logs and pipes: wide enough that tables do not fold
        out = Console(width=180)
    err = Console(stderr=True)
    try:
        if command == "report":
            return _report(args, out)
        if command == "sweep":
            return _sweep(args, out, err)
        return _bench(args, out, err)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: finished requests are saved in responses.jsonl; run the same command again to resume[/yellow]")
        return 130
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt() -> None:
    """``kill PID`` ends a run like Ctrl-C: finished requests are already on disk, and the
    aggregates are written before exiting (SIGKILL loses nothing either, but skips that)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _bench(args, out: Console, err: Console) -> int:
    flags = _flags(args)
    if args.configs:
        if args.config:
            raise UsageError("use --config FILE or --configs FILE ..., not both")
        if not args.output_base:
            raise UsageError("--configs needs --output-base DIR (each config runs into DIR/<config name>)")
        names = [Path(c).stem for c in args.configs]
        if len(set(names)) != len(names):
            raise UsageError(f"--configs: two files share a name ({', '.join(names)}); their subfolders would collide")
        configs = [load_config(c, flags) for c in args.configs]  # validate every file before running any
        for config in configs:
            config.validate()
        if args.dry_run:
            return _dry_run(out, configs, names)
        runs = []
        for name, config in zip(names, configs):
            out.rule(f"[bold]{name}")
            runner = BenchmarkRunner(config, Path(args.output_base) / name, args.overwrite,
                                     console=err, progress=not args.no_progress)
            metrics = runner.run()
            print_summary(out, metrics, name)
            runs.append((name, metrics))
        out.print(comparison_table(runs))
        return 0
    if args.output_base and not args.output_dir:
        raise UsageError("--output-base goes with --configs; for one config use --output-dir")
    if args.dry_run:
        return _dry_run(out, [load_config(args.config, flags)])
    if getattr(args, "batch_sizes", None):
        return _batch_sweep(args, flags, out, err)
    if getattr(args, "resume", False):
        if not args.output_dir:
            raise UsageError("--resume needs --output-dir DIR: the folder of the run to continue")
        stored = R.ResultsDir(args.output_dir).stored_config()
        if stored is None:
            raise UsageError(f"--resume: {args.output_dir} holds no {R.CONFIG}; start the run with --config instead")
        config = load_config(base=stored, environ={})
    else:
        config = load_config(args.config, flags)
    output_dir = args.output_dir or default_output_dir(config)
    if not args.output_dir:
        err.print(f"no --output-dir: results go to {output_dir} (pass that folder as --output-dir to resume)")
    runner = BenchmarkRunner(config, output_dir, args.overwrite, console=err, progress=not args.no_progress)
    metrics = runner.run()
    print_summary(out, metrics)
    out.print(f"[dim]results in {runner.results.path}[/dim]")
    return 0


def default_output_dir(config, now=None) -> Path:
    """``results/<UTC timestamp>-<config hash>/`` (S4's layout) for a run given no folder."""
    from datetime import datetime, timezone

    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{stamp}-{config.hash()[:8]}"


def _batch_sweep(args, flags: dict, out: Console, err: Console) -> int:
    sizes = parse_batch_sizes(args.batch_sizes)
    if not args.output_dir:
        raise UsageError("--batch-sizes needs --output-dir DIR (each size runs into DIR/batch-N)")
    configs = []
    for size in sizes:
        config = load_config(args.config, flags)
        config.set("engine.batch_size", size, "--batch-sizes")
        config.validate()
        configs.append(config)
    runs = []
    for size, config in zip(sizes, configs):
        out.rule(f"[bold]batch size {size}")
        runner = BenchmarkRunner(config, Path(args.output_dir) / f"batch-{size}", args.overwrite,
                                 console=err, progress=not args.no_progress)
        metrics = runner.run()
        print_summary(out, metrics, f"batch {size}")
        runs.append((size, metrics))
    rows = batch_rows(runs)
    out.print(batch_table(rows))
    note = slowdown_note(rows)
    if note:
        out.print(note)
    R.write_json(Path(args.output_dir) / "batch_sweep.json", {"rows": rows})
    return 0


def _dry_run(out: Console, configs, names=None) -> int:
    """``--dry-run`` (serving engines, issue #12): what each method would start; nothing runs."""
    from specdec.bench.backends import check_methods
    from specdec.bench.backends.dry_run import describe

    for i, config in enumerate(configs):
        config.validate()
        if names:
            out.rule(names[i])
        for line in describe(config, check_methods(config)):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def _sweep(args, out: Console, err: Console) -> int:
    gammas = parse_gammas(args.gamma)
    flags = _flags(args)
    config = load_config(args.config, flags)
    method = args.method or ("speculative" if config.get("speculative.draft_model")
                             or config.get("speculative.method") == "ngram" else "ngram")
    if ":" in method or method in ("target", "hf_generate"):
        raise UsageError(f"--method {method!r}: sweep a drafting method (speculative, ngram, hf_assisted, hf_prompt_lookup)")
    config.set("run.methods", sweep_methods(method, gammas), "command line")
    if "speculative.draft_schedule" not in config.explicit:
        # A gamma sweep measures fixed draft lengths; the adaptive default would make gamma only
        # the first step's length. An explicit --draft-schedule adaptive is honoured.
        config.set("speculative.draft_schedule", "constant", "sweep")
    runner = BenchmarkRunner(config, args.output_dir, args.overwrite, console=err, progress=not args.no_progress)
    metrics = runner.run()
    print_summary(out, metrics)
    rows = sweep_rows(metrics)
    out.print(sweep_table(rows))
    markdown = sweep_markdown(rows)
    out.print(markdown.strip().splitlines()[-1])
    R.write_json(runner.results.file("sweep.json"), {"method": method, "rows": rows, "best_gamma": best_gamma(rows)})
    runner.results.file("sweep.md").write_text(markdown, encoding="utf-8")
    return 0


def _report(args, out: Console) -> int:
    runs = []
    for folder in args.dirs:
        if args.no_plots:
            metrics = R.ResultsDir(folder).read(R.METRICS)
            if metrics is None:
                raise UsageError(f"{folder} holds no {R.METRICS}: run without --no-plots to rebuild it from {R.RESPONSES}")
        else:
            metrics = rerender(folder)
        name = Path(folder).name or str(folder)
        print_summary(out, metrics, name)
        if any(":gamma=" in label for label in metrics["summary"]["methods"]):
            rows = sweep_rows(metrics)
            out.print(sweep_table(rows))
            out.print(sweep_markdown(rows).strip().splitlines()[-1])
        runs.append((name, metrics))
    if len(runs) > 1:
        out.print(comparison_table(runs))
    return 0


if __name__ == "__main__":  # python -m specdec.cli.bench bench ...
    try:
        raise SystemExit(main(sys.argv[1], sys.argv[2:]))
    except UsageError as error:
        print(f"specdec: error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code)
    except IndexError:
        print("usage: python -m specdec.cli.bench {bench,sweep,report} ...", file=sys.stderr)
        raise SystemExit(2)
