"""How fast the relaxation converges: the relative residual ‖s_t − s_{t−1}‖ / ‖s_t‖ per iteration, for each
update order, at initialisation or for a trained run's network.

`relax` is a pure function of (network, input, states), so running it one iteration at a time from the
previous states is exactly the same computation as one long relaxation; its `RelaxStats.residual` after
each single iteration is the trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
import torch
import yaml
from torch import nn

from ..numerics.networks import HopfieldNetwork
from ..numerics.orders import ORDERS, update_groups
from ..numerics.relaxation import Nudge, input_drive, relax
from ..training.config import build_config, resolve
from ..training.datasets import dataset_info, load_data
from ..training.run import build_model
from ._figures import PALETTE, PathLike, figure, no_data

ORDER_LABELS = {
    "even_odd": "even/odd (authors')",
    "coloring": "graph colouring (exact block minimisation)",
    "synchronous": "synchronous (Jacobi)",
}


def residual_trace(
    net: HopfieldNetwork,
    x: torch.Tensor,
    iterations: int,
    order: str = "even_odd",
    *,
    states: Sequence[torch.Tensor] | None = None,
    nudge: Nudge | None = None,
) -> list[float]:
    """The relative residual after each of `iterations` sweeps from `states` (zeros if None): entry t−1 is
    ‖s_t − s_{t−1}‖ / ‖s_t‖ over all free layers and the whole batch, as `relax` reports it."""
    groups = update_groups(net, order)
    drive = input_drive(net, x)  # constant over the sweeps: computed once, as relax does
    trace = []
    for _ in range(iterations):
        states, stats = relax(net, x, states, iterations=1, order=groups, nudge=nudge, drive=drive)
        trace.append(stats.residual)
    return trace


def _run_config(run_dir: PathLike):
    saved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    return resolve(build_config(saved))


def load_network(
    run_dir: PathLike, *, trained: bool = True, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """The run's network rebuilt from its config.yaml, EP or BP, in eval mode: with its trained weights
    (model.pt, loaded with weights_only=True; the clipped-ReLU caps α are part of the state dict), or with
    `trained=False` as the run initialised it (same seed, so the same weights and α as its epoch 0)."""
    config = _run_config(run_dir)
    if not trained:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random stream alone
            torch.manual_seed(config.train.seed)  # as training.prepare seeds the initialisation
            return build_model(config, dataset_info(config.data.name)).eval()
    model = build_model(config, dataset_info(config.data.name))
    state = torch.load(Path(run_dir) / "model.pt", map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def evaluation_batch(run_dir: PathLike, size: int = 64, *, data_dir: PathLike | None = None) -> torch.Tensor:
    """The first `size` test images of the run's dataset, normalised as the run saw them at evaluation.
    Needs the dataset files (`data_dir`, default the run's data.data_dir) except for digits / synthetic."""
    config = _run_config(run_dir)
    d = config.data
    synthetic = {"n_train": d.synthetic_train, "n_test": d.synthetic_test} if d.name == "synthetic" else None
    data = load_data(
        d.name, data_dir=data_dir or d.data_dir, preset=d.preset, augment=False, val_size=d.val_size,
        split_seed=d.split_seed, synthetic=synthetic,
    )  # fmt: skip
    x, _ = next(iter(data.eval_batches("test", size)))
    return x


def convergence_traces(
    networks: Mapping[str, HopfieldNetwork],
    x: torch.Tensor | Mapping[str, torch.Tensor],
    iterations: int,
    orders: Sequence[str] = ORDERS,
) -> pd.DataFrame:
    """Long table (network, order, iteration, residual) of `residual_trace` for every network × order.
    `x` is one input batch for all, or one per network label (networks of different datasets)."""
    rows = []
    for name, net in networks.items():
        inputs = x[name] if isinstance(x, Mapping) else x
        for order in orders:
            p = next(net.parameters())
            trace = residual_trace(net, inputs.to(p.device, p.dtype), iterations, order)
            rows += [
                {"network": name, "order": order, "iteration": t, "residual": r}
                for t, r in enumerate(trace, 1)
            ]
    return pd.DataFrame(rows, columns=["network", "order", "iteration", "residual"])


def plot_convergence(
    traces: pd.DataFrame, png: PathLike, pdf: PathLike | None = None, *, note: str | None = None
) -> None:
    """Relative residual vs iteration (log scale), one panel per network, one line per update order.
    `traces` is `convergence_traces(...)`; `note` (e.g. batch, dtype, what the networks are) is added to
    the caption."""
    networks = list(dict.fromkeys(traces["network"])) or [None]
    caption = (
        "Relative residual ‖s_t − s_{t−1}‖ / ‖s_t‖ over all free layers and the batch, free phase from zero "
        "states. The authors run 120 free iterations."
    )
    if note:
        caption += " " + note
    labels = [ORDER_LABELS.get(o, o) for o in dict.fromkeys([*ORDERS, *traces["order"]])]
    hue_order = [o for o in labels if o in set(traces["order"].map(lambda o: ORDER_LABELS.get(o, o)))]
    palette = dict(zip(hue_order, sns.color_palette(PALETTE, max(len(hue_order), 1)), strict=False))
    title = "Convergence of the free relaxation"
    with figure(png, pdf, ncols=len(networks), title=title, caption=caption) as (_, axes):
        for ax, name in zip(axes.flat, networks, strict=True):
            frame = traces[traces["network"] == name].assign(
                order=lambda f: f["order"].map(lambda o: ORDER_LABELS.get(o, o))
            )
            if name is None or frame.empty:
                no_data(ax, "no traces")
                continue
            positive = frame[frame["residual"] > 0]  # an exact fixed point (residual 0) has no logarithm
            last = ax is axes.flat[len(networks) - 1]
            sns.lineplot(positive, x="iteration", y="residual", hue="order", hue_order=hue_order,
                         palette=palette, ax=ax, legend=last)  # fmt: skip
            ax.set_yscale("log")
            ax.set(
                title=str(name), xlabel="iteration (one sweep over all layers)", ylabel="relative residual"
            )
            if last:  # one legend for all panels (the colours agree), outside the curves
                ax.legend(title="update order", fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
