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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import torch

from .compiled import graphed_phase
from .costs import COSTS, cost_value, one_hot
from .interactions import ConvMaxPoolInteraction, bias_grad
from .networks import HopfieldNetwork
from .orders import ORDERS, Groups, check_omega, update_groups
from .precision import bulk_relax, check_bf16_sweeps
from .relaxation import SOLVERS, check_states, relax_list
from .sweep import Nudge, RelaxStats, States, input_drive

ESTIMATORS = ("cep", "ep")


@dataclass
class GradientEstimate:
    grads: dict[str, torch.Tensor]  # parameter name -> estimate of ∂L/∂θ (after clipping, if any)
    free_states: States  # empty unless estimate(keep_states=True)
    nudged_states: tuple[States, ...]  # (s¹, s²) for CEP, (s²,) for one-sided EP; () unless kept
    stats: dict[str, RelaxStats]
    loss: float  # batch-mean cost at the free state
    grad_norm: float  # global L2 norm before clipping
    output: torch.Tensor = field(repr=False)  # free-phase output state (B, n_out)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time: free, nudged phases, gradient
    # wall time of each nudged relaxation: (−β, +β) when run one after the other, one entry when stacked
    nudged_seconds: list[float] = field(default_factory=list)
    summary: torch.Tensor | None = None  # estimate(summarise=f): the batch mean of f(free states)

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


def hebbian_difference(
    net: HopfieldNetwork,
    x: torch.Tensor,
    s1: States,
    s2: States,
    scale: float,
    *,
    stacked: States | None = None,
    cache: dict | None = None,
) -> dict[str, torch.Tensor]:
    """scale · [∂Φ/∂θ(s¹) − ∂Φ/∂θ(s²)] summed over the batch, for every parameter: the EP estimate.

    The same numbers as `parameter_gradients` on [s¹; s²] with coefficients (+scale, −scale), without its
    concatenated copy of the states. Per coupling, whichever needs less memory: two Hebbian terms on the
    halves (a second weight-sized result), or — when s¹ and s² are the halves of the stacked states
    `stacked` — one term on the stack with its post-synaptic half weighted ±scale (a copy of that layer).
    With `stacked`, the max-pool argmax of each coupling comes from `cache` (the relaxation's, valid for
    the final states) instead of recomputing conv + pool."""
    s1, s2 = [x, *s1], [x, *s2]
    full = [x, *stacked] if stacked is not None else None
    B = x.shape[0]
    grads = {}
    for k, layer in enumerate(net.layers, start=1):
        grads[f"biases.{layer.name}"] = (bias_grad(s1[k]) - bias_grad(s2[k])).mul_(scale)
    for name, edge in net.edges.items():
        pool = isinstance(edge, ConvMaxPoolInteraction)
        extra = {}
        if full is not None and edge.pre > 0:
            if pool:
                extra["indices"] = edge.argmax(full[edge.pre], cache)
                if cache is not None:
                    cache.pop(edge.name, None)  # its last use: free the indices early
            post = full[edge.post]
            if post.numel() <= 2 * edge.weight.numel():
                sign = torch.ones(2 * B, *([1] * (post.dim() - 1)), dtype=post.dtype, device=post.device)
                sign[B:] = -1
                weighted = post * sign.mul_(scale)
                grads[f"edges.{name}.weight"] = edge.weight_grad(full[edge.pre], weighted, **extra)
                continue
        halves = []
        for h, s in enumerate((s1, s2)):
            if pool:
                if edge.pre == 0:  # both halves share x, so one argmax
                    if "indices" not in extra:
                        extra["indices"] = edge.argmax(x)
                    indices = extra["indices"]
                elif "indices" in extra:
                    indices = extra["indices"][h * B : (h + 1) * B]
                else:
                    indices = edge.argmax(s[edge.pre])
                halves.append(edge.weight_grad(s[edge.pre], s[edge.post], indices=indices))
            else:
                halves.append(edge.weight_grad(s[edge.pre], s[edge.post]))
        g1, g2 = halves
        del halves, extra
        grads[f"edges.{name}.weight"] = g1.sub_(g2).mul_(scale)
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


