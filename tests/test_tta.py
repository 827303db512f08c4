"""`ep-core bench-tta`'s protocol: the paired statistics, the run order, the selection rule, the equal-compute
control, resuming a partial result, the JSON/markdown/figure, and one tiny end-to-end run."""

import dataclasses
import json
import math
from pathlib import Path

import pytest

from ep_core.bench import tta
from ep_core.bench.tta import Settings, check, parse_recipe, run_protocol
from ep_core.bench.tta_report import format_markdown, load_partial, write_figure
from ep_core.bench.tta_runs import (
    backfill_relaxation,
    curve,
    epoch_times,
    final_accuracy,
    final_cosine,
    relaxation_seconds,
)
from ep_core.bench.tta_stats import (
    choose_lr,
    fitting_epochs,
    paired_difference,
    rotated_order,
    select_candidate,
    t_quantile,
    times,
    verdict,
)
from ep_core.bench.tta_summary import control_epochs, selection, summarise, summary_line
from ep_core.cli import main
from ep_core.training.config import load_config

# ---- statistics ------------------------------------------------------------------------------------------


def test_paired_interval_against_a_hand_computed_one():
    recipe = {1: 90.0, 2: 92.0, 3: 91.0, 7: 50.0}  # seed 7 has no partner: left out
    authors = {1: 89.0, 2: 90.0, 3: 91.5}
    d = paired_difference(recipe, authors)
    # differences 1, 2, -0.5: mean 5/6, sd sqrt(((1/6)^2 + (7/6)^2 + (4/3)^2) / 2) = sqrt(19/12)
    sd = math.sqrt(19 / 12)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2) from the table
    assert (d.n, d.mean, d.sd) == (3, pytest.approx(5 / 6), pytest.approx(sd))
    assert (d.low, d.high) == (pytest.approx(5 / 6 - half), pytest.approx(5 / 6 + half))
    assert d.low == pytest.approx(-2.2925, abs=1e-4) and d.high == pytest.approx(3.9591, abs=1e-4)
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)
    one = paired_difference({1: 3.0}, {1: 1.0})
    assert (one.mean, one.sd, one.low, one.high) == (2.0, None, None, None)
    with pytest.raises(ValueError, match="at least one seed that both sides have"):
        paired_difference({1: 1.0}, {2: 1.0})


def test_verdict_states_each_target_that_fails():
    good = paired_difference({1: 90.0, 2: 90.5, 3: 90.2}, {1: 90.1, 2: 90.3, 3: 90.3})
    holds, why = verdict(3.2, good)
    assert holds and "3.20x >= 3x" in why and "inside ±1 points" in why
    holds, why = verdict(2.9, good)
    assert not holds and why == "training-time speed-up 2.90x < 3x"
    holds, why = verdict(2.9981, good)  # a miss that two decimals would show as the target itself
    assert not holds and why == "training-time speed-up 2.998x < 3x"
    assert (times(3.004), times(2.994)) == ("3.00x", "2.99x")
    wide = paired_difference({1: 88.0, 2: 92.0, 3: 89.0}, {1: 90.0, 2: 90.0, 3: 90.0})
    holds, why = verdict(3.5, wide)
    assert not holds and "< -1" in why and "> +1" in why
    holds, why = verdict(None, paired_difference({1: 1.0}, {1: 1.0}))
    assert not holds and "unknown" in why and "no interval from 1 seed(s)" in why


def test_selection_rule_picks_the_cheapest_within_tolerance():
    candidates = {
        "a": {"val_acc": 94.5, "train_seconds": 10.0},
        "b": {"val_acc": 93.0, "train_seconds": 5.0},
        "c": {"val_acc": 95.5, "train_seconds": 20.0},
    }
    reference = {"val_acc": 95.0, "train_seconds": 30.0}
    assert select_candidate(candidates, reference, 1.0) == "a"  # b is cheaper but 2 points below
    assert select_candidate(candidates, reference, 2.0) == "b"
    assert select_candidate(candidates, reference, 0.0) == "c"
    assert select_candidate(candidates, {"val_acc": 99.0}, 1.0) is None
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        select_candidate(candidates, reference, -1.0)


