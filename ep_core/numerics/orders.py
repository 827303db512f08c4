"""Update orders: which free layers are updated together, as data (a list of groups of layer indices).

One relaxation *iteration* updates every group once, in order; the layers of a group are updated
simultaneously from the states as they were when the group started (a Jacobi step inside the group).
A group is an exact block minimisation of the energy only if no two of its layers are coupled, i.e. the
groups form a proper colouring of the coupling graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from .networks import HopfieldNetwork

ORDERS = ("even_odd", "coloring", "synchronous")

Groups = list[list[int]]


def check_order(name: str) -> str:
    if name not in ORDERS:
        raise ValueError(f"unknown update order {name!r}; valid choices: {', '.join(ORDERS)}")
    return name


def update_groups(net: HopfieldNetwork, order: str) -> Groups:
    """The groups of free-layer indices (1..L) for the named order.

    * ``even_odd``: the authors' two groups, odd layers {1, 3, ...} then even layers {2, 4, ...}. A proper
      colouring for chains (VGG5, the no-skip nets), but not for Hopfield-ResNet, whose skips couple layers
      of the same parity.
    * ``coloring``: a greedy proper colouring of the coupling graph, in layer order (3 groups for HR13).
    * ``synchronous``: one group, every layer from the previous iteration's states (Jacobi).
    """
    check_order(order)
    free = list(range(1, net.num_layers + 1))
    if order == "synchronous":
        return [free]
    if order == "even_odd":
        return [free[0::2], free[1::2]]
    return greedy_coloring(free, net.free_edges())


def greedy_coloring(nodes: Sequence[int], edges: Sequence[tuple[int, int]]) -> Groups:
    neighbours: dict[int, set[int]] = {n: set() for n in nodes}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    color: dict[int, int] = {}
    for n in nodes:
        taken = {color[m] for m in neighbours[n] if m in color}
        color[n] = next(c for c in range(len(nodes)) if c not in taken)
    return [[n for n in nodes if color[n] == c] for c in range(max(color.values()) + 1)]


def is_proper(groups: Groups, edges: Sequence[tuple[int, int]]) -> bool:
    """True when no group holds both ends of a coupling."""
    group_of = {n: g for g, members in enumerate(groups) for n in members}
    return all(group_of[a] != group_of[b] for a, b in edges)


def check_omega(omega: float, net: HopfieldNetwork | None = None, groups: Groups | None = None) -> float:
    """`omega`, the over-relaxation factor of every layer update (`sweep.sweep`), if it can converge: 0 < ω
    < 2 (the range of successive over-relaxation), and — given the network and its update groups — ω > 1
    only when the groups are a proper colouring: a group of coupled layers is a Jacobi step, which
    over-relaxation makes diverge (on Hopfield-ResNet13, even_odd at ω = 1.4 did)."""
    if isinstance(omega, bool) or not (isinstance(omega, (int, float)) and 0 < omega < 2):
        raise ValueError(f"omega must satisfy 0 < omega < 2, got {omega!r}")
    if omega > 1 and net is not None and groups is not None and not is_proper(groups, net.free_edges()):
        raise ValueError(
            f"omega {omega} > 1 needs an update order that is a proper colouring of {net.arch}'s "
            f"couplings (order 'coloring'); these groups put coupled layers together: {groups}"
        )
    return float(omega)
