import pytest

from ep_core.training.config import ConfigError, build_config, dump_config, load_config, resolve


def test_defaults_are_the_authors_per_dataset():
    c = resolve(build_config({"data": {"name": "cifar10"}}))
    assert (c.ep.beta, c.optim.weight_decay, c.optim.lr, c.optim.eta_min) == (0.1, 2.5e-4, 0.03, 2e-6)
    assert (c.ep.free_iterations, c.ep.nudge_iterations, c.ep.eval_iterations) == (120, 50, 120)
    assert (c.train.batch_size, c.train.epochs, c.ep.clip_norm, c.ep.order) == (128, 300, 1.0, "even_odd")
    assert (c.optim.optimizer, c.optim.momentum, c.optim.nesterov, c.optim.scheduler) == (
        "sgd",
        0.9,
        True,
        "cosine",
    )
    for name in ("cifar100", "fashion_mnist"):
        c = resolve(build_config({"data": {"name": name}}))
        assert (c.ep.beta, c.optim.weight_decay) == (0.15, 3.5e-4)
    bp = resolve(build_config({"model": {"arch": "resnet13"}}))
    assert (bp.optim.optimizer, bp.optim.lr, bp.optim.weight_decay, bp.optim.scheduler) == (
        "adam",
        1e-3,
        2.5e-4,
        "none",
    )
    assert bp.data.preset == "authors_bp_resnet"
    vgg = resolve(build_config({"model": {"arch": "vgg5_bp"}}))
    assert (vgg.optim.optimizer, vgg.optim.lr, vgg.optim.weight_decay, vgg.optim.eta_min) == (
        "sgd",
        0.1,
        5e-4,
        0.0,
    )
    assert resolve(build_config({"optim": {"optimizer": "adamw"}})).optim.lr == 1e-4


def test_explicit_values_win_over_auto_and_overrides_parse_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {name: digits}\nep: {beta: 0.3}\n")
    c = resolve(
        load_config(path, ["ep.beta=0.25", "optim.lr=[0.1, 0.2]", "ep.clip_norm=null", "ep.warm_start=false"])
    )
    assert (c.ep.beta, c.optim.lr, c.ep.clip_norm, c.ep.warm_start) == (0.25, [0.1, 0.2], None, False)
    assert c.flat()["ep.beta"] == 0.25 and c.flat()["data.name"] == "digits"
    # YAML 1.1 reads 1e-3 as a string; number keys accept it, and still reject words and infinities.
    assert build_config({"optim": {"lr": "1e-3", "weight_decay": ["5e-4", 1]}}).optim.lr == 1e-3
    assert build_config({}, ["optim.weight_decay=[5e-4, 1]"]).optim.weight_decay == [5e-4, 1.0]
    for bad in ("fast", "inf", "nan"):
        with pytest.raises(ConfigError, match=r"optim\.lr: expected a number"):
            build_config({}, [f"optim.lr={bad}"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ep.bta=1"], "unknown key ep.bta; valid keys in ep: estimator, beta,"),
        (["ep.beta=fast"], "ep.beta: expected a number or null, got 'fast'"),
        (["train.epochs=1.5"], "train.epochs: expected an integer, got 1.5"),
        (["ep.warm_start=1"], "ep.warm_start: expected true/false, got 1"),
        (["optim.lr=[0.1, x]"], "optim.lr: expected a number or a list of numbers or null"),
        (
            ["model.arch=resnet50"],
            "model.arch: 'resnet50' is not allowed; valid choices: vgg5, hopfield_resnet13",
        ),
        (
            ["data.name=mnist"],
            "data.name: 'mnist' is not allowed; valid choices: cifar10, cifar100, fashion_mnist",
        ),
        (["model.activation=tanh"], "model.activation: 'tanh' is not allowed; valid choices: relu6, relu1"),
        (["ep.order=random"], "ep.order: 'random' is not allowed; valid choices: even_odd, coloring"),
        (["ep.beta=0"], "ep.beta: must be > 0"),
        (["train.batch_size=0"], "train.batch_size: must be positive"),
        (["model.alpha_range=[5, 1]"], "model.alpha_range: must be [low, high]"),
        (["nope.x=1"], "unknown section 'nope'"),
        (["beta=0.1"], "--set expects section.key=value"),
        (
            ["model.arch=resnet13", "model.gains=[0.5]"],
            "model.gains: applies to the EP networks only, not resnet13",
        ),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config({}, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("data: 3\n")
    with pytest.raises(ConfigError, match="data: expected a mapping"):
        load_config(bad)


def test_a_config_saved_by_an_older_run_still_loads(tmp_path):
    # the ep section as runs wrote it before EPConfig was built from the estimator's fields (that key order)
    path = tmp_path / "config.yaml"
    path.write_text(
        "data: {name: digits}\n"
        "ep:\n  estimator: ep\n  beta: 0.15\n  free_iterations: 40\n  nudge_iterations: 15\n"
        "  eval_iterations: 40\n  order: coloring\n  omega: 1.0\n  nudge_omega: null\n  cost: mse\n"
        "  warm_start: true\n  clip_norm: 1.0\n  tol: 0.001\n  nudge_tol: null\n  batch_phases: true\n"
        "  solver: anderson\n  nudge_solver: fixed_point\n  anderson_memory: 5\n  channels_last: false\n"
        "  compile: false\n  cuda_graphs: false\n  chunk_size: null\n  bf16_sweeps: 0\n  recipe: fast\n"
    )
    c = resolve(load_config(path))
    assert (c.ep.estimator, c.ep.free_iterations, c.ep.eval_iterations, c.ep.tol, c.ep.solver) == (
        "ep",
        40,
        40,
        1e-3,
        "anderson",
    )
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(c))  # what this run saves loads to the same configuration
    assert load_config(again) == c


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["ep.estimator=ep", "ep.beta=0"],
            "ep.beta: must be != 0 (one-sided EP nudges with 0 and +beta), got 0.0",
        ),
        (
            ["ep.cuda_graphs=true", "ep.solver=anderson"],
            "ep.cuda_graphs: needs fixed-length phases (ep.tol and ep.nudge_tol null, ep.solver fixed_point)",
        ),
        (["ep.nudge_omega=0"], "ep.nudge_omega: must satisfy 0 < omega < 2, got 0.0"),
        (["ep.chunk_size=0"], "ep.chunk_size: must be >= 1 or null, got 0"),
    ],
)
def test_estimator_settings_are_checked_by_the_estimator_in_the_configs_words(overrides, message):
    # the estimator's own check (EquilibriumProp.__post_init__), its message spelt with ep. keys and null
    with pytest.raises(ConfigError) as info:
        build_config({}, overrides)
    assert str(info.value) == message
