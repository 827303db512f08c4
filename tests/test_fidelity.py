"""The gradient-fidelity monitor (numerics/fidelity.py, training/fidelity.py) and `ep.recipe: auto`."""

import dataclasses
import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from ep_core.numerics.estimators import EquilibriumProp
from ep_core.numerics.fidelity import REFERENCE_TOL, converged, gradient_cosine, probe
from ep_core.numerics.naming import mlflow_metric_name
from ep_core.numerics.networks import build_network
from ep_core.training.config import FIDELITY_EVERY, ConfigError, build_config, resolve
from ep_core.training.fidelity import AutoSweeps, ladder
from ep_core.training.records import HISTORY_MEASUREMENTS
from ep_core.training.run import train


def _tiny(dtype=torch.float32):
    torch.manual_seed(0)
    net = build_network("vgg5", width=1 / 16, input_size=16).to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=g).to(dtype)
    y = torch.randint(0, 10, (8,), generator=g)
    return net, x, y


EP = EquilibriumProp(beta=0.2, free_iterations=30, nudge_iterations=12)


def test_the_float32_reference_is_the_converged_gradient():
    net, x, y = _tiny()
    reference = converged(EP).estimate(net, x, y, None)
    net64, x64 = _tiny(torch.float64)[:2]
    tight = converged(EP, tol=1e-11, cap=5000).estimate(net64, x64, y, None)
    assert tight.stats["free"].residual < 1e-10  # the float64 one really converged
    as64 = {k: v.double() for k, v in reference.grads.items()}
    assert gradient_cosine(as64, tight.grads) > 0.9999
    assert reference.stats["free"].residual <= REFERENCE_TOL


def test_truncated_phases_lower_the_cosine_and_converged_ones_give_one():
    net, x, y = _tiny()
    same, reference = probe(net, x, y, converged(EP))
    assert same.cosine > 0.99999 and same.norm_error < 1e-3 and same.free_distance < 1e-4
    short = probe(
        net, x, y, dataclasses.replace(EP, free_iterations=2, nudge_iterations=1), reference=reference
    )[0]
    longer = probe(net, x, y, EP, reference=reference)[0]
    assert short.cosine < longer.cosine < 1
    assert short.free_distance > longer.free_distance > 0
    assert set(short.tensor_cosines) == {name for name, _ in net.named_parameters()}
    row = short.row()
    assert (
        row["fidelity/cosine"] == short.cosine
        and "fidelity/cosine." + next(iter(short.tensor_cosines)) in row
    )
    assert mlflow_metric_name("fidelity/cosine") == "fidelity/cosine"  # its own chart group in MLflow


def test_the_ladder_runs_from_the_floor_to_the_cap_in_steps_of_about_root_two():
    assert ladder((120, 50), 10) == [
        (11, 5),
        (15, 6),
        (21, 9),
        (30, 12),
        (42, 18),
        (60, 25),
        (85, 35),
        (120, 50),
    ]
    assert ladder((40, 15), 10) == [(10, 4), (14, 5), (20, 8), (28, 10), (40, 15)]
    assert ladder((8, 3), 10) == [(8, 3)]  # a cap below the floor is the only rung


def _auto(rung=None) -> AutoSweeps:
    return AutoSweeps(EquilibriumProp(), target=0.9, floor=10, rung=rung)


def test_auto_bisects_first_then_moves_one_rung_down_or_up_to_the_target():
    cosines = [0.5, 0.6, 0.7, 0.8, 0.88, 0.91, 0.95, 0.99]  # rungs 11 ... 120 free sweeps
    asked: list[int] = []

    def at(rung: int) -> float:
        asked.append(rung)
        return cosines[rung]

    auto = _auto()
    assert auto.choose(at, current=0.99) == 5 and len(asked) == 3  # bisection: log2(8) trials
    assert auto.counts() == (60, 25)
    cosines[4] = 0.92  # the network moved: one rung lower now keeps the target
    assert auto.choose(at, current=cosines[5]) == 4
    cosines[4], cosines[5], cosines[6] = 0.7, 0.8, 0.93  # and back: climb until the target holds
    assert auto.choose(at, current=cosines[4]) == 6
    assert auto.choose(lambda rung: 0.0, current=0.95) == 6  # the rung below misses: stay


