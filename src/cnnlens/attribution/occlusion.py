"""Occlusion (Zeiler & Fergus 2014): cover part of the image, predict again; where the score
drops most is what mattered.

A window of ``window`` pixels (all channels at once) slides over the image with ``stride``;
each position gives one occluded copy of each item, the window's pixels set to
``baseline``. The result, (B, 1, H, W), is per pixel the mean drop in score,
score(input) − score(occluded), over the windows that cover the pixel.

Window positions along each axis start at 0 and advance by ``stride``; when the stride
does not land on the border, one more window flush with the bottom/right edge is added, so
every pixel is covered by at least one window (a pixel covered by none would get 0).

All copies are evaluated under ``torch.inference_mode`` in batches of ``batch_size`` rows,
built lazily batch by batch, so memory stays bounded by ``batch_size`` whatever the number
of windows. A batch may mix copies of several items.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._progress import progress as progress_bar
from ..errors import InputError
from ..targets import Target
from ._incremental import Engine, IncrementalPlan, Occluder, plan, trace
from .api import MethodFn, MethodResult, MethodSpec

__all__ = ["METHODS", "incremental_note", "occlusion", "occlusion_result", "window_starts"]

_DEFAULT_BATCH = 32
_SCORES = ("logit", "probability")


def _pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise InputError(f"{name} must be a positive int or a pair (h, w), got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InputError(f"{name} must be a positive int or a pair (h, w), got {value!r}")
        pair = (int(value[0]), int(value[1]))
    else:
        raise InputError(f"{name} must be a positive int or a pair (h, w), got {value!r}")
    if min(pair) < 1:
        raise InputError(f"{name} must be positive, got {value!r}")
    return pair


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis: 0, stride, 2·stride, ... and a last
    window flush with the edge when the stride does not land there."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def _cover(size: int, window: int, stride: int, device: torch.device) -> Tensor:
    """(positions, size) bool: which pixels each window position covers."""
    starts = torch.tensor(window_starts(size, window, stride), device=device)
    pixels = torch.arange(size, device=device)
    return (pixels >= starts[:, None]) & (pixels < starts[:, None] + window)


def _baseline_fill(baseline: object, inputs: Tensor) -> float | Tensor:
    if isinstance(baseline, bool):
        raise InputError("baseline must be a number or a tensor")
    if isinstance(baseline, (int, float)):
        return float(baseline)
    if isinstance(baseline, Tensor):
        b, c, h, w = inputs.shape
        t = baseline.detach().to(device=inputs.device, dtype=inputs.dtype)
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4 or t.shape[0] not in (1, b):
            raise InputError(
                f"baseline tensor must be (C, H, W), (1, C, H, W) or (B, C, H, W); got "
                f"{tuple(baseline.shape)} for inputs {tuple(inputs.shape)}"
            )
        try:
            return t.expand(t.shape[0], c, h, w)
        except RuntimeError:
            raise InputError(
                f"baseline of shape {tuple(baseline.shape)} does not fit inputs "
                f"{tuple(inputs.shape)}"
            ) from None
    raise InputError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")


def _scorer(target: Target, score: str) -> Any:
    if score not in _SCORES:
        raise InputError(f"score must be one of {', '.join(_SCORES)}, got {score!r}")

    def scores(output: Any, items: Tensor | None) -> Tensor:
        if score == "probability":
            if not isinstance(output, Tensor) or output.dim() != 2:
                raise InputError(
                    "score='probability' needs a (batch, classes) output; use score='logit'"
                )
            output = output.softmax(dim=1)
        return target.score(output, items)

    return scores


def occlusion(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None = None,
    **options: Any,
) -> Tensor:
    """Mean score drop per pixel over the occluding windows that cover it, (B, 1, H, W);
    the options are :func:`occlusion_result`'s."""
    return occlusion_result(module, inputs, target, layer, **options).attribution


