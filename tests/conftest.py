import pytest
import torch

from ep_core.numerics.networks import build_network
from ep_core.numerics.relaxation import relax


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def small_net(arch: str, *, size: int = 16, width: float = 1 / 16, **kwargs):
    return build_network(arch, width=width, input_size=size, **kwargs).double()


def batch(net, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.in_channels, net.input_size, net.input_size, generator=g, dtype=torch.float64)
    y = torch.randint(0, net.num_classes, (n,), generator=g)
    return x, y


def converged(net, x, order="coloring", tol=1e-14):
    states, stats = relax(net, x, iterations=20_000, order=order, tol=tol)
    assert stats.residual <= tol, stats
    return states


def relative_error(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over all tensors of two gradient dicts (b's names)."""
    num = sum((a[n] - g).pow(2).sum() for n, g in b.items())
    return (num / sum(g.pow(2).sum() for g in b.values())).sqrt().item()
