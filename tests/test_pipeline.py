"""The Snakemake workflow: config validation, the planned DAG, a tiny end-to-end run with MLflow, resume
after a kill, a real SLURM run, and the linters."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_grid import load

from ep_core.pipeline import grid
from ep_core.training.fidelity import ladder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "pipeline" / "tiny.yaml"
GPUS2 = ROOT / "tests" / "pipeline" / "gpus2.yaml"  # over TINY: 2 GPUs per run (the search's: 1)
OWN_GRID = ROOT / "tests" / "pipeline" / "own_grid.yaml"  # over TINY: ReLU1 main study, studies dropped
# The rules that are not aggregations (the tables and figures a grid plans: grid.aggregations).
NOT_AGGREGATIONS = ("download", "mlflow_init", "train", "profile", "mlflow_summary", "all")
BIN = Path(sys.executable).parent


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 900, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # jobs call ep-core from this environment
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout, **kwargs,
    )  # fmt: skip


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table of a dry run, as {rule: count}."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
        if m.group(1) != "job"
    }


def expected_counts(config: dict) -> dict[str, int]:
    counts = {
        "train": len(grid.all_runs(config)),
        "profile": len(grid.profile_specs(config)),
        "download": len(grid.datasets_to_download(config)),
    }
    return {rule: n for rule, n in counts.items() if n}


@pytest.mark.parametrize(
    "configfiles",
    [
        (),
        ("configs/pipeline_demo.yaml",),
        ("tests/pipeline/tiny.yaml",),
        ("tests/pipeline/fashion_only.yaml",),
        ("tests/pipeline/tiny.yaml", "tests/pipeline/own_grid.yaml"),
    ],
    ids=["paper", "demo", "tiny", "fashion_only", "own_grid"],
)
def test_dry_run_plans_exactly_the_jobs_the_config_implies(tmp_path, configfiles):
    args = ["-n", "--cores", "2", "--directory", str(tmp_path)]
    if configfiles:
        args += ["--configfile", *(str(ROOT / f) for f in configfiles)]
    result = snakemake(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    counts = job_counts(result.stdout)
    config = load(*configfiles)
    for rule, n in expected_counts(config).items():
        assert counts[rule] == n, (rule, counts)
    # One-off rules: MLflow set-up and summary, the aggregations, the final target.
    assert all(
        counts[rule] == 1 for rule in counts if rule not in ("train", "profile", "download", "convergence")
    )
    assert counts["mlflow_init"] == 1 and counts["all"] == 1
    # The studies a grid has are the aggregations it plans, and nothing else (the paper's and the demo's
    # grids: all of them); the Fashion-MNIST-only grid stands alone, with no CIFAR job or download.
    assert set(counts) - set(NOT_AGGREGATIONS) == set(grid.aggregations(config))
    datasets = {r.dataset for r in grid.all_runs(config)}
    assert all(f"results/runs/{d}/" in result.stdout for d in datasets)
    assert not {"cifar10", "cifar100"} - datasets or "cifar" not in result.stdout


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"studies": {"main": {"kind": "main", "datasets": ["mnist"], "archs": ["vgg5"]}}},
            "'mnist' is not one of",
        ),
        ({"sedes": [0]}, "Additional properties are not allowed ('sedes' was unexpected)"),
        ({"settings": {"all": {"ep.bta": 0.1}}}, "unknown key ep.bta; valid keys in ep:"),
        (
            {"studies": {"main": {"kind": "main", "datasets": ["digits"], "archs": ["vgg5"], "seeds": [-1]}}},
            "-1 is less than the minimum of 0",
        ),
        ({"settings": {"all": {"optim.lr": -1}}}, "optim.lr: must be > 0"),  # what a run would reject
    ],
)
def test_a_bad_workflow_config_fails_naming_the_problem(tmp_path, config, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(path))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def _mlflow_runs(workdir: Path):
    from mlflow.tracking import MlflowClient

    init = json.loads((workdir / "results/mlflow/init.json").read_text())
    client = MlflowClient(init["tracking_uri"])
    children = client.search_runs(
        [init["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{init['parent_run_id']}'"
    )
    return init, client, children


def _summary_rows(workdir: Path, *configfiles: Path) -> list[list[str]]:
    """`snakemake --summary`: one row (output file, date, rule, log, status, plan) per file of the DAG."""
    summary = snakemake(
        "--summary", "--cores", "1", "--directory", str(workdir), "--configfile", *map(str, configfiles)
    )
    return [line.split("\t") for line in summary.stdout.splitlines()[1:] if "\t" in line]


def _assert_complete(workdir: Path, *configfiles: Path) -> None:
    rows = _summary_rows(workdir, *configfiles)
    assert rows and all(row[4] == "ok" for row in rows), [r for r in rows if r[4] != "ok"]
    config = load(*(str(f.relative_to(ROOT)) for f in configfiles))
    runs = grid.all_runs(config)
    init, client, children = _mlflow_runs(workdir)
    assert len(children) == len(runs) and all(c.info.status == "FINISHED" for c in children)
    parent = client.get_run(init["parent_run_id"])
    assert parent.info.status == "FINISHED"
    by_id = {c.info.run_id: c for c in children}
    for run in runs:
        metrics = json.loads((workdir / "results/runs" / run.path / "metrics.json").read_text())
        child = by_id[metrics["mlflow_run_id"]]
        assert child.data.metrics["summary.final.test_acc"] == metrics["final"]["test_acc"]
        assert child.data.params["train.seed"] == str(run.seed) and child.data.tags["dataset"] == run.dataset
        history = client.get_metric_history(child.info.run_id, "test_acc")
        assert [m.step for m in history] == list(range(1, metrics["epochs_completed"] + 1))
        # one name per network; the files (model.pt too) as artifacts; the drawn caps as a param; the
        # per-layer diagnostics in their own group of the UI, the accuracies unprefixed (listed first)
        assert child.data.tags["architecture"] == run.network == metrics["network"]
        assert child.info.run_name == run.name
        assert "model.pt" in {a.path for a in client.list_artifacts(child.info.run_id)}
        if metrics["alphas"]:
            assert json.loads(child.data.params["model.alphas"]) == metrics["alphas"]
        if run.family == "ep":
            assert any(k.startswith("diagnostics/activity.") for k in child.data.metrics)
            assert not any(k.startswith("activity.") for k in child.data.metrics)
    # the parent run, where a user lands: the counts, the summary, and exactly the grid's tables and figures
    assert parent.data.metrics["runs/completed"] == len(runs) and parent.data.metrics["runs/failed"] == 0
    artifacts = {
        a.path
        for folder in ("", "tables", "figures", "convergence")
        for a in client.list_artifacts(parent.info.run_id, folder)
        if not a.is_dir
    }
    outputs = {row[0] for row in rows if row[2] in grid.aggregations(config)}
    assert artifacts == {str(Path(p).relative_to("results")) for p in outputs} | {"summary.json"}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """The tiny grid, run once end to end (its working directory); shared by the tests that read it."""
    workdir = tmp_path_factory.mktemp("tiny")
    result = snakemake("--cores", "2", "--directory", str(workdir), "--configfile", str(TINY))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def job_intervals(log: Path) -> list[tuple[float, float]]:
    """(start, end) of each attempt of a job, from the 'job started at' / 'job finished at' lines (Unix
    seconds) its log records."""
    intervals, start = [], None
    for event, stamp in re.findall(r"^job (started|finished) at ([\d.]+)$", log.read_text(), re.M):
        if event == "started":
            start = float(stamp)
        else:
            assert start is not None, f"{log}: finished before it started"
            intervals.append((start, float(stamp)))
            start = None
    return intervals


def _assert_profiles_ran_alone(workdir: Path, *configfiles: Path) -> None:
    """Each profile job held the machine: no training job was running at any moment of it. One profile per
    distinct network (the tiny grid's 4-block depth study is its Hopfield-ResNet13)."""
    config = load(*(str(f.relative_to(ROOT)) for f in configfiles))
    profiles = {log.stem: job_intervals(log) for log in (workdir / "logs/profile").glob("*.log")}
    trains = {str(log): job_intervals(log) for log in (workdir / "logs/train").rglob("*.log")}
    assert sorted(profiles) == sorted(spec.name for spec in grid.profile_specs(config))
    assert len(trains) == len(grid.all_runs(config))
    assert all(len(i) == 1 for i in [*profiles.values(), *trains.values()]), (profiles, trains)
    for name, ((start, end),) in profiles.items():
        for train, ((t_start, t_end),) in trains.items():
            assert t_end <= start or end <= t_start, f"profile {name} overlapped {train}"


@pytest.mark.slow
def test_the_tiny_pipeline_runs_end_to_end_and_a_second_run_does_nothing(tiny_pipeline):
    _assert_complete(tiny_pipeline, TINY)
    _assert_profiles_ran_alone(tiny_pipeline, TINY)
    assert [p.name for p in (tiny_pipeline / "results/profiles").iterdir()] == [
        "hopfield_resnet13-w0.0625-b2.json"
    ]
    for name in ("tables/main.csv", "tables/main.md", "tables/depth.md", "tables/search.md"):
        assert (tiny_pipeline / "results" / name).stat().st_size > 0
    # tiny.yaml's 4 / 2 sweeps are truncated: every EP run probed its gradient once (at step 2 of 4)
    _assert_fidelity_lists(tiny_pipeline / "results", grid.fidelity_runs(load("tests/pipeline/tiny.yaml")), 1)
    again = snakemake("--cores", "2", "--directory", str(tiny_pipeline), "--configfile", str(TINY))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def _report_files(workdir: Path, *configfiles: Path) -> set[str]:
    """The names of the files `snakemake --report` shows (the report written as a zip, to list it)."""
    report = workdir / "report.zip"
    result = snakemake("--report", str(report), "--cores", "1", "--directory", str(workdir),
                       "--configfile", *map(str, configfiles))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(report) as archive:
        return {Path(name).name for name in archive.namelist() if "/data/raw/" in name}


@pytest.mark.slow
def test_a_grid_of_its_own_tables_every_run_and_plans_nothing_of_a_dropped_study(tmp_path):
    """own_grid.yaml, a user's grid: its main study's ReLU1 run is in the main table (marked: not the
    paper's activation), its depth study's run in the depth table; the dropped studies' tables and figures
    are not written and not in the report (nor on the parent MLflow run: `_assert_complete`)."""
    files = (TINY, OWN_GRID)
    result = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", *map(str, files))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(tmp_path, *files)
    config = load(*(str(f.relative_to(ROOT)) for f in files))
    # No weights: they compare ReLU6 EP runs with backprop, and this grid has neither. Every run's phases are
    # truncated (tiny.yaml's 4 / 2, fast, auto), so the fidelity monitor is on in each, and its figure planned.
    assert grid.aggregations(config) == ["main_table", "depth", "convergence", "fidelity"]
    results = tmp_path / "results"
    main, depth = (pd.read_csv(results / "tables" / f"{name}.csv") for name in ("main", "depth"))
    for run in grid.runs_of_kind(config, "main"):
        row = main[(main["architecture"] == run.network) & (main["activation"] == run.activation)]
        assert str(run.seed) in str(row["seeds"].iloc[0]).split(","), run.name
    assert not main["paper_activation"].any() and main["paper"].isna().all()
    for run in grid.study_runs(config, "depth"):
        assert depth.loc[depth["network"] == run.network, "n"].sum() == 1, run.name
        # The study's `ep.recipe: fast` trained fast's sweeps, not tiny.yaml's `settings.ep` counts (4 / 2).
        saved = yaml.safe_load((results / "runs" / run.path / "config.yaml").read_text())["ep"]
        assert (saved["recipe"], saved["free_iterations"], saved["nudge_iterations"]) == ("fast", 40, 15)
        assert saved["eval_iterations"] == 40
        history = pd.read_csv(results / "runs" / run.path / "history.csv")
        assert (history["free_iterations"] == 40).all() and (history["nudged_iterations"] == 15).all()
    assert main["n"].sum() + depth["n"].sum() == len(grid.all_runs(config))  # every run, in a table
    _assert_auto_trained_its_ladder(results, grid.study_runs(config, "auto"))
    _assert_fidelity_lists(results, grid.fidelity_runs(config), probes_per_run=1)

    outputs = {row[0] for row in _summary_rows(tmp_path, *files) if row[2] in grid.aggregations(config)}
    written = {str(p.relative_to(tmp_path)) for d in ("tables", "figures", "convergence")
               for p in (results / d).iterdir()}  # fmt: skip
    assert written == outputs and not (results / "profiles").exists()
    assert _report_files(tmp_path, *files) == {Path(p).name for p in outputs if p.endswith((".md", ".png"))}


def _assert_auto_trained_its_ladder(results: Path, runs: list[grid.RunSpec]) -> None:
    """The `ep.recipe: auto` runs (own_grid.yaml: cap 12 / 4, floor 3) recorded the counts the monitor chose
    each epoch, on the ladder, and trained with them: tiny.yaml probes before steps 0 and 2, the first step
    of each of its two 2-step epochs, so an epoch's counts are the ones it ended with."""
    assert runs
    for run in runs:
        saved = yaml.safe_load((results / "runs" / run.path / "config.yaml").read_text())["ep"]
        assert (saved["recipe"], saved["free_iterations"], saved["nudge_iterations"]) == ("auto", 12, 4)
        rungs = ladder((saved["free_iterations"], saved["nudge_iterations"]), saved["auto_floor"])
        assert len(rungs) == 5, rungs  # a real choice: 3/1, 4/1, 6/2, 8/3, 12/4
        history = pd.read_csv(results / "runs" / run.path / "history.csv")
        chosen = list(zip(history["auto/free_iterations"], history["auto/nudge_iterations"], strict=True))
        assert len(chosen) == 2 and all(counts in rungs for counts in chosen), chosen
        assert (history["free_iterations"] == history["auto/free_iterations"]).all()
        assert (history["nudged_iterations"] == history["auto/nudge_iterations"]).all()
        assert (history["fidelity/probes"] == 1).all()  # before step 0, before step 2


def _assert_fidelity_lists(results: Path, runs: list[grid.RunSpec], probes_per_run: int) -> None:
    """The fidelity table lists exactly the monitored runs, each with its probes, and the figure exists."""
    table = pd.read_csv(results / "tables" / "fidelity.csv")
    assert sorted(table["run_dir"]) == sorted(f"results/runs/{run.path}" for run in runs)
    for row in table.itertuples():
        every_epoch = row.recipe == "auto"  # auto also probes before its first step
        assert row.probes == (2 if every_epoch else probes_per_run), row.run
        assert -1 <= row.cosine_min <= row.cosine_last <= 1 and row.share_of_training > 0, row.run
    epochs = pd.read_csv(results / "tables" / "fidelity_epochs.csv")
    assert set(epochs["run"]) == set(table["run"])
    probes = dict(zip(table["run"], table["probes"], strict=True))
    assert epochs.groupby("run")["probes"].sum().to_dict() == probes
    assert epochs["auto_free_iterations"].notna().sum() == 2 * (table["recipe"] == "auto").sum()
    assert all((results / "figures" / f"fidelity.{kind}").stat().st_size > 0 for kind in ("png", "pdf"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _page_text(url: str, budget_ms: int = 30_000) -> str:
    """The page as headless Chromium renders it (scripts run for `budget_ms` of virtual time), as text."""
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--no-zygote", "--disable-gpu", "--disable-dev-shm-usage",
         f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=180,
    ).stdout  # fmt: skip
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def _rendered(url: str, *needles: str) -> str:
    """The page's text once every needle shows (rendering can take up to a minute on a busy machine)."""
    for budget in (15_000, 30_000, 60_000):
        text = _page_text(url, budget)
        if all(n in text for n in needles):
            break
    return text


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium; .ci/run does)"
)
def test_the_mlflow_ui_shows_the_runs_their_params_and_metrics_in_a_browser(tiny_pipeline):
    init, client, children = _mlflow_runs(tiny_pipeline)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "ui", "--backend-store-uri", init["tracking_uri"], "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "mlflow ui did not start"
                time.sleep(1)
        parent = client.get_run(init["parent_run_id"])
        # The experiment's training runs: the pipeline's parent, its children nested under it.
        url = f"{base}/#/experiments/{init['experiment_id']}/runs"
        text = _rendered(url, parent.info.run_name, "matching runs")
        assert parent.info.run_name in text and f"{len(children) + 1} matching runs" in text, text[:2000]
        # A child run's page: its name, the dotted config params, the metrics by their groups' names.
        child = next(c for c in children if c.data.tags["architecture"] == "hopfield_resnet13")
        url = f"{base}/#/experiments/{init['experiment_id']}/runs/{child.info.run_id}"
        text = _rendered(url, child.info.run_name, "ep.beta", "test_acc")
        beta = child.data.params["ep.beta"]
        assert child.info.run_name in text and f"ep.beta {beta}" in text, text[:2000]
        acc = child.data.metrics["test_acc"]
        shown = str(int(acc)) if acc.is_integer() else repr(acc)  # as JavaScript prints a number
        assert f"test_acc {shown}" in text and "diagnostics/activity." in text
        assert f"Parent run {parent.info.run_name}" in text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def kill_config() -> dict:
    """The tiny grid with a training run long enough (~48 batches) to be killed in the middle."""
    config = yaml.safe_load(TINY.read_text())
    config["settings"]["all"].update({"train.epochs": 6, "data.synthetic_train": 384, "train.batch_size": 8})
    return config