def test_fidelity_every_defaults_on_for_truncated_phases_only():
    def every(*overrides):
        return resolve(build_config({"data": {"name": "synthetic"}}, list(overrides))).train.fidelity_every

    assert every() == 0  # the authors' 120 / 50 fixed-length phases: the converged gradient already
    assert every("ep.recipe=fast") == every("ep.recipe=auto") == every("ep.recipe=adaptive") == FIDELITY_EVERY
    assert every("ep.free_iterations=30") == FIDELITY_EVERY
    assert every("ep.recipe=fast", "train.fidelity_every=7") == 7
    assert every("model.arch=vgg5_bp") == 0
    for bad, message in (
        (["ep.recipe=auto", "train.fidelity_every=0"], "train.fidelity_every must not be 0"),
        (["train.fidelity_min=2"], "train.fidelity_min: a cosine, must be in [-1, 1]"),
        (["ep.recipe=auto", "ep.tol=0.001"], "ep.tol and ep.nudge_tol must be null"),
        (["ep.auto_floor=0"], "ep.auto_floor: must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            build_config({"data": {"name": "synthetic"}}, bad)


# A tiny VGG5 on synthetic data (its relaxation converges in a few dozen sweeps: cheap probes), 6 batches an
# epoch, 2 epochs.
RUN = {
    "data": {"name": "synthetic", "synthetic_train": 48, "synthetic_test": 16},
    "model": {"arch": "vgg5", "width": 0.0625},
    "ep": {"free_iterations": 6, "nudge_iterations": 3, "eval_iterations": 6},
    "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "device": "cpu", "fidelity_batch": 4},
}


def _history(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "history.csv")


def test_a_truncated_run_records_its_fidelity_and_warns_once(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(build_config(RUN, ["train.fidelity_every=4", "train.fidelity_min=1"]), out) == 0
    history, metrics = _history(out), json.loads((out / "metrics.json").read_text())
    # steps 4 and 8 of 12 (global, 0-based): one probe in each epoch
    assert history["fidelity/probes"].tolist() == [1, 1]
    assert ((history["fidelity/cosine"] > -1) & (history["fidelity/cosine"] < 1)).all()
    assert (history["fidelity/below_min"] == 1).all()  # no cosine reaches 1
    summary = metrics["fidelity"]
    assert summary["probes"] == 2 and summary["below_min"] == 2
    assert summary["cosine_last"] == history["fidelity/cosine"].iloc[-1]
    assert summary["cosine_min"] == history["fidelity/cosine_min"].min()
    assert 0 < summary["share_of_training"] < 1
    assert capsys.readouterr().err.count("warning: gradient fidelity") == 1  # below, and stays below


def test_the_monitor_is_off_when_asked_and_never_changes_training(tmp_path):
    off, on = tmp_path / "off", tmp_path / "on"
    assert train(build_config(RUN, ["train.fidelity_every=0"]), off) == 0
    assert not any(c.startswith("fidelity/") for c in _history(off).columns)
    assert json.loads((off / "metrics.json").read_text())["fidelity"] is None
    # probes draw no random numbers and touch no weight: a monitored run trains the same network
    assert train(build_config(RUN, ["train.fidelity_every=2"]), on) == 0
    assert _history(on)["fidelity/probes"].sum() == 5  # steps 2, 4, …, 10 of 12
    a, b = (torch.load(p / "model.pt", weights_only=True) for p in (off, on))
    assert all(torch.equal(a[k], b[k]) for k in a)
    same = [c for c in _deterministic(off).columns if not c.startswith("fidelity/")]
    pd.testing.assert_frame_equal(_deterministic(off)[same], _deterministic(on)[same], check_exact=True)


def _deterministic(out: Path) -> pd.DataFrame:
    history = _history(out)
    return history.drop(columns=[c for c in history.columns if c in HISTORY_MEASUREMENTS])


def test_auto_trains_on_its_ladder_and_resumes_as_an_uninterrupted_run(tmp_path, monkeypatch):
    from ep_core.training.run import Run

    config = build_config(RUN, ["ep.recipe=auto", "ep.free_iterations=12", "ep.nudge_iterations=5",
                                "ep.auto_floor=2", "ep.auto_target=0.5", "train.fidelity_every=3"])  # fmt: skip
    whole = tmp_path / "whole"
    assert train(config, whole) == 0
    history = _deterministic(whole)
    rungs = ladder((12, 5), 2)
    chosen = list(zip(history["auto/free_iterations"], history["auto/nudge_iterations"], strict=True))
    assert all(c in rungs for c in chosen)
    assert (history["free_iterations"] <= 12).all() and (history["fidelity/probes"] == [2, 2]).all()
    saved = (whole / "config.yaml").read_text()
    assert "recipe: auto" in saved and "free_iterations: 12" in saved  # the cap, as configured

    finish_epoch = Run.finish_epoch

    def stopped_after_the_first(self):
        if self.epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # stops the run after this epoch, checkpointed
        return finish_epoch(self)

    monkeypatch.setattr(Run, "finish_epoch", stopped_after_the_first)
    resumed = tmp_path / "resumed"
    assert train(config, resumed) == 128 + signal.SIGTERM
    monkeypatch.setattr(Run, "finish_epoch", finish_epoch)
    assert train(config, resumed) == 0
    pd.testing.assert_frame_equal(_deterministic(resumed), history, check_exact=True)
    a, b = (torch.load(p / "model.pt", weights_only=True) for p in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
