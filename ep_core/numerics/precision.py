"""Mixed precision in the free phase: its first sweeps in bfloat16, the rest in the run's precision.

The EP estimate (s₊ − s₋)/2β is a difference of two nearly equal states, and bfloat16 keeps 8 significant
bits: a relaxation run wholly in bf16 gives the wrong gradient at every β (docs/benchmarks.md). What bf16
can carry is the bulk of the free phase, far from the fixed point, where a sweep changes the states by much
more than bf16's rounding. `bulk_relax` runs the first sweeps on a bf16 twin of the network (its parameters
refreshed from the full-precision ones at every call) and hands the states back in the run's precision;
the free phase then goes on there with its own solver, tolerance and cap (the polish), so it ends at the
full-precision fixed point, and the nudged phases and the Hebbian terms never see bf16.

The bulk is a fixed number of sweeps (stopped early only by the phase's own tolerance), not a test of
bf16's progress: with its rounded weights the twin has its own fixed point, which on a slowly converging
network lies far from the float32 one (an initialised Hopfield-ResNet13 at 1/16 width: 0.11 of the states'
norm), and its residual stalls there at no level one could name in advance. So the bulk pays from cold
starts far from the fixed point, and a warm start already closer than the twin's fixed point should not
use it. `ep-core gradcheck --bf16-sweeps N` checks the gradient of this mode against the reference.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import torch

from .networks import HopfieldNetwork
from .orders import Groups
from .relaxation import relax_list
from .sweep import RelaxStats, States, input_drive

LOW_PRECISION = torch.bfloat16

_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def low_precision_twin(net: HopfieldNetwork) -> HopfieldNetwork:
    """A bf16 copy of `net` with its current parameters and buffers: built once per network (and device),
    then refreshed in place, which costs one cast of the parameters per call."""
    reference = next(net.parameters())
    twin = _TWINS.get(net)
    if twin is None or next(twin.parameters()).device != reference.device:
        twin = copy.deepcopy(net).to(LOW_PRECISION)
        for p in twin.parameters():
            p.requires_grad_(False)
            p.grad = None
        _TWINS[net] = twin
        return twin
    with torch.no_grad():
        for low, full in zip(twin.parameters(), net.parameters(), strict=True):
            low.copy_(full)
        for low, full in zip(twin.buffers(), net.buffers(), strict=True):
            low.copy_(full)
    return twin


def check_bf16_sweeps(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"bf16_sweeps must be a non-negative integer, got {value!r}")
    return value


def bulk_relax(
    net: HopfieldNetwork,
    x: torch.Tensor,
    start: Sequence[torch.Tensor] | None,
    *,
    sweeps: int,
    groups: Groups,
    tol: float | None = None,
    omega: float = 1.0,
) -> tuple[States, RelaxStats]:
    """`sweeps` plain free sweeps in bf16 from `start` (zeros if None),
    fewer if a sweep changes the states by ≤ `tol` of their norm. Returns the states in x's dtype and the
    bulk's statistics (its residual is bf16's, relative to the states). Plain sweeps, not Anderson: a
    least-squares mix in 8 significant bits would cost more than it saves."""
    twin = low_precision_twin(net)
    low_x = x.to(LOW_PRECISION)
    if start is None:
        s = [low_x, *twin.zero_states(x.shape[0], device=x.device, dtype=LOW_PRECISION)]
    else:
        s = [low_x, *(t.to(LOW_PRECISION) for t in start)]
    s, stats = relax_list(
        twin, s, iterations=sweeps, groups=groups, nudge=None, tol=tol, drive=input_drive(twin, low_x),
        omega=omega,
    )  # fmt: skip
    return [t.to(x.dtype) for t in s[1:]], stats
