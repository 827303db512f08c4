"""The pipeline's job grid (ep_core.pipeline.grid): what config.yaml and the demo config expand to."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from ep_core import build_network
from ep_core.analysis.runs import algorithm_of
from ep_core.numerics import naming
from ep_core.pipeline import grid
from ep_core.training.config import FIDELITY_EVERY, build_config, resolve

ROOT = Path(__file__).resolve().parents[1]


def load(*files: str) -> dict:
    """config.yaml, then each --configfile merged over it the way Snakemake does (recursive update)."""

    def merge(base: dict, extra: dict) -> dict:
        out = dict(base)
        for key, value in extra.items():
            out[key] = (
                merge(out[key], value)
                if isinstance(value, dict) and isinstance(out.get(key), dict)
                else value
            )
        return out

    config: dict = {}
    for name in ("config.yaml", *files):
        config = merge(config, yaml.safe_load((ROOT / name).read_text()))
    return config


def test_the_paper_grid():
    config = load()
    runs = grid.validate_grid(config)
    main = grid.runs_of_kind(config, "main")
    # 3 datasets x 2 EP archs x relu6 + 2 datasets x 2 BP archs, 3 seeds each.
    assert len(main) == (3 * 2 + 2 * 2) * 3
    activation = grid.runs_of_kind(config, "activation_ablation")
    assert len(activation) == 2 * 3 * 3 and {r.activation for r in activation} == {
        "relu6",
        "relu1",
        "relu_random",
    }
    residual = grid.runs_of_kind(config, "residual_ablation")
    assert {r.arch for r in residual} == {"hopfield_resnet13", "hopfield_plain13"}
    # The depth study: 4, 6, 8 blocks with and without skips; its 4-block nets are the residual ablation's.
    depth = grid.runs_of_kind(config, "depth_ablation")
    assert len(depth) == 3 * 2 * 3 and set(residual) <= set(depth)
    assert {r.network for r in depth} == {
        "hopfield_resnet13", "hopfield_plain13", "hopfield_resnet19", "hopfield_plain19", "hopfield_resnet25",
        "hopfield_plain25",
    }  # fmt: skip
    search = grid.runs_of_kind(config, "search")
    assert len(search) == 3 * 3 and grid.search_keys(config) == ["ep.beta"]
    assert search[0].path == "cifar10/hopfield_resnet13/relu6/data.val_size-5000+ep.beta-0.1/seed0"
    # Runs shared by studies are trained once: cifar10 relu6 vgg5/HR13 belong to main and both ablations.
    assert len(runs) == len(set(main) | set(activation) | set(residual) | set(depth) | set(search))
    assert len(runs) == 30 + 12 + 3 + 12 + 9
    assert grid.datasets_to_download(config) == ["cifar10", "cifar100", "fashion_mnist"]
    # 4 blocks at width 1, batch 16 is hopfield_resnet13 at width 1, batch 16: one job, not two.
    assert len(grid.profile_specs(config)) == 2 * 3 * 3 + 3 - 1


def test_run_settings_are_layered_and_resolve_to_the_papers_values():
    config = load()
    hr13 = grid.RunSpec("cifar100", "hopfield_resnet13", "relu1", 2)
    c = build_config({}, grid.run_overrides(config, hr13))
    assert (c.data.name, c.model.arch, c.model.activation, c.train.seed) == (
        "cifar100",
        "hopfield_resnet13",
        "relu1",
        2,
    )
    assert (c.train.epochs, c.train.batch_size, c.ep.free_iterations, c.ep.nudge_iterations) == (
        300,
        128,
        120,
        50,
    )
    assert c.ep.beta is None  # resolved per dataset at run time: 0.15 for CIFAR-100
    bp = build_config({}, grid.run_overrides(config, grid.RunSpec("cifar10", "resnet13", "relu", 0)))
    assert bp.model.arch == "resnet13" and bp.model.activation == "relu6"  # BP ignores the EP activation key
    assert (
        hr13.path == "cifar100/hopfield_resnet13/relu1/seed2"
        and hr13.name == "cifar100-hopfield_resnet13-relu1-s2"
    )


def test_the_demo_grid_replaces_the_papers():
    config = load("configs/pipeline_demo.yaml")
    runs = grid.validate_grid(config)
    assert {r.dataset for r in runs} == {"digits"} and grid.datasets_to_download(config) == []
    assert len(grid.runs_of_kind(config, "main")) == 8 and len(runs) == 8 + 2 + 1 + 12 + 3
    c = build_config({}, grid.run_overrides(config, runs[0]))
    assert (c.model.arch, c.train.epochs, c.train.max_batches) == ("vgg5", 10, None)  # settings.arch
    assert (c.model.width, c.ep.free_iterations, c.train.device) == (0.0625, 30, "cpu")
    c = build_config({}, grid.run_overrides(config, runs[2]))
    assert (c.model.arch, c.train.epochs, c.train.max_batches) == ("hopfield_resnet13", 4, 30)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"studies": {"main": {"kind": "main", "datasets": ["mnist"], "archs": ["vgg5"]}}},
            "studies.main.datasets: 'mnist' is not allowed",
        ),
        (
            {"studies": {"main": {"kind": "main", "datasets": ["digits"], "archs": ["vgg7"]}}},
            "studies.main.archs: 'vgg7' is not allowed",
        ),
        (
            {"studies": {"main": {"kind": "table", "datasets": ["digits"], "archs": ["vgg5"]}}},
            "studies.main.kind: 'table' is not allowed",
        ),
        ({"settings": {"all": {"ep.bta": 0.1}}}, "unknown key ep.bta; valid keys in ep:"),
        ({"settings": {"ep": {"optim.lr": "fast"}}}, "optim.lr: expected a number"),
        ({"settings": {"all": {"optim.lr": -1}}}, "settings for digits-vgg5-relu6-s0: optim.lr: must be > 0"),
        ({"settings": {"ep": {"optim.momentum": 5}}}, "optim.momentum: must be in [0, 1)"),
        ({"settings": {"all": {"model.width": 1e9}}}, "model.width: 1e+09 gives vgg5 at least"),
        # checked against the network itself (built on the meta device), as the job would
        ({"settings": {"ep": {"optim.lr": [0.1, 0.2]}}}, "optim.lr: vgg5 has 10 parameter tensors"),
        ({"settings": {"ep": {"model.gains": [0.5]}}}, "gains: vgg5 has 5 edges, got 1 gains"),
        ({"studies": {}}, "studies: the grid has no runs"),
        ({"studies": {"main": None}}, "studies: the grid has no runs"),
        (
            {
                "studies": {
                    "s": {
                        "kind": "search",
                        "datasets": ["digits"],
                        "archs": ["vgg5"],
                        "search": {"ep.beta": [0.1, 0.2]},
                    }
                }
            },
            "a search chooses its best setting on validation; set data.val_size > 0",
        ),
        (
            {
                "studies": {
                    "s": {
                        "kind": "search",
                        "datasets": ["digits"],
                        "archs": ["vgg5"],
                        "search": {"model.arch": ["vgg5"]},
                    }
                }
            },
            "studies.s.search: model.arch is set by the study's own axes",
        ),
        (
            {"studies": {"d": {"kind": "depth_ablation", "datasets": ["digits"]}}},
            "studies.d.blocks: a depth study needs a list of block counts",
        ),
        (
            {"studies": {"m": {"kind": "main", "datasets": ["digits"], "archs": ["vgg5"], "blocks": [4]}}},
            "studies.m.blocks: only a study of kind depth_ablation has blocks",
        ),
        (
            {
                "studies": {
                    "m": {
                        "kind": "main",
                        "datasets": ["digits"],
                        "archs": ["hopfield_resnet13", "hopfield_resnet"],
                    }
                }
            },
            "hopfield_resnet and hopfield_resnet13 are one network (hopfield_resnet13)",
        ),
    ],
)
def test_bad_grids_name_the_problem(change, message):
    config = {
        "data_dir": "data",
        "seeds": [0],
        "studies": {"main": {"kind": "main", "datasets": ["digits"], "archs": ["vgg5"]}},
    }
    config.update(change)
    with pytest.raises(grid.GridError, match=re.escape(message)):
        grid.validate_grid(config)


def test_one_name_per_network():
    assert [naming.network_slug(a, b) for a, b in
            [("hopfield_resnet", 6), ("hopfield_resnet", 4), ("hopfield_plain", 8), ("vgg5", None)]] == [
        "hopfield_resnet19", "hopfield_resnet13", "hopfield_plain25", "vgg5"]  # fmt: skip
    assert naming.network_name("hopfield_resnet", 6) == naming.network_name("hopfield_resnet19")
    assert naming.network_name("hopfield_resnet19") == "Hopfield-ResNet19 (6 blocks)"
    assert naming.network_name("hopfield_plain", 2) == "Hopfield-Plain7 (2 blocks, no skips)"
    assert naming.network_name("hopfield_resnet13") == "Hopfield-ResNet13"
    assert (naming.blocks_of("hopfield_plain13"), naming.skips_of("hopfield_plain13")) == (4, False)
    assert build_network("hopfield_resnet", blocks=6, width=1 / 16).arch == "hopfield_resnet19"
    # MLflow groups charts by the prefix before '/': accuracies and losses first, then their own groups
    names = ["test_acc", "train_loss", "lr", "free_seconds", "activity.h1a", "free_residual", "grad_norm"]
    assert [naming.mlflow_metric_name(n) for n in names] == [
        "test_acc", "train_loss", "resources/lr", "resources/free_seconds", "diagnostics/activity.h1a",
        "diagnostics/free_residual", "diagnostics/grad_norm",
    ]  # fmt: skip
    # A main-study hopfield_resnet whose blocks come from the settings is named, and trained, by its depth.
    config = {"data_dir": "data", "seeds": [0],
              "studies": {"m": {"kind": "main", "datasets": ["fashion_mnist"], "archs": ["hopfield_resnet"]}},
              "settings": {"arch": {"hopfield_resnet": {"model.blocks": 6}}}}  # fmt: skip
    (run,) = grid.validate_grid(config)
    assert (
        run.path == "fashion_mnist/hopfield_resnet19/relu6/seed0"
        and "model.blocks=6" in grid.run_overrides(config, run)
    )
    assert grid.run_tags(config, run)["architecture"] == "hopfield_resnet19"
    assert grid.run_tags(config, run)["network"] == "Hopfield-ResNet19 (6 blocks)"


def test_a_grid_in_the_older_spelling_plans_the_same_runs(tmp_path):
    # `kind: sweep` with a `sweep:` mapping is how a search was written before it was renamed.
    old = yaml.safe_load((ROOT / "configs/pipeline_demo.yaml").read_text())
    beta = old["studies"]["beta"]
    beta["kind"], beta["sweep"] = "sweep", beta.pop("search")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    new = load("configs/pipeline_demo.yaml")
    alone = load("configs/pipeline_demo.yaml") | {"studies": old["studies"]}  # not merged over a search
    for config in (load(str(tmp_path / "old.yaml")), alone):
        assert grid.validate_grid(config) == grid.validate_grid(new)
        assert grid.runs_of_kind(config, "search") == grid.runs_of_kind(new, "search")
        assert grid.search_keys(config) == ["ep.beta"]
    # Merged over config.yaml's `search:`, the older `sweep:` of a --configfile is the one that counts.
    beta["sweep"] = {"ep.beta": [0.3]}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    runs = grid.runs_of_kind(load(str(tmp_path / "old.yaml")), "search")
    assert [dict(r.settings)["ep.beta"] for r in runs] == [0.3]


def test_the_algorithm_tag_is_the_tables_name(tmp_path):
    config = load("configs/pipeline_demo.yaml")
    cep, bp = grid.runs_of_kind(config, "main")[0], grid.RunSpec("digits", "resnet13", "relu", 0)
    (tmp_path / "ep.yaml").write_text("settings: {ep: {ep.estimator: ep}}\n")
    ep = load("configs/pipeline_demo.yaml", str(tmp_path / "ep.yaml"))
    for grid_config, run, name in ((config, cep, "cep"), (ep, cep, "ep"), (config, bp, "bp")):
        saved = resolve(build_config({}, grid.run_overrides(grid_config, run))).to_dict()
        assert grid.run_tags(grid_config, run)["algorithm"] == algorithm_of(saved) == name


def test_a_custom_grid_stands_alone_by_nulling_the_studies_it_does_not_want():
    config = load("tests/pipeline/fashion_only.yaml")
    runs = grid.validate_grid(config)
    assert {r.dataset for r in runs} == {"fashion_mnist"} and grid.datasets_to_download(config) == [
        "fashion_mnist"
    ]
    assert len(runs) == 2 * 2 and grid.profile_specs(config) == []
    assert set(grid.studies(config)) == {"main"}


def test_profile_arguments():
    config = load("configs/pipeline_demo.yaml")
    specs = grid.profile_specs(config)
    assert [s.name for s in specs][:2] == ["vgg5-w0.0625-b8", "vgg5-w0.0625-b32"]
    deep = [s for s in specs if s.blocks]
    assert [s.name for s in deep] == ["hopfield_resnet-d6-w0.125-b8"]  # d4 is hopfield_resnet13-w0.125-b8
    args = grid.profile_args(config, deep[0])
    assert args[:2] == ["--arch", "hopfield_resnet"] and args[-2:] == ["--blocks", "6"]
    assert len(specs) == 2 * 2 * 2 + 2 - 1


def test_one_network_is_profiled_once_however_many_studies_name_it():
    assert grid.canonical_network("hopfield_resnet", 4) == ("hopfield_resnet13", None)
    assert grid.canonical_network("hopfield_resnet", None) == ("hopfield_resnet13", None)  # bench default: 4
    assert grid.canonical_network("hopfield_resnet", 6) == ("hopfield_resnet", 6)
    assert grid.canonical_network("hopfield_plain13", None) == ("hopfield_plain13", None)
    config = {"profiles": {"archs": ["hopfield_resnet13", "hopfield_resnet", "vgg5"], "widths": [0.5, 0.5, 1],
                           "batch_sizes": [8], "depths": [4, 5, 4]}}  # fmt: skip
    names = [s.name for s in grid.profile_specs(config)]
    assert names == ["hopfield_resnet13-w0.5-b8", "hopfield_resnet13-w1-b8", "vgg5-w0.5-b8", "vgg5-w1-b8",
                     "hopfield_resnet-d5-w1-b8"]  # fmt: skip


EVERY_AGGREGATION = ["main_table", "ablations", "residual_ablation", "activation_ablation", "depth", "search",
                     "profiles", "weights", "convergence"]  # fmt: skip


def test_a_grid_plans_the_tables_and_figures_of_the_studies_it_has_and_no_others():
    # The paper's and the demo's grids have every kind of study, and profiling: every output, as before; the
    # demo's truncated phases (30 / 10) also turn the fidelity monitor on, so it has the fidelity figure too.
    assert grid.aggregations(load()) == EVERY_AGGREGATION
    assert grid.aggregations(load("configs/pipeline_demo.yaml")) == [*EVERY_AGGREGATION, "fidelity"]
    # Dropped studies plan nothing: no ablation table or figure, no search, no profiles.
    fashion = load("tests/pipeline/fashion_only.yaml")
    assert grid.aggregations(fashion) == ["main_table", "weights", "convergence"]
    # A main study of ReLU1 only: its main table and convergence, but no weights (ReLU6 EP against backprop).
    own = load("tests/pipeline/tiny.yaml", "tests/pipeline/own_grid.yaml")
    assert grid.aggregations(own) == ["main_table", "depth", "convergence", "fidelity"]
    assert {r.activation for r in grid.runs_of_kind(own, "main")} == {"relu1"}
    assert grid.weight_pair(own) is None
    # One ablation without the other: the ablation table and that ablation's figure only.
    residual = {"seeds": [0], "studies": {"r": {"kind": "residual_ablation", "datasets": ["digits"],
                                                "archs": ["hopfield_resnet13", "hopfield_plain13"]}}}  # fmt: skip
    assert grid.aggregations(residual) == ["ablations", "residual_ablation"]
    # Backprop alone: its table; no weights or convergence, which need an EP network.
    bp = {"seeds": [0], "studies": {"b": {"kind": "main", "datasets": ["digits"], "archs": ["resnet13"]}}}
    assert grid.aggregations(bp) == ["main_table"]


def test_the_weight_histograms_show_a_run_of_the_papers_activation():
    config = {"seeds": [0], "studies": {"m": {"kind": "main", "datasets": ["digits"],
                                              "archs": ["hopfield_resnet13", "resnet13"],
                                              "activations": ["relu1", "relu6"]}}}  # fmt: skip
    ep, bp = grid.weight_pair(config)
    assert (ep.arch, ep.activation, bp.arch) == ("hopfield_resnet13", "relu6", "resnet13")


def _sweeps(config: dict, run: grid.RunSpec) -> tuple[str, int, int, int]:
    c = build_config({}, grid.run_overrides(config, run)).ep
    return c.recipe, c.free_iterations, c.nudge_iterations, c.eval_iterations


def test_a_studys_recipe_sets_its_sweep_counts_over_the_grids_lower_layers():
    """config.yaml's `settings.ep` sets the authors' counts; a study's `ep.recipe: fast` still trains fast's
    (40 / 15, tested at 40), and keys set beside the recipe in the study win, as in a run's own config."""
    config = load()
    run = grid.RunSpec("cifar10", "hopfield_resnet13", "relu6", 0)
    assert _sweeps(config, run) == ("authors", 120, 50, 120)
    fast = grid.RunSpec("cifar10", "hopfield_resnet13", "relu6", 0, settings=(("ep.recipe", "fast"),))
    assert _sweeps(config, fast) == ("fast", 40, 15, 40)
    longer = dataclasses.replace(fast, settings=(("ep.nudge_iterations", 20), ("ep.recipe", "fast")))
    assert _sweeps(config, longer) == ("fast", 40, 20, 40)
    # A recipe in a lower layer of `settings` (all) gives way to counts the higher ones set: the family
    # layer's `ep.nudge_iterations: 50` and a dataset layer's free iterations.
    config["settings"]["all"] = {**config["settings"].get("all", {}), "ep.recipe": "fast"}
    config["settings"]["dataset"] = {"cifar10": {"ep.free_iterations": 12}}
    assert _sweeps(config, run) == ("fast", 12, 50, 40)
    with pytest.raises(
        grid.GridError, match=r"^ep\.recipe: 'quick' is not allowed; valid choices: authors, fast"
    ):
        grid.run_overrides(config, dataclasses.replace(run, settings=(("ep.recipe", "quick"),)))


