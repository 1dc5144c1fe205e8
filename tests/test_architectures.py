"""The architecture matrix (issue 13's acceptance): classification CNNs × every method.

The default run checks one torchvision architecture of each family (``FAMILIES``) on a
16-px-floor input; the whole matrix — every classification CNN builder of
``torchvision.models`` and a few timm CNNs — is marked ``slow`` and its outcome is written to
``docs/architectures.md`` by ``scripts/architecture_matrix.py``. What each cell checks is in
:mod:`tests._matrix`.
"""

from __future__ import annotations

import pytest
import torch

from . import _matrix
from ._matrix import (
    FAMILIES,
    TIMM_ARCHITECTURES,
    Subject,
    check,
    family,
    methods,
    subject,
    torchvision_architectures,
)
from .test_integrated_gradients import Ramp

FAST_FLOOR = 16
"""Input side floor (each architecture gets its smallest input at or above it)."""

SLOW_ONLY = {"scorecam", "integrated_gradients"}
"""Methods whose cells run only in the slow matrix, except on ``SLOW_ONLY_EXCEPT``:
Score-CAM costs one forward pass per channel of the layer (1000+ on most families) and
integrated gradients 64 to 1024 gradient evaluations per item."""
SLOW_ONLY_EXCEPT = {("squeezenet1_0", "integrated_gradients")}

SLOW_FAMILIES = {"inception_v3"}
"""Representatives whose cells run only in the slow matrix (Inception-v3 needs 75 px)."""

EXPECTED_FAILURES: dict[tuple[str, str], str] = {}
"""Cells known to fail, with the reason (marked ``xfail(strict=True)``: a cell that starts
passing must be taken off this list). Measured by ``scripts/architecture_matrix.py``
(``docs/architectures.md``); cells of the slow matrix not measured yet carry no entry."""


def _cells(names: list[str], prefix: str = "", fast: bool = False) -> list[object]:
    params: list[object] = []
    for name in names:
        for method in methods():
            if fast and (
                name in SLOW_FAMILIES
                or (method in SLOW_ONLY and (name, method) not in SLOW_ONLY_EXCEPT)
            ):
                continue
            reason = EXPECTED_FAILURES.get((prefix + name, method))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(name, method, marks=marks, id=f"{prefix}{name}-{method}"))
    return params


def _assert_cell(name: str, method: str, source: str, floor: int) -> None:
    cell = check(subject(name, source, floor=floor), method)
    assert cell.ok, f"{name} × {method}: {cell.status}: {cell.note}"


@pytest.mark.parametrize(("name", "method"), _cells(list(FAMILIES), fast=True))
def test_one_architecture_per_family(name: str, method: str) -> None:
    _assert_cell(name, method, "torchvision", FAST_FLOOR)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method"), _cells(torchvision_architectures()))
def test_every_torchvision_architecture(name: str, method: str) -> None:
    _assert_cell(name, method, "torchvision", FAST_FLOOR)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method"), _cells(list(TIMM_ARCHITECTURES), "timm/"))
def test_timm_architectures(name: str, method: str) -> None:
    pytest.importorskip("timm")
    _assert_cell(name, method, "timm", FAST_FLOOR)


def test_families_cover_the_torchvision_cnns() -> None:
    # Every classification CNN builder belongs to a family whose representative runs by
    # default, and every representative is such a builder of its own family.
    names = torchvision_architectures()
    assert len(names) >= 60
    assert {family(n) for n in names} == set(FAMILIES.values())
    assert all(family(n) == label for n, label in FAMILIES.items())


def test_integrated_gradients_cell_accepts_only_a_warned_gap() -> None:
    # A kink past the last of 1024 points: incomplete, and said so (the cell passes as
    # "incomplete"); a kink 128 points resolve: complete.
    x = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    far = check(Subject("ramp", Ramp(10 * (1 - 1e-8)), x), "integrated_gradients")
    assert far.status == "incomplete" and far.ok and far.error is not None and far.error > 0.9
    near = check(Subject("ramp", Ramp(3.0), x), "integrated_gradients")
    assert near.status == "complete" and near.error is not None and near.error < 0.01


def test_a_cell_runs_with_its_documented_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # The near ramp is complete at the default steps; documented to run at 8 points, its
    # cell must use them (and then be incomplete, warned).
    x = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    own = {("ramp", "integrated_gradients"): ({"steps": 8}, "a test")}
    monkeypatch.setattr(_matrix, "ARCHITECTURE_OPTIONS", own)
    cell = check(Subject("ramp", Ramp(3.0), x), "integrated_gradients")
    assert cell.ok and cell.status == "incomplete" and cell.detail == "8 steps"
