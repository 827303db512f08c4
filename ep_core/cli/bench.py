"""`ep-core gradcheck`, `bench`, `bench-tta` and `bench-ddp`: the measurements of ep_core.bench."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..bench.ddp import format_rows, run_ddp_bench
from ..bench.tta import CANDIDATES, DEFAULT_RECIPES, Settings, check, parse_recipe, run_protocol
from ..bench.tta import DATASETS as TTA_DATASETS
from ..bench.tta_report import format_markdown, write_figure
from ..bench.tta_runs import StoppedError
from ..numerics.estimators import ESTIMATORS
from ..numerics.networks import NETWORKS
from ..numerics.orders import ORDERS
from ..training.datasets import DATASETS as DATASETS_ALL
from ..training.device import resolve_device
from ..training.recipes import RECIPES
from .args import at_least, floats, input_size, positive


def _gradcheck(args: argparse.Namespace) -> int:
    from ..bench.gradcheck import report_json, run_gradcheck

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


def add_gradcheck(sub) -> None:
    p = sub.add_parser(
        "gradcheck", help="compare EP/CEP gradients with the implicit-differentiation reference"
    )
    p.add_argument("--arch", required=True, choices=list(NETWORKS))
    p.add_argument("--width", type=positive, default=1 / 16, help="channel multiplier (default 1/16)")
    p.add_argument("--estimator", choices=ESTIMATORS, default="cep")
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--input-size", type=input_size, default=32, help="a multiple of 16")
    p.add_argument("--batch-size", type=at_least(1), default=8)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--order", choices=ORDERS, default="coloring")
    p.add_argument("--activation", default="relu6", help="relu6, relu1 or relu_random")
    p.add_argument("--cost", default="mse", help="mse or cross_entropy")
    p.add_argument("--tol", type=positive, default=1e-14, help="relative residual every phase relaxes to")
    p.add_argument("--max-iterations", type=at_least(1), default=20_000)
    p.add_argument("--min-cosine", type=float, default=None, help="exit 1 if any tensor's cosine is below")
    p.add_argument(
        "--sweep", type=floats, default=(), metavar="B1,B2,...",
        help="also measure EP and CEP error at these betas and fit the bias slopes (expect ~1 and ~2)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--tf32", action="store_true", help="CUDA: let float32 convs and matmuls use TF32")
    p.add_argument(
        "--bf16-sweeps", type=at_least(0), default=0, metavar="N",
        help="the estimate's own free phase from zeros, its first N sweeps in bf16 (ep.bf16_sweeps)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_gradcheck)


def _bench(args: argparse.Namespace) -> int:
    import json

    from ..bench.step import format_result, run_benchmark
    from ..bench.workload import BenchSettings, EPOptions

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
    options = EPOptions(
        order=args.order, solver=args.solver, nudge_solver=args.nudge_solver,
        anderson_memory=args.anderson_memory, compile=args.compile, cuda_graphs=args.cuda_graphs,
        batch_phases=not args.separate_phases, channels_last=args.channels_last, chunk_size=args.chunk_size,
        omega=args.omega, bf16_sweeps=args.bf16_sweeps, tol=args.tol,
    )  # fmt: skip
    settings = BenchSettings(
        args.arch, width=args.width, batch_size=args.batch_size, free_iterations=args.free_iterations,
        nudge_iterations=args.nudge_iterations, repeats=args.repeats, device=args.device, dtype=args.dtype,
        blocks=args.blocks, input_size=args.input_size, ep=options, memory_only=args.memory_only,
        overhead_rounds=args.overhead_rounds, measure_bp=not args.no_bp, measure_memory=not args.no_memory,
        schedule_tol=None if args.no_schedules else args.schedule_tol,
        schedule_max_iterations=args.schedule_max_iterations, compare_dtypes=tuple(args.compare_dtype),
    )  # fmt: skip
    result = run_benchmark(settings)
    text = json.dumps(result, indent=2) if args.json else format_result(result)
    if args.output:  # written whole or not at all: a killed job never leaves a partial report
        from pathlib import Path

        from ..training.checkpoint import atomic_write_text

        atomic_write_text(Path(args.output), text + "\n")
    else:
        print(text)
    return 0


def add_bench(sub) -> None:
    from ..numerics.relaxation import SOLVERS

    p = sub.add_parser(
        "bench",
        help="time a CEP training step by phase, its overhead over the minimal kernel set, GFLOP/s, "
        "its backprop twin, peak memory and iterations to a tolerance",
    )
    p.add_argument("--arch", default="hopfield_resnet13", choices=list(NETWORKS))
    p.add_argument("--blocks", type=at_least(1), default=None, help="hopfield_resnet/_plain (default 4)")
    p.add_argument("--width", type=positive, default=1.0)
    p.add_argument("--input-size", type=input_size, default=32, help="a multiple of 16")
    p.add_argument("--batch-size", type=at_least(1), default=8)
    p.add_argument("--free-iterations", type=at_least(1), default=4)
    p.add_argument("--nudge-iterations", type=at_least(1), default=2)
    p.add_argument("--repeats", type=at_least(1), default=3)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], default="float32")
    p.add_argument("--order", choices=ORDERS, default="even_odd")
    p.add_argument("--solver", choices=SOLVERS, default="fixed_point", help="free phase")
    p.add_argument("--nudge-solver", choices=SOLVERS, default="fixed_point", help="nudged phases")
    p.add_argument("--anderson-memory", type=at_least(1), default=None, help="an anderson solver (default 5)")
    p.add_argument(
        "--chunk-size", type=at_least(1), default=None, help="relax at most this many examples at once"
    )
    p.add_argument("--memory-only", action="store_true", help="only the peak memory of a step (EP and BP)")
    p.add_argument(
        "--tol", type=positive, default=None, help="early stop of each phase (default: fixed length)"
    )
    p.add_argument("--separate-phases", action="store_true", help="run the -beta and +beta phases unstacked")
    p.add_argument("--omega", type=float, default=1.0, help="over-relaxation of the updates (ep.omega)")
    p.add_argument(
        "--bf16-sweeps", type=at_least(0), default=0, metavar="N",
        help="the free phase's first N sweeps in bf16, the rest in --dtype (ep.bf16_sweeps)",
    )  # fmt: skip
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and states")
    p.add_argument("--compile", action="store_true", help="torch.compile the sweeps")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each phase as one CUDA graph (CUDA)")
    p.add_argument(
        "--overhead-rounds", type=at_least(1), default=3, help="interleaved rounds of the overhead ratio"
    )
    p.add_argument(
        "--schedule-tol", type=positive, default=None, help="residual for the iterations-to-tol runs (1e-3)"
    )
    p.add_argument("--schedule-max-iterations", type=at_least(1), default=400)
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


def _bench_ddp(args: argparse.Namespace) -> int:
    device = resolve_device(args.device, "--device")
    if device.type == "cuda" and max(args.processes) > torch.cuda.device_count():
        raise ValueError(f"--processes: {max(args.processes)} > the {torch.cuda.device_count()} GPUs here")
    bad = [n for n in args.processes if args.batch_size % n]
    if bad:
        raise ValueError(f"--batch-size: {args.batch_size} is not divisible by --processes {bad[0]}")
    options = {k: getattr(args, k) for k in ("arch", "width", "batch_size", "input_size", "free_iterations",
               "nudge_iterations", "steps", "warmup", "threads", "processes")}  # fmt: skip
    options["device"] = "cuda" if device.type == "cuda" else "cpu"
    started = time.perf_counter()
    rows = run_ddp_bench(options)
    print(json.dumps(rows, indent=2) if args.json else format_rows(rows, options))
    print(f"({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


def add_bench_ddp(sub) -> None:
    def counts(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"process counts must be >= 1, got {text!r}")
        return values

    p = sub.add_parser(
        "bench-ddp",
        help="time a data-parallel CEP step at N = 1, 2, ... processes and the all-reduce's share",
    )
    p.add_argument("--arch", default="hopfield_resnet13", choices=list(NETWORKS))
    p.add_argument("--width", type=positive, default=0.25)
    p.add_argument("--input-size", type=input_size, default=32)
    p.add_argument("--batch-size", type=at_least(1), default=16, help="the global batch")
    p.add_argument("--processes", type=counts, default=[1, 2], metavar="N1,N2,...", help="default 1,2")
    p.add_argument("--free-iterations", type=at_least(1), default=8)
    p.add_argument("--nudge-iterations", type=at_least(1), default=4)
    p.add_argument("--steps", type=at_least(1), default=5, help="timed steps per process count")
    p.add_argument("--warmup", type=at_least(0), default=1)
    p.add_argument("--threads", type=at_least(1), default=torch.get_num_threads(),
                   help="torch threads shared by the processes (each gets threads // N)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu (gloo, default) or cuda (NCCL, one GPU per process)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_bench_ddp)


def add_bench_tta(sub) -> None:
    """`ep-core bench-tta`: the time-to-accuracy protocol (ep_core/bench/tta.py, docs/benchmarks.md)."""
    d = Settings()
    p = sub.add_parser(
        "bench-tta",
        help="time to accuracy of ep.recipe settings: paired seeds, training time apart from evaluation, "
        "the authors' test for every recipe, an equal-compute control (default: digits and mnist5k)",
    )
    p.add_argument(
        "--dataset", action="append", default=None, choices=DATASETS_ALL,
        help=f"repeatable (default: {', '.join(TTA_DATASETS)})",
    )  # fmt: skip
    p.add_argument(
        "--recipe", action="append", default=None, metavar="NAME[:KEY=VALUE,...]",
        help=f"a recipe to train: a name of ep.recipe ({', '.join(RECIPES)}) with optional dotted keys, "
        f"e.g. 'fast:ep.nudge_iterations=20' (repeatable; default: {', '.join(DEFAULT_RECIPES)})",
    )  # fmt: skip
    p.add_argument("--reference", default=d.reference, help="the recipe the others are compared with")
    p.add_argument(
        "--control", default=d.control,
        help="the recipe whose mean training time the reference gets again, as '<reference>@<recipe>-time' "
        "(default fast; 'selected' with --select; 'none': no control)",
    )  # fmt: skip
    p.add_argument(
        "--seeds", type=seed_list, default=d.seeds,
        help=f"reported training seeds, never 0 (default {','.join(map(str, d.seeds))})",
    )  # fmt: skip
    p.add_argument("--epochs", type=at_least(1), default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--width", type=positive, default=d.width, help=f"default {d.width}")
    p.add_argument("--batch-size", type=at_least(1), default=d.batch_size, help=f"default {d.batch_size}")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--lr", type=positive, default=d.lr, help=f"every run's learning rate (default {d.lr})")
    rate.add_argument(
        "--select-lr", type=floats, default=d.lrs, metavar="LR,LR,...",
        help="first choose the learning rate among these: every recipe on the selection seeds' validation "
        "split; the rate at which no network died with the best mean validation accuracy trains the rest",
    )  # fmt: skip
    p.add_argument(
        "--max-batches", type=at_least(0), default=d.max_batches,
        help=f"batches per epoch at most; 0: whole epochs (default {d.max_batches}: halves mnist5k's)",
    )  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a key for every run")
    p.add_argument("--no-warmup", action="store_true", help="skip the discarded warm-up run")
    p.add_argument(
        "--select", action="store_true",
        help="first choose a sweep setting among the candidates on validation accuracy and selection seeds",
    )  # fmt: skip
    p.add_argument(
        "--candidate", action="append", default=None, metavar="NAME[:KEY=VALUE,...]",
        help="a candidate of --select (repeatable; default: fast at 20/8, 30/11, 40/15 and 60/25 sweeps)",
    )  # fmt: skip
    p.add_argument(
        "--selection-seeds", type=seed_list, default=d.selection_seeds,
        help=f"--select, --select-lr: training seeds (default {','.join(map(str, d.selection_seeds))})",
    )  # fmt: skip
    p.add_argument(
        "--val-size", type=at_least(1), default=None,
        help="--select, --select-lr: held-out training examples (default: a fifth of the training set)",
    )  # fmt: skip
    p.add_argument(
        "--tolerance", type=float, default=d.tolerance,
        help=f"--select: accuracy points a candidate may lie below the reference (default {d.tolerance:g})",
    )  # fmt: skip
    p.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--workdir", default="results/benchmarks/tta-runs", help="where the runs are trained")
    p.add_argument(
        "--out", default="results/benchmarks/tta",
        help="the folder of <dataset>.json, .md and .png (the documented run: docs/bench-tta)",
    )  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="overwrite a partial result in --out, not resume it")
    p.set_defaults(func=_bench_tta)


def seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated seeds >= 0, got {text!r}")
    return seeds


def _tta_settings(args: argparse.Namespace, dataset: str) -> Settings:
    if args.candidate and not args.select:
        raise ValueError("--candidate: applies with --select only")
    return Settings(
        dataset=dataset, recipes=dict(parse_recipe(r) for r in args.recipe or DEFAULT_RECIPES),
        reference=args.reference, seeds=args.seeds, epochs=args.epochs, width=args.width,
        batch_size=args.batch_size, lr=args.lr, max_batches=args.max_batches or None, extra=list(args.set),
        control=None if args.control == "none" else args.control, warmup=not args.no_warmup,
        select=args.select, candidates=dict(parse_recipe(c) for c in args.candidate or CANDIDATES),
        selection_seeds=args.selection_seeds, val_size=args.val_size, tolerance=args.tolerance,
        lrs=args.select_lr,
    )  # fmt: skip


def _bench_tta(args: argparse.Namespace) -> int:
    from pathlib import Path

    settings = [_tta_settings(args, name) for name in args.dataset or TTA_DATASETS]
    for s in settings:  # every dataset's settings checked before the first run
        check(s)
    out, written = Path(args.out), []
    for s in settings:
        path = out / f"{s.dataset}.json"
        try:
            result = run_protocol(s, path, Path(args.workdir) / s.dataset, args.threads, args.fresh)
        except StoppedError as stop:
            print(f"ep-core bench-tta: {stop}; the runs so far are in {path}: run the same command again "
                  "to resume", file=sys.stderr)  # fmt: skip
            return stop.status
        table = format_markdown(result)
        path.with_suffix(".md").write_text(table + "\n")
        write_figure(result, path.with_suffix(".png"))
        print(table, flush=True)
        written += [path, path.with_suffix(".md"), path.with_suffix(".png")]
    print(f"written: {', '.join(map(str, written))}")
    return 0
