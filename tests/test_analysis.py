"""The analysis layer: run tables, the paper's table, ablations, profiles, weight findings, convergence,
gradient fidelity.

Real runs (tiny synthetic EP and BP runs, built once per module) check the readers against what training
writes; hand-made run directories and bench files check the numbers against values computed by hand.
"""

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import ep_core
from ep_core.analysis import _markdown as md
from ep_core.analysis import (
    ablation_table,
    convergence_traces,
    depth_table,
    evaluation_batch,
    fidelity_history,
    fidelity_table,
    load_benchmarks,
    load_fidelity,
    load_history,
    load_network,
    load_runs,
    load_weights,
    main_table,
    phase_times,
    plot_activation_ablation,
    plot_convergence,
    plot_depth_ablation,
    plot_ep_vs_bp,
    plot_fidelity,
    plot_residual_ablation,
    plot_search,
    plot_step_phases,
    plot_weight_histograms,
    plot_weight_profiles,
    profile_table,
    residual_trace,
    search_table,
    weight_layers,
    weight_table,
    write_ablation_table,
    write_depth_table,
    write_fidelity_table,
    write_profile_table,
    write_search_table,
    write_table,
    write_weight_table,
)
from ep_core.analysis.fidelity import EPOCH_COLUMNS
from ep_core.analysis.fidelity import RUN_COLUMNS as FIDELITY_COLUMNS
from ep_core.analysis.runs import RUN_COLUMNS
from ep_core.analysis.weights import CONTROLS, FINDINGS
from ep_core.training.config import FIDELITY_EVERY, build_config, resolve
from ep_core.training.fidelity import ladder
from ep_core.training.run import prepare, train

PAPER_CSV = Path(__file__).resolve().parents[1] / "reference" / "paper_results.csv"

TINY = {
    "data": {"name": "synthetic", "synthetic_train": 64, "synthetic_test": 32},
    "model": {"arch": "hopfield_resnet13", "width": 0.0625},
    "ep": {"free_iterations": 4, "nudge_iterations": 2, "eval_iterations": 4},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}
REAL_RUNS = {
    "hr13_s0": {"data": {"val_size": 16}},
    "hr13_s1": {"data": {"val_size": 16}, "train": {"seed": 1}},
    "plain13": {"model": {"arch": "hopfield_plain13"}},
    "hr13_relu1": {"model": {"activation": "relu1"}},
    "hr13_random": {"model": {"activation": "relu_random"}},
    "vgg5": {"model": {"arch": "vgg5"}},
    "resnet13_bp": {"model": {"arch": "resnet13"}},
    "vgg5_bp": {"model": {"arch": "vgg5_bp"}},
    "diverged": {"optim": {"lr": 1e8}, "ep": {"clip_norm": None}},
}


def config_values(changes: dict) -> dict:
    values = {s: dict(v) for s, v in TINY.items()}
    for section, items in changes.items():
        values.setdefault(section, {}).update(items)
    return values


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, Path]:
    """Tiny real runs. One thread: on a shared 2-core machine, two OpenMP threads competing with another
    process make these small convolutions ~100× slower."""
    root = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        statuses = {name: train(build_config(config_values(c)), root / name) for name, c in REAL_RUNS.items()}
    finally:
        torch.set_num_threads(threads)
    assert statuses == {**dict.fromkeys(REAL_RUNS, 0), "diverged": 3}
    return {name: root / name for name in REAL_RUNS}


def fake_run(
    path: Path,
    *,
    dataset: str = "cifar10",
    arch: str = "hopfield_resnet13",
    activation: str = "relu6",
    seed: int = 0,
    status: str = "completed",
    final: float | None = None,
    best: float | None = None,
    val: float | None = None,
    losses: list[float] | None = None,
    epochs: int = 300,
    width: float = 1.0,
    settings: tuple[str, ...] = (),
    val_acc: float = 50.0,
) -> Path:
    """A run directory with a hand-written metrics.json (and history.csv from `losses`); `settings` are
    `key=value` overrides of its configuration."""
    config = resolve(
        build_config(
            {
                "data": {"name": dataset},
                "model": {"arch": arch, "activation": activation, "width": width},
                "train": {"seed": seed, "epochs": epochs},
            },
            list(settings),
        )
    ).to_dict()
    last = len(losses) if losses else 1
    metrics = {
        "status": status,
        "epochs_completed": last,
        "final": {"epoch": last, "train_loss": losses[-1] if losses else 0.1, "test_acc": final},
        "best_val": None if val is None else {"epoch": 1, "val_acc": val_acc, "test_acc": val},
        "best_test_over_epochs": None if best is None else {"epoch": 1, "test_acc": best, "protocol": "x"},
        "wall_seconds": 1.0,
        "peak_memory_mb": 10.0,
        "num_parameters": 1,
        "device": "cpu",
        "config": config,
    }
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    if losses:
        rows = [{"epoch": e, "train_loss": v, "test_acc": final} for e, v in enumerate(losses, 1)]
        pd.DataFrame(rows).to_csv(path / "history.csv", index=False)
    return path


def with_dead_layer(run: Path, layers: dict[str, int]) -> Path:
    """`run` (a `fake_run`) whose metrics.json says that these hidden layers died (layer -> first epoch)."""
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics | {"dead_layers": layers}))
    return run


def assert_figure(png: Path) -> None:
    pdf = png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


# --- runs ----------------------------------------------------------------------------------------------------


def test_load_runs_reads_identity_status_and_protocols(real):
    runs = load_runs(real.values()).set_index(pd.Index(list(real)))
    assert list(load_runs([real["vgg5"]]).columns) == RUN_COLUMNS
    assert runs.loc["vgg5_bp", ["arch", "table_arch", "algorithm"]].tolist() == ["vgg5_bp", "vgg5", "bp"]
    assert runs.loc["resnet13_bp", ["table_arch", "algorithm"]].tolist() == ["resnet13", "bp"]
    assert runs.loc["hr13_s0", ["table_arch", "algorithm", "depth"]].tolist() == [
        "hopfield_resnet13",
        "cep",
        13,
    ]
    assert runs.loc["diverged", "status"] == "diverged" and math.isnan(runs.loc["diverged", "final_test_acc"])
    metrics = json.loads((real["hr13_s0"] / "metrics.json").read_text())
    assert runs.loc["hr13_s0", "val_selected_test_acc"] == metrics["best_val"]["test_acc"]
    assert runs.loc["hr13_s0", "best_test_acc"] == metrics["best_test_over_epochs"]["test_acc"]
    assert math.isnan(runs.loc["vgg5", "val_selected_test_acc"])  # no validation split
    assert runs.loc["hr13_s1", "seed"] == 1 and runs.loc["hr13_random", "activation"] == "relu_random"


