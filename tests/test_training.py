"""Training runs: outputs, determinism, resume after kill -9 and SIGTERM, divergence, bad configs."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from ep_core.training import dead_layers
from ep_core.training.config import build_config
from ep_core.training.records import HISTORY_MEASUREMENTS
from ep_core.training.run import EXIT_DIVERGED, train

# A fast EP run: tiny Hopfield-ResNet13 on synthetic data, 8 batches per epoch.
FAST = {
    "data": {"name": "synthetic", "synthetic_train": 128, "synthetic_test": 64, "val_size": 32},
    "model": {"arch": "hopfield_resnet13", "width": 0.0625},
    "ep": {"free_iterations": 6, "nudge_iterations": 3, "eval_iterations": 6},
    "train": {"epochs": 3, "batch_size": 12, "eval_batch_size": 64, "device": "cpu"},
}


def fast_config(*overrides: str):
    return build_config(FAST, list(overrides))


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ep_core.cli", *args], capture_output=True, text=True, **kwargs
    )


def as_set_args(values: dict) -> list[str]:
    return [
        arg
        for s, sec in values.items()
        for k, v in sec.items()
        for arg in ("--set", f"{s}.{k}={json.dumps(v)}")
    ]


def deterministic_history(run: Path) -> pd.DataFrame:
    history = pd.read_csv(run / "history.csv")
    return history.drop(columns=[c for c in history.columns if c in HISTORY_MEASUREMENTS])


def assert_same_run(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(deterministic_history(a), deterministic_history(b), check_exact=True)
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train(fast_config(), out) == 0
    return out


def test_a_run_writes_its_records(reference_run):
    out = reference_run
    assert {p.name for p in out.iterdir()} == {
        "config.yaml", "history.csv", "metrics.json", "model.pt", "weights_summary.csv", "weights_histograms.json",
    }  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs_completed"] == 3
    assert metrics["config"]["ep"]["beta"] == 0.15 and metrics["config"]["optim"]["lr"] == 0.03  # resolved
    assert metrics["seed"] == 0 and metrics["alphas"] == [6.0] * 8
    assert metrics["num_parameters"] > 0 and metrics["wall_seconds"] > 0 and metrics["peak_memory_mb"] > 0
    assert metrics["versions"]["torch"] == importlib.metadata.version("torch")
    assert metrics["git_commit"] is None or len(metrics["git_commit"]) >= 40
    assert "optimistic" in metrics["best_test_over_epochs"]["protocol"]
    assert metrics["dead_layers"] == {}
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    best = history.loc[history["val_acc"].idxmax()]
    assert metrics["best_val"] == {
        "epoch": int(best["epoch"]),
        "val_acc": best["val_acc"],
        "test_acc": best["test_acc"],
    }
    for column in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "epoch_seconds", "free_seconds",
                   "nudged_seconds", "gradient_seconds", "peak_memory_mb", "free_residual", "free_iterations", "nudged_residual",
                   "nudged_iterations", "activity.h4b", "saturation_low.h1a", "saturation_high.h1a"):  # fmt: skip
        assert column in history.columns
    assert history["free_iterations"].eq(6).all() and history["nudged_iterations"].eq(3).all()
    # Cosine schedule over 3 epochs from 0.03 to 2e-6, stepped after each epoch.
    assert history["lr"].tolist() == pytest.approx(
        [0.03, 0.03 * 0.75 + 2e-6 * 0.25, 0.03 * 0.25 + 2e-6 * 0.75], rel=1e-6
    )
    summary = pd.read_csv(out / "weights_summary.csv")
    assert len(summary) == 22 and set(summary["kind"]) == {"bias", "weight"}
    assert summary["frac_below_0.1_init"].between(0, 1).all() and (summary["init_rms"] > 0).all()
    histograms = json.loads((out / "weights_histograms.json").read_text())
    assert sum(histograms["edges.h4b_to_out.weight"]["counts"]) == 10 * 32 * 4
    config = (out / "config.yaml").read_text()
    assert "beta: 0.15" in config and "preset: authors_ep" in config


def test_same_seed_same_history_and_a_completed_run_is_not_redone(reference_run, tmp_path):
    assert train(fast_config(), tmp_path / "again") == 0
    assert_same_run(reference_run, tmp_path / "again")
    before = (tmp_path / "again" / "metrics.json").read_text()
    result = cli("train", "--out", str(tmp_path / "again"), *as_set_args(FAST))
    assert result.returncode == 0 and "already completed" in result.stderr
    assert (tmp_path / "again" / "metrics.json").read_text() == before
    other = train(fast_config("train.seed=1"), tmp_path / "seed1")
    assert other == 0 and not deterministic_history(tmp_path / "seed1").equals(
        deterministic_history(reference_run)
    )


def _wait_for(predicate, process, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def _history_rows(out: Path) -> int:
    try:
        return len(pd.read_csv(out / "history.csv"))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


# 40 batches of 6 per epoch (~1 s on 2 cores), so a kill lands inside an epoch.
SLOW_EPOCHS = {
    **FAST,
    "data": {**FAST["data"], "synthetic_train": 272},
    "train": {**FAST["train"], "epochs": 4, "batch_size": 6},
}


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slow") / "run"
    assert train(build_config(SLOW_EPOCHS), out) == 0
    return out


def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, slow_reference):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ep_core.cli", "train", "--out", str(out), *as_set_args(SLOW_EPOCHS)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: _history_rows(out) >= 2 and (out / "checkpoint.pt").exists(), process)
    time.sleep(0.4)  # into epoch 3
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert _history_rows(out) < 4 and not (out / "metrics.json").exists()
    resumed = cli("train", "--out", str(out), *as_set_args(SLOW_EPOCHS))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch" in resumed.stderr
    assert_same_run(slow_reference, out)


def test_sigterm_checkpoints_mid_epoch_and_the_rerun_finishes_identically(tmp_path, slow_reference):
    out = tmp_path / "terminated"
    args = [sys.executable, "-m", "ep_core.cli", "train", "--out", str(out), *as_set_args(SLOW_EPOCHS)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _history_rows(out) >= 1, process)
    time.sleep(0.4)  # into epoch 2
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "checkpoint saved at epoch 2, batch" in stderr
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1 and checkpoint["next_batch"] > 0  # mid-epoch: 0-based epoch 1
    assert checkpoint["warm_states"] is not None and len(checkpoint["history"]) == 1
    assert not (out / "metrics.json").exists()
    resumed = cli("train", "--out", str(out), *as_set_args(SLOW_EPOCHS))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at epoch 2, batch" in resumed.stderr
    assert_same_run(slow_reference, out)


def test_a_diverging_run_is_recorded_as_diverged(tmp_path):
    out = tmp_path / "boom"
    result = cli(
        "train", "--out", str(out), *as_set_args(FAST), "--set", "optim.lr=1e12", "--set", "ep.clip_norm=null"
    )
    assert result.returncode == 3, result.stderr
    assert "diverged in epoch 1" in result.stderr and "non-finite" in result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "non-finite" in metrics["message"]


@pytest.fixture
def dead_last_hidden_layer(monkeypatch) -> list[str]:
    """Every run the test prepares has its last hidden layer at 0 whatever its input (a -100 bias); the
    list receives the layer's name."""
    from ep_core.training import run as run_module

    prepare, killed = run_module.prepare, []

    def prepare_a_dead_layer(config, collective=None):
        setup = prepare(config, collective)
        killed.append(setup.model.layers[-2].name)
        with torch.no_grad():
            setup.model.biases[killed[-1]].fill_(-100.0)
        return setup

    monkeypatch.setattr(run_module, "prepare", prepare_a_dead_layer)
    return killed


