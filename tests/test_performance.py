"""Fast paths against the straightforward ones: the same states and gradients within tolerance.

The straightforward relaxation below is the textbook form — every layer's drive summed out of place from
all its couplings, no max-pool cache, no drive broadcasting, old states kept — against which the
in-place, cache-reusing, memory-lean, stacked, Anderson-accelerated, compiled and static-buffer paths
are checked.
"""

import gc
import os
import weakref

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, converged, small_net

from ep_core.numerics.anderson import anderson_relax
from ep_core.numerics.compiled import GraphedPhase
from ep_core.numerics.costs import cost_grad
from ep_core.numerics.estimators import EquilibriumProp, hebbian_difference, parameter_gradients
from ep_core.numerics.flops import edge_macs, ep_step_flops, iteration_flops, minimal_kernel_set
from ep_core.numerics.interactions import bias_view
from ep_core.numerics.orders import update_groups
from ep_core.numerics.reference import reference_gradients
from ep_core.numerics.relaxation import Nudge, input_drive, relax, relax_list
from ep_core.training.config import build_config, resolve
from ep_core.training.learners import EPLearner


def straightforward_relax(net, x, states, iterations, order, nudge=None):
    s = [x, *states]
    alphas = net.alphas.tolist()
    with torch.no_grad():
        for _ in range(iterations):
            for group in update_groups(net, order):
                new = []
                for k in group:
                    u = bias_view(net.biases[net.layers[k - 1].name], net.layers[k - 1].shape)
                    for e in net.incoming[k]:
                        u = u + e.drive_post(s[e.pre])
                    for e in net.outgoing[k]:
                        u = u + e.drive_pre(s[e.post], s[k])
                    if k == net.num_layers:
                        if nudge is not None:
                            u = u - nudge.beta * cost_grad(nudge.cost, s[k], nudge.target)
                    else:
                        u = u.clamp(0.0, alphas[k - 1])
                    new.append((k, u))
                for k, u in new:
                    s[k] = u
    return s[1:]


def _close(a, b, rtol=1e-10, atol=1e-12):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol)


def _nudge(y, beta, n=10):
    return Nudge(F.one_hot(y, n).double(), beta)


@pytest.mark.parametrize(
    ("arch", "order"),
    [("vgg5", "even_odd"), ("hopfield_resnet13", "even_odd"), ("hopfield_resnet13", "coloring")],
)
def test_relax_equals_the_straightforward_relaxation(arch, order):
    net = small_net(arch)
    x, y = batch(net)
    warm, _ = relax(net, x, iterations=3, order=order)
    free, _ = relax(net, x, warm, iterations=7, order=order)
    _close(free, straightforward_relax(net, x, warm, 7, order))
    nudged, _ = relax(net, x, free, iterations=5, order=order, nudge=_nudge(y, 0.2))
    _close(nudged, straightforward_relax(net, x, free, 5, order, _nudge(y, 0.2)))


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
def test_a_batch_of_one_keeps_its_input_drive_apart_from_the_biases(arch):
    net = small_net(arch)
    x, _ = batch(net, n=1)
    _close(
        relax(net, x, iterations=6)[0],
        straightforward_relax(net, x, net.zero_states(1, dtype=x.dtype), 6, "even_odd"),
    )


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
def test_stacked_phases_share_one_drive_and_give_the_separate_results(arch):
    net = small_net(arch)
    x, y = batch(net)
    free, _ = relax(net, x, iterations=4)
    betas = torch.cat([x.new_full((4, 1), -0.1), x.new_full((4, 1), 0.1)])
    target = F.one_hot(y, 10).double()
    owned = [x, *(torch.cat([t, t]) for t in free)]  # x's batch, states stacked twice
    stacked, _ = relax_list(
        net,
        owned,
        iterations=6,
        groups=update_groups(net, "even_odd"),
        nudge=Nudge(torch.cat([target] * 2), betas),
        tol=None,
        drive=input_drive(net, x),
    )
    for half, beta in ((slice(0, 4), -0.1), (slice(4, 8), 0.1)):
        expected = straightforward_relax(net, x, free, 6, "even_odd", _nudge(y, beta))
        _close([t[half] for t in stacked[1:]], expected)


