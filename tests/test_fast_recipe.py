"""The fast recipe's parts against the straightforward paths: paired Anderson in the nudged phases, chunked
and one-after-the-other phases, the in-place warm carry, and `ep.recipe` (the time-to-accuracy benchmark:
tests/test_tta.py)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, converged, small_net
from conftest import relative_error as _rel

from ep_core.bench.tta import parse_recipe
from ep_core.numerics.anderson import History
from ep_core.numerics.diagnostics import layer_statistics
from ep_core.numerics.estimators import EquilibriumProp
from ep_core.numerics.orders import update_groups
from ep_core.numerics.reference import reference_gradients
from ep_core.numerics.relaxation import Nudge, input_drive, relax_list
from ep_core.training.config import ConfigError, build_config, resolve


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])


@pytest.fixture(scope="module")
def resnet_fixed_point():
    torch.manual_seed(0)
    net = small_net("hopfield_resnet13")
    x, y = batch(net)
    free = converged(net, x)
    return net, x, y, free


def test_paired_anderson_nudged_phases_match_the_reference_gradient(resnet_fixed_point):
    net, x, y, free = resnet_fixed_point
    ref = reference_gradients(net, x, y, free).grads
    common = {
        "beta": 1e-3,
        "free_iterations": 0,
        "nudge_iterations": 20_000,
        "order": "coloring",
        "tol": 1e-12,
        "clip_norm": None,
    }
    plain = EquilibriumProp(**common).estimate(net, x, y, free)
    mixed = EquilibriumProp(**common, nudge_solver="anderson").estimate(net, x, y, free)
    assert _rel(mixed.grads, ref) <= 1e-4
    for name, g in ref.items():
        assert F.cosine_similarity(mixed.grads[name].flatten(), g.flatten(), dim=0).item() >= 0.999, name
    # the same fixed points as the plain sweeps, in fewer sweeps
    assert _rel(mixed.grads, plain.grads) <= 1e-5
    assert mixed.stats["nudged"].iterations < plain.stats["nudged"].iterations / 2


def test_paired_mixing_keeps_the_two_copies_symmetric_about_the_free_state(resnet_fixed_point):
    """Near the free fixed point the nudged sweep map is affine in the displacement and odd in β up to
    O(β²) (the output's β·(o − y) term), so shared coefficients keep s₊ − F = −(s₋ − F) at every iterate
    up to that order."""
    net, x, y, free = resnet_fixed_point
    B = x.shape[0]
    target = F.one_hot(y, 10).double()
    nudge = Nudge(
        torch.cat([target, target]), torch.cat([x.new_full((B, 1), -1e-4), x.new_full((B, 1), 1e-4)])
    )
    s = [x, *(torch.cat([t, t]) for t in free)]
    s, _ = relax_list(
        net, s, iterations=6, groups=update_groups(net, "coloring"), nudge=nudge, tol=None,
        drive=input_drive(net, x), solver="anderson", pairs=True,
    )  # fmt: skip
    for t, f in zip(s[1:], free, strict=True):
        minus, plus = t[:B] - f, t[B:] - f
        assert (minus + plus).norm() <= 10 * 1e-4 * plus.norm()  # 10 β


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
@pytest.mark.parametrize(
    "options",
    [{}, {"batch_phases": False}, {"estimator": "ep"}, {"solver": "anderson", "nudge_solver": "anderson"}],
    ids=["stacked", "separate", "one-sided", "anderson"],
)
def test_chunked_estimate_equals_the_whole_batch(arch, options):
    torch.manual_seed(0)
    net = small_net(arch)
    x, y = batch(net, n=5)
    common = {"beta": 0.1, "free_iterations": 9, "nudge_iterations": 4, "order": "even_odd", **options}
    whole = EquilibriumProp(**common).estimate(net, x, y)
    chunked = EquilibriumProp(**common, chunk_size=2).estimate(net, x, y)
    for name, g in whole.grads.items():
        torch.testing.assert_close(chunked.grads[name], g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(chunked.output, whole.output)
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-12)
    for a, b in zip(chunked.free_states, whole.free_states, strict=True):
        torch.testing.assert_close(a, b)
    for sa, sb in zip(chunked.nudged_states, whole.nudged_states, strict=True):
        for a, b in zip(sa, sb, strict=True):
            torch.testing.assert_close(a, b)


def test_lean_estimate_carries_the_plus_state_in_place_and_summarises_the_free_state():
    torch.manual_seed(0)
    net = small_net("hopfield_resnet13")
    x, y = batch(net, n=5)
    est = EquilibriumProp(beta=0.1, free_iterations=6, nudge_iterations=3)
    warm = [torch.rand_like(t) for t in net.zero_states(5, dtype=torch.float64)]
    full = est.estimate(net, x, y, [t.clone() for t in warm])
    for chunk_size in (None, 2):
        lean_est = EquilibriumProp(beta=0.1, free_iterations=6, nudge_iterations=3, chunk_size=chunk_size)
        carry = [t.clone() for t in warm]
        storages = [t.data_ptr() for t in carry]
        lean = lean_est.estimate(
            net, x, y, carry, keep_states=False, carry=carry, summarise=lambda s: layer_statistics(net, s)
        )
        assert lean.free_states == [] and lean.nudged_states == ()
        assert [t.data_ptr() for t in carry] == storages  # written in place
        for a, b in zip(carry, full.nudged_states[-1], strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(lean.summary, layer_statistics(net, full.free_states))
        for name, g in full.grads.items():
            torch.testing.assert_close(lean.grads[name], g)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_displacement_bound_skips_passes_without_changing_when_a_nudged_phase_stops(
    resnet_fixed_point, monkeypatch, dtype
):
    """The nudged phases' stopping test computes ‖s − free‖ only when the triangle-inequality bound cannot
    rule convergence out: the same sweeps, states and gradient as computing it every sweep, with far
    fewer displacement passes."""
    import ep_core.numerics.relaxation as relaxation
    import ep_core.numerics.sweep as sweep_module

    net, x, y, free = resnet_fixed_point
    net, x, free = copy.deepcopy(net).to(dtype), x.to(dtype), [t.to(dtype) for t in free]
    passes = []
    exact_displacement = sweep_module.displacement
    monkeypatch.setattr(sweep_module, "displacement", lambda *a: passes.append(1) or exact_displacement(*a))
    est = EquilibriumProp(beta=0.1, free_iterations=0, nudge_iterations=500, order="even_odd", tol=1e-3)

    def run(bounded: bool):
        passes.clear()
        monkeypatch.setattr(relaxation, "StopTest", lambda *a: sweep_module.StopTest(*a, bounded=bounded))
        return est.estimate(net, x, y, [t.clone() for t in free]), len(passes)

    (bounded, bounded_passes), (every, every_passes) = run(True), run(False)
    sweeps = every.stats["nudged"].iterations
    assert 10 <= sweeps < 500 and bounded.stats["nudged"].iterations == sweeps
    # (a sweep below the rounding floor stops without a displacement)
    assert sweeps - 1 <= every_passes <= sweeps and bounded_passes <= sweeps // 5, (bounded_passes, sweeps)
    for name, g in every.grads.items():
        assert torch.equal(bounded.grads[name], g)


def test_a_looser_nudged_tolerance_shortens_only_the_nudged_phases(resnet_fixed_point):
    net, x, y, free = resnet_fixed_point
    common = {"beta": 0.1, "free_iterations": 300, "nudge_iterations": 300, "order": "even_odd", "tol": 1e-4}
    start = [t + 0.01 for t in free]  # off the fixed point, so the free phase has work to do
    same = EquilibriumProp(**common).estimate(net, x, y, [t.clone() for t in start])
    explicit = EquilibriumProp(**common, nudge_tol=1e-4).estimate(net, x, y, [t.clone() for t in start])
    loose = EquilibriumProp(**common, nudge_tol=1e-2).estimate(net, x, y, [t.clone() for t in start])
    assert explicit.stats == same.stats and all(
        torch.equal(explicit.grads[n], g) for n, g in same.grads.items()
    )
    assert loose.stats["free"] == same.stats["free"]
    assert loose.stats["nudged"].iterations < same.stats["nudged"].iterations / 2
    assert 0.9 < F.cosine_similarity(_flat(loose.grads), _flat(same.grads), dim=0) < 1 - 1e-6


def test_nudge_tol_is_a_config_key_checked_like_tol():
    assert build_config({"ep": {"nudge_tol": 0.01}}).ep.nudge_tol == 0.01
    with pytest.raises(ConfigError, match=r"^ep.nudge_tol: must be positive or null, got -1"):
        build_config({"ep": {"nudge_tol": -1}})


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_anderson_history_updates_the_gram_matrix_as_the_direct_product(dtype, tol):
    # The incremental Gram matrix (one pass over the history per iteration) against ΔFᵀΔF recomputed from
    # the stored differences, through more pushes than the ring buffer holds (slots are overwritten).
    torch.manual_seed(0)
    B, m, sizes = 4, 3, (7, 5)
    f_prev = [torch.randn(B, n, dtype=dtype) for n in sizes]
    g_prev = [torch.randn(B, n, dtype=dtype) for n in sizes]
    history = None
    for k in range(8):
        f = [0.7 * fp + 0.3 * torch.randn_like(fp) for fp in f_prev]
        g = [torch.randn_like(gp) for gp in g_prev]
        history = history or History(f, m)
        rhs = history.push(k % m, f, g, f_prev, g_prev)
        gram = sum((d.unsqueeze(2) * d.unsqueeze(1)).sum(3) for d in history.dF).double()
        direct_rhs = sum((d * fl.unsqueeze(1)).sum(2) for d, fl in zip(history.dF, f, strict=True))
        scale = gram.abs().max()
        assert (history.gram - gram).abs().max() <= tol * scale
        assert (rhs - direct_rhs.double()).abs().max() <= tol * scale
        for dF_l, dG_l, fl, fp, gl, gp in zip(history.dF, history.dG, f, f_prev, g, g_prev, strict=True):
            assert torch.equal(dF_l[:, k % m], fl - fp) and torch.equal(dG_l[:, k % m], gl - gp)
        f_prev, g_prev = f, g


def test_anderson_nudged_phases_need_stacked_centered_phases():
    with pytest.raises(ValueError, match="needs batch_phases"):
        EquilibriumProp(nudge_solver="anderson", batch_phases=False)
    with pytest.raises(
        ConfigError, match=r"ep\.nudge_solver: anderson with centered EP needs ep\.batch_phases"
    ):
        build_config({}, ["ep.nudge_solver=anderson", "ep.batch_phases=false"])
    with pytest.raises(ConfigError, match=r"ep\.chunk_size: expected an integer or null"):
        build_config({}, ["ep.chunk_size=1.5"])
    with pytest.raises(ConfigError, match=r"ep\.chunk_size: must be >= 1"):
        build_config({}, ["ep.chunk_size=0"])


def test_the_recipe_fills_unset_keys_and_explicit_keys_win():
    authors = resolve(build_config({}))
    assert (authors.ep.recipe, authors.ep.tol, authors.ep.solver, authors.ep.free_iterations) == (
        "authors", None, "fixed_point", 120,
    )  # fmt: skip
    fast = build_config({}, ["ep.recipe=fast"]).ep  # the authors' plain sweeps in truncated phases
    assert (fast.free_iterations, fast.nudge_iterations, fast.eval_iterations) == (40, 15, 40)
    assert (fast.tol, fast.solver, fast.nudge_solver) == (None, "fixed_point", "fixed_point")
    assert build_config({"ep": {"recipe": "fast", "nudge_iterations": 20}}).ep.nudge_iterations == 20
    adaptive = build_config({}, ["ep.recipe=adaptive"]).ep
    assert (adaptive.tol, adaptive.solver, adaptive.nudge_solver) == (1e-3, "anderson", "anderson")
    assert (adaptive.free_iterations, adaptive.nudge_iterations) == (120, 50)  # the authors' caps
    assert build_config({"ep": {"recipe": "adaptive", "tol": 1e-4}}).ep.tol == 1e-4
    separate = build_config({}, ["ep.recipe=adaptive", "ep.batch_phases=false"]).ep
    assert (separate.solver, separate.nudge_solver) == ("anderson", "fixed_point")
    assert build_config({}, ["ep.recipe=adaptive", "ep.solver=fixed_point"]).ep.solver == "fixed_point"
    with pytest.raises(
        ConfigError, match=r"ep\.recipe: 'quick' is not allowed; valid choices: authors, fast, adaptive, auto"
    ):
        build_config({}, ["ep.recipe=quick"])


def test_an_unknown_recipe_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown recipe 'quick'"):
        parse_recipe("quick:ep.tol=1e-3")
