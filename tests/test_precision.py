"""The bf16 bulk of the free phase (`ep.bf16_sweeps`, `ep_core.numerics.precision`) against full-precision phases."""

import json

import pytest
import torch
from conftest import batch, small_net
from conftest import relative_error as _rel

from ep_core.bench.gradcheck import run_gradcheck
from ep_core.cli import main
from ep_core.numerics.estimators import EquilibriumProp
from ep_core.numerics.orders import update_groups
from ep_core.numerics.precision import bulk_relax, low_precision_twin
from ep_core.numerics.relaxation import relax
from ep_core.training.config import ConfigError, build_config, resolve
from ep_core.training.learners import EPLearner

CONVERGED = {"beta": 1e-3, "free_iterations": 20_000, "nudge_iterations": 20_000, "order": "coloring"}


def test_a_bf16_bulk_then_a_polish_gives_the_full_precision_fixed_point_and_gradient():
    net = small_net("hopfield_resnet13")
    x, y = batch(net)
    common = {**CONVERGED, "tol": 1e-12, "clip_norm": None}
    plain = EquilibriumProp(**common).estimate(net, x, y, None)
    mixed = EquilibriumProp(**common, bf16_sweeps=30).estimate(net, x, y, None)
    assert mixed.stats["bulk"].iterations == 30 and "bulk" not in plain.stats
    for a, b in zip(mixed.free_states, plain.free_states, strict=True):
        assert a.dtype == torch.float64
        assert (a - b).abs().max().item() <= 1e-9
    assert _rel(mixed.grads, plain.grads) <= 1e-6
    # the bulk did the phase's work: fewer full-precision sweeps were left to the polish
    polish = mixed.stats["free"].iterations - 30
    assert polish < plain.stats["free"].iterations - 15


def test_the_bulk_runs_in_bf16_within_the_free_phase_cap_and_its_tolerance():
    net = small_net("hopfield_resnet13")
    x, y = batch(net)
    groups = update_groups(net, "coloring")
    bulk, stats = bulk_relax(net, x, None, sweeps=12, groups=groups)
    full, _ = relax(net, x, iterations=12, order=groups)
    assert stats.iterations == 12 and all(t.dtype == torch.float64 for t in bulk)
    error = max(((a - b).norm() / b.norm()).item() for a, b in zip(bulk, full, strict=True) if b.norm() > 0)
    assert 1e-5 < error < 5e-2  # bf16 rounding: neither float64's nor wrong
    # the cap of the free phase bounds bulk + polish; a loose tolerance ends the bulk early
    capped = EquilibriumProp(free_iterations=10, bf16_sweeps=50, order="coloring").estimate(net, x, y, None)
    assert capped.stats["bulk"].iterations == 10 and capped.stats["free"].iterations == 10
    loose = EquilibriumProp(free_iterations=500, bf16_sweeps=400, order="coloring", tol=1e-1)
    stopped = loose.estimate(net, x, y, None)
    assert stopped.stats["bulk"].iterations < 400


def test_the_bf16_twin_follows_the_parameters():
    net = small_net("hopfield_resnet13")
    twin = low_precision_twin(net)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in twin.parameters())
    name, p = next(iter(net.named_parameters()))
    with torch.no_grad():
        p.add_(1.0)
    again = low_precision_twin(net)
    assert again is twin  # refreshed in place, not rebuilt
    assert torch.equal(dict(again.named_parameters())[name], p.to(torch.bfloat16))
    assert all(q.dtype == torch.float64 for q in net.parameters())


def test_gradcheck_of_the_mixed_precision_free_phase_keeps_the_gradient():
    """The gate of offering it: min cosine ≥ 0.999 at β = 1e-2 on Hopfield-ResNet13 at 1/16 width, the same
    report as without the bulk."""
    common = {"width": 1 / 16, "beta": 1e-2, "input_size": 16, "batch_size": 4}
    plain = run_gradcheck("hopfield_resnet13", **common)
    mixed = run_gradcheck("hopfield_resnet13", **common, bf16_sweeps=40)
    assert mixed.min_cosine >= 0.999
    assert mixed.min_cosine == pytest.approx(plain.min_cosine, abs=1e-7)
    assert mixed.bulk_iterations == 40 and mixed.free_state_distance <= 1e-11
    assert plain.bulk_iterations == 0


def test_bf16_sweeps_is_a_config_key_that_reaches_training(tmp_path, capsys):
    assert build_config({}).ep.bf16_sweeps == 0
    with pytest.raises(ConfigError, match=r"^ep.bf16_sweeps: must be a non-negative integer, got -1$"):
        build_config({"ep": {"bf16_sweeps": -1}})
    with pytest.raises(ConfigError, match=r"^ep.bf16_sweeps: not with ep.cuda_graphs"):
        build_config({"ep": {"bf16_sweeps": 5, "cuda_graphs": True}})
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"^bf16_sweeps must be a non-negative integer"):
            EquilibriumProp(bf16_sweeps=bad)
    net = small_net("hopfield_resnet13", size=32)
    learner = EPLearner(net, resolve(build_config({"ep": {"bf16_sweeps": 7, "free_iterations": 9}})))
    assert learner.estimator.bf16_sweeps == 7
    x, y = batch(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    step = learner.train_step(x, y, optimizer, None)
    assert step.scalars["bulk_iterations"] == 7 and step.scalars["free_iterations"] == 9
    # the command line: gradcheck reports the bulk, bench records the setting
    args = ["--width", "0.0625", "--input-size", "16", "--batch-size", "2"]
    assert main(["gradcheck", "--arch", "hopfield_resnet13", *args, "--bf16-sweeps", "20"]) == 0
    assert "estimate's own free phase: 20 bf16 sweeps, then" in capsys.readouterr().out
    bench = ["bench", "--device", "cpu", *args, "--repeats", "1", "--no-memory", "--no-bp", "--no-schedules"]
    assert main([*bench, "--bf16-sweeps", "3", "--omega", "0.9", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["bf16_sweeps"] == 3 and settings["omega"] == 0.9
