"""The `ep-core` command line. Each subcommand is a thin layer over the library; bad input is reported as
one line on stderr (no traceback) with exit status 2."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .estimators import VARIANTS
from .networks import NETWORKS
from .schedule import ORDERS


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one `--help` away), exit status 2 as argparse's."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _input_size(text: str) -> int:
    value = _at_least(16)(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16, got {value}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _gradcheck(args: argparse.Namespace) -> int:
    from .gradcheck import report_json, run_gradcheck

    report = run_gradcheck(
        args.arch, width=args.width, estimator=args.estimator, beta=args.beta, dtype=args.dtype,
        input_size=args.input_size, batch_size=args.batch_size, seed=args.seed, order=args.order,
        activation=args.activation, cost=args.cost, tol=args.tol, max_iterations=args.max_iterations,
        sweep=args.sweep, device=args.device, tf32=args.tf32, bf16_sweeps=args.bf16_sweeps,
    )  # fmt: skip
    print(report_json(report) if args.json else report.format())
    if args.min_cosine is not None and report.min_cosine < args.min_cosine:
        print(f"ep-core: min cosine {report.min_cosine:.6f} < {args.min_cosine}", file=sys.stderr)
        return 1
    return 0


def _add_gradcheck(sub) -> None:
    p = sub.add_parser(
        "gradcheck", help="compare EP/CEP gradients with the implicit-differentiation reference"
    )
    p.add_argument("--arch", required=True, choices=list(NETWORKS))
    p.add_argument("--width", type=_positive, default=1 / 16, help="channel multiplier (default 1/16)")
    p.add_argument("--estimator", choices=VARIANTS, default="cep")
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--input-size", type=_input_size, default=32, help="a multiple of 16")
    p.add_argument("--batch-size", type=_at_least(1), default=8)
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--order", choices=ORDERS, default="coloring")
    p.add_argument("--activation", default="relu6", help="relu6, relu1 or relu_random")
    p.add_argument("--cost", default="mse", help="mse or cross_entropy")
    p.add_argument("--tol", type=_positive, default=1e-14, help="relative residual every phase relaxes to")
    p.add_argument("--max-iterations", type=_at_least(1), default=20_000)
    p.add_argument("--min-cosine", type=float, default=None, help="exit 1 if any tensor's cosine is below")
    p.add_argument(
        "--sweep", type=_floats, default=(), metavar="B1,B2,...",
        help="also measure EP and CEP error at these betas and fit the bias slopes (expect ~1 and ~2)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--tf32", action="store_true", help="CUDA: let float32 convs and matmuls use TF32")
    p.add_argument(
        "--bf16-sweeps", type=_at_least(0), default=0, metavar="N",
        help="the estimate's own free phase from zeros, its first N sweeps in bf16 (ep.bf16_sweeps)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_gradcheck)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import train

    for flag, value in (("--run-name", args.run_name), ("--mlflow-experiment", args.mlflow_experiment)):
        if value is not None and not args.mlflow:
            raise ValueError(f"{flag}: applies with --mlflow only")
    if args.mlflow_experiment is not None and args.mlflow and args.mlflow.endswith(".json"):
        raise ValueError(
            "--mlflow-experiment: the init.json names the experiment; give a tracking URI instead"
        )
    if args.tag and not args.mlflow:
        raise ValueError("--tag: applies with --mlflow only")
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag expects KEY=VALUE, got {item!r}")
        tags[key] = value
    config = load_config(args.config, args.set)
    tracker = None
    if args.mlflow:
        from pathlib import Path

        from .tracking import RunTracker

        name = args.run_name or Path(args.out).resolve().name
        if args.mlflow.endswith(".json"):
            tracker = RunTracker.from_file(args.mlflow, name, tags=tags)
        else:  # the store and experiment are made at the first call that succeeds (sqlite: under a lock)
            tracker = RunTracker.for_uri(args.mlflow, args.mlflow_experiment or "ep-core", name, tags=tags)
    return train(config, args.out, tracker=tracker, threads=args.threads, diverged_ok=args.diverged_ok)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one network (resumes if DIR holds a checkpoint); under torchrun or srun, data-parallel "
        "over their processes",
    )
    p.add_argument("--config", help="YAML run configuration (sections data, model, ep, optim, train)")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (created; resumed if present)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. --set ep.beta=0.2",
    )
    p.add_argument(
        "--mlflow", metavar="URI|INIT.json",
        help="mirror the run to MLflow: a tracking URI (e.g. sqlite:///mlflow.db) or a pipeline's init.json",
    )  # fmt: skip
    p.add_argument("--mlflow-experiment", help="experiment name with a tracking URI (default ep-core)")
    p.add_argument("--run-name", help="MLflow run name (default: the --out directory's name)")
    p.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="an MLflow tag of the run (repeated)"
    )
    p.add_argument("--threads", type=_at_least(1), help="torch CPU threads")
    p.add_argument(
        "--diverged-ok", action="store_true", help="exit 0 when the run diverges (it is recorded as diverged)"
    )
    p.set_defaults(func=_train)


def _sync(args: argparse.Namespace) -> int:
    from .rundir import sync_run

    behind = 0
    for out in args.run_dirs:
        if sync_run(out):
            print(f"{out}: MLflow is up to date")
        else:
            behind += 1
    return 1 if behind else 0


def _add_sync(sub) -> None:
    p = sub.add_parser(
        "sync", help="send what MLflow lacks of run directories (after an outage); exit 1 if still behind"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.set_defaults(func=_sync)


def _download(args: argparse.Namespace) -> int:
    from .datasets import download

    where = download(args.dataset, args.data_dir)
    print(f"{args.dataset} is ready under {where}")
    return 0


def _add_download(sub) -> None:
    p = sub.add_parser(
        "download", help="fetch a dataset once into a data directory (training never downloads)"
    )
    p.add_argument("--dataset", required=True, help="cifar10, cifar100 or fashion_mnist")
    p.add_argument("--data-dir", default="data")
    p.set_defaults(func=_download)


def _attach(args: argparse.Namespace) -> int:
    import json

    from .tracking import log_files_to_parent

    init = Path(args.init)
    if not init.is_file():
        raise ValueError(f"--init: {str(init)!r} does not exist (the pipeline's mlflow_init writes it)")
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        raise ValueError(f"{missing[0]!r} does not exist")
    log_files_to_parent(json.loads(init.read_text()), [Path(f) for f in args.files], Path(args.root))
    print(f"logged {len(args.files)} file(s) to the pipeline's parent MLflow run")
    return 0


def _add_attach(sub) -> None:
    p = sub.add_parser(
        "attach", help="log files (e.g. results/report.html) to the pipeline's parent MLflow run"
    )
    p.add_argument("files", nargs="+")
    p.add_argument("--init", default="results/mlflow/init.json", help="the pipeline's init.json")
    p.add_argument("--root", default="results", help="artifact paths are relative to this folder")
    p.set_defaults(func=_attach)


def _bench(args: argparse.Namespace) -> int:
    import json

    from .benchmark import format_result, run_benchmark

    if args.blocks is not None and args.arch not in ("hopfield_resnet", "hopfield_plain"):
        raise ValueError(
            f"--blocks: applies to --arch hopfield_resnet or hopfield_plain only, not {args.arch}"
        )
    if args.anderson_memory is not None and "anderson" not in (args.solver, args.nudge_solver):
        raise ValueError("--anderson-memory: applies to --solver or --nudge-solver anderson only")
    if args.no_schedules and args.schedule_tol is not None:
        raise ValueError("--schedule-tol: does not apply with --no-schedules")
    if args.arch in ("hopfield_resnet", "hopfield_plain") and args.blocks is None:
        args.blocks = 4
    args.anderson_memory = 5 if args.anderson_memory is None else args.anderson_memory
    args.schedule_tol = 1e-3 if args.schedule_tol is None else args.schedule_tol
    result = run_benchmark(
        args.arch, width=args.width, batch_size=args.batch_size, free_iterations=args.free_iterations,
        nudge_iterations=args.nudge_iterations, repeats=args.repeats, device=args.device, dtype=args.dtype,
        blocks=args.blocks, input_size=args.input_size, order=args.order, solver=args.solver,
        anderson_memory=args.anderson_memory, batch_phases=not args.separate_phases,
        nudge_solver=args.nudge_solver, chunk_size=args.chunk_size, memory_only=args.memory_only,
        channels_last=args.channels_last, compile=args.compile, cuda_graphs=args.cuda_graphs, tol=args.tol,
        omega=args.omega, bf16_sweeps=args.bf16_sweeps,
        overhead_rounds=args.overhead_rounds, measure_bp=not args.no_bp, measure_memory=not args.no_memory,
        schedule_tol=None if args.no_schedules else args.schedule_tol,
        schedule_max_iterations=args.schedule_max_iterations, compare_dtypes=tuple(args.compare_dtype),
    )  # fmt: skip
    text = json.dumps(result, indent=2) if args.json else format_result(result)
    if args.output:  # written whole or not at all: a killed job never leaves a partial report
        from pathlib import Path

        from .checkpoint import atomic_write_text

        atomic_write_text(Path(args.output), text + "\n")
    else:
        print(text)
    return 0


def _add_bench(sub) -> None:
    from .relaxation import SOLVERS

    p = sub.add_parser(
        "bench",
        help="time a CEP training step by phase, its overhead over the minimal kernel set, GFLOP/s, "
        "its backprop twin, peak memory and iterations to a tolerance",
    )
    p.add_argument("--arch", default="hopfield_resnet13", choices=list(NETWORKS))
    p.add_argument("--blocks", type=_at_least(1), default=None, help="hopfield_resnet/_plain (default 4)")
    p.add_argument("--width", type=_positive, default=1.0)
    p.add_argument("--input-size", type=_input_size, default=32, help="a multiple of 16")
    p.add_argument("--batch-size", type=_at_least(1), default=8)
    p.add_argument("--free-iterations", type=_at_least(1), default=4)
    p.add_argument("--nudge-iterations", type=_at_least(1), default=2)
    p.add_argument("--repeats", type=_at_least(1), default=3)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], default="float32")
    p.add_argument("--order", choices=ORDERS, default="even_odd")
    p.add_argument("--solver", choices=SOLVERS, default="fixed_point", help="free phase")
    p.add_argument("--nudge-solver", choices=SOLVERS, default="fixed_point", help="nudged phases")
    p.add_argument(
        "--anderson-memory", type=_at_least(1), default=None, help="an anderson solver (default 5)"
    )
    p.add_argument(
        "--chunk-size", type=_at_least(1), default=None, help="relax at most this many examples at once"
    )
    p.add_argument("--memory-only", action="store_true", help="only the peak memory of a step (EP and BP)")
    p.add_argument(
        "--tol", type=_positive, default=None, help="early stop of each phase (default: fixed length)"
    )
    p.add_argument("--separate-phases", action="store_true", help="run the -beta and +beta phases unstacked")
    p.add_argument("--omega", type=float, default=1.0, help="over-relaxation of the updates (ep.omega)")
    p.add_argument(
        "--bf16-sweeps", type=_at_least(0), default=0, metavar="N",
        help="the free phase's first N sweeps in bf16, the rest in --dtype (ep.bf16_sweeps)",
    )  # fmt: skip
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and states")
    p.add_argument("--compile", action="store_true", help="torch.compile the sweeps")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each phase as one CUDA graph (CUDA)")
    p.add_argument(
        "--overhead-rounds", type=_at_least(1), default=3, help="interleaved rounds of the overhead ratio"
    )
    p.add_argument(
        "--schedule-tol", type=_positive, default=None, help="residual for the iterations-to-tol runs (1e-3)"
    )
    p.add_argument("--schedule-max-iterations", type=_at_least(1), default=400)
    p.add_argument("--no-schedules", action="store_true", help="skip the iterations-to-tol runs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--no-bp", action="store_true", help="skip the backprop twin")
    p.add_argument(
        "--compare-dtype", action="append", default=[], choices=["float32", "bfloat16", "float64"],
        help="also time the free iteration and kernel set in this dtype, interleaved (repeatable)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE (atomically) instead of stdout")
    p.set_defaults(func=_bench)


def _add_bench_tta(sub) -> None:
    from .tta import add_parser

    add_parser(sub)


def _add_bench_ddp(sub) -> None:
    from .ddp_bench import add_parser

    add_parser(sub)


SUBCOMMANDS: list[Callable] = [
    _add_train,
    _add_sync,
    _add_download,
    _add_gradcheck,
    _add_bench,
    _add_bench_tta,
    _add_bench_ddp,
    _add_attach,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="ep-core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:
        if _reported_by_rank_0(error):
            return 2
        print(f"ep-core {args.command}: error: {error}", file=sys.stderr)
        return 2


def _reported_by_rank_0(error: ValueError) -> bool:
    """In a data-parallel run every rank reads the same configuration and directory, so their errors are
    rank 0's: the other ranks exit with its status without printing it again N - 1 times. An error that
    is this rank's own (its GPU) is printed by it."""
    from .config import ConfigError
    from .distributed import DistributedError, QuietError, context_from_env

    if isinstance(error, QuietError):
        return True
    try:
        rank = context_from_env().rank
    except DistributedError:
        return False
    return rank != 0 and isinstance(error, ConfigError) and not getattr(error, "per_rank", False)


if __name__ == "__main__":
    sys.exit(main())
