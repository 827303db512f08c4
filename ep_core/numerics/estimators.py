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
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .compiled import graphed_phase
from .costs import check_cost, cost_value, one_hot
from .interactions import ConvMaxPoolInteraction, bias_grad
from .networks import HopfieldNetwork
from .orders import check_omega, check_order, update_groups
from .precision import bulk_relax, check_bf16_sweeps
from .relaxation import check_solver, check_states, relax_list
from .sweep import Nudge, RelaxStats, States, input_drive

VARIANTS = ("cep", "ep")


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


@dataclass(frozen=True)
class EquilibriumProp:
    """An EP gradient estimator; every field defaults to the authors' training setting (`ep.recipe:
    authors`), the speed and memory options to what reproduces it exactly."""

    beta: float = 0.1
    variant: str = "cep"  # "cep": nudges (−β, +β); "ep": one-sided (0, +β)
    free_iterations: int = 120
    nudge_iterations: int = 50
    order: str = "even_odd"
    omega: float = 1.0  # over-relaxation of every layer update (SOR); > 1 needs a proper colouring order
    nudge_omega: float | None = None  # the nudged phases' own over-relaxation (None: `omega`)
    cost: str = "mse"
    tol: float | None = None  # early stop at this relative residual (nudged phases: of their displacement)
    nudge_tol: float | None = None  # the nudged phases' own tolerance (None: `tol`)
    clip_norm: float | None = 1.0  # the authors clip the global gradient norm at 1.0; None disables
    batch_phases: bool = True  # run the −β and +β phases of CEP as one stacked batch
    solver: str = "fixed_point"  # free phase; "anderson": Anderson-accelerated (same fixed point)
    nudge_solver: str = "fixed_point"  # nudged phases; "anderson": the ±β copies share their mixing
    anderson_memory: int = 5  # iterates the Anderson solver mixes
    compile: bool = False  # run the sweeps through torch.compile (ep_core.numerics.compiled)
    cuda_graphs: bool = False  # on CUDA, capture each fixed-length phase as one CUDA graph
    chunk_size: int | None = None  # relax at most this many examples at once (memory); None: the batch
    bf16_sweeps: int = 0  # the free phase's first sweeps in bf16, the rest in full precision (precision.py)

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
        check_omega(self.omega)
        if self.nudge_omega is not None:
            check_omega(self.nudge_omega)
        check_solver(self.solver)
        check_solver(self.nudge_solver)
        if self.nudge_solver == "anderson" and self.variant == "cep" and not self.batch_phases:
            raise ValueError(
                "nudge_solver 'anderson' with centered EP needs batch_phases (the -beta and +beta copies "
                "share one set of mixing coefficients, so they must relax together)"
            )
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm!r}")
        if not isinstance(self.anderson_memory, int) or self.anderson_memory < 1:
            raise ValueError(f"anderson_memory must be a positive integer, got {self.anderson_memory!r}")
        if self.chunk_size is not None and not (isinstance(self.chunk_size, int) and self.chunk_size >= 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {self.chunk_size!r}")
        check_bf16_sweeps(self.bf16_sweeps)
        if self.bf16_sweeps and self.cuda_graphs:
            raise ValueError("bf16_sweeps: not with cuda_graphs (graphed phases are all one precision)")

    @property
    def nudges(self) -> tuple[float, float]:
        return (-self.beta, self.beta) if self.variant == "cep" else (0.0, self.beta)

    def graphed(self, device: torch.device) -> bool:
        """Whether phases run as captured CUDA graphs on `device`."""
        return (
            self.cuda_graphs
            and device.type == "cuda"
            and self.tol is None
            and self.nudge_tol is None
            and self.solver == "fixed_point"
        )

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
        total: dict[str, torch.Tensor] = {}
        seconds = {"free": 0.0, "nudged": 0.0, "gradient": 0.0}
        phase_seconds: list[float] = []
        stats: dict[str, list[RelaxStats]] = {}
        kept: list[tuple[States, tuple[States, ...]]] = []
        outputs, loss, summary = [], 0.0, None
        for lo in range(0, B, size):
            hi = min(lo + size, B)
            start = None if states is None else [t[lo:hi] for t in states]
            part = self._chunk(net, x[lo:hi], target[lo:hi], start, groups, scale, keep_states, summarise)
            for name, g in part.pop("grads").items():
                total[name] = total[name].add_(g) if name in total else g
            for name, value in part.pop("seconds").items():
                seconds[name] += value
            nudged_seconds = part.pop("nudged_seconds")
            if phase_seconds:
                nudged_seconds = [a + b for a, b in zip(phase_seconds, nudged_seconds, strict=True)]
            phase_seconds = nudged_seconds
            for name, value in part.pop("stats").items():
                stats.setdefault(name, []).append(value)
            if carry is not None:
                for buffer, value in zip(carry, part["last"], strict=True):
                    buffer[lo:hi].copy_(value)
            outputs.append(part["output"])
            loss += part["loss"]
            if part["summary"] is not None:
                weighted = part["summary"] * ((hi - lo) / B)
                summary = weighted if summary is None else summary + weighted
            if keep_states:
                kept.append((part["free"], part["nudged"]))
            del part
        t0 = device_clock(x.device)
        with torch.no_grad():
            grad_norm = clip_global_norm(total, self.clip_norm)
        seconds["gradient"] += device_clock(x.device) - t0
        free_states, nudged_states = _concatenate(kept)
        return GradientEstimate(
            total, free_states, nudged_states, {k: _worst(v) for k, v in stats.items()}, loss / B,
            grad_norm, torch.cat(outputs), seconds, phase_seconds, summary,
        )  # fmt: skip

    def _chunk(self, net, x, target, start, groups, scale, keep_states, summarise) -> dict:
        """Free phase, nudged phases and Hebbian terms of one chunk (`estimate`'s loop body)."""
        t0 = device_clock(x.device)
        drive = input_drive(net, x)
        polish, bulk = self.free_iterations, None
        if self.bf16_sweeps and polish:
            # The bulk of the free phase in bf16; the rest of it (the polish) within the same cap.
            sweeps, omega = min(self.bf16_sweeps, polish), self.omega
            start, bulk = bulk_relax(net, x, start, sweeps=sweeps, groups=groups, tol=self.tol, omega=omega)
            polish -= bulk.iterations
        free, free_stats, _ = self._phase(net, x, start, drive, groups, polish, consume=True)
        del start
        if bulk is not None:  # the free phase's statistics count every sweep it ran
            residual = free_stats.residual if polish else bulk.residual
            free_stats = RelaxStats(bulk.iterations + free_stats.iterations, residual)
        t1 = device_clock(x.device)
        out = {
            "output": free[-1],
            "loss": cost_value(self.cost, free[-1], target).sum().item(),
            "summary": summarise(free) if summarise is not None else None,
            "stats": {"free": free_stats, **({} if bulk is None else {"bulk": bulk})},
        }
        b1, b2 = self.nudges
        n, B = self.nudge_iterations, x.shape[0]
        # Once the nudged phases hold the free state, nothing else needs it unless it is kept, is the
        # one-sided estimate's s¹, or is the reference of a tol-stopped nudged phase.
        release = not keep_states and b1 != 0.0
        if b1 == 0.0:
            s2, out["stats"]["nudged"], cache = self._phase(net, x, free, drive, groups, n, target, b2)
            t2 = device_clock(x.device)
            with torch.no_grad():
                grads = hebbian_difference(net, x, free, s2, scale)
            nudged = (s2,)
            out["nudged_seconds"] = [t2 - t1]
        elif self.batch_phases:
            # The stacked start [free; free] is handed to the relaxation, which frees each old layer as it
            # replaces it; the input drive of x is broadcast over both copies, never repeated.
            betas = torch.cat([x.new_full((B, 1), b1), x.new_full((B, 1), b2)])
            stacked, out["stats"]["nudged"], cache = self._phase(
                net, x, free, drive, groups, n, torch.cat([target, target]), betas, copies=2, consume=release
            )  # fmt: skip
            t2 = device_clock(x.device)
            s1, s2 = [t[:B] for t in stacked], [t[B:] for t in stacked]
            with torch.no_grad():
                grads = hebbian_difference(net, x, s1, s2, scale, stacked=stacked, cache=cache)
            nudged = (s1, s2)
            out["nudged_seconds"] = [t2 - t1]
        else:
            # One phase after the other, each phase's Hebbian term taken as it ends: s¹ is gone before the
            # +β phase starts, and the +β phase consumes the free state.
            s1, st1, _ = self._phase(net, x, free, drive, groups, n, target, b1)
            tm = device_clock(x.device)
            with torch.no_grad():
                grads = parameter_gradients(net, x, s1, x.new_full((B,), scale))
            nudged = (s1,) if keep_states else ()
            del s1  # gone before the +β phase allocates its states
            tg = device_clock(x.device)
            s2, st2, _ = self._phase(net, x, free, drive, groups, n, target, b2, consume=release)
            t2 = device_clock(x.device)
            with torch.no_grad():
                for name, g in parameter_gradients(net, x, s2, x.new_full((B,), scale)).items():
                    grads[name].sub_(g)
            out["stats"]["nudged"] = RelaxStats(
                max(st1.iterations, st2.iterations), max(st1.residual, st2.residual)
            )
            nudged = (*nudged, s2)
            out["nudged_seconds"] = [tm - t1, t2 - tg]
            t2 = t2 - (tg - tm)  # the first Hebbian term counts as gradient time
        out["seconds"] = {"free": t1 - t0, "nudged": t2 - t1, "gradient": device_clock(x.device) - t2}
        out["grads"] = grads
        out["last"] = s2
        out["free"] = free if keep_states else []
        out["nudged"] = nudged if keep_states else ()
        return out


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
