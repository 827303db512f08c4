"""Data-parallel training (ep_core.training.distributed, ep_core.pipeline.launch): the launcher's environment, shards, the
launch commands, and real 2-process runs under torchrun with gloo — the single-process weights, resume
after SIGKILL, one writer."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training import _history_rows, _wait_for, assert_same_run, deterministic_history

from ep_core.pipeline import grid
from ep_core.pipeline.launch import launch_command, launcher_for, train_args
from ep_core.training.config import ConfigError, build_config
from ep_core.training.distributed import (
    Context,
    DistributedError,
    GlobalBatchNorm2d,
    context_from_env,
    first_host,
    global_batchnorm,
    rendezvous_env,
    shard_bounds,
)
from ep_core.training.run import train

TINY = {
    "data": {"name": "synthetic", "synthetic_train": 64, "synthetic_test": 30, "val_size": 16},
    "model": {"width": 0.0625},
    "ep": {"free_iterations": 5, "nudge_iterations": 3, "eval_iterations": 5},
    # eval batches of 10 split 5/5, the last test batch too; 3 training steps per epoch
    "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 10, "device": "cpu", "max_batches": 3},
}
# Long enough to be killed inside an epoch: 45 steps of 6 (3 per rank) per epoch.
KILL = {**TINY, "data": {**TINY["data"], "synthetic_train": 286}, "train": {**TINY["train"], "epochs": 2,
        "batch_size": 6, "max_batches": None}}  # fmt: skip


def set_args(values: dict) -> list[str]:
    return [f"{s}.{k}={json.dumps(v)}" for s, sec in values.items() for k, v in sec.items()]


def torchrun(out: Path, values: dict, *extra: str, nprocs: int = 2, **popen) -> subprocess.Popen:
    """`ep-core train` on `nprocs` processes, as the pipeline launches it (ep_core.pipeline.launch)."""
    args = [*train_args(str(out), set_args(values), threads=1), *extra]
    command = launch_command(nprocs, args, launcher="torchrun")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def running(text: str) -> list[str]:
    """The command lines of the processes that mention `text`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def weight_differences(a: Path, b: Path) -> dict[str, float]:
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    return {k: float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point()}


def max_weight_difference(a: Path, b: Path) -> float:
    return max(weight_differences(a, b).values())


# --- the launcher, shards, commands (no processes) ---------------------------------------------------------


