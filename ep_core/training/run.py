"""`ep-core train`: one reproducible, resumable, self-describing training run.

Everything that can reject a run (config, dataset files, model, per-tensor lists) is checked before the
output directory is touched. A run then checkpoints every `train.checkpoint_every` epochs and whenever
SIGTERM/SIGINT arrives (at the next batch boundary, mid-epoch included); re-running the same command
resumes from the checkpoint and produces the same history and weights as an uninterrupted run (the data
order and augmentation of every batch are functions of (seed, epoch, batch) alone). `metrics.json` is
written last, with status completed, diverged or failed.

Under `torchrun` or `srun` a run is data-parallel (ep_core.training.distributed): every rank trains its
shard of each global batch, rank 0 alone writes the run directory and talks to MLflow. A checkpoint is the
same file as a single process's: rank 0 gathers every rank's warm-start states (the rows of the global batch)
and RNG state into it, so a run resumes with any number of processes, its warm states re-sharded.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..numerics.backprop import build_bp_network
from ..numerics.naming import BLOCK_ARCHS, network_name, network_of_config
from ..numerics.networks import build_network
from . import dead_layers
from .checkpoint import (
    StopRequest,
    atomic_write_text,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
)
from .config import BP_ARCHS, ConfigError, RunConfig, dump_config, resolve
from .datasets import Data, DatasetInfo, load_data
from .device import resolve_device
from .distributed import (
    Collective,
    Context,
    check_batch_size,
    context_from_env,
    process_group,
    select_device,
)
from .fidelity import FidelityMonitor, build_monitor
from .fidelity import summary as fidelity_summary
from .learners import BPLearner, DivergenceError, EPLearner, StepResult
from .optimization import build_optimizer, build_scheduler
from .provenance import device_description, git_commit, package_versions
from .records import initial_scales, write_csv, write_json, write_weight_records
from .rundir import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    LINK,
    METRICS,
    MODEL,
    PREVIOUS_CHECKPOINT,
    RECORDS,
    RunDirError,
    first_line,
    prepare_out,
    read_metrics,
    read_saved_config,
)
from .slurm import requeue_if_warned, stop_request

# `ep-core train`'s exit statuses; 2 (bad input) is every subcommand's, ep_core.cli.EXIT_BAD_INPUT.
EXIT_COMPLETED, EXIT_FAILED, EXIT_DIVERGED = 0, 1, 3
# Keys that do not change what a run computes: a resumed run may differ in them.
OPERATIONAL_KEYS = {
    "data.data_dir", "data.num_workers", "train.device", "train.checkpoint_every", "train.stop_on_dead_layer",
}  # fmt: skip
BEST_TEST_PROTOCOL = (
    "best test accuracy over epochs (the paper's optimistic protocol: selected on the test set)"
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Mirror(Protocol):
    """What a run asks of its tracker (ep_core.tracking.mirror.RunTracker): the run is handed one and
    never builds one, so training imports nothing from tracking."""

    runtime_tags: dict[str, str]

    @property
    def run_id(self) -> str | None: ...

    def attach(self, out: Path, resume_run_id: str | None = None, reopen: bool = True) -> None: ...

    def sync(
        self,
        params: dict[str, Any],
        rows: list[dict[str, Any]],
        metrics: dict[str, Any] | None = None,
        files: list[Path] = (),
        stopped: bool = False,
        force: bool = True,
    ) -> bool: ...

    def resync(self, out: Path) -> bool: ...


@dataclass
class Setup:
    config: RunConfig
    device: torch.device
    data: Data
    model: nn.Module
    learner: EPLearner | BPLearner
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scales: dict[str, float]
    collective: Collective
    monitor: FidelityMonitor | None = None  # the gradient-fidelity monitor (EP runs that probe)


def build_model(config: RunConfig, info: DatasetInfo) -> nn.Module:
    """The run's network (EP or BP) at initialisation from the current torch RNG; also how analysis code
    rebuilds a finished run's network before loading its model.pt."""
    m = config.model
    shape = {"in_channels": info.in_channels, "num_classes": info.num_classes, "input_size": info.input_size}
    if m.arch in BP_ARCHS:
        return build_bp_network(m.arch, width=m.width, **shape)
    extra = {"blocks": m.blocks} if m.arch in BLOCK_ARCHS else {}
    return build_network(
        m.arch, width=m.width, activation=m.activation, alpha_seed=config.train.seed,
        alpha_range=tuple(m.alpha_range), gains=m.gains, **shape, **extra,
    )  # fmt: skip