def test_a_handed_over_start_is_freed_as_the_relaxation_replaces_it():
    """No copy of the previous states is kept: the start tensors die during the relaxation."""
    net = small_net("hopfield_resnet13")
    x, _ = batch(net)
    start = [torch.rand(4, *layer.shape, dtype=torch.float64) for layer in net.layers]
    refs = [weakref.ref(t) for t in start]
    owned = [x, *start]
    del start
    relax_list(net, owned, iterations=2, groups=update_groups(net, "coloring"), nudge=None, tol=None,
               drive=input_drive(net, x))  # fmt: skip
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
def test_hebbian_difference_equals_the_weighted_hebbian_sum(arch):
    net = small_net(arch)
    x, y = batch(net)
    free, _ = relax(net, x, iterations=5)
    betas = torch.cat([x.new_full((4, 1), -0.1), x.new_full((4, 1), 0.1)])
    cache: dict = {}
    stacked, _ = relax_list(
        net, [x, *(torch.cat([t, t]) for t in free)], iterations=4, groups=update_groups(net, "even_odd"),
        nudge=Nudge(torch.cat([F.one_hot(y, 10).double()] * 2), betas), tol=None, drive=input_drive(net, x),
        cache=cache,
    )  # fmt: skip
    stacked = stacked[1:]
    s1, s2 = [t[:4] for t in stacked], [t[4:] for t in stacked]
    scale = 1 / (0.2 * 4)
    coefficient = torch.cat([x.new_full((4,), scale), x.new_full((4,), -scale)])
    expected = parameter_gradients(net, torch.cat([x, x]), [torch.cat([a, b]) for a, b in zip(s1, s2, strict=True)],
                                   coefficient)  # fmt: skip
    for got in (
        hebbian_difference(net, x, s1, s2, scale, stacked=stacked, cache=cache),  # argmax from the cache
        hebbian_difference(net, x, s1, s2, scale),
    ):
        for name, g in expected.items():
            torch.testing.assert_close(got[name], g, rtol=1e-10, atol=1e-12)


def test_anderson_reaches_the_same_fixed_point_in_fewer_sweeps():
    net = small_net("hopfield_resnet13")  # 16x16 input, 1/16 width, float64
    x, _ = batch(net, n=8)
    plain, plain_stats = relax(net, x, iterations=20_000, order="coloring", tol=1e-10)
    fast, stats = relax(net, x, iterations=20_000, order="coloring", tol=1e-10, solver="anderson", memory=5)
    assert plain_stats.residual <= 1e-10 and stats.residual <= 1e-10
    assert stats.iterations < plain_stats.iterations / 2  # measured 151 against 352
    for a, b in zip(fast, plain, strict=True):
        assert ((a - b).norm() / b.norm()).item() <= 1e-7
    # The projection keeps every iterate in the box; a nudged phase converges to the nudged fixed point.
    assert all(((s >= 0) & (s <= a)).all() for s, a in zip(fast[:-1], net.alphas.tolist(), strict=True))


def test_anderson_on_vgg5_and_with_a_nudge():
    net = small_net("vgg5")
    x, y = batch(net)
    free, _ = relax(net, x, iterations=5000, order="even_odd", tol=1e-12)
    nudge = _nudge(y, 0.1)
    plain, _ = relax(net, x, free, iterations=5000, nudge=nudge, tol=1e-12)
    fast, stats = relax(net, x, free, iterations=5000, nudge=nudge, tol=1e-12, solver="anderson")
    assert stats.residual <= 1e-12
    _close(fast, plain, rtol=1e-8, atol=1e-9)


def test_anderson_stops_at_the_budget_and_validates_its_memory():
    net = small_net("hopfield_resnet13")
    x, _ = batch(net)
    _, stats = relax(net, x, iterations=7, solver="anderson", memory=2)
    assert stats.iterations == 7 and 0 < stats.residual < 1
    states, none = relax(net, x, iterations=0, solver="anderson")
    assert none.iterations == 0 and all((s == 0).all() for s in states)
    with pytest.raises(ValueError, match="anderson memory must be a positive integer"):
        anderson_relax(net, [x, *net.zero_states(4, dtype=torch.float64)], iterations=1,
                       groups=[[1]], nudge=None, tol=None, drive=input_drive(net, x), memory=0)  # fmt: skip
    with pytest.raises(ValueError, match="unknown solver 'newton'; valid choices: fixed_point, anderson"):
        relax(net, x, iterations=1, solver="newton")


