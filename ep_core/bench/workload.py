"""What `ep-core bench` runs: its settings, the network and batch they describe, and the training step.

The step is the learner's own (`EPLearner.train_step`, `BPLearner.train_step` for the backprop twin), built
from a `RunConfig` as training builds it, so the bench times what `ep-core train` runs. Shared by the
timings (ep_core.bench.step) and the peak-memory probes (ep_core.bench.memory), which rebuild the same
workload from the settings' JSON in a fresh process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..numerics.backprop import BP_TWIN, build_bp_network
from ..numerics.naming import BLOCK_ARCHS
from ..numerics.networks import HopfieldNetwork, build_network
from ..numerics.relaxation import States
from ..training.config import EPConfig, RunConfig, build_config, resolve
from ..training.learners import BPLearner, EPLearner, StepResult
from ..training.optimization import build_optimizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
BETA = 0.1  # the authors' CIFAR-10 nudge; the step's cost does not depend on it
# Small enough that the timed repeats see the same weights (so the same work under a tolerance), while
# the optimizer keeps training's kind, parameter groups and state.
LEARNING_RATE = 1e-6


def _default(key: str) -> Any:
    """The default of `ep.<key>`, where it is defined (EPConfig, from the estimator's own fields)."""
    return next(f.default for f in dataclasses.fields(EPConfig) if f.name == key)


@dataclass(frozen=True)
class EPOptions:
    """The `ep.*` keys of the timed step besides its lengths, as the report's `settings` lists them."""

    order: str = _default("order")
    solver: str = _default("solver")
    nudge_solver: str = _default("nudge_solver")
    anderson_memory: int = _default("anderson_memory")
    compile: bool = _default("compile")
    cuda_graphs: bool = _default("cuda_graphs")
    batch_phases: bool = _default("batch_phases")
    channels_last: bool = _default("channels_last")
    chunk_size: int | None = _default("chunk_size")
    omega: float = _default("omega")
    bf16_sweeps: int = _default("bf16_sweeps")
    tol: float | None = _default("tol")


@dataclass(frozen=True)
class BenchSettings:
    """Everything one `ep-core bench` run measures, and how (see ep_core.bench.step)."""

    arch: str = "hopfield_resnet13"
    width: float = 1.0
    batch_size: int = 8
    free_iterations: int = 4
    nudge_iterations: int = 2
    repeats: int = 3
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    blocks: int | None = None
    in_channels: int = 3
    num_classes: int = 10
    input_size: int = 32
    ep: EPOptions = field(default_factory=EPOptions)
    memory_only: bool = False
    overhead_rounds: int = 3
    measure_bp: bool = True
    measure_memory: bool = True
    schedule_tol: float | None = 1e-3  # None: no iterations-to-tolerance runs
    schedule_max_iterations: int = 400
    compare_dtypes: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict) -> BenchSettings:
        """The settings from `dataclasses.asdict` of them, as a JSON round trip leaves it."""
        ep = EPOptions(**values["ep"])
        return cls(**{**values, "ep": ep, "compare_dtypes": tuple(values["compare_dtypes"])})


def ep_config(s: BenchSettings) -> RunConfig:
    """The resolved training configuration of the timed EP step (a ConfigError names a bad `ep.*` key)."""
    model = {"arch": s.arch, "width": s.width, **({"blocks": s.blocks} if s.blocks is not None else {})}
    ep = {"beta": BETA, "free_iterations": s.free_iterations, "nudge_iterations": s.nudge_iterations}
    values = {"model": model, "ep": ep | dataclasses.asdict(s.ep), "optim": {"lr": LEARNING_RATE}}
    return resolve(build_config(values))


def _format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def build_batch(s: BenchSettings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch every step of a run sees: random images and labels, the same for every dtype and process."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s.batch_size, s.in_channels, s.input_size, s.input_size, generator=g)
    y = torch.randint(0, s.num_classes, (s.batch_size,), generator=g).to(device)
    return _format(x.to(device=device, dtype=DTYPES[s.dtype]), s.ep.channels_last), y


def build_ep_network(s: BenchSettings, dtype: torch.dtype, device: torch.device) -> HopfieldNetwork:
    torch.manual_seed(0)
    shape = {"in_channels": s.in_channels, "num_classes": s.num_classes, "input_size": s.input_size}
    blocks = {"blocks": s.blocks} if s.arch in BLOCK_ARCHS and s.blocks is not None else {}
    net = build_network(s.arch, width=s.width, **shape, **blocks).to(device=device, dtype=dtype)
    return net.to(memory_format=torch.channels_last) if s.ep.channels_last else net


@dataclass
class TrainingStep:
    """A learner's training step on one batch, called as the training loop calls it: each EP step
    warm-starts from the states the previous one carried (BP carries none)."""

    model: nn.Module
    learner: EPLearner | BPLearner
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    warm: States | None = None

    def __call__(self) -> StepResult:
        result = self.learner.train_step(self.x, self.y, self.optimizer, self.warm)
        self.warm = result.carry
        return result


def ep_training_step(s: BenchSettings, device: torch.device) -> TrainingStep:
    """The EP network in the bench's dtype, its `EPLearner` and optimizer as training builds them."""
    config = ep_config(s)
    net = build_ep_network(s, DTYPES[s.dtype], device)
    learner = EPLearner(net, config)
    return TrainingStep(net, learner, build_optimizer(net, config.optim), *build_batch(s, device))


def bp_training_step(
    s: BenchSettings, device: torch.device, x: torch.Tensor, y: torch.Tensor
) -> TrainingStep:
    """The backprop twin of `s.arch` (BP_TWIN) on batch (x, y), its `BPLearner` and optimizer as training
    builds them (its own recipe's optimizer at the bench's learning rate)."""
    arch = BP_TWIN[s.arch]
    values = {"model": {"arch": arch, "width": s.width}, "optim": {"lr": LEARNING_RATE}}
    config = resolve(build_config(values))
    torch.manual_seed(0)
    shape = {"in_channels": s.in_channels, "num_classes": s.num_classes, "input_size": s.input_size}
    model = build_bp_network(arch, width=s.width, **shape).to(device=device, dtype=DTYPES[s.dtype])
    if s.ep.channels_last:
        model.to(memory_format=torch.channels_last)
    return TrainingStep(model, BPLearner(model, config), build_optimizer(model, config.optim), x, y)