def prepare(config: RunConfig, collective: Collective | None = None) -> Setup:
    """Build everything a run needs; raises ConfigError/ValueError before anything is written. With a
    data-parallel `collective`, on its device, the learner training this rank's shards."""
    config = resolve(config)
    if collective is None:
        collective = Collective(Context(), resolve_device(config.train.device))
    device = collective.device
    d, m = config.data, config.model
    synthetic = {"n_train": d.synthetic_train, "n_test": d.synthetic_test} if d.name == "synthetic" else None
    data = load_data(
        d.name, data_dir=d.data_dir, preset=d.preset, augment=d.augment, val_size=d.val_size,
        split_seed=d.split_seed, device=device, num_workers=d.num_workers, synthetic=synthetic,
    )  # fmt: skip
    torch.manual_seed(config.train.seed)  # weight initialisation
    model = build_model(config, data.info).to(device)
    scales = initial_scales(model)
    learner = (BPLearner if m.arch in BP_ARCHS else EPLearner)(model, config, collective)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.train.epochs)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the authors; results are not bit-reproducible on GPUs
    say = log if collective.ctx.is_writer else (lambda message: None)
    monitor = build_monitor(config, data, learner, collective, say)
    return Setup(config, device, data, model, learner, optimizer, scheduler, scales, collective, monitor)


def _config_differences(saved: dict, current: RunConfig) -> list[str]:
    flat_saved = {f"{s}.{k}": v for s, sec in saved.items() for k, v in sec.items()}
    return [
        f"{k}: {flat_saved.get(k)!r} != {v!r}"
        for k, v in current.flat().items()
        if k not in OPERATIONAL_KEYS and flat_saved.get(k) != v
    ]


class Accumulator:
    """Running sums over one epoch's batches; a plain dict inside checkpoints."""

    def __init__(self, state: dict | None = None):
        self.state = state or {"batches": 0, "n": 0, "loss_sum": 0.0, "correct": 0, "seconds": {},
                               "scalars": {}, "layer_stats": None, "elapsed": 0.0}  # fmt: skip
        # the epoch's gradient-fidelity probes (a checkpoint from before the monitor has none)
        self.state.setdefault("probes", [])

    def add_probe(self, values: dict[str, float]) -> None:
        self.state["probes"].append(values)

    def add(self, step: StepResult, n: int) -> None:
        s = self.state
        s["batches"] += 1
        s["n"] += n
        s["loss_sum"] += step.loss_sum
        s["correct"] += step.correct
        for group, values in (("seconds", step.seconds), ("scalars", step.scalars)):
            for k, v in values.items():
                s[group][k] = s[group].get(k, 0.0) + float(v)
        if step.layer_stats is not None:
            stats = step.layer_stats.detach().double().cpu()
            s["layer_stats"] = stats if s["layer_stats"] is None else s["layer_stats"] + stats

    def row(self, layer_names: list[str], minimum: float) -> dict[str, Any]:
        s, b = self.state, max(self.state["batches"], 1)
        row: dict[str, Any] = {
            "train_loss": s["loss_sum"] / max(s["n"], 1),
            "train_acc": 100.0 * s["correct"] / max(s["n"], 1),
        }
        row |= {f"{k}_seconds": v for k, v in s["seconds"].items()}
        row |= {k: v / b for k, v in s["scalars"].items()}
        if s["layer_stats"] is not None:
            row |= dict(zip(layer_names, (s["layer_stats"] / b).tolist(), strict=True))
        return row | _probe_columns(s["probes"], minimum)