def start_until_checkpoint(tmp_path: Path, *extra: str):
    """The kill grid's first EP run as the only target, started in its own process group and left running
    until its first checkpoint exists. Returns the driver, its command line, the run and its directory."""
    configfile = tmp_path / "kill.yaml"
    configfile.write_text(yaml.safe_dump(kill_config()))
    run = grid.RunSpec("synthetic", "hopfield_resnet13", "relu6", 0)
    run_dir = tmp_path / "results/runs" / run.path
    # The target goes first: --configfile takes several values and would swallow it.
    target = f"results/runs/{run.path}/metrics.json"
    args = [str(BIN / "snakemake"), target, "--snakefile", str(ROOT / "Snakefile"), "--cores", "1", *extra,
            "--directory", str(tmp_path), "--configfile", str(configfile)]  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    driver = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    deadline = time.time() + 300
    while not ((run_dir / "checkpoint.pt").exists() and (run_dir / "history.csv").exists()):
        assert driver.poll() is None and time.time() < deadline
        time.sleep(0.1)
    return driver, args, run, run_dir


@pytest.mark.slow
def test_a_killed_training_job_resumes_with_rerun_incomplete_in_the_same_mlflow_run(tmp_path):
    driver, args, run, run_dir = start_until_checkpoint(tmp_path)
    configfile, target = args[-1], args[1]
    time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and its job, as a node failure would
    driver.communicate()
    import torch

    run_id = torch.load(run_dir / "checkpoint.pt", weights_only=True)["mlflow_run_id"]
    assert run_id and not (run_dir / "metrics.json").exists()
    assert (
        snakemake(
            "--unlock", "--cores", "1", "--directory", str(tmp_path), "--configfile", str(configfile)
        ).returncode
        == 0
    )
    result = snakemake(target, "--cores", "1", "--rerun-incomplete", "--directory", str(tmp_path),
                       "--configfile", str(configfile))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # Both attempts in one log, though Snakemake deleted its path before the second (ep_core.pipeline.joblog).
    log = (tmp_path / "logs/train" / f"{run.path}.log").read_text()
    assert log == (run_dir / "train.log").read_text()
    first, second = log.split("job started at")[1:]
    assert "job finished" not in first and "epoch 1/" in first  # the killed attempt: trained, never finished
    assert "resuming at epoch" in second and "job finished" in second
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["mlflow_run_id"] == run_id
    _, client, children = _mlflow_runs(tmp_path)
    assert [c.info.run_id for c in children] == [run_id] and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "test_acc")]
    assert sorted(set(steps)) == list(range(1, 7))


