"""`ep-core gradcheck`: EP / centered-EP estimates against the implicit-differentiation reference gradient.

Both are taken at the same free fixed point (relaxed to `tol` with a proper colouring by default). The
report gives, per parameter tensor, the cosine similarity and the relative error ‖ĝ − g‖/‖g‖, plus what
makes a comparison meaningful: how well each phase converged and whether the nudges changed the active
set (a clip boundary crossed or a max-pool argmax flipped), which makes a finite-β estimate jump.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from ..numerics.diagnostics import pattern_changes
from ..numerics.estimators import EquilibriumProp, GradientEstimate
from ..numerics.fidelity import relative_error
from ..numerics.networks import HopfieldNetwork, build_network
from ..numerics.reference import reference_gradients
from ..numerics.relaxation import fixed_point_residual, relative_change, relax

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class TensorCheck:
    name: str
    shape: list[int]
    cosine: float
    rel_error: float
    reference_norm: float


@dataclass
class GradcheckReport:
    settings: dict
    tensors: list[TensorCheck]
    free_iterations: int
    free_residual: float
    fixed_point_residual: float
    nudged_iterations: int
    nudged_residual: float
    pattern_changes: int
    cg_iterations: int
    cg_residual: float
    active_fraction: float
    loss: float
    # --bf16-sweeps: the estimate's own free phase from zeros (bf16 bulk, then polished in `dtype`): its bulk
    # sweeps, all its sweeps and its distance ‖s − s*‖/‖s*‖ from the reference's free state s*
    bulk_iterations: int = 0
    estimate_free_iterations: int = 0
    free_state_distance: float = 0.0
    min_cosine: float = field(init=False)
    max_rel_error: float = field(init=False)
    total_rel_error: float = 0.0
    # Optional β sweep: per β and estimator the total relative error and active-set changes, and the fitted
    # log-log slope of error against β over the sweep points without active-set changes (≈1 EP, ≈2 CEP).
    sweep: list[dict] = field(default_factory=list)
    slopes: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.min_cosine = min(t.cosine for t in self.tensors)
        self.max_rel_error = max(t.rel_error for t in self.tensors)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        s = self.settings
        lines = [
            f"gradcheck {s['arch']} width={s['width']} {s['estimator']} beta={s['beta']} {s['dtype']} "
            f"input={s['input_size']} batch={s['batch_size']} order={s['order']} seed={s['seed']}",
            f"{'tensor':<28} {'shape':<18} {'cosine':>12} {'rel.err':>10}",
        ]
        for t in self.tensors:
            shape = "x".join(map(str, t.shape))
            lines.append(f"{t.name:<28} {shape:<18} {t.cosine:>12.8f} {t.rel_error:>10.2e}")
        lines += [
            f"min cosine {self.min_cosine:.8f}   max rel.err {self.max_rel_error:.2e}   "
            f"total rel.err {self.total_rel_error:.2e}",
            f"free phase: {self.free_iterations} iterations, residual {self.free_residual:.1e}, "
            f"fixed-point residual {self.fixed_point_residual:.1e}",
            *(
                [
                    f"estimate's own free phase: {self.bulk_iterations} bf16 sweeps, then "
                    f"{self.estimate_free_iterations - self.bulk_iterations} in {s['dtype']}; distance from "
                    f"the reference's free state {self.free_state_distance:.1e}"
                ]
                if s.get("bf16_sweeps")
                else []
            ),
            f"nudged phases: {self.nudged_iterations} iterations, residual {self.nudged_residual:.1e}; "
            f"active-set changes under the nudges: {self.pattern_changes}",
            f"reference: CG {self.cg_iterations} iterations, residual {self.cg_residual:.1e}; "
            f"{100 * self.active_fraction:.1f}% of hidden units unclipped; loss {self.loss:.6f}",
        ]
        if self.pattern_changes:
            lines.append(
                "warning: the nudges changed the active set; lower --beta for a bias-only comparison"
            )
        if self.sweep:
            lines.append(f"{'beta':>10} {'EP rel.err':>12} {'changes':>8} {'CEP rel.err':>12} {'changes':>8}")
            for row in self.sweep:
                lines.append(
                    f"{row['beta']:>10.3g} {row['ep']:>12.3e} {row['ep_changes']:>8} "
                    f"{row['cep']:>12.3e} {row['cep_changes']:>8}"
                )
            fitted = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in self.slopes.items())
            lines.append(f"fitted log-log slope of error vs beta (expect ~1 for EP, ~2 for CEP): {fitted}")
        return "\n".join(lines)


def run_gradcheck(
    arch: str,
    *,
    width: float = 1 / 16,
    estimator: str = "cep",
    beta: float = 1e-3,
    dtype: str = "float64",
    input_size: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    order: str = "coloring",
    activation: str = "relu6",
    cost: str = "mse",
    tol: float = 1e-14,
    max_iterations: int = 20_000,
    in_channels: int = 3,
    num_classes: int = 10,
    sweep: Sequence[float] = (),
    device: str = "cpu",
    tf32: bool = False,
    bf16_sweeps: int = 0,
) -> GradcheckReport:
    """The report at one setting. On CUDA, `tf32` lets convolutions and matmuls of float32 use TF32
    tensor cores (torch's default for cuDNN convolutions); without it float32 means float32. With
    `bf16_sweeps` the estimate relaxes its own free phase from zeros, its first `bf16_sweeps` sweeps in
    bf16 (`ep_core.numerics.precision`), the rest in `dtype`, while the reference keeps the free state relaxed
    in `dtype`: the report then says whether the mixed-precision free phase gives the same gradient."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid choices: {', '.join(DTYPES)}")
    from ..training.device import resolve_device

    dev = resolve_device(device, "--device")
    with _tf32(tf32):
        return _run(
            arch, width, estimator, beta, dtype, input_size, batch_size, seed, order, activation, cost, tol,
            max_iterations, in_channels, num_classes, sweep, dev, tf32, bf16_sweeps,
        )  # fmt: skip