def _probe_columns(probes: list[dict[str, float]], minimum: float) -> dict[str, float]:
    """An epoch's probes as history columns: each `fidelity/…` value's mean, the probe count, the lowest
    cosine, how many fell below `train.fidelity_min`, and their seconds in all."""
    if not probes:
        return {}
    row = {k: sum(p[k] for p in probes) / len(probes) for k in probes[0] if k != "fidelity/probe_seconds"}
    cosines = [p["fidelity/cosine"] for p in probes]
    return row | {
        "fidelity/probes": float(len(probes)),
        "fidelity/cosine_min": min(cosines),
        "fidelity/below_min": float(sum(c < minimum for c in cosines)),
        "fidelity/probe_seconds": sum(p["fidelity/probe_seconds"] for p in probes),
    }


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; process lifetime peak


def _summary(rows: list[dict], status: str) -> dict[str, Any]:
    final = rows[-1] if rows else {}
    out: dict[str, Any] = {
        "status": status,
        "epochs_completed": len(rows),
        "final": {k: final.get(k) for k in ("epoch", "train_loss", "train_acc", "val_acc", "test_acc")},
        "best_val": None,
        "best_test_over_epochs": None,
    }
    with_val = [r for r in rows if r.get("val_acc") is not None]
    if with_val:
        best = max(with_val, key=lambda r: r["val_acc"])  # first epoch among ties
        out["best_val"] = {"epoch": best["epoch"], "val_acc": best["val_acc"], "test_acc": best["test_acc"]}
    if rows:
        best = max(rows, key=lambda r: r["test_acc"])
        out["best_test_over_epochs"] = {
            "epoch": best["epoch"],
            "test_acc": best["test_acc"],
            "protocol": BEST_TEST_PROTOCOL,
        }
    return out