def occlusion_result(
    module: nn.Module,
    inputs: Tensor,
    target: Target,
    layer: nn.Module | None = None,
    *,
    window: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    baseline: float | Tensor = 0.0,
    batch_size: int = _DEFAULT_BATCH,
    score: str = "logit",
    progress: bool | None = None,
    incremental: bool | None = None,
    approximate: float | None = None,
    drill_down: float | None = None,
    coarse_stride: int | tuple[int, int] | None = None,
) -> MethodResult:
    """Mean score drop per pixel over the occluding windows that cover it, (B, 1, H, W).

    ``window`` (int or (h, w); default a seventh of the shorter side, 32 at 224 pixels),
    ``stride`` (default half the window), ``baseline`` (fill value, or a tensor broadcast to
    the items: (C, H, W), (1, C, H, W) or (B, C, H, W)), ``batch_size`` (occluded copies per
    forward pass), ``score`` (``"logit"``: the raw target score, ``"probability"``: the
    softmax of the output, then the target), ``progress`` (None: a bar on terminals only),
    ``incremental`` (None: recompute only the changed cone of each layer when the model can
    be traced, else the plain batched forwards; True: require the incremental engine; False:
    plain forwards; both give the same result up to float rounding, see
    ``attribution/_incremental.py``), ``approximate`` (Krypton's projective-field threshold
    τ in (0, 1]: faster, not exact; needs the incremental engine).

    ``drill_down`` (a fraction in (0, 1]; default None: off) is Krypton's adaptive
    drill-down (Nakandala et al. 2019, §4.2): the windows are first slid with
    ``coarse_stride`` (int or (h, w), at least ``stride`` on each axis; default twice
    ``stride``); then, per item, the ``ceil(drill_down × coarse windows)`` coarse windows
    with the largest score drop are refined: every ``stride`` window whose nearest coarse
    window (per axis, by start offset) is one of them is evaluated by the same path as
    without drill-down, so its drop is exact. The other ``stride`` windows take the coarse
    window's drop where they start at the same offset, else the bilinear interpolation of
    the coarse drops at their start offset. ``drill_down=1`` evaluates every window.
    (With ``approximate`` too, both passes take the approximate path: nothing is exact.)
    The result then reports, per item, ``extras["interpolated"]`` (B, 1, H, W): per pixel,
    the share of the windows covering it whose drop is interpolated (0: the pixel's value
    is exact); ``extras["window_drops"]``
    (B, n_rows, n_cols): every ``stride`` window's drop; ``extras["window_interpolated"]``
    (B, n_rows, n_cols) bool: which of them are interpolated.
    """
    del layer
    b, _, h, w = inputs.shape
    if window is None:
        window = max(1, min(h, w) // 7)
    wh, ww = _pair(window, "window")
    if wh > h or ww > w:
        raise InputError(f"window {(wh, ww)} is larger than the input {(h, w)}")
    steps = _pair((max(1, wh // 2), max(1, ww // 2)) if stride is None else stride, "stride")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    coarse = _coarse_steps(drill_down, coarse_stride, steps)
    fill = _baseline_fill(baseline, inputs)
    scores = _scorer(target, score)
    grid = _Grid.make((h, w), (wh, ww), steps, inputs.device)
    occluders = _incremental_engine(
        module, inputs, (wh, ww), incremental, approximate, grid.windows
    )
    with torch.inference_mode():
        output = module(inputs) if occluders is None else occluders.clean(module)
    if occluders is not None and occluders.plain_reason is not None:
        occluders = None  # automatic mode chose the plain path; its clean pass is used
    target.resolve(output)  # outside inference mode: the chosen classes are plain tensors
    with torch.inference_mode():
        clean = scores(output, None)

    def drops(where: _Grid, items: Tensor, flat: Tensor, name: str) -> Tensor:
        return _window_drops(
            _Pass(module, inputs, fill, scores, clean, occluders, where, batch_size, progress),
            items,
            flat,
            name,
        )

    extras: dict[str, Tensor] = {}
    count = grid.count(inputs.dtype)  # (H, W): the windows covering each pixel
    if coarse is None or drill_down is None:
        rows = torch.arange(b * grid.windows, device=inputs.device)
        every = drops(grid, rows // grid.windows, rows % grid.windows, "occlusion")
        per_window = every.clone().view(b, grid.nh, grid.nw).to(inputs.dtype)
    else:
        per_window, interpolated = _drill_down(
            drops, grid, _Grid.make((h, w), (wh, ww), coarse, inputs.device), b, drill_down
        )
        per_window = per_window.to(inputs.dtype)
        extras = {
            "interpolated": (grid.spread(interpolated.to(inputs.dtype)) / count).unsqueeze(1),
            "window_drops": per_window,
            "window_interpolated": interpolated,
        }
    summed = grid.spread(per_window)
    mean = torch.where(count > 0, summed / count.clamp(min=1), torch.zeros_like(summed))
    return MethodResult(mean.unsqueeze(1), extras)


def _coarse_steps(
    drill_down: float | None,
    coarse_stride: int | tuple[int, int] | None,
    steps: tuple[int, int],
) -> tuple[int, int] | None:
    """The coarse stride of the drill-down (None when it is off), validated."""
    if drill_down is None:
        if coarse_stride is not None:
            raise InputError("coarse_stride is only used with drill_down (a fraction in (0, 1])")
        return None
    if (
        isinstance(drill_down, bool)
        or not isinstance(drill_down, (int, float))
        or not 0.0 < float(drill_down) <= 1.0
    ):
        raise InputError(f"drill_down must be a fraction in (0, 1], got {drill_down!r}")
    coarse = _pair(
        (2 * steps[0], 2 * steps[1]) if coarse_stride is None else coarse_stride,
        "coarse_stride",
    )
    if coarse[0] < steps[0] or coarse[1] < steps[1]:
        raise InputError(f"coarse_stride {coarse} must be at least the stride {steps} on each axis")
    return coarse


@dataclass(frozen=True)
class _Grid:
    """The window positions of one stride: start offsets per axis and the pixels each
    window covers."""

    row_starts: Tensor  # (nh,)
    col_starts: Tensor  # (nw,)
    rows_cover: Tensor  # (nh, H) bool
    cols_cover: Tensor  # (nw, W) bool
    window: tuple[int, int]

    @staticmethod
    def make(
        size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int], device: Any
    ) -> _Grid:
        (h, w), (wh, ww), (sh, sw) = size, window, stride
        return _Grid(
            torch.tensor(window_starts(h, wh, sh), device=device),
            torch.tensor(window_starts(w, ww, sw), device=device),
            _cover(h, wh, sh, device),
            _cover(w, ww, sw, device),
            window,
        )

    @property
    def nh(self) -> int:
        return int(self.row_starts.shape[0])

    @property
    def nw(self) -> int:
        return int(self.col_starts.shape[0])

    @property
    def windows(self) -> int:
        return self.nh * self.nw

    def spread(self, per_window: Tensor) -> Tensor:
        """(B, nh, nw) per-window values summed over the windows covering each pixel:
        (B, H, W)."""
        rows_f = self.rows_cover.to(per_window.dtype)
        cols_f = self.cols_cover.to(per_window.dtype)
        return torch.einsum("bij,ih,jw->bhw", per_window, rows_f, cols_f)

    def count(self, dtype: torch.dtype) -> Tensor:
        """(H, W): how many windows cover each pixel."""
        return torch.outer(self.rows_cover.to(dtype).sum(0), self.cols_cover.to(dtype).sum(0))


@dataclass(frozen=True)
class _Pass:
    """What one sweep over a set of windows needs."""

    module: nn.Module
    inputs: Tensor
    fill: float | Tensor
    scores: Any
    clean: Tensor
    occluders: _Occluders | None
    grid: _Grid
    batch_size: int
    progress: bool | None


def _window_drops(run: _Pass, items: Tensor, where: Tensor, name: str) -> Tensor:
    """Score drop of each (item, flat window index) pair of ``run.grid``, in batches of
    ``run.batch_size`` rows (a batch may mix items)."""
    grid, inputs, fill = run.grid, run.inputs, run.fill
    total = int(items.shape[0])
    with torch.inference_mode():
        drops = torch.empty(total, dtype=run.clean.dtype, device=run.clean.device)
        starts = range(0, total, run.batch_size)
        with progress_bar(len(starts), name, enabled=run.progress, unit="batch") as bar:
            for start in starts:
                rows_items = items[start : start + run.batch_size]
                rows_where = where[start : start + run.batch_size]
                if run.occluders is not None:
                    outputs = _incremental_outputs(
                        run.occluders.get,
                        inputs,
                        fill,
                        rows_items,
                        grid.row_starts[rows_where // grid.nw],
                        grid.col_starts[rows_where % grid.nw],
                        grid.window,
                    )
                else:
                    mask = (
                        grid.rows_cover[rows_where // grid.nw][:, None, :, None]
                        & grid.cols_cover[rows_where % grid.nw][:, None, None, :]
                    )
                    copies = inputs[rows_items]
                    if isinstance(fill, Tensor):
                        source = fill[rows_items if fill.shape[0] > 1 else 0]
                        copies = torch.where(mask, source, copies)
                    else:
                        copies.masked_fill_(mask, fill)
                    outputs = run.module(copies)
                drops[start : start + rows_items.shape[0]] = run.clean[rows_items] - run.scores(
                    outputs, rows_items
                )
                bar.advance()
    return drops


def _drill_down(
    drops: Callable[[_Grid, Tensor, Tensor, str], Tensor],
    fine: _Grid,
    coarse: _Grid,
    items: int,
    fraction: float,
) -> tuple[Tensor, Tensor]:
    """Krypton's adaptive drill-down: (B, nh, nw) drops of the fine windows and which of
    them are interpolated (see :func:`occlusion_result`)."""
    device = fine.row_starts.device
    rows = torch.arange(items * coarse.windows, device=device)
    coarse_drops = drops(coarse, rows // coarse.windows, rows % coarse.windows, "coarse")
    coarse_drops = coarse_drops.clone().view(items, coarse.nh, coarse.nw)
    # per item, the top fraction of its own coarse windows: no item depends on another
    keep = math.ceil(fraction * coarse.windows)
    order = torch.argsort(coarse_drops.view(items, -1), dim=1, descending=True, stable=True)
    chosen = torch.zeros(items, coarse.windows, dtype=torch.bool, device=device)
    chosen.scatter_(1, order[:, :keep], True)
    weights_r, owner_r, match_r = _axis(fine.row_starts, coarse.row_starts, coarse_drops.dtype)
    weights_c, owner_c, match_c = _axis(fine.col_starts, coarse.col_starts, coarse_drops.dtype)
    refine = chosen.view(items, coarse.nh, coarse.nw)[:, owner_r][:, :, owner_c]
    shared = (match_r >= 0)[:, None] & (match_c >= 0)[None, :]  # same window at both strides
    compute = refine & ~shared
    which = compute.view(items, -1).nonzero()
    computed = drops(fine, which[:, 0], which[:, 1], "drill-down")
    per_window = torch.einsum("rR,bRC,cC->brc", weights_r, coarse_drops, weights_c)
    per_window[:, shared] = coarse_drops[:, match_r.clamp(min=0)][:, :, match_c.clamp(min=0)][
        :, shared
    ]
    per_window[compute] = computed
    return per_window, ~(refine | shared)


def _axis(fine: Tensor, coarse: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Along one axis, for each fine start offset: its linear-interpolation weights over
    the coarse start offsets (nf, nc), the nearest coarse window (ties: the earlier one)
    and the coarse window starting at the same offset (-1: none). Both axes of starts
    begin at 0 and end flush with the edge, so no fine start lies outside the coarse ones."""
    nf, nc = int(fine.shape[0]), int(coarse.shape[0])
    weights = torch.zeros(nf, nc, dtype=dtype, device=fine.device)
    if nc == 1:
        weights[:, 0] = 1.0
        owner = torch.zeros(nf, dtype=torch.long, device=fine.device)
    else:
        left = (torch.searchsorted(coarse, fine, right=True) - 1).clamp(0, nc - 2)
        span = (coarse[left + 1] - coarse[left]).to(dtype)
        t = (fine - coarse[left]).to(dtype) / span
        weights[torch.arange(nf), left] = 1.0 - t
        weights[torch.arange(nf), left + 1] = t
        owner = left + (t > 0.5).long()
    match = torch.full((nf,), -1, dtype=torch.long, device=fine.device)
    same = (fine[:, None] == coarse[None, :]).nonzero()
    match[same[:, 0]] = same[:, 1]
    return weights, owner, match


# The incremental engine is used by default when its estimated multiply-adds are at most
# this fraction of the plain forwards': below it, it was faster on every model measured
# (docs/performance.md); above it, its bookkeeping can cost more than it saves.
AUTO_COST = 0.7
# ... and when there are at least this many windows per item: the engine pays a traced
# pass and a planning pass per item first, which few windows do not repay.
AUTO_WINDOWS = 32


class _Occluders:
    """The incremental occluder of each item, made in item order and one at a time (each
    holds every intermediate value of its item: holding all at once would multiply the
    memory by the batch). The first is made before the run: it decides automatic mode and
    gives item 0's clean output, so that item's clean pass runs once (also when automatic
    mode then takes the plain path: ``plain_reason`` says why)."""

    def __init__(self, engine: Engine, inputs: Tensor, approximate: float | None) -> None:
        self.engine = engine
        self.inputs = inputs
        self.approximate = approximate
        self.index = 0
        self.current = engine.occluder(inputs[:1], approximate)
        self.plain_reason: str | None = None

    def get(self, item: int) -> Occluder:
        if item != self.index:
            self.current = self.engine.occluder(self.inputs[item : item + 1], self.approximate)
            self.index = item
        return self.current

    def clean(self, module: nn.Module) -> Any:
        """The model's output on the unoccluded inputs."""
        first = self.current.clean
        if self.inputs.shape[0] == 1:
            return first
        rest = module(self.inputs[1:])
        if not isinstance(first, Tensor) or not isinstance(rest, Tensor):
            return module(self.inputs)
        return torch.cat([first, rest])


def _incremental_engine(
    module: nn.Module,
    inputs: Tensor,
    window: tuple[int, int],
    incremental: bool | None,
    approximate: float | None,
    windows: int = AUTO_WINDOWS,
) -> _Occluders | None:
    """The incremental occluders (with a ``plain_reason`` when automatic mode takes the
    plain path after the traced pass), or None for the plain batched forwards."""
    if approximate is not None:
        if isinstance(approximate, bool) or not 0.0 < float(approximate) <= 1.0:
            raise InputError(f"approximate must be a fraction in (0, 1], got {approximate!r}")
        if incremental is False:
            raise InputError("approximate needs the incremental engine (incremental=False given)")
    if incremental is False:
        return None
    graph = trace(module)
    if isinstance(graph, str):
        if incremental or approximate is not None:
            raise InputError(f"incremental occlusion is not possible: {graph}")
        return None
    automatic = incremental is None and approximate is None
    if automatic and windows < AUTO_WINDOWS:
        return None  # decided without a traced pass
    with torch.inference_mode():
        occluders = _Occluders(Engine(module, graph), inputs, approximate)
        if automatic:
            occluders.plain_reason = _plain_reason(windows, lambda: occluders.current.plan(window))
    return occluders


def _plain_reason(windows: int, report: Callable[[], IncrementalPlan]) -> str | None:
    """Why automatic mode takes the plain path (None: it takes the incremental engine); the
    plan is only made when the window count does not already decide."""
    if windows < AUTO_WINDOWS:
        return f"{windows} windows per item (fewer than {AUTO_WINDOWS})"
    if report().estimated_cost > AUTO_COST:
        return "too little to skip"
    return None


def incremental_note(
    module: nn.Module,
    inputs: Tensor,
    window: int | tuple[int, int] | None = None,
    incremental: bool | None = None,
    stride: int | tuple[int, int] | None = None,
) -> str:
    """One line for ``cnnlens.coverage``: which path occlusion takes on this model and,
    for the incremental engine, what it recomputes and where it stops being incremental."""
    h, w = int(inputs.shape[-2]), int(inputs.shape[-1])
    size = _pair(max(1, min(h, w) // 7) if window is None else window, "window")
    steps_hw = _pair(
        (max(1, size[0] // 2), max(1, size[1] // 2)) if stride is None else stride, "stride"
    )
    windows = len(window_starts(h, size[0], steps_hw[0])) * len(
        window_starts(w, size[1], steps_hw[1])
    )
    if incremental is False:
        return "occlusion: plain batched forwards (incremental=False)"
    report = plan(module, inputs, size)
    if report.fallback is not None:
        return f"occlusion: plain batched forwards; {report.fallback}"
    counts: dict[str, int] = {}
    for _, kind in report.steps:
        counts[kind] = counts.get(kind, 0) + 1
    reason = None if incremental else _plain_reason(windows, lambda: report)
    path = "incremental engine" if reason is None else f"plain batched forwards ({reason})"
    steps = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    dense = (
        f"; incremental up to {report.densified_at} ({report.reason})"
        if report.densified_at is not None
        else ""
    )
    return (
        f"occlusion: {path}: {steps}; estimated multiply-adds "
        f"{report.estimated_cost:.2f} of the plain path for a {size[0]}x{size[1]} window{dense}"
    )


def _incremental_outputs(
    occluders: Callable[[int], Occluder],
    inputs: Tensor,
    fill: float | Tensor,
    items: Tensor,
    tops: Tensor,
    lefts: Tensor,
    window: tuple[int, int],
) -> Tensor:
    """Model outputs for the occluded copies (rows may belong to several items)."""
    wh, ww = window
    outputs: list[Tensor] = []
    for item in dict.fromkeys(items.tolist()):
        rows = (items == item).nonzero().flatten()
        top, left = tops[rows], lefts[rows]
        if isinstance(fill, Tensor):
            source = fill[item if fill.shape[0] > 1 else 0]
            patches = torch.stack(
                [
                    source[:, y : y + wh, x : x + ww]
                    for y, x in zip(top.tolist(), left.tolist(), strict=True)
                ]
            )
        else:
            patches = inputs.new_full((rows.shape[0], inputs.shape[1], wh, ww), fill)
        outputs.append(occluders(item).outputs(patches, top, left))
    return torch.cat(outputs)


def _method(fn: Callable[..., MethodResult]) -> MethodFn:
    return fn


METHODS: dict[str, MethodSpec] = {
    "occlusion": MethodSpec(
        fn=_method(occlusion_result),
        kind="occlusion",
        torchscript=True,
        options=frozenset(
            {
                "window",
                "stride",
                "baseline",
                "batch_size",
                "score",
                "progress",
                "incremental",
                "approximate",
                "drill_down",
                "coarse_stride",
            }
        ),
        summary="mean score drop when a sliding window covers each pixel (Zeiler & Fergus 2014)",
    ),
}
