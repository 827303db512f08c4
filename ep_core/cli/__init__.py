"""The `ep-core` command line: every subcommand's parser lives in this package, and only here.

Each subcommand is a thin layer over the library (ep_core.training, tracking, bench). Bad input is one
line on stderr, no traceback, with exit status 2 (`EXIT_BAD_INPUT`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from .args import Parser
from .bench import add_bench, add_bench_ddp, add_bench_tta, add_gradcheck
from .run import add_attach, add_download, add_sync, add_train

DESCRIPTION = (
    "Deep Equilibrium Propagation: train energy-based networks, mirror runs to MLflow, check gradients, "
    "benchmark."
)
EXIT_BAD_INPUT = 2  # argparse's own status for bad arguments, used for every one-line error

SUBCOMMANDS: list[Callable] = [
    add_train,
    add_sync,
    add_download,
    add_gradcheck,
    add_bench,
    add_bench_tta,
    add_bench_ddp,
    add_attach,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="ep-core", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        if _reported_by_rank_0(error):
            return EXIT_BAD_INPUT
        print(f"ep-core {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _reported_by_rank_0(error: ValueError) -> bool:
    """In a data-parallel run every rank reads the same configuration and directory, so their errors are
    rank 0's: the other ranks exit with its status without printing it again N - 1 times. An error that
    is this rank's own (its GPU) is printed by it."""
    from ..training.config import ConfigError
    from ..training.distributed import DistributedError, QuietError, context_from_env

    if isinstance(error, QuietError):
        return True
    try:
        rank = context_from_env().rank
    except DistributedError:
        return False
    return rank != 0 and isinstance(error, ConfigError) and not getattr(error, "per_rank", False)
