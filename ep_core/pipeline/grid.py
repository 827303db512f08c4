"""The pipeline's job grid, from the workflow config (config.yaml): which training runs, with which
settings, belong to which study (the paper's table, the ablations, the depth study, hyper-parameter
searches), and which profiling jobs to time. The Snakefile only asks this module; all the logic lives (and is
tested) here.

A study is a product datasets × archs × activations × seeds (a depth study: × blocks × with/without skips;
a search: × every combination of its searched values). A study set to null is dropped, so a `--configfile`
can stand alone: it nulls the studies of config.yaml it does not want. Runs shared by studies are
trained once: a run is identified by its directory `results/runs/{dataset}/{network}/{activation}[/
{settings}]/seed{seed}`, where `network` is the network's one name (`naming.network_slug`: the depth
study's 6-block net is `hopfield_resnet19`), backprop networks use plain ReLU (labelled `relu`), and the
optional segment lists the settings the study fixes (`data.val_size-300+ep.beta-0.2`). Settings are dotted
`ep-core train` keys layered from the general to the specific — all < family (ep/bp) < dataset < arch <
the study's own — and every run's resolved settings are validated with the run configuration itself, so a
bad key fails the whole DAG before any job starts.

A run's GPU count (its data-parallel processes) is `resources.train.gpus`, which a study overrides with
its own `resources.train.gpus` as it overrides `seeds`; a run shared by studies gets the most GPUs any of
them asks for (its result does not depend on the count beyond rounding). `resources.train.nodes` (default
1, the grid's only) spreads every run over that many nodes under the SLURM profile, `gpus` on each.

A hyper-parameter search is `kind: search` with a `search:` mapping of dotted keys to lists of values. Its
older spelling, `kind: sweep` with a `sweep:` mapping, is still read (`studies` renames it): "sweep" now
means only one pass of layer updates (ep_core.numerics.sweep).

The tables and figures follow the grid too (`aggregations`): a kind of study the grid does not contain
plans no output, so that the report holds only what was run.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from ..numerics.activations import ACTIVATIONS, PAPER_ACTIVATION
from ..numerics.backprop import BP_ACTIVATION, BP_TWIN
from ..numerics.naming import BLOCK_ARCHS, canonical_network, network_name, network_slug
from ..training.config import BP_ARCHS, EP_ARCHS, RunConfig, build_config, resolve
from ..training.datasets import DATASETS, DOWNLOADABLE
from ..training.recipes import RECIPES

STUDY_KINDS = ("main", "activation_ablation", "residual_ablation", "depth_ablation", "search")
# The older spelling of a search study (its kind and its mapping), read as `kind: search` and `search:`.
OLD_SEARCH = "sweep"
# Keys a study's runs are identified by: a study may not set them through `settings` or `search`.
IDENTITY_KEYS = ("data.name", "data.data_dir", "model.arch", "model.blocks", "model.activation", "train.seed")


class GridError(ValueError):
    """A workflow config that names something unknown: one line, naming the key."""


def _text(value: Any) -> str:
    """A setting's value as it appears in a run's directory and name: 0.2, true, adam, [0,10]."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    arch: str
    activation: str
    seed: int
    blocks: int | None = None  # hopfield_resnet / hopfield_plain only
    settings: tuple[tuple[str, Any], ...] = ()  # what the study fixes (its settings, a search's point)

    @property
    def network(self) -> str:
        return network_slug(self.arch, self.blocks)

    @property
    def variant(self) -> str:
        # No ',' or '=': Snakemake hands a SLURM job its target as `rule:wildcard=value,...`, so a path
        # holding either cannot be parsed back on the node.
        return "+".join(f"{k}-{_text(v)}" for k, v in self.settings)

    @property
    def path(self) -> str:
        variant = f"{self.variant}/" if self.settings else ""
        return f"{self.dataset}/{self.network}/{self.activation}/{variant}seed{self.seed}"

    @property
    def name(self) -> str:
        variant = [self.variant] if self.settings else []
        return "-".join([self.dataset, self.network, self.activation, *variant, f"s{self.seed}"])

    @property
    def family(self) -> str:
        """The `settings` layer the run reads (ep or bp); its algorithm (cep, ep or bp) is `run_algorithm`."""
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


