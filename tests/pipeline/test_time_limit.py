"""A run longer than its SLURM time limit finishes (issue 25), on the one-node test cluster through `snakemake
--profile slurm` as users type it, the profile derived from profiles/slurm: the training job, limited to 1
minute, checkpoints at SLURM's warning and puts itself back on the queue, slice after slice, and a `scontrol
requeue` from outside mid-run (what preemption does) resumes the same way. The run equals an uninterrupted
one, in one MLflow run, its slices recorded. ep_core/training/slurm.py says how; tests/test_slurm_requeue.py
checks the same logic without SLURM."""

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_pipeline as pipeline_tests
import torch
import yaml
from test_grid import load
from test_training import assert_same_run

from ep_core.pipeline import grid

RUN = grid.RunSpec("synthetic", "hopfield_resnet13", "relu6", 0)
# One EP run of 3.7-5 minutes of single-core training (100 epochs of 100 batches; the issue asks for a run that
# needs at least 3, and CI's fastest machine trained 80 epochs in 177 s): a 1-minute slice trains ~15-45 s of
# it (the warning comes 1-31 s before the limit, the job's start takes ~15 s), so the time limit cuts it about
# 6-12 times, and the requeue from outside once more.
NEEDS_S = 180  # the uninterrupted run's training and evaluation seconds must reach this (three time limits)
GRID = {
    "seeds": [0],
    "studies": {
        "main": {"kind": "main", "datasets": ["synthetic"], "archs": ["hopfield_resnet13"], "activations": ["relu6"]},
        **dict.fromkeys(("backprop", "activations", "residual", "depth", "beta")),
    },
    "profiles": None,
    "settings": {
        "all": {"model.width": 0.0625, "train.epochs": 100, "train.batch_size": 8, "train.device": "cpu",
                "data.synthetic_train": 800, "data.synthetic_test": 32},
        "ep": {"ep.estimator": "cep", "ep.free_iterations": 4, "ep.nudge_iterations": 2, "ep.eval_iterations": 4,
               "ep.order": "even_odd"},
    },
    "resources": {"train": {"threads": 1, "mem_mb": 1000}},
}  # fmt: skip
DEADLINE_S = 2400  # a busy 2-core machine; the run takes ~8 min on a quiet one


