"""`ep-core bench`: where the time of an EP training step goes, against what it cannot avoid.

For one network at one batch size on one device it measures (docs/benchmarks.md explains every figure):

* a CEP training step as `ep-core train` runs it: `EPLearner.train_step` of a learner and optimizer built
  from a `RunConfig` (ep_core.bench.workload), warm-started from the previous step's carry, warm-up steps
  excluded, the device synchronised before every clock reading, the median over `repeats` steps. The parts
  (free phase, nudged phases, Hebbian gradient, optimizer update) are the learner's own `StepResult.seconds`;
  the −β and +β phases are each timed on their own when they run one after the other, half the stacked
  phase each when stacked;
* the **overhead ratio**: one free-phase iteration as the estimator runs it, divided by the *minimal kernel
  set* of an iteration — each coupling's forward drive once and its transposed drive once (the library's
  own kernels: conv, transposed conv, max-pool with indices / unpool, matmul), called bare back to back
  on the same tensors, nothing recomputed. Both are timed in the same rounds, interleaved; the ratio is
  the median of the per-round ratios;
* **GFLOP/s** of that iteration from an exact count of the coupling kernels' multiply-adds (2 FLOPs
  each; pooling, additions and clamps are not counted), and the EP step's FLOPs;
* the **backprop twin** (`resnet13`, `vgg5_bp`): its `BPLearner.train_step` time and FLOPs
  (torch.utils.flop_counter on one step), the measured ratio EP step ÷ BP step and the FLOP-bound ratio
  EP FLOPs ÷ BP FLOPs;
* **peak memory** of one training step, EP and BP alike, each in a fresh process (ep_core.bench.memory);
* **iterations to a residual tolerance** from zero states under each update order (and Anderson).

Compare ratios from one run: the machines are shared and noisy.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from collections.abc import Callable

import torch

from ..numerics.backprop import BP_TWIN
from ..numerics.estimators import device_clock
from ..numerics.flops import bp_flops, ep_step_flops, iteration_flops, minimal_kernel_set
from ..numerics.networks import HopfieldNetwork
from ..numerics.orders import ORDERS, update_groups
from ..numerics.relaxation import input_drive, relax, relax_list
from ..training.device import resolve_device
from ..training.learners import StepResult
from .memory import peak_memory
from .workload import (
    DTYPES,
    BenchSettings,
    EPOptions,
    bp_training_step,
    build_ep_network,
    ep_config,
    ep_training_step,
)

Samples = list[tuple[float, StepResult]]  # per timed step: its wall seconds and the learner's StepResult

# --- timing -----------------------------------------------------------------------------------------------


def _ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def _spread(samples: list[float]) -> dict[str, float]:
    """min / median / max of the repeats, in ms: repeats that disagree say the host was not quiet."""
    return {"min": 1e3 * min(samples), "median": _ms(samples), "max": 1e3 * max(samples)}


def load_average() -> list[float] | None:
    """The host's 1-, 5- and 15-minute load averages (None where the OS keeps none)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def time_steps(step: Callable[[], StepResult], device: torch.device, warmup: int, repeats: int) -> Samples:
    """`warmup` untimed calls of `step`, then `repeats` timed ones: per timed call its wall seconds (the
    device synchronised before each clock reading) and the learner's own StepResult.seconds."""
    samples = []
    for i in range(warmup + repeats):
        t0 = device_clock(device)
        result = step()
        total = device_clock(device) - t0
        if i >= warmup:
            samples.append((total, result))
    return samples


def ep_parts(samples: Samples) -> dict[str, list[float]]:
    """Seconds per part of the EP step, one per timed step: the learner's free, nudged and gradient parts,
    its `step` (the optimizer update) as `update`, the −β and +β phases (each its own relaxation when run
    one after the other; half the stacked phase each), and `step`, the whole call."""
    parts: dict[str, list[float]] = {}
    for total, result in samples:
        seconds = result.seconds
        split = result.nudged_seconds
        minus, plus = split if len(split) == 2 else (seconds["nudged"] / 2,) * 2
        row = {"free": seconds["free"], "nudged": seconds["nudged"], "gradient": seconds["gradient"],
               "update": seconds["step"], "minus": minus, "plus": plus, "step": total}  # fmt: skip
        for name, value in row.items():
            parts.setdefault(name, []).append(value)
    return parts


