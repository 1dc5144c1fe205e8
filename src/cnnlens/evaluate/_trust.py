"""A trust table: every faithfulness and sanity metric for several explanations of the
same inputs, per item (what the report's per-image table and ``cnnlens evaluate`` show)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._guard import unwrap
from .._progress import progress as progress_bar
from ..attribution.api import Explanation
from ..errors import InputError
from ..targets import TargetSpec
from ._deletion import CURVE_STEPS, DeletionInsertion, deletion_insertion
from ._perturbation import infidelity, max_sensitivity
from ._randomization import randomization_test
from ._road import FRACTIONS, road

__all__ = ["BETTER", "LABELS", "METRICS", "TrustRow", "TrustTable", "trust_table"]

# Every metric, and which way is better.
BETTER = {
    "deletion": "lower",
    "insertion": "higher",
    "road": "higher",
    "infidelity": "lower",
    "max_sensitivity": "lower",
    "randomization": "lower",
}
METRICS = tuple(BETTER)
# Column headings for tables (the arrow says which way is better).
LABELS = {
    "deletion": "deletion AUC ↓",
    "insertion": "insertion AUC ↑",
    "road": "ROAD ↑",
    "infidelity": "infidelity ↓",
    "max_sensitivity": "max-sensitivity ↓",
    "randomization": "top-layer rand. Spearman ↓",
}
DEFAULT_METRICS = ("deletion", "insertion", "road", "infidelity")


@dataclass(frozen=True)
class TrustRow:
    """One method: ``values[metric]`` (B,) per item; ``curves`` the deletion/insertion
    curves behind the AUCs (``None`` when neither was asked for); ``ranking`` how pixels
    were ordered for deletion, insertion and ROAD."""

    method: str
    ranking: str
    values: dict[str, Tensor]
    curves: DeletionInsertion | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TrustTable:
    """Rows in the order the explanations were given. ``metrics`` lists the columns,
    ``better`` says for each whether lower or higher is better, ``settings`` what was
    used (steps, samples, seeds, fractions)."""

    rows: tuple[TrustRow, ...]
    metrics: tuple[str, ...]
    settings: dict[str, Any]

    @property
    def better(self) -> dict[str, str]:
        return {m: BETTER[m] for m in self.metrics}

    def row(self, method: str) -> TrustRow:
        for r in self.rows:
            if r.method == method:
                return r
        raise InputError(f"no row for {method!r}; rows: {', '.join(r.method for r in self.rows)}")

    def records(self, item: int | None = None) -> list[dict[str, Any]]:
        """Plain rows ``{"item", "method", "ranking", metric: float, ...}``: for one item,
        or for every item (item-major)."""
        batch = next(iter(self.rows[0].values.values())).shape[0] if self.rows else 0
        items = range(batch) if item is None else [item]
        return [
            {
                "item": i,
                "method": r.method,
                "ranking": r.ranking,
                **{m: float(r.values[m][i]) for m in self.metrics},
            }
            for i in items
            for r in self.rows
        ]


def _as_list(explanations: Mapping[str, Explanation] | Sequence[Explanation]) -> list[Explanation]:
    items = list(explanations.values()) if isinstance(explanations, Mapping) else list(explanations)
    if not items or not all(isinstance(e, Explanation) for e in items):
        raise InputError("trust_table needs one or more Explanation objects")
    return items


def trust_table(
    model: Any,
    inputs: Tensor,
    explanations: Mapping[str, Explanation] | Sequence[Explanation],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    steps: int = CURVE_STEPS,
    samples: int = 10,
    fractions: Sequence[float] = FRACTIONS,
    seed: int = 0,
    target: TargetSpec = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
) -> TrustTable:
    """Evaluate each explanation of ``inputs`` with ``metrics`` (any of :data:`METRICS`):

    - ``deletion`` / ``insertion``: AUCs of :func:`deletion_insertion` with ``steps``;
    - ``road``: :func:`road` over ``fractions`` (mean of (LeRF − MoRF) / 2);
    - ``infidelity``: :func:`infidelity` with ``samples`` Gaussian perturbations, normalized;
    - ``max_sensitivity``: :func:`max_sensitivity` with ``samples`` perturbations (runs the
      method again, with ``options[method]``);
    - ``randomization``: Spearman rank correlation of the absolute maps before and after
      randomizing the model's top layer (cascading randomization's first step, Adebayo et
      al. 2018); runs the method again.

    Each explanation is evaluated for its own targets (pass ``target`` for a callable
    target, which an explanation does not keep); ``seed`` seeds every random draw.
    """
    module = unwrap(model)
    chosen = tuple(metrics)
    unknown = [m for m in chosen if m not in BETTER]
    if unknown or not chosen:
        raise InputError(
            f"unknown metrics {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}"
        )
    listed = _as_list(explanations)
    settings: dict[str, Any] = {"steps": steps, "samples": samples, "seed": seed}
    if "road" in chosen:
        settings["fractions"] = [float(f) for f in fractions]
    rows = []
    with progress_bar(len(listed), "trust table", enabled=progress, unit="method") as bar:
        for e in listed:
            bar.describe(e.method)
            method_options = dict((options or {}).get(e.method, {}))
            rows.append(_row(module, inputs, e, target, chosen, settings, method_options))
            bar.advance()
    return TrustTable(rows=tuple(rows), metrics=chosen, settings=settings)


def _row(
    module: torch.nn.Module,
    inputs: Tensor,
    e: Explanation,
    target: TargetSpec,
    metrics: tuple[str, ...],
    settings: dict[str, Any],
    method_options: dict[str, Any],
) -> TrustRow:
    values: dict[str, Tensor] = {}
    if target is None:
        target = e.targets
    curves = None
    ranking = ""
    if "deletion" in metrics or "insertion" in metrics:
        curves = deletion_insertion(
            module, inputs, e, target=target, steps=settings["steps"], progress=False
        )
        ranking = curves.ranking
        values["deletion"], values["insertion"] = curves.deletion_auc, curves.insertion_auc
    if "road" in metrics:
        result = road(
            module, inputs, e, target=target, fractions=settings["fractions"], seed=settings["seed"]
        )
        ranking = result.ranking
        values["road"] = result.values
    if "infidelity" in metrics:
        values["infidelity"] = infidelity(
            module, inputs, e, target=target, samples=settings["samples"], seed=settings["seed"]
        ).values
    if e.layer is not None:
        method_options.setdefault("layer", e.layer)
    # The re-runs inside a metric show no bar of their own (the table's bar counts methods).
    method_options.pop("progress", None)
    if "max_sensitivity" in metrics:
        values["max_sensitivity"] = max_sensitivity(
            module,
            inputs,
            e.method,
            target=target,
            samples=settings["samples"],
            seed=settings["seed"],
            options=method_options,
        ).values
    if "randomization" in metrics:
        values["randomization"] = randomization_test(
            module,
            inputs,
            e.method,
            target=target,
            stages=1,
            randomization_seed=settings["seed"],
            progress=False,
            **method_options,
        ).spearman[0]
    return TrustRow(
        method=e.method,
        ranking=ranking,
        values={m: values[m].detach().float().cpu() for m in metrics},
        curves=curves,
    )