def test_unfinished_run_is_incomplete(tmp_path, real):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((real["vgg5"] / "config.yaml").read_text())
    row = load_runs([unfinished]).iloc[0]
    assert row["status"] == "incomplete" and row["arch"] == "vgg5" and math.isnan(row["final_test_acc"])
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_runs([tmp_path / "nothing"])


def test_load_history_stacks_runs_with_their_identity(real):
    history = load_history(real.values())
    assert len(history) == 2 * (len(real) - 1)  # the diverged run never finished an epoch
    assert list(history.columns[:11]) == ["run_dir", "status", "dataset", "arch", "network", "table_arch",
                                          "algorithm", "activation", "seed", "width", "epochs_planned"]  # fmt: skip
    bp = history[history["algorithm"] == "bp"]
    assert (
        bp["free_residual"].isna().all()
        and history.loc[history["algorithm"] == "cep", "free_residual"].notna().all()
    )


# --- the main table -----------------------------------------------------------------------------------------


@pytest.fixture
def table_runs(tmp_path) -> pd.DataFrame:
    dirs = [
        fake_run(tmp_path / "a", seed=0, final=92.0, best=93.0, val=92.5),
        fake_run(tmp_path / "b", seed=1, final=93.0, best=94.0, val=93.5),
        fake_run(tmp_path / "c", seed=2, final=94.5, best=95.5),  # no validation split
        fake_run(tmp_path / "d", seed=3, status="diverged", final=10.0, best=10.0),
        fake_run(tmp_path / "e", seed=4, activation="relu1", final=50.0, best=50.0),  # not the paper's
        fake_run(tmp_path / "f", arch="vgg5_bp", final=91.0, best=92.0),
        fake_run(tmp_path / "g", dataset="digits", arch="vgg5", final=97.0, best=98.0),
        fake_run(tmp_path / "h", arch="hopfield_resnet13", width=0.0625, epochs=2, final=30.0, best=31.0),
    ]
    return load_runs(dirs)


def test_main_table_means_counts_and_paper_figures(table_runs):
    table = main_table(table_runs, PAPER_CSV)
    # only what the grid ran: the paper's rows first, in the paper's order, then ours the paper lacks
    keys = table[["dataset", "architecture", "algorithm"]].apply(tuple, axis=1).tolist()
    assert list(dict.fromkeys(keys)) == [
        ("cifar10", "vgg5", "bp"), ("cifar10", "hopfield_resnet13", "cep"), ("digits", "vgg5", "cep")
    ]  # fmt: skip
    assert table["in_paper"].tolist() == [True, True, True, False, False] and (table["n"] > 0).all()
    # every activation the grid trained has its row, after the paper's: marked, with no paper figure
    assert table["activation"].tolist() == ["relu", "relu6", "relu6", "relu1", "relu6"]
    relu1 = table[table["activation"] == "relu1"].iloc[0]
    identity = relu1[["architecture", "n", "seeds", "paper_activation"]].tolist()
    assert identity == ["hopfield_resnet13", 1, "4", False]
    assert math.isnan(relu1["paper"]) and math.isnan(relu1["diff_vs_paper"]) and math.isnan(relu1["prior_ep"])
    assert relu1["paper_setting"] and relu1["best_test_mean"] == 50.0  # at the paper's scale, not its model
    hr = table[
        (table["dataset"] == "cifar10")
        & (table["architecture"] == "hopfield_resnet13")
        & (table["activation"] == "relu6")
        & (table["width"] == 1.0)
    ]
    assert len(hr) == 1
    hr = hr.iloc[0]
    assert (hr["n"], hr["n_failed"], hr["seeds"]) == (3, 1, "0,1,2")
    assert hr["best_test_mean"] == pytest.approx(statistics.mean([93.0, 94.0, 95.5]))
    assert hr["best_test_std"] == pytest.approx(statistics.stdev([93.0, 94.0, 95.5]))
    assert hr["final_mean"] == pytest.approx(statistics.mean([92.0, 93.0, 94.5]))
    assert (hr["val_selected_n"], hr["val_selected_mean"]) == (2, pytest.approx(93.0))
    assert hr["wall_hours_mean"] == pytest.approx(1 / 3600) and hr["devices"] == "cpu"  # completed runs only
    assert hr["paper_setting"] and hr["paper"] == 93.92
    assert hr["diff_vs_paper"] == pytest.approx(statistics.mean([93.0, 94.0, 95.5]) - 93.92)
    assert math.isnan(hr["prior_ep"])
    # the BP twin of VGG5 is the paper's "vgg5, bp" row; the prior-EP figure sits on EP rows only
    vgg = table[(table["dataset"] == "cifar10") & (table["architecture"] == "vgg5")].set_index("algorithm")
    assert (
        list(vgg.index) == ["bp"]
        and vgg.loc["bp", "paper"] == 92.11
        and math.isnan(vgg.loc["bp", "prior_ep"])
    )
    extra = table[~table["in_paper"]]
    assert extra["paper"].isna().all() and extra["diff_vs_paper"].isna().all()
    # a smoke run of a paper row (another width and length): its own row, the paper's figure beside it for
    # reference, but no difference (it is not the paper's model)
    smoke = table[(table["architecture"] == "hopfield_resnet13") & (table["width"] == 0.0625)].iloc[0]
    assert (smoke["epochs"], smoke["n"], smoke["paper"], smoke["in_paper"]) == (2, 1, 93.92, True)
    assert not smoke["paper_setting"] and math.isnan(smoke["diff_vs_paper"])
    assert (table["algorithm"] != "ep_prior_best").all()


def test_the_paper_setting_needs_the_papers_iterations(tmp_path):
    runs = load_runs([fake_run(tmp_path / "a", final=90.0, best=91.0, settings=("ep.free_iterations=30",))])
    (row,) = main_table(runs, PAPER_CSV).itertuples()
    assert (row.paper, row.free_iterations, row.paper_setting) == (93.92, 30, False)
    assert math.isnan(row.diff_vs_paper)


def test_a_run_whose_layer_died_is_counted_and_named_in_its_row(tmp_path):
    dead = with_dead_layer(fake_run(tmp_path / "b", seed=1, final=10.0, best=25.0), {"h4b": 4})
    runs = load_runs([fake_run(tmp_path / "a", final=90.0, best=91.0), dead])
    assert runs["dead_layers"].tolist() == [0, 1]  # a metrics.json without the key: none
    (row,) = main_table(runs, PAPER_CSV).itertuples()
    assert (row.n, row.n_dead, row.final_mean) == (2, 1, 50.0)  # it completed: counted in the mean
    write_table(main_table(runs, PAPER_CSV), tmp_path / "t.csv", tmp_path / "t.md")
    assert "| 2 completed, 1 of them with a dead layer |" in (tmp_path / "t.md").read_text()


