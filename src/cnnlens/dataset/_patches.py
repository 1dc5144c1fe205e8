"""Maximally activating patches: for chosen channels of a layer, the k dataset positions
with the largest activation, and the input region (receptive field) each one sees.

One streaming pass keeps a running top-k per channel (values and flat positions,
O(k x channels) memory): in each batch only the k items with the largest per-channel
maxima can hold a channel's k largest values, so only those items' maps are searched and
the result is merged into the running top-k. The order is total — activation descending,
then dataset index, then position — so equal activations are settled the same way however
the data is split, and the Ray engine's per-shard top-k merge to exactly the local result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._progress import progress as progress_bar
from ..errors import InputError
from ._batches import (
    LayerTap,
    as_dataset,
    batches,
    grouped_batches,
    model_info,
    probe_input,
    range_batches,
)

__all__ = ["Patch", "top_patches"]


@dataclass(frozen=True)
class Patch:
    """One maximally activating position.

    ``index``: the dataset item; ``position``: (y, x) in the layer's feature map;
    ``activation``: the value there; ``box``: (top, left, bottom, right) of the input region
    it sees (bottom and right exclusive, clipped to the input); ``pixels``: that region of
    the model's input (C, bottom - top, right - left), as the model saw it (for a
    :class:`LoadedModel`, ``model.preprocessing.invert(patch.pixels)`` gives [0, 1] colours).
    """

    index: int
    channel: int
    position: tuple[int, int]
    activation: float
    box: tuple[int, int, int, int]
    pixels: Tensor = field(repr=False, compare=False)


def _channels(channels: int | Sequence[int] | None, available: int) -> list[int]:
    if channels is None:
        return list(range(available))
    chosen = [channels] if isinstance(channels, int) else [int(c) for c in channels]
    if not chosen:
        raise InputError("channels is empty")
    bad = [c for c in chosen if not 0 <= c < available]
    if bad:
        raise InputError(
            f"channel(s) {bad} out of range: the layer has {available} channels (0-{available - 1})"
        )
    if len(set(chosen)) != len(chosen):
        raise InputError(f"channels {chosen} repeat a channel")
    return chosen


def select_top(values: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per row, the ``k`` entries first in the order (value descending, key ascending),
    in that order: ``(values (C, k'), keys (C, k'))`` with ``k' = min(k, entries)``.

    The order is total (keys are unique), so the result does not depend on how the
    entries were split into parts: the top of the union of each part's top is the top.
    Linear time: ``topk`` finds the k-th value, then the ties at it are settled by key.
    """
    rows, n = values.shape
    k = min(k, n)
    if k == 0:
        return values, keys
    values = torch.nan_to_num(values, nan=-torch.inf)
    top, where = values.topk(k, dim=1)
    threshold = top[:, -1:]  # (C, 1): the k-th largest value
    if not bool((top[:, 1:] == top[:, :-1]).any()) and bool(
        ((values == threshold).sum(dim=1) == 1).all()
    ):
        # No two of the k first are equal and none outside them equals the k-th: the
        # order by value alone is the whole order (float maps almost always).
        return top, torch.gather(keys, 1, where)
    above = values > threshold
    # Everything above the threshold (fewer than k), padded with -inf ...
    high, where = torch.where(above, values, -torch.inf).topk(k, dim=1)
    high_keys = torch.gather(keys, 1, where)
    high_ok = torch.gather(above, 1, where)
    # ... and the smallest keys among the entries equal to it fill the rest.
    none = torch.iinfo(torch.int64).max
    tie_keys = torch.where(values == threshold, keys, none).topk(k, dim=1, largest=False).values
    need = k - above.sum(dim=1, keepdim=True)
    tie_ok = (torch.arange(k).expand(rows, k) < need) & (tie_keys != none)
    all_values = torch.cat([high, threshold.expand(rows, k)], dim=1)
    all_keys = torch.cat([high_keys, tie_keys], dim=1)
    ok = torch.cat([high_ok, tie_ok], dim=1)
    # Exactly k valid entries per row; order them by (value desc, key asc).
    all_values = torch.where(ok, all_values, -torch.inf)
    all_keys = torch.where(ok, all_keys, none)
    by_key = torch.argsort(all_keys, dim=1)
    all_values = torch.gather(all_values, 1, by_key)
    all_keys = torch.gather(all_keys, 1, by_key)
    order = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(all_values, 1, order), torch.gather(all_keys, 1, order)


