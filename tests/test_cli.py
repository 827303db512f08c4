"""The `ep-core` command line: gradcheck, bench, download, and the README's Python example."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ep_core.cli import main
from ep_core.training.checkpoint import _umask

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--width", "0.0625", "--input-size", "16", "--batch-size", "2"]


def test_gradcheck_json_report(capsys):
    assert main(["gradcheck", "--arch", "hopfield_resnet13", *SMALL, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["tensors"]) == 22 and report["settings"]["estimator"] == "cep"
    assert report["min_cosine"] >= 0.999 and report["max_rel_error"] <= 1e-2
    assert report["free_residual"] <= 1e-14 and report["pattern_changes"] == 0


def test_gradcheck_table_sweep_and_exit_status(capsys):
    # β small enough that no unit of this tiny VGG5 batch crosses a clip boundary (1e-3 flips one).
    args = ["gradcheck", "--arch", "vgg5", *SMALL, "--estimator", "ep", "--beta", "1e-4"]
    assert main([*args, "--sweep", "2e-4,1e-4", "--min-cosine", "0.99"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"min cosine 0\.99\d+", out) and "edges.h1_to_h2.weight" in out
    slope = float(re.search(r"ep (\d\.\d\d), cep", out).group(1))
    assert slope == pytest.approx(1.0, abs=0.1)
    assert main([*args, "--min-cosine", "1.5"]) == 1
    assert "min cosine" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["gradcheck", "--arch", "vgg5", "--beta", "0"],
            "ep-core gradcheck: error: beta must be > 0 (centered EP nudges with -beta and +beta)",
        ),
        (
            ["gradcheck", "--arch", "vgg5", "--width", "-1"],
            "ep-core gradcheck: error: argument --width: must be a positive number",
        ),
        (["gradcheck", "--arch", "vgg9"], "argument --arch: invalid choice: 'vgg9'"),
        (
            ["gradcheck", "--arch", "vgg5", "--activation", "elu"],
            "unknown activation 'elu'; valid choices: relu6",
        ),
        (["gradcheck", "--arch", "vgg5", "--sweep", "a,b"], "expected comma-separated numbers"),
        (
            ["download", "--dataset", "imagenet"],
            "ep-core download: error: unknown dataset 'imagenet'; valid choices: cifar10",
        ),
        (["bench", "--device", "tpu"], "ep-core bench: error: --device: 'tpu' is not"),
    ],
)
def test_bad_command_lines_are_one_line_errors(args, message):
    result = subprocess.run([sys.executable, "-m", "ep_core.cli", *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_bench_measures_cep_and_its_backprop_twin(capsys):
    assert main(["bench", "--width", "0.0625", "--batch-size", "2", "--repeats", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # The JSON contract other tools plot against.
    assert r["arch"] == "hopfield_resnet13" and r["free_iterations"] == 4 and r["nudge_iterations"] == 2
    assert (r["width"], r["blocks"], r["batch_size"], r["device"], r["dtype"]) == (
        0.0625,
        None,
        2,
        "cpu",
        "float32",
    )
    assert r["device_name"] and r["threads"] >= 1
    ep, bp = r["ep"], r["bp"]
    for key in ("step_ms", "free_ms", "minus_ms", "plus_ms", "gradient_ms", "update_ms"):
        assert ep[key] > 0, key
    assert ep["step_ms"] > ep["free_ms"] + ep["minus_ms"] + ep["plus_ms"]
    assert ep["free_ms_per_iteration"] == pytest.approx(ep["free_ms"] / 4)
    assert ep["nudged_ms_per_iteration"] > 0 and ep["gflops"] > 0 and ep["peak_memory_mb"] > 0
    # the second step's rise: at this size its blocks may all be reused from the first step's
    assert bp["arch"] == "resnet13" and bp["step_ms"] > 0 and bp["peak_memory_mb"] >= 0
    assert r["flop_bound_ratio"] > 1 and r["overhead_ratio"] > 0.5
    # Every timing with the spread of its repeats, and how busy the host was around them.
    parts = {"step", "free", "minus", "plus", "gradient", "update"}
    assert r["repeats"] == 2 and set(ep["spread_ms"]) >= parts
    for part, timed in (*ep["spread_ms"].items(), ("bp step", bp["spread_ms"]["step"])):
        assert 0 < timed["min"] <= timed["median"] <= timed["max"], part
        assert timed["median"] == pytest.approx((timed["min"] + timed["max"]) / 2), part  # two repeats
    assert ep["spread_ms"]["step"]["median"] == ep["step_ms"]
    assert bp["spread_ms"]["step"]["median"] == bp["step_ms"]
    load = r["load_average"]
    assert len(load["before"]) == len(load["after"]) == 3 and min(load["before"] + load["after"]) >= 0
    sched = r["schedules"]
    assert sched["tol"] == 1e-3 and all(
        sched[k] is None or sched[k] > 0 for k in ("even_odd", "coloring", "synchronous")
    )
    assert sched["coloring"] is not None


def test_bench_table_and_options(capsys, tmp_path):
    args = ["bench", "--arch", "vgg5", "--width", "0.0625", "--input-size", "16", "--batch-size", "2"]
    assert main([*args, "--repeats", "1", "--separate-phases", "--channels-last", "--no-memory", "--no-bp",
                 "--no-schedules"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "overhead ratio" in out and "minimal kernel set" in out and "channels_last=True" in out
    assert "min - max of 1 repeats" in out and "load average before / after" in out
    report = tmp_path / "profiles" / "d5.json"  # the profile rule's way: written whole, mode from the umask
    assert main(["bench", "--arch", "hopfield_resnet", "--blocks", "5", *args[3:], "--repeats", "1", "--json",
                 "--no-memory", "--no-schedules", "--output", str(report)]) == 0  # fmt: skip
    assert capsys.readouterr().out == "" and report.stat().st_mode & 0o777 == 0o666 & ~_umask()
    r = json.loads(report.read_text())
    assert r["blocks"] == 5 and r["bp"] is None and r["ep"]["peak_memory_mb"] is None
    assert [p.name for p in report.parent.iterdir()] == ["d5.json"]  # no temporary file left


def test_download_of_bundled_data_needs_no_network(tmp_path, capsys):
    assert main(["download", "--dataset", "digits", "--data-dir", str(tmp_path)]) == 0
    assert "digits is ready" in capsys.readouterr().out


def test_the_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first.startswith("120 ") and first.endswith("torch.Size([8, 10])")
    assert second.startswith("loss ") and "'nudged': RelaxStats(iterations=50" in second


def test_attach_logs_files_to_the_pipelines_parent_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from ep_core.tracking.parent import init_tracking

    results = tmp_path / "results"
    init = init_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "e", results / "mlflow/artifacts", "pipeline")
    (results / "mlflow/init.json").write_text(json.dumps(init))
    (results / "report.html").write_text("<html>report</html>")
    (results / "tables").mkdir()
    (results / "tables/main.md").write_text("| a |")
    files = [str(results / "report.html"), str(results / "tables/main.md")]
    assert main(["attach", *files, "--init", str(results / "mlflow/init.json"), "--root", str(results)]) == 0
    client = MlflowClient(init["tracking_uri"])
    listed = {
        a.path for folder in ("", "tables") for a in client.list_artifacts(init["parent_run_id"], folder)
    }
    assert {"report.html", "tables/main.md"} <= listed
    assert main(["attach", str(tmp_path / "nothing.html"), "--init", str(results / "mlflow/init.json")]) == 2
    assert "nothing.html' does not exist" in capsys.readouterr().err