def _current_spelling(s: dict[str, Any]) -> dict[str, Any]:
    """A study with the older spelling of a search (`kind: sweep`, a `sweep:` mapping) renamed to `kind:
    search` and `search:`. config.yaml uses the current one, so a `sweep:` beside a `search:` comes from a
    --configfile merged over it, and replaces it."""
    if s.get("kind") != OLD_SEARCH and OLD_SEARCH not in s:
        return s
    s = dict(s)
    if s.get("kind") == OLD_SEARCH:
        s["kind"] = "search"
    if OLD_SEARCH in s:
        s["search"] = s.pop(OLD_SEARCH)
    return s


def studies(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The grid's studies, without those set to null (how a --configfile drops config.yaml's), in the
    current spelling (the one place the older `kind: sweep` / `sweep:` is read)."""
    return {name: _current_spelling(s) for name, s in (config.get("studies") or {}).items() if s is not None}


def drop_nulls(config: dict[str, Any]) -> dict[str, Any]:
    """Remove, in place, what a --configfile set to null: studies (dropped from the grid) and top-level
    sections (`profiles: null` plans no profiling), so that the schema sees only what is there."""
    for key in [k for k, v in config.items() if v is None]:
        del config[key]
    if isinstance(config.get("studies"), dict):
        for name in [k for k, v in config["studies"].items() if v is None]:
            del config["studies"][name]
    return config


def _layered(config: dict[str, Any], family: str, dataset: str, arch: str) -> dict[str, Any]:
    """`settings` layered all < family < dataset < arch (an `ep.recipe` clears its keys below it)."""
    settings = config.get("settings") or {}
    layered: dict[str, Any] = {}
    for layer in (settings.get("all"), settings.get(family), (settings.get("dataset") or {}).get(dataset),
                  (settings.get("arch") or {}).get(arch)):  # fmt: skip
        layered = _with_recipe(layered, layer or {})
    return layered


def _study_points(study: str, s: dict[str, Any]) -> list[tuple[tuple[str, Any], ...]]:
    """The settings each run of the study fixes: its `settings`, times every point of its `search`."""
    fixed = dict(s.get("settings") or {})
    search = s.get("search") or {}
    if s["kind"] == "search" and not search:
        raise GridError(f"studies.{study}.search: a search needs dotted keys with lists of values")
    if search and s["kind"] != "search":
        raise GridError(f"studies.{study}.search: only a study of kind search searches; this is {s['kind']}")
    for where, keys in (("settings", fixed), ("search", search)):
        bad = [k for k in keys if k in IDENTITY_KEYS]
        if bad:
            raise GridError(f"studies.{study}.{where}: {bad[0]} is set by the study's own axes, not here")
    points = []
    for values in itertools.product(*search.values()):
        point = fixed | dict(zip(search, values, strict=True))
        points.append(tuple(sorted(point.items())))
    return points


def _networks(config: dict[str, Any], study: str, s: dict[str, Any], dataset: str):
    """(arch, blocks) of every network of the study on `dataset`. A depth study's are hopfield_resnet with
    and without skips at each of its `blocks` (4 blocks is hopfield_resnet13 / hopfield_plain13 itself,
    shared with the other studies); a block-counted arch elsewhere takes `model.blocks` from the settings."""
    if s["kind"] == "depth_ablation":
        if s.get("archs"):
            raise GridError(
                f"studies.{study}.archs: a depth study trains hopfield_resnet with and without skips at each "
                "of its blocks; leave archs out"
            )
        if not s.get("blocks"):
            raise GridError(f"studies.{study}.blocks: a depth study needs a list of block counts")
        skips = s.get("skips", [True, False])
        archs = [("hopfield_resnet" if skip else "hopfield_plain") for skip in skips]
        return [canonical_network(a, int(b)) for b in s["blocks"] for a in archs]
    for key in ("blocks", "skips"):
        if key in s:
            raise GridError(f"studies.{study}.{key}: only a study of kind depth_ablation has {key}")
    if not s.get("archs"):
        raise GridError(f"studies.{study}.archs: a {s['kind']} study needs a list of architectures")
    _check(f"studies.{study}.archs", s["archs"], EP_ARCHS + BP_ARCHS)
    out = []
    for arch in s["archs"]:
        family = "bp" if arch in BP_ARCHS else "ep"
        blocks = (
            _layered(config, family, dataset, arch).get("model.blocks", 4) if arch in BLOCK_ARCHS else None
        )
        out.append((arch, None if blocks is None else int(blocks)))
    return out


def study_runs(config: dict[str, Any], study: str) -> list[RunSpec]:
    s = studies(config).get(study)
    if s is None:
        return []
    _check(f"studies.{study}.kind", [s["kind"]], STUDY_KINDS)
    _check(f"studies.{study}.datasets", s["datasets"], DATASETS)
    _check(f"studies.{study}.activations", s.get("activations", []), ACTIVATIONS)
    seeds = s.get("seeds", config["seeds"])
    points = _study_points(study, s)
    runs = []
    for dataset in s["datasets"]:
        for (arch, blocks), seed, point in itertools.product(
            _networks(config, study, s, dataset), seeds, points
        ):
            activations = [BP_ACTIVATION] if arch in BP_ARCHS else s.get("activations", [PAPER_ACTIVATION])
            runs += [RunSpec(dataset, arch, a, int(seed), blocks, point) for a in activations]
    return runs


def all_runs(config: dict[str, Any]) -> list[RunSpec]:
    """Every distinct run of every study, in a stable order; two different runs never share a directory."""
    seen: dict[str, RunSpec] = {}
    for study in studies(config):
        for run in study_runs(config, study):
            other = seen.setdefault(run.path, run)
            if other != run:
                raise GridError(
                    f"studies.{study}: {run.arch} and {other.arch} are one network ({run.network}) with the "
                    "same settings; name it once"
                )
    return list(seen.values())


def runs_of_kind(config: dict[str, Any], kind: str) -> list[RunSpec]:
    _check("kind", [kind], STUDY_KINDS)
    seen: dict[RunSpec, None] = {}
    for study, s in studies(config).items():
        if s["kind"] == kind:
            for run in study_runs(config, study):
                seen.setdefault(run)
    return list(seen)


def search_keys(config: dict[str, Any]) -> list[str]:
    """The dotted keys the grid's searches vary, in the order first given."""
    keys: dict[str, None] = {}
    for s in studies(config).values():
        if s["kind"] == "search":
            keys |= dict.fromkeys(s.get("search") or {})
    return list(keys)


