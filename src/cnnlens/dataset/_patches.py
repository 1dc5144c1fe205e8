"""Maximally activating patches: for chosen channels of a layer, the k dataset positions
with the largest activation, and the input region (receptive field) each one sees.

One streaming pass keeps a running top-k per channel (values and flat positions,
O(k x channels) memory): in each batch only the k items with the largest per-channel
maxima can hold a channel's k largest values, so ``topk`` runs over those items' maps and
the result is merged into the running top-k. Each channel's list is ordered
by activation, then dataset order; which of several equally strong positions fills the
k-th place is unspecified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ._batches import (
    Collate,
    LayerTap,
    as_dataset,
    counted_batches,
    model_info,
    probe_input,
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


class TopK:
    """Running top-k of (C, positions) scores, keyed by a global int64 position."""

    def __init__(self, channels: int, k: int) -> None:
        self.k = k
        self.values = torch.full((channels, 0), -torch.inf)
        self.keys = torch.full((channels, 0), -1, dtype=torch.int64)

    def update(self, maps: Tensor, offset: int) -> None:
        """``maps`` (B, C, P) for items ``offset`` ... ``offset + B - 1``; the key of item
        ``b`` at position ``p`` is ``(offset + b) * P + p``."""
        batch, channels, positions = maps.shape
        # A position among a channel's k largest lies in one of the k items with the largest
        # maxima for that channel, so only those items' maps are searched.
        items = min(self.k, batch)
        chosen = maps.amax(dim=2).topk(items, dim=0).indices.t()  # (C, items)
        by_channel = maps.permute(1, 0, 2)  # (C, B, P) view
        candidates = torch.gather(by_channel, 1, chosen[:, :, None].expand(-1, -1, positions))
        values, where = candidates.reshape(channels, -1).topk(min(self.k, items * positions), dim=1)
        item = torch.gather(chosen, 1, torch.div(where, positions, rounding_mode="floor"))
        keys = (item + offset) * positions + where % positions
        values, keys = values.float().cpu(), keys.cpu()
        all_values = torch.cat([self.values, values], dim=1)
        all_keys = torch.cat([self.keys, keys], dim=1)
        if all_values.shape[1] > self.k:
            all_values, pick = all_values.topk(self.k, dim=1)
            all_keys = torch.gather(all_keys, 1, pick)
        self.values, self.keys = all_values, all_keys


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
) -> dict[int, list[Patch]]:
    """For each channel of ``layer`` (default: all), the ``k`` dataset positions where it
    is most active, strongest first, each with the input patch it sees.

    ``dataset`` as in :func:`extract_features`. One pass over the data; memory
    O(k x channels). The patch boxes come from :func:`cnnlens.receptive_field`.
    """
    from ..layers import receptive_field

    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
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
    select = torch.tensor(chosen, dtype=torch.int64)
    device = next((p.device for p in info.module.parameters()), torch.device("cpu"))
    running = TopK(len(chosen), k)
    with LayerTap(info.module, info.layer, info.calls) as tap:
        for inputs, _, indices in counted_batches(
            data,
            "patches",
            preprocessing=preprocessing,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        ):
            out = tap(inputs.to(device))
            maps = out.reshape(out.shape[0], out.shape[1], -1)
            if len(chosen) < maps.shape[1]:
                maps = maps.index_select(1, select.to(maps.device))
            running.update(maps, int(indices[0]))

    input_size = (int(probe.shape[-2]), int(probe.shape[-1]))
    field_ = receptive_field(info.module, info.layer, input_size) if len(shape) == 3 else None
    # Each needed item is loaded once; only the crops are kept.
    wanted: dict[int, list[tuple[int, int, float, int, int]]] = {}
    ranked_rows: list[list[tuple[float, int]]] = []
    for row in range(len(chosen)):
        ranked = sorted(
            (-v, key)
            for v, key in zip(running.values[row].tolist(), running.keys[row].tolist(), strict=True)
            if key >= 0
        )
        ranked_rows.append(ranked)
        for rank, (negative, key) in enumerate(ranked):
            index, flat = divmod(key, positions)
            y, x = divmod(flat, width)
            wanted.setdefault(index, []).append((row, rank, -negative, y, x))
    found: dict[tuple[int, int], Patch] = {}
    collate = Collate(preprocessing)
    for index in sorted(wanted):
        image = collate([(index, data[index])])[0][0]
        for row, rank, value, y, x in wanted[index]:
            box = _clip(field_.box(y, x) if field_ is not None else None, input_size)
            top, left, bottom, right = box
            pixels = image[:, top:bottom, left:right].clone()
            found[row, rank] = Patch(index, chosen[row], (y, x), value, box, pixels)
    return {
        channel: [found[row, rank] for rank in range(len(ranked_rows[row]))]
        for row, channel in enumerate(chosen)
    }


def _clip(box: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    height, width = size
    if box is None:
        return (0, 0, height, width)
    top, left, bottom, right = (round(float(v)) for v in box)
    top, left = max(0, min(top, height)), max(0, min(left, width))
    bottom, right = max(top, min(bottom, height)), max(left, min(right, width))
    return (top, left, bottom, right)
