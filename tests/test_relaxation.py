import pytest
import torch
from conftest import batch, converged, small_net

from ep_core.numerics.networks import build_network
from ep_core.numerics.orders import update_groups
from ep_core.numerics.relaxation import (
    Nudge,
    fixed_point_residual,
    input_drive,
    predict,
    relax,
    update_layer,
)


@pytest.mark.parametrize(("arch", "order"), [("vgg5", "even_odd"), ("hopfield_resnet13", "coloring")])
def test_fixed_point_equation_holds_after_relaxing_to_tolerance(arch, order):
    net = small_net(arch)
    x, y = batch(net)
    states = converged(net, x, order)
    assert fixed_point_residual(net, x, states) <= 1e-6
    # ...and in a nudged phase, with the nudge in the equation.
    nudge = Nudge(torch.nn.functional.one_hot(y, 10).double(), 0.1)
    nudged, _stats = relax(net, x, states, iterations=20_000, order=order, nudge=nudge, tol=1e-14)
    assert fixed_point_residual(net, x, nudged, nudge) <= 1e-6
    assert fixed_point_residual(net, x, nudged) > 1e-3  # the free equation does not hold there


@pytest.mark.parametrize(("arch", "order"), [("vgg5", "even_odd"), ("hopfield_resnet13", "coloring")])
def test_energy_never_increases_from_one_block_update_to_the_next(arch, order):
    net = small_net(arch)
    x, _ = batch(net)
    s = [x, *net.zero_states(x.shape[0], dtype=torch.float64)]
    drive, alphas = input_drive(net, x), net.alphas.tolist()
    energy = net.energy(x, s[1:])
    steps = 0
    with torch.no_grad():
        for _ in range(60):
            for group in update_groups(net, order):
                new = [(k, update_layer(net, k, s, drive, alphas, None, {})) for k in group]
                for k, value in new:
                    s[k] = value
                after = net.energy(x, s[1:])
                assert (after <= energy + 1e-12 * energy.abs().clamp_min(1)).all()
                steps += int((after < energy - 1e-9).any())
                energy = after
    assert steps > 10  # the energy did go down, it did not just stay put


def test_relax_returns_new_states_and_statistics():
    net = small_net("vgg5")
    x, _ = batch(net)
    start = net.zero_states(4, dtype=torch.float64)
    _states, stats = relax(net, x, start, iterations=7)
    assert stats.iterations == 7 and stats.residual > 0
    assert all((s == 0).all() for s in start)  # inputs are not modified
    early, early_stats = relax(net, x, iterations=10_000, tol=1e-8)
    assert early_stats.iterations < 10_000 and early_stats.residual <= 1e-8
    # Warm start from a fixed point: converged at once.
    _, again = relax(net, x, early, iterations=100, tol=1e-7)
    assert again.iterations == 1


def test_even_odd_is_the_authors_jacobi_step_inside_a_group():
    """With even_odd on HR13, layers 2 and 4 are coupled by a skip yet updated together: the result must
    differ from the proper colouring after one sweep (the coupling really is read from old states)."""
    net = small_net("hopfield_resnet13")
    x, _ = batch(net)
    warm, _ = relax(net, x, iterations=3, order="coloring")
    a, _ = relax(net, x, warm, iterations=1, order="even_odd")
    b, _ = relax(net, x, warm, iterations=1, order=[[1, 3, 5, 7, 9], [2, 6], [4, 8]])
    assert torch.equal(a[0], b[0])  # group A is identical
    assert not torch.allclose(a[3], b[3])  # h2b differs: it saw the old h1b in the even_odd step


def test_drive_is_shared_between_phases_and_synchronous_converges():
    net = small_net("vgg5")
    x, _ = batch(net)
    drive = input_drive(net, x)
    a, _ = relax(net, x, iterations=30, drive=drive)
    b, _ = relax(net, x, iterations=30)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    sync, stats = relax(net, x, iterations=5000, order="synchronous", tol=1e-12)
    assert stats.residual <= 1e-12
    # The max-pool energy is not convex: Jacobi may settle in another fixed point than Gauss-Seidel.
    assert fixed_point_residual(net, x, sync) <= 1e-10


def test_predict_runs_from_zero_states():
    net = small_net("vgg5")
    x, _ = batch(net)
    out = predict(net, x, iterations=40)
    assert out.shape == (4, 10)
    assert torch.equal(out, relax(net, x, iterations=40)[0][-1])


def test_bad_relaxation_arguments():
    net = small_net("vgg5")
    x, _ = batch(net)
    with pytest.raises(ValueError, match="unknown update order 'random'; valid choices: even_odd, coloring"):
        relax(net, x, iterations=3, order="random")
    with pytest.raises(ValueError, match="iterations must be a non-negative integer"):
        relax(net, x, iterations=-1)
    with pytest.raises(ValueError, match="has 5 free layers, got 2"):
        relax(net, x, net.zero_states(4)[:2], iterations=1)
    with pytest.raises(ValueError, match="unknown cost 'hinge'; valid choices: mse, cross_entropy"):
        Nudge(torch.zeros(4, 10), 0.1, "hinge")
    with pytest.raises(ValueError, match="tol must be a positive number"):
        relax(net, x, iterations=3, tol=0.0)


def test_float32_full_width_runs():
    net = build_network("hopfield_resnet13", width=1 / 8)
    x = torch.randn(2, 3, 32, 32)
    states, stats = relax(net, x, iterations=3)
    assert states[-1].dtype == torch.float32 and stats.iterations == 3