def _with_recipe(lower: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`lower` overlaid with `layer`, where an `ep.recipe` the layer names also clears the keys that recipe
    sets from the layers below it: a study's `ep.recipe: fast` trains the fast recipe's sweep counts even
    when the grid's `settings.ep` sets the authors' (keys set beside the recipe, in its own layer, still
    win, as in a run's own config). So a saved config never names one recipe while training another's."""
    recipe = layer.get("ep.recipe")
    if recipe is None:
        return lower | layer
    if recipe not in RECIPES:
        raise GridError(f"ep.recipe: {recipe!r} is not allowed; valid choices: {', '.join(RECIPES)}")
    return {k: v for k, v in lower.items() if k.removeprefix("ep.") not in RECIPES[recipe]} | layer


def run_overrides(config: dict[str, Any], run: RunSpec) -> list[str]:
    """`key=value` settings of one run (the layers of `settings`, the study's, then the run's identity)."""
    layered = _with_recipe(_layered(config, run.family, run.dataset, run.arch), dict(run.settings))
    layered |= {"data.name": run.dataset, "data.data_dir": config["data_dir"], "model.arch": run.arch,
                "train.seed": run.seed}  # fmt: skip
    if run.blocks is not None:
        layered["model.blocks"] = run.blocks
    if run.family == "ep":
        layered["model.activation"] = run.activation
    return [f"{k}={json.dumps(v)}" for k, v in layered.items()]


def run_algorithm(config: dict[str, Any], run: RunSpec) -> str:
    """The run's algorithm as the tables name it (ep_core.analysis.runs.algorithm_of): 'bp' for a backprop
    network, else its resolved `ep.estimator` ('cep' or 'ep')."""
    if run.family == "bp":
        return "bp"
    return build_config({}, run_overrides(config, run)).ep.estimator


def run_tags(config: dict[str, Any], run: RunSpec) -> dict[str, str]:
    """The MLflow tags of a run: its identity, the network by its one name, the algorithm as the tables
    name it (runs tagged before had `ep` for CEP too; the tables read the run's saved config, not this)."""
    tags = {
        "dataset": run.dataset,
        "architecture": run.network,
        "network": network_name(run.network),
        "activation": run.activation,
        "algorithm": run_algorithm(config, run),
        "seed": str(run.seed),
    }
    return tags | ({"settings": run.variant} if run.settings else {})


def _train_resources(config: dict[str, Any]) -> dict[str, Any]:
    return (config.get("resources") or {}).get("train") or {}


def gpus_by_path(config: dict[str, Any]) -> dict[str, int]:
    """Every run's GPU count, by run directory: its study's `resources.train.gpus`, else the grid's
    (default 1); the largest when studies share the run."""
    default = int(_train_resources(config).get("gpus", 1))
    gpus: dict[str, int] = {}
    for study, s in studies(config).items():
        count = int(((s.get("resources") or {}).get("train") or {}).get("gpus", default))
        if count < 1:
            raise GridError(f"studies.{study}.resources.train.gpus: must be >= 1, got {count}")
        for run in study_runs(config, study):
            gpus[run.path] = max(gpus.get(run.path, 1), count)
    return gpus


def train_nodes(config: dict[str, Any]) -> int:
    """`resources.train.nodes`: the nodes each run spans under the SLURM profile (default 1)."""
    nodes = _train_resources(config).get("nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise GridError(
            f"resources.train.nodes: must be an integer >= 1 (the nodes one run spans, gpus on each), "
            f"got {nodes!r}"
        )
    return nodes


def train_job_resources(config: dict[str, Any], gpus: int) -> dict[str, Any]:
    """The `train` rule's threads and resources for a run on `gpus` GPUs per node over
    `resources.train.nodes` nodes; `threads` and `mem_mb` of resources.train are per process. More than one
    process: as many SLURM tasks of one GPU each, which the job starts itself with srun (the SLURM plugin's
    `mpi` resource: the job step is the batch script, not `srun -n1`); `gpu` and `tasks` count the job's
    (sbatch --gpus, --ntasks), `mem_mb` one node's (sbatch --mem). None leaves a resource unset, so a
    one-GPU run is submitted exactly as before."""
    train = _train_resources(config)
    world = train_nodes(config) * gpus
    many = world > 1
    return {
        "threads": int(train.get("threads", 8)) * world,
        "mem_mb": int(train.get("mem_mb", 32000)) * gpus,
        "gpu": world,
        "mpi": "srun" if many else None,
        "tasks": world if many else None,
        "tasks_per_gpu": 1 if many else None,
    }


def validate_grid(config: dict[str, Any]) -> list[RunSpec]:
    """Expand the grid and build every run's configuration, so any bad key or value fails here."""
    runs = all_runs(config)
    if not runs:
        raise GridError("studies: the grid has no runs")
    searched = set(runs_of_kind(config, "search"))
    gpus, nodes = gpus_by_path(config), train_nodes(config)
    for run in runs:
        try:
            resolved = build_config({}, run_overrides(config, run))
            check_against_network(resolved)
        except ValueError as error:
            raise GridError(f"settings for {run.name}: {error}") from None
        batch, n = resolved.train.batch_size, nodes * gpus[run.path]
        if batch % n:
            source = (
                f"resources.train.nodes {nodes} × gpus {gpus[run.path]}"
                if nodes > 1
                else "resources.train.gpus"
            )
            raise GridError(
                f"settings for {run.name}: train.batch_size {batch} is not divisible by its {n} GPUs "
                f"({source}); use a multiple of {n}"
            )
        if run in searched and resolved.data.val_size <= 0:
            raise GridError(
                f"settings for {run.name}: a search chooses its best setting on validation; set "
                "data.val_size > 0 in the search study's settings"
            )
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

    from ..training.datasets import dataset_info
    from ..training.optimization import per_tensor
    from ..training.run import build_model

    with torch.device("meta"):
        model = build_model(resolve(run_config), dataset_info(run_config.data.name))
    for key, value in (("optim.lr", o.lr), ("optim.weight_decay", o.weight_decay)):
        if isinstance(value, list):
            per_tensor(key, value, model)


def datasets_to_download(config: dict[str, Any]) -> list[str]:
    return sorted({r.dataset for r in all_runs(config)} & set(DOWNLOADABLE))


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


def convergence_runs(config: dict[str, Any]) -> list[RunSpec]:
    """One trained EP network per architecture of the main table (its first dataset and seed), whose
    relaxation the convergence figure traces."""
    chosen: dict[str, RunSpec] = {}
    for run in runs_of_kind(config, "main"):
        if run.family == "ep":
            chosen.setdefault(run.network, run)
    return list(chosen.values())


def weight_pair(config: dict[str, Any]) -> tuple[RunSpec, RunSpec | None] | None:
    """The EP run whose layers the histogram figure shows, with its backprop twin on the same data and
    seed when the grid has it (Hopfield-ResNet13 first, as in the paper). Only a run with the paper's
    activation: the weight table compares those with backprop (ep_core.analysis.weights)."""
    main = runs_of_kind(config, "main")
    ep_runs = [r for r in main if r.family == "ep" and r.activation == PAPER_ACTIVATION]
    ep_runs.sort(key=lambda r: r.arch != "hopfield_resnet13")
    for run in ep_runs:
        twin = RunSpec(run.dataset, BP_TWIN.get(run.arch, ""), BP_ACTIVATION, run.seed)
        if twin in main:
            return run, twin
    return (ep_runs[0], None) if ep_runs else None


def fidelity_runs(config: dict[str, Any]) -> list[RunSpec]:
    """The EP runs whose gradient-fidelity monitor is on: `train.fidelity_every` > 0 in the run's resolved
    configuration (its `null` default is on for truncated phases or `ep.recipe: auto`: training.config),
    as the run itself will resolve it. The fidelity figure draws these runs."""
    settings = {"data_dir": "data"} | config  # where the data is cannot turn it on; a bare grid lacks it

    def monitored(run: RunSpec) -> bool:
        return bool(resolve(build_config({}, run_overrides(settings, run))).train.fidelity_every)

    return [run for run in all_runs(config) if run.family == "ep" and monitored(run)]


def aggregations(config: dict[str, Any]) -> list[str]:
    """The aggregation rules (workflow/rules/aggregate.smk) this grid plans, each only when the grid has
    what its tables and figures show: a dropped study (or `profiles: null`) leaves no empty table or figure
    in results/, the report or on the pipeline's parent MLflow run. The weights need an EP run of a main
    study with the paper's activation (what they compare with backprop), convergence any EP main run, the
    fidelity figure a run whose monitor is on (`fidelity_runs`)."""
    has = {kind: bool(runs_of_kind(config, kind)) for kind in STUDY_KINDS}
    planned = {
        "main_table": has["main"],
        "ablations": has["residual_ablation"] or has["activation_ablation"],
        "residual_ablation": has["residual_ablation"],
        "activation_ablation": has["activation_ablation"],
        "depth": has["depth_ablation"],
        "search": has["search"],
        "profiles": bool(profile_specs(config)),
        "weights": weight_pair(config) is not None,
        "convergence": bool(convergence_runs(config)),
        "fidelity": bool(fidelity_runs(config)),
    }
    return [rule for rule, planned_here in planned.items() if planned_here]
