"""Data-parallel training with torch.distributed: who this process is, its device, its shard of the batch,
and the few collectives a run needs.

One run, N processes (launched by `torchrun` or `srun`), one global batch split into N contiguous slices:
the data order and augmentation of a batch are functions of (seed, epoch, batch) alone, so every rank
builds the same global batch and keeps its slice, and the run's result does not depend on N beyond the
order of floating-point sums. Each rank relaxes (or back-propagates) its slice; the gradient and the
loss/accuracy sums are all-reduced, so every rank takes the update a single process would take on the
whole batch. A process started without a launcher is a world of one: no process group, nothing reduced,
the run exactly as before.

The launcher is read from the environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK first, then an srun
step's SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID (MASTER_ADDR and MASTER_PORT default to the
step's first node and a port derived from the job id when the job does not set them). Backend: NCCL on
CUDA, gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .config import ConfigError

T = TypeVar("T")
# A step waits this long for the other ranks (a slow MLflow call on rank 0 included) before failing.
TIMEOUT = datetime.timedelta(minutes=30)


class DistributedError(ConfigError):
    """A launch that cannot work (bad environment, devices, batch size): one line naming it."""


@dataclass(frozen=True)
class Context:
    """This process's place in the run. `launcher`: single (no launcher), torchrun or srun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes the run directory and talks to MLflow."""
        return self.rank == 0