class SettingError(ValueError):
    """A bad `EquilibriumProp` setting: `key` is the field at fault and `reason` what it must be. The message
    is `<subject> <reason>`, the subject being the name the check knows the value by (the field's, or
    `omega` for `nudge_omega`). `related` are the other fields the reason names, so that a caller can spell
    every name its own way (a run's configuration: `ep.<field>`)."""

    def __init__(self, key: str, reason: str, *, subject: str | None = None, related: tuple[str, ...] = ()):
        super().__init__(f"{subject or key} {reason}")
        self.key, self.reason, self.related = key, reason, related


def _delegated(key: str, check: Callable[[Any], Any], value: Any) -> None:
    """`check(value)`, its ValueError (worded `<subject> <reason>`) raised as the SettingError of `key`."""
    try:
        check(value)
    except ValueError as error:
        subject, _, reason = str(error).partition(" ")
        raise SettingError(key, reason, subject=subject) from None


def _count(key: str, value: Any, low: int, *, optional: bool = False) -> None:
    """`value` is an integer >= `low` (or None, if `optional`)."""
    if optional and value is None:
        return
    alternative = " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(key, f"must be an integer{alternative}, got {value!r}")
    if value < low:
        raise SettingError(key, f"must be >= {low}{alternative}, got {value!r}")


def _choices(values: Iterable[str]) -> dict[str, tuple[str, ...]]:
    return {"choices": tuple(values)}