@pytest.mark.slow
def test_an_interrupted_pipeline_is_marked_killed_and_resumes_as_make_demo_reruns_it(tmp_path):
    """Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) mid-training: the parent run is
    KILLED; the Makefile's command (with --rerun-incomplete) resumes the job from its checkpoint and the
    parent ends FINISHED."""
    driver, args, run, run_dir = start_until_checkpoint(tmp_path, "--rerun-incomplete")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    os.killpg(driver.pid, signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode != 0 and not (run_dir / "metrics.json").exists()
    init, client, _ = _mlflow_runs(tmp_path)
    assert client.get_run(init["parent_run_id"]).info.status == "KILLED", stderr[-2000:]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at epoch" in (tmp_path / "logs/train" / f"{run.path}.log").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    _, client, children = _mlflow_runs(tmp_path)
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert client.get_run(init["parent_run_id"]).info.status == "FINISHED"


def _slurm_up() -> str | None:
    if not shutil.which("sinfo"):
        return "SLURM is not installed here (.ci/start-slurm.sh installs and starts a one-node cluster)"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode or not re.search(r"idle|mix|alloc", state.stdout):
        return f"no SLURM node is up (sinfo: {state.stdout.strip() or state.stderr.strip()})"
    return None


def slurm_snakemake(workdir: Path, *configfiles: Path, timeout: int) -> subprocess.CompletedProcess:
    """The pipeline through `--profile slurm` on the one-node test cluster."""
    return snakemake(
        "--profile", "slurm", "--directory", str(workdir), "--configfile", *map(str, configfiles),
        # Test-only: our one-node cluster has no accounting database, fake GPUs and 2 CPUs.
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
        "--default-resources", "slurm_partition=debug", "runtime=10", "mem_mb=1000",
        # --set-resources replaces the profile's whole block: the profile's whole node is asked for again;
        # a job of 2 tasks gets 1 CPU per GPU, both CPUs of the test node.
        "--set-resources", "train:cpus_per_gpu=1", "profile:cpus_per_gpu=1", "profile:slurm_extra='--exclusive'",
        "--latency-wait", "5",
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_the_tiny_pipeline_through_a_real_slurm_cluster(tmp_path):
    reason = _slurm_up()
    if reason:
        pytest.skip(reason)
    result = slurm_snakemake(tmp_path, TINY, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _assert_complete(tmp_path, TINY)
    _assert_profiles_ran_alone(tmp_path, TINY)
    job_ids = set()
    for run in grid.all_runs(load("tests/pipeline/tiny.yaml")):
        metrics = json.loads((tmp_path / "results/runs" / run.path / "metrics.json").read_text())
        assert metrics["slurm_job_id"], run.path  # the job ran inside a SLURM allocation
        job_ids.add(metrics["slurm_job_id"])
    listed = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    assert job_ids <= set(listed) and len(job_ids) == len(grid.all_runs(load("tests/pipeline/tiny.yaml")))


def test_the_workflow_passes_lint_and_snakefmt():
    lint = snakemake("--lint")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/"], capture_output=True, text=True, cwd=ROOT
    )
    assert fmt.returncode == 0, fmt.stderr
    assert (ROOT / "slurm").resolve() == (ROOT / "profiles/slurm").resolve()  # `--profile slurm` as typed


def _assert_data_parallel(workdir: Path, launcher: str, *configfiles: Path) -> None:
    """Every run trained on its resources.train.gpus processes, launched by `launcher` when more than one,
    in the job's own process otherwise; one MLflow run each (checked by _assert_complete), tagged so."""
    config = load(*(str(f.relative_to(ROOT)) for f in configfiles))
    gpus = grid.gpus_by_path(config)
    assert sorted(set(gpus.values())) == [1, 2]
    _, _, children = _mlflow_runs(workdir)
    tags = {c.info.run_name: c.data.tags for c in children}
    for run in grid.all_runs(config):
        metrics = json.loads((workdir / "results/runs" / run.path / "metrics.json").read_text())
        assert metrics["world_size"] == gpus[run.path] == len(metrics["devices"]), run.path
        assert tags[run.name]["world_size"] == str(gpus[run.path])
        log = (workdir / "logs/train" / f"{run.path}.log").read_text()
        launched = re.search(r"^launching (\d+) processes: (\S+)", log, re.M)
        if gpus[run.path] == 1:
            assert launched is None, log[-2000:]
        else:
            assert launched and int(launched.group(1)) == 2, log[-2000:]
            assert (launcher == "srun") == (launched.group(2) == "srun"), launched.group(0)
            assert log.count("resuming at epoch") == 0 and log.count("completed 2 epochs") == 1  # rank 0 only


@pytest.mark.slow
def test_the_tiny_pipeline_with_two_gpus_per_run_launches_torchrun(tmp_path):
    result = snakemake("--cores", "2", "--directory", str(tmp_path), "--configfile", str(TINY), str(GPUS2))
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_complete(tmp_path, TINY, GPUS2)
    _assert_data_parallel(tmp_path, "torchrun", TINY, GPUS2)


def _slurm_gpus() -> int:
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True).stdout
    found = re.search(r"Gres=gpu:(?:\w+:)?(\d+)", node)
    return int(found.group(1)) if found else 0


@pytest.mark.slow
def test_the_tiny_pipeline_with_two_gpus_per_run_through_a_real_slurm_cluster(tmp_path):
    reason = _slurm_up() or (None if _slurm_gpus() >= 2 else "the SLURM node has fewer than 2 (fake) GPUs")
    if reason:
        pytest.skip(reason)
    result = slurm_snakemake(tmp_path, TINY, GPUS2, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _assert_complete(tmp_path, TINY, GPUS2)
    _assert_data_parallel(tmp_path, "srun", TINY, GPUS2)