def ep_timings(parts: dict[str, list[float]], s: BenchSettings, net: HopfieldNetwork) -> dict:
    """The EP step's figures: the median of each part, per-iteration times, the step's FLOPs, spreads."""
    ms = {name: _ms(values) for name, values in parts.items()}
    stack = "stacked (minus_ms = plus_ms = half the stack)"
    return {
        "step_ms": ms["step"],
        "free_ms": ms["free"],
        "minus_ms": ms["minus"],
        "plus_ms": ms["plus"],
        "nudged_ms": ms["nudged"],
        "gradient_ms": ms["gradient"],
        "update_ms": ms["update"],
        "free_ms_per_iteration": ms["free"] / s.free_iterations,
        # per iteration of ONE nudged phase of B examples (comparable with the free phase's)
        "nudged_ms_per_iteration": ms["nudged"] / (2 * s.nudge_iterations),
        "nudged_phases": stack if s.ep.batch_phases else "separate",
        "flops_per_iteration": iteration_flops(net) * s.batch_size,
        "step_flops": ep_step_flops(net, s.batch_size, s.free_iterations, s.nudge_iterations),
        "spread_ms": {name: _spread(values) for name, values in parts.items()},  # min / median / max
    }


# --- one free-phase iteration against its minimal kernel set ----------------------------------------------


def overhead(
    setups: list[tuple[HopfieldNetwork, torch.Tensor]], options: EPOptions, iterations: int, rounds: int
) -> list[tuple[float, float, float]]:
    """Per (network, batch): (ms per free-phase iteration, ms per bare minimal-kernel-set iteration, median
    per-round ratio). The phase runs fixed-length (no tol) with the step's solver and compile settings;
    every round times each setup's phase and its bare kernels back to back, setups interleaved."""
    runners = []
    with torch.no_grad():
        for net, x in setups:
            groups = update_groups(net, options.order)
            warm, _ = relax(net, x, iterations=2, order=groups)
            drive = input_drive(net, x)
            ops = minimal_kernel_set(net, x, warm)

            def phase(net=net, x=x, groups=groups, warm=warm, drive=drive) -> None:
                relax_list(
                    net, [x, *warm], iterations=iterations, groups=groups, nudge=None, tol=None, drive=drive,
                    solver=options.solver, memory=options.anderson_memory, compile=options.compile,
                )  # fmt: skip

            def bare(ops=ops) -> None:
                for _ in range(iterations):
                    for op in ops:
                        op()

            phase(), bare()  # warm-up
            runners.append((x.device, phase, bare))
        samples: list[tuple[list[float], list[float]]] = [([], []) for _ in setups]
        for _ in range(rounds):
            for (dev, phase, bare), (it, kernels) in zip(runners, samples, strict=True):
                t0 = device_clock(dev)
                phase()
                t1 = device_clock(dev)
                bare()
                t2 = device_clock(dev)
                it.append((t1 - t0) / iterations)
                kernels.append((t2 - t1) / iterations)
    return [
        (_ms(it), _ms(kernels), statistics.median(a / b for a, b in zip(it, kernels, strict=True)))
        for it, kernels in samples
    ]


def dtype_twins(
    s: BenchSettings, net: HopfieldNetwork, x: torch.Tensor
) -> list[tuple[HopfieldNetwork, torch.Tensor]]:
    """The timed network (its current weights) and batch in each of `s.compare_dtypes`."""
    twins = []
    for name in s.compare_dtypes:
        twin = build_ep_network(s, DTYPES[name], x.device)
        twin.load_state_dict(net.state_dict())
        twins.append((twin, x.to(DTYPES[name])))
    return twins