def test_a_dead_layer_is_one_warning_and_recorded_in_metrics(tmp_path, dead_last_hidden_layer, capsys):
    killed = dead_last_hidden_layer
    out = tmp_path / "run"
    assert train(fast_config("train.epochs=2"), out) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: hidden layer {killed[0]} is dead after epoch 1 (every unit at 0 in the free phase of every "
        "batch): no signal reaches the output, the accuracy stays near chance, and the fidelity monitor cannot "
        "tell; the 6 documented cases run again at half the optim.lr all trained (docs/benchmarks.md)"
    ]  # once, not again in epoch 2
    assert json.loads((out / "metrics.json").read_text())["dead_layers"] == {killed[0]: 1}
    history = pd.read_csv(out / "history.csv")
    assert history[f"saturation_low.{killed[0]}"].tolist() == [1.0, 1.0]
    assert (history["saturation_low.h1a"] < 1).all()


def test_stop_on_dead_layer_ends_the_run_after_that_epoch_recorded_as_diverged(
    tmp_path, dead_last_hidden_layer, capsys
):
    config = fast_config("train.epochs=3", "train.stop_on_dead_layer=true")
    out = tmp_path / "run"
    assert train(config, out) == EXIT_DIVERGED
    layer = dead_last_hidden_layer[0]
    stopped = (
        f"diverged after epoch 1: hidden layer {layer} is dead; train.stop_on_dead_layer stopped the run"
    )
    assert f"ep-core train: {stopped}" in capsys.readouterr().err.splitlines()
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["status"], metrics["message"]) == ("diverged", stopped)
    assert metrics["dead_layers"] == {layer: 1}
    assert len(pd.read_csv(out / "history.csv")) == 1 and (out / "model.pt").exists()
    # The pipeline's way (--diverged-ok): a result, exit 0.
    assert train(config, tmp_path / "pipeline", diverged_ok=True) == 0
    # Turned off, the stopped run trains on from its checkpoint to the end.
    assert train(fast_config("train.epochs=3", "train.stop_on_dead_layer=false"), out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["status"], metrics["slices"], metrics["dead_layers"]) == ("completed", 2, {layer: 1})
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [1, 2, 3]


