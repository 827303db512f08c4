"""The conda environment and pyproject.toml must list the same packages."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        _name(r): r.replace(" ", "")
        for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    }
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}
    assert listed == wanted
    assert any(d.startswith("python>=3.11") for d in env["dependencies"] if isinstance(d, str))
    assert project["requires-python"] == ">=3.11"


def test_runtime_dependencies_cover_the_whole_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for needed in ("torch", "torchvision", "snakemake", "snakemake-executor-plugin-slurm", "mlflow", "pandas",
                   "seaborn", "scikit-learn"):  # fmt: skip
        assert needed in names