def _fidelity_every(config: dict, run: grid.RunSpec) -> int:
    return resolve(build_config({}, grid.run_overrides(config, run))).train.fidelity_every


def test_the_fidelity_figure_is_planned_iff_a_run_has_the_monitor_on():
    """`fidelity_runs` are the EP runs whose resolved `train.fidelity_every` is > 0, as each run resolves
    it: off at the authors' 120 / 50 (the paper's grid), on for truncated phases, a recipe that truncates
    them or `auto`, and whenever set explicitly; never for backprop."""
    paper = load()
    assert grid.fidelity_runs(paper) == [] and "fidelity" not in grid.aggregations(paper)
    # The demo: every EP run at 30 / 10, probed every 10 steps (so each epoch of a 30-batch run has one).
    demo = load("configs/pipeline_demo.yaml")
    ep_runs = [r for r in grid.all_runs(demo) if r.family == "ep"]
    assert grid.fidelity_runs(demo) == ep_runs and {_fidelity_every(demo, r) for r in ep_runs} == {10}
    # One study of the paper's grid selecting a recipe: exactly its runs, at the default interval.
    for recipe in ("fast", "auto", "adaptive"):
        config = load()
        config["studies"]["depth"]["settings"] = {"ep.recipe": recipe}
        monitored = grid.fidelity_runs(config)
        assert monitored == grid.study_runs(config, "depth"), recipe
        assert {_fidelity_every(config, r) for r in monitored} == {FIDELITY_EVERY}
        assert grid.aggregations(config) == [*EVERY_AGGREGATION, "fidelity"]
    # Turned off where it would be on: not planned; turned on at the authors' counts: planned.
    config = load()
    config["studies"]["depth"]["settings"] = {"ep.recipe": "fast", "train.fidelity_every": 0}
    assert grid.fidelity_runs(config) == [] and "fidelity" not in grid.aggregations(config)
    config = load()
    config["settings"]["all"] = {**config["settings"].get("all", {}), "train.fidelity_every": 50}
    assert grid.fidelity_runs(config) == [r for r in grid.all_runs(config) if r.family == "ep"]
    # Backprop alone, even with the interval set: no monitor, no figure.
    bp = {"seeds": [0], "settings": {"all": {"train.fidelity_every": 5}},
          "studies": {"b": {"kind": "main", "datasets": ["digits"], "archs": ["resnet13", "vgg5_bp"]}}}  # fmt: skip
    assert grid.fidelity_runs(bp) == [] and grid.aggregations(bp) == ["main_table"]
