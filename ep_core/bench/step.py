"""`ep-core bench`: where the time of an EP training step goes, against what it cannot avoid.

For one network at one batch size on one device it measures (docs/benchmarks.md explains every figure):

* a CEP training step (free phase, −β and +β phases, Hebbian gradient, optimizer update), warm-up steps
  excluded, the device synchronised before every clock reading, the median over `repeats` steps;
* the **overhead ratio**: one free-phase iteration as the estimator runs it, divided by the *minimal kernel
  set* of an iteration — each coupling's forward drive once and its transposed drive once (the library's
  own kernels: conv, transposed conv, max-pool with indices / unpool, matmul), called bare back to back
  on the same tensors, nothing recomputed. Both are timed in the same rounds, interleaved; the ratio is
  the median of the per-round ratios;
* **GFLOP/s** of that iteration from an exact count of the coupling kernels' multiply-adds (2 FLOPs
  each; pooling, additions and clamps are not counted), and the EP step's FLOPs;
* the **backprop twin** (`resnet13`, `vgg5_bp`): its step time and FLOPs (torch.utils.flop_counter on one
  step), the measured ratio EP step ÷ BP step and the FLOP-bound ratio EP FLOPs ÷ BP FLOPs;
* **peak memory** of one training step, EP and BP alike: on CUDA the peak allocated memory during the
  step; on a CPU the peak resident set during the step, each in a fresh subprocess (glibc told to return
  freed blocks at once, MALLOC_MMAP_THRESHOLD_), minus the resident set just before it — the memory the
  step itself adds (states or activation tape, gradients, optimizer state, transients);
* **iterations to a residual tolerance** from zero states under each update order (and Anderson).

Compare ratios from one run: the machines are shared and noisy.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import ep_core

from ..numerics.backprop import BP_TWIN, build_bp_network
from ..numerics.estimators import EquilibriumProp, device_clock
from ..numerics.flops import bp_flops, ep_step_flops, iteration_flops, minimal_kernel_set
from ..numerics.naming import BLOCK_ARCHS
from ..numerics.networks import HopfieldNetwork, build_network
from ..numerics.orders import ORDERS, update_groups
from ..numerics.relaxation import input_drive, relax, relax_list
from ..training.device import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


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


@dataclass
class Setup:
    net: HopfieldNetwork
    x: torch.Tensor
    y: torch.Tensor
    estimator: EquilibriumProp
    warm: list[torch.Tensor] | None = None  # the warm start / carry, as EPLearner keeps it


def _format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def build_setup(
    arch: str,
    *,
    width,
    batch_size,
    dtype,
    device,
    blocks,
    input_size,
    in_channels,
    num_classes,
    estimator,
    channels_last=False,
) -> Setup:
    torch.manual_seed(0)
    kwargs = {
        "in_channels": in_channels,
        "num_classes": num_classes,
        "input_size": input_size,
        "width": width,
    }
    if arch in BLOCK_ARCHS and blocks is not None:
        kwargs["blocks"] = blocks
    net = build_network(arch, **kwargs).to(device=device, dtype=dtype)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_channels, input_size, input_size, generator=g).to(
        device=device, dtype=dtype
    )
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    return Setup(net, _format(x, channels_last), y, estimator)


def ep_step(setup: Setup, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One training step as `EPLearner.train_step` runs it (warm start from the previous step's +β state,
    written back in place; no state kept past its chunk); wall seconds per part."""
    dev = setup.x.device
    net = setup.net
    if setup.warm is None:
        setup.warm = net.zero_states(setup.x.shape[0], device=dev, dtype=setup.x.dtype)
    est = setup.estimator.estimate(net, setup.x, setup.y, setup.warm, keep_states=False, carry=setup.warm)
    t0 = device_clock(dev)
    optimizer.zero_grad(set_to_none=True)
    est.write_to(setup.net)
    seconds = dict(est.seconds)
    phases = list(est.nudged_seconds)
    del est
    optimizer.step()
    seconds["update"] = device_clock(dev) - t0
    if len(phases) == 2:
        seconds["minus"], seconds["plus"] = phases
    else:  # stacked (or one-sided): one relaxation, reported split evenly
        seconds["minus"] = seconds["plus"] = seconds["nudged"] / 2
    return seconds


def bp_step(model: torch.nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def bp_setup(arch: str, *, width, input_size, in_channels, num_classes, dtype, device, channels_last):
    torch.manual_seed(0)
    model = build_bp_network(
        BP_TWIN[arch], width=width, input_size=input_size, in_channels=in_channels, num_classes=num_classes
    ).to(device=device, dtype=dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), lr=1e-6)


