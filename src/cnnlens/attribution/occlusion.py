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

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._progress import progress as progress_bar
from ..errors import InputError
from ..targets import Target
from ._incremental import Engine, IncrementalPlan, Occluder, plan, trace
from .api import MethodFn, MethodSpec

__all__ = ["METHODS", "incremental_note", "occlusion", "window_starts"]

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
        values = target.score(output, items)
        rows = output.shape[0] if isinstance(output, Tensor) else len(values)
        if values.dim() != 1 or values.shape[0] != rows:
            raise InputError(
                f"the target gave scores of shape {tuple(values.shape)}; it must give one "
                "score per input"
            )
        return values

    return scores


def occlusion(
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
) -> Tensor:
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
    """
    del layer
    b, _, h, w = inputs.shape
    if window is None:
        window = max(1, min(h, w) // 7)
    wh, ww = _pair(window, "window")
    if wh > h or ww > w:
        raise InputError(f"window {(wh, ww)} is larger than the input {(h, w)}")
    sh, sw = _pair((max(1, wh // 2), max(1, ww // 2)) if stride is None else stride, "stride")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    fill = _baseline_fill(baseline, inputs)
    scores = _scorer(target, score)
    windows_per_item = len(window_starts(h, wh, sh)) * len(window_starts(w, ww, sw))
    occluders = _incremental_engine(
        module, inputs, (wh, ww), incremental, approximate, windows_per_item
    )
    rows_cover = _cover(h, wh, sh, inputs.device)  # (nh, H)
    cols_cover = _cover(w, ww, sw, inputs.device)  # (nw, W)
    nh, nw = rows_cover.shape[0], cols_cover.shape[0]
    row_starts = torch.tensor(window_starts(h, wh, sh), device=inputs.device)
    col_starts = torch.tensor(window_starts(w, ww, sw), device=inputs.device)
    windows = nh * nw
    total = b * windows
    with torch.inference_mode():
        output = module(inputs) if occluders is None else occluders.clean(module)
    if occluders is not None and occluders.plain_reason is not None:
        occluders = None  # automatic mode chose the plain path; its clean pass is used
    target.resolve(output)  # outside inference mode: the chosen classes are plain tensors
    with torch.inference_mode():
        clean = scores(output, None)
        drops = torch.empty(total, dtype=clean.dtype, device=clean.device)
        starts = range(0, total, batch_size)
        with progress_bar(len(starts), "occlusion", enabled=progress, unit="batch") as bar:
            for start in starts:
                rows = torch.arange(start, min(start + batch_size, total), device=inputs.device)
                items = rows // windows
                where = rows % windows
                if occluders is not None:
                    outputs = _incremental_outputs(
                        occluders.get,
                        inputs,
                        fill,
                        items,
                        row_starts[where // nw],
                        col_starts[where % nw],
                        (wh, ww),
                    )
                else:
                    mask = (
                        rows_cover[where // nw][:, None, :, None]
                        & cols_cover[where % nw][:, None, None, :]
                    )
                    copies = inputs[items]
                    if isinstance(fill, Tensor):
                        copies = torch.where(mask, fill[items if fill.shape[0] > 1 else 0], copies)
                    else:
                        copies.masked_fill_(mask, fill)
                    outputs = module(copies)
                drops[start : start + rows.shape[0]] = clean[items] - scores(outputs, items)
                bar.advance()
    per_window = drops.clone().view(b, nh, nw).to(inputs.dtype)
    rows_f = rows_cover.to(inputs.dtype)
    cols_f = cols_cover.to(inputs.dtype)
    summed = torch.einsum("bij,ih,jw->bhw", per_window, rows_f, cols_f)
    count = torch.outer(rows_f.sum(0), cols_f.sum(0))
    mean = torch.where(count > 0, summed / count.clamp(min=1), torch.zeros_like(summed))
    return mean.unsqueeze(1)


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


def _method(fn: Callable[..., Tensor]) -> MethodFn:
    return fn


METHODS: dict[str, MethodSpec] = {
    "occlusion": MethodSpec(
        fn=_method(occlusion),
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
            }
        ),
        summary="mean score drop when a sliding window covers each pixel (Zeiler & Fergus 2014)",
    ),
}