def test_auto_or_a_tolerance_at_the_papers_counts_is_its_own_row_and_not_the_papers_setting(tmp_path):
    runs = load_runs([
        fake_run(tmp_path / "a", final=90.0, best=91.0),
        fake_run(tmp_path / "b", final=80.0, best=81.0, settings=("ep.recipe=auto",)),  # 120 / 50: its cap
        fake_run(tmp_path / "c", final=70.0, best=71.0, settings=("ep.tol=0.001",)),  # phases cut short
    ])  # fmt: skip
    table = main_table(runs, PAPER_CSV)
    assert list(zip(table["phases"], table["free_iterations"], table["paper_setting"], strict=True)) == [
        ("120/50 sweeps", 120, True), ("authors, tol 0.001 ≤ 120/50 sweeps", 120, False),
        ("auto ≤ 120/50 sweeps", 120, False),
    ]  # fmt: skip
    assert table["best_test_mean"].tolist() == [91.0, 71.0, 81.0]  # each its own runs, not their mean
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "reduced (w=1, 300 ep., auto ≤ 120/50 sweeps)" in text
    assert "reduced (w=1, 300 ep., authors, tol 0.001 ≤ 120/50 sweeps)" in text


def test_write_table_markdown_and_csv(table_runs, tmp_path):
    table = main_table(table_runs, PAPER_CSV)
    write_table(table, tmp_path / "t.csv", tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    row = next(
        line
        for line in text.splitlines()
        if "Hopfield-ResNet13" in line and "| 1 |" in line and "CIFAR-10 " in line and "ReLU6" in line
    )
    assert "94.2 ± 1.3 (n=3)" in row and "93.92" in row and "| +0.25 |" in row  # 94.1667 − 93.92
    assert "1 diverged/failed (excluded)" in row and "93.0 ± 0.7 (n=2)" in row and "| paper |" in row
    assert row.endswith("| 1 s |")  # time / run: a one-second run reads as such, not as 0.0 hours
    # a run of another activation: in the table, marked, without the paper's figures
    other = next(line for line in text.splitlines() if "ReLU1 (α = 1)" in line)
    assert "| paper scale; not the paper's activation |" in other and "| 1 completed |" in other
    assert "93.92" not in other and "| 50.0 (n=1) |" in other
    assert "| BP | ReLU |" in text
    smoke = next(line for line in text.splitlines() if "| 0.0625 |" in line)
    assert "reduced (w=0.0625, 2 ep., 120/50 sweeps)" in smoke and "| 93.92 |" in smoke
    assert "+" not in smoke.split("93.92")[1].split("|")[2]  # no difference beside a reduced-scale row
    assert "CIFAR-100" not in text and "0 completed" not in text  # rows the grid did not run: left out
    assert "optimistic" in text
    back = pd.read_csv(tmp_path / "t.csv")
    assert len(back) == len(table) and back["paper"].sum() == pytest.approx(table["paper"].sum())


def test_wall_times_read_at_every_scale():
    from ep_core.analysis._markdown import duration

    assert [duration(s) for s in (0.4, 42.4, 210.0, 31.2 * 3600, math.nan)] == [
        "< 1 s", "42 s", "3.5 min", "31.2 h", "–"
    ]  # fmt: skip


# --- ablations ----------------------------------------------------------------------------------------------


def ablation_runs(
    root: Path, *, plain: list[float], resnet: list[float], accs: dict[str, float]
) -> list[Path]:
    dirs = [
        fake_run(root / "plain", arch="hopfield_plain13", losses=plain, final=10.0, best=10.0),
        fake_run(root / "resnet", arch="hopfield_resnet13", losses=resnet, final=80.0, best=81.0),
    ]
    for activation, acc in accs.items():
        dirs.append(
            fake_run(
                root / activation, arch="vgg5", activation=activation, losses=[0.4, 0.3], final=acc, best=acc
            )
        )
    return dirs


def test_ablation_table_rules(tmp_path):
    dirs = ablation_runs(
        tmp_path / "ok", plain=[0.45, 0.449, 0.448], resnet=[0.45, 0.30, 0.40],  # drop to the lowest loss
        accs={"relu6": 90.0, "relu1": 85.0, "relu_random": 80.0},
    )  # fmt: skip
    # a run two studies share is listed twice by the workflow and counted once
    table = ablation_table(load_runs(dirs + dirs), load_history(dirs + dirs))
    residual = table[table["ablation"] == "residual"].set_index("variant")
    assert residual["n"].tolist() == [1, 1]
    assert residual.loc["hopfield_plain13", "train_loss_drop_mean"] == pytest.approx((0.45 - 0.448) / 0.45)
    assert residual.loc["hopfield_resnet13", "train_loss_drop_mean"] == pytest.approx(0.15 / 0.45)
    assert residual["holds"].tolist() == [True, True]
    activation = table[table["ablation"] == "activation"].set_index("architecture")
    assert activation.loc["vgg5", "variant"].tolist() == ["relu6", "relu1", "relu_random"]
    assert activation.loc["vgg5", "holds"].all()
    # the residual-ablation nets ran ReLU6 only: they are not an activation study
    assert set(activation.index) == {"vgg5"}

    flipped = ablation_runs(
        tmp_path / "flip", plain=[0.45, 0.35, 0.25], resnet=[0.45, 0.40, 0.30],
        accs={"relu6": 85.0, "relu1": 90.0, "relu_random": 80.0},
    )  # fmt: skip
    table = ablation_table(load_runs(flipped), load_history(flipped))
    decided = table[(table["ablation"] == "residual") | (table["architecture"] == "vgg5")]
    assert not decided["holds"].any() and decided["holds"].notna().all()

    missing = ablation_runs(
        tmp_path / "missing", plain=[0.45], resnet=[0.45, 0.3], accs={"relu6": 90.0, "relu1": 85.0}
    )
    table = ablation_table(load_runs(missing), load_history(missing))
    assert table.loc[table["ablation"] == "activation", "holds"].isna().all()
    write_ablation_table(table, tmp_path / "a.csv", tmp_path / "a.md")
    assert "| yes |" in (tmp_path / "a.md").read_text() and "| – |" in (tmp_path / "a.md").read_text()


def test_ablation_figures_are_written_and_deterministic(real, tmp_path):
    history = load_history(real.values())
    plot_residual_ablation(history, tmp_path / "residual.png")
    plot_activation_ablation(history, tmp_path / "activation.png", tmp_path / "other" / "activation.pdf")
    assert_figure(tmp_path / "residual.png")
    assert (tmp_path / "other" / "activation.pdf").read_bytes()[:5] == b"%PDF-"
    plot_residual_ablation(history, tmp_path / "again.png")
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "again").with_suffix(suffix).read_bytes() == (tmp_path / "residual").with_suffix(
            suffix
        ).read_bytes()
    plot_residual_ablation(history.iloc[0:0], tmp_path / "empty.png")  # no runs: a figure saying so
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_an_empty_ablation_figure_names_the_networks_as_every_figure_does(tmp_path, monkeypatch):
    from ep_core.analysis import ablations

    said: list[str] = []
    monkeypatch.setattr(ablations, "no_data", lambda ax, message: said.append(message))
    plot_residual_ablation(load_history([]), tmp_path / "r.png")
    plot_activation_ablation(load_history([]), tmp_path / "a.png")
    assert said == [
        "no EP runs of Hopfield-ResNet13 / Hopfield-Plain13 (no skips)",
        "no EP architecture was trained\nwith two or more of ReLU6 (α = 6) / ReLU1 (α = 1) / random α per layer",
    ]


