"""Data-parallel training over several nodes: `ep-core train` under `torchrun --nnodes 2 --rdzv-backend c10d`
(two "nodes" on 127.0.0.1, one process each) and under `srun` over a two-node SLURM allocation (a private
two-slurmd cluster on this host) takes the single-process update of the same global batch; a node killed
mid-run stops the other in bounded time and both resume to the uninterrupted result; the pipeline's
`resources.train.nodes` becomes sbatch's --nodes and the job's `srun --nodes`."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_pipeline as pipeline_tests
import torch
from test_distributed import (  # noqa: F401 (uninterrupted: a fixture)
    KILL,
    TINY,
    finish,
    running,
    set_args,
    uninterrupted,
    weight_differences,
)
from test_training import _history_rows, _wait_for, assert_same_run

from ep_core.pipeline import grid
from ep_core.pipeline.launch import (
    allocation_nodes,
    ep_core_executable,
    launch_command,
    launch_env,
    train_args,
)
from ep_core.training.config import build_config
from ep_core.training.distributed import free_port
from ep_core.training.run import train

ONE_PROCESS_TOLERANCE = 1e-5  # as tests/test_distributed.py: the order of two floating-point sums


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    assert train(build_config(TINY), out, threads=1) == 0
    return out


# --- the commands and resources (no processes) -----------------------------------------------------------


def test_srun_spans_the_nodes_of_the_allocation_and_rank_0_listens_on_the_first():
    args = ["train", "--out", "r"]
    assert launch_command(4, args, launcher="srun", executable="ep-core", threads=2, nodes=2) == [
        "srun", "--nodes", "2", "--ntasks", "4", "--cpus-per-task=2", "--kill-on-bad-exit=1", "ep-core", *args,
    ]  # fmt: skip
    # One node: the command of a one-node allocation, as before.
    assert "--nodes" not in launch_command(2, args, launcher="srun", executable="ep-core", nodes=1)
    with pytest.raises(ValueError, match=r"^resources.train.nodes: 2 nodes need the SLURM profile"):
        launch_command(4, args, launcher="torchrun", executable="ep-core", nodes=2)
    with pytest.raises(ValueError, match="2 processes cannot span 3 nodes"):
        launch_command(2, args, launcher="srun", executable="ep-core", nodes=3)
    assert allocation_nodes({}) == 1 and allocation_nodes({"SLURM_JOB_NUM_NODES": "2"}) == 1  # no job
    assert allocation_nodes({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"}) == 2
    assert allocation_nodes({"SLURM_JOB_ID": "7", "SLURM_NNODES": "3"}) == 3
    env = launch_env("srun", {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "gpu[07-08]", "PATH": os.defpath})
    assert env["MASTER_ADDR"] == "gpu07" and 0 < int(env["MASTER_PORT"]) < 65536
    assert launch_env("srun", {"SLURM_JOB_NODELIST": "gpu[07-08]", "MASTER_ADDR": "h"})["MASTER_ADDR"] == "h"
    assert "MASTER_ADDR" not in launch_env("torchrun", {"SLURM_JOB_NODELIST": "gpu[07-08]"})


def _sbatch(resources: dict) -> str:
    """The sbatch line the SLURM executor plugin writes for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.get

    values = {k: v for k, v in resources.items() if v is not None and k != "threads"}
    job = SimpleNamespace(resources=Resources(values, runtime=60), threads=resources["threads"])
    params = {"run_uuid": "u", "slurm_logfile": "l", "comment_str": "c", "account": "", "partition": "",
              "workdir": None}  # fmt: skip
    return get_submit_command(job, params) + set_gres_string(job)


def test_the_train_rule_asks_slurm_for_nodes_and_validates_them():
    config = {"data_dir": "data", "seeds": [0],
              "resources": {"train": {"threads": 2, "mem_mb": 1000, "gpus": 2, "nodes": 2}},
              "studies": {"main": {"kind": "main", "datasets": ["synthetic"], "archs": ["vgg5"]}}}  # fmt: skip
    assert grid.train_nodes(config) == 2
    assert grid.train_nodes({}) == 1
    # Per process: threads; per node (sbatch --mem): mem_mb × gpus; per job (--gpus, --ntasks): 2 × 2.
    resources = grid.train_job_resources(config, 2)
    assert resources == {
        "threads": 8,
        "mem_mb": 2000,
        "gpu": 4,
        "mpi": "srun",
        "tasks": 4,
        "tasks_per_gpu": 1,
    }
    sbatch = _sbatch({**resources, "nodes": grid.train_nodes(config)}).split()
    assert {"--nodes=2", "--ntasks=4", "--ntasks-per-gpu=1", "--gpus=4"} <= set(sbatch)
    assert sbatch[sbatch.index("--mem") + 1] == "2000"
    # One GPU on each of two nodes: two processes, launched.
    assert grid.train_job_resources(config, 1)["tasks"] == 2
    one = {**config, "resources": {"train": {"gpus": 1}}}
    assert "--nodes=1" in _sbatch({**grid.train_job_resources(one, 1), "nodes": grid.train_nodes(one)})
    for bad in (0, -1, "2", 1.5, True, None):
        broken = {**config, "resources": {"train": {"nodes": bad}}}
        with pytest.raises(grid.GridError, match=r"^resources\.train\.nodes: must be an integer >= 1 .*got"):
            grid.validate_grid(broken)
    config["settings"] = {"all": {"train.batch_size": 6}}
    with pytest.raises(grid.GridError, match=r"batch_size 6 is not divisible by its 4 GPUs \(resources\.train"
                       r"\.nodes 2 × gpus 2\); use a multiple of 4$"):  # fmt: skip
        grid.validate_grid(config)