def overhead(setups: list[Setup], iterations: int, rounds: int) -> list[tuple[float, float, float]]:
    """Per setup: (ms per free-phase iteration, ms per bare minimal-kernel-set iteration, median per-round
    ratio). The phase runs fixed-length (no tol) with the estimator's solver and compile settings; every
    round times each setup's phase and its bare kernels back to back, setups interleaved."""
    runners = []
    with torch.no_grad():
        for setup in setups:
            net, x, est = setup.net, setup.x, setup.estimator
            groups = update_groups(net, est.order)
            warm, _ = relax(net, x, iterations=2, order=groups)
            drive = input_drive(net, x)
            ops = minimal_kernel_set(net, x, warm)

            def phase(net=net, x=x, est=est, groups=groups, warm=warm, drive=drive) -> None:
                relax_list(
                    net, [x, *warm], iterations=iterations, groups=groups, nudge=None, tol=None, drive=drive,
                    solver=est.solver, memory=est.anderson_memory, compile=est.compile,
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


def schedules(setup: Setup, tol: float, max_iterations: int) -> dict:
    """Sweeps from zero states until the relative residual is ≤ tol (None if not within max_iterations)."""
    out: dict = {"tol": tol, "max_iterations": max_iterations}
    net, x = setup.net, setup.x
    runs = [(order, order, "fixed_point") for order in ORDERS]
    runs.append(("coloring+anderson", "coloring", "anderson"))
    for name, order, solver in runs:
        _, stats = relax(net, x, iterations=max_iterations, order=order, tol=tol, solver=solver)
        out[name] = stats.iterations if stats.residual <= tol else None
    return out


# --- peak memory in a fresh process -----------------------------------------------------------------------


def _status() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values


def _memory_probe(spec: dict) -> dict:
    """Run in a fresh process: build, one training step (EP or BP) to reach the steady state (the warm
    state, the optimizer's buffers), then the memory the second step adds."""
    dev = torch.device(spec["device"])
    dtype = DTYPES[spec["dtype"]]
    common = {k: spec[k] for k in ("width", "input_size", "in_channels", "num_classes")}
    if spec["kind"] == "ep":
        est = estimator_from(spec["estimator"])
        setup = build_setup(
            spec["arch"], batch_size=spec["batch_size"], dtype=dtype, device=dev, blocks=spec["blocks"],
            estimator=est, channels_last=spec["estimator"]["channels_last"], **common,
        )  # fmt: skip
        optimizer = torch.optim.SGD(setup.net.parameters(), lr=1e-6, momentum=0.9, nesterov=True)

        def step() -> None:
            ep_step(setup, optimizer)
    else:
        model, optimizer = bp_setup(
            spec["arch"], dtype=dtype, device=dev, channels_last=spec["estimator"]["channels_last"], **common
        )
        g = torch.Generator().manual_seed(0)
        x = torch.randn(
            spec["batch_size"], spec["in_channels"], spec["input_size"], spec["input_size"], generator=g
        )
        x = _format(x.to(device=dev, dtype=dtype), spec["estimator"]["channels_last"])
        y = torch.randint(0, spec["num_classes"], (spec["batch_size"],), generator=g).to(dev)

        def step() -> None:
            bp_step(model, optimizer, x, y)

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        return {
            "peak_mb": (torch.cuda.max_memory_allocated(dev) - before) / 2**20,
            "method": "cuda_allocated",
        }
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark
    except OSError:
        pass
    before = _status()
    step()
    after = _status()
    return {
        "peak_mb": after["VmHWM"] - before["VmRSS"],
        "peak_rss_mb": after["VmHWM"],
        "method": "cpu_peak_rss_increment",
    }


def peak_memory(kinds: list[str], spec: dict) -> list[dict | None]:
    """`_memory_probe` for each kind ("ep", "bp") in its own fresh interpreter, run side by side; None for
    a probe that failed or where /proc is missing (not Linux)."""
    if spec["device"] == "cpu" and not os.path.exists("/proc/self/status"):
        return [None] * len(kinds)
    root = str(Path(ep_core.__file__).resolve().parent.parent)  # import this very ep_core
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=path)
    code = (
        "import json, sys; from ep_core.bench.step import _memory_probe; "
        "print(json.dumps(_memory_probe(json.loads(sys.argv[1]))))"
    )
    procs = []
    for kind in kinds:
        command = [sys.executable, "-c", code, json.dumps({**spec, "kind": kind})]
        procs.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        )
    results: list[dict | None] = []
    for proc in procs:
        out, _ = proc.communicate()
        ok = proc.returncode == 0 and out.strip()
        results.append(json.loads(out.strip().splitlines()[-1]) if ok else None)
    return results


# --- the whole benchmark ----------------------------------------------------------------------------------


ESTIMATOR_KEYS = (
    "order",
    "solver",
    "nudge_solver",
    "anderson_memory",
    "compile",
    "cuda_graphs",
    "batch_phases",
    "channels_last",
    "chunk_size",
    "omega",
    "bf16_sweeps",
)