def write_profile(workdir: Path) -> dict:
    """profiles/slurm as `workdir/slurm` (so `--profile slurm` there finds it), for the one-node cluster:
    its partition and no account, a 1-minute limit with a 1-s warning (the profile's 300 s would come before
    the job starts), and the settings a cluster without accounting database needs (as the SLURM test's)."""
    profile = yaml.safe_load((pipeline_tests.ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["slurm-requeue"] is True
    train = profile["set-resources"]["train"]
    assert re.search(r"--signal=URG@\d+", train["slurm_extra"]), train
    profile["default-resources"] = {"slurm_partition": "debug", "runtime": 10, "mem_mb": 1000}
    train |= {"cpus_per_gpu": 1, "runtime": 1, "slurm_extra": re.sub(r"@\d+", "@1", train["slurm_extra"])}
    profile["set-resources"]["profile"]["cpus_per_gpu"] = 1
    profile |= {"slurm-status-command": "squeue", "slurm-init-seconds-before-status-checks": 2, "latency-wait": 5,
                "slurm-keep-successful-logs": True,
                # A slice whose warning comes before its training started (both snakemakes' start-up can take
                # 30 s on a busy machine) runs into the limit and fails; it is resubmitted and resumes.
                "retries": 5}  # fmt: skip
    (workdir / "slurm").mkdir()
    (workdir / "slurm/config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def our_jobs(workdir: Path) -> dict[str, dict[str, str]]:
    """The training jobs submitted from `workdir` (the test cluster is shared): id -> scontrol's fields."""
    listed = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "%i|%Z|%k"], capture_output=True, text=True
    )
    jobs = {}
    for line in listed.stdout.splitlines():
        job, where, comment = line.split("|", 2)
        if os.path.realpath(where) == os.path.realpath(workdir) and comment.startswith("rule_train"):
            shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
            jobs[job] = dict(re.findall(r"(\w+)=(\S*)", shown))
    return jobs


def read_checkpoint(run_dir: Path) -> dict | None:
    """The run's checkpoint (the slice that wrote it, its epoch, when), or None while there is none."""
    path = run_dir / "checkpoint.pt"
    try:
        mtime = path.stat().st_mtime
        saved = torch.load(path, weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):  # not yet there, or replaced while being read
        return None
    return {"slices": saved["slices"], "epoch": saved["epoch"], "mtime": mtime}


def started(fields: dict[str, str]) -> float:
    return time.mktime(time.strptime(fields["StartTime"], "%Y-%m-%dT%H:%M:%S"))  # scontrol: local time


def requeue_mid_slice(workdir: Path, run_dir: Path, driver: subprocess.Popen, log: Path) -> tuple[int, float]:
    """`scontrol requeue` the job from outside while a later slice trains: the checkpoint is one it wrote
    (after its job's start), well before the last epoch. Returns that slice and the time of the request."""
    last_epoch = GRID["settings"]["all"]["train.epochs"]
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        assert driver.poll() is None, (
            f"ended before a slice was requeued from outside: {log.read_text()[-3000:]}"
        )
        saved = read_checkpoint(run_dir)
        if saved is not None and saved["slices"] >= 2 and saved["epoch"] <= last_epoch - 3:
            for job, fields in our_jobs(workdir).items():
                if fields["JobState"] == "RUNNING" and saved["mtime"] > started(fields) + 1:
                    asked = time.time()
                    if subprocess.run(["scontrol", "requeue", job], capture_output=True).returncode == 0:
                        return saved["slices"], asked
        time.sleep(0.5)
    raise AssertionError("no slice trained long enough to be requeued from outside")


def first_checkpoint_after(run_dir: Path, moment: float) -> int:
    """The slice that wrote the first checkpoint after `moment`."""
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        saved = read_checkpoint(run_dir)
        if saved is not None and saved["mtime"] > moment:
            return saved["slices"]
        time.sleep(0.2)
    raise AssertionError("no checkpoint after the requeue from outside")


def _stop(process: subprocess.Popen | None, group: bool = False) -> None:
    if process is None:
        return
    if process.poll() is None and group:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the jobs' local helpers it started
    elif process.poll() is None:
        process.kill()
    process.communicate()  # a driver writing to its log file: no pipes, only the wait


@pytest.mark.slow
def test_a_run_longer_than_its_time_limit_is_requeued_slice_by_slice_and_equals_an_uninterrupted_run(
    tmp_path,
):
    reason = pipeline_tests._slurm_up()
    if reason:
        pytest.skip(reason)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    profile = write_profile(tmp_path)
    run_dir = tmp_path / "results/runs" / RUN.path
    env = {**os.environ, "PATH": f"{pipeline_tests.BIN}:{os.environ['PATH']}"}
    overrides = grid.run_overrides(load(str(tmp_path / "grid.yaml")), RUN)
    # The uninterrupted run, on the other core meanwhile: the same settings and thread count as the job's.
    reference = subprocess.Popen(
        [str(pipeline_tests.BIN / "ep-core"), "train", "--out", str(tmp_path / "uninterrupted"), "--threads", "1",
         *(arg for item in overrides for arg in ("--set", item))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    driver, log = None, tmp_path / "snakemake.log"
    try:
        # As a user types it, in the directory that holds the profile (the target: only the run's job).
        with log.open("w") as out:
            driver = subprocess.Popen(
                [str(pipeline_tests.BIN / "snakemake"), f"results/runs/{RUN.path}/metrics.json", "--profile",
                 "slurm", "--snakefile", str(pipeline_tests.ROOT / "Snakefile"), "--configfile",
                 str(tmp_path / "grid.yaml")],
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        preempted, asked = requeue_mid_slice(tmp_path, run_dir, driver, log)
        # SIGTERM reached the training, which checkpointed before SLURM put the job back on the queue.
        assert first_checkpoint_after(run_dir, asked) == preempted
        driver.wait(timeout=DEADLINE_S)
        assert driver.returncode == 0, log.read_text()[-4000:]
        _, stderr = reference.communicate(timeout=DEADLINE_S)
        assert reference.returncode == 0, stderr[-3000:]
    finally:
        _stop(driver, group=True)
        _stop(reference)
        for job, fields in our_jobs(tmp_path).items():
            if fields["JobState"] not in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"):
                subprocess.run(["scancel", job], capture_output=True)

    assert_same_run(tmp_path / "uninterrupted", run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["slices"] >= 3, metrics["slices"]
    # Every slice's output in the one log (ep_core.pipeline.joblog), though Snakemake deletes it each time
    # (an attempt killed before its first checkpoint resumed too, without adding a slice).
    log_text = (run_dir / "train.log").read_text()
    assert log_text.count("resuming at epoch") >= metrics["slices"] - 1, log_text[-3000:]
    _, client, children = pipeline_tests._mlflow_runs(tmp_path)
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert children[0].info.run_id == metrics["mlflow_run_id"]
    assert children[0].data.tags["slices"] == str(metrics["slices"])
    steps = [m.step for m in client.get_metric_history(metrics["mlflow_run_id"], "test_acc")]
    assert sorted(set(steps)) == list(range(1, GRID["settings"]["all"]["train.epochs"] + 1))
    # Every requeue but ours was the job's own, at its warning; it stayed one SLURM job unless a warning was
    # lost (a new job then: the profile's retries), and the pipeline waited for it throughout.
    jobs = our_jobs(tmp_path)
    own_requeues = sum(int(f["Restarts"]) for f in jobs.values()) - 1
    assert own_requeues >= 1, jobs
    assert metrics["slurm_job_id"] in jobs and len(jobs) <= 1 + profile["retries"]
    assert json.loads((tmp_path / "uninterrupted/metrics.json").read_text())["slices"] == 1
    with open(tmp_path / "uninterrupted/history.csv") as f:
        needed = sum(float(row["epoch_seconds"]) for row in csv.DictReader(f))
    assert needed >= NEEDS_S, f"the run needs {needed:.0f} s, not 3 time limits: raise train.epochs"
