"""Sweeps and error of over-relaxed relaxations (`ep.omega`) on a trained network, per ω and tolerance.

    .venv/bin/python scripts/overrelaxation.py RUN_DIR [--omegas 1,1.2,1.4,1.6] [--order coloring]

RUN_DIR is a finished `ep-core train` run on digits (its config.yaml and model.pt). On one test batch of
32 it relaxes, in float64: the free phase from zero states to each tolerance, and the stacked ±β nudged
phases from the converged free state F to each tolerance (stopped on their displacement, as in training).
The error is against the same relaxation run to 1e-12 (free: ‖s − F‖/‖F‖; nudged: of s₊ − s₋, the CEP
signal). docs/benchmarks.md "Over-relaxed sweeps" holds its output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from ep_core.numerics.orders import update_groups
from ep_core.numerics.relaxation import Nudge, input_drive, relax, relax_list
from ep_core.training.config import build_config, resolve
from ep_core.training.datasets import load_data
from ep_core.training.run import build_model

TOLS = (1e-2, 1e-3, 1e-4)


def _norm(states) -> float:
    return sum(t.square().sum() for t in states).sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--omegas", default="1,1.2,1.4,1.6")
    parser.add_argument("--order", default="coloring")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    config = resolve(build_config(yaml.safe_load((args.run / "config.yaml").read_text())))
    data = load_data(config.data.name, augment=False)
    net = build_model(config, data.info)
    net.load_state_dict(torch.load(args.run / "model.pt", weights_only=True))
    net = net.double()
    x, y = next(iter(data.eval_batches("test", args.batch_size)))
    x = x.double()
    B = x.shape[0]
    groups = update_groups(net, args.order)
    drive = input_drive(net, x)
    free, _ = relax(net, x, iterations=20_000, order="coloring", tol=1e-12)
    target = torch.nn.functional.one_hot(y, net.num_classes).double()
    beta = config.ep.beta
    betas = torch.cat([x.new_full((B, 1), -beta), x.new_full((B, 1), beta)])
    nudge = Nudge(torch.cat([target, target]), betas)

    def nudged(tol: float, omega: float) -> tuple[list[torch.Tensor], int]:
        s = [torch.cat([x, x]), *(torch.cat([t, t]) for t in free)]
        s, stats = relax_list(
            net, s, iterations=20_000, groups=groups, nudge=nudge, tol=tol, drive=drive, reference=free,
            omega=omega,
        )  # fmt: skip
        return [t[B:] - t[:B] for t in s[1:]], stats.iterations

    exact, _ = nudged(1e-12, 1.0)
    print(f"{args.run}: order {args.order}, batch {B}, beta {beta}; sweeps (relative error) to tol {TOLS}")
    for omega in (float(w) for w in args.omegas.split(",")):
        row = []
        for tol in TOLS:
            s, stats = relax(net, x, iterations=20_000, order=groups, tol=tol, omega=omega)
            err = _norm([a - b for a, b in zip(s, free, strict=True)]) / _norm(free)
            row.append(f"{stats.iterations} ({err:.2g})")
        row.append("|")
        for tol in TOLS:
            diff, sweeps = nudged(tol, omega)
            err = _norm([a - b for a, b in zip(diff, exact, strict=True)]) / _norm(exact)
            row.append(f"{sweeps} ({err:.2g})")
        print(f"omega {omega}: free " + " ".join(row[:3]) + " | nudged " + " ".join(row[4:]), flush=True)


if __name__ == "__main__":
    main()