def estimator_from(spec: dict) -> EquilibriumProp:
    fields = {f.name for f in dataclasses.fields(EquilibriumProp)}
    return EquilibriumProp(**{k: v for k, v in spec.items() if k in fields})


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
    dtype: str = "float32",
    blocks: int | None = None,
    in_channels: int = 3,
    num_classes: int = 10,
    input_size: int = 32,
    order: str = "even_odd",
    solver: str = "fixed_point",
    nudge_solver: str = "fixed_point",
    anderson_memory: int = 5,
    chunk_size: int | None = None,
    memory_only: bool = False,
    batch_phases: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    cuda_graphs: bool = False,
    tol: float | None = None,
    omega: float = 1.0,
    bf16_sweeps: int = 0,
    overhead_rounds: int = 3,
    measure_bp: bool = True,
    measure_memory: bool = True,
    schedule_tol: float | None = 1e-3,
    schedule_max_iterations: int = 400,
    compare_dtypes: tuple[str, ...] = (),
) -> dict:
    """Every figure of `ep-core bench` as one JSON-ready dict (see the module docstring and the README)."""
    for name in (dtype, *compare_dtypes):  # all checked before any work
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; valid choices: {', '.join(DTYPES)}")
    for name, value in (("batch_size", batch_size), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if free_iterations < 1 or nudge_iterations < 1:
        raise ValueError("the benchmark needs at least one free and one nudged iteration")
    dev = resolve_device(device, "--device")
    load_before = load_average()  # what else the host ran in the minute before the timings
    spec_est = {
        "beta": 0.1, "free_iterations": free_iterations, "nudge_iterations": nudge_iterations,
        "clip_norm": 1.0, "order": order, "solver": solver, "anderson_memory": anderson_memory,
        "nudge_solver": nudge_solver, "chunk_size": chunk_size,
        "batch_phases": batch_phases, "compile": compile, "cuda_graphs": cuda_graphs, "tol": tol,
        "channels_last": channels_last, "omega": omega, "bf16_sweeps": bf16_sweeps,
    }  # fmt: skip
    est = estimator_from(spec_est)
    shape = {"width": width, "input_size": input_size, "in_channels": in_channels, "num_classes": num_classes}
    if memory_only:
        return memory_benchmark(arch, batch_size, dtype, dev, blocks, spec_est, shape)
    setup = build_setup(
        arch, batch_size=batch_size, dtype=DTYPES[dtype], device=dev, blocks=blocks, estimator=est,
        channels_last=channels_last, **shape,
    )  # fmt: skip
    net = setup.net
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.9, nesterov=True)
    parts: dict[str, list[float]] = {}
    for i in range(warmup + repeats):
        t0 = device_clock(dev)
        seconds = ep_step(setup, optimizer)
        total = device_clock(dev) - t0
        if i >= warmup:
            for k, v in {**seconds, "step": total}.items():
                parts.setdefault(k, []).append(v)
    ep = {
        "step_ms": _ms(parts["step"]),
        "free_ms": _ms(parts["free"]),
        "minus_ms": _ms(parts["minus"]),
        "plus_ms": _ms(parts["plus"]),
        "nudged_ms": _ms(parts["nudged"]),
        "gradient_ms": _ms(parts["gradient"]),
        "update_ms": _ms(parts["update"]),
        "free_ms_per_iteration": _ms(parts["free"]) / free_iterations,
        # per iteration of ONE nudged phase of B examples (comparable with the free phase's)
        "nudged_ms_per_iteration": _ms(parts["nudged"]) / (2 * nudge_iterations),
        "nudged_phases": "separate" if not batch_phases else "stacked (minus_ms = plus_ms = half the stack)",
        "flops_per_iteration": iteration_flops(net) * batch_size,
        "step_flops": ep_step_flops(net, batch_size, free_iterations, nudge_iterations),
        "spread_ms": {k: _spread(v) for k, v in parts.items()},  # per part: min / median / max of the repeats
    }
    others = []
    for other in compare_dtypes:
        twin = build_setup(
            arch, batch_size=batch_size, dtype=DTYPES[other], device=dev, blocks=blocks, estimator=est,
            channels_last=channels_last, **shape,
        )  # fmt: skip
        twin.net.load_state_dict(net.state_dict())
        twin.x.copy_(setup.x)
        others.append(twin)
    measured = overhead([setup, *others], free_iterations, overhead_rounds)
    it_ms, kernel_ms, ratio = measured[0]
    dtype_comparison = {}
    for other, m in zip(compare_dtypes, measured[1:], strict=True):
        dtype_comparison[other] = {"iteration_ms": m[0], "kernel_set_ms": m[1], "overhead_ratio": m[2]}
        dtype_comparison[other] |= {"iteration_speedup": it_ms / m[0], "kernel_set_speedup": kernel_ms / m[1]}
    ep["iteration_ms"] = it_ms
    ep["kernel_set_ms"] = kernel_ms
    ep["gflops"] = ep["flops_per_iteration"] / (it_ms * 1e-3) / 1e9
    ep["kernel_set_gflops"] = ep["flops_per_iteration"] / (kernel_ms * 1e-3) / 1e9
    ep["step_gflops"] = ep["step_flops"] / (ep["step_ms"] * 1e-3) / 1e9

    bp = None
    flop_bound = None
    if measure_bp and arch in BP_TWIN:
        model, bp_opt = bp_setup(arch, dtype=DTYPES[dtype], device=dev, channels_last=channels_last, **shape)
        samples = []
        for i in range(warmup + repeats):
            t0 = device_clock(dev)
            bp_step(model, bp_opt, setup.x, setup.y)
            if i >= warmup:
                samples.append(device_clock(dev) - t0)
        flops = bp_flops(model, setup.x, setup.y)
        bp = {
            "arch": BP_TWIN[arch],
            "step_ms": _ms(samples),
            "step_flops": flops,
            "gflops": flops / statistics.median(samples) / 1e9,
            "spread_ms": {"step": _spread(samples)},
            "peak_memory_mb": None,
            "peak_rss_mb": None,
        }
        flop_bound = ep["step_flops"] / flops
    load_after = load_average()  # after every timing, before the memory probes' own processes
    ep["peak_memory_mb"] = ep["peak_rss_mb"] = None
    if measure_memory:  # after every timing: the probes run side by side, each in its own fresh process
        mem_spec = {
            "arch": arch, "batch_size": batch_size, "dtype": dtype, "device": str(dev), "blocks": blocks,
            "estimator": spec_est, **shape,
        }  # fmt: skip
        kinds = ["ep", "bp"] if bp is not None else ["ep"]
        for kind, probe in zip(kinds, peak_memory(kinds, mem_spec), strict=True):
            target = ep if kind == "ep" else bp
            if probe is not None:
                target["peak_memory_mb"], target["peak_rss_mb"] = probe["peak_mb"], probe.get("peak_rss_mb")
    sched = schedules(setup, schedule_tol, schedule_max_iterations) if schedule_tol else None
    return {
        "arch": arch,
        "width": width,
        "blocks": blocks,
        "batch_size": batch_size,
        "device": str(dev) if dev.type == "cpu" else f"cuda:{dev.index or 0}",
        "device_name": device_name(dev),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "free_iterations": free_iterations,
        "nudge_iterations": nudge_iterations,
        "repeats": repeats,
        "load_average": {"before": load_before, "after": load_after},
        "settings": {k: spec_est[k] for k in (*ESTIMATOR_KEYS, "tol")},
        "ep": ep,
        "bp": bp,
        "ep_bp_ratio": ep["step_ms"] / bp["step_ms"] if bp else None,
        "flop_bound_ratio": flop_bound,
        "overhead_ratio": ratio,
        "memory_method": (
            "cuda: peak allocated during the step minus allocated before it"
            if dev.type == "cuda"
            else "cpu: peak resident set during the step minus the resident set before it, fresh process, "
            "MALLOC_MMAP_THRESHOLD_=131072"
        ),
        "schedules": sched,
        # the same free-phase iteration and kernel set in other dtypes, timed interleaved in this run
        "dtype_comparison": dtype_comparison or None,
    }