# --- profiles -----------------------------------------------------------------------------------------------


def bench_file(path: Path, **fields) -> Path:
    data = {
        "arch": "hopfield_resnet13", "width": 1.0, "blocks": 4, "batch_size": 128, "device": "cuda",
        "device_name": "NVIDIA H200", "dtype": "float32", "threads": 16, "free_iterations": 4, "nudge_iterations": 2,
        "repeats": 5, "load_average": {"before": [0.25, 0.5, 0.5], "after": [1.5, 0.75, 0.5]},
        "ep": {"step_ms": 100.0, "free_ms": 40.0, "minus_ms": 20.0, "plus_ms": 20.0, "gradient_ms": 10.0,
               "update_ms": 2.0, "free_ms_per_iteration": 10.0, "nudged_ms_per_iteration": 20.0,
               "peak_memory_mb": 1500.0, "gflops": 1.0,
               "spread_ms": {"step": {"min": 95.0, "median": 100.0, "max": 110.0}}},
        "bp": {"arch": "resnet13", "step_ms": 10.0, "peak_memory_mb": 1000.0,
               "spread_ms": {"step": {"min": 9.0, "median": 10.0, "max": 12.0}}},
        "flop_bound_ratio": 0.1, "overhead_ratio": 0.5, "schedules": None,
    }  # fmt: skip
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def benches(tmp_path) -> pd.DataFrame:
    files = [
        bench_file(tmp_path / "b128.json"),
        bench_file(tmp_path / "b32.json", batch_size=32),
        bench_file(tmp_path / "w05.json", width=0.5),
        bench_file(tmp_path / "deep.json", arch="hopfield_resnet", blocks=8, bp=None),
        # stacked ±β phases only, and missing keys
        bench_file(
            tmp_path / "sparse.json",
            arch="vgg5",
            ep={"step_ms": 50.0, "nudged_ms_per_iteration": 5.0, "free_ms_per_iteration": 2.0},
            bp=None,
        ),
    ]
    legacy = tmp_path / "legacy.json"  # the first flat `ep-core bench --json`
    legacy.write_text(json.dumps({"arch": "vgg5", "width": 1.0, "batch_size": 8, "device": "cpu", "free_iterations": 4,
                                  "nudge_iterations": 2, "step_ms": 30.0, "free_ms_per_iteration": 2.0,
                                  "nudged_ms_per_iteration": 4.0, "gradient_ms": 5.0, "bp_step_ms": 3.0,
                                  "peak_memory_mb": None}))  # fmt: skip
    return load_benchmarks([*files, legacy])


def test_phase_times_and_projection(benches):
    b = benches.set_index(benches["source"].map(lambda s: Path(s).stem))
    measured = phase_times(b, project_to=None)
    assert measured.loc["b128"].to_dict() == pytest.approx(
        {"free_ms": 40.0, "minus_ms": 20.0, "plus_ms": 20.0, "nudged_ms": math.nan, "gradient_ms": 10.0,
         "update_ms": 2.0, "other_ms": 8.0, "step_ms": 100.0}, nan_ok=True)  # fmt: skip
    projected = phase_times(b, project_to=(120, 50)).loc["b128"]
    assert (projected["free_ms"], projected["minus_ms"], projected["step_ms"]) == pytest.approx(
        (1200.0, 500.0, 1200 + 500 + 500 + 10 + 2 + 8)
    )
    sparse = measured.loc["sparse"]  # stacked phases from the per-iteration figure; unknown phases NaN
    assert sparse["nudged_ms"] == 10.0 and sparse["free_ms"] == 8.0 and math.isnan(sparse["minus_ms"])
    assert sparse["other_ms"] == 32.0
    legacy = b.loc["legacy"]
    assert (legacy["ep_step_ms"], legacy["bp_step_ms"], legacy["device_name"]) == (30.0, 3.0, "cpu")
    assert legacy["bp_arch"] == "vgg5_bp" and pd.isna(b.loc["deep", "bp_arch"])
    assert math.isnan(legacy["ep_peak_memory_mb"]) and b.loc["deep", "depth"] == 25


def test_profile_table_ratios_and_paper_reference(benches, tmp_path):
    table = profile_table(benches)
    table = table.set_index(table["source"].map(lambda s: Path(s).stem))
    row = table.loc["b128"]
    assert row["step_ratio_ep_bp"] == 10.0 and row["memory_ratio_ep_bp"] == 1.5
    assert (row["paper_ep_memory_mib"], row["paper_bp_memory_mib"], row["paper_hours_at_least"]) == (
        1612,
        1324,
        30,
    )
    steps = math.ceil(50_000 / 128) * 300
    assert row["projected_step_s"] == pytest.approx(2.22) and row["projected_hours"] == pytest.approx(
        2.22 * steps / 3600
    )
    assert table.loc[["b32", "w05", "deep"], "paper_ep_memory_mib"].isna().all()  # not the paper's setting
    write_profile_table(table, tmp_path / "p.csv", tmp_path / "p.md")
    text = (tmp_path / "p.md").read_text()
    assert "1612 / 1324" in text and "> 30" in text and "NVIDIA H200" in text