def test_centered_ep_with_anderson_matches_the_reference_gradient():
    torch.manual_seed(0)
    net = small_net("hopfield_resnet13")
    x, y = batch(net)
    free = converged(net, x)
    ref = reference_gradients(net, x, y, free)
    est = EquilibriumProp(
        beta=1e-3,
        free_iterations=20_000,
        nudge_iterations=20_000,
        order="coloring",
        tol=1e-14,
        solver="anderson",
        clip_norm=None,
    ).estimate(net, x, y, free)
    total = sum((est.grads[n] - g).pow(2).sum() for n, g in ref.grads.items())
    assert (total / sum(g.pow(2).sum() for g in ref.grads.values())).sqrt().item() <= 1e-4
    for name, g in ref.grads.items():
        e = est.grads[name]
        assert F.cosine_similarity(e.flatten(), g.flatten(), dim=0).item() >= 0.999, name
        assert ((e - g).norm() / g.norm()).item() <= 1e-2, name


def test_anderson_runs_the_free_phase_and_leaves_the_nudged_phases_plain():
    net = small_net("hopfield_resnet13")
    x, y = batch(net)
    start = converged(net, x)
    common = {"beta": 0.1, "free_iterations": 0, "nudge_iterations": 7, "order": "coloring"}
    plain = EquilibriumProp(**common).estimate(net, x, y, start)
    mixed = EquilibriumProp(**common, solver="anderson").estimate(net, x, y, start)
    for a, b in zip(plain.nudged_states, mixed.nudged_states, strict=True):
        _close(a, b)
    est = EquilibriumProp(
        beta=0.1, free_iterations=30, nudge_iterations=1, order="coloring", solver="anderson"
    )
    _close(
        est.estimate(net, x, y).free_states,
        relax(net, x, iterations=30, order="coloring", solver="anderson")[0],
    )


@pytest.mark.parametrize("arch", ["vgg5", "hopfield_resnet13"])
def test_static_buffer_phase_equals_relax(arch):
    """The body a CUDA graph captures, run eagerly on static buffers (the capture itself needs a GPU)."""
    net = small_net(arch)
    x, y = batch(net)
    groups = update_groups(net, "even_odd")
    free_phase = GraphedPhase(net, x, copies=1, iterations=6, groups=groups, nudged=False)
    free, stats = free_phase.run(x, None)
    expected, expected_stats = relax(net, x, iterations=6, order=groups)
    _close(free, expected)
    assert stats.iterations == 6 and stats.residual == pytest.approx(expected_stats.residual, rel=1e-9)
    nudged_phase = GraphedPhase(net, x, copies=2, iterations=4, groups=groups, nudged=True)
    betas = torch.cat([x.new_full((4, 1), -0.1), x.new_full((4, 1), 0.1)])
    target = F.one_hot(y, 10).double()
    both, _ = nudged_phase.run(x, free, torch.cat([target, target]), betas)
    _close([t[4:] for t in both], straightforward_relax(net, x, free, 4, "even_odd", _nudge(y, 0.1)))
    again, _ = free_phase.run(x, None)  # buffers are reused; outputs are fresh tensors
    _close(again, free)


def test_channels_last_gives_the_same_estimate():
    for arch in ("vgg5", "hopfield_resnet13"):
        net = small_net(arch)
        x, y = batch(net)
        ep = EquilibriumProp(beta=0.1, free_iterations=8, nudge_iterations=4)
        plain = ep.estimate(net, x, y)
        net.to(memory_format=torch.channels_last)
        fast = ep.estimate(net, x.contiguous(memory_format=torch.channels_last), y)
        assert fast.free_states[0].is_contiguous(memory_format=torch.channels_last)
        for name, g in plain.grads.items():
            torch.testing.assert_close(fast.grads[name], g, rtol=1e-9, atol=1e-11)


def test_compiled_sweeps_match_eager():
    net = build_tiny("vgg5").double()  # max-pool couplings: the compiled sweep must honour the argmax cache
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    eager, _ = relax(net, x, iterations=5)
    compiled, _ = relax(net, x, iterations=5, compile=True)
    _close(compiled, eager)
    est = EquilibriumProp(free_iterations=4, nudge_iterations=3, compile=True).estimate(
        net, x, torch.tensor([1, 2])
    )
    ref = EquilibriumProp(free_iterations=4, nudge_iterations=3).estimate(net, x, torch.tensor([1, 2]))
    for name, g in ref.grads.items():
        torch.testing.assert_close(est.grads[name], g, rtol=1e-9, atol=1e-11)


def build_tiny(arch):
    torch.manual_seed(0)
    from ep_core.numerics.networks import build_network

    return build_network(arch, width=1 / 16, input_size=16)