def test_dead_layers_are_read_from_the_history_each_with_its_first_epoch():
    rows = [
        {"epoch": 1, "saturation_low.h1": 0.5, "saturation_low.h2": 1.0, "activity.h2": 0.0},
        {"epoch": 2, "saturation_low.h1": 1.0, "saturation_low.h2": 0.99},  # h2 back to life, h1 dead
        {"epoch": 3, "saturation_low.h1": 1.0, "saturation_low.h2": 1.0},  # both dead, neither new
    ]
    assert dead_layers.first_dead(rows) == {"h2": 1, "h1": 2}
    assert [dead_layers.dead_in(r) for r in rows] == [["h2"], ["h1"], ["h1", "h2"]]
    assert dead_layers.warning(rows[0], []).startswith("warning: hidden layer h2 is dead after epoch 1 ")
    assert dead_layers.warning(rows[1], rows[:1]).startswith(
        "warning: hidden layer h1 is dead after epoch 2 "
    )
    assert dead_layers.warning(rows[2], rows[:2]) is None
    both = dead_layers.warning({**rows[2], "epoch": 1}, [])
    assert both.startswith("warning: hidden layers h1, h2 are dead after epoch 1 ")
    assert dead_layers.first_dead([{"epoch": 1, "train_loss": 1.0}]) == {}  # backprop: no such column


