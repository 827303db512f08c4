"""The peak memory of one training step, EP or its backprop twin's, each in a fresh interpreter.

`peak_memory` runs `python -m ep_core.bench.memory SPEC_JSON` once per kind, side by side; that process
builds the bench's workload (ep_core.bench.workload), steps once to reach the steady state (the warm
state, the optimizer's buffers) and prints, as one JSON line, what `probe_memory` measures of the second
step: on CUDA the peak allocated memory during it, on a CPU its peak resident set minus the resident set
just before it, with glibc told to return freed blocks at once (MALLOC_MMAP_THRESHOLD_).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import ep_core

from .workload import BenchSettings, bp_training_step, build_batch, ep_training_step


def _status() -> dict[str, float]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values


def probe_memory(s: BenchSettings, kind: str) -> dict:
    """In this (fresh) process: the memory the second training step of `kind` ("ep" or "bp") adds, in MiB,
    and how it was measured."""
    dev = torch.device(s.device)
    step = ep_training_step(s, dev) if kind == "ep" else bp_training_step(s, dev, *build_batch(s, dev))
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
        return {"peak_mb": peak / 2**20, "method": "cuda_allocated"}
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


def peak_memory(s: BenchSettings, kinds: list[str]) -> list[dict | None]:
    """`probe_memory` for each kind in its own fresh interpreter, run side by side; None for a probe that
    failed or where /proc is missing (not Linux). `s.device` must be a resolved device."""
    if s.device == "cpu" and not os.path.exists("/proc/self/status"):
        return [None] * len(kinds)
    # `-m` puts the working directory first on sys.path: the checkout holding this very ep_core.
    root = Path(ep_core.__file__).resolve().parent.parent
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    procs = []
    for kind in kinds:
        spec = json.dumps({"kind": kind, "settings": dataclasses.asdict(s)})
        command = [sys.executable, "-m", __name__, spec]
        procs.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root
            )
        )
    results: list[dict | None] = []
    for proc in procs:
        out, _ = proc.communicate()
        ok = proc.returncode == 0 and out.strip()
        results.append(json.loads(out.strip().splitlines()[-1]) if ok else None)
    return results


def main(argv: list[str]) -> int:
    """`python -m ep_core.bench.memory SPEC_JSON`: SPEC_JSON is {"kind": ..., "settings": BenchSettings}."""
    spec = json.loads(argv[0])
    print(json.dumps(probe_memory(BenchSettings.from_dict(spec["settings"]), spec["kind"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