def test_the_pipeline_plans_every_train_job_on_the_nodes_of_resources_train(tmp_path):
    nodes = tmp_path / "nodes2.yaml"  # over tiny.yaml: 2 nodes of 2 GPUs; the search's study keeps 1 GPU
    nodes.write_text(
        "resources: {train: {gpus: 2, nodes: 2}}\nstudies: {beta: {resources: {train: {gpus: 1}}}}\n"
    )
    dry = pipeline_tests.snakemake("-n", "--directory", str(tmp_path / "wd"), "--configfile",
                                   str(pipeline_tests.TINY), str(nodes))  # fmt: skip
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    planned = re.findall(r"^rule train:\n(?:    .*\n)*?    resources: (.*)$", dry.stdout, re.M)
    asked = [dict(kv.split("=", 1) for kv in line.split(", ")) for line in planned]
    assert len(asked) == pipeline_tests.job_counts(dry.stdout)["train"] > 1
    assert {(a["nodes"], a["tasks"], a["gpu"]) for a in asked} == {("2", "4", "4"), ("2", "2", "2")}


# --- two nodes under torchrun, c10d rendezvous on 127.0.0.1 ----------------------------------------------


def node(out: Path, values: dict, rank: int, endpoint: str, run_id: str, *extra: str) -> subprocess.Popen:
    """One node of a two-node run, one process on it, as README's by-hand command (`--rdzv-conf is_host`
    only because both nodes share this host: each would otherwise try to host the rendezvous store)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                "--rdzv-id", run_id, "--rdzv-conf", f"is_host={int(rank == 0)}", "--max-restarts", "0"]  # fmt: skip
    args = [*train_args(str(out), set_args(values), threads=1), *extra]
    return subprocess.Popen([*torchrun, "--no-python", ep_core_executable(), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


@contextmanager
def two_nodes(out: Path, values: dict, *extra: str) -> Iterator[list[subprocess.Popen]]:
    """Both nodes of a run on a fresh rendezvous; whatever is still running on the way out is killed."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"ep-{free_port()}"
    nodes = [node(out, values, rank, endpoint, run_id, *extra) for rank in (0, 1)]
    try:
        yield nodes
    finally:
        for process in nodes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()


def test_two_nodes_under_torchrun_c10d_take_the_single_process_updates(tmp_path, request):
    out = tmp_path / "two"
    with two_nodes(out, TINY) as nodes:
        one = request.getfixturevalue("one_process")  # trains while the two nodes do
        stderr = [finish(process) for process in nodes]
    worst = max(weight_differences(one, out).values())
    print(f"max |w(1 process) - w(2 nodes x 1 process, c10d)| = {worst:.3g}")
    assert worst <= ONE_PROCESS_TOLERANCE
    metrics = (out / "metrics.json").read_text()
    assert '"world_size": 2' in metrics
    assert sum(text.count("completed 2 epochs") for text in stderr) == 1  # one writer over both nodes


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def test_a_killed_node_stops_the_other_and_both_resume_to_the_uninterrupted_result(tmp_path, request):
    reference = request.getfixturevalue("uninterrupted")  # 2 processes on one node, never stopped
    out = tmp_path / "killed"
    with two_nodes(out, KILL) as (first, second):
        _wait_for(lambda: _history_rows(out) >= 1 and (out / "checkpoint.pt").exists(), first, timeout=240)
        time.sleep(0.5)  # into epoch 2 (of 2)
        workers = children(second.pid)
        assert len(workers) == 1, workers  # node 1's torchrun agent and its one worker
        (survivor,) = children(first.pid)
        writer_survives = environ(survivor)["RANK"] == "0"  # c10d numbers the nodes (host, agent pid)
        killed = time.time()
        os.kill(workers[0], signal.SIGKILL)
        os.killpg(second.pid, signal.SIGKILL)
        second.communicate()
        # Node 0's worker finds its peer gone at its next collective and fails; its agent (no restarts)
        # then stops. Bounded: a hang here fails the test after 120 s, not at the 30-minute gloo timeout.
        first.communicate(timeout=120)
        stopped = time.time() - killed
    print(f"node 0 (rank {0 if writer_survives else 1}) stopped {stopped:.1f} s after node 1 was killed "
          f"(exit status {first.returncode})")  # fmt: skip
    assert first.returncode != 0 and stopped < 120
    deadline = time.time() + 20
    while running(str(out)) and time.time() < deadline:
        time.sleep(0.1)
    assert not running(str(out))  # no orphan worker writes the directory the rerun resumes from
    assert _history_rows(out) < 2
    if writer_survives:  # rank 0 records why the run stopped; the rerun resumes all the same
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["status"] == "failed" and "remote worker" in metrics["message"]  # gloo: peer gone
    else:
        assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["world_size"] == 2
    with two_nodes(out, KILL) as nodes:
        stderr = "".join(finish(process) for process in nodes)
    assert stderr.count("resuming at epoch") == 1  # rank 0 alone speaks
    assert_same_run(reference, out)