@contextlib.contextmanager
def _tf32(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _run(
    arch, width, estimator, beta, dtype, input_size, batch_size, seed, order, activation, cost, tol,
    max_iterations, in_channels, num_classes, sweep, dev, tf32, bf16_sweeps,
) -> GradcheckReport:  # fmt: skip
    settings = {
        "arch": arch, "width": width, "estimator": estimator, "beta": beta, "dtype": dtype,
        "input_size": input_size, "batch_size": batch_size, "seed": seed, "order": order,
        "activation": activation, "cost": cost, "tol": tol, "device": str(dev), "tf32": tf32,
        "bf16_sweeps": bf16_sweeps,
    }  # fmt: skip
    estimator_at = partial(_estimator, max_iterations=max_iterations, order=order, cost=cost, tol=tol,
                           bf16_sweeps=bf16_sweeps)  # fmt: skip
    ep = estimator_at(estimator, beta)
    for b in sweep:
        estimator_at("cep", b)  # validates every β before any work
    net, x, y = _network_and_batch(
        arch, width=width, activation=activation, input_size=input_size, batch_size=batch_size,
        in_channels=in_channels, num_classes=num_classes, seed=seed, dev=dev, dtype=DTYPES[dtype],
    )  # fmt: skip
    free, free_stats = relax(net, x, iterations=max_iterations, order=order, tol=tol)
    reference = reference_gradients(net, x, y, free, cost=cost)
    # The mixed-precision mode is a free phase: the estimate runs its own (from zeros) instead of starting
    # at the reference's fixed point.
    check = _Check(net, x, y, free, start=None if bf16_sweeps else free, reference=reference.grads)
    estimate = check.estimate(ep)
    tensors = check.tensors(estimate)
    rows = [check.sweep_row(estimator_at, b) for b in sweep]
    return GradcheckReport(
        settings=settings,
        tensors=tensors,
        free_iterations=free_stats.iterations,
        free_residual=free_stats.residual,
        fixed_point_residual=fixed_point_residual(net, x, free),
        nudged_iterations=estimate.stats["nudged"].iterations,
        nudged_residual=estimate.stats["nudged"].residual,
        pattern_changes=check.changes(estimate),
        cg_iterations=reference.cg_iterations,
        cg_residual=reference.cg_residual,
        active_fraction=reference.active_fraction,
        loss=reference.loss,
        **(_own_free_phase(estimate, free) if bf16_sweeps else {}),
        total_rel_error=check.total_error(estimate),
        sweep=rows,
        slopes={variant: _fitted_slope(rows, variant) for variant in ("ep", "cep")} if rows else {},
    )


def _estimator(
    variant: str, beta: float, *, max_iterations: int, order: str, cost: str, tol: float, bf16_sweeps: int
) -> EquilibriumProp:
    """The estimator `variant` at `beta`, every phase relaxed to `tol` within `max_iterations`, unclipped."""
    return EquilibriumProp(
        beta=beta, estimator=variant, free_iterations=max_iterations, nudge_iterations=max_iterations,
        order=order, cost=cost, tol=tol, clip_norm=None, bf16_sweeps=bf16_sweeps,
    )  # fmt: skip


def _network_and_batch(
    arch: str, *, width: float, activation: str, input_size: int, batch_size: int, in_channels: int,
    num_classes: int, seed: int, dev: torch.device, dtype: torch.dtype,
) -> tuple[HopfieldNetwork, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The network, initialised from the global RNG seeded with `seed`, and a random batch (x, y) drawn from
    a generator of its own seeded alike, so the check is the same whatever ran before it."""
    torch.manual_seed(seed)
    net = build_network(
        arch, in_channels=in_channels, num_classes=num_classes, input_size=input_size, width=width,
        activation=activation, alpha_seed=seed,
    ).to(device=dev, dtype=dtype)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_channels, input_size, input_size, generator=generator)
    x = x.to(device=dev, dtype=dtype)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator).to(dev)
    net.check_input(x)
    return net, x, y


@dataclass
class _Check:
    """What every estimate is compared on: the network, the batch, its free fixed point, where the
    estimates' free phase starts (None: from zeros) and the reference gradient."""

    net: HopfieldNetwork
    x: torch.Tensor
    y: torch.Tensor
    free: list[torch.Tensor]
    start: list[torch.Tensor] | None
    reference: dict[str, torch.Tensor]

    def estimate(self, ep: EquilibriumProp) -> GradientEstimate:
        """`ep`'s estimate on the batch, its free phase from `start`."""
        return ep.estimate(self.net, self.x, self.y, self.start)

    def changes(self, estimate: GradientEstimate) -> int:
        """Active-set changes (clip boundaries crossed, max-pool argmaxes flipped) the nudges made."""
        return sum(pattern_changes(self.net, self.x, self.free, s) for s in estimate.nudged_states)

    def tensors(self, estimate: GradientEstimate) -> list[TensorCheck]:
        """The estimate against the reference, tensor by tensor."""
        checks = []
        for name, g in self.reference.items():
            e = estimate.grads[name]
            cosine = torch.nn.functional.cosine_similarity(e.flatten(), g.flatten(), dim=0).item()
            checks.append(
                TensorCheck(name, list(g.shape), cosine, ((e - g).norm() / g.norm()).item(), g.norm().item())
            )
        return checks

    def total_error(self, estimate: GradientEstimate) -> float:
        """‖ĝ − g‖ / ‖g‖ over all parameter tensors together."""
        return relative_error(estimate.grads, self.reference)

    def sweep_row(self, estimator_at: Callable[[str, float], EquilibriumProp], beta: float) -> dict:
        """One point of the β sweep: EP's and CEP's total relative error at `beta` and their active-set
        changes."""
        row: dict = {"beta": beta}
        for variant in ("ep", "cep"):
            est = self.estimate(estimator_at(variant, beta))
            row[variant] = self.total_error(est)
            row[f"{variant}_changes"] = self.changes(est)
        return row


def _own_free_phase(estimate, free) -> dict:
    return {
        "bulk_iterations": estimate.stats["bulk"].iterations,
        "estimate_free_iterations": estimate.stats["free"].iterations,
        "free_state_distance": relative_change(free, estimate.free_states).item(),  # ‖s − s*‖ / ‖s*‖
    }


def _fitted_slope(rows: list[dict], variant: str) -> float | None:
    """Least-squares slope of log(error) against log(β) over the rows where the nudges left the active set
    unchanged (a crossing is a jump, not bias); None with fewer than two such rows."""
    points = [(math.log(r["beta"]), math.log(r[variant])) for r in rows if r[f"{variant}_changes"] == 0]
    if len(points) < 2:
        return None
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    return sum((px - mx) * (py - my) for px, py in points) / sum((px - mx) ** 2 for px, _ in points)


def report_json(report: GradcheckReport) -> str:
    return json.dumps(report.as_dict(), indent=2)