def test_an_in_process_run_gives_the_caller_its_thread_count_back(tmp_path):
    before = torch.get_num_threads()
    assert train(fast_config("train.epochs=1"), tmp_path / "run", threads=before + 1) == 0
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ep.bta=0.1"], "unknown key ep.bta; valid keys in ep:"),
        (["train.epochs=many"], "train.epochs: expected an integer, got 'many'"),
        (
            ["optim.lr=[0.1, 0.2, 0.3]"],
            "optim.lr: hopfield_resnet13 has 22 parameter tensors (biases.h1a ... edges.h4b_to_out.weight), got 3 values",
        ),
        (["data.name=imagenet"], "data.name: 'imagenet' is not allowed; valid choices: cifar10"),
        (["model.arch=transformer"], "model.arch: 'transformer' is not allowed; valid choices: vgg5"),
        (
            ["model.activation=gelu"],
            "model.activation: 'gelu' is not allowed; valid choices: relu6, relu1, relu_random",
        ),
        (
            ["data.name=cifar10", "data.data_dir=/nonexistent"],
            "cifar10 not found under /nonexistent: run 'ep-core download --dataset cifar10 --data-dir /nonexistent'",
        ),
        (["model.gains=[0.5]"], "gains: hopfield_resnet13 has 13 edges, got 1 gains"),
        (["data.val_size=10000"], "val_size"),
        (["train.device=cuda:0"] if not torch.cuda.is_available() else ["train.device=tpu"], "train.device:"),
    ],
)
def test_bad_configs_are_one_line_errors_and_write_nothing(tmp_path, overrides, message):
    out = tmp_path / "run"
    sets = [a for o in overrides for a in ("--set", o)]
    result = cli("train", "--out", str(out), *as_set_args(FAST), *sets)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_an_existing_run_with_another_configuration_is_refused(reference_run):
    result = cli("train", "--out", str(reference_run), *as_set_args(FAST), "--set", "ep.beta=0.3")
    assert result.returncode == 2
    assert "holds a run with another configuration (ep.beta: 0.15 != 0.3)" in result.stderr


def test_per_tensor_learning_rates_reach_the_right_tensors(tmp_path):
    lrs = [0.01 * (i + 1) for i in range(22)]
    from ep_core.training.run import prepare

    setup = prepare(fast_config(f"optim.lr={lrs}", "optim.weight_decay=0.0"))
    names = [n for n, _ in setup.model.named_parameters()]
    assert [g["name"] for g in setup.optimizer.param_groups] == names
    assert [g["lr"] for g in setup.optimizer.param_groups] == lrs
    assert names[:9] == [
        f"biases.{n}" for n in ("h1a", "h1b", "h2a", "h2b", "h3a", "h3b", "h4a", "h4b", "out")
    ]


def test_backprop_baselines_train(tmp_path):
    for arch in ("resnet13", "vgg5_bp"):
        out = tmp_path / arch
        assert train(fast_config(f"model.arch={arch}", "train.epochs=2"), out) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["config"]["optim"]["optimizer"] in ("adam", "sgd")
        history = pd.read_csv(out / "history.csv")
        assert "free_seconds" not in history.columns and history["train_loss"].iloc[-1] < 2.3


