"""Named settings of the relaxation: `ep.recipe: authors` (the default), `fast` or `adaptive`.

A recipe is a set of `ep.*` values applied under the run's own: a key the configuration sets explicitly
wins, so `ep.recipe: fast` with `ep.nudge_iterations: 20` is the fast recipe with longer nudged phases. The
saved config.yaml of a run states every resolved value beside the recipe's name. `authors` is the authors'
code: fixed-length phases of 120 free and 50 + 50 nudged plain sweeps, even/odd order, evaluation at 120.
`fast` is the same plain sweeps in truncated phases — 40 free, 15 + 15 nudged, evaluation at 40 — about
a third of the authors' training time (2.90–3.27× on digits, 2.88–3.06× on mnist5k in `make bench-tta`'s
documented runs, none of whose intervals resolved its accuracy difference to ±1 point, and the one on
mnist5k with no network dead, at lr 0.025, showed a loss: −3.66 points [−5.77, −1.55]; a dead hidden layer
lost 1 of its 50 networks there, and 7 of the 50 `authors` networks: docs/benchmarks.md); the states
are not converged, so its gradient is not the converged-state CEP gradient `ep-core gradcheck` checks (the
run's fidelity monitor says how far), but the centered difference still cancels the ±β phases' common
error. `adaptive` spends sweeps where the state still moves: every phase stops at a
relative tolerance (the nudged ones on their displacement from the free state) with the authors' counts as
caps, and Anderson mixing accelerates the sweeps of every phase — the free phase per example, the nudged
phases with each example's −β and +β copies sharing one set of mixing coefficients, so the truncation error
still cancels in the centered difference. A run that sets `ep.batch_phases: false` (the ±β phases one after
the other, for memory) keeps plain nudged sweeps: the shared coefficients need both copies in one batch.
`auto` sets nothing up front: the run's gradient-fidelity monitor chooses its free and nudged counts while
it trains — the fewest that keep the cosine with the converged CEP gradient at `ep.auto_target` — between
`ep.auto_floor` free sweeps and the configured counts as the cap (ep_core/training/fidelity.py).
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "authors": {},
    "fast": {"free_iterations": 40, "nudge_iterations": 15, "eval_iterations": 40},
    "adaptive": {"tol": 1e-3, "solver": "anderson", "nudge_solver": "anderson"},
    # its counts change while training (ep_core/training/fidelity.py); ep.free_iterations and
    # ep.nudge_iterations are their cap
    "auto": {},
}


def apply_recipe(values: dict, error: type[Exception] = ValueError) -> dict:
    """`values` (nested config sections) with the `ep.recipe`'s keys filled in where `ep` leaves them
    unset; an unknown recipe raises `error` with the valid names."""
    ep = values.get("ep") or {}
    if not isinstance(ep, dict):
        return values  # the section check reports it
    name = ep.get("recipe", "authors")
    if name not in RECIPES:
        raise error(f"ep.recipe: {name!r} is not allowed; valid choices: {', '.join(RECIPES)}")
    preset = dict(RECIPES[name])
    if ep.get("batch_phases") is False and "nudge_solver" not in ep:
        preset.pop("nudge_solver", None)  # paired mixing needs the stacked phases (see the docstring)
    return {**values, "ep": {**preset, **ep}}