def test_profile_table_gives_the_spread_of_the_repeats_and_flags_unsteady_rows(benches, tmp_path):
    busy = dict(json.loads(Path(benches["source"].iloc[0]).read_text()))
    busy["ep"] = {**busy["ep"], "spread_ms": {"step": {"min": 60.0, "median": 100.0, "max": 180.0}}}
    busy_file = tmp_path / "busy.json"
    busy_file.write_text(json.dumps({**busy, "batch_size": 64}))
    bench = load_benchmarks([*benches["source"], busy_file])
    table = profile_table(bench)
    table = table.set_index(table["source"].map(lambda s: Path(s).stem))
    steady, unsteady = table.loc["b128"], table.loc["busy"]
    assert (steady["ep_step_ms_min"], steady["ep_step_ms_max"], steady["repeats"]) == (95.0, 110.0, 5)
    assert (steady["load_before"], steady["load_after"]) == (0.25, 1.5)
    assert steady["ep_step_spread"] == pytest.approx(110 / 95) and steady["bp_step_spread"] == 12 / 9
    assert not steady["unsteady"] and unsteady["unsteady"] and unsteady["ep_step_spread"] == 3.0
    # The range is carried through the projection: hours scale with the step time.
    assert steady["projected_hours_max"] == pytest.approx(steady["projected_hours"] * 1.1)
    # No repeats recorded (the first bench format): no spread and no flag, not a false alarm.
    assert math.isnan(table.loc["legacy", "ep_step_spread"]) and not table.loc["legacy", "unsteady"]
    assert not profile_table(bench, max_spread=4.0).set_index(table.index)["unsteady"].any()
    # 110 / 95 > 1.1: every file with repeats
    assert profile_table(bench, max_spread=1.1)["unsteady"].sum() == 5
    with pytest.raises(ValueError, match=r"max_spread is a ratio max / min of repeats, so >= 1; got 0\.5"):
        profile_table(bench, max_spread=0.5)
    write_profile_table(table, tmp_path / "p.csv", tmp_path / "p.md")
    text = (tmp_path / "p.md").read_text()
    lines = text.splitlines()
    busy_line = next(line for line in lines if "| 64 |" in line)
    assert "100.0 (60.0–180.0)" in busy_line and "⚠ unsteady, max/min ×3.00" in busy_line
    b128 = next(line for line in lines if "| 13 | 1 | 128 |" in line)
    assert "100.0 (95.0–110.0)" in b128 and "10.0 (9.0–12.0)" in b128 and "0.25 / 1.50" in b128
    assert "⚠" not in b128 and "max/min ×1.33" in b128
    assert "more than ×1.5 (max / min)" in text
    plot_step_phases(bench, tmp_path / "phases.png")  # error bars, the unsteady bar hatched
    assert_figure(tmp_path / "phases.png")
    plot_ep_vs_bp(bench, tmp_path / "batch.png", x="batch_size")
    assert_figure(tmp_path / "batch.png")


def test_profile_table_is_independent_of_input_order(benches):
    """Sorted output: the same bench files in any order give the same table."""
    a = profile_table(benches)
    b = profile_table(benches.iloc[::-1].reset_index(drop=True))
    pd.testing.assert_frame_equal(a, b)


def test_profile_figures(benches, tmp_path):
    plot_step_phases(benches, tmp_path / "phases.png")
    assert_figure(tmp_path / "phases.png")
    for x in ("batch_size", "width", "depth"):
        plot_ep_vs_bp(benches, tmp_path / f"{x}.png", x=x)
        assert_figure(tmp_path / f"{x}.png")
    with pytest.raises(ValueError, match="x must be one of"):
        plot_ep_vs_bp(benches, tmp_path / "bad.png", x="seeds")


# --- weights ------------------------------------------------------------------------------------------------


def test_weight_roles_and_matching(real):
    weights = load_weights(
        [real["hr13_s0"], real["resnet13_bp"], real["vgg5"], real["vgg5_bp"], real["diverged"]]
    )
    assert weights["run_dir"].nunique() == 4  # the diverged run has no weights
    hr = weights[weights["arch"] == "hopfield_resnet13"]
    assert hr["role"].value_counts().to_dict() == {"main": 8, "skip": 4, "dense": 1}
    skips = hr[hr["role"] == "skip"]
    assert skips["name"].tolist() == [
        f"edges.{a}_to_{b}.weight" for a, b in (("x", "h1b"), ("h1b", "h2b"), ("h2b", "h3b"), ("h3b", "h4b"))
    ]
    assert skips["depth"].tolist() == [2, 4, 6, 8] and skips["kernel"].eq("1×1").all()
    assert len(weights[weights["arch"] == "vgg5_bp"]) == 5  # 4 convs + head, no BatchNorm parameters
    layers = weight_layers(weights).set_index(["graph", "role", "index"])
    assert layers.loc[("resnet13", "main", 3), ["ep_name", "bp_name"]].tolist() == [
        "edges.h1b_to_h2a.weight",
        "blocks.1.main1.0.weight",
    ]
    assert layers.loc[("resnet13", "main", 4), ["ep_name", "bp_name"]].tolist() == [
        "edges.h2a_to_h2b.weight",
        "blocks.1.main2.0.weight",
    ]
    assert layers.loc[("resnet13", "skip", 2), ["ep_name", "bp_name"]].tolist() == [
        "edges.h1b_to_h2b.weight",
        "blocks.1.skip.0.weight",
    ]
    assert layers.loc[("vgg5", "dense", 5), ["ep_name", "bp_name"]].tolist() == [
        "edges.h4_to_out.weight",
        "head.weight",
    ]
    summary = pd.read_csv(real["hr13_s0"] / "weights_summary.csv").set_index("name")
    assert (
        layers.loc[("resnet13", "skip", 1), "ep_mean_abs"] == summary.loc["edges.x_to_h1b.weight", "mean_abs"]
    )


def test_weight_findings_follow_the_data(real):
    weights = load_weights([real["hr13_s0"], real["resnet13_bp"], real["vgg5"]])
    ep = weights["algorithm"] == "cep"
    main = ep & (weights["arch"] == "hopfield_resnet13") & (weights["role"] == "main")
    skip = ep & (weights["arch"] == "hopfield_resnet13") & (weights["role"] == "skip")

    def findings(w: pd.DataFrame) -> dict:
        row = weight_table(w).set_index("graph").loc["resnet13"]
        return {k: row[k] for k in (*FINDINGS, *CONTROLS)}

    true = weights.copy()
    true.loc[ep, ["mean_abs", "std", "mean", "init_rms"]] = 1e-4  # EP far smaller than BP, also at init
    true.loc[main, "mean_abs"] = 1e-4 / true.loc[main, "depth"]  # shrinking with depth
    true.loc[main, "frac_below_0.1_init"], true.loc[skip, "frac_below_0.1_init"] = 0.2, 0.01
    assert findings(true) == dict.fromkeys(findings(true), True)

    false = weights.copy()
    false.loc[ep, ["mean_abs", "std", "init_rms"]] = 10.0  # EP far larger than BP, also at init
    false.loc[main, "mean_abs"] = 10.0 * false.loc[main, "depth"]  # growing with depth
    false.loc[main, "frac_below_0.1_init"], false.loc[skip, "frac_below_0.1_init"] = 0.01, 0.2
    assert findings(false) == dict.fromkeys(findings(false), False)

    vgg = weight_table(weights).set_index("graph").loc["vgg5"]  # no BP twin run, no skips: undecidable
    assert pd.isna(vgg["ep_smaller_magnitude"]) and pd.isna(vgg["skip_fewer_near_zero"])
    assert not pd.isna(vgg["deeper_closer_to_zero"])