def add_throughput(ep: dict, measured: tuple[float, float, float]) -> None:
    """The free iteration's and kernel set's times into `ep`, with the GFLOP/s of them and of the step."""
    it_ms, kernel_ms, _ = measured
    ep["iteration_ms"] = it_ms
    ep["kernel_set_ms"] = kernel_ms
    ep["gflops"] = ep["flops_per_iteration"] / (it_ms * 1e-3) / 1e9
    ep["kernel_set_gflops"] = ep["flops_per_iteration"] / (kernel_ms * 1e-3) / 1e9
    ep["step_gflops"] = ep["step_flops"] / (ep["step_ms"] * 1e-3) / 1e9


def dtype_comparison(names: tuple[str, ...], measured: list[tuple[float, float, float]]) -> dict | None:
    """Each other dtype's iteration and kernel set (`measured[1:]`) beside the run's own (`measured[0]`)."""
    it_ms, kernel_ms, _ = measured[0]
    out = {}
    for name, (it, kernels, ratio) in zip(names, measured[1:], strict=True):
        out[name] = {"iteration_ms": it, "kernel_set_ms": kernels, "overhead_ratio": ratio}
        out[name] |= {"iteration_speedup": it_ms / it, "kernel_set_speedup": kernel_ms / kernels}
    return out or None


# --- the backprop twin, peak memory, schedules ------------------------------------------------------------


def bp_twin(s: BenchSettings, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    """The backprop twin's training step on the same batch: its time, spread and FLOPs."""
    step = bp_training_step(s, device, x, y)
    samples = [total for total, _ in time_steps(step, device, s.warmup, s.repeats)]
    flops = bp_flops(step.model, x, y)
    return {
        "arch": BP_TWIN[s.arch],
        "step_ms": _ms(samples),
        "step_flops": flops,
        "gflops": flops / statistics.median(samples) / 1e9,
        "spread_ms": {"step": _spread(samples)},
        "peak_memory_mb": None,
        "peak_rss_mb": None,
    }


def add_peak_memory(s: BenchSettings, ep: dict, bp: dict | None) -> None:
    """The peak memory of a step into `ep` (and `bp`), None where not measured or a probe failed."""
    ep["peak_memory_mb"] = ep["peak_rss_mb"] = None
    if not s.measure_memory:
        return
    targets = {"ep": ep} if bp is None else {"ep": ep, "bp": bp}
    for target, probe in zip(targets.values(), peak_memory(s, list(targets)), strict=True):
        if probe is not None:
            target["peak_memory_mb"], target["peak_rss_mb"] = probe["peak_mb"], probe.get("peak_rss_mb")


def schedules(net: HopfieldNetwork, x: torch.Tensor, tol: float, max_iterations: int) -> dict:
    """Sweeps from zero states until the relative residual is ≤ tol (None if not within max_iterations)."""
    out: dict = {"tol": tol, "max_iterations": max_iterations}
    runs = [(order, order, "fixed_point") for order in ORDERS]
    runs.append(("coloring+anderson", "coloring", "anderson"))
    for name, order, solver in runs:
        _, stats = relax(net, x, iterations=max_iterations, order=order, tol=tol, solver=solver)
        out[name] = stats.iterations if stats.residual <= tol else None
    return out


# --- the whole benchmark ----------------------------------------------------------------------------------


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs)"


def memory_method(dev: torch.device) -> str:
    if dev.type == "cuda":
        return "cuda: peak allocated during the step minus allocated before it"
    return (
        "cpu: peak resident set during the step minus the resident set before it, fresh process, "
        "MALLOC_MMAP_THRESHOLD_=131072"
    )


def provenance(s: BenchSettings, dev: torch.device) -> dict:
    """The report's leading fields: what was measured, on what, with which software and how many repeats."""
    return {
        "arch": s.arch,
        "width": s.width,
        "blocks": s.blocks,
        "batch_size": s.batch_size,
        "device": str(dev) if dev.type == "cpu" else f"cuda:{dev.index or 0}",
        "device_name": device_name(dev),
        "dtype": s.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "free_iterations": s.free_iterations,
        "nudge_iterations": s.nudge_iterations,
        "repeats": s.repeats,
    }


