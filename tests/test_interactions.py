"""Every closed-form gradient equals autograd of its energy term (float64, tight tolerance)."""

import pytest
import torch

from ep_core.numerics.interactions import (
    ConvInteraction,
    ConvMaxPoolInteraction,
    DenseInteraction,
    bias_grad,
    bias_phi,
    bias_view,
)

CASES = {
    "conv3x3_stride1": lambda: ConvInteraction("e", 0, 1, (3, 8, 8), (5, 8, 8), 0.6, 3, 1, 1),
    "conv3x3_stride2_even": lambda: ConvInteraction("e", 0, 1, (3, 8, 8), (5, 4, 4), 0.6, 3, 2, 1),
    "conv3x3_stride2_odd": lambda: ConvInteraction("e", 0, 1, (3, 7, 7), (5, 4, 4), 0.6, 3, 2, 1),
    "skip1x1_stride2": lambda: ConvInteraction("e", 0, 1, (4, 8, 8), (6, 4, 4), 0.7, 1, 2, 0),
    "conv_maxpool": lambda: ConvMaxPoolInteraction("e", 0, 1, (3, 8, 8), (5, 4, 4), 0.4),
    "dense_from_map": lambda: DenseInteraction("e", 0, 1, (4, 2, 2), (10,), 0.8),
    "dense_from_vector": lambda: DenseInteraction("e", 0, 1, (7,), (3,), 0.8),
}


def _autograd(edge, s_pre, s_post):
    s_pre = s_pre.clone().requires_grad_(True)
    s_post = s_post.clone().requires_grad_(True)
    phi = edge.phi(s_pre, s_post).sum()
    return torch.autograd.grad(phi, [s_pre, s_post, edge.weight])


@pytest.mark.parametrize("case", CASES)
def test_closed_form_gradients_match_autograd(case):
    edge = CASES[case]().double()
    s_pre = torch.randn(3, *edge.pre_shape, dtype=torch.float64)
    s_post = torch.rand(3, *edge.post_shape, dtype=torch.float64)
    d_pre, d_post, d_w = _autograd(edge, s_pre, s_post)
    with torch.no_grad():
        torch.testing.assert_close(edge.drive_post(s_pre), d_post, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(edge.drive_pre(s_post, s_pre), d_pre, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(edge.weight_grad(s_pre, s_post), d_w, rtol=1e-12, atol=1e-12)
    assert d_pre.abs().sum() > 0 and d_w.abs().sum() > 0


def test_maxpool_cache_reuses_indices_only_for_the_same_state():
    edge = ConvMaxPoolInteraction("e", 0, 1, (3, 8, 8), (5, 4, 4), 0.4).double()
    a = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    b = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    post = torch.rand(2, 5, 4, 4, dtype=torch.float64)
    cache = {}
    with torch.no_grad():
        edge.drive_post(a, cache)
        # A different tensor must not pick up a's argmax: the result equals the uncached one for b.
        torch.testing.assert_close(edge.drive_pre(post, b, cache), edge.drive_pre(post, b))
        edge.drive_post(b, cache)
        torch.testing.assert_close(edge.drive_pre(post, b, cache), edge.drive_pre(post, b))


@pytest.mark.parametrize("shape", [(5, 4, 4), (7,)])
def test_bias_gradients_match_autograd(shape):
    b = torch.randn(shape[0], dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, *shape, dtype=torch.float64, requires_grad=True)
    d_s, d_b = torch.autograd.grad(bias_phi(b, s).sum(), [s, b])
    torch.testing.assert_close(bias_view(b, shape).expand_as(s), d_s)
    torch.testing.assert_close(bias_grad(s), d_b)


def test_conv_edge_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="gives"):
        ConvInteraction("bad", 0, 1, (3, 8, 8), (5, 8, 8), 0.6, 3, 2, 1)