@dataclass(frozen=True, kw_only=True)
class EquilibriumProp:
    """An EP gradient estimator; every field defaults to the authors' training setting (`ep.recipe:
    authors`), the speed and memory options to what reproduces it exactly. A run's `ep.*` keys are these
    fields (ep_core.training.config builds them from here), so each setting's default, valid choices
    (`metadata["choices"]`) and range (`__post_init__`) are stated here once."""

    estimator: str = field(default="cep", metadata=_choices(ESTIMATORS))  # cep: nudges (−β, +β); ep: (0, +β)
    beta: float = 0.1
    free_iterations: int = 120  # 0: the start states given to `estimate` already are the free fixed point
    nudge_iterations: int = 50
    order: str = field(default="even_odd", metadata=_choices(ORDERS))  # update order of a sweep (orders.py)
    # over-relaxation of every layer update, s <- clip(s + omega (u - s)): 1 = the authors' plain sweeps;
    # 0 < omega < 2, and > 1 needs an order that is a proper colouring (coloring; even_odd on VGG5)
    omega: float = 1.0
    nudge_omega: float | None = None  # the nudged phases' own over-relaxation (None: `omega`)
    cost: str = field(default="mse", metadata=_choices(COSTS))
    clip_norm: float | None = 1.0  # the authors clip the global gradient norm at 1.0; None disables
    # early stop of each phase at this relative residual (nudged phases: of their displacement from the free
    # state); changes results
    tol: float | None = None
    nudge_tol: float | None = None  # the nudged phases' own tolerance (None: `tol`)
    batch_phases: bool = True  # run the −β and +β phases of CEP as one stacked batch (same result)
    # Speed (docs/benchmarks.md). solver: fixed_point = the authors' plain sweeps; anderson = Anderson mixing
    # of the free phase's sweeps (same fixed point, fewer sweeps to a given tol).
    solver: str = field(default="fixed_point", metadata=_choices(SOLVERS))
    # nudged phases: fixed_point (plain sweeps) or anderson (the ±β copies of an example share their mixing)
    nudge_solver: str = field(default="fixed_point", metadata=_choices(SOLVERS))
    anderson_memory: int = 5  # iterates the Anderson solver mixes
    compile: bool = False  # torch.compile the sweeps (compiled.py; compiles once per phase shape)
    cuda_graphs: bool = False  # on CUDA, each phase replays as one CUDA graph (needs fixed-length phases)
    chunk_size: int | None = None  # relax at most this many examples at once (memory); None: the batch
    # this many of the free phase's first sweeps (fewer if tol stops them) in bf16 on a bf16 copy of the
    # network, the rest of the phase in full precision (precision.py); 0: off
    bf16_sweeps: int = 0

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_numbers()
        self._check_combinations()

    def _check_choices(self) -> None:
        for setting in fields(self):
            allowed, value = setting.metadata.get("choices"), getattr(self, setting.name)
            if allowed is not None and value not in allowed:
                raise SettingError(
                    setting.name, f"{value!r} is not allowed; valid choices: {', '.join(allowed)}"
                )

    def _check_numbers(self) -> None:
        beta = self.beta
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
            raise SettingError("beta", f"must be finite, got {beta!r}")
        if self.estimator == "cep" and beta <= 0:
            raise SettingError("beta", f"must be > 0 (centered EP nudges with -beta and +beta), got {beta}")
        if self.estimator == "ep" and beta == 0:
            raise SettingError("beta", f"must be != 0 (one-sided EP nudges with 0 and +beta), got {beta}")
        _count("free_iterations", self.free_iterations, 0)
        _count("nudge_iterations", self.nudge_iterations, 1)  # 0: no nudge, so no gradient
        for key in ("omega", "nudge_omega"):
            if getattr(self, key) is not None:
                _delegated(key, check_omega, getattr(self, key))
        for key in ("clip_norm", "tol", "nudge_tol"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise SettingError(key, f"must be positive or None, got {value!r}")
        _count("anderson_memory", self.anderson_memory, 1)
        _count("chunk_size", self.chunk_size, 1, optional=True)
        _delegated("bf16_sweeps", check_bf16_sweeps, self.bf16_sweeps)

    def _check_combinations(self) -> None:
        if self.nudge_solver == "anderson" and self.estimator == "cep" and not self.batch_phases:
            raise SettingError(
                "nudge_solver",
                "anderson with centered EP needs batch_phases (the -beta and +beta copies share one set of "
                "mixing coefficients, so they must relax together)",
                related=("batch_phases",),
            )
        adaptive = self.tol is not None or self.nudge_tol is not None or self.solver != "fixed_point"
        if self.cuda_graphs and adaptive:
            raise SettingError(
                "cuda_graphs",
                "needs fixed-length phases (tol and nudge_tol None, solver fixed_point)",
                related=("tol", "nudge_tol", "solver"),
            )
        if self.bf16_sweeps and self.cuda_graphs:
            raise SettingError(
                "bf16_sweeps",
                "not with cuda_graphs (graphed phases are all one precision)",
                related=("cuda_graphs",),
            )

    @property
    def nudges(self) -> tuple[float, float]:
        return (-self.beta, self.beta) if self.estimator == "cep" else (0.0, self.beta)

    def graphed(self, device: torch.device) -> bool:
        """Whether phases run as captured CUDA graphs on `device` (cuda_graphs implies fixed-length ones)."""
        return self.cuda_graphs and device.type == "cuda"

    def _phase(
        self,
        net: HopfieldNetwork,
        x: torch.Tensor,
        start: States | None,
        drive: list[torch.Tensor],
        groups,
        iterations: int,
        target: torch.Tensor | None = None,
        beta: float | torch.Tensor | None = None,
        copies: int = 1,
        consume: bool = False,
    ) -> tuple[States, RelaxStats, dict | None]:
        """One phase from `start` (B-example states, repeated `copies` times; zeros if None). With
        `consume`, the list `start` is emptied once the phase holds its tensors, so a state no one else
        references is freed as the relaxation replaces it. Returns the states, their statistics and the
        max-pool cache valid for them (None from a graphed phase)."""
        n = x.shape[0] * copies
        nudge = None if target is None else Nudge(target, beta, self.cost)
        solver = self.solver if nudge is None else self.nudge_solver
        omega = self.omega if nudge is None or self.nudge_omega is None else self.nudge_omega
        if self.graphed(x.device) and iterations > 0 and solver == "fixed_point":
            phase = graphed_phase(
                net, x, copies=copies, iterations=iterations, groups=groups, nudged=target is not None,
                cost=self.cost, compile=self.compile, omega=omega,
            )  # fmt: skip
            if target is not None and not isinstance(beta, torch.Tensor):
                beta = x.new_full((n, 1), beta)
            states, stats = phase.run(x, start, target, beta)
            return states, stats, None
        if start is None:
            s = [x, *net.zero_states(n, device=x.device, dtype=x.dtype)]
        else:
            s = [x, *(t if copies == 1 else torch.cat([t] * copies) for t in start)]
        # With tol, a nudged phase stops on its displacement from the start (relax_list's `reference`).
        tol = self.tol if nudge is None or self.nudge_tol is None else self.nudge_tol
        reference = start if nudge is not None and tol is not None else None
        if consume and start is not None and reference is None:
            start.clear()
        # Nudged phases are plain sweeps unless nudge_solver is "anderson". Per-example Anderson mixing
        # breaks the ±β symmetry the centered difference (s₊ − s₋)/2β relies on to cancel the truncation
        # error (on digits training went to chance), so the stacked ±β copies of an example solve one
        # least-squares problem and share its coefficients and restarts (`pairs`).
        cache: dict = {}
        s, stats = relax_list(
            net, s, iterations=iterations, groups=groups, nudge=nudge, tol=tol, drive=drive,
            solver=solver, memory=self.anderson_memory, cache=cache, compile=self.compile,
            reference=reference, pairs=nudge is not None and copies == 2, omega=omega,
        )  # fmt: skip
        return s[1:], stats, cache

    def estimate(
        self,
        net: HopfieldNetwork,
        x: torch.Tensor,
        y: torch.Tensor,
        states: States | None = None,
        *,
        keep_states: bool = True,
        summarise: Callable[[States], torch.Tensor] | None = None,
        carry: States | None = None,
    ) -> GradientEstimate:
        """Free phase from `states` (zeros if None; pass the previous batch's states to warm-start as the
        authors do), the nudged phases from the free state, and the gradient estimate.

        The batch relaxes in chunks of `chunk_size` examples, one after the other: the Hebbian terms add
        up over chunks, so the estimate is the whole batch's (the same to rounding) while only one chunk's
        states exist at a time. `keep_states=False` keeps no state past its chunk (training: memory);
        `summarise` is then how the caller sees the free states (the batch mean of its tensor result).
        `carry` (full-batch tensors, which may be `states` themselves) receives the last nudged state of
        every example in place, once that example's free phase no longer needs its start: the warm start
        for the next batch without a second copy."""
        net.check_input(x)
        if states is not None:
            check_states(net, x, states)
        if carry is not None:
            check_states(net, x, carry)
        target = one_hot(y, net.num_classes, x.dtype)
        groups = update_groups(net, self.order)
        B = x.shape[0]
        size = self.chunk_size or B
        b1, b2 = self.nudges
        scale = 1.0 / ((b2 - b1) * B)
        sums = _ChunkSums(B)
        for lo in range(0, B, size):
            hi = min(lo + size, B)
            start = None if states is None else [t[lo:hi] for t in states]
            part = self._chunk(net, x[lo:hi], target[lo:hi], start, groups, scale, keep_states, summarise)
            if carry is not None:
                for buffer, value in zip(carry, part["last"], strict=True):
                    buffer[lo:hi].copy_(value)
            sums.add(part, (hi - lo) / B, keep_states)
            del part
        return sums.estimate(self.clip_norm, x.device)

    def _chunk(self, net, x, target, start, groups, scale, keep_states, summarise) -> dict:
        """Free phase, nudged phases and Hebbian terms of one chunk (`estimate`'s loop body)."""
        t0 = device_clock(x.device)
        drive = input_drive(net, x)
        free, stats = self._free_phase(net, x, start, drive, groups)
        del start
        t1 = device_clock(x.device)
        out = {
            "output": free[-1],
            "loss": cost_value(self.cost, free[-1], target).sum().item(),
            "summary": summarise(free) if summarise is not None else None,
            "stats": stats,
        }
        chunk = _Chunk(net, x, target, drive, groups, scale)
        # Once the nudged phases hold the free state, nothing else needs it unless it is kept, is the
        # one-sided estimate's s¹, or is the reference of a tol-stopped nudged phase.
        one_sided = self.nudges[0] == 0.0
        release = not keep_states and not one_sided
        if one_sided:
            nudged = self._one_sided(chunk, free, t1)
        elif self.batch_phases:
            nudged = self._stacked(chunk, free, t1, release)
        else:
            nudged = self._sequential(chunk, free, t1, release, keep_states)
        out["stats"]["nudged"] = nudged.stats
        out["nudged_seconds"] = nudged.seconds
        end = nudged.end
        out["seconds"] = {"free": t1 - t0, "nudged": end - t1, "gradient": device_clock(x.device) - end}
        out["grads"] = nudged.grads
        out["last"] = nudged.last
        out["free"] = free if keep_states else []
        out["nudged"] = nudged.states if keep_states else ()
        return out

    def _free_phase(
        self, net: HopfieldNetwork, x: torch.Tensor, start: States | None, drive: list[torch.Tensor], groups
    ) -> tuple[States, dict[str, RelaxStats]]:
        """The free phase from `start` (emptied as the phase takes it over): its first `bf16_sweeps` sweeps
        in bf16 (the bulk), the rest of it (the polish) within the same cap. Returns the free states and
        the statistics of the phase ("free", counting every sweep it ran) and of its bulk ("bulk")."""
        polish, bulk = self.free_iterations, None
        if self.bf16_sweeps and polish:
            sweeps, omega = min(self.bf16_sweeps, polish), self.omega
            start, bulk = bulk_relax(net, x, start, sweeps=sweeps, groups=groups, tol=self.tol, omega=omega)
            polish -= bulk.iterations
        free, free_stats, _ = self._phase(net, x, start, drive, groups, polish, consume=True)
        if bulk is None:
            return free, {"free": free_stats}
        residual = free_stats.residual if polish else bulk.residual
        return free, {"free": RelaxStats(bulk.iterations + free_stats.iterations, residual), "bulk": bulk}

    def _one_sided(self, c: _Chunk, free: States, t1: float) -> _Nudged:
        """One-sided EP: the +β phase from the free state, which is s¹; its Hebbian difference."""
        n = self.nudge_iterations
        s2, stats, _ = self._phase(c.net, c.x, free, c.drive, c.groups, n, c.target, self.beta)
        t2 = device_clock(c.x.device)
        with torch.no_grad():
            grads = hebbian_difference(c.net, c.x, free, s2, c.scale)
        return _Nudged(grads, (s2,), s2, stats, [t2 - t1], t2)

    def _stacked(self, c: _Chunk, free: States, t1: float, release: bool) -> _Nudged:
        """Centered EP with the −β and +β phases as one stacked batch; their Hebbian difference. The stacked
        start [free; free] is handed to the relaxation, which frees each old layer as it replaces it
        (`release`); the input drive of x is broadcast over both copies, never repeated."""
        b1, b2 = self.nudges
        B = c.x.shape[0]
        betas = torch.cat([c.x.new_full((B, 1), b1), c.x.new_full((B, 1), b2)])
        n, targets = self.nudge_iterations, torch.cat([c.target, c.target])
        stacked, stats, cache = self._phase(
            c.net, c.x, free, c.drive, c.groups, n, targets, betas, copies=2, consume=release
        )
        t2 = device_clock(c.x.device)
        s1, s2 = [t[:B] for t in stacked], [t[B:] for t in stacked]
        with torch.no_grad():
            grads = hebbian_difference(c.net, c.x, s1, s2, c.scale, stacked=stacked, cache=cache)
        return _Nudged(grads, (s1, s2), s2, stats, [t2 - t1], t2)

    def _sequential(self, c: _Chunk, free: States, t1: float, release: bool, keep_states: bool) -> _Nudged:
        """Centered EP with one phase after the other, each phase's Hebbian term taken as it ends: s¹ is
        gone before the +β phase starts, and the +β phase consumes the free state (`release`)."""
        b1, b2 = self.nudges
        n, B = self.nudge_iterations, c.x.shape[0]
        s1, st1, _ = self._phase(c.net, c.x, free, c.drive, c.groups, n, c.target, b1)
        tm = device_clock(c.x.device)
        with torch.no_grad():
            grads = parameter_gradients(c.net, c.x, s1, c.x.new_full((B,), c.scale))
        kept = (s1,) if keep_states else ()
        del s1  # gone before the +β phase allocates its states
        tg = device_clock(c.x.device)
        s2, st2, _ = self._phase(c.net, c.x, free, c.drive, c.groups, n, c.target, b2, consume=release)
        t2 = device_clock(c.x.device)
        with torch.no_grad():
            for name, g in parameter_gradients(c.net, c.x, s2, c.x.new_full((B,), c.scale)).items():
                grads[name].sub_(g)
        stats = RelaxStats(max(st1.iterations, st2.iterations), max(st1.residual, st2.residual))
        # the first Hebbian term counts as gradient time, not nudged
        return _Nudged(grads, (*kept, s2), s2, stats, [tm - t1, t2 - tg], t2 - (tg - tm))


class _Chunk(NamedTuple):
    """What the phases of one chunk share."""

    net: HopfieldNetwork
    x: torch.Tensor
    target: torch.Tensor
    drive: list[torch.Tensor]
    groups: Groups
    scale: float  # the Hebbian terms' coefficient 1 / ((β₂ − β₁) · B), B the whole batch


class _Nudged(NamedTuple):
    """The nudged phases of one chunk."""

    grads: dict[str, torch.Tensor]  # their Hebbian difference: the chunk's share of the estimate
    states: tuple[States, ...]  # (s¹, s²), or (s²,) for one-sided EP and one-after-the-other without keep
    last: States  # s², the warm start of the next batch
    stats: RelaxStats
    seconds: list[float]  # wall time of each nudged relaxation
    end: float  # the clock when the nudged phases ended, less the Hebbian time between them


@dataclass
class _ChunkSums:
    """The estimate of a batch as its chunks add up."""

    batch: int
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"free": 0.0, "nudged": 0.0, "gradient": 0.0})
    nudged_seconds: list[float] = field(default_factory=list)
    stats: dict[str, list[RelaxStats]] = field(default_factory=dict)
    kept: list[tuple[States, tuple[States, ...]]] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    loss: float = 0.0
    summary: torch.Tensor | None = None

    def add(self, part: dict, weight: float, keep_states: bool) -> None:
        """Add one chunk (`_chunk`'s result, `weight` its share of the batch), dropping each of its
        gradients as it is added."""
        for name, g in part.pop("grads").items():
            self.grads[name] = self.grads[name].add_(g) if name in self.grads else g
        for name, value in part.pop("seconds").items():
            self.seconds[name] += value
        nudged_seconds = part.pop("nudged_seconds")
        if self.nudged_seconds:
            nudged_seconds = [a + b for a, b in zip(self.nudged_seconds, nudged_seconds, strict=True)]
        self.nudged_seconds = nudged_seconds
        for name, value in part.pop("stats").items():
            self.stats.setdefault(name, []).append(value)
        self.outputs.append(part["output"])
        self.loss += part["loss"]
        if part["summary"] is not None:
            weighted = part["summary"] * weight
            self.summary = weighted if self.summary is None else self.summary + weighted
        if keep_states:
            self.kept.append((part["free"], part["nudged"]))

    def estimate(self, clip_norm: float | None, device: torch.device) -> GradientEstimate:
        """The batch's estimate, its gradient clipped to `clip_norm`."""
        t0 = device_clock(device)
        with torch.no_grad():
            grad_norm = clip_global_norm(self.grads, clip_norm)
        self.seconds["gradient"] += device_clock(device) - t0
        free_states, nudged_states = _concatenate(self.kept)
        return GradientEstimate(
            self.grads, free_states, nudged_states, {k: _worst(v) for k, v in self.stats.items()},
            self.loss / self.batch, grad_norm, torch.cat(self.outputs), self.seconds, self.nudged_seconds,
            self.summary,
        )  # fmt: skip


def _worst(stats: list[RelaxStats]) -> RelaxStats:
    """One chunk's statistics, or the most iterations and the largest residual over chunks."""
    return (
        stats[0]
        if len(stats) == 1
        else RelaxStats(max(s.iterations for s in stats), max(s.residual for s in stats))
    )


def _concatenate(kept: list[tuple[States, tuple[States, ...]]]) -> tuple[States, tuple[States, ...]]:
    if not kept:
        return [], ()
    if len(kept) == 1:
        return kept[0]
    free = [torch.cat(layer) for layer in zip(*(f for f, _ in kept), strict=True)]
    nudged = tuple(
        [torch.cat(layer) for layer in zip(*(n[i] for _, n in kept), strict=True)]
        for i in range(len(kept[0][1]))
    )
    return free, nudged
