"""Dead layers: a hidden layer whose every unit stayed at 0 (the clipped ReLU's lower clip) in the free
phase of every training batch of an epoch.

No signal then crosses that layer, the output no longer depends on the input, and the run's accuracy sits at
chance; the gradient-fidelity monitor cannot see it: both the run's estimate and the converged one come from a
network whose states barely move, and their cosine reads ~1.0. Seen in `ep-core bench-tta`
(docs/benchmarks.md) at 1/16 width, lr 0.05: 1 of 45 `fast` runs and 7 of 45 `authors` runs (and none of the
10 at 0.025), always the last hidden layer h4b; each of the first six seeds trained at half the learning rate.
A run reads its history's `saturation_low.<layer>` (the epoch's mean share of units at 0), prints one warning
line per layer that dies and records the epoch in metrics.json's `dead_layers`; with
`train.stop_on_dead_layer` it stops there, recorded as diverged. Such a layer gets no EP gradient (every
product of its states with another layer's is 0): only weight decay and momentum still move it, and the eight
seen stayed dead to the end of their runs (4 to 8 epochs). The bar is every unit, so the warning comes 2 to 5
epochs after the accuracy fell; a lower one would not separate the cases: a network that trained to 87.6 % had
95.5 % of h4b's units at 0 in an epoch, two that died had 96 %.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .learners import DivergenceError

SATURATION_LOW = "saturation_low."  # history.csv's per-layer share of units at 0 (numerics.diagnostics)
DEAD = 1.0 - 1e-9  # an epoch's share at or above this: no unit of the layer left 0 on any batch


def dead_in(row: Mapping[str, Any]) -> list[str]:
    """The hidden layers dead in one epoch's history row, in its order."""
    return [
        k.removeprefix(SATURATION_LOW) for k, v in row.items() if k.startswith(SATURATION_LOW) and v >= DEAD
    ]


def first_dead(history: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each layer that was dead in some epoch, with the first such epoch (metrics.json's `dead_layers`)."""
    found: dict[str, int] = {}
    for row in history:
        for layer in dead_in(row):
            found.setdefault(layer, int(row["epoch"]))
    return found


def warning(row: Mapping[str, Any], before: Iterable[Mapping[str, Any]]) -> str | None:
    """One line for the layers that are dead in `row` and were not in any epoch `before` it, else None."""
    earlier = first_dead(before)
    new = [layer for layer in dead_in(row) if layer not in earlier]
    if not new:
        return None
    return (
        f"warning: hidden {_named(new)} dead after epoch {row['epoch']} (every unit at 0 in the free phase "
        f"of every batch): no signal reaches the output, the accuracy stays near chance, and the fidelity "
        f"monitor cannot tell; the 6 documented cases run again at half the optim.lr all trained "
        f"(docs/benchmarks.md)"
    )


def _named(layers: list[str]) -> str:
    return f"layer {layers[0]} is" if len(layers) == 1 else f"layers {', '.join(layers)} are"


def stop_error(row: Mapping[str, Any]) -> DivergenceError | None:
    """The error that ends a run whose `row` has a dead layer (train.stop_on_dead_layer), else None: a
    divergence, recorded as one, that says after which epoch."""
    dead = dead_in(row)
    if not dead:
        return None
    return DivergenceError(
        f"hidden {_named(dead)} dead; train.stop_on_dead_layer stopped the run",
        where=f"after epoch {row['epoch']}",
    )
