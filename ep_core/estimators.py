"""Equilibrium-propagation gradient estimators: one-sided EP (0, +β) and centered EP (−β, +β).

With nudged fixed points s¹ at β₁ and s² at β₂ (both relaxed from the free state), the estimate of
∂L/∂θ, L the batch-mean cost at the free fixed point, is

    ĝ_θ = −[∂Φ/∂θ(s²) − ∂Φ/∂θ(s¹)] / ((β₂ − β₁) · B)

(authors-code-spec §4.1; the same sign as `.grad`, so any torch optimizer can step it). One-sided EP
takes s¹ = the free state; its bias is O(β), centered EP's O(β²). Because Φ is bilinear in each edge's
(state, weight) pair, both terms come out of one Hebbian correlation over the concatenated batch [s¹; s²]
with per-example coefficients ∓1/((β₂ − β₁)·B).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .costs import check_cost, cost_value, one_hot
from .interactions import bias_grad
from .networks import HopfieldNetwork
from .relaxation import Nudge, RelaxStats, States, input_drive, relax
from .schedule import check_order, update_groups

VARIANTS = ("cep", "ep")


@dataclass
class GradientEstimate:
    grads: dict[str, torch.Tensor]  # parameter name -> estimate of ∂L/∂θ (after clipping, if any)
    free_states: States
    nudged_states: tuple[States, ...]  # (s¹, s²) for CEP, (s²,) for one-sided EP
    stats: dict[str, RelaxStats]
    loss: float  # batch-mean cost at the free state
    grad_norm: float  # global L2 norm before clipping
    output: torch.Tensor = field(repr=False)  # free-phase output state (B, n_out)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time: free, nudged phases, gradient

    def write_to(self, net: HopfieldNetwork) -> None:
        """Store the estimate in each parameter's `.grad`."""
        for name, p in net.named_parameters():
            p.grad = self.grads[name].to(p.dtype)


def parameter_gradients(
    net: HopfieldNetwork, x: torch.Tensor, states: States, coefficient: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Σ_b c_b · ∂Φ/∂θ(x_b, s_b) for every parameter: the closed-form Hebbian terms, weighted per example.
    `coefficient` has shape (B,)."""
    s = [x, *states]

    def weighted(t: torch.Tensor) -> torch.Tensor:
        return t * coefficient.view(-1, *([1] * (t.dim() - 1)))

    grads = {}
    for k, layer in enumerate(net.layers, start=1):
        grads[f"biases.{layer.name}"] = bias_grad(weighted(s[k]))
    for name, edge in net.edges.items():
        grads[f"edges.{name}.weight"] = edge.weight_grad(s[edge.pre], weighted(s[edge.post]))
    return {name: grads[name] for name, _ in net.named_parameters()}


def clip_global_norm(grads: dict[str, torch.Tensor], max_norm: float | None) -> float:
    """Scale all tensors by max_norm / (‖g‖ + 1e-6) when that is < 1 (torch's and the authors' rule).
    Returns the norm before clipping."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    if max_norm is not None:
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for g in grads.values():
            g.mul_(scale)
    return total.item()


def device_clock(device: torch.device) -> float:
    """perf_counter after the device has finished its queued work, so phase timings are honest on GPUs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _cat(a: States, b: States) -> States:
    return [torch.cat([u, v]) for u, v in zip(a, b, strict=True)]


def _expand_drive(drive: list[torch.Tensor], copies: int) -> list[torch.Tensor]:
    # Constant drives that carry a batch dimension must be repeated for the stacked phases;
    # bias-only drives broadcast as they are.
    return [d if d.shape[0] == 1 else torch.cat([d] * copies) for d in drive]


@dataclass(frozen=True)
class EquilibriumProp:
    """An EP gradient estimator; every field defaults to the authors' training setting."""

    beta: float = 0.1
    variant: str = "cep"  # "cep": nudges (−β, +β); "ep": one-sided (0, +β)
    free_iterations: int = 120
    nudge_iterations: int = 50
    order: str = "even_odd"
    cost: str = "mse"
    tol: float | None = None  # early stop of every phase at this relative residual
    clip_norm: float | None = None  # the authors clip the global gradient norm at 1.0
    batch_phases: bool = True  # run the −β and +β phases of CEP as one stacked batch

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown estimator {self.variant!r}; valid choices: {', '.join(VARIANTS)}")
        if not math.isfinite(self.beta):
            raise ValueError(f"beta must be finite, got {self.beta!r}")
        if self.variant == "cep" and self.beta <= 0:
            raise ValueError(f"centered EP needs beta > 0 (it nudges with -beta and +beta), got {self.beta}")
        if self.variant == "ep" and self.beta == 0:
            raise ValueError("one-sided EP needs beta != 0")
        check_cost(self.cost)
        check_order(self.order)
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm!r}")

    @property
    def nudges(self) -> tuple[float, float]:
        return (-self.beta, self.beta) if self.variant == "cep" else (0.0, self.beta)

    def estimate(
        self, net: HopfieldNetwork, x: torch.Tensor, y: torch.Tensor, states: States | None = None
    ) -> GradientEstimate:
        """Free phase from `states` (zeros if None; pass the previous batch's states to warm-start as the
        authors do), the nudged phases from the free state, and the gradient estimate."""
        net.check_input(x)
        target = one_hot(y, net.num_classes, x.dtype)
        groups = update_groups(net, self.order)
        t0 = device_clock(x.device)
        drive = input_drive(net, x)
        free, free_stats = relax(
            net, x, states, iterations=self.free_iterations, order=groups, tol=self.tol, drive=drive
        )
        t1 = device_clock(x.device)
        b1, b2 = self.nudges
        B = x.shape[0]
        stats = {"free": free_stats}

        def nudged(beta, start, x_, target_, drive_) -> tuple[States, RelaxStats]:
            nudge = Nudge(target_, beta, self.cost)
            return relax(
                net,
                x_,
                start,
                iterations=self.nudge_iterations,
                order=groups,
                nudge=nudge,
                tol=self.tol,
                drive=drive_,
            )

        if b1 == 0.0:
            s2, stats["nudged"] = nudged(b2, free, x, target, drive)
            s1, nudged_states = free, (s2,)
        elif self.batch_phases:
            betas = torch.cat([x.new_full((B, 1), b1), x.new_full((B, 1), b2)])
            both, stats["nudged"] = nudged(
                betas,
                _cat(free, free),
                torch.cat([x, x]),
                torch.cat([target, target]),
                _expand_drive(drive, 2),
            )
            s1, s2 = [t[:B] for t in both], [t[B:] for t in both]
            nudged_states = (s1, s2)
        else:
            s1, st1 = nudged(b1, free, x, target, drive)
            s2, st2 = nudged(b2, free, x, target, drive)
            stats["nudged"] = RelaxStats(max(st1.iterations, st2.iterations), max(st1.residual, st2.residual))
            nudged_states = (s1, s2)

        t2 = device_clock(x.device)
        scale = 1.0 / ((b2 - b1) * B)
        coefficient = torch.cat([x.new_full((B,), scale), x.new_full((B,), -scale)])
        with torch.no_grad():
            grads = parameter_gradients(net, torch.cat([x, x]), _cat(s1, s2), coefficient)
            grad_norm = clip_global_norm(grads, self.clip_norm)
            loss = cost_value(self.cost, free[-1], target).mean().item()
        seconds = {"free": t1 - t0, "nudged": t2 - t1, "gradient": device_clock(x.device) - t2}
        return GradientEstimate(grads, free, nudged_states, stats, loss, grad_norm, free[-1], seconds)