def test_weight_table_and_figures_are_written(real, tmp_path):
    names = ["hr13_s0", "hr13_s1", "hr13_relu1", "resnet13_bp", "vgg5", "vgg5_bp"]
    weights = load_weights([real[n] for n in names])
    table = weight_table(weights)  # the ReLU1 ablation run is not the paper's CEP model: left out
    assert table.set_index("graph").loc["resnet13", ["ep_runs", "bp_runs"]].tolist() == [2, 1]
    assert weight_table(weights, activation="relu1").set_index("graph").loc["resnet13", "ep_runs"] == 1
    write_weight_table(table, tmp_path / "w.csv", tmp_path / "w.md")
    assert "Hopfield-ResNet13 / ResNet13" in (tmp_path / "w.md").read_text()
    plot_weight_profiles(weights, tmp_path / "profiles.png")
    plot_weight_histograms(real["hr13_s0"], real["resnet13_bp"], tmp_path / "hist.png")
    plot_weight_histograms(real["vgg5"], None, tmp_path / "hist_ep_only.png")
    for name in ("profiles", "hist", "hist_ep_only"):
        assert_figure(tmp_path / f"{name}.png")


# --- convergence --------------------------------------------------------------------------------------------


def test_residual_trace_is_relax_one_iteration_at_a_time():
    net = ep_core.build_network("vgg5", width=1 / 16, input_size=16).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    trace = residual_trace(net, x, 40, "coloring")
    assert len(trace) == 40 and trace[0] == pytest.approx(1.0) and trace[-1] < 1e-12
    for k in (1, 7, 40):
        _, stats = ep_core.relax(net, x, iterations=k, order="coloring")
        assert trace[k - 1] == stats.residual  # exact: the same computation


def test_load_network_round_trips_weights_and_alphas(real):
    for name in ("hr13_random", "vgg5_bp"):
        net = load_network(real[name])
        saved = torch.load(real[name] / "model.pt", weights_only=True)
        assert net.state_dict().keys() == saved.keys()
        assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
        assert not net.training
    alphas = json.loads((real["hr13_random"] / "metrics.json").read_text())["alphas"]
    assert load_network(real["hr13_random"]).alphas.tolist() == alphas
    # trained=False: the run's own initialisation, as training built it
    config = resolve(build_config(yaml.safe_load((real["hr13_random"] / "config.yaml").read_text())))
    initial = prepare(config).model.state_dict()
    again = load_network(real["hr13_random"], trained=False).state_dict()
    assert all(torch.equal(v, initial[k]) for k, v in again.items())
    trained = torch.load(real["hr13_random"] / "model.pt", weights_only=True)
    assert not torch.equal(again["edges.x_to_h1a.weight"], trained["edges.x_to_h1a.weight"])


def test_convergence_traces_and_figure(real, tmp_path):
    x = evaluation_batch(real["hr13_s0"], 8)
    assert x.shape == (8, 3, 32, 32)
    nets = {
        "Hopfield-ResNet13, trained": load_network(real["hr13_s0"]),
        "VGG5, trained": load_network(real["vgg5"]),
    }
    traces = convergence_traces(nets, x, 5, orders=("even_odd", "coloring"))
    assert len(traces) == 2 * 2 * 5 and traces["residual"].gt(0).all()
    first = traces[(traces["network"] == "VGG5, trained") & (traces["order"] == "coloring")][
        "residual"
    ].tolist()
    assert first == residual_trace(nets["VGG5, trained"], x, 5, "coloring")
    plot_convergence(traces, tmp_path / "conv.png", note="Batch of 8 synthetic test images.")
    assert_figure(tmp_path / "conv.png")


def test_no_inputs_give_empty_tables_and_figures_that_say_so(tmp_path):
    runs, history = load_runs([]), load_history([])
    table = main_table(runs, PAPER_CSV)
    assert table.empty  # rows the grid did not run are left out
    assert ablation_table(runs, history).empty and weight_table(load_weights([])).empty
    assert depth_table(runs, history).empty and search_table(runs, ["ep.beta"]).empty
    plot_depth_ablation(depth_table(runs, history), tmp_path / "d.png")
    plot_search(search_table(runs, ["ep.beta"]), ["ep.beta"], tmp_path / "b.png")
    assert profile_table(load_benchmarks([])).empty
    plot_residual_ablation(history, tmp_path / "r.png")
    plot_activation_ablation(history, tmp_path / "a.png")
    plot_weight_profiles(load_weights([]), tmp_path / "w.png")
    plot_step_phases(load_benchmarks([]), tmp_path / "s.png")
    plot_ep_vs_bp(load_benchmarks([]), tmp_path / "e.png")
    plot_convergence(convergence_traces({}, torch.zeros(1), 3), tmp_path / "c.png")
    for name in "rawsecdb":
        assert (tmp_path / f"{name}.png").stat().st_size > 0 and (tmp_path / f"{name}.pdf").stat().st_size > 0


def test_depth_table_and_figure(tmp_path):
    dirs = []
    for arch, blocks, losses in (
        ("hopfield_resnet", 2, [1.0, 0.5]),
        ("hopfield_plain", 2, [1.0, 0.9]),
        ("hopfield_resnet13", 4, [1.0, 0.6]),
        ("hopfield_plain13", 4, [1.0, 0.99]),
    ):
        for seed, acc in ((0, 80.0), (1, 70.0)):
            dirs.append(fake_run(tmp_path / f"{arch}{blocks}-{seed}", arch=arch, seed=seed, losses=losses,
                                 final=acc, best=acc, settings=(f"model.blocks={blocks}",)))  # fmt: skip
    dirs.append(fake_run(tmp_path / "vgg", arch="vgg5", losses=[1.0, 0.1], final=99.0))  # not of the family
    table = depth_table(load_runs(dirs), load_history(dirs))
    assert table[["network", "depth", "skips", "n"]].values.tolist() == [
        ["hopfield_resnet7", 7, True, 2], ["hopfield_resnet13", 13, True, 2],
        ["hopfield_plain7", 7, False, 2], ["hopfield_plain13", 13, False, 2],
    ]  # fmt: skip
    row = table.set_index("network").loc["hopfield_plain7"]
    assert row["train_loss_drop_mean"] == pytest.approx(0.1) and row["final_test_acc_mean"] == 75.0
    assert row["final_test_acc_std"] == pytest.approx(statistics.stdev([80.0, 70.0]))
    write_depth_table(table, tmp_path / "d.csv", tmp_path / "d.md")
    text = (tmp_path / "d.md").read_text()
    assert "| Hopfield-Plain7 (2 blocks, no skips) | 7 | no | 2 | 75.0 ± 7.1 (n=2) | 10.0% ± 0.0% |" in text
    plot_depth_ablation(table, tmp_path / "d.png")
    assert_figure(tmp_path / "d.png")


