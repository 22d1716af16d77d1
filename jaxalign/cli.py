"""Command line: ``jaxalign run --config configs/<name>.py [--config.<field>=<value> ...] --workdir DIR [--resume]``
and ``jaxalign eval --workdir RUN_OR_SWEEP [--rewards a,b] [--reward-path NAME=SOURCE] [--clip SOURCE]``.

Bad input (unknown names or fields, missing files, out-of-range numbers, an unwritable workdir)
is reported as one line on stderr with exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from jaxalign.errors import JaxalignError, OutputError


USAGE = (
    "jaxalign run --config CONFIG --workdir DIR [--resume | --overwrite] [--config.<field>=<value> ...] | "
    "jaxalign eval --workdir RUN_OR_SWEEP [--rewards NAMES] [--reward-path NAME=SOURCE] [--clip SOURCE]"
)


class _Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every ``finally`` runs (checkpoints and files are closed)."""


# SIGINT/SIGTERM this process received. The handler raises, but a raise that lands inside a callback the interpreter
# calls from C (a garbage-collection callback while JAX loads) is dropped as "unraisable"; main checks this record
# too, so no signal is lost, and the dropped copy is not printed.
_SIGNALS: list[int] = []


def _on_signal(number, frame):
    _SIGNALS.append(number)
    raise KeyboardInterrupt if number == signal.SIGINT else _Terminated


def _raise_if_signalled() -> None:
    if _SIGNALS:
        raise KeyboardInterrupt if _SIGNALS[0] == signal.SIGINT else _Terminated


def _quiet_dropped_signals(default):
    def hook(unraisable):
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, _Terminated)):
            default(unraisable)

    return hook


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors print the usage too; bad input is one line (JaxalignError), exit 2."""

    def error(self, message: str):
        raise JaxalignError(message)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="jaxalign", description="Inference-time alignment of diffusion models by evolutionary search.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    run = commands.add_parser("run", help="search the initial noise for each prompt of a config")
    run.add_argument("--config", required=True, help="a config file (configs/<name>.py) with get_config()")
    run.add_argument("--workdir", required=True, help="output directory")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in WORKDIR from its checkpoints")
    run.add_argument("--overwrite", action="store_true", help="replace the run WORKDIR holds (its files are deleted first)")
    run.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host TPU/GPU; cluster from the environment)"
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate = commands.add_parser("eval", help="re-score finished runs: cross-rewards, diversity, the shapes judge")
    evaluate.add_argument("--workdir", required=True, help="a run's or a sweep's output directory")
    evaluate.add_argument("--rewards", help="comma-separated reward names (default: the run's own, clip for the embedded model, brightness, contrast, saturation)")
    evaluate.add_argument("--reward-path", action="append", default=[], metavar="NAME=SOURCE", help="weights of a learned reward (repeatable)")
    evaluate.add_argument("--clip", help="CLIP model for embedding diversity: a directory, cached repo id or 'embedded'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous, unraisable = {}, sys.unraisablehook
    try:
        if threading.current_thread() is threading.main_thread():
            # The command line's own process: exit 130/143 cleanly. Distributed runs keep JAX's preemption handler.
            for number in (signal.SIGINT,) if "--distributed" in argv else (signal.SIGINT, signal.SIGTERM):
                if number == signal.SIGTERM or signal.getsignal(number) is signal.default_int_handler:
                    previous[number] = signal.signal(number, _on_signal)
            sys.unraisablehook = _quiet_dropped_signals(unraisable)
        if not argv or argv[0] not in ("run", "eval", "-h", "--help"):
            raise JaxalignError(f"the commands are run and eval; usage: {USAGE}")
        if argv[0] == "eval":
            code = _eval(_parser().parse_args(argv))
        else:
            args, rest = _parser().parse_known_args(argv)
            overrides = [a for a in rest if a.startswith("--config.")]
            stray = [a for a in rest if not a.startswith("--config.")]
            if stray:
                raise JaxalignError(f"unrecognised arguments: {' '.join(stray)}")
            code = _run(args, overrides)
        _raise_if_signalled()
        return code
    except OutputError as error:  # the disk or folder refused a write: not bad input
        print(f"jaxalign: error: {error}", file=sys.stderr)
        return 1
    except JaxalignError as error:
        print(f"jaxalign: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxalign: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except _Terminated:
        print("jaxalign: terminated; continue with --resume", file=sys.stderr)
        return 143
    finally:
        _SIGNALS.clear()
        sys.unraisablehook = unraisable
        for number, handler in previous.items():
            signal.signal(number, handler)


def _run(args, overrides: list[str]) -> int:
    from jaxalign.config import load_config
    from jaxalign.run import build, run
    from jaxalign.workdir import check_workdir

    config = load_config(args.config, overrides)
    workdir = args.workdir
    if args.distributed:
        import jax

        jax.distributed.initialize()
        if jax.process_count() > 1 and jax.process_index() > 0:  # process 0 writes the run; the others beside it
            workdir = f"{str(workdir).rstrip('/')}.process_{jax.process_index()}"
    check_workdir(workdir, resume=args.resume, overwrite=args.overwrite)
    job = build(config)
    _raise_if_signalled()  # before anything is written
    summaries = run(job, workdir, progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite)
    for summary in summaries:
        print(
            f"{summary['prompt'][:50]!r}: baseline {_fmt(summary['baseline_fitness'])} -> best {_fmt(summary['best_fitness'])} "
            f"after {summary['generations']} generations ({summary['seconds_per_generation']} s/generation, "
            f"compile {summary['compile_s']} s) in {workdir}"
        )
    return 0


def _eval(args) -> int:
    from jaxalign.evaluate import evaluate

    paths = {}
    for item in args.reward_path:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise JaxalignError(f"--reward-path takes NAME=SOURCE, got {item!r}")
        paths[name] = source
    rewards = [r.strip() for r in args.rewards.split(",") if r.strip()] if args.rewards else None
    if rewards is not None and not rewards:
        raise JaxalignError("--rewards is empty")
    result = evaluate(args.workdir, rewards, paths, args.clip)
    for name, value in result["means"].items():
        print(f"{name}: {value:.4g}")
    print(f"{len(result['runs'])} run(s) evaluated; wrote eval.json, eval.csv, eval.png in {args.workdir}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.5g}"


if __name__ == "__main__":
    sys.exit(main())
