"""``hdsr-search``: Bayesian hyperparameter search with pruning, on Optuna's journal storage.

    hdsr-search SPACE.yaml [--study NAME] [--storage PATH.journal] [--trials N]
                [--timeout S] [--stale-after S] [-v] [-- hdsr-train overrides...]

Arguments and orchestration; the search itself (space files, trials, pruning, workers,
resume) is :mod:`hdsr.search`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from hdsr.search import PROG
from hdsr.search.overrides import CommandLineError, check_against_config
from hdsr.search.schema import SpaceError
from hdsr.search.space import STUDY_NAME, load_space
from hdsr.search.study import (
    JournalWriteError,
    StudyError,
    build_pruner,
    build_sampler,
    import_optuna,
)
from hdsr.search.worker import DEFAULT_STALE_AFTER, DEFAULT_TRIALS, Worker, summary


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _journal_failed(err: JournalWriteError) -> int:
    """A write to the journal failed: what was written before stands; a torn last record
    is removed by the next run, and a trial left running is resumed from its run folder
    (its result reported again)."""
    print(
        f"{PROG}: error: {err.strerror}; the study keeps what was written before: free the "
        "space (or fix the file system) and rerun the same command to go on",
        file=sys.stderr,
        flush=True,
    )
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Bayesian hyperparameter search over hdsr-train runs, with pruning "
        "(Optuna, journal storage: resumable, several workers per study).",
        epilog="Overrides after -- go to every trial's hdsr-train command, e.g. "
        "hdsr-search space.yaml --trials 30 -- data=div2k data.root=/data/DIV2K",
    )
    parser.add_argument("space", type=Path, help="search space file (YAML)")
    parser.add_argument("--study", help="study name (default: the file's study key)")
    parser.add_argument(
        "--storage",
        type=Path,
        help="journal file of the study (default: <paths.root>/search/<study>/study.journal)",
    )
    parser.add_argument(
        "--trials",
        type=int,
        help=f"the study's target number of trials, all workers together (default: the "
        f"file's trials, else {DEFAULT_TRIALS})",
    )
    parser.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=DEFAULT_STALE_AFTER,
        help="a RUNNING trial of a worker on another host with no heartbeat for this many "
        "seconds is resumed by another worker (default: %(default)g)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the trainer's output (default: "
        "<run dir>/hdsr-train.out)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hdsr-search``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, passthrough = argv[:at], argv[at + 1 :]
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    if extra:
        return _error(
            f"unrecognized arguments: {' '.join(extra)} (hdsr-train overrides go after --)"
        )
    if args.trials is not None and args.trials < 1:
        return _error(f"--trials must be at least 1, got {args.trials}")
    # nan and inf would pass a comparison and switch the limit off
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        return _error(f"--timeout must be positive and finite (seconds), got {args.timeout}")
    if not (math.isfinite(args.stale_after) and args.stale_after > 0):
        return _error(
            f"--stale-after must be positive and finite (seconds), got {args.stale_after}"
        )
    try:
        import_optuna()
    except SystemExit as missing:
        print(missing.code, file=sys.stderr)
        return 1
    if args.study is not None and not STUDY_NAME.fullmatch(args.study):
        return _error(f"--study {args.study!r}: use letters, digits, _ . - (at most 100)")
    try:
        space = load_space(args.space)
        space.study = args.study or space.study
        for name, build in (("pruner", build_pruner), ("sampler", build_sampler)):
            try:
                build(getattr(space, name))
            except SpaceError:
                raise
            except (TypeError, ValueError) as err:  # Optuna refusing an argument
                raise SpaceError(f"{name}: {err}") from None
        checked = check_against_config(space, passthrough)
        worker = Worker(args, space, checked)
        worker.open_study()
    except (CommandLineError, StudyError) as err:
        return _error(str(err))
    except JournalWriteError as err:
        return _journal_failed(err)
    except SpaceError as err:
        where = f"{args.space}: " if not str(err).startswith(str(args.space)) else ""
        return _error(f"{where}{err}")
    except SystemExit as usage:  # hdsr's own override checks (message already printed)
        return int(usage.code) if isinstance(usage.code, int) else _error(str(usage.code))
    try:
        code = worker.run()
        print("\n" + summary(worker), flush=True)
    except JournalWriteError as err:
        return _journal_failed(err)
    if code == 0 and worker.none_succeeded():
        print(
            f"{PROG}: every trial failed; each trial's hdsr-train output is "
            "<run dir>/hdsr-train.out",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
