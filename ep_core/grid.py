"""The pipeline's job grid, from the workflow config (config.yaml): which training runs, with which
settings, belong to which study (the paper's table, the activation and residual ablations), and which
profiling jobs to time. The Snakefile only asks this module; all the logic lives (and is tested) here.

A study is a product datasets × archs × activations × seeds. Runs shared by studies are trained once:
a run is identified by its directory `results/runs/{dataset}/{arch}/{activation}/seed{seed}` (backprop
networks use plain ReLU, labelled `relu`). Settings are dotted `ep-core train` keys layered from the
general to the specific — all < family (ep/bp) < dataset < arch — and every run's resolved settings are
validated with the run configuration itself, so a bad key fails the whole DAG before any job starts.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from .config import BP_ARCHS, EP_ARCHS, RunConfig, build_config, resolve
from .datasets import DATASETS

STUDY_KINDS = ("main", "activation_ablation", "residual_ablation")
TORCHVISION_DATASETS = ("cifar10", "cifar100", "fashion_mnist")
BP_ACTIVATION = "relu"


class GridError(ValueError):
    """A workflow config that names something unknown: one line, naming the key."""


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    arch: str
    activation: str
    seed: int

    @property
    def path(self) -> str:
        return f"{self.dataset}/{self.arch}/{self.activation}/seed{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.arch}-{self.activation}-s{self.seed}"

    @property
    def family(self) -> str:
        return "bp" if self.arch in BP_ARCHS else "ep"


@dataclass(frozen=True)
class ProfileSpec:
    arch: str
    width: float
    batch_size: int
    blocks: int | None = None

    @property
    def name(self) -> str:
        depth = f"-d{self.blocks}" if self.blocks is not None else ""
        return f"{self.arch}{depth}-w{self.width:g}-b{self.batch_size}"


def _check(key: str, values: list, allowed: tuple) -> None:
    for value in values:
        if value not in allowed:
            raise GridError(f"{key}: {value!r} is not allowed; valid choices: {', '.join(allowed)}")


def study_runs(config: dict[str, Any], study: str) -> list[RunSpec]:
    s = config["studies"][study]
    _check(f"studies.{study}.kind", [s["kind"]], STUDY_KINDS)
    _check(f"studies.{study}.datasets", s["datasets"], DATASETS)
    _check(f"studies.{study}.archs", s["archs"], EP_ARCHS + BP_ARCHS)
    seeds = s.get("seeds", config["seeds"])
    runs = []
    for dataset, arch, seed in itertools.product(s["datasets"], s["archs"], seeds):
        activations = [BP_ACTIVATION] if arch in BP_ARCHS else s.get("activations", ["relu6"])
        _check(f"studies.{study}.activations", [a for a in activations if a != BP_ACTIVATION],
               ("relu6", "relu1", "relu_random"))  # fmt: skip
        runs += [RunSpec(dataset, arch, activation, int(seed)) for activation in activations]
    return runs


def all_runs(config: dict[str, Any]) -> list[RunSpec]:
    """Every distinct run of every study, in a stable order."""
    seen: dict[RunSpec, None] = {}
    for study in config["studies"]:
        for run in study_runs(config, study):
            seen.setdefault(run)
    return list(seen)


def runs_of_kind(config: dict[str, Any], kind: str) -> list[RunSpec]:
    _check("kind", [kind], STUDY_KINDS)
    seen: dict[RunSpec, None] = {}
    for study, s in config["studies"].items():
        if s["kind"] == kind:
            for run in study_runs(config, study):
                seen.setdefault(run)
    return list(seen)


def run_overrides(config: dict[str, Any], run: RunSpec) -> list[str]:
    """`key=value` settings of one run (the layers of `settings`, then what the run's identity fixes)."""
    settings = config.get("settings", {})
    layered: dict[str, Any] = {}
    for layer in (settings.get("all"), settings.get(run.family), settings.get("dataset", {}).get(run.dataset),
                  settings.get("arch", {}).get(run.arch)):  # fmt: skip
        layered |= layer or {}
    layered |= {"data.name": run.dataset, "data.data_dir": config["data_dir"], "model.arch": run.arch,
                "train.seed": run.seed}  # fmt: skip
    if run.family == "ep":
        layered["model.activation"] = run.activation
    return [f"{k}={json.dumps(v)}" for k, v in layered.items()]


def validate_grid(config: dict[str, Any]) -> list[RunSpec]:
    """Expand the grid and build every run's configuration, so any bad key or value fails here."""
    runs = all_runs(config)
    if not runs:
        raise GridError("studies: the grid has no runs")
    for run in runs:
        try:
            check_against_network(build_config({}, run_overrides(config, run)))
        except ValueError as error:
            raise GridError(f"settings for {run.name}: {error}") from None
    profile_specs(config)
    return runs


def check_against_network(run_config: RunConfig) -> None:
    """The settings that only the network can check (per-tensor lr/weight-decay lists, per-edge gains):
    build it on the meta device — shapes only, nothing allocated, no data needed — and apply the run's own
    checks, so a dry run rejects what the job would."""
    o, m = run_config.optim, run_config.model
    if not (isinstance(o.lr, list) or isinstance(o.weight_decay, list) or m.gains is not None):
        return
    import torch

    from .datasets import dataset_info
    from .optimization import per_tensor
    from .training import build_model

    with torch.device("meta"):
        model = build_model(resolve(run_config), dataset_info(run_config.data.name))
    for key, value in (("optim.lr", o.lr), ("optim.weight_decay", o.weight_decay)):
        if isinstance(value, list):
            per_tensor(key, value, model)


def datasets_to_download(config: dict[str, Any]) -> list[str]:
    return sorted({r.dataset for r in all_runs(config)} & set(TORCHVISION_DATASETS))


def canonical_network(arch: str, blocks: int | None = None) -> tuple[str, int | None]:
    """The one identity of a network: a `hopfield_resnet` with 4 blocks (its default) is exactly
    `hopfield_resnet13` (networks.hopfield_resnet13 builds it so), so both name `hopfield_resnet13`."""
    if arch == "hopfield_resnet" and blocks in (None, 4):
        return "hopfield_resnet13", None
    return arch, blocks


def profile_specs(config: dict[str, Any]) -> list[ProfileSpec]:
    """The profiling jobs: archs × widths × batch sizes, then the depth study (`hopfield_resnet` with
    `depths` blocks at the largest width and the smallest batch). One network, one measurement: a
    configuration named twice (the depth study's 4 blocks is Hopfield-ResNet13) is profiled once."""
    p = config.get("profiles")
    if not p:
        return []
    _check("profiles.archs", p["archs"], EP_ARCHS)
    cases = [(a, w, b, None) for a, w, b in itertools.product(p["archs"], p["widths"], p["batch_sizes"])]
    cases += [("hopfield_resnet", p["widths"][-1], p["batch_sizes"][0], d) for d in p.get("depths", [])]
    specs: dict[ProfileSpec, None] = {}
    for arch, width, batch_size, blocks in cases:
        arch, blocks = canonical_network(arch, None if blocks is None else int(blocks))
        specs.setdefault(ProfileSpec(arch, float(width), int(batch_size), blocks))
    return list(specs)


def profile_args(config: dict[str, Any], spec: ProfileSpec) -> list[str]:
    p = config["profiles"]
    args = ["--arch", spec.arch, "--width", f"{spec.width:g}", "--batch-size", str(spec.batch_size),
            "--free-iterations", str(p["free_iterations"]), "--nudge-iterations", str(p["nudge_iterations"]),
            "--repeats", str(p["repeats"]), "--device", p.get("device", "cpu")]  # fmt: skip
    if spec.blocks is not None:
        args += ["--blocks", str(spec.blocks)]
    return args


BP_TWIN = {"hopfield_resnet13": "resnet13", "hopfield_plain13": "resnet13", "vgg5": "vgg5_bp"}


def convergence_runs(config: dict[str, Any]) -> list[RunSpec]:
    """One trained EP network per architecture of the main table (its first dataset and seed), whose
    relaxation the convergence figure traces."""
    chosen: dict[str, RunSpec] = {}
    for run in runs_of_kind(config, "main"):
        if run.family == "ep":
            chosen.setdefault(run.arch, run)
    return list(chosen.values())


def weight_pair(config: dict[str, Any]) -> tuple[RunSpec, RunSpec | None] | None:
    """The EP run whose layers the histogram figure shows, with its backprop twin on the same data and
    seed when the grid has it (Hopfield-ResNet13 first, as in the paper)."""
    main = runs_of_kind(config, "main")
    ep_runs = sorted((r for r in main if r.family == "ep"), key=lambda r: r.arch != "hopfield_resnet13")
    for run in ep_runs:
        twin = RunSpec(run.dataset, BP_TWIN.get(run.arch, ""), BP_ACTIVATION, run.seed)
        if twin in main:
            return run, twin
    return (ep_runs[0], None) if ep_runs else None