def _integer(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise DistributedError(f"{key}: expected an integer, got {env[key]!r}") from None


def context_from_env(env: Mapping[str, str] | None = None) -> Context:
    """torchrun's variables, else an srun step's with more than one task, else a world of one. Inside a
    SLURM job's batch script (no step) or a one-task step, a process is alone."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        ctx = Context(_integer(env, "RANK"), _integer(env, "WORLD_SIZE"),
                      _integer(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0, "torchrun")  # fmt: skip
    elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        tasks = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        size = _integer(env, tasks) if tasks in env else 1
        if size == 1:
            return Context()
        local = _integer(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        ctx = Context(_integer(env, "SLURM_PROCID"), size, local, "srun")
    else:
        return Context()
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size or ctx.local_rank < 0:
        raise DistributedError(
            f"{ctx.launcher}: rank {ctx.rank}, local rank {ctx.local_rank} of world size {ctx.world_size} "
            "is not a valid place in a run"
        )
    return ctx


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,9],cpu1' -> 'gpu03', 'a,b' -> 'a'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise DistributedError(f"SLURM node list {nodelist!r}: cannot read its first host")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    return prefix + re.split(r"[-,]", ranges)[0]


def rendezvous_env(ctx: Context, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """MASTER_ADDR and MASTER_PORT for an srun step that does not set them: its first node (where rank 0
    runs, block distribution) and a port derived from the job and step ids. torchrun always sets both."""
    env = os.environ if env is None else env
    out = {k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT") if k in env}
    if ctx.launcher != "srun":
        return out
    if "MASTER_ADDR" not in out:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise DistributedError("srun: set MASTER_ADDR (no SLURM_STEP_NODELIST names rank 0's node)")
        out["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in out:
        job = _integer(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
        step = _integer(env, "SLURM_STEP_ID") if "SLURM_STEP_ID" in env else 0
        out["MASTER_PORT"] = str(20000 + (job * 7 + step) % 30000)
    return out


def select_device(ctx: Context, name: str, key: str = "train.device") -> torch.device:
    """`auto` and `cuda` mean this rank's GPU: cuda:LOCAL_RANK, or cuda:0 when the launcher shows each
    process one GPU (srun --gpus-per-task). A world of one keeps `train.device` as it is."""
    from .device import resolve_device

    device = resolve_device(name, key)
    if not ctx.active or device.type != "cuda":
        return device
    if device.index is not None:
        raise DistributedError(
            f"{key}: {name!r} names one GPU, but each of the {ctx.world_size} processes needs its own; "
            "use auto or cuda (rank r takes cuda:LOCAL_RANK)"
        )
    count = torch.cuda.device_count()
    if count == 1:
        index = 0
    elif ctx.local_rank < count:
        index = ctx.local_rank
    else:
        error = DistributedError(
            f"local rank {ctx.local_rank} has no GPU of its own: {count} are visible on this node; start at "
            f"most {count} processes per node"
        )
        error.per_rank = True  # rank 0 may have its GPU: this rank says it
        raise error
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row batch that `rank` keeps: contiguous, in rank order, as `tensor_split`
    (the first n % world_size ranks hold one more row)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def check_batch_size(ctx: Context, batch_size: int) -> None:
    if batch_size % ctx.world_size:
        raise DistributedError(
            f"train.batch_size: {batch_size} is not divisible by the world size {ctx.world_size} (the global "
            f"batch is split evenly over the processes); use a multiple of {ctx.world_size}"
        )


class Collective:
    """The collectives of a run over the default process group; for a world of one each is the identity
    (no process group needed), so the training loop is the same code for any N."""

    def __init__(self, ctx: Context, device: torch.device):
        self.ctx = ctx
        self.device = device  # NCCL reduces CUDA tensors only: small values travel on this device

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = shard_bounds(t.shape[0], self.ctx.rank, self.ctx.world_size)
        return t[lo:hi]

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum tensors over ranks in place, as one flat all-reduce (one call, whatever their number)."""
        if not self.ctx.active or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def _reduce_values(self, values: Sequence[float], op) -> list[float]:
        if not self.ctx.active:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """Sums of numbers over ranks, in float64 (loss sums, counts)."""
        return self._reduce_values(values, dist.ReduceOp.SUM)

    def max_values(self, values: Sequence[float]) -> list[float]:
        return self._reduce_values(values, dist.ReduceOp.MAX)

    def agreed_signal(self, signum: int | None) -> int | None:
        """The stop signal any rank received (SIGTERM reaches them at different batches): every rank stops
        after the same batch, so no rank waits for a step the others will not take."""
        if not self.ctx.active:
            return signum
        (value,) = self.max_values([signum or 0])
        return int(value) or None

    def gather_rows(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """Rank 0 gets each tensor's shards concatenated in rank order (the global batch's rows, on the
        CPU); the other ranks get None. Shards may differ in their number of rows."""
        if not self.ctx.active:
            return [t.cpu() for t in tensors]
        (rows,) = tensors[0].shape[:1] if tensors else (0,)
        counts = [int(c) for c in self.all_gather_object(rows)]
        out = []
        for t in tensors:
            padded = t.new_zeros((max(counts), *t.shape[1:]))
            padded[: t.shape[0]] = t
            parts = [torch.empty_like(padded) for _ in counts] if self.ctx.is_writer else None
            dist.gather(padded.contiguous(), parts, dst=0)
            if parts is not None:
                out.append(torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).cpu())
        return out if self.ctx.is_writer else None

    def all_gather_object(self, obj: T) -> list[T]:
        if not self.ctx.active:
            return [obj]
        out: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_object(self, obj: T) -> list[T] | None:
        """Every rank's `obj` on rank 0 (None elsewhere)."""
        if not self.ctx.active:
            return [obj]
        out: list[Any] | None = [None] * self.ctx.world_size if self.ctx.is_writer else None
        dist.gather_object(obj, out, dst=0)
        return out

    def on_writer(self, call: Callable[[], T]) -> T | None:
        """`call()` on rank 0 only; a one-line error it raises (ValueError) is raised on every rank, so all
        of them stop together instead of the others waiting at the next collective."""
        result, message = None, None
        if self.ctx.is_writer:
            try:
                result = call()
            except ValueError as error:
                if not self.ctx.active:
                    raise
                message = [type(error).__name__, str(error)]
        if self.ctx.active:
            box = [message]
            dist.broadcast_object_list(box, src=0)
            message = box[0]
        if message is not None:
            if self.ctx.is_writer:
                raise ConfigError(message[1])
            raise QuietError(message[1])
        return result

    def barrier(self) -> None:
        if self.ctx.active:
            dist.barrier()


class QuietError(ConfigError):
    """An error rank 0 has already reported: the other ranks exit with its status without repeating it."""


def die_with_launcher(ctx: Context) -> None:
    """Under torchrun, end this process when torchrun ends, however it ends. torchrun starts each worker in
    a session of its own, so a SIGKILL to torchrun's process group (a killed pipeline job, `kill -9`) would
    leave the workers training — and writing the run directory the rerun resumes from. Linux only (prctl
    PR_SET_PDEATHSIG); elsewhere a no-op."""
    if ctx.launcher != "torchrun" or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(128 + signal.SIGKILL)


@contextlib.contextmanager
def process_group(ctx: Context, device: torch.device) -> Iterator[Collective]:
    """The default process group of a run of `ctx.world_size` processes, destroyed on the way out (a world
    of one: none)."""
    collective = Collective(ctx, device)
    if not ctx.active:
        yield collective
        return
    die_with_launcher(ctx)
    os.environ.update(rendezvous_env(ctx))
    backend = "nccl" if device.type == "cuda" else "gloo"
    options: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, init_method="env://", rank=ctx.rank, world_size=ctx.world_size, timeout=TIMEOUT, **options
    )
    try:
        yield collective
    finally:
        dist.destroy_process_group()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch (all ranks' shards), on
    any backend. torch's SyncBatchNorm computes the same statistics but runs on GPUs only (it raises on
    CPU tensors), so the CPU tests could not check it; this one is what runs everywhere. One autograd-aware
    all-reduce per layer and pass of [count, Σx, Σx²] per channel in float64, from each shard's own
    (numerically stable) mean and variance. Parameters and buffers are BatchNorm2d's: checkpoints and
    model.pt are interchangeable with a single-process run's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        n = x.numel() // C
        if n:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            mean64, var64 = mean.double(), var.double()
        else:
            mean64 = var64 = x.new_zeros(C, dtype=torch.float64)
        stats = torch.cat([mean64.new_full((1,), n), n * mean64, n * (var64 + mean64 * mean64)])
        total = all_reduce(stats)
        count = total[0]
        mean_g = total[1 : C + 1] / count
        var_g = (total[C + 1 :] / count - mean_g * mean_g).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var_g * (count / (count - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean_g.to(x.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(x.dtype), alpha=m)
        shape = (1, C, 1, 1)
        scale = torch.rsqrt(var_g + self.eps).to(x.dtype)
        y = (x - mean_g.to(x.dtype).view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def global_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of `model` (in place) by a GlobalBatchNorm2d holding the same parameter
    and buffer tensors, so an optimizer built on the model before or after sees the same parameters."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device="meta")  # fmt: skip
            bn.weight, bn.bias = child.weight, child.bias
            bn.running_mean, bn.running_var = child.running_mean, child.running_var
            bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            global_batchnorm(child)
    return model


def free_port() -> int:
    """A TCP port no process on this host listens on now: a rendezvous port for a new process group."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