def test_the_study_tables_count_and_name_their_runs_with_a_dead_layer(tmp_path):
    make = {"arch": "hopfield_resnet13", "losses": [1.0, 0.5], "settings": ("ep.beta=0.1", "data.val_size=9")}
    dirs = [
        fake_run(tmp_path / "a", seed=0, final=90.0, best=90.0, val=90.0, **make),
        with_dead_layer(
            fake_run(tmp_path / "b", seed=1, final=10.0, best=10.0, val=10.0, **make), {"h4b": 2}
        ),
        fake_run(tmp_path / "c", seed=2, status="diverged", final=10.0, **make),
    ]
    runs, history = load_runs(dirs, ["ep.beta"]), load_history(dirs)
    for table, write in (
        (depth_table(runs, history), write_depth_table),
        (search_table(runs, ["ep.beta"]), lambda t, c, m: write_search_table(t, ["ep.beta"], c, m)),
        (ablation_table(runs, history), write_ablation_table),
    ):
        (row,) = table.itertuples()
        # The dead network completed: in the mean (of 90 and 10), counted, and named in the runs column.
        assert (row.n, row.n_failed, row.n_dead, row.final_test_acc_mean) == (2, 1, 1, 50.0)
        write(table, tmp_path / "t.csv", tmp_path / "t.md")
        text = (tmp_path / "t.md").read_text()
        assert (
            "| 2 (+1 failed; 1 with a dead layer) |" in text and "A run *with a dead layer* completed" in text
        )
    assert md.runs_cells(pd.DataFrame({"n": [3, 3, 3], "n_failed": [0, 1, 0], "n_dead": [0, 0, 2]})) == [
        "3", "3 (+1 failed)", "3 (2 with a dead layer)"
    ]  # fmt: skip


def test_a_search_chooses_its_setting_on_validation_not_on_test(tmp_path):
    dirs = []
    for beta, val_acc, test_acc in ((0.1, 80.0, 90.0), (0.2, 85.0, 70.0), (0.4, 60.0, 95.0)):
        for seed in (0, 1):
            dirs.append(fake_run(tmp_path / f"{beta}-{seed}", arch="vgg5", seed=seed, final=test_acc,
                                 val=test_acc + seed, val_acc=val_acc + seed, best=test_acc,
                                 settings=(f"ep.beta={beta}", "data.val_size=100")))  # fmt: skip
    runs = load_runs(dirs, ["ep.beta"])
    table = search_table(runs, ["ep.beta"])
    assert table["ep.beta"].tolist() == [0.1, 0.2, 0.4] and table["n"].tolist() == [2, 2, 2]
    chosen = table[table["chosen"]].iloc[0]
    assert chosen["ep.beta"] == 0.2 and chosen["val_selected_test_acc_mean"] == 70.5  # not 0.4's 95.5
    write_search_table(table, ["ep.beta"], tmp_path / "s.csv", tmp_path / "s.md")
    line = next(x for x in (tmp_path / "s.md").read_text().splitlines() if "**chosen**" in x)
    assert "ep.beta = 0.2" in line and "85.5 ± 0.7 (n=2)" in line
    plot_search(table, ["ep.beta"], tmp_path / "s.png")
    assert_figure(tmp_path / "s.png")


def test_bars_name_each_network_by_its_one_name():
    from ep_core.analysis.profiles import _case_label

    case = {"width": 0.125, "batch_size": 8.0, "depth": 13.0}
    # 4 blocks *is* Hopfield-ResNet13: one network, one name
    assert _case_label(pd.Series({**case, "arch": "hopfield_resnet", "blocks": 4.0})) == (
        "Hopfield-ResNet13  w=0.125 B=8"
    )
    assert _case_label(pd.Series({**case, "arch": "hopfield_resnet13", "blocks": math.nan})) == (
        "Hopfield-ResNet13  w=0.125 B=8"
    )
    assert _case_label(pd.Series({**case, "arch": "hopfield_resnet", "blocks": 6.0})) == (
        "Hopfield-ResNet19 (6 blocks)  w=0.125 B=8"
    )


# --- gradient fidelity --------------------------------------------------------------------------------------


def monitored_run(path: Path, cosines: list[float | None], *, auto: list[tuple[int, int]] | None = None,
                  summary: dict | None = None, **kwargs) -> Path:  # fmt: skip
    """`fake_run` with the history.csv a monitored run writes: per epoch its probes' mean cosine (None: an
    epoch without a probe, whose `fidelity/…` cells are empty), their lowest (cosine − 0.01), one probe each;
    `auto`'s counts per epoch; metrics.json's `fidelity` summary."""
    fake_run(path, **kwargs)
    rows = []
    for epoch, cosine in enumerate(cosines, 1):
        row = {"epoch": epoch, "train_loss": 1.0 / epoch}
        if cosine is not None:
            row |= {"fidelity/cosine": cosine, "fidelity/cosine_min": cosine - 0.01, "fidelity/probes": 1.0,
                    "fidelity/below_min": float(cosine - 0.01 < 0.9), "fidelity/norm_error": 1 - cosine,
                    "fidelity/free_distance": 0.01, "fidelity/probe_seconds": 0.5}  # fmt: skip
        if auto:
            row |= {
                "auto/free_iterations": float(auto[epoch - 1][0]),
                "auto/nudge_iterations": float(auto[epoch - 1][1]),
            }
        rows.append(row)
    pd.DataFrame(rows).to_csv(path / "history.csv", index=False)
    metrics = json.loads((path / "metrics.json").read_text())
    (path / "metrics.json").write_text(json.dumps(metrics | {"fidelity": summary}))
    return path