class Run:
    def __init__(self, setup: Setup, out: Path):
        self.s = setup
        self.c = setup.collective
        self.out = out
        self.history: list[dict[str, Any]] = []
        self.epoch, self.next_batch = 0, 0
        self.acc = Accumulator()
        self.warm: list[torch.Tensor] | None = None  # this rank's rows of the last batch's +β states
        self.warm_rows = 0  # the global batch size those states came from
        self.stopped: int | None = None  # the signal every rank agreed to stop on
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        self.mlflow_run_id: str | None = None
        self.slices = 1  # the processes that trained the run: 1 + its resumes (SLURM's requeued slices)
        self.devices = self.c.all_gather_object(device_description(setup.device))

    def say(self, message: str) -> None:
        if self.c.ctx.is_writer:
            log(message)

    # --- checkpoints ---------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any] | None:
        """The checkpoint (on rank 0; None on the others, which send it their warm states and RNG)."""
        s = self.s
        warm = None if self.warm is None else self.c.gather_rows(self.warm)
        rngs = self.c.gather_object(rng_states())
        if not self.c.ctx.is_writer:
            return None
        assert rngs is not None
        return {
            "format": 1, "config": s.config.to_dict(), "epoch": self.epoch, "next_batch": self.next_batch,
            "accumulator": self.acc.state, "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "rng": rngs[0], "rank_rng": rngs,
            "world_size": self.c.world_size, "warm_states": warm,
            "history": self.history, "elapsed": self.elapsed(), "initial_scales": s.scales,
            "mlflow_run_id": self.mlflow_run_id,
            "fidelity": None if s.monitor is None else s.monitor.state(),
            "slices": self.slices,
        }  # fmt: skip

    def save(self) -> None:
        state = self.state()
        if state is not None:
            save_checkpoint(self.out / CHECKPOINT, state, previous=self.out / PREVIOUS_CHECKPOINT)
        self.c.barrier()  # no rank runs ahead of a checkpoint that may yet fail to be written

    def resume(self) -> bool:
        """Restore the latest readable checkpoint (falling back to the one before it, with a warning);
        False when there is none. Unreadable checkpoints and no fallback: a one-line RunDirError."""
        paths = [p for p in (self.out / CHECKPOINT, self.out / PREVIOUS_CHECKPOINT) if p.exists()]
        bad: list[str] = []
        for path in paths:
            try:
                self.restore(load_checkpoint(path, map_location=self.s.device))
            except Exception as error:  # truncated, zero bytes, not a checkpoint: try the previous one
                bad.append(f"{path} is unreadable ({type(error).__name__}: {first_line(error)[:120]})")
                continue
            if bad:
                self.say(f"warning: {bad[0]}; resuming from the previous checkpoint {path.name}")
            return True
        if bad:
            names = " and ".join(p.name for p in paths)
            raise RunDirError(f"{'; '.join(bad)}; no readable checkpoint is left: delete {names} to restart "
                              "the run from epoch 1")  # fmt: skip
        return False

    def restore(self, ckpt: dict[str, Any]) -> None:
        s = self.s
        s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.scheduler.load_state_dict(ckpt["scheduler"])
        # Nothing a run computes draws from the global generators (data order and augmentation have their
        # own, seeded by (seed, epoch, batch)); they are restored all the same, rank by rank when N is kept.
        rngs = ckpt.get("rank_rng") or [ckpt["rng"]]
        restore_rng_states(rngs[self.c.ctx.rank % len(rngs)])
        self.epoch, self.next_batch = ckpt["epoch"], ckpt["next_batch"]
        self.acc = Accumulator(ckpt["accumulator"])
        warm = ckpt["warm_states"]
        self.warm = None if warm is None else [self.c.shard(t).to(s.device) for t in warm]
        self.warm_rows = 0 if warm is None else warm[0].shape[0]
        self.history = ckpt["history"]
        self.elapsed_before = ckpt["elapsed"]
        s.scales = ckpt["initial_scales"]
        self.mlflow_run_id = ckpt.get("mlflow_run_id")
        self.slices = ckpt.get("slices", 1) + 1  # this process trains the next slice
        if s.monitor is not None:
            s.monitor.restore(ckpt.get("fidelity"))
        saved = ckpt.get("world_size", 1)
        if saved != self.c.world_size:
            self.say(f"{self.out}: the checkpoint was written by {saved} process(es), resuming with "
                     f"{self.c.world_size}: its warm-start states are re-sharded")  # fmt: skip

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    # --- the loop ------------------------------------------------------------------------------------------

    def train_epoch(self, stop: StopRequest) -> bool:
        """Train from `next_batch` to the end of the epoch; False if stopped by a signal."""
        s, cfg = self.s, self.s.config.train
        total = s.data.num_train_batches(cfg.batch_size)
        if cfg.max_batches is not None:
            total = min(total, cfg.max_batches)
        if self.next_batch == 0:
            self.warm = None  # the authors' states are reset when the batch size changes after evaluation
        batches = s.data.train_batches(
            epoch=self.epoch, batch_size=cfg.batch_size, seed=cfg.seed, start=self.next_batch
        )
        bar = None
        if self.c.ctx.is_writer:
            bar = _progress_bar(total, self.next_batch, f"epoch {self.epoch + 1}/{cfg.epochs}")
        t_epoch = time.perf_counter() - self.acc.state["elapsed"]
        for x, y in batches:
            if self.next_batch >= total:
                break
            n = x.shape[0]  # the global batch; this rank trains its shard
            warm = self.warm if self.warm_rows == n else None  # a smaller last batch starts from zeros
            if s.monitor is not None and s.monitor.due(self.epoch * total + self.next_batch):
                where = f"at epoch {self.epoch + 1}, batch {self.next_batch + 1}"
                self.acc.add_probe(s.monitor.probe(where))
            step = s.learner.train_step(self.c.shard(x), self.c.shard(y), s.optimizer, warm, n)
            self.warm, self.warm_rows = step.carry, n
            self.acc.add(step, n)
            self.next_batch += 1
            self.acc.state["elapsed"] = time.perf_counter() - t_epoch
            if bar is not None:
                st = self.acc.state
                bar.update(1)
                bar.set_postfix(
                    loss=f"{st['loss_sum'] / st['n']:.4f}", acc=f"{100 * st['correct'] / st['n']:.1f}"
                )
            self.stopped = self.c.agreed_signal(stop.signal)
            if self.stopped:
                break
        if bar is not None:
            bar.close()
        return not self.stopped

    def _evaluate(self, split: str) -> dict[str, float]:
        batches = self.s.data.eval_batches(split, self.s.config.train.eval_batch_size)
        return self.s.learner.evaluate((self.c.shard(x), self.c.shard(y)) for x, y in batches)

    def finish_epoch(self) -> dict[str, Any]:
        s = self.s
        t0 = time.perf_counter()
        lr = s.optimizer.param_groups[0]["lr"]
        s.scheduler.step()
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            **self.acc.row(s.learner.layer_stat_names, s.config.train.fidelity_min),
            **({} if s.monitor is None else s.monitor.epoch_values()),
            "lr": lr,
            "train_seconds": self.acc.state["elapsed"],  # the epoch's training, probes included
        }
        if s.data.num_val:
            val = self._evaluate("val")
            row |= {"val_loss": val["loss"], "val_acc": val["acc"]}
        test = self._evaluate("test")
        row |= {"test_loss": test["loss"], "test_acc": test["acc"]}
        if "residual" in test:
            row["eval_residual"] = test["residual"]
        if not math.isfinite(test["loss"]):
            raise DivergenceError("non-finite test loss", where=f"after epoch {self.epoch + 1}")
        row["epoch_seconds"] = self.acc.state["elapsed"] + time.perf_counter() - t0
        row["peak_memory_mb"] = _peak_memory_mb(s.device)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        return row

    def metrics(self, status: str, message: str | None = None) -> dict[str, Any]:
        s = self.s
        model = s.model
        return {
            **_summary(self.history, status),
            "message": message,
            "wall_seconds": self.elapsed(),
            "peak_memory_mb": max(
                (r["peak_memory_mb"] for r in self.history), default=_peak_memory_mb(s.device)
            ),
            "seed": s.config.train.seed,
            "network": network_of_config(s.config.to_dict()),
            "network_name": network_name(network_of_config(s.config.to_dict())),
            "alphas": model.alphas.tolist() if hasattr(model, "alphas") else None,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "device": device_description(s.device),
            "world_size": self.c.world_size,
            "devices": self.devices,  # one per rank (this attempt's; a resumed run may have changed them)
            "git_commit": git_commit(),
            "versions": package_versions(),
            "config": s.config.to_dict(),
            "mlflow_run_id": self.mlflow_run_id,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slices": self.slices,  # 1 + the resumes: a run longer than a SLURM time limit has several
            "fidelity": fidelity_summary(self.history),
            "dead_layers": dead_layers.first_dead(self.history),  # layer -> the first epoch it was dead
        }