# --- srun over two nodes: a private SLURM cluster of two slurmd on this host ------------------------------

SLURM_CONF = """ClusterName=epcoretwo
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} Port={port1}
NodeName={host}x NodeAddr=127.0.0.1 CPUs={cpus} Port={port2}
PartitionName=two Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _no_two_slurmd() -> str | None:
    """Why two slurmd cannot run on this host, or None."""
    missing = [d for d in ("slurmctld", "slurmd", "salloc", "srun", "scontrol") if not shutil.which(d)]
    if missing:
        return f"SLURM is not installed here ({', '.join(missing)} missing; .ci/start-slurm.sh installs it)"
    if os.geteuid() != 0:
        return f"slurmd runs as root; these tests run as uid {os.geteuid()}"
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode:
        return "munged is not running (SLURM authenticates with munge; .ci/start-slurm.sh starts it)"
    return None


def _slurm_env(conf: Path) -> dict[str, str]:
    """This environment without any SLURM job's variables, pointed at the private cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    return {**env, "SLURM_CONF": str(conf)}


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory) -> Iterator[tuple[dict[str, str], Path]]:
    """Its own slurmctld and two slurmd on ports of their own (Debian's SLURM is built with multiple-slurmd
    support: `scontrol show config` says MULTIPLE_SLURMD = Yes). NodeName = this host's name, first in the
    node list so that MASTER_ADDR resolves, and that name + 'x' (SLURM refuses two nodes of one
    NodeHostName), both reached at NodeAddr 127.0.0.1. The cluster the other tests use is not touched.
    Stopped on the way out."""
    reason = _no_two_slurmd()
    if reason:
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("slurm")
    (where / "state").mkdir()
    (where / "spool").mkdir()
    host = socket.gethostname().split(".")[0]
    conf = where / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, dir=where, cpus=os.cpu_count() or 1, ctld_port=free_port(),
                                      port1=free_port(), port2=free_port()))  # fmt: skip
    env = _slurm_env(conf)
    daemons = {"slurmctld": [], f"slurmd-{host}": ["-N", host], f"slurmd-{host}x": ["-N", f"{host}x"]}
    started = []
    try:
        for name, extra in daemons.items():
            with open(where / f"{name}.out", "w") as log:
                command = [name.split("-")[0], "-D", "-f", str(conf), *extra]
                started.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(1 if name == "slurmctld" else 0)
        deadline = time.time() + 60
        while time.time() < deadline:
            states = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True
            )
            if states.stdout.split() == ["idle", "idle"]:
                break
            time.sleep(1)
        else:
            logs = " | ".join(
                p.read_text().strip().splitlines()[-1] for p in where.glob("*.out") if p.read_text()
            )
            pytest.skip(f"two slurmd on one host did not come up in 60 s ({logs})")
        yield env, where
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


DRIVER = """import sys
from ep_core.pipeline.launch import launch, train_args
sys.exit(launch(1, train_args(sys.argv[1], sys.argv[2:]), threads=2, stream=sys.stdout))
"""


def test_srun_over_two_slurm_nodes_takes_the_single_process_updates(tmp_path, two_node_cluster, one_process):
    env, where = two_node_cluster
    out = tmp_path / "srun"
    # The pipeline's train job inside a 2-node allocation (one GPU a node): launch.launch reads the
    # allocation's nodes, builds the srun command and MASTER_ADDR/PORT as the job does.
    command = ["salloc", "--nodes", "2", "--ntasks", "2", "--time", "10", sys.executable, "-c", DRIVER,
               str(out), *set_args(TINY)]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    launched = re.search(r"^launching 2 processes: srun --nodes 2 --ntasks 2 --cpus-per-task=1 ", result.stdout,
                         re.M)  # fmt: skip
    assert launched, result.stdout[-3000:]
    # Each slurmd started one task of the step.
    logs = sorted(where.glob("slurmd.*.log"))
    assert len(logs) == 2, logs
    for log in logs:
        assert re.search(r"launch task StepId=\d+\.0 ", log.read_text()), log.name
    worst = max(weight_differences(one_process, out).values())
    print(f"max |w(1 process) - w(srun, 2 nodes x 1 task)| = {worst:.3g}")
    assert worst <= ONE_PROCESS_TOLERANCE
    assert '"world_size": 2' in (out / "metrics.json").read_text()
