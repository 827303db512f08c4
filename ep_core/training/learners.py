"""One training step and one evaluation pass, for EP networks and for backprop baselines.

A learner owns no data and no loop: `train_step` takes a batch (and, for EP, the states to warm-start
from) and returns a `StepResult` of device tensors, so the loop can accumulate them without a device
synchronisation per batch; `evaluate` runs a split from zero states (EP) or in eval mode (BP).

Data-parallel (a `Collective` of more than one process, ep_core.training.distributed): the batch a learner
gets is this rank's shard of a global batch of `batch_size` examples. EP sums each shard's Hebbian terms with
weight 1/batch_size, all-reduces them, then clips the global norm of the reduced gradient — the single-process
update of the global batch. Backprop runs DistributedDataParallel (its bucketed gradient all-reduce overlaps
the backward pass) on a loss scaled so that DDP's average over ranks is the global batch's mean, exact for
unequal shards too, with every BatchNorm computing global-batch statistics (`GlobalBatchNorm2d`). Losses,
accuracies and layer statistics are reduced as sums over the global batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..numerics.costs import cost_value, one_hot
from ..numerics.diagnostics import layer_statistic_names, layer_statistics
from ..numerics.estimators import clip_global_norm, device_clock
from ..numerics.networks import HopfieldNetwork
from ..numerics.orders import check_omega, update_groups
from ..numerics.relaxation import States, relax
from .config import ConfigError, RunConfig, estimator_settings
from .distributed import Collective, global_batchnorm


class DivergenceError(RuntimeError):
    """Non-finite loss, gradient or state: the run cannot continue. `where` says when it happened if not
    in the batch the run is training ('after epoch 3': an end-of-epoch check); the run's report adds it."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.where = where


@dataclass
class StepResult:
    loss_sum: float
    correct: int
    seconds: dict[str, float]
    scalars: dict[str, float] = field(default_factory=dict)  # per-batch values averaged over the epoch
    layer_stats: torch.Tensor | None = None
    carry: States | None = None  # EP: states to warm-start the next batch from
    # EP: wall time of each nudged relaxation, (−β, +β) when run one after the other, one when stacked
    nudged_seconds: list[float] = field(default_factory=list)