def _progress_bar(total: int, initial: int, description: str):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [
        f"epoch {row['epoch']}/{epochs}",
        f"train_loss {row['train_loss']:.4f}",
        f"train_acc {row['train_acc']:.2f}",
    ]
    if "val_acc" in row:
        parts.append(f"val_acc {row['val_acc']:.2f}")
    parts += [f"test_acc {row['test_acc']:.2f}", f"lr {row['lr']:.3g}", f"{row['epoch_seconds']:.1f}s"]
    return "  ".join(parts)


def _write_records(run: Run, status: str, message: str | None, tracker: Mirror | None) -> None:
    """The run's closing files, metrics.json last; a diverged run gets every file a completed one has
    (its weights as they were when it diverged), a failed one only history and metrics. Rank 0 only."""
    if not run.c.ctx.is_writer:
        return
    out = run.out
    write_csv(out / HISTORY, run.history, ("epoch",))
    if status != "failed":
        save_checkpoint(out / MODEL, run.s.model.state_dict())
        write_weight_records(out, run.s.model, run.s.scales)
    if tracker is not None:  # first the epochs, so that metrics.json can name the MLflow run
        tracker.sync(run.s.config.flat(), run.history)
        run.mlflow_run_id = run.mlflow_run_id or tracker.run_id
    metrics = run.metrics(status, message)
    write_json(out / METRICS, metrics)
    if tracker is not None:
        tracker.sync(run.s.config.flat(), run.history, metrics, [out / name for name in RECORDS])


