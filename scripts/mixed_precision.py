"""What a bf16 bulk of the free phase (`ep.bf16_sweeps`) saves per step, by width, and what it changes.

    .venv/bin/python scripts/mixed_precision.py [--widths 0.0625,0.125,0.25,1] [--bulks 100,200]

Hopfield-ResNet13 at its initialisation, CIFAR-shaped random input (3×32×32), float32, plain sweeps in
the authors' even/odd order from zero states, every phase stopped at `--tol` (the nudged ones on their
displacement; caps 3000 free, 50 nudged: an initialised network relaxes slowly). Per width, interleaved,
min of `--repeats`: one sweep in float32 and in bf16; then one CEP estimate without and with a bf16 bulk
of each `--bulks` sweeps —
its free phase (bulk + polished sweeps, seconds), the estimate's seconds and speed-up, and the smallest
per-tensor cosine between the two gradients with the distance between their free states (both are only
`--tol`-converged, so these measure that tolerance as much as bf16). docs/benchmarks.md "Mixed precision"
holds its output.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from ep_core.numerics.estimators import EquilibriumProp
from ep_core.numerics.networks import build_network
from ep_core.numerics.orders import update_groups
from ep_core.numerics.relaxation import relative_change, relax


def sweep_ms(net, x, groups, repeats: int) -> float:
    relax(net, x, iterations=3, order=groups)  # warm-up: allocator and kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        relax(net, x, iterations=10, order=groups)
        best = min(best, (time.perf_counter() - t0) / 10)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="0.0625,0.125,0.25,1")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--bulks", default="100,200")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    header = (
        "width | sweep f32 / bf16 (ms) | free: sweeps, s (f32) | free: bulk + polish, s (bf16 bulk) "
        "| estimate s f32 / mixed | speed-up | min cosine | free-state distance"
    )
    print(header)
    for width in (float(w) for w in args.widths.split(",")):
        torch.manual_seed(0)
        net = build_network("hopfield_resnet13", width=width, input_size=32, in_channels=3)
        x = torch.rand(args.batch_size, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch_size,))
        groups = update_groups(net, "even_odd")
        low = copy.deepcopy(net).to(torch.bfloat16)
        f32_ms = min(sweep_ms(net, x, groups, args.repeats) for _ in range(2))
        bf16_ms = min(sweep_ms(low, x.bfloat16(), groups, args.repeats) for _ in range(2))
        plain = dict(tol=args.tol, free_iterations=3000, beta=0.1, clip_norm=None)
        modes = {0: EquilibriumProp(**plain)}
        modes |= {int(n): EquilibriumProp(**plain, bf16_sweeps=int(n)) for n in args.bulks.split(",")}
        best: dict[int, tuple[float, object]] = {}
        for _ in range(args.repeats):
            for n, est in modes.items():  # interleaved
                t0 = time.perf_counter()
                e = est.estimate(net, x, y, None)
                seconds = time.perf_counter() - t0
                if n not in best or seconds < best[n][0]:
                    best[n] = (seconds, e)
        t_f, e_f = best.pop(0)
        for t_m, e_m in best.values():
            cosine = min(
                torch.nn.functional.cosine_similarity(e_m.grads[k].flatten(), g.flatten(), dim=0).item()
                for k, g in e_f.grads.items()
            )
            distance = relative_change(e_f.free_states, e_m.free_states).item()
            bulk = e_m.stats["bulk"].iterations
            polish = e_m.stats["free"].iterations - bulk
            print(
                f"{width:g} | {f32_ms:.2f} / {bf16_ms:.2f} | {e_f.stats['free'].iterations}, "
                f"{e_f.seconds['free']:.2f} | {bulk} + {polish}, {e_m.seconds['free']:.2f} | "
                f"{t_f:.2f} / {t_m:.2f} | {t_f / t_m:.2f} | {cosine:.6f} | {distance:.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