def check_settings(s: BenchSettings) -> None:
    """The bench's own argument errors, all raised before any work (bad `ep.*` values: `ep_config`)."""
    for name in (s.dtype, *s.compare_dtypes):
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; valid choices: {', '.join(DTYPES)}")
    for name, value in (("batch_size", s.batch_size), ("repeats", s.repeats)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if s.free_iterations < 1 or s.nudge_iterations < 1:
        raise ValueError("the benchmark needs at least one free and one nudged iteration")


def run_benchmark(s: BenchSettings) -> dict:
    """Every figure of `ep-core bench` as one JSON-ready dict (see the module docstring and the README)."""
    check_settings(s)
    dev = resolve_device(s.device, "--device")
    s = dataclasses.replace(s, device=str(dev))  # the memory probes' processes take this very device
    ep_config(s)  # a bad combination of `ep.*` settings fails here, before any work
    if s.memory_only:
        return memory_benchmark(s)
    load_before = load_average()  # what else the host ran in the minute before the timings
    step = ep_training_step(s, dev)
    net, x = step.model, step.x
    ep = ep_timings(ep_parts(time_steps(step, dev, s.warmup, s.repeats)), s, net)
    measured = overhead([(net, x), *dtype_twins(s, net, x)], s.ep, s.free_iterations, s.overhead_rounds)
    add_throughput(ep, measured[0])
    bp = bp_twin(s, x, step.y, dev) if s.measure_bp and s.arch in BP_TWIN else None
    load_after = load_average()  # after every timing, before the memory probes' own processes
    add_peak_memory(s, ep, bp)  # after every timing: the probes run side by side, each in its own process
    return provenance(s, dev) | {
        "load_average": {"before": load_before, "after": load_after},
        "settings": dataclasses.asdict(s.ep),
        "ep": ep,
        "bp": bp,
        "ep_bp_ratio": ep["step_ms"] / bp["step_ms"] if bp else None,
        "flop_bound_ratio": ep["step_flops"] / bp["step_flops"] if bp else None,
        "overhead_ratio": measured[0][2],
        "memory_method": memory_method(dev),
        "schedules": schedules(net, x, s.schedule_tol, s.schedule_max_iterations) if s.schedule_tol else None,
        # the same free-phase iteration and kernel set in other dtypes, timed interleaved in this run
        "dtype_comparison": dtype_comparison(s.compare_dtypes, measured),
    }


def memory_benchmark(s: BenchSettings) -> dict:
    """`run_benchmark` with `memory_only`: the peak memory of an EP step and of its backprop twin's."""
    kinds = ["ep", "bp"] if s.arch in BP_TWIN else ["ep"]
    probes = dict(zip(kinds, peak_memory(s, kinds), strict=True))
    mb = {k: (p or {}).get("peak_mb") for k, p in probes.items()}
    return {
        "arch": s.arch, "width": s.width, "blocks": s.blocks, "batch_size": s.batch_size, "dtype": s.dtype,
        "device": s.device, "device_name": device_name(torch.device(s.device)),
        "threads": torch.get_num_threads(), "free_iterations": s.free_iterations,
        "nudge_iterations": s.nudge_iterations, "settings": dataclasses.asdict(s.ep), "memory_only": True,
        "ep": {"peak_memory_mb": mb["ep"]},
        "bp": {"arch": BP_TWIN[s.arch], "peak_memory_mb": mb["bp"]} if "bp" in mb else None,
        "ep_bp_memory_ratio": mb["ep"] / mb["bp"] if mb.get("bp") and mb["ep"] is not None else None,
    }  # fmt: skip


def _format_memory(r: dict) -> str:
    s, ep, bp = r["settings"], r["ep"], r["bp"]

    def mib(value) -> str:
        return "failed" if value is None else f"{value:.0f} MiB"

    lines = [
        f"{r['arch']} width={r['width']} batch={r['batch_size']} {r['dtype']} on {r['device_name']}",
        f"{r['free_iterations']} free + 2x{r['nudge_iterations']} nudged iterations; "
        f"stacked={s['batch_phases']} chunk_size={s['chunk_size']}; peak memory of the second step:",
        f"  EP step {mib(ep['peak_memory_mb'])}",
    ]
    if bp is not None:
        lines.append(f"  BP {bp['arch']} step {mib(bp['peak_memory_mb'])}")
    if r["ep_bp_memory_ratio"] is not None:
        lines.append(f"  EP / BP {r['ep_bp_memory_ratio']:.2f}")
    return "\n".join(lines)


def _load(load: dict) -> str:
    return " / ".join("-" if v is None else f"{v[0]:.2f}" for v in (load["before"], load["after"]))


def format_result(r: dict) -> str:
    """The readable table of `ep-core bench`."""
    if r.get("memory_only"):
        return _format_memory(r)
    ep, bp, s = r["ep"], r["bp"], r["settings"]
    spread = ep["spread_ms"]["step"]

    def row(label: str, value: str, note: str = "") -> str:
        return f"{label:<30}{value:>12}  {note}".rstrip()

    lines = [
        f"{r['arch']} width={r['width']} batch={r['batch_size']} {r['dtype']} on {r['device_name']} "
        f"({r['threads']} threads)",
        f"{r['free_iterations']} free + 2x{r['nudge_iterations']} nudged iterations; order={s['order']} "
        f"solver={s['solver']} stacked={s['batch_phases']} channels_last={s['channels_last']} "
        f"compile={s['compile']} cuda_graphs={s['cuda_graphs']}",
        row("EP training step", f"{ep['step_ms']:.1f} ms", f"{ep['step_gflops']:.0f} GFLOP/s"),
        row(
            f"  min - max of {r['repeats']} repeats",
            "{min:.1f} - {max:.1f} ms".format(**spread),
            f"load average before / after {_load(r['load_average'])}",
        ),
        row("  free phase", f"{ep['free_ms']:.1f} ms", f"{ep['free_ms_per_iteration']:.2f} ms/iteration"),
        row("  -beta phase", f"{ep['minus_ms']:.1f} ms", ep["nudged_phases"]),
        row("  +beta phase", f"{ep['plus_ms']:.1f} ms", f"{ep['nudged_ms_per_iteration']:.2f} ms/iteration"),
        row("  Hebbian gradient", f"{ep['gradient_ms']:.1f} ms"),
        row("  weight update", f"{ep['update_ms']:.1f} ms"),
        row("one free iteration", f"{ep['iteration_ms']:.2f} ms", f"{ep['gflops']:.0f} GFLOP/s"),
        row("minimal kernel set", f"{ep['kernel_set_ms']:.2f} ms", f"{ep['kernel_set_gflops']:.0f} GFLOP/s"),
        row("overhead ratio", f"{r['overhead_ratio']:.3f}"),
    ]
    if bp is not None:
        lines += [
            row(f"backprop {bp['arch']} step", f"{bp['step_ms']:.1f} ms", f"{bp['gflops']:.0f} GFLOP/s"),
            row(
                "EP step / BP step",
                f"{r['ep_bp_ratio']:.1f}",
                f"FLOP-bound ratio {r['flop_bound_ratio']:.1f}",
            ),
        ]
    if ep["peak_memory_mb"] is not None:
        bp_mem = (
            f", BP {bp['peak_memory_mb']:.0f}" if bp is not None and bp["peak_memory_mb"] is not None else ""
        )
        lines.append(row("peak memory of a step", f"EP {ep['peak_memory_mb']:.0f}{bp_mem}", "MiB"))
    for other, c in (r["dtype_comparison"] or {}).items():
        lines.append(
            row(f"free iteration in {other}", f"{c['iteration_ms']:.2f} ms",
                f"x{c['iteration_speedup']:.2f} (kernel set x{c['kernel_set_speedup']:.2f}), same run")
        )  # fmt: skip
    if r["schedules"]:
        sc = r["schedules"]
        runs = [k for k in sc if k not in ("tol", "max_iterations")]
        found = ", ".join(
            f"{k} {sc[k] if sc[k] is not None else '>' + str(sc['max_iterations'])}" for k in runs
        )
        lines.append(f"iterations to residual {sc['tol']:g} from zero states: {found}")
    return "\n".join(lines)