def train(
    config: RunConfig,
    out: str | Path,
    *,
    tracker: Mirror | None = None,
    threads: int | None = None,
    diverged_ok: bool = False,
) -> int:
    """Run (or resume, or recognise as done) the training run in `out`. Returns the process exit status.

    `tracker` mirrors the run to MLflow; `threads` sets torch's CPU threads (per process); with
    `diverged_ok` a diverged run writes all its records and exits 0 (a pipeline counts it as a result,
    not a crash). Started by torchrun or srun, the run is data-parallel over their processes."""
    out = Path(out)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ctx = context_from_env()
        check_batch_size(ctx, config.train.batch_size)
        device = select_device(ctx, config.train.device)
        with process_group(ctx, device) as collective:
            return _train(config, out, collective, tracker if ctx.is_writer else None, diverged_ok)
    finally:
        # A caller's process (a notebook, a test session) keeps its own thread count: later runs in it
        # must not inherit ours (a resumed run compared bit for bit would see another reduction order).
        torch.set_num_threads(previous)


def _open(run: Run, config: RunConfig, tracker: Mirror | None) -> dict[str, Any]:
    """Rank 0's part of starting: resume or first attempt, the config record, the MLflow run."""
    out = run.out
    if (out / METRICS).exists():
        (out / METRICS).unlink()  # a failed/diverged run is retried from its last checkpoint
    atomic_write_text(out / CONFIG, dump_config(config))
    params = config.flat()
    if tracker is not None:
        tracker.runtime_tags = {
            "world_size": str(run.c.world_size),
            "devices": ", ".join(run.devices),
            "slices": str(run.slices),  # sent by each slice: the last one's is the run's
        }
        tracker.attach(out, resume_run_id=run.mlflow_run_id)
        tracker.sync(params, run.history)
        run.mlflow_run_id = tracker.run_id
    return params


