"""One training step and one evaluation pass, for EP networks and for backprop baselines.

A learner owns no data and no loop: `train_step` takes a batch (and, for EP, the states to warm-start
from) and returns a `StepResult` of device tensors, so the loop can accumulate them without a device
synchronisation per batch; `evaluate` runs a split from zero states (EP) or in eval mode (BP).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .costs import cost_value, one_hot
from .diagnostics import layer_statistic_names, layer_statistics
from .estimators import EquilibriumProp, device_clock
from .networks import HopfieldNetwork
from .relaxation import States, relax


class DivergenceError(RuntimeError):
    """Non-finite loss, gradient or state: the run cannot continue."""


@dataclass
class StepResult:
    loss_sum: float
    correct: int
    seconds: dict[str, float]
    scalars: dict[str, float] = field(default_factory=dict)  # per-batch values averaged over the epoch
    layer_stats: torch.Tensor | None = None
    carry: States | None = None  # EP: states to warm-start the next batch from


def _check_finite(what: str, *values: float) -> None:
    if not all(math.isfinite(v) for v in values):
        raise DivergenceError(f"non-finite {what} ({', '.join(f'{v:g}' for v in values)})")


class EPLearner:
    def __init__(self, net: HopfieldNetwork, config: RunConfig):
        e = config.ep
        self.net = net
        self.estimator = EquilibriumProp(
            beta=e.beta, variant=e.estimator, free_iterations=e.free_iterations,
            nudge_iterations=e.nudge_iterations, order=e.order, cost=e.cost, tol=e.tol, clip_norm=e.clip_norm,
            batch_phases=e.batch_phases, solver=e.solver, nudge_solver=e.nudge_solver,
            anderson_memory=e.anderson_memory, compile=e.compile, cuda_graphs=e.cuda_graphs,
            chunk_size=e.chunk_size,
        )  # fmt: skip
        self.channels_last = e.channels_last
        if self.channels_last:
            net.to(memory_format=torch.channels_last)  # in place: the parameters keep their identity
        self.warm_start = e.warm_start
        self.eval_iterations = e.eval_iterations
        self.layer_stat_names = layer_statistic_names(net)

    def train_step(self, x, y, optimizer: torch.optim.Optimizer, warm: States | None) -> StepResult:
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
        est = self.estimator.estimate(
            self.net, self._format(x), y, start, keep_states=False, carry=carry,
            summarise=lambda free: layer_statistics(self.net, free),
        )  # fmt: skip
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
        )
        t0 = device_clock(x.device)
        optimizer.zero_grad(set_to_none=True)
        est.write_to(self.net)
        del est  # the states go before the optimizer allocates its temporaries
        optimizer.step()
        result.seconds = {**result.seconds, "step": device_clock(x.device) - t0}
        return result

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def evaluate(self, batches: Iterable) -> dict[str, float]:
        loss, correct, n, residual = 0.0, 0, 0, 0.0
        for x, y in batches:
            e = self.estimator
            states, stats = relax(
                self.net, self._format(x), iterations=self.eval_iterations, order=e.order, tol=e.tol,
                solver=e.solver, memory=e.anderson_memory, compile=e.compile,
            )  # fmt: skip
            o = states[-1]
            loss += cost_value(self.estimator.cost, o, one_hot(y, self.net.num_classes, o.dtype)).sum().item()
            correct += int((o.argmax(1) == y).sum())
            residual = max(residual, stats.residual)
            n += x.shape[0]
        return {"loss": loss / n, "acc": 100.0 * correct / n, "residual": residual}


class BPLearner:
    def __init__(self, model: nn.Module, config: RunConfig):
        self.model = model
        self.layer_stat_names: list[str] = []

    def train_step(self, x, y, optimizer: torch.optim.Optimizer, warm=None) -> StepResult:
        self.model.train()
        t0 = device_clock(x.device)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), math.inf).item()
        _check_finite("loss or gradient norm", loss.item(), grad_norm)
        optimizer.step()
        return StepResult(
            loss_sum=loss.item() * x.shape[0],
            correct=int((logits.argmax(1) == y).sum()),
            seconds={"step": device_clock(x.device) - t0},
            scalars={"grad_norm": grad_norm},
        )

    @torch.no_grad()
    def evaluate(self, batches: Iterable) -> dict[str, float]:
        self.model.eval()
        loss, correct, n = 0.0, 0, 0
        for x, y in batches:
            logits = self.model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
            n += x.shape[0]
        return {"loss": loss / n, "acc": 100.0 * correct / n}