def _check_finite(what: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise DivergenceError(f"non-finite {what} ({', '.join(f'{v:g}' for v in values)})")


PHASES = ("free", "nudged")  # the relaxation statistics of a step, in the order ranks reduce them


def _distributed(collective: Collective | None) -> Collective | None:
    return collective if collective is not None and collective.world_size > 1 else None


class EPLearner:
    def __init__(self, net: HopfieldNetwork, config: RunConfig, collective: Collective | None = None):
        e = config.ep
        self.net = net
        self.collective = _distributed(collective)
        # Data-parallel, each shard's estimate is unclipped: the clip acts on the all-reduced gradient.
        self.clip_norm = e.clip_norm
        self.estimator = estimator_settings(e, **({"clip_norm": None} if self.collective else {}))
        for key in ("omega", "nudge_omega"):  # over-relaxation needs a proper colouring of the couplings
            try:
                if getattr(e, key) is not None:
                    check_omega(getattr(e, key), net, update_groups(net, e.order))
            except ValueError as error:
                raise ConfigError(f"ep.{key}: {error}") from None
        self.channels_last = e.channels_last
        if self.channels_last:
            net.to(memory_format=torch.channels_last)  # in place: the parameters keep their identity
        self.warm_start = e.warm_start
        self.eval_iterations = e.eval_iterations
        self.layer_stat_names = layer_statistic_names(net)

    def _start_and_carry(self, x: torch.Tensor, warm: States | None) -> tuple[States | None, States | None]:
        # The authors keep the previous batch's +β states and reset to zeros when the batch size changes.
        start = warm if (self.warm_start and warm is not None and warm[0].shape[0] == x.shape[0]) else None
        # The next batch's warm start is written into this one's in place (each example's slice once its
        # free phase is done), so the previous batch's states never coexist with a copy of the new ones.
        carry = None
        if self.warm_start:
            carry = (
                start
                if start is not None
                else self.net.zero_states(x.shape[0], device=x.device, dtype=x.dtype)
            )
        return start, carry

    def _estimate(self, x, y, start: States | None, carry: States | None):
        return self.estimator.estimate(
            self.net, self.format_input(x), y, start, keep_states=False, carry=carry,
            summarise=lambda free: layer_statistics(self.net, free),
        )  # fmt: skip

    def train_step(
        self, x, y, optimizer: torch.optim.Optimizer, warm: States | None, batch_size: int | None = None
    ) -> StepResult:
        """One update from batch (x, y); data-parallel, (x, y) is this rank's shard of a global batch of
        `batch_size` examples."""
        if self.collective is not None:
            return self._shard_step(x, y, optimizer, warm, batch_size or x.shape[0])
        start, carry = self._start_and_carry(x, warm)
        est = self._estimate(x, y, start, carry)
        _check_finite("loss or gradient norm", est.loss, est.grad_norm)
        scalars = {"grad_norm": est.grad_norm}
        for phase, stats in est.stats.items():
            scalars |= {f"{phase}_iterations": stats.iterations, f"{phase}_residual": stats.residual}
        result = StepResult(
            loss_sum=est.loss * x.shape[0],
            correct=int((est.output.argmax(1) == y).sum()),
            seconds=est.seconds,
            scalars=scalars,
            layer_stats=est.summary,
            carry=carry,
            nudged_seconds=est.nudged_seconds,
        )
        t0 = device_clock(x.device)
        optimizer.zero_grad(set_to_none=True)
        est.write_to(self.net)
        del est  # the states go before the optimizer allocates its temporaries
        optimizer.step()
        result.seconds = {**result.seconds, "step": device_clock(x.device) - t0}
        return result

    def _shard_step(self, x, y, optimizer, warm: States | None, batch_size: int) -> StepResult:
        c, n = self.collective, x.shape[0]
        start, carry = self._start_and_carry(x, warm)
        if n:
            est = self._estimate(x, y, start, carry)
            grads, seconds, summary = est.grads, est.seconds, est.summary * n
            stats = [getattr(est.stats[p], f) for f in ("iterations", "residual") for p in PHASES]
            local = [est.loss * n, float((est.output.argmax(1) == y).sum())]
            weight = n / batch_size  # the shard's estimate is a mean over n examples; the update's over all
            for g in grads.values():
                g.mul_(weight)
            del est
        else:  # a last batch smaller than the world leaves some ranks nothing: they add zeros
            grads = {name: torch.zeros_like(p) for name, p in self.net.named_parameters()}
            seconds = {"free": 0.0, "nudged": 0.0, "gradient": 0.0}
            summary = torch.zeros(len(self.layer_stat_names), device=x.device, dtype=x.dtype)
            stats, local = [0.0] * (2 * len(PHASES)), [0.0, 0.0]
        t0 = device_clock(x.device)
        c.sum_([*grads.values(), summary])
        loss_sum, correct = c.sum_values(local)
        stats = c.max_values(stats)
        with torch.no_grad():
            grad_norm = clip_global_norm(grads, self.clip_norm)
        t1 = device_clock(x.device)
        _check_finite("loss or gradient norm", loss_sum / batch_size, grad_norm)
        scalars = {"grad_norm": grad_norm}
        for i, phase in enumerate(PHASES):
            scalars |= {f"{phase}_iterations": int(stats[i]), f"{phase}_residual": stats[len(PHASES) + i]}
        optimizer.zero_grad(set_to_none=True)
        for name, p in self.net.named_parameters():
            p.grad = grads[name].to(p.dtype)
        del grads
        optimizer.step()
        seconds = {**seconds, "allreduce": t1 - t0, "step": device_clock(x.device) - t1}
        return StepResult(loss_sum, round(correct), seconds, scalars, summary / batch_size, carry)

    def format_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def evaluate(self, batches: Iterable) -> dict[str, float]:
        """Loss, accuracy and worst final residual over `batches` (data-parallel: this rank's shards of the
        split's batches, reduced over ranks)."""
        loss, correct, n, residual = 0.0, 0, 0, 0.0
        for x, y in batches:
            if not x.shape[0]:
                continue
            e = self.estimator
            states, stats = relax(
                self.net, self.format_input(x), iterations=self.eval_iterations, order=e.order, tol=e.tol,
                solver=e.solver, memory=e.anderson_memory, compile=e.compile, omega=e.omega,
            )  # fmt: skip
            o = states[-1]
            loss += cost_value(self.estimator.cost, o, one_hot(y, self.net.num_classes, o.dtype)).sum().item()
            correct += int((o.argmax(1) == y).sum())
            residual = max(residual, stats.residual)
            n += x.shape[0]
        if self.collective is not None:
            loss, correct, n = self.collective.sum_values([loss, correct, n])
            (residual,) = self.collective.max_values([residual])
        return {"loss": loss / n, "acc": 100.0 * correct / n, "residual": residual}


class BPLearner:
    def __init__(self, model: nn.Module, config: RunConfig, collective: Collective | None = None):
        self.model = model
        self.collective = _distributed(collective)
        self.layer_stat_names: list[str] = []
        self._ddp: nn.Module | None = None
        if self.collective is not None:
            global_batchnorm(model)  # in place: the same parameters, global-batch statistics

    def _forward_model(self) -> nn.Module:
        """The DDP wrapper, made at the first step (it broadcasts rank 0's weights, which by then are the
        resumed ones on every rank anyway)."""
        if self.collective is None:
            return self.model
        if self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            device = next(self.model.parameters()).device
            ids = [device] if device.type == "cuda" else None
            # BN buffers are equal on every rank (global statistics): nothing to broadcast each step.
            self._ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        return self._ddp

    def train_step(
        self, x, y, optimizer: torch.optim.Optimizer, warm=None, batch_size: int | None = None
    ) -> StepResult:
        self.model.train()
        t0 = device_clock(x.device)
        logits = self._forward_model()(x)
        if self.collective is None:
            loss = F.cross_entropy(logits, y)
            loss_sum, n = loss.item() * x.shape[0], x.shape[0]
        else:
            # DDP averages the ranks' gradients: scaling each shard's summed loss by world / batch_size
            # makes that average the gradient of the global batch's mean loss, whatever the shard sizes.
            n = batch_size or x.shape[0]
            summed = F.cross_entropy(logits, y, reduction="sum")
            loss = summed * (self.collective.world_size / n)
            loss_sum = summed.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # data-parallel: the gradients arrive all-reduced
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), math.inf).item()
        correct = int((logits.argmax(1) == y).sum())
        if self.collective is not None:
            loss_sum, total = self.collective.sum_values([loss_sum, correct])
            correct = round(total)
        _check_finite("loss or gradient norm", loss_sum / n, grad_norm)
        optimizer.step()
        return StepResult(
            loss_sum=loss_sum,
            correct=correct,
            seconds={"step": device_clock(x.device) - t0},
            scalars={"grad_norm": grad_norm},
        )

    @torch.no_grad()
    def evaluate(self, batches: Iterable) -> dict[str, float]:
        self.model.eval()  # running statistics: every example on its own, so shards need no care
        loss, correct, n = 0.0, 0, 0
        for x, y in batches:
            if not x.shape[0]:
                continue
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            n += x.shape[0]
        if self.collective is not None:
            loss, correct, n = self.collective.sum_values([loss, correct, n])
        return {"loss": loss / n, "acc": 100.0 * correct / n}