def memory_benchmark(arch, batch_size, dtype, dev, blocks, spec_est, shape) -> dict:
    """`run_benchmark(memory_only=True)`: the peak memory of an EP step and of its backprop twin's."""
    mem_spec = {
        "arch": arch, "batch_size": batch_size, "dtype": dtype, "device": str(dev), "blocks": blocks,
        "estimator": spec_est, **shape,
    }  # fmt: skip
    kinds = ["ep", "bp"] if arch in BP_TWIN else ["ep"]
    probes = dict(zip(kinds, peak_memory(kinds, mem_spec), strict=True))
    mb = {k: (p or {}).get("peak_mb") for k, p in probes.items()}
    return {
        "arch": arch, "width": shape["width"], "blocks": blocks, "batch_size": batch_size, "dtype": dtype,
        "device": str(dev), "device_name": device_name(dev), "threads": torch.get_num_threads(),
        "free_iterations": spec_est["free_iterations"], "nudge_iterations": spec_est["nudge_iterations"],
        "settings": {k: spec_est[k] for k in (*ESTIMATOR_KEYS, "tol")}, "memory_only": True,
        "ep": {"peak_memory_mb": mb["ep"]},
        "bp": {"arch": BP_TWIN[arch], "peak_memory_mb": mb["bp"]} if "bp" in mb else None,
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