class TopK:
    """Running top-k of (C, positions) scores, keyed by a global int64 position, in the
    order (value descending, key ascending): ties go to the earlier item and position."""

    def __init__(self, channels: int, k: int) -> None:
        self.k = k
        self.values = torch.full((channels, 0), -torch.inf)
        self.keys = torch.full((channels, 0), -1, dtype=torch.int64)

    def update(self, maps: Tensor, offset: int) -> None:
        """``maps`` (B, C, P) for items ``offset`` ... ``offset + B - 1``; the key of item
        ``b`` at position ``p`` is ``(offset + b) * P + p``."""
        batch, channels, positions = maps.shape
        # An entry among a channel's k first lies in one of the k items first by (maximum
        # descending, item ascending), so only those items' maps are searched; the stable
        # sort keeps dataset order among equal maxima.
        items = min(self.k, batch)
        maxima = torch.nan_to_num(maps.amax(dim=2), nan=-torch.inf)
        chosen = torch.sort(maxima, dim=0, descending=True, stable=True).indices[:items].t()
        by_channel = maps.permute(1, 0, 2)  # (C, B, P) view
        candidates = torch.gather(by_channel, 1, chosen[:, :, None].expand(-1, -1, positions))
        keys = (chosen[:, :, None] + offset) * positions + torch.arange(
            positions, device=maps.device
        )
        self.merge(candidates.reshape(channels, -1).float().cpu(), keys.reshape(channels, -1).cpu())

    def merge(self, values: Tensor, keys: Tensor) -> None:
        """Add (C, n) entries (another part's top-k, or candidates)."""
        self.values, self.keys = select_top(
            torch.cat([self.values, values], dim=1), torch.cat([self.keys, keys], dim=1), self.k
        )


@dataclass(frozen=True)
class PatchJob:
    """The running top-k of items ``[start, stop)`` (batched from ``start``) for the
    chosen channels: the work of one shard, in this process or on a Ray actor."""

    chosen: tuple[int, ...]
    k: int
    batch_size: int
    shard_rows: int
    total: int
    num_workers: int = 0  # DataLoader processes inside a Ray actor

    def scan(
        self,
        info: Any,
        data: Any,
        ranges: list[tuple[int, int]],
        num_workers: int = 0,
        tick: Callable[[int], None] = lambda _n: None,
    ) -> TopK:
        select = torch.tensor(self.chosen, dtype=torch.int64)
        device = next((p.device for p in info.module.parameters()), torch.device("cpu"))
        running = TopK(len(self.chosen), self.k)
        with LayerTap(info.module, info.layer, info.calls) as tap:
            for inputs, _, indices in grouped_batches(
                data,
                range_batches(ranges, self.batch_size),
                preprocessing=info.preprocessing,
                num_workers=num_workers,
            ):
                out = tap(inputs.to(device))
                maps = out.reshape(out.shape[0], out.shape[1], -1)
                if len(self.chosen) < maps.shape[1]:
                    maps = maps.index_select(1, select.to(maps.device))
                running.update(maps, int(indices[0]))
                tick(len(indices))
        return running

    def __call__(self, info: Any, data: Any, index: int) -> tuple[Tensor, Tensor]:
        start = index * self.shard_rows
        stop = min(start + self.shard_rows, self.total)
        running = self.scan(info, data, [(start, stop)], self.num_workers)
        return running.values, running.keys


