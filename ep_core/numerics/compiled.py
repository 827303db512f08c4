"""Fast paths for fixed-length phases: `torch.compile`d sweeps and whole phases captured as CUDA graphs.

* `compiled_sweep()` is `sweep.sweep` through `torch.compile` (inductor): on a GPU its pointwise
  glue (accumulation, bias, clamp, nudge) fuses into a few kernels; on a CPU into one C++ loop per layer.
  `relax_list(compile=True)` runs every sweep of a phase but the first through it (the first sweep meets
  an empty max-pool cache; from the second on the guards are stable, so a phase shape compiles once).
* `GraphedPhase` runs one phase of a fixed number of sweeps on static buffers. On CUDA the whole phase is
  captured once as a CUDA graph and replayed: no per-iteration Python dispatch or kernel-launch cost,
  one device synchronisation per phase (its residual). Anywhere else the same body runs eagerly — which
  is how the CPU test suite checks it against `relax` (the capture itself needs a GPU).

A captured graph reads the parameters through their storage: it stays valid while the optimizer updates
them in place (every torch optimizer does) and is re-captured if a parameter's storage moves (`.to()`,
`load_state_dict` of a new tensor does not move it). Early stopping (`tol`) needs a synchronisation per
sweep and cannot live in a graph: those phases run eagerly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from .costs import check_cost
from .networks import HopfieldNetwork
from .orders import Groups
from .sweep import Nudge, RelaxStats, independent_groups, input_drive, relative_residual, sweep

_COMPILED: Callable | None = None


def compiled_sweep() -> Callable:
    """`sweep.sweep` compiled once per process (dynamo caches one graph per network and shape)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(sweep, dynamic=False)
    return _COMPILED


class GraphedPhase:
    """One phase shape — (batch of x, copies of it stacked in the states, nudged or free, iterations) —
    on static buffers; `run` copies the inputs in, runs (replays) the phase, and returns fresh outputs."""

    def __init__(
        self,
        net: HopfieldNetwork,
        x: torch.Tensor,
        *,
        copies: int,
        iterations: int,
        groups: Groups,
        nudged: bool,
        cost: str = "mse",
        compile: bool = False,
        capture: bool | None = None,
        omega: float = 1.0,
    ):
        if iterations < 1:
            raise ValueError(f"a graphed phase needs at least one iteration, got {iterations}")
        self.net, self.groups, self.iterations, self.cost = net, groups, iterations, check_cost(cost)
        self.compile, self.omega = compile, omega
        self.capture = x.device.type == "cuda" if capture is None else capture
        B = x.shape[0] * copies
        self.x = torch.empty_like(x)
        self.states = [torch.zeros(B, *layer.shape, device=x.device, dtype=x.dtype) for layer in net.layers]
        self.target = torch.zeros(B, net.num_classes, device=x.device, dtype=x.dtype) if nudged else None
        self.beta = torch.zeros(B, 1, device=x.device, dtype=x.dtype) if nudged else None
        self.out = [torch.empty_like(t) for t in self.states]
        self.measured = torch.zeros(2, device=x.device, dtype=x.dtype)
        self.alphas = net.alphas.tolist()
        self.independent = independent_groups(net, groups)
        self.storage = self._storage()
        self.graph = None

    def _storage(self) -> tuple[int, ...]:
        return tuple(p.data_ptr() for p in self.net.parameters())

    def _body(self) -> None:
        """The phase, reading only static inputs and writing only static outputs."""
        net = self.net
        drive = input_drive(net, self.x)
        s = [self.x, *self.states]
        nudge = Nudge(self.target, self.beta, self.cost) if self.target is not None else None
        fast = compiled_sweep() if self.compile else None
        cache: dict = {}
        measured = None
        for i in range(self.iterations):
            last = i == self.iterations - 1
            if fast is not None and i > 0:
                measured = fast(
                    net, s, self.groups, drive, self.alphas, nudge, cache, self.independent, True, self.omega
                )
            else:
                measured = sweep(
                    net, s, self.groups, drive, self.alphas, nudge, cache, self.independent, last, self.omega
                )
        for out, value in zip(self.out, s[1:], strict=True):
            out.copy_(value)
        self.measured.copy_(torch.stack(measured))

    def _capture(self) -> None:
        # Warm up on a side stream (cuDNN autotuning, lazy initialisation, compilation), then capture.
        with torch.cuda.device(self.x.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
        self.graph, self.storage = graph, self._storage()

    def run(
        self,
        x: torch.Tensor,
        states: list[torch.Tensor] | None,
        target: torch.Tensor | None = None,
        beta: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], RelaxStats]:
        """`states`: the start (a list of B-example tensors, repeated over the copies; None for zeros);
        `target` and `beta`: the stacked (copies·B) nudge, for a nudged phase."""
        with torch.no_grad():
            self.x.copy_(x)
            copies = self.states[0].shape[0] // x.shape[0]
            for buffer, start in zip(self.states, states or [None] * len(self.states), strict=True):
                if start is None:
                    buffer.zero_()
                else:
                    buffer.view(copies, *start.shape).copy_(start)
            if self.target is not None:
                self.target.copy_(target)
                self.beta.copy_(beta)
            if not self.capture:
                self._body()
            else:
                if self.graph is None or self.storage != self._storage():
                    self._capture()
                self.graph.replay()
            residual = relative_residual((self.measured[0], self.measured[1]), self.x.dtype)
            return [t.clone() for t in self.out], RelaxStats(self.iterations, residual)


_PHASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def graphed_phase(net: HopfieldNetwork, x: torch.Tensor, **key) -> GraphedPhase:
    """The cached `GraphedPhase` of `net` for this input shape and phase settings (created on first use)."""
    phases = _PHASES.setdefault(net, {})
    groups = key["groups"]
    k = (
        tuple(x.shape),
        x.dtype,
        x.device,
        tuple(map(tuple, groups)),
        *sorted((n, v) for n, v in key.items() if n != "groups"),
    )
    if k not in phases:
        phases[k] = GraphedPhase(net, x, **key)
    return phases[k]
