"""`ep-core bench-ddp`: the data-parallel CEP training step at N = 1, 2, ... processes on this machine.

For each N, N processes (spawned here, gloo on the CPU, NCCL on CUDA) train the same global batch of a
synthetic input, each its shard, with the learner `ep-core train` uses; after warm-up steps, each timed
step starts at a barrier, so its wall time is the slowest rank's. Reported per N: the step's median wall
time, the median time of its reduction (the gradient all-reduce, the loss/statistics sums and the clip;
on rank 0, so it includes waiting for a slower rank) and its share of the step, the all-reduce of a
gradient-sized buffer alone (communication only), examples per second and the speed-up over N = 1.
Each process gets `--threads` // N torch threads, so every N uses the same cores.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..numerics.estimators import device_clock
from ..numerics.networks import build_network
from ..training.config import build_config
from ..training.config import resolve as resolve_config
from ..training.distributed import Collective, Context, free_port, process_group, shard_bounds
from ..training.learners import EPLearner
from ..training.optimization import build_optimizer


def _config(args: dict[str, Any]):
    return resolve_config(build_config({
        "model": {"arch": args["arch"], "width": args["width"]},
        "ep": {"free_iterations": args["free_iterations"], "nudge_iterations": args["nudge_iterations"]},
        "optim": {"optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "scheduler": "none"},
    }))  # fmt: skip


def _worker(rank: int, world: int, port: int, args: dict[str, Any], out: str) -> None:
    """One rank of an N-process measurement; rank 0 writes its figures to `out` (JSON)."""
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(max(1, args["threads"] // world))
    device = torch.device("cuda", rank) if args["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ctx = Context(rank, world, rank, "single" if world == 1 else "bench")
    with process_group(ctx, device) as collective:
        _measure(collective, args, out)


def _measure(c: Collective, args: dict[str, Any], out: str) -> None:
    config = _config(args)
    torch.manual_seed(0)
    size, B = args["input_size"], args["batch_size"]
    net = build_network(args["arch"], width=args["width"], input_size=size).to(c.device)
    learner = EPLearner(net, config, c)
    optimizer = build_optimizer(net, config.optim)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, net.in_channels, size, size, generator=g).to(c.device)
    y = torch.randint(0, net.num_classes, (B,), generator=g).to(c.device)
    lo, hi = shard_bounds(B, c.ctx.rank, c.world_size)
    warm, steps, reduce = None, [], []
    for i in range(args["warmup"] + args["steps"]):
        c.barrier()
        t0 = device_clock(c.device)
        step = learner.train_step(x[lo:hi], y[lo:hi], optimizer, warm, B)
        c.barrier()
        if i >= args["warmup"]:
            steps.append(device_clock(c.device) - t0)
            reduce.append(step.seconds.get("allreduce", 0.0))
        warm = step.carry
    buffer = torch.zeros(sum(p.numel() for p in net.parameters()), device=c.device)
    alone = []
    for _ in range(args["steps"]):
        c.barrier()
        t0 = device_clock(c.device)
        c.sum_([buffer])
        alone.append(device_clock(c.device) - t0)
    if c.ctx.is_writer:
        Path(out).write_text(json.dumps({
            "processes": c.world_size, "shard": hi - lo, "threads_per_process": torch.get_num_threads(),
            "step_s": statistics.median(steps), "reduction_s": statistics.median(reduce),
            "allreduce_alone_s": statistics.median(alone) if c.world_size > 1 else 0.0,
            "gradient_mb": buffer.numel() * buffer.element_size() / 1e6,
        }))  # fmt: skip


def run_ddp_bench(args: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per process count in `args['processes']` (see the module docstring)."""
    import torch.multiprocessing as mp

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in args["processes"]:
            out = str(Path(tmp) / f"n{world}.json")
            mp.start_processes(
                _worker, args=(world, free_port(), args, out), nprocs=world, start_method="spawn"
            )
            row = json.loads(Path(out).read_text())
            row["examples_per_s"] = args["batch_size"] / row["step_s"]
            row["reduction_share"] = row["reduction_s"] / row["step_s"]
            rows.append(row)
    base = rows[0]["step_s"] if rows and rows[0]["processes"] == 1 else None
    for row in rows:
        row["speedup"] = base / row["step_s"] if base else None
    return rows


def format_rows(rows: list[dict[str, Any]], args: dict[str, Any]) -> str:
    head = (f"{args['arch']} width {args['width']:g}, global batch {args['batch_size']}, "
            f"{args['free_iterations']} + 2 x {args['nudge_iterations']} iterations, {args['device']}, "
            f"gradient {rows[0]['gradient_mb']:.2f} MB")  # fmt: skip
    lines = [
        head,
        "N  shard  threads/proc  step (s)  reduction (s)  share  all-reduce alone (s)  ex/s  speed-up",
    ]
    for r in rows:
        speedup = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        cells = [
            f"{r['processes']:<2}", f"{r['shard']:>5}", f"{r['threads_per_process']:>12}",
            f"{r['step_s']:>8.3f}", f"{r['reduction_s']:>13.4f}", f"{100 * r['reduction_share']:>4.1f}%",
            f"{r['allreduce_alone_s']:>20.4f}", f"{r['examples_per_s']:>4.1f}", f"{speedup:>8}",
        ]  # fmt: skip
        lines.append("  ".join(cells))
    return "\n".join(lines)