def test_lr_rule_picks_the_best_rate_at_which_every_network_lived():
    rows = [
        {
            "lr": 0.1,
            "lived": False,
            "val_acc": 60.0,
        },  # one network died: its mean is low, but not why it loses
        {"lr": 0.05, "lived": False, "val_acc": 96.0},
        {"lr": 0.025, "lived": True, "val_acc": 94.0},
        {"lr": 0.0125, "lived": True, "val_acc": 94.0},
    ]
    assert choose_lr(rows) == 0.025  # the best that lived; a tie goes to the first given
    assert choose_lr([*rows[:3], {"lr": 0.01, "lived": True, "val_acc": 95.0}]) == 0.01
    assert choose_lr(rows[:2]) is None
    assert choose_lr([{"lr": 0.1, "lived": True, "val_acc": None}]) is None  # no completed run


def test_run_order_is_counterbalanced():
    assert [rotated_order(["a", "b"], i) for i in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    firsts = [rotated_order(["a", "b", "c"], i)[0] for i in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    assert all(sorted(rotated_order(["a", "b", "c"], i)) == ["a", "b", "c"] for i in range(3))


def test_equal_compute_control_gets_the_whole_epochs_that_fit():
    assert (
        fitting_epochs(100.0, 30.0) == 3
        and fitting_epochs(90.0, 30.0) == 3
        and fitting_epochs(29.0, 30.0) == 1
    )
    runs = [
        _run("authors", 1, train=300.0, epochs=10),
        _run("authors", 2, train=320.0, epochs=10),  # 31 s per epoch on average
        _run("fast", 1, train=100.0, epochs=10),
        _run("fast", 2, train=90.0, epochs=10),
        _run("fast", 3, train=1.0, epochs=10, phase="control"),  # not a main run: ignored
    ]
    info = control_epochs(runs, "authors", "fast")
    assert info == {"name": "authors@fast-time", "of": "fast", "epochs": 3, "budget_seconds": 95.0,
                    "reference_seconds_per_epoch": 31.0}  # fmt: skip
    assert control_epochs(runs, "authors", "auto") is None


def test_wall_time_split_into_training_and_evaluation_per_epoch():
    rows = [
        {"epoch": "1", "train_seconds": "10", "epoch_seconds": "12.5", "test_acc": "50", "val_acc": ""},
        {"epoch": "2", "train_seconds": "11", "epoch_seconds": "13", "test_acc": "60", "val_acc": "58"},
    ]
    train, evaluation, source = epoch_times(rows)
    assert (train, evaluation, source) == ([10.0, 11.0], [2.5, 2.0], "history train_seconds")
    assert [(p["train_seconds"], p["test_acc"], p["val_acc"]) for p in curve(rows, train)] == [
        (10.0, 50.0, None), (21.0, 60.0, 58.0)]  # fmt: skip
    # a history without train_seconds: the timed phases of the steps stand in
    old = [{"epoch": "1", "free_seconds": "4", "nudged_seconds": "3", "gradient_seconds": "0.5",
            "step_seconds": "0.5", "epoch_seconds": "10", "test_acc": "1"}]  # fmt: skip
    train, evaluation, source = epoch_times(old)
    assert (train, evaluation) == ([8.0], [2.0]) and source.startswith("sum of the timed step phases")


def test_relaxation_seconds_and_their_backfill_into_an_older_record(tmp_path):
    """The free and nudged phases' seconds of a run; a record from before the field gets them from its
    history only while that history is the same run's (its training seconds agree)."""
    rows = [{"epoch": str(e), "free_seconds": "4", "nudged_seconds": "3", "gradient_seconds": "0.5",
             "train_seconds": "8.5", "epoch_seconds": "10"} for e in (1, 2)]  # fmt: skip
    assert relaxation_seconds(rows) == 14.0
    assert relaxation_seconds([{k: v for k, v in rows[0].items() if k != "nudged_seconds"}]) is None
    (tmp_path / "history.csv").write_text(
        ",".join(rows[0]) + "\n" + "\n".join(",".join(r.values()) for r in rows) + "\n"
    )
    same, other = (
        {"status": "completed", "train_seconds": 17.0},
        {"status": "completed", "train_seconds": 20.0},
    )
    backfill_relaxation(same, tmp_path)
    backfill_relaxation(other, tmp_path)  # another run's folder now: its figure is not this run's
    assert same["relaxation_seconds"] == 14.0 and "relaxation_seconds" not in other
    missing = {"status": "completed", "train_seconds": 17.0}
    backfill_relaxation(missing, tmp_path / "gone")
    failed = {"status": "diverged"}  # a run that never completed has no training seconds to compare
    backfill_relaxation(failed, tmp_path)
    assert "relaxation_seconds" not in missing and failed == {"status": "diverged"}


# ---- summaries and output --------------------------------------------------------------------------------


def _run(
    recipe,
    seed,
    *,
    acc=90.0,
    train=100.0,
    epochs=3,
    phase="main",
    fidelity=None,
    val=None,
    status="completed",
    relax=None,
):
    curve = [{"epoch": e + 1, "train_seconds": train * (e + 1) / epochs, "test_acc": acc - (epochs - e - 1),
              "val_acc": None} for e in range(epochs)]  # fmt: skip
    return {
        "recipe": recipe, "seed": seed, "phase": phase, "status": status, "epochs": epochs, "wall_seconds": train + 20,
        "train_seconds": train, "eval_seconds": 10.0, "probe_seconds": 0.0, "test_acc": acc, "test_acc_own": acc - 1,
        "own_eval_iterations": 40, "free_sweeps": 40.0, "nudged_sweeps": 15.0, "fidelity": fidelity, "val_acc": val,
        "curve": curve, **({} if relax is None else {"relaxation_seconds": relax}),
    }  # fmt: skip


def _fake_runs():
    probes = {"probes": 2, "cosine_last": 0.97, "cosine_min": 0.95, "cosine_mean": 0.96}
    runs = []
    for seed, (a, f, g) in zip(
        range(1, 6),
        [(90, 89.5, 91.5), (91, 91.2, 92), (92, 91.5, 93.5), (90, 90.1, 91), (89, 88.6, 90.5)],
        strict=True,
    ):
        runs += [_run("authors", seed, acc=a, train=300.0 + seed), _run("fast", seed, acc=f, train=90.0 + seed),
                 _run("auto", seed, acc=g, train=120.0, fidelity=probes)]  # fmt: skip
    return runs


def test_summary_speedup_paired_difference_and_each_recipes_name():
    recipes = summarise(_fake_runs(), ["authors", "fast", "auto"], "authors")
    fast, auto = recipes["fast"], recipes["auto"]
    assert fast["speedup_training"] == pytest.approx(303 / 93)
    assert fast["speedup_per_seed"]["1"] == pytest.approx(301 / 91)
    diffs = [-0.5, 0.2, -0.5, 0.1, -0.4]
    assert fast["diff_vs_reference"]["mean"] == pytest.approx(sum(diffs) / 5)
    assert fast["diff_vs_reference"]["n"] == 5 and fast["verdict"]["holds"]
    assert (
        not auto["verdict"]["holds"]
        and "2.52x < 3x" in auto["verdict"]["why"]
        and "> +1" in auto["verdict"]["why"]
    )
    assert (
        fast["fidelity"] is None
        and auto["fidelity"]["cosine_min"] == 0.95
        and auto["fidelity"]["probes"] == 10
    )
    assert "verdict" not in recipes["authors"] and recipes["authors"]["test_acc"]["mean"] == pytest.approx(
        90.4
    )
    line = summary_line("digits", recipes, "authors")
    assert "fast: 3.26x less training time than authors" in line and "auto: 2.52x" in line
    assert line.count("target holds") == 1 and line.count("does not hold") == 1


def test_where_the_speedup_comes_from_relaxation_and_the_rest_of_the_loop():
    runs = []
    for seed in range(1, 6):
        runs += [_run("authors", seed, train=300.0 + seed, relax=290.0 + seed),
                 _run("fast", seed, acc=89.0, train=90.0 + seed, relax=85.0 + seed)]  # fmt: skip
    fast = summarise(runs, ["authors", "fast"], "authors")["fast"]
    assert fast["speedup_relaxation"] == pytest.approx(293 / 88) and fast[
        "speedup_training"
    ] == pytest.approx(303 / 93)
    assert (fast["rest_seconds"], fast["reference_rest_seconds"]) == pytest.approx((5.0, 10.0))
    result = {
        "dataset": "digits", "complete": True, "reference": "authors", "authors_eval_iterations": 120,
        "setting": {"seeds": [1, 2, 3, 4, 5], "width": 0.0625, "batch_size": 32, "lr": 0.05, "epochs": 3},
        "recipes": {"authors": summarise(runs, ["authors"], "authors")["authors"], "fast": fast},
        "control_comparison": None, "summary": "", "load_average_before": [0.1], "load_average_after": [0.2],
        "torch_threads": 2, "cpu_count": 2, "elapsed_seconds": 60.0,
    }  # fmt: skip
    assert (
        "- fast: relaxation (free and nudged phases) 3.33x faster than in authors; the rest of the training loop "
        "(Hebbian gradient, update, monitor probes, data), which sweep counts do not cut, 5.0 s a run against "
        "10.0 s." in format_markdown(result)
    )
    del runs[0]["relaxation_seconds"]  # one run from before the field: no split, and no line
    fast = summarise(runs, ["authors", "fast"], "authors")["fast"]
    assert "speedup_relaxation" not in fast
    assert "relaxation (free" not in format_markdown(result | {"recipes": {"fast": fast}})


def test_markdown_figure_and_partial_json(tmp_path):
    runs = _fake_runs()
    setting = {"seeds": [1, 2, 3, 4, 5], "width": 0.0625, "batch_size": 32, "lr": 0.05, "epochs": 3}
    recipes = summarise(runs, ["authors", "fast", "auto"], "authors")
    result = {
        "dataset": "digits", "complete": False, "setting": setting, "reference": "authors", "recipes": recipes,
        "authors_eval_iterations": 120, "control_comparison": None, "summary": summary_line("digits", recipes, "authors"),
        "load_average_before": [0.1], "load_average_after": [0.2], "torch_threads": 2, "cpu_count": 2,
        "elapsed_seconds": 600.0, "runs": runs,
    }  # fmt: skip
    text = format_markdown(result)
    assert "PARTIAL" in text and "authors' test: 120 sweeps" in text
    row = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| 3.26x |" in row["| fast"] and row["| fast"].endswith("| – |")  # no probes: a dash
    assert "0.970 / 0.950 (10)" in row["| auto"] and "| 1.00 |" in row["| authors"]
    assert "- fast: target holds" in text and "- auto: target does not hold" in text
    assert "died" not in text
    runs[1]["dead_layers"] = {"h4b": 2}  # fast, seed 1: its last hidden layer died in epoch 2
    recipes = summarise(runs, ["authors", "fast", "auto"], "authors")
    assert recipes["fast"]["dead_layers"] == {"1": {"h4b": 2}} and recipes["auto"]["dead_layers"] == {}
    noted = format_markdown(result | {"recipes": recipes})
    assert "- fast: a hidden layer died (every unit at 0; the network stopped learning) in seed 1: h4b from " \
           "epoch 2." in noted  # fmt: skip
    # The secondary description leaves out seed 1 (a dead network on either side), never the verdict's seeds.
    lived = recipes["fast"]["diff_both_lived"]
    assert (lived["n"], lived["seeds_left_out"], recipes["fast"]["diff_vs_reference"]["n"]) == (4, [1], 5)
    assert lived["mean"] == pytest.approx((0.2 - 0.5 + 0.1 - 0.4) / 4)  # _fake_runs' seeds 2-5
    assert f"- fast − authors where both networks kept every layer (seed(s) 1 left out; a secondary " \
           f"description, not the target's test): {lived['mean']:+.2f} points [" in noted  # fmt: skip
    assert "diff_both_lived" not in recipes["auto"]  # neither side of its seeds died: nothing to describe
    write_figure(result, tmp_path / "digits.png")
    assert (tmp_path / "digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "digits.json"
    path.write_text(json.dumps(result))
    # and the seconds the earlier attempt spent, and its load averages
    assert load_partial(path, setting) == (
        runs,
        600.0,
        {"load_average_before": [0.1], "load_average_after": [0.2]},
    )
    with pytest.raises(ValueError, match=r"other settings \(epochs: 3 != 4\); use another --out, or --fresh"):
        load_partial(path, setting | {"epochs": 4})


# ---- the protocol ----------------------------------------------------------------------------------------


def test_protocol_order_resume_and_control_without_training(tmp_path, monkeypatch):
    trained, kill_at = [], [5]

    def fake_run_one(name, config, own, authors, seed, out, threads, phase):
        trained.append(
            (name, seed, phase, config.train.epochs, config.ep.eval_iterations, own.ep.eval_iterations)
        )
        if len(trained) == kill_at[0]:
            raise KeyboardInterrupt  # killed mid-protocol
        train = {"authors": 300.0, "fast": 100.0}.get(name, 200.0)
        return _run(name, seed, acc=90.0 + seed / 10, train=train, epochs=config.train.epochs, phase=phase)

    monkeypatch.setattr(tta, "run_one", fake_run_one)
    s = Settings(dataset="synthetic", seeds=(1, 2, 3), epochs=6, warmup=False)
    with pytest.raises(KeyboardInterrupt):
        run_protocol(s, tmp_path / "r.json", tmp_path / "runs")
    partial = json.loads((tmp_path / "r.json").read_text())
    assert not partial["complete"] and len(partial["runs"]) == 4
    assert [(t[0], t[1]) for t in trained[:4]] == [("authors", 1), ("fast", 1), ("fast", 2), ("authors", 2)]
    assert all(t[4] == 120 for t in trained) and {t[0]: t[5] for t in trained} == {"authors": 120, "fast": 40}
    trained.clear()
    kill_at[0] = None
    # the first attempt took 1,000 s
    (tmp_path / "r.json").write_text(json.dumps(partial | {"elapsed_seconds": 1000.0}))
    result = run_protocol(s, tmp_path / "r.json", tmp_path / "runs")  # resumed: only the runs missing
    assert 1000.0 < result["elapsed_seconds"] < 1060.0  # both attempts' time
    assert [(t[0], t[1], t[2], t[3]) for t in trained] == [
        ("authors", 3, "main", 6), ("fast", 3, "main", 6),  # seed 3: authors first again
        *[("authors@fast-time", seed, "control", 2) for seed in (1, 2, 3)],  # 100 s fit 2 epochs of 50 s
    ]  # fmt: skip
    assert result["complete"] and result["control"]["epochs"] == 2
    assert list(result["recipes"]) == ["authors", "fast", "authors@fast-time"]
    assert "verdict" in result["recipes"]["fast"] and "verdict" not in result["recipes"]["authors@fast-time"]
    assert result["recipes"]["authors@fast-time"]["diff_vs_reference"]["n"] == 3  # compared, not judged
    assert result["control_comparison"]["a"] == "fast" and result["control_comparison"]["n"] == 3
    assert (
        "authors@fast-time: the 2 whole epoch(s) of authors (50 s each) that fit in fast's mean training time, 100 s."
        in format_markdown(result)
    )
    with pytest.raises(ValueError, match="other settings"):
        run_protocol(
            Settings(dataset="synthetic", seeds=(1, 2), warmup=False), tmp_path / "r.json", tmp_path / "runs"
        )


def test_rerunning_a_finished_protocol_keeps_its_load_averages_and_backfills_relaxation(
    tmp_path, monkeypatch
):
    """The same command on a finished result trains nothing and rewrites it with the same load averages (the
    ones measured while it trained); a record from before `relaxation_seconds` gets them from its run's
    history, so the table can say where the speed-up comes from."""

    def fake_run_one(name, config, own, authors, seed, out, threads, phase):
        train = {"authors": 300.0, "fast": 100.0}[name]
        return _run(name, seed, acc=90.0 + seed / 10, train=train, epochs=config.train.epochs, phase=phase)

    monkeypatch.setattr(tta, "run_one", fake_run_one)
    s = Settings(dataset="synthetic", seeds=(1, 2), control=None, warmup=False)
    path = tmp_path / "r.json"
    first = run_protocol(s, path, tmp_path / "runs")
    assert "speedup_relaxation" not in first["recipes"]["fast"]  # the fake records have no relaxation time
    loads = {"load_average_before": [9.0], "load_average_after": [8.0], "elapsed_seconds": 1234.0,
             "warmup_seconds": 4.5}  # fmt: skip
    path.write_text(json.dumps(first | loads))
    for r in first["runs"]:  # each run's history: 3 epochs, its training seconds, 90 % of them relaxing
        head = "epoch,free_seconds,nudged_seconds,train_seconds,epoch_seconds"
        each = r["train_seconds"] / 3
        out = tmp_path / "runs" / "main" / f"{r['recipe']}-seed{r['seed']}"
        out.mkdir(parents=True)
        body = "\n".join(f"{e},{0.6 * each},{0.3 * each},{each},{each + 1}" for e in (1, 2, 3))
        (out / "history.csv").write_text(f"{head}\n{body}\n")
    monkeypatch.setattr(tta, "run_one", lambda *a: pytest.fail("a finished protocol trained a run"))
    again = run_protocol(s, path, tmp_path / "runs")
    assert {k: again[k] for k in loads} == loads  # measured while it trained: a rewrite adds no time
    assert [r["relaxation_seconds"] for r in again["runs"]] == pytest.approx([270.0, 90.0, 90.0, 270.0])
    fast = again["recipes"]["fast"]
    assert fast["speedup_relaxation"] == pytest.approx(3.0) and fast["rest_seconds"] == pytest.approx(10.0)


def test_select_step_trains_candidates_on_selection_seeds_with_a_validation_split(tmp_path, monkeypatch):
    trained = []

    def fake_run_one(name, config, own, authors, seed, out, threads, phase):
        trained.append((name, seed, phase, config.data.val_size))
        val = {"authors": 95.0, "c20": 92.0, "c40": 94.5}.get(name)
        train = {"authors": 300.0, "c20": 50.0, "c40": 100.0}.get(name, 100.0)
        return _run(name, seed, train=train, phase=phase, val=val)

    monkeypatch.setattr(tta, "run_one", fake_run_one)
    s = Settings(
        dataset="synthetic", recipes=dict(map(parse_recipe, ["authors"])), seeds=(1, 2), control="selected",
        warmup=False, select=True, extra=["data.synthetic_train=100"],
        candidates={"c20": ["ep.recipe=fast", "ep.free_iterations=20"], "c40": ["ep.recipe=fast"]},
    )  # fmt: skip
    result = run_protocol(s, tmp_path / "r.json", tmp_path / "runs")
    select = [t for t in trained if t[2] == "select"]
    assert {t[1] for t in select} == {100, 101} and {t[3] for t in select} == {20}  # a fifth of 100
    assert [t[0] for t in select] == ["authors", "c20", "c40", "c20", "c40", "authors"]
    assert result["selection"]["chosen"] == "c40"  # c20 is cheaper but 3 points below authors
    assert [(t[0], t[1]) for t in trained if t[2] == "main"] == [
        ("authors", 1),
        ("c40", 1),
        ("c40", 2),
        ("authors", 2),
    ]
    assert {t[0] for t in trained if t[2] == "control"} == {"authors@c40-time"}
    assert selection(result["runs"], "authors", ["c20"], 0.5)["chosen"] is None


def test_select_lr_trains_every_recipe_at_every_rate_then_the_rest_at_the_chosen_one(tmp_path, monkeypatch):
    trained, dead = [], {("authors", 101, 0.05)}

    def fake_run_one(name, config, own, authors, seed, out, threads, phase):
        lr = config.optim.lr
        stops = config.train.stop_on_dead_layer
        where = out.relative_to(tmp_path / "runs").parts[:2]
        trained.append((name, seed, phase, lr, config.data.val_size, where, stops))
        if (name, seed, lr) in dead and stops:  # as run_one records a run stopped at its dead layer
            return {"recipe": name, "seed": seed, "phase": phase, "status": "diverged", "epochs": 2}
        record = _run(name, seed, train=300.0 if name == "authors" else 100.0, phase=phase, val=90 + 100 * lr)
        return record | {"dead_layers": {"h4b": 2} if (name, seed, lr) in dead else {}}

    monkeypatch.setattr(tta, "run_one", fake_run_one)
    s = Settings(dataset="synthetic", seeds=(1, 2), control=None, warmup=False, lrs=(0.05, 0.025),
                 extra=["data.synthetic_train=100"])  # fmt: skip
    result = run_protocol(s, tmp_path / "r.json", tmp_path / "runs")
    select = [t for t in trained if t[2] == "select-lr"]
    assert [(t[0], t[1], t[3]) for t in select] == [
        (name, seed, lr) for lr in (0.05, 0.025) for seed, names in ((100, "af"), (101, "fa"))
        for name in [{"a": "authors", "f": "fast"}[n] for n in names]
    ]  # fmt: skip
    assert {t[4] for t in select} == {20} and {t[5] for t in select} == {
        ("select-lr", "lr0.05"),
        ("select-lr", "lr0.025"),
    }
    # 0.05 scored higher (95 against 92.5) but one network died there
    sel = result["lr_selection"]
    assert sel["chosen"] == 0.025 and sel["candidates"][0]["died"] == ["authors seed 101"]
    assert sel["candidates"][0]["val_acc"] == pytest.approx(95.0)  # the 3 that completed
    assert sel["candidates"][1]["val_acc_by_recipe"] == {
        "authors": pytest.approx(92.5),
        "fast": pytest.approx(92.5),
    }
    main = [t for t in trained if t[2] == "main"]  # at the chosen rate, with no validation split
    assert [(t[0], t[1], t[3], t[4]) for t in main] == [
        ("authors", 1, 0.025, 0), ("fast", 1, 0.025, 0), ("fast", 2, 0.025, 0), ("authors", 2, 0.025, 0)
    ]  # fmt: skip
    assert {r["lr"] for r in result["runs"] if r["phase"] == "main"} == {0.025}
    assert result["recipes"]["authors"]["completed"] == 2  # the selection runs are not in the table
    table = format_markdown(json.loads((tmp_path / "r.json").read_text()))
    assert "batch 32, lr 0.025 (--select-lr), 3 epochs" in table
    assert "- lr 0.05: 95.00 over 4 runs; died: authors seed 101" in table
    assert "- lr 0.025: 92.50 over 4 runs; all lived **chosen**" in table
    trained.clear()
    assert run_protocol(s, tmp_path / "r.json", tmp_path / "runs")["lr_selection"]["chosen"] == 0.025
    assert trained == []  # resumed: nothing trained again
    assert {t[6] for t in select} == {True} and {t[6] for t in main} == {False}  # only a selection run stops

    dead |= {("fast", 100, 0.025)}
    with pytest.raises(ValueError, match=r"died at every candidate rate \(lr 0.05: authors seed 101; lr 0.025: "
                       r"fast seed 100\); try smaller ones"):  # fmt: skip
        run_protocol(s, tmp_path / "none.json", tmp_path / "runs")
    # a dead network rules its rate out: the rate's runs after it are not trained
    assert [(t[0], t[1]) for t in trained if t[3] == 0.025] == [("authors", 100), ("fast", 100)]
    partial = json.loads((tmp_path / "none.json").read_text())
    assert not partial["complete"] and {r["phase"] for r in partial["runs"]} == {"select-lr"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seeds": (0, 1)}, "seed 0 chose fast's sweep lengths"),
        ({"seeds": (1,)}, "at least 2 distinct seeds"),
        ({"reference": "auto"}, "--reference 'auto' is not among the recipes: authors, fast"),
        ({"control": "adaptive"}, r"--control 'adaptive': valid choices: fast \(or none\)"),
        ({"select": True, "selection_seeds": (1, 100)}, "must not overlap --seeds"),
        ({"extra": ["ep.bogus=1"]}, "bogus"),
        ({"lrs": (0.05, 0.05)}, r"--select-lr: need distinct learning rates > 0, got \[0.05, 0.05\]"),
        ({"lrs": (0.05, 0.0)}, "need distinct learning rates > 0"),
        ({"lrs": (0.05,), "selection_seeds": (1, 100)}, "must not overlap --seeds"),
        (
            {"extra": ["optim.lr=0.1"]},
            r"--set optim.lr: the learning rate is --lr \(or --select-lr's choice\)",
        ),
    ],
)
def test_bad_settings_are_one_line_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        check(Settings(**changes))


def test_cli_bad_input_names_the_valid_choices(capsys, tmp_path):
    assert main(["bench-tta", "--recipe", "quick", "--out", str(tmp_path)]) == 2
    assert "unknown recipe 'quick'; valid choices: authors, fast" in capsys.readouterr().err
    assert main(["bench-tta", "--seeds", "0,1,2", "--out", str(tmp_path)]) == 2
    assert "seed 0 chose fast's sweep lengths" in capsys.readouterr().err
    assert main(["bench-tta", "--candidate", "fast", "--out", str(tmp_path)]) == 2
    assert "--candidate: applies with --select only" in capsys.readouterr().err
    assert main(["bench-tta", "--select-lr", "0.05,0", "--out", str(tmp_path)]) == 2
    assert "--select-lr: need distinct learning rates > 0, got [0.05, 0.0]" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


# One torch thread: two threads on tiny convolutions slow down manyfold when other jobs share the cores.
TINY = ["--set", "data.synthetic_train=32", "--set", "data.synthetic_test=16", "--set", "ep.eval_iterations=8",
        "--threads", "1"]  # fmt: skip


def test_end_to_end_tiny_protocol_writes_the_documented_fields(tmp_path):
    out = tmp_path / "out"
    argv = ["bench-tta", "--dataset", "synthetic", "--seeds", "1,2", "--epochs", "1", "--batch-size", "16",
            "--recipe", "authors:ep.free_iterations=8,ep.nudge_iterations=4",
            "--recipe", "fast:ep.free_iterations=4,ep.nudge_iterations=2,ep.eval_iterations=4",
            "--reference", "authors:ep.free_iterations=8,ep.nudge_iterations=4",
            "--control", "fast:ep.free_iterations=4,ep.nudge_iterations=2,ep.eval_iterations=4",
            *TINY, "--out", str(out), "--workdir", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "synthetic.json").read_text())
    authors, fast = (r for r in result["setting"]["recipes"])
    assert result["complete"] and result["authors_eval_iterations"] == 8 and result["warmup_seconds"] > 0
    main_runs = [r for r in result["runs"] if r["phase"] == "main"]
    assert [(r["recipe"], r["seed"]) for r in main_runs] == [(authors, 1), (fast, 1), (fast, 2), (authors, 2)]
    for r in main_runs:
        assert r["status"] == "completed" and r["train_seconds_source"] == "history train_seconds"
        assert r["train_seconds"] > 0 and r["eval_seconds"] >= 0
        assert r["train_seconds"] + r["eval_seconds"] <= r["wall_seconds"]
        # plain fixed-length sweeps: the per-epoch test (authors' count) is the authors' test exactly
        assert r["test_acc"] == r["test_acc_history"] and len(r["curve"]) == 1
        assert r["tests_from_history"] == (["authors", "own"] if r["recipe"] == authors else ["authors"])
    assert {r["recipe"]: (r["free_sweeps"], r["nudged_sweeps"], r["own_eval_iterations"]) for r in main_runs} == {
        authors: (8, 4, 8), fast: (4, 2, 4)}  # fmt: skip
    control = [r for r in result["runs"] if r["phase"] == "control"]
    assert [(r["recipe"], r["seed"], r["epochs"]) for r in control] == [
        (f"{authors}@{fast}-time", s, 1) for s in (1, 2)
    ]
    summary = result["recipes"][fast]
    assert summary["diff_vs_reference"]["n"] == 2 and summary["diff_vs_reference"]["ci95_low"] is not None
    assert summary["speedup_training"] > 0 and "verdict" in summary
    assert result["summary"].startswith(f"synthetic: {fast}: ")
    assert (out / "synthetic.md").read_text().startswith("### synthetic: seeds 1, 2")
    assert (out / "synthetic.png").stat().st_size > 0
    # the reuse is sound: fast's final network under the authors' relaxation, run here, gives the same
    fast_dir, authors_dir = (
        next((tmp_path / "runs/synthetic/main").glob(f"{n}*-seed1")) for n in ("fast", "authors")
    )
    fast_run = next(r for r in main_runs if r["recipe"] == fast and r["seed"] == 1)
    relaxation = load_config(authors_dir / "config.yaml")
    fast_config = load_config(fast_dir / "config.yaml")
    assert final_accuracy(fast_config, fast_dir, relaxation) == fast_run["test_acc"]
    # every run's final network is probed (untimed) with its own phases; auto's with its last counts
    assert all(-1.0 <= r["final_cosine"] <= 1.0 for r in main_runs)
    assert all(r["dead_layers"] == {} for r in main_runs)  # each run's metrics.json: none died here
    assert final_cosine(fast_config, fast_dir, [{}]) == fast_run["final_cosine"]
    at_authors_counts = dataclasses.replace(
        fast_config, ep=dataclasses.replace(fast_config.ep, free_iterations=8, nudge_iterations=4)
    )
    auto_rows = [{"auto/free_iterations": "8", "auto/nudge_iterations": "4"}]
    assert final_cosine(fast_config, fast_dir, auto_rows) == final_cosine(at_authors_counts, fast_dir, [{}])
    assert final_cosine(fast_config, fast_dir, auto_rows) != fast_run["final_cosine"]
    assert summary["final_cosine"]["mean"] == pytest.approx(
        sum(r["final_cosine"] for r in main_runs if r["recipe"] == fast) / 2
    )
    assert "| final network's cosine (untimed, mean ± sd) |" in (out / "synthetic.md").read_text()
    assert main(argv) == 0  # complete: nothing is trained again
    assert json.loads((out / "synthetic.json").read_text())["runs"] == result["runs"]


@pytest.mark.parametrize(
    "result",
    sorted((Path(__file__).resolve().parents[1] / "docs/bench-tta").rglob("*.json")),
    ids=lambda path: f"{path.parent.name}/{path.stem}",
)
def test_each_documented_table_is_its_json_as_the_bench_writes_it(result):
    """docs/bench-tta's tables (quoted by README and docs/benchmarks.md) say what their raw JSON holds."""
    table = result.with_suffix(".md").read_text()
    assert table == format_markdown(json.loads(result.read_text())) + "\n"
    assert result.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
