"""Per-layer state diagnostics: activity, saturation, and whether two states share one active set.

EP's estimate is exact only in the limit β → 0 *within one smooth piece* of the dynamics: a nudge that
moves a hidden unit across a clip boundary (or flips a max-pool argmax) makes the finite-β estimate jump.
`pattern_changes` counts such flips so tests and `ep-core gradcheck` can tell a bias from a jump.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .interactions import ConvMaxPoolInteraction
from .networks import HopfieldNetwork


def clip_pattern(net: HopfieldNetwork, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per hidden layer, an int8 map: 0 inside the box, 1 clipped at 0, 2 clipped at α."""
    patterns = []
    for s, alpha in zip(states[:-1], net.alphas.tolist(), strict=True):
        patterns.append((s <= 0).to(torch.int8) + 2 * (s >= alpha).to(torch.int8))
    return patterns


def pool_indices(net: HopfieldNetwork, x: torch.Tensor, states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    s = [x, *states]
    with torch.no_grad():
        return [e.argmax(s[e.pre]) for e in net.edges.values() if isinstance(e, ConvMaxPoolInteraction)]


def pattern_changes(
    net: HopfieldNetwork, x: torch.Tensor, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]
) -> int:
    """Number of hidden units whose clip state differs between `a` and `b`, plus max-pool windows whose
    argmax differs. Zero means both states lie on the same smooth piece of the energy."""
    clip = sum(
        int((pa != pb).sum()) for pa, pb in zip(clip_pattern(net, a), clip_pattern(net, b), strict=True)
    )
    pool = sum(
        int((ia != ib).sum()) for ia, ib in zip(pool_indices(net, x, a), pool_indices(net, x, b), strict=True)
    )
    return clip + pool


def layer_statistic_names(net: HopfieldNetwork) -> list[str]:
    names = [f"activity.{layer.name}" for layer in net.layers]
    names += [f"saturation_low.{layer.name}" for layer in net.layers[:-1]]
    names += [f"saturation_high.{layer.name}" for layer in net.layers[:-1]]
    return names


def layer_statistics(net: HopfieldNetwork, states: Sequence[torch.Tensor]) -> torch.Tensor:
    """One tensor (on the states' device, no synchronisation) in the order of `layer_statistic_names`:
    mean |s| of every free layer, then for hidden layers the fraction of units at 0 (`saturation_low`,
    the authors' 'Saturation') and the fraction at their cap α (`saturation_high`)."""
    alphas = net.alphas.tolist()
    hidden = list(zip(states[:-1], alphas, strict=True))
    values = [s.abs().mean() for s in states]
    values += [(s <= 0).to(s.dtype).mean() for s, _ in hidden]
    values += [(s >= a).to(s.dtype).mean() for s, a in hidden]
    return torch.stack(values)