@pytest.mark.parametrize(
    ("dataset", "arch", "preset", "classes"),
    [
        ("cifar10", "hopfield_resnet13", "authors_ep", 10),  # DataLoader + RandAugment path
        ("cifar100", "resnet13", "authors_bp_resnet", 100),
        ("fashion_mnist", "vgg5", "authors_ep", 10),  # on-device path, 1 channel
    ],
)
def test_training_on_torchvision_format_files(tmp_path, dataset, arch, preset, classes):
    from test_datasets import _write_cifar10, _write_cifar100, _write_fmnist

    root = tmp_path / "data"
    {"cifar10": _write_cifar10, "cifar100": _write_cifar100, "fashion_mnist": _write_fmnist}[dataset](root)
    config = fast_config(
        f"data.name={dataset}", f"data.data_dir={root}", "data.val_size=0", "data.num_workers=1",
        f"model.arch={arch}", "train.epochs=1", "train.max_batches=2", "train.batch_size=8",
    )  # fmt: skip
    out = tmp_path / "run"
    assert train(config, out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["config"]["data"]["preset"] == preset
    assert metrics["best_val"] is None and metrics["final"]["val_acc"] is None
    state = torch.load(out / "model.pt", weights_only=True)
    head = {
        "hopfield_resnet13": "edges.h4b_to_out.weight",
        "resnet13": "head.weight",
        "vgg5": "edges.h4_to_out.weight",
    }
    assert state[head[arch]].shape[0] == classes


def test_progress_is_a_bar_on_a_terminal_and_one_line_per_epoch_in_logs(tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0x0
    args = [sys.executable, "-m", "ep_core.cli", "train", "--out", str(tmp_path / "tty"), *as_set_args(FAST)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    stdout, _ = process.communicate(timeout=120)
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert process.returncode == 0
    assert b"epoch 1/3" in terminal and b"loss=" in terminal and b"acc=" in terminal  # tqdm postfix
    lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"] and "test_acc" in lines[0]


def test_an_unexpected_error_is_recorded_as_failed(tmp_path, monkeypatch, capsys):
    from ep_core.training.learners import EPLearner

    calls = {"n": 0}
    original = EPLearner.train_step

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(EPLearner, "train_step", flaky)
    out = tmp_path / "run"
    assert train(fast_config(), out) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "illegal memory access" in metrics["message"]
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setattr(EPLearner, "train_step", original)
    assert train(fast_config(), out) == 0  # a failed run is retried, and this time completes
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"


def test_warm_start_only_carries_states_of_the_same_batch_size(monkeypatch):
    from ep_core.numerics.estimators import EquilibriumProp
    from ep_core.training.run import prepare

    setup = prepare(fast_config())
    x, y = next(setup.data.train_batches(epoch=0, batch_size=12, seed=0))
    first = setup.learner.train_step(x, y, setup.optimizer, None)
    assert first.carry is not None and first.carry[0].shape[0] == 12
    seen = []
    original = EquilibriumProp.estimate

    def recording(self, net, x, y, states=None, **options):
        seen.append(states)
        return original(self, net, x, y, states, **options)

    monkeypatch.setattr(EquilibriumProp, "estimate", recording)
    setup.learner.train_step(x, y, setup.optimizer, first.carry)  # same size: warm start
    setup.learner.train_step(x[:5], y[:5], setup.optimizer, first.carry)  # the last, smaller batch: zeros
    assert seen[0] is first.carry and seen[1] is None


class _RecordingTracker:
    """A run's Mirror that records, for each sync, the rows sent, `stopped`, `force` and whether the run
    directory held a checkpoint by then."""

    run_id = None

    def __init__(self, out: Path):
        self.out, self.syncs, self.runtime_tags = out, [], {}

    def attach(self, out, resume_run_id=None, reopen=True) -> None:
        pass

    def sync(self, params, rows, metrics=None, files=(), stopped=False, force=True) -> bool:
        self.syncs.append((len(rows), stopped, force, (self.out / "checkpoint.pt").exists()))
        return True

    def resync(self, out) -> bool:
        return True


def test_a_signal_during_evaluation_stops_the_run_after_that_epoch(tmp_path, monkeypatch, capsys):
    from ep_core.training.run import Run

    finish_epoch = Run.finish_epoch

    def finish_under_sigterm(self):
        os.kill(os.getpid(), signal.SIGTERM)  # caught by the run's StopRequest, seen after the evaluation
        return finish_epoch(self)

    monkeypatch.setattr(Run, "finish_epoch", finish_under_sigterm)
    out = tmp_path / "run"
    tracker = _RecordingTracker(out)
    assert train(fast_config("train.checkpoint_every=5"), out, tracker=tracker) == 128 + signal.SIGTERM
    assert "stopped by signal 15; checkpoint saved after epoch 1" in capsys.readouterr().err
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)  # off the checkpoint_every schedule
    assert (checkpoint["epoch"], checkpoint["next_batch"], len(checkpoint["history"])) == (1, 0, 1)
    assert _history_rows(out) == 1 and not (out / "metrics.json").exists()
    # MLflow hears of the epoch once it is checkpointed, then of the stop.
    assert tracker.syncs == [(0, False, True, False), (1, False, False, True), (1, True, True, True)]
