"""Malformed input, as a new user or a cluster operator would type it: each is one line on stderr naming the
key or file and what is allowed, exit status 2, no traceback, and nothing written. Plus a corrupted
checkpoint, which falls back to the previous one."""

import json
import os
import pickle
import runpy
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ep_core.cli import main
from ep_core.training.config import build_config
from ep_core.training.run import train
from ep_core.training.rundir import read_history

BASE = {
    "data": {"name": "synthetic", "synthetic_train": 32, "synthetic_test": 16},
    "model": {"arch": "hopfield_resnet13", "width": 0.0625},
    "ep": {"free_iterations": 2, "nudge_iterations": 1, "eval_iterations": 2},
    "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "device": "cpu"},
}

# (--set overrides, what the one line must contain)
BAD_SETTINGS = [
    (["ep.bta=0.1"], "unknown key ep.bta; valid keys in ep:"),
    (["foo.bar=1"], "unknown section 'foo'"),
    (["nodot=1"], "--set expects section.key=value"),
    (["train.epochs=many"], "train.epochs: expected an integer"),
    (["ep.beta=abc"], "ep.beta: expected"),
    (["ep.warm_start=maybe"], "ep.warm_start: expected true/false"),
    (["data.name=imagenet"], "data.name: 'imagenet' is not allowed; valid choices:"),
    (["model.arch=transformer"], "model.arch: 'transformer' is not allowed"),
    (["model.activation=gelu"], "model.activation: 'gelu' is not allowed"),
    (["ep.order=random"], "ep.order: 'random' is not allowed"),
    (["ep.cost=hinge"], "ep.cost: 'hinge' is not allowed"),
    (["ep.estimator=xx"], "ep.estimator: 'xx' is not allowed"),
    (["optim.optimizer=lion"], "optim.optimizer: 'lion' is not allowed"),
    (["optim.scheduler=step"], "optim.scheduler: 'step' is not allowed"),
    (["data.preset=foo"], "data.preset: 'foo' is not allowed"),
    (["model.width=1e9"], "model.width: 1e+09 gives hopfield_resnet13 at least"),
    (["model.width=0"], "model.width: must be positive"),
    (["model.width=-1"], "model.width: must be positive"),
    (["optim.lr=0"], "optim.lr: must be > 0"),
    (["optim.lr=-0.1"], "optim.lr: must be > 0"),
    (["optim.lr=[0.1, -0.2]"], "optim.lr: must be > 0"),
    (["optim.lr=[0.1, 0.2, 0.3]"], "optim.lr: hopfield_resnet13 has 22 parameter tensors"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay: must be >= 0"),
    (["optim.momentum=5"], "optim.momentum: must be in [0, 1)"),
    (["optim.momentum=-0.1"], "optim.momentum: must be in [0, 1)"),
    (["optim.momentum=1"], "optim.momentum: must be in [0, 1)"),
    (["optim.eta_min=-1"], "optim.eta_min: must be >= 0"),
    (["ep.free_iterations=0"], "ep.free_iterations: must be >= 1"),
    (["ep.eval_iterations=0"], "ep.eval_iterations: must be >= 1"),
    (["ep.nudge_iterations=0"], "ep.nudge_iterations: must be >= 1"),
    (["ep.free_iterations=-3"], "ep.free_iterations: must be >= 1"),
    (["train.seed=-1"], "train.seed: must be >= 0"),
    (["data.split_seed=-1"], "data.split_seed: must be >= 0"),
    (["train.batch_size=0"], "train.batch_size: must be positive"),
    (["train.eval_batch_size=0"], "train.eval_batch_size: must be positive"),
    (["train.epochs=0"], "train.epochs: must be positive"),
    (["train.checkpoint_every=0"], "train.checkpoint_every: must be positive"),
    (["train.max_batches=0"], "train.max_batches: must be >= 1"),
    (["ep.beta=0"], "ep.beta: must be > 0"),
    (["ep.beta=-0.1"], "ep.beta: must be > 0"),
    (["ep.clip_norm=0"], "ep.clip_norm: must be positive or null"),
    (["ep.tol=-1"], "ep.tol: must be positive or null"),
    (["ep.anderson_memory=0"], "ep.anderson_memory: must be >= 1"),
    (["ep.cuda_graphs=true", "ep.tol=1e-3"], "ep.cuda_graphs: needs fixed-length phases"),
    (["data.val_size=-1"], "data.val_size: must be >= 0"),
    (["data.val_size=10000"], "val_size"),
    (["data.synthetic_train=0"], "data.synthetic_train: must be >= 1"),
    (["data.num_workers=-1"], "data.num_workers: must be >= 0"),
    (["model.alpha_range=[5, 1]"], "model.alpha_range: must be [low, high]"),
    (["model.gains=[0.5]"], "gains: hopfield_resnet13 has 13 edges, got 1 gains"),
    (["model.gains=[-1.0]"], "model.gains: must all be > 0"),
    (["model.arch=resnet13", "model.gains=[1.0]"], "model.gains: applies to the EP networks only"),
    (["model.blocks=0"], "model.blocks: must be positive"),
    (["train.device=tpu"], "train.device: 'tpu' is not"),
    (["data.name=cifar10", "data.data_dir=/nonexistent"], "cifar10 not found under /nonexistent"),
]

BAD_COMMANDS = [
    (["gradcheck", "--arch", "vgg5", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (
        ["gradcheck", "--arch", "vgg5", "--input-size", "20"],
        "argument --input-size: must be a multiple of 16",
    ),
    (["gradcheck", "--arch", "vgg5", "--width", "0"], "argument --width: must be a positive number"),
    (["gradcheck", "--arch", "vgg5", "--max-iterations", "0"], "argument --max-iterations: must be >= 1"),
    (["gradcheck", "--arch", "vgg5", "--tol", "0"], "argument --tol: must be a positive number"),
    (["gradcheck", "--arch", "vgg9"], "argument --arch: invalid choice: 'vgg9'"),
    (["gradcheck", "--arch", "vgg5", "--sweep", "a,b"], "expected comma-separated numbers"),
    (
        ["bench", "--arch", "vgg5", "--blocks", "3"],
        "--blocks: applies to --arch hopfield_resnet or hopfield_plain only",
    ),
    (["bench", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1"),
    (["bench", "--free-iterations", "0"], "argument --free-iterations: must be >= 1"),
    (
        ["bench", "--anderson-memory", "3"],
        "--anderson-memory: applies to --solver or --nudge-solver anderson only",
    ),
    (["bench", "--no-schedules", "--schedule-tol", "1e-4"], "--schedule-tol: does not apply"),
    (["bench", "--device", "tpu"], "--device: 'tpu' is not"),
    (["train", "--set", "ep.beta=0.1"], "the following arguments are required: --out"),
    (["train", "--out", "run", "--run-name", "x"], "--run-name: applies with --mlflow only"),
    (
        ["train", "--out", "run", "--mlflow-experiment", "x"],
        "--mlflow-experiment: applies with --mlflow only",
    ),
    (["train", "--out", "run", "--mlflow", "i.json", "--mlflow-experiment", "x"], "the init.json names the"),
    (["train", "--out", "run", "--threads", "0"], "argument --threads: must be >= 1"),
    (["sync"], "the following arguments are required: RUN_DIR"),
    (["download", "--dataset", "imagenet"], "unknown dataset 'imagenet'; valid choices: cifar10"),
    (["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
]


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exit:  # argparse
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert needle in lines[0], lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture
def base_config(tmp_path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


@pytest.mark.parametrize(("overrides", "needle"), BAD_SETTINGS)
def test_bad_settings(tmp_path, base_config, capsys, overrides, needle):
    out = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    code, err = run_cli(["train", "--config", str(base_config), "--out", str(out), *sets], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), BAD_COMMANDS)
def test_bad_command_lines(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(args, capsys)
    assert_one_line_error(code, err, needle)
    assert snapshot(tmp_path) == {}


def _config_file(tmp_path: Path, kind: str) -> tuple[str, str]:
    path = tmp_path / "bad.yaml"
    if kind == "missing":
        return str(tmp_path / "missing.yaml"), "does not exist"
    content, needle = {
        "invalid": ("data: {name: [unclosed\n", "not valid YAML"),
        "list": ("- data\n- model\n", "the top level must be a mapping of sections"),
        "section": ("ep: 3\n", "ep: expected a mapping of keys"),
    }[kind]
    path.write_text(content)
    return str(path), needle


@pytest.mark.parametrize("kind", ["missing", "invalid", "list", "section"])
def test_bad_config_files(tmp_path, capsys, kind):
    path, needle = _config_file(tmp_path, kind)
    before = snapshot(tmp_path)
    code, err = run_cli(["train", "--config", path, "--out", str(tmp_path / "run")], capsys)
    assert_one_line_error(code, err, needle)
    assert snapshot(tmp_path) == before


def _bad_out(tmp_path: Path, kind: str) -> tuple[Path, str]:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    return {
        "is_file": (blocker, "is a file, not a directory"),
        "under_file": (blocker / "sub" / "run", "a_file is a file, not a directory"),
        "unwritable": (Path("/proc/ep-core-test/run"), "cannot write there"),  # procfs: even root cannot
    }[kind]


@pytest.mark.parametrize("kind", ["is_file", "under_file", "unwritable"])
def test_bad_out_directories(tmp_path, base_config, capsys, kind):
    out, needle = _bad_out(tmp_path, kind)
    before = snapshot(tmp_path)
    code, err = run_cli(["train", "--config", str(base_config), "--out", str(out)], capsys)
    assert_one_line_error(code, err, needle)
    assert snapshot(tmp_path) == before and not Path("/proc/ep-core-test").exists()


@pytest.mark.parametrize(
    ("target", "content", "needle"),
    [
        ("missing.json", None, "missing.json: no such init.json"),
        ("list.json", "[1, 2]", "not an init.json"),
        ("foo://bar", None, "--mlflow: 'foo://bar' is not a tracking URI"),
        ("mlflow.db", None, "--mlflow: 'mlflow.db' is not a tracking URI"),
    ],
)
def test_bad_mlflow_targets(tmp_path, base_config, capsys, target, content, needle):
    if content is not None:
        (tmp_path / target).write_text(content)
    uri = str(tmp_path / target) if target.endswith(".json") else target
    out = tmp_path / "run"
    code, err = run_cli(["train", "--config", str(base_config), "--out", str(out), "--mlflow", uri], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(build_config(BASE), out) == 0
    return out


def _corrupt(run: Path, kind: str) -> str:
    if kind == "metrics_truncated":
        text = (run / "metrics.json").read_text()
        (run / "metrics.json").write_text(text[: len(text) // 2])
        return "metrics.json: not valid JSON"
    if kind == "metrics_list":
        (run / "metrics.json").write_text("[]")
        return "metrics.json: not a run's metrics"
    if kind == "config_invalid":
        (run / "config.yaml").write_text("data: {name: [\n")
        return "config.yaml: not valid YAML"
    if kind == "config_list":
        (run / "config.yaml").write_text("- 1\n- 2\n")
        return "config.yaml: not a run configuration"
    (run / "metrics.json").unlink()  # an unfinished run whose only checkpoint is damaged
    if kind == "checkpoint_empty":
        (run / "checkpoint.pt").write_bytes(b"")
    else:
        model = (run / "model.pt").read_bytes()
        (run / "checkpoint.pt").write_bytes(model[: len(model) // 2])
    return "checkpoint.pt is unreadable"


@pytest.mark.parametrize(
    "kind",
    ["metrics_truncated", "metrics_list", "config_invalid", "config_list", "checkpoint_empty",
     "checkpoint_truncated"],
)  # fmt: skip
def test_a_damaged_run_directory_is_named_with_what_to_do(tmp_path, finished_run, base_config, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    needle = _corrupt(run, kind)
    before = snapshot(run)
    code, err = run_cli(["train", "--config", str(base_config), "--out", str(run)], capsys)
    assert_one_line_error(code, err, needle)
    assert str(run) in err and ("delete" in err or "restore" in err)
    assert snapshot(run) == before


def test_a_run_with_another_configuration_and_sync_of_a_plain_directory(
    tmp_path, finished_run, base_config, capsys
):
    code, err = run_cli(["train", "--config", str(base_config), "--out", str(finished_run),
                         "--set", "ep.beta=0.3"], capsys)  # fmt: skip
    assert_one_line_error(code, err, "holds a run with another configuration (ep.beta: 0.15 != 0.3)")
    code, err = run_cli(["sync", str(finished_run)], capsys)
    assert_one_line_error(code, err, "was never mirrored to MLflow (no mlflow.json)")
    code, err = run_cli(["sync", str(tmp_path / "nothing")], capsys)
    assert_one_line_error(code, err, "not a run directory")


def test_a_few_of_them_through_the_console_script(tmp_path):
    """The same errors from the installed command (a real process: exit status, stderr)."""
    for args, needle in [(["train", "--out", str(tmp_path / "r"), "--set", "optim.lr=0"], "optim.lr"),
                         (["bench", "--arch", "vgg5", "--blocks", "3"], "--blocks")]:  # fmt: skip
        result = subprocess.run(
            [Path(sys.executable).parent / "ep-core", *args], capture_output=True, text=True
        )
        assert_one_line_error(result.returncode, result.stderr, needle)
    assert not (tmp_path / "r").exists()


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, base_config, capfd):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "ep_core.cli", "train", "--config", str(base_config), "--out", str(out),
            "--threads", "1", "--set", "train.epochs=4"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.prev.pt").exists():  # two checkpoints: after epochs 1 and 2
        assert job.poll() is None and time.time() < deadline
        time.sleep(0.02)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == 128 + signal.SIGTERM
    epochs_done = len(read_history(out))
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    config = build_config(BASE, ["train.epochs=4"])
    assert train(config, out) == 0
    err = capfd.readouterr().err
    warning = [line for line in err.splitlines() if "warning:" in line]
    assert len(warning) == 1 and "checkpoint.pt is unreadable" in warning[0]
    assert "resuming from the previous checkpoint checkpoint.prev.pt" in warning[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 4 and epochs_done >= 2
    assert [row["epoch"] for row in read_history(out)] == [1, 2, 3, 4]
    assert not (out / "checkpoint.pt").exists() and not (out / "checkpoint.prev.pt").exists()


def test_files_respect_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert train(build_config(BASE), tmp_path / "run") == 0
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def _tiny_cifar10(root: Path, bad: dict) -> Path:
    """CIFAR-10's files under ``root``, readable but for data_batch_1, whose pickled dict is ``bad``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for k in range(1, 6):
        (folder / f"data_batch_{k}").write_bytes(pickle.dumps(bad if k == 1 else good))
    (folder / "test_batch").write_bytes(pickle.dumps(good))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(k) for k in range(10)]}))
    return folder / "data_batch_1"


@pytest.fixture
def offline(monkeypatch) -> None:
    def urlopen(*args, **kwargs):
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_a_malformed_dataset_file_is_named(tmp_path, base_config, capsys):
    path = _tiny_cifar10(tmp_path / "data", {"images": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    out, sets = tmp_path / "run", ["data.name=cifar10", f"data.data_dir={tmp_path / 'data'}"]
    args = [
        "train",
        "--config",
        str(base_config),
        "--out",
        str(out),
        *(a for s in sets for a in ("--set", s)),
    ]
    code, err = run_cli(args, capsys)
    assert_one_line_error(code, err, f"{path}: expected a pickled dict with 'data' (N x 3072 uint8)")
    assert "found ['images', 'labels']" in err and not out.exists()


def test_download_without_network_says_what_to_do_and_accept_present_keeps_the_copy(
    tmp_path, capsys, offline
):
    _tiny_cifar10(tmp_path, {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    args = ["download", "--dataset", "cifar10", "--data-dir", str(tmp_path)]
    before = snapshot(tmp_path)
    code, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "ep-core download: error: cifar10: download failed (<urlopen error")
    assert "md5 differs from torchvision's: cifar-10-batches-py/data_batch_1, " in err
    assert err.strip().endswith("or pass --accept-present to use these as they are, without md5 checks")
    assert snapshot(tmp_path) == before
    assert run_cli([*args, "--accept-present"], capsys) == (0, "")


def test_the_workflow_download_rule_says_it_in_its_log_and_exits_2(tmp_path, capsys, monkeypatch, offline):
    _tiny_cifar10(tmp_path / "data", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    log = tmp_path / "download.log"
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # the script sends both to its log: restore them after
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    rule = SimpleNamespace(
        wildcards=SimpleNamespace(dataset="cifar10"), output=[str(tmp_path / "data" / ".cifar10.ready")],
        log=[str(log)], params=SimpleNamespace(accept_present=False),
    )  # fmt: skip
    script = Path(__file__).parents[1] / "workflow" / "scripts" / "download.py"
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(script), init_globals={"snakemake": rule})
    sys.stdout.close()  # the log, which snakemake's process would close on exit
    lines = log.read_text().splitlines()
    assert exit.value.code == 2 and len(lines) == 1 and "Traceback" not in log.read_text()
    assert lines[0].startswith("download cifar10: error: cifar10: download failed (<urlopen error")
    assert lines[0].endswith(
        "or set data_accept_present: true in the config to use these as they are, without md5 checks"
    )
    assert capsys.readouterr().err.strip() == lines[0]
    rule.params.accept_present = True
    runpy.run_path(str(script), init_globals={"snakemake": rule})
    sys.stdout.close()
    assert log.read_text() == ""
