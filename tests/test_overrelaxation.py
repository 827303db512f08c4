"""Over-relaxed sweeps (`ep.omega`, projected SOR) against the plain sweeps and the reference gradient."""

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, converged, small_net
from conftest import relative_error as _rel

from ep_core.numerics.compiled import GraphedPhase
from ep_core.numerics.estimators import EquilibriumProp
from ep_core.numerics.orders import check_omega, update_groups
from ep_core.numerics.reference import reference_gradients
from ep_core.numerics.relaxation import fixed_point_residual, relax
from ep_core.training.config import ConfigError, build_config, resolve
from ep_core.training.learners import EPLearner


def _max_diff(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def resnet_fixed_point():
    torch.manual_seed(0)
    net = small_net("hopfield_resnet13")
    x, y = batch(net)
    return net, x, y, converged(net, x)


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
@pytest.mark.parametrize("solver", ["fixed_point", "anderson"])
def test_over_relaxed_sweeps_reach_a_plain_fixed_point_in_fewer_sweeps_on_the_resnet(arch, solver):
    torch.manual_seed(0)
    net = small_net(arch)
    x, _ = batch(net)
    plain, plain_stats = relax(net, x, iterations=20_000, order="coloring", tol=1e-13, solver=solver)
    sor, sor_stats = relax(net, x, iterations=20_000, order="coloring", tol=1e-13, solver=solver, omega=1.5)
    assert sor_stats.residual <= 1e-13
    # a fixed point of the plain sweeps; the max-pool energy is not convex, so on VGG5 (a max-pool on every
    # layer) over-relaxation can settle in another of them than the plain sweeps do
    assert fixed_point_residual(net, x, sor) <= 1e-11
    if arch == "hopfield_resnet13":  # slowly contracting: over-relaxation pays
        assert _max_diff(sor, plain) <= 1e-10
        assert sor_stats.iterations < plain_stats.iterations


def test_over_relaxed_nudged_phases_give_the_reference_gradient_in_fewer_sweeps(resnet_fixed_point):
    net, x, y, free = resnet_fixed_point
    ref = reference_gradients(net, x, y, free).grads
    common = {
        "beta": 1e-3,
        "free_iterations": 0,
        "nudge_iterations": 20_000,
        "order": "coloring",
        "tol": 1e-12,
    }
    plain = EquilibriumProp(**common, clip_norm=None).estimate(net, x, y, free)
    sor = EquilibriumProp(**common, clip_norm=None, omega=1.5).estimate(net, x, y, free)
    assert _rel(sor.grads, ref) <= 1e-4
    for name, g in ref.items():
        assert F.cosine_similarity(sor.grads[name].flatten(), g.flatten(), dim=0).item() >= 0.999, name
    assert _rel(sor.grads, plain.grads) <= 1e-6
    assert sor.stats["nudged"].iterations < plain.stats["nudged"].iterations / 1.5


def test_at_one_tolerance_over_relaxed_nudged_phases_stop_sooner_and_closer(resnet_fixed_point):
    """The point of ep.omega: at the tolerance a training run uses, fewer sweeps and a smaller error
    against the same estimator run to convergence."""
    net, x, y, free = resnet_fixed_point
    common = {"beta": 0.1, "free_iterations": 0, "nudge_iterations": 20_000, "order": "coloring"}
    exact = EquilibriumProp(**common, tol=1e-12).estimate(net, x, y, free)
    plain = EquilibriumProp(**common, tol=1e-3).estimate(net, x, y, free)
    sor = EquilibriumProp(**common, tol=1e-3, omega=1.5).estimate(net, x, y, free)
    assert sor.stats["nudged"].iterations < plain.stats["nudged"].iterations
    assert _rel(sor.grads, exact.grads) < _rel(plain.grads, exact.grads)


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
def test_static_buffer_phase_over_relaxes_like_relax(arch):
    """The body a CUDA graph captures, run eagerly on static buffers, with ω = 1.5."""
    net = small_net(arch)
    x, _ = batch(net)
    groups = update_groups(net, "coloring")
    phase = GraphedPhase(net, x, copies=1, iterations=6, groups=groups, nudged=False, omega=1.5)
    states, _ = phase.run(x, None)
    expected, _ = relax(net, x, iterations=6, order=groups, omega=1.5)
    assert _max_diff(states, expected) <= 1e-12
    assert _max_diff(states, relax(net, x, iterations=6, order=groups)[0]) > 1e-6  # ω did act


def test_omega_is_checked_against_its_range_and_the_update_order():
    resnet, vgg = small_net("hopfield_resnet13"), small_net("vgg5")
    x, _ = batch(resnet)
    for bad in (0, 2, -0.5, 2.5, True, "1.5"):
        with pytest.raises(ValueError, match=r"^omega must satisfy 0 < omega < 2, got"):
            check_omega(bad)
    # even_odd is a Jacobi step on Hopfield-ResNet (its skips couple layers of one parity) ...
    with pytest.raises(ValueError, match=r"^omega 1.5 > 1 needs an update order that is a proper colouring"):
        relax(resnet, x, iterations=2, order="even_odd", omega=1.5)
    relax(resnet, x, iterations=2, order="even_odd", omega=0.8)  # under-relaxation converges anyway
    relax(resnet, x, iterations=2, order="coloring", omega=1.5)
    relax(vgg, x, iterations=2, order="even_odd", omega=1.5)  # ... and a colouring on the VGG5 chain
    with pytest.raises(ValueError, match=r"^omega must satisfy"):
        EquilibriumProp(omega=2.0)


def test_omega_is_a_config_key_that_reaches_training_and_evaluation():
    assert build_config({}).ep.omega == 1.0  # the authors' plain sweeps
    for bad in (0, 2, -1):
        with pytest.raises(ConfigError, match=rf"^ep.omega: must satisfy 0 < omega < 2, got {bad}"):
            build_config({"ep": {"omega": bad}})
    net = small_net("hopfield_resnet13", size=32)
    with pytest.raises(ConfigError, match=r"^ep.omega: omega 1.5 > 1 needs an update order"):
        EPLearner(net, resolve(build_config({"ep": {"omega": 1.5}})))
    learner = EPLearner(net, resolve(build_config({"ep": {"omega": 1.5, "order": "coloring"}})))
    assert learner.estimator.omega == 1.5
    x, y = batch(net)
    learner.eval_iterations = 5
    plain = EPLearner(net, resolve(build_config({"ep": {"order": "coloring"}})))
    plain.eval_iterations = 5
    # evaluation relaxes with the same ω (a different residual after 5 sweeps)
    assert learner.evaluate([(x, y)])["residual"] != plain.evaluate([(x, y)])["residual"]


def test_nudge_omega_over_relaxes_the_nudged_phases_only(resnet_fixed_point):
    net, x, y, free = resnet_fixed_point
    start = [t.clone() for t in free]
    common = {"beta": 0.1, "free_iterations": 3, "nudge_iterations": 20_000, "order": "coloring", "tol": 1e-8}
    plain = EquilibriumProp(**common).estimate(net, x, y, start)
    sor = EquilibriumProp(**common, nudge_omega=1.5).estimate(net, x, y, start)
    both = EquilibriumProp(**common, omega=1.5).estimate(net, x, y, start)
    assert torch.equal(sor.free_states[0], plain.free_states[0])  # the free phase is untouched
    assert not torch.equal(both.free_states[0], plain.free_states[0])
    assert sor.stats["nudged"].iterations < plain.stats["nudged"].iterations
    assert _rel(sor.grads, plain.grads) <= 1e-5
    with pytest.raises(ValueError, match=r"^omega must satisfy"):
        EquilibriumProp(nudge_omega=0.0)
    assert build_config({"ep": {"nudge_omega": 1.5}}).ep.nudge_omega == 1.5
    with pytest.raises(ConfigError, match=r"^ep.nudge_omega: must satisfy 0 < omega < 2, got 2"):
        build_config({"ep": {"nudge_omega": 2}})
    with pytest.raises(ConfigError, match=r"^ep.nudge_omega: omega 1.5 > 1 needs an update order"):
        EPLearner(
            small_net("hopfield_resnet13", size=32), resolve(build_config({"ep": {"nudge_omega": 1.5}}))
        )


def test_the_sweep_table_script_measures_a_trained_run(tmp_path):
    """scripts/overrelaxation.py (docs/benchmarks.md's table) on a one-batch digits run."""
    import subprocess
    import sys
    from pathlib import Path

    from ep_core.training.run import train

    config = build_config(
        {
            "data": {"name": "digits"},
            "model": {"arch": "hopfield_resnet13", "width": 0.0625},
            "ep": {"free_iterations": 5, "nudge_iterations": 3, "eval_iterations": 5},
            "train": {"epochs": 1, "max_batches": 1, "batch_size": 8, "device": "cpu"},
        }
    )
    assert train(config, tmp_path / "run", threads=1) == 0
    script = Path(__file__).parents[1] / "scripts" / "overrelaxation.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), "--omegas", "1,1.5", "--batch-size", "4"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("omega ")]
    assert [r.split(":")[0] for r in rows] == ["omega 1.0", "omega 1.5"]
    for row in rows:  # 3 tolerances per phase, each "sweeps (error)"
        free, nudged = row.split("free ")[1].split(" | nudged ")
        assert len(free.split(") ")) == 3 and len(nudged.split(") ")) == 3