def top_patches(
    model: Any,
    dataset: Any,
    layer: Any,
    *,
    channels: int | Sequence[int] | None = None,
    k: int = 9,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool | None = None,
    engine: str = "local",
    **ray_options: Any,
) -> dict[int, list[Patch]]:
    """For each channel of ``layer`` (default: all), the ``k`` dataset positions where it
    is most active, strongest first, each with the input patch it sees.

    ``dataset`` as in :func:`extract_features`. One pass over the data, then the items
    that hold a patch are loaded again, in batches; memory O(k x channels). Equal
    activations are ordered by dataset index, then position (row-major), so the result is
    fully determined. The patch boxes come from
    :func:`cnnlens.receptive_field`. ``engine="ray"`` scans shards of the dataset on a Ray
    cluster and merges their top-k exactly (same result; ``ray_options`` as in
    :func:`extract_features`).
    """
    from ..layers import receptive_field
    from ._store import check_engine

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    check_engine(engine, ray_options)
    data = as_dataset(dataset)
    preprocessing = getattr(model, "preprocessing", None)
    probe = probe_input(data, preprocessing)
    info = model_info(model, layer, probe)
    shape = info.output_shape
    if len(shape) not in (1, 3):
        raise InputError(f"the layer's output has shape {shape}, not (C, h, w) or (C,)")
    height, width = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    positions = height * width
    chosen = _channels(channels, shape[0])
    total = len(data)
    job = PatchJob(tuple(chosen), k, batch_size, _shard_rows(batch_size, total), total, num_workers)
    with progress_bar(total, "patches", enabled=progress, unit="img") as bar:
        if engine == "ray":
            from ._ray import run_remote

            running = TopK(len(chosen), k)
            for _, (values, keys) in run_remote(job, model, data, info, ray_options, bar.advance):
                running.merge(values, keys)
        else:
            running = job.scan(info, data, [(0, total)], num_workers, bar.advance)

    input_size = (int(probe.shape[-2]), int(probe.shape[-1]))
    field_ = receptive_field(info.module, info.layer, input_size) if len(shape) == 3 else None
    # Each needed item is loaded once; only the crops are kept.
    wanted: dict[int, list[tuple[int, int, float, int, int]]] = {}
    counts = []
    for row in range(len(chosen)):
        ranked = [
            (v, key)
            for v, key in zip(running.values[row].tolist(), running.keys[row].tolist(), strict=True)
            if key >= 0
        ]
        counts.append(len(ranked))
        for rank, (value, key) in enumerate(ranked):
            index, flat = divmod(key, positions)
            y, x = divmod(flat, width)
            wanted.setdefault(index, []).append((row, rank, value, y, x))
    found: dict[tuple[int, int], Patch] = {}
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}  # a position's, once
    for images, _, indices in batches(
        data,
        sorted(wanted),
        preprocessing=preprocessing,
        batch_size=batch_size,
        num_workers=num_workers,
    ):
        for image, index in zip(images, indices.tolist(), strict=True):
            for row, rank, value, y, x in wanted[index]:
                box = boxes.get((y, x))
                if box is None:
                    field_box = field_.box(y, x) if field_ is not None else None
                    box = boxes[y, x] = _clip(field_box, input_size)
                top, left, bottom, right = box
                pixels = image[:, top:bottom, left:right].clone()
                found[row, rank] = Patch(index, chosen[row], (y, x), value, box, pixels)
    return {
        channel: [found[row, rank] for rank in range(counts[row])]
        for row, channel in enumerate(chosen)
    }


def _shard_rows(batch_size: int, total: int, target: int = 4096) -> int:
    """Rows per Ray task: a multiple of the batch size (so each task batches its rows as
    the local scan does), about ``target``, and at least four tasks where the data allows."""
    rows = min(target, max(1, -(-total // 4)))
    return max(batch_size, -(-rows // batch_size) * batch_size)


def _clip(box: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = size
    if box is None:
        return (0, 0, height, width)
    top, left, bottom, right = (round(float(v)) for v in box)
    top, left = max(0, min(top, height)), max(0, min(left, width))
    bottom, right = max(top, min(bottom, height)), max(left, min(right, width))
    return (top, left, bottom, right)