def test_the_launcher_environment_places_this_process():
    assert context_from_env({}) == Context()
    assert context_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Context(
        1, 4, 1, "torchrun"
    )
    step = {"SLURM_JOB_ID": "17", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4",
            "SLURM_LOCALID": "1", "SLURM_STEP_NODELIST": "gpu[07-08]"}  # fmt: skip
    ctx = context_from_env(step)
    assert ctx == Context(3, 4, 1, "srun") and ctx.active and not ctx.is_writer
    assert rendezvous_env(ctx, step) == {"MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 17 * 7 % 30000)}
    assert rendezvous_env(ctx, {**step, "MASTER_ADDR": "h", "MASTER_PORT": "1234"}) == {
        "MASTER_ADDR": "h", "MASTER_PORT": "1234",
    }  # fmt: skip
    # A batch script (no step) and a one-task step (the pipeline's 1-GPU jobs) are one process.
    assert context_from_env({"SLURM_JOB_ID": "17", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == Context()
    assert context_from_env({**step, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) == Context()
    assert [first_host(n) for n in ("a", "a,b", "gpu[03-05,9],cpu1", "n[1,4]")] == ["a", "a", "gpu03", "n1"]
    with pytest.raises(DistributedError, match="rank 4, local rank 0 of world size 2"):
        context_from_env({"RANK": "4", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="RANK: expected an integer"):
        context_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_shards_are_contiguous_slices_of_the_global_batch_in_rank_order():
    assert [shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]  # a last batch smaller than N
    x = torch.arange(7)
    assert [len(part) for part in torch.tensor_split(x, 3)] == [3, 2, 2]


def test_a_global_batch_the_processes_cannot_share_evenly_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"^train.batch_size: 8 is not divisible by the world size 3 .*"
                       r"use a multiple of 3$"):  # fmt: skip
        train(build_config(TINY), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_launch_commands_for_torchrun_and_srun():
    args = train_args("results/runs/r", ["ep.beta=0.2"], mlflow="init.json", run_name="r", tags={"a": "b"},
                      threads=4, diverged_ok=True)  # fmt: skip
    assert args == ["train", "--out", "results/runs/r", "--set", "ep.beta=0.2", "--mlflow", "init.json",
                    "--run-name", "r", "--tag", "a=b", "--threads", "4", "--diverged-ok"]  # fmt: skip
    assert launch_command(4, args, launcher="torchrun", executable="/env/bin/ep-core") == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "--no-python",
        "/env/bin/ep-core", *args,
    ]  # fmt: skip
    assert launch_command(2, args, launcher="srun", executable="ep-core", threads=4) == [
        "srun", "--ntasks", "2", "--cpus-per-task=4", "--kill-on-bad-exit=1", "ep-core", *args,
    ]  # fmt: skip
    assert launcher_for({}) == "torchrun" and launcher_for({"SLURM_JOB_ID": "3"}) == "srun"
    with pytest.raises(ValueError, match="valid choices: torchrun, srun"):
        launch_command(2, args, launcher="mpirun")
    with pytest.raises(ValueError, match="one trains in-process"):
        launch_command(1, args, launcher="torchrun")


def test_the_grid_gives_each_run_its_gpus_and_the_rule_its_tasks():
    config = {
        "data_dir": "data", "seeds": [0], "resources": {"train": {"threads": 2, "mem_mb": 1000, "gpus": 2}},
        "studies": {
            "main": {"kind": "main", "datasets": ["synthetic"], "archs": ["vgg5", "hopfield_resnet13"]},
            "solo": {"kind": "main", "datasets": ["synthetic"], "archs": ["vgg5", "resnet13"],
                     "resources": {"train": {"gpus": 1}}},
            "wide": {"kind": "activation_ablation", "datasets": ["synthetic"], "archs": ["vgg5"],
                     "activations": ["relu1"], "resources": {"train": {"gpus": 4}}},
        },
    }  # fmt: skip
    gpus = grid.gpus_by_path(config)
    assert gpus == {
        "synthetic/vgg5/relu6/seed0": 2,  # main (2) and solo (1) share it: the larger
        "synthetic/hopfield_resnet13/relu6/seed0": 2,
        "synthetic/resnet13/relu/seed0": 1,
        "synthetic/vgg5/relu1/seed0": 4,
    }
    assert grid.gpus_by_path({**config, "resources": {}})["synthetic/hopfield_resnet13/relu6/seed0"] == 1
    one = grid.train_job_resources(config, 1)
    assert one == {"threads": 2, "mem_mb": 1000, "gpu": 1, "mpi": None, "tasks": None, "tasks_per_gpu": None}
    assert grid.train_job_resources(config, 4) == {"threads": 8, "mem_mb": 4000, "gpu": 4, "mpi": "srun",
                                                   "tasks": 4, "tasks_per_gpu": 1}  # fmt: skip
    config["settings"] = {"all": {"train.batch_size": 6}}
    with pytest.raises(grid.GridError, match=r"train\.batch_size 6 is not divisible by its 4 GPUs"):
        grid.validate_grid(config)


def test_global_batchnorm_is_batchnorm_in_one_process_and_keeps_its_tensors():
    from ep_core.numerics.backprop import build_bp_network

    model = build_bp_network("resnet13", width=1 / 16, in_channels=3, num_classes=10, input_size=16)
    before = dict(model.state_dict(keep_vars=True))
    reference = {k: v.detach().clone() for k, v in before.items()}
    x = torch.randn(4, 3, 16, 16)
    expected = model(x)
    global_batchnorm(model)
    assert sum(isinstance(m, GlobalBatchNorm2d) for m in model.modules()) == 12
    assert all(v is before[k] for k, v in model.state_dict(keep_vars=True).items())  # the same tensors
    for k, v in before.items():  # the first forward updated the running statistics: undo it
        v.data.copy_(reference[k])
    assert torch.equal(model(x), expected)


# --- real runs: 2 processes under torchrun, gloo ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["hopfield_resnet13", "resnet13"], ids=["cep", "backprop"])
def test_two_processes_take_the_single_process_updates(tmp_path, arch):
    values = {**TINY, "model": {**TINY["model"], "arch": arch}}
    two = torchrun(tmp_path / "two", values)
    assert train(build_config(values), tmp_path / "one", threads=1) == 0
    finish(two)
    differences = weight_differences(tmp_path / "one", tmp_path / "two")
    # ResNet13's convolution biases feed a BatchNorm, which removes them: their exact gradient is 0, so
    # Adam turns the rounding noise of either run into steps of up to lr (1e-3) — 6 steps, ≤ 6e-3 — and
    # the BN running means carry 0.1 of those biases. They change nothing the network computes.
    noise = (
        {k for k in differences if k.endswith((".0.bias", ".1.running_mean"))}
        if arch == "resnet13"
        else set()
    )
    exact = max(v for k, v in differences.items() if k not in noise)
    print(f"{arch}: max |w(1 process) - w(2 processes)| = {exact:.3g}"
          + (f" (BN-cancelled biases and running means: {max(differences[k] for k in noise):.3g})" if noise else ""))  # fmt: skip
    assert exact <= 1e-5
    assert all(differences[k] <= 6e-3 for k in noise)
    one, two = deterministic_history(tmp_path / "one"), deterministic_history(tmp_path / "two")
    assert list(one.columns) == list(two.columns)
    for column in ("train_loss", "val_loss", "test_loss"):
        assert two[column].tolist() == pytest.approx(one[column].tolist(), rel=1e-4)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["devices"]) == 2
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["world_size"] == 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(torchrun(out, KILL))
    return out


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result_with_one_writer(
    tmp_path, uninterrupted
):
    out, store = tmp_path / "killed", f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow = ("--mlflow", store, "--run-name", "killed")
    process = torchrun(out, KILL, *mlflow, start_new_session=True)
    _wait_for(lambda: _history_rows(out) >= 1 and (out / "checkpoint.pt").exists(), process, timeout=240)
    time.sleep(0.5)  # into epoch 2 (of 2)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun's process group, as a killed job's
    process.communicate()
    # torchrun starts each worker in a session of its own; they die with it (PR_SET_PDEATHSIG), so no
    # orphan goes on writing the directory the rerun resumes from.
    deadline = time.time() + 20
    while running(str(out)) and time.time() < deadline:
        time.sleep(0.1)
    assert not running(str(out))
    assert _history_rows(out) < 2 and not (out / "metrics.json").exists()
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rng"]) == 2
    assert checkpoint["warm_states"][0].shape[0] == 6  # both shards' rows: the global batch's
    stderr = finish(torchrun(out, KILL, *mlflow))
    assert stderr.count("resuming at epoch") == 1  # rank 0 alone speaks
    assert_same_run(uninterrupted, out)
    # One writer: the records once, one MLflow run (resumed, not duplicated) that knows its processes.
    assert {p.name for p in out.iterdir()} == {
        "config.yaml",
        "history.csv",
        "metrics.json",
        "model.pt",
        "weights_summary.csv",
        "weights_histograms.json",
        "mlflow.json",
    }
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("ep-core").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["world_size"] == "2" and runs[0].data.tags["devices"].count("cpu") == 2
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "test_acc")] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mlflow_run_id"] == runs[0].info.run_id and metrics["world_size"] == 2


def test_a_run_resumed_on_another_number_of_processes_reshards_its_warm_states(tmp_path, uninterrupted):
    out = tmp_path / "changed"
    process = torchrun(out, KILL, start_new_session=True)
    _wait_for(lambda: _history_rows(out) >= 1 and (out / "checkpoint.pt").exists(), process, timeout=240)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)  # torchrun passes it on: both ranks stop after the same batch
    process.communicate(timeout=120)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["next_batch"] > 0 and checkpoint["warm_states"] is not None  # mid-epoch
    assert train(build_config(KILL), out, threads=1) == 0  # one process takes over the whole batch
    assert max_weight_difference(uninterrupted, out) <= 1e-5
    one, two = deterministic_history(out), deterministic_history(uninterrupted)
    assert one["train_loss"].tolist() == pytest.approx(two["train_loss"].tolist(), rel=1e-4)