def _train(
    config: RunConfig, out: Path, collective: Collective, tracker: Mirror | None, diverged_ok: bool
) -> int:
    setup = prepare(config, collective)  # may raise ConfigError/ValueError: nothing written yet
    config, writer = setup.config, collective.ctx.is_writer
    previous = _previous_metrics(out, config, collective)
    if previous is not None and previous["status"] == "completed":
        if writer:
            log(f"{out}: already completed (test_acc {previous['final']['test_acc']:.2f}); nothing to do")
            if tracker is not None and (out / LINK).exists():
                tracker.resync(out)  # a run that ended while MLflow was down: send the rest now
        return EXIT_COMPLETED
    collective.on_writer(lambda: prepare_out(out))  # a file, or a place that cannot be written: one line
    run = _resumed(setup, out)
    params = collective.on_writer(lambda: _open(run, config, tracker)) or {}
    try:
        with stop_request() as stop:  # under SLURM also its time-limit warning (ep_core.training.slurm)
            where = _train_epochs(run, stop, params, tracker)
            if where is not None:  # inside StopRequest: a second signal cannot cut the report short
                return _stopped(run, where, params, tracker)
    except DivergenceError as error:  # every rank sees the same reduced loss and gradient norm
        where = error.where or f"in epoch {run.epoch + 1}, batch {run.next_batch + 1}"
        message = f"diverged {where}: {error}"
        _write_records(run, "diverged", message, tracker)
        run.say(f"ep-core train: {message}")
        return EXIT_COMPLETED if diverged_ok else EXIT_DIVERGED
    except Exception as error:  # recorded as failed, then reported with its traceback
        traceback.print_exc()
        _write_records(run, "failed", f"{type(error).__name__}: {error}", tracker)
        return EXIT_FAILED
    _write_records(run, "completed", None, tracker)
    if writer:
        (out / CHECKPOINT).unlink(missing_ok=True)
        (out / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
        final = run.history[-1]
        log(
            f"{out}: completed {config.train.epochs} epochs, test_acc {final['test_acc']:.2f}, "
            f"{run.elapsed():.0f}s"
        )
    return EXIT_COMPLETED


def _previous_metrics(out: Path, config: RunConfig, collective: Collective) -> dict[str, Any] | None:
    """The metrics.json an earlier attempt left in `out` (None if none), once every rank has read the
    directory; a ConfigError if it holds a run of another configuration."""
    saved = read_saved_config(out)  # an unreadable config.yaml/metrics.json: a one-line RunDirError
    differences = _config_differences(saved, config) if saved else []
    if differences:
        raise ConfigError(
            f"{out} holds a run with another configuration ({differences[0]}); use another --out"
        )
    previous = read_metrics(out)
    collective.barrier()  # every rank has read the directory before rank 0 changes it
    return previous


def _resumed(setup: Setup, out: Path) -> Run:
    """The run in `out`, from its checkpoint if there is one; every rank must be at the same place."""
    run = Run(setup, out)
    if run.resume():
        run.say(f"{out}: resuming at epoch {run.epoch + 1}, batch {run.next_batch}")
    if len(set(run.c.all_gather_object((run.epoch, run.next_batch)))) > 1:
        raise RunDirError(f"{out}: the processes read different checkpoints; is the run directory shared?")
    return run


def _train_epochs(run: Run, stop: StopRequest, params: dict[str, Any], tracker: Mirror | None) -> str | None:
    """Train the epochs left; None when all are done, else where a signal stopped the run, its checkpoint
    saved (mid-epoch: here; after an epoch: by `_record_epoch`)."""
    while run.epoch < run.s.config.train.epochs:
        if not run.train_epoch(stop):
            run.save()
            return f"at epoch {run.epoch + 1}, batch {run.next_batch}"
        _record_epoch(run, stop, params, tracker)
        if run.stopped:
            return f"after epoch {run.epoch}"
    return None


def _record_epoch(run: Run, stop: StopRequest, params: dict[str, Any], tracker: Mirror | None) -> None:
    """Evaluate the epoch just trained and record it: history.csv and its line on stdout, a checkpoint when
    one is due or a signal came during evaluation, then MLflow."""
    row = run.finish_epoch()
    dead = dead_layers.warning(row, run.history)
    run.history.append(row)
    if run.c.ctx.is_writer:
        write_csv(run.out / HISTORY, run.history, ("epoch",))
        print(_epoch_line(row, run.s.config.train.epochs), flush=True)
    if dead:
        run.say(dead)
    run.epoch, run.next_batch, run.acc = run.epoch + 1, 0, Accumulator()
    run.stopped = run.c.agreed_signal(stop.signal)  # one that came during evaluation
    if run.epoch % run.s.config.train.checkpoint_every == 0 or run.stopped:
        run.save()  # before MLflow hears of the epoch: a resumed run never redoes a sent epoch
    if tracker is not None:
        tracker.sync(params, run.history, force=False)
        run.mlflow_run_id = run.mlflow_run_id or tracker.run_id
    if run.s.config.train.stop_on_dead_layer and (error := dead_layers.stop_error(row)):
        raise error  # every rank: the layer statistics are reduced over ranks


def _stopped(run: Run, where: str, params: dict[str, Any], tracker: Mirror | None) -> int:
    """Report a run stopped by a signal, its checkpoint saved `where`, to the user and to MLflow; the exit
    status is 128 + the signal, as for a process the signal killed."""
    run.say(f"{run.out}: stopped by signal {run.stopped}; checkpoint saved {where}")
    if run.c.ctx.is_writer:  # before MLflow: the time limit does not wait for a slow server
        requeue_if_warned(run.stopped, run.say)
    run.c.barrier()  # no rank exits (srun --kill-on-bad-exit ends the step) before the job is requeued
    if tracker is not None:
        tracker.sync(params, run.history, stopped=True)
    return 128 + int(run.stopped or 0)
