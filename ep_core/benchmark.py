"""`ep-core bench`: honest timings of one CEP training step, per relaxation iteration, beside backprop.

Warm-up steps are excluded, the device is synchronised before every clock reading, and the figures are
medians over repeats. The per-iteration figure divides a phase's time by its iterations; the stacked ±β
phases count as one phase of 2B examples. Compare ratios from one run: the machines are shared and noisy.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .backprop import build_bp_network
from .estimators import EquilibriumProp, device_clock
from .networks import build_network

BP_TWIN = {"hopfield_resnet13": "resnet13", "hopfield_plain13": "resnet13", "vgg5": "vgg5_bp"}


@dataclass
class BenchResult:
    arch: str
    width: float
    batch_size: int
    device: str
    free_iterations: int
    nudge_iterations: int
    step_ms: float  # one CEP training step: free phase, both nudged phases, gradient, optimizer step
    free_ms_per_iteration: float
    nudged_ms_per_iteration: float  # both ±β phases together
    gradient_ms: float  # the Hebbian weight and bias terms from the two nudged states
    bp_step_ms: float | None  # the backprop twin's forward+backward+step on the same batch
    peak_memory_mb: float | None

    def format(self) -> str:
        lines = [
            f"{self.arch} width={self.width} batch={self.batch_size} on {self.device}, "
            f"{self.free_iterations} free + 2x{self.nudge_iterations} nudged iterations",
            f"CEP training step        {self.step_ms:10.1f} ms",
            f"free phase, per iteration {self.free_ms_per_iteration:9.2f} ms",
            f"+-beta phases, per iteration {self.nudged_ms_per_iteration:6.2f} ms",
            f"gradient (Hebbian terms)  {self.gradient_ms:10.1f} ms",
        ]
        if self.bp_step_ms is not None:
            ratio = self.step_ms / self.bp_step_ms
            lines.append(f"backprop twin step       {self.bp_step_ms:10.1f} ms  (CEP/BP = {ratio:.1f}x)")
        if self.peak_memory_mb is not None:
            lines.append(f"peak device memory       {self.peak_memory_mb:10.0f} MiB")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def run_benchmark(
    arch: str = "hopfield_resnet13",
    *,
    width: float = 1.0,
    batch_size: int = 8,
    free_iterations: int = 4,
    nudge_iterations: int = 2,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
) -> BenchResult:
    dev = torch.device(device)
    torch.manual_seed(0)
    shape = {"in_channels": in_channels, "num_classes": num_classes, "input_size": input_size, "width": width}
    net = build_network(arch, **shape).to(dev)
    x = torch.randn(batch_size, in_channels, input_size, input_size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    cep = EquilibriumProp(
        beta=0.1, free_iterations=free_iterations, nudge_iterations=nudge_iterations, clip_norm=1.0
    )
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9, nesterov=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    steps, free, nudged, gradient = [], [], [], []
    for i in range(warmup + repeats):
        t0 = device_clock(dev)
        est = cep.estimate(net, x, y)
        optimizer.zero_grad()
        est.write_to(net)
        optimizer.step()
        if i >= warmup:
            steps.append(device_clock(dev) - t0)
            free.append(est.seconds["free"] / max(free_iterations, 1))
            nudged.append(est.seconds["nudged"] / max(nudge_iterations, 1))
            gradient.append(est.seconds["gradient"])
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    bp_ms = None
    if arch in BP_TWIN:
        model = build_bp_network(BP_TWIN[arch], **shape).to(dev)
        bp_opt = torch.optim.Adam(model.parameters(), lr=1e-6)
        samples = []
        for i in range(warmup + repeats):
            t0 = device_clock(dev)
            bp_opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            bp_opt.step()
            if i >= warmup:
                samples.append(device_clock(dev) - t0)
        bp_ms = _median_ms(samples)
    return BenchResult(
        arch, width, batch_size, str(dev), free_iterations, nudge_iterations, _median_ms(steps),
        _median_ms(free), _median_ms(nudged), _median_ms(gradient), bp_ms, peak,
    )  # fmt: skip