def png_width(png: Path) -> int:
    return int.from_bytes(png.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_fidelity_lists_the_monitored_runs_their_probes_and_auto_counts(tmp_path):
    fast = ("ep.recipe=fast",)
    summary = {"probes": 2, "cosine_first": 0.99, "cosine_last": 0.8, "cosine_mean": 0.895, "cosine_min": 0.79,
               "below_min": 1, "norm_error_last": 0.2, "free_distance_last": 0.01, "seconds": 3.0,
               "share_of_training": 0.05}  # fmt: skip
    auto = ("ep.recipe=auto", "ep.free_iterations=12", "ep.nudge_iterations=4", "ep.auto_floor=3")
    # a search's two points: one label, told apart by the part of their directories that differs
    search = [tmp_path / "search" / f"ep.beta-{b}" / "seed0" for b in (0.1, 0.2)]
    dirs = [
        monitored_run(tmp_path / "fast", [0.99, None, 0.8], settings=fast, summary=summary),
        monitored_run(tmp_path / "auto", [0.95, 0.93], auto=[(8, 3), (6, 2)], arch="vgg5", settings=auto),
        *[
            monitored_run(d, [0.9], dataset="digits", settings=(*fast, f"ep.beta={b}"))
            for d, b in zip(search, (0.1, 0.2), strict=True)
        ],
        fake_run(tmp_path / "authors", losses=[1.0]),  # the authors' 120 / 50: the monitor is off
        fake_run(tmp_path / "bp", arch="resnet13", losses=[1.0], settings=("train.fidelity_every=5",)),
    ]
    unfinished = tmp_path / "unfinished"  # config.yaml only: listed, no probes yet
    unfinished.mkdir()
    config = resolve(
        build_config({"ep": {"free_iterations": 30, "nudge_iterations": 10}}, ["train.fidelity_every=10"])
    )
    (unfinished / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    old = fake_run(tmp_path / "old", settings=fast)  # from before the monitor: no such key in its config
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["config"]["train"]["fidelity_every"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    dirs += [unfinished, old]

    runs = load_fidelity(dirs)
    assert list(runs.columns) == FIDELITY_COLUMNS
    assert runs["run_dir"].tolist() == [str(d) for d in dirs[:4]] + [str(unfinished)]
    assert runs["run"].tolist() == [
        "cifar10/hopfield_resnet13/relu6/fast/s0", "cifar10/vgg5/relu6/auto/s0",
        "digits/hopfield_resnet13/relu6/fast/s0 (ep.beta-0.1/seed0)",
        "digits/hopfield_resnet13/relu6/fast/s0 (ep.beta-0.2/seed0)", "cifar10/hopfield_resnet13/relu6/authors/s0",
    ]  # fmt: skip
    phases = ["fast 40/15 sweeps", "auto ≤ 12/4 sweeps", *["fast 40/15 sweeps"] * 2, "30/10 sweeps"]
    assert runs["phases"].tolist() == phases
    assert runs["fidelity_every"].tolist() == [FIDELITY_EVERY] * 4 + [10]
    summary_columns = ["probes", "cosine_last", "below_min", "share_of_training"]
    assert runs.loc[0, summary_columns].tolist() == [2, 0.8, 1, 0.05]  # metrics.json's summary
    last = runs.iloc[-1]  # no metrics.json: no summary
    assert last["status"] == "incomplete" and last["probes"] == 0 and math.isnan(last["cosine_first"])

    table = fidelity_table(runs)
    assert table["run_dir"].tolist() == [str(d) for d in (unfinished, dirs[0], dirs[1], *search)]
    epochs = fidelity_history(table, load_history(dirs))
    assert list(epochs.columns) == EPOCH_COLUMNS
    assert epochs.groupby("run", sort=False).size().to_dict() == {  # every epoch of each run that has a history
        "cifar10/hopfield_resnet13/relu6/fast/s0": 3, "cifar10/vgg5/relu6/auto/s0": 2,
        "digits/hopfield_resnet13/relu6/fast/s0 (ep.beta-0.1/seed0)": 1,
        "digits/hopfield_resnet13/relu6/fast/s0 (ep.beta-0.2/seed0)": 1,
    }  # fmt: skip
    by_run = {run: rows for run, rows in epochs.groupby("run")}
    fast_run = by_run["cifar10/hopfield_resnet13/relu6/fast/s0"]
    assert fast_run["cosine"].tolist()[::2] == [0.99, 0.8] and math.isnan(fast_run["cosine"].iloc[1])
    assert fast_run["auto_free_iterations"].isna().all()
    auto_run = by_run["cifar10/vgg5/relu6/auto/s0"]
    assert auto_run[["auto_free_iterations", "auto_nudge_iterations"]].values.tolist() == [[8, 3], [6, 2]]
    assert auto_run["cosine_min"].tolist() == pytest.approx([0.94, 0.92])

    write_fidelity_table(table, tmp_path / "f.csv", tmp_path / "f.md")
    assert pd.read_csv(tmp_path / "f.csv")["probes"].tolist() == table["probes"].tolist()
    text = (tmp_path / "f.md").read_text()
    fast_row = "| fast 40/15 sweeps | 2 (every 200 steps) | 0.990 | 0.800 | 0.790 | 1 (< 0.9) | 3 s (5.0%) |"
    assert fast_row in text
    assert "| 30/10 sweeps | 0 (every 10 steps) | – | – | – | 0 (< 0.9) | – |" in text

    # the figure: a second panel for auto's sweeps only when there are auto runs; the same bytes each time
    plot_fidelity(table, epochs, tmp_path / "both.png")
    assert_figure(tmp_path / "both.png")
    plain = table[table["recipe"] != "auto"]
    plot_fidelity(plain, epochs[epochs["run"].isin(plain["run"])], tmp_path / "one.png")
    assert png_width(tmp_path / "both.png") > png_width(tmp_path / "one.png") + 200
    plot_fidelity(table, epochs, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "both.png").read_bytes()


def test_fidelity_of_nothing_and_of_real_runs(tmp_path, real):
    """No runs: an empty table and a figure that says so. The real runs (4 / 2 sweeps: the monitor on at
    its default interval, 8 steps: no probe) are all listed but backprop's; a run that probes and chooses
    its sweeps with `ep.recipe: auto` gives the table and the long table what its files hold."""
    empty = load_fidelity([])
    assert empty.empty and fidelity_history(empty, load_history([])).empty
    write_fidelity_table(fidelity_table(empty), tmp_path / "e.csv", tmp_path / "e.md")
    plot_fidelity(empty, fidelity_history(empty, load_history([])), tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "e.pdf").stat().st_size > 0

    listed = load_fidelity(real.values())
    assert set(listed["run_dir"]) == {str(d) for name, d in real.items() if not name.endswith("_bp")}
    assert (listed["probes"] == 0).all() and (listed["fidelity_every"] == FIDELITY_EVERY).all()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        changes = {"ep": {"recipe": "auto", "free_iterations": 8, "nudge_iterations": 4, "auto_floor": 2},
                   "train": {"fidelity_every": 4, "fidelity_batch": 4}}  # fmt: skip
        assert train(build_config(config_values(changes)), tmp_path / "auto") == 0
    finally:
        torch.set_num_threads(threads)
    table = fidelity_table(load_fidelity([tmp_path / "auto"]))
    epochs = fidelity_history(table, load_history([tmp_path / "auto"]))
    summary = json.loads((tmp_path / "auto" / "metrics.json").read_text())["fidelity"]
    row = table.iloc[0]
    assert (row["phases"], row["probes"]) == ("auto ≤ 8/4 sweeps", 2)
    assert row["cosine_last"] == summary["cosine_last"]
    assert epochs["probes"].tolist() == [1, 1]  # before steps 0 and 4, the first of each 4-step epoch
    rungs = ladder((8, 4), 2)
    chosen = list(zip(epochs["auto_free_iterations"], epochs["auto_nudge_iterations"], strict=True))
    assert all(c in rungs for c in chosen) and epochs["cosine"].between(-1, 1).all()
    plot_fidelity(table, epochs, tmp_path / "auto.png")
    assert_figure(tmp_path / "auto.png")