def test_flop_count_is_exact():
    from torch.utils.flop_counter import FlopCounterMode

    for arch in ("vgg5", "hopfield_resnet13"):
        net = build_tiny(arch)
        x = torch.randn(3, 3, 16, 16)
        states, _ = relax(net, x, iterations=2)
        ops = minimal_kernel_set(net, x, states)
        with FlopCounterMode(display=False) as counter:
            for op in ops:
                op()
        assert counter.get_total_flops() == 3 * iteration_flops(net)
        with FlopCounterMode(display=False) as counter:
            input_drive(net, x)
        assert counter.get_total_flops() == 3 * sum(
            2 * edge_macs(e) for e in net.edges.values() if e.pre == 0
        )
    assert ep_step_flops(net, 1, 0, 0) == sum(
        2 * edge_macs(e) for e in net.edges.values() if e.pre == 0
    ) + 2 * sum(2 * edge_macs(e) for e in net.edges.values())


def test_speed_keys_reach_the_learner_and_bad_values_are_one_line_errors():
    config = resolve(
        build_config(
            {"data": {"name": "synthetic"}, "model": {"width": 0.0625}},
            ["ep.solver=anderson", "ep.anderson_memory=3", "ep.channels_last=true", "ep.tol=1e-4"],
        )
    )
    net = build_tiny("hopfield_resnet13")
    learner = EPLearner(net, config)
    e = learner.estimator
    assert (e.solver, e.anderson_memory, e.tol, e.compile, e.cuda_graphs) == (
        "anderson",
        3,
        1e-4,
        False,
        False,
    )
    assert net.edges["h1a_to_h1b"].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    step = learner.train_step(x, y, opt, None)
    assert step.scalars["free_iterations"] <= 120
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in step.carry)  # not a view into the stack
    assert learner.evaluate([(x, y)])["residual"] <= 1e-4
    for overrides, message in (
        (["ep.solver=newton"], "ep.solver: 'newton' is not allowed; valid choices: fixed_point, anderson"),
        (["ep.anderson_memory=0"], "ep.anderson_memory: must be >= 1"),
        (["ep.cuda_graphs=true", "ep.tol=1e-4"], "ep.cuda_graphs: needs fixed-length phases"),
    ):
        with pytest.raises(ValueError, match=message):
            build_config({}, overrides)


def test_bench_times_the_learners_own_training_step():
    from ep_core.bench.step import ep_parts, time_steps
    from ep_core.bench.workload import BenchSettings, EPOptions, ep_training_step

    s = BenchSettings(arch="vgg5", width=0.0625, input_size=16, batch_size=2)
    step = ep_training_step(s, torch.device("cpu"))
    assert isinstance(step.learner, EPLearner) and step.learner.net is step.model
    assert len(step.optimizer.param_groups) == len(list(step.model.parameters()))  # training's groups
    samples = time_steps(step, torch.device("cpu"), warmup=1, repeats=2)
    assert step.warm is not None  # each step warm-starts from the previous one's carry
    parts = ep_parts(samples)
    assert parts["update"] == [result.seconds["step"] for _, result in samples]  # the learner's own clock
    assert parts["minus"] == parts["plus"] == [t / 2 for t in parts["nudged"]]  # one stacked ±β phase
    for i, total in enumerate(parts["step"]):
        assert total >= sum(parts[k][i] for k in ("free", "nudged", "gradient", "update"))
    # One phase after the other: each is timed on its own, and the two make up the nudged time.
    separate = BenchSettings(
        arch="vgg5", width=0.0625, input_size=16, batch_size=2, ep=EPOptions(batch_phases=False)
    )
    parts = ep_parts(time_steps(ep_training_step(separate, torch.device("cpu")), torch.device("cpu"), 0, 2))
    for minus, plus, nudged in zip(parts["minus"], parts["plus"], parts["nudged"], strict=True):
        assert minus > 0 and plus > 0 and minus + plus == pytest.approx(nudged, rel=1e-9)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the CPU probe reads /proc")
def test_memory_probes_import_this_checkout_from_any_directory(tmp_path, monkeypatch):
    import dataclasses

    from ep_core.bench.memory import peak_memory
    from ep_core.bench.workload import BenchSettings, EPOptions

    s = BenchSettings(arch="vgg5", width=0.0625, input_size=16, batch_size=2, ep=EPOptions(chunk_size=1),
                      compare_dtypes=("float64",))  # fmt: skip
    assert BenchSettings.from_dict(dataclasses.asdict(s)) == s  # what the probe's process rebuilds
    decoy = tmp_path / "ep_core"  # an ep_core in the working directory must not shadow this one
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy ep_core was imported')\n")
    monkeypatch.chdir(tmp_path)
    ep, bp = peak_memory(s, ["ep", "bp"])
    assert ep["method"] == bp["method"] == "cpu_peak_rss_increment" and ep["peak_rss_mb"] > 0
